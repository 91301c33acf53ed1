"""Builds the ``ray.tune.Tuner`` of an experiment: Optuna TPE search, ASHA, resources, storage.

The metric and mode are given to the searcher and the scheduler themselves: with
``max_concurrent_trials`` Tune wraps the searcher in a ``ConcurrencyLimiter`` that does not
pass ``TuneConfig``'s metric on (seen in Ray 2.60), and setting both is an error.
"""

from __future__ import annotations

from typing import Sequence

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from ktune.config import ExperimentConfig
from ktune.search_spaces import get_space
from ktune.search_spaces.base import tpe_startup_trials
from ktune.trainables.base import TrialPayload, run_trial

__all__ = ["build_tuner", "build_trainable", "build_searcher", "build_scheduler", "OPTUNA_JOURNAL"]


class DurableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose study may be ahead of the searcher's own snapshot.

    The study is a journal file that records every ``tell`` at once; Ray snapshots the
    searcher (and which trials it saw complete) only now and then. After a driver is
    killed in between, ``ktune resume`` restores a searcher that still counts a trial as
    running which the study already has finished: its next result is ignored here
    instead of failing the search with Optuna's ``UpdateFinishedTrialError``.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)


def build_searcher(cfg: ExperimentConfig) -> OptunaSearch:
    import optuna

    space = get_space(cfg.family)
    if cfg.search.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.search.seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=cfg.search.seed, n_startup_trials=tpe_startup_trials(cfg.search.num_samples)
        )
    # The study lives in the experiment directory (Optuna's journal file), so it survives
    # the driver and optuna-dashboard can open it while the search runs.
    cfg.experiment_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(cfg.experiment_dir / OPTUNA_JOURNAL))
    )
    return DurableOptunaSearch(
        space=space.space_fn(cfg.search.space),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        sampler=sampler,
        storage=storage,
        study_name=cfg.name,
    )


def build_scheduler(cfg: ExperimentConfig):
    if cfg.search.scheduler == "fifo":
        return FIFOScheduler()
    epochs = cfg.training.epochs
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        max_t=epochs,
        grace_period=min(cfg.search.grace_period, epochs),
        reduction_factor=cfg.search.reduction_factor,
    )


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


OPTUNA_JOURNAL = "optuna.journal"


def build_trainable(cfg: ExperimentConfig, payload: TrialPayload, callbacks: Sequence = ()):
    """``run_trial`` with its payload (put in the object store once) and its resources."""
    trainable = tune.with_parameters(run_trial, payload=payload, callbacks=list(callbacks))
    return tune.with_resources(trainable, {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})


def build_tuner(
    cfg: ExperimentConfig,
    payload: TrialPayload,
    callbacks: Sequence = (),
    *,
    tune_callbacks: Sequence[tune.Callback] = (),
    verbose: int = 1,
) -> tune.Tuner:
    """The Tuner for ``cfg``; ``payload`` reaches every trial once, through the object store.

    Args:
        callbacks: Keras callbacks added to every trial's ``fit``.
        tune_callbacks: ``ray.tune.Callback`` objects run in the driver (live progress).
        verbose: Ray Tune's own console output, 0 (silent) to 2. Defaults to 1.
    """
    return tune.Tuner(
        build_trainable(cfg, payload, callbacks),
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(cfg),
            scheduler=build_scheduler(cfg),
            num_samples=cfg.search.num_samples,
            max_concurrent_trials=cfg.search.max_concurrent_trials,
            # Short folder names: the hyperparameters are in each trial's params.json.
            trial_dirname_creator=trial_dirname,
            # The next trial runs in the finished trial's worker: TensorFlow, the payload
            # and the device set-up are not paid again (seconds per trial on a CPU).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=cfg.storage,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=cfg.search.metric,
                checkpoint_score_order=cfg.search.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
            callbacks=list(tune_callbacks),
            verbose=verbose,
        ),
    )
