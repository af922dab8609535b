"""beam_candidates.c: beam search's n best continuations read straight from float32 logits.

Checked against the definition (log_softmax, the beam's score added, top-k over all of a
sentence's beams and tokens), against best_continuations' PyTorch path, and through whole searches."""

import pytest
import torch

from heedful.attention import cpu_kernel
from heedful.decode import beam as beam_module
from heedful.decode import beam_search
from heedful.decode.beam import best_continuations
from heedful.models import TransformerConfig, TransformerEncoderDecoder

pytestmark = pytest.mark.skipif(cpu_kernel.load() is None, reason="no C compiler to build the CPU kernels")

INF = float("inf")


@pytest.fixture
def served(monkeypatch):
    """Counts the calls the C kernel served (True) and left to PyTorch (False)."""
    calls: list[bool] = []
    original = beam_module._candidates_in_c

    def counting(*args):
        found = original(*args)
        calls.append(found is not None)
        return found

    monkeypatch.setattr(beam_module, "_candidates_in_c", counting)
    return calls


def by_definition(logits, scores, n, banned=None):
    B, k = scores.shape
    log_probs = logits.log_softmax(-1)
    if banned is not None:
        log_probs[:, banned] = -INF
    return (log_probs.view(B, k, -1) + scores[:, :, None]).view(B, -1).topk(n, dim=-1)


@pytest.mark.parametrize(("sentences", "beams", "vocab", "n"), [(100, 5, 8000, 10), (3, 1, 8000, 10), (4, 3, 70, 6)])
def test_the_candidates_are_the_top_of_every_beams_log_probabilities(served, sentences, beams, vocab, n):
    g = torch.Generator().manual_seed(vocab + beams)
    logits = torch.randn(sentences * beams, vocab, generator=g) * 4
    scores = -torch.rand(sentences, beams, generator=g) * 6
    top, beam_of, token_of = best_continuations(logits, scores, n)
    expected = by_definition(logits, scores, n)
    assert served == [True]
    torch.testing.assert_close(top, expected.values, atol=1e-5, rtol=0)
    assert torch.equal(beam_of * vocab + token_of, expected.indices)
    assert top.dtype == torch.float32 and beam_of.dtype == token_of.dtype == torch.long


def test_a_banned_token_is_never_a_candidate_but_still_counts_in_the_normalization(served):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 300, generator=g)
    logits[:, 2] = 9.0  # <eos> far ahead of every other token
    scores = torch.zeros(2, 5)
    top, beam_of, token_of = best_continuations(logits, scores, 10, banned=2)
    expected = by_definition(logits, scores, 10, banned=2)
    assert not (token_of == 2).any()
    torch.testing.assert_close(top, expected.values, atol=1e-5, rtol=0)  # the normalizer includes <eos>
    assert torch.equal(beam_of * 300 + token_of, expected.indices)


def test_gone_beams_offer_nothing_and_missing_candidates_are_minus_infinity(served):
    logits = torch.randn(6, 5)
    scores = torch.tensor([[-1.0, -INF, -INF], [-INF, -INF, -INF]])  # sentence 0: one beam of 5 tokens
    top, beam_of, token_of = best_continuations(logits, scores, 8)
    assert served == [True]
    assert torch.isfinite(top[0, :5]).all() and (beam_of[0, :5] == 0).all()
    assert sorted(token_of[0, :5].tolist()) == [0, 1, 2, 3, 4]
    assert (top[0, 5:] == -INF).all() and (top[1] == -INF).all()


def test_ties_keep_the_earlier_beam_then_the_lower_token(served):
    logits = torch.zeros(4, 100)  # every candidate of a sentence scores the same
    top, beam_of, token_of = best_continuations(logits, torch.zeros(2, 2), 4)
    assert (beam_of == 0).all() and token_of.tolist() == [[0, 1, 2, 3]] * 2
    torch.testing.assert_close(top, torch.full((2, 4), -torch.log(torch.tensor(100.0)).item()))


def test_logits_the_kernel_cannot_read_take_the_pytorch_path(served):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 200, generator=g)
    scores = -torch.rand(2, 5, generator=g)
    strided = torch.randn(200, 10, generator=g).t()  # tokens not contiguous
    for case in (logits.to(torch.bfloat16), logits.double(), strided):
        top, *_ = best_continuations(case, scores.to(case.dtype), 10)
        torch.testing.assert_close(top.float(), by_definition(case.float(), scores, 10).values, atol=2e-2, rtol=0)
    assert served == [False, False, False]


@pytest.mark.parametrize(("beam", "min_len"), [(5, 0), (4, 3), (1, 0)])
def test_whole_searches_find_what_the_pytorch_path_finds(served, monkeypatch, beam, min_len):
    torch.manual_seed(4)
    cfg = TransformerConfig(src_vocab_size=40, tgt_vocab_size=1200, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = TransformerEncoderDecoder(cfg).eval()
    src = torch.randint(4, 40, (6, 7))
    kwargs = {"bos_id": 1, "eos_id": 2, "beam_size": beam, "max_len": 9, "alpha": 0.6, "n_best": beam}
    kwargs["min_len"] = min_len
    in_c = beam_search(model, src, **kwargs)
    assert served and all(served)
    monkeypatch.setattr(beam_module, "_candidates_in_c", lambda *args: None)
    on_pytorch = beam_search(model, src, **kwargs)
    for got, want in zip(in_c, on_pytorch, strict=True):
        assert [h.tokens for h in got] == [h.tokens for h in want]
        for h, w in zip(got, want, strict=True):
            assert h.score == pytest.approx(w.score, abs=1e-5) and h.ended == w.ended
        if min_len:
            assert all(len(h.tokens) >= min_len for h in got)
