"""Softmax, log-softmax and cross-entropy over the last axis through the compiled kernels
(``kernels/softmax.c``): each row's max, exponentials, sum and scaling in one thread while the row
is in cache, rows split over the OpenMP team, so an array is read once and written once; the
exponentials by a vectorised polynomial (within 1.5 ulps; ``exp`` below exposes it for tests).

Each wrapper takes C-contiguous float32/float64 NumPy arrays with the softmax axis last and
returns the result, or None where the kernels do not apply (not built, switched off, another
dtype or layout): the caller (``ops/reduction.py``, ``ops/loss.py``) then runs its NumPy formula,
which stays the reference in the tests. Results are PyTorch's: a row holding a NaN or +inf, or
only -inf, is NaN throughout.

PyTorch counterparts: ``torch.softmax``, ``torch.log_softmax`` and their backward kernels
(``_softmax_backward_data``, ``_log_softmax_backward_data``), and the backward of
``torch.nn.functional.cross_entropy`` for (N, C) logits.
"""
from __future__ import annotations

import numpy as np

from . import _native
from ._native import COUNT, PTR, THREADS

__all__ = ["exp", "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
           "cross_entropy_backward", "attention_probs"]

_native.register("exp", PTR, PTR, COUNT, THREADS)
_native.register("softmax_fwd", PTR, PTR, COUNT, COUNT, THREADS)
_native.register("log_softmax_fwd", PTR, PTR, COUNT, COUNT, THREADS)
_native.register("softmax_bwd", PTR, PTR, PTR, COUNT, COUNT, THREADS)
_native.register("log_softmax_bwd", PTR, PTR, PTR, COUNT, COUNT, THREADS)
_native.register("ce_bwd", PTR, PTR, PTR, PTR, COUNT, COUNT, THREADS)
_native.register("attn_probs", PTR, PTR, COUNT, COUNT, COUNT, COUNT, COUNT, COUNT, THREADS)


