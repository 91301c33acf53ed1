"""ktune's public face: run a search from Python, or put ktune into your own ``tune.Tuner``.

Two ways in, one code path (``ktune run`` on the command line calls :func:`run`):

- **An experiment**: :func:`run` takes an experiment file (or a dict, or an
  :class:`~ktune.config.ExperimentConfig`), runs its search end to end and returns an
  :class:`ExperimentResult`; :func:`resume` continues one whose driver died;
  :func:`load` opens a finished one (a folder or a URI).
- **A plugin**: :func:`trainable` returns a Ray Tune trainable over prepared data for
  your own ``tune.Tuner``; :func:`search_space` returns a family's space for Optuna's
  ``OptunaSearch(space=...)`` or as a Ray Tune ``param_space``; :func:`export_result`
  and :func:`load_model` turn any resulting ``ray.tune.Result`` into a verified
  SavedModel or a Keras model.

:func:`predict` classifies texts with any export (a folder or a URI). The command line
maps onto these one to one: ``ktune run`` -> :func:`run`, ``resume`` -> :func:`resume`,
``export`` -> ``load(...).export(...)``, ``predict`` -> :func:`predict`. Nothing here
prints unless asked (``progress=True`` prints the live table of trials).
"""

from __future__ import annotations

import json
import shutil
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from ktune import driver, storage
from ktune import experiment_dir as _experiment_dir
from ktune.config import ExperimentConfig, parse_config
from ktune.errors import ConfigError, ExperimentError, text_list
from ktune.experiment_file import experiment_document, read_experiment_file
from ktune.experiment_result import ExperimentResult

__all__ = [
    "run",
    "resume",
    "load",
    "trainable",
    "search_space",
    "export_result",
    "load_model",
    "predict",
    "ExperimentResult",
]

# Keyword overrides of run() that are not sections of the experiment file.
_FLAT = ("num_samples", "storage", "address")


