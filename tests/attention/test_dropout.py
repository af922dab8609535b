"""The uniform-draw dropout: the keep rate and scale of nn.Dropout, identity in eval mode; ReLU and
dropout folded into one mask."""

import pytest
import torch
import torch.nn.functional as F

from heedful.attention.dropout import Dropout, dropout, keep_mask, relu_dropout
from heedful.models.transformer import FeedForward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keeps_one_minus_p_and_scales_like_nn_dropout(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(200_000, dtype=dtype)
    y = dropout(x, p, training=True)
    assert y.dtype == dtype
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    # 1 / (1 − p′), p′ = p to a sixteenth bit, rounded to the dtype as a float mask multiplied by it would be
    scale = 1 / (1 - round(p * 65_536) / 65_536)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], scale), rtol=0, atol=0)
    assert abs(y.float().mean().item() - 1.0) < 0.01  # unbiased, as nn.Dropout


def test_eval_mode_and_zero_p_are_the_identity_and_gradients_flow_through_kept_units():
    layer = Dropout(0.3)
    x = torch.randn(4, 5, requires_grad=True)
    assert torch.equal(layer.eval()(x), x) and torch.equal(dropout(x, 0.0, True), x)
    y = layer.train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.7)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_every_int16_lane_of_the_random_words_keeps_at_the_same_rate():
    """Four elements share one 64-bit draw; a biased lane (say a sign bit that is never set) would
    keep every fourth element at another rate."""
    torch.manual_seed(0)
    keep, rate = keep_mask((400_000,), 0.5)
    assert rate == 0.5
    per_lane = keep.view(-1, 4).float().mean(0)  # (4,)
    assert torch.all((per_lane - 0.5).abs() < 0.005), per_lane


def test_keep_rate_is_p_rounded_to_a_sixteenth_bit_and_the_masks_follow_the_seed():
    _, rate = keep_mask((10,), 0.2)
    assert rate == 1 - 13_107 / 65_536 and abs(rate - 0.8) < 2**-17
    assert keep_mask((3,), 0.999999)[1] == 1 / 65_536  # p < 1 always keeps something
    keep, rate = keep_mask((5,), 1e-7)  # p rounds to 0: everything kept
    assert rate == 1.0 and torch.equal(keep, torch.ones(5, dtype=torch.int16))
    torch.manual_seed(5)
    first = keep_mask((1000,), 0.3)[0]
    torch.manual_seed(5)
    assert torch.equal(first, keep_mask((1000,), 0.3)[0])


def test_successive_masks_are_unrelated_draws():
    """Each call seeds its words from torch's generator, which moves on: a seed repeated (or one
    fixed stream) would give equal or shifted masks."""
    from heedful.attention.dropout import random_words

    torch.manual_seed(0)
    a, b = random_words(1000), random_words(1000)
    assert not torch.equal(a, b) and not torch.equal(a[1:], b[:-1])
    assert (a == b).float().mean() < 0.01
    bits = torch.stack([(a >> k) & 1 for k in range(64)])  # (64, 1000): every bit position is random
    assert torch.all((bits.float().mean(1) - 0.5).abs() < 0.08), bits.float().mean(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_relu_dropout_is_relu_then_dropout_with_the_same_mask_forward_and_backward(dtype):
    """One mask holds ReLU's gate and dropout's: equal, to the bit, to ReLU then dropout drawing the
    same mask (the same seed), and so is the gradient — zeros, negative zero and denormals included."""
    torch.manual_seed(1)
    x = torch.randn(64, 257).to(dtype)
    x[0, :4] = torch.tensor([0.0, -0.0, torch.finfo(dtype).tiny / 4, -torch.finfo(dtype).tiny / 4], dtype=dtype)
    grad = torch.randn(64, 257).to(dtype)
    results = []
    for fused in (True, False):
        torch.manual_seed(7)
        leaf = x.clone().requires_grad_()
        y = relu_dropout(leaf, 0.3, True) if fused else dropout(F.relu(leaf), 0.3, True)
        y.backward(grad)
        results.append((y.detach(), leaf.grad))
    (y, g), (want_y, want_g) = results
    assert y.dtype == dtype and torch.equal(y, want_y) and torch.equal(g, want_g)
    assert 0.6 < (y != 0).float().sum().item() / (x > 0).float().sum().item() < 0.8  # 70 % of the positives kept
    assert y[0, 2] != 0 or (y[0, 2] == 0 and g[0, 2] == 0)  # a positive denormal passes the gate like any positive
    torch.testing.assert_close(relu_dropout(x, 0.3, False), F.relu(x), rtol=0, atol=0)  # eval: ReLU alone


def test_the_feed_forward_takes_relu_dropout_and_gelu_keeps_its_own_dropout():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    for activation, act in (("relu", F.relu), ("gelu", F.gelu)):
        ff = FeedForward(16, 32, 0.4, activation).train()
        torch.manual_seed(3)
        got = ff(x)
        torch.manual_seed(3)
        want = ff.linear2(dropout(act(ff.linear1(x)), 0.4, True))
        assert torch.equal(got, want), activation
        ff.eval()
        torch.testing.assert_close(ff(x), ff.linear2(act(ff.linear1(x))), rtol=0, atol=0)
