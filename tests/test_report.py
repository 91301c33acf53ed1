"""``ktune report`` on a real small search: every file, valid images, self-contained HTML,
the confusion matrix, running and resumed experiments, the comparison, bad directories."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_progress import small_search

from ktune.cli import main
from ktune.report import PLOTS, load_experiment, read_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# every plot but the Pareto front's (a multi-objective search's: tests/test_multi_objective.py)
PLOT_FILES = [f"report-{suffix}.png" for name, (suffix, _, _) in PLOTS.items() if name != "pareto"]


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["report", *args])
    return code, out.getvalue()


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append((tag, value))


def references(html_text: str) -> list[tuple[str, str]]:
    parser = Links()
    parser.feed(html_text)
    return parser.refs


def assert_png(data: bytes, what: str) -> None:
    from PIL import Image

    assert data[:8] == PNG_SIGNATURE, what
    assert len(data) > 5 * 1024, (what, len(data))
    image = Image.open(io.BytesIO(data))
    image.verify()
    assert image.size[0] >= 300 and image.size[1] >= 200, (what, image.size)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, ray_session) -> Path:
    exp_dir, _ = small_search(tmp_path_factory)
    return exp_dir


@pytest.fixture(scope="module")
def report(experiment) -> tuple[Path, str]:
    code, out = run_cli(str(experiment))
    assert code == 0
    return experiment / "report.html", out


@pytest.mark.slow
def test_the_report_writes_every_file(report):
    html_path, _ = report
    assert html_path.is_file()
    for name in PLOT_FILES:
        path = html_path.parent / name
        assert path.is_file(), name
        assert_png(path.read_bytes(), name)


@pytest.mark.slow
def test_the_html_embeds_its_images_and_links_nothing_missing(report, experiment):
    html_path, _ = report
    text = html_path.read_text(encoding="utf-8")
    refs = references(text)
    images = [v for tag, v in refs if tag == "img"]
    assert len(images) == len(PLOT_FILES)
    for ref in (v for _, v in refs):
        if ref.startswith("data:"):
            assert ref.startswith("data:image/png;base64,")
            assert_png(base64.b64decode(ref.split(",", 1)[1]), ref[:40])
        else:  # a relative link must name a file that exists
            assert (html_path.parent / ref).exists(), ref
    for trial in experiment.glob("trial_*"):
        assert trial.name in text
    for name in ("World", "Sports", "Business", "Sci/Tech"):
        assert name in text
    best = json.loads((experiment / "best.json").read_text())
    assert f"{best['test_accuracy']:.4f}" in text


@pytest.mark.slow
def test_the_confusion_matrix_counts_the_test_split(experiment):
    best = json.loads((experiment / "best.json").read_text())
    spec = json.loads((experiment / "ktune.json").read_text())
    matrix = best["test_confusion_matrix"]
    assert len(matrix) == len(spec["class_names"]) == 4
    assert all(len(row) == 4 for row in matrix)
    total = sum(map(sum, matrix))
    assert total == spec["data"]["test_size"] == 120
    correct = sum(matrix[i][i] for i in range(4))
    assert correct / total == pytest.approx(best["test_accuracy"])


@pytest.mark.slow
def test_the_report_reads_files_without_ray_or_tensorflow(experiment, tmp_path):
    """`ktune report` reads the experiment's files: a fresh process that writes the report
    has imported neither Ray nor TensorFlow (together about 4 s of every report)."""
    import sys

    from conftest import REPO, subprocess_env

    script = (
        "import sys\n"
        "from ktune.cli import main\n"
        "code = main(['report', sys.argv[1], '--out', sys.argv[2]])\n"
        "print(code, sorted(m for m in ('ray', 'tensorflow') if m in sys.modules))\n"
    )
    out = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-c", script, str(experiment), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout[-2000:]
    assert out.is_file()


@pytest.mark.slow
def test_the_terminal_summary(report, experiment):
    _, out = report
    assert "experiment tiny (transformer)" in out and "finished: 4/4 trials finished" in out
    for trial in experiment.glob("trial_*"):
        assert trial.name in out
    best = json.loads((experiment / "best.json").read_text())
    assert f"best trial {best['trial']}:" in out
    assert out.strip().splitlines()[-1].startswith(f"report: {experiment / 'report.html'}")


@pytest.mark.slow
def test_the_report_reads_every_epoch_and_the_study(experiment):
    record = load_experiment(experiment)
    results = {r["trial"]: r for r in csv.DictReader((experiment / "results.csv").open())}
    assert sorted(t.trial for t in record.trials) == sorted(results)
    for t in record.trials:
        assert t.epochs == int(results[t.trial]["epochs"])
        assert t.status == ("DONE" if t.epochs == 2 else "STOPPED")
        assert t.best("val_accuracy", "max")[1] == pytest.approx(
            float(results[t.trial]["val_accuracy"])
        )
    assert record.keys[:2] == ["embed_dim", "heads"]
    from ktune.report import build_study, param_importances

    study = build_study(record)
    assert len(study.trials) == 4
    assert all(
        "heads" in t.params and not any(k.startswith("heads_for") for k in t.params)
        for t in study.trials
    )
    importances, why = param_importances(study, record.keys)
    assert importances and not why
    assert sum(importances.values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_tensorboard_logs_have_a_scalar_per_epoch(experiment):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for trial in experiment.glob("trial_*"):
        events = sorted(trial.glob("events.out.tfevents.*"))
        assert events, trial.name
        acc = EventAccumulator(str(events[-1]))
        acc.Reload()
        steps = [e.step for e in acc.Scalars("ray/tune/val_accuracy")]
        assert steps == list(range(1, len(read_history(trial)) + 1))


@pytest.mark.slow
def test_a_restored_trial_with_a_rewritten_result_json(experiment, tmp_path):
    """Ray rewrites result.json when it restores a trial; progress.csv still has every
    epoch, and half a line at the end of a file being written is skipped."""
    trial = max(experiment.glob("trial_*"), key=lambda p: len(read_history(p)))
    copy = tmp_path / trial.name
    shutil.copytree(trial, copy, ignore=shutil.ignore_patterns("checkpoint_*"))
    before = read_history(copy)
    lines = (copy / "result.json").read_text().splitlines()
    (copy / "result.json").write_text(lines[-1] + "\n" + '{"epoch": 3, "val_acc')
    with (copy / "progress.csv").open("a") as f:
        f.write("0.5,0.6,")
    after = read_history(copy)
    assert [r["epoch"] for r in after] == [r["epoch"] for r in before]
    assert [r["val_accuracy"] for r in after] == pytest.approx([r["val_accuracy"] for r in before])
    assert isinstance(after[-1]["config"], dict)  # the JSON row wins where both have it


def test_a_trial_a_resume_replaced_reads_cut_off(experiment, tmp_path):
    """A trial that started after Ray's newest snapshot and was cut off by a crash is
    unknown to the resume, which runs a new trial in its place: the finished search's
    results.csv lacks its folder, and the report reads it as cut off, not running."""
    copy = tmp_path / experiment.name
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("checkpoint_*"))
    trial = max(copy.glob("trial_*"), key=lambda p: len(read_history(p)))
    lost = copy / "trial_0ff0cafe"
    shutil.copytree(trial, lost)
    first = (lost / "result.json").read_text().splitlines()[0]
    (lost / "result.json").write_text(first + "\n")
    (lost / "progress.csv").write_text(
        "\n".join((trial / "progress.csv").read_text().splitlines()[:2])
    )
    from ktune.report.text import status_line

    record = load_experiment(copy)
    statuses = {t.trial: t.status for t in record.trials}
    assert statuses["trial_0ff0cafe"] == "INTERRUPTED"
    assert statuses[trial.name] in ("DONE", "STOPPED")  # the ones results.csv has, as before
    line = status_line(record)
    assert line.startswith("finished: ") and "1 cut off" in line and "running" not in line, line

    # finished, its export cut off (a Ctrl+C during it): the line says so, and how to go on
    spec = json.loads((copy / "ktune.json").read_text())
    best = json.loads((copy / "best.json").read_text())
    (copy / "ktune.json").write_text(json.dumps({**spec, "export": True}))
    (copy / "best.json").write_text(json.dumps({k: v for k, v in best.items() if k != "export"}))
    line = status_line(load_experiment(copy))
    assert line.startswith(
        f"finished (not exported: its export was cut off, or is still being written; "
        f"`ktune resume {copy}` makes it): "
    ), line


@pytest.fixture
def running_copy(experiment, tmp_path) -> Path:
    """The small search as if it were still running: no best.json or results.csv yet, and
    one finished trial cut back to its first epoch and RUNNING in Ray's snapshot."""
    copy = tmp_path / "tiny-running"
    shutil.copytree(
        experiment, copy, ignore=shutil.ignore_patterns("checkpoint_*", "report*", "export")
    )
    for name in ("best.json", "results.csv"):
        (copy / name).unlink()
    trial = max(copy.glob("trial_*"), key=lambda p: len(read_history(p)))
    for name in ("result.json", "progress.csv"):
        lines = (trial / name).read_text().splitlines(keepends=True)
        keep = 1 if name == "result.json" else 2  # progress.csv has a header
        (trial / name).write_text("".join(lines[:keep]))
    for state in copy.glob("experiment_state-*.json"):
        data = json.loads(state.read_text())
        for entry in data["trial_data"]:
            meta = json.loads(entry[0])
            if f"trial_{meta['trial_id']}" == trial.name:
                entry[0] = json.dumps({**meta, "status": "RUNNING"})
        state.write_text(json.dumps(data))
    # its driver: this process, started before any trial (as `ktune run` writes it)
    first = min(float(r["timestamp"]) for t in copy.glob("trial_*") for r in read_history(t))
    driver_file(copy, time=first - 60)
    return copy


