"""Elementwise arithmetic and math, with broadcasting and PyTorch's type promotion.

Each op is one ``Function``: ``forward`` on arrays, ``backward`` with Tensor ops (so it is
itself differentiable). Broadcasting is undone in backward by :func:`sum_to`.
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes as _dt
from .._grad_state import state as _grad_state
from ..autograd.function import Function
from ..amp.autocast_mode import autocast_op
from ..backends import backend_of
from ..debug import host_checks
from ..tensor import Tensor
from ..cpu_accel import _native

__all__ = [
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "pow", "neg",
    "abs", "sign", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tan",
    "tanh", "sigmoid", "erf", "clamp", "clip", "maximum", "minimum", "where", "square",
    "reciprocal", "log2", "log10", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
    "logical_or", "logical_xor", "logical_not", "isnan", "isfinite", "isinf", "cast",
    "clone", "sum_to", "lerp", "addcmul", "atan2", "floor", "ceil", "round", "trunc",
]


def _xp(a):
    return np if isinstance(a, np.ndarray) else backend_of(a).xp


def _arr(o):
    """Make ufunc results real arrays: NumPy returns scalars for 0-d inputs."""
    return np.asarray(o) if isinstance(o, np.generic) else o


def _scalar_tensor(value, dtype: _dt.dtype, like: Tensor) -> Tensor:
    xp = _xp(like.array)
    try:  # full, not asarray: on a GPU a fill kernel, not a host->device copy per scalar
        return Tensor._wrap(xp.full((), value, dtype=dtype.np))
    except OverflowError:  # e.g. -2 for uint8: wrap around as PyTorch (and C) do
        return Tensor._wrap(xp.asarray(value).astype(dtype.np))


def _prepare(a, b, op: str):
    """Turn (a, b) into two Tensors of the promoted dtype on one device.

    Python scalars become 0-d tensors; a 0-d CPU tensor may join a CUDA tensor (as in
    PyTorch); any other device mix raises, naming the op and both devices.
    """
    ta, tb = isinstance(a, Tensor), isinstance(b, Tensor)
    if ta and not tb and (type(b) is float or type(b) is int):
        s = _float_scalar(a.array, b)
        if s is not None:
            return a, s
    elif tb and not ta and (type(a) is float or type(a) is int):
        s = _float_scalar(b.array, a)
        if s is not None:
            return s, b
    if ta and tb:
        if a.array.dtype == b.array.dtype and type(a.array) is type(b.array):
            if type(a.array) is np.ndarray:
                return a, b
            if a.array.device == b.array.device:
                return a, b
        da, db = a.device, b.device
        if da != db:
            if b.ndim == 0 and db.type == "cpu":
                b = to_device_scalar(b, da)
            elif a.ndim == 0 and da.type == "cpu":
                a = to_device_scalar(a, db)
            else:
                raise RuntimeError(
                    f"{op}: expected all tensors on the same device, but found {da} (shape "
                    f"{tuple(a.shape)}) and {db} (shape {tuple(b.shape)})"
                )
        dt = _dt.result_type(a, b)
        return (a if a.dtype is dt else cast(a, dt)), (b if b.dtype is dt else cast(b, dt))
    if ta:
        if not _is_scalar(b):
            b = _from_other(b, a, op)
            return _prepare(a, b, op)
        dt = _dt.result_type(a, b)
        return (a if a.dtype is dt else cast(a, dt)), _scalar_tensor(b, dt, a)
    if tb:
        if not _is_scalar(a):
            a = _from_other(a, b, op)
            return _prepare(a, b, op)
        dt = _dt.result_type(a, b)
        return _scalar_tensor(a, dt, b), (b if b.dtype is dt else cast(b, dt))
    raise TypeError(f"{op}: expected at least one Tensor, got {type(a).__name__} and {type(b).__name__}")


def _float_scalar(arr, value):
    """The fast path of ``x * 0.5``: a Python number never changes a float tensor's dtype, so
    it becomes a 0-d array of that dtype (``np.array``: a quarter of ``np.full``'s time);
    None for other dtypes, or a number the dtype cannot hold (the general path reports it)."""
    dt = arr.dtype
    if dt.kind != "f" and not _dt.np_is_floating(dt):
        return None
    try:
        if type(arr) is np.ndarray:
            return Tensor._wrap(np.array(value, dtype=dt))
        # full, not asarray: on a GPU a fill kernel, not a host->device copy per scalar
        return Tensor._wrap(_xp(arr).full((), value, dtype=dt))
    except OverflowError:
        return None


def _is_scalar(x) -> bool:
    return isinstance(x, (int, float, bool, np.number, np.bool_))


def _from_other(x, like: Tensor, op: str) -> Tensor:
    """A list/array operand becomes a tensor on ``like``'s device (dtype inferred as ``tensor()``)."""
    from ..factories import tensor
    try:
        return tensor(x, device=like.device)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{op}: unsupported operand of type {type(x).__name__}: {e}") from None


def to_device_scalar(t: Tensor, dev) -> Tensor:
    from .shape import to_device
    return to_device(t, dev)


def sum_to_array(g, shape: tuple):
    """``sum_to`` on a raw array: the backward fast path (no graph recorded) and ``SumTo``'s
    forward (no PyTorch name: ``at::sum_to`` inside its autograd).

    Math: sums ``g`` over its leading dims and over the dims where ``shape`` has 1, the adjoint
    of broadcasting ``shape`` to ``g.shape``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.ops.elementwise import sum_to_array
        >>> sum_to_array(np.ones((2, 3)), (1, 3))
        array([[2., 2., 2.]])
    """
    gs = g.shape
    if gs == shape:
        return g
    lead = len(gs) - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and gs[i + lead] != 1)
    out = g.sum(axis=axes, keepdims=True) if axes else g
    return _arr(out.reshape(shape))


def _fast(g, *arrays) -> bool:
    """True when a backward may run as plain array code: no graph is being recorded (the
    engine runs backward with grad mode = ``create_graph``) and the gradient has its inputs'
    dtype (a hook may return another one; the Tensor path then promotes as PyTorch)."""
    if _grad_state.enabled:
        return False
    dt = g.dtype
    for a in arrays:
        if a.dtype != dt:
            return False
    return True


def sum_to(g: Tensor, shape: tuple) -> Tensor:
    """Sum ``g`` down to ``shape`` — the adjoint of broadcasting ``shape`` up to ``g.shape``.

    Example:
        >>> import avila_ml as am
        >>> am.ops.sum_to(am.ones(2, 3), (1, 3))
        tensor([[2., 2., 2.]])
    """
    if g.shape == tuple(shape):
        return g
    return SumTo.apply(g, tuple(shape))


