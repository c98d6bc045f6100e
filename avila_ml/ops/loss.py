"""Loss functions (``torch.nn.functional``'s losses), each with reduction 'none' | 'mean' | 'sum'.

Regression losses (MSE, L1, Huber, smooth L1) are short compositions of differentiable ops.
The classification losses are ``Function`` s where it buys speed or PyTorch's exact numerics:

* ``cross_entropy`` with class indices is one fused op: log-softmax, pick and reduce in the
  forward, ``(softmax - onehot) * g * w`` in the backward; no (N, C) one-hot or gather graph.
* ``nll_loss`` picks the target log-probabilities; its backward scatters ``-g * w`` back.
* ``binary_cross_entropy`` clamps its logs at -100 and uses PyTorch's backward
  ``(x - y) / max(x (1 - x), 1e-12)``, so probabilities of exactly 0 and 1 stay finite.
* ``binary_cross_entropy_with_logits`` goes through a stable log-sigmoid,
  ``log sigmoid(x) = -(max(-x, 0) + log1p(exp(-|x|)))``: logits of +-1e4 are fine.

Every backward is written with Tensor ops (or has a Tensor-op twin used under
``create_graph``), so second derivatives work.

Class-index targets follow PyTorch: ``weight`` (C,) rescales classes, ``ignore_index``
positions contribute nothing, and ``'mean'`` divides by the summed weight of the kept targets.
Inputs may be (C,), (N, C) or (N, C, d1, ..., dk) with targets (), (N,) or (N, d1, ..., dk).
"""
from __future__ import annotations

import warnings

import numpy as np

from ..autograd.function import Function
from ..debug import host_checks
from ..amp.autocast_mode import autocast_op
from ..autograd.grad_mode import _state
from ..backends import backend_of
from ..tensor import Tensor
from .elementwise import abs as _abs, clamp, exp, log, log1p, sigmoid, sqrt, sum_to as _sum_to, where
from .indexing import IndexPutAdd
from .reduction import Softmax, _exp_fast, log_softmax, log_softmax_array, mean as _mean, sum as _sum
from .shape import reshape, unsqueeze
from ._scalar_rows import scalar_ufunc

__all__ = ["mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "cross_entropy", "nll_loss",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div",
           "cosine_embedding_loss"]


# ----------------------------------------------------------------------------- helpers
def _check_reduction(op: str, reduction, allowed=("none", "mean", "sum")) -> None:
    if reduction not in allowed:
        raise ValueError(f"{op}: {reduction!r} is not a valid value for reduction; expected one of {allowed}")


def _legacy_reduction(op: str, size_average, reduce, reduction: str) -> str:
    """PyTorch's deprecated ``size_average`` / ``reduce`` pair mapped to a ``reduction`` string."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    ret = "mean" if size_average and reduce else "sum" if reduce else "none"
    warnings.warn(f"{op}: size_average and reduce args will be deprecated, please use reduction='{ret}' instead.",
                  UserWarning, stacklevel=3)
    return ret


def _check_same_shape_weight(op: str, weight, input) -> None:
    """Per-element weights of mse/l1/huber: exactly the input's shape (as PyTorch)."""
    if weight is None:
        return
    _check_weight(op, "weight", weight, None, input)
    if tuple(weight.shape) != tuple(input.shape):
        raise ValueError(f"{op}: weight of shape {tuple(weight.shape)} and input of shape {tuple(input.shape)} must have the same size")


def _weighted_reduce(loss, weight, reduction: str, mean_by_weight: bool):
    if weight is None:
        return _reduce(loss, reduction)
    loss = loss * weight
    if reduction == "mean" and mean_by_weight:
        return _sum(loss) / _sum(weight)
    return _reduce(loss, reduction)


def _reduce(loss, reduction: str):
    if reduction == "mean":
        return _mean(loss)
    if reduction == "sum":
        return _sum(loss)
    return loss


def _check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: expected {name} to be a Tensor, got {type(t).__name__}")


def _check_pair(op: str, input, target) -> None:
    """Elementwise losses: float input and target of the same shape, dtype and device."""
    _check_tensor(op, "input", input)
    _check_tensor(op, "target", target)
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"{op}: expected a floating-point input, got {input.dtype}")
    if target.dtype != input.dtype:
        raise RuntimeError(
            f"{op}: expected target of the input's dtype {input.dtype}, got {target.dtype} "
            f"(input shape {tuple(input.shape)}, target shape {tuple(target.shape)})"
        )
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"{op}: target of shape {tuple(target.shape)} differs from input of shape "
            f"{tuple(input.shape)}; they must have the same shape (broadcasting a target is "
            f"almost always a bug)"
        )
    if target.device != input.device:
        raise RuntimeError(f"{op}: input is on {input.device} but target is on {target.device}")


