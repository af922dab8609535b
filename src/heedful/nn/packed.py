"""Float32 Linear layers on oneDNN's prepacked matmul, for CPU inference.

Within :func:`packed_linears`, every plain ``nn.Linear`` of a model computes its float32
forward, when no gradient is wanted, with oneDNN's matmul on a copy of its weight reordered once
into oneDNN's own blocked layout (``torch.ops.mkldnn._reorder_linear_weight`` and
``_linear_pointwise``, the ops PyTorch's inductor compiles frozen CPU models to). It is the same
float32 arithmetic in another summation order: outputs differ from ``F.linear``'s by rounding
(a few 1e-6 on unit-scale outputs of layers 256–1,024 wide).

Why: ``F.linear`` on a CPU calls MKL's sgemm on the plain weight, which packs it into its own
panels at every call. At a decoder step's shapes that is a large part of a small matmul. Rows
through the Multi30k model's layers, µs, ``F.linear`` / prepacked (2-core Zen 4 host, torch 2.13,
2 threads, 2026-12-05; ``benchmarks/cpu_kernels.py``; docs/RESULTS.md, "Prepacked float32 Linears
and short softmax rows"):

    rows   256→8,000        256→768        256→1,024      1,024→256      256→256
       5      479 / 140       46 / 33        65 / 39        78 / 37        17 / 23
     100    3,038 / 2,000    313 / 209      401 / 268      338 / 261      87 / 78
     800   18,414 / 16,819  1,738 / 1,532  2,273 / 1,941  2,152 / 1,924  536 / 494

Beam-5 decoding of the 1,000 test2016 sources got 1.11× faster at forced lengths
(``benchmarks/decoding.py``) and 1.12× at natural lengths with a trained model; one sentence at a
time, 1.07×.

A layer's packed weight is kept with the layer (a weak reference: it goes with the module) from
one block to the next, and checked at the layer's first call in each block: its storage, its
shape, and a fingerprint of its values, the dot product with a fixed random vector (summed so
that it is the same number at any thread count, see :func:`_fingerprint`). A weight that
changed between blocks (a training step between two validations, averaged weights copied in) is
packed again. Weight versions cannot say this: torch's fused optimizer steps update parameters
without moving their version counter. The fingerprint reads the weight once, a fraction of the
cost of packing it (2.1–3.4 against 8–17 ms for the Multi30k model's 37 Linears, 2 threads on an
Intel host, docs/RESULTS.md), which matters when a block is one short sentence. What the
fingerprint can miss: a change orthogonal to a random vector, or one too small to move a float32
sum of 4,096 weights times the probe — a few weights moved by less than a few 1e-6 of their
scale, whose effect on the outputs is of the order of the rounding difference between the two
kernels. Weights must not change *inside* a block (one decoding, one
``predict``); the tasks open one block per ``translate`` / ``predict`` call, around all its batches.

A call takes the ordinary path whenever the packed one would not compute the same thing or could
not be recorded: gradients enabled, autocast on, not float32, not on the CPU, while tracing,
compiling or exporting to ONNX, and for parametrized weights (spectral norm computes its weight at
every access). Hosts whose torch lacks oneDNN, and CPUs other than x86-64, keep ``F.linear``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import platform
import threading
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from heedful.device import eager

# Where F.linear stayed faster: the smallest products, a row or a few through a narrow layer (5
# rows, 256 -> 256: 17 against 23 µs; one row, 256 -> 768: 20 against 23), while from about a
# million multiply-adds the packed kernel wins (5 rows, 256 -> 768: 46 against 33 µs; 1,024 ->
# 256: 78 against 37). Calls of fewer multiply-adds (rows × in × out) than this keep F.linear.
PACKED_MIN_MACS = 500_000
# Each layer's weight (storage, shape) and fingerprint when it was packed, and the packed copy.
_PACKS: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple, float, Tensor]] = weakref.WeakKeyDictionary()
# The layers whose packed weight was checked in the blocks open now.
_CHECKED: weakref.WeakSet[nn.Linear] = weakref.WeakSet()
# The fingerprint's probe: this many random values, laid over the weight again and again.
PROBE_WIDTH = 4096
# Per model: how many packed_linears blocks are open on it (threads decoding one model at once),
# and the layers whose forward they replaced.
_OPEN: weakref.WeakKeyDictionary[nn.Module, tuple[int, list[nn.Linear]]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


@functools.cache
def available() -> bool:
    """Whether this torch and CPU have the prepacked kernels (x86-64 with oneDNN)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    return hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@contextlib.contextmanager
