"""Tiny local models of every family, for tests and offline use; nothing is downloaded.

Each family registers a testing hook (:attr:`ktune.families.Registration.testing`), a
function ``tiny_setup(folder) -> TinySetup`` in a module of this package that writes the
family's tiny models into ``folder`` and says how an experiment uses them. The contract
tests (``tests/test_family_contract.py``) run every registered family through its hook,
so a new family is tested as soon as it is registered with one.

Example::

    from ktune.testing import tiny_setup

    setup = tiny_setup("hf_bert", Path("models"))   # writes models/tiny-hf-bert/...
    raw = {"name": "x", "family": "hf_bert", "model": setup.model,
           "search": {"space": setup.space}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TinySetup", "tiny_setup"]


@dataclass(frozen=True)
class TinySetup:
    """A family's tiny local models, as an experiment file names them.

    Args:
        model: dict. The ``model:`` section that points at the tiny models.
        space: dict. ``search.space`` overrides that draw only sizes written locally
            (and small ones), written as in the experiment file.
        root: Path or None. The folder the models were written to; None when the
            family loads no files.
        lines: tuple of str. What the maker reported, one line per item written.
    """

    model: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    lines: tuple[str, ...] = ()


def tiny_setup(family: str, folder: str | Path) -> TinySetup:
    """Writes ``family``'s tiny models into ``folder`` (its registered testing hook)."""
    from ktune.families import get_testing

    return get_testing(family)(Path(folder))
