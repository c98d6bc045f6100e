"""Pooling and resampling over 1-4 (any number of) spatial dims: max/avg pooling, adaptive
pooling, ``interpolate``.

Each op has one N-d implementation; the ``1d``..``4d`` names only fix the number of spatial
dims. Max pooling (:class:`MaxPool`) is a separable running maximum, one spatial axis at a
time, over strided views of the input (no window copy ``K`` times the output), that keeps a
small per-window code of where the maximum was (the first one on ties, NaN propagating, like
PyTorch's CPU kernels); its gradient writes each output's value at that position (assigned
per kernel offset where windows do not overlap, one scatter-add where they do), and is
itself a ``Function`` whose adjoint selects at the same positions, so every derivative
order works.
On the MNIST CNN's pooling (64, 64, 24, 24), kernel 2, this ran forward + backward about 3x
faster than the former argmax-index + gather/scatter-add path (in-process A/B on a loaded
2-core machine); oneDNN's pooling on the same plain C-order arrays (its ``simple_nchw``
kernel, or its JIT kernel behind NHWC reorders) was slower than this in every case measured,
so none is used. Adaptive max pooling with equal windows (``S % o == 0``, global pooling
included) is this max pooling; unequal windows gather per window offset.
Average pooling is a window sum (a ``Function`` paired with
its adjoint) divided by a constant map of window sizes. Adaptive average pooling and
(multi)linear interpolation are separable: one windowed gather (padding masked out, so a NaN
stays in its own windows) or two-tap gather per axis.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from ..dtypes import np_is_floating as _np_is_floating

from ..autograd.function import Function
from ..backends.constants import device_constant
from ..amp.autocast_mode import autocast_op
from ..backends import backend_of
from ..tensor import Tensor
from ._conv_geometry import int_tuple
from .indexing import IndexSelect, gather, index_select, masked_fill
from .shape import movedim

__all__ = [
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool4d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "avg_pool4d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_avg_pool4d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool4d",
    "interpolate", "upsample",
]


# ----------------------------------------------------------------------------- helpers


def _batched(op, input, d):
    """``(input as (N, C, *S), unbatched?)``; raises on a wrong rank."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(input).__name__}")
    if input.ndim not in (d + 1, d + 2):
        raise RuntimeError(f"{op}: expected a {d + 1}-d (unbatched) or {d + 2}-d (batched) input "
                           f"(N, C, {d} spatial dims), got input of shape {tuple(input.shape)}")
    if input.ndim == d + 1:
        return input.unsqueeze(0), True
    return input, False


def _pool_out(S, k, s, p, dl, ceil):
    """PyTorch's pooling output size (``pooling_output_shape``)."""
    num = S + 2 * p - dl * (k - 1) - 1 + (s - 1 if ceil else 0)
    o = num // s + 1
    if ceil and (o - 1) * s >= S + p:
        o -= 1
    return o


def _out_sizes(op, x, k, s, p, dl, ceil):
    S = x.shape[2:]
    o = tuple(_pool_out(*a, ceil) for a in zip(S, k, s, p, dl))
    if any(n < 1 for n in o) or any(n == 0 for n in S):
        raise RuntimeError(f"{op}: output size {o} is too small for input {tuple(x.shape)} with kernel {k}, "
                           f"stride {s}, padding {p}, dilation {dl}")
    return o


def _flat_index(xp, per_axis, S):
    """Flat index ``sum_a idx_a * stride_a`` from broadcastable per-axis index arrays."""
    d = len(S)
    flat = 0
    for a in range(d):
        st = math.prod(S[a + 1:])
        v = per_axis[a].reshape((-1,) + (1,) * (d - 1 - a))
        flat = flat + v * st
    return flat


def _running_argmax(views):
    """Given ``(values, flat_index)`` per window offset, in order: the first maximum of each
    window (a NaN wins, the last one, as in PyTorch's CPU kernels) and its index."""
    best = idx = None
    for vals, where in views:
        if best is None:
            xp = backend_of(vals).xp
            best = vals.copy()
            idx = xp.broadcast_to(where, vals.shape).astype(np.int64)
            continue
        m = (vals > best) | (vals != vals)
        xp.copyto(best, vals, where=m)
        xp.copyto(idx, xp.broadcast_to(where, vals.shape), where=m)
    return idx


def _gather_flat(x, idx, out_spatial):
    """``x[n, c, idx[n, c, ...]]`` over the flattened spatial dims, differentiably."""
    N, C = x.shape[:2]
    # explicit sizes: with N or C == 0, -1 cannot be inferred (an empty batch is valid input)
    flat = x.reshape(N, C, math.prod(x.shape[2:]))
    it = Tensor._wrap(idx.reshape(N, C, math.prod(idx.shape[2:])))
    return gather(flat, 2, it).reshape((N, C) + tuple(out_spatial)), Tensor._wrap(idx)


def _lowest(dtype):
    return -np.inf if _np_is_floating(np.dtype(dtype)) else np.iinfo(dtype).min


# ----------------------------------------------------------------------------- max pooling
def _axis_view(a, axis, kk, dl, n, st):
    """Along ``axis`` of ``a``: the positions ``kk * dl + i * st`` for ``i < n`` (a strided view)."""
    key = [slice(None)] * a.ndim
    key[axis] = slice(kk * dl, kk * dl + (n - 1) * st + 1, st)
    return a[tuple(key)]


