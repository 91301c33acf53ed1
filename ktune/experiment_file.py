"""Reading an experiment file: its YAML, strictly, before any key is validated.

A file that is missing, a directory, not a regular file, not UTF-8, malformed YAML, not a
mapping, or a mapping that holds a key twice is one :class:`~ktune.errors.ConfigError`
naming the file (and the line). Validation of the keys is :mod:`ktune.config`'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from ktune.errors import ConfigError

__all__ = ["experiment_as_run", "experiment_document", "read_experiment_file"]


def read_experiment_file(path: str | Path) -> dict | None:
    """The parsed YAML of an experiment file, not yet validated; ConfigError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path}: experiment file not found")
    if p.is_dir():
        raise ConfigError(f"{path}: is a directory, not an experiment file")
    if not p.is_file():  # /dev/null, a pipe, a socket: nothing a run could be repeated from
        raise ConfigError(f"{path}: not a regular file")
    try:
        raw = _load_yaml(p.read_text(encoding="utf-8"))
    except _DuplicateKey as e:
        lines = f"line {e.first}" if e.first == e.second else f"lines {e.first} and {e.second}"
        raise ConfigError(f"{path}: duplicate key {e.key} ({lines})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the experiment file: {e.strerror or e}") from None
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the experiment file must be a YAML mapping of keys")
    return None if raw is None else dict(raw)


def experiment_document(
    raw: Mapping[str, Any] | None, num_samples: int | None = None
) -> str | None:
    """``raw`` (an experiment as parsed, maybe a dict from Python) as YAML text, or None
    when a value has no YAML form. Tuples become lists, NumPy scalars and paths plain
    values, so what a Python caller passed can be written as the experiment file.
    ``num_samples`` (``--num-samples``, or the Python API's) is written in: the search
    as run. (``--storage`` and ``--address`` say where it ran, not what: the file keeps
    its own.)"""
    raw = dict(raw or {})
    if num_samples is not None:
        raw["search"] = {**(raw.get("search") or {}), "num_samples": num_samples}

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: plain(v) for key, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        item = getattr(value, "item", None)  # NumPy scalars
        if callable(item) and type(value).__module__ == "numpy":
            return item()
        return value

    try:
        return yaml.safe_dump(plain(raw), sort_keys=False)
    except yaml.YAMLError:
        return None


def experiment_as_run(source_path: str | None, document: str | None) -> str | bytes | None:
    """The text ``experiment.yaml`` holds, so that ``ktune resume`` runs the experiment
    that ran: the experiment file itself (comments and all) when that is what was parsed,
    else ``document``, the experiment as parsed (a dict from Python, or a file with
    sections the Python API merged into it). None when ``document`` is None: something
    merged in has no YAML form, so the file alone is not what ran."""
    if document is None:
        return None
    if source_path:
        try:
            if read_experiment_file(source_path) == yaml.safe_load(document):
                return Path(source_path).read_bytes()
        except (ConfigError, OSError):  # moved or edited since it was read
            pass
    return document


# --- reading the YAML: a key written twice is an error, not "the last one wins" ------------


class _DuplicateKey(Exception):
    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a mapping may not hold the same key twice.

    PyYAML keeps the last value of a repeated key, so ``epochs: 3`` ... ``epochs: 30``
    would silently run 30 epochs. Keys are compared as constructed (``epochs`` and
    ``"epochs"`` are one key); keys merged in with ``<<: *anchor`` may be overridden, as
    YAML intends.
    """

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._check_unique_keys(node, "", set())
        return self.construct_document(node)

    def _check_unique_keys(self, node: yaml.Node, where: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already checked (or a recursive anchor)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique_keys(item, f"{where}[{i}]", seen)
        elif isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self._check_unique_keys(value_node, where, seen)
                    continue
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                path = f"{where}.{name}" if where else str(name)
                if isinstance(key_node, yaml.ScalarNode):
                    key = self.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    try:
                        if key in lines:
                            raise _DuplicateKey(path, lines[key], line)
                        lines[key] = line
                    except TypeError:  # unhashable: the constructor reports it
                        pass
                self._check_unique_keys(value_node, path, seen)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """``010`` is ten, as in YAML 1.2 and as its writer meant, not YAML 1.1's octal
        eight (``epochs: 010`` ran 8 epochs)."""
        value = str(self.construct_scalar(node))
        if re.fullmatch(r"[-+]?0[0-9_]+", value):
            return int(value.replace("_", ""), 10)
        return super().construct_yaml_int(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)
# `1e-4` and `1.0e5` are numbers, as in YAML 1.2 (YAML 1.1 wants a dot and a signed
# exponent, so PyYAML read them as strings, and a choice [1e-4, 1e-3] of one's own
# model's key reached its build function as "1e-4").
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises _DuplicateKey for a key written twice in a mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
