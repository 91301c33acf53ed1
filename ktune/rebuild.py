"""A trial's model again, from what the search left behind.

Which family trained a trial (a registered one, or the user's own ``build_model``) and
its Keras model rebuilt from a checkpoint, given a *record*: ``ktune.json`` of an
experiment folder or ``ktune_trial.json`` inside a checkpoint of :func:`ktune.trainable`
(both hold ``family``, ``build_model``, ``artefacts``, ``class_names``, ``training``).
The end of a search, the export, ``ktune.load(...).load_model()`` and
``ktune.load_model(result)`` all go through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["family_for", "family_of_record", "restore_from_record"]


def family_for(
    name: str,
    build: str | Callable | None = None,
    base_dir: str | Path | None = None,
    *,
    key: str = "model.build",
) -> Any:
    """The family a trial trained.

    Args:
        name: str. A registered family (``transformer``, ...).
        build: the user's own model: a ``build_model(config, info)`` function, or its
            ``module:function`` reference (``model.build``), which makes the family the
            custom-model family. Defaults to None (the registered family).
        base_dir: str or Path or None. Where a reference's module is looked up besides
            ``sys.path`` (the experiment file's folder). Defaults to the working directory.
        key: str. The key a reference that cannot be imported is reported under.
    """
    from ktune.trainables import get_family

    if not build:
        return get_family(name)
    from ktune.trainables.custom import CustomModelFamily, import_build_model

    if callable(build):
        return CustomModelFamily(build)
    base = Path(base_dir) if base_dir else Path.cwd()
    return CustomModelFamily(import_build_model(build, key=key, base_dir=base))


def family_of_record(record: Mapping[str, Any]) -> Any:
    """The family of an experiment's ``ktune.json``."""
    return family_for(record["family"], record.get("build_model"), record.get("build_base_dir"))


def restore_from_record(
    family: Any, config: Mapping[str, Any], record: Mapping[str, Any], checkpoint_dir: str
) -> Any:
    """The Keras model of ``config`` with the weights of ``checkpoint_dir``."""
    from ktune.config import TrainingConfig
    from ktune.trainables.base import restore_model

    return restore_model(
        family,
        dict(config),
        record["artefacts"],
        len(record["class_names"]),
        TrainingConfig(**record["training"]),
        checkpoint_dir,
    )
