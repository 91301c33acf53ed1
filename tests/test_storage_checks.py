"""A local storage or export.dir that cannot be written is one line before any work starts.

``check_targets`` runs before the data loads and before Ray starts, so none of these
tests starts Ray: each asserts it is still not running.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import yaml

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TF)
from ktune import storage
from ktune.cli import main
from ktune.config import parse_config
from ktune.errors import ExperimentError
from ktune.experiment import check_targets

from conftest import tiny_experiment


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under ``root``: (mode, mtime_ns, contents of a file)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (
            st.st_mode,
            st.st_mtime_ns,
            p.read_bytes() if p.is_file() else None,
        )
    return out


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


# In the whole suite another module's tests may have started the shared Ray already:
# what counts is that these refusals do not start it.
_RAY_BEFORE = {"started": None}


@pytest.fixture(autouse=True)
def _ray_state():
    _RAY_BEFORE["started"] = _ray_started()
    yield


def _ray_untouched() -> bool:
    return _ray_started() == _RAY_BEFORE["started"]


def _refused(cfg_dict: dict, match: str) -> str:
    with pytest.raises(ExperimentError, match=match) as info:
        check_targets(parse_config(cfg_dict))
    message = str(info.value)
    assert "\n" not in message, message
    assert _ray_untouched()
    return message


def test_storage_that_is_a_file_names_storage(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    msg = _refused(tiny_experiment(tmp_path), r"^storage: ")
    assert str(tmp_path / "results") in msg
    assert "is a file, not a folder" in msg
    assert (tmp_path / "results").read_text() == "not a folder"


def test_storage_under_a_file_names_the_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    cfg = tiny_experiment(tmp_path, storage=str(tmp_path / "plain" / "deeper" / "results"))
    msg = _refused(cfg, r"^storage: cannot create ")
    assert f"{tmp_path / 'plain'} is a file, not a folder" in msg


def test_experiment_folder_that_is_a_file_names_storage(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tiny").write_text("x")  # <storage>/<name>
    msg = _refused(tiny_experiment(tmp_path), r"^storage: ")
    assert f"{tmp_path / 'results' / 'tiny'} is a file, not a folder" in msg


def test_storage_on_a_device_is_not_a_folder(tmp_path):
    msg = _refused(tiny_experiment(tmp_path, storage="/dev/null"), r"^storage: ")
    assert "/dev/null is not a file or folder, not a folder" in msg


def test_export_dir_under_a_file_names_export_dir(tmp_path):
    (tmp_path / "plain").write_text("x")
    cfg = tiny_experiment(tmp_path, export={"dir": str(tmp_path / "plain" / "export")})
    msg = _refused(cfg, r"^export\.dir: cannot create ")
    assert f"{tmp_path / 'plain'} is a file" in msg


def test_export_dir_that_exists_is_still_refused_as_taken(tmp_path):
    (tmp_path / "plain").write_text("x")
    cfg = tiny_experiment(tmp_path, export={"dir": str(tmp_path / "plain")})
    _refused(cfg, r"export target already exists")


def test_export_dir_under_a_file_is_ignored_when_export_is_off(tmp_path):
    (tmp_path / "plain").write_text("x")
    cfg = tiny_experiment(
        tmp_path, export={"enabled": False, "dir": str(tmp_path / "plain" / "export")}
    )
    check_targets(parse_config(cfg))  # nothing to write there


def test_a_full_disk_names_storage_and_the_free_space(tmp_path, monkeypatch):
    # No full disk to hand: ask for more than any disk has instead.
    monkeypatch.setattr(storage, "MIN_FREE_BYTES", 2**62)
    msg = _refused(tiny_experiment(tmp_path), r"^storage: only \d+ MB free on the disk of ")
    assert str(tmp_path) in msg
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_a_folder_without_write_permission_names_storage(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        cfg = tiny_experiment(tmp_path, storage=str(locked / "results"))
        msg = _refused(cfg, r"^storage: cannot write in ")
        assert "permission denied" in msg
    finally:
        locked.chmod(0o700)


def test_a_usable_storage_passes_and_touches_nothing(tmp_path):
    check_targets(parse_config(tiny_experiment(tmp_path, storage=str(tmp_path / "a" / "b"))))
    assert list(tmp_path.iterdir()) == []


# --- through the CLI: exit code 2, one line, nothing written ----------------------------


def _write_experiment(tmp_path: Path, **over) -> Path:
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(tiny_experiment(tmp_path, **over)), encoding="utf-8")
    return exp


def test_cli_run_with_storage_a_file_exits_2_and_writes_nothing(tmp_path, capsys):
    exp = _write_experiment(tmp_path)
    (tmp_path / "results").write_text("keep me")
    before = _snapshot(tmp_path)
    assert main(["run", str(exp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("ktune: error: storage: ")
    assert "is a file, not a folder" in err[0]
    assert _snapshot(tmp_path) == before
    assert _ray_untouched()


def test_cli_run_with_storage_flag_under_a_file_exits_2(tmp_path, capsys):
    exp = _write_experiment(tmp_path)
    (tmp_path / "plain").write_text("x")
    before = _snapshot(tmp_path)
    assert main(["run", str(exp), "--storage", str(tmp_path / "plain" / "runs")]) == 2
    err = capsys.readouterr().err
    assert "storage: cannot create " in err and "is a file" in err
    assert _snapshot(tmp_path) == before
    assert _ray_untouched()


def test_cli_run_refuses_storage_that_is_an_experiment(tmp_path, capsys):
    """`--storage results/quickstart` (an experiment, not a folder of experiments) would
    put the new run inside it: refused, naming the folder one level up."""
    exp = _write_experiment(tmp_path)
    done = tmp_path / "results" / "quickstart"
    done.mkdir(parents=True)
    (done / "ktune.json").write_text("{}")
    before = _snapshot(tmp_path)
    assert main(["run", str(exp), "--storage", str(done)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ktune: error: storage: {done} is an experiment's folder (ktune.json), not a folder "
        f"of experiments; this run would land inside it (use --storage {done.parent})"
    ]
    assert _snapshot(tmp_path) == before
    assert _ray_untouched()


def test_cli_run_never_touches_an_existing_folder_of_results(tmp_path, capsys):
    exp = _write_experiment(tmp_path)
    done = tmp_path / "results" / "tiny"
    (done / "trial_0").mkdir(parents=True)
    (done / "best.json").write_text('{"best": 1}')
    (done / "results.csv").write_text("trial,val_accuracy\n0,0.9\n")
    (done / "trial_0" / "result.json").write_text("{}")
    before = _snapshot(tmp_path)
    assert main(["run", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "experiment directory already exists" in err
    assert _snapshot(tmp_path) == before
    assert _ray_untouched()


def test_a_second_run_of_an_experiment_that_is_starting_is_refused(tmp_path, capsys):
    """Two ``ktune run`` of one experiment started together (a double Enter, a retried
    job) both passed the empty-folder check, then trained into one folder, one study and
    one export (an audit: 8 trials in a 4-trial folder, best.json naming one trial and
    the export another). The first run claims the folder as it starts: the second is one
    line naming the first's process, exit 2, before any work; the claim is gone once the
    first run's start-up ends."""
    from ktune.driver import CLAIM_FILE, claimed

    exp = _write_experiment(tmp_path)
    exp_dir = tmp_path / "results" / "tiny"
    with claimed(exp_dir):  # the first run, starting (Ray, data)
        assert [p.name for p in exp_dir.iterdir()] == [CLAIM_FILE]
        before = _snapshot(tmp_path)
        assert main(["run", str(exp)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"ktune: error: {exp_dir}: another ktune run (pid {os.getpid()} on "
            f"{socket.gethostname()}) is starting this experiment; ktune never lets two "
            "runs write one folder (choose another name or --storage)"
        ]
        assert _snapshot(tmp_path) == before
        assert _ray_untouched()
        # its files written, the first run's start-up ends
        (exp_dir / "ktune.json").write_text("{}")
    assert [p.name for p in exp_dir.iterdir()] == ["ktune.json"]
    assert main(["run", str(exp)]) == 2
    assert "experiment directory already exists" in capsys.readouterr().err


def test_the_claim_of_a_run_killed_while_it_started_is_taken_over(tmp_path):
    """A claim whose process is gone (SIGKILL during the start-up) blocks nothing: the
    next run takes it over. A start-up that fails removes its claim and the folders it
    made. A run that claims after another run's start-up ended (its files in the
    folder) is refused as the folder being taken."""
    import json
    import subprocess

    from ktune.driver import CLAIM_FILE, claimed, identity

    exp_dir = tmp_path / "results" / "tiny"
    exp_dir.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = {**identity(), "pid": gone.pid, "process_start": "0", "ended": None}
    (exp_dir / CLAIM_FILE).write_text(json.dumps(dead))
    check_targets(parse_config(tiny_experiment(tmp_path)))  # a claim alone: not taken
    with claimed(exp_dir):
        claim = json.loads((exp_dir / CLAIM_FILE).read_text())
        assert claim["pid"] == os.getpid()
    assert list(exp_dir.iterdir()) == []  # the claim goes with the start-up

    fresh = tmp_path / "elsewhere" / "runs" / "tiny"
    with pytest.raises(RuntimeError, match="Ray did not start"), claimed(fresh):
        raise RuntimeError("Ray did not start")
    assert not (tmp_path / "elsewhere").exists()  # nothing blocks a re-run

    (exp_dir / "ktune.json").write_text("{}")  # a run whose start-up ended first
    with pytest.raises(ExperimentError, match="experiment directory already exists"):
        with claimed(exp_dir):
            pass
    assert [p.name for p in exp_dir.iterdir()] == ["ktune.json"]


def test_ray_that_cannot_start_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """A RAY_TMPDIR too long for Ray's socket paths: one line saying what to do, exit 2,
    and no half-made experiment folder blocks the re-run (it then starts normally)."""
    import subprocess

    from conftest import REPO, subprocess_env

    exp = _write_experiment(tmp_path)
    long_tmp = Path("/tmp") / ("k" * 110)
    long_tmp.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "ktune", "run", str(exp)],
        capture_output=True,
        text=True,
        env={**subprocess_env(), "RAY_TMPDIR": str(long_tmp)},
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ktune: error:")]
    assert len(errors) == 1 and "RAY_TMPDIR" in errors[0] and "107 bytes" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results" / "tiny").exists()  # nothing blocks the same name


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS", "not an address"])
def test_a_cluster_that_does_not_answer_is_one_line_before_any_work(tmp_path, how):
    """An address nobody listens on: ray.init would retry it for minutes, printing as it
    goes; ktune says so in one line, exit 2, before loading data or writing anything."""
    import socket
    import subprocess
    import time

    from conftest import REPO, subprocess_env

    exp = _write_experiment(tmp_path)
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args, env = ["run", str(exp)], subprocess_env()
    if how == "--address":
        args += ["--address", f"127.0.0.1:{port}"]
    elif how == "RAY_ADDRESS":
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    else:
        args += ["--address", "head-node"]
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "ktune", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ktune: error:")]
    name = "RAY_ADDRESS" if how == "RAY_ADDRESS" else "--address"
    assert len(errors) == 1 and errors[0].startswith(f"ktune: error: {name} "), done.stderr
    assert ("not an address" if how == "not an address" else "cannot connect") in errors[0]
    assert "data:" not in done.stderr and "Traceback" not in done.stderr
    assert time.time() - started < 60
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_two_local_searches_at_once_each_get_their_own_ray(tmp_path):
    """Two `ktune run` on one machine at the same time: each starts its own Ray (its own
    dashboard port), both finish, neither prints a traceback."""
    import subprocess

    from conftest import REPO, subprocess_env

    runs = []
    for name in ("first", "second"):
        raw = tiny_experiment(tmp_path, export={"enabled": False})
        raw["name"] = name
        raw["search"].update(num_samples=1, max_concurrent_trials=1)
        raw["resources"]["cpu"] = 1
        exp = tmp_path / f"{name}.yaml"
        exp.write_text(yaml.safe_dump(raw))
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ktune", "run", str(exp)],
                cwd=REPO,
                env=subprocess_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    urls = [
        ln.split("Ray dashboard: ")[1].strip()
        for out in outputs
        for ln in out.splitlines()
        if "Ray dashboard: " in ln
    ]
    assert len(urls) == 2 and urls[0] != urls[1]
    for out in outputs:
        assert "Traceback" not in out and "failed to start" not in out
    assert (tmp_path / "results" / "first" / "best.json").is_file()
    assert (tmp_path / "results" / "second" / "best.json").is_file()


