"""The experiment file: YAML -> a typed, validated :class:`ExperimentConfig`.

Everything a run needs is checked here, before Ray or TensorFlow start: unknown or
misspelled keys, wrong types, impossible search spaces, non-positive sizes, missing data
files. Each problem raises :class:`~ktune.errors.ConfigError` with one line that names
the key (``search.space.heads``) or the file.

Paths: data files and ``data.data_dir`` are relative to the experiment file's folder;
``storage`` and ``export.dir`` are relative to the working directory, as in Ray, or cloud
URIs (``s3://bucket/prefix``, ``gs://...``, ``file://...``; see :mod:`ktune.storage`),
which are kept as written, query included.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ktune import families
from ktune import storage as _storage
from ktune.errors import ConfigError
from ktune.experiment_dir import EXPORT_DIR
from ktune.experiment_file import experiment_document, read_experiment_file
from ktune.objectives import METRICS, Objective, parse_objectives
from ktune.search_spaces import Spec
from ktune.search_spaces.base import mutable_keys
from ktune.tracking_config import TrackingConfig, parse_tracking

__all__ = [
    "ExperimentConfig",
    "DataConfig",
    "SearchConfig",
    "TrainingConfig",
    "ResourcesConfig",
    "ExportConfig",
    "TrackingConfig",
    "load_config",
    "parse_config",
    "read_experiment_file",
    "METRICS",
    "Objective",
]

SOURCES = ("builtin", "tfds", "csv", "jsonl")
SCHEDULERS = ("asha", "fifo", "pbt", "pb2")
SAMPLERS = ("tpe", "random", "nsga2")  # nsga2: multi-objective (the default there)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DataConfig:
    """Where the texts come from. See ``ktune.data`` for each source."""

    source: str = "builtin"
    validation_fraction: float = 0.1
    seed: int = 0
    # builtin
    train_size: int | None = None
    test_size: int | None = None
    # tfds
    name: str = "ag_news_subset"
    data_dir: str | None = None
    # csv / jsonl
    train: str | None = None
    test: str | None = None
    text: tuple[str, ...] = ("text",)
    label: str = "label"
    label_names: tuple[str, ...] | None = None
    # label_names given as a mapping: the label values (as text) of its names, in order
    label_values: tuple[str, ...] | None = None
    test_fraction: float = 0.1
    # csv without a header row: the names of its columns, in order
    columns: tuple[str, ...] | None = None
    # csv / jsonl: a backslash in a text column reads as a space (AG News: a line break)
    unescape_backslash: bool = False


@dataclass(frozen=True)
class SearchConfig:
    num_samples: int = 8
    metric: str = "val_accuracy"
    mode: str = "max"
    scheduler: str = "asha"
    sampler: str = "tpe"  # Optuna sampler: tpe (model-based) | random
    grace_period: int = 1
    reduction_factor: int = 2
    max_concurrent_trials: int = 2
    seed: int = 0
    max_failures: int = 0  # retries of a failing trial, each from its last checkpoint
    space: Mapping[str, Spec] = field(default_factory=dict)
    # PBT / PB2: epochs between exploit/explore steps, and the keys that may mutate
    # (default: every searched key that keeps the model's shape).
    perturbation_interval: int = 1
    mutations: tuple[str, ...] | None = None
    # Multi-objective search (a Pareto front, see ktune.objectives); ``metric`` is then
    # the first per-epoch objective, which ASHA, checkpoints and best.json's trial follow.
    objectives: tuple[Objective, ...] | None = None


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 3
    batch_size: int = 64
    maxlen: int = 64
    vocab_size: int = 20000
    mixed_precision: bool = False  # float16 compute on GPU; the output layer stays float32
    jit_compile: bool = False  # XLA-compile the train step


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1
    gpu: float = 0
    # GPU memory a trial may take; default with a fractional gpu: that share of the card.
    gpu_memory_mb: int | None = None


@dataclass(frozen=True)
class ExportConfig:
    enabled: bool = True
    dir: str | None = None  # default: <storage>/<name>/export; an absolute path or a URI


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    family: str
    data: DataConfig
    search: SearchConfig
    training: TrainingConfig
    resources: ResourcesConfig
    export: ExportConfig
    storage: str  # an absolute local path, or a URI such as s3://bucket/prefix?query
    model: Mapping[str, Any] = field(default_factory=dict)  # family options: handles, names
    address: str | None = None
    source_path: str | None = None  # the experiment file, for messages and metadata
    # The folder the experiment's relative paths (data files, model.build's module) were
    # read against: the experiment file's, or the working directory for a dict.
    base_dir: str | None = None
    # The experiment as parsed, as YAML (after the Python API merged its overrides into
    # it): written to the experiment folder when it differs from the file, so a resume
    # runs what was run.
    document: str | None = None
    # URI storage only: the driver's local working copy of the experiment (default:
    # ktune.storage.staging_dir(experiment_path)); resume sets the one the run used.
    staging_dir: str | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow, W&B
    # ensemble.seeds: the best configuration trained with this many seeds (the best trial
    # the first), their probabilities averaged (ktune.ensemble); 1 is off
    ensemble_seeds: int = 1

    @property
    def remote(self) -> bool:
        """True when ``storage`` is a URI (``s3://...``): files are staged and uploaded."""
        return _storage.is_uri(self.storage)

    @property
    def experiment_path(self) -> str:
        """``<storage>/<name>``: where the experiment lives, a local path or a URI."""
        return _storage.join(self.storage, self.name)

    @property
    def experiment_dir(self) -> Path:
        """The local folder where the driver writes ktune's files (the Optuna journal,
        ``results.csv``, ``best.json``, ...): ``experiment_path`` itself for local
        storage; for a URI a staging folder whose files are uploaded to it."""
        if not self.remote:
            return Path(self.storage) / self.name
        if self.staging_dir:
            return Path(self.staging_dir)
        return _storage.staging_dir(self.experiment_path)

    @property
    def export_path(self) -> str:
        """Where the export goes: ``export.dir`` or ``<experiment_path>/export``; a local
        path or a URI."""
        return self.export.dir or _storage.join(self.experiment_path, EXPORT_DIR)

    @property
    def export_dir(self) -> Path | None:
        """``export_path`` as a local folder; None when the export goes to a URI."""
        return None if _storage.is_uri(self.export_path) else Path(self.export_path)


# --- value checks: each returns the cleaned value or raises with the key ---------------


def _fail(key: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{key}: {what}, got {value!r}")


def _int(key: str, v: Any, minimum: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _fail(key, "must be an integer", v)
    if v < minimum:
        raise _fail(key, f"must be >= {minimum}", v)
    return v


def _number(key: str, v: Any, minimum: float = 0.0, inclusive: bool = True) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _fail(key, "must be a number", v)
    if v < minimum or (not inclusive and v == minimum):
        raise _fail(key, f"must be {'>=' if inclusive else '>'} {minimum}", v)
    return v


def _fraction(key: str, v: Any) -> float:
    v = _number(key, v)
    if not 0 < v < 1:
        raise _fail(key, "must be between 0 and 1 (exclusive)", v)
    return float(v)


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(key, "must be a non-empty string", v)
    return v


def _one_of(key: str, v: Any, options: tuple[str, ...]) -> str:
    if v not in options:
        close = difflib.get_close_matches(str(v), options, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key}: must be one of {', '.join(options)}, got {v!r}{hint}")
    return v


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(key, "must be true or false", v)
    return v


def _str_list(key: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise _fail(key, "must be a string or a non-empty list of strings", v)
    return tuple(v)


def _section(raw: Any, key: str, known: tuple[str, ...]) -> dict:
    """A mapping whose keys are all known; misspellings get a suggestion."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _fail(key, "must be a mapping", raw)
    for name in raw:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            where = f"{key}.{name}" if key else str(name)
            raise ConfigError(f"{where}: unknown key; {hint}")
    return dict(raw)


def _fields(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _parse(
    raw: Mapping, key: str, cls: type, checks: Mapping[str, Callable[[str, Any], Any]]
) -> Any:
    values = {}
    for name, value in raw.items():
        check = checks.get(name)
        full = f"{key}.{name}"
        values[name] = (
            None if value is None and check is None else (check(full, value) if check else value)
        )
    return cls(**values)


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda key, v: None if v is None else check(key, v)


# --- sections ---------------------------------------------------------------------------


def _label_names(key: str, v: Any) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """A list of names (the order of the classes), or a mapping of label value to name
    (``{1: World, 2: Sports}``): which value is which class, said outright."""
    if not isinstance(v, Mapping):
        return _str_list(key, v), None
    values = []  # an empty mapping: an empty list of names, refused as one
    for label, name in v.items():
        if isinstance(label, bool) or not isinstance(label, (int, str)) or label == "":
            raise _fail(f"{key}.{label}", "a label value must be an integer or a string", label)
        if not isinstance(name, str) or not name:
            raise _fail(f"{key}.{label}", "must be a class name (a non-empty string)", name)
        if str(label) in values:
            raise _fail(key, f"label {label!r} is given twice", v)
        values.append(str(label))
    return tuple(v.values()), tuple(values)


def _parse_data(raw: Any, base_dir: Path) -> DataConfig:
    known = tuple(f for f in _fields(DataConfig) if f != "label_values")
    d = _section(raw, "data", known)
    label_values = None
    if d.get("label_names") is not None:
        names, label_values = _label_names("data.label_names", d["label_names"])
        d = {**d, "label_names": list(names)}
    cfg: DataConfig = _parse(
        d,
        "data",
        DataConfig,
        {
            "source": lambda k, v: _one_of(k, v, SOURCES),
            "validation_fraction": _fraction,
            "test_fraction": _fraction,
            "seed": lambda k, v: _int(k, v, minimum=0),
            "train_size": _optional(_int),
            "test_size": _optional(_int),
            "name": _str,
            "data_dir": _optional(_str),
            "train": _optional(_str),
            "test": _optional(_str),
            "text": _str_list,
            "label": _str,
            "label_names": _optional(_str_list),
            "columns": _optional(_str_list),
            "unescape_backslash": _bool,
        },
    )
    cfg = replace(cfg, label_values=label_values)
    if cfg.source in ("csv", "jsonl"):
        if cfg.train is None:
            raise ConfigError(f"data.train: required for source '{cfg.source}' (path to a file)")
        paths: dict[str, Any] = {}
        for name in ("train", "test"):
            value = getattr(cfg, name)
            if value is None:
                continue
            path = (base_dir / Path(value).expanduser()).resolve()
            if not path.is_file():
                raise ConfigError(f"data.{name}: file not found: {path}")
            paths[name] = str(path)
        cfg = replace(cfg, **paths)
        if cfg.test is not None and cfg.test == cfg.train:
            raise ConfigError(f"data.test: the same file as data.train ({cfg.test})")
        if cfg.label in cfg.text:
            raise ConfigError(f"data.text: holds the label column '{cfg.label}'")
        for name in ("train_size", "test_size", "name", "data_dir", "test_fraction"):
            if d.get(name) is not None and (name != "test_fraction" or cfg.test is not None):
                raise ConfigError(
                    f"data.{name}: not used with "
                    + (
                        "data.test (that file is the test split)"
                        if name == "test_fraction"
                        else f"source '{cfg.source}' (used with builtin or tfds)"
                    )
                )
        if cfg.label_names is not None and len(set(cfg.label_names)) != len(cfg.label_names):
            raise ConfigError(
                f"data.label_names: names must be unique, got {list(cfg.label_names)}"
            )
        if cfg.columns is not None:
            if cfg.source != "csv":
                raise ConfigError(
                    f"data.columns: names the columns of a csv file without a header row; "
                    f"a {cfg.source} row names its own"
                )
            if len(set(cfg.columns)) != len(cfg.columns):
                raise ConfigError(f"data.columns: names must be unique, got {list(cfg.columns)}")
            for key, names in (("text", cfg.text), ("label", (cfg.label,))):
                missing = [n for n in names if n not in cfg.columns]
                if missing:
                    raise ConfigError(
                        f"data.{key}: {', '.join(repr(n) for n in missing)} not in "
                        f"data.columns {list(cfg.columns)}"
                    )
    else:
        for name in (
            "train",
            "test",
            "text",
            "label",
            "label_names",
            "columns",
            "unescape_backslash",
            "test_fraction",
        ):
            if name in d:
                raise ConfigError(
                    f"data.{name}: only used with source csv or jsonl, not '{cfg.source}'"
                )
    if cfg.source == "tfds" and cfg.data_dir is not None:
        cfg = replace(cfg, data_dir=str((base_dir / Path(cfg.data_dir).expanduser()).resolve()))
    return cfg


def _parse_search(raw: Any, family: str, model: Mapping[str, Any] | None = None) -> SearchConfig:
    d = _section(raw, "search", _fields(SearchConfig))
    space_raw = d.pop("space", None)
    raw_objectives = d.pop("objectives", None)
    objectives = None if raw_objectives is None else parse_objectives(raw_objectives)
    if space_raw is not None and not isinstance(space_raw, Mapping):
        raise _fail("search.space", "must be a mapping of hyperparameter -> spec", space_raw)
    cfg: SearchConfig = _parse(
        d,
        "search",
        SearchConfig,
        {
            "num_samples": _int,
            "metric": lambda k, v: _one_of(k, v, tuple(METRICS)),
            "mode": lambda k, v: _one_of(k, v, ("max", "min")),
            "scheduler": lambda k, v: _one_of(k, v, SCHEDULERS),
            "sampler": lambda k, v: _one_of(k, v, SAMPLERS),
            "grace_period": _int,
            "reduction_factor": lambda k, v: _int(k, v, minimum=2),
            "max_concurrent_trials": _int,
            "seed": lambda k, v: _int(k, v, minimum=0),
            "max_failures": lambda k, v: _int(k, v, minimum=-1),
            "perturbation_interval": _int,
            "mutations": _optional(_str_list),
        },
    )
    if "mode" not in d:
        cfg = replace(cfg, mode=METRICS[cfg.metric])
    elif cfg.mode != METRICS[cfg.metric]:
        raise ConfigError(
            f"search.mode: {cfg.metric} is optimized with mode '{METRICS[cfg.metric]}', "
            f"got '{cfg.mode}'"
        )
    cfg = _with_objectives(cfg, objectives, d)
    cfg = replace(cfg, space=space_of(family, model).resolve(space_raw))
    return replace(cfg, mutations=mutable_keys(cfg.scheduler, cfg.space, cfg.mutations, d))


def _with_objectives(
    cfg: SearchConfig, objectives: tuple[Objective, ...] | None, given: Mapping[str, Any]
) -> SearchConfig:
    """With objectives, ``metric`` is their first per-epoch metric, the sampler NSGA-II
    unless named; without, nsga2 has nothing to do."""
    if objectives is None:
        if cfg.sampler == "nsga2":
            raise ConfigError("search.sampler: nsga2 is multi-objective; add search.objectives")
        return cfg
    if cfg.scheduler in ("pbt", "pb2"):
        raise ConfigError(
            f"search.objectives: scheduler {cfg.scheduler} follows one metric; "
            "use asha or fifo with objectives"
        )
    first = next(o for o in objectives if o.metric in METRICS)
    if "metric" in given and cfg.metric != first.metric:
        raise ConfigError(
            f"search.metric: {cfg.metric} conflicts with search.objectives, whose first "
            f"per-epoch metric is {first.metric} (leave search.metric out)"
        )
    sampler = cfg.sampler if "sampler" in given else "nsga2"
    return replace(
        cfg, objectives=objectives, metric=first.metric, mode=first.mode, sampler=sampler
    )


def space_of(family: str, model: Mapping[str, Any] | None = None):
    """The family's search space; a user's own model (``model.build``) has an open one."""
    if model and model.get("build"):
        from ktune.search_spaces.custom import CustomModelSpace

        return CustomModelSpace()
    return families.get_space(family)


def _parse_training(raw: Any) -> TrainingConfig:
    d = _section(raw, "training", _fields(TrainingConfig))
    checks = {n: _int for n in ("epochs", "batch_size", "maxlen", "vocab_size")}
    return _parse(
        d, "training", TrainingConfig, {**checks, "mixed_precision": _bool, "jit_compile": _bool}
    )


def _parse_resources(raw: Any) -> ResourcesConfig:
    d = _section(raw, "resources", _fields(ResourcesConfig))
    cfg: ResourcesConfig = _parse(
        d,
        "resources",
        ResourcesConfig,
        {
            "cpu": lambda k, v: _number(k, v, 0, inclusive=False),
            "gpu": lambda k, v: _number(k, v, 0),
            "gpu_memory_mb": _optional(_int),
        },
    )
    if cfg.gpu > 1 and cfg.gpu != int(cfg.gpu):
        raise _fail("resources.gpu", "must be a fraction below 1 or a whole number", cfg.gpu)
    return cfg


def _parse_export(raw: Any) -> ExportConfig:
    if isinstance(raw, bool):
        return ExportConfig(enabled=raw)
    d = _section(raw, "export", _fields(ExportConfig))
    return _parse(d, "export", ExportConfig, {"enabled": _bool, "dir": _optional(_str)})


TOP_LEVEL = (
    "name",
    "family",
    "model",
    "data",
    "search",
    "training",
    "resources",
    "storage",
    "export",
    "address",
    "tracking",
    "ensemble",
)


def _location(key: str, value: str) -> str:
    """A URI stays as written (checked by pyarrow, no network); a path becomes absolute."""
    if _storage.is_uri(value):
        return _storage.check_uri(key, value)
    return str(Path(value).expanduser().resolve())


def parse_config(
    raw: Any,
    *,
    base_dir: str | Path = ".",
    num_samples: int | None = None,
    storage: str | None = None,
    address: str | None = None,
    source_path: str | None = None,
) -> ExperimentConfig:
    """Validates a parsed YAML document; keyword overrides win over the file (CLI flags)."""
    base = Path(base_dir)
    top = _section(raw if raw is not None else {}, "", TOP_LEVEL)
    if "name" not in top:
        raise ConfigError("name: required (the experiment's name; its folder is <storage>/<name>)")
    name = _str("name", top["name"])
    if not _NAME.match(name):
        raise _fail("name", "must be letters, digits, '.', '_' or '-' (it names a folder)", name)
    family = _one_of("family", top.get("family", "transformer"), families.names())
    model = families.get_space(family).resolve_model(top.get("model"))
    search = _parse_search(top.get("search"), family, model)
    space_of(family, model).check_model(model, search.space)
    if num_samples is not None:
        search = replace(search, num_samples=_int("--num-samples", num_samples))
    storage_value = storage if storage is not None else top.get("storage", "results")
    storage_key = "--storage" if storage is not None else "storage"
    storage_location = _location(storage_key, _str(storage_key, storage_value))
    export = _parse_export(top.get("export"))
    if export.dir is not None:
        export = replace(export, dir=_location("export.dir", export.dir))
    addr = address if address is not None else top.get("address")
    tracking = parse_tracking(top.get("tracking"))
    if tracking.mlflow and tracking.mlflow.register and not export.enabled:
        raise ConfigError("tracking.mlflow.register: registers the export; set export.enabled")
    seeds = _ensemble_seeds(top.get("ensemble"), family, search, model or {})
    return ExperimentConfig(
        name=name,
        family=family,
        data=_parse_data(top.get("data"), base),
        search=search,
        training=_parse_training(top.get("training")),
        resources=_parse_resources(top.get("resources")),
        export=export,
        storage=storage_location,
        model=model,
        address=None if addr is None else _str("address", addr),
        source_path=source_path,
        base_dir=str(base.resolve()),
        document=experiment_document(raw, num_samples),
        tracking=tracking,
        ensemble_seeds=seeds,
    )


def _ensemble_seeds(raw: Any, family: str, search: SearchConfig, model: Mapping[str, Any]) -> int:
    seeds = _int("ensemble.seeds", _section(raw, "ensemble", ("seeds",)).get("seeds", 1))
    if seeds > 1 and family != "transformer":
        raise ConfigError(f"ensemble.seeds: {seeds} seeds are for the transformer family only")
    if seeds > 1 and search.objectives:
        raise ConfigError("ensemble.seeds: averages one best trial; not with search.objectives")
    if seeds > 1 and search.scheduler in ("pbt", "pb2"):
        raise ConfigError(
            f"ensemble.seeds: not with scheduler {search.scheduler} (its best checkpoint comes "
            "from a sequence of configs and inherited weights, which a seed cannot train again)"
        )
    if seeds > 1 and model.get("build"):
        raise ConfigError("ensemble.seeds: not with model.build (for the family's own model)")
    return seeds


def load_config(path: str | Path, **overrides: Any) -> ExperimentConfig:
    """Reads and validates an experiment file. Raises ConfigError naming the key or file."""
    raw = read_experiment_file(path)
    p = Path(path)
    return parse_config(raw, base_dir=p.resolve().parent, source_path=str(p.resolve()), **overrides)
