"""Experiments on a cloud URI (``storage: s3://...``), against a real S3 endpoint on localhost
(moto's server mode), plus the URI parsing and its error lines.

Ray workers inherit the environment of the process that starts Ray, and the session's
shared Ray (``ray_session``) may be started by another module before any fixture here
runs, so the S3 credentials are put in the environment when this module is imported
(pytest imports every test module before running any test). moto accepts any keys.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ktune import storage
from ktune.config import parse_config
from ktune.errors import ConfigError, ExperimentError

from conftest import REPO, CtrlC, reload_in_fresh_process, subprocess_env, tiny_experiment

os.environ.update(
    AWS_ACCESS_KEY_ID="ktune-test",
    AWS_SECRET_ACCESS_KEY="ktune-test",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)

CLASSES = ("World", "Sports", "Business", "Sci/Tech")
TEXTS = [
    "Striker scores twice as the league leaders win the cup final",
    "Shares fell after the bank cut its profit forecast",
    "",
]


def _free_port() -> int:
    """A free port outside Ray's worker ports (10002-19999)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10002 <= port <= 19999:
            return port


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1: (boto3 client, endpoint 'host:port')."""
    pytest.importorskip("moto.server")
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    yield client, f"127.0.0.1:{port}"
    server.stop()


def _bucket(s3, name: str) -> str:
    """A new bucket; returns the storage URI of a prefix in it, query included."""
    client, endpoint = s3
    client.create_bucket(Bucket=name)
    return f"s3://{name}/runs?endpoint_override={endpoint}&scheme=http"


def _objects(s3, bucket: str, prefix: str = "") -> dict[str, str]:
    """key -> ETag of every object under ``prefix`` (S3 folder markers left out)."""
    client, _ = s3
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            if not o["Key"].endswith("/"):
                out[o["Key"]] = o["ETag"]
    return out


def _get(s3, bucket: str, key: str) -> bytes:
    return s3[0].get_object(Bucket=bucket, Key=key)["Body"].read()


def ktune_cli(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ktune", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=cwd,
        timeout=timeout,
    )


# --- the storage value: parsing and error lines (no network, no Ray) ------------------------


def test_a_uri_is_kept_with_its_query_and_staged_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("KTUNE_STAGING_DIR", str(tmp_path / "staging"))
    uri = "s3://bkt/some/prefix?endpoint_override=127.0.0.1:9000&scheme=http"
    cfg = parse_config(tiny_experiment(tmp_path, storage=uri))
    assert cfg.storage == uri and cfg.remote
    query = "?endpoint_override=127.0.0.1:9000&scheme=http"
    assert cfg.experiment_path == "s3://bkt/some/prefix/tiny" + query
    assert cfg.export_path == "s3://bkt/some/prefix/tiny/export" + query
    assert cfg.export_dir is None
    # ktune's own files are written to a local folder under the staging root, named by
    # the experiment; nothing is created by parsing
    assert cfg.experiment_dir.parent.parent == tmp_path / "staging"
    assert cfg.experiment_dir.name == "tiny"
    assert not (tmp_path / "staging").exists()
    other = parse_config(tiny_experiment(tmp_path, storage="s3://bkt/other"))
    assert other.experiment_dir != cfg.experiment_dir  # one staging folder per location


def test_local_storage_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(tiny_experiment(tmp_path, storage="results"))
    assert cfg.storage == str(tmp_path / "results") and not cfg.remote
    assert cfg.experiment_dir == tmp_path / "results" / "tiny"
    assert cfg.experiment_path == str(cfg.experiment_dir)
    assert cfg.export_dir == cfg.experiment_dir / "export"


def test_other_schemes_pyarrow_knows(tmp_path):
    for uri in ("gs://bkt/prefix", f"file://{tmp_path}/results", "s3://bkt/p?region=eu-west-1"):
        assert parse_config(tiny_experiment(tmp_path, storage=uri)).storage == uri


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("s3://bkt/p?bogus=1", "Unexpected query parameter"),
        ("nosuch://bkt/p", "Unrecognized filesystem type"),
        ("s3://", "must name a bucket"),
        ("s3:///no-bucket", "Missing bucket name"),
    ],
)
def test_a_bad_uri_is_one_line_naming_the_key(tmp_path, uri, why):
    with pytest.raises(ConfigError) as e:
        parse_config(tiny_experiment(tmp_path, storage=uri))
    assert str(e.value).startswith("storage: ") and why in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^--storage: "):
        parse_config(tiny_experiment(tmp_path), storage=uri)
    with pytest.raises(ConfigError, match=r"^export\.dir: "):
        parse_config(tiny_experiment(tmp_path, export={"dir": uri}))


def test_credentials_in_a_uri_are_not_printed(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config(tiny_experiment(tmp_path, storage="s3://AKIA:s3cr3t@bkt/p?bogus=1"))
    assert "s3cr3t" not in str(e.value) and "AKIA" not in str(e.value)


def test_cli_refuses_a_bad_storage_uri_before_any_work(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(tiny_experiment(tmp_path)))
    done = ktune_cli("run", str(exp), "--storage", "s3://bkt/p?bogus=1", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ktune: error: --storage: "), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # nothing written


def test_uri_paths():
    q = "?endpoint_override=h:1&scheme=http"
    assert storage.join("s3://b/p" + q, "tiny", "export") == "s3://b/p/tiny/export" + q
    assert storage.join("s3://b" + q, "tiny") == "s3://b/tiny" + q
    assert storage.join("s3://b/p/", "tiny") == "s3://b/p/tiny"
    assert storage.join("/tmp/a", "b") == "/tmp/a/b"
    assert storage.parent("s3://b/p/tiny" + q) == "s3://b/p" + q
    assert storage.basename("s3://b/p/tiny" + q) == "tiny"
    assert storage.sibling("s3://b/p/export" + q, ".x") == "s3://b/p/.x" + q
    assert storage.redact("s3://AK:SK@b/p") == "s3://***@b/p"
    assert storage.is_uri("file:///tmp/x") and not storage.is_uri("/tmp/x")
    assert not storage.is_uri("results")


# --- S3 operations against a real endpoint, no Ray ---------------------------------------------


def test_file_operations_round_trip(s3, tmp_path):
    uri = _bucket(s3, "ops")
    folder = tmp_path / "up"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"pb")
    (folder / "variables" / "v.index").write_bytes(b"ix")
    target = storage.join(uri, "exp", "export")
    assert not storage.exists(target) and not storage.is_nonempty_dir(target)
    storage.upload_dir(folder, target, last=["saved_model.pb"])
    assert storage.is_nonempty_dir(storage.join(uri, "exp"))
    assert storage.list_files(target) == ["saved_model.pb", "variables/v.index"]
    back = storage.download_dir(target, tmp_path / "down")
    assert (back / "variables" / "v.index").read_bytes() == b"ix"
    storage.write_text(storage.join(uri, "exp", "a.json"), '{"a": 1}')
    assert json.loads(storage.read_text(storage.join(uri, "exp", "a.json"))) == {"a": 1}
    storage.delete_dir(target)
    assert not storage.exists(target)
    assert set(_objects(s3, "ops")) == {"runs/exp/a.json"}


def test_an_unreachable_bucket_is_one_line_naming_storage(s3, tmp_path):
    from ktune.experiment import check_targets

    _, endpoint = s3
    cfg = parse_config(
        tiny_experiment(
            tmp_path, storage=f"s3://no-such-bucket/p?endpoint_override={endpoint}&scheme=http"
        )
    )
    with pytest.raises(ExperimentError, match=r"^storage: .*no-such-bucket"):
        check_targets(cfg)


def test_an_unreachable_export_bucket_is_one_line_naming_export_dir(s3, tmp_path):
    from ktune.experiment import check_targets

    _, endpoint = s3
    cfg = parse_config(
        tiny_experiment(
            tmp_path,
            export={"dir": f"s3://no-such-bucket/e?endpoint_override={endpoint}&scheme=http"},
        )
    )
    with pytest.raises(ExperimentError, match=r"^export\.dir: .*no-such-bucket"):
        check_targets(cfg)


def _unreadable_export(folder: Path) -> Path:
    """A folder whose upload fails part-way: one file cannot be read (EIO), deterministic."""
    (folder / "variables").mkdir(parents=True)
    (folder / "fingerprint.pb").write_bytes(b"new")
    (folder / "saved_model.pb").write_bytes(b"new")
    (folder / "variables" / "variables.index").write_bytes(b"new")
    (folder / "variables" / "zz.data").symlink_to("/proc/self/mem")  # reading at 0: EIO
    return folder


def test_a_failed_upload_never_leaves_or_replaces_an_export(s3, tmp_path):
    from ktune.export import _publish

    uri = _bucket(s3, "publish")
    target = storage.join(uri, "exp", "export")
    with pytest.raises(ExperimentError, match="cannot upload"):
        _publish(_unreadable_export(tmp_path / "bad"), target, force=False)
    assert _objects(s3, "publish") == {}  # nothing half-written claims to be an export

    good = tmp_path / "good"
    (good / "variables").mkdir(parents=True)
    (good / "saved_model.pb").write_bytes(b"old")
    (good / "variables" / "variables.index").write_bytes(b"old")
    _publish(good, target, force=False)
    before = _objects(s3, "publish")
    assert set(before) == {
        "runs/exp/export/saved_model.pb",
        "runs/exp/export/variables/variables.index",
    }
    with pytest.raises(ExperimentError, match="cannot upload"):
        _publish(_unreadable_export(tmp_path / "bad2"), target, force=True)
    assert _objects(s3, "publish") == before  # the old export untouched, no temp left
    assert _get(s3, "publish", "runs/exp/export/saved_model.pb") == b"old"

    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "saved_model.pb").write_bytes(b"newer")
    _publish(newer, target, force=True)
    assert set(_objects(s3, "publish")) == {"runs/exp/export/saved_model.pb"}
    assert _get(s3, "publish", "runs/exp/export/saved_model.pb") == b"newer"


def _export_folder(folder: Path, tag: bytes) -> Path:
    """A folder with an export's files (their bytes tagged), as ktune uploads one."""
    (folder / "variables").mkdir(parents=True)
    (folder / "metadata.json").write_bytes(b'{"tag": "%s"}' % tag)
    (folder / "saved_model.pb").write_bytes(tag)
    (folder / "variables" / "variables.index").write_bytes(tag)
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(tag * 1000)
    return folder


