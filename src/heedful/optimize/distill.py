"""Sequence-level knowledge distillation (Kim & Rush 2016): the teacher translates its own training
sources with beam search, and a smaller student is trained on those translations instead of the
references — the teacher's mode is an easier target than the data's spread of translations.

    heedful optimize runs/mt-de --method distill --out runs/mt-de-student \\
        --student-set model.d_model=192 --student-set model.d_ff=768 --beam 5

What the student directory holds, besides a normal training's files (config.yaml, model/,
checkpoints/, history.json):

* ``distilled/`` — the teacher's outputs as a parallel corpus in the teacher's data.format
  (``train.<src>`` + ``train.<tgt>`` for text): one pair per training pair the teacher trained on
  (after its length filters), in corpus order, source unchanged, target = the teacher's best beam
  hypothesis. Pairs whose translation came out empty are left out (counted in the record).
* ``config.yaml`` — the teacher's config with the ``--student-set`` overrides, ``data.train``
  pointing (absolute path) at ``distilled/train``, val and test still the original files, and
  ``data.tokenizer.from_run`` = the teacher: the student shares the teacher's vocabulary (so their
  sizes compare and ensembles stay possible), also when its training is resumed.
* ``optimize.json`` — teacher, beam, pairs distilled and left out, parameters before/after.

Everything is written into a temporary sibling folder and renamed at the end: an interrupted or
failed distillation leaves no ``--out`` folder behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from heedful.config import RunConfig, apply_overrides, to_yaml, validate
from heedful.optimize.common import RECORD_NAME, OptimizeError, check_out_dir, count_parameters, option, staged

if TYPE_CHECKING:
    from heedful.data.parallel import Pair
    from heedful.runs import Run

CHUNK_PAIRS = 2048  # sources translated together: room for full token batches of similar length
CORPUS = "distilled"


def student_config(teacher: Run, student_set: list[str], run_dir: Path, corpus: Path) -> RunConfig:
    """The teacher's config, named NAME-student, with ``student_set`` applied (validated by the config itself), trained
    on the distilled ``corpus`` (prefix, absolute) with the teacher's tokenizers, into ``run_dir``."""
    teacher_data = teacher.cfg.model_dump(mode="json")
    teacher_data["name"] = (
        f"{teacher.cfg.name}-student"  # its own name (served beside the teacher); --student-set may give one
    )
    data = apply_overrides(teacher_data, list(student_set))
    data["run_dir"] = str(run_dir)
    data["data"]["train"] = str(corpus.resolve())
    data["data"]["tokenizer"]["from_run"] = str(teacher.run_dir.resolve())
    return validate(type(teacher.cfg), data, "--student-set")


def check_teacher(teacher: Run) -> None:
    if teacher.cfg.task != "translate":
        raise OptimizeError(f"{teacher.run_dir}: a {teacher.cfg.task} run; distill needs a translate run")
    if teacher.cfg.data.source != "parallel":
        raise OptimizeError(
            f"{teacher.run_dir}: trained on data.source {teacher.cfg.data.source!r}, generated afresh each "
            "epoch; distill needs a run trained on a corpus (data.source: parallel)"
        )


def corpus_files(cfg: RunConfig, prefix: Path) -> tuple[Path, ...]:
    """Where the distilled corpus goes, in the teacher's data.format."""
    d = cfg.data
    if d.format == "text":
        return (prefix.with_name(f"{prefix.name}.{d.source_lang}"), prefix.with_name(f"{prefix.name}.{d.target_lang}"))
    return (prefix.with_name(f"{prefix.name}.{d.format}"),)


def write_pairs(cfg: RunConfig, handles: tuple[Any, ...], pairs: list[tuple[str, str]]) -> None:
    d = cfg.data
    if d.format == "text":
        handles[0].write("".join(f"{s}\n" for s, _ in pairs))
        handles[1].write("".join(f"{t}\n" for _, t in pairs))
    elif d.format == "tsv":  # a tab would start a third column
        handles[0].write("".join(f"{s.replace(chr(9), ' ')}\t{t.replace(chr(9), ' ')}\n" for s, t in pairs))
    else:
        fields = d.fields or (d.source_lang, d.target_lang)
        for s, t in pairs:
            record: dict[str, Any] = {}
            for name, value in zip(fields, (s, t), strict=True):  # a dotted field reaches into an object
                *outer, last = name.split(".")
                node = record
                for part in outer:
                    node = node.setdefault(part, {})
                node[last] = value
            handles[0].write(json.dumps(record, ensure_ascii=False) + "\n")


