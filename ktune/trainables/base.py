"""The shared trial loop: one Ray Tune function trainable for every family.

Life of a trial (``run_trial``):
1. configure TensorFlow's threads and devices from the trial's resources, before any op;
2. build the family's model for the drawn config and compile it with ``ktune.optim``;
3. restore model, optimizer and epoch from ``ray.tune.get_checkpoint()`` when Ray hands
   one back (a retried or resumed trial), so training continues at the next epoch;
4. ``fit``; after every epoch :class:`ReportEpoch` reports the metrics and a TF object
   checkpoint with ``ray.tune.report``.

The data and the family's artefacts arrive through the object store
(``tune.with_parameters``): the driver prepares them once per experiment.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune.checkpoint_manifest import TRIAL_FILE, is_complete
from ktune.config import TrainingConfig
from ktune.errors import ConfigError
from ktune.keras import CHECKPOINT_PREFIX, ReportCheckpoint, batches, restore
from ktune.optim import create_optimizer
from ktune.search_spaces.base import TRIAL_DEFAULTS
from ktune.trainables.devices import configure_devices
from ktune.trainables.family import MACHINE_LOCAL_ARTEFACTS, Family, Prepared

__all__ = [
    "Family",
    "Prepared",
    "TrialPayload",
    "ReportEpoch",
    "run_trial",
    "compile_model",
    "restore_model",
    "CHECKPOINT_PREFIX",
    "TRIAL_FILE",
    "family_of",
    "trial_info",
    "starting_checkpoint",
]


@dataclass
class TrialPayload:
    """Everything a trial needs besides its config; shipped once through the object store."""

    family: str
    train_inputs: Any
    train_labels: np.ndarray
    val_inputs: Any
    val_labels: np.ndarray
    num_classes: int
    artefacts: dict
    training: TrainingConfig
    cpu: float
    gpu: float
    seed: int
    gpu_memory_mb: int | None = None
    # Names of the probability columns, and texts an export of a checkpoint is verified
    # on: written into every checkpoint, so a ray.tune.Result exports on its own.
    class_names: Sequence[str] = ()
    verify_texts: Sequence[str] = ()
    # The user's own model: ``fn(config, info) -> keras.Model`` (see ktune.trainables.custom).
    build_model: Any = None
    # search.objectives' metrics: those a trial measures of its model are reported too
    # (``params``, ``model_mb`` every epoch; ``latency_ms`` with the last epoch).
    objectives: Sequence[str] = ()
    # data.unescape_backslash: an export of a checkpoint reads raw texts the same way.
    unescape_backslash: bool = False


def batch_size_of(config: Mapping[str, Any], training: TrainingConfig) -> int:
    """A searched ``batch_size`` wins over ``training.batch_size``."""
    return int(config.get("batch_size", training.batch_size))


def compile_model(
    model: keras.Model, config: Mapping[str, Any], training: TrainingConfig, n_train: int
) -> keras.optimizers.Optimizer:
    steps_per_epoch = max(1, math.ceil(n_train / batch_size_of(config, training)))
    optimizer = create_optimizer(
        learning_rate=float(config["learning_rate"]),
        total_steps=steps_per_epoch * training.epochs,
        warmup=float(config.get("warmup", TRIAL_DEFAULTS["warmup"])),
        weight_decay=float(config.get("weight_decay", TRIAL_DEFAULTS["weight_decay"])),
    )
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        # The metric as an object, not the string "accuracy": from the string Keras
        # creates the metric, and its variables, inside the first trace of the train
        # step, and a tf.function that creates variables is traced twice. That second
        # trace was about 1 s of every trial's first epoch on one core.
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=training.jit_compile,
    )
    # Slots exist before a restore, so a checkpoint's optimizer state is matched exactly.
    optimizer.build(model.trainable_variables)
    return optimizer


class ReportEpoch(ReportCheckpoint):
    """ktune's report after every epoch: the metrics, the optimizer's step, the node, and
    beside the TF checkpoint a ``ktune_trial.json`` (family, config, training sizes,
    class names, artefacts) from which :func:`ktune.export_result` rebuilds the model."""

    def __init__(
        self,
        optimizer: Any,
        start_epoch: int,
        trial_info: Mapping[str, Any],
        measure: Any = None,
    ):
        import ray

        self._measure = measure  # fn(model, epoch) -> the objectives' measurements

        self._optimizer = optimizer
        self._start_epoch = start_epoch  # > 0: this run of the trial was restored
        # Which Ray node ran this epoch: trials move between nodes on retries and restores.
        # (None outside Ray: the contract tests fit a family without starting one.)
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        self._trial_json = json.dumps(dict(trial_info), default=str)
        self._epoch_began = time.perf_counter()
        super().__init__(extra_metrics=self._extra, write_files=self._write)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_began = time.perf_counter()

    def _extra(self, epoch: int) -> dict:
        # Keras's own time for the epoch (training and validation); Ray's time_this_iter_s
        # adds this report's checkpoint and Ray's round trip to it.
        fit_s = time.perf_counter() - self._epoch_began
        measured = self._measure(self.model, epoch) if self._measure else {}
        return {
            "epoch_fit_s": fit_s,
            **measured,
            # The optimizer's step drives the learning-rate schedule: a resumed trial continues it.
            "step": int(self._optimizer.iterations.numpy()),
            # The rate of the step just taken: after a PBT mutation, the new schedule's.
            "learning_rate_now": current_learning_rate(self._optimizer),
            "node_id": self._node_id,
            "resumed_from_epoch": self._start_epoch,
        }

    def _write(self, folder: str) -> None:
        Path(folder, TRIAL_FILE).write_text(self._trial_json)


def current_learning_rate(optimizer: Any) -> float:
    """The learning rate an optimizer applies at its current step."""
    rate = optimizer._learning_rate if hasattr(optimizer, "_learning_rate") else optimizer.lr
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(optimizer.iterations)
    return float(tf.convert_to_tensor(rate).numpy())


def family_of(payload: TrialPayload) -> Family:
    """The payload's family; with the user's ``build_model``, the custom-model family."""
    from ktune.trainables import family_for

    return family_for(payload.family, payload.build_model)


_RAN_A_TRIAL = False  # in this process: a worker Ray reuses runs one trial after another


def fresh_keras_state() -> None:
    """Release what the previous trial of this worker (Ray's reuse_actors) still holds:
    Keras's graph and names, then its model, optimizer and datasets. tf_keras's
    ``clear_session`` does not collect garbage, and a Keras model is full of reference
    cycles: left to Python's own collector, a worker kept each trial's model until a full
    collection came, every few trials (RSS grew about 25 MiB a trial, then fell). A new
    worker's first trial has nothing to free and skips the collection (0.1-0.15 s of
    walking TensorFlow's objects, on the search's start-up)."""
    global _RAN_A_TRIAL
    keras.backend.clear_session()
    if _RAN_A_TRIAL:
        gc.collect()
    _RAN_A_TRIAL = True


def assigned_resources(payload: TrialPayload) -> tuple[float, float]:
    """(cpu, gpu) that Ray reserved for this trial. ktune's own resources ask for the
    payload's; a user's ``tune.with_resources`` around the trainable replaces them, and
    TensorFlow must use what Ray gave (its threads; a GPU, not hidden). The payload's
    outside a Tune trial."""
    from ray import tune

    try:
        held = tune.get_context().get_trial_resources().required_resources
    except Exception:  # not in a trial: no resources of Ray's
        return payload.cpu, payload.gpu
    return float(held.get("CPU") or payload.cpu), float(held.get("GPU", 0.0))


def run_trial(
    config: dict, payload: TrialPayload, callbacks: Sequence[keras.callbacks.Callback] = ()
) -> None:
    """The Ray Tune function trainable (wrapped with ``tune.with_parameters``)."""
    # This worker may run the next trial (reuse_actors). When ASHA stops this one, Ray
    # waits TUNE_FUNCTION_THREAD_TIMEOUT_S (default 2 s) for its thread to leave ``fit``
    # and fails the next trial if it has not: on a loaded machine unwinding TensorFlow
    # takes longer. Read by Ray in this process at the reset.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    # First, before TensorFlow runs any op in this process.
    configure_devices(*assigned_resources(payload), payload.gpu_memory_mb)
    fresh_keras_state()
    keras.utils.set_random_seed(payload.seed)
    family = family_of(payload)
    config = family.space.check_config(config)
    training = payload.training
    if training.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = family.build_model(config, payload.artefacts, payload.num_classes, training)
    optimizer = compile_model(model, config, training, len(payload.train_labels))
    digest = data_digest(payload)
    checkpoint, parent, stopped_at = starting_checkpoint(digest)
    start = restore(model, checkpoint)
    if start >= (stopped_at or training.epochs):
        return
    if start:
        reseed_restored(payload.seed, start)
    size = batch_size_of(config, training)
    train = batches(payload.train_inputs, payload.train_labels, size, shuffle=True)
    val = batches(payload.val_inputs, payload.val_labels, size, shuffle=False)
    if train is None or val is None:  # inputs tf.data cannot hold: Keras's own adapter
        data: dict[str, Any] = {
            "x": payload.train_inputs,
            "y": payload.train_labels,
            "validation_data": (payload.val_inputs, payload.val_labels),
            "batch_size": size,
            "shuffle": True,
        }
    else:
        data = {"x": train, "validation_data": val}
    model.fit(
        **data,
        epochs=training.epochs,
        initial_epoch=start,
        verbose=0,
        callbacks=[
            ReportEpoch(
                optimizer,
                start,
                trial_info(payload, config, parent, digest),
                measure=objective_measure(payload, family) if payload.objectives else None,
            ),
            *callbacks,
        ],
    )


def reseed_restored(seed: int, start: int) -> None:
    """Seeds a trial's run restored at epoch ``start`` (a resume, a retry, a PBT exploit)
    anew, before its input pipeline and its ``fit``: with the search's seed again its data
    order and its dropout and word-dropout masks would replay epoch 1's, step for step,
    and the model would see epoch 1's batches a second time. A run from epoch 0 keeps
    the search's seed, so a search without restores draws as before."""
    keras.utils.set_random_seed(int(np.random.SeedSequence([seed, start]).generate_state(1)[0]))


