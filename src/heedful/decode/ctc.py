"""Turning a CTC model's per-frame distributions into label sequences, and scoring them.

A CTC model (Graves et al. 2006) emits, for every frame, a distribution over the labels plus a
*blank*. A label sequence is read off an alignment by collapsing repeats and then dropping blanks
("1 1 _ 1" → "11"), so one sequence has many alignments and its probability is their sum.

- Greedy (best path) decoding collapses the single most likely alignment. It is fast and
  usually right when the model is confident, but the best alignment need not belong to the
  best sequence.
- Prefix beam search (Hannun et al. 2014, "First-Pass Large Vocabulary Continuous Speech
  Recognition using Bi-Directional Recurrent DNNs", Algorithm 1, here without a language model)
  keeps the ``beam_size`` most probable *prefixes*, each with the summed probability of the
  alignments that end in a blank and of those that end in its last label, so it ranks
  sequences by (approximately, given the pruning) their total probability.

Everything here works on log-probabilities: products become sums and sums ``logaddexp``.
Scores are digit error rate (WER with every digit a word, via jiwer) and sentence accuracy.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor

from heedful.extras import optional_import

NEG_INF = float("-inf")


def ctc_greedy_decode(log_probs: Tensor, blank: int = 0, lengths: Tensor | None = None) -> list[list[int]]:
    """Best-path decoding: argmax per frame, collapse repeats, drop blanks.

    log_probs: (T, V) or (B, T, V) (probabilities or logits work too: only the argmax matters).
    lengths: (B,) valid frames per row, for padded batches. Returns one label list per row.
    """
    if log_probs.ndim == 2:
        log_probs = log_probs.unsqueeze(0)  # (1, T, V)
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must be (T, V) or (B, T, V), got shape {tuple(log_probs.shape)}")
    B, T, V = log_probs.shape
    _check_blank(blank, V)
    if lengths is None:
        lengths = torch.full((B,), T)
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (B,) or bool((lengths < 0).any()) or bool((lengths > T).any()):
        raise ValueError(f"lengths must be (B,) = ({B},) with values in [0, {T}], got {lengths.tolist()}")
    best = log_probs.argmax(dim=-1).cpu()  # (B, T)
    out = []
    for row, length in zip(best, lengths.tolist(), strict=True):
        path = torch.unique_consecutive(row[:length])  # collapse repeats
        out.append([int(k) for k in path if k != blank])
    return out


def ctc_beam_decode(log_probs: Tensor, beam_size: int = 8, blank: int = 0) -> list[tuple[list[int], float]]:
    """CTC prefix beam search without a language model.

    log_probs: (T, V) normalised log-probabilities of one utterance. Returns up to ``beam_size``
    ``(labels, log_prob)`` pairs, most probable first, where ``log_prob`` is the log of the
    summed probability of the alignments of ``labels`` that survived the pruning (exactly the
    sequence's total probability when nothing was pruned).
    """
    if log_probs.ndim != 2:
        raise ValueError(f"ctc_beam_decode takes one utterance (T, V), got shape {tuple(log_probs.shape)}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    _check_blank(blank, log_probs.shape[1])
    frames = log_probs.detach().double().cpu().tolist()  # plain floats: this loop is scalar work
    # prefix -> (log P(alignments ending in blank), log P(alignments ending in the last label))
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}
    for frame in frames:
        beams = _extend(beams, frame, blank)
        beams = dict(sorted(beams.items(), key=lambda item: -_logaddexp(*item[1]))[:beam_size])
    ranked = sorted(((list(p), _logaddexp(b, nb)) for p, (b, nb) in beams.items()), key=lambda h: -h[1])
    return ranked


def _extend(
    beams: dict[tuple[int, ...], tuple[float, float]], frame: list[float], blank: int
) -> dict[tuple[int, ...], tuple[float, float]]:
    """One frame of prefix beam search: every prefix × every symbol."""
    nxt: defaultdict[tuple[int, ...], list[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
    for prefix, (p_b, p_nb) in beams.items():
        p_total = _logaddexp(p_b, p_nb)
        last = prefix[-1] if prefix else None
        for k, p in enumerate(frame):
            if p == NEG_INF:
                continue
            if k == blank:  # the prefix stays, now ending in blank
                nxt[prefix][0] = _logaddexp(nxt[prefix][0], p_total + p)
            elif k == last:
                # "a" + "a": without a blank between, the repeat collapses into the same prefix;
                # after a blank it starts a new "aa".
                nxt[prefix][1] = _logaddexp(nxt[prefix][1], p_nb + p)
                nxt[(*prefix, k)][1] = _logaddexp(nxt[(*prefix, k)][1], p_b + p)
            else:
                nxt[(*prefix, k)][1] = _logaddexp(nxt[(*prefix, k)][1], p_total + p)
    # A repeat with no blank before it can create a prefix no alignment reaches: drop those.
    return {prefix: (b, nb) for prefix, (b, nb) in nxt.items() if b != NEG_INF or nb != NEG_INF}


def _logaddexp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow, and exact when either side is -inf."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log1p(math.exp(low - high))


def _check_blank(blank: int, vocab_size: int) -> None:
    if not 0 <= blank < vocab_size:
        raise ValueError(f"blank id {blank} is outside the vocabulary of {vocab_size} symbols")


# --------------------------------------------------------------------------------------------
# Scores


def ctc_transcribe(log_probs: Tensor, lengths: Tensor, beam_size: int = 1) -> list[tuple[list[int], float]]:
    """Per utterance of ``log_probs`` (B, T', V), its first ``lengths[b]`` frames: the best symbol
    sequence (greedy, or prefix beam search when ``beam_size`` > 1) and its probability — the
    total over the alignments that spell it (for greedy: CTC's forward algorithm on that output)."""
    out = []
    for i in range(log_probs.shape[0]):
        lp = log_probs[i, : lengths[i]]  # (T_i, V)
        if beam_size > 1:
            seq, score = ctc_beam_decode(lp, beam_size=beam_size)[0]
        else:
            seq = ctc_greedy_decode(lp)[0]
            target = torch.tensor([seq]) if seq else torch.zeros(1, 0, dtype=torch.long)
            score = -float(F.ctc_loss(lp[:, None], target, torch.tensor([lp.shape[0]]), torch.tensor([len(seq)]),
                                      blank=0, reduction="sum", zero_infinity=True))  # fmt: skip
        out.append((seq, float(torch.tensor(score).exp())))
    return out


def digit_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Word error rate with each digit a word: (substitutions + deletions + insertions) / number
    of reference digits, over the whole corpus. ``"4071"`` and ``"4 0 7 1"`` are the same string.
    """
    refs_, hyps_ = _check_pairs(refs, hyps)
    jiwer = optional_import("jiwer", "the digit error rate")
    return float(jiwer.wer([" ".join(r) for r in refs_], [" ".join(h) for h in hyps_]))


def sentence_accuracy(refs: list[str], hyps: list[str]) -> float:
    """The fraction of utterances whose hypothesis equals the reference exactly."""
    refs_, hyps_ = _check_pairs(refs, hyps)
    return sum(r == h for r, h in zip(refs_, hyps_, strict=True)) / len(refs_)


def _check_pairs(refs: list[str], hyps: list[str]) -> tuple[list[str], list[str]]:
    """Whitespace-free copies of refs and hyps, after checking they pair up and no ref is empty."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no references to score")
    refs_ = ["".join(r.split()) for r in refs]
    hyps_ = ["".join(h.split()) for h in hyps]
    empty = [i for i, r in enumerate(refs_) if not r]
    if empty:
        raise ValueError(f"reference {empty[0]} is empty: every utterance needs at least one digit")
    return refs_, hyps_
