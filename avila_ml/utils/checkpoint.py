"""Activation checkpointing: trade compute for memory (``torch.utils.checkpoint``).

A checkpointed block keeps only its inputs and outputs. Its inner activations (the tensors
its ops save for backward) are dropped after the forward and recomputed when the backward
reaches the block, so a stack of ``n`` blocks keeps ``n`` block outputs plus one block's
activations instead of every activation.

How it is built on our engine: the forward runs ``fn`` once with the graph on, walks the small
graph it made to find the leaves it used (parameters, inputs), keeps the output arrays and
drops the graph. One :class:`CheckpointFunction` node then stands for the whole block, with
edges to the block's Tensor inputs and to those leaves. Its backward restores the random
state, reruns ``fn`` with the graph on and differentiates the rerun with
:func:`avila_ml.autograd.grad`, so gradients equal the plain run's (dropout included).
"""
from __future__ import annotations

import warnings

from .. import backends as _backends
from ..autograd.function import AccumulateGrad, Function
from ..autograd.grad_mode import enable_grad, no_grad, _state
from ..tensor import Tensor

__all__ = ["checkpoint", "checkpoint_sequential", "CheckpointFunction"]


def _rng_states():
    """The states of the CPU generator and of every CUDA generator created so far."""
    states = [(_backends._cpu, _backends._cpu.get_rng_state())]
    for b in _backends._cuda.values():
        states.append((b, b.get_rng_state()))
    return states


def _set_rng_states(states) -> None:
    for b, s in states:
        b.set_rng_state(s)


def _leaves_of(outputs, skip_ids):
    """Leaf tensors that require grad reached from ``outputs``' graph, in first-seen order.

    ``skip_ids`` holds ids of the block's (detached) input tensors: those are wired to the
    block's real inputs instead.
    """
    leaves = []
    seen = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    for t in outputs:  # an output that is itself a leaf (fn returned a parameter)
        if t.grad_fn is None and t._requires_grad and id(t) not in skip_ids and id(t) not in seen:
            seen.add(id(t))
            leaves.append(t)
    visited = set()
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        for e in node._next:
            if e is None:
                continue
            child = e[0]
            if isinstance(child, AccumulateGrad):
                v = child.variable
                if id(v) not in skip_ids and id(v) not in seen:
                    seen.add(id(v))
                    leaves.append(v)
            elif id(child) not in visited:
                stack.append(child)
    return leaves


def _detached(args):
    """Fresh leaves with the same arrays (the recomputed graph stops at them)."""
    out = []
    for a in args:
        if isinstance(a, Tensor):
            d = Tensor._wrap(a.array)
            if a._requires_grad:
                d._requires_grad = True
            out.append(d)
        else:
            out.append(a)
    return out


def _as_outputs(result, op):
    """``fn``'s result as (tensor outputs, rebuild function)."""
    if isinstance(result, Tensor):
        return [result], lambda ts: ts[0]
    if isinstance(result, (tuple, list)):
        pos = [i for i, r in enumerate(result) if isinstance(r, Tensor)]
        kind = type(result)

        def rebuild(ts):
            items = list(result)
            for i, t in zip(pos, ts):
                items[i] = t
            return kind(items) if kind in (tuple, list) else kind(*items)

        return [result[i] for i in pos], rebuild
    raise TypeError(
        f"{op}: the checkpointed function must return a Tensor or a tuple/list holding Tensors, "
        f"got {type(result).__name__}"
    )


