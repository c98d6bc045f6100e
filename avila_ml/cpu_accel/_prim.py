"""The machinery every oneDNN primitive of ``cpu_accel`` shares: owned primitive and memory
descriptors (destroyed with their Python objects), the primitive attribute with a user-owned
scratchpad, and execution over NumPy buffers that are kept alive until the stream has finished.

Every buffer oneDNN touches, scratchpads included, is a NumPy allocation, so the memory
benchmarks count it.
"""
from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict

import numpy as np

from . import _dnnl as D
from . import _native

__all__ = ["Executor", "FlatPlan", "PlanCache", "impl_name", "one_omp_thread", "_Desc", "_Prim", "_attr", "_strides"]


def _strides(shape):
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= n
    return tuple(reversed(st))


# A reorder that moves at most this many bytes runs on the calling thread alone (``_Prim.serial``):
# waking oneDNN's passively waiting OpenMP team costs more than the copy. Measured in-process on a
# 2-core AMD EPYC (Zen 4, AVX-512, a virtual machine), 2026-12-07: the weight reorders of a small
# conv (32x1x3x3, 288 floats) took 45-50 us each at two threads (oneDNN's verbose times; PyTorch's
# spinning team: 2-4 us), and a tiny Conv2d forward + backward (1,1,6^2) -> 16 took 277 us at two
# threads against 148 us with OMP_NUM_THREADS=1; with the flag those reorders took 1-2 us (verbose).
# The bound is an estimate, not a measured crossover: one thread wins while the copy at one core
# (~10 GB/s assumed) takes less than twice a wake-up (15-50 us on the two EPYCs measured), i.e.
# below roughly 300 KB-1 MB; 256 KiB stays under it.
SERIAL_REORDER_BYTES = 256 << 10


class _Prim:
    """A primitive, its descriptor and its scratchpad size; destroyed with the Python object.
    ``serial``: executed on the calling thread alone (set by the owner; small reorders)."""

    serial = False

    def __init__(self, lib, pd):
        self.lib, self.pd = lib, pd
        self.prim = ctypes.c_void_p()
        lib.call("dnnl_primitive_create", ctypes.byref(self.prim), pd)
        sp = lib.fn("dnnl_primitive_desc_query_md")(pd, D.QUERY_SCRATCHPAD_MD, 0)
        self.scratch = int(lib.fn("dnnl_memory_desc_get_size")(sp)) if sp else 0

    def md(self, query):
        return self.lib.fn("dnnl_primitive_desc_query_md")(self.pd, query, 0)

    def __del__(self):
        fn = getattr(self.lib, "fn", None)
        if fn is None:
            return
        if self.prim:
            fn("dnnl_primitive_destroy")(self.prim)
        if self.pd:
            fn("dnnl_primitive_desc_destroy")(self.pd)


class _Desc:
    """An owned memory descriptor (destroyed with the Python object): plain C order, oneDNN's
    choice (``any_format``), or a clone of a queried one (which lives only as long as its owner)."""

    def __init__(self, lib, shape, any_format=False, clone_of=None, dtype=None):
        self.lib = lib
        self.shape = tuple(int(n) for n in shape)
        self.h = ctypes.c_void_p()
        nd = len(self.shape)
        dt = D.F32 if dtype is None else dtype
        if clone_of is not None:
            lib.call("dnnl_memory_desc_clone", ctypes.byref(self.h), clone_of)
        elif any_format:
            lib.call("dnnl_memory_desc_create_with_tag", ctypes.byref(self.h), nd, D.Dims(*self.shape), dt,
                     D.FORMAT_ANY)
        else:
            lib.call("dnnl_memory_desc_create_with_strides", ctypes.byref(self.h), nd, D.Dims(*self.shape), dt,
                     D.Dims(*_strides(self.shape)))
        self.nbytes = int(lib.fn("dnnl_memory_desc_get_size")(self.h))

    def __del__(self):
        fn = getattr(self.lib, "fn", None)
        if fn is not None and self.h:
            fn("dnnl_memory_desc_destroy")(self.h)


def _attr(lib):
    attr = ctypes.c_void_p()
    lib.call("dnnl_primitive_attr_create", ctypes.byref(attr))
    try:
        lib.call("dnnl_primitive_attr_set_scratchpad_mode", attr, D.SCRATCHPAD_USER)
    except D.DnnlError:
        lib.fn("dnnl_primitive_attr_destroy")(attr)
        raise
    return attr


