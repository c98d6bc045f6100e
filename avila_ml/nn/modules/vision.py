"""Shape layers of image models: ``Unfold``, ``Fold``, ``PixelShuffle``, ``PixelUnshuffle``
(``torch.nn``); shells over :mod:`avila_ml.ops.vision`."""
from __future__ import annotations

from ...ops import vision as _vision
from .module import Module

__all__ = ["Unfold", "Fold", "PixelShuffle", "PixelUnshuffle"]


class Unfold(Module):
    """Extract sliding local blocks as columns (``torch.nn.Unfold``); see :func:`avila_ml.nn.functional.unfold`.

    Math: (N, C, H, W) -> (N, C·kh·kw, L), L the number of block positions.

    Example:
        >>> import avila_ml as am
        >>> am.nn.Unfold(kernel_size=(2, 3))(am.randn(2, 5, 3, 4)).shape
        (2, 30, 4)
    """

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__()
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride

    def forward(self, input):
        return _vision.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding}, "
                f"stride={self.stride}")


class Fold(Module):
    """Sum columns of blocks back into an image (``torch.nn.Fold``); see :func:`avila_ml.nn.functional.fold`.

    Math: (N, C·kh·kw, L) -> (N, C, *output_size), the adjoint of :class:`Unfold`.

    Example:
        >>> import avila_ml as am
        >>> am.nn.Fold(output_size=(4, 5), kernel_size=(2, 2))(am.randn(1, 12, 12)).shape
        (1, 3, 4, 5)
    """

    def __init__(self, output_size, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__()
        self.output_size, self.kernel_size = output_size, kernel_size
        self.dilation, self.padding, self.stride = dilation, padding, stride

    def forward(self, input):
        return _vision.fold(input, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"padding={self.padding}, stride={self.stride}")


class PixelShuffle(Module):
    """(*, C·r², H, W) -> (*, C, H·r, W·r) (``torch.nn.PixelShuffle``).

    Math: out[..., c, h·r + i, w·r + j] = x[..., c·r² + i·r + j, h, w].

    Example:
        >>> import avila_ml as am
        >>> am.nn.PixelShuffle(3)(am.randn(1, 9, 4, 4)).shape
        (1, 1, 12, 12)
    """

    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, input):
        return _vision.pixel_shuffle(input, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """(*, C, H·r, W·r) -> (*, C·r², H, W) (``torch.nn.PixelUnshuffle``), the inverse of :class:`PixelShuffle`.

    Math: out[..., c·r² + i·r + j, h, w] = x[..., c, h·r + i, w·r + j].

    Example:
        >>> import avila_ml as am
        >>> am.nn.PixelUnshuffle(2)(am.randn(1, 1, 4, 6)).shape
        (1, 4, 2, 3)
    """

    def __init__(self, downscale_factor: int):
        super().__init__()
        self.downscale_factor = downscale_factor

    def forward(self, input):
        return _vision.pixel_unshuffle(input, self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"
