"""Attention score functions and the masked softmax they share.

Each score module maps queries and keys to one scalar per (query, key) pair:

    q: (..., T_q, D_q),  k: (..., T_k, D_k)  ->  scores (..., T_q, T_k)

and turns scores into weights with :func:`masked_softmax`, so every score takes the same masks
(``True`` = may attend) and returns weights that sum to 1 over the unmasked keys of each query.
A query whose keys are all masked gets all-zero weights, never NaN.

``...`` is usually (B, H) inside multi-head attention, or (B,) in an RNN decoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heedful.device import eager


def masked_softmax(scores: Tensor, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """softmax over the last axis, restricted to keys where ``mask`` is True.

    scores: (..., T_q, T_k); mask broadcasts to it (True = may attend); bias is added first.
    Fully-masked rows come out as zeros: masked entries are set to the dtype's lowest finite value
    (so the softmax stays finite) and the result is multiplied by the mask.
    """
    if bias is not None:
        scores = scores + bias
    if mask is None:
        return softmax_last(scores)
    if torch.is_grad_enabled() and scores.requires_grad:
        return _MaskedSoftmax.apply(scores, mask)
    return _masked_softmax(scores, mask)


# torch's CPU softmax over a last axis shorter than one SIMD vector (16 float32 or 32 bfloat16
# values with AVX-512) leaves its vectorized kernel for a path about ten times slower per value:
# 51,200 float32 values in rows of 15 took 454 µs, in rows of 16 37 µs; bfloat16 in rows of 31,
# 169 µs, of 32, 32 µs (2-core Zen 4, torch 2.13, 2 threads; benchmarks/cpu_kernels.py). Attention
# meets such rows all the time when decoding: cross-attention over a sentence of a dozen tokens, a
# beam's first positions. Padding the axis to a whole vector with −inf (weight exp(−inf) = 0)
# gives the same weights in a fraction of the time, the padding included: float32 rows of 14,
# 443 → 65 µs (docs/RESULTS.md, "Prepacked float32 Linears and short softmax rows"). AVX-512
# hosts have 64-byte vectors, the others at most 32 bytes.
_CPU_VECTOR_BYTES = 64 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 32
# A padded row costs a whole vector whatever its length, so the shortest rows are faster as they
# are: float32 rows of 1 (814 against 2,288 µs, 1 thread) and bfloat16 rows of up to 7 (7: 377
# against 403 µs; 8: 395 against 340). Rows are padded from 1/8 of a vector (4-byte values) or
# 1/4 (2-byte values) on. By value size: the fraction's denominator.
_PADDED_FROM = {4: 8, 2: 4}


def _short_row_padding(x: Tensor) -> int:
    """How many values to add to ``x``'s last axis so a CPU softmax over it is vectorized (0: none;
    also when tracing or compiling, whose graphs must not fix the padding to one length)."""
    width, length = _CPU_VECTOR_BYTES // x.element_size(), x.shape[-1]
    if not width // _PADDED_FROM.get(x.element_size(), 8) <= length < width:
        return 0
    return width - length if x.device.type == "cpu" and eager() else 0


def softmax_last(scores: Tensor) -> Tensor:
    """``torch.softmax(scores, dim=-1)``, with short rows padded on the CPU (see above). The
    result may be a strided view of the padded weights; matmuls take it as it is."""
    pad = _short_row_padding(scores)
    if not pad:
        return torch.softmax(scores, dim=-1)
    return torch.softmax(F.pad(scores, (0, pad), value=float("-inf")), dim=-1)[..., : scores.shape[-1]]


def _masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    weights = softmax_last(scores.masked_fill(~mask, torch.finfo(scores.dtype).min))
    # masked_fill broadcast the scores to the mask's shape already: the weights have the full shape,
    # so the mask multiplies them in place (no second (..., T_q, T_k) tensor). Asking
    # torch.broadcast_shapes first cost tens of µs per attention call while decoding.
    return weights.mul_(mask)


class _MaskedSoftmax(torch.autograd.Function):
    """:func:`masked_softmax` with a hand-written backward that keeps one tensor, not two.

    Written with autograd ops, ``softmax(...) * mask`` keeps both the softmax output (for the
    softmax's backward) and the product (for the weighted sum's backward) alive: two
    (..., T_q, T_k) tensors. Here the product is formed in place and is the only tensor saved.
    The softmax gradient  y ⊙ (g − Σ_j g_j y_j)  computed from it is exact: masked keys and
    fully-masked rows have y = 0 and so pass no gradient, as with the mask multiplication.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, mask: Tensor) -> Tensor:
        weights = _masked_softmax(scores, mask)
        ctx.save_for_backward(weights)
        return weights

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (weights,) = ctx.saved_tensors
        # The fused kernel of torch.softmax's own backward: y ⊙ (g − Σ_j g_j y_j). It slows down
        # on short rows as the forward does; zeros padded to both y and g change neither the sum
        # nor the values kept.
        pad = _short_row_padding(weights)
        if not pad:
            return torch._softmax_backward_data(grad, weights, -1, weights.dtype), None
        n = weights.shape[-1]
        grad, weights = F.pad(grad, (0, pad)), F.pad(weights, (0, pad))
        return torch._softmax_backward_data(grad, weights, -1, weights.dtype)[..., :n], None


