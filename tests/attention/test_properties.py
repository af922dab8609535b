"""Properties of the attention core over random shapes, masks, biases and positions (hypothesis).

What the core promises (docs/ARCHITECTURE.md, "Attention"): masked keys get zero weight; a row
with any allowed key sums to 1; a row with none gives zero weights and a zero context on both
paths; the fused and the math path agree; decoding with a KV cache, one token or a chunk at a
time, equals attending over the whole sequence at once. Example counts are bounded (and the
shapes tiny) so the module runs in seconds; ``derandomize`` makes every run draw the same cases.
"""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heedful.attention import AdditiveScore, Attend, DotScore, GeneralScore, KVCache, MultiHeadAttention, ScaledDotScore
from heedful.attention.positions import build_attention_positions

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)
TOL = {"atol": 2e-5, "rtol": 2e-5}


@st.composite
def attention_inputs(draw, *, bias: bool = True):
    """q (B, H, T_q, D), k, v (B, H, T_k, D), a key padding mask (B, T_k) or None, an attention
    mask (T_q, T_k) or (B, T_q, T_k) or None (True = may attend), is_causal, and a float bias
    (1|B, H, T_q, T_k) or None. Masks are drawn freely, so some rows have no allowed key."""
    b, h = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    t_q, t_k, d = draw(st.integers(1, 6)), draw(st.integers(1, 7)), draw(st.sampled_from([1, 2, 4, 8]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q, k, v = (torch.randn(b, h, t, d, generator=g) for t in (t_q, t_k, t_k))
    density = draw(st.floats(0.0, 1.0))  # 0: everything masked, 1: nothing
    padding = torch.rand(b, t_k, generator=g) < density if draw(st.booleans()) else None
    shape = draw(st.sampled_from([None, (t_q, t_k), (b, t_q, t_k)]))
    attn_mask = None if shape is None else torch.rand(*shape, generator=g) < density
    is_causal = draw(st.booleans())
    biased = bias and draw(st.booleans())
    bias_tensor = torch.randn(draw(st.sampled_from([1, b])), h, t_q, t_k, generator=g) if biased else None
    return q, k, v, {"key_padding_mask": padding, "attn_mask": attn_mask, "is_causal": is_causal, "bias": bias_tensor}


def allowed(masks: dict, b: int, h: int, t_q: int, t_k: int) -> torch.Tensor:
    """The keys each query may attend to, (B, H, T_q, T_k), written out independently of the core:
    causal is aligned bottom-right (query i sees keys up to i + T_k − T_q)."""
    keep = torch.ones(b, h, t_q, t_k, dtype=torch.bool)
    if masks["key_padding_mask"] is not None:
        keep &= masks["key_padding_mask"][:, None, None, :]
    if masks["attn_mask"] is not None:
        mask = masks["attn_mask"]
        keep &= mask[None, None] if mask.dim() == 2 else mask[:, None]
    if masks["is_causal"] and t_q > 1:
        i, j = torch.arange(t_q)[:, None], torch.arange(t_k)[None, :]
        keep &= j <= i + (t_k - t_q)
    return keep


SCORES = {
    "dot": lambda d: DotScore(),
    "scaled_dot": lambda d: ScaledDotScore(),
    "general": lambda d: GeneralScore(d),
    "additive": lambda d: AdditiveScore(d),
}


@SETTINGS
@given(inputs=attention_inputs(), score=st.sampled_from(list(SCORES)))
def test_weights_are_zero_where_masked_and_rows_sum_to_one(inputs, score):
    q, k, v, masks = inputs
    torch.manual_seed(0)
    attend = Attend(SCORES[score](q.shape[-1]), path="math").eval()
    context, weights = attend(q, k, v, need_weights=True, **masks)
    keep = allowed(masks, q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    assert weights.shape == keep.shape and torch.isfinite(weights).all()
    assert (weights[~keep] == 0).all()  # exactly zero, not merely small
    any_key = keep.any(-1)  # (B, H, T_q)
    sums = weights.sum(-1)
    torch.testing.assert_close(sums[any_key], torch.ones_like(sums[any_key]), **TOL)
    assert (weights[~any_key] == 0).all() and (context[~any_key] == 0).all()  # fully masked rows: zeros
    torch.testing.assert_close(context, weights @ v, **TOL)


@SETTINGS
@given(inputs=attention_inputs(), score=st.sampled_from(["dot", "scaled_dot"]))
def test_the_fused_and_the_math_path_agree(inputs, score):
    q, k, v, masks = inputs
    fused, _ = Attend(SCORES[score](q.shape[-1]), path="fused")(q, k, v, **masks)
    math, _ = Attend(SCORES[score](q.shape[-1]), path="math")(q, k, v, **masks)
    assert torch.isfinite(fused).all()  # fully masked rows give zeros there too, not NaN
    torch.testing.assert_close(fused, math, **TOL)


@st.composite
def decoding_inputs(draw):
    """A self-attention module (positions none | rope | alibi | relative; fused | math), a sequence
    (B, T, D), a key padding mask that keeps each sequence's first key, and chunk boundaries."""
    position, path = (
        draw(st.sampled_from(["none", "rope", "alibi", "relative"])),
        draw(st.sampled_from(["fused", "math"])),
    )
    b, t, h = draw(st.integers(1, 3)), draw(st.integers(1, 10)), draw(st.sampled_from([1, 2, 4]))
    d = h * draw(st.sampled_from([2, 4]))
    cuts = sorted(draw(st.sets(st.integers(1, t - 1), max_size=t - 1))) if t > 1 else []
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    padding = torch.rand(b, t, generator=g) < 0.8 if draw(st.booleans()) else None
    if padding is not None:
        padding[:, 0] = True  # every query then has a key (causal: at least the first)
    torch.manual_seed(draw(st.integers(0, 1000)))
    pos = build_attention_positions(position, h, d // h, max_len=32, max_distance=3)
    attn = MultiHeadAttention(d, h, position=pos, path=path).eval()
    with torch.no_grad():
        for p in attn.parameters():
            if p.dim() == 1:
                p.normal_(std=0.1)
    return attn, torch.randn(b, t, d, generator=g), padding, [0, *cuts, t]


@SETTINGS
@given(inputs=decoding_inputs())
def test_cached_decoding_in_chunks_equals_attending_over_the_whole_sequence(inputs):
    attn, x, padding, bounds = inputs
    full = attn(x, key_padding_mask=padding, is_causal=True).output
    cache, outputs = KVCache(), []
    for start, end in itertools.pairwise(bounds):
        keep = None if padding is None else padding[:, :end]  # every key so far, as decoding sees them
        outputs.append(attn(x[:, start:end], key_padding_mask=keep, is_causal=True, cache=cache).output)
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, **TOL)
    assert cache.length == x.shape[1]


@pytest.mark.parametrize("path", ["fused", "math"])
def test_a_row_with_every_key_masked_gives_a_zero_context(path):
    """The promise the properties above test at random, once by hand."""
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    context, _ = Attend(ScaledDotScore(), path=path)(q, k, v, attn_mask=mask)
    assert torch.equal(context[0, 0, 1], torch.zeros(4)) and context[0, 0, 0].abs().sum() > 0