def objective_measure(payload: TrialPayload, family: Family):
    """``fn(model, epoch)``: the model's size every epoch, and after the last epoch its
    serving latency, when ``search.objectives`` name them (``ktune.trainables.measure``)."""
    from ktune.trainables.measure import model_size, serving_latency_ms

    wanted = set(payload.objectives)
    training = payload.training

    def measure(model: keras.Model, epoch: int) -> dict:
        out = {k: v for k, v in model_size(model).items() if k in wanted}
        if "latency_ms" in wanted:
            # None before the last epoch: Ray wants every objective in every result, and
            # the searcher tells a trial ASHA stopped without it as pruned.
            out["latency_ms"] = None
            if epoch + 1 >= training.epochs:
                encoder = family.string_encoder(payload.artefacts, training)
                texts = payload.verify_texts
                out["latency_ms"] = serving_latency_ms(model, encoder, payload.class_names, texts)
        return out

    return measure


def trial_info(
    payload: TrialPayload, config: Mapping[str, Any], parent: dict | None, data: str
) -> dict:
    """What every checkpoint of this run of a trial carries beside the weights
    (``ktune_trial.json``): enough to rebuild, export and place the model; ``data`` is
    the payload's :func:`data_digest`."""
    return {
        "family": payload.family,
        "config": dict(config),
        "training": asdict(payload.training),
        "class_names": list(payload.class_names),
        "artefacts": payload.artefacts,
        "verify_texts": list(payload.verify_texts),
        "unescape_backslash": payload.unescape_backslash,
        "build_model": callable_reference(payload.build_model),
        # the user's own model even where it has no importable name (defined in __main__)
        "own_model": _qualified_name(payload.build_model),
        # This run of the trial and the checkpoint it started from: which of the
        # trial's checkpoints continue which (PBT rewrites a trial's folders).
        "run": uuid.uuid4().hex,
        "parent": parent,
        "data": data,
    }


