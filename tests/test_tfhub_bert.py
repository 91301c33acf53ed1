"""The tfhub_bert family on tiny TF-Hub-format BERTs written by `make_tiny_bert` (no download).

Build, fit, checkpoint and export round trips are the contract every family keeps
(``tests/test_family_contract.py``); here: sizes, handles, frozen vs fine-tuned, errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from ktune.config import parse_config
from ktune.errors import ConfigError
from ktune.search_spaces import get_space
from ktune.search_spaces.bert import format_handle

from conftest import REPO, subprocess_env, tiny_experiment

TEMPLATE = "bert_en_uncased_L-{L}_H-{H}_A-{A}"


@pytest.fixture(scope="session")
def tiny_hub(tiny_setup) -> Path:
    """Two tiny sizes (H 32 and 64, A = H / 16) and a preprocess model, written once
    (the family's testing hook, shared with the contract suite)."""
    setup = tiny_setup("tfhub_bert")
    out = setup.root
    assert setup.lines[-1] == f"model.encoder: {out / TEMPLATE}"
    return out


def hub_experiment(tmp_path: Path, hub: Path, **space) -> dict:
    raw = tiny_experiment(tmp_path)
    raw["family"] = "tfhub_bert"
    raw["name"] = "tiny_hub"
    raw["model"] = {"preprocess": str(hub / "preprocess"), "encoder": str(hub / TEMPLATE)}
    raw["search"]["space"] = {
        "embed_dim": [32, 64],
        "layers": [2],
        "head_size": 16,
        "learning_rate": {"low": 1e-3, "high": 3e-3, "log": True},
        "trainable": [True],
        **space,
    }
    raw["data"] = {"source": "builtin", "train_size": 600, "test_size": 60, "seed": 1}
    raw["training"] = {"epochs": 1, "batch_size": 32, "maxlen": 24, "vocab_size": 400}
    return raw


def test_size_mapping_to_handles():
    space = parse_config({"name": "x", "family": "tfhub_bert"}).search.space
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    define = get_space("tfhub_bert").space_fn(space)
    for _ in range(40):
        config = define(study.ask())
        assert config["heads"] == config["embed_dim"] // 64  # A = H / 64
        assert config["embed_dim"] in (128, 256, 512, 768)
        assert config["layers"] in (2, 4, 6, 8, 10, 12)
    template = "https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-{L}_H-{H}_A-{A}/1"
    assert format_handle(template, layers=4, embed_dim=128, heads=2) == (
        "https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-4_H-128_A-2/1"
    )


def test_size_config_errors():
    with pytest.raises(ConfigError, match=r"search\.space\.embed_dim.*head_size"):
        parse_config(
            {"name": "x", "family": "tfhub_bert", "search": {"space": {"embed_dim": [100]}}}
        )
    with pytest.raises(ConfigError, match=r"model\.encoder.*placeholders"):
        parse_config(
            {
                "name": "x",
                "family": "tfhub_bert",
                "model": {"encoder": "https://tfhub.dev/x/bert/1"},
            }
        )
    with pytest.raises(ConfigError, match=r"model\.encoderr: unknown key.*'encoder'"):
        parse_config({"name": "x", "family": "tfhub_bert", "model": {"encoderr": "x"}})


def test_frozen_and_fine_tuned_models(tiny_hub, tmp_path):
    from ktune.trainables import get_family

    cfg = parse_config(hub_experiment(tmp_path, tiny_hub))
    family = get_family("tfhub_bert")
    artefacts = {"preprocess": str(tiny_hub / "preprocess"), "encoder": str(tiny_hub / TEMPLATE)}
    base = {"embed_dim": 32, "layers": 2, "heads": 2, "dropout": 0.1}
    frozen = family.build_model({**base, "trainable": False}, artefacts, 4, cfg.training)
    tuned = family.build_model({**base, "trainable": True}, artefacts, 4, cfg.training)
    assert [w.shape.as_list() for w in frozen.trainable_weights] == [[32, 4], [4]]  # head only
    assert len(tuned.trainable_weights) > 10
    n_frozen = sum(int(np.prod(w.shape)) for w in frozen.trainable_weights)
    n_tuned = sum(int(np.prod(w.shape)) for w in tuned.trainable_weights)
    assert n_tuned > 50 * n_frozen
    inputs = family.encode(artefacts, cfg.training, ["A tiny test", ""])
    assert inputs["input_word_ids"].shape == (2, 24)
    probs = tuned.predict(inputs, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def run_cli(exp: Path, storage: Path) -> subprocess.CompletedProcess:
    """``ktune run EXP --storage STORAGE`` in a fresh process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "ktune", "run", str(exp), "--storage", str(storage)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=300,
    )


def test_missing_handle_is_one_clear_line(tiny_hub, tmp_path):
    for key, value in (
        ("encoder", str(tmp_path / "nowhere" / TEMPLATE)),
        ("preprocess", str(tmp_path / "nowhere" / "preprocess")),
    ):
        raw = hub_experiment(tmp_path, tiny_hub)
        raw["model"][key] = value
        exp = tmp_path / f"missing_{key}.yaml"
        exp.write_text(yaml.safe_dump(raw))
        done = run_cli(exp, tmp_path / "r")
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"ktune: error: model.{key}: cannot load")
        assert "make-tiny-bert" in last
        assert not (tmp_path / "r").exists()


def test_maxlen_past_the_encoders_positions_is_one_clear_line(tiny_hub, tmp_path):
    """Before, every trial failed inside the encoder (a reshape to [1, 600, 64]) and the
    search ended failed; now the run is one line, exit 2, before any trial."""
    raw = hub_experiment(tmp_path, tiny_hub)
    raw["training"]["maxlen"] = 600
    exp = tmp_path / "long.yaml"
    exp.write_text(yaml.safe_dump(raw))
    done = run_cli(exp, tmp_path / "r")
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "ktune: error: training.maxlen: 600 is more than the 512 positions of a TF Hub BERT "
        "encoder; use at most 512"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_search_and_export(tiny_hub, tmp_path, ray_session):
    from ktune.experiment import run_experiment

    raw = hub_experiment(tmp_path, tiny_hub)
    raw["search"].update(num_samples=2, scheduler="fifo")
    cfg = parse_config(raw)
    best = run_experiment(cfg)
    import pandas as pd

    results = pd.read_csv(cfg.experiment_dir / "results.csv")
    assert list(results["status"]) == ["TERMINATED", "TERMINATED"]
    assert sorted(results["embed_dim"]) == [32, 64]  # both local sizes were searched
    assert best["config"]["embed_dim"] in (32, 64) and best["config"]["heads"] in (2, 4)
    meta = json.loads((Path(best["export"]) / "metadata.json").read_text())
    assert meta["family"] == "tfhub_bert" and meta["verified"]["max_abs_diff"] <= 1e-5
    # serving raw strings in a fresh process: the contract suite, for every family


@pytest.mark.download
def test_lesson_handles_load_from_tf_hub(tmp_path):
    """The lesson's real handles (needs TF Hub access): preprocess + L-4_H-128_A-2 encoder."""
    from ktune.trainables import get_family

    cfg = parse_config(
        {
            "name": "x",
            "family": "tfhub_bert",
            "search": {"space": {"embed_dim": [128], "layers": [4]}},
        }
    )
    family = get_family("tfhub_bert")
    family.check_model(cfg.model, cfg.search.space)
    artefacts = {"preprocess": cfg.model["preprocess"], "encoder": cfg.model["encoder"]}
    model = family.build_model(
        {"embed_dim": 128, "layers": 4, "heads": 2, "trainable": False}, artefacts, 4, cfg.training
    )
    probs = model.predict(family.encode(artefacts, cfg.training, ["hello world"]), verbose=0)
    assert probs.shape == (1, 4)
