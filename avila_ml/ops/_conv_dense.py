"""Convolutions whose kernel covers the whole input: one matrix product each.

Where the kernel has the input's spatial size, with no padding, no dilation and one group,
the output has one position and every tap meets exactly one input position, so

    y[n, o]           = sum_(c, k) x[n, c, k] w[o, c, k]      y = X W^T   (X: N x CK, W: O x CK)
    gx[n, c, k]       = sum_o gy[n, o] w[o, c, k]              gx = gy W
    gw[o, c, k]       = sum_n gy[n, o] x[n, c, k]              gw = gy^T X

(any stride: a single output position never moves). The DCGAN's generator starts with such a
layer as a transposed convolution (``ConvTranspose2d(100, 256, 4)`` on a 1x1 input: its forward
is ``gx`` above) and its discriminator ends with one (``Conv2d(256, 1, 4)`` on 4x4). oneDNN runs
them as convolutions over a 4x4 window of one position: (32, 100, 1^2) -> (32, 256, 4^2) took
2.1 ms in its backward-data kernel and 2.4 ms for the weight gradient (one thread, AMD EPYC,
AVX2, in-process, loaded machine), where the same 13.1 M multiply-adds (26 MFLOP) as one float32
matrix product take ~0.35 ms. (bench_conv's "DCGAN G first" / "D last" rows: 0.36x / 0.50x of
PyTorch in conv `_6`.)

The arrays stay on their backend (``xp.matmul``), so NumPy and CuPy share this path; float32
NumPy products go through oneDNN's matmul where it is installed (``cpu_accel._matmul``): an
OpenBLAS product would restart OpenBLAS's worker threads, which every oneDNN convolution stops
(``_dnnl.stop_blas_spinning``), and on a loaded machine a 2-thread OpenBLAS product of this size
took 0.3 to 16 ms against oneDNN's steady one (in-process, not in a results file).
"""
from __future__ import annotations

import numpy as np

from ..backends import backend_of, mkldnn

__all__ = ["applies", "conv_forward", "conv_transpose", "conv_weight_grad"]


def applies(spatial, kernel, geom) -> bool:
    """True where the kernel covers the whole input (``spatial == kernel``) with no padding,
    dilation 1 and one group: the convolution is one matrix product."""
    return (tuple(spatial) == tuple(kernel) and geom.groups == 1 and geom.no_padding
            and all(d == 1 for d in geom.dilation))


def _product(a, b, trans_a=False, trans_b=False):
    """``op(a) @ op(b)`` of two C-contiguous matrices (``op``: transposed where asked), a new
    C-contiguous array: oneDNN's matmul for float32 NumPy arrays where available, else xp."""
    xp = backend_of(a).xp
    if (a.dtype == b.dtype == np.float32 and xp is np and mkldnn.enabled):
        from ..cpu_accel import _matmul
        M = a.shape[1] if trans_a else a.shape[0]
        N = b.shape[0] if trans_b else b.shape[1]
        out = np.empty((1, M, N), dtype=np.float32)
        if _matmul.matmul(a[None], b[None], out, trans_a=trans_a, trans_b=trans_b):
            return out[0]
    return xp.ascontiguousarray(xp.matmul(a.T if trans_a else a, b.T if trans_b else b))


def _c(a):
    return backend_of(a).xp.ascontiguousarray(a)


def conv_forward(x, w, geom):
    """``y (N, O, 1, ...) = X W^T`` for ``x (N, C, *K)`` and ``w (O, C, *K)``."""
    N, O = x.shape[0], w.shape[0]
    y = _product(_c(x).reshape(N, -1), _c(w).reshape(O, -1), trans_b=True)
    return y.reshape((N, O) + (1,) * (x.ndim - 2))


def conv_transpose(gy, w, geom, spatial):
    """``gx (N, C, *spatial) = gy W`` for ``gy (N, O, 1, ...)`` and ``w (O, C, *spatial)``."""
    N, O = gy.shape[0], gy.shape[1]
    gx = _product(_c(gy).reshape(N, O), _c(w).reshape(O, -1))
    return gx.reshape((N, w.shape[1]) + tuple(spatial))


def conv_weight_grad(x, gy, geom, kernel):
    """``gw (O, C, *kernel) = gy^T X`` for ``x (N, C, *kernel)`` and ``gy (N, O, 1, ...)``."""
    N, O = gy.shape[0], gy.shape[1]
    gw = _product(_c(gy).reshape(N, O), _c(x).reshape(N, -1), trans_a=True)
    return gw.reshape((O, x.shape[1]) + tuple(kernel))
