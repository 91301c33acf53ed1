"""``ktune report``: a search as one HTML page with plots, or several searches side by side.

What it reads, all in the experiment directory ``<storage>/<name>``:
- ``ktune.json`` (family, metric, epochs, class names) -- the one file it cannot do without;
- ``experiment.yaml`` for the search space (which keys were searched, log or linear);
- every ``trial_<id>/``: ``params.json`` (the trial's config, ``heads`` with its real value)
  and its epochs from ``progress.csv`` and ``result.json`` together: Ray rewrites
  ``result.json`` when it restores a trial and may leave epochs out of it, and a file that
  is being written may end in half a line;
- ``results.csv`` and ``best.json`` once the search has finished; while it runs (or after
  its driver died), trial statuses come from Ray's newest ``experiment_state-*.json``.

What it writes: ``report.html`` with every image embedded (one file to send around), the
same images as PNGs beside it, and a summary table on the terminal. The Optuna views are
drawn from a study of the finished trials rebuilt from the trial folders, so that
conditional names such as ``heads_for_embed_dim_64`` appear as the one ``heads`` axis and
each trial's value is its best epoch, as in ``results.csv`` and ``best.json``.

Nothing here imports TensorFlow or Ray; matplotlib and Optuna load when a report is drawn.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from ktune.errors import ExperimentError
from ktune.experiment_dir import BEST_FILE, EXPERIMENT_FILE, JOURNAL_FILE, RESULTS_FILE, SPEC_FILE
from ktune.storage import write_atomic

__all__ = [
    "ExperimentRecord",
    "TrialRecord",
    "load_experiment",
    "write_report",
    "compare_experiments",
    "read_history",
    "status_label",
    "format_duration",
    "FINISHED",
]

FINISHED = ("DONE", "STOPPED", "ERROR")
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
_DPI = 110


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


# -- reading an experiment ------------------------------------------------------------------


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
        out = []
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
        scored = [(t.best(self.metric, self.mode), t) for t in self.trials]
        scored = [(b[1], t) for b, t in scored if b is not None]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda p: p[0])[1]

    def wall_time(self) -> tuple[float | None, str]:
        """Seconds and how they were measured: the driver's (best.json) or the trials' span."""
        if self.best_info and isinstance(self.best_info.get("wall_time_s"), (int, float)):
            return float(self.best_info["wall_time_s"]), "driver"
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
        for line in text.splitlines():
            try:
                row = json.loads(line)
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
        elif stamp == old_stamp:
            by_epoch[int(epoch)] = {**old, **row}
    return [by_epoch[k] for k in sorted(by_epoch)]


def _ray_statuses(exp_dir: Path) -> dict[str, str]:
    """trial_<id> -> Ray's status in the newest experiment snapshot (empty if unreadable)."""
    states = sorted(exp_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(states):
        try:
            data = _read_json(path)
            out = {}
            for entry in data.get("trial_data", []):
                meta = entry[0] if isinstance(entry, (list, tuple)) else entry
                meta = json.loads(meta) if isinstance(meta, str) else meta
                out[f"trial_{meta['trial_id']}"] = str(meta.get("status", ""))
            return out
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
    return {}


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
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _search_space(exp_dir: Path, family: str) -> dict:
    """The experiment's resolved search space (name -> Spec), or {} when unreadable."""
    import yaml

    from ktune.search_spaces import get_space

    try:
        raw = yaml.safe_load((exp_dir / EXPERIMENT_FILE).read_text(encoding="utf-8")) or {}
        space_raw = (raw.get("search") or {}).get("space")
        return dict(get_space(family).resolve(space_raw))
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
        raise ExperimentError(f"{d}: no such experiment directory")
    if not (d / SPEC_FILE).is_file():
        raise ExperimentError(f"{d}: not a ktune experiment directory (no {SPEC_FILE})")
    try:
        spec = _read_json(d / SPEC_FILE)
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ExperimentError(f"{d}: unreadable {SPEC_FILE} ({e})") from None
    d = d.resolve()
    notes: list[str] = []
    best_info = None
    if (d / BEST_FILE).is_file():
        try:
            best_info = _read_json(d / BEST_FILE)
        except (OSError, ValueError):
            notes.append(f"{BEST_FILE} could not be read; the report treats the search as running.")
    epochs = int((spec.get("training") or {}).get("epochs", 0))
    results, ray_status = _results_rows(d), _ray_statuses(d)
    trials = []
    for trial_dir in sorted(p for p in d.glob("trial_*") if p.is_dir()):
        try:
            config = _read_json(trial_dir / "params.json")
        except (OSError, ValueError):
            config = {}
        history = read_history(trial_dir)
        if not config and history and isinstance(history[-1].get("config"), dict):
            config = history[-1]["config"]
        name = trial_dir.name
        status = _trial_status(name, history, epochs, results, ray_status, trial_dir)
        error = (results.get(name) or {}).get("error") or ""
        if status == "ERROR" and not error:
            error = _error_line(trial_dir)
        trials.append(TrialRecord(name, trial_dir, dict(config), history, status, error))
    trials.sort(key=lambda t: (t.started, t.trial))
    space = _search_space(d, str(spec.get("family", "transformer")))
    keys = _searched_keys(space, d, trials)
    return ExperimentRecord(d, spec, best_info, trials, keys, space, notes)


def _searched_keys(space: Mapping, exp_dir: Path, trials: Sequence[TrialRecord]) -> list[str]:
    if space:
        from ktune.search_spaces.base import searched_keys

        return list(searched_keys(space))
    path = exp_dir / RESULTS_FILE
    if path.is_file():  # trial, status, <keys>, epochs, <metric>, error
        try:
            header = next(csv.reader(path.open(encoding="utf-8")))
            return header[2 : header.index("epochs")]
        except (OSError, StopIteration, ValueError, csv.Error):
            pass
    names = [k for k in (trials[0].config if trials else {}) if not k.startswith("heads_for_")]
    return [k for k in names if len({repr(t.config.get(k)) for t in trials}) > 1]


# -- the Optuna study of the report ---------------------------------------------------------


def _distribution(spec: Any, observed: Sequence[Any]):
    """The Optuna distribution of a searched key: from its spec, else from what trials drew."""
    import optuna.distributions as od

    from ktune.search_spaces.base import Choice, Range

    if isinstance(spec, Range):
        if spec.integer:
            return od.IntDistribution(int(spec.low), int(spec.high), log=spec.log)
        return od.FloatDistribution(float(spec.low), float(spec.high), log=spec.log)
    choices = list(spec.values) if isinstance(spec, Choice) else []
    for v in observed:
        if v not in choices:
            choices.append(v)
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
        choices.sort()
    return od.CategoricalDistribution(choices)


def build_study(record: ExperimentRecord):
    """An in-memory Optuna study of the finished trials: real ``heads``, best-epoch values.

    A trial that reported no epoch (or lacks a searched key) is left out; failed trials
    are FAIL, the others COMPLETE (early-stopped ones with their best epoch, as Ray's
    results do). Distributions come from the experiment's search space (log ranges stay
    log); a value outside it (the file was edited) falls back to what the trials drew.
    """
    usable = [
        t for t in record.trials if t.status in FINISHED and all(k in t.config for k in record.keys)
    ]
    try:
        return _study_of(
            record,
            usable,
            {
                k: _distribution(record.space.get(k), [t.config[k] for t in usable])
                for k in record.keys
            },
        )
    except ValueError:
        return _study_of(
            record,
            usable,
            {k: _distribution(None, [t.config[k] for t in usable]) for k in record.keys},
        )


def _study_of(record: ExperimentRecord, usable: Sequence[TrialRecord], dists: dict):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=record.name, direction="maximize" if record.mode == "max" else "minimize"
    )
    for t in usable:
        best = t.best(record.metric, record.mode)
        ok = t.status != "ERROR" and best is not None
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
                value=best[1] if ok else None,
                params={k: t.config[k] for k in record.keys},
                distributions=dists,
                intermediate_values=dict(t.curve(record.metric)),
                user_attrs={"ray_trial": t.trial},
            )
        )
    return study


