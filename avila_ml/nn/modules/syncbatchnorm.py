"""``SyncBatchNorm``: batch norm whose statistics span every rank (``torch.nn.SyncBatchNorm``)."""
from __future__ import annotations

from ...autograd.grad_mode import no_grad
from .normalization import _BatchNorm

__all__ = ["SyncBatchNorm"]


class SyncBatchNorm(_BatchNorm):
    """Batch normalization over (N, C, *spatial), 0 to 4 spatial dims, with the mean and
    variance taken over the whole batch of every rank (``torch.nn.SyncBatchNorm``).

    Math: per channel, with M = sum_r M_r values over all ranks, mean = (1/M) sum_r sum x and
    var = (1/M) sum_r sum (x - mean)^2 (two all-reduces: no E[x^2] - mean^2 cancellation);
    y = (x - mean) / sqrt(var + eps) * weight + bias; running_var gets var M / (M - 1). The
    statistics pass through a differentiable all-reduce, so backward is exact: with the
    gradients of all ranks' losses summed, as DistributedDataParallel's averaging expects.
    In eval mode, or without an initialized process group (or with one rank), it is
    BatchNorm. Use :meth:`convert_sync_batchnorm` to swap it into an existing model.

    Example:
        >>> import avila_ml as am
        >>> bn = am.nn.SyncBatchNorm(2)
        >>> y = bn(am.tensor([[1.0, 10.0], [3.0, 30.0]])); y
        tensor([[-1.0000, -1.0000],
                [ 1.0000,  1.0000]], grad_fn=<...>)
    """

    _ranks = (2, 3, 4, 5, 6)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _group(self):
        from ... import distributed as dist
        if not dist.is_initialized():
            return None
        g = dist.distributed_c10d._group(self.process_group, "SyncBatchNorm")
        return g if g is not None and g.size() > 1 else None

    def forward(self, input):
        group = self._group() if self.training else None
        if group is None:
            return super().forward(input)
        self._check_rank(input, self._ranks)
        if input.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm: expected input with {self.num_features} channels (dim 1), "
                             f"got input of shape {tuple(input.shape)}")
        from ...distributed.functional import all_reduce
        from ...factories import tensor
        dims = (0,) + tuple(range(2, input.ndim))
        shape = (1, -1) + (1,) * (input.ndim - 2)
        local = input.numel() // max(input.shape[1], 1)
        count = tensor([float(local)], dtype=input.dtype, device=input.device)
        stats = all_reduce(_cat(input.sum(dims), count), group=group)  # [sum_c..., M]
        m = float(stats.array[-1].item())
        if m <= 1 and self.track_running_stats:
            raise ValueError(f"SyncBatchNorm: Expected more than 1 value per channel when training, "
                             f"got {int(m)} over all ranks (input size {tuple(input.shape)} here)")
        mean = stats[:-1] / m
        xmu = input - mean.reshape(shape)
        var = all_reduce((xmu * xmu).sum(dims), group=group) / m
        y = xmu * (var + self.eps).rsqrt().reshape(shape)
        if self.weight is not None:
            y = y * self.weight.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        if self.track_running_stats and self.running_mean is not None:
            with no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked.item()) if self.momentum is None
                     else self.momentum)
                rm, rv = self.running_mean.array, self.running_var.array
                rm[...] = (1 - f) * rm + f * mean.array.astype(rm.dtype)
                rv[...] = (1 - f) * rv + f * (var.array * (m / (m - 1))).astype(rv.dtype)
                self.running_mean._version[0] += 1
                self.running_var._version[0] += 1
        return y

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Return ``module`` with every BatchNorm1d-4d replaced by a SyncBatchNorm holding the
        same parameters and running statistics (``SyncBatchNorm.convert_sync_batchnorm``).

        Example:
            >>> import avila_ml as am
            >>> net = am.nn.Sequential(am.nn.Conv2d(1, 2, 3), am.nn.BatchNorm2d(2))
            >>> type(am.nn.SyncBatchNorm.convert_sync_batchnorm(net)[1]).__name__
            'SyncBatchNorm'
        """
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            p = module.weight if module.weight is not None else module.running_mean
            out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, process_group,
                                device=None if p is None else p.device, dtype=None if p is None else p.dtype)
            if module.affine:
                out.weight = module.weight
                if module.bias is not None:
                    out.bias = module.bias
                else:
                    out.register_parameter("bias", None)
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
        for name, child in list(module._modules.items()):
            if child is not None:
                new = cls.convert_sync_batchnorm(child, process_group)
                if new is not child:
                    out._modules[name] = new
        return out


def _cat(a, b):
    from ...ops.shape import cat
    return cat([a, b])

