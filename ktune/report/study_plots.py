"""The plots of the rebuilt Optuna study (:mod:`ktune.report.study`): optimization history
and parallel coordinates (Optuna's own matplotlib views), the best metric against each
searched hyperparameter, and the hyperparameter importances.

Each function returns a matplotlib figure; :mod:`ktune.report.plots` decides which are
drawn. matplotlib, numpy and Optuna load when a figure is made.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

from ktune.report.figures import PLOTS, pyplot
from ktune.report.load import ExperimentRecord
from ktune.tables import value_text

__all__ = ["optuna_plot", "slice_plot", "importance_plot"]


def optuna_plot(name: str, study, record: ExperimentRecord):
    """One of Optuna's matplotlib views of the study, as a figure."""
    import optuna.visualization.matplotlib as ovm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib views experimental
        if name == "history":
            from matplotlib.ticker import MaxNLocator

            ax = ovm.plot_optimization_history(study, target_name=record.metric)
            ax.set_title("")
            ax.set_xlabel("trial, in the order the trials started")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            fig = ax.figure
            fig.set_size_inches(9, 4.2)
        else:
            ax = ovm.plot_parallel_coordinate(study, params=record.keys, target_name=record.metric)
            ax.set_title("")
            fig = ax.figure
            fig.set_size_inches(max(8.0, 1.6 * (len(record.keys) + 1)), 4.5)
    fig.suptitle(f"{record.name}: " + PLOTS[name][1].format(metric=record.metric), fontsize=11)
    return fig


def slice_plot(study, record: ExperimentRecord):
    """The best metric of each finished trial against each searched hyperparameter."""
    import numpy as np
    import optuna
    from matplotlib.lines import Line2D

    plt = pyplot()
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    status = {t.trial: t.status for t in record.trials}
    best = record.best_trial()
    cols = min(3, len(record.keys))
    rows = math.ceil(len(record.keys) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.4 * cols, 3.4 * rows), sharey=True, squeeze=False
    )
    order = np.linspace(0.0, 0.85, max(2, len(trials)))
    cmap = plt.get_cmap("viridis")
    for ax, key in zip(axes.flat, record.keys):
        dist = trials[0].distributions[key]
        values = [t.params[key] for t in trials]
        positions = values
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            choices = list(dist.choices)
            numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
            if not numeric:
                positions = [choices.index(v) for v in values]
                ax.set_xticks(range(len(choices)), [str(c) for c in choices])
            else:
                ax.set_xticks(choices, [value_text(c) for c in choices])
        elif getattr(dist, "log", False):
            ax.set_xscale("log")
        for i, (t, x) in enumerate(zip(trials, positions)):
            name = t.user_attrs.get("ray_trial")
            stopped = status.get(name) == "STOPPED"
            is_best = best is not None and name == best.trial
            ax.scatter(
                [x],
                [t.value],
                s=150 if is_best else 46,
                marker="*" if is_best else ("v" if stopped else "o"),
                color="black" if is_best else cmap(order[i]),
                edgecolors="white",
                linewidths=0.6,
                zorder=5 if is_best else 3,
            )
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(record.keys) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"best {record.metric}")
    handles = [
        Line2D([], [], marker="o", linestyle="none", color="grey", label="ran all epochs"),
        Line2D(
            [],
            [],
            marker="v",
            linestyle="none",
            color="grey",
            label="stopped early (best of its epochs)",
        ),
        Line2D(
            [], [], marker="*", markersize=11, linestyle="none", color="black", label="best trial"
        ),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(
        f"{record.name}: best {record.metric} of each trial against each searched "
        "hyperparameter (colour: order of start, dark to light)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def importance_plot(importances: Mapping[str, float], record: ExperimentRecord):
    plt = pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.6))
    bars = ax.barh(names, [importances[n] for n in names], color="#4c72b0")
    for bar, n in zip(bars, names):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {importances[n]:.2f}",
            va="center",
            fontsize=9,
        )
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    ax.set_xlabel(f"importance for {record.metric} (fANOVA, sums to 1)")
    ax.set_title(f"{record.name}: hyperparameter importance", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    return fig
