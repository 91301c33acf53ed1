"""One `ktune run` in a subprocess, and the timeline it leaves, for the benchmarks.

`run_ktune` writes an experiment file, runs `python -m ktune run` on it in a fresh process
(Ray started and stopped by ktune, as a user sees it) and reads every reported epoch of
every trial back from the experiment folder as a time since the subprocess started.

Where the time of a report comes from: Ray's `result.json` has `timestamp` in whole
seconds and `time_total_s` (float) relative to the trial's own start, so neither places
a report precisely on the wall clock. Ray's TensorBoard logger writes every result into
the trial's `events.out.tfevents.*` with the driver's `time.time()` as a double: the
moment the search knew the result. That is the time used; when a trial has no event
file, the report is placed at the trial's start (the intersection of every row's
`[timestamp - time_total_s, timestamp + 1 - time_total_s)`) plus `time_total_s`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

REPO = Path(__file__).resolve().parents[1]
AGNEWS_EXAMPLE = REPO / "examples" / "agnews_sample.yaml"


def agnews_example() -> dict:
    """examples/agnews_sample.yaml as a dict, its data path made absolute (the benchmarks
    run it from other folders)."""
    exp = yaml.safe_load(AGNEWS_EXAMPLE.read_text())
    exp["data"]["train"] = str((AGNEWS_EXAMPLE.parent / exp["data"]["train"]).resolve())
    return exp


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def spread(values: list[float]) -> dict:
    """Lowest, highest and the geometric standard deviation of positive ratios."""
    logs = [math.log(v) for v in values]
    sd = math.exp(statistics.stdev(logs)) if len(logs) > 1 else 1.0
    return {"min": round(min(values), 3), "max": round(max(values), 3), "geo_sd": round(sd, 3)}


@dataclass
class Epoch:
    """One reported epoch: when the driver got it (s since the subprocess started)."""

    trial: str
    epoch: int
    at_s: float
    iter_s: float  # Ray's time_this_iter_s: the epoch, its checkpoint and report
    val_accuracy: float


@dataclass
class KtuneRun:
    wall_s: float
    epochs: list[Epoch]
    trials: list[dict]  # results.csv rows
    trial_spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # start, end

    @property
    def first_trial_start_s(self) -> float:
        return min(s for s, _ in self.trial_spans.values())

    @property
    def last_report_s(self) -> float:
        return max(e for _, e in self.trial_spans.values())

    @property
    def trial_seconds(self) -> float:
        """Seconds spent inside trials, summed over trials (Ray's time_total_s)."""
        return sum(e.iter_s for e in self.epochs)

    @property
    def best_val_accuracy(self) -> float:
        return max(e.val_accuracy for e in self.epochs)


# A Ray head kept up by a small driver process for a series of runs (see shared_ray).
_HOLDER = r"""
import sys, ray
ctx = ray.init(num_cpus=int(sys.argv[1]), runtime_env={"env_vars": {
    "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}})
print(ctx.address_info["gcs_address"], flush=True)
sys.stdin.read()  # until the benchmark closes stdin; ray.shutdown at exit stops the head
"""


@contextlib.contextmanager
def shared_ray(num_cpus: int | None = None) -> Iterator[str]:
    """One local Ray head for a series of `ktune run --address ADDR`; yields ADDR.

    A benchmark that compares many short searches (every one the same) pays Ray's
    start-up and shutdown once instead of per run; each run still starts its own driver,
    imports TensorFlow, prepares its data and starts its own trial workers.
    """
    # Its own Ray temp folder: a `ray.init()` elsewhere on the machine does not find and
    # join this head (Ray looks for running clusters under its default /tmp/ray).
    import secrets
    import shutil
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="kb-ray-", dir="/tmp")
    # Ray 2.60 protects the head with a token; the runs (children of this process) get it
    # through the environment, as `ktune run --address` users do.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in auth}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(num_cpus or os.cpu_count())],
        cwd=REPO,
        env={**os.environ, **auth, "RAY_TMPDIR": ray_tmp},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    os.environ.update(auth)
    try:
        address = holder.stdout.readline().strip()
        if not address:
            raise RuntimeError("the shared Ray head did not start")
        yield address
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_ktune(exp: dict, workdir: Path, address: str | None = None) -> KtuneRun:
    """Runs `exp` (a parsed experiment file; storage inside `workdir`) and reads it back.

    With `address`, the run joins that Ray (see `shared_ray`) instead of starting its own.

    Raises RuntimeError with the end of ktune's output when the run fails or a trial
    errored: a benchmark over failed trials would measure the failure.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    exp_file = workdir / f"{exp['name']}.yaml"
    exp_file.write_text(yaml.safe_dump(exp))
    log_file = workdir / f"{exp['name']}.log"
    with log_file.open("w") as log:
        start = time.time()
        cmd = [sys.executable, "-m", "ktune", "run", str(exp_file)]
        cmd += ["--address", address] if address else []
        rc = subprocess.run(
            cmd, check=False, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        ).returncode
        wall = time.time() - start
    exp_dir = Path(exp["storage"]) / exp["name"]
    if rc != 0:
        raise RuntimeError(f"ktune run {exp['name']} exited {rc}:\n{_tail(log_file)}")
    import csv

    with (exp_dir / "results.csv").open() as f:
        trials = list(csv.DictReader(f))
    errors = [t for t in trials if t.get("status") == "ERROR"]
    if errors:
        raise RuntimeError(
            f"ktune run {exp['name']}: {len(errors)} trial(s) failed, first: "
            f"{errors[0]['trial']}: {errors[0].get('error')}\n{_tail(log_file)}"
        )
    epochs, spans = [], {}
    for trial_dir in sorted(exp_dir.glob("trial_*")):
        rows = read_results(trial_dir)
        if not rows:
            continue
        times = report_times(trial_dir, rows)
        for row, at in zip(rows, times):
            epochs.append(
                Epoch(
                    trial_dir.name,
                    int(row["training_iteration"]),
                    at - start,
                    float(row["time_this_iter_s"]),
                    float(row["val_accuracy"]),
                )
            )
        spans[trial_dir.name] = (
            times[0] - float(rows[0]["time_this_iter_s"]) - start,
            times[-1] - start,
        )
    epochs.sort(key=lambda e: e.at_s)
    return KtuneRun(wall_s=wall, epochs=epochs, trials=trials, trial_spans=spans)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def read_results(trial_dir: Path) -> list[dict]:
    """Ray's result.json rows, one per training_iteration (the last row wins)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    by_iter = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_iter[int(row["training_iteration"])] = row
    return [by_iter[i] for i in sorted(by_iter)]


