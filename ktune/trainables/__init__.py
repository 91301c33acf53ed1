"""Ray Tune trainables: the shared trial loop (``base``) and one module per family.

Which module holds which family is registered once, in :mod:`ktune.families`; a family's
module (and TensorFlow) loads only when :func:`get_family` names it.
"""

from __future__ import annotations

from ktune.families import get_family

__all__ = ["get_family"]
