"""The transformer family's layers and classifier: shapes, head width, masking, serialization."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from ktune.trainables.transformer import (
    TokenAndPositionEmbedding,
    TransformerBlock,
    build_classifier,
)


def test_embedding_shape_and_padding_mask():
    layer = TokenAndPositionEmbedding(maxlen=6, vocab_size=20, embed_dim=8)
    ids = tf.constant([[3, 4, 5, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    out = layer(ids)
    assert out.shape == (2, 6, 8)
    mask = layer.compute_mask(ids).numpy()
    # padding is masked, but the first position always counts (an empty text still pools)
    assert mask.tolist() == [[True] * 3 + [False] * 3, [True] + [False] * 5]


def test_heads_split_embed_dim():
    block = TransformerBlock(embed_dim=32, num_heads=4, ff_dim=16)
    block(tf.zeros((1, 5, 32)))
    kernel = block.att._query_dense.kernel
    assert kernel.shape == (32, 4, 8)  # 4 heads of 32 // 4, not 4 full-width heads


def test_heads_must_divide_embed_dim():
    with pytest.raises(ValueError, match="must divide"):
        TransformerBlock(embed_dim=30, num_heads=4, ff_dim=16)


def test_block_ignores_masked_positions(seeded):
    block = TransformerBlock(embed_dim=8, num_heads=2, ff_dim=8, rate=0.0)
    x = tf.random.normal((1, 5, 8), seed=1)
    mask = tf.constant([[True, True, True, False, False]])
    noisy = tf.concat([x[:, :3], 100.0 * tf.random.normal((1, 2, 8), seed=2)], axis=1)
    a = block(x, mask=mask).numpy()[:, :3]
    b = block(noisy, mask=mask).numpy()[:, :3]
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        TokenAndPositionEmbedding(maxlen=7, vocab_size=50, embed_dim=12),
        TransformerBlock(embed_dim=12, num_heads=3, ff_dim=10, rate=0.2),
    ],
)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def test_classifier_shapes_and_saved_model_round_trip(tmp_path, seeded):
    model = build_classifier(
        maxlen=10, vocab_size=40, embed_dim=16, heads=4, ff_dim=8, num_classes=3, num_blocks=2
    )
    ids = np.random.default_rng(0).integers(0, 40, size=(5, 10)).astype("int32")
    probs = model(ids).numpy()
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert sum(isinstance(layer, TransformerBlock) for layer in model.layers) == 2
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded(ids).numpy(), probs, atol=1e-6)
