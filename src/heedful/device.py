"""Where tensors live and in which precision they are computed: shared by training, decoding
and every task, so it sits below all of them."""

from __future__ import annotations

import contextlib
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


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast on ``device`` for ``precision == "bf16"``; otherwise a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
