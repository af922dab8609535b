"""Masks: one convention (True = may attend), shapes that broadcast to (B, H, T_q, T_k)."""

import pytest
import torch

from heedful.attention import MultiHeadAttention, causal_mask, combine_masks, lengths_mask, padding_mask
from heedful.attention.masks import as_4d, attn_mask_to_4d, key_padding_to_4d


def test_padding_mask_marks_real_tokens():
    tokens = torch.tensor([[5, 6, 0, 0], [7, 0, 8, 0]])
    mask = padding_mask(tokens, pad_id=0)
    assert mask.shape == (2, 1, 1, 4) and mask.dtype == torch.bool
    expected = torch.tensor([[True, True, False, False], [True, False, True, False]])
    assert torch.equal(mask[:, 0, 0], expected)


def test_lengths_mask_default_and_explicit_length():
    lengths = torch.tensor([3, 1, 2])
    mask = lengths_mask(lengths)
    assert mask.shape == (3, 1, 1, 3)
    expected = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    assert torch.equal(mask[:, 0, 0], expected)
    wide = lengths_mask(lengths, max_len=5)
    assert wide.shape == (3, 1, 1, 5)
    assert torch.equal(wide[:, 0, 0, :3], expected) and not wide[..., 3:].any()


def test_padding_and_lengths_masks_agree():
    tokens = torch.tensor([[4, 4, 4, 0], [4, 4, 0, 0]])
    assert torch.equal(padding_mask(tokens, 0), lengths_mask(torch.tensor([3, 2]), max_len=4))


def test_causal_mask_square_is_lower_triangular():
    mask = causal_mask(4)
    assert mask.shape == (4, 4) and mask.dtype == torch.bool
    assert torch.equal(mask, torch.ones(4, 4, dtype=torch.bool).tril())


def test_causal_mask_bottom_right_alignment_for_fewer_queries():
    # Two new queries at absolute positions 3 and 4 of 5 keys (cached decoding).
    mask = causal_mask(2, 5)
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert torch.equal(mask, torch.ones(2, 5, dtype=torch.bool).tril(diagonal=3))


def test_causal_mask_explicit_offset():
    top_left = causal_mask(2, 5, offset=0)
    assert torch.equal(top_left, torch.ones(2, 5, dtype=torch.bool).tril())
    assert torch.equal(causal_mask(3, 6, offset=1), torch.ones(3, 6, dtype=torch.bool).tril(diagonal=1))
    # The default equals offset = t_k - t_q.
    assert torch.equal(causal_mask(3, 7), causal_mask(3, 7, offset=4))


def test_causal_mask_single_query_sees_everything():
    assert causal_mask(1, 6).all()


def test_combine_masks_is_logical_and_and_broadcasts():
    pad = lengths_mask(torch.tensor([3, 2]), max_len=3)  # (2, 1, 1, 3)
    causal = causal_mask(3)  # (3, 3)
    combined = combine_masks(pad, None, causal)
    assert combined.shape == (2, 1, 3, 3)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                assert bool(combined[b, 0, i, j]) == (bool(pad[b, 0, 0, j]) and j <= i)


def test_combine_masks_ignores_none():
    causal = causal_mask(3)
    assert combine_masks() is None
    assert combine_masks(None, None) is None
    assert combine_masks(None, causal) is causal


def test_attn_mask_shapes_are_brought_to_4d():
    assert attn_mask_to_4d(torch.ones(3, 5, dtype=torch.bool)).shape == (1, 1, 3, 5)
    assert attn_mask_to_4d(torch.ones(2, 3, 5, dtype=torch.bool)).shape == (2, 1, 3, 5)
    assert attn_mask_to_4d(torch.ones(2, 4, 3, 5, dtype=torch.bool)).shape == (2, 4, 3, 5)
    assert attn_mask_to_4d(None) is None
    assert key_padding_to_4d(torch.ones(2, 5, dtype=torch.bool)).shape == (2, 1, 1, 5)
    assert key_padding_to_4d(None) is None


def test_non_bool_masks_are_rejected_with_the_convention_named():
    with pytest.raises(TypeError, match="bool.*True = may attend"):
        key_padding_to_4d(torch.ones(2, 5))
    with pytest.raises(TypeError, match="bool.*True = may attend"):
        attn_mask_to_4d(torch.zeros(3, 5))


def test_wrongly_shaped_masks_are_rejected():
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(B, T_k\)"):
        key_padding_to_4d(torch.ones(2, 1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="2 to 4 dimensions"):
        attn_mask_to_4d(torch.ones(1, 2, 1, 3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="ambiguous"):
        as_4d(torch.ones(3, 5, dtype=torch.bool))


def test_attention_module_reports_bad_masks_before_computing():
    attn = MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        attn(x, key_padding_mask=torch.ones(2, 5))
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        attn(x, attn_mask=torch.zeros(5, 5))
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(B, T_k\) = \(2, 5\)"):
        attn(x, key_padding_mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask must end in \(T_q, T_k\) = \(5, 5\)"):
        attn(x, attn_mask=torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"query must be \(B, T, 8\)"):
        attn(torch.randn(2, 5, 7))


def test_broadcastable_masks_are_accepted_as_attn_mask():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    tokens = torch.tensor([[3, 3, 3, 3, 3], [3, 3, 3, 0, 0]])
    via_attn_mask = attn(x, attn_mask=padding_mask(tokens, 0)).output  # (B, 1, 1, T_k)
    via_key_padding = attn(x, key_padding_mask=tokens != 0).output
    torch.testing.assert_close(via_attn_mask, via_key_padding)
    with pytest.raises(ValueError, match=r"attn_mask must end in \(T_q, T_k\) = \(5, 5\)"):
        attn(x, attn_mask=torch.ones(2, 1, 3, 5, dtype=torch.bool))
