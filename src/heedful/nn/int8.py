"""Dynamic int8 quantization for CPU inference, and its int8 weights to and from safetensors.

Every ``nn.Linear``, ``nn.GRU`` and ``nn.LSTM`` becomes torch's dynamic int8 module
(``torch.ao.quantization.quantize_dynamic``): weights stored as int8 with one scale per tensor,
activations quantized on the fly per batch, the matmuls run by fbgemm/oneDNN's int8 kernels.
Embedding tables are rounded to int8 values as well and stored as int8 (``_int8_embeddings``):
a decoder's input embedding tied to its output projection becomes that projection's
dequantized int8 weight and is stored once; other tables get one scale per row.

Why ``torch.ao`` and not torchao: torchao 0.18 (the one on our index) installs beside torch 2.13,
but its dynamic int8 CPU path (``Int8DynamicActivationInt8WeightConfig``) ran a 256→1024→256 MLP
on 5 rows in 1,149 µs against 327 µs in float32 and 200 µs with ``quantize_dynamic`` (one
thread, 2026-12-04): its kernels target GPUs and ``torch.compile``, and its weights are tensor
subclasses that torch serializes by pickling. ``torch.ao.quantization`` warns that it is
deprecated but still ships with our pinned torch; we silence that warning here, in one place.

Which int8 kernels: torch packs each weight for one quantized engine when it quantizes, and the
packed weight keeps that engine's kernels. We pack for torch's default engine ("x86": fbgemm's
kernels for dynamic Linears), record it with the model (``{"method": "int8", "engine": …}``) and
pack for it again on loading, so a reloaded model runs the kernels it was saved with. oneDNN was
tried and is not the default: on an Intel Xeon with AMX int8 units its kernels ran a lone
500 × 256 → 8,000 projection (a beam-5 decoder's vocabulary step, 100 sentences) in 1.8 ms
against fbgemm's 10.7 ms (benchmarks/int8_engines.py, 1 thread), but the whole beam-5 decoding
of test2016 was slower with it than with fbgemm (81.7 against 93.1 sentences/s, 2 threads,
benchmarks/optimize_engine_speed.py, 2026-12-04): a beam's row count changes at every step as
sentences finish, and oneDNN at small or new shapes cost more than it saved. The stored int8
values and scales do not depend on the engine.

One exception, layer by layer: a Linear at least ``WIDE_OUTPUT_FEATURES`` wide — a decoder's
vocabulary projection — is packed for oneDNN when the default engine is fbgemm's. On the AMD Zen 4
host (AVX-512 VNNI, no AMX) fbgemm ran the 500 × 256 → 8,000 projection in 4.0–12.5 ms (its
(M, N) int32 buffer and output are fresh memory at every call, and often fresh pages) against
oneDNN's 2.8–3.1 ms, while at the narrow layers fbgemm was as fast or faster; beam-5 decoding of
Multi30k was 1–8 % faster with the projection alone on oneDNN (paired medians of four runs) and
not faster with every layer on it (docs/RESULTS.md, "int8: the vocabulary projection on
oneDNN"). The two engines' outputs differ by rounding only (≤ 1e-6 on unit-scale logits). Which
layers went to which engine is recorded with the model (``layer_engines``) and honoured on
loading.

Every int8 Linear is ``Int8Linear`` (:func:`int8_linear_class`): torch's dynamic Linear, with a
forward that calls the int8 kernel's overload directly. torch's own checks the weights' dtype
and the module's version, then goes through the operator's Python dispatch checks: a few µs a
call, 19 calls a decoder step. Measured on whole beam-5 decoding, the gain is 1–2 %, at batch 1
as at batch 100 (docs/RESULTS.md, the same section).

Parametrized layers (the GAN's spectral norm) are baked into plain weights first
(``bake_parametrizations``), on saving and on loading alike, so both build the same modules.

A quantized module's ``state_dict`` holds packed-parameter objects, not tensors, so the file is
written from the int8 values themselves: for each quantized weight ``W`` (named as in the float
model, e.g. ``decoder.output.weight``) three tensors ``W.int8`` (int8, the weight's shape),
``W.scale`` (float64, ()) and ``W.zero_point`` (int64, ()), and its bias in float32 as usual.
Loading builds the float model, quantizes it the same way, and puts these values back, so the
reloaded model computes exactly what the saved one did.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from heedful.nn.weights import _tied_groups

INT8_TYPES = (nn.Linear, nn.GRU, nn.LSTM)

# A Linear with at least this many outputs (a vocabulary projection) is packed for WIDE_ENGINE
# when the default engine is fbgemm's (see the module docstring). Lower bounds were tried on the
# Zen 4 host: 1,024 (the feed-forward inputs too) and 768 (the q/k/v projections too) decoded no
# faster, 768 slower in 7 of 8 paired rounds (docs/RESULTS.md, "int8: the vocabulary projection").
WIDE_OUTPUT_FEATURES = 4096
WIDE_ENGINE = "onednn"
FBGEMM_ENGINES = ("x86", "fbgemm")


def int8_linear_class() -> type[nn.Module]:
    """``Int8Linear``, built on first use (so that importing this module does not import
    ``torch.ao``)."""
    global _INT8_LINEAR
    if _INT8_LINEAR is None:
        from torch.ao.nn.quantized import dynamic as qdynamic

        linear_dynamic = torch.ops.quantized.linear_dynamic.default  # the overload: no dispatch checks
        linear_relu_dynamic = torch.ops.quantized.linear_relu_dynamic.default

        class Int8Linear(qdynamic.Linear):
            """``torch.ao.nn.quantized.dynamic.Linear`` (qint8 weights), computing the same: the
            int8 kernel with 7-bit activations (``reduce_range``, as torch's module does)."""

            def forward(self, x: Tensor) -> Tensor:
                y = linear_dynamic(x, self._packed_params._packed_params, True)
                return y if y.dtype == x.dtype else y.to(x.dtype)

            def forward_relu(self, x: Tensor) -> Tensor:
                """``relu(forward(x))``, the ReLU applied by the int8 kernel (heedful.nn.fused)."""
                y = linear_relu_dynamic(x, self._packed_params._packed_params, True)
                return y if y.dtype == x.dtype else y.to(x.dtype)

        _INT8_LINEAR = Int8Linear
    return _INT8_LINEAR


_INT8_LINEAR: type[nn.Module] | None = None


def wide_layer_engines(model: nn.Module, engine: str) -> dict[str, str]:
    """The Linears of a float ``model`` to pack for another engine than ``engine``, by name: those
    at least WIDE_OUTPUT_FEATURES wide, for WIDE_ENGINE, when ``engine`` is fbgemm's and torch
    has WIDE_ENGINE."""
    if engine not in FBGEMM_ENGINES or WIDE_ENGINE not in torch.backends.quantized.supported_engines:
        return {}
    return {
        name: WIDE_ENGINE
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.out_features >= WIDE_OUTPUT_FEATURES
    }


def bake_parametrizations(model: nn.Module) -> nn.Module:
    """``model`` with every parametrization (spectral norm: ``W / σ(W)``) replaced, in place, by
    the plain weight it computes now. Dynamic int8 swaps a Linear for a module with no
    ``parametrizations``, so a parametrized layer cannot be quantized as it is; at inference the
    parametrization is a fixed function of stored tensors (in eval mode spectral norm runs no
    power iteration), so baking it changes no output. Call it in eval mode."""
    from torch.nn.utils import parametrize

    # Not ``parametrize.remove_parametrizations``: it deletes the property from the module's
    # generated class, which a deep copy shares with its original, and so breaks the original.
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
            module.__class__ = module.__class__.__bases__[0]  # the plain class, e.g. nn.Linear
            del module._modules["parametrizations"]
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value))
    return model


