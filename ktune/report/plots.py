"""Which plots a report draws: every plot the experiment has data for, each drawn on its
own so that one that fails becomes a note instead of costing the report.

The figures themselves: :mod:`ktune.report.study_plots` (the Optuna study) and
:mod:`ktune.report.trial_plots` (the trials); their names, titles and captions:
:data:`ktune.report.figures.PLOTS`.
"""

from __future__ import annotations

from ktune.experiment_dir import BEST_FILE
from ktune.report.figures import PLOTS, png, pyplot
from ktune.report.load import ExperimentRecord
from ktune.report.pareto_plot import pareto_plot, pareto_points
from ktune.report.study import build_study, param_importances_aside
from ktune.report.study_plots import importance_plot, optuna_plot, slice_plot
from ktune.report.text import one_line
from ktune.report.trial_plots import confusion_plot, curves_plot

__all__ = ["draw_plots"]


def draw_plots(record: ExperimentRecord) -> tuple[dict[str, bytes], dict[str, float], list[str]]:
    """PNG bytes of every plot the experiment has data for, the importances, and notes."""
    notes: list[str] = []
    pngs: dict[str, bytes] = {}
    study = build_study(record)
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    # fANOVA runs in a child beside the plots below (about 2 s of one core)
    importances_of = param_importances_aside(study, record.keys) if complete else None

    def attempt(name: str, make) -> None:
        try:
            # Optuna's views switch pyplot to the ggplot style; keep it to this report.
            with pyplot().style.context("ggplot"):
                pngs[name] = png(make())
        except Exception as e:  # noqa: BLE001 - one failed plot must not cost the report
            notes.append(
                f"{PLOTS[name][1].format(metric=record.metric)}: "
                f"could not be drawn ({one_line(e)})."
            )

    if not complete:
        notes.append(
            "No trial has finished yet: the optimization history, hyperparameter "
            "plots and importance appear once trials have."
        )
    elif not record.keys:
        notes.append(
            "No searched hyperparameters were found, so there is nothing to plot against them."
        )
    else:
        attempt("history", lambda: optuna_plot("history", study, record))
        attempt("slice", lambda: slice_plot(study, record))
        if len(complete) >= 2:
            attempt("parallel", lambda: optuna_plot("parallel", study, record))
        else:
            notes.append("Parallel coordinates need at least 2 finished trials.")
    importances, why = importances_of() if importances_of is not None else ({}, "")
    if importances:
        attempt("importance", lambda: importance_plot(importances, record))
    elif why:
        notes.append(why)
    if any(t.history for t in record.trials):
        attempt("curves", lambda: curves_plot(record))
    else:
        notes.append("No trial has reported an epoch yet: no learning curves.")
    front = pareto_points(record)
    if front is not None:
        attempt("pareto", lambda: pareto_plot(record, front))
    matrix = (record.best_info or {}).get("test_confusion_matrix")
    if matrix:
        names = record.class_names or [str(i) for i in range(len(matrix))]
        attempt(
            "confusion",
            lambda: confusion_plot(matrix, names, (record.best_info or {}).get("test_accuracy")),
        )
    elif record.finished:
        notes.append(
            f"{BEST_FILE} has no test_confusion_matrix (written by an older ktune): "
            "no confusion matrix."
        )
    else:
        notes.append(
            "The test accuracy and confusion matrix of the best trial appear when "
            "the search has finished (best.json)."
        )
    return pngs, importances, notes
