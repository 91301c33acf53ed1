"""Orchestration efficiency and wrapper overhead: ktune against plain Keras, side by side.

1. Orchestration: the same N fixed-config trials through `ktune run` (FIFO, C at a time,
   1 CPU each) against the ideal: the same trials trained back to back in one plain
   Python process with the same training code (1 TensorFlow thread), divided by C.
   Ratio = ktune wall time / ideal (target <= 1.10).
2. Wrapper overhead: per-epoch time of a trial inside ktune against the plain loop's
   per-epoch time on the same model and data (target <= 1.05).

    .venv/bin/python bench/orchestration.py [--quick]

Writes bench/results/orchestration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

# One fixed configuration: every trial trains the same model, so plain and ktune compare.
CONFIG = {"embed_dim": 32, "heads": 2, "ff_dim": 32, "learning_rate": 1e-3, "warmup": 0.1,
          "dropout": 0.1, "num_blocks": 1, "weight_decay": 0.01}


def experiment(n_trials: int, epochs: int, train_size: int, storage: str) -> dict:
    return {
        "name": "orchestration",
        "family": "transformer",
        "data": {"source": "builtin", "train_size": train_size, "test_size": 500},
        "search": {"num_samples": n_trials, "max_concurrent_trials": 2, "scheduler": "fifo",
                   "space": dict(CONFIG)},
        "training": {"epochs": epochs, "batch_size": 64, "maxlen": 48, "vocab_size": 10000},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": storage,
        "export": {"enabled": False},
    }


PLAIN = r"""
import json, sys, time
import ktune
from ktune.trainables.devices import configure_devices
configure_devices(cpu=1, gpu=0)  # one thread, as each ktune trial gets
import tf_keras as keras
from ktune.config import load_config
from ktune.data import load_data
from ktune.trainables import get_family
from ktune.trainables.base import compile_model

cfg = load_config(sys.argv[1])
n = int(sys.argv[2])
config = json.loads(sys.argv[3])
data = load_data(cfg.data)
family = get_family(cfg.family)
prepared = family.prepare(data, cfg.training, cfg.model)

class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        epochs.append(time.perf_counter() - self.t)

trials, epochs = [], []
for i in range(n):
    start = time.perf_counter()
    keras.utils.set_random_seed(cfg.search.seed)
    model = family.build_model(config, prepared.artefacts, data.num_classes, cfg.training)
    compile_model(model, config, cfg.training, len(data.train_labels))
    model.fit(prepared.train_inputs, data.train_labels,
              validation_data=(prepared.val_inputs, data.val_labels),
              batch_size=cfg.training.batch_size, epochs=cfg.training.epochs, verbose=0,
              callbacks=[EpochTimer()])
    trials.append(time.perf_counter() - start)
print("RESULT " + json.dumps({"trials": trials, "epochs": epochs}))
"""


def run_plain(exp_file: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PLAIN, str(exp_file), str(n), json.dumps(CONFIG)],
                         capture_output=True, text=True, cwd=REPO, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[7:])


def run_ktune(exp_file: Path, storage: Path) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ktune", "run", str(exp_file)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    exp_dir = storage / "orchestration"
    epochs, first_start, last_end = [], None, None
    for trial in exp_dir.glob("trial_*"):
        rows = [json.loads(x) for x in (trial / "result.json").read_text().splitlines()]
        epochs += [r["time_this_iter_s"] for r in rows]
        begin = rows[0]["timestamp"] - rows[0]["time_this_iter_s"]
        first_start = begin if first_start is None else min(first_start, begin)
        last_end = rows[-1]["timestamp"] if last_end is None else max(last_end, rows[-1]["timestamp"])
    return {"wall": wall, "epochs": epochs, "trial_span": last_end - first_start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 short trials instead of 8")
    args = parser.parse_args()
    n, epochs, size = (4, 2, 6000) if args.quick else (8, 3, 20000)
    concurrency = 2
    with tempfile.TemporaryDirectory(prefix="ktune-bench-") as tmp:
        storage = Path(tmp) / "results"
        exp_file = Path(tmp) / "orchestration.yaml"
        exp_file.write_text(yaml.safe_dump(experiment(n, epochs, size, str(storage))))
        plain = run_plain(exp_file, n)
        ours = run_ktune(exp_file, storage)
    ideal = sum(plain["trials"]) / concurrency
    plain_epoch = statistics.median(plain["epochs"])
    ktune_epoch = statistics.median(ours["epochs"])
    result = {
        "trials": n, "epochs": epochs, "train_size": size, "concurrency": concurrency,
        "orchestration": {
            "ktune_wall_s": round(ours["wall"], 2),
            "ideal_s": round(ideal, 2),
            "ratio": round(ours["wall"] / ideal, 3),
            "target": 1.10,
            # where the rest goes: before the first epoch starts / after the last ends
            "trials_span_s": round(ours["trial_span"], 2),
            "outside_trials_s": round(ours["wall"] - ours["trial_span"], 2),
        },
        "wrapper": {
            "ktune_epoch_s": round(ktune_epoch, 3),
            "plain_epoch_s": round(plain_epoch, 3),
            "ratio": round(ktune_epoch / plain_epoch, 3),
            "target": 1.05,
        },
        "machine": f"{os.cpu_count()} cores",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "orchestration.json").write_text(json.dumps(result, indent=2) + "\n")
    o, w = result["orchestration"], result["wrapper"]
    print(f"orchestration: ktune {o['ktune_wall_s']}s / ideal {o['ideal_s']}s = {o['ratio']} "
          f"(target <= {o['target']}); trials span {o['trials_span_s']}s, "
          f"{o['outside_trials_s']}s outside trials")
    print(f"wrapper overhead: {w['ktune_epoch_s']}s / {w['plain_epoch_s']}s per epoch = "
          f"{w['ratio']} (target <= {w['target']})")


if __name__ == "__main__":
    main()
