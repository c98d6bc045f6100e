"""Dropout layers (``torch.nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``,
``FeatureAlphaDropout``): modules over ``avila_ml.ops.dropout`` that follow ``self.training``."""
from __future__ import annotations

from ...ops import dropout as D
from .module import Module

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"]


class _DropoutNd(Module):
    _fn = staticmethod(D.dropout)

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        D._check_p(p, type(self).__name__)
        self.p = p
        self.inplace = inplace

    def forward(self, input):
        return self._fn(input, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout(_DropoutNd):
    """Zero each element with probability ``p`` in training mode, scaling the rest by 1/(1-p)
    (``torch.nn.Dropout``). The identity in eval mode.

    Math: y = x · m / (1-p), m ~ Bernoulli(1-p).

    Example:
        >>> import avila_ml as am
        >>> m = am.nn.Dropout(p=0.2); m
        Dropout(p=0.2, inplace=False)
        >>> m.eval()(am.ones(3))
        tensor([1., 1., 1.])
    """

    _fn = staticmethod(D.dropout)


class Dropout1d(_DropoutNd):
    """Zero whole channels of ``(N, C, L)`` / ``(C, L)`` inputs (``torch.nn.Dropout1d``).

    Math: y[n, c, :] = x[n, c, :] · m[n, c] / (1-p).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Dropout1d(0.5)(am.ones(2, 3, 4)).shape
        (2, 3, 4)
    """

    _fn = staticmethod(D.dropout1d)


class Dropout2d(_DropoutNd):
    """Zero whole channels of ``(N, C, H, W)`` / ``(C, H, W)`` inputs (``torch.nn.Dropout2d``).

    Math: y[n, c] = x[n, c] · m[n, c] / (1-p).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Dropout2d(0.5)(am.ones(2, 3, 4, 4)).shape
        (2, 3, 4, 4)
    """

    _fn = staticmethod(D.dropout2d)


class Dropout3d(_DropoutNd):
    """Zero whole channels of ``(N, C, D, H, W)`` / ``(C, D, H, W)`` inputs
    (``torch.nn.Dropout3d``).

    Math: y[n, c] = x[n, c] · m[n, c] / (1-p).

    Example:
        >>> import avila_ml as am
        >>> am.nn.Dropout3d(0.5)(am.ones(1, 2, 3, 3, 3)).shape
        (1, 2, 3, 3, 3)
    """

    _fn = staticmethod(D.dropout3d)


class AlphaDropout(_DropoutNd):
    """Dropout for SELU networks, keeping zero mean and unit variance (``torch.nn.AlphaDropout``).

    Math: see :func:`avila_ml.nn.functional.alpha_dropout`.

    Example:
        >>> import avila_ml as am
        >>> am.nn.AlphaDropout(0.1).eval()(am.ones(2))
        tensor([1., 1.])
    """

    _fn = staticmethod(D.alpha_dropout)


class FeatureAlphaDropout(_DropoutNd):
    """Alpha dropout of whole channels (``torch.nn.FeatureAlphaDropout``).

    Math: see :func:`avila_ml.nn.functional.feature_alpha_dropout`.

    Example:
        >>> import avila_ml as am
        >>> am.nn.FeatureAlphaDropout(0.1)(am.ones(2, 3, 4)).shape
        (2, 3, 4)
    """

    _fn = staticmethod(D.feature_alpha_dropout)
