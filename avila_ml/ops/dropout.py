"""Dropout (``torch.nn.functional.dropout`` and its channel variants, ``alpha_dropout``).

Masks come from the input's backend RNG (``input._backend.rand``), so ``am.manual_seed``
makes them reproducible. In training mode each kept element (or whole channel) is scaled by
1/(1-p) so the expectation is unchanged; outside training mode dropout is the identity.
``inplace=True`` writes into ``input`` (recorded in the graph when autograd tracks it; see
``ops.activation``).
"""
from __future__ import annotations

import math
import warnings

from .. import dtypes as _dt
from ..autograd import inplace as _inplace
from ..autograd.function import Function
from ..tensor import Tensor

__all__ = ["dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"]

_SELU_ALPHA_PRIME = 1.7580993408473766  # -scale * alpha of SELU: the value SELU saturates to


class MaskScale(Function):
    """y = x * m with a fixed (broadcastable) mask ``m`` that already holds the 1/(1-p) scale."""

    def forward(self, x, mask):
        self.mask = mask
        return x * mask

    def backward(self, g):
        return g * Tensor._wrap(self.mask)


def _check_p(p, op: str) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: dropout probability has to be between 0 and 1, but got {p!r}")
    return float(p)


def _check_input(input, op: str) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a Tensor as input, got {type(input).__name__}")
    if not _dt.np_is_floating(input.array.dtype):
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {input.dtype}")


def _keep_mask(input, shape, p: float):
    """Array of shape ``shape`` in ``input``'s dtype: 1/(1-p) where kept (probability 1-p), else 0."""
    dt = input.array.dtype
    b = input._backend
    if p == 1.0:
        return b.xp.zeros(shape, dtype=dt)
    u = b.rand(shape, dt)
    return (u >= dt.type(p)).astype(dt) * dt.type(1.0 / (1.0 - p))


def _apply(input, mask, inplace: bool):
    if inplace:
        if _inplace.needs_graph(input, ()):
            return _inplace.inplace(input, "dropout(inplace=True)", MaskScale.apply, mask)
        input.array *= mask
        return input._bump()
    return MaskScale.apply(input, mask)


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p)
    (``torch.nn.functional.dropout``).

    Math: y = x · m / (1-p), m ~ Bernoulli(1-p) elementwise; E[y] = x. Identity when
    ``training`` is False.

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0)
        >>> y = am.nn.functional.dropout(am.ones(8), p=0.5)
        >>> sorted(set(y.tolist()))
        [0.0, 2.0]
        >>> am.nn.functional.dropout(am.ones(2), training=False)
        tensor([1., 1.])
    """
    p = _check_p(p, "dropout")
    _check_input(input, "dropout")
    if not training or p == 0.0:
        return input
    return _apply(input, _keep_mask(input, input.shape, p), inplace)


def _channel_dropout(input, p, training, inplace, spatial: int, op: str):
    p = _check_p(p, op)
    _check_input(input, op)
    if input.ndim not in (spatial + 1, spatial + 2):
        raise RuntimeError(
            f"{op}: expected a {spatial + 1}-D (unbatched) or {spatial + 2}-D (batched) input of shape "
            f"(N, C, {', '.join('d%d' % (i + 1) for i in range(spatial))}), got shape {tuple(input.shape)}")
    if not training or p == 0.0:
        return input
    channel_dims = 2 if input.ndim == spatial + 2 else 1
    shape = tuple(input.shape[:channel_dims]) + (1,) * (input.ndim - channel_dims)
    return _apply(input, _keep_mask(input, shape, p), inplace)


def dropout1d(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Zero whole channels of a ``(N, C, L)`` or ``(C, L)`` input (``torch.nn.functional.dropout1d``).

    Math: y[n, c, :] = x[n, c, :] · m[n, c] / (1-p), m ~ Bernoulli(1-p).

    Example:
        >>> import avila_ml as am
        >>> y = am.nn.functional.dropout1d(am.ones(2, 4, 5), p=0.5)
        >>> bool(((y == 0).all(-1) | (y == 2).all(-1)).all())
        True
    """
    return _channel_dropout(input, p, training, inplace, 1, "dropout1d")