class SumTo(Function):
    def forward(self, g, shape):
        self.in_shape = g.shape
        return sum_to_array(g, shape)

    def backward(self, g):
        if _fast(g.array):
            return expand_array(g.array, self.in_shape)
        from .shape import broadcast_to
        return broadcast_to(g, self.in_shape)


def expand_array(a, shape: tuple):
    """A read-only broadcast view of array ``a`` as ``shape`` (``xp.broadcast_to``; PyTorch's
    ``Tensor.expand``), made directly from strides for a contiguous NumPy array:
    ``np.broadcast_to`` costs ~5 us, which dominates the backward of a reduction over a small
    tensor.

    Math: ``out[i...] = a[j...]`` with ``j = 0`` along the broadcast dims (stride 0).

    Example:
        >>> import numpy as np
        >>> from avila_ml.ops.elementwise import expand_array
        >>> v = expand_array(np.arange(3.0), (2, 3)); v, v.flags.writeable
        (array([[0., 1., 2.],
               [0., 1., 2.]]), False)
    """
    if a.shape == shape:
        return a
    if type(a) is np.ndarray and a.flags.c_contiguous and len(shape) >= a.ndim:
        lead = len(shape) - a.ndim
        strides = [0] * lead
        for i, n in enumerate(a.shape):
            if n == shape[lead + i]:
                strides.append(a.strides[i])
            elif n == 1:
                strides.append(0)
            else:
                break
        else:
            out = np.ndarray(shape, a.dtype, a, 0, tuple(strides))
            out.flags.writeable = False
            return out
    return _xp(a).broadcast_to(a, shape)


# --------------------------------------------------------------------------- binary arithmetic
# below this many elements NumPy's own loop runs: the callers test the size inline, since asking
# _native.binary for every small array (a Python call that returns None) cost ~10 us of the
# 10-op autograd row's ~230
_BIG = _native._SPLIT_MIN


def _or(done, u, v):
    """``done`` (a product the compiled kernel made), else ``u * v`` in NumPy."""
    return u * v if done is None else done


class Add(Function):
    # ``into=True`` (``Tensor.add_`` / ``+=`` under autograd, via ``inplace_into``) writes the
    # sum into ``a``'s own memory: the backward needs only the shapes, nothing of ``a`` survives
    def forward(self, a, b, into=False, _big=_BIG):
        self.shapes = (a.shape, b.shape)
        if into:
            if a.size < _big or _native.binary("add", a, b, a) is None:  # (large host arrays: on the CPU threads)
                _xp(a).add(a, b, out=a)
            return a
        if a.size < _big and b.size < _big:
            return a + b
        out = _native.binary("add", a, b)
        return a + b if out is None else out

    def backward(self, g):
        sa, sb = self.shapes
        na, nb = self.needs_input_grad
        if not _grad_state.enabled:
            ga = g.array
            return (sum_to_array(ga, sa) if na else None), (sum_to_array(ga, sb) if nb else None)
        return (sum_to(g, sa) if na else None), (sum_to(g, sb) if nb else None)


class Sub(Function):
    def forward(self, a, b, into=False, _big=_BIG):  # ``into``: as Add's (``Tensor.sub_``)
        self.shapes = (a.shape, b.shape)
        if into:
            if a.size < _big or _native.binary("sub", a, b, a) is None:
                _xp(a).subtract(a, b, out=a)
            return a
        if a.size < _big and b.size < _big:
            return a - b
        out = _native.binary("sub", a, b)
        return a - b if out is None else out

    def backward(self, g):
        sa, sb = self.shapes
        na, nb = self.needs_input_grad
        if not _grad_state.enabled:
            ga = g.array
            return (sum_to_array(ga, sa) if na else None), (sum_to_array(_arr(-ga), sb) if nb else None)
        return (sum_to(g, sa) if na else None), (sum_to(-g, sb) if nb else None)


class Mul(Function):
    def forward(self, a, b, _big=_BIG):
        self.save_inputs(0, 1)
        if a.size < _big and b.size < _big:
            return a * b
        out = _native.binary("mul", a, b)  # (large host arrays: on the CPU threads)
        return a * b if out is None else out

    def backward(self, g):
        a, b = self.saved_inputs
        na, nb = self.needs_input_grad
        ga, aa, ba = g.array, a.array, b.array
        if _fast(ga, aa, ba):
            if ga.size < _BIG:  # (small: NumPy's products, no kernel asked)
                return ((sum_to_array(_arr(ga * ba), aa.shape) if na else None),
                        (sum_to_array(_arr(ga * aa), ba.shape) if nb else None))
            mul = lambda u, v: _native.binary("mul", u, v) if u.shape == v.shape or v.size == 1 else None  # noqa: E731
            return ((sum_to_array(_arr(_or(mul(ga, ba), ga, ba)), aa.shape) if na else None),
                    (sum_to_array(_arr(_or(mul(ga, aa), ga, aa)), ba.shape) if nb else None))
        return (sum_to(g * b, a.shape) if na else None), (sum_to(g * a, b.shape) if nb else None)


class Div(Function):
    def forward(self, a, b, _big=_BIG):
        self.save_inputs(0, 1)
        if a.size < _big and b.size < _big:
            return a / b
        out = _native.binary("div", a, b)
        return a / b if out is None else out

    def backward(self, g):
        a, b = self.saved_inputs
        na, nb = self.needs_input_grad
        gr, aa, ba = g.array, a.array, b.array
        if _fast(gr, aa, ba):
            quot = (_native.binary("div", gr, ba) if na and gr.size >= _BIG and (ba.shape == gr.shape or ba.size == 1)
                    else None)
            return ((sum_to_array(_arr(gr / ba if quot is None else quot), aa.shape) if na else None),
                    (sum_to_array(_arr(-gr * aa / (ba * ba)), ba.shape) if nb else None))
        ga = sum_to(g / b, a.shape) if na else None
        gb = sum_to(-g * a / (b * b), b.shape) if nb else None
        return ga, gb


