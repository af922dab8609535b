"""Parallel text (sentence pairs) from files, checked line by line, and token-count batching.

Three layouts, chosen by ``format``:

* ``text`` — two files with one sentence a line, line i of one translating line i of the other
  (``train.en`` + ``train.de``, as Multi30k and most of WMT ship);
* ``tsv`` — one file, two tab-separated columns: source, target;
* ``jsonl`` — one file, one JSON object a line, with two named fields (``{"en": …, "de": …}``;
  a dotted name such as ``translation.en`` reaches into a nested object).

A name ending in ``.gz`` is read through gzip. Text must be UTF-8 (a leading byte-order mark is
dropped); surrounding whitespace is stripped. A line that cannot be used — empty, undecodable,
holding a NUL byte, longer than 64 KiB, a malformed TSV or JSONL record — stops the read with a
one-line :class:`DataError` naming the file and line (``on_bad_line="error"``), or is skipped and
counted (``"skip"``), with one summary line naming the files, the count and the first few line
numbers. Files of a pair with different line counts are always an error: no line could be trusted
to match its translation.

Training batches hold a budget of tokens rather than a number of sentences (Vaswani et al. 2017
§5.1; fairseq's ``--max-tokens``): sentences of similar length are batched together so little is
padding, and the batches are shuffled. Everything is drawn from ``(seed, epoch)``, so
``batches(epoch)`` is the same sequence every time it is asked for — which is what lets a resumed
run skip the batches it has trained on and continue with exactly the rest.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from heedful.errors import ConfigError, DataError, not_found, note

Format = Literal["text", "tsv", "jsonl"]
OnBadLine = Literal["error", "skip"]
SHOWN_LINES = 5  # line numbers a skip summary lists
MAX_LINE_BYTES = 1 << 16  # no sentence is this long: a longer line is a file without line breaks
Batch = dict[str, Any]


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    line: int  # 1-based line number in the file(s) it came from


@dataclass(frozen=True)
class ParallelFiles:
    """Where one split's pairs are: two files (``text``) or one (``tsv``, ``jsonl``)."""

    format: Format
    paths: tuple[Path, ...]
    fields: tuple[str, str] = ("source", "target")  # jsonl only

    def __post_init__(self) -> None:
        expected = 2 if self.format == "text" else 1
        if len(self.paths) != expected:
            raise ValueError(f"format {self.format!r} reads {expected} file(s), got {len(self.paths)}")

    def describe(self) -> str:
        return " + ".join(str(p) for p in self.paths)


@dataclass
class BadLines:
    """Applies the ``on_bad_line`` policy: raise at the first problem, or count them all."""

    policy: OnBadLine
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, "file line N: problem")

    def __call__(self, path: Path, line: int, problem: str) -> None:
        message = f"{path} line {line}: {problem}"
        if self.policy == "error":
            raise DataError(message)
        self.problems.append((line, message))

    def summary(self, where: str, total: int) -> str | None:
        """One line for the log, or None when nothing was skipped."""
        if not self.problems:
            return None
        lines = sorted({line for line, _ in self.problems})
        shown = ", ".join(map(str, lines[:SHOWN_LINES])) + (", …" if len(lines) > SHOWN_LINES else "")
        return f"{where}: skipped {len(lines)} of {total} lines (line {shown}); first problem: {min(self.problems)[1]}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- reading
