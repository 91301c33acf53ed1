"""The report's Optuna study: the finished trials rebuilt as a study, their importances, and
one line about the study ktune persisted (``optuna.journal``).

The study is rebuilt from the trial folders (not read from the journal) so that conditional
names such as ``heads_for_embed_dim_64`` appear as the one ``heads`` axis and each trial's
value is its best epoch, as in ``results.csv`` and ``best.json``. Optuna loads when a study
is built.
"""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Any, Callable, Sequence

from ktune.experiment_dir import JOURNAL_FILE
from ktune.report.load import ExperimentRecord, TrialRecord
from ktune.report.text import one_line
from ktune.tables import FINISHED

__all__ = ["build_study", "param_importances", "param_importances_aside", "read_optuna_study"]


def _distribution(spec: Any, observed: Sequence[Any]):
    """The Optuna distribution of a searched key: from its spec, else from what trials drew."""
    import optuna.distributions as od

    from ktune.search_spaces.base import Choice, Range

    if isinstance(spec, Range):
        if spec.integer:
            return od.IntDistribution(int(spec.low), int(spec.high), log=spec.log)
        return od.FloatDistribution(float(spec.low), float(spec.high), log=spec.log)
    choices = list(spec.values) if isinstance(spec, Choice) else []
    for v in observed:
        if v not in choices:
            choices.append(v)
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
        choices.sort()
    return od.CategoricalDistribution(choices)


def build_study(record: ExperimentRecord):
    """An in-memory Optuna study of the finished trials: real ``heads``, best-epoch values.

    A trial that reported no epoch (or lacks a searched key) is left out; failed trials
    are FAIL, the others COMPLETE (early-stopped ones with their best epoch, as Ray's
    results do). Distributions come from the experiment's search space (log ranges stay
    log); a value outside it (the file was edited) falls back to what the trials drew.
    """
    usable = [
        t for t in record.trials if t.status in FINISHED and all(k in t.config for k in record.keys)
    ]
    if not usable:  # no trial finished yet: nothing to draw a key's choices from either
        return _study_of(record, usable, {})
    try:
        return _study_of(
            record,
            usable,
            {
                k: _distribution(record.space.get(k), [t.config[k] for t in usable])
                for k in record.keys
            },
        )
    except ValueError:
        return _study_of(
            record,
            usable,
            {k: _distribution(None, [t.config[k] for t in usable]) for k in record.keys},
        )


def _study_of(record: ExperimentRecord, usable: Sequence[TrialRecord], dists: dict):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=record.name, direction="maximize" if record.mode == "max" else "minimize"
    )
    for t in usable:
        best = t.best(record.metric, record.mode)
        value = best[1] if best is not None and t.status != "ERROR" else None
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL
                if value is None
                else optuna.trial.TrialState.COMPLETE,
                value=value,
                params={k: t.config[k] for k in record.keys},
                distributions=dists,
                intermediate_values=dict(t.curve(record.metric)),
                user_attrs={"ray_trial": t.trial},
            )
        )
    return study


def param_importances(study, keys: Sequence[str]) -> tuple[dict[str, float], str]:
    """Optuna's fANOVA importances over the complete trials, or ({}, why not)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = [k for k in keys if len({repr(t.params.get(k)) for t in complete}) > 1]
    if len(complete) < 2:
        return {}, (
            f"Hyperparameter importance needs at least 2 finished trials; "
            f"this search has {len(complete)} so far."
        )
    if not varied:
        return {}, "Hyperparameter importance needs trials that differ in their hyperparameters."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(
                study,
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                params=varied,
            ), ""
    except Exception as e:  # noqa: BLE001 - the rest of the report is still worth writing
        return {}, f"Hyperparameter importance could not be computed: {one_line(e)}"


def param_importances_aside(
    study, keys: Sequence[str]
) -> Callable[[], tuple[dict[str, float], str]]:
    """:func:`param_importances` in a forked child while the caller draws; call the
    returned function for the result (the same numbers: the evaluator is seeded).

    fANOVA's import of scikit-learn and its forest take about 2 s of ``ktune report``'s
    5 s on one core, beside the plots' 2-3 s on the other. Forked only where that is
    safe: Linux, no thread besides this one, and neither TensorFlow
    nor Ray (whose native threads a fork would copy mid-lock) loaded; otherwise, or
    when the child fails, computed here.
    """
    import multiprocessing

    forkable = (
        sys.platform.startswith("linux")  # macOS: frameworks a fork leaves unusable
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and not any(m in sys.modules for m in ("tensorflow", "ray"))
    )
    if not forkable:
        here = param_importances(study, keys)
        return lambda: here
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        try:
            send.send(param_importances(study, keys))
        finally:
            send.close()

    process = context.Process(target=child, name="ktune-importance", daemon=True)
    process.start()
    send.close()  # the child holds the only writer: its end is this reader's EOF

    def from_child() -> tuple[dict[str, float], str]:
        try:
            got = receive.recv() if receive.poll(300) else None
        except (EOFError, OSError):  # the child died before it sent
            got = None
        finally:
            receive.close()
            process.join(10)
        return param_importances(study, keys) if got is None else got

    return from_child


def read_optuna_study(record: ExperimentRecord) -> str:
    """One line about the persisted study (``optuna.journal``), for the report."""
    path = record.path / JOURNAL_FILE
    if not path.is_file():
        return f"no {JOURNAL_FILE} in this experiment"
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(path))
        )
        names = [s.study_name for s in storage.get_all_studies()]
        name = record.name if record.name in names else (names[0] if names else record.name)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
    except Exception as e:  # noqa: BLE001
        return f"{JOURNAL_FILE} could not be read: {one_line(e)}"
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return f"study '{name}' in {JOURNAL_FILE}: {len(trials)} trials ({parts or 'none yet'})"
