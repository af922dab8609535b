"""Batched beam search over any encoder–decoder that speaks the decoding protocol:

    memory, padding = model.encode(src)                  # (B, S, D), (B, S)
    cache = model.new_cache()                            # .reorder(index, sources_unchanged=False)
    logits = model.decode(tokens, memory, padding, cache)  # new tokens only: (B, 1) -> (B, 1, V)

Every source sentence keeps ``beam_size`` live hypotheses, expanded as rows of one batch of
B·K, so one decoder call per step serves all of them; the cache is re-ordered when beams are
re-ranked (``sources_unchanged=True`` then: rows stay within their sentence, so a cache may keep
per-source state such as cross-attention keys as it is). The first step decodes only B rows —
every sentence has one live beam then — and expands to B·K after it.

A hypothesis that emits <eos> is set aside with its score normalised by the GNMT
length penalty ((5 + |y|) / 6)^α (Wu et al. 2016); a sentence is done when it has ``beam_size``
finished hypotheses and no live one can still beat them, or at ``max_len``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Hypothesis:
    tokens: list[int]  # without <bos> and <eos>
    score: float  # length-normalised log-probability
    log_prob: float  # raw sum of token log-probabilities (including <eos> when it ended)
    ended: bool = True  # False when cut off at max_len without <eos>


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model,
    src: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int = 5,
    max_len: int | Tensor = 100,
    alpha: float = 1.0,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """src: (B, S) -> for each sentence, its ``n_best`` hypotheses, best first.

    ``max_len`` may be one int or a (B,) tensor (e.g. a ratio of each source length).
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    B, K = src.shape[0], beam_size
    device = src.device
    limits = max_len.tolist() if isinstance(max_len, Tensor) else [int(max_len)] * B
    limit_t = torch.tensor(limits, device=device)  # (B,)
    # The best a live beam could still score, divided by the largest length penalty it can reach.
    best_divisor = ((5.0 + limit_t.float()) / 6.0) ** alpha  # (B,)
    memory, padding = model.encode(src)  # (B, S, D), (B, S)
    cache = model.new_cache()
    inf = float("-inf")
    slots = torch.arange(2 * K, device=device)

    # Step 0 has one live beam per sentence: decode B rows, and expand to B·K rows after it.
    k_now = 1
    scores = torch.zeros(B, 1, device=device)  # (B, k_now): each live beam's log-probability
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)  # (B·k_now, t + 1)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    n_finished = torch.zeros(B, dtype=torch.long, device=device)
    worst_finished = torch.full((B,), inf, device=device)  # the lowest score among the kept finished
    done = torch.zeros(B, dtype=torch.bool, device=device)

    for step in range(max(limits)):
        logits = model.decode(tokens[:, -1:], memory, padding, cache)[:, -1].float()  # (B·k_now, V)
        V = logits.shape[-1]
        # The 2K best continuations of a sentence (2K: room for K live beams after <eos>s) are
        # among the 2K best tokens of each of its beams, and log p = logit − log Σ exp(logits):
        # so each row's top tokens and its normaliser are all the step needs from the (B·k, V)
        # logits — two reads of them, where log-softmax, adding the beam scores and a top-k over
        # k·V candidates would make five passes.
        per_row = min(2 * K, V)
        row_top, row_token = logits.topk(per_row, dim=-1)  # (B·k_now, per_row)
        row_scores = row_top - torch.logsumexp(logits, dim=-1, keepdim=True)  # log-probabilities
        candidates = (scores.view(B, k_now, 1) + row_scores.view(B, k_now, per_row)).view(B, k_now * per_row)
        top_scores, top_index = candidates.topk(min(2 * K, k_now * per_row), dim=-1)  # (B, ≤ 2K)
        beam_of = top_index // per_row
        token_of = row_token.view(B, k_now * per_row).gather(1, top_index)
        if top_scores.shape[1] < 2 * K:  # a vocabulary below 2K: pad with impossible candidates
            top_scores = F.pad(top_scores, (0, 2 * K - top_scores.shape[1]), value=inf)
            beam_of = F.pad(beam_of, (0, 2 * K - beam_of.shape[1]), value=0)
            token_of = F.pad(token_of, (0, 2 * K - token_of.shape[1]), value=0)
        length = step + 1

        # Every candidate either ends (<eos>, or the sentence's length limit) or may continue;
        # the K best that continue become the next beams — all as tensor operations.
        real = (top_scores > inf) & ~done[:, None]
        ends = real & ((token_of == eos_id) | (length >= limit_t)[:, None])
        live = real & ~ends
        take = live & (live.cumsum(-1) <= K)
        order = torch.where(take, slots, slots + 2 * K).argsort(-1)[:, :K]  # taken ones first, by rank
        kept = take.gather(1, order)  # (B, K)
        new_scores = torch.where(kept, top_scores.gather(1, order), inf)
        origin = torch.where(kept, beam_of.gather(1, order), 0)
        next_token = torch.where(kept, token_of.gather(1, order), bos_id)  # a valid id even where unused

        if ends.any():  # only the (few) hypotheses that end go through Python
            touched = set()
            for b, j in ends.nonzero().tolist():
                token, row = int(token_of[b, j]), b * k_now + int(beam_of[b, j])
                ended = token == eos_id
                body = tokens[row, 1:].tolist() + ([] if ended else [token])
                score = float(top_scores[b, j])
                finished[b].append(Hypothesis(body, score / length_penalty(len(body), alpha), score, ended))
                touched.add(b)
            for b in touched:
                finished[b] = sorted(finished[b], key=lambda h: h.score, reverse=True)[:K]
                n_finished[b] = len(finished[b])
                worst_finished[b] = finished[b][-1].score
        # Settled: K hypotheses finished and no live beam, even ending at its most favourable
        # length, could beat the worst of them (log-probabilities only fall).
        best_live = new_scores.max(-1).values  # (B,)
        best_case = best_live / torch.where(best_live < 0, best_divisor, torch.ones_like(best_divisor))
        settled = (n_finished >= K) & ((best_live == inf) | (best_case <= worst_finished))
        done |= (length >= limit_t) | settled
        if bool(done.all()):
            break
        rows = (torch.arange(B, device=device)[:, None] * k_now + origin).view(-1)  # (B·K,)
        if k_now == 1:  # expand every per-sentence state from B to B·K rows, once
            memory, padding = memory[rows], padding[rows]
            cache.reorder(rows)
            k_now = K
        else:  # beams move only within their sentence: per-source state stays as it is
            cache.reorder(rows, sources_unchanged=True)
        tokens = torch.cat([tokens[rows], next_token.view(-1, 1)], dim=1)
        scores = new_scores

    return [hyps[:n_best] for hyps in finished]
