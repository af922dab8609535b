"""Word alignments from cross-attention, and how well they agree with gold.

From maps to links, in the order :func:`align_maps` applies them:

1. **Choose** decoder layers and heads and average their cross-attention: (T, S) per sentence,
   row j = the step that predicts target piece j (``shift=True``: the step that reads it, the
   "shift-att" of Chen et al. 2020).
2. **Merge** pieces into words (:func:`encode_words`, :func:`merge_pieces`): the attention a
   target word pays to a source word is the mean over the target word's pieces of the sum over
   the source word's pieces.
3. **Extract** links in each direction (:func:`directional_links`): target → source takes each
   target word's most attended source word (``argmax``), or every source word whose share of
   the row reaches ``threshold``; source → target does the same down the columns.
4. **Symmetrise** (:func:`symmetrize`): intersection, union or grow-diag-final (Koehn et al.
   2003, in a fixed order of its own that differs from Moses' ``symal``; docs/EXPLAIN.md).

Links are ``(source word, target word)`` pairs, 0-based, written in the Pharaoh format
``i-j`` (:func:`pharaoh`). Gold has sure and possible links; :func:`alignment_scores` gives
precision, recall and AER (Och & Ney 2003) summed over a corpus.

:func:`align_maps` works on maps already captured; :func:`forced_alignments` computes them by
forced decoding of given targets (teacher forcing on the reference, not the model's own
output), in chunks, so memory stays flat however long the input is.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, zip_longest
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from heedful.data.builtin import ISO_SPANS, DateExample
from heedful.data.parallel import batches_by_length
from heedful.data.text import refuse_nul
from heedful.data.tokenizers import pad_ids
from heedful.errors import DataError, UserError
from heedful.explain.capture import Captured, capture

Link = tuple[int, int]  # (source word, target word), 0-based
Direction = Literal["grow-diag-final", "intersection", "union", "target", "source"]
Extract = Literal["argmax", "threshold"]


def stacked_attention(seen: Captured, name: str) -> Tensor:
    """A module's attention over the whole target, (B, H, T, S): one call for the Transformer,
    one call per step for an RNN decoder that attends before each step."""
    return torch.cat(seen.calls(name), dim=-2)


def cross_attention_maps(
    model: nn.Module, src_ids: list[list[int]], out_ids: list[list[int]], *, bos: int, pad: int, batch_tokens: int
) -> list[dict[str, Tensor]]:
    """Teacher-forced pass over the given outputs (the same attention decoding saw, as the
    decoder is causal): per example, every cross-attention module's (H, T_out + 1, S) map."""
    maps = attention_maps(model, src_ids, out_ids, bos=bos, pad=pad, batch_tokens=batch_tokens, encoder=False)
    return [cross for cross, _ in maps]