def driver_file(exp_dir: Path, **changes) -> dict:
    """driver.json naming this process (running, not ended), with ``changes``."""
    from ktune.driver import identity

    info = {**identity(), "command": "run", "ended": None, **changes}
    (exp_dir / "driver.json").write_text(json.dumps(info))
    return info


@pytest.fixture
def dead_pid():
    """The pid and start time of a process that has been killed (and reaped)."""
    from ktune.driver import _proc_stat

    proc = subprocess.Popen(["sleep", "60"])
    started = _proc_stat(proc.pid)[1]
    proc.kill()
    proc.wait()
    return proc.pid, started


@pytest.mark.slow
def test_a_running_experiment_still_reports(running_copy):
    code, out = run_cli(str(running_copy))
    assert code == 0
    assert f"running (ktune run, pid {os.getpid()}): " in out
    assert "RUNNING" in out and "(so far)" in out
    html_path = running_copy / "report.html"
    text = html_path.read_text(encoding="utf-8")
    assert "measured when the search finishes" in text
    assert not (running_copy / "report-confusion-matrix.png").exists()
    for name in ("report-learning-curves.png", "report-optimization-history.png"):
        assert_png((running_copy / name).read_bytes(), name)
    for _, ref in references(text):
        assert ref.startswith("data:image/png;base64,") or (running_copy / ref).exists()


