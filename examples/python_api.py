"""ktune from Python, offline on the builtin data: every pattern of the README's
"Using ktune from Python" section, small enough for a 2-core laptop (under 2 minutes).

    .venv/bin/python examples/python_api.py [--storage DIR] [--quick]

1. ``ktune.run``: an experiment (here a dict) end to end, with its result object.
2. The plugin: ktune's trainable and search space in your own ``tune.Tuner`` (Optuna +
   ASHA), then ``ktune.export_result`` on the best ``ray.tune.Result``.
3. PBT from Python: the same trainable under ktune's ``KtunePBT`` (Ray's
   ``PopulationBasedTraining``), each trial's history kept whole (``KeepTrialHistory``).
4. Your own Keras model: ``ktune.trainable(build_model=...)``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ktune

DATA = {"source": "builtin", "train_size": 3000, "test_size": 200, "seed": 0}
TRAINING = {"epochs": 2, "batch_size": 64, "maxlen": 32, "vocab_size": 2000}
SPACE = {
    "embed_dim": [16, 32],
    "heads": [1, 2, 4],
    "ff_dim": [16],
    "num_blocks": [1],
    "learning_rate": {"low": 3e-3, "high": 2e-2, "log": True},
}
TEXTS = ["Striker scores twice in the cup final", "Chip maker unveils a faster processor"]


def build_bag_of_embeddings(config, info):
    """A user's own model: token ids (batch, info.maxlen) -> class probabilities."""
    import tf_keras as keras

    inputs = keras.Input(shape=(info.maxlen,), dtype="int32")
    x = keras.layers.Embedding(info.vocab_size, config["units"])(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(config["dropout"])(x)
    return keras.Model(inputs, keras.layers.Dense(info.num_classes, activation="softmax")(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="results folder (default: a new temporary folder)")
    parser.add_argument(
        "--quick", action="store_true", help="fewer texts and trials (the test suite runs it so)"
    )
    args = parser.parse_args()
    storage = Path(args.storage or tempfile.mkdtemp(prefix="ktune-api-"))
    trials = 2 if args.quick else 4
    if args.quick:
        DATA["train_size"] = 1200
    started = time.time()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from ktune.ray_state import KeepTrialHistory
    from ktune.schedulers import KtunePBT

    # 1. An experiment end to end: the same as `ktune run`, returning a result object.
    result = ktune.run(
        {
            "name": "api-demo",
            "data": DATA,
            "training": TRAINING,
            "search": {"num_samples": trials, "space": SPACE},
        },
        storage=str(storage),
    )
    print(
        f"1. ktune.run: best {result.best_config['embed_dim']}d/"
        f"{result.best_config['heads']}h val_accuracy "
        f"{result.best_metrics['val_accuracy']:.3f}, test {result.test_accuracy:.3f}, "
        f"{len(result.trials)} trials, export {result.export_dir}"
    )
    print("   predict:", [(p["label"], round(p["score"], 3)) for p in result.predict(TEXTS)])

    # 2. The plugin: ktune's trainable in your own Tuner with Optuna + ASHA.
    trainable = ktune.trainable("transformer", data=DATA, training=TRAINING)
    grid = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(
                space=ktune.search_space("transformer", SPACE), metric="val_accuracy", mode="max"
            ),
            scheduler=ASHAScheduler(metric="val_accuracy", mode="max", max_t=2),
            num_samples=trials,
            max_concurrent_trials=2,
            reuse_actors=True,  # trials start in finished trials' workers: no new TF import
        ),
        run_config=tune.RunConfig(storage_path=str(storage), name="own-tuner", verbose=0),
    ).fit()
    best = grid.get_best_result("val_accuracy", "max")
    exported = ktune.export_result(best, storage / "own-tuner-export")
    print(
        f"2. own Tuner: best val_accuracy {best.metrics['val_accuracy']:.3f}, "
        f"exported to {exported}"
    )

    # 3. PBT from Python: the donor's weights, a mutated learning rate.
    space = ktune.search_space(
        "transformer", {**SPACE, "embed_dim": [32], "heads": [2]}, backend="tune"
    )
    pbt = KtunePBT(  # Ray's PBT, never cloning a donor at its last epoch
        epochs=TRAINING["epochs"],
        time_attr="training_iteration",
        metric="val_accuracy",
        mode="max",
        perturbation_interval=1,
        hyperparam_mutations={"learning_rate": tune.loguniform(3e-3, 2e-2)},
    )
    grid = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(scheduler=pbt, num_samples=trials, reuse_actors=True),
        # the rows of the epochs Ray's loggers drop when PBT pauses or clones a trial
        run_config=tune.RunConfig(
            storage_path=str(storage), name="pbt", verbose=0, callbacks=[KeepTrialHistory()]
        ),
    ).fit()
    best = grid.get_best_result("val_accuracy", "max")
    print(
        f"3. PBT: best val_accuracy {best.metrics['val_accuracy']:.3f} "
        f"(learning_rate {best.config['learning_rate']:.4g})"
    )

    # 4. Your own Keras model on ktune's data, optimizer, checkpoints and export.
    own = ktune.trainable(
        "transformer", data=DATA, training=TRAINING, build_model=build_bag_of_embeddings
    )
    grid = tune.Tuner(
        own,
        param_space={
            "units": tune.choice([16, 32]),
            "dropout": tune.uniform(0.0, 0.3),
            "learning_rate": tune.loguniform(3e-3, 3e-2),
        },
        tune_config=tune.TuneConfig(num_samples=2, metric="val_accuracy", mode="max"),
        run_config=tune.RunConfig(storage_path=str(storage), name="own-model", verbose=0),
    ).fit()
    best = grid.get_best_result()
    exported = ktune.export_result(
        best, storage / "own-model-export", build_model=build_bag_of_embeddings
    )
    print(
        f"4. own model: best val_accuracy {best.metrics['val_accuracy']:.3f}, "
        f"units {best.config['units']}, exported to {exported}"
    )
    print(f"done in {time.time() - started:.0f} s; results in {storage}")


if __name__ == "__main__":
    main()
