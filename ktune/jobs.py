"""Ray Jobs: ``ktune submit`` and ``ktune jobs``.

A search is submitted to a cluster's head as a Ray Job through
``ray.job_submission.JobSubmissionClient``. The runtime env ships the experiment file
(and local data files it names) as the job's working directory, and with
``--with-project`` also the ktune package itself (``py_modules``), so a cluster whose image
has ktune's dependencies runs this checkout's code. The job's driver runs
``python -m ktune run experiment.yaml --address auto`` on the head.

Token authentication (on by default in Ray 2.60) stays on. The client sends
``Authorization: Bearer <token>`` with the token from :func:`auth_token` (on a cluster,
``ray get-auth-token`` on the head prints it).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import yaml

from ktune.config import ExperimentConfig, load_config
from ktune.errors import ConfigError, ExperimentError
from ktune.experiment_dir import EXPERIMENT_FILE
from ktune.storage import is_uri
from ktune.tables import render_table, value_text

__all__ = ["submit", "follow", "list_jobs", "auth_token", "job_runtime_env"]

# The job's working directory names its copy of the experiment file as an experiment folder does.
EXPERIMENT_NAME = EXPERIMENT_FILE

# Seconds Ray's job supervisor waits after `ray job stop`'s SIGTERM before it SIGKILLs the
# job's driver (RAY_JOB_STOP_WAIT_TIME_S; Ray's default, 3 s, cut a search's stop short: its
# last snapshot, interrupted.json and Ray's shutdown, so the stop read as a crash). The
# supervisor runs with the job's env_vars; the driver exits as soon as its stop is done.
STOP_WAIT_S = 60


def auth_token(address: str) -> str | None:
    """The Ray auth token this client sends to ``address``, or None.

    ``RAY_AUTH_TOKEN`` first, then the file named by ``RAY_AUTH_TOKEN_PATH`` (an error if it
    cannot be read), then Ray's own ``~/.ray/auth_token`` -- the latter only for a head on
    this machine or with ``RAY_AUTH_MODE=token``, so a laptop's local token is not sent to
    every cluster.
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        path = Path(named).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH: cannot read {path} ({e.strerror})") from None
        if not token:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH: {path} is empty")
        return token
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    local = host in ("127.0.0.1", "localhost", "::1")
    default = Path.home() / ".ray" / "auth_token"
    if (local or os.environ.get("RAY_AUTH_MODE") == "token") and default.is_file():
        return default.read_text().strip() or None
    return None


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    token = auth_token(address)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as e:  # noqa: BLE001 - connection and auth errors come in many kinds
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if "401" in str(e) or "403" in str(e) or "uthenticat" in str(e):
            hint = (
                "; the cluster needs its auth token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                "(`ray get-auth-token` on the head prints it)"
            )
        raise ExperimentError(
            f"--address {address}: cannot reach the Ray Jobs API ({text}){hint}"
        ) from None


def job_runtime_env(cfg: ExperimentConfig, workdir: Path, with_project: bool) -> dict:
    """Writes the job's working directory (experiment file, local data) and its runtime env."""
    if not cfg.source_path:
        raise ConfigError("a job ships its experiment file: load the config with load_config(path)")
    raw = yaml.safe_load(Path(cfg.source_path).read_text(encoding="utf-8")) or {}
    data = dict(raw.get("data") or {})
    # Local data files travel with the job; the copy of the experiment names them relatively.
    for key in ("train", "test"):
        path = getattr(cfg.data, key) if cfg.data.source in ("csv", "jsonl") else None
        if path:
            target = workdir / "data" / f"{key}{Path(path).suffix}"
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(path, target)
            data[key] = str(target.relative_to(workdir))
    if data:
        raw["data"] = data
    if isinstance(raw.get("model"), dict):
        raw["model"] = _ship_model_files(raw["model"], workdir, Path(cfg.base_dir or "."))
    (workdir / EXPERIMENT_NAME).write_text(yaml.safe_dump(raw, sort_keys=False))
    # Only the supervisor's variable here: the driver's ray.init sets the trials' own, and
    # Ray refuses a job whose runtime env names the same variables as its driver's.
    wait = os.environ.get("RAY_JOB_STOP_WAIT_TIME_S", str(STOP_WAIT_S))
    env: dict[str, Any] = {
        "working_dir": str(workdir),
        "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": wait},
    }
    if with_project:
        env["py_modules"] = [str(Path(__file__).resolve().parent)]
    return env


