"""Ensemble decoding: the members' next-token log-probabilities averaged inside the searches."""

from __future__ import annotations

import pytest
import torch

from heedful.decode import beam_search, greedy_decode
from heedful.decode.ensemble import EnsembleDecoder
from heedful.models import RNNConfig, RNNEncoderDecoder, TransformerConfig, TransformerEncoderDecoder

V = 23


def transformer(seed: int) -> TransformerEncoderDecoder:
    torch.manual_seed(seed)
    cfg = TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=32, n_heads=4, n_encoder_layers=2,
                            n_decoder_layers=2, d_ff=64, dropout=0.0, max_len=64)  # fmt: skip
    return TransformerEncoderDecoder(cfg).eval()


def rnn(seed: int) -> RNNEncoderDecoder:
    torch.manual_seed(seed)
    cfg = RNNConfig(src_vocab_size=V, tgt_vocab_size=V, cell="gru", attention="bahdanau", embed_dim=16,
                    hidden_size=24, dropout=0.0)  # fmt: skip
    return RNNEncoderDecoder(cfg).eval()


def sources() -> torch.Tensor:
    torch.manual_seed(1)
    src = torch.randint(4, V, (5, 9))
    src[1, 6:] = 0  # padded rows too
    src[3, 4:] = 0
    return src


@pytest.mark.parametrize("build", [transformer, rnn])
def test_an_ensemble_of_one_model_is_that_model(build):
    model, src = build(0), sources()
    alone = beam_search(model, src, bos_id=1, eos_id=2, beam_size=4, max_len=12, alpha=0.6, n_best=2)
    ensemble = beam_search(EnsembleDecoder([model]), src, bos_id=1, eos_id=2, beam_size=4, max_len=12, alpha=0.6,
                           n_best=2)  # fmt: skip
    assert [[h.tokens for h in hyps] for hyps in ensemble] == [[h.tokens for h in hyps] for hyps in alone]
    for a, b in zip(alone, ensemble, strict=True):
        assert [h.score for h in b] == pytest.approx([h.score for h in a], abs=1e-5)
    tokens, log_prob = greedy_decode(model, src, bos_id=1, eos_id=2, max_len=12)
    e_tokens, e_log_prob = greedy_decode(EnsembleDecoder([model]), src, bos_id=1, eos_id=2, max_len=12)
    assert torch.equal(tokens, e_tokens)
    torch.testing.assert_close(e_log_prob, log_prob, atol=1e-5, rtol=0)


def test_the_ensemble_averages_the_members_log_probabilities():
    """Step by step, the ensemble's output is the mean of the members' log-softmaxes, through the
    caches (a Transformer beside a GRU: different memories and caches)."""
    members, src = [transformer(0), rnn(1)], sources()
    ensemble = EnsembleDecoder(members)
    memory, padding = ensemble.encode(src)
    cache = ensemble.new_cache()
    own = [(m, *m.encode(src), m.new_cache()) for m in members]
    tokens = torch.randint(4, V, (src.shape[0], 4))
    for t in range(tokens.shape[1]):
        got = ensemble.decode(tokens[:, t : t + 1], memory, padding, cache)
        expected = sum(m.decode(tokens[:, t : t + 1], mem, pad, c).log_softmax(-1) for m, mem, pad, c in own) / 2
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
