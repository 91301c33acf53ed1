"""The ``hf_bert`` family: ``transformers.TFBertForSequenceClassification``, tokenized once.

Life of an experiment:

- :meth:`HfBertFamily.prepare` (driver, once) loads the ``BertTokenizerFast`` named by
  ``model.tokenizer`` and batch-encodes every training and validation text (truncated and
  padded to ``training.maxlen``) into int32 arrays, cached on disk under
  ``$KTUNE_CACHE_DIR/tokens`` (default ``~/.cache/ktune/tokens``), keyed by the tokenizer,
  ``maxlen`` and the data's fingerprint. Trials get the arrays through the object store:
  no per-example Python in their input pipeline (the lesson's ``tf.py_function`` per
  example was the bottleneck of its whole run).
- :meth:`HfBertFamily.build_model` (each trial) loads the model its size names
  (:func:`ktune.search_spaces.hf_bert.model_name`) with ``num_labels`` from the data and
  wraps it in a functional Keras model that outputs softmax probabilities. With
  ``trainable: false`` the ``bert`` base is frozen and only the classifier trains, as in
  the lesson; with ``true`` everything fine-tunes (AdamW + warmup from ``ktune.optim``).
- :meth:`HfBertFamily.string_encoder` (export) is ``transformers.TFBertTokenizer`` in the
  graph, set up to produce exactly the ids of the fast tokenizer used in training (see
  :class:`InGraphBertTokenizer`).

Anything that cannot be loaded raises :class:`~ktune.errors.ConfigError` with one line
naming the key, the name and what to do: :meth:`HfBertFamily.check_model` checks every
size of the search space before the data loads. :func:`make_tiny_hf_bert` writes tiny
random models in the template's layout for offline use and tests.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras as keras
from tokenizers import Tokenizer

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "TensorFlow classes are deprecated" (they stay in 4.x)
    import transformers
    from transformers import (
        AutoConfig,
        BertConfig,
        BertTokenizerFast,
        TFBertForSequenceClassification,
        TFBertTokenizer,
    )

from ktune.config import TrainingConfig
from ktune.data import TextDataset, generate_builtin
from ktune.errors import ConfigError, ExperimentError
from ktune.search_spaces import Spec
from ktune.search_spaces.base import candidates
from ktune.search_spaces.bert import has_size_placeholders
from ktune.search_spaces.hf_bert import ALIASES, HfBertSpace, model_name
from ktune.trainables.base import Family, Prepared

__all__ = [
    "HfBertFamily",
    "InGraphBertTokenizer",
    "INPUT_NAMES",
    "build_classifier",
    "check_models",
    "encode_texts",
    "load_tokenizer",
    "make_tiny_hf_bert",
    "resolve_location",
    "token_cache_dir",
    "tokenize_splits",
]

log = logging.getLogger("ktune")
# "Some weights were newly initialized": expected, the classifier is new for every task.
transformers.logging.set_verbosity_error()

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_CACHE_VERSION = "1"
_ADVICE = (
    "point it at a local directory (`ktune models make-tiny-hf-bert DIR` writes tiny ones), "
    "or download it once with network and set HF_HOME to that cache (HF_HUB_OFFLINE=1 offline)"
)


# --- names and loading -------------------------------------------------------------------


def _is_local(name: str) -> bool:
    """Whether ``transformers`` would read ``name`` from disk rather than the Hub.

    A Hub name has at most one '/'; a path that starts like one, has more slashes, or
    whose folder exists is local (``models/tiny/bert_uncased_L-{L}_H-{H}_A-{A}``).
    """
    if name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", ".."):
        return True
    if name.count("/") >= 2 or os.path.exists(os.path.expanduser(name)):
        return True
    parent = os.path.dirname(name)
    return bool(parent) and "{" not in parent and os.path.isdir(parent)


def resolve_location(name: str) -> str:
    """A local name as an absolute path (trials run in other folders); Hub names as given."""
    if _is_local(name):
        return os.path.abspath(os.path.expanduser(name))
    return name


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached, or None; fast, so an offline run fails in seconds.

    Without this, ``from_pretrained`` retries for minutes before failing. Behind a proxy
    the direct probe proves nothing, so it is skipped.
    """
    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    if any(os.environ.get(v) for v in proxies):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        return f"{constants.ENDPOINT} cannot be reached ({e.strerror or e})"
    return None


