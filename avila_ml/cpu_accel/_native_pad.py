"""Reflect / replicate / circular padding and its adjoint through the compiled kernels
(``kernels/pad.c``), for ``ops/shape.py``'s ``BorderPad`` / ``BorderPadAdjoint`` on C-contiguous
float32 / float64 NumPy arrays; each function returns None where the kernels are absent,
switched off (``_native``) or do not apply, and the NumPy slab copies run instead.

One pass over the output (forward) or over the gradient (adjoint), planes of the last two axes
split over the OpenMP team, where the NumPy form copies the centre, then each padded axis's
border slabs, and its adjoint copies the centre and adds the slabs axis by axis. The Conv4d
example pads three axes of every layer's input circularly: its layers' forward + backward with
these kernels against the NumPy slabs (2026-12-07, quiet 2-core AMD EPYC, in-process A/B
alternating 11 times, the stacking kernels on in both): (32,1,8,12^3)->12 8.25 -> 7.23 ms,
(32,12,8,6^3)->16 23.99 -> 19.24 ms.
PyTorch: ``torch.nn.functional.pad`` with ``mode="reflect"`` / ``"replicate"`` /
``"circular"`` and their backward kernels.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from . import _native

__all__ = ["border_pad", "border_pad_adjoint"]

_P, _T = _native.PTR, _native.THREADS
_native.register("border_pad", _P, _P, _P, _T)
_native.register("border_pad_adj", _P, _P, _P, _T)
_MAX_DIMS = 16  # kernels/pad.c's MAX_DIMS
_META: OrderedDict = OrderedDict()  # (in shape, maps' key) -> int64 metadata, oldest dropped first
_META_SIZE = 256
_LOCK = threading.Lock()


def _meta(in_shape, key, make_maps):
    """``kernels/pad.c``'s metadata for padding an array of ``in_shape`` with the per-axis
    source maps ``make_maps()`` (called once per ``key``)."""
    k = (tuple(in_shape), key)
    with _LOCK:
        meta = _META.get(k)
        if meta is not None:
            _META.move_to_end(k)
            return meta
    maps = make_maps()
    d = len(in_shape)
    out_shape = [len(m) for m in maps]
    last = np.asarray(maps[-1], dtype=np.int64)
    # the longest run of the last axis's map that steps by one (the interior)
    best, start = (0, 0), 0
    for q in range(1, len(last) + 1):
        if q == len(last) or last[q] != last[q - 1] + 1:
            if q - start > best[1]:
                best = (start, q - start)
            start = q
    run0, run_len = best
    parts = [np.array([d, *in_shape, *out_shape, run0, run_len, last[run0] if run_len else 0], dtype=np.int64)]
    parts += [np.asarray(m, dtype=np.int64) for m in maps]
    for a in range(max(0, d - 2)):
        m = np.asarray(maps[a], dtype=np.int64)
        order = np.argsort(m, kind="stable")
        starts = np.searchsorted(m[order], np.arange(in_shape[a] + 1))
        parts += [starts.astype(np.int64), order.astype(np.int64)]
    meta = np.concatenate(parts)
    with _LOCK:
        _META[k] = meta
        while len(_META) > _META_SIZE:
            _META.popitem(last=False)
    return meta


def _fits(x, out_shape) -> bool:
    return (type(x) is np.ndarray and 1 <= x.ndim <= _MAX_DIMS and len(out_shape) == x.ndim
            and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous and x.size > 0)


def _as_maker(maps):
    return maps if callable(maps) else (lambda: maps)


def border_pad(x, key, maps, out_shape=None):
    """``out[p] = x[m_0(p_0), ..., m_{d-1}(p_{d-1})]`` for the per-axis source maps ``maps``
    (a list of integer arrays, or a function returning it, called only when ``key`` -- a
    hashable name of the maps, e.g. the widths and the mode -- is new for this shape; then
    ``out_shape`` must be given), a new array; None where the kernel does not apply.

    Math: each padded position takes its source's value (reflect, replicate or circular
    maps). PyTorch: ``torch.nn.functional.pad`` (non-constant modes).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_pad
        >>> x = np.array([[1.0, 2.0, 3.0]], np.float32)
        >>> y = _native_pad.border_pad(x, "circ21", [np.array([0]), np.array([1, 2, 0, 1, 2, 0])])
        >>> y is None or y.tolist() == [[2.0, 3.0, 1.0, 2.0, 3.0, 1.0]]
        True
    """
    out_shape = tuple(len(m) for m in maps) if out_shape is None else tuple(out_shape)
    if not _fits(x, out_shape):
        return None
    out = np.empty(out_shape, x.dtype)
    fn = _native.kernel_for("border_pad", x, out)
    if fn is None:
        return None
    meta = _meta(x.shape, key, _as_maker(maps))
    fn(_native.addr(x), _native.addr(out), _native.addr(meta), _native.threads_for(out.size))
    return out


def border_pad_adjoint(g, in_shape, key, maps):
    """The adjoint of :func:`border_pad`: ``gx[j] = sum of g[p] over every p with m(p) = j``
    for the input shape ``in_shape`` (``g`` has the padded shape; ``maps`` as there), a new
    array; None where the kernel does not apply.

    Math: ``gx = A^T g`` for the gather ``A`` of :func:`border_pad`. PyTorch: the backward of
    ``reflection_pad`` / ``replication_pad`` / circular ``pad``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_pad
        >>> g = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)  # reflect by 1 of [a, b, c]
        >>> gx = _native_pad.border_pad_adjoint(g, (1, 3), "refl11", [np.array([0]), np.array([1, 0, 1, 2, 1])])
        >>> gx is None or gx.tolist() == [[2.0, 9.0, 4.0]]
        True
    """
    if not (_fits(g, g.shape) and len(in_shape) == g.ndim):
        return None
    gx = np.empty(tuple(in_shape), g.dtype)
    if gx.size == 0:
        return None
    fn = _native.kernel_for("border_pad_adj", g, gx)
    if fn is None:
        return None
    meta = _meta(tuple(in_shape), key, _as_maker(maps))
    fn(_native.addr(g), _native.addr(gx), _native.addr(meta), _native.threads_for(g.size))
    return gx
