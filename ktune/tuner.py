"""Builds the ``ray.tune.Tuner`` of an experiment: Optuna TPE search (NSGA-II or TPE
over several ``search.objectives``), ASHA or PBT/PB2, resources, storage.

The metric and mode are given to the searcher and the scheduler themselves: a
``ConcurrencyLimiter`` does not pass ``TuneConfig``'s metric on (seen in Ray 2.60), and
setting both is an error. A ``Searcher`` is limited and wrapped here, as Tune would, in
ktune's :class:`~ktune.ray_state.SearchGenerator`.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import optuna
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from ktune.config import ExperimentConfig, space_of
from ktune.experiment_dir import JOURNAL_FILE
from ktune.ray_state import BasicVariantGenerator, SearchGenerator
from ktune.schedulers import STOP_LOG, RevisingASHA
from ktune.search_spaces.base import Choice, Range, Spec, tpe_startup_trials, tune_domain

if TYPE_CHECKING:  # the trial loop imports TensorFlow: the driver loads it in prepare's thread
    from ktune.trainables.base import TrialPayload

log = logging.getLogger("ktune")

__all__ = [
    "build_tuner",
    "build_trainable",
    "build_searcher",
    "build_scheduler",
    "build_population_scheduler",
    "param_space",
    "TrialResources",
]


class DurableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose study may be ahead of the searcher's own snapshot.

    The study is a journal file that records every ``tell`` at once; Ray snapshots the
    searcher (and which trials it saw complete) only now and then. After a driver is
    killed in between, ``ktune resume`` restores a searcher that still counts a trial as
    running which the study already has finished: its next result is ignored here
    instead of failing the search with Optuna's ``UpdateFinishedTrialError``. The other
    way round (Ray's experiment state newer than the searcher's, a kill between Ray's
    copies of the two without ktune's whole copy to put back), a trial the searcher never
    asked for is run and reported by Ray but not told to the study, with a warning.
    """

    def _knows(self, trial_id: str) -> bool:
        if trial_id in self._ot_trials:
            return True
        if trial_id not in self._completed_trials:
            self._completed_trials.add(trial_id)
            log.warning(
                "trial_%s is not in the restored searcher's snapshot: its results "
                "are kept but not told to the Optuna study",
                trial_id,
            )
        return False

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or self._knows(trial_id):
            super().on_trial_complete(trial_id, result=self._complete_result(result), error=error)

    def _complete_result(self, result: dict | None) -> dict | None:
        """Several objectives: a trial stopped before its last epoch (ASHA) lacks
        ``latency_ms``; told as pruned, not as a failed ``tell`` left running."""
        if not isinstance(self.metric, list) or not result:
            return result
        return result if all(result.get(m) is not None for m in self.metric) else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        if not self._knows(trial_id):
            return
        try:
            with warnings.catch_warnings():
                # An epoch a resumed trial reports again (the study took it before the
                # run stopped): Optuna keeps the first value and says so on the console.
                warnings.filterwarnings("ignore", "The reported value is ignored because")
                super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler that Ray can save with its searcher: the sampler holds a
    ``threading.Lock`` (Optuna 5), which is dropped when pickled and made anew."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def build_searcher(cfg: ExperimentConfig):
    """Optuna (TPE or random) over the family's define-by-run space; under PBT/PB2 Ray's
    BasicVariantGenerator draws the first population from the Tune form of the space
    (PBT then moves the population itself; a model-based searcher would not see that)."""
    space = space_of(cfg.family, cfg.model)
    if cfg.search.scheduler in ("pbt", "pb2"):
        # The whole population runs at once (no concurrency limit): PBT compares and
        # clones live trials, and Ray pauses and resumes them as the resources allow.
        return BasicVariantGenerator(random_state=cfg.search.seed)
    if cfg.search.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.search.seed)
    elif cfg.search.sampler == "nsga2":
        # Optuna's default generation (50 trials) would leave a small search all random
        # draws: a generation as large as TPE's random start instead.
        sampler = PicklableNSGAIISampler(
            seed=cfg.search.seed, population_size=tpe_startup_trials(cfg.search.num_samples)
        )
    else:
        sampler = optuna.samplers.TPESampler(
            seed=cfg.search.seed, n_startup_trials=tpe_startup_trials(cfg.search.num_samples)
        )
    # The study lives in the experiment directory (Optuna's journal file), so it survives
    # the driver and optuna-dashboard can open it while the search runs.
    cfg.experiment_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(cfg.experiment_dir / JOURNAL_FILE))
    )
    objectives = cfg.search.objectives
    return DurableOptunaSearch(
        space=space.space_fn(cfg.search.space),
        # several objectives: Optuna's multi-objective study (TPE or NSGA-II)
        metric=[o.metric for o in objectives] if objectives else cfg.search.metric,
        mode=[o.mode for o in objectives] if objectives else cfg.search.mode,
        sampler=sampler,
        storage=storage,
        study_name=cfg.name,
    )


