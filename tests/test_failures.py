"""Failing trials and lost nodes: retried from checkpoints, reported, never silently dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ktune.config import parse_config

from conftest import run_script_for_result, tiny_experiment

pytestmark = pytest.mark.slow


def test_a_trial_that_keeps_failing_is_reported_and_the_search_goes_on(tmp_path, ray_session):
    import os

    import tf_keras as keras

    from ktune.experiment import run_experiment

    claim = tmp_path / "doomed-trial"

    class AlwaysFailOneTrial(keras.callbacks.Callback):
        """The first trial to get here fails at every epoch end, also when retried."""

        def on_epoch_end(self, epoch, logs=None):
            from ray import tune

            me = tune.get_context().get_trial_id()
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, me.encode())
                os.close(fd)
            except FileExistsError:
                pass
            if claim.read_text() == me:
                raise RuntimeError(f"injected failure in {me}")

    raw = tiny_experiment(
        tmp_path,
        search__num_samples=3,
        search__scheduler="fifo",
        search__max_failures=1,
        export={"enabled": False},
    )
    raw["name"] = "flaky"
    best = run_experiment(parse_config(raw), callbacks=[AlwaysFailOneTrial()])
    results = pd.read_csv(Path(raw["storage"]) / "flaky" / "results.csv")
    doomed = claim.read_text()
    assert len(results) == 3
    failed = results[results["status"] == "ERROR"]
    assert list(failed["trial"]) == [f"trial_{doomed}"]
    assert "injected failure" in failed["error"].iloc[0]
    assert (results["status"] == "TERMINATED").sum() == 2
    # (its epoch-1 checkpoint was reported before it failed, so it may still be the best)
    assert best["metrics"]["epoch"] >= 1
    # retried once from its checkpoint: two runs of the trial, the second restored
    rows = [
        json.loads(line)
        for line in (Path(raw["storage"]) / "flaky" / f"trial_{doomed}" / "result.json")
        .read_text()
        .splitlines()
    ]
    assert rows and rows[-1]["resumed_from_epoch"] == 1


LOST_NODE = r"""
import json, sys, threading, time, yaml
from pathlib import Path
import ktune, ray
from ray.cluster_utils import Cluster
from ktune.config import parse_config
from ktune.experiment import run_experiment

raw = yaml.safe_load(open(sys.argv[1]))
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
first = cluster.add_node(num_cpus=1)  # the only node with a CPU: the first trial runs here
cluster.wait_for_nodes()
ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}})
cfg = parse_config(raw)
lost, outcome = {}, {}

def search():
    try:
        outcome["best"] = run_experiment(cfg)
    except BaseException as e:  # reported by the main thread
        outcome["error"] = repr(e)

# The search runs in a thread: Ray adds nodes only from the main thread (signal handlers).
runner = threading.Thread(target=search)
runner.start()
exp = Path(cfg.experiment_dir)
while not list(exp.glob("trial_*/checkpoint_*/ckpt.index")):
    time.sleep(0.2)
lost["trial"] = next(exp.glob("trial_*/checkpoint_*/ckpt.index")).parent.parent.name
lost["checkpoints_then"] = len(list((exp / lost["trial"]).glob("checkpoint_*/ckpt.index")))
lost["spare"] = cluster.add_node(num_cpus=1).node_id
lost["node_id"] = first.node_id
cluster.remove_node(first)
runner.join()
assert "error" not in outcome, outcome
best = outcome["best"]
trials = {}
for d in Path(cfg.experiment_dir).glob("trial_*"):
    rows = [json.loads(l) for l in open(d / "result.json")]
    trials[d.name] = {"nodes": [r["node_id"] for r in rows],
                      "epochs": [r["epoch"] for r in rows], "epoch": rows[-1]["epoch"],
                      "resumed_from": rows[-1]["resumed_from_epoch"]}
print("RESULT " + json.dumps({"lost": lost, "trials": trials, "best": best["trial"]}))
ray.shutdown()
cluster.shutdown()
"""


def test_trials_of_a_lost_node_are_rescheduled(tmp_path):
    raw = tiny_experiment(tmp_path)
    raw["name"] = "lost_node"
    raw["search"].update(num_samples=3, max_concurrent_trials=2, scheduler="fifo", max_failures=2)
    raw["training"]["epochs"] = 3
    raw["export"] = {"enabled": False}
    exp = tmp_path / "lost_node.yaml"
    exp.write_text(yaml.safe_dump(raw))
    out = run_script_for_result(LOST_NODE, str(exp))
    results = pd.read_csv(Path(raw["storage"]) / "lost_node" / "results.csv")
    assert list(results["status"]) == ["TERMINATED"] * 3, results.to_dict("records")
    assert all(t["epoch"] == 3 for t in out["trials"].values())
    assert out["lost"], "the node was never removed"
    # the trial that was running on the lost node (mid-search: it had 1 of 3 epochs) was
    # rescheduled and finished; usually from its checkpoint, from scratch when the node went
    # before Ray recorded that checkpoint
    assert out["lost"]["checkpoints_then"] == 1
    lost = results.set_index("trial").loc[out["lost"]["trial"]]
    assert lost["status"] == "TERMINATED" and lost["epochs"] == 3


@pytest.mark.parametrize("keep", [True, False], ids=["with-ktune", "ray-alone"])
def test_a_retried_trial_keeps_the_rows_reported_before_its_failure(
    tmp_path, ray_session, monkeypatch, keep
):
    """Ray reopens a retried trial's ``result.json`` from its last snapshot of the
    experiment: the rows reported since were lost (epoch 3 here, the one just before the
    failure). ``KeepTrialHistory`` (in every ktune Tuner) keeps them. The snapshot is made
    to fall between epochs 2 and 3 on purpose: one forced by the second checkpoint
    (``num_to_keep=2``), no timed ones (``TUNE_GLOBAL_CHECKPOINT_S``). The run without
    ktune's callback shows that the arrangement really loses the row."""
    import tempfile
    import time

    from ray import tune

    from ktune.tuner import trial_history_callbacks

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    marker = tmp_path / "failed-once"

    def train(config):
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start = json.loads(Path(d, "epoch.json").read_text())
        for epoch in range(start + 1, 5):
            with tempfile.TemporaryDirectory() as d:
                Path(d, "epoch.json").write_text(json.dumps(epoch))
                tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(d))
            if epoch == 2:
                time.sleep(2)  # Ray's snapshot after the second checkpoint lands
            if epoch == 3 and not marker.exists():
                marker.touch()
                raise RuntimeError("injected failure after epoch 3")

    grid = tune.Tuner(
        train,
        run_config=tune.RunConfig(
            name="retried",
            storage_path=str(tmp_path / "results"),
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=trial_history_callbacks([]) if keep else [],
            verbose=0,
        ),
    ).fit()
    assert marker.exists(), "the injected failure never happened"
    result = grid[0]
    assert result.error is None
    rows = [json.loads(line) for line in Path(result.path, "result.json").read_text().splitlines()]
    epochs = [r["epoch"] for r in rows]
    assert list(result.metrics_dataframe["epoch"]) == epochs
    if keep:
        assert epochs == [1, 2, 3, 4]
    else:
        assert epochs == [1, 2, 4], f"Ray alone no longer loses the row (upgrade?): {epochs}"
