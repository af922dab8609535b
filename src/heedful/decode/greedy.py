"""Greedy decoding with the key/value cache: each step feeds only the newest token."""

from __future__ import annotations

import torch
from torch import Tensor

from heedful.models.transformer import TransformerEncoderDecoder


@torch.no_grad()
def greedy_decode(
    model: TransformerEncoderDecoder, src: Tensor, *, bos_id: int, eos_id: int, max_len: int
) -> tuple[Tensor, Tensor]:
    """Pick the most likely next token until every row has produced <eos> or ``max_len`` tokens.

    src: (B, S) ids  ->  tokens (B, L) without <bos> (<pad> after a row's <eos>), and each row's
    summed log-probability (B,).
    """
    pad_id = model.config.pad_id
    memory, padding = model.encode(src)  # (B, S, D), (B, S)
    cache = model.new_cache()
    B = src.shape[0]
    last = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    log_prob = torch.zeros(B, device=src.device)
    steps: list[Tensor] = []
    for _ in range(max_len):
        logits = model.decode(last, memory, padding, cache)[:, -1].float()  # (B, V)
        step_log_probs = logits.log_softmax(-1)
        best = step_log_probs.argmax(-1)  # (B,)
        log_prob += torch.where(finished, 0.0, step_log_probs.gather(-1, best[:, None]).squeeze(-1))
        best = torch.where(finished, pad_id, best)
        steps.append(best)
        finished |= best == eos_id
        if finished.all():
            break
        last = best[:, None]
    return torch.stack(steps, dim=1), log_prob  # (B, L), (B,)
