"""In-place operations inside the graph: views, version counters, CopySlices (PyTorch's semantics).

Three facts carry everything here:

1. A view (basic slicing, ``view``, ``transpose``/``permute``, ``expand``, ``squeeze``/``unsqueeze``,
   ``narrow``, ``split``/``chunk``/``unbind``) shares its base's memory *and* version counter,
   and remembers its base and the chain of view ops that reproduces it from the base
   (``Tensor._view = [base, chain, version_seen, made_without_grad]``).
2. ``t.op_(...)`` is the out-of-place op applied to ``t``'s current value, written back into
   ``t``'s memory; ``t`` then takes the out-of-place result's graph history ("rebase"). If ``t``
   is a view, its base takes a ``CopySlices`` node instead: the gradient of the base flows to
   the base's old history with the view's region zeroed, and to the written value through the
   view's region; the view's own history is re-derived from the new base. Views of the same
   base made earlier re-derive theirs when next used (their version is stale).
3. Every in-place write bumps the shared version counter; a backward that saved a tensor checks
   its version and raises PyTorch's "modified by an inplace operation" error.

One generic function does the work for every in-place op: ``inplace(t, name, fn, *args)``
where ``fn`` is the out-of-place op. When autograd has nothing to record (grad mode off, or
no tensor involved requires grad) the caller's allocation-free ``fast`` path runs instead.
See CONTRIBUTING.md ("In-place ops") for how to add ``op_`` for a new op in one line.
"""
from __future__ import annotations

from .._grad_state import InferenceVersion, state as _state
from ..backends import backend_of
from .function import Function, _edge_of

__all__ = ["inplace", "inplace_into", "inplace_method", "rebase_history", "CopySlices"]


# ------------------------------------------------------------------------------ view records
def _mark_view(r, src, cls, args) -> None:
    """Record that ``r = cls.apply(src, *args[1:])`` is a view of ``src`` (and of its base)."""
    r._version = src._version
    sv = src._view
    step = (cls, args[1:])
    if sv is None:
        r._view = [src, (step,), src._version[0], not _state.enabled]
    else:
        chain = sv[1]
        r._view = [sv[0], chain if type(chain) is str else chain + (step,), src._version[0],
                   sv[3] or not _state.enabled]


def _mark_multi_view(r, src, cls) -> None:
    """Outputs of a multi-output view op (split, chunk, unbind): views that may not be
    written in place while autograd records (PyTorch forbids it too)."""
    r._version = src._version
    sv = src._view
    base = src if sv is None else sv[0]
    r._view = [base, cls._name(), src._version[0], not _state.enabled]


def replay(t, chain, strict: bool = True):
    """Apply a view chain to tensor ``t``. ``strict=False`` (on gradients) lets a ``view`` step
    copy when ``t``'s strides do not allow a view (a gradient need not alias anything)."""
    from ..ops.shape import View, Reshape
    for cls, extra in chain:
        if cls is View and not strict:
            cls = Reshape
        t = cls.apply(t, *extra)
    return t


def _replay_array(a, chain):
    """The same chain on a raw array (used to address a view's region inside a gradient)."""
    for cls, extra in chain:
        a = cls.__new__(cls).forward(a, *extra)
    return a


def _refresh_view(t) -> None:
    """Re-derive a view's graph history from its base after the base changed in place."""
    if not _state.enabled:
        return
    v = t._view
    v[2] = t._version[0]
    base = v[0]
    if type(v[1]) is str or v[3] or not base._requires_grad:
        return
    new = replay(base, v[1])
    t.grad_fn, t._output_nr, t._requires_grad = new.grad_fn, new._output_nr, True


# ------------------------------------------------------------------------------ graph nodes
class ViewFill(Function):
    """``g`` with the region of a view zeroed: the gradient that reaches a base's old value
    after an in-place write through that view. Linear and self-adjoint."""

    def forward(self, g, chain, layout):
        self.chain, self.layout = chain, layout
        out = backend_of(g).xp.empty_like(layout)  # the base's layout, so the chain replays as views
        out[...] = g
        _replay_array(out, chain)[...] = 0
        return out

    def backward(self, gg):
        return ViewFill.apply(gg, self.chain, self.layout)


