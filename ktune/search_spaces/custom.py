"""The search space of a user's own Keras model (``ktune.trainable(build_model=fn)``).

The space is the user's plain mapping: any keys, passed to ``build_model(config, info)``.
ktune adds only what its optimizer reads (``learning_rate``, ``warmup``,
``weight_decay``), with their defaults. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import difflib
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

    def _near_misses(self, keys: Any, key: str) -> None:
        """A key one typo away from one of ktune's optimizer keys that the space leaves
        out (``learning_rat``, ``warmpu``) would pass to the model while the optimizer
        took its default: refused, unless the optimizer's key is given too."""
        for name in keys:
            if name in self.defaults:
                continue
            missing = [d for d in self.defaults if d not in keys]
            close = difflib.get_close_matches(str(name), missing, n=1, cutoff=0.8)
            if close:
                raise ConfigError(
                    f"{key}.{name}: did you mean '{close[0]}'? ktune's optimizer reads "
                    f"'{close[0]}', which this space leaves at its default; if '{name}' is "
                    f"your model's own key, give '{close[0]}' as well"
                )

    def resolve(self, overrides: Mapping[str, Any] | None, key: str = "search.space") -> dict:
        self._near_misses(list(overrides or {}), key)
        return super().resolve(overrides, key)

    def check_config(self, config: Mapping[str, Any], key: str = "config") -> dict:
        if not isinstance(config, Mapping):
            raise ConfigError(f"{key}: must be a mapping of hyperparameters, got {config!r}")
        self._near_misses(list(config), key)
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
