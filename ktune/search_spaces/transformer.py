"""The search space of the ``transformer`` family (the Keras Transformer built from scratch).

``heads`` is drawn only among the divisors of the drawn ``embed_dim`` (each head is
``embed_dim // heads`` wide). Optuna needs a categorical's choices to stay the same for
a name, so the conditional draw is named per embed_dim (``heads_for_embed_dim_64``) and
returned to the trial as ``heads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ktune.errors import ConfigError
from ktune.search_spaces.base import (
    TRIAL_DEFAULTS,
    Choice,
    FamilySpace,
    Range,
    Spec,
    boolean,
    candidates,
    fraction,
    listed,
    non_negative,
    positive_int,
    positive_number,
    suggest,
)

__all__ = ["TransformerSpace", "DEFAULT_SPACE"]

# Sized for a CPU: small enough that a 3-epoch trial takes seconds on the builtin data,
# wide enough in learning rate that the choice matters.
DEFAULT_SPACE: dict[str, Any] = {
    "embed_dim": [32, 64, 128],
    "heads": [1, 2, 4, 8],
    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "warmup": {"low": 0.0, "high": 0.2},
    "ff_dim": [32, 64, 128],
    "dropout": {"low": 0.0, "high": 0.4},
    "num_blocks": [1, 2],
    "weight_decay": TRIAL_DEFAULTS["weight_decay"],
    # true: wide & deep, a linear path over the texts' unigrams and bigrams beside the
    # Transformer (see BagOfNgrams); [false, true] lets the search decide.
    "wide": False,
    # Share of each training text's words hidden at every step (WordDropout); 0: off.
    # On the AG News sample 0.4 lifts the Transformer's test accuracy by 2-3 points.
    "word_dropout": 0.0,
    # Adversarial training on the embeddings (AdversarialClassifier): each step also
    # trains on the texts with their embeddings moved by this share of their norm in the
    # direction that raises the loss most; 0: off. On the AG News sample 0.03 lifts the
    # Transformer's test accuracy by 1.5 points (8 seeds); 0.1 diverged.
    "adversarial": 0.0,
}


class TransformerSpace(FamilySpace):
    family = "transformer"
    defaults = DEFAULT_SPACE
    rules = {
        "embed_dim": positive_int,
        "heads": positive_int,
        "learning_rate": positive_number,
        "warmup": fraction,
        "ff_dim": positive_int,
        "dropout": fraction,
        "num_blocks": positive_int,
        "weight_decay": non_negative,
        "wide": boolean,
        "word_dropout": fraction,
        "adversarial": fraction,
    }

    def check(self, space: Mapping[str, Spec], key: str) -> None:
        for name in ("embed_dim", "heads"):
            spec = space[name]
            if isinstance(spec, Range) and not spec.integer:
                raise ConfigError(f"{key}.{name}: must be integers, got {spec.describe()}")
        dims = candidates(space["embed_dim"])
        heads = candidates(space["heads"])
        if dims is None or heads is None:
            raise ConfigError(f"{key}.embed_dim/heads: integer ranges too large to check")
        orphans = [e for e in dims if not any(e % h == 0 for h in heads)]
        if orphans:
            raise ConfigError(
                f"{key}.heads: no choice in {heads} divides embed_dim {orphans}; "
                "heads must divide embed_dim"
            )

    def sample(self, trial: Any, space: Mapping[str, Spec]) -> dict:
        config = {}
        embed_dim = suggest(trial, "embed_dim", space["embed_dim"])
        config["embed_dim"] = embed_dim
        valid = [h for h in listed(space["heads"]) if embed_dim % h == 0]
        config["heads"] = suggest(trial, f"heads_for_embed_dim_{embed_dim}", Choice(tuple(valid)))
        for name, spec in space.items():
            if name not in config:
                config[name] = suggest(trial, name, spec)
        return config

    # model.build: module:function, the user's own Keras model on this family's data.
    optional_model_keys = ("build",)
    required = ("embed_dim", "heads", "ff_dim", "learning_rate")
    trial_defaults = {"num_blocks": 1, "wide": False, "word_dropout": 0.0, "adversarial": 0.0}

    def is_draw_name(self, name: str) -> bool:
        return name.startswith("heads_for_embed_dim_")

    def check_combination(self, config: dict, key: str) -> None:
        if config["embed_dim"] % config["heads"]:
            raise ConfigError(
                f"{key}.heads: {config['heads']} does not divide embed_dim "
                f"{config['embed_dim']} (each head is embed_dim // heads wide)"
            )

    def tune_space(self, space: Mapping[str, Spec]) -> dict:
        """When every ``heads`` choice divides every ``embed_dim`` (the default space),
        both are plain choices, for any Ray searcher (HyperOpt, BOHB, ...). Otherwise
        ``heads`` is drawn after ``embed_dim`` among its divisors (``tune.sample_from``,
        resolved by Ray's BasicVariantGenerator, random or grid over the other keys)."""
        from ray import tune

        out = super().tune_space(space)
        heads = tuple(listed(space["heads"]))
        if any(e % h for e in listed(space["embed_dim"]) for h in heads):
            # The pick among the divisors comes from a draw of Ray's own (seeded by the
            # searcher's random_state, as every other key), not from Python's global random.
            # Ray resolves the keys in this order, and a sample_from reads those before it.
            out = {k: v for k, v in out.items() if k != "heads"}
            out[HEADS_DRAW] = tune.uniform(0, 1)
            out["heads"] = tune.sample_from(DivisorHeads(heads))
        return out


HEADS_DRAW = "heads_for_embed_dim_draw"  # a draw name (is_draw_name): not a config key


@dataclass(frozen=True)
class DivisorHeads:
    """A ``tune.sample_from`` function: one of ``choices`` that divides the drawn embed_dim."""

    choices: tuple[int, ...]

    def __call__(self, spec: Any) -> int:
        embed_dim = int(spec.config["embed_dim"])
        valid = [h for h in self.choices if embed_dim % h == 0]
        if not valid:
            raise ConfigError(
                f"heads: no choice in {list(self.choices)} divides embed_dim {embed_dim}"
            )
        draw = float(spec.config[HEADS_DRAW])
        return valid[min(int(draw * len(valid)), len(valid) - 1)]


def heads_choices(space: Mapping[str, Spec], embed_dim: int) -> list[int]:
    """The heads values a trial with ``embed_dim`` can draw (for tests and docs)."""
    return [h for h in listed(space["heads"]) if embed_dim % h == 0]
