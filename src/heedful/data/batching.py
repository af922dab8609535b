"""Batch sources that do not depend on a data format. Each is a ``BatchSource`` (the tasks register
them: ``heedful.data`` does not import the tasks): an epoch's batches depend only on (seed, epoch)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any


class GeneratedBatches:
    """Fresh examples every epoch, from ``stream(seed)`` seeded by (run seed, epoch)."""

    def __init__(self, seed: int, batch_size: int, steps: int, stream, encode):
        self.seed, self.batch_size, self.steps = seed, batch_size, steps
        self.stream, self.encode = stream, encode

    def steps_per_epoch(self) -> int:
        return self.steps

    def batches(self, epoch: int) -> Iterator[Any]:
        examples = self.stream(random.Random(f"{self.seed}:{epoch}").getrandbits(63))
        for _ in range(self.steps):
            yield self.encode([next(examples) for _ in range(self.batch_size)])


class LazyBatches:
    """Builds its batch source when first asked: ``evaluate`` on a finished run needs the
    held-out splits, not an encoded, length-filtered training set."""

    def __init__(self, build: Callable[[], Any]):
        self.build, self._source = build, None

    @property
    def source(self) -> Any:
        if self._source is None:
            self._source = self.build()
        return self._source

    def steps_per_epoch(self) -> int:
        return self.source.steps_per_epoch()

    def batches(self, epoch: int) -> Iterator[Any]:
        return self.source.batches(epoch)
