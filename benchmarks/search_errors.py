"""Search errors or model errors: which of two beam searches over the same translator finds the
outputs that translator scores higher, and what that does to BLEU.

    python benchmarks/search_errors.py RUN EXPORT [--alpha 0 0.6] [--set decode.min_len=1] [--split test]
        [--json FILE]
    # EXPORT: heedful export RUN --format ctranslate2 --out EXPORT (or --format onnx)

For every α given, the run's held-out split is translated three ways at the run's beam size and
output limits:

  ours          heedful's beam search (``run.translate``), decode.alpha = α: it goes on while a
                live hypothesis could still beat the ended ones (exact for its objective)
  ours, early   the same with decode.early_stopping = true: a sentence stops once ``beam``
                hypotheses have ended, as fairseq and CTranslate2 stop
  EXPORT        the export folder's own search (``open_export(EXPORT).translate``): CTranslate2's
                beam search for a CTranslate2 export, ours over onnxruntime for an ONNX one

Each row gives BLEU and chrF, the output pieces in all, the empty outputs, and — against ``ours``
— in how many sentences each search found an output of strictly higher log-probability (1e-3
apart at least). Every output is scored anew by the run's own float32 model, teacher-forced, as a
whole sentence (its pieces, then <eos>), so all three are judged by one model whatever engine
found them (for an int8 export, its picks are then judged by the model it was quantized from). At
α = 0 that log-probability is what every one of the searches maximises, so an output of higher
log-probability found by another search is a *search error* of this one. At α > 0 the searches
rank by length-normalised scores (ours GNMT's ((5 + |y|) / 6)^α, CTranslate2 (|y| + 1)^α), so the
counts there say only which outputs the model likes more, not who searched better.

Why it matters: when the better search gives the lower BLEU, the fault is the model's — it gives
short or empty outputs more probability than good ones (Stahlberg & Byrne 2019, "On NMT search
errors and model errors: cat got your tongue?") — and a length penalty is what repairs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from heedful.data.tokenizers import pad_ids
from heedful.optimize.export import open_export
from heedful.runs import load_run

TOLERANCE = 1e-3  # log-probabilities closer than this count as equal (the engines round differently)


def translate_split(translator, split: str) -> tuple[list, dict[str, float]]:
    """``translator``'s translations of the split's sources, and their scores (BLEU, chrF or exact match)."""
    task = translator.task
    outputs = translator.predict(task.split_inputs(split))
    return outputs, dict(task.score_predictions(split, outputs).metrics)


@torch.inference_mode()
def log_probs(run, sources: list[str], outputs: list[list[int]], batch: int = 100) -> list[float]:
    """log p(output, <eos> | source) under ``run``'s model, teacher-forced, per sentence."""
    task, model = run.task, run.model.float().eval()
    bos, eos, pad = task.tgt_tok.bos_id, task.tgt_tok.eos_id, task.tgt_tok.pad_id
    scores: list[float] = []
    for start in range(0, len(sources), batch):
        src = pad_ids(
            [task.src_tok.encode(s)[: model.config.max_len] for s in sources[start : start + batch]],
            task.src_tok.pad_id,
        )
        out = outputs[start : start + batch]
        tgt_in = pad_ids([[bos, *o] for o in out], pad)  # (B, T)
        tgt_out = pad_ids([[*o, eos] for o in out], pad)  # (B, T)
        memory, padding = model.encode(src)  # (B, S, D), (B, S)
        logits = model.decode(tgt_in, memory, padding)  # (B, T, V)
        picked = logits.float().log_softmax(-1).gather(-1, tgt_out[..., None]).squeeze(-1)  # (B, T)
        scores += picked.masked_fill(tgt_out == pad, 0.0).sum(-1).tolist()
    return scores


def compared(scores: list[float], reference: list[float]) -> dict[str, int]:
    """In how many sentences ``scores`` are higher / lower than ``reference``'s."""
    higher = sum(s > r + TOLERANCE for s, r in zip(scores, reference, strict=True))
    lower = sum(s < r - TOLERANCE for s, r in zip(scores, reference, strict=True))
    return {"higher_log_prob": higher, "lower_log_prob": lower}


def one_alpha(run_dir: Path, export: Path, alpha: float, split: str, extra: list[str] = ()) -> list[dict]:
    overrides = [*extra, f"decode.alpha={alpha}"]
    searches = {
        "ours": load_run(run_dir, device="cpu", overrides=overrides),
        "ours, early": load_run(run_dir, device="cpu", overrides=[*overrides, "decode.early_stopping=true"]),
        f"export ({export.name})": open_export(export, overrides),
    }
    judge = searches["ours"]
    rows, reference = [], None
    for name, translator in searches.items():
        translator.task.ensure_data(run_dir / "model")  # the split, with the run's vocabulary
        outputs, metrics = translate_split(translator, split)
        scores = log_probs(judge, judge.task.split_inputs(split), [o.output_ids for o in outputs])
        reference = reference or scores
        rows.append(
            {
                "alpha": alpha,
                "search": name,
                **{k: round(v, 2) for k, v in metrics.items()},
                "pieces": sum(len(o.output_ids) for o in outputs),
                "empty": sum(not o.output_ids for o in outputs),
                **compared(scores, reference),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a trained translation run")
    parser.add_argument("export", type=Path, help="an export of it (CTranslate2 or ONNX)")
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.0, 0.6], help="length penalties to compare")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a config override for all three searches, e.g. decode.min_len=1 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = [
        row for alpha in args.alpha for row in one_alpha(args.run_dir, args.export, alpha, args.split, args.overrides)
    ]
    counts = ["pieces", "empty", "higher_log_prob", "lower_log_prob"]
    metrics = [k for k in rows[0] if k not in ("alpha", "search", *counts)]
    columns = ["alpha", "search", *metrics, *counts]
    settings = "".join(f", {o}" for o in args.overrides)
    print(f"{args.split} of {args.run_dir}{settings}: log-probabilities against ours' at the same α (≥ 1e-3 apart)")
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
