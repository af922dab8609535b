"""Decoding speed and quality of one run's engines side by side: ours fp32, ours int8 (one or more
int8 run directories, e.g. packed for different engines), and optionally CTranslate2 float32 and
int8 — interleaved, so a load burst on a shared machine hits every engine alike.

    python benchmarks/optimize_engine_speed.py RUN --int8 onednn=RUN_INT8 [--int8 x86=OTHER] \\
        [--optimized low-rank=RUN_LR] [--ct2 WORK] [--n 1000] [--rounds 5] [--threads 2] [--workers 2] [--json FILE]
    # RUN_INT8: heedful optimize RUN --method int8 --out RUN_INT8
    # WORK: a folder with ct2_float32/ and ct2_int8/ (heedful export RUN --format ctranslate2
    #       [--quantization int8] --out WORK/ct2_…, or benchmarks/optimize.py's --work)

The first ``--n`` sentences of the run's test split, beam 5, the run's alpha (CTranslate2: its own
length penalty, (|y|+1)^α), batches of 100. Each round decodes all of them with every engine in
turn (the order rotating); the table gives the median sentences/s, its ratio to ours fp32, the
spread of the rounds, and BLEU / chrF of the outputs (decoding is deterministic: the first
round's outputs are scored). ``--workers W`` adds every engine again decoding W batches at once,
one thread each (ours: decode.workers; CTranslate2: inter_threads, its own token batches).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

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
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
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
    worker_counts = [1] if args.workers == 1 else [1, args.workers]
    engines = {}
    for workers in worker_counts:
        suffix = f", {workers} workers" if workers > 1 else ""
        for name, model in models.items():
            engines[name + suffix] = lambda lines, m=model, w=workers: decode_all(
                m, run.task, lines, beam, 100, alpha, workers=w
            )
    if args.ct2:
        from heedful.optimize.ct2 import Ct2Engine

        for workers in worker_counts:
            for kind in ("float32", "int8"):
                engine = Ct2Engine(run, args.ct2 / f"ct2_{kind}", threads=args.threads, workers=workers)
                if workers == 1:  # batches of 100, as ours
                    engines[f"CTranslate2 {kind}"] = lambda lines, e=engine: [
                        t.output for i in range(0, len(lines), 100) for t in e.translate(lines[i : i + 100], beam=beam)
                    ]
                else:  # one call: CTranslate2 cuts it into token batches (decode.batch_tokens) for its workers
                    engines[f"CTranslate2 {kind}, {workers} workers"] = lambda lines, e=engine: [
                        t.output for t in e.translate(lines, beam=beam)
                    ]

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
    print("| engine | sent/s (median) | × ours fp32 | rounds, s | BLEU | chrF |")
    print("|---|--:|--:|--:|--:|--:|")
    for name, secs in times.items():
        median = statistics.median(secs)
        q = quality(run.task, outputs[name], examples)
        rows[name] = {"sent_per_s": len(sources) / median, "vs_fp32": base / median, "seconds": secs, **q}
        print(f"| {name} | {len(sources) / median:.1f} | {base / median:.2f}× | {min(secs):.1f}–{max(secs):.1f} "
              f"| {q.get('bleu', '')} | {q.get('chrf', '')} |")  # fmt: skip
    if args.json:
        record = {"run": str(args.run), "n": len(sources), "beam": beam, "threads": args.threads,
                  "load_average": [load_start, load_end], "engines": rows}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
