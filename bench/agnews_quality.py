"""Quality on real text: ktune's AG News example against TF-IDF + logistic regression.

The data is `../shared/data/ag_news_sample.csv` (3,800 real AG News texts), split as
`examples/agnews_sample.yaml` splits it: 20% held out for test (stratified, seed 0),
10% of the rest for validation. Both sides see the same three splits, read by ktune's
own loader, so the comparison is on the same 760 test texts.

- baseline: TF-IDF (unigrams and bigrams, sublinear term frequency) + scikit-learn's
  logistic regression, C chosen among 0.3 .. 100 on the validation split, trained on
  the training split (ktune's trials train on the same split and are chosen on the same
  validation split), then scored once on the test split;
- ktune: `ktune run examples/agnews_sample.yaml` in a subprocess, as a user runs it (its
  own Ray, its data, its search, its ensemble of the best configuration's seeds
  (`ensemble.seeds`), the test evaluation, the export); the test accuracy is the one in
  its best.json, and beside it the best trial's alone (the ensemble's first member);
- plain Ray Tune: right after each ktune run, the same search written by hand as a Ray
  Tune user would (`bench/plain_tune.py`: keras.io's Transformer text classifier in Keras
  3, Ray's Keras callback, OptunaSearch + ASHA), with the same seed, budget, shared
  ranges and splits;
- full mode only: the example again with search seeds 1 and 2 (one search's pick among
  its trials on 304 validation texts moves its test accuracy by a point or two, so one
  seed is not a measurement), each with its plain Ray Tune run.

Ratios: ktune's test accuracy / the baseline's (target >= 1.0; the example as it is,
search seed 0, and in full mode the mean over seeds 0-2) and ktune's wall time / 15
minutes (target <= 1.0); against plain Ray Tune, ktune's test accuracy / plain's (the
mean over the seeds run; target >= 1.0) and the wall times' ratio. All sides label the
same 760 texts, so a difference is judged paired (McNemar): of the texts exactly one
side gets right, how many each gets; a difference within two standard deviations of that
count is reported as a tie.

    .venv/bin/python bench/agnews_quality.py [--quick]

--quick: 6 trials of up to 4 epochs instead of the example's 12 of 6, one search.
Writes bench/results/agnews_quality.json. Exit 0 when it ran (a missed target is a
result), 1 when a run failed or the sample is missing.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ktune_runs import AGNEWS_EXAMPLE, REPO, agnews_example, run_ktune

RESULTS = REPO / "bench" / "results"
BUDGET_S = 15 * 60  # the bound for the example's whole search on 2 cores
C_GRID = (0.3, 1, 3, 10, 30, 100)
SEEDS = (0, 1, 2)  # search seeds of the full run; the example's own is 0


def baseline(exp: dict) -> dict:
    """TF-IDF + logistic regression on ktune's own splits of the example's data."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ktune.config import parse_config
    from ktune.data import load_data

    started = time.perf_counter()
    data = load_data(parse_config(exp).data)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    train = vectorizer.fit_transform(list(data.train_texts))
    val, test = (
        vectorizer.transform(list(data.val_texts)),
        vectorizer.transform(list(data.test_texts)),
    )
    by_c = {}
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=3000).fit(train, data.train_labels)
        by_c[c] = (model.score(val, data.val_labels), model)
    best_c = max(C_GRID, key=lambda c: (by_c[c][0], -c))  # ties: the stronger regulariser
    val_accuracy, model = by_c[best_c]
    correct = model.predict(test) == data.test_labels
    return {
        "test_accuracy": round(float(correct.mean()), 4),
        "test_correct": correct.tolist(),
        "test_texts": list(data.test_texts),
        "class_names": list(data.class_names),
        "test_labels": data.test_labels.tolist(),
        # the same splits for the plain Ray Tune side (bench/plain_tune.py)
        "splits": {
            f"{part}_{kind}": (
                list(getattr(data, f"{part}_texts"))
                if kind == "texts"
                else getattr(data, f"{part}_labels").tolist()
            )
            for part in ("train", "val", "test")
            for kind in ("texts", "labels")
        },
        "val_accuracy": round(float(val_accuracy), 4),
        "C": best_c,
        "val_accuracy_by_C": {str(c): round(float(v), 4) for c, (v, _) in by_c.items()},
        "texts": {
            "train": len(data.train_texts),
            "validation": len(data.val_texts),
            "test": len(data.test_texts),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def ktune_side(exp: dict, workdir: Path, base: dict) -> dict:
    """One `ktune run` of ``exp``; its export labels the baseline's test texts."""
    from ktune.export import predict

    run = run_ktune(exp, workdir)
    exp_dir = Path(exp["storage"]) / exp["name"]
    best = json.loads((exp_dir / "best.json").read_text())
    labels = [r["label"] for r in predict(exp_dir / "export", base["test_texts"])]
    names = base["class_names"]
    correct = [names[y] == label for y, label in zip(base["test_labels"], labels)]
    members = (best.get("ensemble") or {}).get("members") or []
    return {
        "test_correct": correct,
        "test_accuracy": round(float(best["test_accuracy"]), 4),
        # ensemble.seeds: the best trial alone, and each member alone
        "best_trial_test_accuracy": round(
            float(members[0]["test_accuracy"] if members else best["test_accuracy"]), 4
        ),
        "member_test_accuracy": [round(float(m["test_accuracy"]), 4) for m in members],
        "val_accuracy": round(float(best["metrics"]["val_accuracy"]), 4),
        "best_config": best.get("config"),
        "trials": len(run.trials),
        "epochs_trained": len(run.epochs),
        "wall_s": round(run.wall_s, 1),
    }


def plain_settings(exp: dict) -> dict:
    """The example's budget and shared ranges, for the plain Ray Tune side."""
    search, training, space = exp["search"], exp["training"], exp["search"]["space"]
    return {
        "seed": search["seed"],
        "num_samples": search["num_samples"],
        "max_concurrent_trials": search["max_concurrent_trials"],
        "grace_period": search["grace_period"],
        "reduction_factor": search["reduction_factor"],
        "epochs": training["epochs"],
        "batch_size": training["batch_size"],
        "maxlen": training["maxlen"],
        "vocab_size": training["vocab_size"],
        "space": {
            "embed_dim": space["embed_dim"],
            "heads": space["heads"],
            "ff_dim": space["ff_dim"],
            "dropout": [space["dropout"]["low"], space["dropout"]["high"]],
            "learning_rate": [space["learning_rate"]["low"], space["learning_rate"]["high"]],
        },
    }


def plain_tune_side(exp: dict, workdir: Path, base: dict) -> dict:
    """bench/plain_tune.py on the baseline's splits, in its own process: Keras 3 (a plain
    user's ``import keras``), not ktune's tf_keras, so none of ktune's environment."""
    splits, settings, out = (workdir / f"plain-{n}.json" for n in ("splits", "settings", "out"))
    splits.write_text(json.dumps(base["splits"]))
    settings.write_text(json.dumps(plain_settings(exp)))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "RAY_ADDRESS")}
    started = time.time()
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "plain_tune.py"),
            str(splits),
            str(settings),
            str(out),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/plain_tune.py failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["wall_s"] = round(time.time() - started, 1)  # as a user waits, like ktune's
    return result


