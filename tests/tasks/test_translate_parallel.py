"""The translate task on parallel text files: a tiny synthetic corpus written to tmp_path, trained
with the shared trainer through configs/multi30k/transformer.yaml at toy size; scoring with
sacreBLEU, greedy and beam decoding, exact resumption, and `heedful translate` as a subprocess."""

import gzip
import json
import os
import pickle
import random
import subprocess
import sys
import threading
import unicodedata
import unittest.mock
from pathlib import Path

import pytest
import torch

from heedful.data.parallel import read_parallel
from heedful.data.tokenizers import SentencePieceTokenizer
from heedful.decode import beam_search
from heedful.errors import ConfigError, DataError, UserError
from heedful.nn import packed
from heedful.runs import load_config, load_run
from heedful.tasks import get_task
from heedful.train import fit
from heedful.train.checkpoint import list_checkpoints
from tests.conftest import SHARED_DATA, assert_same_latest_checkpoint, crash_translate_loss_at, run_cli

ROOT = Path(__file__).resolve().parents[2]
MULTI30K = SHARED_DATA / "multi30k"

SUBJECTS = [("the dog", "der Hund"), ("the cat", "die Katze"), ("a man", "ein Mann"), ("a woman", "eine Frau"),
            ("the child", "das Kind"), ("an old man", "ein alter Mann")]  # fmt: skip
VERBS = [("runs", "rennt"), ("sleeps", "schläft"), ("eats", "isst"), ("sings", "singt"), ("waits", "wartet")]
PLACES = [("in the park", "im Park"), ("at home", "zu Hause"), ("on the beach", "am Strand"), ("", "")]


def sentence_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        (s_en, s_de), (v_en, v_de), (p_en, p_de) = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(PLACES)
        en = " ".join(w for w in (s_en, v_en, p_en) if w)
        de = " ".join(w for w in (s_de, v_de, p_de) if w)
        out.append((en[0].upper() + en[1:] + ".", de[0].upper() + de[1:] + "."))
    return out


