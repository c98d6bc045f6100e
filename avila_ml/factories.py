"""Tensor factories: ``tensor``, ``zeros``, ``arange``, ``randn``, ... (PyTorch's names and rules).

dtype inference follows PyTorch: Python floats give the default float dtype (float32),
ints give int64, bools give bool; NumPy arrays keep their dtype.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from . import dtypes as _dt
from .backends import backend_of, get_backend, get_default_device
from .tensor import Tensor

__all__ = ["tensor", "as_tensor", "from_numpy", "zeros", "ones", "full", "empty", "arange",
           "linspace", "logspace", "eye", "rand", "randn", "randint", "randperm", "zeros_like",
           "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "randint_like",
           "bernoulli", "multinomial", "normal"]


# Larger requests are refused before any allocation is tried (PyTorch's "Storage size
# calculation overflowed"); an int64 element count beyond this cannot be indexed anyway.
_MAX_NUMEL = 2 ** 62


def _shape(size, op: str = "tensor factory") -> tuple:
    """``size`` (ints, or one tuple/list of ints) as a shape; rejects floats, negatives and
    element counts that overflow, naming ``op``."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    try:
        # operator.index: 2.5 or "3" is an error, not a silent int(); numpy ints and 0-d int tensors pass
        shape = tuple(operator.index(s) for s in size)
    except TypeError:
        raise TypeError(f"{op}: size must be a tuple of ints, got {size!r}") from None
    if any(s < 0 for s in shape):
        bad = next(s for s in shape if s < 0)
        raise RuntimeError(f"{op}: trying to create a tensor with negative dimension {bad}: {list(shape)}")
    if math.prod(shape) > _MAX_NUMEL or any(s > _MAX_NUMEL for s in shape):
        raise RuntimeError(f"{op}: size {list(shape)} is too large ({math.prod(shape)} elements overflow int64 "
                           "storage sizes)")
    return shape


def _allocating(op: str, shape: tuple, fn):
    """Run ``fn()`` (which allocates ``shape``), turning an allocation failure into an
    error naming the op and the request."""
    try:
        return fn()
    except MemoryError:
        raise MemoryError(f"{op}: not enough memory for a tensor of shape {list(shape)}") from None


def _finish(array, requires_grad) -> Tensor:
    t = Tensor._wrap(array)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _infer_np_dtype(data):
    """PyTorch's dtype for Python data: any float -> default float, else int64, bool -> bool."""
    try:
        a = np.asarray(data)
    except ValueError as e:  # NumPy's words for a ragged list
        raise ValueError(f"tensor: expected a rectangular nested sequence of numbers (ragged data): {e}") from None
    if a.dtype == object:
        raise TypeError(f"tensor: could not infer dtype of {type(data).__name__} (ragged or non-numeric data)")
    if _dt.np_is_floating(a.dtype):
        return _dt.get_default_dtype().np
    if a.dtype.kind in "iu":
        return np.int64
    if a.dtype.kind == "b":
        return np.bool_
    raise TypeError(f"tensor: unsupported data of dtype {a.dtype}")


def _convert(data, dtype, device, copy: bool):
    """Array on ``device`` with ``dtype`` (or the inferred one) from any array-like."""
    dev = get_default_device() if device is None else device
    b = get_backend(dev)
    if isinstance(data, Tensor):
        data = data.array
    if isinstance(data, (list, tuple)) and any(isinstance(x, Tensor) for x in _flat(data)):
        data = np.asarray([x.tolist() if isinstance(x, Tensor) else x for x in data]) if data else np.asarray(data)
    is_array = hasattr(data, "__array_interface__") or hasattr(data, "__cuda_array_interface__")
    if dtype is not None:
        np_dtype = _dt.to_dtype(dtype).np
    elif is_array:
        np_dtype = data.dtype
        if np_dtype not in _dt._FROM_NP:
            raise TypeError(f"tensor: unsupported array dtype {np_dtype}")
    else:
        np_dtype = _infer_np_dtype(data)
    if is_array and not isinstance(data, np.ndarray) and hasattr(data, "__cuda_array_interface__"):
        src = backend_of(data)
        if src is not b:
            data = src.to_numpy(data)
    xp = b.xp
    try:
        if copy:
            return xp.array(data, dtype=np_dtype, copy=True)
        return xp.asarray(data, dtype=np_dtype)
    except (ValueError, TypeError) as e:
        raise type(e)(f"tensor: cannot convert {type(data).__name__} to a {np.dtype(np_dtype)} array "
                      f"(ragged or non-numeric data?): {e}") from None


