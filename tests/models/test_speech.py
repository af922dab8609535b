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
