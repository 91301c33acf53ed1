"""The live progress table: its format, and what a real small search prints with it."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import yaml

from ktune.config import parse_config
from ktune.progress import MAX_ROWS, TOP_FINISHED, SearchProgress, TrialRow, format_progress
from ktune.tables import format_duration, status_label

from conftest import tiny_experiment

ANSI = re.compile(r"\x1b\[")
_SEARCH: dict = {}


def small_search(tmp_path_factory) -> tuple[Path, str]:
    """A real small search (4 trials, 2 epochs, ASHA), run once per session and shared
    with test_report.py: (its experiment directory, what the driver printed)."""
    if "dir" not in _SEARCH:
        from ktune.experiment import run_experiment

        tmp = tmp_path_factory.mktemp("search")
        raw = tiny_experiment(tmp, export={"enabled": False})
        raw["search"]["num_samples"] = 4
        exp_file = tmp / "tiny.yaml"
        exp_file.write_text(yaml.safe_dump(raw))
        cfg = parse_config(raw, source_path=str(exp_file))
        out = io.StringIO()
        saved = os.environ.get("KTUNE_PROGRESS_INTERVAL")
        os.environ["KTUNE_PROGRESS_INTERVAL"] = "0"  # a table on every change
        try:
            with contextlib.redirect_stdout(out):
                run_experiment(cfg)
        finally:
            if saved is None:
                os.environ.pop("KTUNE_PROGRESS_INTERVAL", None)
            else:
                os.environ["KTUNE_PROGRESS_INTERVAL"] = saved
        _SEARCH.update(dir=cfg.experiment_dir, out=out.getvalue())
    return _SEARCH["dir"], _SEARCH["out"]


def rows_example() -> list[TrialRow]:
    cfg = {"embed_dim": 16, "heads": 2, "learning_rate": 0.0123}
    return [
        TrialRow("trial_aaaa", "DONE", 2, cfg, 0.81, 0.83),
        TrialRow("trial_bbbb", "STOPPED", 1, {**cfg, "embed_dim": 8}, 0.50, 0.50),
        TrialRow("trial_cccc", "RUNNING", 1, {**cfg, "heads": 1}, 0.70, 0.70),
        TrialRow("trial_dddd", "PENDING", None, cfg, None, None),
        TrialRow("trial_eeee", "ERROR", 1, cfg, 0.4, 0.4),
    ]


def test_the_table_is_plain_aligned_text():
    text = format_progress(
        rows_example(),
        name="tiny",
        metric="val_accuracy",
        mode="max",
        keys=["embed_dim", "heads", "learning_rate"],
        epochs=2,
        total=6,
        elapsed_s=75,
    )
    assert "\r" not in text and not ANSI.search(text) and "\t" not in text
    lines = text.splitlines()
    assert lines[0] == (
        "[tiny] 1m15s  trials 3/6 finished (1 stopped early, 1 failed), 1 running, "
        "1 pending  best val_accuracy 0.8300 (trial_aaaa)"
    )
    assert lines[1].split() == [
        "trial",
        "status",
        "epoch",
        "embed_dim",
        "heads",
        "learning_rate",
        "val_accuracy",
        "best",
    ]
    assert lines[2].split() == [
        "trial_aaaa",
        "DONE",
        "2/2",
        "16",
        "2",
        "0.0123",
        "0.8100",
        "0.8300",
        "*",
    ]
    assert lines[3].split()[:3] == ["trial_bbbb", "STOPPED", "1/2"]
    assert lines[5].split() == ["trial_dddd", "PENDING", "0/2", "16", "2", "0.0123", "-", "-"]
    # columns line up: every value starts where its header does
    starts = [m.start() for m in re.finditer(r"\S+", lines[1])]
    for line in lines[2:]:
        assert [m.start() for m in re.finditer(r"\S+", line)][: len(starts)] == starts


def test_min_mode_marks_the_lowest_loss():
    rows = [
        TrialRow("trial_a", "DONE", 2, {}, 0.4, 0.35),
        TrialRow("trial_b", "DONE", 2, {}, 0.3, 0.3),
    ]
    text = format_progress(
        rows, name="x", metric="val_loss", mode="min", keys=[], epochs=2, total=2, elapsed_s=3
    )
    assert "best val_loss 0.3000 (trial_b)" in text.splitlines()[0]
    assert text.splitlines()[3].endswith("0.3000 *")


def test_a_tie_is_named_by_the_first_trial_name_as_best_json_does():
    """tests/test_best_pick.py: best.json takes the same trial of equals."""
    rows = [
        TrialRow("trial_c", "DONE", 2, {}, 0.8, 0.9),
        TrialRow("trial_a", "DONE", 2, {}, 0.9, 0.9),
        TrialRow("trial_b", "RUNNING", 1, {}, 0.9, 0.9),
    ]
    for order in (rows, rows[::-1]):
        text = format_progress(
            order, name="x", metric="val_accuracy", mode="max", keys=[], epochs=2, total=3,
            elapsed_s=3,
        )  # fmt: skip
        assert text.splitlines()[0].endswith("best val_accuracy 0.9000 (trial_a)")
        marked = [ln.split()[0] for ln in text.splitlines()[2:] if ln.endswith("*")]
        assert marked == ["trial_a"]


def test_a_long_search_shows_running_and_best_trials_only():
    rows = [TrialRow(f"trial_{i:04d}", "DONE", 2, {}, i / 100, i / 100) for i in range(40)]
    rows.append(TrialRow("trial_run1", "RUNNING", 1, {}, 0.1, 0.1))
    text = format_progress(
        rows,
        name="big",
        metric="val_accuracy",
        mode="max",
        keys=[],
        epochs=2,
        total=50,
        elapsed_s=4000,
    )
    lines = text.splitlines()
    assert lines[0].startswith("[big] 1h06m  trials 40/50 finished")
    shown = [ln.split()[0] for ln in lines[2:-1]]
    assert len(lines) <= MAX_ROWS + 3
    assert "trial_run1" in shown and "trial_0039" in shown and "trial_0000" not in shown
    assert len(shown) == TOP_FINISHED + 1
    hidden = 41 - len(shown)
    assert lines[-1].strip() == f"... {hidden} more finished trials (ktune report shows them all)"


def test_status_words_and_durations():
    assert status_label("TERMINATED", 3, 3) == "DONE"
    assert status_label("TERMINATED", 1, 3) == "STOPPED"
    assert status_label("ERROR", 1, 3) == "ERROR"
    assert status_label("RUNNING", None, 3) == "RUNNING"
    assert [format_duration(s) for s in (0, 59.6, 75, 3725)] == ["0s", "1m00s", "1m15s", "1h02m"]


def test_the_callback_pickles_without_its_stream(monkeypatch):
    # Ray pickles the run config, callbacks included, into the experiment's tuner.pkl.
    monkeypatch.setenv("KTUNE_PROGRESS_INTERVAL", "7")
    progress = SearchProgress(
        name="x",
        metric="val_accuracy",
        mode="max",
        num_samples=3,
        epochs=2,
        keys=["heads"],
        stream=io.StringIO(),
    )
    assert progress.interval_s == 7.0
    copy = pickle.loads(pickle.dumps(progress))
    assert copy._stream is None and copy.keys == ["heads"] and copy.total == 3


@pytest.mark.slow
def test_a_real_search_prints_the_compact_table(tmp_path_factory, ray_session):
    exp_dir, out = small_search(tmp_path_factory)
    assert "\r" not in out and not ANSI.search(out)
    # Ray's own output is off by default (--verbose brings it back)
    assert "Configuration for experiment" not in out and "View detailed results" not in out
    trials = sorted(p.name for p in exp_dir.glob("trial_*"))
    assert len(trials) == 4
    lines = out.splitlines()
    headers = [i for i, ln in enumerate(lines) if re.match(r"\[tiny\] \S+  trials \d+/4", ln)]
    assert len(headers) >= 2
    assert "trials 4/4 finished" in lines[headers[-1]]
    # the fullest table lists every trial with the hyperparameters it drew
    table_at = max(
        headers,
        key=lambda i: sum(1 for ln in lines[i + 2 : i + 6] if ln.strip().startswith("trial_")),
    )
    assert lines[table_at + 1].split()[:4] == ["trial", "status", "epoch", "embed_dim"]
    body = {ln.split()[0]: ln.split() for ln in lines[table_at + 2 : table_at + 6]}
    assert sorted(body) == trials
    import json

    for trial, cells in body.items():
        params = json.loads((exp_dir / trial / "params.json").read_text())
        assert cells[3] == str(params["embed_dim"]) and cells[4] == str(params["heads"])
    # one line per trial when it ends, in ktune's words
    import csv

    results = {r["trial"]: r for r in csv.DictReader((exp_dir / "results.csv").open())}
    for trial in trials:
        epochs = int(results[trial]["epochs"])
        how = "done" if epochs == 2 else "stopped early (ASHA)"
        assert any(
            f"{trial} {how} after epoch {epochs}: best val_accuracy" in ln for ln in lines
        ), trial
    best = json.loads((exp_dir / "best.json").read_text())
    assert f"({best['trial']})" in lines[headers[-1]]


@pytest.mark.slow
def test_resume_prints_the_same_progress(tmp_path_factory, ray_session, tmp_path):
    """``ktune resume`` of a search whose trials all finished: the restored trials keep
    their best values in the final progress line."""
    import json

    from ktune.experiment import resume_experiment

    exp_dir, _ = small_search(tmp_path_factory)
    copy = tmp_path / "tiny"
    shutil.copytree(exp_dir, copy, ignore=shutil.ignore_patterns("report*"))
    (copy / "best.json").unlink()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        best = resume_experiment(copy, export=False)
    text = out.getvalue()
    assert "Configuration for experiment" not in text and "\r" not in text
    final = [ln for ln in text.splitlines() if ln.startswith("[tiny]") and "trials " in ln]
    assert final and "trials 4/4 finished" in final[-1]
    assert f"best val_accuracy {best['metrics']['val_accuracy']:.4f} ({best['trial']})" in final[-1]
    assert json.loads((copy / "best.json").read_text())["trial"] == best["trial"]


def test_the_progress_table_does_not_load_the_report():
    import subprocess
    import sys

    code = (
        "import sys, ktune.progress; "
        "print(sorted(m for m in sys.modules if m.startswith(('ktune.report', 'matplotlib'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip() == "[]"


def test_tunes_snapshot_warning_is_off_unless_verbose_or_set(monkeypatch):
    """ktune's 2 kept checkpoints make Tune snapshot on purpose; its "may become a
    bottleneck" warning at each snapshot is off in the quiet output, a user's setting wins."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from ktune.ray_start import tune_output

    key = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"

    def threshold() -> float:  # what Tune reads when a search starts
        return _ExperimentCheckpointManager(
            storage=None, checkpoint_period=10, sync_every_n_trial_checkpoints=None
        )._excessive_sync_threshold

    monkeypatch.delenv(key, raising=False)
    with tune_output(verbose=False):
        assert threshold() == 0
    assert key not in os.environ
    with tune_output(verbose=True):
        assert threshold() == 5
    monkeypatch.setenv(key, "2")
    with tune_output(verbose=False):
        assert threshold() == 2
    assert os.environ[key] == "2"


