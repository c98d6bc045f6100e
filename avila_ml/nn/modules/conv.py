"""Convolution layers in 1-4 spatial dims: ``Conv1d``..``Conv4d`` and ``ConvTranspose1d``..``ConvTranspose4d``.

One base class per kind holds the parameters and PyTorch's default initialisation; the
numbered classes only fix the number of spatial dims. Parameter names and shapes equal
PyTorch's (``weight`` ``(C_out, C_in / groups, *K)`` for convolutions, ``(C_in, C_out /
groups, *K)`` for transposed ones; ``bias`` ``(C_out,)``), so state dicts interoperate.
"""
from __future__ import annotations

import math

from ... import dtypes as _dt
from ...backends import get_backend
from ...ops import conv as _F
from ...tensor import Tensor
from .. import init
from .module import Module
from .parameter import Parameter

__all__ = ["Conv1d", "Conv2d", "Conv3d", "Conv4d", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d", "ConvTranspose4d"]


def _param(shape, device, dtype) -> Parameter:
    dt = _dt.get_default_dtype() if dtype is None else _dt.to_dtype(dtype)
    if not dt.is_floating_point:
        raise TypeError(f"convolution parameters must have a floating-point dtype, got {dt}")
    return Parameter(Tensor._wrap(get_backend(device).xp.empty(tuple(shape), dtype=dt.np)))


class _ConvBase(Module):
    """Shared parameters, initialisation and ``repr`` of the convolution layers."""

    _d = 0
    _transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", output_padding=0, device=None, dtype=None):
        super().__init__()
        d, name = self._d, type(self).__name__
        for what, n in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(n, int) or isinstance(n, bool) or n < (1 if what == "groups" else 0):
                raise ValueError(f"{name}: {what} must be a {'positive' if what == 'groups' else 'non-negative'} int, got {n!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                             f"divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _F.int_tuple(kernel_size, d, "kernel_size", name, 1)
        self.stride = _F.int_tuple(stride, d, "stride", name, 1)
        self.dilation = _F.int_tuple(dilation, d, "dilation", name, 1)
        if isinstance(padding, str):
            if self._transposed or padding not in ("same", "valid"):
                allowed = "" if self._transposed else ", 'same' or 'valid'"
                raise ValueError(f"{name}: padding must be an int, a tuple of {d} ints{allowed}, got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{name}: padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _F.int_tuple(padding, d, "padding", name, 0)
        self.output_padding = _F.int_tuple(output_padding, d, "output_padding", name, 0)
        if self._transposed:
            if padding_mode != "zeros":
                raise ValueError(f"{name}: only 'zeros' padding_mode is supported for transposed "
                                 f"convolutions (as in PyTorch), got {padding_mode!r}")
        else:
            _F._modes(padding_mode, d, name)
        self.padding_mode = padding_mode if isinstance(padding_mode, str) else tuple(padding_mode)
        if self._transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = _param(shape, device, dtype)
        if bias:
            self.bias = _param((out_channels,), device, dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the parameters with PyTorch's default: ``kaiming_uniform_(a=sqrt(5))`` on the
        weight (bound ``1 / sqrt(fan_in)``), bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        d = self._d
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * d:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * d:
            s += f", dilation={self.dilation}"
        if self._transposed and self.output_padding != (0,) * d:
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class _ConvNd(_ConvBase):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, 0, device, dtype)

    def forward(self, input):
        return _F._conv(type(self).__name__, self._d, input, self.weight, self.bias, self.stride,
                        self.padding, self.dilation, self.groups, self.padding_mode)


class _ConvTransposeNd(_ConvBase):
    _transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, output_padding, device, dtype)

    def forward(self, input, output_size=None):
        op = self.output_padding
        if output_size is not None:
            op = self._output_padding(input, output_size)
        return _F._conv_transpose(type(self).__name__, self._d, input, self.weight, self.bias, self.stride,
                                  self.padding, op, self.groups, self.dilation)

    def _output_padding(self, input, output_size):
        """The ``output_padding`` that gives ``output_size`` (PyTorch's ``_output_padding``)."""
        d = self._d
        size = tuple(output_size)[-d:]
        if len(size) != d:
            raise ValueError(f"{type(self).__name__}: output_size must have {d} or more entries, got {output_size}")
        res = []
        for a in range(d):
            base = ((input.shape[input.ndim - d + a] - 1) * self.stride[a] - 2 * self.padding[a]
                    + self.dilation[a] * (self.kernel_size[a] - 1) + 1)
            extra = size[a] - base
            if not 0 <= extra < max(self.stride[a], self.dilation[a]):
                raise ValueError(f"{type(self).__name__}: requested an output size of {tuple(size)}, but valid sizes "
                                 f"along dim {a} range from {base} to {base + max(self.stride[a], self.dilation[a]) - 1} "
                                 f"(input {tuple(input.shape)})")
            res.append(extra)
        return tuple(res)


_CONV_DOC = """{d}-D convolution layer (``{torch}``).

Input ``(N, C_in, {dims})`` or ``(C_in, {dims})``; output ``(N, C_out, {odims})`` with
``O = floor((S + 2 padding - dilation (K - 1) - 1) / stride) + 1``. Parameters ``weight``
``(C_out, C_in / groups, {kdims})`` and ``bias`` ``(C_out,)``, initialised as PyTorch does
(``kaiming_uniform_(a=sqrt(5))``; bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
``padding``: int, tuple, ``"same"`` or ``"valid"``. ``padding_mode``: ``"zeros"``,
``"reflect"``, ``"replicate"``, ``"circular"``, ``"causal"`` (past-only zeros, so an output
never sees a later position), or a tuple with one mode per spatial dim, e.g.
``("causal", "circular", "circular", "zeros")`` for ``(t, x, y, z)``.

Math: ``y = conv{d}d(x, weight) + bias``, see :func:`avila_ml.nn.functional.conv{d}d`.

Example:
    >>> import avila_ml as am
    >>> m = am.nn.{name}(2, 4, 3, padding=1)
    >>> m(am.randn({ex})).shape
    {out}
"""

_CONVT_DOC = """{d}-D transposed convolution layer (``{torch}``), the gradient of ``Conv{d}d``
with respect to its input.

Input ``(N, C_in, {dims})`` or ``(C_in, {dims})``; output size ``(S - 1) stride - 2 padding +
dilation (K - 1) + output_padding + 1`` per dim (or the ``output_size`` passed to ``forward``).
Parameters ``weight`` ``(C_in, C_out / groups, {kdims})`` and ``bias`` ``(C_out,)`` with PyTorch's
default initialisation. Zero padding only.

Math: ``y = conv_transpose{d}d(x, weight) + bias``, see
:func:`avila_ml.nn.functional.conv_transpose{d}d`.

Example:
    >>> import avila_ml as am
    >>> m = am.nn.{name}(2, 4, 2, stride=2)
    >>> m(am.randn({ex})).shape
    {out}
"""


def _make(base, name, d, torch_name, doc, ex, out):
    dims = ", ".join(f"S{i}" for i in range(1, d + 1))
    cls = type(name, (base,), {"_d": d, "__module__": __name__, "__qualname__": name})
    cls.__doc__ = doc.format(d=d, name=name, torch=torch_name, dims=dims,
                             odims=", ".join(f"O{i}" for i in range(1, d + 1)),
                             kdims=", ".join(f"K{i}" for i in range(1, d + 1)), ex=ex, out=out)
    return cls


_NONE4 = "no PyTorch equivalent; torch.nn.Conv3d with a fourth spatial dim"
Conv1d = _make(_ConvNd, "Conv1d", 1, "torch.nn.Conv1d", _CONV_DOC, "1, 2, 8", "(1, 4, 8)")
Conv2d = _make(_ConvNd, "Conv2d", 2, "torch.nn.Conv2d", _CONV_DOC, "1, 2, 8, 8", "(1, 4, 8, 8)")
Conv3d = _make(_ConvNd, "Conv3d", 3, "torch.nn.Conv3d", _CONV_DOC, "1, 2, 4, 4, 4", "(1, 4, 4, 4, 4)")
Conv4d = _make(_ConvNd, "Conv4d", 4, _NONE4, _CONV_DOC, "1, 2, 4, 4, 4, 4", "(1, 4, 4, 4, 4, 4)")
ConvTranspose1d = _make(_ConvTransposeNd, "ConvTranspose1d", 1, "torch.nn.ConvTranspose1d", _CONVT_DOC,
                        "1, 2, 8", "(1, 4, 16)")
ConvTranspose2d = _make(_ConvTransposeNd, "ConvTranspose2d", 2, "torch.nn.ConvTranspose2d", _CONVT_DOC,
                        "1, 2, 4, 4", "(1, 4, 8, 8)")
ConvTranspose3d = _make(_ConvTransposeNd, "ConvTranspose3d", 3, "torch.nn.ConvTranspose3d", _CONVT_DOC,
                        "1, 2, 2, 2, 2", "(1, 4, 4, 4, 4)")
ConvTranspose4d = _make(_ConvTransposeNd, "ConvTranspose4d", 4,
                        "no PyTorch equivalent; torch.nn.ConvTranspose3d with a fourth spatial dim",
                        _CONVT_DOC, "1, 2, 2, 2, 2, 2", "(1, 4, 4, 4, 4, 4)")
