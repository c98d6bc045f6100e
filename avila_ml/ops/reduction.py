"""Reductions over one or several dims (with ``keepdim``), softmax/log-softmax and cumsum.

Numerics: ``logsumexp``, ``softmax`` and ``log_softmax`` subtract the row maximum first, so
logits of +-1e4 stay finite; rows that are entirely ``-inf`` give ``-inf`` (logsumexp).
"""
from __future__ import annotations

import builtins
import math
from collections import namedtuple

import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from ..amp.autocast_mode import autocast_op
from ..autograd.grad_mode import _state as _grad_state, is_grad_enabled
from ..backends import backend_of
from ..tensor import Tensor, _norm_dim
from .._grad_state import state as _grad_state
from .elementwise import expand_array, _arr, abs as _abs, sign as _sign, exp, log, sqrt, where, cast, pow as _pow, _nondiff
from .shape import broadcast_to, reshape, flip, squeeze, unsqueeze

__all__ = ["sum", "mean", "var", "std", "var_mean", "std_mean", "prod", "max", "min", "argmax",
           "argmin", "amax", "amin", "logsumexp", "norm", "softmax", "log_softmax", "cumsum",
           "all", "any", "count_nonzero", "aminmax"]

values_indices = namedtuple("values_indices", ["values", "indices"])


