"""decode_attention.c: one decoding step over beam search's grouped key/value cache, in C.

Checked against attention over each row's whole history without any cache (the reference the
cache tests use), against the PyTorch path of the same cache, and through a whole beam search."""

import pytest
import torch

from heedful.attention import KVCache, MultiHeadAttention, cpu_kernel
from heedful.attention import cache as cache_module
from heedful.decode import beam_search
from heedful.models import TransformerConfig, TransformerEncoderDecoder

pytestmark = pytest.mark.skipif(cpu_kernel.load() is None, reason="no C compiler to build the CPU kernels")

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture
def served(monkeypatch):
    """Counts the grouped steps the C kernel served (True) and left to PyTorch (False)."""
    calls: list[bool] = []
    original = KVCache._attend_in_c

    def counting(self, attend, q, key_padding_mask, new=None):
        context = original(self, attend, q, key_padding_mask, new)
        calls.append(context is not None)
        return context

    monkeypatch.setattr(KVCache, "_attend_in_c", counting)
    return calls


def without_kernel(monkeypatch):
    monkeypatch.setattr(KVCache, "_attend_in_c", lambda self, attend, q, key_padding_mask, new=None: None)


def make_attention(d_model: int, heads: int, position: str = "none") -> MultiHeadAttention:
    from heedful.attention.positions import build_attention_positions

    torch.manual_seed(0)
    pos = build_attention_positions(position, heads, d_model // heads, max_len=64, max_distance=3)
    attn = MultiHeadAttention(d_model, heads, position=pos)
    with torch.no_grad():
        for p in attn.parameters():
            if p.dim() == 1:
                p.normal_(std=0.1)
    return attn.eval()


@pytest.mark.parametrize(("d_model", "heads"), [(256, 4), (96, 4), (40, 2)])  # head widths 64, 24, 20
@pytest.mark.parametrize("position", ["none", "rope"])
@torch.no_grad()
def test_a_grouped_self_cache_in_c_gives_each_row_the_attention_of_its_own_history(served, d_model, heads, position):
    attn = make_attention(d_model, heads, position)
    g = torch.Generator().manual_seed(1)
    sources, group = 3, 5
    history = torch.randn(sources, 2, d_model, generator=g)
    cache = KVCache()
    attn(history, is_causal=True, cache=cache)
    spread = torch.arange(sources).repeat_interleave(group)
    cache.reorder(spread)
    history = history[spread]
    for _ in range(20):  # past the first 16 positions: the grouped buffers grow
        x = torch.randn(sources * group, 1, d_model, generator=g)
        history = torch.cat([history, x], dim=1)
        got = attn(x, is_causal=True, cache=cache).output
        expected = attn(history, is_causal=True).output[:, -1:]
        torch.testing.assert_close(got, expected, **TOL)
        parents = torch.randint(0, group, (sources, group), generator=g)
        index = (torch.arange(sources)[:, None] * group + parents).view(-1)  # re-ranked within each source
        cache.reorder(index)
        history = history[index]
    index = torch.tensor([14, 10, 10, 11, 12, 4, 0, 1, 1, 3])  # source 1 leaves, 2 and 0 swap: still grouped
    cache.reorder(index)
    history = history[index]
    x = torch.randn(10, 1, d_model, generator=g)
    history = torch.cat([history, x], dim=1)
    expected = attn(history, is_causal=True).output[:, -1:]
    torch.testing.assert_close(attn(x, is_causal=True, cache=cache).output, expected, **TOL)
    assert served == [True] * 21


@torch.no_grad()
def test_a_grouped_static_cache_in_c_skips_each_sources_padding(served):
    d_model, heads, group = 128, 2, 4
    attn = make_attention(d_model, heads)
    memory = torch.randn(4, 37, d_model)  # more keys than one 16-wide vector, and a partial one
    keep = torch.ones(4, 37, dtype=torch.bool)
    keep[1, 20:] = False
    keep[2, :3] = False  # padding need not be at the end
    keep[3] = False  # no key at all: a context of zeros, as on the PyTorch path
    cache = KVCache(static=True)
    attn(torch.randn(4, 1, d_model), memory, key_padding_mask=keep, cache=cache)
    spread = torch.arange(4).repeat_interleave(group)
    cache.reorder(spread)
    query = torch.randn(16, 1, d_model)
    got = attn(query, None, key_padding_mask=keep[spread], cache=cache).output
    expected = attn(query, memory[spread], key_padding_mask=keep[spread]).output
    torch.testing.assert_close(got, expected, **TOL)
    assert served == [True, True]  # the first, plain step too


@torch.no_grad()
def test_the_c_step_equals_the_pytorch_step_of_the_same_cache_and_does_not_depend_on_threads(served, monkeypatch):
    """Driven through the caches directly, with fixed q, k, v: the module's own projections
    (F.linear on MKL) may round differently with the thread count on some CPUs, the step may not."""
    attend = make_attention(256, 4).attend
    g = torch.Generator().manual_seed(5)
    first_q, first_k, first_v = (torch.randn(6, 4, 1, 64, generator=g) for _ in range(3))
    memory_k, memory_v = torch.randn(6, 4, 11, 64, generator=g), torch.randn(6, 4, 11, 64, generator=g)
    q, k, v = (torch.randn(30, 4, 1, 64, generator=g) for _ in range(3))

    def step() -> torch.Tensor:
        self_cache, cross_cache = KVCache(), KVCache(static=True)
        self_cache.attend(attend, first_q, first_k, first_v, is_causal=True)
        cross_cache.attend(attend, first_q, memory_k, memory_v)
        spread = torch.arange(6).repeat_interleave(5)
        self_cache.reorder(spread)
        cross_cache.reorder(spread)
        return torch.cat(
            [self_cache.attend(attend, q, k, v, is_causal=True)[0], cross_cache.attend(attend, q, None, None)[0]]
        )

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = step()
        torch.set_num_threads(2)
        two = step()
    finally:
        torch.set_num_threads(threads)
    assert served == [True] * 8 and torch.equal(one, two)  # per step(): two plain calls, two grouped
    without_kernel(monkeypatch)
    torch.testing.assert_close(one, step(), **TOL)


@torch.no_grad()
def test_plain_storage_in_c_one_query_a_row_as_greedy_decoding_asks(served):
    """Before beam search groups its rows, and all through greedy decoding, every row has its own
    keys: the C step serves those too, with a key padding mask, self- and cross-attention."""
    attn = make_attention(128, 2)
    memory = torch.randn(3, 13, 128)
    keep = torch.ones(3, 13, dtype=torch.bool)
    keep[0, 9:] = False
    keep[2, :2] = False
    self_cache, cross_cache = KVCache(), KVCache(static=True)
    history = torch.empty(3, 0, 128)
    for _ in range(18):  # past the first 16 positions: the plain buffers grow
        x = torch.randn(3, 1, 128)
        history = torch.cat([history, x], dim=1)
        got = attn(x, is_causal=True, cache=self_cache).output
        torch.testing.assert_close(got, attn(history, is_causal=True).output[:, -1:], **TOL)
        crossed = attn(got, memory, key_padding_mask=keep, cache=cross_cache).output
        torch.testing.assert_close(crossed, attn(got, memory, key_padding_mask=keep).output, **TOL)
    assert served == [True] * 36
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(B, T_k\) = \(3, 13\)"):
        attn(got, None, key_padding_mask=keep[:, :12], cache=cross_cache)  # the PyTorch path names the problem
    assert served[-1] is False


@torch.no_grad()
def test_a_bfloat16_cache_is_read_widened_and_the_context_rounded_once(served):
    """bf16 q, k, v (decoding under bf16 autocast): the kernel computes in float32 and rounds the
    context once, so it equals float32 attention over the same bf16 values, rounded to bf16, up
    to one bf16 step where the float32 sums differ in their last bits."""
    attn = make_attention(256, 4)
    g = torch.Generator().manual_seed(4)
    cache = KVCache()
    keys = torch.randn(3, 4, 1, 64, generator=g).bfloat16()
    cache.append(keys, keys * 0.5)
    cache.reorder(torch.arange(3).repeat_interleave(5))
    rows = keys.repeat_interleave(5, 0)  # (15, 4, T, 64): every row's own keys
    for _ in range(6):
        new = torch.randn(15, 4, 1, 64, generator=g).bfloat16()
        cache.append(new, new * 0.5)
        rows = torch.cat([rows, new], dim=2)
        index = (torch.arange(3)[:, None] * 5 + torch.randint(0, 5, (3, 5), generator=g)).view(-1)
        cache.reorder(index)
        rows = rows[index]
    q = torch.randn(15, 4, 1, 64, generator=g).bfloat16()
    got = cache._attend_in_c(attn.attend, q, None)
    assert got is not None and got.dtype == torch.bfloat16
    weights = torch.softmax((q.float() @ rows.float().transpose(-2, -1)) / 8.0, dim=-1)
    expected = (weights @ (rows.float() * 0.5)).bfloat16()
    torch.testing.assert_close(got.float(), expected.float(), rtol=2**-8, atol=1e-6)
    assert (got != expected).float().mean() < 0.01  # nearly all equal to the bit


@pytest.mark.parametrize("case", ["float16", "gradient", "path", "dropout", "weights"])
def test_what_the_c_step_cannot_compute_takes_the_pytorch_path(served, case):
    attn = make_attention(64, 2)
    if case == "path":
        attn.attend.path = "math"
    if case == "dropout":
        attn.attend.dropout = 0.5
        attn.train()
    dtype = torch.float16 if case == "float16" else torch.float32
    attn.to(dtype)
    history = torch.randn(2, 3, 64, dtype=dtype)
    x = torch.randn(6, 1, 64, dtype=dtype)
    with torch.set_grad_enabled(case == "gradient"):
        cache = KVCache()
        attn(history, is_causal=True, cache=cache)
        cache.reorder(torch.tensor([0, 0, 0, 1, 1, 1]))
        got = attn(x, is_causal=True, cache=cache, need_weights=case == "weights").output
    assert served == ([] if case == "weights" else [False])  # weights: never asked, the cache reads plain rows
    if case != "dropout":
        with torch.no_grad():
            history = torch.cat([history[[0, 0, 0, 1, 1, 1]], x], dim=1)
            tol = {"atol": 2e-3, "rtol": 2e-3} if dtype == torch.float16 else TOL
            torch.testing.assert_close(got, attn(history, is_causal=True).output[:, -1:], **tol)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@torch.no_grad()
def test_a_traced_step_takes_the_pytorch_path_so_the_trace_computes_it(served):
    """torch.jit.trace (the ONNX exporter's tracer) cannot see into a ctypes call: a traced step
    must run the PyTorch path, or the trace would hold the C step's output as a constant."""
    attn = make_attention(64, 2)
    memory = torch.randn(2, 7, 64)

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x, memory):
            return self.attn(x, memory, cache=KVCache(static=True)).output

    traced = torch.jit.trace(Step(), (torch.randn(2, 1, 64), memory), check_trace=False)
    x = torch.randn(2, 1, 64)
    torch.testing.assert_close(traced(x, memory), attn(x, memory).output, **TOL)
    assert served[0] is False


