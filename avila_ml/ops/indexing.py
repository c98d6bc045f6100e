"""Indexing: ``x[key]``, gather/scatter, index_select/index_add, masked_fill, take_along_dim.

Reading with an index is differentiable; its backward scatter-adds the gradient back to the
positions read (repeated indices accumulate), and that scatter's backward reads again.
"""
from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..debug import host_checks
from ..backends import backend_of
from ..tensor import Tensor, _norm_dim
from .elementwise import where, _prepare

__all__ = ["getitem", "gather", "scatter_add", "scatter", "index_select", "index_add",
           "masked_fill", "take_along_dim", "normalize_key", "IndexOutOfRangeError"]


class IndexOutOfRangeError(IndexError, RuntimeError):
    """An index outside ``[0, size)`` given to gather/scatter/index_select/index_add.

    PyTorch raises ``RuntimeError`` for some of these ops (gather, scatter) and ``IndexError``
    for others (index_select); this is both, so either ``except`` catches it.

    Example:
        >>> import avila_ml as am
        >>> try:
        ...     am.gather(am.zeros(2, 3), 1, am.tensor([[-1], [0]]))
        ... except RuntimeError as e:
        ...     print(e)
        gather: index out of range: index -1 is out of bounds for dimension 1 with size 3
    """


def _check_device(op: str, input, index) -> None:
    """Raise when ``index`` lives on another device than ``input`` (PyTorch raises too): a CPU
    index would otherwise reach a CUDA kernel as a host array."""
    if index.device != input.device:
        raise RuntimeError(f"{op}: expected all tensors on the same device, but found {input.device} "
                           f"(input) and {index.device} (index)")


def _check_range(op: str, idx, dim: int, n: int) -> None:
    """Raise :class:`IndexOutOfRangeError` naming the first index outside ``[0, n)``
    (PyTorch's index ops take no negative indices)."""
    if not idx.size or not host_checks(idx):  # on CUDA only with sync checks on (avila_ml.debug)
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise IndexOutOfRangeError(f"{op}: index out of range: index {bad} is out of bounds for dimension {dim} with size {n}")


def _is_advanced(k) -> bool:
    return not (k is None or k is Ellipsis or isinstance(k, (int, slice, np.integer)))


def _to_index_array(k, xp):
    if isinstance(k, Tensor):
        a = k.array
    elif isinstance(k, (list, tuple)):
        a = np.asarray(k)
        if a.dtype == object:
            raise IndexError(f"index: ragged index list {k!r}")
        if a.size == 0:
            a = a.astype(np.int64)
    else:
        a = k
    if isinstance(a, np.ndarray) and xp is not np:
        a = xp.asarray(a)
    if a.dtype.kind not in "iub":
        raise IndexError(f"index: tensors used as indices must be long, int or bool, got {a.dtype}")
    return a


def normalize_key(key, xp=np):
    """Turn a Python/Tensor index into one NumPy/CuPy accepts (tensors become arrays).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.indexing import normalize_key
        >>> normalize_key((am.tensor([0, 2]), slice(None)))
        (array([0, 2]), slice(None, None, None))
    """
    if not isinstance(key, tuple):
        key = (key,)
    out = []
    for k in key:
        if isinstance(k, Tensor) and k.ndim == 0 and k.array.dtype.kind in "iu":
            out.append(int(k.item()))
        elif _is_advanced(k):
            out.append(_to_index_array(k, xp))
        else:
            out.append(k)
    return tuple(out)


class GetItem(Function):
    def forward(self, x, key, advanced):
        self.in_shape, self.key, self.advanced = x.shape, key, advanced
        out = x[key]
        if isinstance(out, np.generic):
            # NumPy gives a scalar copy for a full integer key; with a trailing ... it gives a
            # 0-d view, which writes through like PyTorch's x[i, j]
            out = x[key + (Ellipsis,)] if not advanced and Ellipsis not in key else np.asarray(out)
        return out

    def backward(self, g):
        return IndexPutAdd.apply(g, self.in_shape, self.key, self.advanced)


class IndexPutAdd(Function):
    """zeros(shape) with ``g`` added at ``key`` — the adjoint of ``x[key]``."""

    def forward(self, g, shape, key, advanced):
        self.key, self.advanced = key, advanced
        b = backend_of(g)
        z = b.xp.zeros(shape, dtype=g.dtype)
        if advanced:
            b.scatter_add(z, key, g)
        else:
            z[key] = g
        return z

    def backward(self, gg):
        return GetItem.apply(gg, self.key, self.advanced)


