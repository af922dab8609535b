"""Score functions and the masked softmax: values, gradients, and masked rows."""

import math

import pytest
import torch

from heedful.attention import (
    AdditiveScore,
    DotScore,
    GeneralScore,
    MultiHeadAttention,
    ScaledDotScore,
    masked_softmax,
)

D = 6


def make_score(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    score = {
        "dot": DotScore,
        "scaled_dot": ScaledDotScore,
        "general": lambda: GeneralScore(D),
        "additive": lambda: AdditiveScore(D, d_attn=5),
    }[name]()
    return score.double()


SCORE_NAMES = ["dot", "scaled_dot", "general", "additive"]


def qk(batch=2, t_q=3, t_k=4, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(batch, t_q, D, generator=g, dtype=torch.float64, requires_grad=requires_grad)
    k = torch.randn(batch, t_k, D, generator=g, dtype=torch.float64, requires_grad=requires_grad)
    return q, k


def key_mask():
    # (B, 1, T_k): batch 0 sees keys 0-2, batch 1 sees keys 0 and 3.
    return torch.tensor([[[1, 1, 1, 0]], [[1, 0, 0, 1]]], dtype=torch.bool)


# ------------------------------------------------------------------------------------- values
def test_score_values_follow_their_equations():
    q, k = qk()
    dot, scaled = make_score("dot"), make_score("scaled_dot")
    general, additive = make_score("general"), make_score("additive")
    for b in range(2):
        for i in range(3):
            for j in range(4):
                qi, kj = q[b, i], k[b, j]
                assert torch.allclose(dot.score(q, k)[b, i, j], qi @ kj)
                assert torch.allclose(scaled.score(q, k)[b, i, j], qi @ kj / math.sqrt(D))
                assert torch.allclose(general.score(q, k)[b, i, j], qi @ general.W.weight.T @ kj)
                hidden = torch.tanh(additive.W.weight @ qi + additive.U.weight @ kj + additive.U.bias)
                assert torch.allclose(additive.score(q, k)[b, i, j], additive.v.weight[0] @ hidden)


def test_scaled_dot_explicit_scale():
    q, k = qk()
    assert torch.allclose(ScaledDotScore(scale=0.25).score(q, k), 0.25 * (q @ k.transpose(-2, -1)))


def test_fused_scale_matches_the_math():
    # The scale handed to the fused kernel must be the one the score uses (None = 1/sqrt(d)).
    assert DotScore.fused_scale == 1.0 and DotScore.fusable
    assert ScaledDotScore().fused_scale is None and ScaledDotScore().fusable
    assert not GeneralScore(D).fusable and not AdditiveScore(D).fusable


# ------------------------------------------------------------------------------ distributions
@pytest.mark.parametrize("name", SCORE_NAMES)
def test_weights_sum_to_one_over_unmasked_keys(name):
    score = make_score(name)
    q, k = qk()
    weights = score(q, k)
    assert weights.shape == (2, 3, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    mask = key_mask()
    weights = score(q, k, mask)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    assert torch.all(weights.masked_select(~mask.expand_as(weights)) == 0)
    assert torch.all(weights.masked_select(mask.expand_as(weights)) > 0)


@pytest.mark.parametrize("name", SCORE_NAMES)
def test_fully_masked_rows_are_zero_not_nan(name):
    score = make_score(name)
    q, k = qk(requires_grad=True)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 1] = False  # query 1 of batch 0 may attend nothing
    mask[1] = False  # nothing in batch 1 may be attended
    weights = score(q, k, mask)
    assert torch.isfinite(weights).all()
    assert torch.equal(weights[0, 1], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(weights[1], torch.zeros(3, 4, dtype=torch.float64))
    assert torch.allclose(weights[0, [0, 2]].sum(-1), torch.ones(2, dtype=torch.float64))
    (weights * torch.randn_like(weights)).sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert torch.equal(q.grad[1], torch.zeros_like(q.grad[1]))  # a fully-masked query learns nothing


@pytest.mark.parametrize("name", SCORE_NAMES)
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(name, masked):
    score = make_score(name)
    q, k = qk(requires_grad=True)
    mask = key_mask() if masked else None
    assert torch.autograd.gradcheck(lambda q, k: score(q, k, mask), (q, k))


@pytest.mark.parametrize("name", ["general", "additive"])
def test_gradcheck_parameters(name):
    score = make_score(name)
    q, k = qk()
    params = dict(score.named_parameters())

    def weights(*values):
        return torch.func.functional_call(score, dict(zip(params, values, strict=True)), (q, k, key_mask()))

    leaves = tuple(p.detach().clone().requires_grad_() for p in params.values())
    assert torch.autograd.gradcheck(weights, leaves)


# -------------------------------------------------------------------------------- masked_softmax
def test_masked_softmax_without_mask_is_softmax():
    scores = torch.randn(2, 3, 5, dtype=torch.float64)
    assert torch.allclose(masked_softmax(scores), torch.softmax(scores, -1))


def test_masked_softmax_renormalises_over_allowed_keys():
    scores = torch.randn(2, 3, 5, dtype=torch.float64)
    mask = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)
    weights = masked_softmax(scores, mask)
    expected = torch.zeros_like(scores)
    expected[..., mask] = torch.softmax(scores[..., mask], -1)
    assert torch.allclose(weights, expected)


def test_masked_softmax_adds_the_bias_before_normalising():
    scores = torch.randn(2, 3, 5, dtype=torch.float64)
    bias = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)
    assert torch.allclose(masked_softmax(scores, mask, bias), masked_softmax(scores + bias, mask))
    assert torch.allclose(masked_softmax(scores, None, bias), torch.softmax(scores + bias, -1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_masked_softmax_fully_masked_rows(dtype):
    scores = torch.randn(2, 3, 4, dtype=torch.float64).to(dtype).requires_grad_()
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[1, 2] = False
    weights = masked_softmax(scores, mask)
    assert torch.isfinite(weights).all()
    assert not weights[1, 2].any()
    weights.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_masked_softmax_with_a_mask_wider_than_the_scores_takes_the_masks_shape():
    """Scores shared by every head, a mask per head: the weights are per head (no in-place write
    into the narrower scores), and equal to masking each copy of the scores."""
    scores = torch.randn(2, 1, 3, 4, dtype=torch.float64)  # (B, 1, T_q, T_k)
    mask = torch.rand(2, 5, 3, 4) > 0.3  # (B, H, T_q, T_k)
    mask[..., 0] = True
    mask[1, 3, 2] = False  # one head's query sees no key: its weights are zeros, the others' not
    weights = masked_softmax(scores, mask)
    assert weights.shape == (2, 5, 3, 4)
    assert torch.allclose(weights, masked_softmax(scores.expand(2, 5, 3, 4).clone(), mask))
    assert not weights[1, 3, 2].any() and weights[1, 2, 2].sum() == pytest.approx(1.0)
    rows = torch.ones(2, 5, 3, dtype=torch.float64)
    rows[1, 3, 2] = 0.0
    assert torch.allclose(weights.sum(-1), rows)


def test_masked_softmax_gradcheck():
    scores = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda s, b: masked_softmax(s, mask, b), (scores, bias))


def reference_masked_softmax(scores, mask):
    """The definition, in plain autograd ops."""
    return torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=-1) * mask


@pytest.mark.parametrize("mask_shape", [(2, 3, 4), (2, 1, 4), (4,)])
def test_masked_softmax_values_and_gradients_match_the_definition(mask_shape):
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(mask_shape, generator=g) > 0.4
    mask.view(-1)[:1] = False
    scores = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    grad = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    ours = masked_softmax(scores, mask)
    (ours_grad,) = torch.autograd.grad(ours, scores, grad)
    reference = reference_masked_softmax(scores, mask)
    (reference_grad,) = torch.autograd.grad(reference, scores, grad)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours_grad, reference_grad)
    with torch.no_grad():  # the no-grad path gives the same weights
        torch.testing.assert_close(masked_softmax(scores, mask), reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_short_rows_padded_for_the_cpu_kernel_give_each_rows_own_softmax(dtype):
    """Rows shorter than a SIMD vector are padded with −inf before torch's softmax (its short-row
    path is ten times slower); the weights and their gradients are still each row's own."""
    from heedful.attention.scores import _short_row_padding

    assert _short_row_padding(torch.zeros(4, 14, dtype=dtype)) > 0  # the padded path is among those tested
    g = torch.Generator().manual_seed(5)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    for length in (1, 2, 5, 8, 14, 15, 16, 31, 33):
        scores = torch.randn(3, 5, length, generator=g).to(dtype).requires_grad_()
        mask = torch.rand(3, 1, length, generator=g) > 0.3
        mask[..., 0] = True
        grad = torch.randn(3, 5, length, generator=g).to(dtype)
        exact = scores.detach().double().requires_grad_()
        for ours, reference in (
            (masked_softmax(scores, mask), reference_masked_softmax(exact, mask)),
            (masked_softmax(scores), torch.softmax(exact, dim=-1)),
        ):
            (ours_grad,) = torch.autograd.grad(ours, scores, grad)
            (reference_grad,) = torch.autograd.grad(reference, exact, grad.double())
            torch.testing.assert_close(ours.double(), reference, **tolerance)
            torch.testing.assert_close(ours_grad.double(), reference_grad, **tolerance)
        with torch.no_grad():
            expected = reference_masked_softmax(exact, mask)
            torch.testing.assert_close(masked_softmax(scores, mask).double(), expected, **tolerance)


def test_masked_softmax_second_derivatives():
    scores = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.autograd.gradgradcheck(lambda s: masked_softmax(s, mask), (scores,))


def test_masked_softmax_broadcasting_beyond_the_scores():
    # A mask with more dimensions than the scores: the weights take the broadcast shape.
    scores = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[1, :, 0] = False
    weights = masked_softmax(scores, mask)
    assert weights.shape == (2, 3, 4)
    torch.testing.assert_close(weights, reference_masked_softmax(scores, mask))
    assert torch.autograd.gradcheck(lambda s: masked_softmax(s, mask), (scores,))


# ----------------------------------------------------------------------------- inside attention
def test_unknown_score_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown attention score 'cosine'.*scaled_dot.*additive"):
        MultiHeadAttention(8, 2, score="cosine")


@pytest.mark.parametrize("name", SCORE_NAMES)
def test_scores_by_name_inside_multihead_attention(name):
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2, score=name).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out = attn(x, key_padding_mask=keep, need_weights=True)
    assert out.output.shape == (2, 5, 8)
    assert out.weights.shape == (2, 2, 5, 5)
    assert torch.allclose(out.weights.sum(-1), torch.ones(2, 2, 5, dtype=torch.float64))
    assert not out.weights[1, ..., 3:].any()
