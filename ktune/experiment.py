"""One experiment from start to end: the data flow of ``ktune run``.

validate -> load data once -> family prepares shared artefacts once -> Ray Tune search ->
results table, ``best.json`` and the best trial's test accuracy -> export.

Files in the experiment directory ``<storage>/<name>`` besides Ray's own:
- ``experiment.yaml``: the experiment file as run;
- ``ktune.json``: what export needs to rebuild a trial's model (family, training sizes,
  class names, artefacts such as the vocabulary, texts to verify an export on);
- ``results.csv``: one row per trial; ``best.json``: the best trial, with its test
  accuracy and confusion matrix (``ktune report`` draws it).

With a URI as storage (``s3://bucket/prefix``) Ray Tune writes the trials straight to
``<uri>/<name>``; ktune writes its own files to a local staging folder
(``cfg.experiment_dir``) and uploads them there under the same names: ``experiment.yaml``
and ``ktune.json`` when the search starts, ``optuna.journal`` while it runs,
``results.csv`` and then ``best.json`` when it ends, then the export.

The driver is quiet by default: Ray's own tables and the workers' log lines are off and
:class:`ktune.progress.SearchProgress` prints a compact table instead; ``verbose=True``
(``--verbose``) brings Ray's output back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

from ktune import storage
from ktune.config import ExperimentConfig, TrainingConfig
from ktune.errors import ExperimentError, RayStartError, SearchFailed
from ktune.experiment_dir import BEST_FILE, EXPERIMENT_FILE, JOURNAL_FILE, RESULTS_FILE, SPEC_FILE

__all__ = [
    "run_experiment",
    "resume_experiment",
    "check_targets",
    "read_experiment",
    "fetch_experiment",
    "run_search",
    "resume_search",
    "family_for",
]

log = logging.getLogger("ktune")

# Texts an export is verified on: held-out test texts plus edge cases.
_EDGE_TEXTS = ["", "!!!", "a " * 400, "Ünïcödé — naïve café 東京 📈"]


def check_targets(cfg: ExperimentConfig) -> None:
    """Refuses to start when results or an export already exist where this run would write.

    On a URI this is the first contact with the storage, so a bucket that cannot be
    reached (credentials, network, no such bucket) is reported here too, naming ``storage``.
    A local storage or ``export.dir`` that could not be written (a file in the way, no
    permission, a full disk) is refused here, before any data loads.
    """
    if not cfg.remote:
        storage.check_local_writable(cfg.experiment_dir, "storage")
    if cfg.export.enabled and cfg.export.dir is not None and not storage.is_uri(cfg.export.dir):
        if not os.path.exists(cfg.export.dir):  # an existing target is refused below
            storage.check_local_writable(cfg.export.dir, "export.dir")
    if cfg.remote:
        storage.check_reachable(cfg.experiment_path, "storage")
        taken = storage.is_nonempty_dir(cfg.experiment_path, "storage")
        where = storage.redact(cfg.experiment_path)
    else:
        exp_dir = cfg.experiment_dir
        taken, where = exp_dir.exists() and any(exp_dir.iterdir()), str(exp_dir)
    if taken:
        raise ExperimentError(
            f"{where}: experiment directory already exists; ktune never overwrites results "
            "(choose another name or --storage)"
        )
    if cfg.export.enabled and storage.is_uri(cfg.export_path):
        storage.check_reachable(cfg.export_path, "export.dir")
    if cfg.export.enabled and _exists(cfg.export_path, "export.dir"):
        raise ExperimentError(
            f"{storage.redact(cfg.export_path)}: export target already exists; ktune never "
            "overwrites an export (set export.dir or remove it)"
        )


def _exists(location: str, key: str) -> bool:
    """A local path or a URI that holds something."""
    if storage.is_uri(location):
        return storage.exists(location, key)
    return Path(location).exists()


def fetch_experiment(uri: str, local: str | Path, *, trials: bool = False) -> Path:
    """Downloads an experiment from a URI into the folder ``local``; returns it.

    ktune's files always; with ``trials`` also the trial folders without their
    checkpoints (what ``ktune report`` reads). One clear error when ``uri`` is not a
    ktune experiment.
    """
    if not storage.exists(storage.join(uri, SPEC_FILE), "EXPERIMENT_DIR"):
        if not storage.exists(uri, "EXPERIMENT_DIR"):
            raise ExperimentError(f"{storage.redact(uri)}: no such experiment directory")
        raise ExperimentError(
            f"{storage.redact(uri)}: not a ktune experiment directory (no {SPEC_FILE})"
        )
    local = Path(local)
    if trials:
        return storage.download_dir(
            uri, local, exclude=["checkpoint_*", "export", ".export*"], key="EXPERIMENT_DIR"
        )
    local.mkdir(parents=True, exist_ok=True)
    for name in (SPEC_FILE, BEST_FILE, RESULTS_FILE, EXPERIMENT_FILE, JOURNAL_FILE):
        remote = storage.join(uri, name)
        if storage.exists(remote, "EXPERIMENT_DIR"):
            (local / name).write_text(storage.read_text(remote, "EXPERIMENT_DIR"))
    return local


def read_experiment(exp_dir: str | Path) -> tuple[dict, dict]:
    """(spec, best) of a finished experiment; one clear error when either is missing."""
    d = Path(exp_dir)
    if not d.is_dir():
        raise ExperimentError(f"{d}: no such experiment directory")
    spec_path, best_path = d / SPEC_FILE, d / BEST_FILE
    if not spec_path.is_file():
        raise ExperimentError(f"{d}: not a ktune experiment directory (no {SPEC_FILE})")
    if not best_path.is_file():
        raise ExperimentError(f"{d}: no completed trial yet (no {BEST_FILE})")
    return json.loads(spec_path.read_text()), json.loads(best_path.read_text())


def _last_line(error: Any) -> str:
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def _write_json(path: Path, data: Any) -> None:
    storage.write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _init_ray(address: str | None, verbose: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Quiet by default: the workers' log lines (TensorFlow's, Ray's) stay in Ray's log
    # files; the progress table is the driver's output. Through Ray Client (ray://) the
    # trials' driver runs on the cluster, so its output reaches us only as worker logs.
    to_driver = verbose or str(address or "").startswith("ray://")
    check_address(address)
    try:
        context = ray.init(
            # No address: a Ray of this run's own (free ports, its own dashboard), never
            # one that another search or `ray start` runs on this machine (--address auto);
            # inside a Ray Job, RAY_ADDRESS names the job's cluster.
            address=address or os.environ.get("RAY_ADDRESS") or "local",
            runtime_env={"env_vars": env},
            log_to_driver=to_driver,
            logging_level=logging.INFO if verbose else logging.WARNING,
        )
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        with contextlib.suppress(Exception):
            ray.shutdown()  # whatever half of it started
        raise RayStartError(_ray_start_problem(e, address)) from None
    if getattr(context, "dashboard_url", None):
        log.info("Ray dashboard: http://%s", context.dashboard_url)


def check_address(address: str | None) -> None:
    """Before any work: the cluster named by ``address`` (or ``RAY_ADDRESS``) answers."""
    import ray

    if ray.is_initialized():
        return
    problem = (
        _unreachable(address)
        if address
        else _unreachable(os.environ.get("RAY_ADDRESS"), name="RAY_ADDRESS")
    )
    if problem:
        raise RayStartError(problem)


def _unreachable(address: str | None, timeout: float = 5.0, name: str = "--address") -> str | None:
    """One line when ``address`` (``host:port`` or ``ray://host:port``) does not accept a
    connection: ``ray.init`` would otherwise retry it for minutes, printing as it goes."""
    import socket

    if not address or address in ("auto", "local"):
        return None
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return (
            f"{name} {address}: not an address of a Ray cluster (host:port, "
            "ray://host:port, or auto)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as e:
        why = e.strerror or type(e).__name__
        return (
            f"{name} {address}: cannot connect to the Ray cluster ({why}); check the "
            "address and that the cluster is up"
        )


def _ray_start_problem(error: Exception, address: str | None) -> str:
    """One line: why Ray did not start, and what to do."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else type(error).__name__
    if "AF_UNIX path length" in text:
        tmp = os.environ.get("RAY_TMPDIR", "/tmp")
        return (
            f"Ray could not start: its socket paths under RAY_TMPDIR ({tmp[:60]}...) "
            "would exceed 107 bytes; set RAY_TMPDIR to a shorter folder, e.g. /tmp"
        )
    if "in use" in text.lower():
        return (
            f"Ray could not start: a port it needs is in use ({text[:160]}); stop the "
            "other Ray (`ray stop`) or join it with --address auto"
        )
    if address:
        return (
            f"--address {address}: cannot connect to the Ray cluster ({text[:160]}); "
            "check the address and that the cluster is up"
        )
    return f"Ray could not start: {text[:200]} (see /tmp/ray/session_latest/logs)"


def format_results_table(rows: Sequence[dict], metric: str, keys: Sequence[str]) -> str:
    """A fixed-width table: one trial a row, its searched hyperparameters, its best metric."""
    from ktune.tables import metric_text, render_table, value_text

    cols = ["trial", "status", *keys, "epochs", metric]
    table = [
        [
            str(r.get("trial", "")),
            str(r.get("status", "")),
            *(value_text(r.get(k)) for k in keys),
            str(r.get("epochs", "")),
            metric_text(r.get(metric)),
        ]
        for r in rows
    ]
    return render_table(cols, table)


@contextlib.contextmanager
def _tune_output(verbose: bool):
    """Ray Tune's console output for one ``fit``: its own (verbose) or none at all.

    At ``verbose=0`` Tune's default output engine still prints a configuration box and
    a TensorBoard hint pointing at a temporary folder; its legacy engine prints nothing.
    Optuna announces its study at INFO level. Both are restored afterwards.
    """
    if verbose:
        yield
        return
    import optuna

    saved_env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    saved_level = optuna.logging.get_verbosity()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(saved_level)
        if saved_env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved_env


def _storage_callbacks(cfg: ExperimentConfig) -> list:
    """Local storage: keeps a whole copy of Ray's snapshot beside Ray's own (a crash
    while Ray copies its files leaves them cut short). URI storage: keeps the remote
    Optuna journal current while the search runs."""
    if not cfg.remote:
        from ktune.ray_state import SnapshotKeeper

        return [SnapshotKeeper(cfg.experiment_dir, cfg.name)]
    from ktune.staging import UploadJournal

    return [UploadJournal(cfg.experiment_dir, cfg.experiment_path, JOURNAL_FILE)]


def _push(cfg: ExperimentConfig, names: Sequence[str]) -> None:
    """URI storage: uploads the named staged files to the experiment URI."""
    if cfg.remote:
        from ktune.staging import push

        push(cfg.experiment_dir, cfg.experiment_path, names)


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


def _progress_callbacks(cfg: ExperimentConfig, verbose: bool, progress: bool = True) -> list:
    """The driver's live progress table, unless Ray's own output was asked for."""
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
        )
    ]


