"""Dynamic int8 Linear kernels by quantized engine, against float32, at a translation decoder's shapes.

    python benchmarks/int8_engines.py [--threads 1] [--rows 500] [--rounds 20]

torch packs each dynamic int8 weight for one engine (``torch.backends.quantized.engine``) and
keeps that engine's kernels: "x86" (torch's default on x86, fbgemm for dynamic Linears),
"fbgemm" and "onednn". Each shape is (rows, in, out) of the Multi30k Transformer's Linears
(d_model 256, d_ff 1,024, 8,000-piece vocabulary); 500 rows is a beam-5 step over 100 sentences,
5 rows one sentence. Median µs of ``--rounds`` calls after 3 warm-up calls, each engine in turn;
the outputs of every engine are checked equal to one another's (the same int8 arithmetic).
heedful packs for torch's default engine: a lone large matmul is not a beam search (see
heedful.nn.int8 and benchmarks/optimize_engine_speed.py, which decodes with int8 runs packed
for each engine).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

ENGINES = ("x86", "fbgemm", "onednn")


def median_us(module: nn.Module, x: torch.Tensor, rounds: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            module(x)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=500, help="rows of the large shapes (beam × sentences)")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
    from torch.ao.quantization import quantize_dynamic

    from heedful.nn.int8 import int8_engine

    engines = [e for e in ENGINES if e in torch.backends.quantized.supported_engines]
    print(f"torch {torch.__version__}, {args.threads} thread(s); engines {engines}; heedful: {int8_engine()!r}")
    shapes = [(args.rows, 256, 256), (args.rows, 256, 1024), (args.rows, 1024, 256), (args.rows, 256, 8000),
              (5, 256, 1024), (5, 256, 8000)]  # fmt: skip
    print("| rows × in → out | float32 µs | " + " | ".join(f"{e} µs (× fp32)" for e in engines) + " |")
    print("|---|--:|" + "--:|" * len(engines))
    before = torch.backends.quantized.engine
    torch.manual_seed(0)
    for rows, d_in, d_out in shapes:
        linear = nn.Sequential(nn.Linear(d_in, d_out)).eval()
        x = torch.randn(rows, d_in)
        fp32 = median_us(linear, x, args.rounds)
        cells, outputs = [], []
        for engine in engines:
            torch.backends.quantized.engine = engine
            quantized = quantize_dynamic(linear, {nn.Linear}, dtype=torch.qint8)
            torch.backends.quantized.engine = before
            with torch.no_grad():
                outputs.append(quantized(x))
            us = median_us(quantized, x, args.rounds)
            cells.append(f"{us:,.0f} ({fp32 / us:.2f}×)")
        same = all(torch.allclose(o, outputs[0], rtol=0, atol=1e-5) for o in outputs)
        print(
            f"| {rows} × {d_in} → {d_out} | {fp32:,.0f} | "
            + " | ".join(cells)
            + f" |{'' if same else ' outputs differ'}"
        )


if __name__ == "__main__":
    main()