def read_lines(path: Path) -> list[bytes]:
    """The raw lines of a file (gzip when the name ends in ``.gz``), without line endings.

    Split on ``\\n`` only — a stray ``\\r`` or form feed inside a sentence does not make a new
    line — so the count agrees with ``wc -l`` and with the other file of a pair.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(not_found(path)) from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc or 'truncated'})") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    return [line.removesuffix(b"\r") for line in lines]


def _text(raw: bytes, path: Path, number: int, bad: BadLines) -> str | None:
    """Decode one line as UTF-8, or report it; None when it is bad. A NUL byte is never text (a
    binary file, or UTF-16), and a line of more than 64 KiB is no sentence (a file whose line
    breaks were lost, or not text at all): both would otherwise train silently."""
    if len(raw) > MAX_LINE_BYTES:
        bad(path, number, f"{len(raw):,} bytes long, no sentence is (at most {MAX_LINE_BYTES:,}; lost line breaks?)")
        return None
    if b"\0" in raw:
        bad(path, number, f"NUL byte at column {raw.index(0) + 1} (a binary file, or UTF-16 text?)")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad(path, number, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
        return None
    if number == 1:
        text = text.removeprefix("\ufeff")
    return text


def read_text_pair(src: Path, tgt: Path, *, on_bad_line: OnBadLine = "error", report=_stderr) -> list[Pair]:
    """Pairs from two line-aligned files."""
    src_lines, tgt_lines = read_lines(src), read_lines(tgt)
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"{src} has {len(src_lines)} lines but {tgt} has {len(tgt_lines)}: the files of a pair must be line-aligned"
        )
    bad = BadLines(on_bad_line)
    pairs = []
    for number, (raw_src, raw_tgt) in enumerate(zip(src_lines, tgt_lines, strict=True), start=1):
        texts = []
        for path, raw in ((src, raw_src), (tgt, raw_tgt)):
            text = _text(raw, path, number, bad)
            if text is not None and not text.strip():
                bad(path, number, "empty line")
                text = None
            texts.append(text)
        if None not in texts:
            pairs.append(Pair(texts[0].strip(), texts[1].strip(), number))
    _report(bad, f"{src} + {tgt}", len(src_lines), report)
    return pairs


def _nonempty_lines(lines: list[bytes], path: Path, bad: BadLines) -> Iterator[tuple[int, str]]:
    """(line number, decoded text) for each line that decodes and is not blank; the others go to ``bad``."""
    for number, raw in enumerate(lines, start=1):
        text = _text(raw, path, number, bad)
        if text is None:
            continue
        if not text.strip():
            bad(path, number, "empty line")
            continue
        yield number, text


def read_tsv(path: Path, *, on_bad_line: OnBadLine = "error", report=_stderr) -> list[Pair]:
    """Pairs from a file of ``source<TAB>target`` lines."""
    lines = read_lines(path)
    bad = BadLines(on_bad_line)
    pairs = []
    for number, text in _nonempty_lines(lines, path, bad):
        columns = text.split("\t")
        if len(columns) != 2:
            bad(path, number, f"expected 2 tab-separated columns (source, target), found {len(columns)}")
            continue
        source, target = (c.strip() for c in columns)
        if not source or not target:
            bad(path, number, f"empty {'source' if not source else 'target'} column")
            continue
        pairs.append(Pair(source, target, number))
    _report(bad, str(path), len(lines), report)
    return pairs


def _field(record: Any, name: str) -> Any:
    for part in name.split("."):
        if not isinstance(record, dict) or part not in record:
            raise KeyError(name)
        record = record[part]
    return record


def read_jsonl(
    path: Path, fields: tuple[str, str] = ("source", "target"), *, on_bad_line: OnBadLine = "error", report=_stderr
) -> list[Pair]:
    """Pairs from a file of JSON objects, one a line, taking the two named (string) fields."""
    lines = read_lines(path)
    bad = BadLines(on_bad_line)
    pairs = []
    for number, text in _nonempty_lines(lines, path, bad):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            bad(path, number, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        values = []
        for name in fields:
            try:
                value = _field(record, name)
            except KeyError:
                bad(path, number, f"no field {name!r}")
                break
            if not isinstance(value, str):
                bad(path, number, f"field {name!r} is a {type(value).__name__}, expected a string")
                break
            if not value.strip():
                bad(path, number, f"empty field {name!r}")
                break
            values.append(value.strip())
        else:
            pairs.append(Pair(values[0], values[1], number))
    _report(bad, str(path), len(lines), report)
    return pairs


def _report(bad: BadLines, where: str, total: int, report: Callable[[str], None]) -> None:
    summary = bad.summary(where, total)
    if summary is not None:
        report(summary)


def read_parallel(files: ParallelFiles, *, on_bad_line: OnBadLine = "error", report=_stderr) -> list[Pair]:
    """One split's pairs, whatever the layout; raises :class:`DataError` when none are left."""
    if files.format == "text":
        pairs = read_text_pair(*files.paths, on_bad_line=on_bad_line, report=report)
    elif files.format == "tsv":
        pairs = read_tsv(files.paths[0], on_bad_line=on_bad_line, report=report)
    else:
        pairs = read_jsonl(files.paths[0], files.fields, on_bad_line=on_bad_line, report=report)
    if not pairs:
        raise DataError(f"{files.describe()}: no usable sentence pairs")
    return pairs


# ----------------------------------------------------------------------------------------- lengths
def keep_by_length(
    lengths: Sequence[tuple[int, int]], *, max_tokens: int | None = None, max_ratio: float | None = None
) -> list[int]:
    """Indices of the (source, target) token lengths to train on: neither side longer than
    ``max_tokens``, and the longer side at most ``max_ratio`` times the shorter."""
    kept = []
    for i, (s, t) in enumerate(lengths):
        if max_tokens is not None and max(s, t) > max_tokens:
            continue
        if max_ratio is not None and max(s, t) > max_ratio * max(min(s, t), 1):
            continue
        kept.append(i)
    return kept


