"""ktune: a Keras plugin for Ray Tune.

Write one YAML experiment file, run ``ktune run exp.yaml``: ktune searches a Keras text
classifier family with Optuna inside Ray Tune and exports the best trial as a
TensorFlow SavedModel that takes raw strings.
"""

from __future__ import annotations

import os

# transformers' TF classes, tensorflow-hub and tf-models-official need the Keras 2 API:
# TF must see this before it is first imported, in the driver and in every Ray worker.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter hides ktune's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from ktune.config import ExperimentConfig, load_config  # noqa: E402
from ktune.errors import ConfigError, DataError, ExperimentError, KtuneUserError  # noqa: E402

__all__ = [
    "__version__",
    "ExperimentConfig",
    "load_config",
    "ConfigError",
    "DataError",
    "ExperimentError",
    "KtuneUserError",
]
