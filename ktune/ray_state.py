"""Ray's experiment snapshot, kept whole across a crash.

Ray Tune saves its view of a search (``experiment_state-<session>.json``, the searcher's
``searcher-state-<session>.pkl``, ...) into a staging folder on the driver and then copies
the files to the experiment directory, one after another, each overwritten in place. A
driver killed during that copy leaves a file cut short, often empty; the next
``Tuner.restore`` then logs "Failed to restore the run state" and quietly starts a new,
empty search in the same folder, or fails on the searcher's pickle.

Two parts close that window (local storage; object stores write whole objects):

* :class:`SnapshotKeeper`, a driver callback: Ray asks callbacks for their state in the
  middle of its snapshot, after the experiment state and the searcher were written to
  the staging folder and before the copy starts. It stores those files in one bundle
  (``.ktune-ray-snapshot``, written to a temporary file and renamed over the old).
  The same copy runs through every trial's folder: Ray's driver keeps each trial's
  ``result.json`` and ``progress.csv`` in the staging folder too and rewrites them in
  storage at every snapshot, so a kill can cut short the history of a trial that ended
  long before. Each changed file gets a whole copy in ``<trial>/.ktune-copy/``.
* :class:`SearchGenerator` and :class:`BasicVariantGenerator`, the searchers ktune
  hands Tune: they write their snapshot files beside the staging folder and rename each
  into it, so that Ray's background copy of the previous snapshot never lists a
  temporary file that is renamed away under it (seen as a ``FileNotFoundError``
  traceback on the console, "Saving experiment state to storage ... failed").
* :func:`repair`, before a resume: Ray's newest whole snapshot and every trial's longest
  whole history are put back; whatever is replaced moves to ``.ktune-set-aside/<time>/``.
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import io
import json
import logging
import os
import pickletools
import shutil
import time
from pathlib import Path

from ray import tune
from ray.tune.search import BasicVariantGenerator as _RayBasicVariantGenerator
from ray.tune.search.search_generator import SearchGenerator as _RaySearchGenerator

from ktune.experiment_dir import trials_unknown_to_ray
from ktune.ray_checkpoints import relink_deleted_checkpoints
from ktune.storage import write_atomic

log = logging.getLogger("ktune")

# No .json/.pkl suffix: Ray copies those of the folder's top level back and forth itself.
BUNDLE_FILE = ".ktune-ray-snapshot"
SET_ASIDE_DIR = ".ktune-set-aside"
TRIAL_COPY_DIR = ".ktune-copy"
# What Ray's driver writes into each trial's folder (JsonLoggerCallback, CSVLoggerCallback)
TRIAL_FILES = ("result.json", "progress.csv", "params.json", "params.pkl", "error.txt", "error.pkl")
# The files Ray restores an experiment from (TuneController, SearchGenerator, Searcher,
# BasicVariantGenerator, CallbackList, Tuner); each but the last is one per session.
STATE_PATTERNS = (
    "experiment_state-*.json",
    "search_gen_state-*.json",
    "searcher-state-*.pkl",
    "basic-variant-state-*.json",
    "callback-states-*.pkl",
    "tuner.pkl",
)


def is_state_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in STATE_PATTERNS)


def is_carried(name: str) -> bool:
    """Whether Ray copies this top-level file to staging on a restore and back to storage
    at every snapshot: every ``.json`` and ``.pkl``, ktune's own ``ktune.json`` and
    ``best.json`` too."""
    return name.endswith((".json", ".pkl"))


def is_whole(data: bytes, name: str = "") -> bool:
    """Whether ``data`` is a complete JSON document or pickle (read, not executed).

    Either form for any name: Ray writes ``search_gen_state-*.json`` as a pickle."""
    if not data:
        return False
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        for _ in pickletools.genops(data):  # ends at STOP; raises on a cut-short stream
            pass
    except Exception:  # noqa: BLE001 - any malformed stream is not whole
        return False
    return True


def _staging_dir(experiment_name: str) -> Path | None:
    """The driver staging folder Ray snapshots ``experiment_name`` into (the newest)."""
    try:
        from ray.train.constants import _get_ray_train_session_dir

        root = Path(_get_ray_train_session_dir())
    except Exception:  # noqa: BLE001 - Ray not started here, or its layout changed
        return None
    found = [
        p
        for p in root.glob(f"*/{experiment_name}/driver_artifacts")
        if any(p.glob("experiment_state-*.json"))
    ]
    if not found:
        return None
    return max(
        found, key=lambda p: max(f.stat().st_mtime_ns for f in p.glob("experiment_state-*.json"))
    )


def write_bundle(exp_dir: Path, staging: Path) -> int:
    """Copies the whole state files of ``staging`` into ``exp_dir``'s bundle; returns
    how many it holds."""
    files = {}
    for f in sorted(staging.iterdir()):
        if not f.is_file() or not is_carried(f.name):
            continue
        data = f.read_bytes()
        if is_whole(data, f.name):
            files[f.name] = base64.b64encode(data).decode("ascii")
    if not files:
        return 0
    target = exp_dir / BUNDLE_FILE
    bundle = {"written": time.time(), "staging": str(staging), "files": files}
    write_atomic(target, json.dumps(bundle), fsync=True)
    return len(files)


def read_bundle(exp_dir: Path) -> dict[str, bytes]:
    """The bundle's files by name; empty when there is none or it is not whole."""
    try:
        raw = json.loads((exp_dir / BUNDLE_FILE).read_text())
        return {name: base64.b64decode(text) for name, text in raw["files"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


# Beside Ray's staging folder (``.../<experiment>/driver_artifacts``), which Ray copies
# to storage; nothing copies its parent.
SEARCHER_WRITES_DIR = ".ktune-searcher-writes"


class _SnapshotBesideCopy:
    """A Tune search algorithm whose snapshot files appear in the staging folder whole.

    Ray's searchers write their state into the staging folder as a temporary file
    (``.<uuid>-tmp-searcher-state-<session>.pkl``) renamed over the old one. Ray copies
    that folder to storage in the background and starts the next snapshot without
    waiting for the copy: a temporary file listed by the copy and renamed before it is
    read fails the copy with a traceback on the console (seen under load, two searches
    on 2 cores). Here the searcher writes into a private folder beside the staging
    folder, on the same filesystem, and each finished file is renamed into place: the
    staging folder only ever holds whole files under their final names.
    """

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        staging = Path(dirpath)
        private = staging.parent / SEARCHER_WRITES_DIR
        private.mkdir(parents=True, exist_ok=True)
        super().save_to_dir(str(private), session_str)  # type: ignore[misc]
        for f in private.iterdir():
            if f.is_file() and not f.name.startswith("."):  # a dead write's temporary file
                os.replace(f, staging / f.name)


class SearchGenerator(_SnapshotBesideCopy, _RaySearchGenerator):
    """Ray's ``SearchGenerator`` (what Tune wraps a ``Searcher`` in) with whole snapshots."""


class BasicVariantGenerator(_SnapshotBesideCopy, _RayBasicVariantGenerator):
    """Ray's ``BasicVariantGenerator`` (random and grid search) with whole snapshots."""


class SnapshotKeeper(tune.Callback):
    """Keeps a whole copy of Ray's newest experiment snapshot in the experiment folder.

    ``get_state`` is the one hook Ray calls during its snapshot, after writing the state
    files to its staging folder and before copying them to storage; it returns ``None``
    so that Ray saves no callback state of its own for it.

    In your own ``tune.Tuner``: ``RunConfig(callbacks=[SnapshotKeeper()])`` learns the
    experiment folder and Ray's staging folder from the trials (local storage only: an
    object store writes whole objects), and :func:`repair` on the experiment folder before
    ``tune.Tuner.restore`` puts the whole copies back. ``ktune run`` and ``ktune resume``
    pass ``exp_dir`` and ``experiment_name``: a resume whose trials had all ended takes
    no step, and Ray's final snapshot then comes before any hook that names a trial.
    """

    def __init__(self, exp_dir: str | Path | None = None, experiment_name: str | None = None):
        self.exp_dir = Path(exp_dir) if exp_dir is not None else None
        self.experiment_name = experiment_name
        self._staging: Path | None = None
        self._copied: dict[Path, tuple[int, int]] = {}
        self._learned = exp_dir is not None

    def on_step_begin(self, iteration, trials, **info):
        if not self._learned and trials:
            self._learn(trials[0].storage)

    def _learn(self, storage) -> None:
        """The experiment folder and staging folder of a Tuner given no ``exp_dir``."""
        import pyarrow.fs as pafs

        self._learned = True
        if isinstance(storage.storage_filesystem, pafs.LocalFileSystem):
            self.exp_dir = Path(storage.experiment_fs_path)
            self._staging = Path(storage.experiment_driver_staging_path)

    def _copy_trial_files(self, staging: Path, exp_dir: Path) -> None:
        """Whole copies of the trial files that changed since the last snapshot."""
        for folder in staging.iterdir():
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for name in TRIAL_FILES:
                source = folder / name
                try:
                    stat = source.stat()
                except OSError:
                    continue
                if self._copied.get(source) == (stat.st_size, stat.st_mtime_ns):
                    continue
                target = exp_dir / folder.name / TRIAL_COPY_DIR / name
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, source.read_bytes())
                self._copied[source] = (stat.st_size, stat.st_mtime_ns)

    def get_state(self):
        if self.exp_dir is None:
            return None  # a Tuner's keeper before its first trial, or on an object store
        try:
            if self.experiment_name and (self._staging is None or not self._staging.is_dir()):
                self._staging = _staging_dir(self.experiment_name)
            if self._staging is not None and self._staging.is_dir() and self.exp_dir.is_dir():
                write_bundle(self.exp_dir, self._staging)
                self._copy_trial_files(self._staging, self.exp_dir)
        except OSError as e:  # a full disk must not stop the search; Ray's copy may still land
            log.warning("could not keep a copy of Ray's snapshot in %s: %s", self.exp_dir, e)
        return None


class KeepTrialHistory(tune.Callback):
    """Keeps the history of a trial that Ray retries after a failure, or that PBT restarts
    from a checkpoint, whole.

    A trial that fails with ``max_failures`` left is restarted from its checkpoint, and
    Ray's JSON and CSV loggers reopen its ``result.json`` and ``progress.csv`` by copying
    them back from the storage. The storage holds them as of Ray's last snapshot of the
    experiment (every 10 s or more, copied in the background): the rows of the epochs
    reported since, up to the one just before the failure, were overwritten and lost,
    though the trial went on from that epoch's checkpoint. On the failure, before the
    restart, this puts the driver's own whole copies into the storage first (callbacks
    passed to ``RunConfig`` run before the loggers Ray adds after them).
    """

    FILES = ("result.json", "progress.csv")

    def on_trial_start(self, iteration, trials, trial, **info):
        """A PBT exploit (or any pause) restarts a trial the same way, from a checkpoint:
        Ray's loggers copy the files back from the storage then too (after PBT, the
        epochs since the last snapshot were missing from result.json)."""
        if trial.checkpoint:  # Ray's loggers restore the files only then
            self.on_trial_recover(iteration, trials, trial, **info)

    def on_trial_recover(self, iteration, trials, trial, **info):
        import pyarrow.fs as pafs

        storage = trial.storage
        for name in self.FILES:
            local = Path(trial.local_path, name)
            remote = f"{storage.trial_fs_path}/{name}"
            if not local.is_file() or (
                isinstance(storage.storage_filesystem, pafs.LocalFileSystem)
                and Path(remote).resolve() == local.resolve()
            ):
                continue
            try:
                pafs.copy_files(
                    str(local), remote, destination_filesystem=storage.storage_filesystem
                )
            except OSError as e:  # the retry goes on; Ray's copy from its snapshot is used
                log.warning("could not keep %s of %s: %s", name, trial, e)


def history_rows(data: bytes, name: str) -> int | None:
    """How many whole records a trial file holds; ``None`` when it is cut short.

    ``result.json``: one JSON object per line, each line ended. ``progress.csv``: a header
    and rows of its width, the last ended. Others: one whole document."""
    if name == "result.json":
        if data and not data.endswith(b"\n"):
            return None
        try:
            return sum(1 for line in data.splitlines() if json.loads(line) is not None)
        except ValueError:
            return None
    if name == "progress.csv":
        if data and not data.endswith(b"\n"):
            return None
        rows = list(csv.reader(io.StringIO(data.decode("utf-8", "replace"))))
        if rows and any(len(r) != len(rows[0]) for r in rows):
            return None
        return max(len(rows) - 1, 0)
    return 1 if is_whole(data) else None


def _whole_prefix(data: bytes, name: str) -> bytes:
    """The longest whole beginning of a cut-short ``result.json`` or ``progress.csv``."""
    lines = data.splitlines(keepends=True)
    while lines and history_rows(b"".join(lines), name) is None:
        lines.pop()
    return b"".join(lines)


def repair_trial_files(exp_dir: Path, aside: Path) -> list[str]:
    """Per trial file, keeps whichever of storage's version and ktune's copy is whole and
    longer; a cut-short history with no whole copy is trimmed to its whole lines."""
    changed = []
    for folder in sorted(exp_dir.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        for name in TRIAL_FILES:
            path, copy_path = folder / name, folder / TRIAL_COPY_DIR / name
            if not path.is_file() and not copy_path.is_file():
                continue
            current = path.read_bytes() if path.is_file() else None
            copy = copy_path.read_bytes() if copy_path.is_file() else None
            have = history_rows(current, name) if current is not None else None
            spare = history_rows(copy, name) if copy is not None else None
            if have is not None and (spare is None or have >= spare):
                continue
            if copy is not None and spare is not None:
                replacement = copy
            elif current is not None and name in ("result.json", "progress.csv"):
                replacement = _whole_prefix(current, name)
            else:
                continue
            if current is not None:
                (aside / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, aside / folder.name / name)
            write_atomic(path, replacement)
            changed.append(f"{folder.name}/{name}")
    return changed


def _newest_session(names) -> str:
    found = [n for n in names if fnmatch.fnmatchcase(n, "experiment_state-*.json")]
    return max(found) if found else ""


def repair(exp_dir: str | Path) -> list[str]:
    """Puts Ray's newest whole snapshot back in ``exp_dir`` before a resume; returns one
    line per change (none when the folder already holds it).

    The bundle is written before Ray starts each copy to storage, so it is never older
    than what storage holds: when it covers storage's newest session, all of its files
    are put back (a kill between two of Ray's copies leaves each file whole but the
    experiment state and the searcher from different snapshots). Otherwise only files
    cut short are replaced. Whatever is replaced moves to ``.ktune-set-aside/<time>/``.
    """
    exp_dir = Path(exp_dir)
    bundle = {n: b for n, b in read_bundle(exp_dir).items() if is_whole(b, n)}
    stored = {f.name: f for f in exp_dir.iterdir() if f.is_file() and is_carried(f.name)}
    authoritative = bool(bundle) and _newest_session(bundle) >= _newest_session(stored)
    aside = exp_dir / SET_ASIDE_DIR / time.strftime("%Y%m%d-%H%M%S")
    restored, set_aside = [], []
    for name in sorted(set(stored) | set(bundle)):
        path = exp_dir / name
        current = path.read_bytes() if name in stored else None
        whole = current is not None and is_whole(current, name)
        copy = bundle.get(name)
        if not is_state_file(name) and (current is None or whole or copy is None):
            continue  # ktune's own files: written whole by ktune, put back only if cut short
        if copy is None or copy == current or (whole and not authoritative):
            if current is not None and not whole:
                aside.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), aside / name)
                set_aside.append(name)
            continue
        if current is not None:
            aside.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), aside / name)
        write_atomic(path, copy)
        restored.append(name)
    trials = repair_trial_files(exp_dir, aside)
    states = [f for f in exp_dir.glob("experiment_state-*.json") if is_whole(f.read_bytes())]
    relinked, forgotten, registered = relink_deleted_checkpoints(
        exp_dir, max(states, default=None), aside
    )
    notes = []
    if registered:
        notes.append(
            f"{', '.join(registered)}: the run stopped before Ray registered the checkpoint "
            "of the last epoch it recorded; registered, so the trial continues from it"
        )
    if forgotten:
        notes.append(
            f"{', '.join(forgotten)}: deleted by Ray after its last snapshot (a better "
            "checkpoint replaced it); forgotten, so the trial's next checkpoint registers"
        )
    if relinked:
        notes.append(
            f"{', '.join(relinked)}: Ray's snapshot named a checkpoint it had since deleted "
            "(a newer, better one replaced it); the trial continues from the next one on "
            "storage, reporting its epochs again"
        )
    if trials:
        notes.append(
            f"{len(trials)} trial files cut short when the run died put back whole "
            f"({', '.join(trials[:4])}{', ...' if len(trials) > 4 else ''})"
            + (f"; the cut-short ones are in {aside}" if aside.is_dir() else "")
        )
    if restored:
        notes.append(
            f"Ray was saving its snapshot when the run died: {len(restored)} of its files "
            f"put back from ktune's whole copy"
            + (f"; the replaced ones are in {aside}" if aside.is_dir() else "")
        )
    unknown = trials_unknown_to_ray(exp_dir)
    if unknown:
        notes.append(
            f"{', '.join(unknown)}: started after Ray's last snapshot of the search, so "
            "Ray's restore does not know them: their folders stay as they are, outside the "
            "results, and the search draws new trials in their place"
        )
    if set_aside:
        notes.append(
            f"{', '.join(set_aside)}: cut short when the run died and no whole copy is "
            f"left; set aside in {aside}, Ray resumes from its earlier snapshot"
        )
    return notes


def searcher_lost(exp_dir: str | Path) -> bool:
    """True when Ray saved an experiment state but no whole searcher state is left: a
    restore would then count the search as finished and quietly end it."""
    exp_dir = Path(exp_dir)

    def whole(pattern: str) -> bool:
        return any(is_whole(f.read_bytes()) for f in exp_dir.glob(pattern))

    return whole("experiment_state-*.json") and not (
        whole("search_gen_state-*.json") or whole("basic-variant-state-*.json")
    )
