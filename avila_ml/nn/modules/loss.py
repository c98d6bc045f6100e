"""Loss modules (``torch.nn``'s losses): each holds its options and calls the functional form
in :mod:`avila_ml.ops.loss`, where the math is documented.

Class weights are registered as buffers (``weight``, ``pos_weight``), as in PyTorch, so they
follow ``to(device)`` and appear in ``state_dict()``.
"""
from __future__ import annotations

from ...ops import loss as _loss
from .module import Module

__all__ = ["L1Loss", "MSELoss", "HuberLoss", "SmoothL1Loss", "CrossEntropyLoss", "NLLLoss",
           "BCELoss", "BCEWithLogitsLoss", "KLDivLoss", "CosineEmbeddingLoss"]


class _Loss(Module):
    """Holds ``reduction`` (``torch.nn.modules.loss._Loss``)."""

    _reductions = ("none", "mean", "sum")

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__()
        name = type(self).__name__
        reduction = _loss._legacy_reduction(name, size_average, reduce, reduction)
        _loss._check_reduction(name, reduction, self._reductions)
        self.reduction = reduction


class _WeightedLoss(_Loss):
    """A loss with a per-class ``weight`` buffer (``torch.nn.modules.loss._WeightedLoss``)."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)


class L1Loss(_Loss):
    """Mean absolute error (``torch.nn.L1Loss``).

    Math: l_i = |x_i - y_i|, reduced by ``reduction`` ('mean', 'sum' or 'none').

    Example:
        >>> import avila_ml as am
        >>> am.nn.L1Loss()(am.tensor([1.0, -3.0]), am.tensor([0.0, 0.0]))
        tensor(2.)
    """

    def forward(self, input, target):
        return _loss.l1_loss(input, target, reduction=self.reduction)


class MSELoss(_Loss):
    """Mean squared error (``torch.nn.MSELoss``).

    Math: l_i = (x_i - y_i)^2, reduced by ``reduction``.

    Example:
        >>> import avila_ml as am
        >>> am.nn.MSELoss(reduction="sum")(am.tensor([1.0, 2.0]), am.tensor([0.0, 0.0]))
        tensor(5.)
    """

    def forward(self, input, target):
        return _loss.mse_loss(input, target, reduction=self.reduction)


class HuberLoss(_Loss):
    """Huber loss (``torch.nn.HuberLoss``).

    Math: with d = x - y, l = d^2 / 2 where |d| < delta, else delta (|d| - delta / 2).

    Example:
        >>> import avila_ml as am
        >>> am.nn.HuberLoss(delta=1.0)(am.tensor([0.5, 3.0]), am.tensor([0.0, 0.0]))
        tensor(1.3125)
    """

    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        super().__init__(reduction=reduction)
        if not delta > 0:
            raise ValueError(f"HuberLoss: delta must be positive, got {delta}")
        self.delta = delta

    def forward(self, input, target):
        return _loss.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class SmoothL1Loss(_Loss):
    """Smooth L1 loss (``torch.nn.SmoothL1Loss``).

    Math: with d = x - y, l = d^2 / (2 beta) where |d| < beta, else |d| - beta / 2.

    Example:
        >>> import avila_ml as am
        >>> am.nn.SmoothL1Loss(beta=1.0)(am.tensor([0.5, 3.0]), am.tensor([0.0, 0.0]))
        tensor(1.3125)
    """

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0):
        super().__init__(size_average, reduce, reduction)
        if beta < 0:
            raise ValueError(f"SmoothL1Loss: beta must be >= 0, got {beta}")
        self.beta = beta

    def forward(self, input, target):
        return _loss.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class CrossEntropyLoss(_WeightedLoss):
    """Cross entropy of logits against class indices or class probabilities
    (``torch.nn.CrossEntropyLoss``).

    Math: l_n = -w[t_n] log softmax(x_n)[t_n] for index targets (ignored positions give 0;
    'mean' divides by the summed weight of the kept targets), with optional label smoothing;
    for probability targets l_n = -sum_c w_c q_{n,c} log softmax(x_n)_c. Inputs (C,), (N, C)
    or (N, C, d1..dk) — voxel-wise segmentation included.

    Example:
        >>> import avila_ml as am
        >>> loss = am.nn.CrossEntropyLoss(ignore_index=-1)
        >>> loss(am.tensor([[0.0, 0.0], [5.0, 0.0]]), am.tensor([1, -1]))
        tensor(0.6931)
    """

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(weight, size_average, reduce, reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return _loss.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                                   reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood of class indices given log-probabilities (``torch.nn.NLLLoss``).

    Math: l_n = -w[t_n] x[n, t_n]; 'mean' divides by the summed weight of the kept targets.

    Example:
        >>> import avila_ml as am
        >>> am.nn.NLLLoss()(am.tensor([[-0.5, -1.0], [-2.0, -0.1]]), am.tensor([0, 1]))
        tensor(0.3000)
    """

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean"):
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input, target):
        return _loss.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                              reduction=self.reduction)