class CopySlices(Function):
    """The node a base takes after an in-place op on one of its views (``CopySlices``).

    Inputs: the base's old value and the new value of the view's region. Backward: the base's
    gradient with the region zeroed goes to the old value; the region of the gradient goes to
    the written value. Built by ``rebase_history``; it never runs a forward (the write
    already happened in the base's memory).
    """

    @classmethod
    def _name(cls) -> str:
        return "CopySlices"

    def backward(self, g):
        need_base, need_value = self.needs_input_grad
        gb = ViewFill.apply(g, self.chain, self.layout) if need_base else None
        gv = replay(g, self.chain, strict=False) if need_value else None
        return gb, gv


def _record(cls, inputs, out_shape, **attrs):
    """A node of type ``cls`` with edges to ``inputs`` (Tensors or None) and no forward run."""
    node = cls.__new__(cls)
    needs, edges = [], []
    for t in inputs:
        if t is not None and t._requires_grad:
            needs.append(True)
            edges.append(_edge_of(t))
        else:
            needs.append(False)
            edges.append(None)
    node.needs_input_grad = tuple(needs)
    node._next = tuple(edges)
    node._out_meta = (out_shape,)
    node.__dict__.update(attrs)
    return node


def rebase_history(t, result) -> None:
    """Give ``t`` (whose memory now holds ``result``'s value) ``result``'s graph history.

    For a view, its base takes a ``CopySlices`` node and the view's history is re-derived
    from the base (PyTorch's ``rebase_history``). A ``retain_grad`` hook moves to the new node.
    """
    _rebase(t, result)
    if t._retains_grad and type(t._hooks) is tuple:
        node, nr, hook = t._hooks
        hooks = node._pre_hooks.get(nr, []) if node._pre_hooks else []
        if hook in hooks:
            hooks.remove(hook)
        if t.grad_fn is not None:
            t.grad_fn.register_prehook(t._output_nr, hook)
            t._hooks = (t.grad_fn, t._output_nr, hook)


def _rebase(t, result) -> None:
    v = t._view
    if v is None:
        t.grad_fn = result.grad_fn
        t._output_nr = result._output_nr
        t._requires_grad = result._requires_grad
        return
    base, chain = v[0], v[1]
    node = _record(CopySlices, (base, result if result._requires_grad else None), base.array.shape,
                   chain=chain, layout=base.array)
    base.grad_fn, base._output_nr, base._requires_grad = node, 0, True
    new = replay(base, chain)
    t.grad_fn, t._output_nr, t._requires_grad = new.grad_fn, new._output_nr, True
    v[2] = t._version[0]


# ------------------------------------------------------------------------------ the mechanism
_LEAF_MSG = "a leaf Variable that requires grad is being used in an in-place operation."
_VIEW_LEAF_MSG = "a view of a leaf Variable that requires grad is being used in an in-place operation."
_INFERENCE_MSG = (
    "Inplace update to inference tensor outside InferenceMode is not allowed.You can make a "
    "clone to get a normal tensor before doing inplace update.See "
    "https://github.com/pytorch/rfcs/pull/17 for more details."
)


def needs_graph(t, args) -> bool:
    """Whether an in-place op on ``t`` with ``args`` must be recorded (else: the fast path)."""
    if type(t._version) is InferenceVersion and not _state.inference:
        raise RuntimeError(_INFERENCE_MSG)
    if not _state.enabled:
        return False
    if t._requires_grad:
        return True
    for a in args:
        if isinstance(a, _Tensor) and a._requires_grad:
            return True
    v = t._view
    return v is not None and v[0]._requires_grad


def check_inplace_allowed(t, name: str) -> None:
    """PyTorch's refusals: a leaf that requires grad, a view of one, a multi-output view, a
    view made under no_grad written with grad mode on."""
    v = t._view
    if v is None:
        if t.grad_fn is None and t._requires_grad:
            raise RuntimeError(f"{name}: {_LEAF_MSG}")
        return
    base = v[0]
    if type(v[1]) is str:
        raise RuntimeError(
            f"{name}: Output of {v[1]} is a view and is being modified inplace. This view is the "
            "output of a function that returns multiple views. Such functions do not allow the "
            "output views to be modified inplace. You should replace the inplace operation by an "
            "out-of-place one."
        )
    if base.grad_fn is None and base._requires_grad:
        raise RuntimeError(f"{name}: {_VIEW_LEAF_MSG}")
    if v[3] and base._requires_grad:
        raise RuntimeError(
            f"{name}: A view was created in no_grad mode and is being modified inplace with grad "
            "mode enabled. Given that this use case is ambiguous and error-prone, it is forbidden. "
            "You can clarify your code by moving both the view and the inplace either both inside "
            "the no_grad block (if you don't want the inplace to be tracked) or both outside (if "
            "you want the inplace to be tracked)."
        )