def attention_maps(
    model: nn.Module,
    src_ids: list[list[int]],
    out_ids: list[list[int]],
    *,
    bos: int,
    pad: int,
    batch_tokens: int,
    encoder: bool = True,
) -> list[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """:func:`cross_attention_maps` and, from the same pass, the encoder's self-attention: per
    example (cross-attention module -> (H, T_out + 1, S), encoder self-attention module ->
    (H, S, S)), the encoder's in module order (``encoder.layers.N.self_attn``; left empty
    without ``encoder``)."""
    device = next(model.parameters()).device
    sizes = [max(len(s), len(o) + 1) for s, o in zip(src_ids, out_ids, strict=True)]
    maps: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = [({}, {})] * len(src_ids)
    for indices in batches_by_length(sizes, batch_tokens):
        src = pad_ids([src_ids[i] for i in indices], pad).to(device)  # (B, S)
        tgt_in = pad_ids([[bos, *out_ids[i]] for i in indices], pad).to(device)  # (B, T + 1)
        no_logits = torch.zeros_like(tgt_in, dtype=torch.bool)  # (B, T + 1): only the attention is wanted,
        with torch.no_grad(), capture(model) as seen:  # so the vocabulary projection (the largest matmul) is skipped
            model(src, tgt_in, keep=no_logits)
        stacked = {k: stacked_attention(seen, k).float().cpu() for k in seen if "cross_attn" in k}  # (B, H, T+1, S)
        # (B, H, S, S) each: the encoder's self-attention, kept for a rollout
        kept = [k for k in seen if encoder and _ENCODER_SELF.fullmatch(k)]
        selves = {k: stacked_attention(seen, k).float().cpu() for k in kept}
        for row, i in enumerate(indices):
            s, t = len(src_ids[i]), len(out_ids[i])
            maps[i] = (
                {k: weights[row, :, : t + 1, :s] for k, weights in stacked.items()},
                {k: weights[row, :, :s, :s] for k, weights in selves.items()},
            )
    return maps


_ENCODER_SELF = re.compile(r"encoder\.layers\.\d+\.self_attn")


# ------------------------------------------------------------------------------ pieces and words
def piece_words(pieces: Sequence[str]) -> list[int | None]:
    """The word of each piece (0-based), words being what whitespace separates: sentencepiece
    marks a word's first piece with ▁; a character tokenizer gives spaces as pieces of their
    own. Pieces that are only whitespace (or a bare ▁) belong to no word (None)."""
    words: list[int | None] = []
    word, starts = -1, True
    for piece in pieces:
        if piece.startswith("▁"):
            starts, piece = True, piece[1:]
        if not piece.strip():
            words.append(None)
            starts = True
            continue
        if starts:
            word, starts = word + 1, False
        words.append(word)
    return words


def encode_words(tok, text: str) -> tuple[list[int], list[int | None]]:
    """``text``'s ids and the word of each (0-based, the words of ``text.split()``; None: a
    piece in no word, such as whitespace or a bare ▁), encoded a stretch at a time: each word
    alone, and each run of whitespace alone. Counting the pieces that start a word would shift
    every later word where the tokenizer's normalization drops a word whole (a lone control
    character, a BOM, a zero-width space, a literal ▁) or makes a space inside one (NFKC's ``¨``):
    here such a word keeps its number, with fewer pieces or none. For text whose whitespace
    the tokenizer takes as whitespace too, the ids are the whole line's (sentencepiece splits
    at whitespace before it segments; characters are characters)."""
    ids: list[int] = []
    words: list[int | None] = []
    word = -1
    for stretch in _STRETCHES.findall(text):
        pieces = tok.encode(stretch)
        if not stretch.isspace():
            word += 1
        for i in pieces:
            ids.append(i)
            bare = not tok.id_to_piece(i).removeprefix("▁").strip()  # a word boundary, not a word's text
            words.append(None if stretch.isspace() or bare else word)
    return ids, words


_STRETCHES = re.compile(r"\s+|\S+")  # \S+: exactly the words of str.split()


def merge_pieces(weights: Tensor, target_words: Sequence[int | None], source_words: Sequence[int | None]) -> Tensor:
    """(T, S) piece attention -> (n_target_words, n_source_words) word attention: summed over a
    source word's pieces (the mass the word got), averaged over a target word's pieces."""

    def membership(words: Sequence[int | None]) -> Tensor:  # (n_words, n_pieces), 1 where piece ∈ word
        n = 1 + max((w for w in words if w is not None), default=-1)
        m = torch.zeros(n, len(words))
        for p, w in enumerate(words):
            if w is not None:
                m[w, p] = 1.0
        return m

    tgt, src = membership(target_words), membership(source_words)  # (Wt, T), (Ws, S)
    tgt = tgt / tgt.sum(-1, keepdim=True).clamp_min(1)
    return tgt @ weights.float() @ src.T  # (Wt, Ws)


def gold_attention(
    links: Iterable[Link], target_words: Sequence[int | None], source_words: Sequence[int | None]
) -> Tensor:
    """Word links -> the (T, S) piece distribution a supervised head should attend with (Garg et
    al. 2019): row j, the step predicting target piece j, is uniform over the source pieces of
    every source word that piece j's word links to; rows of pieces whose word has no link (and
    of pieces in no word) are all zero — nothing to learn there."""
    rows = torch.zeros(len(target_words), len(source_words))  # (T, S)
    linked: dict[int, set[int]] = {}
    for s, t in links:
        linked.setdefault(t, set()).add(s)
    for j, word in enumerate(target_words):
        sources = linked.get(word, ()) if word is not None else ()
        pieces = [p for p, w in enumerate(source_words) if w is not None and w in sources]
        if pieces:
            rows[j, pieces] = 1.0 / len(pieces)
    return rows


# ------------------------------------------------------------------------------ links
def directional_links(
    weights: Tensor, direction: Literal["target", "source"], extract: str = "argmax", threshold: float = 0.5
) -> set[Link]:
    """Links of one direction from a (T, S) map (rows target words, columns source words).

    ``target``: every target word links to its most attended source word (``argmax``) or to
    every source word holding at least ``threshold`` of its row (``threshold``); ``source``:
    the same for each source word down its column (renormalised to sum to one)."""
    if extract not in ("argmax", "threshold"):
        raise ValueError(f"extract {extract!r}: argmax or threshold")
    if weights.numel() == 0:
        return set()
    w = weights.float() if direction == "target" else weights.float().T  # rows: the words that choose
    if extract == "argmax":
        chosen = [(r, int(c)) for r, c in enumerate(w.argmax(-1).tolist())]
    else:
        share = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        chosen = [(int(r), int(c)) for r, c in (share >= threshold).nonzero().tolist()]
    if direction == "target":
        return {(s, t) for t, s in chosen}
    return {(s, t) for s, t in chosen}


_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))  # Moses' order


