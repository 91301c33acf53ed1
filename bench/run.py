"""Runs every benchmark one after another and writes the table in bench/README.md.

    .venv/bin/python bench/run.py [--quick] [--only NAME ...]     (make bench / make bench-quick)

Each benchmark is its own script (``bench/<name>.py [--quick]``) run in its own process,
alone on the machine (nothing else of ours runs beside it), and writes
``bench/results/<name>.json`` with a ``ratios`` list: ``{name, value, target, met}``.
This runner records the machine, prints every ratio with its target, writes
``bench/results/summary[-quick].json`` and replaces that mode's table between the
markers in ``bench/README.md``. A quick run's per-benchmark files go to
``bench/results/quick/``; the full run's stay in ``bench/results/``. A missed target is a
result, not a failure: the exit status is
non-zero only when a benchmark itself failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"
# One table per mode: a quick run does not replace the full run's table.
MARKERS = {
    False: ("<!-- bench:full:start -->", "<!-- bench:full:end -->"),
    True: ("<!-- bench:quick:start -->", "<!-- bench:quick:end -->"),
}
# In the order they run: the cheap ones first, so a quick look needs no full run.
BENCHMARKS = [
    "tokenization",
    "agnews_quality",
    "orchestration",
    "memory",
    "search_efficiency",
    "kerastuner",
    "scaling",
]


def machine() -> dict:
    """What the numbers ran on: CPU model, cores, memory, GPU (none here), load at start."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory_gib = round(kb / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": "none",
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def describe(m: dict) -> str:
    return (
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, no GPU, Python "
        f"{m['python']}; load average {m['load_average_at_start']} at start"
    )


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(summary: dict) -> str:
    mode = "make bench-quick" if summary["quick"] else "make bench"
    lines = [
        f"Latest run: `{mode}` on {summary['date']}, {summary['total_minutes']} min in all, "
        f"on {describe(summary['machine'])}.",
        "",
        "| benchmark | measure | ratio | target | met | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in summary["benchmarks"].items():
        minutes = f"{entry['seconds'] / 60:.1f}"
        if entry["status"] != "ok":
            lines.append(f"| {name} | {entry['status']} | - | - | - | {minutes} |")
            continue
        for r in entry["ratios"]:
            met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
            target = r.get("target") or (f"ideal {r['ideal']}" if r.get("ideal") else "-")
            lines.append(
                f"| {name} | {r['name']} | {fmt(r['value'])} | {target} | {met} | {minutes} |"
            )
            minutes = ""
    return "\n".join(lines)


def update_readme(text: str, quick: bool) -> None:
    start, end = MARKERS[quick]
    readme = README.read_text()
    if start not in readme or end not in readme:
        title = "Latest quick run" if quick else "Latest full run"
        readme = readme.rstrip("\n") + f"\n\n### {title}\n\n{start}\n{end}\n"
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick mode")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    args = parser.parse_args()
    names = args.only or BENCHMARKS
    summary = {
        "quick": args.quick,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "benchmarks": {},
    }
    print(f"benchmarks on {describe(summary['machine'])}", flush=True)
    started = time.perf_counter()
    for name in names:
        print(f"\n== {name}{' (quick)' if args.quick else ''} ==", flush=True)
        out = RESULTS / f"{name}.json"
        # A quick run's numbers go to results/quick/; the full run's file stays as it was.
        full = out.read_bytes() if args.quick and out.exists() else None
        before = out.stat().st_mtime if out.exists() else None
        t0 = time.perf_counter()
        cmd = [sys.executable, str(BENCH / f"{name}.py")] + (["--quick"] if args.quick else [])
        code = subprocess.call(cmd, cwd=BENCH.parent)
        seconds = time.perf_counter() - t0
        entry = {"seconds": round(seconds, 1), "status": "ok", "ratios": []}
        if code != 0:
            entry["status"] = f"failed (exit {code})"
        elif not out.exists() or out.stat().st_mtime == before:
            entry["status"] = "failed (no results written)"
        else:
            entry["ratios"] = json.loads(out.read_text()).get("ratios", [])
        if args.quick and out.exists() and out.stat().st_mtime != before:
            (RESULTS / "quick").mkdir(parents=True, exist_ok=True)
            out.replace(RESULTS / "quick" / out.name)
            if full is not None:
                out.write_bytes(full)
        summary["benchmarks"][name] = entry
    summary["total_minutes"] = round((time.perf_counter() - started) / 60, 1)

    print("\n== summary ==")
    for name, entry in summary["benchmarks"].items():
        if entry["status"] != "ok":
            print(f"{name}: {entry['status']}")
        for r in entry["ratios"]:
            met = {True: "met", False: "NOT met", None: "no target"}[r.get("met")]
            target = r.get("target") or (f"ideal {r['ideal']}" if r.get("ideal") else "")
            print(f"{name}: {r['name']} = {fmt(r['value'])} (target {target or '-'}: {met})")
    print(f"total {summary['total_minutes']} min")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.only:  # a partial run does not replace the table of a whole one
        (RESULTS / ("summary-quick.json" if args.quick else "summary.json")).write_text(
            json.dumps(summary, indent=2) + "\n"
        )
        update_readme(table(summary), args.quick)
        print(f"wrote {README.relative_to(BENCH.parent)}")
    failed = [n for n, e in summary["benchmarks"].items() if e["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
