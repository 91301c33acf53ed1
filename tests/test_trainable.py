"""The shared trial loop on a real local Ray: per-epoch reports, checkpoints, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ktune.config import parse_config
from ktune.data import load_data

from conftest import tiny_experiment


def _results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


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
