"""The errors ktune raises for the user's mistakes, apart from crashes.

Every subclass of :class:`KtuneUserError` carries one line that names the key or file
at fault and what to do; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "KtuneUserError",
    "ConfigError",
    "DataError",
    "ExperimentError",
    "RayStartError",
    "SearchFailed",
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


def text_list(texts) -> list:
    """``texts`` as a list; one str is a TypeError (it would be classified letter by
    letter: a str is a sequence of one-letter texts)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"texts: a list of texts, got one {type(texts).__name__} ({texts!r:.40})")
    return list(texts)