def packed_linears(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run ``model``'s float32 ``nn.Linear`` layers on prepacked oneDNN kernels inside the block
    (see the module docstring); ``enabled=False`` or a host without them: a no-op. Blocks may
    nest and may be open in several threads at once on one model; when the last one closes, the
    layers go back to their own ``forward``, and their packed weights wait for the next block,
    which checks them before use. The weights must not change inside the block. A model that is
    not an ``nn.Module`` (anything speaking the decoding protocol) is left alone."""
    if not enabled or not available() or not isinstance(model, nn.Module):
        yield model
        return
    with _LOCK:
        opened, layers = _OPEN.get(model, (0, []))
        if opened == 0:
            layers = _packable(model)
            for layer in layers:
                layer.forward = functools.partial(_forward, layer)  # shadows the class's forward
                layer.forward_relu = functools.partial(_forward, layer, relu=True)  # heedful.nn.fused
        _OPEN[model] = (opened + 1, layers)
    try:
        yield model
    finally:
        with _LOCK:
            opened, layers = _OPEN.pop(model)
            if opened > 1:
                _OPEN[model] = (opened - 1, layers)
            else:
                for layer in layers:
                    del layer.forward, layer.forward_relu
                    _CHECKED.discard(layer)


def _packable(model: nn.Module) -> list[nn.Linear]:
    """The float32 CPU Linears whose forward may be replaced (a GPU model's layers are left alone)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear)
        and "forward" not in m.__dict__
        and not parametrize.is_parametrized(m)
        and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.float32
    ]


def _forward(module: nn.Linear, x: Tensor, relu: bool = False) -> Tensor:
    """The layer's forward in a block; with ``relu``, ``relu(forward(x))`` (the ReLU a step of
    oneDNN's matmul on the packed path)."""
    weight = module.weight
    if (
        torch.is_grad_enabled()
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.device.type != "cpu"
        or weight.device.type != "cpu"
        or torch.is_autocast_enabled("cpu")
        or x.numel() * weight.shape[0] < PACKED_MIN_MACS
        or not eager()
    ):
        y = F.linear(x, weight, module.bias)
        return F.relu(y) if relu else y
    return packed_matmul(x, _packed_weight(module, weight), module.bias, relu)


def packed_matmul(x: Tensor, packed: Tensor, bias: Tensor | None, relu: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)`` on oneDNN's kernel, ``packed`` being :func:`_pack` of ``weight``;
    with ``relu``, its ReLU as a step of the same kernel."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "relu" if relu else "none", [], "")


def _packed_weight(module: nn.Linear, weight: Tensor) -> Tensor:
    key = (weight.data_ptr(), tuple(weight.shape))  # a parameter replaced inside the block is packed anew
    held = _PACKS.get(module)
    if held is not None and held[0] == key and module in _CHECKED:
        return held[2]
    fingerprint = _fingerprint(weight)
    if held is None or held[0] != key or held[1] != fingerprint:
        held = _PACKS[module] = (key, fingerprint, _pack(weight))
    _CHECKED.add(module)
    return held[2]


def _fingerprint(weight: Tensor) -> float:
    """The weight's values as one number: their dot product with a fixed random vector, the same
    number whatever torch's thread count. One float32 ``torch.dot`` over the whole weight was not
    (its threads split the sum differently: the Multi30k vocabulary projection's fingerprint moved
    in the 6th digit from 2 threads to 1), and neither was a ``torch.mv`` over rows of PROBE_WIDTH
    values: on an Intel host MKL's threads split the rows, and the rows at the split points (3 of
    500) came out of another kernel, rounded otherwise. So a decoding in one-thread workers after
    one on the caller's threads packed every layer again. Here each row is multiplied by the probe
    and summed by torch's own reduction, which gives each row to one thread and sums it in one
    order (a row is far below the size at which torch splits one sum), and the rows' sums are
    added exactly (``math.fsum``), in any order the same."""
    flat = weight.detach().reshape(-1)
    probe = _probe(flat.dtype, flat.device)
    rows = flat.numel() // PROBE_WIDTH
    row_sums = (flat[: rows * PROBE_WIDTH].view(rows, PROBE_WIDTH) * probe).sum(-1).tolist() if rows else []
    rest = flat[rows * PROBE_WIDTH :]
    return math.fsum([*row_sums, float((rest * probe[: rest.numel()]).sum()) if rest.numel() else 0.0])


@functools.cache
def _probe(dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.randn(PROBE_WIDTH, generator=torch.Generator().manual_seed(PROBE_WIDTH)).to(dtype=dtype, device=device)


def _pack(weight: Tensor) -> Tensor:
    """The weight (out, in) reordered into oneDNN's blocked layout."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())
