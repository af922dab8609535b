"""Labelled texts (e.g. product reviews) from CSV, TSV or JSONL, streamed row by row.

    spec = TextColumns(text="Reviews", label="Rating", group="Product Name", labels="stars3")
    for row in read_labelled(Path("amazon_unlocked_mobile.csv.gz"), spec):
        row.text, row.label, row.group, row.line      # label: class index; line: where it started

Files may be gzipped (``.gz``); the format comes from the suffix (``.csv``, ``.tsv``, ``.jsonl``) or
is given. Rows are read one at a time, so a file larger than memory streams through.

Labels are mapped to classes by ``labels``:
  ``stars5``  ratings 1–5 → five classes "1"…"5" (ordinal)
  ``stars3``  1–2 → neg, 3 → neutral, 4–5 → pos (ordinal)
  ``binary``  1–2 → neg, 4–5 → pos; 3 is left out (counted, not an error)
  ``as_is``   every distinct value is a class, in order of first appearance unless ``classes`` lists them
``filters`` keep rows whose column equals a value (``{"cat": "手机"}``).

A bad row — empty text, a label outside the mapping, broken quoting, the wrong number of
columns, undecodable bytes, a JSON line that is not an object — stops the read with one line
naming file, line and problem (``on_bad_row="error"``), or is skipped and counted
(``on_bad_row="skip"``; the counts by kind are in ``BadRows`` and reported at the end).

``reservoir_sample`` keeps a seeded uniform sample of k rows while they stream past, so a file
larger than memory (the full Kaggle phone-review set has 413,840 rows) can be sampled without
being held.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from heedful.errors import DataError, not_found

LabelScheme = Literal["stars5", "stars3", "binary", "as_is"]
STAR_CLASSES: dict[str, tuple[str, ...]] = {
    "stars5": ("1", "2", "3", "4", "5"),
    "stars3": ("neg", "neutral", "pos"),
    "binary": ("neg", "pos"),
}
_STARS_TO_CLASS = {
    "stars5": {1: "1", 2: "2", 3: "3", 4: "4", 5: "5"},
    "stars3": {1: "neg", 2: "neg", 3: "neutral", 4: "pos", 5: "pos"},
    "binary": {1: "neg", 2: "neg", 3: None, 4: "pos", 5: "pos"},  # None: left out by design
}


# Bytes that are not UTF-8 are kept by surrogateescape as these lone surrogates; searching with a
# compiled class runs in C, where a per-character Python test took most of a large file's read.
UNDECODABLE = re.compile("[\udc80-\udcff]")


def refuse_nul(line: str | bytes, where: str) -> None:
    """A line holding a NUL byte decodes, yet is no text (a binary file, or UTF-16): a one-line
    ``DataError`` at ``where`` ("FILE line N")."""
    if ("\0" if isinstance(line, str) else b"\0") in line:
        raise DataError(f"{where}: a NUL byte (a binary file, or UTF-16 text?)")


@dataclass(frozen=True)
class TextColumns:
    text: str
    label: str | None  # None: texts alone, every row's label 0 (the mlm task reads no labels)
    group: str | None = None
    labels: LabelScheme = "as_is"
    classes: tuple[str, ...] | None = None  # as_is: the class names in order (default: first seen)
    filters: dict[str, str] = field(default_factory=dict)
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    on_bad_row: Literal["error", "skip"] = "error"


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int
    group: str | None
    line: int


@dataclass
class BadRows:
    counts: Counter = field(default_factory=Counter)  # kind -> rows skipped
    first: dict[str, str] = field(default_factory=dict)  # kind -> the first such row's message
    left_out: int = 0  # rows the label scheme drops on purpose (binary: 3 stars)
    filtered: int = 0  # rows the filters did not keep

    def summary(self, path: Path) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.counts.most_common())
        first = next(iter(self.first.values()))
        return f"{path}: skipped {sum(self.counts.values())} bad rows ({kinds}); first: {first}"


class LabelMap:
    """Raw label values <-> class indices for one scheme; ``name(index(raw))`` round-trips."""

    def __init__(self, scheme: LabelScheme, classes: tuple[str, ...] | None = None):
        self.scheme = scheme
        self.fixed = scheme != "as_is" or classes is not None
        self.classes: list[str] = list(STAR_CLASSES[scheme] if scheme != "as_is" else (classes or ()))

    @property
    def ordinal(self) -> bool:
        return self.scheme in ("stars5", "stars3")

    def index(self, raw: Any) -> int | None:
        """The class index of a raw label; None when the scheme leaves it out; ValueError if invalid."""
        if self.scheme == "as_is":
            if not isinstance(raw, str | int | float):  # JSON null, a list, an object: not a class name
                shown = "null" if raw is None else f"{raw!r:.30}"
                raise ValueError(f"label {shown} is not a text or a number")
            name = str(raw).strip()
            if name == "":
                raise ValueError("empty label")
            if UNDECODABLE.search(name):
                raise ValueError("label is not valid UTF-8")
            if name not in self.classes:
                if self.fixed:
                    raise ValueError(f"label {name!r} is not one of {', '.join(self.classes)}")
                twin = next((c for c in self.classes if _number(c) is not None and _number(c) == _number(name)), None)
                if twin is not None:  # 5 and 5.0 would be two classes
                    raise ValueError(f"label {name!r} is the number of the class {twin!r} written another way; "
                                     "write each label one way")  # fmt: skip
                self.classes.append(name)
            return self.classes.index(name)
        try:
            stars = float(str(raw).strip())
        except ValueError:
            raise ValueError(
                f"label {raw!r} is not a star rating 1–5 (data.labels: as_is takes labels as they are)"
            ) from None
        if stars != int(stars) or int(stars) not in _STARS_TO_CLASS[self.scheme]:
            raise ValueError(f"label {raw!r} is out of range (1–5 stars)")
        name = _STARS_TO_CLASS[self.scheme][int(stars)]
        return None if name is None else self.classes.index(name)

    def name(self, index: int) -> str:
        return self.classes[index]


def _number(name: str) -> float | None:
    """The number a label names ("5", "5.0", "+5"), or None if it is not one."""
    try:
        return float(name)
    except ValueError:
        return None


def _open_text(path: Path) -> io.TextIOBase:
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115 - closed by caller
    except FileNotFoundError:
        raise DataError(not_found(path)) from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; give a file") from None
    except OSError as exc:  # e.g. no permission to read it
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    # utf-8-sig drops a leading BOM; undecodable bytes are reported per line, not as a crash.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _format(path: Path, spec: TextColumns) -> str:
    if spec.format != "auto":
        return spec.format
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    for fmt in ("csv", "tsv", "jsonl"):
        if suffixes and suffixes[-1] == f".{fmt}":
            return fmt
    raise DataError(f"{path}: cannot tell the format from the name; give format csv, tsv or jsonl")


def _records(
    path: Path, fmt: str, spec: TextColumns, *, blank_lines: bool = False
) -> Iterator[tuple[int, dict[str, Any] | str | None]]:
    """(line, record) per row, or (line, problem) for a row that cannot be parsed; with
    ``blank_lines``, (line, None) for a blank line of a JSONL file too (a CSV's blank lines are no
    rows, as every CSV reader has it)."""
    with _open_text(path) as handle:
        if fmt == "jsonl":
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    if blank_lines:
                        yield number, None
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, f"broken JSON ({exc.msg})"
                    continue
                yield number, record if isinstance(record, dict) else "not a JSON object"
            return
        reader = csv.reader(handle, delimiter="\t" if fmt == "tsv" else ",", strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file (no header row)") from None
        except csv.Error as exc:
            raise DataError(f"{path} line 1: broken header ({exc})") from None
        wanted = [
            (spec.text, "data.text_column"),
            (spec.label, "data.label_column"),
            (spec.group, "data.group_column; null if there is none"),
            *((column, "data.filters") for column in spec.filters),
        ]
        if any("\0" in h or UNDECODABLE.search(h) for h in header):
            raise DataError(f"{path} line 1: not UTF-8 text (a binary file, or UTF-16?)")
        missing = [(column, key) for column, key in wanted if column and column not in header]
        if missing:
            column, key = missing[0]
            hint = ""
            if len(header) == 1:  # one column: the file is likely separated by something else
                other = next((c for c in ";\t|," if c in header[0]), None)
                if other:
                    hint = f" — one column: separated by {other!r}? heedful reads commas (CSV) or tabs (TSV)"
            raise DataError(f"{path}: no column {column!r} ({key}); the header has {', '.join(header)}{hint}")
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, f"broken quoting ({exc})"
                return  # the reader cannot find the next row boundary after this
            if values and len(values) != len(header):
                yield start, f"expected {len(header)} columns, found {len(values)}"
            elif values:
                yield start, dict(zip(header, values, strict=True))
            start = reader.line_num + 1


def read_labelled(
    path: str | Path,
    spec: TextColumns,
    *,
    label_map: LabelMap | None = None,
    bad: BadRows | None = None,
    report: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> Iterator[LabelledText]:
    """Stream the rows of ``path`` as (text, class index, group, line). ``label_map`` (default: a
    new one for ``spec.labels``) collects the classes; ``bad`` collects what was skipped. Without
    a label column (``spec.label`` None) every row's label is 0 and no label is read."""
    path = Path(path)
    labels = label_map or LabelMap(spec.labels, spec.classes)
    bad = bad if bad is not None else BadRows()
    fmt = _format(path, spec)

    def problem(kind: str, line: int, message: str) -> None:
        where = f"{path} line {line}: {message}"
        if spec.on_bad_row == "error":
            raise DataError(where + " (data.on_bad_row: skip counts such rows instead)")
        bad.counts[kind] += 1
        bad.first.setdefault(kind, where)

    for line, record in _records(path, fmt, spec):
        if isinstance(record, str):
            problem("unparseable", line, record)
            continue
        if any(str(record.get(k, "")).strip() != v for k, v in spec.filters.items()):
            bad.filtered += 1
            continue
        if spec.text not in record or (spec.label is not None and spec.label not in record):
            missing = spec.text if spec.text not in record else spec.label
            problem("missing field", line, f"no field {missing!r}")
            continue
        text = record[spec.text]
        if not isinstance(text, str):
            problem("not text", line, f"field {spec.text!r} is not a string")
            continue
        if UNDECODABLE.search(text):
            problem("undecodable", line, "text is not valid UTF-8")
            continue
        text = text.replace("\ufeff", "").strip()  # a stray byte-order mark inside a file is not text
        if not text:
            problem("empty text", line, "empty text")
            continue
        try:
            label = 0 if spec.label is None else labels.index(record[spec.label])
        except ValueError as exc:
            problem("bad label", line, str(exc))
            continue
        if label is None:
            bad.left_out += 1
            continue
        group = str(record.get(spec.group, "")).strip() if spec.group else None
        yield LabelledText(text, label, group or None, line)
    if bad.counts:
        report(bad.summary(path))


