"""``autocast``: run chosen ops in a lower-precision dtype (``torch.autocast``).

Inside ``with am.autocast("cpu", dtype=am.bfloat16):`` the ops listed in
:mod:`avila_ml.amp.policy` cast their floating inputs before they run: matrix products,
convolutions and attention to the low dtype (fast, half the memory), the ops that need range or
accumulate (losses, ``prod``; on CUDA also softmax, reductions, norms, exp/log/pow) to float32;
``cat``/``stack`` promote to the widest input. Casts are ordinary differentiable ``to(dtype)``
calls, so a float32 parameter used in bfloat16 receives a float32 gradient.

On CUDA the float16 ops keep float32 accumulators where it matters: the 4-D convolution kernels
(forward and both gradients) and the fused attention kernel store float16 and sum in float32,
rounding each output once (verified on the host emulation of CUDA; not yet on a real GPU).

The state is per thread and per device type (``autocast("cpu")`` leaves CUDA tensors alone).
Backward runs with autocast off (each op's backward follows its forward's dtypes), and a
composite op decorated with :func:`autocast_op` runs its inner ops with autocast off, as
PyTorch excludes the autocast dispatch key below an autocast op.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import dtypes as _dt
from .._grad_state import state as _state
from .policy import FUNCTION_OPS, policy_table

__all__ = ["autocast", "autocast_op", "run_as_op", "is_autocast_enabled", "get_autocast_dtype"]

_DEFAULT_DTYPE = {"cpu": "bfloat16", "cuda": "float16"}
_TABLES: dict = {}
_FUNCTION_CLASSES: dict = {}


def _function_policy_names() -> dict:
    """{Function class: op name}, resolved from :data:`FUNCTION_OPS` on first use."""
    if not _FUNCTION_CLASSES:
        import importlib
        for key, name in FUNCTION_OPS.items():
            mod, cls = key.split(".")
            _FUNCTION_CLASSES[getattr(importlib.import_module(f"avila_ml.ops.{mod}"), cls)] = name
    return _FUNCTION_CLASSES


class _Region:
    """The autocast state of one thread: {device type: np dtype or None (disabled)} + the cast cache."""

    __slots__ = ("dtypes", "cache_enabled", "cache")

    def __init__(self, dtypes, cache_enabled, cache):
        self.dtypes = dtypes
        self.cache_enabled = cache_enabled
        self.cache = cache

    def cast_function_args(self, cls, args):
        """Called by ``Function.apply`` for every op while a region is active."""
        name = _function_policy_names().get(cls)
        if name is None:
            return args
        return self.cast_args(name, args, {})[0]

    def cast_args(self, name, args, kwargs):
        """Apply the policy of op ``name`` to the Tensors in ``args`` / ``kwargs`` (one level of
        lists/tuples is searched, for ``cat``'s sequence)."""
        tensors = _tensors_in(args, kwargs)
        if not tensors:
            return args, kwargs
        dev_type = tensors[0].device.type
        low = self.dtypes.get(dev_type)
        if low is None:
            return args, kwargs
        kind = _table(dev_type).get(name)
        if kind is None:
            return args, kwargs
        if kind == "banned":
            raise RuntimeError(
                f"{name} is unsafe to autocast on {dev_type} (as in PyTorch): its input may come "
                "from a low-precision op whose rounding makes log(0) likely. Use "
                "binary_cross_entropy_with_logits (or BCEWithLogitsLoss), which is safe, or run "
                "this op outside the autocast region on float32 inputs."
            )
        if kind == "lower":
            target = low
        elif kind == "fp32":
            target = np.dtype(np.float32)
        else:  # promote: widest floating dtype among the non-float64 inputs
            target = low
            for t in tensors:
                d = t.array.dtype
                if _dt.np_is_floating(d) and d != np.float64:
                    target = _dt.promote_types(_dt.from_numpy_dtype(target), _dt.from_numpy_dtype(d)).np
        return _map_tensors(args, kwargs, lambda t: self._cast(t, target, kind))

    def _cast(self, t, target, kind):
        d = t.array.dtype
        if d == target or not _dt.np_is_floating(d) or d == np.float64:
            return t  # float64 is never cast by autocast (PyTorch's is_eligible)
        if kind == "fp32" and d.itemsize != 2:
            return t
        cacheable = (self.cache_enabled and kind == "lower" and d == np.float32
                     and t._requires_grad and t.grad_fn is None)
        if cacheable:
            hit = self.cache.get(id(t))
            if hit is not None and hit[0] is t:
                return hit[1]
        from ..ops.elementwise import cast
        out = cast(t, _dt.from_numpy_dtype(target))
        if cacheable:
            self.cache[id(t)] = (t, out)
        return out


def _table(dev_type):
    t = _TABLES.get(dev_type)
    if t is None:
        t = _TABLES[dev_type] = policy_table(dev_type)
    return t


def _tensors_in(args, kwargs):
    from ..tensor import Tensor
    out = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, Tensor))
    return out


def _map_tensors(args, kwargs, fn):
    from ..tensor import Tensor

    def one(a):
        if isinstance(a, Tensor):
            return fn(a)
        if isinstance(a, (list, tuple)) and any(isinstance(x, Tensor) for x in a):
            return type(a)(fn(x) if isinstance(x, Tensor) else x for x in a)
        return a

    return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}