class CheckpointFunction(Function):
    """The graph node of one checkpointed block (no PyTorch public name: PyTorch hooks saved
    tensors instead). Its Tensor arguments are the block's inputs followed by the leaves the
    block uses; ``forward`` hands back the output arrays computed beforehand.

    Math: backward returns ``(dL/dx_i, dL/dw_j) = VJP of fn`` at the saved inputs, evaluated on
    a recomputation of ``fn`` under the forward's random state.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.utils.checkpoint import checkpoint
        >>> x = am.tensor([1.0, 2.0], requires_grad=True)
        >>> checkpoint(lambda t: t * t, x).grad_fn.name()
        'CheckpointFunctionBackward0'
    """

    def forward(self, *arrays):
        out = self._ckpt_out_arrays
        return tuple(out) if len(out) > 1 else out[0]

    def backward(self, *grads):
        fn, args, kwargs = self._ckpt_fn, self._ckpt_args, self._ckpt_kwargs
        n_in = self._ckpt_n_in
        create_graph = _state.enabled  # the engine runs backward with the graph on iff create_graph
        real = list(self._ckpt_tensors)
        leaves = real[n_in:]
        if create_graph:
            # rerun on the real inputs so the gradients' graph reaches them (double backward)
            rerun_args = _refill(args, real[:n_in])
        else:
            rerun_args = _detached(_refill(args, real[:n_in]))
        rerun_inputs = [a for a in rerun_args if isinstance(a, Tensor)]
        before = _rng_states() if self._ckpt_rng is not None else None
        # the rerun sees the forward's autocast state (backward itself runs with autocast off)
        ac_before = (_state.autocast, _state.autocast_outer)
        try:
            if self._ckpt_rng is not None:
                _set_rng_states(self._ckpt_rng)
            _state.autocast, _state.autocast_outer = self._ckpt_autocast
            with enable_grad():
                outs, _ = _as_outputs(fn(*rerun_args, **kwargs), "checkpoint")
        finally:
            _state.autocast, _state.autocast_outer = ac_before
            if before is not None:
                _set_rng_states(before)
        targets = []
        wanted = []
        for t, need in zip(rerun_inputs + leaves, self.needs_input_grad):
            if need:
                wanted.append(len(targets))
                targets.append(t)
        roots, root_grads = [], []
        for o, g in zip(outs, grads):
            if o._requires_grad:
                roots.append(o)
                root_grads.append(g)
        result = [None] * len(self.needs_input_grad)
        if targets and roots:
            from ..autograd import grad as _grad
            # retain_graph: a non-leaf tensor the function captured from outside (not an
            # argument) is differentiated through here down to its leaves; its own graph belongs
            # to the caller and must stay usable. The rerun's graph dies with this frame anyway.
            try:
                got = _grad(roots, targets, root_grads, retain_graph=True, create_graph=create_graph,
                            allow_unused=True)
            except RuntimeError as e:
                if "second time" not in str(e):
                    raise
                raise RuntimeError(
                    "checkpoint: the checkpointed function uses a tensor with a grad_fn that it did "
                    "not receive as an argument (captured from outside), and the graph behind that "
                    "tensor was already freed by this backward. Pass such tensors to checkpoint() as "
                    "arguments (parameters and other leaves may stay captured)."
                ) from e
            k = 0
            for i, need in enumerate(self.needs_input_grad):
                if need:
                    result[i] = got[k]
                    k += 1
        return tuple(result) if len(result) > 1 else result[0]

    def release(self) -> None:
        super().release()
        self._ckpt_args = self._ckpt_kwargs = self._ckpt_tensors = None


def _refill(args, tensors):
    it = iter(tensors)
    return [next(it) if isinstance(a, Tensor) else a for a in args]