def _check_weight(op: str, name: str, weight, shape, input) -> None:
    if weight is None:
        return
    _check_tensor(op, name, weight)
    if weight.device != input.device:
        raise RuntimeError(f"{op}: {name} is on {weight.device} but input is on {input.device}")
    if weight.dtype != input.dtype:
        raise RuntimeError(f"{op}: expected {name} of the input's dtype {input.dtype}, got {weight.dtype}")
    if shape is not None and tuple(weight.shape) != tuple(shape):
        raise RuntimeError(
            f"{op}: expected {name} of shape {tuple(shape)} for input of shape {tuple(input.shape)}, "
            f"got {tuple(weight.shape)}"
        )


def _check_broadcast_weight(op: str, name: str, weight, input) -> None:
    """``weight`` must broadcast to the input's shape (BCE's element weights)."""
    if weight is None:
        return
    _check_weight(op, name, weight, None, input)
    try:
        ok = np.broadcast_shapes(tuple(weight.shape), tuple(input.shape)) == tuple(input.shape)
    except ValueError:
        ok = False
    if not ok:
        raise RuntimeError(
            f"{op}: {name} of shape {tuple(weight.shape)} does not broadcast to the input shape {tuple(input.shape)}"
        )


# ------------------------------------------------------------------------ regression losses
@autocast_op("mse_loss")
def mse_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", weight=None):
    """Mean squared error (``torch.nn.functional.mse_loss``).

    Math: l_i = (x_i - y_i)^2, then 'mean' (average), 'sum' or 'none' (per element).
    With per-element ``weight`` (the input's shape) l_i is multiplied by w_i and 'mean' is
    sum_i w_i l_i / sum_i w_i. ``size_average`` / ``reduce`` are PyTorch's deprecated spelling
    of ``reduction``.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.mse_loss(am.tensor([1.0, 2.0]), am.tensor([0.0, 0.0]))
        tensor(2.5000)
    """
    op = "mse_loss"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    _check_reduction(op, reduction)
    _check_pair(op, input, target)
    _check_same_shape_weight(op, weight, input)
    d = input - target
    return _weighted_reduce(d * d, weight, reduction, mean_by_weight=True)


@autocast_op("l1_loss")
def l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", weight=None):
    """Mean absolute error (``torch.nn.functional.l1_loss``).

    Math: l_i = |x_i - y_i|; the gradient is sign(x_i - y_i) (0 where equal). With
    per-element ``weight``, 'mean' is sum_i w_i l_i / sum_i w_i (as PyTorch).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.l1_loss(am.tensor([1.0, -2.0]), am.tensor([0.0, 0.0]), reduction="sum")
        tensor(3.)
    """
    op = "l1_loss"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    _check_reduction(op, reduction)
    _check_pair(op, input, target)
    _check_same_shape_weight(op, weight, input)
    return _weighted_reduce(_abs(input - target), weight, reduction, mean_by_weight=True)


@autocast_op("huber_loss")
def huber_loss(input, target, reduction: str = "mean", delta: float = 1.0, weight=None):
    """Huber loss (``torch.nn.functional.huber_loss``).

    Math: with d = x - y, l = d^2 / 2 where |d| < delta, else delta (|d| - delta / 2):
    quadratic near 0, linear (slope +-delta) in the tails. With per-element ``weight``,
    'mean' is the plain mean of w_i l_i (PyTorch's convention for this loss).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.huber_loss(am.tensor([0.5, 3.0]), am.tensor([0.0, 0.0]), reduction="none")
        tensor([0.1250, 2.5000])
    """
    op = "huber_loss"
    _check_reduction(op, reduction)
    _check_pair(op, input, target)
    _check_same_shape_weight(op, weight, input)
    if not delta > 0:
        raise RuntimeError(f"{op}: huber_loss does not support non-positive values for delta, got {delta}")
    loss = RobustLoss.apply(input, target, float(delta), "huber")
    return _weighted_reduce(loss, weight, reduction, mean_by_weight=False)


@autocast_op("smooth_l1_loss")
def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0):
    """Smooth L1 loss (``torch.nn.functional.smooth_l1_loss``).

    Math: with d = x - y, l = d^2 / (2 beta) where |d| < beta, else |d| - beta / 2
    (Huber divided by beta); beta = 0 is the L1 loss.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.smooth_l1_loss(am.tensor([0.5, 3.0]), am.tensor([0.0, 0.0]), reduction="none")
        tensor([0.1250, 2.5000])
    """
    op = "smooth_l1_loss"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    _check_reduction(op, reduction)
    _check_pair(op, input, target)
    if beta < 0:
        raise RuntimeError(f"{op}: smooth_l1_loss does not support negative values for beta, got {beta}")
    if beta == 0:
        return _reduce(_abs(input - target), reduction)
    return _reduce(RobustLoss.apply(input, target, float(beta), "smooth_l1"), reduction)


