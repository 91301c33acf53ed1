"""Fixed-width text tables, and the words and numbers in them.

Every table ktune prints renders through :func:`render_table`: the results of ``ktune run``
(``experiment.format_results_table``), the live progress (``progress.format_progress``),
``ktune jobs`` (``jobs.format_jobs``) and the tables of ``ktune report`` and its comparison.
Its cells are formatted here, once:

- :func:`value_text` for a hyperparameter or any other value: floats to 4 significant
  digits (``0.0123``, ``1.5e-05``), integers and text as they are;
- :func:`metric_text` for a metric: 4 decimals (``0.8300``);
- ``-`` for what is missing: ``None``, NaN, a metric that is not a number.

Also the small words the tables share: :func:`status_label` (a trial's status in ktune's
words) and :func:`format_duration`. Nothing here imports more than the standard library,
so the live progress (in the driver of every search) costs no report, plots or Optuna.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Mapping, Sequence

__all__ = [
    "MISSING",
    "FINISHED",
    "render_table",
    "value_text",
    "metric_text",
    "objective_text",
    "format_duration",
    "status_label",
    "last_line",
]

MISSING = "-"
VALUE_FORMAT = ".4g"  # hyperparameters and other values
METRIC_FORMAT = ".4f"  # metrics (accuracy, loss)
# A trial with one of these statuses (see status_label) will not report again.
FINISHED = ("DONE", "STOPPED", "ERROR")


def _is_nan(v: Any) -> bool:
    return isinstance(v, numbers.Real) and math.isnan(float(v))


def value_text(v: Any) -> str:
    """A cell for any value: ``-`` when missing, floats to 4 significant digits.

    ``0.012345`` -> ``0.01235``; ``16`` -> ``16``; ``"relu"`` -> ``relu``;
    ``None`` or NaN -> ``-``.
    """
    if v is None or _is_nan(v):
        return MISSING
    if isinstance(v, numbers.Integral):  # bool included: True stays True
        return str(v)
    if isinstance(v, numbers.Real):
        return format(float(v), VALUE_FORMAT)
    return str(v)


def objective_text(v: Any) -> str:
    """A cell for an objective's value: a count (``params``, read back as a float) whole,
    anything else as :func:`value_text` writes it."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return value_text(v)


def metric_text(v: Any) -> str:
    """A cell for a metric: 4 decimals; ``-`` for None, NaN or anything not a number."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or _is_nan(v):
        return MISSING
    return format(float(v), METRIC_FORMAT)


def render_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, indent: str = "") -> str:
    """A fixed-width table: columns left-aligned, two spaces apart, no trailing spaces.

    Cells are written with ``str``: format numbers first with :func:`value_text` or
    :func:`metric_text`. Every row has as many cells as the header.

    Example:
        ``render_table(["trial", "loss"], [["trial_a", metric_text(0.5)]])`` is
        ``"trial    loss\\ntrial_a  0.5000"``.
    """
    table = [[str(c) for c in header]]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells for {len(header)} columns")
        table.append([str(c) for c in row])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        (indent + "  ".join(c.ljust(w) for c, w in zip(line, widths))).rstrip() for line in table
    )


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def status_label(ray_status: str, epoch: int | None, epochs: int) -> str:
    """A trial's status in ktune's words (the progress table and the report use them).

    ``DONE``: ran all epochs; ``STOPPED``: Ray says TERMINATED after fewer epochs, so the
    scheduler (ASHA) stopped it early; ``ERROR``, ``RUNNING``, ``PENDING``, ``PAUSED``:
    as Ray says.
    """
    if ray_status == "TERMINATED":
        return "DONE" if (epoch or 0) >= epochs else "STOPPED"
    return ray_status


def last_line(text: str) -> str:
    """The last line of ``text`` that is not blank, stripped ("" if none): the line of a
    traceback or error message that says what went wrong, for one cell or one note.

    A Keras layer's error ends with the arguments of the call (``Call arguments received
    by layer ...:`` then ``• training=None``): the line taken is the last before them,
    the error itself, without TensorFlow's ``{{function_node ...}}`` prefix."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    footer = [i for i, ln in enumerate(lines) if ln.startswith("Call arguments received by")]
    if footer and footer[-1] > 0:
        lines = lines[: footer[-1]]
    return _FUNCTION_NODE.sub("", lines[-1]) if lines else ""


_FUNCTION_NODE = re.compile(r"^\{\{function_node [^}]*\}\}\s*")


def ensemble_note(best_info: Mapping) -> str:
    """With ``ensemble.seeds`` the test accuracy is the ensemble's: say so, and the best
    trial's alone."""
    ensemble = best_info.get("ensemble")
    if not ensemble:
        return ""
    alone = metric_text(ensemble["members"][0].get("test_accuracy"))
    seeds = f"{ensemble['seeds']}{left_out_text(ensemble)}"
    return f" (ensemble of seeds {seeds}; the trial alone {alone})"


def left_out_text(ensemble: Mapping) -> str:
    """``"; seeds [1] left out: no finite val_accuracy in 6 epoch(s)"`` for the members
    best.json's ``ensemble`` says were left out ("" when none was)."""
    left = ensemble.get("left_out") or []
    if not left:
        return ""
    seeds = [m["seed"] for m in left]
    return f"; seeds {seeds} left out: {left[0]['reason']}"
