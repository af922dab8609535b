"""A cross-attention head trained to align (Garg et al. 2019), scored on the Hansard gold.

    python benchmarks/alignment_supervised.py RUN --minutes 8 [--work DIR] [--layer -1 --head 0]
    python benchmarks/alignment_supervised.py RUN --minutes 20 --hansard-copies 10 --name hansard-l1 --layer 1

RUN is a finished en→fr translate run (Multi30k). The script

1. aligns the run's training text (Multi30k en–fr, every line, in corpus order) together with
   the 447 Hansard gold sentences with eflomal (both directions, symmetrised with
   grow-diag-final). eflomal sees lowercased tokens — each word split into letters/digits runs
   and single punctuation marks — and its links are mapped back to *words as the model's
   alignments count them*: the words of ``line.split()``, as
   :func:`heedful.explain.alignment.encode_words` numbers the run's own sentencepiece pieces
   (so ``dog.`` is one word, and a word the tokenizer drops keeps its number), each written as
   its pieces' normalised text. The training lines become the supervision file (``DIR/train.links``);
   the Hansard lines are eflomal's own alignments, scored as the reference;
2. fine-tunes RUN for ``--minutes`` with ``train.init_from: RUN`` and ``alignment_supervision``
   on (layer ``--layer``, head ``--head``, weight ``--weight``) into ``DIR/finetuned``;
   (``--control``: the same fine-tuning without the supervision, into ``DIR/finetuned-control``;
   ``--name N``: into ``DIR/N`` and ``DIR/results-N.json``, so variants share one DIR's links;
   ``--init-from R``: the fine-tuning starts from run R's weights, e.g. to train a variant longer).
   With ``--hansard-copies K`` the fine-tuning text is the Multi30k training pairs plus K copies
   of the 447 Hansard sentence pairs, supervised with eflomal's links of them: the text eflomal
   itself trains on (its usual protocol for an unsupervised aligner). The Hansard *gold* links
   are never read before scoring; the head learns eflomal's output on sentences it then aligns;
   the data folder ``DIR/data-hansardK`` holds the joined text and links-by-symlink the rest;
3. scores on the Hansard gold (AER, precision, recall; all 447 sentences and the last 300) the
   supervised head before and after, the mean of its layer's heads before and after, and
   eflomal; and the test2016 BLEU before and after (the supervision must not wreck translation).

Results: printed, and written to ``DIR/results.json``. Nothing is written into RUN.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from heedful.data.parallel import read_lines, split_files
from heedful.explain.alignment import AlignMethod, alignment_scores, encode_words, grow_diag_final, parse_links
from heedful.runs import load_config, load_run
from heedful.train import fit

HANSARD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alignment"
LAST = 300  # alignment_hansard.py chooses methods on the first 147 sentences and reports on the last 300
DEV = 147


def model_words(tok, text: str) -> list[str]:
    """The words the model's alignments count (``text.split()``, as encode_words numbers them),
    each as the text of its pieces (normalised); a word the tokenizer drops whole keeps its place
    with its raw text, so the links after it keep their numbers."""
    raw = text.split()
    words = [""] * len(raw)
    ids, owners = encode_words(tok, text)
    for i, word in zip(ids, owners, strict=True):
        if word is not None:
            words[word] += tok.id_to_piece(i).removeprefix("▁")
    return [w or r for w, r in zip(words, raw, strict=True)]


def subtokens(words: list[str]) -> tuple[str, list[int]]:
    """eflomal's line (lowercased word parts, space-separated) and the word of each part."""
    parts, owner = [], []
    for w, word in enumerate(words):
        split = re.findall(r"\w+|[^\w\s]", word.lower()) or [word.lower()]
        parts += split
        owner += [w] * len(split)
    return " ".join(parts), owner


def run_eflomal(src_lines: list[str], tgt_lines: list[str], work: Path) -> tuple[list[str], list[str]]:
    import eflomal

    fwd, rev = work / "eflomal.fwd", work / "eflomal.rev"
    eflomal.Aligner().align(src_lines, tgt_lines, links_filename_fwd=str(fwd), links_filename_rev=str(rev))
    return fwd.read_text().splitlines(), rev.read_text().splitlines()


