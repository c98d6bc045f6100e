"""``Tensor``: an ``xp`` array (NumPy or CuPy) plus what autograd needs (grad, grad_fn).

The methods here are thin: arithmetic, reductions and shape ops call into ``avila_ml.ops``;
this file holds only the bookkeeping (attributes, conversion, hooks, in-place updates).
"""
from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from ._grad_state import InferenceVersion, state as _state
from .backends import backend_of, device as _device, get_backend
from .size import Size as _Size

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
                 "_hooks", "_grad_accumulator", "_retains_grad", "_view", "__weakref__")
    __array_priority__ = 1000  # NumPy scalars/arrays on the left defer to our operators

    def __init__(self, *args, device=None, requires_grad: bool = False):
        if len(args) == 1 and (isinstance(args[0], Tensor) or hasattr(args[0], "__array_interface__")
                               or hasattr(args[0], "__cuda_array_interface__")):
            data = args[0]
            # a Tensor or an array is wrapped as it is, sharing memory (PyTorch's
            # torch.Tensor(ndarray) would cast to the default float dtype)
            data = data.array if isinstance(data, Tensor) else data
        else:
            from .legacy import legacy_array
            data = legacy_array(args, None, device, "Tensor")
        self.array = data
        self._requires_grad = False
        self.grad = None
        self.grad_fn = None
        self._output_nr = 0
        self._version = [0] if not _state.inference else InferenceVersion([0])
        self._view = None
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
        t._version = [0] if not _state.inference else InferenceVersion([0])
        t._view = None
        t._hooks = None
        t._grad_accumulator = None
        t._retains_grad = False
        return t

    # -- attributes ------------------------------------------------------------------------
    @property
    def shape(self) -> _Size:
        """The size of each dimension, an :class:`avila_ml.Size` (a tuple, as ``torch.Size``)."""
        return tuple.__new__(_Size, self.array.shape)

    def size(self, dim: int | None = None):
        """``shape``, or the size of one dimension (``Tensor.size``)."""
        if dim is None:
            return tuple.__new__(_Size, self.array.shape)
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
        return _dt.np_is_floating(self.array.dtype)

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
        if requires_grad and type(self._version) is InferenceVersion and not _state.inference:
            raise RuntimeError("Setting requires_grad=True on inference tensor outside InferenceMode is not allowed.")
        if requires_grad and not (_dt.np_is_floating(self.array.dtype) or self.array.dtype.kind == "c"):
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
        # (a non-leaf's _hooks slot is free: it remembers where the hook sits, so an in-place
        # op that gives this tensor a new history can move it, as PyTorch does)
        self._hooks = (self.grad_fn, self._output_nr, _retain)

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
        """Call ``hook(tensor)`` after this leaf's ``.grad`` has been accumulated in a backward
        (``Tensor.register_post_accumulate_grad_hook``); e.g. to step an optimizer per parameter.

        Example:
            >>> import avila_ml as am
            >>> w = am.ones(2, requires_grad=True)
            >>> seen = []
            >>> h = w.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.sum().item()))
            >>> (w * 3).sum().backward(); seen
            [6.0]
        """
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self.grad_fn is not None:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf tensors")
        from .autograd.function import _edge_of
        acc = _edge_of(self)[0]
        self._hooks = acc  # the leaf keeps its accumulator (and so its hooks) alive
        if acc._post_hooks is None:
            acc._post_hooks = []
        acc._post_hooks.append(hook)
        return _Handle(acc._post_hooks, hook)

    def is_inference(self) -> bool:
        """True for a tensor made inside ``inference_mode`` (``Tensor.is_inference``)."""
        return type(self._version) is InferenceVersion

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
        # np.asarray(cpu_tensor) shares memory; np.array(t) (copy=True) copies
        a = self._backend.to_numpy(self.array)
        if dtype is not None and np.dtype(dtype) != a.dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    def to(self, *args, dtype=None, device=None, copy: bool = False, non_blocking: bool = False) -> "Tensor":
        """Convert to a device and/or dtype, differentiably (``Tensor.to``).

        ``t.to("cuda")``, ``t.to(am.float64)``, ``t.to(other_tensor)``, ``t.to("cpu", am.float64)``.
        ``non_blocking=True``: a host-to-GPU copy from pinned memory is queued on the current
        stream and overlaps GPU work (see :func:`avila_ml.ops.shape.to_device`).
        """
        for a in args:
            if isinstance(a, Tensor):
                dtype, device = a.dtype, a.device
            elif isinstance(a, (_dt.dtype, type, _dt._MissingDtype)) or (isinstance(a, str) and a in _dt._NAMES):
                dtype = a
            elif isinstance(a, (str, _device)):
                device = a
            elif a is not None:
                raise TypeError(f"to: unexpected argument {a!r}")
        out = self
        if device is not None:
            out = _ops.shape.to_device(out, device, non_blocking)
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

    def bfloat16(self) -> "Tensor":
        """Cast to bfloat16, differentiably (``Tensor.bfloat16``; needs ``ml_dtypes`` on the CPU)."""
        return self.to(_dt.bfloat16)

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

    # -- constructors like this one, formatting, interop (DLPack, CUDA array interface) ------
    def new_tensor(self, data, dtype=None, device=None, requires_grad: bool = False) -> "Tensor":
        """A new tensor holding a copy of ``data``, with this tensor's dtype and device unless
        given (``Tensor.new_tensor``).

        Example:
            >>> import avila_ml as am
            >>> am.zeros(2, dtype=am.float64).new_tensor([1, 2])
            tensor([1., 2.], dtype=avila_ml.float64)
        """
        from .factories import tensor
        return tensor(data, dtype=self.dtype if dtype is None else dtype,
                      device=self.device if device is None else device, requires_grad=requires_grad)

    def _new_filled(self, op, size, fill, dtype, device, requires_grad):
        from .factories import full, _shape
        return full(_shape(size), fill, dtype=self.dtype if dtype is None else dtype,
                    device=self.device if device is None else device, requires_grad=requires_grad)

    def new_zeros(self, *size, dtype=None, device=None, requires_grad: bool = False) -> "Tensor":
        """Zeros of ``size`` with this tensor's dtype and device unless given (``Tensor.new_zeros``).

        Example:
            >>> import avila_ml as am
            >>> am.ones(3, dtype=am.int64).new_zeros(2, 2)
            tensor([[0, 0],
                    [0, 0]])
        """
        return self._new_filled("new_zeros", size, 0, dtype, device, requires_grad)

    def new_ones(self, *size, dtype=None, device=None, requires_grad: bool = False) -> "Tensor":
        """Ones of ``size`` with this tensor's dtype and device unless given (``Tensor.new_ones``).

        Example:
            >>> import avila_ml as am
            >>> am.zeros(1).new_ones(2)
            tensor([1., 1.])
        """
        return self._new_filled("new_ones", size, 1, dtype, device, requires_grad)

    def new_empty(self, *size, dtype=None, device=None, requires_grad: bool = False) -> "Tensor":
        """A tensor of ``size`` with this tensor's dtype and device (``Tensor.new_empty``); its
        values are zeros here (PyTorch leaves them uninitialised).

        Example:
            >>> import avila_ml as am
            >>> am.zeros(1).new_empty(2, 3).shape
            (2, 3)
        """
        return self._new_filled("new_empty", size, 0, dtype, device, requires_grad)

    def new_full(self, size, fill_value, dtype=None, device=None, requires_grad: bool = False) -> "Tensor":
        """``size`` filled with ``fill_value``, this tensor's dtype and device unless given
        (``Tensor.new_full``).

        Example:
            >>> import avila_ml as am
            >>> am.zeros(1).new_full((2,), 7)
            tensor([7., 7.])
        """
        return self._new_filled("new_full", (size,), fill_value, dtype, device, requires_grad)

    def nelement(self) -> int:
        """The number of elements, as :meth:`numel` (``Tensor.nelement``)."""
        return int(self.array.size)

    def stride(self, dim: int | None = None):
        """Steps in elements between neighbours along each dim (``Tensor.stride``).

        Example:
            >>> import avila_ml as am
            >>> x = am.zeros(2, 3)
            >>> x.stride(), x.T.stride(), x.stride(-1)
            ((3, 1), (1, 3), 1)
        """
        st = tuple(s // self.array.itemsize for s in self.array.strides)
        return st if dim is None else st[_norm_dim(dim, self.array.ndim, "stride")]

    def storage_offset(self) -> int:
        """Offset in elements of the first element within its base allocation
        (``Tensor.storage_offset``); 0 for a tensor that owns its memory.

        Example:
            >>> import avila_ml as am
            >>> am.arange(6)[2:].storage_offset()
            2
        """
        base = self.array
        while getattr(base, "base", None) is not None and hasattr(base.base, "dtype"):
            base = base.base
        return int((self.data_ptr() - _pointer(base)) // self.array.itemsize) if base is not self.array else 0

    def data_ptr(self) -> int:
        """The address of the first element (``Tensor.data_ptr``).

        Example:
            >>> import avila_ml as am
            >>> x = am.zeros(4); x[1:].data_ptr() - x.data_ptr()
            4
        """
        return _pointer(self.array)

    def byte(self) -> "Tensor":
        """Convert to uint8 (``Tensor.byte``)."""
        return self.to(_dt.uint8)

    def char(self) -> "Tensor":
        """Convert to int8 (``Tensor.char``)."""
        return self.to(_dt.int8)

    def short(self) -> "Tensor":
        """Convert to int16 (``Tensor.short``)."""
        return self.to(_dt.int16)

    def __format__(self, spec: str) -> str:
        """``f"{t:.4f}"`` formats a 0-d tensor's value; other tensors accept only an empty
        spec (``Tensor.__format__``).

        Example:
            >>> import avila_ml as am
            >>> f"loss {am.tensor(0.123456):.3f}", f"{am.tensor(3)}"
            ('loss 0.123', '3')
        """
        if self.array.ndim == 0:
            return self.item().__format__(spec)
        if spec:
            raise TypeError(f"unsupported format string {spec!r} passed to Tensor.__format__ (only 0-d "
                            f"tensors take a format spec; this one has shape {tuple(self.shape)})")
        return str(self)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """Export the data through DLPack, zero-copy (``Tensor.__dlpack__``): consumers such as
        ``numpy.from_dlpack``, ``torch.from_dlpack``, ``cupy.from_dlpack`` or ``jax.dlpack``
        see the same memory. Tensors that require grad must be ``detach()`` ed first (as in
        PyTorch).

        Example:
            >>> import avila_ml as am, numpy as np
            >>> t = am.arange(3.0)
            >>> a = np.from_dlpack(t); a[0] = 9.0; t
            tensor([9., 1., 2.])
        """
        if self._requires_grad:
            raise RuntimeError("__dlpack__: can't export a tensor that requires grad; use tensor.detach()")
        kwargs = {}
        if stream is not None:
            kwargs["stream"] = stream
        if max_version is not None:
            kwargs["max_version"] = max_version
        if dl_device is not None:
            kwargs["dl_device"] = dl_device
        if copy is not None:
            kwargs["copy"] = copy
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple:
        """``(device type, index)`` in DLPack's codes: ``(1, 0)`` CPU, ``(2, n)`` CUDA."""
        return self.array.__dlpack_device__()

    @property
    def __cuda_array_interface__(self) -> dict:
        """The CUDA array interface of a CUDA tensor's memory (Numba, CuPy, PyTorch read it);
        a CPU tensor has none, so ``hasattr`` is False (as in PyTorch)."""
        if isinstance(self.array, np.ndarray):
            raise AttributeError("Can't get __cuda_array_interface__ on a CPU tensor; use .cuda() or "
                                 "__array_interface__ (np.asarray) instead")
        if self._requires_grad:
            raise RuntimeError("__cuda_array_interface__: can't export a tensor that requires grad; "
                               "use tensor.detach()")
        return self.array.__cuda_array_interface__

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
        # as PyTorch: unbind(0), one op whose backward stacks the slices' gradients (indexing
        # each row would scatter every row's gradient into its own zero tensor and sum them)
        from .ops.shape import unbind
        return iter(unbind(self, 0))

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
        if arr.dtype.name == "bfloat16":  # NumPy formats it as an opaque type; float32 holds it exactly
            arr = arr.astype(np.float32)
        opts = {}
        if _dt.np_is_floating(arr.dtype) and arr.size:
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

    # -- in-place updates ----------------------------------------------------------------------
    # PyTorch's semantics (autograd/inplace.py): when autograd tracks the tensor or an argument,
    # the op is recorded (the tensor takes the result's history; a view's base takes a
    # CopySlices node); otherwise a ufunc writes straight into the array, allocation-free
    # (optimizers and initialisers run here, under no_grad).
    def _check_inplace(self, op: str) -> None:
        """Refuse an in-place write PyTorch refuses (leaf that requires grad, ...)."""
        if _inplace.needs_graph(self, ()):
            _inplace.check_inplace_allowed(self, op)

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
        """In place ``self += alpha * other`` (``Tensor.add_``).

        Example:
            >>> import avila_ml as am
            >>> x = am.tensor([1.0, 2.0], requires_grad=True)
            >>> y = x * 2
            >>> y.add_(1)
            tensor([3., 5.], grad_fn=<AddBackward0>)
        """
        if _inplace.needs_graph(self, (other,)):
            if alpha == 1 and _ops.elementwise.writes_into(self, other):  # no result array, no copy back
                return _inplace.inplace_into(self, "add_", _ops.elementwise.Add.apply, other, True)
            return _inplace.inplace(self, "add_", _ops.elementwise.add, other, alpha=alpha)
        if alpha != 1:  # device check first: a CPU operand must not reach a CUDA ufunc
            other = self._other_array(other, "add_") * alpha
        return self._inplace("add_", self._backend.xp.add, other)

    def sub_(self, other, alpha=1) -> "Tensor":
        """In place ``self -= alpha * other`` (``Tensor.sub_``)."""
        if _inplace.needs_graph(self, (other,)):
            if alpha == 1 and _ops.elementwise.writes_into(self, other):  # (as add_)
                return _inplace.inplace_into(self, "sub_", _ops.elementwise.Sub.apply, other, True)
            return _inplace.inplace(self, "sub_", _ops.elementwise.sub, other, alpha=alpha)
        if alpha != 1:  # device check first: a CPU operand must not reach a CUDA ufunc
            other = self._other_array(other, "sub_") * alpha
        return self._inplace("sub_", self._backend.xp.subtract, other)

    def mul_(self, other) -> "Tensor":
        """In place ``self *= other`` (``Tensor.mul_``)."""
        if _inplace.needs_graph(self, (other,)):
            return _inplace.inplace(self, "mul_", _ops.elementwise.mul, other)
        return self._inplace("mul_", self._backend.xp.multiply, other)

    def div_(self, other, rounding_mode=None) -> "Tensor":
        """In place ``self /= other`` (``Tensor.div_``)."""
        if rounding_mode is not None or _inplace.needs_graph(self, (other,)):
            if _inplace.needs_graph(self, (other,)):
                return _inplace.inplace(self, "div_", _ops.elementwise.div, other, rounding_mode=rounding_mode)
            return _inplace.fast_inplace(self, "div_", _ops.elementwise.div, other, rounding_mode=rounding_mode)
        return self._inplace("div_", self._backend.xp.divide, other)

    def addcmul_(self, t1, t2, value=1) -> "Tensor":
        """In place ``self += value * t1 * t2`` (``Tensor.addcmul_``)."""
        if _inplace.needs_graph(self, (t1, t2)):
            return _inplace.inplace(self, "addcmul_", _ops.elementwise.addcmul, t1, t2, value=value)
        prod = self._other_array(t1, "addcmul_") * self._other_array(t2, "addcmul_")
        return self.add_(prod, alpha=value)

    def addcdiv_(self, t1, t2, value=1) -> "Tensor":
        """In place ``self += value * t1 / t2`` (``Tensor.addcdiv_``)."""
        if _inplace.needs_graph(self, (t1, t2)):
            return _inplace.inplace(self, "addcdiv_", _addcdiv, t1, t2, value=value)
        q = self._other_array(t1, "addcdiv_") / self._other_array(t2, "addcdiv_")
        return self.add_(q, alpha=value)

    def lerp_(self, end, weight) -> "Tensor":
        """In place ``self += weight * (end - self)`` (``Tensor.lerp_``)."""
        if _inplace.needs_graph(self, (end, weight)):
            return _inplace.inplace(self, "lerp_", _ops.elementwise.lerp, end, weight)
        e = self._other_array(end, "lerp_")
        return self.add_(e - self.array, alpha=weight)

    def sqrt_(self) -> "Tensor":
        """In place square root (``Tensor.sqrt_``)."""
        if _inplace.needs_graph(self, ()):
            return _inplace.inplace(self, "sqrt_", _ops.elementwise.sqrt)
        self._backend.xp.sqrt(self.array, out=self.array)
        return self._bump()

    def zero_(self) -> "Tensor":
        """Fill with zeros in place (``Tensor.zero_``)."""
        return self.fill_(0)

    def fill_(self, value) -> "Tensor":
        """Fill with ``value`` in place (``Tensor.fill_``)."""
        if _inplace.needs_graph(self, (value,)):
            return _inplace.inplace(self, "fill_", _ops.write.filled, value)
        self.array[...] = value.item() if isinstance(value, Tensor) else value
        return self._bump()

    def copy_(self, src, non_blocking: bool = False) -> "Tensor":
        """Copy ``src`` (broadcast, cast and moved as needed) into this tensor (``Tensor.copy_``).

        Recorded for autograd: the gradient flows to ``src`` (summed over broadcast dims).

        Example:
            >>> import avila_ml as am
            >>> out = am.zeros(2, 3)
            >>> w = am.tensor([1.0, 2.0], requires_grad=True)
            >>> out[:, 0:2].copy_(w * 3)
            tensor([[3., 6.],
                    [3., 6.]], grad_fn=<SliceBackward0>)
            >>> out.sum().backward(); w.grad
            tensor([6., 6.])
        """
        if _inplace.needs_graph(self, (src,)):
            return _inplace.inplace(self, "copy_", _ops.write.copied, src)
        self._check_inplace("copy_")
        xp = self._backend.xp
        if isinstance(src, Tensor):
            a = src.array
            if src.device != self.device:
                a = self._backend.from_numpy(src._backend.to_numpy(a))
        elif isinstance(src, (bool, int, float, complex)) or isinstance(src, xp.ndarray):
            a = src
        else:  # host data (NumPy, lists, PyTorch CPU tensors): one explicit copy to this device
            a = self._backend.from_numpy(np.asarray(src))
        shape = tuple(getattr(a, "shape", ()))
        try:
            xp.broadcast_shapes(shape, tuple(self.shape))
        except ValueError:
            raise RuntimeError(f"copy_: source of shape {shape} cannot be broadcast to the "
                               f"destination shape {tuple(self.shape)}") from None
        xp.copyto(self.array, a, casting="unsafe")
        return self._bump()

    def clamp_(self, min=None, max=None) -> "Tensor":
        """Clamp in place to ``[min, max]`` (``Tensor.clamp_``)."""
        if min is None and max is None:
            raise RuntimeError("clamp_: at least one of min or max must be given")
        if _inplace.needs_graph(self, (min, max)):
            return _inplace.inplace(self, "clamp_", _ops.elementwise.clamp, min, max)
        lo = self._other_array(min, "clamp_") if min is not None else None
        hi = self._other_array(max, "clamp_") if max is not None else None
        xp = self._backend.xp
        if lo is not None:
            xp.maximum(self.array, lo, out=self.array)
        if hi is not None:
            xp.minimum(self.array, hi, out=self.array)
        return self._bump()

    clip_ = clamp_

    def clamp_min_(self, min) -> "Tensor":
        """In place ``max(self, min)`` (``Tensor.clamp_min_``)."""
        return self.clamp_(min=min)

    def clamp_max_(self, max) -> "Tensor":
        """In place ``min(self, max)`` (``Tensor.clamp_max_``)."""
        return self.clamp_(max=max)

    def _fill_random(self, name: str, sample) -> "Tensor":
        """Write ``sample`` (an array shaped like this tensor) in place; recorded like ``fill_``
        (no gradient to the old value) when autograd tracks the tensor."""
        if _inplace.needs_graph(self, ()):
            return _inplace.inplace(self, name, _ops.write.filled, sample)
        self.array[...] = sample
        return self._bump()

    def uniform_(self, a: float = 0.0, b: float = 1.0, generator=None) -> "Tensor":
        """Fill with samples of U(a, b) in place (``Tensor.uniform_``)."""
        return self._fill_random("uniform_", self._backend.rand(self.array.shape, self.array.dtype) * (b - a) + a)

    def normal_(self, mean: float = 0.0, std: float = 1.0, generator=None) -> "Tensor":
        """Fill with samples of N(mean, std^2) in place (``Tensor.normal_``)."""
        return self._fill_random("normal_", self._backend.randn(self.array.shape, self.array.dtype) * std + mean)

    def bernoulli_(self, p=0.5, generator=None) -> "Tensor":
        """Fill with 0/1 samples, 1 with probability ``p`` (a number or a tensor of
        probabilities broadcast to this shape) (``Tensor.bernoulli_``).

        Example:
            >>> import avila_ml as am
            >>> _ = am.manual_seed(0)
            >>> x = am.empty(1000).bernoulli_(0.25)
            >>> sorted(set(x.tolist())), abs(x.mean().item() - 0.25) < 0.05
            ([0.0, 1.0], True)
        """
        prob = p.array if isinstance(p, Tensor) else p
        u = self._backend.rand(self.array.shape, np.float64 if self.array.dtype.kind != "f" else self.array.dtype)
        return self._fill_random("bernoulli_", (u < prob).astype(self.array.dtype))

    def exponential_(self, lambd: float = 1.0, generator=None) -> "Tensor":
        """Fill with samples of the exponential distribution of rate ``lambd``: ``-log(1 - U) / lambd``
        (``Tensor.exponential_``).

        Example:
            >>> import avila_ml as am
            >>> _ = am.manual_seed(0)
            >>> x = am.empty(4000, dtype=am.float64).exponential_(2.0)
            >>> bool(x.min() >= 0), abs(x.mean().item() - 0.5) < 0.05
            (True, True)
        """
        if lambd <= 0:
            raise RuntimeError(f"exponential_ expects lambd > 0.0, but found lambd={lambd}")
        xp = self._backend.xp
        u = self._backend.rand(self.array.shape, self.array.dtype)
        return self._fill_random("exponential_", -xp.log1p(-u) / lambd)

    def random_(self, from_=0, to=None, generator=None) -> "Tensor":
        """Fill with integers drawn uniformly from ``[from_, to - 1]``; ``random_(to)`` draws from
        ``[0, to - 1]``; without bounds, from ``[0, 2^mantissa]`` for floats or the dtype's
        range for integers (``Tensor.random_``).

        Example:
            >>> import avila_ml as am
            >>> _ = am.manual_seed(0)
            >>> x = am.zeros(500, dtype=am.int64).random_(3, 7)
            >>> sorted(set(x.tolist()))
            [3, 4, 5, 6]
        """
        if to is None and from_ != 0:
            from_, to = 0, from_
        if to is None:
            dt = self.array.dtype
            to = (1 << (np.finfo(dt).nmant + 1)) + 1 if dt.kind == "f" else (2 if dt == np.bool_ else int(np.iinfo(dt).max) + 1)
        if to <= from_:
            raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={from_} >= to={to}")
        r = self._backend.randint(int(from_), int(to), self.array.shape, np.int64)
        return self._fill_random("random_", r.astype(self.array.dtype))

    # -- in-place shape changes: the tensor becomes the view (PyTorch's t_, transpose_, ...) --
    def _reshape_inplace(self, name: str, fn, *args) -> "Tensor":
        if _inplace.needs_graph(self, ()):
            _inplace.check_inplace_allowed(self, name)
        r = fn(self, *args)
        own_view = self._view
        self.array = r.array
        self.grad_fn, self._output_nr = r.grad_fn, r._output_nr
        # a view stays a view of its base (with one more step); a base stays a base
        self._view = r._view if own_view is not None else None
        return self

    def t_(self) -> "Tensor":
        """Transpose a tensor of at most 2 dims in place (``Tensor.t_``)."""
        if self.ndim > 2:
            raise RuntimeError(f"t_() expects a tensor with <= 2 dimensions, but self is {self.ndim}D")
        return self._reshape_inplace("t_", _ops.shape.transpose, 0, -1) if self.ndim == 2 else self

    def transpose_(self, dim0: int, dim1: int) -> "Tensor":
        """Swap two dims in place (``Tensor.transpose_``)."""
        return self._reshape_inplace("transpose_", _ops.shape.transpose, dim0, dim1)

    def squeeze_(self, dim=None) -> "Tensor":
        """Remove size-1 dims in place (``Tensor.squeeze_``)."""
        return self._reshape_inplace("squeeze_", _ops.shape.squeeze, dim)

    def unsqueeze_(self, dim: int) -> "Tensor":
        """Insert a size-1 dim in place (``Tensor.unsqueeze_``).

        Example:
            >>> import avila_ml as am
            >>> x = am.zeros(2, 3)
            >>> x.unsqueeze_(0).shape
            (1, 2, 3)
        """
        return self._reshape_inplace("unsqueeze_", _ops.shape.unsqueeze, dim)

    swapaxes_ = transpose_

    def __iadd__(self, other):
        return self.add_(other)

    def __isub__(self, other):
        return self.sub_(other)

    def __imul__(self, other):
        return self.mul_(other)

    def __itruediv__(self, other):
        return self.div_(other)

    def __ipow__(self, other):
        return self.pow_(other)

    def __setitem__(self, key, value) -> None:
        """``self[key] = value``, recorded like PyTorch: through a view's ``copy_`` for basic
        keys (a ``CopySlices`` node on this tensor), ``index_put_`` for advanced ones."""
        if _inplace.needs_graph(self, (value,)):
            xp = self._backend.xp
            k = _ops.indexing.normalize_key(key, xp)
            if any(_ops.indexing._is_advanced(p) for p in k):
                _inplace.inplace(self, "index_put_", _ops.write.index_put, k, value)
            else:
                self[key].copy_(value)
            return
        self.array[_ops.indexing.normalize_key(key)] = value.array if isinstance(value, Tensor) else value
        self._bump()


def _addcdiv(input, t1, t2, value=1):
    return input + value * t1 / t2


def _pointer(a) -> int:
    """Address of an array's first element (NumPy or CuPy)."""
    if isinstance(a, np.ndarray):
        return int(a.__array_interface__["data"][0])
    return int(a.data.ptr)


def _rebuild(arr, dev, requires_grad):
    t = Tensor._wrap(get_backend(dev).from_numpy(arr) if dev != "cpu" else arr)
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
from .autograd import inplace as _inplace  # noqa: E402