def param_space(cfg: ExperimentConfig) -> dict | None:
    """The Tune ``param_space`` for searchers that take one (PBT/PB2's first draw)."""
    if cfg.search.scheduler not in ("pbt", "pb2"):
        return None
    return space_of(cfg.family, cfg.model).tune_space(cfg.search.space)


def build_scheduler(cfg: ExperimentConfig):
    search = cfg.search
    if search.scheduler == "fifo":
        return FIFOScheduler()
    if search.scheduler in ("pbt", "pb2"):
        return build_population_scheduler(
            search.scheduler,
            {k: search.space[k] for k in search.mutations or ()},
            metric=search.metric,
            mode=search.mode,
            interval=search.perturbation_interval,
            epochs=cfg.training.epochs,
        )
    epochs = cfg.training.epochs
    return RevisingASHA(
        time_attr="training_iteration",
        metric=search.metric,
        mode=search.mode,
        max_t=epochs,
        grace_period=min(search.grace_period, epochs),
        reduction_factor=search.reduction_factor,
    )


def build_population_scheduler(
    kind: str,
    mutations: Mapping[str, Spec],
    *,
    metric: str,
    mode: str,
    interval: int = 1,
    epochs: int | None = None,
):
    """PBT or PB2 over ``mutations`` (specs of shape-keeping keys), every ``interval`` epochs.

    An exploited trial restarts from the donor's checkpoint with the mutated config
    (``ktune.trainables.base.starting_checkpoint``): the donor's weights and optimizer
    state, the new learning rate, warmup, dropout or weight decay. With ``epochs``, a donor
    that has reported its last epoch is not cloned (:class:`ktune.schedulers.KtunePBT`).
    """
    from ktune.schedulers import KtunePB2 as PB2
    from ktune.schedulers import KtunePBT as PopulationBasedTraining

    if kind == "pb2":
        for name, spec in mutations.items():
            if isinstance(spec, Range) and (spec.log or spec.integer):
                log.warning(
                    "search.space.%s: PB2 explores [%s, %s] on a linear scale as floats "
                    "(Ray's PB2 has no %s ranges)%s",
                    name,
                    spec.low,
                    spec.high,
                    "log" if spec.log else "integer",
                    ": its proposals crowd the top of the range" if spec.log else "",
                )
        return PB2(
            epochs=epochs,
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            perturbation_interval=interval,
            # config.py lets PB2 mutate ranges only
            hyperparam_bounds={
                k: [spec.low, spec.high] for k, spec in mutations.items() if isinstance(spec, Range)
            },
        )
    return PopulationBasedTraining(
        epochs=epochs,
        time_attr="training_iteration",
        metric=metric,
        mode=mode,
        perturbation_interval=interval,
        hyperparam_mutations={
            k: list(spec.values) if isinstance(spec, Choice) else tune_domain(spec)
            for k, spec in mutations.items()
        },
        custom_explore_fn=KeepInRange(
            {k: spec for k, spec in mutations.items() if isinstance(spec, Range)}
        ),
    )


class KeepInRange:
    """PBT's ``custom_explore_fn``: each mutated value of a range back inside the range.

    Ray's PBT multiplies a continuous value by 0.8 or 1.2 and does not look at its
    domain's bounds, so a trial near the top of ``dropout: {low: 0.1, high: 0.9}`` was
    handed 1.08 (and failed its config check), and a learning rate walked out of the
    range the space names. Clamped here, integers rounded.
    """

    def __init__(self, ranges: Mapping[str, Range]):
        self.ranges = dict(ranges)

    def __call__(self, config: dict) -> dict:
        for name, spec in self.ranges.items():
            if name in config:
                value = min(max(config[name], spec.low), spec.high)
                config[name] = int(round(value)) if spec.integer else float(value)
        return config


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


class TrialResources:
    """The resources of a trial, asked for by Ray in the driver as each trial is created:
    the place where a drawn config is checked before it reaches a worker.

    A config that misses a key or breaks a rule (``heads`` not dividing ``embed_dim``)
    stops ``Tuner.fit()`` in the driver with one :class:`~ktune.errors.ConfigError`.
    With ``model`` set (a user's own Tuner over a BERT family), each size drawn is also
    checked to load, once per size.
    """

    def __init__(
        self,
        space,
        cpu: float,
        gpu: float,
        family: str = "",
        model: Mapping[str, Any] | None = None,
    ):
        self.space, self.cpu, self.gpu = space, cpu, gpu
        self.family, self.model = family, dict(model) if model else None
        self._checked: set = set()

    def __call__(self, config: dict):
        from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

        checked = self.space.check_config(config)
        if self.model is not None and "layers" in checked:
            size = (checked["layers"], checked["embed_dim"], checked["head_size"])
            if size not in self._checked:
                from ktune.search_spaces.base import Fixed
                from ktune.trainables import get_family

                layers, embed_dim, head_size = size
                get_family(self.family).check_model(
                    self.model,
                    {
                        "layers": Fixed(layers),
                        "embed_dim": Fixed(embed_dim),
                        "head_size": Fixed(head_size),
                    },
                )
                self._checked.add(size)
        return resource_dict_to_pg_factory({"CPU": self.cpu, "GPU": self.gpu})


