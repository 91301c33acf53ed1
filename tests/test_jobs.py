"""Ray Jobs against a real local head (dashboard on 127.0.0.1, token authentication on)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ktune.driver import read_driver

from conftest import REPO, kill_ray_under, subprocess_env, tiny_experiment, wait_for_first_epoch

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def head():
    """A Ray head of its own (own ports and temp dir), with a fresh token; stopped after."""
    token = secrets.token_hex(32)
    temp = tempfile.mkdtemp(prefix="ktj-", dir="/tmp")  # short: Ray's socket paths are long
    dashboard = free_port()
    env = {
        **subprocess_env(),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_TMPDIR": temp,  # inherited by every process of this head: found to kill them
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "2",
        "--temp-dir",
        temp,
        "--port",
        str(free_port()),
        "--ray-client-server-port",
        str(free_port()),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--include-dashboard",
        "true",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if http_get(f"{address}/api/version", token)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("the Ray head did not come up")
    yield address, token
    # `ray start --block` stops its processes one after the other on SIGTERM, gracefully
    # (about 30 s here); the test is done with them: a few seconds, then SIGKILL for all
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
    kill_ray_under(temp)
    proc.wait(timeout=60)
    shutil.rmtree(temp, ignore_errors=True)


def ktune(*args: str, token: str | None, timeout: int = 600, **extra_env: str):
    env = subprocess_env()
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(name, None)
    env.update(extra_env)
    if token:
        env["RAY_AUTH_TOKEN"] = token
    with tempfile.TemporaryDirectory(prefix="ktune-home-") as home:
        env["HOME"] = home  # no ~/.ray/auth_token to fall back on
        return subprocess.run(
            [sys.executable, "-m", "ktune", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=timeout,
        )


def test_submit_follow_succeeds_and_jobs_api_needs_the_token(head, tmp_path, monkeypatch):
    address, token = head
    raw = tiny_experiment(tmp_path)
    raw["name"] = "tiny_job"
    raw["search"]["num_samples"] = 2
    raw["training"]["epochs"] = 1
    exp = tmp_path / "tiny_job.yaml"
    exp.write_text(yaml.safe_dump(raw))

    done = ktune(
        "submit", str(exp), "--address", address, "--follow", "--with-project", token=token
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    lines = done.stdout.splitlines()
    job_id = lines[0].removeprefix("submitted job ")
    assert lines[1] == f"dashboard: {address}/#/jobs/{job_id}"
    assert lines[-1] == f"job {job_id}: SUCCEEDED"
    assert "best trial" in done.stdout  # the search's own output streamed back
    best = json.loads((Path(raw["storage"]) / "tiny_job" / "best.json").read_text())
    assert (Path(best["export"]) / "saved_model.pb").is_file()

    # a refusal by the Jobs API (here: that submission id is taken) is one line
    from ktune.errors import ExperimentError
    from ktune.jobs import submit

    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    with pytest.raises(ExperimentError) as refused:
        submit(exp, address, submission_id=job_id)
    text = str(refused.value)
    assert text.startswith(f"--address {address}: the job was not submitted (") and job_id in text
    assert "\n" not in text

    status, body = http_get(f"{address}/api/jobs/", token)
    assert status == 200
    jobs = {j["submission_id"]: j for j in json.loads(body)}
    assert jobs[job_id]["status"] == "SUCCEEDED"
    assert jobs[job_id]["metadata"]["ktune_experiment"] == "tiny_job"
    assert http_get(f"{address}/api/jobs/", None)[0] == 401  # no token, no answer

    # What the dashboard shows, through its own HTTP API: the job's driver log (the
    # search's progress and results) and, in the state API, the trials' actors.
    status, logs = http_get(f"{address}/api/jobs/{job_id}/logs", token)
    assert status == 200 and "best trial" in json.loads(logs)["logs"]
    status, body = http_get(f"{address}/api/v0/actors?limit=1000&detail=true", token)
    assert status == 200, body[:500]
    actors = json.loads(body)["data"]["result"]["result"]
    trials = [a for a in actors if a.get("class_name") == "ImplicitFunc"]
    # one actor per trial (2 trials, no actor reuse), each in this job's Ray job
    assert len(trials) == 2, [(a.get("class_name"), a.get("state")) for a in actors]
    assert {a["job_id"] for a in trials} == {jobs[job_id]["job_id"]}
    assert {a["state"] for a in trials} == {"DEAD"}  # the search ended
    assert http_get(f"{address}/api/v0/actors?limit=10", None)[0] == 401
    status, body = http_get(f"{address}/nodes?view=summary", token)
    assert status == 200 and "summary" in json.loads(body)["data"]
    assert http_get(f"{address}/nodes?view=summary", None)[0] == 401

    listed = ktune("jobs", "--address", address, token=token, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert any(
        job_id in line and "SUCCEEDED" in line and "tiny_job" in line
        for line in listed.stdout.splitlines()
    )


def job_status(address: str, job_id: str, token: str) -> str:
    status, body = http_get(f"{address}/api/jobs/{job_id}", token)
    assert status == 200, body[:500]
    return json.loads(body)["status"]


def test_stopped_job_keeps_its_search_state_and_resumes(head, tmp_path):
    """Ctrl+C in ``ktune submit --follow`` stops the following, not the job; ``ray job
    stop`` (SIGTERM to the job's driver, SIGKILL 60 s later: ktune's job sets
    RAY_JOB_STOP_WAIT_TIME_S; Ray's default is 3 s) stops the search with its
    state saved and nothing written as if it had finished; ``ktune resume`` finishes it."""
    address, token = head
    raw = tiny_experiment(tmp_path)
    raw["name"] = "stopped_job"
    raw["search"].update(num_samples=3, max_concurrent_trials=1, scheduler="fifo")
    raw["training"]["epochs"] = 4
    raw["data"]["train_size"] = 4000  # epochs long enough to stop it in
    exp = tmp_path / "stopped_job.yaml"
    exp.write_text(yaml.safe_dump(raw))
    exp_dir = Path(raw["storage"]) / "stopped_job"
    env = {**subprocess_env(), "RAY_AUTH_TOKEN": token}
    follower = subprocess.Popen(
        [sys.executable, "-m", "ktune", "submit", str(exp), "--address", address]
        + ["--follow", "--with-project"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_first_epoch(exp_dir, follower)
    follower.send_signal(signal.SIGINT)
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 130, err[-2000:]
    job_id = out.splitlines()[0].removeprefix("submitted job ")
    assert f"job {job_id} keeps running on the cluster (stop it: ray job stop" in err
    assert job_status(address, job_id, token) == "RUNNING"

    request = urllib.request.Request(f"{address}/api/jobs/{job_id}/stop", method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["stopped"] is True
    deadline = time.time() + 120
    while job_status(address, job_id, token) != "STOPPED":
        assert time.time() < deadline, "the job did not stop"
        time.sleep(0.5)
    for name in ("best.json", "results.csv", "export"):
        assert not (exp_dir / name).exists(), name
    # a whole stop, not one cut off by the supervisor's SIGKILL (ktune gives it 60 s)
    assert (exp_dir / "interrupted.json").is_file()
    assert (read_driver(exp_dir) or {}).get("ended"), read_driver(exp_dir)
    status, logs = http_get(f"{address}/api/jobs/{job_id}/logs", token)
    assert status == 200 and "search interrupted by SIGTERM" in json.loads(logs)["logs"]

    resumed = ktune("resume", str(exp_dir), token=None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((exp_dir / "best.json").read_text())["num_trials"] == 3
    assert (exp_dir / "export" / "saved_model.pb").is_file()


def test_submit_without_token_is_refused_in_one_line(head, tmp_path):
    address, _ = head
    raw = tiny_experiment(tmp_path)
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump(raw))
    done = ktune("submit", str(exp), "--address", address, token=None, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ktune: error: --address {address}:") and "RAY_AUTH_TOKEN" in last


def test_submit_refuses_relative_storage(head, tmp_path):
    address, token = head
    raw = tiny_experiment(tmp_path)
    raw["storage"] = "results"
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump(raw))
    done = ktune("submit", str(exp), "--address", address, token=token, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("ktune: error: storage: 'results'")


def test_unreadable_token_path_is_one_clear_line(head, tmp_path):
    address, _ = head
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump(tiny_experiment(tmp_path)))
    missing = tmp_path / "no-token"
    done = ktune(
        "submit",
        str(exp),
        "--address",
        address,
        token=None,
        timeout=120,
        RAY_AUTH_TOKEN_PATH=str(missing),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"ktune: error: RAY_AUTH_TOKEN_PATH: cannot read {missing} (No such file or directory)"
    )


def test_token_sources_in_order(tmp_path, monkeypatch):
    from ktune.jobs import auth_token

    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("local-token\n")
    assert auth_token("http://127.0.0.1:8265") == "local-token"
    assert auth_token("http://head.example:8265") is None  # a remote head: not the local one
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert auth_token("http://head.example:8265") == "local-token"
    (tmp_path / "t").write_text("file-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert auth_token("http://head.example:8265") == "file-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert auth_token("http://head.example:8265") == "env-token"


def test_a_job_takes_its_relative_model_folders_and_build_module_along(
    tmp_path, monkeypatch, tiny_setup
):
    """The job's driver runs in its own working directory on the cluster: the relative
    model folders and ``model.build``'s module the experiment names here travel with it,
    so the job's copy of the experiment resolves them with the originals gone."""
    from ktune.config import load_config
    from ktune.jobs import job_runtime_env
    from ktune.trainables.custom import import_build_model
    from ktune.trainables.hf_bert import check_models

    setup = tiny_setup("hf_bert")
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    shutil.copytree(setup.root, project / "models" / "tiny-hf-bert")
    monkeypatch.chdir(project)  # model paths are relative to the working directory
    raw = tiny_experiment(
        tmp_path,
        family="hf_bert",
        model={
            "name": "models/tiny-hf-bert/bert_uncased_L-{L}_H-{H}_A-{A}",
            "tokenizer": "models/tiny-hf-bert",
        },
        search__space=dict(setup.space),
    )
    exp = project / "exp.yaml"
    exp.write_text(yaml.safe_dump(raw))
    workdir = tmp_path / "job"
    workdir.mkdir()
    env = job_runtime_env(load_config(exp), workdir, with_project=False)
    # Ray's supervisor waits this long for the stop before its SIGKILL (Ray's default: 3 s)
    assert env["env_vars"] == {"RAY_JOB_STOP_WAIT_TIME_S": "60"}
    shutil.move(project / "models", tmp_path / "moved-away")
    monkeypatch.chdir(workdir)  # where the job's driver runs
    cfg = load_config(workdir / "experiment.yaml")
    # what the job's driver checks before Ray starts (it loads the tokenizer and configs)
    assert len(check_models(cfg.model, cfg.search.space, maxlen=cfg.training.maxlen)) == 2
    assert cfg.model["tokenizer"] == "model_files/tiny-hf-bert"
    assert (workdir / "model_files" / "tiny-hf-bert" / "bert_uncased_L-2_H-32_A-2").is_dir()

    # model.build's module, beside the experiment file
    (project / "jobmodels.py").write_text("def build(config, info):\n    return None\n")
    monkeypatch.chdir(project)
    raw = tiny_experiment(tmp_path, model={"build": "jobmodels:build"})
    raw["search"]["space"] = {"units": [8]}
    exp.write_text(yaml.safe_dump(raw))
    workdir = tmp_path / "job2"
    workdir.mkdir()
    try:
        job_runtime_env(load_config(exp), workdir, with_project=False)
        sys.modules.pop("jobmodels", None)
        (project / "jobmodels.py").unlink()
        monkeypatch.chdir(workdir)
        cfg = load_config(workdir / "experiment.yaml")
        build = import_build_model(cfg.model["build"], base_dir=cfg.base_dir)  # as trials do
        assert sys.modules[build.__module__].__file__ == str(workdir / "jobmodels.py")
    finally:
        sys.modules.pop("jobmodels", None)
