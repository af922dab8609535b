"""Decoding speed and quality of one run's engines side by side: ours fp32, ours int8 (one or more
int8 run directories, e.g. packed for different engines), and optionally CTranslate2 float32 and
int8 — interleaved, so a load burst on a shared machine hits every engine alike.

    python benchmarks/optimize_engine_speed.py RUN --int8 onednn=RUN_INT8 [--int8 x86=OTHER] \\
        [--optimized low-rank=RUN_LR] [--ct2 WORK] [--n 1000] [--rounds 5] [--threads 2] [--workers 2] \\
        [--fused-attention] [--task-batches] [--torch-int8-forward] [--f-linear] [--latency N] [--json FILE]
    # RUN_INT8: heedful optimize RUN --method int8 --out RUN_INT8
    # WORK: a folder with ct2_float32/ and ct2_int8/ (heedful export RUN --format ctranslate2
    #       [--quantization int8] --out WORK/ct2_…, or benchmarks/optimize.py's --work)

The first ``--n`` sentences of the run's test split, beam 5, the run's alpha (CTranslate2: its own
length penalty, (|y|+1)^α), batches of 100 (``--task-batches``: ours as ``heedful translate``
decodes, length-sorted token batches). Each round decodes all of them with every engine in
turn (the order rotating); the table gives the median sentences/s, its ratio to ours fp32, the
ratios to ours fp32 paired round by round (their median and range), the spread of the rounds,
and BLEU / chrF of the outputs (decoding is deterministic: the first round's outputs are scored).
``--workers W`` adds every engine again decoding W batches at once, one thread each (ours:
decode.workers; CTranslate2: inter_threads, its own token batches).
``--torch-int8-forward`` adds each int8 model again with torch's own dynamic-Linear forward.
``--latency N`` adds batch-1 latency over the first N sentences, every engine in turn on each.
``--fused-attention`` adds each of ours again with its attention on the fused kernel at every
size, as float32 on CPU was before the small-size bound (``CPU_FP32_MATH_MAX_SCORES``).
``--f-linear`` adds ours fp32 again with ``decode.prepacked`` off: every float32 Linear on
F.linear instead of oneDNN's prepacked kernels (heedful.nn.packed).
CTranslate2 decodes in a second process, which loads its translators once and keeps them: one
that has translated, alive in this process, slowed our decoding by about 20 % (the two share
torch's OpenMP runtime; see ``ct2_process``). ``--ct2-in-process`` puts them here, as this
benchmark did before 2026-12-05.
``--processes P`` runs the whole comparison P times, each in a fresh process, and sums them up:
per engine, the median over processes of each process's paired ratio to ours fp32, and their
range. On the 2-core Zen 4 host the same engine's speed differed by up to 15 % from process to
process while staying within a few % inside one (int8: 5.96–6.86 s for the same 1,000 sentences
in five processes), so one process's ratio can be a lucky or an unlucky draw.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from heedful.attention.attend import Attend
from heedful.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from optimize import decode_all, interleaved_rounds, quality  # benchmarks/optimize.py, beside this file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--int8", action="append", default=[], metavar="NAME=DIR", help="an int8 run of RUN")
    parser.add_argument(
        "--optimized", action="append", default=[], metavar="NAME=DIR", help="any other optimized run of RUN"
    )
    parser.add_argument("--ct2", type=Path, default=None, help="folder holding ct2_float32/ and ct2_int8/")
    parser.add_argument("--n", type=int, default=1000, help="test sentences (the first N)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also every engine with this many batches at once, one thread each (decode.workers; CTranslate2: "
        "inter_threads)",
    )
    parser.add_argument(
        "--fused-attention",
        action="store_true",
        help="also each of ours with every attention module on the fused kernel (the path choice before "
        "2026-12-05, when float32 on CPU always took it)",
    )
    parser.add_argument(
        "--task-batches",
        action="store_true",
        help="ours decode as heedful translate does (length-sorted batches of decode.batch_tokens), not in 100s",
    )
    parser.add_argument(
        "--torch-int8-forward",
        action="store_true",
        help="also each int8 model with torch's own dynamic-Linear forward (before heedful's Int8Linear, 2026-12-05)",
    )
    parser.add_argument(
        "--latency",
        type=int,
        default=0,
        metavar="N",
        help="also batch-1 latency: the first N sentences one at a time, every engine in turn on each",
    )
    parser.add_argument("--f-linear", action="store_true", help="add ours fp32 on F.linear (decode.prepacked off)")
    parser.add_argument(
        "--ct2-in-process",
        action="store_true",
        help="CTranslate2 in this process, as before 2026-12-05 (a used translator slows ours by ~20 %%)",
    )
    parser.add_argument(
        "--processes", type=int, default=1, metavar="P", help="repeat the comparison in P fresh processes and sum up"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.processes > 1:
        return across_processes(args)
    torch.set_num_threads(args.threads)

    run = load_run(args.run, "cpu")
    run.task.build_data(run.cfg)
    run.task.load_artifacts(run.run_dir / "model")
    examples = list(run.task.data.splits["test"])[: args.n]
    sources = [e.source for e in examples]
    alpha, beam = run.cfg.decode.alpha, args.beam
    models = {"ours fp32": run.model}
    # int8, low-rank, pruned, …: every optimized run decoded as ours fp32 is
    for label, specs in (("ours int8 ({})", args.int8), ("ours {}", args.optimized)):
        for spec in specs:
            name, _, directory = spec.partition("=")
            models[label.format(name)] = load_run(directory, "cpu").model
            if args.torch_int8_forward and label.startswith("ours int8"):
                models[label.format(name) + ", torch's Linear forward"] = with_torch_int8_forward(
                    load_run(directory, "cpu").model
                )
    worker_counts = [1] if args.workers == 1 else [1, args.workers]
    engines = {}
    for workers in worker_counts:
        for name, model in models.items():
            for fused in (False, True) if args.fused_attention else (False,):
                label = name + (", fused attention" if fused else "") + (f", {workers} workers" if workers > 1 else "")
                engines[label] = lambda lines, m=model, w=workers, f=fused: ours(m, lines, w, f)
        if args.f_linear:
            label = "ours fp32, F.linear" + (f", {workers} workers" if workers > 1 else "")
            engines[label] = lambda lines, w=workers: ours(run.model, lines, w, False, prepacked=False)
    if args.ct2:
        from heedful.optimize.ct2 import Ct2Engine

        pool = None if args.ct2_in_process else ct2_process(args, worker_counts)
        for workers in worker_counts:
            for kind in ("float32", "int8"):
                label = f"CTranslate2 {kind}" + (f", {workers} workers" if workers > 1 else "")
                batch = 100 if workers == 1 else None  # 1 worker: batches of 100, as ours
                if pool is not None:
                    engines[label] = functools.partial(ct2_in_own_process, pool, kind, workers, beam, batch)
                else:
                    engine = Ct2Engine.for_run(run, args.ct2 / f"ct2_{kind}", threads=args.threads, workers=workers)
                    engines[label] = functools.partial(ct2_translate, engine, beam, batch)

    def ours(model, lines: list[str], workers: int, fused: bool, prepacked: bool = True) -> list[str]:
        with attention_paths(model, "fused" if fused else None):
            if not args.task_batches:
                return decode_all(model, run.task, lines, beam, 100, alpha, workers=workers, prepacked=prepacked)
            run.task.cfg.decode.workers, run.task.cfg.decode.prepacked = workers, prepacked
            return [t.output for t in run.task.translate(model, lines, beam=beam)]

    load_start = os.getloadavg()
    print(f"{len(sources)} sentences, beam {beam}, {args.threads} threads; load average at start {load_start}")
    with torch.inference_mode():
        for f in engines.values():
            f(sources[:20])  # warm-up
    times, outputs = interleaved_rounds(engines, sources, args.rounds)
    load_end = os.getloadavg()
    base = statistics.median(times["ours fp32"])
    rows = {}
    print(f"load average at end {load_end}")
    print("| engine | sent/s (median) | × ours fp32 | × ours fp32, paired by round | rounds, s | BLEU | chrF |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, secs in times.items():
        median = statistics.median(secs)
        # The same round's fp32 time over this engine's: a drift in the host's speed between rounds
        # moves both, so these ratios spread less than the times do.
        paired = [fp32 / own for fp32, own in zip(times["ours fp32"], secs, strict=True)]
        q = quality(run.task, outputs[name], examples)
        rows[name] = {"sent_per_s": len(sources) / median, "vs_fp32": base / median, "vs_fp32_paired": paired,
                      "seconds": secs, **q}  # fmt: skip
        print(f"| {name} | {len(sources) / median:.1f} | {base / median:.2f}× | {statistics.median(paired):.2f}× "
              f"({min(paired):.2f}–{max(paired):.2f}) | {min(secs):.1f}–{max(secs):.1f} | {q.get('bleu', '')} "
              f"| {q.get('chrf', '')} |")  # fmt: skip
    if args.latency:
        latency = batch1_latency(engines, sources[: args.latency])
        print(f"batch-1 latency, {args.latency} sentences one at a time (median ms; × ours fp32, paired by sentence):")
        for name, (ms, paired) in latency.items():
            rows[name].update(latency_ms=ms, latency_vs_fp32_paired=paired)
            print(f"  {name}: {ms:.1f} ms, {paired:.2f}×")
    if args.json:
        record = {"run": str(args.run), "n": len(sources), "beam": beam, "threads": args.threads,
                  "load_average": [load_start, load_end], "engines": rows}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1) + "\n")


def across_processes(args: argparse.Namespace) -> None:
    """Run this benchmark ``args.processes`` times, each in a fresh Python process with the same
    options, and print (and save) per engine the median over processes of its paired ratio."""
    argv, skip = [], False
    for arg in sys.argv[1:]:  # every option but --processes and --json (each as "--x V" or "--x=V")
        if skip:
            skip = False
        elif arg in ("--processes", "--json"):
            skip = True
        elif not arg.startswith(("--processes=", "--json=")):
            argv.append(arg)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(args.processes):
            out = Path(tmp) / f"process{p}.json"
            print(f"--- process {p + 1} of {args.processes}", flush=True)
            subprocess.run([sys.executable, __file__, *argv, "--json", str(out)], check=True)
            records.append(json.loads(out.read_text()))
    print(f"=== {args.processes} processes: each one's paired ratio to ours fp32 (the median over its rounds)")
    print("| engine | × ours fp32, median over processes | range | sent/s, median over processes |")
    print("|---|--:|--:|--:|")
    summary = {}
    for name in records[0]["engines"]:
        ratios = [statistics.median(r["engines"][name]["vs_fp32_paired"]) for r in records]
        speeds = [r["engines"][name]["sent_per_s"] for r in records]
        summary[name] = {"vs_fp32_paired_per_process": ratios, "sent_per_s_per_process": speeds}
        print(f"| {name} | {statistics.median(ratios):.2f}× | {min(ratios):.2f}–{max(ratios):.2f} "
              f"| {statistics.median(speeds):.1f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"processes": records, "summary": summary}, indent=1) + "\n")


def batch1_latency(engines: dict, sentences: list[str]) -> dict[str, tuple[float, float]]:
    """Each engine's median ms for one sentence, and its paired speed against ours fp32 (the median
    over sentences of fp32's time over its own): every engine decodes each sentence in turn."""
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    with torch.inference_mode():
        for sentence in sentences:
            for name, decode in engines.items():
                start = time.perf_counter()
                decode([sentence])
                seconds[name].append(time.perf_counter() - start)
    fp32 = seconds["ours fp32"]
    return {
        name: (statistics.median(secs) * 1e3, statistics.median(a / b for a, b in zip(fp32, secs, strict=True)))
        for name, secs in seconds.items()
    }


