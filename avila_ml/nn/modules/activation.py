"""Activation layers: thin modules over ``avila_ml.ops.activation`` (and ``sigmoid``, ``tanh``,
``softmax``, ``log_softmax``), with PyTorch's constructor arguments and ``repr``."""
from __future__ import annotations

import warnings

from ...ops import activation as A
from ...ops.elementwise import sigmoid, tanh
from ...ops.reduction import log_softmax, softmax
from .module import Module

__all__ = ["ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Softplus",
           "Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Hardswish", "Softsign", "LogSigmoid",
           "Softmax", "LogSoftmax"]


def _inplace_str(inplace: bool, lead: str = "") -> str:
    return f"{lead}inplace=True" if inplace else ""


class ReLU(Module):
    """Rectified linear unit (``torch.nn.ReLU``).

    Math: y = max(x, 0).

    Example:
        >>> import avila_ml as am
        >>> am.nn.ReLU()(am.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return A.relu(input, inplace=self.inplace)

    def extra_repr(self) -> str:
        return _inplace_str(self.inplace)


class Hardtanh(Module):
    """Clamp to ``[min_val, max_val]`` (``torch.nn.Hardtanh``).

    Math: y = min(max(x, min_val), max_val).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Hardtanh(-2.0, 2.0)(am.tensor([-3.0, 1.0, 3.0]))
        tensor([-2.,  1.,  2.])
    """

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
        super().__init__()
        if max_val <= min_val:
            raise ValueError(f"Hardtanh: max_val ({max_val}) must be greater than min_val ({min_val})")
        self.min_val = min_val
        self.max_val = max_val
        self.inplace = inplace

    def forward(self, input):
        return A.hardtanh(input, self.min_val, self.max_val, self.inplace)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}" + _inplace_str(self.inplace, ", ")


class ReLU6(Hardtanh):
    """ReLU capped at 6 (``torch.nn.ReLU6``).

    Math: y = min(max(x, 0), 6).

    Example:
        >>> import avila_ml as am
        >>> am.nn.ReLU6()(am.tensor([-1.0, 8.0]))
        tensor([0., 6.])
    """

    def __init__(self, inplace: bool = False):
        super().__init__(0.0, 6.0, inplace)

    def extra_repr(self) -> str:
        return _inplace_str(self.inplace)


class LeakyReLU(Module):
    """Leaky ReLU (``torch.nn.LeakyReLU``).

    Math: y = x for x > 0, else negative_slope · x.

    Example:
        >>> import avila_ml as am
        >>> am.nn.LeakyReLU(0.1)(am.tensor([-10.0, 1.0]))
        tensor([-1.,  1.])
    """

    def __init__(self, negative_slope: float = 1e-2, inplace: bool = False):
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, input):
        return A.leaky_relu(input, self.negative_slope, self.inplace)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + _inplace_str(self.inplace, ", ")


class ELU(Module):
    """Exponential linear unit (``torch.nn.ELU``).

    Math: y = x for x > 0, else alpha (e^x - 1).

    Example:
        >>> import avila_ml as am
        >>> am.nn.ELU()(am.tensor([0.0, 1.0]))
        tensor([0., 1.])
    """

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__()
        self.alpha = alpha
        self.inplace = inplace

    def forward(self, input):
        return A.elu(input, self.alpha, self.inplace)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}" + _inplace_str(self.inplace, ", ")


class CELU(Module):
    """Continuously differentiable ELU (``torch.nn.CELU``).

    Math: y = max(0, x) + min(0, alpha (e^{x/alpha} - 1)).

    Example:
        >>> import avila_ml as am
        >>> am.nn.CELU(2.0)(am.tensor([0.0, 1.0]))
        tensor([0., 1.])
    """

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__()
        self.alpha = alpha
        self.inplace = inplace

    def forward(self, input):
        return A.celu(input, self.alpha, self.inplace)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}" + _inplace_str(self.inplace, ", ")


class SELU(Module):
    """Scaled ELU (``torch.nn.SELU``).

    Math: y = 1.0507 · (x for x > 0, else 1.6733 (e^x - 1)).

    Example:
        >>> import avila_ml as am
        >>> am.nn.SELU()(am.tensor([1.0]))
        tensor([1.0507])
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return A.selu(input, self.inplace)

    def extra_repr(self) -> str:
        return _inplace_str(self.inplace)