def _ship_model_files(model: dict, workdir: Path, base_dir: Path) -> dict:
    """The model section of the job's experiment file, with what it names locally copied
    into the job's working directory (the job's driver runs there, on the cluster):

    - a relative model path that exists here (``model.name``, ``model.tokenizer``,
      ``model.preprocess``, ``model.encoder``; for a ``{L}``/``{H}`` template, the folder
      above its first placeholder): copied under ``model_files/``, and the path rewritten
      to the copy, so it resolves in the job as it did here. Absolute paths are the
      cluster's own (shared storage), and names that are not local folders (Hugging Face
      ids, TF Hub URLs) are left as written;
    - ``model.build``'s module when it lies beside the experiment file (a module or a
      package of that folder; one on ``sys.path`` must be on the cluster's image).
    """
    model = dict(model)
    shipped: dict[Path, str] = {}  # a local folder -> its copy's relative path
    for key, value in model.items():
        if key == "build" or not isinstance(value, str) or "://" in value:
            continue
        path = Path(value)
        if path.is_absolute() or value.startswith("~"):
            continue
        head = []
        for part in path.parts:
            if "{" in part:
                break
            head.append(part)
        local = Path(*head) if head else None
        if local is None or not local.exists():
            continue  # a Hub name, or a template whose folder is not here
        source = local.resolve()
        if source not in shipped:
            name = f"model_files/{source.name}"
            if name in shipped.values():
                name = f"model_files/{len(shipped)}-{source.name}"
            (workdir / name).parent.mkdir(exist_ok=True)
            _copy(source, workdir / name)
            shipped[source] = name
        model[key] = "/".join([shipped[source], *path.parts[len(head) :]])
    build = model.get("build")
    if isinstance(build, str) and ":" in build:
        top = build.partition(":")[0].split(".")[0]
        for found in (base_dir / top, base_dir / f"{top}.py"):
            if found.exists() and not (workdir / found.name).exists():
                _copy(found, workdir / found.name)
    return model


def _copy(source: Path, target: Path) -> None:
    """A file or a folder (without Python's caches) into the job's working directory."""
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copyfile(source, target)


def _refusal_text(error: BaseException) -> str:
    """The Jobs API's refusal in a line: its status, and the server's own error (the last
    ``...Error: ...`` line of the tracebacks it sends) rather than the tracebacks."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    head = lines[0].split(": Traceback", 1)[0]
    errors = [line for line in lines[1:] if re.match(r"[\w.]*(Error|Exception): ", line)]
    return (f"{head}: {errors[-1]}" if errors else head)[:300]


def submit(
    experiment: str | Path,
    address: str,
    *,
    with_project: bool = False,
    num_samples: int | None = None,
    storage: str | None = None,
    submission_id: str | None = None,
    verbose: bool = False,
) -> tuple[str, str]:
    """Validates the experiment locally, submits it; returns (job id, dashboard URL)."""
    cfg = load_config(experiment, num_samples=num_samples, storage=storage)
    raw = yaml.safe_load(Path(experiment).read_text(encoding="utf-8")) or {}
    given = storage if storage is not None else raw.get("storage", "results")
    if not is_uri(str(given)) and not Path(str(given)).expanduser().is_absolute():
        key = "--storage" if storage is not None else "storage"
        raise ConfigError(
            f"{key}: '{given}' is relative, so the job's results would stay in its temporary "
            "working directory on the cluster; use an absolute path on storage every node "
            "shares (NFS) or a cloud URI, e.g. --storage /mnt/shared/ktune or s3://bucket/ktune"
        )
    client = _client(address)
    entrypoint = ["python", "-m", "ktune", "run", EXPERIMENT_NAME, "--address", "auto"]
    if num_samples is not None:
        entrypoint += ["--num-samples", str(num_samples)]
    entrypoint += ["--storage", cfg.storage]
    if verbose:
        entrypoint.append("--verbose")
    with tempfile.TemporaryDirectory(prefix="ktune-job-") as tmp:
        runtime_env = job_runtime_env(cfg, Path(tmp), with_project)
        try:
            job_id = client.submit_job(
                entrypoint=" ".join(entrypoint),
                runtime_env=runtime_env,
                submission_id=submission_id,
                metadata={"ktune_experiment": cfg.name},
            )
        except Exception as e:  # noqa: BLE001 - the Jobs API's refusals come in many kinds
            text = _refusal_text(e)
            raise ExperimentError(
                f"--address {address}: the job was not submitted ({text})"
            ) from None
    return job_id, f"{address.rstrip('/')}/#/jobs/{job_id}"


def follow(address: str, job_id: str, out=None) -> str:
    """Streams the job's logs until it ends; returns its final status name."""
    import asyncio

    out = out or sys.stdout
    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    # the log stream ends with the job; its status may lag by a moment
    for _ in range(60):
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value)
        time.sleep(1)
    return str(client.get_job_status(job_id).value)


def list_jobs(address: str) -> list[dict]:
    jobs = _client(address).list_jobs()
    rows = []
    for job in sorted(jobs, key=lambda j: j.start_time or 0):
        rows.append(
            {
                "job": job.submission_id or job.job_id,
                "status": str(job.status.value),
                "experiment": (job.metadata or {}).get("ktune_experiment", ""),
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))
                if job.start_time
                else "",
                "entrypoint": job.entrypoint,
            }
        )
    return rows


def format_jobs(rows: Sequence[dict]) -> str:
    """The jobs of :func:`list_jobs` as a fixed-width table (``ktune jobs``)."""
    cols = ["job", "status", "experiment", "started", "entrypoint"]
    return render_table(cols, [[value_text(r[c]) for c in cols] for r in rows])
