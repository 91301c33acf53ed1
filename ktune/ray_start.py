"""Starting or joining Ray for a search, and keeping Ray Tune's console quiet.

An address that cannot be reached, a Ray that cannot start (socket paths too long, ports
in use) is one line (:class:`~ktune.errors.RayStartError`) before any work, instead of
minutes of retries or a traceback. Without ``--address`` a search starts a Ray of its
own; inside a Ray Job ``RAY_ADDRESS`` names the job's cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, Iterator

from ktune._keras_env import WORKER_ENV, environment
from ktune.errors import RayStartError

__all__ = [
    "init_ray",
    "trial_worker_env",
    "check_address",
    "tune_output",
    "released_after_trials",
    "trials_done",
]

log = logging.getLogger("ktune")

# Whether this process started its Ray (init_ray with no cluster to join) and, for a
# command inside released_after_trials, the thread stopping it.
_own_ray = False
_release = False
_stopping: threading.Thread | None = None


def trial_worker_env() -> dict[str, str]:
    """The environment ktune's Ray gives its workers (the job's ``runtime_env``).

    Besides TensorFlow's (``WORKER_ENV``), ``MALLOC_ARENA_MAX=2`` (a value already set
    wins), read by glibc when a worker starts. Its default is up to 8 malloc arenas a
    core; a reused worker runs each trial in a new thread (and tf.data in others), so
    each trial's freed memory stayed in arenas the next trial's threads did not use
    again, and a worker grew 8-10 MiB a trial (bench/memory.py: RSS after 16 trials /
    after 4, 1.11 against 1.00-1.02 with 2 arenas; the same trials' time). The driver,
    Ray's own processes and the user's other subprocesses keep their defaults."""
    return {**WORKER_ENV, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}


def init_ray(address: str | None, verbose: bool = False) -> None:
    """Starts (or joins) Ray once per process; a problem is one RayStartError."""
    import ray

    if ray.is_initialized():
        return
    # Quiet by default: the workers' log lines (TensorFlow's, Ray's) stay in Ray's log
    # files; the progress table is the driver's output. Through Ray Client (ray://) the
    # trials' driver runs on the cluster, so its output reaches us only as worker logs.
    to_driver = verbose or str(address or "").startswith("ray://")
    check_address(address)
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        context = ray.init(
            # No address: a Ray of this run's own (free ports, its own dashboard), never
            # one that another search or `ray start` runs on this machine (--address auto);
            # inside a Ray Job, RAY_ADDRESS names the job's cluster.
            address=target,
            runtime_env={"env_vars": trial_worker_env()},
            log_to_driver=to_driver,
            logging_level=logging.INFO if verbose else logging.WARNING,
            # A Ray of this run's own starts a Python worker per CPU for the first driver,
            # for its tasks; a search runs none (Tune's trials are actors, each in a fresh
            # process), so those workers only take a core while the trials' workers start.
            # (A cluster joined keeps its own configuration: Ray refuses one from here.)
            _system_config=({"prestart_worker_first_driver": False} if target == "local" else None),
        )
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        with contextlib.suppress(Exception):
            ray.shutdown()  # whatever half of it started
        raise RayStartError(_ray_start_problem(e, address)) from None
    global _own_ray
    _own_ray = target == "local"
    if getattr(context, "dashboard_url", None):
        log.info("Ray dashboard: http://%s", context.dashboard_url)


@contextlib.contextmanager
def released_after_trials() -> Iterator[None]:
    """For a command that ends with its search (``ktune run``, ``ktune resume``): the Ray
    this process started stops as soon as the trials are done (:func:`trials_done`), in
    a thread, while the driver evaluates and exports the best trial; nothing after the
    trials needs Ray. Ray's shutdown takes about 2 s on 2 cores (it stops a dozen
    processes, waiting on each); the command waits for it on its way out, unless it is
    on its way out by an error or a signal: then Ray's own exit hook (or, after SIGTERM,
    Ray's reaper) finishes the stop, and a SIGTERM sent to the whole process group still
    ends the command at once."""
    global _own_ray, _release, _stopping
    _own_ray, _release = False, True  # only a Ray started inside counts
    try:
        yield
    except BaseException:
        _release, _stopping = False, None
        raise
    _release = False
    stopping, _stopping = _stopping, None
    if stopping is not None:
        stopping.join()


def trials_done() -> None:
    """The search's trials are done: inside :func:`released_after_trials`, a Ray this
    process started begins to stop. Anywhere else (a user's Python, a cluster joined,
    a Ray already running) Ray stays up, as Tune leaves it."""
    global _own_ray, _stopping
    import ray

    if not (_release and _own_ray and ray.is_initialized()):  # (cleared once stopping)
        return
    sigterm = _sigterm_action()
    if sigterm is None:
        return  # stopped at exit, as Tune leaves it
    _own_ray = False
    _stopping = threading.Thread(target=_shutdown_quietly, name="ktune-ray-shutdown", daemon=True)
    _stopping.start()
    _rearm_sigterm_once_reset(_stopping, *sigterm)


def _shutdown_quietly() -> None:
    import ray

    with contextlib.suppress(Exception):  # its atexit hook tries again
        ray.shutdown()


def _sigterm_action() -> tuple | None:
    """(the C library, SIGTERM's action there now), or None (Ray then stops at exit, as
    before) when SIGTERM has no Python handler now or the C library cannot be asked."""
    if not callable(signal.getsignal(signal.SIGTERM)):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        action = ctypes.create_string_buffer(512)  # more than any system's struct sigaction
        if libc.sigaction(int(signal.SIGTERM), None, action) != 0:
            return None
    except Exception:  # noqa: BLE001 - no C library to ask: nothing changes
        return None
    return libc, action


def _rearm_sigterm_once_reset(stopping: threading.Thread, libc: Any, before: Any) -> None:
    """Ray 2.60's shutdown resets SIGTERM's action to the default underneath Python's
    handler (``signal.getsignal`` still names it), when it destroys the driver's core
    worker, within its first tens of milliseconds; a SIGTERM while the best trial is
    evaluated or exported would then end the process on the spot, instead of writing
    ``interrupted.json`` and exiting with 143. The main thread waits for that reset (or
    for the whole shutdown, if it never comes) and sets Python's handler again (as
    every ``signal.signal`` after it does); the rest of the shutdown, stopping Ray's
    processes, goes on in the background."""
    import ctypes
    import time

    handler = ctypes.sizeof(ctypes.c_void_p)  # the struct's first field, on Linux and macOS
    now = ctypes.create_string_buffer(len(before))
    deadline = time.monotonic() + 10.0
    while stopping.is_alive() and time.monotonic() < deadline:
        if libc.sigaction(int(signal.SIGTERM), None, now) != 0:
            break
        if now.raw[:handler] != before.raw[:handler]:
            break
        time.sleep(0.001)
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))


def check_address(address: str | None) -> None:
    """Before any work: the cluster named by ``address`` (or ``RAY_ADDRESS``) answers."""
    import ray

    if ray.is_initialized():
        return
    problem = (
        _unreachable(address)
        if address
        else _unreachable(os.environ.get("RAY_ADDRESS"), name="RAY_ADDRESS")
    )
    if problem:
        raise RayStartError(problem)


def _unreachable(address: str | None, timeout: float = 5.0, name: str = "--address") -> str | None:
    """One line when ``address`` (``host:port`` or ``ray://host:port``) does not accept a
    connection: ``ray.init`` would otherwise retry it for minutes, printing as it goes."""
    import socket

    if not address or address in ("auto", "local"):
        return None
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return (
            f"{name} {address}: not an address of a Ray cluster (host:port, "
            "ray://host:port, or auto)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as e:
        why = e.strerror or type(e).__name__
        return (
            f"{name} {address}: cannot connect to the Ray cluster ({why}); check the "
            "address and that the cluster is up"
        )


def _ray_start_problem(error: Exception, address: str | None) -> str:
    """One line: why Ray did not start, and what to do."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else type(error).__name__
    if "AF_UNIX path length" in text:
        tmp = os.environ.get("RAY_TMPDIR", "/tmp")
        return (
            f"Ray could not start: its socket paths under RAY_TMPDIR ({tmp[:60]}...) "
            "would exceed 107 bytes; set RAY_TMPDIR to a shorter folder, e.g. /tmp"
        )
    if "in use" in text.lower():
        return (
            f"Ray could not start: a port it needs is in use ({text[:160]}); stop the "
            "other Ray (`ray stop`) or join it with --address auto"
        )
    if address:
        return (
            f"--address {address}: cannot connect to the Ray cluster ({text[:160]}); "
            "check the address and that the cluster is up"
        )
    return f"Ray could not start: {text[:200]} (see /tmp/ray/session_latest/logs)"


_SNAPSHOT_WARNING = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"


@contextlib.contextmanager
def tune_output(verbose: bool) -> Iterator[None]:
    """Ray Tune's console output for one ``fit``: its own (verbose) or none at all.

    At ``verbose=0`` Tune's default output engine still prints a configuration box and
    a TensorBoard hint pointing at a temporary folder; its legacy engine prints nothing.
    Optuna announces its study at INFO level. Both are restored afterwards.
    """
    if verbose:
        yield
        return
    import optuna

    # ktune keeps 2 checkpoints a trial, so Tune snapshots the experiment after every
    # second epoch on purpose (nothing lost in a crash); with short epochs Tune warns
    # that this "may become a bottleneck" at each snapshot. A user's own setting stands.
    saved_level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    filtered = [logging.getLogger(name) for name in _FILTERED]
    for logger in filtered:
        logger.addFilter(_not_after_interrupt)
    searcher = logging.getLogger(_OPTUNA_SEARCH)
    searcher.addFilter(_not_a_repeated_completion)
    try:
        with environment({"RAY_AIR_NEW_OUTPUT": "0"}, defaults={_SNAPSHOT_WARNING: "0"}):
            yield
    finally:
        optuna.logging.set_verbosity(saved_level)
        for logger in filtered:
            logger.removeFilter(_not_after_interrupt)
        searcher.removeFilter(_not_a_repeated_completion)


# Where Tune logs what a Ctrl+C makes it say, and what ktune says instead.
_FILTERED = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")
_OPTUNA_SEARCH = "ray.tune.search.optuna.optuna_search"


def _not_a_repeated_completion(record: logging.LogRecord) -> bool:
    """Drops OptunaSearch's warning, with the whole result dict on one line, when a
    resume reports again the epochs of a trial that finished after Ray's last snapshot
    (README, Crash windows): the study keeps the first completion, the same value. And
    Optuna's "Cannot tell a COMPLETE trial." that OptunaSearch logs when the study's
    journal has the trial complete already (ASHA stopped it before the kill)."""
    text = record.getMessage()
    return not (
        text.startswith("Received additional completion for trial")
        or text == "Cannot tell a COMPLETE trial."
    )


def _not_after_interrupt(record: logging.LogRecord) -> bool:
    """Drops Tune's "Resume experiment with: Tuner.restore(...)" after a Ctrl+C (ktune's
    own line names ``ktune resume``, which restores with the trainable and the searcher)
    and its "Failed to fetch metrics" for trials stopped before their first epoch
    (ktune's line counts them)."""
    text = record.getMessage()
    return "Tuner.restore(" not in text and not text.startswith("Failed to fetch metrics")
