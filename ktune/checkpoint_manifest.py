"""Whether a checkpoint folder reached storage whole.

Ray uploads a trial's checkpoint folder file by file, several files at a time, into the
experiment folder. A run killed during that upload leaves a folder with some files, or
the start of one: ``ckpt.index`` may be there while the weights are not. ktune writes a
manifest into every checkpoint it reports (each file's name and size, written after the
files, so it describes the whole folder); a folder counts as complete only when its
manifest is there and every file it names is there with that size. Resuming trials and
``ktune resume``'s repairs consider complete folders only.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = [
    "MANIFEST_FILE",
    "METRICS_FILE",
    "TRIAL_FILE",
    "write_manifest",
    "is_complete",
    "reported_metrics",
]

MANIFEST_FILE = ".ktune-manifest.json"
TRIAL_FILE = "ktune_trial.json"  # what a ktune trial's checkpoint was made of (trainables.base)
METRICS_FILE = "metrics.json"  # what a checkpoint was reported with (ReportCheckpoint)


def write_manifest(folder: str) -> None:
    """Writes the manifest of every file now in ``folder`` (paths relative, ``/``-joined)."""
    sizes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel != MANIFEST_FILE:
                sizes[rel] = os.path.getsize(path)
    with open(os.path.join(folder, MANIFEST_FILE), "w") as f:
        json.dump({"files": sizes}, f, sort_keys=True)


def is_complete(folder: str, fs: Any = None) -> bool:
    """True when ``folder``'s manifest is there and every file it names has its size.

    ``fs`` is a ``pyarrow.fs.FileSystem`` (default: the local file system)."""
    if fs is None:  # without pyarrow's import (the report reads trial folders)
        try:
            with open(os.path.join(folder, MANIFEST_FILE)) as f:
                sizes = json.load(f)["files"]
            return bool(sizes) and all(
                os.path.getsize(os.path.join(folder, name)) == size for name, size in sizes.items()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
    import pyarrow.fs as pafs

    folder = folder.rstrip("/")
    try:
        with fs.open_input_stream(f"{folder}/{MANIFEST_FILE}") as f:
            sizes = json.loads(f.read())["files"]
        infos = fs.get_file_info([f"{folder}/{name}" for name in sizes])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(sizes) and all(
        info.type == pafs.FileType.File and info.size == size
        for info, size in zip(infos, sizes.values())
    )


def reported_metrics(checkpoint: Any) -> dict:
    """The metrics a ktune checkpoint was reported with (its ``metrics.json``), or {} when
    it has none, or it cannot be read or is not a JSON object.

    ``checkpoint`` is a local folder (``str`` or ``Path``) or a ``ray.tune.Checkpoint``,
    read where it lies through its own file system."""
    try:
        if hasattr(checkpoint, "filesystem"):  # (a Checkpoint is os.PathLike too)
            path = f"{checkpoint.path}/{METRICS_FILE}"
            with checkpoint.filesystem.open_input_stream(path) as f:
                out = json.loads(f.read())
        else:
            with open(os.path.join(checkpoint, METRICS_FILE), encoding="utf-8") as f:
                out = json.load(f)
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
    return out if isinstance(out, dict) else {}
