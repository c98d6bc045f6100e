"""``DomainParallel``: run an unchanged model on sharded volumes.

Chosen design: *swap the layers' forward*, not a sharded-tensor type. ``DomainParallel(model,
spec)`` gives every supported layer of ``model`` a forward that calls the sharded op of
:mod:`.domain_ops` with the layer's own parameters and settings; containers
(``Sequential``, ``ModuleList``, ``ModuleDict``) keep theirs, so the model's code runs as
written, its parameters stay the same objects (optimizers, ``state_dict``, checkpoints are
untouched) and each layer's input is an ordinary Tensor (every op, the CUDA kernels included,
keeps its fast path). Why not a ``ShardedTensor`` that intercepts every op: the library has
hundreds of ops and no dispatch layer to hook; a type that silently falls back to the local
op for an op it does not know would give wrong results with no error, which this design
cannot: every layer it does not know raises when it meets a shard.

Which values are shards: the model's input and every output of a sharded layer. A layer's
output on *replicated* input (after a global pooling to size 1, all ranks hold the same values)
is replicated; any layer may run on replicated input (a ``Linear`` head). What a user module's
own ``forward`` does between its children cannot be seen, so a user-defined module raises at
wrap time unless listed in ``trusted`` (its forward only calls children and pointwise ops).
"""
from __future__ import annotations

import types

from ..tensor import Tensor
from ..autograd.grad_mode import no_grad
from ..nn.modules.module import Module
from . import domain_ops as D

__all__ = ["DomainParallel", "DomainLoss"]

_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")
_POINTWISE = ("ReLU", "Hardtanh", "ReLU6", "LeakyReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish",
              "Softplus", "Sigmoid", "Tanh", "Hardsigmoid", "Hardswish", "Softsign", "LogSigmoid",
              "Tanhshrink", "Softshrink", "Hardshrink", "Threshold", "Identity")


def _kind(m):
    """The sharded implementation of a layer, ``"container"``, ``"pointwise"``, or None."""
    from ..nn.modules import conv, pooling, normalization, upsampling, dropout
    name = type(m).__name__
    if type(m).__module__.startswith("avila_ml.nn.modules.") and name in _CONTAINERS:
        return "container"
    if type(m).__module__.startswith("avila_ml.nn.modules.") and name in _POINTWISE:
        return "pointwise"
    table = ((conv._ConvTransposeNd, _conv_transpose), (conv._ConvNd, _conv), (pooling._MaxPoolNd, _max_pool),
             (pooling._AvgPoolNd, _avg_pool), (upsampling.Upsample, _upsample),
             (normalization._BatchNorm, _batch_norm), (normalization._InstanceNorm, _instance_norm),
             (normalization.GroupNorm, _group_norm), (dropout._DropoutNd, _dropout),
             (pooling._AdaptiveAvgPoolNd, _global_avg_pool))
    for cls, fn in table:
        if isinstance(m, cls):
            return fn
    if type(m).__name__ in ("Softmax", "LogSoftmax") and type(m).__module__.startswith("avila_ml.nn."):
        return _channel_softmax
    return None


def _dims(m, spec, what):
    d = getattr(type(m), "_d", 0)  # conv and pooling layers know their number of spatial dims
    if d and d != spec.ndim:
        raise ValueError(f"DomainParallel: {what} works on {d} spatial dims but {spec} splits tensors with "
                         f"{spec.ndim} spatial dims")


def _conv(dp, m, x):
    return D.conv(x, m.weight, m.bias, dp.spec, m.stride, m.padding, m.dilation, m.groups, m.padding_mode)


def _conv_transpose(dp, m, x, output_size=None):
    if output_size is not None:
        raise ValueError(f"DomainParallel: {type(m).__name__} with output_size is not supported on shards; "
                         "set output_padding on the layer")
    return D.conv_transpose(x, m.weight, m.bias, dp.spec, m.stride, m.padding, m.output_padding, m.groups,
                            m.dilation)


def _max_pool(dp, m, x):
    return D.max_pool(x, dp.spec, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)


def _avg_pool(dp, m, x):
    return D.avg_pool(x, dp.spec, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                      m.divisor_override)


