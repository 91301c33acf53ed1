"""AdamW with linear warmup then linear decay: the one optimizer every family uses.

The lesson builds it with ``official.nlp.optimization.create_optimizer(init_lr,
num_train_steps, num_warmup_steps=0.1 * num_train_steps, optimizer_type='adamw')``.
Here the warmup is a fraction of the total steps (a searched hyperparameter), the rate
climbs linearly from 0 to the peak, then falls linearly to 0 at the last step. As in
BERT, LayerNorm scales and biases get no weight decay.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune.search_spaces.base import TRIAL_DEFAULTS

__all__ = ["WarmupLinearDecay", "create_optimizer"]

_NO_DECAY = ["LayerNorm", "layer_norm", "layernorm", "bias"]


@keras.utils.register_keras_serializable(package="ktune")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``peak * step / warmup_steps`` during warmup, then linear decay to 0 at ``total_steps``.

    Args:
        peak_learning_rate: float. The rate reached at the end of warmup.
        total_steps: int. Optimizer steps in the whole training run.
        warmup_steps: int. Steps of linear warmup; 0 starts at the peak.
    """

    def __init__(self, peak_learning_rate: float, total_steps: int, warmup_steps: int):
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        warmup = tf.constant(float(self.warmup_steps), tf.float32)
        total = tf.constant(float(self.total_steps), tf.float32)
        warming = peak * step / tf.maximum(warmup, 1.0)
        decay_span = tf.maximum(total - warmup, 1.0)
        decaying = peak * tf.maximum(0.0, (total - step) / decay_span)
        return tf.where(step < warmup, warming, decaying)

    def get_config(self) -> dict:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


def create_optimizer(
    learning_rate: float,
    total_steps: int,
    warmup: float = TRIAL_DEFAULTS["warmup"],
    weight_decay: float = TRIAL_DEFAULTS["weight_decay"],
) -> keras.optimizers.Optimizer:
    """AdamW over :class:`WarmupLinearDecay`; ``warmup`` is a fraction of ``total_steps``.

    Args:
        learning_rate: float. Peak learning rate, > 0.
        total_steps: int. Steps of the whole run (epochs x steps per epoch).
        warmup: float. Share of ``total_steps`` spent warming up, in [0, 1). Defaults to
            ``TRIAL_DEFAULTS["warmup"]`` (0.1).
        weight_decay: float. Decoupled weight decay. Defaults to
            ``TRIAL_DEFAULTS["weight_decay"]`` (0.01).
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    schedule = WarmupLinearDecay(learning_rate, total_steps, int(round(warmup * total_steps)))
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=weight_decay, epsilon=1e-6
    )
    optimizer.exclude_from_weight_decay(var_names=_NO_DECAY)
    return optimizer
