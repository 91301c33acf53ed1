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
    starts, while Ray is still starting: its usage tag of the run's callbacks imports its
    MLflow and W&B integrations, which import ``mlflow`` and ``wandb`` (1.3 s of the
    driver's start-up on 2 cores, before the first trial's worker is asked for)."""
    prepared = prepare(cfg, True, data)
    for module in _TUNE_START_MODULES:
        with contextlib.suppress(Exception):  # only ever a head start
            importlib.import_module(module)
    return prepared


# What ray.air._internal.usage._count_callbacks imports (Ray 2.60), and Tune's TensorBoard
# logger with its tensorboardX: the rest of what Tuner.fit imports before it asks for the
# trials' workers.
_TUNE_START_MODULES = (
    "ray.air.integrations.mlflow",
    "ray.air.integrations.wandb",
    "ray.air.integrations.comet",
    "ray.tune.logger.aim",
    "ray.tune.logger.tensorboardx",
    "tensorboardX",
)


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
