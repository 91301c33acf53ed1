"""The process that runs a search (its driver): who it is, and whether it still runs.

``ktune run`` and ``ktune resume`` write ``driver.json`` into the experiment folder when
the search starts (host, boot, pid and the process's start time) and mark it ended when
they return or raise. A driver killed outright (SIGKILL, out of memory, a lost machine)
never marks it, so ``ktune report`` tells a running search from a crashed one by asking
the system whether that process still runs. On another machine (a laptop reading a
cluster's bucket) the system cannot say, so a running driver also rewrites the file every
``HEARTBEAT_S`` seconds (``alive``; uploaded on URI storage): a driver silent for
``SILENT_AFTER`` heartbeats (at least ``SILENT_MIN_S``) reads as stopped there.
``ktune resume`` refuses an experiment whose driver still runs, or, on another machine,
still beats (two drivers writing one folder would mix their state).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

from ktune.errors import ExperimentError
from ktune.experiment_dir import BEST_FILE, DRIVER_FILE, read_experiment, write_driver_file
from ktune.tables import format_duration

__all__ = [
    "DRIVER_FILE",
    "HEARTBEAT_S",
    "write_driver",
    "driver_marked",
    "read_driver",
    "driver_state",
    "last_alive",
    "running_elsewhere",
    "silent_after",
    "CLAIM_FILE",
    "live_driver",
    "read_finished",
    "refuse_while_running",
    "claimed",
    "holds_results",
]

HEARTBEAT_S = 60.0  # a running driver rewrites driver.json this often
SILENT_AFTER = 5  # heartbeats missed before another machine reads the driver as stopped
SILENT_MIN_S = 300.0  # ... and never less than this (clocks of two machines differ)


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


def write_driver(exp_dir: Path, command: str, heartbeat_s: float = HEARTBEAT_S) -> dict:
    """``driver.json`` for this process, starting ``command`` (run or resume)."""
    info = {**identity(), "command": command, "ended": None, "heartbeat_s": heartbeat_s}
    write_driver_file(exp_dir, info)
    return info


@contextlib.contextmanager
def driver_marked(
    exp_dir: Path, command: str, push=lambda: None, heartbeat_s: float = HEARTBEAT_S
) -> Iterator[dict]:
    """``driver.json`` written on entry, rewritten every ``heartbeat_s`` seconds with the
    time (``alive``) while the search runs, and marked ended on exit, however the search
    ends short of a kill; ``push`` uploads the file after each write but the first (URI
    storage; the caller uploads the first with its own files). Best effort: it never
    hides the search's own outcome, and no beat is written after the end is."""
    info = write_driver(exp_dir, command, heartbeat_s)
    lock, stop = threading.Lock(), threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            with lock:  # the end waits for a beat being written (and uploaded)
                if stop.is_set():
                    return
                with contextlib.suppress(Exception):
                    info["alive"] = time.time()
                    write_driver_file(exp_dir, info)
                    push()

    threading.Thread(target=beat, name="ktune-driver-heartbeat", daemon=True).start()
    try:
        yield info
    except BaseException as e:  # what stopped it, for the report (re-raised as it is)
        text = str(e).strip()  # a Ctrl+C outside Tune's loop has no message
        error = f"{type(e).__name__}: {text}" if text else type(e).__name__
        info["error"] = error.splitlines()[0][:300]
        raise
    finally:
        stop.set()
        with lock, contextlib.suppress(Exception):
            info["ended"] = time.time()
            write_driver_file(exp_dir, info)
            push()


def read_driver(exp_dir: Path) -> dict | None:
    """``driver.json`` of ``exp_dir``; None when there is none (or it cannot be read)."""
    return _read_identity(Path(exp_dir) / DRIVER_FILE)


