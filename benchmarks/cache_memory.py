"""Key/value cache memory kept from batch to batch (heedful.attention.CacheArena) against fresh memory per batch.

    python benchmarks/cache_memory.py --model-dir runs/mt40/model --threads 2
    python benchmarks/cache_memory.py --quick --threads 1      # smoke run: 64 sources, 1 pass

The setup is benchmarks/decoding.py's (its ``load_setup`` and ``make_batches``): the Multi30k
Transformer (trained weights from ``--model-dir``, else random ones), the test2016 sources in the
translate task's beam-5 batches, every output forced to 20 tokens (an <eos> no model can emit).
Two ways to run heedful's ``beam_search`` on those batches, under ``torch.inference_mode``:

  kept    one CacheArena for all batches, as heedful.decode.decode_in_batches (and so ``translate``
          and ``evaluate``) does: a batch's caches take the buffers the batch before used
  fresh   ``arena=None``: each batch's caches allocate new memory (the behaviour before the arena)

Both reserve room for the 20 positions up front (beam_search always does). Within a pass the two
alternate batch by batch, the one going first changing every batch and every pass; a side's time
is its summed batch times. The ratio is paired: fresh over kept in each pass, then the median over
passes. Minor page faults (``getrusage``'s ru_minflt: first writes to memory the process got from
the system) are counted around each call. The best hypotheses of the two must be identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from heedful.attention import CacheArena
from heedful.decode import beam_search

sys.path.insert(0, str(Path(__file__).parent))
from decoding import BEAM_SIZE, BEAM_TOKENS, NEVER, load_setup, make_batches  # benchmarks/decoding.py

SIDES = ("kept", "fresh")


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="runs/multi30k-transformer/model", help="a trained model folder")
    parser.add_argument("--data-root", default="../shared/data/multi30k", help="folder with test_2016_flickr.en.gz")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 sources, one pass")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device, args.batch_tokens = "cpu", None  # what load_setup reads
    setup = load_setup(args, 64 if args.quick else None)
    _, batches = make_batches(setup, BEAM_SIZE, "cpu")
    passes = 1 if args.quick else args.passes
    arena = CacheArena()

    def search(src: torch.Tensor, side: str) -> list[list[int]]:
        hyps = beam_search(
            setup.model, src, bos_id=setup.tok.bos_id, eos_id=NEVER, beam_size=BEAM_SIZE, max_len=BEAM_TOKENS,
            arena=arena if side == "kept" else None,
        )  # fmt: skip
        return [h[0].tokens for h in hyps]

    seconds = {side: [0.0] * passes for side in SIDES}
    faults = {side: [0] * passes for side in SIDES}
    outputs: dict[str, list] = {side: [] for side in SIDES}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {setup.origin}")
    print(f"{len(setup.sources)} sources in {len(batches)} batches, beam {BEAM_SIZE}, {BEAM_TOKENS} tokens each")
    with torch.inference_mode():
        for src in batches[:2]:  # warm-up, untimed: packing, the allocator's first growth
            for side in SIDES:
                search(src, side)
        for p in range(passes):
            for b, src in enumerate(batches):
                for side in SIDES if (p + b) % 2 == 0 else SIDES[::-1]:
                    before, start = minor_faults(), time.perf_counter()
                    tokens = search(src, side)
                    seconds[side][p] += time.perf_counter() - start
                    faults[side][p] += minor_faults() - before
                    if p == 0:
                        outputs[side].append(tokens)
    identical = outputs["kept"] == outputs["fresh"]
    ratio = statistics.median(f / k for f, k in zip(seconds["fresh"], seconds["kept"], strict=True))
    for side in SIDES:
        print(
            f"  {side:6s} {statistics.median(seconds[side]):7.2f} s  "
            f"{statistics.median(faults[side]):>9,.0f} page faults per pass  "
            f"(passes: {', '.join(f'{s:.2f}' for s in seconds[side])} s)"
        )
    print(f"  kept vs fresh: {ratio:.3f}× (paired, median over passes); arena holds {arena.held_bytes / 2**20:.0f} MiB")
    print(f"  identical best hypotheses: {'yes' if identical else 'NO'}")
    if args.json:
        result = {
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "weights": setup.origin, "sentences": len(setup.sources), "batches": len(batches),
            "seconds": seconds, "page_faults": faults, "kept_vs_fresh": ratio,
            "arena_mib": arena.held_bytes / 2**20, "identical": identical,
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