def _upsample(dp, m, x):
    return D.interpolate(x, dp.spec, m.size, m.scale_factor, m.mode, m.align_corners, m.recompute_scale_factor)


def _batch_norm(dp, m, x):
    if x.shape[1] != m.num_features:
        raise ValueError(f"{type(m).__name__}: expected input with {m.num_features} channels (dim 1), got "
                         f"input of shape {tuple(x.shape)}")
    factor = 0.0 if m.momentum is None else m.momentum
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        with no_grad():
            m.num_batches_tracked.add_(1)
        if m.momentum is None:  # cumulative moving average
            factor = 1.0 / float(m.num_batches_tracked.item())
    if m.training or m.running_mean is None:
        track = m.training and m.track_running_stats
        return D.batch_norm(x, dp.spec, m.running_mean if track else None, m.running_var if track else None,
                            m.weight, m.bias, True, factor, m.eps)
    return D.batch_norm(x, dp.spec, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def _instance_norm(dp, m, x):
    if m.track_running_stats:
        raise ValueError(f"DomainParallel: {type(m).__name__} with track_running_stats=True is not supported on "
                         "shards (only per-sample statistics are)")
    return D.instance_norm(x, dp.spec, m.weight, m.bias, m.eps)


def _group_norm(dp, m, x):
    return D.group_norm(x, dp.spec, m.num_groups, m.weight, m.bias, m.eps)


def _dropout(dp, m, x):
    if m.training and m.p > 0:
        raise ValueError(f"DomainParallel: {type(m).__name__}(p={m.p}) in training draws its mask per shard, which "
                         "cannot equal the unsharded mask; use p=0 or eval mode")
    return x


def _channel_softmax(dp, m, x):
    if m.dim not in (1, 1 - x.ndim):
        raise ValueError(f"DomainParallel: {type(m).__name__}(dim={m.dim}) on shards is only supported over the "
                         "channel dim (1): other dims are split or batched")
    return type(m).forward(m, x)


def _global_avg_pool(dp, m, x):
    size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
    if any(s != 1 for s in size):
        raise ValueError(f"DomainParallel: {type(m).__name__}(output_size={m.output_size}) is only supported on "
                         "shards with output size 1 (global pooling)")
    if dp.spec.batch_axis is not None and dp.spec.mesh[dp.spec.batch_axis] > 1:
        raise ValueError("DomainParallel: global pooling with a data-parallel mesh dim would leave batch shards "
                         "that the replicated layers after it cannot tell apart; use a mesh without 'batch'")
    spatial = tuple(range(2, x.ndim))
    lay = dp.spec.layout(x)
    count = 1
    for n in lay.shape[2:]:
        count *= n
    out = D.reduce_replicated(x.sum(spatial, keepdim=True), dp.spec.group) / float(count)
    return dp._mark(out)


class DomainParallel(Module):
    """Run ``module`` on sharded volumes: each supported layer computes this rank's shard of
    what it computes on the whole volume (forward and backward exact), weights stay replicated
    and their gradients are summed over every rank of ``spec.group`` (the domain and the
    data-parallel ranks). PyTorch has no counterpart (its ``DTensor`` and NVIDIA PhysicsNeMo's
    ``ShardTensor`` are the nearest ideas); the wrapper is used like ``DistributedDataParallel``.

    Supported layers: ``Conv1d``-``Conv4d`` (any stride, dilation, kernel, groups, padding and
    padding mode per dim, ``"causal"`` included), ``ConvTranspose1d``-``4d``, ``MaxPool``,
    ``AvgPool``, ``Upsample`` (nearest and linear modes), ``BatchNorm``/``SyncBatchNorm``,
    ``InstanceNorm`` (without running statistics), ``GroupNorm``, pointwise activations,
    ``Softmax`` over channels, ``Dropout`` with ``p=0`` or in eval, ``AdaptiveAvgPool`` to size 1
    (its output is replicated; any layer may follow it). Any other layer raises when it gets a
    shard; a user-defined module raises here unless listed in ``trusted``. The model is changed
    in place (like ``convert_sync_batchnorm``); :meth:`restore` undoes it.

    Math: ``forward(x_r) = shard_r(model(x))`` for the global ``x`` assembled from the shards
    ``x_r``; the loss of the whole volume comes from :class:`DomainLoss`.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1, 1), dims=("x", "y"))
        >>> net = am.nn.Sequential(am.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), am.nn.ReLU())
        >>> x = am.randn(1, 1, 6, 6)
        >>> want = net(x)
        >>> dp = dist.DomainParallel(net, spec)
        >>> am.allclose(dp(spec.scatter(x)), want)     # the shard of the unsharded result
        True
        >>> dp.restore(); dist.destroy_process_group()
    """

    def __init__(self, module, spec, trusted=()):
        super().__init__()
        self.module = module
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "_trusted", tuple(trusted))
        object.__setattr__(self, "_replicated", {})
        object.__setattr__(self, "_patched", [])
        bad = []
        for name, m in module.named_modules():
            kind = _kind(m)
            path = name or "(the model itself)"
            if kind is None and not type(m).__module__.startswith("avila_ml.") and not isinstance(m, self._trusted):
                bad.append(f"{path} ({type(m).__name__})")
                continue
            if kind == "container":
                continue
            if callable(kind) and kind not in (_dropout, _channel_softmax, _global_avg_pool):
                _dims(m, spec, f"{path} ({type(m).__name__})")
            self._patch(path, m, kind)
        if bad:
            self.restore()
            raise ValueError(
                "DomainParallel: these modules are user-defined, so what their forward does between their "
                f"children cannot be checked: {', '.join(bad)}. If a forward only calls its children and "
                "pointwise tensor ops, pass trusted=(TheClass, ...)")

    def _patch(self, path, m, kind):
        orig = types.MethodType(type(m).forward, m)
        dp = self

        def forward(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, Tensor)]
            if tensors and all(id(t) in dp._replicated for t in tensors):
                return dp._mark(orig(*args, **kwargs))
            if kind == "pointwise" or (kind is None and isinstance(m, dp._trusted)):
                return orig(*args, **kwargs)
            if kind is None:
                raise ValueError(f"DomainParallel: {path} ({type(m).__name__}) got a shard of a sharded volume, and "
                                 "it has no sharded version (it would mix values across the split axes without "
                                 "the neighbours' data). Supported: convolutions, transposed convolutions, max/avg "
                                 "pooling, Upsample, batch/instance/group norm, pointwise activations, global "
                                 "average pooling")
            return kind(dp, m, *args, **kwargs)

        m.__dict__["forward"] = forward
        self._patched.append(m)

    def _mark(self, out):
        if isinstance(out, Tensor):
            self._replicated[id(out)] = out
        elif isinstance(out, (tuple, list)):
            for o in out:
                self._mark(o)
        return out

    def is_replicated(self, t) -> bool:
        """True when ``t`` came out of the last forward as a replicated value (not a shard)."""
        return id(t) in self._replicated

    def forward(self, *inputs, **kwargs):
        """The model on this rank's shards (inputs as ``spec.scatter``/``spec.shard`` give them)."""
        self._replicated.clear()
        return self.module(*inputs, **kwargs)

    def restore(self) -> None:
        """Give every layer its own forward back (the model is then the plain model again)."""
        for m in self._patched:
            m.__dict__.pop("forward", None)
        self._patched.clear()

    def criterion(self, loss):
        """``loss`` (a loss module) computed over the whole volume: see :class:`DomainLoss`."""
        return DomainLoss(loss, self.spec, self)


class DomainLoss(Module):
    """A loss module over sharded outputs and targets: the loss of the whole volume, the same on
    every rank, with an exact backward (:func:`~avila_ml.distributed.domain_ops.sharded_loss`).
    On replicated outputs (after global pooling) the plain loss. Mirrors the wrapped loss.

    Math: ``mean = sum_r sum(l_r) / count``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> dist.DomainLoss(am.nn.L1Loss(), spec)(am.ones(1, 1, 4), am.zeros(1, 1, 4))
        tensor(1.)
        >>> dist.destroy_process_group()
    """

    def __init__(self, loss, spec, parallel=None):
        super().__init__()
        self.loss = loss
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "_parallel", parallel)

    def forward(self, input, target):
        if self._parallel is not None and self._parallel.is_replicated(input):
            return self.loss(input, target)
        return D.sharded_loss(self.loss, input, target, self.spec)
