"""A search on a local multi-node Ray cluster: a CPU head and two workers declaring GPUs."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from conftest import run_script_for_result, tiny_experiment

pytestmark = pytest.mark.slow

# Its own process: ray.cluster_utils.Cluster needs a process where Ray is not initialized.
SCRIPT = r"""
import json, sys, yaml
import ktune
import ray
from ray.cluster_utils import Cluster
from ktune.config import parse_config
from ktune.experiment import run_experiment

raw = yaml.safe_load(open(sys.argv[1]))
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}})
cfg = parse_config(raw)
best = run_experiment(cfg)
rows = []
for line in open(cfg.experiment_dir / "results.csv").read().splitlines()[1:]:
    rows.append(line.split(",")[0])
trials = {}
import pathlib
for trial_dir in pathlib.Path(cfg.experiment_dir).glob("trial_*"):
    results = [json.loads(l) for l in open(trial_dir / "result.json")]
    trials[trial_dir.name] = {
        "nodes": sorted({r["node_id"] for r in results}),
        "start": results[0]["timestamp"] - results[0]["time_this_iter_s"],
        "end": results[-1]["timestamp"],
        "epochs": results[-1]["epoch"],
    }
print("RESULT " + json.dumps({
    "workers": [w.node_id for w in workers],
    "head": cluster.head_node.node_id,
    "trials": trials,
    "best": best["trial"],
}))
ray.shutdown()
cluster.shutdown()
"""


def test_fractional_gpu_trials_spread_over_gpu_nodes(tmp_path):
    raw = tiny_experiment(tmp_path)
    raw["name"] = "multinode"
    raw["search"].update(num_samples=4, max_concurrent_trials=4, scheduler="fifo")
    raw["training"]["epochs"] = 1
    raw["resources"] = {"cpu": 1, "gpu": 0.5}
    raw["export"] = {"enabled": False}
    exp = tmp_path / "multinode.yaml"
    exp.write_text(yaml.safe_dump(raw))
    out = run_script_for_result(SCRIPT, str(exp))
    trials = out["trials"]
    assert len(trials) == 4 and all(t["epochs"] == 1 for t in trials.values())
    nodes = Counter(t["nodes"][0] for t in trials.values())
    assert set(nodes) <= set(out["workers"]), "a GPU trial ran on the CPU-only head"
    assert all(len(t["nodes"]) == 1 for t in trials.values())
    # two half-GPU trials shared one node, at the same time
    shared = [n for n, c in nodes.items() if c >= 2]
    assert shared, nodes
    on_shared = sorted(
        (t for t in trials.values() if t["nodes"][0] == shared[0]), key=lambda t: t["start"]
    )
    assert on_shared[1]["start"] < on_shared[0]["end"], "trials on one node never overlapped"