class Pow(Function):
    """``a ** b`` for two tensors."""

    def forward(self, a, b):
        self.save_inputs(0, 1)
        return _arr(_xp(a).power(a, b))

    def backward(self, g):
        a, b = self.saved_inputs
        na, nb = self.needs_input_grad
        ga = None
        if na:
            # d/da a^b = b a^(b-1); PyTorch takes it as 0 where b == 0, so 0^0 has a zero, not
            # NaN (0 * 0^-1), gradient. Only at a == b == 0 is the exponent replaced (by 1), so
            # no inf enters the graph and every other point keeps its exact higher derivatives
            xp = _xp(a.array)
            safe_b1 = where(xp.logical_and(b.array == 0, a.array == 0), 1.0, b) - 1
            ga = sum_to(g * b * a ** safe_b1, a.shape)
        gb = None
        if nb:
            # d/db a^b = a^b log a; PyTorch takes it as 0 where a == 0 (and b >= 0)
            safe_a = where(a.array == 0, 1.0, a)
            gb = sum_to(g * where(a.array == 0, 0.0, (a ** b) * log(safe_a)), b.shape)
        return ga, gb


class PowScalar(Function):
    """``a ** c`` for a Python number ``c``."""

    def forward(self, a, c):
        self.save_inputs(0)
        self.c = c
        return _pow_scalar_array(a, c)

    def backward(self, g):
        (a,) = self.saved_inputs
        c = self.c
        if c == 1:
            return g
        ga, aa = g.array, a.array
        if _fast(ga, aa) and _dt.np_is_floating(aa.dtype):
            t = aa.dtype.type
            if c == 0:
                return _arr(ga * t(0))
            if c == 2:
                return _arr(ga * t(2) * aa)
            return _arr(ga * t(c) * _pow_scalar_array(aa, c - 1))
        if c == 0:
            return g * 0
        if c == 2:
            return g * 2 * a
        return g * c * a ** (c - 1)


def _pow_scalar_array(a, c):
    """``a ** c`` on an array, for a Python number ``c`` (PowScalar's forward)."""
    if c == 2:
        return _arr(a * a)
    xp = _xp(a)
    if c == -0.5 and _dt.np_is_floating(a.dtype):
        # PyTorch's pow kernel computes x ** -0.5 as rsqrt(x): NaN at -inf, where C's pow gives 0
        # (so the gradient of sqrt-like x ** 0.5 at -inf is NaN, as PyTorch's)
        return _arr(xp.reciprocal(xp.sqrt(a)))
    return _arr(xp.power(a, a.dtype.type(c) if _dt.np_is_floating(a.dtype) else c))


class RPowScalar(Function):
    """``c ** b`` for a Python number ``c``."""

    def forward(self, b, c):
        self.c = c
        self.save_outputs(0)
        return _arr(_xp(b).power(b.dtype.type(c), b))

    def backward(self, g):
        (out,) = self.saved_outputs
        return g * out * math.log(self.c) if self.c > 0 else g * 0


class Remainder(Function):
    """Python-style modulus (sign of the divisor), like ``torch.remainder``."""

    def forward(self, a, b):
        self.save_inputs(0, 1)
        return _arr(_xp(a).remainder(a, b))

    def backward(self, g):
        a, b = self.saved_inputs
        na, nb = self.needs_input_grad
        ga = sum_to(g, a.shape) if na else None
        # -floor_divide(a, b), as PyTorch's div(rounding_mode="floor"): NaN for an infinite a
        # (fmod(inf, b) is NaN), where floor(a / b) would give +-inf
        with np.errstate(invalid="ignore", divide="ignore"):  # inf // b is NaN by design here
            q = Tensor._wrap(_arr(_xp(a.array).floor_divide(a.array, b.array)))
        gb = sum_to(-g * q, b.shape) if nb else None
        return ga, gb


class Maximum(Function):
    """Elementwise max; on ties the gradient is split evenly (as PyTorch)."""

    def forward(self, a, b):
        self.save_inputs(0, 1)
        return _arr(_xp(a).maximum(a, b))

    def backward(self, g):
        a, b = self.saved_inputs
        return _minmax_grads(self, g, a, b, a.array < b.array, a.array > b.array)


class Minimum(Function):
    def forward(self, a, b):
        self.save_inputs(0, 1)
        return _arr(_xp(a).minimum(a, b))

    def backward(self, g):
        a, b = self.saved_inputs
        return _minmax_grads(self, g, a, b, a.array > b.array, a.array < b.array)


def _minmax_grads(node, g, a, b, a_loses, b_loses):
    """PyTorch's masks: g / 2 to both on a tie, 0 to the loser, g to the winner -- and g to
    both where a comparison involves NaN (neither loses), as ``where(a == b, g / 2, g)
    .masked_fill_(a < b, 0)`` does."""
    xp = _xp(a.array)
    tie = a.array == b.array
    dt = g.array.dtype
    half, zero, one = dt.type(0.5), dt.type(0), dt.type(1)
    na, nb = node.needs_input_grad
    ga = gb = None
    if na:
        ga = sum_to(g * Tensor._wrap(_arr(xp.where(tie, half, xp.where(a_loses, zero, one)))), a.shape)
    if nb:
        gb = sum_to(g * Tensor._wrap(_arr(xp.where(tie, half, xp.where(b_loses, zero, one)))), b.shape)
    return ga, gb


class Atan2(Function):
    def forward(self, a, b):
        self.save_inputs(0, 1)
        return _arr(_xp(a).arctan2(a, b))

    def backward(self, g):
        a, b = self.saved_inputs
        d = a * a + b * b
        na, nb = self.needs_input_grad
        return (sum_to(g * b / d, a.shape) if na else None), (sum_to(-g * a / d, b.shape) if nb else None)


def _binary(cls, a, b, op):
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.array.dtype != b.array.dtype \
            or type(a.array) is not np.ndarray or type(b.array) is not np.ndarray:
        a, b = _prepare(a, b, op)  # (two NumPy tensors of one dtype need nothing from it)
    try:
        return cls.apply(a, b)
    except ValueError:
        _check_broadcast(a, b, op)  # a NumPy/CuPy broadcast error becomes one that names the op
        raise


def _check_broadcast(a, b, op):
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise RuntimeError(
            f"{op}: the size of tensor a {tuple(a.shape)} must match the size of tensor b "
            f"{tuple(b.shape)} at every non-singleton dimension (they cannot be broadcast together)"
        ) from None


def writes_into(t, other) -> bool:
    """Whether ``t += other`` / ``t -= other`` can run as Add / Sub writing straight into
    ``t``'s memory (``Tensor.add_`` / ``sub_`` under autograd): ``other`` a tensor of ``t``'s
    dtype and array type whose broadcast leaves ``t``'s shape unchanged. Other cases (a Python
    number, promotion, a CPU/CUDA mix, a bad shape) take the general in-place path, which
    promotes, casts back and names the problem as before."""
    return (isinstance(other, Tensor) and type(other.array) is type(t.array) and other.array.dtype == t.array.dtype
            and t.array.dtype != np.bool_ and len(other.shape) <= len(t.shape)
            and all(o in (1, n) for o, n in zip(reversed(other.shape), reversed(t.shape))))


