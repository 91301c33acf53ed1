"""The same search without ktune: what a Ray Tune user writes by hand, for the side by side.

A careful user following Ray Tune's and Keras's own documentation: the Transformer text
classifier of keras.io's "Text classification with Transformer" example (token and
position embedding, one Transformer block, average pooling, a small dense head) in Keras 3,
`TextVectorization` adapted on the training texts, Adam, a function trainable reporting
each epoch with Ray's `TuneReportCheckpointCallback`, Optuna's TPE (`OptunaSearch`) and
ASHA, then the best checkpoint of any trial scored on the test texts.

It gets ktune's budget and the ranges of ktune's example for the hyperparameters both
have (embedding width, heads, feed-forward width, dropout, learning rate; ktune's ranges
were themselves found by measurement, so this is generous to the plain side), the same
trial count, epochs, ASHA settings, batch size, vocabulary and length, 1 CPU per trial,
2 trials at a time. No ktune import: the harness hands it the texts of ktune's own
splits (a JSON file) so both sides are scored on the same test texts.

Its layers are keras.io's as published (attention ``key_dim`` the full width, no padding
mask), not `bench/kerastuner_side.py`'s: that one rebuilds ktune's own model so that the
KerasTuner comparison is of two searches on one model; this one is what a user who has
Ray Tune but not ktune writes, model included.

    python bench/plain_tune.py SPLITS.json SETTINGS.json OUT.json

Writes OUT.json: test accuracy and per-text correctness, the best validation accuracy,
best config, trials, epochs trained, wall time.
Run by bench/agnews_quality.py, not on its own.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

# The CPU kernels ktune's trials get (ktune/_keras_env.py: oneDNN's on x86-64, which
# TensorFlow turns on by itself only with AVX-512 VNNI, BF16 or AMX), so the sides differ in their
# search, not in TensorFlow's kernels.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

STARTED = time.time()


def main() -> int:
    splits_file, settings_file, out_file = sys.argv[1:4]
    splits = json.loads(open(splits_file).read())
    s = json.loads(open(settings_file).read())

    import keras
    import numpy as np
    import ray
    from keras import layers
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    class TransformerBlock(layers.Layer):
        def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
            super().__init__(**kwargs)
            self.args = dict(embed_dim=embed_dim, num_heads=num_heads, ff_dim=ff_dim, rate=rate)
            self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
            self.ffn = keras.Sequential(
                [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
            )
            self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
            self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
            self.dropout1 = layers.Dropout(rate)
            self.dropout2 = layers.Dropout(rate)

        def call(self, inputs, training=False):
            attn_output = self.att(inputs, inputs)
            attn_output = self.dropout1(attn_output, training=training)
            out1 = self.layernorm1(inputs + attn_output)
            ffn_output = self.ffn(out1)
            ffn_output = self.dropout2(ffn_output, training=training)
            return self.layernorm2(out1 + ffn_output)

        def get_config(self):
            return {**super().get_config(), **self.args}

    class TokenAndPositionEmbedding(layers.Layer):
        def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
            super().__init__(**kwargs)
            self.args = dict(maxlen=maxlen, vocab_size=vocab_size, embed_dim=embed_dim)
            self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
            self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

        def call(self, x):
            maxlen = keras.ops.shape(x)[-1]
            positions = keras.ops.arange(start=0, stop=maxlen, step=1)
            return self.token_emb(x) + self.pos_emb(positions)

        def get_config(self):
            return {**super().get_config(), **self.args}

    maxlen, vocab_size = s["maxlen"], s["vocab_size"]
    vectorize = layers.TextVectorization(max_tokens=vocab_size, output_sequence_length=maxlen)
    vectorize.adapt(splits["train_texts"])

    def ids(texts):
        return np.asarray(vectorize(np.asarray(texts, dtype=object)))

    x_train, x_val, x_test = (ids(splits[k]) for k in ("train_texts", "val_texts", "test_texts"))
    y_train, y_val, y_test = (
        np.asarray(splits[k]) for k in ("train_labels", "val_labels", "test_labels")
    )
    num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1

    def build(config):
        inputs = layers.Input(shape=(maxlen,))
        x = TokenAndPositionEmbedding(maxlen, vocab_size, config["embed_dim"])(inputs)
        x = TransformerBlock(
            config["embed_dim"], config["heads"], config["ff_dim"], config["dropout"]
        )(x)
        x = layers.GlobalAveragePooling1D()(x)
        x = layers.Dropout(config["dropout"])(x)
        x = layers.Dense(20, activation="relu")(x)
        x = layers.Dropout(config["dropout"])(x)
        outputs = layers.Dense(num_classes, activation="softmax")(x)
        model = keras.Model(inputs=inputs, outputs=outputs)
        model.compile(
            optimizer=keras.optimizers.Adam(config["learning_rate"]),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def train_fn(config, x_train, y_train, x_val, y_val):
        from ray.tune.integration.keras import TuneReportCheckpointCallback

        keras.utils.set_random_seed(s["seed"])
        model = build(config)
        model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            batch_size=s["batch_size"],
            epochs=s["epochs"],
            verbose=0,
            callbacks=[TuneReportCheckpointCallback(metrics={"val_accuracy": "val_accuracy"})],
        )

    space = {
        "embed_dim": tune.choice(s["space"]["embed_dim"]),
        "heads": tune.choice(s["space"]["heads"]),
        "ff_dim": tune.choice(s["space"]["ff_dim"]),
        "dropout": tune.uniform(*s["space"]["dropout"]),
        "learning_rate": tune.loguniform(*s["space"]["learning_rate"]),
    }
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(
                train_fn, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val
            ),
            {"cpu": 1},
        ),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_accuracy",
            mode="max",
            num_samples=s["num_samples"],
            max_concurrent_trials=s["max_concurrent_trials"],
            search_alg=OptunaSearch(seed=s["seed"]),
            scheduler=ASHAScheduler(
                max_t=s["epochs"],
                grace_period=s["grace_period"],
                reduction_factor=s["reduction_factor"],
            ),
        ),
        run_config=tune.RunConfig(
            name="plain", storage_path=tempfile.mkdtemp(prefix="plain-tune-"), verbose=0
        ),
    )
    grid = tuner.fit()
    best = grid.get_best_result(metric="val_accuracy", mode="max", scope="all")
    checkpoint = best.get_best_checkpoint(metric="val_accuracy", mode="max")
    with checkpoint.as_directory() as folder:
        model = keras.models.load_model(
            os.path.join(folder, "model.keras"),
            custom_objects={
                "TokenAndPositionEmbedding": TokenAndPositionEmbedding,
                "TransformerBlock": TransformerBlock,
            },
        )
    predicted = model.predict(x_test, verbose=0).argmax(axis=1)
    correct = (predicted == y_test).tolist()
    epochs = sum(len(r.metrics_dataframe) for r in grid if r.metrics_dataframe is not None)
    val_accuracy = max(
        float(r.metrics_dataframe["val_accuracy"].max())
        for r in grid
        if r.metrics_dataframe is not None
    )
    ray.shutdown()
    out = {
        "test_accuracy": round(float(np.mean(correct)), 4),
        "test_correct": correct,
        "val_accuracy": round(val_accuracy, 4),
        "best_config": {k: v for k, v in best.config.items()},
        "trials": len(grid),
        "epochs_trained": int(epochs),
        "wall_s": round(time.time() - STARTED, 1),
    }
    with open(out_file, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
