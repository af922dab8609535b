"""Tokens coloured by how much attention they got: in the terminal (ANSI 256-colour backgrounds)
and as a self-contained HTML page — the "which words drove this prediction" view.

Weights are scaled to the largest in the text, so the most-attended token is always the darkest.
Pieces show where words begin as the text did: sentencepiece marks a word's first piece with ▁,
which becomes a space; WordPiece (BERT, MiniLM) marks the pieces after a word's first with ##, so
there each piece without ## starts a word and gets a space before it, and a ## piece joins its word.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from heedful.outputs import write_whole

# Twelve steps from white to deep orange in the xterm 256-colour cube.
_ANSI_RAMP = [231, 230, 229, 223, 222, 221, 215, 214, 209, 208, 202, 196]


def _scaled(weights: Sequence[float]) -> list[float]:
    top = max(weights, default=0.0)
    return [w / top if top > 0 else 0.0 for w in weights]


def surfaces(tokens: Sequence[str]) -> list[str]:
    """Each piece as it reads in the text, with a space before each word but the first."""
    wordpiece = not any("▁" in t for t in tokens) and any(t.startswith("##") or t in ("[CLS]", "[SEP]") for t in tokens)
    if not wordpiece:
        return [t.replace("▁", " ") for t in tokens]
    # WordPiece: "bat", "##tery" -> "bat", "tery" (one word); "dies" after it -> " dies".
    return [t[2:] if t.startswith("##") and len(t) > 2 else (" " if i else "") + t for i, t in enumerate(tokens)]


def ansi_tokens(tokens: Sequence[str], weights: Sequence[float]) -> str:
    """One line with each token on a background as strong as its weight (black text)."""
    out = []
    for shown, w in zip(surfaces(tokens), _scaled(weights), strict=True):
        colour = _ANSI_RAMP[min(int(w * len(_ANSI_RAMP)), len(_ANSI_RAMP) - 1)]
        out.append(f"\x1b[48;5;{colour}m\x1b[30m{shown}\x1b[0m")
    return "".join(out)


def html_tokens(rows: Sequence[tuple[str, Sequence[str], Sequence[float]]], path: Path, title: str) -> Path:
    """An HTML page: per row a caption (e.g. the predicted label) and its tokens, each shaded by
    its weight, with the exact weight on hover."""
    body = []
    for caption, tokens, weights in rows:
        spans = []
        for shown, w, raw in zip(surfaces(tokens), _scaled(weights), weights, strict=True):
            spans.append(
                f'<span title="{raw:.3f}" style="background: rgba(230, 85, 13, {w:.3f})">{html.escape(shown)}</span>'
            )
        body.append(f'<div class="row"><div class="caption">{html.escape(caption)}</div>{"".join(spans)}</div>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body {{ font: 15px/1.7 system-ui, sans-serif; margin: 2em; }} .row {{ margin-bottom: 1.2em; }}
.caption {{ font-weight: 600; font-size: 13px; color: #444; }} span {{ white-space: pre-wrap; }}</style>
</head><body><h1 style="font-size: 18px">{html.escape(title)}</h1>
{"".join(body)}
</body></html>
"""
    return write_whole(path, "--html", page)
