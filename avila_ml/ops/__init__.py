"""Differentiable operations, one module per family, and the Tensor methods that call them.

``elementwise`` (arithmetic, math, comparisons), ``reduction`` (sum, mean, max, softmax, ...),
``linalg`` (matmul, einsum), ``shape`` (reshape, permute, cat, pad, ...), ``indexing``
(getitem, gather, scatter). Layers' ops (conv, pooling, attention, activations,
normalization, losses) live in their own modules and are exported through
``avila_ml.nn.functional``.
"""
from __future__ import annotations

from . import elementwise, indexing, linalg, reduction, shape, write
from .elementwise import *  # noqa: F401,F403
from .indexing import *  # noqa: F401,F403
from .linalg import *  # noqa: F401,F403
from .reduction import *  # noqa: F401,F403
from .shape import *  # noqa: F401,F403
from . import comparison, diagonal as _diagonal_mod, scatter_reduce as _scatter_reduce_mod, sorting, structured
from .diagonal import *  # noqa: F401,F403
from .comparison import *  # noqa: F401,F403
from .scatter_reduce import *  # noqa: F401,F403
from .sorting import *  # noqa: F401,F403
from .structured import *  # noqa: F401,F403
from ..tensor import Tensor

__all__ = (elementwise.__all__ + reduction.__all__ + linalg.__all__ + shape.__all__
           + indexing.__all__ + comparison.__all__ + _scatter_reduce_mod.__all__ + sorting.__all__
           + structured.__all__ + _diagonal_mod.__all__ + ["t"])

E, R, S, I, L = elementwise, reduction, shape, indexing, linalg


def _swap(fn):
    return lambda self, other: fn(other, self)


_METHODS = {
    # operators
    "__add__": E.add, "__radd__": _swap(E.add), "__sub__": E.sub, "__rsub__": _swap(E.sub),
    "__mul__": E.mul, "__rmul__": _swap(E.mul), "__truediv__": E.div, "__rtruediv__": _swap(E.div),
    "__floordiv__": E.floor_divide, "__rfloordiv__": _swap(E.floor_divide),
    "__mod__": E.remainder, "__rmod__": _swap(E.remainder), "__pow__": E.pow,
    "__rpow__": _swap(E.pow), "__matmul__": L.matmul, "__rmatmul__": _swap(L.matmul),
    "__neg__": E.neg, "__pos__": lambda self: self, "__abs__": E.abs,
    "__eq__": E.eq, "__ne__": E.ne, "__lt__": E.lt, "__le__": E.le, "__gt__": E.gt, "__ge__": E.ge,
    "__and__": E.logical_and, "__or__": E.logical_or, "__xor__": E.logical_xor,
    "__invert__": E.logical_not, "__getitem__": I.getitem,
    # elementwise
    "add": E.add, "sub": E.sub, "mul": E.mul, "div": E.div, "true_divide": E.div,
    "floor_divide": E.floor_divide, "remainder": E.remainder, "pow": E.pow, "neg": E.neg,
    "abs": E.abs, "sign": E.sign, "exp": E.exp, "log": E.log, "log2": E.log2, "log10": E.log10,
    "log1p": E.log1p, "expm1": E.expm1, "sqrt": E.sqrt, "rsqrt": E.rsqrt, "sin": E.sin,
    "cos": E.cos, "tan": E.tan, "tanh": E.tanh, "sigmoid": E.sigmoid, "erf": E.erf,
    "clamp": E.clamp, "clip": E.clamp, "maximum": E.maximum, "minimum": E.minimum,
    "square": E.square, "reciprocal": E.reciprocal, "eq": E.eq, "ne": E.ne, "lt": E.lt,
    "le": E.le, "gt": E.gt, "ge": E.ge, "logical_and": E.logical_and,
    "logical_or": E.logical_or, "logical_xor": E.logical_xor, "logical_not": E.logical_not,
    "isnan": E.isnan, "isfinite": E.isfinite, "isinf": E.isinf, "floor": E.floor,
    "ceil": E.ceil, "round": E.round, "trunc": E.trunc, "lerp": E.lerp, "atan2": E.atan2,
    "where": lambda self, condition, other: E.where(condition, self, other),
    # reductions
    "sum": R.sum, "mean": R.mean, "var": R.var, "std": R.std, "prod": R.prod, "max": R.max,
    "min": R.min, "argmax": R.argmax, "argmin": R.argmin, "amax": R.amax, "amin": R.amin,
    "logsumexp": R.logsumexp, "norm": R.norm, "softmax": R.softmax,
    "log_softmax": R.log_softmax, "cumsum": R.cumsum, "all": R.all, "any": R.any,
    "count_nonzero": R.count_nonzero,
    # linear algebra
    "matmul": L.matmul, "mm": L.mm, "bmm": L.bmm, "dot": L.dot, "outer": L.outer,
    # shape
    "reshape": S.reshape, "view": S.view, "flatten": S.flatten, "unflatten": S.unflatten,
    "squeeze": S.squeeze, "unsqueeze": S.unsqueeze, "transpose": S.transpose,
    "swapaxes": S.transpose, "permute": S.permute, "movedim": S.movedim, "expand": S.expand,
    "broadcast_to": S.broadcast_to, "repeat": S.repeat, "tile": S.tile, "split": S.split,
    "chunk": S.chunk, "unbind": S.unbind, "flip": S.flip, "roll": S.roll, "narrow": S.narrow,
    "expand_as": lambda self, other: S.expand(self, other.shape),
    "view_as": lambda self, other: S.view(self, other.shape),
    "reshape_as": lambda self, other: S.reshape(self, other.shape),
    "type_as": lambda self, other: self.to(other.dtype),
    # indexing
    "gather": I.gather, "scatter_add": I.scatter_add, "scatter": I.scatter,
    "index_select": I.index_select, "index_add": I.index_add, "masked_fill": I.masked_fill,
    "take_along_dim": I.take_along_dim,
}

