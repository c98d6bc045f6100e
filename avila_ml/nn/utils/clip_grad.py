"""Gradient clipping (``torch.nn.utils.clip_grad``): rescale or clamp ``.grad`` in place."""
from __future__ import annotations

import math

import numpy as np

from ...backends import get_backend
from ...ops.shape import _move
from ...tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_"]


def _as_list(tensors, op: str) -> list:
    if isinstance(tensors, Tensor):
        return [tensors]
    try:
        return list(tensors)
    except TypeError:
        raise TypeError(f"{op}: expected a Tensor or an iterable of Tensors, got {type(tensors).__name__}") from None


def _vector_norm(xp, a, p: float):
    """The p-norm of all elements of array ``a``, as a 0-d array in ``a``'s dtype."""
    if p == math.inf:
        return xp.abs(a).max() if a.size else xp.zeros((), a.dtype)
    if p == -math.inf:
        return xp.abs(a).min() if a.size else xp.asarray(math.inf, a.dtype)
    if p == 0:
        return xp.asarray(xp.count_nonzero(a), a.dtype)
    if p == 2:
        return xp.sqrt(xp.vdot(a.ravel(), a.ravel()).real).astype(a.dtype)
    if p == 1:
        return xp.abs(a).sum()
    return (xp.abs(a) ** p).sum() ** (1.0 / p)


def get_total_norm(tensors, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """The ``norm_type``-norm of all ``tensors`` together, as if concatenated
    (``torch.nn.utils.get_total_norm``).

    Math: ‖(t_1, ..., t_n)‖_p = ‖(‖t_1‖_p, ..., ‖t_n‖_p)‖_p (max for p = inf).

    Example:
        >>> import avila_ml as am
        >>> am.nn.utils.get_total_norm([am.tensor([3.0]), am.tensor([4.0])])
        tensor(5.)
    """
    tensors = [t for t in _as_list(tensors, "get_total_norm") if t is not None]
    norm_type = float(norm_type)
    if not tensors:
        from ...factories import tensor
        return tensor(0.0)
    first = tensors[0]
    b = first._backend
    xp = b.xp
    dtype = xp.result_type(*[t.array.dtype for t in tensors])
    norms = []
    for t in tensors:
        n = _vector_norm(t._backend.xp, t.array, norm_type)
        norms.append(_move(n, b.device).astype(dtype))
    total = _vector_norm(xp, xp.stack(norms), norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"get_total_norm: the total norm of order {norm_type} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`")
    return Tensor._wrap(xp.asarray(total))


def clip_grads_with_norm_(parameters, max_norm: float, total_norm) -> None:
    """Scale every ``.grad`` by min(1, max_norm / (total_norm + 1e-6)), in place
    (``torch.nn.utils.clip_grads_with_norm_``).

    Example:
        >>> import avila_ml as am
        >>> p = am.nn.Parameter(am.zeros(2)); p.grad = am.tensor([3.0, 4.0])
        >>> am.nn.utils.clip_grads_with_norm_([p], 1.0, am.tensor(5.0)); p.grad
        tensor([0.6000, 0.8000])
    """
    params = _as_list(parameters, "clip_grads_with_norm_")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    tn = total_norm.array if isinstance(total_norm, Tensor) else total_norm
    xp = get_backend(grads[0].device).xp
    tn = _move(xp.asarray(tn), grads[0].device) if isinstance(tn, (int, float)) else tn
    coef = xp.minimum(max_norm / (tn + 1e-6), 1.0)
    for g in grads:
        c = _move(coef, g.device).astype(g.array.dtype)
        with np.errstate(invalid="ignore"):  # inf * 0 -> NaN silently, as in PyTorch
            g.array *= c
        g._bump()


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Rescale gradients in place so their total norm is at most ``max_norm``; returns the
    total norm before clipping (``torch.nn.utils.clip_grad_norm_``).

    Math: N = ‖(g_1, ..., g_n)‖_p; g_i ← g_i · min(1, max_norm / (N + 1e-6)).
    A non-finite N raises when ``error_if_nonfinite``.

    Example:
        >>> import avila_ml as am
        >>> p = am.nn.Parameter(am.zeros(2)); p.grad = am.tensor([3.0, 4.0])
        >>> am.nn.utils.clip_grad_norm_([p], max_norm=1.0), p.grad
        (tensor(5.), tensor([0.6000, 0.8000]))
    """
    if max_norm is None or (isinstance(max_norm, (int, float)) and max_norm < 0):
        raise ValueError(f"clip_grad_norm_: max_norm must be a non-negative number, got {max_norm!r}")
    params = _as_list(parameters, "clip_grad_norm_")
    grads = [p.grad for p in params if p.grad is not None]
    total = get_total_norm(grads, norm_type, error_if_nonfinite)
    clip_grads_with_norm_(params, max_norm, total)
    return total


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place
    (``torch.nn.utils.clip_grad_value_``).

    Math: g ← min(max(g, -c), c).

    Example:
        >>> import avila_ml as am
        >>> p = am.nn.Parameter(am.zeros(3)); p.grad = am.tensor([-5.0, 0.5, 5.0])
        >>> am.nn.utils.clip_grad_value_(p, 1.0); p.grad
        tensor([-1.0000,  0.5000,  1.0000])
    """
    clip_value = float(clip_value)
    if clip_value < 0:
        raise ValueError(f"clip_grad_value_: clip_value must be non-negative, got {clip_value}")
    for p in _as_list(parameters, "clip_grad_value_"):
        g = p.grad
        if g is not None:
            g._backend.xp.clip(g.array, -clip_value, clip_value, out=g.array)
            g._bump()
