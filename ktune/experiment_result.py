"""The result of a ktune experiment: what :func:`ktune.run`, :func:`ktune.resume` and
:func:`ktune.load` return.

It reads the experiment folder through :mod:`ktune.experiment_dir` and rebuilds models
through :mod:`ktune.rebuild`; Ray, TensorFlow and pandas load only when a property or
method needs them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ktune import storage
from ktune.errors import ExperimentError, text_list
from ktune.experiment_dir import (
    EXPORT_DIR,
    check_replaceable_uri,
    export_cut_off,
    export_is_of,
    front_trial,
    read_results,
    recover_cut_replace,
)
from ktune.tables import left_out_text

log = logging.getLogger("ktune")

__all__ = ["ExperimentResult"]


@dataclass
class ExperimentResult:
    """A finished (or resumed) ktune experiment: its best trial, all trials, its files.

    Returned by :func:`run`, :func:`resume` and :func:`load`, in the spirit of an Optuna
    ``Study``: ``best_config``, ``best_metrics``, ``test_accuracy``, ``trials`` (a pandas
    DataFrame), ``grid`` (Ray's ``ResultGrid``), ``export()``, ``predict()``.

    Args:
        path: str. The experiment's location, ``<storage>/<name>``: a folder or a URI.
        dir: Path. The local folder holding ktune's files (for a URI: a working copy).
        spec: dict. ``ktune.json``: family, training sizes, class names, artefacts.
        best: dict. ``best.json``: the best trial, its metrics and test accuracy.
    """

    path: str
    dir: Path
    spec: dict = field(repr=False)  # (the vocabulary and verification texts: long)
    best: dict
    _grid: Any = field(default=None, repr=False)

    @property
    def best_trial(self) -> str:
        """The best trial's id (its folder name, ``trial_<id>``)."""
        return self.best["trial"]

    @property
    def best_config(self) -> dict:
        """The hyperparameters of the best trial."""
        return dict(self.best["config"])

    @property
    def best_metrics(self) -> dict:
        """The best trial's metrics at its best epoch (``val_accuracy``, ``epoch``, ...)."""
        return dict(self.best["metrics"])

    @property
    def test_accuracy(self) -> float:
        """The best trial's accuracy on the test split, which never guided the search;
        with ``ensemble.seeds`` the ensemble's (``best["ensemble"]`` has each member's)."""
        return float(self.best["test_accuracy"])

    @property
    def best_checkpoint(self):
        """The best trial's best checkpoint, a ``ray.tune.Checkpoint`` (local or URI)."""
        return _checkpoint(self.best["checkpoint"])

    @property
    def export_dir(self) -> str | None:
        """Where the best trial was exported, if it was."""
        return self.best.get("export")

    def _export_is_best(self, exported: Path) -> bool:
        """A local export of this experiment's best checkpoint (its metadata says so): a
        ``--force`` export of another trial to the same folder is not used for it."""
        if storage.is_uri(str(exported)) or not (exported / "saved_model.pb").is_file():
            return False
        try:
            meta = json.loads((exported / "metadata.json").read_text())
        except (OSError, ValueError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        if not export_is_of(meta, self.best):
            log.warning(
                "%s holds another model than the best trial's (%s): predicting from the "
                "best checkpoint (and ensemble members) instead",
                exported,
                meta.get("checkpoint"),
            )
            return False
        return True

    @property
    def pareto_front(self) -> list[dict]:
        """A multi-objective search's Pareto front (``search.objectives``), most accurate
        first: each trial's ``trial`` id, ``config``, ``objectives`` (metric -> value) and
        ``checkpoint``. Empty for a search of one metric."""
        return [dict(e) for e in self.best.get("pareto_front") or []]

    @property
    def trials(self):
        """A pandas DataFrame, one row a trial: status, searched hyperparameters, epochs,
        best metric, error (``results.csv``)."""
        return read_results(self.dir)

    @property
    def grid(self):
        """Ray Tune's ``ResultGrid`` of the search: every trial's ``ray.tune.Result``."""
        if self._grid is None:
            from ray.tune import ExperimentAnalysis, ResultGrid

            self._grid = ResultGrid(
                ExperimentAnalysis(
                    self.path,
                    default_metric=self.spec["metric"],
                    default_mode=self.spec["mode"],
                )
            )
        return self._grid

    def export(
        self, out: str | Path | None = None, *, force: bool = False, trial: str | None = None
    ) -> str:
        """Exports the best trial as a verified SavedModel that takes raw strings.

        Args:
            out: str or Path. Target folder or URI. Defaults to ``<path>/export``, for
                another trial than the best ``<path>/export-<trial>``.
            force: bool. Replace an existing export (only once the new one is verified).
                Defaults to False.
            trial: str or None. A trial of the Pareto front (:attr:`pareto_front`) to
                export instead of the best (the most accurate). Defaults to None.

        Returns:
            str: where the export is.
        """
        chosen = front_trial(self.best, trial)["trial"]  # an unknown trial fails here
        other = chosen != self.best_trial
        default = f"{EXPORT_DIR}-{chosen}" if other else EXPORT_DIR
        target = str(out) if out is not None else storage.join(self.path, default)
        # Refused before TensorFlow loads (export_best checks again, for other callers).
        remote = storage.is_uri(target)
        if remote:
            recover_cut_replace(target, "--out")  # a cut-off --force replace put back first
        taken = storage.exists(target, "--out") if remote else Path(target).exists()
        if taken and not force:
            cut = ", cut off before saved_model.pb" if export_cut_off(target, "--out") else ""
            raise ExperimentError(
                f"{storage.redact(target)}: export target already exists{cut} (replace it: "
                "force=True, or `ktune export --force`)"
            )
        if taken and remote:
            check_replaceable_uri(target, "--out")
        from ktune.export import export_best

        done = export_best(
            self.dir,
            target if storage.is_uri(target) else Path(target),
            force=force,
            trial=chosen,
        )
        if not other:
            self.best["export"] = str(done)
        return str(done)

    def load_model(self, trial: str | None = None):
        """The best trial's Keras model, rebuilt and restored from its checkpoint; with
        ``ensemble.seeds``, the ensemble's (the mean of its members' probabilities).

        Args:
            trial: str or None. A trial of the Pareto front (:attr:`pareto_front`) to load
                instead of the best. Defaults to None."""
        from ktune.rebuild import family_of_record, restore_from_record

        family = family_of_record(self.spec)
        entry = front_trial(self.best, trial)  # an unknown trial fails here
        if entry["trial"] != self.best_trial:
            with _checkpoint(entry["checkpoint"]).as_directory() as d:
                return restore_from_record(family, entry["config"], self.spec, d)
        with self.best_checkpoint.as_directory() as d:
            model = restore_from_record(family, self.best_config, self.spec, d)
        if not self.best.get("ensemble"):
            return model
        from ktune.config import TrainingConfig
        from ktune.ensemble import ensemble_model

        return ensemble_model(
            self.dir,
            self.best,
            family,
            self.spec["artefacts"],
            len(self.spec["class_names"]),
            TrainingConfig(**self.spec["training"]),
            model,
            location=self.spec.get("experiment_path"),
        )

    def predict(self, texts: Sequence[str], trial: str | None = None) -> list[dict]:
        """Label, score and per-class probabilities of each text, from the export when
        there is a local one of the best checkpoint, else from that checkpoint; with
        ``trial``, from that Pareto-front trial's checkpoint (:meth:`load_model`)."""
        from ktune.export import predict

        texts = text_list(texts)
        other = front_trial(self.best, trial)["trial"] != self.best_trial
        if not texts:
            return []
        exported = self.export_dir
        if not other and exported and self._export_is_best(Path(exported)):
            return predict(exported, texts)
        from ktune.config import TrainingConfig
        from ktune.data import clean_text
        from ktune.rebuild import family_of_record

        family = family_of_record(self.spec)
        training = TrainingConfig(**self.spec["training"])
        model = self.load_model(trial)
        unescape = bool(self.spec.get("data", {}).get("unescape_backslash"))
        cleaned = [clean_text(t, unescape) for t in texts]  # as the training texts were
        probs = model.predict(family.encode(self.spec["artefacts"], training, cleaned), verbose=0)
        names = list(self.spec["class_names"])
        return [
            {
                "text": t,
                "label": names[int(p.argmax())],
                "score": float(p.max()),
                "probabilities": dict(zip(names, map(float, p))),
            }
            for t, p in zip(texts, probs)
        ]

    def summary(self) -> str:
        """The results table, the best trial and where its results and export are."""
        from ktune.experiment import format_results_table

        metric = self.spec["metric"]
        frame = self.trials
        columns = list(frame.columns)
        keys = columns[columns.index("status") + 1 : columns.index("epochs")]
        rows = [
            {k: (None if _is_nan(v) and k in keys else v) for k, v in row.items()}
            for row in frame.to_dict("records")
        ]
        value = self.best_metrics.get(metric, float("nan"))
        others = [o["metric"] for o in self.best.get("objectives") or [] if o["metric"] != metric]
        lines = [
            format_results_table(
                rows, metric, keys, (self.spec.get("training") or {}).get("epochs"), others
            ),
            "",
            f"best trial {self.best_trial}: {metric}={value:.4f} at epoch "
            f"{self.best_metrics.get('epoch')}, test_accuracy={self.test_accuracy:.4f} "
            "(test split, reported separately)",
            f"results: {storage.redact(self.path)}",
        ]
        ensemble = self.best.get("ensemble")
        if ensemble:
            alone = ", ".join(f"{m['test_accuracy']:.4f}" for m in ensemble["members"])
            val = (ensemble.get("metrics") or {}).get("val_accuracy")
            val_text = "" if val is None else f", its val_accuracy {val:.4f}"
            lines.insert(
                -1,
                f"  test_accuracy is the ensemble's: the mean of seeds {ensemble['seeds']} "
                f"(ensemble.seeds{left_out_text(ensemble)}{val_text}); each alone: {alone}",
            )
        if self.pareto_front:
            lines.insert(-1, "Pareto front (export one with: ktune export DIR --trial ID):")
            for entry in self.pareto_front:
                values = ", ".join(f"{k}={v:.4g}" for k, v in entry["objectives"].items())
                lines.insert(-1, f"  {entry['trial']}: {values}")
        if self.export_dir:
            shown = storage.redact(self.export_dir)
            lines.append(f'exported: {shown}  (try: ktune predict {shown} "some text")')
        return "\n".join(lines)


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and v != v


def _checkpoint(location: str):
    """A ``ray.tune.Checkpoint`` of a folder or a URI."""
    from ray import tune

    if storage.is_uri(location):
        fs, path = storage.filesystem(location)
        return tune.Checkpoint(path, filesystem=fs)
    return tune.Checkpoint(location)
