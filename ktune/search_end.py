"""A search stopped before its end (Ctrl+C) told from one that finished.

On the first SIGINT (Ctrl+C; SIGUSR1 too) Ray Tune saves the experiment's state, stops the
running trials and returns from ``Tuner.fit`` as if the search were over: every trial it
stopped then reads ``TERMINATED``, like one that ran all its epochs, and the trials the
searcher had not yet created are simply missing. Taken as finished, such a search would
write ``best.json`` and an export of a search that is not done, and exit 0.

:class:`SearchEnd` watches the search from the driver: after each of Tune's steps it notes
the trials not yet finished, so when the experiment ends it knows which ones Tune's
clean-up stopped, and whether the searcher created every trial it was asked for.
:meth:`SearchEnd.raise_if_interrupted` then raises :class:`~ktune.errors.SearchInterrupted`
(a ``KeyboardInterrupt``): nothing is written, and ``ktune resume`` continues the search
from Ray's saved state.

:func:`stop_signals` makes SIGTERM (``kill``, a cluster scheduler) stop a search the same
way, and puts back the handlers Ray Tune's ``fit`` leaves installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ray.tune import Callback

from ktune import experiment_dir, storage
from ktune.errors import SearchInterrupted
from ktune.experiment_dir import INTERRUPTED_FILE, RAY_ENDED
from ktune.staging import push_staged

if TYPE_CHECKING:
    from ktune.config import ExperimentConfig

__all__ = [
    "SearchEnd",
    "interrupted_summary",
    "stop_signals",
    "finished_before_export",
    "raising_signals",
    "note_interrupted",
    "stop_if_interrupted",
    "exit_once_ray_is_lost",
    "fit_naming_resume",
]

log = logging.getLogger("ktune")


class SearchEnd(Callback):
    """Tells, once ``fit`` returned, whether the search ended or was stopped (Ctrl+C).

    Args:
        expect_total: bool. The searcher creates every trial it is asked for (ktune's
            own searchers do), so fewer trials than Tune's total means the search was
            stopped before the rest were created. False for a user's searcher, which may
            finish early by design. Defaults to True.
    """

    def __init__(self, expect_total: bool = True):
        self.expect_total = expect_total
        self._reset()

    def _reset(self) -> None:
        self.total = 0  # trials the search runs in all (Tune's total_num_samples)
        self.missing = False  # the searcher had not created them all
        self.trials = 0  # trials created when the experiment ended
        self.finished = 0  # trials that ended before the experiment did
        self.cut_off: list[str] = []  # trials Tune's clean-up stopped (running or pending)
        self.signal: int = signal.SIGINT  # what stopped it, if it was (stop_signals)
        self._open: set[str] = set()
        self._ended = False

    # Ray pickles the run config, callbacks included, into the experiment's tuner.pkl:
    # a restored copy starts afresh.
    def __getstate__(self) -> dict:
        return {"expect_total": self.expect_total}

    def __setstate__(self, state: dict) -> None:
        self.expect_total = state["expect_total"]
        self._reset()

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self.total = int(total_num_samples or 0)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        # The loop ends after a step: in a search that finished no trial is open here.
        self._open = {t.trial_id for t in trials if str(t.status) not in RAY_ENDED}
        self._seen = len(trials)

    def so_far(self, signum: int, where: str) -> tuple[dict, SearchInterrupted]:
        """``interrupted.json``'s record and the error of a search stopped now, from the
        last step Tune finished (for a driver that cannot wait for Tune's end)."""
        seen = getattr(self, "_seen", 0)
        cut_off = sorted(f"trial_{t}" for t in self._open)
        total = max(self.total, seen)
        finished = seen - len(cut_off)
        summary = interrupted_summary(
            signum, finished=finished, total=total, cut_off=cut_off, not_started=total - seen
        )
        error = SearchInterrupted(
            where, finished=finished, total=total, cut_off=cut_off, signal=int(signum)
        )
        return summary, error

    def on_experiment_end(self, trials: list, **info) -> None:
        status = {t.trial_id: str(t.status) for t in trials}
        self.cut_off = [
            f"trial_{tid}"
            for tid in status
            if tid in self._open or status[tid] not in RAY_ENDED  # stopped by the clean-up
        ]
        self.trials = len(trials)
        self.finished = self.trials - len(self.cut_off)
        self.missing = self.expect_total and self.trials < self.total  # some never created
        self.total = max(self.total, self.trials)
        self._ended = True

    @property
    def interrupted(self) -> bool:
        """The search stopped before it finished (known once the experiment ended)."""
        return self._ended and bool(self.cut_off or self.missing)

    def summary(self) -> dict:
        """What ``interrupted.json`` records: the signal, the counts, the trials cut off
        and when (``ktune report`` reads it)."""
        return interrupted_summary(
            self.signal,
            finished=self.finished,
            total=self.total,
            cut_off=self.cut_off,
            not_started=max(0, self.total - self.trials),
        )

    def raise_if_interrupted(self, where: str) -> None:
        """Raises :class:`SearchInterrupted` naming ``where`` (the experiment's folder or
        URI) and ``ktune resume`` if the search was stopped before it finished."""
        if self.interrupted:
            raise SearchInterrupted(
                where,
                finished=self.finished,
                total=self.total,
                cut_off=self.cut_off,
                signal=int(self.signal),
            )


def interrupted_summary(
    signum: int,
    *,
    finished: int,
    total: int,
    cut_off: Sequence[str] = (),
    not_started: int = 0,
) -> dict:
    """What ``interrupted.json`` records (``ktune report`` reads it): the signal's name,
    the trials finished of ``total``, those cut off, how many never started, when."""
    return {
        "signal": signal.Signals(signum).name,
        "finished": finished,
        "total": total,
        "cut_off": sorted(cut_off),
        "not_started": not_started,
        "time": time.time(),
    }


def note_interrupted(cfg: ExperimentConfig, summary: dict, shown: str) -> None:
    """``interrupted.json`` (for ``ktune report``); best effort: it never hides the
    interruption."""
    try:
        experiment_dir.write_interrupted(cfg.experiment_dir, summary)
        push_staged(cfg, [INTERRUPTED_FILE])
    except Exception as e:  # noqa: BLE001 - the interruption is what the user must see
        log.warning("%s: %s not written (%s)", shown, INTERRUPTED_FILE, e)


def finished_before_export(cfg: ExperimentConfig, export: bool | None) -> bool:
    """A Ctrl+C after the trials: whether ``best.json`` was written already (the search
    finished); when its export was due and not made, the line saying how to make it."""
    best = experiment_dir.read_best(cfg.experiment_dir)
    if best is not None and (cfg.export.enabled if export is None else export):
        if "export" not in best:
            shown = storage.redact(cfg.experiment_path)
            log.warning(
                "%s: the search finished (best.json), its export was cut off: "
                "`ktune resume %s` makes it",
                shown,
                shown,
            )
    return best is not None


def stop_if_interrupted(cfg: ExperimentConfig, end: SearchEnd, shown: str) -> None:
    """A search Ctrl+C or SIGTERM stopped: ``interrupted.json`` says so (for ``ktune
    report``; best effort, it never hides the interruption), then
    :class:`~ktune.errors.SearchInterrupted`."""
    if end.interrupted:
        note_interrupted(cfg, end.summary(), shown)
    end.raise_if_interrupted(shown)


def exit_once_ray_is_lost(
    cfg: ExperimentConfig, end: SearchEnd, shown: str
) -> Callable[[int], None]:
    """What :func:`stop_signals` does when a SIGTERM killed the Ray this process started
    (sent to the whole process group, as SLURM's ``scancel`` does: Ray's processes block
    SIGINT, not SIGTERM). Tune cannot end the search then: it would wait 60 s for Ray and
    the process would end with exit code 1, as a crash. Instead the search is noted as
    interrupted (``interrupted.json``), the line naming ``ktune resume`` is printed, and
    the process exits at once with 128 + the signal. Ray's last snapshot and the trials'
    checkpoints on storage are what the resume continues from, as after a kill."""

    def lost(signum: int) -> None:
        summary, error = end.so_far(signum, shown)
        note_interrupted(cfg, summary, shown)
        # The last line, whole: Tune's main thread logs its own stop message meanwhile,
        # which print's two writes (the text, then the newline) let in between (CI).
        logging.disable(logging.CRITICAL)
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), f"ktune: {error}\n".encode())
        os._exit(128 + signum)

    return lost