def distill_corpus(teacher: Run, pairs: list[Pair], prefix: Path, beam: int, progress: bool = True) -> dict[str, int]:
    """Translate the sources of ``pairs`` with the teacher (``beam``; 1 = greedy) in chunks and
    write (source, translation) to the corpus at ``prefix`` chunk by chunk, in order; a pair whose
    translation is empty is left out. Returns the counts."""
    files = corpus_files(teacher.cfg, prefix)
    written = empty = 0
    with contextlib.ExitStack() as stack:
        handles = tuple(stack.enter_context(open(f, "w", encoding="utf-8")) for f in files)
        bar = stack.enter_context(
            tqdm(
                total=len(pairs),
                unit=" sentences",
                desc=f"teacher beam {beam}",
                disable=not progress,
                dynamic_ncols=True,
            )
        )
        for start in range(0, len(pairs), CHUNK_PAIRS):
            sources = [p.source for p in pairs[start : start + CHUNK_PAIRS]]
            outputs = [t.output for t in teacher.translate(sources, beam=beam)]
            kept = [(s, o) for s, o in zip(sources, outputs, strict=True) if o.strip()]
            write_pairs(teacher.cfg, handles, kept)
            for handle in handles:
                handle.flush()
            written, empty = written + len(kept), empty + len(sources) - len(kept)
            bar.update(len(sources))
    return {"pairs": written, "empty_left_out": empty}


def distill(
    teacher: Run, out: str | Path, *, beam: int | None = None, student_set: list[str] | None = None,
    overwrite: bool = False,
) -> Path:  # fmt: skip
    """Distil ``teacher`` into a student run directory ``out`` (new or empty): decode the teacher's
    training sources with beam ``beam`` (default: the teacher's decode.beam_size), train the
    student (the teacher's config + ``student_set`` overrides) on the outputs, and record it."""
    from heedful.tasks.registry import get_task
    from heedful.train.trainer import Trainer

    check_teacher(teacher)
    out = check_out_dir(Path(out), teacher.run_dir, overwrite)  # before any work: a bad --out costs nothing
    beam = teacher.cfg.decode.beam_size if beam is None else beam
    if beam < 1:
        raise OptimizeError(f"{option('beam', beam)}: at least 1 (1 = greedy)")
    final_corpus = out / CORPUS / "train"
    cfg = student_config(teacher, list(student_set or []), out, final_corpus)  # bad --student-set: refused here
    pairs = teacher.task.training_pairs()  # what the teacher trained on, in corpus order

    # The trainer claims an empty folder, so the corpus is written beside the run being trained
    # and moved into it once the training is done; both are removed if anything fails.
    corpus_tmp = out.with_name(f".{out.name}.{CORPUS}.tmp")
    with staged(out) as tmp:
        try:
            shutil.rmtree(corpus_tmp, ignore_errors=True)
            corpus_tmp.mkdir(parents=True)
            started = time.perf_counter()
            counts = distill_corpus(teacher, pairs, corpus_tmp / "train", beam, progress=teacher.cfg.train.progress)
            decode_seconds = time.perf_counter() - started
            if not counts["pairs"]:
                raise OptimizeError(
                    f"{teacher.run_dir}: the teacher translated all {len(pairs)} training sources as empty "
                    "lines; nothing to train a student on"
                )
            training_cfg = student_config(teacher, list(student_set or []), tmp, corpus_tmp / "train")
            task = get_task(training_cfg.task)(training_cfg)
            trainer = Trainer(task, training_cfg, tmp)
            trainer.fit()
            corpus_tmp.rename(tmp / CORPUS)
        finally:
            shutil.rmtree(corpus_tmp, ignore_errors=True)
        (tmp / "config.yaml").write_text(to_yaml(cfg))  # the paths the student has once renamed
        record = {
            "source": str(teacher.run_dir),
            "method": "distill",
            "beam": beam,
            "teacher_training_pairs": len(pairs),
            **counts,
            "decode_seconds": round(decode_seconds, 1),
            "student_set": list(student_set or []),
            "parameters": {"before": count_parameters(teacher.model), "after": count_parameters(trainer.model)},
        }
        record["parameters"]["ratio"] = round(record["parameters"]["after"] / record["parameters"]["before"], 4)
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return out
