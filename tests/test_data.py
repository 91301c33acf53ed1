"""Data sources: builtin, csv, jsonl and tfds (mocked TFDS data, real loader)."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import ktune  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TF)
from ktune.config import DataConfig
from ktune.data import AG_NEWS_CLASSES, TextDataset, generate_builtin, load_data
from ktune.errors import DataError


def builtin(**kw) -> TextDataset:
    kw.setdefault("train_size", 400)
    kw.setdefault("test_size", 80)
    return load_data(DataConfig(source="builtin", **kw))


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def csv_cfg(train: Path, **kw) -> DataConfig:
    return DataConfig(source="csv", train=str(train), **kw)


def two_class_rows(n: int = 20) -> list[list]:
    return [[f"text number {i}", "pos" if i % 2 else "neg"] for i in range(n)]


# --- builtin --------------------------------------------------------------------------------


def test_builtin_is_deterministic_for_a_seed():
    a, b = builtin(seed=3), builtin(seed=3)
    for split in ("train", "val", "test"):
        assert list(getattr(a, f"{split}_texts")) == list(getattr(b, f"{split}_texts"))
        np.testing.assert_array_equal(getattr(a, f"{split}_labels"), getattr(b, f"{split}_labels"))
    assert a.fingerprint() == b.fingerprint()


def test_builtin_differs_between_seeds():
    a, b = builtin(seed=0), builtin(seed=1)
    assert list(a.train_texts) != list(b.train_texts)
    assert list(a.test_texts) != list(b.test_texts)
    assert a.fingerprint() != b.fingerprint()


def test_builtin_sizes_and_validation_split():
    ds = builtin(train_size=300, test_size=50, validation_fraction=0.2)
    assert len(ds.train_texts) + len(ds.val_texts) == 300
    assert len(ds.val_texts) == 60
    assert len(ds.test_texts) == len(ds.test_labels) == 50
    assert len(ds.train_texts) == len(ds.train_labels)
    assert len(ds.val_texts) == len(ds.val_labels)


def test_builtin_validation_is_disjoint_from_train():
    # train + validation are exactly the generated training stories, split without overlap
    ds = builtin(train_size=500, validation_fraction=0.1)
    t, d, y = generate_builtin(500, seed=1)  # the train stream of seed 0
    assert len(ds.train_texts) == 450 and len(ds.val_texts) == 50
    assert set(ds.train_texts).isdisjoint(ds.val_texts)
    pairs = sorted(zip([*ds.train_texts, *ds.val_texts], [*ds.train_labels, *ds.val_labels]))
    assert pairs == sorted(zip([f"{a} {b}" for a, b in zip(t, d)], y))


def test_builtin_classes_all_present():
    ds = builtin()
    assert ds.class_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert ds.class_names == list(AG_NEWS_CLASSES)
    assert ds.num_classes == 4
    for labels in (ds.train_labels, ds.val_labels, ds.test_labels):
        assert labels.dtype == np.int32
        assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_builtin_texts_look_like_title_and_description():
    titles, descriptions, labels = generate_builtin(50, seed=5)
    assert len(titles) == len(descriptions) == len(labels) == 50
    for t, d in zip(titles, descriptions):
        assert t and t[0].isupper() and not t.endswith(".")
        assert d.endswith(".")
        assert len(d.split()) > len(t.split())
    ds = builtin(train_size=50, seed=2)
    t, d, _ = generate_builtin(50, seed=2 * 2 + 1)
    joined = {f"{a} {b}" for a, b in zip(t, d)}
    for text in ds.train_texts:
        assert isinstance(text, str)
        assert text in joined
        assert text.endswith(".")


def test_builtin_train_independent_of_test_size():
    a, b = builtin(test_size=40), builtin(test_size=90)
    assert list(a.train_texts) == list(b.train_texts)
    assert len(a.test_texts) == 40 and len(b.test_texts) == 90


# --- csv ------------------------------------------------------------------------------------


def test_csv_text_columns_joined(tmp_path):
    rows = [[f"Title {i}", f"description {i}.", "a" if i % 2 else "b"] for i in range(10)]
    p = write_csv(tmp_path / "t.csv", ["title", "description", "label"], rows)
    ds = load_data(csv_cfg(p, text=("title", "description"), test_fraction=0.2))
    everything = set(ds.train_texts) | set(ds.val_texts) | set(ds.test_texts)
    assert everything == {f"Title {i} description {i}." for i in range(10)}


def test_csv_string_labels_sorted_when_no_label_names(tmp_path):
    rows = [[f"t{i}", ["zebra", "apple", "mango"][i % 3]] for i in range(30)]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    ds = load_data(csv_cfg(p))
    assert ds.class_names == ["apple", "mango", "zebra"]
    _check_consistent(ds, {f"t{i}": ["zebra", "apple", "mango"][i % 3] for i in range(30)})


def test_csv_label_names_fix_the_order(tmp_path):
    rows = [[f"t{i}", ["zebra", "apple", "mango"][i % 3]] for i in range(30)]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    ds = load_data(csv_cfg(p, label_names=("zebra", "mango", "apple")))
    assert ds.class_names == ["zebra", "mango", "apple"]
    _check_consistent(ds, {f"t{i}": ["zebra", "apple", "mango"][i % 3] for i in range(30)})


def test_csv_integer_labels(tmp_path):
    rows = [[f"t{i}", i % 3] for i in range(30)]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    ds = load_data(csv_cfg(p))
    assert ds.class_names == ["0", "1", "2"]
    _check_consistent(ds, {f"t{i}": str(i % 3) for i in range(30)})
    # integer ids index the declared names
    named = load_data(csv_cfg(p, label_names=("neg", "neutral", "pos")))
    assert named.class_names == ["neg", "neutral", "pos"]
    _check_consistent(named, {f"t{i}": ["neg", "neutral", "pos"][i % 3] for i in range(30)})


def _check_consistent(ds: TextDataset, truth: dict) -> None:
    for split in ("train", "val", "test"):
        for text, label in zip(getattr(ds, f"{split}_texts"), getattr(ds, f"{split}_labels")):
            assert ds.class_names[label] == truth[text]


def test_csv_labels_outside_label_names(tmp_path):
    p = write_csv(tmp_path / "t.csv", ["text", "label"], two_class_rows() + [["x", "other"]])
    with pytest.raises(DataError) as info:
        load_data(csv_cfg(p, label_names=("neg", "pos")))
    # the stray label with its line (the header is line 1, 20 rows before it)
    assert str(info.value) == (
        f"{p}: labels outside data.label_names ['neg', 'pos']: other (line 22)"
    )
    # past five, the first five in sorted order, each with the line it is first on, and ", ..."
    strays = [[f"x{i}", f"other{i}"] for i in range(7)]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], two_class_rows() + strays)
    with pytest.raises(DataError) as info:
        load_data(csv_cfg(p, label_names=("neg", "pos")))
    assert str(info.value) == (
        f"{p}: labels outside data.label_names ['neg', 'pos']: "
        "other0 (line 22), other1 (line 23), other2 (line 24), other3 (line 25), "
        "other4 (line 26), ..."
    )


def test_csv_missing_column_named(tmp_path):
    p = write_csv(tmp_path / "t.csv", ["body", "label"], two_class_rows())
    with pytest.raises(DataError) as info:
        load_data(csv_cfg(p))
    assert "'text'" in str(info.value)
    assert str(p) in str(info.value)
    with pytest.raises(DataError, match="'category'"):
        load_data(csv_cfg(p, text=("body",), label="category"))


def test_a_headerless_csv_read_without_columns_is_told_of_data_columns(tmp_path):
    """AG News as distributed (no header row) read as if line 1 were the header: the
    error names line 1 and its field count and points at data.columns."""
    p = tmp_path / "train.csv"
    p.write_text('"3","Wall St. Bears","Short-sellers are back"\n"4","Chip news","New chips"\n')
    with pytest.raises(DataError) as info:
        load_data(csv_cfg(p, text=("title", "description"), label="label"))
    message = str(info.value)
    assert message.startswith(f"{p}: line 1: the header has no column 'title' (it has 3: 3, ")
    assert "data.columns (a name for each of the 3 fields) if line 1 is not a header" in message
    assert "\n" not in message


def test_csv_empty_file(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("")
    with pytest.raises(DataError, match="empty") as info:
        load_data(csv_cfg(p))
    assert str(p) in str(info.value)


def test_csv_header_only(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\n")
    with pytest.raises(DataError, match="no data rows") as info:
        load_data(csv_cfg(p))
    assert str(p) in str(info.value)


def test_csv_single_class(tmp_path):
    p = write_csv(tmp_path / "t.csv", ["text", "label"], [[f"t{i}", "only"] for i in range(10)])
    with pytest.raises(DataError, match="single class") as info:
        load_data(csv_cfg(p))
    assert str(p) in str(info.value)


def test_csv_undecodable_bytes(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(b"text,label\nfine,a\n\xff\xfe bad \xc3\x28,b\n")
    with pytest.raises(DataError, match="UTF-8") as info:
        load_data(csv_cfg(p))
    assert str(p) in str(info.value)
    assert "line 3" in str(info.value)


def test_csv_utf8_bom_accepted(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(
        "text,label\nähm,a\nnoch,b\nmehr,a\nweiter,b\nund,a\ndann,b\n".encode("utf-8-sig")
    )
    ds = load_data(csv_cfg(p))
    assert ds.class_names == ["a", "b"]


def test_csv_rows_with_empty_text_dropped(tmp_path, caplog):
    rows = two_class_rows(20) + [["", "pos"], ["   ", "neg"], ["", "neg"]]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    with caplog.at_level(logging.WARNING, logger="ktune"):
        ds = load_data(csv_cfg(p))
    assert len(ds.train_texts) + len(ds.val_texts) + len(ds.test_texts) == 20
    assert all(t.strip() for t in ds.train_texts)
    assert "dropped 3 row(s) with empty text (line 22, 23, 24)" in caplog.text  # header: line 1


def test_csv_all_empty_texts_refused(tmp_path):
    p = write_csv(tmp_path / "t.csv", ["text", "label"], [["", "a"], [" ", "b"]])
    with pytest.raises(DataError, match="empty text") as info:
        load_data(csv_cfg(p))
    assert str(p) in str(info.value)


def test_csv_empty_label_refused(tmp_path):
    p = write_csv(tmp_path / "t.csv", ["text", "label"], two_class_rows() + [["x", ""]])
    with pytest.raises(DataError, match="empty label") as info:
        load_data(csv_cfg(p))
    assert "line 22" in str(info.value)


def test_csv_quoted_fields_with_newlines(tmp_path):
    text = "first line {}\nsecond line\x0cform feed\u2028sep"
    rows = [[text.format(i), "a" if i % 2 else "b"] for i in range(10)]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], rows + [["", "a"]])
    ds = load_data(csv_cfg(p))
    everything = sorted([*ds.train_texts, *ds.val_texts, *ds.test_texts])
    assert everything == sorted(r[0] for r in rows)


def test_csv_a_text_longer_than_pythons_csv_field_limit_reads(tmp_path):
    """Python's csv refuses a field over 131,072 characters unless told otherwise (the
    message blamed the quotes); the models truncate long texts at maxlen anyway."""
    before = csv.field_size_limit(131072)  # csv's default, whatever ran before
    try:
        rows = [[f"title {i}", f"body {i}", "pos" if i % 2 else "neg"] for i in range(20)]
        rows[8][1] = "ab" * 100_000  # 200,000 characters
        cfg = {"text": ("title", "description")}
        p = write_csv(tmp_path / "t.csv", ["title", "description", "label"], rows)
        headerless = write_headerless(tmp_path / "h.csv", rows)
        for ds in (
            load_data(csv_cfg(p, **cfg)),
            load_data(csv_cfg(headerless, columns=("title", "description", "label"), **cfg)),
        ):
            everything = [*ds.train_texts, *ds.val_texts, *ds.test_texts]
            assert len(everything) == 20
            assert sorted(map(len, everything))[-1] == len("title 8 ") + 200_000
        # a quote never closed swallows the rest of the file: still refused, at its record
        p.write_text('text,label\nGood,pos\n"never closed,pos\n' + "more,neg\n" * 20_000)
        with pytest.raises(DataError) as info:
            load_data(csv_cfg(p))
        assert str(info.value) == (
            f"{p}: line 3: a quoted field runs to the end of the file (check the quotes)"
        )
    finally:
        csv.field_size_limit(before)


@pytest.mark.parametrize("header", [True, False], ids=["header", "headerless"])
def test_csv_lines_name_where_a_multi_line_record_starts(tmp_path, header):
    """With a header row or data.columns, a message names the line where its record starts
    (where the user opens the file), also after and for records over several lines."""
    top, extra = ("text,label\n", {}) if header else ("", {"columns": ("text", "label")})
    first = 5 if header else 4  # the bad record's first line
    good = '"two\nlines",pos\nplain,neg\n'
    for bad, error in [
        ('"three\nline\nrecord",pos,extra\n', f"line {first}: 3 fields, "),
        ('"empty\nlabel",\n', f"line {first}: empty label in column 'label'"),
        (
            '"closed\ntoo" early,pos\n',
            f"line {first}: ',' expected after '\"' at line {first + 1} (check the quotes)",
        ),
    ]:
        p = tmp_path / "t.csv"
        p.write_text(top + good + bad + "more,neg\n", encoding="utf-8")
        with pytest.raises(DataError) as info:
            load_data(csv_cfg(p, **extra))
        assert f"{p}: {error}" in str(info.value)


def test_csv_test_file_given(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], two_class_rows(20))
    test = write_csv(
        tmp_path / "test.csv",
        ["text", "label"],
        [["held out one", "pos"], ["held out two", "neg"]],
    )
    ds = load_data(csv_cfg(train, test=str(test), validation_fraction=0.25))
    assert list(ds.test_texts) == ["held out one", "held out two"]
    # one label encoding across both files
    assert ds.class_names == ["neg", "pos"]
    assert [ds.class_names[i] for i in ds.test_labels] == ["pos", "neg"]
    assert len(ds.train_texts) == 15 and len(ds.val_texts) == 5
    # a test label the training file never has (spelled otherwise) cannot be learned
    write_csv(test, ["text", "label"], [["held out one", "pos"], ["held out two", "Neg"]])
    with pytest.raises(DataError, match=r"test.csv: label\(s\) 'Neg' never occur in .*train.csv"):
        load_data(csv_cfg(train, test=str(test)))


def test_csv_test_split_from_train(tmp_path):
    p = write_csv(tmp_path / "t.csv", ["text", "label"], two_class_rows(40))
    ds = load_data(csv_cfg(p, test_fraction=0.25, validation_fraction=0.1))
    assert len(ds.test_texts) == 10
    assert len(ds.val_texts) == 3
    assert len(ds.train_texts) == 27
    train, val, test = set(ds.train_texts), set(ds.val_texts), set(ds.test_texts)
    assert train.isdisjoint(test) and val.isdisjoint(test) and train.isdisjoint(val)
    assert len(train | val | test) == 40
    again = load_data(csv_cfg(p, test_fraction=0.25, validation_fraction=0.1))
    assert list(again.test_texts) == list(ds.test_texts)
    other_seed = load_data(csv_cfg(p, test_fraction=0.25, validation_fraction=0.1, seed=9))
    assert list(other_seed.test_texts) != list(ds.test_texts)


# --- csv without a header row (AG News as distributed): data.columns ----------------------

AG_COLUMNS = ("label", "title", "description")


def write_headerless(path: Path, rows: list[list]) -> Path:
    """Every field quoted, no header row: the layout of AG News' train.csv / test.csv."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
    return path


