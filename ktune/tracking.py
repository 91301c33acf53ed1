"""A search seen in MLflow and Weights & Biases (``tracking:`` in the experiment file).

Ray's own logger callbacks log each trial (``MLflowLoggerCallback``,
``WandbLoggerCallback``); this module adds what they lack, all in the driver:

- MLflow: a parent run for the search, opened before the first trial; every trial's run
  is its child (tag ``mlflow.parentRunId``) with tags ``family``, ``trial`` (its folder),
  ``status`` (TERMINATED / ERROR, as in ``results.csv``) and ``stopped_early`` (the
  scheduler stopped it before its last epoch). When the search ends the parent gets the
  best trial's config (``best.<key>`` params) and its test accuracy and loss; the best
  trial's run gets the export as the artifact ``export/``, registered in the Model
  Registry with ``register: NAME``. ``ktune resume`` continues the same parent run.
- W&B: one run per trial in ``project`` (``group``: the experiment's name by default).

Credentials stay where MLflow and W&B look for them (``MLFLOW_TRACKING_TOKEN``,
``WANDB_API_KEY``, ``wandb login``): ktune passes none to Ray, writes none to a file.
Ray's W&B callback would copy ``WANDB_API_KEY`` into its logging actors' runtime env;
ktune's does not (the actors run on the driver's node, which already holds the login).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ktune._keras_env import environment
from ktune.config import ExperimentConfig
from ktune.errors import ExperimentError

__all__ = ["SearchTracking", "start_tracking", "check_tracking"]

log = logging.getLogger("ktune")

PARENT_ROLE = "search"  # the tag ``ktune_role`` of a search's parent run


class SearchTracking:
    """The trackers of one search: Tune callbacks for the trials, then :meth:`finish`.

    Used as a context manager around the search: a search that raises ends the MLflow
    parent run as FAILED.
    """

    def __init__(self, cfg: ExperimentConfig, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.callbacks: list = []
        self._mlflow: Any = None  # MlflowClient
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        if cfg.tracking.mlflow is not None:
            self._start_mlflow(resume)
        if cfg.tracking.wandb is not None:
            self.callbacks.append(_wandb_callback(cfg))

    # --- MLflow -----------------------------------------------------------------------

    def _start_mlflow(self, resume: bool) -> None:
        from mlflow import MlflowClient

        cfg, ml = self.cfg, self.cfg.tracking.mlflow
        assert ml is not None
        name = ml.experiment or cfg.name
        try:
            client = MlflowClient(tracking_uri=ml.uri)
            found = client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else client.create_experiment(name)
            parent = self._find_parent(client, experiment_id) if resume else None
            if parent is None:
                parent = client.create_run(
                    experiment_id,
                    run_name=cfg.name,
                    tags={
                        "ktune_role": PARENT_ROLE,
                        "experiment_path": cfg.experiment_path,
                        "family": cfg.family,
                    },
                ).info.run_id
                client.log_param(parent, "num_samples", cfg.search.num_samples)
                client.log_param(parent, "scheduler", cfg.search.scheduler)
            else:
                client.update_run(parent, status="RUNNING")
        except Exception as e:  # MlflowException, connection errors: one line
            line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExperimentError(f"tracking.mlflow.uri: {ml.uri}: {line}") from None
        self._mlflow, self.experiment_id, self.parent_run_id = client, experiment_id, parent
        self.callbacks.append(
            _mlflow_callback(cfg, name, {"mlflow.parentRunId": parent, "family": cfg.family})
        )

    def _find_parent(self, client: Any, experiment_id: str) -> str | None:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.ktune_role = '{PARENT_ROLE}' and "
            f"tags.experiment_path = '{self.cfg.experiment_path}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def trial_run_id(self, trial: str) -> str | None:
        """The MLflow run of a trial (its folder name, ``trial_<id>``) in this search."""
        if self._mlflow is None or self.parent_run_id is None:
            return None
        return _trial_run(self._mlflow, self.experiment_id, self.parent_run_id, trial)

    def finish(self, best: dict) -> None:
        """The search is over: ``best`` is ``best.json``'s contents (with ``export``)."""
        client, parent = self._mlflow, self.parent_run_id
        if client is None or parent is None:
            return
        ml = self.cfg.tracking.mlflow
        assert ml is not None
        logged = client.get_run(parent).data.params  # a resumed search's earlier end
        for key, value in best["config"].items():
            if f"best.{key}" not in logged:  # MLflow refuses to change a param
                client.log_param(parent, f"best.{key}", value)
            elif logged[f"best.{key}"] != str(value):
                log.warning("MLflow run %s keeps best.%s from its first end", parent, key)
        for key in ("test_accuracy", "test_loss"):
            client.log_metric(parent, key, float(best[key]))
        for key, value in best.get("metrics", {}).items():
            if key != "epoch":
                client.log_metric(parent, f"best.{key}", float(value))
        client.set_tag(parent, "best_trial", best["trial"])
        ensemble = best.get("ensemble")
        if ensemble:  # test_accuracy is the ensemble's: say so, and the trial's alone
            client.set_tag(parent, "ensemble_seeds", ",".join(map(str, ensemble["seeds"])))
            for key, value in (ensemble.get("metrics") or {}).items():
                client.log_metric(parent, f"ensemble.{key}", float(value))
            alone = ensemble["members"][0].get("test_accuracy")
            if alone is not None:
                client.log_metric(parent, "best_trial.test_accuracy", float(alone))
        spec = self.cfg.experiment_dir / "experiment.yaml"
        if spec.is_file():
            client.log_artifact(parent, str(spec))
        run_id = self.trial_run_id(best["trial"])
        if run_id is not None:
            client.set_tag(parent, "best_run_id", run_id)
            self._log_export(run_id, best.get("export"), ml.register)
        client.set_terminated(parent, status="FINISHED")

    def _log_export(self, run_id: str, export: str | None, register: str | None) -> None:
        """The export as the best run's artifact ``export/``, registered with ``register``."""
        if not export:  # export off
            return
        client = self._mlflow
        if client.get_run(run_id).data.tags.get("export") == export:
            return  # logged (and registered) by the run this one resumes
        if not Path(export).is_dir():  # an export on a URI: named, not copied
            log.warning("%s: not a local folder; not logged to MLflow", export)
            client.set_tag(run_id, "export", export)
            return
        client.log_artifacts(run_id, export, "export")
        if register:
            from mlflow.exceptions import MlflowException

            try:
                client.create_registered_model(register)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = client.create_model_version(
                register, source=f"runs:/{run_id}/export", run_id=run_id
            )
            log.info("registered %s version %s in MLflow", register, version.version)
        client.set_tag(run_id, "export", export)  # last: a resume after a crash here redoes it

    def __enter__(self) -> SearchTracking:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if kind is not None and self._mlflow is not None and self.parent_run_id is not None:
            try:
                status = "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
                self._mlflow.set_terminated(self.parent_run_id, status=status)
            except Exception:  # the search's own error is the one to report
                log.warning("could not end the MLflow run %s", self.parent_run_id)


