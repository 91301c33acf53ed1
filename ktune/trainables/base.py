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

import math
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ktune.config import TrainingConfig
from ktune.data import TextDataset
from ktune.optim import create_optimizer
from ktune.trainables.devices import configure_devices
from ktune.search_spaces import FamilySpace

__all__ = [
    "Family",
    "Prepared",
    "TrialPayload",
    "ReportEpoch",
    "run_trial",
    "compile_model",
    "restore_model",
    "CHECKPOINT_PREFIX",
]

CHECKPOINT_PREFIX = "ckpt"


@dataclass
class Prepared:
    """What a family computes once per experiment, in the driver.

    ``train_inputs`` / ``val_inputs`` are the model inputs for those splits (token ids);
    ``artefacts`` is whatever the family needs to rebuild and serve a model (a vocabulary),
    JSON-serializable so it is saved beside the results for ``ktune export``.
    """

    train_inputs: Any
    val_inputs: Any
    artefacts: dict


class Family(ABC):
    """A model family: its search space, its shared preparation, model and serving encoder.

    Adding a family means one module with a subclass and one line in the registry
    (``ktune.trainables.FAMILIES``).
    """

    name: str
    space: FamilySpace

    def check_model(self, model: Mapping[str, Any], space: Mapping[str, Any]) -> None:
        """Called in the driver before anything else: every model the search space can
        draw must be loadable, else one ConfigError naming the ``model.*`` key."""

    @abstractmethod
    def prepare(
        self, data: TextDataset, training: TrainingConfig, model: Mapping[str, Any]
    ) -> Prepared:
        """Called once per experiment in the driver, before Ray starts any trial.

        ``model`` is the validated ``model:`` section (handles, names). A family checks
        here that what it will load can be loaded (one ConfigError naming the key), and
        puts into ``artefacts`` what trials and export need to rebuild a model.
        """

    @abstractmethod
    def build_model(
        self, config: Mapping[str, Any], artefacts: Mapping, num_classes: int,
        training: TrainingConfig,
    ) -> keras.Model:
        """Called in each trial (and at export): a model from inputs to class probabilities."""

    @abstractmethod
    def string_encoder(self, artefacts: Mapping, training: TrainingConfig) -> Any:
        """A TF-traceable callable: a batch of strings -> the model's inputs (for export)."""

    def encode(self, artefacts: Mapping, training: TrainingConfig, texts: Sequence[str]) -> Any:
        """Model inputs for raw texts in the driver (evaluation, export checks)."""
        return self.string_encoder(artefacts, training)(tf.constant(list(texts), tf.string))


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
        warmup=float(config.get("warmup", 0.1)),
        weight_decay=float(config.get("weight_decay", 0.01)),
    )
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=training.jit_compile,
    )
    # Slots exist before a restore, so a checkpoint's optimizer state is matched exactly.
    optimizer.build(model.trainable_variables)
    return optimizer


class ReportEpoch(keras.callbacks.Callback):
    """After every epoch: write a TF object checkpoint, report it with the metrics to Tune."""

    def __init__(
        self, checkpoint: tf.train.Checkpoint, epoch: tf.Variable, optimizer: Any
    ):
        super().__init__()
        self._checkpoint = checkpoint
        self._epoch = epoch
        self._optimizer = optimizer
        self._start_epoch = int(epoch.numpy())  # > 0: this run of the trial was restored
        import ray

        self._node_id = ray.get_runtime_context().get_node_id()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        from ray import tune

        self._epoch.assign(epoch + 1)
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics["epoch"] = epoch + 1
        # The optimizer's step drives the learning-rate schedule: a resumed trial continues it.
        metrics["step"] = int(self._optimizer.iterations.numpy())
        # Which Ray node ran this epoch: trials move between nodes on retries and restores.
        metrics["node_id"] = self._node_id
        metrics["resumed_from_epoch"] = self._start_epoch
        with tempfile.TemporaryDirectory(prefix="ktune-ckpt-") as d:
            self._checkpoint.write(os.path.join(d, CHECKPOINT_PREFIX))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def run_trial(
    config: dict, payload: TrialPayload, callbacks: Sequence[keras.callbacks.Callback] = ()
) -> None:
    """The Ray Tune function trainable (wrapped with ``tune.with_parameters``)."""
    from ray import tune

    from ktune.trainables import get_family

    # This worker may run the next trial (reuse_actors). When ASHA stops this one, Ray
    # waits TUNE_FUNCTION_THREAD_TIMEOUT_S (default 2 s) for its thread to leave ``fit``
    # and fails the next trial if it has not: on a loaded machine unwinding TensorFlow
    # takes longer. Read by Ray in this process at the reset.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    # First, before TensorFlow runs any op in this process.
    configure_devices(payload.cpu, payload.gpu, payload.gpu_memory_mb)
    # A reused worker (Ray's reuse_actors) still holds the previous trial's Keras state.
    keras.backend.clear_session()
    keras.utils.set_random_seed(payload.seed)
    family = get_family(payload.family)
    training = payload.training
    if training.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = family.build_model(config, payload.artefacts, payload.num_classes, training)
    optimizer = compile_model(model, config, training, len(payload.train_labels))
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
    # A driver killed between a trial's checkpoint and Ray's next snapshot of the experiment
    # resumes the trial from an older checkpoint than its newest (or none): the newest
    # complete one on storage is the trial's real state.
    resume_from = latest_stored_checkpoint() or tune.get_checkpoint()
    if resume_from is not None:
        with resume_from.as_directory() as d:
            checkpoint.read(os.path.join(d, CHECKPOINT_PREFIX)).assert_consumed()
    start = int(epoch.numpy())
    if start >= training.epochs:
        return
    model.fit(
        payload.train_inputs,
        payload.train_labels,
        validation_data=(payload.val_inputs, payload.val_labels),
        batch_size=batch_size_of(config, training),
        epochs=training.epochs,
        initial_epoch=start,
        shuffle=True,
        verbose=0,
        callbacks=[ReportEpoch(checkpoint, epoch, optimizer), *callbacks],
    )


def latest_stored_checkpoint():
    """The newest complete checkpoint in this trial's folder on the storage, or None."""
    import pyarrow.fs as pafs
    from ray import tune

    storage = tune.get_context().get_storage()
    fs, trial_path = storage.storage_filesystem, storage.trial_fs_path
    infos = fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
    folders = sorted(
        (i.path for i in infos
         if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")),
        reverse=True,
    )
    for folder in folders:  # a folder without the index file was cut off mid-write
        if fs.get_file_info(f"{folder}/{CHECKPOINT_PREFIX}.index").type == pafs.FileType.File:
            return tune.Checkpoint(folder, filesystem=fs)
    return None


def restore_model(
    family: Family,
    config: Mapping[str, Any],
    artefacts: Mapping,
    num_classes: int,
    training: TrainingConfig,
    checkpoint_dir: str | Path,
) -> keras.Model:
    """Rebuilds a trial's model and loads its weights from a ktune checkpoint folder."""
    model = family.build_model(config, artefacts, num_classes, training)
    status = tf.train.Checkpoint(model=model).read(
        os.path.join(str(checkpoint_dir), CHECKPOINT_PREFIX)
    )
    status.expect_partial().assert_existing_objects_matched()
    return model