def paired(a: list[bool], b: list[bool]) -> dict:
    """McNemar on the same texts: ``a_only`` right only for a, ``b_only`` only for b.
    Under no difference ``a_only - b_only`` has mean 0 and variance ``a_only + b_only``."""
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    z = (a_only - b_only) / math.sqrt(a_only + b_only) if a_only + b_only else 0.0
    return {"a_only": a_only, "b_only": b_only, "z": round(z, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 trials of 4 epochs, one search")
    args = parser.parse_args()
    exp = agnews_example()
    if not Path(exp["data"]["train"]).is_file():
        print(f"FAILED: {exp['data']['train']}: the AG News sample is missing", file=sys.stderr)
        return 1
    if args.quick:
        exp["search"]["num_samples"] = 6
        exp["training"]["epochs"] = 4
    machine = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"
    started = time.time()
    base = baseline(exp)
    print(
        f"baseline: TF-IDF 1-2 grams + logistic regression (C={base['C']}): test accuracy "
        f"{base['test_accuracy']:.4f} (validation {base['val_accuracy']:.4f}), "
        f"{base['seconds']}s",
        flush=True,
    )
    sides: dict[str, dict] = {}
    plain: dict[str, dict] = {}  # bench/plain_tune.py, one per ktune run
    with tempfile.TemporaryDirectory(prefix="ktune-bench-agnews-") as tmp:
        runs = {"ktune": exp}
        if not args.quick:
            for seed in SEEDS[1:]:
                again = copy.deepcopy(exp)
                again["name"] = f"agnews_sample_seed{seed}"
                again["search"]["seed"] = seed
                runs[f"seed{seed}"] = again
        for name, spec in runs.items():
            spec = copy.deepcopy(spec)
            spec["storage"] = str(Path(tmp) / "results")
            try:
                sides[name] = ktune_side(spec, Path(tmp), base)
                # the same search by hand in plain Ray Tune, right after, same seed
                plain[name] = plain_tune_side(spec, Path(tmp), base)
            except RuntimeError as e:
                print(f"FAILED: {e}", file=sys.stderr)
                return 1
            s, p = sides[name], plain[name]
            print(
                f"{name}: test accuracy {s['test_accuracy']:.4f} (best trial alone "
                f"{s['best_trial_test_accuracy']:.4f}; validation "
                f"{s['val_accuracy']:.4f}), {s['trials']} trials, {s['epochs_trained']} epochs, "
                f"wall {s['wall_s']}s; best config {s['best_config']}\n"
                f"  plain Ray Tune, same seed: test accuracy {p['test_accuracy']:.4f} "
                f"(validation {p['val_accuracy']:.4f}), {p['trials']} trials, "
                f"{p['epochs_trained']} epochs, wall {p['wall_s']}s; best config "
                f"{p['best_config']}",
                flush=True,
            )
    total = time.time() - started
    k, n = sides["ktune"], base["texts"]["test"]
    ratio = k["test_accuracy"] / base["test_accuracy"]
    mcnemar = paired(k["test_correct"], base.pop("test_correct"))
    against_plain = paired(k.pop("test_correct"), plain["ktune"]["test_correct"])
    for side in [*sides.values(), *plain.values()]:
        side.pop("test_correct", None)
    base.pop("splits")
    for key in ("test_texts", "class_names", "test_labels"):
        base.pop(key)
    verdict = (
        "a tie within the test split's noise (|z| < 2)"
        if abs(mcnemar["z"]) < 2
        else ("ktune better" if mcnemar["z"] > 0 else "baseline better")
    )
    ratios = [
        {
            "name": "test accuracy, ktune AG News example / TF-IDF + logistic regression",
            "value": round(ratio, 4),
            "target": ">= 1.0",
            "met": ratio >= 1.0,
        },
        {
            "name": "ktune example's wall time / 15 min",
            "value": round(k["wall_s"] / BUDGET_S, 3),
            "target": "<= 1.0",
            "met": k["wall_s"] <= BUDGET_S,
        },
    ]
    keys = list(sides)  # ktune's runs and, in the same order, plain Ray Tune's
    ours = sum(sides[x]["test_accuracy"] for x in keys) / len(keys)
    theirs = sum(plain[x]["test_accuracy"] for x in keys) / len(keys)
    seeds_named = "search seed 0" if len(keys) == 1 else f"mean of search seeds 0-{len(keys) - 1}"
    ratios += [
        {
            "name": f"test accuracy, ktune / the same search by hand in plain Ray Tune "
            f"({seeds_named}: {', '.join(str(plain[x]['test_accuracy']) for x in keys)})",
            "value": round(ours / theirs, 4),
            "target": ">= 1.0",
            "met": ours >= theirs,
        },
        {
            "name": f"wall time, ktune / plain Ray Tune ({seeds_named}; ktune's includes "
            f"ensemble.seeds and the export)",
            "value": round(
                sum(sides[x]["wall_s"] for x in keys) / sum(plain[x]["wall_s"] for x in keys), 3
            ),
            "target": None,
            "met": None,
        },
    ]
    if not args.quick:  # the full run: search seeds 1 and 2
        seeds = [k] + [sides[f"seed{seed}"] for seed in SEEDS[1:]]
        mean = ours  # the same runs, seeds 0-2
        ratios.insert(
            1,
            {
                "name": f"same, mean test accuracy of search seeds {SEEDS[0]}-{SEEDS[-1]} "
                f"({', '.join(str(s['test_accuracy']) for s in seeds)}) / baseline",
                "value": round(mean / base["test_accuracy"], 4),
                "target": ">= 1.0",
                "met": mean >= base["test_accuracy"],
            },
        )
        alone = sum(s["best_trial_test_accuracy"] for s in seeds) / len(seeds)
        ratios.append(
            {
                "name": f"same, best trial alone (without ensemble.seeds; "
                f"{', '.join(str(s['best_trial_test_accuracy']) for s in seeds)}) / baseline",
                "value": round(alone / base["test_accuracy"], 4),
                "target": None,
                "met": None,
            }
        )
    result = {
        "benchmark": "agnews_quality",
        "quick": args.quick,
        "machine": machine,
        "ratios": ratios,
        "baseline": base,
        "runs": sides,
        "plain_tune": plain,
        "paired": {**mcnemar, "note": "texts only ktune / only the baseline labels right"},
        "paired_plain_tune": {
            **against_plain,
            "note": "seed 0: texts only ktune / only plain Ray Tune labels right",
        },
        "verdict": verdict,
        "settings": {
            "example": str(AGNEWS_EXAMPLE.relative_to(REPO)),
            "num_samples": exp["search"]["num_samples"],
            "epochs": exp["training"]["epochs"],
        },
        "benchmark_wall_s": round(total, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "agnews_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nAG News sample, {n} test texts ({machine}):")
    for r in ratios:
        target = f"target {r['target']}, {'met' if r['met'] else 'missed'}" if r["target"] else ""
        print(f"  {r['name']}: {r['value']} {target}")
    difference = k["test_accuracy"] - base["test_accuracy"]
    print(
        f"  difference {difference:+.4f}: {verdict}; right only for ktune "
        f"{mcnemar['a_only']}, only for the baseline {mcnemar['b_only']} (z {mcnemar['z']})"
    )
    print(
        f"  against plain Ray Tune (seed 0): right only for ktune {against_plain['a_only']}, "
        f"only for plain Ray Tune {against_plain['b_only']} (z {against_plain['z']})"
    )
    print(f"benchmark wall time {total:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
