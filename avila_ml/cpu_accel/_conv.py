"""Convolution forward, input gradient and weight gradient through oneDNN, 1-4 spatial dims,
float32 NumPy arrays (oneDNN's CPU convolutions have no float64: float64 stays on NumPy).

The three functions mirror ``avila_ml.ops._conv_gemm`` and return None where oneDNN does not
apply (another dtype, an empty dim, an adjoint whose sizes do not follow the geometry), so the
caller falls back to the NumPy algorithms. Zero padding, asymmetric included, strides,
dilations and groups are passed to oneDNN; other padding modes reach here already padded.

1-3 d: one oneDNN convolution. oneDNN picks its blocked memory layouts (``format_tag_any``);
reorders from and to the plain C-order arrays are built once per shape with the convolution.
Every buffer, the scratchpad included (``scratchpad_mode_user``), is a NumPy allocation, so the
memory benchmarks count it.

4 d (oneDNN has no 4-d convolution): the ``K_t`` kernel-time offsets are stacked into channels,

    stacked[n * T_out + i, c * K_t + k] = x_pad[n, c, i * s_t + k * d_t]

and one 3-d convolution with weights ``w[o, c * K_t + k] = w4[o, c, k]`` runs on it; the input
gradient scatters the stacked gradient back over ``k``, the weight gradient is the 3-d weight
gradient of the stacked input. For the weight gradient only, the channels are zero-padded to a
multiple of 16 (ungrouped):
oneDNN's JIT weight-gradient kernel needs blocked channels, and with 12 channels it falls back
to a GEMM-based one several times slower. The stacked buffer is a real copy: a strided no-copy
view of the input makes oneDNN take its reference implementation (seconds instead of ms).
The forward with few output channels (ungrouped, ``O <= 8``) stacks the offsets into OUTPUT
channels instead (``_OutputStacking``): one 3-d convolution to ``K_t O`` channels over the input
frames, then ``y[:, :, i] = sum_k Z[frame i s_t + k d_t - lo_t, block k]``, because oneDNN's
AVX2 forward kernel is slow with a single block of output channels.

A bias is added inside the forward convolution, and the weight gradient can return the bias
gradient from the same pass (``forward_bias``, ``weight_bias``). oneDNN's first implementation
is taken everywhere except for strided backward-data with few channels, where its im2col + GEMM
one is faster (``_prefer_gemm_data_grad``).

Three routes around oneDNN 3.2's AVX2 kernels where they measured slower (each rule, with its
figures, at its function): a unit-stride 2-d forward without bias runs on the backward-data
kernel as the adjoint convolution (``_forward_as_data_grad``); the weight gradient with 1-3
input channels is one batched matmul over the input's patches (``_patches_weight_grad``); and
the input and weight gradients of one backward run as one submission that reorders their shared
operand once (``conv_backward``, ``conv_transpose_backward``, ``run_together``).

The rules were measured per instruction set (``_dnnl.avx512``): on AVX-512 CPUs the 2-d/3-d
weight gradient keeps oneDNN's kernel with the bias inside it, the inner convolutions of a 4-d
one with at most 8 outputs take oneDNN's AVX2 kernels (``_prefer_avx2``: no rounding of 8
channels up to 16), and a forward or input gradient whose blocked buffers pad the channels
beyond 1.5x runs in batch slices (``_padded_parts``: the memory bound).
"""
from __future__ import annotations

import ctypes
import itertools
import math
import os
import threading

import numpy as np

from . import _dnnl as D
from . import _native_stacking
from ._prim import SERIAL_REORDER_BYTES, Executor, PlanCache, _Desc, _Prim, _attr, impl_name

__all__ = ["conv_forward", "conv_transpose", "conv_weight_grad", "cache_info", "clear_cache", "CACHE_SIZE"]

CACHE_SIZE = 128  # primitive plans kept (LRU); a plan holds JIT code, so the bound matters
_cache = PlanCache(lambda: CACHE_SIZE)
_STACK_ALIGN = 16  # stacked channels of a 3-d inner convolution rounded up to this (module docstring)
_F32 = np.dtype(np.float32)

# roles per kind: (argument id, query of the primitive's own descriptor, which user array, is output)
_ROLES = {
    "forward": ((D.ARG_SRC, D.QUERY_SRC_MD, "x", False), (D.ARG_WEIGHTS, D.QUERY_WEIGHTS_MD, "w", False),
                (D.ARG_DST, D.QUERY_DST_MD, "y", True)),
    "transpose": ((D.ARG_DIFF_DST, D.QUERY_DIFF_DST_MD, "y", False), (D.ARG_WEIGHTS, D.QUERY_WEIGHTS_MD, "w", False),
                  (D.ARG_DIFF_SRC, D.QUERY_DIFF_SRC_MD, "x", True)),
    "weight": ((D.ARG_SRC, D.QUERY_SRC_MD, "x", False), (D.ARG_DIFF_DST, D.QUERY_DIFF_DST_MD, "y", False),
               (D.ARG_DIFF_WEIGHTS, D.QUERY_DIFF_WEIGHTS_MD, "w", True)),
}
# the forward with the bias added inside the convolution (one pass over y less); the bias is
# given in its plain (O,) layout, which every implementation takes as is (no query, no reorder)
_ROLES["forward_bias"] = _ROLES["forward"] + ((D.ARG_BIAS, None, "b", False),)
# the weight gradient with the bias gradient (sum of gy over batch and space) from the same pass
_ROLES["weight_bias"] = _ROLES["weight"] + ((D.ARG_DIFF_BIAS, None, "b", True),)
_OUT = {"forward": ("y",), "forward_bias": ("y",), "transpose": ("x",), "weight": ("w",), "weight_bias": ("w", "b")}


class _Plan(Executor):
    """One convolution kind for one set of shapes: the primitive and, per argument, the reorder
    between the user's plain array and the layout the primitive chose (None when they agree).
    Its memory objects are kept per thread and argument (``Executor.keep_memories``)."""

    keep_memories = True

    def __del__(self):
        self._destroy_memories()

    def __init__(self, lib, kind, xs, ws, ys, stride, dilation, pad_lo, pad_hi, prefer_avx2=False):
        self.lib, self.kind = lib, kind
        user = {"x": _Desc(lib, xs), "w": _Desc(lib, ws), "y": _Desc(lib, ys)}
        anyd = {k: _Desc(lib, d.shape, any_format=True) for k, d in user.items()}
        if kind in ("forward_bias", "weight_bias"):
            user["b"] = _Desc(lib, (ys[1],))
        self.user = user
        dims = [D.Dims(*v) for v in (stride, tuple(d - 1 for d in dilation), pad_lo, pad_hi)]
        attr = _attr(lib)
        try:
            hints = []  # forward descriptors the backward ones were made with: alive until the search ends

            def create():
                """The primitive descriptor of this kind at oneDNN's first choice."""
                fwd = ctypes.c_void_p()
                lib.call("dnnl_convolution_forward_primitive_desc_create", ctypes.byref(fwd), lib.engine,
                         D.FORWARD_TRAINING, D.CONVOLUTION_DIRECT, anyd["x"].h, anyd["w"].h,
                         user["b"].h if "b" in user else None, anyd["y"].h, *dims, attr)
                if kind in ("forward", "forward_bias"):
                    return fwd
                hints.append(fwd)
                pd = ctypes.c_void_p()
                if kind == "transpose":
                    lib.call("dnnl_convolution_backward_data_primitive_desc_create", ctypes.byref(pd),
                             lib.engine, D.CONVOLUTION_DIRECT, anyd["x"].h, anyd["w"].h, anyd["y"].h,
                             *dims, fwd, attr)
                else:
                    lib.call("dnnl_convolution_backward_weights_primitive_desc_create", ctypes.byref(pd),
                             lib.engine, D.CONVOLUTION_DIRECT, anyd["x"].h, anyd["w"].h,
                             user["b"].h if "b" in user else None, anyd["y"].h, *dims, fwd, attr)
                return pd

            def move_to(pd, prefix):
                """``pd`` at oneDNN's next implementation named ``prefix...``, else a new one at
                its first choice (the search leaves ``pd`` at its last implementation)."""
                if _next_impl(lib, pd, prefix):
                    return pd
                lib.fn("dnnl_primitive_desc_destroy")(pd)
                return create()

            try:
                pd = create()
                if (kind == "transpose" and _prefer_gemm_data_grad(xs, ws, stride)
                        and impl_name(lib, pd).startswith(_GEMM_OVER)):
                    pd = move_to(pd, "x64:gemm")
                elif prefer_avx2 and impl_name(lib, pd).startswith("jit:avx512_core"):
                    pd = move_to(pd, "jit:avx2")
            finally:
                for fwd in hints:
                    lib.fn("dnnl_primitive_desc_destroy")(fwd)
            self.prim = _Prim(lib, pd)
            self.impl = impl_name(lib, pd)
            # oneDNN's fallbacks: "x64:gemm:jit" (im2col + GEMM), "ref:any" (scalar loops)
            self.jit = not self.impl.startswith(("gemm", "x64:gemm", "ref"))
            self.steps = []  # (arg id, user role, is output, reorder _Prim or None, inner size)
            self.blocks = {}  # role -> channel block B of the primitive's layout (_native_stacking.block_of)
            for arg, query, role, out in _ROLES[kind]:
                if query is None:  # given in the user's layout
                    self.steps.append((arg, role, out, None, None, 0))
                    continue
                inner = self.prim.md(query)
                if lib.fn("dnnl_memory_desc_equal")(inner, user[role].h):
                    self.steps.append((arg, role, out, None, None, 0))
                    continue
                src, dst = (inner, user[role].h) if out else (user[role].h, inner)
                rpd = ctypes.c_void_p()
                lib.call("dnnl_reorder_primitive_desc_create", ctypes.byref(rpd), src, lib.engine, dst,
                         lib.engine, attr)
                # the primitive's layout, cloned: the queried one lives only as long as its descriptor
                inner_desc = _Desc(lib, user[role].shape, clone_of=inner)
                self.blocks[role] = _native_stacking.block_of(lib, inner_desc.h, user[role].shape)
                reorder = _Prim(lib, rpd)
                reorder.serial = max(inner_desc.nbytes, user[role].nbytes) <= SERIAL_REORDER_BYTES
                self.steps.append((arg, role, out, reorder, inner_desc, inner_desc.nbytes))
        finally:
            lib.fn("dnnl_primitive_attr_destroy")(attr)

    def run(self, arrays: dict, own=None) -> None:
        """Execute with the user arrays ``{"x", "w", "y"}`` (the output one is written); roles
        in ``own`` are buffers in the primitive's own layout instead (:meth:`calls`)."""
        self._run_all(self.calls(arrays, own=own)[0])

    def inner_nbytes(self, role) -> int:
        """Bytes of ``role``'s buffer in the primitive's own layout (for :meth:`run`'s ``own``)."""
        return next(size for _, r, _, reorder, _, size in self.steps if r == role and reorder is not None)

    def calls(self, arrays: dict, given=None, own=None):
        """``(calls, inputs)``: the executions for ``arrays`` -- inputs reordered into the
        primitive's layouts, the primitive, outputs reordered back -- and ``{role: (inner desc,
        buffer, array)}`` of the inputs it reordered. ``given`` holds such entries from another
        plan's ``calls``: an input whose array is the same object in the same inner layout is not
        reordered again (``run_together``). ``own`` maps roles to buffers already in (or, for
        an output, to be left in) the primitive's own layout (``self.blocks``): no reorder."""
        own = own or {}
        for role, a in arrays.items():
            D.check_buffer(a, _F32, self.user[role].nbytes, f"{'output' if role in _OUT[self.kind] else 'input'} "
                                                            f"{role} of the oneDNN convolution ({self.kind})")
        for role, a in own.items():
            D.check_buffer(a, a.dtype, self.inner_nbytes(role), f"{role} of the oneDNN convolution ({self.kind}) "
                                                                f"in its own layout")
        before, args, after, inputs = [], [], [], {}
        equal = self.lib.fn("dnnl_memory_desc_equal")
        for arg, role, out, reorder, inner, size in self.steps:
            if role in own:
                args.append((arg, inner.h, own[role]))
                continue
            a = arrays[role]
            if reorder is None:
                args.append((arg, self.user[role].h, a))
                continue
            reuse = None if out else next((buf for desc, buf, src in (given or {}).values()
                                           if src is a and equal(desc.h, inner.h)), None)
            if reuse is not None:
                args.append((arg, inner.h, reuse))
                continue
            buf = D.aligned_empty(size, np.uint8)
            if out:
                after.append((reorder, [(D.ARG_FROM, inner.h, buf), (D.ARG_TO, self.user[role].h, a)]))
            else:
                before.append((reorder, [(D.ARG_FROM, self.user[role].h, a), (D.ARG_TO, inner.h, buf)]))
                inputs[role] = (inner, buf, a)
            args.append((arg, inner.h, buf))
        return before + [(self.prim, args)] + after, inputs


