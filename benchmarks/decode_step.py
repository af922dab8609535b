"""Decoding with heedful's C kernels against their PyTorch paths, in one process: the attention step
(decode_attention.c, which also stores each step's keys) and beam search's candidates
(beam_candidates.c).

    python benchmarks/decode_step.py RUN [--int8 RUN_INT8] [--n 1000] [--single 40] [--rounds 2] [--threads 2]

RUN: a trained translation run (e.g. the Multi30k Transformer); RUN_INT8: ``heedful optimize RUN
--method int8 --out RUN_INT8``. Each case decodes the first ``--n`` test sentences as ``heedful
translate`` does (``task.translate``: the run's length limits and alpha, length-sorted token
batches of decode.batch_tokens, greedy for beam 1), or the first ``--single`` one sentence at a
time (batch-1 latency). The kernels are switched off and on in this process
(``HEEDFUL_CPU_KERNELS=0|1``, the kernel loader's cache cleared), alternating which goes first
from round to round; the table gives each side's best round, the ratio of the PyTorch path's time
to the step's (paired by round, median and range), how many outputs are the same, and BLEU / chrF
of the batched cases. ``--bare`` adds the bare step on a grouped cache (100 sources × 5
hypotheses, 4 heads of 64), growing and static, at 8 / 20 / 40 positions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from heedful.attention import KVCache, MultiHeadAttention, cpu_kernel
from heedful.attention.cache import _group_rows, _ungroup_rows
from heedful.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from optimize import quality  # benchmarks/optimize.py, beside this file


def use_step(on: bool) -> None:
    """The step in C on or off from the next decoding call on (the loader caches its answer)."""
    os.environ[cpu_kernel.ENABLE_ENV] = "1" if on else "0"
    cpu_kernel.load.cache_clear()


def cases(args, run, int8_model) -> list[tuple[str, object, int, bool, object]]:
    """(label, model, beam, one sentence at a time, context) for every measured case."""
    found = [
        ("beam 5, fp32", run.model, 5, False, contextlib.nullcontext),
        ("greedy, fp32", run.model, 1, False, contextlib.nullcontext),
        ("beam 5, fp32, one at a time", run.model, 5, True, contextlib.nullcontext),
        ("greedy, fp32, one at a time", run.model, 1, True, contextlib.nullcontext),
    ]
    if not args.no_bf16:
        found.insert(
            1, ("beam 5, bf16 autocast", run.model, 5, False, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        )
    if int8_model is not None:
        found.insert(1, ("beam 5, int8", int8_model, 5, False, contextlib.nullcontext))
    return found


def translate(run, model, sources: list[str], beam: int, single: bool) -> list[str]:
    if single:
        return [run.task.translate(model, [s], beam=beam)[0].output for s in sources]
    return [t.output for t in run.task.translate(model, sources, beam=beam)]


def bare_step(threads: int) -> None:
    """The step alone against the PyTorch path of the same grouped cache, best of 3 × 50 calls."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(256, 4).eval()
    n, g, H, D = 100, 5, 4, 64
    print(f"\nthe bare step, {n} sources × {g} hypotheses, {H} heads of {D}, {threads} threads (ms a call):")
    for static in (False, True):
        for T in (8, 20, 40):
            cache = KVCache(static=static)
            if static:
                cache.set(torch.randn(n, H, T, D), torch.randn(n, H, T, D))
                cache.reorder(torch.arange(n).repeat_interleave(g))
            else:
                cache.append(torch.randn(n, H, 1, D), torch.randn(n, H, 1, D))
                cache.reorder(torch.arange(n).repeat_interleave(g))
                for _ in range(T - 1):
                    cache.append(torch.randn(n * g, H, 1, D), torch.randn(n * g, H, 1, D))
            q = torch.randn(n * g, 1, H, D).transpose(1, 2)

            def in_c(cache=cache, q=q):
                return cache._attend_in_c(attn.attend, q, None)

            def pytorch(cache=cache, q=q):
                lineage = None if cache.static else cache.lineage_mask()
                context, _ = attn.attend(_group_rows(q, g), cache.k, cache.v, attn_mask=lineage)
                return _ungroup_rows(context, g)

            use_step(True)
            torch.testing.assert_close(in_c(), pytorch(), atol=1e-5, rtol=1e-5)
            times = []
            for fn in (in_c, pytorch):
                fn()
                best = min(_seconds(fn, 50) for _ in range(3))
                times.append(best / 50 * 1e3)
            kind = "static" if static else "growing"
            print(f"  {kind:7s} T = {T:2d}: step in C {times[0]:.2f}, PyTorch path {times[1]:.2f}")


def _scored(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value}" for name, value in metrics.items())


def _seconds(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained translation run")
    parser.add_argument("--int8", type=Path, default=None, help="an int8 run of RUN, decoded too")
    parser.add_argument("--n", type=int, default=1000, help="test sentences decoded in batches (the first N)")
    parser.add_argument("--single", type=int, default=40, help="test sentences decoded one at a time")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-bf16", action="store_true", help="leave out the bf16 autocast case")
    parser.add_argument("--bare", action="store_true", help="also time the bare step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    use_step(True)
    if cpu_kernel.load() is None:
        print("no C kernels on this machine (see the warning): nothing to compare", file=sys.stderr)
        return 2

    run = load_run(args.run, "cpu")
    run.task.build_data(run.cfg)
    run.task.load_artifacts(run.run_dir / "model")
    examples = list(run.task.data.splits["test"])[: args.n]
    sources = [e.source for e in examples]
    int8_model = load_run(args.int8, "cpu").model if args.int8 else None
    print(f"torch {torch.__version__}, {args.threads} threads; {len(sources)} batched, {args.single} one at a time")
    rows = []
    with torch.inference_mode():
        for label, model, beam, single, context in cases(args, run, int8_model):
            chosen = sources[: args.single] if single else sources
            with context():
                translate(run, model, chosen[:8], beam, single)  # warm-up: kernels built, weights packed
                seconds: dict[bool, list[float]] = {True: [], False: []}
                outputs: dict[bool, list[str]] = {}
                for r in range(args.rounds):
                    for on in (True, False) if r % 2 == 0 else (False, True):
                        use_step(on)
                        start = time.perf_counter()
                        outputs.setdefault(on, translate(run, model, chosen, beam, single))
                        seconds[on].append(time.perf_counter() - start)
            use_step(True)
            ratios = [off / on for on, off in zip(seconds[True], seconds[False], strict=True)]
            same = sum(a == b for a, b in zip(outputs[True], outputs[False], strict=True))
            scores = (
                "" if single else " / ".join(_scored(quality(run.task, outputs[o], examples)) for o in (True, False))
            )
            rows.append((label, min(seconds[True]), min(seconds[False]), ratios, same, len(chosen), scores))
            print(f"  {label}: step in C {seconds[True]}, PyTorch path {seconds[False]}", flush=True)

    print("\n| case | step in C, s | PyTorch path, s | PyTorch / C, paired (range) | same outputs | C / PyTorch |")
    print("|---|--:|--:|--:|--:|---|")
    for label, c, p, ratios, same, n, scores in rows:
        spread = f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"
        print(f"| {label} | {c:.2f} | {p:.2f} | {spread} | {same} / {n} | {scores} |")
    if args.bare:
        with torch.inference_mode():
            bare_step(args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
