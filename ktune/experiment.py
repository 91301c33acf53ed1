"""One experiment from start to end: the data flow of ``ktune run`` and ``ktune resume``.

validate and check the targets -> load data once, family prepares shared artefacts once
(``prepare.py``, in a thread) while Ray starts (``ray_start.py``) -> write the experiment folder
(``experiment_dir.py``) -> Ray Tune search (``tuner.py``) -> results table, ``best.json``
with the best trial's test accuracy, export (``results.py``).

With a URI as storage (``s3://bucket/prefix``) Ray Tune writes the trials straight to
``<uri>/<name>``; ktune writes its own files to a local staging folder
(``cfg.experiment_dir``) and uploads them there under the same names: ``experiment.yaml``
and ``ktune.json`` when the search starts, ``optuna.journal`` while it runs,
``results.csv`` and then ``best.json`` when it ends, then the export.

The driver is quiet unless asked: Ray's own tables and the workers' log lines are off;
``progress=True`` prints :class:`ktune.progress.SearchProgress`'s compact table, and
``verbose=True`` (``--verbose``) brings Ray's output back instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ktune import experiment_dir, storage
from ktune.config import DataConfig, ExperimentConfig
from ktune.driver import (
    CLAIM_FILE,
    DRIVER_FILE,
    claimed,
    driver_marked,
    holds_results,
    refuse_while_running,
)
from ktune.errors import ExperimentError, SearchInterrupted
from ktune.experiment_dir import (
    BEST_FILE,
    EXPERIMENT_FILE,
    JOURNAL_FILE,
    SPEC_FILE,
    STOP_LOG,
)
from ktune.experiment_dir import fetch_experiment as fetch_experiment  # old home; moved
from ktune.experiment_file import experiment_as_run
from ktune.prepare import prepare_then_warm_tune
from ktune.ray_start import check_address, init_ray, trials_done, tune_output
from ktune.results import finish_search
from ktune.search_end import (
    SearchEnd,
    exit_once_ray_is_lost,
    finished_before_export,
    fit_naming_resume,
    interrupted_summary,
    note_interrupted,
    raising_signals,
    stop_if_interrupted,
    stop_signals,
)
from ktune.staging import push_staged

__all__ = [
    "run_experiment",
    "resume_experiment",
    "run_search",
    "resume_search",
    "check_targets",
    "format_results_table",
    "spec_data",
]

log = logging.getLogger("ktune")


def check_targets(cfg: ExperimentConfig) -> None:
    """Refuses to start when results or an export already exist where this run would write.

    On a URI this is the first contact with the storage, so a bucket that cannot be
    reached (credentials, network, no such bucket) is reported here too, naming ``storage``.
    A local storage or ``export.dir`` that could not be written (a file in the way, no
    permission, a full disk) is refused here, before any data loads.
    """
    if not cfg.remote:
        holder = cfg.experiment_dir.parent
        if (holder / SPEC_FILE).is_file():  # `--storage results/quickstart`, one level low
            raise ExperimentError(
                f"storage: {holder} is an experiment's folder ({SPEC_FILE}), not a folder "
                f"of experiments; this run would land inside it (use --storage {holder.parent})"
            )
        storage.check_local_writable(cfg.experiment_dir, "storage")
    if cfg.export.enabled and cfg.export.dir is not None and not storage.is_uri(cfg.export.dir):
        if not os.path.exists(cfg.export.dir):  # an existing target is refused below
            storage.check_local_writable(cfg.export.dir, "export.dir")
    if cfg.remote:
        storage.check_reachable(cfg.experiment_path, "storage")
    _refuse_taken(cfg)
    if cfg.export.enabled and storage.is_uri(cfg.export_path):
        storage.check_reachable(cfg.export_path, "export.dir")
    if cfg.export.enabled and _exists(cfg.export_path, "export.dir"):
        raise ExperimentError(
            f"{storage.redact(cfg.export_path)}: export target already exists; ktune never "
            "overwrites an export (set export.dir or remove it)"
        )


def _refuse_taken(cfg: ExperimentConfig) -> None:
    """Results already where this run would write them: refused."""
    if cfg.remote:
        taken = storage.is_nonempty_dir(cfg.experiment_path, "storage")
        where = storage.redact(cfg.experiment_path)
    else:
        taken, where = holds_results(cfg.experiment_dir), str(cfg.experiment_dir)
    if taken:
        raise ExperimentError(
            f"{where}: experiment directory already exists; ktune never overwrites results "
            "(choose another name or --storage)"
        )


def _exists(location: str, key: str) -> bool:
    """A local path or a URI that holds something."""
    if storage.is_uri(location):
        return storage.exists(location, key)
    return Path(location).exists()


def format_results_table(
    rows: Sequence[dict],
    metric: str,
    keys: Sequence[str],
    epochs: int | None = None,
    objectives: Sequence[str] = (),
) -> str:
    """A fixed-width table: one trial a row, its searched hyperparameters, its best metric
    and its value of each other objective (``objectives``: a multi-objective search's).
    With ``epochs`` (the training budget) Ray's TERMINATED reads DONE or STOPPED, as in
    the progress table and the report."""
    from ktune.tables import metric_text, objective_text, render_table, status_label, value_text

    def status(r: dict) -> str:
        raw = str(r.get("status", ""))
        trained = r.get("epochs")
        if epochs is None or not isinstance(trained, (int, float)) or trained != trained:
            return raw
        return status_label(raw, int(trained), epochs)

    cols = ["trial", "status", *keys, "epochs", metric, *objectives]
    table = [
        [
            str(r.get("trial", "")),
            status(r),
            *(value_text(r.get(k)) for k in keys),
            str(r.get("epochs", "")),
            metric_text(r.get(metric)),
            *(objective_text(r.get(o)) for o in objectives),
        ]
        for r in rows
    ]
    return render_table(cols, table)


def _storage_callbacks(cfg: ExperimentConfig) -> list:
    """Local storage: keeps a whole copy of Ray's snapshot beside Ray's own (a crash
    while Ray copies its files leaves them cut short). URI storage: keeps the remote
    Optuna journal current while the search runs."""
    if not cfg.remote:
        from ktune.ray_state import SnapshotKeeper

        return [SnapshotKeeper(cfg.experiment_dir, cfg.name)]
    from ktune.staging import UploadJournal

    # the Optuna journal, and ASHA's stops, which a resumed trial reads from the URI
    return [UploadJournal(cfg.experiment_dir, cfg.experiment_path, [JOURNAL_FILE, STOP_LOG])]


def _progress_callbacks(
    cfg: ExperimentConfig, verbose: bool, progress: bool = True, end: SearchEnd | None = None
) -> list:
    """The driver's live progress table, unless Ray's own output was asked for (``end``:
    its last line tells an interrupted search)."""
    if verbose or not progress:
        return []
    from ktune.progress import SearchProgress
    from ktune.search_spaces.base import searched_keys

    return [
        SearchProgress(
            name=cfg.name,
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            num_samples=cfg.search.num_samples,
            epochs=cfg.training.epochs,
            keys=searched_keys(cfg.search.space),
            end=end,
        )
    ]


def prepare_while_ray_starts(
    cfg: ExperimentConfig, verbose: bool, check: Callable[[Any], None] | None = None
) -> tuple[Any, Any, Any]:
    """:func:`~ktune.prepare.prepare` (vocabulary, TensorFlow's import) in a thread while
    Ray starts here: the two take seconds each, mostly waiting on other processes. The
    data files are read before either.

    ``check(prepared)`` runs once both are done. A problem with the data (or the check)
    wins over one starting Ray, as when the two ran one after the other; a Ray this call
    started is shut down again when the data fails, so nothing is left running.
    """
    import ray

    from ktune.data import load_data

    # The user's files are read first: a bad one is its one line before Ray starts (TFDS
    # needs TensorFlow: it loads in the thread, as does the builtin data, made by code).
    data = None if cfg.data.source in ("tfds", "builtin") else load_data(cfg.data)
    ray_was_running = ray.is_initialized()
    with ThreadPoolExecutor(1, thread_name_prefix="ktune-prepare") as pool:
        preparing = pool.submit(prepare_then_warm_tune, cfg, data)
        try:
            init_ray(cfg.address, verbose)
        except BaseException:
            preparing.result()  # a data problem is the one to show
            raise
    try:
        data, prepared, payload = preparing.result()
        if check is not None:
            check(prepared)
    except BaseException:
        if not ray_was_running:
            ray.shutdown()
        raise
    return data, prepared, payload


def _check_tracking(cfg: ExperimentConfig) -> None:
    """Before any work: the trackers the file names can be reached (:mod:`ktune.tracking`)."""
    if cfg.tracking.enabled:
        from ktune.tracking import check_tracking

        check_tracking(cfg)


def _tracking(cfg: ExperimentConfig, resume: bool = False):
    """MLflow's parent run and the trackers' Tune callbacks (:mod:`ktune.tracking`)."""
    from ktune.tracking import start_tracking

    return start_tracking(cfg, resume=resume)


def run_experiment(
    cfg: ExperimentConfig,
    *,
    export: bool | None = None,
    callbacks: Sequence = (),
    verbose: bool = False,
) -> dict:
    """Runs ``cfg`` end to end and returns the contents of ``best.json``.

    Raises a :class:`~ktune.errors.KtuneUserError` for bad input before Ray starts.
    ``callbacks`` are extra Keras callbacks for every trial (tests inject failures).
    ``verbose`` shows Ray Tune's own output instead of ktune's progress table.
    """
    return run_search(cfg, export=export, callbacks=callbacks, verbose=verbose)[0]


def run_search(
    cfg: ExperimentConfig,
    *,
    export: bool | None = None,
    callbacks: Sequence = (),
    verbose: bool = False,
    progress: bool = True,
    scheduler=None,
    search_alg=None,
    tune_callbacks: Sequence = (),
):
    """:func:`run_experiment`, returning ``(best.json's contents, Ray's ResultGrid)``.

    ``scheduler`` / ``search_alg`` replace what ``search`` names; ``tune_callbacks``
    (``ray.tune.Callback``) run in the driver beside ktune's own; ``progress`` prints the
    live table of trials.
    """
    from ktune.tuner import build_tuner

    started = time.time()
    if export is not None:  # kept in ktune.json: its resume exports as this run would
        cfg = replace(cfg, export=replace(cfg.export, enabled=export))
    check_targets(cfg)
    check_address(cfg.address)
    _check_tracking(cfg)
    exp_dir = cfg.experiment_dir
    # Claimed while it starts, against a second run: its folder (on a URI, its staging
    # folder here, until the name is taken there); a failed start leaves nothing behind.
    shown = storage.redact(cfg.experiment_path)
    with claimed(exp_dir, working_copy=cfg.remote, shown=shown):
        if cfg.remote:
            _refuse_taken(cfg)  # again: a run that let go of this claim took the name first
        data, prepared, payload = prepare_while_ray_starts(cfg, verbose)
        if cfg.remote:
            # Only a working copy: the remote experiment, checked empty above, is the truth,
            # so whatever an earlier run left in this folder goes (but this run's claim).
            experiment_dir.clear_working_copy(exp_dir, keep=(CLAIM_FILE,))
            log.info(
                "results: %s (ktune's files staged in %s)",
                shown,
                exp_dir,
            )
        exp_dir.mkdir(parents=True, exist_ok=True)
        as_run = experiment_as_run(cfg.source_path, cfg.document)
        if as_run is not None:
            experiment_dir.write_experiment_file(exp_dir, as_run)
        else:
            log.warning(
                "%s: the experiment has no YAML form (a value YAML cannot hold), so it "
                "cannot be resumed; pass plain values or a file",
                shown,
            )
        experiment_dir.write_spec(
            exp_dir,
            experiment_dir.new_spec(
                cfg, data.class_names, prepared.artefacts, payload.verify_texts
            ),
        )
        if cfg.remote:  # the name taken on the storage before the claim goes
            push_staged(cfg, [EXPERIMENT_FILE, SPEC_FILE])
    with driver_marked(exp_dir, "run", push=lambda: push_staged(cfg, [DRIVER_FILE])):
        # URI storage: the driver's file (experiment.yaml and ktune.json went under the claim)
        push_staged(cfg, [DRIVER_FILE])
        # A user's own searcher may finish before num_samples by design; ktune's do not.
        end = SearchEnd(expect_total=search_alg is None)
        with _tracking(cfg) as tracking:  # MLflow / W&B, when the file names them
            lost = exit_once_ray_is_lost(cfg, end, shown)
            with tune_output(verbose), stop_signals(end, lost):
                # (the searcher announces its Optuna study when built)
                grid = fit_naming_resume(
                    build_tuner(
                        cfg,
                        payload,
                        callbacks=callbacks,
                        tune_callbacks=[end]
                        + _progress_callbacks(cfg, verbose, progress, end)
                        + _storage_callbacks(cfg)
                        + tracking.callbacks
                        + list(tune_callbacks),
                        verbose=1 if verbose else 0,
                        scheduler=scheduler,
                        search_alg=search_alg,
                    ),
                    shown,
                    cfg.remote,
                )
            # Ctrl+C: Ray saved the search's state; nothing else is written (MLflow: KILLED)
            stop_if_interrupted(cfg, end, shown)
            trials_done()
            best = _finish(cfg, grid, data, prepared, started, export, tracking)
        return best, grid


def _finish(
    cfg: ExperimentConfig, grid, data, prepared, started, export, tracking, resumed=False
) -> dict:
    """Once the trials are done: :func:`~ktune.results.finish_search` (ensemble members,
    test evaluation, ``best.json``, export), then the trackers'. A Ctrl+C or SIGTERM
    before ``best.json`` is written stops the run as :class:`SearchInterrupted` naming
    ``ktune resume``, which finishes it from the kept trials (SIGTERM would otherwise end
    the process on the spot, and a Ctrl+C would not say how to go on)."""
    got: list[int] = []
    try:
        with raising_signals() as got:
            best = finish_search(cfg, grid, data, prepared, started, export, resumed, got)
            tracking.finish(best)
    except KeyboardInterrupt as e:
        if isinstance(e, SearchInterrupted) or finished_before_export(cfg, export):
            raise  # finished: `ktune resume` makes an export that was cut off
        n, shown, sig = len(grid), storage.redact(cfg.experiment_path), (got or [signal.SIGINT])[0]
        note_interrupted(cfg, interrupted_summary(sig, finished=n, total=n), shown)
        raise SearchInterrupted(shown, finished=n, total=n, cut_off=[], signal=sig) from None
    return best


def spec_data(spec: dict) -> DataConfig:
    """The ``DataConfig`` a search read, from its ``ktune.json`` (JSON made the data
    section's tuples lists)."""
    data: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in spec["data"].items()
    }
    return DataConfig(**data)


def resume_config(
    exp_dir: Path,
    spec: dict,
    storage_value: str,
    name: str,
    address: str | None = None,
    staging_dir: str | None = None,
) -> ExperimentConfig:
    """The config a resume runs: the experiment as run (``experiment.yaml`` in
    ``exp_dir``) on the data files the first run read (``ktune.json``'s resolved paths),
    ``model.build``'s module from the folder the first run found it in
    (``build_base_dir``), and the first run's trial budget and export folder."""
    from ktune.config import parse_config
    from ktune.experiment_file import read_experiment_file

    path = exp_dir / EXPERIMENT_FILE
    raw = read_experiment_file(path) or {}
    # The data files as the first run found them (absolute paths), wherever the file that
    # named them has gone since (a Ray Job's working directory, say).
    if isinstance(raw.get("data"), dict):
        for key in ("train", "test", "data_dir"):
            if key in raw["data"] and spec["data"].get(key):
                raw["data"][key] = spec["data"][key]
    base = spec.get("build_base_dir")
    cfg = parse_config(
        raw,
        # model.build's module; experiments from before build_base_dir was written for
        # dicts, or whose folder is gone: the experiment folder
        base_dir=base if base and Path(base).is_dir() else exp_dir,
        source_path=str(path),
        num_samples=spec["num_samples"],
        storage=storage_value,
        address=address,
    )
    return replace(
        cfg,
        name=name,
        data=spec_data(spec),
        export=replace(
            cfg.export, dir=spec["export_dir"], enabled=spec.get("export", cfg.export.enabled)
        ),
        staging_dir=staging_dir,
    )


def resume_experiment(
    exp_dir: str | Path,
    *,
    address: str | None = None,
    export: bool | None = None,
    callbacks: Sequence = (),
    verbose: bool = False,
) -> dict:
    """:func:`resume_search`, returning the contents of ``best.json``."""
    return resume_search(
        exp_dir, address=address, export=export, callbacks=callbacks, verbose=verbose
    )[0]


def resume_search(
    exp_dir: str | Path,
    *,
    address: str | None = None,
    export: bool | None = None,
    callbacks: Sequence = (),
    verbose: bool = False,
    progress: bool = True,
    tune_callbacks: Sequence = (),
):
    """Continues the search of ``exp_dir`` whose driver died; returns ``best.json``'s contents.

    Completed trials are kept; trials that were running continue from their last epoch
    checkpoint; the Optuna study continues from its journal in the experiment directory.
    ``exp_dir`` may be a URI (``s3://bucket/prefix/name``): ktune's files are downloaded
    to the staging folder the first run used, Ray restores from the URI, and the results
    are uploaded again.
    """
    from ray import tune

    from ktune.schedulers import refills_rungs, restore_rungs
    from ktune.tuner import build_trainable, trial_history_callbacks

    started = time.time()
    remote = storage.is_uri(str(exp_dir))
    if remote:
        where = str(exp_dir)
        shown = storage.redact(where)
        # A run or resume of this URI on this machine works in its staging folder: refused
        # before the download that replaces that folder (the claim covers one starting).
        staged = experiment_dir.staging_folder(where)
        with claimed(staged, working_copy=True, shown=shown):
            refuse_while_running(staged, shown)
            d = experiment_dir.stage_remote(where, keep=(CLAIM_FILE,))
        storage_value, name = storage.parent(where), storage.basename(where)
    else:
        d = Path(exp_dir).resolve()
        where = shown = str(d)
        if not d.is_dir():
            raise experiment_dir.missing_dir(d)
        storage_value, name = str(d.parent), d.name
    if not (d / SPEC_FILE).is_file():
        raise ExperimentError(f"{shown}: not a ktune experiment directory (no {SPEC_FILE})")
    if not (d / EXPERIMENT_FILE).is_file():
        raise ExperimentError(
            f"{shown}: no {EXPERIMENT_FILE} (the experiment as run), so there is nothing to "
            "resume from; start it again under a new name"
        )
    refuse_while_running(d, shown)
    if not remote:
        from ktune.ray_state import SET_ASIDE_DIR, repair, searcher_lost

        experiment_dir.refuse_relocated(d, shown)  # before anything in it changes
        for note in repair(d):
            log.info("%s", note)
        if searcher_lost(d):
            raise ExperimentError(
                f"{shown}: Ray's searcher snapshot was cut short when the run died and no "
                f"whole copy is left (set aside in {d / SET_ASIDE_DIR}); a resume would end "
                "the search at once: start it again under a new name"
            )
    if not tune.Tuner.can_restore(where):
        trained = not remote and any(d.glob("trial_*/checkpoint_*"))
        raise ExperimentError(
            f"{shown}: no search state to resume (the run stopped before Ray saved any)"
            + ("" if trained else "; no trial trained an epoch: remove it and run again")
        )
    try:
        spec = experiment_dir.read_spec(d)
    except ExperimentError:
        raise ExperimentError(
            f"{shown}: {SPEC_FILE} is cut short (the run died while Ray copied it) and no "
            "whole copy is left; the experiment cannot be resumed"
        ) from None
    cfg = resume_config(d, spec, storage_value, name, address, str(d) if remote else None)
    finished = experiment_dir.read_best(d)
    exported = (
        finished is not None
        and finished.get("export")
        and experiment_dir.export_complete(cfg.export_path)
    )
    if finished is not None and (
        exported or not (cfg.export.enabled if export is None else export)
    ):  # finished, and exported if it should be: a resume would only rewrite its results
        raise ExperimentError(
            f"{shown}: the search finished ({BEST_FILE}); there is nothing to resume "
            f"(`ktune report {shown}` shows it, `ktune export` exports a trial)"
        )
    check_address(cfg.address)
    _check_tracking(cfg)

    def same_artefacts(prepared) -> None:
        if json.loads(json.dumps(prepared.artefacts)) != spec["artefacts"]:
            raise ExperimentError(
                f"{shown}: the data or model changed since the search started (its "
                "prepared artefacts differ); start a new experiment instead"
            )

    data, prepared, payload = prepare_while_ray_starts(cfg, verbose, check=same_artefacts)
    refuse_while_running(d, shown)  # (one may have started while this one prepared)
    with driver_marked(d, "resume", push=lambda: push_staged(cfg, [DRIVER_FILE])):
        push_staged(cfg, [DRIVER_FILE])
        log.info("resuming %s", shown)
        end = SearchEnd()
        lost = exit_once_ray_is_lost(cfg, end, shown)
        with _tracking(cfg, resume=True) as tracking, tune_output(verbose), stop_signals(end, lost):
            tuner = tune.Tuner.restore(
                where, trainable=build_trainable(cfg, payload, callbacks), resume_unfinished=True
            )
            # The first run pickled its run config (callbacks, verbosity): this run's wins.
            local = getattr(tuner, "_local_tuner", None)
            if local is not None:
                run_config = local.get_run_config()
                run_config.callbacks = trial_history_callbacks(
                    [end]
                    + _progress_callbacks(cfg, verbose, progress, end)
                    + _storage_callbacks(cfg)
                    + tracking.callbacks
                    + list(tune_callbacks)
                )
                run_config.verbose = 1 if verbose else 0
                scheduler = local._tune_config.scheduler  # ASHA's rungs: not in Ray's snapshot
                uri = where if remote and refills_rungs(scheduler) else None  # to download
                with experiment_dir.trial_histories(uri) as histories:
                    restore_rungs(scheduler, d, histories)
            grid = fit_naming_resume(tuner, shown, remote)
            stop_if_interrupted(cfg, end, shown)
            trials_done()
        if export is None and cfg.export.enabled and _exists(cfg.export_path, "export.dir"):
            if storage.is_uri(cfg.export_path) and not experiment_dir.export_complete(
                cfg.export_path
            ):
                log.info(  # cut off by the kill: what a reader would take for an export
                    "%s: an export cut off mid-upload (no saved_model.pb); exporting again",
                    storage.redact(cfg.export_path),
                )
                storage.delete_dir(cfg.export_path, "export.dir")
            else:
                log.info(
                    "%s: already exported; `ktune export --force` replaces it",
                    storage.redact(cfg.export_path),
                )
                export = False
        with tracking:
            best = _finish(cfg, grid, data, prepared, started, export, tracking, resumed=True)
        return best, grid
