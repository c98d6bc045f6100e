"""Sorting and searching: ``sort``, ``argsort``, ``topk``, ``unique``, ``nonzero``,
``searchsorted``, ``bucketize``.

The order is computed on raw arrays (it has no gradient); values are then read with
:func:`gather`, so their gradient scatters back to where each value came from and that
scatter is itself differentiable (double backward for free).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..backends import backend_of
from ..tensor import Tensor, _norm_dim
from .indexing import gather
from .reduction import values_indices

__all__ = ["sort", "argsort", "topk", "unique", "nonzero", "searchsorted", "bucketize"]

sort_result = namedtuple("sort", ["values", "indices"])
topk_result = namedtuple("topk", ["values", "indices"])


def _check_tensor(x, op: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")


def _order(a, axis: int, descending: bool):
    """Stable argsort along ``axis``; NaN sorts as the largest value (PyTorch's rule).

    Descending keeps equal values in their original order: sort the reversed array
    ascending (stable), reverse the result and map the indices back.
    """
    xp = backend_of(a).xp
    if not descending:
        return xp.argsort(a, axis=axis, kind="stable")
    n = a.shape[axis]
    rev = xp.flip(a, axis=axis)
    idx = xp.argsort(rev, axis=axis, kind="stable")
    return (n - 1) - xp.flip(idx, axis=axis)


def argsort(input, dim: int = -1, descending: bool = False, stable: bool = False):
    """Indices that sort ``input`` along ``dim`` (``torch.argsort``).

    Math: ``input.gather(dim, argsort(input, dim))`` is sorted along ``dim``. The sort is
    always stable here (``stable=False`` allows any order of ties in PyTorch; this is one of
    them); NaN counts as larger than every number.

    Example:
        >>> import avila_ml as am
        >>> am.argsort(am.tensor([3.0, 1.0, 2.0])), am.argsort(am.tensor([3, 1, 2]), descending=True)
        (tensor([1, 2, 0]), tensor([0, 2, 1]))
    """
    _check_tensor(input, "argsort")
    if input.ndim == 0:
        return Tensor._wrap(backend_of(input.array).xp.zeros((), dtype=np.int64))
    d = _norm_dim(dim, input.ndim, "argsort")
    return Tensor._wrap(_order(input.array, d, descending).astype(np.int64, copy=False))


def sort(input, dim: int = -1, descending: bool = False, stable: bool = False):
    """Sort along ``dim``: ``(values, indices)`` (``torch.sort``).

    Math: ``values = input.gather(dim, indices)``; the gradient of ``values`` flows back to
    the positions in ``indices``. Ties keep their original order (stable); NaN sorts last
    (first when ``descending``), as in PyTorch.

    Example:
        >>> import avila_ml as am
        >>> v, i = am.sort(am.tensor([[3.0, 1.0, 2.0]]), descending=True)
        >>> v, i
        (tensor([[3., 2., 1.]]), tensor([[0, 2, 1]]))
    """
    _check_tensor(input, "sort")
    if input.ndim == 0:
        idx = Tensor._wrap(backend_of(input.array).xp.zeros((), dtype=np.int64))
        return sort_result(input.clone(), idx)
    idx = argsort(input, dim, descending, stable)
    return sort_result(gather(input, _norm_dim(dim, input.ndim, "sort"), idx), idx)


def topk(input, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):
    """The ``k`` largest (or smallest) entries along ``dim``: ``(values, indices)`` (``torch.topk``).

    Math: the first ``k`` entries of :func:`sort` (descending when ``largest``); the
    gradient of ``values`` flows back to the chosen positions, zero elsewhere. The result is
    always sorted (``sorted=False`` allows any order in PyTorch).

    Example:
        >>> import avila_ml as am
        >>> am.topk(am.tensor([1.0, 5.0, 3.0, 4.0]), 2)
        topk(values=tensor([5., 4.]), indices=tensor([1, 3]))
    """
    _check_tensor(input, "topk")
    n = input.shape[_norm_dim(dim, input.ndim, "topk")] if input.ndim else 1
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k <= n:
        raise RuntimeError(f"topk: k ({k!r}) is out of range for dimension {dim} of size {n} "
                           f"(shape {tuple(input.shape)})")
    if input.ndim == 0:
        v, i = sort(input)
        return topk_result(v, i)
    d = _norm_dim(dim, input.ndim, "topk")
    order = _order(input.array, d, largest)
    sl = [slice(None)] * input.ndim
    sl[d] = slice(0, int(k))
    idx = Tensor._wrap(order[tuple(sl)].astype(np.int64, copy=False))
    return topk_result(gather(input, d, idx), idx)


def unique(input, sorted: bool = True, return_inverse: bool = False, return_counts: bool = False,
           dim=None):
    """The distinct elements (or distinct slices along ``dim``), in ascending order (``torch.unique``).

    Math: ``output[inverse] == input`` (along ``dim`` when given); ``counts[j]`` is how
    often ``output[j]`` occurs. Not differentiable (as in PyTorch). The output is always
    sorted (PyTorch leaves the order unspecified for ``sorted=False``).

    Example:
        >>> import avila_ml as am
        >>> am.unique(am.tensor([3, 1, 3, 2]), return_inverse=True, return_counts=True)
        (tensor([1, 2, 3]), tensor([2, 0, 2, 1]), tensor([1, 1, 2]))
    """
    _check_tensor(input, "unique")
    xp = backend_of(input.array).xp
    a = input.array
    if dim is None:
        # every NaN is its own value, as in PyTorch (NumPy/CuPy would merge them by default)
        vals, inv, counts = xp.unique(a.reshape(-1), return_inverse=True, return_counts=True, equal_nan=False)
        inv = inv.reshape(a.shape)
    else:
        d = _norm_dim(dim, input.ndim, "unique")
        if a.shape[d] == 0:
            vals, inv, counts = a, xp.zeros((0,), np.int64), xp.zeros((0,), np.int64)
        else:
            vals, inv, counts = xp.unique(a, return_inverse=True, return_counts=True, axis=d)
            inv = inv.reshape(-1)
    out = [Tensor._wrap(vals)]
    if return_inverse:
        out.append(Tensor._wrap(inv.astype(np.int64, copy=False)))
    if return_counts:
        out.append(Tensor._wrap(counts.astype(np.int64, copy=False)))
    return out[0] if len(out) == 1 else tuple(out)


def nonzero(input, *, as_tuple: bool = False):
    """Indices of the non-zero elements (``torch.nonzero``).

    Math: an ``(n, ndim)`` int64 tensor, one row per non-zero element in C order; with
    ``as_tuple=True`` one 1-d index tensor per dim (so ``x[x.nonzero(as_tuple=True)]``
    reads the non-zeros). A 0-d input counts as 1-d for ``as_tuple``, as in PyTorch.

    Example:
        >>> import avila_ml as am
        >>> am.nonzero(am.tensor([[0, 1], [2, 0]]))
        tensor([[0, 1],
                [1, 0]])
        >>> am.nonzero(am.tensor([0.0, 3.0, 4.0]), as_tuple=True)
        (tensor([1, 2]),)
    """
    _check_tensor(input, "nonzero")
    xp = backend_of(input.array).xp
    a = input.array
    if as_tuple:
        parts = xp.nonzero(a.reshape(1) if a.ndim == 0 else a)
        return tuple(Tensor._wrap(p.astype(np.int64, copy=False)) for p in parts)
    if a.ndim == 0:
        return Tensor._wrap(xp.zeros((int(bool(a)), 0), dtype=np.int64))
    return Tensor._wrap(xp.stack(xp.nonzero(a), axis=1).astype(np.int64, copy=False))


def _values_array(values, like: Tensor, op: str):
    if isinstance(values, Tensor):
        return values.array, False
    if isinstance(values, (int, float, np.number)) and not isinstance(values, bool):
        return backend_of(like.array).xp.asarray(values), True
    raise TypeError(f"{op}: expected a Tensor or a Python number as values, got {type(values).__name__}")


def searchsorted(sorted_sequence, input, *, out_int32: bool = False, right: bool = False,
                 side=None, sorter=None):
    """Insertion points of ``input`` into ``sorted_sequence``, along its last dim (``torch.searchsorted``).

    Math: for ``right=False`` the smallest ``i`` with ``input <= seq[..., i]``; for
    ``right=True`` the smallest ``i`` with ``input < seq[..., i]``. ``sorted_sequence`` is
    1-d (shared by every value) or has the leading dims of ``input``. ``sorter`` gives the
    indices that sort an unsorted ``sorted_sequence``. Not differentiable.

    Example:
        >>> import avila_ml as am
        >>> am.searchsorted(am.tensor([1.0, 3.0, 5.0]), am.tensor([0.0, 3.0, 6.0]))
        tensor([0, 1, 3])
        >>> am.searchsorted(am.tensor([1.0, 3.0, 5.0]), am.tensor([3.0]), right=True)
        tensor([2])
    """
    _check_tensor(sorted_sequence, "searchsorted")
    if side is not None:
        if side not in ("left", "right"):
            raise RuntimeError(f"searchsorted: side must be 'left' or 'right', got {side!r}")
        if right and side == "left":
            raise RuntimeError("searchsorted: side='left' and right=True disagree")
        right = side == "right"
    seq = sorted_sequence.array
    vals, scalar = _values_array(input, sorted_sequence, "searchsorted")
    if seq.ndim == 0:
        raise RuntimeError("searchsorted: sorted_sequence must have at least 1 dimension, got a 0-d tensor")
    if sorter is not None:
        s = sorter.array if isinstance(sorter, Tensor) else sorter
        if tuple(s.shape) != tuple(seq.shape):
            raise RuntimeError(f"searchsorted: sorter shape {tuple(s.shape)} must equal the "
                               f"sorted_sequence shape {tuple(seq.shape)}")
        seq = backend_of(seq).xp.take_along_axis(seq, s, axis=-1)
    backend = backend_of(seq)
    xp = backend.xp
    how = "right" if right else "left"
    # On a device the bisection always runs: it needs no host sync (checking the boundaries
    # first would), and it is PyTorch's algorithm, so sorted or not the answer is PyTorch's.
    if seq.size and (backend.name != "numpy" or _needs_bisection(xp, seq)):
        out = _nan_aware_search(xp, seq, vals, scalar, right)
        return Tensor._wrap(xp.asarray(out).astype(np.int32 if out_int32 else np.int64, copy=False))
    if seq.ndim == 1:
        out = xp.searchsorted(seq, vals, side=how)
    else:
        if scalar or vals.ndim != seq.ndim or vals.shape[:-1] != seq.shape[:-1]:
            raise RuntimeError(
                f"searchsorted: boundaries of shape {tuple(seq.shape)} need values with the same leading "
                f"dims {tuple(seq.shape[:-1])}, got shape {tuple(getattr(vals, 'shape', ()))}")
        rows_s = seq.reshape(-1, seq.shape[-1])
        rows_v = vals.reshape(-1, vals.shape[-1])
        out = xp.stack([xp.searchsorted(rows_s[r], rows_v[r], side=how) for r in range(rows_s.shape[0])]
                       ) if rows_s.shape[0] else xp.zeros(rows_v.shape, np.int64)
        out = out.reshape(vals.shape)
    out = xp.asarray(out).astype(np.int32 if out_int32 else np.int64, copy=False)
    return Tensor._wrap(out)


def _needs_bisection(xp, seq) -> bool:
    """True where NumPy's searchsorted would not give PyTorch's answer: boundaries holding a
    NaN, or not sorted (an inf planted in the middle, say). PyTorch then returns whatever its
    bisection meets, which :func:`_nan_aware_search` reproduces step for step."""
    bad = (seq[..., 1:] < seq[..., :-1]).any()
    if seq.dtype.kind in "fc":
        bad = bad | xp.isnan(seq).any()
    return bool(bad)


def _nan_aware_search(xp, seq, vals, scalar, right):
    """PyTorch's binary search, step for step, for boundaries that hold NaN (or are unsorted).

    NumPy sorts NaN last, PyTorch compares as it goes: ``start = mid + 1`` unless
    ``seq[mid] >= x`` (``> x`` for ``right``), and every comparison with NaN is false, so the
    result depends on where the bisection meets the NaN (``bucketize(0.5, [1, 2, nan, 3])``
    is 3 in PyTorch, 0 in NumPy). Vectorised: every value bisects at once.
    """
    vals = xp.asarray(vals)
    n = seq.shape[-1]
    if seq.ndim == 1:
        rows, v = seq.reshape(1, n), vals.reshape(1, -1)
    else:
        if scalar or vals.ndim != seq.ndim or vals.shape[:-1] != seq.shape[:-1]:
            raise RuntimeError(
                f"searchsorted: boundaries of shape {tuple(seq.shape)} need values with the same leading "
                f"dims {tuple(seq.shape[:-1])}, got shape {tuple(getattr(vals, 'shape', ()))}")
        rows, v = seq.reshape(-1, n), vals.reshape(-1, vals.shape[-1] if vals.ndim else 1)
    start = xp.zeros(v.shape, np.int64)
    end = xp.full(v.shape, n, np.int64)
    for _ in range(n.bit_length()):  # each step at least halves every open interval
        active = start < end
        mid = start + (end - start) // 2
        at = xp.take_along_axis(rows, xp.minimum(mid, n - 1), axis=-1)
        up = ~(at > v) if right else ~(at >= v)
        start = xp.where(active & up, mid + 1, start)
        end = xp.where(active & ~up, mid, end)
    return start.reshape(vals.shape)


def bucketize(input, boundaries, *, out_int32: bool = False, right: bool = False):
    """The bucket of each value for 1-d ``boundaries`` (``torch.bucketize``).

    Math: ``right=False``: the ``i`` with ``boundaries[i-1] < x <= boundaries[i]``;
    ``right=True``: ``boundaries[i-1] <= x < boundaries[i]`` (the same as
    ``searchsorted(boundaries, x, right=right)``). Not differentiable.

    Example:
        >>> import avila_ml as am
        >>> am.bucketize(am.tensor([0.5, 1.0, 2.5]), am.tensor([1.0, 2.0]))
        tensor([0, 0, 2])
    """
    _check_tensor(boundaries, "bucketize")
    if boundaries.ndim != 1:
        raise RuntimeError(f"bucketize: boundaries must be 1-d, got shape {tuple(boundaries.shape)}")
    return searchsorted(boundaries, input, out_int32=out_int32, right=right)