def write_corpus(root: Path) -> Path:
    """train as gzip, val and test plain: the reader must take both."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed, gz in (("train", 160, 0, True), ("val", 12, 1, False), ("test", 12, 2, False)):
        pairs = sentence_pairs(n, seed)
        for lang, side in (("en", 0), ("de", 1)):
            data = "".join(p[side] + "\n" for p in pairs).encode()
            name = f"{split}.{lang}" + (".gz" if gz else "")
            (root / name).write_bytes(gzip.compress(data) if gz else data)
    return root


TINY = {
    "data.test": "test",
    "data.tokenizer.vocab_size": 320,
    "data.batch_tokens": 200,
    "data.max_tokens": 64,
    "model.d_model": 32,
    "model.n_heads": 2,
    "model.n_encoder_layers": 1,
    "model.n_decoder_layers": 1,
    "model.d_ff": 64,
    "model.max_len": 64,
    "decode.beam_size": 3,
    "decode.max_len": 24,
    "decode.batch_tokens": 400,
    "train.epochs": 1,
    "train.lr": 3e-3,
    "train.warmup_steps": 2,
    "train.max_minutes": None,
    "train.progress": False,
    "train.tensorboard": False,
    "train.num_threads": 1,
    "device": "cpu",
}


def config(corpus: Path, run_dir: Path, **extra):
    values = {**TINY, "data.root": str(corpus), "run_dir": str(run_dir), **extra}
    overrides = [f"{k}={'null' if v is None else v}" for k, v in values.items()]
    return load_config(ROOT / "configs" / "multi30k" / "transformer.yaml", overrides)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    history = fit(config(corpus, run_dir, **{"train.epochs": 2}))
    return run_dir, history


@pytest.mark.slow
def test_training_evaluates_with_bleu_and_chrf_and_writes_hypotheses(trained):
    run_dir, history = trained
    assert history["epoch"] == [1, 2] and history.best_epoch in (1, 2)
    for key in ("val_loss", "val_accuracy", "val_bleu", "val_chrf"):
        assert all(v == v for v in history[key]), key  # present, not NaN
    assert history["train_loss"][1] < history["train_loss"][0]
    model_dir = run_dir / "model"
    assert json.loads((model_dir / "tokenizers.json").read_text())["source"] == {
        "kind": "sentencepiece",
        "file": "spm.model",
    }

    run = load_run(run_dir, device="cpu")
    metrics = run.evaluate("test")
    assert set(metrics) == {"loss", "accuracy", "bleu", "chrf"}
    assert 0 <= metrics["bleu"] <= 100 and 0 <= metrics["chrf"] <= 100
    hyps = (run_dir / "hyps-test.txt").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 12
    record = json.loads((run_dir / "eval-test.json").read_text())
    assert record["bleu"] == metrics["bleu"]
    assert record["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|")
    assert record["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|")


@pytest.mark.slow
def test_a_trained_run_scores_without_its_training_file(trained, corpus, tmp_path):
    """evaluate read (and parsed) the whole training corpus, and failed where it was not kept."""
    import shutil

    run_dir = shutil.copytree(trained[0], tmp_path / "run")
    held_out = shutil.copytree(corpus, tmp_path / "corpus")
    expected = load_run(run_dir, "cpu", [f"data.root={corpus}"]).evaluate("test")
    for path in held_out.glob("train.*"):
        path.unlink()
    run = load_run(run_dir, "cpu", [f"data.root={held_out}"])
    assert dict(run.evaluate("test")) == dict(expected)
    with pytest.raises(DataError, match=r"train.en: file not found"):  # training still needs it, when it starts
        run.task.data.train.steps_per_epoch()


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 4])
def test_greedy_and_beam_decode_every_line_in_input_order(trained, beam):
    run = load_run(trained[0], device="cpu")
    lines = ["The dog sleeps at home.", "", "A woman sings on the beach.", "Ünsëen 🚲 text.", "A cat."]
    alone = [run.translate([line], beam=beam)[0] for line in lines]
    together = run.translate(lines, beam=beam, batch_tokens=1)  # sorted into one-sentence batches
    assert [t.input for t in together] == lines
    assert [(t.output, t.score) for t in together] == [(t.output, t.score) for t in alone]
    assert all(isinstance(t.output, str) and "\n" not in t.output for t in together)
    assert together[1].output == "" and together[1].output_ids == []
    shared = run.translate(lines, beam=beam)  # all in one padded batch
    assert [t.input for t in shared] == lines and shared[1].output == ""


@pytest.mark.slow
def test_translations_alone_are_scored_by_sacrebleu_against_the_split(trained):
    """``score_predictions`` (what an export is scored with): the references themselves score
    BLEU 100; shifted by one sentence, exactly what sacreBLEU gives those pairs; the run's own
    outputs, what ``evaluate`` reports beside its loss; a wrong count is one line."""
    import sacrebleu

    from heedful.tasks.translate import Translation

    run = load_run(trained[0], device="cpu")
    result = run.evaluate("test")
    task, sources = run.task, run.task.split_inputs("test")
    targets = [e.target for e in task.data.splits["test"]]
    assert len(sources) == len(targets) == 12 and len(set(targets)) == 12

    def as_translations(outputs):
        return [Translation(s, o, 0.0, []) for s, o in zip(sources, outputs, strict=True)]

    assert task.score_predictions("test", as_translations(targets))["bleu"] == pytest.approx(100.0)
    shifted = task.score_predictions("test", as_translations(targets[1:] + targets[:1]))
    assert shifted["bleu"] == pytest.approx(sacrebleu.corpus_bleu(targets[1:] + targets[:1], [targets]).score)
    assert shifted["bleu"] < 50 and shifted.outputs == targets[1:] + targets[:1]
    own = task.score_predictions("test", run.predict(sources))
    assert dict(own) == {"bleu": result["bleu"], "chrf": result["chrf"]} and own.notes == result.notes
    with pytest.raises(UserError, match="11 translations for the 12 sentences of 'test'"):
        task.score_predictions("test", as_translations(targets)[:11])


@pytest.mark.slow
def test_predict_uses_the_configured_beam(trained):
    run = load_run(trained[0], device="cpu")
    lines = [en for en, _ in sentence_pairs(6, 5)]
    assert run.cfg.decode.beam_size == 3
    assert [p.output for p in run.predict(lines)] == [t.output for t in run.translate(lines, beam=3)]


@pytest.mark.slow
def test_attention_over_subword_pieces(trained):
    run = load_run(trained[0], device="cpu")
    (t,) = run.translate(["A man eats in the park."], attention=True)
    assert t.source_pieces[0].startswith("▁") and t.output_pieces[-1] == "<eos>"
    assert t.attention.shape == (len(t.output_pieces), len(t.source_pieces))
    torch.testing.assert_close(t.attention.sum(-1), torch.ones(len(t.output_pieces)))
    (explanation,) = run.explain(["A man eats in the park."])
    assert explanation.key_tokens == t.source_pieces and explanation.query_tokens == t.output_pieces
    torch.testing.assert_close(explanation.summary, t.attention)
    (figure,) = run.show_attention(["A man eats in the park."])
    assert figure.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_resumed_run_continues_bit_identically(corpus, tmp_path, monkeypatch):
    extra = {"train.epochs": 2, "train.checkpoint_every": 3, "train.keep_checkpoints": 5, "decode.beam_size": 1}
    straight = fit(config(corpus, tmp_path / "straight", **extra))
    steps = straight["step"][0]
    assert steps >= 5  # the crash below lands mid-epoch, after a mid-epoch checkpoint

    crash_translate_loss_at(monkeypatch, 5)
    cfg = config(corpus, tmp_path / "resumed", **extra)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    assert list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1].name == "step-3"
    monkeypatch.undo()  # the loss works again
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("resuming must not unpickle"))
    history = fit(cfg, resume=True)

    assert_same_latest_checkpoint(tmp_path / "straight", tmp_path / "resumed")
    assert history["step"] == straight["step"] and history["train_loss"][1] == straight["train_loss"][1]


@pytest.mark.slow
def test_translate_command_streams_stdin_to_stdout_in_order(trained, tmp_path):
    run_dir = trained[0]
    lines = [en for en, _ in sentence_pairs(7, 9)]
    lines[3] = ""
    maps = tmp_path / "attention.jsonl"
    result = run_cli("translate", str(run_dir), "--beam", "2", "--attention", str(maps), stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.splitlines()
    expected = [t.output for t in load_run(run_dir, device="cpu").translate(lines, beam=2)]
    assert outputs == expected and outputs[3] == ""
    records = [json.loads(line) for line in maps.read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in records] == lines
    r = records[0]
    assert len(r["attention"]) == len(r["output_pieces"]) and len(r["attention"][0]) == len(r["source_pieces"])
    assert result.stderr.strip() == ""  # no progress bar unless asked for


@pytest.mark.slow
def test_translate_command_takes_config_overrides(trained):
    run_dir = trained[0]
    lines = [en for en, _ in sentence_pairs(4, 11)]
    result = run_cli("translate", str(run_dir), "--set", "decode.max_len=1", stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    run = load_run(run_dir, device="cpu", overrides=["decode.max_len=1"])
    short = run.translate(lines)
    assert result.stdout.splitlines() == [t.output for t in short]
    assert all(len(t.output.split()) <= 1 for t in short)  # one piece: at most one word
    assert [t.output for t in short] != [t.output for t in load_run(run_dir, device="cpu").translate(lines)]
    refused = run_cli("translate", str(run_dir), "--set", "decode.nonsense=1", stdin="a\n")
    assert refused.returncode != 0 and "decode.nonsense" in refused.stderr


@pytest.mark.slow
def test_n_best_translations_come_from_the_beam_best_first(trained):
    run_dir = trained[0]
    run = load_run(run_dir, device="cpu")
    lines = [en for en, _ in sentence_pairs(3, 12)]
    lines[1] = " "
    ranked = run.translate(lines, beam=3, n_best=3)
    single = run.translate(lines, beam=3)
    for r, s in zip(ranked, single, strict=True):
        assert (r.output, r.score) == (s.output, s.score) and r.alternatives[0] == (s.output, s.score)
    assert ranked[1].alternatives == [("", None)]  # a blank line: one empty output, not decoded: no score
    assert all(len(r.alternatives) == 3 for i, r in enumerate(ranked) if i != 1)
    # The same as the beam search's own n-best list.
    task, src = run.task, [run.task._source_ids(lines[0], run.model)]
    (hyps,) = beam_search(run.model, torch.tensor(src), bos_id=task.tgt_tok.bos_id, eos_id=task.tgt_tok.eos_id,
                          beam_size=3, max_len=task._output_limit(len(src[0]), run.model.config.max_len),
                          alpha=run.cfg.decode.alpha, n_best=3)  # fmt: skip
    assert [score for _, score in ranked[0].alternatives] == pytest.approx([h.log_prob for h in hyps])

    result = run_cli("translate", str(run_dir), "--beam", "2", "--n-best", "2", stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 1, 2, 2]
    expected = run.translate(lines, beam=2, n_best=2)
    assert [r[1] for r in rows if r[0] == "0"] == [text for text, _ in expected[0].alternatives]
    refused = run_cli("translate", str(run_dir), "--beam", "2", "--n-best", "3", stdin="a\n")
    assert refused.returncode != 0 and "--n-best 3" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_translate_command_answers_each_line_as_it_arrives(trained):
    """A caller that writes one line and waits for its translation is not left waiting for EOF."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "heedful.cli", "translate", str(trained[0]), "--beam", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    watchdog = threading.Timer(120, process.kill)  # a non-streaming command would block forever
    watchdog.start()
    try:
        answers = []
        for line in ("The dog runs.", "A woman waits at home."):
            process.stdin.write(f"{line}\n".encode())
            process.stdin.flush()
            answers.append(process.stdout.readline().decode())
        process.stdin.close()
        assert process.wait() == 0, process.stderr.read().decode()
    finally:
        watchdog.cancel()
        process.kill()
    assert all(a.endswith("\n") for a in answers)


