"""Automatic differentiation: ``backward``, ``grad``, grad-mode switches and gradient checks."""
from __future__ import annotations

import numpy as np

from .function import Function, AccumulateGrad
from .grad_mode import (no_grad, enable_grad, set_grad_enabled, is_grad_enabled, inference_mode,
                        is_inference_mode_enabled, set_detect_anomaly, detect_anomaly,
                        is_anomaly_enabled, is_anomaly_check_nan_enabled)
from .engine import run_backward

__all__ = ["Function", "backward", "grad", "no_grad", "enable_grad", "set_grad_enabled",
           "is_grad_enabled", "inference_mode", "is_inference_mode_enabled", "set_detect_anomaly",
           "detect_anomaly", "is_anomaly_enabled", "is_anomaly_check_nan_enabled", "gradcheck", "gradgradcheck", "GradcheckError", "functional"]


def _as_list(x):
    if x is None:
        return None
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _root_grads(outputs, grad_outputs, op):
    from ..tensor import Tensor
    grads = _as_list(grad_outputs) or [None] * len(outputs)
    if len(grads) != len(outputs):
        raise RuntimeError(f"{op}: got {len(outputs)} outputs but {len(grads)} grad_outputs")
    result = []
    for i, (o, g) in enumerate(zip(outputs, grads)):
        if g is None:
            a = o.array
            if a.size != 1:
                raise RuntimeError(
                    f"{op}: grad can be implicitly created only for scalar outputs; output {i} has "
                    f"shape {tuple(o.shape)}, pass `gradient` (or grad_outputs) of that shape"
                )
            # made from the output itself: shape, device and dtype match by construction
            if a.ndim == 0 and type(a) is np.ndarray:
                result.append(Tensor._wrap(np.array(1, dtype=a.dtype)))  # (np.ones: 4x the time)
            else:
                result.append(Tensor._wrap(o._backend.xp.ones(a.shape, dtype=a.dtype)))
            continue
        if not isinstance(g, Tensor):
            g = Tensor._wrap(o._backend.xp.asarray(g, dtype=o.array.dtype))
        if g.shape != o.shape:
            raise RuntimeError(f"{op}: mismatch in shape: grad_output[{i}] has shape {tuple(g.shape)} but output[{i}] has shape {tuple(o.shape)}")
        if g.device != o.device:
            raise RuntimeError(f"{op}: grad_output[{i}] is on {g.device} but output[{i}] is on {o.device}")
        if g.array.dtype != o.array.dtype:
            # as PyTorch: the gradient of an output has the output's dtype
            from ..ops.elementwise import cast
            g = cast(g, o.dtype)
        result.append(g)
    return result


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph: bool = False, inputs=None) -> None:
    """Accumulate d(tensors)/d(leaf) into the leaves' ``.grad`` (``torch.autograd.backward``).

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([1.0, 2.0], requires_grad=True)
        >>> am.autograd.backward((x * x).sum()); x.grad
        tensor([2., 4.])
    """
    outs = _as_list(tensors)
    grads = _root_grads(outs, grad_tensors, "backward")
    if retain_graph is None:
        retain_graph = create_graph
    if inputs is not None:
        ins = _as_list(inputs)
        res = run_backward(outs, grads, retain_graph, create_graph, inputs=ins, allow_unused=True)
        from .engine import _accumulate_leaf
        for t, g in zip(ins, res):
            if g is not None:
                _accumulate_leaf(t, g, create_graph)
        return
    run_backward(outs, grads, retain_graph, create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph: bool = False,
         allow_unused: bool = False, materialize_grads: bool = False):
    """Gradients of ``outputs`` w.r.t. ``inputs``, returned, not accumulated (``torch.autograd.grad``).

    With ``create_graph=True`` the result is itself differentiable (higher derivatives).

    Math: returns sum_k grad_outputs[k] . d outputs[k] / d inputs[i] for each i.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor(3.0, requires_grad=True)
        >>> (g,) = am.autograd.grad(x ** 3, x, create_graph=True)
        >>> (g2,) = am.autograd.grad(g, x); g, g2
        (tensor(27., grad_fn=<MulBackward0>), tensor(18.))
    """
    outs = _as_list(outputs)
    ins = _as_list(inputs)
    grads = _root_grads(outs, grad_outputs, "grad")
    if retain_graph is None:
        retain_graph = create_graph
    res = run_backward(outs, grads, retain_graph, create_graph, inputs=ins,
                       allow_unused=allow_unused or materialize_grads)
    if materialize_grads:
        from ..factories import zeros_like
        res = tuple(zeros_like(t) if g is None else g for t, g in zip(ins, res))
    return tuple(res)


from .gradcheck import gradcheck, gradgradcheck, GradcheckError  # noqa: E402
from . import functional  # noqa: E402
from . import function  # noqa: E402,F401  (am.autograd.function.once_differentiable)
from .custom_function import once_differentiable, FunctionCtx  # noqa: E402

function.once_differentiable = once_differentiable
function.FunctionCtx = FunctionCtx
