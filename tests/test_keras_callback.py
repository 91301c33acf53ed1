"""``ktune.keras.ReportCheckpoint`` and ``ktune.keras.restore`` in a plain user-written
Ray Tune function: a failed trial is retried from its last epoch, optimizer step and all."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from ray import cloudpickle

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import ktune.keras

# Ray's workers do not have tests/ on sys.path: the functions travel by value, not by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_TRAIN, N_VAL, FEATURES, CLASSES, BATCH = 256, 64, 8, 3, 32
STEPS_PER_EPOCH = N_TRAIN // BATCH
EPOCHS = 4


def make_data(seed: int = 0):
    """Random features; the label is the argmax of a fixed projection (learnable)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_TRAIN + N_VAL, FEATURES)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(FEATURES, CLASSES)), axis=1).astype("int32")
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def make_model(lr: float, width: int = 16):
    import tf_keras as keras

    model = keras.Sequential(
        [
            keras.Input(shape=(FEATURES,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train(config):
    """The user's Tune function: restore, then fit with ReportCheckpoint; fails once."""
    import tf_keras as keras

    class FailOnce(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            marker = Path(config["marker"])
            if epoch + 1 == 2 and not marker.exists():
                marker.write_text("failed once")
                raise RuntimeError("FailOnce: the end of epoch 2, the first time")

    keras.utils.set_random_seed(0)
    (x, y), (xv, yv) = make_data()
    model = make_model(config["lr"])
    start = ktune.keras.restore(model)
    model.fit(
        x,
        y,
        validation_data=(xv, yv),
        batch_size=BATCH,
        epochs=EPOCHS,
        initial_epoch=start,
        shuffle=True,
        verbose=0,
        callbacks=[
            ktune.keras.ReportCheckpoint(
                extra_metrics=lambda e: {
                    "step": int(model.optimizer.iterations.numpy()),
                    "start": start,
                }
            ),
            FailOnce(),
        ],
    )


def train_renamed(config):
    """One epoch, reported under the user's own names; Keras' history kept for the test."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    (x, y), (xv, yv) = make_data()
    model = make_model(config["lr"])
    history = model.fit(
        x,
        y,
        validation_data=(xv, yv),
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        callbacks=[ktune.keras.ReportCheckpoint(metrics={"acc": "val_accuracy", "l": "loss"})],
    )
    Path(config["history"]).write_text(json.dumps(history.history))


@pytest.fixture(scope="module")
def retried(tmp_path_factory, ray_session):
    """The Tune run of ``train`` with one failure and one retry, shared by the tests here.

    ``KeepTrialHistory`` as the README asks: without it Ray 2.60 reopens the retried trial's
    result.json from its last snapshot, and the rows of epochs 1 and 2 are lost whenever
    that snapshot came before them (red in a fresh-clone CI on a slow machine)."""
    from ray import tune

    from ktune.ray_state import KeepTrialHistory

    tmp = tmp_path_factory.mktemp("keras_callback")
    marker = tmp / "m"
    grid = tune.Tuner(
        train,
        param_space={"lr": 1e-2, "marker": str(marker)},
        run_config=tune.RunConfig(
            storage_path=str(tmp / "ray"),
            name="retried",
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            callbacks=[KeepTrialHistory()],
        ),
    ).fit()
    return grid, marker, tmp


@pytest.mark.slow
def test_failed_trial_is_retried_from_its_checkpoint(retried):
    grid, marker, _ = retried
    assert len(grid) == 1
    result = grid[0]
    assert result.error is None, result.error
    assert marker.read_text() == "failed once"  # the first run failed, so this is the retry
    assert result.metrics["epoch"] == EPOCHS
    assert result.checkpoint is not None

    rows = result.metrics_dataframe.sort_values("training_iteration")
    # epochs 1, 2 by the first run; 3, 4 by the retry, which restored epoch 2: none repeated
    assert rows["epoch"].tolist() == [1, 2, 3, 4]
    assert rows["start"].tolist() == [0, 0, 2, 2]
    # the optimizer's step continued from the checkpoint instead of starting again at 0
    assert rows["step"].tolist() == [STEPS_PER_EPOCH * e for e in (1, 2, 3, 4)]
    assert result.metrics["step"] == EPOCHS * STEPS_PER_EPOCH
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert key in result.metrics


@pytest.mark.slow
def test_restore_from_a_local_folder(retried):
    import tf_keras as keras

    grid, _, tmp = retried
    folder = grid[0].checkpoint.to_directory(str(tmp / "ckpt"))

    first = make_model(1e-3)
    assert ktune.keras.restore(first, folder) == EPOCHS
    assert int(first.optimizer.iterations.numpy()) == EPOCHS * STEPS_PER_EPOCH
    second = make_model(1e-3)
    assert ktune.keras.restore(second, folder) == EPOCHS
    fresh = make_model(1e-3)
    for a, b, _c in zip(first.get_weights(), second.get_weights(), fresh.get_weights()):
        np.testing.assert_allclose(a, b)
    assert any(not np.allclose(a, c) for a, c in zip(first.get_weights(), fresh.get_weights()))
    # the optimizer's slots came back too: Adam's moments are not zero
    moments = [v.numpy() for v in first.optimizer.variables if v.name.startswith("m/")]
    assert len(moments) == len(first.trainable_variables)
    assert all(np.abs(m).max() > 0 for m in moments)
    for a, b in zip(first.optimizer.variables, second.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy())

    # weights only: a model without an optimizer reads the weights and leaves the rest
    plain = keras.Sequential(
        [
            keras.Input(shape=(FEATURES,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    assert ktune.keras.restore(plain, folder) == EPOCHS
    for a, b in zip(first.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b)

    with pytest.raises(Exception):  # noqa: B017 - TensorFlow raises its own error types
        ktune.keras.restore(make_model(1e-3, width=17), folder)


@pytest.mark.parametrize("legacy", [False, True], ids=["optimizer", "legacy_optimizer"])
def test_restore_brings_back_the_optimizer_state(tmp_path, legacy):
    """A checkpoint as ReportCheckpoint writes it, of a model compiled with Keras's
    optimizer or a ``keras.optimizers.legacy`` one (slots created lazily), restored into
    a fresh model: the step, the moments and the weights come back."""
    import tensorflow as tf
    import tf_keras as keras

    from ktune.keras import CHECKPOINT_PREFIX, _tracked

    def model():
        m = make_model(1e-2)
        if legacy:
            m.compile(optimizer=keras.optimizers.legacy.Adam(1e-2), loss=m.loss)
        return m

    keras.utils.set_random_seed(0)
    (x, y), _ = make_data()
    trained = model()
    trained.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    epoch = tf.Variable(2, dtype=tf.int64)
    _tracked(trained, epoch).write(str(tmp_path / CHECKPOINT_PREFIX))

    fresh = model()
    assert ktune.keras.restore(fresh, tmp_path) == 2
    assert int(fresh.optimizer.iterations.numpy()) == 2 * STEPS_PER_EPOCH

    def state(optimizer) -> list:
        variables = optimizer.variables  # the legacy optimizer's is a method
        return [v.numpy() for v in (variables() if legacy else variables)]

    ours, theirs = state(fresh.optimizer), state(trained.optimizer)
    assert len(ours) == len(theirs) > 2 * len(fresh.trainable_variables)  # step, m, v
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_report_under_own_names(tmp_path, ray_session):
    from ray import tune

    history_file = tmp_path / "history.json"
    grid = tune.Tuner(
        train_renamed,
        param_space={"lr": 1e-2, "history": str(history_file)},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="renamed", verbose=0),
    ).fit()
    result = grid[0]
    assert result.error is None, result.error
    history = json.loads(history_file.read_text())
    rows = result.metrics_dataframe.sort_values("training_iteration")
    np.testing.assert_allclose(rows["acc"], history["val_accuracy"], rtol=1e-6)
    np.testing.assert_allclose(rows["l"], history["loss"], rtol=1e-6)
    assert rows["epoch"].tolist() == [1, 2]
    for key in ("val_accuracy", "accuracy", "loss", "val_loss"):  # only the names asked for
        assert key not in result.metrics


def test_missing_keras_log_is_a_key_error():
    cb = ktune.keras.ReportCheckpoint(metrics={"acc": "val_accuracy"})
    cb.set_model(make_model(1e-2))
    with pytest.raises(KeyError, match="val_accuracy"):
        cb.on_epoch_end(0, {"loss": 1.0})