def test_a_force_replace_cut_off_on_the_uri_is_put_back_whole(s3, tmp_path):
    """``--force`` on a URI uploads the new export whole to ``.export.tmp-<pid>``, deletes
    the old one, uploads the new one again. A kill during that second upload leaves the
    target without saved_model.pb (that state made here, as _publish leaves it): the next
    export to that URI puts the whole copy back before anything else."""
    from ktune.experiment_dir import export_complete, recover_cut_replace
    from ktune.export import _publish

    uri = _bucket(s3, "cut")
    target = storage.join(uri, "exp", "export")
    _publish(_export_folder(tmp_path / "old", b"old"), target, force=False)
    new = _export_folder(tmp_path / "new", b"new")
    staged = storage.sibling(target, ".export.tmp-4242")
    storage.upload_dir(new, staged, last=["saved_model.pb"])  # _publish's first upload
    storage.delete_dir(target)  # then the old export goes
    storage.upload_file(new / "metadata.json", storage.join(target, "metadata.json"))  # cut
    assert not export_complete(target, "--out")

    assert recover_cut_replace(target) == staged
    objects = _objects(s3, "cut")
    assert sorted(objects) == [
        "runs/exp/export/metadata.json",
        "runs/exp/export/saved_model.pb",
        "runs/exp/export/variables/variables.data-00000-of-00001",
        "runs/exp/export/variables/variables.index",
    ]  # whole, and the temporary copy gone
    assert _get(s3, "cut", "runs/exp/export/saved_model.pb") == b"new"
    assert _get(s3, "cut", "runs/exp/export/variables/variables.data-00000-of-00001") == (
        b"new" * 1000
    )
    assert recover_cut_replace(target) is None  # nothing left to do

    # Cut off during the first upload: the copy is not whole, the old export untouched.
    storage.upload_file(new / "metadata.json", storage.join(staged, "metadata.json"))
    before = _objects(s3, "cut")
    assert recover_cut_replace(target) is None
    assert _objects(s3, "cut") == before


