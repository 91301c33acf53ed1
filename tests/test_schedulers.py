"""ktune's ASHA (``ktune.schedulers.RevisingASHA``) against Ray's own, on real Tune runs."""

from __future__ import annotations

import json
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


def test_a_resume_refills_the_rungs_and_stops_again_what_asha_stopped(tmp_path):
    """``ktune resume`` (restore_rungs): Ray's snapshot holds no scheduler state, so a
    restored ASHA had empty rungs. Four trials report in turn to the scheduler of a run
    (with its stop log, as ``ktune run`` sets it) and to Ray's ``result.json`` files; a
    fresh scheduler refilled from those files holds the same rungs as the run's, and a
    trial that the run stopped (D, below the rung's cutoff when it arrived, after Ray's
    last snapshot) is stopped again at its first result after the resume; a trial that
    passed (B) continues. Without the refill, D continued (the rung's first arrival)."""
    import json

    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from ktune.config import parse_config
    from ktune.schedulers import STOP_LOG, read_stops, restore_rungs
    from ktune.tuner import build_scheduler

    cfg = parse_config(tiny_experiment(tmp_path, training__epochs=4))
    exp = tmp_path / "exp"
    exp.mkdir()

    def scheduler():
        s = build_scheduler(cfg)  # grace 1, factor 2: rungs at epochs 1, 2 (4 is the end)
        assert s._metric == "val_accuracy" and s._max_t == 4
        return s

    run = scheduler()
    run.stop_log = exp / STOP_LOG
    trials = {name: Trial("__fake", stub=True) for name in "ABCD"}
    for t in trials.values():
        run.on_trial_add(None, t)
    reports = [("A", 1, 0.50), ("B", 1, 0.60), ("A", 2, 0.55), ("B", 2, 0.70), ("C", 1, 0.40)]
    reports += [("D", 1, 0.65), ("D", 2, 0.58), ("B", 3, 0.72)]
    decided = {}
    for name, epoch, acc in reports:
        trial = trials[name]
        row = {"trial_id": trial.trial_id, "training_iteration": epoch, "val_accuracy": acc}
        folder = exp / f"trial_{trial.trial_id}"
        folder.mkdir(exist_ok=True)
        with open(folder / "result.json", "a") as f:
            f.write(json.dumps(row) + "\n")
        decided[name, epoch] = run.on_trial_result(None, trial, row)
    stop, go = TrialScheduler.STOP, TrialScheduler.CONTINUE
    assert decided == {
        ("A", 1): go, ("B", 1): go, ("A", 2): stop,  # A revised: rung 1 now holds B
        ("B", 2): go, ("C", 1): stop, ("D", 1): go, ("D", 2): stop, ("B", 3): go,
    }  # fmt: skip
    # each stop noted with the epoch of the result it was decided at
    stops = read_stops((exp / STOP_LOG).read_text())
    assert stops == {trials["A"].trial_id: 2, trials["C"].trial_id: 1, trials["D"].trial_id: 2}

    resumed = scheduler()
    # A 1 (revised at its second result: in no rung past the first), B 2, C 1, D 2
    assert restore_rungs(resumed, exp) == 6
    rungs = lambda s: [dict(recorded) for _, recorded in s._brackets[0]._rungs]  # noqa: E731
    assert rungs(resumed) == rungs(run)
    assert sum(trials["A"].trial_id in r for r in rungs(run)) == 1  # rung 1 alone
    assert resumed.stop_log == exp / STOP_LOG
    d1 = {"trial_id": trials["D"].trial_id, "training_iteration": 1, "val_accuracy": 0.65}
    d2 = {**d1, "training_iteration": 2, "val_accuracy": 0.58}
    b3 = {"trial_id": trials["B"].trial_id, "training_iteration": 3, "val_accuracy": 0.72}
    for t in (trials["D"], trials["B"]):
        resumed.on_trial_add(None, t)
    # its epochs since Ray's snapshot reported again: on to the one it was stopped at
    assert resumed.on_trial_result(None, trials["D"], d1) == go
    assert resumed.on_trial_result(None, trials["D"], d2) == stop
    assert resumed.on_trial_result(None, trials["B"], b3) == go  # passed both rungs
    assert rungs(resumed) == rungs(run)  # nothing recorded twice
    # a log noted before the epoch was (or cut short by a kill): stopped at its first result
    (exp / STOP_LOG).write_text(f"{trials['D'].trial_id}\n{trials['C'].trial_id} 1")
    old_log = scheduler()
    restore_rungs(old_log, exp)
    old_log.on_trial_add(None, trials["D"])
    assert old_log.on_trial_result(None, trials["D"], d1) == stop
    # the mutant: a restored scheduler as Ray leaves it lets D train on
    empty = scheduler()
    empty.on_trial_add(None, trials["D"])
    assert empty.on_trial_result(None, trials["D"], d2) == go


