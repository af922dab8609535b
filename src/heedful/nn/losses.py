"""Label-smoothed cross-entropy over a large vocabulary, computed a few rows at a time.

``F.cross_entropy(logits.float(), gold, label_smoothing=ε)`` is what a translation loss computes,
and on a CPU its cost is memory traffic over the (N, V) logits, not arithmetic: a bf16 logits
matrix of 4,000 targets × 8,000 pieces is 64 MB, its fp32 copy 128 MB, and autograd makes about
ten passes over such matrices — the fp32 copy, log-softmax, the smoothing sum, the argmax of the
accuracy statistic, then in the backward a zero fill and a scatter for the NLL term, an expand
for the smoothing term, their sum, the log-softmax backward and the cast back to bf16. In a bf16
Transformer training step on Multi30k these were a quarter of the time (torch.profiler, 1 thread).

:func:`smoothed_cross_entropy` computes the same loss and gradient with one autograd node that
walks the logits in blocks of rows small enough to stay in the CPU's cache (2¹⁸ values, 1 MB in
fp32): per block, the fp32 copy, log-sum-exp, row sum and argmax in the forward; in the backward
the closed form of the gradient of the mean loss,

    ∂L/∂z_ij = (softmax(z_i)_j − ε/V − (1 − ε)·[j = y_i]) / N,

written straight into the logits' dtype. Only the logits (already in memory) and three numbers
per row are kept for the backward. The N gold entries, where p − (1 − ε) cancels as the model
grows sure, are computed apart in fp32. The loss is PyTorch's (``(1 − ε)·NLL + ε·mean_j(−log
p_ij)``, averaged over the rows). 2.65× the speed of the autograd version on 3,000 × 8,000
bf16 logits on one CPU thread (benchmarks/loss.py); on GPUs the whole matrix is one block.

:func:`projected_cross_entropy` goes one step further for a bias-free vocabulary projection (the
Transformer's, tied to the embeddings): it takes the states and the projection's weight, makes the
logits itself and, since no one else holds them, writes their gradient over them during the
forward's walk — no second (N, V) matrix and no second walk in the backward, which is the
projection's two matmuls. Under bf16 autocast its gradients are those of ``nn.Linear`` followed
by :func:`smoothed_cross_entropy`, to the bit.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from heedful.device import eager

CPU_BLOCK_VALUES = 1 << 18  # logits per block on CPU: 1 MB in fp32, half of it per core of a 2-thread pass


def _block_rows(logits: Tensor) -> int:
    """Rows per block: a cache's worth on CPU, the whole matrix elsewhere."""
    n, v = logits.shape
    return max(1, CPU_BLOCK_VALUES // v) if logits.device.type == "cpu" else n


def _gold_gradient(gold_logit: Tensor, log_norm: Tensor, smoothing: float, v: int, scale: float | Tensor) -> Tensor:
    """∂L/∂z at the gold entries (N,), fp32: (p_gold − ε/V − (1 − ε))·scale, computed apart because
    p − (1 − ε) cancels as the model grows sure."""
    return (torch.exp(gold_logit - log_norm) - smoothing / v - (1.0 - smoothing)) * scale


def _fp32_block(block_logits: Tensor, buffer: Tensor) -> tuple[Tensor, Tensor]:
    """A block of logits (R, V) in fp32, and the rows of ``buffer`` that hold what is computed from
    it: fp32 logits are read where they are (they may be the caller's, never to be written), any
    other dtype is copied into the buffer first."""
    out = buffer[: block_logits.shape[0]]
    return (block_logits if block_logits.dtype == torch.float32 else out.copy_(block_logits)), out


def _walk(
    logits: Tensor, gold: Tensor, smoothing: float, gradient_scale: float | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One walk over ``logits`` (N, V) in cache-sized blocks: the mean smoothed loss, each row's
    argmax (N,), log Σ_j exp z_ij (N,) and gold logit (N,), fp32. With ``gradient_scale``
    (∂L/∂(a row's loss)), the loss's gradient is written over the logits as the walk goes — only
    for a caller that owns them."""
    n, v = logits.shape
    rows = _block_rows(logits)
    device = logits.device
    # Per row, kept as (N, 1) so a block's statistics broadcast over its (R, V) values as they are.
    top = torch.empty(n, 1, device=device)  # max_j z_ij
    total = torch.empty(n, 1, device=device)  # Σ_j exp(z_ij − top_i)
    row_sum = torch.empty(n, 1, device=device)  # Σ_j z_ij
    predicted = torch.empty(n, 1, dtype=torch.long, device=device)
    gold_logit = logits.gather(1, gold[:, None]).squeeze(1).float()  # before any overwrite
    # One fp32 buffer (R, V) for every block, the statistics written in place, and the blocks' views
    # made once by split: with a fresh tensor per block (the cast, then the shift) and row ranges
    # sliced in Python, allocations and dispatch were a third of the walk's time — 3,980 × 8,000
    # bf16 logits took 41–49 ms, against 30–32 ms now (2 threads; docs/RESULTS.md).
    buffer = torch.empty(min(rows, n), v, device=device)
    for block_logits, block_top, block_total, block_sum, block_predicted in zip(
        *(t.split(rows) for t in (logits, top, total, row_sum, predicted)), strict=True
    ):
        block, out = _fp32_block(block_logits, buffer)  # (R, V) fp32
        torch.sum(block, dim=-1, keepdim=True, out=block_sum)
        # One max gives the argmax (the first index of the largest value, as argmax) and the shift
        # of the log-sum-exp; on CPU it is vectorized where argmax is not (half the forward's time).
        torch.max(block, dim=-1, keepdim=True, out=(block_top, block_predicted))
        exp = torch.sub(block, block_top, out=out).exp_()  # (R, V) exp(z − max), in the buffer
        torch.sum(exp, dim=-1, keepdim=True, out=block_total)
        if gradient_scale is not None:  # ∂L/∂z = (softmax − ε/V)·scale, the gold entries fixed below
            block_logits.copy_(exp.mul_(gradient_scale / block_total).sub_(smoothing / v * gradient_scale))
    top, total, row_sum, predicted = top.squeeze(1), total.squeeze(1), row_sum.squeeze(1), predicted.squeeze(1)
    log_norm = total.log_().add_(top)  # (N,) log Σ_j exp z_ij
    if gradient_scale is not None:
        gold_grad = _gold_gradient(gold_logit, log_norm, smoothing, v, gradient_scale)
        logits[torch.arange(n, device=device), gold] = gold_grad.to(logits.dtype)
    # −log p_gold = log_norm − z_gold;  mean_j(−log p_ij) = log_norm − row_sum / V
    loss = (log_norm - (1.0 - smoothing) * gold_logit - smoothing / v * row_sum).mean()
    return loss, predicted, log_norm, gold_logit


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, gold: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
        # logits (N, V) in any float dtype; gold (N,) class indices
        loss, predicted, log_norm, gold_logit = _walk(logits, gold, smoothing)
        ctx.save_for_backward(logits, gold, log_norm, gold_logit)
        ctx.smoothing = smoothing
        ctx.mark_non_differentiable(predicted)
        return loss, predicted

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_predicted: Tensor | None):
        logits, gold, log_norm, gold_logit = ctx.saved_tensors
        n, v = logits.shape
        eps, scale = ctx.smoothing, grad_loss.float() / n
        rows = _block_rows(logits)
        grad = torch.empty_like(logits)
        buffer = torch.empty(min(rows, n), v, device=logits.device)  # (R, V) fp32, as in the walk
        for block_logits, block_norm, block_grad in zip(
            *(t.split(rows) for t in (logits, log_norm[:, None], grad)), strict=True
        ):
            block, out = _fp32_block(block_logits, buffer)
            # softmax = exp(z − log_norm), in the buffer
            block_grad.copy_(torch.sub(block, block_norm, out=out).exp_().sub_(eps / v).mul_(scale))
        gold_grad = _gold_gradient(gold_logit, log_norm, eps, v, scale)  # (N,) fp32
        grad[torch.arange(n, device=grad.device), gold] = gold_grad.to(grad.dtype)
        return grad, None, None


def _check_rows_and_smoothing(loss: str, rows: int, smoothing: float) -> None:
    """The checks both losses make of their arguments beyond shapes."""
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label smoothing must be in [0, 1], got {smoothing}")
    if rows == 0:
        raise ValueError(f"{loss} needs at least one row")


class _SpareLogits:
    """One (N, V) matrix kept between training steps on CPU.

    A fresh 64 MB matrix is fresh pages for the kernel to map at first touch — about 16,000 page
    faults, 15 ms of a 30 ms projection matmul here. :class:`_ProjectedCrossEntropy` takes the
    spare at its forward (or allocates, when there is none or it is too small) and hands it back
    at the end of its backward, when nothing refers to it any more; a graph that is never
    backpropagated keeps its matrix and frees it with itself. CUDA's caching allocator already
    reuses its memory, so only CPU keeps one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._spare: Tensor | None = None

    def take(self, n: int, v: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None or spare.dtype != dtype or spare.device != device or spare.numel() < n * v:
            spare = torch.empty(n * v, dtype=dtype, device=device)
        return spare[: n * v].view(n, v)

    def clear(self) -> None:
        """Free the kept matrix (the trainer does at the end of ``fit``)."""
        with self._lock:
            self._spare = None

    def give_back(self, logits: Tensor) -> None:
        if logits.device.type == "cpu":
            with self._lock:
                base = logits._base if logits._base is not None else logits.reshape(-1)
                if self._spare is None or self._spare.numel() < base.numel():
                    self._spare = base


SPARE_LOGITS = _SpareLogits()


def _matmul_rows(n: int, device: torch.device, dtype: torch.dtype) -> int:
    """Rows for the projection's matmuls: ``n`` rounded up to a multiple of 2^(bits(n) − 6) (at most
    1/32 more; 3,979 → 4,032) for 16-bit matmuls on CPU, else ``n``.

    On CPU PyTorch runs 16-bit matmuls on oneDNN, which builds a kernel for each new shape, and the
    rows here are the batch's real target tokens — a new count nearly every batch. With K = 8,000
    the build costs more than the product: (n, 8,000) @ (8,000, 256) in bf16 took 20–30 ms for
    each new n and 7.5–8 ms for an n seen before (2 threads here). Rounded, an epoch meets a
    handful of shapes. Padded rows are zero states: their logits are exact zeros that the walk
    leaves alone, and the first n rows of each product are the unpadded product's, to the bit."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16) or not eager():
        return n
    granule = 1 << max(0, n.bit_length() - 6)
    return -(-n // granule) * granule


class _ProjectedCrossEntropy(torch.autograd.Function):
    """The vocabulary projection and the loss in one node that owns the logits: nobody else sees
    them, so their gradient is written over them in the forward, block by block while each block
    is in cache, and the backward is the projection's two matmuls."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, gold: Tensor, smoothing: float, dtype: torch.dtype):
        # hidden (N, D), weight (V, D), gold (N,); the matmuls in ``dtype`` (autocast's, or hidden's)
        n, v = hidden.shape[0], weight.shape[0]
        train = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        rows = _matmul_rows(n, hidden.device, dtype)  # N' ≥ N
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            if rows > n:  # (N', D): zero states below the real ones
                h = torch.cat([h, h.new_zeros(rows - n, h.shape[1])])
            padded = torch.mm(h, w.T, out=SPARE_LOGITS.take(rows, v, dtype, h.device))  # (N', V)
            # ∂L/∂(a row's loss) is 1/N; the upstream gradient is applied in the backward
            loss, predicted, _, _ = _walk(padded[:n], gold, smoothing, 1.0 / n if train else None)
            if train:  # the logits now hold ∂L/∂z (the padded rows: zeros)
                ctx.save_for_backward(padded, h, w)
            else:  # nothing will read them again
                SPARE_LOGITS.give_back(padded)
        ctx.dtypes, ctx.real_rows = (hidden.dtype, weight.dtype), n
        ctx.mark_non_differentiable(predicted)
        return loss, predicted

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_predicted: Tensor | None):
        padded, h, w = ctx.saved_tensors  # (N', V) ∂L/∂z, zero below row N; (N', D); (V, D)
        n = ctx.real_rows
        grad_hidden = grad_weight = None
        with torch.autocast(h.device.type, enabled=False):
            if ctx.needs_input_grad[0]:  # on the padded rows (the shape seen before), then cut
                grad_hidden = (padded @ w)[:n].to(ctx.dtypes[0]).mul_(grad_loss)  # (N, D)
            if ctx.needs_input_grad[1]:  # summed over the real rows only, as unpadded
                grad_weight = (padded[:n].T @ h[:n]).to(ctx.dtypes[1]).mul_(grad_loss)  # (V, D)
        # Done with it: the next forward may write over it. A second backward through this graph
        # (retain_graph) after that forward is refused by autograd, which sees the saved matrix's
        # version changed — an error, never a wrong gradient.
        SPARE_LOGITS.give_back(padded)
        return grad_hidden, grad_weight, None, None, None


def projected_cross_entropy(
    hidden: Tensor, weight: Tensor, gold: Tensor, smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """:func:`smoothed_cross_entropy` of the logits ``hidden @ weight.T`` — a bias-free vocabulary
    projection, hidden (N, D) and weight (V, D) — computed without handing the (N, V) logits to
    autograd: the same loss and argmax, and the same gradients as the projection followed by the
    loss, with one (N, V) matrix allocated instead of two and one pass over it fewer. Under
    autocast the matmuls run in autocast's dtype, as ``nn.Linear`` would; in float16 (whose range
    needs a loss scale applied before the gradient is rounded) it is the unfused pair."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or gold.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden must be (N, D), weight (V, D) and gold (N,), got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)} and {tuple(gold.shape)}"
        )
    _check_rows_and_smoothing("projected_cross_entropy", hidden.shape[0], smoothing)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    if dtype == torch.float16:
        # The gradient is written before the upstream one is known; in fp16 an unscaled (softmax −
        # ε/V)/N underflows, where a GradScaler's factor, applied first, keeps it. Unfused, it is.
        return smoothed_cross_entropy(F.linear(hidden, weight), gold, smoothing)
    return _ProjectedCrossEntropy.apply(hidden, weight, gold, smoothing, dtype)


def smoothed_cross_entropy(logits: Tensor, gold: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Mean label-smoothed cross-entropy of ``logits`` (N, V) against ``gold`` (N,), and the
    argmax of every row (N,): equal to ``F.cross_entropy(logits.float(), gold,
    label_smoothing=smoothing)`` and ``logits.float().argmax(-1)``, with the gradient in the
    logits' dtype. Every row counts: select the real positions first (there is no ignore_index)."""
    if logits.dim() != 2 or gold.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, V) and gold (N,), got {tuple(logits.shape)} and {tuple(gold.shape)}")
    _check_rows_and_smoothing("smoothed_cross_entropy", logits.shape[0], smoothing)
    return _SmoothedCrossEntropy.apply(logits, gold, smoothing)


def attention_cross_entropy(weights: Tensor, gold: Tensor) -> Tensor:
    """Garg et al. 2019 (§4.2)'s alignment loss: −Σ_s gold_ts · log a_ts, averaged over the rows
    that have a gold distribution (rows of ``gold`` that are all zero do not count).

    weights: (…, T, S) attention probabilities; gold: the same shape, each row a distribution or
    zeros. Computed in fp32; log a is clamped at log(1e-12) so an attention that underflowed to
    zero (bf16) gives a large finite loss, not inf. With no supervised row the loss is 0 (and
    still in the graph, so the backward pass is the same either way)."""
    if weights.shape != gold.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and gold {tuple(gold.shape)} must have one shape")
    gold = gold.float()
    supervised = (gold.sum(-1) > 0).sum()  # rows with a gold distribution
    log_weights = weights.float().clamp_min(1e-12).log()
    return -(gold * log_weights).sum() / supervised.clamp_min(1)