def _load(load: Callable[..., Any], name: str, *, key: str, what: str, **kwargs: Any) -> Any:
    """Calls a ``from_pretrained``; any failure becomes one ConfigError line naming ``key``.

    Hub names are looked up in the local cache first (HF_HOME), so a cached model loads
    without network, and the network is tried only when the cache misses.
    """
    from huggingface_hub import constants

    try:
        if _is_local(name):
            if not os.path.isdir(name):
                raise ConfigError(f"{key}: {what} directory not found: {name}; {_ADVICE}")
            return load(name, **kwargs)
        try:
            return load(name, local_files_only=True, **kwargs)
        except Exception:  # noqa: BLE001 - not cached (or not completely): try the Hub
            if constants.HF_HUB_OFFLINE:
                raise ConfigError(
                    f"{key}: {what} '{name}' is not in the Hugging Face cache "
                    f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; {_ADVICE}"
                ) from None
        reason = _hub_unreachable()
        if reason:
            raise ConfigError(
                f"{key}: {what} '{name}' is not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}) and {reason}; {_ADVICE}"
            )
        return load(name, **kwargs)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds: one line
        reason = _first_line(e)
        raise ConfigError(f"{key}: cannot load {what} '{name}': {reason}; {_ADVICE}") from None


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str, key: str = "model.tokenizer") -> BertTokenizerFast:
    """The fast WordPiece tokenizer ``name`` (a Hub name or a folder), checked for BERT.

    Special tokens written in a text (``"[SEP]"``) are split like any other text, as in
    the original BERT and the in-graph tokenizer, so user text cannot inject them.
    """
    name = ALIASES.get(name, name)
    tokenizer = _load(
        BertTokenizerFast.from_pretrained,
        name,
        key=key,
        what="tokenizer",
        split_special_tokens=True,
    )
    _normalization(tokenizer, name, key)  # refuses what the in-graph tokenizer cannot mirror
    return tokenizer


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


def _normalization(tokenizer: BertTokenizerFast, name: str, key: str) -> dict:
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


def _load_config(name: str, key: str, size: str) -> Any:
    return _load(AutoConfig.from_pretrained, name, key=key, what=f"model{size}")


def _size_text(layers: int, embed_dim: int, heads: int) -> str:
    return f" (L={layers}, H={embed_dim}, A={heads})"


def _check_local_template(template: str) -> None:
    """Without the search space, at least one folder must match a local template."""
    if not _is_local(template):
        return
    if not has_size_placeholders(template):
        if not os.path.isdir(template):
            raise ConfigError(f"model.name: model directory not found: {template}; {_ADVICE}")
        return
    parent, base = os.path.split(template)
    if has_size_placeholders(parent):
        return  # check_models looks at every size
    pattern = re.compile(
        "".join(
            r"\d+" if part in ("{L}", "{H}", "{A}") else re.escape(part)
            for part in re.split(r"(\{[LHA]\})", base)
        )
        + r"\Z"
    )
    found = os.path.isdir(parent) and any(pattern.match(n) for n in os.listdir(parent))
    if not found:
        raise ConfigError(
            f"model.name: no model directory matches {template}"
            f"{'' if os.path.isdir(parent) else f' ({parent} does not exist)'}; {_ADVICE}"
        )


def check_models(
    model: Mapping[str, Any], space: Mapping[str, Spec], *, maxlen: int | None = None
) -> list[str]:
    """Checks that every size the space can draw names a loadable BERT of that size.

    Called in the driver before any trial (it reads each model's config, not its
    weights). Raises ConfigError naming ``model.name`` (or ``model.tokenizer``,
    ``training.maxlen``); returns the names checked.

    Args:
        model: mapping. The validated ``model:`` section (``name``, ``tokenizer``).
        space: mapping. The resolved ``search.space`` (``embed_dim``, ``layers``,
            ``head_size``).
        maxlen: int. ``training.maxlen``, checked against the position embeddings.
            Defaults to None (not checked).
    """
    template = resolve_location(str(model["name"]))
    tokenizer = load_tokenizer(resolve_location(str(model["tokenizer"])))
    vocab = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    head_size = int(candidates(space["head_size"])[0])
    names = []
    for layers in candidates(space["layers"]):
        for embed_dim in candidates(space["embed_dim"]):
            heads = embed_dim // head_size
            name = model_name(template, layers=layers, embed_dim=embed_dim, heads=heads)
            size = _size_text(layers, embed_dim, heads)
            config = _load_config(name, "model.name", size)
            if getattr(config, "model_type", None) != "bert":
                raise ConfigError(
                    f"model.name: '{name}' is a '{config.model_type}' model, not BERT"
                )
            got = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads)
            if got != (layers, embed_dim, heads):
                raise ConfigError(
                    f"model.name: '{name}' has L={got[0]}, H={got[1]}, A={got[2]} but "
                    f"search.space asks for{size} (check the template and head_size)"
                )
            if config.vocab_size < len(vocab):
                raise ConfigError(
                    f"model.tokenizer: {len(vocab)} tokens, more than the {config.vocab_size} "
                    f"embeddings of '{name}'; use the tokenizer the model was trained with"
                )
            own_vocab = Path(name) / "vocab.txt"
            if own_vocab.is_file() and own_vocab.read_text("utf-8").splitlines() != vocab:
                raise ConfigError(
                    f"model.tokenizer: its vocabulary differs from {own_vocab}; "
                    "every size must share the tokenizer's vocabulary"
                )
            if maxlen is not None and maxlen > config.max_position_embeddings:
                raise ConfigError(
                    f"training.maxlen: {maxlen} is more than the {config.max_position_embeddings}"
                    f" positions of '{name}'"
                )
            names.append(name)
    return names


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
        norm = _normalization(tokenizer, tokenizer.name_or_path, "model.tokenizer")
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


