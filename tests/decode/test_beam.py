import math
from typing import ClassVar

import pytest
import torch
from torch import nn

from heedful.attention import CacheArena
from heedful.decode import beam_search, greedy_decode
from heedful.models import TransformerConfig, TransformerEncoderDecoder

PAD, BOS, EOS, A, B = 0, 1, 2, 3, 4


class ToyCache:
    def __init__(self):
        self.history: torch.Tensor | None = None  # (rows, t) tokens fed so far

    def reorder(self, index, sources_unchanged=False):
        self.history = self.history.index_select(0, index)


class ToyModel:
    """Next-token probabilities depend only on the prefix, chosen so greedy is wrong:

    step 1: a 0.6, b 0.4;  after a: a 0.36, b 0.34, <eos> 0.3;  after b: <eos> 0.9, a 0.1;
    after a a / a b: <eos> 1.0.  Best: "b" (0.4·0.9 = 0.36) — greedy takes "a a" (0.6·0.36 = 0.216).
    """

    table: ClassVar[dict] = {
        (): {A: 0.6, B: 0.4},
        (A,): {A: 0.36, B: 0.34, EOS: 0.3},
        (B,): {EOS: 0.9, A: 0.1},
    }

    def encode(self, src):
        return torch.zeros(src.shape[0], 1, 1), torch.ones(src.shape[0], 1, dtype=torch.bool)

    def new_cache(self):
        return ToyCache()

    def decode(self, tokens, memory, padding, cache):
        cache.history = tokens if cache.history is None else torch.cat([cache.history, tokens], 1)
        rows = []
        for row in cache.history.tolist():
            prefix = tuple(row[1:])  # drop <bos>
            probs = self.table.get(prefix, {EOS: 1.0})
            dist = torch.full((5,), 1e-12)
            for token, p in probs.items():
                dist[token] = p
            rows.append(dist.log())
        return torch.stack(rows)[:, None, :]  # (rows, 1, V)


def test_beam_finds_the_known_best_sequence_that_greedy_misses():
    src = torch.ones(2, 3, dtype=torch.long)
    (best,), (best2,) = beam_search(ToyModel(), src, bos_id=BOS, eos_id=EOS, beam_size=2, max_len=5, alpha=0.0)
    assert best.tokens == [B] and best2.tokens == [B]
    assert best.log_prob == pytest.approx(math.log(0.36), abs=1e-5)
    (greedy,) = beam_search(ToyModel(), src[:1], bos_id=BOS, eos_id=EOS, beam_size=1, max_len=5, alpha=0.0)[0:1]
    assert greedy[0].tokens == [A, A]
    assert greedy[0].log_prob == pytest.approx(math.log(0.6 * 0.36), abs=1e-5)


