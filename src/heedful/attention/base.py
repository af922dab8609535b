"""What every attention module in heedful shares: a hook ``explain.capture`` can switch on.

A module that subclasses :class:`AttentionModule` reports its weights through :meth:`report`
while a capture is active, and takes the path that can produce weights only then. Model code
never threads ``need_weights`` through: capture finds these modules by type.

The active captures live in a context variable, not on the modules: a capture belongs to the
thread (or asyncio task) that opened it, so two threads running one shared model each collect
only their own calls' weights, and a thread that captures nothing keeps the fused path. While no
capture is open anywhere, code traced by ``torch.compile`` skips the lookup: it would guard
every module's identity (one recompilation per module, until the limit) and break the graph.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

import torch
from torch import nn

CaptureSink = Callable[[Any], None]

# id(module) -> the sink its weights go to, for the captures open in this context. Replaced, never
# mutated, so a context copied from this one (a new asyncio task) cannot change ours.
_SINKS: ContextVar[Mapping[int, CaptureSink]] = ContextVar("heedful_attention_sinks", default={})  # noqa: B039 - never mutated


# Captures open in any context of this process: while 0, compiled code need not look (see above).
_open_anywhere = 0
_open_lock = threading.Lock()


def open_sinks(sinks: Mapping[AttentionModule, CaptureSink]) -> Token:
    """Route these modules' weights to their sinks in the current context; ``close_sinks`` undoes it."""
    global _open_anywhere
    with _open_lock:
        _open_anywhere += 1
    return _SINKS.set({**_SINKS.get(), **{id(module): sink for module, sink in sinks.items()}})


def close_sinks(token: Token) -> None:
    global _open_anywhere
    _SINKS.reset(token)
    with _open_lock:
        _open_anywhere -= 1


def _traced_without_captures() -> bool:
    return torch.compiler.is_compiling() and _open_anywhere == 0


class AttentionModule(nn.Module):
    """Base class of every module whose attention weights ``explain.capture`` can collect."""

    @property
    def capturing(self) -> bool:
        """Whether a capture open in the current thread/context is collecting this module's weights."""
        if _traced_without_captures():
            return False
        return id(self) in _SINKS.get()

    def report(self, weights: Any) -> None:
        """Hand this call's weights to the capture open in the current context, if any."""
        if _traced_without_captures():
            return
        sink = _SINKS.get().get(id(self))
        if sink is not None:
            sink(weights)
