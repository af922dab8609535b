"""Labelled-text reading: label schemes round-trip, filters, streaming, and each kind of bad
row named by file and line (or counted when skipping)."""

import gzip
import json
import re
from collections import Counter

import pytest

from heedful.data.text import (
    BadRows,
    LabelMap,
    TextColumns,
    read_labelled,
    read_text_rows,
    read_texts,
    reservoir_sample,
)
from heedful.errors import DataError
from tests.conftest import SHARED_DATA

REVIEWS = SHARED_DATA / "reviews"
HEADER = "Product Name,Rating,Reviews\n"


def write(tmp_path, body: str | bytes, name="r.csv"):
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def rows(path, **spec):
    spec = TextColumns(**{"text": "Reviews", "label": "Rating", **spec})
    return list(read_labelled(path, spec, report=lambda m: None))


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("stars5", ["1", "2", "3", "4", "5"]),
        ("stars3", ["neg", "neg", "neutral", "pos", "pos"]),
        ("binary", ["neg", "neg", None, "pos", "pos"]),
    ],
)
def test_star_schemes_map_and_round_trip(scheme, expected):
    labels = LabelMap(scheme)
    got = [labels.index(stars) for stars in (1, "2", "3.0", 4, " 5 ")]
    assert [None if i is None else labels.name(i) for i in got] == expected
    assert labels.ordinal == (scheme != "binary")


def test_as_is_collects_classes_in_order_or_keeps_to_the_given_ones():
    labels = LabelMap("as_is")
    assert [labels.index(v) for v in ("1", "0", "1")] == [0, 1, 0] and labels.classes == ["1", "0"]
    fixed = LabelMap("as_is", ("neg", "pos"))
    with pytest.raises(ValueError, match="'meh' is not one of neg, pos"):
        fixed.index("meh")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, r"^label null is not a text or a number$"),  # JSON null became the class 'None'
        (["pos"], r"^label \['pos'\] is not a text or a number$"),
        (5.0, r"^label '5.0' is the number of the class '5' written another way; write each label one way$"),
        ("+5", r"^label '\+5' is the number of the class '5' written another way"),
        ("n\udce9", r"^label is not valid UTF-8$"),
    ],
)
def test_as_is_refuses_a_label_that_is_no_class_name(raw, message):
    labels = LabelMap("as_is")
    assert [labels.index(v) for v in (5, "5", "pos", True)] == [0, 0, 1, 2]  # 5 and "5" are one class
    with pytest.raises(ValueError, match=message):
        labels.index(raw)
    assert labels.classes == ["5", "pos", "True"]


def test_rows_carry_text_label_group_and_their_first_line(tmp_path):
    path = write(tmp_path, HEADER + 'A,5,"great, really"\nB,1,"two\nlines"\nA,3,ok\n')
    got = rows(path, group="Product Name", labels="stars3")
    assert [(r.text, r.label, r.group, r.line) for r in got] == [
        ("great, really", 2, "A", 2),
        ("two\nlines", 0, "B", 3),
        ("ok", 1, "A", 5),
    ]


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        (HEADER + "A,5,fine\nB,4,   \n", "empty text", "line 3: empty text"),
        (HEADER + "A,5,fine\nB,7,too many stars\n", "bad label", "line 3: label '7' is out of range"),
        (HEADER + "A,5,fine\nB,x,what\n", "bad label", "line 3: label 'x' is not a star rating"),
        (HEADER + 'A,5,fine\nB,4,"broken" quote\n', "unparseable", "line 3: broken quoting"),
        (HEADER + "A,5,fine\nB,4\n", "unparseable", "line 3: expected 3 columns, found 2"),
        (HEADER.encode() + b"A,5,fine\nB,4,caf\xe9\n", "undecodable", "line 3: text is not valid UTF-8"),
    ],
    ids=["empty", "out-of-range", "not-a-number", "quoting", "columns", "bytes"],
)
def test_each_bad_row_kind_names_file_and_line_or_is_counted(tmp_path, body, kind, message):
    path = write(tmp_path, body)
    with pytest.raises(DataError, match=f"r.csv {message}"):
        rows(path, labels="stars5")
    bad = BadRows()
    kept = list(read_labelled(path, TextColumns("Reviews", "Rating", labels="stars5", on_bad_row="skip"),
                              bad=bad, report=lambda m: None))  # fmt: skip
    assert [r.text for r in kept] == ["fine"] and bad.counts == {kind: 1}