def int8_engine() -> str:
    """The quantized engine int8 weights are packed for: torch's default (see the module docstring)."""
    return torch.backends.quantized.engine


# torch's quantized engine is one process-wide setting: two threads loading int8 models at once
# (a server's workers) must not interleave their set-pack-restore sequences.
_ENGINE_LOCK = threading.RLock()


@contextlib.contextmanager
def _packing_for(engine: str) -> Iterator[None]:
    """torch's quantized engine set to ``engine`` while weights are packed, then restored; one
    thread at a time."""
    with _ENGINE_LOCK:
        if engine not in torch.backends.quantized.supported_engines:
            engine = torch.backends.quantized.engine  # recorded elsewhere, not built here: the same int8 values
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            yield
        finally:
            torch.backends.quantized.engine = before


def recorded_engine(model: nn.Module) -> str:
    """The engine a loaded int8 model was packed for (its ``optimized`` record), or torch's default
    for a model saved before engines were recorded."""
    return _int8_step(model).get("engine") or torch.backends.quantized.engine


def recorded_layer_engines(model: nn.Module) -> dict[str, str]:
    """The layers a loaded int8 model packed for another engine than :func:`recorded_engine`
    (``layer_engines`` in its record; none for a model saved before they were recorded)."""
    return dict(_int8_step(model).get("layer_engines", {}))


