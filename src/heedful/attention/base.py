"""What every attention module in heedful shares: a hook ``explain.capture`` can switch on.

A module that subclasses :class:`AttentionModule` reports its weights through :meth:`report`
while a capture is active, and takes the path that can produce weights only then. Model code
never threads ``need_weights`` through: capture finds these modules by type.

The active captures live in a context variable, not on the modules: a capture belongs to the
thread (or asyncio task) that opened it, so two threads running one shared model each collect
only their own calls' weights, and a thread that captures nothing keeps the fused path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

from torch import nn

CaptureSink = Callable[[Any], None]

# id(module) -> the sink its weights go to, for the captures open in this context. Replaced, never
# mutated, so a context copied from this one (a new asyncio task) cannot change ours.
_SINKS: ContextVar[Mapping[int, CaptureSink]] = ContextVar("heedful_attention_sinks", default={})  # noqa: B039 - never mutated


def open_sinks(sinks: Mapping[AttentionModule, CaptureSink]) -> Token:
    """Route these modules' weights to their sinks in the current context; ``close_sinks`` undoes it."""
    return _SINKS.set({**_SINKS.get(), **{id(module): sink for module, sink in sinks.items()}})


def close_sinks(token: Token) -> None:
    _SINKS.reset(token)


class AttentionModule(nn.Module):
    """Base class of every module whose attention weights ``explain.capture`` can collect."""

    @property
    def capturing(self) -> bool:
        """Whether a capture open in the current thread/context is collecting this module's weights."""
        return id(self) in _SINKS.get()

    def report(self, weights: Any) -> None:
        """Hand this call's weights to the capture open in the current context, if any."""
        sink = _SINKS.get().get(id(self))
        if sink is not None:
            sink(weights)
