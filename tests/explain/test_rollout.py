"""Aggregations: rollout, gradient × attention, input × gradient and the logit lens."""

import pytest
import torch

from heedful.explain.capture import capture
from heedful.explain.rollout import (
    attention_flow,
    attention_rollout,
    classifier_logit_lens,
    decoder_logit_lens,
    gradient_x_attention,
    head_importance,
    input_x_gradient,
)
from heedful.models.encoder_classifier import ClassifierConfig, EncoderClassifier
from heedful.models.transformer import TransformerConfig, TransformerEncoderDecoder

SMALL = {"d_model": 16, "n_heads": 2, "d_ff": 32, "dropout": 0.0, "max_len": 32}


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)  # (B, H, T, T): every token attends to itself
    for residual in (True, False):
        assert torch.equal(attention_rollout([eye, eye, eye], residual=residual), torch.eye(5).expand(2, 5, 5))


def test_rollout_multiplies_layers_with_the_residual():
    torch.manual_seed(0)
    layers = [torch.softmax(torch.randn(4, 6, 6), -1) for _ in range(3)]  # (H, T, T), one example
    expected = torch.eye(6)
    for a in layers:  # Abnar & Zuidema eq. 1, written out
        fused = 0.5 * a.mean(0) + 0.5 * torch.eye(6)
        expected = (fused / fused.sum(-1, keepdim=True)) @ expected
    rollout = attention_rollout(layers)
    torch.testing.assert_close(rollout, expected)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(6))  # rows stay distributions
    # uniform attention everywhere, no residual: every row uniform
    uniform = torch.full((1, 6, 6), 1 / 6)
    torch.testing.assert_close(attention_rollout([uniform, uniform], residual=False), torch.full((6, 6), 1 / 6))


def test_rollout_refuses_an_unknown_fusion():
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([torch.eye(3)[None]], head_fusion="median")


def _translator():
    torch.manual_seed(0)
    cfg = TransformerConfig(**SMALL, src_vocab_size=11, tgt_vocab_size=13, n_encoder_layers=2, n_decoder_layers=3)
    return TransformerEncoderDecoder(cfg).eval()


def _classifier(pooling="attention"):
    torch.manual_seed(0)
    encoder = TransformerConfig(**SMALL, n_encoder_layers=2, n_decoder_layers=0)
    cfg = ClassifierConfig(n_classes=3, vocab_size=20, encoder=encoder, pooling=pooling, dropout=0.0)
    return EncoderClassifier(cfg).eval()


def test_logit_lens_of_the_last_decoder_layer_is_the_models_prediction():
    model = _translator()
    src, tgt_in = torch.randint(4, 11, (2, 7)), torch.randint(4, 13, (2, 5))
    lens = decoder_logit_lens(model, src, tgt_in)
    assert len(lens) == 3 and all(x.shape == (2, 5, 13) for x in lens)
    with torch.no_grad():
        logits = model(src, tgt_in)
    torch.testing.assert_close(lens[-1], logits, rtol=0, atol=0)
    assert not torch.allclose(lens[0], logits)  # earlier layers are read, not the output again


@pytest.mark.parametrize("pooling", ["attention", "cls", "mean"])
def test_logit_lens_of_the_last_classifier_layer_is_the_models_prediction(pooling):
    model = _classifier(pooling)
    tokens = torch.tensor([[5, 6, 7, 8, 9], [5, 10, 11, 0, 0]])
    lens = classifier_logit_lens(model, tokens)
    with torch.no_grad():
        logits = model(tokens)
    assert len(lens) == 2
    torch.testing.assert_close(lens[-1], logits, rtol=0, atol=0)
    assert torch.equal(lens[-1].argmax(-1), logits.argmax(-1))


