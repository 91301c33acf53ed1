"""The size search shared by the pretrained BERT families (``tfhub_bert``, ``hf_bert``).

``embed_dim`` is the hidden size H of a BERT miniature and ``layers`` its depth L; the
number of heads is derived, A = H / ``head_size`` (64 for Google's BERT miniatures), and
passed to trials as ``heads``. A model handle or name is a template with ``{L}``, ``{H}``
and ``{A}`` placeholders, filled per trial by :func:`format_handle`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ktune.errors import ConfigError
from ktune.search_spaces.base import (
    TRIAL_DEFAULTS,
    FamilySpace,
    Fixed,
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

__all__ = ["BertSizeSpace", "BERT_DEFAULT_SPACE", "format_handle", "has_size_placeholders"]

BERT_DEFAULT_SPACE: dict[str, Any] = {
    "embed_dim": [128, 256, 512, 768],
    "layers": [2, 4, 6, 8, 10, 12],
    "head_size": 64,
    "learning_rate": {"low": 1e-5, "high": 1e-4, "log": True},
    "warmup": {"low": 0.0, "high": 0.2},
    "dropout": {"low": 0.0, "high": 0.2},
    "trainable": [False, True],
    "weight_decay": TRIAL_DEFAULTS["weight_decay"],
}

_PLACEHOLDER = re.compile(r"\{(L|H|A)\}")


def has_size_placeholders(template: str) -> bool:
    return bool(_PLACEHOLDER.search(template))


def format_handle(template: str, *, layers: int, embed_dim: int, heads: int) -> str:
    """``.../bert_en_uncased_L-{L}_H-{H}_A-{A}/1`` -> ``.../bert_en_uncased_L-4_H-128_A-2/1``."""
    values = {"L": layers, "H": embed_dim, "A": heads}
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


class BertSizeSpace(FamilySpace):
    """Searches BERT sizes (H, L; A derived) plus the fine-tuning knobs."""

    defaults = BERT_DEFAULT_SPACE
    rules = {
        "embed_dim": positive_int,
        "layers": positive_int,
        "head_size": positive_int,
        "learning_rate": positive_number,
        "warmup": fraction,
        "dropout": fraction,
        "trainable": boolean,
        "weight_decay": non_negative,
    }
    # the model keys that hold size templates
    template_keys: tuple[str, ...] = ()

    def check(self, space: Mapping[str, Spec], key: str) -> None:
        if not isinstance(space["head_size"], Fixed):
            raise ConfigError(f"{key}.head_size: must be one fixed value (A = H / head_size)")
        head_size = space["head_size"].value
        dims = candidates(space["embed_dim"])
        if dims is None or candidates(space["layers"]) is None:
            raise ConfigError(f"{key}.embed_dim/layers: give a list of sizes, not a range")
        bad = [h for h in dims if h % head_size]
        if bad:
            raise ConfigError(
                f"{key}.embed_dim: {bad} not divisible by head_size {head_size} "
                "(heads A = H / head_size)"
            )

    def check_model(self, model: Mapping[str, Any], space: Mapping[str, Spec]) -> None:
        for name in self.template_keys:
            if has_size_placeholders(model[name]):
                continue
            for size in ("embed_dim", "layers"):
                if len(listed(space[size])) > 1:
                    raise ConfigError(
                        f"model.{name}: has no {{L}}/{{H}}/{{A}} placeholders, so "
                        f"search.space.{size} must be a single value"
                    )

    required = ("embed_dim", "layers", "learning_rate")
    trial_defaults = {"trainable": False}
    extra_keys = {"heads": positive_int}

    def check_combination(self, config: dict, key: str) -> None:
        if "head_size" not in config:  # given heads fix it; else the BERT miniatures' 64
            given = config.get("heads")
            config["head_size"] = (
                config["embed_dim"] // given if given and config["embed_dim"] % given == 0 else 64
            )
        heads, rest = divmod(config["embed_dim"], config["head_size"])
        if rest:
            raise ConfigError(
                f"{key}.embed_dim: {config['embed_dim']} not divisible by head_size "
                f"{config['head_size']} (heads A = H / head_size)"
            )
        if config.setdefault("heads", heads) != heads:
            raise ConfigError(
                f"{key}.heads: {config['heads']} != embed_dim / head_size = {heads}; "
                "leave heads out (it is derived) or set head_size"
            )

    def sample(self, trial: Any, space: Mapping[str, Spec]) -> dict:
        config = {name: suggest(trial, name, spec) for name, spec in space.items()}
        config["heads"] = config["embed_dim"] // config["head_size"]
        return config