class Score(nn.Module):
    """Base class: subclasses implement :meth:`score`; :meth:`forward` returns masked weights."""

    #: True when the score is ``scale · q·k``, which the fused kernel can compute itself.
    fusable: bool = False
    #: The ``scale`` to hand the fused kernel; ``None`` means its default, 1/√d_h.
    fused_scale: float | None = None

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        raise NotImplementedError

    def dot_scale(self, d: int) -> float:
        """A fusable score's factor on ``q·k`` for head width ``d``: ``fused_scale``, or 1/√d
        where it is None (the fused kernel's own default)."""
        return 1.0 / math.sqrt(d) if self.fused_scale is None else float(self.fused_scale)

    def project_keys(self, k: Tensor) -> Tensor:
        """The part of the score that depends on the keys only; an RNN decoder that queries the
        same keys at every step computes it once. ``score_projected(q, project_keys(k))`` equals
        ``score(q, k)``."""
        return k

    def score_projected(self, q: Tensor, projected_keys: Tensor) -> Tensor:
        return self.score(q, projected_keys)

    def forward(self, q: Tensor, k: Tensor, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """Attention weights (..., T_q, T_k), summing to 1 over unmasked keys."""
        return masked_softmax(self.score(q, k), mask, bias)


class DotScore(Score):
    """Dot product (Luong et al. 2015, §3.1 "dot"):  score(q, k) = q · k.

    Requires D_q == D_k.
    """

    fusable = True
    fused_scale = 1.0

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return q @ k.transpose(-2, -1)  # (..., T_q, D) @ (..., D, T_k) -> (..., T_q, T_k)


class ScaledDotScore(Score):
    """Scaled dot product (Vaswani et al. 2017, eq. 1):  score(q, k) = q · k / √d.

    ``d`` defaults to the last dimension of ``q`` at call time. Requires D_q == D_k.
    """

    fusable = True

    def __init__(self, scale: float | None = None):
        super().__init__()
        self.fused_scale = scale  # None lets the fused kernel use 1/√d itself

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        scale = self.dot_scale(q.shape[-1])
        # Scale q rather than the (T_q, T_k) product: fewer multiplications, same result.
        return (q * scale) @ k.transpose(-2, -1)  # (..., T_q, T_k)


class GeneralScore(Score):
    """Bilinear "general" score (Luong et al. 2015, §3.1):  score(q, k) = q W kᵀ.

    W: (D_q, D_k), learned. Computed as (q W) · k so the cost is one extra matmul of the queries.
    """

    def __init__(self, d_query: int, d_key: int | None = None):
        super().__init__()
        self.W = nn.Linear(d_query, d_key or d_query, bias=False)

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return self.W(q) @ k.transpose(-2, -1)  # (..., T_q, D_k) @ (..., D_k, T_k)


class AdditiveScore(Score):
    """Additive / "concat" score (Bahdanau et al. 2015, §3.1 and appendix A.1.2):

        score(q, k) = vᵀ tanh(W q + U k)

    W: (A, D_q), U: (A, D_k), v: (A,), with A = ``d_attn``. Memory is O(T_q · T_k · A): fine for RNN
    decoders (T_q = 1 per step) and short sequences, which is where this score is used.
    """

    def __init__(self, d_query: int, d_key: int | None = None, d_attn: int | None = None):
        super().__init__()
        d_key = d_key or d_query
        d_attn = d_attn or d_query
        self.W = nn.Linear(d_query, d_attn, bias=False)
        self.U = nn.Linear(d_key, d_attn, bias=True)
        self.v = nn.Linear(d_attn, 1, bias=False)

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return self.score_projected(q, self.project_keys(k))

    def project_keys(self, k: Tensor) -> Tensor:
        return self.U(k)  # (..., T_k, A)

    def score_projected(self, q: Tensor, projected_keys: Tensor) -> Tensor:
        # (..., T_q, 1, A) + (..., 1, T_k, A) -> (..., T_q, T_k, A) -> (..., T_q, T_k)
        return self.v(torch.tanh(self.W(q).unsqueeze(-2) + projected_keys.unsqueeze(-3))).squeeze(-1)


SCORES: dict[str, type[Score]] = {
    "dot": DotScore,
    "scaled_dot": ScaledDotScore,
    "general": GeneralScore,
    "additive": AdditiveScore,
}
