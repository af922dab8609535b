"""Where a beam-5 decoding's wall time goes, float32 against int8: Linears by layer, C kernels, the rest.

    python benchmarks/decode_time_split.py RUN --int8 RUN_INT8 [--n 1000] [--rounds 2] [--threads 2] [--json FILE]

Decodes the first ``--n`` test sentences of RUN as ``heedful translate`` does (beam 5, the task's
length-sorted token batches), with ours float32 and the int8 run in turn, ``--rounds`` times after
a warm-up. Every Linear's call, the attention step in C (``KVCache._attend_in_c``), the beam
candidates in C (``_candidates_in_c``), ``model.encode`` and ``model.decode`` are wrapped in wall
clocks (perf_counter, about a µs a call), so nothing is sampled and C called through ctypes is
seen, which torch.profiler misses. Linears are grouped by layer: ``vocab`` (the decoder's output
projection), ``encoder`` (all of the encoder's), and the decoder's by their name in the layer
(``qkv_proj``, ``q_proj``, ``out_proj``, ``linear1``, ``linear2``; ``k_proj``/``v_proj`` run once
a batch, filling the cross-attention cache). Then, per round: ``search`` = total − encode − decode
− candidates (beam search's own work, batching, tokenizing) and ``decode other`` = decode − the
decoder's Linears − the attention step (layer norms, residual adds, embeddings, Python).

What it is for: the int8 / float32 ratio is (L32 + S) / (L8 + S) with L the Linears and S the
work both share; this prints both sides of that, per round, so a round's ratio can be traced to
the part that moved (on the shared Zen 4 host, whole processes ran with fbgemm's int8 layers
30–60 % slower while float32 and the shared parts held still: docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from heedful.attention.cache import KVCache
from heedful.decode import beam
from heedful.nn import packed
from heedful.runs import load_run


class Clocks:
    """Accumulated wall seconds by key, from wrapped callables."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()

    def wrap(self, owner, name: str, key: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start

        setattr(owner, name, timed)


def layer_key(name: str) -> str:
    if name.startswith("encoder."):
        return "linear encoder"
    if name == "decoder.output":
        return "linear vocab"
    return "linear " + name.rsplit(".", 1)[-1]


def instrument(model: nn.Module, clocks: Clocks, packed_keys: dict[int, tuple[str, Clocks]]) -> None:
    """Wrap every int8 Linear's forward and forward_relu, and the model's encode and decode, on
    this model's instances; float32 Linears are registered in ``packed_keys`` for the wrapper of
    heedful.nn.packed's forward (see :func:`wrap_packed`): an instance forward of their own would
    keep them from being packed (``packed._packable``), and so change what is measured."""
    for name, module in model.named_modules():
        if hasattr(module, "_packed_params"):  # torch's dynamic int8 Linear (heedful.nn.int8.Int8Linear)
            for method in ("forward", "forward_relu"):
                if hasattr(module, method):
                    clocks.wrap(module, method, layer_key(name))
        elif isinstance(module, nn.Linear):
            packed_keys[id(module)] = (layer_key(name), clocks)
    clocks.wrap(model, "encode", "encode")
    clocks.wrap(model, "decode", "decode")


def wrap_packed(packed_keys: dict[int, tuple[str, Clocks]]) -> None:
    """Time heedful.nn.packed's forward, which a packing block installs as each float32 Linear's
    forward (functools.partial of the module-level function, looked up when the block opens)."""
    original = packed._forward

    def timed(module, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(module, *args, **kwargs)
        finally:
            key, clocks = packed_keys[id(module)]
            clocks.seconds[key] += time.perf_counter() - start

    packed._forward = timed


def split(seconds: collections.Counter, total: float) -> dict[str, float]:
    linears = {k: v for k, v in seconds.items() if k.startswith("linear ")}
    decoder_linears = sum(v for k, v in linears.items() if k != "linear encoder")
    parts = dict(sorted(linears.items()))
    parts["linears, all"] = sum(linears.values())
    parts["attention step in C"] = seconds["attention"]
    parts["candidates in C"] = seconds["candidates"]
    parts["encode"] = seconds["encode"]
    parts["decode other"] = seconds["decode"] - decoder_linears - seconds["attention"]
    parts["search"] = total - seconds["encode"] - seconds["decode"] - seconds["candidates"]
    parts["total"] = total
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--int8", type=Path, required=True, help="heedful optimize RUN --method int8 --out RUN_INT8")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = load_run(args.run, "cpu")
    run.task.build_data(run.cfg)
    run.task.load_artifacts(run.run_dir / "model")
    sources = [e.source for e in list(run.task.data.splits["test"])[: args.n]]
    models = {"fp32": run.model, "int8": load_run(args.int8, "cpu").model}
    clocks = {name: Clocks() for name in models}
    packed_keys: dict[int, tuple[str, Clocks]] = {}
    for name, model in models.items():
        instrument(model, clocks[name], packed_keys)
    wrap_packed(packed_keys)
    # The C kernels are module functions shared by both models: one wrapper, which charges
    # whichever model is decoding (they run in turn, never at once).
    current = Clocks()
    current.wrap(KVCache, "_attend_in_c", "attention")
    current.wrap(beam, "_candidates_in_c", "candidates")

    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            run.task.translate(model, sources[:50], beam=5)  # warm-up: packing, kernels, allocator
        for _ in range(args.rounds):
            for name, model in models.items():
                clocks[name].seconds.clear()
                current.seconds.clear()
                start = time.perf_counter()
                run.task.translate(model, sources, beam=5)
                total = time.perf_counter() - start
                seconds = clocks[name].seconds + current.seconds
                rounds[name].append(split(seconds, total))
    keys = list(rounds["fp32"][0])
    print(f"{len(sources)} sentences, beam 5, {args.threads} threads; seconds a pass, median of {args.rounds} rounds")
    print("| part | fp32 | int8 | fp32 / int8 |")
    print("|---|--:|--:|--:|")
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in rounds.items()}
    for k in keys:
        f, i = medians["fp32"][k], medians["int8"][k]
        print(f"| {k} | {f:.3f} | {i:.3f} | {f / i:.2f}× |" if i > 0 else f"| {k} | {f:.3f} | {i:.3f} | |")
    paired = [f["total"] / i["total"] for f, i in zip(rounds["fp32"], rounds["int8"], strict=True)]
    print("int8 / fp32 by round: " + ", ".join(f"{p:.2f}×" for p in paired))
    if args.json:
        record = {"run": str(args.run), "int8": str(args.int8), "n": len(sources), "threads": args.threads,
                  "rounds": rounds, "paired": paired}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
