"""Affine and shape layers: ``Identity``, ``Linear``, ``Bilinear``, ``Flatten``, ``Unflatten``."""
from __future__ import annotations

import math

from ... import dtypes as _dt
from ...backends import get_backend
from ...ops.embedding import bilinear
from ...ops.linalg import linear
from ...ops.shape import flatten, unflatten
from ...tensor import Tensor
from .. import init
from .module import Module
from .parameter import Parameter

__all__ = ["Identity", "Linear", "Bilinear", "Flatten", "Unflatten"]


def _empty(shape, device, dtype) -> Tensor:
    """An uninitialised float tensor for a parameter (``factory_kwargs`` of PyTorch layers)."""
    dt = _dt.get_default_dtype() if dtype is None else _dt.to_dtype(dtype)
    if not dt.is_floating_point:
        raise TypeError(f"layer parameters must have a floating-point dtype, got {dt}")
    b = get_backend(device)
    return Tensor._wrap(b.xp.empty(tuple(shape), dtype=dt.np))


def _check_features(op: str, **sizes) -> None:
    for name, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{op}: {name} must be a non-negative int, got {n!r}")


class Identity(Module):
    """Returns its input unchanged; any constructor arguments are ignored (``torch.nn.Identity``).

    Math: y = x.

    Example:
        >>> import avila_ml as am
        >>> am.nn.Identity(54, unused="x")(am.tensor([1.0]))
        tensor([1.])
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


class Linear(Module):
    """Affine map of the last dimension (``torch.nn.Linear``).

    ``weight`` has shape ``(out_features, in_features)``, ``bias`` ``(out_features,)``;
    both start as U(-1/√in_features, 1/√in_features) (PyTorch's ``kaiming_uniform_(a=√5)``).

    Math: y = x Wᵀ + b, for input ``(*, in_features)`` and output ``(*, out_features)``.

    Example:
        >>> import avila_ml as am
        >>> m = am.nn.Linear(3, 2)
        >>> m(am.ones(4, 3)).shape, m
        ((4, 2), Linear(in_features=3, out_features=2, bias=True))
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        _check_features("Linear", in_features=in_features, out_features=out_features)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(_empty((out_features, in_features), device, dtype))
        if bias:
            self.bias = Parameter(_empty((out_features,), device, dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw ``weight`` and ``bias`` with PyTorch's default initialisation."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_features
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        if not isinstance(input, Tensor):
            raise TypeError(f"Linear: expected a Tensor as input, got {type(input).__name__}")
        if input.ndim == 0 or input.shape[-1] != self.in_features:
            raise RuntimeError(
                f"Linear: input of shape {tuple(input.shape)} does not match in_features={self.in_features} "
                f"(expected shape (*, {self.in_features}))")
        return linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Bilinear(Module):
    """Bilinear map of two inputs (``torch.nn.Bilinear``).

    ``weight`` has shape ``(out_features, in1_features, in2_features)``; weight and bias start
    as U(-1/√in1_features, 1/√in1_features), like PyTorch.

    Math: y_k = x1ᵀ W_k x2 + b_k, for inputs ``(*, in1)``, ``(*, in2)`` and output ``(*, out)``.

    Example:
        >>> import avila_ml as am
        >>> m = am.nn.Bilinear(3, 4, 2)
        >>> m(am.ones(5, 3), am.ones(5, 4)).shape
        (5, 2)
    """

    def __init__(self, in1_features: int, in2_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        _check_features("Bilinear", in1_features=in1_features, in2_features=in2_features,
                        out_features=out_features)
        self.in1_features = in1_features
        self.in2_features = in2_features
        self.out_features = out_features
        self.weight = Parameter(_empty((out_features, in1_features, in2_features), device, dtype))
        if bias:
            self.bias = Parameter(_empty((out_features,), device, dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw ``weight`` and ``bias`` from U(-1/√in1, 1/√in1) (PyTorch's default)."""
        bound = 1 / math.sqrt(self.weight.shape[1]) if self.weight.shape[1] > 0 else 0
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input1, input2):
        if input1.ndim == 0 or input1.shape[-1] != self.in1_features or input2.ndim == 0 \
                or input2.shape[-1] != self.in2_features or input1.shape[:-1] != input2.shape[:-1]:
            raise RuntimeError(
                f"Bilinear: inputs of shapes {tuple(input1.shape)} and {tuple(input2.shape)} do not match; "
                f"expected (*, {self.in1_features}) and (*, {self.in2_features}) with the same leading dims")
        return bilinear(input1, input2, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


class Flatten(Module):
    """Flatten dims ``start_dim..end_dim`` into one (``torch.nn.Flatten``; note the default
    ``start_dim=1`` keeps the batch dim).

    Math: shape (N, d1, ..., dk) → (N, d1·...·dk) with the defaults.

    Example:
        >>> import avila_ml as am
        >>> am.nn.Flatten()(am.ones(2, 3, 4)).shape
        (2, 12)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, input):
        return flatten(input, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split dim ``dim`` into ``unflattened_size`` (``torch.nn.Unflatten``).

    Math: shape (..., d, ...) → (..., s1, ..., sk, ...) with s1·...·sk = d (one -1 allowed).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Unflatten(1, (3, 4))(am.ones(2, 12)).shape
        (2, 3, 4)
    """

    def __init__(self, dim: int, unflattened_size):
        super().__init__()
        if not isinstance(unflattened_size, (tuple, list)) or not all(isinstance(s, int) for s in unflattened_size):
            raise TypeError(f"Unflatten: unflattened_size must be a tuple of ints, got {unflattened_size!r}")
        self.dim = dim
        self.unflattened_size = tuple(unflattened_size)

    def forward(self, input):
        return unflatten(input, self.dim, self.unflattened_size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
