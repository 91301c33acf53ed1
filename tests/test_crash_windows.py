"""Nothing lost, for real: one search SIGKILLed at five different moments, each time
followed by ``ktune resume``, then every invariant checked.

As Ray's own ``tune_worker_fault_tolerance`` release test does, the kills land at moments
that matter: during an epoch, right after a trial's last epoch reached storage, while Ray
copies its experiment snapshot to storage, during the test evaluation of the best trial,
and during the export. The whole Ray instance dies with the driver each time (a machine
restart).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ktune.checkpoint_manifest import is_complete
from ktune.ray_state import is_state_file

from conftest import (
    REPO,
    assert_checkpoints_hold_their_results,
    journal_study,
    kill_ray_under,
    ktune_cli,
    subprocess_env,
    tiny_experiment,
)
from test_resume import in_ray_snapshot, last_checkpoints

EPOCHS, TRIALS = 3, 4


def _kill_when(
    proc: subprocess.Popen,
    ray_tmp: str,
    condition,
    what: str,
    timeout: float = 300,
    poll: float = 0.01,
) -> float:
    """Polls ``condition()`` every ``poll`` seconds; SIGKILLs the driver's group and all of its Ray
    the moment it holds. Returns the time of the kill."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kill_ray_under(ray_tmp)
            return time.time()
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point: {what}")
        time.sleep(poll)
    pytest.fail(f"never reached the kill point: {what}")


