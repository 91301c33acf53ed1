"""The transformer family's layers and classifier: shapes, head width, masking, serialization."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from ktune.trainables.transformer import (
    AdversarialClassifier,
    AdversarialPerturbation,
    BagOfNgrams,
    TokenAndPositionEmbedding,
    TransformerBlock,
    WordDropout,
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
        WordDropout(0.3),
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


# --- the wide path (wide & deep) ---------------------------------------------------------


def test_bag_of_ngrams_is_sublinear_tf_of_unigrams_and_hashed_bigrams():
    bag = BagOfNgrams(vocab_size=10, buckets=16)
    ids = np.array([[5, 5, 7, 1, 5, 7, 0, 0], [0] * 8, [1, 1, 0, 0, 0, 0, 0, 0]], np.int32)
    out = bag(ids).numpy()
    assert out.shape == (3, 26)

    def bigram(a: int, b: int) -> int:
        return 10 + (a * 1_000_003 + b) % 16

    # Text 0: 5 three times, 7 twice; bigrams (5,5) once and (5,7) twice; the pairs with
    # the out-of-vocabulary id 1 and the padding count for nothing.
    expected = np.zeros(26, np.float32)
    expected[5] = 1 + np.log(3)
    expected[7] = 1 + np.log(2)
    expected[bigram(5, 5)] += 1
    expected[bigram(5, 7)] += 1 + np.log(2)
    np.testing.assert_allclose(out[0], expected / np.linalg.norm(expected), atol=1e-6)
    # Nothing known in a text: a zero vector, not NaN.
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_array_equal(out[2], 0)
    # The same under XLA (training.jit_compile).
    compiled = tf.function(lambda x: bag(x), jit_compile=True)
    np.testing.assert_allclose(compiled(ids).numpy(), out, atol=1e-6)


def test_word_dropout_hides_words_only_while_training(seeded):
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 500, size=(400, 50)).astype("int32")
    ids[:, 40:] = 0  # padding
    layer = WordDropout(0.4)
    hidden = layer(ids, training=True).numpy()
    changed = hidden != ids
    # every change hides a word behind the out-of-vocabulary id; padding stays padding
    assert (hidden[changed] == 1).all()
    assert not changed[:, 40:].any()
    share = changed[:, :40].mean()
    assert 0.37 < share < 0.43, share
    # a new draw at every step
    assert (layer(ids, training=True).numpy() != hidden).any()
    np.testing.assert_array_equal(layer(ids, training=False).numpy(), ids)
    np.testing.assert_array_equal(layer(ids).numpy(), ids)
    np.testing.assert_array_equal(WordDropout(0.0)(ids, training=True).numpy(), ids)
    with pytest.raises(ValueError, match="rate must be in"):
        WordDropout(1.0)


def test_classifier_with_word_dropout_is_deterministic_at_inference(seeded):
    ids = np.random.default_rng(1).integers(2, 40, size=(64, 12)).astype("int32")
    kwargs = dict(maxlen=12, vocab_size=40, embed_dim=8, heads=2, ff_dim=8, num_classes=3)
    model = build_classifier(**kwargs, dropout=0.0, word_dropout=0.5, wide=True)
    assert isinstance(model.get_layer("word_dropout"), WordDropout)
    np.testing.assert_array_equal(model(ids).numpy(), model(ids, training=False).numpy())
    # while training, the words each path reads change from call to call
    assert not np.allclose(model(ids, training=True).numpy(), model(ids, training=True).numpy())
    assert not any(isinstance(layer, WordDropout) for layer in build_classifier(**kwargs).layers)


def test_wide_classifier_learns_what_the_bag_of_words_says(seeded):
    """The wide path alone must carry a signal the Transformer gets no time to learn: two
    classes told apart only by which of two tokens occurs, learnt in a few steps."""
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 40, size=(256, 12)).astype("int32")
    labels = rng.integers(0, 2, size=256)
    ids[:, 5] = np.where(labels == 1, 2, 3)

    def accuracy(wide: bool) -> float:
        keras.utils.set_random_seed(0)
        model = build_classifier(
            maxlen=12, vocab_size=40, embed_dim=8, heads=2, ff_dim=8, num_classes=2, wide=wide
        )
        model.compile(keras.optimizers.Adam(3e-2), "sparse_categorical_crossentropy", ["accuracy"])
        model.fit(ids, labels, batch_size=32, epochs=1, verbose=0)
        return model.evaluate(ids, labels, verbose=0)[1]

    # Measured: 0.988 with the wide path, 0.547 without (chance is 0.5).
    assert accuracy(wide=True) >= 0.95
    assert accuracy(wide=False) < 0.8
    assert any(
        isinstance(layer, BagOfNgrams)
        for layer in build_classifier(
            maxlen=12, vocab_size=40, embed_dim=8, heads=2, ff_dim=8, num_classes=2, wide=True
        ).layers
    )
    assert not any(
        isinstance(layer, BagOfNgrams)
        for layer in build_classifier(
            maxlen=12, vocab_size=40, embed_dim=8, heads=2, ff_dim=8, num_classes=2
        ).layers
    )


def test_adversarial_step_trains_on_both_the_texts_and_their_perturbed_embeddings(seeded):
    """One train step (graph mode, as ``fit`` runs it) equals the step worked out by hand:
    the gradient of L(e) + L(e + d), where e is each text's embedded block and d is
    epsilon * ||e|| along the gradient of the loss at e, held constant."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 20, size=(8, 5)).astype("int32")
    labels = rng.integers(0, 3, size=8)
    epsilon, rate = 0.05, 0.5

    def model_of(cls, **extra):
        keras.utils.set_random_seed(0)
        inputs = keras.Input(shape=(5,), dtype="int32")
        x = keras.layers.Embedding(20, 4, name="embedding")(inputs)
        x = AdversarialPerturbation(name="adversarial_perturbation")(x)
        x = keras.layers.Dense(6, activation="tanh")(keras.layers.Flatten()(x))
        outputs = keras.layers.Dense(3, activation="softmax")(x)
        model = cls(inputs, outputs, **extra)
        model.compile(keras.optimizers.SGD(rate), "sparse_categorical_crossentropy")
        return model

    model = model_of(AdversarialClassifier, epsilon=epsilon)
    reference = model_of(keras.Model)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)

    embedding = reference.get_layer("embedding")
    head = keras.Sequential(reference.layers[3:])  # Flatten, Dense, Dense
    loss_of = lambda e: tf.reduce_mean(  # noqa: E731
        keras.losses.sparse_categorical_crossentropy(labels, head(e))
    )
    with tf.GradientTape() as tape:
        e = embedding(ids)
        with tf.GradientTape() as inner:
            inner.watch(e)
            clean = loss_of(e)
        g = inner.gradient(clean, e)
        d = (
            epsilon
            * tf.norm(e, axis=[1, 2], keepdims=True)
            * g
            / tf.norm(g, axis=[1, 2], keepdims=True)
        )
        adversarial = loss_of(e + tf.stop_gradient(d))
        total = clean + adversarial
    assert float(adversarial) > float(clean)  # d points uphill
    grads = tape.gradient(total, reference.trainable_variables)
    expected = [
        v.numpy() - rate * tf.convert_to_tensor(g).numpy()
        for v, g in zip(reference.trainable_variables, grads)
    ]

    history = model.fit(ids, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for v, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(v.numpy(), want, atol=1e-5)
    # The reported loss is the clean one, and the step without the perturbation differs.
    assert history.history["loss"][0] == pytest.approx(float(clean), rel=1e-5)
    reference.fit(ids, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert not np.allclose(reference.get_weights()[0], model.get_weights()[0], atol=1e-5)
    with pytest.raises(ValueError, match="epsilon must be in"):
        model_of(AdversarialClassifier, epsilon=0.0)


def test_adversarial_classifier_is_the_plain_one_at_inference(tmp_path, seeded):
    """The perturbation point has no weights: the same variables (a checkpoint of one
    restores into the other) and the same predictions."""
    ids = np.random.default_rng(1).integers(0, 40, size=(16, 12)).astype("int32")
    kwargs = dict(maxlen=12, vocab_size=40, embed_dim=8, heads=2, ff_dim=8, num_classes=3)
    model = build_classifier(**kwargs, wide=True, adversarial=0.03)
    assert isinstance(model, AdversarialClassifier) and model.epsilon == 0.03
    plain = build_classifier(**kwargs, wide=True)
    assert not isinstance(plain, AdversarialClassifier)
    assert not any(isinstance(layer, AdversarialPerturbation) for layer in plain.layers)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(ids, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0)
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=plain).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    np.testing.assert_allclose(model.predict(ids, verbose=0), plain.predict(ids, verbose=0))


@pytest.mark.parametrize("extra", [{"wide": True, "word_dropout": 0.3}, {"adversarial": 0.03}])
def test_wide_model_with_word_dropout_checkpoint_and_export_round_trip(tmp_path, seeded, extra):
    from ktune.config import parse_config
    from ktune.data import load_data
    from ktune.export import export_checkpoint
    from ktune.keras import CHECKPOINT_PREFIX
    from ktune.trainables import get_family
    from ktune.trainables.base import compile_model

    from conftest import reload_in_fresh_process, tiny_experiment

    cfg = parse_config(tiny_experiment(tmp_path))
    data = load_data(cfg.data)
    family = get_family("transformer")
    prepared = family.prepare(data, cfg.training, cfg.model)
    config = {
        "embed_dim": 8,
        "heads": 2,
        "ff_dim": 8,
        "learning_rate": 1e-2,
        **extra,
    }
    model = family.build_model(config, prepared.artefacts, data.num_classes, cfg.training)
    if "wide" in extra:
        assert model.get_layer("bag_of_ngrams") is not None
        assert model.get_layer("word_dropout").rate == 0.3
    else:
        assert model.epsilon == 0.03
    compile_model(model, config, cfg.training, len(data.train_labels))
    model.fit(prepared.train_inputs, data.train_labels, batch_size=64, epochs=1, verbose=0)
    ckpt = tmp_path / "checkpoint"  # as ktune.keras.ReportCheckpoint writes one
    epoch = tf.Variable(1, dtype=tf.int64)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch).write(
        str(ckpt / CHECKPOINT_PREFIX)
    )
    texts = [str(t) for t in data.test_texts[:6]] + ["", "Ünïcödé — naïve café 東京 📈"]
    out = export_checkpoint(
        family,
        config,
        prepared.artefacts,
        data.class_names,
        cfg.training,
        ckpt,
        tmp_path / "export",
        verify_texts=texts,
    )
    served = reload_in_fresh_process(out, texts)
    expected = model.predict(family.encode(prepared.artefacts, cfg.training, texts), verbose=0)
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)


