"""What every attention module in heedful shares: a hook ``explain.capture`` can switch on.

A module that subclasses :class:`AttentionModule` reports its weights through :meth:`report`
while a capture is active, and takes the path that can produce weights only then. Model code
never threads ``need_weights`` through: capture finds these modules by type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

CaptureSink = Callable[[Any], None]


class AttentionModule(nn.Module):
    """Base class of every module whose attention weights ``explain.capture`` can collect."""

    def __init__(self) -> None:
        super().__init__()
        self._capture_sink: CaptureSink | None = None

    @property
    def capturing(self) -> bool:
        return self._capture_sink is not None

    def report(self, weights: Any) -> None:
        """Hand this call's weights to the active capture, if any."""
        if self._capture_sink is not None:
            self._capture_sink(weights)