class Executor:
    """Runs primitives on NumPy buffers: ``self.lib`` is the loaded library (``_dnnl.load()``).

    With ``keep_memories`` (a class attribute) the memory objects of each (thread, primitive,
    argument) are made once and re-pointed at the call's buffer (``dnnl_memory_set_data_handle``,
    under the GIL) instead of created and destroyed per call; the subclass then calls
    :meth:`_destroy_memories` when it is deleted. In-process A/B, 2-core AMD EPYC (Zen 4),
    2026-12-07, convolution fwd+bwd, kept vs per call: (1,1,6^2) -> 16 153 vs 165 us, MNIST CNN
    conv1 747 vs 773 us, the Conv4d example's first layer 4.93 vs 5.17 ms (its frame blocks call
    the same plans many times), large layers unchanged."""

    keep_memories = False

    def _memory(self, md, array, made, key=None):
        addr = ctypes.c_void_p(_native.addr(array))
        if key is not None:
            mems = self.__dict__.get("_mems")
            if mems is None:
                mems = self._mems = {}
            mem = mems.get(key)
            if mem is not None:
                if self.lib.fn_keeping_gil("dnnl_memory_set_data_handle")(mem, addr) != D.SUCCESS:
                    raise D.DnnlError("oneDNN: dnnl_memory_set_data_handle failed")
                return mem
        mem = ctypes.c_void_p()
        self.lib.call("dnnl_memory_create", ctypes.byref(mem), md, self.lib.engine, addr)
        if key is None:
            made.append(mem)
        else:
            mems[key] = mem
        return mem

    def _destroy_memories(self) -> None:
        """Destroy the kept memory objects (nothing once the library is gone at exit)."""
        mems = self.__dict__.pop("_mems", None)
        if mems:
            destroy_memories(self.lib, list(mems.values()))

    def _exec(self, prim, args, made, keep):
        """Run ``prim`` with ``args`` [(arg id, md, array)]; ``keep`` holds every array that oneDNN
        may touch until the stream has finished."""
        n = len(args) + (1 if prim.scratch else 0)
        arr = (D.ExecArg * n)()
        base = (threading.get_ident(), id(prim)) if self.keep_memories else None
        for i, (arg, md, a) in enumerate(args):
            key = None if base is None else base + (i, getattr(md, "value", md))
            arr[i].arg, arr[i].memory = arg, self._memory(md, a, made, key)
            keep.append(a)
        if prim.scratch:
            pad = D.aligned_empty(prim.scratch, np.uint8)
            keep.append(pad)
            arr[n - 1].arg = D.ARG_SCRATCHPAD
            key = None if base is None else base + (-1,)
            arr[n - 1].memory = self._memory(prim.md(D.QUERY_SCRATCHPAD_MD), pad, made, key)
        self.lib.call("dnnl_primitive_execute", prim.prim, self.lib.stream, n, arr)

    def _run_all(self, calls) -> None:
        """Execute ``calls`` [(primitive, [(arg id, md, array)])] in order, wait for the stream,
        then free the memory objects (the arrays stay referenced until then)."""
        made, keep = [], []
        D.quiet_blas()  # NumPy's OpenBLAS workers would spin through the call (_dnnl.stop_blas_spinning)
        try:
            for prim, args in calls:
                if prim.serial:
                    with one_omp_thread():
                        self._exec(prim, args, made, keep)
                else:
                    self._exec(prim, args, made, keep)
            self.lib.call("dnnl_stream_wait", self.lib.stream)
        finally:
            destroy = self.lib.fn("dnnl_memory_destroy")
            for m in made:
                destroy(m)
            del keep


def execute_bound(lib, prim, mems, ptrs, args, what: str) -> None:
    """Run the primitive handle ``prim`` on memory objects ``mems`` made once per thread (their
    data handles set to the addresses ``ptrs`` here) with the argument array ``args``, then wait
    for the stream. The caller keeps every buffer referenced until this returns. (The plans of
    ``_matmul.py`` and ``_norm.py``: creating and destroying memories per call cost more than a
    small call itself.)"""
    set_handle = lib.fn_keeping_gil("dnnl_memory_set_data_handle")  # cheap: no GIL hand-off
    for mem, ptr in zip(mems, ptrs):
        if set_handle(mem, ctypes.c_void_p(ptr)) != D.SUCCESS:
            raise D.DnnlError(f"oneDNN: dnnl_memory_set_data_handle failed for the {what}")
    D.quiet_blas()  # NumPy's OpenBLAS workers would spin through the call (_dnnl.stop_blas_spinning)
    lib.call("dnnl_primitive_execute", prim, lib.stream, len(args), args)  # releases the GIL
    status = lib.fn_keeping_gil("dnnl_stream_wait")(lib.stream)
    if status != D.SUCCESS:
        raise D.DnnlError(f"oneDNN: dnnl_stream_wait failed with status {status} for the {what}")


def destroy_memories(lib, mems) -> None:
    """Destroy memory objects made by ``dnnl_memory_create`` (a plan's ``__del__``; nothing
    once the library is gone at interpreter exit)."""
    fn = getattr(lib, "fn", None)
    if fn is not None:
        for mem in mems:
            fn("dnnl_memory_destroy")(mem)


