"""Several experiments side by side: :func:`compare_experiments` writes one HTML page with
their table and a chart (best trial's validation and test accuracy, and its learning curve),
and returns the table that ``ktune report A B ...`` prints.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from ktune.report.figures import png, pyplot
from ktune.report.html import CSS, WrittenReport, check_out, escape, html_table, kv_table
from ktune.report.load import ExperimentRecord
from ktune.report.text import one_line, table_text
from ktune.storage import write_atomic
from ktune.tables import FINISHED, format_duration, metric_text, value_text

__all__ = ["compare_experiments", "compare_rows", "compare_labels"]


def _compact_config(record: ExperimentRecord, config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={value_text(config.get(k))}" for k in record.keys if k in config)


def compare_labels(records: Sequence[ExperimentRecord]) -> list[str]:
    """Each experiment's folder name, with its parent's where two folders share a name."""
    names = [r.path.name for r in records]
    return [
        f"{r.path.parent.name}/{r.path.name}" if names.count(r.path.name) > 1 else r.path.name
        for r in records
    ]


def _best_val_accuracy(record: ExperimentRecord) -> float | None:
    """The best trial's val_accuracy: best.json's once finished, else its best epoch's."""
    value = ((record.best_info or {}).get("metrics") or {}).get("val_accuracy")
    best = record.best_trial()
    if value is None and best is not None:
        acc = best.best("val_accuracy", "max")
        value = acc[1] if acc else None
    return value


def compare_rows(records: Sequence[ExperimentRecord]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (terminal and HTML), one experiment a row."""
    header = [
        "experiment",
        "family",
        "status",
        "trials",
        "metric",
        "best",
        "val_accuracy",
        "test_accuracy",
        "wall time",
        "best config",
    ]
    rows = []
    for label, r in zip(compare_labels(records), records):
        best = r.best_trial()
        b = best.best(r.metric, r.mode) if best else None
        info = r.best_info or {}
        wall, how = r.wall_time()
        done = sum(r.count(s) for s in FINISHED)
        rows.append(
            [
                label,
                r.family,
                _state(r),
                f"{done}/{r.num_samples}",
                r.metric,
                metric_text(b[1] if b else None),
                metric_text(_best_val_accuracy(r)),
                metric_text(info.get("test_accuracy")) + _ensemble_mark(info),
                "-"
                if wall is None
                else format_duration(wall)
                + {"trials": " so far", "resume": " (resume)"}.get(how, ""),
                _compact_config(r, (info.get("config") or (best.config if best else {}))),
            ]
        )
    return header, rows


def _ensemble_mark(info: dict) -> str:
    """`` (ensemble of 3)`` after a test accuracy that is an ensemble's, not the trial's."""
    seeds = (info.get("ensemble") or {}).get("seeds") or []
    return f" (ensemble of {len(seeds)})" if len(seeds) > 1 else ""


def _state(r: ExperimentRecord) -> str:
    """One word for the state column."""
    if r.finished:
        return "finished"
    if r.interrupted:
        return "interrupted"
    state = r.driver["state"] if r.driver else None
    return {"gone": "crashed", "ended": "failed", "silent": "crashed?"}.get(str(state), "running")


def _compare_plot(records: Sequence[ExperimentRecord]):
    import numpy as np

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
    labels = compare_labels(records)
    vals, tests = [], []
    for r in records:
        v = _best_val_accuracy(r)
        vals.append(np.nan if v is None else v)
        t = (r.best_info or {}).get("test_accuracy")
        tests.append(np.nan if t is None else t)
    x = np.arange(len(records))
    b1 = ax1.bar(x - 0.2, vals, 0.4, label="best trial: val_accuracy", color="#4c72b0")
    b2 = ax1.bar(x + 0.2, tests, 0.4, label="test_accuracy (best.json)", color="#dd8452")
    for bars in (b1, b2):
        for bar in bars:
            h = bar.get_height()
            if not math.isnan(h):
                ax1.text(
                    bar.get_x() + bar.get_width() / 2,
                    h,
                    f"{h:.3f}",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax1.set_xticks(x, labels, rotation=20, ha="right")
    ax1.set_ylim(0, 1.18)
    ax1.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax1.set_ylabel("accuracy")
    ax1.legend(fontsize=8, loc="upper center", ncol=2)
    ax1.set_title("best trial of each experiment", fontsize=10)
    for label, r in zip(labels, records):
        best = r.best_trial()
        curve = best.curve("val_accuracy") if best else []
        if curve:
            xs, ys = zip(*curve)
            ax2.plot(xs, ys, marker="o", label=label)
    from matplotlib.ticker import MaxNLocator

    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("val_accuracy")
    ax2.set_title("learning curve of each best trial", fontsize=10)
    ax2.grid(alpha=0.3)
    if ax2.lines:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compare_experiments(records: Sequence[ExperimentRecord], out: str | Path) -> WrittenReport:
    """Writes one HTML page comparing ``records`` (image embedded).

    Returns the page and the text to print: the table, notes, where the page is.
    """
    out = check_out(out)
    header, rows = compare_rows(records)
    notes = []
    try:
        with pyplot().style.context("ggplot"):
            image = png(_compare_plot(records))
    except Exception as e:  # noqa: BLE001
        image, notes = None, [f"The comparison chart could not be drawn ({one_line(e)})."]
    now = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>ktune: {len(records)} experiments compared</title><style>{CSS}</style>"
        "</head><body>",
        f"<h1>ktune: {len(records)} experiments compared</h1>",
        f"<p class='sub'>generated {escape(now)}</p>",
        html_table(header, rows, status_col=2),
        "<p>best: the best trial's searched metric; val_accuracy and test_accuracy: the "
        "same trial's (test accuracy once its search has finished; with ensemble.seeds the "
        "ensemble's); wall time: the driver's "
        "run, or the span of the trial results while a search runs.</p>",
    ]
    parts += [f"<p class='note'>{escape(n)}</p>" for n in notes]
    if image:
        data = base64.b64encode(image).decode("ascii")
        parts.append(
            f'<h2>Side by side</h2><img alt="comparison" src="data:image/png;base64,{data}">'
        )
    parts.append("<h2>Experiments</h2>")
    parts.append(kv_table(list(zip(compare_labels(records), (r.where for r in records)))))
    parts.append("</body></html>")
    write_atomic(out, "\n".join(parts).encode("utf-8"))
    lines = [table_text(header, rows), *(f"note: {n}" for n in notes), f"\ncomparison: {out}"]
    return WrittenReport(out, "\n".join(lines))
