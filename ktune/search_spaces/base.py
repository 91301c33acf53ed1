"""Search-space specs shared by every family: parsing YAML overrides and sampling them.

A space is a mapping ``name -> spec``. In the experiment file a spec is written as
- a list: a categorical choice, ``embed_dim: [32, 64]``;
- a mapping with ``low`` and ``high`` (and optional ``log``): a range, ``learning_rate:
  {low: 1e-4, high: 1e-2, log: true}``; integers if both bounds are integers;
- a scalar: a fixed value, ``num_blocks: 1``.

Nothing here imports TensorFlow: the driver validates spaces before anything starts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ktune.errors import ConfigError

__all__ = [
    "Choice",
    "Range",
    "Fixed",
    "Spec",
    "FamilySpace",
    "DefineByRun",
    "parse_spec",
    "candidates",
    "listed",
    "searched_keys",
    "tpe_startup_trials",
    "TRIAL_DEFAULTS",
    "MUTABLE_KEYS",
    "tune_domain",
]

_SCALAR = (bool, int, float, str)

# What a trial uses when its config lacks the key: the one place these defaults live.
# The spaces, the optimizer (ktune.optim) and the models read them from here.
TRIAL_DEFAULTS: Mapping[str, Any] = {"warmup": 0.1, "weight_decay": 0.01, "dropout": 0.1}

# Hyperparameters that keep a model's shape: the only ones PBT/PB2 may mutate, since an
# exploited trial loads the donor's weights into a model built from its own config.
MUTABLE_KEYS = ("learning_rate", "warmup", "dropout", "weight_decay")


def tpe_startup_trials(num_samples: int) -> int:
    """Trials TPE samples at random before it models the results.

    Optuna's default (10) would make a small search (the quickstart's 8 trials) purely
    random; a third of the budget, between 3 and 10, leaves TPE most of it.
    """
    return min(10, max(3, num_samples // 3))


@dataclass(frozen=True)
class Choice:
    """A categorical choice among ``values``."""

    values: tuple

    def describe(self) -> str:
        return f"one of {list(self.values)}"


@dataclass(frozen=True)
class Range:
    """A numeric range; ``integer`` when both bounds are ints; ``log`` for log scale."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def describe(self) -> str:
        return f"{'log-' if self.log else ''}range [{self.low}, {self.high}]"


@dataclass(frozen=True)
class Fixed:
    """A constant: not searched, passed to every trial."""

    value: Any

    def describe(self) -> str:
        return f"fixed {self.value!r}"


Spec = Choice | Range | Fixed


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_spec(key: str, raw: Any) -> Spec:
    """Turns one YAML value into a spec; ``key`` is the full key path used in errors."""
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"{key}: empty choice list; give at least one value")
        for v in raw:
            if not isinstance(v, _SCALAR):
                raise ConfigError(f"{key}: choices must be numbers or strings, got {v!r}")
        return Choice(tuple(raw))
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"low", "high", "log"}
        if unknown:
            raise ConfigError(
                f"{key}: unknown range key(s) {sorted(unknown)}; a range has low, high and log"
            )
        if "low" not in raw or "high" not in raw:
            raise ConfigError(f"{key}: a range needs both 'low' and 'high'")
        low, high, log = raw["low"], raw["high"], raw.get("log", False)
        if not (_is_number(low) and _is_number(high)):
            raise ConfigError(f"{key}: low and high must be numbers, got {low!r} and {high!r}")
        if not isinstance(log, bool):
            raise ConfigError(f"{key}.log: must be true or false, got {log!r}")
        if low > high:
            raise ConfigError(f"{key}: inverted range, low {low} > high {high}")
        if log and low <= 0:
            raise ConfigError(f"{key}: a log range needs low > 0, got {low}")
        integer = isinstance(low, int) and isinstance(high, int)
        return Range(low, high, log, integer)
    if isinstance(raw, _SCALAR):
        return Fixed(raw)
    raise ConfigError(
        f"{key}: expected a list of choices, a {{low, high}} range or a value, got {raw!r}"
    )


def candidates(spec: Spec, limit: int = 100_000) -> list | None:
    """Every value a spec can take, or None for a continuous range (or a huge one)."""
    if isinstance(spec, Fixed):
        return [spec.value]
    if isinstance(spec, Choice):
        return list(spec.values)
    if spec.integer and spec.high - spec.low < limit:
        return list(range(int(spec.low), int(spec.high) + 1))
    return None


def listed(spec: Spec) -> list:
    """Every value of a spec that must be a finite list (sizes, heads); ValueError if not.

    For specs :meth:`FamilySpace.check` has accepted as lists, so the error is a bug.
    """
    values = candidates(spec)
    if values is None:
        raise ValueError(f"expected a finite set of values, got {spec.describe()}")
    return values


def _extremes(spec: Spec) -> list:
    if isinstance(spec, Range):
        return [spec.low, spec.high]
    return candidates(spec) or []


