"""The ``hf_bert`` family's token ids: batch-encoded once and cached for training, and
the same ids in graph for the export.

- :func:`tokenize_splits` (driver, once per experiment) encodes the training and
  validation texts with ``BertTokenizerFast`` (:func:`encode_texts`, one batch call) into
  int32 arrays, cached under ``$KTUNE_CACHE_DIR/tokens`` keyed by the tokenizer's digest,
  ``maxlen`` and the data's fingerprint.
- :class:`BertStringEncoder` (export) is ``transformers.TFBertTokenizer`` set up to give
  exactly those ids from raw strings inside the SavedModel (:class:`InGraphBertTokenizer`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras as keras
from tokenizers import Tokenizer

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "TensorFlow classes are deprecated" (they stay in 4.x)
    from transformers import BertTokenizerFast, TFBertTokenizer

from ktune.data import TextDataset
from ktune.errors import ConfigError

__all__ = [
    "INPUT_NAMES",
    "BertStringEncoder",
    "InGraphBertTokenizer",
    "bert_normalization",
    "encode_texts",
    "token_cache_dir",
    "tokenize_splits",
    "tokenizer_digest",
]

log = logging.getLogger("ktune")

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_CACHE_VERSION = "1"


# --- what decides the ids ----------------------------------------------------------------


def _tokenizer_state(tokenizer: BertTokenizerFast) -> dict:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    # Truncation and padding are call settings, left behind by the last encode.
    state.pop("truncation", None)
    state.pop("padding", None)
    return state


def tokenizer_digest(tokenizer: BertTokenizerFast) -> str:
    """SHA-256 of everything that decides the ids: vocabulary, normalizer, splitting."""
    state = _tokenizer_state(tokenizer)
    state["split_special_tokens"] = bool(tokenizer.split_special_tokens)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()


def bert_normalization(tokenizer: BertTokenizerFast, name: str, key: str) -> dict:
    """The BertNormalizer settings of ``tokenizer``, which the export mirrors in graph."""
    state = _tokenizer_state(tokenizer)
    norm, model = state.get("normalizer") or {}, state.get("model") or {}
    pre = (state.get("pre_tokenizer") or {}).get("type")
    if (
        norm.get("type") != "BertNormalizer"
        or model.get("type") != "WordPiece"
        or (pre != "BertPreTokenizer")
    ):
        raise ConfigError(
            f"{key}: '{name}' is not a BERT WordPiece tokenizer (normalizer "
            f"{norm.get('type')}, pre-tokenizer {pre}, model {model.get('type')})"
        )
    if not norm.get("handle_chinese_chars", True):
        raise ConfigError(
            f"{key}: '{name}' does not split CJK characters; the in-graph tokenizer always does"
        )
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    return {
        "clean_text": bool(norm.get("clean_text", True)),
        "lowercase": lowercase,
        "strip_accents": lowercase if strip is None else bool(strip),
        "unk_token": str(model.get("unk_token", "[UNK]")),
        "continuing_subword_prefix": str(model.get("continuing_subword_prefix", "##")),
        "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100)),
    }


# --- tokenize once, cached ----------------------------------------------------------------


def token_cache_dir() -> Path:
    """``$KTUNE_CACHE_DIR/tokens``, by default ``~/.cache/ktune/tokens``."""
    root = os.environ.get("KTUNE_CACHE_DIR") or os.path.join("~", ".cache", "ktune")
    return Path(root).expanduser() / "tokens"


def encode_texts(
    tokenizer: BertTokenizerFast, texts: Sequence[str], maxlen: int
) -> dict[str, np.ndarray]:
    """The model inputs for ``texts`` in one batch call: int32 arrays of shape (N, maxlen).

    The same ids as ``tokenizer(texts, truncation=True, padding="max_length",
    max_length=maxlen)``, from a copy of its Rust backend set to truncate and pad: that
    skips the Python wrapper's per-text lists and offsets, which cost as much as the
    tokenizing itself.
    """
    texts = [str(t) for t in texts]
    n = len(texts)
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.encode_special_tokens = bool(tokenizer.split_special_tokens)
    backend.no_truncation()
    backend.enable_truncation(maxlen)
    backend.enable_padding(
        length=maxlen,
        pad_id=tokenizer.pad_token_id,
        pad_token=tokenizer.pad_token,
        pad_type_id=tokenizer.pad_token_type_id,
    )
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets
    encodings = encode(texts, add_special_tokens=True) if n else []

    def array(field: str) -> np.ndarray:
        values = itertools.chain.from_iterable(getattr(e, field) for e in encodings)
        return np.fromiter(values, np.int32, count=n * maxlen).reshape(n, maxlen)

    return {
        "input_ids": array("ids"),
        "attention_mask": array("attention_mask"),
        "token_type_ids": array("type_ids"),
    }


def _read_cache(path: Path, n_train: int, n_val: int, maxlen: int) -> tuple[dict, dict] | None:
    try:
        with np.load(path) as f:
            train = {k: f[f"train.{k}"] for k in INPUT_NAMES}
            val = {k: f[f"val.{k}"] for k in INPUT_NAMES}
    except Exception:  # noqa: BLE001 - unreadable or partial: tokenize again
        return None
    shapes_ok = all(
        a.shape == (n, maxlen) and a.dtype == np.int32
        for split, n in ((train, n_train), (val, n_val))
        for a in split.values()
    )
    return (train, val) if shapes_ok else None


def _write_cache(path: Path, train: dict, val: dict) -> None:
    """Written to a temporary file in the same folder, then renamed: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                **{f"train.{k}": v for k, v in train.items()},
                **{f"val.{k}": v for k, v in val.items()},
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tokenize_splits(
    tokenizer: BertTokenizerFast, tokenizer_name: str, data: TextDataset, maxlen: int
) -> tuple[dict, dict, Path, bool]:
    """Token ids of the train and validation texts, from the cache or encoded once.

    The cache key hashes the tokenizer's name and digest, ``maxlen`` and the data's
    fingerprint. Returns ``(train, val, cache_file, hit)``.
    """
    key = hashlib.sha256(
        "\0".join(
            [
                _CACHE_VERSION,
                tokenizer_name,
                tokenizer_digest(tokenizer),
                str(maxlen),
                data.fingerprint(),
            ]
        ).encode("utf-8")
    ).hexdigest()[:32]
    path = token_cache_dir() / f"{key}.npz"
    n_train, n_val = len(data.train_texts), len(data.val_texts)
    if path.is_file():
        cached = _read_cache(path, n_train, n_val, maxlen)
        if cached is not None:
            return cached[0], cached[1], path, True
    train = encode_texts(tokenizer, data.train_texts, maxlen)
    val = encode_texts(tokenizer, data.val_texts, maxlen)
    try:
        _write_cache(path, train, val)
    except OSError as e:  # a read-only home still runs, it just tokenizes every time
        log.warning("tokens: cannot write the cache %s (%s)", path, e.strerror or e)
    return train, val, path, False


