"""`heedful translate RUN --engine ctranslate2`: CTranslate2 decodes what our search decodes —
greedy exactly (outputs, log-probabilities, cross-attention), beam search with the one length
penalty both share (none) — its conversion is cached in the run folder, and what it cannot do
is refused in one line. Skipped where the export extra (ctranslate2) is absent."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from heedful.errors import UserError
from heedful.models import TransformerEncoderDecoder
from heedful.optimize import optimize
from heedful.runs import load_run
from tests.conftest import run_cli

pytest.importorskip("ctranslate2", reason="CTranslate2 decoding needs the export extra: pip install 'heedful[export]'")

from heedful.optimize.ct2 import cached_export, ct2_engine


@pytest.fixture(scope="module")
def confident_run(run_dir, tmp_path_factory):
    """The tiny dates run with random, confident weights (the trained one is near-constant and
    would end every output at once), so that outputs run long and every piece counts."""
    copy = tmp_path_factory.mktemp("engine") / "run"
    shutil.copytree(run_dir, copy)
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(load_run(run_dir, "cpu").model.config)
    with torch.no_grad():  # distinct, confident choices; the specials' rows (0..3) at zero: long outputs
        model.decoder.output.weight.mul_(4.0)
        model.decoder.output.weight[:4] = 0.0
    model.save_pretrained(copy / "model")
    return copy


def sources(run) -> list[str]:
    run.task.build_data(run.cfg)
    return [e.source for e in run.task.data.splits["test"]]


def test_greedy_is_ours_exactly_with_scores_and_attention(confident_run):
    run = load_run(confident_run, "cpu", ["decode.alpha=0.6"])  # alpha changes nothing greedy; scores undo it
    lines = sources(run)
    ours = run.translate(lines, beam=1, attention=True)
    theirs = ct2_engine(run).translate(lines, beam=1, attention=True)
    assert [t.output for t in theirs] == [t.output for t in ours]
    assert sum(len(t.output_ids) for t in ours) > 3 * len(ours)  # outputs of some length, not all empty
    assert [t.score for t in theirs] == pytest.approx([t.score for t in ours], abs=1e-4)
    for a, b in zip(theirs, ours, strict=True):
        assert a.source_pieces == b.source_pieces and a.output_pieces == b.output_pieces
        assert a.attention.shape == b.attention.shape
        # every output piece's row; ours also has the <eos> step's row, CTranslate2 none (zeros)
        torch.testing.assert_close(a.attention[:-1], b.attention[:-1], atol=1e-4, rtol=0)


def test_beam_search_without_a_length_penalty_is_ours(confident_run):
    run = load_run(confident_run, "cpu", ["decode.alpha=0", "decode.early_stopping=true"])
    lines = sources(run)
    ours = run.translate(lines, beam=4, n_best=2)
    theirs = ct2_engine(run).translate(lines, beam=4, n_best=2)
    assert [t.output for t in theirs] == [t.output for t in ours]
    assert [t.score for t in theirs] == pytest.approx([t.score for t in ours], abs=1e-4)
    assert [[o for o, _ in t.alternatives] for t in theirs] == [[o for o, _ in t.alternatives] for t in ours]


def test_decode_workers_are_its_inter_threads_with_the_same_outputs(confident_run):
    lines = sources(load_run(confident_run, "cpu"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine = ct2_engine(load_run(confident_run, "cpu", ["decode.workers=2"]))
        # CTranslate2's workers set OpenMP's default thread count to their own 1; torch gets its 2 back
        assert torch.get_num_threads() == 2
        several = engine.translate(lines, beam=3, batch_tokens=12)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    single = ct2_engine(load_run(confident_run, "cpu"))
    assert (engine.translator.translator.num_translators, single.translator.translator.num_translators) == (2, 1)
    assert [t.output for t in several] == [t.output for t in single.translate(lines, beam=3, batch_tokens=12)]


def test_int8_is_close_to_float(confident_run):
    run = load_run(confident_run, "cpu")
    lines = sources(run)
    float32 = ct2_engine(run).translate(lines, beam=1)
    int8 = ct2_engine(run, "int8").translate(lines, beam=1)
    assert (confident_run / "ctranslate2-int8" / "model.bin").stat().st_size < 0.5 * (
        confident_run / "ctranslate2-float32" / "model.bin"
    ).stat().st_size
    same = sum(a.output == b.output for a, b in zip(float32, int8, strict=True))
    assert same >= 0.5 * len(lines)


@pytest.mark.slow
def test_the_cli_translates_as_ours_and_keeps_its_conversion(confident_run):
    text = "".join(f"{line}\n" for line in sources(load_run(confident_run, "cpu"))[:8])
    ours = run_cli("translate", str(confident_run), "--beam", "1", stdin=text)
    theirs = run_cli("translate", str(confident_run), "--beam", "1", "--engine", "ctranslate2", stdin=text)
    assert ours.returncode == 0 and theirs.returncode == 0, theirs.stderr
    assert theirs.stdout == ours.stdout and len(theirs.stdout.splitlines()) == 8
    converted = confident_run / "ctranslate2-float32" / "model.bin"
    made = converted.stat().st_mtime_ns
    again = run_cli("translate", str(confident_run), "--beam", "1", "--engine", "ctranslate2", stdin=text)
    assert again.stdout == ours.stdout and converted.stat().st_mtime_ns == made  # reused, not remade
    written = json.loads((confident_run / ".heedful" / "run.json").read_text())["written"]
    assert "ctranslate2-float32/" in written  # heedful's: `train --overwrite` removes it


def test_its_conversion_is_remade_for_other_weights_of_the_same_size_and_times(confident_run, tmp_path):
    """The cache was keyed by the weights file's size and mtime: weights restored with their old
    times (cp -p, rsync -a) of the same size were decoded by the conversion of the ones before."""
    run_dir = tmp_path / "run"
    shutil.copytree(confident_run, run_dir)
    run = load_run(run_dir, "cpu")
    converted = cached_export(run) / "model.bin"
    before, made = converted.read_bytes(), converted.stat().st_mtime_ns
    assert cached_export(load_run(run_dir, "cpu")) / "model.bin" == converted
    assert converted.stat().st_mtime_ns == made  # the same weights: reused
    weights = run_dir / "model" / "model.safetensors"
    old = weights.stat()
    with torch.no_grad():
        run.model.decoder.output.weight.mul_(-1.0)  # other weights, the same shapes: the same size
    run.model.save_pretrained(run_dir / "model")
    os.utime(weights, ns=(old.st_atime_ns, old.st_mtime_ns))  # restored with the old file's times
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert (cached_export(load_run(run_dir, "cpu")) / "model.bin").read_bytes() != before  # remade


@pytest.mark.slow
def test_what_it_cannot_do_is_one_line(run_dir, tmp_path):
    int8 = optimize(load_run(run_dir, "cpu"), "int8", tmp_path / "int8")
    cases = [
        (["translate", str(int8), "--engine", "ctranslate2"], "takes a Transformer translator as trained"),
        (["translate", str(run_dir), "--engine", "marian"], "--engine 'marian': torch or ctranslate2"),
        (["translate", str(run_dir), "--quantization", "int8"], "--quantization is for --engine ctranslate2"),
        (["translate", str(run_dir), "--engine", "ctranslate2", "--quantization", "int4"], "choose from float32, int8"),
    ]
    for args, message in cases:
        result = run_cli(*args, stdin="5. März 2021\n")
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (int8 / "ctranslate2-float32").exists()


def test_without_ctranslate2_it_says_what_to_install(run_dir, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ctranslate2", None)
    with pytest.raises(UserError, match=r"needs ctranslate2: pip install 'heedful\[export\]'"):
        ct2_engine(load_run(run_dir, "cpu"))


@pytest.mark.slow
def test_an_export_folder_translates_on_its_own(confident_run, tmp_path):
    """`heedful export --format ctranslate2` then `heedful translate EXPORT`: the folder, moved away
    from its run and with the run gone, decodes what the run decodes with --engine ctranslate2 —
    its config and tokenizer travel inside it — and --set and --quantization apply."""
    from heedful.optimize.ct2 import export_ctranslate2, open_ct2_export

    gone = tmp_path / "run"  # a copy of the run, deleted once exported
    shutil.copytree(confident_run, gone)
    run = load_run(gone, "cpu")
    lines = sources(run)[:8]
    text = "".join(f"{line}\n" for line in lines)
    expected = [t.output for t in ct2_engine(run).translate(lines, beam=1)]
    test_set = run.task.data.splits["test"]
    whole_test = [t.output for t in ct2_engine(run).translate([e.source for e in test_set], beam=1)]
    shipped = tmp_path / "shipped"
    shutil.copytree(export_ctranslate2(run, tmp_path / "export"), shipped)
    shutil.rmtree(tmp_path / "export")
    shutil.rmtree(gone)

    result = run_cli("translate", str(shipped), "--beam", "1", stdin=text)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected and any(len(line) > 5 for line in expected)
    engine = open_ct2_export(shipped, ["decode.beam_size=1"])
    assert [t.output for t in engine.translate(lines)] == expected
    assert engine.cfg.name == f"{run.cfg.name}-ct2"  # served beside its run under a name of its own
    int8 = run_cli("translate", str(shipped), "--beam", "1", "--quantization", "int8", stdin=text)
    assert int8.returncode == 0 and len(int8.stdout.splitlines()) == 8, int8.stderr
    # `heedful evaluate EXPORT`: the split's exact match from the export's own translations, nothing written
    scored = open_ct2_export(shipped, ["decode.beam_size=1"]).evaluate("test")
    assert scored.outputs == whole_test
    assert scored["exact_match"] == sum(o == e.target for o, e in zip(whole_test, test_set, strict=True)) / 32
    before = sorted(p for p in shipped.rglob("*"))
    evaluated = run_cli("evaluate", str(shipped), "--set", "decode.beam_size=1")
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.splitlines() == [
        f"test exact_match: {scored['exact_match']:.4f}",
        "(an export, scored from its ctranslate2 predictions: nothing written)",
    ]
    assert sorted(p for p in shipped.rglob("*")) == before
    predicted = run_cli("predict", str(shipped), *lines[:3], "--set", "decode.beam_size=1")  # as a run predicts
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.splitlines() == [f"{s}  →  {t}" for s, t in zip(lines[:3], expected, strict=False)]


@pytest.mark.slow
def test_an_export_folder_where_a_run_is_expected_is_one_line(run_dir, tmp_path):
    from heedful.optimize.ct2 import export_ctranslate2
    from heedful.optimize.export import export_onnx

    run = load_run(run_dir, "cpu")
    ct2_dir, onnx_dir = export_ctranslate2(run, tmp_path / "ct2"), export_onnx(run, tmp_path / "onnx")
    old = tmp_path / "old"  # an export made before the run's files went into heedful/
    shutil.copytree(ct2_dir, old)
    shutil.rmtree(old / "heedful")
    cases = [
        (
            ["optimize", str(ct2_dir), "--method", "int8", "--out", str(tmp_path / "int8")],
            f"a CTranslate2 export of {run_dir}, not a run directory",
        ),
        (["evaluate", str(onnx_dir), "--ensemble", str(run_dir)], "--ensemble needs run directories"),
        (["report", str(onnx_dir)], "an ONNX export"),
        (["translate", str(ct2_dir), "--ensemble", str(run_dir)], "--ensemble needs run directories"),
        (["translate", str(ct2_dir), "--quantization", "int4"], "choose from float32, int8"),
        (["translate", str(old)], "export again"),
    ]
    for args, message in cases:
        result = run_cli(*args, stdin="5. März 2021\n")
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def ending_run(tmp_path_factory):
    """A tiny dates run trained long enough (200 steps, a few seconds) that its beam-4 outputs
    end with <eos> at 4–8 pieces, well before their limit of 16 (at 150 steps one output of 32
    reached the limit once dropout's random stream changed: too close to the edge)."""
    from heedful.runs import load_config
    from heedful.train.trainer import fit
    from tests.conftest import ROOT, tiny_dates_overrides

    directory = tmp_path_factory.mktemp("ending") / "dates"
    extra = {"train.epochs": 1, "train.steps_per_epoch": 200, "train.lr": 3e-3}
    fit(load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(directory, **extra)))
    return directory


