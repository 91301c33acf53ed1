"""ktune's ASHA (``ktune.schedulers.RevisingASHA``) against Ray's own, on real Tune runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import tiny_experiment


def test_searches_with_asha_use_ktunes(tmp_path):
    from ktune.config import parse_config
    from ktune.schedulers import RevisingASHA
    from ktune.tuner import build_scheduler

    cfg = parse_config(tiny_experiment(tmp_path))
    scheduler = build_scheduler(cfg)
    assert isinstance(scheduler, RevisingASHA)
    assert scheduler._max_t == cfg.training.epochs


@pytest.mark.parametrize("revising", [True, False], ids=["ktune", "ray-alone"])
def test_a_rungs_poor_first_arrival_is_stopped_once_a_better_trial_fills_the_rung(
    tmp_path, ray_session, revising
):
    """Two trials at once, 3 epochs, rungs at epochs 1 and 2 (grace 1, factor 2). The poor
    trial (0.3) reaches both rungs first, so Ray's ASHA never compares it with anything
    and it trains all 3 epochs. ktune's compares it again at its next result, once the
    good trial (0.9) is recorded at the first rung, and stops it after epoch 2. The order
    of arrivals is forced with marker files (and a second for each result to reach the
    driver), not left to the trials' speed."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from ktune.schedulers import RevisingASHA

    def _wait_for(path: Path) -> None:  # defined here: Ray's workers cannot import tests
        deadline = time.monotonic() + 60
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} never appeared")
            time.sleep(0.05)

    def train(config):
        folder, role = Path(config["folder"]), config["role"]
        for epoch in (1, 2, 3):
            # The poor trial is first at each rung, and the good trial's first result
            # reaches the scheduler between the poor trial's first and second.
            if role == "good" and epoch in (1, 2):
                _wait_for(folder / f"poor-{epoch}")
                time.sleep(1.0)
            if role == "poor" and epoch == 2:
                _wait_for(folder / "good-1")
                time.sleep(1.0)
            (folder / f"{role}-{epoch}").touch()
            tune.report({"accuracy": 0.3 if role == "poor" else 0.9})

    kind = RevisingASHA if revising else ASHAScheduler
    grid = tune.Tuner(
        train,
        param_space={"role": tune.grid_search(["poor", "good"]), "folder": str(tmp_path)},
        tune_config=tune.TuneConfig(
            scheduler=kind(
                time_attr="training_iteration",
                metric="accuracy",
                mode="max",
                max_t=3,
                grace_period=1,
                reduction_factor=2,
            ),
            max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "results"), verbose=0),
    ).fit()
    epochs = {r.config["role"]: r.metrics["training_iteration"] for r in grid}
    assert all(r.error is None for r in grid)
    if revising:
        assert epochs == {"poor": 2, "good": 3}
    else:
        assert epochs == {"poor": 3, "good": 3}, f"Ray's ASHA changed (upgrade?): {epochs}"