def getitem(input, key):
    """``input[key]`` with ints, slices, None, Ellipsis, bool masks and integer arrays
    (``Tensor.__getitem__``). Repeated integer indices accumulate in backward.

    Example:
        >>> import avila_ml as am
        >>> x = am.arange(6.0).reshape(2, 3)
        >>> x[:, [0, 0, 2]]
        tensor([[0., 0., 2.],
                [3., 3., 5.]])
    """
    xp = backend_of(input.array).xp
    k = normalize_key(key, xp)
    advanced = any(_is_advanced(p) for p in k)
    try:
        if not input._requires_grad:
            if advanced:
                out = input.array[k]
                return Tensor._wrap(np.asarray(out) if isinstance(out, np.generic) else out)
            return _ViewItem.apply(input, k, False)  # a view: records no node, marks the base
        if advanced:
            return GetItem.apply(input, k, True)
        return _ViewItem.apply(input, k, False)
    except IndexError as e:
        raise IndexError(f"index {key!r} is invalid for a tensor of shape {tuple(input.shape)}: {e}") from None


class _ViewItem(GetItem):
    """Basic indexing returns a view that shares the version counter."""

    is_view = True

    @classmethod
    def _name(cls) -> str:
        return "SliceBackward0"


def _full_index(index, dim: int, xp):
    """Index arrays selecting ``index`` along ``dim`` and every position elsewhere."""
    nd = index.ndim
    parts = []
    for d in range(nd):
        if d == dim:
            parts.append(index)
        else:
            shape = [1] * nd
            shape[d] = index.shape[d]
            parts.append(xp.arange(index.shape[d]).reshape(shape))
    return tuple(parts)


def _check_index(op, input, dim, index):
    if not isinstance(index, Tensor) or index.array.dtype.kind not in "iu":
        raise RuntimeError(f"{op}: index must be an integer tensor, got {getattr(index, 'dtype', type(index).__name__)}")
    _check_device(op, input, index)
    if index.ndim != input.ndim and not (index.ndim <= 1 and input.ndim <= 1):
        raise RuntimeError(f"{op}: index tensor must have the same number of dimensions as input: index {tuple(index.shape)}, input {tuple(input.shape)}")
    d = _norm_dim(dim, input.ndim, op)
    for k, (si, sx) in enumerate(zip(index.shape, input.shape)):
        if k != d and si > sx:
            raise RuntimeError(f"{op}: size of index {tuple(index.shape)} exceeds input {tuple(input.shape)} at dim {k} (dim={dim})")
    _check_range(op, index.array, d, input.shape[d] if input.ndim else 1)
    return d


class Gather(Function):
    def forward(self, x, index, dim):
        self.in_shape, self.dim = x.shape, dim
        self.key = _full_index(index, dim, backend_of(x).xp)
        return x[self.key]

    def backward(self, g):
        return IndexPutAdd.apply(g, self.in_shape, self.key, True)


def gather(input, dim: int, index):
    """``out[i][j][k] = input[index[i][j][k]][j][k]`` for ``dim=0`` (``torch.gather``).

    Math: backward scatter-adds the gradient to the gathered positions.

    Example:
        >>> import avila_ml as am
        >>> am.gather(am.tensor([[1.0, 2.0], [3.0, 4.0]]), 1, am.tensor([[1], [0]]))
        tensor([[2.],
                [3.]])
    """
    d = _check_index("gather", input, dim, index)
    return Gather.apply(input, index.array, d)


class ScatterAdd(Function):
    def forward(self, x, src, index, dim):
        b = backend_of(x)
        self.key = _full_index(index, dim, b.xp)
        self.src_shape, self.index_shape = src.shape, index.shape
        out = x.copy()
        sl = tuple(slice(0, n) for n in index.shape)
        b.scatter_add(out, self.key, src[sl])
        return out

    def backward(self, g):
        ng_x, ng_src = self.needs_input_grad
        gs = _src_grad(self, g) if ng_src else None
        return (g if ng_x else None), gs


def scatter_add(input, dim: int, index, src):
    """Out-of-place ``input`` with ``src`` added at ``index`` along ``dim`` (``torch.scatter_add``).

    Math: ``out[index[i][j]][j] += src[i][j]`` for ``dim=0``; repeated indices accumulate.

    Example:
        >>> import avila_ml as am
        >>> am.scatter_add(am.zeros(3), 0, am.tensor([0, 2, 0]), am.tensor([1.0, 2.0, 3.0]))
        tensor([4., 0., 2.])
    """
    d = _check_index("scatter_add", input, dim, index)
    _check_src("scatter_add", input, index, src)
    x, s = _prepare(input, src, "scatter_add")
    return ScatterAdd.apply(x, s, index.array, d)


