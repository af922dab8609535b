"""Parallel text: three layouts (plain or gzip), one-line errors naming file and line, the skip
policy, length filtering, and token-count batching that is exact and reproducible."""

import gzip
import json
import random
import re

import pytest

from heedful.data.parallel import (
    Pair,
    ParallelFiles,
    TokenBatches,
    batches_by_length,
    keep_by_length,
    pack_by_tokens,
    read_jsonl,
    read_parallel,
    read_text_pair,
    read_tsv,
)
from heedful.errors import DataError

SRC = ["A dog runs.", "Two men talk.", "A girl sings."]
TGT = ["Ein Hund rennt.", "Zwei Männer reden.", "Ein Mädchen singt."]


def write(path, data: bytes):
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def lines(texts) -> bytes:
    return "".join(f"{t}\n" for t in texts).encode()


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_text_pairs_plain_and_gzip(tmp_path, suffix):
    src = write(tmp_path / f"train.en{suffix}", lines(SRC))
    tgt = write(tmp_path / f"train.de{suffix}", "\ufeff".encode() + lines(TGT).replace(b"\n", b"\r\n"))
    pairs = read_text_pair(src, tgt)
    assert pairs == [Pair(s, t, i) for i, (s, t) in enumerate(zip(SRC, TGT, strict=True), start=1)]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_tsv_and_jsonl(tmp_path, suffix):
    tsv = write(tmp_path / f"d.tsv{suffix}", lines(f"{s}\t{t}" for s, t in zip(SRC, TGT, strict=True)))
    records = [{"en": s, "de": t, "id": i} for i, (s, t) in enumerate(zip(SRC, TGT, strict=True))]
    jsonl = write(tmp_path / f"d.jsonl{suffix}", lines(json.dumps(r, ensure_ascii=False) for r in records))
    nested_records = ({"translation": {"en": s, "de": t}} for s, t in zip(SRC, TGT, strict=True))
    nested = write(tmp_path / "n.jsonl", lines(json.dumps(r) for r in nested_records))
    expected = [(s, t) for s, t in zip(SRC, TGT, strict=True)]
    assert [(p.source, p.target) for p in read_tsv(tsv)] == expected
    assert [(p.source, p.target) for p in read_jsonl(jsonl, ("en", "de"))] == expected
    assert [(p.source, p.target) for p in read_jsonl(nested, ("translation.en", "translation.de"))] == expected
    assert len(read_parallel(ParallelFiles("jsonl", (jsonl,), ("en", "de")))) == 3


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    src = write(tmp_path / "a.en", lines(SRC))
    tgt = write(tmp_path / "a.de.gz", lines(TGT[:2]))
    with pytest.raises(DataError) as exc:
        read_text_pair(src, tgt, on_bad_line="skip")  # not skippable: nothing could be trusted to align
    assert re.search(r"a\.en has 3 lines but .*a\.de\.gz has 2", one_line(exc))


BAD_TEXT = [
    ("empty line", b"A dog.\n\nA cat.\n", "line 2: empty line"),
    ("blank line", b"A dog.\n   \t \nA cat.\n", "line 2: empty line"),
    ("bad utf-8", b"A dog.\nA \xff cat.\nA cow.\n", r"line 2: not valid UTF-8 \(byte 0xff at column 3\)"),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD_TEXT, ids=[c[0] for c in BAD_TEXT])
def test_bad_text_lines_are_one_line_errors_naming_file_and_line(tmp_path, case, data, message):
    src = write(tmp_path / "x.en", data)
    tgt = write(tmp_path / "x.de", b"Ein Hund.\nEine Kuh.\nEine Katze.\n")
    with pytest.raises(DataError) as exc:
        read_text_pair(src, tgt)
    assert re.fullmatch(rf".*x\.en {message}", one_line(exc))


BAD_TSV = [
    ("three columns", "a\tb\tc", "line 2: expected 2 tab-separated columns .*found 3"),
    ("one column", "just text", "line 2: expected 2 tab-separated columns .*found 1"),
    ("empty target", "a\t ", "line 2: empty target column"),
    ("empty line", "", "line 2: empty line"),
]


@pytest.mark.parametrize(("case", "line", "message"), BAD_TSV, ids=[c[0] for c in BAD_TSV])
def test_bad_tsv_lines(tmp_path, case, line, message):
    path = write(tmp_path / "d.tsv", lines(["A dog.\tEin Hund.", line, "A cat.\tEine Katze."]))
    with pytest.raises(DataError) as exc:
        read_tsv(path)
    assert re.fullmatch(rf".*d\.tsv {message}", one_line(exc))


BAD_JSONL = [
    ("not json", '{"en": "a", "de": ', r"line 2: not valid JSON \(.*column \d+\)"),
    ("missing field", '{"en": "a"}', "line 2: no field 'de'"),
    ("not a string", '{"en": "a", "de": 3}', "line 2: field 'de' is a int, expected a string"),
    ("not an object", '["a", "b"]', "line 2: no field 'en'"),
    ("empty field", '{"en": "", "de": "b"}', "line 2: empty field 'en'"),
]