def word_links(fwd: str, rev: str, src_owner: list[int], tgt_owner: list[int]) -> set[tuple[int, int]]:
    """Symmetrise eflomal's two directions over its tokens, then map the links to words."""
    forward, _ = parse_links(fwd, where="eflomal forward")
    backward, _ = parse_links(rev, where="eflomal reverse")
    return {(src_owner[s], tgt_owner[t]) for s, t in grow_diag_final(forward, backward)}


def eflomal_links(run_dir: Path, work: Path) -> tuple[Path, list[set[tuple[int, int]]], dict]:
    """The supervision file for the run's training lines and eflomal's word links on the Hansard
    sentences; both kept in ``work`` and reused when there."""
    links_file, hansard_file = work / "train.links", work / "hansard.links"
    run = load_run(run_dir, device="cpu")
    facts: dict = {}
    if not (links_file.is_file() and hansard_file.is_file()):
        files = split_files(run.cfg.data, "train")
        sides = [[line.decode("utf-8").strip() for line in read_lines(path)] for path in files.paths]
        hansard = [line.split(" ||| ") for line in (HANSARD / "enfr.src-tgt").read_text("utf-8").splitlines()]
        sources = sides[0] + [en for en, _ in hansard]
        targets = sides[1] + [fr for _, fr in hansard]
        src = [subtokens(model_words(run.task.src_tok, s)) for s in sources]
        tgt = [subtokens(model_words(run.task.tgt_tok, t)) for t in targets]
        started = time.perf_counter()
        fwd, rev = run_eflomal([s for s, _ in src], [t for t, _ in tgt], work)
        facts["eflomal_seconds"] = round(time.perf_counter() - started, 1)
        words = [word_links(f, r, s[1], t[1]) for f, r, s, t in zip(fwd, rev, src, tgt, strict=True)]
        n_train = len(sides[0])
        links_file.write_text("".join(" ".join(f"{s}-{t}" for s, t in sorted(w)) + "\n" for w in words[:n_train]))
        hansard_file.write_text("".join(" ".join(f"{s}-{t}" for s, t in sorted(w)) + "\n" for w in words[n_train:]))
    hansard_links = [parse_links(line)[0] for line in hansard_file.read_text().splitlines()]
    return links_file, hansard_links, facts


def hansard_gold() -> tuple[list[str], list[str], list[tuple[set, set]]]:
    pairs = [line.split(" ||| ") for line in (HANSARD / "enfr.src-tgt").read_text("utf-8").splitlines()]
    gold = [parse_links(line, one_based=True) for line in (HANSARD / "enfr.gold").read_text().splitlines()]
    return [en for en, _ in pairs], [fr for _, fr in pairs], gold


def scores(predicted: list[set], gold: list[tuple[set, set]]) -> dict[str, dict[str, float]]:
    """AER / precision / recall on all sentences and on the last 300."""
    items = [(p, sure, possible) for p, (sure, possible) in zip(predicted, gold, strict=True)]
    return {
        "all": {k: round(v, 4) for k, v in alignment_scores(items).items()},
        f"first{DEV}": {k: round(v, 4) for k, v in alignment_scores(items[:DEV]).items()},
        f"last{LAST}": {k: round(v, 4) for k, v in alignment_scores(items[-LAST:]).items()},
    }


def with_hansard(run_dir: Path, links_file: Path, copies: int, work: Path) -> tuple[Path, Path]:
    """A data folder with the run's training text plus ``copies`` copies of the Hansard pairs
    (val/test linked to the run's own files), and the matching links file."""
    cfg = load_config(run_dir / "config.yaml")
    d = cfg.data
    folder = work / f"data-hansard{copies}"
    folder.mkdir(exist_ok=True)
    sources, targets, _ = hansard_gold()
    train = split_files(d, "train")
    for path, extra, lang in zip(train.paths, (sources, targets), (d.source_lang, d.target_lang), strict=True):
        lines = [line.decode("utf-8").rstrip("\n") for line in read_lines(path)]
        (folder / f"train.{lang}").write_text("\n".join(lines + extra * copies) + "\n", encoding="utf-8")
    for split in ("val", "test"):
        for path in split_files(d, split).paths:
            link = folder / path.name.replace(Path(str(getattr(d, split))).name, split, 1)
            if not link.exists():
                link.symlink_to(path.resolve())
    hansard_links = (work / "hansard.links").read_text().splitlines()
    joined = folder / "train.links"
    joined.write_text(links_file.read_text() + "".join(line + "\n" for line in hansard_links * copies))
    return folder, joined


