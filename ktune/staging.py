"""The driver's staging folder of an experiment on a URI (``storage: s3://...``).

Ray Tune persists the trials (results, checkpoints) and its own experiment state to the
URI itself. ktune's driver-side files are written to a local staging folder
(``ExperimentConfig.experiment_dir``) and copied to ``<uri>/<name>/`` under the same
names: :func:`push` copies named files at the milestones of a run, and
:class:`UploadJournal` keeps the remote ``optuna.journal`` current while the search runs,
so that ``ktune resume <uri>/<name>`` finds the study even when the driver's machine is
gone.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from ray.tune import Callback

from ktune import storage

if TYPE_CHECKING:
    from ktune.config import ExperimentConfig

__all__ = ["push", "push_staged", "UploadJournal"]

log = logging.getLogger("ktune")


def push(local_dir: Path, uri: str, names: Iterable[str]) -> None:
    """Uploads the named files of ``local_dir`` that exist to ``uri`` (same names)."""
    for name in names:
        path = Path(local_dir) / name
        if path.is_file():
            storage.upload_file(path, storage.join(uri, name))


def push_staged(cfg: ExperimentConfig, names: Iterable[str]) -> None:
    """URI storage: uploads the named staged files of ``cfg``'s experiment to its URI;
    local storage: nothing (the files are already in place)."""
    if cfg.remote:
        push(cfg.experiment_dir, cfg.experiment_path, names)


class UploadJournal(Callback):
    """Uploads the named files (the Optuna journal, ASHA's stop log) to the experiment URI
    as the search goes on.

    At most every ``interval`` seconds on a trial result, and always when a trial ends and
    when the experiment ends. A failed upload is logged and retried at the next chance;
    it never stops the search.
    """

    def __init__(
        self, local_dir: str | Path, uri: str, names: Sequence[str], interval: float = 15.0
    ):
        self.local_dir = str(local_dir)
        self.uri = uri
        self.names = list(names)
        self.interval = interval
        self._last = 0.0

    def _upload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        try:
            push(Path(self.local_dir), self.uri, self.names)
        except Exception as e:  # the search goes on; the next event tries again
            log.warning("could not upload %s: %s", " and ".join(self.names), e)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._upload()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._upload(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._upload(force=True)

    def on_experiment_end(self, trials, **info):
        self._upload(force=True)