def write_into(t, array, name: str) -> None:
    """Copy ``array`` into ``t``'s memory, with PyTorch's shape/dtype/aliasing errors."""
    dst = t.array
    if array.shape != dst.shape:
        raise RuntimeError(
            f"{name}: output with shape {list(dst.shape)} doesn't match the broadcast shape "
            f"{list(array.shape)}"
        )
    xp = backend_of(dst).xp
    if array.dtype != dst.dtype and not xp.can_cast(array.dtype, dst.dtype, casting="same_kind"):
        from .. import dtypes as _dt
        raise RuntimeError(
            f"{name}: result type {_dt.from_numpy_dtype(array.dtype)} can't be cast to the desired "
            f"output type {_dt.from_numpy_dtype(dst.dtype)}"
        )
    check_writeable(t, name)
    xp.copyto(dst, array, casting="unsafe")


def check_writeable(t, name: str) -> None:
    """PyTorch's refusal to write into a tensor whose elements share memory (an ``expand``ed
    view: read-only here), raised before any element is written (PyTorch checks the same
    "internal overlap" in ``assert_no_internal_overlap``).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.autograd.inplace import check_writeable
        >>> check_writeable(am.zeros(2), "relu_")        # an ordinary tensor: nothing raised
        >>> try:
        ...     check_writeable(am.zeros(1, 2).expand(3, 2), "relu_")
        ... except RuntimeError as e:
        ...     print(str(e)[:44])
        relu_: unsupported operation: more than one
    """
    if not getattr(t.array.flags, "writeable", True):
        raise RuntimeError(
            f"{name}: unsupported operation: more than one element of the written-to tensor refers "
            "to a single memory location. Please clone() the tensor before performing the operation."
        )


def _protect_saved(result, old, t, args) -> None:
    """Nodes just recorded that saved ``old`` (an alias of ``t``'s memory, about to be
    overwritten) get a copy of its value instead; the op's own saved output becomes ``t``.

    Only the nodes ``fn`` just made are visited: the walk stops at the histories of the
    tensors passed in (and at leaves), so its cost does not grow with the graph.
    """
    stop = set()
    for a in (old, *args):
        if isinstance(a, _Tensor):
            if a.grad_fn is not None:
                stop.add(id(a.grad_fn))
    top = result.grad_fn
    if top is None:
        return
    copy = None
    stack, seen = [top], {id(top)}
    while stack:
        node = stack.pop()
        saved = getattr(node, "_saved_in", None)
        if saved:
            for k, (s, ver) in enumerate(saved):
                if s is old:
                    if copy is None:
                        copy = _Tensor._wrap(old.array.copy(), old.grad_fn, old._output_nr)
                        copy._requires_grad = old._requires_grad
                    saved[k] = (copy, 0)
        for e in getattr(node, "_next", ()):
            if e is None:
                continue
            child = e[0]
            k = id(child)
            if k in seen or k in stop or not hasattr(child, "_saved_in"):
                continue  # AccumulateGrad, or the old history of the written tensor
            seen.add(k)
            stack.append(child)


def _redirect_saved_output(result, t) -> None:
    """The op's saved output is now ``t``'s memory at its new version: a later in-place write
    to ``t`` is detected (and the result's own buffer can be freed)."""
    top = result.grad_fn
    so = top._saved_out if top is not None else None
    if so:
        for k, (i, arr, vbox, ver) in enumerate(so):
            if i == result._output_nr and arr is result.array and arr.dtype == t.array.dtype:
                so[k] = (i, t.array, t._version, t._version[0])


