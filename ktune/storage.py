"""Where experiments live: a local folder, or a cloud URI such as ``s3://bucket/prefix``.

A ``storage`` value with a scheme (``s3://``, ``gs://``, ``abfs://``, ``file://``,
anything ``pyarrow.fs.FileSystem.from_uri`` accepts) is kept as a URI, query included
(``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``), and handed to Ray Tune
as ``RunConfig(storage_path=...)`` unchanged: Ray persists the trials' results and
checkpoints there through ``pyarrow.fs``. ktune's own driver-side files (the Optuna
journal, ``results.csv``, ``best.json``, ``experiment.yaml``, ``ktune.json``, the export)
are written to a local staging folder and uploaded to ``<uri>/<name>/`` under the same
names, so a remote experiment folder looks like a local one.

This module owns the URI handling: parsing a location without touching the network
(:func:`check_uri`), joining paths onto a URI without losing its query (:func:`join`), and
the few file operations ktune needs (exists, read/write text, upload/download a folder,
delete). Errors reaching the storage are :class:`~ktune.errors.ExperimentError` lines
that name the location; credentials embedded in a URI are never printed.

Credentials come from the environment of each process that touches the storage, the
driver and every Ray worker alike (for S3: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, or an instance
profile), as with any Ray Tune ``storage_path``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Iterable

from ktune.errors import ConfigError, ExperimentError
from ktune.tables import last_line

__all__ = [
    "is_uri",
    "check_reachable",
    "check_local_writable",
    "check_uri",
    "join",
    "basename",
    "redact",
    "filesystem",
    "exists",
    "is_nonempty_dir",
    "read_text",
    "write_text",
    "upload_file",
    "upload_dir",
    "download_dir",
    "delete_dir",
    "list_files",
    "list_dir",
    "staging_root",
    "staging_dir",
    "temporary_dir",
    "parent",
    "sibling",
    "write_atomic",
]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(value: str) -> bool:
    """True for ``scheme://...`` (a cloud or ``file://`` URI), False for a plain path."""
    return bool(_SCHEME.match(str(value)))


