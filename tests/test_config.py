"""The experiment file: every error is one ConfigError line naming the key or file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TF)
from ktune.config import ExperimentConfig, load_config, parse_config
from ktune.errors import ConfigError
from ktune.search_spaces import Choice, Fixed, Range

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart.yaml"


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def config_error(tmp_path: Path, text: str, **overrides) -> str:
    """Loads ``text`` as an experiment file and returns the ConfigError's message."""
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p, **overrides)
    message = str(info.value)
    assert "\n" not in message, f"error must be one line: {message!r}"
    return message


# --- the file itself ----------------------------------------------------------------------


def test_malformed_yaml_names_the_file(tmp_path):
    p = write(tmp_path, "name: x\nsearch: {num_samples: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert str(p) in msg
    assert "malformed YAML" in msg
    assert "line" in msg


def test_missing_file_names_the_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(p) in str(info.value)
    assert "not found" in str(info.value)


def test_non_mapping_document_names_the_file(tmp_path):
    p = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(p) in str(info.value)


def test_dev_null_is_not_a_regular_file():
    with pytest.raises(ConfigError, match=r"^/dev/null: not a regular file$"):
        load_config("/dev/null")


def test_a_directory_is_not_an_experiment_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: is a directory")


# --- a key written twice: an error, not "the last one wins" --------------------------------


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("name: a\nfamily: transformer\nname: b\n", "name", "lines 1 and 3"),
        (
            """\
            name: x
            training:
              epochs: 3
              batch_size: 8
              epochs: 30
            """,
            "training.epochs",
            "lines 3 and 5",
        ),
        (
            """\
            name: x
            search:
              space:
                heads: [1, 2]
                embed_dim: [8]
                "heads": [4]
            """,
            "search.space.heads",
            "lines 4 and 6",
        ),
        (
            """\
            name: x
            search:
              space:
                learning_rate: {low: 0.001, high: 0.1, low: 0.01}
            """,
            "search.space.learning_rate.low",
            "line 4",
        ),
        (
            """\
            name: x
            data:
              source: csv
              text: [{a: 1}, {b: 2, b: 3}]
            """,
            "data.text[1].b",
            "line 4",
        ),
    ],
)
def test_a_duplicate_key_names_its_path_and_both_lines(tmp_path, text, key, lines):
    msg = config_error(tmp_path, text)
    assert msg == f"{tmp_path / 'exp.yaml'}: duplicate key {key} ({lines})"


def test_keys_merged_from_an_anchor_may_be_overridden(tmp_path):
    p = write(
        tmp_path,
        """\
        name: x
        training:
          <<: {epochs: 1, batch_size: 8}
          epochs: 2
    """,
    )
    cfg = load_config(p)
    assert (cfg.training.epochs, cfg.training.batch_size) == (2, 8)


def test_missing_name(tmp_path):
    msg = config_error(tmp_path, "family: transformer\n")
    assert msg.startswith("name:")


# --- unknown keys ---------------------------------------------------------------------------


def test_unknown_top_level_key_suggests(tmp_path):
    msg = config_error(tmp_path, "name: x\nserach:\n  num_samples: 2\n")
    assert msg.startswith("serach:")
    assert "did you mean 'search'" in msg


@pytest.mark.parametrize(
    "text, key, suggestion",
    [
        ("training:\n  epoch: 3\n", "training.epoch", "epochs"),
        ("search:\n  num_sample: 3\n", "search.num_sample", "num_samples"),
        ("data:\n  validation_fractoin: 0.2\n", "data.validation_fractoin", "validation_fraction"),
        ("resources:\n  cpus: 2\n", "resources.cpus", "cpu"),
        ("export:\n  enable: true\n", "export.enable", "enabled"),
        ("search:\n  space:\n    embed_dims: [32]\n", "search.space.embed_dims", "embed_dim"),
    ],
)
def test_unknown_key_inside_sections_suggests(tmp_path, text, key, suggestion):
    msg = config_error(tmp_path, "name: x\n" + text)
    assert msg.startswith(key + ":")
    assert f"did you mean '{suggestion}'" in msg