class RobustLoss(Function):
    """The elementwise Huber (``kind="huber"``, threshold ``delta``) or smooth-L1 (``"smooth_l1"``,
    threshold ``beta``) loss of ``d = x - y``, with PyTorch's backward kernels: dl/dd is
    ``-s`` for ``d <= -c``, ``s`` for ``d >= c``, else ``d s / c`` (Huber: ``s = c``, and the
    middle is ``d``; smooth-L1: ``s = 1``), so an infinite ``d`` has a finite gradient and a NaN
    a NaN one; dl/dy = -dl/dx."""

    def forward(self, x, y, c, kind):
        self.save_inputs(0, 1)
        self.c, self.kind = c, kind
        xp = backend_of(x).xp
        d = x - y
        ad = xp.abs(d)
        t = d.dtype.type
        if kind == "huber":
            return xp.where(ad < c, t(0.5) * d * d, t(c) * (ad - t(0.5 * c)))
        return xp.where(ad < c, t(0.5 / c) * d * d, ad - t(0.5 * c))

    def backward(self, g):
        x, y = self.saved_inputs
        c = self.c
        d = x - y
        da = d.array
        slope = c if self.kind == "huber" else 1.0
        inner = d * g if self.kind == "huber" else d * g * (1.0 / c)
        gd = where(da <= -c, -slope * g, where(da >= c, slope * g, inner))
        nx, ny = self.needs_input_grad
        return ((_sum_to(gd, x.shape) if nx else None), (_sum_to(-gd, y.shape) if ny else None))


# ------------------------------------------------------------------ class-index losses
def _class_count(op: str, input) -> int:
    _check_tensor(op, "input", input)
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"{op}: expected a floating-point input, got {input.dtype}")
    if input.ndim == 0:
        raise ValueError(f"{op}: expected input of shape (C,), (N, C) or (N, C, d1, ..., dk), got a 0-d tensor")
    return input.shape[0] if input.ndim == 1 else input.shape[1]


def _check_index_target(op: str, input, target, ignore_index: int, c: int):
    """Check a class-index target against input; returns (kept mask or None when every
    position is kept, target with ignored positions set to 0) as arrays."""
    if target.dtype.is_floating_point or target.array.dtype.kind not in "iu":
        raise RuntimeError(
            f"{op}: expected target of an integer dtype (class indices) for input of shape "
            f"{tuple(input.shape)}, got target of dtype {target.dtype} and shape {tuple(target.shape)}"
        )
    expected = () if input.ndim == 1 else (input.shape[0],) + tuple(input.shape[2:])
    if tuple(target.shape) != expected:
        if input.ndim >= 2 and target.ndim >= 1 and target.shape[0] != input.shape[0]:
            raise ValueError(
                f"{op}: Expected input batch_size ({input.shape[0]}) to match target batch_size "
                f"({target.shape[0]}); input shape {tuple(input.shape)}, target shape {tuple(target.shape)}"
            )
        raise RuntimeError(
            f"{op}: expected target of shape {expected} for input of shape {tuple(input.shape)}, "
            f"got target of shape {tuple(target.shape)}"
        )
    if target.device != input.device:
        raise RuntimeError(f"{op}: input is on {input.device} but target is on {target.device}")
    t = target.array
    xp = backend_of(t).xp
    if t.size == 0:
        return None, t.astype(np.int64, copy=False)
    if not host_checks(t):  # CUDA without sync checks: mask on the device, read nothing back
        valid = t != ignore_index
        return valid, xp.where(valid, t, 0).astype(np.int64, copy=False)
    lo, hi = int(t.min()), int(t.max())
    if lo >= 0 and hi < c and not lo <= ignore_index <= hi:
        return None, t.astype(np.int64, copy=False)  # the usual case: every target is a kept class
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= c))
    if bool(bad.any()):
        first = int(t[bad].reshape(-1)[0])
        raise IndexError(
            f"{op}: Target {first} is out of bounds: expected class indices in [0, {c}) or "
            f"ignore_index={ignore_index} (input shape {tuple(input.shape)}, target shape {tuple(target.shape)})"
        )
    safe = xp.where(valid, t, 0).astype(np.int64, copy=False)
    return valid, safe


def _target_key(safe, xp):
    """Index arrays that pick ``x[n, safe[n, d...], d...]`` from (N, C, d1..dk): target-shaped."""
    k = safe.ndim
    parts = []
    for j in range(k):
        shape = [1] * k
        shape[j] = safe.shape[j]
        parts.append(xp.arange(safe.shape[j]).reshape(shape))
    return (parts[0], safe) + tuple(parts[1:])


def _target_weights(weight, valid, safe, dtype):
    """Per-position weight w[target], 0 at ignored positions (an array of the target's shape)."""
    if weight is None:
        return backend_of(safe).xp.ones(safe.shape, dtype) if valid is None else valid.astype(dtype)
    return weight[safe] if valid is None else weight[safe] * valid


def _mean_scale(w_t, xp):
    """(sum of kept weights, per-position factor of the 'mean' reduction)."""
    total = w_t.sum()
    # all targets ignored: the loss is 0/0 = nan (as PyTorch) but the gradient stays 0
    return total, w_t / xp.where(total == 0, w_t.dtype.type(1), total)