def param_importances(study, keys: Sequence[str]) -> tuple[dict[str, float], str]:
    """Optuna's fANOVA importances over the complete trials, or ({}, why not)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = [k for k in keys if len({repr(t.params.get(k)) for t in complete}) > 1]
    if len(complete) < 2:
        return {}, (
            f"Hyperparameter importance needs at least 2 finished trials; "
            f"this search has {len(complete)} so far."
        )
    if not varied:
        return {}, "Hyperparameter importance needs trials that differ in their hyperparameters."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(
                study,
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                params=varied,
            ), ""
    except Exception as e:  # noqa: BLE001 - the rest of the report is still worth writing
        return {}, f"Hyperparameter importance could not be computed: {_one_line(e)}"


def read_optuna_study(record: ExperimentRecord) -> str:
    """One line about the persisted study (``optuna.journal``), for the report."""
    path = record.path / JOURNAL_FILE
    if not path.is_file():
        return f"no {JOURNAL_FILE} in this experiment"
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(path))
        )
        names = [s.study_name for s in storage.get_all_studies()]
        name = record.name if record.name in names else (names[0] if names else record.name)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
    except Exception as e:  # noqa: BLE001
        return f"{JOURNAL_FILE} could not be read: {_one_line(e)}"
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return f"study '{name}' in {JOURNAL_FILE}: {len(trials)} trials ({parts or 'none yet'})"


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__


# -- plots ----------------------------------------------------------------------------------

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
    "confusion": (
        "confusion-matrix",
        "Best trial on the test split",
        "Counts of test texts by true class (rows) and predicted class (columns).",
    ),
}


def _pyplot():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # files only: no display needed (or wanted) for a report
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _optuna_plot(name: str, study, record: ExperimentRecord):
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


def _slice_plot(study, record: ExperimentRecord):
    """The best metric of each finished trial against each searched hyperparameter."""
    import numpy as np
    import optuna
    from matplotlib.lines import Line2D

    plt = _pyplot()
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
                ax.set_xticks(choices, [_fmt(c) for c in choices])
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


def _importance_plot(importances: Mapping[str, float], record: ExperimentRecord):
    plt = _pyplot()
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


def _curves_plot(record: ExperimentRecord):
    """The searched metric per epoch of every trial (left) and of the better half (right),
    where curves close together can be told apart; each line ends in its trial's id."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    metric, best = record.metric, record.best_trial()
    cmap = plt.get_cmap("viridis")
    n = max(1, len(record.trials) - 1)
    colors = {
        t.trial: "#d62728" if t.status == "ERROR" else cmap(0.85 * i / n)
        for i, t in enumerate(record.trials)
    }
    ranked = sorted(
        (t for t in record.trials if t.best(metric, record.mode)),
        key=lambda t: t.best(metric, record.mode)[1],
        reverse=record.mode == "max",
    )
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
            elif t.status in ("RUNNING", "PENDING", "PAUSED"):
                ax.plot(
                    xs[-1],
                    ys[-1],
                    marker=">",
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
    axes[0].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(f"{record.name}: {metric} per epoch", fontsize=11)
    fig.tight_layout()
    return fig


def _confusion_plot(matrix: Sequence[Sequence[int]], names: Sequence[str], accuracy):
    import numpy as np

    plt = _pyplot()
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


def draw_plots(record: ExperimentRecord) -> tuple[dict[str, bytes], dict[str, float], list[str]]:
    """PNG bytes of every plot the experiment has data for, the importances, and notes."""
    notes: list[str] = []
    pngs: dict[str, bytes] = {}
    study = build_study(record)
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

    def attempt(name: str, make) -> None:
        try:
            # Optuna's views switch pyplot to the ggplot style; keep it to this report.
            with _pyplot().style.context("ggplot"):
                pngs[name] = _png(make())
        except Exception as e:  # noqa: BLE001 - one failed plot must not cost the report
            notes.append(
                f"{PLOTS[name][1].format(metric=record.metric)}: "
                f"could not be drawn ({_one_line(e)})."
            )

    if not complete:
        notes.append(
            "No trial has finished yet: the optimization history, hyperparameter "
            "plots and importance appear once trials have."
        )
    elif not record.keys:
        notes.append(
            "No searched hyperparameters were found, so there is nothing to plot against them."
        )
    else:
        attempt("history", lambda: _optuna_plot("history", study, record))
        attempt("slice", lambda: _slice_plot(study, record))
        if len(complete) >= 2:
            attempt("parallel", lambda: _optuna_plot("parallel", study, record))
        else:
            notes.append("Parallel coordinates need at least 2 finished trials.")
    importances, why = param_importances(study, record.keys) if complete else ({}, "")
    if importances:
        attempt("importance", lambda: _importance_plot(importances, record))
    elif why:
        notes.append(why)
    if any(t.history for t in record.trials):
        attempt("curves", lambda: _curves_plot(record))
    else:
        notes.append("No trial has reported an epoch yet: no learning curves.")
    matrix = (record.best_info or {}).get("test_confusion_matrix")
    if matrix:
        names = record.class_names or [str(i) for i in range(len(matrix))]
        attempt(
            "confusion",
            lambda: _confusion_plot(matrix, names, (record.best_info or {}).get("test_accuracy")),
        )
    elif record.finished:
        notes.append(
            f"{BEST_FILE} has no test_confusion_matrix (written by an older ktune): "
            "no confusion matrix."
        )
    else:
        notes.append(
            "The test accuracy and confusion matrix of the best trial appear when "
            "the search has finished (best.json)."
        )
    return pngs, importances, notes


# -- text -----------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _metric_text(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not math.isnan(v) else "-"


def table_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]
    )