class Scatter(Function):
    """``x`` with ``src`` written (not added) at ``index`` along ``dim``.

    Repeated indices: NumPy assigns in order, so the last one wins on the CPU; CuPy leaves
    the winner unspecified, as PyTorch does on every device. Backward as PyTorch's: the
    written positions of ``x`` get no gradient; ``src`` gets ``g`` gathered at ``index``.
    """

    def forward(self, x, src, index, dim):
        xp = backend_of(x).xp
        self.key = _full_index(index, dim, xp)
        self.src_shape, self.index_shape = src.shape, index.shape
        out = x.copy()
        out[self.key] = src[tuple(slice(0, n) for n in index.shape)]
        self.written = xp.zeros(x.shape, dtype=bool)
        self.written[self.key] = True
        return out

    def backward(self, g):
        ng_x, ng_src = self.needs_input_grad
        gx = where(self.written, 0.0, g) if ng_x else None
        gs = _src_grad(self, g) if ng_src else None
        return gx, gs


def _check_src(op, input, index, src):
    if not isinstance(src, Tensor):
        raise TypeError(f"{op}: src must be a Tensor, got {type(src).__name__}")
    if src.dtype != input.dtype:
        raise RuntimeError(f"{op}: expected self.dtype to be equal to src.dtype, got {input.dtype} and {src.dtype}")
    for k, (si, ss) in enumerate(zip(index.shape, src.shape)):
        if si > ss:
            raise RuntimeError(f"{op}: size of index {tuple(index.shape)} exceeds src {tuple(src.shape)} at dim {k}")
    if src.ndim != index.ndim and not (index.ndim <= 1 and src.ndim <= 1):
        raise RuntimeError(f"{op}: index {tuple(index.shape)} and src {tuple(src.shape)} must have the same "
                           "number of dimensions")


def scatter(input, dim: int, index, src=None, value=None):
    """Out-of-place ``input`` with values written at ``index`` along ``dim`` (``torch.scatter``).

    Math: ``out[index[i][j]][j] = src[i][j]`` for ``dim=0`` (or ``= value``). With repeated
    indices one of the values is written, never their sum: on the CPU the last one (NumPy
    assigns in order); which one is unspecified on CUDA, as in PyTorch. Gradient flows to
    ``input`` at unwritten positions and to ``src`` at ``index`` (``g.gather(dim, index)``).

    Example:
        >>> import avila_ml as am
        >>> am.scatter(am.zeros(3), 0, am.tensor([0, 2]), am.tensor([5.0, 7.0]))
        tensor([5., 0., 7.])
    """
    d = _check_index("scatter", input, dim, index)
    if src is None:
        src = value
    if isinstance(src, Tensor):
        _check_src("scatter", input, index, src)
        x, s = _prepare(input, src, "scatter")
        return Scatter.apply(x, s, index.array, d)
    if src is None:
        raise TypeError("scatter: expected src (a Tensor) or value (a number)")
    xp = backend_of(input.array).xp
    written = xp.zeros(input.shape, dtype=bool)
    written[_full_index(index.array, d, xp)] = True
    return where(written, src, input)


class IndexSelect(Function):
    def forward(self, x, index, dim):
        self.in_shape, self.dim, self.index = x.shape, dim, index
        return backend_of(x).xp.take(x, index, axis=dim)

    def backward(self, g):
        return IndexAdd.apply(g, self.in_shape, self.dim, self.index)


class IndexAdd(Function):
    """zeros(shape) with ``g`` added at ``index`` along ``dim`` — the adjoint of index_select."""

    def forward(self, g, shape, dim, index):
        self.dim, self.index = dim, index
        b = backend_of(g)
        z = b.xp.zeros(shape, dtype=g.dtype)
        b.index_add(z, dim, index, g)
        return z

    def backward(self, gg):
        return IndexSelect.apply(gg, self.index, self.dim)


def index_select(input, dim: int, index):
    """Select entries along ``dim`` by a 1-d integer index (``torch.index_select``).

    Example:
        >>> import avila_ml as am
        >>> am.index_select(am.tensor([10.0, 20.0, 30.0]), 0, am.tensor([2, 0]))
        tensor([30., 10.])
    """
    if not isinstance(index, Tensor) or index.array.dtype.kind not in "iu" or index.ndim > 1:
        raise RuntimeError(f"index_select: index must be a 0-d or 1-d integer tensor, got {getattr(index, 'shape', index)}")
    _check_device("index_select", input, index)
    d = _norm_dim(dim, input.ndim, "index_select")
    n = input.shape[d] if input.ndim else 1
    idx = index.array.reshape(-1)
    _check_range("index_select", idx, d, n)
    return IndexSelect.apply(input, idx, d)


