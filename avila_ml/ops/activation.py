"""Activation functions (``torch.nn.functional``): relu, leaky_relu, elu/selu/celu, gelu,
silu, mish, softplus, hardtanh/relu6, hardsigmoid, hardswish, softsign, logsigmoid.

Each is one ``Function``: ``forward`` on arrays (written to stay finite for any finite
input), ``backward`` with differentiable Tensor ops, so ``create_graph=True`` gives second
derivatives. ``sigmoid``/``tanh`` live in ``ops.elementwise`` and ``softmax``/``log_softmax``
in ``ops.reduction``; they are re-exported by ``avila_ml.nn.functional``.

``inplace=True`` writes the result into ``input`` and returns ``input``, like PyTorch; when
autograd tracks ``input`` the write is recorded in the graph (``autograd/inplace.py``), so a
leaf that requires grad is refused and a tensor saved for a backward raises there.
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes as _dt
from ..autograd import inplace as _inplace
from ..autograd.function import Function
from ..autograd.grad_mode import _state as _grad_state
from ..backends import backend_of
from ..backends import _erf_float32 as _erf32
from ..tensor import Tensor
from ._cpu_threads import over_batch
from ._scalar_rows import scalar_ufunc
from .elementwise import _arr, _xp, erf, exp, sigmoid, sign as _sgn, tanh, where

__all__ = ["relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish",
           "softplus", "hardtanh", "hardsigmoid", "hardswish", "softsign", "logsigmoid"]

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _np_f32(a) -> bool:
    """A float32 NumPy array: what the CPU fast paths (oneDNN, the float32 erf) take."""
    return isinstance(a, np.ndarray) and a.dtype == np.float32


_SPLIT_MIN = 1 << 18  # ReLU on host arrays from this many elements: batch split over the CPU threads


def _raw(g, a) -> bool:
    """``g`` and ``a`` are same-shaped NumPy arrays of one dtype: a gradient without a graph may
    be computed by raw ufuncs."""
    return isinstance(g, np.ndarray) and isinstance(a, np.ndarray) and g.dtype == a.dtype and g.shape == a.shape


def _native():
    """``avila_ml.cpu_accel._native``: the compiled one-pass kernels (each returns False where
    they are not built or do not apply, and the caller runs the NumPy passes)."""
    from ..cpu_accel import _native as native
    return native


def _accel_eltwise():
    """``avila_ml.cpu_accel._eltwise`` (imported on first use; its functions return None when
    oneDNN is absent, disabled by ``avila_ml.backends.mkldnn.enabled = False``, or does not
    apply, and the caller runs the NumPy formula)."""
    from ..cpu_accel import _eltwise
    return _eltwise


class _accel_gelu:
    """GELU's oneDNN route for ``alg`` (``"gelu_erf"`` or ``"gelu_tanh"``): exact GELU by the
    eltwise primitive; tanh GELU as ``x sigmoid(2u)`` by fused chains (``cpu_accel/_chain.py``),
    because oneDNN 3.2's tanh kernels gather their coefficients, which is slow on AMD CPUs
    (8 ms against 0.9 ms for 1.6 M elements, forward). ``forward``/``backward`` return None where
    oneDNN does not apply."""

    def __init__(self, alg):
        self.alg = alg

    def forward(self, x):
        if self.alg == "gelu_tanh":
            from ..cpu_accel import _chain
            return _chain.gelu_tanh_forward(x)
        return _accel_eltwise().forward(self.alg, x)

    def backward(self, g, x):
        if self.alg == "gelu_tanh":
            from ..cpu_accel import _chain
            return _chain.gelu_tanh_backward(g, x) if g.shape == x.shape else None
        return _accel_eltwise().backward(self.alg, g, x)


def _check(input, op: str, float_only: bool = True) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a Tensor as input, got {type(input).__name__}")
    if float_only and not _dt.np_is_floating(input.array.dtype):
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {input.dtype} "
                        f"(shape {tuple(input.shape)}); convert with .float() or .double()")


def _const(array, like: Tensor) -> Tensor:
    """A constant (non-differentiable) tensor in ``like``'s dtype, e.g. a 0/1 mask."""
    return Tensor._wrap(_arr(array.astype(like.array.dtype, copy=False)))


