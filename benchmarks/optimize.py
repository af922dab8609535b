"""What each `heedful optimize` method buys and costs, on one trained translation run: one table,
every row measured in the same run of this script.

    python benchmarks/optimize.py --run runs/dates                      # ~10 minutes on a busy 2-core CPU
    python benchmarks/optimize.py --run runs/dates --n 200 --fine-tune-steps 50 --json optimize.json
    python benchmarks/optimize.py --run runs/amazon-reviews --classifier   # a text classifier: fp32 against int8

Rows: the run as trained (fp32); int8 (dynamic, torch.ao); the mean of its last checkpoints;
low-rank factorization at three sizes (each factorized Linear keeps 75 / 50 / 25 % of its
parameters) and the 50 % one after a short fine-tuning; half of the attention heads removed
(gradient importance, Michel et al. 2019) without and with a short fine-tuning; pruned + int8;
the fp32 model exported to ONNX, decoded by the same beam search through onnxruntime; and the
model converted to CTranslate2, float32 and int8, decoded by CTranslate2's own beam search (its
length penalty is length^α, not GNMT's, so it runs without one: its quality is not at the run's
decode.alpha like the others').

Columns: size on disk (the weights file; the two .onnx files for ONNX), parameters, batch-1
latency (median over --latency-n sentences, one at a time), batched throughput (sentences per
second over the --n test sources in batches of --batch), quality (exact match of the beam
output on those sources; BLEU for a parallel-text run), and each as a ratio to fp32. Every
model decodes with heedful's beam search (beam --beam, the run's decode.alpha) on --threads
threads (onnxruntime gets the same number).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from heedful.data.tokenizers import content_ids, pad_ids
from heedful.decode import beam_search
from heedful.optimize import count_parameters, optimize
from heedful.runs import load_run


def decode_all(model, task, sources: list[str], beam: int, batch: int, max_len: int, alpha: float) -> list[str]:
    out = []
    for start in range(0, len(sources), batch):
        src = pad_ids([task.src_tok.encode(s) for s in sources[start : start + batch]], task.src_tok.pad_id)
        hyps = beam_search(model, src, bos_id=task.tgt_tok.bos_id, eos_id=task.tgt_tok.eos_id, beam_size=beam,
                           max_len=max_len, alpha=alpha)  # fmt: skip
        out += [task.tgt_tok.decode(content_ids(h[0].tokens, task.tgt_tok.eos_id)) for h in hyps]
    return out


def quality(task, hyps: list[str], examples) -> dict[str, float]:
    if hasattr(examples[0], "source") and task.cfg.data.source == "parallel":
        from heedful.metrics.translation import bleu_and_chrf

        scores, _ = bleu_and_chrf(hyps, [e.target for e in examples], task.cfg.data.target_lang)
        return {"bleu": round(scores["bleu"], 2)}
    return {"exact_match": round(sum(h == e.target for h, e in zip(hyps, examples, strict=True)) / len(hyps), 4)}


def measure(name: str, model, task, examples, args, size: int, params: int) -> dict:
    """One row. ``model`` decodes through our beam search; a ``Ct2Translator`` through its own."""
    sources = [e.source for e in examples]
    max_len, alpha = task.cfg.decode.max_len, task.cfg.decode.alpha

    def decode(lines: list[str], batch: int) -> list[str]:
        if hasattr(model, "translate_scored"):  # CTranslate2: its own beam search, batches as ours
            return [out for start in range(0, len(lines), batch)
                    for out in model.translate(lines[start : start + batch], args.beam, max_len)]  # fmt: skip
        return decode_all(model, task, lines, args.beam, batch, max_len, alpha)

    with torch.inference_mode():
        decode(sources[:8], args.batch)  # warm-up
        single = []
        for s in sources[: args.latency_n]:
            started = time.perf_counter()
            decode([s], 1)
            single.append(time.perf_counter() - started)
        started = time.perf_counter()
        hyps = decode(sources, args.batch)
        seconds = time.perf_counter() - started
    row = {"model": name, "size_mb": round(size / 1e6, 3), "params": params,
           "latency_ms": round(1000 * statistics.median(single), 2),
           "sent_per_s": round(len(sources) / seconds, 1), **quality(task, hyps, examples)}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def classifier_table(run_dir: Path, work: Path, args) -> None:
    """A text classifier before and after int8: size, parameters, batch-1 latency, predict
    throughput (the test texts in batches of 1,024), accuracy and macro-F1 on its test split."""
    run = load_run(run_dir, "cpu")
    run.task.build_data(run.cfg)
    run.task.load_artifacts(run_dir / "model")
    texts = run.task.split_inputs("test")
    rows = []
    for name, directory in [("fp32", run_dir), ("int8", optimize(run, "int8", work / "classifier_int8"))]:
        r = load_run(directory, "cpu") if directory != run_dir else run
        r.task = run.task  # one task, its data read once
        with torch.inference_mode():
            r.predict(texts[:16])  # warm-up
            single = []
            for text in texts[: args.latency_n]:
                started = time.perf_counter()
                r.predict([text])
                single.append(time.perf_counter() - started)
            started = time.perf_counter()
            for start in range(0, len(texts), 1024):
                r.predict(texts[start : start + 1024])
            seconds = time.perf_counter() - started
            metrics = run.task.evaluate(r.model, "test")
        row = {"model": name, "size_mb": round((directory / "model" / "model.safetensors").stat().st_size / 1e6, 3),
               "params": count_parameters(r.model), "latency_ms": round(1000 * statistics.median(single), 2),
               "texts_per_s": round(len(texts) / seconds, 1), "accuracy": round(metrics["accuracy"], 4),
               "macro_f1": round(metrics["macro_f1"], 4)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    base = rows[0]
    print(f"\n{run_dir} — {len(texts)} test texts, {args.threads} threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")  # fmt: skip
    print("| model | size MB | × | batch-1 ms | speed-up | texts/s | × | accuracy | Δ | macro-F1 | Δ |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['size_mb']:.2f} | {r['size_mb'] / base['size_mb']:.2f} | {r['latency_ms']:.1f} | "
            f"{base['latency_ms'] / r['latency_ms']:.2f} | {r['texts_per_s']:.0f} | "
            f"{r['texts_per_s'] / base['texts_per_s']:.2f} | {r['accuracy']:.4f} | "
            f"{r['accuracy'] - base['accuracy']:+.4f} | {r['macro_f1']:.4f} | {r['macro_f1'] - base['macro_f1']:+.4f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a trained translate run directory")
    parser.add_argument("--work", type=Path, default=None, help="where the optimized runs go (default RUN-optimized)")
    parser.add_argument("--n", type=int, default=500, help="test sources decoded")
    parser.add_argument("--latency-n", type=int, default=40, help="sources timed one at a time")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fine-tune-steps", type=int, default=100)
    parser.add_argument("--average", type=int, default=4, help="checkpoints averaged")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--classifier", action="store_true", help="RUN is a text classifier: int8 only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or args.run.with_name(args.run.name + "-optimized")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.classifier:
        classifier_table(args.run, work, args)
        return

    run = load_run(args.run, "cpu")
    run.task.build_data(run.cfg)
    run.task.load_artifacts(args.run / "model")
    examples = list(run.task.data.splits["test"])[: args.n]
    ft = args.fine_tune_steps
    variants = {  # name -> (method, options, source run)
        "int8": ("int8", {}, args.run),
        f"average last {args.average}": ("average", {"last": args.average}, args.run),
        "low-rank 75%": ("low-rank", {"size": 0.75}, args.run),
        "low-rank 50%": ("low-rank", {"size": 0.5}, args.run),
        "low-rank 25%": ("low-rank", {"size": 0.25}, args.run),
        f"low-rank 50% + {ft} steps": ("low-rank", {"size": 0.5, "fine_tune_steps": ft}, args.run),
        "heads −50%": ("prune-heads", {"fraction": 0.5}, args.run),
        f"heads −50% + {ft} steps": ("prune-heads", {"fraction": 0.5, "fine_tune_steps": ft, "rounds": 2}, args.run),
    }
    size = (args.run / "model" / "model.safetensors").stat().st_size
    rows = [measure("fp32", run.model, run.task, examples, args, size, count_parameters(run.model))]
    made: dict[str, Path] = {}
    for name, (method, options, source) in variants.items():
        out = work / name.replace(" ", "_").replace("%", "").replace("+", "ft").replace("−", "minus")
        started = time.perf_counter()
        made[name] = optimize(load_run(source, "cpu"), method, out, **options)
        print(f"{name}: optimized in {time.perf_counter() - started:.1f} s", flush=True)
        optimized = load_run(made[name], "cpu")
        size = (made[name] / "model" / "model.safetensors").stat().st_size
        rows.append(measure(name, optimized.model, run.task, examples, args, size, count_parameters(optimized.model)))
    pruned_ft = made[f"heads −50% + {ft} steps"]
    both = optimize(load_run(pruned_ft, "cpu"), "int8", work / "pruned_int8")
    size = (both / "model" / "model.safetensors").stat().st_size
    optimized = load_run(both, "cpu")
    rows.append(measure(f"heads −50% + {ft} steps, int8", optimized.model, run.task, examples, args, size,
                        count_parameters(optimized.model)))  # fmt: skip
    try:
        from heedful.optimize.export import OnnxSeq2Seq, export_onnx

        exported = export_onnx(run, work / "onnx")
        size = sum(p.stat().st_size for p in exported.glob("*.onnx"))
        onnx = OnnxSeq2Seq(exported, threads=args.threads)
        rows.append(measure("ONNX (onnxruntime)", onnx, run.task, examples, args, size, count_parameters(run.model)))
    except ImportError as exc:
        print(f"ONNX row skipped: {exc}", file=sys.stderr)
    try:
        from heedful.optimize.ct2 import Ct2Translator, export_ctranslate2

        for quantization in (None, "int8"):
            folder = export_ctranslate2(run, work / f"ct2_{quantization or 'float'}", quantization)
            size = (folder / "model.bin").stat().st_size
            ct2 = Ct2Translator(folder, run.task.src_tok, run.task.tgt_tok, threads=args.threads)
            name = f"CTranslate2 {quantization or 'float32'} (length penalty 0)"
            rows.append(measure(name, ct2, run.task, examples, args, size, count_parameters(run.model)))
    except ImportError as exc:
        print(f"CTranslate2 rows skipped: {exc}", file=sys.stderr)

    base = rows[0]
    metric = next(k for k in ("bleu", "exact_match") if k in base)
    print(f"\n{args.run} — {len(examples)} test sources, beam {args.beam}, {args.threads} threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}\n")  # fmt: skip
    print(f"| model | size MB | × | params | × | batch-1 ms | speed-up | sent/s | × | {metric} | Δ |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speedup = base["latency_ms"] / r["latency_ms"]
        print(f"| {r['model']} | {r['size_mb']:.2f} | {r['size_mb'] / base['size_mb']:.2f} | {r['params']:,} | "
              f"{r['params'] / base['params']:.2f} | {r['latency_ms']:.1f} | {speedup:.2f} | "
              f"{r['sent_per_s']:.1f} | {r['sent_per_s'] / base['sent_per_s']:.2f} | {r[metric]:.4g} | "
              f"{r[metric] - base[metric]:+.4g} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