def test_n_best_lists_are_ranked():
    src = torch.ones(1, 3, dtype=torch.long)
    (hyps,) = beam_search(ToyModel(), src, bos_id=BOS, eos_id=EOS, beam_size=3, max_len=5, alpha=0.0, n_best=3)
    assert [h.tokens for h in hyps] == [[B], [A, A], [A, B]]
    assert [round(math.exp(h.log_prob), 4) for h in hyps] == [0.36, 0.216, 0.204]
    with pytest.raises(ValueError, match="n_best"):
        beam_search(ToyModel(), src, bos_id=BOS, eos_id=EOS, beam_size=2, n_best=3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_size_one_equals_greedy_on_a_transformer(seed):
    torch.manual_seed(seed)
    cfg = TransformerConfig(src_vocab_size=20, tgt_vocab_size=12, d_model=32, n_heads=4, n_encoder_layers=1,
                            n_decoder_layers=2, d_ff=64, dropout=0.0)  # fmt: skip
    model = TransformerEncoderDecoder(cfg).eval()
    src = torch.randint(4, 20, (5, 7))
    src[2, 4:] = 0
    greedy, greedy_lp = greedy_decode(model, src, bos_id=1, eos_id=2, max_len=9)
    beams = beam_search(model, src, bos_id=1, eos_id=2, beam_size=1, max_len=9, alpha=0.0)
    for row, (hyp,), lp in zip(greedy.tolist(), beams, greedy_lp.tolist(), strict=True):
        expected = row[: row.index(2)] if 2 in row else row
        assert hyp.tokens == expected
        assert hyp.log_prob == pytest.approx(lp, abs=1e-4)


def test_wider_beams_never_score_worse_than_greedy():
    torch.manual_seed(3)
    cfg = TransformerConfig(src_vocab_size=20, tgt_vocab_size=12, d_model=32, n_heads=4, n_encoder_layers=1,
                            n_decoder_layers=1, d_ff=64, dropout=0.0)  # fmt: skip
    model = TransformerEncoderDecoder(cfg).eval()
    src = torch.randint(4, 20, (6, 5))
    narrow = beam_search(model, src, bos_id=1, eos_id=2, beam_size=1, max_len=6, alpha=0.0)
    wide = beam_search(model, src, bos_id=1, eos_id=2, beam_size=6, max_len=6, alpha=0.0)
    for (n,), (w,) in zip(narrow, wide, strict=True):
        assert w.log_prob >= n.log_prob - 1e-5


def test_every_hypothesis_scores_what_the_model_gives_it():
    """The reported log-probability equals a teacher-forced pass over the returned tokens, which
    holds only if the cache followed each beam through every re-ranking."""
    torch.manual_seed(4)
    cfg = TransformerConfig(src_vocab_size=20, tgt_vocab_size=12, d_model=32, n_heads=4, n_encoder_layers=1,
                            n_decoder_layers=2, d_ff=64, dropout=0.0, position="rope")  # fmt: skip
    model = TransformerEncoderDecoder(cfg).eval()
    src = torch.randint(4, 20, (4, 6))
    src[1, 3:] = 0
    results = beam_search(model, src, bos_id=1, eos_id=2, beam_size=4, max_len=7, alpha=0.6, n_best=4)
    for i, hyps in enumerate(results):
        assert len(hyps) == 4
        for h in hyps:
            target = h.tokens + ([2] if h.ended else [])
            tgt_in = torch.tensor([[1, *target[:-1]]])
            with torch.no_grad():
                log_probs = model(src[i : i + 1], tgt_in).log_softmax(-1)[0]  # (T, V)
            expected = float(log_probs.gather(-1, torch.tensor(target)[:, None]).sum())
            assert h.log_prob == pytest.approx(expected, abs=1e-4)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


class EosProne:
    """A model whose <eos> logit is raised, so hypotheses end at many different lengths."""

    def __init__(self, model, boost: float = 2.5):
        self.model, self.config, self.boost = model, model.config, boost

    def encode(self, src):
        return self.model.encode(src)

    def new_cache(self):
        return self.model.new_cache()

    def decode(self, tokens, memory, padding, cache):
        logits = self.model.decode(tokens, memory, padding, cache)
        return logits + self.boost * torch.nn.functional.one_hot(torch.tensor(EOS), logits.shape[-1])


def assert_same_hypotheses(got, expected):
    """Hypothesis for hypothesis: the same tokens, endings and (to rounding) scores."""
    for g, e in zip(got, expected, strict=True):
        assert [(h.tokens, h.ended) for h in g] == [(h.tokens, h.ended) for h in e]
        assert [h.score for h in g] == pytest.approx([h.score for h in e], abs=1e-5)


def count_decoder_rows(model) -> list[int]:
    """Make ``model.decode`` record the batch rows of every call; returns the (growing) record."""
    rows_per_call: list[int] = []
    decode = model.decode
    model.decode = lambda tokens, *args: rows_per_call.append(tokens.shape[0]) or decode(tokens, *args)
    return rows_per_call


@pytest.mark.parametrize(("beam", "alpha", "n_best"), [(2, 0.0, 2), (5, 0.6, 3), (4, 1.0, 1)])
def test_the_batched_search_agrees_with_the_reference_loop(beam, alpha, n_best):
    from tests.decode.reference_beam import reference_beam_search

    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval())
    src = torch.randint(3, 30, (6, 7))
    src[2, 4:] = PAD
    limits = torch.tensor([3, 9, 6, 12, 1, 8])  # per-sentence limits, one of them a single step
    kwargs = {"bos_id": BOS, "eos_id": EOS, "beam_size": beam, "max_len": limits, "alpha": alpha, "n_best": n_best}
    got, expected = beam_search(model, src, **kwargs), reference_beam_search(model, src, **kwargs)
    if n_best > 1:  # both kinds of ending are exercised
        assert sum(h.ended for hyps in got for h in hyps) >= 5 and not all(h.ended for hyps in got for h in hyps)
    assert_same_hypotheses(got, expected)


