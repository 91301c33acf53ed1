"""The family registry: each model family's name, search space, trainable and tiny setup.

A family is one line here. Every part is named as ``"module:attribute"`` and imported on
first use, so this module imports no TensorFlow: the driver validates an experiment file
(which needs only the space) in milliseconds, and a family's TensorFlow side loads only
when a trial, an export or a test asks for it.

Example::

    from ktune import families

    families.names()                        # ("transformer", "tfhub_bert", "hf_bert")
    families.get_space("hf_bert").resolve({"embed_dim": [128]})
    families.get_family("hf_bert").build_model(config, artefacts, 4, training)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ktune.errors import ConfigError

if TYPE_CHECKING:
    from ktune.search_spaces.base import FamilySpace
    from ktune.trainables.family import Family

__all__ = ["Registration", "REGISTRY", "names", "get_space", "get_family", "get_testing"]


@dataclass(frozen=True)
class Registration:
    """Where a family's parts live, each as ``"module:attribute"``.

    Args:
        space: str. A :class:`~ktune.search_spaces.base.FamilySpace` subclass; its module
            must not import TensorFlow.
        family: str. A :class:`~ktune.trainables.family.Family` subclass.
        testing: str. A function ``fn(folder) -> ktune.testing.TinySetup`` that writes the
            family's tiny local models into ``folder`` (see ``ktune/testing``): the
            contract tests (``tests/test_family_contract.py``) run every family with it.
    """

    space: str
    family: str
    testing: str


# name -> its parts; a new family adds one line here (and its modules).
REGISTRY: Mapping[str, Registration] = {
    "transformer": Registration(
        space="ktune.search_spaces.transformer:TransformerSpace",
        family="ktune.trainables.transformer:TransformerFamily",
        testing="ktune.testing.transformer:tiny_setup",
    ),
    "tfhub_bert": Registration(
        space="ktune.search_spaces.tfhub_bert:TfhubBertSpace",
        family="ktune.trainables.tfhub_bert:TfhubBertFamily",
        testing="ktune.testing.tfhub_bert:tiny_setup",
    ),
    "hf_bert": Registration(
        space="ktune.search_spaces.hf_bert:HfBertSpace",
        family="ktune.trainables.hf_bert:HfBertFamily",
        testing="ktune.testing.hf_bert:tiny_setup",
    ),
}

_spaces: dict[str, "FamilySpace"] = {}
_families: dict[str, "Family"] = {}


def names() -> tuple[str, ...]:
    """The registered families, in registry order."""
    return tuple(REGISTRY)


def _registration(name: str) -> Registration:
    if name not in REGISTRY:
        raise ConfigError(f"family: must be one of {', '.join(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_space(name: str) -> "FamilySpace":
    """The family's search space (one shared instance); imports no TensorFlow."""
    if name not in _spaces:
        _spaces[name] = _load(_registration(name).space)()
    return _spaces[name]


def get_family(name: str) -> "Family":
    """The family's trainable side (one shared instance); loads its TensorFlow modules."""
    if name not in _families:
        _families[name] = _load(_registration(name).family)()
    return _families[name]


def get_testing(name: str) -> Any:
    """The family's tiny-setup function for tests and offline use (``ktune.testing``)."""
    return _load(_registration(name).testing)
