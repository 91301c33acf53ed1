"""GPU readiness: BERT training speed in float32, mixed precision and mixed precision + XLA,
and the GPU memory of two trials sharing one card, against the cap ktune sets.

Needs an NVIDIA GPU that both ``nvidia-smi`` and TensorFlow see (TensorFlow's CUDA
libraries: ``pip install 'tensorflow[and-cuda]==2.20.*'``). No network: the BERT models
are made locally, randomly initialized (speed needs no pretrained weights).

1. Speed: one trial of each BERT family (``tfhub_bert``, ``hf_bert``) at a BERT-small-like
   size (L-4, H-512, A-8; the makers' feed-forward is 2H) through a real ktune search
   (one fixed config, FIFO, export off, ``gpu: 1``), once per precision: float32 (TF's
   default, so TF32 matmuls on Ampere and later), ``training.mixed_precision: true``, and
   mixed precision + ``training.jit_compile: true`` (XLA). Examples per second from each
   epoch's training time (a Keras callback in the trial: epoch begin -> validation begin,
   so neither validation nor the per-epoch checkpoint counts), without the first epoch
   (build, tracing, XLA compilation); Ray's ``time_this_iter_s`` (the whole epoch with
   validation, checkpoint and report) is recorded beside it. Ratios: mixed / float32 and
   mixed + XLA / float32 (target at least 2x for mixed + XLA).
2. Memory: two trials at once on the one card (``resources.gpu: 0.5``,
   ``max_concurrent_trials: 2``). ktune caps each trial's TensorFlow allocator at its
   share of the card less room for the CUDA context (``plan_devices``; the explicit
   ``resources.gpu_memory_mb`` when set). A thread polls ``nvidia-smi
   --query-compute-apps=pid,used_memory`` every 0.2 s during the search and keeps each
   process's peak, matched to the trials by Ray's ``pid``. Target: each trial's peak,
   CUDA context included, <= its half of the card.

The benchmark's own process is ktune's driver: it tokenizes, and evaluates the best trial
on the test split, with TensorFlow, whose GPU memory grows as needed there
(``driver_devices``) instead of taking most of the card at its first op.

    .venv/bin/python bench/gpu.py                # on a GPU machine: about 5 minutes
    .venv/bin/python bench/gpu.py --cpu-smoke    # anywhere: the same path, tiny, on CPU

Without a GPU it prints one line and exits 0, writing nothing. ``--cpu-smoke`` runs the
same code on CPU with the tiniest models (the memory part with a pretend GPU in Ray, so
two half-GPU trials are scheduled together) and writes nothing to bench/results. On a GPU
it writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ktune  # noqa: F401  (first: sets TF_USE_LEGACY_KERAS before TensorFlow loads; light)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SPEED_TARGET = 2.0  # examples/s, mixed precision + XLA / float32
FAMILIES = ("tfhub_bert", "hf_bert")
MODES = {
    "float32": {},
    "mixed": {"mixed_precision": True},
    "mixed_xla": {"mixed_precision": True, "jit_compile": True},
}
MODE_NAMES = {"float32": "float32", "mixed": "mixed precision", "mixed_xla": "mixed + XLA"}


@dataclass(frozen=True)
class Size:
    layers: int
    hidden: int
    head_size: int
    maxlen: int
    batch_size: int
    train_size: int  # builtin texts before the validation split (a tenth)
    test_size: int
    epochs: int
    cpu: int  # per speed trial; the sharing trials take half each

    @property
    def heads(self) -> int:
        return self.hidden // self.head_size


# BERT-small-like; 16,000 texts (14,400 train) make an epoch of a few seconds on a GPU.
GPU_SIZE = Size(4, 512, 64, 128, 128, 16_000, 200, 3, 4)
# The makers' smallest; 2 epochs so the first-epoch exclusion runs too.
SMOKE_SIZE = Size(2, 32, 16, 32, 32, 400, 50, 2, 1)


def nvidia_smi(*query: str) -> list[list[str]] | None:
    """Rows of ``nvidia-smi QUERY --format=csv,noheader,nounits``; None when it fails."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return [[x.strip() for x in line.split(",")] for line in out.splitlines() if line.strip()]