@pytest.mark.slow
def test_translate_command_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("translate", str(tmp_path / "empty"), stdin="")
    assert result.stderr.strip() == f"heedful: error: {tmp_path / 'empty'}: not a run directory (no config.yaml) — " \
        "train one with `heedful train`"  # fmt: skip
    result = run_cli("translate", str(tmp_path / "nothing"), stdin="")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"heedful: error: {tmp_path / 'nothing'}: not a run directory "
                                                  "(no such folder) — train one with `heedful train`"]  # fmt: skip


# ------------------------------------------------------------------------------- configuration
def test_parallel_config_mistakes_are_one_line_errors(corpus, tmp_path):
    def build(**extra):
        cfg = config(corpus, tmp_path / "run", **extra)
        task = get_task("translate")(cfg)
        data = task.build_data(cfg)
        task.build_model(cfg, data)
        data.train.steps_per_epoch()  # the training set is encoded when the trainer first asks

    with pytest.raises(ConfigError, match=r"'data\.val': required"):
        build(**{"data.val": None})
    with pytest.raises(DataError, match=r"nope\.en: file not found \(nor nope\.en\.gz\)"):
        build(**{"data.train": "nope"})
    with pytest.raises(ConfigError, match=r"'data\.train': format 'tsv' reads one file"):
        build(**{"data.format": "tsv", "data.train": "{src: a, tgt: b}"})
    with pytest.raises(ConfigError, match=r"'model\.share_embeddings'.*data\.tokenizer\.joint"):
        build(**{"data.tokenizer.joint": False})
    with pytest.raises(ConfigError, match=r"'data\.batch_tokens': 8 is less than the longest"):
        build(**{"data.batch_tokens": 8})


