"""The Python face: ``ktune.run`` / ``resume`` / ``load`` and their result object."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import ktune

from conftest import reload_in_fresh_process, tiny_experiment

TEXTS = ["Striker scores twice in the cup final", "Stocks fall as oil prices climb", ""]


def test_import_ktune_is_cheap_and_names_the_api():
    import subprocess
    import sys

    code = (
        "import sys, ktune; assert callable(ktune.run) and callable(ktune.trainable); "
        "print(sorted(m for m in ('tensorflow', 'ray', 'optuna') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # the API loads lazily: no TF, Ray or Optuna yet
    for name in (
        "run",
        "resume",
        "load",
        "trainable",
        "search_space",
        "export_result",
        "load_model",
        "ExperimentResult",
    ):
        assert name in ktune.__all__


@pytest.mark.parametrize(
    ("experiment", "overrides", "match"),
    [
        (123, {}, "experiment: expected a YAML file"),
        ({"name": "x"}, {"bogus": {"a": 1}}, "bogus: unknown override"),
        ({"name": "x"}, {"training": {"epochz": 1}}, "training.epochz: unknown key"),
        ("/nonexistent/exp.yaml", {}, "experiment file not found"),
    ],
)
def test_bad_calls_are_one_clear_error_before_ray(experiment, overrides, match):
    import ray

    was = ray.is_initialized()
    with pytest.raises(ktune.ConfigError, match=match):
        ktune.run(experiment, **overrides)
    assert ray.is_initialized() == was


def test_a_parsed_config_takes_only_flat_overrides(tmp_path):
    cfg = ktune.load_config(_write(tmp_path, tiny_experiment(tmp_path)))
    with pytest.raises(ktune.ConfigError, match="training: a parsed ExperimentConfig"):
        ktune.run(cfg, training={"epochs": 1})


def test_predict_needs_an_export(tmp_path):
    with pytest.raises(ktune.ExperimentError, match="not a SavedModel export"):
        ktune.predict(tmp_path, ["a text"])
    with pytest.raises(ktune.ExperimentError, match="nope: no such export folder$"):
        ktune.predict(tmp_path / "nope", ["a text"])


def _write(tmp_path: Path, raw: dict) -> Path:
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory):
    """One real search through ``ktune.run`` (YAML file + section overrides)."""
    tmp = tmp_path_factory.mktemp("api")
    raw = tiny_experiment(tmp)
    raw["training"]["epochs"] = 3  # overridden below
    path = _write(tmp, raw)
    import contextlib
    import io
    import signal

    printed = io.StringIO()
    handler = signal.getsignal(signal.SIGINT)
    with contextlib.redirect_stdout(printed):
        result = ktune.run(path, num_samples=2, training={"epochs": 2})
    _PRINTED["run"] = printed.getvalue()
    _PRINTED["sigint_kept"] = str(signal.getsignal(signal.SIGINT) is handler)
    return result


_PRINTED: dict[str, str] = {}


@pytest.mark.slow
def test_run_prints_nothing_unless_asked(finished):
    # The library is quiet: progress=True (the CLI's choice) prints the live table.
    assert _PRINTED["run"] == ""


@pytest.mark.slow
def test_run_leaves_the_sigint_handler_as_it_was(finished):
    # Ray Tune's fit leaves its own installed: a Ctrl+C after the search (the test
    # evaluation, the export, the caller's code) would only print "ending Ray Tune run"
    assert _PRINTED["sigint_kept"] == "True"


@pytest.mark.slow
def test_run_returns_the_result_object(finished):
    r = finished
    assert isinstance(r, ktune.ExperimentResult)
    assert r.dir.is_dir() and r.path == str(r.dir)
    best = json.loads((r.dir / "best.json").read_text())
    assert r.best_trial == best["trial"] and r.best_config == best["config"]
    assert r.best_metrics["val_accuracy"] == best["metrics"]["val_accuracy"]
    assert r.best_metrics["epoch"] <= 2  # the override of training.epochs took effect
    assert 0.0 <= r.test_accuracy <= 1.0 and r.test_accuracy == best["test_accuracy"]
    frame = r.trials
    assert len(frame) == 2 and set(frame["status"]) == {"TERMINATED"}
    assert frame["epochs"].max() == 2
    assert r.best_config["embed_dim"] % r.best_config["heads"] == 0
    # Ray's own ResultGrid, the same trials
    assert len(r.grid) == 2 and not r.grid.errors
    assert {Path(x.path).name for x in r.grid} == set(frame["trial"])
    assert r.best_checkpoint.path == best["checkpoint"]
    assert Path(r.export_dir, "saved_model.pb").is_file()
    text = r.summary()
    assert f"best trial {r.best_trial}:" in text and "exported:" in text
    # the table says DONE / STOPPED (as the live table did), not Ray's TERMINATED
    words = {line.split()[1] for line in text.splitlines() if line.startswith("trial_")}
    expected = {"DONE" if e == 2 else "STOPPED" for e in frame["epochs"]}
    assert words == expected, text


@pytest.mark.slow
def test_predict_export_and_model_agree(finished, tmp_path):
    import numpy as np

    r = finished
    from_export = r.predict(TEXTS)
    names = r.spec["class_names"]
    assert [p["label"] for p in from_export] == [
        max(p["probabilities"], key=p["probabilities"].get) for p in from_export
    ]
    assert all(p["label"] in names for p in from_export)
    assert ktune.predict(r.export_dir, TEXTS) == from_export  # the export on its own
    # the same trial from its checkpoint, without the export
    loaded = ktune.load(r.dir)
    loaded.best.pop("export")
    from_model = loaded.predict(TEXTS)
    for a, b in zip(from_export, from_model):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(
            list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5
        )
    out = loaded.export(tmp_path / "again")
    fresh = reload_in_fresh_process(out, TEXTS)
    np.testing.assert_allclose(
        fresh["probabilities"], [list(p["probabilities"].values()) for p in from_export], atol=1e-5
    )
    refused = r"already exists \(replace it: force=True, or `ktune export --force`\)"
    with pytest.raises(ktune.ExperimentError, match=refused):
        loaded.export(tmp_path / "again")
    (tmp_path / "mine").mkdir()  # a folder of the user's own is not a cut-off export
    with pytest.raises(ktune.ExperimentError, match="mine: export target already exists \\(") as e:
        loaded.export(tmp_path / "mine")
    assert "cut off" not in str(e.value)
    (tmp_path / "again" / "saved_model.pb").unlink()  # what a kill mid-upload leaves
    with pytest.raises(ktune.ExperimentError, match=r"exists, cut off before saved_model.pb \("):
        loaded.export(tmp_path / "again")


@pytest.mark.slow
def test_a_moved_or_copied_experiment_reads_its_own_checkpoints(finished, tmp_path):
    """``best.json`` and ``ktune.json`` record absolute paths. A copy of an experiment
    folder read the original's checkpoint (pruning or deleting the original silently
    changed what the copy served), and a moved one failed with TensorFlow's
    NotFoundError on the old path. Paths inside the folder the search ran in now read as
    inside the folder being read."""
    import shutil

    from ktune.cli import main
    from ktune.report.load import load_experiment

    copy = tmp_path / "copy"
    shutil.copytree(finished.dir, copy)
    r = ktune.load(copy)
    assert Path(r.best_checkpoint.path).parent.parent == copy.resolve()
    assert Path(r.export_dir) == copy.resolve() / "export"
    assert r.spec["experiment_path"] == str(copy.resolve())
    # moved: the folder it ran in is gone
    moved = tmp_path / "moved"
    shutil.copytree(finished.dir, moved)
    gone = str(tmp_path / "gone" / "api")
    for name in ("ktune.json", "best.json"):
        text = (moved / name).read_text().replace(str(finished.dir.resolve()), gone)
        assert gone in text
        (moved / name).write_text(text)
    m = ktune.load(moved)
    assert m.predict(TEXTS) == finished.predict(TEXTS)
    m.best.pop("export")  # from the checkpoint (the old path no longer exists)
    assert [p["label"] for p in m.predict(TEXTS)] == [p["label"] for p in finished.predict(TEXTS)]
    assert main(["export", str(moved), "--out", str(tmp_path / "out")]) == 0
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["checkpoint"].startswith(str(moved.resolve()))
    record = load_experiment(moved)
    assert record.best_info["checkpoint"].startswith(str(moved.resolve()))


def test_load_says_what_is_wrong_with_a_folder_that_is_not_a_finished_search(tmp_path):
    """An experiment file given for its folder, and a search that is still running or was
    stopped (no best.json yet), each get the line that says so, not 'no such folder'."""
    from ktune.driver import write_driver

    exp = tmp_path / "exp.yaml"
    exp.write_text("name: x\n")
    with pytest.raises(ktune.ExperimentError, match="a file, not an experiment directory"):
        ktune.load(exp)
    d = tmp_path / "x"
    d.mkdir()
    (d / "ktune.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ktune.ExperimentError, match="has not finished .*ktune resume"):
        ktune.load(d)
    write_driver(d, "run")  # this process stands for the search's driver
    with pytest.raises(ktune.ExperimentError, match=r"still running \(ktune run, pid \d+\)"):
        ktune.load(d)
    # another machine's driver (a laptop reading a cluster's storage): named with its host
    # while its heartbeat is current; once it missed them, the search reads as stopped
    import time

    from ktune.driver import SILENT_MIN_S

    there = json.loads((d / "driver.json").read_text())
    there.update(host="gpu-node-7", pid=4242, heartbeat_s=60.0, time=time.time() - 3600)
    (d / "driver.json").write_text(json.dumps({**there, "alive": time.time() - 30}))
    with pytest.raises(ktune.ExperimentError) as caught:
        ktune.load(d)
    assert str(caught.value).startswith(
        f"{d}: its search is still running on gpu-node-7 (ktune run, pid 4242; alive 3"
    ), caught.value
    assert str(caught.value).endswith("; best.json is written when it ends")
    silent = time.time() - SILENT_MIN_S - 60
    (d / "driver.json").write_text(json.dumps({**there, "alive": silent}))
    with pytest.raises(ktune.ExperimentError, match="has not finished .*ktune resume"):
        ktune.load(d)


@pytest.mark.slow
def test_load_reads_a_finished_experiment_the_same_way(finished):
    r = ktune.load(str(finished.dir))
    assert r.best == json.loads((finished.dir / "best.json").read_text())
    assert r.test_accuracy == finished.test_accuracy
    assert len(r.grid) == 2  # from Ray's saved experiment state
    assert r.load_model().count_params() > 0
    with pytest.raises(ktune.ExperimentError, match="no such experiment directory"):
        ktune.load(finished.dir.parent / "nothing-here")


@pytest.mark.slow
def test_scheduler_searcher_and_callbacks_replace_the_yaml(ray_session, tmp_path):
    """FIFO instead of the file's ASHA (every trial trains every epoch), Ray's
    BasicVariantGenerator instead of Optuna, and a Tune callback that sees every result."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    class Count(tune.Callback):
        def __init__(self):
            self.results = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.append((trial.trial_id, result["epoch"]))

    raw = tiny_experiment(tmp_path, export={"enabled": False})
    raw["search"]["num_samples"] = 3
    raw["search"]["space"]["learning_rate"] = {"low": 1e-5, "high": 2e-5, "log": True}
    count = Count()
    r = ktune.run(
        raw,
        scheduler=FIFOScheduler(),
        search_alg=BasicVariantGenerator(random_state=1),
        callbacks=[count],
    )
    frame = r.trials
    assert len(frame) == 3 and list(frame["epochs"]) == [2, 2, 2]  # no early stopping
    assert len(count.results) == 6
    assert not (r.dir / "optuna.journal").exists()  # Optuna was replaced
    for config in (x.config for x in r.grid):
        assert config["embed_dim"] % config["heads"] == 0
        assert 1e-5 <= config["learning_rate"] <= 2e-5


