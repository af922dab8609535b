"""A Linear layer and the ReLU after it in one kernel, where the layer's kernel can apply it.

``relu(linear(x))`` costs a pass over the layer's output after the matmul: at a beam-5 decoder
step of the Multi30k model (500 rows × 1,024 features in the feed-forward) that pass was 5 % of
an int8 step's operator time. oneDNN's float32 matmul (:mod:`heedful.nn.packed`) and torch's
dynamic int8 Linear (:mod:`heedful.nn.int8`) both take the ReLU as a step of the matmul itself
(the same max(0, ·) of the same output, so bit for bit the same result); a layer offering that
exposes it as a ``forward_relu`` method, and :func:`linear_relu` calls it. Any other layer — a
plain ``nn.Linear`` outside a prepacked block, a low-rank pair, a layer with forward hooks (they
are called by the layer's own call only) — runs as ``relu(linear(x))``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def linear_relu(linear: nn.Module, x: Tensor) -> Tensor:
    """``relu(linear(x))``, fused into the layer's kernel where the layer offers ``forward_relu``."""
    fused = getattr(linear, "forward_relu", None)
    if fused is None or linear._forward_hooks or linear._forward_pre_hooks:  # hooks see the layer's own call
        return F.relu(linear(x))
    return fused(x)