def ag_cfg(train: Path, **kw) -> DataConfig:
    kw.setdefault("columns", AG_COLUMNS)
    kw.setdefault("text", ("title", "description"))
    return csv_cfg(train, **kw)


def ag_rows(n: int = 40) -> list[list]:
    # class index 1..4, a title, a description with AG News' backslash line breaks
    return [
        [str(i % 4 + 1), f"Title {i}", f"first part {i}\\second part \\\\third part"]
        for i in range(n)
    ]


def test_headerless_csv_columns_name_the_fields(tmp_path):
    p = write_headerless(tmp_path / "train.csv", ag_rows())
    ds = load_data(ag_cfg(p, unescape_backslash=True, label_names=AG_NEWS_CLASSES))
    assert ds.class_names == list(AG_NEWS_CLASSES)
    # 1..4 -> World, Sports, Business, Sci/Tech (sorted numeric order onto label_names)
    truth = {
        f"Title {i} first part {i} second part third part": AG_NEWS_CLASSES[i % 4]
        for i in range(40)
    }
    _check_consistent(ds, truth)
    everything = [*ds.train_texts, *ds.val_texts, *ds.test_texts]
    assert sorted(everything) == sorted(truth)
    assert not any("\\" in t for t in everything)


def test_headerless_csv_keeps_backslashes_unless_asked(tmp_path):
    p = write_headerless(tmp_path / "train.csv", ag_rows(12))
    ds = load_data(ag_cfg(p))
    everything = {*ds.train_texts, *ds.val_texts, *ds.test_texts}
    assert "Title 0 first part 0\\second part \\\\third part" in everything
    # without label_names the classes are the label strings
    assert ds.class_names == ["1", "2", "3", "4"]