def _read_identity(path: Path) -> dict | None:
    """A process's :func:`identity` written to ``path`` (driver.json, a claim), or None."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        int(info["pid"]), float(info["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if isinstance(info, dict) else None


def last_alive(info: dict) -> float:
    """When the driver last wrote driver.json (its start, or its latest heartbeat)."""
    try:
        alive = float(info.get("alive") or 0)
    except (TypeError, ValueError):
        alive = 0.0
    return max(float(info["time"]), alive)


def silent_after(info: dict) -> float:
    """Seconds without a heartbeat after which the driver reads as stopped (0: its
    driver.json has no heartbeats, an older ktune's, so it never does)."""
    try:
        every = float(info.get("heartbeat_s") or 0)
    except (TypeError, ValueError):
        return 0.0
    return max(SILENT_MIN_S, SILENT_AFTER * every) if every > 0 else 0.0


def running_elsewhere(info: dict) -> str:
    """``running on HOST (ktune run, pid N; alive 30s ago)``: another machine's driver
    whose heartbeat is current, as the report and a refused resume name it."""
    ago = format_duration(time.time() - last_alive(info))
    command, pid = info.get("command", "run"), info["pid"]
    return f"running on {info.get('host')} (ktune {command}, pid {pid}; alive {ago} ago)"


def _silent(info: dict) -> bool:
    """A driver of another machine that has missed its heartbeats: stopped there (or cut
    off from the storage)."""
    after = silent_after(info)
    return after > 0 and time.time() - last_alive(info) > after


def driver_state(info: dict) -> str:
    """``ended`` (the search returned or raised), ``running``, ``gone`` (killed, or the
    machine restarted), ``elsewhere`` (another machine, its heartbeat current, or no
    heartbeat to tell) or ``silent`` (another machine, its heartbeats missed)."""
    if info.get("ended"):
        return "ended"
    if info.get("host") != socket.gethostname():
        return "silent" if _silent(info) else "elsewhere"
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
        return "silent" if _silent(info) else "elsewhere"
    stat = _proc_stat(pid)
    if stat is None:
        return "running"  # no /proc (macOS): the pid runs, which is all this system says
    state, started = stat
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return "gone"
    if info.get("process_start") and str(info["process_start"]) != started:
        return "gone"  # the number now belongs to another process
    return "running"


# Written by a `ktune run` into its experiment folder while it starts (claimed).
CLAIM_FILE = ".ktune-claim"


def holds_results(exp_dir: Path) -> bool:
    """Whether ``exp_dir`` holds anything but a claim (a run starting, or one killed while
    it started: see :func:`claimed`)."""
    return exp_dir.exists() and any(p.name != CLAIM_FILE for p in exp_dir.iterdir())


@contextlib.contextmanager
def claimed(exp_dir: Path, working_copy: bool = False, shown: str | None = None) -> Iterator[None]:
    """The experiment folder, claimed by this process for the run's start-up.

    ``ktune run`` checks that its folder is empty, then starts Ray and loads the data
    (seconds) before it writes its own files there. A second run of the same experiment
    started meanwhile passed the same check, and the two then trained into one folder,
    one study and one export. The claim is a file created exclusively (``O_EXCL``) right
    after the check: the second run is refused with one line. It is removed on exit,
    once the run's own files are in the folder (they keep any later run out), or when
    the start-up fails; the folder too, when the run made it and nothing else is in it,
    so a failed start leaves nothing that blocks a re-run. A claim whose process is gone
    (a run killed while it started) is taken over.

    ``working_copy``: ``exp_dir`` is a remote experiment's staging folder on this machine,
    where what an earlier run left is not results (the URI is the truth): the claim
    alone keeps a second run or resume of that URI here from clearing it under this one.
    ``shown``: the experiment as the refusal names it (the URI; default ``exp_dir``)."""
    made = [d for d in (exp_dir, *exp_dir.parents) if not d.exists()]  # innermost first
    exp_dir.mkdir(parents=True, exist_ok=True)
    path = exp_dir / CLAIM_FILE
    for attempt in (0, 1):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_identity(path)  # None: being written by its run, so held
            if attempt == 0 and holder is not None and driver_state(holder) == "gone":
                with contextlib.suppress(OSError):
                    path.unlink()  # left by a run killed while it started
                continue
            pid = f" (pid {holder['pid']} on {holder.get('host')})" if holder else ""
            raise ExperimentError(
                f"{shown or exp_dir}: another ktune run{pid} is starting this experiment; "
                "ktune never lets two runs write one folder (choose another name or --storage)"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**identity(), "command": "run", "ended": None}, f)
        break
    try:
        if not working_copy and holds_results(exp_dir):  # a run that started first
            raise ExperimentError(
                f"{exp_dir}: experiment directory already exists; ktune never overwrites "
                "results (choose another name or --storage)"
            )
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        for folder in made:  # only when empty: the start-up failed before any file
            try:
                folder.rmdir()
            except OSError:
                break


def live_driver(exp_dir: Path, *, but_this_process: bool = False) -> tuple[str, dict] | None:
    """(state, driver.json) of the search still running on ``exp_dir``: ``running`` (this
    machine's driver, asked of the system) or ``elsewhere`` (another machine's, while its
    heartbeat is current); None when none is (no driver.json, ``best.json`` written, the
    driver ended, was killed or fell silent). ``but_this_process``: this process's own
    search (one that ended by an error) does not count."""
    info = read_driver(exp_dir)
    if (
        info is None
        or (exp_dir / BEST_FILE).is_file()
        or (but_this_process and int(info["pid"]) == os.getpid())
    ):
        return None
    state = driver_state(info)
    if state == "running" or (state == "elsewhere" and silent_after(info)):
        return state, info
    return None


def read_finished(exp_dir: Path) -> tuple[dict, dict]:
    """(spec, best) of a finished local experiment (``read_experiment``); a search still
    running (:func:`live_driver`) is named as such, with its driver's host and pid."""
    live = live_driver(exp_dir)
    if live is not None:
        state, info = live
        where = (
            running_elsewhere(info)
            if state == "elsewhere"
            else f"running (ktune {info.get('command', 'run')}, pid {info['pid']})"
        )
        raise ExperimentError(
            f"{exp_dir}: its search is still {where}; {BEST_FILE} is written when it ends"
        )
    return read_experiment(exp_dir)


def refuse_while_running(d: Path, shown: str) -> None:
    """A second driver on one experiment would mix two searches' state: ``ktune resume``
    waits for the first to end (or to be stopped), as :func:`live_driver` tells."""
    live = live_driver(d, but_this_process=True)
    if live is None:
        return
    state, info = live
    if state == "running":
        pid, command = info["pid"], info.get("command", "run")
        raise ExperimentError(
            f"{shown}: its search is still running (ktune {command}, pid {pid} on this "
            f"machine); stop it first (Ctrl+C there, or kill {pid}), then resume"
        )
    raise ExperimentError(
        f"{shown}: its search is still {running_elsewhere(info)}; stop it there first, "
        f"then resume (a driver silent for {format_duration(silent_after(info))} "
        "counts as stopped)"
    )
