"""``ktune report``: a search as one HTML page with plots, or several searches side by side.

The package, one part a module:

- :mod:`~ktune.report.load`: the experiment directory read into an :class:`ExperimentRecord`
  (finished, running or stopped by a crash), each trial's epochs (:func:`read_history`);
- :mod:`~ktune.report.study`: the finished trials rebuilt as an Optuna study, importances;
- :mod:`~ktune.report.plots`: which plots are drawn (:func:`draw_plots`), from
  :mod:`~ktune.report.study_plots`, :mod:`~ktune.report.trial_plots` and
  :mod:`~ktune.report.pareto_plot` (a multi-objective search's front), with their titles
  and captions in :mod:`~ktune.report.figures`;
- :mod:`~ktune.report.text`: the trial table and the summary in words;
- :mod:`~ktune.report.html`: the page (:func:`render_html`, :func:`write_report`);
- :mod:`~ktune.report.compare`: several experiments on one page (:func:`compare_experiments`).

``write_report`` writes ``report.html`` with every image embedded (one file to send around)
and the same images as PNGs beside it; like ``compare_experiments`` it returns what was
written and the summary to print, and prints nothing itself (``ktune report`` prints it).

Nothing here imports TensorFlow or Ray; matplotlib and Optuna load when a report is drawn.
"""

from __future__ import annotations

from ktune.report.compare import compare_experiments, compare_labels, compare_rows
from ktune.report.figures import PLOTS
from ktune.report.html import REPORT_FILE, WrittenReport, render_html, write_report
from ktune.report.load import ExperimentRecord, TrialRecord, load_experiment, read_history
from ktune.report.plots import draw_plots
from ktune.report.study import build_study, param_importances, read_optuna_study
from ktune.report.text import summary_text, table_text, trial_table
from ktune.tables import FINISHED, format_duration, status_label

__all__ = [
    "ExperimentRecord",
    "TrialRecord",
    "WrittenReport",
    "REPORT_FILE",
    "load_experiment",
    "write_report",
    "compare_experiments",
    "read_history",
    "build_study",
    "param_importances",
    "read_optuna_study",
    "draw_plots",
    "render_html",
    "summary_text",
    "table_text",
    "trial_table",
    "compare_rows",
    "compare_labels",
    "PLOTS",
    "status_label",
    "format_duration",
    "FINISHED",
]