def add(input, other, alpha=1):
    """Elementwise ``input + alpha * other`` with broadcasting (``torch.add``).

    Example:
        >>> import avila_ml as am
        >>> am.add(am.tensor([1.0, 2.0]), 1)
        tensor([2., 3.])
    """
    if alpha != 1:
        other = mul(other, alpha) if isinstance(other, Tensor) else other * alpha
    return _binary(Add, input, other, "add")


def sub(input, other, alpha=1):
    """Elementwise ``input - alpha * other`` (``torch.sub``).

    Example:
        >>> import avila_ml as am
        >>> am.sub(am.tensor([1.0, 2.0]), 1)
        tensor([0., 1.])
    """
    for t in (input, other):
        if isinstance(t, Tensor) and t.array.dtype == np.bool_:
            raise RuntimeError("sub: subtraction, the `-` operator, with a bool tensor is not supported; "
                               "to invert a mask use `~` or logical_not()")
    if alpha != 1:
        other = mul(other, alpha) if isinstance(other, Tensor) else other * alpha
    return _binary(Sub, input, other, "sub")


def mul(input, other):
    """Elementwise product with broadcasting (``torch.mul``).

    Example:
        >>> import avila_ml as am
        >>> am.mul(am.tensor([1.0, 2.0]), am.tensor([[3.0], [4.0]]))
        tensor([[3., 6.],
                [4., 8.]])
    """
    return _binary(Mul, input, other, "mul")


def div(input, other, rounding_mode=None):
    """Elementwise true division; integers give floats (``torch.div``).

    ``rounding_mode="floor"`` or ``"trunc"`` rounds the quotient (no gradient).

    Example:
        >>> import avila_ml as am
        >>> am.div(am.tensor([1, 2]), 2)
        tensor([0.5000, 1.0000])
    """
    if rounding_mode == "floor":
        return floor_divide(input, other)
    if rounding_mode == "trunc":
        _check_int_divisor("div", *_prepare(input, other, "div"))
        return trunc(div(input, other)).to(_dt.result_type(input, other))
    if rounding_mode is not None:
        raise ValueError(f"div: rounding_mode must be None, 'floor' or 'trunc', got {rounding_mode!r}")
    a, b = _prepare(input, other, "div")
    if not a.dtype.is_floating_point:
        f = _dt.get_default_dtype()
        a, b = cast(a, f), cast(b, f)
    try:
        return Div.apply(a, b)
    except ValueError:
        _check_broadcast(a, b, "div")
        raise


true_divide = div


def _check_int_divisor(op: str, a, b) -> None:
    """Integer division by zero has no value: raise as PyTorch does on the CPU (NumPy would
    silently give 0). Float division keeps IEEE inf/nan. On CUDA the check reads the divisor
    on the host, so it runs only with sync checks on (``avila_ml.debug``), as PyTorch's CUDA
    kernels do not check either."""
    if a.array.dtype.kind in "iub" and b.array.dtype.kind in "iub" and host_checks(b.array) and bool((b.array == 0).any()):
        raise RuntimeError(f"ZeroDivisionError: {op}: integer division by zero (the divisor of dtype "
                           f"{b.dtype} contains 0)")


def floor_divide(input, other):
    """Elementwise ``floor(input / other)`` (``torch.floor_divide``); not differentiable.

    Integer tensors divided by 0 raise ``RuntimeError("ZeroDivisionError ...")`` as in PyTorch.

    Example:
        >>> import avila_ml as am
        >>> am.floor_divide(am.tensor([7, -7]), 2)
        tensor([ 3, -4])
    """
    a, b = _prepare(input, other, "floor_divide")
    _check_broadcast(a, b, "floor_divide")
    _check_int_divisor("floor_divide", a, b)
    return _nondiff(_xp(a.array).floor_divide(a.array, b.array))


def remainder(input, other):
    """Elementwise modulus with the sign of the divisor (``torch.remainder``, Python's ``%``).

    Math: ``a - floor(a / b) * b``; d/da = 1, d/db = -floor(a / b). Integer tensors
    with a 0 divisor raise ``RuntimeError("ZeroDivisionError ...")`` as in PyTorch.

    Example:
        >>> import avila_ml as am
        >>> am.remainder(am.tensor([5, -5]), 3)
        tensor([2, 1])
    """
    a, b = _prepare(input, other, "remainder")
    _check_int_divisor("remainder", a, b)
    return _binary(Remainder, a, b, "remainder")


def pow(input, exponent):
    """Elementwise power (``torch.pow``).

    Math: d/da a^b = b a^(b-1); d/db a^b = a^b ln a.

    Example:
        >>> import avila_ml as am
        >>> am.pow(am.tensor([2.0, 3.0]), 2)
        tensor([4., 9.])
    """
    if isinstance(input, Tensor) and _is_scalar(exponent):
        dt = _dt.result_type(input, exponent)
        x = input if input.dtype is dt else cast(input, dt)
        return PowScalar.apply(x, exponent)
    if _is_scalar(input) and isinstance(exponent, Tensor):
        dt = _dt.result_type(input, exponent)
        x = exponent if exponent.dtype is dt else cast(exponent, dt)
        return RPowScalar.apply(x, input)
    return _binary(Pow, input, exponent, "pow")


def maximum(input, other):
    """Elementwise maximum (``torch.maximum``); ties split the gradient evenly.

    Example:
        >>> import avila_ml as am
        >>> am.maximum(am.tensor([1.0, 5.0]), am.tensor([3.0, 2.0]))
        tensor([3., 5.])
    """
    return _binary(Maximum, input, other, "maximum")


def minimum(input, other):
    """Elementwise minimum (``torch.minimum``); ties split the gradient evenly.

    Example:
        >>> import avila_ml as am
        >>> am.minimum(am.tensor([1.0, 5.0]), am.tensor([3.0, 2.0]))
        tensor([1., 2.])
    """
    return _binary(Minimum, input, other, "minimum")


def atan2(input, other):
    """Elementwise ``atan(input / other)`` with quadrant (``torch.atan2``).

    Example:
        >>> import avila_ml as am
        >>> am.atan2(am.tensor([1.0, -1.0]), am.tensor([-1.0, -1.0])).round(decimals=4)
        tensor([ 2.3562, -2.3562])
    """
    return _binary(Atan2, input, other, "atan2")


# ------------------------------------------------------------------------------- unary math
class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, g):
        if not _grad_state.enabled:
            return _arr(-g.array)
        return -g


