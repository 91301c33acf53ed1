"""Keras pieces for your own Ray Tune function: report, checkpoint and restore a model.

Ray Tune 2.60 has no resumable Keras callback that works inside a Tune function
(``ray.train.tensorflow.keras.ReportCheckpointCallback`` belongs to Ray Train, and
``ray.tune.integration.keras`` checkpoints cannot be restored into a compiled model).
:class:`ReportCheckpoint` reports the epoch's metrics with a TensorFlow object checkpoint
of the model, its optimizer (slots and step) and the epoch count; :func:`restore` loads
one back, so a retried, resumed or PBT-exploited trial continues where it stood. ktune's
own trials use the same two pieces, so their checkpoints are read the same way.

Example::

    import ktune.keras
    from ray import tune

    def train(config):
        model = build_and_compile(config)
        start = ktune.keras.restore(model)          # 0 when Ray hands no checkpoint
        model.fit(x, y, validation_data=(xv, yv), epochs=10, initial_epoch=start,
                  callbacks=[ktune.keras.ReportCheckpoint()])

    tune.Tuner(train, param_space={...}).fit()
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Callable, Mapping

import tensorflow as tf
import tf_keras as keras

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune.checkpoint_manifest import METRICS_FILE, write_manifest

__all__ = ["ReportCheckpoint", "restore", "batches", "CHECKPOINT_PREFIX", "METRICS_FILE"]

# The checkpoint's file prefix inside a Ray checkpoint folder: <folder>/ckpt.index, ...
CHECKPOINT_PREFIX = "ckpt"
# The metrics reported with a checkpoint, beside it: METRICS_FILE (checkpoint_manifest).


def _tracked(model: keras.Model, epoch: tf.Variable) -> tf.train.Checkpoint:
    objects: dict[str, Any] = {"model": model, "epoch": epoch}
    if getattr(model, "optimizer", None) is not None:
        objects["optimizer"] = model.optimizer
    return tf.train.Checkpoint(**objects)


def restore(model: keras.Model, checkpoint: Any = None) -> int:
    """Loads a checkpoint written by :class:`ReportCheckpoint` into ``model``.

    Args:
        model: keras.Model. Built and compiled as the trial that wrote the checkpoint
            (same layers; the optimizer may differ in hyperparameters, e.g. after a PBT
            mutation: its step and slots are restored, the new learning rate applies).
        checkpoint: ray.tune.Checkpoint, str or None. A Ray checkpoint or a local folder.
            Defaults to ``ray.tune.get_checkpoint()``, the one Ray hands this trial.

    Returns:
        int: the number of epochs already trained, to pass as ``fit(initial_epoch=...)``;
        0 when there is nothing to restore.
    """
    if checkpoint is None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return 0
    optimizer = getattr(model, "optimizer", None)
    # Slots exist before the read, so the optimizer state is matched, not deferred.
    if optimizer is not None and hasattr(optimizer, "build"):
        optimizer.build(model.trainable_variables)
    elif optimizer is not None and hasattr(optimizer, "_create_all_weights"):
        # keras.optimizers.legacy: its step, hyperparameters and slots come on first use
        optimizer._create_all_weights(model.trainable_variables)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    tracked = _tracked(model, epoch)

    def read(folder: str) -> None:
        status = tracked.read(os.path.join(folder, CHECKPOINT_PREFIX))
        if optimizer is None:  # weights only: the checkpoint's optimizer state is left out
            status.expect_partial().assert_existing_objects_matched()
        else:
            status.assert_consumed()

    if not hasattr(checkpoint, "as_directory"):  # a local folder
        read(os.fspath(checkpoint))
    else:
        with checkpoint.as_directory() as d:
            read(d)
    return int(epoch.numpy())


class ReportCheckpoint(keras.callbacks.Callback):
    """After every epoch: ``ray.tune.report(metrics, checkpoint=...)`` with a TF checkpoint.

    The checkpoint holds the model's weights, its optimizer (slots and step: a learning
    rate schedule continues) and the epoch count, in a folder :func:`restore` reads.

    Args:
        metrics: mapping or None. Report name -> Keras log key (``{"acc": "val_accuracy"}``).
            Defaults to every Keras log under its own name.
        extra_metrics: callable or None. ``fn(epoch) -> dict`` merged into each report.
        write_files: callable or None. ``fn(folder)`` writes more files into the
            checkpoint folder before it is reported.
    """

    def __init__(
        self,
        metrics: Mapping[str, str] | None = None,
        *,
        extra_metrics: Callable[[int], Mapping[str, Any]] | None = None,
        write_files: Callable[[str], None] | None = None,
    ):
        super().__init__()
        self._metrics = dict(metrics) if metrics is not None else None
        self._extra_metrics = extra_metrics
        self._write_files = write_files
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._checkpoint: tf.train.Checkpoint | None = None

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self._checkpoint = None  # tracked lazily: the optimizer may be set after this

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        from ray import tune

        logs = dict(logs or {})
        if self._metrics is None:
            metrics = {k: float(v) for k, v in logs.items()}
        else:
            missing = [key for key in self._metrics.values() if key not in logs]
            if missing:
                raise KeyError(
                    f"ReportCheckpoint: no Keras log {missing[0]!r}; have {sorted(logs)}"
                )
            metrics = {name: float(logs[key]) for name, key in self._metrics.items()}
        metrics["epoch"] = epoch + 1
        if self._extra_metrics is not None:
            metrics.update(self._extra_metrics(epoch))
        self._epoch.assign(epoch + 1)
        if self._checkpoint is None:
            self._checkpoint = _tracked(self.model, self._epoch)
        with tempfile.TemporaryDirectory(prefix="ktune-ckpt-") as d:
            self._checkpoint.write(os.path.join(d, CHECKPOINT_PREFIX))
            # What was reported with it: a trial resumed after a crash re-reports the
            # epochs that reached storage but not Ray's snapshot (ktune.trainables.base).
            # (with the time of this report, which Ray then keeps for the re-report)
            with open(os.path.join(d, METRICS_FILE), "w") as f:
                json.dump({**metrics, "timestamp": int(time.time())}, f, default=str)
            if self._write_files is not None:
                self._write_files(d)
            write_manifest(d)  # last: a folder cut off mid-upload is told by it
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def batches(inputs: Any, labels: Any, batch_size: int, shuffle: bool) -> Any:
    """``(inputs, labels)`` as the ``tf.data`` pipeline ``fit`` reads: the batches Keras
    cuts from arrays (a fresh order each epoch when ``shuffle``), without tf.data's
    autotuning.

    When ASHA stops a trial, Ray ends the trial's thread inside ``fit`` and the next trial
    on that worker waits for it. Tearing down a tf.data iterator waits for its autotuning
    thread, which wakes only every few seconds (its period grows to a minute): Keras's own
    adapter for arrays autotunes, and the worker stood idle for up to 10 s between trials
    (seen with ``py-spy dump --native`` in the quickstart: the trial thread in
    ``~RootDataset::Iterator``). Without autotuning there is no such thread to wait for;
    a batch is one gather, prefetched one ahead.

    Example (your own Tune function; ktune's trials read their data this way)::

        model.fit(batches(x, y, 64, shuffle=True),
                  validation_data=batches(xv, yv, 64, shuffle=False), epochs=10,
                  initial_epoch=start, callbacks=[ReportCheckpoint()])

    Returns None for inputs ``tf.data`` cannot hold (a custom family's): give ``fit``
    those as they are.
    """
    try:
        data = tf.data.Dataset.from_tensors((inputs, labels))
    except (TypeError, ValueError):
        return None
    order = tf.data.Dataset.range(len(labels))
    if shuffle:
        order = order.shuffle(len(labels), reshuffle_each_iteration=True)
    pipeline = tf.data.Dataset.zip((order.batch(batch_size), data.repeat())).map(
        lambda rows, both: tf.nest.map_structure(lambda a: tf.gather(a, rows), both)
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    return pipeline.prefetch(1).with_options(options)