def redact(uri: str) -> str:
    """``uri`` with any ``user:password@`` (S3 keys in the URI) replaced by ``***@``."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _last_line(error: BaseException) -> str:
    return last_line(str(error)) or type(error).__name__


def check_uri(key: str, uri: str) -> str:
    """Validates a storage URI's syntax (scheme, bucket, query) without network access.

    pyarrow decides what is valid. For S3 it would resolve the bucket's region over the
    network when neither ``region`` nor ``endpoint_override`` is given; a placeholder
    region is added for this check only (the URI itself is returned unchanged, and Ray
    resolves the region when the search starts).

    Raises:
        ConfigError: one line naming ``key`` (``storage``, ``--storage``, ``export.dir``).
    """
    import pyarrow.fs

    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    query = urllib.parse.parse_qs(parts.query)
    probe = uri
    if scheme == "s3" and "region" not in query and "endpoint_override" not in query:
        probe = urllib.parse.urlunsplit(
            parts._replace(query="&".join(filter(None, [parts.query, "region=us-east-1"])))
        )
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(probe)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ValueError, ...
        raise ConfigError(
            f"{key}: not a storage URI pyarrow can open ({redact(uri)}): {_last_line(e)}"
        ) from None
    if not path.strip("/") and not isinstance(fs, pyarrow.fs.LocalFileSystem):
        raise ConfigError(f"{key}: the URI must name a bucket or container, got {redact(uri)!r}")
    if parts.fragment:
        raise ConfigError(f"{key}: a storage URI cannot have a '#' fragment, got {redact(uri)!r}")
    return uri


def join(base: str, *parts: str) -> str:
    """``base/part/...``: for a URI the path grows and the query stays at the end."""
    if not is_uri(base):
        return str(Path(base, *parts))
    split = urllib.parse.urlsplit(base)
    path = "/".join([split.path.rstrip("/"), *(p.strip("/") for p in parts)])
    if not split.netloc and not path.startswith("/"):
        path = "/" + path
    return urllib.parse.urlunsplit(split._replace(path=path))


def basename(location: str) -> str:
    """The last path component of a path or URI (without the URI's query)."""
    path = urllib.parse.urlsplit(location).path if is_uri(location) else str(location)
    return path.rstrip("/").rsplit("/", 1)[-1]


def filesystem(uri: str, key: str = "storage"):
    """``(pyarrow filesystem, path on it)`` for ``uri``; one clear error if it cannot open."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as e:
        raise ExperimentError(f"{key}: cannot open {redact(uri)}: {_last_line(e)}") from None


def _info(uri: str, key: str):
    fs, path = filesystem(uri, key)
    try:
        return fs, path, fs.get_file_info(path)
    except Exception as e:
        raise ExperimentError(f"{key}: cannot reach {redact(uri)}: {_last_line(e)}") from None


def check_reachable(uri: str, key: str = "storage") -> None:
    """Raises one clear line unless the bucket (container) of ``uri`` can be read.

    Object stores answer "not found" for any path in a bucket that does not exist, so a
    typo in the bucket name would only surface once Ray starts writing.
    """
    import pyarrow.fs

    fs, path = filesystem(uri, key)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        return
    bucket = path.lstrip("/").split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except Exception as e:
        raise ExperimentError(f"{key}: cannot reach {redact(uri)}: {_last_line(e)}") from None
    if info.type == pyarrow.fs.FileType.NotFound:
        raise ExperimentError(f"{key}: no bucket {bucket!r} at {redact(uri)} (or no access to it)")


# Below this, a run would stop at its first checkpoint or leave a half-written export.
MIN_FREE_BYTES = 50 * 2**20


def check_local_writable(path: str | Path, key: str = "storage") -> None:
    """Raises one line naming ``key`` unless a run can create and fill the local folder
    ``path``; touches nothing.

    Walks up to the nearest part of ``path`` that exists: it must be a folder (not a
    file, a device or a broken link), ktune must be allowed to create entries in it, and
    its disk must have at least :data:`MIN_FREE_BYTES` free. Found here, before any data
    loads, these would otherwise surface as a traceback part-way through a run.

    Raises:
        ExperimentError: ``storage: /runs/results is a file, not a folder``, and the like.
    """
    target = Path(path)
    here = target
    while not os.path.exists(here):
        if os.path.lexists(here):
            raise ExperimentError(f"{key}: {here} is a broken symbolic link")
        if here.parent == here:
            return  # nothing of it exists, not even a root: leave it to the OS
        here = here.parent
    if not os.path.isdir(here):
        what = "a file" if os.path.isfile(here) else "not a file or folder"
        if here == target:
            raise ExperimentError(f"{key}: {here} is {what}, not a folder")
        raise ExperimentError(f"{key}: cannot create {target}: {here} is {what}, not a folder")
    need = os.W_OK | os.X_OK | (os.R_OK if here == target else 0)
    if not os.access(here, need):
        raise ExperimentError(f"{key}: cannot write in {here} (permission denied)")
    try:
        free = shutil.disk_usage(here).free
    except OSError:
        return
    if free < MIN_FREE_BYTES:
        raise ExperimentError(
            f"{key}: only {free / 2**20:.0f} MB free on the disk of {here}; a run needs at "
            f"least {MIN_FREE_BYTES // 2**20} MB (free some space or choose another {key})"
        )


def exists(uri: str, key: str = "storage") -> bool:
    """True when a file or a non-empty folder is at ``uri``."""
    import pyarrow.fs

    _, _, info = _info(uri, key)
    return info.type != pyarrow.fs.FileType.NotFound


def is_nonempty_dir(uri: str, key: str = "storage") -> bool:
    """True when ``uri`` holds anything at all (object stores have no empty folders)."""
    import pyarrow.fs

    fs, path, info = _info(uri, key)
    if info.type == pyarrow.fs.FileType.NotFound:
        return False
    if info.type == pyarrow.fs.FileType.File:
        return True
    return bool(_listing(fs, path, uri, key))


def list_files(uri: str, key: str = "storage") -> list[str]:
    """Every file under the folder ``uri``, as paths relative to it (sorted)."""
    import pyarrow.fs

    fs, path = filesystem(uri, key)
    try:
        infos = fs.get_file_info(
            pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True)
        )
    except Exception as e:
        raise ExperimentError(f"{key}: cannot list {redact(uri)}: {_last_line(e)}") from None
    root = path.rstrip("/") + "/"
    return sorted(
        i.path[len(root) :]
        for i in infos
        if i.type == pyarrow.fs.FileType.File and i.path.startswith(root)
    )


def list_dir(uri: str, key: str = "storage") -> list[str]:
    """The names directly inside the folder ``uri`` (sorted; one listing, not recursive)."""
    fs, path = filesystem(uri, key)
    return sorted(i.base_name for i in _listing(fs, path, uri, key))


def _listing(fs, path: str, uri: str, key: str) -> list:
    """pyarrow's one-level listing of ``path`` on ``fs`` (empty when it does not exist)."""
    import pyarrow.fs

    try:
        return fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except Exception as e:
        raise ExperimentError(f"{key}: cannot list {redact(uri)}: {_last_line(e)}") from None


def read_text(uri: str, key: str = "storage") -> str:
    fs, path = filesystem(uri, key)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise ExperimentError(f"{key}: {redact(uri)}: no such file") from None
    except Exception as e:
        raise ExperimentError(f"{key}: cannot read {redact(uri)}: {_last_line(e)}") from None


def write_text(uri: str, text: str, key: str = "storage") -> None:
    """Writes one object; on object stores it appears whole or not at all."""
    fs, path = filesystem(uri, key)
    try:
        with fs.open_output_stream(path) as f:
            f.write(text.encode("utf-8"))
    except Exception as e:
        raise ExperimentError(f"{key}: cannot write {redact(uri)}: {_last_line(e)}") from None


def upload_file(local: str | Path, uri: str, key: str = "storage") -> None:
    fs, path = filesystem(uri, key)
    try:
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            fs.create_dir(parent)
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    except Exception as e:
        raise ExperimentError(
            f"{key}: cannot upload {local} to {redact(uri)}: {_last_line(e)}"
        ) from None


def upload_dir(
    local: str | Path, uri: str, *, last: Iterable[str] = (), key: str = "storage"
) -> None:
    """Copies the folder ``local`` to ``uri``, file by file; the files named in ``last``
    (relative paths, e.g. ``saved_model.pb``) go after everything else, so a reader that
    sees them sees a complete copy."""
    local = Path(local)
    at_end = [Path(p) for p in last]
    files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
    ordered = [p for p in files if p not in at_end] + [p for p in at_end if p in files]
    for rel in ordered:
        upload_file(local / rel, join(uri, rel.as_posix()), key)


def download_dir(
    uri: str, local: str | Path, *, exclude: Iterable[str] = (), key: str = "storage"
) -> Path:
    """Copies the folder ``uri`` into ``local`` (created); returns ``local``.

    ``exclude``: glob patterns matched against each relative path's parts
    (``checkpoint_*`` skips every checkpoint folder).
    """
    import fnmatch

    fs, path = filesystem(uri, key)
    local = Path(local)
    patterns = list(exclude)
    for rel in list_files(uri, key):
        if any(fnmatch.fnmatch(part, pat) for part in rel.split("/") for pat in patterns):
            continue
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = f"{path.rstrip('/')}/{rel}"
        try:
            with fs.open_input_stream(source) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        except Exception as e:
            raise ExperimentError(
                f"{key}: cannot download {redact(join(uri, rel))}: {_last_line(e)}"
            ) from None
    return local


def delete_dir(uri: str, key: str = "storage", *, missing_ok: bool = True) -> None:
    import pyarrow.fs

    fs, path = filesystem(uri, key)
    try:
        info = fs.get_file_info(path)
        if info.type == pyarrow.fs.FileType.NotFound:
            if missing_ok:
                return
            raise FileNotFoundError(path)
        if info.type == pyarrow.fs.FileType.File:
            fs.delete_file(path)
        else:
            fs.delete_dir(path)
    except Exception as e:
        raise ExperimentError(f"{key}: cannot delete {redact(uri)}: {_last_line(e)}") from None


def staging_root() -> Path:
    """Local root of the staging folders: ``$KTUNE_STAGING_DIR``, else
    ``$KTUNE_CACHE_DIR/staging`` (default ``~/.cache/ktune/staging``)."""
    explicit = os.environ.get("KTUNE_STAGING_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    cache = os.environ.get("KTUNE_CACHE_DIR") or os.path.join("~", ".cache", "ktune")
    return (Path(cache).expanduser() / "staging").resolve()


def staging_dir(experiment_uri: str) -> Path:
    """The driver's local working copy of the remote experiment ``experiment_uri``:
    ``<staging root>/<hash of the URI>/<name>`` (one per remote location)."""
    digest = hashlib.sha256(experiment_uri.encode("utf-8")).hexdigest()[:16]
    return staging_root() / digest / basename(experiment_uri)


def temporary_dir(prefix: str = "ktune-") -> Path:
    """A fresh local folder for a download (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def parent(location: str) -> str:
    """The folder holding ``location`` (a path or a URI; a URI keeps its query)."""
    if not is_uri(location):
        return str(Path(location).parent)
    split = urllib.parse.urlsplit(location)
    path = split.path.rstrip("/").rsplit("/", 1)[0]
    return urllib.parse.urlunsplit(split._replace(path=path))


def sibling(location: str, name: str) -> str:
    """``name`` beside ``location`` (same folder, same query)."""
    return join(parent(location), name)


def write_atomic(path: str | Path, data: bytes | str, *, fsync: bool = False) -> None:
    """Writes ``path`` whole or not at all: a hidden temporary sibling, then ``os.replace``.

    A reader (or a resume after a kill) sees the old file or the new one, never a part.
    ``fsync=True`` also flushes the data to disk before the rename, for files a crash of
    the machine must not leave empty.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as out:
        out.write(data.encode("utf-8") if isinstance(data, str) else data)
        if fsync:
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)
