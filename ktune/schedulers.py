"""ktune's ASHA: Ray Tune's ``ASHAScheduler``, and a rung's first arrivals are checked again.

Ray's asynchronous successive halving decides once, when a trial reaches a rung: it is
stopped when its result is below the cutoff of the results recorded there so far (the
``1 - 1/reduction_factor`` quantile). The first trial to reach a rung has nothing to be
compared with, so it always continues, however poor: in the quickstart a trial at
learning rate 2e-5 (validation accuracy 0.37, chance 0.25) reaches every rung first,
because its small model is fast, and trains all its epochs, while trials at 0.91 are
stopped after one.

:class:`RevisingASHA` keeps every decision Ray's makes and adds one: at each later
result of a trial, its result at each rung it passed is compared again with that rung's
cutoff as it is now; a trial no longer in the top ``1/reduction_factor`` of a rung it
passed is stopped. That is the rule of (synchronous) successive halving, applied as soon
as the rung holds the results to apply it; a trial that passed on its merits keeps
passing until better trials fill the rung above it. A trial stopped so is stopped before
its result is recorded at the rung it has just reached, and Ray's end of the trial
(``on_trial_complete``) records it nowhere either: successive halving would not have
promoted it there, and its result would stand in that rung against the trials that were.
(Recorded, it stopped them: a search of 6 trials, 3 epochs, where the first two trials'
first results were close, had every trial stopped before its last epoch.)
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Dict

from ray.tune.schedulers import AsyncHyperBandScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2

from ktune.experiment_dir import STOP_LOG

__all__ = [
    "KtunePBT",
    "KtunePB2",
    "RevisingASHA",
    "restore_rungs",
    "refills_rungs",
    "read_stops",
    "read_revised",
    "STOP_LOG",
]


class RevisingASHA(AsyncHyperBandScheduler):
    """Ray's ``AsyncHyperBandScheduler`` (same arguments), revising its rungs' first
    arrivals as the rungs fill (see the module's doc).

    With ``stop_log`` (a path; ``ktune run`` sets it for local storage) each trial it stops
    early is one line there, written as it decides: the trial's id and the epoch of the
    result it stopped at. :func:`restore_rungs` reads it back, and so does a trial restored
    by ``ktune resume`` (:func:`ktune.trainables.base.starting_checkpoint`)."""

    stop_log: Path | None = None
    # stopped before a resume (restore_rungs): trial id -> the epoch it stopped at
    _resumed_stops: Dict[str, Any] = {}
    # trials stopped by the revision (a rung they had passed): recorded at no later rung
    _revised: frozenset = frozenset()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: Dict) -> str:
        if trial.trial_id in self._resumed_stops:  # its epochs since Ray's snapshot, again
            stop_at = self._resumed_stops[trial.trial_id]
            if stop_at is not None and _epoch(result, self._time_attr) < stop_at:
                bracket = self._trial_info.get(trial.trial_id)
                if bracket is not None and self._metric in result and self._time_attr in result:
                    value = self._metric_op * result[self._metric]  # its rungs, as live
                    bracket.on_result(trial, result[self._time_attr], value)
                return TrialScheduler.CONTINUE
            self._num_stopped += 1
            return TrialScheduler.STOP
        last = result.get(self._time_attr, self._max_t) >= self._max_t  # it stops anyway
        revised = not last and self._revise(trial)
        action = (
            TrialScheduler.STOP
            if revised
            else super().on_trial_result(tune_controller, trial, result)
        )
        if action == TrialScheduler.STOP and self.stop_log is not None:
            if not last:
                why = " revised" if revised else ""
                line = f"{trial.trial_id} {_epoch(result, self._time_attr)}{why}\n"
                with contextlib.suppress(OSError), open(self.stop_log, "a") as f:
                    f.write(line)  # (a note lost never stops a search)
        return action

    def _revise(self, trial: Any) -> bool:
        """Whether ``trial``'s result at a rung it passed is now below that rung's cutoff
        (then it is stopped, before this result is recorded anywhere)."""
        bracket = self._trial_info.get(trial.trial_id)
        for _, recorded in bracket._rungs if bracket is not None else []:
            if trial.trial_id in recorded:
                cutoff = bracket.cutoff(recorded)
                if cutoff is not None and recorded[trial.trial_id] < cutoff:
                    self._num_stopped += 1
                    self._revised = self._revised | {trial.trial_id}
                    return True
        return False

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: Dict) -> None:
        if trial.trial_id in self._revised:  # its last result belongs to no rung
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


class _NoFinishedDonors:
    """PBT/PB2 that do not clone a donor whose last result is its last epoch (``epochs``).

    Ray's PBT may pick as donor a trial that has just reported its final epoch (it is not
    finished until Tune processes the stop). The clone then restores that final
    checkpoint, has no epoch left to train and ends at once, keeping the donor's last
    result: its row showed the donor's configuration and epochs beside its own accuracy,
    and the mutated configuration was never trained (an audit's 4-trial search). Such an
    exploit is skipped, as Ray skips one whose donor has no checkpoint: the trial trains
    on with its own configuration."""

    epochs: int | None

    def __init__(self, *args: Any, epochs: int | None = None, **kwargs: Any) -> None:
        """``epochs``: the trials' ``training.epochs``; the other arguments are Ray's."""
        super().__init__(*args, **kwargs)
        self.epochs = epochs

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        last = self._trial_state[trial_to_clone].last_result or {}  # type: ignore[attr-defined]
        done = _epoch(last, "training_iteration")
        if self.epochs is not None and done >= self.epochs:
            return
        super()._exploit(tune_controller, trial, trial_to_clone)  # type: ignore[misc]


class KtunePBT(_NoFinishedDonors, PopulationBasedTraining):
    """Ray's ``PopulationBasedTraining``, never cloning a donor at its last epoch."""


class KtunePB2(_NoFinishedDonors, PB2):
    """Ray's ``PB2``, never cloning a donor at its last epoch."""


# Written by RevisingASHA.stop_log in the experiment folder (no .json: Ray copies those):
# STOP_LOG, kept with ktune's files (experiment_dir).


def _epoch(result: Dict, attr: str) -> int:
    """A result's epoch: ktune's trials report ``epoch``; other trainables, ``attr``."""
    value = result.get("epoch", result.get(attr))
    return int(value) if isinstance(value, (int, float)) else 0


def read_stops(text: str) -> dict[str, int | None]:
    """The stop log's trials, each with the epoch it was stopped at (None: a log written
    before the epoch was noted, or a line cut short by a kill)."""
    stops: dict[str, int | None] = {}
    for line in text.splitlines():
        words = line.split()
        if words:
            epoch = words[1] if len(words) > 1 else ""
            stops[words[0]] = int(epoch) if epoch.isdigit() else None
    return stops


def read_revised(text: str) -> frozenset:
    """The stop log's trials stopped by the revision (``ID EPOCH revised``): their result
    at the epoch they stopped at belongs to no rung."""
    return frozenset(w[0] for w in map(str.split, text.splitlines()) if w[2:3] == ["revised"])


def refills_rungs(scheduler: Any) -> bool:
    """Whether :func:`restore_rungs` has rungs to refill in ``scheduler``: an ASHA of one
    bracket (of several, a trial's bracket was a random draw, not recorded) with its
    metric set."""
    return (
        isinstance(scheduler, AsyncHyperBandScheduler)
        and len(scheduler._brackets) == 1
        and bool(scheduler._metric and scheduler._metric_op)
    )


def restore_rungs(scheduler: Any, exp_dir: str | Path, histories: str | Path | None = None) -> int:
    """``ktune resume``: refills an ASHA's rungs with what the experiment's trials reported
    (their ``result.json``), as Ray's ASHA recorded it live, and has a
    :class:`RevisingASHA` stop again the trials it stopped before (its ``stop_log``);
    returns how many rung results it recorded.

    Ray's snapshot of a search holds none of its scheduler's state: a restored ASHA started
    with empty rungs, so every trial reaching a rung after the resume was its first
    arrival and continued; and a trial ASHA stopped after Ray's last snapshot came back
    and trained on (the snapshot still had it running). Such a trial first reports its
    epochs since the snapshot again, up to the one it was stopped at: that result is now
    its stop.

    ``histories``: the folder holding the trials' folders (default ``exp_dir``; on URI
    storage a download of them, ``exp_dir`` being the staging folder of ktune's files)."""
    if not refills_rungs(scheduler):
        return 0
    attr, metric, op = scheduler._time_attr, scheduler._metric, scheduler._metric_op
    revised: dict[str, int] = {}  # trial -> the epoch the revision stopped it at
    if isinstance(scheduler, RevisingASHA):
        log = Path(exp_dir) / STOP_LOG
        scheduler.stop_log = log
        with contextlib.suppress(OSError):
            text = log.read_text(errors="replace")
            scheduler._resumed_stops = read_stops(text)
            scheduler._revised = read_revised(text)
        revised = {
            t: epoch
            for t in scheduler._revised
            if (epoch := scheduler._resumed_stops.get(t)) is not None
        }
    [bracket] = scheduler._brackets
    count = 0
    for trial_id, rows in _histories(Path(histories or exp_dir), attr, metric).items():
        if trial_id in revised:  # not its result at the stop: it belongs to no rung
            rows = [r for r in rows if _epoch(r, attr) < revised[trial_id]]
        for milestone, recorded in bracket._rungs:
            # Ray records a trial's result at its first report at or past the milestone
            reached = [r for r in rows if r[attr] >= milestone]
            if reached:
                recorded[trial_id] = op * float(reached[0][metric])
                count += 1
    return count


def _histories(exp_dir: Path, attr: str, metric: str) -> dict[str, list[dict]]:
    """Each trial's results that carry ``attr`` and ``metric``, in ``attr`` order."""
    out: dict[str, list[dict]] = {}
    for path in sorted(exp_dir.glob("*/result.json")):
        rows = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(row, dict) and row.get(attr) is not None and row.get("trial_id"):
                if row.get(metric) is not None:
                    rows.append(row)
        if rows:
            out[str(rows[0]["trial_id"])] = sorted(rows, key=lambda r: r[attr])
    return out
