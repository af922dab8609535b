"""Decoding many sources at once: sources of similar length share a batch of at most a budget of
tokens (source tokens × beam, padding included), each batch is decoded greedily or by beam search,
and the outputs come back in input order."""

from __future__ import annotations

import torch
from torch import nn

from heedful.data.parallel import batches_by_length
from heedful.data.tokenizers import content_ids, pad_ids
from heedful.decode.beam import beam_search
from heedful.decode.greedy import greedy_decode


def decode_in_batches(
    model: nn.Module,
    src_ids: list[list[int]],
    *,
    bos: int,
    eos: int,
    pad: int,
    beam: int,
    budget: int,
    limits: list[int],
    alpha: float,
    early_stopping: bool,
    n_best: int = 1,
) -> list[list[tuple[list[int], float]]]:
    """Decode every source (non-empty id lists); ``limits[i]`` is source i's longest output.
    Returns, in input order, each source's ``n_best`` outputs, best first: ids (no specials) and
    log-probability."""
    device = next(model.parameters()).device
    results: list[list[tuple[list[int], float]]] = [[]] * len(src_ids)
    for indices in batches_by_length([len(s) * beam for s in src_ids], budget):
        src = pad_ids([src_ids[i] for i in indices], pad).to(device)  # (B, S)
        batch_limits = [limits[i] for i in indices]
        if beam == 1:
            # One limit per batch; rows with a lower limit are cut afterwards (their score
            # then counts the tokens past the cut — only rows that never ended are affected).
            tokens, log_prob = greedy_decode(model, src, bos_id=bos, eos_id=eos, max_len=max(batch_limits))
            for row, i in enumerate(indices):
                results[i] = [(content_ids(tokens[row, : limits[i]].tolist(), eos), float(log_prob[row]))]
        else:
            hyps = beam_search(
                model,
                src,
                bos_id=bos,
                eos_id=eos,
                beam_size=beam,
                max_len=torch.tensor(batch_limits),
                alpha=alpha,
                n_best=n_best,
                early_stopping=early_stopping,
            )
            for ranked, i in zip(hyps, indices, strict=True):
                results[i] = [(content_ids(h.tokens, eos), h.log_prob) for h in ranked]
    return results
