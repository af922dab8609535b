"""Dynamic batching: concurrent requests to one model gathered into one call, answered apart.

Triton's and TorchServe's idea in a few lines: a worker takes the oldest waiting request, then
keeps taking more while the batch holds fewer than ``max_batch_chars`` characters and less than
``max_wait_ms`` has passed since it began gathering; the batch's inputs go to the model in one
call (in one inference thread), and each request gets back its own slice of the results. Only
requests that ask for the same thing (attention or not) share a batch.

A request's result must not depend on its batch-mates: the tasks pad and mask (tested in
tests/serve/test_batching.py against one-at-a-time outputs), and if a batch fails (one input
the task refuses), every request of it is run again alone, so only the faulty one gets the error.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """More requests are waiting for a model than ``max_queue``."""


@dataclass
class _Job:
    inputs: list[Any]
    size: int  # characters (or other units of work) in the inputs: what the batch budget counts
    attention: bool
    future: asyncio.Future = field(repr=False)


class DynamicBatcher:
    """One model's queue and worker. ``infer(inputs, attention)`` returns one result per input;
    it runs in the inference thread given to ``start`` (which other batchers may share; its owner
    shuts it down), or by default in the batcher's own — never on the event loop."""

    def __init__(
        self,
        infer: Callable[[list[Any], bool], list[Any]],
        *,
        name: str = "model",
        enabled: bool = True,
        max_batch_chars: int = 4096,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
    ) -> None:
        self.infer, self.name = infer, name
        self.executor: ThreadPoolExecutor | None = None
        self.own_executor = False
        self.enabled, self.max_batch_chars, self.max_wait = enabled, max_batch_chars, max_wait_ms / 1000
        self.max_queue = max_queue
        self.queue: asyncio.Queue[_Job] | None = None
        self.worker: asyncio.Task | None = None
        self.batch_sizes: collections.Counter[int] = collections.Counter()  # requests per model call

    def start(self, executor: ThreadPoolExecutor | None = None) -> None:
        self.own_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"heedful-{self.name}")
        self.queue = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        if self.own_executor and self.executor is not None:
            self.executor.shutdown(wait=False)

    async def submit(self, inputs: list[Any], size: int, attention: bool) -> list[Any]:
        """The results of ``inputs`` (one per input), computed in some batch."""
        if self.queue is None:
            raise RuntimeError("the batcher is not started")
        if self.queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self.queue.qsize()} requests are waiting for this model (limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(list(inputs), size, attention, future))
        return await future

    async def _gather(self, held: collections.deque[_Job]) -> list[_Job]:
        """The next batch: the oldest job, then others asking the same, within the budgets."""
        first = held.popleft() if held else await self.queue.get()
        batch, total = [first], first.size
        if not self.enabled:
            return batch
        for job in list(held):  # jobs set aside earlier (they asked for the other kind) come first
            if job.attention == first.attention and total + job.size <= self.max_batch_chars:
                held.remove(job)
                batch.append(job)
                total += job.size
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while total < self.max_batch_chars:
            if self.queue.empty():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            else:
                job = self.queue.get_nowait()
            if job.attention != first.attention or total + job.size > self.max_batch_chars:
                held.append(job)  # the next batch starts with it
                if job.attention == first.attention:
                    break  # full
                continue
            batch.append(job)
            total += job.size
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        held: collections.deque[_Job] = collections.deque()
        while True:
            batch = await self._gather(held)
            batch = [job for job in batch if not job.future.done()]  # the client went away
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1
            inputs = [x for job in batch for x in job.inputs]
            try:
                results = await loop.run_in_executor(self.executor, self.infer, inputs, batch[0].attention)
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0], exception=exc)
                    continue
                for job in batch:  # find the faulty request: each alone
                    try:
                        _settle(job, await loop.run_in_executor(self.executor, self.infer, job.inputs, job.attention))
                    except Exception as alone:
                        _settle(job, exception=alone)
                continue
            start = 0
            for job in batch:
                _settle(job, results[start : start + len(job.inputs)])
                start += len(job.inputs)


def _settle(job: _Job, result: Any = None, exception: BaseException | None = None) -> None:
    if job.future.done():
        return
    if exception is not None:
        job.future.set_exception(exception)
    else:
        job.future.set_result(result)
