"""A real small search on the shared local Ray, exported, then used from other processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ktune.config import parse_config

from conftest import REPO, ktune_cli, reload_in_fresh_process, subprocess_env, tiny_experiment

pytestmark = pytest.mark.slow

TEXTS = [
    "Striker scores twice as the league leaders win the cup final",
    "Shares fell after the bank cut its profit forecast",
    "",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    """Runs the tiny experiment once for every test in this module."""
    from ktune.experiment import run_experiment

    tmp = tmp_path_factory.mktemp("e2e")
    raw = tiny_experiment(tmp)
    exp_file = tmp / "tiny.yaml"
    exp_file.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, source_path=str(exp_file))
    best = run_experiment(cfg)
    return cfg, best, exp_file


def test_search_results(finished):
    cfg, best, _ = finished
    exp_dir = cfg.experiment_dir
    assert exp_dir == Path(cfg.storage) / "tiny"
    for name in ("best.json", "results.csv", "ktune.json", "experiment.yaml"):
        assert (exp_dir / name).is_file(), name
    rows = (exp_dir / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + cfg.search.num_samples
    saved = json.loads((exp_dir / "best.json").read_text())
    assert saved["config"]["embed_dim"] % saved["config"]["heads"] == 0
    # the hyperparameters, not Optuna's name for heads drawn per embed_dim
    assert not [k for k in saved["config"] if k.startswith("heads_for")], saved["config"]
    assert saved["config"]["embed_dim"] in (8, 16)
    assert 0.0 <= saved["metrics"]["val_accuracy"] <= 1.0
    assert 0.0 <= saved["test_accuracy"] <= 1.0
    assert Path(saved["checkpoint"]).is_dir()
    # the tiny data is learnable: the best trial beats chance (0.25) clearly
    assert saved["metrics"]["val_accuracy"] > 0.5


def test_trials_reuse_workers(finished):
    """3 trials, 2 at a time: the third runs in a finished trial's worker (reuse_actors),
    so TensorFlow is imported and configured twice, not three times."""
    cfg, _, _ = finished
    pids = set()
    for trial in cfg.experiment_dir.glob("trial_*"):
        rows = [json.loads(x) for x in (trial / "result.json").read_text().splitlines()]
        pids |= {r["pid"] for r in rows}
    assert cfg.search.num_samples == 3
    assert 1 <= len(pids) <= 2, pids


def _csv_rows(exp_dir: Path) -> list[dict]:
    import csv

    with open(exp_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_asha_stopped_trials_hand_their_workers_on(tmp_path, ray_session):
    """ASHA stops trials mid-search; the next trials run in their workers, with their own
    configs, and none fails (Ray fails a reused worker whose stopped trial lingers)."""
    from ktune.experiment import run_experiment

    raw = tiny_experiment(tmp_path, name="asha", search__num_samples=6, export={"enabled": False})
    raw["search"]["space"]["learning_rate"] = {"low": 1e-4, "high": 2e-2, "log": True}
    raw["training"]["epochs"] = 3
    cfg = parse_config(raw)
    run_experiment(cfg)
    rows = _csv_rows(cfg.experiment_dir)
    assert len(rows) == 6
    assert {r["status"] for r in rows} == {"TERMINATED"}, [(r["trial"], r["error"]) for r in rows]
    assert any(int(r["epochs"]) < 3 for r in rows)  # ASHA stopped some
    pids = set()
    for r in rows:
        trial = cfg.experiment_dir / r["trial"]
        params = json.loads((trial / "params.json").read_text())
        assert float(r["learning_rate"]) == pytest.approx(params["learning_rate"])
        assert int(r["embed_dim"]) == params["embed_dim"]
        results = [json.loads(x) for x in (trial / "result.json").read_text().splitlines()]
        assert [x["epoch"] for x in results] == list(range(1, len(results) + 1))
        pids |= {x["pid"] for x in results}
    assert len(pids) < 6, pids


def test_export_is_verified_and_described(finished):
    cfg, best, _ = finished
    export = Path(best["export"])
    assert export == cfg.export_dir and (export / "saved_model.pb").is_file()
    meta = json.loads((export / "metadata.json").read_text())
    assert meta["family"] == "transformer"
    assert meta["class_names"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert meta["verified"]["max_abs_diff"] <= 1e-5
    assert {"tensorflow", "ray", "optuna", "ktune"} <= set(meta["versions"])


def test_saved_model_loads_without_ktune_in_a_fresh_process(finished):
    _, best, _ = finished
    from ktune.export import predict

    ours = np.array([list(r["probabilities"].values()) for r in predict(best["export"], TEXTS)])
    got = reload_in_fresh_process(best["export"], TEXTS)
    np.testing.assert_allclose(np.array(got["probabilities"]), ours, atol=1e-6)
    assert len(got["label"]) == len(TEXTS)
    assert all(lbl in ("World", "Sports", "Business", "Sci/Tech") for lbl in got["label"])


def test_predict_cli(finished):
    _, best, _ = finished
    done = ktune_cli("predict", best["export"], *TEXTS[:2])
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, TEXTS[:2]):
        label, score, echoed = line.split("\t")
        assert label in ("World", "Sports", "Business", "Sci/Tech")
        assert 0.25 <= float(score) <= 1.0
        assert echoed == text
    # TEXT "-": the texts from stdin, one a line, blank lines skipped
    piped = subprocess.run(
        [sys.executable, "-m", "ktune", "predict", best["export"], "-"],
        input="\n".join(TEXTS[:2]) + "\n\n",
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=300,
    )
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert piped.stdout == done.stdout


def test_export_cli_refuses_existing_target_and_force_replaces(finished, tmp_path):
    cfg, _, _ = finished
    out = tmp_path / "exported"
    done = ktune_cli("export", str(cfg.experiment_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    first = (out / "metadata.json").read_text()
    again = ktune_cli("export", str(cfg.experiment_dir), "--out", str(out))
    assert again.returncode == 2
    assert again.stderr.strip().startswith("ktune: error:") and str(out) in again.stderr
    assert (out / "metadata.json").read_text() == first  # untouched
    forced = ktune_cli("export", str(cfg.experiment_dir), "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert (out / "saved_model.pb").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temp folders left


def test_run_refuses_to_overwrite_an_experiment(finished):
    cfg, _, exp_file = finished
    before = sorted(p.name for p in cfg.experiment_dir.iterdir())
    best_before = (cfg.experiment_dir / "best.json").read_text()
    done = ktune_cli("run", str(exp_file))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "already exists" in done.stderr and str(cfg.experiment_dir) in done.stderr
    assert sorted(p.name for p in cfg.experiment_dir.iterdir()) == before
    assert (cfg.experiment_dir / "best.json").read_text() == best_before


def test_export_cli_on_missing_experiment(tmp_path):
    done = ktune_cli("export", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert "no such experiment directory" in done.stderr


def test_export_cli_on_an_unreadable_best_json(tmp_path, capsys):
    from ktune.cli import main

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "ktune.json").write_text("{}")
    (exp / "best.json").write_text("<!DOCTYPE html>")  # overwritten by something else
    assert main(["export", str(exp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ktune: error: {exp}: unreadable best.json ("), err


def test_an_export_killed_midway_leaves_the_previous_one_untouched(finished, tmp_path):
    import os
    import signal
    import tempfile
    import time

    cfg, _, _ = finished
    out = tmp_path / "model"
    first = ktune_cli("export", str(cfg.experiment_dir), "--out", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # the killed process cannot remove its temporary folder: it gets one of the test's
    with tempfile.TemporaryDirectory(prefix="ktune-test-") as scratch:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ktune",
                "export",
                str(cfg.experiment_dir),
                "--out",
                str(out),
                "--force",
            ],
            cwd=REPO,
            env={**subprocess_env(), "TMPDIR": scratch},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob(".model.tmp-*/saved_model.pb")):
            assert proc.poll() is None, "the export finished before it could be interrupted"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-way: written, not yet verified and moved
        proc.wait()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    from ktune.export import predict

    assert len(predict(out, ["still works"])) == 1
    # the next export clears what the killed one left behind
    again = ktune_cli("export", str(cfg.experiment_dir), "--out", str(out), "--force")
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
