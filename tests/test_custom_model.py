"""The user's own Keras model: ``ktune.trainable(build_model=fn)`` in a real Tuner, and
``model.build: module:function`` in an experiment file, trained, exported and served."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray import cloudpickle

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from conftest import reload_in_fresh_process, tiny_experiment

# Ray's workers do not have tests/ on sys.path: `build` travels by value, not by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DATA = {"source": "builtin", "train_size": 1500, "test_size": 100, "seed": 3}
TRAINING = {"epochs": 2, "batch_size": 32, "maxlen": 24, "vocab_size": 400}
TEXTS = ["Striker scores twice", ""]
NUM_CLASSES = 4  # the builtin source: world, sports, business, sci/tech


def build(config, info):
    """The user's model: token ids -> embedding -> mean -> softmax (uncompiled)."""
    import tf_keras as keras

    ids = keras.Input(shape=(info.maxlen,), dtype="int32")
    x = keras.layers.Embedding(info.vocab_size, config["units"])(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(info.num_classes, activation="softmax")(x)
    return keras.Model(ids, out)


def run_config(tmp_path: Path, name: str):
    from ray import tune

    return tune.RunConfig(storage_path=str(tmp_path / "ray"), name=name, verbose=0)


@pytest.fixture(scope="module")
def custom_trainable(ray_session):
    """One trainable (data prepared once) for the Tuners of this module."""
    return ktune.trainable("transformer", data=DATA, training=TRAINING, build_model=build)


def _embedding_dim(model) -> int:
    import tf_keras as keras

    (embedding,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Embedding)]
    return int(embedding.output_dim)


