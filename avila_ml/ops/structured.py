"""Structured selections: ``triu``, ``tril``, ``repeat_interleave``.

Each is an existing differentiable op (``where``, ``index_select``) applied with an index or
mask built on the raw arrays, so gradients and double backward come with them.
"""
from __future__ import annotations

import numpy as np

from ..backends import backend_of
from ..tensor import Tensor, _norm_dim
from .elementwise import where
from .indexing import getitem, index_select
from .shape import broadcast_to, cat, expand, reshape

__all__ = ["triu", "tril", "repeat_interleave", "hstack", "vstack", "masked_select", "meshgrid"]


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


def hstack(tensors):
    """Concatenate along dim 1 (dim 0 for 1-d tensors) (``torch.hstack``).

    Example:
        >>> import avila_ml as am
        >>> am.hstack([am.tensor([1, 2]), am.tensor([3])])
        tensor([1, 2, 3])
    """
    ts = [t.reshape(1) if t.ndim == 0 else t for t in tensors]
    if not ts:
        raise RuntimeError("hstack: expected a non-empty list of tensors")
    return cat(ts, dim=0 if ts[0].ndim == 1 else 1)


def vstack(tensors):
    """Stack rows: 1-d tensors become rows, then concatenate along dim 0 (``torch.vstack``).

    Example:
        >>> import avila_ml as am
        >>> am.vstack([am.tensor([1, 2]), am.tensor([3, 4])])
        tensor([[1, 2],
                [3, 4]])
    """
    ts = [t.reshape(1, -1) if t.ndim < 2 else t for t in tensors]
    if not ts:
        raise RuntimeError("vstack: expected a non-empty list of tensors")
    return cat(ts, dim=0)


def masked_select(input, mask):
    """The elements where ``mask`` is true, as a 1-d tensor; both broadcast first
    (``torch.masked_select``).

    Math: the gradient flows back to the selected positions.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([[1.0, -2.0], [3.0, -4.0]])
        >>> am.masked_select(x, x > 0)
        tensor([1., 3.])
    """
    if not isinstance(mask, Tensor) or mask.array.dtype != np.bool_:
        raise RuntimeError(f"masked_select: mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    try:
        shape = np.broadcast_shapes(tuple(input.shape), tuple(mask.shape))
    except ValueError:
        raise RuntimeError(f"masked_select: input {tuple(input.shape)} and mask {tuple(mask.shape)} do not broadcast") from None
    x = input if tuple(input.shape) == shape else broadcast_to(input, shape)
    m = mask.array if tuple(mask.shape) == shape else backend_of(mask.array).xp.broadcast_to(mask.array, shape)
    return getitem(reshape(x, -1), Tensor._wrap(m.reshape(-1)))


def meshgrid(*tensors, indexing: str = "ij"):
    """Coordinate grids from 1-d tensors (``torch.meshgrid``).

    ``indexing="ij"``: output ``k`` varies along dim ``k``; ``"xy"`` swaps the first two dims
    (NumPy's default). Math: each output is its input expanded, so gradients sum over the grid.

    Example:
        >>> import avila_ml as am
        >>> gx, gy = am.meshgrid(am.tensor([1, 2]), am.tensor([3, 4, 5]), indexing="ij")
        >>> gx.shape, gy[0]
        ((2, 3), tensor([3, 4, 5]))
    """
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if indexing not in ("ij", "xy"):
        raise RuntimeError(f"meshgrid: indexing must be 'ij' or 'xy', got {indexing!r}")
    if any(not isinstance(t, Tensor) or t.ndim > 1 for t in tensors):
        raise RuntimeError("meshgrid: expected 0-d or 1-d tensors")
    ts = [t.reshape(-1) for t in tensors]
    if indexing == "xy" and len(ts) >= 2:
        ts[0], ts[1] = ts[1], ts[0]
    shape = tuple(int(t.shape[0]) for t in ts)
    out = []
    for k, t in enumerate(ts):
        view = [1] * len(ts)
        view[k] = shape[k]
        out.append(expand(reshape(t, tuple(view)), shape))
    if indexing == "xy" and len(out) >= 2:
        out[0], out[1] = out[1], out[0]
    return tuple(out)
