import datetime as dt
import itertools
from collections import defaultdict

from babel import Locale
from babel.dates import format_date

from heedful.data.builtin import (
    ISO_SPANS,
    date_charset,
    date_patterns,
    fixed_dates,
    random_dates,
    render_date,
)


def take(stream, n):
    return [next(stream) for _ in range(n)]


def test_stream_is_seeded():
    assert take(random_dates(7), 50) == take(random_dates(7), 50)
    assert take(random_dates(7), 50) != take(random_dates(8), 50)


def test_rendering_matches_babel_and_targets_are_iso():
    for locale, pattern in date_patterns():
        day = dt.date(2021, 3, 5)
        example = render_date(day, locale, pattern)
        assert example.source == format_date(day, pattern, locale=Locale.parse(locale))
        assert example.target == "2021-03-05"


def test_gold_spans_cover_the_right_characters():
    for example in fixed_dates(500, seed=3):
        date = dt.date.fromisoformat(example.target)
        day = example.source[slice(*example.spans["day"])]
        year = example.source[slice(*example.spans["year"])]
        assert int(day) == date.day, example
        assert int(year) == date.year, example
        start, end = example.spans["month"]
        assert 0 <= start < end <= len(example.source)
        # spans never overlap
        ranges = sorted(example.spans.values())
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    assert ISO_SPANS == {"year": (0, 4), "month": (5, 7), "day": (8, 10)}


def test_no_written_month_means_two_different_months():
    meanings = defaultdict(set)
    for locale, pattern in date_patterns():
        for month in range(1, 13):
            example = render_date(dt.date(2024, month, 13), locale, pattern)
            meanings[example.source[slice(*example.spans["month"])]].add(month)
    assert {text: months for text, months in meanings.items() if len(months) > 1} == {}


def test_ambiguous_formats_are_left_out():
    patterns = [p for _, p in date_patterns()]
    assert "M/d/yy" not in patterns  # en_US short: month first, two-digit year
    assert not any("yy" in p.replace("y", "Y", 0) and "yy" in p for p in patterns)
    assert len({loc for loc, _ in date_patterns()}) == 24


def test_fixed_sets_are_distinct_and_excluded_from_training():
    val = fixed_dates(300, seed=11)
    test = fixed_dates(300, seed=12, exclude=frozenset(e.source for e in val))
    assert len({e.source for e in val}) == 300
    assert not {e.source for e in val} & {e.source for e in test}
    held_out = frozenset(e.source for e in val + test)
    training = take(random_dates(11, exclude=held_out), 2000)  # same seed as val: would repeat it
    assert not {e.source for e in training} & held_out


def test_charset_covers_everything_the_generator_writes():
    charset = set(date_charset())
    for example in take(random_dates(5), 3000):
        assert set(example.source) <= charset
