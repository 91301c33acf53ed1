"""PBT and PB2: an exploited trial continues from the donor's checkpoint with its own,
mutated hyperparameters; shape-changing mutations are refused; a PBT search resumes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tf_keras as keras
import yaml
from ray import cloudpickle
from ray.tune.schedulers import pbt as ray_pbt

import ktune
from ktune.config import parse_config

from conftest import REPO, subprocess_env

TRAIN_SIZE, BATCH, EPOCHS = 1500, 32, 4
# Ray's workers do not have tests/ on sys.path: RecordStart travels by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def pbt_experiment(tmp_path: Path, scheduler: str = "pbt", **search) -> dict:
    return {
        "name": scheduler,
        "data": {"source": "builtin", "train_size": TRAIN_SIZE, "test_size": 100, "seed": 3},
        "search": {
            "num_samples": 4,
            "scheduler": scheduler,
            "max_concurrent_trials": 2,
            "perturbation_interval": 1,
            "space": {
                "embed_dim": [16],
                "heads": [2],
                "ff_dim": [8],
                "num_blocks": [1],
                "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
                "dropout": 0.1,
                "warmup": 0.0,
            },
            **search,
        },
        "training": {"epochs": EPOCHS, "batch_size": BATCH, "maxlen": 24, "vocab_size": 400},
        "storage": str(tmp_path / "results"),
        "export": {"enabled": False},
    }


@pytest.mark.parametrize(
    ("search", "match"),
    [
        (
            {"scheduler": "pbt", "mutations": ["embed_dim"]},
            "search.mutations: embed_dim cannot mutate: an exploited trial loads the donor's "
            "weights",
        ),
        ({"scheduler": "pbt", "mutations": ["heads"]}, "search.mutations: heads cannot mutate"),
        (
            {"scheduler": "pbt", "mutations": ["weight_decay"]},
            "search.mutations: weight_decay is not searched",
        ),
        (
            {"scheduler": "pb2", "space": {"dropout": [0.1, 0.2]}, "mutations": ["dropout"]},
            r"search.space.dropout: PB2 mutates continuous ranges only",
        ),
        (
            {"scheduler": "pbt", "space": {"learning_rate": 1e-3, "warmup": 0.1, "dropout": 0.1}},
            "search.scheduler: pbt mutates learning_rate, warmup, dropout, weight_decay, and the "
            "space searches none of them",
        ),
        (
            {"scheduler": "asha", "perturbation_interval": 2},
            "search.perturbation_interval: only used with scheduler pbt or pb2",
        ),
    ],
)
def test_shape_changing_or_empty_mutations_are_refused(search, match):
    with pytest.raises(ktune.ConfigError, match=match):
        parse_config({"name": "x", "search": search})


def test_mutations_default_to_the_searched_shape_keeping_keys():
    cfg = parse_config({"name": "x", "search": {"scheduler": "pbt"}})
    assert cfg.search.mutations == ("learning_rate", "warmup", "dropout")
    from ray.tune.schedulers import PopulationBasedTraining

    from ktune.tuner import build_scheduler, build_searcher

    scheduler = build_scheduler(cfg)
    assert isinstance(scheduler, PopulationBasedTraining)
    assert set(scheduler._hyperparam_mutations) == {"learning_rate", "warmup", "dropout"}
    assert type(build_searcher(cfg)).__name__ == "BasicVariantGenerator"


class RecordStart(keras.callbacks.Callback):
    """Each time a trial (re)starts: the checkpoint Ray handed it, a checksum of the
    weights it starts from, and the peak learning rate its optimizer was built with."""

    def __init__(self, log: str):
        super().__init__()
        self.log = log

    def on_train_begin(self, logs=None):
        import numpy as np
        from ray import tune

        from ktune.trainables.base import current_learning_rate

        handed = tune.get_checkpoint()
        weights = [np.asarray(w, dtype=np.float64) for w in self.model.weights]
        record = {
            "trial": tune.get_context().get_trial_id(),
            "handed": handed.path if handed else None,
            "abs_sum": float(sum(np.abs(w).sum() for w in weights)),
            "size": int(sum(w.size for w in weights)),
            "peak_lr": float(self.model.optimizer._learning_rate.peak_learning_rate),
            "step": int(self.model.optimizer.iterations.numpy()),
            "lr_now": current_learning_rate(self.model.optimizer),
        }
        self._write(record)

    def on_epoch_end(self, epoch, logs=None):
        from ray import tune

        self._write(
            {
                "trial": tune.get_context().get_trial_id(),
                "epoch_end": epoch + 1,
                "step": int(self.model.optimizer.iterations.numpy()),
                "peak_lr": float(self.model.optimizer._learning_rate.peak_learning_rate),
            }
        )

    def _write(self, record: dict) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")


def checkpoint_weights(folder: str) -> tuple[float, int, dict]:
    """abs-sum and size of the model variables in a ktune checkpoint, and its trial info."""
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(folder, "ckpt"))
    total, size = 0.0, 0
    for key in reader.get_variable_to_shape_map():
        if (
            key.startswith("model/")
            and "OPTIMIZER_SLOT" not in key
            and key.endswith("VARIABLE_VALUE")
        ):
            value = np.asarray(reader.get_tensor(key), dtype=np.float64)
            total, size = total + float(np.abs(value).sum()), size + value.size
    return total, size, json.loads(Path(folder, "ktune_trial.json").read_text())


def donor_step(folder: str) -> int:
    """The optimizer step stored in a ktune checkpoint."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(folder, "ckpt"))
    key = next(
        k for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/_iterations/")
    )
    return int(reader.get_tensor(key))


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["pbt", "pb2"])
def test_an_exploited_trial_starts_from_the_donors_weights_with_its_new_rate(
    ray_session, tmp_path, scheduler
):
    from ktune.experiment import run_experiment

    log = tmp_path / "starts.jsonl"
    raw = pbt_experiment(tmp_path, scheduler)
    best = run_experiment(parse_config(raw), callbacks=[RecordStart(str(log))])
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    records = [r for r in lines if "epoch_end" not in r]
    exploits = [
        r for r in records if r["handed"] and f"trial_{r['trial']}/" not in r["handed"] + "/"
    ]
    assert exploits, f"{scheduler} cloned no trial: {records}"
    steps_per_epoch = math.ceil(TRAIN_SIZE * 0.9 / BATCH)
    total = steps_per_epoch * EPOCHS  # warmup 0: linear decay from the peak to 0
    # Ray's log of every exploit: [target, clone, steps, donor config, new config]. Not the
    # per-trial pbt_policy_*.txt: a trial cloned twice has its file replaced by its donor's.
    global_log = (tmp_path / "results" / scheduler / "pbt_global.txt").read_text()
    chosen = [json.loads(line)[5]["learning_rate"] for line in global_log.splitlines() if line]
    assert len(chosen) >= len(exploits)
    mutated = trained = 0
    for r in exploits:
        donor_sum, donor_size, donor = checkpoint_weights(r["handed"])
        # the clone: the weights it starts from are the donor's at the moment of cloning,
        # with the donor's optimizer step
        assert r["size"] == donor_size
        assert r["abs_sum"] == pytest.approx(donor_sum, rel=1e-9)
        assert r["step"] == donor_step(r["handed"]) > 0
        # ... and its own (mutated) learning rate, applied to the restored optimizer
        assert r["lr_now"] == pytest.approx(r["peak_lr"] * (total - r["step"]) / total, rel=1e-4)
        # It trained on from there with its new rate: the checkpoint of its next epoch
        # holds the metrics reported with it, the rate at that step on the new schedule.
        # (PBT may clone it again right after, so that checkpoint can be gone; and a
        # clone at the last epoch trains no further.)
        step = r["step"] + steps_per_epoch
        for folder in (tmp_path / "results" / scheduler / f"trial_{r['trial']}").glob(
            "checkpoint_*"
        ):
            reported = json.loads((folder / "metrics.json").read_text())
            if reported["step"] == step and reported["learning_rate_now"] == pytest.approx(
                r["peak_lr"] * (total - step) / total, rel=1e-4
            ):
                trained += 1
                break
        assert any(r["peak_lr"] == pytest.approx(lr, rel=1e-12) for lr in chosen)
        assert 1e-4 * 0.8 <= r["peak_lr"] <= 3e-2 * 1.2
        mutated += r["peak_lr"] != pytest.approx(donor["config"]["learning_rate"], rel=1e-6)
    if scheduler == "pbt":  # PBT always perturbs (x0.8, x1.2 or a resample); PB2's
        assert mutated, "no exploit changed the learning rate"  # bandit may keep it
    assert trained, "no exploited trial trained on"
    # A trial's own restarts (PBT pauses and resumes trials) continue its own state.
    own = [r for r in records if r["handed"] and r not in exploits]
    for r in own:
        if not Path(r["handed"], "ckpt.index").is_file():
            # pruned since: PBT cloned this trial later, and Ray keeps a trial's best
            # num_to_keep checkpoints, the donor's it was handed among them (CI, PB2)
            continue
        assert checkpoint_weights(r["handed"])[0] == pytest.approx(r["abs_sum"], rel=1e-9)
    import csv

    rows = list(csv.DictReader((tmp_path / "results" / scheduler / "results.csv").open()))
    assert [int(r["epochs"]) for r in rows] == [EPOCHS] * 4  # PBT stops no trial early
    assert best["metrics"]["val_accuracy"] > 0.25  # better than chance on 4 classes
    # Each trial's history is whole: PBT's restarts (Ray's loggers copy result.json back
    # from the storage) lost the epochs since Ray's last snapshot (KeepTrialHistory).
    for trial in (tmp_path / "results" / scheduler).glob("trial_*"):
        reported = [
            json.loads(x)["epoch"] for x in (trial / "result.json").read_text().splitlines()
        ]
        progress = list(csv.DictReader((trial / "progress.csv").open()))
        assert set(reported) == set(range(1, EPOCHS + 1)), (trial.name, reported)
        assert [int(r["epoch"]) for r in progress] == reported, trial.name