def grow_diag_final(source_to_target: set[Link], target_to_source: set[Link]) -> set[Link]:
    """Koehn et al. 2003's grow-diag-final: start from the intersection; grow by union links
    next to (or diagonal to) a link, whose source or target word is still unaligned, until
    nothing changes; then add each direction's links (source → target first) whose source or
    target word is still unaligned. Each pass grows from the links as they were when it began,
    visited in (source, target) order, neighbours in Moses' order (sides before diagonals): the
    result is unique, but not always Moses' ``symal`` (which adds target → source links first
    in the final step and grows from links added in the same pass)."""
    union = source_to_target | target_to_source
    links = source_to_target & target_to_source
    aligned_src = {s for s, _ in links}
    aligned_tgt = {t for _, t in links}

    def add(s: int, t: int) -> None:
        links.add((s, t))
        aligned_src.add(s)
        aligned_tgt.add(t)

    grown = True
    while grown:
        grown = False
        for s, t in sorted(links):
            for ds, dt in _NEIGHBOURS:
                point = (s + ds, t + dt)
                unaligned = point[0] not in aligned_src or point[1] not in aligned_tgt
                if point in union and point not in links and unaligned:
                    add(*point)
                    grown = True
    for direction in (source_to_target, target_to_source):
        for s, t in sorted(direction):
            if (s not in aligned_src or t not in aligned_tgt) and (s, t) not in links:
                add(s, t)
    return links


def symmetrize(source_to_target: set[Link], target_to_source: set[Link], method: Direction) -> set[Link]:
    """One alignment from the two directions (``target``/``source``: that direction alone)."""
    if method == "grow-diag-final":
        return grow_diag_final(source_to_target, target_to_source)
    if method == "intersection":
        return source_to_target & target_to_source
    if method == "union":
        return source_to_target | target_to_source
    if method == "target":
        return set(target_to_source)
    if method == "source":
        return set(source_to_target)
    raise ValueError(f"direction {method!r}: grow-diag-final, intersection, union, target or source")


def pharaoh(links: Iterable[Link]) -> str:
    """``0-0 1-2 …``: source-target pairs, 0-based, sorted."""
    return " ".join(f"{s}-{t}" for s, t in sorted(links))


def parse_links(line: str, *, one_based: bool = False, where: str = "") -> tuple[set[Link], set[Link]]:
    """A line of gold links -> (sure, possible), possible including sure. ``i-j`` is sure;
    ``ipj`` or ``i?j`` possible (the NAACL 2003 / awesome-align formats); ``one_based`` shifts
    1-based positions to 0-based."""
    sure, possible = set(), set()
    shift = 1 if one_based else 0
    for token in line.split():
        match = _LINK.fullmatch(token)
        if match is None:
            raise DataError(f"{where}: {token!r} is not a link (i-j sure, ipj possible)")
        link = (int(match[1]) - shift, int(match[3]) - shift)
        if min(link) < 0:
            raise DataError(f"{where}: {token!r}: positions start at {shift}")
        possible.add(link)
        if match[2] == "-":
            sure.add(link)
    return sure, possible


