"""Memory: peak RSS of the driver and of each trial worker, and whether a reused worker's
memory grows from trial to trial.

A long search (32 short trials, 2 at a time, Ray reusing the 2 trial workers) through
``ktune.run`` on the builtin data. A
driver-side Tune callback reads each worker's ``/proc/<pid>/status`` (``VmRSS``, and the
peak ``VmHWM``) when each of its trials completes. Target: a worker's RSS after its last
trial <= 1.15x its RSS after its fourth (Keras sessions cleared, no graph or dataset
kept between trials).

    .venv/bin/python bench/memory.py [--quick]      # quick: 12 trials

Writes bench/results/memory.json (bench/run.py moves a quick run's to results/quick/).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TARGET = 1.15


def _status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # MiB
    except OSError:
        pass
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=None)
    args = parser.parse_args()
    trials = args.trials or (12 if args.quick else 32)

    import ray.tune

    import ktune

    samples: list[dict] = []

    class RssProbe(ray.tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            pid = (trial.last_result or {}).get("pid")
            if pid:
                samples.append(
                    {"trial": trial.trial_id, "pid": pid, "time": time.time(), **_status(int(pid))}
                )

    storage = tempfile.mkdtemp(prefix="ktune-bench-memory-")
    experiment = {
        "name": "memory",
        "family": "transformer",
        "data": {"source": "builtin", "train_size": 1500, "test_size": 200, "seed": 0},
        "search": {
            "num_samples": trials,
            "max_concurrent_trials": 2,
            "scheduler": "fifo",
            "seed": 0,
            "space": {"embed_dim": [16, 32], "heads": [1, 2], "ff_dim": [32], "num_blocks": [1]},
        },
        "training": {"epochs": 1, "batch_size": 64, "maxlen": 32, "vocab_size": 2000},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": storage,
        "export": {"enabled": False},
    }
    started = time.time()
    result = ktune.run(experiment, callbacks=[RssProbe()])
    wall = time.time() - started
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux KiB)

    per_worker: dict = {}
    for s in samples:
        per_worker.setdefault(s["pid"], []).append(s)
    workers = []
    for pid, seen in per_worker.items():
        rss = [s.get("VmRSS") for s in seen if s.get("VmRSS")]
        row = {
            "pid": pid,
            "trials": len(seen),
            "rss_mib": rss,
            "peak_mib": max((s.get("VmHWM", 0) for s in seen), default=None),
        }
        if len(rss) >= 5:
            row["growth"] = rss[-1] / rss[3]
        workers.append(row)
    growths = [w["growth"] for w in workers if "growth" in w]
    worst = max(growths) if growths else None
    out = {
        "trials": trials,
        "completed": len(result.trials),
        "wall_s": round(wall, 1),
        "driver_peak_mib": round(driver_peak, 1),
        "workers": workers,
        "growth_last_over_fourth": worst,
        "target": TARGET,
        "met": worst is not None and worst <= TARGET,
        "ratios": [
            {
                "name": f"worker RSS after its last trial / after its fourth ({trials} trials, "
                f"{len(workers)} reused workers)",
                "value": round(worst, 3) if worst is not None else None,
                "target": f"<= {TARGET}",
                "met": worst is not None and worst <= TARGET,
            }
        ],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(out, indent=2))
    print(
        f"{trials} trials in {len(workers)} workers, {wall:.0f} s; driver peak RSS "
        f"{driver_peak:.0f} MiB"
    )
    for w in workers:
        print(
            f"  worker {w['pid']}: {w['trials']} trials, RSS MiB "
            f"{' '.join(f'{r:.0f}' for r in w['rss_mib'])}; peak {w['peak_mib']:.0f}"
            + (f"; last/fourth {w['growth']:.3f}" if "growth" in w else "")
        )
    if worst is not None:
        print(
            f"worker RSS after its last trial / after its fourth: {worst:.3f} "
            f"(target <= {TARGET}) {'met' if out['met'] else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