def run_together(jobs) -> None:
    """Execute ``[(plan, arrays)]`` in order in one stream submission, an input array that an
    earlier plan already reordered into the same layout taken from that plan's buffer (the
    output gradient that the input- and the weight-gradient passes both read: one reorder of
    it instead of two; 0.58-0.80 ms of the MNIST CNN's second layer at 2 threads, oneDNN's
    verbose times, loaded machine). No PyTorch counterpart (its convolution_backward reorders
    the output gradient once per pass).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _conv, _dnnl
        >>> lib = _dnnl.load()
        >>> if lib is not None:  # nothing to run without oneDNN
        ...     plan = _conv._plan(lib, "forward", (1, 8, 4, 4), (8, 8, 1, 1), (1, 8, 4, 4),
        ...                        ((1, 1), (1, 1), (0, 0), (0, 0)))
        ...     x, y = np.ones((1, 8, 4, 4), np.float32), np.empty((1, 8, 4, 4), np.float32)
        ...     _conv.run_together([(plan, {"x": x, "w": np.ones((8, 8, 1, 1), np.float32), "y": y})])
        ...     assert np.allclose(y, 8.0)
    """
    calls, given = [], {}
    for i, (plan, arrays) in enumerate(jobs):
        c, inputs = plan.calls(arrays, given)
        calls += c
        given.update({(i, r): v for r, v in inputs.items()})
    jobs[0][0]._run_all(calls)


# the first choices _prefer_gemm_data_grad was measured against (its docstring); any other first
# choice (a JIT kernel of another instruction set) stays
_GEMM_OVER = ("brgconv_strided:avx2", "brgconv_strided:avx512_core")


def _prefer_gemm_data_grad(xs, ws, stride) -> bool:
    """Whether a backward-data plan takes oneDNN's im2col + GEMM implementation over its first
    choice, ``brgconv_strided:avx2`` in oneDNN 3.2: strided 2-d with at most 8 data-gradient
    channels per group (one AVX2 block; with 3 channels brgconv fills 3 of 8 vector lanes), or
    strided 3-d with at most 36. One thread, AMD EPYC (AVX2), brgconv vs gemm ms, data gradient
    <- output gradient: 2-d (32,3,32^2) <- (32,64,16^2) k4 (the DCGAN discriminator's first
    layer, and its generator's last) 3.52 vs 0.95, (16,4,64^2) <- (16,32,32^2) k3 2.88 vs 1.07,
    (32,8,32^2) <- (32,16,16^2) k4 1.62 vs 1.44, but (32,16,32^2) <- (32,32,16^2) 3.10 vs 3.95
    and (32,128,8^2) <- (32,256,4^2) 7.7 vs 12.7; 3-d (48,3,14^3) <- (48,12,6^3) k3 7.76 vs 1.57,
    (12,36,8^3) <- (12,16,3^3) (the Conv4d example's second layer, stacked) 1.40 vs 0.87,
    (12,36,14^3) 6.0 vs 4.5, (8,8,16^3) 2.08 vs 1.31, (4,16,16^3) 1.72 vs 1.56, (4,32,16^3)
    4.53 vs 4.34, but (4,48,16^3) 5.83 vs 6.60 and (4,64,16^3) 13.9 vs 14.9. 1-d: not measured,
    oneDNN's choice.

    The same rule holds on AVX-512, where the first choice is ``brgconv_strided:avx512_core``:
    in-process A/B, 2-core AMD EPYC (Zen 4, AVX-512), 2026-12-07, whole layer forward + backward
    with the input gradient, 2 threads, median wall ms, brgconv vs gemm: (32,3,32^2) k4 s2 p1 ->
    64 (the DCGAN's first layer) 4.16 vs 2.35; its generator's last ConvT2d(64,3,4,2,1) 3.85 vs
    2.01; (16,4,64^2) k3 s2 -> 32 4.23 vs 2.73; (32,8,32^2) k4 s2 -> 16 2.42 vs 2.30; 3-d
    (48,3,14^3) k3 s2 -> 12 4.52 vs 2.09, (12,36,8^3) -> 16 2.26 vs 2.08, (4,16,16^3) -> 32
    3.09 vs 2.78."""
    limit = {2: 8, 3: 36}.get(len(stride), 0)
    return any(s > 1 for s in stride) and ws[-len(stride) - 1] <= limit


PREFER_AVX2 = "auto"  # "auto" (the rule below), "never" (tests, A/B)


def _prefer_avx2(O, G) -> bool:
    """Whether the inner 3-d convolutions of a 4-d one take oneDNN's AVX2 kernels on an AVX-512
    CPU: ungrouped with at most 8 output channels, where the AVX-512 layouts round the output
    channels (and the stacked ``K_t O`` or ``C K_t`` ones) up to blocks of 16, twice the work or
    more, and the AVX2 ones to blocks of 8. In-process A/B, 2-core AMD EPYC (Zen 4, AVX-512),
    2026-12-07, forward + backward median ms, AVX-512 vs AVX2 kernels: (2,4,16^4) -> 8 27.9 vs
    24.1, (1,2,32^4) -> 4 174 vs 130. With full blocks the AVX-512 kernels were faster, so the rule
    stops at 8 outputs: the Conv4d example's (32,1,8,12^3) -> 12 6.36 vs 7.51, (32,12,8,6^3) -> 16
    16.8 vs 17.3, and 11 1-3 d rows of bench_conv.py measured with every plan on AVX2 (e.g. its Conv3d
    7.6 vs 9.4, MNIST CNN conv1 0.79 vs 3.1; DCGAN D first / D last / G first / G last not
    measured).
    The weight gradient keeps AVX-512 where oneDNN has no AVX2 JIT kernel for the problem."""
    return PREFER_AVX2 == "auto" and G == 1 and O <= 8 and D.avx512()


def _next_impl(lib, pd, prefix) -> bool:
    """Move the primitive descriptor ``pd`` on to oneDNN's next implementation whose name starts
    with ``prefix``; False when there is none (``pd`` is then left at oneDNN's last
    implementation, so the caller recreates it for the first choice)."""
    step = lib.fn("dnnl_primitive_desc_next_impl")
    while step(pd) == D.SUCCESS:
        if impl_name(lib, pd).startswith(prefix):
            return True
    return False


def _plan(lib, kind, xs, ws, ys, geom3, serial=False, avx2=False):
    """The cached plan; ``serial`` plans are built (and run) in a worker thread of ``_workers``,
    whose OpenMP runtime has one thread, so their kernels never fork an OpenMP team; ``avx2``:
    oneDNN's AVX2 kernel where it has one (``_prefer_avx2``)."""
    return _cache.get((kind, xs, ws, ys, geom3, serial, avx2),
                      lambda: _Plan(lib, kind, xs, ws, ys, *geom3, prefer_avx2=avx2))


def cache_info() -> dict:
    """``{"size": plans cached, "capacity": CACHE_SIZE}``."""
    return _cache.info()


def clear_cache() -> None:
    """Drop every cached primitive plan (their JIT code is freed when no call uses them)."""
    _cache.clear()


# ----------------------------------------------------------------------------- 1-3 d
def _usable(lib, *arrays) -> bool:
    return (lib is not None and all(isinstance(a, np.ndarray) and a.dtype == _F32 and a.size for a in arrays))