def test_a_killed_drivers_trials_read_their_last_epochs_from_the_checkpoints(
    experiment, tmp_path, dead_pid
):
    """SIGKILL leaves result.json behind the checkpoints (Ray writes it lazily): the
    report reads the epochs the checkpoints were reported with, as a resume does, so a
    trial that finished reads DONE with its last epoch, not cut off one epoch early."""
    copy = tmp_path / "killed"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("report*", "export"))
    for name in ("best.json", "results.csv"):
        (copy / name).unlink()
    trial = max(copy.glob("trial_*"), key=lambda p: len(read_history(p)))
    full = read_history(trial)
    assert len(full) >= 2 and full[-1]["epoch"] == load_experiment(experiment).epochs
    for name, keep in (("result.json", 1), ("progress.csv", 2)):
        lines = (trial / name).read_text().splitlines(keepends=True)
        (trial / name).write_text("".join(lines[:keep]))
    for state in copy.glob("experiment_state-*.json"):
        data = json.loads(state.read_text())
        for entry in data["trial_data"]:
            entry[0] = json.dumps({**json.loads(entry[0]), "status": "RUNNING"})
        state.write_text(json.dumps(data))
    pid, started = dead_pid
    driver_file(copy, pid=pid, process_start=started)
    record = load_experiment(copy)
    (read,) = [t for t in record.trials if t.trial == trial.name]
    assert read.status == "DONE"
    last = read.history[-1]
    assert (last["epoch"], last["val_accuracy"]) == (full[-1]["epoch"], full[-1]["val_accuracy"])
    # a checkpoint cut short (its weights missing) is not read
    newest = max(trial.glob("checkpoint_*"))
    next(newest.glob("ckpt.data-*")).unlink()
    assert read_history(trial)[-1]["epoch"] < full[-1]["epoch"]


