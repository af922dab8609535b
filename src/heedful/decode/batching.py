"""Decoding many sources at once: sources of similar length share a batch of at most a budget of
tokens (source tokens × beam, padding included), each batch is decoded greedily or by beam search,
and the outputs come back in input order.

On a CPU, ``workers`` > 1 decodes that many batches at once, each in its own Python thread on one
torch thread, instead of one batch at a time on all of torch's threads. A beam step is many small
kernels and Python bookkeeping, which intra-op threads barely split; whole batches split evenly
(docs/RESULTS.md, "Decoding on 2 cores: workers"). The outputs are the same: each batch is decoded alone.
``"auto"`` (decode.workers' default) is one worker per torch thread, at most AUTO_WORKERS_MAX.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import nn

from heedful.attention.cache import CacheArena
from heedful.data.parallel import batches_by_length
from heedful.data.tokenizers import content_ids, pad_ids
from heedful.decode.beam import beam_search
from heedful.decode.greedy import greedy_decode
from heedful.device import keeping_torch_threads
from heedful.nn.packed import packed_linears


def decode_in_batches(
    model: nn.Module,
    src_ids: list[list[int]],
    *,
    bos: int,
    eos: int,
    pad: int,
    beam: int,
    budget: int,
    limits: list[int],
    alpha: float,
    early_stopping: bool,
    min_len: int = 0,
    n_best: int = 1,
    workers: int | str = 1,
    prepacked: bool = True,
    progress: Callable[[int], Any] | None = None,
) -> list[list[tuple[list[int], float]]]:
    """Decode every source (non-empty id lists); ``limits[i]`` is source i's longest output.
    Returns, in input order, each source's ``n_best`` outputs, best first: ids (no specials) and
    log-probability. ``min_len``: the shortest output (see :func:`heedful.decode.beam_search`).
    ``workers``: batches decoded at once on a CPU, or ``"auto"`` (see the module docstring and
    :func:`worker_count`); ``prepacked``: as in
    :func:`heedful.decode.beam_search`, one block around all the batches (the weights are checked
    once, not once per batch). Each thread's batches draw their key/value
    caches from one :class:`~heedful.attention.CacheArena`, so a batch reuses the memory of the
    one before it. ``progress``, if given, is called with each batch's number of sources once
    it is decoded (e.g. a progress bar's ``update``; from the worker threads, one at a time)."""
    device = next(model.parameters()).device
    reporting = threading.Lock()
    results: list[list[tuple[list[int], float]]] = [[]] * len(src_ids)
    per_thread = threading.local()

    def decode_batch(indices: list[int]) -> None:
        src = pad_ids([src_ids[i] for i in indices], pad).to(device)  # (B, S)
        batch_limits = [limits[i] for i in indices]
        if not hasattr(per_thread, "arena"):
            per_thread.arena = CacheArena()
        arena = per_thread.arena
        if beam == 1:
            # One limit per batch; rows with a lower limit are cut afterwards (their score
            # then counts the tokens past the cut — only rows that never ended are affected).
            tokens, log_prob = greedy_decode(
                model, src, bos_id=bos, eos_id=eos, max_len=max(batch_limits), min_len=min_len, prepacked=prepacked,
                arena=arena,
            )  # fmt: skip
            for row, i in enumerate(indices):
                results[i] = [(content_ids(tokens[row, : limits[i]].tolist(), eos), float(log_prob[row]))]
        else:
            hyps = beam_search(
                model,
                src,
                bos_id=bos,
                eos_id=eos,
                beam_size=beam,
                max_len=torch.tensor(batch_limits),
                alpha=alpha,
                n_best=n_best,
                early_stopping=early_stopping,
                min_len=min_len,
                prepacked=prepacked,
                arena=arena,
            )
            for ranked, i in zip(hyps, indices, strict=True):
                results[i] = [(content_ids(h.tokens, eos), h.log_prob) for h in ranked]
        if progress is not None:
            with reporting:
                progress(len(indices))

    batches = batches_by_length([len(s) * beam for s in src_ids], budget)
    with packed_linears(model, enabled=prepacked):
        map_in_workers(decode_batch, batches, worker_count(workers, device))
    return results


Item = TypeVar("Item")
Result = TypeVar("Result")

# "auto" workers: one per torch thread, at most this many. Measured on 2 cores only (2026-12-07,
# the Zen 4 host: 2 one-thread workers decoded 1.09–1.15× faster than one batch on 2 threads in
# float32 and 1.07–1.26× in int8, the int8 one steadily, where 2-thread int8 kernels lost their second
# thread in the host's slow phases; docs/RESULTS.md). Past a few workers their Python bookkeeping
# would wait on the GIL, and each worker holds a batch's caches.
AUTO_WORKERS_MAX = 4


def worker_count(workers: int | str, device: torch.device, threads: int | None = None) -> int:
    """``workers`` (decode.workers) as a number for ``device``: ``"auto"`` is one worker per thread
    (``threads``, default torch's) on a CPU, at most AUTO_WORKERS_MAX; on any other device batches
    go one at a time."""
    if device.type != "cpu":
        return 1
    if workers == "auto":
        return max(1, min(threads or torch.get_num_threads(), AUTO_WORKERS_MAX))
    return int(workers)


def map_in_workers(fn: Callable[[Item], Result], items: Sequence[Item], workers: int) -> list[Result]:
    """``fn`` over ``items``, results in order. With ``workers`` > 1 (and more than one item) that
    many run at once in threads, each on one torch thread. What torch's thread setting reaches
    (this thread, new threads) depends on its backend, so each worker sets its own and the caller
    sets its own count again afterwards. Autocast, per thread in torch, is entered again in each
    worker as the caller has it."""
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    autocast = _callers_autocast()

    def in_worker(item: Item) -> Result:
        torch.set_num_threads(1)
        with autocast():
            return fn(item)

    pool = ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="heedful-decode")
    with keeping_torch_threads(), pool:
        return list(pool.map(in_worker, items))


def _callers_autocast() -> Callable[[], contextlib.AbstractContextManager]:
    """A context that re-enters, in another thread, the autocast the calling thread is under."""
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            return lambda: torch.autocast(device_type, dtype=dtype)
    return contextlib.nullcontext
