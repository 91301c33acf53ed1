"""Tokenization: the lesson's per-example ``tf.py_function`` pipeline against ktune's path.

The lesson feeds Hugging Face BERT through ``tf.data``, calling ``tokenizer.encode`` on
every example inside ``tf.py_function``: Python, one text at a time, holding the GIL, in
the training input pipeline of every trial. ktune's ``hf_bert`` family encodes the whole
data set once per experiment with ``BertTokenizerFast`` in one batch call and caches the
int32 arrays on disk; trials only read arrays.

Measured over the same 20,000 builtin texts (``ktune.data.generate_builtin``), with the
tiny tokenizer's vocabulary (no download) and ``maxlen`` 64, in examples per second:

- ``lesson``: ``tf.data`` + ``tf.py_function`` + ``BertTokenizer.encode`` per example
  (the lesson's code);
- ``lesson_fast_tokenizer``: the same pipeline with ``BertTokenizerFast.encode``, to
  separate the per-example overhead from the tokenizer's speed;
- ``ktune``: ``encode_texts`` (one batch call to ``BertTokenizerFast``; ids, attention
  mask and token types);
- ``ktune_first_prepare``: ``tokenize_splits`` on a cold cache (encode and write it);
- ``ktune_cache_hit``: ``tokenize_splits`` again (reads the cached arrays);
- ``in_graph_tokenizer``: for comparison, the export's in-graph tokenizer
  (``BertStringEncoder``: tensorflow_text's C++ FastBertTokenizer, the same ids) on the
  same texts in one batch; ktune does not train on it today.

Run from the repo root: ``.venv/bin/python bench/tokenization.py [--quick]`` (``--quick``:
3,000 texts). Prints the ratio against the target (ktune at least 20x the lesson) and
writes ``bench/results/tokenization.json``; a missed target is a result, not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from ktune.data import TextDataset, generate_builtin
from ktune.testing.hf_bert import tiny_vocabulary
from ktune.trainables.hf_bert_tokens import BertStringEncoder, encode_texts, tokenize_splits

N_TEXTS = 20_000
MAXLEN = 64
TARGET = 20.0
OUT = Path(__file__).resolve().parent / "results" / "tokenization.json"


def builtin_texts(n: int) -> tuple[list[str], np.ndarray]:
    titles, descriptions, labels = generate_builtin(n, seed=1)
    return [f"{t} {d}" for t, d in zip(titles, descriptions)], labels


def lesson_pipeline(tokenizer, texts: list[str], labels: np.ndarray) -> int:
    """The lesson's input pipeline, consumed to the end; returns the examples seen."""

    def encode(text, label):
        ids = tokenizer.encode(
            text.numpy().decode("utf-8"),
            max_length=MAXLEN,
            truncation=True,
            padding="max_length",
        )
        return np.asarray(ids, np.int64), label

    def tf_encode(text, label):
        ids, label = tf.py_function(encode, [text, label], [tf.int64, tf.int64])
        ids.set_shape([MAXLEN])
        label.set_shape([])
        return ids, label

    ds = tf.data.Dataset.from_tensor_slices((texts, labels.astype(np.int64)))
    ds = ds.map(tf_encode).batch(32).prefetch(tf.data.AUTOTUNE)
    seen = 0
    for ids, _ in ds:
        seen += int(ids.shape[0])
    return seen


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    from transformers import BertTokenizer, BertTokenizerFast

    global N_TEXTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3,000 texts instead of 20,000")
    args = parser.parse_args()
    if args.quick:
        N_TEXTS = 3_000
    texts, labels = builtin_texts(N_TEXTS)
    with tempfile.TemporaryDirectory(prefix="ktune-bench-") as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(tiny_vocabulary()) + "\n", encoding="utf-8")
        slow = BertTokenizer(str(vocab), do_lower_case=True)
        fast = BertTokenizerFast(str(vocab), do_lower_case=True, split_special_tokens=True)

        # the same ids either way (first 200 texts), or the comparison is meaningless
        ours = encode_texts(fast, texts[:200], MAXLEN)["input_ids"]
        theirs = np.array(
            [
                slow.encode(t, max_length=MAXLEN, truncation=True, padding="max_length")
                for t in texts[:200]
            ]
        )
        assert np.array_equal(ours, theirs), "the lesson's and ktune's ids differ"

        lesson_pipeline(slow, texts[:256], labels[:256])  # warm up tf.data and py_function
        seconds = {
            "lesson": timed(lambda: lesson_pipeline(slow, texts, labels)),
            "lesson_fast_tokenizer": timed(lambda: lesson_pipeline(fast, texts, labels)),
            "ktune": timed(lambda: encode_texts(fast, texts, MAXLEN), repeats=3),
        }
        # the prepare path: 90% train / 10% validation, cold cache then a hit
        split = N_TEXTS * 9 // 10
        data = TextDataset(
            class_names=["World", "Sports", "Business", "Sci/Tech"],
            train_texts=np.asarray(texts[:split], dtype=object),
            train_labels=labels[:split],
            val_texts=np.asarray(texts[split:], dtype=object),
            val_labels=labels[split:],
            test_texts=np.asarray([], dtype=object),
            test_labels=np.zeros(0, np.int32),
        )
        os.environ["KTUNE_CACHE_DIR"] = str(Path(tmp) / "cache")
        hits = []

        def prepare() -> None:
            hits.append(tokenize_splits(fast, str(vocab), data, MAXLEN)[3])

        seconds["ktune_first_prepare"] = timed(prepare)
        seconds["ktune_cache_hit"] = timed(prepare, repeats=3)
        assert hits == [False, True, True, True], hits

        in_graph = tf.function(BertStringEncoder(fast, MAXLEN))
        batch = tf.constant(texts)
        graph_ids = in_graph(batch)["input_ids"].numpy()
        assert np.array_equal(graph_ids, encode_texts(fast, texts, MAXLEN)["input_ids"])
        seconds["in_graph_tokenizer"] = timed(lambda: in_graph(batch)["input_ids"].numpy(), 3)

    per_second = {k: N_TEXTS / v for k, v in seconds.items()}
    ratio = per_second["ktune"] / per_second["lesson"]
    result = {
        "benchmark": "tokenization",
        "quick": args.quick,
        "ratios": [
            {
                "name": "ktune / lesson (examples per second)",
                "value": round(ratio, 1),
                "target": f">= {TARGET:g}",
                "met": ratio >= TARGET,
            },
            {
                "name": "cache hit / lesson (examples per second)",
                "value": round(per_second["ktune_cache_hit"] / per_second["lesson"], 1),
                "target": None,
                "met": None,
            },
        ],
        "texts": N_TEXTS,
        "maxlen": MAXLEN,
        "vocabulary": f"ktune tiny uncased WordPiece ({len(tiny_vocabulary())} tokens)",
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "examples_per_second": {k: round(v) for k, v in per_second.items()},
        "ratio_ktune_vs_lesson": round(ratio, 1),
        "ratio_ktune_vs_lesson_fast_tokenizer": round(
            per_second["ktune"] / per_second["lesson_fast_tokenizer"], 1
        ),
        "ratio_cache_hit_vs_lesson": round(per_second["ktune_cache_hit"] / per_second["lesson"], 1),
        "target_ratio": TARGET,
        "meets_target": ratio >= TARGET,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {
            "tensorflow": tf.__version__,
            "transformers": __import__("transformers").__version__,
            "tokenizers": __import__("tokenizers").__version__,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    width = max(map(len, per_second))
    print(f"tokenization of {N_TEXTS:,} builtin texts to {MAXLEN} ids, examples per second:")
    for name, value in per_second.items():
        print(f"  {name:<{width}}  {value:>12,.0f}  ({seconds[name]:.3f} s)")
    print(
        f"ktune / lesson = {ratio:.1f}x (target >= {TARGET:.0f}x: "
        f"{'met' if ratio >= TARGET else 'NOT met'}); cache hit / lesson = "
        f"{result['ratio_cache_hit_vs_lesson']:.0f}x"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = OUT.with_name(OUT.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(OUT)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
