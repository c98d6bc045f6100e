"""Pooling layers in 1-4 spatial dims: ``MaxPool``, ``AvgPool``, ``AdaptiveAvgPool`` and
``AdaptiveMaxPool`` (1d..4d), thin shells over :mod:`avila_ml.ops.pooling`.

Each family is one class; the numbered classes only fix the number of spatial dims.
"""
from __future__ import annotations

from ...ops import pooling as _P
from .module import Module

__all__ = ["MaxPool1d", "MaxPool2d", "MaxPool3d", "MaxPool4d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
           "AvgPool4d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveAvgPool4d",
           "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "AdaptiveMaxPool4d"]


class _MaxPoolNd(Module):
    _d = 0

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input):
        return _P._max_pool(type(self).__name__, self._d, input, self.kernel_size, self.stride, self.padding,
                            self.dilation, self.ceil_mode, self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class _AvgPoolNd(Module):
    _d = 0

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, ceil_mode
        if self._d == 1:  # PyTorch's AvgPool1d keeps 1-tuples
            one = lambda v: (v,) if isinstance(v, int) else tuple(v)  # noqa: E731
            self.kernel_size, self.stride, self.padding = one(self.kernel_size), one(self.stride), one(self.padding)
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, input):
        return _P._avg_pool(type(self).__name__, self._d, input, self.kernel_size, self.stride, self.padding,
                            self.ceil_mode, self.count_include_pad, self.divisor_override)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class _AdaptiveAvgPoolNd(Module):
    _d = 0

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        return _P._adaptive_avg(type(self).__name__, self._d, input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class _AdaptiveMaxPoolNd(Module):
    _d = 0

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, input):
        return _P._adaptive_max(type(self).__name__, self._d, input, self.output_size, self.return_indices)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


_DOCS = {
    _MaxPoolNd: ("{d}-D max pooling layer (``{torch}``): see :func:`avila_ml.nn.functional.max_pool{d}d`.\n\n"
                 "Math: ``y[n, c, i] = max_k x_pad[n, c, i * stride + k * dilation]`` (``-inf`` padding);\n"
                 "``stride`` defaults to ``kernel_size``; ``return_indices`` also returns the argmax.",
                 "MaxPool{d}d(2)", "(1, 2, {half})"),
    _AvgPoolNd: ("{d}-D average pooling layer (``{torch}``): see :func:`avila_ml.nn.functional.avg_pool{d}d`.\n\n"
                 "Math: ``y[n, c, i] = mean_k x_pad[n, c, i * stride + k]`` with PyTorch's divisor rules\n"
                 "(``count_include_pad``, ``divisor_override``).",
                 "AvgPool{d}d(2)", "(1, 2, {half})"),
    _AdaptiveAvgPoolNd: ("{d}-D adaptive average pooling layer (``{torch}``): see\n"
                         ":func:`avila_ml.nn.functional.adaptive_avg_pool{d}d`.\n\n"
                         "Math: output ``i`` averages the window ``[floor(i S / o), ceil((i + 1) S / o))``\n"
                         "per axis; ``output_size=1`` is global average pooling.",
                         "AdaptiveAvgPool{d}d(1)", "(1, 2, {ones})"),
    _AdaptiveMaxPoolNd: ("{d}-D adaptive max pooling layer (``{torch}``): see\n"
                         ":func:`avila_ml.nn.functional.adaptive_max_pool{d}d`.\n\n"
                         "Math: output ``i`` is the max of the window ``[floor(i S / o), ceil((i + 1) S / o))``\n"
                         "per axis; ``output_size=1`` is global max pooling.",
                         "AdaptiveMaxPool{d}d(1)", "(1, 2, {ones})"),
}


def _make(base, name, d):
    torch_name = f"torch.nn.{name}" if d < 4 else f"no PyTorch equivalent; torch.nn.{name[:-2]}3d with a fourth spatial dim"
    text, ctor, out = _DOCS[base]
    fmt = dict(d=d, torch=torch_name, half=", ".join(["2"] * d), ones=", ".join(["1"] * d))
    doc = (text.format(**fmt) + "\n\nExample:\n    >>> import avila_ml as am\n"
           f"    >>> am.nn.{ctor.format(**fmt)}(am.randn(1, 2, {', '.join(['4'] * d)})).shape\n"
           f"    {out.format(**fmt)}\n")
    return type(name, (base,), {"_d": d, "__module__": __name__, "__qualname__": name, "__doc__": doc})


MaxPool1d, MaxPool2d, MaxPool3d, MaxPool4d = (_make(_MaxPoolNd, f"MaxPool{d}d", d) for d in range(1, 5))
AvgPool1d, AvgPool2d, AvgPool3d, AvgPool4d = (_make(_AvgPoolNd, f"AvgPool{d}d", d) for d in range(1, 5))
AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, AdaptiveAvgPool4d = (
    _make(_AdaptiveAvgPoolNd, f"AdaptiveAvgPool{d}d", d) for d in range(1, 5))
AdaptiveMaxPool1d, AdaptiveMaxPool2d, AdaptiveMaxPool3d, AdaptiveMaxPool4d = (
    _make(_AdaptiveMaxPoolNd, f"AdaptiveMaxPool{d}d", d) for d in range(1, 5))
