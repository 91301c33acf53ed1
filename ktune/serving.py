"""The serving model: raw strings in, class probabilities and names out.

One class for the export (``ktune.export`` saves it) and for a trial that measures its
latency as it would be served (``ktune.trainables.measure``); TensorFlow only, so a
trial worker loads nothing of the driver's side.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune.data import BACKSLASH_RUN

__all__ = ["ServingModule"]


class ServingModule(tf.Module):
    """Raw strings in, class probabilities and names out.

    Args:
        encoder: callable. Strings -> the model's inputs, traceable by TensorFlow
            (a ``TextVectorization`` layer, a hub preprocess layer, an in-graph tokenizer).
        model: keras.Model. Model inputs -> class probabilities.
        class_names: list of str. The name of each probability column.
        unescape_backslash: bool. Read a run of backslashes (and the spaces around it) as
            one space first, as ``data.unescape_backslash`` did to the training texts.
    """

    def __init__(
        self,
        encoder: Any,
        model: Any,
        class_names: Sequence[str],
        unescape_backslash: bool = False,
    ):
        super().__init__(name="ktune_serving")
        self.encoder = encoder
        self.unescape_backslash = unescape_backslash
        self.model = model
        self.class_names = tf.Variable(list(class_names), dtype=tf.string, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    def serve(self, texts: tf.Tensor) -> dict:
        if self.unescape_backslash:  # the same text the model was trained on (ktune.data)
            texts = tf.strings.strip(tf.strings.regex_replace(texts, BACKSLASH_RUN, " "))
        probabilities = self.model(self.encoder(texts), training=False)
        best = tf.argmax(probabilities, axis=-1)
        n = tf.shape(texts)[0]
        return {
            "probabilities": probabilities,
            "label": tf.gather(self.class_names, best),
            "score": tf.reduce_max(probabilities, axis=-1),
            "class_names": tf.tile(self.class_names[tf.newaxis, :], [n, 1]),
        }