def test_headerless_csv_quoted_newlines_and_blank_lines(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text(
        '"1","a title","two\nlines"\n\n"2","b title","plain"\n"1","c","d"\n"2","e","f"\n',
        encoding="utf-8",
    )
    ds = load_data(ag_cfg(p, test_fraction=0.25, validation_fraction=0.34))
    everything = sorted([*ds.train_texts, *ds.val_texts, *ds.test_texts])
    assert everything == ["a title two\nlines", "b title plain", "c d", "e f"]


def test_headerless_csv_wrong_field_count_names_file_and_line(tmp_path):
    p = tmp_path / "train.csv"
    # line 1-2: one record over two lines; line 3 fine; line 4 has two fields
    p.write_text('"1","t","a\nb"\n"2","t","c"\n"3","only a title"\n"4","t","d"\n')
    with pytest.raises(DataError) as info:
        load_data(ag_cfg(p))
    msg = str(info.value)
    assert str(p) in msg and "line 4" in msg
    assert "2 fields, data.columns names 3" in msg
    p.write_text('"1","t","a","extra"\n')
    with pytest.raises(DataError, match="line 1: 4 fields, data.columns names 3"):
        load_data(ag_cfg(p))


def test_a_bad_data_file_is_one_line_before_ray_or_tensorflow_start(tmp_path):
    """`ktune run` reads the user's files before it starts Ray (and TensorFlow): the
    error is the only line on stderr, exit 2, and nothing is written."""
    import yaml

    from conftest import ktune_cli

    rows = ag_rows(40)
    rows[6] = rows[6][:2]  # a row with a field missing
    train = write_headerless(tmp_path / "train.csv", rows)
    exp = {
        "name": "bad",
        "data": {
            "source": "csv",
            "train": str(train),
            "columns": list(AG_COLUMNS),
            "text": ["title", "description"],
        },
        "storage": str(tmp_path / "results"),
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(exp))
    done = ktune_cli("run", str(tmp_path / "bad.yaml"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"ktune: error: {train}: line 7: 2 fields, data.columns names 3 (label, title, description)"
    ], done.stderr
    assert not (tmp_path / "results").exists()


def test_headerless_csv_refuses_a_header_row(tmp_path):
    p = write_headerless(tmp_path / "train.csv", [list(AG_COLUMNS), *ag_rows(8)])
    with pytest.raises(DataError, match="header row") as info:
        load_data(ag_cfg(p))
    assert str(p) in str(info.value)


def test_headerless_csv_test_file_shares_the_columns(tmp_path):
    train = write_headerless(tmp_path / "train.csv", ag_rows(20))
    test = write_headerless(tmp_path / "test.csv", [["3", "held", "out"], ["1", "also", "out"]])
    ds = load_data(ag_cfg(train, test=str(test), label_names=AG_NEWS_CLASSES))
    assert list(ds.test_texts) == ["held out", "also out"]
    assert [ds.class_names[i] for i in ds.test_labels] == ["Business", "World"]


def test_integer_labels_sort_numerically(tmp_path):
    rows = [[["1", "2", "9", "10"][i % 4], f"t{i}", "x"] for i in range(40)]
    p = write_headerless(tmp_path / "train.csv", rows)
    ds = load_data(ag_cfg(p))
    assert ds.class_names == ["1", "2", "9", "10"]
    named = load_data(ag_cfg(p, label_names=("a", "b", "c", "d")))
    truth = {f"t{i} x": "abcd"[i % 4] for i in range(40)}
    _check_consistent(named, truth)


def test_integer_labels_count_must_match_label_names(tmp_path):
    p = write_headerless(tmp_path / "train.csv", ag_rows(20))
    with pytest.raises(DataError, match="data.label_names") as info:
        load_data(ag_cfg(p, label_names=("World", "Sports", "Business")))
    msg = str(info.value)
    assert str(p) in msg and "4 distinct integers" in msg and "names 3" in msg
    # a stray value in one row among AG News' 1..4: the counts show which one it is
    rows = ag_rows(20)
    rows[7][0] = "5"
    p = write_headerless(tmp_path / "train.csv", rows)
    with pytest.raises(DataError) as info:
        load_data(ag_cfg(p, label_names=AG_NEWS_CLASSES))
    assert str(info.value).startswith(
        f"{p}: the labels are 5 distinct integers (1 in 5 row(s), 2 in 5 row(s), 3 in 5 "
        "row(s), 4 in 4 row(s), 5 in 1 row(s) (line 8)) but data.label_names names 4 classes"
    )
    # a stray in the test file is named by that file's line; a value in a few rows by each
    rows = ag_rows(20)
    rows[2][0] = rows[5][0] = "0"
    test = write_headerless(tmp_path / "test.csv", rows)
    train = write_headerless(tmp_path / "train.csv", ag_rows(20))
    with pytest.raises(DataError) as info:
        load_data(ag_cfg(train, test=str(test), label_names=AG_NEWS_CLASSES))
    assert f"0 in 2 row(s) ({test} line 3, {test} line 6), 1 in 10 row(s), " in str(info.value)


def test_zero_based_ids_may_leave_a_class_out(tmp_path):
    # ids below len(label_names) index the names, as before, even with a class absent
    rows = [[f"t{i}", [0, 2][i % 2]] for i in range(20)]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    ds = load_data(csv_cfg(p, label_names=("neg", "neutral", "pos")))
    assert ds.class_names == ["neg", "neutral", "pos"]
    _check_consistent(ds, {f"t{i}": ["neg", "pos"][i % 2] for i in range(20)})


def test_jsonl_unescape_backslash(tmp_path):
    rows = [{"text": f"line one\\line two {i}", "label": i % 2} for i in range(10)]
    p = write_jsonl(tmp_path / "t.jsonl", rows)
    ds = load_data(DataConfig(source="jsonl", train=str(p), unescape_backslash=True))
    everything = sorted([*ds.train_texts, *ds.val_texts, *ds.test_texts])
    assert everything == sorted(f"line one line two {i}" for i in range(10))


def _data_config_error(tmp_path: Path, **data) -> str:
    from ktune.config import parse_config
    from ktune.errors import ConfigError

    (tmp_path / "train.csv").write_text('"1","t","d"\n"2","t","d"\n')
    data = {"source": "csv", **data}
    if data["source"] in ("csv", "jsonl"):
        data.setdefault("train", "train.csv")
    with pytest.raises(ConfigError) as info:
        parse_config({"name": "x", "data": data}, base_dir=tmp_path)
    return str(info.value)


def test_columns_config_errors_name_the_key(tmp_path):
    cols = list(AG_COLUMNS)
    msg = _data_config_error(tmp_path, columns=cols, text=["title", "body"])
    assert msg.startswith("data.text:") and "'body'" in msg and "data.columns" in msg
    msg = _data_config_error(tmp_path, columns=cols, text=["title"], label="class")
    assert msg.startswith("data.label:") and "'class'" in msg
    # the default text column 'text' is not among the names either
    assert _data_config_error(tmp_path, columns=cols).startswith("data.text:")
    assert _data_config_error(tmp_path, columns=["label", "label"]).startswith("data.columns:")
    assert _data_config_error(tmp_path, columns=["label", ""]).startswith("data.columns:")
    assert _data_config_error(tmp_path, columns=[]).startswith("data.columns:")
    msg = _data_config_error(tmp_path, source="jsonl", columns=cols, text=["title"])
    assert msg.startswith("data.columns:") and "jsonl" in msg
    assert _data_config_error(tmp_path, unescape_backslash="yes").startswith(
        "data.unescape_backslash:"
    )
    for source in ("builtin", "tfds"):
        for key, value in (("columns", cols), ("unescape_backslash", True)):
            msg = _data_config_error(tmp_path, source=source, **{key: value})
            assert msg.startswith(f"data.{key}:") and source in msg


def test_columns_config_parses(tmp_path):
    from ktune.config import parse_config

    (tmp_path / "train.csv").write_text('"1","t","d"\n')
    cfg = parse_config(
        {
            "name": "x",
            "data": {
                "source": "csv",
                "train": "train.csv",
                "columns": list(AG_COLUMNS),
                "text": ["title", "description"],
                "label": "label",
                "unescape_backslash": True,
            },
        },
        base_dir=tmp_path,
    )
    assert cfg.data.columns == AG_COLUMNS and cfg.data.unescape_backslash is True
    assert parse_config({"name": "x"}).data.unescape_backslash is False


# --- stratified splits ------------------------------------------------------------------------


def test_test_and_validation_splits_are_stratified(tmp_path):
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    rows = [[f"t{i}", y] for i, y in enumerate(labels)]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    ds = load_data(csv_cfg(p, test_fraction=0.2, validation_fraction=0.25))
    assert np.bincount(ds.test_labels).tolist() == [12, 6, 2]
    assert np.bincount(ds.val_labels).tolist() == [12, 6, 2]
    assert np.bincount(ds.train_labels).tolist() == [36, 18, 6]
    again = load_data(csv_cfg(p, test_fraction=0.2, validation_fraction=0.25))
    assert list(again.test_texts) == list(ds.test_texts)
    assert list(again.val_texts) == list(ds.val_texts)
    other = load_data(csv_cfg(p, test_fraction=0.2, validation_fraction=0.25, seed=4))
    assert list(other.test_texts) != list(ds.test_texts)
    assert np.bincount(other.test_labels).tolist() == [12, 6, 2]


def test_stratified_split_rounds_to_the_requested_size(tmp_path):
    # 7 / 5 / 3 items, 30% held out: round(4.5) = 4 in all, each class its share or one more
    labels = ["a"] * 7 + ["b"] * 5 + ["c"] * 3
    rows = [[f"t{i}", y] for i, y in enumerate(labels)]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    for seed in range(5):
        ds = load_data(csv_cfg(p, test_fraction=0.3, validation_fraction=0.1, seed=seed))
        counts = np.bincount(ds.test_labels, minlength=3)
        assert counts.sum() == round(15 * 0.3)
        assert all(int(s) <= c <= int(s) + 1 for c, s in zip(counts, [2.1, 1.5, 0.9]))
        assert len(ds.train_texts) + len(ds.val_texts) + len(ds.test_texts) == 15


# --- the real AG News sample (../shared/data beside the checkout) -----------------------------

AG_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ag_news_sample.csv"


@pytest.mark.skipif(
    not AG_SAMPLE.is_file(), reason=f"{AG_SAMPLE} is missing (the shared AG News sample)"
)
def test_real_ag_news_sample_through_the_example_file():
    from ktune.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "agnews_sample.yaml")
    assert Path(cfg.data.train) == AG_SAMPLE.resolve()
    ds = load_data(cfg.data)
    assert ds.class_names == ["World", "Sports", "Business", "Sci/Tech"]
    labels = np.concatenate([ds.train_labels, ds.val_labels, ds.test_labels])
    assert len(labels) == 3800
    # the file's class counts (its README says 950 each; the file holds these)
    assert np.bincount(labels).tolist() == [949, 949, 947, 955]
    assert len(ds.test_labels) == 760  # 20%, stratified
    assert np.bincount(ds.test_labels).tolist() == [190, 190, 189, 191]
    texts = [*ds.train_texts, *ds.val_texts, *ds.test_texts]
    assert not any("\\" in t for t in texts)
    # the file's first row (class 3, Business) keeps its label through the split
    first = [i for i, t in enumerate(texts) if t.startswith("Fears for T N pension after talks")]
    assert len(first) == 1
    assert texts[first[0]].startswith("Fears for T N pension after talks Unions representing")
    assert ds.class_names[labels[first[0]]] == "Business"


# --- jsonl ----------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict], **dump_kw) -> Path:
    path.write_text("".join(json.dumps(r, **dump_kw) + "\n" for r in rows), encoding="utf-8")
    return path


def jsonl_cfg(train: Path, **kw) -> DataConfig:
    return DataConfig(source="jsonl", train=str(train), **kw)


def test_jsonl_basics(tmp_path):
    rows = [
        {"title": f"Title {i}", "description": f"body {i}", "label": ["b", "a"][i % 2]}
        for i in range(20)
    ]
    p = write_jsonl(tmp_path / "t.jsonl", rows)
    ds = load_data(jsonl_cfg(p, text=("title", "description")))
    assert ds.class_names == ["a", "b"]
    truth = {f"Title {i} body {i}": ["b", "a"][i % 2] for i in range(20)}
    _check_consistent(ds, truth)
    assert len(ds.train_texts) + len(ds.val_texts) + len(ds.test_texts) == 20


def test_jsonl_integer_labels_and_blank_lines(tmp_path):
    p = tmp_path / "t.jsonl"
    lines = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(10)]
    p.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    ds = load_data(jsonl_cfg(p, label_names=("neg", "pos")))
    assert ds.class_names == ["neg", "pos"]
    _check_consistent(ds, {f"t{i}": ["neg", "pos"][i % 2] for i in range(10)})


