"""Ray Tune trainables: the shared trial loop (``base``) and one module per family.

Which module holds which family is registered once, in :mod:`ktune.families`; a family's
module (and TensorFlow) loads only when :func:`get_family` names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ktune.families import get_family

__all__ = ["get_family", "family_for"]


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
