"""The searcher's snapshot never races Ray's background copy of the staging folder.

Ray snapshots a search by writing its state files into a staging folder, the searcher's
as a temporary file renamed over the old, and copies the folder to storage in the
background without waiting for the previous copy. A temporary file listed by the copy
and renamed before it is read fails the copy with a traceback on the console. Here a
thread runs Ray's own copy (``pyarrow.fs.copy_files``, as its syncer does) over and over
while the searcher snapshots into the folder, once with Ray's generators (the copy
fails) and once with ktune's (it never does, and the copied state restores).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow.fs
import pytest
from ray import tune
from ray.tune.search import BasicVariantGenerator as RayBasicVariantGenerator
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.search_generator import SearchGenerator as RaySearchGenerator

from ktune import ray_state
from ktune.ray_state import SEARCHER_WRITES_DIR, BasicVariantGenerator, SearchGenerator
from ktune.tuner import DurableOptunaSearch


def _space(trial):
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def _optuna(generator):
    searcher = DurableOptunaSearch(
        space=_space,
        metric="m",
        mode="max",
    )
    limiter = ConcurrencyLimiter(searcher, max_concurrent=2)
    for i in range(2):  # two live trials: the limiter's and the study's state are not empty
        assert limiter.suggest(f"t{i}") is not None
    return generator(limiter)


def _variants(generator):
    gen = generator(random_state=1)
    gen._random_state.rng.random(3)  # a state a fresh generator does not have
    return gen


def _comparable(state: dict) -> dict:
    return {k: v.rng.bit_generator.state if k == "_random_state" else v for k, v in state.items()}


def _copy_while_saving(gen, staging: Path, storage: Path, seconds: float, stop_at_error: bool):
    """Snapshots ``gen`` into ``staging`` for ``seconds`` while another thread copies
    ``staging`` to ``storage`` as Ray's syncer does; the copies made and the errors."""
    storage.mkdir(exist_ok=True)
    done = threading.Event()
    copies, errors = [0], []

    def copier():
        while not done.is_set():
            try:
                pyarrow.fs.copy_files(
                    str(staging), str(storage), destination_filesystem=pyarrow.fs.LocalFileSystem()
                )
                copies[0] += 1
            except OSError as e:
                errors.append(str(e))

    thread = threading.Thread(target=copier)
    thread.start()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and not (stop_at_error and errors):
            gen.save_to_dir(str(staging), session_str="s")
    finally:
        done.set()
        thread.join()
    return copies[0], errors


@pytest.mark.parametrize(
    "build, ours, rays",
    [
        (_optuna, SearchGenerator, RaySearchGenerator),
        (_variants, BasicVariantGenerator, RayBasicVariantGenerator),
    ],
    ids=["optuna", "basic-variant"],
)
def test_snapshots_beside_the_staging_folder_never_fail_rays_copy(tmp_path, build, ours, rays):
    staging = tmp_path / "exp" / "driver_artifacts"
    staging.mkdir(parents=True)
    # Ray's own generator, as Tune wraps a searcher: the copy lists a temporary file that
    # is renamed away before it is read (at most 5 s to see it happen once)
    _, errors = _copy_while_saving(
        build(rays), staging, tmp_path / "ray_storage", 5.0, stop_at_error=True
    )
    assert errors and "tmp-" in errors[0], "Ray's own snapshot no longer races its copy"

    for f in staging.iterdir():
        f.unlink()
    gen = build(ours)
    copies, errors = _copy_while_saving(gen, staging, tmp_path / "storage", 1.5, False)
    assert errors == [] and copies > 10
    # only whole files under their final names; the private folder is left empty
    names = sorted(p.name for p in staging.iterdir())
    assert names and all(ray_state.is_state_file(n) for n in names), names
    assert not any((staging.parent / SEARCHER_WRITES_DIR).iterdir())
    # what reached storage restores the searcher
    assert sorted(p.name for p in (tmp_path / "storage").iterdir()) == names
    again = build(ours)
    again.restore_from_dir(str(tmp_path / "storage"))
    assert _comparable(again.get_state()) == _comparable(gen.get_state())
    if build is _optuna:  # the searcher's own state: the two trials it suggested
        live = again.searcher.searcher._ot_trials
        assert sorted(live) == ["t0", "t1"]


def test_build_tuner_hands_tune_ktunes_generator_with_the_limit(tmp_path, ray_session):
    """ktune limits and wraps a Searcher itself, as Tune would, in its own generator; a
    limiter passed in keeps its own limit; PBT's first draw is ktune's generator too."""
    import yaml

    from ktune.config import load_config
    from ktune.tuner import build_tuner

    from conftest import tiny_experiment

    def search_alg_of(raw, **kw):
        exp = tmp_path / "exp.yaml"
        exp.write_text(yaml.safe_dump(raw))
        tuner = build_tuner(load_config(exp), None, **kw)
        return tuner._local_tuner._tune_config.search_alg  # what Tuner.fit is given

    raw = tiny_experiment(tmp_path)
    raw["search"]["max_concurrent_trials"] = 3
    alg = search_alg_of(raw)
    assert type(alg) is SearchGenerator and isinstance(alg.searcher, ConcurrencyLimiter)
    assert alg.searcher.max_concurrent == 3
    assert isinstance(alg.searcher.searcher, DurableOptunaSearch)

    own = OptunaSearch(space={"embed_dim": tune.choice([8, 16])})
    alg = search_alg_of(raw, search_alg=own)
    assert type(alg) is SearchGenerator and alg.searcher.searcher is own
    limited = ConcurrencyLimiter(OptunaSearch(space={"embed_dim": tune.choice([8])}), 1)
    alg = search_alg_of(raw, search_alg=limited)
    assert alg.searcher is limited and limited.max_concurrent == 1

    raw["search"].update(scheduler="pbt", num_samples=2)
    raw["search"]["space"]["learning_rate"] = {"low": 8e-3, "high": 2e-2, "log": True}
    assert type(search_alg_of(raw)) is BasicVariantGenerator
