"""Single-head content attention over a memory, as RNN decoders use it (Bahdanau et al. 2015;
Luong et al. 2015): one query vector per decoder step, a score from ``attention.scores``, a
masked softmax over the source positions, and the weighted sum of the memory.

    weights = softmax(score(query, memory))     # (B, T_q, S), zero on padding
    context = weights @ memory                  # (B, T_q, D_k)

While ``explain.capture`` is active it reports ``weights`` as (B, 1, T_q, S) — one "head", so
tools written for multi-head maps read it unchanged. A decoder that calls it once per step
reports one (B, 1, 1, S) map per call; ``torch.cat(seen.calls(name), dim=-2)`` stacks them.
"""

from __future__ import annotations

from torch import Tensor

from heedful.attention.base import AttentionModule
from heedful.attention.scores import SCORES, masked_softmax


class ContentAttention(AttentionModule):
    """``score``: "additive" (Bahdanau, concat), "general" or "dot" (Luong)."""

    def __init__(self, score: str, d_query: int, d_key: int, d_attn: int | None = None):
        super().__init__()
        if score == "additive":
            self.score = SCORES[score](d_query, d_key, d_attn)
        elif score == "general":
            self.score = SCORES[score](d_query, d_key)
        elif score == "dot":
            if d_query != d_key:
                raise ValueError(f"dot attention needs queries and keys of one width, got {d_query} and {d_key}")
            self.score = SCORES[score]()
        else:
            raise ValueError(f"unknown content-attention score {score!r}; choose additive, general or dot")

    def project_keys(self, memory: Tensor) -> Tensor:
        """Precompute the key side of the score once per source batch: (B, S, D_k) -> (B, S, ·)."""
        return self.score.project_keys(memory)

    def forward(
        self, query: Tensor, memory: Tensor, mask: Tensor | None = None, projected_keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """query: (B, T_q, D_q), memory: (B, S, D_k), mask: (B, S) True = real token
        -> context (B, T_q, D_k), weights (B, T_q, S)."""
        keys = self.project_keys(memory) if projected_keys is None else projected_keys
        scores = self.score.score_projected(query, keys)  # (B, T_q, S)
        weights = masked_softmax(scores, mask[:, None, :] if mask is not None else None)
        self.report(weights[:, None])
        return weights @ memory, weights  # (B, T_q, D_k), (B, T_q, S)
