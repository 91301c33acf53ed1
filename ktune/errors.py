"""The errors ktune raises for the user's mistakes, apart from crashes.

Every subclass of :class:`KtuneUserError` carries one line that names the key or file
at fault and what to do; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import signal as _signal

__all__ = [
    "KtuneUserError",
    "ConfigError",
    "DataError",
    "ExperimentError",
    "RayStartError",
    "SearchFailed",
    "SearchInterrupted",
]


class KtuneUserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""


class ConfigError(KtuneUserError, ValueError):
    """The experiment file (or a CLI override) is invalid."""


class DataError(KtuneUserError, ValueError):
    """A data source cannot be read or does not make a classification data set."""


class ExperimentError(KtuneUserError):
    """An experiment directory or export target cannot be used as asked."""


class RayStartError(KtuneUserError):
    """Ray could not be started or reached (environment, ports, address); nothing was
    written, so the same run can simply be started again once it is fixed."""


class SearchFailed(Exception):
    """The search ran but produced nothing usable (every trial failed): exit code 1."""


class SearchInterrupted(KeyboardInterrupt):
    """The search was stopped before it finished (Ctrl+C): Ray saved its state, and
    nothing else (results table, ``best.json``, export) was written. ``ktune resume``
    continues it. A ``KeyboardInterrupt``, as a Ctrl+C is in Python; ``ktune`` prints
    its one line and exits with code 130.

    Attributes:
        experiment: str. The experiment's folder (or URI), for ``ktune resume``.
        finished: int. Trials that had ended (all epochs, stopped early, or failed).
        total: int. Trials the search runs in all.
        cut_off: list of str. Trials stopped while running or pending; they continue
            from their last checkpoint on resume.
        signal: int. What stopped it: SIGINT (2, Ctrl+C) or SIGTERM (15).
    """

    def __init__(
        self,
        experiment: str,
        *,
        finished: int,
        total: int,
        cut_off: list[str],
        signal: int = _signal.SIGINT,
    ):
        self.experiment = experiment
        self.finished = finished
        self.total = total
        self.cut_off = list(cut_off)
        self.signal = signal
        running = f", {len(cut_off)} stopped before their end" if cut_off else ""
        by = " by SIGTERM" if signal == _signal.SIGTERM else ""
        super().__init__(
            f"{experiment}: search interrupted{by} with {finished} of {total} trials "
            f"finished{running}; its state is saved: `ktune resume {experiment}` continues it"
        )

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # its keyword arguments survive a pickle (a Ray Job's driver)
        args = (self.experiment, self.finished, self.total, self.cut_off, self.signal)
        return (_interrupted, args)


def _interrupted(
    experiment: str, finished: int, total: int, cut_off: list, signal: int
) -> SearchInterrupted:
    return SearchInterrupted(
        experiment, finished=finished, total=total, cut_off=cut_off, signal=signal
    )


def text_list(texts) -> list:
    """``texts`` as a list; one str is a TypeError (it would be classified letter by
    letter: a str is a sequence of one-letter texts)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"texts: a list of texts, got one {type(texts).__name__} ({texts!r:.40})")
    return list(texts)
