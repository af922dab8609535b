"""Multi-head attention (Vaswani et al. 2017, §3.2.2) with two paths and one interface.

    head_h = Attention(Q W_h^Q, K W_h^K, V W_h^V),   MHA = Concat(head_1 … head_H) W^O

* **fused path**: ``torch.nn.functional.scaled_dot_product_attention`` — PyTorch's own kernels
  (flash / memory-efficient), memory linear in T, no weights returned.
* **math path**: the equations written out (score → masked softmax → weighted sum), which can
  return per-head weights ``(B, H, T_q, T_k)``; also the only path for general/additive scores.

When nobody asks for weights the module picks the faster path for the device, dtype and size
(:func:`prefer_fused`, measured by ``benchmarks/attention.py`` — see docs/RESULTS.md). Asking for
weights, or an active ``explain.capture``, selects the math path. Additive biases from position
modules (ALiBi, relative) are added to the scores on either path.

Masks follow the package convention, ``True`` = may attend (see :mod:`heedful.attention.masks`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heedful.attention.base import AttentionModule
from heedful.attention.cache import KVCache
from heedful.attention.dropout import dropout
from heedful.attention.masks import attn_mask_to_4d, causal_mask, combine_masks, key_padding_to_4d
from heedful.attention.positions import AttentionPositions
from heedful.attention.scores import SCORES, AdditiveScore, GeneralScore, Score

Path = Literal["auto", "fused", "math"]


class AttentionOutput(NamedTuple):
    output: Tensor  # (B, T_q, D)
    weights: Tensor | None  # (B, H, T_q, T_k), only when asked for (or captured)


# Largest T_q·T_k at which the math path beats the fused kernel for 16-bit floats on CPU.
# Measured on a 2-core AVX-512 (with avx512_bf16) machine with torch 2.13 (benchmarks/attention.py,
# docs/RESULTS.md): a whole bf16 layer, forward+backward, B·T = 4,096, H = 8, D_h = 64, math-path
# time over fused-path time, paired by round — T = 128: 0.73; 192: 0.87; 256: 0.87–0.93; 320: 0.93;
# 512: 1.26; 768: 1.36. Below the bound the math path's quadratic memory is small (bf16, T = 256:
# 69 MiB against the fused path's 42 MiB); above it the fused kernel is both faster and linear in T.
# In fp32 the fused kernel wins at every size, and on GPUs the flash kernels do.
CPU_16BIT_MATH_MAX_SCORES = 256 * 256


def prefer_fused(device: torch.device, dtype: torch.dtype, t_q: int, t_k: int) -> bool:
    """Whether the fused kernel is the faster way to compute attention of this size."""
    if device.type != "cpu":
        return True
    if dtype in (torch.bfloat16, torch.float16):
        return t_q * t_k > CPU_16BIT_MATH_MAX_SCORES
    return True


def _check_mask_shapes(key_padding_mask: Tensor | None, attn_mask: Tensor | None, B: int, t_q: int, t_k: int) -> None:
    """Name the mask and the expected shape, rather than fail later in a broadcast deep inside."""
    if key_padding_mask is not None and key_padding_mask.dim() == 2 and key_padding_mask.shape != (B, t_k):
        raise ValueError(f"key_padding_mask must be (B, T_k) = ({B}, {t_k}), got shape {tuple(key_padding_mask.shape)}")
    if attn_mask is None or attn_mask.dim() < 2:
        return
    if any(got not in (1, want) for got, want in zip(attn_mask.shape[-2:], (t_q, t_k), strict=True)):
        raise ValueError(
            f"attn_mask must end in (T_q, T_k) = ({t_q}, {t_k}) or broadcast to it, got shape {tuple(attn_mask.shape)}"
        )


def _group_rows(q: Tensor, group: int) -> Tensor:
    """(B, H, T, X) -> (B / group, H, group·T, X): each run of ``group`` rows becomes one row."""
    B, H, T, X = q.shape
    return q.view(B // group, group, H, T, X).transpose(1, 2).reshape(B // group, H, group * T, X)


def _ungroup_rows(x: Tensor, group: int) -> Tensor:
    """The inverse of :func:`_group_rows`: (B / group, H, group·T, X) -> (B, H, T, X)."""
    Bg, H, GT, X = x.shape
    return x.view(Bg, H, group, GT // group, X).transpose(1, 2).reshape(Bg * group, H, GT // group, X)


def build_score(score: Score | str, d_head: int) -> Score:
    if isinstance(score, Score):
        return score
    if score not in SCORES:
        raise ValueError(f"unknown attention score {score!r}; choose from {', '.join(SCORES)}")
    if SCORES[score] in (GeneralScore, AdditiveScore):
        return SCORES[score](d_head)
    return SCORES[score]()


class MultiHeadAttention(AttentionModule):
    """Self- or cross-attention over ``n_heads`` heads of size ``d_model // n_heads``.

    Args:
        d_model: width of queries and of the output.
        n_heads: number of heads; must divide ``d_model``.
        kdim, vdim: widths of keys and values when they differ from ``d_model`` (cross-attention).
        dropout: dropout on the attention weights (training only).
        bias: biases on the input and output projections.
        score: a :class:`Score` or its name (``"scaled_dot"``, ``"dot"``, ``"general"``,
            ``"additive"``); the last two run on the math path only.
        position: an :class:`AttentionPositions` (RoPE, ALiBi, relative) for self-attention.
        path: ``"auto"`` (default), or force ``"fused"`` / ``"math"``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        score: Score | str = "scaled_dot",
        position: AttentionPositions | None = None,
        path: Path = "auto",
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if path not in ("auto", "fused", "math"):
            raise ValueError(f"path must be 'auto', 'fused' or 'math', got {path!r}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.kdim, self.vdim = kdim or d_model, vdim or d_model
        self.dropout = dropout
        self.path = path
        self.score = build_score(score, self.d_head)
        self.position = position
        if path == "fused" and not self.score.fusable:
            raise ValueError(f"{type(self.score).__name__} cannot run on the fused path")

        # Equal widths: one packed (3D, D) projection, so self-attention is a single matmul.
        self.packed = self.kdim == d_model and self.vdim == d_model
        if self.packed:
            self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        else:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.k_proj = nn.Linear(self.kdim, d_model, bias=bias)
            self.v_proj = nn.Linear(self.vdim, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        projections = [self.in_proj] if self.packed else [self.q_proj, self.k_proj, self.v_proj]
        for linear in projections:
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    # ---------------------------------------------------------------------------------- projections
    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, T, D) -> (B, H, T, D_h)

    def _project_q(self, query: Tensor) -> Tensor:
        if self.packed:
            D = self.d_model
            w, b = self.in_proj.weight[:D], None if self.in_proj.bias is None else self.in_proj.bias[:D]
            return self._split_heads(F.linear(query, w, b))
        return self._split_heads(self.q_proj(query))

    def _project_kv(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        if self.packed:
            D = self.d_model
            w, b = self.in_proj.weight[D:], None if self.in_proj.bias is None else self.in_proj.bias[D:]
            if key is value:  # one matmul for both
                k, v = F.linear(key, w, b).chunk(2, dim=-1)
            else:
                k = F.linear(key, w[:D], None if b is None else b[:D])
                v = F.linear(value, w[D:], None if b is None else b[D:])
            return self._split_heads(k), self._split_heads(v)
        return self._split_heads(self.k_proj(key)), self._split_heads(self.v_proj(value))

    def _project_self(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.packed:
            return self._project_q(x), *self._project_kv(x, x)
        B, T, _ = x.shape
        qkv = self.in_proj(x).view(B, T, 3, self.n_heads, self.d_head)  # (B, T, 3, H, D_h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, T, D_h)
        return q, k, v

    # -------------------------------------------------------------------------------------- forward
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

        # 1. Project to per-head queries, keys and values (B, H, T, D_h).
        if cache is not None and cache.static and cache.filled:
            q, k, v = self._project_q(query), cache.k, cache.v
        elif key is None:
            q, k, v = self._project_self(query)
        else:
            q = self._project_q(query)
            k, v = self._project_kv(key, key if value is None else value)
        if cache is not None and cache.static and not cache.filled:
            cache.set(k, v)

        # 2. Positions (RoPE rotates the new q/k; the others give a bias), then the growing cache.
        q_offset = cache.length if cache is not None and not cache.static else 0
        if self.position is not None:
            q, k = self.position.rotate(q, k, q_offset)
        if cache is not None and not cache.static:
            k, v = cache.append(k, v)

        # A cache in grouped storage (beam search: `group` hypotheses of one source; see
        # heedful.attention.cache) serves a group's queries together, as one row of group·T_q
        # queries; where that would not hold (masks, position biases, a growing cache's weights),
        # each row reads its own keys instead.
        group, lineage = cache.group if cache is not None else 1, None
        if group > 1 and not self._attends_in_groups(cache, T_q, attn_mask, key_padding_mask, is_causal, need_weights):
            k, v = cache.ungrouped()  # (B, H, T_k, D_h)
            group = 1
        if group > 1:
            q = _group_rows(q, group)  # (B, H, T_q, D_h) -> (B / group, H, group·T_q, D_h)
            if key_padding_mask is not None:  # the rows of a group share their source's padding
                key_padding_mask = key_padding_mask[::group]
            if not cache.static:
                lineage = cache.lineage_mask()  # (B / group, 1, group, T·group)
        T_k = cache.length if cache is not None and not cache.static else k.shape[2]  # positions
        bias = self.position.bias(q, T_k, q_offset) if self.position is not None else None

        # 3. One boolean mask, True = may attend, broadcasting to (B, H, T_q, T_k).
        _check_mask_shapes(key_padding_mask, attn_mask, q.shape[0], q.shape[2], k.shape[2])
        causal = causal_mask(T_q, T_k, device=q.device) if is_causal and T_q > 1 else None
        mask = combine_masks(key_padding_to_4d(key_padding_mask), attn_mask_to_4d(attn_mask), causal, lineage)

        # 4. Attention on the chosen path.
        want_weights = need_weights or self.capturing
        if want_weights or not self._use_fused(q, q.shape[2], T_k):
            context, weights = self._math(q, k, v, mask, bias)
        else:
            only_causal = causal is not None and mask is causal and bias is None and T_q == T_k
            context, weights = self._fused(q, k, v, None if only_causal else mask, bias, only_causal), None
        if group > 1:
            weights = None if weights is None else _ungroup_rows(weights, group)  # (B, H, T_q, T_k)

        # 5. Merge heads (and groups: one copy for both) and project out.
        if group > 1:  # (B / group, H, group·T_q, D_h) -> (B / group, group, T_q, H, D_h) -> (B, T_q, D)
            context = context.view(B // group, self.n_heads, group, T_q, self.d_head).permute(0, 2, 3, 1, 4)
        else:  # (B, H, T_q, D_h) -> (B, T_q, H, D_h)
            context = context.transpose(1, 2)
        context = context.reshape(B, T_q, self.d_model)
        if weights is not None:
            self.report(weights)
        return AttentionOutput(self.out_proj(context), weights if need_weights else None)

    def _attends_in_groups(
        self, cache: KVCache, t_q: int, attn_mask, key_padding_mask, is_causal: bool, need_weights: bool
    ) -> bool:
        if attn_mask is not None or (is_causal and t_q > 1) or (self.position is not None and self.position.gives_bias):
            return False
        if cache.static:  # one source's keys for all its rows: any number of queries, its padding
            return True
        # A growing cache: one new position per row, and weights only over each row's own keys.
        return t_q == 1 and key_padding_mask is None and not (need_weights or self.capturing)

    def _use_fused(self, q: Tensor, t_q: int, t_k: int) -> bool:
        if not self.score.fusable or self.path == "math":
            return False
        return self.path == "fused" or prefer_fused(q.device, q.dtype, t_q, t_k)

    def _math(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None):
        weights = self.score(q, k, mask, bias)  # (B, H, T_q, T_k), rows sum to 1 over allowed keys
        dropped = dropout(weights, self.dropout, self.training) if self.dropout else weights
        return dropped @ v, weights  # (B, H, T_q, D_h)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None, causal: bool):
        if bias is not None:
            bias = bias.to(q.dtype)
            # A float mask: bias where allowed, −inf where not (fully-masked rows give zeros).
            mask = bias if mask is None else torch.where(mask, bias, float("-inf"))
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            scale=self.score.fused_scale,
        )

    def extra_repr(self) -> str:
        score = type(self.score).__name__
        return f"d_model={self.d_model}, n_heads={self.n_heads}, score={score}, path={self.path}"
