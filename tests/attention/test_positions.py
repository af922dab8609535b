"""Position modules: closed forms, relative-offset properties, and equal results on both paths."""

import math

import pytest
import torch

from heedful.attention import (
    ALiBiPositions,
    LearnedPositions,
    MultiHeadAttention,
    RelativePositions,
    RotaryPositions,
    SinusoidalPositions,
)
from heedful.attention.positions import POSITIONS, build_attention_positions, build_input_positions


# ------------------------------------------------------------------------------- input positions
@pytest.mark.parametrize("d_model", [8, 7])
def test_sinusoidal_matches_the_closed_formula(d_model):
    table = SinusoidalPositions(d_model, max_len=64).table
    for pos in range(64):
        for i in range(d_model):
            angle = pos / 10000 ** ((i - i % 2) / d_model)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert table[pos, i].item() == pytest.approx(expected, abs=1e-5)


def test_sinusoidal_adds_the_rows_at_the_offset():
    positions = SinusoidalPositions(8, max_len=32)
    x = torch.randn(2, 5, 8)
    assert torch.allclose(positions(x), x + positions.table[:5])
    assert torch.allclose(positions(x, offset=7), x + positions.table[7:12])
    # One step at a time with offsets equals the whole sequence at once.
    steps = torch.cat([positions(x[:, t : t + 1], offset=t) for t in range(5)], dim=1)
    assert torch.allclose(steps, positions(x))


def test_learned_positions_offset_and_length_limit():
    positions = LearnedPositions(8, max_len=6)
    x = torch.zeros(1, 3, 8)
    assert torch.equal(positions(x, offset=2)[0], positions.embedding.weight[2:5])
    with pytest.raises(ValueError, match="longer than the position table.*max_len"):
        positions(torch.zeros(1, 4, 8), offset=3)
    with pytest.raises(ValueError, match="longer than the position table"):
        SinusoidalPositions(8, max_len=4)(torch.zeros(1, 5, 8))


# ------------------------------------------------------------------------------------------ RoPE
def rope_scores(rope: RotaryPositions, q_vec: torch.Tensor, k_vec: torch.Tensor, T: int, offset: int):
    """Scores (T, T) between q_vec placed at every position and k_vec placed at every position."""
    q = q_vec.expand(1, 1, T, -1)
    k = k_vec.expand(1, 1, T, -1)
    q_rot, k_rot = rope.rotate(q, k, offset)
    return (q_rot @ k_rot.transpose(-2, -1))[0, 0]


def test_rope_scores_depend_only_on_the_relative_offset():
    rope = RotaryPositions(8).double()
    g = torch.Generator().manual_seed(0)
    q_vec, k_vec = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    T = 12
    scores = rope_scores(rope, q_vec, k_vec, T, offset=0)
    # Shifting both positions by s leaves q·k unchanged: along every diagonal, and by offset.
    # (The angle table is float32, hence the tolerances.)
    for i in range(T - 1):
        for j in range(T - 1):
            assert scores[i + 1, j + 1].item() == pytest.approx(scores[i, j].item(), abs=1e-5)
    assert torch.allclose(rope_scores(rope, q_vec, k_vec, T, offset=37), scores, atol=1e-4)
    # ... but it does depend on the offset itself (otherwise RoPE would encode nothing).
    assert abs(scores[5, 0] - scores[5, 3]) > 1e-3
    # Position 0 is not rotated; the rotation keeps norms.
    assert torch.allclose(scores[0, 0], q_vec @ k_vec)
    q_rot, _ = rope.rotate(q_vec.expand(1, 1, T, -1), k_vec.expand(1, 1, T, -1))
    assert torch.allclose(q_rot.norm(dim=-1), q_vec.norm().expand(1, 1, T))


def test_rope_rotates_channel_pairs_i_and_i_plus_half():
    rope = RotaryPositions(4, base=100.0).double()
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).expand(1, 1, 3, 4)
    rotated, _ = rope.rotate(x, x)
    pos, freqs = 2, [1.0, 100.0 ** (-2 / 4)]
    for c, freq in enumerate(freqs):
        a, b = x[0, 0, pos, c], x[0, 0, pos, c + 2]
        angle = pos * freq
        assert rotated[0, 0, pos, c].item() == pytest.approx(a * math.cos(angle) - b * math.sin(angle))
        assert rotated[0, 0, pos, c + 2].item() == pytest.approx(b * math.cos(angle) + a * math.sin(angle))


def test_rope_needs_an_even_head_dimension():
    with pytest.raises(ValueError, match="even head dimension"):
        RotaryPositions(7)


