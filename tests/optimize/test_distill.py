"""heedful optimize --method distill (sequence-level distillation): the distilled corpus is the
teacher's own translation of the training pairs it trained on, the student is a run directory that
loads, evaluates and shares the teacher's vocabulary, its record is right, and bad input or an
interruption leaves nothing behind.

The teacher is a toy Transformer trained for twenty seconds on a synthetic parallel corpus (the one
tests/tasks/test_translate_parallel.py writes): its translations are often wrong, which does not
matter — every check compares the student's files with what the teacher itself gives.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from heedful.data.parallel import read_parallel
from heedful.errors import UserError
from heedful.optimize import count_parameters, optimize
from heedful.runs import load_run
from heedful.train import fit
from heedful.train.trainer import Trainer
from tests.conftest import crash_translate_loss_at, run_cli
from tests.tasks.test_translate_parallel import config, write_corpus

# A teacher trained, then a student distilled from it: seconds, not the fast subset.
pytestmark = pytest.mark.slow

STUDENT_SET = ["model.d_ff=32", "model.n_heads=1", "train.epochs=1"]  # fewer parameters than the teacher


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    run_dir = tmp_path_factory.mktemp("runs") / "teacher"
    # data.max_tokens 21 leaves out the longest tenth of the pairs ("An old man sleeps on the
    # beach." and the like): the corpus must hold only those the teacher trained on.
    # Twelve short epochs at a high rate: enough for sentences ("Der Hund singt.") in 20 s.
    fast = {"train.epochs": 12, "train.lr": 1e-2, "train.warmup_steps": 10, "data.batch_tokens": 120}
    fit(config(corpus, run_dir, **fast, **{"data.max_tokens": 21, "decode.val_beam_size": 1}))
    return run_dir


@pytest.fixture(scope="module")
def student_dir(teacher_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("students") / "student"
    return optimize(load_run(teacher_dir, "cpu"), "distill", out, beam=2, student_set=STUDENT_SET)


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_the_training_pairs_are_those_the_trainer_batches(teacher_dir):
    teacher = load_run(teacher_dir, "cpu")
    task = teacher.task
    everything = read_parallel(task.split_files("train"))
    kept = task.training_pairs()
    assert 0 < len(kept) < len(everything)  # the length filter left some out
    batches = task._train_batches(everything)  # what a training on the same files batches
    assert len(kept) == sum(len(b["src"]) for b in batches.batches(0))
    longest = max(max(len(task.src_tok.encode(p.source)), len(task.tgt_tok.encode(p.target))) for p in kept)
    assert longest <= 21
    assert [p.line for p in kept] == sorted(p.line for p in kept)  # corpus order


def test_the_distilled_corpus_is_the_teachers_translation_of_its_training_sources(teacher_dir, student_dir):
    teacher = load_run(teacher_dir, "cpu")
    sources = [p.source for p in teacher.task.training_pairs()]
    # The known answer: `heedful translate TEACHER --beam 2` on those sources, line for line.
    translated = run_cli("translate", str(teacher_dir), "--beam", "2", stdin="".join(s + "\n" for s in sources))
    assert translated.returncode == 0, translated.stderr
    expected = [(s, t) for s, t in zip(sources, translated.stdout.splitlines(), strict=True) if t.strip()]
    distilled = list(zip(read_lines(student_dir / "distilled" / "train.en"),
                         read_lines(student_dir / "distilled" / "train.de"), strict=True))  # fmt: skip
    assert distilled == expected
    record = json.loads((student_dir / "optimize.json").read_text())
    assert record["teacher_training_pairs"] == len(sources)
    assert record["pairs"] == len(expected) and record["empty_left_out"] == len(sources) - len(expected)


def test_the_student_is_a_run_with_the_teachers_vocabulary_and_a_record(teacher_dir, student_dir):
    teacher, student = load_run(teacher_dir, "cpu"), load_run(student_dir, "cpu")
    for name in ("spm.model", "tokenizers.json"):  # the teacher's tokenizer, not one trained on the outputs
        assert (student_dir / "model" / name).read_bytes() == (teacher_dir / "model" / name).read_bytes(), name
    assert student.cfg.data.tokenizer.from_run == teacher_dir.resolve()
    assert student.cfg.data.train == str((student_dir / "distilled" / "train").resolve())
    assert student.cfg.data.test == teacher.cfg.data.test and student.cfg.data.root == teacher.cfg.data.root
    assert student.cfg.run_dir == student_dir and student.cfg.model.d_ff == 32
    result = student.evaluate("test")
    assert {"bleu", "chrf"} <= set(result.metrics) and (student_dir / "hyps-test.txt").is_file()
    assert len(student.translate(["The dog runs."], beam=2)) == 1
    record = json.loads((student_dir / "optimize.json").read_text())
    before, after = count_parameters(teacher.model), count_parameters(student.model)
    assert after < before
    assert record["parameters"] == {"before": before, "after": after, "ratio": round(after / before, 4)}
    assert record["method"] == "distill" and record["beam"] == 2 and record["source"] == str(teacher_dir)
    assert record["student_set"] == STUDENT_SET
    assert student.cfg.name == f"{teacher.cfg.name}-student"  # a name of its own, to be served beside the teacher
    assert not [p for p in student_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_bad_input_is_one_line_and_writes_nothing(teacher_dir, run_dir, tmp_path):
    teacher = load_run(teacher_dir, "cpu")
    out = tmp_path / "out"
    classifier = SimpleNamespace(cfg=SimpleNamespace(task="classify"), run_dir=tmp_path / "reviews")
    cases = [
        (classifier, {}, "a classify run; distill needs a translate run"),
        (load_run(run_dir, "cpu"), {}, "trained on data.source 'dates'"),
        (teacher, {"student_set": ["model.d_modle=64"]}, "unknown config key 'model.d_modle' (did you mean"),
        (teacher, {"student_set": ["model.d_model=-4"]}, "config key 'model.d_model'"),
        (teacher, {"student_set": ["model.d_model"]}, "expected key=value"),
        (teacher, {"beam": 0}, "beam=0 (--beam): at least 1"),
    ]  # fmt: skip
    for source, options, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            optimize(source, "distill", out, **options)
        assert not out.exists(), options
    with pytest.raises(
        UserError, match=re.escape("method='int8' (--method) does not take beam (--beam) (it takes no options)")
    ):
        optimize(teacher, "int8", out, beam=5)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary folder

    result = run_cli("optimize", str(teacher_dir), "--method", "distill", "--out", str(out),
                     "--student-set", "model.d_modle=64")  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "unknown config key 'model.d_modle'" in result.stderr and not out.exists()


def test_a_teacher_that_says_nothing_is_refused(teacher_dir, tmp_path, monkeypatch):
    teacher = load_run(teacher_dir, "cpu")
    silent = [SimpleNamespace(output="")] * 200
    monkeypatch.setattr(type(teacher.task), "translate", lambda self, model, lines, **_: silent[: len(lines)])
    with pytest.raises(UserError, match="translated all .* training sources as empty lines"):
        optimize(teacher, "distill", tmp_path / "student", student_set=STUDENT_SET)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["decoding", "training"])
def test_an_interrupted_distillation_leaves_nothing(teacher_dir, tmp_path, monkeypatch, where):
    teacher = load_run(teacher_dir, "cpu")
    if where == "decoding":
        calls = {"n": 0}
        translate = type(teacher.task).translate

        def interrupted(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                return translate(self, *args, **kwargs)
            raise KeyboardInterrupt

        # several chunks: the first is on disk when the second is interrupted
        monkeypatch.setattr(sys.modules["heedful.optimize.distill"], "CHUNK_PAIRS", 16)
        monkeypatch.setattr(type(teacher.task), "translate", interrupted)
    else:
        crash_translate_loss_at(monkeypatch, 2)
    out = tmp_path / "student"
    with pytest.raises(KeyboardInterrupt):
        optimize(teacher, "distill", out, beam=1, student_set=STUDENT_SET)
    assert not list(tmp_path.iterdir())


def test_the_trainer_uses_the_tokenizers_of_from_run(teacher_dir, tmp_path):
    teacher = load_run(teacher_dir, "cpu")
    cfg = teacher.cfg.model_copy(deep=True)
    cfg.data.tokenizer.from_run = tmp_path / "nowhere"
    task = type(teacher.task)(cfg)
    with pytest.raises(UserError, match=re.escape("'data.tokenizer.from_run': ") + ".*nowhere has no model/ folder"):
        Trainer(task, cfg, tmp_path / "run").fit()
    assert not (tmp_path / "run").exists()