def autocast_op(name: str):
    """Mark a composite functional op as op ``name`` of the autocast policy tables.

    Outside autocast the wrapper only reads one thread-local attribute. Inside, it casts the
    arguments by the policy and runs the op with autocast off, so the ops it is built from
    keep the dtypes the policy chose (PyTorch's ``KERNEL_CPU``/``KERNEL_CUDA`` registration).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.amp.autocast_mode import autocast_op
        >>> @autocast_op("linear")
        ... def my_linear(x, w):
        ...     return x @ w.mT
        >>> with am.autocast("cpu", dtype=am.bfloat16):
        ...     my_linear(am.ones(2, 3), am.ones(4, 3)).dtype
        avila_ml.bfloat16
    """
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return run_as_op(name, fn, *args, **kwargs)
        wrapper.__autocast_op__ = name
        return wrapper
    return deco


def run_as_op(name: str, fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` as op ``name`` of the autocast policy tables: the arguments
    cast by the policy, the body with autocast off. For ops whose policy name depends on their
    arguments (``pad``: ``reflection_pad2d``, ``replication_pad3d``, ...); ``autocast_op`` is
    this with a fixed name. Mirrors the dispatch of PyTorch's autocast kernels.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.amp.autocast_mode import run_as_op
        >>> with am.autocast("cpu", dtype=am.bfloat16):
        ...     run_as_op("mse_loss", lambda a: a * 2, am.ones(2).bfloat16()).dtype
        avila_ml.float32
    """
    region = _state.autocast
    if region is None:
        return fn(*args, **kwargs)
    args, kwargs = region.cast_args(name, args, kwargs)
    _state.autocast = None
    try:
        return fn(*args, **kwargs)
    finally:
        _state.autocast = region


def _check_dtype(device_type, dtype):
    d = _dt.to_dtype(dtype)
    if device_type == "cpu" and d.name not in ("bfloat16", "float16"):
        raise RuntimeError(
            f"autocast: in CPU autocast the supported dtypes are bfloat16 and float16, got {d}")
    if device_type == "cuda":
        if d.name == "bfloat16":
            raise RuntimeError(_dt.BFLOAT16_CUDA_MSG.format(op="autocast"))
        if d.name != "float16":
            raise RuntimeError(f"autocast: in CUDA autocast the supported dtype is float16, got {d}")
    return d


class autocast:
    """Context manager and decorator that runs listed ops in a lower precision (``torch.autocast``).

    ``device_type`` is ``"cpu"`` or ``"cuda"``; ``dtype`` defaults to ``bfloat16`` on the CPU
    and ``float16`` on CUDA (CuPy has no bfloat16: asking for it on CUDA raises).
    ``enabled=False`` turns autocast off inside an enclosing region; regions nest and restore
    the outer state on exit. ``cache_enabled`` keeps, for the outermost region's lifetime,
    the low-precision copy of each float32 leaf that requires grad (weights used several times
    are cast once).

    Math: for a listed ``lower`` op, ``y = op(cast_low(x), cast_low(w))``; the backward of
    ``cast_low`` casts the gradient back, so ``w.grad`` has ``w``'s dtype.

    Example:
        >>> import avila_ml as am
        >>> lin = am.nn.Linear(3, 2)
        >>> with am.autocast("cpu", dtype=am.bfloat16):
        ...     y = lin(am.ones(4, 3))
        ...     loss = am.nn.functional.mse_loss(y, am.zeros(4, 2))
        >>> y.dtype, loss.dtype
        (avila_ml.bfloat16, avila_ml.float32)
        >>> loss.backward(); lin.weight.grad.dtype
        avila_ml.float32
    """

    def __init__(self, device_type: str = "cuda", dtype=None, enabled: bool = True,
                 cache_enabled: bool = True):
        if device_type not in ("cpu", "cuda"):
            raise RuntimeError(
                f"autocast: device_type must be 'cpu' or 'cuda', got {device_type!r}")
        self.device = device_type
        self.fast_dtype = _check_dtype(device_type, dtype if dtype is not None else _DEFAULT_DTYPE[device_type]) \
            if enabled else None
        self._enabled = bool(enabled)
        self._cache_enabled = bool(cache_enabled)
        self._stack = []

    def __enter__(self):
        prev = _state.autocast_outer
        self._stack.append(prev)
        dtypes = dict(prev.dtypes) if prev is not None else {}
        dtypes[self.device] = self.fast_dtype.np if self._enabled else None
        cache = prev.cache if prev is not None else {}
        region = _Region(dtypes, self._cache_enabled and (prev is None or prev.cache_enabled), cache)
        _state.autocast_outer = region
        _state.autocast = region if any(v is not None for v in dtypes.values()) else None
        return self

    def __exit__(self, *exc):
        prev = self._stack.pop()
        if prev is None:
            _state.autocast_outer.cache.clear()  # the outermost region ends: drop cached casts
        _state.autocast_outer = prev
        _state.autocast = prev if prev is not None and any(v is not None for v in prev.dtypes.values()) else None
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)
        return wrapper


def is_autocast_enabled(device_type: str = "cuda") -> bool:
    """True inside an enabled autocast region for ``device_type`` (``torch.is_autocast_enabled``).

    Example:
        >>> import avila_ml as am
        >>> with am.autocast("cpu"):
        ...     am.is_autocast_enabled("cpu"), am.is_autocast_enabled("cuda")
        (True, False)
    """
    region = _state.autocast_outer
    return region is not None and region.dtypes.get(device_type) is not None


def get_autocast_dtype(device_type: str):
    """The dtype autocast uses for ``device_type`` (``torch.get_autocast_dtype``).

    Example:
        >>> import avila_ml as am
        >>> am.get_autocast_dtype("cpu"), am.get_autocast_dtype("cuda")
        (avila_ml.bfloat16, avila_ml.float16)
    """
    region = _state.autocast_outer
    d = region.dtypes.get(device_type) if region is not None else None
    if d is not None:
        return _dt.from_numpy_dtype(d)
    return _dt.to_dtype(_DEFAULT_DTYPE[device_type])
