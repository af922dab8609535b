"""``explain.capture(model)``: collect every attention module's weights without touching model code.

    with capture(model) as seen:
        model(batch)
    seen["decoder.layers.2.cross_attn"]        # (B, H, T_q, T_k), from the last call
    seen.calls("decoder.layers.2.cross_attn")  # every call, in order (one per decoding step)

While the block is active each :class:`~heedful.attention.base.AttentionModule` takes its
weights path and reports to ``seen``; on exit the modules go back to choosing their own (usually
fused) path. Weights are detached by default; ``detach=False`` keeps them in the autograd graph
(for gradient × attention explanations, or a loss on the weights); ``only=[name, …]`` captures just
those modules, and the rest of the model keeps its fused kernel.

A capture is per call: it holds for the thread (or asyncio task) that opened it, through a
context variable, so two threads capturing on one shared model at once each get their own
weights, and other threads' calls meanwhile keep the fused path and report nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from heedful.attention.base import AttentionModule, close_sinks, open_sinks


class Captured(Mapping[str, Any]):
    """Module path -> that module's attention weights from its most recent call."""

    def __init__(self) -> None:
        self._calls: dict[str, list[Any]] = {}

    def _sink(self, name: str, detach: bool):
        def store(weights: Any) -> None:
            if detach:
                weights = _detach(weights)
            self._calls.setdefault(name, []).append(weights)

        return store

    def __getitem__(self, name: str) -> Any:
        if name not in self._calls:
            known = ", ".join(self._calls) or "none yet"
            raise KeyError(f"no attention captured from {name!r} (captured: {known})")
        return self._calls[name][-1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._calls)

    def __len__(self) -> int:
        return len(self._calls)

    def calls(self, name: str) -> list[Any]:
        """Every call's weights for ``name``, oldest first."""
        return list(self._calls.get(name, []))

    def clear(self) -> None:
        self._calls.clear()


def _detach(weights: Any) -> Any:
    if isinstance(weights, Tensor):
        return weights.detach()
    if isinstance(weights, dict):
        return {key: _detach(value) for key, value in weights.items()}
    return weights


def attention_modules(model: nn.Module) -> dict[str, AttentionModule]:
    """Every attention module inside ``model``, by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AttentionModule)}


@contextmanager
def capture(model: nn.Module, *, detach: bool = True, only: Collection[str] | None = None) -> Iterator[Captured]:
    """Collect the attention weights of every attention module in ``model`` while active, or of
    the modules named in ``only`` (module paths): the others keep their fused path."""
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} contains no heedful attention modules to capture")
    if only is not None:
        unknown = sorted(set(only) - set(modules))
        if unknown:
            raise ValueError(f"no attention module {unknown[0]!r} in {type(model).__name__}")
        modules = {name: m for name, m in modules.items() if name in only}
    busy = [name for name, m in modules.items() if m.capturing]
    if busy:
        raise RuntimeError(f"attention of {busy[0]!r} is already being captured (nested capture)")
    seen = Captured()
    token = open_sinks({module: seen._sink(name, detach) for name, module in modules.items()})
    try:
        yield seen
    finally:
        close_sinks(token)