def test_a_revised_trial_leaves_no_result_at_the_rung_it_reached(tmp_path):
    """A user-style audit's search (6 trials, 3 epochs, rungs at epochs 1 and 2) had every
    trial stopped before its last epoch. A and B reach rung 1 close together (0.8892,
    0.8900), both pass; A's epoch 2 (0.9067) reaches rung 2 first, and the revision
    stops A (below rung 1's cutoff now that B is there). Its 0.9067 used to stay in rung
    2, recorded by Ray's rule and again by Ray's end of the trial (``on_trial_complete``,
    as Tune calls it for a stopped trial), and it stopped B (0.905) there: successive
    halving never promoted A to rung 2. Now B is rung 2's first promoted arrival and
    trains its last epoch."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from ktune.config import parse_config
    from ktune.schedulers import STOP_LOG, read_revised, read_stops, restore_rungs
    from ktune.tuner import build_scheduler

    cfg = parse_config(tiny_experiment(tmp_path, training__epochs=3))
    sched = build_scheduler(cfg)
    sched.stop_log = tmp_path / STOP_LOG
    a, b = Trial("__fake", stub=True), Trial("__fake", stub=True)
    for t in (a, b):
        sched.on_trial_add(None, t)

    def report(trial, epoch, acc):
        row = {"trial_id": trial.trial_id, "training_iteration": epoch, "val_accuracy": acc}
        folder = tmp_path / f"trial_{trial.trial_id}"
        folder.mkdir(exist_ok=True)
        with open(folder / "result.json", "a") as f:
            f.write(json.dumps(row) + "\n")
        return row, sched.on_trial_result(None, trial, row)

    stop, go = TrialScheduler.STOP, TrialScheduler.CONTINUE
    assert report(a, 1, 0.8892)[1] == go
    assert report(b, 1, 0.8900)[1] == go
    a2, decided = report(a, 2, 0.9067)
    assert decided == stop  # revised: rung 1's cutoff is now above A's 0.8892
    sched.on_trial_complete(None, a, a2)  # what Tune does for a trial it stops
    assert report(b, 2, 0.905)[1] == go  # was stop, below A's 0.9067 in rung 2
    assert report(b, 3, 0.91)[1] == stop  # its last epoch (max_t): B ran all 3
    rungs = [dict(recorded) for _, recorded in sched._brackets[0]._rungs]
    assert rungs == [{b.trial_id: 0.905}, {a.trial_id: 0.8892, b.trial_id: 0.89}]
    log = (tmp_path / STOP_LOG).read_text()
    assert read_stops(log) == {a.trial_id: 2} and read_revised(log) == {a.trial_id}
    # a resume refills the rungs as they were: A's epoch-2 result in none
    resumed = build_scheduler(cfg)
    assert restore_rungs(resumed, tmp_path) == 3
    assert [dict(r) for _, r in resumed._brackets[0]._rungs] == rungs
