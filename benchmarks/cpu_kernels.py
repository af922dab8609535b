"""Two CPU kernel choices behind heedful's decoding, each timed against torch's own call in the same run.

    python benchmarks/cpu_kernels.py --threads 2
    python benchmarks/cpu_kernels.py --threads 2 --json kernels.json

1. Softmax over short rows (heedful.attention.scores.softmax_last). torch's CPU softmax over a
   last axis shorter than one SIMD vector leaves its vectorized kernel; heedful pads such rows with
   −inf up to a whole vector first. For every row length 1–33, float32 and bfloat16, the same
   51,200 values are cut into rows of that length and normalised by ``torch.softmax`` and by
   ``softmax_last`` (padding included in its time); the two results are compared.

2. Float32 Linear layers (heedful.nn.packed): ``F.linear`` against oneDNN's matmul on a weight
   packed once (``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``), at the layer
   shapes of the Multi30k Transformer (configs/multi30k/transformer.yaml: d_model 256, d_ff 1,024,
   8,000-piece vocabulary) and the row counts of a beam-5 decoder step (5 rows: one sentence; 100;
   800: the largest batch of benchmarks/decoding.py), random weights and inputs.

Timing: best of 5 repeats of N calls each, the two sides alternating repeat by repeat; the ratio
is torch's time over heedful's. Whole-decoding figures are benchmarks/decoding.py's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from heedful.attention.scores import _short_row_padding, softmax_last
from heedful.nn import packed

VALUES = 51_200
LINEAR_SHAPES = [(256, 8000), (256, 768), (256, 1024), (1024, 256), (256, 256)]  # (in, out)
ROWS = [5, 100, 800]


def best_of(fns: list[Callable[[], object]], number: int, repeats: int = 5) -> list[float]:
    """Each function's best time per call (s), the functions alternating repeat by repeat."""
    best = [float("inf")] * len(fns)
    for fn in fns:
        fn()  # warm-up
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[i] = min(best[i], (time.perf_counter() - start) / number)
    return best


def softmax_rows(number: int) -> list[dict]:
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for length in range(1, 34):
            x = torch.randn(VALUES // length, length).to(dtype)
            diff = (softmax_last(x).float() - torch.softmax(x, -1).float()).abs().max().item()
            plain, ours = best_of([lambda x=x: torch.softmax(x, -1), lambda x=x: softmax_last(x)], number)
            out.append({"dtype": str(dtype).removeprefix("torch."), "length": length, "torch_us": plain * 1e6,
                        "heedful_us": ours * 1e6, "ratio": plain / ours, "max_abs_diff": diff})  # fmt: skip
    return out


def linears(number: int) -> list[dict]:
    out = []
    with torch.inference_mode():
        for k, n in LINEAR_SHAPES:
            weight, bias = torch.randn(n, k) / k**0.5, (None if n == 8000 else torch.randn(n))
            weight_packed = packed._pack(weight)
            for rows in ROWS:
                x = torch.randn(rows, k)
                diff = (packed.packed_matmul(x, weight_packed, bias)
                        - F.linear(x, weight, bias)).abs().max().item()  # fmt: skip
                plain, ours = best_of(
                    [
                        lambda x=x, w=weight, b=bias: F.linear(x, w, b),
                        lambda x=x, w=weight_packed, b=bias: packed.packed_matmul(x, w, b),
                    ],
                    number,
                )
                out.append({"in": k, "out": n, "rows": rows, "torch_us": plain * 1e6, "heedful_us": ours * 1e6,
                            "ratio": plain / ours, "max_abs_diff": diff})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--number", type=int, default=30, help="calls per timed repeat")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {platform.machine()}")  # fmt: skip

    print(f"\n1. softmax over the last axis, {VALUES:,} values in rows of each length: torch.softmax / ours, µs")
    rows = softmax_rows(args.number)
    for dtype in ("float32", "bfloat16"):
        line = [f"{r['length']}: {r['torch_us']:.0f}/{r['heedful_us']:.0f}" for r in rows if r["dtype"] == dtype]
        print(f"  {dtype}: " + ", ".join(line))
    padded = [r for r in rows if _short_row_padding(torch.zeros(1, r["length"], dtype=getattr(torch, r["dtype"])))]
    print(f"  largest difference in the weights: {max(r['max_abs_diff'] for r in rows):.1e}")
    if padded:
        ratios = sorted(r["ratio"] for r in padded)
        median = ratios[len(ratios) // 2]
        print(f"  padded lengths: torch / ours {ratios[0]:.2f}–{ratios[-1]:.2f}× (median {median:.2f}×)")

    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "softmax": rows}
    if packed.available():
        print("\n2. float32 Linear, F.linear / prepacked oneDNN, µs (ratio)")
        layers = linears(args.number)
        for r in layers:
            print(f"  {r['in']:>5} -> {r['out']:<5} {r['rows']:>4} rows: {r['torch_us']:8.0f} / {r['heedful_us']:8.0f}"
                  f"  ({r['ratio']:.2f}×, max |Δ| {r['max_abs_diff']:.1e})")  # fmt: skip
        results["linear"] = layers
    else:
        print("\n2. skipped: this torch or CPU has no oneDNN prepacked kernels (heedful.nn.packed.available())")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
