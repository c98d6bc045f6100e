"""The backward pass: an iterative topological walk of the recorded graph.

1. A depth-first walk (an explicit stack, never recursion, so a chain of 100,000 ops is
   fine) counts, for each node, how many edges lead into it.
2. Nodes whose count reaches zero are ready: their output gradients are complete. Each
   ready node runs its ``backward`` and adds the results into its inputs' buffers.
3. ``AccumulateGrad`` nodes add into the leaves' ``.grad`` — or, for ``autograd.grad``,
   the gradients of the requested inputs are captured instead and ``.grad`` is untouched.
"""
from __future__ import annotations

import numpy as np

from .._grad_state import anomaly as _anomaly
from .function import AccumulateGrad, _edge_of
from .grad_mode import _state
from .inplace import _refresh_view
from ..backends import backend_of, nvtx as _nvtx
from ..cpu_accel import _native

_BIG = _native._SPLIT_MIN  # gradients from this size are summed by the compiled kernel (asked inline)

__all__ = ["run_backward", "queue_callback"]

# callbacks to run once the current backward pass has finished (DistributedDataParallel waits
# for its gradient all-reduces there); see queue_callback
_final_callbacks: list = []
_depth = [0]


def queue_callback(fn) -> None:
    """Run ``fn()`` when the backward pass now running ends (after every ``.grad`` is written);
    PyTorch's ``Variable._execution_engine.queue_callback``. Only valid during a backward.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.autograd.engine import queue_callback
        >>> w = am.ones(1, requires_grad=True)
        >>> h = w.register_hook(lambda g: queue_callback(lambda: print("backward done")))
        >>> (2 * w).sum().backward()
        backward done
    """
    if not _depth[0]:
        raise RuntimeError("queue_callback: no backward pass is running")
    _final_callbacks.append(fn)


def _check_grad(node, i, g, child, idx):
    """A backward that returns a gradient of the wrong shape is a bug in that op: say which."""
    if isinstance(child, AccumulateGrad):
        shape = child.variable.array.shape
    else:
        shape = child._out_meta[idx]
    if g.array.shape != shape:
        raise RuntimeError(
            f"{node._name()} returned a gradient of shape {tuple(g.array.shape)} for its input "
            f"{i}, expected {tuple(shape)}"
        )


def _whole_view(a, base) -> bool:
    """Whether ``a`` is a view of ALL of ``base`` with base's own shape and strides, base owning
    its memory (e.g. the transpose back of a weight gradient computed in the weight's own
    layout): the leaf then takes ``base`` itself, whose id is recorded like a taken array's.
    Host arrays only (a device gradient view is copied, as before)."""
    return (type(a) is np.ndarray and type(base) is np.ndarray and base.base is None and base.flags.owndata
            and base.shape == a.shape and base.strides == a.strides and _native.addr(base) == _native.addr(a))


def _accumulate_leaf(leaf, g, create_graph, handed_out=None):
    """Add ``g`` into ``leaf.grad``.

    ``.grad`` must own its memory: optimizers and ``clip_grad_norm_`` update it in place. A
    gradient array is taken as is only when it is fresh — writable, contiguous, not a view (or a
    view of all of a fresh array, :func:`_whole_view`), and not already given to another leaf
    or passed in by the caller in this backward
    (``handed_out`` holds those ids; ``x + y`` hands the same array to both leaves). Otherwise
    it is copied, as PyTorch's AccumulateGrad clones a gradient it cannot steal.
    """
    if leaf.grad is None:
        if create_graph:
            leaf.grad = g
            return
        a = g.array
        base = a.base
        if base is not None and not _whole_view(a, base):
            base = False  # a part of another array, or in another layout: never taken
        if (handed_out is None or base is False or id(a) in handed_out
                or (base is not None and id(base) in handed_out)
                or not getattr(a.flags, "writeable", True) or not a.flags.c_contiguous):
            a, base = a.copy(), None
        if base is not None:
            a = base  # (the same elements in the same layout, an owner)
        if handed_out is not None:
            handed_out.add(id(a))
        leaf.grad = Tensor._wrap(a)
    elif create_graph:
        leaf.grad = leaf.grad + g
    else:
        old, new = leaf.grad.array, g.array
        fresh = (_native.binary("add", old, new) if type(old) is np.ndarray and old.size >= _BIG and old.dtype == new.dtype
                 else None)
        leaf.grad = Tensor._wrap(old + new if fresh is None else fresh)