_LINK = re.compile(r"(\d+)([-p?])(\d+)")


@dataclass
class AlignmentCounts:
    """Sums over a corpus for Och & Ney's scores: |A|, |S|, |A ∩ S|, |A ∩ P|."""

    predicted: int = 0
    sure: int = 0
    predicted_sure: int = 0
    predicted_possible: int = 0

    def add(self, predicted: set[Link], sure: set[Link], possible: set[Link]) -> None:
        possible = possible | sure
        self.predicted += len(predicted)
        self.sure += len(sure)
        self.predicted_sure += len(predicted & sure)
        self.predicted_possible += len(predicted & possible)

    def scores(self) -> dict[str, float]:
        """precision = |A∩P|/|A|, recall = |A∩S|/|S|, AER = 1 − (|A∩S| + |A∩P|)/(|A| + |S|); a
        score whose denominator is 0 (no links predicted, no sure gold, no data) is undefined:
        NaN, which the metrics' JSON writes as null, not a perfect 0 % AER or a 0 % precision."""
        total = self.predicted + self.sure
        undefined = float("nan")
        return {
            "aer": 1.0 - (self.predicted_sure + self.predicted_possible) / total if total else undefined,
            "precision": self.predicted_possible / self.predicted if self.predicted else undefined,
            "recall": self.predicted_sure / self.sure if self.sure else undefined,
        }


def alignment_scores(items: Iterable[tuple[set[Link], set[Link], set[Link]]]) -> dict[str, float]:
    """AER, precision and recall over a corpus of (predicted, sure, possible) link sets."""
    counts = AlignmentCounts()
    for predicted, sure, possible in items:
        counts.add(predicted, sure, possible)
    return counts.scores()


@dataclass(frozen=True)
class GoldPair:
    """A sentence pair of an alignment gold: its words (space-separated) and links (0-based)."""

    source: str
    target: str
    sure: frozenset[Link]
    possible: frozenset[Link]  # includes the sure links


def read_gold(text: Path, links: Path, *, one_based: bool = True) -> list[GoldPair]:
    """A gold standard in the awesome-align layout: ``text`` holds ``source ||| target`` a line,
    ``links`` the same line's gold (:func:`parse_links`). A line without one ``|||``, a link
    outside its sentence, or files of different lengths: a one-line ``DataError`` naming the
    file and line."""
    pairs = []
    for n, (line, gold) in enumerate(zip_longest(_read_lines(text), _read_lines(links)), 1):
        if line is None or gold is None:
            shorter, longer = (text, links) if line is None else (links, text)
            raise DataError(f"{longer} line {n}: {shorter} has only {_lines(n - 1)}; the files must be line-aligned")
        sides = line.split(" ||| ")
        if len(sides) != 2 or not all(side.split() for side in sides):
            raise DataError(f"{text} line {n}: expected 'source words ||| target words'")
        source, target = (" ".join(side.split()) for side in sides)
        sure, possible = parse_links(gold, one_based=one_based, where=f"{links} line {n}")
        n_src, n_tgt = len(source.split()), len(target.split())
        for s, t in sorted(possible):
            if s >= n_src or t >= n_tgt:
                raise DataError(
                    f"{links} line {n}: link {s + one_based}-{t + one_based} outside the sentence "
                    f"({n_src} source words, {n_tgt} target words)"
                )
        pairs.append(GoldPair(source, target, frozenset(sure), frozenset(possible)))
    return pairs