def test_quiet_output_drops_optunas_repeated_completion_warning(caplog):
    """A resume reports again a trial that finished after Ray's snapshot; OptunaSearch
    then warns with the whole result on one line. Dropped in ktune's output only."""
    import logging

    from ktune.ray_start import tune_output

    logger = logging.getLogger("ray.tune.search.optuna.optuna_search")
    repeated = "Received additional completion for trial abc, but it already finished."
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with tune_output(verbose=False):
            logger.warning(repeated + " Result: {'val_accuracy': 0.9}")
            logger.warning(ValueError("Cannot tell a COMPLETE trial."))  # complete already
            logger.warning("Optuna could not sample")
            logger.warning(ValueError("Cannot tell a FAIL trial."))
        logger.warning(repeated)  # outside ktune's quiet output: the user's logging
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Optuna could not sample", "Cannot tell a FAIL trial.", repeated]


def test_environment_restores_what_it_touched_even_on_error(monkeypatch):
    from ktune._keras_env import environment

    monkeypatch.setenv("KTUNE_T_SET", "before")
    monkeypatch.setenv("KTUNE_T_DEFAULT_SET", "user")
    monkeypatch.delenv("KTUNE_T_UNSET", raising=False)
    monkeypatch.delenv("KTUNE_T_DEFAULT_UNSET", raising=False)
    with pytest.raises(RuntimeError):
        with environment(
            {"KTUNE_T_SET": "inside", "KTUNE_T_UNSET": "inside"},
            defaults={"KTUNE_T_DEFAULT_SET": "ours", "KTUNE_T_DEFAULT_UNSET": "ours"},
        ):
            assert os.environ["KTUNE_T_SET"] == os.environ["KTUNE_T_UNSET"] == "inside"
            assert os.environ["KTUNE_T_DEFAULT_SET"] == "user"  # a default never overrides
            assert os.environ["KTUNE_T_DEFAULT_UNSET"] == "ours"
            raise RuntimeError("the block fails")
    assert os.environ["KTUNE_T_SET"] == "before"
    assert os.environ["KTUNE_T_DEFAULT_SET"] == "user"
    assert "KTUNE_T_UNSET" not in os.environ and "KTUNE_T_DEFAULT_UNSET" not in os.environ
