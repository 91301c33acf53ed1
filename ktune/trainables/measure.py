"""What a trial measures of its model for ``search.objectives`` (see ``ktune.objectives``).

``params`` and ``model_mb`` are properties of the model, reported after every epoch;
``latency_ms`` is measured once, after the last epoch, on the serving model exactly as
``ktune export`` builds it (:class:`ktune.serving.ServingModule`: the family's in-graph
tokenizer, then the model): the median of several timed calls on a batch of 32 raw
strings, after one untimed call that traces the graph.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import tensorflow as tf

from ktune.serving import ServingModule

__all__ = ["LATENCY_BATCH", "LATENCY_RUNS", "model_size", "serving_latency_ms"]

LATENCY_BATCH = 32
LATENCY_RUNS = 15


def model_size(model: Any) -> dict:
    """``params``: trainable + non-trainable parameters; ``model_mb``: the bytes of all
    the model's weights (its dtypes, so a float16 copy is half) in MB of 10^6 bytes."""
    weights = model.weights
    return {
        "params": int(model.count_params()),
        "model_mb": sum(int(w.shape.num_elements() or 0) * w.dtype.size for w in weights) / 1e6,
    }


def serving_latency_ms(
    model: Any, encoder: Any, class_names: Sequence[str], texts: Sequence[str]
) -> float:
    """Median milliseconds of one batch of :data:`LATENCY_BATCH` raw strings (``texts``
    repeated as needed) through the serving model."""
    pool = [str(t) for t in texts] or ["a text"]
    batch = tf.constant([pool[i % len(pool)] for i in range(LATENCY_BATCH)], tf.string)
    module = ServingModule(encoder, model, class_names)
    module.serve(batch)["probabilities"].numpy()  # traces the graph: not timed
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        module.serve(batch)["probabilities"].numpy()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))
