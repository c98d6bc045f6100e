"""Layer normalization, forward (with the statistics) and backward, through oneDNN, float32
NumPy arrays in plain C order.

``x`` is viewed as (M, D), statistics per row, scale and shift per column. The forward writes
the mean and the *biased* variance, which the backward reads back together with ``x``; the
backward computes the input, scale and shift gradients in one call. One plan per (shape,
eps, affine flags) holds both primitives (the backward built with the forward as its hint),
in an LRU cache like the convolution plans (``_conv.py``). ``ops/normalization.py`` decides
where it is used (measured against the NumPy path; oneDNN's batch normalization was slower
than NumPy on plain NCHW arrays and is not used).
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from . import _dnnl as D
from . import _native
from ._prim import Executor, PlanCache, _Desc, _Prim, _attr, destroy_memories, execute_bound, impl_name

__all__ = ["NormPlan", "plan", "cache_info", "clear_cache", "CACHE_SIZE"]

CACHE_SIZE = 64
_cache = PlanCache(lambda: CACHE_SIZE)
_F32 = np.dtype(np.float32)
_CREATE = {"layer": ("dnnl_layer_normalization_forward_primitive_desc_create",
                     "dnnl_layer_normalization_backward_primitive_desc_create")}


class NormPlan(Executor):
    """Forward-training and backward normalization primitives for one shape: ``kind`` "layer"
    (the only one), ``shape`` (M, D), statistics (M,), scale/shift (D,)."""

    def __init__(self, lib, kind, shape, eps, scale, shift):
        self.lib, self.kind = lib, kind
        self.x = _Desc(lib, shape)
        n_stat, n_aff = shape
        self.stat, self.aff = _Desc(lib, (n_stat,)), _Desc(lib, (n_aff,))
        self.stat_shape, self.aff_shape = (n_stat,), (n_aff,)
        self.scale, self.shift = scale, shift
        flags = (D.NORM_USE_SCALE if scale else 0) | (D.NORM_USE_SHIFT if shift else 0)
        fwd_name, bwd_name = _CREATE[kind]
        eps = ctypes.c_float(eps)
        attr = _attr(lib)
        try:
            fwd = ctypes.c_void_p()
            extra = (self.stat.h,)
            lib.call(fwd_name, ctypes.byref(fwd), lib.engine, D.FORWARD_TRAINING, self.x.h, self.x.h, *extra,
                     eps, flags, attr)
            self.fwd = _Prim(lib, fwd)
            bwd = ctypes.c_void_p()
            lib.call(bwd_name, ctypes.byref(bwd), lib.engine, D.BACKWARD, self.x.h, self.x.h, self.x.h, *extra,
                     eps, flags, fwd, attr)
            self.bwd = _Prim(lib, bwd)
        finally:
            lib.fn("dnnl_primitive_attr_destroy")(attr)
        self.impl = impl_name(lib, fwd)
        self.local = threading.local()
        self.all_mems = []
        self.lock = threading.Lock()

    def _bound(self, prim, args):
        """This thread's memory objects and argument array for ``prim`` (one per argument of
        ``args``, made once, their data handles set per call; each plan always passes the same
        arguments in the same order). Creating and destroying the memory objects per call cost
        about 5 us each, a third of a (256, 512) forward (in-process, loaded 2-core EPYC)."""
        local = self.local.__dict__
        got = local.get(id(prim))
        if got is None:
            n = len(args) + (1 if prim.scratch else 0)
            arr = (D.ExecArg * n)()
            mems = []
            for i, (arg, md, _) in enumerate(args):
                mem = ctypes.c_void_p()
                self.lib.call("dnnl_memory_create", ctypes.byref(mem), md, self.lib.engine, None)
                mems.append(mem)
                arr[i].arg, arr[i].memory = arg, mem
            pad = None
            if prim.scratch:  # a per-thread scratchpad, owned by this plan
                pad = D.aligned_empty(prim.scratch, np.uint8)
                mem = ctypes.c_void_p()
                self.lib.call("dnnl_memory_create", ctypes.byref(mem), prim.md(D.QUERY_SCRATCHPAD_MD),
                              self.lib.engine, ctypes.c_void_p(pad.ctypes.data))
                with self.lock:
                    self.all_mems.append(mem)
                arr[n - 1].arg, arr[n - 1].memory = D.ARG_SCRATCHPAD, mem
            with self.lock:
                self.all_mems.extend(mems)
            got = local[id(prim)] = (mems, arr, pad)
        return got

    def _run(self, prim, args):
        """Execute ``prim`` on ``args`` [(arg id, md, data pointer)]; the caller keeps every
        array referenced until this returns (after the stream has finished). (Pointers, not
        arrays: each ``ndarray.ctypes.data`` builds a Python helper object, ~1.5-7 us, and the
        checks below already return them: 24 look-ups per forward + backward were 15.)"""
        mems, arr, _ = self._bound(prim, args)
        execute_bound(self.lib, prim.prim, mems, [p for _, _, p in args], arr, f"{self.kind} norm")

    def __del__(self):
        destroy_memories(getattr(self, "lib", None), getattr(self, "all_mems", ()))

    def _affine_args(self, scale, shift, what):
        args = []
        for flag, arg, a, name in ((self.scale, D.ARG_SCALE, scale, "scale"), (self.shift, D.ARG_SHIFT, shift, "shift")):
            if flag:
                args.append((arg, self.aff.h, D.check_buffer(a, _F32, self.aff.nbytes,
                                                             f"input {name} of the oneDNN {self.kind} norm {what}")))
        return args

    def forward(self, x, scale=None, shift=None):
        """``(y, mean, var)`` of ``x`` (C-contiguous float32): normalised and affine-mapped,
        with the batch statistics (biased variance)."""
        px = D.check_buffer(x, _F32, self.x.nbytes, f"input x of the oneDNN {self.kind} norm")
        y = np.empty(self.x.shape, dtype=_F32)
        mean, var = np.empty(self.stat_shape, dtype=_F32), np.empty(self.stat_shape, dtype=_F32)
        args = [(D.ARG_SRC, self.x.h, px), (D.ARG_DST, self.x.h, _native.addr(y)), (D.ARG_MEAN, self.stat.h, _native.addr(mean)),
                (D.ARG_VARIANCE, self.stat.h, _native.addr(var))] + self._affine_args(scale, shift, "forward")
        self._run(self.fwd, args)
        return y, mean, var

    def backward(self, x, gy, mean, var, scale=None, shift=None):
        """``(dx, dscale or None, dshift or None)`` for the output gradient ``gy`` (oneDNN 3.2's
        layer norm counts the shift among the backward's inputs, though the gradient does not
        use it)."""
        args = [(arg, md, D.check_buffer(a, _F32, md_bytes, f"input {what} of the oneDNN {self.kind} norm backward"))
                for a, arg, md, md_bytes, what in ((x, D.ARG_SRC, self.x.h, self.x.nbytes, "x"),
                                                   (gy, D.ARG_DIFF_DST, self.x.h, self.x.nbytes, "gy"),
                                                   (mean, D.ARG_MEAN, self.stat.h, self.stat.nbytes, "mean"),
                                                   (var, D.ARG_VARIANCE, self.stat.h, self.stat.nbytes, "var"))]
        dx = np.empty(self.x.shape, dtype=_F32)
        args.append((D.ARG_DIFF_SRC, self.x.h, _native.addr(dx)))
        args += self._affine_args(scale, shift, "backward")
        dscale = np.empty(self.aff_shape, dtype=_F32) if self.scale else None
        dshift = np.empty(self.aff_shape, dtype=_F32) if self.shift else None
        if self.scale:
            args.append((D.ARG_DIFF_SCALE, self.aff.h, _native.addr(dscale)))
        if self.shift:
            args.append((D.ARG_DIFF_SHIFT, self.aff.h, _native.addr(dshift)))
        self._run(self.bwd, args)
        return dx, dscale, dshift


def plan(kind, shape, eps, scale, shift):
    """The cached :class:`NormPlan` (built on first use); None when oneDNN is not loaded."""
    lib = D.load()
    if lib is None:
        return None
    key = (kind, tuple(int(n) for n in shape), float(eps), bool(scale), bool(shift))
    return _cache.get(key, lambda: NormPlan(lib, *key))


def cache_info() -> dict:
    """``{"size": plans cached, "capacity": CACHE_SIZE}``."""
    return _cache.info()


def clear_cache() -> None:
    """Drop every cached normalization plan."""
    _cache.clear()
