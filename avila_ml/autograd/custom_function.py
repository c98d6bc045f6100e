"""User-defined autograd Functions in PyTorch's form (``ctx`` and static methods).

``class F(Function)`` with ``@staticmethod forward(ctx, *args)`` and ``@staticmethod
backward(ctx, *grads)`` (or ``forward(*args)`` plus ``setup_context(ctx, inputs, output)``) is
detected when the class is defined; ``F.apply`` then runs ``forward`` on Tensors with grad
mode off and records one graph node, an instance of ``F._backward_cls`` (``FBackward``) that
is also the ``ctx``. The node plugs into the same engine as the library's own ops, so user
Functions compose with them and with ``create_graph=True`` (a backward written with Tensor
ops is differentiable again).

The library's ops keep the array-level form (``forward(self, *arrays)``): no Tensor wrapping
or grad-mode switch inside each op, which the per-op overhead benchmark measures.
"""
from __future__ import annotations

import functools
import traceback

from .._grad_state import InferenceVersion, anomaly as _anomaly, state as _state
from .function import Function, _edge_of, _version_error, _INFERENCE_SAVE_MSG, _FREED_MSG

__all__ = ["FunctionCtx", "once_differentiable"]


class FunctionCtx(Function):
    """The ``ctx`` of a PyTorch-style Function; also its graph node (``torch.autograd.function.FunctionCtx``).

    Methods: ``save_for_backward(*tensors)`` / ``saved_tensors`` (version-checked),
    ``needs_input_grad`` (one bool per ``forward`` argument), ``mark_non_differentiable``,
    ``mark_dirty`` (inputs ``forward`` modified in place), ``set_materialize_grads``. Any other
    attribute may be set on it to pass values to ``backward``.

    Math: for ``y = x * k`` with a constant ``k`` kept on the ctx, ``dL/dx = k * dL/dy``.

    Example:
        >>> import avila_ml as am
        >>> class Scale(am.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x, k):
        ...         ctx.k = k  # any value for backward
        ...         ctx.save_for_backward(x)
        ...         return x * k
        ...     @staticmethod
        ...     def backward(ctx, g):
        ...         (x,) = ctx.saved_tensors
        ...         return g * ctx.k, None  # no gradient for k
        >>> x = am.tensor([1.0, 2.0], requires_grad=True)
        >>> y = Scale.apply(x, 3.0)
        >>> isinstance(y.grad_fn, am.autograd.function.FunctionCtx), y.grad_fn.needs_input_grad
        (True, (True, False))
        >>> y.sum().backward(); x.grad
        tensor([3., 3.])
    """

    _forward_cls = None
    _materialize = True

    @classmethod
    def _name(cls) -> str:
        return cls.__name__

    # -- the ctx API ------------------------------------------------------------------------
    def save_for_backward(self, *tensors) -> None:
        """Keep tensors (inputs, outputs or None) for ``backward``; read with ``saved_tensors``."""
        for t in tensors:
            if t is not None and not isinstance(t, _Tensor):
                raise TypeError(
                    f"save_for_backward can only save variables, but argument {tensors.index(t)} is "
                    f"of type {type(t).__name__}"
                )
            if t is not None and type(t._version) is InferenceVersion:
                raise RuntimeError(_INFERENCE_SAVE_MSG)
        self._to_save = tensors

    @property
    def saved_tensors(self) -> tuple:
        """The tensors given to ``save_for_backward``, checked for in-place changes since."""
        if self._freed:
            raise RuntimeError(_FREED_MSG.format(self._name()))
        out = []
        for entry in getattr(self, "_saved", None) or ():
            if entry is None:
                out.append(None)
            elif entry[0] == "in":
                _, t, ver = entry
                if t._version[0] != ver:
                    raise RuntimeError(_version_error(self, t.array, t.grad_fn, t._output_nr, ver, t._version[0]))
                out.append(t)
            else:
                _, i, arr, vbox, ver, differentiable = entry
                if vbox[0] != ver:
                    raise RuntimeError(_version_error(self, arr, self, i, ver, vbox[0]))
                t = _Tensor._wrap(arr, self, i) if differentiable else _Tensor._wrap(arr)
                t._version = vbox
                out.append(t)
        if not out and getattr(self, "_to_save", None):
            return tuple(self._to_save)  # read inside forward, before apply finished
        return tuple(out)

    saved_variables = saved_tensors

    def mark_non_differentiable(self, *outputs) -> None:
        """These outputs get no gradient (indices, masks); ``backward`` still receives a zero
        tensor for them."""
        self._non_diff = tuple(outputs)

    def mark_dirty(self, *tensors) -> None:
        """These inputs were modified in place by ``forward`` (and must be returned)."""
        self._dirty = tuple(tensors)

    def set_materialize_grads(self, value: bool) -> None:
        """With ``False``, ``backward`` receives ``None`` (not zeros) for outputs that got no
        gradient."""
        self._materialize = bool(value)

    # -- the node side ----------------------------------------------------------------------
    def backward(self, *grads):
        fn = self._forward_cls
        res = fn.backward(self, *grads)
        if not isinstance(res, tuple):
            res = (res,)
        n = self._n_args
        if len(res) < n or any(r is not None for r in res[n:]):
            raise RuntimeError(
                f"function {self._name()} returned an incorrect number of gradients (expected {n}, "
                f"got {len(res)})"
            )
        out = []
        for p in self._tensor_pos:
            g = res[p]
            if g is not None and not self.needs_input_grad[p]:
                g = None  # PyTorch ignores a gradient for an input that does not need one
            if g is not None and not isinstance(g, _Tensor):
                raise TypeError(
                    f"function {self._name()} returned a gradient of type {type(g).__name__} for "
                    f"input {p}; expected a Tensor or None"
                )
            out.append(g)
        return tuple(out)

    def release(self) -> None:
        self._saved = None
        self._to_save = None
        self._freed = True