def _int8_step(model: nn.Module) -> dict:
    steps = [step for step in getattr(model, "optimized", []) if step.get("method") == "int8"]
    return steps[-1] if steps else {}


def quantize_int8(
    model: nn.Module, engine: str | None = None, layer_engines: dict[str, str] | None = None
) -> nn.Module:
    """``model`` with every Linear/GRU/LSTM swapped for its dynamic int8 module, packed for
    ``engine`` (default :func:`int8_engine`) — the Linears named in ``layer_engines`` for the
    engine given there (see :func:`wide_layer_engines`) — and every embedding table rounded to
    int8 values (see ``_int8_embeddings``); parametrizations are baked first
    (``bake_parametrizations``). CPU only."""
    bake_parametrizations(model.eval())
    tied = {}  # embedding name -> the Linear sharing its weight (a decoder's output projection)
    linears = {id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding) and id(m.weight) in linears:
            tied[name] = linears[id(m.weight)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        from torch.ao.quantization import quantize_dynamic
        from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

        mapping = get_default_dynamic_quant_module_mappings() | {nn.Linear: int8_linear_class()}
        with _packing_for(engine or int8_engine()):
            quantized = quantize_dynamic(model.cpu(), set(INT8_TYPES), dtype=torch.qint8, mapping=mapping)
        for name, layer_engine in (layer_engines or {}).items():
            module = quantized.get_submodule(name)
            weight, bias = module._packed_params._weight_bias()
            with _packing_for(layer_engine):
                module.set_weight_bias(weight, bias)
    _int8_embeddings(quantized, tied)
    return quantized


def _int8_embeddings(model: nn.Module, tied: dict[str, str]) -> None:
    """Embedding tables hold int8 values too, kept as float for the lookup (a lookup is no
    matmul: nothing to gain from int8 kernels, only the file's size). A table tied to a Linear
    (a decoder's input embedding and output projection) becomes that Linear's int8 weight
    dequantized, so the file holds it once, as int8; any other table is rounded per row
    (symmetric, scale = max |row| / 127) and stored as int8 with its row scales. Without this,
    an 8,000-piece vocabulary's float tables would be most of an int8 Transformer's file."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, m in modules.items():
            if not isinstance(m, nn.Embedding):
                continue
            if name in tied:
                m.weight.data = modules[tied[name]].weight().dequantize().contiguous()
                m.int8_tied_to = tied[name]
            else:
                int8, scale = _rows_to_int8(m.weight.data)
                m.weight.data = int8.float() * scale[:, None]
                m.int8_rows = True


def _rows_to_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(V, D) float -> (V, D) int8 and (V,) float32 scales: symmetric, one scale per row."""
    scale = (weight.abs().amax(dim=1) / 127.0).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row (padding): 0 stays 0
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _int8_embedding_modules(model: nn.Module, every_name: bool = False) -> dict[str, nn.Module]:
    """The int8 embedding tables by name: each once, or (``every_name``) under every name a shared
    one has (e.g. a source embedding also used as the decoder's: both names are in the state)."""
    return {
        name: m
        for name, m in model.named_modules(remove_duplicate=not every_name)
        if isinstance(m, nn.Embedding) and (hasattr(m, "int8_tied_to") or getattr(m, "int8_rows", False))
    }


def _quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized import dynamic as qdynamic

    kinds = (qdynamic.Linear, qdynamic.GRU, qdynamic.LSTM)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def _weights_and_biases(module: nn.Module) -> dict[str, Tensor]:
    """A quantized module's weights (quantized tensors) and biases (float), by their float names."""
    if hasattr(module, "_packed_params"):  # Linear
        weight, bias = module._packed_params._weight_bias()
        return {"weight": weight} | ({"bias": bias} if bias is not None else {})
    both = module._weight_bias()  # GRU/LSTM: {"weight": {"weight_ih_l0": …}, "bias": {…}}
    return {**both["weight"], **both["bias"]}


def int8_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Everything a quantized model needs, as plain tensors: int8 weights with their scale and
    zero point, float biases, and the float state of every module that was not quantized."""
    quantized = _quantized_modules(model)
    tensors: dict[str, Tensor] = {}
    for name, module in quantized.items():
        for key, value in _weights_and_biases(module).items():
            full = f"{name}.{key}"
            if value.is_quantized:
                if value.qscheme() != torch.per_tensor_affine:
                    raise ValueError(f"{full}: only per-tensor int8 weights are stored, not {value.qscheme()}")
                tensors[f"{full}.int8"] = value.int_repr().contiguous()
                tensors[f"{full}.scale"] = torch.tensor(value.q_scale(), dtype=torch.float64)
                tensors[f"{full}.zero_point"] = torch.tensor(value.q_zero_point(), dtype=torch.int64)
            else:
                tensors[full] = value.detach().contiguous()
    for name, module in _int8_embedding_modules(model).items():
        if getattr(module, "int8_rows", False):  # rows as int8 with their scales; a tied one: not at all
            tensors[f"{name}.weight.int8"], tensors[f"{name}.weight.row_scale"] = _rows_to_int8(module.weight.data)
    prefixes = tuple(f"{name}." for name in [*quantized, *_int8_embedding_modules(model, every_name=True)])
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    for names in _tied_groups(rest):  # a tied parameter once; shared storage copied apart below
        tensors[names[0]] = rest[names[0]].detach().clone()
    return tensors


def save_int8(model: nn.Module, path: str | Path) -> None:
    safetensors.torch.save_file(int8_tensors(model), str(path))


def load_int8(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Fill a model that ``quantize_int8`` made (of the same config) from ``path``, in place;
    returns (missing, unexpected) names."""
    stored = safetensors.torch.load_file(str(path))
    used: set[str] = set()
    missing: list[str] = []
    engine = recorded_engine(model)  # packed again for the kernels it was quantized for
    layer_engines = recorded_layer_engines(model)
    for name, module in _quantized_modules(model).items():
        values: dict[str, Tensor] = {}
        for key, current in _weights_and_biases(module).items():
            full = f"{name}.{key}"
            if current.is_quantized:
                parts = [f"{full}.int8", f"{full}.scale", f"{full}.zero_point"]
                if not all(p in stored for p in parts):
                    missing.append(full)
                    continue
                int8, scale, zero = (stored[p] for p in parts)
                if int8.shape != current.shape:
                    raise RuntimeError(f"size mismatch for {full}: {tuple(int8.shape)} vs {tuple(current.shape)}")
                values[key] = torch._make_per_tensor_quantized_tensor(int8, float(scale), int(zero))
                used.update(parts)
            elif full in stored:
                values[key] = stored[full]
                used.add(full)
            else:
                missing.append(full)
        with _packing_for(layer_engines.get(name, engine)):
            if hasattr(module, "_packed_params"):
                module.set_weight_bias(values["weight"], values.get("bias"))
            else:
                module.set_weight_bias(values)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, module in _int8_embedding_modules(model).items():
            if hasattr(module, "int8_tied_to"):  # the tied Linear's int8 weight, as quantize_int8 made it
                module.weight.data = modules[module.int8_tied_to].weight().dequantize().contiguous()
                continue
            parts = [f"{name}.weight.int8", f"{name}.weight.row_scale"]
            if not all(p in stored for p in parts):
                missing.append(f"{name}.weight")
                continue
            int8, scale = (stored[p] for p in parts)
            if int8.shape != module.weight.shape:
                raise RuntimeError(
                    f"size mismatch for {name}.weight: {tuple(int8.shape)} vs {tuple(module.weight.shape)}"
                )
            module.weight.data = int8.float() * scale[:, None]
            used.update(parts)
    # The float rest, module by module: a quantized module's own loader wants its packed
    # parameters even when loading non-strictly, so ``load_state_dict`` cannot be used.
    embeddings = _int8_embedding_modules(model, every_name=True)
    prefixes = tuple(f"{name}." for name in [*_quantized_modules(model), *embeddings])
    rest = {k: v for k, v in stored.items() if k not in used}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    for names in _tied_groups(own):
        present = [n for n in names if n in rest]
        for n in names if present else []:
            rest.setdefault(n, rest[present[0]])
    with torch.no_grad():
        for name, tensor in own.items():
            if name in rest:
                if rest[name].shape != tensor.shape:
                    raise RuntimeError(f"size mismatch for {name}: {tuple(rest[name].shape)} vs {tuple(tensor.shape)}")
                tensor.copy_(rest[name])
            else:
                missing.append(name)
    unexpected = [k for k in rest if k not in own]
    return missing, unexpected
