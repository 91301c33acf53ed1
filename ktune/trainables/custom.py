"""A user's own Keras model, trained and exported as a ktune family.

``ktune.trainable(build_model=fn)`` (or ``model.build: module:function`` in the
experiment file) swaps the ``transformer`` family's model for ``fn(config, info)``: an
uncompiled Keras model from token ids of shape ``(batch, info.maxlen)`` to class
probabilities. ktune keeps everything else: the vocabulary adapted once, the token ids,
AdamW with warmup, resumable checkpoints, ASHA/PBT and the raw-string export.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import tf_keras as keras

from ktune.config import TrainingConfig
from ktune.errors import ConfigError
from ktune.search_spaces.custom import CustomModelSpace
from ktune.trainables.transformer import TransformerFamily

__all__ = ["ModelInfo", "CustomModelFamily", "import_build_model"]


@dataclass(frozen=True)
class ModelInfo:
    """What a ``build_model(config, info)`` needs besides the drawn config.

    Args:
        num_classes: int. Units of the softmax output.
        vocab_size: int. Token ids are in ``[0, vocab_size)``; 0 is padding.
        maxlen: int. Tokens per text: the input shape is ``(batch, maxlen)``, int32.
    """

    num_classes: int
    vocab_size: int
    maxlen: int


class CustomModelFamily(TransformerFamily):
    """The ``transformer`` family's data preparation and serving, the user's model."""

    space = CustomModelSpace()

    def __init__(self, build_model: Callable[[dict, ModelInfo], Any]):
        self._build = build_model

    def build_model(
        self,
        config: Mapping[str, Any],
        artefacts: Mapping,
        num_classes: int,
        training: TrainingConfig,
    ) -> keras.Model:
        info = ModelInfo(num_classes, len(artefacts["vocabulary"]), training.maxlen)
        model = self._build(dict(config), info)
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"build_model must return a tf_keras Model (Keras 2, `import tf_keras` or "
                f"`tf.keras` with TF_USE_LEGACY_KERAS=1), got {type(model).__name__}"
            )
        return model


def import_build_model(
    reference: str, key: str = "model.build", base_dir: str | Path = "."
) -> Callable:
    """``module:function`` -> the function; one ConfigError naming ``key`` when it fails.

    The module is looked up on ``sys.path`` and then in ``base_dir`` (the experiment
    file's folder).
    """
    module_name, _, name = reference.partition(":")
    if not module_name or not name:
        raise ConfigError(f"{key}: expected module:function, got {reference!r}")
    base = str(Path(base_dir).resolve())
    added = base not in sys.path
    if added:
        sys.path.append(base)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module: any error in it is theirs
        raise ConfigError(
            f"{key}: cannot import {module_name!r}: {type(e).__name__}: {e}"
        ) from None
    finally:
        if added:
            sys.path.remove(base)
    fn: Any = module
    for part in name.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise ConfigError(f"{key}: {module_name!r} has no function {name!r}")
    return fn