def test_force_on_a_uri_never_replaces_a_folder_that_is_not_an_export(s3, tmp_path):
    from ktune.experiment_dir import check_replaceable_uri

    uri = _bucket(s3, "notexport")
    storage.write_text(storage.join(uri, "exp", "results.csv"), "trial,val_accuracy\n")
    storage.upload_dir(_export_folder(tmp_path / "e", b"e"), storage.join(uri, "exp", "export"))
    before = _objects(s3, "notexport")
    for folder in (uri, storage.join(uri, "exp")):
        with pytest.raises(ExperimentError, match="is not an export .* choose another --out"):
            check_replaceable_uri(folder)
    check_replaceable_uri(storage.join(uri, "exp", "export"))  # a whole export
    check_replaceable_uri(storage.join(uri, "nothing"))  # nothing there
    storage.write_text(storage.join(uri, "cut", "metadata.json"), "{}")
    check_replaceable_uri(storage.join(uri, "cut"))  # an export a kill cut off
    assert set(_objects(s3, "notexport")) == set(before) | {"runs/cut/metadata.json"}


# --- a real search into the bucket -------------------------------------------------------------


@pytest.fixture(scope="module")
def remote_run(s3, tmp_path_factory, ray_session):
    """The tiny experiment with storage on the moto S3 server, run once for this module."""
    from ktune.experiment import run_experiment

    tmp = tmp_path_factory.mktemp("s3run")
    uri = _bucket(s3, "ktune")
    raw = tiny_experiment(tmp, storage=uri)
    exp_file = tmp / "tiny.yaml"
    exp_file.write_text(yaml.safe_dump(raw))
    saved = os.environ.get("KTUNE_STAGING_DIR")
    os.environ["KTUNE_STAGING_DIR"] = str(tmp / "staging")
    try:
        cfg = parse_config(raw, source_path=str(exp_file))
        best = run_experiment(cfg)
        yield cfg, best, exp_file, tmp
    finally:
        if saved is None:
            os.environ.pop("KTUNE_STAGING_DIR", None)
        else:
            os.environ["KTUNE_STAGING_DIR"] = saved