@pytest.mark.slow
def test_five_kills_and_resumes_lose_nothing(tmp_path, ray_tmp):
    raw = tiny_experiment(tmp_path)
    raw["name"] = "crashes"
    raw["search"].update(num_samples=TRIALS, max_concurrent_trials=1, scheduler="fifo")
    raw["training"]["epochs"] = EPOCHS
    raw["data"]["train_size"] = 3000  # epochs of a second or two: windows to kill in
    exp = tmp_path / "crashes.yaml"
    exp.write_text(yaml.safe_dump(raw))
    exp_dir = Path(raw["storage"]) / "crashes"
    env = {
        **subprocess_env(),
        "RAY_TMPDIR": ray_tmp,
        "TMPDIR": ray_tmp,  # what a killed process leaves in its temporary folders, too
        "TUNE_GLOBAL_CHECKPOINT_S": "2",
    }

    logs = []

    def start(*args: str) -> subprocess.Popen:
        logs.append(tmp_path / f"run{len(logs)}.log")
        return subprocess.Popen(
            [sys.executable, "-m", "ktune", *args],
            cwd=REPO,
            env=env,
            stdout=logs[-1].open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    # What storage held at each kill, for the trials Ray's snapshot knew (a trial started
    # after the newest snapshot is unknown to a restore: the README documents that window).
    seen: list[dict] = []

    def record(kill_time: float, point: str) -> None:
        # What reached storage: the folders whose upload the kill did not cut off (a kill
        # "right after a trial ends" often lands while the last one is still copied).
        known = in_ray_snapshot(exp_dir)
        whole: dict[str, int] = {}
        for folder in exp_dir.glob("trial_*/checkpoint_*"):
            trial, index = folder.parent.name, int(folder.name.split("_")[1])
            if trial in known and is_complete(str(folder)):
                whole[trial] = max(index, whole.get(trial, -1))
        seen.append({"point": point, "time": kill_time, "checkpoints": whole})

    # 1. during an epoch: a trial part-way through, known to Ray's snapshot
    run = start("run", str(exp))
    record(
        _kill_when(
            run,
            ray_tmp,
            lambda: any(
                0 <= i < EPOCHS - 1
                for t, i in last_checkpoints(exp_dir).items()
                if t in in_ray_snapshot(exp_dir)
            ),
            "during an epoch",
        ),
        "during an epoch",
    )

    # 2. right after a trial's last epoch reached storage
    done_before = {t for t, i in last_checkpoints(exp_dir).items() if i == EPOCHS - 1}
    run = start("resume", str(exp_dir))
    record(
        _kill_when(
            run,
            ray_tmp,
            lambda: (
                {t for t, i in last_checkpoints(exp_dir).items() if i == EPOCHS - 1} - done_before
            ),
            "right after a trial ends",
        ),
        "right after a trial ends",
    )

    # 3. while Ray copies its experiment snapshot to storage: once the resumed run trains
    # again, the moment one of Ray's state files in the experiment folder changes
    def ray_state() -> dict:
        out = {}
        for f in exp_dir.iterdir():
            if f.is_file() and is_state_file(f.name):
                try:
                    out[f.name] = f.stat().st_mtime_ns
                except OSError:
                    pass
        return out

    before = last_checkpoints(exp_dir)
    run = start("resume", str(exp_dir))
    baseline: dict = {}

    def snapshot_changes() -> bool:
        now = ray_state()
        if not baseline:  # armed once a new checkpoint landed: the search trains again
            if last_checkpoints(exp_dir) != before:
                baseline.update(now)
            return False
        return any(baseline.get(n) != m for n, m in now.items())

    record(
        _kill_when(run, ray_tmp, snapshot_changes, "during Ray's snapshot", poll=0.001),
        "during Ray's snapshot",
    )

    # 4. after the search, during the test evaluation of the best trial
    run = start("resume", str(exp_dir))
    record(
        _kill_when(
            run, ray_tmp, lambda: (exp_dir / "results.csv").is_file(), "during the test evaluation"
        ),
        "during the test evaluation",
    )
    assert not (exp_dir / "best.json").exists()

    # 5. during the export (its temporary sibling folder exists)
    run = start("resume", str(exp_dir))
    record(
        _kill_when(run, ray_tmp, lambda: any(exp_dir.glob(".export.tmp-*")), "during the export"),
        "during the export",
    )
    assert not (exp_dir / "export" / "saved_model.pb").exists()

    final = ktune_cli("resume", str(exp_dir), env=env, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:] + "".join(
        f"\n--- {log.name}\n" + log.read_text()[-2000:] for log in logs
    )

    # --- the invariants ------------------------------------------------------------------
    rows = {r["trial"]: r for r in csv.DictReader((exp_dir / "results.csv").open())}
    errors = {
        t: "".join(f.read_text()[-1500:] for f in (exp_dir / t).glob("error.txt"))
        for t, r in rows.items()
        if r["status"] != "TERMINATED"
    }
    assert len(rows) == TRIALS and not errors, (
        errors,
        "".join(f"\n--- {log.name}\n" + log.read_text()[-3000:] for log in logs),
    )
    history = {}
    for trial in rows:
        lines = (exp_dir / trial / "result.json").read_text().splitlines()
        history[trial] = [json.loads(x) for x in lines if x.strip()]
    for kill in seen:
        for trial, index in kill["checkpoints"].items():
            # every epoch whose checkpoint reached storage is in the results ...
            assert trial in rows, (kill["point"], trial)
            epochs = {r["epoch"] for r in history[trial]}
            assert set(range(1, index + 2)) <= epochs, (kill["point"], trial, sorted(epochs))
            if index == EPOCHS - 1:
                # ... and a trial that had finished stays finished, not trained again
                assert int(rows[trial]["epochs"]) == EPOCHS, (kill["point"], trial)
                # (a re-trained epoch would have rewritten its checkpoint and the metrics
                # beside it; the missed results are reported again, not trained again)
                for folder in (exp_dir / trial).glob("checkpoint_*"):
                    written = json.loads((folder / "metrics.json").read_text())["timestamp"]
                    assert written <= kill["time"], (kill["point"], trial, folder.name)
    for trial, entries in history.items():  # no epoch missing in any trial's history
        assert {r["epoch"] for r in entries} == set(range(1, EPOCHS + 1)), trial
        assert int(rows[trial]["epochs"]) == EPOCHS

    # The Optuna study, Ray's state and results.csv agree.
    import optuna

    study = journal_study(exp_dir, "crashes")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TRIALS
    last_values = sorted(
        round(max(history[t], key=lambda r: r["epoch"])["val_accuracy"], 6) for t in rows
    )
    assert sorted(round(t.value, 6) for t in complete) == last_values
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(exp_dir))
    assert {f"trial_{t.trial_id}" for t in analysis.trials} == set(rows)
    assert {t.status for t in analysis.trials} == {"TERMINATED"}

    assert assert_checkpoints_hold_their_results(exp_dir) >= TRIALS
    best = json.loads((exp_dir / "best.json").read_text())
    assert best["trial"] in rows and best["num_trials"] == TRIALS
    export = exp_dir / "export"
    assert (export / "saved_model.pb").is_file()
    assert json.loads((export / "metadata.json").read_text())["verified"]["max_abs_diff"] <= 1e-5
    assert not list(exp_dir.glob(".export.tmp-*"))  # the killed export's leftovers went

    # --- a snapshot cut short, put back whole (deterministic) ----------------------------
    from ktune.ray_state import BUNDLE_FILE, SET_ASIDE_DIR, read_bundle, repair

    assert repair(exp_dir) == []  # the search ended cleanly: nothing to put back
    assert any(n.startswith("experiment_state-") for n in read_bundle(exp_dir))
    newest = max(exp_dir.glob("experiment_state-*.json"))
    searcher = max(exp_dir.glob("searcher-state-*.pkl"))
    whole = {newest: newest.read_bytes(), searcher: searcher.read_bytes()}
    newest.write_bytes(whole[newest][: len(whole[newest]) // 2])
    searcher.write_bytes(b"")
    notes = repair(exp_dir)
    assert len(notes) == 1 and "put back from ktune's whole copy" in notes[0], notes
    assert {f: f.read_bytes() for f in whole} == whole
    # a finished trial's history, rewritten by Ray at every snapshot, cut short by a kill
    history_file = exp_dir / sorted(rows)[0] / "result.json"
    lines = history_file.read_bytes()
    history_file.write_bytes(lines[: len(lines) // 2])
    assert "put back whole" in " ".join(repair(exp_dir))
    assert history_file.read_bytes() == lines
    kept = {f.name: f.stat().st_size for f in (exp_dir / SET_ASIDE_DIR).glob("*/*")}
    assert kept.get(newest.name) == len(whole[newest]) // 2 and kept.get(searcher.name) == 0

    # ... and without ktune's copy, a lost searcher stops the resume (it would end the
    # search at once) with one line, exit 2; the cut-short files are set aside, not lost
    (exp_dir / BUNDLE_FILE).unlink()
    cut = {}
    for f in exp_dir.glob("search_gen_state-*.json"):
        cut[f.name] = f.read_bytes()[:10]
        f.write_bytes(cut[f.name])
    listing = sorted(p.name for p in exp_dir.iterdir() if p.name not in cut)
    lost = ktune_cli("resume", str(exp_dir), env=env, timeout=120)
    assert lost.returncode == 2, lost.stderr[-2000:]
    assert "searcher snapshot was cut short" in lost.stderr and "Traceback" not in lost.stderr
    assert sorted(p.name for p in exp_dir.iterdir()) == listing
    newest_aside = max((exp_dir / SET_ASIDE_DIR).iterdir())
    assert {f.name: f.read_bytes() for f in newest_aside.glob("search_gen_*")} == cut
    assert (export / "saved_model.pb").is_file() and (exp_dir / "best.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("left", ["nothing", "the weights"])
def test_snapshot_naming_a_deleted_checkpoint_is_pointed_at_the_next(tmp_path, left):
    """Ray deletes a trial's worse checkpoints as soon as a better one registers, before
    its next snapshot: killed in between, the snapshot names a checkpoint that is gone.
    ``ktune resume`` points the trial at the next one on storage, marked with the epoch Ray
    had recorded, and the trial reports that epoch and the later ones again. Killed during
    the deletion, the named folder still holds some files (here the weights, without the
    metrics and trial file: restored as such, the trial trained its last epochs again,
    CI 2026-12-03): it is treated as deleted and set aside."""
    import cloudpickle
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    from ktune.ray_checkpoints import UNREPORTED_FILE
    from ktune.ray_state import BUNDLE_FILE, SET_ASIDE_DIR, repair
    from ktune.trainables.base import _continuations, _read_info, _unreported

    raw = tiny_experiment(tmp_path)
    raw["search"].update(num_samples=1, max_concurrent_trials=1, scheduler="fifo")
    raw["training"]["epochs"] = 3
    raw["export"] = {"enabled": False}
    exp = tmp_path / "one.yaml"
    exp.write_text(yaml.safe_dump(raw))
    done = ktune_cli("run", str(exp), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    exp_dir = Path(raw["storage"]) / "tiny"
    trial = next(exp_dir.glob("trial_*"))
    folders = sorted(trial.glob("checkpoint_*"))
    assert len(folders) == 2  # num_to_keep: the first epoch's went
    # the snapshot as a kill would have left it: the first epoch's checkpoint named latest
    newest = max(exp_dir.glob("experiment_state-*.json"))
    state = json.loads(newest.read_text())
    meta = json.loads(state["trial_data"][0][1])
    manager = cloudpickle.loads(bytes.fromhex(meta["checkpoint_manager"]["value"]))
    gone = trial / "checkpoint_000000"
    assert not gone.exists()
    if left == "the weights":
        gone.mkdir()
        for f in folders[0].glob("ckpt*"):
            shutil.copyfile(f, gone / f.name)
        assert any(gone.iterdir())
    manager._latest_checkpoint_result = _TrainingResult(
        checkpoint=Checkpoint(
            str(gone), filesystem=manager._latest_checkpoint_result.checkpoint.filesystem
        ),
        metrics={"epoch": 1},
    )
    meta["checkpoint_manager"]["value"] = cloudpickle.dumps(manager).hex()
    meta["last_result"]["epoch"] = 1
    state["trial_data"][0][1] = json.dumps(meta)
    trial_state = json.loads(state["trial_data"][0][0])
    storage = cloudpickle.loads(bytes.fromhex(trial_state["storage"]["value"]))
    storage.current_checkpoint_index = 0  # Ray's count when it registered the first epoch's
    trial_state["storage"]["value"] = cloudpickle.dumps(storage).hex()
    state["trial_data"][0][0] = json.dumps(trial_state)
    newest.write_text(json.dumps(state))
    (exp_dir / BUNDLE_FILE).unlink()  # ktune's copy of the snapshot would say the same

    notes = repair(exp_dir)
    assert any("deleted" in n and trial.name in n for n in notes), notes
    meta = json.loads(json.loads(newest.read_text())["trial_data"][0][1])
    manager = cloudpickle.loads(bytes.fromhex(meta["checkpoint_manager"]["value"]))
    handed = manager._latest_checkpoint_result.checkpoint
    assert Path(handed.path) == folders[0]  # the oldest one after the deleted one
    assert json.loads((folders[0] / UNREPORTED_FILE).read_text()) == {"reported_epoch": 1}
    assert _unreported(handed) == 1
    # what the resumed trial then does: epochs 2 and 3 reported again, continues from 3
    stored = [(Checkpoint(str(f)), _read_info(Checkpoint(str(f)))) for f in folders]
    origin = {**_read_info(handed), "epoch": _unreported(handed)}
    assert [info["epoch"] for _, info in _continuations(origin, stored)] == [2, 3]
    # had ASHA stopped it at epoch 2 (its stop log): epoch 3, trained while the driver
    # decided the stop, is left out, as a search never interrupted leaves it out
    assert [info["epoch"] for _, info in _continuations(origin, stored, 2)] == [2]
    assert not gone.exists()  # a part-deleted folder is set aside, not left to Ray
    # Ray names the trial's next checkpoint folder by its count in the snapshot: counted
    # past the handed one, the next epoch goes to a folder of its own, not over it
    trial_state = json.loads(json.loads(newest.read_text())["trial_data"][0][0])
    storage = cloudpickle.loads(bytes.fromhex(trial_state["storage"]["value"]))
    storage._update_checkpoint_index({})
    assert storage.checkpoint_dir_name == "checkpoint_000003"
    if left == "the weights":
        [kept] = (exp_dir / SET_ASIDE_DIR).glob(f"*/{trial.name}/checkpoint_000000")
        assert sorted(f.name for f in kept.iterdir()) == sorted(
            f.name for f in folders[0].glob("ckpt*")
        )
    assert repair(exp_dir) == []  # once put right, left alone


def test_snapshot_keeping_an_older_checkpoint_deleted_since_forgets_it(tmp_path):
    """Ray counts a trial's best checkpoints in its snapshot and deletes the worse ones as
    soon as a better one registers. Killed after such a deletion and before the next
    snapshot, the restored trial's bookkeeping still keeps the deleted one: when the
    resumed trial's next checkpoint registers, Ray deletes it again and fails
    (FileNotFoundError; an "Error handling checkpoint" traceback on the console, and the
    rest of that registration skipped; seen resuming the AG News example, 2026-12-04).
    ``repair`` forgets it, so the registration goes through."""
    import cloudpickle
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint, CheckpointConfig

    from ktune.ray_state import repair

    exp_dir = tmp_path / "exp"
    trial = exp_dir / "trial_a1"

    def checkpoint(index: int, accuracy: float) -> _TrainingResult:
        folder = trial / f"checkpoint_{index:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ckpt.index").write_text("weights")
        return _TrainingResult(
            checkpoint=Checkpoint(str(folder)),
            metrics={"val_accuracy": accuracy, "epoch": index + 1},
        )

    manager = _CheckpointManager(
        CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"
        )
    )
    manager.register_checkpoint(checkpoint(0, 0.5))
    manager.register_checkpoint(checkpoint(1, 0.7))
    snapshot = exp_dir / "experiment_state-2026-12-04_15-00-30.json"
    meta = {"checkpoint_manager": {"value": cloudpickle.dumps(manager).hex()}}
    snapshot.write_text(json.dumps({"trial_data": [["{}", json.dumps(meta)]]}))
    manager.register_checkpoint(checkpoint(2, 0.8))  # after the snapshot: deletes epoch 1's
    assert not (trial / "checkpoint_000000").exists()

    def restored() -> _CheckpointManager:
        entry = json.loads(snapshot.read_text())["trial_data"][0][1]
        return cloudpickle.loads(bytes.fromhex(json.loads(entry)["checkpoint_manager"]["value"]))

    with pytest.raises(FileNotFoundError):  # what Ray's resume met
        restored().register_checkpoint(checkpoint(2, 0.8))

    notes = repair(exp_dir)
    assert len(notes) == 1 and "trial_a1/checkpoint_000000" in notes[0], notes
    resumed = restored()
    resumed.register_checkpoint(checkpoint(2, 0.8))  # the epoch reported again on resume
    assert [Path(r.checkpoint.path).name for r in resumed._checkpoint_results] == [
        "checkpoint_000001",
        "checkpoint_000002",
    ]
    assert (trial / "checkpoint_000001").is_dir()  # the kept ones stay
    assert repair(exp_dir) == []  # once put right, left alone
