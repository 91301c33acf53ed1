"""``ktune report`` computes fANOVA importances in a forked child beside its plots: the same
numbers as computed in place, the work really done in the child (the report's own process
never imports scikit-learn), and a child that dies costs nothing but the time."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, os, sys
import optuna
from ktune.report import study as study_module

optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(direction="maximize")
dists = {
    "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
    "heads": optuna.distributions.CategoricalDistribution([1, 2, 4]),
    "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
}
for i in range(12):
    params = {"lr": 1e-4 * 1.8**i, "heads": [1, 2, 4][i % 3], "dropout": 0.04 * (i % 5)}
    value = 1.0 - abs(i - 7) / 10 + 0.01 * (i % 3)
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
keys = list(dists)
parent = os.getpid()
if sys.argv[1] == "dies":
    real = study_module.param_importances

    def dying(*args, **kwargs):
        if os.getpid() != parent:
            os._exit(3)  # the child dies before it sends anything
        return real(*args, **kwargs)

    study_module.param_importances = dying
aside = study_module.param_importances_aside(study, keys)()
sklearn_here = "sklearn" in sys.modules
print(json.dumps({"aside": aside, "sklearn_here": sklearn_here,
                  "inline": study_module.param_importances(study, keys)}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importances_computed_in_a_child_are_the_ones_computed_in_place():
    got = _run("child")
    importances, why = got["aside"]
    assert not why and set(importances) == {"lr", "heads", "dropout"}
    assert importances == got["inline"][0]
    # fANOVA imports scikit-learn: only the child did, until the inline check above
    assert got["sklearn_here"] is False


def test_a_child_that_dies_leaves_the_importances_to_the_report_itself():
    got = _run("dies")
    assert got["aside"] == got["inline"] and got["aside"][0]
    assert got["sklearn_here"] is True  # computed here after the child's death


def test_with_tensorflow_or_ray_loaded_nothing_is_forked(monkeypatch):
    import multiprocessing

    import optuna

    from ktune.report.study import param_importances_aside

    monkeypatch.setitem(sys.modules, "ray", sys.modules.get("ray", object()))
    started = []
    monkeypatch.setattr(
        multiprocessing.context.ForkContext,
        "Process",
        lambda *a, **k: started.append(a) or None,
        raising=False,
    )
    study = optuna.create_study()
    result = param_importances_aside(study, ["x"])
    assert started == []
    assert result() == (
        {},
        "Hyperparameter importance needs at least 2 finished trials; this search has 0 so far.",
    )
