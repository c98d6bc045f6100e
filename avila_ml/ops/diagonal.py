"""Diagonals: ``diagonal``, ``diag_embed``, ``diag``, ``trace``.

Reading a diagonal is advanced indexing (its backward scatters into zeros); writing one into
zeros is that scatter (its backward reads again), so both are differentiable to any order.
"""
from __future__ import annotations

import numpy as np

from ..backends import backend_of
from ..tensor import Tensor, _norm_dim
from .indexing import IndexPutAdd, getitem
from .reduction import sum as _sum
from .shape import movedim

__all__ = ["diagonal", "diag_embed", "diag", "trace"]


def _diag_index(n: int, m: int, offset: int, xp):
    """Row and column indices of the ``offset`` diagonal of an ``n x m`` matrix."""
    if offset >= 0:
        k = max(0, min(n, m - offset))
        rows = xp.arange(k)
        return rows, rows + offset
    k = max(0, min(n + offset, m))
    cols = xp.arange(k)
    return cols - offset, cols


def diagonal(input, offset: int = 0, dim1: int = 0, dim2: int = 1):
    """The ``offset`` diagonal of the 2-d slices over ``dim1``, ``dim2``, as the last dim
    (``torch.diagonal``).

    Math: ``out[..., i] = x[..., i, i + offset]`` (negative offsets below the main diagonal);
    the gradient is scattered back onto that diagonal.

    Example:
        >>> import avila_ml as am
        >>> am.diagonal(am.arange(9).reshape(3, 3), offset=1)
        tensor([1, 5])
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"diagonal: expected a Tensor, got {type(input).__name__}")
    if input.ndim < 2:
        raise RuntimeError(f"diagonal: expected a tensor with at least 2 dims, got shape {tuple(input.shape)}")
    d1, d2 = _norm_dim(dim1, input.ndim, "diagonal"), _norm_dim(dim2, input.ndim, "diagonal")
    if d1 == d2:
        raise RuntimeError(f"diagonal: dim1 and dim2 cannot be identical, got {dim1} and {dim2}")
    x = movedim(input, (d1, d2), (-2, -1))
    rows, cols = _diag_index(x.shape[-2], x.shape[-1], int(offset), backend_of(x.array).xp)
    return getitem(x, (Ellipsis, Tensor._wrap(rows), Tensor._wrap(cols)))


def diag_embed(input, offset: int = 0, dim1: int = -2, dim2: int = -1):
    """Matrices (over ``dim1``, ``dim2``) with the last dim of ``input`` on their ``offset``
    diagonal, zeros elsewhere (``torch.diag_embed``).

    Math: ``out[..., i, i + offset] = x[..., i]``; the gradient reads that diagonal back.

    Example:
        >>> import avila_ml as am
        >>> am.diag_embed(am.tensor([1, 2]))
        tensor([[1, 0],
                [0, 2]])
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"diag_embed: expected a Tensor, got {type(input).__name__}")
    if input.ndim == 0:
        raise RuntimeError("diag_embed: expected a tensor with at least 1 dim, got a 0-d tensor")
    n = input.shape[-1] + abs(int(offset))
    out_ndim = input.ndim + 1
    d1, d2 = _norm_dim(dim1, out_ndim, "diag_embed"), _norm_dim(dim2, out_ndim, "diag_embed")
    if d1 == d2:
        raise RuntimeError(f"diag_embed: dim1 and dim2 cannot be identical, got {dim1} and {dim2}")
    rows, cols = _diag_index(n, n, int(offset), backend_of(input.array).xp)
    shape = tuple(input.shape[:-1]) + (n, n)
    out = IndexPutAdd.apply(input, shape, (Ellipsis, rows, cols), True)
    return movedim(out, (-2, -1), (d1, d2))


def diag(input, diagonal: int = 0):
    """A 1-d tensor's diagonal matrix, or a 2-d tensor's ``diagonal`` as 1-d (``torch.diag``).

    Example:
        >>> import avila_ml as am
        >>> am.diag(am.tensor([1.0, 2.0]), 1)
        tensor([[0., 1., 0.],
                [0., 0., 2.],
                [0., 0., 0.]])
        >>> am.diag(am.arange(4).reshape(2, 2))
        tensor([0, 3])
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"diag: expected a Tensor, got {type(input).__name__}")
    if input.ndim == 1:
        return diag_embed(input, diagonal, 0, 1)
    if input.ndim == 2:
        return globals()["diagonal"](input, diagonal, 0, 1)
    raise RuntimeError(f"diag: expected a 1-d or 2-d tensor, got shape {tuple(input.shape)}")


def trace(input):
    """The sum of a matrix's main diagonal (``torch.trace``).

    Math: ``sum_i x[i, i]``; gradient: the identity pattern times the upstream gradient.

    Example:
        >>> import avila_ml as am
        >>> am.trace(am.arange(9.0).reshape(3, 3))
        tensor(12.)
    """
    if not isinstance(input, Tensor) or input.ndim != 2:
        raise RuntimeError(f"trace: expected a matrix, got shape {tuple(getattr(input, 'shape', ()))}")
    return _sum(diagonal(input))
