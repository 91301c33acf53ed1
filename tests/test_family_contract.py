"""The contract every registered family keeps, checked the same way for each.

In the manner of optuna's ``testing/pytest_samplers.py`` and keras-hub's
``run_model_saving_test``: one parametrised fixture runs over :func:`ktune.families.names`,
so a family added to the registry is tested here with no test written. A family's tiny
local models come from its own testing hook (``ktune.testing``); one tiny model per
family is prepared and trained once per session, without Ray. The contract:

1. the search space resolves, and every drawn ``heads`` divides the drawn ``embed_dim``;
2. the tiny setup is a valid experiment whose every model loads;
3. build and a one-epoch fit, reported after the epoch with a checkpoint;
4. that checkpoint restores the same weights, optimizer state and step, and epoch;
5. its export takes raw strings (edge texts included) and gives the same outputs in a
   fresh process that imports neither ktune nor the families' model libraries (one
   process serves every family's export: starting TensorFlow costs more than serving).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from ktune import families
from ktune.config import DataConfig, TrainingConfig, parse_config

from conftest import run_script_for_result

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Outside Ray, ray.tune.report warns and drops the report: the test keeps a copy of it.
pytestmark = pytest.mark.filterwarnings("ignore:`report` is meant to only be called")

TRAINING = TrainingConfig(epochs=1, batch_size=32, maxlen=16, vocab_size=400)
# Served by every export: ordinary, empty, unicode, truncated, special-token look-alikes.
EDGE_TEXTS = [
    "Striker scores twice as the league leaders win the cup final",
    "",
    "Ünïcödé — naïve café 東京 📈",
    "word " * 100,
    "[CLS] [SEP] [MASK] 😀",
]
# Libraries an export must not need: ktune itself and the families' model loaders.
NOT_NEEDED = ("ktune", "transformers", "tensorflow_hub")


@pytest.fixture(scope="session", params=families.names())
def family_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def contract_data():
    from ktune.data import load_data

    return load_data(DataConfig(train_size=200, test_size=20, seed=4))


@dataclass
class Trained:
    """One family's tiny model after a one-epoch fit, and what its report wrote."""

    name: str
    family: Any
    config: dict
    payload: Any
    model: Any
    optimizer: Any
    history: dict
    reports: list[Path]