class Abs(Function):
    def forward(self, x):
        self.save_inputs(0)
        return _arr(_xp(x).abs(x))

    def backward(self, g):
        (x,) = self.saved_inputs
        return g * sign(x)  # PyTorch's sgn: 0 at NaN (NumPy's sign would give NaN)


class Exp(Function):
    def forward(self, x):
        self.save_outputs(0)
        return _xp(x).exp(x)

    def backward(self, g):
        if _fast(g.array):
            (y,) = self.saved_output_arrays()
            if y.dtype == g.array.dtype:
                return _arr(g.array * y)
        (y,) = self.saved_outputs
        return g * y


class Log(Function):
    def forward(self, x):
        self.save_inputs(0)
        return _xp(x).log(x)

    def backward(self, g):
        (x,) = self.saved_inputs
        if _fast(g.array, x.array):
            return _arr(g.array / x.array)
        return g / x


class Log2(Function):
    def forward(self, x):
        self.save_inputs(0)
        return _arr(_xp(x).log2(x))

    def backward(self, g):
        (x,) = self.saved_inputs
        return g / (x * math.log(2.0))


class Log10(Function):
    def forward(self, x):
        self.save_inputs(0)
        return _arr(_xp(x).log10(x))

    def backward(self, g):
        (x,) = self.saved_inputs
        return g / (x * math.log(10.0))


class Log1p(Function):
    def forward(self, x):
        self.save_inputs(0)
        if isinstance(x, np.ndarray) and x.dtype == np.float32:  # NumPy's float32 log1p is scalar code
            from ..backends._log1p_float32 import log1p as log1p32
            return log1p32(x)
        return _arr(_xp(x).log1p(x))

    def backward(self, g):
        (x,) = self.saved_inputs
        return g / (x + 1)


class Expm1(Function):
    def forward(self, x):
        self.save_outputs(0)
        return _arr(_xp(x).expm1(x))

    def backward(self, g):
        (y,) = self.saved_outputs
        return g * (y + 1)


class Sqrt(Function):
    def forward(self, x):
        self.save_outputs(0)
        return _xp(x).sqrt(x)

    def backward(self, g):
        if _fast(g.array):
            (y,) = self.saved_output_arrays()
            if y.dtype == g.array.dtype:
                return _arr(g.array / (y.dtype.type(2) * y))
        (y,) = self.saved_outputs
        return g / (2 * y)


class Rsqrt(Function):
    def forward(self, x):
        self.save_outputs(0)
        xp = _xp(x)
        return _arr(xp.reciprocal(xp.sqrt(x)))

    def backward(self, g):
        (y,) = self.saved_outputs
        return g * -0.5 * y * y * y


class Sin(Function):
    def forward(self, x):
        self.save_inputs(0)
        return _xp(x).sin(x)

    def backward(self, g):
        (x,) = self.saved_inputs
        if _fast(g.array, x.array):
            return _arr(g.array * _xp(x.array).cos(x.array))
        return g * cos(x)


class Cos(Function):
    def forward(self, x):
        self.save_inputs(0)
        return _xp(x).cos(x)

    def backward(self, g):
        (x,) = self.saved_inputs
        if _fast(g.array, x.array):
            return _arr(-g.array * _xp(x.array).sin(x.array))
        return -g * sin(x)


class Tan(Function):
    def forward(self, x):
        self.save_outputs(0)
        return _arr(_xp(x).tan(x))

    def backward(self, g):
        (y,) = self.saved_outputs
        return g * (1 + y * y)


class Tanh(Function):
    def forward(self, x):
        self.save_outputs(0)
        return _xp(x).tanh(x)

    def backward(self, g):
        if _fast(g.array):
            (y,) = self.saved_output_arrays()
            if y.dtype == g.array.dtype:
                return _arr(g.array * (y.dtype.type(1) - y * y))
        (y,) = self.saved_outputs
        return g * (1 - y * y)


_SIGMOID_ONEDNN_MIN = 1 << 15  # below it NumPy is as fast (35 vs 78 us at 8192: the call's fixed cost)


class Sigmoid(Function):
    def forward(self, x):
        self.save_outputs(0)
        if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.size >= _SIGMOID_ONEDNN_MIN:
            # oneDNN's logistic kernel (vectorised exp) instead of NumPy's float32 tanh: 120 vs
            # 324 us at 100k elements, 0.8 vs 5.4 ms at 1.6M (in-process A/B, loaded 2-core EPYC)
            from ..cpu_accel import _eltwise
            y = _eltwise.forward("logistic", x, min_size=_SIGMOID_ONEDNN_MIN)
            if y is not None:
                return y
        xp = _xp(x)
        # 0.5 (1 + tanh(x/2)) never overflows, unlike 1 / (1 + exp(-x))
        half = x.dtype.type(0.5)
        return _arr(xp.tanh(x * half) * half + half)

    def backward(self, g):
        if _fast(g.array):
            (y,) = self.saved_output_arrays()
            if y.dtype == g.array.dtype:
                return _arr(g.array * y * (y.dtype.type(1) - y))
        (y,) = self.saved_outputs
        return g * y * (1 - y)


class Erf(Function):
    def forward(self, x):
        self.save_inputs(0)
        return _arr(backend_of(x).erf(x))

    def backward(self, g):
        (x,) = self.saved_inputs
        return g * (2.0 / math.sqrt(math.pi)) * exp(-(x * x))


class Clamp(Function):
    """Clamp to [lo, hi] (numbers); the gradient passes where lo <= x <= hi (as PyTorch)."""

    def forward(self, x, lo, hi):
        self.save_inputs(0)
        self.lo, self.hi = lo, hi
        return _arr(_xp(x).clip(x, lo, hi))

    def backward(self, g):
        (x,) = self.saved_inputs
        a = x.array
        mask = np.True_ if self.lo is None else a >= self.lo
        if self.hi is not None:
            mask = mask & (a <= self.hi)
        return g * Tensor._wrap(_xp(a).asarray(mask, dtype=g.array.dtype))


class ClampTensor(Function):
    """Clamp against one tensor bound (``is_min``: ``max(x, lo)``, else ``min(x, hi)``), with
    PyTorch's ``clamp_backward`` masks: the input gets g where ``x >= lo`` (``x <= hi``), the
    bound where ``x < lo`` (``x > hi``); at a tie the input keeps it, at a NaN neither gets it."""

    def forward(self, x, bound, is_min):
        self.save_inputs(0, 1)
        self.is_min = is_min
        xp = _xp(x)
        return _arr(xp.maximum(x, bound) if is_min else xp.minimum(x, bound))

    def backward(self, g):
        x, b = self.saved_inputs
        nx, nb = self.needs_input_grad
        xa, ba = x.array, b.array
        keep = (xa >= ba) if self.is_min else (xa <= ba)
        to_bound = (xa < ba) if self.is_min else (xa > ba)
        zero = _scalar_tensor(0, g.dtype, g)
        return ((sum_to(where(keep, g, zero), x.shape) if nx else None),
                (sum_to(where(to_bound, g, zero), b.shape) if nb else None))


