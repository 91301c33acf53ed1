"""The process environment TensorFlow must see before it is first imported.

transformers' TF classes, tensorflow-hub and tf-models-official need the Keras 2 API
(``TF_USE_LEGACY_KERAS=1``), in the driver and in every Ray worker; TensorFlow's C++
start-up chatter hides ktune's own output. ``ktune/__init__.py`` imports this module
first, so ``import ktune`` (or any ``ktune.*``) sets these; a trial worker needs nothing
else from ktune's top level. :data:`WORKER_ENV` is what ktune passes to Ray's workers.

On x86-64 also ``TF_ENABLE_ONEDNN_OPTS=1`` (a value already set wins): TensorFlow turns
its oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI, BF16 or AMX, so on an
AMD EPYC (AVX2) a trial ran on the slower default kernels. Measured there (2026-12-06, 2
cores): a plain Keras epoch of the orchestration bench's model 3.1-3.6 s against
4.6-5.7 s, ``make demo`` 114-119 s against 142-144 s; the losses bit for bit the same.
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Iterator, Mapping

__all__ = ["WORKER_ENV", "environment"]

_ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
if platform.machine().lower() in ("x86_64", "amd64"):
    WORKER_ENV[_ONEDNN] = os.environ.get(_ONEDNN, "1")

for _name, _value in WORKER_ENV.items():
    os.environ.setdefault(_name, _value)


@contextlib.contextmanager
def environment(
    values: Mapping[str, str], defaults: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Set ``values`` (and ``defaults`` where the variable is unset) in ``os.environ``
    for the ``with`` block; every variable touched is restored afterwards (unset again if
    it was unset), whether the block returns or raises."""
    defaults = defaults or {}
    saved: dict[str, str | None] = {k: os.environ.get(k) for k in {**defaults, **values}}
    os.environ.update(values)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, before in saved.items():
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before