def _prepare(cfg: ExperimentConfig, check_models: bool = True):
    """Checks the models, loads the data once, lets the family prepare; builds the payload.

    ``check_models``: load every handle the space can draw first (``ktune run``); a
    user's own Tuner draws its own sizes, checked one by one as they are drawn."""
    from ktune.data import load_data
    from ktune.trainables import get_family
    from ktune.trainables.base import TrialPayload

    build_model = user_build_model(cfg)
    family = get_family(cfg.family)
    if check_models:
        family.check_model(cfg.model, cfg.search.space)
    data = load_data(cfg.data)
    log.info(
        "data: %d train / %d validation / %d test texts, %d classes",
        len(data.train_labels),
        len(data.val_labels),
        len(data.test_labels),
        data.num_classes,
    )
    prepared = family.prepare(data, cfg.training, cfg.model)
    payload = TrialPayload(
        family=cfg.family,
        train_inputs=prepared.train_inputs,
        train_labels=data.train_labels,
        val_inputs=prepared.val_inputs,
        val_labels=data.val_labels,
        num_classes=data.num_classes,
        artefacts=prepared.artefacts,
        training=cfg.training,
        cpu=cfg.resources.cpu,
        gpu=cfg.resources.gpu,
        seed=cfg.search.seed,
        gpu_memory_mb=cfg.resources.gpu_memory_mb,
        class_names=list(data.class_names),
        verify_texts=verify_texts(data),
        build_model=build_model,
    )
    return data, prepared, payload


