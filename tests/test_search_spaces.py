"""Search spaces sampled through a real Optuna study (define-by-run, TPE)."""

from __future__ import annotations

import math
import pickle

import optuna
import pytest
from optuna.samplers import TPESampler

import ktune  # (also sets TF_USE_LEGACY_KERAS before anything imports TF)
from ktune import families
from ktune.errors import ConfigError
from ktune.search_spaces import Choice, Fixed, Range, get_space, parse_spec
from ktune.search_spaces.transformer import DEFAULT_SPACE, TransformerSpace, heads_choices

optuna.logging.set_verbosity(optuna.logging.WARNING)


def draw(space_fn, n: int, seed: int = 0) -> list[dict]:
    """Runs ``n`` trials of a TPE study over a define-by-run function; returns the configs."""
    study = optuna.create_study(direction="maximize", sampler=TPESampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        config = space_fn(trial)
        configs.append(config)
        # a score that depends on the config, so TPE has something to model
        study.tell(trial, -abs(math.log10(config["learning_rate"]) + 3) + config["embed_dim"] / 256)
    return configs


OVERRIDES = {
    "embed_dim": [24, 36, 48, 64],
    "heads": [1, 2, 3, 4, 6, 8, 16],
    "learning_rate": {"low": 2.0e-5, "high": 3.0e-3, "log": True},
    "warmup": {"low": 0.05, "high": 0.15},
    "ff_dim": {"low": 16, "high": 40},
    "dropout": [0.0, 0.25],
    "num_blocks": 2,
    "weight_decay": 0.03,
}


def test_two_hundred_trials_stay_inside_the_space():
    family = TransformerSpace()
    space = family.resolve(OVERRIDES)
    configs = draw(family.space_fn(space), 200)
    heads_seen, dims_seen = set(), set()
    for c in configs:
        assert set(c) == set(DEFAULT_SPACE)
        assert c["embed_dim"] in OVERRIDES["embed_dim"]
        assert c["heads"] in OVERRIDES["heads"]
        assert c["embed_dim"] % c["heads"] == 0, c
        assert c["heads"] in heads_choices(space, c["embed_dim"])
        assert 2.0e-5 <= c["learning_rate"] <= 3.0e-3
        assert 0.05 <= c["warmup"] <= 0.15
        assert isinstance(c["ff_dim"], int) and 16 <= c["ff_dim"] <= 40
        assert c["dropout"] in (0.0, 0.25)
        assert c["num_blocks"] == 2
        assert c["weight_decay"] == 0.03
        heads_seen.add(c["heads"])
        dims_seen.add(c["embed_dim"])
    # the search really explores: several widths and head counts, incl. non-powers of two
    assert dims_seen == set(OVERRIDES["embed_dim"])
    assert {3, 6} & heads_seen
    assert len(heads_seen) >= 4


def test_default_space_heads_divide_embed_dim():
    family = TransformerSpace()
    space = family.resolve(None)
    for c in draw(family.space_fn(space), 200, seed=1):
        assert c["embed_dim"] in (32, 64, 128)
        assert c["heads"] in (1, 2, 4, 8)
        assert c["embed_dim"] % c["heads"] == 0
        assert 1e-4 <= c["learning_rate"] <= 1e-2
        assert 0.0 <= c["dropout"] <= 0.4


def test_integer_embed_dim_range_only_gets_dividing_heads():
    family = TransformerSpace()
    space = family.resolve({"embed_dim": {"low": 30, "high": 40}, "heads": [1, 2, 3, 5]})
    for c in draw(family.space_fn(space), 60):
        assert 30 <= c["embed_dim"] <= 40
        assert c["embed_dim"] % c["heads"] == 0


def test_log_range_stays_within_bounds_and_spans_decades():
    family = TransformerSpace()
    space = family.resolve({"learning_rate": {"low": 1.0e-6, "high": 1.0, "log": True}})
    assert space["learning_rate"] == Range(1e-6, 1.0, log=True)
    lrs = [c["learning_rate"] for c in draw(family.space_fn(space), 200)]
    assert all(1e-6 <= lr <= 1.0 for lr in lrs)
    # log scale: small values are drawn as often as a uniform draw would almost never give
    assert sum(lr < 1e-3 for lr in lrs) >= 20


def test_fixed_values_are_passed_through_not_suggested():
    family = TransformerSpace()
    space = family.resolve({"embed_dim": 64, "heads": [4], "dropout": 0.1, "ff_dim": [48]})
    assert space["embed_dim"] == Fixed(64)
    study = optuna.create_study(sampler=TPESampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        c = family.space_fn(space)(trial)
        assert (c["embed_dim"], c["heads"], c["dropout"], c["ff_dim"]) == (64, 4, 0.1, 48)
        assert c["weight_decay"] == DEFAULT_SPACE["weight_decay"]
        # only the searched knobs are Optuna parameters
        assert not {"embed_dim", "dropout", "ff_dim", "weight_decay"} & set(trial.params)
        study.tell(trial, 0.0)


def test_study_optimize_with_the_define_by_run_function():
    family = TransformerSpace()
    fn = family.space_fn(family.resolve({"embed_dim": [32, 48]}))
    seen = []

    def objective(trial):
        c = fn(trial)
        seen.append(c)
        return c["learning_rate"]

    study = optuna.create_study(sampler=TPESampler(seed=0))
    study.optimize(objective, n_trials=30)
    assert len(seen) == 30
    assert all(c["embed_dim"] % c["heads"] == 0 for c in seen)
    # heads is drawn under a per-embed_dim name, so its choices never change for a name
    names = {n for t in study.trials for n in t.params if n.startswith("heads")}
    assert names <= {"heads_for_embed_dim_32", "heads_for_embed_dim_48"}


def test_overrides_replace_defaults():
    family = TransformerSpace()
    defaults = family.resolve(None)
    assert defaults["embed_dim"] == Choice((32, 64, 128))
    assert defaults["num_blocks"] == Choice((1, 2))
    space = family.resolve({"embed_dim": [16], "num_blocks": {"low": 1, "high": 4}})
    assert space["embed_dim"] == Choice((16,))
    assert space["num_blocks"] == Range(1, 4, log=False, integer=True)
    # the rest keep their defaults
    for name in set(DEFAULT_SPACE) - {"embed_dim", "num_blocks"}:
        assert space[name] == defaults[name]
    # a resolve does not change the family's defaults
    assert family.resolve(None) == defaults


def test_unknown_hyperparameter_suggests():
    with pytest.raises(ConfigError) as info:
        TransformerSpace().resolve({"learning_rat": [0.1]})
    msg = str(info.value)
    assert msg.startswith("search.space.learning_rat:")
    assert "did you mean 'learning_rate'" in msg
    with pytest.raises(ConfigError, match="known: embed_dim"):
        TransformerSpace().resolve({"zzz": 1})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"heads": [3], "embed_dim": [32, 64]}, "search.space.heads"),
        ({"embed_dim": {"low": 16.0, "high": 64.0}}, "search.space.embed_dim"),
        ({"heads": [0, 1]}, "search.space.heads"),
        ({"dropout": 1.0}, "search.space.dropout"),
        ({"word_dropout": {"low": 0.2, "high": 1.0}}, "search.space.word_dropout"),
        ({"adversarial": -0.03}, "search.space.adversarial"),
        ({"warmup": {"low": 0.1}}, "search.space.warmup"),
        ({"learning_rate": {"low": 0.1, "high": 0.2, "step": 2}}, "search.space.learning_rate"),
        (
            {"learning_rate": {"low": 0.1, "high": 0.2, "log": "yes"}},
            "search.space.learning_rate.log",
        ),
        ({"ff_dim": [[32]]}, "search.space.ff_dim"),
        ({"weight_decay": -0.1}, "search.space.weight_decay"),
    ],
)
def test_invalid_specs_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        TransformerSpace().resolve(overrides)
    assert str(info.value).startswith(key + ":")