# A rule checks every value a key can take: returns an error phrase or None.
Rule = Callable[[Any], str | None]


def positive_int(v: Any) -> str | None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        return "must be a positive integer"
    return None


def positive_number(v: Any) -> str | None:
    if not _is_number(v) or v <= 0:
        return "must be a positive number"
    return None


def non_negative(v: Any) -> str | None:
    if not _is_number(v) or v < 0:
        return "must be a number >= 0"
    return None


def fraction(v: Any) -> str | None:
    """A fraction in [0, 1): dropout rates and warmup shares."""
    if not _is_number(v) or not (0 <= v < 1):
        return "must be a number in [0, 1)"
    return None


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


class FamilySpace:
    """A family's search space: its default specs, the rules on values, and sampling.

    Subclasses add the family's joint constraints (:meth:`check`) and the define-by-run
    order (:meth:`sample`). ``defaults`` are plain data, written as in the YAML file.
    """

    family: str = ""
    defaults: Mapping[str, Any] = {}
    rules: Mapping[str, Rule] = {}
    # The experiment file's ``model:`` section for this family (handles, names), as data.
    model_defaults: Mapping[str, Any] = {}
    # ``model:`` keys a family accepts without a default (``build`` of the transformer).
    optional_model_keys: tuple[str, ...] = ()
    # True: a space may name keys beyond ``defaults`` (a user's own model reads them).
    open_keys: bool = False

    def resolve_model(self, raw: Any, key: str = "model") -> dict:
        """Validates the ``model:`` section: known keys, non-empty strings; fills defaults."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{key}: must be a mapping, got {raw!r}")
        allowed = [*self.model_defaults, *self.optional_model_keys]
        for name, value in raw.items():
            if name not in allowed:
                known = ", ".join(allowed) or "none"
                close = difflib.get_close_matches(str(name), allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {known}"
                raise ConfigError(f"{key}.{name}: unknown key for family '{self.family}'; {hint}")
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{key}.{name}: must be a non-empty string, got {value!r}")
        return {**self.model_defaults, **raw}

    def resolve(self, overrides: Mapping[str, Any] | None, key: str = "search.space") -> dict:
        """Merges YAML overrides into the defaults; validates everything; returns specs."""
        overrides = dict(overrides or {})
        for name in overrides:
            if name not in self.defaults and not self.open_keys:
                close = difflib.get_close_matches(str(name), list(self.defaults), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(
                    f"{key}.{name}: unknown hyperparameter for family '{self.family}'{hint} "
                    f"(known: {', '.join(self.defaults)})"
                )
        space = {}
        for name, raw in {**self.defaults, **overrides}.items():
            spec = parse_spec(f"{key}.{name}", raw)
            rule = self.rules.get(name)
            if rule is not None:
                for value in _extremes(spec):
                    problem = rule(value)
                    if problem:
                        raise ConfigError(f"{key}.{name}: {problem}, got {value!r}")
            space[name] = spec
        self.check(space, key)
        return space

    def check(self, space: Mapping[str, Spec], key: str) -> None:
        """Raises ConfigError when values that are each valid cannot be combined."""

    def check_model(self, model: Mapping[str, Any], space: Mapping[str, Spec]) -> None:
        """Raises ConfigError when the ``model:`` section does not fit the space."""

    def sample(self, trial: Any, space: Mapping[str, Spec]) -> dict:
        """Draws one configuration on an Optuna trial (define-by-run)."""
        return {name: suggest(trial, name, spec) for name, spec in space.items()}

    def space_fn(self, space: Mapping[str, Spec]) -> "DefineByRun":
        """The define-by-run function that ``OptunaSearch(space=...)`` calls per trial."""
        return DefineByRun(self, dict(space))

    # Keys a trial's config must hold; the others fall back on TRIAL_DEFAULTS or the
    # family's own ``trial_defaults``.
    required: tuple[str, ...] = ("learning_rate",)
    trial_defaults: Mapping[str, Any] = {}
    # Keys a config may carry besides the space's own (a searched training knob).
    extra_keys: Mapping[str, Rule] = {}

    def check_config(self, config: Mapping[str, Any], key: str = "config") -> dict:
        """One drawn configuration, checked as a trial will use it; returns it completed.

        Called in the driver for every trial of a ktune trainable (before it is placed),
        so a Tuner's ``param_space`` that misses a key or breaks a rule fails there with
        one :class:`ConfigError` naming the key, not inside the trial.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"{key}: must be a mapping of hyperparameters, got {config!r}")
        known = {**self.rules, **self.extra_keys}
        config = {k: v for k, v in config.items() if not self.is_draw_name(k)}
        for name in config:
            if name not in known:
                close = difflib.get_close_matches(str(name), list(known), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(
                    f"{key}.{name}: unknown hyperparameter for family '{self.family}'{hint} "
                    f"(known: {', '.join(known)})"
                )
        missing = [name for name in self.required if name not in config]
        if missing:
            raise ConfigError(
                f"{key}.{missing[0]}: required by family '{self.family}' (a trial's config "
                f"needs {', '.join(self.required)})"
            )
        out = {**TRIAL_DEFAULTS, **self.trial_defaults, **config}
        out = {name: value for name, value in out.items() if name in known}
        for name, value in out.items():
            problem = known[name](value)
            if problem:
                raise ConfigError(f"{key}.{name}: {problem}, got {value!r}")
        self.check_combination(out, key)
        return out

    def check_combination(self, config: dict, key: str) -> None:
        """Completes ``config`` in place and raises ConfigError on values that clash."""

    def is_draw_name(self, name: str) -> bool:
        """True for the name of an Optuna draw that is not itself a config key (Ray's
        OptunaSearch puts every draw into the config beside the returned values)."""
        return False

    def tune_space(self, space: Mapping[str, Spec]) -> dict:
        """The space as a Ray Tune ``param_space`` (``tune.choice``, ``tune.loguniform``...),
        for Ray's own searchers and schedulers."""
        return {name: tune_domain(spec) for name, spec in space.items()}


@dataclass(frozen=True)
class DefineByRun:
    """A picklable define-by-run space: Ray pickles the searcher with its experiment state."""

    family_space: FamilySpace
    space: Mapping[str, Spec]

    def __call__(self, trial: Any) -> dict:
        return self.family_space.sample(trial, self.space)


def suggest(trial: Any, name: str, spec: Spec) -> Any:
    """One value from ``spec`` on an Optuna trial; fixed values are not suggested."""
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, Choice):
        if len(spec.values) == 1:
            return spec.values[0]
        return trial.suggest_categorical(name, list(spec.values))
    if spec.low == spec.high:
        return spec.low
    if spec.integer:
        return trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_float(name, float(spec.low), float(spec.high), log=spec.log)


