"""ktune's trainable and search space in a user's own ``tune.Tuner`` (the plugin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ktune

from conftest import reload_in_fresh_process

DATA = {"source": "builtin", "train_size": 1500, "test_size": 100, "seed": 3}
TRAINING = {"epochs": 2, "batch_size": 32, "maxlen": 24, "vocab_size": 400}
SMALL = {
    "embed_dim": [8, 16],
    "heads": [1, 2, 4, 8],
    "ff_dim": [8],
    "num_blocks": [1],
    "learning_rate": {"low": 8e-3, "high": 2e-2, "log": True},
}


@pytest.fixture(scope="module")
def transformer(ray_session):
    """The trainable, prepared once in the driver (vocabulary, token ids)."""
    return ktune.trainable("transformer", data=DATA, training=TRAINING)


def run_config(tmp_path: Path, name: str):
    from ray import tune

    return tune.RunConfig(storage_path=str(tmp_path / "runs"), name=name, verbose=0)


def test_search_space_has_both_forms():
    from ray.tune.search.sample import Categorical, Float, Function

    fn = ktune.search_space("transformer", {"embed_dim": [8, 16]})
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        config = fn(study.ask())
        assert config["embed_dim"] in (8, 16) and config["embed_dim"] % config["heads"] == 0
    space = ktune.search_space("transformer", {"embed_dim": [8, 16]}, backend="tune")
    assert isinstance(space["embed_dim"], Categorical) and space["embed_dim"].categories == [8, 16]
    assert isinstance(space["learning_rate"], Float)
    # every heads choice (1, 2, 4, 8) divides 8 and 16: a plain choice, for any searcher
    assert isinstance(space["heads"], Categorical) and space["heads"].categories == [1, 2, 4, 8]
    assert space["weight_decay"] == 0.01  # fixed values stay plain
    space = ktune.search_space(
        "transformer", {"embed_dim": [12, 16], "heads": [3, 4]}, backend="tune"
    )
    assert isinstance(space["heads"], Function)  # 3 does not divide 16: drawn per embed_dim
    with pytest.raises(ktune.ConfigError, match="overrides.heads: no choice in"):
        ktune.search_space("transformer", {"embed_dim": [12], "heads": [5]})
    with pytest.raises(ktune.ConfigError, match="backend"):
        ktune.search_space("transformer", backend="hyperopt")


def test_tune_form_keeps_heads_dividing_embed_dim():
    """BasicVariantGenerator resolves ``heads`` after ``embed_dim``, among its divisors."""
    from ray.tune.search.variant_generator import generate_variants

    space = ktune.search_space(
        "transformer", {"embed_dim": [12, 16], "heads": [1, 3, 4, 8]}, backend="tune"
    )
    seen = set()
    for _ in range(40):
        for _, config in generate_variants(space):
            assert config["embed_dim"] % config["heads"] == 0
            seen.add((config["embed_dim"], config["heads"]))
    assert seen == {(12, 1), (12, 3), (12, 4), (16, 1), (16, 4), (16, 8)}


@pytest.mark.slow
def test_own_tuner_with_optuna_and_asha_then_export(transformer, tmp_path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    tuner = tune.Tuner(
        transformer,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(
                space=ktune.search_space("transformer", SMALL), metric="val_accuracy", mode="max"
            ),
            scheduler=ASHAScheduler(metric="val_accuracy", mode="max", max_t=2),
            num_samples=3,
            max_concurrent_trials=2,
        ),
        run_config=run_config(tmp_path, "own"),
    )
    grid = tuner.fit()
    assert len(grid) == 3 and not grid.errors
    for result in grid:
        assert result.config["embed_dim"] % result.config["heads"] == 0
        assert 1 <= result.metrics["epoch"] <= 2 and "val_accuracy" in result.metrics
    best = grid.get_best_result("val_accuracy", "max")
    out = ktune.export_result(best, tmp_path / "export")
    meta = json.loads((out / "metadata.json").read_text())
    assert (
        meta["verified"]["max_abs_diff"] <= 1e-5
        and meta["config"]["embed_dim"] == best.config["embed_dim"]
    )
    assert meta["class_names"] == ["World", "Sports", "Business", "Sci/Tech"]
    texts = ["Striker scores twice in the cup final", "Stocks fall as oil prices climb"]
    fresh = reload_in_fresh_process(out, texts)
    model = ktune.load_model(best)  # like KerasTuner's get_best_models
    from ktune.config import TrainingConfig
    from ktune.trainables import get_family

    family = get_family("transformer")
    info = json.loads(Path(best.checkpoint.path, "ktune_trial.json").read_text())
    ids = family.encode(info["artefacts"], TrainingConfig(**TRAINING), texts)
    import numpy as np

    np.testing.assert_allclose(fresh["probabilities"], model.predict(ids, verbose=0), atol=1e-5)
    with pytest.raises(ktune.ExperimentError, match="already exists"):
        ktune.export_result(best, out)


@pytest.mark.slow
def test_ray_param_space_with_basic_variant_grid_and_median_stopping(transformer, tmp_path):
    from ray import tune
    from ray.tune.schedulers import MedianStoppingRule

    space = ktune.search_space("transformer", SMALL, backend="tune")
    space["embed_dim"] = tune.grid_search([8, 16])
    grid = tune.Tuner(
        transformer,
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=1,
            metric="val_accuracy",
            mode="max",
            scheduler=MedianStoppingRule(grace_period=1, min_samples_required=2),
        ),
        run_config=run_config(tmp_path, "grid"),
    ).fit()
    assert not grid.errors
    assert sorted(r.config["embed_dim"] for r in grid) == [8, 16]
    assert all(r.config["embed_dim"] % r.config["heads"] == 0 for r in grid)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("param_space", "match"),
    [
        (
            {"embed_dim": 16, "heads": 3, "ff_dim": 8, "learning_rate": 1e-3},
            r"config\.heads: 3 does not divide embed_dim 16",
        ),
        ({"embed_dim": 16, "heads": 2, "ff_dim": 8}, r"config\.learning_rate: required"),
        (
            {"embed_dim": 16, "heads": 2, "ff_dim": 8, "learning_rat": 1e-3},
            r"config\.learning_rat: unknown hyperparameter .*did you mean 'learning_rate'",
        ),
        (
            {"embed_dim": 16, "heads": 2, "ff_dim": 8, "learning_rate": 1e-3, "dropout": 1.5},
            r"config\.dropout: must be a number in \[0, 1\)",
        ),
    ],
)
def test_a_bad_config_stops_the_tuner_in_the_driver(transformer, tmp_path, param_space, match):
    from ray import tune

    with pytest.raises(ktune.ConfigError, match=match):
        tune.Tuner(
            transformer, param_space=param_space, run_config=run_config(tmp_path, "bad")
        ).fit()
    # the trial never ran: no checkpoint, no result
    assert not list((tmp_path / "runs" / "bad").glob("*/checkpoint_*"))


def _threads_callback(path: Path):
    """A Keras callback writing the trial's TensorFlow intra-op threads and whether its
    oneDNN kernels are on to ``path`` (a local class: pickled by value into the workers)."""
    import tf_keras as keras

    class Threads(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            import tensorflow as tf
            from tensorflow.python.util import _pywrap_util_port

            threads = tf.config.threading.get_intra_op_parallelism_threads()
            path.write_text(f"{threads} {_pywrap_util_port.IsMklEnabled()}")

    return Threads()


@pytest.mark.slow
def test_own_with_resources_sets_the_trials_threads(ray_session, tmp_path):
    # Ray's docs teach tune.with_resources to change a trainable's resources: TensorFlow
    # uses what Ray reserved (2 cores: 2 threads), not what ktune.trainable was given (1).
    from ray import tune

    seen = tmp_path / "threads.txt"
    once = {**TRAINING, "epochs": 1}
    trainable = ktune.trainable(
        "transformer", data=DATA, training=once, callbacks=[_threads_callback(seen)]
    )
    grid = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 2}),
        param_space={"embed_dim": 8, "heads": 2, "ff_dim": 8, "learning_rate": 1e-2},
        run_config=run_config(tmp_path, "cores"),
    ).fit()
    threads, onednn = seen.read_text().split()
    assert not grid.errors and threads == "2"
    # ktune.worker_env() (this Ray's, as the README's) turns TensorFlow's oneDNN CPU
    # kernels on where TensorFlow leaves them off (x86-64 without AVX-512: 1.4x an epoch)
    if ktune.worker_env().get("TF_ENABLE_ONEDNN_OPTS") == "1":
        assert onednn == "True"


@pytest.mark.slow
def test_hyperopt_searches_the_tune_form(transformer, tmp_path):
    """Ray's other searchers take the Tune form too (HyperOpt: its package is in the
    test extra)."""
    from ray import tune
    from ray.tune.search.hyperopt import HyperOptSearch

    space = ktune.search_space("transformer", {**SMALL, "heads": [1, 2]}, backend="tune")
    grid = tune.Tuner(
        transformer,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=HyperOptSearch(metric="val_accuracy", mode="max", random_state_seed=0),
            num_samples=2,
        ),
        run_config=run_config(tmp_path, "hyperopt"),
    ).fit()
    assert not grid.errors and len(grid) == 2
    for r in grid:
        assert r.config["embed_dim"] in (8, 16) and r.config["heads"] in (1, 2)
        assert 8e-3 <= r.config["learning_rate"] <= 2e-2


def test_trainable_checks_its_arguments_before_any_work(ray_session):
    with pytest.raises(ktune.ConfigError, match="family"):
        ktune.trainable("gpt")
    with pytest.raises(ktune.ConfigError, match="training.epochs: must be >= 1"):
        ktune.trainable("transformer", training={"epochs": 0})
    with pytest.raises(ktune.ConfigError, match="data.train: file not found"):
        ktune.trainable("transformer", data={"source": "csv", "train": "/nonexistent.csv"})
    with pytest.raises(ktune.ConfigError, match="model.preprocess"):
        ktune.trainable(
            "tfhub_bert",
            model={
                "preprocess": "/nonexistent/preprocess",
                "encoder": "/nonexistent/L-{L}_H-{H}_A-{A}",
            },
        )


# A user's script: its own Tuner over ktune's trainable, whose driver dies (SIGKILL, no
# clean-up) as the first trial begins its third epoch: a Keras callback in the trial
# kills the driver's process, then holds the trial until Ray's processes go.
_CRASHING_TUNER = """
import json, os, pathlib, signal, sys, time
import tf_keras as keras
from ray import tune
from ray.tune.search.optuna import OptunaSearch
import ktune
from ktune.ray_state import SnapshotKeeper