def test_min_len_forbids_early_endings_and_keeps_the_models_own_scores():
    """The toy's best is "b" (0.36); with two tokens at least, "b" must go on ("b a", 0.4 · 0.1),
    so "a a" (0.216) wins — scored as the model scores it, <eos>'s share not handed to the others."""
    src = torch.ones(1, 3, dtype=torch.long)
    search = {"bos_id": BOS, "eos_id": EOS, "beam_size": 3, "max_len": 5, "alpha": 0.0, "n_best": 3}
    (hyps,) = beam_search(ToyModel(), src, min_len=2, **search)
    assert [h.tokens for h in hyps] == [[A, A], [A, B], [B, A]]
    assert [round(math.exp(h.log_prob), 4) for h in hyps] == [0.216, 0.204, 0.04]
    (unchanged,) = beam_search(ToyModel(), src, min_len=1, **search)  # no <eos> at the first step anyway
    assert [h.tokens for h in unchanged] == [[B], [A, A], [A, B]]


@pytest.mark.parametrize(("beam", "alpha"), [(1, 0.0), (4, 0.0), (3, 0.6)])
def test_min_len_agrees_with_the_reference_loop_and_no_output_is_shorter(beam, alpha):
    from tests.decode.reference_beam import reference_beam_search

    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval(), boost=4.0)
    src = torch.randint(3, 30, (6, 7))
    limits = torch.tensor([3, 9, 6, 12, 2, 8])  # two limits below min_len: the limit still ends them
    kwargs = {"bos_id": BOS, "eos_id": EOS, "beam_size": beam, "max_len": limits, "alpha": alpha, "n_best": beam}
    free = beam_search(model, src, **kwargs)
    assert min(len(h.tokens) for hyps in free for h in hyps if h.ended) < 4  # without it, some end sooner
    got, expected = beam_search(model, src, min_len=4, **kwargs), reference_beam_search(model, src, min_len=4, **kwargs)
    assert_same_hypotheses(got, expected)
    for hyps, limit in zip(got, limits.tolist(), strict=True):
        assert all(len(h.tokens) >= min(4, limit) for h in hyps)


def test_greedy_min_len_is_beam_one_with_min_len():
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval(), boost=6.0)
    src = torch.randint(3, 30, (6, 7))
    plain, _ = greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=10)
    assert (plain[:, 0] == EOS).all()  # without min_len every row ends at once
    tokens, log_prob = greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=10, min_len=3)
    beams = beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=1, max_len=10, alpha=0.0, min_len=3)
    assert not (tokens[:, :3] == EOS).any()
    for row, (hyp,), lp in zip(tokens.tolist(), beams, log_prob.tolist(), strict=True):
        assert hyp.tokens == (row[: row.index(EOS)] if EOS in row else row)
        assert hyp.log_prob == pytest.approx(lp, abs=1e-4)


def test_a_vocabulary_smaller_than_two_beams_agrees_with_the_reference_loop():
    """V = 6 < 2K = 10: each beam has fewer candidate tokens than the step keeps."""
    from tests.decode.reference_beam import reference_beam_search

    torch.manual_seed(1)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=6, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval())
    src = torch.randint(3, 30, (4, 5))
    kwargs = {"bos_id": BOS, "eos_id": EOS, "beam_size": 5, "max_len": 6, "alpha": 0.6, "n_best": 5}
    got, expected = beam_search(model, src, **kwargs), reference_beam_search(model, src, **kwargs)
    assert_same_hypotheses(got, expected)


@pytest.fixture(params=["c", "pytorch"])
def candidates_path(request, monkeypatch):
    """best_continuations on beam_candidates.c (skipped without a C compiler) or on its PyTorch path."""
    from heedful.attention import cpu_kernel
    from heedful.decode import beam as beam_module

    if request.param == "c" and cpu_kernel.load() is None:
        pytest.skip("no C compiler to build the CPU kernels")
    if request.param == "pytorch":
        monkeypatch.setattr(beam_module, "_candidates_in_c", lambda *args: None)
    return request.param


