"""The ``transformer`` family: a Keras Transformer text classifier built from scratch.

``TextVectorization`` -> :class:`TokenAndPositionEmbedding` -> N x :class:`TransformerBlock`
-> GlobalAveragePooling1D -> Dropout -> Dense(20, relu) -> Dropout -> Dense(C, softmax).

Unlike the lesson it comes from, each of the ``heads`` attention heads is
``embed_dim // heads`` wide (the lesson made every head full width), and padding is
masked in attention and pooling. The vocabulary is adapted once per experiment in the
driver; trials train on the token ids it produced.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow as tf
import tf_keras as keras

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune.config import TrainingConfig
from ktune.data import TextDataset
from ktune.search_spaces.base import TRIAL_DEFAULTS
from ktune.trainables.family import Family, Prepared

__all__ = ["TokenAndPositionEmbedding", "TransformerBlock", "TransformerFamily", "build_classifier"]


@keras.utils.register_keras_serializable(package="ktune")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Token embedding plus learned position embedding; masks padding (id 0).

    Args:
        maxlen: int. Sequence length.
        vocab_size: int. Size of the token vocabulary.
        embed_dim: int. Width of both embeddings.
    """

    def __init__(self, maxlen: int, vocab_size: int, embed_dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.maxlen, self.vocab_size, self.embed_dim = maxlen, vocab_size, embed_dim
        self.token_emb = keras.layers.Embedding(vocab_size, embed_dim, name="token_embedding")
        self.pos_emb = keras.layers.Embedding(maxlen, embed_dim, name="position_embedding")

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        positions = tf.range(start=0, limit=tf.shape(inputs)[-1], delta=1)
        return self.token_emb(inputs) + self.pos_emb(positions)

    def compute_mask(self, inputs: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
        # The first position always counts, so an empty text still has something to pool.
        first = tf.equal(tf.range(tf.shape(inputs)[-1]), 0)
        return tf.logical_or(tf.not_equal(inputs, 0), first[tf.newaxis, :])

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "maxlen": self.maxlen,
            "vocab_size": self.vocab_size,
            "embed_dim": self.embed_dim,
        }


@keras.utils.register_keras_serializable(package="ktune")
class TransformerBlock(keras.layers.Layer):
    """Multi-head self-attention and a feed-forward net, each with residual + LayerNorm.

    Args:
        embed_dim: int. Model width; must be divisible by ``num_heads``.
        num_heads: int. Attention heads, each ``embed_dim // num_heads`` wide.
        ff_dim: int. Hidden width of the feed-forward net.
        rate: float. Dropout rate. Defaults to 0.1.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ff_dim: int,
        rate: float = TRIAL_DEFAULTS["dropout"],
        **kwargs,
    ):
        super().__init__(**kwargs)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide embed_dim ({embed_dim})")
        self.embed_dim, self.num_heads, self.ff_dim, self.rate = embed_dim, num_heads, ff_dim, rate
        self.att = keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=embed_dim // num_heads, name="attention"
        )
        self.ffn = keras.Sequential(
            [keras.layers.Dense(ff_dim, activation="relu"), keras.layers.Dense(embed_dim)],
            name="ffn",
        )
        self.layernorm1 = keras.layers.LayerNormalization(epsilon=1e-6, name="layer_norm_1")
        self.layernorm2 = keras.layers.LayerNormalization(epsilon=1e-6, name="layer_norm_2")
        self.dropout1 = keras.layers.Dropout(rate)
        self.dropout2 = keras.layers.Dropout(rate)
        self.supports_masking = True

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: tf.Tensor | None = None):
        attention_mask = None if mask is None else mask[:, tf.newaxis, :]
        attn = self.att(inputs, inputs, attention_mask=attention_mask, training=training)
        out1 = self.layernorm1(inputs + self.dropout1(attn, training=training))
        ffn = self.ffn(out1, training=training)
        return self.layernorm2(out1 + self.dropout2(ffn, training=training))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "ff_dim": self.ff_dim,
            "rate": self.rate,
        }


def build_classifier(
    *,
    maxlen: int,
    vocab_size: int,
    embed_dim: int,
    heads: int,
    ff_dim: int,
    num_classes: int,
    num_blocks: int = 1,
    dropout: float = TRIAL_DEFAULTS["dropout"],
) -> keras.Model:
    """The lesson's classifier over token ids of shape ``(batch, maxlen)``."""
    inputs = keras.Input(shape=(maxlen,), dtype="int32", name="token_ids")
    x = TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)(inputs)
    for i in range(num_blocks):
        x = TransformerBlock(embed_dim, heads, ff_dim, dropout, name=f"transformer_block_{i}")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(20, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    # float32 even under mixed precision: softmax and the loss need the range.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name="transformer_classifier")


def make_vectorizer(training: TrainingConfig, vocabulary: list[str] | None = None):
    return keras.layers.TextVectorization(
        max_tokens=training.vocab_size,
        output_mode="int",
        output_sequence_length=training.maxlen,
        vocabulary=vocabulary,
        name="text_vectorization",
    )


class TransformerFamily(Family):
    name = "transformer"

    def prepare(
        self, data: TextDataset, training: TrainingConfig, model: Mapping[str, Any]
    ) -> Prepared:
        vectorizer = make_vectorizer(training)
        # Adapted once, on the training split only: validation and test stay unseen.
        vectorizer.adapt(tf.data.Dataset.from_tensor_slices(list(data.train_texts)).batch(1024))
        vocabulary = [str(t) for t in vectorizer.get_vocabulary()]

        def ids(texts: np.ndarray) -> np.ndarray:
            batches = tf.data.Dataset.from_tensor_slices(list(texts)).batch(4096)
            return np.concatenate([vectorizer(b).numpy() for b in batches]).astype(np.int32)

        return Prepared(
            train_inputs=ids(data.train_texts),
            val_inputs=ids(data.val_texts),
            artefacts={"vocabulary": vocabulary},
        )

    def build_model(
        self,
        config: Mapping[str, Any],
        artefacts: Mapping,
        num_classes: int,
        training: TrainingConfig,
    ) -> keras.Model:
        return build_classifier(
            maxlen=training.maxlen,
            vocab_size=len(artefacts["vocabulary"]),
            embed_dim=int(config["embed_dim"]),
            heads=int(config["heads"]),
            ff_dim=int(config["ff_dim"]),
            num_classes=num_classes,
            num_blocks=int(config.get("num_blocks", 1)),
            dropout=float(config.get("dropout", TRIAL_DEFAULTS["dropout"])),
        )

    def string_encoder(self, artefacts: Mapping, training: TrainingConfig):
        return make_vectorizer(training, vocabulary=list(artefacts["vocabulary"]))