def ct2_translate(engine, beam: int, batch: int | None, lines: list[str]) -> list[str]:
    """``engine``'s outputs for ``lines``, ``batch`` sentences per call (None: all in one call, which
    CTranslate2 cuts into token batches for its workers)."""
    step = batch or len(lines)
    return [t.output for i in range(0, len(lines), step) for t in engine.translate(lines[i : i + step], beam=beam)]


def ct2_process(args: argparse.Namespace, worker_counts: list[int]) -> ProcessPoolExecutor:
    """One process holding every CTranslate2 engine, loaded once and kept (warm) for the whole run.
    Why not this process: while a CTranslate2 translator that has translated is alive, our torch
    decoding in the same process ran about 20 % slower (fp32, 1,000 sentences: 11.0–12.5 s per pass
    against 9.2–10.5 s, and 9.2–9.6 s once the translator was deleted; docs/RESULTS.md, "int8
    against fp32 in five fresh processes"), which flattered CTranslate2 in every comparison made
    that way. CTranslate2's OpenMP calls bind to torch's libgomp, its worker thread keeps a second
    thread team alive, and with more OpenMP threads than cores libgomp barely spins before
    sleeping at its barriers, so each of our small parallel regions pays a wake-up. Each
    call's time includes sending the lines and the outputs between the processes (a round trip
    of one short sentence measured 0.3 ms)."""
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_ct2_load,
        initargs=(str(args.run), str(args.ct2), args.threads, worker_counts),
    )
    pool.submit(int).result()  # loaded before the first timed call
    return pool