def _flat(data):
    for x in data:
        if isinstance(x, (list, tuple)):
            yield from _flat(x)
        else:
            yield x


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data`` (``torch.tensor``).

    Example:
        >>> import avila_ml as am
        >>> am.tensor([[1, 2], [3, 4]]).dtype, am.tensor([1.5]).dtype
        (avila_ml.int64, avila_ml.float32)
    """
    return _finish(_convert(data, dtype, device, copy=True), requires_grad)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like :func:`tensor` but shares memory when no conversion is needed (``torch.as_tensor``).

    Example:
        >>> import avila_ml as am
        >>> import numpy as np
        >>> a = np.array([1.0, 2.0], dtype=np.float32)
        >>> t = am.as_tensor(a); a[0] = 5.0; t
        tensor([5., 2.])
    """
    if isinstance(data, Tensor) and dtype is None and device is None:
        return data
    if isinstance(data, Tensor):
        out = data
        if device is not None:
            out = out.to(device)
        return out.to(dtype) if dtype is not None else out
    return _finish(_convert(data, dtype, device, copy=False), False)


def from_numpy(ndarray: np.ndarray) -> Tensor:
    """A CPU tensor sharing memory with a NumPy array (``torch.from_numpy``).

    Example:
        >>> import numpy as np, avila_ml as am
        >>> a = np.zeros(2); t = am.from_numpy(a); a[0] = 5; t
        tensor([5., 0.], dtype=avila_ml.float64)
    """
    if not isinstance(ndarray, np.ndarray):
        raise TypeError(f"from_numpy: expected np.ndarray, got {type(ndarray).__name__}")
    _dt.from_numpy_dtype(ndarray.dtype)
    return Tensor._wrap(ndarray)


def _dtype_or_default(dtype):
    return _dt.get_default_dtype().np if dtype is None else _dt.to_dtype(dtype).np


def _filled(fill, size, dtype, device, requires_grad, op):
    b = get_backend(device)
    shape = _shape(size, op)
    np_dtype = _dtype_or_default(dtype)
    if fill == 0:
        arr = _allocating(op, shape, lambda: b.xp.zeros(shape, dtype=np_dtype))
    elif fill == 1:
        arr = _allocating(op, shape, lambda: b.xp.ones(shape, dtype=np_dtype))
    else:
        arr = _allocating(op, shape, lambda: b.xp.empty(shape, dtype=np_dtype))
    return _finish(arr, requires_grad)


