"""The end of a search: ``results.csv``, the best trial's test accuracy, ``best.json``,
then the export.

The test split never guided the search: only here, once the search is over, is the best
trial's best checkpoint evaluated on it (loss, accuracy, confusion matrix). On URI storage
the files are written to the staging folder and uploaded, ``best.json`` last: a remote
``best.json`` means the search finished.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ktune import experiment_dir, storage
from ktune.checkpoint_manifest import reported_metrics
from ktune.config import ExperimentConfig, TrainingConfig
from ktune.errors import ExperimentError, SearchFailed
from ktune.experiment_dir import BEST_FILE, JOURNAL_FILE, RESULTS_FILE
from ktune.objectives import METRICS, pareto_front, ranks_before
from ktune.staging import push_staged

__all__ = [
    "finish_search",
    "best_checkpoint",
    "warn_if_best_not_kept",
    "metric_mode",
    "result_rows",
    "checkpoint_metrics",
    "pareto_entries",
    "evaluate_checkpoint",
    "evaluate_model",
]

log = logging.getLogger("ktune")


# a trial's own metrics (ktune.keras.ReportCheckpoint reports Keras's training ones too)
_MODES = {"val_accuracy": "max", "accuracy": "max", "val_loss": "min", "loss": "min"}


def metric_mode(metric: str, mode: str | None) -> str:
    """``mode`` checked, or (None) the one ``metric`` calls for: a loss is minimized. An
    unknown metric without a mode is refused rather than guessed (Ray's
    ``get_best_result`` asks for one too)."""
    if mode is None and metric not in _MODES:
        raise ExperimentError(f"mode: pass mode='max' or 'min' for metric {metric!r}")
    mode = _MODES[metric] if mode is None else mode
    if mode not in ("max", "min"):
        raise ExperimentError(f"mode: 'max' or 'min', got {mode!r}")
    return mode


def best_checkpoint(result: Any, metric: str, mode: str) -> tuple[Any, dict] | None:
    """(checkpoint, its metrics) of a ``ray.tune.Result``'s kept checkpoint best by
    ``metric``, the first of equals; None when no checkpoint has a finite value.

    Not Ray's ``Result.get_best_checkpoint``: it ranks a NaN first (nothing compares below
    it), so a trial whose loss diverged after a good epoch was restored, tested and
    exported at its NaN epoch.
    """
    sign = 1 if mode == "max" else -1
    best: tuple[Any, dict, float] | None = None
    for checkpoint, metrics in result.best_checkpoints or ():
        if metric not in metrics:
            # ``tune.Result.from_path`` pairs a checkpoint with the row of result.json that
            # names it, and Ray rewrites that file from storage when a trial restarts (PBT):
            # a checkpoint whose row was lost comes with {}. Its own metrics.json ranks it.
            metrics = reported_metrics(checkpoint) or metrics
        value = metrics.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value) and (best is None or sign * value > sign * best[2]):
            best = (checkpoint, metrics, value)
    return None if best is None else (best[0], best[1])


def warn_if_best_not_kept(result: Any, metric: str, mode: str, kept: dict) -> None:
    """A warning when a ``ray.tune.Result``'s best epoch by ``metric`` has no kept
    checkpoint (a ``CheckpointConfig(num_to_keep=N)`` keeps the latest N): the model then
    comes from ``kept``, the best of those kept, which a user would otherwise take for the
    trial's best."""
    frame = getattr(result, "metrics_dataframe", None)
    if frame is None or metric not in frame or not isinstance(kept.get(metric), numbers.Real):
        return
    import numpy as np
    import pandas as pd

    values = pd.to_numeric(frame[metric], errors="coerce").replace([np.inf, -np.inf], np.nan)
    if values.isna().all():
        return
    at = values.idxmax() if mode == "max" else values.idxmin()
    sign = 1 if mode == "max" else -1
    if sign * values[at] <= sign * kept[metric]:
        return
    epoch = frame["epoch"][at] if "epoch" in frame else at + 1
    log.warning(
        "%s: the best %s (%.4g, epoch %s) has no kept checkpoint; this is the best kept "
        "(%.4g, epoch %s). Keep it with CheckpointConfig(num_to_keep=N, "
        "checkpoint_score_attribute=%r, checkpoint_score_order=%r)",
        Path(str(result.path)).name,
        metric,
        values[at],
        epoch,
        kept[metric],
        kept.get("epoch", "?"),
        metric,
        mode,
    )