def test_jsonl_gzip_filters_and_a_missing_column(tmp_path):
    lines = [{"cat": "手机", "label": 1, "review": "好"}, {"cat": "书籍", "label": 0, "review": "差"}, [1]]
    body = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n"
    path = write(tmp_path, gzip.compress(body.encode()), "c.jsonl.gz")
    spec = TextColumns("review", "label", filters={"cat": "手机"}, on_bad_row="skip")
    bad = BadRows()
    got = list(read_labelled(path, spec, bad=bad, report=lambda m: None))
    assert [(r.text, r.line) for r in got] == [("好", 1)] and bad.filtered == 1 and bad.counts == {"unparseable": 1}
    with pytest.raises(
        DataError, match=r"no column 'Stars' \(data.label_column\); the header has Product Name, Rating, Reviews"
    ):
        list(read_labelled(write(tmp_path, HEADER + "A,5,x\n"), TextColumns("Reviews", "Stars")))
    with pytest.raises(
        DataError, match=r"no column 'Product' \(data.group_column; null if there is none\); the header"
    ):
        list(read_labelled(write(tmp_path, HEADER + "A,5,x\n"), TextColumns("Reviews", "Rating", group="Product")))
    with pytest.raises(DataError, match=r"no column 'body' \(data.text_column\)"):
        read_texts(write(tmp_path, HEADER + "A,5,x\n"), "body")  # the text read as its own label


def test_binary_leaves_three_stars_out_without_calling_them_bad(tmp_path):
    bad = BadRows()
    got = list(read_labelled(write(tmp_path, HEADER + "A,3,so so\nA,4,good\n"), TextColumns("Reviews", "Rating",
               labels="binary"), bad=bad))  # fmt: skip
    assert [r.text for r in got] == ["good"] and bad.left_out == 1 and not bad.counts


def amazon_facts_from_readme() -> tuple[int, list[int]]:
    """The Amazon sample's row count and its rows per rating 1–5, as ../shared/data/README.md states
    them (`7,261 English reviews … (Rating 1–5: 1,567 / 498 / …)`): the file can be replaced, and
    its README is where the facts of the current one are written."""
    readme = (SHARED_DATA / "README.md").read_text(encoding="utf-8")
    entry = readme[readme.index("`amazon_unlocked_mobile.csv.gz`") :]
    rows = re.search(r"`amazon_unlocked_mobile.csv.gz`: ([\d,]+) English reviews", entry)
    ratings = re.search(r"Rating 1–5: ([\d,]+(?: / [\d,]+){4})", entry)
    if not (rows and ratings):
        raise AssertionError("../shared/data/README.md no longer states the Amazon sample's rows and ratings")
    number = lambda text: int(text.replace(",", ""))  # noqa: E731
    return number(rows.group(1)), [number(n) for n in ratings.group(1).split(" / ")]


@pytest.mark.skipif(not REVIEWS.is_dir(), reason="needs ../shared/data/reviews")
def test_the_shared_review_files_read_with_their_known_quirks():
    amazon = rows(REVIEWS / "amazon_unlocked_mobile.csv.gz", labels="stars5", group="Product Name")
    n_rows, per_rating = amazon_facts_from_readme()
    assert len(amazon) == n_rows == sum(per_rating)
    assert [Counter(r.label for r in amazon)[k] for k in range(5)] == per_rating  # label k is k + 1 stars
    bad = BadRows()
    phones = list(read_labelled(REVIEWS / "online_shopping_10_cats.csv.gz",
                                TextColumns("review", "label", filters={"cat": "手机"}, on_bad_row="skip"),
                                bad=bad, report=lambda m: None))  # fmt: skip
    assert len(phones) == 1975 and bad.counts.get("empty text", 0) <= 1


def test_a_reservoir_sample_is_uniform_ordered_seeded_and_reads_the_stream_once():
    def stream(n):  # a generator: it can be read once only, as a file streamed row by row
        yield from range(n)

    assert reservoir_sample(stream(5), 8, seed=0) == ([0, 1, 2, 3, 4], 5)  # fewer rows than asked: all
    kept, seen = reservoir_sample(stream(100), 10, seed=3)
    assert seen == 100 and len(set(kept)) == 10 and kept == sorted(kept)  # in file order, no repeats
    assert reservoir_sample(stream(100), 10, seed=3)[0] == kept != reservoir_sample(stream(100), 10, seed=4)[0]
    # Every item is kept with probability k / n = 0.3: over 2,000 draws each count is Binomial(2000, 0.3),
    # mean 600, sd 20.5, so 6 sd bounds every one of the 20 items (a sampler that favours the first or last
    # items, as keeping the head or the tail of the file would, lands hundreds away).
    counts = Counter(i for seed in range(2000) for i in reservoir_sample(stream(20), 6, seed)[0])
    assert all(abs(counts[i] - 600) < 6 * 20.5 for i in range(20)), counts
    with pytest.raises(ValueError, match="at least one"):
        reservoir_sample(stream(3), 0, seed=0)


