"""Search spaces, one module per family; the registry the config validates against.

No TensorFlow is imported here, so the driver validates an experiment file in
milliseconds, before Ray or TensorFlow start.
"""

from __future__ import annotations

from ktune.search_spaces.base import Choice, FamilySpace, Fixed, Range, Spec, parse_spec
from ktune.search_spaces.hf_bert import HfBertSpace
from ktune.search_spaces.tfhub_bert import TfhubBertSpace
from ktune.search_spaces.transformer import TransformerSpace

__all__ = ["SPACES", "get_space", "Choice", "Range", "Fixed", "Spec", "FamilySpace", "parse_spec"]

SPACES: dict[str, FamilySpace] = {
    "transformer": TransformerSpace(),
    "tfhub_bert": TfhubBertSpace(),
    "hf_bert": HfBertSpace(),
}


def get_space(family: str) -> FamilySpace:
    return SPACES[family]
