"""The report in words: the per-trial table, the status and best-trial lines and the
summary that ``ktune report`` prints (the HTML page shows the same table and lines).

Tables render through :mod:`ktune.tables`, so their numbers read as in every other table.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

from ktune import storage
from ktune.driver import last_alive, running_elsewhere, silent_after
from ktune.report.load import ExperimentRecord
from ktune.tables import (
    FINISHED,
    ensemble_note,
    format_duration,
    last_line,
    metric_text,
    objective_text,
    render_table,
    value_text,
)

__all__ = [
    "table_text",
    "trial_table",
    "summary_text",
    "status_line",
    "best_line",
    "one_line",
    "wall_note",
]


def one_line(e: BaseException) -> str:
    """An error as one line for a note: its type and the last line of its message."""
    line = last_line(str(e))
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def table_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A report table (header and rows of text) as fixed-width text."""
    return render_table(header, rows)


def trial_table(record: ExperimentRecord) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-trial table (terminal and HTML)."""
    best = record.best_trial()
    # a multi-objective search's other objectives, each trial's best value of each
    others = [
        (o["metric"], o["mode"])
        for o in (record.best_info or {}).get("objectives") or []
        if o["metric"] != record.metric
    ]
    header = ["trial", "status", *record.keys, "epochs", f"best {record.metric}", "at epoch"]
    header += [f"best {m}" for m, _ in others]
    rows = []
    for t in record.trials:
        b = t.best(record.metric, record.mode)
        rows.append(
            [
                t.trial + (" *" if best is not None and t is best else ""),
                t.status,
                *(value_text(t.config.get(k)) for k in record.keys),
                f"{t.epochs}/{record.epochs}",
                metric_text(b[1] if b else None),
                str(b[0]) if b else "-",
                *(objective_text((t.best(m, mode) or (None, None))[1]) for m, mode in others),
            ]
        )
    return header, rows


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def status_line(record: ExperimentRecord) -> str:
    """How many trials finished, ran all epochs, stopped early, failed or still run."""
    done = sum(record.count(s) for s in FINISHED)
    stop = record.interrupted
    if record.finished:
        state = "finished"
        if record.spec.get("export") and "export" not in (record.best_info or {}):
            state += (
                " (not exported: its export was cut off, or is still being written; "
                f"`ktune resume {_resume_where(record)}` makes it)"
            )
    elif stop:
        state = (
            f"interrupted by {stop.get('signal', 'a signal')} at "
            f"{_clock(float(stop['time']))} (`ktune resume {_resume_where(record)}` continues it)"
        )
    else:
        state = _driver_state(record)
    parts = [f"{done}/{record.num_samples} trials finished"]
    parts.append(f"{record.count('DONE')} ran all {record.epochs} epochs")
    parts.append(f"{record.count('STOPPED')} stopped early by ASHA")
    if record.count("ERROR"):
        parts.append(f"{record.count('ERROR')} failed")
    if record.count("INTERRUPTED"):
        parts.append(f"{record.count('INTERRUPTED')} cut off")
    if stop and stop.get("not_started"):
        parts.append(f"{stop['not_started']} not started")
    active = sum(record.count(s) for s in ("RUNNING", "PENDING", "PAUSED"))
    if active:
        parts.append(f"{active} running or pending")
    return f"{state}: " + ", ".join(parts)


def _resume_where(record: ExperimentRecord) -> str:
    """The experiment as ``ktune resume`` takes it: on URI storage the report reads a
    downloaded copy, so the URI."""
    where = str(record.spec.get("experiment_path") or "")
    return storage.redact(where) if storage.is_uri(where) else str(record.path)


def _driver_state(record: ExperimentRecord) -> str:
    """Not finished nor interrupted: what ``driver.json`` says of the search's process."""
    driver = record.driver
    if driver is None:  # an experiment of a ktune before driver.json
        return "running (or stopped by a crash: no best.json yet)"
    pid, state = driver.get("pid"), driver["state"]
    resume = f"`ktune resume {_resume_where(record)}` continues it"
    if state == "running":
        return f"running (ktune {driver.get('command', 'run')}, pid {pid})"
    if state == "gone":
        return f"stopped by a crash: its driver (pid {pid}) was killed ({resume})"
    if state == "ended":
        error, at = driver.get("error"), _clock(float(driver["ended"]))
        if error == "KeyboardInterrupt":  # Ctrl+C outside Tune's loop (no interrupted.json)
            return f"stopped by Ctrl+C at {at} before it finished ({resume})"
        why = f" ({error})" if error else ""
        return f"stopped by an error at {at}{why} before it finished ({resume})"
    host = driver.get("host")
    if state == "silent":
        return (
            f"stopped by a crash on {host}, or cut off from the storage: no sign of life "
            f"from its driver (pid {pid}) since {_clock(last_alive(driver))} ({resume})"
        )
    if silent_after(driver):  # its heartbeat is current
        return running_elsewhere(driver)
    return f"running on {host} (or stopped by a crash there: no best.json yet)"


def best_line(record: ExperimentRecord) -> str:
    """The best trial, its metric and epoch, and its test accuracy once the search is done."""
    best = record.best_trial()
    if best is None:
        return "no trial has reported an epoch yet"
    b = best.best(record.metric, record.mode)
    line = f"best trial {best.trial}: {record.metric}={metric_text(b[1] if b else None)}"
    line += f" at epoch {b[0]}" if b else ""
    if record.best_info and record.best_info.get("test_accuracy") is not None:
        line += f", test_accuracy={metric_text(record.best_info['test_accuracy'])}"
        line += ensemble_note(record.best_info)
    elif not record.finished:
        line += " (so far)"
    return line


def summary_text(record: ExperimentRecord, importances: Mapping[str, float]) -> str:
    """What ``ktune report`` prints about one experiment, above its notes."""
    wall, how = record.wall_time()
    lines = [
        f"experiment {record.name} ({record.family}) at {record.where}",
        status_line(record),
        best_line(record),
    ]
    if wall is not None:
        lines.append(f"wall time {format_duration(wall)}{wall_note(how)}")
    if importances:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    header, rows = trial_table(record)
    lines += ["", table_text(header, rows)]
    return "\n".join(lines)


def wall_note(how: str) -> str:
    """What a wall time counts, after it (:meth:`ExperimentRecord.wall_time`'s ``how``)."""
    return {
        "trials": " (trial results so far)",
        "resume": " (the resume that finished it; not the run it continued, cut short by a "
        "crash or a stop)",
    }.get(how, "")