@pytest.mark.parametrize("vocab", [50, 640, 1000, 8000])  # one top-k; chunks only; chunks and a tail
def test_best_continuations_are_the_exact_top_candidates(vocab, candidates_path):
    from heedful.decode.beam import best_continuations

    g = torch.Generator().manual_seed(vocab)
    sentences, beams, n = 7, 5, 10
    logits = torch.randn(sentences * beams, vocab, generator=g) * 3
    scores = -torch.rand(sentences, beams, generator=g) * 4
    scores[2, 3:] = float("-inf")  # beams that are gone
    top, beam_of, token_of = best_continuations(logits.clone(), scores, n)
    candidates = (logits.log_softmax(-1).view(sentences, beams, vocab) + scores[:, :, None]).view(sentences, -1)
    expected = candidates.topk(n, dim=-1)
    torch.testing.assert_close(top, expected.values, atol=1e-5, rtol=0)
    assert torch.equal(beam_of * vocab + token_of, expected.indices)  # random logits: no ties
    # With beam search's reused buffer (more rows than needed): the same answer. The PyTorch path
    # writes the log-probabilities into the buffer rather than a fresh tensor; the C path writes none.
    buffer = torch.full((2 * sentences * beams, vocab), float("nan"))
    with_buffer = best_continuations(logits.clone(), scores, n, out=buffer)
    for got, want in zip(with_buffer, (top, beam_of, token_of), strict=True):
        assert torch.equal(got, want)
    if candidates_path == "pytorch":
        assert torch.equal(buffer[: sentences * beams], logits.log_softmax(-1))
        assert buffer[sentences * beams :].isnan().all()
    else:
        assert buffer.isnan().all()


def test_beam_search_writes_float32_log_probabilities_over_the_logits_and_16_bit_ones_into_a_buffer(
    candidates_path,
):
    """On the PyTorch path float32 logits are overwritten by their log-probabilities (no second
    (B·K, V) tensor); bf16 logits are left alone, their float32 log-probabilities going to a
    buffer. The C path reads float32 logits and writes nothing into them. Same answer."""
    torch.manual_seed(3)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=200, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = TransformerEncoderDecoder(cfg).eval()
    src = torch.randint(4, 30, (3, 6))

    class Keeping(nn.Module):
        """The model, keeping every step's logits as returned and a copy of them as they were."""

        def __init__(self, inner, dtype):
            super().__init__()
            self.inner, self.dtype, self.returned, self.copies = inner, dtype, [], []

        def encode(self, src):
            return self.inner.encode(src)

        def new_cache(self):
            return self.inner.new_cache()

        def decode(self, *args):
            logits = self.inner.decode(*args).to(self.dtype)
            self.returned.append(logits)
            self.copies.append(logits.clone())
            return logits

    kwargs = {"bos_id": 1, "eos_id": 2, "beam_size": 4, "max_len": 7, "alpha": 0.6}
    plain = beam_search(model, src, **kwargs)
    for dtype in (torch.float32, torch.bfloat16):
        keeping = Keeping(model, dtype)
        got = beam_search(keeping, src, **kwargs)
        if dtype == torch.float32:
            assert_same_hypotheses(got, plain)
            for returned, copy in zip(keeping.returned, keeping.copies, strict=True):
                if candidates_path == "pytorch":
                    assert torch.equal(returned[:, -1], copy[:, -1].log_softmax(-1))  # overwritten in place
                else:
                    assert torch.equal(returned, copy)
        else:
            assert all(torch.equal(r, c) for r, c in zip(keeping.returned, keeping.copies, strict=True))


def test_a_large_vocabulary_agrees_with_the_reference_loop():
    """V = 1,000: the two-level top-k (chunks and a partial last chunk) in the whole search."""
    from tests.decode.reference_beam import reference_beam_search

    torch.manual_seed(2)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=1000, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval())
    src = torch.randint(3, 30, (5, 6))
    src[1, 3:] = PAD
    kwargs = {"bos_id": BOS, "eos_id": EOS, "beam_size": 5, "max_len": torch.tensor([4, 9, 7, 12, 2]), "alpha": 0.6,
              "n_best": 5}  # fmt: skip
    got, expected = beam_search(model, src, **kwargs), reference_beam_search(model, src, **kwargs)
    assert_same_hypotheses(got, expected)


def test_settled_sentences_leave_the_batch():
    """A sentence at its length limit stops costing decoder rows; the others' results do not change."""
    from tests.decode.reference_beam import reference_beam_search

    torch.manual_seed(5)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = TransformerEncoderDecoder(cfg).eval()
    rows_per_call = count_decoder_rows(model)
    src = torch.randint(3, 30, (4, 5))
    kwargs = {"bos_id": BOS, "eos_id": EOS, "beam_size": 3, "max_len": torch.tensor([2, 6, 6, 6]), "alpha": 0.6}
    got = beam_search(model, src, **kwargs)
    assert rows_per_call == [4, 12] + [9] * 4  # sentence 0 leaves after its 2 steps
    expected = reference_beam_search(model, src, **kwargs)
    assert_same_hypotheses(got, expected)


