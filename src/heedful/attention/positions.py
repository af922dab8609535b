"""Position information — five small modules, chosen by name from a config (see :data:`POSITIONS`).

Two kinds, matching where they act:

* **Input positions** add a vector to each token embedding before the first layer:
  :class:`SinusoidalPositions` (Vaswani et al. 2017, §3.5) and :class:`LearnedPositions`.
  ``forward(x, offset) -> x + P[offset : offset + T]``, x: (B, T, D).

* **Attention positions** act inside every self-attention module, on per-head queries and keys
  ``(B, H, T, D_h)``: :class:`RotaryPositions` rotates q and k (RoPE, Su et al. 2021);
  :class:`ALiBiPositions` (Press et al. 2022) and :class:`RelativePositions` (Shaw et al. 2018)
  return an additive score bias ``(1|B, H, T_q, T_k)``. Both kinds of bias work on the fused and the
  math attention path, because the bias is simply added to the scores before the softmax.

Offsets: ``q_offset`` is the absolute position of the first query (non-zero while decoding
incrementally with a key/value cache); keys always start at position 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# Input positions: added to embeddings


class SinusoidalPositions(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/D)).

    Fixed (not learned), stored as a non-persistent buffer so checkpoints stay small.
    """

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
        inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * inv_freq)
        table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
        self.register_buffer("table", table, persistent=False)  # (L, D)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        T = x.shape[1]
        _check_length(offset + T, self.table.shape[0])
        return x + self.table[offset : offset + T].to(x.dtype)  # (B, T, D)


class LearnedPositions(nn.Module):
    """A learned vector per absolute position (Gehring et al. 2017; BERT)."""

    def __init__(self, d_model: int, max_len: int = 512):
        super().__init__()
        self.embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        T = x.shape[1]
        _check_length(offset + T, self.embedding.num_embeddings)
        positions = torch.arange(offset, offset + T, device=x.device)
        return x + self.embedding(positions).to(x.dtype)  # (B, T, D)


def _check_length(needed: int, available: int) -> None:
    if needed > available:
        raise ValueError(
            f"sequence of length {needed} is longer than the position table ({available}); raise model.max_len"
        )


# --------------------------------------------------------------------------------------------------
# Attention positions: act on per-head q/k inside self-attention


class AttentionPositions(nn.Module):
    """Base: identity rotation, no bias. Subclasses override one of the two."""

    gives_bias = False  # True when bias() returns a tensor

    def rotate(self, q: Tensor, k: Tensor | None, q_offset: int = 0) -> tuple[Tensor, Tensor | None]:
        """q: (B, H, T_q, D_h), k: (B, H, T_k_new, D_h); new keys sit at the same positions as q.
        k is None when a cache already holds every key (they were rotated when they were new)."""
        return q, k

    def bias(self, q: Tensor, t_k: int, q_offset: int = 0) -> Tensor | None:
        """Additive score bias (1|B, H, T_q, T_k), or None."""
        return None


class RotaryPositions(AttentionPositions):
    """RoPE (Su et al. 2021, eq. 34): rotate each pair of channels of q and k by an angle
    proportional to the absolute position, so that q·k depends only on the relative offset.

    Uses the "rotate half" pairing (channel i with i + D_h/2), as GPT-NeoX and LLaMA do.
    """

    def __init__(self, d_head: int, base: float = 10000.0, max_len: int = 4096):
        super().__init__()
        if d_head % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {d_head}")
        inv_freq = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)  # (D_h/2,)
        angles = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq  # (L, D_h/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, D_h)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rotate(self, q: Tensor, k: Tensor | None, q_offset: int = 0) -> tuple[Tensor, Tensor | None]:
        return self._rotate(q, q_offset), None if k is None else self._rotate(k, q_offset)

    def _rotate(self, x: Tensor, offset: int) -> Tensor:
        T = x.shape[-2]
        _check_length(offset + T, self.cos.shape[0])
        cos = self.cos[offset : offset + T].to(x.dtype)  # (T, D_h)
        sin = self.sin[offset : offset + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D_h/2) each
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class ALiBiPositions(AttentionPositions):
    """ALiBi (Press et al. 2022): bias = −m_h · |i − j|, with head slopes m_h = 2^(−8h/H).

    Symmetric distance, so the same module serves encoders; in a causal decoder the future half is
    masked anyway, which gives the paper's one-sided form.
    """

    gives_bias = True

    def __init__(self, n_heads: int):
        super().__init__()
        self.register_buffer("slopes", self._slopes(n_heads), persistent=False)  # (H,)

    @staticmethod
    def _slopes(n_heads: int) -> Tensor:
        # Paper's recipe: geometric sequence for the nearest power of two, interleaved for the rest.
        def power_of_2(n: int) -> list[float]:
            start = 2 ** (-8 / n)
            return [start ** (i + 1) for i in range(n)]

        if math.log2(n_heads).is_integer():
            slopes = power_of_2(n_heads)
        else:
            closest = 2 ** math.floor(math.log2(n_heads))
            slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest]
        return torch.tensor(slopes, dtype=torch.float32)

    def bias(self, q: Tensor, t_k: int, q_offset: int = 0) -> Tensor:
        t_q = q.shape[-2]
        q_pos = torch.arange(q_offset, q_offset + t_q, device=q.device)[:, None]  # (T_q, 1)
        k_pos = torch.arange(t_k, device=q.device)[None, :]  # (1, T_k)
        distance = (q_pos - k_pos).abs().to(q.dtype)  # (T_q, T_k)
        return -self.slopes.to(q.dtype)[None, :, None, None] * distance  # (1, H, T_q, T_k)


