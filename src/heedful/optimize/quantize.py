"""int8: every Linear, GRU and LSTM of a run's model as dynamic int8 modules, for CPU inference
(``heedful.nn.int8`` says how, and why ``torch.ao`` rather than torchao)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from torch import nn

from heedful.nn.int8 import INT8_TYPES, bake_parametrizations, int8_engine, quantize_int8, wide_layer_engines
from heedful.optimize.common import OptimizeError

if TYPE_CHECKING:
    from heedful.runs import Run


def int8(run: Run) -> tuple[nn.Module, dict[str, Any]]:
    """The run's model with int8 Linear/GRU/LSTM layers (a copy, on the CPU), and what was done."""
    model = run.model
    if any(step.get("method") == "int8" for step in getattr(model, "optimized", [])):
        raise OptimizeError(f"{run.run_dir}: its model is int8 already")
    baked = bake_parametrizations(copy.deepcopy(model).cpu().eval())  # a parametrized Linear is its own type
    layers = [name for name, m in baked.named_modules() if type(m) in INT8_TYPES]
    if not layers:
        raise OptimizeError(f"{run.run_dir}: its model has no Linear, GRU or LSTM layer to quantize")
    engine = int8_engine()
    layer_engines = wide_layer_engines(baked, engine)  # the vocabulary projection on oneDNN (heedful.nn.int8)
    quantized = quantize_int8(baked, engine, layer_engines)
    step = {"method": "int8", "engine": engine} | ({"layer_engines": layer_engines} if layer_engines else {})
    quantized.optimized = [*getattr(model, "optimized", []), step]
    return quantized, {"method": "int8", "layers": len(layers)} | step
