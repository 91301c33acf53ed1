"""The KerasTuner side of bench/kerastuner.py, in its own process with Keras 3.

KerasTuner 1.4 runs on Keras 3, so this process sets ``TF_USE_LEGACY_KERAS=0`` before
anything imports TensorFlow (``import ktune`` only sets it when unset). It reads the same
experiment file as the ktune side, so data, space and epochs come from one place:

- data: ``ktune.data.load_data`` (numpy only, no TensorFlow): the same generated texts
  and the same seeded train / validation split;
- tokens: ``keras.layers.TextVectorization`` with the same ``vocab_size`` and ``maxlen``,
  adapted once on the training split, texts turned into ids once (as ktune does);
- model: the same architecture written with Keras 3 layers (token + position embedding
  masking padding, transformer blocks with ``key_dim = embed_dim // heads``, masked
  average pooling, Dropout, Dense(20, relu), Dropout, Dense(C, softmax));
- optimizer: AdamW (epsilon 1e-6, no decay on LayerNorm and biases) over a linear
  warmup then linear decay to 0 at ``epochs x steps per epoch``, as ``ktune.optim``;
- space: a ``kt.HyperModel`` drawing ``embed_dim`` with ``hp.Choice``, ``heads`` among
  its divisors (``hp.conditional_scope``), ``learning_rate`` and ``warmup`` with
  ``hp.Float``, over the ranges of the experiment's ``search.space``; the other keys fixed.

Every epoch of every model fit appends one JSON line to ``OUT/epochs.jsonl``: the wall
clock (``time.time()``; the caller subtracts its own start), the execution number, the
epoch and ``val_accuracy``. ``OUT/summary.json`` holds the tuner's own view at the end.

    TF_USE_LEGACY_KERAS=0 python bench/kerastuner_side.py EXP.yaml hyperband OUT \\
        [--hyperband-iterations 1] [--max-trials 4] [--initial-points 3]
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "0"  # KerasTuner 1.4 needs Keras 3; before any import
# ktune's own process environment before TensorFlow loads (a value set wins, so Keras 3
# stays): the CPU kernels ktune's trials get (oneDNN's on x86-64), so the two sides differ
# in their search, not in TensorFlow's kernels.
import ktune._keras_env  # noqa: E402, F401

# isort: split
import argparse
import json
import math
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ktune.config import load_config  # numpy and yaml only: no TensorFlow
from ktune.data import load_data


class TokenAndPositionEmbedding(layers.Layer):
    """Token plus learned position embedding; masks padding (id 0), keeps position 0."""

    def __init__(self, maxlen: int, vocab_size: int, embed_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.token_emb = layers.Embedding(vocab_size, embed_dim)
        self.pos_emb = layers.Embedding(maxlen, embed_dim)

    def call(self, inputs):
        positions = ops.arange(0, ops.shape(inputs)[-1])
        return self.token_emb(inputs) + self.pos_emb(positions)

    def compute_mask(self, inputs, mask=None):
        first = ops.equal(ops.arange(ops.shape(inputs)[-1]), 0)
        return ops.logical_or(ops.not_equal(inputs, 0), ops.expand_dims(first, 0))


class TransformerBlock(layers.Layer):
    """Self-attention and a feed-forward net, each with residual and LayerNorm."""

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim // num_heads)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)
        self.supports_masking = True

    def call(self, inputs, training=None, mask=None):
        attention_mask = None if mask is None else ops.expand_dims(mask, 1)
        attn = self.att(inputs, inputs, attention_mask=attention_mask, training=training)
        out1 = self.layernorm1(inputs + self.dropout1(attn, training=training))
        ffn = self.ffn(out1, training=training)
        return self.layernorm2(out1 + self.dropout2(ffn, training=training))


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``peak * step / warmup_steps``, then linear decay to 0 at ``total_steps``."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int):
        self.peak, self.total_steps, self.warmup_steps = peak, total_steps, warmup_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warming = self.peak * step / max(self.warmup_steps, 1)
        decaying = self.peak * ops.maximum(
            0.0, (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        )
        return ops.where(step < self.warmup_steps, warming, decaying)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


class TransformerHyperModel(kt.HyperModel):
    """The ``transformer`` family's classifier over the experiment's space, for KerasTuner."""

    def __init__(
        self, space: dict, training, vocab_size: int, num_classes: int, n_train: int, seed: int
    ):
        super().__init__()
        self.space, self.training, self.num_classes, self.seed = space, training, num_classes, seed
        self.vocab_size = vocab_size  # the adapted vocabulary's size, as ktune's embedding
        steps_per_epoch = math.ceil(n_train / training.batch_size)
        self.total_steps = steps_per_epoch * training.epochs  # the whole run, as ktune

    def _draw(self, hp, name: str, spec):
        if isinstance(spec, list):
            return hp.Choice(name, spec)
        if isinstance(spec, dict):
            return hp.Float(
                name,
                float(spec["low"]),
                float(spec["high"]),
                sampling="log" if spec.get("log") else "linear",
            )
        return spec  # fixed

    def build(self, hp):
        keras.utils.set_random_seed(self.seed)
        dims = self.space["embed_dim"]
        embed_dim = hp.Choice("embed_dim", dims)
        heads = None
        for e in dims:  # heads only among the divisors of the drawn embed_dim
            with hp.conditional_scope("embed_dim", [e]):
                h = hp.Choice(
                    f"heads_for_embed_dim_{e}", [x for x in self.space["heads"] if e % x == 0]
                )
                if e == embed_dim:
                    heads = h
        learning_rate = self._draw(hp, "learning_rate", self.space["learning_rate"])
        warmup = self._draw(hp, "warmup", self.space["warmup"])
        ff_dim = self.space["ff_dim"]
        dropout = self.space["dropout"]
        num_blocks = self.space["num_blocks"]
        t = self.training

        inputs = keras.Input(shape=(t.maxlen,), dtype="int32")
        x = TokenAndPositionEmbedding(t.maxlen, self.vocab_size, embed_dim)(inputs)
        for _ in range(num_blocks):
            x = TransformerBlock(embed_dim, heads, ff_dim, dropout)(x)
        x = layers.GlobalAveragePooling1D()(x)
        x = layers.Dropout(dropout)(x)
        x = layers.Dense(20, activation="relu")(x)
        x = layers.Dropout(dropout)(x)
        outputs = layers.Dense(self.num_classes, activation="softmax")(x)
        model = keras.Model(inputs, outputs)

        schedule = WarmupLinearDecay(
            float(learning_rate), self.total_steps, round(warmup * self.total_steps)
        )
        optimizer = keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=self.space["weight_decay"], epsilon=1e-6
        )
        # Keras 3 names variables briefly: LayerNorm's are gamma/beta.
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        model.compile(
            optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        return model


class RecordEpochs(keras.callbacks.Callback):
    """One JSON line per epoch; a file, because KerasTuner deep-copies callbacks per trial."""

    executions = 0

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_train_begin(self, logs=None):
        RecordEpochs.executions += 1

    def on_epoch_end(self, epoch, logs=None):
        row = {
            "t": time.time(),
            "execution": RecordEpochs.executions,
            "epoch": epoch + 1,
            "val_accuracy": float(logs["val_accuracy"]),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def space_of(cfg) -> dict:
    """The experiment's search.space as plain values (lists, ranges, fixed scalars)."""
    from ktune.search_spaces import Choice, Range

    out = {}
    for name, spec in cfg.search.space.items():
        if isinstance(spec, Choice):
            out[name] = list(spec.values)
        elif isinstance(spec, Range):
            if spec.integer:
                raise SystemExit(f"search.space.{name}: integer ranges are not mirrored here")
            out[name] = {"low": spec.low, "high": spec.high, "log": spec.log}
        else:
            out[name] = spec.value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("tuner", choices=["hyperband", "bayesian"])
    parser.add_argument("out")
    parser.add_argument("--hyperband-iterations", type=int, default=1)
    parser.add_argument("--max-trials", type=int, default=4)
    parser.add_argument("--initial-points", type=int, default=None)
    args = parser.parse_args()
    assert keras.__version__.startswith("3."), keras.__version__

    cfg = load_config(args.experiment)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg.data)
    t = cfg.training
    vectorizer = layers.TextVectorization(
        max_tokens=t.vocab_size, output_mode="int", output_sequence_length=t.maxlen
    )
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(list(data.train_texts)).batch(1024))

    def ids(texts):
        return np.asarray(vectorizer(tf.constant(list(texts))), np.int32)

    x_train, x_val = ids(data.train_texts), ids(data.val_texts)
    space = space_of(cfg)
    vocabulary_size = len(vectorizer.get_vocabulary())
    hypermodel = TransformerHyperModel(
        space, t, vocabulary_size, data.num_classes, len(data.train_labels), cfg.search.seed
    )
    common = {
        "objective": "val_accuracy",
        "seed": cfg.search.seed,
        "overwrite": True,
        "directory": str(out / "kt"),
        "project_name": args.tuner,
    }
    if args.tuner == "hyperband":
        tuner = kt.Hyperband(
            hypermodel,
            max_epochs=t.epochs,
            factor=3,
            hyperband_iterations=args.hyperband_iterations,
            **common,
        )
    else:
        tuner = kt.BayesianOptimization(
            hypermodel, max_trials=args.max_trials, num_initial_points=args.initial_points, **common
        )
    started = time.time()
    tuner.search(
        x_train,
        data.train_labels,
        validation_data=(x_val, data.val_labels),
        batch_size=t.batch_size,
        epochs=t.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[RecordEpochs(str(out / "epochs.jsonl"))],
    )
    best = tuner.oracle.get_best_trials(1)[0]
    summary = {
        "tuner": args.tuner,
        "keras": keras.__version__,
        "keras_tuner": kt.__version__,
        "search_started": started,
        "search_ended": time.time(),
        "trials": len(tuner.oracle.trials),
        "best_score": best.score,
        "best_hyperparameters": {k: v for k, v in best.hyperparameters.values.items()},
        "vocabulary_size": vocabulary_size,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
