"""Layer normalization over rows as compiled kernels (``kernels/layernorm.c``, bound through
:mod:`._native`): the forward with its statistics in one call, and the three gradients in
another, rows split over the OpenMP team.

The arrays are (rows, D), C-contiguous, float32 or float64 NumPy arrays, each row normalised over
its D values; weight and bias are D-vectors or None. The functions return None where the kernels
do not apply (not built, switched off, another dtype or layout): the caller then runs its NumPy
formula, which stays the reference in the tests. Row statistics and the column sums of the
weight and bias gradients accumulate in double for both dtypes; the column sums are added per
thread, then over threads in a fixed order (deterministic for a given thread count).

PyTorch: ``torch.ops.aten.native_layer_norm`` / ``native_layer_norm_backward`` (their CPU
kernels in ATen are what these stand in for).
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import _native

__all__ = ["layer_norm_forward", "layer_norm_backward"]

_P, _N, _T = _native.PTR, _native.COUNT, _native.THREADS
# x, w, b, y, mean, mean_lo, rstd, eps, rows, D, threads
_native.register("layer_fwd", _P, _P, _P, _P, _P, _P, _P, ctypes.c_double, _N, _N, _T)
# g, x, mean, mean_lo, rstd, w, dx, dw, db, work, rows, D, threads
_native.register("layer_bwd", _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _N, _N, _T)


def _ptr(a):
    return None if a is None else _native.addr(a)


def layer_norm_forward(x, weight, bias, eps):
    """``(y, mean, rstd, mean_lo)`` of layer norm over the rows of ``x`` (rows, D), or None
    where the kernels do not apply.

    Math: per row, ``mean = sum(x) / D``, ``var = sum((x - mean)^2) / D`` (biased),
    ``rstd = 1 / sqrt(var + eps)``, ``y = (x - mean) rstd weight + bias`` (weight, bias
    optional). ``mean``, ``rstd`` and ``mean_lo`` have shape (rows,): ``mean`` rounded to the
    dtype, ``mean_lo`` what that rounding lost (0 in float64; the backward takes it, so rows
    with a large mean stay accurate in float32).

    PyTorch: ``torch.ops.aten.native_layer_norm`` (which returns y, mean, rstd).

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_norm
        >>> x = np.array([[1.0, 3.0], [0.0, 10.0]], np.float32)
        >>> out = _native_norm.layer_norm_forward(x, None, None, 1e-5)  # None without the kernels
        >>> out is None or (np.allclose(out[0], [[-1, 1], [-1, 1]], atol=1e-4) and out[1].tolist() == [2.0, 5.0])
        True
    """
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.size == 0:
        return None
    rows, d = x.shape
    for v in (weight, bias):
        if v is not None and v.shape != (d,):
            return None
    y = np.empty_like(x)
    fn = _native.kernel_for("layer_fwd", *(a for a in (x, weight, bias) if a is not None), y)
    if fn is None:
        return None
    stats = np.empty((3, rows), x.dtype)  # mean, mean_lo, rstd
    mean, mean_lo, rstd = stats
    fn(_native.addr(x), _ptr(weight), _ptr(bias), _native.addr(y), _native.addr(mean), _native.addr(mean_lo),
       _native.addr(rstd), float(eps), rows, d, _native.threads_for(x.size))
    return y, mean, rstd, mean_lo


def layer_norm_backward(g, x, mean, rstd, weight, need_x=True, need_weight=True, need_bias=True, mean_lo=None):
    """``(dx, dweight, dbias)`` of layer norm over the rows of ``x`` (rows, D) from the forward's
    ``mean``, ``rstd`` and ``mean_lo`` (rows,; ``mean_lo`` None: zeros) and the output gradient
    ``g``; a gradient not asked for (or ``dweight`` without a weight) is None. None where the
    kernels do not apply.

    Math: ``xhat = (x - mean) rstd``, ``gw = g weight``,
    ``dx = rstd (gw - sum(gw) / D - xhat sum(gw xhat) / D)`` per row,
    ``dweight = sum_rows(g xhat)``, ``dbias = sum_rows(g)``.

    PyTorch: ``torch.ops.aten.native_layer_norm_backward``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_norm
        >>> x = np.array([[1.0, 3.0]]); g = np.array([[1.0, 0.0]])
        >>> y, mean, rstd, lo = _native_norm.layer_norm_forward(x, None, None, 0.0) or (None, np.array([2.0]), np.array([1.0]), None)
        >>> out = _native_norm.layer_norm_backward(g, x, mean, rstd, None, mean_lo=lo)
        >>> out is None or (np.allclose(out[0], [[0.0, 0.0]]) and out[2].tolist() == [1.0, 0.0])
        True
    """
    if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.size and isinstance(g, np.ndarray)
            and g.shape == x.shape):
        return None
    rows, d = x.shape
    if mean_lo is None:
        mean_lo = np.zeros_like(mean)
    if (mean.shape != (rows,) or rstd.shape != (rows,) or mean_lo.shape != (rows,)
            or (weight is not None and weight.shape != (d,))):
        return None
    need_weight = need_weight and weight is not None
    dx = np.empty_like(x) if need_x else None
    dw = np.empty(d, x.dtype) if need_weight else None
    db = np.empty(d, x.dtype) if need_bias else None
    outs = [a for a in (dx, dw, db) if a is not None]
    if not outs:
        return None, None, None
    fn = _native.kernel_for("layer_bwd", *(a for a in (g, x, mean, mean_lo, rstd, weight) if a is not None), *outs)
    if fn is None:
        return None
    threads = _native.threads_for(x.size)
    work = np.empty((threads, 2 * d), np.float64) if (need_weight or need_bias) else None
    fn(_native.addr(g), _native.addr(x), _native.addr(mean), _native.addr(mean_lo), _native.addr(rstd), _ptr(weight),
       _ptr(dx), _ptr(dw), _ptr(db), _ptr(work), rows, d, threads)
    return dx, dw, db
