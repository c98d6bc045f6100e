"""Geometry of an N-d convolution, shared by every convolution algorithm.

A convolution with ``d`` spatial dims reads, for output index ``i`` and kernel index ``k``
along each axis, the zero-padded input at ``i * stride + k * dilation`` (PyTorch's
cross-correlation convention). The zero padding may differ on the low and the high side of
an axis ("same" with an even kernel, "causal"), so it is stored as two tuples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, zero padding (low and high side), dilation and groups of a convolution.

    ``causal`` marks a convolution with a causal axis; the automatic algorithm choice then
    avoids the FFT, whose rounding would couple every output to every input at the 1e-16
    level. ``out_size(S, K)`` gives the output extent per axis:
    ``o = floor((S + lo + hi - dilation * (K - 1) - 1) / stride) + 1``.
    """

    stride: tuple
    pad_lo: tuple
    pad_hi: tuple
    dilation: tuple
    groups: int
    causal: bool = False  # some axis is causal: keep outputs bitwise independent of later inputs

    @property
    def ndim(self) -> int:
        return len(self.stride)

    def padded(self, spatial) -> tuple:
        return tuple(s + lo + hi for s, lo, hi in zip(spatial, self.pad_lo, self.pad_hi))

    def extent(self, kernel) -> tuple:
        """The span of the dilated kernel per axis: ``dilation * (K - 1) + 1``."""
        return tuple(dl * (k - 1) + 1 for dl, k in zip(self.dilation, kernel))

    def out_size(self, spatial, kernel) -> tuple:
        return tuple((p - e) // s + 1 for p, e, s in
                     zip(self.padded(spatial), self.extent(kernel), self.stride))

    @property
    def unit(self) -> bool:
        """True for stride 1 and dilation 1 on every axis."""
        return all(s == 1 for s in self.stride) and all(d == 1 for d in self.dilation)

    @property
    def no_padding(self) -> bool:
        return not any(self.pad_lo) and not any(self.pad_hi)


def int_tuple(v, d: int, name: str, op: str, minimum=None) -> tuple:
    """``v`` (an int, a 1-tuple or a d-tuple) as a d-tuple of ints, each >= ``minimum``;
    bad values raise naming the op and the argument. Shared by convolution and pooling."""
    if isinstance(v, (int, np.integer)):
        v = (int(v),) * d
    else:
        try:
            v = tuple(int(e) for e in v)
        except TypeError:
            raise TypeError(f"{op}: {name} must be an int or a tuple of {d} ints, got {v!r}") from None
        if len(v) == 1:
            v = v * d
    if len(v) != d:
        raise ValueError(f"{op}: {name} must be an int or a tuple of {d} ints, got {v}")
    if minimum is not None and any(e < minimum for e in v):
        raise ValueError(f"{op}: {name} must be >= {minimum} in every dimension, got {v}")
    return v