@dataclass
class TextRows:
    """The texts of a file to predict, with the rest of each row, so that predictions can be
    written beside the columns the user's file already had (product, date, id, …)."""

    texts: list[str]
    columns: list[str] = field(default_factory=list)  # the other columns: CSV order; JSONL: first seen
    values: list[list[str]] = field(default_factory=list)  # per text, its value in each of ``columns``
    # Per text, its row of the output (1-based): a text file's and a JSONL file's line number, a
    # CSV's record number. Rows no text has — blank lines, and records whose text is blank or
    # missing — are written as empty rows, so that row N of the output stays row N of the input.
    rows: list[int] = field(default_factory=list)
    count: int = 0  # rows in all, the blank ones included
    text_column: str | None = None  # the column the texts came from; None for a file of lines
    # A record without text keeps its other columns (its product, its id) in its empty row: row -> values.
    blank_values: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rows:  # no blank lines: one row per text
            self.rows = list(range(1, len(self.texts) + 1))
        self.count = max(self.count, self.rows[-1] if self.rows else 0)


def read_texts(path: str | Path, column: str | None) -> list[str]:
    """The texts to predict from ``path``: the ``column`` of a CSV/TSV/JSONL file, or each
    non-blank line of any other file; rows without text are left out."""
    return read_text_rows(path, column, keep_columns=False).texts


