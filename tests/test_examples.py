"""Every shipped experiment file is valid; the AG News one loads real data when asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktune.config import load_config

from conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path: Path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.search.num_samples >= 1


def test_quickstart_is_the_embedded_default():
    cfg = load_config(REPO / "examples" / "quickstart.yaml")
    assert cfg.data.source == "builtin" and cfg.family == "transformer"
    assert (cfg.search.num_samples, cfg.search.max_concurrent_trials) == (8, 2)
    assert cfg.training.epochs == 3 and cfg.search.scheduler == "asha"


@pytest.mark.download
def test_agnews_loads_from_tfds():
    from ktune.data import load_data

    cfg = load_config(REPO / "examples" / "agnews_transformer.yaml")
    data = load_data(cfg.data)
    assert data.class_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert len(data.train_labels) + len(data.val_labels) == 120_000
    assert len(data.test_labels) == 7_600