def trial_table(record: ExperimentRecord) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-trial table (terminal and HTML)."""
    best = record.best_trial()
    header = ["trial", "status", *record.keys, "epochs", f"best {record.metric}", "at epoch"]
    rows = []
    for t in record.trials:
        b = t.best(record.metric, record.mode)
        rows.append(
            [
                t.trial + (" *" if best is not None and t is best else ""),
                t.status,
                *(_fmt(t.config.get(k)) for k in record.keys),
                f"{t.epochs}/{record.epochs}",
                _metric_text(b[1] if b else None),
                str(b[0]) if b else "-",
            ]
        )
    return header, rows


def _status_line(record: ExperimentRecord) -> str:
    done = sum(record.count(s) for s in FINISHED)
    state = "finished" if record.finished else "running (or interrupted: no best.json yet)"
    parts = [f"{done}/{record.num_samples} trials finished"]
    parts.append(f"{record.count('DONE')} ran all {record.epochs} epochs")
    parts.append(f"{record.count('STOPPED')} stopped early by ASHA")
    if record.count("ERROR"):
        parts.append(f"{record.count('ERROR')} failed")
    active = sum(record.count(s) for s in ("RUNNING", "PENDING", "PAUSED"))
    if active:
        parts.append(f"{active} running or pending")
    return f"{state}: " + ", ".join(parts)


def _best_line(record: ExperimentRecord) -> str:
    best = record.best_trial()
    if best is None:
        return "no trial has reported an epoch yet"
    b = best.best(record.metric, record.mode)
    line = f"best trial {best.trial}: {record.metric}={_metric_text(b[1] if b else None)}"
    line += f" at epoch {b[0]}" if b else ""
    if record.best_info and record.best_info.get("test_accuracy") is not None:
        line += f", test_accuracy={_metric_text(record.best_info['test_accuracy'])}"
    elif not record.finished:
        line += " (so far)"
    return line


def summary_text(record: ExperimentRecord, importances: Mapping[str, float]) -> str:
    wall, how = record.wall_time()
    lines = [
        f"experiment {record.name} ({record.family}) at {record.path}",
        _status_line(record),
        _best_line(record),
    ]
    if wall is not None:
        lines.append(
            f"wall time {format_duration(wall)}"
            + (" (trial results so far)" if how == "trials" else "")
        )
    if importances:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    header, rows = trial_table(record)
    lines += ["", table_text(header, rows)]
    return "\n".join(lines)


# -- HTML -----------------------------------------------------------------------------------

_CSS = """
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
.status-STOPPED{color:#777} .status-RUNNING,.status-PENDING{color:#06c}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _kv_table(pairs: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def _html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    best_row: int = -1,
    status_col: int = -1,
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for j, c in enumerate(r):
            text = str(c)
            cls = ' class="num"' if _looks_numeric(text) else ""
            if j == status_col:
                cls = f' class="status-{_e(text)}"'
            cells.append(f"<td{cls}>{_e(text)}</td>")
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
        (f"<h2>{_e(title)}</h2>" if heading else "")
        + f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)} (also <code>{_e(file_name)}</code> beside this report)"
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
            _metric_text(b[1] if b else None) + (f" at epoch {b[0]}" if b else ""),
        )
    )
    metrics = info.get("metrics") or {}
    for k in ("val_accuracy", "val_loss", "accuracy", "loss"):
        if k in metrics and k != record.metric:
            pairs.append((k, _metric_text(metrics[k])))
    if info:
        pairs.append(("test accuracy", _metric_text(info.get("test_accuracy"))))
        pairs.append(("test loss", _metric_text(info.get("test_loss"))))
        pairs.append(("checkpoint", info.get("checkpoint", "-")))
        if info.get("export"):
            pairs.append(("export", info["export"]))
    else:
        pairs.append(("test accuracy", "measured when the search finishes"))
    parts = [
        "<div class='row'>",
        f"<div>{_kv_table(pairs)}</div>",
        "<div><b>its configuration</b>"
        + _kv_table([(k, _fmt(v)) for k, v in shown.items()])
        + "</div>",
        "</div>",
    ]
    matrix = info.get("test_confusion_matrix")
    if matrix:
        names = record.class_names or [str(i) for i in range(len(matrix))]
        rows = [
            [names[i], *row, sum(row), _metric_text(row[i] / sum(row) if sum(row) else None)]
            for i, row in enumerate(matrix)
        ]
        parts.append("<h3>Confusion matrix on the test split</h3><div class='row'><div>")
        parts.append("<p>rows: true class; columns: predicted class</p>")
        parts.append(_html_table(["true \\ predicted", *names, "texts", "recall"], rows))
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
        f"<title>ktune report: {_e(record.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>ktune report: {_e(record.name)}</h1>",
        f"<p class='sub'>{_e(record.path)} &middot; generated {_e(now)}</p>",
        "<h2>Summary</h2>",
        _kv_table(
            [
                ("family", record.family),
                ("status", _status_line(record)),
                ("searched metric", f"{record.metric} ({record.mode})"),
                ("best trial", _best_line(record)),
                (
                    "wall time",
                    "-"
                    if wall is None
                    else format_duration(wall)
                    + (" (trial results so far)" if how == "trials" else ""),
                ),
                ("epochs per trial", record.epochs),
                ("searched hyperparameters", ", ".join(record.keys) or "-"),
                ("Optuna study", read_optuna_study(record)),
            ]
        ),
    ]
    parts += [f"<p class='note'>{_e(n)}</p>" for n in notes]
    parts.append("<h2>Best trial</h2>")
    parts += _best_trial_html(record, pngs, file_names)
    header, rows = trial_table(record)
    best_row = next((i for i, t in enumerate(record.trials) if t is best), -1)
    parts.append(f"<h2>All trials ({len(record.trials)})</h2>")
    parts.append(_html_table(header, rows, best_row=best_row, status_col=1))
    parts.append(
        "<p class='sub'>DONE: ran all epochs; STOPPED: stopped early by ASHA; * the best trial.</p>"
    )
    errors = [(t.trial, t.error) for t in record.trials if t.status == "ERROR" and t.error]
    if errors:
        parts.append("<p>Errors:</p>" + _kv_table(errors))
    for name in ("curves", "history", "slice", "parallel", "importance"):
        if name not in pngs:
            continue
        parts.append(_figure(name, pngs[name], record.metric, file_names[name]))
        if name == "importance":
            parts.append(
                _html_table(
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
        f"<code>tensorboard --logdir {_e(record.path)}</code><br>The Optuna study, live: "
        f"<code>pip install optuna-dashboard &amp;&amp; optuna-dashboard "
        f"{_e(record.path / JOURNAL_FILE)}</code></p></body></html>"
    )
    return "\n".join(parts)


def write_report(record: ExperimentRecord, out: str | Path, *, quiet: bool = False) -> Path:
    """Writes ``out`` (HTML, images embedded) and its PNGs beside it; prints a summary.

    The PNGs are named ``<out stem>-<plot>.png``; an image this report has no data for
    (no confusion matrix while the search runs) is removed if an earlier report left one.
    """
    out = Path(out)
    if out.is_dir():
        raise ExperimentError(f"{out}: is a directory; --out names the HTML file to write")
    if not out.parent.is_dir():
        raise ExperimentError(f"{out.parent}: no such directory for --out")
    pngs, importances, notes = draw_plots(record)
    notes = record.notes + notes
    file_names = {name: f"{out.stem}-{suffix}.png" for name, (suffix, _, _) in PLOTS.items()}
    for name, file_name in file_names.items():
        path = out.parent / file_name
        if name in pngs:
            write_atomic(path, pngs[name])
        elif path.is_file():
            path.unlink()
    html_text = render_html(record, pngs, importances, notes, file_names)
    write_atomic(out, html_text.encode("utf-8"))
    if not quiet:
        print(summary_text(record, importances))
        for n in notes:
            print(f"note: {n}")
        print(f"\nreport: {out}  ({len(pngs)} images beside it)")
    return out


# -- comparing experiments ------------------------------------------------------------------


def _compact_config(record: ExperimentRecord, config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(config.get(k))}" for k in record.keys if k in config)


def compare_labels(records: Sequence[ExperimentRecord]) -> list[str]:
    """Each experiment's folder name, with its parent's where two folders share a name."""
    names = [r.path.name for r in records]
    return [
        f"{r.path.parent.name}/{r.path.name}" if names.count(r.path.name) > 1 else r.path.name
        for r in records
    ]


def compare_rows(records: Sequence[ExperimentRecord]) -> tuple[list[str], list[list[str]]]:
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
        val_acc = (info.get("metrics") or {}).get("val_accuracy")
        if val_acc is None and best is not None:
            acc = best.best("val_accuracy", "max")
            val_acc = acc[1] if acc else None
        wall, how = r.wall_time()
        done = sum(r.count(s) for s in FINISHED)
        rows.append(
            [
                label,
                r.family,
                "finished" if r.finished else "running",
                f"{done}/{r.num_samples}",
                r.metric,
                _metric_text(b[1] if b else None),
                _metric_text(val_acc),
                _metric_text(info.get("test_accuracy")),
                "-"
                if wall is None
                else format_duration(wall) + ("" if how == "driver" else " so far"),
                _compact_config(r, (info.get("config") or (best.config if best else {}))),
            ]
        )
    return header, rows


def _compare_plot(records: Sequence[ExperimentRecord]):
    import numpy as np

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
    labels = compare_labels(records)
    vals, tests = [], []
    for r in records:
        info = r.best_info or {}
        best = r.best_trial()
        v = (info.get("metrics") or {}).get("val_accuracy")
        if v is None and best is not None:
            acc = best.best("val_accuracy", "max")
            v = acc[1] if acc else None
        vals.append(np.nan if v is None else v)
        t = info.get("test_accuracy")
        tests.append(np.nan if t is None else t)
    x = np.arange(len(records))
    b1 = ax1.bar(x - 0.2, vals, 0.4, label="best trial: val_accuracy", color="#4c72b0")
    b2 = ax1.bar(x + 0.2, tests, 0.4, label="best trial: test_accuracy", color="#dd8452")
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


def compare_experiments(
    records: Sequence[ExperimentRecord], out: str | Path, *, quiet: bool = False
) -> Path:
    """Writes one HTML page comparing ``records`` (image embedded); prints the table."""
    out = Path(out)
    if out.is_dir():
        raise ExperimentError(f"{out}: is a directory; --out names the HTML file to write")
    if not out.parent.is_dir():
        raise ExperimentError(f"{out.parent}: no such directory for --out")
    header, rows = compare_rows(records)
    notes = []
    try:
        with _pyplot().style.context("ggplot"):
            png = _png(_compare_plot(records))
    except Exception as e:  # noqa: BLE001
        png, notes = None, [f"The comparison chart could not be drawn ({_one_line(e)})."]
    now = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>ktune: {len(records)} experiments compared</title><style>{_CSS}</style>"
        "</head><body>",
        f"<h1>ktune: {len(records)} experiments compared</h1>",
        f"<p class='sub'>generated {_e(now)}</p>",
        _html_table(header, rows, status_col=2),
        "<p>best: the best trial's searched metric; val_accuracy and test_accuracy: the "
        "same trial's (test accuracy once its search has finished); wall time: the driver's "
        "run, or the span of the trial results while a search runs.</p>",
    ]
    parts += [f"<p class='note'>{_e(n)}</p>" for n in notes]
    if png:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<h2>Side by side</h2><img alt="comparison" src="data:image/png;base64,{data}">'
        )
    parts.append("<h2>Experiments</h2>")
    parts.append(_kv_table(list(zip(compare_labels(records), (str(r.path) for r in records)))))
    parts.append("</body></html>")
    write_atomic(out, "\n".join(parts).encode("utf-8"))
    if not quiet:
        print(table_text(header, rows))
        for n in notes:
            print(f"note: {n}")
        print(f"\ncomparison: {out}")
    return out
