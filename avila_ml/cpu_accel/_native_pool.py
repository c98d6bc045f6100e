"""2-d max pooling through the compiled kernels (``kernels/pooling.c``): the forward with each
window's argmax code (the row-major kernel offset ``ops/pooling.py`` keeps), and its adjoint,
planes (n, c) split over the OpenMP team. Used by ``ops/pooling.py`` for C-contiguous float32 /
float64 NumPy arrays; each function returns None where the kernels are absent, switched off
(``_native``) or do not apply, and the NumPy running-maximum passes run instead.

One pass over the input and one over the output, where the NumPy form takes a strided pass per
kernel offset and axis (and a second, NaN-exact one when a NaN occurs). PyTorch:
``torch.nn.functional.max_pool2d`` / ``max_pool2d_with_indices_backward`` on the CPU.
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import _native

__all__ = ["max_pool2d_forward", "max_pool2d_backward"]

_P, _N, _T = _native.PTR, _native.COUNT, _native.THREADS
_native.register("maxpool2d_fwd", _P, _P, _P, ctypes.c_int, _P, _N, _T)
_native.register("maxpool2d_bwd", _P, _P, ctypes.c_int, _P, _P, _N, _T)
_CODE_SIZES = {np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 4}


def _geometry(x_shape, k, s, p, dl, o):
    return np.array([x_shape[2], x_shape[3], o[0], o[1], k[0], k[1], s[0], s[1], p[0], p[1], dl[0], dl[1]],
                    dtype=np.int64)


def max_pool2d_forward(x, k, s, p, dl, o, code_dtype):
    """``(y, code)`` of 2-d max pooling of the (N, C, H, W) array ``x`` with kernel ``k``,
    stride ``s``, padding ``p`` (``-inf``: never chosen), dilation ``dl`` and output size ``o``;
    ``code`` the row-major kernel offset of each window's maximum in ``code_dtype`` (int8, int16
    or int32). None where the kernels do not apply.

    Math: ``y[n, c, i, j] = max_{a, b} x[n, c, i s0 - p0 + a d0, j s1 - p1 + b d1]`` over the
    positions inside the input, the first maximum on ties, the last NaN if any (PyTorch's CPU
    rule). PyTorch: ``torch.nn.functional.max_pool2d``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_pool
        >>> x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]], np.float32)
        >>> out = _native_pool.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), (1, 1), np.int8)
        >>> out is None or (float(out[0][0, 0, 0, 0]), int(out[1][0, 0, 0, 0])) == (3.0, 1)
        True
    """
    if not isinstance(x, np.ndarray) or x.ndim != 4 or np.dtype(code_dtype) not in _CODE_SIZES:
        return None
    y = np.empty(x.shape[:2] + tuple(o), x.dtype) if x.dtype in (np.float32, np.float64) else None
    fn = None if y is None else _native.kernel_for("maxpool2d_fwd", x, y)
    if fn is None:
        return None
    code = np.empty(y.shape, code_dtype)
    geom = _geometry(x.shape, k, s, p, dl, o)
    fn(_native.addr(x), _native.addr(y), _native.addr(code), _CODE_SIZES[code.dtype], _native.addr(geom),
       x.shape[0] * x.shape[1], _native.threads_for(x.size))
    return y, code


def max_pool2d_backward(g, code, x_shape, k, s, p, dl):
    """The input gradient of 2-d max pooling: zeros of ``x_shape`` with ``g`` added at each
    window's argmax (``code`` from :func:`max_pool2d_forward`); None where the kernels do not
    apply.

    Math: ``gx[n, c, argmax(i, j)] += g[n, c, i, j]``. PyTorch:
    ``torch.ops.aten.max_pool2d_with_indices_backward``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_pool
        >>> code = np.array([[[[1]]]], np.int8); g = np.array([[[[5.0]]]], np.float32)
        >>> gx = _native_pool.max_pool2d_backward(g, code, (1, 1, 2, 2), (2, 2), (2, 2), (0, 0), (1, 1))
        >>> gx is None or gx.reshape(-1).tolist() == [0.0, 5.0, 0.0, 0.0]
        True
    """
    if not (isinstance(g, np.ndarray) and isinstance(code, np.ndarray) and g.ndim == 4 and code.shape == g.shape
            and code.dtype in _CODE_SIZES and code.flags.c_contiguous and len(x_shape) == 4):
        return None
    gx = np.empty(tuple(x_shape), g.dtype) if g.dtype in (np.float32, np.float64) else None
    fn = None if gx is None else _native.kernel_for("maxpool2d_bwd", g, gx)
    if fn is None:
        return None
    geom = _geometry(x_shape, k, s, p, dl, g.shape[2:])
    fn(_native.addr(g), _native.addr(code), _CODE_SIZES[code.dtype], _native.addr(gx), _native.addr(geom),
       x_shape[0] * x_shape[1], _native.threads_for(gx.size))
    return gx
