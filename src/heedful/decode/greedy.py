"""Greedy decoding with the key/value cache: each step feeds only the newest token."""

from __future__ import annotations

import torch
from torch import Tensor

from heedful.attention.cache import CacheArena
from heedful.decode.beam import DROP_SETTLED, follow_rows, new_cache
from heedful.models.transformer import TransformerEncoderDecoder
from heedful.nn.packed import packed_linears


@torch.no_grad()
def greedy_decode(
    model: TransformerEncoderDecoder,
    src: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int,
    min_len: int = 0,
    prepacked: bool = True,
    arena: CacheArena | None = None,
) -> tuple[Tensor, Tensor]:
    """Pick the most likely next token until every row has produced <eos> or ``max_len`` tokens.

    src: (B, S) ids  ->  tokens (B, L) without <bos> (<pad> after a row's <eos>), and each row's
    summed log-probability (B,). Rows that have ended leave the batch once they are DROP_SETTLED
    of it (a ``cache.reorder``), so later steps decode only the rows still running.
    ``min_len``, ``prepacked``, ``arena``: as in :func:`heedful.decode.beam_search`.
    """
    with packed_linears(model, enabled=prepacked), (arena or CacheArena()).lease() as leased:
        return _search(model, src, bos_id, eos_id, max_len, min_len, leased)


def _search(
    model, src: Tensor, bos_id: int, eos_id: int, max_len: int, min_len: int, arena: CacheArena
) -> tuple[Tensor, Tensor]:
    pad_id = model.config.pad_id
    memory, padding = model.encode(src)  # (B, S, D), (B, S)
    cache = new_cache(model, max_len, arena)
    B, device = src.shape[0], src.device
    out = torch.full((B, max_len), pad_id, dtype=torch.long, device=device)  # (B, max_len)
    log_prob = torch.zeros(B, device=device)
    rows = torch.arange(B, device=device)  # the row of `out` each batch row decodes
    last = torch.full((B, 1), bos_id, dtype=torch.long, device=device)  # (B_now, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=device)  # (B_now,)
    steps = 0
    for step in range(max_len):
        logits = model.decode(last, memory, padding, cache)[:, -1].float()  # (B_now, V)
        step_log_probs = logits.log_softmax(-1)
        if step < min_len and 0 <= eos_id < step_log_probs.shape[-1]:  # too short to end yet
            step_log_probs[:, eos_id] = float("-inf")
        best = step_log_probs.argmax(-1)  # (B_now,)
        log_prob[rows] += torch.where(finished, 0.0, step_log_probs.gather(-1, best[:, None]).squeeze(-1))
        best = torch.where(finished, pad_id, best)
        out[rows, step] = best
        steps = step + 1
        finished |= best == eos_id
        if finished.all():
            break
        if int(finished.sum()) >= DROP_SETTLED * finished.shape[0]:  # ended rows leave the batch
            keep = (~finished).nonzero().squeeze(1)  # (B_kept,)
            rows, best, finished = rows[keep], best[keep], finished[keep]
            memory, padding = follow_rows(cache, memory, keep), padding[keep]
            cache.reorder(keep)
        last = best[:, None]
    return out[:, :steps], log_prob  # (B, L), (B,)
