"""`ktune resume` after the driver is killed with SIGKILL mid-search (a machine restart)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ktune.data import AG_NEWS_CLASSES, generate_builtin
from ktune.report.load import load_experiment
from ktune.report.text import status_line

from conftest import (
    REPO,
    assert_checkpoints_hold_their_results,
    first_asha_stop,
    journal_study,
    kill_ray_under,
    ktune_run_in_its_own_group,
    subprocess_env,
    tiny_experiment,
)


def ktune_cli(*args: str, env: dict | None = None, timeout: int = 600):
    return subprocess.run(
        [sys.executable, "-m", "ktune", *args],
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        cwd=REPO,
        timeout=timeout,
    )


def epochs_by_trial(exp_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for trial in sorted(exp_dir.glob("trial_*")):
        path = trial / "result.json"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            out[trial.name] = rows
    return out


def last_checkpoints(exp_dir: Path) -> dict[str, int]:
    """trial -> index of its newest checkpoint on disk (epoch - 1)."""
    return {
        t.name: max(int(c.name.split("_")[1]) for c in t.glob("checkpoint_*"))
        for t in exp_dir.glob("trial_*")
        if any(t.glob("checkpoint_*/ckpt.index"))
    }


def in_ray_snapshot(exp_dir: Path) -> set[str]:
    """Trial folders named in Ray's newest experiment snapshot (what a restore knows)."""
    snaps = sorted(exp_dir.glob("experiment_state-*.json"))
    if not snaps:
        return set()
    try:
        text = snaps[-1].read_text()
    except OSError:
        return set()
    return {
        t.name
        for t in exp_dir.glob("trial_*")
        if f'\\"trial_id\\": \\"{t.name[len("trial_") :]}\\"' in text
    }