def test_tsv_and_jsonl_files_and_a_char_tokenizer(tmp_path, capsys):
    pairs = sentence_pairs(40, 3)
    (tmp_path / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs) + "broken line\n")
    (tmp_path / "val.jsonl").write_text("".join(json.dumps({"en": s, "x": {"de": t}}) + "\n" for s, t in pairs[:5]))
    common = [f"data.root={tmp_path}", "data.test=null", "model.max_len=64", "data.tokenizer.kind=char"]
    tsv = load_config(
        ROOT / "configs" / "multi30k" / "transformer.yaml",
        [*common, "data.format=tsv", "data.train=train.tsv", "data.val=train.tsv", "data.on_bad_line=skip"],
    )
    task = get_task("translate")(tsv)
    data = task.build_data(tsv)
    assert data.train.steps_per_epoch() >= 1 and len(data.splits["val"]) == 40
    assert "train.tsv: skipped 1 of 41 lines (line 41)" in capsys.readouterr().err
    assert task.src_tok is task.tgt_tok and task.src_tok.kind == "char"

    jsonl = load_config(
        ROOT / "configs" / "multi30k" / "transformer.yaml",
        [*common, "data.format=jsonl", "data.train=val.jsonl", "data.val=val.jsonl", "data.fields=[en, x.de]"],
    )
    task = get_task("translate")(jsonl)
    data = task.build_data(jsonl)
    assert [(p.source, p.target) for p in data.splits["val"]] == pairs[:5]


@pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"Multi30k not found at {MULTI30K} (see ../shared/data/README.md)")
def test_multi30k_val_reads_and_tokenizes():
    cfg = load_config(ROOT / "configs" / "multi30k" / "transformer.yaml", [f"data.root={MULTI30K}"])
    task = get_task("translate")(cfg)
    pairs = read_parallel(task.split_files("val"))
    assert len(pairs) == 1014 and pairs[0].line == 1
    assert all(p.source and p.target for p in pairs)
    tok = SentencePieceTokenizer.train([p.source for p in pairs] + [p.target for p in pairs], vocab_size=2000)
    for p in pairs:  # detokenization gives the text back, up to NFKC (one line has a no-break space)
        assert tok.decode(tok.encode(p.target)) == " ".join(unicodedata.normalize("NFKC", p.target).split())
    lengths = [len(tok.encode(p.source)) for p in pairs]
    assert 5 < sum(lengths) / len(lengths) < 40


RNN_TINY = {k: v for k, v in TINY.items() if not k.startswith("model.") or k in ("model.max_len",)} | {
    "model.embed_dim": 16,
    "model.hidden_size": 32,
    "train.epochs": 2,
}


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["bahdanau", "none"])
def test_rnn_baselines_train_decode_and_show_attention_through_the_same_task(corpus, tmp_path, monkeypatch, attention):
    values = {**RNN_TINY, "data.root": str(corpus), "run_dir": str(tmp_path / "run"), "model.attention": attention}
    overrides = [f"{k}={'null' if v is None else v}" for k, v in values.items()]
    cfg = load_config(ROOT / "configs" / "multi30k" / "rnn_bahdanau.yaml", overrides)
    assert cfg.model.arch == "rnn" and cfg.model.attention == attention
    beams = []
    task_class = get_task("translate")
    generate = task_class._generate
    monkeypatch.setattr(
        task_class,
        "_generate",
        lambda self, m, s, b=None, *more, **kw: beams.append(b) or generate(self, m, s, b, *more, **kw),
    )
    history = fit(cfg)
    assert beams == [1, 1]  # the per-epoch validation decodes greedily (decode.val_beam_size)
    assert history["train_loss"][1] < history["train_loss"][0]

    run = load_run(tmp_path / "run", device="cpu")
    assert type(run.model).__name__ == "RNNEncoderDecoder"
    assert set(run.evaluate("test")) == {"loss", "accuracy", "bleu", "chrf"}
    assert beams[-1] is None  # evaluation uses decode.beam_size
    lines = ["The dog sleeps at home.", "A woman sings."]
    assert [t.output for t in run.translate(lines, beam=3, batch_tokens=1)] == [
        t.output for t in run.translate(lines, beam=3)
    ]
    if attention == "none":
        with pytest.raises(UserError, match="has no attention to show"):
            run.translate(lines, attention=True)
        return
    (t,) = run.translate(["A man eats in the park."], attention=True)
    # One map per decoding step, stacked: a row per output piece (and <eos>), a column per source piece.
    assert t.attention.shape == (len(t.output_pieces), len(t.source_pieces))
    torch.testing.assert_close(t.attention.sum(-1), torch.ones(len(t.output_pieces)))