class FlatPlan(Executor):
    """A primitive over float32 buffers that all have one 1-d descriptor (``self.desc``), its
    argument ids in ``self.args`` (outputs last) and a name for messages (``self.what``): the
    element-wise plans of ``_eltwise.py`` and ``_chain.py``."""

    def run(self, *arrays) -> None:
        """Execute on ``arrays`` (one per argument id, outputs last, all C-contiguous float32)."""
        n = self.desc.nbytes
        for i, a in enumerate(arrays):
            D.check_buffer(a, np.float32, n, f"{'output' if i == len(arrays) - 1 else 'input'} {i} of the "
                                             f"oneDNN {self.what}")
        self._run_all([(self.prim, [(arg, self.desc.h, a) for arg, a in zip(self.args, arrays)])])


def impl_name(lib, pd) -> str:
    """The implementation oneDNN chose for a primitive descriptor (``"jit:avx2"``, ``"ref:any"``
    for its scalar reference code, ``"x64:gemm:jit"`` for im2col + GEMM, ...)."""
    name = ctypes.c_char_p()
    lib.call("dnnl_primitive_desc_query", pd, D.QUERY_IMPL_INFO_STR, 0, ctypes.byref(name))
    return (name.value or b"").decode()


_team = {}


class one_omp_thread:
    """Run the oneDNN calls (and the compiled kernels) of THIS thread on one OpenMP thread:
    ``omp_set_num_threads(1)`` on entry, the count restored on exit.

    For code that shares tiles among Python threads (``ops._cpu_threads``), each of which would
    otherwise fork a full OpenMP team per call and oversubscribe the cores, and around a small
    reorder (``_Prim.serial``), which costs less than waking the team. OpenMP's thread count is
    a per-thread setting, so other threads keep theirs; the functions are found through oneDNN's
    own handle (its OpenMP runtime, whichever it links), and nothing is set where oneDNN is absent
    or not built on OpenMP. Primitives that fix their team when created (convolutions) still
    start it. (PyTorch: ``torch.set_num_threads`` is process-wide; this is per calling thread.)

    Example:
        >>> from avila_ml.cpu_accel._prim import one_omp_thread
        >>> with one_omp_thread():
        ...     pass  # oneDNN calls here use one thread
    """

    __slots__ = ("before",)

    def __enter__(self):
        fns = _team.get("get_set")
        if fns is None:
            lib = D.load()
            cdll = getattr(lib, "cdll", None)
            # (cheap calls: kept under the GIL)
            fns = (lib.fn_keeping_gil("omp_get_max_threads"), lib.fn_keeping_gil("omp_set_num_threads")) \
                if getattr(cdll, "omp_set_num_threads", None) is not None else ()
            _team["get_set"] = fns
        self.before = None
        if fns:
            self.before = fns[0]()
            if self.before != 1:
                fns[1](1)
        return self

    def __exit__(self, *exc):
        if self.before not in (None, 1):
            _team["get_set"][1](self.before)
        return False


def team_size() -> int:
    """The size of the OpenMP team oneDNN would start from the calling thread
    (``omp_get_max_threads`` of oneDNN's own OpenMP runtime: a per-thread setting, 1 inside
    :class:`one_omp_thread`), or 0 when oneDNN is absent or not built
    on OpenMP."""
    f = _team.get("f")
    if f is None:
        lib = D.load()
        f = (lambda: 0) if getattr(getattr(lib, "cdll", None), "omp_get_max_threads", None) is None else \
            lib.fn_keeping_gil("omp_get_max_threads")  # asked before every plan lookup: no GIL hand-off
        _team["f"] = f
    return f()


class PlanCache:
    """An LRU cache of plans with a bound: a number, or a function read at each insertion (so a
    module's ``CACHE_SIZE`` can be changed at run time). A plan is built outside the lock:
    building JIT-compiles, and two threads building the same plan just waste one. An evicted
    plan is destroyed when no running call holds it any more.

    A plan is cached per OpenMP team size of the thread that asks (:func:`team_size`), as
    oneDNN's own primitive cache keys on it: a JIT primitive fixes its team when it is created,
    so a plan made in a full-team context and run later from a thread on one OpenMP thread (the
    parts of ``ops._cpu_threads``) would start a nested team per call -- measured: after one
    batch-1 attention call, the batch-4 call's two parts each started an extra OpenMP worker
    -- and one made on one thread would run a full-team call on a single core. Iteration and
    :meth:`items` give the callers' keys."""

    def __init__(self, capacity):
        self._capacity = capacity
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, build):
        key = (key, team_size())
        with self._lock:
            plan = self._d.get(key)
            if plan is not None:
                self._d.move_to_end(key)
                return plan
        plan = build()
        with self._lock:
            self._d[key] = plan
            self._d.move_to_end(key)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
        return plan

    @property
    def capacity(self) -> int:
        return self._capacity() if callable(self._capacity) else self._capacity

    def __len__(self):
        return len(self._d)

    def __iter__(self):
        return iter([k for k, _ in self._d])

    def items(self):
        return [(k, plan) for (k, _), plan in self._d.items()]

    def info(self) -> dict:
        return {"size": len(self._d), "capacity": self.capacity}

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