def dropout2d(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Zero whole channels of a ``(N, C, H, W)`` or ``(C, H, W)`` input
    (``torch.nn.functional.dropout2d``).

    A 3-D input is treated as ``(N, C, L)`` with a warning, as PyTorch does.

    Math: y[n, c] = x[n, c] · m[n, c] / (1-p), m ~ Bernoulli(1-p).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.dropout2d(am.ones(2, 3, 4, 4), p=0.25).shape
        (2, 3, 4, 4)
    """
    if isinstance(input, Tensor) and input.ndim == 3:
        warnings.warn("dropout2d: received a 3-D input; assuming channel-wise 1-D dropout is meant and "
                      "interpreting the input as (N, C, L). Use dropout1d for that, or a 4-D input.",
                      stacklevel=2)
        return _channel_dropout(input, p, training, inplace, 1, "dropout2d")
    return _channel_dropout(input, p, training, inplace, 2, "dropout2d")


def dropout3d(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Zero whole channels of a ``(N, C, D, H, W)`` or ``(C, D, H, W)`` input
    (``torch.nn.functional.dropout3d``).

    Math: y[n, c] = x[n, c] · m[n, c] / (1-p), m ~ Bernoulli(1-p).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.dropout3d(am.ones(1, 2, 2, 2, 2), training=False).shape
        (1, 2, 2, 2, 2)
    """
    return _channel_dropout(input, p, training, inplace, 3, "dropout3d")


def _alpha(input, p, training, inplace, mask_shape, op):
    p = _check_p(p, op)
    _check_input(input, op)
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    dt = input.array.dtype
    keep = (input._backend.rand(mask_shape, dt) >= dt.type(p)).astype(dt)
    a = 1.0 / math.sqrt((_SELU_ALPHA_PRIME ** 2 * p + 1) * (1 - p))
    b = Tensor._wrap((keep - 1) * dt.type(_SELU_ALPHA_PRIME * a) + dt.type(_SELU_ALPHA_PRIME * a * p))
    out = _apply(input, keep * dt.type(a), inplace)
    if out is input:
        return input.add_(b)
    return out + b


def alpha_dropout(input, p: float = 0.5, training: bool = False, inplace: bool = False):
    """Dropout that keeps SELU's zero mean and unit variance (``torch.nn.functional.alpha_dropout``).

    Math: dropped elements are set to -α' = -1.7581 (SELU's negative saturation), then
    y = a (x·m + α'(m - 1)) + a α' p with a = ((α'² p + 1)(1 - p))^{-1/2}, m ~ Bernoulli(1-p),
    so mean 0 and variance 1 are preserved. Note PyTorch's default ``training=False`` here.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.alpha_dropout(am.ones(3))
        tensor([1., 1., 1.])
    """
    return _alpha(input, p, training, inplace, input.shape if isinstance(input, Tensor) else (), "alpha_dropout")


def feature_alpha_dropout(input, p: float = 0.5, training: bool = False, inplace: bool = False):
    """Alpha dropout of whole channels of an ``(N, C, *)`` input
    (``torch.nn.functional.feature_alpha_dropout``).

    Math: as :func:`alpha_dropout` with one mask value per (n, c).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.feature_alpha_dropout(am.ones(2, 3, 4), training=False).shape
        (2, 3, 4)
    """
    if isinstance(input, Tensor) and input.ndim < 2:
        raise RuntimeError(f"feature_alpha_dropout: expected an input with at least 2 dims (N, C, *), "
                           f"got shape {tuple(input.shape)}")
    shape = tuple(input.shape[:2]) + (1,) * (input.ndim - 2) if isinstance(input, Tensor) else ()
    return _alpha(input, p, training, inplace, shape, "feature_alpha_dropout")