def verify_texts(data) -> list[str]:
    """Texts an export is checked on: held-out test texts plus edge cases."""
    return [str(t) for t in data.test_texts[:60]] + _EDGE_TEXTS


def user_build_model(cfg: ExperimentConfig):
    """``model.build: module:function``, imported in the driver (one ConfigError naming
    ``model.build``); shipped to the trials by value, so their workers need not find it."""
    reference = (cfg.model or {}).get("build")
    if not reference:
        return None
    import sys

    from ray import cloudpickle

    from ktune.trainables.custom import import_build_model

    base = Path(cfg.source_path).parent if cfg.source_path else Path.cwd()
    fn = import_build_model(reference, base_dir=base)
    module = sys.modules.get(getattr(fn, "__module__", ""))
    if module is not None and not module.__name__.startswith("ktune"):
        cloudpickle.register_pickle_by_value(module)
    return fn


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
    check_targets(cfg)
    check_address(cfg.address)
    data, prepared, payload = _prepare(cfg)
    # Ray first: when it cannot start, nothing has been written that blocks a re-run.
    _init_ray(cfg.address, verbose)
    exp_dir = cfg.experiment_dir
    if cfg.remote:
        # Only a working copy: the remote experiment, checked empty above, is the truth,
        # so whatever an earlier run left in this folder goes.
        shutil.rmtree(exp_dir, ignore_errors=True)
        log.info(
            "results: %s (ktune's files staged in %s)", storage.redact(cfg.experiment_path), exp_dir
        )
    exp_dir.mkdir(parents=True, exist_ok=True)
    if cfg.source_path:
        shutil.copyfile(cfg.source_path, exp_dir / EXPERIMENT_FILE)
    _write_json(
        exp_dir / SPEC_FILE,
        {
            "name": cfg.name,
            "family": cfg.family,
            "metric": cfg.search.metric,
            "mode": cfg.search.mode,
            "num_samples": cfg.search.num_samples,
            "export_dir": cfg.export_path,
            "experiment_path": cfg.experiment_path,
            # URI storage: the local working copy; resume stages into the same folder,
            # where the Optuna searcher that Ray saved expects its journal.
            "staging_dir": str(exp_dir) if cfg.remote else None,
            "training": asdict(cfg.training),
            "class_names": data.class_names,
            "artefacts": prepared.artefacts,
            "verify_texts": payload.verify_texts,
            "data": asdict(cfg.data),
            "build_model": (cfg.model or {}).get("build") or None,
            # where model.build's module is found again (the experiment file's folder)
            "build_base_dir": str(Path(cfg.source_path).parent) if cfg.source_path else None,
        },
    )
    if cfg.remote:  # claims the name on the storage and makes the run resumable
        _push(cfg, [EXPERIMENT_FILE, SPEC_FILE])
    with _tune_output(verbose):  # the searcher announces its Optuna study when built
        grid = build_tuner(
            cfg,
            payload,
            callbacks=callbacks,
            tune_callbacks=_progress_callbacks(cfg, verbose, progress)
            + _storage_callbacks(cfg)
            + list(tune_callbacks),
            verbose=1 if verbose else 0,
            scheduler=scheduler,
            search_alg=search_alg,
        ).fit()
    return _finish(cfg, grid, data, prepared, started, export), grid


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

    from ktune.config import DataConfig, load_config
    from ktune.tuner import build_trainable

    started = time.time()
    remote = storage.is_uri(str(exp_dir))
    if remote:
        where = str(exp_dir)
        shown = storage.redact(where)
        spec_text = _remote_spec(where)
        spec = json.loads(spec_text)
        d = Path(spec.get("staging_dir") or storage.staging_dir(where))
        shutil.rmtree(d, ignore_errors=True)  # a working copy; the URI is the truth
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ExperimentError(
                f"{d}: cannot create the run's staging folder here ({e.strerror}); Ray's "
                "saved searcher expects the Optuna journal at this path"
            ) from None
        fetch_experiment(where, d)
        storage_value, name = storage.parent(where), storage.basename(where)
    else:
        d = Path(exp_dir).resolve()
        where = shown = str(d)
        if not d.is_dir():
            raise ExperimentError(f"{d}: no such experiment directory")
        storage_value, name = str(d.parent), d.name
    if not (d / SPEC_FILE).is_file() or not (d / EXPERIMENT_FILE).is_file():
        raise ExperimentError(f"{shown}: not a ktune experiment directory (no {SPEC_FILE})")
    if not remote:
        from ktune.ray_state import SET_ASIDE_DIR, repair, searcher_lost

        for note in repair(d):
            log.info("%s", note)
        if searcher_lost(d):
            raise ExperimentError(
                f"{shown}: Ray's searcher snapshot was cut short when the run died and no "
                f"whole copy is left (set aside in {d / SET_ASIDE_DIR}); a resume would end "
                "the search at once: start it again under a new name"
            )
    if not tune.Tuner.can_restore(where):
        raise ExperimentError(
            f"{shown}: no search state to resume (the run stopped before Ray saved any)"
        )
    try:
        spec = json.loads((d / SPEC_FILE).read_text())
    except ValueError:
        raise ExperimentError(
            f"{shown}: {SPEC_FILE} is cut short (the run died while Ray copied it) and no "
            "whole copy is left; the experiment cannot be resumed"
        ) from None
    cfg = load_config(
        d / EXPERIMENT_FILE,
        num_samples=spec["num_samples"],
        storage=storage_value,
        address=address,
    )
    data_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["data"].items()}
    cfg = replace(
        cfg,
        name=name,
        data=DataConfig(**data_cfg),
        export=replace(cfg.export, dir=spec["export_dir"]),
        staging_dir=str(d) if remote else None,
    )
    check_address(cfg.address)
    data, prepared, payload = _prepare(cfg)
    if json.loads(json.dumps(prepared.artefacts)) != spec["artefacts"]:
        raise ExperimentError(
            f"{shown}: the data or model changed since the search started (its prepared "
            "artefacts differ); start a new experiment instead"
        )
    _init_ray(cfg.address, verbose)
    log.info("resuming %s", shown)
    with _tune_output(verbose):
        tuner = tune.Tuner.restore(
            where, trainable=build_trainable(cfg, payload, callbacks), resume_unfinished=True
        )
        # The restored run config is the one pickled by the first run (its callbacks and
        # verbosity); this run's choice wins. Tune has no public setter for it.
        local = getattr(tuner, "_local_tuner", None)
        if local is not None:
            run_config = local.get_run_config()
            run_config.callbacks = (
                _progress_callbacks(cfg, verbose, progress)
                + _storage_callbacks(cfg)
                + list(tune_callbacks)
            )
            run_config.verbose = 1 if verbose else 0
        grid = tuner.fit()
    if export is None and cfg.export.enabled and _exists(cfg.export_path, "export.dir"):
        log.info(
            "%s: already exported; `ktune export --force` replaces it",
            storage.redact(cfg.export_path),
        )
        export = False
    return _finish(cfg, grid, data, prepared, started, export), grid


