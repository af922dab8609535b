"""How fast int8 beam search can get against float32: its speed ratio, and the bound the Linears set.

    python benchmarks/int8_bound.py --threads 2                 # 1,000 test2016 sources, ~2 minutes
    python benchmarks/int8_bound.py --threads 2 --sentences 500 --passes 5 --json int8_bound.json

Issue 25 asks int8 beam-5 decoding to be ≥ 1.8× float32. Dynamic int8 (heedful.nn.int8) makes
only the Linear layers cheaper; the rest of a step (attention's small ``bmm``s, the log-softmax
over the vocabulary, the top-k, copies, layer norms) costs the same in both. So with L32 and L8
the Linears' time and R the rest,

    speed-up = (L32 + R) / (L8 + R)  <  L32 / L8          (the bound: the rest costing nothing)

and the speed-up reaches a target X only if R ≤ (L32 − X·L8) / (X − 1).

The model and sources are those of benchmarks/decoding.py (``--model-dir`` with a trained model,
else random weights of the Multi30k Transformer's size; test2016's sources in the translate task's
batches), beam 5, every output forced to 20 tokens (an <eos> no model can emit), so both models
do the same work whatever their weights. The int8 model is what ``heedful optimize --method int8``
makes (``heedful.nn.int8.quantize_int8``: torch's default engine, the vocabulary projection on
oneDNN). Timing: ``--passes`` passes over all batches, the two models alternating batch by batch
(the one that goes first changing), the ratio paired per pass, then its median. Then one more
pass of each under torch.profiler: L is the self time of the Linear kernels (float32:
``mkldnn::_linear_pointwise``, the prepacked oneDNN Linears, plus any ``aten::addmm``/``mm``
from ``F.linear``; int8: ``quantized::linear_dynamic``), R the rest of the profiled time (the mean of the two
models': it is the same work in both, up to noise). The profiler sees PyTorch's operators only:
the attention step in C (decode_attention.c, called through ctypes) and the Python between
operators are not in R. So the rest is also given from the timed passes, R = T − L with T the
median pass time: what the ratio is actually made of.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from heedful.attention import CacheArena
from heedful.decode import beam_search
from heedful.nn.int8 import bake_parametrizations, int8_engine, quantize_int8, wide_layer_engines

sys.path.insert(0, str(Path(__file__).parent))
from decoding import BEAM_SIZE, FULL, NEVER, load_setup, make_batches  # benchmarks/decoding.py, beside this file

TARGET = 1.8  # issue 25's int8 bar
LINEAR_KERNELS = {
    "fp32": ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm"),
    "int8": ("quantized::linear_dynamic",),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--model-dir", default="runs/multi30k-transformer/model", help="a trained model folder")
    parser.add_argument("--data-root", default="../shared/data/multi30k", help="folder with test_2016_flickr.en.gz")
    parser.add_argument("--sentences", type=int, default=None, help="decode only the first N sources")
    parser.add_argument("--passes", type=int, default=3, help="timed passes (default 3)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # decoding.py's setup reads these too; this benchmark is CPU-only and not --quick.
    args.device, args.quick, args.batch_tokens = "cpu", False, None
    setup = load_setup(args, args.sentences or FULL["sentences"])
    steps = FULL["beam_tokens"]
    engine = int8_engine()
    float_model = bake_parametrizations(copy.deepcopy(setup.model).eval())
    models = {"fp32": setup.model, "int8": quantize_int8(float_model, engine, wide_layer_engines(float_model, engine))}
    _, batches = make_batches(setup, BEAM_SIZE, "cpu")
    arena = CacheArena()

    def decode(model: torch.nn.Module, src: torch.Tensor) -> None:
        beam_search(model, src, bos_id=setup.tok.bos_id, eos_id=NEVER, beam_size=BEAM_SIZE, max_len=steps, arena=arena)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, int8 engine {engine!r}; {setup.origin}; "
        f"{len(setup.sources)} sources in {len(batches)} batches, beam {BEAM_SIZE}, {steps} tokens each",
        flush=True,
    )
    seconds: dict[str, list[float]] = {"fp32": [], "int8": []}
    with torch.inference_mode():
        for model in models.values():  # untimed warm-up: kernels chosen, the caches' memory in the arena
            decode(model, batches[0])
        for p in range(args.passes):
            spent = {"fp32": 0.0, "int8": 0.0}
            for b, src in enumerate(batches):
                names = ["fp32", "int8"] if (p + b) % 2 == 0 else ["int8", "fp32"]
                for name in names:
                    start = time.perf_counter()
                    decode(models[name], src)
                    spent[name] += time.perf_counter() - start
            for name in spent:
                seconds[name].append(spent[name])
            print(f"  pass {p + 1}: fp32 {spent['fp32']:.2f} s, int8 {spent['int8']:.2f} s", flush=True)
        ratio = statistics.median(f / i for f, i in zip(seconds["fp32"], seconds["int8"], strict=True))

        split = {}
        for name, model in models.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for src in batches:
                    decode(model, src)
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events) / 1e6
            linear = sum(e.self_cpu_time_total for e in events if e.key in LINEAR_KERNELS[name]) / 1e6
            split[name] = {"linear_s": linear, "rest_s": total - linear}
    l32, l8 = split["fp32"]["linear_s"], split["int8"]["linear_s"]
    rest = (split["fp32"]["rest_s"] + split["int8"]["rest_s"]) / 2
    bound = l32 / l8
    rest_needed = (l32 - TARGET * l8) / (TARGET - 1)
    print(f"\nint8 over fp32, paired, median of {args.passes} passes: {ratio:.2f}×")
    print("profiled pass (self CPU time):")
    for name, parts in split.items():
        print(f"  {name}: Linears {parts['linear_s']:.2f} s, the rest {parts['rest_s']:.2f} s")
    timed = {name: statistics.median(seconds[name]) for name in seconds}
    rest_timed = {name: timed[name] - split[name]["linear_s"] for name in split}
    print(
        "the rest from the timed passes (median pass − Linears), with the step in C and Python: "
        + ", ".join(f"{name} {value:.2f} s" for name, value in rest_timed.items())
    )
    print(f"the Linears alone: fp32 / int8 = {bound:.2f}× — the speed-up if nothing else cost anything")
    if rest_needed > 0:
        print(
            f"for {TARGET}×, the rest would have to take ≤ {rest_needed:.2f} s "
            f"(now {rest:.2f} s of operators, {statistics.mean(rest_timed.values()):.2f} s in all)"
        )
    else:
        print(f"for {TARGET}×: not reachable by cutting the rest — the int8 Linears themselves are too slow")
    if args.json:
        result = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "engine": engine,
            "weights": setup.origin,
            "sentences": len(setup.sources),
            "tokens": steps,
            "seconds": seconds,
            "speedup": ratio,
            "profiled": split,
            "linear_bound": bound,
            "rest_needed_for_target": rest_needed,
            "rest_from_timed_passes_s": rest_timed,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