def test_min_len_reaches_ours_and_ctranslate2_alike(ending_run):
    """decode.min_len goes to our search and to CTranslate2's min_decoding_length: greedy, both
    give the same outputs, none shorter than it, where some were shorter without it."""
    lines = sources(load_run(ending_run, "cpu"))
    free = load_run(ending_run, "cpu").translate(lines, beam=1)
    assert min(len(t.output_ids) for t in free) < 8
    run = load_run(ending_run, "cpu", ["decode.min_len=8"])
    ours, theirs = run.translate(lines, beam=1), ct2_engine(run).translate(lines, beam=1)
    assert all(len(t.output_ids) >= 8 for t in ours)
    assert [t.output for t in theirs] == [t.output for t in ours]


def search_errors_script():
    """benchmarks/search_errors.py as a module."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("search_errors", ROOT / "benchmarks" / "search_errors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_errors_rescores_each_output_as_the_search_scored_it(ending_run):
    """The teacher-forced log-probability the benchmark judges outputs by is the search's own sum
    (pieces, then <eos>), batch by batch."""
    run = load_run(ending_run, "cpu")
    lines = sources(run)
    ours = run.translate(lines, beam=4)
    assert all(0 < len(t.output_ids) < 16 for t in ours)  # every output ended, none empty
    rescored = search_errors_script().log_probs(run, lines, [t.output_ids for t in ours], batch=7)
    assert rescored == pytest.approx([t.score for t in ours], abs=1e-4)


def test_search_errors_compares_three_searches_in_one_table(ending_run, tmp_path, capsys):
    import json

    from heedful.optimize.ct2 import export_ctranslate2

    export = export_ctranslate2(load_run(ending_run, "cpu"), tmp_path / "ct2")
    written = tmp_path / "rows.json"
    assert search_errors_script().main([str(ending_run), str(export), "--alpha", "0", "--json", str(written)]) == 0
    rows = json.loads(written.read_text())
    assert [r["search"] for r in rows] == ["ours", "ours, early", "export (ct2)"]
    assert all({"exact_match", "pieces", "empty"} <= r.keys() for r in rows)
    n = len(sources(load_run(ending_run, "cpu")))
    # With no length penalty all three keep the same live beams, and ours searches on until no
    # live one can win, keeping every ended one it meets: no other search beats it.
    assert all(r["higher_log_prob"] == 0 and 0 <= r["lower_log_prob"] <= n for r in rows)
    assert rows[0]["lower_log_prob"] == 0 and rows[0]["pieces"] > 3 * n
    assert "ours, early" in capsys.readouterr().out


def test_search_errors_counts_only_differences_beyond_the_tolerance():
    compared = search_errors_script().compared
    # 1e-4 apart: equal; 1.0 higher; 1.0 lower; 2e-3 lower
    assert compared([1.0, 2.0, 3.0, -5.002], [1.0001, 1.0, 4.0, -5.0]) == {"higher_log_prob": 1, "lower_log_prob": 2}