def _code_dtype(K):
    return np.int8 if K < 128 else np.int16 if K < 32768 else np.int32 if K < 2 ** 31 else np.int64


_PARALLEL_MIN = 1 << 18  # elements below which splitting the batch over threads costs more than it saves


def _over_batch(fn, n, size):
    """``fn(batch slice)`` over the batch cut on the CPU thread pool (``_cpu_threads.over_batch``)."""
    from ._cpu_threads import over_batch
    return over_batch(fn, n, size, _PARALLEL_MIN)


def _window_max_parts(xpad, k, s, dl, o, exact_nan):
    """:func:`_window_max` of a NumPy array, its batch split over the CPU threads."""
    parts = _over_batch(lambda b: _window_max(np, xpad[b], k, s, dl, o, exact_nan), xpad.shape[0], xpad.size)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([b for b, _ in parts]), np.concatenate([c for _, c in parts])


def _window_max(xp, xpad, k, s, dl, o, exact_nan):
    """Max pooling of the padded ``xpad`` (N, C, *S_pad) as a separable running maximum, one
    spatial axis at a time (last first): ``(best, code)`` where ``code`` is the row-major flat
    offset of the maximum within its window (``sum_a k_a * prod(K[a+1:])``).

    Scanning each axis in order with ``v > best`` keeps the first maximum on ties, and the
    window's first maximum in row-major order is the first along the first axis of the
    per-row first maxima: the rule of PyTorch's CPU kernels. With ``exact_nan`` a NaN also
    replaces the running value (``v > best or v != v``), so the last NaN wins as in PyTorch;
    without it ``maximum`` still propagates any NaN into ``best``, which the caller checks.
    Each axis costs ``k_a`` passes over an array that shrinks axis by axis (no window copy).
    """
    d = len(k)
    best, code = xpad, None
    cdt = _code_dtype(math.prod(k))
    mult = 1
    for a in reversed(range(d)):
        ax = 2 + a

        def view(arr, kk):
            return _axis_view(arr, ax, kk, dl[a], o[a], s[a])
        b, c = view(best, 0), None if code is None else view(code, 0)
        for kk in range(1, k[a]):
            v = view(best, kk)
            m = v > b
            if exact_nan:
                m |= v != v
            step = cdt(kk * mult)
            if kk == 1:  # the first comparison makes the new arrays (no copy of the first view)
                b = xp.where(m, v, b) if exact_nan else xp.maximum(b, v)
                c = m.astype(cdt) * step if c is None else xp.where(m, view(code, kk) + step, c)
                continue
            if exact_nan:
                xp.copyto(b, v, where=m)
            else:
                xp.maximum(b, v, out=b)
            xp.copyto(c, step if code is None else view(code, kk) + step, where=m)
        best, code = b, c
        mult *= k[a]
    if code is None:  # a 1 x ... x 1 window: a strided selection, no comparison
        code = xp.zeros(best.shape, dtype=cdt)
    # a kernel of 1 on the axes reduced last leaves a strided view (of the input, when all are 1)
    owned = best is not xpad and best.base is None
    return (best if owned else best.copy()), xp.ascontiguousarray(code)


def _first_inside(S, k, s, p, dl, o, dtype):
    """Per output window, the code (row-major kernel offset) of its first position inside the
    input, as a (1, 1, *o) NumPy array."""
    d = len(S)
    code = np.zeros((1, 1) + tuple(o), dtype=np.int64)
    mult = 1
    for a in reversed(range(d)):
        pos = np.arange(o[a])[:, None] * s[a] - p[a] + np.arange(k[a])[None, :] * dl[a]
        first = ((pos >= 0) & (pos < S[a])).argmax(axis=1)  # every window has one (checked by the caller)
        code = code + (first * mult).reshape((-1,) + (1,) * (d - 1 - a))
        mult *= k[a]
    return code.astype(dtype)


class _PoolGeometry:
    """One max pooling's window geometry (N-d) and the per-window argmax codes of its forward."""

    def __init__(self, x_shape, k, s, p, dl, o, hi, code):
        self.x_shape, self.k, self.s, self.p, self.dl, self.o, self.hi = x_shape, k, s, p, dl, o, hi
        self.code = code
        S = x_shape[2:]
        self.pad_shape = x_shape[:2] + tuple(n + a + b for n, a, b in zip(S, p, hi))
        # windows that never share an input position (stride >= extent): the adjoint can
        # assign each offset's values instead of adding them
        self.disjoint = all(kk == 1 or (dd == 1 and st >= kk) for kk, st, dd in zip(k, s, dl))
        # ... and that also cover every input position: no zero fill needed
        self.covering = self.disjoint and not any(p) and not any(hi) and all(
            st == kk and n * st == sz for kk, st, n, sz in zip(k, s, o, S))

    def offsets(self):
        """``(flat offset j, slices of the padded input)`` for every kernel offset, row-major."""
        for j, kidx in enumerate(itertools.product(*[range(kk) for kk in self.k])):
            yield j, (slice(None), slice(None)) + tuple(
                slice(kk * dd, kk * dd + (n - 1) * st + 1, st) for kk, dd, n, st in zip(kidx, self.dl, self.o, self.s))

    def crop(self):
        return (slice(None), slice(None)) + tuple(slice(a, a + n) for a, n in zip(self.p, self.x_shape[2:]))

    def _kernel_offsets(self, S):
        """Per kernel offset code ``j``: its flat distance from the window start in an array
        of spatial shape ``S``."""
        st = [math.prod(S[a + 1:]) for a in range(len(S))]
        off = np.zeros(math.prod(self.k), dtype=np.int64)
        for j, kidx in enumerate(itertools.product(*[range(kk) for kk in self.k])):
            off[j] = sum(kk * dd * t for kk, dd, t in zip(kidx, self.dl, st))
        return off

    def padded_flat(self, xp):
        """The flat index of each maximum within the whole padded array (N, C, *S_pad)."""
        Sp = self.pad_shape[2:]
        d = len(Sp)
        off = self._kernel_offsets(Sp)
        base = _flat_index(xp, [xp.arange(n) * ss for n, ss in zip(self.o, self.s)], Sp)
        N, C = self.x_shape[:2]
        nc = (xp.arange(N * C, dtype=np.int64) * math.prod(Sp)).reshape((N, C) + (1,) * d)
        return xp.asarray(off)[self.code] + base + nc

    def indices(self, xp):
        """The flat index of each maximum within the input's spatial dims (PyTorch's ``indices``)."""
        S = self.x_shape[2:]
        off = self._kernel_offsets(S)
        base = _flat_index(xp, [xp.arange(n) * ss - pp for n, ss, pp in zip(self.o, self.s, self.p)], S)
        return xp.asarray(off)[self.code] + base


