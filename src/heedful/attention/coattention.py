"""Parallel co-attention (Lu et al. 2016, "Hierarchical Question-Image Co-Attention", §3.3).

Two sequences attend to each other at once through an affinity matrix. With the paper's column
vectors rewritten as rows — a: (B, T_a, D), b: (B, T_b, D):

    C   = tanh(a W_b bᵀ)                            affinity         (B, T_a, T_b)
    H_a = tanh(a W_aᵀ + C (b W_bvᵀ))                 (B, T_a, k)
    H_b = tanh(b W_bvᵀ + Cᵀ (a W_aᵀ))                (B, T_b, k)
    α_a = softmax(H_a w_a),  α_b = softmax(H_b w_b)   attention over each sequence
    â   = Σ_t α_a[t] a_t,    b̂ = Σ_n α_b[n] b_n     one summary vector per sequence

(the paper's Q is ``a`` and its V is ``b``). Padding masks (True = real token) keep padded
positions out of the affinity and out of both softmaxes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from heedful.attention.base import AttentionModule
from heedful.attention.scores import masked_softmax


class CoAttentionOutput(NamedTuple):
    a_summary: Tensor  # (B, D)
    b_summary: Tensor  # (B, D)
    a_weights: Tensor  # (B, T_a)
    b_weights: Tensor  # (B, T_b)
    affinity: Tensor  # (B, T_a, T_b)


class ParallelCoAttention(AttentionModule):
    """Co-attention between sequences ``a`` and ``b`` of width ``d_model``; ``d_hidden`` is the
    paper's k. While ``explain.capture`` is active it reports a dict with ``a``, ``b`` (the two
    attention distributions) and ``affinity``.
    """

    def __init__(self, d_model: int, d_hidden: int | None = None):
        super().__init__()
        d_hidden = d_hidden or d_model
        self.W_affinity = nn.Linear(d_model, d_model, bias=False)  # W_b
        self.W_a = nn.Linear(d_model, d_hidden, bias=False)  # W_q
        self.W_b = nn.Linear(d_model, d_hidden, bias=False)  # W_v
        self.w_a = nn.Linear(d_hidden, 1, bias=False)  # w_hq
        self.w_b = nn.Linear(d_hidden, 1, bias=False)  # w_hv

    def forward(
        self, a: Tensor, b: Tensor, a_mask: Tensor | None = None, b_mask: Tensor | None = None
    ) -> CoAttentionOutput:
        """a: (B, T_a, D), b: (B, T_b, D); masks (B, T_a) / (B, T_b) bool, True = real token."""
        affinity = torch.tanh(self.W_affinity(a) @ b.transpose(1, 2))  # (B, T_a, T_b)
        if a_mask is not None:
            affinity = affinity * a_mask[:, :, None]
        if b_mask is not None:
            affinity = affinity * b_mask[:, None, :]
        a_proj, b_proj = self.W_a(a), self.W_b(b)  # (B, T_a, k), (B, T_b, k)
        H_a = torch.tanh(a_proj + affinity @ b_proj)  # (B, T_a, k)
        H_b = torch.tanh(b_proj + affinity.transpose(1, 2) @ a_proj)  # (B, T_b, k)
        a_weights = masked_softmax(self.w_a(H_a).squeeze(-1), a_mask)  # (B, T_a)
        b_weights = masked_softmax(self.w_b(H_b).squeeze(-1), b_mask)  # (B, T_b)
        a_summary = (a_weights.unsqueeze(1) @ a).squeeze(1)  # (B, 1, T_a) @ (B, T_a, D) -> (B, D)
        b_summary = (b_weights.unsqueeze(1) @ b).squeeze(1)
        self.report({"a": a_weights, "b": b_weights, "affinity": affinity})
        return CoAttentionOutput(a_summary, b_summary, a_weights, b_weights, affinity)