def read_text_rows(path: str | Path, column: str | None, *, keep_columns: bool = True) -> TextRows:
    """``read_texts`` with every other column of each row kept (as text; a JSONL value that is not
    a string as JSON, a key a row lacks as ""); a file of lines has no other columns. Each text's
    row (``TextRows.rows``) is its line in a file of lines or a JSONL file, whose blank lines hold
    no text, and its record's number in a CSV/TSV file. A record whose text is blank, null or
    missing holds no text either (as a blank line: an empty row, its other columns kept); a text
    that is not a string (a JSON number) stops the read with its file and line.
    ``keep_columns=False`` keeps the texts alone (a large file's other columns can outweigh them)."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    fmt = suffixes[-1].lstrip(".") if suffixes and suffixes[-1] in (".csv", ".tsv", ".jsonl") else "lines"
    if fmt == "lines":
        texts, rows, number = [], [], 0
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):  # numbered as in the file, blank lines included
                if UNDECODABLE.search(line):
                    raise DataError(f"{path} line {number}: text is not valid UTF-8")
                refuse_nul(line, f"{path} line {number}")
                if line.strip():
                    texts.append(line.strip())
                    rows.append(number)
        if not texts:
            raise DataError(
                f"{path}: no texts in it, only blank lines" if path.stat().st_size else f"{path}: empty file"
            )
        return TextRows(texts, [], [[] for _ in texts], rows=rows, count=number)
    if column is None:
        raise DataError(f"{path}: which column holds the text? give --text-column")
    spec = TextColumns(text=column, label=column, format=fmt)  # the label is not needed: read the text twice
    texts, rows, others, columns = [], [], [], {}  # columns: an ordered set of the other columns' names
    blank_others: dict[int, dict[str, str]] = {}  # row -> the other columns of a record without text
    count = 0
    for line, record in _records(path, fmt, spec, blank_lines=True):
        count += 1
        if record is None:  # a JSONL file's blank line
            continue
        if isinstance(record, str):
            raise DataError(f"{path} line {line}: {record}")
        text = record.get(column)
        if text is not None and not isinstance(text, str):
            raise DataError(f"{path} line {line}: the text in column {column!r} is not a string")
        if any(UNDECODABLE.search(v) for v in record.values() if isinstance(v, str)):
            raise DataError(f"{path} line {line}: text is not valid UTF-8")
        blank = text is None or not text.strip()  # an empty row, as a blank line gets: rows stay aligned
        if not blank:
            texts.append(text.strip())
            rows.append(count)  # JSONL: the line's number (each line was counted); CSV: the record's
        if not keep_columns:
            continue
        rest = {
            k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in record.items() if k != column
        }
        columns.update(dict.fromkeys(rest))
        if blank:
            blank_others[count] = rest
        else:
            others.append(rest)
    if not texts:  # predict wrote an empty output and said nothing
        raise DataError(f"{path}: no rows with a text in column {column!r}")
    names = list(columns)
    values = [[row.get(name, "") for name in names] for row in others] if keep_columns else [[] for _ in texts]
    blank_values = {row: [rest.get(name, "") for name in names] for row, rest in blank_others.items()}
    return TextRows(texts, names, values, rows=rows, count=count, text_column=column, blank_values=blank_values)


T = TypeVar("T")


def reservoir_sample(items: Iterable[T], k: int, seed: int) -> tuple[list[T], int]:
    """A uniform random sample of ``k`` items from a stream read once, in stream order, and how
    many items the stream held (all of them are kept when there are ``k`` or fewer).

    Algorithm R (Vitter 1985): item i (0-based) replaces a random slot of the reservoir with
    probability k / (i + 1), so every item ends up kept with probability k / n, holding only k.
    """
    if k < 1:
        raise ValueError(f"a sample needs at least one item, got k={k}")
    rng = random.Random(seed)
    kept: list[tuple[int, T]] = []  # (position in the stream, item)
    seen = 0
    for seen, item in enumerate(items, 1):
        if seen <= k:
            kept.append((seen, item))
        else:
            slot = rng.randrange(seen)
            if slot < k:
                kept[slot] = (seen, item)
    kept.sort(key=lambda pair: pair[0])
    return [item for _, item in kept], seen
