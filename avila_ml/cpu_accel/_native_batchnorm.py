"""Batch normalisation (training mode) through the compiled kernels (``kernels/batchnorm.c``):
the statistics and the affine map in one call, the three gradients in another, channels split
over the OpenMP team, sums accumulated in double. Used by ``ops/normalization.py``'s batch-norm
path for C-contiguous float32 / float64 NumPy arrays; each function returns None where the
kernels are absent or switched off (``_native``), and the NumPy passes run instead.

Against those NumPy passes (which keep ``x - mean`` as a full-size array for the backward) the
kernels read x once from memory per pass over a channel and keep nothing but per-channel
statistics. PyTorch: ``torch.native_batch_norm`` / ``torch.ops.aten.native_batch_norm_backward``
on the CPU.
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import _native

__all__ = ["forward", "backward", "channel_sum"]

_P, _N, _T = _native.PTR, _native.COUNT, _native.THREADS
_native.register("bn_fwd", _P, _P, _P, _P, _P, _P, _P, ctypes.c_double, _N, _N, _N, _T)
_native.register("bn_bwd", _P, _P, _P, _P, _P, _P, _P, _P, _N, _N, _N, _T)
_native.register("chan_sum", _P, _P, _N, _N, _N, _T)


def _vector(v, c, dtype):
    """``v`` as a C-contiguous (C,) array of ``dtype``, or None for None; False if it does not fit."""
    if v is None:
        return None
    v = np.ascontiguousarray(v, dtype=dtype).reshape(-1)
    return v if v.size == c else False


def forward(x3, weight, bias, eps):
    """``(y, mean, var, rstd)`` of batch norm over axes (0, 2) of the (N, C, S) array ``x3``
    (mean, var -- biased --, rstd as (C,) arrays), or None where the kernels do not apply.

    Math: ``mean = sum(x) / M``, ``var = sum((x - mean)^2) / M``, ``rstd = (var + eps)^-1/2``,
    ``y = x (rstd w) + (b - mean rstd w)``, M = N S. PyTorch: ``torch.native_batch_norm``
    (training).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_batchnorm
        >>> x = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
        >>> out = _native_batchnorm.forward(x, None, None, 0.0)
        >>> out is None or (out[1].tolist(), out[2].tolist()) == ([2.5, 4.5], [4.25, 4.25])
        True
    """
    if not isinstance(x3, np.ndarray) or x3.ndim != 3:
        return None
    n, c, s = x3.shape
    y = np.empty(x3.shape, x3.dtype) if x3.dtype in (np.float32, np.float64) else None
    if y is None:
        return None
    fn = _native.kernel_for("bn_fwd", x3, y)
    w, b = _vector(weight, c, x3.dtype), _vector(bias, c, x3.dtype)
    if fn is None or w is False or b is False:
        return None
    mean, var, rstd = (np.empty(c, x3.dtype) for _ in range(3))
    ptr = lambda a: None if a is None else _native.addr(a)  # noqa: E731 - NULL for an absent weight/bias
    fn(_native.addr(x3), ptr(w), ptr(b), _native.addr(y), _native.addr(mean), _native.addr(var), _native.addr(rstd),
       float(eps), n, c, s, _native.threads_for(x3.size))
    return y, mean, var, rstd


def backward(g3, x3, mean, rstd, weight, need_x=True):
    """``(dx or None, sgx, sg)``: batch norm's input gradient (if ``need_x``), the weight
    gradient ``sgx = sum(g xhat)`` and the bias gradient ``sg = sum(g)`` per channel, from the
    output gradient ``g3`` and the forward's input ``x3`` (both (N, C, S)) with its ``mean`` and
    ``rstd``; None where the kernels do not apply.

    Math: ``dx = (g - (x - mean) rstd sgx / M - sg / M) rstd w``. PyTorch:
    ``torch.ops.aten.native_batch_norm_backward`` (training).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_batchnorm
        >>> x = np.arange(8, dtype=np.float64).reshape(2, 2, 2)
        >>> fwd = _native_batchnorm.forward(x, None, None, 0.0)
        >>> out = None if fwd is None else _native_batchnorm.backward(np.ones_like(x), x, fwd[1], fwd[3], None)
        >>> out is None or (np.allclose(out[0], 0.0) and out[2].tolist() == [4.0, 4.0])
        True
    """
    if not (isinstance(x3, np.ndarray) and isinstance(g3, np.ndarray) and x3.ndim == 3
            and g3.shape == x3.shape):
        return None
    n, c, s = x3.shape
    dx = np.empty(x3.shape, x3.dtype) if need_x else None
    sg, sgx = np.empty(c, x3.dtype), np.empty(c, x3.dtype)
    fn = _native.kernel_for("bn_bwd", g3, x3, mean, rstd, sg)
    w = _vector(weight, c, x3.dtype)
    if fn is None or w is False or mean.shape != (c,) or rstd.shape != (c,):
        return None
    if dx is not None and _native.kernel_for("bn_bwd", x3, dx) is None:
        return None
    ptr = lambda a: None if a is None else _native.addr(a)  # noqa: E731
    fn(_native.addr(g3), _native.addr(x3), _native.addr(mean), _native.addr(rstd), ptr(w), ptr(dx), _native.addr(sg),
       _native.addr(sgx), n, c, s, _native.threads_for(x3.size))
    return dx, sgx, sg


def channel_sum(a):
    """``a.sum(axis=(0, 2, 3, ...))`` of an (N, C, ...) C-contiguous float32/float64 array as a
    (C,) array of its dtype (accumulated in double, channels over the OpenMP team), or None where
    the kernels do not apply. A convolution's bias gradient.

    Math: ``out[c] = sum_{n, i} a[n, c, i]``. PyTorch: ``grad_output.sum((0, 2, 3))`` in
    ``convolution_backward``'s bias gradient.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_batchnorm
        >>> r = _native_batchnorm.channel_sum(np.ones((2, 3, 4), np.float32))
        >>> r is None or r.tolist() == [8.0, 8.0, 8.0]
        True
    """
    if not isinstance(a, np.ndarray) or a.ndim < 2:
        return None
    n, c = a.shape[:2]
    out = np.empty(c, a.dtype) if a.dtype in (np.float32, np.float64) else None
    fn = None if out is None else _native.kernel_for("chan_sum", a, out)
    if fn is None:
        return None
    fn(_native.addr(a), _native.addr(out), n, c, a.size // max(n * c, 1), _native.threads_for(a.size))
    return out
