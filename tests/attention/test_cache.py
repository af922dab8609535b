"""KVCache: incremental decoding equals full causal decoding; growth, reordering, static caches."""

import pytest
import torch

from heedful.attention import CacheArena, KVCache, MultiHeadAttention
from heedful.attention.positions import build_attention_positions

D, H, B, T = 16, 4, 2, 9
TOL = {"atol": 1e-5, "rtol": 1e-5}


def make_attention(position: str, path: str) -> MultiHeadAttention:
    torch.manual_seed(0)
    pos = build_attention_positions(position, H, D // H, max_len=64, max_distance=3)
    attn = MultiHeadAttention(D, H, position=pos, path=path)
    with torch.no_grad():
        for p in attn.parameters():
            if p.dim() == 1:
                p.normal_(std=0.1)
    return attn.eval()


# ------------------------------------------------------------------------------- the cache itself
def test_append_grows_past_the_initial_capacity():
    cache = KVCache()
    g = torch.Generator().manual_seed(0)
    ks, vs = [], []
    for step in range(40):  # the first allocation holds 16 steps
        t_new = 1 if step % 5 else 3
        k, v = torch.randn(B, H, t_new, 4, generator=g), torch.randn(B, H, t_new, 4, generator=g)
        ks.append(k)
        vs.append(v)
        all_k, all_v = cache.append(k, v)
        assert torch.equal(all_k, torch.cat(ks, dim=2))
        assert torch.equal(all_v, torch.cat(vs, dim=2))
    assert cache.length == sum(k.shape[2] for k in ks) == 56
    assert cache._k.shape[2] >= 56  # it grew
    assert torch.equal(cache.k, torch.cat(ks, dim=2)) and torch.equal(cache.v, torch.cat(vs, dim=2))


def test_a_first_chunk_longer_than_the_default_capacity():
    cache = KVCache()
    k = torch.randn(B, H, 40, 4)
    assert torch.equal(cache.append(k, k + 1)[0], k)
    more = torch.randn(B, H, 50, 4)
    all_k, all_v = cache.append(more, more + 1)
    assert torch.equal(all_k, torch.cat([k, more], dim=2))
    assert torch.equal(all_v, torch.cat([k, more], dim=2) + 1)


def test_a_chunk_bigger_than_double_the_capacity():
    # One step (capacity 16), then a 40-step chunk: doubling alone (32) would not hold 41.
    cache = KVCache()
    first, chunk = torch.randn(B, H, 1, 4), torch.randn(B, H, 40, 4)
    cache.append(first, first)
    all_k, _ = cache.append(chunk, chunk)
    assert torch.equal(all_k, torch.cat([first, chunk], dim=2)) and cache.length == 41


def test_reorder_selects_batch_rows():
    cache = KVCache()
    k = torch.randn(3, H, 5, 4)
    v = torch.randn(3, H, 5, 4)
    cache.append(k, v)
    index = torch.tensor([2, 0, 0, 1])
    cache.reorder(index)
    assert torch.equal(cache.k, k[index]) and torch.equal(cache.v, v[index])
    k_new, v_new = torch.randn(4, H, 1, 4), torch.randn(4, H, 1, 4)
    all_k, all_v = cache.append(k_new, v_new)  # keeps working with the new batch size
    assert torch.equal(all_k, torch.cat([k[index], k_new], dim=2))
    assert torch.equal(all_v, torch.cat([v[index], v_new], dim=2))


def test_reorder_of_an_empty_cache_is_harmless():
    cache = KVCache()
    cache.reorder(torch.tensor([1, 0]))
    assert not cache.filled and cache.length == 0


def test_empty_cache_says_so():
    with pytest.raises(RuntimeError, match="cache is empty"):
        _ = KVCache().k
    with pytest.raises(RuntimeError, match="cache is empty"):
        _ = KVCache().v


# ---------------------------------------------------------------------- incremental decoding
@pytest.mark.parametrize("path", ["fused", "math"])
@pytest.mark.parametrize("position", ["none", "rope", "alibi", "relative"])
def test_incremental_decoding_equals_full_causal_decoding(position, path):
    attn = make_attention(position, path)
    x = torch.randn(B, T, D)
    full = attn(x, is_causal=True).output
    cache = KVCache()
    steps = [attn(x[:, t : t + 1], is_causal=True, cache=cache).output for t in range(T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)
    assert cache.length == T


@pytest.mark.parametrize("path", ["fused", "math"])
@pytest.mark.parametrize("position", ["none", "rope", "alibi", "relative"])
def test_chunked_prefill_then_steps(position, path):
    # A prompt of 4 tokens at once (T_q > 1 with a cache: bottom-right causal mask), then 1 by 1.
    attn = make_attention(position, path)
    x = torch.randn(B, T, D)
    full = attn(x, is_causal=True).output
    cache = KVCache()
    chunks = [attn(x[:, :4], is_causal=True, cache=cache).output]
    chunks.append(attn(x[:, 4:6], is_causal=True, cache=cache).output)
    chunks += [attn(x[:, t : t + 1], is_causal=True, cache=cache).output for t in range(6, T)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, **TOL)


def test_incremental_decoding_with_key_padding():
    attn = make_attention("alibi", "auto")
    x = torch.randn(B, T, D)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1, 2] = False  # a masked-out key in the middle of sequence 1
    full = attn(x, key_padding_mask=keep, is_causal=True).output
    cache = KVCache()
    steps = [
        attn(x[:, t : t + 1], key_padding_mask=keep[:, : t + 1], is_causal=True, cache=cache).output for t in range(T)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_need_weights_with_a_cache_covers_every_key_so_far():
    attn = make_attention("rope", "auto")
    x = torch.randn(B, T, D)
    full = attn(x, is_causal=True, need_weights=True).weights
    cache = KVCache()
    for t in range(T):
        weights = attn(x[:, t : t + 1], is_causal=True, cache=cache, need_weights=True).weights
        assert weights.shape == (B, H, 1, t + 1)
        torch.testing.assert_close(weights[:, :, 0], full[:, :, t, : t + 1], **TOL)


@pytest.mark.parametrize("path", ["fused", "math"])
def test_static_cross_attention_cache(path):
    attn = make_attention("none", path)
    memory = torch.randn(B, 6, D)
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    queries = torch.randn(B, 4, D)
    full = attn(queries, memory, key_padding_mask=keep).output
    cache = KVCache(static=True)
    first = attn(queries[:, :1], memory, key_padding_mask=keep, cache=cache).output
    assert cache.filled and cache.length == 6
    stored = cache.k
    steps = [first]
    for t in range(1, 4):
        # Once filled, the memory is not needed (nor projected) again.
        steps.append(attn(queries[:, t : t + 1], None, key_padding_mask=keep, cache=cache).output)
        assert cache.k.data_ptr() == stored.data_ptr() and torch.equal(cache.k, stored)
        assert cache.length == 6
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_static_cache_reorders_with_the_beam():
    attn = make_attention("none", "auto")
    memory = torch.randn(B, 6, D)
    cache = KVCache(static=True)
    attn(torch.randn(B, 1, D), memory, cache=cache)
    index = torch.tensor([1, 1, 0])
    cache.reorder(index)
    query = torch.randn(3, 1, D)
    torch.testing.assert_close(attn(query, None, cache=cache).output, attn(query, memory[index]).output, **TOL)


# ------------------------------------------------------------- grouped storage (beam search)
def _reference_step(attn: MultiHeadAttention, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's whole input history through causal attention, no cache: the last position's
    output (rows, 1, D) and weights (rows, H, 1, T)."""
    out = attn(history, is_causal=True, need_weights=True)
    return out.output[:, -1:], out.weights[:, :, -1:]


@pytest.mark.parametrize("path", ["fused", "math"])
@pytest.mark.parametrize("position", ["none", "rope", "alibi", "relative"])
def test_grouped_self_cache_follows_each_row_through_beam_reorders(position, path):
    """A cache spread over groups of rows (as beam search does), then re-ranked within the groups
    step after step, gives every row the attention of its own history — and still does after a
    reorder that leaves the groups."""
    attn = make_attention(position, path)
    g = torch.Generator().manual_seed(1)
    sources, group = 3, 4
    history = torch.randn(sources, 2, D, generator=g)  # a 2-token prompt per source
    cache = KVCache()
    attn(history, is_causal=True, cache=cache)
    spread = torch.arange(sources).repeat_interleave(group)
    cache.reorder(spread)
    history = history[spread]
    assert cache.group == group  # grouped storage, not copies
    for step in range(6):
        x = torch.randn(sources * group, 1, D, generator=g)
        history = torch.cat([history, x], dim=1)
        want_weights = step == 3  # weights of a growing grouped cache come from each row's own keys
        got = attn(x, is_causal=True, cache=cache, need_weights=want_weights)
        expected_output, expected_weights = _reference_step(attn, history)
        torch.testing.assert_close(got.output, expected_output, **TOL)
        if want_weights:
            torch.testing.assert_close(got.weights, expected_weights, **TOL)
        parents = torch.randint(0, group, (sources, group), generator=g)
        index = (torch.arange(sources)[:, None] * group + parents).view(-1)  # re-ranked within each source
        cache.reorder(index)
        history = history[index]
        assert cache.group == group
    # Source 1 is done and leaves; sources 2 and 0 swap places and re-rank: still grouped.
    index = torch.tensor([9, 8, 8, 11, 3, 0, 1, 1])
    cache.reorder(index)
    history = history[index]
    assert cache.group == group and cache.k.shape[0] == 2
    x = torch.randn(8, 1, D, generator=g)
    history = torch.cat([history, x], dim=1)
    torch.testing.assert_close(attn(x, is_causal=True, cache=cache).output, _reference_step(attn, history)[0], **TOL)
    index = torch.tensor([5, 0, 7, 7, 2])  # across sources: back to plain storage
    cache.reorder(index)
    history = history[index]
    assert cache.group == 1
    x = torch.randn(5, 1, D, generator=g)
    history = torch.cat([history, x], dim=1)
    torch.testing.assert_close(attn(x, is_causal=True, cache=cache).output, _reference_step(attn, history)[0], **TOL)


def test_grouped_self_cache_grows_past_its_capacity():
    cache = KVCache()
    k = torch.randn(2, H, 15, 4)
    cache.append(k, k + 1)
    cache.reorder(torch.tensor([0, 0, 0, 1, 1, 1]))
    rows = k.repeat_interleave(3, 0)
    for step in range(20):  # past the first 16 positions, so the grouped buffers grow
        new = torch.randn(6, H, 1, 4)
        cache.append(new, new + 1)
        rows = torch.cat([rows, new], dim=2)
        index = torch.tensor([2, 0, 0, 4, 5, 3]) if step % 2 else torch.tensor([1, 1, 2, 3, 3, 3])
        cache.reorder(index)
        rows = rows[index]
    keys, values = cache.ungrouped()
    assert cache.group == 3 and cache.length == 35
    assert torch.equal(keys, rows) and torch.equal(values, rows + 1)


@pytest.mark.parametrize("path", ["fused", "math"])
def test_grouped_static_cache_serves_each_source_to_its_rows(path):
    attn = make_attention("none", path)
    memory = torch.randn(B, 6, D)
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    cache = KVCache(static=True)
    attn(torch.randn(B, 1, D), memory, key_padding_mask=keep, cache=cache)
    spread = torch.tensor([0, 0, 0, 1, 1, 1])
    cache.reorder(spread)
    assert cache.group == 3 and cache.k.shape[0] == B  # one stored row per source
    query = torch.randn(6, 2, D)
    got = attn(query, None, key_padding_mask=keep[spread], cache=cache, need_weights=True)
    expected = attn(query, memory[spread], key_padding_mask=keep[spread], need_weights=True)
    torch.testing.assert_close(got.output, expected.output, **TOL)
    torch.testing.assert_close(got.weights, expected.weights, **TOL)
    drop = torch.tensor([4, 3, 5])  # source 0 leaves: one stored row left, still grouped
    cache.reorder(drop)
    assert cache.group == 3 and cache.k.shape[0] == 1
    query = torch.randn(3, 1, D)
    got = attn(query, None, key_padding_mask=keep[spread][drop], cache=cache).output
    expected = attn(query, memory[spread][drop], key_padding_mask=keep[spread][drop]).output
    torch.testing.assert_close(got, expected, **TOL)
    spread = spread[drop]
    index = torch.tensor([2, 0])  # two rows: not groups of 3 any more, plain rows
    cache.reorder(index)
    assert cache.group == 1
    query = torch.randn(2, 1, D)
    got = attn(query, None, key_padding_mask=keep[spread][index], cache=cache).output
    torch.testing.assert_close(
        got, attn(query, memory[spread][index], key_padding_mask=keep[spread][index]).output, **TOL
    )


# ------------------------------------------------------------------ memory: reserved room, arenas
def test_a_reserved_cache_keeps_its_buffers_and_the_same_keys():
    """With room reserved for every position, grouping and re-ranking never reallocate the keys
    (only the grouping's one spread does), and the keys are those of an unreserved cache."""
    plain, reserved = KVCache(), KVCache()
    reserved.reserve(24)
    g = torch.Generator().manual_seed(2)
    first = torch.randn(2, H, 3, 4, generator=g)
    for cache in (plain, reserved):
        cache.append(first, first + 1)
        cache.reorder(torch.tensor([0, 0, 0, 1, 1, 1]))
    grouped_buffer = reserved._k.data_ptr()
    for step in range(21):  # 24 positions in all: the unreserved cache grows at 16
        new = torch.randn(6, H, 1, 4, generator=g)
        index = torch.tensor([2, 0, 0, 4, 5, 3]) if step % 2 else torch.tensor([1, 1, 2, 3, 3, 3])
        for cache in (plain, reserved):
            cache.append(new, new + 1)
            cache.reorder(index)
        assert reserved._k.data_ptr() == grouped_buffer
    assert plain._k.data_ptr() != grouped_buffer and plain._k.shape[2] > reserved._k.shape[2] == 24 * 3
    for got, expected in zip(reserved.ungrouped(), plain.ungrouped(), strict=True):
        assert torch.equal(got, expected)


def test_an_arena_hands_a_lease_the_memory_of_the_lease_before():
    arena, like = CacheArena(), torch.empty(0)
    with arena.lease():
        small, large = arena.empty(like, 4, 8), arena.empty(like, 100)
        ids = arena.empty(like.long(), 10)
    with arena.lease():
        fits_small = arena.empty(like, 2, 8)  # the smallest free buffer that holds it
        fits_large = arena.empty(like, 50)
        assert fits_small.shape == (2, 8) and fits_small.data_ptr() == small.data_ptr()
        assert fits_large.data_ptr() == large.data_ptr()
        assert arena.empty(like, 10).data_ptr() not in {small.data_ptr(), large.data_ptr(), ids.data_ptr()}
        arena.give_back(fits_large)  # replaced within the search: free at once
        assert arena.empty(like, 60).data_ptr() == large.data_ptr()
    assert arena.held_bytes == (32 + 100 + 10) * 4  # the long buffer went unused in the last lease
    with arena.lease():
        pass
    assert arena.held_bytes == 0


def test_an_arena_serves_one_search_at_a_time():
    arena = CacheArena()
    with arena.lease(), pytest.raises(RuntimeError, match="give each thread its own"), arena.lease():
        pass
    with arena.lease():  # free again once the first lease ended
        pass
