"""Built-in data sets that need no files: generated on the fly by well-known libraries.

``dates``: a calendar date written by Babel in one of many locales and formats
(``"5. März 2021"``, ``"March 5, 2021"``, ``"2021年3月5日"``, ``"пятница, 5 марта 2021 г."``) →
the ISO date ``2021-03-05``. Every example records which source characters came from the day,
month and year fields (and the weekday, when the format has one), so an attention map can be
checked against gold alignments.

Only unambiguous formats are used: patterns with two-digit years are dropped (``21`` could be
1921 or 2021), and with them the one month-first numeric format (en_US ``M/d/yy``); every
remaining all-numeric format puts the day or the year first, so a reader — or a model — never has
to guess the locale to read a date.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

from babel import Locale
from babel.dates import DateTimeFormat, parse_pattern

from heedful.data.tokenizers import CharTokenizer
from heedful.errors import ConfigError

DATE_LOCALES = (
    "en_US",
    "en_GB",
    "de_DE",
    "fr_FR",
    "es_ES",
    "it_IT",
    "pt_BR",
    "nl_NL",
    "sv_SE",
    "da_DK",
    "pl_PL",
    "cs_CZ",
    "ru_RU",
    "uk_UA",
    "tr_TR",
    "fi_FI",
    "hu_HU",
    "ro_RO",
    "el_GR",
    "id_ID",
    "vi_VN",
    "zh_CN",
    "ja_JP",
    "ko_KR",
)
DATE_FORMATS = ("short", "medium", "long", "full")
FIRST_YEAR, LAST_YEAR = 1900, 2099
# Target span of each field inside "YYYY-MM-DD".
ISO_SPANS = {"year": (0, 4), "month": (5, 7), "day": (8, 10)}

T = TypeVar("T")
_FIELD_KIND = {"d": "day", "M": "month", "L": "month", "y": "year", "E": "weekday", "c": "weekday"}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class DateExample:
    source: str  # the date as Babel writes it
    target: str  # ISO 8601, YYYY-MM-DD
    locale: str
    pattern: str  # the CLDR pattern that wrote it
    # field -> (start, end) character span in ``source``: day, month, year (+ weekday if present)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)


@cache
def date_patterns() -> tuple[tuple[str, str], ...]:
    """Every (locale, CLDR pattern) pair the generator draws from, de-duplicated."""
    pairs: list[tuple[str, str]] = []
    for name in DATE_LOCALES:
        locale = Locale.parse(name)
        for style in DATE_FORMATS:
            pattern = locale.date_formats[style].pattern
            if _is_unambiguous(pattern) and (name, pattern) not in pairs:
                pairs.append((name, pattern))
    return tuple(pairs)


def _fields(pattern: str) -> list[str]:
    return _PLACEHOLDER.findall(parse_pattern(pattern).format)


def _is_unambiguous(pattern: str) -> bool:
    fields = _fields(pattern)
    if any(f == "yy" for f in fields):
        return False
    kinds = [_FIELD_KIND.get(f[0]) for f in fields]
    numeric_month = any(f[0] in "ML" and len(f) <= 2 for f in fields)
    # Reject month before day with no leading year, e.g. 3/5/2021.
    return not (numeric_month and kinds.index("month") < kinds.index("day") and kinds[0] != "year")


def render_date(date: dt.date, locale: str, pattern: str) -> DateExample:
    """Write ``date`` with ``pattern`` in ``locale``, recording the span of each field."""
    formatter = DateTimeFormat(date, Locale.parse(locale))
    pieces = _PLACEHOLDER.split(parse_pattern(pattern).format)  # literal, field, literal, field, …
    source, spans = "", {}
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            source += piece.replace("%%", "%")
            continue
        text = formatter[piece]
        kind = _FIELD_KIND.get(piece[0])
        if kind is not None:
            spans[kind] = (len(source), len(source) + len(text))
        source += text
    return DateExample(source, date.isoformat(), locale, pattern, spans)


def random_date(rng: random.Random) -> dt.date:
    first, last = dt.date(FIRST_YEAR, 1, 1).toordinal(), dt.date(LAST_YEAR, 12, 31).toordinal()
    return dt.date.fromordinal(rng.randint(first, last))


def random_dates(seed: int, exclude: frozenset[str] = frozenset()) -> Iterator[DateExample]:
    """An endless, seeded stream of examples; sources in ``exclude`` (held-out sets) are skipped."""
    rng = random.Random(seed)
    patterns = date_patterns()
    while True:
        locale, pattern = patterns[rng.randrange(len(patterns))]
        example = render_date(random_date(rng), locale, pattern)
        if example.source not in exclude:
            yield example


def first_distinct(stream: Iterator[T], n: int, key: Callable[[T], Hashable], exclude: Iterable = ()) -> list[T]:
    """The first ``n`` items of an endless ``stream`` whose ``key`` is new and not in ``exclude``:
    how the fixed validation and test sets are drawn."""
    seen, out = set(exclude), []
    for item in stream:
        if key(item) not in seen:
            seen.add(key(item))
            out.append(item)
            if len(out) == n:
                return out
    raise AssertionError("unreachable: the stream is endless")


def fixed_dates(n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[DateExample]:
    """``n`` distinct examples from ``seed`` — used for the fixed validation and test sets."""
    return first_distinct(random_dates(seed), n, key=lambda e: e.source, exclude=exclude)


@cache
def date_charset() -> str:
    """Every character the generator can write: all months, weekdays and digits of every pattern.

    Derived from the generator's support, not from a sample, so the vocabulary never misses a
    character that appears in a rarer locale.
    """
    chars: set[str] = set("0123456789-")
    for locale, pattern in date_patterns():
        # Jan 1–7 of 2024 covers all weekdays; the 1st of each month covers all month names.
        days = [dt.date(2024, 1, d) for d in range(1, 8)] + [dt.date(2024, m, 1) for m in range(1, 13)]
        for day in days:
            chars.update(render_date(day, locale, pattern).source)
    return "".join(sorted(chars))


# --------------------------------------------------------------------------------------------------
# numbers: an integer in words in one language -> the same integer in words in another (num2words)


@dataclass(frozen=True)
class NumberExample:
    source: str  # e.g. "twenty-one"
    target: str  # e.g. "einundzwanzig"
    value: int


def number_language_supported(lang: str) -> bool:
    from num2words import num2words

    try:
        num2words(21, lang=lang)
    except NotImplementedError:
        return False
    return True


def render_number(value: int, source_lang: str, target_lang: str) -> NumberExample:
    from num2words import num2words

    return NumberExample(num2words(value, lang=source_lang), num2words(value, lang=target_lang), value)


def random_numbers(
    seed: int, source_lang: str, target_lang: str, max_value: int, exclude: frozenset[int] = frozenset()
) -> Iterator[NumberExample]:
    """An endless, seeded stream. The number of digits is drawn uniformly first, so 7 and 700,007
    are equally likely to be a short or a long example, not swamped by six-digit numbers."""
    rng = random.Random(seed)
    max_digits = len(str(max_value))
    while True:
        digits = rng.randint(1, max_digits)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        value = rng.randint(low, min(10**digits - 1, max_value))
        if value not in exclude:
            yield render_number(value, source_lang, target_lang)


def fixed_numbers(
    n: int, seed: int, source_lang: str, target_lang: str, max_value: int, exclude: frozenset[int] = frozenset()
) -> list[NumberExample]:
    """``n`` distinct numbers from ``seed``: the fixed validation and test sets."""
    if n > max_value + 1 - len(exclude):
        raise ValueError(f"cannot draw {n} distinct numbers up to {max_value}")
    stream = random_numbers(seed, source_lang, target_lang, max_value)
    return first_distinct(stream, n, key=lambda e: e.value, exclude=exclude)


@cache
def number_charset(lang: str, max_value: int) -> str:
    """Every character num2words writes for ``lang`` up to ``max_value``: all numbers below 2,000,
    every multiple of 1,000 below 1,000,000, and the powers of ten above."""
    from num2words import num2words

    values = set(range(min(max_value, 1999) + 1)) | {k * 1000 for k in range(1, 1000) if k * 1000 <= max_value}
    values |= {10**p + s for p in range(6, len(str(max_value))) for s in (0, 1)}
    chars: set[str] = set()
    for value in values:
        chars.update(num2words(value, lang=lang))
    return "".join(sorted(chars))


# ------------------------------------------------------------------------------ ready to train on
@dataclass
class BuiltinData:
    """A built-in source ready to train on: character vocabularies, the fixed validation and test
    examples (drawn with their own seed) and the training stream, ``stream(seed)``, which never
    yields a held-out example."""

    src_tok: CharTokenizer
    tgt_tok: CharTokenizer
    val: list
    test: list
    stream: Callable[[int], Iterator]


def builtin_data(d: Any) -> BuiltinData:
    """The ``dates`` or ``numbers`` source that translate's data section ``d`` describes (its
    ``source``, ``val_size``, ``test_size``, ``heldout_seed``, languages and ``max_value``)."""
    if d.source == "dates":
        src_tok, tgt_tok = CharTokenizer(date_charset()), CharTokenizer("0123456789-")
        val = fixed_dates(d.val_size, d.heldout_seed)
        test = fixed_dates(d.test_size, d.heldout_seed + 1, exclude=frozenset(e.source for e in val))
        held_out = frozenset(e.source for e in val + test)

        def stream(seed: int) -> Iterator[DateExample]:
            return random_dates(seed, held_out)

        return BuiltinData(src_tok, tgt_tok, val, test, stream)
    for key in ("source_lang", "target_lang"):
        if not number_language_supported(getattr(d, key)):
            raise ConfigError(f"config key 'data.{key}': num2words has no language {getattr(d, key)!r}")
    src_tok = CharTokenizer(number_charset(d.source_lang, d.max_value))
    tgt_tok = CharTokenizer(number_charset(d.target_lang, d.max_value))
    langs = (d.source_lang, d.target_lang)
    try:
        val = fixed_numbers(d.val_size, d.heldout_seed, *langs, d.max_value)
    except NotImplementedError:
        raise ConfigError(f"config key 'data.source_lang'/'data.target_lang': num2words has no {langs}") from None
    test = fixed_numbers(d.test_size, d.heldout_seed + 1, *langs, d.max_value, frozenset(e.value for e in val))
    held_out_values = frozenset(e.value for e in val + test)

    def stream(seed: int) -> Iterator[NumberExample]:
        return random_numbers(seed, *langs, d.max_value, held_out_values)

    return BuiltinData(src_tok, tgt_tok, val, test, stream)