def test_a_search_with_no_finished_trial_yet_reports(running_copy):
    """Every trial still running, and a space the report cannot resolve (an experiment
    file it cannot read, as for a user's own model before the report knew its space):
    the report says so instead of failing on an empty list of choices."""
    for state in running_copy.glob("experiment_state-*.json"):
        data = json.loads(state.read_text())
        for entry in data["trial_data"]:
            entry[0] = json.dumps({**json.loads(entry[0]), "status": "RUNNING"})
        state.write_text(json.dumps(data))
    for trial in running_copy.glob("trial_*"):  # each cut back to its first epoch
        for name, keep in (("result.json", 1), ("progress.csv", 2)):
            lines = (trial / name).read_text().splitlines(keepends=True)
            (trial / name).write_text("".join(lines[:keep]))
    (running_copy / "experiment.yaml").unlink()
    record = load_experiment(running_copy)
    assert record.space == {} and record.keys
    assert {t.status for t in record.trials} == {"RUNNING"}
    code, out = run_cli(str(running_copy))
    assert code == 0, out
    assert "No trial has finished yet" in (running_copy / "report.html").read_text()


@pytest.mark.slow
def test_an_interrupted_experiment_says_so_until_a_resume_trains(running_copy):
    """interrupted.json (written when Ctrl+C or SIGTERM stopped the search): its cut-off
    trials read INTERRUPTED, not RUNNING as Ray saved them; once a trial reports after
    it (a resume trains), the search reads as running again."""
    from ktune.report.load import load_experiment
    from ktune.report.text import status_line

    trials = load_experiment(running_copy).trials
    cut = next(t for t in trials if t.status == "RUNNING")
    # the last report of any trial (CI 2026-12-07: under load another trial reported more
    # than 5 s after the cut-off one, which read as a resume training after the file)
    last = max(float(t.history[-1]["timestamp"]) for t in trials if t.history)
    info = {"signal": "SIGTERM", "finished": 1, "total": 3, "cut_off": [cut.trial]}
    (running_copy / "interrupted.json").write_text(
        json.dumps({**info, "not_started": 1, "time": last + 5})
    )

    record = load_experiment(running_copy)
    assert {t.trial: t.status for t in record.trials}[cut.trial] == "INTERRUPTED"
    line = status_line(record)
    assert line.startswith("interrupted by SIGTERM at "), line
    assert f"`ktune resume {running_copy}` continues it" in line
    assert "1 cut off" in line and "1 not started" in line and "running or" not in line
    code, out = run_cli(str(running_copy))
    assert code == 0 and "INTERRUPTED" in out and "RUNNING" not in out

    # a trial reported after the interruption: a resume is training, the file is stale
    (running_copy / "interrupted.json").write_text(json.dumps({**info, "time": last - 5}))
    record = load_experiment(running_copy)
    assert record.interrupted is None
    assert {t.trial: t.status for t in record.trials}[cut.trial] == "RUNNING"
    assert status_line(record).startswith("running (ktune run, pid ")

    # a resume started after it (its driver.json), before any trial reported: stale too
    (running_copy / "interrupted.json").write_text(json.dumps({**info, "time": last + 5}))
    assert load_experiment(running_copy).interrupted is not None
    driver_file(running_copy, command="resume", time=last + 6)
    record = load_experiment(running_copy)
    assert record.interrupted is None
    assert status_line(record).startswith("running (ktune resume, pid ")


