"""ktune: a Keras plugin for Ray Tune.

Write one YAML experiment file and run ``ktune run exp.yaml``, or from Python
``ktune.run("exp.yaml")``; or put ktune's pieces into your own ``tune.Tuner``:
``ktune.trainable``, ``ktune.search_space``, ``ktune.export_result``, and
``ktune.keras.ReportCheckpoint`` for your own Tune function. ktune searches a Keras text
classifier family with Optuna inside Ray Tune and exports the best trial as a
TensorFlow SavedModel that takes raw strings.
"""

from __future__ import annotations

# First: TF_USE_LEGACY_KERAS must be set before TensorFlow is imported (ktune._keras_env).
import ktune._keras_env  # noqa: F401  # isort: skip
from ktune.config import ExperimentConfig, load_config
from ktune.errors import (
    ConfigError,
    DataError,
    ExperimentError,
    KtuneUserError,
    SearchFailed,
    SearchInterrupted,
)

__version__ = "0.1.0"

# The public API (ktune.api), loaded on first use: ``import ktune`` stays cheap, and a
# trial worker, which imports ktune only for the environment above, never loads the
# experiment runner or Ray Tune's driver side.
_API = (
    "run",
    "resume",
    "load",
    "trainable",
    "search_space",
    "export_result",
    "load_model",
    "predict",
    "ExperimentResult",
)

__all__ = [
    "__version__",
    *_API,
    "ExperimentConfig",
    "load_config",
    "ConfigError",
    "DataError",
    "ExperimentError",
    "KtuneUserError",
    "SearchFailed",
    "SearchInterrupted",
    "worker_env",
]


def worker_env() -> dict[str, str]:
    """The environment variables ktune's own Ray gives its workers, for a Ray you start
    yourself: ``ray.init(runtime_env={"env_vars": ktune.worker_env()})`` (TensorFlow's
    settings, oneDNN's CPU kernels on x86-64, and ``MALLOC_ARENA_MAX=2`` so a reused
    worker's memory stays flat)."""
    from ktune.ray_start import trial_worker_env

    return trial_worker_env()


def __getattr__(name: str):
    if name in _API:
        from ktune import api

        return getattr(api, name)
    if name == "keras":
        import importlib

        return importlib.import_module("ktune.keras")
    raise AttributeError(f"module 'ktune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "keras"])