def _finish(input: Tensor, inplace: bool, fn, *args, name: str = "") -> Tensor:
    """``fn(input, *args)``, or with ``inplace=True`` its result written into ``input`` (recorded
    in the graph like PyTorch's in-place activations when autograd tracks ``input``)."""
    if not inplace:
        return fn(input, *args)
    name = name or f"{fn.__self__.__name__.lower()}(inplace=True)"
    if _inplace.needs_graph(input, ()):
        return _inplace.inplace(input, name, fn, *args)
    _inplace.check_writeable(input, name)
    out = fn(input, *args)
    input.array[...] = out.array
    return input._bump()


def _finish_into(input: Tensor, fn, *args, name: str) -> Tensor:
    """The in-place form of an op whose forward writes into its input when given a trailing
    ``True`` and whose backward needs no saved input (ReLU and LeakyReLU with slope >= 0 save
    their output, Hardtanh a mask taken before the write, ELU/SELU/CELU their output and a
    mask): no result array, no copy back.
    Recorded like ``_finish``'s (``autograd/inplace.py`` ``inplace_into``)."""
    if _inplace.needs_graph(input, ()):
        return _inplace.inplace_into(input, name, fn, *args, True)
    _inplace.check_writeable(input, name)
    fn(input, *args, True)
    return input._bump()


def _softplus_array(z):
    """log(1 + e^z) = max(z, 0) + log1p(e^-|z|): finite for every finite z."""
    xp = _xp(z)
    return _arr(xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z))))


def _sigmoid_array(z):
    """1 / (1 + e^-z) with e^-|z| only, so no overflow and full relative accuracy for z << 0."""
    xp = _xp(z)
    e = xp.exp(-xp.abs(z))
    return _arr(xp.where(z >= 0, 1 / (1 + e), e / (1 + e)))


# ------------------------------------------------------------------------------ piecewise linear
class ReLU(Function):
    # oneDNN's relu maps NaN to 0 (PyTorch keeps NaN), so it stays on the ufuncs.
    # ``into=True`` (the in-place forms, via ``_finish_into``) writes the result into ``x``'s own
    # memory: the backward reads only the output, so nothing of the input need survive.
    def forward(self, x, into=False):
        self.save_outputs(0)
        zero = x.dtype.type(0)
        if isinstance(x, np.ndarray) and x.ndim:
            y = x if into else np.empty(x.shape, dtype=x.dtype)
            if _native().relu_forward(x, y):  # the compiled kernel: one pass, split over the threads
                return y
            # else ``maximum`` against a row of zeros (NumPy's SIMD loop; with the scalar it is
            # ~4x slower, see ``_scalar_rows``), large arrays split over the CPU threads
            over_batch(lambda b: scalar_ufunc(np.maximum, x[b], zero, y[b]), x.shape[0], x.size, _SPLIT_MIN)
            return y
        xp = _xp(x)
        if into:
            xp.maximum(x, zero, out=x)
            return x
        return _arr(xp.maximum(x, zero))

    def backward(self, g):
        (y,) = self.saved_outputs
        # PyTorch's threshold_backward(g, result, 0): 0 where y <= 0, so a NaN passes g
        if not _grad_state.enabled and _raw(g.array, y.array):
            # (not the oneDNN chain of LeakyReLU: quiet in-process A/B, 2 threads, (32,32,32,32)
            # fwd+bwd: 1.81 ms with it, 0.89 ms with these NumPy passes split over the threads)
            # as 1-d views for a 0-d gradient: the parts index the leading axis
            ga, ya = (g.array, y.array) if g.array.ndim else (g.array.reshape(1), y.array.reshape(1))
            dx = np.empty(ga.shape, dtype=ga.dtype)
            if _native().relu_backward(ga, ya, dx):  # one pass (the compiled kernel); else NumPy's
                return Tensor._wrap(dx.reshape(g.array.shape))

            def part(b):  # g * {0, 1}: the select, except an inf/NaN g where y <= 0 (0 * inf)
                # y is this ReLU's output (version-checked): >= 0 or NaN, so "not y <= 0" is
                # "y != 0" (NaN != 0 passes g, -0.0 == 0 does not), one pass instead of a
                # compare and a logical_not (in-process, loaded: 0.90 -> 0.84-0.91 ms min,
                # median 1.02 -> 0.95-0.97 for the whole 2^20-element gradient, one thread)
                keep = ya[b] != 0
                d = dx[b]
                np.copyto(d, keep, casting="unsafe")
                with np.errstate(invalid="ignore"):  # inf * 0, handled below
                    np.multiply(d, ga[b], out=d)
                # an inf/NaN g where y <= 0 left a NaN (inf * 0): one max-reduce pass (NaN-propagating,
                # SIMD; 3x faster than a sum, measured) rules that out
                return d.size == 0 or not np.isnan(np.maximum.reduce(d, axis=None))
            if not all(over_batch(part, ga.shape[0], ga.size, _SPLIT_MIN)):
                # np.where is exact but several times slower than the multiply (measured)
                np.copyto(dx, np.where(ya <= 0, ga.dtype.type(0), ga))
            return Tensor._wrap(dx.reshape(g.array.shape))
        return g * _const(~(y.array <= 0), g)