def checkpoint_metrics(checkpoint: Any) -> dict:
    """A ktune checkpoint's epoch and metrics as best.json keeps them, or {}."""
    return _best_json_metrics(reported_metrics(checkpoint))


def searched_config(cfg: ExperimentConfig, config: Any) -> dict:
    """A trial's hyperparameters as ``best.json`` shows them: without the searcher's own
    draw names (``heads_for_embed_dim_64``, Optuna's name for ``heads`` drawn among the
    divisors of that ``embed_dim``), which no model reads."""
    from ktune.search_spaces import get_space

    space = get_space(cfg.family)
    return {k: v for k, v in (config or {}).items() if not space.is_draw_name(k)}


def _best_result(grid: Any, metric: str, mode: str) -> Any:
    """The trial whose best kept checkpoint is best (of equals, the first by trial name:
    ``ranks_before``, the live progress header's rule).

    Not Ray's ``ResultGrid.get_best_result``: it keeps each trial's running best as
    ``min(value, best)``, which a later NaN turns into NaN, so a trial that diverged after
    the best epoch of the search was passed over for a worse one."""
    best, best_value, best_name = None, 0.0, ""
    for result in grid:
        picked = best_checkpoint(result, metric, mode)
        name = Path(result.path).name if result.path else ""
        value = picked[1][metric] if picked is not None else None
        if value is not None and (
            best is None or ranks_before(value, name, best_value, best_name, mode)
        ):
            best, best_value, best_name = result, value, name
    return best


