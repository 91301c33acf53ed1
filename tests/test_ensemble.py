"""ensemble.seeds: the best configuration trained with more seeds, probabilities averaged.
What is tested, exported and loaded is the mean of the members, each as saved."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from test_crash_windows import _kill_when

import ktune
from ktune.config import parse_config

from conftest import REPO, ktune_cli, reload_in_fresh_process, subprocess_env, tiny_experiment

TEXTS = [
    "Striker scores twice as the league leaders win the cup final",
    "Shares fell after the bank cut its profit forecast",
    "New chip doubles battery life of phones",
]


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"ensemble": {"seeds": 0}}, "ensemble.seeds: must be >= 1, got 0"),
        ({"ensemble": {"seeds": "3"}}, "ensemble.seeds: must be an integer, got '3'"),
        ({"ensemble": {"seed": 3}}, "ensemble.seed: unknown key"),
        ({"ensemble": 3}, "ensemble: must be a mapping"),
        (
            {"ensemble": {"seeds": 3}, "family": "tfhub_bert"},
            "ensemble.seeds: 3 seeds are for the transformer family only",
        ),
        (
            {
                "ensemble": {"seeds": 2},
                "search": {"objectives": [{"metric": "val_accuracy"}, {"metric": "params"}]},
            },
            "ensemble.seeds: averages one best trial; not with search.objectives",
        ),
        (
            {"ensemble": {"seeds": 2}, "search": {"scheduler": "pbt"}},
            "ensemble.seeds: not with scheduler pbt",
        ),
        (
            {"ensemble": {"seeds": 2}, "model": {"build": "os:path"}},
            r"ensemble.seeds: not with model.build",
        ),
        ({"ensemble": 0}, "ensemble: must be a mapping, got 0"),
        ({"ensemble": False}, "ensemble: must be a mapping, got False"),
    ],
)
def test_bad_ensemble_settings_name_the_key(over, match):
    with pytest.raises(ktune.ConfigError, match=match):
        parse_config({"name": "x", **over})


def test_one_seed_is_the_default_and_means_off():
    assert parse_config({"name": "x"}).ensemble_seeds == 1
    assert parse_config({"name": "x", "ensemble": {"seeds": 1}}).ensemble_seeds == 1


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    from ktune.experiment import run_experiment

    tmp = tmp_path_factory.mktemp("ensemble")
    raw = tiny_experiment(tmp, search__num_samples=2, ensemble={"seeds": 3})
    exp_file = tmp / "tiny.yaml"
    exp_file.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, source_path=str(exp_file))
    best = run_experiment(cfg)
    return cfg, best


def _members(cfg, best):
    """Each member restored on its own from its saved checkpoint."""
    from ktune.rebuild import family_of_record, restore_from_record

    spec = json.loads((cfg.experiment_dir / "ktune.json").read_text())
    family = family_of_record(spec)
    folders = [best["ensemble"]["members"][0]["checkpoint"]] + [
        str(cfg.experiment_dir / m["checkpoint"]) for m in best["ensemble"]["members"][1:]
    ]
    return family, spec, [restore_from_record(family, best["config"], spec, d) for d in folders]


@pytest.mark.slow
def test_the_export_and_test_accuracy_are_the_mean_of_the_saved_members(finished):
    from ktune.config import TrainingConfig
    from ktune.data import load_data

    cfg, best = finished
    ensemble = best["ensemble"]
    assert ensemble["seeds"] == [0, 1, 2]
    members = ensemble["members"]
    assert members[0]["checkpoint"] == best["checkpoint"]  # the best trial is the first
    for member in members[1:]:
        assert (cfg.experiment_dir / member["checkpoint"] / "ckpt.index").is_file()
        assert 1 <= member["metrics"]["epoch"] <= 2 and "val_accuracy" in member["metrics"]

    family, spec, models = _members(cfg, best)
    training = TrainingConfig(**spec["training"])
    ids = family.encode(spec["artefacts"], training, TEXTS)
    alone = [m.predict(ids, verbose=0) for m in models]
    # Three seeds, three different models: the mean is not any one of them.
    assert min(np.max(np.abs(a - alone[0])) for a in alone[1:]) > 1e-3
    mean = np.mean(alone, axis=0)
    exported = reload_in_fresh_process(best["export"], TEXTS)["probabilities"]
    np.testing.assert_allclose(exported, mean, atol=1e-5)

    data = load_data(cfg.data)
    test_ids = family.encode(spec["artefacts"], training, list(data.test_texts))
    probs = [m.predict(test_ids, verbose=0) for m in models]
    accuracy = float(np.mean(np.mean(probs, axis=0).argmax(-1) == data.test_labels))
    assert best["test_accuracy"] == pytest.approx(accuracy)
    for member, p in zip(members, probs):
        assert member["test_accuracy"] == pytest.approx(np.mean(p.argmax(-1) == data.test_labels))
    meta = json.loads((cfg.experiment_dir / "export" / "metadata.json").read_text())
    assert meta["ensemble_seeds"] == [0, 1, 2]
    # The export's metrics are the exported model's: the ensemble's on the validation
    # split, computed from the members; the best trial's alone beside them.
    val_ids = family.encode(spec["artefacts"], training, list(data.val_texts))
    val_probs = np.mean([m.predict(val_ids, verbose=0) for m in models], axis=0)
    val_accuracy = float(np.mean(val_probs.argmax(-1) == data.val_labels))
    assert ensemble["metrics"]["val_accuracy"] == pytest.approx(val_accuracy)
    assert meta["metrics"] == ensemble["metrics"]
    assert meta["trial_metrics"] == best["metrics"]


@pytest.mark.slow
def test_export_cli_load_and_predict_rebuild_the_ensemble_from_disk(finished, tmp_path):
    cfg, best = finished
    out = tmp_path / "again"
    done = ktune_cli("export", str(cfg.experiment_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    again = reload_in_fresh_process(out, TEXTS)["probabilities"]
    first = reload_in_fresh_process(best["export"], TEXTS)["probabilities"]
    np.testing.assert_allclose(again, first, atol=1e-5)

    result = ktune.load(cfg.experiment_dir)
    predicted = result.predict(TEXTS)  # from the export, which is the ensemble's
    np.testing.assert_allclose(
        [list(p["probabilities"].values()) for p in predicted], first, atol=1e-5
    )
    from ktune.config import TrainingConfig
    from ktune.rebuild import family_of_record

    family = family_of_record(result.spec)
    ids = family.encode(result.spec["artefacts"], TrainingConfig(**result.spec["training"]), TEXTS)
    np.testing.assert_allclose(result.load_model().predict(ids, verbose=0), first, atol=1e-5)
    val = f"its val_accuracy {best['ensemble']['metrics']['val_accuracy']:.4f}"
    assert f"the mean of seeds [0, 1, 2] (ensemble.seeds, {val})" in result.summary()
    report = ktune_cli("report", str(cfg.experiment_dir))
    assert report.returncode == 0, report.stderr[-2000:]
    alone = f"{best['ensemble']['members'][0]['test_accuracy']:.4f}"
    assert f"(ensemble of seeds [0, 1, 2]; the trial alone {alone})" in report.stdout


@pytest.mark.slow
def test_a_missing_member_is_an_error_not_a_smaller_ensemble(finished, tmp_path):
    import shutil

    cfg, best = finished
    copy = tmp_path / "copy"
    shutil.copytree(cfg.experiment_dir, copy)
    shutil.rmtree(copy / best["ensemble"]["members"][2]["checkpoint"])
    done = ktune_cli("export", str(copy), "--out", str(tmp_path / "out"))
    assert done.returncode != 0
    assert "an ensemble member's checkpoint is missing" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_run_killed_while_training_members_resumes_to_the_whole_ensemble(tmp_path, ray_tmp):
    raw = tiny_experiment(tmp_path, search__num_samples=2, ensemble={"seeds": 3})
    raw["name"] = "killed"
    raw["data"]["train_size"] = 3000  # members of a few seconds: a window to kill in
    exp = tmp_path / "killed.yaml"
    exp.write_text(yaml.safe_dump(raw))
    exp_dir = Path(raw["storage"]) / "killed"
    env = {**subprocess_env(), "RAY_TMPDIR": ray_tmp, "TMPDIR": ray_tmp}
    with (tmp_path / "run.log").open("w") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "ktune", "run", str(exp)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _kill_when(run, ray_tmp, (exp_dir / "ensemble").is_dir, "members training")
    assert not (exp_dir / "best.json").exists()
    # What a kill between a member's write and its move into place leaves behind.
    stale = exp_dir / "ensemble" / ".seed_1.tmp-99999"
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "ckpt.index").write_text("cut short")

    done = ktune_cli("resume", str(exp_dir), env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    best = json.loads((exp_dir / "best.json").read_text())
    assert best["ensemble"]["seeds"] == [0, 1, 2]
    assert sorted(p.name for p in (exp_dir / "ensemble").iterdir()) == ["seed_1", "seed_2"]
    _, spec, models = _members(SimpleNamespace(experiment_dir=exp_dir), best)
    from ktune.config import TrainingConfig
    from ktune.rebuild import family_of_record

    ids = family_of_record(spec).encode(
        spec["artefacts"], TrainingConfig(**spec["training"]), TEXTS
    )
    mean = np.mean([m.predict(ids, verbose=0) for m in models], axis=0)
    exported = reload_in_fresh_process(best["export"], TEXTS)["probabilities"]
    np.testing.assert_allclose(exported, mean, atol=1e-5)

    # Once more (as after a kill during the export): the saved members are used again,
    # not trained again, so best.json, the export and the members stay one ensemble.
    saved = {p: p.stat().st_mtime_ns for p in (exp_dir / "ensemble").glob("seed_*/ckpt.index")}
    shutil.rmtree(best["export"])  # lost after best.json named it: a resume exports again
    again = ktune_cli("resume", str(exp_dir), env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in saved} == saved and len(saved) == 2
    after = json.loads((exp_dir / "best.json").read_text())
    assert after["test_accuracy"] == best["test_accuracy"]
    assert after["ensemble"]["members"] == best["ensemble"]["members"]


def test_a_member_that_diverges_is_left_out_with_a_warning_not_the_search(tmp_path, caplog):
    """A seed whose training reaches no finite metric is not saved and not averaged; the
    run goes on to best.json (which records it) instead of stopping after the search."""
    from ktune.data import load_data
    from ktune.ensemble import train_members
    from ktune.trainables import get_family

    cfg = parse_config(tiny_experiment(tmp_path, ensemble={"seeds": 3}))
    data = load_data(cfg.data)
    family = get_family("transformer")
    prepared = family.prepare(data, cfg.training, cfg.model)
    config = {"embed_dim": 8, "heads": 1, "ff_dim": 8, "num_blocks": 1, "learning_rate": 1e-2}
    exp_dir = tmp_path / "exp"
    # The same call with a sane learning rate keeps its member: what leaves one out below
    # is the divergence.
    members, models, left = train_members(
        exp_dir, family, config, prepared, data, cfg.training, [2], "val_loss", "min"
    )
    assert [m["seed"] for m in members] == [2] and len(models) == 1 and left == []
    assert (exp_dir / "ensemble" / "seed_2" / "member.json").is_file()

    diverging = {**config, "learning_rate": 1e9}
    with caplog.at_level("WARNING", logger="ktune"):
        members, models, left = train_members(
            exp_dir, family, diverging, prepared, data, cfg.training, [1, 2], "val_loss", "min"
        )
    assert members == [] and models == []
    reason = "no finite val_loss in 2 epoch(s)"
    assert left == [{"seed": 1, "reason": reason}, {"seed": 2, "reason": reason}]
    # seed_2 of the other configuration is not one of this ensemble: removed, not kept
    assert not list((exp_dir / "ensemble").glob("seed_*"))
    assert "ensemble: seed 1 left out: no finite val_loss" in caplog.text


def test_the_notes_name_the_seeds_left_out():
    from ktune.tables import ensemble_note

    ensemble = {
        "seeds": [0, 2],
        "members": [{"seed": 0, "test_accuracy": 0.81}, {"seed": 2, "test_accuracy": 0.8}],
        "left_out": [{"seed": 1, "reason": "no finite val_accuracy in 6 epoch(s)"}],
    }
    assert ensemble_note({"ensemble": ensemble}) == (
        " (ensemble of seeds [0, 2]; seeds [1] left out: no finite val_accuracy in 6 "
        "epoch(s); the trial alone 0.8100)"
    )
    del ensemble["left_out"]
    assert ensemble_note({"ensemble": ensemble}) == (
        " (ensemble of seeds [0, 2]; the trial alone 0.8100)"
    )