class Hardtanh(Function):
    def forward(self, x, lo, hi, into=False):
        # at a NaN, 0: PyTorch's vectorised CPU kernel (its scalar tail, the last < 8 elements,
        # passes g there instead; tests/test_hardening_properties.py lists the deviation).
        # The mask is all the backward needs, so ``into=True`` (the in-place forms) may clip
        # straight into ``x``.
        self.mask = (x > lo) & (x < hi)
        if into:
            _xp(x).clip(x, lo, hi, out=x)
            return x
        return _arr(_xp(x).clip(x, lo, hi))

    def backward(self, g):
        return g * _const(self.mask, g)


class LeakyReLU(Function):
    """y = x for x > 0, else slope x. The input is saved (as PyTorch does), not a mask. Float32
    NumPy arrays take oneDNN's relu with the slope as alpha for the forward (slope != 0: with
    0 oneDNN maps NaN to 0); the NumPy forward is one multiply and one max (min for slope > 1),
    which propagate NaN as PyTorch's select does (slope 0 selects: inf * 0 would be NaN). Without
    a graph of the gradient the backward is array code, large arrays split over the CPU threads
    (oneDNN's own relu backward passes g at a NaN input where PyTorch gives slope g, so it is
    not used)."""

    def forward(self, x, slope, into=False):
        # ``into=True`` (the in-place form, slope >= 0 only): the result is written into ``x`` and
        # saved instead of it, as PyTorch's ``leaky_relu_`` saves its result: for slope >= 0,
        # y > 0 exactly where x > 0 and y is NaN exactly where x is, so the backward's
        # ``x > 0`` and NaN tests read the same from y
        self.from_output = into
        if into:
            self.save_outputs(0)
        else:
            self.save_inputs(0)
        self.slope = slope
        if slope != 0 and _np_f32(x) and (not into or x.flags.c_contiguous):  # (oneDNN writes a C-contiguous out)
            y = _accel_eltwise().forward("relu", x, slope, out=x if into else None)
            if y is not None:
                return y
        xp = _xp(x)
        y = _arr(x * x.dtype.type(slope))
        if slope == 0:  # inf * 0 is NaN: select, as PyTorch does
            y = _arr(xp.where(x > 0, x, y))
            if into:
                xp.copyto(x, y)
                return x
            return y
        (xp.maximum if slope <= 1 else xp.minimum)(x, y, out=x if into else y)
        return x if into else y

    def backward(self, g):
        (x,) = self.saved_outputs if self.from_output else self.saved_inputs  # x: or y (see forward)
        # (not a fused oneDNN chain: quiet in-process A/B, 2 threads, (32, 128, 16, 16) fwd+bwd:
        # 1.67 ms with the chain and its NaN scan, 0.64 ms with these passes split over the
        # threads; one thread 2.06 vs 1.79 ms)
        if not _grad_state.enabled and _raw(g.array, x.array):
            dx = np.empty(g.array.shape, dtype=g.array.dtype)
            if _native().leaky_relu_backward(g.array, x.array, self.slope, dx):  # one pass, compiled
                return Tensor._wrap(dx)
        if not _grad_state.enabled and _raw(g.array, x.array) and 0 <= self.slope <= 1:
            # g * (1 if x > 0 else slope), PyTorch's formula, with the factor built by SIMD
            # ufuncs (np.where/copyto with a mask are ~8x slower, measured): m (1 - s) + s is
            # exactly 1 or s for 0 <= s <= 1 (the rounding error of 1 - s, taken in that dtype, is at
            # most half an ulp of 1 and ties round to 1); large arrays split over the CPU threads
            ga, xa = (g.array, x.array) if g.array.ndim else (g.array.reshape(1), x.array.reshape(1))
            s = ga.dtype.type(self.slope)
            one_minus = ga.dtype.type(1) - s  # 1 - s rounded in g's dtype, so that (1 - s) + s == 1
            dx = np.empty(ga.shape, dtype=ga.dtype)

            def part(b):
                d = dx[b]
                np.greater(xa[b], 0, out=d)
                d *= one_minus
                d += s
                d *= ga[b]
            over_batch(part, ga.shape[0], ga.size, _SPLIT_MIN)
            return Tensor._wrap(dx.reshape(g.array.shape))
        xp = _xp(g.array)
        return g * _const(xp.where(x.array > 0, 1.0, self.slope), g)