def _experiment_config(experiment: Any, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """An ExperimentConfig from a YAML path, a dict or a config, with ``overrides``.

    Overrides are the CLI's (``num_samples``, ``storage``, ``address``) or whole sections
    of the experiment file merged key by key (``training={"epochs": 1}``); ``search.space``
    merges hyperparameter by hyperparameter.
    """
    from ktune.config import TOP_LEVEL

    flat = {k: overrides[k] for k in _FLAT if k in overrides}
    sections = {k: v for k, v in overrides.items() if k not in _FLAT}
    for name in sections:
        if name not in TOP_LEVEL:
            raise ConfigError(
                f"{name}: unknown override; give {', '.join(_FLAT)} or a "
                f"section of the experiment file ({', '.join(TOP_LEVEL)})"
            )
    if isinstance(experiment, ExperimentConfig):
        if sections:
            raise ConfigError(
                f"{next(iter(sections))}: a parsed ExperimentConfig takes only "
                f"the overrides {', '.join(_FLAT)}; pass the YAML file or a dict"
            )
        cfg = experiment
        if "num_samples" in flat:
            cfg = replace(cfg, search=replace(cfg.search, num_samples=flat["num_samples"]))
        if "address" in flat:
            cfg = replace(cfg, address=flat["address"])
        if "storage" in flat:
            cfg = replace(
                cfg,
                storage=str(Path(flat["storage"]).expanduser().resolve())
                if not storage.is_uri(flat["storage"])
                else flat["storage"],
            )
        if "num_samples" in flat and cfg.document is not None:  # experiment.yaml: as run
            document = experiment_document(yaml.safe_load(cfg.document), flat["num_samples"])
            cfg = replace(cfg, document=document)
        return cfg
    if isinstance(experiment, Mapping):
        raw, base, source = dict(experiment), Path.cwd(), None
    elif isinstance(experiment, (str, Path)):
        path = Path(experiment)
        raw = dict(read_experiment_file(path) or {})
        base, source = path.resolve().parent, str(path.resolve())
    else:
        raise ConfigError(
            f"experiment: expected a YAML file, a dict or an ExperimentConfig, "
            f"got {type(experiment).__name__}"
        )
    from_file = set()  # "section.key" the merge kept from the file
    for name, value in sections.items():
        if isinstance(value, Mapping) and isinstance(raw.get(name), Mapping):
            from_file |= {f"{name}.{k}" for k in raw[name] if k not in value}
            merged = {**raw[name], **value}
            space, over = raw[name].get("space"), value.get("space")
            if name == "search" and isinstance(space, Mapping) and isinstance(over, Mapping):
                # hyperparameter by hyperparameter, as the file's space over the family's
                merged["space"] = {**space, **over}
            raw[name] = merged
        else:
            raw[name] = value
    try:
        return parse_config(raw, base_dir=base, source_path=source, **flat)
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if key in from_file:  # the user did not write it in this call: say where it is
            name = key.split(".", 1)[0]
            raise ConfigError(
                f"{e} ({key} is the experiment file's: the {name}= override merges into "
                f"the file's {name} section key by key)"
            ) from e
        raise


def run(
    experiment: Any,
    *,
    scheduler: Any = None,
    search_alg: Any = None,
    callbacks: Sequence[Any] = (),
    export: bool | None = None,
    progress: bool = False,
    verbose: bool = False,
    **overrides: Any,
) -> ExperimentResult:
    """Runs an experiment's search end to end: data, search, test accuracy, export.

    Args:
        experiment: str, Path, dict or ExperimentConfig. An experiment file, its parsed
            contents, or a validated config.
        scheduler: a Ray Tune scheduler (``HyperBandScheduler()``, ``PopulationBasedTraining
            (...)``) instead of the one ``search.scheduler`` names. Defaults to None.
        search_alg: a Ray Tune searcher instead of ktune's Optuna TPE. Defaults to None.
        callbacks: ``ray.tune.Callback`` objects (loggers) run beside ktune's own.
        export: bool or None. Export the best trial; None follows ``export.enabled``.
        progress: bool. Print the live table of trials. Defaults to False.
        verbose: bool. Ray Tune's own output instead. Defaults to False.
        **overrides: ``num_samples``, ``storage``, ``address``, or sections of the
            experiment file merged key by key (``training={"epochs": 1}``).

    Returns:
        ExperimentResult: the best trial, every trial, and the experiment's files.

    Raises:
        KtuneUserError: a bad experiment, data file or target, before Ray starts.

    Example::

        import ktune
        result = ktune.run("examples/quickstart.yaml", num_samples=4, storage="/tmp/runs")
        print(result.best_config, result.test_accuracy)
        result.predict(["Striker scores twice in the cup final"])
    """
    from ktune.experiment import run_search

    cfg = _experiment_config(experiment, overrides)
    best, grid = run_search(
        cfg,
        export=export,
        verbose=verbose,
        progress=progress,
        scheduler=scheduler,
        search_alg=search_alg,
        tune_callbacks=callbacks,
    )
    return _result(cfg.experiment_path, cfg.experiment_dir, best, grid)


def resume(
    experiment_dir: str | Path,
    *,
    address: str | None = None,
    export: bool | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool = False,
    verbose: bool = False,
) -> ExperimentResult:
    """Continues the search of an experiment whose driver died (``ktune resume``).

    Finished trials are kept; trials that were running continue from their newest
    checkpoint; the Optuna study continues from its journal.

    Args:
        experiment_dir: str or Path. ``<storage>/<name>``, a folder or a URI.
        address: str or None. A Ray cluster to join. Defaults to a local Ray.
        export: bool or None. Export the best trial; None follows the experiment file.
        callbacks: ``ray.tune.Callback`` objects run in the driver.
        progress, verbose: as in :func:`run`.

    Returns:
        ExperimentResult.
    """
    from ktune.experiment import resume_search

    best, grid = resume_search(
        experiment_dir,
        address=address,
        export=export,
        verbose=verbose,
        progress=progress,
        tune_callbacks=callbacks,
    )
    where = (
        str(experiment_dir)
        if storage.is_uri(str(experiment_dir))
        else str(Path(experiment_dir).resolve())
    )
    local = _experiment_dir.staging_folder(where) if storage.is_uri(where) else Path(where)
    return _result(where, local, best, grid)


def _result(path: str, local: Path, best: dict, grid: Any) -> ExperimentResult:
    spec = _experiment_dir.read_spec(local)
    return ExperimentResult(path=str(path), dir=Path(local), spec=spec, best=best, _grid=grid)


def load(experiment_dir: str | Path, *, workdir: str | Path | None = None) -> ExperimentResult:
    """Opens a finished experiment: a folder ``<storage>/<name>`` or a URI.

    A URI's ktune files are downloaded to a local folder; checkpoints stay where they
    are and are read from there when needed (``load_model``, ``export``).

    Args:
        experiment_dir: str or Path. ``<storage>/<name>``, a folder or a URI.
        workdir: str or Path or None. Where a URI's files are downloaded (the caller
            removes it). Defaults to a temporary folder, removed with the result.

    Example::

        result = ktune.load("results/quickstart")
        result.trials.sort_values("val_accuracy").tail(3)
    """
    given = str(experiment_dir)
    ours = storage.is_uri(given) and workdir is None
    if storage.is_uri(given):
        base = storage.temporary_dir("ktune-load-") if ours else Path(str(workdir))
        local = _experiment_dir.fetch_experiment(given, base / storage.basename(given))
        path = given
    else:
        local, path = Path(given), str(Path(given).resolve())
    # One clear line naming the folder as given, before TensorFlow or Ray load.
    spec, best = driver.read_finished(local)
    result = ExperimentResult(path=path, dir=local.resolve(), spec=spec, best=best)
    if ours:
        weakref.finalize(result, shutil.rmtree, local.parent, True)
    return result


def predict(export_dir: str | Path, texts: Sequence[str]) -> list[dict]:
    """Label, score and per-class probabilities of each text, from an export.

    Args:
        export_dir: str or Path. A folder written by :func:`export_result`,
            ``ExperimentResult.export`` or ``ktune export``, or a URI (downloaded to a
            temporary folder, removed afterwards).
        texts: sequence of str. The raw texts.

    Returns:
        list of dict: ``text``, ``label``, ``score`` and ``probabilities`` (class -> p).

    Example::

        ktune.predict("results/quickstart/export", ["Striker scores twice"])[0]["label"]
    """
    given = str(export_dir)
    texts = text_list(texts)  # before any download or TensorFlow
    tmp = None
    try:
        if storage.is_uri(given):
            if not storage.exists(storage.join(given, "saved_model.pb"), "EXPORT_DIR"):
                raise ExperimentError(
                    f"{storage.redact(given)}: not a SavedModel export (no saved_model.pb)"
                )
            tmp = storage.temporary_dir("ktune-download-")
            d = storage.download_dir(given, tmp / "export", key="EXPORT_DIR")
        else:
            d = Path(given)
        # One clear line before TensorFlow loads.
        if not d.exists():
            raise ExperimentError(f"{d}: no such export folder")
        if not (d / "saved_model.pb").is_file():
            raise ExperimentError(f"{d}: not a SavedModel export (no saved_model.pb)")
        from ktune.export import predict as predict_export

        return predict_export(d, texts)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# --- the plugin: ktune's pieces in your own Tuner ----------------------------------------


def search_space(
    family: str = "transformer",
    overrides: Mapping[str, Any] | None = None,
    *,
    backend: str = "optuna",
):
    """A family's search space with your overrides, for your own searcher.

    Args:
        family: str. ``transformer``, ``tfhub_bert`` or ``hf_bert``. Defaults to
            ``transformer``.
        overrides: mapping or None. As ``search.space`` in the experiment file: a list is
            a choice, ``{low, high, log}`` a range, a scalar fixed.
        backend: str. ``optuna``: the define-by-run function for
            ``OptunaSearch(space=...)``, ``heads`` drawn among divisors of the drawn
            ``embed_dim``. ``tune``: a Ray Tune ``param_space`` (``tune.choice``,
            ``tune.loguniform``, ...; ``heads`` a ``tune.sample_from`` over the divisors)
            for Ray's BasicVariantGenerator (random or grid) and any scheduler.

    Returns:
        A picklable callable (optuna) or a dict (tune).

    Example::

        space = ktune.search_space("transformer", {"embed_dim": [32, 64]}, backend="tune")
        tune.Tuner(ktune.trainable("transformer"), param_space=space, ...).fit()
    """
    from ktune.families import get_space, names

    if family not in names():
        raise ConfigError(f"family: must be one of {', '.join(names())}, got {family!r}")
    space = get_space(family)
    resolved = space.resolve(overrides, key="overrides")
    if backend == "optuna":
        return space.space_fn(resolved)
    if backend == "tune":
        return space.tune_space(resolved)
    raise ConfigError(f"backend: must be 'optuna' or 'tune', got {backend!r}")


def trainable(
    family: str = "transformer",
    *,
    data: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    resources: Mapping[str, Any] | None = None,
    build_model: Callable | None = None,
    seed: int = 0,
    callbacks: Sequence[Any] = (),
):
    """A Ray Tune trainable of a ktune family, for your own ``tune.Tuner``.

    The data is loaded and prepared once, here in the driver (vocabulary, token ids or
    the BERT tokenizer's ids), and reaches the trials through Ray's object store. Each
    trial builds the family's model for its config, trains it with AdamW + warmup,
    reports ``val_accuracy``, ``val_loss``, ... after every epoch with a resumable
    checkpoint (PBT exploits load the donor's), and :func:`export_result` turns any of its
    results into a SavedModel. Every config Ray draws is checked in the driver before the
    trial is placed: a missing key or a ``heads`` that does not divide ``embed_dim`` stops
    ``Tuner.fit()`` with one :class:`~ktune.errors.ConfigError`.

    Args:
        family: str. ``transformer``, ``tfhub_bert`` or ``hf_bert``. Defaults to
            ``transformer``.
        data: mapping or None. As ``data:`` in the experiment file (source builtin, tfds,
            csv, jsonl; relative paths from the working directory). Defaults to builtin.
        training: mapping or None. As ``training:`` (epochs, batch_size, maxlen, ...).
        model: mapping or None. As ``model:`` (handles, model names, templates).
        resources: mapping or None. As ``resources:`` per trial (cpu, gpu, gpu_memory_mb).
        build_model: callable or None. Your own Keras model, ``fn(config, info)`` ->
            an uncompiled model from token ids ``(batch, info.maxlen)`` to softmax
            probabilities over ``info.num_classes`` (``info.vocab_size`` tokens); the
            config is yours, with ``learning_rate`` (and optional ``warmup``,
            ``weight_decay``) for ktune's optimizer. Uses the transformer family's data.
        seed: int. Seeds Keras in every trial. Defaults to 0.
        callbacks: Keras callbacks added to every trial's ``fit``.

    Returns:
        A trainable for ``tune.Tuner(trainable, ...)``, with its resources set.

    Example::

        from ray import tune
        from ray.tune.search.optuna import OptunaSearch
        import ktune

        tuner = tune.Tuner(
            ktune.trainable("transformer", training={"epochs": 3}),
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(space=ktune.search_space("transformer"),
                                        metric="val_accuracy", mode="max"),
                scheduler=tune.schedulers.ASHAScheduler(metric="val_accuracy", mode="max",
                                                        max_t=3),
                num_samples=8),
        )
        best = tuner.fit().get_best_result("val_accuracy", "max")
        ktune.export_result(best, "exported/")
    """
    from ray import tune

    from ktune.prepare import prepare
    from ktune.trainables.base import run_trial
    from ktune.tuner import TrialResources

    if build_model is not None and not callable(build_model):
        raise ConfigError(
            f"build_model: must be a function (config, info) -> keras.Model, got {build_model!r}"
        )
    if build_model is not None and family != "transformer":
        raise ConfigError(
            "build_model: your own model trains on the transformer family's "
            f"token ids; family must be 'transformer', got {family!r}"
        )
    raw = {
        "name": "trainable",
        "family": family,
        "data": data,
        "training": training,
        "model": model,
        "resources": resources,
        "search": {"seed": seed},
        "export": False,
    }
    cfg = parse_config({k: v for k, v in raw.items() if v is not None})
    # The handles of the default space's sizes are not checked here: the user's own
    # param_space decides which sizes are drawn, and each is checked as it is drawn.
    data_set, prepared, payload = prepare(cfg, check_models=False)
    payload = replace(payload, build_model=build_model)
    space = _space_for(family, build_model)
    fn = tune.with_parameters(run_trial, payload=payload, callbacks=list(callbacks))
    return tune.with_resources(
        fn,
        TrialResources(
            space,
            cfg.resources.cpu,
            cfg.resources.gpu,
            family,
            cfg.model if family in ("tfhub_bert", "hf_bert") else None,
        ),
    )


def _space_for(family: str, build_model: Callable | None):
    from ktune.families import get_space
    from ktune.search_spaces.custom import CustomModelSpace

    return CustomModelSpace() if build_model is not None else get_space(family)


def _trial_info(
    result_or_checkpoint: Any, metric: str | None = "val_accuracy", mode: str | None = None
) -> tuple[Any, dict]:
    """(checkpoint, ktune_trial.json) of a ray.tune.Result or Checkpoint of a ktune trial.

    Of a Result, the checkpoint of its best epoch by ``metric`` (Ray's ``Result.checkpoint``
    is the latest, which an overfitting trial made worse); ``metric=None``: the latest.
    """
    from ray import train, tune

    from ktune.trainables.base import TRIAL_FILE

    checkpoint = result_or_checkpoint
    if isinstance(result_or_checkpoint, tune.Result):
        checkpoint = result_or_checkpoint.checkpoint
        if checkpoint is None:
            raise ExperimentError("result: this trial reported no checkpoint (no epoch ended?)")
        if metric is not None:
            from ktune.results import best_checkpoint, metric_mode, warn_if_best_not_kept

            mode = metric_mode(metric, mode)
            picked = best_checkpoint(result_or_checkpoint, metric, mode)
            if result_or_checkpoint.best_checkpoints and picked is None:
                raise ExperimentError(
                    f"metric: no checkpoint of this trial reported a finite {metric!r} (pass "
                    "the name your trials report, or metric=None for the latest checkpoint)"
                )
            if picked is not None:
                checkpoint = picked[0]
                warn_if_best_not_kept(result_or_checkpoint, metric, mode, picked[1])
    elif isinstance(result_or_checkpoint, (str, Path)):
        if not storage.is_uri(str(result_or_checkpoint)) and not Path(checkpoint).is_dir():
            raise ExperimentError(f"{checkpoint}: no such checkpoint folder")
        checkpoint = tune.Checkpoint(str(result_or_checkpoint))
    # ray.train's Checkpoint too: Ray 2.60's Result.from_path(trial_dir) holds those.
    if not isinstance(checkpoint, (tune.Checkpoint, train.Checkpoint)):
        raise ExperimentError(
            f"result: expected a ray.tune.Result or Checkpoint, got "
            f"{type(result_or_checkpoint).__name__}"
        )
    with checkpoint.as_directory() as d:
        info_file = Path(d, TRIAL_FILE)
        if not info_file.is_file():
            raise ExperimentError(
                f"{checkpoint.path}: not a checkpoint of a ktune trainable (no {TRIAL_FILE})"
            )
        return checkpoint, json.loads(info_file.read_text())


def _family_of_info(info: dict, build_model: Callable | None):
    """The family of a checkpoint's ``ktune_trial.json``; ``build_model`` first."""
    from ktune.rebuild import family_for

    own = info.get("own_model")
    if build_model is None and own and not info.get("build_model"):
        raise ConfigError(
            f"build_model: this trial trained your own model ({own}), which cannot be "
            "imported by name; pass the same function as build_model="
        )
    return family_for(info["family"], build_model or info.get("build_model"), key="build_model")


def load_model(
    result_or_checkpoint: Any,
    *,
    build_model: Callable | None = None,
    metric: str | None = "val_accuracy",
    mode: str | None = None,
):
    """The Keras model of a ktune trial's checkpoint (like KerasTuner's ``get_best_models``).

    Args:
        result_or_checkpoint: a ``ray.tune.Result``, ``ray.tune.Checkpoint`` or folder.
        build_model: callable or None. Your ``build_model`` when the trial used one that
            cannot be imported by name (defined in ``__main__``).
        metric, mode: of a Result, the checkpoint of the epoch best by ``metric`` (default
            the highest ``val_accuracy``; a loss: the lowest; another metric needs ``mode``),
            not Ray's ``Result.checkpoint``, the latest; ``metric=None``: the latest.

    Returns:
        keras.Model: rebuilt for the trial's config, weights restored.
    """
    from ktune.rebuild import restore_from_record

    checkpoint, info = _trial_info(result_or_checkpoint, metric, mode)
    family = _family_of_info(info, build_model)
    with checkpoint.as_directory() as d:
        return restore_from_record(family, info["config"], info, d)


def export_result(
    result_or_checkpoint: Any,
    out: str | Path,
    *,
    force: bool = False,
    build_model: Callable | None = None,
    metric: str | None = "val_accuracy",
    mode: str | None = None,
) -> Path:
    """A verified SavedModel that takes raw strings, from any ktune trial's result.

    Works on the ``ray.tune.Result`` (or ``Checkpoint``) of a trial of
    :func:`trainable` in your own Tuner, no experiment folder needed: the checkpoint
    carries the family, config, vocabulary and class names. The export is reloaded and
    compared with the restored model before it is moved into place.

    Args:
        result_or_checkpoint: a ``ray.tune.Result``, ``ray.tune.Checkpoint`` or folder.
        out: str or Path. A local folder that must not exist (unless ``force``).
        force: bool. Replace an existing export once the new one is verified.
        build_model: callable or None. As in :func:`load_model`.
        metric, mode: which checkpoint of a Result, as in :func:`load_model`.

    Returns:
        Path: the export folder.
    """
    from ktune.config import TrainingConfig
    from ktune.export import check_replaceable, export_checkpoint
    from ktune.results import checkpoint_metrics

    target = Path(out).resolve()
    if target.exists() and not force:
        raise ExperimentError(
            f"{target}: export target already exists (use force=True to replace it)"
        )
    check_replaceable(target)
    checkpoint, info = _trial_info(result_or_checkpoint, metric, mode)
    family = _family_of_info(info, build_model)
    metrics = checkpoint_metrics(checkpoint)  # the epoch exported and what it scored
    with checkpoint.as_directory() as d:
        return export_checkpoint(
            family,
            info["config"],
            info["artefacts"],
            info["class_names"],
            TrainingConfig(**info["training"]),
            d,
            target,
            verify_texts=info["verify_texts"] or ["a text", ""],
            metadata={"family": info["family"], "checkpoint": checkpoint.path, "metrics": metrics},
            unescape_backslash=bool(info.get("unescape_backslash")),
        )
