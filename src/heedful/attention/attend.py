"""The attention kernel: per-head queries, keys and values in, context out — no projections.

    Attention(Q, K, V) = softmax(score(Q, K) + bias, masked) V        (Vaswani et al. 2017, eq. 1)

Two paths compute it, behind one interface (as x-transformers' ``Attend`` does):

* **fused path**: ``torch.nn.functional.scaled_dot_product_attention`` — PyTorch's own kernels
  (flash / memory-efficient), memory linear in T, no weights returned.
* **math path**: the equations written out (score → masked softmax → weighted sum), which can
  return per-head weights ``(B, H, T_q, T_k)``; also the only path for general/additive scores.

When nobody asks for weights, :class:`Attend` picks the faster path for the device, dtype and size
(:func:`prefer_fused`, measured by ``benchmarks/attention.py`` — see docs/RESULTS.md). Asking for
weights selects the math path. An additive bias (ALiBi, relative positions) is added to the
scores on either path.

Masks follow the package convention, ``True`` = may attend (see :mod:`heedful.attention.masks`).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from heedful.attention.dropout import dropout
from heedful.attention.masks import attn_mask_to_4d, causal_mask, combine_masks, key_padding_to_4d
from heedful.attention.scores import Score
from heedful.device import eager

Path = Literal["auto", "fused", "math"]

# Largest T_q·T_k at which the math path beats the fused kernel for 16-bit floats on CPU.
# Measured on a 2-core AVX-512 (with avx512_bf16) machine with torch 2.13 (benchmarks/attention.py,
# docs/RESULTS.md): a whole bf16 layer, forward+backward, B·T = 4,096, H = 8, D_h = 64, math-path
# time over fused-path time, paired by round — T = 128: 0.73; 192: 0.87; 256: 0.87–0.93; 320: 0.93;
# 512: 1.26; 768: 1.36. Below the bound the math path's quadratic memory is small (bf16, T = 256:
# 69 MiB against the fused path's 42 MiB); above it the fused kernel is both faster and linear in T.
# In fp32 the fused kernel wins at these sizes (small ones: CPU_FP32_MATH_MAX_SCORES). On CUDA
# the fused path is taken at every size and dtype, minus cuDNN's kernel (CUDA_SDPA_BACKENDS
# below); the GPU measurements to confirm the rule, and the bound if the math path wins small
# bf16 shapes there too, are still to be made.
CPU_16BIT_MATH_MAX_SCORES = 256 * 256

# The bound for float32 on CPU, where the fused kernel wins at training sizes (T ≥ 128, above) but
# not at the small sizes of inference — beam search asks for a handful of queries (a source's
# hypotheses, grouped) against a few dozen keys, and there the kernel's fixed cost dominates.
# Measured with benchmarks/attention_paths.py on a 2-core Zen 4 host (torch 2.13, 2 threads, H = 4,
# D_h = 64; docs/RESULTS.md, "Small sizes"), math time over fused time, forward, B·H = 400:
# T_q = 5 against T_k = 16 / 64 / 128 / 256: 0.38 / 0.63 / 0.77 / 0.94; T_q = 16: 1.02 / 0.87 /
# 0.95 / 0.98; T_q = 64, T_k = 64: 0.75. Two exceptions stay on the kernel: a lone query (T_q = 1,
# greedy decoding: 0.7–0.9 with B·H = 400 but 1.1–1.4 with 64), and training. The bare kernel's
# forward and backward were faster on the math path too (0.48–0.74 up to T = 64), but a whole
# float32 training step of the Multi30k model was about 3 % slower with it (train_throughput.py,
# ours-fp32 against plain: 1.35–1.36× against 1.39–1.40×, same session), so training keeps it.
CPU_FP32_MATH_MAX_SCORES = 64 * 64


# What decoding's C kernel reads (it computes in float32 either way).
STEP_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def prefer_fused(device: torch.device, dtype: torch.dtype, t_q: int, t_k: int, backward: bool = False) -> bool:
    """Whether the fused kernel is the faster way to compute attention of this size
    (``backward``: a backward pass will follow, as in training)."""
    if device.type != "cpu":
        return True
    if dtype in (torch.bfloat16, torch.float16):
        return t_q * t_k > CPU_16BIT_MATH_MAX_SCORES
    return backward or t_q == 1 or t_q * t_k > CPU_FP32_MATH_MAX_SCORES


# The fused kernels allowed on CUDA, in PyTorch's order of preference: every one but cuDNN's.
# PyTorch prefers cuDNN attention for bf16/fp16 on Hopper, and cuDNN builds an execution plan for
# each new (B, H, T_q, T_k); token-count batches make nearly every batch a new shape. Measured on
# an H200 (torch 2.11, CUDA 13, issue 29, 2026-12-04): the Multi30k Transformer trained in bf16
# at 7–14 k target tokens/s with cuDNN allowed, 147 k without; its first epoch took 29 s, later
# ones 6 s. Flash and memory-efficient kernels need no plan. docs/DISTRIBUTED.md ("GPU") has the
# commands that re-measure this.
CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_backends(device: torch.device) -> list[SDPBackend] | None:
    """The fused kernels ``scaled_dot_product_attention`` may choose from on ``device`` (None:
    PyTorch's own choice, as on the CPU, which has one fused kernel)."""
    return CUDA_SDPA_BACKENDS if device.type == "cuda" else None


class Attend(nn.Module):
    """``softmax(score(q, k) + bias) v`` over heads, masked, on the fused or the math path.

    Args:
        score: the :class:`Score` (its parameters, for general/additive scores, live here).
        dropout: dropout on the attention weights (training only).
        path: ``"auto"`` (default), or force ``"fused"`` / ``"math"``.
    """

    def __init__(self, score: Score, dropout: float = 0.0, path: Path = "auto"):
        super().__init__()
        if path not in ("auto", "fused", "math"):
            raise ValueError(f"path must be 'auto', 'fused' or 'math', got {path!r}")
        if path == "fused" and not score.fusable:
            raise ValueError(f"{type(score).__name__} cannot run on the fused path")
        self.score, self.dropout, self.path = score, dropout, path

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        bias: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """q: (B, H, T_q, D_h), k: (B, H, T_k, D_h), v: (B, H, T_k, D_v) -> context (B, H, T_q, D_v)
        and, with ``need_weights``, the weights (B, H, T_q, T_k) (else None).

        ``key_padding_mask`` (B, T_k) and ``attn_mask`` ((T_q, T_k), (B, T_q, T_k) or 4-D) are bool,
        True = may attend; ``is_causal`` adds a causal mask aligned to the last queries (right for
        cached decoding); ``bias`` (1|B, H, T_q, T_k) is added to the scores.
        """
        B, _, T_q, _ = q.shape
        T_k = k.shape[2]
        _check_mask_shapes(key_padding_mask, attn_mask, B, T_q, T_k)
        causal = causal_mask(T_q, T_k, device=q.device) if is_causal and T_q > 1 else None
        mask = combine_masks(key_padding_to_4d(key_padding_mask), attn_mask_to_4d(attn_mask), causal)

        if need_weights or not self._use_fused(q, T_q, T_k):
            weights = self.score(q, k, mask, bias)  # (B, H, T_q, T_k), rows sum to 1 over allowed keys
            dropped = dropout(weights, self.dropout, self.training) if self.dropout else weights
            return dropped @ v, weights  # (B, H, T_q, D_v)

        only_causal = causal is not None and mask is causal and bias is None and T_q == T_k  # the kernel's own
        if bias is not None:  # a float mask: the bias where allowed, −inf where not (such rows give zeros)
            bias = bias.to(q.dtype)
            mask = bias if mask is None else torch.where(mask, bias, float("-inf"))
        backends = sdpa_backends(q.device)
        with sdpa_kernel(backends) if backends is not None else contextlib.nullcontext():
            context = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None if only_causal else mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=only_causal,
                scale=self.score.fused_scale,
            )
        return context, None

    def step_kernel_scale(self, q: Tensor) -> float | None:
        """The scale of ``q·k`` when this module computes plain scaled dot-product attention that
        decoding's C kernel (decode_attention.c, called by :meth:`KVCache.attend`) can compute for
        ``q`` instead: float32 or bfloat16 on the CPU, no gradient, no dropout, path ``"auto"``,
        an eager run (:func:`heedful.device.eager`). Else None."""
        if self.path != "auto" or not self.score.fusable or q.dtype not in STEP_KERNEL_DTYPES or q.device.type != "cpu":
            return None
        if (self.training and self.dropout) or (torch.is_grad_enabled() and q.requires_grad):
            return None
        if not eager():  # traced, exported or compiled: a C call through ctypes is opaque to all three
            return None
        return self.score.dot_scale(q.shape[-1])

    def _use_fused(self, q: Tensor, t_q: int, t_k: int) -> bool:
        if not self.score.fusable or self.path == "math":
            return False
        backward = torch.is_grad_enabled() and q.requires_grad
        return self.path == "fused" or prefer_fused(q.device, q.dtype, t_q, t_k, backward)

    def extra_repr(self) -> str:
        return f"path={self.path}, dropout={self.dropout}"


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
