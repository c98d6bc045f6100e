"""Normalization layers: BatchNorm1d-4d, InstanceNorm1d-4d, LayerNorm, GroupNorm (``torch.nn``).

Thin shells over :mod:`avila_ml.ops.normalization`: they hold the affine parameters
(``weight``, ``bias``) and the running statistics (buffers ``running_mean``, ``running_var``,
``num_batches_tracked``), named and shaped as in PyTorch so state dicts load either way.
``BatchNorm4d`` and ``InstanceNorm4d`` take (N, C, t, x, y, z) spacetime volumes.
"""
from __future__ import annotations

import warnings

import numpy as np

from ... import dtypes as _dt
from ...autograd.grad_mode import no_grad
from ...factories import empty, ones, tensor, zeros
from ...ops import normalization as _norm
from ...ops.shape import squeeze, unsqueeze
from .module import Module
from .parameter import Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNorm4d", "InstanceNorm1d",
           "InstanceNorm2d", "InstanceNorm3d", "InstanceNorm4d", "LayerNorm", "GroupNorm", "RMSNorm"]


def _check_count(who: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")
    return int(value)



def _affine_parameters(module, shape, affine: bool, bias: bool, fkw) -> None:
    """Register ``weight`` (and ``bias`` if asked) of ``shape``, or both as None, as PyTorch's
    norm layers do (so state_dict keys match)."""
    module.register_parameter("weight", Parameter(empty(*shape, **fkw)) if affine else None)
    module.register_parameter("bias", Parameter(empty(*shape, **fkw)) if affine and bias else None)


def _reset_affine(module) -> None:
    """weight 1, bias 0 — every norm layer's default."""
    with no_grad():
        if module.weight is not None:
            module.weight.fill_(1)
        if module.bias is not None:
            module.bias.zero_()

class _NormBase(Module):
    """Parameters, buffers and bookkeeping shared by batch and instance norm (``torch.nn.modules.batchnorm._NormBase``)."""

    _spatial = 1  # spatial dims of the batched input (N, C, *spatial)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 *, bias: bool = True):
        super().__init__()
        who = type(self).__name__
        self.num_features = _check_count(who, "num_features", num_features)
        if not eps >= 0:
            raise ValueError(f"{who}: eps must be >= 0, got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{who}: momentum must be in [0, 1] or None, got {momentum}")
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        fkw = {"device": device, "dtype": dtype}
        _affine_parameters(self, (num_features,), affine, bias, fkw)
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, **fkw))
            self.register_buffer("running_var", ones(num_features, **fkw))
            self.register_buffer("num_batches_tracked", tensor(0, dtype=_dt.int64, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, batch count 0 (``_NormBase.reset_running_stats``)."""
        if self.track_running_stats:
            with no_grad():
                self.running_mean.zero_()
                self.running_var.fill_(1)
                self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics and set weight 1, bias 0 (``_NormBase.reset_parameters``)."""
        self.reset_running_stats()
        _reset_affine(self)

    def _check_rank(self, input, ranks) -> None:
        if input.ndim not in ranks:
            want = " or ".join(f"{r}D" for r in ranks)
            raise ValueError(
                f"{type(self).__name__}: expected {want} input (got {input.ndim}D input of shape "
                f"{tuple(input.shape)})"
            )

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class _BatchNorm(_NormBase):
    """Batch norm over (N, C, *spatial) (``torch.nn.modules.batchnorm._BatchNorm``)."""

    _ranks = ()

    def forward(self, input):
        self._check_rank(input, self._ranks)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: expected input with {self.num_features} channels (dim 1), "
                f"got input of shape {tuple(input.shape)}"
            )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            if input.numel() // max(input.shape[1], 1) == 1:
                # checked before the batch count moves, so a failed call changes nothing
                raise ValueError(
                    f"{type(self).__name__}: Expected more than 1 value per channel when training, "
                    f"got input size {tuple(input.shape)}"
                )
            with no_grad():
                self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.item())
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_stats = not self.training or self.track_running_stats
        return _norm.batch_norm(
            input, self.running_mean if use_stats else None, self.running_var if use_stats else None,
            self.weight, self.bias, bn_training, factor, self.eps,
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) input (``torch.nn.BatchNorm1d``).

    Math: y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias, with the statistics of each
    channel over the batch (and L) in training, and the running estimates in ``eval()``.
    The running estimates update as running <- (1 - momentum) running + momentum stat
    (unbiased variance); ``momentum=None`` gives the cumulative average over all batches.

    Example:
        >>> import avila_ml as am
        >>> bn = am.nn.BatchNorm1d(2)
        >>> bn(am.tensor([[1.0, 10.0], [3.0, 30.0]]))
        tensor([[-1.0000, -1.0000],
                [ 1.0000,  1.0000]], grad_fn=<NormalizeBackward0>)
        >>> bn.running_mean, bn.num_batches_tracked
        (tensor([0.2000, 2.0000]), tensor(1))
    """

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) input (``torch.nn.BatchNorm2d``).

    Math: as :class:`BatchNorm1d`, statistics per channel over (N, H, W).

    Example:
        >>> import avila_ml as am
        >>> am.nn.BatchNorm2d(3)(am.randn(2, 3, 4, 4)).shape
        (2, 3, 4, 4)
    """

    _ranks = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization of (N, C, D, H, W) input (``torch.nn.BatchNorm3d``).

    Math: as :class:`BatchNorm1d`, statistics per channel over (N, D, H, W).

    Example:
        >>> import avila_ml as am
        >>> am.nn.BatchNorm3d(3)(am.randn(2, 3, 2, 2, 2)).shape
        (2, 3, 2, 2, 2)
    """

    _ranks = (5,)


class BatchNorm4d(_BatchNorm):
    """Batch normalization of (N, C, t, x, y, z) spacetime volumes (no PyTorch twin; the
    4-d member of ``torch.nn.BatchNorm1d/2d/3d``).

    Math: as :class:`BatchNorm1d`, statistics per channel over (N, t, x, y, z). Buffers and
    parameters are named like PyTorch's BatchNorm3d, so its state dict loads here.

    Example:
        >>> import avila_ml as am
        >>> am.nn.BatchNorm4d(3)(am.randn(2, 3, 2, 2, 2, 2)).shape
        (2, 3, 2, 2, 2, 2)
    """

    _ranks = (6,)


class _InstanceNorm(_NormBase):
    """Instance norm over the spatial dims (``torch.nn.modules.instancenorm._InstanceNorm``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, *, bias: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def _apply_instance_norm(self, input):
        return _norm.instance_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0, self.eps,
        )

    def forward(self, input):
        unbatched = self._spatial + 1
        self._check_rank(input, (unbatched, unbatched + 1))
        feature_dim = input.ndim - unbatched
        if input.shape[feature_dim] != self.num_features:
            if self.affine or self.track_running_stats:
                raise ValueError(
                    f"{type(self).__name__}: expected input's size at dim={feature_dim} to match "
                    f"num_features ({self.num_features}), but got input of shape {tuple(input.shape)}"
                )
            warnings.warn(
                f"{type(self).__name__}: input's size at dim={feature_dim} does not match num_features "
                f"({self.num_features}); num_features is not used because affine=False",
                UserWarning, stacklevel=2,
            )
        if input.ndim == unbatched:
            return squeeze(self._apply_instance_norm(unsqueeze(input, 0)), 0)
        return self._apply_instance_norm(input)


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization of (N, C, L) or unbatched (C, L) input (``torch.nn.InstanceNorm1d``).

    Math: y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias with the statistics of each
    (sample, channel) over L. Defaults as PyTorch: ``affine=False``,
    ``track_running_stats=False``.

    Example:
        >>> import avila_ml as am
        >>> am.nn.InstanceNorm1d(1)(am.tensor([[[1.0, 3.0]]]))
        tensor([[[-1.0000,  1.0000]]])
    """

    _spatial = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization of (N, C, H, W) or (C, H, W) input (``torch.nn.InstanceNorm2d``).

    Math: as :class:`InstanceNorm1d`, statistics per (sample, channel) over (H, W).

    Example:
        >>> import avila_ml as am
        >>> am.nn.InstanceNorm2d(3)(am.randn(2, 3, 4, 4)).shape
        (2, 3, 4, 4)
    """

    _spatial = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization of (N, C, D, H, W) or (C, D, H, W) input (``torch.nn.InstanceNorm3d``).

    Math: as :class:`InstanceNorm1d`, statistics per (sample, channel) over (D, H, W).

    Example:
        >>> import avila_ml as am
        >>> am.nn.InstanceNorm3d(3)(am.randn(2, 3, 2, 2, 2)).shape
        (2, 3, 2, 2, 2)
    """

    _spatial = 3


class InstanceNorm4d(_InstanceNorm):
    """Instance normalization of (N, C, t, x, y, z) or (C, t, x, y, z) volumes (no PyTorch
    twin; the 4-d member of ``torch.nn.InstanceNorm1d/2d/3d``).

    Math: as :class:`InstanceNorm1d`, statistics per (sample, channel) over (t, x, y, z).

    Example:
        >>> import avila_ml as am
        >>> am.nn.InstanceNorm4d(3)(am.randn(2, 3, 2, 2, 2, 2)).shape
        (2, 3, 2, 2, 2, 2)
    """

    _spatial = 4


class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape`` dims (``torch.nn.LayerNorm``).

    Math: y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias, the statistics taken over the
    last len(normalized_shape) dims of each sample; ``weight`` (ones) and ``bias`` (zeros)
    have shape ``normalized_shape`` (``elementwise_affine``, ``bias`` switch them off).

    Example:
        >>> import avila_ml as am
        >>> ln = am.nn.LayerNorm(2)
        >>> ln(am.tensor([[1.0, 3.0]]))
        tensor([[-1.0000,  1.0000]], grad_fn=<NormalizeBackward0>)
        >>> ln.weight.shape, ln.bias.shape
        ((2,), (2,))
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(_check_count("LayerNorm", "normalized_shape entry", s) for s in normalized_shape)
        if not self.normalized_shape:
            raise ValueError("LayerNorm: normalized_shape must have at least one dimension")
        if not eps >= 0:
            raise ValueError(f"LayerNorm: eps must be >= 0, got {eps}")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        fkw = {"device": device, "dtype": dtype}
        _affine_parameters(self, self.normalized_shape, elementwise_affine, bias, fkw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight 1, bias 0 (``LayerNorm.reset_parameters``)."""
        _reset_affine(self)

    def forward(self, input):
        return _norm.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class GroupNorm(Module):
    """Group normalization of (N, C, *spatial) input (``torch.nn.GroupNorm``).

    Math: the C channels form ``num_groups`` groups; y = (x - E[x]) / sqrt(Var[x] + eps)
    with the statistics of each (sample, group) over its channels and all spatial
    positions, then the per-channel affine weight_c y + bias_c. Independent of the batch
    size: the norm for batches of 1-2 large volumes.

    Example:
        >>> import avila_ml as am
        >>> gn = am.nn.GroupNorm(2, 4)
        >>> gn(am.tensor([[1.0, 3.0, 0.0, 10.0]]))
        tensor([[-1.0000,  1.0000, -1.0000,  1.0000]], grad_fn=<ViewBackward0>)
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, *, bias: bool = True):
        super().__init__()
        self.num_groups = _check_count("GroupNorm", "num_groups", num_groups)
        self.num_channels = _check_count("GroupNorm", "num_channels", num_channels)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        if not eps >= 0:
            raise ValueError(f"GroupNorm: eps must be >= 0, got {eps}")
        self.eps = eps
        self.affine = affine
        fkw = {"device": device, "dtype": dtype}
        _affine_parameters(self, (num_channels,), affine, bias, fkw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight 1, bias 0 (``GroupNorm.reset_parameters``)."""
        _reset_affine(self)

    def forward(self, input):
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise ValueError(
                f"GroupNorm: expected input of shape (N, {self.num_channels}, *), got {tuple(input.shape)}"
            )
        return _norm.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, bias={self.bias is not None}"



