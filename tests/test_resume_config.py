"""What `ktune resume` runs: the experiment as the first run ran it, wherever its relative
paths pointed and whatever the Python API merged into it. No Ray: the first run's folder
is written by the functions `ktune run` writes it with, and read back by resume's own."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from ktune.api import _experiment_config
from ktune.errors import ConfigError, ExperimentError
from ktune.experiment import resume_config, resume_search
from ktune.experiment_dir import (
    EXPERIMENT_FILE,
    new_spec,
    read_spec,
    write_experiment_file,
    write_spec,
)
from ktune.experiment_file import experiment_as_run, experiment_document

FILE = """\
# my experiment: the data lives beside this file
name: mine
family: transformer
data:
  source: csv
  train: data/train.csv      # relative to this file's folder
  text: [title, description]
  test_fraction: 0.2
search:
  num_samples: 3
  space:
    embed_dim: [8, 16]
    learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
training:
  epochs: 3
  maxlen: 16
"""


def write_csv(path: Path, rows: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["title", "description", "label"])
        for i in range(rows):
            out.writerow([f"title {i}", f"text {i}", ["a", "b"][i % 2]])


def first_run(experiment, overrides: dict) -> Path:
    """The experiment folder as `ktune run` starts it (ktune.json and the experiment)."""
    cfg = _experiment_config(experiment, overrides)
    exp_dir = cfg.experiment_dir
    exp_dir.mkdir(parents=True)
    as_run = experiment_as_run(cfg.source_path, cfg.document)
    assert as_run is not None
    write_experiment_file(exp_dir, as_run)
    write_spec(exp_dir, new_spec(cfg, ["a", "b"], {"vocabulary": []}, []))
    return exp_dir


def resumed(exp_dir: Path):
    return resume_config(exp_dir, read_spec(exp_dir), str(exp_dir.parent), exp_dir.name)


def same_experiment(a, b) -> None:
    for section in ("family", "data", "search", "training", "resources", "model", "base_dir"):
        assert getattr(a, section) == getattr(b, section), section


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An experiment file with its data beside it; the shell somewhere else."""
    folder = tmp_path / "project"
    write_csv(folder / "data" / "train.csv")
    (folder / "mine.yaml").write_text(FILE)
    monkeypatch.chdir(tmp_path)
    return folder


def test_resume_reads_relative_data_paths_where_the_file_was(project, tmp_path):
    runs = tmp_path / "elsewhere" / "runs"
    exp_dir = first_run(project / "mine.yaml", {"storage": str(runs)})
    # the copy keeps the file as written, comments and relative path included
    assert (exp_dir / EXPERIMENT_FILE).read_text() == FILE
    # data/train.csv is not beside the copy: read against the copy's folder it is missing
    assert not (exp_dir / "data" / "train.csv").exists()

    cfg = resumed(exp_dir)
    first = _experiment_config(project / "mine.yaml", {"storage": str(runs)})
    same_experiment(cfg, first)
    assert cfg.data.train == str(project / "data" / "train.csv")
    assert cfg.base_dir == str(project)


def test_resume_runs_the_sections_the_python_api_merged_in(project, tmp_path):
    overrides = {
        "storage": str(tmp_path / "runs"),
        "training": {"epochs": 1},
        "search": {"space": {"embed_dim": [32]}},
    }
    exp_dir = first_run(project / "mine.yaml", overrides)
    cfg = resumed(exp_dir)
    assert cfg.training.epochs == 1  # the file says 3
    assert (
        cfg.search.space["embed_dim"]
        == _experiment_config(project / "mine.yaml", overrides).search.space["embed_dim"]
    )
    same_experiment(cfg, _experiment_config(project / "mine.yaml", overrides))
    # what was written is the experiment as run, which runs again as it is
    written = yaml.safe_load((exp_dir / EXPERIMENT_FILE).read_text())
    assert written["training"]["epochs"] == 1
    assert written["data"]["train"] == "data/train.csv"


def test_a_space_merged_in_from_python_keeps_the_files_other_hyperparameters(project):
    """``ktune.run(file, search={"space": {"embed_dim": [16]}})`` replaced the file's whole
    space: its learning-rate range (and every other override of the family's defaults)
    was dropped without a word, and the trials drew the family's defaults (an audit, on
    examples/agnews_sample.yaml). The space merges hyperparameter by hyperparameter."""
    cfg = _experiment_config(project / "mine.yaml", {"search": {"space": {"embed_dim": [32]}}})
    plain = _experiment_config(project / "mine.yaml", {})
    assert cfg.search.space["embed_dim"] != plain.search.space["embed_dim"]
    assert cfg.search.space["learning_rate"] == plain.search.space["learning_rate"]
    written = yaml.safe_load(cfg.document)["search"]["space"]
    assert written == {
        "embed_dim": [32],
        "learning_rate": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
    }


def test_an_override_error_on_a_key_the_file_set_says_so(project):
    """``ktune.run(file, data={"source": "builtin"})`` merges into the file's data section:
    its csv keys stay, and the error names one the caller never wrote (an audit). The
    message says where it comes from; an error in the caller's own key is left as it is."""
    with pytest.raises(ConfigError) as caught:
        _experiment_config(project / "mine.yaml", {"data": {"source": "builtin"}})
    message = str(caught.value)
    key = message.split(":", 1)[0]
    assert key in {"data.train", "data.text", "data.test_fraction"}, message
    assert f"({key} is the experiment file's: the data= override merges" in message
    with pytest.raises(ConfigError) as caught:
        _experiment_config(project / "mine.yaml", {"training": {"epochs": 0}})
    assert str(caught.value).startswith("training.epochs:")
    assert "experiment file's" not in str(caught.value)


