"""A fast float32 error function (and the normal CDF and exact GELU built on it) from NumPy
ufuncs, for CPUs without the oneDNN accelerator.

Why: ``scipy.special.erf`` on float32 converts each element to float64 and calls a scalar
routine (about 10 ns per element); the exact GELU of a transformer's MLP spends most of its time
there. Here

    erf(x) = a P(a²) / Q(a²),   a = clip(x, -3.92, 3.92),

with P of degree 5 and Q of degree 5 in a² (Q(0) = 1, Q > 0), fitted for this module by a
weighted least-squares iteration on the relative error of erf(x)/x over [0, 3.92]: the fit's own
relative error is below 2e-8 (0.16 float32 ulp); evaluated in float32 the result is within
about 3 ulps of the true value (tests/test_cpu_accel_eltwise.py checks it against float64).
Beyond 3.92 erf rounds to ±1 in float32, which the clipped formula gives; NaN stays NaN. Odd in
x by construction, and relative accuracy near 0 holds since the formula is a times a ratio.

The ~25 passes (Horner steps with ``out=``) run over cache-sized chunks, so each pass reads and
writes L2 instead of memory: about 5x faster than SciPy's float32 ``erf`` here.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["erf", "normal_cdf", "gelu", "gelu_forward", "gelu_backward"]

_CLIP = 3.92
# ascending powers of t = a²
_P = (1.1283791461572865, 0.19040666138532097, 0.052748754135785905, 0.003765626576071172,
      0.0002848831564311906, 2.0500886733498813e-06)
_Q = (1.0, 0.5020762510521597, 0.11410919686404324, 0.01496923592262917, 0.0011625382300559216,
      3.8091751829005815e-05)
_CHUNK = 1 << 16  # elements per chunk: the few float32 temporaries stay in L2
_COEFS: dict = {}  # id of _ERF / _CDF -> their 12 coefficients as one array (the compiled kernel)


def _scaled(coefs, s):
    """Coefficients of c(t * s) as a polynomial in t."""
    return tuple(np.float32(c * s ** k) for k, c in enumerate(coefs))


# erf: a P(a²)/Q(a²); normal CDF - 1/2 = erf(x/√2)/2 = x P(x²/2) / (2√2 Q(x²/2))
_ERF = (_scaled(_P, 1.0), _scaled(_Q, 1.0), np.float32(_CLIP))
_CDF = (tuple(np.float32(c / (2 * math.sqrt(2.0))) for c in _scaled(_P, 0.5)), _scaled(_Q, 0.5),
        np.float32(_CLIP * math.sqrt(2.0)))


def _horner(coefs, t, out):
    np.multiply(t, coefs[-1], out=out)
    for c in coefs[-2:0:-1]:
        out += c
        out *= t
    out += coefs[0]


def _evaluate(x, params, add=None, times_x=False):
    """``a P(a²)/Q(a²) (+ add) (* x)`` elementwise, in chunks; ``x`` float32. One pass in the
    compiled kernel where built (``cpu_accel._native.erf_rational``, bitwise these passes)."""
    p, q, clip = params
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous:
        from ..cpu_accel import _native
        coefs = _COEFS.get(id(params))
        if coefs is None:
            coefs = _COEFS[id(params)] = np.array(p + q, dtype=np.float32)
        out = _native.erf_rational(x, coefs, clip, 0.0 if add is None else add, times_x)
        if out is not None:
            return out
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, np.float32)
    n = flat.size
    m = min(n, _CHUNK)
    a, t, u, v = (np.empty(m, np.float32) for _ in range(4))
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        k = e - s
        aa, tt, uu, vv = a[:k], t[:k], u[:k], v[:k]
        np.clip(flat[s:e], -clip, clip, out=aa)
        np.multiply(aa, aa, out=tt)
        _horner(p, tt, uu)
        _horner(q, tt, vv)
        uu *= aa
        o = out[s:e]
        np.divide(uu, vv, out=o)
        if add is not None:
            o += add
        if times_x:
            o *= flat[s:e]
    return out.reshape(np.shape(x))


def erf(x):
    """erf of a float32 NumPy array, in float32 (within a few ulps; module docstring).

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends._erf_float32 import erf
        >>> np.round(erf(np.array([-np.inf, 0.0, 0.5, 4.0], np.float32)), 6)
        array([-1.    ,  0.    ,  0.5205,  1.    ], dtype=float32)
    """
    return _evaluate(x, _ERF)


def normal_cdf(x):
    """Φ(x) = (1 + erf(x/√2)) / 2 of a float32 NumPy array, in float32.

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends._erf_float32 import normal_cdf
        >>> np.round(normal_cdf(np.array([-10.0, 0.0, 1.0], np.float32)), 4)
        array([0.    , 0.5   , 0.8413], dtype=float32)
    """
    return _evaluate(x, _CDF, add=np.float32(0.5))


def gelu(x):
    """Exact GELU x Φ(x) of a float32 NumPy array, in float32 (``torch.nn.functional.gelu``).

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends._erf_float32 import gelu
        >>> np.round(gelu(np.array([-1.0, 0.0, 1.0], np.float32)), 4)
        array([-0.1587,  0.    ,  0.8413], dtype=float32)
    """
    return _evaluate(x, _CDF, add=np.float32(0.5), times_x=True)


_F64_UNUSED = np.zeros(12)  # the float64 kernel takes libm's erf: no coefficients


def gelu_backward(g, x):
    """Exact GELU's input gradient ``g (Φ(x) + x φ(x))`` of same-shaped C-contiguous float32 or
    float64 NumPy arrays by the compiled kernel (one pass; float32 with this module's normal CDF,
    float64 with libm's erf), or None where it does not apply (not built, other dtypes or
    layouts): the caller then runs its NumPy passes.

    Math: ``dx = g (Φ(x) + x exp(-x²/2) / √(2π))``. PyTorch: ``torch.ops.aten.gelu_backward``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends._erf_float32 import gelu_backward
        >>> dx = gelu_backward(np.ones(2, np.float32), np.array([0.0, 1.0], np.float32))
        >>> dx is None or bool(np.allclose(dx, [0.5, 1.0833155], atol=1e-6))
        True
    """
    from ..cpu_accel import _native
    params = _kernel_params(x)
    return None if params is None else _native.gelu_backward(g, x, *params)


def gelu_forward(x):
    """Exact GELU ``x Φ(x)`` of a C-contiguous float32 or float64 NumPy array by the compiled
    kernel (AVX-512 / AVX2 clones; float32 with this module's normal CDF, not bitwise
    :func:`gelu`'s passes, float64 with libm's erf), or None where it does not apply.

    Math: ``y = x Φ(x)``. PyTorch: ``torch.nn.functional.gelu``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends._erf_float32 import gelu_forward
        >>> y = gelu_forward(np.array([-1.0, 0.0, 1.0], np.float32))
        >>> y is None or bool(np.allclose(y, [-0.1586553, 0.0, 0.8413447], atol=1e-6))
        True
    """
    from ..cpu_accel import _native
    params = _kernel_params(x)
    return None if params is None else _native.gelu_forward(x, *params)


def _kernel_params(x):
    """(coefficients, clip) of the compiled GELU kernels for x's dtype, or None."""
    if x.dtype == np.float64:
        return _F64_UNUSED, 0.0
    if x.dtype != np.float32:
        return None
    p, q, clip = _CDF
    coefs = _COEFS.get(id(_CDF))
    if coefs is None:
        coefs = _COEFS[id(_CDF)] = np.array(p + q, dtype=np.float32)
    return coefs, clip