# ------------------------------------------------------------------------------ maps -> links
@dataclass(frozen=True)
class AlignMethod:
    """How cross-attention becomes links (see the module's docstring)."""

    layers: tuple[int, ...] | None = None  # decoder layers averaged (None: all)
    heads: tuple[int, ...] | None = None  # heads averaged (None: all)
    shift: bool = False  # rows: the step reading target piece j (True) or predicting it (False)
    extract: Extract = "argmax"
    threshold: float = 0.5
    direction: Direction = "grow-diag-final"

    def __post_init__(self) -> None:
        # Checked when built: a wrong value would otherwise fail deep inside the first alignment.
        for name in ("layers", "heads"):
            chosen = getattr(self, name)
            if chosen is None:
                continue
            numbers = isinstance(chosen, tuple | list) and all(type(i) is int for i in chosen)
            if not chosen or not numbers:
                raise UserError(f"AlignMethod {name}={chosen!r}: a tuple of numbers, e.g. (0, 2), or None for all")
            object.__setattr__(self, name, tuple(chosen))  # frozen; a list given is kept as a tuple
        for name, allowed in (("extract", get_args(Extract)), ("direction", get_args(Direction))):
            if getattr(self, name) not in allowed:
                raise UserError(f"AlignMethod {name}={getattr(self, name)!r}: one of {', '.join(allowed)}")
        if type(self.threshold) not in (int, float) or not 0.0 < self.threshold <= 1.0:
            raise UserError(f"AlignMethod threshold={self.threshold!r}: an attention weight in (0, 1]")

    def describe(self) -> str:
        layers = "all layers" if self.layers is None else "layer " + ",".join(map(str, self.layers))
        heads = "all heads" if self.heads is None else "head " + ",".join(map(str, self.heads))
        extract = self.extract if self.extract == "argmax" else f"threshold {self.threshold}"
        return f"{layers}, {heads}, {'shifted, ' if self.shift else ''}{extract}, {self.direction}"


def method_map(maps: dict[str, Tensor], names: Sequence[str], method: AlignMethod) -> Tensor:
    """The (T, S) piece map a method reads: the chosen modules' (H, T + 1, S) maps, chosen heads,
    averaged; rows 0..T-1 (the steps predicting each target piece) or 1..T (shifted). A head
    named twice (``0,0`` or ``1,-1`` of two) counts once, as a layer does (:func:`module_names`)."""
    chosen = [maps[n] for n in names]
    stacked = torch.stack(chosen)  # (L, H, T + 1, S)
    if method.heads is not None:
        n_heads = stacked.shape[1]
        stacked = stacked[:, list(dict.fromkeys(h % n_heads for h in method.heads))]
    mean = stacked.mean((0, 1))  # (T + 1, S)
    return mean[1:] if method.shift else mean[:-1]


def align_maps(
    weights: Tensor, target_words: Sequence[int | None], source_words: Sequence[int | None], method: AlignMethod
) -> set[Link]:
    """Links between words from one (T, S) piece map (rows target pieces, columns source pieces)."""
    words = merge_pieces(weights, target_words, source_words)  # (Wt, Ws)
    # A word with no pieces (dropped by the tokenizer, or cut off) has an all-zero row or column:
    # its argmax would be word 0, a link nothing attended to.
    real = {(s, t) for s in set(source_words) - {None} for t in set(target_words) - {None}}
    t2s = directional_links(words, "target", method.extract, method.threshold) & real
    s2t = set()
    if method.direction != "target":
        s2t = directional_links(words, "source", method.extract, method.threshold) & real
    return symmetrize(s2t, t2s, method.direction)


def module_names(model: nn.Module, layers: tuple[int, ...] | None) -> list[str]:
    """The cross-attention modules of the chosen decoder layers (model.cross_attention_name)."""
    n_layers = len(getattr(getattr(model, "decoder", None), "layers", [None]))
    chosen = range(n_layers) if layers is None else layers
    names = []
    for layer in chosen:
        if not -n_layers <= layer < n_layers:
            raise DataError(f"decoder layer {layer}: the model has {n_layers} (0..{n_layers - 1})")
        names.append(model.cross_attention_name(layer))
    return list(dict.fromkeys(names))


class Alignment(set[Link]):
    """One pair's links, a set of (source word, target word), and how many pieces of each side
    lay past the model's positions (``max_len``; the target's ``max_len - 1``, after <bos>): they
    were cut off before the forced pass, so their words have no links (0: the whole side)."""

    def __init__(self, links: Iterable[Link] = (), *, source_cut: int = 0, target_cut: int = 0):
        super().__init__(links)
        self.source_cut = source_cut
        self.target_cut = target_cut


