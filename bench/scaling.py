"""Scaling: how ktune's wall time grows with the number of trials and with the data size.

Fixed configuration (FIFO, every trial the same model as in bench/orchestration.py, so
no search randomness matters), 1-epoch trials, 2 at a time, 1 CPU each, through
`ktune run` in a subprocess; all runs join one local Ray head that the benchmark starts
once (`--address`): the growth is the search's, not Ray's start-up (each run still
starts its driver, TensorFlow, data preparation and trial workers).

1. Trials: num_samples N, 2N, 4N on the base data; growth factors wall(2N)/wall(N) and
   wall(4N)/wall(N) against the ideal 2x and 4x (work grows linearly with trials).
2. Data: 1x, 4x, 16x the base train_size with N trials; growth factors against the
   ideal 4x and 16x (an epoch's work grows linearly with the texts).

Full mode: N = 8 (8, 16, 32 trials) and 1x/4x/16x of 1,250 texts (16x = 20,000, the
builtin default); quick mode: N = 2 (2, 4, 8) and 1x/4x. The 1x run is shared by
both sweeps. Beside each wall time: the time before the first trial starts (Python,
data, vocabulary, joining Ray, worker start-up), the span in which trials run, the time after the
last report (results, test evaluation of the best trial, disconnecting) and the median
seconds per trial (Ray's time_total_s: build, one epoch, checkpoint, report). The
growth of the trials' span is printed too: it is what the ideal describes, while the
wall time also carries the fixed start-up.

    .venv/bin/python bench/scaling.py [--quick]

Writes bench/results/scaling.json. Exit 0 when it ran, 1 when a run or a trial failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ktune_runs import REPO, KtuneRun, run_ktune, shared_ray

RESULTS = REPO / "bench" / "results"
# One fixed configuration (bench/orchestration.py's): every trial trains the same model.
CONFIG = {
    "embed_dim": 32,
    "heads": 2,
    "ff_dim": 32,
    "learning_rate": 1e-3,
    "warmup": 0.1,
    "dropout": 0.1,
    "num_blocks": 1,
    "weight_decay": 0.01,
}
BASE_TRAIN_SIZE = 1250
# trials N and data multiples per mode
PLANS = {"quick": (2, (1, 4)), "full": (8, (1, 4, 16))}


def experiment(name: str, trials: int, train_size: int, storage: str) -> dict:
    return {
        "name": name,
        "family": "transformer",
        "data": {"source": "builtin", "train_size": train_size, "test_size": 200},
        "search": {
            "num_samples": trials,
            "max_concurrent_trials": 2,
            "scheduler": "fifo",
            "space": dict(CONFIG),
        },
        "training": {"epochs": 1, "batch_size": 64, "maxlen": 48, "vocab_size": 10000},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": storage,
        "export": {"enabled": False},
    }


def measure(run: KtuneRun, trials: int, train_size: int) -> dict:
    per_trial = [e.iter_s for e in run.epochs]  # one epoch per trial
    return {
        "trials": trials,
        "train_size": train_size,
        "wall_s": round(run.wall_s, 2),
        "before_first_trial_s": round(run.first_trial_start_s, 2),
        "trials_span_s": round(run.last_report_s - run.first_trial_start_s, 2),
        "after_last_report_s": round(run.wall_s - run.last_report_s, 2),
        "median_trial_s": round(statistics.median(per_trial), 2),
        "trial_seconds": round(run.trial_seconds, 1),
    }


def growth(runs: list[dict], base: dict, ideal: list[float], label: str) -> list[dict]:
    out = []
    for run, x in zip(runs, ideal):
        out.append(
            {
                "name": f"wall time growth, {label(run)} / {label(base)}",
                "value": round(run["wall_s"] / base["wall_s"], 3),
                "target": None,
                "ideal": x,
                "met": None,
                "trials_span_growth": round(run["trials_span_s"] / base["trials_span_s"], 3),
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2/4/8 trials, 1x/4x data")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    n, multiples = PLANS[mode]
    machine = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"
    started = time.time()
    plan = [(f"trials{n * k}", n * k, BASE_TRAIN_SIZE) for k in (1, 2, 4)]
    plan += [(f"data{m}x", n, BASE_TRAIN_SIZE * m) for m in multiples[1:]]
    measured = {}
    with tempfile.TemporaryDirectory(prefix="ktune-bench-scaling-") as tmp, shared_ray() as address:
        for name, trials, size in plan:
            exp = experiment(name, trials, size, str(Path(tmp) / "results"))
            try:
                run = run_ktune(exp, Path(tmp), address)
            except RuntimeError as e:
                print(f"FAILED: {e}", file=sys.stderr)
                return 1
            m = measured[name] = measure(run, trials, size)
            print(
                f"{trials:3d} trials x {size:6d} texts: wall {m['wall_s']:6.1f}s = "
                f"{m['before_first_trial_s']:.1f}s before the first trial + "
                f"{m['trials_span_s']:.1f}s of trials + {m['after_last_report_s']:.1f}s after; "
                f"median trial {m['median_trial_s']}s",
                flush=True,
            )
    total = time.time() - started

    base = measured[f"trials{n}"]
    by_trials = [measured[f"trials{n * k}"] for k in (2, 4)]
    by_data = [measured[f"data{m}x"] for m in multiples[1:]]
    ratios = growth(by_trials, base, [2.0, 4.0], lambda r: f"{r['trials']} trials")
    ratios += growth(
        by_data,
        base,
        [float(m) for m in multiples[1:]],
        lambda r: f"{r['train_size'] // BASE_TRAIN_SIZE}x data",
    )
    result = {
        "benchmark": "scaling",
        "quick": args.quick,
        "machine": machine,
        "ratios": ratios,
        "settings": {
            "base_train_size": BASE_TRAIN_SIZE,
            "trials": [n, 2 * n, 4 * n],
            "data_multiples": list(multiples),
            "trials_in_data_sweep": n,
            "epochs": 1,
            "max_concurrent_trials": 2,
            "cpu_per_trial": 1,
            "scheduler": "fifo",
            "config": CONFIG,
        },
        "runs": list(measured.values()),
        "benchmark_wall_s": round(total, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nscaling ({mode}"
        f"{': 2/4/8 trials, 1x/4x data, not the full sweep' if args.quick else ''}; "
        f"base {BASE_TRAIN_SIZE} texts, 1 epoch per trial; {machine})"
    )
    for r in ratios:
        print(
            f"{r['name']}: {r['value']}x (ideal {r['ideal']}x); trials' span alone "
            f"{r['trials_span_growth']}x"
        )
    print(f"benchmark wall time {total:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