def gpu_info() -> tuple[dict | None, str]:
    """The first GPU nvidia-smi lists, or None and why not."""
    if not shutil.which("nvidia-smi"):
        return None, "nvidia-smi not found"
    rows = nvidia_smi("--query-gpu=name,memory.total,driver_version")
    if not rows:
        return None, "nvidia-smi lists no GPU"
    name, total, driver = (rows[0] + ["", "", ""])[:3]
    try:
        total_mb = int(float(total))
    except ValueError:
        total_mb = None
    return {"name": name, "memory_total_mb": total_mb, "driver": driver, "count": len(rows)}, ""


class GpuMemoryPoller(threading.Thread):
    """Polls nvidia-smi every ``interval`` s: each process's peak and the card's peak (MiB)."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True, name="gpu-memory-poller")
        self.interval = interval
        self.per_pid: dict[int, int] = {}
        self.card_peak_mb: int | None = None
        self.polls = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for row in nvidia_smi("--query-compute-apps=pid,used_memory") or []:
                try:
                    pid, used = int(row[0]), int(float(row[1]))
                except (ValueError, IndexError):  # "[N/A]" where per-process use is hidden
                    continue
                self.per_pid[pid] = max(used, self.per_pid.get(pid, 0))
            card = nvidia_smi("--query-gpu=memory.used")
            if card:
                try:
                    used = int(float(card[0][0]))
                    self.card_peak_mb = max(used, self.card_peak_mb or 0)
                except (ValueError, IndexError):
                    pass
            self.polls += 1
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=15)


def make_fit_timer(out_dir: str, budget_s: float):
    """A Keras callback for every trial: per epoch, the training time (epoch begin ->
    validation begin) and the validation time, one JSON line each in ``out_dir``.

    A trial still training ``budget_s`` after it began is stopped at its next step (a
    timer thread sets ``stop_training``: no per-step hook, which would sync every step),
    and its cut epoch is marked ``over_budget``: a pathological configuration (an XLA
    recompilation every step) costs minutes, not the machine's whole lease.
    """
    import tf_keras as keras

    class FitTimer(keras.callbacks.Callback):
        def __init__(self, folder: str, budget_s: float):
            super().__init__()
            self.folder, self.budget_s = folder, budget_s

        def on_train_begin(self, logs=None):
            self._fired = threading.Event()

            def stop():
                self._fired.set()
                self.model.stop_training = True

            self._timer = threading.Timer(self.budget_s, stop)
            self._timer.daemon = True
            self._timer.start()

        def on_train_end(self, logs=None):
            self._timer.cancel()

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch, self._t0, self._t1 = epoch, time.perf_counter(), None

        def on_test_begin(self, logs=None):
            self._t1 = time.perf_counter()
            self._cut = self._fired.is_set()

        def on_test_end(self, logs=None):
            import ray.tune

            t1 = self._t1 if self._t1 is not None else time.perf_counter()
            row = {
                "trial_id": ray.tune.get_context().get_trial_id(),
                "pid": os.getpid(),
                "epoch": self._epoch,
                "train_s": t1 - self._t0,
                "val_s": time.perf_counter() - t1,
                "over_budget": bool(getattr(self, "_cut", False)),
            }
            with open(Path(self.folder, f"{os.getpid()}.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")

    return FitTimer(out_dir, budget_s)


def make_models(root: Path, size: Size) -> dict:
    """Both families' models at ``size``, randomly initialized, and the ``model:`` sections."""
    from ktune.testing.hf_bert import make_tiny_hf_bert
    from ktune.testing.tfhub_bert import TEMPLATE, make_tiny_bert

    shape = [(size.layers, size.hidden, size.heads)]
    hub_root, hf_root = root / "tfhub-bert", root / "hf-bert"
    for _ in make_tiny_bert(hub_root, shape):
        pass
    for _ in make_tiny_hf_bert(hf_root, shape):
        pass
    return {
        "tfhub_bert": {
            "preprocess": str(hub_root / "preprocess"),
            "encoder": str(hub_root / TEMPLATE),
        },
        "hf_bert": {
            "name": f"{hf_root}/bert_uncased_L-{{L}}_H-{{H}}_A-{{A}}",
            "tokenizer": str(hf_root),
        },
    }


