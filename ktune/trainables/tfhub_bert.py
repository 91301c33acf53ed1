"""The ``tfhub_bert`` family: a TF-Hub BERT preprocess model + small BERT encoder.

``hub.KerasLayer(preprocess)`` -> ``hub.KerasLayer(encoder)`` -> Dropout on
``pooled_output`` -> Dense(C, softmax), as in the lesson. The encoder is frozen (only the
head trains) or fine-tuned (``trainable: true``) with the shared AdamW + warmup.

The preprocess model tokenizes every text once, in the driver (``tokenize`` +
``bert_pack_inputs`` with ``seq_length = training.maxlen``); trials train on the packed
token ids. The export puts the same preprocess model back in front of the classifier,
so it takes raw strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow as tf
import tf_keras as keras

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune.config import TrainingConfig
from ktune.data import TextDataset
from ktune.errors import ConfigError
from ktune.search_spaces import Spec
from ktune.search_spaces.base import TRIAL_DEFAULTS, listed
from ktune.search_spaces.bert import format_handle
from ktune.trainables.family import Family, Prepared

__all__ = ["TfhubBertFamily", "BertPreprocess", "encoder_handle"]

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")


def _hub():
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401  (registers the ops the preprocess model uses)

    return hub


# The position embeddings of TF Hub's BERT encoders (small_bert, bert_en_*) and of the
# tiny ones `ktune models make-tiny-bert` writes: the longest input they can read.
BERT_POSITIONS = 512


def encoder_handle(template: str, config: Mapping[str, Any]) -> str:
    return format_handle(
        template,
        layers=int(config["layers"]),
        embed_dim=int(config["embed_dim"]),
        heads=int(config["heads"]),
    )


def _local_or_url(handle: str) -> str:
    """Local folders are resolved against the working directory; URLs pass through."""
    if "://" in handle:
        return handle
    return str(Path(handle).expanduser().resolve())


def _load_error(key: str, handle: str, error: Exception) -> ConfigError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    return ConfigError(
        f"{key}: cannot load '{handle}' ({first}); use a local SavedModel folder, a mirror "
        "(set TFHUB_CACHE_DIR to a cache that holds it), or write tiny offline models with "
        "`ktune models make-tiny-bert DIR`"
    )


@keras.utils.register_keras_serializable(package="ktune")
class BertPreprocess(keras.layers.Layer):
    """Raw strings -> packed BERT inputs of length ``seq_length``, with a TF-Hub preprocess model.

    Args:
        handle: str. The preprocess model's handle (URL or local folder).
        seq_length: int. Tokens per text, [CLS] and [SEP] included.
    """

    def __init__(self, handle: str, seq_length: int, **kwargs: Any):
        super().__init__(**kwargs)
        hub = _hub()
        self.handle, self.seq_length = handle, seq_length
        preprocessor = hub.load(handle)
        self.tokenize = hub.KerasLayer(preprocessor.tokenize, name="tokenize")
        self.pack = hub.KerasLayer(
            preprocessor.bert_pack_inputs, arguments={"seq_length": seq_length}, name="pack"
        )

    def call(self, texts: tf.Tensor) -> dict:
        return self.pack([self.tokenize(texts)])

    def get_config(self) -> dict:
        return {**super().get_config(), "handle": self.handle, "seq_length": self.seq_length}


class TfhubBertFamily(Family):
    name = "tfhub_bert"

    def check_model(self, model: Mapping[str, Any], space: Mapping[str, Spec]) -> None:
        """Loads the preprocess model and every encoder the space can draw, once."""
        hub = _hub()
        preprocess = _local_or_url(model["preprocess"])
        try:
            hub.load(preprocess)
        except Exception as e:  # noqa: BLE001 - hub raises many kinds; the user needs one line
            raise _load_error("model.preprocess", model["preprocess"], e) from None
        head_size = listed(space["head_size"])[0]
        for dim in listed(space["embed_dim"]):
            for layers in listed(space["layers"]):
                config = {"embed_dim": dim, "layers": layers, "heads": dim // head_size}
                handle = _local_or_url(encoder_handle(model["encoder"], config))
                try:
                    hub.resolve(handle) if "://" in handle else _require_dir(handle)
                except Exception as e:  # noqa: BLE001
                    raise _load_error("model.encoder", handle, e) from None

    def prepare(
        self, data: TextDataset, training: TrainingConfig, model: Mapping[str, Any]
    ) -> Prepared:
        if training.maxlen > BERT_POSITIONS:  # else every trial fails inside the encoder
            raise ConfigError(
                f"training.maxlen: {training.maxlen} is more than the {BERT_POSITIONS} "
                "positions of a TF Hub BERT encoder; use at most "
                f"{BERT_POSITIONS}"
            )
        preprocess = _local_or_url(model["preprocess"])
        try:
            encode = BertPreprocess(preprocess, training.maxlen)
        except Exception as e:  # noqa: BLE001
            raise _load_error("model.preprocess", model["preprocess"], e) from None

        def ids(texts: np.ndarray) -> dict:
            batches = tf.data.Dataset.from_tensor_slices(list(texts)).batch(2048)
            parts = [encode(b) for b in batches]
            return {
                k: np.concatenate([p[k].numpy() for p in parts]).astype(np.int32)
                for k in INPUT_NAMES
            }

        return Prepared(
            train_inputs=ids(data.train_texts),
            val_inputs=ids(data.val_texts),
            # Absolute paths: trials run in their own working directories.
            artefacts={"preprocess": preprocess, "encoder": _local_or_url(model["encoder"])},
        )

    def build_model(
        self,
        config: Mapping[str, Any],
        artefacts: Mapping,
        num_classes: int,
        training: TrainingConfig,
    ) -> keras.Model:
        hub = _hub()
        inputs = {
            name: keras.Input(shape=(training.maxlen,), dtype=tf.int32, name=name)
            for name in INPUT_NAMES
        }
        handle = _local_or_url(encoder_handle(artefacts["encoder"], config))
        encoder = hub.KerasLayer(
            handle, trainable=bool(config.get("trainable", False)), name="encoder"
        )
        pooled = encoder(inputs)["pooled_output"]
        x = keras.layers.Dropout(float(config.get("dropout", TRIAL_DEFAULTS["dropout"])))(pooled)
        # float32 even under mixed precision: softmax and the loss need the range.
        outputs = keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32", name="probabilities"
        )(x)
        return keras.Model(inputs, outputs, name="tfhub_bert_classifier")

    def string_encoder(self, artefacts: Mapping, training: TrainingConfig):
        return BertPreprocess(artefacts["preprocess"], training.maxlen)


def _require_dir(path: str) -> None:
    if not (Path(path) / "saved_model.pb").is_file():
        raise FileNotFoundError(f"no SavedModel at {path}")