def test_greedy_rows_that_ended_leave_the_batch_without_changing_any_row():
    torch.manual_seed(6)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval(), boost=1.5)
    rows_per_call = count_decoder_rows(model)
    src = torch.randint(3, 30, (8, 6))
    src[3, 2:] = PAD
    tokens, log_prob = greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=12)
    assert rows_per_call[0] == 8 and min(rows_per_call) < 8  # rows left once they had ended
    for i in range(8):  # each sentence alone: the same tokens and log-probability
        alone, alone_lp = greedy_decode(model, src[i : i + 1], bos_id=BOS, eos_id=EOS, max_len=12)
        row = tokens[i, : alone.shape[1]]
        assert torch.equal(row, alone[0]) and bool((tokens[i, alone.shape[1] :] == PAD).all())
        assert float(log_prob[i]) == pytest.approx(float(alone_lp[0]), abs=1e-5)


def test_beam_search_keeps_the_transformer_caches_grouped():
    """The search re-ranks and drops sentences without ever leaving grouped storage, i.e. without
    copying histories (the speed of docs/RESULTS.md's decoding table rests on it)."""
    torch.manual_seed(7)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval(), boost=1.5)
    caches = []
    new_cache = model.new_cache
    model.new_cache = lambda: caches.append(new_cache()) or caches[-1]
    src = torch.randint(3, 30, (6, 5))
    beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=4, max_len=torch.tensor([3, 8, 8, 8, 8, 8]), alpha=0.6)
    for layer in caches[0].layers:
        assert layer.self_attn.group == 4 and layer.cross_attn.group == 4
        assert layer.cross_attn.k.shape[0] < 6  # settled sentences left; the rest share one row each


def test_early_stopping_ends_a_sentence_with_its_first_k_finished_hypotheses():
    torch.manual_seed(8)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval())
    calls = count_decoder_rows(model)
    src = torch.randint(3, 30, (1, 5))
    kwargs = {"bos_id": BOS, "eos_id": EOS, "beam_size": 3, "max_len": 15, "alpha": 0.6, "n_best": 3}
    exact = beam_search(model, src, **kwargs)[0]
    exact_steps = len(calls)
    calls.clear()
    early = beam_search(model, src, **kwargs, early_stopping=True)[0]
    assert len(calls) < exact_steps  # it stopped sooner
    assert len(early) == 3 and all(h.ended for h in early)
    # Its hypotheses ended by then; the exact search keeps looking and can only do better.
    assert all(len(h.tokens) < len(calls) for h in early)
    assert exact[0].score >= early[0].score


def test_searches_on_one_arena_reuse_its_memory_and_decode_as_without_it(monkeypatch):
    """Beam and greedy searches drawing their caches from one CacheArena (as decode_in_batches
    does, batch after batch) give exactly what a search with fresh memory gives, and a search
    no larger than the one before allocates nothing."""
    torch.manual_seed(9)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval(), boost=1.5)  # ends at many lengths: rows leave
    first, second = torch.randint(3, 30, (6, 5)), torch.randint(3, 30, (4, 7))
    kwargs = {"bos_id": BOS, "eos_id": EOS, "beam_size": 4, "alpha": 0.6}
    limits = torch.tensor([3, 20, 20, 20, 20, 20])  # past the 16 positions an unreserved cache starts with
    fresh = [beam_search(model, first, max_len=limits, **kwargs), beam_search(model, second, max_len=9, **kwargs)]
    fresh_greedy = greedy_decode(model, first, bos_id=BOS, eos_id=EOS, max_len=20)
    arena, allocations = CacheArena(), []
    allocate = CacheArena._allocate
    monkeypatch.setattr(CacheArena, "_allocate", lambda self, like, n: allocations.append(n) or allocate(self, like, n))
    assert beam_search(model, first, max_len=limits, arena=arena, **kwargs) == fresh[0]
    made = len(allocations)
    assert made > 0
    assert beam_search(model, first, max_len=limits, arena=arena, **kwargs) == fresh[0]
    assert len(allocations) == made  # all from the first search's buffers
    assert beam_search(model, second, max_len=9, arena=arena, **kwargs) == fresh[1]
    tokens, log_prob = greedy_decode(model, first, bos_id=BOS, eos_id=EOS, max_len=20, arena=arena)
    assert torch.equal(tokens, fresh_greedy[0]) and torch.equal(log_prob, fresh_greedy[1])
    made = len(allocations)
    tokens, _ = greedy_decode(model, first, bos_id=BOS, eos_id=EOS, max_len=20, arena=arena)
    assert torch.equal(tokens, fresh_greedy[0]) and len(allocations) == made