def build_trainable(
    cfg: ExperimentConfig,
    payload: TrialPayload,
    callbacks: Sequence = (),
    *,
    check_models: bool = False,
):
    """``run_trial`` with its payload (put in the object store once) and its resources;
    every drawn config is checked in the driver (see :class:`TrialResources`)."""
    from ktune.trainables.base import run_trial

    trainable = tune.with_parameters(run_trial, payload=payload, callbacks=list(callbacks))
    return tune.with_resources(
        trainable,
        TrialResources(
            space_of(cfg.family, cfg.model),
            cfg.resources.cpu,
            cfg.resources.gpu,
            cfg.family,
            cfg.model if check_models else None,
        ),
    )


def build_tuner(
    cfg: ExperimentConfig,
    payload: TrialPayload,
    callbacks: Sequence = (),
    *,
    tune_callbacks: Sequence[tune.Callback] = (),
    verbose: int = 1,
    scheduler=None,
    search_alg=None,
) -> tune.Tuner:
    """The Tuner for ``cfg``; ``payload`` reaches every trial once, through the object store.

    Args:
        callbacks: Keras callbacks added to every trial's ``fit``.
        tune_callbacks: ``ray.tune.Callback`` objects run in the driver (live progress).
        verbose: Ray Tune's own console output, 0 (silent) to 2. Defaults to 1.
        scheduler: a Ray Tune scheduler instead of the one ``search.scheduler`` names.
        search_alg: a Ray Tune searcher instead of Optuna (or PBT's first draw). One
            without a space of its own searches the Tune form of ``search.space``.
    """
    space = param_space(cfg)
    if search_alg is not None:
        _set_metric(search_alg, cfg)
        space = (
            None
            if _has_space(search_alg)
            else space_of(cfg.family, cfg.model).tune_space(cfg.search.space)
        )
    else:
        search_alg = build_searcher(cfg)
    if scheduler is not None:
        _set_metric(scheduler, cfg)
    else:
        scheduler = build_scheduler(cfg)
        if isinstance(scheduler, RevisingASHA):  # read by a resume (uploaded on a URI)
            scheduler.stop_log = Path(cfg.experiment_dir) / STOP_LOG
    if isinstance(search_alg, Searcher):
        # What Tune would do with a Searcher (limit, then wrap), with ktune's generator,
        # whose snapshots never race Ray's background copy. A limiter passed in stands.
        if not isinstance(search_alg, ConcurrencyLimiter):
            search_alg = ConcurrencyLimiter(
                search_alg, max_concurrent=cfg.search.max_concurrent_trials
            )
        search_alg = SearchGenerator(search_alg)
    return tune.Tuner(
        build_trainable(cfg, payload, callbacks),
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=cfg.search.num_samples,
            # Applied above (a BasicVariantGenerator has its own limit: PBT's whole
            # population runs at once).
            max_concurrent_trials=None,
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
                # PBT clones a donor's latest checkpoint some time after it is written:
                # keeping only 2 lets Ray delete it first (Ray warns of this).
                num_to_keep=4 if cfg.search.scheduler in ("pbt", "pb2") else 2,
                checkpoint_score_attribute=cfg.search.metric,
                checkpoint_score_order=cfg.search.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
            callbacks=trial_history_callbacks(tune_callbacks),
            verbose=verbose,
        ),
    )


def trial_history_callbacks(tune_callbacks: Sequence[tune.Callback]) -> list:
    """``tune_callbacks`` after ktune's :class:`~ktune.ray_state.KeepTrialHistory` (a
    retried trial's history stays whole), unless the caller passed one already."""
    from ktune.ray_state import KeepTrialHistory

    callbacks = list(tune_callbacks)
    if not any(isinstance(c, KeepTrialHistory) for c in callbacks):
        callbacks.insert(0, KeepTrialHistory())
    return callbacks


def _has_space(search_alg) -> bool:
    inner = getattr(search_alg, "searcher", search_alg)  # a ConcurrencyLimiter's searcher
    return bool(getattr(inner, "_space", None))


def _set_metric(obj, cfg: ExperimentConfig) -> None:
    """A user's searcher or scheduler without a metric optimizes the experiment's: Tune's
    own way (``TuneConfig(metric=...)``) clashes with ktune's searchers (module docstring)."""
    if getattr(obj, "metric", None) is None and getattr(obj, "_metric", None) is None:
        if isinstance(obj, TrialScheduler):
            obj.set_search_properties(cfg.search.metric, cfg.search.mode)
        else:
            obj.set_search_properties(cfg.search.metric, cfg.search.mode, {})
