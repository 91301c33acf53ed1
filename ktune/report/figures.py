"""The report's figures: each plot's file name, title and caption (:data:`PLOTS`), and
the matplotlib plumbing every plot shares (a file-only backend, PNG bytes).

matplotlib loads on the first figure, never on import.
"""

from __future__ import annotations

import io

__all__ = ["PLOTS", "pyplot", "png"]

_DPI = 110

# Each plot: (file suffix, title, caption).
PLOTS = {
    "history": (
        "optimization-history",
        "Optimization history",
        "Each finished trial's best {metric} in the order the trials started, and the best so far.",
    ),
    "slice": (
        "hyperparameters",
        "{metric} against each searched hyperparameter",
        "One mark per finished trial: its best {metric} against the value it drew. "
        "Triangles: stopped early by ASHA; star: the best trial.",
    ),
    "parallel": (
        "parallel-coordinates",
        "Parallel coordinates",
        "One line per finished trial through its hyperparameters to its best "
        "{metric}; darker lines are better.",
    ),
    "importance": (
        "importance",
        "Hyperparameter importance",
        "Optuna's fANOVA evaluator over the finished trials: the share of the "
        "variance of {metric} each hyperparameter explains.",
    ),
    "curves": (
        "learning-curves",
        "Learning curves",
        "Every trial's {metric} per epoch (left) and the better half of the trials "
        "zoomed in, each line labelled with its trial id (right). Dashed lines "
        "ending in x: stopped early by ASHA; red: failed; thick black: the best "
        "trial.",
    ),
    "pareto": (
        "pareto-front",
        "Pareto front",
        "Every trial on the first two search.objectives; red: the Pareto front (no other "
        "trial is at least as good on every objective and better on one), each exportable "
        "with ktune export --trial ID.",
    ),
    "confusion": (
        "confusion-matrix",
        "Best trial on the test split",
        "Counts of test texts by true class (rows) and predicted class (columns).",
    ),
}


def pyplot():
    """matplotlib.pyplot on the Agg backend unless a backend was chosen already."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # files only: no display needed (or wanted) for a report
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()
