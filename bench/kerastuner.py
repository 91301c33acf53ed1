"""ktune against KerasTuner on the same work: time to the same accuracy, accuracy in the same time.

The same Transformer family, search space (embed_dim, heads among its divisors, log
learning rate, warmup; ff_dim, dropout, blocks and weight decay fixed), data, train /
validation split and epoch budget, searched three ways, one after the other, each in its
own fresh process, on two data sets (the builtin data, and the real AG News sample
`../shared/data/ag_news_sample.csv` split as `examples/agnews_sample.yaml` splits it),
each with three seeds (the searches' seeds; the data and its split stay fixed):

- ktune: ``python -m ktune run exp.yaml``: Optuna TPE + ASHA (grace 1, reduction 2,
  ktune's defaults) in Ray Tune, 2 trials at a time with 1 CPU (1 TF thread) each;
- KerasTuner ``Hyperband(max_epochs=E, factor=3)`` and ``BayesianOptimization
  (max_trials=N, num_initial_points=ktune's TPE start-up count)`` (bench/kerastuner_side.py):
  its documented API on Keras 3 with the same architecture, one trial at a time with every
  core (TensorFlow's default threads), as its users run it. ``--quick`` runs Hyperband only.

Every epoch's ``val_accuracy`` is stamped with the wall time since its process was
launched (start-up counts: a user waits for it too). ktune's come from each trial's
``result.json`` (Ray's whole-second ``timestamp`` and the float ``time_total_s``,
aligned per trial), KerasTuner's from a Keras callback.

Target accuracy, per pair: the lower of the two best validation accuracies. Both tools
reach it, so both times are finite, and it is the same accuracy for both: "time to the
same best accuracy". (A fixed fraction of the better best, e.g. 98%, can be missed by one
side altogether with this few trials; it is reported too, as ``near_best``, with
``null`` for a side that never got there.) Ratio = ktune's time to target / KerasTuner's
(target <= 0.5). Also the best accuracy each had within the shorter of the two wall
times. Epoch budgets are matched: ktune ``num_samples x epochs`` (an upper bound; ASHA
stops trials early) against Hyperband's budget (KerasTuner's own bracket arithmetic) and
``max_trials x epochs``; the epochs actually trained are printed beside them. Per data
set and KerasTuner tuner, the result is the geometric mean of the three seeds' ratios,
with the lowest, the highest and the geometric standard deviation.

    .venv/bin/python bench/kerastuner.py [--quick] [--data builtin|agnews ...]

Writes bench/results/kerastuner.json. Exits 0 when it ran (a missed target is a result),
1 when a side failed. Timings on a shared machine are noisy: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# ktune's TPE random start-up trials; BayesianOptimization gets as many random points.
from ktune.search_spaces.base import tpe_startup_trials

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ktune_runs import agnews_example, geomean, spread

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SIDE = REPO / "bench" / "kerastuner_side.py"
SEEDS = (0, 1, 2)
DATASETS = ("builtin", "agnews")

# The searched knobs of the issue over the quickstart's ranges; the rest fixed, same for both.
SPACE = {
    "embed_dim": [32, 64],
    "heads": [1, 2, 4],
    "learning_rate": {"low": 1.0e-5, "high": 1.0e-2, "log": True},
    "warmup": {"low": 0.0, "high": 0.2},
    "ff_dim": 32,
    "dropout": 0.1,
    "num_blocks": 1,
    "weight_decay": 0.01,
}


@dataclass
class Mode:
    train_size: int
    maxlen: int
    vocab_size: int
    epochs: int
    ktune_trials: int  # num_samples: num_samples x epochs ~ Hyperband's budget
    hyperband_iterations: int
    bayesian_trials: int
    tuners: tuple = ("hyperband", "bayesian")


# Quick: Hyperband only (KerasTuner's tutorial tuner): 3 searches do not fit in 2.5 minutes
# on 2 cores. Hyperband(max_epochs=3, factor=3) trains 11 epochs in 6 fits; ktune 4 x 3.
QUICK = Mode(
    train_size=2000,
    maxlen=32,
    vocab_size=5000,
    epochs=3,
    ktune_trials=4,
    hyperband_iterations=1,
    bayesian_trials=4,
    tuners=("hyperband",),
)
# Full: Hyperband(max_epochs=4, factor=3) trains 26 epochs in 10 fits; ktune and BO 7 x 4.
FULL = Mode(
    train_size=4000,
    maxlen=32,
    vocab_size=5000,
    epochs=4,
    ktune_trials=7,
    hyperband_iterations=1,
    bayesian_trials=7,
)


def hyperband_budget(max_epochs: int, factor: int, iterations: int) -> tuple[int, int]:
    """(model fits, epochs trained) of KerasTuner's HyperbandOracle: its own arithmetic.

    A fit promoted to the next round resumes from the weights of the round before, so it
    trains only the difference in epochs.
    """
    brackets, e = 0, float(max_epochs)
    while e >= 1:
        e, brackets = e / factor, brackets + 1
    end_size = math.ceil(1 + math.log(max_epochs, factor))
    fits = epochs = 0
    for b in range(brackets - 1, -1, -1):
        done = 0
        for r in range(b + 1):
            size = math.ceil(end_size / (b + 1) * factor ** (b - r))
            upto = math.ceil(max_epochs / factor ** (b - r))
            fits, epochs, done = fits + size, epochs + size * (upto - done), upto
    return fits * iterations, epochs * iterations


def agnews_data() -> tuple[dict, dict]:
    """The AG News example's data section (path made absolute) and its text sizes."""
    exp = agnews_example()
    return exp["data"], {k: exp["training"][k] for k in ("maxlen", "vocab_size")}


