"""The ``tfhub_bert`` family's tiny models: a preprocess model and BERT encoders in TF-Hub
format, written locally with ``tf-models-official`` (``ktune models make-tiny-bert DIR``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from ktune.testing import TinySetup

__all__ = ["make_tiny_bert", "tiny_setup", "SIZES", "TEMPLATE"]

# (L, H, A): two sizes, head size 16, so a search has a choice to make.
SIZES = [(2, 32, 2), (2, 64, 4)]
TEMPLATE = "bert_en_uncased_L-{L}_H-{H}_A-{A}"


def tiny_setup(folder: Path) -> TinySetup:
    """:func:`make_tiny_bert` with :data:`SIZES` in ``folder/tiny-bert``; the encoder
    fine-tunes (``trainable``), the path a frozen one takes is a subset of it."""
    root = Path(folder) / "tiny-bert"
    lines = tuple(make_tiny_bert(root, SIZES))
    return TinySetup(
        model={"preprocess": str(root / "preprocess"), "encoder": str(root / TEMPLATE)},
        space={"embed_dim": [32, 64], "layers": [2], "head_size": 16, "trainable": [True]},
        root=root,
        lines=lines,
    )


def make_tiny_bert(
    out_dir: str | Path, sizes: Sequence[tuple[int, int, int]], *, vocab: Iterable[str] = ()
) -> Iterable[str]:
    """Writes a tiny preprocess model and random-weight BERT encoders in TF-Hub format.

    Layout: ``out_dir/preprocess`` and ``out_dir/bert_en_uncased_L-{L}_H-{H}_A-{A}`` for each
    ``(L, H, A)`` in ``sizes``, so ``model.encoder`` can be the template
    ``out_dir/bert_en_uncased_L-{L}_H-{H}_A-{A}``. Yields a line per thing written.
    """
    import tensorflow as tf
    from official.legacy.bert import configs
    from official.nlp.tools import export_tfhub_lib

    from ktune.data import builtin_words

    out = Path(out_dir)
    out.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-/:;()&$%")
    words = list(dict.fromkeys([*builtin_words(), *vocab]))
    tokens = specials + chars + ["##" + c for c in chars] + [w for w in words if w not in chars]
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n")
    export_tfhub_lib.export_preprocessing(
        str(out / "preprocess"),
        vocab_file=str(vocab_file),
        do_lower_case=True,
        tokenize_with_offsets=False,
        default_seq_length=128,
    )
    yield f"preprocess: {out / 'preprocess'}"
    for layers, hidden, heads in sizes:
        bert_config = configs.BertConfig(
            vocab_size=len(tokens),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=512,
        )
        encoder = export_tfhub_lib.get_bert_encoder(bert_config)
        target = out / f"bert_en_uncased_L-{layers}_H-{hidden}_A-{heads}"
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = tf.train.Checkpoint(encoder=encoder).save(str(Path(tmp) / "ckpt"))
            export_tfhub_lib.export_model(
                str(target),
                bert_config=bert_config,
                model_checkpoint_path=ckpt,
                with_mlm=False,
                vocab_file=str(vocab_file),
                do_lower_case=True,
            )
        yield f"encoder: {target}"
    yield f"model.preprocess: {out / 'preprocess'}"
    yield f"model.encoder: {out / 'bert_en_uncased_L-{L}_H-{H}_A-{A}'}"
