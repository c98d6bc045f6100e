"""The CPU accelerator: convolutions and other float32 primitives through oneDNN (the CPU
library PyTorch itself uses), called through ``ctypes`` on its C API and used automatically
when it is installed.

Install it with the ``cpu`` extra (``pip install 'avila-ml[cpu]'``: the CPU-only
``onednn-cpu-gomp`` wheel, Linux x86-64, which needs the system's ``libgomp.so.1``), or point
``AVILA_ML_DNNL_LIBRARY`` at any ``libdnnl.so.3``. Nothing is loaded until the first float32
CPU convolution; without the library the NumPy algorithms run (they stay the reference in the
tests) and a one-time warning says so. :func:`avila_ml.backends.set_conv_algorithm` chooses
``"onednn"`` explicitly or ``"auto"`` (oneDNN for float32 NumPy arrays when available).

What runs here, float32 only (float64 stays on NumPy): convolution forward, input gradient and
weight gradient in 1-4 spatial dims (4-d as kernel-time offsets stacked into channels,
``_conv.py``); eltwise activations -- GELU exact and tanh, SiLU, ELU, LeakyReLU, exp --
(``_eltwise.py``); softmax forward over the last dim (``_softmax.py``); layer norm forward and
backward (``_norm.py``); batched matmuls with ``exp``/multiply epilogues for the attention tiles
(``_matmul.py``); whole LSTM, GRU and Elman RNN layers, one call per layer-direction forward
and backward (``_rnn.py``). Each is used only where it measured faster than the NumPy path, and never
where oneDNN's kernel is its scalar reference code. oneDNN is loaded with its OpenMP threads
waiting passively (``_dnnl._passive_openmp``) unless the user chose a wait policy.

Separately from oneDNN, a few element-wise kernels are C compiled with the package (the
optional extension ``_kernels``, built by ``pip install`` where a C compiler is present; see
``_native.py``): ReLU forward and backward and LeakyReLU's backward, one pass over memory each on
the OpenMP threads; batch norm, 2-d max pooling, amax's gradient, a convolution's bias gradient
and large add/sub/mul/div (``_native.py``, ``_native_batchnorm.py``, ``_native_pool.py``); layer
norm forward and backward over rows (``_native_norm.py``); softmax, log-softmax and cross-entropy
over rows of the last axis, forward and backward (``_native_softmax.py``), used before oneDNN's
softmax paths; the SGD, RMSprop and Adam/AdamW updates (``_native_optim.py``).
:func:`kernels_available` says whether they are built.

Example:
    >>> import avila_ml as am
    >>> am.cpu_accel.is_available() in (True, False)
    True
"""
from __future__ import annotations

from . import _dnnl as dnnl
from . import _native

__all__ = ["is_available", "version", "library_path", "absent_reason", "kernels_available",
           "kernels_absent_reason"]


def is_available() -> bool:
    """True when oneDNN is installed and makes a CPU engine on this machine (it is then loaded;
    PyTorch's ``torch.backends.mkldnn.is_available``).

    Example:
        >>> import avila_ml as am
        >>> isinstance(am.cpu_accel.is_available(), bool)
        True
    """
    return dnnl.available()


def version():
    """oneDNN's version as ``(major, minor, patch)``, or None when it is not available
    (PyTorch: ``torch.backends.mkldnn`` has no version call; ``torch.__config__.show()`` prints it).

    Example:
        >>> import avila_ml as am
        >>> v = am.cpu_accel.version()
        >>> v is None or v[0] == 3
        True
    """
    return dnnl.version()


def library_path():
    """The ``libdnnl.so.3`` that is (or would be) loaded: ``$AVILA_ML_DNNL_LIBRARY``, else the one
    of an installed ``onednn-cpu-gomp``/``-iomp`` wheel; None if there is none (no PyTorch
    counterpart).

    Example:
        >>> import avila_ml as am
        >>> p = am.cpu_accel.library_path()
        >>> p is None or "dnnl" in p
        True
    """
    return dnnl.library_path()


def absent_reason():
    """Why oneDNN is not used, as a sentence, or None when it is (no PyTorch counterpart).

    Example:
        >>> import avila_ml as am
        >>> r = am.cpu_accel.absent_reason()
        >>> (r is None) == am.cpu_accel.is_available()
        True
    """
    return dnnl.absent_reason()


def kernels_available() -> bool:
    """True when the element-wise kernels compiled with the package (``kernels/*.c``: ReLU
    forward/backward, LeakyReLU backward) are built and switched on; without them the same ops
    run as NumPy passes (same results). Switch them off with ``AVILA_ML_NATIVE_KERNELS=0``. No
    PyTorch counterpart (PyTorch's CPU kernels are always compiled).

    Example:
        >>> import avila_ml as am
        >>> isinstance(am.cpu_accel.kernels_available(), bool)
        True
    """
    return _native.available()


def kernels_absent_reason():
    """Why the compiled element-wise kernels are not used, as a sentence, or None when they are
    (no PyTorch counterpart).

    Example:
        >>> import avila_ml as am
        >>> r = am.cpu_accel.kernels_absent_reason()
        >>> (r is None) == am.cpu_accel.kernels_available()
        True
    """
    return _native.absent_reason()