def data_digest(payload: TrialPayload) -> str:
    """What a checkpoint's weights were trained on: the family, its vocabulary or tokenizer
    (the artefacts), the class names, and the split (every label, in order). A trial
    started from a checkpoint of another (``Tuner.restore`` with a trainable built from
    other arguments) is refused (:func:`starting_checkpoint`)."""
    digest = hashlib.sha256()
    artefacts = {k: v for k, v in payload.artefacts.items() if k not in MACHINE_LOCAL_ARTEFACTS}
    head = [payload.family, artefacts, list(payload.class_names)]
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for labels in (payload.train_labels, payload.val_labels):
        digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()[:16]


def _qualified_name(fn: Any) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def callable_reference(fn: Any) -> str | None:
    """``module:qualname`` of a function that can be imported again, else None."""
    if fn is None:
        return None
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        return None
    return f"{module}:{name}"


def starting_checkpoint(data: str | None = None):
    """The checkpoint a trial starts from, its lineage (``{"run", "epoch"}`` or None), and
    the epoch ktune's ASHA had stopped it at before a resume (or None).

    ``data``: this trainable's :func:`data_digest`; a checkpoint trained on other data
    is refused with a :class:`~ktune.errors.ConfigError` before any epoch is reported.

    Ray hands a trial the checkpoint to start from (``ray.tune.get_checkpoint()``). When
    it is another trial's, this is a PBT exploit: the trial continues from the donor's
    state with its own (mutated) hyperparameters. When it is the trial's own, or none, the
    trial was retried or resumed: a driver killed between a trial's checkpoint and Ray's
    next snapshot of the experiment hands back an older checkpoint than its newest (or
    none). The trial then continues from the newest checkpoint on storage that continues
    the handed one (written by the same run after it, or by a run started from it):
    never from a folder of an earlier life of the trial that PBT has since replaced. The
    epochs in between are reported again first (:func:`report_missed_epochs`).

    A trial ASHA stopped after Ray's snapshot comes back running too: its stop log
    (:class:`ktune.schedulers.RevisingASHA`) names the epoch it was stopped at. Its epochs
    up to that one are reported again, and what it trained after the stop, while the
    driver decided (an epoch whose checkpoint reached storage), is left out, as a search
    never interrupted leaves it out.
    """
    from ray import tune

    handed = tune.get_checkpoint()
    storage = tune.get_context().get_storage()
    if handed is not None and not _inside(handed.path, storage.trial_fs_path):
        donor = _read_info(handed)
        _same_data(handed, donor, data)
        return handed, _lineage(donor), None
    stored = [(c, _read_info(c)) for c in stored_checkpoints()]
    own = [(handed, _read_info(handed))] if handed is not None else []
    for checkpoint, info in stored + own:
        _same_data(checkpoint, info, data)
    stopped_at = asha_stop_epoch() if handed is not None or stored else None
    origin = None
    if handed is not None:
        origin = own[0][1]
        if origin is None:  # a checkpoint without lineage: start from it as handed
            return handed, None, stopped_at
        reported = _unreported(handed)
        if reported is not None:  # named by `ktune resume` for one Ray had deleted
            origin = {**origin, "epoch": reported}
    missed = _continuations(origin, stored, stopped_at)
    if missed:
        report_missed_epochs(missed)
        newest, info = missed[-1]
        return newest, _lineage(info), stopped_at
    return handed, _lineage(origin), stopped_at