def experiment(
    name: str, family: str, model: dict, size: Size, mode: str, storage: str, *, gpu: float
) -> dict:
    sharing = 0 < gpu < 1
    return {
        "name": name,
        "family": family,
        "model": model,
        "data": {
            "source": "builtin",
            "train_size": size.train_size,
            "test_size": size.test_size,
            "seed": 0,
        },
        "search": {
            "num_samples": 2 if sharing else 1,
            "max_concurrent_trials": 2 if sharing else 1,
            "scheduler": "fifo",
            "seed": 0,
            # single values: every trial trains the same model
            "space": {
                "embed_dim": size.hidden,
                "layers": size.layers,
                "head_size": size.head_size,
                "trainable": True,
                "learning_rate": 3e-5,
                "warmup": 0.1,
                "dropout": 0.1,
                "weight_decay": 0.01,
            },
        },
        "training": {
            # sharing: the memory peak comes in the first epoch; 2 are enough
            "epochs": min(size.epochs, 2) if sharing else size.epochs,
            "batch_size": size.batch_size,
            "maxlen": size.maxlen,
            **MODES[mode],
        },
        "resources": {"cpu": max(1, size.cpu // 2) if sharing else size.cpu, "gpu": gpu},
        "storage": storage,
        "export": {"enabled": False},
    }


def one_line_error(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def run_search(raw: dict, timer_dir: Path, budget_s: float) -> dict:
    """One ktune search (ktune's own ``run_search``, as ``ktune.run`` calls it, plus the
    timing callback); each trial's epochs read back from Ray's and the callback's files."""
    from ktune.config import parse_config
    from ktune.experiment import run_search as ktune_search

    timer_dir.mkdir(parents=True, exist_ok=True)
    cfg = parse_config(raw)
    started = time.perf_counter()
    error = None
    try:
        ktune_search(
            cfg, export=False, callbacks=[make_fit_timer(str(timer_dir), budget_s)], progress=False
        )
    except Exception as e:  # noqa: BLE001 - a failed configuration is a result; go on
        error = one_line_error(e)
    wall = time.perf_counter() - started
    timed: dict[str, list[dict]] = {}
    for path in timer_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            timed.setdefault(row["trial_id"], []).append(row)
    trials = []
    for trial in sorted((Path(raw["storage"]) / raw["name"]).glob("trial_*")):
        result = trial / "result.json"
        rows = [json.loads(x) for x in result.read_text().splitlines()] if result.exists() else []
        trial_id = rows[0]["trial_id"] if rows else None
        epochs = sorted(timed.get(trial_id, []), key=lambda r: r["epoch"])
        entry = {
            "trial": trial.name,
            "pid": rows[0]["pid"] if rows else None,
            "ray_iter_s": [r["time_this_iter_s"] for r in rows],
            # the trial's span on the wall clock (Ray's timestamps: whole seconds)
            "span": [rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"]]
            if rows
            else None,
            # an epoch cut short by the budget is no measure of speed
            "train_s": [r["train_s"] for r in epochs if not r.get("over_budget")],
            "val_s": [r["val_s"] for r in epochs if not r.get("over_budget")],
        }
        if any(r.get("over_budget") for r in epochs):
            entry["error"] = f"stopped after the {budget_s:.0f} s budget per trial"
            entry["ray_iter_s"] = entry["ray_iter_s"][: len(entry["train_s"])]
        failed = trial / "error.txt"
        if failed.exists():
            lines = [x for x in failed.read_text().splitlines() if x.strip()]
            entry["error"] = lines[-1][:300] if lines else "failed"
        trials.append(entry)
    return {"wall_s": round(wall, 1), "error": error, "trials": trials}


def speed_row(family: str, mode: str, run: dict, n_train: int) -> dict:
    trial = run["trials"][0] if run["trials"] else {}
    row = {"family": family, "mode": mode, "wall_s": run["wall_s"], "n_train": n_train}
    error = run["error"] or trial.get("error")
    # Without the first epoch (build, tracing, XLA compilation).
    if len(trial.get("train_s", [])) < 2:
        row["error"] = error or "no epoch after the first was timed"
        if trial.get("train_s"):
            row["first_epoch_train_s"] = round(trial["train_s"][0], 2)
        return row
    train = statistics.median(trial["train_s"][1:])
    row.update(
        {
            "first_epoch_train_s": round(trial["train_s"][0], 2),
            "train_s": [round(x, 3) for x in trial["train_s"]],
            "ray_iter_s": [round(x, 3) for x in trial["ray_iter_s"]],
            "examples_per_s": round(n_train / train, 1),
            "examples_per_s_ray_epoch": round(
                n_train / statistics.median(trial["ray_iter_s"][1:]), 1
            )
            if len(trial["ray_iter_s"]) > 1
            else None,
        }
    )
    if error:
        row["error"] = error
    return row


def speed_ratios(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per family: mixed / float32 and mixed + XLA / float32 (examples/s)."""
    ratios, out = [], []
    for family in FAMILIES:
        by_mode = {r["mode"]: r.get("examples_per_s") for r in rows if r["family"] == family}
        base = by_mode.get("float32")
        for mode, target in (("mixed", None), ("mixed_xla", SPEED_TARGET)):
            if mode not in by_mode:
                continue
            value = by_mode[mode] / base if base and by_mode[mode] else None
            met = None if target is None or value is None else value >= target
            if target is not None and value is None:
                met = False
            ratios.append(
                {
                    "name": f"{family}: examples/s, {MODE_NAMES[mode]} / float32",
                    "value": round(value, 3) if value is not None else None,
                    "target": f">= {target}" if target else None,
                    "met": met,
                }
            )
            out.append({"family": family, "mode": mode, "ratio": value})
    return ratios, out


def memory_rows(run: dict, poller: GpuMemoryPoller, cap_mb: int | None) -> tuple[list, list]:
    """Each sharing trial's peak (nvidia-smi, by pid: CUDA context included) against its
    share of the card (``cap_mb``: half the card's memory)."""
    rows, ratios = [], []
    pids = {t["pid"] for t in run["trials"]}
    for i, trial in enumerate(run["trials"], 1):
        peak = poller.per_pid.get(trial["pid"]) if trial["pid"] else None
        value = peak / cap_mb if peak is not None and cap_mb else None
        row = {"trial": trial["trial"], "pid": trial["pid"], "peak_mb": peak, "cap_mb": cap_mb}
        if "error" in trial:
            row["error"] = trial["error"]
        rows.append(row)
        ratios.append(
            {
                "name": f"two trials on one GPU (gpu 0.5): trial {i} peak memory / its half",
                "value": round(value, 3) if value is not None else None,
                "target": "<= 1.0",
                "met": None if value is None else value <= 1.0,
            }
        )
    spans = [t["span"] for t in run["trials"] if t.get("span")]
    if len(spans) == 2:  # both at once, or the cap was never put to the test
        overlap = min(e for _, e in spans) - max(b for b, _ in spans)
        rows.append({"overlap_s": round(max(0.0, overlap), 1)})
    # nvidia-smi in a container may list host pids that match no trial's
    others = {p: m for p, m in poller.per_pid.items() if p not in pids}
    if others:
        rows.append({"unmatched_pids_peak_mb": others})
    return rows, ratios


def fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def print_tables(out: dict) -> None:
    print("\nspeed: one trial, examples/s from training time per epoch after the first")
    print("(ex/s epoch: from Ray's time_this_iter_s, validation and checkpoint included)")
    head = f"{'family':<11} {'precision':<16} {'1st epoch s':>11} {'ex/s train':>11} "
    print(head + f"{'ex/s epoch':>11} {'vs float32':>10}  wall s")
    ratios = {(r["family"], r["mode"]): r["ratio"] for r in out["speed_ratios"]}
    for r in out["speed"]:
        vs = ratios.get((r["family"], r["mode"]))
        vs_text = "1" if r["mode"] == "float32" and "examples_per_s" in r else fmt(vs, 2)
        print(
            f"{r['family']:<11} {MODE_NAMES[r['mode']]:<16} "
            f"{fmt(r.get('first_epoch_train_s'), 1):>11} {fmt(r.get('examples_per_s')):>11} "
            f"{fmt(r.get('examples_per_s_ray_epoch')):>11} {vs_text:>10}  {r['wall_s']:.0f}"
            + (f"  ({r['error']})" if r.get("error") else "")
        )
    mem = out["memory"]
    print(
        f"\nmemory: two trials at once on one GPU (gpu 0.5 each), TensorFlow cap "
        f"{fmt(mem['cap_mb'])} MiB, share {fmt(mem['share_mb'])} MiB each; "
        f"card peak {fmt(mem['card_peak_mb'])} MiB of {fmt(mem['card_total_mb'])}; "
        f"{mem['polls']} polls; wall {mem['wall_s']:.0f} s"
        + (f"  ({mem['error']})" if mem.get("error") else "")
    )
    for r in mem["trials"]:
        if "overlap_s" in r:
            print(f"  the two trials ran at the same time for about {r['overlap_s']:.0f} s")
            continue
        if "unmatched_pids_peak_mb" in r:
            print(f"  processes matching no trial (pid: peak MiB): {r['unmatched_pids_peak_mb']}")
            continue
        peak = r["peak_mb"]
        ok = "-" if peak is None or not r["cap_mb"] else ("yes" if peak <= r["cap_mb"] else "NO")
        print(
            f"  {r['trial']} pid {r['pid']}: peak {fmt(peak)} MiB, share {fmt(r['cap_mb'])} MiB, "
            f"within its share: {ok}" + (f"  ({r['error']})" if r.get("error") else "")
        )
    print()
    for r in out["ratios"]:
        met = {True: "met", False: "MISSED", None: "no target"}[r["met"]]
        if r["value"] is None and r["met"] is None:
            met = "not measured"
        target = r["target"] or "-"
        print(f"{r['name']}: {fmt(r['value'], 3)} (target {target}) {met}")


def start_ray(smoke: bool) -> None:
    """One local Ray for every search here, started as ktune starts its own; in smoke
    mode with a pretend GPU, so Ray schedules two half-GPU trials together."""
    import ray

    from ktune._keras_env import WORKER_ENV

    ray.init(
        address="local",
        num_gpus=1 if smoke else None,
        include_dashboard=False,
        runtime_env={"env_vars": dict(WORKER_ENV)},
        log_to_driver=False,
        logging_level=logging.WARNING,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="the same path on CPU, tiny; writes nothing"
    )
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--trial-budget",
        type=float,
        default=120,
        metavar="S",
        help="stop a trial still training after S seconds, marked as such (default 120)",
    )
    args = parser.parse_args()
    smoke = args.cpu_smoke
    modes = ["float32", *[m for m in args.modes if m != "float32"]]  # the ratios' base

    gpu, why = gpu_info()
    if gpu is None and not smoke:
        print(f"no GPU visible: {why}; run on a GPU machine (or --cpu-smoke to test the plumbing)")
        return 0
    size = SMOKE_SIZE if smoke else GPU_SIZE
    started = time.perf_counter()

    import tensorflow as tf

    tf_gpus = tf.config.list_physical_devices("GPU")
    if not smoke and not tf_gpus:
        print(
            f"nvidia-smi sees {gpu['name']} but TensorFlow {tf.__version__} sees no GPU "
            "(its CUDA libraries: pip install 'tensorflow[and-cuda]==2.20.*'); nothing measured"
        )
        return 1

    from ktune.config import parse_config
    from ktune.data import load_data
    from ktune.trainables.devices import plan_devices

    tmp = Path(tempfile.mkdtemp(prefix="ktune-bench-gpu-"))
    os.environ.setdefault("KTUNE_CACHE_DIR", str(tmp / "cache"))  # hf_bert's token cache
    try:
        print(f"making models L-{size.layers} H-{size.hidden} A-{size.heads} in {tmp}", flush=True)
        models = make_models(tmp / "models", size)
        print(f"models made in {time.perf_counter() - started:.0f} s", flush=True)
        start_ray(smoke)
        speed = []
        for family in args.families:
            for mode in modes:
                name = f"{family}-{mode}"
                raw = experiment(
                    name,
                    family,
                    models[family],
                    size,
                    mode,
                    str(tmp / "runs"),
                    gpu=0 if smoke else 1,
                )
                n_train = len(load_data(parse_config(raw).data).train_labels)
                run = run_search(raw, tmp / "timers" / name, args.trial_budget)
                row = speed_row(family, mode, run, n_train)
                speed.append(row)
                print(
                    f"{family} {MODE_NAMES[mode]}: {fmt(row.get('examples_per_s'))} examples/s"
                    f" ({run['wall_s']:.0f} s)" + (f"  {row['error']}" if row.get("error") else ""),
                    flush=True,
                )
        ratios, ratio_rows = speed_ratios(speed)

        # Memory: two half-GPU trials of the first family at once, float32.
        family = args.families[0]
        raw = experiment(
            f"{family}-sharing", family, models[family], size, "float32", str(tmp / "runs"), gpu=0.5
        )
        total = gpu["memory_total_mb"] if gpu else None
        cap = plan_devices(
            raw["resources"]["cpu"], 0.5, visible_gpus=1, total_memory_mb=total
        ).memory_limit_mb
        poller = GpuMemoryPoller()
        poller.start()
        run = run_search(raw, tmp / "timers" / "sharing", args.trial_budget)
        poller.stop()
        share = int(total * 0.5) if total else None  # what each may hold, context included
        mem_rows, mem_ratios = memory_rows(run, poller, share)
        print(f"two trials sharing the GPU: done ({run['wall_s']:.0f} s)", flush=True)

        import ray

        ray.shutdown()
        out = {
            "smoke": smoke,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": {
                "gpu": gpu,
                "tensorflow": tf.__version__,
                "tensorflow_gpus": len(tf_gpus),
                "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),
                "driver_gpu": "memory growth (ktune.trainables.devices.driver_devices)",
                "cores": os.cpu_count(),
                "python": platform.python_version(),
            },
            "size": asdict(size),
            "speed": speed,
            "speed_ratios": ratio_rows,
            "memory": {
                "family": family,
                "cap_mb": cap,  # TensorFlow's allocator cap, without the CUDA context
                "share_mb": share,
                "card_total_mb": total,
                "card_peak_mb": poller.card_peak_mb,
                "polls": poller.polls,
                "wall_s": run["wall_s"],
                "error": run["error"],
                "trials": mem_rows,
            },
            "total_s": round(time.perf_counter() - started, 1),
            "ratios": ratios + mem_ratios,
        }
        print_tables(out)
        print(f"total {out['total_s']:.0f} s")
        if smoke:
            print("cpu smoke: nothing written (float32 / mixed / XLA speeds on CPU mean nothing)")
        else:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "gpu.json").write_text(json.dumps(out, indent=2) + "\n")
            print(f"wrote {(RESULTS / 'gpu.json').relative_to(REPO)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