class MaxPool(Function):
    """N-d max pooling of ``(N, C, *S)``: ``y[n, c, i] = max_k x_pad[n, c, i * s + k * dl]``
    (``-inf`` padding). The forward keeps only the argmax codes (no input); the gradient goes
    to each window's first maximum through :class:`MaxPoolAdjoint`, itself differentiable.
    Arguments after ``x``: kernel, stride, padding, dilation, output size and the extra
    high-side padding of ceil mode, per spatial dim. The op behind ``max_pool{1..4}d``
    (PyTorch's ``max_pool2d_with_indices``).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.pooling import MaxPool
        >>> x = am.tensor([[[1.0, 3.0, 3.0, 2.0]]], requires_grad=True)
        >>> y = MaxPool.apply(x, (2,), (2,), (0,), (1,), (2,), (0,)); y
        tensor([[[3., 3.]]], grad_fn=<MaxPoolBackward0>)
        >>> y.sum().backward(); x.grad
        tensor([[[0., 1., 1., 0.]]])
    """

    def forward(self, x, k, s, p, dl, o, hi):
        xp = backend_of(x).xp
        if len(k) == 2 and isinstance(x, np.ndarray):
            from ..cpu_accel import _native_pool  # the compiled kernel: one pass, planes over the threads
            res = _native_pool.max_pool2d_forward(x, k, s, p, dl, o, _code_dtype(math.prod(k)))
            if res is not None:
                self.geom = _PoolGeometry(x.shape, k, s, p, dl, o, hi, res[1])
                return res[0]
        if any(p) or any(hi):
            xpad = xp.full(x.shape[:2] + tuple(n + a + b for n, a, b in zip(x.shape[2:], p, hi)), _lowest(x.dtype),
                           dtype=x.dtype)
            xpad[(slice(None), slice(None)) + tuple(slice(a, a + n) for a, n in zip(p, x.shape[2:]))] = x
        else:
            xpad = x
        floating = _np_is_floating(x.dtype)
        # on a GPU, asking whether a NaN occurred would stall the stream (a device->host sync):
        # there the NaN-exact scan runs always, on the host the cheap one first
        host = backend_of(x).name == "numpy"
        if host:
            best, code = _window_max_parts(xpad, k, s, dl, o, exact_nan=False)
        else:
            best, code = _window_max(xp, xpad, k, s, dl, o, exact_nan=floating)
        if floating and host and bool(xp.isnan(best).any()):  # a NaN in some window: PyTorch's NaN rule
            best, code = _window_max(xp, xpad, k, s, dl, o, exact_nan=True)
        if xpad is not x:
            # a window whose input values all equal the padding value (-inf) may have found its
            # "first maximum" in the padding; PyTorch points it at the window's first input position
            low = best == _lowest(x.dtype)
            if not host or bool(low.any()):
                xp.copyto(code, xp.asarray(_first_inside(x.shape[2:], k, s, p, dl, o, code.dtype)), where=low)
        self.geom = _PoolGeometry(x.shape, k, s, p, dl, o, hi, code)
        return best

    def backward(self, g, *_):
        return MaxPoolAdjoint.apply(g, self.geom)


class MaxPoolWithIndices(MaxPool):
    """:class:`MaxPool` that also returns the flat input index of each maximum (int64, not
    differentiable), PyTorch's ``return_indices=True`` (``max_pool2d_with_indices``):
    ``index = sum_a (i_a * s_a - p_a + k_a * dl_a) * prod(S[a+1:])`` of the window's argmax.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.pooling import MaxPoolWithIndices
        >>> MaxPoolWithIndices.apply(am.tensor([[[1.0, 3.0, 5.0, 2.0]]]), (2,), (2,), (0,), (1,), (2,), (0,))
        (tensor([[[3., 5.]]]), tensor([[[1, 2]]]))
    """

    non_differentiable = (1,)

    def forward(self, x, k, s, p, dl, o, hi):
        best = super().forward(x, k, s, p, dl, o, hi)
        return best, self.geom.indices(backend_of(x).xp)


