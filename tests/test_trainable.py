"""The shared trial loop on a real local Ray: per-epoch reports, checkpoints, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ktune.config import parse_config
from ktune.data import load_data
from ktune.trainables import get_family
from ktune.trainables.base import compile_model

from conftest import tiny_experiment


def _results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def test_checkpoint_restores_model_optimizer_and_epoch(tmp_path, seeded):
    cfg = parse_config(tiny_experiment(tmp_path))
    data = load_data(cfg.data)
    family = get_family("transformer")
    prepared = family.prepare(data, cfg.training, cfg.model)
    config = {"embed_dim": 8, "heads": 2, "ff_dim": 8, "learning_rate": 3e-3, "warmup": 0.1}

    def fresh():
        model = family.build_model(config, prepared.artefacts, data.num_classes, cfg.training)
        opt = compile_model(model, config, cfg.training, len(data.train_labels))
        epoch = tf.Variable(0, dtype=tf.int64)
        return model, opt, epoch, tf.train.Checkpoint(model=model, optimizer=opt, epoch=epoch)

    model, opt, epoch, ckpt = fresh()
    model.fit(prepared.train_inputs, data.train_labels, batch_size=64, epochs=1, verbose=0)
    epoch.assign(1)
    ckpt.write(str(tmp_path / "ckpt"))
    model2, opt2, epoch2, ckpt2 = fresh()
    ckpt2.read(str(tmp_path / "ckpt")).assert_consumed()
    assert int(epoch2.numpy()) == 1
    assert int(opt2.iterations.numpy()) == int(opt.iterations.numpy()) > 0
    for a, b in zip(opt.variables, opt2.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(
        model.predict(prepared.val_inputs, verbose=0),
        model2.predict(prepared.val_inputs, verbose=0),
    )


@pytest.mark.slow
def test_failed_trial_resumes_from_its_last_epoch(tmp_path, ray_session):
    """A trial that crashes after epoch 2 is retried from its checkpoint: epoch 3 comes next."""
    import tf_keras as keras

    from ktune.experiment import run_experiment

    marker = tmp_path / "failed-once"

    class FailOnceAfterEpoch2(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2 and not marker.exists():
                marker.touch()
                raise RuntimeError("injected failure after epoch 2")

    raw = tiny_experiment(
        tmp_path,
        search__num_samples=1,
        search__scheduler="fifo",
        search__max_failures=1,
        training__epochs=3,
        export={"enabled": False},
    )
    cfg = parse_config(raw)
    best = run_experiment(cfg, callbacks=[FailOnceAfterEpoch2()])
    assert marker.exists(), "the injected failure never happened"
    rows = _results(Path(best["trial_dir"]))
    epochs = [r["epoch"] for r in rows]
    assert epochs == [1, 2, 3], f"epoch count restarted instead of continuing: {epochs}"
    steps_per_epoch = math.ceil(len(load_data(cfg.data).train_labels) / cfg.training.batch_size)
    # the optimizer (and so the learning-rate schedule) continued too
    assert [r["step"] for r in rows] == [steps_per_epoch * e for e in (1, 2, 3)]
    assert best["metrics"]["epoch"] >= 1
