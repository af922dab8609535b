"""What each `heedful optimize` method buys and costs, on one trained translation run: one table,
every row measured in the same run of this script.

    python benchmarks/optimize.py --run runs/dates                      # ~10 minutes on a busy 2-core CPU
    python benchmarks/optimize.py --run runs/mt-de --n 1000 --sweep --json docs/optimize_multi30k.json
    python benchmarks/optimize.py --run runs/mt-de --ensemble runs/mt-de-2 runs/mt-de-3   # 3 runs, not checkpoints
    python benchmarks/optimize.py --run runs/multi30k-rnn-bahdanau --n 1000  # GRU + attention: no heads
    python benchmarks/optimize.py --run runs/amazon-reviews --classifier   # a text classifier: its own table

Rows (each built by one function: baseline_rows, fusion_rows, method_rows, export_rows, sweep):
the run as trained (fp32), and again without a length penalty; checkpoint fusion — the mean of
its last --average checkpoints, the best single kept checkpoint (by the validation score the run
recorded for it), a 3-model ensemble (decode/ensemble.py: RUN with the --ensemble runs, or its
last 3 checkpoints); int8 (dynamic, torch.ao); low-rank factorization at three sizes (each
factorized Linear keeps 75 / 50 / 25 % of its parameters) and the 50 % one after a short
fine-tuning (and, for a model whose output projection is tied to its embedding, the 50 % one
with that projection factorized too, --untie, after the same fine-tuning); half of the attention
heads removed (gradient importance, Michel et al. 2019) without and with a short fine-tuning;
pruned + int8; the fp32 model exported to ONNX, decoded by the same beam search through
onnxruntime; and the model converted to CTranslate2, decoded by its own beam search as `heedful
translate --engine ctranslate2` does: float32 without a length penalty (compare with the fp32
row without one: the only penalty both compute alike), float32 and int8 at the run's α
(CTranslate2 divides by (|y|+1)^α, ours by GNMT's ((5+|y|)/6)^α).
A GRU/LSTM run (configs/multi30k/rnn_*.yaml) gets the same table without the rows that need a
Transformer: head pruning, ONNX and CTranslate2 (and no --sweep).
--sweep adds BLEU against heads removed (0/25/50/75 %, each + the same fine-tuning) and against
low-rank size, as docs/optimize_bleu_vs_{heads,lowrank}.png with optimize_sweep.json beside them.

Columns: size on disk (the weights file; the two .onnx files for ONNX; an ensemble's members'
weights), parameters, batch-1 latency (median over --latency-n sentences, one at a time),
batched throughput (sentences per second over the --n test sources in batches of --batch),
quality (exact match of the beam output on those sources; BLEU and chrF for a parallel-text
run), and each as a ratio to fp32. Every model decodes with heedful's beam search (beam --beam,
the run's decode.alpha and output limits) on --threads threads (onnxruntime and CTranslate2 get
the same number). The load average is printed at the start and the end: on a shared machine,
read the speed columns with it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from heedful.attention import CacheArena
from heedful.data.tokenizers import content_ids, pad_ids
from heedful.decode import beam_search
from heedful.decode.batching import map_in_workers
from heedful.nn.packed import packed_linears
from heedful.nn.weights import load_weights
from heedful.optimize import count_parameters, optimize
from heedful.runs import load_run


def decode_all(
    model, task, sources: list[str], beam: int, batch: int, alpha: float, workers: int = 1, prepacked: bool = True
) -> list[str]:
    """Our beam search over ``sources`` in batches of ``batch``, each sentence's output limit the
    task's own (decode.max_len, decode.max_len_ratio), as ``heedful translate`` decodes; with
    ``workers`` > 1, that many batches at once, one torch thread each (decode.workers). Float32
    Linears run prepacked, packed once for all the batches, as the task does (``prepacked=False``:
    on F.linear)."""

    per_thread = threading.local()

    def decode_batch(lines: list[str]) -> list[str]:
        if not hasattr(per_thread, "arena"):  # the caches' memory, kept from batch to batch as the task keeps it
            per_thread.arena = CacheArena()
        ids = [task.src_tok.encode(s) for s in lines]
        limits = torch.tensor([task._output_limit(len(i), model.config.max_len) for i in ids])
        hyps = beam_search(model, pad_ids(ids, task.src_tok.pad_id), bos_id=task.tgt_tok.bos_id,
                           eos_id=task.tgt_tok.eos_id, beam_size=beam, max_len=limits, alpha=alpha,
                           prepacked=prepacked, arena=per_thread.arena)  # fmt: skip
        return [task.tgt_tok.decode(content_ids(h[0].tokens, task.tgt_tok.eos_id)) for h in hyps]

    batches = [sources[start : start + batch] for start in range(0, len(sources), batch)]
    with packed_linears(model, enabled=prepacked):
        return [line for lines in map_in_workers(decode_batch, batches, workers) for line in lines]


def interleaved_rounds(decoders: dict, sources: list[str], rounds: int) -> tuple[dict, dict]:
    """Each round, every decoder translates all ``sources`` in turn, the order rotating by one per
    round so that a load burst hits them alike; returns the seconds of each decoder's rounds and
    its first round's outputs (decoding is deterministic)."""
    names = list(decoders)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, list[str]] = {}
    with torch.inference_mode():
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                out = decoders[name](sources)
                seconds[name].append(time.perf_counter() - start)
                outputs.setdefault(name, out)
            print(f"  round {r + 1}: " + "  ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items()), flush=True)
    return seconds, outputs


def quality(task, hyps: list[str], examples) -> dict[str, float]:
    if hasattr(examples[0], "source") and task.cfg.data.source == "parallel":
        from heedful.metrics.translation import bleu_and_chrf

        scores, _ = bleu_and_chrf(hyps, [e.target for e in examples], task.cfg.data.target_lang)
        return {"bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2)}
    return {"exact_match": round(sum(h == e.target for h, e in zip(hyps, examples, strict=True)) / len(hyps), 4)}


def measure(name: str, model, task, examples, args, size: int, params: int, alpha: float | None = None) -> dict:
    """One row. ``model`` decodes through our beam search (at ``alpha``, default the run's
    decode.alpha); a ``Ct2Engine`` through CTranslate2's own."""
    sources = [e.source for e in examples]
    alpha = task.cfg.decode.alpha if alpha is None else alpha

    def decode(lines: list[str], batch: int) -> list[str]:
        if hasattr(model, "translator"):  # CTranslate2: its own beam search, batches as ours
            return [t.output for start in range(0, len(lines), batch)
                    for t in model.translate(lines[start : start + batch], beam=args.beam)]  # fmt: skip
        return decode_all(model, task, lines, args.beam, batch, alpha)

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


def weights_size(run_dir: Path) -> int:
    return (run_dir / "model" / "model.safetensors").stat().st_size


def measure_run(name: str, directory: Path, task, examples, args) -> dict:
    """A row for an optimized run directory (its model decoded with the original run's task)."""
    optimized = load_run(directory, "cpu")
    return measure(name, optimized.model, task, examples, args, weights_size(directory),
                   count_parameters(optimized.model))  # fmt: skip


def folder_name(name: str) -> str:
    return name.replace(" ", "_").replace("%", "").replace("+", "ft").replace("−", "minus").replace(",", "")


# ------------------------------------------------------------------------------ rows, by kind
def baseline_rows(run, examples, args) -> list[dict]:
    """The run as trained (its best-validation weights) at the run's decode.alpha, and again
    without a length penalty: the one CTranslate2 shares exactly (its α is (|y|+1)^α, ours GNMT's)."""
    size, params = weights_size(args.run), count_parameters(run.model)
    return [
        measure("fp32", run.model, run.task, examples, args, size, params),
        measure("fp32, no length penalty", run.model, run.task, examples, args, size, params, alpha=0.0),
    ]


def checkpoint_model(run, checkpoint: Path):
    """The run's architecture with one kept checkpoint's (raw, not weight-averaged) weights."""
    model = copy.deepcopy(run.model)
    load_weights(model, checkpoint / "model.safetensors", strict=False)  # ema.* extras are not the model's
    return model.eval()


def checkpoint_score(checkpoint: Path, monitor: str) -> float | None:
    """The validation score the run recorded at this checkpoint (its last epoch's ``monitor``)."""
    state = json.loads((checkpoint / "state.json").read_text())
    epochs = state.get("history", {}).get("epochs", [])
    return epochs[-1].get(monitor) if epochs and epochs[-1].get("step") == state.get("step") else None


def fusion_rows(run, examples, args, work: Path) -> list[dict]:
    """Checkpoint averaging beside the best single kept checkpoint, and a 3-model ensemble
    (RUN with the --ensemble runs; with none, the run's last 3 checkpoints as the 3 models)."""
    from heedful.decode.ensemble import EnsembleDecoder
    from heedful.train.checkpoint import list_checkpoints

    task, rows = run.task, []
    kept = list_checkpoints(args.run / "checkpoints")
    last = min(args.average, len(kept))  # a run may keep fewer than --average
    out = optimize(load_run(args.run, "cpu"), "average", work / "average", last=last)
    rows.append(measure_run(f"average last {last} checkpoints", out, task, examples, args))
    monitor = run.cfg.train.monitor
    scored = [(checkpoint_score(c, monitor), c) for c in kept]
    scored = [(s, c) for s, c in scored if s is not None]
    if scored:
        sign = 1 if run.cfg.train.monitor_mode == "max" else -1
        score, best = max(scored, key=lambda sc: sign * sc[0])
        model = checkpoint_model(run, best)
        rows.append(measure(f"best kept checkpoint ({best.name}, {monitor} {score:.4g})", model, task, examples,
                            args, (best / "model.safetensors").stat().st_size, count_parameters(model)))  # fmt: skip
    if args.ensemble:
        members = [run.model, *(load_run(other, "cpu").model for other in args.ensemble)]
        label = f"ensemble of {len(members)} runs"
    else:
        members = [checkpoint_model(run, c) for c in kept[-3:]]
        label = f"ensemble of the last {len(members)} checkpoints ({', '.join(c.name for c in kept[-3:])})"
    ensemble = EnsembleDecoder(members).eval()
    params = sum(count_parameters(m) for m in members)  # tied weights once per member
    rows.append(measure(label, ensemble, task, examples, args, 4 * params, params))  # size: float32 bytes
    return rows


def has_heads(run) -> bool:
    """Whether head pruning and the Transformer-only exports (ONNX's decoder step, CTranslate2's
    TransformerSpec) apply: a Transformer translator, not the GRU/LSTM + attention one."""
    return getattr(run.model.config, "arch", None) == "transformer"


def method_rows(run, examples, args, work: Path) -> tuple[list[dict], dict[str, Path]]:
    """``heedful optimize``'s methods: int8, low-rank at three sizes (and the 50 % one fine-tuned,
    and — where the output projection is tied to the embedding — fine-tuned with it factorized too,
    ``--untie``), half the heads removed (and fine-tuned), and pruned + int8."""
    ft = args.fine_tune_steps
    variants = {  # name -> (method, options)
        "int8": ("int8", {}),
        "low-rank 75%": ("low-rank", {"size": 0.75}),
        "low-rank 50%": ("low-rank", {"size": 0.5}),
        "low-rank 25%": ("low-rank", {"size": 0.25}),
        f"low-rank 50% + {ft} steps": ("low-rank", {"size": 0.5, "fine_tune_steps": ft}),
    }
    if getattr(run.model.config, "tie_embeddings", False):  # the output projection is the embedding
        variants[f"low-rank 50% untied + {ft} steps"] = (
            "low-rank",
            {"size": 0.5, "untie": True, "fine_tune_steps": ft},
        )
    if has_heads(run):  # an RNN's attention has no heads to remove
        variants["heads −50%"] = ("prune-heads", {"fraction": 0.5})
        variants[f"heads −50% + {ft} steps"] = ("prune-heads", {"fraction": 0.5, "fine_tune_steps": ft})
    rows, made = [], {}
    for name, (method, options) in variants.items():
        started = time.perf_counter()
        made[name] = optimize(load_run(args.run, "cpu"), method, work / folder_name(name), **options)
        print(f"{name}: optimized in {time.perf_counter() - started:.1f} s", flush=True)
        rows.append(measure_run(name, made[name], run.task, examples, args))
    if not has_heads(run):
        return rows, made
    name = f"heads −50% + {ft} steps, int8"
    made[name] = optimize(load_run(made[f"heads −50% + {ft} steps"], "cpu"), "int8", work / folder_name(name))
    rows.append(measure_run(name, made[name], run.task, examples, args))
    return rows, made


def export_rows(run, examples, args, work: Path) -> list[dict]:
    """The fp32 model exported: ONNX (our beam search through onnxruntime, unless --no-onnx) and
    CTranslate2 float32 and int8 (its own beam search via ``Ct2Engine``, as ``heedful translate
    --engine ctranslate2``): at the run's α (its (|y|+1)^α form) and, float32, without a penalty."""
    rows, params = [], count_parameters(run.model)
    if not has_heads(run):
        print(f"ONNX and CTranslate2 rows skipped: they export Transformer translators, not a "
              f"{run.model.config.arch} one", file=sys.stderr)  # fmt: skip
        return rows
    if not args.no_onnx:
        try:
            from heedful.optimize.export import OnnxSeq2Seq, export_onnx

            exported = export_onnx(run, work / "onnx")
            size = sum(p.stat().st_size for p in exported.glob("*.onnx"))
            onnx = OnnxSeq2Seq(exported, threads=args.threads)
            rows.append(measure("ONNX (onnxruntime)", onnx, run.task, examples, args, size, params))
        except ImportError as exc:
            print(f"ONNX row skipped: {exc}", file=sys.stderr)
    try:
        from heedful.optimize.ct2 import Ct2Engine, export_ctranslate2
    except ImportError as exc:
        print(f"CTranslate2 rows skipped: {exc}", file=sys.stderr)
        return rows
    alpha = run.cfg.decode.alpha
    for quantization, penalty in ((None, 0.0), (None, alpha), ("int8", alpha)):
        folder = work / f"ct2_{quantization or 'float32'}"
        if not folder.exists():
            export_ctranslate2(run, folder, quantization)
        engine = Ct2Engine.for_run(run, folder, threads=args.threads)
        engine.decode_cfg = run.cfg.decode.model_copy(update={"alpha": penalty})
        name = f"CTranslate2 {quantization or 'float32'}, " + (
            f"length penalty (|y|+1)^{penalty:g}" if penalty else "no length penalty"
        )
        rows.append(measure(name, engine, run.task, examples, args, (folder / "model.bin").stat().st_size, params))
    return rows


def sweep(run, examples, args, work: Path, rows: list[dict], made: dict[str, Path]) -> None:
    """BLEU against heads removed (0, 25, 50, 75 %, each with the same --fine-tune-steps; the 0 %
    point is the unpruned model fine-tuned as long, the control) and against low-rank size (the
    table's 75 / 50 / 25 % rows): PNGs and their JSON in --plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from heedful.optimize.common import fine_tune

    ft, metric = args.fine_tune_steps, "bleu" if "bleu" in rows[0] else "exact_match"
    by_name = {r["model"]: r for r in rows}
    control = load_run(args.run, "cpu")
    fine_tune(control, control.model, ft, 1e-4)  # prune_heads' default lr
    heads = [measure(f"heads −0% + {ft} steps (control)", control.model, run.task, examples, args,
                     weights_size(args.run), count_parameters(control.model))]  # fmt: skip
    for fraction in (0.25, 0.5, 0.75):
        name = f"heads −{fraction:.0%} + {ft} steps"
        if name not in by_name:
            made[name] = optimize(load_run(args.run, "cpu"), "prune-heads", work / folder_name(name),
                                  fraction=fraction, fine_tune_steps=ft)  # fmt: skip
            by_name[name] = measure_run(name, made[name], run.task, examples, args)
        heads.append(by_name[name])
    rows.extend(r for r in heads if r not in rows)
    ranks = [by_name["fp32"], *(by_name[f"low-rank {p}%"] for p in (75, 50, 25))]
    args.plots.mkdir(parents=True, exist_ok=True)
    record = {"run": str(args.run), "n": len(examples), "beam": args.beam, "fine_tune_steps": ft, "metric": metric,
              "heads_removed": [{"fraction": f, **r} for f, r in zip((0, 0.25, 0.5, 0.75), heads, strict=True)],
              "low_rank": [{"size": s, **r} for s, r in zip((1.0, 0.75, 0.5, 0.25), ranks, strict=True)]}  # fmt: skip
    (args.plots / "optimize_sweep.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    for key, xs, xlabel, fname in (
        ("heads_removed", [0, 25, 50, 75], f"attention heads removed (%), each + {ft} fine-tuning steps",
         "optimize_bleu_vs_heads.png"),
        ("low_rank", [100, 75, 50, 25], "parameters kept in each factorized Linear (%)",
         "optimize_bleu_vs_lowrank.png"),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
        ys = [r[metric] for r in record[key]]
        ax.plot(xs, ys, "o-")
        ax.axhline(by_name["fp32"][metric], color="grey", ls="--", lw=1, label="fp32 as trained")
        if key == "low_rank":
            ax.invert_xaxis()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {metric.upper()} (beam {args.beam}, n={len(examples)})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plots / fname)
        plt.close(fig)
        print(f"written: {args.plots / fname}", flush=True)


def print_table(rows: list[dict], n: int, args) -> None:
    base = rows[0]
    metrics = [k for k in ("bleu", "chrf", "exact_match") if k in base]
    print(f"\n{args.run} — {n} test sources, beam {args.beam}, {args.threads} threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}\n")  # fmt: skip
    head = " | ".join(f"{m} | Δ" for m in metrics)
    print(f"| model | size MB | × | params | × | batch-1 ms | speed-up | sent/s | × | {head} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(metrics))
    for r in rows:
        speedup = base["latency_ms"] / r["latency_ms"]
        quality_cells = " | ".join(f"{r[m]:.4g} | {r[m] - base[m]:+.4g}" for m in metrics)
        print(f"| {r['model']} | {r['size_mb']:.2f} | {r['size_mb'] / base['size_mb']:.2f} | {r['params']:,} | "
              f"{r['params'] / base['params']:.2f} | {r['latency_ms']:.1f} | {speedup:.2f} | "
              f"{r['sent_per_s']:.1f} | {r['sent_per_s'] / base['sent_per_s']:.2f} | {quality_cells} |")  # fmt: skip


def classifier_table(run_dir: Path, work: Path, args) -> None:
    """A text classifier as trained, int8, low-rank 50 % and half its heads removed (both fine-tuned
    --fine-tune-steps), and pruned + int8: size, parameters, batch-1 latency, predict throughput
    (the test texts in batches of 1,024), accuracy and macro-F1 on its test split."""
    run = load_run(run_dir, "cpu")
    run.task.build_data(run.cfg)
    run.task.load_artifacts(run_dir / "model")
    texts = run.task.split_inputs("test")
    ft = args.fine_tune_steps
    variants = {  # name -> (method, options, made from)
        "int8": ("int8", {}, None),
        f"low-rank 50% + {ft} steps": ("low-rank", {"size": 0.5, "fine_tune_steps": ft}, None),
        f"heads −50% + {ft} steps": ("prune-heads", {"fraction": 0.5, "fine_tune_steps": ft}, None),
        f"heads −50% + {ft} steps, int8": ("int8", {}, f"heads −50% + {ft} steps"),
    }
    made = {"fp32": run_dir}
    for name, (method, options, source) in variants.items():
        source_run = load_run(made[source] if source else run_dir, "cpu")
        made[name] = optimize(source_run, method, work / f"classifier_{folder_name(name)}", **options)
    rows = []
    for name, directory in made.items():
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
    print("| model | size MB | × | params | × | batch-1 ms | speed-up | texts/s | × | accuracy | Δ | macro-F1 | Δ |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['size_mb']:.2f} | {r['size_mb'] / base['size_mb']:.2f} | {r['params']:,} | "
            f"{r['params'] / base['params']:.2f} | {r['latency_ms']:.1f} | "
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
    parser.add_argument("--average", type=int, default=5, help="checkpoints averaged")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--ensemble",
        type=Path,
        nargs="*",
        default=[],
        help="other runs of the same vocabulary for the ensemble row (default: the last 3 checkpoints)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also BLEU against heads removed (0/25/50/75 %%) and low-rank size: PNG + JSON in --plots",
    )
    parser.add_argument("--plots", type=Path, default=Path("docs"), help="where --sweep writes its figures")
    parser.add_argument("--no-onnx", action="store_true", help="leave out the ONNX row (slow on a busy CPU)")
    parser.add_argument("--no-fusion", action="store_true", help="leave out averaging, best checkpoint, ensemble")
    parser.add_argument("--classifier", action="store_true", help="RUN is a text classifier (its own table)")
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
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = baseline_rows(run, examples, args)
    if not args.no_fusion:
        rows += fusion_rows(run, examples, args, work)
    method, made = method_rows(run, examples, args, work)
    rows += method + export_rows(run, examples, args, work)
    if args.sweep and has_heads(run):
        sweep(run, examples, args, work, rows, made)
    print(f"load average at end: {os.getloadavg()}", flush=True)
    print_table(rows, len(examples), args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
