"""Reading an experiment directory for the report: :func:`load_experiment` and its records.

What it reads, all in the experiment directory ``<storage>/<name>``:
- ``ktune.json`` (family, metric, epochs, class names) -- the one file it cannot do without;
- ``experiment.yaml`` for the search space (which keys were searched, log or linear);
- every ``trial_<id>/``: ``params.json`` (the trial's config, ``heads`` with its real value)
  and its epochs from ``progress.csv`` and ``result.json`` together (:func:`read_history`):
  Ray rewrites ``result.json`` when it restores a trial and may leave epochs out of it,
  and a file that is being written may end in half a line;
- ``results.csv`` and ``best.json`` once the search has finished; while it runs (or after
  its driver died), trial statuses come from Ray's newest ``experiment_state-*.json``;
- ``interrupted.json`` when Ctrl+C or SIGTERM stopped it: the trials it cut off read
  ``INTERRUPTED`` (Ray saved them as running) until a resume trains again;
- ``driver.json`` (:mod:`ktune.driver`): whether the process that runs the search still
  runs; when it was killed, its running trials read ``INTERRUPTED`` too, and so does a
  trial folder a finished search's ``results.csv`` lacks (a trial Ray's snapshot never
  knew, cut off by a crash: the resume ran a new trial in its place).

It writes nothing and imports neither TensorFlow, Ray, Optuna nor matplotlib.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ktune.checkpoint_manifest import TRIAL_FILE
from ktune.driver import driver_state, read_driver
from ktune.errors import ExperimentError
from ktune.experiment_dir import (
    BEST_FILE,
    EXPERIMENT_FILE,
    INTERRUPTED_FILE,
    RESULTS_FILE,
    SPEC_FILE,
    missing_dir,
    ray_statuses,
    relocated,
)
from ktune.tables import last_line, status_label

__all__ = ["ExperimentRecord", "TrialRecord", "load_experiment", "read_history"]

# Fields of a Ray result row that are text even when they look like numbers.
_TEXT_FIELDS = {
    "node_id",
    "trial_id",
    "date",
    "hostname",
    "node_ip",
    "checkpoint_dir_name",
    "experiment_tag",
    "pid",
}


@dataclass
class TrialRecord:
    """One trial as read from its folder."""

    trial: str  # trial_<id>
    path: Path
    config: dict
    history: list[dict]  # one row per epoch, by epoch
    status: str  # see status_label
    error: str = ""

    @property
    def epochs(self) -> int:
        return int(self.history[-1].get("epoch", len(self.history))) if self.history else 0

    def curve(self, metric: str) -> list[tuple[int, float]]:
        """(epoch, value) of every epoch that reported ``metric``."""
        out: list[tuple[int, float]] = []
        for row in self.history:
            v = row.get(metric)
            if isinstance(v, (int, float)) and not math.isnan(v):
                out.append((int(row.get("epoch", len(out) + 1)), float(v)))
        return out

    def best(self, metric: str, mode: str) -> tuple[int, float] | None:
        """(epoch, value) of the trial's best epoch, or None before its first epoch."""
        curve = self.curve(metric)
        if not curve:
            return None
        return (max if mode == "max" else min)(curve, key=lambda p: p[1])

    @property
    def started(self) -> float:
        """When its first epoch began (seconds since the epoch), inf before it reported."""
        if not self.history:
            return math.inf
        first = self.history[0]
        return float(first.get("timestamp", math.inf)) - float(first.get("time_this_iter_s", 0))


