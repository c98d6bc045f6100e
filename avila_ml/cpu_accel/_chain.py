"""Fused element-wise chains through oneDNN's binary primitive with post-ops, float32 NumPy
arrays: ``v = a op b``, then a sequence of steps applied to ``v`` while it is in registers --
``f(v)`` for an eltwise algorithm (linear ``alpha v + beta``, logistic, ...) or ``v op t`` for
another tensor ``t`` -- and one store. A chain of k NumPy passes becomes one pass over memory,
JIT-compiled (AVX2/AVX-512) over all OpenMP threads.

Why it exists: tanh GELU. oneDNN 3.2's ``gelu_tanh`` and ``tanh`` kernels look their polynomial
coefficients up with vector gathers, which are slow on AMD Zen (8.0 ms for 1.6 M float32 on a
2-core EPYC, against 1.2 ms for ``logistic``, measured 2026-12-06 under load). Since
``0.5 (1 + tanh(u)) = sigmoid(2u)``, tanh GELU is ``x sigmoid(z)`` with ``z = 2u`` a cubic of
``x``: one chain of multiplications and one logistic. Its gradient is three chains (see
:func:`gelu_tanh_backward`).

The operands of a :func:`run` chain have one shape (a broadcasting form, used by batch norm and
the LeakyReLU gradient, was removed when both moved to NumPy passes, which measured faster). One
plan per
(chain, operand shapes), LRU-cached as in ``_conv.py``.
Functions return None where oneDNN does not apply (not float32 NumPy arrays of the expected
shapes, fewer than :data:`MIN_SIZE` elements, the library absent or disabled), so the caller
falls back to its NumPy formula.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

from . import _dnnl as D
from ._prim import Executor, PlanCache, _Desc, _Prim, _attr, impl_name

__all__ = ["run", "gelu_tanh_forward", "gelu_tanh_backward", "MIN_SIZE", "cache_info", "clear_cache",
           "CACHE_SIZE"]

CACHE_SIZE = 64  # plans kept (LRU)
# below this the fixed cost of a oneDNN call (tens of microseconds of ctypes calls) is not repaid
MIN_SIZE = 1 << 12
_F32 = np.dtype(np.float32)

# oneDNN 3.x ABI values (dnnl_types.h)
LINEAR, LOGISTIC = 0x26, D.ELTWISE_LOGISTIC      # dnnl_eltwise_linear, dnnl_eltwise_logistic
ADD, MUL, SUB = 0x1FFF0, 0x1FFF1, 0x1FFF5        # dnnl_binary_add, _mul, _sub
GT = 0x1FFF7  # dnnl_binary_gt: 1.0 where src0 > src1, else 0.0 -- and 1.0 at a NaN src0 (measured)
_ARG_SRC_1 = 2                                   # DNNL_ARG_SRC_1
_ARG_POST_OP_BASE = 32768                        # DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE

# tanh GELU: 0.5 x (1 + tanh(k (x + c x^3))) = x sigmoid(z), z = 2k x (1 + c x^2)
_K = math.sqrt(2.0 / math.pi)
_C = 0.044715


class _Plan(Executor):
    """``dst = steps(src0 alg src1)`` in float32; ``steps`` is a tuple of ``("elt", alg, alpha,
    beta)`` and ``("bin", alg)`` (the latter each takes one more tensor). ``shapes`` holds one
    plain C-order shape per operand (src0, src1, the binary steps' tensors) and the output's
    last (all one 1-d shape: :func:`run`)."""

    def __init__(self, lib, shapes, alg, steps):
        self.lib, self.what = lib, "element-wise chain"
        descs = {s: _Desc(lib, s) for s in set(shapes)}
        self.descs = [descs[s] for s in shapes]
        attr = _attr(lib)
        po = ctypes.c_void_p()
        self.args = [D.ARG_SRC, _ARG_SRC_1]
        try:
            lib.call("dnnl_post_ops_create", ctypes.byref(po))
            k = 2  # the next operand's descriptor
            for i, step in enumerate(steps):
                if step[0] == "elt":
                    lib.call("dnnl_post_ops_append_eltwise", po, step[1], float(step[2]), float(step[3]))
                else:
                    lib.call("dnnl_post_ops_append_binary", po, step[1], self.descs[k].h)
                    self.args.append(_ARG_POST_OP_BASE * (i + 1) | _ARG_SRC_1)
                    k += 1
            lib.call("dnnl_primitive_attr_set_post_ops", attr, po)
            pd = ctypes.c_void_p()
            lib.call("dnnl_binary_primitive_desc_create", ctypes.byref(pd), lib.engine, alg, self.descs[0].h,
                     self.descs[1].h, self.descs[-1].h, attr)
        finally:
            if po:
                lib.fn("dnnl_post_ops_destroy")(po)
            lib.fn("dnnl_primitive_attr_destroy")(attr)
        self.prim = _Prim(lib, pd)
        self.impl = impl_name(lib, pd)
        self.jit = not self.impl.startswith("ref")  # oneDNN's scalar reference code: use NumPy
        self.args.append(D.ARG_DST)

    def run(self, *arrays) -> None:
        """Execute on ``arrays`` (one per operand, the output last; C-contiguous float32 of the
        plan's shapes)."""
        for i, (a, d) in enumerate(zip(arrays, self.descs)):
            D.check_buffer(a, _F32, d.nbytes, f"{'output' if i == len(arrays) - 1 else 'input'} {i} of the "
                                              f"oneDNN {self.what}")
        self._run_all([(self.prim, [(arg, d.h, a) for arg, d, a in zip(self.args, self.descs, arrays)])])


_cache = PlanCache(lambda: CACHE_SIZE)


def cache_info() -> dict:
    """``{"size": plans cached, "capacity": CACHE_SIZE}``."""
    return _cache.info()


def clear_cache() -> None:
    """Drop every cached chain plan."""
    _cache.clear()


def _usable(arrays) -> bool:
    from ._eltwise import usable
    return usable(*arrays, min_size=MIN_SIZE)


def run(alg, steps, src0, src1, *tensors, out=None):
    """``steps(src0 alg src1)`` in one oneDNN pass, or None where oneDNN does not apply.
    ``steps``: a tuple of ``("elt", eltwise alg, alpha, beta)`` and ``("bin", binary alg)``; each
    binary step takes the next array of ``tensors``. Every array has src0's shape."""
    arrays = (src0, src1) + tensors
    if not _usable(arrays) or sum(s[0] == "bin" for s in steps) != len(tensors):
        return None
    lib = _declare(D.load())
    shapes = ((src0.size,),) * (len(arrays) + 1)
    plan = _cache.get((alg, tuple(steps), shapes), lambda: _Plan(lib, shapes, alg, steps))
    if not plan.jit:
        return None
    y = np.empty(src0.shape, _F32) if out is None else out
    plan.run(*(np.ascontiguousarray(a).reshape(-1) for a in arrays), y.reshape(-1))
    return y


_SIGNATURES = {
    "dnnl_post_ops_create": [ctypes.POINTER(ctypes.c_void_p)],
    "dnnl_post_ops_destroy": [ctypes.c_void_p],
    "dnnl_post_ops_append_eltwise": [ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_float],
    "dnnl_post_ops_append_binary": [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p],
    "dnnl_primitive_attr_set_post_ops": [ctypes.c_void_p, ctypes.c_void_p],
    # (pd, engine, alg, src0 md, src1 md, dst md, attr)
    "dnnl_binary_primitive_desc_create": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_int,
                                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p],
}


def _declare(lib):
    """Argument types of the post-op and binary calls (only this file and ``_matmul`` use them;
    the declarations agree), set once on the loaded library."""
    if not getattr(lib, "_chain_declared", False):
        for name, args in _SIGNATURES.items():
            fn = getattr(lib.cdll, name)
            fn.argtypes = args
            fn.restype = ctypes.c_int
        lib._chain_declared = True
    return lib


# z = 2k x (1 + c x^2): x*x -> linear(2kc, 2k) -> * x
_Z = (("elt", LINEAR, 2 * _K * _C, 2 * _K), ("bin", MUL))


def gelu_tanh_forward(x):
    """``0.5 x (1 + tanh(k (x + 0.044715 x^3)))`` with ``k = sqrt(2/pi)``, computed as
    ``x sigmoid(z)``, ``z = 2k (x + 0.044715 x^3)``, in one pass; None where oneDNN does not
    apply."""
    return run(MUL, _Z + (("elt", LOGISTIC, 0.0, 0.0), ("bin", MUL)), x, x, x, x)


def gelu_tanh_backward(g, x):
    """``g d/dx gelu_tanh(x)``: with ``s = sigmoid(z)``, ``r = 1 - s = sigmoid(-z)`` and
    ``z' = 2k (1 + 3c x^2)``, the derivative of ``x s`` is ``s + x z' s r``, so
    ``dx = g s (1 + x z' r)``: three passes (s, r, dx). ``r`` is computed, not taken as ``1 - s``,
    so the product does not cancel where ``s`` is near 1. None where oneDNN does not apply."""
    s = run(MUL, _Z + (("elt", LOGISTIC, 0.0, 0.0),), x, x, x)
    # -z: x*x -> linear(-2kc, -2k) -> * x
    r = None if s is None else run(MUL, (("elt", LINEAR, -2 * _K * _C, -2 * _K), ("bin", MUL),
                                         ("elt", LOGISTIC, 0.0, 0.0)), x, x, x)
    if r is None:
        return None
    # x*x -> linear(6kc, 2k) (= z') -> * x -> * r -> + 1 -> * s -> * g: the derivative first and g
    # last, as PyTorch does, so an infinite g gives +-inf (NaN only where the derivative is 0)
    return run(MUL, (("elt", LINEAR, 6 * _K * _C, 2 * _K), ("bin", MUL), ("bin", MUL),
                     ("elt", LINEAR, 1.0, 1.0), ("bin", MUL), ("bin", MUL)), x, x, x, r, s, g)