def test_texts_to_predict_name_the_file_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_bytes(b"Gut.\n\nDas Ger\xc3\xa4t ist kaputt.\nEin caf\xe9\n")  # latin-1 on line 4
    with pytest.raises(DataError, match=r"reviews.txt line 4: text is not valid UTF-8"):
        read_texts(path, None)
    path.write_bytes("Gut.\n\nDas Gerät ist kaputt.\r\n".encode())
    assert read_texts(path, None) == ["Gut.", "Das Gerät ist kaputt."]
    path = tmp_path / "reviews.csv"  # Windows-1252: predict --input ended in sentencepiece's RuntimeError
    path.write_bytes(b"Reviews,Product\ngood phone,a\nt\xe9l\xe9phone,b\n")
    with pytest.raises(DataError, match=r"reviews.csv line 3: text is not valid UTF-8$"):
        read_text_rows(path, "Reviews")
    path.write_bytes(b"Reviews,Product\ngood phone,caf\xe9\n")  # a kept column is written out too
    with pytest.raises(DataError, match=r"reviews.csv line 2: text is not valid UTF-8$"):
        read_text_rows(path, "Reviews")
    folder = tmp_path / "texts.csv"
    folder.mkdir()

    with pytest.raises(DataError, match=r"^\S+/texts.csv: is a folder; give a file$"):  # was IsADirectoryError
        read_texts(folder, "body")


def test_texts_to_predict_keep_the_rest_of_their_rows(tmp_path):
    csv_file = write(tmp_path, 'Product Name,Reviews,Price\nA1,"Great, really",129\nB2,meh,\n')
    got = read_text_rows(csv_file, "Reviews")
    assert (got.texts, got.columns, got.values) == (["Great, really", "meh"], ["Product Name", "Price"],
                                                    [["A1", "129"], ["B2", ""]])  # fmt: skip
    jsonl = write(tmp_path, '{"id": 7, "body": "ok"}\n\n{"body": "bad", "tags": ["x"], "id": 8}\n', "r.jsonl")
    got = read_text_rows(jsonl, "body")  # keys in order of first appearance; a missing key is ""
    assert (got.texts, got.columns, got.values) == (["ok", "bad"], ["id", "tags"], [["7", ""], ["8", '["x"]']])
    assert (got.rows, got.count) == ([1, 3], 3)  # a JSONL file's rows are its lines, the blank one included
    lines = write(tmp_path, "one\n\ntwo\n\n", "r.txt")
    got = read_text_rows(lines, None)
    assert got.columns == [] and read_texts(lines, None) == ["one", "two"] and (got.rows, got.count) == ([1, 3], 4)


def test_a_record_without_text_is_an_empty_row_that_keeps_its_other_columns(tmp_path):
    """A blank text cell stopped the whole read ("no text in column"), while a blank line got an empty row."""
    csv_file = write(tmp_path, "id,Reviews\n1,good\n2,\n3,  \n4,bad\n")
    got = read_text_rows(csv_file, "Reviews")
    assert (got.texts, got.rows, got.count) == (["good", "bad"], [1, 4], 4)
    assert (got.values, got.blank_values) == ([["1"], ["4"]], {2: ["2"], 3: ["3"]})
    jsonl = write(tmp_path, '{"id": 1, "body": "ok"}\n{"id": 2, "body": null}\n{"id": 3}\n', "r.jsonl")
    got = read_text_rows(jsonl, "body")
    assert (got.texts, got.rows, got.count, got.blank_values) == (["ok"], [1], 3, {2: ["2"], 3: ["3"]})
    assert read_texts(csv_file, "Reviews") == ["good", "bad"]
    number = write(tmp_path, '{"body": "ok"}\n{"body": 5}\n', "n.jsonl")  # not a text at all: a mistake
    with pytest.raises(DataError, match=r"n.jsonl line 2: the text in column 'body' is not a string$"):
        read_text_rows(number, "body")


def test_a_missing_relative_path_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """A run keeps data paths as typed: evaluated from another folder, 'reviews.csv: file not found' hid why."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"^reviews.csv: file not found; a relative path, read from {tmp_path}$"):
        read_texts("reviews.csv", "Reviews")
    with pytest.raises(DataError, match=rf"^{tmp_path}/reviews.csv: file not found$"):
        read_texts(tmp_path / "reviews.csv", "Reviews")


def test_a_file_with_no_text_to_predict_is_refused(tmp_path):
    """A header-only CSV wrote 0 predictions and exited 0."""
    cases = [
        ("h.csv", "Reviews,Product\n", r"h.csv: no rows with a text in column 'Reviews'$"),
        ("b.txt", "\n  \n", r"b.txt: no texts in it, only blank lines$"),
        ("e.txt", "", r"e.txt: empty file$"),
    ]
    for name, content, message in cases:
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=message):
            read_texts(tmp_path / name, "Reviews")