def asha_stop_epoch() -> int | None:
    """The epoch ktune's ASHA stopped this trial at, from the experiment's stop log
    (written for local storage), or None: not stopped, or no log."""
    from ray import tune

    from ktune.schedulers import STOP_LOG, read_stops

    context = tune.get_context()
    storage = context.get_storage()
    try:
        path = f"{storage.experiment_fs_path}/{STOP_LOG}"
        with storage.storage_filesystem.open_input_stream(path) as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return read_stops(text).get(context.get_trial_id())


def _unreported(checkpoint) -> int | None:
    """The epoch Ray last recorded, when ``ktune resume`` handed this checkpoint in place
    of a deleted one (:func:`ktune.ray_checkpoints.relink_deleted_checkpoints`)."""
    from ktune.ray_checkpoints import UNREPORTED_FILE

    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{UNREPORTED_FILE}") as f:
            return int(json.loads(f.read())["reported_epoch"] or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _same_data(checkpoint, info: dict | None, data: str | None) -> None:
    recorded = (info or {}).get("data")
    if data is not None and recorded is not None and recorded != data:
        raise ConfigError(
            f"{checkpoint.path}: trained on other data than this trainable's (its vocabulary, "
            "classes or split differ); restore a Tuner with the trainable built from the "
            "same data= and training= arguments"
        )


def _lineage(info: dict | None) -> dict | None:
    return None if info is None else {"run": info.get("run"), "epoch": info.get("epoch")}


def _read_info(checkpoint) -> dict | None:
    """A ktune checkpoint's run, parent and epoch (small files, read where they lie)."""
    from ktune.checkpoint_manifest import reported_metrics

    fs = checkpoint.filesystem
    try:
        with fs.open_input_stream(f"{checkpoint.path}/{TRIAL_FILE}") as f:
            info = json.loads(f.read())
    except (OSError, ValueError):
        return None
    metrics = reported_metrics(checkpoint)
    if not metrics or not isinstance(info, dict):
        return None
    return {
        "run": info.get("run"),
        "parent": info.get("parent"),
        "data": info.get("data"),
        "epoch": metrics.get("epoch"),
        "metrics": metrics,
    }


def _continuations(origin: dict | None, stored: list, stopped_at: int | None = None) -> list:
    """The stored checkpoints that continue ``origin`` (None: a fresh start), one per
    epoch after it, oldest first, ending at the newest (at ``stopped_at`` at most)."""
    if stopped_at is not None:
        stored = [(c, i) for c, i in stored if i is None or (i.get("epoch") or 0) <= stopped_at]
    start_epoch = origin["epoch"] if origin else 0
    runs = {origin["run"]} if origin else set()
    links = {(origin["run"], origin["epoch"])} if origin else set()
    valid: dict = {}
    changed = True
    while changed:  # runs started from a valid checkpoint are valid too
        changed = False
        for checkpoint, info in stored:
            if info is None or info.get("epoch") is None or id(checkpoint) in valid:
                continue
            parent = info.get("parent")
            continues = (info["run"] in runs and info["epoch"] > start_epoch) or (
                parent is None
                if origin is None
                else parent is not None and (parent.get("run"), parent.get("epoch")) in links
            )
            if continues and info["epoch"] > start_epoch:
                valid[id(checkpoint)] = (checkpoint, info)
                runs.add(info["run"])
                links.add((info["run"], info["epoch"]))
                changed = True
    by_epoch: dict = {}
    for checkpoint, info in sorted(valid.values(), key=lambda ci: _index(ci[0].path)):
        by_epoch[info["epoch"]] = (checkpoint, info)  # the later folder wins a tie
    return [by_epoch[e] for e in sorted(by_epoch)]


def _inside(path: str, folder: str) -> bool:
    return path.rstrip("/").startswith(folder.rstrip("/") + "/")


def stored_checkpoints() -> list:
    """This trial's complete checkpoints on the storage, oldest first."""
    import pyarrow.fs as pafs
    from ray import tune

    storage = tune.get_context().get_storage()
    fs, trial_path = storage.storage_filesystem, storage.trial_fs_path
    infos = fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
    folders = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    # a folder whose files do not match its manifest was cut off mid-upload
    return [tune.Checkpoint(folder, filesystem=fs) for folder in folders if is_complete(folder, fs)]


def _index(path: str) -> int:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return int(name.split("_", 1)[1]) if name.startswith("checkpoint_") else -1


def report_missed_epochs(missed: list) -> None:
    """Reports again the epochs whose checkpoints reached storage after Ray's snapshot.

    A driver killed between a trial's report and Ray's next snapshot of the experiment
    restores the trial at an older epoch: the results of the epochs after it would be
    lost (from ``results.csv``, the trial's history, ASHA's rungs), and a trial that had
    finished would come back as stopped early. Each checkpoint carries the metrics it
    was reported with (``metrics.json``): they are reported again, in order, each with
    its checkpoint, before the trial continues from the newest.
    """
    import shutil
    import tempfile

    from ray import tune

    from ktune.ray_checkpoints import UNREPORTED_FILE

    for checkpoint, info in missed:
        with (
            checkpoint.as_directory() as d,
            tempfile.TemporaryDirectory(prefix="ktune-ckpt-") as copy,
        ):
            shutil.copytree(
                d, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns(UNREPORTED_FILE)
            )
            tune.report(dict(info["metrics"]), checkpoint=tune.Checkpoint.from_directory(copy))


def restore_model(
    family: Family,
    config: Mapping[str, Any],
    artefacts: Mapping,
    num_classes: int,
    training: TrainingConfig,
    checkpoint_dir: str | Path,
) -> keras.Model:
    """Rebuilds a trial's model and loads its weights from a ktune checkpoint folder."""
    model = family.build_model(family.space.check_config(config), artefacts, num_classes, training)
    restore(model, str(checkpoint_dir))
    return model
