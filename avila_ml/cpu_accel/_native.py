"""Element-wise CPU kernels compiled with the package: ``kernels/*.c``, built by ``setup.py``
as the optional extension ``avila_ml.cpu_accel._kernels`` and called through ``ctypes`` (which
releases the GIL around each call). This module loads the library, binds a kernel by name
(``avila_<name>_f32`` / ``_f64``, signatures declared with :func:`register`) and holds the
activation kernels' wrappers; other wrapper modules use :func:`kernel` and :func:`call`.

Each kernel is one pass over memory where the NumPy formula takes two to four (compare, cast,
multiply, NaN scan). Large arrays are cut into one contiguous range per CPU thread inside the C
call, on an OpenMP team: the same OpenMP runtime (the system's ``libgomp``) and thread pool as
oneDNN's kernels, loaded with its threads waiting passively like oneDNN's
(``_dnnl._passive_openmp``). Not the Python pool of ``ops._cpu_threads.over_batch``: handing a
part to a Python thread costs a GIL round trip, ~44 us on the 2-core AMD EPYC, against the
~60 us the whole in-place ReLU of a (32, 32, 32, 32) float32 array takes on the OpenMP team
(2026-12-07).

The wrappers take same-shaped C-contiguous float32 or float64 NumPy arrays and return False,
having written nothing, where they do not apply (no compiled kernels, another dtype or layout,
switched off with ``AVILA_ML_NATIVE_KERNELS=0`` or ``ENABLED = False``): the caller then runs
its NumPy formula, which stays the reference in the tests. The results are PyTorch's, NaN and
infinities included (each ``kernels/*.c`` file lists its formulas). A library built from older
sources (an editable install not rebuilt) lacks some symbols: those kernels report False, the
others run (:func:`missing` lists them).

No PyTorch counterpart as a module: PyTorch's own CPU kernels are compiled C++ (ATen), which is
what these stand in for.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
import time

import numpy as np

__all__ = ["addr", "available", "absent_reason", "missing", "register", "kernel", "call", "threads_for", "relu_forward",
           "relu_backward", "leaky_relu_backward", "binary", "amax_backward", "column_sums", "gelu_forward", "gelu_backward", "copy_strided", "index_add_rows", "augment_rows", "causal_zero", "erf_rational", "kernel_for", "ENABLED", "PTR", "COUNT", "THREADS", "SCALAR"]

ENABLED = os.environ.get("AVILA_ML_NATIVE_KERNELS", "1") != "0"
_SPLIT_MIN = 1 << 16  # from this many elements the work is split over the CPU threads
# ... but from this many only, while NumPy's OpenBLAS has its workers up again within
# _RESTART_WINDOW seconds of this module stopping them: products and element-wise work then
# alternate (a recurrent layer's step loop), and each stop makes the next product restart the
# workers (~0.1 ms), more than a second thread saves on a smaller array. Outside such a loop
# the workers are stopped once and the work is split. Without oneDNN an LSTM layer's step loop
# alternates products and (64, 2048) adds: 512->512 T=100 N=64 forward, AVX-512 EPYC, three
# alternating process rounds: stopping every time 214 / 249 / 217 ms, never for medium work
# 201 / 197 / 222 ms, the code before the compiled kernels (025e84e) 204 / 222 / 200 ms; with
# this window, five pairs before / now: 211 / 207, 207 / 231, 218 / 216, 227 / 236, 265 / 210
# (the machine's noise). Never stopping for medium work made a 1M-parameter SGD step 1.6x slower
# (bench_optim 153-164 -> 244 us) where an earlier product left the workers up and no product
# ran after it; with the window 151 us.
_SPLIT_MIN_BLAS_UP = 1 << 18
_RESTART_WINDOW = 0.05
_clock = time.perf_counter  # (replaced in tests)
_state: dict = {}
_lock = threading.Lock()
PTR, COUNT, THREADS = ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int
SCALAR = "scalar"  # in a signature: a scalar in the arrays' dtype (C float or double)
_SIGNATURES: dict = {}
_CTYPE = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def register(name: str, *argtypes) -> None:
    """Declare the C signature of ``avila_<name>_f32`` / ``_f64``: ``PTR``, ``COUNT``,
    ``THREADS``, ``SCALAR`` (the dtype's float) or any ctypes type, in order.

    Example:
        >>> from avila_ml.cpu_accel import _native
        >>> _native.register("relu_fwd", _native.PTR, _native.PTR, _native.COUNT, _native.THREADS)
    """
    _SIGNATURES[name] = argtypes
    if "bound" in _state:
        _state["bound"] = {k: v for k, v in _state["bound"].items() if k[0] != name}


register("relu_fwd", PTR, PTR, COUNT, THREADS)
register("amax_bwd", PTR, PTR, PTR, PTR, COUNT, COUNT, ctypes.c_int, THREADS)
for _op in ("add", "sub", "mul", "div"):
    register(_op, PTR, PTR, PTR, COUNT, THREADS)
for _op in ("add_s", "sub_s", "rsub_s", "mul_s", "div_s", "rdiv_s"):
    register(_op, PTR, SCALAR, PTR, COUNT, THREADS)
_SCALAR_FORMS = {"add": ("add_s", "add_s"), "sub": ("sub_s", "rsub_s"), "mul": ("mul_s", "mul_s"),
                 "div": ("div_s", "rdiv_s")}  # op -> (number on the right, number on the left)
register("relu_bwd", PTR, PTR, PTR, COUNT, THREADS)
register("leaky_bwd", PTR, PTR, PTR, SCALAR, COUNT, THREADS)
register("causal_zero", PTR, COUNT, COUNT, COUNT, COUNT, COUNT, THREADS)
register("erf_rational", PTR, PTR, PTR, SCALAR, SCALAR, ctypes.c_int, COUNT, THREADS)


def _ctypes_address(a) -> int:
    if ENABLED and "cdll" not in _state:  # the first call: load the module, whose address() replaces this
        _load()
        if addr is not _ctypes_address:
            return addr(a)
    return a.ctypes.data


# addr(array): the address of the array's first element, for the C calls. NumPy's
# ``a.ctypes.data`` builds a helper object per access (~2 us, the 2-core AMD EPYC); once the
# compiled module loads, its ``address`` (the buffer protocol, ~0.13 us) replaces it here.
addr = _ctypes_address


def _load():
    """The loaded library (a ``ctypes.CDLL``) or None; the reason it is absent is kept."""
    if "cdll" in _state:
        return _state["cdll"]
    with _lock:
        if "cdll" in _state:
            return _state["cdll"]
        cdll, reason = None, None
        spec = importlib.util.find_spec("avila_ml.cpu_accel._kernels")
        if spec is None or not spec.origin:
            reason = ("the compiled kernels (avila_ml.cpu_accel._kernels) are not built: reinstall with a C "
                      "compiler present (pip install -e . builds them)")
        else:
            from . import _dnnl
            # oneDNN first, where installed: it loads the OpenMP runtime with passive waits (and
            # records that for its own use); else the runtime is loaded here the same way
            try:
                if _dnnl.load() is not None:
                    cdll = ctypes.CDLL(spec.origin)
                else:
                    with _dnnl._passive_openmp():
                        cdll = ctypes.CDLL(spec.origin)
            except OSError as exc:
                reason = f"the compiled kernels at {spec.origin} could not be loaded: {exc}"
            else:
                _dnnl.guard_fork(cdll)
                try:
                    from . import _kernels
                    globals()["addr"] = _kernels.address
                except (ImportError, AttributeError):  # (a module built before address() existed)
                    pass
        _state["bound"] = {}
        _state["cdll"], _state["reason"] = cdll, reason
        return cdll


def _bind(name, dtype):
    """The C function ``avila_<name>_<f32|f64>`` with its argument types, or None when the
    library lacks it (built from older sources)."""
    key = (name, dtype)
    fn = _state["bound"].get(key, False)
    if fn is False:
        fn = getattr(_state["cdll"], f"avila_{name}_{_SUFFIX[dtype]}", None)
        if fn is not None:
            fn.argtypes = [_CTYPE[dtype] if a is SCALAR else a for a in _SIGNATURES[name]]
            fn.restype = None
        _state["bound"][key] = fn
    return fn


def available() -> bool:
    """Whether the compiled kernels are built, load, and are switched on.

    Example:
        >>> from avila_ml.cpu_accel import _native
        >>> _native.available() in (True, False)
        True
    """
    return ENABLED and _load() is not None


def absent_reason():
    """Why the compiled kernels are not used, as a sentence, or None when they are.

    Example:
        >>> from avila_ml.cpu_accel import _native
        >>> (_native.absent_reason() is None) == _native.available()
        True
    """
    if not ENABLED:
        return "switched off (AVILA_ML_NATIVE_KERNELS=0 or avila_ml.cpu_accel._native.ENABLED = False)"
    _load()
    return _state["reason"]


def missing() -> list:
    """The registered kernels the loaded library lacks (built from older sources), as
    ``avila_<name>_<f32|f64>`` names; empty when it has them all or is not loaded.

    Example:
        >>> from avila_ml.cpu_accel import _native
        >>> isinstance(_native.missing(), list)
        True
    """
    if _load() is None:
        return []
    import importlib
    for module in _WRAPPERS:  # their signatures are registered when they are imported
        importlib.import_module(f"{__package__}.{module}")
    return [f"avila_{n}_{_SUFFIX[d]}" for n in _SIGNATURES for d in _SUFFIX if _bind(n, d) is None]


# the modules that register kernels of their own (imported on first use by the ops)
_WRAPPERS = ("_native_batchnorm", "_native_pool", "_native_norm", "_native_optim", "_native_softmax", "_native_stacking", "_native_pad")


def kernel(name, *arrays):
    """The C function ``name`` for ``arrays`` (same shape and dtype, float32 or float64,
    C-contiguous, the output -- the last one -- writeable), or None: then the caller runs its
    NumPy formula. Kernels over arrays of different shapes check them themselves and use
    :func:`kernel_for`.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> x = np.ones(3, np.float32)
        >>> _native.kernel("relu_fwd", x, x[::-1]) is None  # a reversed view is not C-contiguous
        True
    """
    first = arrays[0]
    if not isinstance(first, np.ndarray):
        return None
    for a in arrays:
        if not (isinstance(a, np.ndarray) and a.shape == first.shape):
            return None
    return kernel_for(name, *arrays)


def kernel_for(name, *arrays):
    """As :func:`kernel` for arrays of any shapes: one float dtype, all C-contiguous, the last
    writeable; the caller has checked the shapes.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> _native.kernel_for("relu_fwd", np.ones(3, np.float16), np.ones(3, np.float16)) is None
        True
    """
    if not ENABLED:
        return None
    first = arrays[0]
    if not isinstance(first, np.ndarray) or first.dtype not in _SUFFIX:
        return None
    for a in arrays:
        if not (isinstance(a, np.ndarray) and a.dtype == first.dtype and a.flags.c_contiguous):
            return None
    if not arrays[-1].flags.writeable or _load() is None:
        return None
    return _bind(name, first.dtype)


def threads_for(size: int) -> int:
    """The OpenMP team size for work over ``size`` elements: as many threads as BLAS uses from
    ``_SPLIT_MIN`` elements on, else 1; 1 inside a pool thread of ``ops._cpu_threads`` (its
    siblings hold the other cores), in a thread whose OpenMP setting is one thread
    (``_matmul.one_omp_thread``) and in a child forked after OpenMP ran (``_dnnl.guard_fork``).
    Before a team of several threads runs, spinning OpenBLAS workers are stopped
    (``_dnnl.quiet_blas``), as before every oneDNN execution; work below ``_SPLIT_MIN_BLAS_UP``
    elements runs on one thread instead, leaving them up, when they are up again within
    ``_RESTART_WINDOW`` seconds of the last stop (products alternating with element-wise work).

    Example:
        >>> from avila_ml.cpu_accel import _native
        >>> _native.threads_for(10)
        1
    """
    if size < _SPLIT_MIN:
        return 1
    refs = _state.get("threads")
    if refs is None:  # (imported once: an import statement per call cost ~3 us)
        from ..ops._cpu_threads import blas_threads
        from . import _dnnl
        from ._prim import team_size
        refs = _state["threads"] = (blas_threads, _dnnl.forked, _dnnl.quiet_blas, team_size, _dnnl.blas_workers_up)
    if threading.current_thread().name.startswith("avila-cpu") or refs[1]():
        return 1
    if refs[3]() == 1:  # this thread's OpenMP setting (``_matmul.one_omp_thread``: a part among
        return 1        # Python threads that share the cores, as the fused attention's)
    n = refs[0]()
    if n > 1 and refs[4]():
        now = _clock()
        if size < _SPLIT_MIN_BLAS_UP and now - _state.get("blas_stopped", -1.0) < _RESTART_WINDOW:
            return 1  # (see _SPLIT_MIN_BLAS_UP: products between adds, a recurrent step loop)
        # NumPy's OpenBLAS workers spin for ~0.1 s after a threaded product and would hold a
        # core the team needs, as before a oneDNN execution (_dnnl.stop_blas_spinning): the
        # softmax forward row of bench_core ran 284 us right after its matmul row, 171 us alone
        refs[2]()
        _state["blas_stopped"] = now
    return n


def call(fn, arrays, scalars=(), size=None) -> bool:
    """``fn(pointers of arrays..., scalars..., size, threads)`` (``size``: the first array's
    element count by default); True.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> x = np.array([-1.0, 2.0], np.float32)
        >>> fn = _native.kernel("relu_fwd", x, x)
        >>> fn is None or (_native.call(fn, (x, x)) and x.tolist() == [0.0, 2.0])
        True
    """
    n = arrays[0].size if size is None else size
    fn(*[addr(a) for a in arrays], *scalars, n, threads_for(n))
    return True


def relu_forward(x, out) -> bool:
    """``out = relu(x)`` (``out`` may be ``x``): ``0`` where ``x <= 0``, else ``x`` (NaN stays NaN).

    Math: ``y = max(x, 0)``. PyTorch: ``torch.relu`` / ``torch.relu_``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> x = np.array([-1.0, 0.5, np.nan], np.float32); y = np.empty_like(x)
        >>> done = _native.relu_forward(x, y)  # False without the compiled kernels
        >>> (not done) or (y[0] == 0 and y[1] == 0.5 and bool(np.isnan(y[2])))
        True
    """
    fn = kernel("relu_fwd", x, out)
    return fn is not None and call(fn, (x, out))


def relu_backward(g, y, out) -> bool:
    """``out = 0 where y <= 0 else g``: ReLU's input gradient from its output ``y`` (a NaN ``y``
    passes ``g``; an infinite ``g`` where ``y <= 0`` gives 0).

    Math: ``dx = g [y > 0]``. PyTorch: ``torch.ops.aten.threshold_backward(g, y, 0)``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> g = np.array([np.inf, 2.0], np.float32); y = np.array([0.0, 1.0], np.float32)
        >>> out = np.empty_like(g)
        >>> (not _native.relu_backward(g, y, out)) or out.tolist() == [0.0, 2.0]
        True
    """
    fn = kernel("relu_bwd", g, y, out)
    return fn is not None and call(fn, (g, y, out))


def leaky_relu_backward(g, x, slope, out) -> bool:
    """``out = g where x > 0 else g * slope``: LeakyReLU's input gradient (``x`` its input, or
    its output for ``slope >= 0``, which is positive exactly where the input is).

    Math: ``dx = g (1 if x > 0 else slope)``. PyTorch: ``torch.ops.aten.leaky_relu_backward``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> g = np.ones(2, np.float32); x = np.array([-1.0, 1.0], np.float32); out = np.empty_like(g)
        >>> (not _native.leaky_relu_backward(g, x, 0.25, out)) or out.tolist() == [0.25, 1.0]
        True
    """
    fn = kernel("leaky_bwd", g, x, out)
    return fn is not None and call(fn, (g, x, out), (slope,))


def binary(op: str, a, b, out=None):
    """``out = a <op> b`` for ``op`` in add/sub/mul/div on the OpenMP team: ``a`` and ``b``
    same-shaped C-contiguous float32/float64 NumPy arrays of at least ``_SPLIT_MIN`` elements
    (below that NumPy's single-threaded loop is as fast), or one of them a single element
    broadcast over the other (``x * 2``: the number as a 0-d array of x's dtype); ``out`` a
    fresh array when None, or ``a`` / ``b`` / another array for in place. Returns ``out``, or None (nothing written) where
    it does not apply. Bitwise NumPy's result (each IEEE operation correctly rounded).

    Math: ``out[i] = a[i] + b[i]`` (etc.). PyTorch: ``torch.add`` / ``sub`` / ``mul`` / ``div``
    (its CPU kernels split over its threads the same way).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> a = np.ones(1 << 16, np.float32)
        >>> r = _native.binary("add", a, a)
        >>> r is None or float(r[0]) == 2.0
        True
    """
    if not (type(a) is np.ndarray and type(b) is np.ndarray and (a.size >= _SPLIT_MIN or b.size >= _SPLIT_MIN)):
        return None
    if a.shape != b.shape:
        return _binary_number(op, a, b, out)
    if out is None:
        if a.dtype != b.dtype or a.dtype not in _SUFFIX:
            return None
        out = np.empty(a.shape, a.dtype)
    elif any(x is not out and np.may_share_memory(x, out) for x in (a, b)):
        return None  # an operand overlapping the output at an offset: NumPy buffers that case
    fn = kernel(op, a, b, out)
    if fn is None:
        return None
    call(fn, (a, b, out))
    return out


def _binary_number(op, a, b, out):
    """:func:`binary` where one operand holds a single element (a Python number made a 0-d
    array of the other's dtype, ``x * 2``) broadcast over the other, whose shape is the
    result's; None otherwise."""
    if b.size == 1 and b.ndim <= a.ndim:
        arr, num, form = a, b, _SCALAR_FORMS[op][0]
    elif a.size == 1 and a.ndim <= b.ndim:
        arr, num, form = b, a, _SCALAR_FORMS[op][1]
    else:
        return None
    if num.dtype != arr.dtype or arr.dtype not in _SUFFIX:
        return None
    if out is None:
        out = np.empty(arr.shape, arr.dtype)
    elif out.shape != arr.shape or (out is not arr and np.may_share_memory(arr, out)):
        return None
    fn = kernel(form, arr, out)
    if fn is None:
        return None
    value = num.reshape(()).item()  # the element itself: a C float/double holds it exactly
    fn(addr(arr), value, addr(out), arr.size, threads_for(arr.size))
    return out


def amax_backward(x, out, g, nan_ties=False):
    """The gradient of ``amax`` / ``amin`` over the trailing axes of ``x`` (C-contiguous
    float32/float64, seen as ``out.size`` rows): ``g`` shared evenly among each row's elements
    equal to its result ``out`` (with ``nan_ties``, the NaN elements of a NaN row too), NaN over
    a row where none matches; a fresh array shaped like ``x``, or None where the kernel does not
    apply (then the caller's NumPy formula runs).

    Math: ``dx = g * (x == out) / count(x == out)`` per row. PyTorch: ``amax``'s backward
    (``scale_grad_by_count``; ``evenly_distribute_backward`` for ``max()``).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]], np.float32)
        >>> dx = _native.amax_backward(x, x.max(axis=1), np.array([1.0, 4.0], np.float32))
        >>> dx is None or dx.tolist() == [[0.0, 0.5, 0.5], [4.0, 0.0, 0.0]]
        True
    """
    if not (type(x) is np.ndarray and type(out) is np.ndarray and type(g) is np.ndarray):
        return None
    rows = out.size
    if rows == 0 or x.size % rows or g.size != rows:
        return None
    o, gr = np.ascontiguousarray(out).reshape(-1), np.ascontiguousarray(g).reshape(-1)
    dx = np.empty(x.shape, x.dtype)
    fn = kernel_for("amax_bwd", x, o, gr, dx)
    if fn is None:
        return None
    fn(addr(x), addr(o), addr(gr), addr(dx), rows, x.size // rows, int(bool(nan_ties)),
       threads_for(x.size))
    return dx


def causal_zero(p, i0: int, j0: int) -> bool:
    """``p[..., r, c] = 0`` where key ``j0 + c`` lies after query ``i0 + r`` (a C-contiguous
    float32/float64 block of attention probabilities, any leading dims); False, nothing
    written, where the kernel does not apply.

    Math: ``p[b, r, c] = 0`` for ``j0 + c > i0 + r``. PyTorch: the causal mask inside
    ``scaled_dot_product_attention(..., is_causal=True)``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> p = np.ones((1, 2, 3), np.float32)
        >>> (not _native.causal_zero(p, 0, 0)) or p[0].tolist() == [[1, 0, 0], [1, 1, 0]]
        True
    """
    if type(p) is not np.ndarray or p.ndim < 2 or p.size == 0:
        return False
    fn = kernel_for("causal_zero", p)
    if fn is None:
        return False
    n, m = p.shape[-2:]
    fn(addr(p), p.size // (n * m), n, m, int(i0), int(j0), threads_for(p.size))
    return True


def _coefficients_fit(coefs, dtype) -> bool:
    """Whether ``coefs`` are the 12 rational-function coefficients (P then Q) the erf / GELU
    kernels read: a C-contiguous NumPy array of ``dtype``."""
    return type(coefs) is np.ndarray and coefs.dtype == dtype and coefs.size == 12 and coefs.flags.c_contiguous


def erf_rational(x, coefs, clip, add, times_x):
    """``(a P(a²) / Q(a²) + add) * (x if times_x)`` with ``a = clip(x, -clip, clip)`` for a
    C-contiguous float32/float64 NumPy array ``x`` and the 12 coefficients ``coefs`` (P then Q,
    ascending, in x's dtype; ``add = 0``: no addition, as the NumPy form without one): a fresh
    array, bitwise the NumPy passes of ``backends/_erf_float32.py`` (same operations, same
    order); None where the kernel does not apply.

    Math: the rational error function of that module (``erf``, ``normal_cdf``, exact ``gelu``).
    PyTorch: ``torch.erf`` / ``torch.special.ndtr`` / ``torch.nn.functional.gelu`` on the CPU.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> one = np.array([1.0, 0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 0], np.float32)  # P = Q = 1: a
        >>> y = _native.erf_rational(np.array([-5.0, 0.5, np.nan], np.float32), one, 3.0, 0.0, False)
        >>> y is None or (y[:2].tolist() == [-3.0, 0.5] and bool(np.isnan(y[2])))
        True
    """
    if type(x) is not np.ndarray or x.size == 0:
        return None
    out = np.empty(x.shape, x.dtype) if x.dtype in _SUFFIX else None
    fn = None if out is None else kernel_for("erf_rational", x, out)
    if fn is None or not _coefficients_fit(coefs, x.dtype):
        return None
    fn(addr(x), addr(out), addr(coefs), float(clip), float(add), int(bool(times_x)), x.size, threads_for(x.size))
    return out


register("colsum", PTR, PTR, COUNT, COUNT, THREADS)


def column_sums(g, out) -> bool:
    """``out = g.sum(axis=0)`` for a C-contiguous (m, n) float32/float64 array ``g`` and a
    C-contiguous (n,) ``out``: the bias gradient of a linear layer, on the OpenMP team.

    Each thread sums a block of rows in chunks of 64 (a two-level sum, whose rounding error
    grows with 64 + m / 64 additions rather than m); the threads' sums are added in order. NumPy's
    ``sum(axis=0)`` of a C-order array runs on one thread, and the product ``1^T g`` on
    OpenBLAS's threads (which a following oneDNN call stops again).

    Math: ``out_j = sum_i g_ij``. PyTorch: ``g.sum(0)`` (the ``db`` of ``AddmmBackward0``).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> g = np.arange(6, dtype=np.float32).reshape(3, 2); out = np.empty(2, np.float32)
        >>> (not _native.column_sums(g, out)) or out.tolist() == [6.0, 9.0]
        True
    """
    if not (isinstance(g, np.ndarray) and isinstance(out, np.ndarray) and g.ndim == 2
            and out.shape == (g.shape[1],)):
        return False
    fn = kernel_for("colsum", g, out)
    if fn is None:
        return False
    fn(addr(g), addr(out), g.shape[0], g.shape[1], threads_for(g.size))
    return True


register("gelu_bwd", PTR, PTR, PTR, PTR, SCALAR, COUNT, THREADS)


def gelu_backward(g, x, coefs, clip):
    """Exact GELU's input gradient ``g (Phi(x) + x phi(x))`` for same-shaped C-contiguous
    float32/float64 NumPy arrays, as a fresh array, or None where the kernel does not apply.
    float32 evaluates Phi by the rational normal CDF of ``backends/_erf_float32.py`` (``coefs``:
    its 12 float32 coefficients, ``clip`` its clip) and phi with the kernels' vectorised exp;
    float64 uses libm's erf (``coefs`` unused, pass a float64 array of 12).

    Math: ``dx = g (Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi))``. PyTorch: ``torch.ops.aten.gelu_backward``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> x = np.array([0.0, 1.0], np.float64); g = np.ones(2)
        >>> dx = _native.gelu_backward(g, x, np.zeros(12), 0.0)
        >>> dx is None or bool(np.allclose(dx, [0.5, 0.8413447 + 0.2419707]))
        True
    """
    if not (type(g) is np.ndarray and type(x) is np.ndarray and g.shape == x.shape and x.size):
        return None
    out = np.empty(x.shape, x.dtype) if x.dtype in _SUFFIX else None
    fn = None if out is None else kernel_for("gelu_bwd", g, x, out)
    if fn is None or not _coefficients_fit(coefs, x.dtype):
        return None
    fn(addr(g), addr(x), addr(out), addr(coefs), float(clip), x.size, threads_for(x.size))
    return out


def _row_strides(a):
    """The element strides of ``a``'s leading axes (a tuple), for the kernels that walk its last
    axis as contiguous runs (``kernels/copy.c``); None where that axis is not contiguous (a
    length-1 last axis may have any stride) or a stride is not a whole number of elements."""
    item = a.dtype.itemsize
    if (a.strides[-1] != item and a.shape[-1] > 1) or any(s % item for s in a.strides):
        return None
    return tuple(s // item for s in a.strides[:-1])


register("copy_nd", PTR, PTR, PTR, COUNT, THREADS)
_COPY_MIN = 1 << 15  # elements from which the threaded copy is used (below: NumPy's assignment)


def copy_strided(dst, src) -> bool:
    """``dst[...] = src`` for two float32/float64 NumPy arrays of one shape and dtype whose last
    axis is contiguous in both (any positive or negative whole-element strides elsewhere), split
    over the OpenMP team; False, having written nothing, where it does not apply (other dtypes,
    layouts or sizes, fewer than ``_COPY_MIN`` elements, 1 or more than 16 dims, overlapping
    memory): the caller then assigns with NumPy.

    Math: ``dst_i = src_i`` for every index ``i``. PyTorch: ``Tensor.copy_`` (threaded too).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> src = np.arange(2 * 3 * 4 * 8 * 512, dtype=np.float32).reshape(2, 3, 4, 8, 512)
        >>> dst = np.empty((2, 4, 3, 8, 512), np.float32)
        >>> done = _native.copy_strided(dst.transpose(0, 2, 1, 3, 4), src)
        >>> (not done) or bool((dst.transpose(0, 2, 1, 3, 4) == src).all())
        True
    """
    if not (type(dst) is np.ndarray and type(src) is np.ndarray and dst.shape == src.shape
            and dst.dtype == src.dtype and dst.dtype in _SUFFIX and 2 <= dst.ndim <= 16
            and dst.size >= _COPY_MIN and dst.flags.writeable):
        return False
    ss, ds = _row_strides(src), _row_strides(dst)
    if ss is None or ds is None or np.may_share_memory(dst, src):
        return False
    if not ENABLED or _load() is None:
        return False
    fn = _bind("copy_nd", dst.dtype)
    if fn is None:
        return False
    meta = np.array((dst.ndim,) + dst.shape + ss + ds, dtype=np.int64)
    rows = dst.size // dst.shape[-1]
    fn(addr(src), addr(dst), addr(meta), rows, threads_for(dst.size))
    return True


register("index_add_rows", PTR, PTR, PTR, COUNT, COUNT, COUNT, THREADS)
_INDEX_ADD_MIN = 1 << 14  # elements of values from which the kernel is used (numpy_backend: the same)


def index_add_rows(out, index, values) -> bool:
    """``out[index[i]] += values[i]`` for every i, repeated indices accumulating in order (the
    bits of ``np.add.at``): ``out`` (n, ...) and ``values`` (m, ...) C-contiguous float32/float64
    of one dtype and trailing shape, ``index`` (m,) integers already in [0, n). Threads own blocks
    of ``out``'s rows. False, having written nothing, where it does not apply (other dtypes or
    layouts, fewer than ``_INDEX_ADD_MIN`` values): the caller then uses NumPy.

    Math: ``out_r += sum over {i : index_i = r} of values_i``. PyTorch: ``Tensor.index_add_``
    along dim 0 (``embedding_dense_backward``).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> out = np.zeros((3, 8192), np.float32); v = np.ones((4, 8192), np.float32)
        >>> done = _native.index_add_rows(out, np.array([2, 0, 2, 2]), v)
        >>> (not done) or out[:, 0].tolist() == [1.0, 0.0, 3.0]
        True
    """
    if not (type(out) is np.ndarray and type(values) is np.ndarray and out.ndim >= 1
            and values.shape[1:] == out.shape[1:] and values.ndim == out.ndim
            and values.size >= _INDEX_ADD_MIN and values.shape[0] == len(index)):
        return False
    fn = kernel_for("index_add_rows", values, out)
    if fn is None:
        return False
    idx = np.ascontiguousarray(index, dtype=np.int64)
    n, m = out.shape[0], values.shape[0]
    d = values.size // m
    fn(addr(out), addr(idx), addr(values), n, m, d, threads_for(values.size))
    return True


register("augment_rows", PTR, PTR, PTR, PTR, SCALAR, SCALAR, COUNT, THREADS)


def augment_rows(a, out, scale, col, sq=None) -> bool:
    """``out[r] = [a_r * scale, col]`` for every row ``a_r`` (last axis) of ``a``, with ``sq[r]``
    the sum of squares of ``a_r * scale`` when ``sq`` is given: ``a`` a float32/float64 NumPy
    array of two or more dims (at most 16) with a contiguous last axis and any whole-element
    strides elsewhere (a permuted or broadcast view), ``out`` C-contiguous of ``a.size / n`` rows
    of ``n + 1`` in its dtype, ``sq`` C-contiguous of that many rows. False, having written
    nothing, where it does not apply: the caller then uses NumPy (``_attention_fused._augment``).

    Math: ``out_{r, j} = s a_{r, j}`` (j < n), ``out_{r, n} = c``, ``sq_r = sum_j (s a_{r, j})^2``.
    No PyTorch counterpart (the augmented operands are the fused attention's own).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> a = np.ones((2, 3, 4), np.float32).transpose(1, 0, 2)
        >>> out = np.empty((6, 5), np.float32); sq = np.empty(6, np.float32)
        >>> done = _native.augment_rows(a, out, 0.5, 1.0, sq)
        >>> (not done) or bool(out[0].tolist() == [0.5] * 4 + [1.0] and sq[0] == 1.0)
        True
    """
    if not (type(a) is np.ndarray and type(out) is np.ndarray and a.dtype == out.dtype and a.dtype in _SUFFIX
            and 2 <= a.ndim <= 16 and a.size and out.flags.c_contiguous and out.flags.writeable):
        return False
    n = a.shape[-1]
    rows = a.size // n
    st = _row_strides(a)
    if st is None or out.size != rows * (n + 1):
        return False
    if sq is not None and not (type(sq) is np.ndarray and sq.dtype == a.dtype and sq.flags.c_contiguous
                               and sq.size == rows and sq.flags.writeable):
        return False
    if not ENABLED or _load() is None:
        return False
    fn = _bind("augment_rows", a.dtype)
    if fn is None:
        return False
    meta = np.array((a.ndim,) + a.shape + st, dtype=np.int64)
    fn(addr(a), addr(out), None if sq is None else addr(sq), addr(meta), float(scale), float(col), rows,
       threads_for(out.size))
    return True


register("gelu_fwd", PTR, PTR, PTR, SCALAR, COUNT, THREADS)


def gelu_forward(x, coefs, clip):
    """Exact GELU ``x Phi(x)`` of a C-contiguous float32/float64 NumPy array, as a fresh array, or
    None where the kernel does not apply; ``coefs`` / ``clip`` as :func:`gelu_backward`'s (float32:
    the rational normal CDF of ``backends/_erf_float32.py``; float64: libm's erf).

    Math: ``y = x (1 + erf(x / sqrt 2)) / 2``. PyTorch: ``torch.nn.functional.gelu``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native
        >>> y = _native.gelu_forward(np.array([0.0, 1.0]), np.zeros(12), 0.0)
        >>> y is None or bool(np.allclose(y, [0.0, 0.8413447]))
        True
    """
    if not (type(x) is np.ndarray and x.size):
        return None
    out = np.empty(x.shape, x.dtype) if x.dtype in _SUFFIX else None
    fn = None if out is None else kernel_for("gelu_fwd", x, out)
    if fn is None or not _coefficients_fit(coefs, x.dtype):
        return None
    fn(addr(x), addr(out), addr(coefs), float(clip), x.size, threads_for(x.size))
    return out