class Hardsigmoid(Function):
    def forward(self, x):
        self.mask = (x > -3) & (x < 3)
        xp = _xp(x)
        return _arr(xp.clip(x / x.dtype.type(6) + x.dtype.type(0.5), 0, 1))

    def backward(self, g):
        return g * _const(self.mask * (1.0 / 6.0), g)


class Hardswish(Function):
    def forward(self, x):
        self.save_inputs(0)
        xp = _xp(x)
        return _arr(x * xp.clip(x + x.dtype.type(3), 0, 6) / x.dtype.type(6))

    def backward(self, g):
        (x,) = self.saved_inputs
        a = x.array
        # dy/dx = 0 for x <= -3, x/3 + 1/2 for -3 < x < 3, 1 for x >= 3 (PyTorch's boundaries);
        # NaN at a NaN, as PyTorch's vectorised CPU kernel (not its scalar tail, which gives g)
        slope = where(a >= 3, 1.0, where(a <= -3, 0.0, x * (1.0 / 3.0) + 0.5))
        return g * slope


# ------------------------------------------------------------------------------- exponential
class ELU(Function):
    """y = scale * (x if x > 0 else alpha * (exp(x * input_scale) - 1)): ELU, SELU and CELU."""

    def forward(self, x, alpha, scale, input_scale, into=False):
        # the backward reads the output and the sign mask (taken first), never x: ``into=True``
        # (the in-place forms) writes the result into x
        xp = _xp(x)
        t = x.dtype.type
        self.pos = x > 0
        self.consts = (alpha, scale, input_scale)
        self.save_outputs(0)
        if scale == 1 and input_scale == 1 and alpha >= 0 and _np_f32(x):
            # plain ELU: oneDNN's elu in one pass (NumPy's float32 expm1 is a slow scalar loop).
            # oneDNN writes a C-contiguous ``out``; a strided x gets its result copied in, so the
            # in-place values are the out-of-place op's (oneDNN's elu and NumPy's expm1 differ
            # in the last bits)
            direct = into and x.flags.c_contiguous
            y = _accel_eltwise().forward("elu", x, alpha, out=x if direct else None)
            if y is not None:
                if into and not direct:
                    xp.copyto(x, y)
                    return x
                return y
        # a NaN takes the exponential branch (a NaN gradient), as PyTorch's vectorised CPU kernel
        # (its scalar tail, the last < 8 elements, takes the linear one)
        neg = t(alpha) * xp.expm1(xp.minimum(x, 0) * t(input_scale))  # min(): no overflow in the unused branch
        if into:
            xp.multiply(xp.where(self.pos, x, neg), t(scale), out=x)
            return x
        return _arr(xp.where(self.pos, x, neg) * t(scale))

    def backward(self, g):
        (y,) = self.saved_outputs
        alpha, scale, input_scale = self.consts
        # for x <= 0: dy/dx = scale*alpha*input_scale*exp(x*input_scale) = input_scale*(y + scale*alpha)
        neg_slope = (y + scale * alpha) * input_scale
        return g * where(self.pos, float(scale), neg_slope)


