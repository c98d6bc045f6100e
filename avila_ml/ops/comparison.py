"""Closeness and equality tests: ``isclose``, ``allclose``, ``equal``."""
from __future__ import annotations

import numpy as np

from ..backends import backend_of
from ..tensor import Tensor
from .elementwise import _prepare

__all__ = ["isclose", "allclose", "equal"]


def isclose(input, other, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False):
    """Elementwise ``|input - other| <= atol + rtol * |other|`` (``torch.isclose``).

    Math: infinities are close only to the same infinity; NaN is close to NaN only with
    ``equal_nan=True``. Both tensors must have the same dtype (PyTorch's rule); the result
    is a bool tensor of the broadcast shape.

    Example:
        >>> import avila_ml as am
        >>> am.isclose(am.tensor([1.0, 2.0, float("nan")]), am.tensor([1.0 + 1e-7, 2.1, float("nan")]))
        tensor([ True, False, False])
    """
    if isinstance(input, Tensor) and isinstance(other, Tensor) and input.dtype != other.dtype:
        raise RuntimeError(f"isclose: expected both inputs to have the same dtype, got {input.dtype} "
                           f"and {other.dtype}")
    if rtol < 0 or atol < 0:
        raise RuntimeError(f"isclose: rtol and atol must be non-negative, got rtol={rtol}, atol={atol}")
    a, b = _prepare(input, other, "isclose")
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise RuntimeError(f"isclose: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast") from None
    x, y = a.array, b.array
    xp = backend_of(x).xp
    if x.dtype.kind == "b":
        return Tensor._wrap(xp.asarray(x == y))
    if x.dtype.kind in "iu":
        # integers: compare in float64 as PyTorch does (exact for |v| < 2**53)
        x, y = x.astype(np.float64), y.astype(np.float64)
    eq = x == y
    with np.errstate(invalid="ignore", over="ignore"):
        finite = xp.isfinite(x) & xp.isfinite(y)
        close = eq | (finite & (xp.abs(x - y) <= atol + rtol * xp.abs(y)))
    if equal_nan:
        close = close | (xp.isnan(x) & xp.isnan(y))
    return Tensor._wrap(xp.asarray(close))


def allclose(input, other, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> bool:
    """True when every element pair is close in the sense of :func:`isclose` (``torch.allclose``).

    Example:
        >>> import avila_ml as am
        >>> am.allclose(am.tensor([1.0, 2.0]), am.tensor([1.0, 2.0 + 1e-9]))
        True
    """
    return bool(isclose(input, other, rtol, atol, equal_nan).array.all())


def equal(input, other) -> bool:
    """True when both tensors have the same shape and equal elements (``torch.equal``).

    Math: ``shape(a) == shape(b)`` and ``a[i] == b[i]`` for every ``i`` (values compared
    after type promotion; NaN is never equal).

    Example:
        >>> import avila_ml as am
        >>> am.equal(am.tensor([1, 2]), am.tensor([1, 2])), am.equal(am.tensor([1, 2]), am.tensor([1]))
        (True, False)
    """
    if not isinstance(input, Tensor) or not isinstance(other, Tensor):
        raise TypeError(f"equal: expected two Tensors, got {type(input).__name__} and {type(other).__name__}")
    if tuple(input.shape) != tuple(other.shape):
        return False
    a, b = _prepare(input, other, "equal")
    return bool((a.array == b.array).all())