# --- the in-graph tokenizer for export ---------------------------------------------------

# Characters BERT's normalizer deletes: control (Cc but tab, newline, carriage return),
# format (Cf), private use (Co), and U+FFFD. tensorflow_text would turn them into spaces.
_DELETED = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\p{Cf}\p{Co}\x{FFFD}]"


class InGraphBertTokenizer(TFBertTokenizer):
    """``TFBertTokenizer`` producing exactly the ids of ``BertTokenizerFast``.

    The stock layer differs from the fast tokenizer on four kinds of text, each found on
    test texts and fixed here by normalizing as ``BertNormalizer`` does before a
    WordPiece step that normalizes nothing:

    - it lower-cases with ``case_fold_utf8``, NFKC case folding, which also rewrites
      compatibility characters that BERT keeps (``ﬁ`` -> ``fi``, ``Ａ`` -> ``a``, ``Ⅻ`` ->
      ``xii``): here NFD, drop non-spacing marks (strip accents), then lower-case;
    - tensorflow_text turns control and format characters into spaces, BERT deletes them
      (``ctrl\u200bz`` is one word): here they are deleted first;
    - ``tf.strings.lower`` writes a word-final capital sigma as ``ς``, BERT lower-cases
      character by character to ``σ``: here ``Σ`` -> ``σ`` first;
    - tensorflow_text limits a word to 100 *bytes*, BERT to 100 *characters* (a word of
      60 ``ß``, a line of Thai): here the byte limit is 4 x the character limit and words
      over the character limit become ``[UNK]`` in graph.

    Left: characters added to Unicode after the ``tokenizers`` library's tables (2017 on:
    new marks and punctuation of rare scripts) may still split differently.
    Call :meth:`configure` with the normalizer's settings after ``from_tokenizer``.
    """

    def configure(self, normalization: Mapping[str, Any]) -> "InGraphBertTokenizer":
        self.clean_text = bool(normalization["clean_text"])
        self.strip_accents = bool(normalization["strip_accents"])
        self.lowercase = bool(normalization["lowercase"])
        self.max_chars_per_word = int(normalization["max_input_chars_per_word"])
        self.unk_id = self.vocab_list.index(normalization["unk_token"])
        prefix = normalization["continuing_subword_prefix"]
        self.is_suffix = tf.constant([t.startswith(prefix) for t in self.vocab_list])
        return self

    def normalize(self, texts: tf.Tensor) -> tf.Tensor:
        if self.clean_text:
            texts = tf.strings.regex_replace(texts, _DELETED, "")
        if self.strip_accents:
            texts = tf_text.normalize_utf8(texts, "NFD")
            texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
        if self.lowercase:
            texts = tf.strings.lower(tf.strings.regex_replace(texts, "Σ", "σ"), encoding="utf-8")
        return texts

    def unpaired_tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        texts = self.normalize(texts)
        # [batch, (pieces)] with the byte span of each piece in its (normalized) text
        pieces, starts, ends = self.tf_tokenizer.tokenize_with_offsets(texts)
        flat = pieces.flat_values
        # A word is a first piece and the "##" pieces after it; number words batch-wide.
        new_word = tf.logical_not(tf.gather(self.is_suffix, flat))
        word = tf.cumsum(tf.cast(new_word, tf.int64)) - 1
        n_words = tf.reduce_sum(tf.cast(new_word, tf.int64))
        word_start = tf.math.unsorted_segment_min(starts.flat_values, word, n_words)
        word_end = tf.math.unsorted_segment_max(ends.flat_values, word, n_words)
        word_row = tf.math.unsorted_segment_min(pieces.value_rowids(), word, n_words)
        word_text = tf.gather(texts, word_row)
        chars = tf.strings.length(
            tf.strings.substr(word_text, word_start, word_end - word_start), unit="UTF8_CHAR"
        )
        too_long = tf.gather(chars > self.max_chars_per_word, word)
        values = tf.where(too_long, tf.constant(self.unk_id, flat.dtype), flat)
        keep = tf.logical_or(new_word, tf.logical_not(too_long))
        return tf.ragged.boolean_mask(
            pieces.with_flat_values(values), pieces.with_flat_values(keep)
        )