# --- the model ---------------------------------------------------------------------------


def build_classifier(
    name: str, *, num_classes: int, maxlen: int, trainable: bool = True, dropout: float = 0.1
) -> keras.Model:
    """``TFBertForSequenceClassification`` ``name`` as a functional model to probabilities.

    Args:
        name: str. A Hub name or a local folder (already formatted, not a template).
        num_classes: int. Classes; the classifier head is new.
        maxlen: int. Sequence length of the three int32 inputs (:data:`INPUT_NAMES`).
        trainable: bool. False freezes the ``bert`` base (only the classifier trains).
            Defaults to True.
        dropout: float. Dropout before the classifier. Defaults to 0.1.
    """
    classifier = _load(
        TFBertForSequenceClassification.from_pretrained,
        name,
        key="model.name",
        what="model",
        num_labels=num_classes,
        ignore_mismatched_sizes=True,  # a saved head for another number of classes
        classifier_dropout=dropout,
    )
    positions = classifier.config.max_position_embeddings
    if maxlen > positions:
        raise ConfigError(
            f"training.maxlen: {maxlen} is more than the {positions} positions of '{name}'"
        )
    classifier.bert.trainable = trainable  # the encoder; the head (classifier) always trains
    inputs = {k: keras.Input(shape=(maxlen,), dtype="int32", name=k) for k in INPUT_NAMES}
    logits = classifier(inputs).logits
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(
        logits
    )
    return keras.Model(inputs, probabilities, name="hf_bert_classifier")


class HfBertFamily(Family):
    name = "hf_bert"
    space = HfBertSpace()

    def prepare(
        self, data: TextDataset, training: TrainingConfig, model: Mapping[str, Any]
    ) -> Prepared:
        template = resolve_location(str(model["name"]))
        _check_local_template(template)
        if not has_size_placeholders(template):
            _load_config(ALIASES.get(template, template), "model.name", "")
        tokenizer_name = resolve_location(str(model["tokenizer"]))
        tokenizer = load_tokenizer(tokenizer_name)
        train, val, path, hit = tokenize_splits(tokenizer, tokenizer_name, data, training.maxlen)
        log.info(
            "tokens: %s %d texts to %d ids each (%s)",
            "loaded" if hit else "encoded and cached",
            len(data.train_texts) + len(data.val_texts),
            training.maxlen,
            path,
        )
        return Prepared(
            train_inputs=train,
            val_inputs=val,
            artefacts={
                "name": template,
                "tokenizer": tokenizer_name,
                "tokenizer_sha256": tokenizer_digest(tokenizer),
                "vocab_size": len(tokenizer),
                "tokens_cache": str(path),
            },
        )

    def build_model(
        self,
        config: Mapping[str, Any],
        artefacts: Mapping,
        num_classes: int,
        training: TrainingConfig,
    ) -> keras.Model:
        name = model_name(
            artefacts["name"],
            layers=int(config["layers"]),
            embed_dim=int(config["embed_dim"]),
            heads=int(config["heads"]),
        )
        return build_classifier(
            name,
            num_classes=num_classes,
            maxlen=training.maxlen,
            trainable=bool(config.get("trainable", True)),
            dropout=float(config.get("dropout", 0.1)),
        )

    def check_model(self, model: Mapping[str, Any], space: Mapping[str, Spec]) -> None:
        """Before the data loads: every size the space can draw must load.

        Reads each model's config (not its weights) and the tokenizer; see
        :func:`check_models`.
        """
        check_models(model, space)

    def _tokenizer(self, artefacts: Mapping) -> BertTokenizerFast:
        tokenizer = load_tokenizer(artefacts["tokenizer"])
        if tokenizer_digest(tokenizer) != artefacts["tokenizer_sha256"]:
            raise ExperimentError(
                f"{artefacts['tokenizer']}: the tokenizer changed since the experiment ran; "
                "restore the files the trials trained with"
            )
        return tokenizer

    def string_encoder(self, artefacts: Mapping, training: TrainingConfig) -> BertStringEncoder:
        return BertStringEncoder(self._tokenizer(artefacts), training.maxlen)

    def encode(self, artefacts: Mapping, training: TrainingConfig, texts: Sequence[str]) -> dict:
        # The training tokenizer: test accuracy and the export check see training's ids.
        return encode_texts(self._tokenizer(artefacts), texts, training.maxlen)