def test_a_generous_max_len_reserves_no_more_than_the_cap(monkeypatch):
    """Outputs that end early must not cost a cache as long as max_len: the search reserves at
    most RESERVE_AT_MOST positions and grows beyond them by doubling."""
    from heedful.decode import beam as beam_module

    torch.manual_seed(10)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = EosProne(TransformerEncoderDecoder(cfg).eval(), boost=6.0)  # <eos> within a few steps
    allocations = []
    allocate = CacheArena._allocate
    monkeypatch.setattr(CacheArena, "_allocate", lambda self, like, n: allocations.append(n) or allocate(self, like, n))
    src = torch.randint(3, 30, (6, 5))
    beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=4, max_len=500, alpha=0.0)
    sources, heads, d_head = 6, 2, 16
    assert max(allocations) <= sources * heads * beam_module.RESERVE_AT_MOST * 4 * d_head  # grouped (n, H, T·4, D_h)


class RecordingMemory(nn.Module):
    """A model speaking the decoding protocol through ``inner``, recording the memory's batch size
    at every decoder call and the decoder rows."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []
        self.config = getattr(inner, "config", None)  # greedy decoding reads its pad id

    def encode(self, src):
        return self.inner.encode(src)

    def new_cache(self):
        return self.inner.new_cache()

    def decode(self, tokens, memory, padding, cache):
        self.calls.append((tokens.shape[0], memory.shape[0], padding.shape[0]))
        return self.inner.decode(tokens, memory, padding, cache)


def test_a_transformer_cache_stops_needing_the_memory_after_the_first_step(monkeypatch):
    """After step 0 the cross-attention caches hold the memory's keys: the searches stop copying
    the (B·K, S, D) memory at every expansion and drop, and decode the same."""
    from heedful.models.transformer import DecoderCache

    torch.manual_seed(5)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=60, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    model = TransformerEncoderDecoder(cfg).eval()
    src = torch.randint(4, 30, (6, 7))
    cache = model.new_cache()
    assert cache.needs_memory
    with torch.no_grad():
        memory, padding = model.encode(src)
        model.decode(torch.full((6, 1), 1), memory, padding, cache)
    assert not cache.needs_memory

    kwargs = {"bos_id": 1, "eos_id": 2, "beam_size": 4, "max_len": 9, "alpha": 0.6, "n_best": 4}
    recording = RecordingMemory(model)
    got = beam_search(recording, src, **kwargs)
    rows, memory_rows, padding_rows = zip(*recording.calls, strict=True)
    assert rows[0] == 6 and rows[1] == 24 and min(rows) < 24  # expanded, then settled sentences dropped
    assert set(memory_rows) == {6}  # never copied: the caches hold what decoding reads of it
    assert padding_rows == rows  # the padding still follows the rows
    greedy_recording = RecordingMemory(model)
    greedy = greedy_decode(greedy_recording, src, bos_id=1, eos_id=2, max_len=9)
    assert {m for _, m, _ in greedy_recording.calls} == {6}

    monkeypatch.setattr(DecoderCache, "needs_memory", property(lambda self: True))  # as before: always copied
    recording = RecordingMemory(model)
    assert_same_hypotheses(got, beam_search(recording, src, **kwargs))
    assert [m for _, m, _ in recording.calls] == [r for r, _, _ in recording.calls]
    greedy_recording = RecordingMemory(model)
    assert torch.equal(greedy[0], greedy_decode(greedy_recording, src, bos_id=1, eos_id=2, max_len=9)[0])


def test_a_cache_without_needs_memory_gets_the_memory_with_its_rows():
    recording = RecordingMemory(ToyModel())
    beam_search(recording, torch.zeros(3, 2, dtype=torch.long), bos_id=BOS, eos_id=EOS, beam_size=2, max_len=4)
    assert all(rows == memory_rows for rows, memory_rows, _ in recording.calls)