def _add_into(old, g, owned):
    """``old + g`` for two gradients of one buffer slot (no graph recorded): in place into
    ``old`` when the engine made it (see ``owned`` in run_backward), else a fresh sum that the
    engine then owns."""
    a, b = old.array, g.array
    if a.dtype != b.dtype or type(a) is not type(b):
        return old + g  # PyTorch's promotion, through the op
    if id(a) in owned:
        if type(a) is np.ndarray:
            if a.size < _BIG or _native.binary("add", a, b, a) is None:  # (large arrays: on the CPU threads)
                np.add(a, b, out=a)
        else:
            backend_of(a).xp.add(a, b, out=a)
        return old
    if type(a) is np.ndarray:
        fresh = _native.binary("add", a, b) if a.size >= _BIG else None
        s = Tensor._wrap(fresh if fresh is not None else np.add(a, b) if a.ndim else np.asarray(a + b))  # (0-d: NumPy gives a scalar)
    else:
        s = old + g
    owned.add(id(s.array))
    return s


def run_backward(roots, root_grads, retain_graph, create_graph, inputs=None, allow_unused=False):
    """Propagate ``root_grads`` from ``roots`` through the graph.

    With ``inputs`` (a sequence of tensors), return their gradients in order and leave
    ``.grad`` alone (``torch.autograd.grad``); without, accumulate into leaves' ``.grad``.
    """
    root_edges = []
    for t in roots:
        v = t._view
        if v is not None and v[2] != t._version[0]:
            _refresh_view(t)  # a view whose base was written in place since it was made
        if not t._requires_grad:
            raise RuntimeError(
                "element of the tensors to differentiate does not require grad and has no grad_fn"
            )
        root_edges.append(_edge_of(t))

    # 1. count incoming edges per node (iterative DFS)
    deps: dict = {}
    seen = set()
    stack = []
    for node, _ in root_edges:
        if id(node) not in seen:
            seen.add(id(node))
            stack.append(node)
    while stack:
        node = stack.pop()
        if node._freed:  # (AccumulateGrad._freed is always False)
            raise RuntimeError(
                f"{node._name()}: trying to backward through the graph a second time (or to "
                "directly access saved tensors after they have already been freed). Saved "
                "tensors are freed after the first backward; specify retain_graph=True in the "
                "first backward() or autograd.grad() call if you need to backward twice."
            )
        for e in node._next:
            if e is None:
                continue
            child = e[0]
            k = id(child)
            deps[k] = deps.get(k, 0) + 1
            if k not in seen:
                seen.add(k)
                stack.append(child)

    # capture targets for autograd.grad: (id(node), output index) -> position
    capture = None
    results = None
    needed = None
    if inputs is not None:
        capture = {}
        for pos, t in enumerate(inputs):
            if not t._requires_grad:
                raise RuntimeError(f"autograd.grad: input {pos} does not require grad")
            node, idx = _edge_of(t)
            capture[(id(node), idx)] = pos
        results = [None] * len(inputs)
        needed = _needed_nodes([n for n, _ in root_edges], {k for k, _ in capture})

    # 2. seed the buffers
    buffers: dict = {}
    nodes: dict = {}
    for (node, idx), g in zip(root_edges, root_grads):
        k = id(node)
        buf = buffers.get(k)
        if buf is None:
            n_out = 1 if isinstance(node, AccumulateGrad) else len(node._out_meta)
            buf = buffers[k] = [None] * n_out
            nodes[k] = node
        buf[idx] = g if buf[idx] is None else buf[idx] + g
    ready = [nodes[k] for k in buffers if deps.get(k, 0) == 0]

    # ids of gradient arrays that leaves must not take without a copy (see _accumulate_leaf);
    # the caller's own root gradients are among them
    handed_out = {id(g.array) for g in root_grads}
    # ids of the arrays this engine made by summing two contributions that still wait in a
    # buffer: nothing else has seen them, so a third contribution is added in place (no fresh
    # allocation). An id leaves the set when its node takes its gradients.
    owned = set()
    prev_mode = _state.enabled
    _state.enabled = create_graph
    prev_autocast = _state.autocast
    _state.autocast = None  # backward ops follow their forward's dtypes (as PyTorch's engine)
    acc_type = AccumulateGrad
    _depth[0] += 1
    try:
        # the per-node loop: kept free of helper calls and generator expressions (it runs
        # once per recorded op); _check_grad is inlined as a shape comparison
        while ready:
            node = ready.pop()
            k = id(node)
            grads = buffers.pop(k, None)
            if grads is None:
                grads = [None]
            elif owned:
                for g in grads:
                    if g is not None:
                        owned.discard(id(g.array))
            hooks = node._pre_hooks
            if hooks:
                for idx, fns in hooks.items():
                    for fn in list(fns):
                        if grads[idx] is not None:
                            new = fn(grads[idx])
                            if new is not None:
                                grads[idx] = new
            if capture is not None:
                for idx, g in enumerate(grads):
                    pos = capture.get((k, idx))
                    if pos is not None:
                        results[pos] = g
            if type(node) is acc_type:
                if capture is None and grads[0] is not None:
                    _accumulate_leaf(node.variable, grads[0], create_graph, handed_out)
                    if node._post_hooks:
                        for fn in list(node._post_hooks):
                            fn(node.variable)
                continue
            next_edges = node._next
            if len(grads) == 1:
                nothing = grads[0] is None
            else:
                nothing = True
                for g in grads:
                    if g is not None:
                        nothing = False
                        break
            if nothing or (needed is not None and k not in needed):
                # nothing to propagate (or nothing captured lies below): pass None along so
                # the dependency counts below still reach zero
                in_grads = (None,) * len(next_edges)
            else:
                if len(grads) > 1 and node._materialize:
                    for idx, g in enumerate(grads):
                        if g is None:
                            grads[idx] = _zeros_for(node, idx)
                if _anomaly.enabled:
                    in_grads = _run_checked(node, grads)
                elif _nvtx.active:
                    in_grads = _nvtx.call(type(node), "backward", node.backward, *grads)
                else:
                    in_grads = node.backward(*grads)
                if type(in_grads) is not tuple:
                    in_grads = (in_grads,)
                if len(in_grads) != len(next_edges):
                    raise RuntimeError(
                        f"{node._name()} returned {len(in_grads)} gradients, expected {len(next_edges)}"
                    )
                if not retain_graph:
                    node.release()
            i = -1
            for e, g in zip(next_edges, in_grads):
                i += 1
                if e is None:
                    continue
                child, idx = e
                ck = id(child)
                if g is not None:
                    if type(g) is not Tensor and not isinstance(g, Tensor):
                        g = Tensor._wrap(g)
                    if type(child) is acc_type:
                        if g.array.shape != child.variable.array.shape:
                            _check_grad(node, i, g, child, idx)
                        buf = buffers.get(ck)
                        if buf is None:
                            buf = buffers[ck] = [None]
                    else:
                        meta = child._out_meta
                        if g.array.shape != meta[idx]:
                            _check_grad(node, i, g, child, idx)
                        buf = buffers.get(ck)
                        if buf is None:
                            buf = buffers[ck] = [None] * len(meta)
                    old = buf[idx]
                    if old is None:
                        buf[idx] = g
                    elif create_graph:
                        buf[idx] = old + g
                    else:
                        buf[idx] = _add_into(old, g, owned)
                left = deps[ck] - 1
                deps[ck] = left
                if left == 0:
                    ready.append(child)
    finally:
        _state.enabled = prev_mode
        _state.autocast = prev_autocast
        _depth[0] -= 1
        callbacks = []
        if not _depth[0]:
            callbacks, _final_callbacks[:] = list(_final_callbacks), []
    for fn in callbacks:  # the outermost backward ran to its end: run what was queued
        fn()

    if results is not None:
        for pos, g in enumerate(results):
            if g is None and not allow_unused:
                raise RuntimeError(
                    f"autograd.grad: input {pos} was not used in the graph of the outputs; "
                    "pass allow_unused=True to get None for it"
                )
        return tuple(results)
    return None