def check_tracking(cfg: ExperimentConfig) -> None:
    """Before any work: the MLflow server answers, W&B has a login (or runs offline).
    Each failure is one :class:`~ktune.errors.ExperimentError` naming the key."""
    if cfg.tracking.mlflow is not None:
        uri = cfg.tracking.mlflow.uri
        # MLflow retries an unreachable server for minutes by default: ask once.
        try:
            from mlflow import MlflowClient

            with environment(_ONE_TRY):
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as e:
            line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExperimentError(f"tracking.mlflow.uri: {uri}: {line}") from None
    if cfg.tracking.wandb is not None:
        from ray.air.integrations.wandb import _set_api_key

        try:
            _set_api_key()  # Ray's own check: offline, WANDB_API_KEY, or `wandb login`
        except ValueError:
            raise ExperimentError(
                "tracking.wandb: no W&B login: run `wandb login`, set WANDB_API_KEY, or "
                "set WANDB_MODE=offline (and `wandb sync` later)"
            ) from None


_ONE_TRY = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def start_tracking(cfg: ExperimentConfig, *, resume: bool = False) -> SearchTracking:
    """The trackers ``cfg.tracking`` names (none: an empty :class:`SearchTracking`)."""
    return SearchTracking(cfg, resume=resume)


def _mlflow_callback(cfg: ExperimentConfig, experiment: str, tags: dict):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from ktune.tuner import trial_dirname

    epochs = cfg.training.epochs

    class TrialRuns(MLflowLoggerCallback):
        """Ray's MLflow logger, with ktune's tags on each trial's run."""

        def log_trial_start(self, trial) -> None:
            client, name = self.mlflow_util._get_client(), trial_dirname(trial)
            if trial not in self._trial_runs:  # resumed: the trial's run from before
                run_id = _trial_run(
                    client, self.mlflow_util.experiment_id, self.tags["mlflow.parentRunId"], name
                )
                if run_id is not None:
                    self._trial_runs[trial] = run_id
                    client.update_run(run_id, status="RUNNING")
            fresh = trial not in self._trial_runs
            super().log_trial_start(trial)
            if fresh:
                client.set_tag(self._trial_runs[trial], "trial", name)

        def log_trial_end(self, trial, failed: bool = False) -> None:
            run_id = self._trial_runs.get(trial)
            if run_id is not None:
                done = int((trial.last_result or {}).get("training_iteration", 0))
                client = self.mlflow_util._get_client()
                client.set_tag(run_id, "status", "ERROR" if failed else "TERMINATED")
                client.set_tag(run_id, "stopped_early", str(not failed and done < epochs).lower())
            super().log_trial_end(trial, failed=failed)

    assert cfg.tracking.mlflow is not None
    return TrialRuns(
        tracking_uri=cfg.tracking.mlflow.uri,
        experiment_name=experiment,
        tags=tags,
        # PBT/PB2 restart a trial with mutated values, and MLflow refuses to change a
        # logged param: its final config then (each epoch's learning_rate_now is a metric).
        log_params_on_trial_end=cfg.search.scheduler in ("pbt", "pb2"),
    )


