"""Out-of-place forms of the write ops, whose in-place forms are ``fill_``, ``copy_`` and
``x[advanced_key] = v`` (``index_put_``).

Each is one Function like every other op; ``autograd/inplace.py`` turns it into the in-place
op and records it in the graph.
"""
from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..backends import backend_of
from ..debug import host_checks
from ..tensor import Tensor

__all__ = ["filled", "copied", "index_put", "index_fill"]


class Fill(Function):
    def forward(self, x, value):
        out = backend_of(x).xp.empty_like(x)
        out[...] = value
        return out

    def backward(self, g):
        return None  # every element was overwritten: the old value gets no gradient


class FillWith(Function):
    """``x`` overwritten by a 0-d tensor ``value``: the gradient of ``value`` is the sum."""

    def forward(self, x, value):
        self.dtype = value.dtype
        out = backend_of(x).xp.empty_like(x)
        out[...] = value
        return out

    def backward(self, g):
        from .elementwise import cast
        gv = g.sum() if self.needs_input_grad[1] else None
        if gv is not None and gv.array.dtype != self.dtype:
            gv = cast(gv, _dtype_of(self.dtype))
        return None, gv


def _dtype_of(np_dtype):
    from .. import dtypes as _dt
    return _dt.from_numpy_dtype(np_dtype)


def filled(input, value):
    """A tensor shaped like ``input`` with every element ``value`` (the out-of-place ``fill_``).

    Math: d out / d value = 1 per element (value a 0-d tensor); d out / d input = 0.

    Example:
        >>> import avila_ml as am
        >>> am.ops.write.filled(am.zeros(2), 3.0)
        tensor([3., 3.])
    """
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise RuntimeError(
                f"fill_ only supports 0-dimension value tensor but got tensor with {value.ndim} "
                "dimensions."
            )
        return FillWith.apply(input, value)
    return Fill.apply(input, value)


class Copy(Function):
    def forward(self, x, src):
        self.src_shape, self.src_dtype = src.shape, src.dtype
        out = backend_of(x).xp.empty_like(x)
        backend_of(x).xp.copyto(out, src, casting="unsafe")
        return out

    def backward(self, g):
        if not self.needs_input_grad[1]:
            return None, None
        from .elementwise import cast, sum_to
        gs = sum_to(g, self.src_shape)
        if gs.array.dtype != self.src_dtype:
            gs = cast(gs, _dtype_of(self.src_dtype))
        return None, gs


def copied(input, src):
    """``src`` broadcast to ``input``'s shape, cast to its dtype and moved to its device (the
    out-of-place ``copy_``).

    Math: d out / d src sums over the broadcast dims; d out / d input = 0.

    Example:
        >>> import avila_ml as am
        >>> am.ops.write.copied(am.zeros(2, 2), am.tensor([1.0, 2.0]))
        tensor([[1., 2.],
                [1., 2.]])
    """
    if not isinstance(src, Tensor):
        xp = backend_of(input.array).xp
        src = Tensor._wrap(xp.asarray(src))
    if src.device != input.device:
        from .shape import to_device
        src = to_device(src, input.device)
    try:
        ok = np.broadcast_shapes(src.shape, input.shape) == tuple(input.shape)
    except ValueError:
        ok = False
    if not ok:
        raise RuntimeError(
            f"copy_: the size of the source {list(src.shape)} must be broadcastable to the "
            f"destination {list(input.shape)}"
        )
    return Copy.apply(input, src)


class ZeroAt(Function):
    """``g`` with the positions ``key`` zeroed (self-adjoint)."""

    def forward(self, g, key):
        self.key = key
        out = g.copy()
        out[key] = 0
        return out

    def backward(self, gg):
        return ZeroAt.apply(gg, self.key)


class IndexPut(Function):
    def forward(self, x, value, key):
        self.key, self.value_shape = key, value.shape
        out = x.copy()
        out[key] = value
        return out

    def backward(self, g):
        need_x, need_v = self.needs_input_grad
        gx = ZeroAt.apply(g, self.key) if need_x else None
        gv = None
        if need_v:
            from .elementwise import sum_to
            from .indexing import GetItem
            gv = sum_to(GetItem.apply(g, self.key, True), self.value_shape)
        return gx, gv


def index_put(input, key, value):
    """``input`` with ``value`` written at an advanced index ``key`` (out-of-place
    ``index_put_``; ``x[key] = value`` records it). With repeated indices the last write wins.

    Math: d out / d value = the gradient read at ``key`` (summed over broadcast dims);
    d out / d input = the gradient with the written positions zeroed.

    Example:
        >>> import avila_ml as am
        >>> x = am.zeros(4)
        >>> am.ops.write.index_put(x, (am.tensor([0, 2]),), am.tensor(5.0))
        tensor([5., 0., 5., 0.])
    """
    from .indexing import normalize_key
    xp = backend_of(input.array).xp
    k = normalize_key(key, xp)
    if not isinstance(value, Tensor):
        value = Tensor._wrap(xp.asarray(value, dtype=input.array.dtype))
    elif value.dtype is not input.dtype:
        value = value.to(input.dtype)
    try:
        target = np.empty(input.shape, dtype=np.int8)[tuple(_np_key(p) for p in k)].shape
        np.broadcast_to(np.empty(value.shape, dtype=np.int8), target)
    except (IndexError, ValueError) as e:
        raise IndexError(
            f"index_put_: cannot write a value of shape {tuple(value.shape)} at index {key!r} of a "
            f"tensor of shape {tuple(input.shape)}: {e}"
        ) from None
    return IndexPut.apply(input, value, k)


def _np_key(p):
    """A host copy of one index part, to check shapes without touching the device."""
    if hasattr(p, "shape") and not isinstance(p, np.ndarray):
        return backend_of(p).to_numpy(p)
    return p


def index_fill(input, dim: int, index, value):
    """``input`` with the entries at ``index`` along ``dim`` set to ``value`` (``torch.index_fill``).

    Math: the gradient of ``input`` is zero at the filled entries; a 0-d tensor ``value``
    receives the sum of the gradient there.

    Example:
        >>> import avila_ml as am
        >>> am.ops.write.index_fill(am.zeros(2, 3), 1, am.tensor([0, 2]), -1.0)
        tensor([[-1.,  0., -1.],
                [-1.,  0., -1.]])
    """
    from ..tensor import _norm_dim
    if not isinstance(index, Tensor) or index.array.dtype.kind not in "iu" or index.ndim > 1:
        raise RuntimeError(f"index_fill_: index must be a 0-d or 1-d integer tensor, got {getattr(index, 'shape', index)}")
    if index.device != input.device:
        raise RuntimeError(f"index_fill_: expected all tensors on the same device, but found {input.device} "
                           f"(input) and {index.device} (index)")
    if isinstance(value, Tensor) and value.ndim != 0:
        raise RuntimeError(
            f"index_fill_ only supports a 0-dimensional value tensor, but got tensor with {value.ndim} dimension(s)."
        )
    d = _norm_dim(dim, input.ndim, "index_fill_")
    n = input.shape[d] if input.ndim else 1
    idx = index.array.reshape(-1)
    # the range check reads the index on the host: on CUDA only with sync checks on (avila_ml.debug)
    if idx.size and host_checks(idx) and (int(idx.max()) >= n or int(idx.min()) < -n):
        raise IndexError(f"index_fill_: index out of range for dim {dim} of size {n}")
    key = (slice(None),) * d + (idx,)
    return index_put(input, key, value)
