"""``ensemble: {seeds: N}``: the search's best configuration trained with N seeds, their
class probabilities averaged (a seed ensemble).

The best trial is the first member (its checkpoint, trained with ``search.seed``); after
the search the driver trains the same configuration again with ``search.seed + 1`` ...
``+ N - 1`` on the same training split, each kept at its best epoch by ``search.metric``
on the validation split, as a trial is. The members are saved in the experiment folder
(``ensemble/seed_<s>/``, in a trial checkpoint's format; on URI storage uploaded there
too, :func:`push_members`), and the model that is tested,
exported and loaded is one Keras model whose output is the mean of theirs. A member
whose training reaches no finite ``search.metric`` is left out (best.json's
``ensemble.left_out``) with a warning, not an error that would lose the search's results.

Measured on the AG News sample (bench/README.md §8): one model of the example's kind
0.857 test accuracy (mean of 8 seeds), the mean of any 3 of them 0.867 (52 of 56 triples
at or above TF-IDF + logistic regression's 0.857), for N times the final training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune import storage
from ktune.errors import ExperimentError
from ktune.keras import CHECKPOINT_PREFIX, METRICS_FILE, batches
from ktune.trainables.base import batch_size_of, compile_model, restore_model

__all__ = [
    "ENSEMBLE_DIR",
    "average_models",
    "ensemble_model",
    "fetch_members",
    "push_members",
    "train_members",
]

ENSEMBLE_DIR = "ensemble"
MEMBER_FILE = "member.json"  # in a member's folder: its seed, config and metrics

log = logging.getLogger("ktune")


class _NoFiniteMetric(Exception):
    """A member's training reached no finite ``search.metric`` in any epoch."""


class _KeepBest(keras.callbacks.Callback):
    """The weights and logs of the best epoch by ``metric`` (the first of equals)."""

    def __init__(self, metric: str, mode: str):
        super().__init__()
        self.metric, self.sign = metric, 1.0 if mode == "max" else -1.0
        self.best: float | None = None
        self.weights: list | None = None
        self.logs: dict = {}

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        value = logs.get(self.metric)
        if value is None or not np.isfinite(value):
            return
        if self.best is None or self.sign * float(value) > self.sign * self.best:
            self.best = float(value)
            self.weights = self.model.get_weights()
            self.logs = {k: float(v) for k, v in logs.items()} | {"epoch": epoch + 1}


def train_members(
    exp_dir: str | Path,
    family: Any,
    config: Mapping[str, Any],
    prepared: Any,
    data: Any,
    training: Any,
    seeds: Sequence[int],
    metric: str,
    mode: str,
) -> tuple[list[dict], list[keras.Model], list[dict]]:
    """Trains ``config`` once per seed in this process, as a trial trains (mixed precision
    included), and saves each member, at its best epoch, to ``<exp_dir>/ensemble/seed_<s>/``;
    returns ``{"seed", "checkpoint" (relative to ``exp_dir``), "metrics"}`` per member,
    the members, and ``{"seed", "reason"}`` per seed left out: one whose training reached
    no finite ``metric`` (diverged) is not saved and not averaged, with a warning, rather
    than lose the search's results. A member saved before for the same configuration and
    seed (a resume after the members were trained) is restored, not trained again; one of
    another configuration is replaced."""
    members, models, left_out = [], [], []
    folder = Path(exp_dir) / ENSEMBLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".seed_*.tmp-*"):  # a member cut off by a kill
        shutil.rmtree(stale, ignore_errors=True)
    config = family.space.check_config(config)
    policy = keras.mixed_precision.global_policy()
    try:
        if training.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        for seed in seeds:
            out = folder / f"seed_{seed}"
            record = {"seed": int(seed), "config": json.loads(json.dumps(config, default=str))}
            model, logs = _saved_member(out, record, family, config, prepared, data, training)
            if model is None:
                try:
                    model, logs = _train(
                        family, config, prepared, data, training, seed, metric, mode
                    )
                except _NoFiniteMetric:
                    reason = f"no finite {metric} in {training.epochs} epoch(s)"
                    log.warning("ensemble: seed %s left out: %s", seed, reason)
                    left_out.append({"seed": int(seed), "reason": reason})
                    shutil.rmtree(out, ignore_errors=True)  # not one of this ensemble
                    continue
                _save(model, {**record, "metrics": logs}, out)
            members.append(
                {"seed": int(seed), "checkpoint": f"{ENSEMBLE_DIR}/{out.name}", "metrics": logs}
            )
            models.append(model)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    return members, models, left_out


def fetch_members(uri: str, exp_dir: str | Path, seeds: Sequence[int]) -> list[int]:
    """URI storage, before :func:`train_members`: the members of ``seeds`` saved at the
    experiment's URI (a resume after they were trained), downloaded into the local
    ``exp_dir``, where train_members finds them; returns their seeds. A member is on the
    URI once its ``member.json`` is (:func:`push_members` uploads it last)."""
    found = []
    for seed in seeds:
        rel = f"{ENSEMBLE_DIR}/seed_{seed}"
        if _on_uri(storage.join(uri, rel)):
            out = Path(exp_dir) / rel
            shutil.rmtree(out, ignore_errors=True)
            storage.download_dir(storage.join(uri, rel), out)
            found.append(int(seed))
    return found