# --- tiny models for offline use and tests -----------------------------------------------

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Characters beyond ASCII that texts in tests and the wild use, after BERT's
# normalization (lower-cased, accents stripped): each is a token and a "##" piece.
_EXTRA_CHARS = (
    "ßøæœłđþðıĳ"
    "αβγδεζηθικλμνξοπρστυφχψως"
    "абвгдежзийклмнопрстуфхцчшщъыьэюяёіїє"
    "東京日本語中文的一人大学国年のテキスト한국어"
    "שלוםمرحباनमसतสวดี"
    "€£¥°©®™½²³µ•§¶📈😀🙂"
)
_EXTRA_PUNCT = "–—…“”‘’«»¿¡·"
_PIECES = ["##s", "##es", "##ed", "##ing", "##er", "##ers", "##ly", "##al", "##tion", "##ment"]


def tiny_vocabulary() -> list[str]:
    """A small uncased WordPiece vocabulary covering the builtin data's words.

    Special tokens, every word of :func:`ktune.data.generate_builtin`, ASCII letters and
    digits and :data:`_EXTRA_CHARS` as tokens and ``##`` pieces, punctuation, a few
    suffixes. Every ASCII word tokenizes without ``[UNK]``.
    """
    titles, descriptions, _ = generate_builtin(4000, seed=0)
    words = sorted(
        {w.strip(".").lower() for text in (*titles, *descriptions) for w in text.split()} - {""}
    )
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789" + _EXTRA_CHARS]
    punctuation = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" + _EXTRA_PUNCT)
    vocab = _SPECIAL + punctuation + letters + [f"##{c}" for c in letters] + _PIECES + words
    return list(dict.fromkeys(vocab))  # unique, first occurrence wins


def make_tiny_hf_bert(out_dir: Path, sizes: list[tuple[int, int, int]]) -> Iterable[str]:
    """Writes tiny random-weight BERT classifiers in the ``google/bert_uncased`` layout.

    One folder per size, ``out_dir/bert_uncased_L-{L}_H-{H}_A-{A}/``, with
    ``TFBertForSequenceClassification`` weights, ``config.json`` and tokenizer files; the
    shared tokenizer also in ``out_dir``. Everything is written to a temporary sibling
    and renamed at the end. Yields a line per item written, then the two lines to put in
    the experiment file, ``model.tokenizer`` and (last) the ``model.name`` template.

    Args:
        out_dir: Path. Folder to create; must not exist.
        sizes: list of (L, H, A). Layers, hidden size and heads (H divisible by A).
    """
    out = Path(out_dir)
    if out.exists():
        raise ExperimentError(f"{out}: already exists; choose a new folder")
    for layers, hidden, heads in sizes:
        if min(layers, hidden, heads) < 1 or hidden % heads:
            raise ValueError(f"size L={layers} H={hidden} A={heads}: A must divide H")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        vocab = tiny_vocabulary()
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizerFast(vocab_file=str(tmp / "vocab.txt"), do_lower_case=True)
        tokenizer.save_pretrained(str(tmp))
        lines = [f"wrote {out}: BertTokenizerFast, uncased WordPiece, {len(vocab)} tokens"]
        for layers, hidden, heads in sizes:
            folder = f"bert_uncased_L-{layers}_H-{hidden}_A-{heads}"
            keras.utils.set_random_seed(layers * 100_003 + hidden)  # the same weights every time
            config = BertConfig(
                vocab_size=len(vocab),
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=2 * hidden,
                max_position_embeddings=512,
            )
            model = TFBertForSequenceClassification(config)
            model(model.dummy_inputs)
            model.save_pretrained(str(tmp / folder))
            tokenizer.save_pretrained(str(tmp / folder))
            n = sum(int(np.prod(w.shape)) for w in model.weights)
            lines.append(
                f"wrote {out / folder}: TFBertForSequenceClassification, {layers} layers, "
                f"hidden {hidden}, {heads} heads, {n:,} weights"
            )
            del model
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    yield from lines
    yield f"model.tokenizer: {out}"
    yield f"model.name: {out}/bert_uncased_L-{{L}}_H-{{H}}_A-{{A}}"