class NLLLoss(Function):
    """The op behind :func:`nll_loss` (PyTorch's ``nll_loss_nd``): -w[t] x[n, t] per position, reduced.

    Math: ``x`` (N, C, d...) holds log-probabilities, ``safe`` the target indices (ignored
    positions replaced by 0) and ``w_t`` the per-position weights (0 where ignored). The
    backward scatters -g w_t to the picked positions (an ``IndexPutAdd``, itself differentiable).

    Example:
        >>> import numpy as np, avila_ml as am
        >>> from avila_ml.ops.loss import NLLLoss
        >>> NLLLoss.apply(am.tensor([[-0.5, -1.0]]), np.array([1]), np.array([1.0], np.float32), "sum")
        tensor(1.)
    """

    def forward(self, x, safe, w_t, reduction):
        xp = backend_of(x).xp
        self.in_shape = x.shape
        self.key = _target_key(safe, xp)
        loss = -x[self.key] * w_t
        self.reduction = reduction
        if reduction == "none":
            self.scale = w_t
            return loss
        if reduction == "sum":
            self.scale = w_t
            return xp.asarray(loss.sum())
        total, self.scale = _mean_scale(w_t, xp)
        with np.errstate(invalid="ignore", divide="ignore"):
            return xp.asarray(loss.sum() / total)

    def backward(self, g):
        gs = g * Tensor._wrap(-self.scale)
        return IndexPutAdd.apply(gs, self.in_shape, self.key, True)


# Without the compiled row kernels (cpu_accel/_native_softmax.py, which split (N, C) rows over
# the OpenMP team themselves): cross-entropy logits from this many elements (2-d, float32,
# oneDNN's exp) are split into row blocks on the CPU threads, forward and backward: only the exp
# of the unsplit path used the second core (as a oneDNN team), its max, shift, row sums, log and
# scaling passes ran on one. PyTorch's log_softmax splits its rows over its threads too.
_ROWS_SPLIT_MIN = 1 << 18


# The compiled kernels from this many logits: below, their calls cost more than they save (quiet
# AMD EPYC, 2 threads, cross-entropy fwd+bwd, NumPy vs kernels: (128, 10) 149 vs 154 us, (512,
# 100) 537 vs 262 us, (2048, 512) 2.19 vs 1.26 ms)
_NATIVE_MIN = 1 << 12


def _native_log_softmax(x):
    """log_softmax(x, 1) of (N, C) logits by the compiled row kernel (float32/float64, C-contiguous
    NumPy, at least ``_NATIVE_MIN`` of them), else None."""
    if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.size >= _NATIVE_MIN):
        return None
    from ..cpu_accel import _native_softmax
    return _native_softmax.log_softmax_forward(x)


def _accel_log_softmax(x):
    """log_softmax(x, 1) with oneDNN's exp when that applies to ``x`` (a large float32 NumPy
    array, oneDNN installed and enabled), else None: then the single-exp NumPy path is faster.
    A large 2-d ``x`` is done in row blocks on the CPU threads (:func:`_row_blocks`), each row
    exactly as in one block."""
    from ..cpu_accel import _eltwise
    if not _eltwise.usable(x, min_size=_eltwise.MIN_SIZE["exp"]):
        return None
    blocks = _row_blocks(x)
    if len(blocks) == 1:
        return log_softmax_array(x, 1)
    out = np.empty_like(x)
    _on_threads(lambda b: log_softmax_array(x[b], 1, out=out[b]), blocks)
    return out


def _row_blocks(x) -> list:
    """Row slices of a 2-d C-contiguous ``x``, one per CPU thread when it has at least
    ``_ROWS_SPLIT_MIN`` elements (else one: ``[slice(None)]``)."""
    from ._cpu_threads import batch_slices
    if x.ndim != 2 or not x.flags.c_contiguous:
        return [slice(None)]
    return batch_slices(x.shape[0], x.size, _ROWS_SPLIT_MIN)


def _on_threads(fn, blocks) -> None:
    """``fn(b)`` for every row block ``b`` at once on the CPU threads, each block's oneDNN calls
    on one OpenMP thread (the blocks already share the cores; a full team per block would
    oversubscribe them), under the caller's ``np.errstate`` (a per-thread setting: the pool's
    threads would otherwise warn where the caller silenced NumPy, e.g. inf - inf of +inf logits)."""
    from ._cpu_threads import run_parts
    from ..cpu_accel._matmul import one_omp_thread
    err = np.geterr()

    def part(b):
        with one_omp_thread(), np.errstate(**err):
            fn(b)
    run_parts(part, blocks, limit_blas=False)


