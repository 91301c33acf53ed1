"""Ctrl+C (or SIGTERM) during a search: Ray Tune saves the state and returns from ``fit``
as if the search were over; ktune writes nothing as if it were (no results table,
best.json or export), says how to continue, and ``resume`` finishes the same search."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import ktune
from ktune.report.load import load_experiment
from ktune.report.text import status_line

from conftest import (
    CtrlC,
    assert_checkpoints_hold_their_results,
    journal_study,
    kill_ray_under,
    ktune_cli,
    ktune_run_in_its_own_group,
    run_script_for_result,
    tiny_experiment,
    wait_for_first_epoch,
)


def _rows(exp_dir: Path) -> dict[str, dict]:
    import csv

    with (exp_dir / "results.csv").open() as f:
        return {row["trial"]: row for row in csv.DictReader(f)}


def _complete_in_study(exp_dir: Path, name: str) -> int:
    import optuna

    complete = optuna.trial.TrialState.COMPLETE
    return sum(t.state == complete for t in journal_study(exp_dir, name).trials)


def _nothing_written_as_finished(exp_dir: Path) -> None:
    for name in ("best.json", "results.csv", "export"):
        assert not (exp_dir / name).exists(), name


@pytest.mark.slow
@pytest.mark.parametrize("at", ["result", "complete"])
def test_ctrl_c_saves_the_search_and_resume_finishes_it(tmp_path, ray_session, at):
    raw = tiny_experiment(tmp_path)
    raw["name"] = f"ctrlc_{at}"
    raw["search"].update(num_samples=3, scheduler="fifo")
    if at == "complete":
        raw["search"]["max_concurrent_trials"] = 1
    exp_dir = Path(raw["storage"]) / raw["name"]
    ctrl_c = CtrlC(at)
    before = signal.getsignal(signal.SIGINT)

    with pytest.raises(ktune.SearchInterrupted) as caught:
        # one run exports, one is told not to: its resume keeps to that (ktune.json)
        ktune.run(raw, callbacks=[ctrl_c], export=at == "result")

    e = caught.value
    assert isinstance(e, KeyboardInterrupt)  # what a Ctrl+C is in Python
    assert e.experiment == str(exp_dir) and e.total == 3
    assert f"ktune resume {exp_dir}" in str(e)
    if at == "result":  # the trial that reported is cut off after its first epoch
        assert ctrl_c.trial in e.cut_off and e.finished < 3
    else:  # one trial ended; the searcher had not created the next
        assert (e.finished, e.cut_off) == (1, [])
    _nothing_written_as_finished(exp_dir)
    # Ray's SIGINT handler is not left behind: the next Ctrl+C interrupts again
    assert signal.getsignal(signal.SIGINT) is before
    # what stopped it, for `ktune report`: the cut-off trials no longer read RUNNING
    stop = json.loads((exp_dir / "interrupted.json").read_text())
    assert stop["signal"] == "SIGINT" and stop["cut_off"] == sorted(e.cut_off)
    assert (stop["finished"], stop["total"]) == (e.finished, 3)
    record = load_experiment(exp_dir)
    assert status_line(record).startswith("interrupted by SIGINT at ")
    statuses = {t.trial: t.status for t in record.trials}
    assert {t for t, s in statuses.items() if s == "INTERRUPTED"} == set(e.cut_off)
    assert "RUNNING" not in statuses.values()

    if at == "complete":  # moved (a copy alike): refused, untouched; resumed where it ran
        moved = exp_dir.with_name("elsewhere")
        exp_dir.rename(moved)
        files = {p: p.read_bytes() for p in moved.rglob("*") if p.is_file()}
        with pytest.raises(ktune.ExperimentError) as caught:
            ktune.resume(moved)
        assert str(caught.value) == (
            f"{moved}: the search ran in {exp_dir}, and this folder was moved or copied "
            "here since; Ray's search state names the folder it ran in, so it resumes only "
            "there (`ktune report`, `ktune export` and `ktune.load` read it here)"
        )
        assert {p: p.read_bytes() for p in moved.rglob("*") if p.is_file()} == files
        assert not exp_dir.exists()  # nothing written where it ran
        moved.rename(exp_dir)
    result = ktune.resume(exp_dir)

    best = json.loads((exp_dir / "best.json").read_text())
    assert best["num_trials"] == 3 and len(result.trials) == 3
    assert (exp_dir / "export" / "saved_model.pb").is_file() == (at == "result")
    rows = _rows(exp_dir)
    assert len(rows) == 3 and all(r["epochs"] == "2" for r in rows.values())
    # every epoch in each trial's history once: the epoch the snapshot recorded is not
    # reported again (its checkpoint registered on resume), none is missing
    for trial in rows:
        lines = (exp_dir / trial / "result.json").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2], trial
        # each epoch's checkpoint in a folder of its own: the one registered on resume is
        # not written over by the next epoch's (which Ray then deleted as the worse one's,
        # taking the best trial's checkpoint with it: CI 2026-12-06)
        folders = sorted((exp_dir / trial).glob("checkpoint_*"))
        epochs = [json.loads((f / "metrics.json").read_text())["epoch"] for f in folders]
        assert epochs == [1, 2], (trial, [f.name for f in folders])
    assert assert_checkpoints_hold_their_results(exp_dir) == 6  # 3 trials, 2 epochs each
    if at == "result":  # continued from its checkpoint, not trained again from epoch 0
        assert rows[ctrl_c.trial]["resumed_from_epoch"] == "1"
    else:  # the finished trial is kept as it was
        assert rows[ctrl_c.trial]["resumed_from_epoch"] == "0"
    assert _complete_in_study(exp_dir, raw["name"]) == 3
    record = load_experiment(exp_dir)  # best.json supersedes interrupted.json
    assert record.interrupted is None and status_line(record).startswith("finished")
    assert {t.status for t in record.trials} == {"DONE"}


def _ray_under(driver) -> bool:
    """Whether any of Ray's processes still runs under ``driver`` (a psutil.Process): its
    shutdown is not over. A child that ends while being looked at does not count (it
    ended: CI 2026-12-07 saw NoSuchProcess there), nor one ended and not yet reaped."""
    import psutil

    for child in driver.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def _run_in_its_own_group(tmp_path: Path, ray_tmp: str, raw: dict):
    """``ktune run`` of the experiment ``raw`` in its own process group, as a terminal's
    foreground job (Ctrl+C signals all of it): (the process, its experiment folder, the
    environment it runs in)."""
    import yaml

    exp = tmp_path / f"{raw['name']}.yaml"
    exp.write_text(yaml.safe_dump(raw))
    run, env = ktune_run_in_its_own_group(exp, ray_tmp)
    return run, Path(raw["storage"]) / raw["name"], env


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, group",
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGTERM, True)],
    ids=["SIGINT", "SIGTERM", "SIGTERM-to-the-group"],
)
def test_stopped_on_the_command_line_exits_128_plus_signal_and_names_resume(
    tmp_path, ray_tmp, sig, group
):
    """SIGINT as a terminal's Ctrl+C sends it, to the whole process group; SIGTERM as
    ``kill``, Kubernetes or ``ray job stop`` send it, to the driver (where Ray would
    abort); SIGTERM to the whole process group, as SLURM's ``scancel`` sends it, which
    kills Ray's own processes too (they block SIGINT only): the driver waited 60 s for
    them and exited 1 as after a crash (an audit); now it exits at once, as interrupted."""

    raw = tiny_experiment(tmp_path)
    raw["name"] = "ctrlc_cli"
    raw["search"].update(num_samples=2, max_concurrent_trials=1, scheduler="fifo")
    raw["training"]["epochs"] = 3
    raw["data"]["train_size"] = 4000  # epochs long enough to land in
    run, exp_dir, env = _run_in_its_own_group(tmp_path, ray_tmp, raw)
    wait_for_first_epoch(exp_dir, run)
    signalled = time.time()
    if group:
        os.killpg(run.pid, sig)
    else:
        os.kill(run.pid, sig)
    out, err = run.communicate(timeout=300)

    assert run.returncode == 128 + sig, err[-3000:]
    assert time.time() - signalled < 30  # not Ray's 60 s wait for its lost processes
    last = err.strip().splitlines()[-1]
    by = " by SIGTERM" if sig == signal.SIGTERM else ""
    assert last.startswith(f"ktune: {exp_dir}: search interrupted{by} with "), last
    assert last.endswith(f"`ktune resume {exp_dir}` continues it"), last
    assert "Tuner.restore(" not in err  # Ray's own hint would not restore ktune's searcher
    if not (group and sig == signal.SIGTERM):  # (Ray's lost processes may print theirs)
        assert "interrupted: trials " in out and "Traceback" not in err
    _nothing_written_as_finished(exp_dir)
    note = json.loads((exp_dir / "interrupted.json").read_text())
    assert note["signal"] == sig.name and note["total"] == 2
    if group:  # Ray's processes died with the driver's group: kill what is left, as a
        kill_ray_under(ray_tmp)  # machine would have lost them
    else:
        return  # the SIGINT case's state, written by the same handler: resumed there

    resumed = ktune_cli("resume", str(exp_dir), env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((exp_dir / "best.json").read_text())["num_trials"] == 2
    assert (exp_dir / "export" / "saved_model.pb").is_file()


_SIGNAL_WHILE_MAIN_WAITS = """
import json, os, signal, threading, time
import ktune.search_end as search_end