def test_jsonl_invalid_line_named(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c",\n')
    with pytest.raises(DataError, match="invalid JSON") as info:
        load_data(jsonl_cfg(p))
    assert str(p) in str(info.value)
    assert "line 3" in str(info.value)


def test_jsonl_a_key_written_twice_is_refused(tmp_path):
    # json.loads keeps the last value without a word; a csv header or a YAML key written
    # twice is refused, and so is this.
    p = tmp_path / "t.jsonl"
    p.write_text(
        '{"title": "a", "description": "x", "label": 0}\n\n'
        '{"title": "a", "description": "x", "description": "OVERRIDDEN", "label": 1}\n'
    )
    with pytest.raises(DataError) as info:
        load_data(jsonl_cfg(p, text=("title", "description")))
    assert str(info.value) == f'{p}: line 3: the key "description" appears twice'
    # inside a value ktune does not read, a key written twice changes nothing: accepted
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    p.write_text("".join(json.dumps(r)[:-1] + ', "meta": {"k": 1, "k": 2}}\n' for r in rows))
    assert load_data(jsonl_cfg(p)).class_names == ["0", "1"]


def test_jsonl_line_not_an_object(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n["b", "y"]\n')
    with pytest.raises(DataError, match="line 2"):
        load_data(jsonl_cfg(p))


def test_jsonl_missing_column_named(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "lbl": "y"}])
    with pytest.raises(DataError) as info:
        load_data(jsonl_cfg(p))
    assert "'label'" in str(info.value) and "line 2" in str(info.value)