def experiment(mode: Mode, storage: str, dataset: str = "builtin", seed: int = 0) -> dict:
    if dataset == "agnews":
        data, sizes = agnews_data()
    else:
        data = {
            "source": "builtin",
            "train_size": mode.train_size,
            "test_size": 500,
            "validation_fraction": 0.1,
            "seed": 0,
        }
        sizes = {"maxlen": mode.maxlen, "vocab_size": mode.vocab_size}
    return {
        "name": f"kerastuner-{dataset}-seed{seed}",
        "family": "transformer",
        "data": data,
        "search": {
            "num_samples": mode.ktune_trials,
            "metric": "val_accuracy",
            "mode": "max",
            "scheduler": "asha",
            "sampler": "tpe",
            "grace_period": 1,
            "reduction_factor": 2,
            "max_concurrent_trials": 2,
            "seed": seed,
            "space": dict(SPACE),
        },
        "training": {"epochs": mode.epochs, "batch_size": 64, **sizes},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": storage,
        "export": {"enabled": False},
    }


@dataclass
class Run:
    """One search: every epoch as (seconds since launch, val_accuracy, fit), and its profile."""

    name: str
    wall_s: float
    epochs: list = field(default_factory=list)  # (t, val_accuracy, fit id), sorted by t
    first_epoch_s: list = field(default_factory=list)  # per fit: start of fit -> 1st epoch
    steady_epoch_s: list = field(default_factory=list)  # later epochs, one by one
    fits: int = 0
    stopped_early: int | None = None
    startup_s: float | None = None  # launch -> first fit begins (ktune) / first epoch (KT)
    failed: list | None = None  # ktune: trials that ended in an error, with its last line
    phases: dict = field(default_factory=dict)  # start-up milestones, seconds since launch
    summary: dict = field(default_factory=dict)  # KerasTuner's own view of its search

    @property
    def curve(self) -> list[tuple[float, float]]:
        return [(t, a) for t, a, _ in self.epochs]

    def best(self, within: float = math.inf) -> float | None:
        seen = [a for t, a in self.curve if t <= within]
        return max(seen) if seen else None

    def time_to(self, accuracy: float) -> float | None:
        return next((t for t, a in self.curve if a >= accuracy - 1e-9), None)

    def profile(self) -> dict:
        def med(xs):
            return round(statistics.median(xs), 2) if xs else None

        return {
            "wall_s": round(self.wall_s, 2),
            "fits": self.fits,
            "epochs_trained": len(self.epochs),
            "stopped_early": self.stopped_early,
            "failed": self.failed,
            "startup_s": None if self.startup_s is None else round(self.startup_s, 2),
            "first_epoch_at_s": round(self.epochs[0][0], 2) if self.epochs else None,
            "median_first_epoch_of_fit_s": med(self.first_epoch_s),
            "median_later_epoch_s": med(self.steady_epoch_s),
            "best_val_accuracy": self.best(),
            "time_to_best_s": round(self.time_to(self.best()), 2) if self.epochs else None,
            "phases": self.phases,
        }


