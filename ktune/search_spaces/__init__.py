"""Search spaces, one module per family, and the spec types they share.

No TensorFlow is imported here, so the driver validates an experiment file in
milliseconds, before Ray or TensorFlow start. Which space belongs to which family is
registered once, in :mod:`ktune.families`; :func:`get_space` is its accessor.
"""

from __future__ import annotations

from ktune.families import get_space
from ktune.search_spaces.base import Choice, FamilySpace, Fixed, Range, Spec, parse_spec

__all__ = ["get_space", "Choice", "Range", "Fixed", "Spec", "FamilySpace", "parse_spec"]
