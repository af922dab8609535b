"""Multi-head attention (Vaswani et al. 2017, §3.2.2): projections around one attention step.

    head_h = Attention(Q W_h^Q, K W_h^K, V W_h^V),   MHA = Concat(head_1 … head_H) W^O

W^Q, W^K, W^V map to ``inner_dim = n_heads · d_head`` (heads of width ``d_head``, by default
``d_model // n_heads``), W^O maps back to ``d_model``. They are ``nn.Linear`` modules the forward
only calls, so the module quantizes (``torch.ao.quantization.quantize_dynamic``) and its heads can
be pruned by rows of W^Q/W^K/W^V and columns of W^O: ``q_proj``, ``k_proj``, ``v_proj``, or — for
a module built with ``packed=True``, which serves self-attention only — one ``qkv_proj``
(D → 3·inner) whose output is split, so self-attention is one matmul. The attention itself is
:class:`~heedful.attention.attend.Attend` (fused or math path); a key/value cache, when given,
stores the keys and attends (:meth:`KVCache.attend`), which is where beam search's grouped
storage lives.

Masks follow the package convention, ``True`` = may attend (see :mod:`heedful.attention.masks`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from heedful.attention.attend import CPU_16BIT_MATH_MAX_SCORES, Attend, Path, prefer_fused
from heedful.attention.base import AttentionModule
from heedful.attention.cache import KVCache
from heedful.attention.positions import AttentionPositions
from heedful.attention.scores import SCORES, AdditiveScore, GeneralScore, Score

__all__ = ["CPU_16BIT_MATH_MAX_SCORES", "AttentionOutput", "MultiHeadAttention", "build_score", "prefer_fused"]


class AttentionOutput(NamedTuple):
    output: Tensor  # (B, T_q, D)
    weights: Tensor | None  # (B, H, T_q, T_k), only when asked for (or captured)


def build_score(score: Score | str, d_head: int) -> Score:
    if isinstance(score, Score):
        return score
    if score not in SCORES:
        raise ValueError(f"unknown attention score {score!r}; choose from {', '.join(SCORES)}")
    if SCORES[score] in (GeneralScore, AdditiveScore):
        return SCORES[score](d_head)
    return SCORES[score]()


class MultiHeadAttention(AttentionModule):
    """Self- or cross-attention over ``n_heads`` heads of width ``d_head``.

    Args:
        d_model: width of queries and of the output.
        n_heads: number of heads.
        d_head: width of each head; default ``d_model // n_heads`` (then ``n_heads`` must divide
            ``d_model``).
        kdim, vdim: widths of keys and values when they differ from ``d_model`` (cross-attention).
        dropout: dropout on the attention weights (training only).
        bias: biases on the input and output projections.
        score: a :class:`Score` or its name (``"scaled_dot"``, ``"dot"``, ``"general"``,
            ``"additive"``); the last two run on the math path only.
        position: an :class:`AttentionPositions` (RoPE, ALiBi, relative) for self-attention.
        path: ``"auto"`` (default), or force ``"fused"`` / ``"math"``.
        packed: self-attention only: q, k and v from one ``qkv_proj`` (one matmul instead of
            three; on a bf16 CPU a whole layer measured 10–25 % faster, docs/RESULTS.md).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        d_head: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        score: Score | str = "scaled_dot",
        position: AttentionPositions | None = None,
        path: Path = "auto",
        packed: bool = False,
    ):
        super().__init__()
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
            d_head = d_model // n_heads
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.inner_dim = n_heads * d_head
        self.kdim, self.vdim = kdim or d_model, vdim or d_model
        self.packed = packed
        if packed:
            if (self.kdim, self.vdim) != (d_model, d_model):
                raise ValueError("a packed (self-attention) projection needs kdim = vdim = d_model")
            self.qkv_proj = nn.Linear(d_model, 3 * self.inner_dim, bias=bias)
        else:
            self.q_proj = nn.Linear(d_model, self.inner_dim, bias=bias)
            self.k_proj = nn.Linear(self.kdim, self.inner_dim, bias=bias)
            self.v_proj = nn.Linear(self.vdim, self.inner_dim, bias=bias)
        self.out_proj = nn.Linear(self.inner_dim, d_model, bias=bias)
        self.attend = Attend(build_score(score, d_head), dropout, path)
        self.position = position
        # (H,) multiplies each head's context when set (not a parameter, never saved): how head
        # pruning measures a head's importance, as ∂loss/∂mask_h (optimize/prune.py).
        self.head_mask: Tensor | None = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # As nn.MultiheadAttention: Xavier over the packed (3·inner, D) matrix, i.e. the bound of
        # xavier_uniform_ on that shape for each part, so re-packing changes no initialisation.
        bound = (6.0 / (self.d_model + 3 * self.inner_dim)) ** 0.5 if self.kdim == self.vdim == self.d_model else None
        for linear in [self.qkv_proj] if self.packed else [self.q_proj, self.k_proj, self.v_proj]:
            if bound is None:
                nn.init.xavier_uniform_(linear.weight)
            else:
                nn.init.uniform_(linear.weight, -bound, bound)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> AttentionOutput:
        """Attend from ``query`` (B, T_q, D) to ``key``/``value`` (B, T_k, kdim|vdim).

        key/value None means self-attention. ``key_padding_mask`` (B, T_k) and ``attn_mask``
        ((T_q, T_k), (B, T_q, T_k) or 4-D) are bool, True = may attend. ``is_causal`` adds a causal
        mask aligned to the last queries (right for cached decoding). ``cache`` holds earlier keys
        and values: a plain cache grows by the new keys (self-attention); a ``static`` one is
        filled once and reused (cross-attention over a fixed memory).
        """
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(f"query must be (B, T, {self.d_model}), got {tuple(query.shape)}")
        B, T_q, _ = query.shape

        # 1. Project to per-head queries, keys and values (B, H, T, D_h); a filled static cache
        #    already holds the keys and values of its memory.
        if self.packed:  # self-attention, one matmul: (B, T, D) -> (B, T, 3·H·D_h) -> 3 × (B, T, H·D_h)
            if key is not None or value is not None or (cache is not None and cache.static):
                raise ValueError("a packed MultiHeadAttention does self-attention only: pass no key/value")
            q, k, v = (self._split_heads(x) for x in self.qkv_proj(query).chunk(3, dim=-1))
        else:
            q, k, v = self._split_heads(self.q_proj(query)), None, None
            if cache is None or not (cache.static and cache.filled):
                key = query if key is None else key
                value = key if value is None else value
                k, v = self._split_heads(self.k_proj(key)), self._split_heads(self.v_proj(value))

        # 2. Positions: RoPE rotates the new q and k at their absolute positions; ALiBi and
        #    relative positions give a score bias (1|B, H, T_q, T_k).
        q_offset = cache.q_offset if cache is not None else 0
        bias = None
        if self.position is not None:
            q, k = self.position.rotate(q, k, q_offset)
            t_k = q_offset + k.shape[2] if k is not None else cache.length  # type: ignore[union-attr]
            bias = self.position.bias(q, t_k, q_offset)

        # 3. Attention, (B, H, T_q, D_h); through the cache when there is one (it stores the new
        #    keys and values and knows how its rows are laid out).
        want_weights = need_weights or self.capturing
        masks = {"key_padding_mask": key_padding_mask, "attn_mask": attn_mask, "is_causal": is_causal}
        if cache is None:
            context, weights = self.attend(q, k, v, **masks, bias=bias, need_weights=want_weights)
        else:
            context, weights = cache.attend(self.attend, q, k, v, **masks, bias=bias, need_weights=want_weights)

        # 4. Merge heads and project out: (B, H, T_q, D_h) -> (B, T_q, H·D_h) -> (B, T_q, D).
        if self.head_mask is not None:  # (H,): head importance (Michel et al. 2019) differentiates it
            context = context * self.head_mask.view(1, -1, 1, 1).to(context.dtype)
        context = context.transpose(1, 2).reshape(B, T_q, self.inner_dim)
        if weights is not None:
            self.report(weights)
        return AttentionOutput(self.out_proj(context), weights if need_weights else None)

    def prune_heads(self, keep: list[int]) -> None:
        """Keep only the heads ``keep`` (indices into the current heads), physically: the rows of
        each head in W^Q, W^K, W^V (each of ``qkv_proj``'s three row blocks when packed) and its
        columns of W^O go, so every projection gets thinner. A head's output is
        ``context_h W^O[:, h]``, so removing a head whose context was zeroed changes nothing."""
        keep = sorted(set(keep))
        if not keep or not all(0 <= h < self.n_heads for h in keep):
            raise ValueError(f"keep at least one of the {self.n_heads} heads, by index; got {keep}")
        device = self.out_proj.weight.device
        rows = torch.cat([torch.arange(h * self.d_head, (h + 1) * self.d_head) for h in keep]).to(device)
        projections = {"qkv_proj": 3} if self.packed else {"q_proj": 1, "k_proj": 1, "v_proj": 1}
        for name, blocks in projections.items():
            old = getattr(self, name)
            # In a packed projection the rows are [q heads | k heads | v heads]: the same rows of each block.
            picked = torch.cat([rows + b * self.inner_dim for b in range(blocks)])
            setattr(self, name, _sliced_linear(old, rows=picked))
        self.out_proj = _sliced_linear(self.out_proj, columns=rows)
        slopes = getattr(self.position, "slopes", None)  # ALiBi: one slope per head (RoPE, relative: shared)
        if slopes is not None:
            self.position.slopes = slopes[torch.tensor(keep, device=slopes.device)]
        self.n_heads = len(keep)
        self.inner_dim = self.n_heads * self.d_head

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, T, H·D_h) -> (B, H, T, D_h)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Read checkpoints of the earlier layout too: a packed ``in_proj`` (3·D, D) — ``qkv_proj``
        now, or split into q/k/v — and the score's parameters (general, additive) on the module."""
        for part in ("weight", "bias"):
            packed = state_dict.pop(f"{prefix}in_proj.{part}", None)
            if packed is not None and self.packed:
                state_dict[f"{prefix}qkv_proj.{part}"] = packed
            elif packed is not None:
                for name, tensor in zip("qkv", packed.chunk(3, dim=0), strict=True):
                    state_dict[f"{prefix}{name}_proj.{part}"] = tensor
        for old in [key for key in state_dict if key.startswith(f"{prefix}score.")]:
            state_dict[f"{prefix}attend.{old.removeprefix(prefix)}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        score = type(self.attend.score).__name__
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, d_head={self.d_head}, score={score}, packed={self.packed}"
        )


def _sliced_linear(linear: nn.Linear, rows: Tensor | None = None, columns: Tensor | None = None) -> nn.Linear:
    """A new Linear holding only ``rows`` (outputs) or ``columns`` (inputs) of ``linear``."""
    weight, bias = linear.weight.detach(), linear.bias
    if rows is not None:
        weight = weight[rows]  # (out', in)
        bias = bias.detach()[rows] if bias is not None else None
    if columns is not None:
        weight = weight[:, columns]  # (out, in')
        bias = bias.detach() if bias is not None else None
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new
