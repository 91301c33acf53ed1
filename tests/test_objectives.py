"""Multi-objective search: ``search.objectives`` checks and the Pareto front."""

from __future__ import annotations

import math

import pytest

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TF)
from ktune.config import load_config
from ktune.errors import ConfigError
from ktune.objectives import Objective, dominates, pareto_front

TWO = "  objectives:\n    - {metric: val_accuracy, mode: max}\n    - {metric: params, mode: min}\n"


def config_error(tmp_path, search: str) -> str:
    p = tmp_path / "exp.yaml"
    p.write_text(f"name: x\nstorage: {tmp_path}\nsearch:\n" + search)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    message = str(info.value)
    assert "\n" not in message, f"error must be one line: {message!r}"
    return message


def test_objectives_set_the_metric_and_nsga2(tmp_path):
    p = tmp_path / "exp.yaml"
    objectives = "  objectives:\n    - {metric: params}\n    - {metric: val_loss}\n"
    p.write_text(f"name: x\nstorage: {tmp_path}\nsearch:\n{objectives}")
    cfg = load_config(p)
    assert cfg.search.objectives == (Objective("params", "min"), Objective("val_loss", "min"))
    # ASHA, checkpoints and best.json's trial follow the first per-epoch objective
    assert (cfg.search.metric, cfg.search.mode) == ("val_loss", "min")
    assert cfg.search.sampler == "nsga2"


@pytest.mark.parametrize(
    "sampler, expected", [("nsga2", "PicklableNSGAIISampler"), ("tpe", "TPESampler")]
)
def test_multi_objective_sampler_reaches_optuna(tmp_path, sampler, expected):
    from ktune.tuner import build_searcher

    p = tmp_path / "exp.yaml"
    p.write_text(f"name: x\nstorage: {tmp_path}\nsearch:\n  sampler: {sampler}\n{TWO}")
    searcher = build_searcher(load_config(p))
    assert type(searcher._sampler).__name__ == expected
    assert searcher.metric == ["val_accuracy", "params"]
    assert searcher.mode == ["max", "min"]
    assert [d.name for d in searcher._ot_study.directions] == ["MAXIMIZE", "MINIMIZE"]
    if sampler == "nsga2":  # num_samples 8: generations of 3, not Optuna's 50
        assert searcher._sampler._population_size == 3


@pytest.mark.parametrize(
    "search, key, words",
    [
        ("  objectives:\n    - {metric: val_accuracy}\n", "search.objectives:", "two or more"),
        ("  objectives: val_accuracy\n", "search.objectives:", "two or more"),
        (
            "  objectives:\n    - {metric: val_accuracy}\n    - {metric: flops}\n",
            "search.objectives[1].metric:",
            "latency_ms",
        ),
        (
            "  objectives:\n    - {metric: val_accuracy}\n    - {metric: params, mode: max}\n",
            "search.objectives[1].mode:",
            "'min'",
        ),
        (
            "  objectives:\n    - {metric: val_accuracy}\n    - {metric: params, mode: up}\n",
            "search.objectives[1].mode:",
            "max, min",
        ),
        (
            "  objectives:\n    - {metric: params}\n    - {metric: params}\n",
            "search.objectives[1].metric:",
            "twice",
        ),
        (
            "  objectives:\n    - {metric: params}\n    - {metric: latency_ms}\n",
            "search.objectives:",
            "val_accuracy or val_loss",
        ),
        (
            "  objectives:\n    - {metric: val_accuracy}\n    - {metric: params, modes: min}\n",
            "search.objectives[1].modes:",
            "unknown key",
        ),
        ("  objectives:\n    - val_accuracy\n    - params\n", "search.objectives[0]:", "mapping"),
        ("  metric: val_loss\n" + TWO, "search.metric:", "conflicts"),
        ("  scheduler: pbt\n" + TWO, "search.objectives:", "pbt"),
        ("  scheduler: pb2\n" + TWO, "search.objectives:", "pb2"),
        ("  sampler: nsga2\n", "search.sampler:", "objectives"),
    ],
)
def test_bad_objectives_name_the_key(tmp_path, search, key, words):
    msg = config_error(tmp_path, search)
    assert msg.startswith(key), msg
    assert words in msg, msg