def checkpoint(function, *args, use_reentrant: bool = False, preserve_rng_state: bool = True,
               **kwargs):
    """Run ``function(*args, **kwargs)`` without keeping its inner activations; recompute them
    in backward (``torch.utils.checkpoint.checkpoint``).

    Math: the result and every gradient are those of ``function`` itself; memory for the
    block's saved activations is paid only while its backward runs.

    The recomputation runs under the autocast state of the forward (PyTorch does the same).
    Tensors the function captures from outside must be leaves (parameters); a captured tensor
    with a ``grad_fn`` should be passed as an argument instead (when its graph is freed before
    the block's backward runs, backward raises a ``RuntimeError`` saying so). Layers with
    running statistics (BatchNorm) update them twice, once per forward, as in PyTorch.
    ``preserve_rng_state=True`` saves the CPU and CUDA generators' states before the forward
    and restores them around the recomputation, so dropout draws the same masks and the
    gradients equal the plain run's; the global generators are left as the plain run leaves
    them. ``create_graph=True`` works (double backward through the block).

    ``use_reentrant=True`` follows PyTorch's reentrant variant where its behaviour is visible:
    ``kwargs`` are refused (``ValueError``) and when no Tensor argument requires grad a warning
    is given and the output carries no graph (parameters inside get no gradient). Unlike
    PyTorch's reentrant variant, ``autograd.grad`` and ``backward(inputs=...)`` work.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.utils.checkpoint import checkpoint
        >>> lin = am.nn.Linear(3, 2)
        >>> x = am.ones(4, 3, requires_grad=True)
        >>> checkpoint(lambda t: lin(t).tanh(), x).sum().backward()
        >>> lin.weight.grad.shape, x.grad.shape
        ((2, 3), (4, 3))
    """
    if not callable(function):
        raise TypeError(f"checkpoint: function must be callable, got {type(function).__name__}")
    if use_reentrant:
        if kwargs:
            raise ValueError(
                "checkpoint: keyword arguments to the function are only supported with "
                f"use_reentrant=False (got {sorted(kwargs)})"
            )
        if _state.enabled and not any(isinstance(a, Tensor) and a._requires_grad for a in args):
            warnings.warn("checkpoint (use_reentrant=True): none of the inputs have "
                          "requires_grad=True; gradients will be None", stacklevel=2)
            with no_grad():
                return function(*args)
    if not _state.enabled:  # nothing will be differentiated: plain call
        return function(*args, **kwargs)

    rng = _rng_states() if preserve_rng_state else None
    inputs = [a for a in args if isinstance(a, Tensor)]
    run_args = _detached(args)
    run_inputs = [a for a in run_args if isinstance(a, Tensor)]
    with enable_grad():
        result = function(*run_args, **kwargs)
    outs, rebuild = _as_outputs(result, "checkpoint")
    leaves = _leaves_of(outs, {id(t) for t in run_inputs})
    out_arrays = [o.array for o in outs]
    differentiable = any(o._requires_grad for o in outs)
    del result, outs  # the block's graph (its saved activations) goes here
    if not differentiable:
        return rebuild([Tensor._wrap(a) for a in out_arrays])

    node_cls = CheckpointFunction
    # the node needs its context before apply() runs forward: a per-call subclass would be
    # slow, so the context travels through a one-shot class attribute read in forward
    node_cls._ckpt_out_arrays = out_arrays
    try:
        res = node_cls.apply(*inputs, *leaves)
    finally:
        node_cls._ckpt_out_arrays = None
    res = list(res) if isinstance(res, tuple) else [res]
    node = res[0].grad_fn
    node._ckpt_out_arrays = None
    node._ckpt_fn = function
    node._ckpt_args = list(args)
    node._ckpt_kwargs = kwargs
    node._ckpt_tensors = inputs + leaves
    node._ckpt_n_in = len(inputs)
    node._ckpt_rng = rng
    node._ckpt_autocast = (_state.autocast, _state.autocast_outer)
    return rebuild(res)


def checkpoint_sequential(functions, segments: int, input, use_reentrant: bool = False, **kwargs):
    """Run a sequence of modules/functions in ``segments`` chunks, checkpointing every chunk
    but the last (``torch.utils.checkpoint.checkpoint_sequential``).

    Math: ``f_n(...f_2(f_1(x)))``; only the ``segments`` chunk boundaries are kept, each
    chunk's activations are recomputed in backward. The last chunk runs normally, as in
    PyTorch (its activations are needed at once by the backward).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.utils.checkpoint import checkpoint_sequential
        >>> am.manual_seed(0)
        >>> net = am.nn.Sequential(am.nn.Linear(4, 4), am.nn.Tanh(), am.nn.Linear(4, 1))
        >>> x = am.randn(2, 4, requires_grad=True)
        >>> y = checkpoint_sequential(net, 2, x)
        >>> bool((y - net(x)).abs().max() < 1e-6)
        True
    """
    if isinstance(functions, dict):
        functions = list(functions.values())
    elif hasattr(functions, "children") and not isinstance(functions, (list, tuple)):
        functions = list(functions.children())
    else:
        functions = list(functions)
    n = len(functions)
    if not isinstance(segments, int) or isinstance(segments, bool) or segments < 1:
        raise ValueError(f"checkpoint_sequential: segments must be a positive int, got {segments!r}")
    if n == 0:
        return input
    segments = min(segments, n)
    size = n // segments

    def run(start, end):
        def chunk(x):
            for f in functions[start:end + 1]:
                x = f(x)
            return x
        return chunk

    end = -1
    for start in range(0, size * (segments - 1), size):
        end = start + size - 1
        input = checkpoint(run(start, end), input, use_reentrant=use_reentrant, **kwargs)
    return run(end + 1, n - 1)(input)
