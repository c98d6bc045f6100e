"""``Function``: one differentiable operation, its forward and backward side by side.

``forward`` runs on raw ``xp`` arrays (fast, records nothing). ``backward`` receives the
output gradients as Tensors and is written with differentiable Tensor ops, so running it
with the graph enabled (``create_graph=True``) yields higher derivatives with no second
implementation (Chainer's ``FunctionNode``; ``torch.autograd.Function``).

A Function instance *is* the graph node: ``apply`` stores the edges to the inputs'
producers and the tensors it was asked to keep.
"""
from __future__ import annotations

import weakref

from .grad_mode import _state

__all__ = ["Function", "AccumulateGrad"]


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
    """

    non_differentiable = ()
    is_view = False  # output shares memory (and so the version counter) with input 0
    _recording = False
    _saved_in = None
    _saved_out = None
    _freed = False
    _pre_hooks = None

    @classmethod
    def apply(cls, *args):
        """Run the op on ``args`` and, if any Tensor argument requires grad, record the node."""
        # This is the hottest path of the library (every op of every step): one pass over
        # the arguments, no generator expressions, and a single-output fast path.
        node = cls.__new__(cls)
        arrays = []
        tensors = []
        requires = False
        for a in args:
            if type(a) is Tensor or isinstance(a, Tensor):
                arrays.append(a.array)
                tensors.append(a)
                if a._requires_grad:
                    requires = True
            else:
                arrays.append(a)
        recording = requires and _state.enabled
        node._recording = recording
        node._inputs = tensors
        out = _nvtx.call(cls, "forward", node.forward, *arrays) if _nvtx.active else node.forward(*arrays)
        node._inputs = None
        wrap = Tensor._wrap
        if not recording:
            if type(out) is tuple:
                return tuple([wrap(o) for o in out])
            r = wrap(out)
            if cls.is_view:
                r._version = tensors[0]._version
            return r
        needs = []
        edges = []
        for t in tensors:
            if t._requires_grad:
                needs.append(True)
                edges.append(_edge_of(t))
            else:
                needs.append(False)
                edges.append(None)
        node.needs_input_grad = tuple(needs)
        node._next = tuple(edges)
        if type(out) is not tuple:
            r = wrap(out, node, 0) if 0 not in node.non_differentiable else wrap(out)
            node._out_meta = (out.shape,)
            if cls.is_view:
                r._version = tensors[0]._version
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
            results[0]._version = tensors[0]._version
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
            self._saved_in = [(ts[p], ts[p]._version[0]) for p in positions]

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
                raise RuntimeError(_VERSION_MSG.format(self._name(), tuple(t.shape), v, t._version[0]))
            out.append(t)
        return tuple(out)

    @property
    def saved_outputs(self) -> tuple:
        if self._freed:
            raise RuntimeError(_FREED_MSG.format(self._name()))
        out = []
        for i, arr, vbox, v in self._saved_out or ():
            if vbox[0] != v:
                raise RuntimeError(_VERSION_MSG.format(self._name(), tuple(arr.shape), v, vbox[0]))
            # A fresh handle on the output: same array, same producer, no cycle through self.
            t = Tensor._wrap(arr, self, i)
            t._version = vbox
            out.append(t)
        return tuple(out)

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
_VERSION_MSG = (
    "{}: a tensor of shape {} saved for backward was modified by an in-place operation "
    "(it was at version {}, it is now at version {}); gradients would be wrong. "
    "Use an out-of-place op, or clone() the tensor before modifying it."
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

    __slots__ = ("variable", "_pre_hooks", "__weakref__")
    _next = ()
    _freed = False

    def __init__(self, variable):
        self.variable = variable
        self._pre_hooks = None

    @staticmethod
    def _name() -> str:
        return "AccumulateGrad"

    name = _name

    @property
    def next_functions(self) -> tuple:
        return ()

    def __repr__(self) -> str:
        return f"<AccumulateGrad object at {id(self):#x}>"


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