class CrossEntropy(Function):
    """The op behind :func:`cross_entropy` with class indices: fused log-softmax + NLL over
    the class dim 1 of (N, C, d...) (PyTorch's ``cross_entropy_loss``). (N, C) NumPy logits take
    the compiled row kernels (log-softmax forward, then ``softmax - onehot`` scaled in one pass
    backward), others the NumPy/oneDNN passes.

    Math: forward l = -w[t] (x_t - m - log sum_c exp(x_c - m)), m = max_c x_c; backward
    dx = (softmax(x) - onehot(t)) g w[t] (divided by the kept weight sum for 'mean').

    Example:
        >>> import numpy as np, avila_ml as am
        >>> from avila_ml.ops.loss import CrossEntropy
        >>> CrossEntropy.apply(am.tensor([[0.0, 0.0]]), np.array([1]), np.array([1.0], np.float32), "mean")
        tensor(0.6931)
    """

    def forward(self, x, safe, w_t, reduction):
        xp = backend_of(x).xp
        self.key = key = _target_key(safe, xp)
        self.save_inputs(0)
        # large float32 on NumPy: the log-softmax with oneDNN's exp (ops/reduction.py), its exp
        # taken again in the backward (cheap there); None where it does not apply
        self.p = None
        with np.errstate(invalid="ignore", divide="ignore"):  # inf/nan logits give nan, silently (PyTorch)
            # (N, C) logits on NumPy: the compiled log-softmax rows (cpu_accel/_native_softmax.py);
            # the backward then takes its softmax - onehot in one pass too
            self.logp = _native_log_softmax(x)
            if self.logp is None:
                self.logp = _accel_log_softmax(x)
            if self.logp is not None:
                loss = -self.logp[key] * w_t
            else:
                m = x.max(axis=1, keepdims=True)
                z = x - m
                p = xp.exp(z)
                s = p.sum(axis=1, keepdims=True)
                p /= s
                loss = (xp.log(s[(key[0], 0) + key[2:]]) - z[key]) * w_t
                self.p = p
            if reduction == "none":
                self.scale = w_t
                return loss
            if reduction == "sum":
                self.scale = w_t
                return xp.asarray(loss.sum())
            total, self.scale = _mean_scale(w_t, xp)
            return xp.asarray(loss.sum() / total)

    def backward(self, g):
        if not _state.enabled:
            gs = g.array * self.scale
            if self.p is None and self.logp.ndim == 2 and self.logp.size >= _NATIVE_MIN:
                from ..cpu_accel import _native_softmax
                dx = _native_softmax.cross_entropy_backward(self.logp, gs, self.key[1])
                if dx is not None:
                    return Tensor._wrap(dx)
            blocks = _row_blocks(self.logp) if self.p is None else [slice(None)]
            if len(blocks) > 1:  # softmax = exp(logp) and its scaling per row block, on the threads
                dx = np.empty_like(self.logp)
                _on_threads(lambda b: np.multiply(_exp_fast(self.logp[b]), gs[b, None], out=dx[b]), blocks)
            elif self.p is None:  # a fresh array: scaled in place
                dx = _exp_fast(self.logp)
                dx *= gs[:, None]
            else:
                dx = self.p * gs[:, None]
            dx[self.key] -= gs
            return Tensor._wrap(dx)
        # create_graph: softmax(x) as an op, so the result differentiates again
        (x,) = self.saved_inputs
        xp = backend_of(x.array).xp
        onehot = xp.zeros(x.shape, dtype=x.array.dtype)
        onehot[self.key] = 1
        gs = g * Tensor._wrap(self.scale)
        return (Softmax.apply(x, 1) - Tensor._wrap(onehot)) * unsqueeze(gs, 1)


def _prepare_index_loss(op, input, target, weight, ignore_index, reduction):
    _check_reduction(op, reduction)
    c = _class_count(op, input)
    _check_tensor(op, "target", target)
    _check_weight(op, "weight", weight, (c,), input)
    if weight is not None and weight.requires_grad and _state.enabled:
        raise RuntimeError(f"{op}: not differentiable with respect to 'weight' for class-index targets "
                           f"(as in PyTorch); pass weight.detach()")
    valid, safe = _check_index_target(op, input, target, ignore_index, c)
    w_t = _target_weights(None if weight is None else weight.array, valid, safe, input.array.dtype)
    if input.ndim == 1:
        input = unsqueeze(input, 0)
        safe, w_t = safe.reshape(1), w_t.reshape(1)
        valid = None if valid is None else valid.reshape(1)
    return input, c, valid, safe, w_t


def _squeeze_unbatched(loss, was_1d: bool, reduction: str):
    return reshape(loss, ()) if was_1d and reduction == "none" else loss


@autocast_op("nll_loss")
def nll_loss(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
             reduction: str = "mean"):
    """Negative log-likelihood of class indices given log-probabilities (``torch.nn.functional.nll_loss``).

    Math: l_n = -w[t_n] x[n, t_n] (0 where t_n == ignore_index); 'mean' is
    sum_n l_n / sum_n w[t_n] over the kept positions, 'sum' the plain sum.
    ``input`` is (C,), (N, C) or (N, C, d1..dk) with ``target`` (), (N,) or (N, d1..dk).

    Example:
        >>> import avila_ml as am
        >>> logp = am.tensor([[-0.5, -1.0], [-2.0, -0.1]])
        >>> am.nn.functional.nll_loss(logp, am.tensor([0, 1]))
        tensor(0.3000)
    """
    op = "nll_loss"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    was_1d = isinstance(input, Tensor) and input.ndim == 1
    x, _c, _valid, safe, w_t = _prepare_index_loss(op, input, target, weight, ignore_index, reduction)
    return _squeeze_unbatched(NLLLoss.apply(x, safe, w_t, reduction), was_1d, reduction)


