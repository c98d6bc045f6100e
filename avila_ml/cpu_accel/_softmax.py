"""Softmax over one axis through oneDNN's softmax primitive, float32 NumPy arrays, forward and
backward: max, exp, sum and scale in JIT vector code over all threads, where NumPy makes a pass
(and a scalar-speed ``exp``) per step.

Log-softmax does not use the ``softmax_log`` algorithm: measured on oneDNN 3.2 it is 2x less
accurate than PyTorch's float32 kernel near 0 (about 30 ulps of the log-sum-exp), which the
gradient ``g - exp(y) sum(g)`` magnifies; ``ops/reduction.py`` builds it from oneDNN's eltwise
exp and NumPy's sums instead.

Where the compiled row kernels apply (``_native_softmax.py``: C-contiguous float32/float64 rows
over the last axis) they run instead: softmax forward on (64, 4096) float32 took 143 us there
against 187 us here on two threads, 258 against 275 us on one (AMD EPYC, in-process, under load,
2026-12-07). This module serves the other axes and layouts, and builds without the kernels.

An array of any rank is seen as ``(outer, n, inner)`` with the softmax axis in the middle (a
reshape of the C-order buffer, so any ``dim`` works without a transpose); ``inner == 1`` (the
last dim) is passed as 2-d. One plan per (direction, algorithm, that shape), LRU-cached.

Functions return None where oneDNN does not apply or has only its scalar reference code for
the case (measured on an AVX2 CPU with oneDNN 3.2: the backward, and a softmax over a middle
axis, are reference code there, 10-50x slower than NumPy; the forward over the last axis is JIT
code, 4-7x faster than NumPy's float32 ``exp``), so the caller (``ops/reduction.py``) runs the
NumPy path, which stays the reference in tests.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

from . import _dnnl as D
from ._eltwise import _Plan, usable
from ._prim import PlanCache

__all__ = ["forward", "backward", "MIN_SIZE", "cache_info", "clear_cache", "CACHE_SIZE"]

CACHE_SIZE = 64
# below this many elements NumPy's four passes are as fast as a oneDNN call (measured, one thread,
# rows of 128: 139 vs 143 us at 65536 elements; (64, 4096): 0.30 vs 0.72 ms)
MIN_SIZE = 1 << 16
_F32 = np.dtype(np.float32)
_cache = PlanCache(lambda: CACHE_SIZE)


def cache_info() -> dict:
    """``{"size": plans cached, "capacity": CACHE_SIZE}``."""
    return _cache.info()


def clear_cache() -> None:
    """Drop every cached softmax plan."""
    _cache.clear()


def _view(shape, axis):
    outer, n, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    return (outer, n) if inner == 1 else (outer, n, inner)




def _forward_pd(alg, axis):
    def make(lib, md, attr):
        pd = ctypes.c_void_p()
        lib.call("dnnl_softmax_forward_primitive_desc_create", ctypes.byref(pd), lib.engine,
                 D.FORWARD_TRAINING, alg, md, md, axis, attr)
        return pd
    return make


def _backward_pd(alg, axis):
    def make(lib, md, attr):
        hint = _forward_pd(alg, axis)(lib, md, attr)
        pd = ctypes.c_void_p()
        try:
            lib.call("dnnl_softmax_backward_primitive_desc_create", ctypes.byref(pd), lib.engine, alg,
                     md, md, md, axis, hint, attr)
        finally:
            lib.fn("dnnl_primitive_desc_destroy")(hint)
        return pd
    return make


def forward(x, axis):
    """``softmax(x)`` along ``axis``, or None where oneDNN does not apply."""
    if not usable(x, min_size=MIN_SIZE):
        return None
    lib = D.load()
    shape = _view(x.shape, axis)
    alg = D.SOFTMAX_ACCURATE
    plan = _cache.get(("fwd", alg, shape), lambda: _Plan(lib, shape, _forward_pd(alg, 1), (D.ARG_SRC, D.ARG_DST),
                                                         "softmax forward"))
    if not plan.jit:
        return None
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, _F32)
    plan.run(x.reshape(shape), y.reshape(shape))
    # oneDNN's max skips NaN and keeps the other entries of a row with +inf finite; PyTorch (and
    # NumPy's max) make such rows NaN: one cheap reduction finds them
    bad = ~(x.max(axis=axis, keepdims=True) < np.inf)
    if bad.any():
        y[np.broadcast_to(bad, y.shape)] = np.nan
    return y


def backward(g, y, axis):
    """The input gradient of softmax, ``y * (g - sum(g * y))`` along ``axis``, from the
    forward's output ``y``, or None."""
    if not usable(g, y, min_size=MIN_SIZE):
        return None
    lib = D.load()
    shape = _view(y.shape, axis)
    alg = D.SOFTMAX_ACCURATE
    plan = _cache.get(("bwd", alg, shape),
                      lambda: _Plan(lib, shape, _backward_pd(alg, 1), (D.ARG_DST, D.ARG_DIFF_DST, D.ARG_DIFF_SRC),
                                    "softmax backward"))
    if not plan.jit:
        return None
    g, y = np.ascontiguousarray(g), np.ascontiguousarray(y)
    dx = np.empty(y.shape, _F32)
    plan.run(y.reshape(shape), g.reshape(shape), dx.reshape(shape))
    return dx
