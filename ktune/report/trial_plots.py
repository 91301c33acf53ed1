"""The plots of the trials themselves: every trial's learning curve, and the best trial's
confusion matrix on the test split.

Each function returns a matplotlib figure; :mod:`ktune.report.plots` decides which are
drawn. matplotlib and numpy load when a figure is made.
"""

from __future__ import annotations

import math
from typing import Sequence

from ktune.report.figures import pyplot
from ktune.report.load import ExperimentRecord

__all__ = ["curves_plot", "confusion_plot"]


def curves_plot(record: ExperimentRecord):
    """The searched metric per epoch of every trial (left) and of the better half (right),
    where curves close together can be told apart; each line ends in its trial's id."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    metric, best = record.metric, record.best_trial()
    cmap = plt.get_cmap("viridis")
    n = max(1, len(record.trials) - 1)
    colors = {
        t.trial: "#d62728" if t.status == "ERROR" else cmap(0.85 * i / n)
        for i, t in enumerate(record.trials)
    }
    scored = [(b[1], t) for t in record.trials if (b := t.best(metric, record.mode))]
    ranked = [t for _, t in sorted(scored, key=lambda p: p[0], reverse=record.mode == "max")]
    top = ranked[: max(2, math.ceil(len(ranked) / 2))]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for ax, trials, label_ends in ((axes[0], record.trials, False), (axes[1], top, True)):
        for t in trials:
            curve = t.curve(metric)
            if not curve:
                continue
            xs, ys = zip(*curve)
            color = colors[t.trial]
            style = {
                "color": color,
                "linewidth": 1.4,
                "alpha": 0.85,
                "marker": "o",
                "markersize": 3,
            }
            if t.status == "STOPPED":
                style["linestyle"] = "--"
            if best is not None and t is best:
                style.update(linewidth=3.2, alpha=1.0, color="black", zorder=5)
            ax.plot(xs, ys, **style)
            if t.status in ("STOPPED", "ERROR"):
                ax.plot(
                    xs[-1],
                    ys[-1],
                    marker="x",
                    markersize=9,
                    markeredgewidth=2,
                    color=style["color"],
                    linestyle="none",
                    zorder=6,
                )
            elif t.status in ("RUNNING", "PENDING", "PAUSED", "INTERRUPTED"):
                ax.plot(
                    xs[-1],
                    ys[-1],
                    marker="|" if t.status == "INTERRUPTED" else ">",
                    markersize=7,
                    color=style["color"],
                    linestyle="none",
                    zorder=6,
                )
            if label_ends and len(trials) <= 12:
                ax.annotate(
                    t.trial.removeprefix("trial_"),
                    (xs[-1], ys[-1]),
                    xytext=(6, 0),
                    textcoords="offset points",
                    fontsize=7,
                    va="center",
                    color=style["color"],
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_xticks(range(1, max(record.epochs, 1) + 1))
        ax.set_xlim(0.8, max(record.epochs, 1) + 0.6)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"all {len(record.trials)} trials", fontsize=10)
    axes[1].set_title(f"the best {len(top)}, zoomed in", fontsize=10)
    handles = [
        Line2D(
            [], [], color="black", linewidth=3.2, label=f"best: {best.trial}" if best else "best"
        ),
        Line2D([], [], color="grey", marker="o", markersize=3, label="ran all epochs"),
        Line2D([], [], color="grey", linestyle="--", marker="x", label="stopped early (ASHA)"),
    ]
    if record.count("ERROR"):
        handles.append(Line2D([], [], color="#d62728", marker="x", label="failed"))
    if any(t.status in ("RUNNING", "PENDING", "PAUSED") for t in record.trials):
        handles.append(Line2D([], [], color="grey", marker=">", label="still running"))
    if record.count("INTERRUPTED"):
        handles.append(Line2D([], [], color="grey", marker="|", label="cut off (interrupted)"))
    axes[0].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(f"{record.name}: {metric} per epoch", fontsize=11)
    fig.tight_layout()
    return fig


def confusion_plot(matrix: Sequence[Sequence[int]], names: Sequence[str], accuracy):
    import numpy as np

    plt = pyplot()
    m = np.asarray(matrix, dtype=float)
    k = len(m)
    fig, ax = plt.subplots(figsize=(1.1 * k + 3, 1.0 * k + 2.4))
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(k), names, rotation=30, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = f", accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else ""
    ax.set_title(f"test split: {int(m.sum())} texts{acc}", fontsize=11)
    ax.grid(False)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return fig