# The group's SIGTERM has ended the Ray this process started (what is checked is when).
search_end._own_ray_lost = lambda: True
sent = []

def lost(signum):
    after = time.monotonic() - sent[0]
    print("RESULT " + json.dumps({"signum": signum, "after": after}), flush=True)
    os._exit(0)

with search_end.stop_signals(None, lost):
    # The kernel hands the signal to another thread while the main one waits in C (in
    # Ray's core worker, CI): Python's handler cannot run before that wait ends.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # (threads started from
    sent.append(time.monotonic() + 0.5)  # here on inherit it: one of Ray's gets it)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    time.sleep(20)
print("RESULT " + json.dumps({"after": None}))
"""


def test_the_lost_ray_watch_starts_while_the_main_thread_still_waits():
    """The SIGTERM-to-the-group case above exited 1 once in CI (Ray's core worker ended
    the process as the raylet went) because the watch for the lost Ray started only in
    the Python handler, which waits for the main thread: it starts at the signal."""
    got = run_script_for_result(_SIGNAL_WHILE_MAIN_WAITS, timeout=120)
    assert got["after"] is not None and got["after"] < 5, got
    assert got["signum"] == signal.SIGTERM


def test_quiet_output_drops_tunes_lines_that_ktunes_interrupt_line_replaces():
    import contextlib
    import logging

    from ktune.ray_start import tune_output

    def shown(logger: str, text: str, verbose: bool | None) -> bool:
        """Whether ``text`` logged inside ``tune_output(verbose)`` (None: outside) shows."""
        seen: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
        log = logging.getLogger(logger)
        log.addHandler(handler)
        try:
            with tune_output(verbose) if verbose is not None else contextlib.nullcontext():
                log.warning(text)
        finally:
            log.removeHandler(handler)
        return bool(seen)

    restore = 'Experiment has been interrupted...\nResume experiment with: Tuner.restore(path="x")'
    fetch = "Failed to fetch metrics for 2 trial(s):\n- run_trial_1: FileNotFoundError"
    assert not shown("ray.tune.tune", restore, verbose=False)
    assert not shown("ray.tune.analysis.experiment_analysis", fetch, verbose=False)
    assert shown("ray.tune.tune", "Trials did not complete", verbose=False)  # others stay
    assert shown("ray.tune.tune", restore, verbose=True)  # --verbose: Ray's own output
    assert shown("ray.tune.tune", restore, verbose=None)  # after the block, as before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # on purpose
def test_a_signal_after_the_trials_stops_the_run_as_an_interrupted_search(
    tmp_path, monkeypatch, caplog
):
    """SIGTERM (or Ctrl+C) while ktune trains an ensemble's members, evaluates the best
    trial or exports, before best.json: `SearchInterrupted` with the signal, naming `ktune
    resume`, and interrupted.json for the report; SIGTERM's handler is put back after.
    Once best.json is written the search is finished: a Ctrl+C stays what it was."""
    import time

    import ktune.experiment as experiment
    from ktune.config import parse_config

    cfg = parse_config(tiny_experiment(tmp_path))
    cfg.experiment_dir.mkdir(parents=True)

    class Tracking:
        def finish(self, best):
            raise AssertionError("the trackers finish a finished search only")

    def only_logs(signum, frame):  # what a user's own Tuner.fit earlier leaves for SIGINT
        pass

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, only_logs)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):

            def stopped_by(*args, sig=sig):  # the real signal, as a scheduler or ^C sends it
                os.kill(os.getpid(), sig)
                time.sleep(10)
                raise AssertionError(f"{sig.name} did not stop the finish")

            monkeypatch.setattr(experiment, "finish_search", stopped_by)
            with pytest.raises(ktune.SearchInterrupted) as stopped:
                experiment._finish(cfg, [1, 2, 3], None, None, 0.0, None, Tracking())
            e = stopped.value
            assert (e.signal, e.finished, e.total, e.cut_off) == (sig, 3, 3, [])
            assert str(e).endswith(f"`ktune resume {cfg.experiment_dir}` continues it")
            note = json.loads((cfg.experiment_dir / "interrupted.json").read_text())
            assert (note["signal"], note["finished"], note["total"]) == (sig.name, 3, 3)
            assert signal.getsignal(signal.SIGINT) is only_logs
            assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)

    # A Ctrl+C whose handler runs inside a finalizer (TensorFlow's __del__ hooks run
    # between any two lines): Python drops its KeyboardInterrupt ("Exception ignored"),
    # and the run went on to best.json and the export, exit 0 (an audit, 2 in 4 tries
    # right after an ensemble member was saved). finish_search is handed the signals
    # received and stops before best.json when there is one.
    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs here, at a bytecode boundary
                pass

    def lost_in_a_finalizer(*args):
        Finalized()  # collected at once: the KeyboardInterrupt is raised and dropped
        signalled = args[-1]
        assert signalled == [signal.SIGINT]  # ... but the signal was recorded
        if signalled:  # what finish_search does before best.json
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "finish_search", lost_in_a_finalizer)
    with pytest.raises(ktune.SearchInterrupted) as stopped:
        experiment._finish(cfg, [1, 2, 3], None, None, 0.0, None, Tracking())
    assert stopped.value.signal == signal.SIGINT

    def ctrl_c_in_export(*args):
        (cfg.experiment_dir / "best.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "finish_search", ctrl_c_in_export)
    with pytest.raises(KeyboardInterrupt) as plain:
        experiment._finish(cfg, [1, 2, 3], None, None, 0.0, True, Tracking())
    assert not isinstance(plain.value, ktune.SearchInterrupted)
    # ... and the line says the export was cut off and how to make it (an audit: a
    # Ctrl+C during the export printed `ktune: interrupted` alone)
    assert caplog.messages[-1] == (
        f"{cfg.experiment_dir}: the search finished (best.json), its export was cut off: "
        f"`ktune resume {cfg.experiment_dir}` makes it"
    )
    caplog.clear()  # told not to export: nothing was cut off
    with pytest.raises(KeyboardInterrupt):
        experiment._finish(cfg, [1, 2, 3], None, None, 0.0, False, Tracking())
    assert not caplog.messages


@pytest.mark.slow
def test_sigterm_after_the_trials_on_the_command_line_still_exits_143(tmp_path, ray_tmp):
    """`ktune run` stops its own Ray as soon as the trials are done, while the driver
    trains an ensemble's members (Ray's shutdown resets SIGTERM's action underneath
    Python's handler; ktune puts it back): a SIGTERM to the whole process group then
    still ends the run as an interrupted search, exit 143, and `ktune resume` finishes it."""
    import psutil

    raw = tiny_experiment(tmp_path)
    raw["name"] = "term_after"
    raw["search"].update(num_samples=1, max_concurrent_trials=1, scheduler="fifo")
    raw["data"]["train_size"] = 20000  # members that train for seconds
    raw["ensemble"] = {"seeds": 3}
    run, exp_dir, env = _run_in_its_own_group(tmp_path, ray_tmp, raw)
    driver = psutil.Process(run.pid)
    deadline = time.time() + 300
    while not (exp_dir / "ensemble").is_dir():  # the trials are done, the members train
        assert run.poll() is None and time.time() < deadline, "no ensemble before the end"
        time.sleep(0.1)
    # Ray's shutdown over (its SIGTERM reset long done): a SIGTERM to the group while it
    # still stopped Ray's processes once ended the driver with SIGSEGV (CI 2026-12-07)
    while _ray_under(driver):
        assert run.poll() is None and time.time() < deadline, "Ray still up at the end"
        time.sleep(0.1)
    assert not (exp_dir / "best.json").exists(), "finished before the signal: members too fast"
    os.killpg(run.pid, signal.SIGTERM)
    out, err = run.communicate(timeout=60)

    assert run.returncode == 128 + signal.SIGTERM, (run.returncode, err[-3000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"ktune: {exp_dir}: search interrupted by SIGTERM with 1 of 1"), last
    assert (exp_dir / "interrupted.json").is_file()
    assert not (exp_dir / "best.json").exists() and not (exp_dir / "export").exists()
    resumed = ktune_cli("resume", str(exp_dir), env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(json.loads((exp_dir / "best.json").read_text())["ensemble"]["seeds"]) == 3
