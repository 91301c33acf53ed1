"""ktune's ASHA: Ray Tune's ``ASHAScheduler``, and a rung's first arrivals are checked again.

Ray's asynchronous successive halving decides once, when a trial reaches a rung: it is
stopped when its result is below the cutoff of the results recorded there so far (the
``1 - 1/reduction_factor`` quantile). The first trial to reach a rung has nothing to be
compared with, so it always continues, however poor: in the quickstart a trial at
learning rate 2e-5 (validation accuracy 0.37, chance 0.25) reaches every rung first,
because its small model is fast, and trains all its epochs, while trials at 0.91 are
stopped after one.

:class:`RevisingASHA` keeps every decision Ray's makes and adds one: at each later
result of a trial, its result at each rung it passed is compared again with that rung's
cutoff as it is now; a trial no longer in the top ``1/reduction_factor`` of a rung it
passed is stopped. That is the rule of (synchronous) successive halving, applied as soon
as the rung holds the results to apply it; a trial that passed on its merits keeps
passing until better trials fill the rung above it.
"""

from __future__ import annotations

from typing import Any, Dict

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

__all__ = ["RevisingASHA"]


class RevisingASHA(AsyncHyperBandScheduler):
    """Ray's ``AsyncHyperBandScheduler`` (same arguments), revising its rungs' first
    arrivals as the rungs fill (see the module's doc)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: Dict) -> str:
        bracket = self._trial_info.get(trial.trial_id)
        passed = (
            []
            if bracket is None
            else [recorded for _, recorded in bracket._rungs if trial.trial_id in recorded]
        )
        action = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.CONTINUE:
            return action
        for recorded in passed:  # the rungs this trial had passed before this result
            cutoff = bracket.cutoff(recorded)
            if cutoff is not None and recorded[trial.trial_id] < cutoff:
                self._num_stopped += 1
                return TrialScheduler.STOP
        return action