def test_jsonl_unicode_line_separators_inside_strings(tmp_path):
    # Valid JSON may hold U+2028 / U+0085 unescaped (ensure_ascii=False); lines end at \n only.
    rows = [{"text": f"eins\u2028zwei\x85drei {i}", "label": i % 2} for i in range(10)]
    p = write_jsonl(tmp_path / "t.jsonl", rows, ensure_ascii=False)
    ds = load_data(jsonl_cfg(p))
    everything = [*ds.train_texts, *ds.val_texts, *ds.test_texts]
    assert sorted(everything) == sorted(r["text"] for r in rows)


def test_jsonl_crlf_line_endings(tmp_path):
    p = tmp_path / "t.jsonl"
    lines = (json.dumps({"text": f"t{i}", "label": i % 2}) + "\r\n" for i in range(10))
    p.write_bytes("".join(lines).encode())
    ds = load_data(jsonl_cfg(p))
    assert ds.class_names == ["0", "1"]
    everything = [*ds.train_texts, *ds.val_texts, *ds.test_texts]
    assert sorted(everything) == sorted(f"t{i}" for i in range(10))


def test_jsonl_empty_and_single_class(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("\n  \n")
    with pytest.raises(DataError, match="empty"):
        load_data(jsonl_cfg(p))
    write_jsonl(p, [{"text": f"t{i}", "label": "same"} for i in range(5)])
    with pytest.raises(DataError, match="single class"):
        load_data(jsonl_cfg(p))


# --- fingerprint ----------------------------------------------------------------------------


def test_fingerprint_changes_with_one_label():
    ds = builtin(train_size=100)
    before = ds.fingerprint()
    assert before == builtin(train_size=100).fingerprint()
    labels = ds.train_labels.copy()
    labels[7] = (labels[7] + 1) % 4
    changed = replace(ds, train_labels=labels)
    assert changed.fingerprint() != before
    test_labels = ds.test_labels.copy()
    test_labels[0] = (test_labels[0] + 1) % 4
    assert replace(ds, test_labels=test_labels).fingerprint() != before
    texts = ds.val_texts.copy()
    texts[0] = texts[0] + " x"
    assert replace(ds, val_texts=texts).fingerprint() != before


# --- tfds: the real loader over TFDS's mock data --------------------------------------------


def test_tfds_ag_news_subset_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = load_data(DataConfig(source="tfds", name="ag_news_subset", validation_fraction=0.25))
    assert ds.class_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert len(ds.train_texts) == 9 and len(ds.val_texts) == 3
    assert len(ds.test_texts) == 12
    for texts, labels in (
        (ds.train_texts, ds.train_labels),
        (ds.val_texts, ds.val_labels),
        (ds.test_texts, ds.test_labels),
    ):
        assert len(texts) == len(labels)
        assert all(isinstance(t, str) and t.strip() for t in texts)
        assert labels.dtype == np.int32
        assert ((labels >= 0) & (labels < 4)).all()


def test_tfds_unknown_dataset_is_one_line_data_error():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(DataError, match="data.name") as info:
            load_data(DataConfig(source="tfds", name="no_such_dataset_xyz"))
    assert "\n" not in str(info.value)


def test_tfds_real_load_without_network_fails_at_the_download(tmp_path, monkeypatch):
    """The real ``tfds.load('ag_news_subset')``, no mock: in this fresh install it gets as
    far as the download (no import is missing), and offline that is one DataError naming
    ``data.name``. On a machine with network it downloads the real data instead."""
    from tensorflow_datasets.core.download import downloader

    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)  # one try, not minutes of retries
    try:
        ds = load_data(
            DataConfig(source="tfds", data_dir=str(tmp_path), train_size=100, test_size=20)
        )
    except DataError as e:
        message = str(e)
        assert message.startswith("data.name: cannot load TFDS dataset 'ag_news_subset'")
        assert "No module named" not in message and "ImportError" not in message
        assert any(w in message for w in ("Connection", "Resolution", "Max retries", "network"))
        assert len(message.splitlines()) == 1
    else:
        assert ds.class_names == ["World", "Sports", "Business", "Sci/Tech"]


