"""The ``transformer`` family's tiny setup: nothing to write, a space of small sizes."""

from __future__ import annotations

from pathlib import Path

from ktune.testing import TinySetup

__all__ = ["tiny_setup"]


def tiny_setup(folder: Path) -> TinySetup:
    """A few-thousand-weight transformer; ``heads`` choices that do not divide every
    ``embed_dim`` choice, so the conditional draw is exercised."""
    return TinySetup(
        space={
            "embed_dim": [6, 8, 12],
            "heads": [1, 2, 3, 4],
            "ff_dim": [8],
            "num_blocks": [1],
            "learning_rate": {"low": 3e-3, "high": 1e-2, "log": True},
        }
    )
