"""The search space of the ``tfhub_bert`` family: TF-Hub small BERTs searched by size.

Model options (``model:`` in the experiment file): ``preprocess``, the handle of the
matching preprocessing SavedModel, and ``encoder``, a handle template with ``{L}``,
``{H}`` and ``{A}``. Handles may be URLs, local SavedModel folders, or templates of local
folders (a mirror, or ``TFHUB_CACHE_DIR`` on an offline cluster).
"""

from __future__ import annotations

from ktune.search_spaces.bert import BERT_DEFAULT_SPACE, BertSizeSpace

__all__ = ["TfhubBertSpace", "DEFAULT_PREPROCESS", "DEFAULT_ENCODER"]

DEFAULT_PREPROCESS = "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"
DEFAULT_ENCODER = "https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-{L}_H-{H}_A-{A}/1"


class TfhubBertSpace(BertSizeSpace):
    family = "tfhub_bert"
    defaults = BERT_DEFAULT_SPACE
    model_defaults = {"preprocess": DEFAULT_PREPROCESS, "encoder": DEFAULT_ENCODER}
    template_keys = ("encoder",)