def finish_search(
    cfg: ExperimentConfig,
    grid: Any,
    data: Any,
    prepared: Any,
    started: float,
    export: bool | None,
    resumed: bool = False,
    signalled: Sequence[int] = (),
) -> dict:
    """Results table, best.json with the best trial's test accuracy, then the export.

    Returns best.json's contents. Raises :class:`~ktune.errors.SearchFailed` when no trial
    completed an epoch. ``signalled``: the signals received so far (``raising_signals``);
    one there before best.json is written raises ``KeyboardInterrupt``.
    """
    from ktune.rebuild import family_for
    from ktune.trainables.base import restore_model

    exp_dir = cfg.experiment_dir
    rows = result_rows(cfg, grid)
    experiment_dir.write_results(exp_dir, rows)
    push_staged(cfg, [RESULTS_FILE, JOURNAL_FILE])
    for row in rows:
        if row["error"]:
            log.error("trial %s failed: %s", row["trial"], row["error"])

    front = pareto_entries(cfg, grid, rows) if cfg.search.objectives else None
    metric, mode = cfg.search.metric, cfg.search.mode
    best = front[0]["result"] if front else _best_result(grid, metric, mode)
    picked = None if best is None else best_checkpoint(best, metric, mode)
    if best is None or picked is None:
        shown = storage.redact(cfg.experiment_path)
        raise SearchFailed(
            f"{shown}: no trial completed an epoch with a finite {metric}; see the errors above"
        )
    checkpoint, best_metrics = picked
    # On URI storage Ray downloads the checkpoint to a temporary folder for this block.
    with checkpoint.as_directory() as checkpoint_dir:
        family = family_for(cfg.family, (cfg.model or {}).get("build"), cfg.base_dir)
        model = restore_model(
            family, best.config, prepared.artefacts, data.num_classes, cfg.training, checkpoint_dir
        )
    ensemble = None
    if cfg.ensemble_seeds > 1:
        model, ensemble = _seed_ensemble(
            cfg, family, best, checkpoint.path, best_metrics, model, data, prepared
        )
    test = evaluate_model(family, model, prepared.artefacts, data, cfg.training)
    best_info = {
        "trial": Path(best.path).name,
        "trial_dir": _location(cfg, best.path),
        "config": searched_config(cfg, best.config),
        "metrics": _best_json_metrics(best_metrics),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        # rows: true class, columns: predicted class, both in ktune.json's class_names order
        "test_confusion_matrix": test["confusion_matrix"],
        "checkpoint": _location(cfg, checkpoint.path),
        "num_trials": len(rows),
        "wall_time_s": round(time.time() - started, 1),
    }
    if resumed:  # the resume's own seconds: the run a crash cut short is not counted
        best_info["wall_time_of"] = "resume"
    if ensemble is not None:
        best_info["ensemble"] = ensemble
    if front is not None:
        best_info["objectives"] = [asdict(o) for o in cfg.search.objectives or ()]
        # the front, most accurate first: its first trial is best.json's "trial"
        best_info["pareto_front"] = [
            {**{k: v for k, v in entry.items() if k != "result"}, "test_accuracy": accuracy}
            for entry, accuracy in zip(
                front, _front_test_accuracies(cfg, family, front, data, prepared, ensemble, test)
            )
        ]
    if signalled:  # its KeyboardInterrupt raised inside a finalizer (TensorFlow's __del__
        raise KeyboardInterrupt  # hooks run between any two lines) and lost there
    experiment_dir.write_best(exp_dir, best_info)
    push_staged(cfg, [BEST_FILE])  # last: a remote best.json means the search finished
    if cfg.export.enabled if export is None else export:
        from ktune.export import export_best

        # the model just evaluated is the one best.json names: the export need not restore it
        out = str(export_best(exp_dir, cfg.export_path, model=model))
        best_info["export"] = out
        experiment_dir.write_best(exp_dir, best_info)
        push_staged(cfg, [BEST_FILE])
    elif cfg.export.enabled and _export_of(cfg.export_path, best_info):
        # a resume found it exported (the driver died before best.json named it)
        best_info["export"] = cfg.export_path
        experiment_dir.write_best(exp_dir, best_info)
        push_staged(cfg, [BEST_FILE])
    return best_info


def _front_test_accuracies(
    cfg: ExperimentConfig, family: Any, front: list, data: Any, prepared: Any, ensemble, test
) -> list[float]:
    """Each Pareto-front trial's accuracy on the test split, so that the one a user picks
    (``export --trial``) carries its own: the first, the best trial, as just evaluated
    (alone, not its ensemble's), the others restored from their best checkpoints."""
    out = []
    for i, entry in enumerate(front):
        if i == 0 and ensemble is None:
            out.append(test["accuracy"])
            continue
        picked = best_checkpoint(entry["result"], cfg.search.metric, cfg.search.mode)
        assert picked is not None  # pareto_entries keeps only trials with a checkpoint
        with picked[0].as_directory() as d:
            scored = evaluate_checkpoint(
                family, entry["result"].config, prepared.artefacts, data, cfg.training, d
            )
        out.append(scored["accuracy"])
    return out


def _export_of(location: str, best_info: dict) -> bool:
    """Whether the export at ``location`` is whole and of best.json's trial and checkpoint."""
    if not experiment_dir.export_complete(location):
        return False
    try:
        meta_path = storage.join(location, "metadata.json")
        text = (
            storage.read_text(meta_path, "export.dir")
            if storage.is_uri(location)
            else Path(meta_path).read_text(encoding="utf-8")
        )
        meta = json.loads(text)
    except (OSError, ValueError, ExperimentError):
        return False
    return isinstance(meta, dict) and experiment_dir.export_is_of(meta, best_info)


