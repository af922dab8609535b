"""RNN encoder–decoders: step-by-step decoding equals the full pass, padding changes nothing,
beam search of size 1 is greedy, the attention is captured and sums to one, round trips."""

import pytest
import torch

from heedful.decode import beam_search, greedy_decode
from heedful.explain import capture
from heedful.models import RNNConfig, RNNEncoderDecoder, load_pretrained

PAD, BOS, EOS = 0, 1, 2
KINDS = [(cell, attention) for cell in ("gru", "lstm") for attention in ("none", "bahdanau", "luong_general")] + [
    ("gru", "luong_dot")
]
IDS = [f"{c}-{a}" for c, a in KINDS]


def model(cell="gru", attention="bahdanau", **extra):
    torch.manual_seed(0)
    cfg = RNNConfig(
        src_vocab_size=23, tgt_vocab_size=19, cell=cell, attention=attention, embed_dim=12, hidden_size=16, **extra
    )
    return RNNEncoderDecoder(cfg).eval()


def sources():
    torch.manual_seed(1)
    src = torch.randint(3, 23, (3, 7))
    src[1, 5:] = PAD  # rows of different lengths
    src[2, 3:] = PAD
    return src


@pytest.mark.parametrize(("cell", "attention"), KINDS, ids=IDS)
def test_decoding_step_by_step_with_the_cache_equals_the_full_pass(cell, attention):
    m, src = model(cell, attention, n_decoder_layers=2), sources()
    tgt = torch.randint(3, 19, (3, 6))
    full = m(src, tgt)  # (B, T, V)
    memory, padding = m.encode(src)
    cache = m.new_cache()
    steps = [m.decode(tgt[:, t : t + 1], memory, padding, cache) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cell", "attention"), KINDS, ids=IDS)
def test_padding_changes_nothing(cell, attention):
    m = model(cell, attention, n_encoder_layers=2)
    src, tgt = sources(), torch.randint(3, 19, (3, 5))
    batched = m(src, tgt)
    for row, length in enumerate((7, 5, 3)):
        alone = m(src[row : row + 1, :length], tgt[row : row + 1])
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cell", "attention"), KINDS, ids=IDS)
def test_beam_of_one_is_greedy(cell, attention):
    m, src = model(cell, attention), sources()
    tokens, log_prob = greedy_decode(m, src, bos_id=BOS, eos_id=EOS, max_len=9)
    hyps = beam_search(m, src, bos_id=BOS, eos_id=EOS, beam_size=1, max_len=9, alpha=0.0)
    for row, (best,) in enumerate(hyps):
        greedy = [t for t in tokens[row].tolist() if t not in (PAD, EOS)]
        assert best.tokens == greedy
        assert best.log_prob == pytest.approx(float(log_prob[row]), abs=1e-4)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_cross_attention_is_captured_sums_to_one_and_skips_padding(attention):
    m, src = model(attention=attention), sources()
    tgt = torch.randint(3, 19, (3, 4))
    with capture(m) as seen:
        m(src, tgt)
    weights = torch.cat(seen.calls("decoder.cross_attn"), dim=-2)  # (B, 1, T, S)
    assert weights.shape == (3, 1, 4, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 1, 4))
    assert weights[1, :, :, 5:].abs().max() == 0 and weights[2, :, :, 3:].abs().max() == 0
    assert m.cross_attention_name() == "decoder.cross_attn"
    assert model(attention="none").cross_attention_name() is None


def test_the_hidden_size_must_be_even_to_split_between_the_two_directions():
    with pytest.raises(ValueError, match="multiple of 2"):
        RNNConfig(hidden_size=15)


def test_save_and_load_round_trip(tmp_path):
    m = model("lstm", "luong_general", share_embeddings=False)
    m.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded, RNNEncoderDecoder) and loaded.config == m.config
    src, tgt = sources(), torch.randint(3, 19, (3, 5))
    torch.testing.assert_close(loaded(src, tgt), m(src, tgt))


def test_tied_output_is_the_target_embedding():
    m = model()
    assert m.decoder.output.weight is m.decoder.embedding.weight
    shared = RNNEncoderDecoder(RNNConfig(src_vocab_size=19, tgt_vocab_size=19, share_embeddings=True, hidden_size=8))
    assert shared.encoder.embedding is shared.decoder.embedding


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_keep_returns_exactly_the_kept_positions_logits(attention):
    m, src = model(attention=attention), sources()
    tgt = torch.randint(3, 19, (3, 5))
    keep = torch.rand(3, 5) > 0.4
    torch.testing.assert_close(m(src, tgt, keep=keep), m(src, tgt)[keep])