# --- the model a result names, and where an export may go ---------------------------------


def _weights(model):
    import numpy as np

    return np.concatenate([w.ravel() for w in model.get_weights()])


@pytest.mark.slow
def test_a_results_model_and_export_are_of_its_best_epoch_not_its_latest(finished, tmp_path):
    import numpy as np
    from ray import tune

    trial = next(Path(x.path) for x in finished.grid if len(list(Path(x.path).glob("check*"))) > 1)
    result = tune.Result.from_path(str(trial))  # Ray's own reading of the trial's folder
    by_epoch = {m["epoch"]: c for c, m in result.best_checkpoints}
    first, last = by_epoch[min(by_epoch)], by_epoch[max(by_epoch)]
    assert result.checkpoint.path == last.path  # Ray's Result.checkpoint is the latest
    picked = _weights(ktune.load_model(result, metric="epoch", mode="min"))
    np.testing.assert_array_equal(picked, _weights(ktune.load_model(first.path)))
    assert not np.array_equal(picked, _weights(ktune.load_model(result, metric=None)))
    # by default the epoch of the highest val_accuracy, as Ray's get_best_checkpoint ranks
    best = result.get_best_checkpoint("val_accuracy", "max")
    np.testing.assert_array_equal(
        _weights(ktune.load_model(result)), _weights(ktune.load_model(best.path))
    )
    out = ktune.export_result(result, tmp_path / "e", metric="epoch", mode="min")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["checkpoint"] == first.path
    # which epoch it holds and what it scored
    reported = next(m for c, m in result.best_checkpoints if c.path == first.path)
    assert meta["metrics"]["epoch"] == 1
    assert meta["metrics"]["val_accuracy"] == pytest.approx(reported["val_accuracy"])
    # a loss without mode= is minimized (not the worst epoch's, as a default of max was)
    lowest, highest = (result.get_best_checkpoint("val_loss", m) for m in ("min", "max"))
    assert lowest.path != highest.path
    np.testing.assert_array_equal(
        _weights(ktune.load_model(result, metric="val_loss")), _weights(ktune.load_model(lowest))
    )
    # num_to_keep=1 (the latest kept): the best epoch's weights are gone, and it is said
    import dataclasses
    import logging

    only_last = dataclasses.replace(
        result, best_checkpoints=[(c, m) for c, m in result.best_checkpoints if c.path == last.path]
    )
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("ktune").addHandler(handler)
    try:
        ktune.load_model(result, metric="epoch", mode="min")
        assert said == []
        kept = _weights(ktune.load_model(only_last, metric="epoch", mode="min"))
    finally:
        logging.getLogger("ktune").removeHandler(handler)
    np.testing.assert_array_equal(kept, _weights(ktune.load_model(last.path)))
    assert len(said) == 1 and re.search(
        rf"the best epoch \(1, epoch 1\) has no kept checkpoint; this is the best kept "
        rf"\({max(by_epoch)}, epoch {max(by_epoch)}\)",
        said[0],
    ), said
    with pytest.raises(ktune.ExperimentError, match="mode: pass mode='max' or 'min' for metric"):
        ktune.load_model(result, metric="epoch")  # no mode of its own: not guessed
    with pytest.raises(
        ktune.ExperimentError, match="no checkpoint of this trial reported a finite 'f1'"
    ):
        ktune.load_model(result, metric="f1", mode="max")
    with pytest.raises(ktune.ExperimentError, match="nope: no such checkpoint folder"):
        ktune.export_result(str(tmp_path / "nope"), tmp_path / "e2")