@autocast_op("cross_entropy")
def cross_entropy(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0):
    """Cross entropy between logits and class indices or class probabilities
    (``torch.nn.functional.cross_entropy``).

    Math: with log p = log_softmax(x) over the class dim (computed stably, so logits of
    +-1e4 are fine),

    * class indices t: l_n = -w[t_n] log p[n, t_n]; ignored positions give 0 and 'mean'
      divides by the summed weight of the kept targets. With label smoothing eps,
      l = (1 - eps) l_nll + eps / C * (-sum_c w_c log p[n, c]) (same normalisation);
    * class probabilities q (same shape as the input): l_n = -sum_c w_c q'[n, c] log p[n, c]
      with q' = (1 - eps) q + eps / C; 'mean' divides by the number of positions.

    Shapes: input (C,), (N, C) or (N, C, d1..dk) — e.g. voxel-wise segmentation.

    Example:
        >>> import avila_ml as am
        >>> logits = am.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> am.nn.functional.cross_entropy(logits, am.tensor([0, 2]))
        tensor(0.6691)
    """
    op = "cross_entropy"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    _check_reduction(op, reduction)
    c = _class_count(op, input)
    _check_tensor(op, "target", target)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if target.dtype.is_floating_point:
        return _cross_entropy_probs(input, target, weight, ignore_index, reduction, label_smoothing, c)
    was_1d = input.ndim == 1
    x, c, valid, safe, w_t = _prepare_index_loss(op, input, target, weight, ignore_index, reduction)
    if label_smoothing == 0.0:
        return _squeeze_unbatched(CrossEntropy.apply(x, safe, w_t, reduction), was_1d, reduction)
    logp = log_softmax(x, 1)
    nll = NLLLoss.apply(logp, safe, w_t, reduction)
    wshape = (1, c) + (1,) * (x.ndim - 2)
    per_class = logp * reshape(weight, wshape) if weight is not None else logp
    smooth = -_sum(per_class, 1)
    xp = backend_of(x.array).xp
    if valid is not None:
        smooth = smooth * Tensor._wrap(valid.astype(x.array.dtype))
    if reduction == "mean":
        total = w_t.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            smooth = _sum(smooth) / Tensor._wrap(xp.asarray(total))
    elif reduction == "sum":
        smooth = _sum(smooth)
    loss = (1.0 - label_smoothing) * nll + smooth * (label_smoothing / c)
    return _squeeze_unbatched(loss, was_1d, reduction)


def _cross_entropy_probs(input, target, weight, ignore_index, reduction, label_smoothing, c):
    op = "cross_entropy"
    if tuple(target.shape) != tuple(input.shape):
        raise RuntimeError(
            f"{op}: a floating-point target holds class probabilities and must have the input's "
            f"shape {tuple(input.shape)}, got {tuple(target.shape)} (for class indices use an integer target)"
        )
    if target.dtype != input.dtype:
        raise RuntimeError(f"{op}: expected probability target of dtype {input.dtype}, got {target.dtype}")
    if target.device != input.device:
        raise RuntimeError(f"{op}: input is on {input.device} but target is on {target.device}")
    if ignore_index >= 0:
        raise RuntimeError(f"{op}: ignore_index is not supported for floating point target (got {ignore_index})")
    _check_weight(op, "weight", weight, (c,), input)
    dim = 0 if input.ndim == 1 else 1
    logp = log_softmax(input, dim)
    q = target if label_smoothing == 0.0 else target * (1.0 - label_smoothing) + label_smoothing / c
    if weight is not None:
        q = q * (weight if input.ndim == 1 else reshape(weight, (1, c) + (1,) * (input.ndim - 2)))
    return _reduce(-_sum(logp * q, dim), reduction)


