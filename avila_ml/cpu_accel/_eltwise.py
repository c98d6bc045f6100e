"""Elementwise activations through oneDNN's eltwise primitive, float32 NumPy arrays: exact and
tanh GELU, ReLU/LeakyReLU, ELU, tanh, logistic (sigmoid), swish (SiLU) and exp, forward and
backward (the gradient with respect to the input, from the input or from the output).

Every buffer is a plain C-order array, so the primitive sees a 1-d tensor of ``x.size``
elements: one plan per (direction, algorithm, size, alpha, beta), LRU-cached as in ``_conv.py``.
oneDNN's eltwise kernels are JIT-compiled vector code (AVX2/AVX-512) over all OpenMP threads;
NumPy's float32 transcendental ufuncs are scalar loops on many builds, and SciPy's ``erf`` (what
exact GELU used) converts every element to float64 and back. The callers (``ops/activation.py``,
``ops/elementwise.py``) keep the NumPy formulas as the fallback and as the reference in tests,
and call here only above a size where the fixed cost of a oneDNN call (about 35 us: ten
``ctypes`` calls and the primitive's own dispatch) is repaid: :data:`MIN_SIZE`, per algorithm.

Functions return None where oneDNN does not apply (not a float32 NumPy array, empty, the library
absent), so the caller falls back.
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import _dnnl as D
from ._prim import FlatPlan, PlanCache, _Desc, _Prim, _attr, impl_name

__all__ = ["forward", "backward", "ALGS", "MIN_SIZE", "cache_info", "clear_cache", "CACHE_SIZE"]

CACHE_SIZE = 128  # plans kept (LRU); an eltwise plan is small, but its JIT code is not free
# below this many elements the NumPy formulas the callers fall back to are at least as fast
# (measured on a 2-core AMD EPYC, AVX2, oneDNN 3.2, one thread each, CPU time): GELU against the
# float32 rational erf (38 vs 48 us at 4096), ELU/SiLU against several passes with exp/expm1,
# exp against np.exp (69 vs 118 us at 65536, 42 vs 29 at 16384), LeakyReLU against a multiply
# and a max (two ~0.3 ns/element passes: oneDNN wins only once the data leave the cache)
MIN_SIZE = {"gelu_erf": 1 << 12, "gelu_tanh": 1 << 12, "swish": 1 << 12, "elu": 1 << 12,
            "logistic": 1 << 12, "tanh": 1 << 12, "exp": 1 << 15, "relu": 1 << 18}
_F32 = np.dtype(np.float32)

# name -> (algorithm computing the backward from the input, the same from the output or None);
# alpha/beta are the algorithm's parameters (relu: the negative slope; elu: alpha; swish: the
# factor inside the sigmoid)
ALGS = {
    "relu": (D.ELTWISE_RELU, D.ELTWISE_RELU_USE_DST),
    "tanh": (D.ELTWISE_TANH, D.ELTWISE_TANH_USE_DST),
    "elu": (D.ELTWISE_ELU, D.ELTWISE_ELU_USE_DST),
    "logistic": (D.ELTWISE_LOGISTIC, D.ELTWISE_LOGISTIC_USE_DST),
    "exp": (D.ELTWISE_EXP, D.ELTWISE_EXP_USE_DST),
    "gelu_erf": (D.ELTWISE_GELU_ERF, None),
    "gelu_tanh": (D.ELTWISE_GELU_TANH, None),
    "swish": (D.ELTWISE_SWISH, None),
}


class _Plan(FlatPlan):
    """One primitive over same-shaped plain float32 buffers (eltwise or softmax); ``make_pd(lib,
    md, attr)`` returns its primitive descriptor, ``args`` are its argument ids in call order."""

    def __init__(self, lib, shape, make_pd, args, what):
        self.lib, self.args, self.what = lib, tuple(args), what
        self.desc = _Desc(lib, shape)
        attr = _attr(lib)
        try:
            self.prim = _Prim(lib, make_pd(lib, self.desc.h, attr))
        finally:
            lib.fn("dnnl_primitive_attr_destroy")(attr)
        self.impl = impl_name(lib, self.prim.pd)
        # "ref:any" is oneDNN's scalar reference code: slower than NumPy (softmax backward in
        # oneDNN 3.2 on AVX2, softmax over a middle axis: 10-50x), so callers fall back
        self.jit = not self.impl.startswith("ref")


_cache = PlanCache(lambda: CACHE_SIZE)


def cache_info() -> dict:
    """``{"size": plans cached, "capacity": CACHE_SIZE}``."""
    return _cache.info()


def clear_cache() -> None:
    """Drop every cached eltwise plan."""
    _cache.clear()


def usable(*arrays, min_size=1 << 15) -> bool:
    """True when oneDNN may run on ``arrays``: ``avila_ml.backends.mkldnn.enabled``, every array a
    float32 NumPy array of the first one's shape with at least ``min_size`` (>= 1) elements, and
    the library loaded (by this call)."""
    from ..backends import mkldnn
    a0 = arrays[0]
    return (mkldnn.enabled and all(isinstance(a, np.ndarray) and a.dtype == _F32 and a.shape == a0.shape
                                   for a in arrays)
            and a0.size >= max(1, min_size) and D.load() is not None)


def _forward_pd(alg, alpha, beta):
    def make(lib, md, attr):
        pd = ctypes.c_void_p()
        lib.call("dnnl_eltwise_forward_primitive_desc_create", ctypes.byref(pd), lib.engine,
                 D.FORWARD_TRAINING, alg, md, md, alpha, beta, attr)
        return pd
    return make


def _backward_pd(alg, alpha, beta):
    def make(lib, md, attr):
        hint = _forward_pd(alg, alpha, beta)(lib, md, attr)
        pd = ctypes.c_void_p()
        try:
            lib.call("dnnl_eltwise_backward_primitive_desc_create", ctypes.byref(pd), lib.engine, alg,
                     md, md, md, alpha, beta, hint, attr)
        finally:
            lib.fn("dnnl_primitive_desc_destroy")(hint)
        return pd
    return make


def forward(name, x, alpha=0.0, beta=0.0, out=None, min_size=None):
    """``y = f(x)`` by the eltwise algorithm ``name`` (a key of :data:`ALGS`), or None where
    oneDNN does not apply (see :func:`usable`). ``x`` may be any float32 array (a
    non-contiguous one is copied); ``out`` (C-contiguous, x's shape) receives the result, ``x``
    itself included. ``min_size`` overrides ``MIN_SIZE[name]``."""
    if not usable(x, min_size=MIN_SIZE[name] if min_size is None else min_size):
        return None
    lib = D.load()
    alg = ALGS[name][0]
    n = x.size
    plan = _cache.get(("fwd", alg, n, float(alpha), float(beta)),
                      lambda: _Plan(lib, (n,), _forward_pd(alg, alpha, beta), (D.ARG_SRC, D.ARG_DST),
                                    f"eltwise {name} forward"))
    if not plan.jit:
        return None
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, _F32) if out is None else out
    plan.run(x.reshape(-1), y.reshape(-1))
    return y


def backward(name, g, data, alpha=0.0, beta=0.0, from_output=False, min_size=None):
    """``dx = g * f'(x)`` by the eltwise algorithm ``name``, with ``data`` the forward's input
    (or its output, ``from_output=True``, for the algorithms that have that form), or None where
    oneDNN does not apply."""
    if not usable(g, data, min_size=MIN_SIZE[name] if min_size is None else min_size):
        return None
    lib = D.load()
    alg = ALGS[name][1 if from_output else 0]
    if alg is None:
        raise ValueError(f"oneDNN eltwise {name}: no backward from the output")
    n = g.size
    plan = _cache.get(("bwd", alg, n, float(alpha), float(beta)),
                      lambda: _Plan(lib, (n,), _backward_pd(alg, alpha, beta),
                                    (D.ARG_DST if from_output else D.ARG_SRC, D.ARG_DIFF_DST, D.ARG_DIFF_SRC),
                                    f"eltwise {name} backward"))
    if not plan.jit:
        return None
    data, g = np.ascontiguousarray(data), np.ascontiguousarray(g)
    dx = np.empty(g.shape, _F32)
    plan.run(data.reshape(-1), g.reshape(-1), dx.reshape(-1))
    return dx
