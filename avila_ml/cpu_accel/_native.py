"""Fused element-wise CPU kernels compiled with the package: ``_kernels.c``, built by
``setup.py`` as the optional extension ``avila_ml.cpu_accel._kernels`` and called through
``ctypes`` (which releases the GIL around each call).

Each kernel is one pass over memory where the NumPy formula takes two to four (compare, cast,
multiply, NaN scan). Large arrays are cut into one contiguous range per CPU thread inside the C
call, on an OpenMP team: the same OpenMP runtime (the system's ``libgomp``) and thread pool as
oneDNN's kernels, loaded with its threads waiting passively like oneDNN's
(``_dnnl._passive_openmp``). Not the Python pool of ``ops._cpu_threads.over_batch``: handing a
part to a Python thread costs a GIL round trip, ~44 us on the 2-core AMD EPYC, against the
~60 us the whole in-place ReLU of a (32, 32, 32, 32) float32 array takes on the OpenMP team
(2026-12-07). Every function takes
same-shaped C-contiguous float32 or float64 NumPy arrays and returns False, having written
nothing, where it does not apply (no compiled kernels, another dtype or layout, switched off
with ``AVILA_ML_NATIVE_KERNELS=0`` or ``ENABLED = False``): the caller then runs its NumPy
formula, which stays the reference in the tests. The results are PyTorch's, NaN and infinities
included (``_kernels.c`` lists each formula).

No PyTorch counterpart as a module: PyTorch's own CPU kernels are compiled C++ (ATen), which is
what these stand in for.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import threading

import numpy as np

__all__ = ["available", "absent_reason", "relu_forward", "relu_backward", "leaky_relu_backward", "ENABLED"]

ENABLED = os.environ.get("AVILA_ML_NATIVE_KERNELS", "1") != "0"
_VERSION = 2  # avila_kernels_version() of the _kernels.c this file was written for
_SPLIT_MIN = 1 << 16  # from this many elements the range is split over the CPU threads
_state: dict = {}
_P, _N = ctypes.c_void_p, ctypes.c_ssize_t
_SIGNATURES = {  # name: argument types after the pointers' count
    "relu_fwd": [_P, _P, _N, ctypes.c_int],
    "relu_bwd": [_P, _P, _P, _N, ctypes.c_int],
    "leaky_bwd": [_P, _P, _P, None, _N, ctypes.c_int],  # None: the scalar in the array's dtype
}
_SCALAR = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _load():
    if "lib" in _state:
        return _state["lib"]
    lib, reason = None, None
    spec = importlib.util.find_spec("avila_ml.cpu_accel._kernels")
    if spec is None or not spec.origin:
        reason = ("the compiled kernels (avila_ml.cpu_accel._kernels) are not built: reinstall with a C "
                  "compiler present (pip install -e . builds them)")
    else:
        from . import _dnnl
        # oneDNN first, where installed: it loads the OpenMP runtime with passive waits (and
        # records that for its own use); else the runtime is loaded here the same way
        loaded = _dnnl.load() is not None
        try:
            if loaded:
                cdll = ctypes.CDLL(spec.origin)
            else:
                with _dnnl._passive_openmp():
                    cdll = ctypes.CDLL(spec.origin)
            version = cdll.avila_kernels_version()
        except (OSError, AttributeError) as exc:
            reason = f"the compiled kernels at {spec.origin} could not be loaded: {exc}"
        else:
            if version != _VERSION:
                reason = (f"the compiled kernels at {spec.origin} are version {version}, this code needs "
                          f"{_VERSION}: rebuild them (pip install -e .)")
            else:
                _dnnl.guard_fork(cdll)
                lib = {}
                for name, args in _SIGNATURES.items():
                    for dtype, suffix in _SUFFIX.items():
                        fn = getattr(cdll, f"avila_{name}_{suffix}")
                        fn.argtypes = [_SCALAR[dtype] if a is None else a for a in args]
                        fn.restype = None
                        lib[(name, dtype)] = fn
    _state["lib"], _state["reason"] = lib, reason
    return lib


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


def _kernel(name, *arrays):
    """The C function for ``arrays`` (same shape and dtype, C-contiguous, writeable output
    last), or None."""
    if not ENABLED:
        return None
    first = arrays[0]
    if not isinstance(first, np.ndarray) or first.dtype not in _SUFFIX:
        return None
    for a in arrays:
        if not (isinstance(a, np.ndarray) and a.dtype == first.dtype and a.shape == first.shape
                and a.flags.c_contiguous):
            return None
    if not arrays[-1].flags.writeable:
        return None
    lib = _load()
    return None if lib is None else lib[(name, first.dtype)]


def _run(fn, arrays, scalars=()):
    """``fn(pointers..., scalars..., count, threads)``: one C call over the flat arrays, on as
    many OpenMP threads as BLAS uses for large arrays (one inside a pool thread of
    ``ops._cpu_threads``, whose siblings hold the other cores)."""
    from ..ops._cpu_threads import blas_threads
    from . import _dnnl
    n = arrays[0].size
    threads = 1
    if (n >= _SPLIT_MIN and not threading.current_thread().name.startswith("avila-cpu")
            and not _dnnl.forked()):  # (a forked child: one thread, see _dnnl.guard_fork)
        threads = blas_threads()
    fn(*[a.ctypes.data for a in arrays], *scalars, n, threads)
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
    fn = _kernel("relu_fwd", x, out)
    return fn is not None and _run(fn, (x, out))


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
    fn = _kernel("relu_bwd", g, y, out)
    return fn is not None and _run(fn, (g, y, out))


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
    fn = _kernel("leaky_bwd", g, x, out)
    return fn is not None and _run(fn, (g, x, out), (slope,))
