"""map_in_workers (decode.workers): results in order from several threads, torch on one thread in
each worker, and the caller's thread count as it was."""

from __future__ import annotations

import threading

import torch

from heedful.decode.batching import map_in_workers


def test_results_come_back_in_order_from_several_threads():
    names: set[str] = set()
    barrier = threading.Barrier(3)

    def work(x: int) -> int:
        names.add(threading.current_thread().name)
        if x < 3:
            barrier.wait(timeout=10)  # the first three only finish together: three threads at once
        return x * x

    assert map_in_workers(work, list(range(8)), workers=3) == [x * x for x in range(8)]
    assert len(names) == 3 and all(n.startswith("heedful-decode") for n in names)
    assert map_in_workers(work, [5], workers=3) == [25]  # one item: no threads


def test_each_worker_runs_torch_on_one_thread_and_the_callers_count_stays():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = map_in_workers(lambda _: torch.get_num_threads(), list(range(4)), workers=2)
        assert seen == [1, 1, 1, 1]
        assert torch.get_num_threads() == 2
        assert map_in_workers(lambda _: torch.get_num_threads(), [0, 1], workers=1) == [2, 2]  # 1 worker: as it was
    finally:
        torch.set_num_threads(before)