class ClampTensor2(Function):
    """Clamp to two tensor bounds, ``min(max(x, lo), hi)``, with PyTorch's masks
    (``clamp_backward`` / ``clamp_backward_min_max``): x gets g where ``lo <= x <= hi``, lo
    where ``x < lo and lo < hi``, hi where ``x > hi or hi < lo``; NaN anywhere: no gradient."""

    def forward(self, x, lo, hi):
        self.save_inputs(0, 1, 2)
        xp = _xp(x)
        return _arr(xp.minimum(xp.maximum(x, lo), hi))

    def backward(self, g):
        x, lo, hi = self.saved_inputs
        nx, nl, nh = self.needs_input_grad
        xa, la, ha = x.array, lo.array, hi.array
        zero = _scalar_tensor(0, g.dtype, g)
        gx = sum_to(where((xa >= la) & (xa <= ha), g, zero), x.shape) if nx else None
        gl = sum_to(where((xa < la) & (la < ha), g, zero), lo.shape) if nl else None
        gh = sum_to(where((xa > ha) | (ha < la), g, zero), hi.shape) if nh else None
        return gx, gl, gh


class Cast(Function):
    def forward(self, x, dt):
        self.src = x.dtype
        return x.astype(dt)

    def backward(self, g):
        return Cast.apply(g, self.src)


class Clone(Function):
    def forward(self, x):
        return x.copy()

    def backward(self, g):
        return g


class Where(Function):
    """``where(cond, a, b)``; ``cond`` is a boolean array, not differentiated."""

    def forward(self, cond, a, b):
        self.cond = cond
        self.shapes = (a.shape, b.shape)
        return _arr(_xp(a).where(cond, a, b))

    def backward(self, g):
        na, nb = self.needs_input_grad
        zero = Tensor._wrap(_xp(g.array).zeros((), dtype=g.array.dtype))
        ga = sum_to(where(self.cond, g, zero), self.shapes[0]) if na else None
        gb = sum_to(where(self.cond, zero, g), self.shapes[1]) if nb else None
        return ga, gb


def _float_input(x, op):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    if not _dt.np_is_floating(x.array.dtype):
        return cast(x, _dt.get_default_dtype())
    return x


def _unary_doc(name, math_text, torch_name, example_in, example_out):
    # the example prints rounded values: a CPU's math library may be one ulp off (float32
    # log10(100) is 2.0000002 on some SIMD paths), which would switch the repr to "2.0000"
    return (f"Elementwise {name} (``{torch_name}``).\n\n    Math: {math_text}\n\n    Example:\n"
            f"        >>> import avila_ml as am\n        >>> am.{name}(am.tensor({example_in})).round(decimals=4)\n"
            f"        {example_out}\n    ")


def _make_unary(cls, name, math_text, ex_in, ex_out, float_only=True):
    def op(input):
        x = _float_input(input, name) if float_only else input
        return cls.apply(x)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = _unary_doc(name, math_text, f"torch.{name}", ex_in, ex_out)
    return op


exp = _make_unary(Exp, "exp", "y = e^x; dy/dx = y.", "[0.0, 1.0]", "tensor([1.0000, 2.7183])")
log = _make_unary(Log, "log", "y = ln x; dy/dx = 1/x.", "[1.0]", "tensor([0.])")
log2 = _make_unary(Log2, "log2", "y = log2 x; dy/dx = 1/(x ln 2).", "[4.0, 10.0]", "tensor([2.0000, 3.3219])")
log10 = _make_unary(Log10, "log10", "y = log10 x; dy/dx = 1/(x ln 10).", "[100.0, 2.0]", "tensor([2.0000, 0.3010])")
log1p = _make_unary(Log1p, "log1p", "y = ln(1 + x), accurate for tiny x; dy/dx = 1/(1+x).", "[0.0]", "tensor([0.])")
expm1 = _make_unary(Expm1, "expm1", "y = e^x - 1, accurate for tiny x; dy/dx = y + 1.", "[0.0]", "tensor([0.])")
sqrt = _make_unary(Sqrt, "sqrt", "y = sqrt(x); dy/dx = 1/(2y).", "[4.0]", "tensor([2.])")
rsqrt = _make_unary(Rsqrt, "rsqrt", "y = 1/sqrt(x); dy/dx = -y^3/2.", "[4.0]", "tensor([0.5000])")
sin = _make_unary(Sin, "sin", "dy/dx = cos x.", "[0.0]", "tensor([0.])")
cos = _make_unary(Cos, "cos", "dy/dx = -sin x.", "[0.0, 1.0]", "tensor([1.0000, 0.5403])")
tan = _make_unary(Tan, "tan", "dy/dx = 1 + y^2.", "[0.0]", "tensor([0.])")
tanh = _make_unary(Tanh, "tanh", "dy/dx = 1 - y^2.", "[0.0]", "tensor([0.])")
sigmoid = _make_unary(Sigmoid, "sigmoid", "y = 1/(1+e^-x), computed as (1+tanh(x/2))/2; dy/dx = y(1-y).", "[0.0]", "tensor([0.5000])")
erf = _make_unary(Erf, "erf", "y = 2/sqrt(pi) int_0^x e^{-t^2} dt; dy/dx = 2/sqrt(pi) e^{-x^2}.", "[0.0]", "tensor([0.])")


def neg(input):
    """Elementwise negation ``-x`` (``torch.neg``).

    Example:
        >>> import avila_ml as am
        >>> am.neg(am.tensor([1.0, -2.0]))
        tensor([-1.,  2.])
    """
    if input.array.dtype == np.bool_:
        raise RuntimeError("neg: negation, the `-` operator, on a bool tensor is not supported; "
                           "to invert a mask use `~` or logical_not()")
    return Neg.apply(input)


def abs(input):
    """Elementwise absolute value (``torch.abs``); d|x|/dx = sign(x), 0 at 0.

    Example:
        >>> import avila_ml as am
        >>> am.abs(am.tensor([-1.5, 2.0]))
        tensor([1.5000, 2.0000])
    """
    return Abs.apply(input)


def square(input):
    """Elementwise ``x * x`` (``torch.square``).

    Example:
        >>> import avila_ml as am
        >>> am.square(am.tensor([-2.0, 3.0]))
        tensor([4., 9.])
    """
    return pow(input, 2)