class MaxPoolAdjoint(Function):
    """The gradient of :class:`MaxPool`: ``gx[argmax of window i] += g[i]``, zero elsewhere
    (PyTorch's ``max_pool2d_with_indices_backward``). Its own adjoint is
    :class:`MaxPoolSelect` (double backward). ``geom`` is the forward's ``_PoolGeometry``.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.pooling import MaxPool, MaxPoolAdjoint
        >>> y = MaxPool.apply(am.tensor([[[1.0, 3.0, 5.0, 2.0]]], requires_grad=True), (2,), (2,), (0,), (1,), (2,), (0,))
        >>> MaxPoolAdjoint.apply(am.tensor([[[10.0, 20.0]]]), y.grad_fn.geom)
        tensor([[[ 0., 10., 20.,  0.]]])
    """

    def forward(self, g, geom):
        self.geom = geom
        if len(geom.k) == 2 and isinstance(g, np.ndarray):
            from ..cpu_accel import _native_pool  # the compiled kernel
            gx = _native_pool.max_pool2d_backward(np.ascontiguousarray(g), geom.code, geom.x_shape, geom.k, geom.s,
                                                  geom.p, geom.dl)
            if gx is not None:
                return gx
        b = backend_of(g)
        xp = b.xp
        gpad = (xp.empty if geom.covering else xp.zeros)(geom.pad_shape, dtype=g.dtype)
        if geom.disjoint:  # every padded position lies in at most one window: assign per offset
            def part(batch):  # samples ``batch`` (a slice): disjoint regions of gpad
                gb, cb, pb = g[batch], geom.code[batch], gpad[batch]
                for j, key in geom.offsets():
                    xp.multiply(gb, cb == j, out=pb[key])
            if b.name == "numpy":
                _over_batch(part, g.shape[0], g.size)
            else:
                part(slice(None))
        else:
            # overlapping windows: one scatter-add at the flat argmax positions (bincount on the
            # CPU) instead of a masked add per kernel offset; 1.5-13x faster for 3x3 / 3x3x3
            # windows of stride 1-2 (in-process, loaded machine), slower for disjoint ones
            b.scatter_add(gpad.reshape(-1), (geom.padded_flat(xp).reshape(-1),), xp.ascontiguousarray(g).reshape(-1))
        if not any(geom.p) and not any(geom.hi):
            return gpad
        return xp.ascontiguousarray(gpad[geom.crop()])

    def backward(self, gg):
        return MaxPoolSelect.apply(gg, self.geom)


class MaxPoolSelect(Function):
    """``y[n, c, i] = x[n, c, argmax of window i]`` for the argmax codes of a :class:`MaxPool`
    (the adjoint of :class:`MaxPoolAdjoint`; PyTorch gathers with the saved indices).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.pooling import MaxPool, MaxPoolSelect
        >>> y = MaxPool.apply(am.tensor([[[1.0, 3.0, 5.0, 2.0]]], requires_grad=True), (2,), (2,), (0,), (1,), (2,), (0,))
        >>> MaxPoolSelect.apply(am.tensor([[[0.1, 0.2, 0.3, 0.4]]]), y.grad_fn.geom)
        tensor([[[0.2000, 0.3000]]])
    """

    def forward(self, x, geom):
        self.geom = geom
        xp = backend_of(x).xp
        if any(geom.p) or any(geom.hi):
            xpad = xp.zeros(geom.pad_shape, dtype=x.dtype)
            xpad[geom.crop()] = x
        else:
            xpad = x
        out = xp.zeros(geom.code.shape, dtype=x.dtype)
        for j, key in geom.offsets():
            xp.copyto(out, xpad[key], where=geom.code == j)
        return out

    def backward(self, g):
        return MaxPoolAdjoint.apply(g, self.geom)