# Ray's processes under this one, by name; a process that ends while it is looked at is
# left out (it ended: tests/test_interrupt.py saw psutil.NoSuchProcess there in CI).
_NAMED = r"""
import psutil

def named(parent, prefix, recursive=True):
    found = []
    for child in parent.children(recursive=recursive):
        try:
            if child.name().startswith(prefix):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found

def raylet():
    return named(psutil.Process(), "raylet")[0]
"""

_OWN_RAY = (
    _NAMED
    + r"""
import os
import time
import psutil, ray
from ktune.ray_start import init_ray

init_ray(None)
time.sleep(2)  # Ray's first-driver workers start within a second of ray.init
idle = named(raylet(), "ray::IDLE", recursive=False)
print("IDLE", len(idle))


@ray.remote
class Trial:  # Tune's trials are actors: what the worker's process started with
    def started_with(self, name):
        environ = open("/proc/self/environ", "rb").read().decode().split("\0")
        return [e.partition("=")[2] for e in environ if e.startswith(name + "=")]


print("WORKER", ray.get(Trial.remote().started_with.remote("MALLOC_ARENA_MAX")))
print("DRIVER", os.environ.get("MALLOC_ARENA_MAX"))
ray.shutdown()
"""
)


def test_own_ray_starts_no_idle_workers_and_trial_workers_with_two_malloc_arenas():
    """A Ray of a search's own starts no idle task workers beside it (Ray's default is one
    per CPU for the first driver; a search runs only actors, which never reuse them). Its
    workers start with ``MALLOC_ARENA_MAX=2`` (``trial_worker_env``: a reused worker's
    memory stays flat from trial to trial); the driver's environment is left alone."""
    lines = _own_ray_script(_OWN_RAY)
    assert "IDLE 0" in lines, "no line IDLE 0"
    assert "WORKER ['2']" in lines and "DRIVER None" in lines, lines


