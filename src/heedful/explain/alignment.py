"""Cross-attention of encoder–decoder models: the maps a decoded output saw, and how well they
agree with gold alignments (the dates task knows which source characters make each ISO field)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from heedful.data.builtin import ISO_SPANS, DateExample
from heedful.data.parallel import batches_by_length
from heedful.data.tokenizers import pad_ids
from heedful.explain.capture import Captured, capture


def stacked_attention(seen: Captured, name: str) -> Tensor:
    """A module's attention over the whole target, (B, H, T, S): one call for the Transformer,
    one call per step for an RNN decoder that attends before each step."""
    return torch.cat(seen.calls(name), dim=-2)


def cross_attention_maps(
    model: nn.Module, src_ids: list[list[int]], out_ids: list[list[int]], *, bos: int, pad: int, batch_tokens: int
) -> list[dict[str, Tensor]]:
    """Teacher-forced pass over the decoded outputs (the same attention decoding saw, as the
    decoder is causal): per example, every cross-attention module's (H, T_out + 1, S) map."""
    device = next(model.parameters()).device
    sizes = [max(len(s), len(o) + 1) for s, o in zip(src_ids, out_ids, strict=True)]
    maps: list[dict[str, Tensor]] = [{}] * len(src_ids)
    for indices in batches_by_length(sizes, batch_tokens):
        src = pad_ids([src_ids[i] for i in indices], pad).to(device)  # (B, S)
        tgt_in = pad_ids([[bos, *out_ids[i]] for i in indices], pad).to(device)  # (B, T + 1)
        with capture(model) as seen:
            model(src, tgt_in)
        for row, i in enumerate(indices):
            s, t = len(src_ids[i]), len(out_ids[i])
            maps[i] = {
                k: stacked_attention(seen, k)[row, :, : t + 1, :s].float().cpu() for k in seen if "cross_attn" in k
            }
    return maps


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
