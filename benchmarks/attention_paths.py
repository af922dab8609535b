"""The attention kernel's two paths at small sizes: where ``prefer_fused`` should switch.

    python benchmarks/attention_paths.py                  # fp32 grid, forward and forward+backward (~2 min)
    python benchmarks/attention_paths.py --dtype bf16 --quick

heedful's ``Attend`` (``heedful.attention.attend``) computes attention on a *fused* path (one
``F.scaled_dot_product_attention`` call) or a *math* path (scores, masked softmax, weighted sum).
``benchmarks/attention.py`` times whole layers at training sizes (T ≥ 128); this one times the bare
kernel at the sizes of short sentences and of decoding, where a few queries (beam search: one per
hypothesis of a source, grouped) meet a few dozen keys, and the choice is decided by fixed costs.

Per case: q (B, H, T_q, D_h), k and v (B, H, T_k, D_h), H = 4, D_h = 64 (the Multi30k model's
heads), a boolean key padding mask with about 10 % of keys masked; ``forward`` under
``torch.inference_mode`` (decoding), ``fwd+bwd`` from a fixed output gradient (training, T_q =
T_k). Both paths run in turn for ``--rounds`` rounds, the order alternating; the ratio is the
median of the per-round ratios math / fused (below 1: the math path is faster). The last column
says which path ``prefer_fused`` takes there, and ``!`` marks a case where it takes the path that
measured more than 10 % slower. The fwd+bwd rows are marked by design: the bare kernel's backward
is faster on the math path at these sizes, but a whole float32 training step was not
(``benchmarks/train_throughput.py``; docs/RESULTS.md, "Small sizes"), so training keeps the kernel.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from heedful.attention.attend import Attend, prefer_fused
from heedful.attention.scores import ScaledDotScore

H, D_HEAD = 4, 64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def seconds(step: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def paired_ratio(math_step: Callable[[], object], fused_step: Callable[[], object], rounds: int, repeats: int):
    """Median over rounds of math time / fused time, and the fused path's median time (µs)."""
    for step in (math_step, fused_step):  # warm-up
        seconds(step, 3)
    ratios, fused_times = [], []
    for r in range(rounds):
        pair = (math_step, fused_step) if r % 2 == 0 else (fused_step, math_step)
        first, second = (seconds(step, repeats) for step in pair)
        math_t, fused_t = (first, second) if r % 2 == 0 else (second, first)
        ratios.append(math_t / fused_t)
        fused_times.append(fused_t)
    return statistics.median(ratios), statistics.median(fused_times) * 1e6


def case(rows: int, t_q: int, t_k: int, dtype: torch.dtype, backward: bool, rounds: int, repeats: int):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows // H, H, t_q, D_HEAD, generator=g, dtype=dtype)
    k = torch.randn(rows // H, H, t_k, D_HEAD, generator=g, dtype=dtype)
    v = torch.randn(rows // H, H, t_k, D_HEAD, generator=g, dtype=dtype)
    keep = torch.rand(rows // H, t_k, generator=g) > 0.1
    keep[:, 0] = True  # every query has a key to attend to
    paths = {path: Attend(ScaledDotScore(), path=path) for path in ("math", "fused")}
    if backward:
        for t in (q, k, v):
            t.requires_grad_(True)
        grad = torch.randn(rows // H, H, t_q, D_HEAD, generator=g, dtype=dtype)

        def step(attend: Attend):
            return lambda: attend(q, k, v, key_padding_mask=keep)[0].backward(grad)
    else:

        def step(attend: Attend):
            def run():
                with torch.inference_mode():
                    return attend(q, k, v, key_padding_mask=keep)

            return run

    return paired_ratio(step(paths["math"]), step(paths["fused"]), rounds, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and rounds (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype, rounds = DTYPES[args.dtype], 2 if args.quick else args.rounds
    repeats = 5 if args.quick else 20
    forward_rows, training_rows = (400, 64), 640
    queries, keys = ((1, 5, 32), (16, 128)) if args.quick else ((1, 5, 16, 32, 64), (16, 64, 128, 256))
    square = (16, 64) if args.quick else (16, 32, 48, 64, 96, 128)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.dtype}, H = {H}, D_h = {D_HEAD}")
    print("| pass | B·H | T_q | T_k | T_q·T_k | fused µs | math / fused | prefer_fused takes |")
    print("|---|---|---|---|---|---|---|---|")
    cases = [("forward", rows, t_q, t_k) for rows in forward_rows for t_q in queries for t_k in keys]
    cases += [("fwd+bwd", training_rows, t, t) for t in square]
    for name, rows, t_q, t_k in cases:
        ratio, fused_us = case(rows, t_q, t_k, dtype, name == "fwd+bwd", rounds, repeats)
        takes = "fused" if prefer_fused(cpu, dtype, t_q, t_k, backward=name == "fwd+bwd") else "math"
        slower = (takes == "math" and ratio > 1.1) or (takes == "fused" and ratio < 1 / 1.1)
        mark = " !" if slower else ""
        print(
            f"| {name} | {rows} | {t_q} | {t_k} | {t_q * t_k} | {fused_us:.0f} | {ratio:.2f} | {takes}{mark} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