@pytest.mark.slow
def test_force_never_replaces_a_folder_that_is_not_an_export(finished):
    before = sorted(p.name for p in finished.dir.iterdir())
    with pytest.raises(ktune.ExperimentError, match="is not an export .*choose another --out"):
        finished.export(finished.dir, force=True)  # was: the experiment deleted, an export there
    with pytest.raises(ktune.ExperimentError, match="is not an export"):
        finished.export(finished.dir.parent, force=True)
    with pytest.raises(ktune.ExperimentError, match="is not an export"):  # the Python API too
        ktune.export_result(finished.best["checkpoint"], finished.dir, force=True)
    assert sorted(p.name for p in finished.dir.iterdir()) == before


@pytest.mark.slow
def test_predict_takes_a_list_and_never_a_foreign_export(finished, tmp_path, caplog):
    import logging

    import numpy as np

    with pytest.raises(TypeError, match=r"a list of texts, got one str \('Rates rise'\)"):
        finished.predict("Rates rise")  # was: 10 predictions, one per letter
    with pytest.raises(TypeError, match="a list of texts"):
        ktune.predict(finished.export_dir, "Rates rise")
    loaded = ktune.load(finished.dir)
    other = next(Path(x.path) for x in loaded.grid if Path(x.path).name != loaded.best_trial)
    foreign = ktune.export_result(str(sorted(other.glob("checkpoint_*"))[-1]), tmp_path / "x")
    loaded.best["export"] = str(foreign)  # another trial's model where the export was
    with caplog.at_level(logging.WARNING, logger="ktune"):
        got = loaded.predict(TEXTS)
    assert "holds another model than the best trial's" in caplog.text
    loaded.best.pop("export")
    want = loaded.predict(TEXTS)  # from the best checkpoint
    for a, b in zip(got, want):
        np.testing.assert_allclose(
            list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6
        )
    assert loaded.predict([]) == []  # was: Keras's "Expected input data to be non-empty"


