"""The kernel-time stacking of a 4-d convolution (``_conv._Stacking``) written straight into
the channel-blocked layout oneDNN's 3-d convolution takes, through the compiled kernels
(``kernels/stacking.c``), and the convolution's output frames read straight out of it.

Without it a block of stacked frames was built twice over: NumPy's strided copies into a plain
C-order array, then oneDNN's reorder of that array into its ``nCdhw8c`` layout (the same for
the output-gradient frames: a transposing copy, then a reorder; and the forward's output back:
a reorder, then a transposing copy). Which layout the convolution wants is read from its memory
descriptor (:func:`block_of`, ``dnnl_memory_desc_query``), not from a list of oneDNN's format
tags; another layout keeps the two-pass route.

Measured (2026-12-07, quiet 2-core AMD EPYC, in-process A/B alternating 15 times, median of
5-step blocks, forward + backward as ``benchmarks/bench_conv.py`` runs them): the Conv4d
example's first layer (32,1,8,12^3)->12 8.71 -> 7.47 ms and second layer (32,12,8,6^3)->16
25.89 -> 23.81 ms with these kernels against NumPy's copies plus oneDNN's reorders; the input
gradient added straight from the blocked layout (``unstack_add``) on (2,4,16^4)->8 26.21 ->
25.46 ms (ranges 25.56-27.63 and 24.82-32.06 over 9 alternations) and (1,2,32^4)->4 101.29 ->
100.56 ms: a small gain. No PyTorch counterpart (PyTorch has no 4-d convolution).
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import _native

__all__ = ["block_of", "stack_blocked", "unstack_add", "available"]

_native.register("stack_blocked", _native.PTR, _native.PTR, _native.PTR, ctypes.c_int, _native.THREADS)
_native.register("unstack_add", _native.PTR, _native.PTR, _native.PTR, _native.THREADS)

# dnnl_query_t values of oneDNN 3.x's memory-descriptor queries and dnnl_format_kind_t's blocked
_Q_STRIDES = 14
_Q_NDIMS, _Q_DIMS, _Q_OFFSET0 = 256, 257, 259
_Q_PADDED_DIMS, _Q_PADDED_OFFSETS, _Q_FORMAT_KIND = 260, 261, 262
_Q_INNER_NBLKS, _Q_INNER_BLKS, _Q_INNER_IDXS = 263, 264, 265
_BLOCKED = 2


def _query(lib, md, what, n=None):
    """``dnnl_memory_desc_query``: an int (``n`` None) or the first ``n`` entries of a dims
    vector; None when the query fails."""
    fn = lib.fn("dnnl_memory_desc_query")
    if n is None:
        out = ctypes.c_int64(0)
        ok = fn(md, what, ctypes.byref(out)) == 0
        return out.value if ok else None
    ptr = ctypes.POINTER(ctypes.c_int64)()
    if fn(md, what, ctypes.byref(ptr)) != 0 or not ptr:
        return None
    return tuple(ptr[i] for i in range(n))


def block_of(lib, md, shape):
    """The channel block ``B`` of the oneDNN memory descriptor ``md`` of an (N, C, *spatial)
    float32 array of ``shape``: 8 or 16 (any B) for ``nC{spatial}Bc``, ``C`` for
    channels-last; None for any other layout (or a descriptor it cannot read).

    Example:
        >>> from avila_ml.cpu_accel import _dnnl, _native_stacking
        >>> from avila_ml.cpu_accel._prim import _Desc
        >>> lib = _dnnl.load()
        >>> lib is None or _native_stacking.block_of(lib, _Desc(lib, (2, 3, 4, 4)).h, (2, 3, 4, 4)) is None
        True
    """
    nd = len(shape)
    if nd < 3 or (_query(lib, md, _Q_NDIMS) or 0) & 0xFFFFFFFF != nd:
        return None
    dims, padded = _query(lib, md, _Q_DIMS, nd), _query(lib, md, _Q_PADDED_DIMS, nd)
    strides, offsets = _query(lib, md, _Q_STRIDES, nd), _query(lib, md, _Q_PADDED_OFFSETS, nd)
    kind, offset0 = _query(lib, md, _Q_FORMAT_KIND), _query(lib, md, _Q_OFFSET0)
    nblks = _query(lib, md, _Q_INNER_NBLKS)
    if None in (dims, padded, strides, offsets, kind, offset0, nblks) or dims != tuple(shape):
        return None
    if kind & 0xFFFFFFFF != _BLOCKED or offset0 != 0 or any(offsets):
        return None
    nblks &= 0xFFFFFFFF
    n, c, spatial = shape[0], shape[1], shape[2:]
    s = int(np.prod(spatial))
    if nblks == 0:  # channels-last: strides (C S, 1, C * C-order strides of the spatial dims)
        blk, nb, c_stride = c, 1, 1
    elif nblks == 1:
        blks, idxs = _query(lib, md, _Q_INNER_BLKS, 1), _query(lib, md, _Q_INNER_IDXS, 1)
        if blks is None or idxs is None or idxs[0] != 1:
            return None
        blk = blks[0]
        nb = -(-c // blk)
        c_stride = s * blk
    else:
        return None
    if padded != (n, nb * blk) + tuple(spatial):
        return None
    want = [nb * blk * s, c_stride]
    acc = blk
    for d in reversed(spatial):
        want.insert(2, acc)
        acc *= d
    # a dim of size 1 may carry any stride
    if any(a != b and size > 1 for a, b, size in zip(strides, want, shape)):
        return None
    return blk


def available() -> bool:
    """Whether the compiled stacking kernel can run (kernels built, loaded, switched on, and
    this symbol in them)."""
    return _native.available() and _native._bind("stack_blocked", np.dtype(np.float32)) is not None


def stack_blocked(x, blocked, geometry, to_blocked: bool, threads=None) -> bool:
    """Reorder the stacked rows of the plain float32 array ``x`` (N, C, T, *rest) into the
    channel-blocked buffer ``blocked`` (``to_blocked``) or back; ``geometry`` the 14 integers
    ``C, T, R, P, s, d, lo, real, n0, nn, i0, ni, B, nb`` of ``kernels/stacking.c``; ``threads``
    the OpenMP team (None: ``_native.threads_for`` the size; 1 on a worker thread that must not
    start one). False, nothing written, where the kernels are absent or switched off.

    Math: ``blocked[f, ch // B, r, ch % B] = x[n, ch // P, i s + (ch % P) d - lo, r]`` for the
    frame ``f = (n - n0) ni + (i - i0)`` (zero outside ``x`` or for ``ch >= real``); the
    other direction writes ``x`` from ``blocked`` for the rows that exist. ``B = 0``: the plain
    stacked array ``blocked[f, ch, r]`` of ``nb`` channels instead (to it only). PyTorch: no
    counterpart (the copies a kt-stacked conv3d workaround makes, plus oneDNN's reorder).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_stacking as S
        >>> x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)  # N, C, T, R
        >>> out = np.empty(2 * 8 * 2, np.float32)  # 2 frames, 1 block of 8 channels, 2 positions
        >>> g = (1, 2, 2, 2, 1, 1, 1, 2, 0, 1, 0, 2, 8, 1)  # K_t = 2 offsets, pad 1 in time
        >>> S.stack_blocked(x, out, g, True) is False or out.reshape(2, 2, 8)[:, :, :2].tolist() == \\
        ...     [[[0, 0], [0, 1]], [[0, 2], [1, 3]]]
        True
    """
    geometry = np.asarray(geometry, dtype=np.int64)
    C, T, R, P, s, d, lo, real, n0, nn, i0, ni, B, nb = (int(v) for v in geometry)
    x = x if x.dtype == np.float32 else None
    blocked = blocked.view(np.float32) if blocked.dtype == np.uint8 else blocked
    plain = B == 0  # the plain stacked array (nb channels)
    if (x is None or blocked.dtype != np.float32 or not (0 <= B <= 64) or (plain and not to_blocked)
            or (nb if plain else nb * B) < real or x.size < (n0 + nn) * C * T * R
            or blocked.size < nn * ni * nb * R * (1 if plain else B)):
        return False
    fn = _native.kernel_for("stack_blocked", x, blocked)
    if fn is None:
        return False
    fn(_native.addr(x), _native.addr(blocked), _native.addr(geometry), int(bool(to_blocked)),
       _native.threads_for(nn * ni * nb * R * max(B, 1)) if threads is None else int(threads))
    return True


def unstack_add(x, blocked, geometry, threads=None) -> bool:
    """The adjoint of :func:`stack_blocked` added into ``x``: every row of the channel-blocked
    buffer ``blocked`` (the input gradient of the stacked 3-d convolution) added onto the row
    of the plain float32 array ``x`` (N, C, T, *rest) it was stacked from; ``geometry`` as
    there (B > 0). False, nothing written, where the kernels are absent or switched off.

    Math: ``x[n, ch // P, i s + (ch % P) d - lo, r] += blocked[f, ch // B, r, ch % B]`` for
    ``ch < real`` and times inside ``[0, T)``. PyTorch: no counterpart (the backward of the
    copies a kt-stacked conv3d workaround makes).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_stacking as S
        >>> x = np.zeros((1, 1, 2, 2), np.float32)
        >>> blocked = np.arange(32, dtype=np.float32)  # 2 frames, 1 block of 8, 2 positions
        >>> g = (1, 2, 2, 2, 1, 1, 1, 2, 0, 1, 0, 2, 8, 1)  # K_t = 2 offsets, pad 1 in time
        >>> S.unstack_add(x, blocked, g) is False or x[0, 0].tolist() == [[1 + 16, 9 + 24], [17, 25]]
        True
    """
    geometry = np.asarray(geometry, dtype=np.int64)
    C, T, R, P, s, d, lo, real, n0, nn, i0, ni, B, nb = (int(v) for v in geometry)
    blocked = blocked.view(np.float32) if blocked.dtype == np.uint8 else blocked
    if (x.dtype != np.float32 or blocked.dtype != np.float32 or not (1 <= B <= 64) or nb * B < real
            or x.size < (n0 + nn) * C * T * R or blocked.size < nn * ni * nb * R * B):
        return False
    fn = _native.kernel_for("unstack_add", blocked, x)
    if fn is None:
        return False
    fn(_native.addr(x), _native.addr(blocked), _native.addr(geometry),
       _native.threads_for(nn * C * T * R) if threads is None else int(threads))
    return True
