"""Batched matrix products through oneDNN's matmul primitive, with the element-wise epilogue the
CPU attention needs fused into them: ``exp`` (a probability tile straight out of the score
product), a multiplication by another tensor of the output's shape (``dS = P o (dO V^T - D)``)
and an accumulation into the destination (``dK += dS^T Q``).

NumPy's float32 ``exp`` costs about as much as the score matmul itself (1.7 ns per element on
an AVX2 EPYC, measured 2026-12-06), and every extra NumPy pass over a score tile reads and
writes it once more; as a post-op the ``exp`` and the product run on the GEMM's output while it
is still in registers/L1 (the 256 x 2048 tile: matmul 0.79 ms, matmul + NumPy exp 1.75 ms,
fused 1.12 ms, one thread). Operands are strided views (a block of rows of a larger array, a
transposed read) used in place. float32 NumPy arrays only; the caller keeps the NumPy path as
fallback and as the reference in tests.

One plan (primitive + descriptors) per (shapes, strides, epilogue), kept in an LRU cache like
the convolutions' (:mod:`avila_ml.cpu_accel._conv`); every operand is checked at the boundary
(dtype, dimensions, strides, writability) and referenced until the stream has finished.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from . import _dnnl as D
from . import _native
from ._prim import PlanCache, _Desc, _Prim, _attr, destroy_memories, execute_bound, impl_name, one_omp_thread  # noqa: F401 (re-exported)

__all__ = ["matmul", "matmul_nt", "one_omp_thread", "cache_info", "clear_cache", "CACHE_SIZE"]

# plans kept (LRU): each holds JIT code; a causal attention shape uses ~30 (building one took
# ~0.3 ms, one in-process measurement)
CACHE_SIZE = 128
_cache = PlanCache(lambda: CACHE_SIZE)
_lock = threading.Lock()  # guards the plans' lists of memory objects
_F32 = np.dtype(np.float32)

# oneDNN 3.x ABI values (dnnl_types.h) of what is used here only
_ELTWISE_EXP = 0x2A           # dnnl_eltwise_exp
_BINARY_MUL = 0x1FFF1         # dnnl_binary_mul
_BINARY_ADD = 0x1FFF0         # dnnl_binary_add
_DATA_TYPE_UNDEF = 0          # dnnl_data_type_undef: the sum post-op reads out in its own type
_ARG_SRC_1 = 2                # DNNL_ARG_SRC_1
_ARG_POST_OP_BASE = 32768     # DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE
_p = ctypes.c_void_p
_SIGNATURES = {
    "dnnl_matmul_primitive_desc_create": [ctypes.POINTER(_p), _p, _p, _p, _p, _p, _p],
    "dnnl_post_ops_create": [ctypes.POINTER(_p)],
    "dnnl_post_ops_destroy": [_p],
    "dnnl_post_ops_append_eltwise": [_p, ctypes.c_int, ctypes.c_float, ctypes.c_float],
    "dnnl_post_ops_append_binary": [_p, ctypes.c_int, _p],
    "dnnl_post_ops_append_sum": [_p, ctypes.c_float, ctypes.c_int32, ctypes.c_int],
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
    """``out[i] = post(A_i @ B_i)`` for one shape, layout and epilogue.

    A is logically (n, M, K), B (n, K, N), out (n, M, N); each is a strided view given by its
    element strides (batch, row, column), so a transposed operand or a block of rows of a larger
    array is read in place (no copy). ``bias`` (N,) is added to every row of the product (oneDNN's
    matmul bias); ``post`` = ``exp``, then ``* mul`` (C-order (n, M, N)),
    then ``+ out`` (``accumulate``: oneDNN's sum post-op), each optional. ``fast`` is False when
    oneDNN has only its reference loops for the combination (oneDNN 3.2 on AVX2: a binary
    post-op into a strided destination); the caller then uses NumPy.
    """

    def __init__(self, lib, n, M, K, N, a_st, b_st, c_st, exp, mul, accumulate, bias=False):
        self.lib = lib
        self.a = self._md(lib, (n, M, K), a_st)
        self.b = self._md(lib, (n, K, N), b_st)
        self.c = self._md(lib, (n, M, N), c_st)
        self.shapes = ((n, M, K), (n, K, N), (n, M, N))
        self.strides = (a_st, b_st, c_st)
        self.mul_desc = _Desc(lib, (n, M, N)) if mul else None
        attr = _attr(lib)
        po = ctypes.c_void_p()
        try:
            lib.call("dnnl_post_ops_create", ctypes.byref(po))
            self.extra = []  # (argument id, descriptor, name) of the bias and the epilogue's inputs
            self.bias_desc = None
            if bias:  # one row (N,) added to every output row, inside the kernel
                self.bias_desc = _Desc(lib, (1, 1, N))
                self.extra.append((D.ARG_BIAS, self.bias_desc, "bias"))
            index = 0
            if exp:
                lib.call("dnnl_post_ops_append_eltwise", po, _ELTWISE_EXP, 0.0, 0.0)
                index += 1
            if mul:
                lib.call("dnnl_post_ops_append_binary", po, _BINARY_MUL, self.mul_desc.h)
                self.extra.append((_ARG_POST_OP_BASE * (index + 1) | _ARG_SRC_1, self.mul_desc, "input mul"))
                index += 1
            if accumulate:
                lib.call("dnnl_post_ops_append_sum", po, 1.0, 0, _DATA_TYPE_UNDEF)
            lib.call("dnnl_primitive_attr_set_post_ops", attr, po)
            pd = ctypes.c_void_p()
            lib.call("dnnl_matmul_primitive_desc_create", ctypes.byref(pd), lib.engine, self.a.h, self.b.h,
                     None if self.bias_desc is None else self.bias_desc.h, self.c.h, attr)
        finally:
            if po:
                lib.fn("dnnl_post_ops_destroy")(po)
            lib.fn("dnnl_primitive_attr_destroy")(attr)
        self.prim = _Prim(lib, pd)
        self.fast = not impl_name(lib, pd).startswith("ref")
        self.local = threading.local()
        self.all_mems = []

    @staticmethod
    def _md(lib, shape, strides):
        """Descriptor of a (n, R, C) operand with element ``strides``."""
        d = _Desc.__new__(_Desc)
        d.lib, d.shape, d.h = lib, shape, ctypes.c_void_p()
        lib.call("dnnl_memory_desc_create_with_strides", ctypes.byref(d.h), 3, D.Dims(*shape), D.F32,
                 D.Dims(*strides))
        d.nbytes = int(lib.fn("dnnl_memory_desc_get_size")(d.h))
        return d

    def _bound(self):
        """This thread's memory objects and argument array (handles set per call): creating and
        destroying memories per call cost ~30 us, more than a small tile's product."""
        local = self.local.__dict__
        if "args" not in local:
            roles = [(D.ARG_SRC, self.a), (D.ARG_WEIGHTS, self.b), (D.ARG_DST, self.c)]
            roles += [(arg, desc) for arg, desc, _ in self.extra]
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

    def run(self, a, b, out, extra):
        """Execute on views whose logical shapes and strides were checked by ``_run`` to be this
        plan's (they are part of its cache key); the epilogue's inputs are checked here."""
        ptrs = [_native.addr(a), _native.addr(b), _native.addr(out)]
        if extra:
            check = D.check_buffer
            ptrs += [check(x, _F32, desc.nbytes, what) for x, (_, desc, what) in zip(extra, self.extra)]
        mems, args = self._bound()
        # every buffer is referenced by the caller until this returns (after the wait)
        execute_bound(self.lib, self.prim.prim, mems, ptrs, args, "matmul")

    def __del__(self):
        destroy_memories(getattr(self, "lib", None), getattr(self, "all_mems", ()))


def _plan(lib, key):
    return _cache.get(key, lambda: _Plan(lib, *key))


def _operand(x, what, name, transposed=False, writable=False):
    """Logical (n, R, C) element strides of the 3-d float32 view ``x`` (its last two dims
    swapped when ``transposed``), checked for what oneDNN's GEMM reads in place: positive strides
    that are whole elements, and one of the two matrix dims contiguous."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: {what} must be a NumPy array, got {type(x).__name__}")
    if x.dtype != _F32:
        raise TypeError(f"{name}: {what} must have dtype float32, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"{name}: {what} must be 3-d (batch, rows, columns), got shape {x.shape}")
    if writable and not x.flags.writeable:
        raise ValueError(f"{name}: {what} is read-only")
    st = [s // 4 if s % 4 == 0 else -1 for s in x.strides]
    n, r, c = x.shape
    st = [st[0] if n > 1 else r * c, st[1] if r > 1 else c, st[2] if c > 1 else 1]  # size-1 dims: any stride
    if min(st) <= 0 or (st[1] != 1 and st[2] != 1):
        raise ValueError(f"{name}: {what} of shape {x.shape} has strides {x.strides}: oneDNN needs positive, "
                         "element-aligned strides with the rows or the columns contiguous")
    shape = (n, c, r) if transposed else (n, r, c)
    return shape, ((st[0], st[2], st[1]) if transposed else tuple(st))


def matmul(a, b, out, *, trans_a: bool = False, trans_b: bool = False, exp: bool = False, mul=None,
           accumulate: bool = False, bias=None) -> bool:
    """``out (+)= exp(op(a) @ op(b)) * mul`` batched over the leading dim, in one oneDNN call.

    a (n, M, K) -- or (n, K, M) read transposed when ``trans_a`` --, b (n, K, N) -- or (n, N, K)
    when ``trans_b`` --, out (n, M, N): float32 NumPy views with any positive strides that keep
    the rows or the columns of each matrix contiguous (a block of rows of a larger array is read
    and written in place); ``mul`` (n, M, N) C-contiguous float32. ``exp`` and ``mul`` are
    optional; ``accumulate`` adds the result to what ``out`` holds; ``bias`` (N,) C-contiguous
    float32 is added to every row of the product inside the kernel, before the epilogue. Returns False (nothing
    written) when oneDNN is not installed or has only its reference loops for this layout and
    epilogue (a ``mul`` into a strided ``out``); the caller then computes it with NumPy.

    Math: ``out[i] = f(A_i B_i + bias) (+ out[i])`` with ``A_i = a[i]`` or ``a[i]^T``, ``B_i = b[i]`` or
    ``b[i]^T``, ``f(x) = exp(x) * mul``, float32, by oneDNN's matmul primitive with
    eltwise/binary/sum post-ops (the epilogue runs on the product while it is still in
    registers). No PyTorch function mirrors it (``torch.baddbmm`` + ``exp`` + ``mul`` computes
    the same values).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel._matmul import matmul
        >>> a = np.ones((1, 2, 3), np.float32); out = np.zeros((1, 2, 2), np.float32)
        >>> done = matmul(a, a, out, trans_b=True, accumulate=True)  # False without oneDNN
        >>> (not done) or bool(np.allclose(out, 3.0))
        True
    """
    return _run("matmul", a, b, out, trans_a, trans_b, exp, mul, accumulate, bias)


# layouts already validated by the full checks of _run (shapes, strides, options of the three
# operands and the epilogue's inputs) -> their plan key: a repeated call checks only what can
# differ between arrays of one layout (type, dtype, writability). Skipping the full checks took
# a tiny product's call from 25.6 to 18.9 us of Python (one thread); two threads sharing
# attention tiles run that Python one at a time under the GIL.
_validated: dict = {}
_VALIDATED_MAX = 4096


def _run(name, a, b, out, trans_a, trans_b, exp, mul, accumulate=False, bias=None) -> bool:
    lib = D.load()
    if lib is None:
        return False
    ta = type(a) is np.ndarray and type(b) is np.ndarray and type(out) is np.ndarray
    layout = (a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, trans_a, trans_b, bool(exp),
              None if mul is None else (mul.shape, mul.strides), bool(accumulate),
              None if bias is None else (bias.shape, bias.strides)) if ta else None
    key = _validated.get(layout) if ta else None
    if key is None or not (a.dtype == _F32 and b.dtype == _F32 and out.dtype == _F32 and out.flags.writeable):
        key = _checked_key(lib, name, a, b, out, trans_a, trans_b, exp, mul, accumulate, bias)
        if ta:
            if len(_validated) >= _VALIDATED_MAX:
                _validated.clear()
            _validated[layout] = key
    plan = _plan(lib, key)
    if not plan.fast:
        return False
    plan.run(a, b, out, ([] if bias is None else [bias]) + ([] if mul is None else [mul]))
    return True


def _checked_key(lib, name, a, b, out, trans_a, trans_b, exp, mul, accumulate, bias):
    """The plan key of a call after every check of the operands (raises naming what is wrong)."""
    _declare(lib)
    (n, M, K), a_st = _operand(a, "input a", name, trans_a)
    (nb, Kb, N), b_st = _operand(b, "input b", name, trans_b)
    c_shape, c_st = _operand(out, "output", name, writable=True)
    if not (nb == n and Kb == K and c_shape == (n, M, N) and (mul is None or mul.shape == c_shape)):
        raise ValueError(f"{name}: shapes a {a.shape}{' (transposed)' if trans_a else ''}, b {b.shape}"
                         f"{' (transposed)' if trans_b else ''}, out {out.shape}"
                         f"{'' if mul is None else f', mul {mul.shape}'} do not fit (n, M, K) x (n, K, N) -> (n, M, N)")
    if bias is not None and getattr(bias, "shape", None) != (N,):
        raise ValueError(f"{name}: bias of shape {getattr(bias, 'shape', type(bias).__name__)} does not fit "
                         f"the output's {N} columns (expected ({N},))")
    return (n, M, K, N, a_st, b_st, c_st, bool(exp), mul is not None, bool(accumulate), bias is not None)


def matmul_nt(a, b, out, exp: bool = False, mul=None, transpose_b: bool = True) -> bool:
    """``out = a @ b^T``, then ``exp`` (if ``exp``), then ``* mul`` (if given), in one oneDNN call;
    ``transpose_b=False``: ``out = a @ b`` with b (n, K, N). (:func:`matmul` with ``trans_b``.)

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
    for x, what in ((a, "input a"), (b, "input b"), (out, "output")):
        if isinstance(x, np.ndarray) and not x.flags.c_contiguous:
            raise ValueError(f"matmul_nt: {what} of shape {x.shape} must be C-contiguous (strides {x.strides})")
    return _run("matmul_nt", a, b, out, False, transpose_b, exp, mul)


def cache_info() -> dict:
    """``{"size": plans cached, "capacity": CACHE_SIZE}``."""
    return _cache.info()


def clear_cache() -> None:
    """Drop every cached plan (their JIT code and descriptors are freed)."""
    _cache.clear()
    _validated.clear()
