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
    draws = tmp_path / "draws"

    class FailOnceAfterEpoch2(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # the random stream each run of the trial starts
            import numpy as np

            with open(draws, "a") as f:
                f.write(f"{np.random.randint(2**31)}\n")

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
    # Keras's own time for each epoch, inside Ray's time between two reports
    assert all(0 < r["epoch_fit_s"] < r["time_this_iter_s"] for r in rows), rows
    assert best["metrics"]["epoch"] >= 1
    # the retried run draws anew (reseed_restored), not the first run's stream again
    first, retried = draws.read_text().split()
    assert first != retried


def test_batches_cover_every_row_once_per_epoch_in_a_new_order():
    """The trials' input pipeline: each epoch is every row once, in batches of the given
    size (the last one partial), a new order each epoch when shuffled and the rows' own
    order when not; dicts of arrays (the BERT families' inputs) stay paired with labels."""
    import numpy as np

    from ktune.keras import batches

    n, size = 23, 5
    ids = np.arange(n, dtype=np.int32)
    inputs = {"input_word_ids": np.stack([ids, ids * 10], axis=1), "input_mask": ids}
    labels = ids % 4
    train = batches(inputs, labels, size, shuffle=True)
    orders = []
    for _ in range(2):  # Keras iterates the dataset once per epoch
        sizes, rows = [], []
        for x, y in train:
            sizes.append(len(y))
            rows.extend(x["input_mask"].numpy().tolist())
            assert (x["input_word_ids"].numpy()[:, 1] == x["input_mask"].numpy() * 10).all()
            assert (y.numpy() == x["input_mask"].numpy() % 4).all()
        assert sizes == [5, 5, 5, 5, 3]
        assert sorted(rows) == list(range(n))
        orders.append(rows)
    assert orders[0] != orders[1] and orders[0] != list(range(n))
    ordered = [
        r for x, _ in batches(inputs, labels, size, shuffle=False) for r in x["input_mask"].numpy()
    ]
    assert ordered == list(range(n))


def test_a_restored_run_does_not_replay_epoch_one():
    """A trial restored at epoch 1 (resume, retry, PBT) trains its next epoch on a new data
    order with new word-dropout masks, as an uninterrupted trial does: seeded with the
    search's seed again, it replayed epoch 1's batches and masks step for step (found by
    a resume on AG News: train accuracy up, validation down)."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from ktune.keras import batches
    from ktune.trainables.base import reseed_restored
    from ktune.trainables.transformer import WordDropout

    n = 16
    x = np.repeat(np.arange(1, n + 1, dtype=np.int32)[:, None], 12, axis=1)
    y = np.zeros(n, np.int32)

    def epochs_seen(initial_epoch: int, reseed: bool) -> list[list]:
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)  # run_trial's seed, before the model is built
        seen: list = []

        def record(t):
            seen.append(t.numpy().tolist())
            return t

        ids = keras.Input((12,), dtype="int32")
        hidden = WordDropout(0.5)(ids)
        logged = keras.layers.Lambda(
            lambda t: tf.ensure_shape(tf.py_function(record, [t], tf.int32), [None, 12])
        )(hidden)
        pooled = keras.layers.GlobalAveragePooling1D()(tf.cast(logged, tf.float32)[..., None])
        model = keras.Model(ids, keras.layers.Dense(2, activation="softmax")(pooled))
        model.compile("sgd", "sparse_categorical_crossentropy")
        if reseed and initial_epoch:
            reseed_restored(0, initial_epoch)
        model.fit(batches(x, y, n, shuffle=True), epochs=2, initial_epoch=initial_epoch, verbose=0)
        return seen  # one batch of the whole data a step: one entry an epoch

    fresh = epochs_seen(0, reseed=False)
    assert len(fresh) == 2 and fresh[0] != fresh[1]
    # without the reseed (run_trial before the fix), the restored epoch 2 is epoch 1 again
    assert epochs_seen(1, reseed=False) == [fresh[0]]
    [restored] = epochs_seen(1, reseed=True)
    assert restored != fresh[0]
    order = [max(row) for row in restored]  # each row's id (a hidden word reads 1)
    assert order != [max(row) for row in fresh[0]] and sorted(order) == list(range(1, n + 1))
    masks = [[v == 1 for v in row] for row in restored]
    first = {max(row): [v == 1 for v in row] for row in fresh[0]}
    assert masks != [first[i] for i in order]  # new masks, not epoch 1's in a new order
    # deterministic: a second restore at the same epoch draws the same
    assert epochs_seen(1, reseed=True) == [restored]


def test_batches_do_not_autotune():
    """Ending a trial inside ``fit`` (ASHA's stop) tears its iterator down; an autotuned
    tf.data iterator waits for its tuning thread's next wake-up, seconds at a time, and the
    next trial on that worker waited with it. Keras's own array adapter autotunes."""
    import numpy as np

    from ktune.keras import batches

    train = batches(np.zeros((8, 4), np.int32), np.zeros(8, np.int32), 4, shuffle=True)
    assert train.options().autotune.enabled is False
    # what a custom family may hand over and tf.data cannot hold: fit gets it as it is
    assert batches([{"a": 1}, "b"], np.zeros(2, np.int32), 4, shuffle=True) is None


def test_a_reused_worker_lets_go_of_the_previous_trials_model():
    """Ray reuses a trial's worker for the next trial: the model, optimizer and datasets
    the last trial built are freed when the next one starts (``fresh_keras_state``), not
    when Python's collector next makes a full pass, every few trials (the memory bench's
    sawtooth: a worker's RSS grew about 25 MiB a trial, then fell)."""
    import gc
    import weakref

    import numpy as np
    import tf_keras as keras

    from ktune.trainables.base import fresh_keras_state

    gc.disable()  # the collector would run on its own schedule
    try:
        fresh_keras_state()  # the previous trial's start
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("adam", "mse")
        model.fit(np.zeros((8, 4)), np.zeros((8, 2)), epochs=1, verbose=0)
        trained = weakref.ref(model)
        del model
        assert trained() is not None, "no reference cycle: this test would show nothing"
        fresh_keras_state()  # the next trial's
        assert trained() is None
    finally:
        gc.enable()
