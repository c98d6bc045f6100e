"""Process-wide settings that PyTorch scripts set at the top: CPU threads, float32 matmul
precision, and ``compile`` (which here returns the model unchanged: there is no JIT).

``set_num_threads`` acts through ``threadpoolctl`` (the BLAS and OpenMP pools NumPy uses, and
the Python threads of the chunked CPU convolution/attention); without ``threadpoolctl`` the
number is recorded and announced as having no effect on an already-loaded BLAS (set
``OMP_NUM_THREADS`` before starting Python instead).
"""
from __future__ import annotations

import os
import warnings

__all__ = ["set_num_threads", "get_num_threads", "set_num_interop_threads", "get_num_interop_threads",
           "set_float32_matmul_precision", "get_float32_matmul_precision", "compile"]

_state = {"threads": None, "interop": None, "limiter": None, "compile_noted": False}
_PRECISIONS = ("highest", "high", "medium")


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for CPU math (``torch.set_num_threads``).

    Sets the BLAS and OpenMP thread pools through ``threadpoolctl`` and the number of Python
    threads the chunked convolution and blocked attention share work among. Without
    ``threadpoolctl`` a ``UserWarning`` says it cannot take effect.

    Example:
        >>> import avila_ml as am
        >>> before = am.get_num_threads()
        >>> am.set_num_threads(1); am.get_num_threads()
        1
        >>> am.set_num_threads(before)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RuntimeError(f"set_num_threads: expected a positive integer number of threads, got {n!r}")
    from .ops import _cpu_threads
    ctl = _cpu_threads.rescan()  # every pool loaded by now, not only those of the first probe
    _state["threads"] = n
    _cpu_threads._state["n"] = n
    if ctl is None:
        warnings.warn("set_num_threads: threadpoolctl is not installed, so the BLAS thread pool of this "
                      "process cannot be changed; set OMP_NUM_THREADS before starting Python", stacklevel=2)
        return
    # threadpoolctl's limit holds until restored; keep the handle so nothing restores it
    _state["limiter"] = ctl.limit(limits=n)


def get_num_threads() -> int:
    """The number of threads CPU math uses (``torch.get_num_threads``).

    Math: the value given to :func:`set_num_threads`, else the BLAS pool's size.

    Example:
        >>> import avila_ml as am
        >>> am.get_num_threads() >= 1
        True
    """
    if _state["threads"] is not None:
        return _state["threads"]
    from .ops import _cpu_threads
    return _cpu_threads.blas_threads()


def set_num_interop_threads(n: int) -> None:
    """Record the inter-op thread count (``torch.set_num_interop_threads``); Avila ML runs
    ops one after another, so this has no effect beyond :func:`get_num_interop_threads`.

    Example:
        >>> import avila_ml as am
        >>> am.set_num_interop_threads(2); am.get_num_interop_threads()
        2
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RuntimeError(f"set_num_interop_threads: expected a positive integer, got {n!r}")
    _state["interop"] = n


def get_num_interop_threads() -> int:
    """The inter-op thread count (``torch.get_num_interop_threads``); see
    :func:`set_num_interop_threads`.

    Example:
        >>> import avila_ml as am
        >>> am.get_num_interop_threads() >= 1
        True
    """
    return _state["interop"] or os.cpu_count() or 1


def set_float32_matmul_precision(precision: str) -> None:
    """Set the internal precision of float32 matrix products (``torch.set_float32_matmul_precision``).

    ``"highest"`` (the default) computes in float32; ``"high"``/``"medium"`` allow TF32 in
    PyTorch. Avila ML's products are always full float32 (NumPy on the CPU; CuPy's cuBLAS
    without TF32 unless ``CUPY_TF32=1`` was set before CuPy was imported), so the setting is
    recorded (and mirrored in ``backends.cuda.matmul.allow_tf32``) but changes no result.

    Example:
        >>> import avila_ml as am
        >>> am.set_float32_matmul_precision("high"); am.get_float32_matmul_precision()
        'high'
        >>> am.backends.cuda.matmul.allow_tf32
        True
        >>> am.set_float32_matmul_precision("highest")
    """
    if precision not in _PRECISIONS:
        raise RuntimeError(f"set_float32_matmul_precision: expected one of {_PRECISIONS}, got {precision!r}")
    from .backends import cuda as _cuda_flags
    _cuda_flags.matmul._precision = precision


def get_float32_matmul_precision() -> str:
    """The value set by :func:`set_float32_matmul_precision` (``torch.get_float32_matmul_precision``).

    Example:
        >>> import avila_ml as am
        >>> am.get_float32_matmul_precision()
        'highest'
    """
    from .backends import cuda as _cuda_flags
    return _cuda_flags.matmul._precision


def compile(model=None, *, fullgraph: bool = False, dynamic=None, backend="inductor", mode=None,
            options=None, disable: bool = False):
    """Return ``model`` unchanged (``torch.compile``): Avila ML has no JIT compiler.

    Scripts that call ``model = torch.compile(model)`` run as they are; the first call
    announces once (``UserWarning``) that nothing was compiled. Used as a decorator
    (``@am.compile`` or ``@am.compile(mode=...)``) it returns the function unchanged.

    Math: ``compile(f)(x) == f(x)``, with the same speed.

    Example:
        >>> import avila_ml as am, warnings
        >>> net = am.nn.Linear(2, 2)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     am.compile(net) is net
        True
    """
    if not _state["compile_noted"]:
        _state["compile_noted"] = True
        warnings.warn("avila_ml.compile: there is no JIT compiler in Avila ML; the model runs unchanged "
                      "(eager)", UserWarning, stacklevel=2)
    if model is None:
        return lambda m: m
    return model
