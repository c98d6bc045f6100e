"""Batched ``A B^T`` through oneDNN's matmul primitive with the element-wise epilogue the CPU
attention needs fused into it: ``exp`` (a probability tile straight out of the score product)
and a multiplication by another tensor of the output's shape (``dS = P o (dO V^T - D)``).

NumPy's float32 ``exp`` costs about as much as the score matmul itself (1.7 ns per element on
an AVX2 EPYC, measured 2026-12-06), and every extra NumPy pass over a score tile reads and
writes it once more; as a post-op the ``exp`` and the product run on the GEMM's output while it
is still in registers/L1 (the 256 x 2048 tile: matmul 0.79 ms, matmul + NumPy exp 1.75 ms,
fused 1.12 ms, one thread). float32 NumPy arrays only; the caller keeps the NumPy path as
fallback and as the reference in tests.

One plan (primitive + descriptors) per (batch, M, K, N, epilogue), kept in an LRU cache like
the convolutions' (:mod:`avila_ml.cpu_accel._conv`); every buffer is checked at the boundary
(:func:`avila_ml.cpu_accel._dnnl.check_buffer`) and referenced until the stream has finished.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading

import numpy as np

from . import _dnnl as D
from ._prim import PlanCache, _Desc, _Prim, _attr

__all__ = ["matmul_nt", "one_omp_thread", "cache_info", "clear_cache", "CACHE_SIZE"]

CACHE_SIZE = 64  # plans kept (LRU): each holds JIT code
_cache = PlanCache(lambda: CACHE_SIZE)
_lock = threading.Lock()  # guards the plans' lists of memory objects
_F32 = np.dtype(np.float32)

# oneDNN 3.x ABI values (dnnl_types.h) of what is used here only
_ELTWISE_EXP = 0x2A           # dnnl_eltwise_exp
_BINARY_MUL = 0x1FFF1         # dnnl_binary_mul
_ARG_SRC_1 = 2                # DNNL_ARG_SRC_1
_ARG_POST_OP_BASE = 32768     # DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE
_p = ctypes.c_void_p
_SIGNATURES = {
    "dnnl_matmul_primitive_desc_create": [ctypes.POINTER(_p), _p, _p, _p, _p, _p, _p],
    "dnnl_post_ops_create": [ctypes.POINTER(_p)],
    "dnnl_post_ops_destroy": [_p],
    "dnnl_post_ops_append_eltwise": [_p, ctypes.c_int, ctypes.c_float, ctypes.c_float],
    "dnnl_post_ops_append_binary": [_p, ctypes.c_int, _p],
    "dnnl_primitive_attr_set_post_ops": [_p, _p],
    "dnnl_memory_set_data_handle": [_p, _p],
}


def _declare(lib) -> None:
    """Argument types of the matmul/post-op calls (not in ``_dnnl``'s table: only this file uses them)."""
    if getattr(lib, "_matmul_declared", False):
        return
    for name, args in _SIGNATURES.items():
        fn = getattr(lib.cdll, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    lib._matmul_declared = True


class _Plan:
    """``out[n] = post(a[n] @ b[n]^T)`` for one shape: a (n, M, K), b (n, N, K), out (n, M, N)."""

    def __init__(self, lib, n, M, K, N, exp, mul, transpose_b=True):
        self.lib = lib
        self.a = _Desc(lib, (n, M, K))
        # oneDNN's weights are (n, K, N); b^T (b stored (n, N, K)) is read with strides (N K, 1, K)
        self.b = _Desc.__new__(_Desc)
        self.b.lib, self.b.shape, self.b.h = lib, (n, K, N), ctypes.c_void_p()
        lib.call("dnnl_memory_desc_create_with_strides", ctypes.byref(self.b.h), 3, D.Dims(n, K, N), D.F32,
                 D.Dims(N * K, 1, K) if transpose_b else D.Dims(N * K, N, 1))
        self.b.nbytes = n * N * K * 4
        self.c = _Desc(lib, (n, M, N))
        self.mul = mul
        attr = _attr(lib)
        po = ctypes.c_void_p()
        try:
            lib.call("dnnl_post_ops_create", ctypes.byref(po))
            self.mul_arg = None
            if exp:
                lib.call("dnnl_post_ops_append_eltwise", po, _ELTWISE_EXP, 0.0, 0.0)
            if mul:
                self.mul_arg = _ARG_POST_OP_BASE * ((1 if exp else 0) + 1) | _ARG_SRC_1
                lib.call("dnnl_post_ops_append_binary", po, _BINARY_MUL, self.c.h)
            lib.call("dnnl_primitive_attr_set_post_ops", attr, po)
            pd = ctypes.c_void_p()
            lib.call("dnnl_matmul_primitive_desc_create", ctypes.byref(pd), lib.engine, self.a.h, self.b.h,
                     None, self.c.h, attr)
        finally:
            if po:
                lib.fn("dnnl_post_ops_destroy")(po)
            lib.fn("dnnl_primitive_attr_destroy")(attr)
        self.prim = _Prim(lib, pd)
        self.local = threading.local()
        self.all_mems = []

    def _bound(self):
        """This thread's memory objects and argument array (handles set per call): creating and
        destroying memories per call cost ~30 us, more than a small tile's product."""
        local = self.local.__dict__
        if "args" not in local:
            roles = [(D.ARG_SRC, self.a), (D.ARG_WEIGHTS, self.b), (D.ARG_DST, self.c)]
            if self.mul:
                roles.append((self.mul_arg, self.c))
            n = len(roles) + (1 if self.prim.scratch else 0)
            arr = (D.ExecArg * n)()
            mems = []
            for i, (arg, desc) in enumerate(roles):
                mem = ctypes.c_void_p()
                self.lib.call("dnnl_memory_create", ctypes.byref(mem), desc.h, self.lib.engine, None)
                mems.append(mem)
                arr[i].arg, arr[i].memory = arg, mem
            if self.prim.scratch:  # a per-thread scratchpad, owned by this plan
                local["pad"] = D.aligned_empty(self.prim.scratch, np.uint8)
                mem = ctypes.c_void_p()
                self.lib.call("dnnl_memory_create", ctypes.byref(mem), self.prim.md(D.QUERY_SCRATCHPAD_MD),
                              self.lib.engine, ctypes.c_void_p(local["pad"].ctypes.data))
                mems.append(mem)
                arr[n - 1].arg, arr[n - 1].memory = D.ARG_SCRATCHPAD, mem
            local["mems"], local["args"] = mems, arr
            with _lock:
                self.all_mems.extend(mems)
        return local["mems"], local["args"]

    def run(self, a, b, out, mul):
        check = D.check_buffer
        ptrs = [check(a, _F32, self.a.nbytes, "input a"), check(b, _F32, self.b.nbytes, "input b"),
                check(out, _F32, self.c.nbytes, "output")]
        if self.mul:
            ptrs.append(check(mul, _F32, self.c.nbytes, "input mul"))
        mems, args = self._bound()
        set_handle = self.lib.fn("dnnl_memory_set_data_handle")
        for mem, ptr in zip(mems, ptrs):
            set_handle(mem, ptr)
        # a, b, out, mul are referenced by the caller until this returns (after the wait)
        self.lib.call("dnnl_primitive_execute", self.prim.prim, self.lib.stream, len(args), args)
        self.lib.call("dnnl_stream_wait", self.lib.stream)

    def __del__(self):
        fn = getattr(self.lib, "fn", None)
        if fn is not None:
            for mem in getattr(self, "all_mems", ()):
                fn("dnnl_memory_destroy")(mem)


def _plan(lib, key):
    return _cache.get(key, lambda: _Plan(lib, *key))


def matmul_nt(a, b, out, exp: bool = False, mul=None, transpose_b: bool = True) -> bool:
    """``out = a @ b^T``, then ``exp`` (if ``exp``), then ``* mul`` (if given), in one oneDNN call;
    ``transpose_b=False``: ``out = a @ b`` with b (n, K, N).

    a (n, M, K), b (n, N, K), out and mul (n, M, N): C-contiguous float32 NumPy arrays. Returns
    False (nothing written) when oneDNN is not installed; the caller then computes it with NumPy.

    Math: ``out[i] = f(a[i] b[i]^T)`` with ``f(x) = exp(x) * mul`` (each part optional), computed
    in float32 by oneDNN's matmul primitive with eltwise/binary post-ops. No PyTorch function
    mirrors it (PyTorch reaches the same primitive internally through oneDNN/ideep).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel._matmul import matmul_nt
        >>> a = np.ones((1, 2, 3), np.float32); out = np.empty((1, 2, 2), np.float32)
        >>> done = matmul_nt(a, a, out, exp=True)  # False when oneDNN is not installed
        >>> (not done) or bool(np.allclose(out, np.exp(3.0)))
        True
    """
    lib = D.load()
    if lib is None:
        return False
    _declare(lib)
    n, M, K = a.shape
    N = b.shape[1] if transpose_b else b.shape[-1]
    b_shape = (n, N, K) if transpose_b else (n, K, N)
    if b.shape != b_shape or out.shape != (n, M, N) or (mul is not None and mul.shape != out.shape):
        raise ValueError(f"matmul_nt: shapes a {a.shape}, b {b.shape}, out {out.shape}"
                         f"{'' if mul is None else f', mul {mul.shape}'} do not fit (n, M, K) x (n, N, K) -> (n, M, N)")
    _plan(lib, (n, M, K, N, bool(exp), mul is not None, bool(transpose_b))).run(a, b, out, mul)
    return True


@contextlib.contextmanager
def one_omp_thread():
    """Run oneDNN calls made by THIS thread on one OpenMP thread (restored on exit).

    For code that shares tiles among Python threads (``ops._cpu_threads``): each would
    otherwise fork a full OpenMP team per call and oversubscribe the cores. OpenMP's thread
    count is a per-thread setting, so this changes nothing for other threads; the functions are
    found through oneDNN's own handle (its OpenMP runtime, whichever it links). (PyTorch:
    ``torch.set_num_threads`` is process-wide; this is per calling thread.)

    Example:
        >>> from avila_ml.cpu_accel._matmul import one_omp_thread
        >>> with one_omp_thread():
        ...     pass  # oneDNN calls here use one thread
    """
    lib = D.load()
    get = set_ = None
    if lib is not None:
        try:
            get, set_ = lib.cdll.omp_get_max_threads, lib.cdll.omp_set_num_threads
        except AttributeError:  # a oneDNN not built on OpenMP (threadpool/TBB): nothing to set
            get = set_ = None
    if set_ is None:
        yield
        return
    before = get()
    set_(1)
    try:
        yield
    finally:
        set_(before)


def cache_info() -> dict:
    """``{"size": plans cached, "capacity": CACHE_SIZE}``."""
    return _cache.info()


def clear_cache() -> None:
    """Drop every cached plan (their JIT code and descriptors are freed)."""
    _cache.clear()
