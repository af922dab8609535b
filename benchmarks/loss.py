"""The translate task's loss against PyTorch's: label-smoothed cross-entropy, forward + backward.

    python benchmarks/loss.py                 # 3,000 targets × 8,000 pieces, bf16 logits, 1 thread
    python benchmarks/loss.py --threads 2 --rows 4000 --dtype fp32

  pytorch  F.cross_entropy(logits.float(), gold, label_smoothing=0.1) and the argmax of the fp32
           logits (what the task computed before heedful.nn.losses)
  ours     heedful.nn.losses.smoothed_cross_entropy (loss and argmax in one autograd node)

Both get the same logits (a fresh leaf each call, so both pay for the same copy) and the same
gold ids; their results are checked equal first. The two alternate call by call, and the ratio
is paired: per round, PyTorch's time over ours, then the median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from heedful.nn.losses import smoothed_cross_entropy

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def pytorch_step(logits: torch.Tensor, gold: torch.Tensor, smoothing: float) -> torch.Tensor:
    z = logits.clone().requires_grad_()
    wide = z.float()
    loss = F.cross_entropy(wide, gold, label_smoothing=smoothing)
    wide.argmax(-1)
    loss.backward()
    return z.grad


def our_step(logits: torch.Tensor, gold: torch.Tensor, smoothing: float) -> torch.Tensor:
    z = logits.clone().requires_grad_()
    loss, _ = smoothed_cross_entropy(z, gold, smoothing)
    loss.backward()
    return z.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="target tokens N")
    parser.add_argument("--vocab", type=int, default=8000, help="vocabulary V")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(args.rows, args.vocab, generator=g) * 3).to(DTYPES[args.dtype])
    gold = torch.randint(0, args.vocab, (args.rows,), generator=g)

    want, got = pytorch_step(logits, gold, 0.1), our_step(logits, gold, 0.1)
    gap = float((want.float() - got.float()).abs().max())
    print(f"torch {torch.__version__}, {args.threads} thread(s); logits {args.rows} × {args.vocab} {args.dtype}; "
          f"largest gradient difference {gap:.2e} (largest gradient {float(want.abs().max()):.2e})")  # fmt: skip

    seconds: dict[str, list[float]] = {"pytorch": [], "ours": []}
    for r in range(args.rounds):
        order = (("pytorch", pytorch_step), ("ours", our_step))
        for name, step in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            step(logits, gold, 0.1)
            seconds[name].append(time.perf_counter() - start)
    ratio = statistics.median(p / o for p, o in zip(seconds["pytorch"], seconds["ours"], strict=True))
    for name, values in seconds.items():
        print(f"  {name:8s} {1000 * statistics.median(values):8.1f} ms (median of {args.rounds})")
    print(f"  ours is {ratio:.2f}× the speed of PyTorch's (paired, median over rounds)")


if __name__ == "__main__":
    main()
