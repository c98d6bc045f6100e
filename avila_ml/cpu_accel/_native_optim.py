"""Fused SGD, RMSprop and Adam/AdamW updates as compiled kernels (``kernels/optim.c``, bound through
:mod:`._native`): one pass over each parameter, its gradient and its state, split over the
OpenMP team, in place of the dozen ``out=`` ufunc passes of ``avila_ml/optim/_fused.py`` (which
stay the reference and the fallback).

:func:`step` takes the arguments of ``_fused.update`` (the algorithm's name, the parameter
array, its gradient, the state arrays by name, the scalars by name) and returns False, having
written nothing, where the kernels do not apply: not built or switched off, another algorithm,
a dtype other than float32/float64, arrays of mixed dtypes or shapes, or not C-contiguous.

The arithmetic is the NumPy path's, operation by operation in the parameter's dtype (the scalars
rounded to it, as NumPy does with Python floats), so the two agree bitwise; that path follows
PyTorch's ``_single_tensor_sgd`` / ``_single_tensor_rmsprop`` / ``_single_tensor_adam``.

PyTorch: the updates of ``torch.optim.SGD``, ``RMSprop``, ``Adam`` and ``AdamW`` (its ``foreach`` and
``fused`` kernels do the same fusion in C++).
"""
from __future__ import annotations

import ctypes

from . import _native

__all__ = ["step", "KINDS"]

_P, _N, _T, _S = _native.PTR, _native.COUNT, _native.THREADS, _native.SCALAR
_I = ctypes.c_int  # flags
# p, g, momentum_buffer | lr, momentum, 1 - dampening, weight_decay | nesterov, maximize, first | n, threads
_native.register("sgd", _P, _P, _P, _S, _S, _S, _S, _I, _I, _I, _N, _T)
# p, g, square_avg, grad_avg, momentum_buffer | lr, alpha, 1 - alpha, weight, 1 - weight, eps,
# weight_decay, momentum | lerp_low, maximize | n, threads
_native.register("rmsprop", _P, _P, _P, _P, _P, _S, _S, _S, _S, _S, _S, _S, _S, _I, _I, _N, _T)

# p, g, exp_avg, exp_avg_sq, max_exp_avg_sq | weight, 1 - weight, beta2, 1 - beta2, weight_decay,
# decay, eps, sqrt(bias correction 2), -step_size | lerp_low, decoupled, maximize | n, threads
_native.register("adam", _P, _P, _P, _P, _P, _S, _S, _S, _S, _S, _S, _S, _S, _S, _I, _I, _I, _N, _T)

# per algorithm: the required state arrays, the optional ones (None -> NULL), the scalars and
# the flags, in the C function's order
KINDS = {
    "sgd": ((), ("momentum_buffer",), ("lr", "momentum", "one_minus_dampening", "weight_decay"),
            ("nesterov", "maximize", "first")),
    "adam": (("exp_avg", "exp_avg_sq"), ("max_exp_avg_sq",),
             ("weight", "one_minus_weight", "beta2", "one_minus_beta2", "weight_decay", "decay", "eps",
              "bias_correction2_sqrt", "neg_step_size"),
             ("lerp_low", "decoupled", "maximize")),
    "rmsprop": (("square_avg",), ("grad_avg", "momentum_buffer"),
                ("lr", "alpha", "one_minus_alpha", "weight", "one_minus_weight", "eps", "weight_decay", "momentum"),
                ("lerp_low", "maximize")),
}


def step(kind, param, grad, buffers, scalars) -> bool:
    """One in-place update of algorithm ``kind`` ("sgd", "rmsprop" or "adam") on the NumPy array
    ``param``; True when done, False (nothing written) where the kernels do not apply.

    Math (``d``: the gradient after ``maximize`` and L2 weight decay): SGD
    ``b = d`` (first step) or ``b = b momentum + d (1 - dampening)``,
    ``θ = θ - lr (d + momentum b if nesterov else b)``; RMSprop
    ``v = alpha v + (1 - alpha) d^2``, ``a = sqrt(v - ḡ^2 if centered else v) + eps``,
    ``θ = θ - lr d / a`` (or through a momentum buffer ``b = momentum b + d / a``); Adam
    ``m = lerp(m, d, 1 - beta1)``, ``v = beta2 v + (1 - beta2) d^2`` (amsgrad: its running max),
    ``θ = θ (1 - lr wd)`` for AdamW, ``θ = θ - step m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.

    PyTorch: ``torch.optim.SGD.step`` / ``RMSprop.step`` / ``Adam.step`` / ``AdamW.step`` for one
    parameter.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_optim
        >>> p = np.array([1.0, 2.0]); g = np.array([0.5, -1.0]); b = np.zeros(2)
        >>> s = dict(lr=0.1, momentum=0.9, one_minus_dampening=1.0, weight_decay=0.0, nesterov=False,
        ...          maximize=False, first=True)
        >>> done = _native_optim.step("sgd", p, g, {"momentum_buffer": b}, s)  # False without the kernels
        >>> (not done) or (np.allclose(p, [0.95, 2.1]) and b.tolist() == [0.5, -1.0])
        True
    """
    spec = KINDS.get(kind)
    if spec is None:
        return False
    required, optional, scalar_names, flag_names = spec
    if len(buffers) != len(required) + sum(n in buffers for n in optional):
        return False  # a state array this kernel does not know
    state = [buffers.get(n) for n in required + optional]
    arrays = [grad] + [a for a in state if a is not None] + [param]  # (the written one last)
    fn = _native.kernel(kind, *arrays)
    if fn is None:
        return False
    ptrs = [None if a is None else _native.addr(a) for a in state]
    n = param.size
    fn(_native.addr(param), _native.addr(grad), *ptrs, *(scalars[s] for s in scalar_names),
       *(int(bool(scalars[f])) for f in flag_names), n, _native.threads_for(n))
    return True
