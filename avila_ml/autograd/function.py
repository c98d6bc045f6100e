"""``Function``: one differentiable operation, its forward and backward side by side.

``forward`` runs on raw ``xp`` arrays (fast, records nothing). ``backward`` receives the
output gradients as Tensors and is written with differentiable Tensor ops, so running it
with the graph enabled (``create_graph=True``) yields higher derivatives with no second
implementation (Chainer's ``FunctionNode``; ``torch.autograd.Function``).

A Function instance *is* the graph node: ``apply`` stores the edges to the inputs'
producers and the tensors it was asked to keep.
"""
from __future__ import annotations

import inspect
import traceback
import weakref

import numpy as np

from .._grad_state import InferenceVersion, anomaly as _anomaly
from .grad_mode import _state

__all__ = ["Function", "AccumulateGrad", "FunctionCtx", "once_differentiable"]


class Function:
    """Base class of differentiable operations (``torch.autograd.Function``).

    Subclasses implement ``forward(self, *args)`` on arrays (Tensor arguments arrive as their
    ``xp`` arrays; other arguments unchanged) returning an array or a tuple of arrays, and
    ``backward(self, *grad_outputs)`` on Tensors returning one gradient (or None) per Tensor
    argument, in order. In ``forward`` call ``self.save_inputs(i, ...)`` /
    ``self.save_outputs(j, ...)`` to keep tensors for ``backward`` (read them back with
    ``self.saved_inputs`` / ``self.saved_outputs``: in-place changes since are detected);
    ``self.non_differentiable`` lists output positions that get no gradient (indices, masks);
    ``is_view = True`` marks ops whose output aliases the first input's memory.

    PyTorch's form is also accepted, and is the one for user code: ``@staticmethod
    forward(ctx, *args)`` on Tensors and ``@staticmethod backward(ctx, *grads)`` returning one
    gradient per ``forward`` argument, with ``ctx.save_for_backward`` / ``ctx.saved_tensors``,
    ``ctx.needs_input_grad``, ``ctx.mark_dirty``, ``ctx.mark_non_differentiable``,
    ``ctx.set_materialize_grads`` (see ``autograd/custom_function.py``). The library's own ops
    use the array-level form above, which is faster.

    Example:
        >>> import avila_ml as am
        >>> class Square(am.autograd.Function):
        ...     def forward(self, x):
        ...         self.save_inputs(0)
        ...         return x * x
        ...     def backward(self, g):
        ...         (x,) = self.saved_inputs
        ...         return 2 * x * g
        >>> x = am.tensor([3.0], requires_grad=True)
        >>> Square.apply(x).sum().backward(); x.grad
        tensor([6.])
        >>> class Cube(am.autograd.Function):      # PyTorch's form
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         ctx.save_for_backward(x)
        ...         return x ** 3
        ...     @staticmethod
        ...     def backward(ctx, g):
        ...         (x,) = ctx.saved_tensors
        ...         return 3 * x ** 2 * g
        >>> x = am.tensor([2.0], requires_grad=True)
        >>> y = Cube.apply(x); y
        tensor([8.], grad_fn=<CubeBackward>)
        >>> (g,) = am.autograd.grad(y.sum(), x, create_graph=True)
        >>> g, am.autograd.grad(g.sum(), x)[0]     # second derivative through it
        (tensor([12.], grad_fn=<MulBackward0>), tensor([12.]))
    """

    non_differentiable = ()
    is_view = False  # output shares memory (and so the version counter) with input 0
    _materialize = True  # multi-output: outputs without a gradient get zeros in backward
    _ctx_style = False
    _recording = False
    _saved_in = None
    _saved_out = None
    _freed = False
    _pre_hooks = None
    _inputs = None

    def __init_subclass__(cls, **kwargs):
        # PyTorch's form (static forward(ctx, ...) / backward(ctx, ...)): a user Function.
        # Detected once per class; its apply and node class come from custom_function.py.
        super().__init_subclass__(**kwargs)
        if isinstance(inspect.getattr_static(cls, "forward", None), staticmethod):
            from . import custom_function as _cf
            cls._ctx_style = True
            cls._setup_context_style = "setup_context" in _own_attrs(cls)
            cls._backward_cls = type(f"{cls.__name__}Backward", (_cf.FunctionCtx,),
                                     {"_forward_cls": cls, "__module__": cls.__module__})
            cls.apply = classmethod(_cf.apply)

    @classmethod
    def apply(cls, *args):
        """Run the op on ``args`` and, if any Tensor argument requires grad, record the node."""
        # This is the hottest path of the library (every op of every step): one pass over
        # the arguments, no generator expressions, and a single-output fast path.
        state = _state
        if state.autocast is not None:  # an autocast region: cast args by the op policy
            args = state.autocast.cast_function_args(cls, args)
        node = _new_object(cls)
        arrays = []
        tensors = []
        requires = False
        for a in args:
            if type(a) is Tensor or isinstance(a, Tensor):
                v = a._view
                if v is not None and v[2] != a._version[0]:
                    _refresh_view(a)  # its base was written in place since: re-derive its graph
                arrays.append(a.array)
                tensors.append(a)
                if a._requires_grad:
                    requires = True
            else:
                arrays.append(a)
        recording = requires and state.enabled
        if recording:  # (class defaults False / None otherwise: two attribute writes saved)
            node._recording = True
            node._inputs = tensors
        out = _nvtx.call(cls, "forward", node.forward, *arrays) if _nvtx.active else node.forward(*arrays)
        if type(out) is not _ndarray and isinstance(out, _np_generic):
            out = _np_asarray(out)  # a NumPy ufunc on 0-d arrays gives a scalar: keep it an array
        wrap = Tensor._wrap
        if not recording:
            if type(out) is tuple:
                results = tuple([wrap(o) for o in out])
                if cls.is_view:
                    for r in results:
                        _mark_multi_view(r, tensors[0], cls)
                return results
            r = wrap(out)
            if cls.is_view:
                _mark_view(r, tensors[0], cls, args)
            return r
        node._inputs = None
        needs = []
        edges = []
        for t in tensors:
            if t._requires_grad:
                needs.append(True)
                fn = t.grad_fn
                edges.append((fn, t._output_nr) if fn is not None else _edge_of(t))  # (_edge_of inlined)
            else:
                needs.append(False)
                edges.append(None)
        node.needs_input_grad = tuple(needs)
        node._next = tuple(edges)
        if _anomaly.enabled:
            node._trace = traceback.format_stack()[:-1]
        if type(out) is not tuple:
            r = wrap(out, node, 0) if 0 not in node.non_differentiable else wrap(out)
            node._out_meta = (out.shape,)
            if cls.is_view:
                _mark_view(r, tensors[0], cls, args)
            saved = node._saved_out
            if saved is not None:
                node._saved_out = [(0, out, r._version, r._version[0])] if saved else []
            return r
        results = []
        nd = node.non_differentiable
        for i, o in enumerate(out):
            results.append(wrap(o) if i in nd else wrap(o, node, i))
        node._out_meta = tuple([o.shape for o in out])
        node._out_dtypes = tuple([o.dtype for o in out])
        node._out_xp = backend_of(out[0]).xp
        if cls.is_view:
            for r in results:
                _mark_multi_view(r, tensors[0], cls)
        if node._saved_out is not None:
            node._saved_out = [(i, out[i], results[i]._version, results[i]._version[0]) for i in node._saved_out]
        return tuple(results)

    def forward(self, *args):  # pragma: no cover - documented interface
        raise TypeError(f"{type(self).__name__} must define forward()")

    def backward(self, *grad_outputs):  # pragma: no cover - documented interface
        raise TypeError(f"{type(self).__name__} does not define backward()")

    # -- saving tensors ---------------------------------------------------------------------
    def save_inputs(self, *positions: int) -> None:
        """Keep the Tensor arguments at ``positions`` (among Tensor arguments) for backward."""
        if self._recording:
            ts = self._inputs
            saved = []
            for p in positions:
                t = ts[p]
                vbox = t._version
                if type(vbox) is not list and type(vbox) is InferenceVersion:
                    raise RuntimeError(_INFERENCE_SAVE_MSG)
                saved.append((t, vbox[0]))
            self._saved_in = saved

    def save_outputs(self, *positions: int) -> None:
        """Keep the outputs at ``positions`` for backward (no reference cycle is created)."""
        if self._recording:
            self._saved_out = list(positions)

    @property
    def saved_inputs(self) -> tuple:
        if self._freed:
            raise RuntimeError(_FREED_MSG.format(self._name()))
        out = []
        for t, v in self._saved_in or ():
            if t._version[0] != v:
                raise RuntimeError(_version_error(self, t.array, t.grad_fn, t._output_nr, v, t._version[0]))
            out.append(t)
        return tuple(out)

    def _checked_saved_out(self):
        """The saved outputs' records ``(index, array, version box, saved version)``, after the
        checks that they were neither freed nor modified in place since."""
        if self._freed:
            raise RuntimeError(_FREED_MSG.format(self._name()))
        saved = self._saved_out or ()
        for i, arr, vbox, v in saved:
            if vbox[0] != v:
                raise RuntimeError(_version_error(self, arr, self, i, v, vbox[0]))
        return saved

    @property
    def saved_outputs(self) -> tuple:
        out = []
        for i, arr, vbox, _ in self._checked_saved_out():
            # A fresh handle on the output: same array, same producer, no cycle through self.
            t = Tensor._wrap(arr, self, i)
            t._version = vbox
            out.append(t)
        return tuple(out)

    def saved_output_arrays(self) -> tuple:
        """The arrays of ``saved_outputs``, with the same in-place check but no Tensor handles:
        for backward fast paths that run array code when no graph is being recorded (no
        PyTorch name; ``ctx.saved_tensors`` without the autograd wrapping).

        Example:
            >>> import avila_ml as am
            >>> y = am.tensor([0.0], requires_grad=True).exp()
            >>> y.grad_fn.saved_output_arrays()
            (array([1.], dtype=float32),)
        """
        return tuple(arr for _, arr, _, _ in self._checked_saved_out())

    def release(self) -> None:
        """Drop saved tensors after a backward without ``retain_graph``."""
        self._saved_in = None
        self._saved_out = None
        self._freed = True

    # -- display ----------------------------------------------------------------------------
    @classmethod
    def _name(cls) -> str:
        return f"{cls.__name__}Backward0"

    def name(self) -> str:
        """The node's name as PyTorch prints it, e.g. ``'MulBackward0'``."""
        return self._name()

    @property
    def next_functions(self) -> tuple:
        """Edges to the producers of this node's inputs (``grad_fn.next_functions``)."""
        return tuple(e if e is not None else (None, 0) for e in self._next)

    def register_prehook(self, output_nr: int, hook) -> None:
        if self._pre_hooks is None:
            self._pre_hooks = {}
        self._pre_hooks.setdefault(output_nr, []).append(hook)

    def __repr__(self) -> str:
        return f"<{self._name()} object at {id(self):#x}>"


