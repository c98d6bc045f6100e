"""Distance layers: ``CosineSimilarity``, ``PairwiseDistance`` (``torch.nn``); shells over
:mod:`avila_ml.ops.distance`."""
from __future__ import annotations

from ...ops import distance as _distance
from .module import Module

__all__ = ["CosineSimilarity", "PairwiseDistance"]


class CosineSimilarity(Module):
    """Cosine similarity along ``dim`` (``torch.nn.CosineSimilarity``).

    Math: s = Σ (x1 / max(‖x1‖₂, eps)) · (x2 / max(‖x2‖₂, eps)) along ``dim``.

    Example:
        >>> import avila_ml as am
        >>> am.nn.CosineSimilarity(dim=0)(am.tensor([1.0, 0.0]), am.tensor([1.0, 1.0]))
        tensor(0.7071)
    """

    def __init__(self, dim: int = 1, eps: float = 1e-8):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x1, x2):
        return _distance.cosine_similarity(x1, x2, self.dim, self.eps)


class PairwiseDistance(Module):
    """p-norm distance between rows (``torch.nn.PairwiseDistance``).

    Math: d = ‖x1 - x2 + eps‖_p over the last dim.

    Example:
        >>> import avila_ml as am
        >>> am.nn.PairwiseDistance(p=1.0, eps=0.0)(am.tensor([[1.0, 2.0]]), am.tensor([[0.0, 0.0]]))
        tensor([3.])
    """

    def __init__(self, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False):
        super().__init__()
        self.norm, self.eps, self.keepdim = p, eps, keepdim

    def forward(self, x1, x2):
        return _distance.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)
