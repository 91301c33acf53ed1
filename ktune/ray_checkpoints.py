"""A resumed trial's checkpoints as Ray's snapshot names them, put right.

Ray's experiment snapshot (``experiment_state-*.json``) keeps each trial's checkpoint
bookkeeping (its ``_CheckpointManager`` and its ``StorageContext``) as of the snapshot. A
driver killed between two snapshots leaves that bookkeeping behind what is on storage:
checkpoints deleted since, or one written and not yet registered.
:func:`relink_deleted_checkpoints`, called by :func:`ktune.ray_state.repair` before a
resume, brings it up to date.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ktune.checkpoint_manifest import is_complete, reported_metrics
from ktune.storage import write_atomic

__all__ = ["relink_deleted_checkpoints", "UNREPORTED_FILE"]

# In a checkpoint Ray's snapshot now names in place of a deleted older one: the last epoch
# Ray had recorded, so the trial reports this checkpoint's epoch again before going on.
UNREPORTED_FILE = ".ktune-unreported.json"


def _checkpoint_index(path: Path) -> int:
    return int(path.name.split("_", 1)[1]) if path.name.startswith("checkpoint_") else -1


def _relink(manager, meta: dict, aside: Path) -> str | None:
    """Points ``manager``'s latest checkpoint, deleted or part-deleted, at the oldest
    complete one after it (see :func:`relink_deleted_checkpoints`); returns the trial's
    folder name when it did."""
    from ray.train._internal.checkpoint_manager import _insert_into_sorted_list
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    latest = manager._latest_checkpoint_result
    if latest is None or latest.checkpoint is None:
        return None
    named = Path(latest.checkpoint.path)
    if not named.is_absolute() or (named.exists() and is_complete(str(named))):
        return None
    later = sorted(
        (
            p
            for p in named.parent.glob("checkpoint_*")
            if is_complete(str(p)) and _checkpoint_index(p) > _checkpoint_index(named)
        ),
        key=_checkpoint_index,
    )
    if not later:
        return None
    if named.exists():  # what Ray's interrupted deletion left
        part = aside / named.parent.name
        part.mkdir(parents=True, exist_ok=True)
        shutil.move(str(named), part / named.name)
    handed = later[0]
    reported = (meta.get("last_result") or {}).get("epoch")
    (handed / UNREPORTED_FILE).write_text(json.dumps({"reported_epoch": reported}))
    metrics = reported_metrics(handed)
    result = _TrainingResult(
        checkpoint=Checkpoint(str(handed), filesystem=latest.checkpoint.filesystem),
        metrics=metrics,
    )
    manager._checkpoint_results = [
        r
        for r in manager._checkpoint_results
        if r.checkpoint is not None and Path(r.checkpoint.path).exists()
    ]
    _insert_into_sorted_list(manager._checkpoint_results, result, key=manager._get_checkpoint_score)
    manager._latest_checkpoint_result = result
    return named.parent.name


def _register_recorded(manager, meta: dict, trial_dir: Path) -> str | None:
    """Registers the checkpoint of the last result Ray recorded when Ray had not: a trial's
    checkpoint is registered by a save task of its own, after its result is processed, and
    a run stopped in between (Ctrl+C: Ray's last snapshot is taken at once; or a kill
    between a snapshot and the save) records the epoch without its checkpoint. Resumed
    from the older one, the trial would report that epoch again: twice in its history.
    The checkpoint is the complete folder after the registered one whose ``metrics.json``
    holds the recorded epoch and report time; registered as Ray would have (keeping its
    best ``num_to_keep``). Returns the trial's folder name when it did."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    last = meta.get("last_result") or {}
    epoch, stamp = last.get("epoch"), last.get("timestamp")
    latest = manager._latest_checkpoint_result
    if epoch is None or stamp is None or not trial_dir.is_dir():
        return None
    after = -1
    if latest is not None and latest.checkpoint is not None:
        after = _checkpoint_index(Path(latest.checkpoint.path))
    folders = sorted(trial_dir.glob("checkpoint_*"), key=_checkpoint_index, reverse=True)
    for folder in folders:
        if _checkpoint_index(folder) <= after:
            break
        metrics = reported_metrics(folder)
        if (metrics.get("epoch"), metrics.get("timestamp")) == (epoch, stamp):
            if not is_complete(str(folder)):
                return None  # cut off: the trial trains that epoch again, and replaces it
            manager.register_checkpoint(_TrainingResult(Checkpoint(str(folder)), metrics))
            return trial_dir.name
    return None


