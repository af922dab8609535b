"""Attention masks — one convention everywhere: ``True`` means *may attend*.

This is the convention of ``torch.nn.functional.scaled_dot_product_attention``'s boolean masks, so a
mask built here goes to the fused kernel unchanged. ``torch.nn.MultiheadAttention``'s
``key_padding_mask`` means the opposite (``True`` = ignore); convert only where you talk to it.

Shapes broadcast against attention scores ``(B, H, T_q, T_k)``:

- padding mask  ``(B, 1, 1, T_k)``  — which keys are real tokens
- causal mask   ``(T_q, T_k)``      — query i may see keys up to its own position
- combined      ``(B, 1, T_q, T_k)`` — both at once (logical AND)
"""

from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """Keys that are real tokens may be attended to.

    tokens: (B, T) token ids  ->  (B, 1, 1, T) bool, True where ``tokens != pad_id``.
    """
    return (tokens != pad_id)[:, None, None, :]


def lengths_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Padding mask from sequence lengths.

    lengths: (B,) ints  ->  (B, 1, 1, T) bool, True for positions ``< length``.
    """
    T = int(lengths.max()) if max_len is None else max_len
    positions = torch.arange(T, device=lengths.device)  # (T,)
    return (positions[None, :] < lengths[:, None])[:, None, None, :]


def causal_mask(t_q: int, t_k: int | None = None, *, offset: int | None = None, device=None) -> Tensor:
    """Query i may attend to keys 0 … (offset + i): nothing from the future.

    ``offset`` is the absolute position of the first query; by default the queries are the *last*
    ``t_q`` of the ``t_k`` keys (bottom-right alignment), which is what incremental decoding with a
    key/value cache needs. Returns (t_q, t_k) bool.
    """
    t_k = t_q if t_k is None else t_k
    offset = t_k - t_q if offset is None else offset
    q_pos = torch.arange(t_q, device=device)[:, None] + offset  # (t_q, 1)
    k_pos = torch.arange(t_k, device=device)[None, :]  # (1, t_k)
    return k_pos <= q_pos


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of any number of broadcastable masks; ``None`` entries are ignored."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = out & m
    return out


def as_4d(mask: Tensor | None) -> Tensor | None:
    """Bring a user mask to a shape that broadcasts against (B, H, T_q, T_k).

    Accepts (T_q, T_k), (B, T_k) — read as a key padding mask — (B, T_q, T_k) or (B|1, H|1, T_q, T_k).
    """
    if mask is None or mask.dim() == 4:
        return mask
    if mask.dim() == 2:
        raise ValueError(
            "a 2-D mask is ambiguous: pass key padding as key_padding_mask (B, T_k) and a (T_q, T_k) mask as attn_mask"
        )
    if mask.dim() == 3:
        return mask[:, None]
    raise ValueError(f"mask must have 2 to 4 dimensions, got shape {tuple(mask.shape)}")


def key_padding_to_4d(key_padding_mask: Tensor | None) -> Tensor | None:
    """(B, T_k) bool, True = real token  ->  (B, 1, 1, T_k)."""
    if key_padding_mask is None:
        return None
    if key_padding_mask.dim() != 2:
        raise ValueError(f"key_padding_mask must be (B, T_k), got shape {tuple(key_padding_mask.shape)}")
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True = may attend), got {key_padding_mask.dtype}")
    return key_padding_mask[:, None, None, :]


def attn_mask_to_4d(attn_mask: Tensor | None) -> Tensor | None:
    """(T_q, T_k), (B, T_q, T_k) or 4-D bool mask  ->  a shape that broadcasts to (B, H, T_q, T_k)."""
    if attn_mask is None:
        return None
    if attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
    if attn_mask.dim() == 2:
        return attn_mask[None, None]
    return as_4d(attn_mask)