class GELU(Module):
    """Gaussian error linear unit, exact or tanh-approximated (``torch.nn.GELU``).

    Math: y = x Φ(x); ``approximate='tanh'``: y = x/2 (1 + tanh(√(2/π)(x + 0.044715 x³))).

    Example:
        >>> import avila_ml as am
        >>> am.nn.GELU()
        GELU(approximate='none')
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input):
        return A.gelu(input, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """Sigmoid linear unit / swish (``torch.nn.SiLU``).

    Math: y = x σ(x).

    Example:
        >>> import avila_ml as am
        >>> am.nn.SiLU()(am.tensor([0.0]))
        tensor([0.])
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return A.silu(input, self.inplace)

    def extra_repr(self) -> str:
        return _inplace_str(self.inplace)


class Mish(Module):
    """Mish (``torch.nn.Mish``).

    Math: y = x tanh(softplus(x)).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Mish()(am.tensor([0.0]))
        tensor([0.])
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return A.mish(input, self.inplace)

    def extra_repr(self) -> str:
        return _inplace_str(self.inplace)


class Softplus(Module):
    """Smooth ReLU (``torch.nn.Softplus``).

    Math: y = log(1 + e^{βx}) / β, and y = x where βx > threshold.

    Example:
        >>> import avila_ml as am
        >>> am.nn.Softplus(beta=2.0)
        Softplus(beta=2.0, threshold=20.0)
    """

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta = beta
        self.threshold = threshold

    def forward(self, input):
        return A.softplus(input, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class Sigmoid(Module):
    """Logistic sigmoid (``torch.nn.Sigmoid``).

    Math: y = 1 / (1 + e^{-x}).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Sigmoid()(am.tensor([0.0]))
        tensor([0.5000])
    """

    def forward(self, input):
        return sigmoid(input)


class Tanh(Module):
    """Hyperbolic tangent (``torch.nn.Tanh``).

    Math: y = tanh(x).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Tanh()(am.tensor([0.0]))
        tensor([0.])
    """

    def forward(self, input):
        return tanh(input)


class Hardsigmoid(Module):
    """Piecewise-linear sigmoid (``torch.nn.Hardsigmoid``).

    Math: y = clamp(x/6 + 1/2, 0, 1).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Hardsigmoid()(am.tensor([0.0]))
        tensor([0.5000])
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return A.hardsigmoid(input, self.inplace)


class Hardswish(Module):
    """Hard swish (``torch.nn.Hardswish``).

    Math: y = x · relu6(x + 3) / 6.

    Example:
        >>> import avila_ml as am
        >>> am.nn.Hardswish()(am.tensor([4.0]))
        tensor([4.])
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return A.hardswish(input, self.inplace)


class Softsign(Module):
    """Softsign (``torch.nn.Softsign``).

    Math: y = x / (1 + |x|).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Softsign()(am.tensor([1.0]))
        tensor([0.5000])
    """

    def forward(self, input):
        return A.softsign(input)


class LogSigmoid(Module):
    """log σ(x), stable for any finite x (``torch.nn.LogSigmoid``).

    Math: y = min(x, 0) - log1p(e^{-|x|}).

    Example:
        >>> import avila_ml as am
        >>> am.nn.LogSigmoid()(am.tensor([1e4]))
        tensor([0.])
    """

    def forward(self, input):
        return A.logsigmoid(input)


def _legacy_softmax_dim(name: str, ndim: int) -> int:
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to "
                  "include dim=X as an argument.", stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(Module):
    """Softmax along ``dim`` (``torch.nn.Softmax``).

    Math: y_i = e^{x_i} / Σ_j e^{x_j}, computed with the max subtracted.

    Example:
        >>> import avila_ml as am
        >>> am.nn.Softmax(dim=-1)(am.tensor([[0.0, 0.0]]))
        tensor([[0.5000, 0.5000]])
    """

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        dim = self.dim if self.dim is not None else _legacy_softmax_dim("softmax", input.ndim)
        return softmax(input, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """Log-softmax along ``dim`` (``torch.nn.LogSoftmax``).

    Math: y_i = x_i - log Σ_j e^{x_j}.

    Example:
        >>> import avila_ml as am
        >>> am.nn.LogSoftmax(dim=0)(am.tensor([1e4, 1e4])).round(decimals=4)
        tensor([-0.6931, -0.6931])
    """

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        dim = self.dim if self.dim is not None else _legacy_softmax_dim("log_softmax", input.ndim)
        return log_softmax(input, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