@pytest.mark.slow
def test_resume_of_a_killed_pbt_search(tmp_path, ray_tmp):
    from conftest import assert_checkpoints_hold_their_results, kill_ray_under
    from test_resume import ktune_cli, last_checkpoints

    raw = pbt_experiment(tmp_path, "pbt")
    raw["data"]["train_size"] = 3000  # epochs of a few seconds: a window to kill in
    exp = tmp_path / "pbt.yaml"
    exp.write_text(yaml.safe_dump(raw))
    exp_dir = Path(raw["storage"]) / "pbt"
    env = {
        **subprocess_env(),
        "RAY_TMPDIR": ray_tmp,
        "TMPDIR": ray_tmp,
        "TUNE_GLOBAL_CHECKPOINT_S": "2",
    }
    run = subprocess.Popen(
        [sys.executable, "-m", "ktune", "run", str(exp)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once some trials are past their first exploit point
        done = last_checkpoints(exp_dir)
        if len(done) >= 2 and max(done.values()) >= 1 and list(exp_dir.glob("experiment_state-*")):
            break
        assert run.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.2)
    else:
        pytest.fail("no checkpoints to interrupt")
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    kill_ray_under(ray_tmp)
    assert not (exp_dir / "best.json").exists()
    resumed = ktune_cli(
        "resume",
        str(exp_dir),
        "--no-export",
        env={**subprocess_env(), "RAY_TMPDIR": ray_tmp, "TMPDIR": ray_tmp},
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    import csv

    rows = list(csv.DictReader((exp_dir / "results.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}
    assert all(int(r["epochs"]) == EPOCHS for r in rows)  # PBT stops no trial early
    best = json.loads((exp_dir / "best.json").read_text())
    assert best["num_trials"] == 4
    # exploits (a donor's weights copied into a trial's folders) and the resume kept each
    # checkpoint's weights with the results it was reported with
    assert assert_checkpoints_hold_their_results(exp_dir) >= 4


def test_pb2_says_it_explores_a_log_range_linearly(caplog):
    import logging

    from ktune.search_spaces import Range
    from ktune.tuner import build_population_scheduler

    mutations = {"learning_rate": Range(1e-5, 1e-2, log=True), "dropout": Range(0.0, 0.3)}
    with caplog.at_level(logging.WARNING, logger="ktune"):
        pb2 = build_population_scheduler("pb2", mutations, metric="val_accuracy", mode="max")
    assert pb2._hyperparam_bounds == {"learning_rate": [1e-5, 1e-2], "dropout": [0.0, 0.3]}
    assert caplog.text.count("on a linear scale") == 1
    assert "search.space.learning_rate: PB2 explores [1e-05, 0.01] on a linear scale" in caplog.text


def test_pbt_keeps_a_mutated_value_inside_its_range():
    """Ray's PBT multiplies by 1.2 (or 0.8) without looking at the bounds: a dropout near
    the top of its range went past 1 and the trial failed. Ray's own explore step, forced
    to perturb (never resample), up from the top and down from the bottom."""
    import random
    from types import SimpleNamespace

    from ktune.search_spaces import Range
    from ktune.tuner import build_population_scheduler

    mutations = {
        "dropout": Range(0.1, 0.9),
        "learning_rate": Range(1e-4, 1e-2, log=True),
        "epochs_hint": Range(2, 9, integer=True),
    }
    pbt = build_population_scheduler("pbt", mutations, metric="val_accuracy", mode="max")
    pbt._resample_probability = 0.0
    top = SimpleNamespace(config={"dropout": 0.88, "learning_rate": 9e-3, "epochs_hint": 9})
    bottom = SimpleNamespace(config={"dropout": 0.11, "learning_rate": 1.1e-4, "epochs_hint": 2})
    random.seed(0)
    seen = {"dropout": set(), "learning_rate": set(), "epochs_hint": set()}
    for donor in (top, bottom) * 20:
        new, _ = pbt._get_new_config(None, donor)
        for name, spec in mutations.items():
            assert spec.low <= new[name] <= spec.high, (name, new[name])
            seen[name].add(new[name])
    assert {0.9, 0.1} <= seen["dropout"]  # clamped at both ends, not left where it was
    assert {1e-2, 1e-4} <= seen["learning_rate"]
    assert all(isinstance(v, int) for v in seen["epochs_hint"]) and 9 in seen["epochs_hint"]
    assert 0.88 * 0.8 in seen["dropout"]  # a perturbation inside the range is Ray's own


PBT_SOURCE = str(Path(ray_pbt.__file__))


def test_a_donor_at_its_last_epoch_is_not_cloned(tmp_path):
    """Ray's PBT may pick as donor a trial that has just reported its last epoch (not yet
    finished for Tune): the clone restored that final checkpoint, had nothing to train
    and ended at once with the donor's last result, so results.csv showed the donor's
    configuration and epochs beside the clone's own accuracy (a README audit's 4-trial,
    3-epoch PBT search). ktune's PBT and PB2 skip such an exploit, as Ray skips one whose
    donor has no checkpoint; a donor with epochs left is cloned as before."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers.pbt import _PBTTrialState

    from ktune.search_spaces import Range
    from ktune.tuner import build_population_scheduler

    mutations = {"learning_rate": Range(1e-4, 1e-2, log=True)}
    for kind in ("pbt", "pb2"):
        sched = build_population_scheduler(
            kind, mutations, metric="val_accuracy", mode="max", epochs=3
        )
        sched._log_config = False
        low = Trial("__fake", stub=True, config={"learning_rate": 1e-4})
        donor = Trial("__fake", stub=True, config={"learning_rate": 1e-3})
        for t, score in ((low, 0.3), (donor, 0.9)):
            sched._trial_state[t] = _PBTTrialState(t)
            sched._trial_state[t].last_score = score
        sched._trial_state[donor].last_result = {"epoch": 3, "training_iteration": 3}
        sched._exploit(None, low, donor)  # skipped: nothing of Tune's is touched
        assert low.config == {"learning_rate": 1e-4} and sched._num_perturbations == 0
        # epochs left: Ray's own exploit runs (and fails here, with no Tune controller)
        sched._trial_state[donor].last_result = {"epoch": 2, "training_iteration": 2}
        with pytest.raises(Exception) as went_on:
            sched._exploit(None, low, donor)
        frames = [(f.name, str(f.path)) for f in went_on.traceback]
        assert ("_exploit", PBT_SOURCE) in frames, frames