# --- files that would otherwise be read wrong without a word ------------------------------

_TWO = "".join(f"{'pos' if i % 2 else 'neg'} {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))
_AG = "".join(f'"{1 + i % 4}","title {i}","text {i}"\n' for i in range(40))


@pytest.mark.parametrize(
    "name, content, extra, error",
    [
        (  # an unquoted comma: a field too many would shift the label (a class "world")
            "comma.csv",
            "text,label\n" + _TWO + "Hello, world,pos\n",
            {},
            r"comma.csv: line 22: 3 fields, the header has 2 \(text, label\); quote a text holding",
        ),
        (  # a field too few: the label would be None
            "short.csv",
            "label,title,description\n1,A,a\n2,B title\n",
            {"text": ("title", "description")},
            r"short.csv: line 3: 2 fields, the header has 3",
        ),
        (  # an unclosed quote would merge the rows after it into one text
            "quote.csv",
            'text,label\nGood,pos\n"Opening quote never closed,pos\nBad movie,neg\n"x" y,neg\n',
            {},
            r"quote.csv: line \d+: .* \(check the quotes\)",
        ),
        (
            "dup.csv",
            "text,text,label\na,b,pos\n",
            {},
            r"dup.csv: line 1: the header names text twice",
        ),
        (  # Kaggle's AG News header is not data.columns' names: a class "Class Index"
            "kaggle.csv",
            '"Class Index","Title","Description"\n' + _AG,
            {"columns": ("label", "title", "description"), "text": ("title", "description")},
            r"kaggle.csv: line 1 looks like a header row \(label 'Class Index', every other",
        ),
        (  # the header in other letter case
            "case.csv",
            "Label,Title,Description\n" + _AG,
            {"columns": ("label", "title", "description"), "text": ("title", "description")},
            r"case.csv: line 1 is a header row",
        ),
        ("nan.jsonl", '{"text": "a", "label": NaN}\n', {}, r"nan.jsonl: line 1: empty label"),
        (
            "list.jsonl",
            '{"text": ["a", "list"], "label": 1}\n',
            {},
            r"list.jsonl: line 1: column 'text': a text must be a string, got list",
        ),
        (  # class y's only example lands in the validation split (a tie the seed breaks)
            "rare.csv",
            "text,label\na,x\nb,x\nc,y\n",
            {"test_fraction": 0.2, "seed": 86},
            r"rare.csv: class\(es\) y have no training example left after the test and",
        ),
    ],
)
def test_a_file_read_wrong_is_one_error_naming_it(tmp_path, name, content, extra, error):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=error):
        load_data(DataConfig(source=p.suffix[1:], train=str(p), **extra))


