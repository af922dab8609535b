"""CTranslate2 conversion: the converted model decodes what ours decodes. Skipped where the
export extra (ctranslate2) is absent."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from heedful.data.tokenizers import pad_ids
from heedful.decode.batching import decode_in_batches
from heedful.errors import UserError
from heedful.models import TransformerEncoderDecoder
from heedful.runs import load_run
from tests.conftest import run_cli

pytest.importorskip(
    "ctranslate2", reason="CTranslate2 conversion needs the export extra: pip install 'heedful[export]'"
)

from heedful.optimize.ct2 import Ct2Translator, export_ctranslate2


def test_the_converted_model_decodes_what_ours_decodes(run_dir, tmp_path):
    """On random weights (the tiny trained run is near-constant: it would end every output at
    once), so that outputs run long and every piece — positions, caches, both attentions — counts."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(load_run(run_dir, "cpu").model.config)
    with torch.no_grad():  # larger output weights: distinct, confident choices; specials' rows (0..3) at
        model.decoder.output.weight.mul_(4.0)  # zero, so that content tokens win and outputs run long
        model.decoder.output.weight[:4] = 0.0
    model.save_pretrained(copy / "model")
    run = load_run(copy, "cpu")
    run.task.build_data(run.cfg)
    sources = [e.source for e in run.task.data.splits["test"]]
    src_ids = [run.task.src_tok.encode(s) for s in sources]
    ct2 = Ct2Translator(export_ctranslate2(run, tmp_path / "ct2"), run.task.src_tok, run.task.tgt_tok)
    tok = run.task.tgt_tok
    with torch.no_grad():  # p(<eos>) at the first step, per source
        memory, padding = run.model.encode(pad_ids(src_ids, 0))
        first = run.model.decode(torch.full((len(src_ids), 1), tok.bos_id), memory, padding)[:, -1].softmax(-1)
        first_eos = first[:, tok.eos_id].tolist()
    for beam in (1, 4):  # without a length penalty: CTranslate2's is not GNMT's
        ours = decode_in_batches(run.model, src_ids, bos=tok.bos_id, eos=tok.eos_id, pad=0, beam=beam, budget=4000,
                                 limits=[16] * len(src_ids), alpha=0.0, early_stopping=False)  # fmt: skip
        theirs = ct2.translate_scored(src_ids, beam=beam, max_len=16)
        assert [ids for ids, _ in theirs] == [ranked[0][0] for ranked in ours], beam
        # CTranslate2 never lets <eos> be the first token: its first step's distribution is ours
        # renormalised without <eos>, so its log-probability is ours − log(1 − p_eos(step 1)).
        expected = [ranked[0][1] - math.log1p(-p) for ranked, p in zip(ours, first_eos, strict=True)]
        assert [score for _, score in theirs] == pytest.approx(expected, abs=1e-4)
        assert sum(len(ids) for ids, _ in theirs) > 3 * len(theirs)  # outputs of some length, not all empty


@pytest.mark.slow
def test_a_run_it_cannot_convert_is_one_line(run_dir, tmp_path):
    result = run_cli("export", str(run_dir), "--format", "onnx", "--quantization", "int8", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "--quantization is for --format ctranslate2" in result.stderr
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match=r"quantization='int4' \(--quantization\): choose from int8, int8_float32, "):
        export_ctranslate2(load_run(run_dir, "cpu"), tmp_path / "x", "int4")  # CTranslate2's own was a traceback
    assert not (tmp_path / "x").exists()