def _zeros_for(node, idx):
    """Zero gradient for an output of a multi-output node that received none (None for a
    non-tensor output of a user Function)."""
    dtype = node._out_dtypes[idx]
    if dtype is None:
        return None
    return Tensor._wrap(node._out_xp.zeros(node._out_meta[idx], dtype=dtype))


def _run_checked(node, grads):
    """``node.backward`` under anomaly detection: a NaN in its results, or an error inside it,
    is reported with the traceback of the forward call that created the node."""
    import warnings
    trace = "".join(getattr(node, "_trace", None) or ["  (created before anomaly detection was enabled)\n"])
    try:
        in_grads = node.backward(*grads)
    except Exception:
        warnings.warn(f"Error detected in {node._name()}. Traceback of forward call that caused "
                      f"the error:\n{trace}", RuntimeWarning, stacklevel=3)
        raise
    if _anomaly.check_nan:
        res = in_grads if type(in_grads) is tuple else (in_grads,)
        for i, g in enumerate(res):
            a = getattr(g, "array", g)
            if a is not None and a.dtype.kind in "fc" and bool((a != a).any()):
                raise RuntimeError(
                    f"Function '{node._name()}' returned nan values in its {i}th output.\n"
                    f"Traceback of forward call that caused the error:\n{trace}"
                )
    return in_grads


def _needed_nodes(root_nodes, capture_ids):
    """Ids of nodes from which some captured node is reachable (the rest need not run)."""
    order = []
    seen = set()
    stack = [(n, False) for n in root_nodes]
    while stack:  # iterative post-order: children are finished before their parent
        node, done = stack.pop()
        k = id(node)
        if done:
            order.append(node)
            continue
        if k in seen:
            continue
        seen.add(k)
        stack.append((node, True))
        for e in node._next:
            if e is not None and id(e[0]) not in seen:
                stack.append((e[0], False))
    needed = set()
    for node in order:
        k = id(node)
        if k in capture_ids or any(e is not None and id(e[0]) in needed for e in node._next):
            needed.add(k)
    return needed


from ..tensor import Tensor  # noqa: E402