def test_an_export_cleans_raw_texts_as_unescape_backslash_cleaned_the_training_texts():
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from ktune.serving import ServingModule

    encoder = keras.layers.TextVectorization(vocabulary=["deal", "tax"], output_sequence_length=4)
    inputs = keras.Input(shape=(4,), dtype="int64")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    texts = tf.constant(["deal \\\\ tax ", "deal tax", "deal\\tax"])
    plain = ServingModule(encoder, model, ["a", "b"])
    cleaning = ServingModule(encoder, model, ["a", "b"], unescape_backslash=True)
    raw = plain.serve(texts)["probabilities"].numpy()
    clean = cleaning.serve(texts)["probabilities"].numpy()
    np.testing.assert_allclose(clean[0], clean[1])
    np.testing.assert_allclose(clean[2], clean[1])
    assert not np.allclose(raw[2], raw[1])  # "deal\tax" is one unknown word without it


def test_a_previous_export_put_aside_by_a_killed_export_goes_back(tmp_path):
    from ktune.export import _remove_stale_siblings

    out = tmp_path / "export"
    aside = tmp_path / ".export.old-999999999"  # no such process
    aside.mkdir()
    (aside / "saved_model.pb").write_text("the previous export")
    (tmp_path / ".export.tmp-999999999").mkdir()
    _remove_stale_siblings(out)
    assert (out / "saved_model.pb").read_text() == "the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