# --- types and values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("training:\n  epochs: three\n", "training.epochs"),
        ("training:\n  batch_size: 1.5\n", "training.batch_size"),
        ("training:\n  epochs: true\n", "training.epochs"),
        ("export:\n  enabled: 'yes'\n", "export.enabled"),
        ("search:\n  num_samples: '8'\n", "search.num_samples"),
        ("resources:\n  cpu: many\n", "resources.cpu"),
        ("data:\n  seed: 0.5\n", "data.seed"),
        ("search: [1, 2]\n", "search"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, text, key):
    msg = config_error(tmp_path, "name: x\n" + text)
    assert msg.startswith(key + ":")


@pytest.mark.parametrize(
    "text, key",
    [
        ("training:\n  epochs: 0\n", "training.epochs"),
        ("training:\n  epochs: -2\n", "training.epochs"),
        ("training:\n  batch_size: 0\n", "training.batch_size"),
        ("training:\n  batch_size: -64\n", "training.batch_size"),
        ("search:\n  num_samples: 0\n", "search.num_samples"),
        ("resources:\n  cpu: 0\n", "resources.cpu"),
        ("resources:\n  gpu: -1\n", "resources.gpu"),
    ],
)
def test_non_positive_sizes(tmp_path, text, key):
    msg = config_error(tmp_path, "name: x\n" + text)
    assert msg.startswith(key + ":")
    assert "must be" in msg


@pytest.mark.parametrize(
    "value",
    [
        "{low: 0, high: 0.1}",
        "{low: 0.0, high: 0.1}",
        "-0.1",
        "[0.01, 0]",
        "{low: -1.0e-3, high: 0.1}",
    ],
)
def test_non_positive_learning_rate(tmp_path, value):
    msg = config_error(tmp_path, f"name: x\nsearch:\n  space:\n    learning_rate: {value}\n")
    assert msg.startswith("search.space.learning_rate:")
    assert "positive" in msg


def test_inverted_range(tmp_path):
    msg = config_error(tmp_path, "name: x\nsearch:\n  space:\n    dropout: {low: 0.3, high: 0.1}\n")
    assert msg.startswith("search.space.dropout:")
    assert "inverted" in msg


def test_empty_choice_list(tmp_path):
    msg = config_error(tmp_path, "name: x\nsearch:\n  space:\n    embed_dim: []\n")
    assert msg.startswith("search.space.embed_dim:")
    assert "empty" in msg


def test_log_range_needs_positive_low(tmp_path):
    msg = config_error(
        tmp_path, "name: x\nsearch:\n  space:\n    warmup: {low: 0.0, high: 0.1, log: true}\n"
    )
    assert msg.startswith("search.space.warmup:")


def test_impossible_space_names_heads(tmp_path):
    msg = config_error(
        tmp_path, "name: x\nsearch:\n  space:\n    heads: [3]\n    embed_dim: [32, 64]\n"
    )
    assert msg.startswith("search.space.heads:")
    assert "divide" in msg


def test_unknown_family(tmp_path):
    msg = config_error(tmp_path, "name: x\nfamily: transfomer\n")
    assert msg.startswith("family:")
    assert "transfomer" in msg
    assert "did you mean 'transformer'" in msg


def test_unknown_metric(tmp_path):
    msg = config_error(tmp_path, "name: x\nsearch:\n  metric: accuracy\n")
    assert msg.startswith("search.metric:")
    assert "val_accuracy" in msg


def test_mode_inconsistent_with_metric(tmp_path):
    msg = config_error(tmp_path, "name: x\nsearch:\n  metric: val_loss\n  mode: max\n")
    assert msg.startswith("search.mode:")
    assert "min" in msg


def test_mode_follows_metric_when_absent(tmp_path):
    cfg = load_config(write(tmp_path, "name: x\nsearch:\n  metric: val_loss\n"))
    assert cfg.search.mode == "min"


def test_unknown_sampler(tmp_path):
    msg = config_error(tmp_path, "name: x\nsearch:\n  sampler: grid\n")
    assert msg.startswith("search.sampler:")
    assert "tpe" in msg and "random" in msg


@pytest.mark.parametrize("sampler, expected", [("tpe", "TPESampler"), ("random", "RandomSampler")])
def test_sampler_reaches_optuna(tmp_path, sampler, expected):
    from ktune.tuner import build_searcher

    cfg = load_config(
        write(tmp_path, f"name: x\nstorage: {tmp_path}\nsearch:\n  sampler: {sampler}\n")
    )
    searcher = build_searcher(cfg)
    assert type(searcher._sampler).__name__ == expected
    assert cfg.search.sampler == sampler


