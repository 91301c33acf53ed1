"""The Pareto front of a multi-objective search (``search.objectives``): every finished
trial on the first two objectives, the front highlighted and joined in order.

The data (:func:`pareto_points`) apart from the drawing (:func:`pareto_plot`), as in
Optuna's own ``plot_pareto_front``; the front is ``best.json``'s, so the plot shows the
trials ``ktune export --trial`` can export.
"""

from __future__ import annotations

import math
from typing import Any

from ktune.experiment_dir import RESULTS_FILE, read_results
from ktune.report.figures import PLOTS, pyplot
from ktune.report.load import ExperimentRecord

__all__ = ["pareto_points", "pareto_plot"]


def pareto_points(record: ExperimentRecord) -> dict[str, Any] | None:
    """The two objectives plotted, each trial's values on them, and the front's trials
    (most accurate first); None for a search of one metric or before it finished."""
    best = record.best_info or {}
    objectives = best.get("objectives") or []
    if not best.get("pareto_front") or len(objectives) < 2:
        return None
    if not (record.path / RESULTS_FILE).is_file():
        return None
    x, y = objectives[0]["metric"], objectives[1]["metric"]
    points = {}
    for row in read_results(record.path).to_dict("records"):
        vx, vy = row.get(x), row.get(y)
        if isinstance(vx, (int, float)) and isinstance(vy, (int, float)):
            if math.isfinite(vx) and math.isfinite(vy):
                points[str(row["trial"])] = (float(vx), float(vy))
    return {
        "x": objectives[0],
        "y": objectives[1],
        "points": points,
        "front": [e["trial"] for e in best["pareto_front"] if e["trial"] in points],
        "best": best.get("trial"),
        "more": [o["metric"] for o in objectives[2:]],
    }


def pareto_plot(record: ExperimentRecord, data: dict[str, Any]):
    """A scatter of every trial on the first two objectives, the front in red."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    front = data["front"]
    rest = [t for t in data["points"] if t not in front]
    ax.scatter(
        [data["points"][t][0] for t in rest],
        [data["points"][t][1] for t in rest],
        c="#999999",
        s=28,
        label="other trials",
    )
    xs = [data["points"][t][0] for t in front]
    ys = [data["points"][t][1] for t in front]
    order = sorted(range(len(front)), key=lambda i: (xs[i], ys[i]))
    ax.plot([xs[i] for i in order], [ys[i] for i in order], c="#d62728", lw=1, alpha=0.6)
    ax.scatter(xs, ys, c="#d62728", s=44, label="Pareto front", zorder=3)
    for t, px, py in zip(front, xs, ys):
        ax.annotate(
            t.removeprefix("trial_") + (" (best)" if t == data["best"] else ""),
            (px, py),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xlabel(_axis_label(data["x"]))
    ax.set_ylabel(_axis_label(data["y"]))
    if data["more"]:
        ax.text(
            0.01,
            0.01,
            "front over " + ", ".join(data["more"]) + " too",
            transform=ax.transAxes,
            fontsize=8,
        )
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{record.name}: " + PLOTS["pareto"][1], fontsize=11)
    return fig


def _axis_label(objective: dict) -> str:
    better = "higher" if objective["mode"] == "max" else "lower"
    return f"{objective['metric']} ({better} is better)"