def test_json_integral_floats_are_the_integer_classes(tmp_path):
    p = tmp_path / "f.jsonl"
    rows = [{"text": f"t {i}", "label": [1, 1.0, 2, 2.0][i % 4]} for i in range(40)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ds = load_data(DataConfig(source="jsonl", train=str(p)))
    assert ds.class_names == ["1", "2"]


def test_a_headerless_first_row_with_a_spaced_integer_label_is_data(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('"3 ","a","b"\n' + "".join(f'"{3 + i % 2}","t{i}","d{i}"\n' for i in range(20)))
    cfg = DataConfig(source="csv", train=str(p), columns=("label", "title", "description"))
    ds = load_data(replace(cfg, text=("title", "description")))
    assert ds.class_names == ["3", "4"]
    assert len(ds.train_texts) + len(ds.val_texts) + len(ds.test_texts) == 21


def test_labels_that_only_look_numeric_are_names(tmp_path):
    rows = [[f"t{i}", ["1", "2", "²", "--1"][i % 4]] for i in range(40)]
    ds = load_data(csv_cfg(write_csv(tmp_path / "t.csv", ["text", "label"], rows)))
    assert ds.class_names == ["--1", "1", "2", "²"]  # was: ValueError from int("²")


def test_integer_labels_that_may_count_from_one_or_zero_are_refused(tmp_path):
    # 1..3 beside four names: World missing (counted from 1) or Sci/Tech missing (0-based)?
    rows = [[f"t{i}", str(1 + i % 3)] for i in range(30)]
    p = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    with pytest.raises(DataError) as info:
        load_data(csv_cfg(p, label_names=AG_NEWS_CLASSES))
    assert str(info.value) == (
        f"{p}: labels 1, 2, 3 fit data.label_names (4 names) both as 0-based ids (1 = "
        "'Sports') and counted from 1 (1 = 'World'), with 1 class(es) absent: give "
        "data.label_names as a mapping of label to name, e.g. {1: World, 2: Sports, ...}"
    )


def _parsed_data(tmp_path: Path, **data) -> DataConfig:
    from ktune.config import parse_config

    return parse_config({"name": "x", "data": data}, base_dir=tmp_path).data


def test_label_names_as_a_mapping_say_which_value_is_which_class(tmp_path, caplog):
    # AG News as distributed (1..4), with no Sci/Tech text in this file
    rows = [r for r in ag_rows(60) if r[0] != "4"]
    rows[0][0] = "01"  # the same integer written otherwise
    write_headerless(tmp_path / "train.csv", rows)
    mapping = {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"}
    cfg = _parsed_data(
        tmp_path,
        source="csv",
        train="train.csv",
        columns=list(AG_COLUMNS),
        text=["title", "description"],
        label_names=mapping,
    )
    assert cfg.label_names == tuple(AG_NEWS_CLASSES) and cfg.label_values == ("1", "2", "3", "4")
    with caplog.at_level(logging.WARNING, logger="ktune"):
        ds = load_data(cfg)
    assert ds.class_names == list(AG_NEWS_CLASSES)
    truth = {f"{title} {body}": mapping[int(label)] for label, title, body in rows}
    _check_consistent(ds, truth)
    assert "no example of class(es) Sci/Tech of data.label_names" in caplog.text

    # string labels renamed, in the mapping's order; a label it lacks is one error
    write_csv(tmp_path / "s.csv", ["text", "label"], two_class_rows())
    renamed = {"pos": "Positive", "neg": "Negative"}
    ds = load_data(_parsed_data(tmp_path, source="csv", train="s.csv", label_names=renamed))
    assert ds.class_names == ["Positive", "Negative"]
    _check_consistent(ds, {text: renamed[label] for text, label in two_class_rows()})
    cfg = _parsed_data(tmp_path, source="csv", train="s.csv", label_names={"pos": "Positive"})
    with pytest.raises(DataError) as info:
        load_data(cfg)
    assert str(info.value) == (
        f"{tmp_path / 's.csv'}: labels outside data.label_names {{'pos': 'Positive'}}: neg (line 2)"
    )


def test_label_names_mapping_config_errors_name_the_key(tmp_path):
    msg = _data_config_error(tmp_path, label_names={1: "World", "1": "Sports"})
    assert msg.startswith("data.label_names: label '1' is given twice"), msg
    msg = _data_config_error(tmp_path, label_names={1: "World", 2: ""})
    assert msg.startswith("data.label_names.2: must be a class name"), msg
    msg = _data_config_error(tmp_path, label_names={True: "World"})
    assert msg.startswith("data.label_names.True: a label value must be"), msg
    msg = _data_config_error(tmp_path, label_names={1: "World", 2: "World"})
    assert msg.startswith("data.label_names: names must be unique"), msg
    assert _data_config_error(tmp_path, label_names={}).startswith("data.label_names:")
    msg = _data_config_error(tmp_path, source="builtin", label_names={1: "World"})
    assert msg.startswith("data.label_names: only used with source csv or jsonl"), msg
    # label_values is how the mapping is kept, not a key of the file
    assert _data_config_error(tmp_path, label_values=["1"]).startswith("data.label_values")
