"""Learning-rate schedules as pure functions of the step, so nothing but the step is checkpointed.

* ``inverse_sqrt`` (Vaswani et al. 2017, eq. 3, normalised to peak at ``lr``):
  linear warm-up to ``lr`` over ``warmup`` steps, then ``lr · √(warmup / step)``.
* ``cosine``: linear warm-up, then half a cosine from ``lr`` down to ``min_lr_ratio · lr`` at
  ``total_steps``.
* ``constant``: linear warm-up, then ``lr``.
"""

from __future__ import annotations

import math


def lr_at(step: float, *, lr: float, schedule: str, warmup: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (1-based; a fraction where a resumed run takes
    steps of another size than the run planned, see the trainer's ``schedule_step``)."""
    step = max(step, 1)
    if warmup and step < warmup:
        return lr * step / warmup
    if schedule == "constant":
        return lr
    if schedule == "inverse_sqrt":
        return lr * math.sqrt(max(warmup, 1) / step)
    if schedule == "cosine":
        span = max(total_steps - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {schedule!r}")
