"""ONNX export: the exported graphs compute what PyTorch computes (to 1e-4, float32), and our
searches decode with onnxruntime to the same outputs. Skipped where the export extra is absent."""

from __future__ import annotations

import json
import types

import pytest
import torch

from heedful.decode import beam_search
from heedful.errors import UserError
from heedful.models.encoder_classifier import ClassifierConfig, EncoderClassifier
from heedful.runs import load_run

pytest.importorskip("onnx", reason="ONNX export needs the export extra: pip install 'heedful[export]'")
pytest.importorskip("onnxruntime", reason="running an export needs the export extra: pip install 'heedful[export]'")

from heedful.optimize.export import OnnxClassifier, OnnxSeq2Seq, export_onnx

N_INPUTS = 100


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    run = load_run(run_dir, "cpu")
    return run, OnnxSeq2Seq(export_onnx(run, tmp_path_factory.mktemp("onnx") / "dates"))


def test_the_exported_translator_computes_what_pytorch_does(exported):
    run, onnx = exported
    run.task.build_data(run.cfg)
    sources = [e.source for e in run.task.data.splits["test"]][:N_INPUTS]
    sources = (sources * (N_INPUTS // len(sources) + 1))[:N_INPUTS]  # the tiny run holds out 32
    src = run.task.src_tok.batch(sources)  # (100, S)
    model = run.model
    with torch.no_grad():
        memory, padding = model.encode(src)
        o_memory, o_padding = onnx.encode(src)
        assert torch.equal(o_padding, padding)
        cache, o_cache = model.new_cache(), onnx.new_cache()
        tokens = torch.full((N_INPUTS, 1), run.task.tgt_tok.bos_id)
        for _ in range(6):  # steps with a growing cache, fed the model's own greedy choices
            expected = model.decode(tokens, memory, padding, cache)
            got = onnx.decode(tokens, o_memory, o_padding, o_cache)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
            tokens = expected[:, -1].argmax(-1, keepdim=True)
    hyps = beam_search(model, src[:20], bos_id=1, eos_id=2, beam_size=4, max_len=16)
    o_hyps = beam_search(onnx, src[:20], bos_id=1, eos_id=2, beam_size=4, max_len=16)
    assert [h[0].tokens for h in o_hyps] == [h[0].tokens for h in hyps]


def test_a_model_with_pruned_heads_exports_and_computes_what_pytorch_does(run_dir, tmp_path):
    """Its layers' head counts differ: the export traced every layer's cache with layer 0's count."""
    from heedful.models import TransformerEncoderDecoder

    run = load_run(run_dir, "cpu")
    torch.manual_seed(0)  # the tiny run has one decoder layer: a two-layer model of its sizes, random weights
    run.model = TransformerEncoderDecoder(run.model.config.model_copy(update={"n_decoder_layers": 2})).eval()
    run.model.decoder.layers[1].self_attn.prune_heads([1])  # layer 1 keeps one head, layer 0 both
    onnx = OnnxSeq2Seq(export_onnx(run, tmp_path / "pruned"))
    import onnx as onnx_files

    record = json.loads((tmp_path / "pruned" / "export.json").read_text())
    for name, named in record["files"].items():  # export.json names each graph's inputs and outputs
        graph = onnx_files.load(tmp_path / "pruned" / name).graph
        assert named == {"inputs": [i.name for i in graph.input], "outputs": [o.name for o in graph.output]}
    src = run.task.src_tok.batch(["5. März 2021", "2021年3月5日", "March 5, 2021"])
    with torch.no_grad():
        memory, padding = run.model.encode(src)
        o_memory, o_padding = onnx.encode(src)
        cache, o_cache = run.model.new_cache(), onnx.new_cache()
        tokens = torch.full((3, 1), run.task.tgt_tok.bos_id)
        for _ in range(4):
            expected = run.model.decode(tokens, memory, padding, cache)
            torch.testing.assert_close(onnx.decode(tokens, o_memory, o_padding, o_cache), expected, atol=1e-4, rtol=0)
            tokens = expected[:, -1].argmax(-1, keepdim=True)


@pytest.mark.slow
def test_an_export_folder_translates_on_its_own(exported, tmp_path):
    """`heedful translate ONNX_DIR`: the folder, without the run it came from, gives the run's own
    translations (our search over onnxruntime), and what it cannot do is one line."""
    import shutil

    from heedful.optimize.export import open_export
    from tests.conftest import run_cli

    run, onnx = exported
    run.task.build_data(run.cfg)
    lines = [e.source for e in run.task.data.splits["test"]][:12]
    shipped = tmp_path / "shipped"  # a copy elsewhere: nothing points back at the run
    shutil.copytree(onnx.directory, shipped)
    expected = [t.output for t in run.translate(lines, beam=3)]
    translator = open_export(shipped)
    assert [t.output for t in translator.translate(lines, beam=3)] == expected
    assert open_export(shipped, ["decode.beam_size=3"]).cfg.decode.beam_size == 3
    result = run_cli("translate", str(shipped), "--beam", "3", stdin="".join(f"{line}\n" for line in lines))
    assert result.returncode == 0 and result.stdout.splitlines() == expected, result.stderr
    scored = open_export(shipped).evaluate("test")  # the run's own search over onnxruntime: the run's outputs
    expected_eval = run.evaluate("test")
    assert scored.outputs == expected_eval.outputs
    assert dict(scored) == {"exact_match": expected_eval["exact_match"]}  # no loss: that needs the weights
    predicted = run_cli("predict", str(shipped), *lines[:3], "--set", "decode.beam_size=3", "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert [json.loads(line)["output"] for line in predicted.stdout.splitlines()] == expected[:3]
    for args, message in [
        (["--attention", str(tmp_path / "maps.jsonl")], "does not return attention (an ONNX export)"),
        (["--quantization", "int8"], "quantization (--quantization) is for CTranslate2 exports"),
        (["--engine", "ctranslate2"], "is an export for onnxruntime, which decodes it"),
        (
            ["--device", "cuda"],
            f"device='cuda' (--device): an export computes on the CPU (onnxruntime or CTranslate2), and {shipped} "
            "is one",
        ),
    ]:
        refused = run_cli("translate", str(shipped), *args, stdin="5. März 2021\n")
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert not (tmp_path / "maps.jsonl").exists()


def test_an_exports_translations_are_scored_by_exact_match_on_dates(exported):
    """What ``heedful evaluate DIR`` scores a dates export with: its outputs against the split's
    targets, sentence by sentence (a known answer: 8 of 32 wrong gives 0.75)."""
    from heedful.tasks.translate import Translation

    run, _ = exported
    run.task.build_data(run.cfg)
    examples = run.task.data.splits["test"]
    assert run.task.split_inputs("test") == [e.source for e in examples] and len(examples) == 32
    outputs = [e.target for e in examples]
    outputs[::4] = [""] * 8
    translations = [Translation(e.source, o, 0.0, []) for e, o in zip(examples, outputs, strict=True)]
    scored = run.task.score_predictions("test", translations)
    assert dict(scored) == {"exact_match": 0.75} and scored.outputs == outputs
    assert scored.notes == {"empty_outputs": "8 of 32 (decode.min_len=1 forbids them)"}
    assert run.task.score_predictions("test", translations[1:2] * 32).notes == {}  # none empty, no note


def test_the_exported_classifier_computes_what_pytorch_does(tmp_path, run_dir):
    torch.manual_seed(0)
    cfg = ClassifierConfig(n_classes=3, vocab_size=50, encoder_type="transformer", pooling="attention",
                           encoder={"n_encoder_layers": 2, "n_decoder_layers": 0, "d_model": 32, "n_heads": 4,
                                    "d_ff": 64, "dropout": 0.0, "max_len": 64})  # fmt: skip
    model = EncoderClassifier(cfg).eval()
    model.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "config.yaml").write_text("task: classify\n")
    run = types.SimpleNamespace(run_dir=tmp_path / "run", model=model, cfg=None)
    onnx = OnnxClassifier(export_onnx(run, tmp_path / "onnx"))
    tokens = torch.randint(4, 50, (N_INPUTS, 17))
    tokens[::3, 9:] = 0  # padded rows too
    with torch.no_grad():
        torch.testing.assert_close(onnx(tokens), model(tokens), atol=1e-4, rtol=0)


def test_a_model_it_cannot_export_is_one_line(tmp_path, run_dir):
    torch.manual_seed(0)
    cfg = ClassifierConfig(n_classes=3, vocab_size=50, encoder_type="bigru", embed_dim=8, hidden_size=8)
    (tmp_path / "run").mkdir()
    run = types.SimpleNamespace(run_dir=tmp_path / "run", model=EncoderClassifier(cfg).eval(), cfg=None)
    with pytest.raises(UserError, match="bigru classifier is not supported"):
        export_onnx(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
