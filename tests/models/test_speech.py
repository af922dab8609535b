import pytest
import torch

from heedful.explain import capture
from heedful.models import load_pretrained
from heedful.models.speech import SpeechConfig, SpeechModel, matching_gru_hidden


def features():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 101, 40, generator=g), torch.tensor([101, 80, 33])


@pytest.mark.parametrize("encoder", ["attention", "bigru", "none"])
@pytest.mark.parametrize("head", ["classify", "ctc"])
def test_shapes_and_padding_invariance(encoder, head):
    torch.manual_seed(0)
    model = SpeechModel(SpeechConfig(encoder=encoder, head=head, n_layers=2)).eval()
    x, lengths = features()
    out, frames = model(x, lengths)
    assert frames.tolist() == [26, 20, 9]  # two stride-2 blocks: ⌊(T−1)/2⌋+1 twice
    assert out.shape == ((3, 10) if head == "classify" else (3, 26, 11))
    # Other padding content and more of it change nothing, and batching changes nothing.
    wider = torch.cat([x, torch.randn(3, 17, 40)], dim=1)
    wider[1, 80:] = 7.0
    out2, _ = model(wider, lengths)
    alone, _ = model(x[2:3, :33], lengths[2:3])
    if head == "classify":
        torch.testing.assert_close(out2, out, atol=1e-5, rtol=0)
        torch.testing.assert_close(alone[0], out[2], atol=1e-5, rtol=0)
    else:
        for i, n in enumerate(frames.tolist()):
            torch.testing.assert_close(out2[i, :n], out[i, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone[0, :9], out[2, :9], atol=1e-5, rtol=0)


def test_attention_pooling_is_a_softmax_weighted_mean_of_real_frames():
    torch.manual_seed(0)
    model = SpeechModel(SpeechConfig(n_layers=2, pooling="attention")).eval()
    x, lengths = features()
    out, _ = model(x, lengths)
    wider = torch.cat([x, torch.randn(3, 17, 40)], dim=1)
    wider[1, 80:] = 7.0
    torch.testing.assert_close(model(wider, lengths)[0], out, atol=1e-5, rtol=0)  # padding ignored
    # By hand: additive scores of the learned query over the real frames, softmax, weighted mean.
    states, frames, mask = model.encode(x, lengths)  # (B, T', D)
    attn = model.pool.attn
    query = model.pool.query.expand(3, -1, -1)  # (B, 1, D)
    _, weights = attn(query, states, mask)  # (B, 1, T')
    assert torch.all(weights[:, 0][~mask] == 0)  # padded frames get no weight
    torch.testing.assert_close(weights[:, 0].sum(-1), torch.ones(3))
    by_hand = torch.einsum("bt,btd->bd", weights[:, 0], states)  # (B, D)
    torch.testing.assert_close(model.head(by_hand), out, atol=1e-5, rtol=0)
    # Mean pooling is a different model: the same weights but the pool give other logits.
    assert not torch.allclose(model.head(states.mul(mask[..., None]).sum(1) / frames[:, None]), out, atol=1e-3)
    with pytest.raises(ValueError, match="pooling applies to head 'classify'"):
        SpeechConfig(pooling="attention", head="ctc")


def test_bigru_matches_the_attention_encoders_size():
    def encoder_params(model):
        return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("front", "head")))

    for n_layers in (2, 3):
        attention = SpeechModel(SpeechConfig(encoder="attention", n_layers=n_layers))
        bigru = SpeechModel(SpeechConfig(encoder="bigru", n_layers=n_layers))
        assert bigru.gru.hidden_size == matching_gru_hidden(bigru.config)
        assert abs(encoder_params(bigru) / encoder_params(attention) - 1) < 0.03


def test_capture_sees_frame_self_attention_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SpeechModel(SpeechConfig(n_layers=2, position="relative")).eval()
    x, lengths = features()
    plain, _ = model(x, lengths)
    with capture(model) as seen:
        captured, _ = model(x, lengths)
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=0)
    assert {k: tuple(v.shape) for k, v in seen.items()} == {
        "layers.0.self_attn": (3, 4, 26, 26),
        "layers.1.self_attn": (3, 4, 26, 26),
    }
    assert seen["layers.1.self_attn"][2, :, :, 9:].abs().max() == 0  # no attention to padded frames
    model.save_pretrained(tmp_path)
    assert torch.equal(load_pretrained(tmp_path).eval()(x, lengths)[0], plain)