def test_a_model_config_for_the_wrong_architecture_is_refused(corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key .model\.d_model."):
        config(corpus, tmp_path / "run", **{"model.arch": "rnn"})


@pytest.mark.slow
def test_bf16_decoding_gives_the_same_kind_of_output(trained):
    run = load_run(trained[0], device="cpu", overrides=["decode.precision=bf16"])
    lines = ["The dog sleeps at home.", "A woman sings on the beach."]
    # The decoder's output (B, T, V) logits are bf16 only when decoding runs under bf16 autocast.
    seen: set[torch.dtype] = set()
    hook = run.model.decoder.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    outputs = [t.output for t in run.translate(lines, beam=3)]
    hook.remove()
    assert seen == {torch.bfloat16}
    assert all(isinstance(o, str) and o for o in outputs)
    # A toy model trained to near certainty decodes the same in 16 bits as in 32.
    assert outputs == [t.output for t in load_run(trained[0], device="cpu").translate(lines, beam=3)]


@pytest.mark.slow
@pytest.mark.skipif(not packed.available(), reason="torch without oneDNN, or not an x86-64 CPU")
@pytest.mark.parametrize("beam", [1, 3])
def test_decode_prepacked_chooses_the_linear_kernels(trained, beam):
    lines = [en for en, _ in sentence_pairs(9, 7)]
    plain = load_run(trained[0], device="cpu", overrides=["decode.prepacked=false"])
    run = load_run(trained[0], device="cpu")
    with (
        unittest.mock.patch.object(packed, "PACKED_MIN_MACS", 0),  # the toy model's layers are small
        unittest.mock.patch.object(packed, "_pack", wraps=packed._pack) as packing,
        unittest.mock.patch.object(packed, "_fingerprint", wraps=packed._fingerprint) as checking,
    ):
        plain_outputs = [t.output for t in plain.translate(lines, beam=beam)]
        assert not packing.called  # every Linear on F.linear
        outputs = [t.output for t in run.translate(lines, beam=beam, batch_tokens=40)]  # several batches
    packed_weights = [id(call.args[0]) for call in packing.call_args_list]
    assert id(run.model.decoder.output.weight) in packed_weights  # the default: prepacked
    assert len(packed_weights) == len(set(packed_weights))  # each layer packed once for all the batches
    checked_weights = [id(call.args[0]) for call in checking.call_args_list]
    assert sorted(checked_weights) == sorted(packed_weights)  # and checked once: one block around the batches
    assert outputs == plain_outputs


@pytest.mark.slow
@pytest.mark.parametrize(("beam", "workers"), [(1, 1), (3, 2)])
def test_evaluate_counts_decoded_sentences_and_validation_does_not(trained, beam, workers, tmp_path, capsys):
    """evaluate decoded test2016 for 14 s without a word: a bar now counts sentences (from the workers too)."""
    import shutil

    from heedful.decode.batching import decode_in_batches

    run_dir = shutil.copytree(trained[0], tmp_path / "run")
    overrides = [f"decode.beam_size={beam}", f"decode.workers={workers}", "decode.batch_tokens=40"]
    run = load_run(run_dir, "cpu", [*overrides, "train.progress=true"])
    with unittest.mock.patch("heedful.tasks.translate.decode_in_batches", wraps=decode_in_batches) as decoding:
        run.evaluate("test")
    bar = decoding.call_args.kwargs["progress"].__self__  # the tqdm whose update the batches call
    assert bar.total == 12 and bar.n == 12  # every test sentence counted, once
    assert "decoding test" in capsys.readouterr().err
    with unittest.mock.patch("heedful.tasks.translate.decode_in_batches", wraps=decode_in_batches) as decoding:
        run.task.validate(run.model)
    assert "decoding" not in capsys.readouterr().err  # training's validation keeps its own bar quiet
    assert decoding.call_args.kwargs["progress"] is None  # and builds none (serve decodes many small batches)


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 3])
def test_decoding_workers_give_the_same_outputs_from_several_threads(trained, beam):
    lines = [en for en, _ in sentence_pairs(9, 7)] + ["", "A cat."]
    one = load_run(trained[0], device="cpu").translate(lines, beam=beam, batch_tokens=1)
    run = load_run(trained[0], device="cpu", overrides=["decode.workers=3"])
    threads_seen: set[str] = set()
    hook = run.model.decoder.register_forward_hook(lambda *_: threads_seen.add(threading.current_thread().name))
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        several = run.translate(lines, beam=beam, batch_tokens=1)  # one sentence a batch: 10 batches
        assert torch.get_num_threads() == 2  # set to 1 per worker meanwhile, then restored
    finally:
        torch.set_num_threads(torch_threads)
        hook.remove()
    assert [(t.input, t.output, t.score) for t in several] == [(t.input, t.output, t.score) for t in one]
    assert len(threads_seen) > 1 and all(name.startswith("heedful-decode") for name in threads_seen)


@pytest.mark.slow
def test_decoding_workers_decode_under_the_callers_bf16_autocast(trained):
    run = load_run(trained[0], device="cpu", overrides=["decode.precision=bf16", "decode.workers=2"])
    seen: set[tuple[str, torch.dtype]] = set()
    hook = run.model.decoder.register_forward_hook(
        lambda _m, _i, out: seen.add((threading.current_thread().name[:14], out.dtype))
    )
    run.translate(["The dog sleeps at home.", "A woman sings on the beach.", "A cat."], beam=3, batch_tokens=1)
    hook.remove()
    assert seen == {("heedful-decode", torch.bfloat16)}  # autocast is per thread: entered again in each worker