def forced_alignments(
    model: nn.Module,
    src_tok,
    tgt_tok,
    pairs: Iterable[tuple[str, str]],
    method: AlignMethod,
    *,
    batch_tokens: int = 4096,
    chunk: int = 1024,
) -> Iterator[Alignment]:
    """Per (source, target) pair, in order, the word links of ``method`` from forced decoding
    of the target (an :class:`Alignment`, which says what was cut to the model's positions).
    Pairs are read ``chunk`` at a time and run in token batches of similar length: memory
    depends on the chunk, not on how many pairs there are."""
    names = module_names(model, method.layers)
    n_heads = getattr(model.config, "n_heads", 1)  # an RNN's content attention has one
    for head in method.heads or ():
        if not -n_heads <= head < n_heads:
            raise DataError(f"head {head}: the model's cross-attention has {n_heads} (0..{n_heads - 1})")
    max_len = model.config.max_len
    model.eval()
    iterator = iter(pairs)
    while batch := list(islice(iterator, chunk)):
        sources = [encode_words(src_tok, s) for s, _ in batch]  # (ids, word of each id)
        targets = [encode_words(tgt_tok, t) for _, t in batch]
        src_ids = [ids[:max_len] for ids, _ in sources]
        tgt_ids = [ids[: max_len - 1] for ids, _ in targets]  # and <bos> before them
        maps = cross_attention_maps(
            model, src_ids, tgt_ids, bos=tgt_tok.bos_id, pad=tgt_tok.pad_id, batch_tokens=batch_tokens
        )
        for (_, src_words), (_, tgt_words), s, t, m in zip(sources, targets, src_ids, tgt_ids, maps, strict=True):
            piece_map = method_map(m, names, method)  # (T, S)
            links = align_maps(piece_map, tgt_words[: len(t)], src_words[: len(s)], method)
            yield Alignment(links, source_cut=len(src_words) - len(s), target_cut=len(tgt_words) - len(t))