_FREED_MSG = (
    "{}: trying to backward through the graph a second time (or to read saved tensors after "
    "they were freed). Saved tensors are freed after the first backward; pass "
    "retain_graph=True to the first backward() or autograd.grad() call to keep them."
)
def _own_attrs(cls) -> set:
    """Names defined by ``cls`` or its bases below ``Function``."""
    names = set()
    for k in cls.__mro__:
        if k is Function:
            break
        names.update(vars(k))
    return names


_INFERENCE_SAVE_MSG = (
    "Inference tensors cannot be saved for backward. Please do not use Tensors created in "
    "inference mode in computation tracked by autograd. To work around this, you can make a "
    "clone to get a normal tensor and use it in autograd, or use `avila_ml.no_grad()` instead "
    "of `avila_ml.inference_mode()`."
)


def _type_name(arr) -> str:
    """PyTorch's legacy tensor type name, e.g. ``avila_ml.DoubleTensor`` (in error messages)."""
    from .. import dtypes as _dt
    names = {"float32": "Float", "float64": "Double", "float16": "Half", "bfloat16": "BFloat16",
             "int64": "Long", "int32": "Int", "int16": "Short", "int8": "Char", "uint8": "Byte",
             "bool": "Bool", "complex64": "ComplexFloat", "complex128": "ComplexDouble"}
    name = names.get(_dt.from_numpy_dtype(arr.dtype).name, str(arr.dtype))
    cuda = "" if type(arr).__module__.startswith("numpy") else "cuda."
    return f"avila_ml.{cuda}{name}Tensor"


