"""Versions of decode_attention.c against each other, on the shapes of a beam-5 decoder step.

    git show HEAD~1:src/heedful/attention/decode_attention.c > /tmp/before.c
    python benchmarks/decode_attention_variants.py /tmp/before.c src/heedful/attention/decode_attention.c \\
        [--threads 2] [--repeats 7] [--json FILE]

Each source is compiled on its own (the flags and OpenMP runtime of heedful.attention.cpu_kernel,
its first flag set) and called through ctypes as KVCache.attend calls the float32 step. The cases:
100 sources × 5 hypotheses × 4 heads of 64 (the Multi30k Transformer at a batch of 100 sentences);
a static (cross-attention) cache of 18 source positions, a third of the sources padded at the end;
and a growing (self-attention) grouped cache at 10, 25 and 40 decoded positions, its buffer room
for 60, each hypothesis reading its own lineage (a random slot of the g at every position — real
beams share more of their history). Timing: the best of ``--repeats`` repeats of 50 calls, the
versions alternating repeat by repeat; the ratio is the first version's time over each one's. The
outputs are compared with the first version's (prefetching, say, must change no bit).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from heedful.attention import cpu_kernel

SOURCES, HYPOTHESES, HEADS, WIDTH, ROOM = 100, 5, 4, 64, 60
CASES = [("static", 18), ("growing", 10), ("growing", 25), ("growing", 40)]


def build(source: Path, work: Path, index: int) -> ctypes.CDLL:
    target = work / f"variant{index}.so"
    include = Path(cpu_kernel.__file__).parent  # cpu_math.h
    flags = cpu_kernel.FLAG_SETS[0]
    command = ["cc", *flags, "-fopenmp", "-fPIC", "-shared", f"-I{include}", str(source), "-o", str(target)]
    subprocess.run([*command, *cpu_kernel._torch_openmp()], check=True)
    lib = ctypes.CDLL(str(target))
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    strided = [p, i64, i64, p, p, i64, i64, p, i64, i64, p, i64, p]
    lib.heedful_decode_attention_f32.argtypes = [*strided, i64, i64, i64, i64, i64, f32, p, p, p, p]
    return lib


def case_arguments(kind: str, T: int) -> tuple[tuple, torch.Tensor, tuple]:
    """The kernel's arguments for one case, its output tensor, and the tensors to keep alive."""
    n, g, H, D = SOURCES, HYPOTHESES, HEADS, WIDTH
    q = torch.randn(n * g, H, 1, D)
    lineage = mask = None
    if kind == "static":
        k, v = torch.randn(n, H, T, D), torch.randn(n, H, T, D)
        mask = torch.ones(n, T, dtype=torch.bool)
        mask[::3, T - 3 :] = False
    else:
        k, v = torch.randn(n, H, ROOM * g, D), torch.randn(n, H, ROOM * g, D)
        lineage = torch.randint(0, g, (n, g, ROOM))
    out = torch.empty(n * g, H, 1, D)
    a = torch.Tensor.data_ptr
    arguments = (
        a(q), q.stride(0), q.stride(1), a(k), a(v), k.stride(0), k.stride(1),
        None if lineage is None else a(lineage), 0 if lineage is None else lineage.stride(0),
        0 if lineage is None else lineage.stride(1), None if mask is None else a(mask),
        0 if mask is None else mask.stride(0), a(out), n, g, H, T, D, D**-0.5, None, None, None, None,
    )  # fmt: skip
    return arguments, out, (q, k, v, lineage, mask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="decode_attention.c versions; the first is the base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        libs = [build(source, Path(work), i) for i, source in enumerate(args.sources)]
        for kind, T in CASES:
            arguments, out, _alive = case_arguments(kind, T)
            outputs, best = [], [float("inf")] * len(libs)
            for lib in libs:
                lib.heedful_decode_attention_f32(*arguments)
                outputs.append(out.clone())
            for _ in range(args.repeats):
                for i, lib in enumerate(libs):
                    start = time.perf_counter()
                    for _ in range(50):
                        lib.heedful_decode_attention_f32(*arguments)
                    best[i] = min(best[i], (time.perf_counter() - start) / 50)
            same = [bool(torch.equal(o, outputs[0])) for o in outputs]
            ratios = [best[0] / b for b in best]
            rows.append({"cache": kind, "positions": T, "us": [b * 1e6 for b in best], "ratio": ratios, "same": same})
            times = "  ".join(f"{b * 1e6:.0f} µs ({r:.2f}×)" for b, r in zip(best, ratios, strict=True))
            print(f"{kind:7s} T={T:2d}: {times}  outputs equal to the first: {same}")
    if args.json:
        args.json.write_text(json.dumps({"sources": [str(s) for s in args.sources], "threads": args.threads,
                                         "cases": rows}, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