class Softplus(Function):
    def forward(self, x, beta, threshold):
        xp = _xp(x)
        t = x.dtype.type
        z = x * t(beta)
        self.linear = z > threshold
        self.beta = beta
        self.save_inputs(0)
        return _arr(xp.where(self.linear, x, _softplus_array(z) / t(beta)))

    def backward(self, g):
        (x,) = self.saved_inputs
        return g * where(self.linear, 1.0, sigmoid(x * self.beta))


class LogSigmoid(Function):
    def forward(self, x):
        self.save_inputs(0)
        xp = _xp(x)
        return _arr(xp.minimum(x, 0) - xp.log1p(xp.exp(-xp.abs(x))))

    def backward(self, g):
        (x,) = self.saved_inputs
        return g * sigmoid(-x)


class GELU(Function):
    """Exact or tanh GELU. Exact GELU of C-contiguous float32/float64 NumPy arrays takes the
    compiled one-pass kernels (``_erf_float32.gelu_forward`` / ``gelu_backward``); where they
    do not apply, float32 takes oneDNN's eltwise primitive when it is installed
    (``_accel_gelu``), else the vectorised float32 normal CDF of ``backends/_erf_float32.py``
    instead of SciPy's erf. Tanh GELU takes the fused chains of ``cpu_accel/_chain.py`` for
    float32. The backward's fast code runs unless the graph of the gradient is built
    (``create_graph=True``)."""

    def forward(self, x, approximate):
        self.save_inputs(0)
        self.approximate = approximate
        self.alg = "gelu_tanh" if approximate == "tanh" else "gelu_erf"
        if approximate != "tanh" and type(x) is np.ndarray:
            # the compiled kernel ((2048, 512) float32: 0.22 ms against oneDNN's 0.29-0.31)
            y = _erf32.gelu_forward(x)
            if y is not None:
                return y
        y = _accel_gelu(self.alg).forward(x) if _np_f32(x) else None
        if y is not None:
            return y
        t = x.dtype.type
        if approximate == "tanh":
            xp = _xp(x)
            inner = t(_SQRT_2_OVER_PI) * (x + t(_GELU_C) * x * x * x)
            return _arr(t(0.5) * x * (1 + xp.tanh(inner)))
        if _np_f32(x):
            return _erf32.gelu(x)
        cdf = t(0.5) * (1 + backend_of(x).erf(x * t(_INV_SQRT2)))
        return _arr(x * cdf)

    def backward(self, g):
        (x,) = self.saved_inputs
        if not _grad_state.enabled and self.approximate == "none" and type(x.array) is np.ndarray:
            # the compiled one-pass kernel (float32 / float64, C-contiguous): the (2048, 512)
            # float32 GELU of the small GPT's MLP took 0.40 ms against oneDNN 3.2's eltwise
            # backward 0.94-1.03 ms (2 threads, AVX-512 EPYC, 2026-12-07; PyTorch's
            # gelu_backward in its step: 1.24 ms)
            dx = _erf32.gelu_backward(g.array, x.array)
            if dx is not None:
                return Tensor._wrap(dx)
        if not _grad_state.enabled and _np_f32(x.array):
            # no graph of the gradient wanted: raw array code
            dx = _accel_gelu(self.alg).backward(g.array, x.array)
            if dx is not None:
                return Tensor._wrap(dx)
            if self.approximate == "none" and _np_f32(g.array) and g.array.shape == x.shape:
                a = x.array
                dx = _erf32.normal_cdf(a)  # Φ(x) + x φ(x)
                pdf = a * a
                pdf *= np.float32(-0.5)
                np.exp(pdf, out=pdf)
                pdf *= a
                pdf *= np.float32(_INV_SQRT_2PI)
                dx += pdf
                dx *= g.array
                return Tensor._wrap(dx)
        if self.approximate == "tanh":
            x2 = x * x
            th = tanh((x + _GELU_C * x2 * x) * _SQRT_2_OVER_PI)
            d = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * (_SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x2))
        else:
            d = 0.5 * (1 + erf(x * _INV_SQRT2)) + x * exp(-0.5 * (x * x)) * _INV_SQRT_2PI
        return g * d