def _version_error(consumer, arr, producer, output_nr, expected, actual) -> str:
    """PyTorch's message for a saved tensor that was modified in place since it was saved."""
    which = f", which is output {output_nr} of {producer._name()}," if producer is not None else ""
    return (
        "one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: [{_type_name(arr)} {list(arr.shape)}]{which} is at version {actual}; "
        f"expected version {expected} instead. Hint: {consumer._name()} saved it for its "
        "backward; use an out-of-place op there, or clone() the tensor before modifying it."
    )


class AccumulateGrad:
    """The graph node that adds incoming gradients into a leaf tensor's ``.grad``.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([1.0, 2.0], requires_grad=True)
        >>> y = x * 3
        >>> type(y.grad_fn.next_functions[0][0]).__name__
        'AccumulateGrad'
        >>> y.sum().backward(); x.grad
        tensor([3., 3.])
    """

    __slots__ = ("variable", "_pre_hooks", "_post_hooks", "__weakref__")
    _next = ()
    _freed = False

    def __init__(self, variable):
        self.variable = variable
        self._pre_hooks = None
        self._post_hooks = None  # called with the leaf after .grad is updated

    @staticmethod
    def _name() -> str:
        return "AccumulateGrad"

    name = _name

    @property
    def next_functions(self) -> tuple:
        return ()

    def __repr__(self) -> str:
        return f"<AccumulateGrad object at {id(self):#x}>"


_ndarray, _np_generic, _np_asarray = np.ndarray, np.generic, np.asarray
_new_object = object.__new__  # nodes are made without running __init__ (apply is the constructor)


def _edge_of(t):
    """The (node, output index) that receives the gradient of tensor ``t``."""
    fn = t.grad_fn
    if fn is not None:
        return (fn, t._output_nr)
    acc = t._grad_accumulator
    acc = acc() if acc is not None else None
    if acc is None:
        acc = AccumulateGrad(t)
        t._grad_accumulator = weakref.ref(acc)
    return (acc, 0)


from ..backends import backend_of, nvtx as _nvtx  # noqa: E402
from ..tensor import Tensor  # noqa: E402  (tensor.py imports this module first)
from .inplace import _mark_view, _mark_multi_view, _refresh_view  # noqa: E402