class BCELoss(_WeightedLoss):
    """Binary cross entropy on probabilities (``torch.nn.BCELoss``).

    Math: l_i = -w_i (y_i log x_i + (1 - y_i) log(1 - x_i)), logs clamped at -100 so
    probabilities of exactly 0 and 1 give finite losses and gradients.

    Example:
        >>> import avila_ml as am
        >>> am.nn.BCELoss()(am.tensor([0.5, 1.0]), am.tensor([1.0, 1.0]))
        tensor(0.3466)
    """

    def forward(self, input, target):
        return _loss.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Sigmoid and binary cross entropy in one stable expression (``torch.nn.BCEWithLogitsLoss``).

    Math: l_i = w_i ((1 - y_i) x_i - (1 + (p - 1) y_i) log sigmoid(x_i)), with a stable
    log-sigmoid; ``pos_weight`` p (broadcast over the last, class dim) weighs positives.

    Example:
        >>> import avila_ml as am
        >>> am.nn.BCEWithLogitsLoss(pos_weight=am.tensor([2.0]))(am.tensor([0.0]), am.tensor([1.0]))
        tensor(1.3863)
    """

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean", pos_weight=None):
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target):
        return _loss.binary_cross_entropy_with_logits(input, target, weight=self.weight,
                                                      reduction=self.reduction, pos_weight=self.pos_weight)


class KLDivLoss(_Loss):
    """Kullback-Leibler divergence, input as log-probabilities (``torch.nn.KLDivLoss``).

    Math: l_i = y_i (log y_i - x_i) (or exp(y_i) (y_i - x_i) with ``log_target``);
    ``reduction='batchmean'`` gives the KL divergence per sample.

    Example:
        >>> import avila_ml as am
        >>> kl = am.nn.KLDivLoss(reduction="batchmean")
        >>> kl(am.log(am.tensor([[0.5, 0.5]])), am.tensor([[1.0, 0.0]]))
        tensor(0.6931)
    """

    _reductions = ("none", "mean", "sum", "batchmean")

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", log_target: bool = False):
        super().__init__(size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input, target):
        return _loss.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class CosineEmbeddingLoss(_Loss):
    """Cosine embedding loss (``torch.nn.CosineEmbeddingLoss``).

    Math: l_n = 1 - cos(a_n, b_n) where y_n = 1, max(0, cos(a_n, b_n) - margin) where y_n = -1.

    Example:
        >>> import avila_ml as am
        >>> a = am.tensor([[1.0, 0.0]]); b = am.tensor([[1.0, 1.0]])
        >>> am.nn.CosineEmbeddingLoss()(a, b, am.tensor([1]))
        tensor(0.2929)
    """

    def __init__(self, margin: float = 0.0, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(size_average, reduce, reduction)
        self.margin = margin

    def forward(self, input1, input2, target):
        return _loss.cosine_embedding_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)
