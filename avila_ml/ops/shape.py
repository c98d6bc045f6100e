"""Shape ops: reshape, permute, broadcast, repeat, concatenate, split, flip, roll, pad, device moves.

Each backward is the adjoint reshuffle (reshape back, inverse permutation, sum over the
broadcast axes, ...), written with these same ops so it differentiates again.
"""
from __future__ import annotations

import builtins
import math

import operator

import numpy as np

from .._grad_state import state as _grad_state
from ..autograd.function import Function
from ..backends.constants import device_constant
from ..backends import backend_of, get_backend, device as _device
from ..tensor import Tensor, _norm_dim
from ..cpu_accel import _native
from .elementwise import sum_to, _arr

__all__ = [
    "reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose", "swapaxes",
    "permute", "movedim", "expand", "broadcast_to", "repeat", "tile", "cat", "concat",
    "concatenate", "stack", "split", "chunk", "unbind", "flip", "roll", "pad", "to_device",
    "narrow", "broadcast_tensors", "atleast_1d",
]


def _shape_arg(shape, op: str = "shape") -> tuple:
    """Ints (or one tuple/list of ints) as a tuple; a float such as 2.5 is a TypeError naming
    ``op`` (``int()`` would truncate it silently)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    try:
        return tuple(map(operator.index, shape))  # (map: no generator frame per call)
    except TypeError:
        raise TypeError(f"{op}: expected a sequence of ints, got {tuple(shape)!r}") from None


class Reshape(Function):
    """A reshape that copies: used when the input's strides do not allow a view."""

    def forward(self, x, shape):
        self.in_shape = x.shape
        return x.reshape(shape)

    def backward(self, g):
        return reshape(g, self.in_shape)


class View(Reshape):
    """A reshape that shares memory (and the version counter) with its input."""

    is_view = True

    @classmethod
    def _name(cls) -> str:
        return "ViewBackward0"


def _viewable(shape, strides, new_shape) -> bool:
    """Whether ``new_shape`` can address the same memory as (shape, strides) without a copy.

    Size-1 dims are ignored; the remaining dims form chunks in which each dim's stride is the
    next one's stride times its size (contiguous runs). Each chunk must be split into, or be
    merged from, consecutive new dims with exactly the chunk's element count (PyTorch's
    ``computeStride`` rule).
    """
    if 0 in shape:
        return True
    old = [(n, st) for n, st in zip(shape, strides) if n != 1]
    new = [n for n in new_shape if n != 1]
    i = j = 0
    while i < len(old):
        count = old[i][0]
        while i + 1 < len(old) and old[i][1] == old[i + 1][1] * old[i + 1][0]:
            i += 1
            count *= old[i][0]
        i += 1
        got = 1
        while got < count and j < len(new):
            got *= new[j]
            j += 1
        if got != count:
            return False
    return j == len(new)


def _can_view(array, shape) -> bool:
    return bool(array.flags.c_contiguous) or _viewable(array.shape, array.strides, shape)


def reshape(input, *shape):
    """Same data, new shape; one size may be -1 (``torch.reshape``).

    Example:
        >>> import avila_ml as am
        >>> am.arange(6).reshape(2, 3)
        tensor([[0, 1, 2],
                [3, 4, 5]])
    """
    shape = _shape_arg(shape, "reshape")
    if shape == input.array.shape:
        return input
    try:
        shape = _resolve_shape(shape, input.array.size)
    except ValueError:
        raise RuntimeError(f"reshape: shape {list(shape)} is invalid for input of size {input.array.size}") from None
    if shape == input.array.shape:
        return input
    # a view when the strides allow it (as PyTorch), a copy otherwise
    return View.apply(input, shape) if _can_view(input.array, shape) else Reshape.apply(input, shape)