def _train(name: str, setup: Any, data: Any, tmp_path_factory: Any) -> Trained:
    import tf_keras as keras

    from ktune.trainables.base import (
        ReportEpoch,
        TrialPayload,
        batch_size_of,
        compile_model,
        data_digest,
        trial_info,
    )

    family = families.get_family(name)
    space = family.space
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    config = space.check_config(space.space_fn(space.resolve(setup.space))(study.ask()))
    with pytest.MonkeyPatch.context() as env:  # the hf_bert token cache: this session's
        env.setenv("KTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        prepared = family.prepare(data, TRAINING, setup.model)
    payload = TrialPayload(
        family=name,
        train_inputs=prepared.train_inputs,
        train_labels=data.train_labels,
        val_inputs=prepared.val_inputs,
        val_labels=data.val_labels,
        num_classes=data.num_classes,
        artefacts=prepared.artefacts,
        training=TRAINING,
        cpu=1,
        gpu=0,
        seed=0,
        class_names=list(data.class_names),
        verify_texts=EDGE_TEXTS,
    )
    keras.utils.set_random_seed(payload.seed)
    model = family.build_model(config, payload.artefacts, payload.num_classes, TRAINING)
    optimizer = compile_model(model, config, TRAINING, len(payload.train_labels))
    kept = tmp_path_factory.mktemp(f"reports-{name}")

    class KeepReports(ReportEpoch):
        """ktune's own per-epoch report; keeps a copy of each checkpoint folder it hands
        to Ray (outside a Tune session, ray.tune.report drops it)."""

        def _write(self, folder: str) -> None:
            super()._write(folder)
            shutil.copytree(folder, kept / f"report_{len(list(kept.iterdir()))}")

    history = model.fit(
        payload.train_inputs,
        payload.train_labels,
        validation_data=(payload.val_inputs, payload.val_labels),
        batch_size=batch_size_of(config, TRAINING),
        epochs=TRAINING.epochs,
        verbose=0,
        callbacks=[
            KeepReports(optimizer, 0, trial_info(payload, config, None, data_digest(payload)))
        ],
    )
    reports = sorted(kept.iterdir())
    return Trained(name, family, config, payload, model, optimizer, history.history, reports)


@pytest.fixture(scope="session")
def trained_family(tiny_setup, contract_data, tmp_path_factory):
    """``trained_family(name)``: the family's tiny model after one epoch, made once."""
    made: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in made:
            made[name] = _train(name, tiny_setup(name), contract_data, tmp_path_factory)
        return made[name]

    return get


@pytest.fixture
def trained(family_name, trained_family) -> Trained:
    return trained_family(family_name)


@pytest.fixture(scope="session")
def served(trained_family, tmp_path_factory) -> dict:
    """Every family's export of its reported checkpoint, served the edge texts in ONE
    fresh process (a TensorFlow start costs more than the serving): ``exports`` and
    ``outputs`` by family name, and ``loaded``, the :data:`NOT_NEEDED` modules it loaded."""
    import ktune

    root = tmp_path_factory.mktemp("exports")
    exports = {
        name: ktune.export_result(trained_family(name).reports[-1], root / name)
        for name in families.names()
    }
    out = run_script_for_result(
        _SERVE,
        json.dumps({name: str(path) for name, path in exports.items()}),
        json.dumps(EDGE_TEXTS),
        json.dumps(NOT_NEEDED),
    )
    return {"exports": exports, **out}


def test_space_resolves_and_heads_divide_embed_dim(family_name, tiny_setup):
    space = families.get_space(family_name)
    for overrides in (None, tiny_setup(family_name).space):
        resolved = space.resolve(overrides)
        define = space.space_fn(resolved)
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
        for _ in range(25):
            trial = study.ask()
            draw = define(trial)
            assert draw["embed_dim"] % draw["heads"] == 0, draw
            config = space.check_config(draw)  # a trial accepts every draw as it comes
            assert config["heads"] == draw["heads"]
            study.tell(trial, float(draw["embed_dim"]))


def test_tiny_setup_is_an_experiment_whose_models_load(family_name, tiny_setup):
    setup = tiny_setup(family_name)
    cfg = parse_config(
        {"name": "contract", "family": family_name, "model": setup.model,
         "search": {"space": setup.space}}
    )  # fmt: skip
    families.get_family(family_name).check_model(cfg.model, cfg.search.space)


def test_build_and_one_epoch_fit_reports_a_checkpoint(trained):
    from ktune.trainables.base import batch_size_of

    payload = trained.payload
    probabilities = trained.model.predict(payload.val_inputs, verbose=0)
    assert probabilities.shape == (len(payload.val_labels), payload.num_classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert all(math.isfinite(v[-1]) for v in trained.history.values())
    steps = math.ceil(len(payload.train_labels) / batch_size_of(trained.config, TRAINING))
    assert int(trained.optimizer.iterations.numpy()) == steps
    assert len(trained.reports) == TRAINING.epochs == 1
    report = trained.reports[0]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["epoch"] == 1 and metrics["step"] == steps
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    info = json.loads((report / "ktune_trial.json").read_text())
    assert info["family"] == trained.name and info["config"] == json.loads(
        json.dumps(trained.config)
    )


def test_checkpoint_restores_weights_optimizer_and_epoch(trained):
    from ktune.keras import restore
    from ktune.trainables.base import compile_model

    payload = trained.payload
    model = trained.family.build_model(
        trained.config, payload.artefacts, payload.num_classes, TRAINING
    )
    optimizer = compile_model(model, trained.config, TRAINING, len(payload.train_labels))
    assert restore(model, str(trained.reports[-1])) == 1  # as a resumed trial does
    assert int(optimizer.iterations.numpy()) == int(trained.optimizer.iterations.numpy()) > 0
    assert len(optimizer.variables) == len(trained.optimizer.variables)
    for saved, restored in zip(trained.optimizer.variables, optimizer.variables):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    assert len(model.weights) == len(trained.model.weights)
    for saved, restored in zip(trained.model.weights, model.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    np.testing.assert_array_equal(
        trained.model.predict(payload.val_inputs, verbose=0),
        model.predict(payload.val_inputs, verbose=0),
    )


_SERVE = (
    "import json, sys\n"
    "import tensorflow as tf\n"
    "try:\n"
    "    import tensorflow_text  # BERT exports tokenize with its ops\n"
    "except ImportError:\n"
    "    pass\n"
    "texts = tf.constant(json.loads(sys.argv[2]))\n"
    "outputs = {}\n"
    "for name, path in json.loads(sys.argv[1]).items():\n"
    "    out = tf.saved_model.load(path).signatures['serving_default'](texts)\n"
    "    outputs[name] = {'probabilities': out['probabilities'].numpy().tolist(),\n"
    "                     'label': [x.decode() for x in out['label'].numpy()]}\n"
    "loaded = [m for m in json.loads(sys.argv[3]) if m in sys.modules]\n"
    "result = {'outputs': outputs, 'loaded': loaded}\n"
    "print('RESULT ' + json.dumps(result))\n"
)


def test_export_serves_raw_strings_alike_in_a_fresh_process(trained, served):
    export, got = served["exports"][trained.name], served["outputs"][trained.name]
    meta = json.loads((export / "metadata.json").read_text())
    assert meta["family"] == trained.name and meta["verified"]["max_abs_diff"] <= 1e-5
    assert served["loaded"] == []  # the exports need none of them
    payload = trained.payload
    inputs = trained.family.encode(payload.artefacts, TRAINING, EDGE_TEXTS)
    expected = trained.model.predict(inputs, verbose=0)
    np.testing.assert_allclose(np.array(got["probabilities"]), expected, atol=1e-6)
    names = list(payload.class_names)
    assert got["label"] == [names[i] for i in expected.argmax(axis=1)]