data, training, space = (json.loads(a) for a in sys.argv[1:4])

class KillDriver(keras.callbacks.Callback):
    def __init__(self, pid):
        super().__init__()
        self.pid = pid

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            # Killed once a snapshot of the experiment holds the 2 results: the keeper's
            # whole copy of the history, written in that snapshot, has both.
            deadline = time.time() + 120
            while time.time() < deadline and not any(
                len(p.read_text().splitlines()) >= 2
                for p in pathlib.Path(sys.argv[4], "own").glob("*/.ktune-copy/result.json")
            ):
                time.sleep(0.1)
            os.kill(self.pid, signal.SIGKILL)
            time.sleep(600)

trainable = ktune.trainable(
    "transformer", data=data, training=training, callbacks=[KillDriver(os.getpid())]
)
tune.Tuner(
    trainable,
    tune_config=tune.TuneConfig(
        search_alg=OptunaSearch(
            space=ktune.search_space("transformer", space), metric="val_accuracy", mode="max",
            seed=0),
        num_samples=2, max_concurrent_trials=1, reuse_actors=True),
    run_config=tune.RunConfig(
        storage_path=sys.argv[4], name="own", verbose=0, callbacks=[SnapshotKeeper()]),
).fit()
"""


@pytest.mark.slow
def test_own_tuner_restored_after_its_driver_crashed_resumes_the_trial(
    ray_session, tmp_path, ray_tmp
):
    """A Ray Tune user's crash in the middle: ``tune.Tuner.restore(path, trainable=...)``
    with a newly made ktune trainable continues the search; the trial cut off goes on from
    its checkpoint (not from its first epoch) and the searcher's state is Optuna's as saved."""
    import subprocess
    import sys

    from ray import tune

    from ktune.ray_state import repair

    from conftest import kill_ray_under, subprocess_env

    training = {**TRAINING, "epochs": 3}
    storage = tmp_path / "runs"
    env = {
        **subprocess_env(),
        "RAY_TMPDIR": ray_tmp,
        "TMPDIR": ray_tmp,
        "TUNE_GLOBAL_CHECKPOINT_S": "0",  # Ray's knob: a snapshot at every step
    }
    args = [json.dumps(x) for x in (DATA, training, SMALL)]
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_TUNER, *args, str(storage)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    kill_ray_under(ray_tmp)  # nothing of the dead driver's Ray writes on
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    exp = storage / "own"
    (cut_off,) = [p for p in exp.iterdir() if p.is_dir() and p.name.startswith("run_trial")]
    # Ray rewrites every file of the experiment on storage at each snapshot, in place: a
    # kill during that copy leaves them cut short (CI 2026-12-07: the trial's result.json
    # empty). That window, made certain here, is what SnapshotKeeper + repair close.
    history = cut_off / "result.json"
    state = max(exp.glob("experiment_state-*.json"))
    history.write_bytes(b"")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    notes = repair(exp)
    assert "put back whole" in " ".join(notes) and "from ktune's whole copy" in " ".join(notes)
    before = [json.loads(line) for line in history.read_text().splitlines()]
    assert [r["epoch"] for r in before] == [1, 2]

    # Restored first with a trainable made from other data (another split, so another
    # vocabulary): the cut-off trial is refused, not continued on data its weights and
    # history do not belong to (Ray then draws the search's second trial on that data).
    other_data = ktune.trainable("transformer", data={**DATA, "seed": 4}, training=training)
    wrong = tune.Tuner.restore(str(exp), trainable=other_data).fit()
    refused = [str(e) for e in wrong.errors]
    assert len(refused) == 1 and "trained on other data than this trainable's" in refused[0]
    kept = [json.loads(x)["epoch"] for x in (cut_off / "result.json").read_text().splitlines()]
    assert kept == [1, 2]  # nothing reported or trained on the other data

    trainable = ktune.trainable("transformer", data=DATA, training=training)
    grid = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True).fit()

    assert len(grid) == 2 and not grid.errors
    rows = [json.loads(line) for line in (cut_off / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # went on: epoch 3 only, once
    assert rows[-1]["resumed_from_epoch"] == 2 and rows[0]["resumed_from_epoch"] == 0
    assert rows[-1]["step"] == rows[1]["step"] + (rows[1]["step"] - rows[0]["step"])
    assert rows[-1]["config"] == before[0]["config"]  # the same trial, the same draw
    other = next(r for r in grid if Path(r.path).name != cut_off.name)
    assert other.metrics["epoch"] == 3 and other.metrics["resumed_from_epoch"] == 0
    assert other.config != rows[-1]["config"]  # Optuna's next draw, not the first again
