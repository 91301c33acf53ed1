"""Multi-objective search: the objectives a trial can be measured on, their checks
(``search.objectives``), and the Pareto front of a finished search.

A trial reports the per-epoch metrics (``val_accuracy``, ``val_loss``) after every epoch;
with objectives it also reports ``params`` (trainable + non-trainable parameters) and
``model_mb`` (its weights in MB, 10^6 bytes) after every epoch, and ``latency_ms`` (the
median time of a batch of 32 raw strings through the serving model, as it is exported)
with the result of its last epoch only (``ktune.trainables.measure``). No TensorFlow here.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ktune.errors import ConfigError

__all__ = [
    "METRICS",
    "OBJECTIVES",
    "MEASURED",
    "Objective",
    "parse_objectives",
    "dominates",
    "pareto_front",
    "ranks_before",
]

# metric -> the mode that makes sense for it (reported after every epoch)
METRICS = {"val_accuracy": "max", "val_loss": "min"}
# what a trial measures of its model, for search.objectives
MEASURED = {"params": "min", "model_mb": "min", "latency_ms": "min"}
OBJECTIVES = {**METRICS, **MEASURED}
KEY = "search.objectives"


def ranks_before(value: float, trial: str, other: float, other_trial: str, mode: str) -> bool:
    """Whether ``trial``'s best ``value`` ranks before ``other_trial``'s ``other`` (mode
    ``max`` or ``min``); equal values by trial name. The one rule of the live progress
    header and best.json, so both name the same trial when two tie (their orders of
    trials can differ after a resume)."""
    if value != other:
        return value > other if mode == "max" else value < other
    return trial < other_trial


@dataclass(frozen=True)
class Objective:
    """One objective of a multi-objective search: a metric and its direction."""

    metric: str
    mode: str


def _one_of(key: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key}: must be one of {', '.join(options)}, got {value!r}{hint}")
    return value


def parse_objectives(raw: Any) -> tuple[Objective, ...]:
    """``search.objectives``: two or more ``{metric, mode}``, each metric once, each
    mode the metric's own (``mode`` may be left out)."""
    if not isinstance(raw, list) or len(raw) < 2:
        raise ConfigError(
            f"{KEY}: must be a list of two or more {{metric, mode}} (for one, use "
            f"search.metric), got {raw!r}"
        )
    out: list[Objective] = []
    for i, item in enumerate(raw):
        where = f"{KEY}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: must be a mapping {{metric, mode}}, got {item!r}")
        for name in item:
            if name not in ("metric", "mode"):
                raise ConfigError(f"{where}.{name}: unknown key; known keys: metric, mode")
        if "metric" not in item:
            raise ConfigError(f"{where}.metric: required, one of {', '.join(OBJECTIVES)}")
        metric = _one_of(f"{where}.metric", item["metric"], tuple(OBJECTIVES))
        if any(o.metric == metric for o in out):
            raise ConfigError(f"{where}.metric: {metric} is named twice")
        mode = _one_of(f"{where}.mode", item.get("mode", OBJECTIVES[metric]), ("max", "min"))
        if mode != OBJECTIVES[metric]:
            raise ConfigError(
                f"{where}.mode: {metric} is optimized with mode '{OBJECTIVES[metric]}', "
                f"got '{mode}'"
            )
        out.append(Objective(metric, mode))
    if not any(o.metric in METRICS for o in out):
        raise ConfigError(
            f"{KEY}: needs {' or '.join(METRICS)} among them (early stopping, checkpoints "
            "and the most accurate trial follow the first of them)"
        )
    return tuple(out)


def _finite(values: Mapping[str, Any], objectives: Sequence[Objective]) -> bool:
    for o in objectives:
        v = values.get(o.metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
    return True


def dominates(a: Mapping[str, float], b: Mapping[str, float], objectives: Sequence[Objective]):
    """True when ``a`` is at least as good as ``b`` on every objective and better on one."""
    better = False
    for o in objectives:
        x, y = (a[o.metric], b[o.metric]) if o.mode == "max" else (-a[o.metric], -b[o.metric])
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> list[int]:
    """Indices of the rows no other row dominates, most accurate first (the order of
    ``objectives``, then the row order, breaks ties). Rows missing an objective's value
    (a trial stopped before its last epoch has no ``latency_ms``) take no part."""
    scored = [i for i, row in enumerate(rows) if _finite(row, objectives)]
    front = [
        i
        for i in scored
        if not any(dominates(rows[j], rows[i], objectives) for j in scored if j != i)
    ]

    def rank(i: int) -> tuple:
        return tuple(
            -rows[i][o.metric] if o.mode == "max" else rows[i][o.metric] for o in objectives
        )

    return sorted(front, key=lambda i: (rank(i), i))
