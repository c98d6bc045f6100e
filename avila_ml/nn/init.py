"""Parameter initialisers (``torch.nn.init``): fill a tensor in place, under ``no_grad``, from
the tensor's own backend RNG (seeded by ``am.manual_seed``), and return it.

Fan computation follows PyTorch: for a weight of shape ``(out, in, *kernel)``,
``fan_in = in * prod(kernel)`` and ``fan_out = out * prod(kernel)``.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..autograd.grad_mode import no_grad
from ..tensor import Tensor

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_", "eye_",
           "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
           "trunc_normal_", "orthogonal_"]

_LINEAR_FNS = ("linear", "conv1d", "conv2d", "conv3d", "conv4d", "conv_transpose1d",
               "conv_transpose2d", "conv_transpose3d", "conv_transpose4d", "sigmoid")


def _check_tensor(tensor, op: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(tensor).__name__}")


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The recommended gain for a nonlinearity (``torch.nn.init.calculate_gain``).

    Math: linear/conv/sigmoid 1; tanh 5/3; relu √2; leaky_relu √(2/(1+slope²)) (slope
    ``param``, default 0.01); selu 3/4.

    Example:
        >>> import avila_ml as am
        >>> round(am.nn.init.calculate_gain("relu"), 4), am.nn.init.calculate_gain("tanh")
        (1.4142, 1.6666666666666667)
    """
    if nonlinearity in _LINEAR_FNS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor) -> tuple:
    """``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)``."""
    if tensor.ndim < 2:
        raise ValueError(
            f"_calculate_fan_in_and_fan_out: fan in and fan out can not be computed for a tensor with "
            f"fewer than 2 dimensions (got shape {tuple(tensor.shape)})")
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _calculate_correct_fan(tensor, mode: str) -> int:
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming init: mode {mode!r} not supported, please use 'fan_in' or 'fan_out'")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    """Fill with samples of U(a, b) (``torch.nn.init.uniform_``).

    Math: x ~ U(a, b): mean (a+b)/2, std (b-a)/√12.

    Example:
        >>> import avila_ml as am
        >>> w = am.nn.init.uniform_(am.empty(100), -1, 1)
        >>> bool((w.abs() <= 1).all())
        True
    """
    _check_tensor(tensor, "uniform_")
    if a > b:
        raise ValueError(f"uniform_: expected a <= b, got a={a}, b={b}")
    with no_grad():
        return tensor.uniform_(a, b)


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    """Fill with samples of N(mean, std²) (``torch.nn.init.normal_``).

    Example:
        >>> import avila_ml as am
        >>> am.nn.init.normal_(am.empty(2, 3), std=0.02).shape
        (2, 3)
    """
    _check_tensor(tensor, "normal_")
    if std < 0:
        raise ValueError(f"normal_: expected std >= 0, got {std}")
    with no_grad():
        return tensor.normal_(mean, std)


def constant_(tensor, val: float):
    """Fill with ``val`` (``torch.nn.init.constant_``).

    Example:
        >>> import avila_ml as am
        >>> am.nn.init.constant_(am.empty(2), 0.5)
        tensor([0.5000, 0.5000])
    """
    _check_tensor(tensor, "constant_")
    with no_grad():
        return tensor.fill_(val)


def zeros_(tensor):
    """Fill with zeros (``torch.nn.init.zeros_``).

    Example:
        >>> import avila_ml as am
        >>> am.nn.init.zeros_(am.empty(2))
        tensor([0., 0.])
    """
    return constant_(tensor, 0.0)


def ones_(tensor):
    """Fill with ones (``torch.nn.init.ones_``).

    Example:
        >>> import avila_ml as am
        >>> am.nn.init.ones_(am.empty(2))
        tensor([1., 1.])
    """
    return constant_(tensor, 1.0)


def eye_(tensor):
    """Fill a 2-d tensor with the identity (``torch.nn.init.eye_``).

    Math: w_ij = 1 if i == j else 0 (rectangular shapes allowed).

    Example:
        >>> import avila_ml as am
        >>> am.nn.init.eye_(am.empty(2, 3))
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
    """
    _check_tensor(tensor, "eye_")
    if tensor.ndim != 2:
        raise ValueError(f"eye_: only tensors with 2 dimensions are supported, got shape {tuple(tensor.shape)}")
    xp = tensor._backend.xp
    with no_grad():
        return tensor.copy_(xp.eye(*tensor.shape, dtype=tensor.array.dtype))


def dirac_(tensor, groups: int = 1):
    """Fill a convolution weight with the Dirac delta, so the convolution is the identity on
    as many channels as possible (``torch.nn.init.dirac_``; 3-d to 6-d weights, i.e. Conv1d to
    Conv4d).

    Math: w[g·o + d, d, centre] = 1 for d < min(out/groups, in), else 0.

    Example:
        >>> import avila_ml as am
        >>> am.nn.init.dirac_(am.empty(2, 2, 3))[:, :, 1]
        tensor([[1., 0.],
                [0., 1.]])
    """
    _check_tensor(tensor, "dirac_")
    if tensor.ndim not in (3, 4, 5, 6):
        raise ValueError(f"dirac_: only tensors with 3, 4, 5 or 6 dimensions are supported, got shape {tuple(tensor.shape)}")
    out_per_group = tensor.shape[0] // groups
    if tensor.shape[0] % groups != 0:
        raise ValueError(f"dirac_: dim 0 ({tensor.shape[0]}) must be divisible by groups ({groups})")
    min_dim = min(out_per_group, tensor.shape[1])
    centre = tuple(k // 2 for k in tensor.shape[2:])
    with no_grad():
        tensor.zero_()
        for g in range(groups):
            for d in range(min_dim):
                tensor.array[(g * out_per_group + d, d) + centre] = 1
        return tensor._bump()


def xavier_uniform_(tensor, gain: float = 1.0):
    """Glorot uniform initialisation (``torch.nn.init.xavier_uniform_``).

    Math: U(-a, a), a = gain · √(6 / (fan_in + fan_out)).

    Example:
        >>> import avila_ml as am
        >>> w = am.nn.init.xavier_uniform_(am.empty(30, 20))
        >>> bool((w.abs() <= (6 / 50) ** 0.5).all())
        True
    """
    _check_tensor(tensor, "xavier_uniform_")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    a = math.sqrt(3.0) * gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return uniform_(tensor, -a, a)


def xavier_normal_(tensor, gain: float = 1.0):
    """Glorot normal initialisation (``torch.nn.init.xavier_normal_``).

    Math: N(0, std²), std = gain · √(2 / (fan_in + fan_out)).

    Example:
        >>> import avila_ml as am
        >>> am.nn.init.xavier_normal_(am.empty(3, 4)).shape
        (3, 4)
    """
    _check_tensor(tensor, "xavier_normal_")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std)


def _kaiming_std(tensor, a, mode, nonlinearity, op):
    _check_tensor(tensor, op)
    fan = _calculate_correct_fan(tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    return gain / math.sqrt(fan)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """He uniform initialisation (``torch.nn.init.kaiming_uniform_``).

    Math: U(-bound, bound), bound = gain · √(3 / fan), gain = calculate_gain(nonlinearity, a),
    fan = fan_in or fan_out (``mode``). ``Linear``'s default uses a = √5: bound = 1/√fan_in.

    Example:
        >>> import avila_ml as am
        >>> w = am.nn.init.kaiming_uniform_(am.empty(16, 9), a=5 ** 0.5)
        >>> bool((w.abs() <= 1 / 3).all())
        True
    """
    if 0 in tuple(tensor.shape):
        warnings.warn("kaiming_uniform_: initializing a zero-element tensor is a no-op", stacklevel=2)
        return tensor
    std = _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_uniform_")
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """He normal initialisation (``torch.nn.init.kaiming_normal_``).

    Math: N(0, std²), std = gain / √fan.

    Example:
        >>> import avila_ml as am
        >>> am.nn.init.kaiming_normal_(am.empty(4, 3), nonlinearity="relu").shape
        (4, 3)
    """
    if 0 in tuple(tensor.shape):
        warnings.warn("kaiming_normal_: initializing a zero-element tensor is a no-op", stacklevel=2)
        return tensor
    std = _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_normal_")
    return normal_(tensor, 0.0, std)


def _norm_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _truncated_standard_normal(backend, n: int, lo: float, hi: float):
    """``n`` exact samples of N(0, 1) restricted to [lo, hi], by rejection.

    Two proposals, whichever accepts more often: N(0, 1) itself (acceptance
    Φ(hi) - Φ(lo), good for wide intervals) or U(lo, hi) accepted with probability
    exp(-(z² - z₀²)/2), z₀ the point of [lo, hi] nearest 0 (good for narrow or far ones).
    """
    xp = backend.xp
    mass = _norm_cdf(hi) - _norm_cdf(lo)
    z0 = min(max(0.0, lo), hi)
    width = hi - lo
    uniform_acc = mass / (width * math.exp(-0.5 * z0 * z0) / math.sqrt(2 * math.pi)) if width > 0 else 1.0
    out = xp.empty(n, dtype=np.float64)
    todo = xp.arange(n)
    while todo.size:
        k = int(todo.size)
        if width == 0:
            z, ok = xp.full(k, lo), xp.ones(k, dtype=bool)
        elif mass >= uniform_acc:
            z = backend.randn((k,), np.float64)
            ok = (z >= lo) & (z <= hi)
        else:
            z = lo + width * backend.rand((k,), np.float64)
            ok = backend.rand((k,), np.float64) <= xp.exp(-0.5 * (z * z - z0 * z0))
        out[todo[ok]] = z[ok]
        todo = todo[~ok]
    return out


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    """Fill with samples of N(mean, std²) truncated to [a, b] (``torch.nn.init.trunc_normal_``).

    Math: the density is φ((x-mean)/std) / (std · (Φ(β) - Φ(α))) on [a, b], with
    α = (a-mean)/std, β = (b-mean)/std. Sampled exactly by rejection (no clipping pile-up).

    Example:
        >>> import avila_ml as am
        >>> w = am.nn.init.trunc_normal_(am.empty(1000), std=0.02, a=-0.04, b=0.04)
        >>> bool((w.abs() <= 0.04).all())
        True
    """
    _check_tensor(tensor, "trunc_normal_")
    if not a <= b:
        raise ValueError(f"trunc_normal_: expected a <= b, got a={a}, b={b}")
    if std <= 0:
        raise ValueError(f"trunc_normal_: expected std > 0, got {std}")
    if mean < a - 2 * std or mean > b + 2 * std:
        warnings.warn("trunc_normal_: mean is more than 2 std from [a, b]; the distribution of "
                      "values may be incorrect in PyTorch (here it is sampled exactly)", stacklevel=2)
    backend = tensor._backend
    z = _truncated_standard_normal(backend, tensor.numel(), (a - mean) / std, (b - mean) / std)
    x = backend.xp.clip(mean + std * z, a, b).reshape(tensor.shape)
    with no_grad():
        return tensor.copy_(x)


def orthogonal_(tensor, gain: float = 1.0):
    """Fill with a (semi-)orthogonal matrix, from the QR of a Gaussian matrix
    (``torch.nn.init.orthogonal_``). Dims after the first are flattened.

    Math: W = gain · Q with Q from A = QR, A ~ N(0, 1), signs fixed by diag(R) so Q is
    Haar-distributed; rows (or columns, whichever are fewer) are orthonormal.

    Example:
        >>> import avila_ml as am
        >>> w = am.nn.init.orthogonal_(am.empty(3, 5, dtype=am.float64))
        >>> bool(((w @ w.T) - am.eye(3, dtype=am.float64)).abs().max() < 1e-12)
        True
    """
    _check_tensor(tensor, "orthogonal_")
    if tensor.ndim < 2:
        raise ValueError(f"orthogonal_: only tensors with 2 or more dimensions are supported, got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        return tensor
    backend = tensor._backend
    xp = backend.xp
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    flat = backend.randn((rows, cols), np.float64)
    if rows < cols:
        flat = flat.T
    q, r = xp.linalg.qr(flat)
    q = q * xp.sign(xp.diagonal(r))
    if rows < cols:
        q = q.T
    with no_grad():
        return tensor.copy_((gain * q).reshape(tensor.shape))
