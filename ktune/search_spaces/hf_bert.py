"""The search space of the ``hf_bert`` family: Hugging Face BERTs searched by size.

Model options (``model:`` in the experiment file):

- ``name``: a model name on the Hugging Face Hub or a local directory, usually a template
  with ``{L}``, ``{H}`` and ``{A}``; the default ``google/bert_uncased_L-{L}_H-{H}_A-{A}``
  names Google's BERT miniatures, whose H=768, L=12 point is ``bert-base-uncased``
  (:data:`ALIASES`).
- ``tokenizer``: the tokenizer every size shares (the data is tokenized once per
  experiment). Defaults to ``bert-base-uncased`` (the miniatures' vocabulary) for a
  template, and to ``name`` itself for a single model.

A name is used as given, as ``transformers`` would: an existing folder (or a path that
names one, like ``models/tiny/bert_uncased_L-{L}_H-{H}_A-{A}``) is local, anything else
is a Hub name. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from typing import Any, Mapping

from ktune.search_spaces.base import positive_int
from ktune.search_spaces.bert import (
    BERT_DEFAULT_SPACE,
    BertSizeSpace,
    format_handle,
    has_size_placeholders,
)

__all__ = ["HfBertSpace", "DEFAULT_NAME", "DEFAULT_TOKENIZER", "ALIASES", "model_name"]

DEFAULT_NAME = "google/bert_uncased_L-{L}_H-{H}_A-{A}"
# Google's miniatures and bert-base-uncased share one uncased WordPiece vocabulary.
DEFAULT_TOKENIZER = "bert-base-uncased"
# Points of a template that are published under another name.
ALIASES: dict[str, str] = {"google/bert_uncased_L-12_H-768_A-12": "bert-base-uncased"}


def model_name(template: str, *, layers: int, embed_dim: int, heads: int) -> str:
    """The model a trial loads: the template filled with its size, then :data:`ALIASES`.

    Example: ``model_name(DEFAULT_NAME, layers=4, embed_dim=256, heads=4)`` is
    ``google/bert_uncased_L-4_H-256_A-4``; with 12, 768, 12 it is ``bert-base-uncased``.
    """
    name = format_handle(template, layers=layers, embed_dim=embed_dim, heads=heads)
    return ALIASES.get(name, name)


class HfBertSpace(BertSizeSpace):
    family = "hf_bert"
    defaults = {**BERT_DEFAULT_SPACE, "batch_size": [16, 32]}
    rules = {**BertSizeSpace.rules, "batch_size": positive_int}
    model_defaults = {"name": DEFAULT_NAME, "tokenizer": DEFAULT_TOKENIZER}
    # The lesson fine-tunes the whole Hugging Face model unless told otherwise.
    trial_defaults = {**BertSizeSpace.trial_defaults, "trainable": True}
    template_keys = ("name",)

    def resolve_model(self, raw: Any, key: str = "model") -> dict:
        model = super().resolve_model(raw, key)
        given = raw if isinstance(raw, Mapping) else {}
        if "tokenizer" not in given and not has_size_placeholders(model["name"]):
            # One model: its own tokenizer. A template: the shared default vocabulary.
            model["tokenizer"] = model["name"]
        return model
