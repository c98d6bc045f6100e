"""Fused, allocation-free parameter updates: one body per algorithm, for NumPy and for CUDA.

Every optimizer step ends in one call to :func:`update` per parameter, the one place where the
parameter's device picks the implementation:

* CPU (NumPy): ufunc calls with ``out=`` into the optimizer state and two scratch buffers, so no
  array is allocated after the first step. A large contiguous parameter is cut into one slice
  per core and the slices run in a small thread pool (NumPy releases the GIL inside ufuncs);
  inside ``Optimizer.step`` (``batched``) these updates, and those of mid-sized parameters, are
  queued and run together at the end, each thread taking its slice of every large parameter and
  a share of the mid-sized ones whole, so a step costs one pool hand-off; the arithmetic is
  elementwise, so the result is bitwise the same as in one thread;
* CPU, compiled (SGD and RMSprop, float32/float64 C-contiguous arrays, where the optional C
  kernels are built): one pass per parameter split over the OpenMP threads
  (``cpu_accel/kernels/optim.c``), bitwise the NumPy functions' arithmetic, which stay the
  fallback and the reference;
* CUDA (CuPy): one ``cupy.ElementwiseKernel`` per algorithm doing the same arithmetic in
  registers, i.e. one read and one write of each array per step. Kernels are built on first use
  and cached per dtype; CuPy is imported only then.

The NumPy function and the CUDA body of each algorithm sit next to each other below, in the same
order, and follow PyTorch's ``_single_tensor_<name>`` arithmetic (``torch/optim/<name>.py``): the
same operations, the same operand order, so float64 trajectories match PyTorch's to rounding.
Derived scalars (``1 - beta2``, bias corrections, ``-lr``) are computed once on the host in Python
floats by the optimizer and passed to both paths, so the CPU and the GPU see the same numbers.
The kernels are compiled with ``--fmad=false``: NumPy rounds each product before the sum, and
contracting ``a * b + c`` into one FMA would change the last bit.

Conventions of every algorithm (``a + b*c`` below always means: round ``b*c``, then add):

* ``d`` is the gradient the step uses: ``-grad`` when maximizing, plus ``weight_decay * param``
  for L2 (coupled) weight decay;
* ``lerp(x, d, w)`` is PyTorch's ``x.lerp_(d, w)``: ``x + w*(d - x)`` when ``w < 0.5`` (the host
  passes the flag ``lerp_low``), else ``d - (d - x)*(1 - w)``.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ..backends import backend_of

__all__ = ["update", "batched", "Workspace", "KINDS"]


# -- scratch memory --------------------------------------------------------------------------------
class Workspace:
    """Two scratch arrays shaped like a parameter, for the CPU updates.

    All parameters of one dtype share one flat buffer as large as twice the largest of them
    (three times for Adadelta; updates run one parameter at a time), so scratch costs 2x the
    largest parameter, not 2x the model. Views are cached per (shape, dtype): after the first step nothing is allocated.
    """

    def __init__(self):
        self._flat: dict = {}   # dtype -> 1-D array of 2 * (largest numel seen)
        self._views: dict = {}  # (shape, dtype) -> (s, t)
        self._threads: dict = {}  # thread index -> Workspace of that thread's slices (batched CPU steps)

    def for_thread(self, i: int) -> "Workspace":
        """The workspace of thread ``i`` of a batched CPU step: each thread updates its own
        slice of every parameter, so each needs scratch of its own (together: 2x the largest
        parameter, as one thread needs)."""
        ws = self._threads.get(i)
        if ws is None:
            ws = self._threads[i] = Workspace()
        return ws

    def scratch(self, like, count: int = 2):
        """``count`` scratch arrays (default the two ``(s, t)``) with the shape and dtype of the
        array ``like``."""
        key = (like.shape, like.dtype, count)
        views = self._views.get(key)
        if views is None:
            n = like.size
            flat = self._flat.get(like.dtype)
            if flat is None or flat.size < count * n:
                flat = self._flat[like.dtype] = np.empty(count * n, dtype=like.dtype)
                # views into a smaller, older buffer stay valid; drop them so it can be freed
                self._views = {k: v for k, v in self._views.items() if k[1] != like.dtype}
            views = self._views[key] = tuple(flat[i * n:(i + 1) * n].reshape(like.shape) for i in range(count))
        return views


# -- SGD (torch.optim.sgd._single_tensor_sgd) -------------------------------------------------------
def _sgd_cpu(param, grad, s, t, momentum_buffer=None, *, lr, momentum, one_minus_dampening,
             weight_decay, nesterov, maximize, first):
    d = grad
    if weight_decay != 0:
        np.multiply(param, weight_decay, out=s)
        (np.subtract if maximize else np.add)(s, grad, out=s)  # (-grad) + wd*param == wd*param - grad
        d = s
    elif maximize:
        np.negative(grad, out=s)
        d = s
    if momentum_buffer is not None:
        if first:
            np.copyto(momentum_buffer, d)
        else:
            np.multiply(momentum_buffer, momentum, out=momentum_buffer)
            if one_minus_dampening == 1:  # d * 1 == d exactly: skip a pass
                np.add(momentum_buffer, d, out=momentum_buffer)
            else:
                np.multiply(d, one_minus_dampening, out=t)
                np.add(momentum_buffer, t, out=momentum_buffer)
        if nesterov:
            np.multiply(momentum_buffer, momentum, out=t)
            np.add(d, t, out=t)
            d = t
        else:
            d = momentum_buffer
    np.multiply(d, -lr, out=t)
    np.add(param, t, out=param)


_SGD_CUDA = """
T d = maximize ? -grad : grad;
if (weight_decay != 0) d = d + weight_decay * param;
#if HAS_MOMENTUM_BUFFER
if (first) momentum_buffer = d;
else momentum_buffer = momentum_buffer * momentum + d * one_minus_dampening;
d = nesterov ? d + momentum_buffer * momentum : momentum_buffer;
#endif
param = param + d * (-lr);
"""


# -- Adam / AdamW (torch.optim.adam._single_tensor_adam) ------------------------------------------
def _adam_cpu(param, grad, s, t, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, weight, lerp_low,
              one_minus_weight, beta2, one_minus_beta2, weight_decay, decoupled, decay, eps,
              bias_correction2_sqrt, neg_step_size, maximize):
    d = grad
    if weight_decay != 0 and not decoupled:
        np.multiply(param, weight_decay, out=s)
        (np.subtract if maximize else np.add)(s, grad, out=s)
        d = s
    elif maximize:
        np.negative(grad, out=s)
        d = s
    if weight_decay != 0 and decoupled:
        np.multiply(param, decay, out=param)  # AdamW: param *= 1 - lr * weight_decay
    np.subtract(d, exp_avg, out=t)  # exp_avg.lerp_(d, 1 - beta1)
    if lerp_low:
        np.multiply(t, weight, out=t)
        np.add(exp_avg, t, out=exp_avg)
    else:
        np.multiply(t, one_minus_weight, out=t)
        np.subtract(d, t, out=exp_avg)
    np.multiply(exp_avg_sq, beta2, out=exp_avg_sq)  # exp_avg_sq.mul_(beta2).addcmul_(d, d, 1 - beta2)
    np.multiply(d, one_minus_beta2, out=t)
    np.multiply(t, d, out=t)
    np.add(exp_avg_sq, t, out=exp_avg_sq)
    source = exp_avg_sq
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        source = max_exp_avg_sq
    np.sqrt(source, out=t)  # denom = sqrt(v) / sqrt(1 - beta2^step) + eps
    np.divide(t, bias_correction2_sqrt, out=t)
    np.add(t, eps, out=t)
    np.multiply(exp_avg, neg_step_size, out=s)  # param.addcdiv_(exp_avg, denom, -step_size); d is dead
    np.divide(s, t, out=s)
    np.add(param, s, out=param)


_ADAM_CUDA = """
T d = maximize ? -grad : grad;
if (weight_decay != 0) {
    if (decoupled) param = param * decay;
    else d = d + weight_decay * param;
}
T diff = d - exp_avg;
exp_avg = lerp_low ? exp_avg + diff * weight : d - diff * one_minus_weight;
exp_avg_sq = exp_avg_sq * beta2 + (d * one_minus_beta2) * d;
#if HAS_MAX_EXP_AVG_SQ
T m = max_exp_avg_sq;
max_exp_avg_sq = (m != m || m > exp_avg_sq) ? m : exp_avg_sq;  /* NaN-propagating, like np.maximum */
T source = max_exp_avg_sq;
#else
T source = exp_avg_sq;
#endif
T denom = sqrt(source) / bias_correction2_sqrt + eps;
param = param + (exp_avg * neg_step_size) / denom;
"""


# -- RMSprop (torch.optim.rmsprop._single_tensor_rmsprop) -----------------------------------------
def _rmsprop_cpu(param, grad, s, t, square_avg, grad_avg=None, momentum_buffer=None, *, lr, alpha,
                 one_minus_alpha, weight, lerp_low, one_minus_weight, eps, weight_decay, momentum,
                 maximize):
    d = grad
    if weight_decay != 0:
        np.multiply(param, weight_decay, out=s)
        (np.subtract if maximize else np.add)(s, grad, out=s)
        d = s
    elif maximize:
        np.negative(grad, out=s)
        d = s
    np.multiply(square_avg, alpha, out=square_avg)  # square_avg.mul_(alpha).addcmul_(d, d, 1 - alpha)
    np.multiply(d, one_minus_alpha, out=t)
    np.multiply(t, d, out=t)
    np.add(square_avg, t, out=square_avg)
    if grad_avg is not None:
        np.subtract(d, grad_avg, out=t)  # grad_avg.lerp_(d, 1 - alpha)
        if lerp_low:
            np.multiply(t, weight, out=t)
            np.add(grad_avg, t, out=grad_avg)
        else:
            np.multiply(t, one_minus_weight, out=t)
            np.subtract(d, t, out=grad_avg)
        np.multiply(grad_avg, grad_avg, out=t)  # avg = sqrt(square_avg - grad_avg^2) + eps
        np.subtract(square_avg, t, out=t)
        np.sqrt(t, out=t)
    else:
        np.sqrt(square_avg, out=t)
    np.add(t, eps, out=t)
    if momentum_buffer is not None:
        np.divide(d, t, out=t)  # buf = buf * momentum + d / avg; param -= lr * buf
        np.multiply(momentum_buffer, momentum, out=momentum_buffer)
        np.add(momentum_buffer, t, out=momentum_buffer)
        np.multiply(momentum_buffer, -lr, out=s)
    else:
        np.multiply(d, -lr, out=s)  # param.addcdiv_(d, avg, -lr)
        np.divide(s, t, out=s)
    np.add(param, s, out=param)


_RMSPROP_CUDA = """
T d = maximize ? -grad : grad;
if (weight_decay != 0) d = d + weight_decay * param;
square_avg = square_avg * alpha + (d * one_minus_alpha) * d;
#if HAS_GRAD_AVG
T diff = d - grad_avg;
grad_avg = lerp_low ? grad_avg + diff * weight : d - diff * one_minus_weight;
T avg = sqrt(square_avg - grad_avg * grad_avg) + eps;
#else
T avg = sqrt(square_avg) + eps;
#endif
#if HAS_MOMENTUM_BUFFER
momentum_buffer = momentum_buffer * momentum + d / avg;
T step_ = momentum_buffer * (-lr);
#else
T step_ = (d * (-lr)) / avg;
#endif
param = param + step_;
"""


# -- Adagrad (torch.optim.adagrad._single_tensor_adagrad) -----------------------------------------
def _adagrad_cpu(param, grad, s, t, state_sum, *, neg_clr, weight_decay, eps, maximize):
    d = grad
    if weight_decay != 0:
        np.multiply(param, weight_decay, out=s)
        (np.subtract if maximize else np.add)(s, grad, out=s)
        d = s
    elif maximize:
        np.negative(grad, out=s)
        d = s
    np.multiply(d, d, out=t)  # state_sum.addcmul_(d, d)
    np.add(state_sum, t, out=state_sum)
    np.sqrt(state_sum, out=t)  # std = sqrt(state_sum) + eps
    np.add(t, eps, out=t)
    np.multiply(d, neg_clr, out=s)  # param.addcdiv_(d, std, -clr)
    np.divide(s, t, out=s)
    np.add(param, s, out=param)


_ADAGRAD_CUDA = """
T d = maximize ? -grad : grad;
if (weight_decay != 0) d = d + weight_decay * param;
state_sum = state_sum + d * d;
T std_ = sqrt(state_sum) + eps;
param = param + (d * neg_clr) / std_;
"""


# -- NAdam (torch.optim.nadam._single_tensor_nadam) -----------------------------------------------
def _coupled_decay(param, grad, s, weight_decay, maximize):
    """The gradient the step uses: -grad if maximizing, plus weight_decay·param (L2), in ``s``
    when it differs from ``grad``."""
    if weight_decay != 0:
        np.multiply(param, weight_decay, out=s)
        (np.subtract if maximize else np.add)(s, grad, out=s)
        return s
    if maximize:
        np.negative(grad, out=s)
        return s
    return grad


def _lerp_into(avg, d, t, weight, lerp_low, one_minus_weight):
    np.subtract(d, avg, out=t)  # avg.lerp_(d, weight)
    if lerp_low:
        np.multiply(t, weight, out=t)
        np.add(avg, t, out=avg)
    else:
        np.multiply(t, one_minus_weight, out=t)
        np.subtract(d, t, out=avg)


def _nadam_cpu(param, grad, s, t, exp_avg, exp_avg_sq, *, weight, lerp_low, one_minus_weight, beta2,
               one_minus_beta2, weight_decay, decoupled, decay, eps, bias_correction2, grad_coef,
               avg_coef, maximize):
    d = _coupled_decay(param, grad, s, 0 if decoupled else weight_decay, maximize)
    if weight_decay != 0 and decoupled:
        np.multiply(param, decay, out=param)
    _lerp_into(exp_avg, d, t, weight, lerp_low, one_minus_weight)
    np.multiply(exp_avg_sq, beta2, out=exp_avg_sq)
    np.multiply(d, one_minus_beta2, out=t)
    np.multiply(t, d, out=t)
    np.add(exp_avg_sq, t, out=exp_avg_sq)
    np.divide(exp_avg_sq, bias_correction2, out=t)  # denom = sqrt(v / (1 - beta2^t)) + eps
    np.sqrt(t, out=t)
    np.add(t, eps, out=t)
    np.multiply(d, grad_coef, out=s)  # param.addcdiv_(d, denom, -lr(1 - mu)/(1 - prod mu))
    np.divide(s, t, out=s)
    np.add(param, s, out=param)
    np.multiply(exp_avg, avg_coef, out=s)  # param.addcdiv_(m, denom, -lr mu_next/(1 - prod mu'))
    np.divide(s, t, out=s)
    np.add(param, s, out=param)


_NADAM_CUDA = """
T d = maximize ? -grad : grad;
if (weight_decay != 0) {
    if (decoupled) param = param * decay;
    else d = d + weight_decay * param;
}
T diff = d - exp_avg;
exp_avg = lerp_low ? exp_avg + diff * weight : d - diff * one_minus_weight;
exp_avg_sq = exp_avg_sq * beta2 + (d * one_minus_beta2) * d;
T denom = sqrt(exp_avg_sq / bias_correction2) + eps;
param = param + (d * grad_coef) / denom;
param = param + (exp_avg * avg_coef) / denom;
"""


# -- RAdam (torch.optim.radam._single_tensor_radam) -----------------------------------------------
def _radam_cpu(param, grad, s, t, exp_avg, exp_avg_sq, *, weight, lerp_low, one_minus_weight, beta2,
               one_minus_beta2, weight_decay, decoupled, decay, eps, bias_correction1,
               bias_correction2_sqrt, lr, rect, rectified, maximize):
    d = _coupled_decay(param, grad, s, 0 if decoupled else weight_decay, maximize)
    if weight_decay != 0 and decoupled:
        np.multiply(param, decay, out=param)
    _lerp_into(exp_avg, d, t, weight, lerp_low, one_minus_weight)
    np.multiply(exp_avg_sq, beta2, out=exp_avg_sq)
    np.multiply(d, one_minus_beta2, out=t)
    np.multiply(t, d, out=t)
    np.add(exp_avg_sq, t, out=exp_avg_sq)
    np.divide(exp_avg, bias_correction1, out=s)  # bias-corrected m; d is dead from here
    np.multiply(s, lr, out=s)
    if rectified:  # ((m̂·lr)·(√(1-β2^t) / (√v + eps)))·rect
        np.sqrt(exp_avg_sq, out=t)
        np.add(t, eps, out=t)
        np.divide(bias_correction2_sqrt, t, out=t)
        np.multiply(s, t, out=s)
        np.multiply(s, rect, out=s)
    np.subtract(param, s, out=param)


_RADAM_CUDA = """
T d = maximize ? -grad : grad;
if (weight_decay != 0) {
    if (decoupled) param = param * decay;
    else d = d + weight_decay * param;
}
T diff = d - exp_avg;
exp_avg = lerp_low ? exp_avg + diff * weight : d - diff * one_minus_weight;
exp_avg_sq = exp_avg_sq * beta2 + (d * one_minus_beta2) * d;
T u = (exp_avg / bias_correction1) * lr;
if (rectified) u = (u * (bias_correction2_sqrt / (sqrt(exp_avg_sq) + eps))) * rect;
param = param - u;
"""


# -- Adamax (torch.optim.adamax._single_tensor_adamax) --------------------------------------------
def _adamax_cpu(param, grad, s, t, exp_avg, exp_inf, *, weight, lerp_low, one_minus_weight, beta2,
                weight_decay, eps, neg_clr, maximize):
    d = _coupled_decay(param, grad, s, weight_decay, maximize)
    _lerp_into(exp_avg, d, t, weight, lerp_low, one_minus_weight)
    np.multiply(exp_inf, beta2, out=exp_inf)  # u = max(β2·u, |d| + eps)
    np.abs(d, out=t)
    np.add(t, eps, out=t)
    np.maximum(exp_inf, t, out=exp_inf)
    np.multiply(exp_avg, neg_clr, out=s)  # param.addcdiv_(m, u, -lr/(1 - β1^t))
    np.divide(s, exp_inf, out=s)
    np.add(param, s, out=param)


_ADAMAX_CUDA = """
T d = maximize ? -grad : grad;
if (weight_decay != 0) d = d + weight_decay * param;
T diff = d - exp_avg;
exp_avg = lerp_low ? exp_avg + diff * weight : d - diff * one_minus_weight;
T a = exp_inf * beta2;
T b = fabs(d) + eps;
exp_inf = (a != a || a > b) ? a : b;  /* NaN-propagating, like np.maximum */
param = param + (exp_avg * neg_clr) / exp_inf;
"""


# -- Adadelta (torch.optim.adadelta._single_tensor_adadelta) --------------------------------------
def _adadelta_cpu(param, grad, s, t, square_avg, acc_delta, scratch, *, rho, one_minus_rho, eps,
                  weight_decay, neg_lr, maximize):
    d = _coupled_decay(param, grad, s, weight_decay, maximize)
    np.multiply(square_avg, rho, out=square_avg)  # v ← ρ·v + (1 - ρ)·d²
    np.multiply(d, one_minus_rho, out=t)
    np.multiply(t, d, out=t)
    np.add(square_avg, t, out=square_avg)
    np.add(square_avg, eps, out=t)  # std = √(v + eps)
    np.sqrt(t, out=t)
    np.add(acc_delta, eps, out=scratch)  # delta = √(u + eps) / std · d
    np.sqrt(scratch, out=scratch)
    np.divide(scratch, t, out=scratch)
    np.multiply(scratch, d, out=scratch)
    np.multiply(acc_delta, rho, out=acc_delta)  # u ← ρ·u + (1 - ρ)·delta²
    np.multiply(scratch, one_minus_rho, out=t)
    np.multiply(t, scratch, out=t)
    np.add(acc_delta, t, out=acc_delta)
    np.multiply(scratch, neg_lr, out=scratch)  # param.add_(delta, alpha=-lr)
    np.add(param, scratch, out=param)


_ADADELTA_CUDA = """
T d = maximize ? -grad : grad;
if (weight_decay != 0) d = d + weight_decay * param;
square_avg = square_avg * rho + (d * one_minus_rho) * d;
T std_ = sqrt(square_avg + eps);
T delta = (sqrt(acc_delta + eps) / std_) * d;
acc_delta = acc_delta * rho + (delta * one_minus_rho) * delta;
param = param + delta * neg_lr;
"""


# -- the table: for each algorithm, its CPU function and its CUDA kernel's signature --------------
# "scalars" are T (the parameter's dtype), "flags" int32; "buffers" are the state arrays updated
# in place (optional ones switch a HAS_<NAME> macro in the kernel body).
KINDS = {
    "sgd": dict(cpu=_sgd_cpu, body=_SGD_CUDA,
                scalars=("lr", "momentum", "one_minus_dampening", "weight_decay"),
                flags=("nesterov", "maximize", "first"),
                buffers=(), optional=("momentum_buffer",)),
    "adam": dict(cpu=_adam_cpu, body=_ADAM_CUDA,
                 scalars=("weight", "one_minus_weight", "beta2", "one_minus_beta2", "weight_decay",
                          "decay", "eps", "bias_correction2_sqrt", "neg_step_size"),
                 flags=("lerp_low", "decoupled", "maximize"),
                 buffers=("exp_avg", "exp_avg_sq"), optional=("max_exp_avg_sq",)),
    "rmsprop": dict(cpu=_rmsprop_cpu, body=_RMSPROP_CUDA,
                    scalars=("lr", "alpha", "one_minus_alpha", "weight", "one_minus_weight", "eps",
                             "weight_decay", "momentum"),
                    flags=("lerp_low", "maximize"),
                    buffers=("square_avg",), optional=("grad_avg", "momentum_buffer")),
    "adagrad": dict(cpu=_adagrad_cpu, body=_ADAGRAD_CUDA,
                    scalars=("neg_clr", "weight_decay", "eps"), flags=("maximize",),
                    buffers=("state_sum",), optional=()),
    "nadam": dict(cpu=_nadam_cpu, body=_NADAM_CUDA,
                  scalars=("weight", "one_minus_weight", "beta2", "one_minus_beta2", "weight_decay",
                           "decay", "eps", "bias_correction2", "grad_coef", "avg_coef"),
                  flags=("lerp_low", "decoupled", "maximize"),
                  buffers=("exp_avg", "exp_avg_sq"), optional=()),
    "radam": dict(cpu=_radam_cpu, body=_RADAM_CUDA,
                  scalars=("weight", "one_minus_weight", "beta2", "one_minus_beta2", "weight_decay",
                           "decay", "eps", "bias_correction1", "bias_correction2_sqrt", "lr", "rect"),
                  flags=("lerp_low", "decoupled", "rectified", "maximize"),
                  buffers=("exp_avg", "exp_avg_sq"), optional=()),
    "adamax": dict(cpu=_adamax_cpu, body=_ADAMAX_CUDA,
                   scalars=("weight", "one_minus_weight", "beta2", "weight_decay", "eps", "neg_clr"),
                   flags=("lerp_low", "maximize"), buffers=("exp_avg", "exp_inf"), optional=()),
    "adadelta": dict(cpu=_adadelta_cpu, body=_ADADELTA_CUDA,
                     scalars=("rho", "one_minus_rho", "eps", "weight_decay", "neg_lr"),
                     flags=("maximize",), buffers=("square_avg", "acc_delta"), optional=(),
                     cpu_scratch=1),  # a third scratch array on the CPU (the CUDA kernel uses registers)
}

_cuda_kernels: dict = {}


def _cuda_kernel(kind: str, present: tuple, dtype):
    """The ElementwiseKernel of ``kind`` with the optional buffers ``present``, for ``dtype``;
    built on first use and cached."""
    key = (kind, present, np.dtype(dtype).str)
    kernel = _cuda_kernels.get(key)
    if kernel is None:
        import cupy  # only here: never at import time

        spec = KINDS[kind]
        ins = ["T grad"] + [f"T {n}" for n in spec["scalars"]] + [f"int32 {n}" for n in spec["flags"]]
        outs = ["T param"] + [f"T {n}" for n in spec["buffers"]] + [f"T {n}" for n in present]
        macros = "".join(f"#define HAS_{n.upper()} {int(n in present)}\n" for n in spec["optional"])
        kernel = cupy.ElementwiseKernel(
            ", ".join(ins), ", ".join(outs), spec["body"], name=f"avila_ml_{kind}_update",
            preamble=macros, options=("--fmad=false",), no_return=True)
        _cuda_kernels[key] = kernel
    return kernel


# -- CUDA multi-tensor updates (torch._foreach / fused=True) ----------------------------------------
# Optimizer.step runs its parameter loop inside batched(): CUDA updates are queued, and at the
# end of the loop the parameters that share (algorithm, optional buffers, dtype, device, scalars)
# are updated by ONE kernel launch. The kernel walks the concatenated index space of all their
# elements; a table of (param, grad, buffer...) device pointers and a table of element offsets
# tell each index its tensor (binary search) and position. The body is the per-parameter body
# verbatim, so results are bitwise those of one launch per parameter. No host->device copy in the
# steady state: the offsets are copied once, the pointer table is written by a one-thread kernel
# from its arguments when pointers changed (fresh gradients: one extra small launch per step).
MULTI_TENSOR = True  # False: one launch per parameter (tests compare the two bitwise)
_pending: list = []   # queued CUDA updates while a batched() block runs
_cpu_pending: list = []  # queued CPU updates (run by all threads at the end: see _flush_cpu)
_batch_depth = [0]
_pointer_tables: dict = {}  # (group, sizes) -> [device pointer table, device offsets, pointers written]
_C_TYPE_NAMES = {np.dtype(np.float32): ("float32", "float"), np.dtype(np.float64): ("float64", "double")}


class batched:
    """Context manager: queue CUDA updates inside, launch them grouped at the end."""

    def __enter__(self):
        _batch_depth[0] += 1
        return self

    def __exit__(self, *exc):
        _batch_depth[0] -= 1
        if _batch_depth[0] == 0:
            pending, _pending[:] = list(_pending), []
            cpu_pending, _cpu_pending[:] = list(_cpu_pending), []
            if exc[0] is None:
                _flush(pending)
                _flush_cpu(cpu_pending)
        return False


def _multi_kernel(kind: str, present: tuple, dtype):
    """The multi-tensor ElementwiseKernel of ``kind`` for ``dtype``; built on first use and cached."""
    key = ("multi", kind, present, np.dtype(dtype).str)
    kernel = _cuda_kernels.get(key)
    if kernel is None:
        import cupy  # only here: never at import time

        spec = KINDS[kind]
        type_name, c_type = _C_TYPE_NAMES[np.dtype(dtype)]
        arrays = ["param", "grad", *spec["buffers"], *present]
        ins = ["raw uint64 pointers", "raw int64 offsets", "int32 n_tensors"]
        ins += [f"{type_name} {n}" for n in spec["scalars"]] + [f"int32 {n}" for n in spec["flags"]]
        k = len(arrays)
        lookup = [
            "int lo = 0, hi = n_tensors;",
            "while (hi - lo > 1) { int mid = (lo + hi) >> 1; if (offsets[mid] <= (long long)i) lo = mid; else hi = mid; }",
            "const long long j = (long long)i - offsets[lo];",
            f"const T grad = reinterpret_cast<const T*>(pointers[lo * {k} + 1])[j];",
        ]
        lookup += [f"T& {n} = reinterpret_cast<T*>(pointers[lo * {k} + {a}])[j];"
                   for a, n in enumerate(arrays) if n != "grad"]
        macros = "".join(f"#define HAS_{n.upper()} {int(n in present)}\n" for n in spec["optional"])
        kernel = cupy.ElementwiseKernel(
            ", ".join(ins), "", "\n".join(lookup) + "\n{\n" + spec["body"] + "\n}",
            name=f"avila_ml_{kind}_multi_tensor_update", preamble=f"typedef {c_type} T;\n" + macros,
            options=("--fmad=false",), no_return=True)
        _cuda_kernels[key] = kernel
    return kernel


_POINTERS_PER_FILL = 256  # uint64 kernel arguments per table-filling launch (2 KiB of parameters)


def _pointer_fill_kernel(count: int):
    """A one-thread kernel writing its ``count`` pointer arguments into ``table[start:]``: pointers
    reach the device as kernel parameters (as in PyTorch's multi_tensor_apply), not as a copy."""
    key = ("pointer_fill", count)
    kernel = _cuda_kernels.get(key)
    if kernel is None:
        import cupy

        ins = ", ".join([f"uint64 p{i}" for i in range(count)] + ["int64 start"])
        body = "\n".join(f"table[start + {i}] = p{i};" for i in range(count))
        kernel = _cuda_kernels[key] = cupy.ElementwiseKernel(
            ins, "raw uint64 table", body, name=f"avila_ml_pointer_fill_{count}", no_return=True)
    return kernel


def _pointer_table(group_key, entries, arrays_of):
    """Device tables of the entries' array pointers and element offsets. The offsets depend on
    the sizes only and are copied once; the pointer table is rewritten on the device, by kernel
    arguments, only when a pointer changed (gradients re-allocated by a backward pass)."""
    import cupy

    pointers = tuple(a.data.ptr for e in entries for a in arrays_of(e))
    sizes = tuple(e[1].size for e in entries)
    key = (group_key[:4], sizes)
    cached = _pointer_tables.get(key)
    if cached is None:
        if len(_pointer_tables) > 64:
            _pointer_tables.clear()
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        cached = _pointer_tables[key] = [cupy.empty(len(pointers), dtype=np.uint64), cupy.asarray(offsets), None]
    table, offsets, written = cached
    if written != pointers:
        for start in range(0, len(pointers), _POINTERS_PER_FILL):
            chunk = pointers[start:start + _POINTERS_PER_FILL]
            _pointer_fill_kernel(len(chunk))(*(np.uint64(p) for p in chunk), np.int64(start), table, size=1)
        cached[2] = pointers
    return (table, offsets), sum(sizes)


def _flush(pending) -> None:
    groups: dict = {}
    for entry in pending:
        groups.setdefault(entry[0], []).append(entry)
    for group_key, entries in groups.items():
        kind, present, _dtype, _device, scalar_items = group_key
        if len(entries) == 1:
            _launch_single(*entries[0][1:])
            continue
        spec = KINDS[kind]
        scalars = dict(scalar_items)
        param = entries[0][1]
        with param.device:
            (pointers, offsets), total = _pointer_table(group_key, entries, lambda e: (
                e[1], e[2], *(e[4][n] for n in spec["buffers"]), *(e[4][n] for n in present)))
            args = [pointers, offsets, np.int32(len(entries)), *(scalars[n] for n in spec["scalars"]),
                    *(int(scalars[n]) for n in spec["flags"])]
            _multi_kernel(kind, present, param.dtype)(*args, size=total)


def _launch_single(param, grad, kind, buffers, scalars) -> None:
    spec = KINDS[kind]
    present = tuple(n for n in spec["optional"] if n in buffers)
    args = [grad, *(scalars[n] for n in spec["scalars"]),
            *(int(scalars[n]) for n in spec["flags"]),
            param, *(buffers[n] for n in spec["buffers"]), *(buffers[n] for n in present)]
    with param.device:  # launch on the parameter's GPU
        _cuda_kernel(kind, present, param.dtype)(*args)


# -- CPU threads -----------------------------------------------------------------------------------
PARALLEL_MIN_SIZE = 1 << 17  # elements; smaller parameters are not cut into slices
# Inside ``Optimizer.step`` parameters from this many elements up to PARALLEL_MIN_SIZE are queued
# too and handed out whole, one thread each (``_flush_cpu``): a model of many mid-sized
# parameters (the small GPT of bench_programs: 53, none over 65,536 elements) otherwise ran its
# whole update on one core while PyTorch's foreach kernels use all of them. Below this a
# parameter's update is a few microseconds of arithmetic in about a dozen ufunc calls, mostly
# GIL-bound Python: it stays in the calling thread. 2^15, not 2^12: the digits MLP's two weights
# (8,192 and 16,384 elements) dealt to two threads took its step from 0.96 to 1.13 ms (quiet,
# in-process A/B; 2^15 and 2^17 both 0.96 ms); the small GPT keeps most of its volume shared
# (its 49,152- and 65,536-element weights; only the 16,384-element ones stay in the caller).
SHARED_MIN_SIZE = 1 << 15
_pool: list = [None, None]   # [executor, pid that created it]
_pool_lock = threading.Lock()


def _cores() -> int:
    """The cores this process may run on, at most 8 (the pool's size)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _num_threads() -> int:
    """Threads a CPU update is shared among: the cores, but no more than ``am.set_num_threads``
    asked for (as PyTorch's optimizers follow ``torch.set_num_threads``; before, a one-thread
    run still handed every large update to a second thread)."""
    from ..settings import get_num_threads
    return max(1, min(_cores(), get_num_threads()))


def _executor():
    """The shared thread pool, created on first use (and again in a forked child)."""
    with _pool_lock:
        if _pool[0] is None or _pool[1] != os.getpid():
            from concurrent.futures import ThreadPoolExecutor
            _pool[0] = ThreadPoolExecutor(max_workers=max(1, _cores() - 1),
                                          thread_name_prefix="avila_ml_optim")
            _pool[1] = os.getpid()
        return _pool[0]


def _quiet_blas() -> None:
    """Stop NumPy's OpenBLAS worker threads before a CPU update is shared with the pool: after
    the backward's matrix products they spin for a while on the other cores, where the pool's
    thread then gets a time slice of a core (``cpu_accel._dnnl.stop_blas_spinning``; the next
    NumPy product restarts them). Quiet in-process A/B, the MNIST VAE's Adam step: 2.59 ->
    1.74 ms median (the whole training step 10.31 -> 9.20 ms); the step times were bimodal
    (1.6 or 4.5-6 ms) as the spinning thread happened to hold the core or not."""
    from ..cpu_accel import _dnnl
    _dnnl.quiet_blas()


def _cpu_update(cpu, param, grad, s, t, buffers: dict, scalars: dict) -> None:
    n = param.size
    k = _num_threads() if n >= PARALLEL_MIN_SIZE else 1
    arrays = (param, grad, s, t, *buffers.values())
    if k == 1 or not all(a.flags.c_contiguous for a in arrays):
        cpu(param, grad, s, t, **buffers, **scalars)
        return
    names = tuple(buffers)
    flat = [a.reshape(-1) for a in arrays]  # views: every array is C-contiguous
    bounds = [n * i // k for i in range(k + 1)]

    def run(i):
        lo, hi = bounds[i], bounds[i + 1]
        p, g, s_, t_, *bufs = (a[lo:hi] for a in flat)
        cpu(p, g, s_, t_, **dict(zip(names, bufs)), **scalars)

    _quiet_blas()
    pending = [_executor().submit(run, i) for i in range(1, k)]
    run(0)  # the calling thread takes the first slice
    for f in pending:
        f.result()


def _flush_cpu(entries) -> None:
    """Run the queued CPU updates of one optimizer step on the threads: a parameter of at least
    ``PARALLEL_MIN_SIZE`` elements is cut into one slice per thread (thread ``i`` updates slice
    ``i`` of every such parameter), a smaller one is updated whole by one thread (largest first,
    each to the thread with the least work so far). The whole step costs one hand-off to the pool
    instead of one per parameter (a hand-off is tens of microseconds; a 250k-element SGD update
    is ~100). Every update is element-wise, so the split changes no bit of the result."""
    if not entries:
        return
    k = _num_threads()
    sliced = [e for e in entries if e[1].size >= PARALLEL_MIN_SIZE]
    mine = _share_whole([e for e in entries if e[1].size < PARALLEL_MIN_SIZE], k)

    def run(i):
        for cpu, param, grad, buffers, scalars, workspace, count in mine[i]:
            s, t, *more = workspace.for_thread(i).scratch(param, count)
            bufs = dict(buffers, scratch=more[0]) if more else buffers
            cpu(param, grad, s, t, **bufs, **scalars)
        for cpu, param, grad, buffers, scalars, workspace, count in sliced:
            n = param.size
            lo, hi = n * i // k, n * (i + 1) // k
            if lo == hi:
                continue
            p = param.reshape(-1)[lo:hi]
            s, t, *more = workspace.for_thread(i).scratch(p, count)
            bufs = {name: b.reshape(-1)[lo:hi] for name, b in buffers.items()}
            if more:
                bufs["scratch"] = more[0]
            cpu(p, grad.reshape(-1)[lo:hi], s, t, **bufs, **scalars)

    busy = [i for i in range(1, k) if sliced or mine[i]]
    if busy:
        _quiet_blas()
    pending = [_executor().submit(run, i) for i in busy]
    run(0)  # the calling thread takes its own share
    for f in pending:
        f.result()


def _share_whole(entries, k: int) -> list:
    """``entries`` (queued updates of parameters updated whole) dealt to ``k`` threads: largest
    first, each to the thread with the fewest elements so far (so each thread's scratch is sized
    by its first parameter and later steps, dealt the same way, allocate nothing)."""
    mine, load = [[] for _ in range(k)], [0] * k
    for e in sorted(entries, key=lambda e: -e[1].size):
        i = load.index(min(load))
        mine[i].append(e)
        load[i] += e[1].size
    return mine


def _cuda_update_half(kind, param, grad, buffers, scalars) -> None:
    """float16 parameters on CUDA: the float32 kernel on float32 copies, results rounded back
    into the float16 parameter and state (PyTorch's fused optimizers also compute half
    parameters in float32). The CPU path rounds every operation to float16 instead, so the two
    agree to float16 rounding, not bitwise."""
    wide = {n: b.astype(np.float32) for n, b in buffers.items()}
    p32 = param.astype(np.float32)
    _launch_single(p32, grad.astype(np.float32), kind, wide, scalars)  # now: the copies are read back below
    param[...] = p32.astype(np.float16)
    for n, b in buffers.items():
        b[...] = wide[n].astype(np.float16)


# Algorithms with a compiled CPU update (float32/float64 C-contiguous NumPy arrays): one pass
# over memory split over the OpenMP team, instead of the ufunc passes below and the hand-off to
# the thread pool. In-process A/B, min of 30, alternating, on bench_optim's 4 x 250k float32
# parameters, heavily loaded 2-core AMD EPYC (load average 5-7; 2026-12-07): SGD momentum 0.9
# 664 -> 258 us (PyTorch 296 in the same process), RMSprop 1810 -> 344 us (PyTorch 838); AdamW
# 1505 -> 517 us (load average ~1.3).
_NATIVE_KINDS = ("sgd", "rmsprop", "adam")


def _native_optim():
    """The compiled updates' module (imported on first use: it binds nothing until called)."""
    from ..cpu_accel import _native_optim as mod
    return mod


def update(kind: str, param, grad, buffers: dict, scalars: dict, workspace: Workspace) -> None:
    """One in-place step of algorithm ``kind`` on the array ``param`` with gradient ``grad``.

    ``buffers`` maps state names to arrays shaped like ``param`` (updated in place; optional
    ones absent), ``scalars`` the hyper-parameters and flags of :data:`KINDS`. On a CUDA array
    this is one fused kernel launch; on the CPU a fixed sequence of ``out=`` ufunc calls using
    the scratch of ``workspace``.
    """
    spec = KINDS[kind]
    # Python floats: NumPy treats them as "weak" and computes in the parameter's dtype, as the
    # kernel does (a NumPy float64 scalar would promote a float32 update to float64)
    scalars = {n: (float(v) if n in spec["scalars"] else v) for n, v in scalars.items()}
    if backend_of(param).name == "cupy":
        if param.dtype == np.float16:
            _cuda_update_half(kind, param, grad, buffers, scalars)
            return
        if param.dtype not in (np.float32, np.float64):
            raise TypeError(f"optimizer step ({kind}): the fused CUDA update supports float16, float32 "
                            f"and float64 parameters, got {param.dtype}")
        present = tuple(n for n in spec["optional"] if n in buffers)
        arrays = (param, grad, *buffers.values())
        if MULTI_TENSOR and _batch_depth[0] and all(a.flags.c_contiguous for a in arrays):
            key = (kind, present, param.dtype.str, param.device.id, tuple(sorted(scalars.items())))
            _pending.append((key, param, grad, kind, dict(buffers), scalars))
            return
        _launch_single(param, grad, kind, buffers, scalars)
    else:
        if kind in _NATIVE_KINDS and _native_optim().step(kind, param, grad, buffers, scalars):
            return  # one compiled pass (cpu_accel/kernels/optim.c), bitwise the NumPy path's result
        extra = spec.get("cpu_scratch", 0)
        if (_batch_depth[0] and param.size >= min(SHARED_MIN_SIZE, PARALLEL_MIN_SIZE) and param.flags.c_contiguous
                and grad.flags.c_contiguous and all(b.flags.c_contiguous for b in buffers.values())
                and _num_threads() > 1):
            _cpu_pending.append((spec["cpu"], param, grad, buffers, scalars, workspace, 2 + extra))
            return
        s, t, *more = workspace.scratch(param, 2 + extra)
        if more:  # passed with the buffers so that the threaded path slices it too
            buffers = dict(buffers, scratch=more[0])
        _cpu_update(spec["cpu"], param, grad, s, t, buffers, scalars)
