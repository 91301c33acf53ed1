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