def fit_for_training(
    encoded: list[tuple[list[int], list[int]]],
    files: ParallelFiles,
    *,
    max_tokens: int,
    max_ratio: float | None,
    batch_tokens: int,
) -> tuple[list[tuple[list[int], list[int]]], list[int], list[int]]:
    """The encoded (source, target) training pairs of ``files`` that fit (says on stderr how many
    did not), each one's width in a padded batch (the wider of src and tgt_in/tgt_out), and
    each one's index in ``encoded`` (what carries per-pair data such as alignment links along).
    Refuses a budget of ``batch_tokens`` that the widest pair alone would exceed."""
    kept = keep_by_length([(len(s), len(t)) for s, t in encoded], max_tokens=max_tokens, max_ratio=max_ratio)
    if len(kept) < len(encoded):
        ratio = f" or a length ratio above {max_ratio}" if max_ratio else ""
        note(
            f"{files.describe()}: left out {len(encoded) - len(kept)} of {len(encoded)} "
            f"pairs with more than {max_tokens} tokens{ratio} (data.max_tokens, data.max_ratio, model.max_len)"
        )
    if not kept:
        raise DataError(f"{files.describe()}: no training pairs left after length filtering")
    encoded = [encoded[i] for i in kept]
    sizes = [max(len(s), len(t) + 1) for s, t in encoded]  # widths of src and of tgt_in/tgt_out
    if max(sizes) > batch_tokens:
        raise ConfigError(
            f"config key 'data.batch_tokens': {batch_tokens} is less than the longest training pair "
            f"({max(sizes)} tokens); raise it or lower data.max_tokens"
        )
    return encoded, sizes, kept


# ---------------------------------------------------------------------------------------- batching
def pack_by_tokens(order: Sequence[int], sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Cut ``order`` (indices, ideally sorted by size) into consecutive batches whose padded size
    — rows × the largest size in the batch — stays within ``budget``. An example larger than the
    budget on its own becomes a batch of one."""
    batches: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for i in order:
        w = max(widest, sizes[i])
        if current and (len(current) + 1) * w > budget:
            batches.append(current)
            current, w = [], sizes[i]
        current.append(i)
        widest = w
    if current:
        batches.append(current)
    return batches


def batches_by_length(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Deterministic token batches for evaluation and decoding: sorted by size, not shuffled.
    Callers restore the original order from the indices."""
    return pack_by_tokens(sorted(range(len(sizes)), key=sizes.__getitem__), sizes, budget)


class TokenBatches:
    """Training batches of at most ``batch_tokens`` padded tokens, similar lengths together — a
    :class:`heedful.tasks.base.BatchSource` (registered as one by the translate task, because
    ``data`` does not import ``tasks``).

    ``sizes[i]`` is the width example i takes in a padded batch (the longer of its source and
    target tensors), so ``rows × max(sizes)`` bounds both. Each epoch shuffles the examples with
    ``Random(f"{seed}:{epoch}")``, sorts them by size (stably: equal sizes keep the shuffled
    order, so batches mix differently every epoch), cuts them into batches and shuffles the
    batches. Cutting depends only on the sorted sizes, so every epoch has the same number of
    batches and ``steps_per_epoch`` is exact.
    """

    def __init__(self, sizes: Sequence[int], batch_tokens: int, seed: int, make_batch: Callable[[list[int]], Batch]):
        if not sizes:
            raise ValueError("no training examples")
        if max(sizes) > batch_tokens:
            raise ValueError(f"the longest example ({max(sizes)} tokens) does not fit batch_tokens={batch_tokens}")
        self.sizes, self.batch_tokens, self.seed = list(sizes), batch_tokens, seed
        self.make_batch = make_batch
        self._steps = len(batches_by_length(self.sizes, batch_tokens))

    def steps_per_epoch(self) -> int:
        return self._steps

    def plan(self, epoch: int) -> list[list[int]]:
        """The example indices of each batch of ``epoch``, in training order."""
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(len(self.sizes)))
        rng.shuffle(order)
        order.sort(key=self.sizes.__getitem__)  # stable: ties stay shuffled
        batches = pack_by_tokens(order, self.sizes, self.batch_tokens)
        rng.shuffle(batches)
        return batches

    def batches(self, epoch: int) -> Iterator[Batch]:
        for indices in self.plan(epoch):
            yield self.make_batch(indices)


def split_files(d: Any, split: str) -> ParallelFiles:
    """Where ``d.<split>`` points, resolved against ``d.root`` (translate's data section: a prefix
    or a file, or two paths ``.src`` / ``.tgt`` for two text files)."""
    value = getattr(d, split)
    root = d.root if d.root is not None else Path()
    langs = (d.source_lang, d.target_lang)
    two_paths = not isinstance(value, str)  # a section with src and tgt
    if d.format == "text":
        if two_paths:
            paths = (root / value.src, root / value.tgt)
        else:
            paths = tuple(language_file(root / value, lang) for lang in langs)
    elif two_paths:
        raise ConfigError(f"config key 'data.{split}': format {d.format!r} reads one file; give its path")
    else:
        paths = (root / value,)
    return ParallelFiles(d.format, paths, d.fields or langs)


def language_file(prefix: Path, lang: str) -> Path:
    """``train`` + ``en`` -> ``train.en``, or ``train.en.gz`` when only that exists."""
    plain = prefix.with_name(f"{prefix.name}.{lang}")
    gz = plain.with_name(plain.name + ".gz")
    if plain.exists():
        return plain
    if gz.exists():
        return gz
    raise DataError(not_found(plain, f"nor {gz.name}"))