def test_bad_objectives_exit_2_before_any_work(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "exp.yaml"
    p.write_text(
        f"name: x\nstorage: {tmp_path / 'results'}\nsearch:\n  objectives:\n"
        "    - {metric: val_accuracy}\n    - {metric: size}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "ktune.cli", "run", str(p)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("ktune: error: search.objectives[1].metric:")
    )
    assert not (tmp_path / "results").exists()


ACC_PARAMS = (Objective("val_accuracy", "max"), Objective("params", "min"))


def test_dominates():
    a = {"val_accuracy": 0.9, "params": 100}
    assert dominates(a, {"val_accuracy": 0.8, "params": 100}, ACC_PARAMS)
    assert dominates(a, {"val_accuracy": 0.9, "params": 200}, ACC_PARAMS)
    assert not dominates(a, dict(a), ACC_PARAMS)  # equal: neither dominates
    assert not dominates(a, {"val_accuracy": 0.95, "params": 200}, ACC_PARAMS)


def test_pareto_front_most_accurate_first_without_incomplete_rows():
    rows = [
        {"val_accuracy": 0.70, "params": 100},  # 0 front: smallest
        {"val_accuracy": 0.80, "params": 300},  # 1 front
        {"val_accuracy": 0.75, "params": 400},  # 2 dominated by 1
        {"val_accuracy": 0.90, "params": 900},  # 3 front: most accurate
        {"val_accuracy": 0.99, "params": math.nan},  # 4 missing a value: no part
        {"val_accuracy": 0.70, "params": 100},  # 5 equal to 0: both on the front
        {"val_accuracy": 0.60, "params": 100},  # 6 dominated by 0
    ]
    assert pareto_front(rows, ACC_PARAMS) == [3, 1, 0, 5]
    front = set(pareto_front(rows, ACC_PARAMS))
    complete = [i for i in range(len(rows)) if i != 4]
    for i in complete:
        if i not in front:
            assert any(dominates(rows[j], rows[i], ACC_PARAMS) for j in front)
    for i in front:
        assert not any(dominates(rows[j], rows[i], ACC_PARAMS) for j in complete)


def test_three_objectives_keep_trade_offs():
    objectives = (*ACC_PARAMS, Objective("latency_ms", "min"))
    rows = [
        {"val_accuracy": 0.9, "params": 900, "latency_ms": 5.0},
        {"val_accuracy": 0.8, "params": 900, "latency_ms": 1.0},  # faster: kept
        {"val_accuracy": 0.8, "params": 950, "latency_ms": 2.0},  # dominated by 1
    ]
    assert pareto_front(rows, objectives) == [0, 1]


def test_model_size_and_serving_latency_of_a_small_model():
    import tensorflow as tf
    import tf_keras as keras

    from ktune.trainables.measure import model_size, serving_latency_ms

    encoder = keras.layers.TextVectorization(max_tokens=50, output_sequence_length=8)
    encoder.adapt(["a b c", "d e f"])
    model = keras.Sequential(
        [
            keras.layers.Embedding(50, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model(encoder(tf.constant(["a b"])))
    size = model_size(model)
    assert size["params"] == 50 * 4 + 4 * 3 + 3
    assert size["model_mb"] == pytest.approx(size["params"] * 4 / 1e6)  # float32 weights
    latency = serving_latency_ms(model, encoder, ["x", "y", "z"], ["a b", "c"])
    assert 0 < latency < 10_000


def test_objectives_null_is_one_metric(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(f"name: x\nstorage: {tmp_path}\nsearch:\n  objectives: null\n")
    cfg = load_config(p)
    assert cfg.search.objectives is None and cfg.search.sampler == "tpe"


def test_a_multi_objective_searcher_saves_and_restores(tmp_path):
    """Ray saves the searcher with the experiment (resume): NSGA-II's lock is not pickled."""
    from ktune.tuner import build_searcher

    p = tmp_path / "exp.yaml"
    p.write_text(f"name: x\nstorage: {tmp_path}\nsearch:\n{TWO}")
    cfg = load_config(p)
    searcher = build_searcher(cfg)
    first = searcher.suggest("a")
    searcher.on_trial_complete("a", {"val_accuracy": 0.5, "params": 100})
    searcher.save(str(tmp_path / "searcher.pkl"))
    again = build_searcher(cfg)
    again.restore(str(tmp_path / "searcher.pkl"))
    assert type(again._sampler).__name__ == "PicklableNSGAIISampler"
    assert again.suggest("b") is not None and first is not None
    # a result without an objective (ASHA stopped it before latency_ms): pruned
    searcher.suggest("c")
    searcher.on_trial_complete("c", {"val_accuracy": 0.4, "params": None})
    states = {t.number: t.state.name for t in searcher._ot_study.get_trials(deepcopy=False)}
    assert states[searcher._ot_trials["a"].number] == "COMPLETE"
    assert states[searcher._ot_trials["c"].number] == "PRUNED"
