"""Where tensors live and in which precision they are computed: shared by training, decoding
and every task, so it sits below all of them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from heedful.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA where there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a device;
    a name that is no device, or CUDA on a machine without it, is a one-line ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'device': {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {name!r} asked for, but this machine has no CUDA device")
    return device


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch's tensors on ``device``; its other values as they are."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def eager() -> bool:
    """Whether code runs op by op as written: not traced (TorchScript, ONNX export) nor compiled
    or exported by dynamo. Shape-dependent shortcuts (a padding sized from a tensor's length, a
    kernel chosen per call) are for eager runs only: a trace would record them as constants."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export())


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast on ``device`` for ``precision == "bf16"``; otherwise a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def keeping_torch_threads() -> Iterator[None]:
    """torch's thread count as it was on entry, set again on leaving. What changes it under us: our
    own decoding workers (each sets 1 for itself, decode/batching.py) and CTranslate2, which sets
    OpenMP's count to its intra_threads where torch reads it too — after creating a 2-worker
    translator (intra_threads 1), torch was left on 1 thread and our decoding ran 1.5× slower
    (measured, torch 2.13 and CTranslate2 4.8 on the CPU)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
