"""The report as one HTML page: :func:`render_html` builds it, :func:`write_report` writes
it with every image embedded (one file to send around) and the same images as PNGs beside
it, and returns what ``ktune report`` prints (the library itself prints nothing).

Also the page's building blocks (style, escaping, tables, figures) that the comparison
page (:mod:`ktune.report.compare`) shares.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from ktune.errors import ExperimentError
from ktune.experiment_dir import JOURNAL_FILE
from ktune.report.figures import PLOTS
from ktune.report.load import ExperimentRecord
from ktune.report.plots import draw_plots
from ktune.report.study import read_optuna_study
from ktune.report.text import best_line, status_line, summary_text, trial_table, wall_note
from ktune.storage import join, write_atomic
from ktune.tables import ensemble_note, format_duration, metric_text, value_text

__all__ = ["REPORT_FILE", "WrittenReport", "render_html", "write_report"]

# The report's default name in the experiment folder; its PNGs are <stem>-<plot>.png beside it.
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class WrittenReport:
    """What :func:`write_report` (or ``compare_experiments``) wrote.

    Attributes:
        path: Path. The HTML page.
        text: str. The summary ``ktune report`` prints: tables, notes, where the page is.
        images: list of Path. The PNGs written beside the page (none for a comparison).
    """

    path: Path
    text: str
    images: list[Path] = field(default_factory=list)


def check_out(out: str | Path) -> Path:
    """``out`` as the HTML file to write: one clear error before any work if it cannot be."""
    out = Path(out)
    if out.is_dir():
        raise ExperimentError(f"{out}: is a directory; --out names the HTML file to write")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ExperimentError(f"{out}: --out names the HTML file to write (.html)")
    if not out.parent.is_dir():
        raise ExperimentError(f"{out.parent}: no such directory for --out")
    if out.exists() and not _written_by_ktune(out):
        raise ExperimentError(
            f"{out}: exists and is not a page ktune wrote; --out replaces only its own "
            "reports (choose another name, or remove the file)"
        )
    return out


def _written_by_ktune(path: Path) -> bool:
    """A report or comparison page of ktune's (its title says so), safe to replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"<!DOCTYPE html>") and b"<title>ktune" in head