# ----------------------------------------------------------------------------------------- ALiBi
def reference_alibi_slopes(n):
    """The ALiBi paper's reference code (Press et al. 2022, github.com/ofirpress/attention_with_linear_biases)."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + reference_alibi_slopes(2 * closest)[0::2][: n - closest]


def test_alibi_slopes_for_eight_heads_are_powers_of_a_half():
    slopes = ALiBiPositions(8).slopes
    assert torch.allclose(slopes, torch.tensor([2.0**-h for h in range(1, 9)]))


@pytest.mark.parametrize("n_heads", [1, 2, 4, 6, 12, 16])
def test_alibi_slopes_match_the_reference_recipe(n_heads):
    slopes = ALiBiPositions(n_heads).slopes
    assert torch.allclose(slopes, torch.tensor(reference_alibi_slopes(n_heads)))


@pytest.mark.parametrize("q_offset", [0, 3])
def test_alibi_bias_is_minus_slope_times_distance(q_offset):
    alibi = ALiBiPositions(4)
    q = torch.zeros(2, 4, 3, 8)
    bias = alibi.bias(q, t_k=7, q_offset=q_offset)
    assert bias.shape == (1, 4, 3, 7)
    for h in range(4):
        for i in range(3):
            for j in range(7):
                expected = -alibi.slopes[h].item() * abs(i + q_offset - j)
                assert bias[0, h, i, j].item() == pytest.approx(expected)


# -------------------------------------------------------------------------------------- relative
def test_relative_bias_follows_shaw_et_al():
    rel = RelativePositions(d_head=4, max_distance=2).double()
    q = torch.randn(1, 2, 6, 4, dtype=torch.float64)
    bias = rel.bias(q, t_k=6)
    assert bias.shape == (1, 2, 6, 6)
    w = rel.embedding.weight
    for h in range(2):
        for i in range(6):
            for j in range(6):
                a_ij = w[max(-2, min(2, j - i)) + 2]
                assert bias[0, h, i, j].item() == pytest.approx((q[0, h, i] @ a_ij).item() / 2.0)


def test_relative_bias_clips_beyond_max_distance():
    K = 2
    rel = RelativePositions(d_head=4, max_distance=K).double()
    q = torch.randn(1, 1, 9, 4, dtype=torch.float64)
    bias = rel.bias(q, t_k=9)[0, 0]
    for i in range(9):
        far_right = [bias[i, j] for j in range(9) if j - i >= K]
        far_left = [bias[i, j] for j in range(9) if j - i <= -K]
        for group in (far_right, far_left):
            assert all(b == group[0] for b in group)  # every distance beyond K: the same bias
        near = [bias[i, j] for j in range(max(0, i - K), min(9, i + K + 1))]
        assert len(set(v.item() for v in near)) == len(near)  # within K: all different


# ------------------------------------------------------------------- both paths give one answer
def make_attention(position: str, path: str, seed: int = 0) -> MultiHeadAttention:
    torch.manual_seed(seed)
    d_model, n_heads = 16, 4
    pos = build_attention_positions(position, n_heads, d_model // n_heads, max_len=64, max_distance=3)
    return MultiHeadAttention(d_model, n_heads, position=pos, path=path)


@pytest.mark.parametrize("position", ["alibi", "relative", "rope"])
@pytest.mark.parametrize("masks", ["none", "padding", "causal", "padding+causal"])
def test_positions_give_the_same_output_on_fused_and_math_paths(position, masks):
    x = torch.randn(3, 7, 16)
    keep = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5], dtype=torch.bool)
    kwargs = {
        "key_padding_mask": keep if "padding" in masks else None,
        "is_causal": "causal" in masks,
    }
    outputs, grads = {}, {}
    for path in ("fused", "math"):
        attn = make_attention(position, path)
        x_ = x.clone().requires_grad_()
        out = attn(x_, **kwargs).output
        out.sum().backward()
        outputs[path], grads[path] = out, x_.grad
        if position == "relative":
            grads[path + "-embedding"] = attn.position.embedding.weight.grad
    torch.testing.assert_close(outputs["fused"], outputs["math"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads["fused"], grads["math"], atol=1e-5, rtol=1e-5)
    if position == "relative":  # the bias is learned: its gradient must reach it on the fused path
        torch.testing.assert_close(grads["fused-embedding"], grads["math-embedding"], atol=1e-5, rtol=1e-5)


def test_bias_changes_the_output():
    # Guard for the test above: a bias that did nothing would pass it trivially.
    x = torch.randn(2, 6, 16)
    torch.manual_seed(0)
    plain = MultiHeadAttention(16, 4, path="fused")
    with_alibi = make_attention("alibi", "fused")
    assert not torch.allclose(plain(x).output, with_alibi(x).output, atol=1e-3)


# ------------------------------------------------------------------------------------ by name
def test_positions_by_name():
    assert isinstance(build_input_positions("sinusoidal", 8, 16), SinusoidalPositions)
    assert isinstance(build_input_positions("learned", 8, 16), LearnedPositions)
    for kind in ("rope", "alibi", "relative", "none"):
        assert build_input_positions(kind, 8, 16) is None
    assert isinstance(build_attention_positions("rope", 2, 4, 16), RotaryPositions)
    assert isinstance(build_attention_positions("alibi", 2, 4, 16), ALiBiPositions)
    assert isinstance(build_attention_positions("relative", 2, 4, 16, max_distance=5), RelativePositions)
    for kind in ("sinusoidal", "learned", "none"):
        assert build_attention_positions(kind, 2, 4, 16) is None


def test_unknown_position_kind_names_the_choices():
    choices = ", ".join(POSITIONS)
    assert all(kind in choices for kind in ("sinusoidal", "learned", "rope", "alibi", "relative", "none"))
    with pytest.raises(ValueError, match=f"unknown position kind 'xpos'; choose from {choices}"):
        build_input_positions("xpos", 8, 16)
    with pytest.raises(ValueError, match=f"unknown position kind 'xpos'; choose from {choices}"):
        build_attention_positions("xpos", 2, 4, 16)
