"""Raw text split into words the way the Hansard alignment gold splits them (known answers)."""

from pathlib import Path

import pytest

from heedful.data.hansard import hansard_tokens

GOLD = Path(__file__).resolve().parents[3] / "shared" / "data" / "alignment" / "enfr.src-tgt"


@pytest.mark.parametrize(
    ("raw", "lang", "words"),
    [
        # gold lines 22 and 30 of enfr.src-tgt, from the raw sentences they were made from
        ("I disagree with the argument advanced by the minister.", "en",
         "i disagree with the argument advanced by the minister ."),
        ("Je ne partage pas l'avis du ministre.", "fr", "je ne partage pas le avis de le ministre ."),
        ("Les compagnies d’assurance peuvent-elles à leur tour, agir comme compagnies aériennes?", "fr",
         "les compagnies de assurance peuvent - elles à leur tour , agir comme compagnies aériennes ?"),
        # the contractions and elisions, one of each
        ("Qu'il parle aux enfants des rues au parc, s'il n'est pas aujourd'hui jusqu'à midi.", "fr",
         "que il parle à les enfants de les rues à le parc , si il ne est pas aujourd' hui jusque à midi ."),
        ("C'est l'homme qu'on voit; j'y vais (m'a-t-il dit).", "fr",
         "ce est le homme que on voit ; je y vais ( me a - t - il dit ) ."),
        # numbers keep their point and comma; 's is a word; a hyphen between letters is one
        ("The minister's $30,000 plan, worth 6.42 per well-known dog.", "en",
         "the minister 's $ 30,000 plan , worth 6.42 per well - known dog ."),
    ],
)  # fmt: skip
def test_raw_text_becomes_the_gold_words(raw, lang, words):
    assert hansard_tokens(raw, lang) == words


def test_the_gold_itself_is_a_fixed_point_except_for_case():
    """The gold's own words, already split, stay as they are (lowercased): the rules only split."""
    if not GOLD.is_file():
        pytest.skip(f"{GOLD}: the shared data is not here")
    changed = []
    for line in GOLD.read_text(encoding="utf-8").splitlines():
        english, french = line.split(" ||| ")
        for side, lang in ((english, "en"), (french, "fr")):
            expected = " ".join(side.split()).lower()
            if hansard_tokens(side, lang) != expected:
                changed.append(expected)
    # what the rules cannot know: the gold's one 'au' (not undone), '--', 'le1er' and the like
    assert len(changed) <= 2, changed  # au - dessus (au kept), the .5 of "the .5 per cent"


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="lang 'de'"):
        hansard_tokens("Ein Hund.", "de")
