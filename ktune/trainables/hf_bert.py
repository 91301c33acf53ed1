"""The ``hf_bert`` family: ``transformers.TFBertForSequenceClassification``, tokenized once.

Life of an experiment:

- :meth:`HfBertFamily.prepare` (driver, once) loads the ``BertTokenizerFast`` named by
  ``model.tokenizer`` and batch-encodes every training and validation text (truncated and
  padded to ``training.maxlen``) into int32 arrays, cached on disk under
  ``$KTUNE_CACHE_DIR/tokens`` (default ``~/.cache/ktune/tokens``), keyed by the tokenizer,
  ``maxlen`` and the data's fingerprint. Trials get the arrays through the object store:
  no per-example Python in their input pipeline (the lesson's ``tf.py_function`` per
  example was the bottleneck of its whole run). The encoding and its cache live in
  :mod:`ktune.trainables.hf_bert_tokens`.
- :meth:`HfBertFamily.build_model` (each trial) loads the model its size names
  (:func:`ktune.search_spaces.hf_bert.model_name`) with ``num_labels`` from the data and
  wraps it in a functional Keras model that outputs softmax probabilities. With
  ``trainable: false`` the ``bert`` base is frozen and only the classifier trains, as in
  the lesson; with ``true`` everything fine-tunes (AdamW + warmup from ``ktune.optim``).
- :meth:`HfBertFamily.string_encoder` (export) is ``transformers.TFBertTokenizer`` in the
  graph, set up to produce exactly the ids of the fast tokenizer used in training (see
  :class:`ktune.trainables.hf_bert_tokens.InGraphBertTokenizer`).

Anything that cannot be loaded raises :class:`~ktune.errors.ConfigError` with one line
naming the key, the name and what to do: :meth:`HfBertFamily.check_model` checks every
size of the search space before the data loads. Tiny random models in the template's
layout, for offline use and tests: :func:`ktune.testing.hf_bert.make_tiny_hf_bert`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

import tf_keras as keras

import ktune._keras_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "TensorFlow classes are deprecated" (they stay in 4.x)
    import transformers
    from transformers import (
        AutoConfig,
        BertTokenizerFast,
        TFBertForSequenceClassification,
    )

from ktune.config import TrainingConfig
from ktune.data import TextDataset
from ktune.errors import ConfigError, ExperimentError
from ktune.search_spaces import Spec
from ktune.search_spaces.base import TRIAL_DEFAULTS, listed
from ktune.search_spaces.bert import has_size_placeholders
from ktune.search_spaces.hf_bert import ALIASES, model_name
from ktune.trainables.family import TOKENS_CACHE, Family, Prepared
from ktune.trainables.hf_bert_tokens import (
    INPUT_NAMES,
    BertStringEncoder,
    bert_normalization,
    encode_texts,
    tokenize_splits,
    tokenizer_digest,
)

__all__ = ["HfBertFamily", "build_classifier", "check_models", "load_tokenizer", "resolve_location"]

log = logging.getLogger("ktune")
# "Some weights were newly initialized": expected, the classifier is new for every task.
transformers.logging.set_verbosity_error()

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
    bert_normalization(tokenizer, name, key)  # refuses what the in-graph tokenizer cannot mirror
    return tokenizer


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
    head_size = int(listed(space["head_size"])[0])
    names = []
    for layers in listed(space["layers"]):
        for embed_dim in listed(space["embed_dim"]):
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


# --- the model ---------------------------------------------------------------------------


def build_classifier(
    name: str,
    *,
    num_classes: int,
    maxlen: int,
    trainable: bool = True,
    dropout: float = TRIAL_DEFAULTS["dropout"],
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
                TOKENS_CACHE: str(path),
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
            dropout=float(config.get("dropout", TRIAL_DEFAULTS["dropout"])),
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