def _trial_run(client: Any, experiment_id: str | None, parent: str, trial: str) -> str | None:
    """The MLflow run of a trial (its folder name, ``trial_<id>``) under ``parent``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.trial = '{trial}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _wandb_callback(cfg: ExperimentConfig):
    import ray
    from ray.air.integrations.wandb import (
        WandbLoggerCallback,
        _force_on_current_node,
        _WandbLoggingActor,
    )

    wb = cfg.tracking.wandb
    assert wb is not None

    class TrialLogger(_WandbLoggingActor):
        def run(self):
            super().run()
            # Ray kills this actor once run() returns, and wandb-core (its child process)
            # dies with it: an offline run's file was seen left empty. teardown() waits
            # until wandb-core has written everything out.
            self._wandb.teardown()

    class TrialRuns(WandbLoggerCallback):
        """Ray's W&B logger, whose logging actors get no API key in their runtime env
        and finish writing before Ray ends them."""

        _logger_actor_cls = TrialLogger

        def __del__(self) -> None:
            try:  # at interpreter exit Ray's module globals may be gone already
                super().__del__()
            except AttributeError:
                pass

        def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
            if not self._remote_logger_class:
                self._remote_logger_class = ray.remote(
                    num_cpus=0, **_force_on_current_node(), max_restarts=-1, max_task_retries=-1
                )(self._logger_actor_cls)
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    # The logging actors run in Ray workers, whose environment is the one Ray started
    # with: W&B's mode and folder are passed on as wandb.init arguments.
    init: dict[str, Any] = {}
    if wb.entity:
        init["entity"] = wb.entity
    if os.environ.get("WANDB_MODE"):
        init["mode"] = os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_DIR"):
        init["dir"] = os.environ["WANDB_DIR"]
    return TrialRuns(project=wb.project, group=wb.group or cfg.name, **init)