def reciprocal(input):
    """Elementwise ``1 / x`` (``torch.reciprocal``).

    Example:
        >>> import avila_ml as am
        >>> am.reciprocal(am.tensor([2.0, 4.0]))
        tensor([0.5000, 0.2500])
    """
    return div(1.0, _float_input(input, "reciprocal"))


def sign(input):
    """Elementwise sign, -1, 0 or 1 (``torch.sign``); not differentiable.

    Math: sign(x) = (x > 0) - (x < 0), so sign(NaN) = 0 as in PyTorch (NumPy gives NaN).

    Example:
        >>> import avila_ml as am
        >>> am.sign(am.tensor([-2.0, 0.0, 3.0, float("nan")]))
        tensor([-1.,  0.,  1.,  0.])
    """
    a = input.array
    xp = _xp(a)
    out = xp.sign(a)
    if a.dtype.kind == "f":
        out = xp.where(xp.isnan(a), a.dtype.type(0), out)
    return _nondiff(out)


def _rounding(fn_name):
    def op(input):
        xp = _xp(input.array)
        return _nondiff(getattr(xp, fn_name)(input.array))
    out = {"floor": "[-2.,  1.]", "ceil": "[-1.,  2.]", "trunc": "[-1.,  1.]"}[fn_name]
    op.__doc__ = (f"Elementwise ``{fn_name}`` (``torch.{fn_name}``); not differentiable (zero gradient almost "
                  f"everywhere).\n\n    Example:\n        >>> import avila_ml as am\n"
                  f"        >>> am.{fn_name}(am.tensor([-1.5, 1.5]))\n        tensor({out})\n    ")
    return op


floor = _rounding("floor")
ceil = _rounding("ceil")
trunc = _rounding("trunc")


def round(input, decimals: int = 0):
    """Round half to even (``torch.round``); not differentiable.

    Example:
        >>> import avila_ml as am
        >>> am.round(am.tensor([0.5, 1.5, 2.567]))
        tensor([0., 2., 3.])
        >>> am.round(am.tensor([2.567]), decimals=2)
        tensor([2.5700])
    """
    return _nondiff(_xp(input.array).round(input.array, decimals))


def clamp(input, min=None, max=None):
    """Clamp every element into ``[min, max]`` (``torch.clamp``); bounds may be numbers or tensors.

    Math: y = min(max(x, lo), hi); dy/dx = 1 where lo <= x <= hi, else 0.

    Example:
        >>> import avila_ml as am
        >>> am.clamp(am.tensor([-2.0, 0.5, 3.0]), -1, 1)
        tensor([-1.0000,  0.5000,  1.0000])
    """
    if min is None and max is None:
        raise RuntimeError("clamp: at least one of 'min' or 'max' must not be None")
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        x = input
        lo = hi = None
        if min is not None:
            x, lo = _prepare(x, min, "clamp")
        if max is not None:
            x, hi = _prepare(x, max, "clamp")
            if lo is not None and lo.dtype is not x.dtype:
                lo = cast(lo, x.dtype)
        try:
            np.broadcast_shapes(x.shape, *(t.shape for t in (lo, hi) if t is not None))
        except ValueError:
            raise RuntimeError(f"clamp: input of shape {tuple(x.shape)} and bounds of shapes "
                               f"{[tuple(t.shape) for t in (lo, hi) if t is not None]} cannot be broadcast together") from None
        if lo is None:
            return ClampTensor.apply(x, hi, False)
        if hi is None:
            return ClampTensor.apply(x, lo, True)
        return ClampTensor2.apply(x, lo, hi)
    dt = _dt.result_type(input, *(v for v in (min, max) if v is not None))
    if input.dtype is not dt:
        input = cast(input, dt)
    return Clamp.apply(input, min, max)


clip = clamp


def where(condition, input, other):
    """Pick ``input`` where ``condition`` holds, else ``other`` (``torch.where``).

    Math: gradient flows to ``input`` where the condition is true and to ``other`` elsewhere.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([-1.0, 2.0])
        >>> am.where(x > 0, x, 0.0)
        tensor([0., 2.])
    """
    cond = condition.array if isinstance(condition, Tensor) else condition
    if not (isinstance(input, Tensor) or isinstance(other, Tensor)):
        ref = condition if isinstance(condition, Tensor) else None
        dt = _dt.result_type(input, other)
        xp = _xp(cond) if ref is not None else np
        return Tensor._wrap(_arr(xp.where(cond, xp.asarray(input, dt.np), xp.asarray(other, dt.np))))
    a, b = _prepare(input, other, "where")
    if getattr(cond, "dtype", None) is not None and cond.dtype != np.bool_:
        cond = cond.astype(bool)
    try:
        np.broadcast_shapes(np.shape(cond), a.shape, b.shape)
    except ValueError:
        raise RuntimeError(
            f"where: condition of shape {tuple(np.shape(cond))}, input of shape {tuple(a.shape)} and "
            f"other of shape {tuple(b.shape)} cannot be broadcast together"
        ) from None
    return Where.apply(cond, a, b)


def cast(input, dtype):
    """Convert to ``dtype``; differentiable between floating types (``Tensor.to(dtype)``).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.elementwise import cast
        >>> cast(am.tensor([1.5, 2.0]), am.int64)
        tensor([1, 2])
    """
    dt = _dt.to_dtype(dtype)
    if input.array.dtype == dt.np:
        return input
    if dt.name == "bfloat16" and not isinstance(input.array, np.ndarray):
        raise TypeError(_dt.BFLOAT16_CUDA_MSG.format(op="to"))
    if not dt.is_floating_point:
        return _nondiff(input.array.astype(dt.np))
    return Cast.apply(input, dt.np)


def clone(input):
    """A copy with its own memory; gradient passes through unchanged (``torch.clone``).

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([1.0, 2.0]); y = am.clone(x); y[0] = 9.0; x
        tensor([1., 2.])
    """
    return Clone.apply(input)


class Lerp(Function):
    """``lerp(a, b, w)`` with PyTorch's two-sided formula; ``w`` a tensor (maybe 0-d)."""

    def forward(self, a, b, w):
        self.save_inputs(0, 1, 2)
        xp = _xp(a)
        d = b - a
        one = a.dtype.type(1)
        # a + w (b - a) for |w| < 1/2, else b - (b - a)(1 - w): exact at both ends, and an
        # infinite a with w near 1 gives +-inf, not inf - inf (PyTorch's lerp kernel)
        return _arr(xp.where(xp.abs(w) < 0.5, a + w * d, b - d * (one - w)))

    def backward(self, g):
        a, b, w = self.saved_inputs
        na, nb, nw = self.needs_input_grad
        ga = sum_to(g * (1 - w), a.shape) if na else None
        gb = sum_to(g * w, b.shape) if nb else None
        gw = sum_to(g * (b - a), w.shape) if nw else None
        return ga, gb, gw


