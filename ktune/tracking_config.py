"""The experiment file's ``tracking`` section: MLflow and Weights & Biases, checked strictly.

``tracking.mlflow: {uri, experiment, register}`` and ``tracking.wandb: {project, group,
entity}``. An unknown key, a wrong type, or a tracker named while its package is not
installed is one :class:`~ktune.errors.ConfigError` naming the key, before any work.
Credentials never belong here: MLflow and W&B read theirs from their own environment
variables or login files (see :mod:`ktune.tracking`).
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ktune.errors import ConfigError

__all__ = ["MLflowTracking", "WandbTracking", "TrackingConfig", "parse_tracking"]


@dataclass(frozen=True)
class MLflowTracking:
    uri: str  # the tracking server (http://host:5000) or a store URI (sqlite:///mlflow.db)
    experiment: str | None = None  # MLflow experiment; default: the ktune experiment's name
    register: str | None = None  # register the export under this model name


@dataclass(frozen=True)
class WandbTracking:
    project: str
    group: str | None = None  # default: the experiment's name
    entity: str | None = None


@dataclass(frozen=True)
class TrackingConfig:
    mlflow: MLflowTracking | None = None
    wandb: WandbTracking | None = None

    @property
    def enabled(self) -> bool:
        return self.mlflow is not None or self.wandb is not None


# the package each tracker needs, and the extra that installs it
_PACKAGES = {"mlflow": ("mlflow", "ktune[mlflow]"), "wandb": ("wandb", "ktune[wandb]")}


def _keys(raw: Any, key: str, known: tuple[str, ...]) -> dict:
    """A mapping whose keys are all known; a misspelling gets a suggestion."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: must be a mapping, got {raw!r}")
    for name in raw:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise ConfigError(f"{key}.{name}: unknown key; {hint}")
    return dict(raw)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
    return value


def _section(raw: Any, tracker: str, cls: type, required: str) -> Any:
    key = f"tracking.{tracker}"
    values = _keys(raw, key, tuple(f.name for f in fields(cls)))
    if values.get(required) is None:
        raise ConfigError(f"{key}.{required}: required")
    module, extra = _PACKAGES[tracker]
    if not _installed(module):
        raise ConfigError(
            f"{key}: needs the {module} package, which is not installed (pip install '{extra}')"
        )
    return cls(**{k: None if v is None else _text(f"{key}.{k}", v) for k, v in values.items()})


def _installed(module: str) -> bool:
    """Found without importing it (mlflow and wandb take seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules[module] = None
        return False


def parse_tracking(raw: Any) -> TrackingConfig:
    """The ``tracking`` section (absent or null: no tracking)."""
    if raw is None:
        return TrackingConfig()
    d = _keys(raw, "tracking", tuple(_PACKAGES))
    return TrackingConfig(
        mlflow=None
        if d.get("mlflow") is None
        else _section(d["mlflow"], "mlflow", MLflowTracking, "uri"),
        wandb=None
        if d.get("wandb") is None
        else _section(d["wandb"], "wandb", WandbTracking, "project"),
    )
