"""Key/value cache for incremental decoding.

While a decoder generates one token at a time, each self-attention layer would recompute the
keys and values of every earlier token at every step. The cache keeps them, so step t projects
only the new token and attends over the stored (B, H, t, D_h) keys and values.

Cross-attention keys and values come from the encoder output and never change during decoding:
a ``static`` cache computes them once, at the first step.
"""

from __future__ import annotations

from torch import Tensor


class KVCache:
    """Keys and values one attention module has seen so far, each (B, H, T, D_h).

    Storage grows by doubling, so appending a step is amortised O(1) instead of copying the
    whole history every step.
    """

    def __init__(self, static: bool = False):
        self.static = static
        self._k: Tensor | None = None  # (B, H, capacity, D_h)
        self._v: Tensor | None = None
        self.length = 0

    @property
    def filled(self) -> bool:
        return self._k is not None

    @property
    def k(self) -> Tensor:
        if self._k is None:
            raise RuntimeError("the key/value cache is empty")
        return self._k[:, :, : self.length]  # (B, H, T, D_h)

    @property
    def v(self) -> Tensor:
        if self._v is None:
            raise RuntimeError("the key/value cache is empty")
        return self._v[:, :, : self.length]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys/values (B, H, T_new, D_h); return all of them (B, H, T + T_new, D_h)."""
        t_new = k.shape[2]
        if self._k is None or self._v is None:
            capacity = max(16, 2 * t_new)
            self._k = k.new_empty(*k.shape[:2], capacity, k.shape[3])
            self._v = v.new_empty(*v.shape[:2], capacity, v.shape[3])
        elif self.length + t_new > self._k.shape[2]:
            capacity = max(2 * self._k.shape[2], self.length + t_new)
            self._k = _grow(self._k, self.length, capacity)
            self._v = _grow(self._v, self.length, capacity)
        self._k[:, :, self.length : self.length + t_new] = k
        self._v[:, :, self.length : self.length + t_new] = v
        self.length += t_new
        return self.k, self.v

    def set(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Replace the contents (used by static cross-attention caches)."""
        # Contiguous: projections arrive as chunks of one packed matmul, and attention over
        # strided keys was 1.5x slower at every later step.
        self._k, self._v, self.length = k.contiguous(), v.contiguous(), k.shape[2]
        return self._k, self._v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (B_new,), in that order — beam search reorders hypotheses."""
        if self._k is not None and self._v is not None:
            self._k = self._k.index_select(0, index)
            self._v = self._v.index_select(0, index)


def _grow(buffer: Tensor, used: int, capacity: int) -> Tensor:
    bigger = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
    bigger[:, :, :used] = buffer[:, :, :used]
    return bigger