def test_family_builds_the_drawn_word_dropout():
    from ktune.config import TrainingConfig
    from ktune.trainables import get_family

    family = get_family("transformer")
    config = {"embed_dim": 8, "heads": 2, "ff_dim": 8, "learning_rate": 1e-3}
    artefacts = {"vocabulary": ["", "[UNK]", "a", "b"]}
    training = TrainingConfig(maxlen=6)
    model = family.build_model({**config, "word_dropout": 0.35}, artefacts, 2, training)
    assert model.get_layer("word_dropout").rate == 0.35
    plain = family.build_model(config, artefacts, 2, training)
    assert not any(isinstance(layer, WordDropout) for layer in plain.layers)


def test_compiled_model_traces_its_train_step_once(seeded):
    """compile_model's metric exists before fit: Keras creating it (and its variables)
    inside the first trace of the train step makes TensorFlow trace that step twice, about
    1 s of every trial's first epoch on one core."""
    from ktune.config import TrainingConfig
    from ktune.keras import batches
    from ktune.trainables.base import compile_model

    x = np.random.default_rng(0).integers(0, 50, (64, 8)).astype(np.int32)
    y = np.arange(64) % 4
    model = build_classifier(maxlen=8, vocab_size=50, embed_dim=8, heads=1, ff_dim=8, num_classes=4)
    config = {"learning_rate": 1e-3}
    compile_model(model, config, TrainingConfig(epochs=2, batch_size=16, maxlen=8), len(y))
    history = model.fit(
        batches(x, y, 16, shuffle=True),
        validation_data=batches(x, y, 16, shuffle=False),
        epochs=2,
        verbose=0,
    )
    assert sorted(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert model.train_function.experimental_get_tracing_count() == 1
    assert model.test_function.experimental_get_tracing_count() == 1