@pytest.mark.parametrize(("case", "line", "message"), BAD_JSONL, ids=[c[0] for c in BAD_JSONL])
def test_bad_jsonl_lines(tmp_path, case, line, message):
    path = write(tmp_path / "d.jsonl", lines(['{"en": "A dog.", "de": "Ein Hund."}', line]))
    with pytest.raises(DataError) as exc:
        read_jsonl(path, ("en", "de"))
    assert re.fullmatch(rf".*d\.jsonl {message}", one_line(exc))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.en: file not found"):
        read_text_pair(tmp_path / "nope.en", tmp_path / "nope.de")
    (tmp_path / "broken.tsv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken\.tsv\.gz: not a readable gzip file"):
        read_tsv(tmp_path / "broken.tsv.gz")
    empty = write(tmp_path / "empty.tsv", b"")
    with pytest.raises(DataError, match="no usable sentence pairs"):
        read_parallel(ParallelFiles("tsv", (empty,)))


def test_skip_policy_counts_and_reports_one_line(tmp_path):
    src_lines = [f"s{i}" for i in range(12)]
    bad = {2, 5, 6, 8, 9, 11}  # 1-based line numbers made bad below, one problem or two each
    src_lines[1] = ""
    src_lines[4] = ""
    tgt_lines = [f"t{i}" for i in range(12)]
    for number in (6, 8, 9, 11):
        tgt_lines[number - 1] = ""
    src_data = lines(src_lines).replace(b"s5\n", b"s\xc35\n")  # line 6 undecodable in the source too
    src, tgt = write(tmp_path / "s.en", src_data), write(tmp_path / "s.de", lines(tgt_lines))
    reported = []
    pairs = read_text_pair(src, tgt, on_bad_line="skip", report=reported.append)
    assert [p.line for p in pairs] == [n for n in range(1, 13) if n not in bad]
    (summary,) = reported
    assert "\n" not in summary
    assert re.match(r".*s\.en \+ .*s\.de: skipped 6 of 12 lines \(line 2, 5, 6, 8, 9, …\)", summary)
    assert re.search(r"first problem: .*s\.en line 2: empty line$", summary)


def test_skip_policy_on_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path / "d.tsv", lines(["a\tb", "oops", "c\td"]))
    jsonl = write(tmp_path / "d.jsonl", lines(['{"en": "a", "de": "b"}', "{", '{"en": "c", "de": "d"}']))
    for pairs in (
        read_tsv(tsv, on_bad_line="skip", report=lambda s: None),
        read_jsonl(jsonl, ("en", "de"), on_bad_line="skip", report=lambda s: None),
    ):
        assert [(p.source, p.target, p.line) for p in pairs] == [("a", "b", 1), ("c", "d", 3)]


def test_nothing_is_reported_when_nothing_is_skipped(tmp_path, capsys):
    tsv = write(tmp_path / "d.tsv", lines(["a\tb"]))
    read_tsv(tsv, on_bad_line="skip")
    assert capsys.readouterr().err == ""


def test_length_filter():
    lengths = [(5, 6), (130, 10), (10, 130), (2, 9), (9, 2), (1, 3)]
    assert keep_by_length(lengths, max_tokens=128) == [0, 3, 4, 5]
    assert keep_by_length(lengths, max_tokens=128, max_ratio=3.0) == [0, 5]
    assert keep_by_length(lengths) == list(range(6))


# ---------------------------------------------------------------------------------------- batching
def random_sizes(n=500, seed=0):
    rng = random.Random(seed)
    return [rng.randint(1, 60) for _ in range(n)]


def make(sizes, budget=256, seed=7):
    return TokenBatches(sizes, budget, seed, make_batch=lambda indices: indices)


def test_batches_respect_the_budget_and_cover_every_example_once():
    sizes = random_sizes()
    source = make(sizes)
    for epoch in range(3):
        plan = source.plan(epoch)
        assert len(plan) == source.steps_per_epoch()
        assert sorted(i for batch in plan for i in batch) == list(range(len(sizes)))
        for batch in plan:
            assert len(batch) * max(sizes[i] for i in batch) <= 256
        assert list(source.batches(epoch)) == plan


def test_batches_group_similar_lengths():
    sizes = random_sizes()
    spreads = [max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in make(sizes).plan(0)]
    assert sum(spreads) / len(spreads) <= 2  # sorted by length: little padding


def test_batches_are_reproducible_per_seed_and_epoch_and_differ_between_epochs():
    sizes = random_sizes()
    assert make(sizes).plan(3) == make(sizes).plan(3)
    assert make(sizes).plan(0) != make(sizes).plan(1)
    assert make(sizes, seed=1).plan(0) != make(sizes, seed=2).plan(0)
    # the batch contents (not only their order) change between epochs
    assert {tuple(sorted(b)) for b in make(sizes).plan(0)} != {tuple(sorted(b)) for b in make(sizes).plan(1)}


def test_a_resumed_epoch_continues_with_the_same_batches():
    sizes = random_sizes()
    full = list(make(sizes).batches(2))
    resumed = make(sizes).batches(2)
    for _ in range(5):
        next(resumed)
    assert list(resumed) == full[5:]


def test_an_example_over_the_budget_is_refused():
    with pytest.raises(ValueError, match="batch_tokens=16"):
        make([3, 20, 4], budget=16)


def test_packing_helpers():
    sizes = [3, 1, 2, 5, 4]
    assert pack_by_tokens([1, 2, 0, 4, 3], sizes, budget=6) == [[1, 2], [0], [4], [3]]
    assert pack_by_tokens([0], [9], budget=4) == [[0]]  # alone, even when over the budget
    assert batches_by_length(sizes, 8) == [[1, 2], [0, 4], [3]]  # sorted by size, no shuffling