@pytest.mark.slow
def test_a_killed_driver_reads_as_a_crash(experiment, running_copy, dead_pid, tmp_path):
    """driver.json names a process that no longer runs (SIGKILL, out of memory): the
    report says the search crashed and how to resume it, and its running trials were cut
    off; a pid now used by another process, or an earlier boot, reads the same."""
    from ktune.report.load import load_experiment
    from ktune.report.text import status_line

    running = [t.trial for t in load_experiment(running_copy).trials if t.status == "RUNNING"]
    assert running
    pid, started = dead_pid
    driver = json.loads((running_copy / "driver.json").read_text())
    cases = {
        "killed": {"pid": pid, "process_start": started},
        "pid reused": {"process_start": str(int(driver["process_start"]) - 1)},
        "rebooted": {"boot": "an-earlier-boot"},
    }
    for case, changes in cases.items():
        info = driver_file(running_copy, **{**driver, **changes})
        record = load_experiment(running_copy)
        line = status_line(record)
        assert line.startswith(
            f"stopped by a crash: its driver (pid {info['pid']}) was killed "
            f"(`ktune resume {running_copy}` continues it): "
        ), (case, line)
        statuses = {t.trial: t.status for t in record.trials}
        assert all(statuses[t] == "INTERRUPTED" for t in running), (case, statuses)
        assert "RUNNING" not in statuses.values()
    code, out = run_cli(str(experiment), str(running_copy), "--out", str(tmp_path / "c.html"))
    assert code == 0 and out.strip().splitlines()[2].split()[:3] == [
        "tiny-running",
        "transformer",
        "crashed",
    ], out

    # ended (an error in the driver) and another machine: said as such
    driver_file(running_copy, **{**driver, "ended": driver["time"] + 30})
    assert status_line(load_experiment(running_copy)).startswith("stopped by an error at ")
    error = "OSError: [Errno 28] No space left on device"
    driver_file(running_copy, **{**driver, "ended": driver["time"] + 30, "error": error})
    line = status_line(load_experiment(running_copy))
    assert f" ({error}) before it finished (`ktune resume {running_copy}` continues it)" in line
    driver_file(
        running_copy, **{**driver, "ended": driver["time"] + 30, "error": "KeyboardInterrupt"}
    )
    line = status_line(load_experiment(running_copy))
    assert line.startswith("stopped by Ctrl+C at ") and "before it finished (`ktune resume" in line
    driver_file(running_copy, **{**driver, "host": "gpu-node-7"})  # an older ktune's
    line = status_line(load_experiment(running_copy))
    assert line.startswith("running on gpu-node-7 (or stopped by a crash there"), line


def test_another_machines_driver_is_told_by_its_heartbeat(experiment, running_copy, tmp_path):
    """A driver on another machine (a laptop reading a cluster's storage): running while
    its heartbeat is current, stopped once it missed them (its trials as Ray saved them:
    this machine cannot tell a crash from a lost connection, and says both)."""
    from ktune.driver import SILENT_MIN_S, refuse_while_running
    from ktune.report.load import load_experiment
    from ktune.report.text import _clock, status_line

    driver = json.loads((running_copy / "driver.json").read_text())
    now = time.time()
    there = {**driver, "host": "gpu-node-7", "pid": 4242, "heartbeat_s": 60.0, "time": now - 3600}
    driver_file(running_copy, **there, alive=now - 30)
    record = load_experiment(running_copy)
    line = status_line(record)
    assert line.startswith("running on gpu-node-7 (ktune run, pid 4242; alive 3"), line
    assert record.count("RUNNING") == 1

    alive = now - SILENT_MIN_S - 60
    driver_file(running_copy, **there, alive=alive)
    record = load_experiment(running_copy)
    line = status_line(record)
    assert line.startswith(
        "stopped by a crash on gpu-node-7, or cut off from the storage: no sign of life from "
        f"its driver (pid 4242) since {_clock(alive)} (`ktune resume "
        f"{running_copy}` continues it)"
    ), line
    assert record.count("RUNNING") == 1
    refuse_while_running(running_copy, str(running_copy))  # silent: a resume may go on
    code, out = run_cli(str(experiment), str(running_copy), "--out", str(tmp_path / "c.html"))
    assert code == 0 and out.strip().splitlines()[2].split()[2] == "crashed?", out


