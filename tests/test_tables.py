"""ktune.tables: the one fixed-width table and number format every printed table uses."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from ktune.tables import (
    FINISHED,
    format_duration,
    last_line,
    metric_text,
    render_table,
    status_label,
    value_text,
)


def starts(line: str) -> list[int]:
    return [m.start() for m in re.finditer(r"\S+", line)]


@pytest.mark.parametrize(
    "value, text",
    [
        (0.0123, "0.0123"),
        (0.012345, "0.01235"),  # 4 significant digits
        (1.5e-05, "1.5e-05"),
        (0.1, "0.1"),
        (16, "16"),
        (16.0, "16"),
        (np.int64(8), "8"),
        (np.float32(0.25), "0.25"),
        (True, "True"),
        ("relu", "relu"),
        (None, "-"),
        (math.nan, "-"),
        (np.float64("nan"), "-"),
    ],
)
def test_value_text(value, text):
    assert value_text(value) == text


@pytest.mark.parametrize(
    "value, text",
    [
        (0.83, "0.8300"),
        (0.123456, "0.1235"),
        (1, "1.0000"),
        (np.float32(0.5), "0.5000"),
        (None, "-"),
        (math.nan, "-"),
        ("0.5", "-"),  # text is not a metric
        (True, "-"),
    ],
)
def test_metric_text(value, text):
    assert metric_text(value) == text


def test_render_table_aligns_columns_without_trailing_spaces():
    text = render_table(
        ["trial", "lr", "val_accuracy"],
        [["trial_a", value_text(0.012345), metric_text(0.5)], ["trial_bbbb", "-", "-"]],
    )
    lines = text.splitlines()
    assert lines == [
        "trial       lr       val_accuracy",
        "trial_a     0.01235  0.5000",
        "trial_bbbb  -        -",
    ]
    for line in lines[1:]:
        assert starts(line) == starts(lines[0])
    assert all(line == line.rstrip() for line in lines)


def test_render_table_indents_and_pads_empty_cells():
    text = render_table(["a", "b", "c"], [["", "x", ""], ["long", "", "z"]], indent="  ")
    assert text.splitlines() == ["  a     b  c", "        x", "  long     z"]


def test_render_table_refuses_a_ragged_row():
    with pytest.raises(ValueError, match="row 1 has 2 cells for 3 columns"):
        render_table(["a", "b", "c"], [["1", "2", "3"], ["1", "2"]])


def test_every_table_formats_numbers_alike():
    """The results table, the progress table and the jobs table: one number format."""
    from ktune.experiment import format_results_table
    from ktune.jobs import format_jobs
    from ktune.progress import TrialRow, format_progress

    results = format_results_table(
        [
            {"trial": "trial_a", "status": "TERMINATED", "lr": 0.012345, "epochs": 2, "acc": 0.5},
            {"trial": "trial_b", "status": "ERROR", "lr": None, "epochs": 1, "acc": math.nan},
        ],
        "acc",
        ["lr"],
    ).splitlines()
    assert results[1].split() == ["trial_a", "TERMINATED", "0.01235", "2", "0.5000"]
    assert results[2].split() == ["trial_b", "ERROR", "-", "1", "-"]
    assert starts(results[2]) == starts(results[0])
    # with the budget, Ray's TERMINATED in ktune's words, as the progress table says them
    rows = [
        {"trial": "trial_a", "status": "TERMINATED", "lr": 0.1, "epochs": 2, "acc": 0.5},
        {"trial": "trial_c", "status": "TERMINATED", "lr": 0.1, "epochs": 1, "acc": 0.4},
        {"trial": "trial_b", "status": "ERROR", "lr": 0.1, "epochs": 1, "acc": math.nan},
    ]
    worded = format_results_table(rows, "acc", ["lr"], epochs=2).splitlines()
    assert [line.split()[1] for line in worded[1:]] == ["DONE", "STOPPED", "ERROR"]

    progress = format_progress(
        [TrialRow("trial_a", "DONE", 2, {"lr": 0.012345}, 0.5, 0.5)],
        name="x",
        metric="acc",
        mode="max",
        keys=["lr"],
        epochs=2,
        total=1,
        elapsed_s=1,
    ).splitlines()
    assert progress[2].split() == ["trial_a", "DONE", "2/2", "0.01235", "0.5000", "0.5000", "*"]

    jobs = format_jobs(
        [
            {
                "job": "raysubmit_1",
                "status": "RUNNING",
                "experiment": None,
                "started": "",
                "entrypoint": "python -m ktune run",
            }
        ]
    ).splitlines()
    assert jobs[0].split() == ["job", "status", "experiment", "started", "entrypoint"]
    assert jobs[1].split()[:3] == ["raysubmit_1", "RUNNING", "-"]
    assert jobs[1].endswith("python -m ktune run")


def test_statuses_and_durations():
    assert status_label("TERMINATED", 2, 2) == "DONE" and "DONE" in FINISHED
    assert status_label("TERMINATED", None, 2) == "STOPPED"
    assert status_label("PAUSED", 1, 2) == "PAUSED" and "PAUSED" not in FINISHED
    assert [format_duration(s) for s in (-3, 59.4, 3600, 7199)] == ["0s", "59s", "1h00m", "1h59m"]


def test_last_line():
    assert last_line("Traceback\n  File x\nValueError: bad\n\n  ") == "ValueError: bad"
    assert last_line(" \n") == ""


def test_last_line_of_a_keras_layer_error_is_the_error_not_its_call_arguments():
    """tf_keras ends a layer's error with the call's arguments (``• training=None``): a
    failed trial's one line (progress, results.csv, the report) is the error itself."""
    import traceback

    import tensorflow as tf
    import tf_keras as keras

    try:
        keras.layers.Reshape((3,))(tf.ones([1, 4]))
    except Exception as e:  # noqa: BLE001 - a real Keras error, as a trial's error.txt holds
        text, error = traceback.format_exc(), e
    assert "Call arguments received by layer" in text  # (tf_keras's footer, still there)
    assert (
        last_line(text)
        == "Input to reshape is a tensor with 4 values, but the requested shape has 3 [Op:Reshape]"
    )
    assert last_line(str(error)) == last_line(text)