def _remote_spec(uri: str) -> str:
    """``ktune.json`` of the experiment at ``uri``; one clear error when there is none."""
    spec = storage.join(uri, SPEC_FILE)
    if not storage.exists(spec, "EXPERIMENT_DIR"):
        if not storage.is_nonempty_dir(uri, "EXPERIMENT_DIR"):
            raise ExperimentError(f"{storage.redact(uri)}: no such experiment directory")
        raise ExperimentError(
            f"{storage.redact(uri)}: not a ktune experiment directory (no {SPEC_FILE})"
        )
    return storage.read_text(spec, "EXPERIMENT_DIR")


def _finish(cfg: ExperimentConfig, grid, data, prepared, started: float, export) -> dict:
    """Results table, best.json with the best trial's test accuracy, then the export."""
    from ktune.search_spaces.base import searched_keys

    exp_dir = cfg.experiment_dir
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
            "error": _last_line(result.error) if result.error else "",
        }
        rows.append(row)
    import pandas as pd

    pd.DataFrame(rows).to_csv(exp_dir / RESULTS_FILE, index=False)
    _push(cfg, [RESULTS_FILE, JOURNAL_FILE])
    for row in rows:
        if row["error"]:
            log.error("trial %s failed: %s", row["trial"], row["error"])

    try:
        best = grid.get_best_result(metric=cfg.search.metric, mode=cfg.search.mode, scope="all")
    except RuntimeError:
        best = None
    checkpoint = (
        None if best is None else best.get_best_checkpoint(cfg.search.metric, cfg.search.mode)
    )
    if checkpoint is None:
        shown = storage.redact(cfg.experiment_path)
        raise SearchFailed(f"{shown}: no trial completed an epoch; see the errors above")
    best_metrics = next(
        (m for c, m in best.best_checkpoints if c.path == checkpoint.path), best.metrics
    )
    # On URI storage Ray downloads the checkpoint to a temporary folder for this block.
    with checkpoint.as_directory() as checkpoint_dir:
        test = evaluate_checkpoint(
            family_for(cfg.family, (cfg.model or {}).get("build"), cfg.source_path),
            best.config,
            prepared.artefacts,
            data,
            cfg.training,
            checkpoint_dir,
        )
    best_info = {
        "trial": Path(best.path).name,
        "trial_dir": _location(cfg, best.path),
        "config": dict(best.config),
        "metrics": {
            k: best_metrics[k]
            for k in ("val_accuracy", "val_loss", "accuracy", "loss", "epoch")
            if k in best_metrics
        },
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        # rows: true class, columns: predicted class, both in ktune.json's class_names order
        "test_confusion_matrix": test["confusion_matrix"],
        "checkpoint": _location(cfg, checkpoint.path),
        "num_trials": len(rows),
        "wall_time_s": round(time.time() - started, 1),
    }
    _write_json(exp_dir / BEST_FILE, best_info)
    _push(cfg, [BEST_FILE])  # last: a remote best.json means the search finished
    if cfg.export.enabled if export is None else export:
        from ktune.export import export_best

        out = str(export_best(exp_dir, cfg.export_path))
        best_info["export"] = out
        _write_json(exp_dir / BEST_FILE, best_info)
        _push(cfg, [BEST_FILE])
    return best_info


def family_for(name: str, build: str | None = None, source_path: str | None = None):
    """The family a trial trained: a registered one, or the user's ``model.build``."""
    from ktune.trainables import get_family

    if not build:
        return get_family(name)
    from ktune.trainables.custom import CustomModelFamily, import_build_model

    base = Path(source_path).parent if source_path else Path.cwd()
    return CustomModelFamily(import_build_model(build, base_dir=base))


def evaluate_checkpoint(
    family,
    config: dict,
    artefacts: dict,
    data,
    training: TrainingConfig,
    checkpoint_dir: str,
) -> dict:
    """Loss, accuracy and confusion matrix of a trial's checkpoint on the test split
    (never seen in the search).

    ``confusion_matrix`` is a list of rows of counts: row i holds the test texts of class
    i, column j those predicted as class j (classes in ``data.class_names`` order).
    """
    import numpy as np

    from ktune.trainables.base import restore_model

    model = restore_model(family, config, artefacts, data.num_classes, training, checkpoint_dir)
    probs = model.predict(
        family.encode(artefacts, training, data.test_texts), batch_size=256, verbose=0
    )
    labels = np.asarray(data.test_labels)
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
