import itertools

import pytest

from heedful.data.builtin import fixed_numbers, number_charset, random_numbers, render_number


def test_known_answers_need_reordering():
    assert render_number(21, "en", "de") == render_number(21, "en", "de")
    example = render_number(21, "en", "de")
    assert (example.source, example.target, example.value) == ("twenty-one", "einundzwanzig", 21)
    assert render_number(1234, "en", "fr").target == "mille deux cent trente-quatre"


def test_stream_is_seeded_and_spans_all_lengths():
    first = list(itertools.islice(random_numbers(3, "en", "de", 999_999), 600))
    assert first == list(itertools.islice(random_numbers(3, "en", "de", 999_999), 600))
    digit_counts = {len(str(e.value)) for e in first}
    assert digit_counts == {1, 2, 3, 4, 5, 6}
    assert all(0 <= e.value <= 999_999 for e in first)


def test_held_out_numbers_never_reach_training():
    val = fixed_numbers(200, 1, "en", "de", 9_999)
    test = fixed_numbers(200, 2, "en", "de", 9_999, exclude=frozenset(e.value for e in val))
    held_out = frozenset(e.value for e in val + test)
    assert len(held_out) == 400
    training = itertools.islice(random_numbers(1, "en", "de", 9_999, exclude=held_out), 3000)
    assert not {e.value for e in training} & held_out
    with pytest.raises(ValueError, match="distinct"):
        fixed_numbers(50, 1, "en", "de", 20, exclude=frozenset(range(10)))


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["en", "de", "fr"])
def test_charset_covers_what_the_stream_writes(lang):
    charset = set(number_charset(lang, 999_999))
    for example in itertools.islice(random_numbers(9, "en", lang, 999_999), 2000):
        assert set(example.target) <= charset