def zeros(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros (``torch.zeros``).

    Example:
        >>> import avila_ml as am
        >>> am.zeros(2, 3).shape
        (2, 3)
    """
    return _filled(0, size, dtype, device, requires_grad, "zeros")


def ones(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones (``torch.ones``).

    Example:
        >>> import avila_ml as am
        >>> am.ones(2, 3)
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    return _filled(1, size, dtype, device, requires_grad, "ones")


def empty(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """An uninitialised tensor (``torch.empty``).

    Example:
        >>> import avila_ml as am
        >>> am.empty(2, 3).shape, am.empty(4, dtype=am.int64).dtype
        ((2, 3), avila_ml.int64)
    """
    return _filled(None, size, dtype, device, requires_grad, "empty")


def full(size, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor filled with ``fill_value``; dtype inferred from it like PyTorch (``torch.full``).

    Example:
        >>> import avila_ml as am
        >>> am.full((2,), 7)
        tensor([7, 7])
    """
    if dtype is None:
        dtype = _dt.from_numpy_dtype(_infer_np_dtype(fill_value))
    b = get_backend(device)
    shape = _shape((size,), "full")
    arr = _allocating("full", shape, lambda: b.xp.full(shape, fill_value, dtype=_dt.to_dtype(dtype).np))
    return _finish(arr, requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Values ``start, start+step, ...`` below ``end`` (``torch.arange``).

    Integer arguments give int64, any float gives the default float dtype.

    Example:
        >>> import avila_ml as am
        >>> am.arange(3), am.arange(0, 1, 0.5)
        (tensor([0, 1, 2]), tensor([0.0000, 0.5000]))
    """
    if end is None:
        start, end = 0, start
    if step == 0:
        raise RuntimeError("arange: step must be nonzero")
    if (end - start) * step < 0:
        raise RuntimeError(f"arange: upper bound and larger bound inconsistent with step sign (start={start}, end={end}, step={step})")
    if dtype is None:
        is_int = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, end, step))
        dtype = _dt.int64 if is_int else _dt.get_default_dtype()
    b = get_backend(device)
    np_dtype = _dt.to_dtype(dtype).np
    n = int(np.ceil((end - start) / step))
    arr = (np.arange(n, dtype=np.float64) * step + start).astype(np_dtype) if _dt.np_is_floating(np_dtype) else np.arange(start, end, step, dtype=np_dtype)
    return _finish(b.from_numpy(arr) if b.name != "numpy" else arr, requires_grad)


def linspace(start, end, steps: int, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive (``torch.linspace``).

    Example:
        >>> import avila_ml as am
        >>> am.linspace(0, 1, 5)
        tensor([0.0000, 0.2500, 0.5000, 0.7500, 1.0000])
    """
    if steps < 0:
        raise RuntimeError(f"linspace: number of steps must be non-negative, got {steps}")
    b = get_backend(device)
    arr = b.xp.linspace(start, end, steps, dtype=np.float64).astype(_dtype_or_default(dtype))
    return _finish(arr, requires_grad)


def logspace(start, end, steps: int, base: float = 10.0, dtype=None, device=None) -> Tensor:
    """``base ** linspace(start, end, steps)`` (``torch.logspace``).

    Example:
        >>> import avila_ml as am
        >>> am.logspace(0, 2, 3).round(decimals=4)
        tensor([  1.,  10., 100.])
    """
    b = get_backend(device)
    arr = (base ** b.xp.linspace(start, end, steps, dtype=np.float64)).astype(_dtype_or_default(dtype))
    return _finish(arr, False)


def eye(n: int, m: int | None = None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Identity matrix, ``n x m`` (``torch.eye``).

    Example:
        >>> import avila_ml as am
        >>> am.eye(2, 3)
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
    """
    b = get_backend(device)
    shape = _shape((n, n if m is None else m), "eye")
    return _finish(_allocating("eye", shape, lambda: b.xp.eye(*shape, dtype=_dtype_or_default(dtype))), requires_grad)


def _draw(b, generator, method, *args):
    """Random draws for backend ``b``: from its own stream, or from ``generator``.

    A :class:`avila_ml.data.Generator` is a host (PCG64) stream: its numbers are the same for
    every device, and they reach a CUDA device with one explicit copy (``torch.Generator`` is
    per device instead; a host stream keeps a seeded pipeline identical on CPU and GPU).
    """
    if generator is None:
        return getattr(b, method)(*args)
    return b.from_numpy(getattr(generator, method)(*args))


def rand(*size, dtype=None, device=None, requires_grad: bool = False, generator=None) -> Tensor:
    """Samples of U[0, 1) from the seeded generator (``torch.rand``).

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0); float(am.rand(1000).mean()) > 0.4
        True
    """
    b = get_backend(device)
    shape = _shape(size, "rand")
    arr = _allocating("rand", shape, lambda: _draw(b, generator, "rand", shape, _dtype_or_default(dtype)))
    return _finish(arr, requires_grad)


def randn(*size, dtype=None, device=None, requires_grad: bool = False, generator=None) -> Tensor:
    """Samples of N(0, 1) (``torch.randn``).

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0); am.randn(2, 3).shape
        (2, 3)
    """
    b = get_backend(device)
    shape = _shape(size, "randn")
    arr = _allocating("randn", shape, lambda: _draw(b, generator, "randn", shape, _dtype_or_default(dtype)))
    return _finish(arr, requires_grad)


def randint(low, high=None, size=None, dtype=None, device=None, generator=None) -> Tensor:
    """Integers uniform in ``[low, high)`` (``torch.randint``; ``randint(high, size)`` too).

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0); x = am.randint(0, 10, (100,))
        >>> bool((x >= 0).all() and (x < 10).all()), x.dtype
        (True, avila_ml.int64)
    """
    if size is None:
        if high is None or not isinstance(high, (tuple, list)):
            raise TypeError("randint: size must be given, e.g. randint(0, 10, (3,))")
        low, high, size = 0, low, high
    if high is None:
        low, high = 0, low
    if high <= low:
        raise RuntimeError(f"randint: expected low < high, got low={low}, high={high}")
    b = get_backend(device)
    np_dtype = _dt.int64.np if dtype is None else _dt.to_dtype(dtype).np
    if _dt.np_is_floating(np_dtype):
        arr = _draw(b, generator, "randint", low, high, _shape((size,), "randint"), np.int64).astype(np_dtype)
    else:
        arr = _draw(b, generator, "randint", low, high, _shape((size,), "randint"), np_dtype)
    return _finish(arr, False)


def randperm(n: int, dtype=None, device=None, generator=None) -> Tensor:
    """A random permutation of ``0..n-1`` (``torch.randperm``).

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0); sorted(am.randperm(5).tolist())
        [0, 1, 2, 3, 4]
    """
    b = get_backend(device)
    (n,) = _shape((n,), "randperm")
    arr = _draw(b, generator, "permutation", n).astype(_dt.int64.np if dtype is None else _dt.to_dtype(dtype).np)
    return _finish(arr, False)


def bernoulli(input, p=None, generator=None) -> Tensor:
    """Draw 0/1 with probability ``input`` (or ``p``) (``torch.bernoulli``).

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0); am.bernoulli(am.tensor([0.0, 1.0, 0.0]))
        tensor([0., 1., 0.])
    """
    b = input._backend
    probs = input.array if p is None else p
    r = _draw(b, generator, "rand", input.shape, input.array.dtype)
    return _finish((r < probs).astype(input.array.dtype), False)


def multinomial(input, num_samples: int, replacement: bool = False, generator=None) -> Tensor:
    """Sample category indices from (unnormalised) row probabilities (``torch.multinomial``).

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0); am.multinomial(am.tensor([0.0, 0.0, 1.0]), 2, replacement=True)
        tensor([2, 2])
    """
    p = input._backend.to_numpy(input.array).astype(np.float64)
    single = p.ndim == 1
    p = p.reshape(1, -1) if single else p
    b = generator or get_backend("cpu")
    out = np.empty((p.shape[0], num_samples), dtype=np.int64)
    for i, row in enumerate(p):
        if (row < 0).any() or not np.isfinite(row).all() or row.sum() <= 0:
            raise RuntimeError("multinomial: probabilities must be non-negative, finite and have a positive sum")
        if not replacement and num_samples > (row > 0).sum():
            raise RuntimeError("multinomial: cannot sample more categories than are nonzero without replacement")
        out[i] = b.rng.choice(len(row), size=num_samples, replace=replacement, p=row / row.sum())
    out = out[0] if single else out
    return Tensor._wrap(get_backend(input.device).from_numpy(out) if input.is_cuda else out)


def normal(mean, std, size=None, generator=None, device=None) -> Tensor:
    """Samples of N(mean, std^2) (``torch.normal``) for numbers or broadcastable tensors.

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0); am.normal(2.0, 0.0, (3,))
        tensor([2., 2., 2.])
    """
    m = mean.array if isinstance(mean, Tensor) else mean
    s = std.array if isinstance(std, Tensor) else std
    shape = size if size is not None else np.broadcast_shapes(np.shape(m), np.shape(s))
    dt = mean.dtype if isinstance(mean, Tensor) else _dt.get_default_dtype()
    b = get_backend(device if device is not None else (mean.device if isinstance(mean, Tensor) else None))
    arr = _draw(b, generator, "randn", tuple(shape), dt.np) * s + m
    return _finish(arr.astype(dt.np, copy=False), False)


def _like(fn):
    def like(input, dtype=None, device=None, requires_grad: bool = False, **kw):
        return fn(*input.shape, dtype=dtype or input.dtype, device=device or input.device,
                  requires_grad=requires_grad, **kw)
    like.__name__ = fn.__name__ + "_like"
    like.__doc__ = (f"Like ``{fn.__name__}`` with the shape, dtype and device of ``input`` "
                    f"(``torch.{fn.__name__}_like``).\n\n    Example:\n        >>> import avila_ml as am\n"
                    f"        >>> x = am.{fn.__name__}_like(am.ones(2, 3, dtype=am.float64)); x.shape, x.dtype\n"
                    f"        ((2, 3), avila_ml.float64)\n    ")
    return like


zeros_like = _like(zeros)
ones_like = _like(ones)
empty_like = _like(empty)
rand_like = _like(rand)
randn_like = _like(randn)


def full_like(input, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor shaped like ``input`` filled with ``fill_value`` (``torch.full_like``).

    Example:
        >>> import avila_ml as am
        >>> am.full_like(am.zeros(2, 2), 7.0)
        tensor([[7., 7.],
                [7., 7.]])
    """
    return full(input.shape, fill_value, dtype=dtype or input.dtype, device=device or input.device,
                requires_grad=requires_grad)


def randint_like(input, low, high=None, dtype=None, device=None) -> Tensor:
    """Random integers shaped like ``input`` (``torch.randint_like``).

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0); x = am.randint_like(am.zeros(3, 2), 5)
        >>> x.shape, bool((x < 5).all())
        ((3, 2), True)
    """
    if high is None:
        low, high = 0, low
    return randint(low, high, input.shape, dtype=dtype or input.dtype, device=device or input.device)