def _seed_ensemble(
    cfg: ExperimentConfig,
    family: Any,
    best: Any,
    checkpoint_path: str,
    best_metrics: dict,
    model: Any,
    data: Any,
    prepared: Any,
) -> tuple[Any, dict]:
    """``ensemble.seeds``: the best configuration trained with more seeds; the averaged
    model, and best.json's ``ensemble``: the averaged seeds, the ensemble's validation
    metrics, each member's seed, checkpoint, validation metrics and test accuracy alone,
    and ``left_out``, the seeds whose training reached no finite ``search.metric``."""
    from ktune.ensemble import average_models, fetch_members, push_members, train_members

    seeds = [cfg.search.seed + i for i in range(1, cfg.ensemble_seeds)]
    if cfg.remote:  # a resume on URI storage: members trained before are kept
        fetch_members(cfg.experiment_path, cfg.experiment_dir, seeds)
    log.info("ensemble: training the best configuration with seeds %s", ", ".join(map(str, seeds)))
    members, models, left_out = train_members(
        cfg.experiment_dir,
        family,
        best.config,
        prepared,
        data,
        cfg.training,
        seeds,
        cfg.search.metric,
        cfg.search.mode,
    )
    if cfg.remote:
        push_members(cfg.experiment_dir, cfg.experiment_path, members)
    first = {
        "seed": cfg.search.seed,
        "checkpoint": _location(cfg, checkpoint_path),
        "metrics": best_metrics,
    }
    members = [first, *members]
    for member, alone in zip(members, [model, *models]):
        member["test_accuracy"] = evaluate_model(
            family, alone, prepared.artefacts, data, cfg.training
        )["accuracy"]
        member["metrics"] = _best_json_metrics(member["metrics"])
    averaged = average_models([model, *models])
    # The ensemble's own validation metrics: the model that is exported is the average,
    # and its metadata names these, not the best trial's.
    val = evaluate_model(family, averaged, prepared.artefacts, data, cfg.training, split="val")
    ensemble: dict = {
        "seeds": [m["seed"] for m in members],
        "metrics": {"val_accuracy": val["accuracy"], "val_loss": val["loss"]},
        "members": members,
    }
    if left_out:
        ensemble["left_out"] = left_out
    return averaged, ensemble


def _best_json_metrics(metrics: dict) -> dict:
    """The metrics best.json keeps of a checkpoint's epoch (the best trial's, a member's)."""
    keys = ("val_accuracy", "val_loss", "accuracy", "loss", "epoch")
    return {k: metrics[k] for k in keys if k in metrics}


def pareto_entries(cfg: ExperimentConfig, grid: Any, rows: list[dict]) -> list[dict]:
    """The Pareto front of ``search.objectives`` over the trials' rows (``results.csv``),
    most accurate first (``search.metric``): each trial's id, config, objective values,
    best checkpoint (by ``search.metric``) and its ``ray.tune.Result``."""
    objectives = cfg.search.objectives or ()
    results = {Path(r.path).name: r for r in grid if r.path}
    sign = -1 if cfg.search.mode == "max" else 1
    front = sorted(
        (rows[i] for i in pareto_front(rows, objectives)),
        key=lambda row: sign * row[cfg.search.metric],
    )
    entries = []
    for row in front:
        result = results.get(row["trial"])
        if result is None:
            continue
        picked = best_checkpoint(result, cfg.search.metric, cfg.search.mode)
        if picked is None:
            continue
        checkpoint = picked[0]
        entries.append(
            {
                "trial": row["trial"],
                "config": searched_config(cfg, result.config),
                "objectives": {o.metric: row[o.metric] for o in objectives},
                "checkpoint": _location(cfg, checkpoint.path),
                "result": result,
            }
        )
    return entries


