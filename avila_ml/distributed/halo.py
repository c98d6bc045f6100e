"""Halo exchange: each rank's shard, extended along one axis by the values its neighbours
own (or by the padding mode's border at the edges of the global domain).

One idea covers every padding mode. A rank that needs the global positions ``[lo, hi)`` of an
axis (``lo < 0`` or ``hi > n`` reach past the domain's edges) maps each position to its source:
``zeros``/``causal`` leave it to a fill value, ``circular`` wraps (``i mod n``: the first and
last rank are neighbours), ``reflect`` mirrors, ``replicate`` clamps — the same index maps as
:func:`avila_ml.nn.functional.pad`. Grouping the sources by owner gives a :class:`HaloPlan`:
one message per (owner, receiver) pair. Every rank builds the plan of every rank from the
layout alone, so each knows what to send without asking. The plan is pure NumPy logic shared
by every transport (MPI on CPU, NCCL on GPU).

:class:`HaloGather` runs the plan (non-blocking receives posted first, sends next, the rank's
own interior copied while messages fly, then the halos placed); its backward is
:class:`HaloScatterAdd`, the exact adjoint: halo gradients travel back to their owners and are
added in (twice, for a reflect/replicate border that reads a value twice). Each is the
other's backward, so double backward works too.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..autograd.function import Function
from ..backends import backend_of

__all__ = ["HaloPlan", "halo_plan", "HaloGather", "HaloScatterAdd", "HaloStart", "HaloFinish", "Exchange",
           "source_index"]

MODES = ("zeros", "causal", "circular", "reflect", "replicate")
_TAG = 7100


def source_index(pos, n: int, mode: str):
    """Global source of each global position along an axis of size ``n`` under a padding mode;
    -1 means "fill" (the index maps of ``torch.nn.functional.pad``'s modes).

    Math: circular ``i mod n``; replicate ``clip(i, 0, n - 1)``; reflect ``m`` or ``2 (n - 1) - m``
    with ``m = i mod 2 (n - 1)``; zeros/causal ``i`` inside ``[0, n)``, else -1.

    Example:
        >>> from avila_ml.distributed.halo import source_index
        >>> [source_index(range(-2, 6), 4, m).tolist() for m in ("zeros", "circular", "reflect", "replicate")]
        [[-1, -1, 0, 1, 2, 3, -1, -1], [2, 3, 0, 1, 2, 3, 0, 1], [2, 1, 0, 1, 2, 3, 2, 1], [0, 0, 0, 1, 2, 3, 3, 3]]
    """
    pos = np.asarray(pos, dtype=np.int64)
    if mode in ("zeros", "causal"):
        return np.where((pos >= 0) & (pos < n), pos, -1)
    if mode == "circular":
        return pos % n
    if mode == "replicate":
        return np.clip(pos, 0, n - 1)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(pos)
        period = 2 * (n - 1)
        m = pos % period
        return np.where(m < n, m, period - m)
    raise ValueError(f"halo exchange: unknown padding mode {mode!r}; expected one of {MODES}")


class HaloPlan:
    """Who sends what to whom along one mesh axis (built by :func:`halo_plan`).

    For this rank at position ``me``: ``recv[p] = dest`` (positions in the extended shard that
    come from position ``p``), ``send[q] = src`` (local indices position ``q`` needs from here),
    ``own = (dest, src)`` (from the rank's own shard), ``fill`` (positions given the fill
    value), ``out_len`` (length of the extended shard), ``in_len`` (of the local shard).
    PyTorch has no counterpart (LBANN DistConv's halo plans are the nearest idea).

    Example:
        >>> from avila_ml.distributed import halo_plan
        >>> plan = halo_plan((0, 4, 8), ((-1, 5), (3, 9)), "circular", 0)   # 8 on 2 ranks, reach 1
        >>> plan.out_len, {p: d.tolist() for p, d in plan.recv.items()}, {q: s.tolist() for q, s in plan.send.items()}
        (6, {1: [0, 5]}, {1: [3, 0]})
    """

    def __init__(self, me, out_len, in_len, recv, send, own, fill):
        self.me, self.out_len, self.in_len = me, out_len, in_len
        self.recv, self.send, self.own, self.fill = recv, send, own, fill

    @property
    def identity(self) -> bool:
        """True when the extended shard is the local shard itself (no halo, nothing moves)."""
        d, s = self.own
        return (not self.recv and not self.send and not self.fill.size and self.out_len == self.in_len
                and np.array_equal(d, s) and np.array_equal(d, np.arange(self.in_len)))


@lru_cache(maxsize=512)
def halo_plan(starts: tuple, need: tuple, mode: str, me: int, what: str = "axis") -> HaloPlan:
    """The :class:`HaloPlan` of position ``me`` along an axis split at ``starts`` (``P + 1``
    numbers) when position ``q`` needs the global range ``need[q] = (lo, hi)`` extended by
    ``mode``. ``what`` names the axis (and the op) in errors.

    Raises ``ValueError`` when a halo (the part of a needed range outside the rank's own shard)
    is wider than the smallest shard: halos come from the nearest neighbour only. Beyond
    PyTorch (LBANN DistConv's halo plans are the nearest idea).

    Example:
        >>> from avila_ml.distributed import halo_plan
        >>> plan = halo_plan((0, 5, 10), ((-1, 6), (4, 11)), "reflect", 1)   # 10 on 2 ranks
        >>> plan.own[1].tolist(), plan.recv[0].tolist(), plan.send[0].tolist()
        ([0, 1, 2, 3, 4, 3], [0], [0])
    """
    starts = tuple(int(s) for s in starts)
    P, n = len(starts) - 1, starts[-1]
    sizes = [starts[i + 1] - starts[i] for i in range(P)]
    if mode not in MODES:
        raise ValueError(f"{what}: unknown padding mode {mode!r}; expected one of {MODES}")
    if P > 1:
        for q, (lo, hi) in enumerate(need):
            if hi <= lo:
                continue
            halo = max(starts[q] - lo, hi - starts[q + 1], 0)
            small = min(sizes)
            if halo > small:
                raise ValueError(
                    f"{what}: a shard of size {small} (shard sizes {sizes} along this axis) is smaller than "
                    f"the halo of {halo} that the kernel's reach needs (position {q} needs global range "
                    f"[{lo}, {hi}) of {n}); use fewer ranks on this axis or a larger volume")
    if mode == "reflect" and any(hi - lo > 0 and (-lo >= n or hi - n >= n) for lo, hi in need):
        raise ValueError(f"{what}: reflect padding reaches past the whole axis of size {n}")
    if mode == "circular" and any(hi - lo > 0 and (-lo > n or hi - n > n) for lo, hi in need):
        raise ValueError(f"{what}: circular padding reaches past the whole axis of size {n}")
    bounds = np.asarray(starts)

    def pieces(q):
        lo, hi = need[q]
        src = source_index(np.arange(lo, hi), n, mode)
        owner = np.searchsorted(bounds, src, side="right") - 1
        owner[src < 0] = -1
        return src, owner

    recv, own = {}, (np.zeros(0, np.int64), np.zeros(0, np.int64))
    src, owner = pieces(me)
    for p in np.unique(owner):
        dest = np.nonzero(owner == p)[0]
        if p < 0:
            continue
        if p == me:
            own = (dest, src[dest] - starts[me])
        else:
            recv[int(p)] = dest
    fill = np.nonzero(owner < 0)[0]
    send = {}
    for q in range(P):
        if q == me:
            continue
        s, o = pieces(q)
        mask = o == me
        if mask.any():
            send[q] = s[mask] - starts[me]
    lo, hi = need[me]
    return HaloPlan(me, max(hi - lo, 0), sizes[me], recv, send, own, fill)


def _index(idx):
    """A slice when ``idx`` is a run ``k, k+1, ...`` (a view, no copy), else the index array."""
    if idx.size and idx[-1] - idx[0] == idx.size - 1 and (np.diff(idx) == 1).all():
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _key(axis, idx, xp):
    i = _index(idx)
    return (slice(None),) * axis + (i if isinstance(i, slice) else xp.asarray(i),)


class Exchange:
    """One halo exchange: a :class:`HaloPlan` bound to a tensor dim, the ranks of the mesh line
    (group ranks by position) and the fill value of positions outside the domain. ``gather``
    runs the plan, ``scatter_add`` its adjoint, on raw arrays. No PyTorch counterpart.

    Example:
        >>> import numpy as np, avila_ml.distributed as dist
        >>> from avila_ml.distributed import Exchange, halo_plan
        >>> dist.init_process_group()
        >>> g = dist.distributed_c10d._get_default_group()
        >>> ex = Exchange(halo_plan((0, 3), ((-1, 4),), "replicate", 0), 0, [0], g)
        >>> ex.gather(np.array([1.0, 2.0, 3.0]))
        array([1., 1., 2., 3., 3.])
        >>> dist.destroy_process_group()
    """

    def __init__(self, plan: HaloPlan, axis: int, line, group, fill: float = 0.0):
        self.plan, self.axis, self.line, self.group, self.fill = plan, axis, list(line), group, fill

    def _shape(self, like, n):
        s = list(like.shape)
        s[self.axis] = n
        return tuple(s)

    def start(self, x, fill=None):
        """Post the messages and place what this rank has (interior, own-data borders, fill);
        returns ``(out, finish)``: ``finish()`` waits for the halos and places them. Work that
        does not read the halos (an interior convolution) can run in between."""
        plan, axis, xp = self.plan, self.axis, backend_of(x).xp
        fill = self.fill if fill is None else fill
        out = xp.empty(self._shape(x, plan.out_len), dtype=x.dtype)
        recvs = [(xp.empty(self._shape(x, dest.size), dtype=x.dtype), dest) for dest in plan.recv.values()]
        sends = [xp.ascontiguousarray(x[_key(axis, src, xp)]) for src in plan.send.values()]
        works = self.group.exchange(list(zip(sends, [self.line[q] for q in plan.send])),
                                    [(buf, self.line[p]) for (buf, _), p in zip(recvs, plan.recv)], _TAG + axis)
        # the interior (and a border built from own data) is copied while the halos travel
        if plan.own[0].size:
            out[_key(axis, plan.own[0], xp)] = x[_key(axis, plan.own[1], xp)]
        if plan.fill.size:
            out[_key(axis, plan.fill, xp)] = fill

        def finish():
            for w in works:
                w.wait()
            for buf, dest in recvs:
                out[_key(axis, dest, xp)] = buf
            sends.clear()  # the send buffers lived until the sends completed
            return out
        return out, finish

    def gather(self, x, fill=None):
        """The extended shard of ``x`` (plan forward)."""
        out, finish = self.start(x, fill)
        return finish()

    def scatter_start(self, g):
        """Post the adjoint's messages (the halo values of ``g`` go back to their owners);
        returns ``finish(g_total)``, which adds ``g_total``'s own positions and the received
        values into a new local-shard array (``g_total`` may add to ``g`` at own positions
        only; None skips them and just completes the messages)."""
        plan, axis, b = self.plan, self.axis, backend_of(g)
        xp = b.xp
        g = xp.ascontiguousarray(g)
        recvs = [(xp.empty(self._shape(g, src.size), dtype=g.dtype), src) for src in plan.send.values()]
        sends = [xp.ascontiguousarray(g[_key(axis, dest, xp)]) for dest in plan.recv.values()]
        works = self.group.exchange(list(zip(sends, [self.line[p] for p in plan.recv])),
                                    [(buf, self.line[q]) for (buf, _), q in zip(recvs, plan.send)], _TAG + 32 + axis)
        shape = self._shape(g, plan.in_len)

        def finish(g_total):
            out = None
            if g_total is not None:
                g_total = xp.ascontiguousarray(g_total)
                out = xp.zeros(shape, dtype=g.dtype)
                if plan.own[0].size:
                    _add(b, out, axis, plan.own[1], g_total[_key(axis, plan.own[0], xp)])
            for w in works:
                w.wait()
            if out is not None:
                for buf, src in recvs:
                    _add(b, out, axis, src, buf)
            sends.clear()
            return out
        return finish

    def scatter_add(self, g):
        """Each extended-shard value added back to where it came from (the adjoint of gather)."""
        return self.scatter_start(g)(g)

def _add(backend, out, axis, idx, values):
    """``out[..., idx, ...] += values`` along ``axis``; repeated indices (a replicate border
    reads the edge value several times) accumulate."""
    i = _index(idx)
    if isinstance(i, slice):
        out[(slice(None),) * axis + (i,)] += values
    elif np.unique(idx).size == idx.size:
        out[(slice(None),) * axis + (backend.xp.asarray(idx),)] += values
    else:
        backend.index_add(out, axis, backend.xp.asarray(idx), values)


class HaloGather(Function):
    """Differentiable halo exchange: the local shard extended by its halos along one axis.

    Math: ``y = G x`` with ``G`` the 0/1 selection matrix of the plan (rows of fill positions
    are zero, the fill value added); backward ``G^T g`` is :class:`HaloScatterAdd`. On one
    rank it is ``torch.nn.functional.pad`` along one dim (with ``value`` = the fill).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import Exchange, HaloGather, halo_plan
        >>> dist.init_process_group()
        >>> g = dist.distributed_c10d._get_default_group()
        >>> ex = Exchange(halo_plan((0, 3), ((-1, 4),), "circular", 0), 0, [0], g)
        >>> x = am.tensor([1.0, 2.0, 3.0], requires_grad=True)
        >>> y = HaloGather.apply(x, ex); y.sum().backward(); y, x.grad
        (tensor([3., 1., 2., 3., 1.], grad_fn=<HaloGatherBackward0>), tensor([2., 1., 2.]))
        >>> dist.destroy_process_group()
    """

    def forward(self, x, exchange):
        self.exchange = exchange
        return exchange.gather(x)

    def backward(self, g):
        return HaloScatterAdd.apply(g, self.exchange)


class HaloScatterAdd(Function):
    """The adjoint of :class:`HaloGather`: halo values sent back to their owners and added in
    (also the forward of the partial sums of a sharded transposed convolution).

    Math: ``x = G^T y``; backward ``G g`` (with fill 0). On one rank it is the backward of
    ``torch.nn.functional.pad``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import Exchange, HaloScatterAdd, halo_plan
        >>> dist.init_process_group()
        >>> g = dist.distributed_c10d._get_default_group()
        >>> ex = Exchange(halo_plan((0, 3), ((-1, 4),), "circular", 0), 0, [0], g)
        >>> HaloScatterAdd.apply(am.tensor([10.0, 1.0, 2.0, 3.0, 20.0]), ex)
        tensor([21.,  2., 13.])
        >>> dist.destroy_process_group()
    """

    def forward(self, y, exchange):
        self.exchange = exchange
        return exchange.scatter_add(y)

    def backward(self, g):
        return _GatherZeroFill.apply(g, self.exchange)


class _GatherZeroFill(Function):
    """``G g`` with fill 0: the backward of :class:`HaloScatterAdd` (the fill is a constant)."""

    def forward(self, x, exchange):
        self.exchange = exchange
        return exchange.gather(x, fill=0.0)

    def backward(self, g):
        return HaloScatterAdd.apply(g, self.exchange)


class HaloStart(Function):
    """The first half of a split :class:`HaloGather`: messages posted, the rank's own values
    placed; :class:`HaloFinish` fills the halos (``pending = ([], [], exchange)`` carries the
    finishing steps from one to the other). Between them, computation that reads only the rank's own positions
    overlaps the exchange. Backward: the adjoint exchange, started by ``HaloFinish``'s backward
    and completed here, so the backward of that computation overlaps it too (else
    :class:`HaloScatterAdd`). No PyTorch counterpart.

    Math: together ``HaloFinish(HaloStart(x)) = G x``; backward ``G^T g``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed.halo import Exchange, HaloFinish, HaloStart, halo_plan
        >>> dist.init_process_group()
        >>> ex = Exchange(halo_plan((0, 3), ((-1, 4),), "circular", 0), 0, [0],
        ...               dist.distributed_c10d._get_default_group())
        >>> pending = ([], [], ex)      # (forward finishes, backward finishes, the exchange)
        >>> x = am.tensor([1.0, 2.0, 3.0], requires_grad=True)
        >>> y, _ = HaloFinish.apply(HaloStart.apply(x, ex, pending), x, pending)
        >>> y.sum().backward(); y, x.grad
        (tensor([3., 1., 2., 3., 1.], grad_fn=<HaloFinishBackward0>), tensor([2., 1., 2.]))
        >>> dist.destroy_process_group()
    """

    def forward(self, x, exchange, pending):
        self.exchange, self.pending = exchange, pending
        out, finish = exchange.start(x)
        pending[0].append(finish)
        return out

    def backward(self, g):
        started = self.pending[1]
        if started:
            return _AdjointFinish.apply(g, self.exchange, started.pop())
        return HaloScatterAdd.apply(g, self.exchange)


class HaloFinish(Function):
    """Completes a :class:`HaloStart` (waits for the halos and writes them into the started
    array, returned as a view) and passes ``inner`` through (an output computed in between from
    own positions): in backward the adjoint exchange of the halos starts here, before
    ``inner``'s backward runs, and ``HaloStart``'s backward completes it. No PyTorch counterpart.

    Math: ``(y, z) = (x, inner)`` with the halo positions of ``x`` now written; backward
    ``(g_y, g_z)``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed.halo import Exchange, HaloFinish, HaloStart, halo_plan
        >>> dist.init_process_group()
        >>> ex = Exchange(halo_plan((0, 2), ((-1, 2),), "replicate", 0), 0, [0],
        ...               dist.distributed_c10d._get_default_group())
        >>> pending = ([], [], ex)
        >>> x = am.tensor([5.0, 6.0])
        >>> HaloFinish.apply(HaloStart.apply(x, ex, pending), x, pending)[0]
        tensor([5., 5., 6.])
        >>> dist.destroy_process_group()
    """

    is_view = True  # the halos are written into the started array, which is returned as a view

    def forward(self, x, inner, pending):
        self.pending = pending
        pending[0].pop()()
        return x.view(), inner.view()

    def backward(self, g_x, g_inner):
        return (_AdjointStart.apply(g_x, self.pending) if self.needs_input_grad[0] else None), g_inner


class _AdjointStart(Function):
    """Posts the adjoint exchange of ``g`` (finished by ``HaloStart``'s backward); identity."""

    is_view = True

    def forward(self, g, pending):
        from ..autograd.engine import _depth, queue_callback
        exchange = pending[2]
        finish = exchange.scatter_start(g)
        pending[1].append(finish)
        if _depth[0]:
            # a backward that never reaches HaloStart (autograd.grad of other inputs) still
            # completes the messages, so none is left to match a later exchange
            def drain():
                if finish in pending[1]:
                    pending[1].remove(finish)
                    finish(None)
            queue_callback(drain)
        return g.view()

    def backward(self, gg):
        return gg


class _AdjointFinish(Function):
    """Completes the adjoint exchange started by :class:`_AdjointStart`: ``G^T g``."""

    def forward(self, g, exchange, finish):
        self.exchange = exchange
        return finish(g)

    def backward(self, gg):
        return _GatherZeroFill.apply(gg, self.exchange)