@pytest.mark.slow
def test_resume_refuses_while_the_search_runs(running_copy, capsys):
    """Two drivers on one folder would mix their state: while the driver driver.json
    names still runs, `ktune resume` is one line, exit 2, and changes nothing."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        from ktune.driver import _proc_stat

        driver_file(running_copy, pid=sleeper.pid, process_start=_proc_stat(sleeper.pid)[1])
        before = {p: p.stat().st_mtime_ns for p in running_copy.rglob("*")}
        assert main(["resume", str(running_copy)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert f"its search is still running (ktune run, pid {sleeper.pid}" in err[0]
        assert {p: p.stat().st_mtime_ns for p in running_copy.rglob("*")} == before
        # another machine's driver, its heartbeat current: refused the same way
        now = time.time()
        there = {"host": "gpu-node-7", "pid": 4242, "heartbeat_s": 60.0, "time": now - 3600}
        driver_file(running_copy, **there, alive=now - 30)
        before = {p: p.stat().st_mtime_ns for p in running_copy.rglob("*")}
        assert main(["resume", str(running_copy)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "its search is still running on gpu-node-7 (ktune run, pid 4242; alive 3" in err[0]
        assert "counts as stopped" in err[0], err
        assert {p: p.stat().st_mtime_ns for p in running_copy.rglob("*")} == before
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_compare_lists_every_experiment(experiment, running_copy, tmp_path):
    out_file = tmp_path / "compare.html"
    code, out = run_cli(str(experiment), str(running_copy), "--out", str(out_file))
    assert code == 0
    text = out_file.read_text(encoding="utf-8")
    table = out.strip().splitlines()
    assert table[0].split()[:3] == ["experiment", "family", "status"]
    assert table[1].split()[:3] == ["tiny", "transformer", "finished"]
    assert table[2].split()[:3] == ["tiny-running", "transformer", "running"]
    best = json.loads((experiment / "best.json").read_text())
    assert f"{best['test_accuracy']:.4f}" in table[1]
    for path in (experiment, running_copy):
        assert str(path) in text
    images = [v for tag, v in references(text) if tag == "img"]
    assert len(images) == 1 and images[0].startswith("data:image/png;base64,")
    assert table[-1] == f"comparison: {out_file}"


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install -y chromium)")
    html_path, _ = report
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1280,4000",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot)
    assert image.size == (1280, 4000)
    # not a blank page: the rendered report has many distinct colours (plots, tables)
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 500


def test_a_new_experiment_without_trials_reports(tmp_path, capsys):
    d = tmp_path / "fresh"
    d.mkdir()
    (d / "ktune.json").write_text(
        json.dumps(
            {
                "name": "fresh",
                "family": "transformer",
                "metric": "val_accuracy",
                "mode": "max",
                "num_samples": 3,
                "training": {"epochs": 2},
                "class_names": ["a", "b"],
            }
        )
    )
    assert main(["report", str(d)]) == 0
    out = capsys.readouterr().out
    assert "0/3 trials finished" in out and "no trial has reported an epoch yet" in out
    text = (d / "report.html").read_text()
    assert "<img" not in text and "No trial has reported an epoch yet" in text


@pytest.mark.parametrize("make", ["missing", "not-ktune", "one-bad-of-two"])
def test_bad_directories_are_one_line_and_exit_2(tmp_path, capsys, make):
    good = tmp_path / "good"
    good.mkdir()
    (good / "ktune.json").write_text(json.dumps({"name": "good", "training": {"epochs": 1}}))
    bad = tmp_path / "bad"
    if make == "not-ktune":
        bad.mkdir()
    args = [str(bad)] if make != "one-bad-of-two" else [str(good), str(bad)]
    out_file = tmp_path / "cmp.html"
    assert main(["report", *args, "--out", str(out_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ktune: error:") and str(bad) in err[0]
    assert not out_file.exists() and not (good / "report.html").exists()


def _fresh_experiment(d: Path, name: str) -> Path:
    d.mkdir()
    spec = {"name": name, "family": "transformer", "num_samples": 2, "training": {"epochs": 2}}
    (d / "ktune.json").write_text(json.dumps(spec))
    return d


def test_the_library_returns_its_summary_and_prints_nothing(tmp_path, capsys):
    from ktune.report import compare_experiments, write_report

    a = _fresh_experiment(tmp_path / "a", "a")
    b = _fresh_experiment(tmp_path / "b", "b")
    written = write_report(load_experiment(a), a / "report.html")
    compared = compare_experiments([load_experiment(a), load_experiment(b)], tmp_path / "c.html")
    assert capsys.readouterr().out == ""
    assert written.path == a / "report.html" and written.path.is_file() and written.images == []
    assert written.text.startswith("experiment a (transformer) at ")
    assert written.text.splitlines()[-1] == f"report: {a / 'report.html'}  (0 images beside it)"
    lines = compared.text.splitlines()
    assert compared.path.is_file() and lines[-1] == f"comparison: {tmp_path / 'c.html'}"
    assert [ln.split()[:4] for ln in lines[1:3]] == [
        ["a", "transformer", "running", "0/2"],
        ["b", "transformer", "running", "0/2"],
    ]
    # what `ktune report` prints is exactly what the library returned
    assert main(["report", str(a)]) == 0
    assert (
        capsys.readouterr().out == write_report(load_experiment(a), a / "report.html").text + "\n"
    )


def test_cli_log_lines_follow_sys_stderr_after_main_returned(tmp_path):
    """A notebook or test swaps ``sys.stderr``; a later log line (a data-loading thread's)
    goes to the stream of the moment, not to the closed one ``main()`` first saw."""
    import logging

    first = io.StringIO()
    with contextlib.redirect_stderr(first):
        assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing" in first.getvalue()
    first.close()
    second = io.StringIO()
    with contextlib.redirect_stderr(second):
        logging.getLogger("ktune").info("after the swap")
    assert second.getvalue() == "ktune: after the swap\n"


def test_the_driver_record_is_marked_ended_with_what_stopped_it(tmp_path):
    """driver_marked (ktune run's and resume's): running while the search runs, then
    ended with the error that escaped it (re-raised as it was), or ended without one."""
    from ktune.driver import driver_marked, driver_state, read_driver

    with pytest.raises(OSError, match="No space left"):
        with driver_marked(tmp_path, "run") as info:
            assert driver_state(read_driver(tmp_path)) == "running"
            assert info["pid"] == os.getpid()
            raise OSError(28, "No space left on device")
    info = read_driver(tmp_path)
    assert driver_state(info) == "ended" and info["ended"] >= info["time"]
    assert info["error"] == "OSError: [Errno 28] No space left on device"
    with driver_marked(tmp_path, "resume"):
        pass
    info = read_driver(tmp_path)
    assert info["command"] == "resume" and driver_state(info) == "ended"
    assert "error" not in info
    with pytest.raises(KeyboardInterrupt):  # Ctrl+C outside Tune's loop: no message
        with driver_marked(tmp_path, "run"):
            raise KeyboardInterrupt
    assert read_driver(tmp_path)["error"] == "KeyboardInterrupt"


def test_a_running_driver_beats_until_it_ends(tmp_path):
    """While the search runs, driver.json is rewritten (``alive``) and uploaded every
    heartbeat; once it is marked ended no beat follows (it would unmark it)."""
    from ktune.driver import driver_marked, last_alive, read_driver

    pushed = []
    with driver_marked(tmp_path, "run", push=lambda: pushed.append(time.time()), heartbeat_s=0.2):
        time.sleep(0.9)
        info = read_driver(tmp_path)
        assert info["heartbeat_s"] == 0.2 and info["ended"] is None
        assert last_alive(info) > info["time"] + 0.3
        assert len(pushed) >= 3
    ended = (tmp_path / "driver.json").read_bytes()
    beats = len(pushed)
    time.sleep(0.6)
    assert (tmp_path / "driver.json").read_bytes() == ended
    assert len(pushed) == beats and read_driver(tmp_path)["ended"] >= last_alive(info)


def test_out_never_replaces_a_file_ktune_did_not_write(tmp_path, capsys):
    """--out pointed at an export's saved_model.pb, an experiment's best.json or a page of
    the user's: one line, exit 2, the file untouched; a report ktune wrote is replaced."""
    exp = _fresh_experiment(tmp_path / "a", "a")
    (exp / "best.json").write_text('{"trial": "t"}')
    users = tmp_path / "notes.html"
    users.write_text("<!DOCTYPE html><html><title>my notes</title></html>")
    for target, says in [
        (exp / "best.json", "--out names the HTML file to write (.html)"),
        (tmp_path / "saved_model.pb", "--out names the HTML file to write (.html)"),
        (users, "exists and is not a page ktune wrote"),
    ]:
        before = target.read_bytes() if target.exists() else None
        assert main(["report", str(exp), "--out", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and str(target) in err[0], err
        assert (target.read_bytes() if target.exists() else None) == before
    mine = tmp_path / "mine.html"
    assert main(["report", str(exp), "--out", str(mine)]) == 0
    first = mine.read_bytes()
    assert main(["report", str(exp), "--out", str(mine)]) == 0  # its own page: replaced
    assert mine.read_bytes().startswith(b"<!DOCTYPE html>") and len(first) > 0
    compared = tmp_path / "c.html"
    b = _fresh_experiment(tmp_path / "b", "b")
    for _ in range(2):  # a comparison page is ktune's too
        assert main(["report", str(exp), str(b), "--out", str(compared)]) == 0


def test_a_resumes_wall_time_says_it_is_the_resumes(tmp_path):
    from ktune.report.text import summary_text

    exp = _fresh_experiment(tmp_path / "a", "a")
    best = {"trial": "trial_x", "metrics": {"val_accuracy": 0.5}, "wall_time_s": 30.0}
    (exp / "best.json").write_text(json.dumps(best))
    assert load_experiment(exp).wall_time() == (30.0, "driver")
    assert "wall time 30s\n" in summary_text(load_experiment(exp), {}) + "\n"
    (exp / "best.json").write_text(json.dumps({**best, "wall_time_of": "resume"}))
    record = load_experiment(exp)
    assert record.wall_time() == (30.0, "resume")
    assert (
        "wall time 30s (the resume that finished it; not the run it continued, cut short "
        "by a crash or a stop)" in summary_text(record, {})
    )


def test_the_comparison_marks_an_ensembles_test_accuracy(tmp_path):
    from ktune.report.compare import compare_rows

    a = _fresh_experiment(tmp_path / "a", "a")
    b = _fresh_experiment(tmp_path / "b", "b")
    best = {"trial": "trial_x", "metrics": {"val_accuracy": 0.5}, "test_accuracy": 0.6}
    (a / "best.json").write_text(json.dumps({**best, "ensemble": {"seeds": [0, 1, 2]}}))
    (b / "best.json").write_text(json.dumps(best))
    header, rows = compare_rows([load_experiment(a), load_experiment(b)])
    column = header.index("test_accuracy")
    assert [row[column] for row in rows] == ["0.6000 (ensemble of 3)", "0.6000"]


@pytest.mark.slow
def test_a_trial_cut_off_before_ray_wrote_its_files_shows_its_checkpoints_config(
    experiment, tmp_path
):
    """A trial a kill cut off before Ray wrote its params.json and results (one Ray's
    snapshot never knew, which the resume replaced): its config comes from its
    checkpoint's ktune_trial.json, not a row of dashes."""
    from ktune.report.load import load_experiment

    copy = tmp_path / "with-orphan"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("report*", "export"))
    source = next(c for c in sorted(copy.glob("trial_*/checkpoint_*")))
    orphan = copy / "trial_0rphan00" / "checkpoint_000000"
    shutil.copytree(source, orphan)
    config = json.loads((orphan / "ktune_trial.json").read_text())["config"]
    assert config
    record = {t.trial: t for t in load_experiment(copy).trials}
    assert record["trial_0rphan00"].status == "INTERRUPTED"
    assert record["trial_0rphan00"].config == config