def apply(cls, *args, **kwargs):
    """Run a PyTorch-style Function: forward on Tensors (grad mode off), one node recorded."""
    node = cls._backward_cls.__new__(cls._backward_cls)
    node._dirty = node._non_diff = ()
    node._to_save = None
    tensor_pos = []
    needs = []
    edges = []
    requires = False
    for p, a in enumerate(args):
        if isinstance(a, _Tensor):
            v = a._view
            if v is not None and v[2] != a._version[0]:
                _refresh_view(a)
            tensor_pos.append(p)
            needs.append(a._requires_grad)
            # the edge to the input's history *before* forward (mark_dirty rebases it)
            edges.append(_edge_of(a) if a._requires_grad else None)
            requires = requires or a._requires_grad
        else:
            needs.append(False)
    recording = requires and _state.enabled
    node.needs_input_grad = tuple(needs) if recording else (False,) * len(args)
    node._n_args = len(args)
    node._tensor_pos = tuple(tensor_pos)
    prev = _state.enabled
    _state.enabled = False
    try:
        if cls._setup_context_style:
            out = cls.forward(*args, **kwargs)
            cls.setup_context(node, args, out)
        else:
            out = cls.forward(node, *args, **kwargs)
    finally:
        _state.enabled = prev
    is_tuple = isinstance(out, tuple)
    outs = out if is_tuple else (out,)
    if not recording:
        for t in node._dirty:
            _check_dirty(t, args, cls)
        return out
    node._next = tuple(edges)
    if _anomaly.enabled:
        node._trace = traceback.format_stack()[:-1]
    non_diff = {id(t) for t in node._non_diff}
    dirty = {id(t) for t in node._dirty}
    for t in node._dirty:
        _check_dirty(t, args, cls)
    input_ids = {id(a) for a in args if isinstance(a, _Tensor)}
    results, meta, dtypes = [], [], []
    xp = None
    for i, o in enumerate(outs):
        if not isinstance(o, _Tensor):
            results.append(o)
            meta.append(())
            dtypes.append(None)
            continue
        meta.append(o.array.shape)
        dtypes.append(o.array.dtype)
        xp = xp or o._backend.xp
        differentiable = id(o) not in non_diff and o.array.dtype.kind in "fc"
        if id(o) in dirty:
            if differentiable:
                from .inplace import check_inplace_allowed, rebase_history
                check_inplace_allowed(o, f"{cls.__name__}.apply")
                rebase_history(o, _Tensor._wrap(o.array, node, i))
            results.append(o)
        elif id(o) in input_ids:
            # an input returned unchanged: a fresh alias carries the new history
            r = _Tensor._wrap(o.array, node, i) if differentiable else _Tensor._wrap(o.array)
            r._version = o._version
            results.append(r)
        else:
            if differentiable:
                o.grad_fn, o._output_nr, o._requires_grad = node, i, True
            results.append(o)
    node._out_meta = tuple(meta)
    node._out_dtypes = tuple(dtypes)
    node._out_xp = xp
    saved = []
    out_index = {id(o): i for i, o in enumerate(results) if isinstance(o, _Tensor)}
    for t in node._to_save or ():
        if t is None:
            saved.append(None)
        elif id(t) in out_index and id(t) not in input_ids:
            i = out_index[id(t)]
            # an output: kept as (array, version) so the node does not hold itself alive
            saved.append(("out", i, t.array, t._version, t._version[0], t.grad_fn is node))
        else:
            saved.append(("in", t, t._version[0]))
    node._saved = saved
    node._to_save = None
    if is_tuple:
        return tuple(results)
    return results[0]