class SiLU(Function):
    """x σ(x); float32 NumPy arrays take oneDNN's swish (forward, and the backward unless the
    graph of the gradient is built)."""

    def forward(self, x):
        self.save_inputs(0)
        y = _accel_eltwise().forward("swish", x, 1.0) if _np_f32(x) else None
        if y is not None:
            return y
        return _arr(x * _sigmoid_array(x))

    def backward(self, g):
        (x,) = self.saved_inputs
        if not _grad_state.enabled and _np_f32(x.array):
            dx = _accel_eltwise().backward("swish", g.array, x.array, 1.0)
            if dx is not None:
                return Tensor._wrap(dx)
        s = sigmoid(x)
        return g * (s * (1 + x * (1 - s)))


class Mish(Function):
    def forward(self, x):
        self.save_inputs(0)
        return _arr(x * _xp(x).tanh(_softplus_array(x)))

    def backward(self, g):
        (x,) = self.saved_inputs
        tsp = tanh(Softplus.apply(x, 1.0, math.inf))
        return g * (tsp + x * (1 - tsp * tsp) * sigmoid(x))


class Softsign(Function):
    def forward(self, x):
        self.save_inputs(0)
        return _arr(x / (1 + _xp(x).abs(x)))

    def backward(self, g):
        (x,) = self.saved_inputs
        d = 1 + x.abs()
        # PyTorch differentiates x / (1 + |x|) as a quotient: g/d - g (x/d)/d sgn(x), which is
        # 1/d^2 for finite x and NaN at +-inf (inf/inf), where the closed form would give 0
        return g / d - g * ((x / d) / d) * _sgn(x)


# ------------------------------------------------------------------------------ public functions
def relu(input, inplace: bool = False):
    """Rectified linear unit (``torch.nn.functional.relu``).

    Math: y = max(x, 0); dy/dx = 1 for x > 0, else 0.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.relu(am.tensor([-1.0, 0.0, 2.0]))
        tensor([0., 0., 2.])
    """
    _check(input, "relu", float_only=False)
    if inplace:
        return _finish_into(input, ReLU.apply, name="relu(inplace=True)")
    return ReLU.apply(input)


def relu_(input):
    """In-place ReLU: ``input`` is overwritten with ``max(input, 0)`` and returned
    (``torch.nn.functional.relu_``, ``torch.relu_``, ``Tensor.relu_``).

    Math: y = max(x, 0), written into x's memory (no new array); dy/dx = 1 where y > 0, else
    0, computed from y alone, so nothing else is kept for the backward. The write bumps the
    tensor's version: a backward that saved the old value refuses to run, as in PyTorch; a leaf
    that requires grad (or a view of one) is refused before anything is written.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([-1.0, 0.5, 2.0], requires_grad=True)
        >>> h = x * 2
        >>> am.nn.functional.relu_(h) is h
        True
        >>> h.sum().backward(); h, x.grad
        (tensor([0., 1., 4.], grad_fn=<ReLUBackward0>), tensor([0., 2., 2.]))
    """
    _check(input, "relu_", float_only=False)
    return _finish_into(input, ReLU.apply, name="relu_")