def _own_ray_lost() -> bool:
    """Whether a process of the Ray this process started has ended: the signal reached
    them too. (The GCS and the raylet take SIGTERM as the start of a shutdown that never
    answers the driver again; the dashboard and the log monitor end at once.)"""
    try:
        import ray._private.worker as worker

        node = worker._global_node
        started = node.all_processes.values() if node is not None else ()
        return any(p.process.poll() is not None for infos in started for p in infos)
    except Exception:  # noqa: BLE001 - not the layout this was written for: not lost
        return False


@contextlib.contextmanager
def stop_signals(
    end: SearchEnd | None = None, on_ray_lost: Callable[[int], None] | None = None
) -> Iterator[None]:
    """For the block (a ``fit``): SIGTERM stops the search as Ctrl+C does, and afterwards
    the process's own handlers are back.

    SIGTERM is what ``kill``, Kubernetes, SLURM and ``ray job stop`` send before their
    SIGKILL; in the driver Ray would abort on it with a stack dump and no final snapshot.
    Here it calls the SIGINT handler in place (Ray Tune's, during ``fit``: the search stops
    and its state is saved; a second one skips the snapshot) and is noted in
    ``end.signal``. Ray Tune's ``fit`` leaves its SIGINT and SIGUSR1 handlers installed,
    so a Ctrl+C during the test evaluation or the export would only print Ray's "ending
    Ray Tune run" and be ignored: they are put back. Outside the main thread, where
    neither Ray nor Python installs handlers, a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGUSR1"):
        names.append(signal.SIGUSR1)

    over = threading.Event()  # the block is left: Ray may stop on its own from here
    watching = threading.Lock()  # held once a watch has started: one watch a block

    def watch(signum: int, on_ray_lost: Callable[[int], None]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not over.is_set():
            if _own_ray_lost() and not over.is_set():
                on_ray_lost(signum)
                return
            time.sleep(0.05)

    def start_watch(signum: int) -> None:
        if end is not None:
            end.signal = signum
        if on_ray_lost is not None and watching.acquire(blocking=False):
            threading.Thread(target=watch, args=(signum, on_ray_lost), daemon=True).start()

    def on_term(signum: int, frame) -> None:
        start_watch(signum)  # killed with the process group? (a thread watches)
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler) or handler is on_term:
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    with _handlers_restored(names), _woken_by(signal.SIGTERM, start_watch):
        signal.signal(signal.SIGTERM, on_term)
        try:
            yield
        finally:
            over.set()


@contextlib.contextmanager
def _woken_by(signum: int, act: Callable[[int], None]) -> Iterator[None]:
    """For the block (main thread): ``act(signum)`` runs in a thread of its own as soon as
    the signal arrives, before the Python handler does. Python runs handlers only in the
    main thread, between two bytecodes: a signal the kernel hands to another thread (one
    of Ray's) while the main thread waits inside Ray's C++ core is handled only once that
    wait ends, and when the signal went to the whole process group the core worker may
    end the process (exit code 1) first, as the raylet goes. Python's C-level handler
    writes each signal's number to the wakeup fd at once; a thread reads it here. A
    wakeup fd set before (an asyncio loop's) still gets every byte."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        before = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # not the main thread, or not allowed here: handlers alone
        os.close(read_end)
        os.close(write_end)
        yield
        return

    def read() -> None:
        while got := os.read(read_end, 64):  # b"": the block is left
            if before != -1:
                with contextlib.suppress(OSError):
                    os.write(before, got)
            if signum in got:
                act(signum)

    reader = threading.Thread(target=read, name="ktune-signals", daemon=True)
    reader.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(before)
        os.close(write_end)
        reader.join(timeout=1)
        os.close(read_end)


@contextlib.contextmanager
def raising_signals() -> Iterator[list[int]]:
    """For the block (ktune's work after the trials): SIGINT and SIGTERM raise
    ``KeyboardInterrupt``, whatever handlers were installed before (a ``Tuner.fit`` of
    the user's own, earlier in the process, leaves Ray Tune's SIGINT handler, which only
    logs); the list yielded receives the signal. Afterwards the handlers are back.
    Outside the main thread, where no handler can be installed, a no-op."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    names = (signal.SIGINT, signal.SIGTERM)

    def stop(signum: int, frame) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    with _handlers_restored(names):
        for s in names:
            signal.signal(s, stop)
        yield got


@contextlib.contextmanager
def _handlers_restored(names: Sequence[int]) -> Iterator[None]:
    """The handlers of ``names`` as they were before the block, whatever it installs."""
    saved = {s: signal.getsignal(s) for s in names}
    try:
        yield
    finally:
        for s, handler in saved.items():
            # None: installed from C (Ray's crash handler for SIGTERM); the default ends
            # the process as well
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


# Ray's period between snapshots of the experiment on local storage (its own default: 10 s
# or more). A trial that started after the last snapshot is unknown to a restore: with a
# snapshot every 10 s, a trial of short epochs could start, checkpoint and even end
# unseen before a kill, and its resume drew a new trial in its place. A snapshot of a
# small search takes about 10 ms of the driver's time (0.5% at 2 s). URI storage keeps
# Ray's own period: each snapshot is an upload.
LOCAL_SNAPSHOT_S = "2"


def fit_naming_resume(tuner, shown: str, remote: bool = False):
    """``tuner.fit()``; an error out of Tune itself (the storage lost as the trials end,
    say) is logged with how to go on before it propagates: a traceback alone did not say
    that ``ktune resume`` continues the search from what Ray saved. On local storage Ray
    snapshots the experiment every :data:`LOCAL_SNAPSHOT_S` seconds, unless the
    environment sets ``TUNE_GLOBAL_CHECKPOINT_S``."""
    from ktune._keras_env import environment
    from ktune.errors import KtuneUserError, SearchFailed
    from ktune.tables import last_line

    period = {} if remote else {"TUNE_GLOBAL_CHECKPOINT_S": LOCAL_SNAPSHOT_S}
    try:
        with environment({}, defaults=period):  # read once, as Tune's loop is set up
            return tuner.fit()
    except Exception as e:
        if not isinstance(e, (KtuneUserError, SearchFailed)):
            log.error(
                "the search stopped on an error (%s); `ktune resume %s` continues it from "
                "what it saved",
                ": ".join(filter(None, [type(e).__name__, last_line(str(e))])),
                shown,
            )
        raise