def measure(run_dir: Path, layer: int, head: int, beam: int | None) -> dict:
    """The run's head and layer on the Hansard gold, and its test BLEU (nothing written into the run)."""
    run = load_run(run_dir, device="cpu", overrides=[f"decode.beam_size={beam}"] if beam else None)
    sources, targets, gold = hansard_gold()
    out = {}
    for name, method in {
        "head": AlignMethod(layers=(layer,), heads=(head,)),
        "layer mean": AlignMethod(layers=(layer,)),
    }.items():
        out[name] = scores(list(run.align(sources, targets, method=method)), gold)
    run.task.build_data(run.cfg)
    run.task.load_artifacts(run.run_dir / "model")  # the run's own vocabulary, as Run.evaluate does
    started = time.perf_counter()
    result = run.task.evaluate(run.model, "test")
    out["test"] = {"bleu": round(result["bleu"], 2), "chrf": round(result["chrf"], 2),
                   "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--minutes", type=float, required=True, help="fine-tuning time budget")
    parser.add_argument("--work", type=Path, default=None, help="links, the fine-tuned run, results.json")
    parser.add_argument("--layer", type=int, default=-1)
    parser.add_argument("--head", type=int, default=0)
    parser.add_argument("--weight", type=float, default=0.05, help="λ of the alignment loss")
    parser.add_argument("--lr", type=float, default=2e-4, help="fine-tuning learning rate (constant after warm-up)")
    parser.add_argument("--beam", type=int, default=None, help="test BLEU beam (default: the run's decode.beam_size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--control", action="store_true", help="the same fine-tuning without the supervision (what training alone does)"
    )
    parser.add_argument(
        "--hansard-copies", type=int, default=0,
        help="also fine-tune on K copies of the 447 Hansard pairs' text, supervised by eflomal's links (not the gold)",
    )  # fmt: skip
    parser.add_argument("--name", default=None, help="fine-tuned folder and results-NAME.json in --work")
    parser.add_argument(
        "--init-from", type=Path, default=None,
        help="start the fine-tuning from this run's weights (e.g. an earlier fine-tuned one) instead of RUN's",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = args.work or Path(tempfile.mkdtemp(prefix="supervised-align-"))
    work.mkdir(parents=True, exist_ok=True)

    links_file, eflomal_hansard, facts = eflomal_links(args.run, work)
    _, _, gold = hansard_gold()
    results = {"eflomal": scores(eflomal_hansard, gold), **facts}
    results["before"] = measure(args.run, args.layer, args.head, args.beam)
    print(json.dumps(results, indent=1))

    name = args.name or ("finetuned-control" if args.control else "finetuned")
    tuned = work / name
    data_overrides = []
    if args.hansard_copies:
        folder, links_file = with_hansard(args.run, links_file, args.hansard_copies, work)
        data_overrides = [f"data.root={folder.resolve()}", "data.train=train", "data.test=test", "data.val=val"]
    start_from = (args.init_from or args.run).resolve()
    overrides = [
        f"run_dir={tuned}", f"train.init_from={start_from}", f"train.max_minutes={args.minutes}",
        "train.epochs=100", f"train.lr={args.lr}", "train.schedule=constant", "train.warmup_steps=50",
        "train.ema_decay=0.99", f"train.num_threads={args.threads}", "train.progress=false",
        "train.tensorboard=false", f"alignment_supervision.path={links_file}",
        f"alignment_supervision.layer={args.layer}", f"alignment_supervision.head={args.head}",
        f"alignment_supervision.weight={args.weight}", *data_overrides,
    ]  # fmt: skip
    if args.control:
        overrides = [o for o in overrides if not o.startswith("alignment_supervision.")]
    cfg = load_config(args.run / "config.yaml", overrides)
    started = time.perf_counter()
    history = fit(cfg, overwrite=True)
    results["fine_tuning"] = {
        "overrides": overrides,
        "seconds": round(time.perf_counter() - started, 1),
        "epochs": history.history,
        "best_epoch": history.best_epoch,
    }
    results["after"] = measure(tuned, args.layer, args.head, args.beam)
    results["machine"] = f"{platform.processor() or platform.machine()}, {args.threads} thread(s)"
    results["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    written = (
        work / f"results-{name}.json"
        if args.name
        else work / ("results-control.json" if args.control else "results.json")
    )
    written.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: results[k] for k in ("eflomal", "before", "after")}, indent=1))
    print(f"written: {written}")


if __name__ == "__main__":
    main()
