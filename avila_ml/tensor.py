"""``Tensor``: an ``xp`` array (NumPy or CuPy) plus what autograd needs (grad, grad_fn).

The methods here are thin: arithmetic, reductions and shape ops call into ``avila_ml.ops``;
this file holds only the bookkeeping (attributes, conversion, hooks, in-place updates).
"""
from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from ._grad_state import state as _state
from .backends import backend_of, device as _device, get_backend

__all__ = ["Tensor"]


class _Handle:
    """Returned by ``register_hook``; ``remove()`` unregisters the hook."""

    def __init__(self, lst, fn):
        self._lst, self._fn = lst, fn

    def remove(self) -> None:
        if self._fn in self._lst:
            self._lst.remove(self._fn)


class Tensor:
    """A multi-dimensional array with automatic differentiation (``torch.Tensor``).

    ``array`` is the raw NumPy/CuPy array. ``grad`` receives the gradient after
    ``backward()`` when ``requires_grad`` is set; ``grad_fn`` is the node that produced
    the tensor (None for leaves). Create tensors with :func:`avila_ml.tensor` and the other
    factories rather than with this constructor.

    Math: for a scalar loss ``L``, ``x.grad`` holds ``dL/dx`` summed over every path.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([1.0, 2.0, 3.0], requires_grad=True)
        >>> y = (x * x).sum()
        >>> y.backward()
        >>> x.grad
        tensor([2., 4., 6.])
    """

    __slots__ = ("array", "_requires_grad", "grad", "grad_fn", "_output_nr", "_version",
                 "_hooks", "_grad_accumulator", "_retains_grad", "__weakref__")
    __array_priority__ = 1000  # NumPy scalars/arrays on the left defer to our operators

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.array
        elif not hasattr(data, "__array_interface__") and not hasattr(data, "__cuda_array_interface__"):
            data = np.asarray(data)
        self.array = data
        self._requires_grad = False
        self.grad = None
        self.grad_fn = None
        self._output_nr = 0
        self._version = [0]
        self._hooks = None
        self._grad_accumulator = None
        self._retains_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array, node=None, output_nr: int = 0) -> "Tensor":
        """Fast constructor used by ops: no conversion, no checks."""
        t = object.__new__(cls)
        t.array = array
        t._requires_grad = node is not None
        t.grad = None
        t.grad_fn = node
        t._output_nr = output_nr
        t._version = [0]
        t._hooks = None
        t._grad_accumulator = None
        t._retains_grad = False
        return t

    # -- attributes ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """The size of each dimension, a tuple (``torch.Size`` is a tuple too)."""
        return self.array.shape

    def size(self, dim: int | None = None):
        """``shape``, or the size of one dimension (``Tensor.size``)."""
        if dim is None:
            return self.array.shape
        return self.array.shape[_norm_dim(dim, self.array.ndim, "size")]

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def dim(self) -> int:
        return self.array.ndim

    def numel(self) -> int:
        return int(self.array.size)

    def element_size(self) -> int:
        return self.array.itemsize

    @property
    def dtype(self) -> _dt.dtype:
        return _dt.from_numpy_dtype(self.array.dtype)

    @property
    def device(self) -> _device:
        return backend_of(self.array).device

    @property
    def is_cuda(self) -> bool:
        return not isinstance(self.array, np.ndarray)

    def is_floating_point(self) -> bool:
        return self.array.dtype.kind == "f"

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Set ``requires_grad`` in place on a leaf (``Tensor.requires_grad_``)."""
        if self.grad_fn is not None:
            if not requires_grad:
                raise RuntimeError(
                    "requires_grad_: you can only change requires_grad flags of leaf tensors; "
                    "use detach() to get a tensor that does not require grad"
                )
            return self
        if requires_grad and self.array.dtype.kind not in "fc":
            raise RuntimeError(
                f"requires_grad_: only tensors of floating point dtype can require gradients, "
                f"got {self.dtype}"
            )
        self._requires_grad = bool(requires_grad)
        return self

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded op (user-created, or not requiring grad)."""
        return self.grad_fn is None

    @property
    def data(self) -> "Tensor":
        """A tensor sharing this one's memory, detached from the graph (``Tensor.data``)."""
        t = Tensor._wrap(self.array)
        t._version = self._version
        return t

    @data.setter
    def data(self, value) -> None:
        self.array = value.array if isinstance(value, Tensor) else value

    @property
    def T(self) -> "Tensor":
        return self.permute(*range(self.ndim - 1, -1, -1))

    @property
    def mT(self) -> "Tensor":
        return self.transpose(-2, -1)

    @property
    def _backend(self):
        return backend_of(self.array)

    # -- autograd ---------------------------------------------------------------------------
    def backward(self, gradient=None, retain_graph=None, create_graph: bool = False, inputs=None) -> None:
        """Compute the gradient of this tensor w.r.t. graph leaves (``Tensor.backward``).

        ``gradient`` is required unless the tensor has one element. Gradients accumulate into
        ``.grad`` of leaves that require grad. ``create_graph=True`` records the backward pass so
        it can be differentiated again.

        Example:
            >>> import avila_ml as am
            >>> x = am.tensor(2.0, requires_grad=True)
            >>> (x ** 3).backward(); x.grad
            tensor(12.)
        """
        from .autograd import backward as _backward
        _backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph, inputs=inputs)

    def detach(self) -> "Tensor":
        """A tensor sharing memory, cut from the graph (``Tensor.detach``)."""
        t = Tensor._wrap(self.array)
        t._version = self._version
        return t

    def detach_(self) -> "Tensor":
        self.grad_fn = None
        self._requires_grad = False
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` for this non-leaf tensor after backward (``Tensor.retain_grad``)."""
        if self.grad_fn is None:
            if not self._requires_grad:
                raise RuntimeError("retain_grad: can't retain_grad on a tensor that doesn't require grad")
            return
        if self._retains_grad:
            return
        self._retains_grad = True
        import weakref
        ref = weakref.ref(self)

        def _retain(g):
            t = ref()
            if t is not None:
                t.grad = g.detach() if t.grad is None else Tensor._wrap(t.grad.array + g.array)
            return None

        self.grad_fn.register_prehook(self._output_nr, _retain)

    @property
    def retains_grad(self) -> bool:
        return self._retains_grad

    def register_hook(self, hook) -> _Handle:
        """Call ``hook(grad)`` when this tensor's gradient is computed; a non-None return
        replaces the gradient (``Tensor.register_hook``).

        Example:
            >>> import avila_ml as am
            >>> x = am.ones(2, requires_grad=True)
            >>> h = x.register_hook(lambda g: g * 10)
            >>> x.sum().backward(); x.grad
            tensor([10., 10.])
        """
        if not self._requires_grad:
            raise RuntimeError("register_hook: cannot register a hook on a tensor that doesn't require gradient")
        if self.grad_fn is not None:
            self.grad_fn.register_prehook(self._output_nr, hook)
            return _Handle(self.grad_fn._pre_hooks[self._output_nr], hook)
        from .autograd.function import _edge_of
        acc = _edge_of(self)[0]
        # the leaf keeps its accumulator (and so its hooks) alive from now on
        self._hooks = acc
        if acc._pre_hooks is None:
            acc._pre_hooks = {0: []}
        acc._pre_hooks[0].append(hook)
        return _Handle(acc._pre_hooks[0], hook)

    def register_post_accumulate_grad_hook(self, hook) -> _Handle:
        """Call ``hook(tensor)`` on this leaf after its ``.grad`` has been updated in a backward
        (``Tensor.register_post_accumulate_grad_hook``); the hook's return value is ignored.

        Example:
            >>> import avila_ml as am
            >>> w = am.ones(2, requires_grad=True)
            >>> h = w.register_post_accumulate_grad_hook(lambda t: print("grad", t.grad))
            >>> (2 * w).sum().backward()
            grad tensor([2., 2.])
        """
        if not self._requires_grad:
            raise RuntimeError("register_post_accumulate_grad_hook: cannot register a hook on a tensor "
                               "that doesn't require gradient")
        if self.grad_fn is not None:
            raise RuntimeError("register_post_accumulate_grad_hook: post accumulate grad hooks cannot be "
                               "registered on non-leaf tensors")
        from .autograd.function import _edge_of
        acc = _edge_of(self)[0]
        self._hooks = acc  # the leaf keeps its accumulator (and so its hooks) alive
        if acc._post_hooks is None:
            acc._post_hooks = []
        acc._post_hooks.append(hook)
        return _Handle(acc._post_hooks, hook)

    # -- conversion -------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The data as a NumPy array, sharing memory on the CPU (``Tensor.numpy``)."""
        if self._requires_grad:
            raise RuntimeError("numpy: can't call numpy() on a tensor that requires grad; use tensor.detach().numpy()")
        if not isinstance(self.array, np.ndarray):
            raise TypeError(f"numpy: can't convert a {self.device} tensor to NumPy; use .cpu() first")
        return self.array

    def item(self):
        """The value of a one-element tensor as a Python number (``Tensor.item``)."""
        if self.array.size != 1:
            raise RuntimeError(f"item: a tensor with {self.array.size} elements cannot be converted to a Python scalar")
        return self.array.reshape(()).item() if isinstance(self.array, np.ndarray) else self.array.item()

    def tolist(self):
        """The data as (nested) Python lists (``Tensor.tolist``)."""
        return self._backend.to_numpy(self.array).tolist()

    def __array__(self, dtype=None, copy=None):
        a = self._backend.to_numpy(self.array)
        return a if dtype is None else a.astype(dtype)

    def to(self, *args, dtype=None, device=None, copy: bool = False) -> "Tensor":
        """Convert to a device and/or dtype, differentiably (``Tensor.to``).

        ``t.to("cuda")``, ``t.to(am.float64)``, ``t.to(other_tensor)``, ``t.to("cpu", am.float64)``.
        """
        for a in args:
            if isinstance(a, Tensor):
                dtype, device = a.dtype, a.device
            elif isinstance(a, (_dt.dtype, type)) or (isinstance(a, str) and a in _dt._NAMES):
                dtype = a
            elif isinstance(a, (str, _device)):
                device = a
            elif a is not None:
                raise TypeError(f"to: unexpected argument {a!r}")
        out = self
        if device is not None:
            out = _ops.shape.to_device(out, device)
        if dtype is not None:
            out = _ops.elementwise.cast(out, dtype)
        if copy and out is self:
            out = self.clone()
        return out

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self, device=None) -> "Tensor":
        return self.to(_device("cuda", device) if isinstance(device, int) else (device or "cuda"))

    def float(self) -> "Tensor":
        return self.to(_dt.float32)

    def double(self) -> "Tensor":
        return self.to(_dt.float64)

    def half(self) -> "Tensor":
        return self.to(_dt.float16)

    def long(self) -> "Tensor":
        return self.to(_dt.int64)

    def int(self) -> "Tensor":
        return self.to(_dt.int32)

    def bool(self) -> "Tensor":
        return self.to(_dt.bool)

    def type(self, dtype=None):
        if dtype is None:
            return f"avila_ml.{self.dtype.name}"
        return self.to(dtype)

    def clone(self) -> "Tensor":
        """A copy with its own memory; gradients flow back to the source (``Tensor.clone``)."""
        return _ops.elementwise.clone(self)

    def contiguous(self) -> "Tensor":
        """A C-contiguous tensor with the same values (``Tensor.contiguous``)."""
        xp = self._backend.xp
        if self.array.flags.c_contiguous:
            return self
        return _ops.elementwise.clone(self) if xp is not None else self

    def is_contiguous(self) -> bool:
        return bool(self.array.flags.c_contiguous)

    def __len__(self) -> int:
        if self.array.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.array.shape[0]

    def __iter__(self):
        if self.array.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.array.shape[0]))

    def __bool__(self) -> bool:
        if self.array.size != 1:
            raise RuntimeError(f"Boolean value of a tensor with {self.array.size} values is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.array.dtype.kind not in "iu" or self.array.size != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __hash__(self):
        return id(self)

    def __repr__(self) -> str:
        arr = self._backend.to_numpy(self.array)
        opts = {}
        if arr.dtype.kind == "f" and arr.size:
            finite = arr[np.isfinite(arr)]
            if finite.size and not (finite == np.round(finite)).all():
                opts = {"floatmode": "fixed", "precision": 4}
            elif finite.size:
                # whole numbers print as "1." unless PyTorch switches to scientific notation
                mag = np.abs(finite[finite != 0]).astype(np.float64)
                if mag.size and (mag.max() / mag.min() > 1000 or mag.max() > 1e8):
                    opts = {"floatmode": "fixed", "precision": 4}
        if arr.dtype == np.bool_:
            # PyTorch pads True to the width of False only when a False is printed
            width = 5 if arr.size and not arr.all() else 4
            opts = {"formatter": {"bool": lambda b: repr(bool(b)).rjust(width)}}
        body = np.array2string(arr, separator=", ", prefix="tensor(", threshold=1000, edgeitems=3, **opts)
        extras = []
        if arr.size == 0 and arr.shape != (0,):
            extras.append(f"size={tuple(arr.shape)}")
        dt = self.dtype
        if dt not in (_dt.get_default_dtype(), _dt.int64, _dt.bool) or (arr.size == 0 and dt is not _dt.get_default_dtype()):
            extras.append(f"dtype={dt!r}")
        if self.is_cuda:
            extras.append(f"device='{self.device}'")
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn._name()}>")
        elif self._requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extras) + ")"

    def __reduce__(self):
        # pickling (DataLoader workers) ships the data only, like a detached tensor
        return (_rebuild, (self._backend.to_numpy(self.array), str(self.device), self._requires_grad and self.grad_fn is None))

    # -- in-place updates (for use under no_grad: optimizers, initialisers) -----------------
    def _check_inplace(self, op: str) -> None:
        if _state.enabled and self._requires_grad:
            if self.grad_fn is None:
                raise RuntimeError(
                    f"{op}: a leaf tensor that requires grad is being used in an in-place operation; "
                    "wrap the update in `with avila_ml.no_grad():`"
                )
            raise RuntimeError(
                f"{op}: in-place operations on tensors that are part of the autograd graph are not "
                "supported; use the out-of-place op or wrap the update in no_grad()"
            )

    def _bump(self) -> "Tensor":
        self._version[0] += 1
        return self

    def _other_array(self, other, op):
        if isinstance(other, Tensor):
            if other.array.ndim and other.device != self.device:
                raise RuntimeError(f"{op}: expected both tensors on the same device, got {self.device} and {other.device}")
            a = other.array
            if other.device != self.device:
                a = get_backend(self.device).from_numpy(other._backend.to_numpy(a))
            return a
        return other

    def _inplace(self, op, ufunc, other):
        self._check_inplace(op)
        o = self._other_array(other, op)
        try:
            ufunc(self.array, o, out=self.array, casting="same_kind")
        except (TypeError, ValueError) as e:
            raise RuntimeError(
                f"{op}: cannot update a tensor of shape {tuple(self.shape)} and dtype {self.dtype} "
                f"with {getattr(other, 'shape', type(other).__name__)}: {e}"
            ) from None
        return self._bump()

    def add_(self, other, alpha=1) -> "Tensor":
        """In place ``self += alpha * other`` (``Tensor.add_``)."""
        if alpha != 1:
            other = (other.array if isinstance(other, Tensor) else other) * alpha
        return self._inplace("add_", self._backend.xp.add, other)

    def sub_(self, other, alpha=1) -> "Tensor":
        if alpha != 1:
            other = (other.array if isinstance(other, Tensor) else other) * alpha
        return self._inplace("sub_", self._backend.xp.subtract, other)

    def mul_(self, other) -> "Tensor":
        """In place ``self *= other`` (``Tensor.mul_``)."""
        return self._inplace("mul_", self._backend.xp.multiply, other)

    def div_(self, other) -> "Tensor":
        return self._inplace("div_", self._backend.xp.divide, other)

    def addcmul_(self, t1, t2, value=1) -> "Tensor":
        """In place ``self += value * t1 * t2`` (``Tensor.addcmul_``)."""
        prod = self._other_array(t1, "addcmul_") * self._other_array(t2, "addcmul_")
        return self.add_(prod, alpha=value)

    def addcdiv_(self, t1, t2, value=1) -> "Tensor":
        """In place ``self += value * t1 / t2`` (``Tensor.addcdiv_``)."""
        q = self._other_array(t1, "addcdiv_") / self._other_array(t2, "addcdiv_")
        return self.add_(q, alpha=value)

    def lerp_(self, end, weight) -> "Tensor":
        """In place ``self += weight * (end - self)`` (``Tensor.lerp_``)."""
        e = self._other_array(end, "lerp_")
        return self.add_(e - self.array, alpha=weight)

    def sqrt_(self) -> "Tensor":
        self._check_inplace("sqrt_")
        self._backend.xp.sqrt(self.array, out=self.array)
        return self._bump()

    def zero_(self) -> "Tensor":
        """Fill with zeros in place (``Tensor.zero_``)."""
        return self.fill_(0)

    def fill_(self, value) -> "Tensor":
        """Fill with ``value`` in place (``Tensor.fill_``)."""
        self._check_inplace("fill_")
        self.array[...] = value.item() if isinstance(value, Tensor) else value
        return self._bump()

    def copy_(self, src) -> "Tensor":
        """Copy ``src`` (broadcast, cast and moved as needed) into this tensor (``Tensor.copy_``)."""
        self._check_inplace("copy_")
        a = src.array if isinstance(src, Tensor) else src
        if isinstance(src, Tensor) and src.device != self.device:
            a = get_backend(self.device).from_numpy(src._backend.to_numpy(a))
        try:
            self._backend.xp.copyto(self.array, a, casting="unsafe")
        except ValueError:
            raise RuntimeError(
                f"copy_: source of shape {tuple(getattr(a, 'shape', ()))} cannot be broadcast to "
                f"the destination shape {tuple(self.shape)}"
            ) from None
        return self._bump()

    def clamp_(self, min=None, max=None) -> "Tensor":
        """Clamp in place to ``[min, max]`` (``Tensor.clamp_``)."""
        self._check_inplace("clamp_")
        if min is None and max is None:
            raise RuntimeError("clamp_: at least one of min or max must be given")
        lo = self._other_array(min, "clamp_") if min is not None else None
        hi = self._other_array(max, "clamp_") if max is not None else None
        xp = self._backend.xp
        if lo is not None:
            xp.maximum(self.array, lo, out=self.array)
        if hi is not None:
            xp.minimum(self.array, hi, out=self.array)
        return self._bump()

    def uniform_(self, a: float = 0.0, b: float = 1.0) -> "Tensor":
        """Fill with samples of U(a, b) in place (``Tensor.uniform_``)."""
        self._check_inplace("uniform_")
        r = self._backend.rand(self.array.shape, self.array.dtype)
        self.array[...] = r * (b - a) + a
        return self._bump()

    def normal_(self, mean: float = 0.0, std: float = 1.0) -> "Tensor":
        """Fill with samples of N(mean, std^2) in place (``Tensor.normal_``)."""
        self._check_inplace("normal_")
        r = self._backend.randn(self.array.shape, self.array.dtype)
        self.array[...] = r * std + mean
        return self._bump()

    def _augmented(self, inplace, outofplace, other):
        # x += y updates in place like PyTorch, except on tensors the graph is tracking, where
        # the out-of-place result (same values) keeps gradients right
        if _state.enabled and self._requires_grad:
            return outofplace(self, other)
        return inplace(self, other)

    def __iadd__(self, other):
        return self._augmented(Tensor.add_, Tensor.__add__, other)

    def __isub__(self, other):
        return self._augmented(Tensor.sub_, Tensor.__sub__, other)

    def __imul__(self, other):
        return self._augmented(Tensor.mul_, Tensor.__mul__, other)

    def __itruediv__(self, other):
        return self._augmented(Tensor.div_, Tensor.__truediv__, other)

    def __setitem__(self, key, value) -> None:
        self._check_inplace("__setitem__")
        self.array[_ops.indexing.normalize_key(key)] = value.array if isinstance(value, Tensor) else value
        self._bump()


def _rebuild(arr, dev, requires_grad):
    t = Tensor(get_backend(dev).from_numpy(arr) if dev != "cpu" else arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _norm_dim(dim: int, ndim: int, op: str) -> int:
    """Wrap a negative dim and check the range, naming the op."""
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{op}: dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


from . import ops as _ops  # noqa: E402  (ops import Tensor from this module)