def test_the_experiment_as_run_holds_num_samples_as_run(project, tmp_path):
    """``--num-samples`` / ``num_samples=`` is what ran: experiment.yaml says so (and then
    is the file as parsed); ``--storage`` alone leaves the file as written, comments and
    all (it says where the search ran, not what ran)."""
    exp_dir = first_run(project / "mine.yaml", {"storage": str(tmp_path / "a"), "num_samples": 2})
    written = yaml.safe_load((exp_dir / EXPERIMENT_FILE).read_text())
    assert written["search"]["num_samples"] == 2  # the file says 3
    assert written["search"]["space"] == yaml.safe_load(FILE)["search"]["space"]
    assert resumed(exp_dir).search.num_samples == 2
    # a parsed config given with the override, as ktune.run takes one
    cfg = _experiment_config(_experiment_config(project / "mine.yaml", {}), {"num_samples": 5})
    assert yaml.safe_load(cfg.document)["search"]["num_samples"] == 5
    exp_dir = first_run(project / "mine.yaml", {"storage": str(tmp_path / "b")})
    assert (exp_dir / EXPERIMENT_FILE).read_text() == FILE


def test_resume_of_a_dict_experiment(project, tmp_path, monkeypatch):
    raw = yaml.safe_load(FILE)
    # a NumPy value, as Python callers pass them
    raw["search"]["space"]["learning_rate"] = {"low": np.float64(1e-3), "high": 1e-2}
    monkeypatch.chdir(project)  # a dict's relative paths: the working directory
    exp_dir = first_run(raw, {"storage": str(tmp_path / "runs")})
    first = _experiment_config(raw, {"storage": str(tmp_path / "runs")})
    monkeypatch.chdir(tmp_path)
    cfg = resumed(exp_dir)
    same_experiment(cfg, first)
    assert cfg.data.train == str(project / "data" / "train.csv")


def test_resume_needs_the_data_not_the_file_that_named_it(tmp_path, monkeypatch):
    # a Ray Job's working directory, say: the experiment file's folder is gone by the
    # time the search is resumed; the data it named is where the first run found it
    write_csv(tmp_path / "shared" / "news.csv")
    job = tmp_path / "job"
    job.mkdir()
    (job / "mine.yaml").write_text(FILE.replace("data/train.csv", "../shared/news.csv"))
    exp_dir = first_run(job / "mine.yaml", {"storage": str(tmp_path / "runs")})
    first = _experiment_config(job / "mine.yaml", {"storage": str(tmp_path / "runs")})
    (job / "mine.yaml").unlink()
    job.rmdir()
    cfg = resumed(exp_dir)
    assert cfg.data == first.data and cfg.training == first.training
    assert cfg.data.train == str(tmp_path / "shared" / "news.csv")


def test_a_moved_project_is_one_clear_error_naming_the_file(project, tmp_path):
    exp_dir = first_run(project / "mine.yaml", {"storage": str(tmp_path / "runs")})
    project.rename(tmp_path / "moved")
    with pytest.raises(Exception, match=r"data\.train: file not found"):
        resumed(exp_dir)


def test_experiment_document_writes_plain_values_or_nothing():
    text = experiment_document(
        {"a": (1, 2), "b": np.int64(3), "c": Path("/x/y"), "d": {"e": np.float32(0.5)}}
    )
    assert yaml.safe_load(text) == {"a": [1, 2], "b": 3, "c": "/x/y", "d": {"e": 0.5}}
    assert experiment_document({"model": {"build": lambda config, info: None}}) is None


def test_a_file_with_a_value_merged_in_that_yaml_cannot_hold_is_not_written(project):
    # the file alone is not the experiment that ran: nothing is written (run_search warns
    # that the experiment cannot be resumed) rather than the file without the value
    source = str(project / "mine.yaml")
    assert experiment_as_run(source, None) is None
    assert experiment_as_run(source, experiment_document(yaml.safe_load(FILE))) == FILE.encode()


def test_resume_without_the_experiment_says_so(tmp_path):
    exp_dir = tmp_path / "runs" / "mine"
    exp_dir.mkdir(parents=True)
    (exp_dir / "ktune.json").write_text("{}")
    with pytest.raises(ExperimentError, match=r"no experiment\.yaml \(the experiment as run\)"):
        resume_search(exp_dir)


def test_resume_keeps_label_names_given_as_a_mapping(project, tmp_path):
    # ktune.json holds the data section as JSON: the mapping's label values come back as
    # they went in, so a resumed search reads the labels as the first run did
    text = FILE.replace(
        "  test_fraction: 0.2\n", "  test_fraction: 0.2\n  label_names: {b: B, a: A}\n"
    )
    (project / "mine.yaml").write_text(text)
    exp_dir = first_run(project / "mine.yaml", {"storage": str(tmp_path / "runs")})
    first = _experiment_config(project / "mine.yaml", {"storage": str(tmp_path / "runs")})
    assert first.data.label_names == ("B", "A") and first.data.label_values == ("b", "a")
    cfg = resumed(exp_dir)
    same_experiment(cfg, first)
