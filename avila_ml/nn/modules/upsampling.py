"""``Upsample``: resampling layer over 1-4 spatial dims, a shell over :func:`avila_ml.nn.functional.interpolate`."""
from __future__ import annotations

from ...ops.pooling import interpolate
from .module import Module

__all__ = ["Upsample"]


class Upsample(Module):
    """Upsample (or resample) the spatial dims of ``(N, C, *S)``, 1-4 spatial dims (``torch.nn.Upsample``).

    Give ``size`` or ``scale_factor``. Modes: ``"nearest"``, ``"nearest-exact"``, ``"area"``,
    ``"linear"`` / ``"bilinear"`` / ``"trilinear"`` (3-, 4-, 5-d input, as in PyTorch),
    ``"quadrilinear"`` (6-d input, 4 spatial dims) and ``"multilinear"`` (any rank).

    Math: per axis, ``y_i = x[floor(i S / o)]`` (nearest) or ``(1 - l_i) x[i0] + l_i x[i1]``
    (linear family; see :func:`avila_ml.nn.functional.interpolate` for the source coordinate
    and ``align_corners``).

    Example:
        >>> import avila_ml as am
        >>> m = am.nn.Upsample(scale_factor=2, mode="quadrilinear")
        >>> m(am.randn(1, 1, 2, 2, 2, 2)).shape, m
        ((1, 1, 4, 4, 4, 4), Upsample(scale_factor=2.0, mode='quadrilinear'))
    """

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        self.size = size
        if isinstance(scale_factor, (tuple, list)):
            self.scale_factor = tuple(float(f) for f in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode, self.align_corners = mode, align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def forward(self, input):
        return interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                           recompute_scale_factor=self.recompute_scale_factor)

    def extra_repr(self) -> str:
        info = f"scale_factor={self.scale_factor!r}" if self.scale_factor is not None else f"size={self.size!r}"
        return info + f", mode={self.mode!r}"