def index_add(input, dim: int, index, source, alpha=1):
    """Out-of-place ``input`` with ``alpha * source`` added at ``index`` along ``dim`` (``torch.index_add``).

    Example:
        >>> import avila_ml as am
        >>> am.index_add(am.zeros(3), 0, am.tensor([0, 2]), am.tensor([1.0, 2.0]), alpha=10)
        tensor([10.,  0., 20.])
    """
    d = _norm_dim(dim, input.ndim, "index_add")
    if not isinstance(index, Tensor) or index.array.dtype.kind not in "iu" or index.ndim > 1:
        raise RuntimeError(f"index_add: index must be a 0-d or 1-d integer tensor, got {getattr(index, 'shape', index)}")
    _check_device("index_add", input, index)
    idx = index.array.reshape(-1)
    _check_range("index_add", idx, d, input.shape[d] if input.ndim else 1)
    want = tuple(input.shape[:d]) + (idx.size,) + tuple(input.shape[d + 1:])
    if not isinstance(source, Tensor) or tuple(source.shape) != want:
        raise RuntimeError(f"index_add: source must have shape {want} (input {tuple(input.shape)} with dim {d} "
                           f"of size len(index) = {idx.size}), got {tuple(getattr(source, 'shape', ()))}")
    src = source * alpha if alpha != 1 else source
    return input + IndexAdd.apply(src, input.shape, d, idx)


def masked_fill(input, mask, value):
    """Replace elements where ``mask`` is true by ``value`` (``torch.masked_fill``).

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([1.0, 2.0, 3.0])
        >>> am.masked_fill(x, x > 1.5, 0.0)
        tensor([1., 0., 0.])
    """
    m = mask.array if isinstance(mask, Tensor) else mask
    if getattr(m, "dtype", None) is None or m.dtype != np.bool_:
        raise RuntimeError(f"masked_fill: mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    try:
        shape = np.broadcast_shapes(m.shape, input.shape)
    except ValueError:
        shape = None
    if shape != input.shape:
        raise RuntimeError(f"masked_fill: mask of shape {tuple(m.shape)} does not broadcast to the input shape {tuple(input.shape)}")
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise RuntimeError(f"masked_fill: only 0-d value tensors are supported, got shape {tuple(value.shape)}")
        value = value.to(input.dtype)
    else:
        # as PyTorch, the result keeps the input's dtype (2.5 into an int tensor gives 2)
        xp = backend_of(input.array).xp
        value = Tensor._wrap(xp.asarray(value).astype(input.array.dtype))
    return where(m, value, input)


def take_along_dim(input, indices, dim=None):
    """Gather along ``dim`` with broadcasting of the other dims (``torch.take_along_dim``).

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([[10.0, 30.0, 20.0], [60.0, 40.0, 50.0]])
        >>> am.take_along_dim(x, x.argmax(dim=1, keepdim=True), dim=1)
        tensor([[30.],
                [60.]])
    """
    from .shape import broadcast_to, flatten
    if dim is None:
        _check_range("take_along_dim", indices.array, 0, input.numel())
        return gather(flatten(input), 0, flatten(indices))
    d = _norm_dim(dim, input.ndim, "take_along_dim")
    _check_range("take_along_dim", indices.array, d, input.shape[d])
    shp_x = list(input.shape)
    shp_i = list(indices.shape)
    shp_x[d] = shp_i[d] = 1
    common = np.broadcast_shapes(tuple(shp_x), tuple(shp_i))
    tx = list(common)
    tx[d] = input.shape[d]
    ti = list(common)
    ti[d] = indices.shape[d]
    idx = Tensor._wrap(backend_of(indices.array).xp.broadcast_to(indices.array, tuple(ti)))
    return gather(broadcast_to(input, tuple(tx)), d, idx)


def _src_grad(node, g):
    """Gradient of a scatter's ``src``: ``g`` read at the written positions (``gather``), padded
    with zeros where ``src`` is larger than ``index`` (those elements were never written)."""
    gs = GetItem.apply(g, node.key, True)
    if gs.shape != node.src_shape:
        from .shape import pad
        widths = []
        for n_src, n_idx in reversed(list(zip(node.src_shape, node.index_shape))):
            widths += [0, n_src - n_idx]
        gs = pad(gs, widths)
    return gs
