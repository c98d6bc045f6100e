"""``scatter_reduce``: combine ``src`` into ``input`` at ``index`` along ``dim`` with a sum,
product, mean, max or min, and the gradients PyTorch defines for each.

Forward runs on arrays (the backend's ``scatter_reduce`` combines repeated indices); backward
is written with differentiable ops (gathers, ``where``, and for ``prod`` a scatter_reduce of
its own), so double backward works. Masks and counts (which positions were written, how many
values met there, which values tie for a max) are constants of the backward.
"""
from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..backends import backend_of
from ..tensor import Tensor
from .elementwise import where, _prepare
from .indexing import GetItem, IndexPutAdd, _check_index, _full_index

__all__ = ["scatter_reduce"]

_REDUCTIONS = ("sum", "prod", "mean", "amax", "amin")


def _identity(how: str, dtype):
    if how in ("sum", "mean"):
        return 0
    if how == "prod":
        return 1
    if dtype.kind == "f":
        return -np.inf if how == "amax" else np.inf
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is None:  # bool
        return how == "amin"
    return info.min if how == "amax" else info.max


def _const(array) -> Tensor:
    return Tensor._wrap(array)


class ScatterReduce(Function):
    def forward(self, x, src, index, dim, how, include_self):
        b = backend_of(x)
        xp = b.xp
        key = _full_index(index, dim, xp)
        sl = tuple(slice(0, n) for n in index.shape)
        vals = src[sl]
        self.key, self.how, self.include_self = key, how, include_self
        self.index, self.dim = index, dim
        self.src_shape, self.index_shape = src.shape, index.shape
        written = xp.zeros(x.shape, dtype=bool)
        written[key] = True
        self.written = written
        out = xp.array(x, copy=True, order="C")
        if not include_self:
            out[written] = _identity(how, x.dtype)
        if how == "mean":
            count = xp.zeros(x.shape, dtype=np.int64)
            b.scatter_add(count, key, xp.ones(index.shape, dtype=np.int64))
            count = count + (1 if include_self else 0)
            count = xp.maximum(count, 1)  # unwritten positions without self keep x: divide by 1
            b.scatter_add(out, key, vals)
            out = out // count.astype(out.dtype) if out.dtype.kind in "iu" else out / count.astype(out.dtype)
            out = out.astype(x.dtype, copy=False)
            self.count = count
        else:
            b.scatter_reduce(out, key, vals, "sum" if how == "sum" else how)
        if how in ("amax", "amin", "prod"):
            self.save_inputs(0, 1)
            self.save_outputs(0)
        return out

    def _src_grad(self, t: Tensor) -> Tensor:
        """``t`` read at ``index`` (one value per src entry), zero for src entries past it."""
        gs = GetItem.apply(t, self.key, True)
        if tuple(gs.shape) != tuple(self.src_shape):
            from .shape import pad
            widths = []
            for n_src, n_idx in reversed(list(zip(self.src_shape, self.index_shape))):
                widths += [0, n_src - n_idx]
            gs = pad(gs, widths)
        return gs

    def backward(self, g):
        nx, ns = self.needs_input_grad
        xp = backend_of(g.array).xp
        zero = _const(xp.zeros((), dtype=g.array.dtype))
        # positions whose own value takes part in the reduction
        self_in = xp.ones(self.written.shape, dtype=bool) if self.include_self else ~self.written
        how = self.how
        if how in ("sum", "mean"):
            if how == "mean":
                g = g / _const(self.count.astype(g.array.dtype))
            gx = where(self_in, g, zero) if nx else None
            return gx, (self._src_grad(g) if ns else None)
        x, src = self.saved_inputs
        (out,) = self.saved_outputs
        if how in ("amax", "amin"):
            # the gradient is shared evenly by every value equal to the result, as PyTorch's
            # scatter_reduce_backward: g / N times (value == result), N counting the ties of
            # x (include_self or not) and of src -- so a NaN result (no ties) gives NaN, 0 * (g / 0)
            xa, sa, oa = x.array, src.array, out.array
            dt = g.array.dtype
            sl = tuple(slice(0, n) for n in self.index_shape)
            s_tie = (sa[sl] == oa[self.key]).astype(dt)
            x_tie = (xa == oa).astype(dt)
            n = x_tie.copy()
            backend_of(n).scatter_add(n, self.key, s_tie)
            with np.errstate(divide="ignore", invalid="ignore"):
                share = g / _const(n)
            gx = where(self_in, share * _const(x_tie), zero) if nx else None
            gs = None
            if ns:
                tie = xp.zeros(self.src_shape, dtype=dt)
                tie[sl] = s_tie
                gs = self._src_grad(share) * _const(tie)
            return gx, gs
        # prod: d out / d v = the product of the other values of v's group. Written so that
        # it stays right when differentiated again, with z zeros in the group:
        #   v != 0          -> out / v            (out holds the zeros, so this is exact)
        #   v == 0, z == 1  -> product of the non-zeros
        #   v == 0, z == 2  -> product of the non-zeros times the other zero (a 0 whose
        #                      derivative is not 0), i.e. times (sum of the zeros - v)
        #   v == 0, z >= 3  -> 0 (value and first derivative)
        one = _const(xp.ones((), dtype=g.array.dtype))
        x_zero = x.array == 0
        s_zero = src.array == 0
        sl = tuple(slice(0, n) for n in self.index_shape)
        n_zero = (x_zero & self_in).astype(np.int64)
        backend_of(n_zero).scatter_add(n_zero, self.key, s_zero[sl].astype(np.int64))
        x_safe = where(x_zero, one, x)
        s_safe = where(s_zero, one, src)
        nonzero_prod = ScatterReduce.apply(x_safe, s_safe, self.index, self.dim, "prod", self.include_self)
        zero_sum = ScatterReduce.apply(where(x_zero, x, zero), where(s_zero, src, zero), self.index, self.dim,
                                       "sum", self.include_self)
        g_out = g * out
        g_nz = g * nonzero_prod
        gx = gs = None
        if nx:
            one_z, two_z = n_zero == 1, n_zero == 2
            at_zero = where(one_z, g_nz, where(two_z, g_nz * (zero_sum - x), zero))
            gx = where(self_in, where(x_zero, at_zero, g_out / x_safe), zero)
        if ns:
            one_z = xp.zeros(self.src_shape, dtype=bool)
            two_z = xp.zeros(self.src_shape, dtype=bool)
            one_z[sl] = n_zero[self.key] == 1
            two_z[sl] = n_zero[self.key] == 2
            at_zero = where(one_z, self._src_grad(g_nz),
                            where(two_z, self._src_grad(g_nz * zero_sum) - self._src_grad(g_nz) * src, zero))
            gs = where(s_zero, at_zero, self._src_grad(g_out) / s_safe)
        return gx, gs