def launch(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Runs ``cmd``; (launch time, wall seconds). Exits 1 with the log's tail on failure.

    Each output line is logged with the seconds since launch: the start-up profile.
    """
    start = time.time()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**env, "PYTHONUNBUFFERED": "1"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        errors="replace",
    )
    with log.open("w") as f:
        for line in proc.stdout:
            f.write(f"{time.time() - start:8.2f} {line}")
    rc = proc.wait()
    wall = time.time() - start
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        print(f"FAILED ({rc}): {' '.join(cmd)}\n{tail}", file=sys.stderr)
        sys.exit(1)
    return start, wall


def logged_at(log: Path, marker: str) -> float | None:
    """Seconds since launch of the first log line containing ``marker``."""
    for line in log.read_text(errors="replace").splitlines():
        if marker in line:
            return float(line[:8])
    return None


def trial_epochs(trial_dir: Path, launched: float) -> tuple[list[tuple[float, float]], list]:
    """A Ray trial's epochs as (seconds since launch, val_accuracy), and its rows.

    ``timestamp`` is whole seconds; ``time_total_s`` is exact since the trial began, so the
    trial's start lies in every row's [timestamp - total, timestamp + 1 - total): intersect.
    """
    result = trial_dir / "result.json"
    rows = [json.loads(x) for x in result.read_text().splitlines() if x] if result.exists() else []
    if not rows:  # the trial failed before its first epoch (its error.txt says why)
        return [], rows
    lo = max(r["timestamp"] - r["time_total_s"] for r in rows)
    hi = min(r["timestamp"] + 1 - r["time_total_s"] for r in rows)
    begin = (lo + hi) / 2 if lo <= hi else lo
    return [(begin + r["time_total_s"] - launched, r["val_accuracy"]) for r in rows], rows


def run_ktune(exp_file: Path, exp_dir: Path, epochs: int, logs: Path) -> Run:
    env = {**os.environ}
    env.pop("TF_USE_LEGACY_KERAS", None)  # ktune sets its own (Keras 2)
    launched, wall = launch(
        [sys.executable, "-m", "ktune", "run", str(exp_file)], env, logs / "ktune.log"
    )
    run = Run("ktune", wall, stopped_early=0, failed=[])
    starts = []
    for trial in sorted(exp_dir.glob("trial_*")):
        points, rows = trial_epochs(trial, launched)
        if (trial / "error.txt").exists():
            lines = (trial / "error.txt").read_text(errors="replace").strip().splitlines()
            run.failed.append(f"{trial.name}: {lines[-1] if lines else '?'}"[:300])
        if not rows:
            continue
        run.fits += 1
        run.stopped_early += rows[-1]["training_iteration"] < epochs
        run.epochs += [(t, a, trial.name) for t, a in points]
        run.first_epoch_s.append(rows[0]["time_this_iter_s"])
        run.steady_epoch_s += [r["time_this_iter_s"] for r in rows[1:]]
        starts.append(points[0][0] - rows[0]["time_total_s"])
    run.epochs.sort()
    run.startup_s = min(starts) if starts else None
    log = logs / "ktune.log"
    # Where ktune's start-up goes: driver imports + data + vocabulary, then Ray, then trials.
    run.phases = {
        "data_loaded_s": logged_at(log, "ktune: data:"),
        "ray_started_s": logged_at(log, "Ray dashboard"),
        "search_started_s": logged_at(log, "trials 0/"),
        "first_trial_began_s": None if run.startup_s is None else round(run.startup_s, 2),
    }
    return run


def run_kerastuner(exp_file: Path, tuner: str, mode: Mode, out: Path, logs: Path) -> Run:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "0"}  # Keras 3, as KerasTuner 1.4 needs
    cmd = [
        sys.executable,
        str(SIDE),
        str(exp_file),
        tuner,
        str(out),
        "--hyperband-iterations",
        str(mode.hyperband_iterations),
        "--max-trials",
        str(mode.bayesian_trials),
        "--initial-points",
        str(tpe_startup_trials(mode.ktune_trials)),
    ]
    launched, wall = launch(cmd, env, logs / f"{tuner}.log")
    rows = [json.loads(x) for x in (out / "epochs.jsonl").read_text().splitlines() if x]
    run = Run(tuner, wall)
    previous, fit = 0.0, None
    for r in rows:
        t = r["t"] - launched
        run.epochs.append((t, r["val_accuracy"], r["execution"]))
        if r["execution"] != fit:  # a new fit (a Hyperband promotion starts past epoch 1)
            run.fits += 1
            if fit is not None:  # its first epoch carries the trial set-up, build, tracing
                run.first_epoch_s.append(t - previous)
            fit = r["execution"]
        else:
            run.steady_epoch_s.append(t - previous)
        previous = t
    run.startup_s = run.epochs[0][0] if run.epochs else None
    run.summary = json.loads((out / "summary.json").read_text())
    # Before the search: TensorFlow + Keras 3 + KerasTuner imports, data and vocabulary.
    run.phases = {"search_started_s": round(run.summary["search_started"] - launched, 2)}
    return run


def compare(ours: Run, theirs: Run) -> dict:
    target = min(ours.best(), theirs.best())
    t_ours, t_theirs = ours.time_to(target), theirs.time_to(target)
    same_time = min(ours.wall_s, theirs.wall_s)
    near = 0.98 * max(ours.best(), theirs.best())

    def rnd(x):
        return None if x is None else round(x, 2)

    ours_began = ours.phases.get("first_trial_began_s")
    theirs_began = theirs.phases.get("search_started_s")
    search_only = None
    if ours_began is not None and theirs_began is not None:
        a, b = t_ours - ours_began, t_theirs - theirs_began
        search_only = {"ktune_s": rnd(a), "kerastuner_s": rnd(b), "ratio": round(a / b, 3)}
    return {
        "target_accuracy": round(target, 4),
        "ktune_time_to_target_s": rnd(t_ours),
        "kerastuner_time_to_target_s": rnd(t_theirs),
        "ratio": round(t_ours / t_theirs, 3),
        "same_wall_time_s": rnd(same_time),
        "ktune_best_within_same_time": ours.best(same_time),
        "kerastuner_best_within_same_time": theirs.best(same_time),
        "near_best": {
            "accuracy": round(near, 4),
            "ktune_time_s": rnd(ours.time_to(near)),
            "kerastuner_time_s": rnd(theirs.time_to(near)),
        },
        # Why: how many epochs each trained to get there (search efficiency), and the times
        # counted from the first trial's start (ktune) / the search's start (KerasTuner),
        # i.e. without the start-up of each process (ktune's includes Ray and its workers).
        "ktune_epochs_to_target": sum(t <= t_ours for t, _ in ours.curve),
        "kerastuner_epochs_to_target": sum(t <= t_theirs for t, _ in theirs.curve),
        "search_only": search_only,
    }


def budgets_of(mode: Mode, runs: dict) -> dict:
    hb_fits, hb_epochs = hyperband_budget(mode.epochs, 3, mode.hyperband_iterations)
    budgets = {
        "ktune": {"trials": mode.ktune_trials, "epoch_budget": mode.ktune_trials * mode.epochs},
        "hyperband": {
            "fits": hb_fits,
            "epoch_budget": hb_epochs,
            "max_epochs": mode.epochs,
            "factor": 3,
            "hyperband_iterations": mode.hyperband_iterations,
        },
        "bayesian": {
            "trials": mode.bayesian_trials,
            "epoch_budget": mode.bayesian_trials * mode.epochs,
            "num_initial_points": tpe_startup_trials(mode.ktune_trials),
        },
    }
    for name, run in runs.items():
        budgets[name]["epochs_trained"] = len(run.epochs)
    return budgets


def one_seed(mode: Mode, dataset: str, seed: int, work: Path) -> dict:
    """ktune and each KerasTuner tuner on one data set with one seed."""
    folder = work / f"{dataset}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    exp = experiment(mode, str(folder / "results"), dataset, seed)
    exp_file = folder / "experiment.yaml"
    exp_file.write_text(yaml.safe_dump(exp, sort_keys=False))
    exp_dir = folder / "results" / exp["name"]
    runs = {"ktune": run_ktune(exp_file, exp_dir, mode.epochs, folder)}
    for tuner in mode.tuners:
        runs[tuner] = run_kerastuner(exp_file, tuner, mode, folder / tuner, folder)
    budgets = budgets_of(mode, runs)
    comparisons = {t: compare(runs["ktune"], runs[t]) for t in mode.tuners}
    print(f"{dataset}, seed {seed}:", flush=True)
    for name, run in runs.items():
        p, b = run.profile(), budgets[name]
        print(
            f"  {name:9s} wall {p['wall_s']:6.1f}s  epochs {b['epochs_trained']:3d} of budget "
            f"{b['epoch_budget']:3d} in {p['fits']:2d} fits  best {p['best_val_accuracy']:.4f} "
            f"at {p['time_to_best_s']}s"
        )
        started = ", ".join(f"{k[:-2].replace('_', ' ')} {v}s" for k, v in p["phases"].items())
        print(
            f"            start-up: {started}; first epoch at {p['first_epoch_at_s']}s; "
            f"epoch 1 of a fit {p['median_first_epoch_of_fit_s']}s, later epochs "
            f"{p['median_later_epoch_s']}s (medians)"
            + (f"; stopped early {p['stopped_early']}" if p["stopped_early"] is not None else "")
            + (f"; FAILED trials {len(p['failed'])}" if p["failed"] else ""),
            flush=True,
        )
    for t, c in comparisons.items():
        so = c["search_only"] or {"ktune_s": None, "kerastuner_s": None, "ratio": None}
        print(
            f"  vs {t}: to val_accuracy {c['target_accuracy']:.4f}: ktune "
            f"{c['ktune_time_to_target_s']}s ({c['ktune_epochs_to_target']} epochs) / KerasTuner "
            f"{c['kerastuner_time_to_target_s']}s ({c['kerastuner_epochs_to_target']} epochs) = "
            f"{c['ratio']}; without start-up {so['ratio']}; best within "
            f"{c['same_wall_time_s']}s: ktune {c['ktune_best_within_same_time']:.4f}, "
            f"KerasTuner {c['kerastuner_best_within_same_time']:.4f}",
            flush=True,
        )
    return {
        "seed": seed,
        "budgets": budgets,
        "runs": {name: run.profile() for name, run in runs.items()},
        "comparisons": comparisons,
        "kerastuner_best": {t: runs[t].summary for t in mode.tuners},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer trials")
    parser.add_argument(
        "--data", nargs="+", choices=DATASETS, default=list(DATASETS), help="data sets to run"
    )
    parser.add_argument("--keep", type=Path, help="keep every run's files in this folder")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    if "agnews" in args.data and not Path(agnews_data()[0]["train"]).is_file():
        print("FAILED: the AG News sample (../shared/data/ag_news_sample.csv) is missing")
        sys.exit(1)
    load_before = os.getloadavg()
    began = time.time()
    datasets: dict = {}
    with tempfile.TemporaryDirectory(prefix="ktune-bench-kt-") as tmp:
        work = args.keep or Path(tmp)
        for dataset in args.data:
            seeds = [one_seed(mode, dataset, seed, work) for seed in SEEDS]
            aggregate = {}
            for t in mode.tuners:
                values = [s["comparisons"][t]["ratio"] for s in seeds]
                without = [
                    s["comparisons"][t]["search_only"]["ratio"]
                    for s in seeds
                    if s["comparisons"][t]["search_only"]
                ]
                aggregate[t] = {
                    "ratio": round(geomean(values), 3),
                    "spread": spread(values),
                    "without_startup": round(geomean(without), 3) if without else None,
                }
            datasets[dataset] = {"aggregate": aggregate, "seeds": seeds}
    total = time.time() - began

    ratios = []
    for dataset, d in datasets.items():
        for t, a in d["aggregate"].items():
            sp = a["spread"]
            ratios += [
                {
                    "name": f"{dataset}: time to target, ktune / {t} (geometric mean of "
                    f"{len(SEEDS)} seeds; seeds {sp['min']}-{sp['max']}, geometric sd "
                    f"{sp['geo_sd']})",
                    "value": a["ratio"],
                    "target": "<= 0.5",
                    "met": a["ratio"] <= 0.5,
                },
                {
                    "name": f"{dataset}: same without either side's start-up, ktune / {t}",
                    "value": a["without_startup"],
                    "target": None,
                    "met": None,
                },
            ]
    result = {
        "benchmark": "kerastuner",
        "quick": args.quick,
        "machine": f"{os.cpu_count()} cores, shared; load average "
        f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after",
        "ratios": ratios,
        "settings": {
            "datasets": args.data,
            "seeds": list(SEEDS),
            "builtin_train_size": mode.train_size,
            "validation_fraction": 0.1,
            "builtin_maxlen": mode.maxlen,
            "builtin_vocab_size": mode.vocab_size,
            "agnews_sizes": agnews_data()[1],
            "epochs": mode.epochs,
            "batch_size": 64,
            "space": SPACE,
            "ktune": "TPE + ASHA (grace 1, reduction 2), 2 trials at a time, 1 CPU each",
            "kerastuner": "one trial at a time, every core (TF default threads), Keras 3",
        },
        "datasets": datasets,
        "total_wall_s": round(total, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kerastuner.json").write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nkerastuner bench ({'quick' if args.quick else 'full'}): seeds {list(SEEDS)}, up "
        f"to {mode.epochs} epochs; {result['machine']}"
    )
    for r in ratios:
        target = f"target {r['target']}: {'met' if r['met'] else 'MISSED'}" if r["target"] else ""
        print(f"  {r['name']} = {r['value']} {target}")
    print(f"total {total:.0f}s; wrote {RESULTS / 'kerastuner.json'}")


if __name__ == "__main__":
    main()