def _dims(dim, ndim: int, op: str):
    """Normalise ``dim`` (None, int, or sequence) to a sorted tuple of axes; None = all."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    if isinstance(dim, (int, np.integer)):
        dim = (int(dim),)
    axes = tuple(sorted({_norm_dim(int(d), ndim, op) for d in dim}))
    if len(axes) != len(tuple(dim)):
        raise RuntimeError(f"{op}: dim {tuple(dim)} appears multiple times in the list of dims")
    return axes if ndim else ()


def _keep_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _acc_dtype(a):
    """The accumulation dtype of a reduction over array ``a``: float32 for float16 (as
    PyTorch's ``opmath``: a float16 running sum overflows at 65504 and stalls at 2048 + 1),
    else ``None`` (the array's own)."""
    return np.float32 if a.dtype == np.float16 else None


def _in_float32(fn, input, *args, **kwargs):
    """``fn(input, ...)`` computed in float32 and rounded back, for a float16 ``input``
    (differentiable: the casts are graph nodes); ``None`` for other dtypes."""
    if input.dtype != _dt.float16:
        return None
    out = fn(cast(input, _dt.float32), *args, **kwargs)
    if isinstance(out, tuple):
        return type(out)(*(cast(o, _dt.float16) for o in out)) if hasattr(out, "_fields") else \
            tuple(cast(o, _dt.float16) for o in out)
    return cast(out, _dt.float16)


class Sum(Function):
    def forward(self, x, axes, keepdim):
        self.in_shape, self.axes = x.shape, axes
        acc = _acc_dtype(x)
        if acc is not None:
            return _arr(x.sum(axis=axes, keepdims=keepdim, dtype=acc).astype(x.dtype))
        return _arr(x.sum(axis=axes, keepdims=keepdim))

    def backward(self, g):
        if not _grad_state.enabled:  # no graph recorded: a strided view, no Tensor ops
            return expand_array(g.array.reshape(_keep_shape(self.in_shape, self.axes)), self.in_shape)
        g = reshape(g, _keep_shape(self.in_shape, self.axes))
        return broadcast_to(g, self.in_shape)


def sum(input, dim=None, keepdim: bool = False, dtype=None):
    """Sum over ``dim`` (all dims by default) (``torch.sum``). Integers and bools sum to int64.

    Math: d(sum x)/dx_i = 1, so the gradient is broadcast back.

    Example:
        >>> import avila_ml as am
        >>> am.sum(am.tensor([[1.0, 2.0], [3.0, 4.0]]), dim=0)
        tensor([4., 6.])
    """
    if dtype is not None:
        input = cast(input, dtype)
    elif input.array.dtype.kind in "biu":
        input = cast(input, _dt.int64)
    axes = _dims(dim, input.ndim, "sum")
    return Sum.apply(input, axes, keepdim)


def _count(shape, axes) -> int:
    n = 1
    for a in axes:
        n *= shape[a]
    return n


def _float_check(input, op):
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"{op}: could not infer output dtype; input dtype must be floating point, got {input.dtype}")


def mean(input, dim=None, keepdim: bool = False, dtype=None):
    """Arithmetic mean over ``dim`` (``torch.mean``).

    Example:
        >>> import avila_ml as am
        >>> am.mean(am.tensor([1.0, 2.0, 3.0]))
        tensor(2.)
    """
    if dtype is not None:
        input = cast(input, dtype)
    _float_check(input, "mean")
    half = _in_float32(mean, input, dim, keepdim)
    if half is not None:
        return half
    axes = _dims(dim, input.ndim, "mean")
    n = _count(input.shape, axes)
    return Sum.apply(input, axes, keepdim) / (n if n else float("nan"))


def var(input, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
    """Variance over ``dim`` with ``correction`` (1 = Bessel, the default) (``torch.var``).

    Math: sum((x - mean)^2) / (N - correction).

    Example:
        >>> import avila_ml as am
        >>> am.var(am.tensor([1.0, 2.0, 3.0, 4.0]))
        tensor(1.6667)
    """
    _float_check(input, "var")
    half = _in_float32(var, input, dim, unbiased, keepdim, correction=correction)
    if half is not None:
        return half
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    axes = _dims(dim, input.ndim, "var")
    return Var.apply(input, axes, keepdim, correction, dim is None or input.ndim == 0)


class Var(Function):
    """Variance over ``axes``; backward as PyTorch's ``var_backward``,
    ``2 / (N - correction) * g * (x - mean(x))``, so an infinite element spoils only its own
    gradient (NaN there, +-inf elsewhere), not every element's through the mean. Over all
    elements with N <= correction PyTorch returns ``g * (NaN where x == mean(x), else inf)``."""

    def forward(self, x, axes, keepdim, correction, all_dims):
        self.axes, self.keepdim, self.in_shape = axes, keepdim, x.shape
        self.no_dof = all_dims and x.size - correction <= 0
        self.save_inputs(0)
        n = _count(x.shape, axes)
        denom = n - correction
        self.scale = 2.0 / denom if denom != 0 else math.inf  # as PyTorch's double 2.0 / (N - correction)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = x - x.sum(axis=axes, keepdims=True) / builtins.max(n, 1)
            out = (d * d).sum(axis=axes, keepdims=keepdim) / (denom if denom > 0 else float("nan") if n == 0 else 0.0)
        return _arr(out)

    def backward(self, g):
        (x,) = self.saved_inputs
        ks = _keep_shape(self.in_shape, self.axes)
        n = builtins.max(_count(self.in_shape, self.axes), 1)
        if self.no_dof:
            xa = x.array
            xp = backend_of(xa).xp
            at_mean = xa == xa.sum(axis=self.axes, keepdims=True) / n
            return reshape(g, ks) * Tensor._wrap(_arr(xp.where(at_mean, xa.dtype.type(np.nan), xa.dtype.type(np.inf))))
        mu = Sum.apply(x, self.axes, True) / n
        return (reshape(g, ks) * self.scale) * (x - mu)


class _StdSqrt(Function):
    """``sqrt(v)`` whose derivative at ``v = 0`` is taken as 0 (PyTorch's ``std_backward``
    masks it), so the std of a constant vector has a zero, not NaN, gradient."""

    def forward(self, v):
        self.save_outputs(0)
        return _arr(backend_of(v).xp.sqrt(v))

    def backward(self, g):
        (y,) = self.saved_outputs
        zero = y.array == 0
        return where(zero, 0.0, g / (2 * where(zero, 1.0, y)))


def std(input, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
    """Standard deviation, ``sqrt(var)`` (``torch.std``).

    Example:
        >>> import avila_ml as am
        >>> am.std(am.tensor([1.0, 3.0]))
        tensor(1.4142)
    """
    _float_check(input, "std")
    half = _in_float32(std, input, dim, unbiased, keepdim, correction=correction)
    if half is not None:
        return half
    return _StdSqrt.apply(var(input, dim, unbiased, keepdim, correction=correction))


def var_mean(input, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
    """``(var, mean)`` in one call (``torch.var_mean``).

    Example:
        >>> import avila_ml as am
        >>> am.var_mean(am.tensor([1.0, 3.0]))
        (tensor(2.), tensor(2.))
    """
    return var(input, dim, unbiased, keepdim, correction=correction), mean(input, dim, keepdim)


def std_mean(input, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
    """``(std, mean)`` in one call (``torch.std_mean``).

    Example:
        >>> import avila_ml as am
        >>> am.std_mean(am.tensor([1.0, 3.0]))
        (tensor(1.4142), tensor(2.))
    """
    return std(input, dim, unbiased, keepdim, correction=correction), mean(input, dim, keepdim)


class Prod(Function):
    """Product along one axis (or all, flattened)."""

    def forward(self, x, axis, keepdim):
        self.axis, self.keepdim = axis, keepdim
        self.save_inputs(0)
        self.save_outputs(0)
        return _arr(x.prod(axis=axis, keepdims=keepdim))

    def backward(self, g):
        (x,) = self.saved_inputs
        (out,) = self.saved_outputs
        axis = self.axis
        if axis is None:
            gk, ok = g, out
        elif self.keepdim:
            gk, ok = g, out
        else:
            gk, ok = unsqueeze(g, axis), unsqueeze(out, axis)
        xa = x.array
        if xa.ndim == 0:
            return reshape(g, ())  # PyTorch's prod_backward: a 0-d input's gradient is grad, also at NaN/inf
        if not (xa == 0).any():
            return gk * ok / x
        # with zeros, out / x is undefined: use the product of all the *other* elements
        if is_grad_enabled():
            # create_graph: the array shortcut below would not differentiate again
            return gk * _prod_of_others(x, axis)
        xp = backend_of(xa).xp
        ax = 0 if axis is None else axis
        flat = xa.reshape(-1) if axis is None else xa
        ones = xp.ones_like(xp.take(flat, [0], axis=ax))
        left = xp.cumprod(xp.concatenate([ones, xp.take(flat, range(flat.shape[ax] - 1), axis=ax)], axis=ax), axis=ax)
        rev = xp.flip(flat, ax)
        right = xp.flip(xp.cumprod(xp.concatenate([ones, xp.take(rev, range(flat.shape[ax] - 1), axis=ax)], axis=ax), axis=ax), ax)
        others = Tensor._wrap((left * right).reshape(xa.shape))
        return gk * others


def _prod_of_others(x, axis):
    """``others[j] = prod_{k != j} x[k]`` along ``axis`` (all elements when None), written
    with differentiable ops: row j of an (n, n) matrix is x with x[j] replaced by 1, and the
    rows are multiplied out. O(n^2) memory, used only for higher derivatives with zeros."""
    from .shape import movedim
    shape = x.shape
    flat, ax = (reshape(x, (-1,)), 0) if axis is None else (x, axis)
    xm = movedim(flat, ax, -1)                                    # (..., n)
    n = xm.shape[-1]
    eye = backend_of(x.array).xp.eye(n, dtype=bool)               # (n, n)
    rows = where(eye, 1.0, unsqueeze(xm, -2))                     # (..., n, n)
    others = Prod.apply(rows, rows.ndim - 1, False)               # (..., n)
    return reshape(movedim(others, -1, ax), shape)


def prod(input, dim=None, keepdim: bool = False, dtype=None):
    """Product of elements, over one ``dim`` or all (``torch.prod``).

    Math: d/dx_i prod(x) = prod_{j != i} x_j (exact even when some x_j are 0).

    Example:
        >>> import avila_ml as am
        >>> am.prod(am.tensor([[1.0, 2.0], [3.0, 4.0]]), dim=1)
        tensor([ 2., 12.])
    """
    if dtype is not None:
        input = cast(input, dtype)
    elif input.array.dtype.kind in "biu":
        input = cast(input, _dt.int64)
    if dim is None:
        return Prod.apply(input, None, False)
    return Prod.apply(input, _norm_dim(dim, input.ndim, "prod"), keepdim)


class AMax(Function):
    """Max over axes; the gradient is shared evenly among tied maxima (as ``torch.amax``).

    A NaN maximum: ``amax``/``amin`` compare ``x == result`` (no element is equal, so the
    slice gets NaN gradients: g / 0 * 0, PyTorch's ``scale_grad_by_count``); with
    ``nan_ties`` (``max()``/``min()`` of all elements, the inf-norms) the NaN elements are the
    maxima and share g, as PyTorch's ``evenly_distribute_backward``."""

    def forward(self, x, axes, keepdim, is_min, nan_ties=False):
        self.in_shape, self.axes, self.nan_ties = x.shape, axes, nan_ties
        self.save_inputs(0)
        self.save_outputs(0)
        self.keepdim = keepdim
        if x.size == 0 and (not axes or builtins.any(x.shape[a] == 0 for a in axes)):
            op = "amin" if is_min else "amax"
            raise RuntimeError(f"{op}: expected a non-empty tensor (or reduction over non-empty dims), "
                               f"got shape {tuple(x.shape)} reducing dims {axes}")
        r = x.min(axis=axes, keepdims=keepdim) if is_min else x.max(axis=axes, keepdims=keepdim)
        return _arr(r)

    def backward(self, g):
        (x,) = self.saved_inputs
        (out,) = self.saved_outputs
        ks = _keep_shape(self.in_shape, self.axes)
        o = out.array.reshape(ks)
        if not _grad_state.enabled and _trailing(self.axes, x.array.ndim):
            from ..cpu_accel import _native  # the compiled kernel: two passes per row, rows over the threads
            dx = _native.amax_backward(x.array, out.array, g.array, self.nan_ties)
            if dx is not None:
                return Tensor._wrap(dx)
        mask = x.array == o
        if not _grad_state.enabled and _single_maxima(mask, o, g.array):
            # every slice has exactly one maximum (the usual case): g scattered through the mask,
            # without the counts' division (a float64 temporary as large as x)
            dx = np.empty(mask.shape, dtype=g.array.dtype)
            np.copyto(dx, mask, casting="unsafe")
            dx *= g.array.reshape(ks)
            return Tensor._wrap(dx)
        if self.nan_ties:
            xp = backend_of(o).xp
            mask = mask | (xp.isnan(x.array) & xp.isnan(o))
        cnt = mask.sum(axis=self.axes, keepdims=True)
        # PyTorch's order, (g / count) * mask: a tie's share rounds as PyTorch's does (g * (1 /
        # count) differed in the last bit); where nothing matches (a NaN result) (g / 0) * 0 is NaN
        with np.errstate(invalid="ignore", divide="ignore"):
            share = reshape(g, ks) / Tensor._wrap(cnt.astype(x.array.dtype))
            return broadcast_to(share, self.in_shape) * Tensor._wrap(mask.astype(x.array.dtype))


def _trailing(axes, ndim) -> bool:
    """Whether ``axes`` (sorted, non-empty) are the last ones of an ``ndim``-d array (each slice
    of a C-contiguous array is then one contiguous row)."""
    return bool(axes) and tuple(axes) == tuple(range(ndim - len(axes), ndim))


def _single_maxima(mask, o, g) -> bool:
    """True when ``mask`` (x == its slice maxima ``o``, NumPy) marks exactly one element per
    slice and ``g`` is a NumPy array of x's dtype: no slice maximum is NaN (so each slice matches
    at least once) and there are as many matches as slices. Two passes over the bool mask
    at most; a tie or a NaN maximum takes the general path."""
    if not (isinstance(mask, np.ndarray) and isinstance(g, np.ndarray) and g.dtype == o.dtype):
        return False
    if o.dtype.kind in "fc" and np.isnan(o).any():
        return False
    return int(np.count_nonzero(mask)) == o.size


def amax(input, dim=(), keepdim: bool = False):
    """Maximum over ``dim`` (all dims when empty) (``torch.amax``); ties share the gradient.

    Example:
        >>> import avila_ml as am
        >>> am.amax(am.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=0)
        tensor([7., 5.])
    """
    axes = _dims(dim if dim != () else None, input.ndim, "amax")
    return AMax.apply(input, axes, keepdim, False)


def amin(input, dim=(), keepdim: bool = False):
    """Minimum over ``dim`` (all dims when empty) (``torch.amin``); ties share the gradient.

    Example:
        >>> import avila_ml as am
        >>> am.amin(am.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=1)
        tensor([1., 2.])
    """
    axes = _dims(dim if dim != () else None, input.ndim, "amin")
    return AMax.apply(input, axes, keepdim, True)


def _arg(input, dim, keepdim, is_min, op):
    a = input.array
    if a.size == 0 and (dim is None or a.ndim == 0 or a.shape[_norm_dim(dim, a.ndim, op)] == 0):
        raise RuntimeError(f"{op}: expected a non-empty tensor (or a non-empty dim), got shape "
                           f"{tuple(a.shape)} and dim={dim}")
    f = a.argmin if is_min else a.argmax
    if dim is None:
        r = _arr(f()).astype(np.int64)  # index into the flattened tensor
        return _nondiff(r.reshape((1,) * a.ndim if keepdim else ()))
    d = _norm_dim(dim, input.ndim, op)
    r = f(axis=d, keepdims=keepdim) if a.ndim else f()
    return _nondiff(_arr(r).astype(np.int64))


def argmax(input, dim=None, keepdim: bool = False):
    """Index of the maximum (first on ties), flattened when ``dim`` is None (``torch.argmax``).

    Example:
        >>> import avila_ml as am
        >>> am.argmax(am.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=1)
        tensor([1, 0])
    """
    return _arg(input, dim, keepdim, False, "argmax")


def argmin(input, dim=None, keepdim: bool = False):
    """Index of the minimum (first on ties) (``torch.argmin``).

    Example:
        >>> import avila_ml as am
        >>> am.argmin(am.tensor([3.0, 1.0, 1.0]))
        tensor(1)
    """
    return _arg(input, dim, keepdim, True, "argmin")


def _max_min(input, dim, keepdim, other, is_min):
    op = "min" if is_min else "max"
    if isinstance(dim, Tensor):
        other, dim = dim, None
    if other is not None:
        from .elementwise import maximum, minimum
        return (minimum if is_min else maximum)(input, other)
    if dim is None:
        return AMax.apply(input, tuple(range(input.ndim)), False, is_min, True)
    from .indexing import gather
    d = _norm_dim(dim, input.ndim, op)
    if input.shape and input.shape[d] == 0:
        raise IndexError(f"{op}: expected reduction dim {dim} to have non-zero size, shape {tuple(input.shape)}")
    idx = _arg(input, d, True, is_min, op)
    vals = gather(input, d, idx) if input.ndim else input
    if not keepdim and input.ndim:
        vals, idx = squeeze(vals, d), squeeze(idx, d)
    return values_indices(vals, idx)


def max(input, dim=None, keepdim: bool = False, *, other=None):
    """Maximum: of all elements, or ``(values, indices)`` along ``dim``, or elementwise
    against another tensor (``torch.max``).

    Example:
        >>> import avila_ml as am
        >>> am.max(am.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=1).values
        tensor([5., 7.])
    """
    return _max_min(input, dim, keepdim, other, False)


def min(input, dim=None, keepdim: bool = False, *, other=None):
    """Minimum, like :func:`max` (``torch.min``).

    Example:
        >>> import avila_ml as am
        >>> am.min(am.tensor([3.0, 1.0, 2.0]))
        tensor(1.)
        >>> am.min(am.tensor([[3.0, 1.0], [0.0, 5.0]]), dim=1)
        values_indices(values=tensor([1., 0.]), indices=tensor([1, 0]))
    """
    return _max_min(input, dim, keepdim, other, True)


def aminmax(input, *, dim=None, keepdim: bool = False):
    """``(min, max)`` over ``dim`` (``torch.aminmax``).

    Example:
        >>> import avila_ml as am
        >>> am.aminmax(am.tensor([3.0, -1.0, 2.0]))
        aminmax(min=tensor(-1.), max=tensor(3.))
    """
    d = () if dim is None else dim
    return namedtuple("aminmax", ["min", "max"])(amin(input, d, keepdim), amax(input, d, keepdim))


@autocast_op("logsumexp")
def logsumexp(input, dim, keepdim: bool = False):
    """``log(sum(exp(x)))`` over ``dim``, computed stably (``torch.logsumexp``).

    Math: m + log(sum(exp(x - m))) with m = max(x); the gradient is softmax(x).
    Rows of all ``-inf`` give ``-inf``.

    Example:
        >>> import avila_ml as am
        >>> am.logsumexp(am.tensor([1e4, 1e4]), dim=0)
        tensor(10000.6934)
    """
    _float_check(input, "logsumexp")
    half = _in_float32(logsumexp, input, dim, keepdim)
    if half is not None:
        return half
    axes = _dims(dim, input.ndim, "logsumexp")
    return LogSumExp.apply(input, axes, keepdim)


class LogSumExp(Function):
    """``log(sum(exp(x)))`` over ``axes``, shifted by the (finite) maximum; backward as
    PyTorch's ``logsumexp_backward``, ``g * exp(x - result)`` (an infinite logit gives NaN at
    itself and 0 elsewhere, not NaN for the whole row)."""

    def forward(self, x, axes, keepdim):
        self.axes, self.in_shape = axes, x.shape
        self.save_inputs(0)
        self.save_outputs(0)
        xp = backend_of(x).xp
        if x.size == 0:
            m = xp.zeros(_keep_shape(x.shape, axes), dtype=x.dtype)
        else:
            m = x.max(axis=axes, keepdims=True)
            m = xp.where(xp.isfinite(m), m, x.dtype.type(0))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out = xp.log(xp.exp(x - m).sum(axis=axes, keepdims=True)) + m
        return _arr(out if keepdim else out.reshape(tuple(s for i, s in enumerate(out.shape) if i not in axes)))

    def backward(self, g):
        (x,) = self.saved_inputs
        (out,) = self.saved_outputs
        ks = _keep_shape(self.in_shape, self.axes)
        return reshape(g, ks) * exp(x - reshape(out, ks))


def _np_f32(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype == np.float32


def _accel_softmax():
    """``avila_ml.cpu_accel._softmax`` (imported on first use; its functions return None when
    oneDNN is absent, disabled by ``avila_ml.backends.mkldnn.enabled = False``, has no JIT
    kernel for the case, or the array is small, and the NumPy code below runs)."""
    from ..cpu_accel import _softmax
    return _softmax


def _native_softmax():
    """``avila_ml.cpu_accel._native_softmax``, the compiled row kernels (imported on first use;
    its functions return None where the kernels are not built or switched off)."""
    from ..cpu_accel import _native_softmax
    return _native_softmax


def _native_rows(x, axis):
    """``x`` as a ``(rows, n)`` view with ``axis`` along its rows, for the compiled row kernels:
    a C-contiguous float32/float64 NumPy array with no elements after ``axis`` to stride over
    (the last axis, or only size-1 axes after it); else None (other layouts keep the NumPy path)."""
    if not (isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous
            and x.size and x.ndim):
        return None
    if math.prod(x.shape[axis + 1:]) != 1:
        return None
    return x.reshape(-1, x.shape[axis])


def _native_backward(name, g, y, axis):
    """The compiled row kernel ``name`` (``softmax_backward`` / ``log_softmax_backward``) on
    ``g`` and the forward's output ``y`` seen as ``(rows, n)`` (:func:`_native_rows`), shaped as
    ``y``; None where it does not apply."""
    rows = _native_rows(y, axis)
    if rows is None or not g.flags.c_contiguous:
        return None
    dx = getattr(_native_softmax(), name)(g.reshape(rows.shape), rows)
    return None if dx is None else dx.reshape(y.shape)


def _raw_backward(g, y) -> bool:
    """The gradient may be computed by raw NumPy code: no graph of it is wanted
    (``create_graph=False``) and ``g``, ``y`` are same-shaped float32/float64 NumPy arrays."""
    return (not _grad_state.enabled and isinstance(y, np.ndarray) and isinstance(g, np.ndarray)
            and y.dtype in (np.float32, np.float64) and g.dtype == y.dtype and g.shape == y.shape)


def _rows(a, axis):
    """``a`` as a C-contiguous ``(outer, n, inner)`` array with ``axis`` in the middle (a view
    when ``a`` is C-contiguous)."""
    sh = a.shape
    return np.ascontiguousarray(a).reshape(math.prod(sh[:axis]), sh[axis], math.prod(sh[axis + 1:]))


def _shift(x, axis, xp):
    """The row maximum, with an all ``-inf`` row shifted by 0 instead (so it gives NaN, not
    exp(-inf + inf)); a +inf makes the whole row NaN, as in PyTorch (inf - inf)."""
    m = x.max(axis=axis, keepdims=True) if x.size else x.sum(axis=axis, keepdims=True)
    m[m == -xp.inf] = 0
    return m


class Softmax(Function):
    """Softmax along ``axis``. C-contiguous float32/float64 NumPy arrays over the last axis take
    the compiled row kernels (``cpu_accel/_native_softmax.py``: one read and one write of the
    array, rows over the OpenMP team); else float32 NumPy arrays take oneDNN's softmax primitive
    when it is installed (about 5x NumPy's float32 ``exp`` path); the NumPy path makes four passes
    (max, shift, exp in place, sum) and scales by the reciprocal of the sums. The backward
    ``y (g - sum(g y))`` is raw array code (the compiled kernel, else the row dot products by
    ``einsum``, no temporary) unless the graph of the gradient is built."""

    def forward(self, x, axis):
        self.axis = axis
        self.save_outputs(0)
        rows = _native_rows(x, axis)
        y = None if rows is None else _native_softmax().softmax_forward(rows)
        if y is not None:
            return y.reshape(x.shape)
        y = _accel_softmax().forward(x, axis) if _np_f32(x) else None
        if y is not None:
            return y
        xp = backend_of(x).xp
        e = x - _shift(x, axis, xp)
        xp.exp(e, out=e)  # in place: one temporary instead of two
        s = e.sum(axis=axis, keepdims=True)
        with np.errstate(divide="ignore"):  # an all -inf row: 0 * (1/0) = NaN, as 0/0 before
            e *= 1 / s
        return e

    def backward(self, g):
        (y,) = self.saved_outputs
        if _raw_backward(g.array, y.array):
            ga, ya = g.array, y.array
            dx = _native_backward("softmax_backward", ga, ya, self.axis)
            if dx is None:
                dx = _accel_softmax().backward(ga, ya, self.axis) if _np_f32(ya) else None
            if dx is None:
                g3, y3 = _rows(ga, self.axis), _rows(ya, self.axis)
                dx = g3 - np.einsum("onk,onk->ok", g3, y3)[:, None, :]
                dx *= y3
                dx = dx.reshape(ya.shape)
            return Tensor._wrap(dx)
        gy = g * y
        return gy - y * Sum.apply(gy, (self.axis,), True)


def _exp_fast(z, check_nan=True):
    """exp of an array of values <= 0 (or NaN): oneDNN's eltwise exp for a large float32 NumPy
    array (JIT vector code on all threads, several times NumPy's float32 ``exp``), else the
    backend's. oneDNN's exp gives +inf at NaN; as every true result is <= 1, a non-finite
    maximum finds that (one max-reduce pass, SIMD: a third of a pairwise sum's time) and the NaNs
    are put back, unless ``check_nan=False`` (the caller then treats a non-finite row sum as NaN
    itself)."""
    if _np_f32(z):
        from ..cpu_accel import _eltwise
        e = _eltwise.forward("exp", z)
        if e is not None:
            if check_nan and e.size and not np.isfinite(np.maximum.reduce(e, axis=None)):
                e[np.isnan(z)] = np.nan
            return e
    return backend_of(z).xp.exp(z)


def log_softmax_array(x, axis, out=None):
    """log-softmax of an array along ``axis``: ``z - log(sum(exp(z)))``, ``z = x - max``. A
    C-contiguous float32/float64 NumPy array over its last axis (and no ``out``) takes the
    compiled row kernel (``cpu_accel/_native_softmax.py``: one read and one write, its ``exp``
    within 1.5 ulps); else the exponentials come from :func:`_exp_fast` and NumPy's pairwise
    sums and ``log`` (oneDNN's own ``softmax_log`` primitive is faster still but was measured 2x
    less accurate than PyTorch's float32 kernel near 0, where the gradient weighs most; this is
    within 2 ulps there).
    The array-level body of :func:`log_softmax` (``torch.log_softmax``), no autograd; the
    result is written into ``out`` when given (a block of a larger result: no copy).

    Example:
        >>> import numpy as np
        >>> from avila_ml.ops.reduction import log_softmax_array
        >>> np.round(log_softmax_array(np.array([[1e4, 1e4]], np.float32), 1), 4)
        array([[-0.6931, -0.6931]], dtype=float32)
    """
    rows = _native_rows(x, axis) if out is None else None
    y = None if rows is None else _native_softmax().log_softmax_forward(rows)
    if y is not None:
        return y.reshape(x.shape)
    xp = backend_of(x).xp
    z = xp.subtract(x, _shift(x, axis, xp), out=out)
    acc = _acc_dtype(x)  # float16: the sum of exponentials in float32, as PyTorch
    s = _exp_fast(z, check_nan=False).sum(axis=axis, keepdims=True, dtype=acc)
    # each term is <= 1, so an infinite sum means oneDNN's exp met a NaN (a NaN or +inf logit):
    # a NaN row, as PyTorch gives
    s[s == xp.inf] = xp.nan
    z -= xp.log(s).astype(z.dtype)
    return z


class LogSoftmax(Function):
    """Log-softmax along ``axis`` (:func:`log_softmax_array`). The backward
    ``g - exp(y) sum(g)`` is raw array code (the compiled row kernel over the last axis, else
    ``exp`` through oneDNN's eltwise primitive for large float32 arrays) unless the graph of the
    gradient is built."""

    def forward(self, x, axis):
        self.axis = axis
        self.save_outputs(0)
        return log_softmax_array(x, axis)

    def backward(self, g):
        (y,) = self.saved_outputs
        if _raw_backward(g.array, y.array):
            ga, ya = g.array, y.array
            dx = _native_backward("log_softmax_backward", ga, ya, self.axis)
            if dx is not None:
                return Tensor._wrap(dx)
            e = _exp_fast(ya)
            e3, g3 = _rows(e, self.axis), _rows(ga, self.axis)
            e3 *= g3.sum(axis=1, keepdims=True)
            np.subtract(g3, e3, out=e3)
            return Tensor._wrap(e3.reshape(ya.shape))
        return g - exp(y) * Sum.apply(g, (self.axis,), True)


def _softmax_input(input, dim, dtype, op):
    if dtype is not None:
        input = cast(input, dtype)
    _float_check(input, op)
    if dim is None:
        raise TypeError(f"{op}: dim must be given (implicit dim choice is deprecated in PyTorch)")
    return input, _norm_dim(dim, input.ndim, op)


def softmax(input, dim, dtype=None):
    """``exp(x_i) / sum_j exp(x_j)`` along ``dim`` (``torch.softmax``).

    Math: computed as exp(x - max) / sum(exp(x - max)); dy = y * (g - sum(g * y)).

    Example:
        >>> import avila_ml as am
        >>> am.softmax(am.tensor([0.0, 0.0]), dim=0)
        tensor([0.5000, 0.5000])
    """
    input, d = _softmax_input(input, dim, dtype, "softmax")
    half = _in_float32(softmax, input, d)
    if half is not None:
        return half
    if input.ndim == 0:
        return Softmax.apply(reshape(input, (1,)), 0).reshape(())
    return Softmax.apply(input, d)


def log_softmax(input, dim, dtype=None):
    """``x - logsumexp(x)`` along ``dim`` (``torch.log_softmax``), stable for huge logits.

    Example:
        >>> import avila_ml as am
        >>> am.log_softmax(am.tensor([1e4, 1e4]), dim=0).round(decimals=4)  # no overflow
        tensor([-0.6931, -0.6931])
    """
    input, d = _softmax_input(input, dim, dtype, "log_softmax")
    if input.ndim == 0:
        return LogSoftmax.apply(reshape(input, (1,)), 0).reshape(())
    return LogSoftmax.apply(input, d)


class CumSum(Function):
    def forward(self, x, axis):
        self.axis = axis
        acc = _acc_dtype(x)
        if acc is not None:
            return backend_of(x).xp.cumsum(x, axis=axis, dtype=acc).astype(x.dtype)
        return backend_of(x).xp.cumsum(x, axis=axis)

    def backward(self, g):
        return flip(CumSum.apply(flip(g, (self.axis,)), self.axis), (self.axis,))


def cumsum(input, dim: int, dtype=None):
    """Running sum along ``dim`` (``torch.cumsum``); backward is a reversed cumsum.

    Example:
        >>> import avila_ml as am
        >>> am.cumsum(am.tensor([1.0, 2.0, 3.0]), dim=0)
        tensor([1., 3., 6.])
    """
    if dtype is not None:
        input = cast(input, dtype)
    elif input.array.dtype.kind in "biu":
        input = cast(input, _dt.int64)
    if input.ndim == 0:
        return input
    return CumSum.apply(input, _norm_dim(dim, input.ndim, "cumsum"))


class Norm2(Function):
    def forward(self, x, axes, keepdim):
        self.in_shape, self.axes = x.shape, axes
        self.save_inputs(0)
        self.save_outputs(0)
        xp = backend_of(x).xp
        return _arr(xp.sqrt((x * x).sum(axis=axes, keepdims=keepdim)))

    def backward(self, g):
        (x,) = self.saved_inputs
        (out,) = self.saved_outputs
        ks = _keep_shape(self.in_shape, self.axes)
        o = reshape(out, ks)
        zero = o.array == 0
        # the subgradient at the origin is taken as 0, as in PyTorch
        safe = where(zero, 1.0, o)
        scale = where(zero, 0.0, reshape(g, ks) / safe)
        return x * scale


class PNorm(Function):
    """``(sum |x|^p)^(1/p)`` over ``axes`` for a general ``p``.

    Backward as PyTorch's ``norm_backward``: ``g * sgn(x) |x|^(p-1) / norm^(p-1)``, with
    ``|x|^(p-1)`` taken as 0 where ``x == 0`` (finite for ``p < 1``) and the whole gradient
    as 0 where the norm is 0 (the subgradient at the origin), so ``norm(zeros, p=3)`` has a
    zero, not NaN, gradient. Written with Tensor ops (made safe before any power), so the
    double backward is finite too.
    """

    def forward(self, x, p, axes, keepdim):
        self.p, self.axes, self.in_shape = p, axes, x.shape
        self.save_inputs(0)
        self.save_outputs(0)
        xp = backend_of(x).xp
        s = xp.power(xp.abs(x), x.dtype.type(p)).sum(axis=axes, keepdims=keepdim)
        return _arr(xp.power(s, s.dtype.type(1.0 / p)))

    def backward(self, g):
        (x,) = self.saved_inputs
        (out,) = self.saved_outputs
        p, ks = self.p, _keep_shape(self.in_shape, self.axes)
        n, g = reshape(out, ks), reshape(g, ks)
        x_zero = x.array == 0
        scaled = where(x_zero, 0.0, _sign(x) * where(x_zero, 1.0, _abs(x)) ** (p - 1))
        n_zero = n.array == 0
        scale = where(n_zero, 0.0, g / where(n_zero, 1.0, n) ** (p - 1))
        return scaled * scale


def norm(input, p="fro", dim=None, keepdim: bool = False, dtype=None):
    """Vector p-norm over ``dim`` (all elements by default) (``torch.norm`` /
    ``torch.linalg.vector_norm``). ``p`` may be a number, ``inf``, ``-inf`` or ``"fro"`` (= 2).

    Math: (sum |x|^p)^(1/p); for p=2 the gradient is x / ||x|| (0 at the origin).

    Example:
        >>> import avila_ml as am
        >>> am.norm(am.tensor([3.0, 4.0]))
        tensor(5.)
    """
    if dtype is not None:
        input = cast(input, dtype)
    _float_check(input, "norm")
    half = _in_float32(norm, input, p, dim, keepdim)
    if half is not None:
        return half
    axes = _dims(dim, input.ndim, "norm")
    if p == "fro" or p == 2:
        return Norm2.apply(input, axes, keepdim)
    if p == math.inf or p == "inf" or p == -math.inf:
        # PyTorch's inf-norm backward shares g among the |x| equal to the norm or NaN, times sgn(x)
        return AMax.apply(_abs(input), axes, keepdim, p == -math.inf, True)
    if p == 0:
        return cast(Sum.apply(cast(input != 0, input.dtype), axes, keepdim), input.dtype)
    if p == 1:
        return Sum.apply(_abs(input), axes, keepdim)
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise ValueError(f"norm: unsupported p={p!r}; expected a number, inf, -inf or 'fro'")
    return PNorm.apply(input, float(p), axes, keepdim)


def all(input, dim=None, keepdim: bool = False):
    """True where every element along ``dim`` is nonzero (``torch.all``).

    Example:
        >>> import avila_ml as am
        >>> am.all(am.tensor([[1.0, 0.0], [2.0, 3.0]]), dim=1)
        tensor([False,  True])
    """
    axes = _dims(dim, input.ndim, "all")
    return _nondiff(_arr(input.array.astype(bool).all(axis=axes, keepdims=keepdim)))


def any(input, dim=None, keepdim: bool = False):
    """True where some element along ``dim`` is nonzero (``torch.any``).

    Example:
        >>> import avila_ml as am
        >>> am.any(am.tensor([[0.0, 0.0], [0.0, 3.0]]), dim=1)
        tensor([False,  True])
    """
    axes = _dims(dim, input.ndim, "any")
    return _nondiff(_arr(input.array.astype(bool).any(axis=axes, keepdims=keepdim)))


def count_nonzero(input, dim=None):
    """Number of nonzero elements along ``dim`` (``torch.count_nonzero``).

    Example:
        >>> import avila_ml as am
        >>> am.count_nonzero(am.tensor([[0.0, 1.0], [2.0, 3.0]]), dim=1)
        tensor([1, 2])
    """
    axes = _dims(dim, input.ndim, "count_nonzero")
    return _nondiff(_arr((input.array != 0).sum(axis=axes)).astype(np.int64))