def test_parse_spec_kinds():
    assert parse_spec("k", [1, 2]) == Choice((1, 2))
    assert parse_spec("k", {"low": 1, "high": 3}) == Range(1, 3, False, True)
    assert parse_spec("k", {"low": 1, "high": 3.0}).integer is False
    assert parse_spec("k", "adam") == Fixed("adam")


def test_define_by_run_is_picklable_and_still_samples():
    family = get_space("transformer")
    assert family is families.get_space("transformer")  # one shared instance
    fn = family.space_fn(family.resolve(OVERRIDES))
    clone = pickle.loads(pickle.dumps(fn))
    assert type(clone.family_space) is TransformerSpace
    assert clone.space == fn.space
    a, b = draw(fn, 20, seed=3), draw(clone, 20, seed=3)
    assert a == b
    assert all(c["embed_dim"] % c["heads"] == 0 for c in b)


def test_word_dropout_is_off_by_default_and_drawn_when_searched():
    family = get_space("transformer")
    assert {c["word_dropout"] for c in draw(family.space_fn(family.resolve({})), 3)} == {0.0}
    searched = draw(family.space_fn(family.resolve({"word_dropout": {"low": 0.2, "high": 0.5}})), 8)
    rates = [c["word_dropout"] for c in searched]
    assert all(0.2 <= r <= 0.5 for r in rates) and len(set(rates)) > 1
    # a trial's config keeps it; one from before the key existed falls back on off
    assert family.check_config(searched[0])["word_dropout"] == rates[0]
    old = {k: v for k, v in searched[0].items() if k != "word_dropout"}
    assert family.check_config(old)["word_dropout"] == 0.0


def test_tune_form_heads_follow_the_searchers_seed_not_pythons_random():
    import random

    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    space = ktune.search_space(
        "transformer", {"embed_dim": [32, 48], "heads": [1, 2, 3, 8]}, backend="tune"
    )

    def draws(python_seed: int) -> list:
        random.seed(python_seed)  # was the source of heads, so two runs of one seed differed
        state = np.random.RandomState(0)
        return [
            (v["config"]["embed_dim"], v["config"]["heads"])
            for _ in range(12)
            for _, v in generate_variants({"config": space}, random_state=state)
        ]

    first = draws(1)
    assert draws(2) == first
    assert all(e % h == 0 for e, h in first) and len(set(first)) > 2