def _check_dirty(t, args, cls) -> None:
    if not any(t is a for a in args):
        raise RuntimeError(
            f"{cls.__name__}: mark_dirty was given a tensor that is not an input of forward"
        )


class _DelayedError(Function):
    """Stands after a ``once_differentiable`` backward run with create_graph: differentiating
    it again raises."""

    def forward(self, x, msg, *deps):
        self.msg = msg
        return x

    def backward(self, g):
        raise RuntimeError(self.msg)


def once_differentiable(fn):
    """Decorate a ``backward`` that is not itself differentiable (it may use non-Tensor math):
    it runs with grad mode off, and differentiating its result again raises
    (``torch.autograd.function.once_differentiable``).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.autograd.function import once_differentiable
        >>> class Cube(am.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         ctx.save_for_backward(x)
        ...         return x ** 3
        ...     @staticmethod
        ...     @once_differentiable
        ...     def backward(ctx, g):
        ...         (x,) = ctx.saved_tensors
        ...         return g * 3 * x ** 2
        >>> x = am.tensor(2.0, requires_grad=True)
        >>> Cube.apply(x).backward(); x.grad
        tensor(12.)
    """
    @functools.wraps(fn)
    def wrapper(ctx, *args):
        prev = _state.enabled
        _state.enabled = False
        try:
            outputs = fn(ctx, *args)
        finally:
            _state.enabled = prev
        if not prev:
            return outputs
        # as PyTorch: only the incoming gradients count (a result computed from saved inputs
        # alone has no graph)
        deps = [a for a in args if isinstance(a, _Tensor) and a._requires_grad]
        if not deps:
            return outputs
        msg = ("trying to differentiate twice a function that was marked with "
               "@once_differentiable")
        single = not isinstance(outputs, tuple)
        outs = (outputs,) if single else outputs
        wrapped = []
        for o in outs:
            if isinstance(o, _Tensor) and o.array.dtype.kind in "fc":
                o = _DelayedError.apply(_Tensor._wrap(o.array), msg, *deps)
            wrapped.append(o)
        return wrapped[0] if single else tuple(wrapped)

    return wrapper


from ..tensor import Tensor as _Tensor  # noqa: E402
from .inplace import _refresh_view  # noqa: E402
