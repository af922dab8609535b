"""map_in_workers (decode.workers): results in order from several threads, torch on one thread in
each worker, and the caller's thread count as it was."""

from __future__ import annotations

import threading

import pytest
import torch

from heedful.decode.batching import AUTO_WORKERS_MAX, map_in_workers, worker_count


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


def test_auto_workers_are_one_per_torch_thread_on_a_cpu_at_most_four_and_one_elsewhere():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert worker_count("auto", cpu) == 2
        torch.set_num_threads(1)
        assert worker_count("auto", cpu) == 1
    finally:
        torch.set_num_threads(before)
    assert worker_count("auto", cpu, threads=16) == AUTO_WORKERS_MAX == 4
    assert worker_count("auto", cpu, threads=3) == 3
    assert worker_count(3, cpu) == 3 and worker_count(1, cpu) == 1
    assert worker_count("auto", gpu, threads=8) == worker_count(3, gpu) == 1


def test_decode_workers_default_to_auto_and_refuse_what_is_no_count():
    from heedful.tasks.translate_config import DecodeConfig

    assert DecodeConfig().workers == "auto"
    assert DecodeConfig(workers=2).workers == 2
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ValueError, match="a number of batches at once"):
            DecodeConfig(workers=bad)


def test_decoding_in_batches_with_auto_workers_decodes_as_many_batches_at_once_as_torch_has_threads(monkeypatch):
    """decode_in_batches hands map_in_workers the resolved count: two on two torch threads."""
    from heedful.decode import batching
    from heedful.models import TransformerConfig, TransformerEncoderDecoder

    asked: list[int] = []
    original = batching.map_in_workers

    def recording(fn, items, workers):
        asked.append(workers)
        return original(fn, items, workers)

    monkeypatch.setattr(batching, "map_in_workers", recording)
    torch.manual_seed(0)
    config = TransformerConfig(src_vocab_size=12, tgt_vocab_size=12, d_model=16, n_heads=2, d_ff=32,
                               n_encoder_layers=1, n_decoder_layers=1, max_len=16)  # fmt: skip
    model = TransformerEncoderDecoder(config).eval()
    sources = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [4, 4]]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        outputs = {}
        for workers in ("auto", 1):
            outputs[workers] = batching.decode_in_batches(
                model, sources, bos=1, eos=2, pad=0, beam=2, budget=8, limits=[6] * 4, alpha=0.6,
                early_stopping=False, workers=workers,
            )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert asked == [2, 1]
    assert outputs["auto"] == outputs[1]