def _wshape(w_shape, G):
    """oneDNN's grouped weight shape ``(G, O/G, C/G, *K)`` (or the plain one for G = 1)."""
    return tuple(w_shape) if G == 1 else (G, w_shape[0] // G) + tuple(w_shape[1:])


def _geom(geom, axes=slice(None)):
    return (tuple(geom.stride[axes]), tuple(geom.dilation[axes]), tuple(geom.pad_lo[axes]), tuple(geom.pad_hi[axes]))


def _run3(kind, x_shape, w_shape, y_shape, G, geom3, arrays, serial=False, own=None, split=True, avx2=False):
    """One 1-3 d oneDNN convolution; ``serial``: called from a worker thread (``_workers``), it
    runs there as one single-threaded call. ``own``: roles given in the primitive's own layout
    (``_Plan.calls``), which only the one-call route takes. ``split``: a plan with padded blocked
    buffers may run in batch slices (``_padded_parts``; False for the slices themselves).
    ``avx2``: the plan prefers oneDNN's AVX2 kernels (``_prefer_avx2``). The whole-batch plan is
    built first in every route: its layouts decide the slicing."""
    lib = D.load()
    ws = _wshape(w_shape, G)
    plan = _plan(lib, kind, tuple(x_shape), ws, tuple(y_shape), geom3, serial, avx2)
    k = 1 if serial or own or not split else _padded_parts(plan, x_shape[0])
    parts = None if k > 1 or serial or own or not split or not _parts_wanted() else \
        _batch_parts(x_shape[0], math.prod(y_shape) * math.prod(w_shape[1:]))
    if parts is not None and _workers.start(lib):
        _run3_parts(lib, kind, tuple(x_shape), ws, tuple(y_shape), geom3, arrays, parts, avx2)
        return
    if k > 1:  # batch slices one after the other: their blocked buffers are 1/k the size
        step = x_shape[0] // k
        for n0 in range(0, x_shape[0], step):
            part = {r: (a[n0:n0 + step] if r in ("x", "y") else a) for r, a in arrays.items()}
            _run3(kind, (step,) + tuple(x_shape[1:]), w_shape, (step,) + tuple(y_shape[1:]), G, geom3, part,
                  serial=False, own=None, split=False, avx2=avx2)
        return
    arrays = {r: (a if r != "w" else a.reshape(plan.user["w"].shape)) for r, a in arrays.items()}
    plan.run(arrays, own)


# oneDNN's blocked layouts round the channels up to a block (16 on AVX-512, 8 on AVX2): a 3-d
# convolution with 4 input and 8 output channels on AVX-512 holds its output and the gradients
# in buffers 2-4x the size of the plain arrays (a (2,4,48^3) -> 8 forward + backward took 27.1
# MiB beyond its results, AMD EPYC Zen 4, 2026-12-07, against the 16.9 MiB bound of
# tests/test_conv.py). Where the reordered buffers of a forward or data-gradient plan exceed
# _PAD_RATIO x the plain arrays they stand for and _PAD_MIN_BYTES, the batch runs in slices one
# after the other, each with the whole OpenMP team, so those buffers shrink with the slice.
_PAD_RATIO = 1.5
_PAD_MIN_BYTES = 8 << 20


def _padded_parts(plan, N) -> int:
    """How many equal batch slices ``plan`` (a forward or data-gradient plan) should run in:
    the smallest divisor of ``N`` that brings its reordered buffers down to the plain size of
    the largest array they stand for, 1 where they are not padded beyond ``_PAD_RATIO``."""
    if plan.kind not in ("forward", "forward_bias", "transpose") or N < 2:
        return 1
    inner = plain = 0
    for _, role, _, reorder, _, size in plan.steps:
        if reorder is not None and role in ("x", "y"):
            inner += size
            plain = max(plain, plan.user[role].nbytes)
    if inner <= _PAD_MIN_BYTES or inner <= _PAD_RATIO * plain:
        return 1
    for k in range(2, N + 1):
        if N % k == 0 and inner / k <= plain:
            return k
    return N


# ----------------------------------------------------------------------------- batch parts
# Why not oneDNN's own OpenMP threads: inside a program, NumPy's OpenBLAS keeps its worker
# threads spinning for about 0.1 s after every multi-threaded BLAS call (its THREAD_TIMEOUT, 2^28
# cycles), and an OpenMP team whose kernels partition the work statically and meet at barriers
# waits for its slowest thread: a convolution run right after a 2-thread matmul took 38 ms
# (median) instead of 13 ms on 2 cores (AMD EPYC, 2026-12-06), which is why the MNIST CNN's
# convolutions took 94 ms per step at 2 threads though their single-thread time is ~69 ms. So,
# like the NumPy algorithms (``ops._cpu_threads``), the batch is cut into parts run by Python
# threads that take the next part when free (a slowed thread delays only its own part), each
# part a single-threaded oneDNN call. The cut depends on the shape only, so results are
# reproducible; the weight gradient sums the parts' gradients in part order.
# With oneDNN's OpenMP threads waiting passively (``_dnnl._passive_openmp``, the default where
# the library sets the policy) the stalls are gone and one call on oneDNN's own team is faster.
# In-process A/B of the bench_programs.py steps (quiet AMD EPYC, 2 cores; not a results file):
# DCGAN 172 ms in one call per convolution vs 248 ms in parts (192 ms with one part per
# thread), MNIST CNN 110 vs 111 ms, Conv4d example 66-71 vs 58-66 ms (its 4-d frame blocks use
# the workers either way). So parts are cut only where the
# threads spin ("auto"); "always" is for tests and for machines where parts measure faster.
# Neither form helped against the OpenBLAS spinners themselves (MNIST 110 vs 111 ms above):
# those are now stopped before each convolution (``_dnnl.stop_blas_spinning``): MNIST CNN step
# 114 -> 85 ms, its convolutions 69 -> 40 ms (in-process A/B, min of 12, loaded machine).
_PART_MIN_MACS = 4 << 20   # below this a convolution runs in one call (thread hand-off ~20 us)
_PARTS_PER_THREAD = 4
_PARTS = "auto"            # "auto": only with spinning OpenMP threads; "always"


def _parts_wanted() -> bool:
    return _PARTS == "always" or not D.passive_wait()


def _batch_parts(N, macs):
    """Batch slices ``[(n0, n1)]`` for ``_workers`` or None (one call): equal sizes (no second
    plan for a tail), their number the divisor of ``N`` nearest ``_PARTS_PER_THREAD`` per thread."""
    threads = _workers.threads()
    if threads <= 1 or N < 2 or macs < _PART_MIN_MACS:
        return None
    want = _PARTS_PER_THREAD * threads
    # the divisor of N (at least one part per thread where N allows) nearest to ``want``
    p = min((p for p in range(min(threads, N), N + 1) if N % p == 0), key=lambda p: (abs(p - want), -p))
    size = N // p
    return [(n0, n0 + size) for n0 in range(0, N, size)]


def _run3_parts(lib, kind, xs, ws, ys, geom3, arrays, parts, avx2=False):
    x, y, w = arrays["x"], arrays["y"], arrays["w"].reshape(ws)

    def one(part):
        n0, n1 = part
        plan = _plan(lib, kind, (n1 - n0,) + xs[1:], ws, (n1 - n0,) + ys[1:], geom3, serial=True, avx2=avx2)
        part_arrays = {"x": x[n0:n1], "y": y[n0:n1], "w": w}
        if "b" in arrays:
            part_arrays["b"] = arrays["b"]
        out = {r: np.empty(part_arrays[r].shape, dtype=_F32) for r in _OUT[kind] if r in ("w", "b")}
        part_arrays.update(out)
        plan.run(part_arrays)
        return out

    results = _workers.map(one, parts)
    for r in results[0]:  # weight (and bias) gradients: the parts' sums added in part order
        acc = results[0][r]
        for res in results[1:]:
            acc += res[r]
        (w if r == "w" else arrays["b"])[...] = acc


class _WorkerPool:
    """Python threads whose OpenMP runtime (oneDNN's) is set to one thread, started on first use;
    ``threads()`` is the configured parallelism (BLAS's thread count, which
    ``avila_ml.set_num_threads`` changes), 1 = no pool."""

    def __init__(self):
        self._n = None  # a fixed thread count (tests); None follows the BLAS setting
        self._pool, self._size, self._pid, self._set_threads = None, 0, None, None
        self._lock = threading.Lock()

    def threads(self) -> int:
        if self._n is not None:
            return self._n
        from ..ops._cpu_threads import blas_threads
        return blas_threads()

    @staticmethod
    def _omp_set_num_threads():
        """``omp_set_num_threads`` of oneDNN's OpenMP runtime (libgomp or libiomp5), or None."""
        try:
            from threadpoolctl import ThreadpoolController
            for m in ThreadpoolController().lib_controllers:
                if m.user_api == "openmp" and os.path.basename(m.filepath).startswith(("libgomp.so", "libiomp5.so")):
                    fn = ctypes.CDLL(m.filepath).omp_set_num_threads
                    fn.argtypes, fn.restype = [ctypes.c_int], None
                    return fn
        except Exception:  # noqa: BLE001 - no thread control: oneDNN keeps its own threads
            return None
        return None

    def start(self, lib) -> bool:
        """True when the pool runs with ``threads()`` workers (oneDNN loaded, its OpenMP runtime
        found). A pool inherited through ``fork`` has no threads: the child makes its own."""
        if lib is None:
            return False
        n, pid = self.threads(), os.getpid()
        if self._pool is not None and self._size >= n and self._pid == pid:
            return True
        with self._lock:
            if self._set_threads is None:
                self._set_threads = self._omp_set_num_threads() or False
            if not self._set_threads:
                return False
            if self._pool is None or self._size < n or self._pid != pid:
                from concurrent.futures import ThreadPoolExecutor
                old = self._pool if self._pid == pid else None
                self._pool = ThreadPoolExecutor(n, thread_name_prefix="avila-onednn", initializer=self._set_threads,
                                                initargs=(1,))
                self._size, self._pid = n, pid
                if old is not None:
                    old.shutdown(wait=False)
        return True

    def map(self, fn, items) -> list:
        return list(self._pool.map(fn, items))

    def imap(self, fn, items):
        """``fn`` over ``items`` on the workers, results in order as they are consumed; at most
        two per thread in flight, so unconsumed results (and their buffers) stay bounded."""
        window, pending = 2 * self.threads(), []
        for it in items:
            pending.append(self._pool.submit(fn, it))
            if len(pending) >= window:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()


_workers = _WorkerPool()


def _c(a):
    return np.ascontiguousarray(a)


def _direct(kind, x_shape, w_shape, y_shape, geom):
    lib = D.load()
    return _plan(lib, kind, tuple(x_shape), _wshape(w_shape, geom.groups), tuple(y_shape), _geom(geom))


def conv_forward(x, w, geom, b=None):
    """``y = conv(x, w) (+ b)`` through oneDNN, or None where it does not apply. The bias ``b``
    (``(O,)``), when given, is added inside the convolution (one pass over ``y`` less)."""
    lib = D.load()
    if not _usable(lib, x, w) or x.ndim not in (3, 4, 5, 6):
        return None
    if b is not None and not (_usable(lib, b) and b.shape == (w.shape[0],)):
        return None
    o = geom.out_size(x.shape[2:], w.shape[2:])
    if min(o) < 1:
        return None
    D.quiet_blas()  # (early: before this call's NumPy copies, not only its oneDNN runs)
    b = None if b is None else _c(b)
    if x.ndim == 6:  # oneDNN stops at 3 spatial dims
        if _stack_outputs(x.shape, w.shape, geom):
            return _OutputStacking(geom, x.shape, w.shape[2:], w.shape[0]).forward(_c(x), _c(w), b)
        return _Stacking(geom, x.shape, w.shape[2:], w.shape[0], 1).forward(_c(x), _c(w), b)
    y = np.empty((x.shape[0], w.shape[0]) + tuple(o), dtype=_F32)
    if b is None and _forward_as_data_grad(x.shape, w.shape, geom):
        # y = conv^T(x, w') with w'[c, o, k] = w[o, c, K - 1 - k] and the padding mirrored
        d = x.ndim - 2
        K = w.shape[2:]
        span = [dl * (k - 1) for dl, k in zip(geom.dilation, K)]
        geom3 = ((1,) * d, tuple(geom.dilation), tuple(e - lo for e, lo in zip(span, geom.pad_lo)),
                 tuple(e - hi for e, hi in zip(span, geom.pad_hi)))
        wt = np.ascontiguousarray(np.flip(w, axis=tuple(range(2, 2 + d))).swapaxes(0, 1))
        _run3("transpose", y.shape, wt.shape, x.shape, 1, geom3, {"x": y, "w": wt, "y": _c(x)})
        return y
    arrays = {"x": _c(x), "w": _c(w), "y": y}
    if b is not None:
        arrays["b"] = b
    _run3("forward" if b is None else "forward_bias", x.shape, w.shape, y.shape, geom.groups, _geom(geom), arrays)
    return y


FORWARD_AS_DATA_GRAD = "auto"  # "auto" (the rule below), "never" (tests, A/B)


def _forward_as_data_grad(x_shape, w_shape, geom) -> bool:
    """Whether a forward runs on oneDNN's backward-data kernel: a unit-stride convolution is the
    adjoint of another one, ``conv(x, w)[i] = sum_k x[i - lo + k d] w[k] = conv^T(x, w')[i]`` with
    ``w'[c, o, k] = w[o, c, K - 1 - k]`` and the padding mirrored (``lo' = d (K - 1) - lo``,
    ``hi' = d (K - 1) - hi``, which must not be negative), and oneDNN 3.2's AVX2 backward-data
    kernel is faster than its forward one on the same problem. 2-d, ungrouped, no bias (that
    kernel adds none; a separate pass over y costs more than the gain), at least 16 channels on
    both sides. In-process A/B, loaded 2-core AMD EPYC (AVX2), 2026-12-06, CPU ms forward vs
    data kernel, 1 / 2 threads: (16,64,32^2)->64 p1 (bench_conv's Conv2d) 14.43 vs 13.89 /
    14.68 vs 14.41, (64,32,26^2)->64 17.90 vs 17.08 / 18.16 vs 17.31, (32,64,16^2)->128 p1 16.00
    vs 15.18 / 15.91 vs 14.95, (8,128,16^2)->128 p1 7.82 vs 7.35 / 8.26 vs 7.91; equal on
    (16,32,64^2)->32 p1 (15.34 vs 15.48 / 15.42 vs 15.38; taken) and on 3-d (4,16,16^3)->32 p1
    (4.97 vs 4.99; 3-d keeps the forward kernel). oneDNN's verbose times of the Conv2d shape at
    2 threads: forward 6.63 ms, backward-data 6.03 ms. Figures taken under load."""
    if FORWARD_AS_DATA_GRAD != "auto" or len(x_shape) != 4 or geom.groups != 1:
        return False
    if any(s != 1 for s in geom.stride) or min(x_shape[1], w_shape[0]) < 16:
        return False
    span = [dl * (k - 1) for dl, k in zip(geom.dilation, w_shape[2:])]
    return all(lo <= e and hi <= e for lo, hi, e in zip(geom.pad_lo, geom.pad_hi, span))


OUTPUT_STACKING = "auto"  # 4-d forward: "auto" (the rule below), "always", "never" (tests, A/B)


def _stack_outputs(x_shape, w_shape, geom) -> bool:
    """Whether the 4-d forward stacks kernel-time offsets into output channels
    (``_OutputStacking``) instead of input channels (``_Stacking``): ungrouped, with at most
    one AVX2 block of output channels, where the input-stacked kernel is slow. Forward only,
    in-process A/B, CPU time (both threads) of the best of 20 calls, loaded 2-core AMD EPYC
    (AVX2, 2026-12-06), input- vs output-stacked ms: (2,4,16^4)->8 33.0 vs 16.6, (1,2,32^4)->4
    95.4 vs 75.9; but the Conv4d example's layers (32,1,8,14^3)->12 s(1,2,2,2) 6.5 vs 6.9 and
    (32,12,8,8^3)->16 s2 6.8 vs 7.2, (4,3,8,16^3)->24 38.5 vs 54.3, (2,16,12^4)->32 39.2 vs
    70.1, (2,32,8^4)->64 30.2 vs 37.2: so ``O <= 8``."""
    if OUTPUT_STACKING != "auto":
        return OUTPUT_STACKING == "always" and geom.groups == 1
    return geom.groups == 1 and w_shape[0] <= 8


def conv_transpose(gy, w, geom, spatial):
    """``gx = conv^T(gy, w)`` for an input of spatial size ``spatial``, or None."""
    lib = D.load()
    spatial = tuple(spatial)
    if (not _usable(lib, gy, w) or gy.ndim not in (3, 4, 5, 6) or 0 in spatial
            or geom.out_size(spatial, w.shape[2:]) != tuple(gy.shape[2:])):
        return None
    D.quiet_blas()  # (early: before this call's NumPy copies, not only its oneDNN runs)
    N, C = gy.shape[0], w.shape[1] * geom.groups
    if gy.ndim == 6:
        return _Stacking(geom, (N, C) + spatial, w.shape[2:], gy.shape[1], 1).transpose(_c(gy), _c(w))
    gx = np.empty((N, C) + spatial, dtype=_F32)
    _run3("transpose", gx.shape, w.shape, gy.shape, geom.groups, _geom(geom), {"x": gx, "w": _c(w), "y": _c(gy)})
    return gx


def conv_weight_grad(x, gy, geom, kernel, bias=False):
    """``gw = corr(x, gy)`` for a kernel of size ``kernel``, or None; with ``bias``, the pair
    ``(gw, gb)``, ``gb[o] = sum_{n, i} gy[n, o, i]`` (from oneDNN's weight-gradient pass where
    it runs one convolution, else a NumPy sum).

    Where oneDNN has no JIT weight-gradient kernel for the convolution (3-d on AVX2 CPUs, which
    gets a GEMM-based one several times slower), the kernel offsets of one more leading axis
    are stacked into channels, down to a 2-d convolution, whose kernel is JIT everywhere."""
    lib = D.load()
    kernel = tuple(kernel)
    if (not _usable(lib, x, gy) or x.ndim not in (3, 4, 5, 6)
            or geom.out_size(x.shape[2:], kernel) != tuple(gy.shape[2:])):
        return None
    D.quiet_blas()  # (early: before this call's NumPy copies, not only its oneDNN runs)
    d = x.ndim - 2
    G = geom.groups
    w_shape = (gy.shape[1], x.shape[1] // G) + kernel
    m = max(0, d - 3)
    if _patches_weight_grad_applies(x.shape, kernel, gy.shape[1], geom):
        out = _patches_weight_grad(_c(x), _c(gy), geom, kernel, bias)
        if out is not None:
            return out
    apart = _bias_apart(gy) if bias else None  # the bias gradient by the compiled channel sum
    wkind = "weight_bias" if bias and apart is None else "weight"
    # (only 3-d asks, for the plan that will run: a plan of the other kind would be a JIT compile
    # never used)
    if m == 0 and d == 3 and not _direct(wkind, x.shape, w_shape, gy.shape, geom).jit:
        m = 1
    if m:
        gw = _weight_stacking(geom, x.shape, kernel, gy.shape[1], m).weight_grad(_c(x), _c(gy))
        if not bias:
            return gw
        return gw, (apart if apart is not None else gy.sum(axis=(0,) + tuple(range(2, gy.ndim)), dtype=_F32))
    gw = np.empty(w_shape, dtype=_F32)
    arrays = {"x": _c(x), "w": gw, "y": _c(gy)}
    if wkind == "weight_bias":
        arrays["b"] = np.empty(gy.shape[1], dtype=_F32)
    _run3(wkind, x.shape, w_shape, gy.shape, G, _geom(geom), arrays)
    if not bias:
        return gw
    return gw, (apart if apart is not None else arrays["b"])


# The bias gradient as a separate channel sum of gy (the compiled kernel, ``_native_batchnorm.
# channel_sum``: one pass, channels over the OpenMP threads) instead of inside oneDNN 3.2's
# weight-gradient pass, whose bias reduction cost more than the pass it adds: AMD EPYC, 2 threads,
# quiet, weight vs weight_bias plan (reorders included): MNIST CNN conv2 (64,32,26^2) -> 64
# 8.99-9.02 vs 9.56-9.88 ms, (32,32,32^2) k3 p1 -> 32 4.74-4.76 vs 5.39-5.43 ms, the residual
# CNN stem (32,3,32^2) 0.63 vs 1.01-1.29 ms; the channel sum of the (64,64,24^2) gradient took
# 0.37 ms (loaded machine), NumPy's gy.sum over (0, 2, 3) 0.57 ms (the 4-d path's before).
# On AVX-512 oneDNN's weight pass sums the bias cheaply and the separate sum was not faster:
# in-process A/B, 2-core AMD EPYC (Zen 4, AVX-512), 2026-12-07, layer fwd+bwd median ms, apart vs
# inside: MNIST CNN conv2 24.8 / 25.2 vs 24.5 / 24.8, DCGAN D middle 9.47 / 9.60 vs 9.87 / 9.24,
# D third 10.1 / 10.7 vs 10.4 / 10.7 (two pairs each: equal within the noise), and with 1-3 input
# channels inside was faster: (64,1,28^2) k3 -> 32 1.78 vs 1.45, (32,3,32^2) k3 p1 -> 64 4.51 vs
# 3.64, (4,2,16^3) k3 p1 -> 64 2.81 vs 2.50. "auto": apart on the other instruction sets only.
_BIAS_APART = "auto"  # "auto", True, False (tests, A/B)


def _bias_apart_on() -> bool:
    """Whether the bias gradient is summed apart (``_BIAS_APART``; "auto": not on AVX-512)."""
    if _BIAS_APART == "auto":
        return not D.avx512()
    return bool(_BIAS_APART)


def _bias_apart(gy):
    """``gy``'s channel sums by the compiled kernel, or None (switched off, or no kernels: oneDNN
    or NumPy then sums)."""
    if not _bias_apart_on():
        return None
    from ._native_batchnorm import channel_sum
    return channel_sum(_c(gy))


# ----------------------------------------------------------------------------- few input channels
# oneDNN's weight-gradient kernels block the input channels by 8; with 1-3 of them most vector
# lanes idle. With so few channels the patches matrix (C K taps x output positions) is small, and
# the weight gradient is one batched matrix product over it. In-process A/B, one thread, loaded
# 2-core AMD EPYC (AVX2), 2026-12-06, CPU ms of oneDNN's weight_bias pass vs patches + matmul:
# (64,1,28^2) k3 -> 32 (MNIST conv1) 3.84 vs 0.98; (16,1,4096) k5 p2 -> 32 4.93 vs 1.52;
# (16,3,4096) k3 p1 -> 64 6.41 vs 3.19; (4,1,16^3) k3 p1 -> 32 1.31 vs 0.98; (4,2,16^3) -> 64
# 3.45 vs 2.57; (8,3,16^3) -> 96 15.2 vs 9.1; an earlier form of the product (per sample
# O x C K, 0.98 instead of 0.57 ms for the matmul of MNIST conv1) measured (64,1,28^2) k5 p2
# 9.32 vs 3.18, (16,2,64^2) k3 p1 -> 16 3.41 vs 2.44, (32,3,32^2) k3 p1 -> 64 4.10 vs 3.48, but
# strided (32,3,32^2) k4 s2 p1 -> 64 1.27 vs 1.47 (the DCGAN's first layer). Strided, with the
# product as now: (32,3,32^2) k4 s2 p1 -> 64 1.16 vs 1.25, (16,3,64^2) k3 s2 p1 -> 32 0.92 vs
# 1.03, but (32,2,32^2) k4 s2 p1 -> 64 2.20 vs 0.92 and (32,1,28^2) k3 s2 p1 -> 32 0.69 vs 0.32:
# strided convolutions only with 1-2 channels.
# (The forward was measured too and stays on oneDNN's convolution: 1.24 vs 1.12 ms on MNIST
# conv1, slower on every other shape above.)
_PATCH_MAX_CHANNELS = 3


def _patches_weight_grad_applies(x_shape, kernel, O, geom) -> bool:
    """Whether the weight gradient runs as one matrix product over the input's patches: 1-3
    spatial dims (on AVX-512: 1-d only, ``_PATCHES_AVX512``), one group, at most
    ``_PATCH_MAX_CHANNELS`` input channels (strided: at most 2), and a patches matrix no larger
    than the output gradient (``C K + 1 <= O`` rows per position)."""
    d = len(x_shape) - 2
    strided = any(s != 1 for s in geom.stride)
    if d > 1 and D.avx512():
        return False
    if d == 2 and x_shape[1] == 3 and O <= 48 and not strided and _bias_apart_on() and _native_kernels():
        return False  # oneDNN's kernel with the bias summed apart (_RGB_FEW_OUTPUTS)
    return (1 <= d <= 3 and geom.groups == 1 and x_shape[1] <= (2 if strided else _PATCH_MAX_CHANNELS)
            and x_shape[1] * math.prod(kernel) + 1 <= O)


# _PATCHES_AVX512: oneDNN's AVX-512 weight-gradient kernel (bias inside) beat the patches product
# in 2-d and 3-d. In-process A/B, 2-core AMD EPYC (Zen 4, AVX-512), 2026-12-07, layer fwd+bwd
# with bias, 2 threads, median ms, patches vs oneDNN: (64,1,28^2) k3 -> 32 (MNIST conv1) 1.80 vs
# 1.45, k5 p2 3.24 vs 2.51; (32,1,28^2) k3 s2 p1 0.88 vs 0.84; (16,2,64^2) k3 p1 -> 16 1.83 vs
# 1.62; (32,2,32^2) k4 s2 p1 -> 64 1.88 vs 1.38; (32,3,32^2) k3 p1 -> 64 4.18 vs 3.64; 3-d
# (4,1,16^3) k3 p1 -> 32 1.84 vs 1.36, (4,2,16^3) -> 64 3.56 vs 2.50, (8,3,16^3) -> 96 11.7 vs
# 8.7. 1-d kept the patches: (16,3,4096) k3 p1 -> 64 5.77 vs 6.08, (16,1,4096) k5 p2 -> 32 2.50
# vs 2.44.

# _RGB_FEW_OUTPUTS: with the bias gradient summed apart (_bias_apart), oneDNN's weight-gradient
# kernel beats the patches product for 2-d, 3 input channels and few outputs (the residual CNN's
# stem), not otherwise (1-d and 3-d not measured: they keep the patches). In-process, AMD EPYC, 1 thread CPU ms / 2 threads wall ms (the second on
# a loaded machine), k3 p1, patches vs oneDNN "weight" + channel sum: (32,3,32^2) -> 32
# 1.47 / 1.13 vs 1.24 / 0.89; -> 48 1.96 / 1.48 vs 1.96 / 1.26; -> 64 2.50 / 1.53 vs 2.82 / 1.60;
# (16,3,64^2) -> 64 4.96 / 2.79 vs 6.51 / 3.49; (32,2,32^2) -> 32 1.17 / 0.88 vs 2.48 / 1.60.


def _native_kernels() -> bool:
    from . import _native
    return _native.available()


def _patches(x, geom, kernel, ones):
    """``P (N, C K [+ 1], prod(out))``: ``P[n, c K + k, i] = x_pad[n, c, i stride + k dilation]``
    (k, i flattened in C order), and a last row of ones where ``ones`` (for the bias gradient)."""
    N, C = x.shape[:2]
    out = geom.out_size(x.shape[2:], kernel)
    if any(geom.pad_lo) or any(geom.pad_hi):
        x = np.pad(x, [(0, 0), (0, 0)] + list(zip(geom.pad_lo, geom.pad_hi)))
    T = math.prod(kernel)
    P = np.empty((N, C * T + int(ones)) + tuple(out), dtype=_F32)
    windows = [tuple(slice(k * dl, k * dl + s * (o - 1) + 1, s) for k, dl, s, o in zip(ks, geom.dilation, geom.stride, out))
               for ks in itertools.product(*(range(k) for k in kernel))]

    def fill(b):  # the samples b: C T strided copies (NumPy releases the GIL in them)
        for c in range(C):
            for t, window in enumerate(windows):
                P[(b, c * T + t)] = x[(b, c) + window]
        if ones:
            P[b, C * T] = 1.0
    # split over the batch on the CPU threads: single-threaded, building the residual CNN stem's
    # patches (32 x 27 x 1024) took 0.8 ms (cProfile) of its 1.7 ms weight-gradient pass at two
    # threads; split, the stem's fwd+bwd went 2.41 -> 2.16 ms (in-process, quiet)
    from ..ops._cpu_threads import over_batch
    over_batch(fill, N, P.size)
    return P.reshape(N, P.shape[1], -1)


def _patches_weight_grad(x, gy, geom, kernel, bias):
    """``gw[o, c K + k] = sum_n gy[n, o, :] . P[n, c K + k, :]`` (``_patches``): per sample a
    (C K x positions) @ (positions x O) product in one batched oneDNN matmul, then the sum over
    the batch; with ``bias`` the row of ones gives ``gb[o] = sum_{n, i} gy[n, o, i]`` as the last
    row. Returns ``gw`` or ``(gw, gb)`` as ``conv_weight_grad`` does, or None where oneDNN's
    matmul has only its reference loops for these operands (the convolution kernel then runs)."""
    from ._matmul import matmul
    N, O = gy.shape[:2]
    P = _patches(x, geom, kernel, bias)
    # computed transposed, P[n] gy[n]^T (C K x O): with the short side as M oneDNN's matmul ran
    # 0.57 ms instead of 0.98 for MNIST conv1 (one thread, loaded machine)
    per_sample = np.empty((N, P.shape[1], O), dtype=_F32)
    if not matmul(P, gy.reshape(N, O, -1), per_sample, trans_b=True):
        return None
    total = per_sample.sum(axis=0)
    gw = np.ascontiguousarray(total[:x.shape[1] * math.prod(kernel)].T).reshape((O, x.shape[1]) + tuple(kernel))
    return (gw, np.ascontiguousarray(total[-1])) if bias else gw


def conv_backward(x, gy, w, geom, need_x=True, bias=False):
    """The gradients of ``y = conv(x, w) (+ b)`` from one submission, or None where the two
    passes do not run as single 1-3 d oneDNN convolutions (4-d, batch parts, a weight gradient on
    the patches product or on stacked offsets): then ``conv_transpose`` and ``conv_weight_grad``
    run separately. Returns ``(gx or None, gw, gb or None)``; the output gradient is reordered
    into oneDNN's blocked layout once for both passes (``run_together``).

    Math: ``gx = conv^T(gy, w)``, ``gw[o, c, k] = sum_{n, i} gy[n, o, i] x_pad[n, c, i s + k d]``,
    ``gb[o] = sum_{n, i} gy[n, o, i]``. PyTorch: ``torch.ops.aten.convolution_backward``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.ops._conv_geometry import ConvGeometry
        >>> from avila_ml.cpu_accel._conv import conv_backward
        >>> g = ConvGeometry((1, 1), (1, 1), (1, 1), (1, 1), 1)
        >>> x, w = np.ones((2, 8, 5, 5), np.float32), np.ones((8, 8, 3, 3), np.float32)
        >>> out = conv_backward(x, np.ones((2, 8, 5, 5), np.float32), w, g, bias=True)
        >>> out is None or ([a.shape for a in out[:2]], float(out[2][0])) == (
        ...     [(2, 8, 5, 5), (8, 8, 3, 3)], 50.0)  # None: no oneDNN, or batch parts
        True
    """
    return _pair("conv", x, gy, w, geom, need_x, bias)


def conv_transpose_backward(u, gz, w, geom, need_u=True):
    """The gradients of ``z = conv^T(u, w)`` from one submission, or None (as ``conv_backward``):
    ``(gu or None, gw)`` with ``gu = conv(gz, w)`` and ``gw = corr(gz, u)``; ``gz`` is reordered
    once for both passes. PyTorch: ``torch.ops.aten.convolution_backward`` with
    ``transposed=True``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.ops._conv_geometry import ConvGeometry
        >>> from avila_ml.cpu_accel._conv import conv_transpose_backward
        >>> g = ConvGeometry((2, 2), (1, 1), (1, 1), (1, 1), 1)
        >>> u, w = np.ones((2, 16, 4, 4), np.float32), np.ones((16, 8, 4, 4), np.float32)
        >>> out = conv_transpose_backward(u, np.ones((2, 8, 8, 8), np.float32), w, g)
        >>> out is None or [a.shape for a in out] == [(2, 16, 4, 4), (16, 8, 4, 4)]
        True
    """
    out = _pair("transpose", gz, u, w, geom, need_u, False)
    return None if out is None else out[:2]


def _pair(which, x, gy, w, geom, need_data, bias):
    """``conv_backward`` (``which="conv"``: x, gy -> gx, gw, gb) and ``conv_transpose_backward``
    (``"transpose"``: the forward's input is gz in ``x``, its output u in ``gy`` -> gu, gw)."""
    lib = D.load()
    if (not _usable(lib, x, gy, w) or x.ndim not in (3, 4, 5) or _parts_wanted()
            or geom.out_size(x.shape[2:], w.shape[2:]) != tuple(gy.shape[2:])):
        return None
    G, kernel = geom.groups, tuple(w.shape[2:])
    w_shape = (gy.shape[1], x.shape[1] // G) + kernel
    if tuple(w.shape) != w_shape:  # (a transposed convolution's weight is its adjoint's convolution weight)
        return None
    if _patches_weight_grad_applies(x.shape, kernel, gy.shape[1], geom):
        return None
    D.quiet_blas()
    x, gy, w = _c(x), _c(gy), _c(w)
    gb = _bias_apart(gy) if bias and which == "conv" else None
    wkind = "weight_bias" if bias and gb is None else "weight"
    wplan = _direct(wkind, x.shape, w_shape, gy.shape, geom)
    if not wplan.jit and x.ndim == 5:
        return None  # 3-d without a JIT weight kernel: conv_weight_grad stacks the offsets
    gw = np.empty(w_shape, dtype=_F32)
    warrays = {"x": x, "w": gw.reshape(wplan.user["w"].shape), "y": gy}
    if wkind == "weight_bias":
        warrays["b"] = np.empty(gy.shape[1], dtype=_F32)
    jobs, gd = [], None
    if need_data:
        if which == "conv":  # gx = conv^T(gy, w)
            gd = np.empty(x.shape, dtype=_F32)
            plan = _direct("transpose", x.shape, w_shape, gy.shape, geom)
            jobs.append((plan, {"x": gd, "w": w.reshape(plan.user["w"].shape), "y": gy}))
        else:  # gu = conv(gz, w)
            gd = np.empty(gy.shape, dtype=_F32)
            plan = _direct("forward", x.shape, tuple(w.shape), gy.shape, geom)
            jobs.append((plan, {"x": x, "w": w.reshape(plan.user["w"].shape), "y": gd}))
    jobs.append((wplan, warrays))
    run_together(jobs)
    return gd, gw, (gb if gb is not None else warrays.get("b"))


def _weight_stacking(geom, x_shape, kernel, O, m):
    """The first stacking, cheapest first, whose weight-gradient plan is a JIT kernel: depth ``m``
    with the real channels, depth ``m`` with channels padded to 16, then one axis deeper (down to
    a 2-d inner convolution); on AVX-512 every unpadded depth before the padded ones
    (:func:`_deeper_before_padding`); the last candidate when none is. Padding costs up to 16 / (C K)
    times the work (measured on the Conv4d example's layers, AVX2: unpadded 6.3 ms vs padded
    29 ms for 3 stacked channels, 6.5 vs 12 ms for 36), so it is only taken where oneDNN needs it."""
    d = len(x_shape) - 2
    st = None
    depths = range(m, d - 1)
    # on AVX-512 every unpadded stacking first, the deeper ones included, then the padded ones;
    # elsewhere each depth unpadded, then padded, before the next depth
    order = ([(k, False) for k in depths] + [(k, True) for k in depths] if _deeper_before_padding()
             else [(k, a) for k in depths for a in (False, True)])
    for depth, align in order:
        cand = _Stacking(geom, x_shape, kernel, O, depth, align=align)
        if align and cand.cgp == cand.real:
            continue  # the same stacking as the unpadded one
        st = cand
        if st.weight_plan().jit:
            return st
    return st


DEEPER_BEFORE_PADDING = "auto"  # "auto" (on AVX-512), True, False (tests, A/B)


def _deeper_before_padding() -> bool:
    """Whether :func:`_weight_stacking` takes a deeper unpadded stacking (one more kernel axis
    in channels: a 2-d inner convolution for Conv4d) before padding the channels of a shallower
    one to oneDNN's block. On AVX-512 the padded 3-d weight kernel does 16 / (C K_t) times the
    work; in-process A/B, 2-core AMD EPYC (Zen 4, AVX-512), 2026-12-07, Conv4d fwd+bwd median /
    min of 4 rounds, padded 3-d vs unpadded 2-d weight gradient: (2,4,16^4) -> 8 22.2 / 21.6 vs
    19.8 / 19.0 ms (peak 10.5 vs 11.8 MiB), (1,2,32^4) -> 4 124.9 / 124.3 vs 75.2 / 71.3 ms
    (38.0 MiB both); the Conv4d example's layers take an unpadded 3-d kernel either way. Not
    measured on AVX2, which keeps the order it was measured with."""
    if DEEPER_BEFORE_PADDING == "auto":
        return D.avx512()
    return bool(DEEPER_BEFORE_PADDING)


# ----------------------------------------------------------------------------- stacked offsets
_MIN_BLOCK_BYTES = 4 << 20
# Blocks of a stacked convolution with fewer multiply-adds than this run one after the other on
# the calling thread, each oneDNN call and copy on the whole OpenMP team, instead of on the
# worker threads (``_Stacking._each``). In-process A/B, 2-core AMD EPYC (Zen 4, AVX-512),
# 2026-12-07, fwd+bwd median of 8 rounds, workers vs the team for every block: the Conv4d
# example's layers (blocks of 8.4M and 3.4M) 4.55 vs 3.75 ms and 12.21 vs 11.65 ms; with
# 21.2M-42.5M per block, (2,4,16^4) -> 8 19.1 vs 18.2 ms (another pair 18.4 / 18.4) and
# (1,2,32^4) -> 4 69.8 vs 74.6 ms (input and weight gradients 26.0 / 25.9 vs 26.7 / 27.1),
# so the larger blocks keep the workers
_WORKER_MIN_MACS = 16_000_000
_MIN_TRANSPOSE_BLOCK_BYTES = 2 << 20


def _runs(S, To, K, s, dl, lo):
    """Per kernel offset ``k`` along one axis: ``(i0, i1, t0)``, the output positions whose input
    position ``i * s + k * dl - lo`` lies inside ``[0, S)`` and the input position of ``i0``;
    None when there is none."""
    out = []
    for k in range(K):
        i0 = max(0, -(-(lo - k * dl) // s))
        i1 = min(To, (S - 1 + lo - k * dl) // s + 1)
        out.append((i0, i1, i0 * s + k * dl - lo) if i1 > i0 else None)
    return out


def _split(n, k):
    """``[0, n)`` cut into ``k`` contiguous runs whose lengths differ by at most one."""
    return [(j * n // k, (j + 1) * n // k) for j in range(k)]


def _blocks(N, To, row_bytes, budget, threads=1):
    """Blocks ``(n0, n1, i0, i1)`` of at most about ``budget`` bytes (``row_bytes`` per position
    of the first stacked axis): several whole samples, or a run of positions of one sample. They
    bound the stacked copies to a fraction of the result, whatever the volume. Blocks of equal
    size (within one sample or position), and for ``threads`` workers a multiple of ``threads``
    of them where there are several: the workers finish together (the Conv4d example's first
    layer had blocks of 6, 6, 6, 6, 6 and 2 samples: 18 against 14 samples on its 2 threads)."""
    per = max(1, budget // max(1, row_bytes))
    if per >= To:
        k = -(-N // max(1, per // To))
        if threads > 1 and k > 1:
            k = min(N, -(-k // threads) * threads)
        return [(a, b, 0, To) for a, b in _split(N, k)]
    k = -(-To // per)  # runs per sample
    while threads > 1 and (N * k) % threads and k < To:
        k += 1
    return [(n, n + 1, a, b) for n in range(N) for a, b in _split(To, k)]


def _budget(*result_bytes, minimum=None):
    """Bytes of stacked copies per block: a quarter of the results, at least 4 MiB, but never
    more than the results themselves, so the copies of a small volume stay small (a
    checkpointed stack of small Conv4d blocks keeps its 3x lower peak). Fewer, larger calls:
    the Conv4d example's first layer took 45 ms fwd+bwd with 2 MiB blocks, 67 ms with 1 MiB;
    each oneDNN call costs ~0.1 ms whatever its size (a 2-d weight gradient of 16 16x16 images
    0.42 ms, of 32 0.74 ms). In-process A/B, fwd+bwd, 2 vs 4 MiB, loaded 2-core AMD EPYC, min
    of 6, 1 thread / 2 threads: (2,4,16^4)->8 50.1 -> 47.3 / 35.3 -> 29.3 ms, the example's
    layers 13.1 -> 12.0 / 11.6 -> 10.3 and 37.9 -> 35.9 / 31.0 -> 28.0 ms; (1,2,32^4)->4 is
    unchanged (a quarter of its results is larger). The input gradient keeps 2 MiB
    (``_MIN_TRANSPOSE_BLOCK_BYTES``): its blocks wait for the scatter in order, up to two per
    thread, and with 4 MiB its extra memory on (2,4,16^4)->8 went from 5.5 to 9.2 MiB (the bound
    of test_conv.py, 2 x output + input, is 10 MiB), for 0.6 ms of 14 single-threaded."""
    total = sum(result_bytes)
    return max(min(_MIN_BLOCK_BYTES if minimum is None else minimum, total), total // 4)


def _each_block(fn, blocks):
    """``fn(block, serial)`` over ``blocks``, results in block order. Several blocks run on
    the worker threads (``_workers``: each block's copies and its single-threaded oneDNN
    call together, so the NumPy copies run in parallel too); one block runs here, its
    convolution cut into batch parts by ``_run3``."""
    if len(blocks) > 1 and _workers.threads() > 1 and _workers.start(D.load()):
        return _workers.imap(lambda blk: fn(blk, True), blocks)
    return (fn(blk, False) for blk in blocks)


class _OutputStacking:
    """The forward of a 4-d convolution as one 3-d convolution whose OUTPUT channels stack the
    ``K_t`` kernel-time offsets, then a shift-and-add over time:

        Z[(n, f), k * O + o] = conv3d(x[n, :, f], w[:, :, k])[o]        for every input frame f
        y[n, o, i] = sum_k Z[(n, i * s_t + k * d_t - lo_t), k * O + o]   (frames outside x: zero)

    Where ``O`` is small, oneDNN's AVX2 forward kernel is slow on the input-stacked form
    (``_Stacking``: ``C K_t`` input channels, one block of 8 output channels, little register
    reuse); with ``K_t O`` output channels it runs up to twice as fast (figures and the rule in
    ``_stack_outputs``; a time-major form, three conv3d calls of ``C`` channels summed, was
    slower than both: 45.7 ms against 37.6 input-stacked for (2,4,16^4)->8, wall time, loaded
    machine).

    Work split: the output frames (samples x time, in order) are cut into one contiguous part
    per worker thread (``_parts``), and each part walks its input frames in chunks of about
    ``_budget`` bytes, adding each chunk's ``Z`` into the part's outputs. So ``Z`` of a frame is
    computed once per part that reads it: only frames read across a cut inside a sample are
    computed twice. (Blocks of a few output frames each recomputed their ``K_t - 1`` halo frames:
    44 frame convolutions instead of 32 for (2,4,16^4)->8, 3.7 ms of 15.6 single-threaded.)
    A part's outputs are summed in place in ``y``, over ``k`` in increasing order whatever the
    chunks, so the result does not depend on the cut."""

    def __init__(self, geom, x_shape, kernel, O):
        self.geom, self.O = geom, O
        self.avx2 = _prefer_avx2(O, 1)  # (ungrouped: _stack_outputs)
        self.N, self.C, self.T = x_shape[:3]
        self.rest, self.Kt, self.Krest = tuple(x_shape[3:]), kernel[0], tuple(kernel[1:])
        o = geom.out_size(x_shape[2:], kernel)
        self.To, self.orest = o[0], tuple(o[1:])
        self.s, self.d, self.lo = geom.stride[0], geom.dilation[0], geom.pad_lo[0]
        self.inner = _geom(geom, slice(1, None))
        # bytes per input frame of a chunk: its copy and its share of Z, twice (oneDNN writes Z
        # in its blocked layout, then reorders it into ours)
        self.row_bytes = 4 * (self.C * math.prod(self.rest) + 2 * self.Kt * O * math.prod(self.orest))

    def _frames(self, i0, i1):
        """The input frames ``[f0, f1)`` that output frames ``[i0, i1)`` read."""
        return (max(0, i0 * self.s - self.lo),
                min(self.T, (i1 - 1) * self.s - self.lo + (self.Kt - 1) * self.d + 1))

    def forward(self, x, w, b=None):
        O, Kt = self.O, self.Kt
        wz = np.ascontiguousarray(np.moveaxis(w, 2, 0)).reshape((Kt * O, self.C) + self.Krest)
        y = np.empty((self.N, O, self.To) + self.orest, dtype=_F32)
        budget = _budget(y.nbytes, x.nbytes)
        parallel = _workers.threads() > 1

        def one(part, serial):
            for seg in part:
                self._segment(x, wz, b, y, seg, budget, serial)
        for _ in _each_block(one, _parts(self.N, self.To, _workers.threads() if parallel else 1)):
            pass
        return y

    def _segment(self, x, wz, b, y, seg, budget, serial):
        """Output frames ``[i0, i1)`` of samples ``[n0, n1)``, their input frames in chunks,
        summed in place in ``y`` from zero or the bias ``b`` (through a time-major view: its
        inner runs, the spatial frames, are contiguous)."""
        O, Kt, s, d, lo = self.O, self.Kt, self.s, self.d, self.lo
        n0, n1, i0, i1 = seg
        f0, f1 = self._frames(i0, i1)
        acc = np.moveaxis(y[n0:n1, :, i0:i1], 1, 2)  # (samples, frames, O, *orest), a view of y
        acc[...] = 0 if b is None else b.reshape((O,) + (1,) * len(self.orest))
        for sa, sb, ja, jb in (_blocks(n1 - n0, f1 - f0, self.row_bytes, budget) if f1 > f0 else ()):
            fa, fb, nb = f0 + ja, f0 + jb, sb - sa
            frames = np.ascontiguousarray(np.moveaxis(x[n0 + sa:n0 + sb, :, fa:fb], 2, 1))
            frames = frames.reshape((nb * (fb - fa), self.C) + self.rest)
            z = np.empty((nb * (fb - fa), Kt * O) + self.orest, dtype=_F32)
            _run3("forward", frames.shape, wz.shape, z.shape, 1, self.inner, {"x": frames, "w": wz, "y": z}, serial,
                  avx2=self.avx2)
            z = z.reshape((nb, fb - fa, Kt, O) + self.orest)
            for k in range(Kt):
                # outputs i of the segment whose frame i s + k d - lo lies in the chunk [fa, fb)
                ia = max(i0, -(-(fa + lo - k * d) // s))
                ib = min(i1, (fb - 1 + lo - k * d) // s + 1)
                if ib > ia:
                    f = ia * s - lo + k * d - fa
                    acc[sa:sb, ia - i0:ib - i0] += z[:, f:f + (ib - ia - 1) * s + 1:s, k]


def _parts(N, To, P):
    """The ``N * To`` output frames (sample-major) cut into ``P`` contiguous parts of equal size,
    each a list of segments ``(n0, n1, i0, i1)``: whole samples, or a run of one sample's frames."""
    total, parts = N * To, []
    P = min(P, total)
    for p in range(P):
        a, b = p * total // P, (p + 1) * total // P
        segs = []
        while a < b:
            n, i = divmod(a, To)
            if i == 0 and b - a >= To:
                m = (b - a) // To
                segs.append((n, n + m, 0, To))
                a += m * To
            else:
                e = min(b, (n + 1) * To)
                segs.append((n, n + 1, i, e - n * To))
                a = e
        parts.append(segs)
    return parts


_MAPS: dict = {}  # _Stacking's offset maps per (geometry, block), oldest dropped first
_MAPS_SIZE = 1024
_MAPS_LOCK = threading.Lock()  # blocks build their maps on several worker threads


class _Stacking:
    """A d-dim convolution as a (d - m)-dim one: the kernel offsets of the leading ``m`` spatial
    axes stacked into channels,

        stacked[(n, i_1..i_m), c * P + k] = x_pad[n, c, i_a * s_a + k_a * d_a (a <= m), ...]

    with ``P = K_1 ... K_m`` and ``k`` the flat index of ``(k_1..k_m)``; the weights become
    ``w[o, c * P + k, ...] = w[o, c, k_1..k_m, ...]`` (a reshape). The (d - m)-dim convolution
    runs over blocks of positions of the first stacked axis (``_blocks``)."""

    def __init__(self, geom, x_shape, kernel, O, m, align=False):
        self.geom, self.m, self.O = geom, m, O
        self.N, C = x_shape[:2]
        S = tuple(x_shape[2:])
        self.S, self.rest, self.K, self.Krest = S[:m], S[m:], tuple(kernel[:m]), tuple(kernel[m:])
        o = geom.out_size(S, kernel)
        self.To, self.orest = o[:m], o[m:]
        self.G = G = geom.groups
        self.avx2 = len(x_shape) == 6 and _prefer_avx2(O, G)  # 4-d only: where it was measured
        self.P = math.prod(self.K)
        self.cg = C // G
        self.real = self.cg * self.P
        # oneDNN's 3-d weight-gradient JIT kernel wants blocked channels (module docstring); the
        # forward and the input gradient do not, and padding would multiply their work by up to
        # 16 / (C K_t) (5.3x for the Conv4d example's 1-channel first layer), so only the weight
        # gradient asks for it (``align``); 2-d inner convolutions never need it
        pad = align and G == 1 and len(self.rest) == 3
        self.cgp = -(-self.real // _STACK_ALIGN) * _STACK_ALIGN if pad else self.real
        self.inner = _geom(geom, slice(m, None))
        self.runs = [_runs(S[a], o[a], kernel[a], geom.stride[a], geom.dilation[a], geom.pad_lo[a]) for a in range(m)]
        self.row_bytes = 2 * 4 * math.prod(self.To[1:]) * (G * self.cgp * math.prod(self.rest)
                                                            + O * math.prod(self.orest))

    def blocks(self, *result_bytes, minimum=None):
        return _blocks(self.N, self.To[0], self.row_bytes, _budget(*result_bytes, minimum=minimum),
                       _workers.threads())

    def _frames(self, blk):
        n0, n1, i0, i1 = blk
        return (n1 - n0, i1 - i0) + self.To[1:]

    def shapes(self, blk):
        """(stacked input, stacked weight, stacked output) shapes of the inner convolution."""
        f = math.prod(self._frames(blk))
        return ((f, self.G * self.cgp) + self.rest, (self.O, self.cgp) + self.Krest, (f, self.O) + self.orest)

    def weight_plan(self):
        xs, ws, ys = self.shapes(self.blocks(0)[0])
        return _plan(D.load(), "weight", xs, _wshape(ws, self.G), ys, self.inner, avx2=self.avx2)

    def _pairs(self, blk):
        """Per stacked kernel offset: (flat k, index into the stacked block, index into the
        (n, S_1..S_m, G, cg, ...) view of the input) -- the block's slice of the offset map.
        Geometry only, so kept (``_MAPS``): building it is ~50 us of Python per block."""
        return self._maps(blk)[0]

    def _maps(self, blk):
        key = (self.geom, self.S, self.K, self.real, self.cgp, self.To, blk)
        maps = _MAPS.get(key)
        if maps is None:
            pairs = self._build_pairs(blk)
            maps = (pairs, self._build_zeros(blk, pairs))
            with _MAPS_LOCK:
                _MAPS[key] = maps
                while len(_MAPS) > _MAPS_SIZE:
                    _MAPS.pop(next(iter(_MAPS)))
        return maps

    def _build_pairs(self, blk):
        n0, n1, i0, i1 = blk
        out = []
        for kidx in itertools.product(*[range(k) for k in self.K]):
            dst, src = [slice(None)], [slice(n0, n1)]
            for a, k in enumerate(kidx):
                r = self.runs[a][k]
                if r is None:
                    break
                lo, hi, t0 = r
                off = 0
                if a == 0:
                    lo2, hi2 = max(lo, i0), min(hi, i1)
                    if hi2 <= lo2:
                        break
                    t0 += (lo2 - lo) * self.geom.stride[0]
                    lo, hi, off = lo2, hi2, i0
                s = self.geom.stride[a]
                dst.append(slice(lo - off, hi - off))
                src.append(slice(t0, t0 + (hi - lo - 1) * s + 1, s))
            else:
                flat = int(np.ravel_multi_index(kidx, self.K)) if self.K else 0
                out.append((flat, tuple(dst), tuple(src)))
        return out

    def _build_zeros(self, blk, pairs):
        """Indices into the stacked block of everything no offset copies into: the padding
        frames of each offset (the slabs of the block outside its copied box, along each
        stacked axis), the offsets that read no frame at all, and the channels padded to 16.
        Zeroing only these instead of the whole block saved ~1.5 ms of 19 in the (2,4,16^4)->8
        weight gradient (single thread)."""
        fr = self._frames(blk)
        out = []
        done = set()
        for flat, dst, _ in pairs:
            done.add(flat)
            ch = (slice(None), slice(flat, self.real, self.P))
            for a, sl in enumerate(dst[1:]):
                lead = (slice(None),) * (1 + a)
                if sl.start > 0:
                    out.append(lead + (slice(0, sl.start),) + (slice(None),) * (self.m - 1 - a) + ch)
                if sl.stop < fr[1 + a]:
                    out.append(lead + (slice(sl.stop, fr[1 + a]),) + (slice(None),) * (self.m - 1 - a) + ch)
        for flat in range(self.P):
            if flat not in done:
                out.append((slice(None),) * (1 + self.m) + (slice(None), slice(flat, self.real, self.P)))
        if self.cgp > self.real:
            out.append((slice(None),) * (1 + self.m) + (slice(None), slice(self.real, self.cgp)))
        return out

    def _channels_last_view(self, a):
        """``a`` (N, G * cg, *S) as (N, S_1..S_m, G, cg, *rest) -- a view."""
        m = self.m
        v = a.reshape((a.shape[0], self.G, self.cg) + a.shape[2:])
        nr = len(self.rest)
        return v.transpose((0,) + tuple(range(3, 3 + m)) + (1, 2) + tuple(range(3 + m, 3 + m + nr)))

    def stack(self, x, blk, serial=False):
        """The stacked input of block ``blk``, a new C-contiguous array (``serial``: on a worker
        thread, which must not start an OpenMP team)."""
        fr = self._frames(blk)
        st = np.empty(fr + (self.G, self.cgp) + self.rest, dtype=_F32)
        if self.m == 1 and self.G == 1 and _native_stacking.stack_blocked(  # one row copy each
                x, st, self._own_geometry(x, blk, 0, True), True, 1 if serial else None):
            return st.reshape(self.shapes(blk)[0])
        xt = self._channels_last_view(x)
        pairs, zeros = self._maps(blk)
        for idx in zeros:
            st[idx] = 0
        for flat, dst, src in pairs:
            st[dst + (slice(None), slice(flat, self.real, self.P))] = xt[src]
        return st.reshape(self.shapes(blk)[0])

    def _weight(self, w):
        ws = w.reshape((self.O, self.real) + self.Krest)
        if self.real == self.cgp:
            return ws
        out = np.zeros((self.O, self.cgp) + self.Krest, dtype=_F32)
        out[:, :self.real] = ws
        return out

    def _frames_of(self, a, blk):
        """Block ``blk`` of ``a`` (N, O, To_1..To_m, *orest) as (frames, O, *orest), a copy."""
        n0, n1, i0, i1 = blk
        m = self.m
        v = a[n0:n1, :, i0:i1].transpose((0,) + tuple(range(2, 2 + m)) + (1,) + tuple(range(2 + m, a.ndim)))
        return np.ascontiguousarray(v).reshape((-1, a.shape[1]) + a.shape[2 + m:])

    def _each(self, fn, blocks):
        """``fn(block, serial)`` over ``blocks``: on the worker threads (:func:`_each_block`),
        or, for blocks of less than _WORKER_MIN_MACS multiply-adds each, here, one after the
        other, each call on the whole OpenMP team (its Python between the calls then runs once,
        not on two threads sharing the GIL)."""
        if not self._on_workers(blocks):
            return (fn(blk, False) for blk in blocks)
        return _each_block(fn, blocks)

    def _on_workers(self, blocks) -> bool:
        """Whether :meth:`_each` hands ``blocks`` to the worker threads: several blocks of at
        least _WORKER_MIN_MACS each, or several blocks at all where the user's OpenMP policy
        spins (``_parts_wanted``: every call goes to the workers there, as measured for it); a
        single block runs here, its call cut by ``_run3``."""
        if len(blocks) < 2:
            return False
        return _parts_wanted() or self._block_macs(blocks[0]) >= _WORKER_MIN_MACS

    def _block_macs(self, blk) -> int:
        """Multiply-adds of the inner convolution of block ``blk``."""
        _, ws, ys = self.shapes(blk)
        return ys[0] * ws[0] * ws[1] * math.prod(ws[2:]) * math.prod(ys[2:])

    # -- the stacked input and the frames in the inner convolution's own layout
    def _own_plan(self, kind, blk, serial):
        """The inner convolution's plan for block ``blk`` where its operands can be built
        straight in the plan's own layout (``_native_stacking``: one stacked axis, ungrouped,
        the compiled kernel present, one call rather than ``_run3``'s batch parts); else None.
        The figures (in-process A/B, Conv4d example's layers) are in ``_native_stacking``'s
        docstring."""
        if (self.m not in (1, 2) or (self.m == 2 and kind != "weight") or self.G != 1
                or (not serial and _parts_wanted()) or not _native_stacking.available()):
            return None
        xs, ws, ys = self.shapes(blk)
        return _plan(D.load(), kind, xs, ws, ys, self.inner, serial, self.avx2)

    def _own(self, plan, role, a, blk, serial, stacked):
        """Block ``blk`` of ``a`` in ``plan``'s layout of ``role`` -- the stacked input
        (``stacked``) or the frames of an (N, O, To_1..To_m, *orest) output gradient -- as a new
        buffer, or None where that layout is not channel-blocked."""
        B = plan.blocks.get(role)
        if B is None:
            return None
        buf = D.aligned_empty(plan.inner_nbytes(role), np.uint8)
        threads = 1 if serial else None
        if stacked and self.m == 2:
            ok = self._stack_two_axes(a, buf, blk, B, threads)
        else:
            ok = _native_stacking.stack_blocked(a, buf, self._own_geometry(a, blk, B, stacked), True, threads)
        return buf if ok else None

    def _stack_two_axes(self, x, buf, blk, B, threads) -> bool:
        """The stacked input of block ``blk`` with two stacked axes (t, then x) in the blocked
        layout ``B``, by the one-axis kernel twice: t into a plain array (frames (n, i_t),
        channels c K_t + k_t, rest X Y Z), then x from it into ``buf`` (frames (n, i_t, i_x),
        channels (c K_t + k_t) K_x + k_x = c P + k, the order of :meth:`stack`). In-process A/B,
        2-core AMD EPYC (Zen 4, AVX-512), 2026-12-07, Conv4d fwd+bwd median of 4 rounds, NumPy's
        copies plus oneDNN's reorder vs this: (2,4,16^4) -> 8 19.8 vs 18.3 ms (peak 11.3 vs
        10.5 MiB), (1,2,32^4) -> 4 72.2 vs 68.6 ms (36.5 vs 36.0 MiB)."""
        n0, n1, i0, i1 = blk
        g = self.geom
        C, (T, X), rest = self.cg, self.S, math.prod(self.rest)
        (Kt, Kx), To_x = self.K, self.To[1]
        frames = (n1 - n0) * (i1 - i0)
        mid = np.empty((frames, C * Kt, X * rest), dtype=_F32)
        first = (C, T, X * rest, Kt, g.stride[0], g.dilation[0], g.pad_lo[0], C * Kt, n0, n1 - n0, i0, i1 - i0,
                 0, C * Kt)
        if not _native_stacking.stack_blocked(x, mid, first, True, threads):
            return False
        second = (C * Kt, X, rest, Kx, g.stride[1], g.dilation[1], g.pad_lo[1], self.real, 0, frames, 0, To_x,
                  B, -(-self.cgp // B))
        return _native_stacking.stack_blocked(mid, buf, second, True, threads)

    def _own_geometry(self, a, blk, B, stacked):
        """``kernels/stacking.c``'s geometry of block ``blk``: the stacked input of ``a`` (N, C,
        T, *rest; one stacked axis), or the frames of ``a`` (N, O, To_1..To_m, *orest: the m
        stacked axes read as one, a block spanning all of the later ones); ``B = 0``: the plain
        stacked array."""
        n0, n1, i0, i1 = blk
        if stacked:
            g = self.geom
            R = math.prod(a.shape[3:])
            return (self.cg, self.S[0], R, self.P, g.stride[0], g.dilation[0], g.pad_lo[0], self.real,
                    n0, n1 - n0, i0, i1 - i0, B, -(-self.cgp // B) if B else self.cgp)
        O, m = a.shape[1], self.m
        later = math.prod(a.shape[3:2 + m])  # positions of the stacked axes after the first
        R = math.prod(a.shape[2 + m:])
        return (O, a.shape[2] * later, R, 1, 1, 1, 0, O, n0, n1 - n0, i0 * later, (i1 - i0) * later, B, -(-O // B))

    def _run(self, kind, blk, serial, arrays, own):
        xs, ws, ys = self.shapes(blk)
        _run3(kind, xs, ws, ys, self.G, self.inner, arrays, serial, own, avx2=self.avx2)

    def forward(self, x, w, b=None):
        ws = self._weight(w)
        y = np.empty((self.N, self.O) + self.To + self.orest, dtype=_F32)
        m = self.m
        kind = "forward" if b is None else "forward_bias"

        def one(blk, serial):  # writes its own region of y
            xs, _, ys = self.shapes(blk)
            plan = self._own_plan(kind, blk, serial)
            own = {}
            if plan is not None:
                st = self._own(plan, "x", x, blk, serial, True)
                if st is not None:
                    own["x"] = st
                if plan.blocks.get("y") is not None:
                    own["y"] = D.aligned_empty(plan.inner_nbytes("y"), np.uint8)
            arrays = {"w": ws} if b is None else {"w": ws, "b": b}
            if "x" not in own:
                arrays["x"] = self.stack(x, blk, serial)
            if "y" not in own:
                arrays["y"] = np.empty(ys, dtype=_F32)
            self._run(kind, blk, serial, arrays, own)
            n0, n1, i0, i1 = blk
            if "y" in own:  # the frames written straight into y
                B = plan.blocks["y"]
                if _native_stacking.stack_blocked(y, own["y"], self._own_geometry(y, blk, B, False), False,
                                                  1 if serial else None):
                    return
                # (the kernels switched off meanwhile) NumPy's reading of the blocked layout
                F, R, nb = ys[0], math.prod(self.orest), -(-self.O // B)
                y3 = own["y"].view(_F32)[:F * nb * R * B].reshape(F, nb, R, B).transpose(0, 1, 3, 2)
                y3 = y3.reshape(F, nb * B, R)[:, :self.O].reshape(self._frames(blk) + (self.O,) + self.orest)
            else:
                y3 = arrays["y"].reshape(self._frames(blk) + (self.O,) + self.orest)
            y[n0:n1, :, i0:i1] = y3.transpose((0, m + 1) + tuple(range(1, m + 1)) + tuple(range(m + 2, y3.ndim)))
        for _ in self._each(one, self.blocks(y.nbytes, x.nbytes)):
            pass
        return y

    def transpose(self, gy, w):
        ws = self._weight(w)
        gx = np.zeros((self.N, self.G * self.cg) + self.S + self.rest, dtype=_F32)
        gxt = self._channels_last_view(gx)

        def one(blk, serial):
            xs, _, ys = self.shapes(blk)
            plan = self._own_plan("transpose", blk, serial)
            own = {}
            if plan is not None:
                gyo = self._own(plan, "y", gy, blk, serial, False)
                if gyo is not None:
                    own["y"] = gyo
                if plan.blocks.get("x") is not None:  # left in the blocked layout for unstack_add
                    own["x"] = D.aligned_empty(plan.inner_nbytes("x"), np.uint8)
            arrays = {"w": ws}
            if "y" not in own:
                arrays["y"] = self._frames_of(gy, blk)
            if "x" not in own:
                arrays["x"] = np.empty(xs, dtype=_F32)
            self._run("transpose", blk, serial, arrays, own)
            if "x" in own:
                return blk, (own["x"], plan.blocks["x"])
            return blk, arrays["x"].reshape(self._frames(blk) + (self.G, self.cgp) + self.rest)
        # neighbouring blocks scatter onto shared input frames: added here, in block order
        blocks = self.blocks(gx.nbytes, gy.nbytes, minimum=_MIN_TRANSPOSE_BLOCK_BYTES)
        workers = self._on_workers(blocks) and _workers.threads() > 1
        for blk, gst in self._each(one, blocks):
            if isinstance(gst, tuple):  # the stacked gradient in oneDNN's blocked layout
                buf, B = gst
                # one thread while the workers compute the next blocks (the NumPy adds were too)
                if _native_stacking.unstack_add(gx, buf, self._own_geometry(gx, blk, B, True),
                                                1 if workers else None):
                    continue
                F, R, nb = math.prod(self._frames(blk)), math.prod(self.rest), -(-self.cgp // B)
                gst = buf.view(_F32)[:F * nb * R * B].reshape(F, nb, R, B).transpose(0, 1, 3, 2)
                gst = gst.reshape(F, nb * B, R)[:, :self.cgp].reshape(self._frames(blk) + (self.G, self.cgp)
                                                                      + self.rest)
            for flat, dst, src in self._pairs(blk):
                # one offset maps distinct stacked positions to distinct input positions: no overlap
                gxt[src] += gst[dst + (slice(None), slice(flat, self.real, self.P))]
        return gx

    def weight_grad(self, x, gy):
        def one(blk, serial):
            xs, wsh, ys = self.shapes(blk)
            plan = self._own_plan("weight", blk, serial)
            own = {}
            if plan is not None:
                for role, a, stacked in (("x", x, True), ("y", gy, False)):
                    buf = self._own(plan, role, a, blk, serial, stacked)
                    if buf is not None:
                        own[role] = buf
            part = np.empty(wsh, dtype=_F32)
            arrays = {"w": part}
            if "x" not in own:
                arrays["x"] = self.stack(x, blk, serial)
            if "y" not in own:
                arrays["y"] = self._frames_of(gy, blk)
            self._run("weight", blk, serial, arrays, own)
            return part
        gws = None
        for part in self._each(one, self.blocks(x.nbytes, gy.nbytes)):  # summed in block order
            if gws is None:
                gws = part
            else:
                gws += part
        return np.ascontiguousarray(gws[:, :self.real]).reshape((self.O, self.cg) + self.K + self.Krest)
