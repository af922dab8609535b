"""``train.compile``: the model's forward through ``torch.compile`` where it can run, with the
reason in one line where it cannot (training then goes on uncompiled).

``nn.Module.compile`` compiles in place: the parameters, their names and the submodules a task
reaches into stay as they are, so checkpoints, DDP and ``task.loss`` see the same model.
"""

from __future__ import annotations

import importlib.util
import shutil

import torch
from torch import nn

BACKEND = "inductor"  # torch.compile's default; tests use "eager" (graph capture, no code generation)


def why_not_compiled(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here, or None when it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if BACKEND != "inductor":
        return None
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs triton, which is not installed"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH"
    if device.type not in ("cpu", "cuda"):
        return f"torch.compile is not set up for device {device.type!r} here"
    return None


def compile_model(model: nn.Module, device: torch.device) -> str | None:
    """Compile ``model``'s forward in place; returns the reason when it was left as it is.

    A graph the compiler cannot handle at run time falls back to eager execution for that frame
    (``torch._dynamo.config.suppress_errors``) with PyTorch's own warning, rather than ending the run."""
    reason = why_not_compiled(device)
    if reason is not None:
        return reason
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    model.compile(backend=BACKEND)
    return None