def _rows_call(name, inputs, out):
    """Run kernel ``name`` over the rows of ``inputs`` (same shape, last axis the row) into
    ``out``; ``out`` or None where the kernel does not apply."""
    if out.ndim == 0 or out.size == 0:
        return None
    fn = _native.kernel(name, *inputs, out)
    if fn is None:
        return None
    cols = out.shape[-1]
    fn(*[_native.addr(a) for a in (*inputs, out)], out.size // cols, cols, _native.threads_for(out.size))
    return out


def _empty_like(x):
    return np.empty(x.shape, x.dtype) if isinstance(x, np.ndarray) else None


def exp(x):
    """``exp(x)`` of a float32/float64 NumPy array by the kernels' polynomial (the one the
    softmax kernels use), or None where the kernels do not apply.

    Math: ``e^x = 2^n e^r``, ``n = round(x / ln 2)``, ``e^r`` by a polynomial on
    ``|r| <= ln(2) / 2``; NaN stays NaN, overflow gives +inf, underflow 0. PyTorch: ``torch.exp``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_softmax
        >>> y = _native_softmax.exp(np.array([0.0, 1.0, -np.inf], np.float32))
        >>> y is None or np.allclose(y, [1.0, np.e, 0.0])
        True
    """
    out = _empty_like(x)
    fn = None if out is None else _native.kernel("exp", x, out)
    if fn is None:
        return None
    _native.call(fn, (x, out))
    return out


def softmax_forward(x):
    """Softmax over the last axis of ``x``, or None where the kernels do not apply.

    Math: ``y = exp(x - m) / sum(exp(x - m))``, ``m`` the row maximum. PyTorch: ``torch.softmax(x, -1)``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_softmax
        >>> y = _native_softmax.softmax_forward(np.zeros((1, 4), np.float32))
        >>> y is None or np.allclose(y, 0.25)
        True
    """
    out = _empty_like(x)
    return None if out is None else _rows_call("softmax_fwd", (x,), out)


def log_softmax_forward(x, out=None):
    """Log-softmax over the last axis of ``x`` (into ``out`` when given), or None.

    Math: ``y = x - m - log(sum(exp(x - m)))``. PyTorch: ``torch.log_softmax(x, -1)``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_softmax
        >>> y = _native_softmax.log_softmax_forward(np.array([[1e4, 1e4]], np.float32))
        >>> y is None or np.allclose(y, -np.log(2))
        True
    """
    out = _empty_like(x) if out is None else out
    return None if out is None else _rows_call("log_softmax_fwd", (x,), out)


def softmax_backward(g, y):
    """Softmax's input gradient over the last axis from its output ``y``, or None.

    Math: ``dx = y * (g - sum(g * y))``. PyTorch: ``torch.ops.aten._softmax_backward_data``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_softmax
        >>> dx = _native_softmax.softmax_backward(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]))
        >>> dx is None or np.allclose(dx, [[0.25, -0.25]])
        True
    """
    out = _empty_like(y)
    return None if out is None else _rows_call("softmax_bwd", (g, y), out)


def log_softmax_backward(g, y):
    """Log-softmax's input gradient over the last axis from its output ``y``, or None.

    Math: ``dx = g - exp(y) * sum(g)``. PyTorch: ``torch.ops.aten._log_softmax_backward_data``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_softmax
        >>> y = np.log(np.array([[0.5, 0.5]]))
        >>> dx = _native_softmax.log_softmax_backward(np.array([[1.0, 0.0]]), y)
        >>> dx is None or np.allclose(dx, [[0.5, -0.5]])
        True
    """
    out = _empty_like(y)
    return None if out is None else _rows_call("log_softmax_bwd", (g, y), out)


def cross_entropy_backward(logp, gs, target):
    """Cross-entropy's input gradient for (N, C) logits from the log-probabilities ``logp``,
    the per-row gradient factors ``gs`` (N,) (the loss gradient times the row's weight and the
    reduction's scale) and the class indices ``target`` (N,) (each in ``[0, C)``), or None.

    Math: ``dx[n, c] = gs[n] (softmax(x)[n, c] - [c == target[n]])``, softmax as ``exp(logp)``.
    PyTorch: the backward of ``torch.nn.functional.cross_entropy``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_softmax
        >>> logp = np.log(np.array([[0.25, 0.75]]))
        >>> dx = _native_softmax.cross_entropy_backward(logp, np.array([2.0]), np.array([1]))
        >>> dx is None or np.allclose(dx, [[0.5, -0.5]])
        True
    """
    if not (isinstance(logp, np.ndarray) and logp.ndim == 2 and isinstance(gs, np.ndarray)
            and isinstance(target, np.ndarray) and gs.shape == logp.shape[:1] and target.shape == gs.shape
            and target.dtype == np.int64 and target.flags.c_contiguous and logp.size):
        return None
    if target.min() < 0 or target.max() >= logp.shape[1]:  # the kernel indexes rows with them
        raise IndexError(f"cross_entropy backward: target indices must be in [0, {logp.shape[1]}), got "
                         f"[{target.min()}, {target.max()}]")
    out = np.empty(logp.shape, logp.dtype)
    gs = np.ascontiguousarray(gs, dtype=logp.dtype)
    fn = _native.kernel_for("ce_bwd", logp, gs, out)
    if fn is None:
        return None
    rows, cols = logp.shape
    fn(_native.addr(logp), _native.addr(gs), _native.addr(target), _native.addr(out), rows, cols,
       _native.threads_for(logp.size))
    return out


def attention_probs(p, l, i0: int, j0: int, causal: bool) -> bool:
    """Rows of offset attention scores to probabilities in place: ``p`` (nb, n, m) C-contiguous,
    entry ``[b, r, c]`` the score of query ``i0 + r`` and key ``j0 + c`` minus the row's offset;
    ``l`` (nb, n) C-contiguous receives each row's sum of exponentials. False (nothing written)
    where the kernels do not apply.

    Math: ``e = exp(p)`` (0 for a key after the query when ``causal``), ``l = sum_c e``,
    ``p = e / l``: the softmax of the scores when the offset keeps ``exp`` finite (the fused
    attention's bound; the caller checks ``l``). No max pass. PyTorch: the softmax step inside
    ``scaled_dot_product_attention``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.cpu_accel import _native_softmax
        >>> p = np.zeros((1, 2, 2), np.float32); l = np.empty((1, 2), np.float32)
        >>> done = _native_softmax.attention_probs(p, l, 0, 0, True)
        >>> (not done) or (p[0].tolist() == [[1.0, 0.0], [0.5, 0.5]] and l.tolist() == [[1.0, 2.0]])
        True
    """
    if not (isinstance(p, np.ndarray) and isinstance(l, np.ndarray)) or p.ndim != 3 or p.size == 0:
        return False
    if l.shape != p.shape[:2]:
        raise ValueError(f"attention_probs: row sums of shape {l.shape} do not fit probabilities {p.shape}")
    fn = _native.kernel_for("attn_probs", p, l)
    if fn is None:
        return False
    nb, n, m = p.shape
    fn(_native.addr(p), _native.addr(l), nb, n, m, int(i0), int(j0), int(bool(causal)),
       _native.threads_for(p.size))
    return True
