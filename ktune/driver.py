"""The process that runs a search (its driver): who it is, and whether it still runs.

``ktune run`` and ``ktune resume`` write ``driver.json`` into the experiment folder when
the search starts (host, boot, pid and the process's start time) and mark it ended when
they return or raise. A driver killed outright (SIGKILL, out of memory, a lost machine)
never marks it, so ``ktune report`` tells a running search from a crashed one by asking
the system whether that process still runs: on the same machine it knows; on another
it cannot, and says so. ``ktune resume`` refuses an experiment whose driver still runs
(two drivers writing one folder would mix their state).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from ktune.experiment_dir import DRIVER_FILE, write_driver_file

__all__ = ["DRIVER_FILE", "write_driver", "driver_marked", "read_driver", "driver_state"]


def _boot_id() -> str | None:
    """This boot of the machine (Linux): a driver of an earlier boot is gone."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) of ``pid``, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    return (fields[0], fields[19]) if len(fields) > 19 else None


def identity() -> dict:
    """This process, as ``driver.json`` records it."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return {
        "host": socket.gethostname(),
        "boot": _boot_id(),
        "pid": pid,
        "process_start": stat[1] if stat else None,
        "time": time.time(),
    }


def write_driver(exp_dir: Path, command: str) -> dict:
    """``driver.json`` for this process, starting ``command`` (run or resume)."""
    info = {**identity(), "command": command, "ended": None}
    write_driver_file(exp_dir, info)
    return info


@contextlib.contextmanager
def driver_marked(exp_dir: Path, command: str, push=lambda: None) -> Iterator[dict]:
    """``driver.json`` written on entry and marked ended on exit, however the search
    ends short of a kill; ``push`` uploads the marked file (URI storage; the caller
    uploads the first with its own files). Marking is best effort: it never hides the
    search's own outcome."""
    info = write_driver(exp_dir, command)
    try:
        yield info
    except BaseException as e:  # what stopped it, for the report (re-raised as it is)
        info["error"] = (f"{type(e).__name__}: {e}".splitlines() or [""])[0][:300]
        raise
    finally:
        with contextlib.suppress(Exception):
            info["ended"] = time.time()
            write_driver_file(exp_dir, info)
            push()


def read_driver(exp_dir: Path) -> dict | None:
    """``driver.json`` of ``exp_dir``; None when there is none (or it cannot be read)."""
    try:
        info = json.loads((Path(exp_dir) / DRIVER_FILE).read_text(encoding="utf-8"))
        int(info["pid"]), float(info["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if isinstance(info, dict) else None


def driver_state(info: dict) -> str:
    """``ended`` (the search returned or raised), ``running``, ``gone`` (killed, or the
    machine restarted) or ``elsewhere`` (another machine: this one cannot tell)."""
    if info.get("ended"):
        return "ended"
    if info.get("host") != socket.gethostname():
        return "elsewhere"
    boot = _boot_id()
    if boot and info.get("boot") and boot != info["boot"]:
        return "gone"
    pid = int(info["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # another user's process of that number: /proc tells whether it is the driver
    except OSError:
        return "elsewhere"
    stat = _proc_stat(pid)
    if stat is None:
        return "running"  # no /proc (macOS): the pid runs, which is all this system says
    state, started = stat
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return "gone"
    if info.get("process_start") and str(info["process_start"]) != started:
        return "gone"  # the number now belongs to another process
    return "running"
