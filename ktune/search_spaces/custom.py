"""The search space of a user's own Keras model (``ktune.trainable(build_model=fn)``).

The space is the user's plain mapping: any keys, passed to ``build_model(config, info)``.
ktune adds only what its optimizer reads (``learning_rate``, ``warmup``,
``weight_decay``), with their defaults. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from typing import Any, Mapping

from ktune.errors import ConfigError
from ktune.search_spaces.base import (
    TRIAL_DEFAULTS,
    FamilySpace,
    fraction,
    non_negative,
    positive_number,
)

__all__ = ["CustomModelSpace"]


class CustomModelSpace(FamilySpace):
    family = "custom"
    defaults = {
        "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "warmup": {"low": 0.0, "high": 0.2},
        "weight_decay": TRIAL_DEFAULTS["weight_decay"],
    }
    rules = {"learning_rate": positive_number, "warmup": fraction, "weight_decay": non_negative}

    open_keys = True  # every key of the user's space is theirs: none is unknown

    def check_config(self, config: Mapping[str, Any], key: str = "config") -> dict:
        if not isinstance(config, Mapping):
            raise ConfigError(f"{key}: must be a mapping of hyperparameters, got {config!r}")
        if "learning_rate" not in config:
            raise ConfigError(f"{key}.learning_rate: required (the peak rate of ktune's AdamW)")
        out = {
            "warmup": TRIAL_DEFAULTS["warmup"],
            "weight_decay": TRIAL_DEFAULTS["weight_decay"],
            **config,
        }
        for name, rule in self.rules.items():
            problem = rule(out[name])
            if problem:
                raise ConfigError(f"{key}.{name}: {problem}, got {out[name]!r}")
        return out