def hardtanh(input, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
    """Clamp to ``[min_val, max_val]`` (``torch.nn.functional.hardtanh``).

    Math: y = min(max(x, min_val), max_val); dy/dx = 1 for min_val < x < max_val, else 0.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.hardtanh(am.tensor([-3.0, 0.5, 3.0]))
        tensor([-1.0000,  0.5000,  1.0000])
    """
    _check(input, "hardtanh")
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val ({min_val}) cannot be greater than max_val ({max_val})")
    if inplace:
        return _finish_into(input, Hardtanh.apply, float(min_val), float(max_val), name="hardtanh(inplace=True)")
    return Hardtanh.apply(input, float(min_val), float(max_val))


def relu6(input, inplace: bool = False):
    """ReLU capped at 6, ``hardtanh(x, 0, 6)`` (``torch.nn.functional.relu6``).

    Math: y = min(max(x, 0), 6); dy/dx = 1 for 0 < x < 6, else 0.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.relu6(am.tensor([-1.0, 3.0, 9.0]))
        tensor([0., 3., 6.])
    """
    _check(input, "relu6")
    if inplace:
        return _finish_into(input, Hardtanh.apply, 0.0, 6.0, name="relu6(inplace=True)")
    return Hardtanh.apply(input, 0.0, 6.0)


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False):
    """Leaky ReLU (``torch.nn.functional.leaky_relu``).

    Math: y = x for x > 0, else negative_slope * x; dy/dx = 1 or negative_slope.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.leaky_relu(am.tensor([-2.0, 2.0]), 0.5)
        tensor([-1.,  2.])
    """
    _check(input, "leaky_relu")
    if inplace and negative_slope >= 0:  # written in place, the result saved (see LeakyReLU.forward)
        return _finish_into(input, LeakyReLU.apply, float(negative_slope), name="leaky_relu(inplace=True)")
    # a negative slope in place: computed aside and copied in, the input saved (PyTorch refuses
    # the backward of this case; here it is exact)
    return _finish(input, inplace, LeakyReLU.apply, float(negative_slope))


def elu(input, alpha: float = 1.0, inplace: bool = False):
    """Exponential linear unit (``torch.nn.functional.elu``).

    Math: y = x for x > 0, else alpha (e^x - 1); dy/dx = 1, else y + alpha.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.elu(am.tensor([-1e4, -1.0, 1.0])).round(decimals=4)
        tensor([-1.0000, -0.6321,  1.0000])
    """
    _check(input, "elu")
    if inplace:
        return _finish_into(input, ELU.apply, float(alpha), 1.0, 1.0, name="elu(inplace=True)")
    return ELU.apply(input, float(alpha), 1.0, 1.0)


def selu(input, inplace: bool = False):
    """Scaled ELU with the self-normalising constants (``torch.nn.functional.selu``).

    Math: y = scale * (x for x > 0, else alpha (e^x - 1)), alpha = 1.6732632...,
    scale = 1.0507009...

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.selu(am.tensor([0.0, 1.0]))
        tensor([0.0000, 1.0507])
    """
    _check(input, "selu")
    if inplace:
        return _finish_into(input, ELU.apply, _SELU_ALPHA, _SELU_SCALE, 1.0, name="selu(inplace=True)")
    return ELU.apply(input, _SELU_ALPHA, _SELU_SCALE, 1.0)


def celu(input, alpha: float = 1.0, inplace: bool = False):
    """Continuously differentiable ELU (``torch.nn.functional.celu``).

    Math: y = max(0, x) + min(0, alpha (e^{x/alpha} - 1)); dy/dx = 1, else e^{x/alpha}.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.celu(am.tensor([-1e4, -2.0, 2.0]), alpha=2.0).round(decimals=4)
        tensor([-2.0000, -1.2642,  2.0000])
    """
    _check(input, "celu")
    if alpha == 0:
        raise ValueError("celu: alpha must be non-zero (the formula divides by alpha)")
    if inplace:
        return _finish_into(input, ELU.apply, float(alpha), 1.0, 1.0 / alpha, name="celu(inplace=True)")
    return ELU.apply(input, float(alpha), 1.0, 1.0 / alpha)


