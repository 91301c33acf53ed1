"""Best checkpoint -> a verified TensorFlow SavedModel whose signature takes raw strings.

The exported ``serving_default`` takes a batch of strings (``tf.string``, shape
``[None]``) and returns ``probabilities`` (``[N, C]``), ``label`` (the predicted class
name), ``score`` (its probability) and ``class_names`` (``[N, C]``, the name of each
probability column). Tokenization is inside the graph, so the export needs no ktune to
load: ``tf.saved_model.load(dir).signatures["serving_default"](tf.constant([...]))``.

An export is written to a temporary sibling folder, reloaded and compared with the
restored Keras model on held-out texts, and only then moved into place.

The best checkpoint and the target may be URIs (``s3://...``). A checkpoint on a URI is
downloaded first. For a target on a URI the export is built and verified in a local
temporary folder and then uploaded file by file with ``saved_model.pb`` last: object
stores have no atomic folder rename, but every object appears whole, so an export whose
``saved_model.pb`` is there is complete. A failed upload removes what it wrote; with
``force`` the new export is first uploaded completely to a sibling
``.<name>.tmp-<pid>``, and only then is the old one replaced (at every moment one complete
copy exists, in the target or in that sibling); the next export to that URI puts a copy
left only in the sibling back in place first (:func:`recover_cut_replace`). As for a local
folder, ``force`` never replaces a folder on the storage that is not an export.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune import storage
from ktune.errors import ExperimentError, text_list
from ktune.experiment_dir import (
    METADATA_FILE,
    check_replaceable_uri,
    front_trial,
    read_experiment,
    recover_cut_replace,
)
from ktune.rebuild import family_of_record
from ktune.serving import ServingModule

__all__ = [
    "export_best",
    "export_checkpoint",
    "load_export",
    "predict",
    "ServingModule",
    "EXPORT_TOLERANCE",
]

EXPORT_TOLERANCE = 1e-5


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ktune", "tensorflow", "tf-keras", "ray", "optuna", "tensorflow-text"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def export_best(
    exp_dir: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    trial: str | None = None,
    model: Any = None,
) -> Path | str:
    """Exports the best trial of a finished experiment to ``out_dir``; returns it.

    ``exp_dir`` is a local folder holding ``ktune.json`` and ``best.json``; the best
    checkpoint they name and ``out_dir`` may be local paths or URIs. Refuses an existing
    ``out_dir`` unless ``force``; a previous export there is replaced only after the new
    one is written and verified (and, on a URI, uploaded). ``trial``: another trial of a
    multi-objective search's Pareto front (:func:`front_trial`). ``model``: the Keras
    model already restored from that checkpoint (the search's test evaluation hands it
    over), so it is not restored again.
    """
    spec, best = read_experiment(exp_dir)
    best = front_trial(best, trial)
    remote_out = storage.is_uri(str(out_dir))
    out = str(out_dir) if remote_out else str(Path(out_dir).resolve())
    shown = storage.redact(out)
    if remote_out:
        recover_cut_replace(out, "--out")
    if not force and (storage.exists(out, "--out") if remote_out else Path(out).exists()):
        raise ExperimentError(f"{shown}: export target already exists (use --force to replace it)")
    if remote_out:
        check_replaceable_uri(out, "--out")
    else:
        check_replaceable(Path(out))
    checkpoint = best["checkpoint"]
    remote_checkpoint = storage.is_uri(checkpoint)
    if remote_checkpoint:
        if not storage.exists(checkpoint, "checkpoint"):
            raise ExperimentError(
                f"{storage.redact(checkpoint)}: the best trial's checkpoint is missing"
            )
    elif not Path(checkpoint).is_dir():
        raise ExperimentError(f"{checkpoint}: the best trial's checkpoint is missing")

    work: Path | None = None
    try:
        checkpoint_dir = Path(checkpoint)
        if remote_checkpoint and model is None:
            work = storage.temporary_dir("ktune-export-")
            checkpoint_dir = storage.download_dir(checkpoint, work / "checkpoint", key="checkpoint")
        if not remote_out:
            return _export_local(spec, best, exp_dir, checkpoint_dir, Path(out), model)
        work = work or storage.temporary_dir("ktune-export-")
        built = _export_local(spec, best, exp_dir, checkpoint_dir, work / "export", model)
        _publish(built, out, force=force)
        return out
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _export_local(
    spec: dict, best: dict, exp_dir, checkpoint_dir: Path, out: Path, model: Any = None
) -> Path:
    """Builds, verifies and moves into place a SavedModel in the local folder ``out``."""
    from ktune.config import TrainingConfig

    family = family_of_record(spec)
    training = TrainingConfig(**spec["training"])
    if model is None and best.get("ensemble"):
        from ktune.ensemble import ensemble_model
        from ktune.trainables.base import restore_model
        from ktune.trainables.devices import driver_devices

        driver_devices()
        num_classes = len(spec["class_names"])
        first = restore_model(
            family, best["config"], spec["artefacts"], num_classes, training, str(checkpoint_dir)
        )
        model = ensemble_model(
            exp_dir,
            best,
            family,
            spec["artefacts"],
            num_classes,
            training,
            first,
            location=spec.get("experiment_path"),
        )
    ensemble = best.get("ensemble") or {}
    metadata = {
        "family": spec["family"],
        "experiment": spec.get("experiment_path") or str(Path(exp_dir).resolve()),
        "trial": best["trial"],
        # the exported model's validation metrics: with ensemble.seeds the ensemble's
        "metrics": ensemble.get("metrics") or best["metrics"],
        "test_accuracy": best.get("test_accuracy"),
        "checkpoint": best["checkpoint"],
        # ensemble.seeds: the mean of these seeds' models, the best trial's the first
        "ensemble_seeds": ensemble.get("seeds"),
    }
    if ensemble:
        metadata["trial_metrics"] = best["metrics"]  # the best trial's alone
    return export_checkpoint(
        family,
        best["config"],
        spec["artefacts"],
        spec["class_names"],
        training,
        checkpoint_dir,
        out,
        verify_texts=spec["verify_texts"],
        metadata=metadata,
        model=model,
        unescape_backslash=bool(spec.get("data", {}).get("unescape_backslash")),
    )


def check_replaceable(out: Path) -> None:
    """``--force`` replaces an export, never a folder that is not one (the experiment's
    own folder given as ``--out`` would be deleted with its trials and results)."""
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"{out}: not a folder; an export is written as a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "saved_model.pb").is_file():
        raise ExperimentError(
            f"{out}: exists and is not an export (no saved_model.pb); --force replaces only "
            "an export: choose another --out"
        )


def export_checkpoint(
    family: Any,
    config: dict,
    artefacts: dict,
    class_names: Sequence[str],
    training: Any,
    checkpoint_dir: str | Path,
    out: Path,
    *,
    verify_texts: Sequence[str],
    metadata: dict | None = None,
    model: Any = None,
    unescape_backslash: bool = False,
) -> Path:
    """A verified raw-string SavedModel of one trial's checkpoint, moved into ``out``.

    The model is rebuilt from ``config`` and the checkpoint, wrapped with the family's
    in-graph tokenizer, saved to a temporary sibling, reloaded and compared with the
    restored model on ``verify_texts`` (max abs difference <= :data:`EXPORT_TOLERANCE`),
    and only then moved into place; an existing ``out`` is replaced only at that moment.
    ``model``: that checkpoint's model, already restored (then ``checkpoint_dir`` is not
    read). ``unescape_backslash``: the export cleans raw texts as ``data.unescape_backslash``
    cleaned the training texts.
    """
    from ktune.trainables.base import restore_model
    from ktune.trainables.devices import driver_devices

    driver_devices()  # `ktune export` beside a running search: no GPU memory taken at once
    if model is None:
        model = restore_model(
            family, config, artefacts, len(class_names), training, str(checkpoint_dir)
        )
    encoder = family.string_encoder(artefacts, training)
    module = ServingModule(encoder, model, class_names, unescape_backslash)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        texts = list(verify_texts)
        expected = model.predict(family.encode(artefacts, training, texts), verbose=0)
        bad = [t for t, row in zip(texts, expected) if not np.all(np.isfinite(row))]
        if bad:
            raise ExperimentError(
                f"export check failed: the model outputs NaN or inf for {len(bad)} of "
                f"{len(texts)} check texts, e.g. {bad[0][:40]!r} (an all-padding input "
                "masked away entirely?); fix the model before exporting it"
            )
        got = load_export(tmp)(tf.constant(texts, tf.string))["probabilities"].numpy()
        diff = float(np.max(np.abs(got - expected)))
        if not diff <= EXPORT_TOLERANCE:
            raise RuntimeError(
                f"export check failed: reloaded SavedModel differs from the restored model "
                f"by {diff:.3g} > {EXPORT_TOLERANCE}"
            )
        from dataclasses import asdict, is_dataclass

        metadata = {
            **(metadata or {}),
            "config": config,
            "training": asdict(training)
            if is_dataclass(training) and not isinstance(training, type)
            else dict(training),
            "class_names": list(class_names),
            "unescape_backslash": unescape_backslash,
            "verified": {"texts": len(texts), "max_abs_diff": diff},
            "versions": _versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        if out.exists():  # force: the old export goes only once the new one is ready
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# Uploaded last: a reader that finds saved_model.pb finds every other file of the export.
_COMMIT_FILE = "saved_model.pb"


def _publish(local: Path, uri: str, *, force: bool) -> None:
    """Uploads the verified export ``local`` to ``uri`` without ever leaving a partial
    export where a complete one was (see the module docstring)."""
    if not storage.exists(uri, "--out"):
        try:
            storage.upload_dir(local, uri, last=[_COMMIT_FILE], key="--out")
        except BaseException:
            _delete_quietly(uri)  # nothing half-written claims to be an export
            raise
        return
    staged = storage.sibling(uri, f".{storage.basename(uri)}.tmp-{os.getpid()}")
    try:
        storage.upload_dir(local, staged, last=[_COMMIT_FILE], key="--out")
    except BaseException:
        _delete_quietly(staged)  # the old export was not touched
        raise
    # A complete new copy is in `staged`; only now does the old export go.
    storage.delete_dir(uri, "--out")
    storage.upload_dir(local, uri, last=[_COMMIT_FILE], key="--out")
    _delete_quietly(staged)


def _delete_quietly(uri: str) -> None:
    try:
        storage.delete_dir(uri, "--out")
    except Exception:  # best effort: the caller reports the original error
        pass


def _remove_stale_siblings(out: Path) -> None:
    """Temporary folders left by an export that was killed (its process is gone); the
    previous export put aside by one killed between its two renames goes back in place."""
    for kind in ("old", "tmp"):
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
                continue
            if kind == "old" and not out.exists():
                path.rename(out)
            else:
                shutil.rmtree(path, ignore_errors=True)


def load_export(export_dir: str | Path):
    """The ``serving_default`` function of a local export (loads tensorflow_text ops if
    present). For an export on a URI, download it first (``ktune predict`` does)."""
    try:  # BERT exports tokenize with tensorflow_text ops, which must be registered first
        import tensorflow_text  # noqa: F401
    except ImportError:
        pass
    d = Path(export_dir)
    if not (d / "saved_model.pb").is_file():
        raise ExperimentError(f"{d}: not a SavedModel export (no saved_model.pb)")
    loaded = tf.saved_model.load(str(d))
    fn = loaded.signatures["serving_default"]
    fn._ktune_owner = loaded  # keep the loaded object (and its variables) alive
    return fn


def predict(export_dir: str | Path, texts: Sequence[str]) -> list[dict]:
    """Label, score and per-class probabilities for each text."""
    texts = text_list(texts)
    out = load_export(export_dir)(tf.constant(texts, tf.string))
    names = [n.decode("utf-8") for n in out["class_names"].numpy()[0]] if len(texts) else []
    return [
        {
            "text": text,
            "label": label.decode("utf-8"),
            "score": float(score),
            "probabilities": dict(zip(names, map(float, probs))),
        }
        for text, label, score, probs in zip(
            texts, out["label"].numpy(), out["score"].numpy(), out["probabilities"].numpy()
        )
    ]