# --- data -----------------------------------------------------------------------------------


def test_csv_missing_file_names_the_path(tmp_path):
    msg = config_error(tmp_path, "name: x\ndata:\n  source: csv\n  train: missing/train.csv\n")
    assert msg.startswith("data.train:")
    assert str(tmp_path / "missing" / "train.csv") in msg


def test_csv_missing_test_file_names_the_path(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,x\n")
    msg = config_error(
        tmp_path, "name: x\ndata:\n  source: csv\n  train: train.csv\n  test: test.csv\n"
    )
    assert msg.startswith("data.test:")
    assert str(tmp_path / "test.csv") in msg


@pytest.mark.parametrize("source", ["csv", "jsonl"])
def test_file_source_without_train(tmp_path, source):
    msg = config_error(tmp_path, f"name: x\ndata:\n  source: {source}\n")
    assert msg.startswith("data.train:")


def test_file_keys_refused_for_builtin(tmp_path):
    msg = config_error(tmp_path, "name: x\ndata:\n  source: builtin\n  train: t.csv\n")
    assert msg.startswith("data.train:")


def test_unknown_source(tmp_path):
    msg = config_error(tmp_path, "name: x\ndata:\n  source: cvs\n")
    assert msg.startswith("data.source:")
    assert "did you mean 'csv'" in msg


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1])
def test_validation_fraction_out_of_range(tmp_path, value):
    msg = config_error(tmp_path, f"name: x\ndata:\n  validation_fraction: {value}\n")
    assert msg.startswith("data.validation_fraction:")


@pytest.mark.parametrize("name", ["a/b", "../up", "/abs"])
def test_name_with_a_slash(tmp_path, name):
    msg = config_error(tmp_path, f"name: '{name}'\n")
    assert msg.startswith("name:")


# --- what a valid file gives ---------------------------------------------------------------


def test_quickstart_loads():
    cfg = load_config(QUICKSTART)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == "quickstart"
    assert cfg.family == "transformer"
    assert cfg.data.source == "builtin"
    assert cfg.search.num_samples == 8
    assert cfg.search.space["embed_dim"] == Choice((32, 64))
    assert cfg.search.space["learning_rate"] == Range(1e-5, 1e-2, log=True)
    # defaults the file does not override are still there
    assert cfg.search.space["weight_decay"] == Fixed(0.01)
    assert cfg.training.maxlen == 48
    assert cfg.source_path == str(QUICKSTART.resolve())
    assert Path(cfg.storage).is_absolute()


def test_cli_overrides_win_over_the_file(tmp_path):
    p = write(
        tmp_path,
        """\
        name: x
        storage: from_file
        address: auto
        search:
          num_samples: 5
        """,
    )
    base = load_config(p)
    assert base.search.num_samples == 5
    assert base.address == "auto"
    cfg = load_config(
        p, num_samples=2, storage=str(tmp_path / "elsewhere"), address="ray://head:10001"
    )
    assert cfg.search.num_samples == 2
    assert cfg.storage == str(tmp_path / "elsewhere")
    assert cfg.address == "ray://head:10001"
    with pytest.raises(ConfigError, match=r"^--num-samples:"):
        load_config(p, num_samples=0)


def test_experiment_dir_and_absolute_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"name": "exp1", "storage": "runs"})
    assert Path(cfg.storage).is_absolute()
    assert Path(cfg.storage) == (tmp_path / "runs").resolve()
    assert cfg.experiment_dir == Path(cfg.storage) / "exp1"
    assert cfg.export_dir == cfg.experiment_dir / "export"
    # nothing is written by validation
    assert not (tmp_path / "runs").exists()