def _own_ray_script(script: str) -> list[str]:
    """The lines ``script`` prints in a fresh Python (a Ray of its own, none joined)."""
    import subprocess

    from conftest import REPO, subprocess_env

    env = {k: v for k, v in subprocess_env().items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    print(done.stdout)
    return done.stdout.splitlines()


_RELEASED = (
    _NAMED
    + r"""
import psutil, ray
from ktune.ray_start import init_ray, released_after_trials, trials_done

def gone(p):
    return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE

with released_after_trials():
    init_ray(None)
    own = raylet()
    trials_done()
print("OWN", ray.is_initialized(), gone(own))

init_ray(None)  # started before the command: a Ray the command did not start
before = raylet()
with released_after_trials():
    init_ray(None)
    trials_done()
trials_done()  # and outside any command
print("BEFORE", ray.is_initialized(), gone(before))
ray.shutdown()
"""
)


def test_a_command_stops_its_own_ray_once_the_trials_are_done_and_no_other():
    """``ktune run`` / ``resume`` stop the Ray they started while the driver evaluates and
    exports (released_after_trials + trials_done) and wait for it on the way out; a Ray
    running before the command, or one outside a command, stays up."""
    lines = _own_ray_script(_RELEASED)
    assert "OWN False True" in lines and "BEFORE True False" in lines, lines