@pytest.mark.slow
def test_the_remote_experiment_looks_like_a_local_one(remote_run, s3):
    cfg, best, _, _ = remote_run
    keys = _objects(s3, "ktune", "runs/tiny/")
    names = {k.removeprefix("runs/tiny/") for k in keys}
    for name in (
        "experiment.yaml",
        "ktune.json",
        "results.csv",
        "best.json",
        "optuna.journal",
        "export/saved_model.pb",
        "export/metadata.json",
        "tuner.pkl",
    ):
        assert name in names, (name, sorted(names))
    assert any(n.startswith("export/variables/") for n in names)
    trials = {n.split("/")[0] for n in names if n.startswith("trial_")}
    assert len(trials) == cfg.search.num_samples
    for trial in trials:
        assert f"{trial}/result.json" in names
        assert any(
            n.startswith(f"{trial}/checkpoint_") and n.endswith("ckpt.index") for n in names
        ), trial

    rows = _get(s3, "ktune", "runs/tiny/results.csv").decode().strip().splitlines()
    assert len(rows) == 1 + cfg.search.num_samples
    remote_best = json.loads(_get(s3, "ktune", "runs/tiny/best.json"))
    assert remote_best["export"] == cfg.export_path == best["export"]
    assert remote_best["trial"] == best["trial"] and remote_best["metrics"]["val_accuracy"] > 0.5
    # the best checkpoint is named by its full URI, and it is there
    query = "?" + cfg.storage.split("?", 1)[1]
    assert remote_best["checkpoint"].startswith("s3://ktune/runs/tiny/trial_")
    assert remote_best["checkpoint"].endswith(query)
    ckpt_key = remote_best["checkpoint"].removeprefix("s3://ktune/").split("?")[0]
    assert f"{ckpt_key}/ckpt.index" in keys
    # the local staging folder holds ktune's files only (Ray wrote the trials remotely)
    staged = sorted(p.name for p in cfg.experiment_dir.iterdir())
    assert "export" not in staged and not any(n.startswith("trial_") for n in staged)
    assert (cfg.experiment_dir / "optuna.journal").read_bytes() == _get(
        s3, "ktune", "runs/tiny/optuna.journal"
    )


@pytest.mark.slow
def test_the_remote_journal_holds_the_whole_study(remote_run, s3, tmp_path):
    import optuna

    cfg, _, _, _ = remote_run
    journal = tmp_path / "optuna.journal"
    journal.write_bytes(_get(s3, "ktune", "runs/tiny/optuna.journal"))
    study = optuna.load_study(
        study_name="tiny",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        ),
    )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == cfg.search.num_samples


