"""The ``hf_bert`` family's tiny models: random-weight BERTs in the layout of Google's
miniatures, with a small uncased WordPiece vocabulary (``ktune models make-tiny-hf-bert``).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Iterable

from ktune.errors import ExperimentError
from ktune.testing import TinySetup

__all__ = ["make_tiny_hf_bert", "tiny_vocabulary", "tiny_setup", "SIZES"]

# (L, H, A): two sizes, head size 16, so a search has a choice to make.
SIZES = [(2, 32, 2), (2, 64, 4)]


def tiny_setup(folder: Path) -> TinySetup:
    """:func:`make_tiny_hf_bert` with :data:`SIZES` in ``folder/tiny-hf-bert``; the ``bert``
    base frozen (``trainable: false``), so the classifier's optimizer slots alone are
    checkpointed, as in the lesson."""
    root = Path(folder) / "tiny-hf-bert"
    lines = tuple(make_tiny_hf_bert(root, SIZES))
    return TinySetup(
        model={"name": f"{root}/bert_uncased_L-{{L}}_H-{{H}}_A-{{A}}", "tokenizer": str(root)},
        space={"embed_dim": [32, 64], "layers": [2], "head_size": 16, "trainable": [False]},
        root=root,
        lines=lines,
    )


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
    from ktune.data import generate_builtin

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
    import numpy as np
    import tf_keras as keras

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "TensorFlow classes are deprecated" (they stay in 4.x)
        from transformers import BertConfig, BertTokenizerFast, TFBertForSequenceClassification

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