for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)
Tensor.__hash__ = lambda self: id(self)  # __eq__ is elementwise, so hash by identity


# In-place forms, each built from its out-of-place op by one generic mechanism
# (autograd/inplace.py): recorded in the graph when autograd tracks the tensor or an argument,
# computed and copied in otherwise. add_/mul_/copy_/fill_/clamp_/... live in tensor.py with an
# allocation-free fast path for optimizers; adding `op_` for a new op is one row here.
from ..autograd.inplace import inplace_method as _inplace_method  # noqa: E402


_INPLACE = {
    "neg_": E.neg, "abs_": E.abs, "sign_": E.sign, "exp_": E.exp, "log_": E.log,
    "log2_": E.log2, "log10_": E.log10, "log1p_": E.log1p, "expm1_": E.expm1,
    "rsqrt_": E.rsqrt, "sin_": E.sin, "cos_": E.cos, "tan_": E.tan, "tanh_": E.tanh,
    "sigmoid_": E.sigmoid, "erf_": E.erf, "square_": E.square, "reciprocal_": E.reciprocal,
    "floor_": E.floor, "ceil_": E.ceil, "round_": E.round, "trunc_": E.trunc,
    "pow_": E.pow, "remainder_": E.remainder, "floor_divide_": E.floor_divide,
    "atan2_": E.atan2,
    "masked_fill_": I.masked_fill, "index_add_": I.index_add, "scatter_": I.scatter,
    "scatter_add_": I.scatter_add, "index_fill_": write.index_fill,
}
Tensor.index_fill = write.index_fill

for _name, _fn in _INPLACE.items():
    setattr(Tensor, _name, _inplace_method(_name, _fn))

from .activation import relu_ as _relu_  # noqa: E402
Tensor.relu_ = _relu_  # writes into the tensor's own memory (no result array, no copy back)

def t(input):
    """Transpose a tensor of at most 2 dims; 0-d and 1-d come back as they are (``torch.t``).

    Example:
        >>> import avila_ml as am
        >>> am.t(am.tensor([[1, 2, 3]])).shape
        (3, 1)
    """
    if input.ndim > 2:
        raise RuntimeError(f"t: expects a tensor with <= 2 dimensions, but got shape {tuple(input.shape)} "
                           "(use transpose or mT)")
    return input if input.ndim < 2 else S.transpose(input, 0, 1)


def clamp_min(input, min):
    """``clamp(input, min=min)`` (``torch.clamp_min``).

    Example:
        >>> import avila_ml as am
        >>> am.clamp_min(am.tensor([-1.0, 2.0]), 0.0)
        tensor([0., 2.])
    """
    return E.clamp(input, min=min)


def clamp_max(input, max):
    """``clamp(input, max=max)`` (``torch.clamp_max``).

    Example:
        >>> import avila_ml as am
        >>> am.clamp_max(am.tensor([-1.0, 2.0]), 0.0)
        tensor([-1.,  0.])
    """
    return E.clamp(input, max=max)


__all__ += ["clamp_min", "clamp_max"]

# sorting, comparison, structured selections, scatter_reduce (issue 16)
_C, _SO, _ST = comparison, sorting, structured
for _name, _fn in {
    "t": t, "sort": _SO.sort, "argsort": _SO.argsort, "topk": _SO.topk, "unique": _SO.unique,
    "nonzero": _SO.nonzero, "triu": _ST.triu, "tril": _ST.tril,
    "repeat_interleave": _ST.repeat_interleave, "isclose": _C.isclose, "allclose": _C.allclose,
    "equal": _C.equal, "scatter_reduce": _scatter_reduce_mod.scatter_reduce,
    "clamp_min": clamp_min, "clamp_max": clamp_max, "masked_select": _ST.masked_select,
    "diagonal": _diagonal_mod.diagonal, "diag": _diagonal_mod.diag, "diag_embed": _diagonal_mod.diag_embed,
    "trace": _diagonal_mod.trace,
}.items():
    setattr(Tensor, _name, _fn)

# in-place forms of the issue-16 ops, through the same generic mechanism
for _name, _fn in {"clamp_min_": clamp_min, "clamp_max_": clamp_max, "triu_": _ST.triu, "tril_": _ST.tril,
                   "scatter_reduce_": _scatter_reduce_mod.scatter_reduce}.items():
    setattr(Tensor, _name, _inplace_method(_name, _fn))