class BertStringEncoder(keras.layers.Layer):
    """Raw strings -> ``input_ids``, ``attention_mask``, ``token_type_ids`` (int32, maxlen).

    Args:
        tokenizer: BertTokenizerFast. The tokenizer the model trained with.
        maxlen: int. Tokens per text, with ``[CLS]`` and ``[SEP]``.
    """

    def __init__(self, tokenizer: BertTokenizerFast, maxlen: int, **kwargs: Any):
        super().__init__(name=kwargs.pop("name", "bert_string_encoder"), **kwargs)
        norm = bert_normalization(tokenizer, tokenizer.name_or_path, "model.tokenizer")
        self.maxlen = maxlen
        self.tokenizer = InGraphBertTokenizer.from_tokenizer(
            tokenizer,
            max_length=maxlen,
            padding="max_length",
            truncation=True,
            do_lower_case=False,  # lower-cased in configure(), without NFKC
            unknown_token=norm["unk_token"],
            suffix_indicator=norm["continuing_subword_prefix"],
            # a UTF-8 character has up to 4 bytes; the character limit is applied in graph
            max_bytes_per_word=4 * norm["max_input_chars_per_word"],
        ).configure(norm)

    def call(self, texts: tf.Tensor) -> dict:
        out = self.tokenizer(texts)
        return {k: tf.cast(out[k], tf.int32) for k in INPUT_NAMES}