@dataclass
class ExperimentRecord:
    """An experiment directory as the report sees it (finished, running or interrupted)."""

    path: Path
    spec: dict
    best_info: dict | None
    trials: list[TrialRecord]
    keys: list[str]  # searched hyperparameters, in the space's order
    space: dict = field(default_factory=dict)  # name -> ktune.search_spaces Spec
    notes: list[str] = field(default_factory=list)
    # interrupted.json while it holds (not finished, nothing trained since)
    interrupted: dict | None = None
    # driver.json with its "state" (ktune.driver.driver_state) while not finished
    driver: dict | None = None
    # where the experiment lives as the report names it: a URI's (redacted) for a
    # downloaded copy (``ktune report URI``); None: ``path``
    shown: str | None = None

    @property
    def where(self) -> str:
        return self.shown or str(self.path)

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.path.name)

    @property
    def family(self) -> str:
        return str(self.spec.get("family", "?"))

    @property
    def metric(self) -> str:
        return str(self.spec.get("metric", "val_accuracy"))

    @property
    def mode(self) -> str:
        return str(self.spec.get("mode", "max"))

    @property
    def epochs(self) -> int:
        return int((self.spec.get("training") or {}).get("epochs", 0))

    @property
    def num_samples(self) -> int:
        return int(self.spec.get("num_samples") or len(self.trials))

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.spec.get("class_names") or []]

    @property
    def finished(self) -> bool:
        return self.best_info is not None

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)

    def best_trial(self) -> TrialRecord | None:
        """best.json's trial when the search has finished, else the best epoch so far."""
        if self.best_info:
            for t in self.trials:
                if t.trial == self.best_info.get("trial"):
                    return t
        scored = []
        for t in self.trials:
            b = t.best(self.metric, self.mode)
            if b is not None:
                scored.append((b[1], t))
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda p: p[0])[1]

    def wall_time(self) -> tuple[float | None, str]:
        """Seconds and how they were measured: the driver's (best.json; "resume" when a
        resume finished the search: its own seconds) or the trials' span."""
        if self.best_info and isinstance(self.best_info.get("wall_time_s"), (int, float)):
            how = "resume" if self.best_info.get("wall_time_of") == "resume" else "driver"
            return float(self.best_info["wall_time_s"]), how
        starts = [t.started for t in self.trials if t.history]
        ends = [float(t.history[-1].get("timestamp", 0)) for t in self.trials if t.history]
        if not starts:
            return None, "trials"
        return max(0.0, max(ends) - min(starts)), "trials"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _number(key: str, text: str) -> Any:
    if key in _TEXT_FIELDS:
        return text
    if text in ("True", "False"):
        return text == "True"
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def read_history(trial_dir: str | Path) -> list[dict]:
    """A trial's epochs from ``progress.csv`` and ``result.json`` together, by epoch.

    Either file may lack rows (Ray rewrites ``result.json`` when it restores a trial) or
    end in a half-written line (the trial is running); such lines are skipped. An epoch
    reported twice (a retry) keeps its latest row.
    """
    d = Path(trial_dir)
    rows: list[dict] = []
    csv_path = d / "progress.csv"
    if csv_path.is_file():
        try:
            with csv_path.open(newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = None
                for line in reader:
                    if not line:
                        continue
                    if "epoch" in line and "training_iteration" in line:
                        header = line  # Ray may start a new header after a restore
                        continue
                    if header is None or len(line) != len(header):
                        continue
                    rows.append({k: _number(k, v) for k, v in zip(header, line) if v != ""})
        except (OSError, csv.Error, UnicodeDecodeError):
            pass
    json_path = d / "result.json"
    if json_path.is_file():
        try:
            text = json_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        for json_line in text.splitlines():
            try:
                row = json.loads(json_line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    by_epoch: dict[int, dict] = {}
    for row in rows:  # CSV rows first: a JSON row of the same report wins (proper types)
        epoch = row.get("epoch", row.get("training_iteration"))
        if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
            continue
        old = by_epoch.get(int(epoch))
        stamp = float(row.get("timestamp", 0) or 0)
        old_stamp = -math.inf if old is None else float(old.get("timestamp", 0) or 0)
        if stamp > old_stamp:
            by_epoch[int(epoch)] = dict(row)
        elif old is not None and stamp == old_stamp:
            by_epoch[int(epoch)] = {**old, **row}
    # A driver killed outright leaves result.json behind the checkpoints: each complete
    # checkpoint carries the metrics it was reported with (as a resume reads them).
    for folder in sorted(d.glob("checkpoint_*")):
        row = _checkpoint_metrics(folder)
        epoch = row.get("epoch")
        if isinstance(epoch, int) and epoch > max(by_epoch, default=0):
            by_epoch[epoch] = row
    return [by_epoch[k] for k in sorted(by_epoch)]


def _checkpoint_metrics(folder: Path) -> dict:
    """The metrics a complete checkpoint folder was reported with, or {}."""
    from ktune.checkpoint_manifest import is_complete, reported_metrics

    return reported_metrics(folder) if is_complete(str(folder)) else {}


def _results_rows(exp_dir: Path) -> dict[str, dict]:
    path = exp_dir / RESULTS_FILE
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return {row["trial"]: row for row in csv.DictReader(f) if row.get("trial")}
    except (OSError, csv.Error, KeyError, UnicodeDecodeError):
        return {}


def _error_line(trial_dir: Path) -> str:
    try:
        text = (trial_dir / "error.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return last_line(text)


def _search_space(exp_dir: Path, family: str) -> dict:
    """The experiment's resolved search space (name -> Spec), or {} when unreadable."""
    import yaml

    from ktune.config import space_of

    try:
        raw = yaml.safe_load((exp_dir / EXPERIMENT_FILE).read_text(encoding="utf-8")) or {}
        space_raw = (raw.get("search") or {}).get("space")
        return dict(space_of(family, raw.get("model")).resolve(space_raw))
    except Exception:  # noqa: BLE001 - a report still works without it (keys from the trials)
        return {}


def _trial_status(
    name: str,
    history: list[dict],
    epochs: int,
    results: Mapping[str, dict],
    ray_status: Mapping[str, str],
    trial_dir: Path,
) -> str:
    last = int(history[-1].get("epoch", 0)) if history else 0
    if name in results:  # the finished search's own verdict
        return status_label(results[name].get("status", "TERMINATED"), last, epochs)
    if results:  # finished without it: cut off by a crash, replaced when it was resumed
        return "INTERRUPTED"
    status = ray_status.get(name)
    if status:
        if status in ("RUNNING", "PENDING", "PAUSED") and last >= epochs:
            return "DONE"  # the snapshot lags behind the trial's last epoch
        return status_label(status, last, epochs)
    if last >= epochs:
        return "DONE"
    if (trial_dir / "error.txt").is_file():
        return "ERROR"
    return "RUNNING" if history else "PENDING"


def load_experiment(exp_dir: str | Path) -> ExperimentRecord:
    """Reads an experiment directory: finished, running, or stopped by a crash.

    Raises :class:`~ktune.errors.ExperimentError` (one line naming the directory) when
    it is not a ktune experiment.
    """
    d = Path(exp_dir)
    if not d.is_dir():
        raise missing_dir(d)
    if not (d / SPEC_FILE).is_file():
        raise ExperimentError(f"{d}: not a ktune experiment directory (no {SPEC_FILE})")
    try:
        spec = _read_json(d / SPEC_FILE)
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ExperimentError(f"{d}: unreadable {SPEC_FILE} ({e})") from None
    d = d.resolve()
    ran_in = spec.get("experiment_path")  # a folder moved or copied since: its own paths
    spec = relocated(spec, ran_in, d)
    notes: list[str] = []
    best_info = None
    if (d / BEST_FILE).is_file():
        try:
            best_info = relocated(_read_json(d / BEST_FILE), ran_in, d)
        except (OSError, ValueError):
            notes.append(f"{BEST_FILE} could not be read; the report treats the search as running.")
    epochs = int((spec.get("training") or {}).get("epochs", 0))
    results, ray_status = _results_rows(d), ray_statuses(d)
    trials = []
    for trial_dir in sorted(p for p in d.glob("trial_*") if p.is_dir()):
        try:
            config = _read_json(trial_dir / "params.json")
        except (OSError, ValueError):
            config = {}
        history = read_history(trial_dir)
        if not config and history and isinstance(history[-1].get("config"), dict):
            config = history[-1]["config"]
        if not config:  # Ray wrote neither yet (a trial cut off by a crash): its checkpoint's
            config = _checkpoint_config(trial_dir)
        name = trial_dir.name
        status = _trial_status(name, history, epochs, results, ray_status, trial_dir)
        error = (results.get(name) or {}).get("error") or ""
        if status == "ERROR" and not error:
            error = _error_line(trial_dir)
        trials.append(TrialRecord(name, trial_dir, dict(config), history, status, error))
    trials.sort(key=lambda t: (t.started, t.trial))
    driver = None if best_info else read_driver(d)
    if driver is not None:
        driver["state"] = driver_state(driver)
    interrupted = None if best_info else _interrupted(d, trials, driver)
    for t in trials:
        if t.status in ("RUNNING", "PENDING", "PAUSED") and (
            (interrupted and t.trial in interrupted["cut_off"])
            or (driver and driver["state"] in ("gone", "ended"))
        ):
            t.status = "INTERRUPTED"
    space = _search_space(d, str(spec.get("family", "transformer")))
    keys = _searched_keys(space, d, trials)
    return ExperimentRecord(d, spec, best_info, trials, keys, space, notes, interrupted, driver)


def _checkpoint_config(trial_dir: Path) -> dict:
    """The config in the trial's newest checkpoint's ``ktune_trial.json``, or {}."""
    for checkpoint in sorted(trial_dir.glob("checkpoint_*"), reverse=True):
        try:
            config = _read_json(checkpoint / TRIAL_FILE)["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(config, dict):
            return config
    return {}


def _interrupted(exp_dir: Path, trials: Sequence[TrialRecord], driver: dict | None) -> dict | None:
    """``interrupted.json`` unless a resume started after it (its ``driver.json``) or a
    trial reported after it (Ray's timestamps are whole seconds, hence the second's slack)."""
    try:
        info = _read_json(exp_dir / INTERRUPTED_FILE)
        when = float(info["time"])
        info["cut_off"] = [str(x) for x in info.get("cut_off") or []]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    latest = max(
        (float(r.get("timestamp", 0)) for t in trials for r in t.history[-1:]), default=0.0
    )
    if driver is not None and float(driver["time"]) > when:
        return None
    return info if latest <= when + 1 else None


def _searched_keys(space: Mapping, exp_dir: Path, trials: Sequence[TrialRecord]) -> list[str]:
    if space:
        from ktune.search_spaces.base import searched_keys

        return list(searched_keys(space))
    path = exp_dir / RESULTS_FILE
    if path.is_file():  # trial, status, <keys>, epochs, <metric>, error
        try:
            with path.open(encoding="utf-8") as f:
                header = next(csv.reader(f))
            return header[2 : header.index("epochs")]
        except (OSError, StopIteration, ValueError, csv.Error):
            pass
    names = [k for k in (trials[0].config if trials else {}) if not k.startswith("heads_for_")]
    return [k for k in names if len({repr(t.config.get(k)) for t in trials}) > 1]
