"""The shared optimizer: warmup + linear decay schedule values, AdamW weight decay."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ktune.optim import WarmupLinearDecay, create_optimizer


def lr(schedule, step):
    return float(schedule(tf.constant(step)).numpy())


def test_schedule_values():
    s = WarmupLinearDecay(peak_learning_rate=1e-3, total_steps=100, warmup_steps=10)
    assert lr(s, 0) == 0.0
    assert lr(s, 5) == pytest.approx(5e-4)
    assert lr(s, 10) == pytest.approx(1e-3)  # the peak at the end of warmup
    assert lr(s, 55) == pytest.approx(5e-4)  # halfway down the decay
    assert lr(s, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr(s, 150) == pytest.approx(0.0, abs=1e-12)  # never negative past the end
    values = [lr(s, i) for i in range(101)]
    assert max(values) == pytest.approx(1e-3)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) < 0)


def test_schedule_without_warmup_starts_at_peak():
    s = WarmupLinearDecay(2e-3, total_steps=50, warmup_steps=0)
    assert lr(s, 0) == pytest.approx(2e-3)
    assert lr(s, 25) == pytest.approx(1e-3)


def test_schedule_config_round_trip():
    s = WarmupLinearDecay(3e-4, total_steps=77, warmup_steps=7)
    clone = WarmupLinearDecay.from_config(s.get_config())
    assert [lr(clone, i) for i in (0, 3, 7, 40, 77)] == [lr(s, i) for i in (0, 3, 7, 40, 77)]


def test_create_optimizer_warmup_is_a_fraction_of_total_steps():
    opt = create_optimizer(learning_rate=1e-3, total_steps=200, warmup=0.1)
    schedule = opt.get_config()["learning_rate"]  # the serialized schedule, as saved
    assert schedule["config"] == {
        "peak_learning_rate": 1e-3,
        "total_steps": 200,
        "warmup_steps": 20,
    }


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": 0.0, "total_steps": 10}, "learning_rate"),
        ({"learning_rate": -1e-3, "total_steps": 10}, "learning_rate"),
        ({"learning_rate": 1e-3, "total_steps": 10, "warmup": 1.0}, "warmup"),
        ({"learning_rate": 1e-3, "total_steps": 0}, "total_steps"),
    ],
)
def test_create_optimizer_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_optimizer(**kwargs)


def test_weight_decay_spares_layer_norm_and_bias():
    opt = create_optimizer(learning_rate=0.1, total_steps=10, warmup=0.0, weight_decay=0.5)
    kernel = tf.Variable(np.ones(3, np.float32), name="dense/kernel")
    bias = tf.Variable(np.ones(3, np.float32), name="dense/bias")
    gamma = tf.Variable(np.ones(3, np.float32), name="layer_norm/gamma")
    zeros = tf.zeros(3)
    opt.apply_gradients([(zeros, kernel), (zeros, bias), (zeros, gamma)])
    assert np.all(kernel.numpy() < 1.0)  # decayed: 1 - lr * wd
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.5, rtol=1e-5)
    np.testing.assert_array_equal(bias.numpy(), 1.0)
    np.testing.assert_array_equal(gamma.numpy(), 1.0)


def _train(optimizer_class, steps: int, checkpoint_dir=None):
    """A small transformer (an embedding with a sparse gradient, LayerNorm, biases)
    trained ``steps`` steps from a fixed start with AdamW + warmup + weight decay."""
    import tf_keras as keras

    from ktune.optim import _NO_DECAY
    from ktune.trainables.transformer import build_classifier

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build_classifier(
        maxlen=12, vocab_size=200, embed_dim=16, heads=2, ff_dim=16, num_classes=3, dropout=0.0
    )
    optimizer = optimizer_class(
        learning_rate=WarmupLinearDecay(1e-2, total_steps=20, warmup_steps=3),
        weight_decay=0.1,
        epsilon=1e-6,
    )
    optimizer.exclude_from_weight_decay(var_names=_NO_DECAY)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    if steps:
        rng = np.random.default_rng(0)
        ids = rng.integers(1, 200, size=(8 * steps, 12)).astype("int32")
        model.fit(ids, ids[:, 0] % 3, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model, optimizer


def test_fused_adamw_is_keras_adamw_to_float_rounding():
    import tf_keras as keras

    from ktune.optim import FusedAdamW

    keras_model, keras_opt = _train(keras.optimizers.AdamW, steps=6)
    fused_model, fused_opt = _train(FusedAdamW, steps=6)
    start, _ = _train(keras.optimizers.AdamW, steps=0)
    names = [v.name for v in keras_opt.variables]
    assert [v.name for v in fused_opt.variables] == names  # the same slots, same names
    assert int(fused_opt.iterations.numpy()) == 6
    for ours, theirs, before in zip(fused_model.weights, keras_model.weights, start.weights):
        assert not np.allclose(ours.numpy(), before.numpy())  # every weight moved
        # a step moves a weight by about the learning rate (1e-2): 1e-4 is 1% of one step,
        # where a wrong decay, bias correction or sparse row would be a whole one
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(fused_opt.variables, keras_opt.variables):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-3, atol=1e-6)


def test_fused_adamw_restores_a_keras_adamw_checkpoint(tmp_path):
    """Experiments checkpointed before FusedAdamW resume with their optimizer state."""
    import tf_keras as keras

    from ktune.optim import FusedAdamW

    model, optimizer = _train(keras.optimizers.AdamW, steps=3)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    restored_model, restored = _train(FusedAdamW, steps=0)
    restored.build(restored_model.trainable_variables)
    status = tf.train.Checkpoint(model=restored_model, optimizer=restored).read(path)
    status.assert_existing_objects_matched()  # as ktune.keras.restore checks
    assert int(restored.iterations.numpy()) == 3
    for ours, theirs in zip(restored.variables, optimizer.variables):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_fused_adamw_refuses_amsgrad():
    from ktune.optim import FusedAdamW

    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdamW(learning_rate=1e-3, amsgrad=True)