def test_data_paths_relative_to_the_yaml_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.csv").write_text("text,label\na,x\nb,y\n")
    (folder / "data" / "test.csv").write_text("text,label\nc,x\nd,y\n")
    p = write(
        folder,
        "name: x\ndata:\n  source: csv\n  train: data/train.csv\n  test: data/test.csv\n",
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(p)
    assert cfg.data.train == str((folder / "data" / "train.csv").resolve())
    assert cfg.data.test == str((folder / "data" / "test.csv").resolve())


def test_text_columns_and_label_names_parsed(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"title": "a", "label": "x"}\n')
    cfg = load_config(
        write(
            tmp_path,
            """\
            name: x
            data:
              source: jsonl
              train: t.jsonl
              text: [title, description]
              label: topic
              label_names: [x, y]
            """,
        )
    )
    assert cfg.data.text == ("title", "description")
    assert cfg.data.label == "topic"
    assert cfg.data.label_names == ("x", "y")


# --- the CLI: one line on stderr, exit code 2, nothing written -----------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        (
            "name: x\nsearch:\n  space:\n    heads: [3]\n    embed_dim: [32, 64]\n",
            "search.space.heads",
        ),
        ("name: x\ntraining:\n  epochs: three\n", "training.epochs"),
    ],
)
def test_cli_run_bad_file_exits_2_and_writes_nothing(tmp_path, text, key):
    p = write(tmp_path, text)
    storage = tmp_path / "storage"
    proc = subprocess.run(
        [sys.executable, "-m", "ktune", "run", str(p), "--storage", str(storage)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip("\n").split("\n")
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ktune: error:")
    assert key in lines[0]
    assert not storage.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["exp.yaml"]


@pytest.mark.parametrize(
    "argv, error",
    [
        (
            ["export", "runs/exp", "out"],
            "ktune export: error: unrecognized arguments: out "
            "(the target folder is --out: ktune export runs/exp --out out)",
        ),
        (["run", "exp.yaml", "--bogus"], "ktune run: error: unrecognized arguments: --bogus"),
    ],
)
def test_cli_an_argument_no_option_takes_is_the_commands_own_error(
    tmp_path, monkeypatch, capsys, argv, error
):
    from ktune.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    usage, line = capsys.readouterr().err.strip().rsplit("\n", 1)
    assert usage.startswith(f"usage: ktune {argv[0]} ")  # the command's usage, not ktune's
    assert line == error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "data, error",
    [
        ("text: [text, label]", "data.text: holds the label column 'label'"),
        ("test: t.csv", r"data.test: the same file as data.train \(.*t.csv\)"),
        ("train_size: 100", r"data.train_size: not used with source 'csv' \(used with builtin"),
        ("test: u.csv\n  test_fraction: 0.2", r"data.test_fraction: not used with data.test"),
    ],
)
def test_data_keys_that_would_be_ignored_or_leak_are_errors(tmp_path, data, error):
    for name in ("t.csv", "u.csv"):
        (tmp_path / name).write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    text = f"name: x\ndata:\n  source: csv\n  train: t.csv\n  {data}\n"
    with pytest.raises(ConfigError, match=error):
        load_config(write(tmp_path, text))


def test_test_fraction_with_builtin_data_is_an_error(tmp_path):
    text = "name: x\ndata:\n  source: builtin\n  test_fraction: 0.2\n"
    with pytest.raises(ConfigError, match=r"data.test_fraction: only used with source csv"):
        load_config(write(tmp_path, text))


def test_a_number_with_a_leading_zero_is_decimal_not_yaml_1_1_octal(tmp_path):
    cfg = load_config(write(tmp_path, "name: x\ntraining:\n  epochs: 010\n  maxlen: 0x20\n"))
    assert cfg.training.epochs == 10  # PyYAML alone: 8
    assert cfg.training.maxlen == 32


def test_exponent_numbers_are_numbers_as_in_yaml_1_2(tmp_path):
    # PyYAML alone (YAML 1.1) reads 1e-4 and 1.0e5 as strings: an own model's key drawn
    # from [1e-4, 1e-3] reached its build function as "1e-4"
    text = """\
        name: x
        model: {build: "mymodels:build"}
        search:
          space:
            learning_rate: {low: 1e-4, high: 1.0e-2, log: true}
            l2: [1e-4, 1e-3]
            scale: 1.0e5
        """
    (tmp_path / "mymodels.py").write_text("def build(config, info):\n    pass\n")
    space = load_config(write(tmp_path, text)).search.space
    assert space["l2"] == Choice((1e-4, 1e-3))
    assert space["scale"] == Fixed(1e5)
    assert space["learning_rate"] == Range(1e-4, 1e-2, log=True)