@torch.no_grad()
def test_a_key_count_past_the_kernels_stack_takes_the_pytorch_path(served, monkeypatch):
    monkeypatch.setattr(cache_module, "DECODE_KERNEL_MAX_KEYS", 8)
    attn = make_attention(64, 2)
    memory = torch.randn(2, 9, 64)
    cache = KVCache(static=True)
    attn(torch.randn(2, 1, 64), memory, cache=cache)
    cache.reorder(torch.tensor([0, 0, 1, 1]))
    query = torch.randn(4, 1, 64)
    torch.testing.assert_close(attn(query, None, cache=cache).output, attn(query, memory[[0, 0, 1, 1]]).output, **TOL)
    assert served == [False, False]


@torch.no_grad()
def test_beam_search_finds_the_same_hypotheses_with_the_c_step(served, monkeypatch):
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=40, tgt_vocab_size=30, d_model=64, n_heads=4, n_encoder_layers=1,
                            n_decoder_layers=2, d_ff=128, dropout=0.0)  # fmt: skip
    model = TransformerEncoderDecoder(cfg).eval()
    src = torch.randint(4, 40, (6, 9))
    src[2, 5:] = 0
    src[4, 7:] = 0

    def search():
        return beam_search(model, src, bos_id=1, eos_id=2, beam_size=4, max_len=12, alpha=0.6, n_best=4)

    ours = search()
    assert served and all(served)
    without_kernel(monkeypatch)
    theirs = search()
    for mine, reference in zip(ours, theirs, strict=True):
        assert [h.tokens for h in mine] == [h.tokens for h in reference]
        assert [h.log_prob for h in mine] == pytest.approx([h.log_prob for h in reference], abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("position", ["none", "rope"])  # RoPE: rotated keys laid out unlike the values
@torch.no_grad()
def test_the_c_step_stores_the_new_keys_as_the_pytorch_path_stores_them(served, monkeypatch, dtype, position):
    """The step in C writes each step's new keys and values into the cache itself; the caches it
    leaves hold exactly what the PyTorch path's append leaves, plain and grouped."""
    attn = make_attention(256, 4, position).to(dtype)
    g = torch.Generator().manual_seed(3)
    first = torch.randn(4, 1, 256, generator=g).to(dtype)
    steps = [torch.randn(12, 1, 256, generator=g).to(dtype) for _ in range(18)]
    spread = torch.arange(4).repeat_interleave(3)
    parents = [(torch.arange(4)[:, None] * 3 + torch.randint(0, 3, (4, 3), generator=g)).view(-1) for _ in steps]

    def decode() -> KVCache:
        cache = KVCache()
        attn(first, is_causal=True, cache=cache)  # plain storage
        cache.reorder(spread)  # grouped from here on
        for x, index in zip(steps, parents, strict=True):
            attn(x, is_causal=True, cache=cache)
            cache.reorder(index)
        return cache

    in_c = decode()
    assert served and all(served)
    without_kernel(monkeypatch)
    on_pytorch = decode()
    assert in_c.length == on_pytorch.length == 19 and in_c.group == on_pytorch.group == 3
    assert torch.equal(in_c.k, on_pytorch.k) and torch.equal(in_c.v, on_pytorch.v)
    assert torch.equal(in_c.lineage_mask(), on_pytorch.lineage_mask())


@pytest.mark.parametrize("static", [False, True])
@torch.no_grad()
def test_sources_leaving_a_grouped_cache_move_no_keys_and_the_rest_attend_as_before(served, monkeypatch, static):
    """Beam search drops settled sentences: the cache then remembers the kept sources' rows
    instead of copying their keys, the step in C reads through that, and a later reorder that is
    not a plain drop (or any PyTorch-path read) compacts the buffers first — the same attention."""
    attn = make_attention(256, 4)
    g = torch.Generator().manual_seed(7)
    sources, group = 5, 3
    memory = torch.randn(sources, 6, 256, generator=g)
    steps = [torch.randn(sources * group, 1, 256, generator=g) for _ in range(6)]

    def decode() -> list[torch.Tensor]:
        cache = KVCache(static=static)
        first = torch.randn(sources, 1, 256, generator=torch.Generator().manual_seed(8))
        attn(first, memory, cache=cache) if static else attn(first, is_causal=True, cache=cache)
        kept = torch.arange(sources)  # the source of each stored row
        history = first[kept.repeat_interleave(group)]
        cache.reorder(kept.repeat_interleave(group))
        outputs = []
        for step, x in enumerate(steps):
            x = x[: len(kept) * group]
            rows_source = kept.repeat_interleave(group)
            if static:
                got, expected = attn(x, None, cache=cache).output, attn(x, memory[rows_source]).output
            else:
                history = torch.cat([history, x], dim=1)
                got = attn(x, is_causal=True, cache=cache).output
                expected = attn(history, is_causal=True).output[:, -1:]
            torch.testing.assert_close(got, expected, **TOL)
            outputs.append(got)
            stored = {1: [0, 2, 4], 3: [0, 2], 4: [1, 0]}.get(step)  # two drops, then a swap
            if stored is None:
                continue
            buffer = cache._k.data_ptr()
            index = (torch.tensor(stored)[:, None] * group + torch.tensor([2, 0, 0])).view(-1)  # re-ranked
            cache.reorder(index)
            if not static:
                history = history[index]
            kept = kept[stored]
            if step < 4:  # plain drops: nothing copied, the rows remembered
                assert cache._k.data_ptr() == buffer and cache._rows is not None
            else:  # a swap compacts the buffers
                assert cache._rows is None
        return outputs

    compacted: list[int] = []  # the row count of every compaction that moved keys
    compact = KVCache._compact

    def counting(self):
        if self._rows is not None:
            compacted.append(len(self._rows))
        compact(self)

    monkeypatch.setattr(KVCache, "_compact", counting)
    in_c = decode()
    assert served and all(served)
    assert compacted == [2]  # the steps in C read through the rows: keys moved only at the swap
    without_kernel(monkeypatch)
    for got, expected in zip(in_c, decode(), strict=True):
        torch.testing.assert_close(got, expected, **TOL)


@torch.no_grad()
def test_heads_wider_than_the_kernel_takes_use_the_pytorch_path(served, monkeypatch):
    monkeypatch.setattr(cache_module, "DECODE_KERNEL_MAX_HEAD_WIDTH", 32)  # the model's heads are 64 wide
    attn = make_attention(128, 2)
    cache = KVCache()
    x = torch.randn(3, 1, 128)
    history = x
    attn(x, is_causal=True, cache=cache)
    step = torch.randn(3, 1, 128)
    history = torch.cat([history, step], dim=1)
    torch.testing.assert_close(
        attn(step, is_causal=True, cache=cache).output, attn(history, is_causal=True).output[:, -1:], **TOL
    )
    assert served == [False, False]


def _step_in_c(q, k, v, lineage=None, key_ok=None, group=5):
    """decode_attention.c's float32 step called directly: q (n·g, H, 1, D); k, v (n, H, keys, D)."""
    lib = cpu_kernel.load()
    n, H, T, D = k.shape[0], k.shape[1], k.shape[2] // (group if lineage is not None else 1), k.shape[3]
    out = torch.empty(q.shape[0], H, 1, D)
    a = torch.Tensor.data_ptr
    lib.heedful_decode_attention_f32(
        a(q), q.stride(0), q.stride(1), a(k), a(v), k.stride(0), k.stride(1),
        None if lineage is None else a(lineage), 0 if lineage is None else lineage.stride(0),
        0 if lineage is None else lineage.stride(1), None if key_ok is None else a(key_ok),
        0 if key_ok is None else key_ok.stride(0), a(out), n, group, H, T, D, D**-0.5, None, None, None, None,
    )  # fmt: skip
    return out


@pytest.mark.parametrize(("group", "keys"), [(5, 18), (8, 40), (1, 3)])
@torch.no_grad()
def test_hypotheses_sharing_a_static_sources_keys_get_the_bits_of_the_step_one_hypothesis_at_a_time(group, keys):
    """A static cache's g hypotheses read their source's keys together (float32, heads of 64); the
    same keys laid out as a growing cache's, every hypothesis following slot 0, go through the
    one-hypothesis-at-a-time loop: every score and sum is added in the same order, so the same bits."""
    gen = torch.Generator().manual_seed(11)
    n, H, D = 7, 4, 64
    q = torch.randn(n * group, H, 1, D, generator=gen)
    k, v = torch.randn(n, H, keys, D, generator=gen), torch.randn(n, H, keys, D, generator=gen)
    shared = _step_in_c(q, k, v, group=group)
    one_at_a_time = _step_in_c(
        q, k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2),
        lineage=torch.zeros(n, group, keys, dtype=torch.long), group=group,
    )  # fmt: skip
    assert torch.equal(shared, one_at_a_time)
