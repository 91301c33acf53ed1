"""A data file's raw labels -> class ids 0..C-1 and class names (``data.label_names``).

Labels are class names or integer ids. With ``label_names`` as a list the names fix the
order; as a mapping each label is the class its value names. Integer labels take the
names in sorted numeric order when there are as many distinct values as names (AG News'
1..4 -> World, Sports, Business, Sci/Tech). A label that fits none of this is one
:class:`~ktune.errors.DataError` naming the file and the line of the value.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

import numpy as np

from ktune.errors import DataError

__all__ = ["encode_labels", "as_int", "all_ints"]

# A value seen in at most this many rows is shown with its lines: a stray one.
_RARE = 3


def as_int(v: Any) -> int | None:
    """``v`` as an integer label (1, "1", JSON's 1.0), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)  # JSON's 1.0 is the class 1
    if isinstance(v, str) and re.fullmatch(r"-?[0-9]+", v):  # not "²" or "--1" (isdigit)
        return int(v)
    return None


def all_ints(raw: Sequence[Any]) -> list[int] | None:
    """The labels as integers when every one of them is an integer, else None."""
    ints = [as_int(v) for v in raw]
    return [i for i in ints if i is not None] if all(i is not None for i in ints) else None


def encode_labels(
    raw: Sequence[Any],
    names: list[str] | None,
    path: str,
    values: Sequence[str] | None = None,
    where: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Maps class names or integer ids to 0..C-1; ``names`` fixes the order when given.

    With ``values`` (``label_names`` as a mapping of label to name) the label equal to
    ``values[i]`` (as text, or as the same integer) is class ``names[i]``. With ``names``
    alone: a label equal to a name is that class. Labels that are all integers take the
    names in sorted numeric order when there are as many distinct values as names (AG
    News' 1..4 -> World, Sports, Business, Sci/Tech); otherwise they must be 0-based ids
    below the number of names, and when they could count from 1 as well (1..3 beside four
    names) they are refused: the mapping says which. Without ``names`` the classes are the
    labels sorted (numerically when they are all integers).

    ``where``: each label's place in its file (``"line 7"``), for the errors.
    """
    lines = _Lines(raw, where)
    if names is not None and values is not None:
        return _encode_mapped(raw, names, values, path, lines)
    if names is not None:
        index = {n: i for i, n in enumerate(names)}
        ints = all_ints(raw)
        if not all(str(v) in index for v in raw) and ints is not None:
            distinct = sorted(set(ints))
            if len(distinct) == len(names):
                rank = {c: i for i, c in enumerate(distinct)}
                return np.asarray([rank[i] for i in ints], np.int32), list(names)
            count, more = Counter(ints), ", ..." if len(distinct) > 8 else ""
            shown, first = ", ".join(map(str, distinct[:8])) + more, distinct[0]
            example = ", ".join(f"{first + i}: {n}" for i, n in enumerate(names[:2])) + ", ..."
            if first >= 1 and distinct[-1] < len(names):  # 1-based would fit too
                raise DataError(
                    f"{path}: labels {shown} fit data.label_names ({len(names)} names) both as "
                    f"0-based ids ({first} = {names[first]!r}) and counted from 1 ({first} = "
                    f"{names[first - 1]!r}), with {len(names) - len(distinct)} class(es) "
                    "absent: give data.label_names as a mapping of label to name, e.g. "
                    f"{{{example}}}"
                )
            if first < 0 or distinct[-1] >= len(names):
                # a stray value shows as the one in a few rows, with its lines
                shown = (
                    ", ".join(
                        f"{c} in {count[c]} row(s)" + lines.of(c, count[c]) for c in distinct[:8]
                    )
                    + more
                )
                raise DataError(
                    f"{path}: the labels are {len(distinct)} distinct integers ({shown}) but "
                    f"data.label_names names {len(names)} classes {list(names)}: give one "
                    "name per label value (they are matched in sorted numeric order), or "
                    f"data.label_names as a mapping of label to name, e.g. {{{example}}}"
                )
        out, bad = [], set()
        for v in raw:
            if str(v) in index:
                out.append(index[str(v)])
            elif (i := as_int(v)) is not None and 0 <= i < len(names):
                out.append(i)
            else:
                bad.add(str(v))
        _refuse_outside(bad, names, path, lines)
        return np.asarray(out, np.int32), list(names)
    ints = all_ints(raw)
    if ints is not None:
        numbers = sorted(set(ints))
        rank = {c: i for i, c in enumerate(numbers)}
        return np.asarray([rank[i] for i in ints], np.int32), [str(c) for c in numbers]
    classes = sorted({str(v) for v in raw})
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[str(v)] for v in raw], np.int32), classes


def _encode_mapped(
    raw: Sequence[Any], names: list[str], values: Sequence[str], path: str, lines: _Lines
) -> tuple[np.ndarray, list[str]]:
    """``label_names`` as a mapping: each label is the class its value names."""
    by_text = {v: i for i, v in enumerate(values)}
    by_int: dict[int | None, int] = {as_int(v): i for i, v in enumerate(values)}
    by_int.pop(None, None)
    # 1 in the file for the key 1, "01" or JSON's 1.0 too
    found = [by_text.get(str(v), by_int.get(as_int(v))) for v in raw]
    bad = {str(v) for v, i in zip(raw, found) if i is None}
    _refuse_outside(bad, dict(zip(values, names, strict=True)), path, lines)
    return np.asarray(found, np.int32), list(names)


def _refuse_outside(bad: set[str], declared: Any, path: str, lines: _Lines) -> None:
    """One error for labels that ``data.label_names`` (a list or a mapping) lacks, each
    with the line it is first on."""
    if bad:
        shown = sorted(bad)[:5]
        listed = ", ".join(v + lines.first(v) for v in shown) + (", ..." if len(bad) > 5 else "")
        raise DataError(f"{path}: labels outside data.label_names {declared}: {listed}")


class _Lines:
    """Where each label value is, for an error (only computed when one is raised)."""

    def __init__(self, raw: Sequence[Any], where: Sequence[str] | None):
        self._raw, self._where = raw, where

    def _of(self, matches: Any, most: int) -> list[str]:
        if self._where is None:
            return []
        found = (w for v, w in zip(self._raw, self._where) if matches(v))
        return [w for _, w in zip(range(most), found)]

    def of(self, number: int, count: int) -> str:
        """`` (line 7)`` for an integer value in at most a few rows, else ``""``."""
        if count > _RARE:
            return ""
        places = self._of(lambda v: as_int(v) == number, _RARE)
        return f" ({', '.join(places)})" if places else ""

    def first(self, text: str) -> str:
        """`` (line 7)``: the first row holding the value ``text``."""
        places = self._of(lambda v: str(v) == text, 1)
        return f" ({places[0]})" if places else ""
