"""Ensemble decoding: several encoder–decoders of one vocabulary decode as one model, their
next-token log-probabilities averaged at every step — inside greedy and beam search alike,
since the ensemble speaks the same decoding protocol (``encode``, ``new_cache``, ``decode``):

    log p_ens(y_t | y_<t, x) ∝ (1/M) Σ_m log p_m(y_t | y_<t, x)

(the geometric mean of the members' distributions; the search's own ``log_softmax``
renormalises it). Each member keeps its own encoder output and cache; the memories travel as
one tensor, concatenated on the feature axis (B, S, Σ D_m), so that the searches' row
selection (``memory[rows]``) moves every member's rows together. The members must share the
source and target vocabularies (and so the padding id); their architectures may differ
(Transformer beside GRU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from heedful.attention.cache import CacheArena
from heedful.decode.beam import reserve


class EnsembleCache:
    """One cache per member, re-ordered together."""

    def __init__(self, caches: list):
        self.caches = caches

    def reserve(self, positions: int, arena: CacheArena | None = None) -> None:
        for cache in self.caches:
            reserve(cache, positions, arena)

    def reorder(self, index: Tensor, sources_unchanged: bool = False) -> None:
        for cache in self.caches:
            cache.reorder(index, sources_unchanged=sources_unchanged)


class EnsembleDecoder(nn.Module):
    """Members decoding as one model (their mean log-probabilities as its logits)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        pads = {m.config.pad_id for m in members}
        if len(pads) > 1:
            raise ValueError(f"the members pad with different ids {sorted(pads)}: not one vocabulary")
        self.members = nn.ModuleList(members)
        # What the searches read (pad_id) and the task (max_len: the shortest member's positions).
        self.config = members[0].config.model_copy(update={"max_len": min(m.config.max_len for m in members)})
        self._widths: list[int] = []

    def cross_attention_name(self, layer: int = -1) -> str | None:
        """The first member's cross-attention: what an ensemble's attention maps show."""
        name = self.members[0].cross_attention_name(layer)
        return None if name is None else f"members.0.{name}"

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> every member's memory side by side (B, S, Σ D_m), and the padding (B, S)."""
        memories, padding = [], None
        for member in self.members:
            memory, padding = member.encode(src)
            memories.append(memory)
        self._widths = [m.shape[-1] for m in memories]
        return torch.cat(memories, dim=-1), padding

    def new_cache(self) -> EnsembleCache:
        return EnsembleCache([m.new_cache() for m in self.members])

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_padding: Tensor, cache: EnsembleCache | None = None):
        """(B, T) new tokens -> (B, T, V): the members' mean log-probabilities."""
        memories = memory.split(self._widths, dim=-1)
        caches = cache.caches if cache is not None else [None] * len(self.members)
        total = None
        for member, own_memory, own_cache in zip(self.members, memories, caches, strict=True):
            log_probs = member.decode(tgt_in, own_memory, memory_padding, own_cache).float().log_softmax(-1)
            total = log_probs if total is None else total + log_probs
        return total / len(self.members)

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None) -> Tensor:
        """Teacher-forced mean log-probabilities (B, T, V) (or (N, V) at ``keep``)."""
        memory, padding = self.encode(src)
        out = self.decode(tgt_in, memory, padding)
        return out[keep] if keep is not None else out