def report_times(trial_dir: Path, rows: list[dict]) -> list[float]:
    """Wall-clock time (epoch seconds) at which the driver got each row."""
    events = {}
    for path in sorted(trial_dir.glob("events.out.tfevents.*")):
        for wall_time, step, tag in _scalar_events(path):
            if tag.endswith("val_accuracy"):
                events[step] = wall_time  # the last write of a step wins, as for rows
    steps = [int(r["training_iteration"]) for r in rows]
    if all(s in events for s in steps):
        return [events[s] for s in steps]
    low = max(float(r["timestamp"]) - float(r["time_total_s"]) for r in rows)
    high = min(float(r["timestamp"]) + 1 - float(r["time_total_s"]) for r in rows)
    trial_start = (low + high) / 2 if low <= high else low
    return [trial_start + float(r["time_total_s"]) for r in rows]


# --- a minimal reader of TensorBoard event files (TFRecord of Event protos) -----------
# Event: 1 wall_time (double), 2 step (int64), 5 summary; Summary: 1 value (repeated);
# Value: 1 tag (string), 2 simple_value (float). Nothing else is needed here.


def _scalar_events(path: Path):
    data = path.read_bytes()
    i = 0
    while i + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, i)
        i += 12  # length, its CRC
        record = data[i : i + length]
        i += length + 4  # the record, its CRC
        fields = dict(_fields(record))
        if 5 not in fields or 1 not in fields:
            continue
        wall_time = struct.unpack("<d", fields[1])[0]
        step = fields.get(2, 0)
        for number, value in _fields(fields[5]):
            if number == 1:
                tag = dict(_fields(value)).get(1, b"").decode("utf-8", "replace")
                yield wall_time, step, tag


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            return
        yield number, value


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i
