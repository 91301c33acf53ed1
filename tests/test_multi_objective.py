"""A real tiny two-objective search (accuracy against parameters): its Pareto front, and
the export of a front trial that is not the most accurate."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from ktune.config import parse_config
from ktune.objectives import Objective, dominates

from conftest import ktune_cli, reload_in_fresh_process, tiny_experiment

pytestmark = pytest.mark.slow

OBJECTIVES = (Objective("val_accuracy", "max"), Objective("params", "min"))
TEXTS = ["Striker scores twice as the league leaders win the cup final", "Shares fell", ""]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    from ktune.experiment import run_experiment

    tmp = tmp_path_factory.mktemp("moo")
    raw = tiny_experiment(tmp, name="moo")
    raw["search"].update(
        num_samples=5,
        objectives=[{"metric": "val_accuracy", "mode": "max"}, {"metric": "params"}],
    )
    raw["search"]["space"]["embed_dim"] = [4, 8, 16, 32]
    exp_file = tmp / "moo.yaml"
    exp_file.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, source_path=str(exp_file))
    assert cfg.search.sampler == "nsga2"
    best = run_experiment(cfg)
    return cfg, best


def test_the_front_is_the_non_dominated_trials(finished):
    cfg, best = finished
    rows = pd.read_csv(cfg.experiment_dir / "results.csv").to_dict("records")
    assert len(rows) == cfg.search.num_samples
    assert all(r["params"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in rows)
    front_ids = [e["trial"] for e in best["pareto_front"]]
    assert front_ids and len(set(front_ids)) == len(front_ids)
    front = [r for r in rows if r["trial"] in front_ids]
    others = [r for r in rows if r["trial"] not in front_ids]
    for r in front:
        assert not any(dominates(o, r, OBJECTIVES) for o in rows), r
    for r in others:
        assert any(dominates(f, r, OBJECTIVES) for f in front), r
    # best.json's trial: the most accurate of the front, so existing readers keep working
    assert best["trial"] == front_ids[0]
    assert best["metrics"]["val_accuracy"] == max(r["val_accuracy"] for r in front)
    assert best["objectives"] == [
        {"metric": "val_accuracy", "mode": "max"},
        {"metric": "params", "mode": "min"},
    ]
    import ktune

    summary = ktune.load(cfg.experiment_dir).summary()
    assert "Pareto front" in summary and all(t in summary for t in front_ids)
    # the trials' table has a column for the other objective, each trial's own value
    table = summary.splitlines()
    assert table[0].split()[-2:] == ["val_accuracy", "params"], table[0]
    for r in rows:
        line = next(ln for ln in table if ln.startswith(r["trial"] + " "))
        assert line.split()[-1] == str(int(r["params"])), line
    from ktune.report import load_experiment
    from ktune.report.text import trial_table

    header, cells = trial_table(load_experiment(cfg.experiment_dir))
    assert header[-1] == "best params"
    by_trial = {c[0].rstrip(" *"): c[-1] for c in cells}
    assert by_trial == {r["trial"]: str(int(r["params"])) for r in rows}
    for entry in best["pareto_front"]:
        row = next(r for r in rows if r["trial"] == entry["trial"])
        assert entry["objectives"]["params"] == row["params"]
        assert math.isclose(entry["objectives"]["val_accuracy"], row["val_accuracy"])
    print(
        "\nPareto front:",
        json.dumps(
            [
                {"trial": e["trial"], **e["objectives"], "embed_dim": e["config"]["embed_dim"]}
                for e in best["pareto_front"]
            ]
        ),
    )
    print(
        "all trials:",
        json.dumps(
            [{k: r[k] for k in ("trial", "embed_dim", "params", "val_accuracy")} for r in rows]
        ),
    )


def test_export_of_another_front_trial_serves_raw_strings(finished):
    import ktune

    cfg, best = finished
    front = ktune.load(cfg.experiment_dir).pareto_front
    assert [e["trial"] for e in front] == [e["trial"] for e in best["pareto_front"]]
    if len(front) < 2:
        pytest.skip(f"this tiny search's front has one trial: {front}")
    other = front[-1]["trial"]  # the smallest model, not the most accurate
    default = cfg.experiment_dir / "export"
    before = (default / "metadata.json").read_text()

    done = ktune_cli("export", str(cfg.experiment_dir), "--trial", other)
    assert done.returncode == 0, done.stderr[-2000:]
    out = cfg.experiment_dir / f"export-{other}"
    assert (out / "saved_model.pb").is_file()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["trial"] == other and meta["config"] == front[-1]["config"]
    got = reload_in_fresh_process(out, TEXTS)
    assert len(got["label"]) == len(TEXTS)
    assert (default / "metadata.json").read_text() == before  # the default export untouched
    # from Python: that trial's model and predictions, not the best's
    result = ktune.load(cfg.experiment_dir)
    mine = result.predict(TEXTS, trial=other)
    probs = [[p["probabilities"][c] for c in meta["class_names"]] for p in mine]
    assert np.allclose(probs, got["probabilities"], atol=1e-5)
    assert result.load_model(trial=other).count_params() == front[-1]["objectives"]["params"]
    assert result.load_model().count_params() != result.load_model(trial=other).count_params()
    with pytest.raises(ktune.ExperimentError, match="not a trial of the Pareto front"):
        result.predict(TEXTS, trial="trial_nope")
    # its own test accuracy, in best.json's front and its export: the test split read again
    from ktune.data import load_data
    from ktune.experiment import spec_data

    spec = result.spec
    data = load_data(spec_data(spec))
    labels = [p["label"] for p in result.predict(list(data.test_texts), trial=other)]
    mine = np.mean([got == data.class_names[y] for got, y in zip(labels, data.test_labels)])
    assert front[-1]["test_accuracy"] == meta["test_accuracy"]
    assert abs(mine - meta["test_accuracy"]) <= 1.01 / len(data.test_labels)
    assert front[0]["test_accuracy"] == best["test_accuracy"]  # the best trial's, as evaluated

    again = ktune_cli("export", str(cfg.experiment_dir), "--trial", other)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_export_refuses_an_unknown_trial(finished):
    cfg, best = finished
    done = ktune_cli("export", str(cfg.experiment_dir), "--trial", "trial_nope")
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("ktune: error: --trial: trial_nope") and best["trial"] in line


def test_trial_of_a_one_objective_search_says_it_has_no_front():
    from ktune.errors import ExperimentError
    from ktune.experiment_dir import front_trial

    best = {"trial": "trial_b", "metrics": {"val_accuracy": 0.9}}
    assert front_trial(best, None) is best and front_trial(best, "trial_b") is best
    with pytest.raises(ExperimentError) as raised:
        front_trial(best, "trial_a")
    assert str(raised.value) == (
        "--trial: this search has one objective, so no Pareto front to export trial_a "
        "from (search.objectives); its best trial is trial_b"
    )


def test_the_report_draws_the_front(finished, tmp_path):
    from ktune.report import write_report
    from ktune.report.load import load_experiment
    from ktune.report.pareto_plot import pareto_points

    cfg, best = finished
    record = load_experiment(cfg.experiment_dir)
    data = pareto_points(record)
    assert data is not None
    assert data["front"] == [e["trial"] for e in best["pareto_front"]]
    assert len(data["points"]) == cfg.search.num_samples
    written = write_report(record, tmp_path / "report.html")
    image = tmp_path / "report-pareto-front.png"
    assert image in written.images and image.read_bytes()[:4] == b"\x89PNG"
    assert "Pareto front" in written.path.read_text()


def test_latency_and_size_are_reported_with_the_last_epoch(tmp_path, ray_session):
    """Three objectives, FIFO: every trial measures its model; ``latency_ms`` (serving
    raw strings, as exported) comes with the last epoch's result only."""
    from ktune.experiment import run_experiment

    raw = tiny_experiment(tmp_path, name="latency")
    raw["search"].update(
        num_samples=2,
        scheduler="fifo",
        sampler="tpe",
        objectives=[{"metric": "val_accuracy"}, {"metric": "latency_ms"}, {"metric": "model_mb"}],
    )
    raw["export"] = {"enabled": False}
    cfg = parse_config(raw)
    best = run_experiment(cfg)
    rows = pd.read_csv(cfg.experiment_dir / "results.csv").to_dict("records")
    assert all(r["latency_ms"] > 0 and 0 < r["model_mb"] < 1 for r in rows), rows
    for trial in cfg.experiment_dir.glob("trial_*"):
        epochs = [json.loads(x) for x in (trial / "result.json").read_text().splitlines()]
        assert [e["latency_ms"] is not None for e in epochs] == [False, True]
        assert all("model_mb" in e for e in epochs)
    assert best["pareto_front"] and best["trial"] == best["pareto_front"][0]["trial"]
    print(
        "\nlatency run:",
        json.dumps(
            [{k: r[k] for k in ("trial", "val_accuracy", "latency_ms", "model_mb")} for r in rows]
        ),
    )