def _max_pool(op, d, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    x, unbatched = _batched(op, input, d)
    k = int_tuple(kernel_size, d, "kernel_size", op, 1)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else int_tuple(stride, d, "stride", op, 1)
    p = int_tuple(padding, d, "padding", op, 0)
    dl = int_tuple(dilation, d, "dilation", op, 1)
    for a in range(d):
        if p[a] > k[a] // 2:
            raise RuntimeError(f"{op}: pad should be at most half of kernel size, but got padding {p} and "
                               f"kernel_size {k}")
    o = _out_sizes(op, x, k, s, p, dl, ceil_mode)
    for a in range(d):
        pos = np.arange(o[a])[:, None] * s[a] - p[a] + np.arange(k[a])[None, :] * dl[a]
        if not ((pos >= 0) & (pos < x.shape[2 + a])).any(axis=1).all():
            raise RuntimeError(f"{op}: with padding {p} and dilation {dl}, a window of kernel {k} lies entirely "
                               f"in the padding of the input {tuple(x.shape)}; reduce padding or dilation")
    out, ind = _max_pool_core(x, k, s, p, dl, o, return_indices)
    if unbatched:
        out = out.squeeze(0)
        ind = None if ind is None else ind.squeeze(0)
    return (out, ind) if return_indices else out


def _max_pool_core(x, k, s, p, dl, o, return_indices):
    """``(pooled, flat indices or None)`` of the batched ``x``."""
    S = x.shape[2:]
    hi = tuple(max(0, (n - 1) * st + dd * (kk - 1) - pp - (sz - 1)) for n, st, dd, kk, pp, sz in zip(o, s, dl, k, p, S))
    if return_indices:
        out, ind = MaxPoolWithIndices.apply(x, k, s, p, dl, o, hi)
        return out, ind
    return MaxPool.apply(x, k, s, p, dl, o, hi), None


_MAXPOOL_DOC = """{d}-D max pooling over an input ``(N, C, {dims})`` or ``(C, {dims})``
(``torch.nn.functional.max_pool{d}d``{extra}).

Math: ``out[n, c, i] = max_k x_pad[n, c, i * stride + k * dilation]`` with ``-inf`` padding;
output size ``floor((S + 2 p - dilation (K - 1) - 1) / stride) + 1`` (``ceil`` with
``ceil_mode``, dropping a last window that would start in the padding). ``stride`` defaults
to ``kernel_size``; ``padding`` is at most half the kernel. The gradient flows to the
argmax (the first one on ties). ``return_indices=True`` also returns the flat index of each
maximum within the input's spatial dims (int64), as PyTorch does.

Example:
    >>> import avila_ml as am
    >>> x = am.arange({n}.0).reshape({shape})
    >>> am.nn.functional.max_pool{d}d(x, 2){sel}
    {out}
"""


def _max_pool_fn(d, extra, n, shape, sel, out):
    op = f"max_pool{d}d"

    def fn(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        return _max_pool(op, d, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)

    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = _MAXPOOL_DOC.format(d=d, dims=", ".join("S%d" % i for i in range(1, d + 1)), extra=extra,
                                     n=n, shape=shape, sel=sel, out=out)
    return fn


max_pool1d = _max_pool_fn(1, "", 4, "1, 1, 4", "", "tensor([[[1., 3.]]])")
max_pool2d = _max_pool_fn(2, "", 16, "1, 1, 4, 4", "", "tensor([[[[ 5.,  7.],\n              [13., 15.]]]])")
max_pool3d = autocast_op("max_pool3d")(_max_pool_fn(3, "", 8, "1, 2, 2, 2", "", "tensor([[[[7.]]]])"))
max_pool4d = _max_pool_fn(4, "; PyTorch has no 4-D version", 16, "1, 2, 2, 2, 2", "", "tensor([[[[[15.]]]]])")


# ----------------------------------------------------------------------------- window sums
def _window_slices(kidx, s, o):
    return (slice(None), slice(None)) + tuple(slice(kk, kk + (n - 1) * st + 1, st) for kk, n, st in zip(kidx, o, s))


class WindowSum(Function):
    """``y[n, c, i] = sum_k x_pad[n, c, i * stride + k]`` with zero padding ``(lo, hi)``."""

    def forward(self, x, k, s, lo, hi):
        self.args = (k, s, lo, hi, x.shape[2:])
        xp = backend_of(x).xp
        xpad = xp.pad(x, ((0, 0), (0, 0)) + tuple(zip(lo, hi))) if any(lo) or any(hi) else x
        o = tuple((n - kk) // st + 1 for n, kk, st in zip(xpad.shape[2:], k, s))
        y = None
        for kidx in itertools.product(*[range(kk) for kk in k]):
            v = xpad[_window_slices(kidx, s, o)]
            y = v.copy() if y is None else xp.add(y, v, out=y)
        return y

    def backward(self, g):
        k, s, lo, hi, S = self.args
        return WindowSumT.apply(g, k, s, lo, hi, S)


class WindowSumT(Function):
    """The adjoint of :class:`WindowSum`: each output adds its value to its window."""

    def forward(self, g, k, s, lo, hi, S):
        self.args = (k, s, lo, hi)
        xp = backend_of(g).xp
        o = g.shape[2:]
        gpad = xp.zeros(g.shape[:2] + tuple(n + a + b for n, a, b in zip(S, lo, hi)), dtype=g.dtype)
        for kidx in itertools.product(*[range(kk) for kk in k]):
            gpad[_window_slices(kidx, s, o)] += g
        crop = (slice(None), slice(None)) + tuple(slice(a, a + n) for a, n in zip(lo, S))
        return xp.ascontiguousarray(gpad[crop])

    def backward(self, gg):
        k, s, lo, hi = self.args
        return WindowSum.apply(gg, k, s, lo, hi)


def _avg_pool(op, d, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    x, unbatched = _batched(op, input, d)
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: expected a floating-point input, got {x.dtype}")
    k = int_tuple(kernel_size, d, "kernel_size", op, 1)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else int_tuple(stride, d, "stride", op, 1)
    p = int_tuple(padding, d, "padding", op, 0)
    for a in range(d):
        if p[a] > k[a] // 2:
            raise RuntimeError(f"{op}: pad should be at most half of kernel size, but got padding {p} and kernel_size {k}")
    if divisor_override is not None and int(divisor_override) == 0:
        raise RuntimeError(f"{op}: divisor_override must be non-zero")
    o = _out_sizes(op, x, k, s, p, (1,) * d, ceil_mode)
    S = x.shape[2:]
    hi = tuple(max(0, (n - 1) * st + kk - pp - sz) for n, st, kk, pp, sz in zip(o, s, k, p, S))
    total = WindowSum.apply(x, k, s, p, tuple(hh + 0 for hh in hi))
    if divisor_override is not None:
        out = total * (1.0 / float(divisor_override))
    else:
        def inverse_divisor():
            div = None
            for a in range(d):
                start = np.arange(o[a]) * s[a] - p[a]
                end = np.minimum(start + k[a], S[a] + p[a])
                size = end - start
                if not count_include_pad:
                    size = np.minimum(end, S[a]) - np.maximum(start, 0)
                v = size.reshape((-1,) + (1,) * (d - 1 - a)).astype(np.float64)
                div = v if div is None else div * v
            return (1.0 / div).astype(x.array.dtype)
        inv = device_constant(backend_of(x.array), ("avg_pool_divisor", o, s, p, k, tuple(S),
                                                    bool(count_include_pad), str(x.array.dtype)), inverse_divisor)
        out = total * Tensor._wrap(inv)
    return out.squeeze(0) if unbatched else out


_AVGPOOL_DOC = """{d}-D average pooling over an input ``(N, C, {dims})`` or ``(C, {dims})``
(``torch.nn.functional.avg_pool{d}d``{extra}).

Math: ``out[n, c, i] = (1 / D_i) sum_k x_pad[n, c, i * stride + k]`` with zero padding. ``D_i``
is ``divisor_override`` when given; else the window size clipped to the padded input
(``count_include_pad=True``) or the number of non-padding elements in the window
(``count_include_pad=False``), PyTorch's rules, ``ceil_mode`` included. ``stride`` defaults
to ``kernel_size``; ``padding`` is at most half the kernel.

Example:
    >>> import avila_ml as am
    >>> x = am.arange({n}.0).reshape({shape})
    >>> am.nn.functional.avg_pool{d}d(x, 2){sel}
    {out}
"""


def _avg_pool_fn(d, extra, n, shape, sel, out):
    op = f"avg_pool{d}d"

    def fn(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
           divisor_override=None):
        return _avg_pool(op, d, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = _AVGPOOL_DOC.format(d=d, dims=", ".join("S%d" % i for i in range(1, d + 1)), extra=extra,
                                     n=n, shape=shape, sel=sel, out=out)
    return fn


avg_pool1d = _avg_pool_fn(1, "", 4, "1, 1, 4", "", "tensor([[[0.5000, 2.5000]]])")
avg_pool2d = _avg_pool_fn(2, "", 16, "1, 1, 4, 4", "", "tensor([[[[ 2.5000,  4.5000],\n              [10.5000, 12.5000]]]])")
avg_pool3d = autocast_op("avg_pool3d")(_avg_pool_fn(3, "", 8, "1, 2, 2, 2", "", "tensor([[[[3.5000]]]])"))
avg_pool4d = _avg_pool_fn(4, "; PyTorch has no 4-D version", 16, "1, 2, 2, 2, 2", "", "tensor([[[[[7.5000]]]]])")


# ----------------------------------------------------------------------------- adaptive pooling
def _adaptive_sizes(op, x, output_size, d):
    if isinstance(output_size, (int, np.integer)) or output_size is None:
        output_size = (output_size,) * d
    output_size = tuple(output_size)
    if len(output_size) == 1 and d > 1:
        output_size = output_size * d
    if len(output_size) != d:
        raise ValueError(f"{op}: output_size must be an int or a tuple of {d} ints (None keeps a dim), got {output_size}")
    o = tuple(int(S) if n is None else int(n) for n, S in zip(output_size, x.shape[2:]))
    if any(n < 1 for n in o) or any(S == 0 for S in x.shape[2:]):
        raise RuntimeError(f"{op}: output_size {o} must be >= 1 and the input {tuple(x.shape)} non-empty")
    return o


def _adaptive_windows(S, o):
    """PyTorch's windows: ``start = floor(i S / o)``, ``end = ceil((i + 1) S / o)``."""
    i = np.arange(o)
    return (i * S) // o, -((-(i + 1) * S) // o)


def _adaptive_avg(op, d, input, output_size):
    x, unbatched = _batched(op, input, d)
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: expected a floating-point input, got {x.dtype}")
    o = _adaptive_sizes(op, x, output_size, d)
    xp = backend_of(x.array).xp
    out = x
    for a in range(d):
        S = x.shape[2 + a]
        if o[a] == S:
            continue
        start, end = _adaptive_windows(S, o[a])
        # gather each window's taps (padded to the widest window) and zero the padding with
        # ``where``: a dense averaging matrix would spread one NaN/inf to every window (0 * nan)
        kmax = int((end - start).max())
        taps = start[:, None] + np.arange(kmax)[None, :]           # (o, kmax)
        valid = taps < end[:, None]
        taps = np.minimum(taps, S - 1)
        last = movedim(out, 2 + a, -1)                             # (..., S)
        g = IndexSelect.apply(last, xp.asarray(taps.reshape(-1)), last.ndim - 1)
        g = g.reshape(*last.shape[:-1], o[a], kmax)                # (..., o, kmax)
        g = masked_fill(g, xp.asarray(~valid), 0.0)
        counts = Tensor._wrap(xp.asarray((end - start).astype(x.array.dtype)))
        out = movedim(g.sum(-1) / counts, -1, 2 + a)
    return out.squeeze(0) if unbatched else out


def _adaptive_max(op, d, input, output_size, return_indices):
    x, unbatched = _batched(op, input, d)
    o = _adaptive_sizes(op, x, output_size, d)
    if all(S % n == 0 for S, n in zip(x.shape[2:], o)):
        # equal windows, ``[i S / o, (i + 1) S / o)``: plain max pooling with kernel = stride =
        # S / o (global pooling included), which runs without gathering a copy per window offset
        k = tuple(S // n for S, n in zip(x.shape[2:], o))
        out, ind = _max_pool_core(x, k, k, (0,) * d, (1,) * d, o, return_indices)
        if unbatched:
            out = out.squeeze(0)
            ind = None if ind is None else ind.squeeze(0)
        return (out, ind) if return_indices else out
    xa = x.array
    xp = backend_of(xa).xp
    S = xa.shape[2:]
    def window_table(n, m):
        start, end = _adaptive_windows(n, m)
        kmax = int((end - start).max())
        return np.minimum(start[:, None] + np.arange(kmax)[None, :], (end - 1)[:, None])

    tables = [device_constant(backend_of(xa), ("adaptive_window", S[a], o[a]),
                              functools.partial(window_table, S[a], o[a])) for a in range(d)]

    def views():
        for kidx in itertools.product(*[range(t.shape[1]) for t in tables]):
            cols = [t[:, kk] for t, kk in zip(tables, kidx)]
            yield xa[(slice(None), slice(None)) + xp.ix_(*cols)], _flat_index(xp, cols, S)

    idx = _running_argmax(views())
    out, ind = _gather_flat(x, idx, o)
    if unbatched:
        out, ind = out.squeeze(0), ind.squeeze(0)
    return (out, ind) if return_indices else out


_ADAPTIVE_DOC = """{d}-D adaptive {kind} pooling to a fixed output size, input ``(N, C, {dims})`` or
``(C, {dims})`` (``torch.nn.functional.adaptive_{kind}_pool{d}d``{extra}).

Math: output ``i`` along an axis of size ``S`` pools the window ``[floor(i S / o),
ceil((i + 1) S / o))`` (PyTorch's windows); ``output_size`` 1 is global pooling and a
``None`` entry keeps that dim. {more}

Example:
    >>> import avila_ml as am
    >>> x = am.arange({n}.0).reshape({shape})
    >>> am.nn.functional.adaptive_{kind}_pool{d}d(x, 1){sel}
    {out}
"""


def _adaptive_fn(kind, d, extra, n, shape, sel, out):
    op = f"adaptive_{kind}_pool{d}d"
    if kind == "avg":
        def fn(input, output_size):
            return _adaptive_avg(op, d, input, output_size)
        more = "The average is separable: one small averaging matrix per axis."
    else:
        def fn(input, output_size, return_indices=False):
            return _adaptive_max(op, d, input, output_size, return_indices)
        more = ("The gradient flows to the first maximum of each window; ``return_indices`` also "
                "returns the flat input indices of the maxima.")
    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = _ADAPTIVE_DOC.format(d=d, kind=kind, dims=", ".join("S%d" % i for i in range(1, d + 1)),
                                      extra=extra, more=more, n=n, shape=shape, sel=sel, out=out)
    return fn


_NO4D = "; PyTorch has no 4-D version"
adaptive_avg_pool1d = _adaptive_fn("avg", 1, "", 4, "1, 1, 4", "", "tensor([[[1.5000]]])")
adaptive_avg_pool2d = _adaptive_fn("avg", 2, "", 4, "1, 2, 2", "", "tensor([[[1.5000]]])")
adaptive_avg_pool3d = autocast_op("adaptive_avg_pool3d")(_adaptive_fn("avg", 3, "", 8, "1, 2, 2, 2", "", "tensor([[[[3.5000]]]])"))
adaptive_avg_pool4d = _adaptive_fn("avg", 4, _NO4D, 16, "1, 2, 2, 2, 2", ".shape", "(1, 1, 1, 1, 1)")
adaptive_max_pool1d = _adaptive_fn("max", 1, "", 4, "1, 1, 4", "", "tensor([[[3.]]])")
adaptive_max_pool2d = _adaptive_fn("max", 2, "", 4, "1, 2, 2", "", "tensor([[[3.]]])")
adaptive_max_pool3d = _adaptive_fn("max", 3, "", 8, "1, 2, 2, 2", "", "tensor([[[[7.]]]])")
adaptive_max_pool4d = _adaptive_fn("max", 4, _NO4D, 16, "1, 2, 2, 2, 2", ".shape", "(1, 1, 1, 1, 1)")


# ----------------------------------------------------------------------------- interpolate
_LINEAR_RANK = {"linear": 1, "bilinear": 2, "trilinear": 3, "quadrilinear": 4}
_MODES = ("nearest", "nearest-exact", "area", "multilinear") + tuple(_LINEAR_RANK)


def _interp_sizes(op, x, size, scale_factor, recompute_scale_factor, d):
    S = x.shape[2:]
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: exactly one of size or scale_factor must be given (got size={size!r}, "
                         f"scale_factor={scale_factor!r})")
    if size is not None:
        o = int_tuple(size, d, "size", op, 1)
        return o, (None,) * d
    if isinstance(scale_factor, (int, float, np.number)):
        sf = (float(scale_factor),) * d
    else:
        sf = tuple(float(v) for v in scale_factor)
        if len(sf) != d:
            raise ValueError(f"{op}: scale_factor must be a float or a tuple of {d} floats, got {scale_factor}")
    if any(v <= 0 for v in sf):
        raise ValueError(f"{op}: scale_factor must be positive, got {sf}")
    o = tuple(int(math.floor(n * v)) for n, v in zip(S, sf))
    if any(n < 1 for n in o):
        raise RuntimeError(f"{op}: input {tuple(x.shape)} with scale_factor {sf} gives an empty output {o}")
    return o, ((None,) * d if recompute_scale_factor else sf)


def _nearest_index(S, o, sf, exact):
    """PyTorch's nearest source index, computed in float32 as its CPU kernel does."""
    if o == S:
        return np.arange(o)
    scale = np.float32(1.0 / sf) if sf is not None else np.float32(S) / np.float32(o)
    dst = np.arange(o, dtype=np.float32)
    src = np.floor((dst + np.float32(0.5)) * scale) if exact else np.floor(dst * scale)
    return np.minimum(src.astype(np.int64), S - 1)


def _linear_taps(S, o, sf, align_corners, dtype):
    """Source indices ``i0, i1`` and weight ``lambda1`` of (multi)linear interpolation on one axis
    (PyTorch's ``area_pixel_compute_source_index``, in the input's precision)."""
    ft = np.float64 if dtype == np.float64 else np.float32
    dst = np.arange(o, dtype=ft)
    if o == S:
        return np.arange(o), np.arange(o), np.zeros(o, dtype=ft)
    if align_corners:
        scale = ft(S - 1) / ft(o - 1) if o > 1 else ft(0)
        src = dst * scale
    else:
        scale = ft(1.0 / sf) if sf is not None else ft(S) / ft(o)
        src = np.maximum(scale * (dst + ft(0.5)) - ft(0.5), ft(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, S - 1)
    lam = np.clip(src - i0.astype(ft), 0, 1).astype(ft)
    return i0, i1, lam


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    """Resample the spatial dims of ``(N, C, *S)`` with 1-4 (any number of) spatial dims
    (``torch.nn.functional.interpolate``).

    Modes: ``"nearest"`` (source ``floor(i * S / o)``, PyTorch's legacy rule),
    ``"nearest-exact"``, ``"area"`` (adaptive average pooling), and the linear family,
    separable over the axes: ``"linear"`` (3-d input), ``"bilinear"`` (4-d),
    ``"trilinear"`` (5-d), ``"quadrilinear"`` (6-d, 4 spatial dims; not in PyTorch), and
    ``"multilinear"``, which accepts any number of spatial dims. Linear source coordinate:
    ``i * (S - 1) / (o - 1)`` with ``align_corners=True``, else
    ``max((i + 0.5) * S / o - 0.5, 0)`` (``1 / scale_factor`` replaces ``S / o`` when a scale
    factor is given, unless ``recompute_scale_factor``). Give exactly one of ``size``
    (int or tuple) and ``scale_factor`` (float or tuple; output ``floor(S * scale)``).

    Math (linear, per axis): ``y_i = (1 - l_i) x[i0] + l_i x[i1]``; the gradient is the
    transposed two-tap map.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([[[1.0, 2.0]]])
        >>> am.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        tensor([[[1., 1., 2., 2.]]])
        >>> am.nn.functional.interpolate(x, size=4, mode="linear", align_corners=True)
        tensor([[[1.0000, 1.3333, 1.6667, 2.0000]]])
    """
    op = "interpolate"
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(input).__name__}")
    if input.ndim < 3:
        raise RuntimeError(f"{op}: expected an input (N, C, *spatial) with at least one spatial dim, "
                           f"got shape {tuple(input.shape)}")
    if antialias:
        raise ValueError(f"{op}: antialias=True is not supported")
    if mode not in _MODES:
        raise ValueError(f"{op}: unknown mode {mode!r}; expected one of {_MODES}")
    d = input.ndim - 2
    if mode in _LINEAR_RANK and _LINEAR_RANK[mode] != d:
        raise ValueError(f"{op}: mode {mode!r} needs a {_LINEAR_RANK[mode] + 2}-d input, got {d + 2}-d "
                         f"input of shape {tuple(input.shape)} (use 'multilinear' for any rank)")
    linear = mode in _LINEAR_RANK or mode == "multilinear"
    if align_corners is not None and not linear:
        raise ValueError(f"{op}: align_corners option can only be set with the interpolating modes: "
                         f"linear | bilinear | trilinear | quadrilinear | multilinear (got mode {mode!r})")
    o, sf = _interp_sizes(op, input, size, scale_factor, recompute_scale_factor, d)
    if mode == "area":
        return _adaptive_avg(op, d, input, o)
    if not input.is_floating_point() and linear:
        raise RuntimeError(f"{op}: linear modes need a floating-point input, got {input.dtype}")
    xp = backend_of(input.array).xp
    out = input
    for a in range(d):
        S = input.shape[2 + a]
        if not linear:
            idx = _nearest_index(S, o[a], sf[a], mode == "nearest-exact")
            if o[a] != S:
                out = index_select(out, 2 + a, Tensor._wrap(xp.asarray(idx)))
            continue
        if o[a] == S:
            continue
        i0, i1, lam = _linear_taps(S, o[a], sf[a], bool(align_corners), input.array.dtype)
        shape = (-1,) + (1,) * (d - 1 - a)
        l1 = Tensor._wrap(xp.asarray(lam.astype(input.array.dtype).reshape(shape)))
        l0 = Tensor._wrap(xp.asarray((1 - lam).astype(input.array.dtype).reshape(shape)))
        out = (index_select(out, 2 + a, Tensor._wrap(xp.asarray(i0))) * l0
               + index_select(out, 2 + a, Tensor._wrap(xp.asarray(i1))) * l1)
    return out


def upsample(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Deprecated alias of :func:`interpolate` (``torch.nn.functional.upsample``).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.upsample(am.ones(1, 1, 2), scale_factor=2).shape
        (1, 1, 4)
    """
    return interpolate(input, size, scale_factor, mode, align_corners)
