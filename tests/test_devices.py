"""Per-trial device set-up (planned on CPU here; on a real GPU it is checked by hand)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from ktune.config import TrainingConfig
from ktune.trainables.devices import DevicePlan, plan_devices

from conftest import subprocess_env


@pytest.mark.parametrize(
    "cpu, gpu, visible, total, limit, expected",
    [
        (1, 0, 1, 16000, None, DevicePlan(1, 1, True, False, None)),  # gpu: 0 sees no GPU
        (2, 0, 0, None, None, DevicePlan(2, 2, True, False, None)),
        (4, 1, 1, 16000, None, DevicePlan(4, 2, False, True, None)),  # whole GPU: growth
        (2, 0.5, 1, 16000, None, DevicePlan(2, 2, False, False, 7232)),  # half, less the context
        (1, 0.25, 1, 80000, None, DevicePlan(1, 1, False, False, 19232)),
        (1, 0.25, 1, 2000, None, DevicePlan(1, 1, False, False, 375)),  # a quarter at most
        (1, 0.5, 1, 16000, 3000, DevicePlan(1, 1, False, False, 3000)),  # explicit cap wins
        (1, 0.5, 1, None, None, DevicePlan(1, 1, False, True, None)),  # size unknown: growth
        (2.7, 0.5, 0, None, None, DevicePlan(2, 2, False, False, None)),  # no GPU visible
    ],
)
def test_plan_devices(cpu, gpu, visible, total, limit, expected):
    plan = plan_devices(
        cpu, gpu, visible_gpus=visible, total_memory_mb=total, memory_limit_mb=limit
    )
    assert plan == expected


def test_device_setup_runs_before_any_tensorflow_op():
    """Importing the trial code runs no TF op, so a trial's set-up still takes effect."""
    script = (
        "import ktune.trainables.base, ktune.trainables.transformer\n"
        "from ktune.trainables.devices import configure_devices\n"
        "import tensorflow as tf\n"
        "plan = configure_devices(cpu=1, gpu=0)\n"
        "assert tf.config.threading.get_intra_op_parallelism_threads() == 1\n"
        "assert tf.config.get_visible_devices('GPU') == []\n"
        "tf.constant(1.0) + 1.0\n"
        "print(plan)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped" not in done.stderr
    assert "DevicePlan(intra_op_threads=1" in done.stdout


def test_mixed_precision_keeps_float32_output_and_trains(seeded):
    import tf_keras as keras

    from ktune.trainables.base import compile_model
    from ktune.trainables.transformer import build_classifier

    training = replace(
        TrainingConfig(), maxlen=8, batch_size=4, epochs=1, mixed_precision=True, jit_compile=True
    )
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(
            maxlen=8, vocab_size=30, embed_dim=8, heads=2, ff_dim=8, num_classes=3
        )
        compile_model(model, {"learning_rate": 1e-2}, training, n_train=16)
        ids = np.random.default_rng(0).integers(1, 30, size=(16, 8)).astype("int32")
        labels = np.arange(16) % 3
        history = model.fit(ids, labels, batch_size=4, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[1].compute_dtype == "float16"  # the embedding computes in float16
    assert model.output.dtype == "float32"
    assert np.isfinite(history.history["loss"][0])
