"""Raw text tokenized the way the Hansard English–French alignment gold is (NAACL 2003 test set).

An unsupervised aligner such as eflomal is trained on more text than the 447 gold pairs; that text
has to be split into words the way the gold's words are split, or the gold's words are words the
aligner has rarely seen. What the gold does (``../shared/data/alignment/enfr.src-tgt``):

* punctuation is a word of its own (``question .``, ``( la motion est adoptée . )``, ``$ 20``),
  but a point or comma between digits stays (``6.42``, ``30,000``), and so does the point of a
  few abbreviations (``mr.``, ``hon.``, ``p.m.``);
* a hyphen between letters is a word of its own (``peut - être``);
* English: ``'s`` is split off (``minister 's``);
* French: elisions are written out (``l'`` → ``le``, even before a feminine noun: ``le opposition``;
  ``d'`` → ``de``, ``n'`` → ``ne``, ``qu'`` → ``que``, ``s'il`` → ``si il``), and the article
  contractions undone (``du`` → ``de le``, ``au`` → ``à le``, ``aux`` → ``à les``, ``des`` →
  ``de les``); ``aujourd'hui`` is ``aujourd' hui``.

This is a regex approximation, not the Hansard's own tokenizer (an abbreviation not in the short
list loses its point; the gold writes ``des`` as ``de les`` even as an indefinite article, and so
do we). Text is lowercased: the gold's English and French
are lowercased at the start of each sentence only, so an aligner is given both sides lowercased.
"""

from __future__ import annotations

import re
from typing import Literal

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'"})
# a point or comma between digits belongs to the number; every other punctuation mark is a word
_PUNCTUATION = re.compile(r"\.\.\.|(?<!\d)[.,]|[.,](?!\d)|[!?;:\"()\[\]«»…/$%]")
# titles and the like that the gold keeps whole, point and all
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "hon.", "no.", "p.m.", "a.m.", "m.", "mme.", "etc."})
_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")
_ENGLISH_CLITIC = re.compile(r"(?<=\w)'(?=\w)")  # minister's -> minister 's, don't -> don 't
_FRENCH_ELISION = re.compile(r"\b(jusqu|lorsqu|puisqu|quoiqu|qu|[ldnjcsmt])'(?=\w|$)")
_ELIDED = {"jusqu": "jusque", "lorsqu": "lorsque", "puisqu": "puisque", "quoiqu": "quoique", "qu": "que",
           "l": "le", "d": "de", "n": "ne", "j": "je", "c": "ce", "s": "se", "m": "me", "t": "te"}  # fmt: skip
_CONTRACTIONS = {"du": "de le", "au": "à le", "aux": "à les", "des": "de les"}
_FRENCH_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")  # what elision left: aujourd'hui -> aujourd' hui


def hansard_tokens(text: str, lang: Literal["en", "fr"]) -> str:
    """One line of raw text → lowercased, space-separated words as the Hansard gold splits them."""
    if lang not in ("en", "fr"):
        raise ValueError(f"lang {lang!r}: en or fr")
    text = text.translate(_APOSTROPHES).lower()
    text = " ".join(w if w in _ABBREVIATIONS else _PUNCTUATION.sub(lambda m: f" {m[0]} ", w) for w in text.split())
    text = _HYPHEN.sub(" - ", text)
    if lang == "en":
        text = _ENGLISH_CLITIC.sub(" '", text)
        return " ".join(text.split())
    text = re.sub(r"\bs'(ils?)\b", r"si \1", text)  # s'il: si, not se
    text = _FRENCH_ELISION.sub(lambda m: _ELIDED[m[1]] + " ", text)
    text = _FRENCH_APOSTROPHE.sub("' ", text)
    return " ".join(_CONTRACTIONS.get(word, word) for word in text.split())
