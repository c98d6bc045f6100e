"""Sharded operations: each takes this rank's shard (and a :class:`~.domain.DomainSpec`) and
returns this rank's shard of exactly what the unsharded op gives on the whole volume, with an
exact backward.

Two rules make every op exact:

* **Windows.** Output ``o`` of a window op (convolution, pooling) along an axis is computed by
  the rank whose input shard holds position ``o * stride`` ("anchor"); that rank first extends
  its shard by the halo the windows of its outputs reach (:mod:`.halo`, honouring the padding
  mode per axis), then runs the ordinary op without padding. A causal axis has its window
  behind the anchor, so only past halos move. Interpolation assigns output ``o`` to the owner
  of its first source index; a transposed convolution computes its partial sums locally and
  adds the overlaps into their owners (the adjoint exchange).
* **Replicated values.** Weights and statistics are the same on every rank. A replicated value
  used on shards (a weight) enters through :func:`replicate` (identity; backward sums the
  ranks' partial gradients). A value summed over shards into a replicated one (a loss, a global
  mean) leaves through :func:`reduce_replicated` (all-reduce; backward passes the replicated
  gradient through). Each is the other's backward, so the pair is exact to any order.
  Normalization statistics use :func:`avila_ml.distributed.functional.all_reduce` (both at once).
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd.function import Function
from ..backends import backend_of
from ..tensor import Tensor
from ..ops import conv as _C
from ..ops import pooling as _P
from ..ops.indexing import index_select
from ..ops._conv_geometry import ConvGeometry, int_tuple
from .domain import to_host, transport_xp
from .halo import Exchange, HaloFinish, HaloGather, HaloScatterAdd, HaloStart, halo_plan
from .process_group import ReduceOp

__all__ = ["replicate", "reduce_replicated", "conv", "conv_transpose", "max_pool", "avg_pool", "interpolate",
           "batch_norm", "instance_norm", "group_norm", "global_sum", "global_mean", "sharded_loss"]


# ----------------------------------------------------------------------------- replicated values
class _Replicate(Function):
    def forward(self, x, group):
        self.group = group
        return x.copy()

    def backward(self, g):
        return _ReduceReplicated.apply(g, self.group)


class _ReduceReplicated(Function):
    def forward(self, x, group):
        self.group = group
        out = x.copy()  # C-contiguous (ascontiguousarray would make a 0-d array 1-d)
        group.allreduce(out, ReduceOp.SUM, name="reduce_replicated").wait()
        return out

    def backward(self, g):
        return _Replicate.apply(g, self.group)


def replicate(t, group):
    """A replicated tensor (a weight) entering computation on shards (Megatron's "copy to
    parallel region"): the value unchanged; backward sums the partial gradients of all ranks.

    Math: forward ``y = w``; backward ``dL/dw = sum_r g_r``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed.domain_ops import replicate
        >>> dist.init_process_group()
        >>> w = am.tensor([2.0], requires_grad=True)
        >>> (3 * replicate(w, dist.distributed_c10d._get_default_group())).sum().backward(); w.grad
        tensor([3.])
        >>> dist.destroy_process_group()
    """
    if t is None or group.size() == 1:
        return t
    return _Replicate.apply(t, group)


def reduce_replicated(t, group):
    """Sum of ``t`` over the ranks, the same on every rank, for a value that leaves the shards
    (a loss, a global mean): backward passes the (replicated) gradient through unchanged.

    Math: forward ``y = sum_r x_r``; backward ``dL/dx_r = dL/dy``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed.domain_ops import reduce_replicated
        >>> dist.init_process_group()
        >>> reduce_replicated(am.tensor([1.0, 2.0]), dist.distributed_c10d._get_default_group())
        tensor([1., 2.])
        >>> dist.destroy_process_group()
    """
    if group.size() == 1:
        return t
    if not t.array.flags.c_contiguous:
        t = t.contiguous()
    return _ReduceReplicated.apply(t, group)


# ----------------------------------------------------------------------------- helpers
def _layout(spec, x, layout, op):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(x).__name__}")
    if x.ndim != spec.ndim + 2:
        raise ValueError(f"{op}: expected a batched shard (N, C, {', '.join(spec.spatial_names)}) with "
                         f"{spec.ndim + 2} dims for {spec}, got shape {tuple(x.shape)}")
    return spec.layout(x) if layout is None else layout


def _axis_name(spec, i, op):
    a = 2 + i
    return f"{op}: axis '{spec.spatial_names[i]}' (dim {a})"


def _extend(x, spec, lay, axis, need, mode, fill, what):
    """``x`` extended along tensor dim ``axis`` to the global range ``need[pos]`` (a halo
    exchange over the mesh line of that dim; a local border for an unsplit dim)."""
    ex = _exchange(spec, lay, axis, need, mode, fill, what)
    return x if ex is None else HaloGather.apply(x, ex)


def _exchange(spec, lay, axis, need, mode, fill, what):
    """The :class:`Exchange` that extends dim ``axis`` to ``need[pos]``, or None if nothing moves."""
    m = spec.mesh_axis_of(axis)
    line = spec.line(m) if m is not None else [spec.rank]
    plan = halo_plan(tuple(lay.starts[axis]), tuple(need), mode, lay.pos[axis], what)
    return None if plan.identity else Exchange(plan, axis, line, spec.group, fill)


def _window_axis(starts, lo, hi, k, s, dl, n_out, what):
    """Output shard starts and the needed input range of each position, for a window op with
    kernel ``k``, stride ``s``, dilation ``dl``, padding ``lo``/``hi`` along one axis."""
    P = len(starts) - 1
    ostarts = [0] + [min(-(-starts[q] // s), n_out) for q in range(1, P)] + [n_out]
    need = []
    for q in range(P):
        o0, o1 = ostarts[q], ostarts[q + 1]
        if o1 <= o0:
            raise ValueError(f"{what}: the shard at position {q} (input [{starts[q]}, {starts[q + 1]}) of "
                             f"{starts[-1]}) gets no outputs with stride {s} (output size {n_out}); use fewer "
                             "ranks on this axis")
        need.append((o0 * s - lo, (o1 - 1) * s - lo + dl * (k - 1) + 1))
    return ostarts, need


# ----------------------------------------------------------------------------- convolution
def conv(input, weight, bias, spec, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
         layout=None):
    """Sharded ``conv{d}d`` (d = ``spec.ndim``, 1 to 4): this rank's shard of the convolution
    of the whole volume, with PyTorch's arguments and one ``padding_mode`` per spatial dim
    (``"zeros"``, ``"circular"``, ``"reflect"``, ``"replicate"``, ``"causal"``, as
    :func:`avila_ml.nn.functional.conv4d`). Mirrors ``torch.nn.functional.conv{d}d``.

    Math: halo exchange per split axis (output ``o`` on the rank holding input ``o * stride``,
    needing input ``[o s - pad_lo, o s - pad_lo + dilation (K - 1)]``), then the local
    convolution without padding; ``weight`` and ``bias`` enter through :func:`replicate`, so
    their gradients are the sums over all ranks.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> x, w = am.arange(5.0).reshape(1, 1, 5), am.ones(1, 1, 3)
        >>> domain_ops.conv(x, w, None, spec, padding_mode="causal")
        tensor([[[0., 1., 3., 6., 9.]]])
        >>> dist.destroy_process_group()
    """
    d = spec.ndim
    op = f"sharded conv{d}d"
    lay = _layout(spec, input, layout, op)
    _C._check_tensors(op, input, weight, bias, d, False)
    stride = int_tuple(stride, d, "stride", op, 1)
    dilation = int_tuple(dilation, d, "dilation", op, 1)
    modes = _C._modes(padding_mode, d, op)
    K = tuple(weight.shape[2:])
    lo, hi = _C._padding_sides(op, padding, stride, dilation, K)
    x = input
    geo_lo, geo_hi = [0] * d, [0] * d
    axes = []  # (axis index, exchange) of the axes whose borders the exchange builds
    for i in range(d):
        a, n = 2 + i, lay.shape[2 + i]
        plo, phi = (dilation[i] * (K[i] - 1), 0) if modes[i] == "causal" else (lo[i], hi[i])
        if len(lay.starts[a]) == 2 and modes[i] in ("zeros", "causal"):
            # an unsplit axis with zero padding: the convolution pads it itself (no copy)
            geo_lo[i], geo_hi[i] = plo, phi
            continue
        if (modes[i] == "reflect" and max(plo, phi) >= n) or (modes[i] == "circular" and max(plo, phi) > n):
            raise RuntimeError(f"{op}: {modes[i]} padding ({plo}, {phi}) is too large for spatial dim {i} of global "
                               f"size {n}; reflect needs padding < size, circular padding <= size")
        n_out = (n + plo + phi - dilation[i] * (K[i] - 1) - 1) // stride[i] + 1
        if n_out < 1:
            raise RuntimeError(f"{op}: the dilated kernel {K} is larger than the padded input along spatial dim {i} "
                               f"(global size {n}, padding ({plo}, {phi}), dilation {dilation[i]})")
        what = _axis_name(spec, i, op) + (f" (kernel {K[i]}, dilation {dilation[i]}, stride {stride[i]}, "
                                          f"{modes[i]} padding ({plo}, {phi}))")
        ostarts, need = _window_axis(lay.starts[a], plo, phi, K[i], stride[i], dilation[i], n_out, what)
        ex = _exchange(spec, lay, a, need, modes[i], 0.0, what)
        if ex is not None:
            me = lay.pos[a]
            axes.append((i, ex, plo, (ostarts[me], ostarts[me + 1]), need[me][0]))
    C, O, groups = input.shape[1], weight.shape[0], int(groups)
    if groups < 1 or C % groups or O % groups or weight.shape[1] * groups != C:
        raise RuntimeError(f"{op}: input of shape {tuple(input.shape)} has {C} channels and weight of shape "
                           f"{tuple(weight.shape)} expects C_in = weight.shape[1] * groups = {weight.shape[1]} * "
                           f"{groups}; C_in and C_out ({O}) must be divisible by groups")
    if bias is not None and tuple(bias.shape) != (O,):
        raise RuntimeError(f"{op}: bias of shape {tuple(bias.shape)} does not match {O} output channels ({O},)")
    # the halos are in place: the local convolution runs unpadded; a causal axis keeps its flag so
    # the algorithm choice keeps outputs bitwise independent of later inputs, as unsharded
    geom = ConvGeometry(stride, tuple(geo_lo), tuple(geo_hi), dilation, groups, "causal" in modes)
    g = spec.group
    w, b = replicate(weight, g), replicate(bias, g)
    # every exchange but one runs first (later axes extend the already extended data, so
    # corners come along); the last one overlaps the convolution of the outputs that need none
    # of its halos, then the two boundary slabs are computed from the extended data. Every rank
    # orders the axes the same way (by the mesh), so the messages match
    split = [j for j, (i, *_) in enumerate(axes) if len(lay.starts[2 + i]) > 2]
    if not spec.overlap:
        split = []
    if split:  # the overlapped exchange is the last split axis's (local borders first)
        axes.append(axes.pop(split[-1]))
    for i, ex, *_ in axes[:-1]:
        x = HaloGather.apply(x, ex)
    if split:
        i, ex, plo, outs, lo = axes[-1]
        pieces = _overlapped_conv(x, w, b, geom, ex, 2 + i, lay.bounds(2 + i), outs, lo, stride[i], plo,
                                  dilation[i] * (K[i] - 1))
        if pieces is not None:
            return pieces
        x = HaloGather.apply(x, ex)
    elif axes:
        x = HaloGather.apply(x, axes[-1][1])
    _C._check_extent(op, tuple(x.shape), K, geom)
    return _C.ConvNd.apply(x, w, b, geom)


def _overlapped_conv(x, w, b, geom, ex, a, shard, outs, lo, s, plo, ext):
    """The convolution along dim ``a`` in three slabs: the interior (outputs whose windows lie in
    this rank's input ``shard = [first, last)``) computed while the halos of ``ex`` travel, then
    the low and high boundary slabs from the extended shard (global start ``lo``); this rank's
    outputs are ``outs = [o0, o1)``. The backward overlaps the same way: the adjoint exchange
    of the boundary gradients travels while the interior's backward runs (``HaloFinish``/
    ``HaloStart``). None when no message is awaited or there is no interior."""
    from ..ops.shape import cat
    if not ex.plan.recv and not ex.plan.send:
        return None
    (first, last), (o0, o1) = shard, outs
    i0 = max(o0, -(-(first + plo) // s))     # first output whose window starts at or after `first`
    i1 = min(o1, (last - 1 - ext + plo) // s + 1)  # past the last whose window ends before `last`
    if i1 <= i0:
        return None
    key = [slice(None)] * x.ndim
    pending = ([], [], ex)
    xe = HaloStart.apply(x, ex, pending)     # own positions placed, halos in flight
    key[a] = slice(i0 * s - plo - lo, (i1 - 1) * s - plo + ext + 1 - lo)
    inner = _C.ConvNd.apply(xe[tuple(key)], w, b, geom)  # reads own positions only
    # the halos land; in backward the adjoint exchange starts here and overlaps inner's backward
    xe, inner = HaloFinish.apply(xe, inner, pending)
    parts = []
    if i0 > o0:
        key[a] = slice(o0 * s - plo - lo, (i0 - 1) * s - plo + ext + 1 - lo)
        parts.append(_C.ConvNd.apply(xe[tuple(key)], w, b, geom))
    parts.append(inner)
    if o1 > i1:
        key[a] = slice(i1 * s - plo - lo, (o1 - 1) * s - plo + ext + 1 - lo)
        parts.append(_C.ConvNd.apply(xe[tuple(key)], w, b, geom))
    return parts[0] if len(parts) == 1 else cat(parts, a)


def conv_transpose(input, weight, bias, spec, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                   layout=None):
    """Sharded ``conv_transpose{d}d`` (zero padding, as PyTorch's): this rank's shard of the
    transposed convolution of the whole volume. Mirrors ``torch.nn.functional.conv_transpose{d}d``.

    Math: each rank computes the partial sums of its inputs, covering outputs
    ``[a s - p, (b - 1) s - p + dilation (K - 1) + 1)`` for its input shard ``[a, b)``; overlaps
    are sent to the owners of those outputs and added in (the adjoint of a halo exchange);
    output shards start at ``a s - p + floor(dilation (K - 1) / 2)``; the bias is added once,
    after the sums.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.conv_transpose(am.ones(1, 1, 3), am.ones(1, 1, 2), None, spec, stride=1)
        tensor([[[1., 2., 2., 1.]]])
        >>> dist.destroy_process_group()
    """
    d = spec.ndim
    op = f"sharded conv_transpose{d}d"
    lay = _layout(spec, input, layout, op)
    _C._check_tensors(op, input, weight, bias, d, True)
    stride = int_tuple(stride, d, "stride", op, 1)
    dilation = int_tuple(dilation, d, "dilation", op, 1)
    padding = int_tuple(padding, d, "padding", op, 0)
    output_padding = int_tuple(output_padding, d, "output_padding", op, 0)
    for i in range(d):
        if output_padding[i] >= max(stride[i], dilation[i]):
            raise ValueError(f"{op}: output_padding {output_padding} must be smaller than either stride "
                             f"{stride} or dilation {dilation} in every dimension")
    K = tuple(weight.shape[2:])
    g = spec.group
    y = _C._conv_transpose(op, d, input, replicate(weight, g), None, stride, 0, 0, groups, dilation)
    for i in reversed(range(d)):
        a = 2 + i
        starts, n = lay.starts[a], lay.shape[a]
        s, p, ext = stride[i], padding[i], dilation[i] * (K[i] - 1)
        n_out = (n - 1) * s - 2 * p + ext + output_padding[i] + 1
        if n_out < 1:
            raise RuntimeError(f"{op}: the output size along spatial dim {i} is {n_out} < 1")
        P = len(starts) - 1
        # output o takes inputs i with i s in [o + p - ext, o + p]: give it to the rank holding the
        # middle one, so the overlaps split evenly between the two neighbours
        ostarts = [0] + [min(max(starts[q] * s - p + ext // 2, 0), n_out) for q in range(1, P)] + [n_out]
        what = _axis_name(spec, i, op) + f" (kernel {K[i]}, dilation {dilation[i]}, stride {s}, padding {p})"
        for q in range(P):
            if ostarts[q + 1] <= ostarts[q]:
                raise ValueError(f"{what}: the shard at position {q} gets no outputs (output size {n_out}); use "
                                 "fewer ranks on this axis")
        reach = tuple((starts[q] * s - p, (starts[q + 1] - 1) * s - p + ext + 1) for q in range(P))
        m = spec.mesh_axis_of(a)
        line = spec.line(m) if m is not None else [spec.rank]
        plan = halo_plan(tuple(ostarts), reach, "zeros", lay.pos[a], what)
        if not plan.identity:
            y = HaloScatterAdd.apply(y, Exchange(plan, a, line, g))
    if bias is not None:
        y = y + replicate(bias, g).reshape((1, -1) + (1,) * d)
    return y


# ----------------------------------------------------------------------------- pooling
def max_pool(input, spec, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False,
             layout=None):
    """Sharded ``max_pool{d}d``: halos filled with ``-inf`` outside the domain, then the local
    pool. Mirrors ``torch.nn.functional.max_pool{d}d`` (``return_indices`` is refused: indices
    into a shard are not indices into the volume).

    Math: ``out[i] = max_k x_pad[i * stride + k * dilation]``, as the unsharded op.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.max_pool(am.tensor([[[1.0, 3.0, 2.0, 5.0]]]), spec, 2)
        tensor([[[3., 5.]]])
        >>> dist.destroy_process_group()
    """
    d = spec.ndim
    op = f"sharded max_pool{d}d"
    if return_indices:
        raise ValueError(f"{op}: return_indices=True is not supported on shards (the indices would be local)")
    lay = _layout(spec, input, layout, op)
    k = int_tuple(kernel_size, d, "kernel_size", op, 1)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else int_tuple(stride, d, "stride", op, 1)
    p = int_tuple(padding, d, "padding", op, 0)
    dl = int_tuple(dilation, d, "dilation", op, 1)
    x = input
    for i in range(d):
        if p[i] > k[i] // 2:
            raise RuntimeError(f"{op}: pad should be at most half of kernel size, but got padding {p} and kernel_size {k}")
        a, n = 2 + i, lay.shape[2 + i]
        n_out = _P._pool_out(n, k[i], s[i], p[i], dl[i], ceil_mode)
        pos = np.arange(n_out)[:, None] * s[i] - p[i] + np.arange(k[i])[None, :] * dl[i]
        if n_out < 1 or not ((pos >= 0) & (pos < n)).any(axis=1).all():
            raise RuntimeError(f"{op}: output size {n_out} along spatial dim {i} (global size {n}), or a window lies "
                               f"entirely in the padding (kernel {k}, stride {s}, padding {p}, dilation {dl})")
        what = _axis_name(spec, i, op) + f" (kernel {k[i]}, dilation {dl[i]}, stride {s[i]}, padding {p[i]})"
        _, need = _window_axis(lay.starts[a], p[i], p[i], k[i], s[i], dl[i], n_out, what)
        x = _extend(x, spec, lay, a, need, "zeros", _P._lowest(input.array.dtype), what)
    return _P._max_pool(op, d, x, k, s, 0, dl, False, False)


def avg_pool(input, spec, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None, layout=None):
    """Sharded ``avg_pool{d}d``: halos of zeros outside the domain, local window sums, and
    the divisor of each output computed on the global geometry (PyTorch's rules for
    ``count_include_pad`` and ``ceil_mode``). Mirrors ``torch.nn.functional.avg_pool{d}d``.

    Math: ``out[i] = (1 / D_i) sum_k x_pad[i * stride + k]``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.avg_pool(am.tensor([[[1.0, 3.0, 2.0, 6.0]]]), spec, 2, padding=1, count_include_pad=False)
        tensor([[[1.0000, 2.5000, 6.0000]]])
        >>> dist.destroy_process_group()
    """
    d = spec.ndim
    op = f"sharded avg_pool{d}d"
    lay = _layout(spec, input, layout, op)
    if not input.is_floating_point():
        raise RuntimeError(f"{op}: expected a floating-point input, got {input.dtype}")
    k = int_tuple(kernel_size, d, "kernel_size", op, 1)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else int_tuple(stride, d, "stride", op, 1)
    p = int_tuple(padding, d, "padding", op, 0)
    if divisor_override is not None and int(divisor_override) == 0:
        raise RuntimeError(f"{op}: divisor_override must be non-zero")
    x, div, S = input, None, lay.shape[2:]
    for i in range(d):
        if p[i] > k[i] // 2:
            raise RuntimeError(f"{op}: pad should be at most half of kernel size, but got padding {p} and kernel_size {k}")
        a = 2 + i
        n_out = _P._pool_out(S[i], k[i], s[i], p[i], 1, ceil_mode)
        if n_out < 1:
            raise RuntimeError(f"{op}: output size {n_out} is too small along spatial dim {i} (global size {S[i]})")
        what = _axis_name(spec, i, op) + f" (kernel {k[i]}, stride {s[i]}, padding {p[i]})"
        ostarts, need = _window_axis(lay.starts[a], p[i], p[i], k[i], s[i], 1, n_out, what)
        x = _extend(x, spec, lay, a, need, "zeros", 0.0, what)
        # the unsharded op's divisor (pooling.py), on the global output positions of this shard
        start = np.arange(n_out) * s[i] - p[i]
        end = np.minimum(start + k[i], S[i] + p[i])
        size = end - start
        if not count_include_pad:
            size = np.minimum(end, S[i]) - np.maximum(start, 0)
        me = lay.pos[a]
        v = size[ostarts[me]:ostarts[me + 1]].reshape((-1,) + (1,) * (d - 1 - i)).astype(np.float64)
        div = v if div is None else div * v
    total = _P._avg_pool(op, d, x, k, s, 0, False, True, 1)
    if divisor_override is not None:
        return total * (1.0 / float(divisor_override))
    xp = backend_of(input.array).xp
    return total * Tensor._wrap(xp.asarray((1.0 / div).astype(input.array.dtype)))


# ----------------------------------------------------------------------------- interpolation
class _Shape:
    def __init__(self, shape):
        self.shape = shape


def interpolate(input, spec, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, layout=None):
    """Sharded ``interpolate`` (``"nearest"``, ``"nearest-exact"`` and the linear family):
    ``size`` is the global output size. Mirrors ``torch.nn.functional.interpolate``.

    Math: source positions are computed on the global sizes exactly as the unsharded op does;
    output ``o`` goes to the rank holding its first source index, which fetches the one-wide
    halo its second index may need (edges clamp, as the unsharded op's indices do).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.interpolate(am.tensor([[[1.0, 2.0]]]), spec, scale_factor=2, mode="linear")
        tensor([[[1.0000, 1.2500, 1.7500, 2.0000]]])
        >>> dist.destroy_process_group()
    """
    d = spec.ndim
    op = "sharded interpolate"
    lay = _layout(spec, input, layout, op)
    if mode not in _P._MODES or mode == "area":
        raise ValueError(f"{op}: mode {mode!r} is not supported on shards; expected 'nearest', 'nearest-exact', "
                         "'linear', 'bilinear', 'trilinear', 'quadrilinear' or 'multilinear'")
    if mode in _P._LINEAR_RANK and _P._LINEAR_RANK[mode] != d:
        raise ValueError(f"{op}: mode {mode!r} needs a {_P._LINEAR_RANK[mode] + 2}-d input, got {d + 2}-d")
    linear = mode in _P._LINEAR_RANK or mode == "multilinear"
    if align_corners is not None and not linear:
        raise ValueError(f"{op}: align_corners option can only be set with the interpolating modes (got {mode!r})")
    if linear and not input.is_floating_point():
        raise RuntimeError(f"{op}: linear modes need a floating-point input, got {input.dtype}")
    o, sf = _P._interp_sizes(op, _Shape(lay.shape), size, scale_factor, recompute_scale_factor, d)
    xp = backend_of(input.array).xp
    dtype = input.array.dtype
    out = input
    for i in range(d):
        a, S = 2 + i, lay.shape[2 + i]
        if o[i] == S:
            continue
        if linear:
            i0, i1, lam = _P._linear_taps(S, o[i], sf[i], bool(align_corners), dtype)
        else:
            i0 = i1 = _P._nearest_index(S, o[i], sf[i], mode == "nearest-exact")
        starts = np.asarray(lay.starts[a])
        P = len(starts) - 1
        owner = np.searchsorted(starts, i0, side="right") - 1
        ostarts = [int(np.searchsorted(owner, q, side="left")) for q in range(P)] + [o[i]]
        what = _axis_name(spec, i, op)
        need = []
        for q in range(P):
            o0, o1 = ostarts[q], ostarts[q + 1]
            if o1 <= o0:
                raise ValueError(f"{what}: the shard at position {q} gets no outputs (output size {o[i]})")
            need.append((int(i0[o0:o1].min()), int(i1[o0:o1].max()) + 1))
        out = _extend(out, spec, lay, a, need, "replicate", 0.0, what)
        me = lay.pos[a]
        lo, sel = need[me][0], slice(ostarts[me], ostarts[me + 1])
        first = index_select(out, a, Tensor._wrap(xp.asarray(i0[sel] - lo)))
        if not linear:
            out = first
            continue
        shape = (-1,) + (1,) * (d - 1 - i)
        lam = lam[sel]
        l1 = Tensor._wrap(xp.asarray(lam.astype(dtype).reshape(shape)))
        l0 = Tensor._wrap(xp.asarray((1 - lam).astype(dtype).reshape(shape)))
        out = first * l0 + index_select(out, a, Tensor._wrap(xp.asarray(i1[sel] - lo))) * l1
    return out


# ----------------------------------------------------------------------------- normalization
def _moments(x, dims, count, group):
    """Mean and biased variance over ``dims`` of the whole sharded tensor (two all-reduces:
    no ``E[x^2] - mean^2`` cancellation), as replicated values whose gradients sum the ranks'."""
    from .functional import all_reduce
    mean = x.sum(dims, keepdim=True)
    if group.size() > 1:
        mean = all_reduce(mean, group=group)
    mean = mean / count
    xmu = x - mean
    var = (xmu * xmu).sum(dims, keepdim=True)
    if group.size() > 1:
        var = all_reduce(var, group=group)
    return mean, xmu, var / count


def _affine(y, weight, bias, group):
    shape = (1, -1) + (1,) * (y.ndim - 2)
    if weight is not None:
        y = y * replicate(weight, group).reshape(shape)
    if bias is not None:
        y = y + replicate(bias, group).reshape(shape)
    return y


def batch_norm(input, spec, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, layout=None):
    """Sharded ``batch_norm``: per-channel statistics over the batch and every spatial position
    of the whole volume (and the whole batch of a data-parallel mesh dim).
    Mirrors ``torch.nn.functional.batch_norm``.

    Math: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the global mean and biased
    variance; ``running_var`` gets ``var * M / (M - 1)`` for ``M`` values per channel.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.batch_norm(am.tensor([[[1.0, 3.0]]]), spec, training=True)
        tensor([[[-1.0000,  1.0000]]])
        >>> dist.destroy_process_group()
    """
    op = "sharded batch_norm"
    lay = _layout(spec, input, layout, op)
    g = spec.group
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError(f"{op}: evaluation needs running_mean and running_var")
        from ..ops import normalization as _N
        return _N.batch_norm(input, running_mean, running_var, replicate(weight, g), replicate(bias, g),
                             False, 0.0, eps)
    dims = (0,) + tuple(range(2, input.ndim))
    M = lay.shape[0] * math.prod(lay.shape[2:])
    if M <= 1:
        raise ValueError(f"{op}: Expected more than 1 value per channel when training, got global shape {lay.shape}")
    mean, xmu, var = _moments(input, dims, float(M), g)
    y = _affine(xmu * (var + eps).rsqrt(), weight, bias, g)
    if running_mean is not None:
        from ..autograd.grad_mode import no_grad
        with no_grad():
            rm, rv = running_mean.array, running_var.array
            rm[...] = (1 - momentum) * rm + momentum * mean.array.reshape(-1).astype(rm.dtype)
            rv[...] = (1 - momentum) * rv + momentum * (var.array.reshape(-1) * (M / (M - 1))).astype(rv.dtype)
            running_mean._bump()
            running_var._bump()
    return y


def instance_norm(input, spec, weight=None, bias=None, eps=1e-5, layout=None):
    """Sharded ``instance_norm`` (no running statistics): per-sample, per-channel statistics
    over the whole volume. Mirrors ``torch.nn.functional.instance_norm``.

    Math: ``y[n, c] = (x[n, c] - mean_nc) / sqrt(var_nc + eps) * weight_c + bias_c``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.instance_norm(am.tensor([[[1.0, 3.0]]]), spec)
        tensor([[[-1.0000,  1.0000]]])
        >>> dist.destroy_process_group()
    """
    lay = _layout(spec, input, layout, "sharded instance_norm")
    dims = tuple(range(2, input.ndim))
    _, xmu, var = _moments(input, dims, float(math.prod(lay.shape[2:])), spec.domain_group)
    return _affine(xmu * (var + eps).rsqrt(), weight, bias, spec.group)


def group_norm(input, spec, num_groups, weight=None, bias=None, eps=1e-5, layout=None):
    """Sharded ``group_norm``: per-sample statistics of each channel group over the whole
    volume. Mirrors ``torch.nn.functional.group_norm``.

    Math: channels split into ``num_groups`` groups; ``y = (x - mean_ng) / sqrt(var_ng + eps)``
    then the per-channel affine.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.group_norm(am.tensor([[[1.0, 3.0], [0.0, 10.0]]]), spec, 1).shape
        (1, 2, 2)
        >>> dist.destroy_process_group()
    """
    op = "sharded group_norm"
    lay = _layout(spec, input, layout, op)
    N, C = input.shape[0], input.shape[1]
    if C % num_groups:
        raise ValueError(f"{op}: {C} channels are not divisible by num_groups={num_groups}")
    xg = input.reshape((N, num_groups, C // num_groups) + tuple(input.shape[2:]))
    dims = tuple(range(2, xg.ndim))
    count = float(C // num_groups * math.prod(lay.shape[2:]))
    _, xmu, var = _moments(xg, dims, count, spec.domain_group)
    y = (xmu * (var + eps).rsqrt()).reshape(tuple(input.shape))
    return _affine(y, weight, bias, spec.group)


# ----------------------------------------------------------------------------- reductions, losses
def global_sum(input, spec):
    """Sum of every element of the sharded tensor over the whole volume and batch, the same
    on every rank (``torch.sum`` of the unsharded tensor).

    Math: ``sum_r sum(x_r)``; the gradient of each element is the (replicated) output gradient.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.global_sum(am.ones(1, 1, 4), spec)
        tensor(4.)
        >>> dist.destroy_process_group()
    """
    return reduce_replicated(input.sum(), spec.group)


def global_mean(input, spec, layout=None):
    """Mean of every element of the sharded tensor over the whole volume and batch
    (``torch.mean`` of the unsharded tensor).

    Math: ``sum_r sum(x_r) / numel(global)``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.global_mean(am.arange(4.0).reshape(1, 1, 4), spec)
        tensor(1.5000)
        >>> dist.destroy_process_group()
    """
    lay = _layout(spec, input, layout, "global_mean")
    return global_sum(input, spec) / float(math.prod(lay.shape))


_ELEMENTWISE_LOSSES = ("L1Loss", "MSELoss", "HuberLoss", "SmoothL1Loss", "BCELoss", "BCEWithLogitsLoss")
_CLASS_LOSSES = ("CrossEntropyLoss", "NLLLoss")


def sharded_loss(criterion, input, target, spec):
    """A loss module applied to sharded ``input``/``target`` giving the loss of the whole
    volume (the same on every rank), e.g. ``sharded_loss(nn.MSELoss(), out, y, spec)``.

    Supported: ``L1Loss``, ``MSELoss``, ``HuberLoss``, ``SmoothL1Loss``, ``BCELoss``,
    ``BCEWithLogitsLoss`` (without ``weight``/``pos_weight``), ``CrossEntropyLoss`` and
    ``NLLLoss`` with class-index targets and no class ``weight``; reductions ``"mean"``,
    ``"sum"`` and ``"none"`` (then the shard of the elementwise loss). Mirrors the module's
    PyTorch name.

    Math: ``mean = sum_r sum(l_r) / sum_r count_r`` (count: elements, or targets other than
    ``ignore_index``); backward gives each element ``1 / count`` of the replicated gradient.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed import domain_ops
        >>> dist.init_process_group()
        >>> spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        >>> domain_ops.sharded_loss(am.nn.MSELoss(), am.ones(1, 1, 4), am.zeros(1, 1, 4), spec)
        tensor(1.)
        >>> dist.destroy_process_group()
    """
    import copy
    name = type(criterion).__name__
    if name not in _ELEMENTWISE_LOSSES + _CLASS_LOSSES:
        raise ValueError(f"sharded_loss: {name} is not supported on shards; supported: "
                         f"{', '.join(_ELEMENTWISE_LOSSES + _CLASS_LOSSES)}")
    for attr in ("weight", "pos_weight"):
        if getattr(criterion, attr, None) is not None:
            raise ValueError(f"sharded_loss: {name} with a {attr} tensor is not supported on shards")
    reduction = criterion.reduction
    local = copy.copy(criterion)
    object.__setattr__(local, "reduction", "none")
    per = local(input, target)
    if reduction == "none":
        return per
    total = reduce_replicated(per.sum(), spec.group)
    if reduction == "sum":
        return total
    if name in _CLASS_LOSSES and not target.is_floating_point():
        xp = backend_of(target.array).xp
        count = float(xp.count_nonzero(target.array != criterion.ignore_index))
    else:
        count = float(per.numel())
    count = transport_xp(spec.group).asarray([count])
    spec.group.allreduce(count, ReduceOp.SUM, name="sharded_loss count").wait()
    return total / float(to_host(count)[0])
