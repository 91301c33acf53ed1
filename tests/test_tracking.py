"""``tracking:``: a search seen in a real MLflow server and in W&B's offline runs.

One tiny search (2 trials, 2 epochs, ASHA) logs to both; the tests read back what landed:
MLflow's runs, metrics and registered model through ``MlflowClient``, W&B's offline run
folders from disk. No credential set in the environment reaches a file ktune writes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ktune._keras_env import environment
from ktune.config import parse_config
from ktune.errors import ConfigError

from conftest import run_script_for_result, tiny_experiment

FAKE_WANDB_KEY = "ktunefakewandbkey0123456789abcdef01234567"
FAKE_MLFLOW_TOKEN = "ktunefakemlflowtoken-9f8e7d6c5b4a"


# --- the experiment file's tracking section -------------------------------------------


def _parse(tmp_path, tracking):
    return parse_config(tiny_experiment(tmp_path, tracking=tracking))


def test_tracking_keys_are_read(tmp_path):
    cfg = _parse(
        tmp_path,
        {
            "mlflow": {"uri": "http://127.0.0.1:5000", "register": "news"},
            "wandb": {"project": "p", "group": "g"},
        },
    )
    assert cfg.tracking.mlflow.uri == "http://127.0.0.1:5000"
    assert cfg.tracking.mlflow.experiment is None  # the experiment's name, when run
    assert cfg.tracking.mlflow.register == "news"
    assert (cfg.tracking.wandb.project, cfg.tracking.wandb.group) == ("p", "g")
    assert not parse_config(tiny_experiment(tmp_path)).tracking.enabled


@pytest.mark.parametrize(
    "tracking, message",
    [
        ({"mlflw": {"uri": "x"}}, "tracking.mlflw: unknown key; did you mean 'mlflow'?"),
        ({"mlflow": {"uri": "x", "experimnt": "e"}}, "tracking.mlflow.experimnt: unknown key"),
        ({"mlflow": {"experiment": "e"}}, "tracking.mlflow.uri: required"),
        ({"wandb": {"project": ""}}, "tracking.wandb.project: must be a non-empty string"),
        ({"wandb": {"project": "p", "api_key": "k"}}, "tracking.wandb.api_key: unknown key"),
        ({"wandb": ["p"]}, "tracking.wandb: must be a mapping"),
        ("mlflow", "tracking: must be a mapping"),
    ],
)
def test_a_bad_tracking_key_is_one_line_naming_it(tmp_path, tracking, message):
    with pytest.raises(ConfigError) as e:
        _parse(tmp_path, tracking)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_register_needs_the_export(tmp_path):
    raw = tiny_experiment(
        tmp_path, tracking={"mlflow": {"uri": "x", "register": "m"}}, export={"enabled": False}
    )
    with pytest.raises(ConfigError, match="^tracking.mlflow.register: "):
        parse_config(raw)


def test_a_tracker_not_installed_exits_2_before_any_work(tmp_path):
    """``ktune run`` with tracking.mlflow but no mlflow package: exit 2, nothing written."""
    raw = tiny_experiment(tmp_path, tracking={"mlflow": {"uri": "http://127.0.0.1:1"}})
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump(raw))
    # A folder first on the path whose `mlflow` cannot be found: Python's own way to hide a
    # package (a None entry in sys.modules makes find_spec raise, not return None).
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'mlflow':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    path = [str(hide)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run(
        [sys.executable, "-m", "ktune", "run", str(exp)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "tracking.mlflow" in last and "ktune[mlflow]" in last, last
    assert not (tmp_path / "results").exists()


def test_an_unreachable_mlflow_server_stops_the_run_before_any_work(tmp_path):
    import ktune
    from ktune.errors import ExperimentError

    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    raw = tiny_experiment(tmp_path, tracking={"mlflow": {"uri": uri}})
    with pytest.raises(ExperimentError, match=f"^tracking.mlflow.uri: {uri}: "):
        ktune.run(raw)
    assert not (tmp_path / "results" / "tiny").exists()


def test_wandb_without_a_login_stops_the_run_before_any_work(tmp_path, monkeypatch):
    import ktune
    from ktune.errors import ExperimentError

    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    raw = tiny_experiment(tmp_path, tracking={"wandb": {"project": "p"}})
    with pytest.raises(ExperimentError, match="^tracking.wandb: no W&B login"):
        ktune.run(raw)
    assert not (tmp_path / "results" / "tiny").exists()


def test_a_jobs_runtime_env_holds_no_credential(tmp_path, monkeypatch):
    """``ktune submit`` ships the experiment file and a runtime env: neither takes the
    credentials of the environment it is submitted from."""
    from ktune.config import load_config
    from ktune.jobs import job_runtime_env

    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", FAKE_MLFLOW_TOKEN)
    tracking = {"mlflow": {"uri": "http://mlflow:5000"}, "wandb": {"project": "p"}}
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump(tiny_experiment(tmp_path, tracking=tracking)))
    workdir = tmp_path / "job"
    workdir.mkdir()
    env = job_runtime_env(load_config(exp), workdir, with_project=False)
    shipped = json.dumps(env) + "".join(p.read_text() for p in workdir.rglob("*") if p.is_file())
    assert "tracking" in shipped  # the experiment file went, tracking section and all
    for secret in (FAKE_WANDB_KEY, FAKE_MLFLOW_TOKEN):
        assert secret not in shipped


# --- one search, tracked by both ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1: SQLite backend, artifacts in a local folder."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError((root / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, 15)  # the server and the workers it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
        log.close()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, mlflow_server, ray_session):
    """The tiny search with tracking.mlflow and tracking.wandb, credentials in the env."""
    import ktune

    tmp = tmp_path_factory.mktemp("tracked")
    wandb_dir = tmp / "wandb"
    wandb_dir.mkdir()
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_API_KEY": FAKE_WANDB_KEY,
        "MLFLOW_TRACKING_TOKEN": FAKE_MLFLOW_TOKEN,
        "WANDB_SILENT": "true",
    }
    with environment(env):
        raw = tiny_experiment(
            tmp,
            name="tracked",
            search__num_samples=2,
            tracking={
                "mlflow": {"uri": mlflow_server, "experiment": "news", "register": "news-clf"},
                "wandb": {"project": "ktune-test"},
            },
        )
        exp_file = tmp / "tracked.yaml"
        exp_file.write_text(yaml.safe_dump(raw))
        result = ktune.run(exp_file)
    return result, mlflow_server, wandb_dir


def _epochs(trial_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines()]


@pytest.mark.slow
def test_mlflow_holds_the_search_its_trials_and_the_registered_export(tracked):
    from mlflow import MlflowClient

    result, uri, _ = tracked
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("news")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ktune_role") == "search"]
    assert len(parents) == 1
    parent = parents[0]
    best = json.loads((result.dir / "best.json").read_text())
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["test_accuracy"] == pytest.approx(best["test_accuracy"])
    assert parent.data.tags["best_trial"] == best["trial"]
    for key, value in best["config"].items():
        assert parent.data.params[f"best.{key}"] == str(value)

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trial_dirs = sorted(result.dir.glob("trial_*"))
    assert sorted(r.data.tags["trial"] for r in children) == [d.name for d in trial_dirs]
    for run in children:
        trial_dir = result.dir / run.data.tags["trial"]
        epochs = _epochs(trial_dir)
        assert run.data.tags["family"] == "transformer"
        assert run.data.tags["status"] == "TERMINATED"
        # ASHA may stop one trial after its first epoch: the tag says so exactly then
        assert run.data.tags["stopped_early"] == str(len(epochs) < 2).lower()
        assert run.info.status == "FINISHED"
        params = json.loads((trial_dir / "params.json").read_text())
        assert run.data.params["embed_dim"] == str(params["embed_dim"])
        for metric in ("val_accuracy", "loss"):
            history = client.get_metric_history(run.info.run_id, metric)
            logged = sorted((m.step, m.value) for m in history)
            assert logged == [(e["training_iteration"], pytest.approx(e[metric])) for e in epochs]

    best_run = parent.data.tags["best_run_id"]
    assert client.get_run(best_run).data.tags["trial"] == best["trial"]
    exported = {f.path for f in client.list_artifacts(best_run, "export")}
    assert "export/saved_model.pb" in exported, exported
    versions = client.search_model_versions("name = 'news-clf'")
    assert len(versions) == 1
    assert versions[0].run_id == best_run
    assert versions[0].source == f"runs:/{best_run}/export"


def _wandb_runs(wandb_dir: Path) -> dict[str, Path]:
    """The offline runs' transaction logs (``run-<id>.wandb``), by W&B run id (the trial id)."""
    return {p.stem.removeprefix("run-"): p for p in (wandb_dir / "wandb").glob("*/run-*.wandb")}