_CT2_ENGINES: dict[tuple[str, int], object] = {}  # in the CTranslate2 process: (kind, workers) -> engine


def _ct2_load(run_dir: str, folder: str, threads: int, worker_counts: list[int]) -> None:
    from heedful.optimize.ct2 import Ct2Engine

    # torch on one thread here: an OpenMP team of its own beside CTranslate2's would put more of
    # the shared runtime's threads than cores in this process, and libgomp then stops spinning at
    # its barriers (see ct2_process)
    torch.set_num_threads(1)
    run = load_run(run_dir, "cpu")
    run.task.build_data(run.cfg)
    run.task.load_artifacts(run.run_dir / "model")
    for workers in worker_counts:
        for kind in ("float32", "int8"):
            engine = Ct2Engine.for_run(run, Path(folder) / f"ct2_{kind}", threads=threads, workers=workers)
            _CT2_ENGINES[kind, workers] = engine


def _ct2_run(kind: str, workers: int, beam: int, batch: int | None, lines: list[str]) -> list[str]:
    return ct2_translate(_CT2_ENGINES[kind, workers], beam, batch, lines)


def ct2_in_own_process(
    pool: ProcessPoolExecutor, kind: str, workers: int, beam: int, batch: int | None, lines: list[str]
) -> list[str]:
    return pool.submit(_ct2_run, kind, workers, beam, batch, lines).result()


def with_torch_int8_forward(model):
    """``model`` with every int8 Linear running torch's own ``forward`` (heedful's ``Int8Linear``
    calls the kernel directly; the packed weights, and so the outputs, are the same)."""
    from torch.ao.nn.quantized import dynamic as qdynamic

    for m in model.modules():
        if isinstance(m, qdynamic.Linear):
            m.forward = qdynamic.Linear.forward.__get__(m)
    return model


@contextlib.contextmanager
def attention_paths(model, path: str | None):
    """Every fusable attention kernel of ``model`` on ``path`` for the block (None: as it is)."""
    kernels = [m for m in model.modules() if isinstance(m, Attend) and m.score.fusable]
    before = [m.path for m in kernels]
    for m in kernels:
        m.path = path or m.path
    try:
        yield
    finally:
        for m, kept in zip(kernels, before, strict=True):
            m.path = kept


if __name__ == "__main__":
    main()
