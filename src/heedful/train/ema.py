"""An exponential moving average of a model's weights (Polyak averaging).

Evaluating the average instead of the last weights smooths out the noise of the final updates;
for translation it is worth about as much as averaging the last checkpoints, at no extra
training cost. The trainer validates and saves the averaged weights when ``train.ema_decay``
is set, and keeps the average in every checkpoint so a resumed run continues bit-identically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """``avg ← avg + (1 − d_t)·(w − avg)`` after every optimizer step, with the warm-up
    ``d_t = min(decay, (1 + t) / (10 + t))`` so early, random weights are forgotten quickly."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        # Floating-point parameters and buffers only (step counters and masks stay as they are).
        self.names = [n for n, t in model.state_dict().items() if t.is_floating_point()]
        state = model.state_dict()
        self.shadow = {n: state[n].detach().clone().float() for n in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        state = model.state_dict()
        current = [state[n].detach().float() for n in self.names]
        torch._foreach_lerp_([self.shadow[n] for n in self.names], current, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged weights into ``model``, for good."""
        state = model.state_dict()
        for n in self.names:
            state[n].copy_(self.shadow[n])

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Run the body with the averaged weights in ``model``; the trained weights come back after."""
        state = model.state_dict()
        kept = {n: state[n].detach().clone() for n in self.names}
        self.copy_to(model)
        try:
            yield
        finally:
            for n in self.names:
                state[n].copy_(kept[n])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"ema.{n}": t.contiguous() for n, t in self.shadow.items()}

    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        for n in self.names:
            self.shadow[n].copy_(tensors[f"ema.{n}"])
        self.updates = updates