def tune_domain(spec: Spec) -> Any:
    """One spec as a Ray Tune domain: a choice, a (log-)uniform float or an integer range."""
    from ray import tune

    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, Choice):
        return spec.values[0] if len(spec.values) == 1 else tune.choice(list(spec.values))
    if spec.low == spec.high:
        return spec.low
    if spec.integer:  # Tune's integer upper bounds are exclusive
        upper = int(spec.high) + 1
        return (
            tune.lograndint(int(spec.low), upper)
            if spec.log
            else tune.randint(int(spec.low), upper)
        )
    if spec.log:
        return tune.loguniform(float(spec.low), float(spec.high))
    return tune.uniform(float(spec.low), float(spec.high))


def searched_keys(space: Mapping[str, Spec]) -> list[str]:
    """The hyperparameters a space actually varies, ``heads`` right after ``embed_dim``."""
    keys = [
        name
        for name, spec in space.items()
        if not ((values := candidates(spec)) is not None and len(set(values)) == 1)
    ]
    if "embed_dim" in keys:
        keys = [k for k in keys if k != "heads"]
        keys.insert(keys.index("embed_dim") + 1, "heads")
    return keys


def mutable_keys(
    scheduler: str,
    space: Mapping[str, Spec],
    mutations: tuple[str, ...] | None,
    given: Mapping[str, Any],
) -> tuple[str, ...] | None:
    """PBT/PB2: the hyperparameters that may mutate (``search.mutations``, or every
    searched one that keeps the model's shape); None for other schedulers. ``given``: the
    search section's keys as written."""
    if scheduler not in ("pbt", "pb2"):
        for name in ("mutations", "perturbation_interval"):
            if name in given:
                raise ConfigError(f"search.{name}: only used with scheduler pbt or pb2")
        return None
    searched = searched_keys(space)
    if mutations is None:
        keys = tuple(k for k in searched if k in MUTABLE_KEYS)
        if not keys:
            raise ConfigError(
                f"search.scheduler: {scheduler} mutates {', '.join(MUTABLE_KEYS)}, and the "
                "space searches none of them (give one a range)"
            )
    else:
        keys = mutations
        for name in keys:
            if name not in MUTABLE_KEYS:
                raise ConfigError(
                    f"search.mutations: {name} cannot mutate: an exploited trial loads the "
                    f"donor's weights, so only {', '.join(MUTABLE_KEYS)} (which keep the "
                    "model's shape) may"
                )
            if name not in searched:
                raise ConfigError(
                    f"search.mutations: {name} is not searched (give it a range "
                    "or choices in search.space)"
                )
    if scheduler == "pb2":
        for name in keys:
            if not isinstance(space[name], Range):
                raise ConfigError(
                    f"search.space.{name}: PB2 mutates continuous ranges only "
                    f"({{low, high}}), got {space[name].describe()}"
                )
    return keys
