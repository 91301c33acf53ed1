"""What a model family is: the abstract piece every family module implements.

A family computes its shared artefacts once in the driver (:meth:`Family.prepare`), builds
a Keras model for a drawn config in each trial (:meth:`Family.build_model`) and serves
raw strings at export (:meth:`Family.string_encoder`). The trial loop that drives it is
:mod:`ktune.trainables.base`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import tensorflow as tf
import tf_keras as keras

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune.config import TrainingConfig
from ktune.data import TextDataset
from ktune.search_spaces.base import FamilySpace

__all__ = ["Family", "Prepared", "MACHINE_LOCAL_ARTEFACTS", "TOKENS_CACHE"]


# Artefact keys that name a path on the machine that prepared them (see Prepared).
TOKENS_CACHE = "tokens_cache"
MACHINE_LOCAL_ARTEFACTS = frozenset({TOKENS_CACHE})


@dataclass
class Prepared:
    """What a family computes once per experiment, in the driver.

    ``train_inputs`` / ``val_inputs`` are the model inputs for those splits (token ids);
    ``artefacts`` is whatever the family needs to rebuild and serve a model (a vocabulary),
    JSON-serializable so it is saved beside the results for ``ktune export``. Its keys in
    :data:`MACHINE_LOCAL_ARTEFACTS` name a path on the preparing machine (a cache), not
    what the weights were trained on (a checkpoint's data digest leaves them out).
    """

    train_inputs: Any
    val_inputs: Any
    artefacts: dict


class Family(ABC):
    """A model family: its search space, its shared preparation, model and serving encoder.

    Adding a family means one module with a subclass and one line in the registry
    (:data:`ktune.families.REGISTRY`), which also names its search space.
    """

    name: str

    @property
    def space(self) -> FamilySpace:
        """The family's search space, found through its registration."""
        from ktune.families import get_space

        return get_space(self.name)

    def check_model(self, model: Mapping[str, Any], space: Mapping[str, Any]) -> None:  # noqa: B027
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
        self,
        config: Mapping[str, Any],
        artefacts: Mapping,
        num_classes: int,
        training: TrainingConfig,
    ) -> keras.Model:
        """Called in each trial (and at export): a model from inputs to class probabilities."""

    @abstractmethod
    def string_encoder(self, artefacts: Mapping, training: TrainingConfig) -> Any:
        """A TF-traceable callable: a batch of strings -> the model's inputs (for export)."""

    def encode(self, artefacts: Mapping, training: TrainingConfig, texts: Sequence[str]) -> Any:
        """Model inputs for raw texts in the driver (evaluation, export checks)."""
        return self.string_encoder(artefacts, training)(tf.constant(list(texts), tf.string))
