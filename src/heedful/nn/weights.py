"""Model weights to and from safetensors files, for any module heedful trains.

``safetensors.torch.save_model`` stores tied parameters once, but refuses tensors that are
views into one larger buffer that none of them covers — exactly what cuDNN makes of an
``nn.GRU``/``nn.LSTM``'s weights on a GPU (``flatten_parameters``). So a BiGRU trained on
CUDA could not be saved, nor a checkpoint loaded into one. Here tied parameters are still
stored once (under their first name in the state dict) and every other tensor that shares
memory is copied apart; loading fills a tied name from its stored twin and copies values into
the module's own tensors, whatever buffer they live in.

``sha256`` is what a checkpoint's ``state.json`` and a model folder's ``config.json`` record of
the weight files beside them: bytes changed inside the tensor data still parse, and only the sum
tells a damaged file from a good one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import safetensors.torch
import torch
from torch import nn


def _identity(tensor: torch.Tensor) -> tuple:
    """Two state-dict entries with the same identity are one tied parameter."""
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
            tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)  # fmt: skip


def _tied_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(_identity(tensor), []).append(name)
    return list(groups.values())


def weights_for_saving(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors to store: one per tied group, none sharing memory with another."""
    state = module.state_dict()
    kept = {names[0]: state[names[0]].detach() for names in _tied_groups(state)}

    def storage(tensor: torch.Tensor) -> tuple:
        return tensor.device, tensor.untyped_storage().data_ptr()

    users = Counter(storage(tensor) for tensor in kept.values())
    return {
        name: tensor.clone() if users[storage(tensor)] > 1 else tensor.contiguous() for name, tensor in kept.items()
    }


def save_weights(module: nn.Module, path: str | Path) -> None:
    safetensors.torch.save_file(weights_for_saving(module), str(path))


def load_weights(module: nn.Module, path: str | Path, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load ``path`` into ``module`` in place (onto the device it is on); return (missing,
    unexpected) names as ``load_state_dict`` does (with ``strict`` it raises on either instead)."""
    device = next(iter(module.state_dict().values()), torch.empty(0)).device
    stored = safetensors.torch.load_file(str(path), device=str(device))
    for names in _tied_groups(module.state_dict()):
        present = [name for name in names if name in stored]
        if present:  # a tied parameter was stored once: its other names take the same values
            for name in names:
                stored.setdefault(name, stored[present[0]])
    missing, unexpected = module.load_state_dict(stored, strict=strict)
    return list(missing), list(unexpected)


def sha256(path: str | Path) -> str:
    """The file's sha256 in hex, read in blocks: a weights file is never held in memory whole for it."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
