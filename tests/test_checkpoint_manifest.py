"""A checkpoint folder cut off mid-upload is told from a whole one (its manifest)."""

from __future__ import annotations

import shutil

import pytest

from ktune.checkpoint_manifest import MANIFEST_FILE, is_complete, reported_metrics, write_manifest


@pytest.fixture
def checkpoint(tmp_path):
    """A real TF checkpoint folder as ReportCheckpoint writes it, manifest last."""
    import tensorflow as tf

    folder = tmp_path / "checkpoint_000002"
    folder.mkdir()
    tf.train.Checkpoint(w=tf.Variable(tf.ones([64, 64]))).write(str(folder / "ckpt"))
    (folder / "metrics.json").write_text('{"epoch": 3}')
    write_manifest(str(folder))
    return folder


def test_a_whole_folder_is_complete_and_extra_files_do_not_matter(checkpoint):
    assert is_complete(str(checkpoint))
    (checkpoint / ".ktune-unreported.json").write_text("{}")  # added later by ktune resume
    assert is_complete(str(checkpoint) + "/")


@pytest.mark.parametrize("cut", ["no manifest", "no weights", "weights cut short", "empty"])
def test_a_folder_cut_off_mid_upload_is_not_complete(checkpoint, cut):
    data = next(checkpoint.glob("ckpt.data-*"))
    if cut == "no manifest":  # the upload copies files in any order, several at a time
        (checkpoint / MANIFEST_FILE).unlink()
    elif cut == "no weights":  # ckpt.index there, the weights not yet
        data.unlink()
    elif cut == "weights cut short":
        data.write_bytes(data.read_bytes()[:100])
    else:
        shutil.rmtree(checkpoint)
        checkpoint.mkdir()
    assert (checkpoint / "ckpt.index").exists() == (cut != "empty")
    assert not is_complete(str(checkpoint))


def test_a_manifest_that_does_not_parse_is_not_complete(checkpoint):
    (checkpoint / MANIFEST_FILE).write_text('{"files": {"ckpt.ind')
    assert not is_complete(str(checkpoint))


def test_reported_metrics_reads_a_folder_or_a_checkpoint_and_nothing_else(checkpoint):
    """One reader of metrics.json for every caller: a folder (str or Path) or a Ray
    Checkpoint through its file system; {} when it is missing, cut off or not an object."""
    from ray import tune

    for where in (checkpoint, str(checkpoint), tune.Checkpoint(str(checkpoint))):
        assert reported_metrics(where) == {"epoch": 3}
    for text in ('{"epoch": 3', "[3]", "\xff"):
        (checkpoint / "metrics.json").write_bytes(text.encode("latin-1"))
        assert reported_metrics(checkpoint) == {}
        assert reported_metrics(tune.Checkpoint(str(checkpoint))) == {}
    (checkpoint / "metrics.json").unlink()
    assert reported_metrics(checkpoint) == {} == reported_metrics(tune.Checkpoint(str(checkpoint)))