def gelu(input, approximate: str = "none"):
    """Gaussian error linear unit (``torch.nn.functional.gelu``).

    Math: exact, y = x Φ(x) = x/2 (1 + erf(x/√2)), dy/dx = Φ(x) + x φ(x);
    ``approximate='tanh'``, y = x/2 (1 + tanh(√(2/π) (x + 0.044715 x³))).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.gelu(am.tensor([-1e4, 0.0, 1.0]))
        tensor([-0.0000,  0.0000,  0.8413])
    """
    _check(input, "gelu")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU.apply(input, approximate)


def silu(input, inplace: bool = False):
    """Sigmoid linear unit, a.k.a. swish (``torch.nn.functional.silu``).

    Math: y = x σ(x); dy/dx = σ(x) (1 + x (1 - σ(x))).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.silu(am.tensor([0.0, 1e4]))
        tensor([    0., 10000.])
    """
    _check(input, "silu")
    return _finish(input, inplace, SiLU.apply)


def mish(input, inplace: bool = False):
    """Mish (``torch.nn.functional.mish``).

    Math: y = x tanh(softplus(x)); dy/dx = tanh(sp) + x (1 - tanh²(sp)) σ(x).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.mish(am.tensor([-1e4, 0.0, 1.0])).round(decimals=4)
        tensor([-0.0000,  0.0000,  0.8651])
    """
    _check(input, "mish")
    return _finish(input, inplace, Mish.apply)


def softplus(input, beta: float = 1.0, threshold: float = 20.0):
    """Smooth ReLU (``torch.nn.functional.softplus``).

    Math: y = log(1 + e^{βx}) / β, computed as (max(βx, 0) + log1p(e^{-|βx|})) / β;
    y = x where βx > threshold. dy/dx = σ(βx) (1 in the linear region).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.softplus(am.tensor([-1e4, 0.0, 1e4]))
        tensor([0.0000e+00, 6.9315e-01, 1.0000e+04])
    """
    _check(input, "softplus")
    if beta == 0:
        raise ValueError("softplus: beta must be non-zero")
    return Softplus.apply(input, float(beta), float(threshold))


def hardsigmoid(input, inplace: bool = False):
    """Piecewise-linear sigmoid (``torch.nn.functional.hardsigmoid``).

    Math: y = clamp(x/6 + 1/2, 0, 1); dy/dx = 1/6 for -3 < x < 3, else 0.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.hardsigmoid(am.tensor([-4.0, 0.0, 4.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """
    _check(input, "hardsigmoid")
    return _finish(input, inplace, Hardsigmoid.apply)


def hardswish(input, inplace: bool = False):
    """Hard swish (``torch.nn.functional.hardswish``).

    Math: y = x · relu6(x + 3) / 6; dy/dx = 0 (x <= -3), x/3 + 1/2 (-3 < x < 3), 1 (x >= 3).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.hardswish(am.tensor([-4.0, 0.0, 4.0]))
        tensor([-0.,  0.,  4.])
    """
    _check(input, "hardswish")
    return _finish(input, inplace, Hardswish.apply)


def softsign(input):
    """Softsign (``torch.nn.functional.softsign``).

    Math: y = x / (1 + |x|); dy/dx = 1 / (1 + |x|)².

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.softsign(am.tensor([-1.0, 3.0]))
        tensor([-0.5000,  0.7500])
    """
    _check(input, "softsign")
    return Softsign.apply(input)


def logsigmoid(input):
    """log σ(x), stable for any finite x (``torch.nn.functional.logsigmoid``).

    Math: y = min(x, 0) - log1p(e^{-|x|}); dy/dx = σ(-x).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.logsigmoid(am.tensor([-1e4, 0.0, 1e4]))
        tensor([-1.0000e+04, -6.9315e-01,  0.0000e+00])
    """
    _check(input, "logsigmoid")
    return LogSigmoid.apply(input)
