"""A trial's model again, from what the search left behind.

Which family trained a trial (a registered one, or the user's own ``build_model``) and
its Keras model rebuilt from a checkpoint, given a *record*: ``ktune.json`` of an
experiment folder or ``ktune_trial.json`` inside a checkpoint of :func:`ktune.trainable`
(both hold ``family``, ``build_model``, ``artefacts``, ``class_names``, ``training``).
The end of a search, the export, ``ktune.load(...).load_model()`` and
``ktune.load_model(result)`` all go through here.
"""

from __future__ import annotations

from typing import Any, Mapping

from ktune.trainables import family_for

__all__ = ["family_for", "family_of_record", "restore_from_record"]


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