def inplace(t, name: str, fn, *args, **kwargs):
    """Run ``fn(t, *args, **kwargs)`` (an out-of-place op) and write the result into ``t``,
    recording it in the graph as PyTorch records ``t.op_(...)``. Returns ``t``."""
    old = _stand_in(t, name)
    result = fn(old, *args, **kwargs)
    if not isinstance(result, _Tensor):
        raise TypeError(f"{name}: the out-of-place op returned {type(result).__name__}, expected a Tensor")
    _protect_saved(result, old, t, tuple(args) + tuple(kwargs.values()))
    write_into(t, result.array, name)
    return _written(t, old, result)


def _stand_in(t, name: str):
    """The refusals before an in-place write (``check_inplace_allowed``), a stale view
    refreshed, and a stand-in for t's current value: same memory and history, its own version
    counter (what the op records as its input)."""
    check_inplace_allowed(t, name)
    v = t._view
    if v is not None and v[2] != t._version[0]:
        _refresh_view(t)
    old = _Tensor._wrap(t.array, t.grad_fn, t._output_nr)
    old._requires_grad = t._requires_grad
    return old


def _written(t, old, result):
    """After the write into ``t``: both version counters bumped (anything still holding the
    stand-in, or a view of it, sees the write), the op's saved output redirected to ``t`` and
    t's history rebased onto the op. Returns ``t``."""
    t._version[0] += 1
    old._version[0] += 1
    _redirect_saved_output(result, t)
    rebase_history(t, result)
    return t


def inplace_into(t, name: str, fn, *args):
    """``inplace`` for an op that writes its result straight into its first argument's memory
    (``fn(t, *args)`` returns a Tensor around ``t``'s own array): no fresh result array and no
    copy back, as PyTorch's ``relu_`` / ``threshold_``. Returns ``t``.

    The contract that makes the early write safe: the node ``fn`` records saves its *output*,
    never its input (a ReLU's gradient from its result's sign), so there is no saved input to
    protect. Everything else is ``inplace``'s: the leaf / view / inference refusals before the
    write, the version bump (a node that saved ``t`` earlier refuses its backward), the saved
    output redirected to ``t`` (a later write to ``t`` is detected), and the history rebased
    (``CopySlices`` on the base of a view).

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([-1.0, 2.0], requires_grad=True)
        >>> h = x * 1
        >>> am.nn.functional.relu_(h) is h, h.grad_fn.name()
        (True, 'ReLUBackward0')
    """
    check_inplace_allowed(t, name)
    check_writeable(t, name)
    old = _stand_in(t, name)
    result = fn(old, *args)
    if result.array is not t.array:
        raise TypeError(f"{name}: the op did not write into its input's memory (inplace_into's contract)")
    return _written(t, old, result)


def fast_inplace(t, name: str, fn, *args, **kwargs):
    """The no-graph path for ops without an allocation-free kernel: compute, then copy in."""
    prev = _state.enabled
    _state.enabled = False
    try:
        result = fn(t, *args, **kwargs)
    finally:
        _state.enabled = prev
    write_into(t, result.array, name)
    t._version[0] += 1
    return t


def inplace_method(name: str, fn, fast=None):
    """Build ``Tensor.<name>`` (e.g. ``exp_``) from the out-of-place ``fn`` (e.g. ``ops.exp``).

    ``fast(t, *args, **kwargs)``, if given, does the update without autograd (allocation-free
    ufunc ``out=``); otherwise ``fn`` runs with grad off and its result is copied in.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([1.0, 4.0], requires_grad=True)
        >>> y = x * 1
        >>> y.sqrt_()                      # recorded: y's history is now SqrtBackward0
        tensor([1., 2.], grad_fn=<SqrtBackward0>)
        >>> y.sum().backward(); x.grad
        tensor([0.5000, 0.2500])
    """
    def method(self, *args, **kwargs):
        if needs_graph(self, args) or (kwargs and _any_grad(kwargs.values())):
            return inplace(self, name, fn, *args, **kwargs)
        if fast is not None:
            fast(self, *args, **kwargs)
            self._version[0] += 1
            return self
        return fast_inplace(self, name, fn, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = (f"In-place ``{name[:-1]}``: the result is written into this tensor and recorded "
                      f"for autograd like PyTorch's ``Tensor.{name}``.")
    return method


def _any_grad(values) -> bool:
    if not _state.enabled:
        return False
    for a in values:
        if isinstance(a, _Tensor) and a._requires_grad:
            return True
    return False


from ..tensor import Tensor as _Tensor  # noqa: E402
