"""Key/value cache for incremental decoding.

While a decoder generates one token at a time, each self-attention layer would recompute the
keys and values of every earlier token at every step. The cache keeps them, so step t projects
only the new token and attends over the stored (B, H, t, D_h) keys and values.

Cross-attention keys and values come from the encoder output and never change during decoding:
a ``static`` cache computes them once, at the first step.

**Groups (beam search).** Beam search keeps k hypotheses per source as k consecutive rows, and
after each step re-ranks them — only ever within their source. A plain cache would copy every
row's whole history at every step (``index_select`` over all earlier keys) and give each row its
own copy of its source's keys. Instead, when a reorder first spreads each row over k rows, the
cache switches to *grouped* storage (``group = k``):

* a static cache keeps one row per source, which its k hypotheses share;
* a growing cache stores, per source and position, the k keys its hypotheses made there
  (``(B / k, H, T·k, D_h)``, position-major) and a small *lineage* table saying which of the k
  each hypothesis descends from at every position. Re-ranking then rewrites the lineage
  (B·T integers), not the keys.

Attention runs the k queries of a source together against the grouped keys, with a mask that
lets each hypothesis see only its own lineage — the same attention, without the copies. A reorder
that keeps each new group within one old group (re-ranking, or dropping the sources that are
done) moves lineage rows only: when sources are dropped and the rest keep their order, the cache
remembers which buffer row each kept source lives in rather than copying their keys, the step in C
reads through that, and any other reader first compacts the buffers (one copy, when needed). Anything
grouped attention cannot serve (masks, position biases, weights of a growing cache) reads
:meth:`KVCache.ungrouped`, the plain per-row keys. A reorder that leaves the groups falls back to
plain storage, so every index stays correct.

The storage is the cache's own business: an attention module hands :meth:`KVCache.attend` its
new per-head q, k, v and its attention kernel, and gets back every row's context — the module
never sees groups or lineage.

**Memory (a search's caches, batch after batch).** A search that knows its longest output
reserves that many positions (:meth:`KVCache.reserve`; the searches in ``heedful.decode`` reserve
up to 64), so the keys need not grow by copying. Their
buffers come from a :class:`CacheArena`, which takes them back when the search ends and hands them
to the next search. Why: fresh memory costs a page fault per 4 KiB at its first write, and the
allocator gives the freed caches of one batch back to the system before the next batch asks
again. On the 1,000 Multi30k test sources at beam 5, one arena for all batches halves the page
faults (230,000 → 123,000; the rest come from each step's short-lived tensors) and saves 1.2 % of
the time (``benchmarks/cache_memory.py``).
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from heedful.attention import cpu_kernel

# The most keys decode_attention.c takes (its MAX_KEYS: one row's scores live on its stack).
DECODE_KERNEL_MAX_KEYS = 4096
# The widest head it takes: a query and a weighted sum of this width live on its stack too.
DECODE_KERNEL_MAX_HEAD_WIDTH = 1024

# The attention kernel a cache calls (heedful.attention.attend.Attend): (q, k, v, **masks) -> (context, weights).
AttendFn = Callable[..., tuple[Tensor, Tensor | None]]


class CacheArena:
    """Memory for the key/value caches of one search at a time, kept for the next search.

    ``with arena.lease():`` around a search; its caches take buffers with :meth:`empty` and give
    back the ones they replace (:meth:`give_back`). When the lease ends every buffer it handed out
    is free again, for the next lease — so a batch's caches reuse the pages of the batch before.
    An arena keeps only the buffers its last search used (about that search's caches) until it is
    dropped; it serves one search at a time (decoding in several threads takes one arena per thread).
    """

    def __init__(self) -> None:
        self._free: list[Tensor] = []  # flat buffers nobody uses
        self._lent: dict[int, Tensor] = {}  # data_ptr -> the flat buffer handed out from there
        self._used: list[Tensor] = []  # every buffer handed out in this lease
        self._leased = False
        self._lock = threading.Lock()

    @contextmanager
    def lease(self) -> Iterator[CacheArena]:
        with self._lock:
            if self._leased:
                raise RuntimeError("this CacheArena already serves a search: give each thread its own")
            self._leased = True
        try:
            yield self
        finally:  # the search's caches are gone: the buffers it used are free, the others let go
            self._free, self._used = self._used, []
            self._lent.clear()
            self._leased = False

    @property
    def held_bytes(self) -> int:
        held = {id(b): b for b in [*self._free, *self._lent.values(), *self._used]}
        return sum(b.numel() * b.element_size() for b in held.values())

    def empty(self, like: Tensor, *shape: int) -> Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device: the smallest free
        buffer that holds it, or a new one."""
        n = math.prod(shape)
        fits = [b for b in self._free if b.dtype == like.dtype and b.device == like.device and b.numel() >= n]
        flat = min(fits, key=Tensor.numel) if fits else self._allocate(like, n)
        self._free = [b for b in self._free if b is not flat]
        self._lent[flat.data_ptr()] = flat
        if not any(b is flat for b in self._used):
            self._used.append(flat)
        return flat[:n].view(shape)

    def _allocate(self, like: Tensor, n: int) -> Tensor:
        return like.new_empty(n)

    def give_back(self, tensor: Tensor) -> None:
        """A buffer from :meth:`empty` that its cache no longer uses (anything else is ignored)."""
        flat = self._lent.pop(tensor.data_ptr(), None)
        if flat is not None:
            self._free.append(flat)


class KVCache:
    """Keys and values one attention module has seen so far.

    Plain storage holds (B, H, T, D_h) per tensor and grows by doubling, so appending a step is
    amortised O(1) instead of copying the whole history every step. Grouped storage (``group``
    > 1, see the module docstring) serves B = n·group query rows from n stored rows.
    """

    def __init__(self, static: bool = False):
        self.static = static
        self.group = 1  # consecutive query rows served by one stored row (1: plain storage)
        # Plain: (B, H, capacity, D_h). Grouped: (n, H, capacity·group, D_h), or static (n, H, S, D_h).
        self._k: Tensor | None = None
        self._v: Tensor | None = None
        self._lineage: Tensor | None = None  # grouped, growing: (n, group, capacity) which key each row reads
        # Grouped: the buffer row each of the n stored sources lives in, (n,) — set when sources
        # leave (beam search drops settled sentences) instead of copying the kept ones' keys; the
        # step in C reads through it, anything else first compacts the buffers (_compact). None:
        # source i in row i.
        self._rows: Tensor | None = None
        self.length = 0  # positions stored
        self._positions = 0  # reserved capacity (0: start at 16 and double)
        self._arena: CacheArena | None = None

    def reserve(self, positions: int, arena: CacheArena | None = None) -> None:
        """Before the first step: room for ``positions`` positions at once (no growing by copies;
        a static cache ignores it), and buffers from ``arena`` (inside its lease) — decoding's
        hints, followed only without gradients."""
        self._positions, self._arena = positions, arena

    @property
    def _lender(self) -> CacheArena | None:
        """Where new buffers come from: the arena, but not with gradients (autograd may keep a
        tensor past the lease)."""
        return None if torch.is_grad_enabled() else self._arena

    def _empty(self, like: Tensor, *shape: int) -> Tensor:
        lender = self._lender
        return like.new_empty(*shape) if lender is None else lender.empty(like, *shape)

    def _contiguous(self, x: Tensor) -> Tensor:
        lender = self._lender
        return x.contiguous() if lender is None else lender.empty(x, *x.shape).copy_(x)

    def _replace(self, k: Tensor, v: Tensor) -> None:
        """New storage, one row per stored row (built after :meth:`_compact`); the old buffers go
        back to the arena (nothing else holds them)."""
        if self._arena is not None:
            for old in (self._k, self._v):
                if old is not None:
                    self._arena.give_back(old)
        self._k, self._v, self._rows = k, v, None

    def _compact(self) -> None:
        """Buffers holding exactly the stored sources, in order (``_rows`` applied)."""
        if self._rows is None or self._k is None or self._v is None:
            return
        rows = self._rows
        if self.static:
            self._replace(self._k.index_select(0, rows), self._v.index_select(0, rows))
        else:
            self._replace(self._select_filled(self._k, rows), self._select_filled(self._v, rows))

    @property
    def filled(self) -> bool:
        return self._k is not None

    @property
    def q_offset(self) -> int:
        """The absolute position of the next query: the positions stored so far in a growing cache
        (self-attention while decoding), 0 in a static one (cross-attention has no positions)."""
        return 0 if self.static else self.length

    def attend(
        self,
        attend: AttendFn,
        q: Tensor,
        k: Tensor | None,
        v: Tensor | None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        bias: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Store the new keys and values, then attend ``q`` to everything stored with ``attend``.

        q: (B, H, T_q, D_h); k, v: the new (B, H, T_new, D_h) — None when a filled static cache
        already holds them (a static cache is filled once, at the first call). Masks and ``bias``
        are ``attend``'s, for the plain rows. Returns the context (B, H, T_q, D_h) and, with
        ``need_weights``, the weights (B, H, T_q, T_k).
        """
        group, T_q = self.group, q.shape[2]
        # One query a row (every decoding step): the step in C, when it can, attends — and, for a
        # growing cache, stores the new keys and values itself (append keeps their room only).
        one_query = T_q == 1 and attn_mask is None and bias is None and not need_weights
        in_c = one_query and (group == 1 or self._serves_groups(T_q, key_padding_mask, None, is_causal, None, False))
        new = None
        if not self.static:
            new = (k, v) if in_c and k.shape[2] == 1 else None  # type: ignore[union-attr]
            self.append(k, v, write=new is None)  # type: ignore[arg-type]
        elif not self.filled:
            self.set(k, v)  # type: ignore[arg-type]
        if in_c:
            # A grouped cache's rows share their source's padding: one mask row per stored row.
            masks = key_padding_mask if group == 1 or key_padding_mask is None else key_padding_mask[::group]
            context = self._attend_in_c(attend, q, masks, new)  # one query a row: no causal mask to apply
            if context is not None:
                return context, None
        if new is not None:  # the PyTorch path reads the new keys from the cache: store them first
            self._write_newest(*new)
        if group == 1 or not self._serves_groups(T_q, key_padding_mask, attn_mask, is_causal, bias, need_weights):
            k, v = self.ungrouped()  # every row's own keys, (B, H, T_k, D_h)
            masks = {"key_padding_mask": key_padding_mask, "attn_mask": attn_mask, "is_causal": is_causal}
            return attend(q, k, v, **masks, bias=bias, need_weights=need_weights)
        # Grouped: a source's `group` rows attend together, as one row of group·T_q queries, to the
        # source's keys — a static cache's one row, or a growing cache's `group` keys per position
        # with each row masked to its own lineage.
        if key_padding_mask is not None:  # the rows of a group share their source's padding
            key_padding_mask = key_padding_mask[::group]
        q = _group_rows(q, group)  # (B, H, T_q, D_h) -> (B / group, H, group·T_q, D_h)
        lineage = None if self.static else self.lineage_mask()  # (B / group, 1, group, T·group)
        context, weights = attend(
            q, self.k, self.v, key_padding_mask=key_padding_mask, attn_mask=lineage, need_weights=need_weights
        )
        weights = None if weights is None else _ungroup_rows(weights, group)  # (B, H, T_q, T_k)
        return _ungroup_rows(context, group), weights  # (B, H, T_q, D_h)

    def _attend_in_c(
        self, attend: AttendFn, q: Tensor, key_padding_mask: Tensor | None, new: tuple[Tensor, Tensor] | None = None
    ) -> Tensor | None:
        """One query per row: the step in decode_attention.c (one pass per stored row and head,
        each query row reading only its own keys) when ``attend`` computes plain scaled
        dot-product attention the kernel can do for ``q``; None otherwise (the PyTorch path).

        q: (n·g, H, 1, D_h) for n stored rows (sources) serving g query rows each (g = 1: plain
        storage); key_padding_mask: None or (n, T) bool, one row per stored row (static caches, or
        plain ones). ``new``: the newest position's keys and values (n·g, H, 1, D_h), whose room
        :meth:`append` kept without writing them: the kernel stores them before it attends (when it
        returns None, they are not stored). Returns the context (n·g, H, 1, D_h)."""
        step_kernel_scale = getattr(attend, "step_kernel_scale", None)
        scale = None if step_kernel_scale is None else step_kernel_scale(q)
        lib = cpu_kernel.load() if scale is not None else None
        k, v, lineage, T, rows = self._k, self._v, self._lineage, self.length, self._rows
        if lib is None or k is None or v is None or T > DECODE_KERNEL_MAX_KEYS:
            return None
        _, H, _, D = k.shape
        if D > DECODE_KERNEL_MAX_HEAD_WIDTH:
            return None
        n = k.shape[0] if rows is None else rows.shape[0]  # stored sources
        if rows is not None and (rows.dtype != torch.long or not rows.is_contiguous()):
            return None
        grouped_ok = lineage is not None or self.static or self.group == 1  # no lineage: every row reads 0 … T−1
        dtype = q.dtype
        laid_out = k.dtype == v.dtype == dtype and k.stride() == v.stride() and k.stride()[2:] == (D, 1)
        if not grouped_ok or not laid_out or q.stride(3) != 1 or q.shape != (n * self.group, H, 1, D):
            return None
        if lineage is not None and lineage.stride(2) != 1:
            return None
        if key_padding_mask is not None and (
            key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (n, T) or key_padding_mask.stride(1) != 1
        ):
            return None  # a mask of another shape: the PyTorch path names the problem
        k_new, v_new = new if new is not None else (None, None)
        new_strides = None
        if k_new is not None and v_new is not None:
            if not k_new.dtype == v_new.dtype == dtype or k_new.shape != q.shape or v_new.shape != q.shape:
                return None
            if k_new.stride(3) != 1 or v_new.stride(3) != 1:
                return None
            new_strides = (ctypes.c_int64 * 4)(k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1))
        out = q.new_empty(q.shape[0], H, 1, D, dtype=torch.float32)  # (n·g, H, 1, D_h)
        address = Tensor.data_ptr
        step = lib.heedful_decode_attention_f32 if dtype == torch.float32 else lib.heedful_decode_attention_bf16
        step(
            address(q), q.stride(0), q.stride(1),
            address(k), address(v), k.stride(0), k.stride(1),
            None if lineage is None else address(lineage),
            0 if lineage is None else lineage.stride(0), 0 if lineage is None else lineage.stride(1),
            None if key_padding_mask is None else address(key_padding_mask),
            0 if key_padding_mask is None else key_padding_mask.stride(0),
            address(out), n, self.group, H, T, D, scale,
            None if k_new is None else address(k_new), None if v_new is None else address(v_new), new_strides,
            None if rows is None else address(rows),
        )  # fmt: skip
        return out if dtype == torch.float32 else out.to(dtype)  # bf16: rounded once, at the end

    def _serves_groups(
        self,
        t_q: int,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        is_causal: bool,
        bias: Tensor | None,
        need_weights: bool,
    ) -> bool:
        """Whether grouped attention computes what each row's own attention would."""
        if attn_mask is not None or (is_causal and t_q > 1) or bias is not None:
            return False  # per-row masks and biases are laid out for plain rows
        if self.static:  # one source's keys for all its rows: any number of queries, its padding
            return True
        # A growing cache: one new position per row, and weights only over each row's own keys.
        return t_q == 1 and key_padding_mask is None and not need_weights

    @property
    def k(self) -> Tensor:
        """The stored keys: (B, H, T, D_h) plain; grouped, (n, H, T·group, D_h) or static (n, H, T, D_h)."""
        if self._k is None:
            raise RuntimeError("the key/value cache is empty")
        self._compact()
        return self._k[:, :, : self._stored_length]

    @property
    def v(self) -> Tensor:
        if self._v is None:
            raise RuntimeError("the key/value cache is empty")
        self._compact()
        return self._v[:, :, : self._stored_length]

    @property
    def _stored_length(self) -> int:
        return self.length * self.group if self._grouped_growing else self.length

    @property
    def _grouped_growing(self) -> bool:
        return self.group > 1 and not self.static

    def append(self, k: Tensor, v: Tensor, write: bool = True) -> tuple[Tensor, Tensor] | None:
        """Store new keys/values (B, H, T_new, D_h); return all of them as :attr:`k`, :attr:`v`.
        ``write=False``: keep their room and lineage only, the caller writes them (the step in C,
        or :meth:`_write_newest`), and return None."""
        t_new, group = k.shape[2], self.group
        if write or (self._k is not None and (self.length + t_new) * group > self._k.shape[2]):
            self._compact()  # written, or grown, as whole buffers: one row per source
        if self._grouped_growing:  # (n·g, H, T_new, D_h) -> (n, H, T_new, g, D_h): position-major slots
            n, H, D = k.shape[0] // group, k.shape[1], k.shape[3]
            k = k.view(n, group, H, t_new, D).permute(0, 2, 3, 1, 4)
            v = v.view(n, group, H, t_new, D).permute(0, 2, 3, 1, 4)
        if self._k is None or self._v is None:
            capacity = max(self._positions or 16, 2 * t_new)
            self._k = self._empty(k, *k.shape[:2], capacity, k.shape[3])
            self._v = self._empty(v, *v.shape[:2], capacity, v.shape[3])
        elif (self.length + t_new) * group > self._k.shape[2]:
            capacity = max(2 * self._k.shape[2] // group, self.length + t_new)  # in positions
            used = self.length * group
            self._replace(
                _grow(self._k, used, capacity * group, self._empty), _grow(self._v, used, capacity * group, self._empty)
            )
            if self._lineage is not None:
                self._lineage = _grow(self._lineage, self.length, capacity, Tensor.new_empty)
        if write:
            start, stop = self.length * group, (self.length + t_new) * group
            self._k[:, :, start:stop].view(k.shape)[...] = k  # written in place, one copy
            self._v[:, :, start:stop].view(v.shape)[...] = v
        if self._lineage is not None:  # every row reads the key it just made
            self._lineage[:, :, self.length : self.length + t_new] = torch.arange(group, device=k.device)[:, None]
        self.length += t_new
        # Without the write, nothing to hand back (reading :attr:`k` would compact the buffers)
        return (self.k, self.v) if write else None

    def _write_newest(self, k: Tensor, v: Tensor) -> None:
        """Write the newest position's keys and values (B, H, 1, D_h), whose room ``append(…,
        write=False)`` kept."""
        group, position = self.group, self.length - 1
        self._compact()
        if self._grouped_growing:  # (n·g, H, 1, D_h) -> (n, H, 1, g, D_h), as append lays them out
            n, H, D = k.shape[0] // group, k.shape[1], k.shape[3]
            k = k.view(n, group, H, 1, D).permute(0, 2, 3, 1, 4)
            v = v.view(n, group, H, 1, D).permute(0, 2, 3, 1, 4)
        assert self._k is not None and self._v is not None
        self._k[:, :, position * group : (position + 1) * group].view(k.shape)[...] = k
        self._v[:, :, position * group : (position + 1) * group].view(v.shape)[...] = v

    def set(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Replace the contents (used by static cross-attention caches)."""
        # Contiguous: projections arrive as strided head views, (B, T, H, D_h) transposed to
        # (B, H, T, D_h), and attention over strided keys was 1.5x slower at every later step.
        self._replace(self._contiguous(k), self._contiguous(v))
        self.length, self.group, self._lineage = k.shape[2], 1, None
        return self._k, self._v

    def lineage_mask(self) -> Tensor:
        """Grouped growing storage: (n, 1, group, T·group) bool, True where a row may attend —
        at each position, the one of its source's ``group`` keys its own history made."""
        if self._lineage is None:
            raise RuntimeError("lineage_mask needs grouped storage of a growing cache")
        n, g, T = self._lineage.shape[0], self.group, self.length
        slots = torch.arange(g, device=self._lineage.device)
        return (self._lineage[:, :, :T, None] == slots).view(n, 1, g, T * g)

    def ungrouped(self) -> tuple[Tensor, Tensor]:
        """Every query row's own keys and values, (B, H, T, D_h), whatever the storage."""
        if self.group == 1:
            return self.k, self.v
        if self.static:
            return self.k.repeat_interleave(self.group, 0), self.v.repeat_interleave(self.group, 0)
        return self._follow_lineage(self.k), self._follow_lineage(self.v)

    def _follow_lineage(self, grouped: Tensor) -> Tensor:
        assert self._lineage is not None
        n, H, _, D = grouped.shape
        g, T = self.group, self.length
        # One entry per (source, position, slot): (n·T·g, H, D_h).
        keys = grouped.reshape(n, H, T, g, D).permute(0, 2, 3, 1, 4).reshape(n * T * g, H, D)
        base = (torch.arange(n, device=grouped.device)[:, None, None] * T + torch.arange(T, device=grouped.device)) * g
        picked = keys[base + self._lineage[:, :, :T]]  # (n, g, T, H, D)
        return picked.permute(0, 1, 3, 2, 4).reshape(n * g, H, T, D)

    def reorder(self, index: Tensor) -> None:
        """Keep query rows ``index`` (B_new,), in that order — beam search re-ranks hypotheses."""
        if self._k is None or self._v is None:
            return
        n_stored = self._k.shape[0] if self._rows is None else self._rows.shape[0]
        rows, new, group = n_stored * self.group, index.shape[0], self.group
        if group > 1 and new % group == 0:
            parents = index.view(-1, group) // group  # (new / g, g): the stored row each new row reads
            if bool((parents == parents[:, :1]).all()):  # each new group draws on one stored group
                self._keep_groups(parents[:, 0], index)
                return
        if self.group == 1 and new > rows and new % rows == 0 and _spreads_rows(index, rows, new // rows):
            self._start_groups(new // rows)
            return
        self._compact()
        if self.group > 1:  # leaving the groups: back to plain storage, then a plain reorder
            self._replace(*self.ungrouped())
            self.group, self._lineage = 1, None
        if self.static:
            self._replace(self._k.index_select(0, index), self._v.index_select(0, index))
            return
        # Copy only the filled positions: copying the unused capacity too made a reorder cost up
        # to twice the keys it keeps.
        self._replace(self._select_filled(self._k, index), self._select_filled(self._v, index))

    def _keep_groups(self, stored: Tensor, index: Tensor) -> None:
        """Grouped storage: new group i reads stored row ``stored[i]``, new row r reads row
        ``index[r]`` — re-ranked hypotheses, and (when ``stored`` skips rows) sources dropped."""
        assert self._k is not None and self._v is not None
        if self._lineage is not None:  # (n, g, capacity): each row takes its parent's history
            capacity = self._lineage.shape[2]
            self._lineage = self._lineage.view(-1, capacity)[index].view(-1, self.group, capacity)
        n_stored = self._k.shape[0] if self._rows is None else self._rows.shape[0]
        in_place = torch.arange(n_stored, device=stored.device)
        if stored.shape == in_place.shape and torch.equal(stored, in_place):
            return  # every source stays where it is: no keys move
        if bool((stored[1:] > stored[:-1]).all()):
            # Sources leave, the rest in order: no keys move either — the kept sources' rows are
            # remembered, and each keeps its own row to write into.
            self._rows = (stored if self._rows is None else self._rows[stored]).contiguous()  # C reads it flat
            return
        self._compact()
        if self.static:
            self._replace(self._k.index_select(0, stored), self._v.index_select(0, stored))
        else:
            self._replace(self._select_filled(self._k, stored), self._select_filled(self._v, stored))

    def _start_groups(self, group: int) -> None:
        """Every stored row now serves ``group`` consecutive query rows."""
        assert self._k is not None and self._v is not None
        self._compact()
        self.group = group
        if self.static:
            return
        n, capacity = self._k.shape[0], self._k.shape[2]
        self._replace(
            _spread_positions(self._k, self.length, group, self._empty),
            _spread_positions(self._v, self.length, group, self._empty),
        )
        self._lineage = torch.zeros(n, group, capacity, dtype=torch.long, device=self._k.device)

    def _select_filled(self, buffer: Tensor, index: Tensor) -> Tensor:
        filled = slice(0, self._stored_length)
        if buffer.requires_grad and torch.is_grad_enabled():  # autograd takes no out=: no spare capacity
            return buffer[:, :, filled].index_select(0, index)
        selected = self._empty(buffer, index.shape[0], *buffer.shape[1:])  # (B_new, H, capacity, D_h)
        torch.index_select(buffer[:, :, filled], 0, index, out=selected[:, :, filled])
        return selected


def _group_rows(q: Tensor, group: int) -> Tensor:
    """(B, H, T, X) -> (B / group, H, group·T, X): each run of ``group`` rows becomes one row."""
    B, H, T, X = q.shape
    return q.view(B // group, group, H, T, X).transpose(1, 2).reshape(B // group, H, group * T, X)


def _ungroup_rows(x: Tensor, group: int) -> Tensor:
    """The inverse of :func:`_group_rows`: (B / group, H, group·T, X) -> (B, H, T, X)."""
    Bg, H, GT, X = x.shape
    return x.view(Bg, H, group, GT // group, X).transpose(1, 2).reshape(Bg * group, H, GT // group, X)


def _spread_positions(buffer: Tensor, filled: int, group: int, empty: Callable[..., Tensor]) -> Tensor:
    """(n, H, capacity, D_h) plain keys -> (n, H, capacity·group, D_h) grouped, position-major: so
    far the rows of a group share their history, so each filled position's key goes into all its
    ``group`` slots. Only the ``filled`` positions are copied (beam search groups after one step:
    copying the whole capacity was 16× the work)."""
    n, H, capacity, D = buffer.shape
    spread = empty(buffer, n, H, capacity * group, D)
    spread[:, :, : filled * group].view(n, H, filled, group, D).copy_(
        buffer[:, :, :filled, None].expand(-1, -1, -1, group, -1)
    )
    return spread


def _grow(buffer: Tensor, used: int, capacity: int, empty: Callable[..., Tensor]) -> Tensor:
    """A copy of ``buffer`` with room for ``capacity`` entries along dim 2, the first ``used`` kept."""
    bigger = empty(buffer, *buffer.shape[:2], capacity, *buffer.shape[3:])
    bigger[:, :, :used] = buffer[:, :, :used]
    return bigger


def _spreads_rows(index: Tensor, rows: int, times: int) -> bool:
    """Whether ``index`` is 0, 0, …, 1, 1, … — each of ``rows`` rows repeated ``times`` times."""
    return torch.equal(index, torch.arange(rows, device=index.device).repeat_interleave(times))