@pytest.mark.slow
def test_the_export_downloaded_from_the_bucket_predicts_raw_strings(remote_run, s3, tmp_path):
    cfg, _, _, _ = remote_run
    client, _ = s3
    for key in _objects(s3, "ktune", "runs/tiny/export/"):
        target = tmp_path / "export" / key.removeprefix("runs/tiny/export/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("ktune", key, str(target))
    meta = json.loads((tmp_path / "export" / "metadata.json").read_text())
    assert meta["experiment"] == cfg.experiment_path and meta["verified"]["max_abs_diff"] <= 1e-5
    got = reload_in_fresh_process(tmp_path / "export", TEXTS)
    assert len(got["label"]) == len(TEXTS) and set(got["label"]) <= set(CLASSES)
    # ktune predict reads the export from the URI itself
    done = ktune_cli("predict", cfg.export_path, *TEXTS[:2])
    assert done.returncode == 0, done.stderr[-2000:]
    labels = [line.split("\t")[0] for line in done.stdout.strip().splitlines()]
    assert labels == got["label"][:2]


@pytest.mark.slow
def test_a_second_run_into_the_existing_remote_experiment_exits_2_writing_nothing(remote_run, s3):
    cfg, _, exp_file, tmp = remote_run
    before = _objects(s3, "ktune")
    staged = {p: p.stat().st_mtime_ns for p in cfg.experiment_dir.rglob("*")}
    done = ktune_cli("run", str(exp_file), cwd=tmp)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "already exists" in lines[0], done.stderr
    assert "s3://ktune/runs/tiny" in lines[0]
    assert _objects(s3, "ktune") == before
    assert {p: p.stat().st_mtime_ns for p in cfg.experiment_dir.rglob("*")} == staged


@pytest.mark.slow
def test_a_result_loaded_from_a_uri_keeps_its_download_while_it_lives(remote_run):
    """``ktune.load(URI)`` downloads ktune's files to a temporary folder: removed with the
    result (they were left in /tmp), and the result's repr leaves out the spec (it printed
    the whole vocabulary and the verification texts)."""
    import gc

    import ktune

    cfg, _, _, _ = remote_run
    result = ktune.load(cfg.experiment_path)
    folder = result.dir.parent
    assert folder.name.startswith("ktune-load-") and (result.dir / "best.json").is_file()
    assert "vocab" not in repr(result) and len(repr(result)) < 3000
    del result
    gc.collect()
    assert not folder.exists()


def test_export_cli_on_the_uri_refuses_then_force_replaces(remote_run, s3):
    cfg, _, _, _ = remote_run
    before = _objects(s3, "ktune", "runs/tiny/export/")
    refused = ktune_cli("export", cfg.experiment_path)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "export target already exists (replace it: force=True, or `ktune export --force`)"
        )
    )
    assert _objects(s3, "ktune", "runs/tiny/export/") == before
    forced = ktune_cli("export", cfg.experiment_path, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    after = _objects(s3, "ktune", "runs/tiny/")
    assert "runs/tiny/export/saved_model.pb" in after
    assert after["runs/tiny/export/metadata.json"] != before["runs/tiny/export/metadata.json"]
    assert not [k for k in after if "/.export" in k]  # no temporary copy left


def test_export_cli_force_onto_the_storage_folder_exits_2_deleting_nothing(remote_run, s3):
    cfg, _, _, _ = remote_run
    before = _objects(s3, "ktune")
    runs = storage.parent(cfg.experiment_path)  # s3://ktune/runs?...: every experiment
    done = ktune_cli("export", cfg.experiment_path, "--out", runs, "--force")
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert "s3://ktune/runs" in line and "is not an export" in line, done.stderr
    assert _objects(s3, "ktune") == before


def test_export_cli_puts_back_an_export_a_cut_off_force_left_in_its_copy(remote_run, s3, tmp_path):
    """The state a kill during ``ktune export --force``'s second upload leaves (the old
    export deleted, the new one whole only in ``.export.tmp-<pid>``): the next ``ktune
    export`` puts it back first, so the target is whole again (and, without --force,
    refused as an existing export)."""
    cfg, _, _, _ = remote_run
    before = _objects(s3, "ktune", "runs/tiny/export/")
    whole = storage.download_dir(cfg.export_path, tmp_path / "export")
    staged = storage.sibling(cfg.export_path, ".export.tmp-4242")
    storage.upload_dir(whole, staged, last=["saved_model.pb"])
    storage.delete_dir(cfg.export_path)
    storage.upload_file(whole / "metadata.json", storage.join(cfg.export_path, "metadata.json"))

    done = ktune_cli("export", cfg.experiment_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cut off; its whole new copy (.export.tmp-4242) is back in place" in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "export target already exists (replace it: force=True, or `ktune export --force`)"
        )
    )
    assert _objects(s3, "ktune", "runs/tiny/export/") == before  # the same bytes, whole
    assert not [k for k in _objects(s3, "ktune", "runs/tiny/") if "/.export" in k]


