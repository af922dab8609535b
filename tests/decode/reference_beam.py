"""The straightforward beam search (a Python loop over sentences and candidates, every beam
row decoded from step 0): the reference the batched, vectorised ``heedful.decode.beam_search``
must agree with hypothesis for hypothesis."""

from __future__ import annotations

import torch
from torch import Tensor

from heedful.decode.beam import Hypothesis, length_penalty


@torch.no_grad()
def reference_beam_search(
    model,
    src: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int = 5,
    max_len: int | Tensor = 100,
    alpha: float = 1.0,
    n_best: int = 1,
    min_len: int = 0,
) -> list[list[Hypothesis]]:
    """src: (B, S) -> for each sentence, its ``n_best`` hypotheses, best first.

    ``max_len`` may be one int or a (B,) tensor (e.g. a ratio of each source length).
    ``min_len``: <eos> has log-probability −∞ at the steps before it.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    B, K = src.shape[0], beam_size
    device = src.device
    limits = max_len.tolist() if isinstance(max_len, Tensor) else [int(max_len)] * B
    memory, padding = model.encode(src)
    memory = memory.repeat_interleave(K, dim=0)  # (B·K, S, D)
    padding = padding.repeat_interleave(K, dim=0)
    cache = model.new_cache()

    # Only the first beam of each sentence is live at step 0; the others start at −inf.
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)  # (B·K, t + 1)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B

    for step in range(max(limits)):
        logits = model.decode(tokens[:, -1:], memory, padding, cache)[:, -1].float()  # (B·K, V)
        log_probs = logits.log_softmax(-1)
        if step < min_len:
            log_probs[:, eos_id] = float("-inf")
        V = log_probs.shape[-1]
        candidates = (scores.view(B, K, 1) + log_probs.view(B, K, V)).view(B, K * V)  # (B, K·V)
        top_scores, top_index = candidates.topk(2 * K, dim=-1)  # room for K live beams after <eos>s
        beam_of, token_of = top_index // V, top_index % V  # (B, 2K)

        new_scores = torch.full((B, K), float("-inf"), device=device)
        origin = torch.zeros(B, K, dtype=torch.long, device=device)
        next_token = torch.full((B, K), eos_id, dtype=torch.long, device=device)
        length = step + 1
        for b in range(B):
            if done[b]:
                continue
            kept = 0
            for j in range(2 * K):
                score = float(top_scores[b, j])
                if score == float("-inf"):
                    break
                source_row = b * K + int(beam_of[b, j])
                if int(token_of[b, j]) == eos_id or length >= limits[b]:
                    body = tokens[source_row, 1:].tolist()
                    ended = int(token_of[b, j]) == eos_id
                    if not ended:
                        body.append(int(token_of[b, j]))
                    finished[b].append(Hypothesis(body, score / length_penalty(len(body), alpha), score, ended))
                    continue
                if kept < K:
                    new_scores[b, kept], origin[b, kept], next_token[b, kept] = (
                        score,
                        int(beam_of[b, j]),
                        token_of[b, j],
                    )
                    kept += 1
            finished[b] = sorted(finished[b], key=lambda h: h.score, reverse=True)[:K]
            done[b] = length >= limits[b] or _settled(finished[b], new_scores[b], K, limits[b], alpha)
        if all(done):
            break
        rows = (torch.arange(B, device=device)[:, None] * K + origin).view(-1)  # (B·K,)
        cache.reorder(rows)
        tokens = torch.cat([tokens[rows], next_token.view(-1, 1)], dim=1)
        scores = new_scores

    return [hyps[:n_best] for hyps in finished]


def _settled(finished: list[Hypothesis], live: Tensor, K: int, limit: int, alpha: float) -> bool:
    """Done when K hypotheses have finished and the best live beam, even if it ended now at its
    most favourable length, could not beat the worst of them (log-probabilities only fall)."""
    if len(finished) < K:
        return False
    best_live = float(live.max())
    if best_live == float("-inf"):
        return True
    # A longer hypothesis gets a larger penalty divisor when alpha > 0, so its best case is the
    # longest allowed length; with alpha = 0 the divisor is 1.
    best_case = best_live / (length_penalty(limit, alpha) if best_live < 0 else 1.0)
    return best_case <= min(h.score for h in finished)
