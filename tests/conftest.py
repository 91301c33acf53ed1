"""Shared fixtures: one local Ray for the whole session, tiny experiments, seeding."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray import tune

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

REPO = Path(__file__).resolve().parents[1]


# The longest files (seconds in the fresh-clone CI of 2026-12-07 on a 2-core AMD EPYC,
# 366 down to 167), run first: `make test` hands whole files to its 2 processes in
# collection order, so that the last file each one takes is a short one and both end
# together. Speed only: a file missing here runs in its usual place.
LONGEST_FIRST = (
    "test_interrupt.py",
    "test_storage.py",
    "test_crash_windows.py",
    "test_ensemble.py",
    "test_resume.py",
    "test_pbt.py",
    "test_plugin.py",
    "test_jobs.py",
)


def pytest_collection_modifyitems(config, items):
    """The longest files first (``LONGEST_FIRST``; a file's tests keep their order).

    Tests marked ``download`` need the network: pyproject's ``-m 'not download'``
    deselects them, and a ``-m`` of one's own that does not name them (``-m 'not slow'``)
    replaces that expression, so they are skipped here instead of failing offline.
    ``-m download`` and ``make test-all`` (``-m ""``) run them."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
    markexpr = config.option.markexpr or ""
    if not markexpr or "download" in markexpr:
        return
    skip = pytest.mark.skip(reason="needs downloads: run with -m download (make test-all)")
    for item in items:
        if item.get_closest_marker("download"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray (2 CPUs), started once and shared by every test that needs one."""
    import ray

    import ktune

    if not ray.is_initialized():
        ray.init(
            address="local",  # a new Ray, never one another process started on this machine
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": ktune.worker_env()},  # as ktune's own Ray
        )
    yield ray
    ray.shutdown()


def kill_ray_under(temp_dir: str) -> None:
    """SIGKILLs every process of the Ray instance whose session lives under ``temp_dir``.

    Found by the ``RAY_TMPDIR`` every Ray process inherits from the driver (command lines
    do not do: Ray renames its workers' process titles to ``ray::ImplicitFunc...``).
    Repeats until none is left, so no trial writes to the storage after the "crash".
    """
    marker = f"RAY_TMPDIR={temp_dir}".encode()
    for _ in range(50):
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


@pytest.fixture
def ray_tmp():
    """A short folder under /tmp (Ray's socket paths are long) for the ``RAY_TMPDIR`` and
    ``TMPDIR`` of runs a test kills: their Ray session and the temporary folders a killed
    process never removes (a checkpoint being reported) stay inside it. Afterwards every
    process of that Ray is killed and the folder removed."""
    temp = tempfile.mkdtemp(prefix="ktk-", dir="/tmp")
    yield temp
    kill_ray_under(temp)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """``tiny_setup(family)``: the family's tiny local models (its ``ktune.testing`` hook),
    written once per session and shared by the contract suite and the family's own tests."""
    from ktune.testing import tiny_setup as write

    made: dict = {}

    def get(family: str):
        if family not in made:
            made[family] = write(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return made[family]

    return get


@pytest.fixture
def seeded():
    import tf_keras as keras

    keras.utils.set_random_seed(0)


class CtrlC(tune.Callback):
    """Sends this process a real SIGINT (what Ctrl+C sends) from Tune's loop in the driver:
    at the first epoch a trial reports (``at="result"``: that trial is cut off mid-way) or
    when the first trial ends (``at="complete"``: no trial is running, the next ones are
    not created yet)."""

    def __init__(self, at: str):
        self.at = at
        self.trial: str | None = None

    def _send(self, trial) -> None:
        if self.trial is None:
            self.trial = f"trial_{trial.trial_id}"
            os.kill(os.getpid(), signal.SIGINT)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.at == "result":
            self._send(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.at == "complete":
            self._send(trial)


def wait_for_first_epoch(exp_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Waits until a trial of ``exp_dir`` has a checkpoint on storage, while ``proc`` (the
    run reporting it) is still alive."""
    deadline = time.time() + timeout
    while not list(exp_dir.glob("trial_*/checkpoint_*/ckpt.index")):
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr and not proc.stderr.closed else ""
            pytest.fail(f"no epoch before the run ended (exit {proc.returncode}): {err[-3000:]}")
        assert time.time() < deadline, f"no epoch in {timeout} s"
        time.sleep(0.2)


def journal_study(exp_dir: Path, name: str):
    """The Optuna study of a search, read from its folder's ``optuna.journal``."""
    import optuna

    return optuna.load_study(
        study_name=name,
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(exp_dir / "optuna.journal"))
        ),
    )


def tiny_experiment(tmp_path: Path, **over) -> dict:
    """An experiment file as a dict: builtin data, a tiny space, seconds per trial."""
    cfg = {
        "name": "tiny",
        "family": "transformer",
        "data": {"source": "builtin", "train_size": 2000, "test_size": 120, "seed": 3},
        "search": {
            "num_samples": 3,
            "max_concurrent_trials": 2,
            "scheduler": "asha",
            "seed": 0,
            "space": {
                "embed_dim": [8, 16],
                "heads": [1, 2],
                "ff_dim": [8],
                "learning_rate": {"low": 8e-3, "high": 2e-2, "log": True},
                "num_blocks": [1],
            },
        },
        "training": {"epochs": 2, "batch_size": 32, "maxlen": 24, "vocab_size": 400},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": str(tmp_path / "results"),
        "export": {"enabled": True},
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


def ktune_run_in_its_own_group(
    exp: Path, ray_tmp: str, *, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **env: str
) -> tuple[subprocess.Popen, dict]:
    """``ktune run EXP`` in its own process group (a terminal's foreground job: Ctrl+C
    signals all of it; killing the group is a machine's crash), its Ray and temporary
    folders under ``ray_tmp``, ``env`` added: (the process, the environment it runs in)."""
    env = {**subprocess_env(), "RAY_TMPDIR": ray_tmp, "TMPDIR": ray_tmp, **env}
    run = subprocess.Popen(
        [sys.executable, "-m", "ktune", "run", str(exp)],
        cwd=REPO,
        env=env,
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )
    return run, env


def first_asha_stop(run: subprocess.Popen) -> tuple[str, int] | None:
    """(trial, epoch) of the first "stopped early (ASHA)" line of ``run``'s output (read
    up to it), or None when the run ended without one."""
    for line in run.stdout:
        found = re.search(r"(trial_\w+) stopped early \(ASHA\) after epoch (\d)", line)
        if found:
            return found.group(1), int(found.group(2))
    return None


def ktune_cli(
    *args: str, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """The ``ktune`` command in a subprocess, run from the checkout (``env``: the
    environment, by default :func:`subprocess_env`'s)."""
    return subprocess.run(
        [sys.executable, "-m", "ktune", *args],
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        cwd=REPO,
        timeout=timeout,
    )


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


_RELOAD = (
    "import json, sys, tensorflow as tf\n"
    "try:\n"
    "    import tensorflow_text  # BERT exports tokenize with its ops\n"
    "except ImportError:\n"
    "    pass\n"
    "fn = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
    "out = fn(tf.constant(json.loads(sys.argv[2])))\n"
    "assert 'ktune' not in sys.modules\n"
    "print(json.dumps({'probabilities': out['probabilities'].numpy().tolist(),"
    " 'label': [x.decode() for x in out['label'].numpy()]}))\n"
)


def reload_in_fresh_process(export_dir: str | Path, texts: list[str]) -> dict:
    """Calls an export's serving_default from a new Python process that never imports ktune."""
    done = subprocess.run(
        [sys.executable, "-c", _RELOAD, str(export_dir), json.dumps(texts)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_script_for_result(script: str, *args: str, timeout: int = 600) -> dict:
    """Runs ``script`` in its own Python process; returns the JSON it printed after 'RESULT '."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def assert_checkpoints_hold_their_results(exp_dir: Path) -> int:
    """Every checkpoint Ray keeps for a trial holds the weights it was reported with:
    restored, it scores the val_loss and val_accuracy recorded beside it, on the
    validation split read again. A resume that writes one epoch into another epoch's
    folder breaks this and nothing else (CI 2026-12-06). Returns the number checked."""
    from ktune.config import TrainingConfig
    from ktune.data import load_data
    from ktune.experiment import spec_data
    from ktune.experiment_dir import read_spec
    from ktune.rebuild import family_of_record, restore_from_record
    from ktune.results import evaluate_model

    spec = read_spec(exp_dir)
    data = load_data(spec_data(spec))
    family, training = family_of_record(spec), TrainingConfig(**spec["training"])
    checked = 0
    for result in ktune.load(exp_dir).grid:
        for checkpoint, metrics in result.best_checkpoints:
            model = restore_from_record(family, result.config, spec, checkpoint.path)
            got = evaluate_model(family, model, spec["artefacts"], data, training, split="val")
            where = f"{Path(checkpoint.path).parent.name}/{Path(checkpoint.path).name}"
            assert got["loss"] == pytest.approx(metrics["val_loss"], abs=1e-3), where
            assert abs(got["accuracy"] - metrics["val_accuracy"]) <= 1.01 / len(data.val_labels), (
                where
            )
            checked += 1
    return checked
