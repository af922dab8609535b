"""Dropout whose CPU mask comes from 16-bit slices of 64-bit random words, built in the input's bits.

``F.dropout`` draws its CPU mask with ``bernoulli_``, which costs about 2.5× a uniform draw and
was 14 % of a bf16 Transformer training step here (benchmarks/train_throughput.py); a float
``torch.rand`` draw was still 7 %. The generator makes 64 random bits per call either way, so one
int64 word is cut into four int16 lanes, one per element: a quarter of the draws — and the words
come from a generator 2.5× faster than torch's CPU one (:func:`random_words`). An element is
kept when its lane clears a threshold, with probability 1 − p′ where p′ = round(p · 2¹⁶) / 2¹⁶ is
p to within 2⁻¹⁷ (0.2 becomes 0.199997); kept elements are scaled by 1 / (1 − p′), so the output's
expectation is exactly the input, as with ``nn.Dropout``. The masks follow torch's default
generator, so ``torch.manual_seed`` makes them reproducible.

The mask is made with integer passes only: a lane becomes 0 or 1 by a clamp and a subtraction,
and that integer times the *bits* of 1 / (1 − p′) is the float mask itself, read in the input's
dtype — no comparison (whose bool output converts element by element on CPU), no conversion, no
scaling pass. :func:`relu_dropout` folds ReLU's gate into the same mask, read from the sign of the
input's bits. On other devices ``F.dropout`` is already fast and is used as it is; so it is under
``torch.compile`` (``train.compile``), which cannot trace the in-place ``random_`` (one graph break
per call) and fuses its own mask.

Contiguous bf16 and float32 tensors on CPU go one step further when a C compiler is at hand: the
fused kernel (dropout_kernel.c, built by cpu_kernel.py) draws, tests, gates and scales in one pass
and stores no mask — the same keep law, scale and rounding as the passes above, with the words
from splitmix64 keyed by (seed, position), so a mask does not depend on the thread count. With it,
ours-bf16 in benchmarks/train_throughput.py ran at a median 3.68× plain over nine runs, against
3.19–3.44× with it switched off (``HEEDFUL_CPU_KERNELS=0``) between them (docs/RESULTS.md).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heedful.attention import cpu_kernel

LANES = 1 << 16  # values of one int16 lane


def random_words(count: int, device: torch.device | str = "cpu") -> Tensor:
    """``count`` uniformly random int64 words (64 random bits each), following torch's seed.

    On CPU, torch's generator (a Mersenne Twister, one thread) makes about 300 M words/s here;
    numpy's SFC64 (a small chaotic generator that passes PractRand and TestU01's BigCrush) makes
    them 2.5× faster. It is seeded per call from torch's default generator, so ``torch.manual_seed``
    still fixes every mask and successive calls draw unrelated streams."""
    if torch.device(device).type != "cpu":
        return torch.empty(count, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return torch.from_numpy(np.random.SFC64(seed).random_raw(count).view(np.int64))


def _keep_law(p: float) -> tuple[int, int, float]:
    """(dropped, threshold, keep rate) for p: of the 2¹⁶ values of a lane, ``dropped`` =
    round(p · 2¹⁶) are dropped — those below ``threshold`` = −2¹⁵ + dropped — so an element is
    kept with probability 1 − p′ = 1 − dropped / 2¹⁶ (p < 1 always keeps one value)."""
    dropped = min(round(p * LANES), LANES - 1)
    return dropped, dropped - LANES // 2, 1.0 - dropped / LANES


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device | str = "cpu") -> tuple[Tensor, float]:
    """An int16 mask of ``shape``, 1 with probability 1 − p′ (kept) and 0 otherwise, and 1 − p′.

    Two integer passes (``clamp`` then ``sub_``) turn a lane into 0 or 1: a comparison would write
    a bool tensor, which converts to anything else element by element on CPU."""
    n = math.prod(shape)
    words = random_words((n + 3) // 4, device)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform over [−2¹⁵, 2¹⁵)
    dropped, threshold, keep_rate = _keep_law(p)
    if dropped == 0:
        return torch.ones(shape, dtype=torch.int16, device=device), 1.0
    return lanes.clamp_(threshold - 1, threshold).sub_(threshold - 1), keep_rate  # the words' own memory


# The signed integer type of each float type's width. A float's bits read as that integer are
# positive exactly when the float is (+0 reads as 0, −0 as the most negative integer; positive
# denormals, infinity and NaN as positive), which lets relu_dropout read ReLU's gate from them.
_BITS = {
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def _scaled_mask(x: Tensor, p: float, gate_by_sign: bool) -> Tensor:
    """x's dtype and shape: 1/(1 − p′) where kept (and, with ``gate_by_sign``, where x > 0), else 0.

    Built in x's bits: the 0/1 integer mask times the bits of 1/(1 − p′) *is* that float, so no
    float conversion or scaling pass is needed (the scale is rounded to x's dtype, as a float mask
    multiplied by it would be)."""
    keep, keep_rate = keep_mask(x.shape, p, x.device)
    bits = _BITS[x.dtype]
    mask = keep if bits == torch.int16 else keep.to(bits)
    if gate_by_sign:  # min(mask, bits) then ≥ 0: 1 where kept and x > 0, in the mask's memory
        torch.minimum(mask, x.view(bits), out=mask).clamp_(min=0)
    return mask.mul_(_scale_bits(keep_rate, x.dtype)).view(x.dtype)


@functools.cache
def _scale(keep_rate: float, dtype: torch.dtype) -> float:
    """1/keep_rate rounded to ``dtype``: the value of a kept element's mask, made once per (p, dtype)
    rather than by a tensor and a read-back per dropout call."""
    return float(torch.tensor(1.0 / keep_rate, dtype=dtype))


@functools.cache
def _scale_bits(keep_rate: float, dtype: torch.dtype) -> int:
    """:func:`_scale`'s bits, read as ``dtype``'s signed integer."""
    return int(torch.tensor(_scale(keep_rate, dtype), dtype=dtype).view(_BITS[dtype]))


def _fast_path(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _BITS and not torch.compiler.is_compiling()


# The fused kernel's entry points per dtype: (dropout, ReLU-dropout backward).
_KERNELS = {
    torch.bfloat16: ("heedful_dropout_bf16", "heedful_gate_bf16"),
    torch.float32: ("heedful_dropout_f32", "heedful_gate_f32"),
}


def _kernel_for(x: Tensor):
    """The compiled kernel when x can take it (a contiguous CPU bf16/fp32 tensor, eager), else None."""
    if x.dtype not in _KERNELS or not x.is_contiguous() or not _fast_path(x):
        return None
    return cpu_kernel.load()


class _FusedDropout(torch.autograd.Function):
    """y = x · m in one C pass (dropout_kernel.c); m = scale where kept (and, for ReLU-dropout, where
    x > 0), else 0 — the same mask law as :func:`_scaled_mask`, with the words from splitmix64.

    Nothing of the mask is stored: dropout's backward draws it again from the seed (one more pass at
    about the cost of a product), ReLU-dropout's reads it from the output y, which is > 0 exactly
    where the mask is non-zero and which the next Linear keeps for its own backward anyway."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float, relu: bool, lib) -> Tensor:
        _, threshold, keep_rate = _keep_law(p)
        scale = _scale(keep_rate, x.dtype)
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))  # follows torch.manual_seed
        threads = torch.get_num_threads()
        y = torch.empty_like(x)
        getattr(lib, _KERNELS[x.dtype][0])(x.data_ptr(), y.data_ptr(), x.numel(), seed, threshold, scale, relu, threads)
        ctx.args = (seed, threshold, scale, relu, threads, lib)
        if relu:
            ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        seed, threshold, scale, relu, threads, lib = ctx.args
        grad = grad.contiguous()
        dx = torch.empty_like(grad)
        dropout_fn, gate_fn = _KERNELS[grad.dtype]
        if relu:
            (y,) = ctx.saved_tensors
            getattr(lib, gate_fn)(grad.data_ptr(), y.data_ptr(), dx.data_ptr(), grad.numel(), scale, threads)
        else:
            args = (grad.data_ptr(), dx.data_ptr(), grad.numel(), seed, threshold, scale, False, threads)
            getattr(lib, dropout_fn)(*args)
        return dx, None, None, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    if not _fast_path(x):
        return F.dropout(x, p, training)
    if (lib := _kernel_for(x)) is not None:
        return _FusedDropout.apply(x, p, False, lib)
    return x * _scaled_mask(x, p, gate_by_sign=False)


def relu_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``dropout(relu(x))`` in one multiplication by a mask that holds both gates.

    relu(x)·m = x·(m·[x > 0]), and the gradient is that same mask: so the forward makes one mask
    (ReLU's gate read from x's sign bit) and one product, and autograd's backward is one product —
    three passes over x's size fewer than ReLU then dropout (forward and backward of a bf16
    (292, 14, 1024) feed-forward activation on 2 threads here: 9.5 ms for ReLU then the dropout
    before this function, 5.5 ms). Equal to ``dropout(F.relu(x))`` with the same mask wherever x
    is finite; at x = −inf it gives NaN (−inf · 0) where ReLU gives 0."""
    if not training or p == 0.0 or not _fast_path(x):
        return dropout(F.relu(x), p, training)
    if (lib := _kernel_for(x)) is not None:
        return _FusedDropout.apply(x, p, True, lib)
    return x * _scaled_mask(x, p, gate_by_sign=True)


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (same ``p`` and ``train()``/``eval()`` behaviour)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