def _resolve_shape(shape, size):
    if shape and min(shape) >= 0:  # no -1 (the common case, kept free of Python loops)
        if math.prod(shape) != size:
            raise ValueError
        return shape
    neg = [i for i, s in enumerate(shape) if s == -1]
    if len(neg) > 1 or any(s < -1 for s in shape):
        raise ValueError
    known = 1
    for s in shape:
        if s != -1:
            known *= s
    if neg:
        if known == 0 or size % known:
            raise ValueError
        return tuple(size // known if s == -1 else s for s in shape)
    if known != size:
        raise ValueError
    return shape


def view(input, *shape):
    """The same memory seen with a new shape; one size may be -1 (``Tensor.view``).

    The result shares memory and version counter with ``input``: writes through either are
    seen by both. Raises when ``input``'s strides cannot address the new shape (e.g.
    ``x.T.view(-1)``), as PyTorch does; ``reshape`` copies in that case.

    Example:
        >>> import avila_ml as am
        >>> x = am.zeros(2, 3)
        >>> v = x.view(6)
        >>> v[0] = 1.0
        >>> x[0, 0].item()
        1.0
    """
    shape = _shape_arg(shape)
    try:
        shape = _resolve_shape(shape, input.array.size)
    except ValueError:
        raise RuntimeError(f"view: shape {list(shape)} is invalid for input of size {input.array.size}") from None
    if shape == input.array.shape:
        return input
    if not _can_view(input.array, shape):
        raise RuntimeError(
            f"view size is not compatible with input tensor's size and stride (at least one "
            f"dimension spans across two contiguous subspaces). Use .reshape(...) instead. "
            f"(view of a tensor of shape {list(input.shape)} as {list(shape)})"
        )
    return View.apply(input, shape)


def flatten(input, start_dim: int = 0, end_dim: int = -1):
    """Merge dims ``start_dim..end_dim`` into one (``torch.flatten``).

    Example:
        >>> import avila_ml as am
        >>> am.zeros(2, 3, 4).flatten(1).shape
        (2, 12)
    """
    nd = input.ndim
    if nd == 0:
        return reshape(input, 1)
    s, e = _norm_dim(start_dim, nd, "flatten"), _norm_dim(end_dim, nd, "flatten")
    if s > e:
        raise RuntimeError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    shp = input.shape
    n = 1
    for d in shp[s:e + 1]:
        n *= d
    return reshape(input, shp[:s] + (n,) + shp[e + 1:])


def unflatten(input, dim: int, sizes):
    """Split dim ``dim`` into ``sizes`` (``torch.unflatten``).

    Example:
        >>> import avila_ml as am
        >>> am.unflatten(am.zeros(2, 12), 1, (3, 4)).shape
        (2, 3, 4)
    """
    d = _norm_dim(dim, input.ndim, "unflatten")
    shp = input.shape
    sizes = tuple(sizes)
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        sizes = tuple(shp[d] // known if s == -1 else s for s in sizes)
    if int(np.prod(sizes)) != shp[d]:
        raise RuntimeError(f"unflatten: sizes {list(sizes)} don't multiply up to the size of dim {dim} ({shp[d]}) of shape {tuple(shp)}")
    return reshape(input, shp[:d] + sizes + shp[d + 1:])


def squeeze(input, dim=None):
    """Remove size-1 dims (all, or those in ``dim``) (``torch.squeeze``).

    Example:
        >>> import avila_ml as am
        >>> am.squeeze(am.zeros(2, 1, 3, 1)).shape, am.squeeze(am.zeros(2, 1, 3, 1), 1).shape
        ((2, 3), (2, 3, 1))
    """
    shp = input.shape
    if dim is None:
        new = tuple(s for s in shp if s != 1)
    else:
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        dims = {_norm_dim(d, input.ndim, "squeeze") for d in dims}
        new = tuple(s for i, s in enumerate(shp) if not (i in dims and s == 1))
    return reshape(input, new)


def unsqueeze(input, dim: int):
    """Insert a size-1 dim at ``dim`` (``torch.unsqueeze``).

    Example:
        >>> import avila_ml as am
        >>> am.unsqueeze(am.zeros(2, 3), 1).shape
        (2, 1, 3)
    """
    nd = input.ndim + 1
    if not -nd <= dim < nd:
        raise IndexError(f"unsqueeze: dimension out of range (expected to be in range of [{-nd}, {nd - 1}], but got {dim})")
    d = dim % nd
    shp = input.shape
    return reshape(input, shp[:d] + (1,) + shp[d:])


class Permute(Function):
    is_view = True

    def forward(self, x, dims):
        self.dims = dims
        return x.transpose(dims)

    def backward(self, g):
        inv = [0] * len(self.dims)  # the inverse permutation (np.argsort on a tuple costs ~20 us)
        for i, d in enumerate(self.dims):
            inv[d] = i
        return Permute.apply(g, tuple(inv))


def permute(input, *dims):
    """Reorder dims (``torch.permute``).

    Example:
        >>> import avila_ml as am
        >>> am.zeros(2, 3, 4).permute(2, 0, 1).shape
        (4, 2, 3)
    """
    dims = _shape_arg(dims, "permute")
    nd = input.ndim
    if len(dims) != nd:
        raise RuntimeError(f"permute: number of dims {len(dims)} doesn't match the tensor's {nd} dims (shape {tuple(input.shape)})")
    dims = tuple(_norm_dim(d, nd, "permute") for d in dims)
    if len(set(dims)) != nd:
        raise RuntimeError(f"permute: repeated dim in {dims}")
    if dims == tuple(range(nd)):
        return input
    return Permute.apply(input, dims)


def transpose(input, dim0: int, dim1: int):
    """Swap two dims (``torch.transpose``).

    Example:
        >>> import avila_ml as am
        >>> am.transpose(am.zeros(2, 3, 4), 0, 2).shape
        (4, 3, 2)
    """
    nd = input.ndim
    if nd < 2 and dim0 in (0, -1) and dim1 in (0, -1):
        return input
    a, b = _norm_dim(dim0, nd, "transpose"), _norm_dim(dim1, nd, "transpose")
    dims = list(range(nd))
    dims[a], dims[b] = dims[b], dims[a]
    return permute(input, dims)


swapaxes = transpose


def movedim(input, source, destination):
    """Move dims ``source`` to positions ``destination`` (``torch.movedim``).

    Example:
        >>> import avila_ml as am
        >>> am.movedim(am.zeros(2, 3, 4), 0, -1).shape
        (3, 4, 2)
    """
    src = source if isinstance(source, (tuple, list)) else (source,)
    dst = destination if isinstance(destination, (tuple, list)) else (destination,)
    if len(src) != len(dst):
        raise RuntimeError(f"movedim: source {src} and destination {dst} must have the same length")
    nd = input.ndim
    src = [_norm_dim(d, nd, "movedim") for d in src]
    dst = [_norm_dim(d, nd, "movedim") for d in dst]
    for name, dims, given in (("source", src, source), ("destination", dst, destination)):
        if len(set(dims)) != len(dims):
            raise RuntimeError(f"movedim: repeated dim in `{name}` ({given})")
    order = [d for d in range(nd) if d not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return permute(input, order)


class BroadcastTo(Function):
    is_view = True

    def forward(self, x, shape):
        self.in_shape = x.shape
        return backend_of(x).xp.broadcast_to(x, shape)

    def backward(self, g):
        return sum_to(g, self.in_shape)


def broadcast_to(input, shape):
    """Broadcast to ``shape`` without copying (``torch.broadcast_to``); backward sums.

    Example:
        >>> import avila_ml as am
        >>> am.broadcast_to(am.tensor([1.0, 2.0]), (2, 2))
        tensor([[1., 2.],
                [1., 2.]])
    """
    shape = tuple(int(s) for s in shape)
    if input.shape == shape:
        return input
    try:
        np.broadcast_shapes(input.shape, shape)
        if np.broadcast_shapes(input.shape, shape) != shape:
            raise ValueError
    except ValueError:
        raise RuntimeError(f"broadcast_to: shape {tuple(input.shape)} cannot be broadcast to {shape}") from None
    return BroadcastTo.apply(input, shape)


def expand(input, *sizes):
    """Broadcast to ``sizes``; -1 keeps a dim (``Tensor.expand``).

    Example:
        >>> import avila_ml as am
        >>> am.tensor([[1.0], [2.0]]).expand(2, 3)
        tensor([[1., 1., 1.],
                [2., 2., 2.]])
    """
    sizes = _shape_arg(sizes, "expand")
    lead = len(sizes) - input.ndim
    if lead < 0:
        raise RuntimeError(f"expand: the number of sizes {len(sizes)} is smaller than the tensor's dims (shape {tuple(input.shape)})")
    shape = tuple(input.shape[i - lead] if (s == -1 and i >= lead) else s for i, s in enumerate(sizes))
    return broadcast_to(input, shape)


def broadcast_tensors(*tensors):
    """Broadcast tensors to one common shape (``torch.broadcast_tensors``).

    Example:
        >>> import avila_ml as am
        >>> a, b = am.broadcast_tensors(am.zeros(2, 1), am.zeros(3)); a.shape, b.shape
        ((2, 3), (2, 3))
    """
    shape = np.broadcast_shapes(*(t.shape for t in tensors))
    return tuple(broadcast_to(t, shape) for t in tensors)


def repeat(input, *repeats):
    """Tile the tensor ``repeats[i]`` times along dim i (``Tensor.repeat``).

    Math: backward sums the gradient over the copies.

    Example:
        >>> import avila_ml as am
        >>> am.tensor([1.0, 2.0]).repeat(2, 2)
        tensor([[1., 2., 1., 2.],
                [1., 2., 1., 2.]])
    """
    reps = _shape_arg(repeats, "repeat")
    if any(r < 0 for r in reps):
        raise RuntimeError(f"repeat: repeats can not be negative, got {reps}")
    if len(reps) < input.ndim:
        raise RuntimeError(f"repeat: number of repeat dims {len(reps)} can not be smaller than the tensor's dims (shape {tuple(input.shape)})")
    x = reshape(input, (1,) * (len(reps) - input.ndim) + input.shape)
    # (r0, s0, r1, s1, ...): broadcast each dim against its repeat count, then merge pairs
    inter = []
    for r, s in zip(reps, x.shape):
        inter += [r, s]
    y = reshape(x, tuple(v for s in x.shape for v in (1, s)))
    y = broadcast_to(y, tuple(inter))
    return reshape(y, tuple(r * s for r, s in zip(reps, x.shape)))


def tile(input, dims):
    """Like ``repeat``, padding ``dims`` with leading ones (``torch.tile``).

    Example:
        >>> import avila_ml as am
        >>> am.tile(am.tensor([1.0, 2.0]), (2,))
        tensor([1., 2., 1., 2.])
    """
    dims = tuple(dims)
    if len(dims) < input.ndim:
        dims = (1,) * (input.ndim - len(dims)) + dims
    return repeat(input, dims)


class Cat(Function):
    def forward(self, dim, *xs):
        self.dim = dim
        self.sizes = [x.shape[dim] for x in xs]
        return backend_of(xs[0]).xp.concatenate(xs, axis=dim)

    def backward(self, g):
        outs = []
        start = 0
        for n, need in zip(self.sizes, self.needs_input_grad):
            outs.append(narrow(g, self.dim, start, n) if need else None)
            start += n
        return tuple(outs)


def cat(tensors, dim: int = 0):
    """Concatenate along an existing dim (``torch.cat``).

    Example:
        >>> import avila_ml as am
        >>> am.cat([am.zeros(1, 2), am.ones(2, 2)]).shape
        (3, 2)
    """
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("cat: expected a non-empty list of tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"cat: expected a sequence of Tensors, got {type(t).__name__} at position {i}")
        if t.ndim == 0:
            raise RuntimeError(f"cat: zero-dimensional tensor (at position {i}) cannot be concatenated; "
                               "use stack, or reshape it to (1,)")
    ref = tensors[0]
    # PyTorch skips 1-d empty tensors in cat (a legacy rule that users rely on)
    tensors = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)] or [ref]
    ref = tensors[0]
    d = _norm_dim(dim, ref.ndim, "cat")
    from .. import dtypes as _dt
    dt = _dt.result_type(*[t for t in tensors])
    for i, t in enumerate(tensors):
        if t.ndim != ref.ndim or any(a != b for k, (a, b) in enumerate(zip(t.shape, ref.shape)) if k != d):
            raise RuntimeError(
                f"cat: sizes of tensors must match except in dimension {dim}: tensor 0 has shape "
                f"{tuple(ref.shape)} and tensor {i} has shape {tuple(t.shape)}"
            )
        if t.device != ref.device:
            raise RuntimeError(f"cat: expected all tensors on the same device, got {ref.device} (tensor 0) and {t.device} (tensor {i})")
    tensors = [t if t.dtype is dt else t.to(dt) for t in tensors]
    if len(tensors) == 1:
        return tensors[0]
    return Cat.apply(d, *tensors)


concat = concatenate = cat


def stack(tensors, dim: int = 0):
    """Stack equal-shaped tensors along a new dim (``torch.stack``).

    Example:
        >>> import avila_ml as am
        >>> am.stack([am.zeros(2, 3), am.ones(2, 3)], dim=1).shape
        (2, 2, 3)
    """
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack: expected a non-empty list of tensors")
    ref = tensors[0]
    for i, t in enumerate(tensors):
        if t.shape != ref.shape:
            raise RuntimeError(f"stack: expects each tensor to be equal size, but got {tuple(ref.shape)} at entry 0 and {tuple(t.shape)} at entry {i}")
    nd = ref.ndim + 1
    if not -nd <= dim < nd:
        raise IndexError(f"stack: dimension out of range (expected to be in range of [{-nd}, {nd - 1}], but got {dim})")
    return cat([unsqueeze(t, dim) for t in tensors], dim)


class Split(Function):
    is_view = True  # every output is a view of the input (multi-output: not writable in place under autograd)

    def forward(self, x, sizes, dim):
        self.dim = dim
        self.sizes = sizes
        self.in_layout = (x.shape, x.strides, x.dtype)
        idx = np.cumsum(sizes)[:-1]
        xp = backend_of(x).xp
        return tuple(xp.split(x, idx, axis=dim))

    def backward(self, *gs):
        if _grad_state.enabled or not all(isinstance(g, Tensor) for g in gs):
            return cat(list(gs), self.dim)
        # The slices' gradients go into one array laid out in memory as the input was: for
        # ``q, k, v = qkv.reshape(B, T, 3, h, d).permute(2, 0, 3, 1, 4)`` the gradient then
        # reaches the permute and the reshape as views, where a C-ordered concatenation was
        # copied once more by the reshape (3 MB per layer of the small GPT)
        shape, strides, dtype = self.in_layout
        elem = tuple(st // dtype.itemsize if st % dtype.itemsize == 0 else 0 for st in strides)
        out = _empty_in_layout(shape, elem, gs[0].array.dtype, backend_of(gs[0].array).xp)
        start = 0
        index = [slice(None)] * len(shape)
        for g, n in zip(gs, self.sizes):
            index[self.dim] = slice(start, start + n)
            dst = out[tuple(index)]
            # NumPy's assignment into the strided slice runs on one thread; the compiled copy
            # splits it over the cores (the small GPT's q/k/v gradients: 2.4 ms a step before)
            if not (type(dst) is np.ndarray and _native.copy_strided(dst, g.array)):
                dst[...] = g.array
            start += n
        return Tensor._wrap(out)


def _empty_in_layout(shape, strides, dtype, xp):
    """An uninitialised ``dtype`` array of ``shape`` whose dims are ordered in memory as a dense
    array with element ``strides`` has them (a permuted C-order array's layout is kept); C order
    for any other layout (overlapping or gapped views, zero or negative strides; size-1 dims may
    have any stride)."""
    order = sorted(range(len(shape)), key=lambda i: -abs(strides[i]))
    dense, expect = True, 1
    for i in reversed(order):
        if shape[i] != 1 and strides[i] != expect:
            dense = False
            break
        expect *= shape[i]
    if not dense or order == list(range(len(shape))):
        return xp.empty(shape, dtype=dtype)
    base = xp.empty(tuple(shape[i] for i in order), dtype=dtype)
    return base.transpose(tuple(order.index(i) for i in range(len(shape))))


def split(tensor, split_size_or_sections, dim: int = 0):
    """Split into chunks of a given size, or of the listed sizes (``torch.split``).

    Example:
        >>> import avila_ml as am
        >>> [t.tolist() for t in am.split(am.arange(5), 2)]
        [[0, 1], [2, 3], [4]]
        >>> [t.tolist() for t in am.split(am.arange(5), [1, 4])]
        [[0], [1, 2, 3, 4]]
    """
    d = _norm_dim(dim, tensor.ndim, "split")
    n = tensor.shape[d]
    if isinstance(split_size_or_sections, int):
        s = split_size_or_sections
        if s <= 0:
            raise RuntimeError(f"split: split_size must be positive, got {s}")
        sizes = [s] * (n // s) + ([n % s] if n % s else [])
        if not sizes:
            sizes = [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if builtins.sum(sizes) != n:
            raise RuntimeError(f"split: split sizes {sizes} don't sum to the size {n} of dim {dim}")
    if len(sizes) == 1:
        return (tensor,)
    return Split.apply(tensor, tuple(sizes), d)


def chunk(input, chunks: int, dim: int = 0):
    """Split into ``chunks`` near-equal pieces (``torch.chunk``).

    Example:
        >>> import avila_ml as am
        >>> [t.tolist() for t in am.chunk(am.arange(5), 2)]
        [[0, 1, 2], [3, 4]]
    """
    if chunks <= 0:
        raise RuntimeError(f"chunk: chunks must be positive, got {chunks}")
    d = _norm_dim(dim, input.ndim, "chunk")
    n = input.shape[d]
    if n == 0:  # as PyTorch: `chunks` empty pieces
        return Split.apply(input, (0,) * chunks, d) if chunks > 1 else (input,)
    return split(input, -(-n // chunks), dim)


def unbind(input, dim: int = 0):
    """Remove a dim, returning the slices along it (``torch.unbind``).

    Example:
        >>> import avila_ml as am
        >>> am.unbind(am.tensor([[1.0, 2.0], [3.0, 4.0]]), dim=1)
        (tensor([1., 3.]), tensor([2., 4.]))
    """
    d = _norm_dim(dim, input.ndim, "unbind")
    return tuple(squeeze(p, d) for p in split(input, 1, d))


def narrow(input, dim: int, start: int, length: int):
    """The slice ``start:start+length`` along ``dim`` (``torch.narrow``).

    ``start`` may be negative (counted from the end); the slice must lie inside the dim.

    Example:
        >>> import avila_ml as am
        >>> am.narrow(am.arange(5.0), 0, 1, 3)
        tensor([1., 2., 3.])
    """
    d = _norm_dim(dim, input.ndim, "narrow")
    n = input.shape[d]
    start, length = operator.index(start), operator.index(length)
    if not -n <= start <= n:
        raise IndexError(f"narrow: start out of range (expected to be in range of [{-n}, {n}], but got {start})")
    if start < 0:
        start += n
    if length < 0:
        raise RuntimeError(f"narrow: length must be non-negative, got {length}")
    if start + length > n:
        raise RuntimeError(f"narrow: start ({start}) + length ({length}) exceeds dimension size ({n}) of dim {d} "
                           f"of shape {tuple(input.shape)}")
    key = (slice(None),) * d + (slice(start, start + length),)
    return input[key]


class Flip(Function):
    def forward(self, x, dims):
        self.dims = dims
        # a copy, as PyTorch's flip (xp.flip alone would alias the input with negative strides)
        return _arr(backend_of(x).xp.flip(x, dims)).copy()

    def backward(self, g):
        return Flip.apply(g, self.dims)


def flip(input, dims):
    """Reverse the order along ``dims`` (``torch.flip``).

    Example:
        >>> import avila_ml as am
        >>> am.flip(am.tensor([[1.0, 2.0], [3.0, 4.0]]), dims=(1,))
        tensor([[2., 1.],
                [4., 3.]])
    """
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    dims = tuple(_norm_dim(d, input.ndim, "flip") for d in dims)
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"flip: a dim appears multiple times in the list of dims {dims}")
    return Flip.apply(input, dims)


class Roll(Function):
    def forward(self, x, shifts, dims):
        self.shifts, self.dims = shifts, dims
        return backend_of(x).xp.roll(x, shifts, dims)

    def backward(self, g):
        return Roll.apply(g, tuple(-s for s in self.shifts) if isinstance(self.shifts, tuple) else -self.shifts, self.dims)


def roll(input, shifts, dims=None):
    """Shift elements cyclically (``torch.roll``); without ``dims`` the flattened tensor rolls.

    Example:
        >>> import avila_ml as am
        >>> am.roll(am.tensor([1.0, 2.0, 3.0, 4.0]), 1)
        tensor([4., 1., 2., 3.])
        >>> am.roll(am.tensor([[1.0, 2.0], [3.0, 4.0]]), 1, dims=0)
        tensor([[3., 4.],
                [1., 2.]])
    """
    if dims is None:
        return reshape(Roll.apply(flatten(input), int(shifts), 0), input.shape)
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if len(shifts) != len(dims):
        raise RuntimeError(f"roll: shifts {shifts} and dims {dims} must have the same length")
    dims = tuple(_norm_dim(d, input.ndim, "roll") for d in dims)
    return Roll.apply(input, shifts, dims)


class ConstantPad(Function):
    def forward(self, x, widths, value):
        self.widths = widths
        xp = backend_of(x).xp
        return xp.pad(x, widths, mode="constant", constant_values=value)

    def backward(self, g):
        key = tuple(slice(lo, g.shape[i] - hi) for i, (lo, hi) in enumerate(self.widths))
        return g[key]


def _pad_index(n: int, lo: int, hi: int, mode: str, op: str):
    """Source index along one axis for each position of the padded axis."""
    pos = np.arange(-lo, n + hi)
    if mode == "circular":
        if lo > n or hi > n:
            raise RuntimeError(f"{op}: circular padding ({lo}, {hi}) can't exceed the input size {n}")
        return pos % n
    if mode == "replicate":
        if n == 0:
            raise RuntimeError(f"{op}: replicate padding needs a non-empty dimension")
        return np.clip(pos, 0, n - 1)
    if mode == "reflect":
        if lo >= n or hi >= n:
            raise RuntimeError(
                f"{op}: padding size ({lo}, {hi}) should be less than the corresponding input dimension {n} "
                "for reflect padding"
            )
        period = 2 * (n - 1)
        if period == 0:
            return np.zeros_like(pos)
        m = pos % period
        return np.where(m < n, m, period - m)
    raise ValueError(f"{op}: unknown padding mode {mode!r}; expected 'constant', 'reflect', 'replicate' or 'circular'")


def _axis_key(ndim, axis, sel):
    """An index tuple selecting ``sel`` (a slice or an index array) along ``axis`` only."""
    return (slice(None),) * axis + (sel,)


def _border_index(backend, n, lo, hi, mode, side, offset=0):
    """Source positions (into the unpadded axis of size ``n``, plus ``offset``) of the ``lo`` or
    ``hi`` border: a slice where they run in steps of +1 or -1 (circular and reflect borders
    narrower than the axis; a strided view copies and adds several times faster than a gather
    or a fancy-indexed add of small inner dims), else an index array of the backend."""
    idx = _pad_index(n, lo, hi, mode, "pad")
    idx = (idx[:lo] if side == "lo" else idx[lo + n:]) + offset
    step = int(idx[1] - idx[0]) if len(idx) > 1 else 1
    if step in (1, -1) and np.array_equal(np.diff(idx), np.full(len(idx) - 1, step)):
        stop = int(idx[-1]) + step
        return slice(int(idx[0]), None if stop < 0 else stop, step)
    return device_constant(backend, ("pad-border", n, lo, hi, mode, side, offset), lambda: np.ascontiguousarray(idx))


def _native_border_pad(a, per_axis, mode, in_shape=None):
    """:class:`BorderPad`'s forward (``in_shape`` None) or its adjoint back to ``in_shape``
    through the compiled kernels (``cpu_accel._native_pad``), or None where they do not apply."""
    if type(a) is not np.ndarray:
        return None
    from ..cpu_accel import _native_pad
    shape = a.shape if in_shape is None else tuple(in_shape)
    if len(shape) != len(per_axis):
        return None
    def maps():  # built once per shape, widths and mode (the kernels keep their metadata)
        return [np.arange(n) if not (lo or hi) else _pad_index(n, lo, hi, mode, "pad")
                for n, (lo, hi) in zip(shape, per_axis)]
    key = (tuple(per_axis), mode)
    if in_shape is None:
        return _native_pad.border_pad(a, key, maps, tuple(n + lo + hi for n, (lo, hi) in zip(shape, per_axis)))
    return _native_pad.border_pad_adjoint(a, shape, key, maps)


class BorderPad(Function):
    """Reflect / replicate / circular padding of several axes in one op (``torch.nn.functional.pad``
    with a non-constant mode): ``out[p] = x[m_1(p_1), ..., m_d(p_d)]`` with one index map ``m_a``
    per axis (``_pad_index``).

    The output is allocated once, the input copied into its centre, then each padded axis in turn
    fills its two border slabs from the interior along that axis (over the full, already padded
    extent of the earlier axes, so corners come out right): only the borders are gathered, where
    one ``index_select`` per axis copied the whole volume per axis and its backward zero-filled
    and scattered the whole volume per axis (the Conv4d example pads three axes per layer).
    Backward: :class:`BorderPadAdjoint`; the pair is closed under differentiation.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.shape import BorderPad
        >>> x = am.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
        >>> y = BorderPad.apply(x, ((0, 0), (2, 1)), "circular"); y
        tensor([[2., 3., 1., 2., 3., 1.]], grad_fn=<BorderPadBackward0>)
        >>> y.sum().backward(); x.grad
        tensor([[2., 2., 2.]])
    """

    def forward(self, x, per_axis, mode):
        self.in_shape, self.per_axis, self.mode = x.shape, per_axis, mode
        out = _native_border_pad(x, per_axis, mode)
        if out is not None:
            return out
        b = backend_of(x)
        xp = b.xp
        out = xp.empty(tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, per_axis)), dtype=x.dtype)
        out[tuple(slice(lo, lo + n) for n, (lo, _) in zip(x.shape, per_axis))] = x
        for axis, (lo, hi) in enumerate(per_axis):
            n = x.shape[axis]
            # the border slabs read the interior [lo, lo + n) of this axis: already written
            for side, dst in (("lo", slice(0, lo)), ("hi", slice(lo + n, lo + n + hi))):
                if dst.stop > dst.start:
                    src = _border_index(b, n, lo, hi, self.mode, side, offset=lo)
                    out[_axis_key(out.ndim, axis, dst)] = out[_axis_key(out.ndim, axis, src)]
        return out

    def backward(self, g):
        return BorderPadAdjoint.apply(g, self.in_shape, self.per_axis, self.mode)


class BorderPadAdjoint(Function):
    """The adjoint of :class:`BorderPad`: ``gx[j] = sum of g[p] over every p with m(p) = j``.

    Axes are undone last to first: each border slab of an axis is added onto the positions it
    was copied from, then the axis is cropped to its centre. Within one border the source
    positions are distinct (reflect and circular), so a fancy-indexed add is exact; replicate
    borders all come from one edge position and are summed onto it. (PyTorch: the backward of
    ``reflection_pad`` / ``replication_pad`` / circular ``pad``.)

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.shape import BorderPadAdjoint
        >>> # x = [a, b, c] reflect-padded by 1 is [b, a, b, c, b]: b collects 1 + 3 + 5
        >>> BorderPadAdjoint.apply(am.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]), (1, 3), ((0, 0), (1, 1)), "reflect")
        tensor([[2., 9., 4.]])
    """

    def forward(self, g, in_shape, per_axis, mode):
        self.per_axis, self.mode = per_axis, mode
        gx = _native_border_pad(g, per_axis, mode, in_shape)
        if gx is not None:
            return gx
        b = backend_of(g)
        xp = b.xp
        acc, owned = g, False
        for axis in reversed(range(len(per_axis))):
            lo, hi = per_axis[axis]
            if not (lo or hi):
                continue
            n = in_shape[axis]
            centre = acc[_axis_key(acc.ndim, axis, slice(lo, lo + n))]
            if not owned:  # the incoming gradient may be shared with other consumers: copy once
                centre, owned = xp.array(centre, copy=True), True
            for side, sl in (("lo", slice(0, lo)), ("hi", slice(lo + n, lo + n + hi))):
                if sl.stop == sl.start:
                    continue
                slab = acc[_axis_key(acc.ndim, axis, sl)]
                if mode == "replicate":
                    edge = 0 if side == "lo" else n - 1
                    centre[_axis_key(acc.ndim, axis, slice(edge, edge + 1))] += slab.sum(axis=axis, keepdims=True)
                else:
                    centre[_axis_key(acc.ndim, axis, _border_index(b, n, lo, hi, mode, side))] += slab
            acc = centre
        return acc if owned else xp.array(acc, copy=True)

    def backward(self, gg):
        return BorderPad.apply(gg, self.per_axis, self.mode)


# Autocast names of the non-constant pads (PyTorch's aten ops; its CPU fp32 list has
# reflection_pad1d/2d and replication_pad1d/2d/3d). Padding 4 dims has no PyTorch op: unlisted.
_PAD_OP_NAMES = {"reflect": "reflection_pad", "replicate": "replication_pad"}


def pad(input, pad, mode: str = "constant", value: float = 0.0):
    """Pad the last ``len(pad) // 2`` dims (``torch.nn.functional.pad``).

    ``pad = (left_last, right_last, left_2nd_last, right_2nd_last, ...)`` as in PyTorch; any
    number of trailing dims (4 included). Modes: ``constant``, ``reflect``, ``replicate``,
    ``circular``. Negative widths crop.

    Math: non-constant modes gather with an index map per axis; the backward scatter-adds
    the gradient back through that map.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.pad(am.tensor([[1.0, 2.0, 3.0]]), (1, 1), mode="reflect")
        tensor([[2., 1., 2., 3., 2.]])
    """
    if _grad_state.autocast is not None and mode in _PAD_OP_NAMES:
        from ..amp.autocast_mode import run_as_op
        return run_as_op(f"{_PAD_OP_NAMES[mode]}{len(pad) // 2}d", _pad_body, input, pad, mode, value)
    return _pad_body(input, pad, mode, value)


def _pad_body(input, pad, mode, value):
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2:
        raise RuntimeError(f"pad: padding length must be even, got {len(pad)} ({pad})")
    k = len(pad) // 2
    if k > input.ndim:
        raise RuntimeError(f"pad: padding {pad} covers {k} dims but the input has only {input.ndim} (shape {tuple(input.shape)})")
    per_axis = [(0, 0)] * (input.ndim - k) + [(pad[2 * (k - 1 - i)], pad[2 * (k - 1 - i) + 1]) for i in range(k)]
    # negative padding crops first
    if any(lo < 0 or hi < 0 for lo, hi in per_axis):
        key = tuple(slice(-lo if lo < 0 else 0, (s + hi) if hi < 0 else s) for (lo, hi), s in zip(per_axis, input.shape))
        input = input[key]
        per_axis = [(max(lo, 0), max(hi, 0)) for lo, hi in per_axis]
    if all(lo == 0 and hi == 0 for lo, hi in per_axis):
        return input
    if mode == "constant":
        return ConstantPad.apply(input, tuple(per_axis), value)
    for axis, (lo, hi) in enumerate(per_axis):
        if lo or hi:  # checks the widths against the size and mode, before any work
            _pad_index(input.shape[axis], lo, hi, mode, "pad")
    return BorderPad.apply(input, tuple(per_axis), mode)


class ToDevice(Function):
    def forward(self, x, dev, non_blocking=False):
        self.src = backend_of(x).device
        return _move(x, dev, non_blocking)

    def backward(self, g):
        return ToDevice.apply(g, self.src)


def _move(array, dev, non_blocking=False):
    src = backend_of(array)
    dst = get_backend(dev)
    if src is dst:
        return array
    if dst.name == "numpy":
        return src.to_numpy(array)
    if array.dtype.name == "bfloat16":
        from ..dtypes import BFLOAT16_CUDA_MSG
        raise TypeError(BFLOAT16_CUDA_MSG.format(op="to"))
    host = src.to_numpy(array) if src.name != "numpy" else array
    if non_blocking:
        return dst.from_numpy_async(host)
    return dst.from_numpy(host)


def to_device(input, dev, non_blocking: bool = False):
    """Move to a device, differentiably (``Tensor.to(device)``).

    ``non_blocking=True`` on a host-to-GPU copy queues it on the current CUDA stream and
    returns at once when the host array is in pinned memory (``DataLoader(pin_memory=True)``
    makes such batches), so the copy overlaps GPU work already queued; from pageable memory
    CUDA copies synchronously. GPU-to-host copies are always synchronous (the host array must
    be valid when ``to`` returns). On the CPU it is a no-op flag.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.shape import to_device
        >>> x = am.tensor([1.0], requires_grad=True)
        >>> y = to_device(x, 'cpu'); y.device, y.requires_grad
        (device(type='cpu'), True)
    """
    dev = _device(dev)
    if input.device == dev:
        return input
    if not input._requires_grad:
        return Tensor._wrap(_move(input.array, dev, non_blocking))
    return ToDevice.apply(input, dev, non_blocking)


def atleast_1d(input):
    """The tensor, reshaped to 1-d if it was 0-d (``torch.atleast_1d``).

    Example:
        >>> import avila_ml as am
        >>> am.atleast_1d(am.tensor(5.0))
        tensor([5.])
    """
    return reshape(input, 1) if input.ndim == 0 else input