def lerp(input, end, weight):
    """Linear interpolation ``input + weight * (end - input)`` (``torch.lerp``).

    Math: computed as ``input + w (end - input)`` for ``|w| < 1/2`` and as
    ``end - (end - input)(1 - w)`` otherwise (PyTorch's formula: exact at w = 0 and w = 1);
    d/dinput = 1 - w, d/dend = w, d/dw = end - input.

    Example:
        >>> import avila_ml as am
        >>> am.lerp(am.tensor([0.0, 10.0]), am.tensor([10.0, 20.0]), 0.5)
        tensor([ 5., 15.])
    """
    a, b = _prepare(input, end, "lerp")
    if isinstance(weight, Tensor):
        if weight.dtype is not a.dtype:
            raise RuntimeError(f"lerp: expected dtype {a.dtype} for `weight` but got dtype {weight.dtype} "
                               f"(input {input.dtype if isinstance(input, Tensor) else type(input).__name__}, "
                               f"end {end.dtype if isinstance(end, Tensor) else type(end).__name__})")
        w = weight
    elif _is_scalar(weight):
        w = _scalar_tensor(weight, a.dtype, a)
    else:
        raise TypeError(f"lerp: weight must be a Tensor or a number, got {type(weight).__name__}")
    if not a.dtype.is_floating_point:
        raise RuntimeError(f"lerp: expected a floating-point input, got dtype {a.dtype}")
    try:
        np.broadcast_shapes(a.shape, b.shape, w.shape)
    except ValueError:
        raise RuntimeError(f"lerp: input of shape {tuple(a.shape)}, end of shape {tuple(b.shape)} and weight of "
                           f"shape {tuple(w.shape)} cannot be broadcast together") from None
    return Lerp.apply(a, b, w)


@autocast_op("addcmul")
def addcmul(input, tensor1, tensor2, value=1):
    """``input + value * tensor1 * tensor2`` (``torch.addcmul``).

    Example:
        >>> import avila_ml as am
        >>> am.addcmul(am.tensor([1.0]), am.tensor([2.0]), am.tensor([3.0]), value=0.5)
        tensor([4.])
    """
    t1, t2 = _prepare(tensor1, tensor2, "addcmul")
    x, t1 = _prepare(input, t1, "addcmul")
    x, t2 = _prepare(x, t2, "addcmul")
    if not _is_scalar(value):
        raise TypeError(f"addcmul: value must be a number, got {type(value).__name__}")
    if not _dt.np_is_floating(t1.array.dtype) and isinstance(value, float):
        return input + value * tensor1 * tensor2  # integer tensors with a float value: the promoting path
    try:
        np.broadcast_shapes(x.shape, t1.shape, t2.shape)
    except ValueError:
        raise RuntimeError(f"addcmul: input of shape {tuple(x.shape)}, tensor1 of shape {tuple(t1.shape)} and "
                           f"tensor2 of shape {tuple(t2.shape)} cannot be broadcast together") from None
    return Addcmul.apply(x, t1, t2, value)


class Addcmul(Function):
    """``x + value * t1 * t2`` as one op, with PyTorch's per-input gradients (so an empty
    broadcast gives zero, not ``0 * inf``, gradients)."""

    def forward(self, x, t1, t2, value):
        self.save_inputs(1, 2)
        self.value = value
        self.shapes = (x.shape, t1.shape, t2.shape)
        v = t1.dtype.type(value) if t1.dtype.kind == "f" else value
        return _arr(x + v * t1 * t2)

    def backward(self, g):
        t1, t2 = self.saved_inputs
        nx, n1, n2 = self.needs_input_grad
        sx, s1, s2 = self.shapes
        v = self.value
        return ((sum_to(g, sx) if nx else None),
                (sum_to(g * (t2 * v), s1) if n1 else None),
                (sum_to(g * (t1 * v), s2) if n2 else None))


# ---------------------------------------------------------------- comparisons (no gradient)
def _nondiff(array) -> Tensor:
    return Tensor._wrap(_arr(array))


def _compare(ufunc_name, op):
    def fn(input, other):
        a, b = _prepare(input, other, op)
        try:
            return _nondiff(getattr(_xp(a.array), ufunc_name)(a.array, b.array))
        except ValueError:
            _check_broadcast(a, b, op)
            raise
    fn.__name__ = op
    fn.__doc__ = (f"Elementwise ``{op}`` comparison with broadcasting, a bool tensor (``torch.{op}``).\n\n"
                  f"    Example:\n        >>> import avila_ml as am\n"
                  f"        >>> am.{op}(am.tensor([1, 2]), 2).dtype\n        avila_ml.bool\n    ")
    return fn


eq = _compare("equal", "eq")
ne = _compare("not_equal", "ne")
lt = _compare("less", "lt")
le = _compare("less_equal", "le")
gt = _compare("greater", "gt")
ge = _compare("greater_equal", "ge")
logical_and = _compare("logical_and", "logical_and")
logical_or = _compare("logical_or", "logical_or")
logical_xor = _compare("logical_xor", "logical_xor")


def logical_not(input):
    """Elementwise logical not, a bool tensor (``torch.logical_not``).

    Example:
        >>> import avila_ml as am
        >>> am.logical_not(am.tensor([True, False]))
        tensor([False,  True])
    """
    return _nondiff(_xp(input.array).logical_not(input.array))


def isnan(input):
    """True where the element is NaN (``torch.isnan``).

    Example:
        >>> import avila_ml as am
        >>> am.isnan(am.tensor([1.0, float('nan')]))
        tensor([False,  True])
    """
    return _nondiff(_xp(input.array).isnan(input.array))


def isfinite(input):
    """True where the element is neither inf nor NaN (``torch.isfinite``).

    Example:
        >>> import avila_ml as am
        >>> am.isfinite(am.tensor([1.0, float('inf'), float('nan')]))
        tensor([ True, False, False])
    """
    return _nondiff(_xp(input.array).isfinite(input.array))


def isinf(input):
    """True where the element is +-inf (``torch.isinf``).

    Example:
        >>> import avila_ml as am
        >>> am.isinf(am.tensor([1.0, float('-inf')]))
        tensor([False,  True])
    """
    return _nondiff(_xp(input.array).isinf(input.array))