@pytest.mark.slow
def test_resume_after_sigkill_continues_trials_and_study(tmp_path, ray_tmp):
    raw = tiny_experiment(tmp_path)
    raw["name"] = "crashy"
    raw["search"].update(num_samples=3, max_concurrent_trials=1, scheduler="fifo")
    raw["training"]["epochs"] = 3
    # The user's own CSV beside the experiment file, named by a relative path: the resume
    # reads it from there, not from beside the experiment folder's copy of the file.
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    titles, descriptions, labels = generate_builtin(4000, seed=3)  # epochs of a few seconds
    with (project / "data" / "news.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["title", "description", "label"])
        out.writerows(zip(titles, descriptions, [AG_NEWS_CLASSES[i] for i in labels]))
    raw["data"] = {
        "source": "csv",
        "train": "data/news.csv",
        "text": ["title", "description"],
        "test_fraction": 0.03,
        "seed": 3,
    }
    exp = project / "crashy.yaml"
    exp.write_text(yaml.safe_dump(raw))
    exp_dir = Path(raw["storage"]) / "crashy"

    run, _ = ktune_run_in_its_own_group(
        exp, ray_tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # Kill once one trial has finished and the next one has its first checkpoint.
    deadline, before = time.time() + 420, {}
    while time.time() < deadline:
        # checkpoints are on disk as soon as reported (result.json is written lazily)
        before = last_checkpoints(exp_dir)
        if 2 in before.values() and min(before.values()) < 2:  # one done, one part-way
            break
        assert run.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.2)
    else:
        pytest.fail(f"never saw a finished and a part-way trial: {before}")
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    kill_ray_under(ray_tmp)
    killed_at = time.time()
    time.sleep(1)
    before = last_checkpoints(exp_dir)  # what survived the kill
    finished = [t for t, last in before.items() if last == 2]
    interrupted = [t for t, last in before.items() if last < 2]
    assert finished and interrupted
    # A trial unknown to Ray's last snapshot would be lost to the resume (a new one drawn
    # in its place): on local storage ktune has Ray snapshot every 2 s, not its 10 s or
    # more, so a trial with a checkpoint is known (its first epoch takes longer).
    assert set(interrupted) <= in_ray_snapshot(exp_dir), (interrupted, before)
    assert not (exp_dir / "best.json").exists()
    # the report tells the crash from a running search (driver.json's pid is gone)
    record = load_experiment(exp_dir)
    line = status_line(record)
    assert line.startswith(f"stopped by a crash: its driver (pid {run.pid}) was killed"), line
    assert f"`ktune resume {exp_dir.resolve()}` continues it" in line
    assert "RUNNING" not in {t.status for t in record.trials}

    resumed = ktune_cli("resume", str(exp_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    after = epochs_by_trial(exp_dir)
    assert len(after) == 3, sorted(after)  # the total stays num_samples
    assert set(before) <= set(after)  # nothing lost
    for trial, rows in after.items():
        assert rows[-1]["epoch"] == 3, (trial, [r["epoch"] for r in rows])
    for trial in finished:  # completed trials are kept, not run again
        assert after[trial][-1]["resumed_from_epoch"] == 0
        # An epoch that reached storage after Ray's snapshot is reported again on resume
        # (a new row, Ray stamps it anew), never trained again: its checkpoint and the
        # metrics written beside it are the ones from before the kill.
        for folder in (exp_dir / trial).glob("checkpoint_*"):
            assert json.loads((folder / "metrics.json").read_text())["timestamp"] <= killed_at
    for trial in interrupted:
        # it continued from its last checkpoint (epoch = index + 1), not from epoch 0
        last = after[trial][-1]
        assert last["resumed_from_epoch"] == before[trial] + 1, (trial, last)
        assert last["timestamp"] >= int(killed_at)

    import optuna

    study = journal_study(exp_dir, "crashy")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    assert assert_checkpoints_hold_their_results(exp_dir) == 6  # 2 kept a trial
    best = json.loads((exp_dir / "best.json").read_text())
    assert (Path(best["export"]) / "saved_model.pb").is_file()
    # its wall time is the resume's own, and the report says so
    assert best["wall_time_of"] == "resume"
    assert load_experiment(exp_dir).wall_time() == (best["wall_time_s"], "resume")
    driver = json.loads((exp_dir / "driver.json").read_text())
    assert driver["command"] == "resume" and driver["ended"] >= driver["time"] > killed_at

    # Killed after the export was moved into place, before best.json named it: a resume
    # finishes the run again without training or exporting, and best.json names it.
    exported = Path(best["export"]) / "saved_model.pb"
    written = exported.stat().st_mtime_ns
    (exp_dir / "best.json").write_text(json.dumps({k: v for k, v in best.items() if k != "export"}))
    again = ktune_cli("resume", str(exp_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already exported" in again.stderr
    best_again = json.loads((exp_dir / "best.json").read_text())
    assert best_again["export"] == best["export"] and best_again["trial"] == best["trial"]
    assert exported.stat().st_mtime_ns == written
    assert epochs_by_trial(exp_dir) == after  # no trial trained again

    # Finished and exported: nothing to resume, and nothing rewritten
    files = {n: (exp_dir / n).read_bytes() for n in ("best.json", "results.csv", "driver.json")}
    refused = ktune_cli("resume", str(exp_dir), timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"ktune: error: {exp_dir.resolve()}: the search finished (best.json); there is "
        f"nothing to resume (`ktune report {exp_dir.resolve()}` shows it, `ktune export` "
        "exports a trial)"
    )
    assert {n: (exp_dir / n).read_bytes() for n in files} == files


def test_resume_names_the_trials_rays_snapshot_does_not_know(tmp_path):
    # Started after Ray's last snapshot: Ray's restore cannot continue them, and says
    # nothing; ktune's repair names them before the resume draws new trials instead.
    from ktune.ray_state import repair

    exp_dir = tmp_path / "exp"
    for folder in ("trial_a1/checkpoint_000000", "trial_b2/checkpoint_000000", "trial_c3"):
        (exp_dir / folder).mkdir(parents=True)
    state = json.dumps({"trial_id": "a1", "status": "RUNNING"})
    (exp_dir / "experiment_state-2026-12-06_19-00-00.json").write_text(
        json.dumps({"trial_data": [[state, "{}"]]})
    )
    notes = repair(exp_dir)
    assert [n for n in notes if "snapshot" in n] == [
        "trial_b2: started after Ray's last snapshot of the search, so Ray's restore does "
        "not know them: their folders stay as they are, outside the results, and the "
        "search draws new trials in their place"
    ], notes  # not trial_a1 (known), nor trial_c3 (no checkpoint: nothing trained)


@pytest.mark.slow
def test_a_trial_asha_stopped_before_the_kill_stays_stopped(tmp_path, ray_tmp):
    """Killed just after ASHA stopped a trial, before Ray's next snapshot (which still has
    it running): the resume stops it again where it was (its epochs since the snapshot are
    reported again, up to the one it was stopped at, and the refilled scheduler stops it
    there). Before, Ray's scheduler came back with empty rungs and the trial trained on to
    the last epoch; and then an epoch it had trained after the stop, while the driver
    decided, was reported again and counted in its best, or it was stopped at the first
    epoch reported again, one short of its stop."""

    raw = tiny_experiment(tmp_path, search__num_samples=2, training__epochs=4)
    raw["name"] = "stops"
    raw["data"]["train_size"] = 6000  # epochs of a second or two: the kill lands mid-run
    raw["export"] = {"enabled": False}
    exp = tmp_path / "stops.yaml"
    exp.write_text(yaml.safe_dump(raw))
    exp_dir = Path(raw["storage"]) / "stops"
    # TUNE_GLOBAL_CHECKPOINT_S: no snapshot of Ray's between the stop and the kill
    run, _ = ktune_run_in_its_own_group(
        exp, ray_tmp, stderr=subprocess.STDOUT, TUNE_GLOBAL_CHECKPOINT_S="1000"
    )
    stopped = first_asha_stop(run)  # two trials at once: one is stopped at rung 1 or 2
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    kill_ray_under(ray_tmp)
    killed_at = time.time()
    assert stopped is not None, "no trial was stopped early"
    assert not (exp_dir / "best.json").exists(), "the run ended before the kill"
    trial, epoch = stopped
    # Ray's function trainable may train one more epoch while the driver decides the stop
    # (its checkpoint is on disk): the resume reports it, but trains nothing new.
    before = last_checkpoints(exp_dir)[trial]
    assert before + 1 in (epoch, epoch + 1), (before, epoch)

    resumed = ktune_cli("resume", str(exp_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert last_checkpoints(exp_dir)[trial] == before  # no epoch trained after the resume
    for folder in (exp_dir / trial).glob("checkpoint_*"):
        assert json.loads((folder / "metrics.json").read_text())["timestamp"] <= killed_at
    rows = {r["trial"]: r for r in csv.DictReader((exp_dir / "results.csv").open())}
    assert int(rows[trial]["epochs"]) == epoch  # as if never interrupted
    history = [json.loads(line) for line in (exp_dir / trial / "result.json").open()]
    assert max(r["epoch"] for r in history) == epoch
    assert assert_checkpoints_hold_their_results(exp_dir) >= 2


def test_resume_refuses_what_it_cannot_resume(tmp_path):
    missing = ktune_cli("resume", str(tmp_path / "nope"), timeout=120)
    assert missing.returncode == 2 and "no such experiment directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = ktune_cli("resume", str(tmp_path / "empty"), timeout=120)
    assert empty.returncode == 2
    assert (
        empty.stderr.strip()
        .splitlines()[-1]
        .endswith("not a ktune experiment directory (no ktune.json)")
    )
    # stopped (Ctrl+C) after ktune wrote its files, before Ray saved any state: the
    # folder can be neither resumed nor reused by a new run, so the line says what to do
    started = tmp_path / "started"
    started.mkdir()
    (started / "ktune.json").write_text("{}")
    (started / "experiment.yaml").write_text("name: started\n")
    early = ktune_cli("resume", str(started), timeout=120)
    assert early.returncode == 2
    assert (
        early.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "no search state to resume (the run stopped before Ray saved any); no trial "
            "trained an epoch: remove it and run again"
        )
    )


@pytest.mark.slow
def test_an_error_out_of_tune_names_the_resume_that_continues_the_search(
    tmp_path, ray_session, caplog
):
    """An error out of Tune itself (here a Tune callback's, as the storage lost when the
    trials end would be) propagates with one ktune line naming ``ktune resume``;
    that resume finishes the search (the audit's case: an S3 outage as the trials ended
    left a Ray traceback alone)."""
    import logging

    from ray import tune

    import ktune

    class Outage(tune.Callback):
        def on_experiment_end(self, trials, **info):
            raise OSError("When uploading the experiment state: NETWORK_CONNECTION")

    raw = tiny_experiment(tmp_path)
    raw["name"] = "outage"
    raw["search"].update(num_samples=2, max_concurrent_trials=1, scheduler="fifo")
    raw["training"]["epochs"] = 1
    exp_dir = Path(raw["storage"]) / "outage"
    with caplog.at_level(logging.ERROR, logger="ktune"), pytest.raises(OSError):
        ktune.run(raw, callbacks=[Outage()])
    said = [r.getMessage() for r in caplog.records if "ktune resume" in r.getMessage()]
    assert said == [
        "the search stopped on an error (OSError: When uploading the experiment state: "
        f"NETWORK_CONNECTION); `ktune resume {exp_dir}` continues it from what it saved"
    ]
    assert not (exp_dir / "best.json").exists()
    result = ktune.resume(exp_dir)
    assert len(result.trials) == 2 and (exp_dir / "best.json").is_file()
