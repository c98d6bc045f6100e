"""Structured selections: ``triu``, ``tril``, ``repeat_interleave``.

Each is an existing differentiable op (``where``, ``index_select``) applied with an index or
mask built on the raw arrays, so gradients and double backward come with them.
"""
from __future__ import annotations

import numpy as np

from ..backends import backend_of
from ..tensor import Tensor, _norm_dim
from .elementwise import where
from .indexing import index_select

__all__ = ["triu", "tril", "repeat_interleave"]


def _triangle(input, diagonal: int, upper: bool):
    op = "triu" if upper else "tril"
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(input).__name__}")
    if input.ndim < 2:
        raise RuntimeError(f"{op}: input tensor must have at least 2 dimensions, got shape {tuple(input.shape)}")
    n, m = input.shape[-2:]
    xp = backend_of(input.array).xp
    # tri(n, m, k)[i, j] = j <= i + k: the lower triangle; the upper one is its complement shifted by one
    keep = xp.tri(n, m, k=diagonal - 1, dtype=bool) if upper else xp.tri(n, m, k=diagonal, dtype=bool)
    if upper:
        keep = ~keep
    zero = Tensor._wrap(xp.zeros((), dtype=input.array.dtype))
    return where(keep, input, zero)


def triu(input, diagonal: int = 0):
    """The upper triangle of the last two dims, the rest set to 0 (``torch.triu``).

    Math: ``out[..., i, j] = x[..., i, j]`` if ``j - i >= diagonal`` else 0; the gradient is
    the upstream gradient masked the same way.

    Example:
        >>> import avila_ml as am
        >>> am.triu(am.ones(3, 3), diagonal=1)
        tensor([[0., 1., 1.],
                [0., 0., 1.],
                [0., 0., 0.]])
    """
    return _triangle(input, int(diagonal), True)


def tril(input, diagonal: int = 0):
    """The lower triangle of the last two dims, the rest set to 0 (``torch.tril``).

    Math: ``out[..., i, j] = x[..., i, j]`` if ``j - i <= diagonal`` else 0.

    Example:
        >>> import avila_ml as am
        >>> am.tril(am.ones(2, 3))
        tensor([[1., 0., 0.],
                [1., 1., 0.]])
    """
    return _triangle(input, int(diagonal), False)


def repeat_interleave(input, repeats=None, dim=None, *, output_size=None):
    """Repeat each element (or slice along ``dim``) ``repeats`` times, in place order
    (``torch.repeat_interleave``).

    Math: ``out = index_select(x, dim, [0]*r0 + [1]*r1 + ...)``, so the gradient of each
    input entry is the sum of the gradients of its copies. ``dim=None`` flattens first.
    ``repeat_interleave(repeats)`` with one integer tensor gives
    ``[0]*repeats[0] + [1]*repeats[1] + ...``.

    Example:
        >>> import avila_ml as am
        >>> am.repeat_interleave(am.tensor([[1, 2], [3, 4]]), 2, dim=0)
        tensor([[1, 2],
                [1, 2],
                [3, 4],
                [3, 4]])
        >>> am.repeat_interleave(am.tensor([2, 1]))
        tensor([0, 0, 1])
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"repeat_interleave: expected a Tensor, got {type(input).__name__}")
    xp = backend_of(input.array).xp
    if repeats is None:
        r = input.array
        if r.ndim > 1 or r.dtype.kind not in "iu":
            raise RuntimeError(f"repeat_interleave: repeats must be a 0-d or 1-d integer tensor, got "
                               f"{input.dtype} of shape {tuple(input.shape)}")
        return Tensor._wrap(xp.repeat(xp.arange(r.size, dtype=np.int64), r.reshape(-1)))
    if dim is None:
        input, d = input.reshape(-1), 0
    else:
        d = _norm_dim(dim, input.ndim, "repeat_interleave")
    if input.ndim == 0:
        input = input.reshape(1)
    n = input.shape[d]
    if isinstance(repeats, Tensor):
        if repeats.array.dtype.kind not in "iu" or repeats.ndim > 1:
            raise RuntimeError(f"repeat_interleave: repeats must be an integer tensor of 0 or 1 dims, got "
                               f"{repeats.dtype} of shape {tuple(repeats.shape)}")
        reps = repeats.array.reshape(-1)
        if reps.size == 1:
            reps = xp.full((n,), int(reps[0]), dtype=np.int64)
        elif reps.size != n:
            raise RuntimeError(f"repeat_interleave: repeats has {reps.size} entries but dim {d} of the input "
                               f"has size {n}")
    elif isinstance(repeats, (int, np.integer)) and not isinstance(repeats, bool):
        reps = xp.full((n,), int(repeats), dtype=np.int64)
    else:
        raise TypeError(f"repeat_interleave: repeats must be an int or an integer tensor, got {type(repeats).__name__}")
    if reps.size and int(reps.min()) < 0:
        raise RuntimeError("repeat_interleave: repeats can not be negative")
    index = xp.repeat(xp.arange(n, dtype=np.int64), reps)
    if output_size is not None and int(output_size) != index.size:
        raise RuntimeError(f"repeat_interleave: output_size={output_size} but the repeats give {index.size}")
    return index_select(input, d, Tensor._wrap(index))
