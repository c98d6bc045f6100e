"""Vector normalisation and distances: ``normalize``, ``cosine_similarity``,
``pairwise_distance`` (``torch.nn.functional``).

Each is a short composition of differentiable ops (norms, clamps, division), so first and second
derivatives come from those ops and agree with PyTorch's, which composes the same way.
"""
from __future__ import annotations

from ..tensor import Tensor
from .elementwise import clamp
from .reduction import norm, sum as _sum
from .shape import broadcast_tensors

__all__ = ["normalize", "cosine_similarity", "pairwise_distance"]


def _need_tensor(op, name, t):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise RuntimeError(f"{op}: expected a floating-point {name}, got dtype {t.dtype}")


def _dim(op, dim, ndim):
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"{op}: Dimension out of range (expected to be in range of "
                         f"[{-max(ndim, 1)}, {max(ndim, 1) - 1}], but got {dim})")
    return dim


def normalize(input, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out=None):
    """Divide by the p-norm along ``dim`` (``torch.nn.functional.normalize``).

    Math: y = x / max(‖x‖_p, eps), the norm taken along ``dim`` (kept for broadcasting).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.normalize(am.tensor([[3.0, 4.0], [0.0, 0.0]]), dim=1)
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    _need_tensor("normalize", "input", input)
    if out is not None:
        raise TypeError("normalize: out= is not supported; use the returned tensor")
    _dim("normalize", dim, input.ndim)
    denom = clamp(norm(input, p, dim, keepdim=True), min=eps)
    return input / denom


def cosine_similarity(x1, x2, dim: int = 1, eps: float = 1e-8):
    """Cosine of the angle between ``x1`` and ``x2`` along ``dim`` (``torch.nn.functional.cosine_similarity``).

    Math: s = Σ (x1 / max(‖x1‖₂, eps)) · (x2 / max(‖x2‖₂, eps)) along ``dim`` (inputs
    broadcast first; ``dim`` is removed).

    Example:
        >>> import avila_ml as am
        >>> s = am.nn.functional.cosine_similarity(am.tensor([[1.0, 0.0], [1.0, 1.0]]), am.tensor([[0.0, 2.0], [2.0, 2.0]]))
        >>> [round(v, 4) for v in s.tolist()]
        [0.0, 1.0]
    """
    _need_tensor("cosine_similarity", "x1", x1)
    _need_tensor("cosine_similarity", "x2", x2)
    try:
        a, b = broadcast_tensors(x1, x2)
    except (ValueError, RuntimeError):
        raise RuntimeError(f"cosine_similarity: shapes {tuple(x1.shape)} and {tuple(x2.shape)} "
                           "are not broadcastable") from None
    _dim("cosine_similarity", dim, a.ndim)
    na = clamp(norm(a, 2, dim, keepdim=True), min=eps)
    nb = clamp(norm(b, 2, dim, keepdim=True), min=eps)
    return _sum((a / na) * (b / nb), dim)


def pairwise_distance(x1, x2, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False):
    """p-norm distance between ``x1`` and ``x2`` over the last dim (``torch.nn.functional.pairwise_distance``).

    Math: d = ‖x1 - x2 + eps‖_p along the last dim (eps keeps the gradient finite when
    x1 = x2).

    Example:
        >>> import avila_ml as am
        >>> d = am.nn.functional.pairwise_distance(am.tensor([[0.0, 0.0]]), am.tensor([[3.0, 4.0]]), eps=0.0)
        >>> d
        tensor([5.])
    """
    _need_tensor("pairwise_distance", "x1", x1)
    _need_tensor("pairwise_distance", "x2", x2)
    diff = x1 - x2 + eps
    if diff.ndim == 0:
        raise RuntimeError("pairwise_distance: inputs must have at least 1 dim")
    return norm(diff, p, -1, keepdim=keepdim)
