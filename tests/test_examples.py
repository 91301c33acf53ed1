"""Every shipped experiment file is valid; the AG News one loads real data when asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktune.config import load_config

from conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# Real AG News texts, kept out of the repository: ../shared/data beside the checkout.
AG_SAMPLE = REPO.parent / "shared" / "data" / "ag_news_sample.csv"
NEEDS_SAMPLE = {"agnews_sample.yaml", "agnews_pareto.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path: Path):
    if path.name in NEEDS_SAMPLE and not AG_SAMPLE.is_file():
        pytest.skip(f"{AG_SAMPLE} is missing (the shared AG News sample this example reads)")
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


@pytest.mark.skipif(not AG_SAMPLE.is_file(), reason=f"{AG_SAMPLE} is missing")
def test_agnews_sample_reads_the_shared_file_as_distributed():
    cfg = load_config(REPO / "examples" / "agnews_sample.yaml")
    d = cfg.data
    assert cfg.family == "transformer" and d.source == "csv"
    assert Path(d.train) == AG_SAMPLE.resolve() and d.test is None
    assert d.columns == ("label", "title", "description")
    assert d.text == ("title", "description") and d.label == "label"
    assert d.label_names == ("World", "Sports", "Business", "Sci/Tech")
    assert d.unescape_backslash is True and d.test_fraction == 0.2
    assert cfg.search.num_samples == 12 and cfg.training.epochs == 6
    assert 64 <= cfg.training.maxlen <= 96 and cfg.training.vocab_size == 20000


@pytest.mark.slow
def test_the_python_api_example_runs_offline(tmp_path):
    """examples/python_api.py: every pattern of the README's Python section, end to end."""
    import subprocess
    import sys

    from conftest import REPO, subprocess_env

    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "python_api.py"),
            "--quick",
            "--storage",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if ln[:2] in ("1.", "2.", "3.", "4.")]
    assert [ln[:2] for ln in lines] == ["1.", "2.", "3.", "4."], done.stdout[-2000:]
    for name in ("api-demo/export", "own-tuner-export", "own-model-export"):
        assert (tmp_path / name / "saved_model.pb").is_file()
