"""Ray Tune trainables: the shared trial loop and the family registry.

Families are imported lazily: naming a family loads its module (and TensorFlow) only
when it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ktune.trainables.base import Family

__all__ = ["FAMILIES", "get_family"]

# name -> "module:class"; a new family adds one line here and one module.
FAMILIES = {
    "transformer": "ktune.trainables.transformer:TransformerFamily",
    "tfhub_bert": "ktune.trainables.tfhub_bert:TfhubBertFamily",
    "hf_bert": "ktune.trainables.hf_bert:HfBertFamily",
}

_loaded: dict[str, "Family"] = {}


def get_family(name: str) -> "Family":
    if name not in _loaded:
        if name not in FAMILIES:
            raise KeyError(f"unknown family '{name}'; known: {', '.join(FAMILIES)}")
        module, cls = FAMILIES[name].split(":")
        _loaded[name] = getattr(importlib.import_module(module), cls)()
    return _loaded[name]
