"""The driver's work before any trial: data loaded once, the family's shared artefacts
prepared once, and the payload every trial receives through Ray's object store.

``ktune run`` / ``resume`` and :func:`ktune.trainable` (a user's own Tuner) all start
here, so a trial sees the same vocabulary, token ids and texts either way.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from typing import Any, Callable

from ktune.config import ExperimentConfig

__all__ = ["prepare", "prepare_then_warm_tune", "verify_texts", "user_build_model"]

log = logging.getLogger("ktune")

# Texts an export is verified on: held-out test texts plus edge cases.
_EDGE_TEXTS = ["", "!!!", "a " * 400, "Ünïcödé — naïve café 東京 📈"]


def prepare(
    cfg: ExperimentConfig, check_models: bool = True, data: Any = None
) -> tuple[Any, Any, Any]:
    """Checks the models, loads the data once, lets the family prepare; builds the payload.

    Returns ``(data, prepared, payload)``: the :class:`~ktune.data.TextDataset`, the
    family's ``Prepared`` (model inputs, artefacts) and the trials'
    :class:`~ktune.trainables.base.TrialPayload`.

    ``check_models``: load every handle the space can draw first (``ktune run``); a
    user's own Tuner draws its own sizes, checked one by one as they are drawn.
    ``data``: the :class:`~ktune.data.TextDataset` when already loaded."""
    from ktune.data import load_data
    from ktune.trainables import get_family
    from ktune.trainables.base import TrialPayload
    from ktune.trainables.devices import driver_devices

    driver_devices()  # before the first TensorFlow op of this process

    build_model = user_build_model(cfg)
    family = get_family(cfg.family)
    if check_models:
        family.check_model(cfg.model, cfg.search.space)
    if data is None:
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
        unescape_backslash=cfg.data.unescape_backslash,
        build_model=build_model,
        objectives=tuple(o.metric for o in cfg.search.objectives or ()),
    )
    return data, prepared, payload


def prepare_then_warm_tune(cfg: ExperimentConfig, data: Any) -> tuple[Any, Any, Any]:
    """:func:`~ktune.prepare.prepare`, then the modules Ray Tune imports when the Tuner
    starts, while Ray is still starting (Tune's TensorBoard logger and its tensorboardX);
    and Tune's usage tag of the run's callbacks counts them by name
    (:func:`count_callbacks_by_name`) instead of importing its tracker integrations."""
    prepared = prepare(cfg, True, data)
    modules: tuple[str, ...] = _TUNE_START_MODULES
    if not count_callbacks_by_name():
        modules = _TRACKER_INTEGRATIONS + modules  # at least a head start
    for module in modules:
        with contextlib.suppress(Exception):  # only ever a head start
            importlib.import_module(module)
    return prepared


# What ray.air._internal.usage._count_callbacks imports (Ray 2.60) to read four class
# names: where mlflow and wandb are installed, its MLflow and W&B integrations import them
# (1.3 s and 0.5 s on 2 cores), in a search that tracks with neither.
_TRACKER_INTEGRATIONS = (
    "ray.air.integrations.mlflow",
    "ray.air.integrations.wandb",
    "ray.air.integrations.comet",
    "ray.tune.logger.aim",
)
_TRACKER_CALLBACKS = (
    "WandbLoggerCallback",
    "MLflowLoggerCallback",
    "CometLoggerCallback",
    "AimLoggerCallback",
)
# Tune's TensorBoard logger with its tensorboardX: the rest of what Tuner.fit imports
# before it asks for the trials' workers.
_TUNE_START_MODULES = ("ray.tune.logger.tensorboardx", "tensorboardX")


def count_callbacks_by_name() -> bool:
    """Ray Tune's usage tag of a Tuner's callbacks (``tag_callbacks``, Ray 2.60) counts
    them by class name, with the names of Ray's tracker callbacks given here, so it no
    longer imports the integrations (and ``mlflow``, ``wandb``) only to read those names.
    The tag it records is the same. False (nothing changed) where Ray has no such
    counter."""
    from ray.air._internal import usage

    if not callable(getattr(usage, "_count_callbacks", None)):
        return False
    usage._count_callbacks = _count_callbacks
    return True


def _count_callbacks(callbacks: Any) -> dict[str, int]:
    """Ray 2.60's ``ray.air._internal.usage._count_callbacks``, the built-in callbacks
    known by name."""
    import collections

    from ray.tune import Callback
    from ray.tune.logger import LoggerCallback
    from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

    built_in = set(_TRACKER_CALLBACKS) | {c.__name__ for c in DEFAULT_CALLBACK_CLASSES}
    counts: dict[str, int] = collections.defaultdict(int)
    for callback in callbacks or []:
        if not isinstance(callback, Callback):
            continue  # Tune refuses it later
        name = type(callback).__name__
        if name in built_in:
            counts[name] += 1
        elif isinstance(callback, LoggerCallback):
            counts["CustomLoggerCallback"] += 1
        else:
            counts["CustomCallback"] += 1
    return counts


def verify_texts(data: Any) -> list[str]:
    """Texts an export is checked on: held-out test texts plus edge cases."""
    return [str(t) for t in data.test_texts[:60]] + _EDGE_TEXTS


def user_build_model(cfg: ExperimentConfig) -> Callable | None:
    """``model.build: module:function``, imported in the driver (one ConfigError naming
    ``model.build``); shipped to the trials by value, so their workers need not find it."""
    reference = (cfg.model or {}).get("build")
    if not reference:
        return None
    import sys

    from ray import cloudpickle

    from ktune.trainables.custom import import_build_model

    base = Path(cfg.base_dir) if cfg.base_dir else Path.cwd()
    fn = import_build_model(reference, base_dir=base)
    module = sys.modules.get(getattr(fn, "__module__", ""))
    if module is not None and not module.__name__.startswith("ktune"):
        cloudpickle.register_pickle_by_value(module)
    return fn