# The style of both pages (report and comparison), inline so that a page is one file.
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.2em;margin-top:32px;
border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;margin:8px 0;font-size:0.9em}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#fff7d6;font-weight:600}
.kv td:first-child{color:#555} img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#7a5b00;background:#fff9e6;padding:6px 10px;border-left:3px solid #e0b000;
margin:4px 0} code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
figcaption{color:#555;font-size:0.9em;margin:4px 0 0} .status-ERROR{color:#c00}
figure{margin:8px 0} .row{display:flex;gap:32px;flex-wrap:wrap;align-items:flex-start}
.narrow{max-width:560px} h3{font-size:1.05em;margin-top:20px}
.status-STOPPED{color:#777} .status-INTERRUPTED{color:#b60}
.status-RUNNING,.status-PENDING{color:#06c}
"""


def escape(v: Any) -> str:
    """``v`` as text safe inside HTML."""
    return html.escape(str(v))


def kv_table(pairs: Sequence[tuple[str, Any]]) -> str:
    """A two-column table of names and values."""
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    best_row: int = -1,
    status_col: int = -1,
) -> str:
    """A table with a header row; numbers right-aligned, ``best_row`` highlighted, the
    cells of ``status_col`` coloured by status."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for j, c in enumerate(r):
            text = str(c)
            cls = ' class="num"' if _looks_numeric(text) else ""
            if j == status_col:
                cls = f' class="status-{escape(text)}"'
            cells.append(f"<td{cls}>{escape(text)}</td>")
        tr = ' class="best"' if i == best_row else ""
        body.append(f"<tr{tr}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _looks_numeric(text: str) -> bool:
    try:
        float(text.split("/")[0])
        return True
    except ValueError:
        return False


def _figure(name: str, png: bytes, metric: str, file_name: str, *, heading: bool = True) -> str:
    title = PLOTS[name][1].format(metric=metric)
    caption = PLOTS[name][2].format(metric=metric)
    data = base64.b64encode(png).decode("ascii")
    return (
        (f"<h2>{escape(title)}</h2>" if heading else "")
        + f'<figure><img alt="{escape(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)} (also <code>{escape(file_name)}</code> beside this report)"
        "</figcaption></figure>"
    )


def _best_trial_html(
    record: ExperimentRecord, pngs: Mapping[str, bytes], file_names: Mapping[str, str]
) -> list[str]:
    best = record.best_trial()
    if best is None:
        return ["<p>No trial has reported an epoch yet.</p>"]
    b = best.best(record.metric, record.mode)
    info = record.best_info or {}
    config = info.get("config") or best.config
    shown = {k: v for k, v in (config or {}).items() if not k.startswith("heads_for_")}
    pairs: list[tuple[str, Any]] = [("trial", best.trial)]
    pairs.append(
        (
            f"best {record.metric}",
            metric_text(b[1] if b else None) + (f" at epoch {b[0]}" if b else ""),
        )
    )
    metrics = info.get("metrics") or {}
    for k in ("val_accuracy", "val_loss", "accuracy", "loss"):
        if k in metrics and k != record.metric:
            pairs.append((k, metric_text(metrics[k])))
    if info:
        tested = metric_text(info.get("test_accuracy")) + ensemble_note(info)
        pairs.append(("test accuracy", tested))
        pairs.append(("test loss", metric_text(info.get("test_loss"))))
        pairs.append(("checkpoint", info.get("checkpoint", "-")))
        if info.get("export"):
            pairs.append(("export", info["export"]))
    else:
        pairs.append(("test accuracy", "measured when the search finishes"))
    parts = [
        "<div class='row'>",
        f"<div>{kv_table(pairs)}</div>",
        "<div><b>its configuration</b>"
        + kv_table([(k, value_text(v)) for k, v in shown.items()])
        + "</div>",
        "</div>",
    ]
    matrix = info.get("test_confusion_matrix")
    if matrix:
        names = record.class_names or [str(i) for i in range(len(matrix))]
        rows = [
            [names[i], *row, sum(row), metric_text(row[i] / sum(row) if sum(row) else None)]
            for i, row in enumerate(matrix)
        ]
        parts.append("<h3>Confusion matrix on the test split</h3><div class='row'><div>")
        parts.append("<p>rows: true class; columns: predicted class</p>")
        parts.append(html_table(["true \\ predicted", *names, "texts", "recall"], rows))
        parts.append("</div>")
        if "confusion" in pngs:
            parts.append(
                "<div class='narrow'>"
                + _figure(
                    "confusion",
                    pngs["confusion"],
                    record.metric,
                    file_names["confusion"],
                    heading=False,
                )
                + "</div>"
            )
        parts.append("</div>")
    return parts


def render_html(
    record: ExperimentRecord,
    pngs: Mapping[str, bytes],
    importances: Mapping[str, float],
    notes: Sequence[str],
    file_names: Mapping[str, str],
) -> str:
    """The report page: summary, best trial, all trials, then the plots; images inline."""
    best = record.best_trial()
    wall, how = record.wall_time()
    now = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>ktune report: {escape(record.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>ktune report: {escape(record.name)}</h1>",
        f"<p class='sub'>{escape(record.where)} &middot; generated {escape(now)}</p>",
        "<h2>Summary</h2>",
        kv_table(
            [
                ("family", record.family),
                ("status", status_line(record)),
                ("searched metric", f"{record.metric} ({record.mode})"),
                ("best trial", best_line(record)),
                (
                    "wall time",
                    "-" if wall is None else format_duration(wall) + wall_note(how),
                ),
                ("epochs per trial", record.epochs),
                ("searched hyperparameters", ", ".join(record.keys) or "-"),
                ("Optuna study", read_optuna_study(record)),
            ]
        ),
    ]
    parts += [f"<p class='note'>{escape(n)}</p>" for n in notes]
    parts.append("<h2>Best trial</h2>")
    parts += _best_trial_html(record, pngs, file_names)
    header, rows = trial_table(record)
    best_row = next((i for i, t in enumerate(record.trials) if t is best), -1)
    parts.append(f"<h2>All trials ({len(record.trials)})</h2>")
    parts.append(html_table(header, rows, best_row=best_row, status_col=1))
    parts.append(
        "<p class='sub'>DONE: ran all epochs; STOPPED: stopped early by ASHA; * the best trial.</p>"
    )
    errors = [(t.trial, t.error) for t in record.trials if t.status == "ERROR" and t.error]
    if errors:
        parts.append("<p>Errors:</p>" + kv_table(errors))
    for name in ("pareto", "curves", "history", "slice", "parallel", "importance"):
        if name not in pngs:
            continue
        parts.append(_figure(name, pngs[name], record.metric, file_names[name]))
        if name == "importance":
            parts.append(
                html_table(
                    ["hyperparameter", "importance"],
                    [[k, f"{v:.3f}"] for k, v in importances.items()],
                )
            )
            n = record.count("DONE") + record.count("STOPPED")
            if n < 10:
                parts.append(
                    f"<p class='note'>Estimated from {n} finished trials: read it "
                    "as a rough hint, not a measurement.</p>"
                )
    parts.append(
        "<h2>Look further</h2><p>Per-trial TensorBoard logs (scalars per epoch): "
        f"<code>tensorboard --logdir {escape(record.where)}</code><br>The Optuna study, live: "
        f"<code>pip install optuna-dashboard &amp;&amp; optuna-dashboard "
        f"{escape(join(record.where, JOURNAL_FILE))}</code>"
        + (" (download the journal first)" if record.shown else "")
        + "</p></body></html>"
    )
    return "\n".join(parts)


def write_report(record: ExperimentRecord, out: str | Path) -> WrittenReport:
    """Writes ``out`` (HTML, images embedded) and its PNGs beside it.

    The PNGs are named ``<out stem>-<plot>.png``; an image this report has no data for
    (no confusion matrix while the search runs) is removed if an earlier report left one.
    Returns the files and the summary to print (the summary table, notes, where it is).
    """
    out = check_out(out)
    pngs, importances, notes = draw_plots(record)
    notes = record.notes + notes
    file_names = {name: f"{out.stem}-{suffix}.png" for name, (suffix, _, _) in PLOTS.items()}
    images = []
    for name, file_name in file_names.items():
        path = out.parent / file_name
        if name in pngs:
            write_atomic(path, pngs[name])
            images.append(path)
        elif path.is_file():
            path.unlink()
    html_text = render_html(record, pngs, importances, notes, file_names)
    write_atomic(out, html_text.encode("utf-8"))
    lines = [summary_text(record, importances), *(f"note: {n}" for n in notes)]
    lines.append(f"\nreport: {out}  ({len(pngs)} images beside it)")
    return WrittenReport(out, "\n".join(lines), images)