# --------------------------------------------------------------------------- binary losses
def _log1p_array(a, xp):
    """``log1p`` of an array: float32 NumPy arrays by the vectorised formula of
    ``backends/_log1p_float32.py`` (NumPy's float32 log1p is a scalar loop, 4x slower)."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        from ..backends._log1p_float32 import log1p as log1p32
        return log1p32(a)
    return xp.log1p(a)


def _max_into(a, value, xp):
    """``a = max(a, value)`` in place for a scalar ``value`` of a's dtype: on NumPy arrays as rows
    against a cached row of ``value`` (``ops/_scalar_rows.py``: NumPy's SIMD loop, bitwise the
    scalar call's result; one thread, (128, 784) float32: 21 vs 73 us)."""
    if type(a) is np.ndarray:
        return scalar_ufunc(np.maximum, a, a.dtype.type(value), a)
    return xp.maximum(a, a.dtype.type(value), out=a)


def _clamped_log(a, xp):
    """max(log a, -100) on arrays: log 0 = -inf becomes -100 (PyTorch's BCE clamp)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _max_into(xp.log(a), -100, xp)


class BinaryCrossEntropy(Function):
    """The elementwise op behind :func:`binary_cross_entropy` (PyTorch's ``binary_cross_entropy``).

    Math: l = -(y max(log x, -100) + (1 - y) max(log(1 - x), -100));
    dl/dx = (x - y) / max(x (1 - x), 1e-12), dl/dy = max(log(1 - x), -100) - max(log x, -100).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.loss import BinaryCrossEntropy
        >>> BinaryCrossEntropy.apply(am.tensor([0.0, 0.5]), am.tensor([1.0, 1.0]))
        tensor([100.0000,   0.6931])
    """

    def forward(self, x, y):
        xp = backend_of(x).xp
        with np.errstate(divide="ignore", invalid="ignore"):
            log1mx = _max_into(_log1p_array(-x, xp), -100, xp)
        logx = _clamped_log(x, xp)
        self.save_inputs(0, 1)
        # (y - 1) log1mx - y logx, in place (kept in this form: y = 1 gives exactly -logx)
        log1mx *= y - 1
        logx *= y
        log1mx -= logx
        return log1mx

    def backward(self, g):
        x, y = self.saved_inputs
        nx, ny = self.needs_input_grad
        ga, xa, ya = g.array, x.array, y.array
        if not _state.enabled and ga.dtype == xa.dtype == ya.dtype and ga.shape == xa.shape == ya.shape:
            # no graph of the gradient: the same formulas on raw arrays
            xp = backend_of(xa).xp
            gx = gy = None
            if nx:
                d = xp.subtract(1, xa, dtype=xa.dtype)
                d *= xa
                _max_into(d, 1e-12, xp)
                gx = xp.subtract(xa, ya)
                gx /= d
                gx *= ga
                gx = Tensor._wrap(gx)
            if ny:
                with np.errstate(divide="ignore", invalid="ignore"):
                    a = _max_into(_log1p_array(-xa, xp), -100, xp)
                    a -= _clamped_log(xa, xp)
                a *= ga
                gy = Tensor._wrap(a)
            return gx, gy
        gx = gy = None
        if nx:
            # PyTorch's form: finite at x = 0 and x = 1
            gx = g * (x - y) / clamp(x * (1 - x), min=1e-12)
        if ny:
            with np.errstate(divide="ignore", invalid="ignore"):
                gy = g * (clamp(log1p(-x), min=-100) - clamp(log(x), min=-100))
        return gx, gy


@autocast_op("binary_cross_entropy")
def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction: str = "mean"):
    """Binary cross entropy on probabilities (``torch.nn.functional.binary_cross_entropy``).

    Math: l_i = -w_i (y_i log x_i + (1 - y_i) log(1 - x_i)) with each log clamped at -100,
    so x = 0 or 1 gives a finite loss; dl/dx = w (x - y) / max(x (1 - x), 1e-12).
    ``input`` must lie in [0, 1]; ``weight`` broadcasts to the input's shape.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.binary_cross_entropy(am.tensor([0.0, 0.5]), am.tensor([1.0, 1.0]), reduction="none")
        tensor([100.0000,   0.6931])
    """
    op = "binary_cross_entropy"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    _check_reduction(op, reduction)
    _check_pair(op, input, target)
    _check_broadcast_weight(op, "weight", weight, input)
    x = input.array
    if x.size and host_checks(x) and not bool(((x >= 0) & (x <= 1)).all()):
        raise RuntimeError(f"{op}: all elements of input should be between 0 and 1 (input shape {tuple(input.shape)})")
    y = target.array
    if y.size and host_checks(y) and not bool(((y >= 0) & (y <= 1)).all()):  # NaN/inf too, as PyTorch
        raise RuntimeError(f"{op}: all elements of target should be between 0 and 1 (target shape {tuple(target.shape)})")
    loss = BinaryCrossEntropy.apply(input, target)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


class LogSigmoid(Function):
    """Stable log-sigmoid, the core of :func:`binary_cross_entropy_with_logits`
    (``torch.nn.functional.logsigmoid``).

    Math: log sigmoid(x) = -(max(-x, 0) + log1p(exp(-|x|))), finite for any finite x;
    d/dx = sigmoid(-x).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.loss import LogSigmoid
        >>> LogSigmoid.apply(am.tensor([-1e4, 0.0, 1e4]))
        tensor([-1.0000e+04, -6.9315e-01, -0.0000e+00])
    """

    def forward(self, x):
        xp = backend_of(x).xp
        self.save_inputs(0)
        out = xp.log1p(xp.exp(-xp.abs(x)))
        out += xp.maximum(-x, x.dtype.type(0))
        return xp.negative(out, out=out)

    def backward(self, g):
        (x,) = self.saved_inputs
        return g * sigmoid(-x)


@autocast_op("binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction: str = "mean", pos_weight=None):
    """Sigmoid + binary cross entropy in one stable expression
    (``torch.nn.functional.binary_cross_entropy_with_logits``).

    Math: l_i = w_i ((1 - y_i) x_i - (1 + (p - 1) y_i) log sigmoid(x_i)), with
    log sigmoid(x) = -(max(-x, 0) + log1p(exp(-|x|))); ``pos_weight`` p (broadcast over the
    last, class dim) weighs the positive term. Gradient: w ((1 + (p-1) y) sigmoid(x) - p y).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.binary_cross_entropy_with_logits(am.tensor([1e4, -1e4]), am.tensor([0.0, 0.0]), reduction="none")
        tensor([10000.,     0.])
    """
    op = "binary_cross_entropy_with_logits"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    _check_reduction(op, reduction)
    _check_pair(op, input, target)
    _check_broadcast_weight(op, "weight", weight, input)
    _check_broadcast_weight(op, "pos_weight", pos_weight, input)
    log_sig = LogSigmoid.apply(input)
    if pos_weight is None:
        loss = (1 - target) * input - log_sig
    else:
        loss = (1 - target) * input - (1 + (pos_weight - 1) * target) * log_sig
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


# ------------------------------------------------------------------------------ others
@autocast_op("kl_div")
def kl_div(input, target, size_average=None, reduce=None, reduction: str = "mean", log_target: bool = False):
    """Kullback-Leibler divergence with ``input`` given as log-probabilities
    (``torch.nn.functional.kl_div``).

    Math: l_i = y_i (log y_i - x_i) (taken as 0 where y_i = 0), or with ``log_target``
    l_i = exp(y_i) (y_i - x_i). 'batchmean' divides the sum by the batch size (the true KL
    divergence per sample); 'mean' divides by the number of elements (as PyTorch, with its
    warning).

    Example:
        >>> import avila_ml as am
        >>> logq = am.log(am.tensor([[0.5, 0.5]]))
        >>> am.nn.functional.kl_div(logq, am.tensor([[1.0, 0.0]]), reduction="batchmean")
        tensor(0.6931)
    """
    op = "kl_div"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    _check_reduction(op, reduction, ("none", "mean", "sum", "batchmean"))
    _check_pair(op, input, target)
    if reduction == "mean":
        warnings.warn(
            "kl_div: reduction 'mean' divides the total loss by both the batch size and the support "
            "size; 'batchmean' divides only by the batch size and matches the KL divergence's "
            "definition. 'mean' will change to behave as 'batchmean' in PyTorch's next major release.",
            UserWarning, stacklevel=2,
        )
    if log_target:
        loss = exp(target) * (target - input)
    else:
        zero = target.array == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            xlogy = where(zero, 0.0, target * log(where(zero, 1.0, target)))
        loss = xlogy - target * input
    if reduction == "batchmean":
        n = input.shape[0] if input.ndim else 1
        return _sum(loss) / n
    return _reduce(loss, reduction)


@autocast_op("cosine_embedding_loss")
def cosine_embedding_loss(input1, input2, target, margin: float = 0.0, size_average=None, reduce=None,
                          reduction: str = "mean"):
    """Cosine embedding loss (``torch.nn.functional.cosine_embedding_loss``).

    Math: with cos_n = <a_n, b_n> / sqrt((|a_n|^2 + 1e-12)(|b_n|^2 + 1e-12)),
    l_n = 1 - cos_n where y_n = 1 and max(0, cos_n - margin) where y_n = -1.
    Inputs are (N, D) with target (N,), or (D,) with a 0-d target.

    Example:
        >>> import avila_ml as am
        >>> a = am.tensor([[1.0, 0.0], [1.0, 0.0]]); b = am.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> am.nn.functional.cosine_embedding_loss(a, b, am.tensor([1, -1]), reduction="none")
        tensor([1., 1.])
    """
    op = "cosine_embedding_loss"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    _check_reduction(op, reduction)
    _check_tensor(op, "input1", input1)
    _check_tensor(op, "input2", input2)
    _check_tensor(op, "target", target)
    if not input1.dtype.is_floating_point or input2.dtype != input1.dtype:
        raise RuntimeError(f"{op}: expected floating-point inputs of one dtype, got {input1.dtype} and {input2.dtype}")
    if tuple(input1.shape) != tuple(input2.shape):
        raise RuntimeError(f"{op}: input1 of shape {tuple(input1.shape)} and input2 of shape {tuple(input2.shape)} differ")
    if input2.device != input1.device or target.device != input1.device:
        raise RuntimeError(f"{op}: expected input1, input2 and target on one device, got {input1.device}, {input2.device}, {target.device}")
    if input1.ndim not in (1, 2):
        raise RuntimeError(f"{op}: expected inputs of shape (N, D) or (D,), got {tuple(input1.shape)}")
    expected = tuple(input1.shape[:-1])
    if tuple(target.shape) != expected:
        raise RuntimeError(
            f"{op}: expected target of shape {expected} for inputs of shape {tuple(input1.shape)}, "
            f"got {tuple(target.shape)}"
        )
    eps = 1e-12
    prod = _sum(input1 * input2, -1)
    mag1 = _sum(input1 * input1, -1) + eps
    mag2 = _sum(input2 * input2, -1) + eps
    cos = prod / sqrt(mag1 * mag2)
    t = target.array
    pos = where(t == 1, 1 - cos, 0.0)
    neg = where(t == -1, clamp(cos - margin, min=0.0), 0.0)
    return _reduce(pos + neg, reduction)