class RelativePositions(AttentionPositions):
    """Relative position representations (Shaw et al. 2018, eq. 4–5), key term:

        e_ij = q_i · (k_j + a_ij) / √d_h,   a_ij = w_clip(j − i, −K, K)

    One learned vector per clipped distance, shared across heads as in the paper. The q_i · a_ij
    part is returned as an additive bias, so the fused kernel can still compute the q·k part.
    The paper's optional value term (a_ij^V) is not used; it rarely helps (§4 of the paper).
    """

    gives_bias = True

    def __init__(self, d_head: int, max_distance: int = 16):
        super().__init__()
        self.max_distance = max_distance
        self.embedding = nn.Embedding(2 * max_distance + 1, d_head)  # (2K+1, D_h)
        nn.init.normal_(self.embedding.weight, std=d_head**-0.5)
        self.scale = d_head**-0.5

    def bias(self, q: Tensor, t_k: int, q_offset: int = 0) -> Tensor:
        t_q = q.shape[-2]
        q_pos = torch.arange(q_offset, q_offset + t_q, device=q.device)[:, None]  # (T_q, 1)
        k_pos = torch.arange(t_k, device=q.device)[None, :]  # (1, T_k)
        index = (k_pos - q_pos).clamp(-self.max_distance, self.max_distance) + self.max_distance
        # q · a for every clipped distance, then pick the one each (i, j) pair needs.
        per_distance = q @ self.embedding.weight.to(q.dtype).T  # (B, H, T_q, 2K+1)
        index = index.expand(*q.shape[:2], t_q, t_k)  # (B, H, T_q, T_k)
        return per_distance.gather(-1, index) * self.scale  # (B, H, T_q, T_k)


# Chosen by name from model configs: "sinusoidal" | "learned" | "rope" | "alibi" | "relative" | "none".
INPUT_POSITIONS = {"sinusoidal": SinusoidalPositions, "learned": LearnedPositions}
ATTENTION_POSITIONS = {"rope": RotaryPositions, "alibi": ALiBiPositions, "relative": RelativePositions}
POSITIONS = ("none", *INPUT_POSITIONS, *ATTENTION_POSITIONS)


def build_input_positions(kind: str, d_model: int, max_len: int) -> nn.Module | None:
    """The embedding-level module for ``kind``, or None when positions act inside attention."""
    if kind in INPUT_POSITIONS:
        return INPUT_POSITIONS[kind](d_model, max_len)
    if kind in ATTENTION_POSITIONS or kind == "none":
        return None
    raise ValueError(f"unknown position kind {kind!r}; choose from {', '.join(POSITIONS)}")


def build_attention_positions(
    kind: str, n_heads: int, d_head: int, max_len: int, max_distance: int = 16
) -> AttentionPositions | None:
    """The per-attention module for ``kind``, or None for input-level or no positions."""
    if kind == "rope":
        return RotaryPositions(d_head, max_len=max_len)
    if kind == "alibi":
        return ALiBiPositions(n_heads)
    if kind == "relative":
        return RelativePositions(d_head, max_distance)
    if kind in INPUT_POSITIONS or kind == "none":
        return None
    raise ValueError(f"unknown position kind {kind!r}; choose from {', '.join(POSITIONS)}")
