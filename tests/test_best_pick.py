"""Which trial and which epoch a search names best, when a trial's metric turned NaN.

Ray's own ranking lets a NaN win: ``Result.get_best_checkpoint`` sorts it first for
``min``, and ``ResultGrid.get_best_result`` keeps a trial's running best as
``min(value, best)``, which a later NaN poisons. ktune ranks the kept checkpoints itself,
skipping values that are not finite. Real ``ray.tune.Result`` objects, no search.
"""

from __future__ import annotations

import math

import pytest
from ray import tune

from ktune.results import _best_result, best_checkpoint


def _result(name: str, losses: list[float]) -> tune.Result:
    kept = [
        (tune.Checkpoint(f"/tmp/{name}/checkpoint_{i:06d}"), {"val_loss": v, "epoch": i + 1})
        for i, v in enumerate(losses)
    ]
    # Ray's checkpoint manager lists the kept checkpoints by score, where a NaN sorts first
    kept.sort(key=lambda cm: not math.isnan(cm[1]["val_loss"]))
    return tune.Result(
        metrics=kept[0][1], checkpoint=kept[0][0], error=None, path=f"/tmp/{name}",
        best_checkpoints=kept,
    )  # fmt: skip


def test_a_nan_epoch_is_never_the_best_checkpoint():
    diverged = _result("a", [0.5, math.nan])
    assert math.isnan(
        next(
            m
            for c, m in diverged.best_checkpoints
            if c.path == diverged.get_best_checkpoint("val_loss", "min").path
        )["val_loss"]
    )  # fmt: skip  (Ray's own pick: the NaN epoch)
    checkpoint, metrics = best_checkpoint(diverged, "val_loss", "min")
    assert checkpoint.path.endswith("checkpoint_000000") and metrics["val_loss"] == 0.5
    assert best_checkpoint(_result("b", [math.nan, math.inf]), "val_loss", "min") is None


@pytest.mark.parametrize("mode, best", [("min", "a"), ("max", "b")])
def test_the_best_trial_is_the_best_finite_epoch_the_first_of_equals(mode, best):
    grid = [_result("a", [0.5, math.nan]), _result("b", [0.9, 0.8]), _result("c", [0.5])]
    assert _best_result(grid, "val_loss", mode).path == f"/tmp/{best}"
    assert _best_result([_result("d", [math.nan])], "val_loss", mode) is None


def test_a_checkpoint_whose_row_ray_lost_is_ranked_by_its_own_metrics(tmp_path):
    """After PBT, ``tune.Result.from_path`` pairs some checkpoints with {} (their rows of
    result.json were lost when Ray rewrote it on a restart): the metrics.json ktune wrote
    into each checkpoint ranks them, so the best epoch is still the one exported."""
    import json

    kept = []
    for i, (value, row_kept) in enumerate(
        [(0.62, True), (0.83, False), (0.84, True), (0.86, False)]
    ):
        folder = tmp_path / f"checkpoint_{i:06d}"
        folder.mkdir()
        metrics = {"val_accuracy": value, "epoch": i + 1}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        kept.append((tune.Checkpoint(str(folder)), metrics if row_kept else {}))
    result = tune.Result(metrics=kept[-1][1], checkpoint=kept[-1][0], error=None,
                         path=str(tmp_path), best_checkpoints=kept)  # fmt: skip
    checkpoint, metrics = best_checkpoint(result, "val_accuracy", "max")
    assert checkpoint.path.endswith("checkpoint_000003") and metrics["epoch"] == 4
    # a folder without metrics.json (not ktune's) is passed over, as before
    (tmp_path / "checkpoint_000003" / "metrics.json").unlink()
    checkpoint, metrics = best_checkpoint(result, "val_accuracy", "max")
    assert checkpoint.path.endswith("checkpoint_000002") and metrics["val_accuracy"] == 0.84


def test_a_tie_goes_to_the_first_trial_by_name_as_in_the_progress_header():
    """Equal best values: best.json and the live header (tests/test_progress.py) name the
    same trial whatever order the grid lists them in (it differs after a resume)."""
    for grid in (
        [_result("trial_b", [0.4]), _result("trial_a", [0.5, 0.4]), _result("trial_c", [0.4])],
        [_result("trial_c", [0.4]), _result("trial_a", [0.4]), _result("trial_b", [0.4])],
    ):
        assert _best_result(grid, "val_loss", "min").path == "/tmp/trial_a"
    assert _best_result([_result("trial_b", [0.3]), _result("trial_a", [0.4])], "val_loss",
                        "min").path == "/tmp/trial_b"  # fmt: skip


def test_an_export_is_of_the_best_by_trial_checkpoint_folder_and_ensemble_seeds():
    """The one predicate `ktune resume` (an export already in place) and
    ExperimentResult.predict (an export it may use) ask of an export's metadata.json."""
    from ktune.experiment_dir import export_is_of

    best = {"trial": "trial_a", "checkpoint": "/runs/exp/trial_a/checkpoint_000002"}
    meta = {"trial": "trial_a", "checkpoint": "/runs/exp/trial_a/checkpoint_000002"}
    assert export_is_of(meta, best)
    # a copy of the experiment elsewhere names the same checkpoint folder
    assert export_is_of({**meta, "checkpoint": "/copy/exp/trial_a/checkpoint_000002"}, best)
    assert not export_is_of({**meta, "trial": "trial_b"}, best)  # `--force --trial`
    assert not export_is_of({**meta, "checkpoint": "/runs/exp/trial_a/checkpoint_000001"}, best)
    assert not export_is_of({}, best)
    ensemble = {**best, "ensemble": {"seeds": [0, 1, 2]}}
    assert not export_is_of(meta, ensemble)  # the best checkpoint alone, not the ensemble
    assert export_is_of({**meta, "ensemble_seeds": [0, 1, 2]}, ensemble)
    assert not export_is_of({**meta, "ensemble_seeds": [0, 1]}, ensemble)
