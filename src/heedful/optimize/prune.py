"""Attention-head pruning (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than
One?"): each head's importance is the expected absolute gradient of the loss with respect to a
mask ξ_h on its output,

    I_h = E_x | ∂L(x) / ∂ξ_h |,    head_h's context multiplied by ξ_h (= 1),

normalised per attention module (Michel et al. §4.1: L2 over the module's heads), and the least
important heads across the model are removed — physically: their rows of W^Q, W^K, W^V and
columns of W^O go (``MultiHeadAttention.prune_heads``), so every projection gets thinner and the
model faster, not just sparser. Pruning runs in rounds (Michel §4.2: importance is measured
again after each), each optionally followed by a short fine-tuning on the task's loss.

The expectation is taken over batches of the run's training data: the ``Task`` interface gives a
loss on training batches for every task, not on its held-out splits.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from heedful.attention import MultiHeadAttention
from heedful.nn.lowrank import LowRankLinear
from heedful.optimize.common import OptimizeError, fine_tune, option, training_batches, training_stream

if TYPE_CHECKING:
    from heedful.runs import Run


def attention_modules(model: nn.Module) -> dict[str, MultiHeadAttention]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)}


def head_importance(run: Run, model: nn.Module, batches: list[Any]) -> dict[str, torch.Tensor]:
    """Module name -> (H,) importance I_h of each of its heads, L2-normalised within the module."""
    modules = attention_modules(model)
    for m in modules.values():
        m.head_mask = torch.ones(m.n_heads, requires_grad=True)
    importance = {name: torch.zeros(m.n_heads) for name, m in modules.items()}
    model.eval()  # no dropout: the gradient of the model that will be pruned
    try:
        for batch in batches:
            loss, _ = run.task.loss(model, batch)
            grads = torch.autograd.grad(loss, [m.head_mask for m in modules.values()], allow_unused=True)
            for name, grad in zip(modules, grads, strict=True):
                if grad is not None:
                    importance[name] += grad.abs()
    finally:
        for m in modules.values():
            m.head_mask = None
    return {name: values / values.norm().clamp_min(1e-20) for name, values in importance.items()}


def prune_heads(
    run: Run,
    *,
    fraction: float = 0.5,
    rounds: int = 1,
    batches: int = 8,
    fine_tune_steps: int = 0,
    lr: float = 1e-4,
) -> tuple[nn.Module, dict[str, Any]]:
    """The run's model with ``fraction`` of its attention heads removed over ``rounds`` rounds
    (at least one head kept per module), each round measured on ``batches`` training batches and
    followed by ``fine_tune_steps`` steps of fine-tuning. Returns the pruned copy and a record."""
    if not 0 < fraction < 1:
        raise OptimizeError(f"{option('fraction', fraction)}: must be in (0, 1)")
    if rounds < 1 or batches < 1:
        raise OptimizeError(f"{option('rounds')} and {option('batches')} must be at least 1")
    if any(step.get("method") == "int8" for step in getattr(run.model, "optimized", [])):
        raise OptimizeError(f"{run.run_dir}: its model is int8; prune the float model, then quantize")
    modules = attention_modules(run.model)
    if not modules:
        raise OptimizeError(f"{run.run_dir}: a {run.cfg.task!r} model without multi-head attention: no heads to prune")
    if any(isinstance(sub, LowRankLinear) for m in modules.values() for sub in m.modules()):
        raise OptimizeError(f"{run.run_dir}: its attention projections are factorized (low-rank); prune the heads "
                            "first, then factorize")  # fmt: skip
    model = copy.deepcopy(run.model)
    total = sum(m.n_heads for m in modules.values())
    removable = total - len(modules)  # one head stays in each module
    target = min(round(fraction * total), removable)
    data = training_batches(run, batches)
    # Original head indices still present in each module, so the record names heads of the float model.
    alive = {name: list(range(m.n_heads)) for name, m in modules.items()}
    history = []
    stream = training_stream(run)  # every round's fine-tuning goes on where the last one stopped
    for r in range(rounds):
        goal = math.ceil(target * (r + 1) / rounds)
        removed = total - sum(len(h) for h in alive.values())
        n = goal - removed
        if n <= 0:
            continue
        scores = head_importance(run, model, data)
        ranked = sorted((float(s), name, h) for name, values in scores.items() for h, s in enumerate(values))
        drop: dict[str, set[int]] = {}
        for _, name, h in ranked:
            if sum(len(d) for d in drop.values()) == n:
                break
            if len(alive[name]) - len(drop.get(name, ())) > 1:
                drop.setdefault(name, set()).add(h)
        sub = dict(attention_modules(model))
        for name, heads in drop.items():
            keep = [h for h in range(sub[name].n_heads) if h not in heads]
            sub[name].prune_heads(keep)
            alive[name] = [alive[name][h] for h in keep]
        losses = fine_tune(run, model, fine_tune_steps, lr, stream)
        history.append({"round": r + 1, "removed": n, "fine_tune_loss": [losses[0], losses[-1]] if losses else None})
    step = {"method": "prune_heads", "heads": alive}
    model.optimized = [*getattr(run.model, "optimized", []), step]
    kept = sum(len(h) for h in alive.values())
    record = {**step, "heads_before": total, "heads_after": kept, "fraction": fraction, "rounds": history,
              "batches": batches, "fine_tune_steps": fine_tune_steps, "lr": lr}  # fmt: skip
    return model.eval(), record