def _count_registered(entry: list, manager) -> None:
    """Ray names a trial's next checkpoint folder after the index in its snapshot, counted
    as each checkpoint registers (``StorageContext.current_checkpoint_index``). One that
    ``ktune resume`` registered or handed is counted too: else the trial's next epoch is
    written into its folder, over it, and Ray later deletes that folder as the older
    epoch's (CI 2026-12-06: the best trial's checkpoint was gone)."""
    import cloudpickle

    state = json.loads(entry[0])
    field = state.get("storage")
    top = max(
        (
            _checkpoint_index(Path(r.checkpoint.path))
            for r in manager._checkpoint_results
            if r.checkpoint is not None
        ),
        default=-1,
    )
    if not isinstance(field, dict) or "value" not in field:
        return
    storage = cloudpickle.loads(bytes.fromhex(field["value"]))
    if storage.current_checkpoint_index < top:
        storage.current_checkpoint_index = top
        field["value"] = cloudpickle.dumps(storage).hex()
        entry[0] = json.dumps(state, indent=2)


def relink_deleted_checkpoints(
    exp_dir: Path, newest: Path | None, aside: Path
) -> tuple[list[str], list[str], list[str]]:
    """Ray keeps a trial's best ``num_to_keep`` checkpoints and deletes the others as soon
    as a newer one registers, before its next snapshot: killed in between, the snapshot
    names as the trial's latest a checkpoint that is gone, and the restored trial fails
    ("does not exist on storage anymore"); killed during the deletion, it names a folder
    with some of its files left (the weights without the metrics and trial file), from
    which the trial would train its later epochs again. Points such a trial at the oldest
    complete checkpoint after the deleted one, marked with the epoch Ray last recorded so
    that the trial reports its epochs again (:func:`ktune.trainables.base.starting_checkpoint`);
    a part-deleted folder goes into ``aside``. An older checkpoint the snapshot still
    counts among those kept, deleted since, is forgotten; a recorded epoch whose checkpoint
    Ray had not registered yet is registered (:func:`_register_recorded`). Returns the
    trials pointed at another checkpoint, the checkpoints forgotten
    (``trial/checkpoint_...``) and the trials whose recorded checkpoint was registered.

    ``newest`` is Ray's newest whole experiment snapshot; it is rewritten in place, its
    former text kept in ``aside``."""
    if newest is None:  # no whole snapshot of Ray's
        return [], [], []
    try:
        import cloudpickle

        # the Ray internals _relink uses: without them, not the layout this was written for
        import ray.train._internal.checkpoint_manager  # noqa: F401
        import ray.train._internal.session  # noqa: F401

        state = json.loads(newest.read_text())
        entries = state["trial_data"]
    except (ImportError, ValueError, KeyError):
        return [], [], []
    changed: list[str] = []
    forgotten: list[str] = []
    registered: list[str] = []
    for entry in entries:
        try:
            trial_dir = exp_dir / (json.loads(entry[0]).get("relative_logdir") or "")
            meta = json.loads(entry[1])
            field = meta["checkpoint_manager"]
            manager = cloudpickle.loads(bytes.fromhex(field["value"]))
            latest = manager._latest_checkpoint_result
        except Exception:  # noqa: BLE001 - not the layout this was written for: leave it
            continue
        # An older kept checkpoint Ray deleted after the snapshot (a better one replaced
        # it): the restored manager would delete it again when the trial's next
        # checkpoint registers, fail (FileNotFoundError, Ray's "Error handling
        # checkpoint" traceback) and skip the rest of that registration.
        gone = [
            r
            for r in manager._checkpoint_results
            if r is not latest
            and r.checkpoint is not None
            and Path(r.checkpoint.path).is_absolute()
            and not Path(r.checkpoint.path).exists()
        ]
        if gone:
            forgotten += ["/".join(Path(r.checkpoint.path).parts[-2:]) for r in gone]
            manager._checkpoint_results = [
                r for r in manager._checkpoint_results if not any(r is g for g in gone)
            ]
        relinked = _relink(manager, meta, aside)
        if relinked:
            changed.append(relinked)
        recorded = None if relinked else _register_recorded(manager, meta, trial_dir)
        if recorded:
            registered.append(recorded)
        if gone or relinked or recorded:
            field["value"] = cloudpickle.dumps(manager).hex()
            entry[1] = json.dumps(meta, indent=2)
            _count_registered(entry, manager)
    if changed or forgotten or registered:
        aside.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(newest, aside / newest.name)
        write_atomic(newest, json.dumps(state))
    return changed, forgotten, registered