@pytest.mark.slow
def test_own_model_in_own_tuner_trains_and_exports(tmp_path, custom_trainable):
    import tensorflow as tf
    import tf_keras as keras
    from ray import tune

    grid = tune.Tuner(
        custom_trainable,
        param_space={"units": tune.choice([8, 16]), "learning_rate": 1e-2},
        tune_config=tune.TuneConfig(num_samples=2, metric="val_accuracy", mode="max"),
        run_config=run_config(tmp_path, "own"),
    ).fit()
    assert len(grid) == 2
    assert not grid.errors, grid.errors
    for result in grid:
        assert result.error is None
        assert "val_accuracy" in result.metrics
        assert 0.0 <= result.metrics["val_accuracy"] <= 1.0
        assert result.metrics["epoch"] == 2
        assert result.config["units"] in (8, 16)
        assert result.config["learning_rate"] == 1e-2

    best = grid.get_best_result()
    assert best.metrics["val_accuracy"] == max(r.metrics["val_accuracy"] for r in grid)

    # the rebuilt model is the user's own, for the best trial's drawn units
    model = ktune.load_model(best)
    assert isinstance(model, keras.Model)
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer",
        "Embedding",
        "GlobalAveragePooling1D",
        "Dense",
    ]
    assert _embedding_dim(model) == best.config["units"]
    assert model.output_shape == (None, NUM_CLASSES)

    export = ktune.export_result(best, tmp_path / "export")
    assert (Path(export) / "saved_model.pb").is_file()
    metadata = json.loads((Path(export) / "metadata.json").read_text())
    assert metadata["config"]["units"] == best.config["units"]

    fresh = reload_in_fresh_process(export, TEXTS)
    probs = np.array(fresh["probabilities"])
    assert probs.shape == (len(TEXTS), NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert len(fresh["label"]) == len(TEXTS)

    here = tf.saved_model.load(str(export)).signatures["serving_default"]
    in_process = here(tf.constant(TEXTS))["probabilities"].numpy()
    np.testing.assert_allclose(probs, in_process, atol=1e-5)

    # and the export serves what the restored Keras model predicts on the same token ids
    from ktune.trainables.custom import CustomModelFamily

    with best.checkpoint.as_directory() as d:
        info = json.loads(Path(d, "ktune_trial.json").read_text())
    from ktune.config import TrainingConfig

    ids = CustomModelFamily(build).encode(
        info["artefacts"], TrainingConfig(**info["training"]), TEXTS
    )
    np.testing.assert_allclose(model.predict(ids, verbose=0), probs, atol=1e-5)

    # a `build` defined in __main__ has no name to import again: one clear error that
    # asks for it, not the builtin family's model for these weights
    assert info["build_model"] == f"{__name__}:build"
    assert info["own_model"] == f"{__name__}.build"
    folder = Path(best.checkpoint.to_directory(str(tmp_path / "as_main")))
    as_main = {**info, "build_model": None, "own_model": "__main__.build"}
    (folder / "ktune_trial.json").write_text(json.dumps(as_main))
    with pytest.raises(ktune.ConfigError) as raised:
        ktune.export_result(folder, tmp_path / "refused")
    assert str(raised.value) == (
        "build_model: this trial trained your own model (__main__.build), which cannot be "
        "imported by name; pass the same function as build_model="
    )
    assert not (tmp_path / "refused").exists()
    again = ktune.load_model(folder, build_model=build)
    np.testing.assert_allclose(again.predict(ids, verbose=0), probs, atol=1e-5)


def test_a_key_one_typo_from_the_optimizers_is_refused():
    """``learning_rat`` in a custom model's space would reach the model while the
    optimizer searched its default range: refused, in the file's space and in a drawn
    config, unless the optimizer's own key is there too."""
    from ktune.search_spaces.custom import CustomModelSpace

    space = CustomModelSpace()
    with pytest.raises(ktune.ConfigError) as raised:
        space.resolve({"units": [8, 16], "learning_rat": {"low": 1e-3, "high": 2e-3}})
    assert str(raised.value) == (
        "search.space.learning_rat: did you mean 'learning_rate'? ktune's optimizer reads "
        "'learning_rate', which this space leaves at its default; if 'learning_rat' is "
        "your model's own key, give 'learning_rate' as well"
    )
    with pytest.raises(ktune.ConfigError, match=r"^config.warmpu: did you mean 'warmup'\?"):
        space.check_config({"learning_rate": 1e-3, "warmpu": 0.0})
    # the model's own keys, and a near name beside the optimizer's own key, pass
    resolved = space.resolve({"units": [8], "lr_scale": 2.0, "warmup": 0.0, "warmpu": 1})
    assert resolved["warmup"].value == 0.0 and "warmpu" in resolved
    assert space.check_config({"learning_rate": 1e-3, "units": 8})["warmup"] == 0.1


@pytest.mark.slow
def test_missing_learning_rate_stops_fit_in_the_driver(tmp_path, custom_trainable):
    from ray import tune

    tuner = tune.Tuner(
        custom_trainable,
        param_space={"units": 8},
        tune_config=tune.TuneConfig(num_samples=1, metric="val_accuracy", mode="max"),
        run_config=run_config(tmp_path, "no_lr"),
    )
    with pytest.raises(ktune.ConfigError, match="learning_rate"):
        tuner.fit()


def test_build_model_must_be_callable():
    with pytest.raises(ktune.ConfigError, match="build_model"):
        ktune.trainable("transformer", data=DATA, training=TRAINING, build_model="mymodels:build")


def test_build_model_needs_the_transformer_family():
    with pytest.raises(ktune.ConfigError, match="build_model"):
        ktune.trainable("hf_bert", data=DATA, training=TRAINING, build_model=build)


MYMODELS = textwrap.dedent("""
    import tf_keras as keras


    def build(config, info):
        ids = keras.Input(shape=(info.maxlen,), dtype="int32")
        x = keras.layers.Embedding(info.vocab_size, config["units"])(ids)
        x = keras.layers.GlobalAveragePooling1D()(x)
        return keras.Model(ids, keras.layers.Dense(info.num_classes, activation="softmax")(x))
""")


def _experiment_file(folder: Path, build_ref: str, storage: Path) -> Path:
    raw = tiny_experiment(
        folder,
        model={"build": build_ref},
        data__train_size=DATA["train_size"],
        data__test_size=DATA["test_size"],
        search__num_samples=2,
        search__space={"units": [8, 16], "learning_rate": {"low": 5e-3, "high": 2e-2, "log": True}},
        storage=str(storage),
        export={"enabled": True},
        training=dict(TRAINING),
    )
    path = folder / f"{build_ref.partition(':')[0]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_model_build_in_experiment_file(tmp_path, ray_session, capsys):
    import ktune.cli

    (tmp_path / "mymodels.py").write_text(MYMODELS)
    exp_file = _experiment_file(tmp_path, "mymodels:build", tmp_path / "results")
    try:
        assert ktune.cli.main(["run", str(exp_file)]) == 0
    finally:
        sys.modules.pop("mymodels", None)
    capsys.readouterr()

    exp_dir = tmp_path / "results" / "tiny"
    best = json.loads((exp_dir / "best.json").read_text())
    assert best["config"]["units"] in (8, 16)
    assert 5e-3 <= best["config"]["learning_rate"] <= 2e-2
    assert best["metrics"]["epoch"] == 2
    assert json.loads((exp_dir / "ktune.json").read_text())["build_model"] == "mymodels:build"
    # the report searches the user's keys, with the file's ranges (learning_rate log)
    from ktune.report import load_experiment
    from ktune.report.study import build_study
    from ktune.search_spaces.base import Choice, Range

    record = load_experiment(exp_dir)
    assert isinstance(record.space["units"], Choice) and record.space["units"].values == (8, 16)
    assert isinstance(record.space["learning_rate"], Range) and record.space["learning_rate"].log
    study = build_study(record)
    assert study.trials[0].distributions["learning_rate"].log

    export = Path(best["export"])
    metadata = json.loads((export / "metadata.json").read_text())
    assert metadata["config"]["units"] == best["config"]["units"]
    fresh = reload_in_fresh_process(export, TEXTS)
    probs = np.array(fresh["probabilities"])
    assert probs.shape == (len(TEXTS), NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_model_build_that_cannot_be_imported(tmp_path, ray_session, capsys):
    import ktune.cli

    storage = tmp_path / "results"
    exp_file = _experiment_file(tmp_path, "nosuchmodule:build", storage)
    assert ktune.cli.main(["run", str(exp_file)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "model.build" in line]
    assert len(lines) == 1, err
    assert "nosuchmodule" in lines[0]
    assert not storage.exists()
