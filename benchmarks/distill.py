"""A distilled student against its teacher (`heedful optimize --method distill`): test BLEU at the
same beam and the time each takes to translate the whole test set, measured in the same run of
this script, on the same threads, in alternating order (teacher, student, student, teacher, …)
so that a change in the machine's load falls on both.

    python benchmarks/distill.py --teacher runs/mt-de --student runs/mt-de-student --beam 5 --threads 1

Decoding is heedful's own (``run.translate``: token batches of ``decode.batch_tokens``, beam
search with the run's ``decode.alpha``); BLEU is sacreBLEU's, detokenized and case-sensitive, as
``heedful evaluate`` reports it. Nothing is written into either run directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from heedful.data.parallel import read_parallel
from heedful.metrics.translation import bleu_and_chrf
from heedful.optimize import count_parameters
from heedful.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="timed translations of the test set per model")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = {"teacher": load_run(args.teacher, "cpu"), "student": load_run(args.student, "cpu")}
    pairs = read_parallel(runs["teacher"].task.split_files(args.split))
    sources, references = [p.source for p in pairs], [p.target for p in pairs]
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    scores: dict[str, dict[str, float]] = {}
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            started = time.perf_counter()
            hyps = [t.output for t in runs[name].translate(sources, beam=args.beam)]
            seconds[name].append(time.perf_counter() - started)
            if name not in scores:
                scores[name], _ = bleu_and_chrf(hyps, references, runs[name].cfg.data.target_lang)
            print(f"{name}: round {round_ + 1}: {seconds[name][-1]:.1f} s", flush=True)

    rows = {}
    for name, run in runs.items():
        rows[name] = {
            "parameters": count_parameters(run.model),
            "bleu": round(scores[name]["bleu"], 2),
            "chrf": round(scores[name]["chrf"], 2),
            "seconds": round(statistics.median(seconds[name]), 1),
            "sentences_per_second": round(len(sources) / statistics.median(seconds[name]), 1),
        }
    teacher, student = rows["teacher"], rows["student"]
    print(f"\n{args.split}: {len(sources)} sentences, beam {args.beam}, {args.threads} thread(s), "
          f"median of {args.rounds} timed translations each")  # fmt: skip
    print(f"{'':8} {'parameters':>11} {'BLEU':>6} {'chrF':>6} {'seconds':>8} {'sent/s':>7}")
    for name, row in rows.items():
        print(f"{name:8} {row['parameters']:>11,} {row['bleu']:>6.2f} {row['chrf']:>6.2f} "
              f"{row['seconds']:>8.1f} {row['sentences_per_second']:>7.1f}")  # fmt: skip
    ratio = {
        "parameters": round(student["parameters"] / teacher["parameters"], 3),
        "bleu_difference": round(student["bleu"] - teacher["bleu"], 2),
        "speed_up": round(teacher["seconds"] / student["seconds"], 2),
    }
    print(f"student / teacher: parameters {ratio['parameters']:.3f}, BLEU {ratio['bleu_difference']:+.2f}, "
          f"speed-up {ratio['speed_up']:.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "student_vs_teacher": ratio, "args": vars(args)},
                                        indent=2, default=str) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