def _objective_values(cfg: ExperimentConfig, result: Any, hist: Any) -> dict:
    """Each objective other than ``search.metric``: a per-epoch metric's best value, a
    measured one's last (``latency_ms`` only comes with a trial's last epoch)."""
    out = {}
    for o in cfg.search.objectives or ():
        if o.metric == cfg.search.metric:
            continue
        value = None
        if o.metric in METRICS:
            if hist is not None and o.metric in hist:
                series = hist[o.metric]
                value = float(series.max() if o.mode == "max" else series.min())
        else:
            value = (result.metrics or {}).get(o.metric)
        out[o.metric] = float(value) if value is not None else float("nan")
    return out


def result_rows(cfg: ExperimentConfig, grid: Any) -> list[dict]:
    """One row a trial of Ray's ResultGrid: status, searched hyperparameters, epochs, the
    trial's best value of the metric, its error's last line (``results.csv``)."""
    from ktune.search_spaces.base import searched_keys

    keys = searched_keys(cfg.search.space)
    rows = []
    for result in grid:
        trial_id = Path(result.path).name if result.path else "?"
        config = dict(result.config or {})
        hist = result.metrics_dataframe
        best_value = None
        if hist is not None and cfg.search.metric in hist:
            series = hist[cfg.search.metric]
            best_value = float(series.max() if cfg.search.mode == "max" else series.min())
        row = {
            "trial": trial_id,
            "status": "ERROR" if result.error else "TERMINATED",
            **{k: config.get(k) for k in keys},
            "epochs": int((result.metrics or {}).get("epoch", 0)),
            # > 0: the trial's last run was restored from that epoch (retry, lost node, resume)
            "resumed_from_epoch": int((result.metrics or {}).get("resumed_from_epoch", 0)),
            cfg.search.metric: best_value if best_value is not None else float("nan"),
            **_objective_values(cfg, result, hist),
            # the same one line as storage errors (storage._last_line: one helper, not two)
            "error": storage._last_line(result.error) if result.error else "",
        }
        rows.append(row)
    return rows


def _location(cfg: ExperimentConfig, fs_path: str) -> str:
    """A path that Ray reports (trial folder, checkpoint) as the user can use it: itself
    for local storage, the full URI (scheme and query) for URI storage."""
    if not cfg.remote:
        return fs_path
    _, root = storage.filesystem(cfg.experiment_path)
    root = root.rstrip("/")
    if not fs_path.startswith(root + "/"):
        return fs_path
    return storage.join(cfg.experiment_path, fs_path[len(root) + 1 :])


def evaluate_checkpoint(
    family: Any,
    config: dict,
    artefacts: dict,
    data: Any,
    training: TrainingConfig,
    checkpoint_dir: str,
) -> dict:
    """:func:`evaluate_model` on the model restored from a trial's checkpoint."""
    from ktune.trainables.base import restore_model

    model = restore_model(family, config, artefacts, data.num_classes, training, checkpoint_dir)
    return evaluate_model(family, model, artefacts, data, training)


def evaluate_model(
    family: Any,
    model: Any,
    artefacts: dict,
    data: Any,
    training: TrainingConfig,
    split: str = "test",
) -> dict:
    """Loss, accuracy and confusion matrix of a trained model on the test split (never
    seen in the search), or on the validation split with ``split="val"``.

    ``confusion_matrix`` is a list of rows of counts: row i holds the texts of class
    i, column j those predicted as class j (classes in ``data.class_names`` order).
    """
    import numpy as np

    if split == "test":
        texts, labels = data.test_texts, data.test_labels
    else:
        texts, labels = data.val_texts, data.val_labels
    probs = model.predict(family.encode(artefacts, training, texts), batch_size=256, verbose=0)
    labels = np.asarray(labels)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
    predicted = np.argmax(probs, -1)
    n = int(data.num_classes)
    matrix = np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "loss": loss,
        "confusion_matrix": matrix.tolist(),
    }