def _on_uri(where: str, key: str = "storage") -> bool:
    """A member's folder on a URI is whole once its ``member.json`` is there."""
    return storage.exists(storage.join(where, MEMBER_FILE), key)


def push_members(exp_dir: str | Path, uri: str, members: Sequence[Mapping[str, Any]]) -> None:
    """URI storage, after :func:`train_members`: each member's folder uploaded to the
    experiment's URI under the same relative path, its ``member.json`` last."""
    for member in members:
        rel = str(member["checkpoint"])
        storage.upload_dir(Path(exp_dir) / rel, storage.join(uri, rel), last=[MEMBER_FILE])


def _train(
    family: Any,
    config: Mapping[str, Any],
    prepared: Any,
    data: Any,
    training: Any,
    seed: int,
    metric: str,
    mode: str,
) -> tuple[keras.Model, dict]:
    keras.utils.set_random_seed(int(seed))
    model = family.build_model(config, prepared.artefacts, data.num_classes, training)
    compile_model(model, config, training, len(data.train_labels))
    size = batch_size_of(config, training)
    keep = _KeepBest(metric, mode)
    model.fit(
        batches(prepared.train_inputs, data.train_labels, size, shuffle=True),
        validation_data=batches(prepared.val_inputs, data.val_labels, size, shuffle=False),
        epochs=training.epochs,
        verbose=0,
        callbacks=[keep],
    )
    if keep.weights is None:
        raise _NoFiniteMetric(seed)
    model.set_weights(keep.weights)
    return model, keep.logs


def _saved_member(
    out: Path,
    record: dict,
    family: Any,
    config: Mapping[str, Any],
    prepared: Any,
    data: Any,
    training: Any,
) -> tuple[keras.Model | None, dict]:
    """The member saved in ``out`` when it was trained for ``record`` (seed, config)."""
    try:
        saved = json.loads((out / MEMBER_FILE).read_text())
    except (OSError, ValueError):
        return None, {}
    if {k: saved.get(k) for k in record} != record:
        return None, {}
    model = restore_model(family, config, prepared.artefacts, data.num_classes, training, out)
    return model, dict(saved["metrics"])


def _save(model: keras.Model, member: dict, out: Path) -> None:
    """Weights and the member's record (seed, config, metrics) in a folder that
    :func:`~ktune.trainables.base.restore_model` reads, written beside ``out`` and moved
    into place whole."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    epoch = tf.Variable(int(member["metrics"]["epoch"]), dtype=tf.int64, trainable=False)
    tf.train.Checkpoint(model=model, epoch=epoch).write(str(tmp / CHECKPOINT_PREFIX))
    (tmp / METRICS_FILE).write_text(json.dumps(member["metrics"]) + "\n")
    (tmp / MEMBER_FILE).write_text(json.dumps(member, indent=1, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def average_models(models: Sequence[keras.Model]) -> keras.Model:
    """One functional model over the same inputs: the mean of ``models``' outputs
    (functional models of token ids; each is renamed ``member_<i>``, since the layers of
    one model need distinct names)."""
    if len(models) == 1:
        return models[0]
    first = models[0]
    inputs = keras.Input(shape=first.input.shape[1:], dtype=first.input.dtype, name="token_ids")
    for i, model in enumerate(models):
        model._name = f"member_{i}"  # nested models need distinct names
    outputs = keras.layers.Average(dtype="float32", name="probabilities")(
        [model(inputs) for model in models]
    )
    return keras.Model(inputs, outputs, name="seed_ensemble")


def ensemble_model(
    exp_dir: str | Path,
    best: Mapping[str, Any],
    family: Any,
    artefacts: Mapping,
    num_classes: int,
    training: Any,
    first: keras.Model,
    location: str | None = None,
) -> keras.Model:
    """``first`` (the best trial's model) averaged with the other members best.json's
    ``ensemble`` names, restored from the experiment folder; ``first`` alone without.
    ``location``: the experiment's URI when ``exp_dir`` is a local copy of ktune's files
    only (URI storage): the members are downloaded from there."""
    members = (best.get("ensemble") or {}).get("members") or []
    models = [first]
    remote = location if location and storage.is_uri(location) else None
    for member in members[1:]:
        with _member_folder(exp_dir, str(member["checkpoint"]), remote) as checkpoint:
            models.append(
                restore_model(family, best["config"], artefacts, num_classes, training, checkpoint)
            )
    return average_models(models)


@contextlib.contextmanager
def _member_folder(exp_dir: str | Path, rel: str, remote: str | None) -> Iterator[Path]:
    """A member's folder: ``exp_dir``'s, or else, on URI storage (``remote``), a
    temporary download of the URI's; a missing member is an error."""
    local = Path(exp_dir) / rel
    if local.is_dir() or remote is None:
        if not local.is_dir():
            raise ExperimentError(f"{local}: an ensemble member's checkpoint is missing")
        yield local
        return
    where = storage.join(remote, rel)
    if not _on_uri(where, "checkpoint"):
        raise ExperimentError(
            f"{storage.redact(where)}: an ensemble member's checkpoint is missing"
        )
    work = storage.temporary_dir("ktune-member-")
    try:
        yield storage.download_dir(where, work / "member", key="checkpoint")
    finally:
        shutil.rmtree(work, ignore_errors=True)
