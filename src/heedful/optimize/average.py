"""Checkpoint averaging (fairseq's ``average_checkpoints``): the element-wise mean of the model
weights in the last N checkpoints of a run, which usually scores a little above any one of them
(the iterates of late training wander around a minimum; their mean sits nearer its centre)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
from torch import Tensor, nn

from heedful.nn.weights import load_weights
from heedful.optimize.common import OptimizeError, option

if TYPE_CHECKING:
    from heedful.runs import Run


def average_tensors(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of each floating tensor over ``states`` (accumulated in float64, returned in its
    own dtype); integer tensors (counters) are taken from the last state."""
    if not states:
        raise ValueError("nothing to average")
    names = states[0].keys()
    for i, state in enumerate(states[1:], 2):
        if state.keys() != names:
            raise ValueError(f"state {i} holds other tensors than state 1")
    averaged = {}
    for name in names:
        first = states[0][name]
        if first.is_floating_point():
            total = sum(state[name].double() for state in states)
            averaged[name] = (total / len(states)).to(first.dtype)
        else:
            averaged[name] = states[-1][name].clone()
    return averaged


def checkpoint_paths(run_dir: Path, last: int) -> list[Path]:
    from heedful.train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        raise OptimizeError(f"{run_dir}: has no checkpoints/ to average")
    if last < 1:
        raise OptimizeError(f"{option('last', last)}: average at least one checkpoint")
    if last > len(found):
        raise OptimizeError(
            f"{run_dir}: {option('last', last)}, but only {len(found)} checkpoints are kept (train.keep_checkpoints): "
            f"give last={len(found)}, or train with train.keep_checkpoints={last}"
        )
    return found[-last:]


def average(run: Run, last: int = 5) -> tuple[nn.Module, dict[str, Any]]:
    """The run's model with the mean weights of its last ``last`` checkpoints."""
    if getattr(run.model, "optimized", []):
        raise OptimizeError(f"{run.run_dir}: average the checkpoints of the original run, before other steps")
    from heedful.train.checkpoint import verify_checksums

    paths = checkpoint_paths(run.run_dir, last)
    for path in paths:  # a damaged file still parses, and would be averaged into the model unseen
        verify_checksums(path, ("model.safetensors",))
    states = [safetensors.torch.load_file(str(path / "model.safetensors")) for path in paths]
    try:
        averaged = average_tensors(states)
    except ValueError as exc:
        raise OptimizeError(f"{run.run_dir}: checkpoints differ in their tensors ({exc})") from None
    model = copy.deepcopy(run.model)
    with tempfile.TemporaryDirectory() as tmp:  # load_weights fills tied names from their stored twin
        safetensors.torch.save_file(averaged, f"{tmp}/averaged.safetensors")
        load_weights(model, f"{tmp}/averaged.safetensors")
    model.optimized = [{"method": "average", "checkpoints": [p.name for p in paths]}]
    return model.eval(), {"method": "average", "checkpoints": [p.name for p in paths]}
