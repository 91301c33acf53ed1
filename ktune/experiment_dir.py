"""What an experiment folder ``<storage>/<name>`` holds, besides Ray's own files.

Every module that reads or writes one of these files takes its name from here:
- ``experiment.yaml``: the experiment file as run;
- ``ktune.json``: what export needs to rebuild a trial's model (family, training sizes,
  class names, artefacts such as the vocabulary, texts to verify an export on);
- ``optuna.journal``: the Optuna study, written while the search runs;
- ``results.csv``: one row per trial; ``best.json``: the best trial, with its test
  accuracy and confusion matrix;
- ``export/``: the default place of the exported SavedModel.
"""

from __future__ import annotations

__all__ = [
    "EXPERIMENT_FILE",
    "SPEC_FILE",
    "JOURNAL_FILE",
    "RESULTS_FILE",
    "BEST_FILE",
    "EXPORT_DIR",
]

EXPERIMENT_FILE = "experiment.yaml"
SPEC_FILE = "ktune.json"
JOURNAL_FILE = "optuna.journal"
RESULTS_FILE = "results.csv"
BEST_FILE = "best.json"
EXPORT_DIR = "export"