def scatter_reduce(input, dim: int, index, src, reduce: str, *, include_self: bool = True):
    """Out-of-place ``input`` with ``src`` combined in at ``index`` along ``dim`` by ``reduce``
    (``torch.scatter_reduce``).

    Math (``dim=0``): ``out[index[i][j]][j] = reduce(input[index[i][j]][j] (if include_self),
    src[i][j], ...)`` over all ``i`` aiming at the same place; ``reduce`` is ``"sum"``,
    ``"prod"``, ``"mean"``, ``"amax"`` or ``"amin"``. Gradients as PyTorch defines them: sum
    and mean pass the (averaged) gradient through; prod gives each value the product of the
    others in its group; amax/amin share the gradient evenly among the values equal to the
    result. Positions not aimed at keep ``input``.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([1.0, 2.0, 3.0])
        >>> src = am.tensor([5.0, 1.0, 7.0, 4.0])
        >>> am.scatter_reduce(x, 0, am.tensor([0, 0, 2, 2]), src, "amax")
        tensor([5., 2., 7.])
        >>> am.scatter_reduce(x, 0, am.tensor([0, 0, 2, 2]), src, "mean", include_self=False)
        tensor([3.0000, 2.0000, 5.5000])
    """
    if reduce not in _REDUCTIONS:
        raise RuntimeError(f"scatter_reduce: reduce argument must be one of {_REDUCTIONS}, got {reduce!r}")
    if not isinstance(src, Tensor):
        raise TypeError(f"scatter_reduce: src must be a Tensor, got {type(src).__name__}")
    d = _check_index("scatter_reduce", input, dim, index)
    for k, (si, ss) in enumerate(zip(index.shape, src.shape)):
        if si > ss:
            raise RuntimeError(f"scatter_reduce: size of index {tuple(index.shape)} exceeds src "
                               f"{tuple(src.shape)} at dim {k}")
    if src.ndim != index.ndim and not (index.ndim <= 1 and src.ndim <= 1):
        raise RuntimeError(f"scatter_reduce: src {tuple(src.shape)} and index {tuple(index.shape)} must have "
                           "the same number of dimensions")
    if input.dtype != src.dtype:
        raise RuntimeError(f"scatter_reduce: expected input and src to have the same dtype, got "
                           f"{input.dtype} and {src.dtype}")
    x, s = _prepare(input, src, "scatter_reduce")
    if x.ndim == 0:  # a 0-d input is a 1-element vector with the index's 0 or 1 dims
        out = ScatterReduce.apply(x.reshape(1), s.reshape(-1), index.array.reshape(-1), 0, reduce,
                                  bool(include_self))
        return out.reshape(())
    return ScatterReduce.apply(x, s, index.array, d, reduce, bool(include_self))