def test_gradient_x_attention_is_attention_times_its_gradient():
    model = _classifier()
    tokens = torch.tensor([[5, 6, 7, 8, 9], [5, 10, 11, 0, 0]])
    with torch.no_grad():
        predicted = model(tokens).argmax(-1)

    def score():
        return model(tokens).gather(1, predicted[:, None])[:, 0]  # (B,)

    maps = gradient_x_attention(model, score)
    assert set(maps) == {"encoder.layers.0.self_attn", "encoder.layers.1.self_attn", "pool.attn"}
    # reference: the same product by hand for one module
    with torch.enable_grad(), capture(model, detach=False) as seen:
        y = score()
        a = seen["encoder.layers.1.self_attn"]
        (g,) = torch.autograd.grad(y.sum(), a)
    torch.testing.assert_close(maps["encoder.layers.1.self_attn"], (a * g).clamp_min(0).mean(1).detach())
    assert maps["encoder.layers.1.self_attn"].shape == (2, 5, 5)
    assert maps["encoder.layers.1.self_attn"][1, :, 3:].abs().sum() == 0  # padding gets nothing


def test_input_x_gradient_of_a_linear_score_is_exact():
    emb = torch.nn.Embedding(10, 4)
    w = torch.randn(4)
    tokens = torch.tensor([[1, 2, 3]])
    scores = input_x_gradient(emb, lambda: (emb(tokens) @ w).sum(-1))  # y = Σ_t e_t · w: ∂y/∂e_t = w
    torch.testing.assert_close(scores, (emb.weight[tokens] @ w).detach())


def test_input_x_gradient_of_a_shared_embedding_takes_the_call_asked_for():
    """One matrix embeds source and target (shared embeddings): the source is its first call."""
    emb = torch.nn.Embedding(10, 4)
    w, v = torch.randn(4), torch.randn(4)
    src, tgt = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]])

    def score():
        return (emb(src) @ w).sum(-1) + (emb(tgt) @ v).sum(-1)

    with pytest.raises(ValueError, match="ran 2 times"):
        input_x_gradient(emb, score)
    torch.testing.assert_close(input_x_gradient(emb, score, call=0), (emb.weight[src] @ w).detach())
    torch.testing.assert_close(input_x_gradient(emb, score, call=1), (emb.weight[tgt] @ v).detach())
    with pytest.raises(ValueError, match="no call 2"):
        input_x_gradient(emb, score, call=2)


def test_head_importance_is_the_drop_when_a_head_is_silenced():
    model = _translator()
    src, tgt_in = torch.randint(4, 11, (2, 7)), torch.randint(4, 13, (2, 5))

    def score():
        return model(src, tgt_in).log_softmax(-1)[..., 4].mean(-1)  # (B,)

    importance = head_importance(model, score)
    assert len(importance) == 2 * 1 + 3 * 2 and all(v.shape == (2,) for v in importance.values())
    # reference: silence head 1 of the last decoder layer's cross-attention by zeroing its
    # columns of out_proj (the same thing done to the weights instead of the activations)
    name = "decoder.layers.2.cross_attn"
    module = model.get_submodule(name)
    with torch.no_grad():
        base = float(score().mean())
        saved = module.out_proj.weight.clone()
        module.out_proj.weight[:, module.d_head :] = 0
        expected = base - float(score().mean())
        module.out_proj.weight.copy_(saved)
    assert importance[name][1] == pytest.approx(expected, abs=1e-5)
    with torch.no_grad():
        assert float(score().mean()) == pytest.approx(base)  # every hook is gone


def test_attention_flow_has_the_known_answers():
    eye = torch.eye(4)[None]  # (H, T, T)
    torch.testing.assert_close(attention_flow([eye, eye, eye]), torch.eye(4))
    torch.manual_seed(1)
    a1, a2 = (torch.softmax(torch.randn(2, 5, 5), -1) for _ in range(2))  # (H, T, T)
    # one layer: the flow from j to i is the edge itself
    torch.testing.assert_close(attention_flow([a1], residual=False), a1.mean(0))
    # two layers: the paths j -> k -> i share no edge, so the flow is Σ_k min(A2[i, k], A1[k, j])
    m1, m2 = a1.mean(0), a2.mean(0)
    expected = torch.minimum(m2[:, :, None], m1[None, :, :]).sum(1)  # (T_i, T_j)
    torch.testing.assert_close(attention_flow([a1, a2], residual=False), expected)
