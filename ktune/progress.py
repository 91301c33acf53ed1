"""Live progress of a search: a compact table of trials printed by the driver.

Ray Tune's own console output (wide tables, every worker's log lines) is switched off by
default (``ktune run --verbose`` brings it back); instead :class:`SearchProgress`, a
``ray.tune.Callback`` that runs in the driver, prints

- one line when a trial ends (done, stopped early by ASHA, or failed with its error), and
- a table of trials (status, epoch, searched hyperparameters, latest and best metric)
  under a header with the best trial so far, trials done/total and the elapsed time, at
  most every ``interval_s`` seconds while something changed, and once at the end.

The output is plain lines, flushed as written: no carriage returns or terminal control
codes, so it reads the same in a terminal, a log file and the logs of a Ray Job
(``ktune submit --follow``), where stdout is not a terminal and would otherwise be
buffered.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

from ray.tune import Callback

from ktune.objectives import ranks_before
from ktune.tables import (
    FINISHED,
    format_duration,
    last_line,
    metric_text,
    render_table,
    status_label,
    value_text,
)

__all__ = ["SearchProgress", "TrialRow", "format_progress"]

# A long search shows its running trials, the best finished ones and a count of the rest.
MAX_ROWS = 20
TOP_FINISHED = 8


DEFAULT_INTERVAL_S = 20.0


def default_interval() -> float:
    """Seconds between two progress tables: ``KTUNE_PROGRESS_INTERVAL`` or 20."""
    try:
        return max(0.0, float(os.environ.get("KTUNE_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


@dataclass
class TrialRow:
    """One trial as the progress table shows it."""

    trial: str
    status: str  # PENDING | RUNNING | PAUSED | DONE | STOPPED | ERROR
    epoch: int | None
    config: Mapping[str, Any]
    latest: float | None
    best: float | None


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def format_progress(
    rows: Sequence[TrialRow],
    *,
    name: str,
    metric: str,
    mode: str,
    keys: Sequence[str],
    epochs: int,
    total: int,
    elapsed_s: float,
) -> str:
    """The header line and the table of trials, as plain text."""
    finished = [r for r in rows if r.status in FINISHED]
    counts = {
        s: sum(r.status == s for r in rows) for s in ("STOPPED", "ERROR", "RUNNING", "PENDING")
    }
    best: TrialRow | None = None
    best_value = math.nan
    for r in rows:
        if r.best is not None and not math.isnan(r.best):
            if best is None or ranks_before(r.best, r.trial, best_value, best.trial, mode):
                best, best_value = r, r.best
    header = (
        f"[{name}] {format_duration(elapsed_s)}  trials {len(finished)}/{total} finished "
        f"({counts['STOPPED']} stopped early, {counts['ERROR']} failed), "
        f"{counts['RUNNING']} running, {counts['PENDING']} pending  "
    )
    header += (
        f"best {metric} {metric_text(best_value)} ({best.trial})" if best else f"best {metric} -"
    )
    shown = list(rows)
    hidden = 0
    if len(shown) > MAX_ROWS:
        active = [r for r in rows if r.status not in FINISHED]
        scored = [(r.best, r) for r in finished if r.best is not None]
        done = [r for _, r in sorted(scored, key=lambda p: p[0] if mode == "min" else -p[0])]
        done = done[:TOP_FINISHED]
        keep = {id(r) for r in active + done}
        shown = [r for r in rows if id(r) in keep]
        hidden = len(rows) - len(shown)
    cols = ["trial", "status", "epoch", *keys, metric, "best"]
    table = []
    for r in shown:
        mark = " *" if best is not None and r is best else ""
        table.append(
            [
                r.trial,
                r.status,
                f"{r.epoch if r.epoch is not None else 0}/{epochs}",
                *(value_text(r.config.get(k)) for k in keys),
                metric_text(r.latest),
                metric_text(r.best) + mark,
            ]
        )
    lines = [header, render_table(cols, table, indent="  ")]
    if hidden:
        lines.append(f"  ... {hidden} more finished trials (ktune report shows them all)")
    return "\n".join(lines)


class SearchProgress(Callback):
    """Prints the live progress of a search from the driver (a ``ray.tune.Callback``).

    Args:
        name: str. The experiment's name, shown on every header line.
        metric: str. The searched metric, e.g. ``val_accuracy``.
        mode: str. ``max`` or ``min``.
        num_samples: int. Trials in the whole search (the "total").
        epochs: int. Epochs a trial runs unless stopped early.
        keys: list of str. Searched hyperparameters to show, in order.
        interval_s: float. Least seconds between two tables. Defaults to the environment
            variable ``KTUNE_PROGRESS_INTERVAL``, else 20.
        stream: file. Where to print. Defaults to ``sys.stdout`` at the time of printing.
        end: :class:`ktune.search_end.SearchEnd` or None. Placed before this callback, it
            tells the last line of a search stopped by Ctrl+C from that of a finished one.

    Example:
        ``tune.RunConfig(callbacks=[SearchProgress(name="q", metric="val_accuracy", mode="max",
        num_samples=8, epochs=3, keys=["embed_dim", "heads"])], verbose=0)``
    """

    def __init__(
        self,
        *,
        name: str,
        metric: str,
        mode: str,
        num_samples: int,
        epochs: int,
        keys: Sequence[str],
        interval_s: float | None = None,
        stream: IO[str] | None = None,
        end: Any = None,
    ):
        self.name = name
        self.metric = metric
        self.mode = mode
        self.total = num_samples
        self.epochs = epochs
        self.keys = list(keys)
        self.interval_s = default_interval() if interval_s is None else float(interval_s)
        self._stream = stream
        self._end = end  # a ktune.search_end.SearchEnd ahead of this callback, or None
        self._reset()

    def _reset(self) -> None:
        self._started = time.monotonic()
        self._last_print = -math.inf
        self._dirty = True
        self._best: dict[str, float] = {}
        # Tune calls on_trial_result before it updates trial.last_result: keep our own.
        self._latest: dict[str, dict] = {}
        self._trials: list = []

    # Ray pickles the run config (and with it this callback) into the experiment's
    # tuner.pkl; an open stream cannot be pickled and a restored copy starts afresh.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stream"] = None
        state["_trials"] = []
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- Tune's hooks -------------------------------------------------------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        """Called once before the first trial starts."""
        self._started = time.monotonic()
        if total_num_samples:
            self.total = int(total_num_samples)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        """Called on every step of Tune's loop: prints a table that is due."""
        if len(trials) != len(self._trials):
            self._dirty = True
        self._trials = trials
        self._maybe_print()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        """Called with each epoch's metrics of a trial."""
        self._latest[trial.trial_id] = result
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and not math.isnan(value):
            old = self._best.get(trial.trial_id)
            if old is None or _better(float(value), old, self.mode):
                self._best[trial.trial_id] = float(value)
        self._trials = trials
        self._dirty = True
        self._maybe_print()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        """Called when a trial ends without an error: ran all epochs or stopped early."""
        epoch = self._epoch(trial)
        how = "done" if (epoch or 0) >= self.epochs else "stopped early (ASHA)"
        self._event(
            f"trial_{trial.trial_id} {how} after epoch {epoch or 0}: "
            f"best {self.metric} {metric_text(self._best_of(trial))}"
        )
        self._trials = trials
        self._dirty = True

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        """Called when a trial failed for good (after its retries)."""
        self._event(
            f"trial_{trial.trial_id} failed at epoch {self._epoch(trial) or 0}: "
            f"{_error_line(trial)}"
        )
        self._trials = trials
        self._dirty = True

    def on_experiment_end(self, trials: list, **info) -> None:
        """Called once when the search is over: the final header line (the results table
        that follows in ``ktune run`` has every trial)."""
        self._trials = trials
        end = self._end
        if end is not None and end.interrupted:
            # Tune's clean-up marked the trials it stopped TERMINATED: not "stopped early".
            left = end.total - end.trials
            self._event(
                f"interrupted: trials {end.finished}/{end.total} finished, "
                f"{len(end.cut_off)} stopped before their end"
                + (f", {left} not started" if left > 0 else "")
            )
            return
        self._write(self.render().splitlines()[0] + "\n")

    # -- output -------------------------------------------------------------------------

    def rows(self, trials: Sequence | None = None) -> list[TrialRow]:
        """The table's rows for Tune's ``Trial`` objects (in creation order)."""
        out = []
        for t in self._trials if trials is None else trials:
            epoch = self._epoch(t)
            latest = self._last_result(t).get(self.metric)
            out.append(
                TrialRow(
                    trial=f"trial_{t.trial_id}",
                    status=status_label(str(t.status), epoch, self.epochs),
                    epoch=epoch,
                    config=t.config or {},
                    latest=float(latest) if isinstance(latest, (int, float)) else None,
                    best=self._best_of(t),
                )
            )
        return out

    def render(self) -> str:
        return format_progress(
            self.rows(),
            name=self.name,
            metric=self.metric,
            mode=self.mode,
            keys=self.keys,
            epochs=self.epochs,
            total=max(self.total, len(self._trials)),
            elapsed_s=time.monotonic() - self._started,
        )

    def _last_result(self, trial) -> dict:
        ours = self._latest.get(trial.trial_id) or {}
        theirs = trial.last_result or {}
        if ours.get("epoch", 0) >= theirs.get("epoch", 0):
            return ours
        return theirs

    def _epoch(self, trial) -> int | None:
        epoch = self._last_result(trial).get("epoch")
        return int(epoch) if isinstance(epoch, (int, float)) else None

    def _best_of(self, trial) -> float | None:
        # A trial restored by `ktune resume` reported epochs before this driver started:
        # Tune's own summary of the trial's results has them.
        analysis = (getattr(trial, "metric_analysis", None) or {}).get(self.metric) or {}
        values = [
            v
            for v in (self._best.get(trial.trial_id), analysis.get(self.mode))
            if isinstance(v, (int, float)) and not math.isnan(v)
        ]
        if not values:
            return None
        return float(max(values) if self.mode == "max" else min(values))

    def _maybe_print(self) -> None:
        if not self._trials:
            return
        if self._dirty and time.monotonic() - self._last_print >= self.interval_s:
            self._print()

    def _print(self) -> None:
        self._write(self.render() + "\n")
        self._last_print = time.monotonic()
        self._dirty = False

    def _event(self, text: str) -> None:
        self._write(f"[{self.name}] {format_duration(time.monotonic() - self._started)}  {text}\n")

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(text)
        stream.flush()


def _error_line(trial) -> str:
    """The last line of the trial's error (Ray writes the traceback to error.txt)."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    return last_line(text) or "see its error.txt"