@pytest.mark.slow
def test_report_on_the_uri_writes_beside_the_experiment(remote_run, s3):
    cfg, _, _, _ = remote_run
    done = ktune_cli("report", cfg.experiment_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "report: s3://ktune/runs/tiny/report.html" in done.stdout
    keys = _objects(s3, "ktune", "runs/tiny/")
    assert "runs/tiny/report.html" in keys
    assert any(k.startswith("runs/tiny/report-") and k.endswith(".png") for k in keys)
    page = _get(s3, "ktune", "runs/tiny/report.html").decode()
    assert "tiny" in page
    # the experiment is named by its URI, not by the temporary download the report read
    shown = storage.redact(cfg.experiment_path)
    assert done.stdout.splitlines()[0] == f"experiment tiny (transformer) at {shown}"
    assert "ktune-download-" not in page and shown.split("?")[0] in page


@pytest.mark.slow
def test_resume_from_the_uri_on_a_machine_without_the_staging_folder(remote_run, s3):
    """The driver's machine is gone, and with it the run's end: resume downloads ktune's
    files, Ray restores from the URI, and the results are uploaded again (the trials had
    finished: nothing reruns; the export in place is kept and named)."""
    import shutil

    from ktune.experiment import resume_experiment

    cfg, best, _, _ = remote_run
    shutil.rmtree(cfg.experiment_dir)
    trials_before = {
        k: v
        for k, v in _objects(s3, "ktune", "runs/tiny/").items()
        if "/trial_" in k and "/checkpoint_" in k
    }
    # finished and exported: nothing to resume, on a URI too
    with pytest.raises(ExperimentError, match="the search finished .best.json.; there is nothing"):
        resume_experiment(cfg.experiment_path)
    s3[0].delete_object(Bucket="ktune", Key="runs/tiny/best.json")  # died before its results
    again = resume_experiment(cfg.experiment_path)
    assert again["export"] == best["export"]
    assert again["trial"] == best["trial"]
    assert again["num_trials"] == cfg.search.num_samples
    assert (cfg.experiment_dir / "optuna.journal").is_file()  # staged where Ray expects it
    remote_best = json.loads(_get(s3, "ktune", "runs/tiny/best.json"))
    assert remote_best["wall_time_s"] == again["wall_time_s"]  # uploaded again
    after = _objects(s3, "ktune", "runs/tiny/")
    assert {k: v for k, v in after.items() if k in trials_before} == trials_before


@pytest.mark.slow
def test_ctrl_c_on_uri_storage_saves_the_search_there_and_resume_finishes_it(
    s3, tmp_path, ray_session, monkeypatch
):
    """Interrupted (a real SIGINT from Tune's loop, after the first trial ended), a search
    on a bucket leaves Ray's state and the Optuna journal there and nothing written as
    finished; ``ktune.resume`` of the URI, from a machine without the staging folder,
    finishes it."""
    import shutil

    import ktune

    uri = _bucket(s3, "ktune-ctrlc")
    monkeypatch.setenv("KTUNE_STAGING_DIR", str(tmp_path / "staging"))
    raw = tiny_experiment(tmp_path, storage=uri)
    raw["name"] = "stopped"
    raw["search"].update(num_samples=3, max_concurrent_trials=1, scheduler="fifo")
    with pytest.raises(ktune.SearchInterrupted) as caught:
        ktune.run(raw, callbacks=[CtrlC("complete")])
    assert (caught.value.finished, caught.value.total) == (1, 3)
    assert "ktune resume s3://ktune-ctrlc/runs/stopped" in str(caught.value)
    keys = set(_objects(s3, "ktune-ctrlc", "runs/stopped/"))
    assert "runs/stopped/optuna.journal" in keys
    assert any(k.startswith("runs/stopped/experiment_state-") for k in keys)
    assert not {"runs/stopped/best.json", "runs/stopped/results.csv"} & keys
    assert not any("/export/" in k for k in keys)
    # what `ktune report` of the URI reads to say the search was interrupted
    stop = json.loads(_get(s3, "ktune-ctrlc", "runs/stopped/interrupted.json"))
    assert (stop["signal"], stop["finished"], stop["not_started"]) == ("SIGINT", 1, 2)
    shown = ktune_cli("report", caught.value.experiment)  # read from a downloaded copy
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"(`ktune resume {caught.value.experiment}` continues it)" in shown.stdout

    shutil.rmtree(tmp_path / "staging")  # the driver's machine is gone
    result = ktune.resume(caught.value.experiment)  # the URI the line names
    assert len(result.trials) == 3
    remote_best = json.loads(_get(s3, "ktune-ctrlc", "runs/stopped/best.json"))
    assert remote_best["num_trials"] == 3

    # An export upload cut off by a kill (files before saved_model.pb, which goes last)
    # is no export: a resume exports again rather than call the search finished.
    export = set(_objects(s3, "ktune-ctrlc", "runs/stopped/export/"))
    cut = {k for k in export if k.endswith("saved_model.pb") or "/variables/" in k}
    assert cut and "runs/stopped/export/metadata.json" in export - cut
    for key in cut:
        s3[0].delete_object(Bucket="ktune-ctrlc", Key=key)
    ktune.resume(caught.value.experiment)
    assert set(_objects(s3, "ktune-ctrlc", "runs/stopped/export/")) == export
    again = json.loads(_get(s3, "ktune-ctrlc", "runs/stopped/best.json"))
    assert again["export"] == remote_best["export"] and again["trial"] == remote_best["trial"]


@pytest.mark.slow
def test_an_ensemble_on_uri_storage_keeps_its_members_beside_the_trials(
    s3, tmp_path, ray_session, monkeypatch
):
    """ensemble.seeds on S3: each member is uploaded under ensemble/seed_<s>/ (its
    member.json last); on a machine without the staging folder, `ktune export` of the URI
    and ktune.load(URI).load_model() rebuild the mean of the members from the bucket (the
    export the run made from the models in memory predicts the same), and a resume
    fetches a member trained before instead of training it again."""
    import shutil

    import numpy as np

    import ktune
    from ktune.config import TrainingConfig
    from ktune.ensemble import fetch_members
    from ktune.experiment import run_experiment
    from ktune.rebuild import family_of_record

    uri = _bucket(s3, "ens")
    raw = tiny_experiment(tmp_path, storage=uri, search__num_samples=2, ensemble={"seeds": 2})
    raw["name"] = "ens"
    exp_file = tmp_path / "ens.yaml"
    exp_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("KTUNE_STAGING_DIR", str(tmp_path / "staging"))
    cfg = parse_config(raw, source_path=str(exp_file))
    best = run_experiment(cfg)
    member = best["ensemble"]["members"][1]
    assert best["ensemble"]["seeds"] == [0, 1] and member["checkpoint"] == "ensemble/seed_1"
    keys = _objects(s3, "ens", "runs/ens/ensemble/")
    assert "runs/ens/ensemble/seed_1/ckpt.index" in keys
    saved = json.loads(_get(s3, "ens", "runs/ens/ensemble/seed_1/member.json"))
    assert saved["seed"] == 1 and saved["metrics"]["epoch"] == member["metrics"]["epoch"]

    client, _ = s3
    for key in _objects(s3, "ens", "runs/ens/export/"):
        target = tmp_path / "first" / key.removeprefix("runs/ens/export/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("ens", key, str(target))
    first = reload_in_fresh_process(tmp_path / "first", TEXTS)["probabilities"]

    shutil.rmtree(cfg.experiment_dir)  # another machine: no staging folder
    out = tmp_path / "again"
    done = ktune_cli("export", cfg.experiment_path, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "metadata.json").read_text())["ensemble_seeds"] == [0, 1]
    np.testing.assert_allclose(
        reload_in_fresh_process(out, TEXTS)["probabilities"], first, atol=1e-5
    )

    result = ktune.load(cfg.experiment_path, workdir=tmp_path / "load")
    model = result.load_model()
    assert model.name == "seed_ensemble"  # the mean of the two, not the best trial alone
    family = family_of_record(result.spec)
    ids = family.encode(result.spec["artefacts"], TrainingConfig(**result.spec["training"]), TEXTS)
    np.testing.assert_allclose(model.predict(ids, verbose=0), first, atol=1e-5)

    assert fetch_members(cfg.experiment_path, tmp_path / "fetched", [1, 2]) == [1]
    fetched = tmp_path / "fetched" / "ensemble" / "seed_1"
    assert (fetched / "member.json").read_bytes() == _get(
        s3, "ens", "runs/ens/ensemble/seed_1/member.json"
    )
    assert (fetched / "ckpt.index").is_file()
    assert not (tmp_path / "fetched" / "ensemble" / "seed_2").exists()


@pytest.mark.slow
def test_a_second_run_or_a_resume_of_a_uri_this_machine_runs_is_refused_touching_nothing(
    s3, tmp_path, monkeypatch
):
    """Two runs of one URI share its staging folder here. The second used to pass the
    bucket's emptiness check while the first was still starting, then cleared the first
    one's staging folder and trained into its study; a resume refused as "still running"
    had already replaced the running search's staging folder (its Optuna journal) with the
    bucket's copy, and the running search died. Both are now refused first."""
    from ktune.driver import claimed

    uri = _bucket(s3, "ktune-twice")
    monkeypatch.setenv("KTUNE_STAGING_DIR", str(tmp_path / "staging"))
    raw = tiny_experiment(tmp_path, storage=uri)
    raw["name"] = "twice"
    raw["search"].update(num_samples=2, max_concurrent_trials=1, scheduler="fifo")
    raw["training"]["epochs"] = 3
    raw["data"]["train_size"] = 3000
    exp = tmp_path / "twice.yaml"
    exp.write_text(yaml.safe_dump(raw))
    staged = parse_config(raw, base_dir=tmp_path).experiment_dir
    env = {**subprocess_env(), "KTUNE_STAGING_DIR": str(tmp_path / "staging")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ktune", *args],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
        )  # fmt: skip

    # a run of this URI starting here (its claim held: Ray and the data take seconds)
    with claimed(staged, working_copy=True):
        second = cli("run", str(exp))
    assert second.returncode == 2, second.stderr[-2000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("ktune: error: s3://ktune-twice/runs/twice")
    assert f"another ktune run (pid {os.getpid()} on" in last
    assert _objects(s3, "ktune-twice") == {}

    first = subprocess.Popen(
        [sys.executable, "-m", "ktune", "run", str(exp)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    deadline = time.time() + 300
    while not any("/checkpoint_" in k for k in _objects(s3, "ktune-twice")):
        assert first.poll() is None and time.time() < deadline, "no epoch before the end"
        time.sleep(0.3)
    journal = (staged / "optuna.journal").read_bytes()
    (staged / "left-by-the-test").write_text("the resume must not clear this folder")
    resumed = cli("resume", storage.join(uri, "twice"))
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    assert "its search is still running" in resumed.stderr.strip().splitlines()[-1]
    assert (staged / "left-by-the-test").is_file()  # the running search's folder: untouched
    assert (staged / "optuna.journal").read_bytes().startswith(journal)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    best = json.loads(_get(s3, "ktune-twice", "runs/twice/best.json"))
    assert best["num_trials"] == 2


@pytest.mark.slow
def test_a_trial_asha_stopped_before_a_kill_stays_stopped_on_a_uri(s3, tmp_path, ray_tmp):
    """As on local storage (test_resume.py): killed after ASHA stopped a trial, the resume
    of the URI keeps it stopped where it was. Before, ASHA's stop log was kept for local
    storage only, and the audit saw a stopped trial come back after a kill before Ray's
    next snapshot and train on (and win). That window (Ray snapshots every two checkpoints
    of a trial) is not hit on purpose here: the stop log's upload is the check."""
    import csv
    import signal

    from conftest import first_asha_stop, kill_ray_under, ktune_run_in_its_own_group

    uri = _bucket(s3, "ktune-stops")
    raw = tiny_experiment(tmp_path, storage=uri, search__num_samples=2, training__epochs=5)
    raw["name"] = "stops"
    raw["data"]["train_size"] = 12000  # epochs of seconds: the kill lands mid-run
    raw["export"] = {"enabled": False}
    exp = tmp_path / "stops.yaml"
    exp.write_text(yaml.safe_dump(raw))
    staging = str(tmp_path / "staging")
    # TUNE_GLOBAL_CHECKPOINT_S: no snapshot of Ray's between the stop and the kill
    run, env = ktune_run_in_its_own_group(
        exp, ray_tmp, stderr=subprocess.STDOUT, TUNE_GLOBAL_CHECKPOINT_S="1000",
        KTUNE_STAGING_DIR=staging,
    )  # fmt: skip
    stopped = first_asha_stop(run)  # two trials at once: one is stopped at rung 1 or 2
    # ASHA's stop log reaches the bucket as the stopped trial ends (a resumed trial reads
    # it there); before, it was kept for local storage only
    deadline = time.time() + 10
    while not _objects(s3, "ktune-stops", "runs/stops/.ktune-asha-stops"):
        assert time.time() < deadline, "ASHA's stop log never reached the bucket"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    kill_ray_under(ray_tmp)
    assert stopped is not None, "no trial was stopped early"
    keys = _objects(s3, "ktune-stops", "runs/stops/")
    assert "runs/stops/best.json" not in keys, "the run ended before the kill"
    trial, epoch = stopped

    resumed = subprocess.run(
        [sys.executable, "-m", "ktune", "resume", storage.join(uri, "stops")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    text = _get(s3, "ktune-stops", "runs/stops/results.csv").decode()
    rows = {r["trial"]: r for r in csv.DictReader(text.splitlines())}
    assert int(rows[trial]["epochs"]) == epoch  # as if never interrupted
    trained = {k for k in _objects(s3, "ktune-stops", f"runs/stops/{trial}/") if "ckpt.index" in k}
    assert len(trained) <= epoch + 1  # nothing trained past the stop after the resume
