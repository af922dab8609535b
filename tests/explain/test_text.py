"""Tokens shaded by attention (explain/text.py): words read as words, whichever tokenizer cut them."""

import html
import re

from heedful.explain.text import ansi_tokens, html_tokens


def shown_text(page: str) -> str:
    return html.unescape("".join(re.findall(r"<span [^>]*>([^<]*)</span>", page)))


def test_wordpiece_and_sentencepiece_pieces_show_the_same_word_boundaries(tmp_path):
    """MiniLM's WordPiece ran together ("[CLS]thebatterydies[SEP]"): ## was dropped and no space put anywhere."""
    wordpiece = ["[CLS]", "the", "bat", "##tery", "dies", "[SEP]"]
    sentencepiece = ["<s>", "▁the", "▁bat", "tery", "▁dies"]
    weights = [0.1, 0.2, 0.9, 0.4, 0.3, 0.1]
    page = html_tokens([("pos", wordpiece, weights), ("pos", sentencepiece, weights[:5])], tmp_path / "p.html", "t")
    rows = page.read_text().split('<div class="row">')[1:]
    assert shown_text(rows[0]) == "[CLS] the battery dies [SEP]"
    assert shown_text(rows[1]) == "<s> the battery dies"
    assert '<span title="0.400" style="background: rgba(230, 85, 13, 0.444)">tery</span>' in rows[0]  # one piece each
    plain = re.sub(r"\x1b\[[0-9;]*m", "", ansi_tokens(wordpiece, weights))
    assert plain == "[CLS] the battery dies [SEP]"
    assert re.sub(r"\x1b\[[0-9;]*m", "", ansi_tokens(["a", "##", "b"], [1, 1, 1])) == "a ## b"  # no word of its own
