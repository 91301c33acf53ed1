"""What an experiment folder ``<storage>/<name>`` holds besides Ray's own files, read and
written in one place.

- ``experiment.yaml``: the experiment as run (the file itself, or the experiment as parsed
  when Python passed a dict or merged sections into the file);
- ``ktune.json`` (the *spec*): what export needs to rebuild a trial's model (family,
  training sizes, class names, artefacts such as the vocabulary, texts to verify an
  export on), and where the experiment and its staging folder are;
- ``optuna.journal``: the Optuna study, written while the search runs;
- ``results.csv``: one row per trial; ``best.json``: the best trial, with its test
  accuracy and confusion matrix;
- ``export/``: the default place of the exported SavedModel.

An experiment on a URI (``s3://bucket/prefix/name``) is read by downloading ktune's files
(:func:`fetch_experiment`) into a local folder; from there on everything reads a local
folder. The search itself writes to a local staging folder and uploads (``staging.py``).
Every file is written whole or not at all (:func:`ktune.storage.write_atomic`).

This module imports nothing heavier than pandas (for ``results.csv``, on first use), so
the experiment runner, the export and the report all read through it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ktune import storage
from ktune.errors import ExperimentError

if TYPE_CHECKING:
    from ktune.config import ExperimentConfig

log = logging.getLogger("ktune")

__all__ = [
    "EXPERIMENT_FILE",
    "METADATA_FILE",
    "SPEC_FILE",
    "JOURNAL_FILE",
    "RESULTS_FILE",
    "BEST_FILE",
    "INTERRUPTED_FILE",
    "DRIVER_FILE",
    "EXPORT_DIR",
    "front_trial",
    "export_is_of",
    "read_spec",
    "read_experiment",
    "refuse_relocated",
    "ray_statuses",
    "RAY_ENDED",
    "read_best",
    "relocated",
    "read_results",
    "read_remote_spec",
    "fetch_experiment",
    "staging_folder",
    "stage_remote",
    "export_complete",
    "export_cut_off",
    "check_replaceable_uri",
    "recover_cut_replace",
    "trials_unknown_to_ray",
    "trial_histories",
    "STOP_LOG",
    "clear_working_copy",
    "new_spec",
    "write_experiment_file",
    "write_spec",
    "write_results",
    "write_best",
    "write_interrupted",
    "write_driver_file",
]

EXPERIMENT_FILE = "experiment.yaml"
SPEC_FILE = "ktune.json"
JOURNAL_FILE = "optuna.journal"
RESULTS_FILE = "results.csv"
BEST_FILE = "best.json"
# The trials ktune's ASHA stopped, and at which epoch (ktune.schedulers.RevisingASHA).
STOP_LOG = ".ktune-asha-stops"
# Written when Ctrl+C or SIGTERM stopped the search (ktune.search_end): what was cut off,
# so `ktune report` tells an interrupted search from a running one. A resume that trains
# again makes it stale (the report compares times), and best.json supersedes it.
INTERRUPTED_FILE = "interrupted.json"
# the process that runs the search, and whether it ended (ktune.driver)
DRIVER_FILE = "driver.json"
EXPORT_DIR = "export"
METADATA_FILE = "metadata.json"  # an export's record, written before saved_model.pb

# The key under which a URI's problems are reported (the CLI's argument name).
_KEY = "EXPERIMENT_DIR"


# --- reading ----------------------------------------------------------------------------


def missing_dir(d: Path) -> ExperimentError:
    """The error for an experiment folder ``d`` that is not a folder: a file given where
    the folder belongs (``ktune resume exp.yaml``) is told where the folder is."""
    if d.is_file():
        return ExperimentError(
            f"{d}: a file, not an experiment directory (ktune run takes the experiment "
            "file; resume, export and report take the folder it made, STORAGE/NAME)"
        )
    return ExperimentError(f"{d}: no such experiment directory")


def read_spec(exp_dir: str | Path) -> dict:
    """``ktune.json`` of the local experiment folder ``exp_dir``; one clear error when the
    folder is missing, is not a ktune experiment, or its spec cannot be read."""
    d = Path(exp_dir)
    if not d.is_dir():
        raise missing_dir(d)
    if not (d / SPEC_FILE).is_file():
        raise ExperimentError(f"{d}: not a ktune experiment directory (no {SPEC_FILE})")
    spec = _json_object(d, SPEC_FILE)
    return relocated(spec, spec.get("experiment_path"), d)


# Ray's statuses of a trial that ended (one that finished or was stopped, or failed)
RAY_ENDED = ("TERMINATED", "ERROR")


def refuse_relocated(d: Path, shown: str) -> None:
    """Refuses to resume the local folder ``d`` when its search ran in another folder
    (ktune.json's ``experiment_path``): moved or copied since, with trials left to run.
    Ray's snapshot and the Optuna searcher name the folder the search ran in, so a resume
    here would fail on the study's journal there, or, in a copy, write new trials and the
    study into the original. One whose trials all ended (stopped while it evaluated or
    exported) only finishes here."""
    try:
        spec = _json_object(d, SPEC_FILE)
    except ExperimentError:
        return  # the resume's own reading says what is wrong with it
    ran_in = spec.get("experiment_path")
    if isinstance(ran_in, str) and not storage.is_uri(ran_in):
        if Path(ran_in).resolve() != d.resolve() and not _trials_over(d, spec.get("num_samples")):
            raise ExperimentError(
                f"{shown}: the search ran in {ran_in}, and this folder was moved or copied "
                "here since; Ray's search state names the folder it ran in, so it resumes "
                "only there (`ktune report`, `ktune export` and `ktune.load` read it here)"
            )


def _trials_over(d: Path, num_samples: Any) -> bool:
    """Whether Ray's newest snapshot in ``d`` holds ``num_samples`` trials, all ended: a
    resume then only finishes the run (test evaluation, best.json, export) and neither
    the searcher nor Ray's storage of new trials is used."""
    status = ray_statuses(d)
    ended = all(s in RAY_ENDED for s in status.values())
    return isinstance(num_samples, int) and len(status) >= num_samples and ended


def ray_statuses(exp_dir: Path) -> dict[str, str]:
    """trial_<id> -> Ray's status in the newest experiment snapshot (empty if unreadable).

    Newest by name (the session's start), as Ray's restore picks it: not by time of
    writing, since a resume's repair may write an older session's file again."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    for path in reversed(states):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            out = {}
            for entry in data.get("trial_data", []):
                meta = entry[0] if isinstance(entry, (list, tuple)) else entry
                meta = json.loads(meta) if isinstance(meta, str) else meta
                out[f"trial_{meta['trial_id']}"] = str(meta.get("status", ""))
            return out
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue  # cut short: the one before
    return {}


def trials_unknown_to_ray(exp_dir: Path) -> list[str]:
    """The trial folders holding a checkpoint that Ray's newest snapshot does not name:
    trials that started after it, which a restore cannot know (none when no snapshot
    is readable)."""
    known = ray_statuses(exp_dir)
    return [
        t.name
        for t in sorted(exp_dir.glob("trial_*"))
        if known and t.name not in known and any(t.glob("checkpoint_*"))
    ]


def read_experiment(exp_dir: str | Path) -> tuple[dict, dict]:
    """(spec, best) of a finished local experiment; one clear error when either is missing."""
    spec = read_spec(exp_dir)
    best = read_best(exp_dir)
    if best is None:
        raise ExperimentError(
            f"{Path(exp_dir)}: its search has not finished (no {BEST_FILE}: it is written "
            "when the search ends; ktune resume finishes a stopped one)"
        )
    return spec, best


def read_best(exp_dir: str | Path) -> dict | None:
    """``best.json`` of the local experiment folder ``exp_dir`` (the search finished), or
    None when there is none yet; one clear error when it cannot be read."""
    d = Path(exp_dir)
    if not (d / BEST_FILE).is_file():
        return None
    best = _json_object(d, BEST_FILE)
    ran_in = (
        _json_object(d, SPEC_FILE).get("experiment_path") if (d / SPEC_FILE).is_file() else None
    )
    return relocated(best, ran_in, d)


def relocated(doc: Any, ran_in: Any, here: Path) -> Any:
    """``doc`` (``ktune.json``'s or ``best.json``'s contents) with every local path inside
    the folder the search ran in (``ran_in``: ktune.json's ``experiment_path``) rebased
    onto ``here``, where the folder is read now. A moved or copied experiment reads its
    own checkpoints and export: never the original's, gone or changed since."""
    if not isinstance(ran_in, str) or not ran_in or storage.is_uri(ran_in):
        return doc
    old, new = ran_in.rstrip("/"), str(Path(here).resolve())
    if old == new:
        return doc

    def move(value: Any) -> Any:
        if isinstance(value, str) and (value == old or value.startswith(old + "/")):
            return new + value[len(old) :]
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return move(doc)


def _json_object(d: Path, name: str) -> dict:
    """``d/name`` as a JSON object; one clear error naming it when it cannot be read."""
    try:
        data = json.loads((d / name).read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ExperimentError(f"{d}: unreadable {name} ({e})") from None
    return data


def front_trial(best: dict, trial: str | None) -> dict:
    """``best.json``'s record of ``trial`` (None: the best trial): the best trial, or a
    trial of a multi-objective search's Pareto front (``pareto_front``)."""
    if trial is None or trial == best["trial"]:
        return best
    front = best.get("pareto_front") or []
    for entry in front:
        if entry["trial"] == trial:
            return {**entry, "metrics": entry["objectives"]}
    if not front:
        raise ExperimentError(
            f"--trial: this search has one objective, so no Pareto front to export "
            f"{trial} from (search.objectives); its best trial is {best['trial']}"
        )
    known = ", ".join(e["trial"] for e in front)
    raise ExperimentError(
        f"--trial: {trial} is not a trial of the Pareto front; exportable: {known}"
    )


def export_complete(location: str, key: str = "export.dir") -> bool:
    """Whether the export at ``location`` (a folder or a URI) is whole: its
    ``saved_model.pb``, which every export writes last, is there. An upload to a URI cut
    off by a kill leaves the files before it (``metadata.json`` among them)."""
    if storage.is_uri(location):
        return storage.exists(storage.join(location, "saved_model.pb"), key)
    return (Path(location) / "saved_model.pb").is_file()


def export_cut_off(location: str, key: str = "export.dir") -> bool:
    """Whether ``location`` (a folder or a URI) holds an export's own files (its
    ``metadata.json``) without its ``saved_model.pb``: an export a kill cut off, not a
    folder of the user's."""
    meta = storage.join(location, METADATA_FILE)
    begun = storage.exists(meta, key) if storage.is_uri(location) else Path(meta).is_file()
    return begun and not export_complete(location, key)


def check_replaceable_uri(uri: str, key: str = "--out") -> None:
    """``force`` on a URI replaces an export, whole or cut off (:func:`export_cut_off`),
    never a folder on the storage that holds anything else (``--out s3://.../runs``
    would take the experiments under it): one clear line instead."""
    if (
        storage.is_nonempty_dir(uri, key)
        and not export_complete(uri, key)
        and not export_cut_off(uri, key)
    ):
        raise ExperimentError(
            f"{storage.redact(uri)}: exists and is not an export (no saved_model.pb); "
            "--force replaces only an export: choose another --out"
        )


def recover_cut_replace(uri: str, key: str = "--out") -> str | None:
    """Puts back the export a ``force`` replace on a URI left behind when it was cut off.

    ``ktune.export`` uploads the new export whole to a sibling ``.<name>.tmp-<pid>``,
    then deletes the old one and uploads the new one again: cut off in between, the
    target is gone or holds part of an export (no ``saved_model.pb``) and the only whole
    copy is that sibling. Its copy goes back to the target (``saved_model.pb`` last) and
    the sibling is removed. Returns the sibling put back, or None when there was nothing
    to do (a whole target; or no whole sibling: an upload cut off before the old export
    was touched left the old one as it was)."""
    if export_complete(uri, key):
        return None
    name = storage.basename(uri)
    whole = [
        storage.sibling(uri, entry)
        for entry in storage.list_dir(storage.parent(uri), key)
        if entry.startswith(f".{name}.tmp-") and export_complete(storage.sibling(uri, entry), key)
    ]
    if not whole:
        return None
    copy = whole[-1]  # one replace at a time; the last name if several were cut off
    work = storage.temporary_dir("ktune-export-")
    try:
        local = storage.download_dir(copy, work / "export", key=key)
        storage.delete_dir(uri, key)  # what the cut-off upload left
        storage.upload_dir(local, uri, last=["saved_model.pb"], key=key)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    storage.delete_dir(copy, key)
    log.warning(
        "%s: a --force replace of this export was cut off; its whole new copy (%s) is "
        "back in place",
        storage.redact(uri),
        storage.basename(copy),
    )
    return copy


def export_is_of(meta: dict, best: dict) -> bool:
    """Whether an export's ``metadata.json`` (``meta``) says it was made from ``best``
    (best.json's contents): its trial, its checkpoint folder (by name: the same in a copy
    of the experiment elsewhere) and its ensemble's seeds. A ``--force`` export of
    another trial to the same folder is not."""
    made = (meta.get("trial"), Path(str(meta.get("checkpoint"))).name)
    seeds = (best.get("ensemble") or {}).get("seeds")
    return made == (best.get("trial"), Path(str(best.get("checkpoint"))).name) and (
        meta.get("ensemble_seeds") == seeds
    )


def read_results(exp_dir: str | Path):
    """``results.csv`` as a pandas DataFrame, one row a trial."""
    import pandas as pd

    return pd.read_csv(Path(exp_dir) / RESULTS_FILE)


def read_remote_spec(uri: str) -> dict:
    """``ktune.json`` of the experiment at ``uri``; one clear error when there is none."""
    spec = storage.join(uri, SPEC_FILE)
    if not storage.exists(spec, _KEY):
        if not storage.is_nonempty_dir(uri, _KEY):
            raise ExperimentError(f"{storage.redact(uri)}: no such experiment directory")
        raise ExperimentError(
            f"{storage.redact(uri)}: not a ktune experiment directory (no {SPEC_FILE})"
        )
    return json.loads(storage.read_text(spec, _KEY))


def fetch_experiment(uri: str, local: str | Path, *, trials: bool = False) -> Path:
    """Downloads an experiment from a URI into the folder ``local``; returns it.

    ktune's files always; with ``trials`` also the trial folders without their
    checkpoints (what ``ktune report`` reads). One clear error when ``uri`` is not a
    ktune experiment.
    """
    if not storage.exists(storage.join(uri, SPEC_FILE), _KEY):
        if not storage.exists(uri, _KEY):
            raise ExperimentError(f"{storage.redact(uri)}: no such experiment directory")
        raise ExperimentError(
            f"{storage.redact(uri)}: not a ktune experiment directory (no {SPEC_FILE})"
        )
    local = Path(local)
    if trials:
        return storage.download_dir(
            uri,
            local,
            exclude=["checkpoint_*", EXPORT_DIR, f"{EXPORT_DIR}-*", ".export*"],
            key=_KEY,
        )
    local.mkdir(parents=True, exist_ok=True)
    names = (SPEC_FILE, BEST_FILE, RESULTS_FILE, EXPERIMENT_FILE, JOURNAL_FILE, DRIVER_FILE)
    for name in (*names, STOP_LOG):
        remote = storage.join(uri, name)
        if storage.exists(remote, _KEY):
            storage.write_atomic(local / name, storage.read_text(remote, _KEY))
    return local


@contextlib.contextmanager
def trial_histories(uri: str | None) -> Iterator[Path | None]:
    """The trials' folders of the experiment at ``uri`` without their checkpoints, in a
    temporary folder (None: a local experiment, read in place)."""
    if uri is None:
        yield None
        return
    tmp = storage.temporary_dir("ktune-histories-")
    try:
        yield fetch_experiment(uri, tmp, trials=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def staging_folder(uri: str, spec: dict | None = None) -> Path:
    """The local working copy of the remote experiment ``uri``: the folder its first run
    staged in (named in its spec), where Ray's saved Optuna searcher expects its journal."""
    if spec is None:
        spec = read_remote_spec(uri)
    return Path(spec.get("staging_dir") or storage.staging_dir(uri))


def clear_working_copy(d: Path, keep: Sequence[str] = ()) -> None:
    """Removes what ``d`` (a remote experiment's staging folder) holds but the names in
    ``keep`` (the claim of the process clearing it)."""
    if not d.is_dir():
        return
    for entry in d.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def stage_remote(uri: str, keep: Sequence[str] = ()) -> Path:
    """A fresh working copy of the remote experiment ``uri`` in its staging folder, for a
    resume: ktune's files downloaded, whatever an earlier run left there removed (the URI
    is the truth) but the names in ``keep``. One clear error when ``uri`` is not a ktune
    experiment."""
    d = staging_folder(uri)
    clear_working_copy(d, keep)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExperimentError(
            f"{d}: cannot create the run's staging folder here ({e.strerror}); Ray's "
            "saved searcher expects the Optuna journal at this path"
        ) from None
    return fetch_experiment(uri, d)


# --- writing ----------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    storage.write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_experiment_file(exp_dir: Path, text: str | bytes) -> None:
    """Writes the experiment as run (:func:`ktune.experiment_file.experiment_as_run`)."""
    storage.write_atomic(Path(exp_dir) / EXPERIMENT_FILE, text)


def new_spec(
    cfg: ExperimentConfig,
    class_names: Sequence[str],
    artefacts: dict,
    verify_texts: Sequence[str],
) -> dict:
    """``ktune.json`` of a new search: what export and resume need again."""
    return {
        "name": cfg.name,
        "family": cfg.family,
        "metric": cfg.search.metric,
        "mode": cfg.search.mode,
        "num_samples": cfg.search.num_samples,
        "export_dir": cfg.export_path,
        "export": cfg.export.enabled,  # as run (export=False, --no-export): so resumed
        "experiment_path": cfg.experiment_path,
        # URI storage: the local working copy; resume stages into the same folder,
        # where the Optuna searcher that Ray saved expects its journal.
        "staging_dir": str(cfg.experiment_dir) if cfg.remote else None,
        "training": asdict(cfg.training),
        "class_names": class_names,
        "artefacts": artefacts,
        "verify_texts": verify_texts,
        "data": asdict(cfg.data),
        "build_model": (cfg.model or {}).get("build") or None,
        # where relative paths were read (the experiment file's folder): model.build's
        # module is found there again on export and resume
        "build_base_dir": cfg.base_dir,
    }


def write_spec(exp_dir: Path, spec: dict) -> None:
    _write_json(Path(exp_dir) / SPEC_FILE, spec)


def write_results(exp_dir: Path, rows: Sequence[dict]) -> None:
    """``results.csv``: one row a trial (the columns of the rows' keys)."""
    import pandas as pd

    storage.write_atomic(Path(exp_dir) / RESULTS_FILE, pd.DataFrame(rows).to_csv(index=False))


def write_best(exp_dir: Path, best: dict) -> None:
    _write_json(Path(exp_dir) / BEST_FILE, best)


def write_interrupted(exp_dir: Path, info: dict) -> None:
    """``interrupted.json``: :meth:`ktune.search_end.SearchEnd.summary` of a stopped search."""
    _write_json(Path(exp_dir) / INTERRUPTED_FILE, info)


def write_driver_file(exp_dir: Path, info: dict) -> None:
    """``driver.json``: :func:`ktune.driver.identity` of the search's process, and when it
    ended."""
    _write_json(Path(exp_dir) / DRIVER_FILE, info)