class RMSNorm(Module):
    """Root-mean-square normalization over the trailing ``normalized_shape`` dims (``torch.nn.RMSNorm``).

    Math: y = x / sqrt(mean(x²) + eps) * weight, the mean over the last len(normalized_shape)
    dims; ``weight`` (ones, shape ``normalized_shape``) if ``elementwise_affine``; ``eps=None``
    uses the input dtype's machine epsilon. No bias and no mean subtraction.

    Example:
        >>> import avila_ml as am
        >>> m = am.nn.RMSNorm(2, eps=0.0)
        >>> m(am.tensor([[1.0, 1.0], [3.0, -3.0]]))
        tensor([[ 1.,  1.],
                [ 1., -1.]], grad_fn=<MulBackward0>)
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine: bool = True, device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(_check_count("RMSNorm", "normalized_shape entry", s) for s in normalized_shape)
        if not self.normalized_shape:
            raise ValueError("RMSNorm: normalized_shape must have at least one dimension")
        if eps is not None and not eps >= 0:
            raise ValueError(f"RMSNorm: eps must be >= 0 or None, got {eps}")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _affine_parameters(self, self.normalized_shape, elementwise_affine, False,
                           {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight 1 (``RMSNorm.reset_parameters``)."""
        _reset_affine(self)

    def forward(self, input):
        return _norm.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