def checked_pairs(sources: Iterable[str], targets: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(source, target) pairs, lazily, refusing an empty side or one side running out first
    (``DataError`` naming the side and the pair, 1-based)."""
    sides = ("sources", "targets")
    n = 0
    ended = object()  # not None: a None given is a wrong input, not a side that ran out
    for n, pair in enumerate(zip_longest(sources, targets, fillvalue=ended), 1):
        for side, text in zip(sides, pair, strict=True):
            if text is ended:
                raise DataError(f"{side}: ends at pair {n - 1}, the other side goes on; pairs must match one to one")
            if not isinstance(text, str):
                raise DataError(f"{side} line {n}: {type(text).__name__} {text!r:.30}; expected a text (str)")
            if not text.strip():
                raise DataError(f"{side} line {n}: empty line: nothing to align")
        yield pair


def _lines(n: int) -> str:
    return f"{n} line{'s' * (n != 1)}"


def parallel_lines(source: Path, target: Path) -> Iterator[tuple[str, str]]:
    """The line pairs of two line-aligned files (gzip when a name ends in ``.gz``), streamed.
    Both files are checked first (one pass, nothing held): the same number of lines, none
    empty, valid UTF-8; else a one-line ``DataError`` naming the file and line."""
    counts = []
    for path in (source, target):
        if path.is_dir():
            raise DataError(f"{path}: is a folder; expected a text file, one sentence per line")
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        n = 0
        for n, line in enumerate(_read_lines(path), 1):
            if not line.strip():
                raise DataError(f"{path} line {n}: empty line: nothing to align")
            refuse_nul(line, f"{path} line {n}")
        counts.append(n)
    if counts[0] != counts[1]:
        longer, shorter = (source, target) if counts[0] > counts[1] else (target, source)
        raise DataError(
            f"{longer} line {min(counts) + 1}: {shorter} has only {_lines(min(counts))} "
            f"({source}: {counts[0]}, {target}: {counts[1]}); the files must be line-aligned"
        )
    for s, t in zip(_read_lines(source), _read_lines(target), strict=True):
        yield s.rstrip("\n").removesuffix("\r"), t.rstrip("\n").removesuffix("\r")


def _read_lines(path: Path) -> Iterator[str]:
    """A text file's lines, each read when it is asked for (through gzip when the name ends in
    ``.gz``, so ``train.en.gz`` streams without being unpacked), split on ``\\n`` only and decoded
    one by one, so a bad byte or a broken gzip stream is a ``DataError`` naming the line."""
    n = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as raw:
            for line in raw:
                n += 1  # the line being decoded, for the message
                yield line.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} line {n}: not valid UTF-8") from None
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"{path}: no such file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc or 'truncated'})") from None
    except OSError as exc:  # e.g. no permission to read it
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


# ------------------------------------------------------------------------------ the dates' gold
def alignment_hits(weights: Tensor, examples: list[DateExample]) -> tuple[int, int]:
    """How often the source character that a target digit attends to most (mean over heads)
    lies inside the gold span of its field (day, month, year); counts (hits, digits).

    weights: (B, H, T, S) cross-attention under teacher forcing; row j predicts target char j.
    """
    most_attended = weights.mean(1).argmax(-1).cpu()  # (B, T)
    hits = total = 0
    for i, example in enumerate(examples):
        for field, (t_start, t_end) in ISO_SPANS.items():
            s_start, s_end = example.spans[field]
            for j in range(t_start, t_end):
                hits += s_start <= int(most_attended[i, j]) < s_end
                total += 1
    return hits, total


def date_fields(example: DateExample) -> tuple[list[int | None], list[int | None], set[Link]]:
    """The field-level units of a date: per target character its ISO field (year 0, month 1,
    day 2; the dashes none), per source character its field (the same numbers where the
    field exists, weekday 3, everything else none), and the gold links {(f, f)}: each ISO field
    to the source characters that wrote it."""
    order = list(ISO_SPANS)  # year, month, day
    target: list[int | None] = [None] * len(example.target)
    for f, (start, end) in enumerate(ISO_SPANS.values()):
        target[start:end] = [f] * (end - start)
    source: list[int | None] = [None] * len(example.source)
    for field, (start, end) in example.spans.items():
        f = order.index(field) if field in order else len(order)
        source[start:end] = [f] * (end - start)
    return target, source, {(f, f) for f in range(len(order)) if order[f] in example.spans}


def date_alignment_scores(
    model: nn.Module,
    src_tok,
    tgt_tok,
    examples: list[DateExample],
    methods: dict[str, AlignMethod],
    *,
    batch_tokens: int = 4096,
) -> dict[str, dict[str, float]]:
    """Per method, AER / precision / recall at the field level over dates (gold by construction:
    each ISO field links to the source characters Babel wrote it from; :func:`date_fields`).
    One forced pass serves every method."""
    src_ids = [src_tok.encode(e.source)[: model.config.max_len] for e in examples]
    tgt_ids = [tgt_tok.encode(e.target) for e in examples]
    counts = {name: AlignmentCounts() for name in methods}
    names = {name: module_names(model, method.layers) for name, method in methods.items()}
    for start in range(0, len(examples), 512):  # bounded memory: maps of 512 dates at a time
        chunk = slice(start, start + 512)
        maps = cross_attention_maps(
            model, src_ids[chunk], tgt_ids[chunk], bos=tgt_tok.bos_id, pad=tgt_tok.pad_id, batch_tokens=batch_tokens
        )
        for example, m in zip(examples[chunk], maps, strict=True):
            target, source, gold = date_fields(example)
            for name, method in methods.items():
                links = align_maps(method_map(m, names[name], method), target, source, method)
                counts[name].add(links, gold, gold)
    return {name: c.scores() for name, c in counts.items()}


def add_date_field_links(weights: Tensor, examples: list[DateExample], counts: AlignmentCounts) -> None:
    """Add each date's field links to ``counts``: the teacher-forced cross-attention of one module,
    (B, H, T + 1, S) (row j predicts target character j), mean over heads, each ISO field to the
    source field it attends to most (``AlignMethod(direction="target")``)."""
    method = AlignMethod(direction="target")
    for row, example in enumerate(examples):
        target, source, gold = date_fields(example)
        piece_map = weights[row].float().mean(0)[: len(target), : len(source)].cpu()  # (T, S)
        counts.add(align_maps(piece_map, target, source, method), gold, gold)