def _wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file: W&B's header, then LevelDB-log framed protobufs
    (32 KiB blocks; a record is checksum, length, type, data; types full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, chunks, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        chunks = payload if kind in (1, 2) else chunks + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
    return records


def _items(items) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


@pytest.mark.slow
def test_wandb_offline_runs_hold_each_trials_config_and_metrics(tracked):
    result, _, wandb_dir = tracked
    runs = _wandb_runs(wandb_dir)
    trial_dirs = {d.name.removeprefix("trial_"): d for d in result.dir.glob("trial_*")}
    assert set(runs) == set(trial_dirs), (runs, trial_dirs)
    for trial_id, path in runs.items():
        records = _wandb_records(path)
        config: dict = {}
        history = []
        for r in records:
            kind = r.WhichOneof("record_type")
            if kind == "config":
                config.update(_items(r.config.update))
            elif kind == "history":
                history.append(_items(r.history.item))
            elif kind == "run":
                assert r.run.project == "ktune-test" and r.run.run_group == "tracked"
        params = json.loads((trial_dirs[trial_id] / "params.json").read_text())
        for key in ("embed_dim", "heads", "learning_rate"):
            assert config[key] == pytest.approx(params[key]), key
        epochs = _epochs(trial_dirs[trial_id])
        assert [(h["training_iteration"], h["val_accuracy"]) for h in history] == [
            (e["training_iteration"], pytest.approx(e["val_accuracy"])) for e in epochs
        ]


@pytest.mark.slow
def test_no_credential_reaches_the_experiment_folder(tracked):
    result, _, wandb_dir = tracked
    for root in (result.dir, wandb_dir):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in (FAKE_WANDB_KEY, FAKE_MLFLOW_TOKEN):
                    assert secret.encode() not in data, f"{secret[:12]}... in {path}"


@pytest.mark.slow
def test_a_resumed_search_continues_its_mlflow_runs(tracked, monkeypatch):
    """Run last (it resumes the search above): the parent run and the trials' runs are the
    same ones, not new ones beside them."""
    from mlflow import MlflowClient

    import ktune

    result, uri, wandb_dir = tracked
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("news").experiment_id
    before = {r.info.run_id: r.data.tags.get("trial") for r in client.search_runs([experiment_id])}
    (result.dir / "best.json").unlink()  # as when the driver died before the results
    ktune.resume(result.dir)
    runs = client.search_runs([experiment_id])
    assert {r.info.run_id: r.data.tags.get("trial") for r in runs} == before
    parent = next(r for r in runs if r.data.tags.get("ktune_role") == "search")
    assert parent.info.status == "FINISHED"
    assert len(client.search_model_versions("name = 'news-clf'")) == 1  # not exported again


def test_mlflow_says_when_test_accuracy_is_an_ensembles(tmp_path):
    """With ensemble.seeds best.json's test_accuracy is the ensemble's: the search's run
    is tagged with the seeds and holds the best trial's test accuracy alone beside it."""
    from mlflow import MlflowClient

    from ktune.tracking import start_tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = parse_config(
        tiny_experiment(tmp_path, tracking={"mlflow": {"uri": uri}}, ensemble={"seeds": 2})
    )
    tracking = start_tracking(cfg)
    best = {
        "trial": "trial_00000",
        "config": {"embed_dim": 16},
        "metrics": {"val_accuracy": 0.8, "epoch": 2},
        "test_accuracy": 0.83,
        "test_loss": 0.5,
        "ensemble": {
            "seeds": [0, 1],
            "metrics": {"val_accuracy": 0.82, "val_loss": 0.45},
            "members": [{"seed": 0, "test_accuracy": 0.81}, {"seed": 1, "test_accuracy": 0.8}],
        },
    }
    tracking.finish(best)
    run = MlflowClient(tracking_uri=uri).get_run(tracking.parent_run_id)
    assert run.data.tags["ensemble_seeds"] == "0,1"
    assert run.data.metrics["test_accuracy"] == pytest.approx(0.83)
    assert run.data.metrics["best_trial.test_accuracy"] == pytest.approx(0.81)
    assert run.data.metrics["ensemble.val_accuracy"] == pytest.approx(0.82)
    assert run.data.metrics["best.val_accuracy"] == pytest.approx(0.8)


# --- a search that tracks with neither --------------------------------------------------

_USAGE_TAG = r"""
import json, sys
from ray._common.usage import usage_lib
from ray.air._internal import usage
from ray.tune.logger import CSVLoggerCallback, LoggerCallback
from ktune.prepare import count_callbacks_by_name
from ktune.search_end import SearchEnd

class OwnLogger(LoggerCallback):
    pass

ours = [SearchEnd(), SearchEnd(), CSVLoggerCallback(), OwnLogger(), object()]
assert count_callbacks_by_name()
usage.tag_callbacks(ours)
tag = usage_lib._recorded_extra_usage_tags["air_callbacks"]
imported = sorted(m for m in ("mlflow", "wandb") if m in sys.modules)
# Ray's own count, the trackers' callbacks among them (importing their integrations now)
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
import ray.air._internal.usage as fresh
import importlib
ray_count = importlib.reload(fresh)._count_callbacks
from ktune.prepare import _count_callbacks
every = ours + [MLflowLoggerCallback(), WandbLoggerCallback(project="p"), MLflowLoggerCallback()]
print("RESULT " + json.dumps({
    "tag": json.loads(tag), "imported": imported,
    "ours": dict(_count_callbacks(every)), "rays": dict(ray_count(every)),
}))
"""


def test_tunes_usage_tag_of_the_callbacks_no_longer_imports_mlflow_or_wandb():
    """Ray Tune's usage tag of a Tuner's callbacks imported its MLflow and W&B
    integrations (and mlflow, wandb: 1.8 s of every search's start-up where they are
    installed) to read four class names; ktune's search counts them by name: the same tag,
    neither tracker imported."""
    out = run_script_for_result(_USAGE_TAG, timeout=300)
    assert out["imported"] == []
    assert out["tag"] == {"CustomCallback": 2, "CSVLoggerCallback": 1, "CustomLoggerCallback": 1}
    assert out["ours"] == out["rays"]
    assert out["rays"]["MLflowLoggerCallback"] == 2 and out["rays"]["WandbLoggerCallback"] == 1
