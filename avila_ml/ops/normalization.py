"""Normalization: batch, layer, group and instance norm (``torch.nn.functional``'s ``*_norm``).

All four standardise ``x`` over some axes and apply an affine map. That is one op,
:class:`Normalize`, with the closed-form backward (PyTorch's ``native_batch_norm_backward``):

    xhat = (x - mean) * rstd,   rstd = 1 / sqrt(var + eps)   (biased var over M values)
    y    = xhat * weight + bias
    dx   = rstd * (gxh - mean(gxh) - xhat * mean(gxh * xhat)),   gxh = g * weight

so a norm layer is one graph node instead of the nine of a composite mean / var / rsqrt /
affine expression. Reductions of products use ``einsum`` (no full-size temporary): the fused
op allocates two full-size arrays in the forward and two in the backward. On the CPU it ran
1.5-3x faster than the composite, forward + backward in float32 (batch norm (32, 16, 32, 32),
(8, 8, 8, 8, 8, 8); layer norm (256, 512), (4096, 64)); ``benchmarks/bench_mlp.py`` times
it against PyTorch.

Where the weight is constant over each normalised group (batch and instance norm, or no
weight) the backward is ``dx = A g + B xhat + C`` with per-group coefficients: four passes
instead of seven, and for batch norm the weight and bias gradients are the same two sums
(about 0.8x the former time in float32). Layer norm of float32/float64 CPU arrays runs through
the compiled row kernels (``cpu_accel/kernels/layernorm.c``, ``_LayerNormRows``) where they are
built: forward with the statistics in one call, all three gradients in another; float32 rows
shorter than ``_NATIVE_MIN_ROW`` values from ``_ONEDNN_MIN_SIZE`` elements go through oneDNN
(``avila_ml.cpu_accel``) instead when it is installed and ``am.backends.mkldnn.enabled``
(faster there), as do all float32 ones from that size without the kernels (0.5-0.7x the NumPy
time); double backward keeps the Tensor-op formula. oneDNN's batch normalization on plain NCHW arrays was slower than NumPy (see
``_onednn_layer_forward``); batch norm of NumPy arrays from ``_CENTRED_MIN`` elements instead
keeps ``x - mean`` and runs the statistics with the affine map, and the two sums with dx, as one
pass each over channel slices, the per-channel coefficients spread over the positions
(``_centred_batch_forward``, ``Normalize._backward_centred``).

Which axes are reduced is all that tells the norms apart, for ``x`` of shape (N, C, *spatial):
batch norm over (N, *spatial) per channel, instance norm over *spatial per (sample, channel),
group norm over (C/G, *spatial) per (sample, group), layer norm over the trailing
``normalized_shape`` dims. Any number of spatial dims works, so (N, C, t, x, y, z) volumes
normalise like images.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from ..dtypes import host_compute_dtype
from ..amp.autocast_mode import autocast_op
from ..autograd.grad_mode import no_grad, _state
from ..backends import backend_of
from ..tensor import Tensor
from .elementwise import rsqrt, sum_to
from .reduction import Sum
from .shape import reshape

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"]


class Normalize(Function):
    """Standardise over ``axes`` and apply the affine map: returns ``(y, mean, var)``.

    y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps); ``weight`` and
    ``bias`` (optional) are already shaped to broadcast against ``x``. ``mean`` and ``var``
    (biased, keepdim shape) are returned, not differentiable, for the running statistics.

    Backward (closed form, ``native_batch_norm_backward``), with gxh = g * weight:
        dx = rstd * (gxh - mean(gxh) - xhat * mean(gxh * xhat)),
        dweight = sum(g * xhat), dbias = sum(g)  (over the broadcast dims).
    The plain backward runs on raw arrays with two full-size temporaries; under
    ``create_graph`` the same formula is written with Tensor ops and xhat, rstd recomputed
    from ``x``, so second derivatives are exact (double backward). The op behind every norm
    here (PyTorch's ``torch.native_batch_norm`` / ``torch.native_layer_norm``).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.normalization import Normalize
        >>> y, mean, var = Normalize.apply(am.tensor([[1.0, 3.0]]), None, None, (1,), 0.0)
        >>> y, mean, var
        (tensor([[-1.,  1.]]), tensor([[2.]]), tensor([[1.]]))
    """

    non_differentiable = (1, 2)

    def forward(self, x, weight, bias, axes, eps):
        xp = backend_of(x).xp
        self.axes, self.eps = axes, eps
        self.out_dtype = x.dtype
        self.onednn = self.xc = self.bn = None
        out = _onednn_layer_forward(self, x, weight, bias, axes, eps)
        if out is None:
            out = _centred_batch_forward(self, x, weight, bias, axes, eps)
        if out is not None:
            return out
        if x.dtype == np.float16:
            # as PyTorch, half inputs are normalised in float32 (the variance of values of a
            # few hundred already overflows float16) and only the result is rounded to half
            x = x.astype(np.float32)
            weight = None if weight is None else weight.astype(np.float32)
            bias = None if bias is None else bias.astype(np.float32)
        self.count = m = math.prod(x.shape[a] for a in axes)
        inv_m = x.dtype.type(1.0 / m) if m else x.dtype.type(math.nan)
        self.has_weight, self.has_bias = weight is not None, bias is not None
        mean, var, rstd, xhat = _standardize(x, axes, inv_m, eps, xp)
        self.rstd = rstd
        if weight is not None:
            y = xhat * weight
            if bias is not None:
                y += bias
        elif bias is not None:
            y = xhat + bias
        else:
            y, xhat = xhat, None
            if self.out_dtype == x.dtype:
                self.save_outputs(0)  # y is xhat: version-checked, so an in-place edit of y is caught
            else:
                xhat = y  # the float32 xhat, kept for the backward; y is rounded below
        self.xhat = xhat
        self.save_inputs(*range(1 + self.has_weight + self.has_bias))
        if y.dtype != self.out_dtype:
            y = y.astype(self.out_dtype)
        return y, mean, var

    def release(self) -> None:
        """Drop the saved tensors and the centred path's ``x - mean`` (as large as x)."""
        super().release()
        self.xc = self.xhat = self.bn = None

    def backward(self, g, _g_mean, _g_var):
        saved = self.saved_inputs  # version-checked: x, [weight], [bias]
        needs = self.needs_input_grad
        w = saved[1] if self.has_weight else None
        b_shape = saved[-1].shape if self.has_bias else None
        need_x, need_w = needs[0], self.has_weight and needs[1]
        need_b = self.has_bias and needs[-1]
        if _state.enabled:
            return self._backward_graph(g, saved[0], w, b_shape, need_x, need_w, need_b)
        if self.onednn is not None:
            return self._backward_onednn(g, saved, need_x, need_w, need_b)
        if self.bn is not None:
            return self._backward_native_bn(g.array, w, b_shape, len(saved), need_x, need_w, need_b)
        if self.xc is not None:
            return self._backward_centred(g.array, w, b_shape, len(saved), need_x, need_w, need_b)
        ga, axes = g.array, self.axes
        xhat = self.xhat if self.xhat is not None else self.saved_outputs[0].array
        xp = backend_of(ga).xp
        if ga.dtype != xhat.dtype:  # half: the backward runs in float32 too
            ga = ga.astype(xhat.dtype)
        out = [None] * len(saved)
        if need_x and (w is None or _constant_over(w.shape, axes)):
            return self._backward_per_group(ga, xhat, w, b_shape, out, need_w, need_b, xp)
        if need_x:
            dx = _input_grad(ga * w.array if w is not None else ga, xhat, self.rstd, self.count, axes, xp)
            out[0] = Tensor._wrap(dx.astype(self.out_dtype, copy=False))
        if need_w:
            wa = w.array
            dw = _sum_prod(ga, xhat, _broadcast_axes(wa.shape, ga.shape), xp).reshape(wa.shape)
            out[1] = Tensor._wrap(dw.astype(self.out_dtype, copy=False))
        if need_b:
            db = _sum(ga, _broadcast_axes(b_shape, ga.shape)).reshape(b_shape)
            out[-1] = Tensor._wrap(db.astype(self.out_dtype, copy=False))
        return tuple(out) if len(out) > 1 else out[0]

    def _backward_per_group(self, ga, xhat, w, b_shape, out, need_w, need_b, xp):
        """The input gradient when ``weight`` is constant over each normalised group (batch,
        instance norm; no weight): with ``sg = sum(g)``, ``sgx = sum(g * xhat)`` per group,

            dx = A g + B xhat + C,   A = rstd w,  B = -A sgx / M,  C = -A sg / M,

        four passes over the data instead of seven, and no ``g * w`` temporary; when the
        affine dims are the groups themselves (batch norm), ``dweight = sgx`` and
        ``dbias = sg`` come for free."""
        axes, dt = self.axes, ga.dtype
        inv_m = dt.type(1.0 / self.count) if self.count else dt.type(0)  # empty: no terms
        a = self.rstd if w is None else self.rstd * w.array.astype(dt, copy=False)
        sg = _sum(ga, axes)
        sgx = _sum_prod(ga, xhat, axes, xp)
        dx = ga * a
        bx = xhat * (a * sgx * -inv_m)
        dx += bx
        del bx
        dx += a * sg * -inv_m
        out[0] = Tensor._wrap(dx.astype(self.out_dtype, copy=False))
        for i, need, shape, full in ((1, need_w, None if w is None else w.shape, sgx), (-1, need_b, b_shape, sg)):
            if not need:
                continue
            red = _broadcast_axes(shape, ga.shape)
            if set(red) == set(axes):  # the affine dims are the groups: the sums are those above
                r = full.reshape(shape)
            elif i == 1:
                r = _sum_prod(ga, xhat, red, xp).reshape(shape)
            else:
                r = _sum(ga, red).reshape(shape)
            out[i] = Tensor._wrap(r.astype(self.out_dtype, copy=False))
        return tuple(out) if len(out) > 1 else out[0]

    def _backward_onednn(self, g, saved, need_x, need_w, need_b):
        """The gradients from oneDNN's layer-norm backward (it reads ``x``, the statistics and
        the scale; one pass for ``dx``, ``dweight`` and ``dbias`` together)."""
        plan, mean, var = self.onednn
        x = saved[0].array
        ga = np.ascontiguousarray(g.array, dtype=np.float32)
        w = saved[1].array.reshape(-1) if self.has_weight else None
        b = saved[-1].array.reshape(-1) if self.has_bias else None
        rows = plan.x.shape
        dx, dw, db = plan.backward(np.ascontiguousarray(x).reshape(rows), ga.reshape(rows), mean, var, w, b)
        out = [Tensor._wrap(dx.reshape(x.shape)) if need_x else None]
        if self.has_weight:
            out.append(Tensor._wrap(dw.reshape(saved[1].shape)) if need_w else None)
        if self.has_bias:
            out.append(Tensor._wrap(db.reshape(saved[-1].shape)) if need_b else None)
        return tuple(out) if len(out) > 1 else out[0]

    def _backward_centred(self, ga, w, b_shape, n_out, need_x, need_w, need_b):
        """The batch-norm gradients from the centred input ``xc = x - mean`` kept by
        :func:`_centred_batch_forward`: per channel ``sg = sum(g)``, ``sgx = rstd sum(g xc)``
        (= sum(g xhat)), then ``dx = A (g - xc k1 - k2)`` with ``A = rstd w``,
        ``k1 = rstd sgx / M``, ``k2 = sg / M`` (the per-group formula of
        ``_backward_per_group``), sums and dx in one pass over channel slices
        (:func:`_centred_backward_parts`); ``dweight = sgx``, ``dbias = sg``."""
        xc, rstd = self.xc, self.rstd
        g3 = np.ascontiguousarray(ga, dtype=xc.dtype).reshape(xc.shape)
        a = rstd if w is None else rstd * w.array.reshape(rstd.shape).astype(rstd.dtype, copy=False)
        sg, sgx, dx = _centred_backward_parts(g3, xc, rstd, a, xc.dtype.type(1.0 / self.count), need_x)
        return self._channel_grads(dx, sgx, sg, ga.shape, w, b_shape, n_out, need_x, need_w, need_b)

    def _channel_grads(self, dx, sgx, sg, g_shape, w, b_shape, n_out, need_x, need_w, need_b):
        """The backward's outputs from the input gradient ``dx`` and the per-channel sums
        ``sgx`` (weight gradient) and ``sg`` (bias gradient), in the output dtype (float16 /
        bfloat16 ran in float32)."""
        out, dt = [None] * n_out, self.out_dtype
        if need_x:
            out[0] = Tensor._wrap(dx.reshape(g_shape).astype(dt, copy=False))
        if need_w:
            out[1] = Tensor._wrap(sgx.reshape(w.shape).astype(dt, copy=False))
        if need_b:
            out[-1] = Tensor._wrap(sg.reshape(b_shape).astype(dt, copy=False))
        return tuple(out) if len(out) > 1 else out[0]

    def _backward_native_bn(self, ga, w, b_shape, n_out, need_x, need_w, need_b):
        """The batch-norm gradients by the compiled kernel (``cpu_accel/_native_batchnorm.py``)
        from the forward's input and per-channel ``mean`` and ``rstd`` (``self.bn``); where the
        kernels were switched off since the forward, the NumPy passes of
        :meth:`_backward_centred` on a recomputed ``x - mean``."""
        from ..cpu_accel import _native_batchnorm
        x3, mean, rstd = self.bn
        g3 = np.ascontiguousarray(ga, dtype=x3.dtype).reshape(x3.shape)
        wa = None if w is None else w.array
        res = _native_batchnorm.backward(g3, x3, mean, rstd, wa, need_x)
        if res is None:
            self.xc = x3 - mean.reshape(1, -1, 1)
            self.rstd = rstd.reshape(1, -1, 1)
            return self._backward_centred(ga, w, b_shape, n_out, need_x, need_w, need_b)
        dx, sgx, sg = res
        return self._channel_grads(dx, sgx, sg, ga.shape, w, b_shape, n_out, need_x, need_w, need_b)

    def _backward_graph(self, g, x, w, b_shape, need_x, need_w, need_b):
        """The same backward with differentiable Tensor ops (for ``create_graph=True``)."""
        axes, m, eps = self.axes, max(self.count, 1), self.eps  # m = 0 only for an empty input (no terms)
        if x.dtype == _dt.float16:  # in float32, as the forward; grads rounded to half
            half = lambda t: None if t is None else t.to(_dt.float32)  # noqa: E731
            outs = self._backward_graph(half(g), half(x), half(w), b_shape, need_x, need_w, need_b)
            outs = outs if isinstance(outs, tuple) else (outs,)
            outs = tuple(None if o is None else o.to(_dt.float16) for o in outs)
            return outs if len(outs) > 1 else outs[0]
        xc = x - Sum.apply(x, axes, True) / m
        rstd = rsqrt(Sum.apply(xc * xc, axes, True) / m + eps)
        xhat = xc * rstd
        out = []
        if need_x:
            gxh = g * w if w is not None else g
            mean_g = Sum.apply(gxh, axes, True) / m
            mean_gx = Sum.apply(gxh * xhat, axes, True) / m
            out.append((gxh - mean_g - xhat * mean_gx) * rstd)
        else:
            out.append(None)
        if w is not None:
            out.append(sum_to(g * xhat, w.shape) if need_w else None)
        if b_shape is not None:
            out.append(sum_to(g, b_shape) if need_b else None)
        return tuple(out) if len(out) > 1 else out[0]


# Layer norm through oneDNN (avila_ml.cpu_accel) from this many elements on: below it the ctypes
# calls (about 150 us per forward + backward) cost more than the NumPy passes they replace;
# measured break-even about (128, 256)
_ONEDNN_MIN_SIZE = 32768


def _onednn_layer_forward(fn, x, weight, bias, axes, eps):
    """oneDNN's layer normalization for a float32 NumPy ``x`` normalised over its trailing dims
    (weight and bias, if any, over the same dims): ``(y, mean, var)`` with the plan and the
    statistics kept on ``fn`` for the backward; None where it does not apply (another dtype or
    device, other axes, ``am.backends.mkldnn.enabled = False``, oneDNN absent or refusing).

    Measured in-process, alternating, on a loaded 2-core machine (one thread each): the whole
    ``layer_norm`` forward + backward (256, 512) 0.50 ms vs 0.75 ms on NumPy, (4096, 64) 0.71
    vs 1.53 ms, (32, 96, 128) 0.88 vs 1.87 ms; (64, 64) 0.34 vs 0.27 ms (hence the size floor).
    oneDNN's batch normalization on plain NCHW arrays (its ``ncsp_bnorm``) was slower than
    NumPy on (32, 16, 32, 32) and (32, 128, 8, 8): batch norm stays on NumPy."""
    from ..backends import mkldnn
    if (not mkldnn.enabled or x.dtype != np.float32 or x.size < _ONEDNN_MIN_SIZE
            or backend_of(x).name != "numpy"):
        return None
    k = len(axes)
    lead = x.ndim - k
    if k == 0 or tuple(axes) != tuple(range(lead, x.ndim)):
        return None
    trailing = (1,) * lead + x.shape[lead:]
    for a in (weight, bias):
        if a is not None and (a.shape != trailing or a.dtype != np.float32):
            return None
    from ..cpu_accel import _dnnl, _norm
    if not _dnnl.available():
        _dnnl.note_absent()
        return None
    rows = (math.prod(x.shape[:lead]), math.prod(x.shape[lead:]))
    try:
        plan = _norm.plan("layer", rows, eps, weight is not None, bias is not None)
        w = None if weight is None else np.ascontiguousarray(weight).reshape(-1)
        b = None if bias is None else np.ascontiguousarray(bias).reshape(-1)
        y, mean, var = plan.forward(np.ascontiguousarray(x).reshape(rows), w, b)
    except _dnnl.DnnlError as exc:  # a configuration this build refuses: NumPy, announced once
        if not _refused:
            _refused.append(str(exc))
            warnings.warn(f"layer_norm: oneDNN refused ({exc}); running the NumPy path instead", stacklevel=4)
        return None
    fn.onednn = (plan, mean, var)
    fn.count = rows[1]
    fn.has_weight, fn.has_bias = weight is not None, bias is not None
    fn.xhat = None
    fn.save_inputs(*range(1 + fn.has_weight + fn.has_bias))
    stat = x.shape[:lead] + (1,) * k
    return y.reshape(x.shape), mean.reshape(stat), var.reshape(stat)


_refused: list = []


class _LayerNormRows(Normalize):
    """Layer norm of a float32/float64 host ``x`` over its trailing dims, seen as (rows, D), with
    ``weight``/``bias`` in their own shape (``normalized_shape``): returns ``y`` only. Through
    the compiled row kernels when :func:`_layer_rows_route` chose them (``plan`` is
    ``_NATIVE``), the oneDNN plan ``plan`` when it found one, else NumPy passes (the general
    path's helpers on the (rows, D) view: bitwise its results). The general path (``Normalize``
    on weight and bias reshaped to broadcast) records two Reshape nodes and three outputs per
    call; at the GPT's shapes that bookkeeping cost about as much as oneDNN's two kernels.
    Backward: the compiled kernel's, oneDNN's or the NumPy formula of ``Normalize``; under
    ``create_graph`` ``Normalize``'s differentiable one."""

    non_differentiable = ()

    def forward(self, x, weight, bias, plan, k, eps):
        self.axes, self.eps, self.out_dtype = tuple(range(x.ndim - k, x.ndim)), eps, x.dtype
        self.xc = self.xhat = self.onednn = self.native = None
        lead = x.ndim - k
        rows = (math.prod(x.shape[:lead]), math.prod(x.shape[lead:]))
        self.count = rows[1]
        self.has_weight, self.has_bias = weight is not None, bias is not None
        w = None if weight is None else np.ascontiguousarray(weight).reshape(-1)
        b = None if bias is None else np.ascontiguousarray(bias).reshape(-1)
        x2 = np.ascontiguousarray(x).reshape(rows)
        out = None
        if plan is _NATIVE:
            from ..cpu_accel import _native_norm
            out = _native_norm.layer_norm_forward(x2, w, b, eps)
        if out is not None:  # (the kernels keep mean, rstd and mean_lo, (rows,), for their backward)
            y, mean, rstd, mean_lo = out
            self.native = (mean, rstd, mean_lo)
        elif plan is not None and plan is not _NATIVE:
            y, mean, var = plan.forward(x2, w, b)
            self.onednn = (plan, mean, var)
        else:
            inv_m = x.dtype.type(1.0 / rows[1]) if rows[1] else x.dtype.type(math.nan)
            _, _, self.rstd, self.xhat = _standardize(x2, (1,), inv_m, eps, np)
            y = self.xhat * w if w is not None else self.xhat.copy()  # (y must not be xhat itself)
            if b is not None:
                y += b
        self.save_inputs(*range(1 + self.has_weight + self.has_bias))
        return y.reshape(x.shape)

    @classmethod
    def _name(cls) -> str:
        return "NormalizeBackward0"  # the node the general path records for the same op

    def backward(self, g):
        if _state.enabled or self.onednn is not None:
            return super().backward(g, None, None)
        saved = self.saved_inputs  # version-checked: x, [weight], [bias]
        needs = self.needs_input_grad
        out = [None] * len(saved)
        if self.native is not None:
            return self._backward_native(g, saved, needs, out)
        xhat, rows = self.xhat, self.xhat.shape
        w = saved[1].array.reshape(-1) if self.has_weight else None
        return self._numpy_grads(g.array.reshape(rows), xhat, self.rstd, w, saved, needs, out)

    def _numpy_grads(self, ga, xhat, rstd, w, saved, needs, out):
        """Normalize.backward's NumPy formula on the (rows, D) views ``ga`` and ``xhat`` (``w``
        the flat weight or None): dx, dweight, dbias into ``out`` as asked."""
        if needs[0]:
            dx = _input_grad(ga * w if w is not None else ga, xhat, rstd, self.count, (1,), np)
            out[0] = Tensor._wrap(dx.reshape(saved[0].shape))
        if self.has_weight and needs[1]:
            out[1] = Tensor._wrap(_sum_prod(ga, xhat, (0,), np).reshape(saved[1].shape))
        if self.has_bias and needs[-1]:
            out[-1] = Tensor._wrap(_sum(ga, (0,)).reshape(saved[-1].shape))
        return tuple(out) if len(out) > 1 else out[0]

    def _backward_native(self, g, saved, needs, out):
        """dx, dweight, dbias from the compiled kernel: two passes over each row of ``g`` and
        ``x`` (x - mean recomputed from the saved statistics, as PyTorch's kernel does)."""
        from ..cpu_accel import _native_norm
        mean, rstd, mean_lo = self.native
        x = saved[0].array
        rows = (mean.shape[0], self.count)
        x2 = np.ascontiguousarray(x).reshape(rows)
        ga = np.ascontiguousarray(g.array, dtype=x.dtype).reshape(rows)
        w = np.ascontiguousarray(saved[1].array).reshape(-1) if self.has_weight else None
        grads = _native_norm.layer_norm_backward(ga, x2, mean, rstd, w, needs[0], self.has_weight and needs[1],
                                                 self.has_bias and needs[-1], mean_lo)
        if grads is None:  # the kernels were switched off between forward and backward
            return self._backward_numpy_from_stats(ga, x2, w, saved, needs, out)
        dx, dw, db = grads
        if dx is not None:
            out[0] = Tensor._wrap(dx.reshape(x.shape))
        if dw is not None:
            out[1] = Tensor._wrap(dw.reshape(saved[1].shape))
        if db is not None:
            out[-1] = Tensor._wrap(db.reshape(saved[-1].shape))
        return tuple(out) if len(out) > 1 else out[0]

    def _backward_numpy_from_stats(self, ga, x2, w, saved, needs, out):
        """The NumPy formula from the kernel's saved mean and rstd (rows,)."""
        mean, rstd, mean_lo = (a[:, None] for a in self.native)
        xhat = (x2 - mean) - mean_lo
        xhat *= rstd
        return self._numpy_grads(ga, xhat, rstd, w, saved, needs, out)

    def release(self) -> None:
        super().release()
        self.onednn = self.native = None


# plan value of _layer_rows_route: the compiled row kernels (cpu_accel/kernels/layernorm.c)
_NATIVE = "native"
# float32 rows shorter than this go through oneDNN's layer-norm primitive when it is installed
# (from _ONEDNN_MIN_SIZE elements), longer ones through the compiled kernels. In-process A/B,
# alternating, min of 30, 2 threads, loaded 2-core AMD EPYC (2026-12-07), forward / backward
# in us, oneDNN vs compiled: (4096, 64) 99/129 vs 145/162, (2048, 128) 85/126 vs 107/139;
# (128, 256) 36/58 vs 39/53; (256, 512) 51/92 vs 54/95; (32, 768) 34/62 vs 33/48.
_NATIVE_MIN_ROW = 256


def _layer_rows_route(input, weight, bias, k, eps):
    """``(lean, plan)``: whether :class:`_LayerNormRows` applies (a float32/float64 host input
    of one dtype with its parameters, outside autocast) and how it runs: ``_NATIVE`` (the
    compiled kernels), a oneDNN plan (the conditions of :func:`_onednn_layer_forward`, for
    float32 rows shorter than ``_NATIVE_MIN_ROW``, or all rows without the compiled kernels) or
    None (NumPy)."""
    from ..backends import mkldnn
    x = input.array
    if type(x) is not np.ndarray or x.dtype.type not in (np.float32, np.float64) or _state.autocast is not None:
        return False, None
    for t in (weight, bias):
        if t is not None and (type(t.array) is not np.ndarray or t.array.dtype != x.dtype):
            return False, None
    from ..cpu_accel import _native
    lead = x.ndim - k
    rows = (math.prod(x.shape[:lead]), math.prod(x.shape[lead:]))
    native = x.size > 0 and _native.available()
    plan = None
    if (mkldnn.enabled and x.dtype == np.float32 and x.size >= _ONEDNN_MIN_SIZE
            and not (native and rows[1] >= _NATIVE_MIN_ROW)):
        from ..cpu_accel import _dnnl, _norm
        if not _dnnl.available():
            _dnnl.note_absent()  # (once per process, as the general path does)
        else:
            try:
                plan = _norm.plan("layer", rows, eps, weight is not None, bias is not None)
            except _dnnl.DnnlError:  # refused: the general path says so (once) and runs NumPy
                return False, None
    if plan is None and native:
        return True, _NATIVE
    return (plan is not None or weight is not None), plan


# Batch norm of NumPy arrays of at least _CENTRED_MIN elements (float32 / float64; float16 /
# bfloat16 computed in float32) keeps
# ``xc = x - mean`` and runs every pass with the per-channel coefficients spread over the
# spatial positions ((1, C, S) arrays, ``_spread``): NumPy then sees rows of C*S contiguous
# elements instead of a broadcast along S, which matters most for few positions (S = 16: a
# (1, C, 1) broadcast multiply ran at half the speed). The forward (statistics and affine map)
# and the backward (both sums and dx) are one function each over channel slices, on the CPU
# threads for large arrays. They replace oneDNN per-channel binary chains, which measured slower
# than these NumPy passes on every batch-norm shape of the benchmark programs (dx, one thread:
# (32, 256, 4, 4) 0.40 vs 0.11 ms, (32, 32, 32, 32) 0.74 vs 0.55 ms), and the separate threaded
# engine the non-float32 dtypes had. In-process A/B, one thread, loaded 2-core EPYC, min of 30,
# forward + backward with weight and bias, chains -> this: (32, 256, 4, 4) 1.26 -> 0.64 ms,
# (32, 128, 8, 8) 1.07 -> 0.79, (32, 64, 16, 16) 1.6 -> 1.3, (32, 32, 32, 32) 3.4 -> 3.2-3.4.
# Keeping ``xc`` (not recomputing x - mean in the backward) and whole passes (not cache-sized
# sample blocks: 10-40% slower with NumPy's per-call cost) were both measured.
_CENTRED_MIN = 1 << 16
# The compiled kernel (cpu_accel/_native_batchnorm.py) sums a channel row by row, a call per row
# of S positions: from S = 32 on it beats the NumPy passes, below it loses. Quiet AMD EPYC, 2
# threads, fwd+bwd with weight and bias, NumPy vs kernel (min of 40): (32, 32, 32, 32) 2.22 vs
# 1.52 ms, (32, 16, 32, 32) 1.19 vs 0.90, (32, 128, 8, 8) 0.74 vs 0.65, (32, 256, 4, 4) 0.59 vs
# 0.61, (32, 512, 4) 0.48 vs 0.51; (512, 256) (S = 1) 0.59 (the general path) vs 1.75 ms.
_NATIVE_MIN_S = 32
_CENTRED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _centred_batch_forward(fn, x, weight, bias, axes, eps):
    """Batch norm (statistics over every dim but 1) of a floating NumPy ``x`` of at least
    ``_CENTRED_MIN`` elements (float16 / bfloat16 computed in float32): ``(y, mean, var)``,
    with ``xc = x - mean`` (as (N, C, S)) and ``rstd`` kept on ``fn`` for
    :meth:`Normalize._backward_centred`; None where it does not apply (the general paths then run).

    Per channel, with M = N S values: ``mean = sum(x) / M``, ``xc = x - mean``,
    ``var = sum(xc^2) / M`` (two passes, as PyTorch), ``y = xc (rstd w) + b``."""
    if (not isinstance(x, np.ndarray) or x.size < _CENTRED_MIN
            or (host_compute_dtype(x) or x.dtype) not in _CENTRED_DTYPES
            or not _batch_norm_pattern(x, axes, weight, bias, min_ndim=2)
            or any(t is not None and t.dtype != x.dtype for t in (weight, bias))):
        return None
    from . import _cpu_threads
    dt = host_compute_dtype(x)
    if dt is not None:  # float16 / bfloat16: computed in float32 (as PyTorch), y rounded at the end
        x, weight, bias = (None if t is None else t.astype(dt) for t in (x, weight, bias))
    dt = x.dtype
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    s = x3.shape[2]
    fn.count = n * s
    kshape = (1, c) + (1,) * (x.ndim - 2)
    fn.has_weight, fn.has_bias = weight is not None, bias is not None
    if dt == fn.out_dtype and s >= _NATIVE_MIN_S:  # (not float16 / bfloat16, which ran in float32 above)
        # the compiled kernel (float32 / float64 input): statistics and y in one call, and the
        # backward from x itself (no full-size x - mean kept)
        from ..cpu_accel import _native_batchnorm
        res = _native_batchnorm.forward(x3, weight, bias, eps)
        if res is not None:
            y3, mean, var, rstd = res
            fn.bn, fn.xc, fn.rstd, fn.xhat = (x3, mean, rstd), None, None, None
            fn.save_inputs(*range(1 + fn.has_weight + fn.has_bias))
            return y3.reshape(x.shape), mean.reshape(kshape), var.reshape(kshape)
    if x.ndim < 3:  # (N, C): the kernel only; the NumPy passes are written for positions
        return None
    inv_m = dt.type(1.0 / fn.count)
    mean, var, rstd = (np.empty((1, c, 1), dt) for _ in range(3))
    xc, y = np.empty(x3.shape, dt), np.empty(x3.shape, dt)
    w = None if weight is None else weight.reshape(1, c, 1)
    b = None if bias is None else bias.reshape(1, c, 1)

    def part(cs):
        xs, d, ys = x3[:, cs], xc[:, cs], y[:, cs]
        mu = _channel_sum(xs)
        mu *= inv_m
        np.subtract(xs, _spread(mu, s), out=d)
        v = _channel_dot(d, d)
        v *= inv_m
        r = _rstd(v, eps, np)
        mean[:, cs], var[:, cs], rstd[:, cs] = mu, v, r
        np.multiply(d, _spread(r if w is None else r * w[:, cs], s), out=ys)
        if b is not None:
            ys += _spread(b[:, cs], s)
    _cpu_threads.over_batch(part, c, x3.size, _CHANNEL_SPLIT_MIN)
    fn.xc, fn.rstd, fn.xhat = xc, rstd, None
    fn.save_inputs(*range(1 + fn.has_weight + fn.has_bias))
    return y.reshape(x.shape).astype(fn.out_dtype, copy=False), mean.reshape(kshape), var.reshape(kshape)


def _spread(k, s):
    """A per-channel (1, C, 1) coefficient repeated over ``s`` positions, (1, C, s) contiguous:
    broadcast against (N, C, s) the inner loop then runs over C*s elements (1/N of a pass)."""
    return np.repeat(k, s, axis=2) if s > 1 else k


def _centred_backward_parts(g3, xc, rstd, a, inv_m, need_x):
    """``sg = sum(g)``, ``sgx = rstd sum(g xc)`` per channel and, if ``need_x``,
    ``dx = a (g - xc rstd sgx / M - sg / M)``, in one pass over channel slices (on the CPU
    threads for large arrays); ``a`` is ``rstd * weight`` (1, C, 1)."""
    from . import _cpu_threads
    n, c, s = xc.shape
    sg, sgx = np.empty((1, c, 1), xc.dtype), np.empty((1, c, 1), xc.dtype)
    dx = np.empty(xc.shape, xc.dtype) if need_x else None

    def part(cs):
        g, d = g3[:, cs], xc[:, cs]
        s1 = _channel_sum(g)
        s2 = _channel_dot(g, d)
        s2 *= rstd[:, cs]
        sg[:, cs], sgx[:, cs] = s1, s2
        if dx is None:
            return
        out = dx[:, cs]  # four in-place NumPy passes, no temporary
        np.multiply(d, _spread(rstd[:, cs] * s2 * inv_m, s), out=out)
        out += _spread(s1 * inv_m, s)
        np.subtract(g, out, out=out)
        out *= _spread(a[:, cs], s)
    _cpu_threads.over_batch(part, c, xc.size, _CHANNEL_SPLIT_MIN)
    return sg, sgx, dx


# Per-channel reductions of (N, C, S) float32 arrays. ``einsum`` sums 2.5-4x faster than ``sum``
# over axes (0, 2) (0.074 vs 0.22 ms on (32, 32, 1024), 0.043 vs 0.18 on (32, 256, 16)); the sum
# of products as N*C dot products (``matmul`` of (.., 1, S) by (.., S, 1), NumPy's BLAS dot) is
# 1.3-1.9x faster than ``einsum`` for 256 <= S <= 4096 (0.148 vs 0.241 ms at S = 1024) and 2x
# slower at S = 16 (one call per row): dot products for S in [_DOT_MIN_S, _DOT_MAX_S]. Above 8192
# OpenBLAS threads its dot, which must not happen inside the channel slices' worker threads.
_DOT_MIN_S, _DOT_MAX_S = 128, 8192


# With few positions (S < _ROWS_MAX_S, where the dot products are not taken) the sums run down
# the N rows of C*S elements first (one vectorised add per sample, then C short sums):
# (32, 256, 16) sum 0.043 -> 0.013 ms, sum of products 0.064 -> 0.025 ms (one thread,
# in-process, loaded).
_ROWS_MAX_S = 128


def _channel_sum(a):
    """``a.sum(axis=(0, 2))`` of an (N, C, S) array, as (1, C, 1)."""
    n, c, s = a.shape
    if s < _ROWS_MAX_S:
        return np.add.reduce(a.reshape(n, c * s), axis=0).reshape(c, s).sum(axis=1).reshape(1, c, 1)
    return np.einsum("ncs->c", a).reshape(1, -1, 1)


def _channel_dot(a, b):
    """``(a * b).sum(axis=(0, 2))`` of (N, C, S) arrays, as (1, C, 1), no full-size temporary."""
    n, c, s = a.shape
    if s < _ROWS_MAX_S:
        rows = np.einsum("nk,nk->k", a.reshape(n, c * s), b.reshape(n, c * s))
        return rows.reshape(c, s).sum(axis=1).reshape(1, c, 1)
    if _DOT_MIN_S <= s <= _DOT_MAX_S:
        return np.matmul(a[:, :, None, :], b[:, :, :, None]).sum(axis=0).reshape(1, -1, 1)
    return np.einsum("ncs,ncs->c", a, b).reshape(1, -1, 1)


def _constant_over(w_shape, axes) -> bool:
    """True when an array of ``w_shape`` (broadcast against the input) is constant along every
    normalised axis, i.e. has size 1 there."""
    return all(w_shape[a] == 1 for a in axes)


# Batch norm on large host arrays: every statistic and every output element of a channel depends
# on that channel only, so the channels are split among the CPU threads (NumPy releases the GIL
# in its ufuncs and reductions), as PyTorch's batch norm kernels split their loops
# (``_centred_batch_forward``, ``_centred_backward_parts``).
# From 2^20 elements: quiet 2-core EPYC, 2 threads, fwd+bwd with weight and bias, wall, min of 15,
# split from 2^18 vs never: (32, 32, 32, 32) 2.39 vs 3.31 ms, but (32, 16, 32, 32) 1.49 vs 1.22,
# (32, 64, 16, 16) 1.46 vs 1.27, (32, 128, 8, 8) 1.13 vs 0.77 (smaller slices handed to the pool
# cost more than they save); from 2^16 (32, 256, 4, 4) 1.02 vs 0.61.
_CHANNEL_SPLIT_MIN = 1 << 20


def _batch_norm_pattern(x, axes, weight, bias, min_ndim: int = 3) -> bool:
    """Statistics over every dim of ``x`` but 1 (ndim >= ``min_ndim``), weight and bias None or
    shaped (1, C, 1, ...): the layout the per-channel paths are written for."""
    if x.ndim < min_ndim or tuple(axes) != (0,) + tuple(range(2, x.ndim)):
        return False
    c = x.shape[1]
    return all(t is None or (t.ndim == x.ndim and t.shape[1] == c and t.size == c) for t in (weight, bias))


def _input_grad(gxh, xhat, rstd, count, axes, xp):
    """dx = rstd (gxh - mean(gxh) - xhat mean(gxh xhat)) over ``axes`` (``count`` elements each;
    0: no terms), with gxh = g * weight: the norms' input gradient on arrays
    (``native_layer_norm_backward``'s / ``native_batch_norm_backward``'s formula)."""
    inv_m = gxh.dtype.type(1.0 / count) if count else gxh.dtype.type(0)
    mean_g = _sum(gxh, axes)
    mean_g *= inv_m
    mean_gx = _sum_prod(gxh, xhat, axes, xp)
    mean_gx *= inv_m
    dx = xhat * mean_gx
    xp.subtract(gxh, dx, out=dx)
    dx -= mean_g
    dx *= rstd
    return dx


def _standardize(x, axes, inv_m, eps, xp, out=None):
    """Mean, biased variance and 1 / sqrt(var + eps) over ``axes`` (kept dims) and
    ``xhat = (x - mean) rstd`` (written into ``out`` when given): two passes, as PyTorch."""
    mean = _sum(x, axes)
    mean *= inv_m
    xhat = xp.subtract(x, mean, out=out)
    var = _sum_prod(xhat, xhat, axes, xp)
    var *= inv_m
    rstd = _rstd(var, eps, xp)
    xhat *= rstd
    return mean, var, rstd, xhat


def _rstd(var, eps, xp):
    """``1 / sqrt(var + eps)`` in var's dtype (a new array)."""
    rstd = var + var.dtype.type(eps)
    xp.sqrt(rstd, out=rstd)
    xp.reciprocal(rstd, out=rstd)
    return rstd


def _merged(shape, axes):
    """Collapse runs of adjacent dims that are all reduced or all kept (cheaper reductions)."""
    sizes, flags = [], []
    for i, s in enumerate(shape):
        r = i in axes
        if flags and flags[-1] == r:
            sizes[-1] *= s
        else:
            sizes.append(s)
            flags.append(r)
    return tuple(sizes), tuple(i for i, r in enumerate(flags) if r)


def _keep_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _sum(a, axes):
    """``a.sum(axes, keepdims=True)`` over merged dims."""
    shape, ax = _merged(a.shape, axes)
    return a.reshape(shape).sum(axis=ax).reshape(_keep_shape(a.shape, axes))


def _sum_prod(a, b, axes, xp):
    """``(a * b).sum(axes, keepdims=True)`` without the full-size temporary (einsum)."""
    shape, ax = _merged(a.shape, axes)
    letters = "abcdefghijklmnopqrstuvwxyz"[:len(shape)]
    kept = "".join(c for i, c in enumerate(letters) if i not in ax)
    ct = host_compute_dtype(a)
    if ct is not None:  # 2-byte floats on the CPU: sum in float32 (no bfloat16 einsum in NumPy)
        r = xp.einsum(f"{letters},{letters}->{kept}", a.reshape(shape).astype(ct),
                      b.reshape(shape).astype(ct)).astype(a.dtype)
        return r.reshape(_keep_shape(a.shape, axes))
    r = xp.einsum(f"{letters},{letters}->{kept}", a.reshape(shape), b.reshape(shape))
    return r.reshape(_keep_shape(a.shape, axes))


def _broadcast_axes(small, full):
    """Axes along which an array of shape ``small`` (same ndim) is broadcast up to ``full``."""
    return tuple(i for i, (s, f) in enumerate(zip(small, full)) if s == 1 and f != 1)


# ----------------------------------------------------------------------------- input checks
def _check_input(op: str, input, min_ndim: int) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected input to be a Tensor, got {type(input).__name__}")
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"{op}: expected a floating-point input, got dtype {input.dtype}")
    if input.ndim < min_ndim:
        raise ValueError(f"{op}: expected input with at least {min_ndim} dims, got shape {tuple(input.shape)}")


def _check_vector(op: str, name: str, t, shape: tuple, input, float_dtype: bool = True) -> None:
    """``t`` (weight, bias, running stat) must be a Tensor of ``shape`` on ``input``'s device."""
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: expected {name} to be a Tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise RuntimeError(
            f"{op}: expected {name} of shape {tuple(shape)} for input of shape {tuple(input.shape)}, "
            f"got {name} of shape {tuple(t.shape)}"
        )
    if t.device != input.device:
        raise RuntimeError(f"{op}: {name} is on {t.device} but input is on {input.device}")
    if float_dtype and t.dtype != input.dtype:
        raise RuntimeError(
            f"{op}: expected {name} to have the input's dtype {input.dtype}, got {t.dtype}"
        )


def _check_eps(op: str, eps) -> None:
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")


def _channel_shape(input) -> tuple:
    """(1, C, 1, ..., 1): how a per-channel vector broadcasts against (N, C, *spatial)."""
    return (1, input.shape[1]) + (1,) * (input.ndim - 2)


def _as_broadcast(t, shape):
    """``t`` reshaped to ``shape`` (None stays None)."""
    return None if t is None else reshape(t, shape)


def _update_running(running, batch_stat, momentum: float) -> None:
    """``running <- (1 - momentum) * running + momentum * batch_stat``, in place, not recorded."""
    if running is None:
        return
    with no_grad():
        running.mul_(1.0 - momentum)
        running.add_(batch_stat.astype(running.array.dtype, copy=False), alpha=momentum)


def _check_momentum(op: str, momentum) -> float:
    if momentum is None or isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(
            f"{op}: momentum must be a float, got {momentum!r}; the cumulative average "
            f"(momentum=None) needs the batch count and is done by the BatchNorm/InstanceNorm modules"
        )
    return float(momentum)


# ------------------------------------------------------------------------------------- ops
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5):
    """Batch normalization over (N, C, *spatial) (``torch.nn.functional.batch_norm``).

    Math: per channel c, with the batch statistics over N and every spatial position
    (M values), y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c, where var_c is the
    biased variance. In training the running statistics, when given, are updated in place:
    running_mean <- (1 - momentum) running_mean + momentum mean_c and
    running_var <- (1 - momentum) running_var + momentum var_c M / (M - 1) (unbiased).
    In evaluation (``training=False``) the running statistics replace the batch ones.

    ``input`` may have 0 to 4 spatial dims, e.g. (N, C, t, x, y, z).

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([[1.0, 10.0], [3.0, 30.0]])
        >>> rm, rv = am.zeros(2), am.ones(2)
        >>> am.nn.functional.batch_norm(x, rm, rv, training=True)
        tensor([[-1.0000, -1.0000],
                [ 1.0000,  1.0000]])
        >>> rm
        tensor([0.2000, 2.0000])
    """
    op = "batch_norm"
    _check_input(op, input, 2)
    _check_eps(op, eps)
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        _check_vector(op, name, t, (c,), input, float_dtype=False)
        if t is not None and not t.dtype.is_floating_point:
            raise RuntimeError(f"{op}: expected {name} to be floating point, got {t.dtype}")
    _check_vector(op, "weight", weight, (c,), input)
    _check_vector(op, "bias", bias, (c,), input)
    shape = _channel_shape(input)
    if training:
        momentum = _check_momentum(op, momentum)
        m = input.numel() // max(c, 1)
        if m == 1:
            raise ValueError(
                f"{op}: Expected more than 1 value per channel when training, got input size "
                f"{tuple(input.shape)}"
            )
        axes = (0,) + tuple(range(2, input.ndim))
        y, mean, var = Normalize.apply(input, _as_broadcast(weight, shape), _as_broadcast(bias, shape), axes, eps)
        if m == 0:
            return y  # an empty batch has no statistics: the running ones stay as they are (PyTorch)
        if running_mean is not None:
            _update_running(running_mean, mean.array.reshape(c), momentum)
        if running_var is not None:
            _update_running(running_var, var.array.reshape(c) * (m / (m - 1)), momentum)
        return y
    if running_mean is None or running_var is None:
        raise RuntimeError(f"{op}: running_mean and running_var must be defined in evaluation mode (training=False)")
    # eval: one fused scale-and-shift per element, y = x * scale + shift
    rm = running_mean if running_mean.dtype == input.dtype else running_mean.to(input.dtype)
    rv = running_var if running_var.dtype == input.dtype else running_var.to(input.dtype)
    scale = rsqrt(rv + eps)
    if weight is not None:
        scale = scale * weight
    shift = -rm * scale
    if bias is not None:
        shift = shift + bias
    return input * reshape(scale, shape) + reshape(shift, shape)


@autocast_op("layer_norm")
def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Layer normalization over the trailing ``normalized_shape`` dims
    (``torch.nn.functional.layer_norm``).

    Math: for each leading index, over the D = prod(normalized_shape) trailing values,
    y = (x - mean) / sqrt(var + eps) * weight + bias (biased var; weight and bias have
    shape ``normalized_shape``).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.layer_norm(am.tensor([[1.0, 3.0], [0.0, 10.0]]), (2,))
        tensor([[-1.0000,  1.0000],
                [-1.0000,  1.0000]])
    """
    op = "layer_norm"
    _check_input(op, input, 1)
    _check_eps(op, eps)
    ns = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) else tuple(int(s) for s in normalized_shape)
    k = len(ns)
    if k == 0 or input.ndim < k or tuple(input.shape[-k:]) != ns:
        raise RuntimeError(
            f"{op}: Given normalized_shape={list(ns)}, expected input with shape [*, "
            f"{', '.join(map(str, ns))}], but got input of size {tuple(input.shape)}"
        )
    _check_vector(op, "weight", weight, ns, input)
    _check_vector(op, "bias", bias, ns, input)
    lean, plan = _layer_rows_route(input, weight, bias, k, eps)
    if lean:
        return _LayerNormRows.apply(input, weight, bias, plan, k, eps)
    axes = tuple(range(input.ndim - k, input.ndim))
    shape = (1,) * (input.ndim - k) + ns
    return Normalize.apply(input, _as_broadcast(weight, shape), _as_broadcast(bias, shape), axes, eps)[0]


@autocast_op("group_norm")
def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """Group normalization over (N, C, *spatial) (``torch.nn.functional.group_norm``).

    Math: the C channels are split into ``num_groups`` groups of C/G; for each sample and
    group, over its C/G * prod(spatial) values, y = (x - mean) / sqrt(var + eps), then the
    per-channel affine y * weight_c + bias_c. Independent of the batch size, so it works for
    batches of 1-2 large volumes.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([[1.0, 3.0, 0.0, 10.0]])
        >>> am.nn.functional.group_norm(x, 2)
        tensor([[-1.0000,  1.0000, -1.0000,  1.0000]])
    """
    op = "group_norm"
    _check_input(op, input, 2)
    _check_eps(op, eps)
    n, c = input.shape[0], input.shape[1]
    if not isinstance(num_groups, (int, np.integer)) or num_groups <= 0 or c % num_groups:
        raise RuntimeError(
            f"{op}: Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {tuple(input.shape)} and num_groups={num_groups}"
        )
    _check_vector(op, "weight", weight, (c,), input)
    _check_vector(op, "bias", bias, (c,), input)
    # (N, C, *spatial) -> (N, G, C/G, S): statistics over dims 2, 3; the affine per (G, C/G)
    grouped = reshape(input, (n, num_groups, c // num_groups, math.prod(input.shape[2:])))
    shape = (1, num_groups, c // num_groups, 1)
    y = Normalize.apply(grouped, _as_broadcast(weight, shape), _as_broadcast(bias, shape), (2, 3), eps)[0]
    return reshape(y, input.shape)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats: bool = True, momentum: float = 0.1, eps: float = 1e-5):
    """Instance normalization over the spatial dims of (N, C, *spatial)
    (``torch.nn.functional.instance_norm``).

    Math: for each sample n and channel c, over its M = prod(spatial) values,
    y = (x - mean_nc) / sqrt(var_nc + eps) * weight_c + bias_c. With ``use_input_stats`` and
    running statistics given, they are updated with the batch average of the per-instance
    statistics (unbiased variance, M / (M - 1)), as batch norm does; with
    ``use_input_stats=False`` the running statistics are used instead.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([[[1.0, 3.0], [0.0, 10.0]]])
        >>> am.nn.functional.instance_norm(x)
        tensor([[[-1.0000,  1.0000],
                 [-1.0000,  1.0000]]])
    """
    op = "instance_norm"
    _check_input(op, input, 3)
    _check_eps(op, eps)
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        _check_vector(op, name, t, (c,), input, float_dtype=False)
    _check_vector(op, "weight", weight, (c,), input)
    _check_vector(op, "bias", bias, (c,), input)
    if not use_input_stats:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    m = math.prod(input.shape[2:])
    if m == 1:
        raise ValueError(
            f"{op}: Expected more than 1 spatial element when training, got input size {tuple(input.shape)}"
        )
    axes = tuple(range(2, input.ndim))
    shape = _channel_shape(input)
    y, mean, var = Normalize.apply(input, _as_broadcast(weight, shape), _as_broadcast(bias, shape), axes, eps)
    if (running_mean is not None or running_var is not None) and input.shape[0] > 0:  # empty: no stats
        momentum = _check_momentum(op, momentum)
        n = input.shape[0]
        if running_mean is not None:
            _update_running(running_mean, mean.array.reshape(n, c).mean(axis=0), momentum)
        if running_var is not None:
            unbiased = var.array.reshape(n, c).mean(axis=0) * (m / (m - 1))
            _update_running(running_var, unbiased, momentum)
    return y


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """Root-mean-square normalization over the trailing ``normalized_shape`` dims
    (``torch.nn.functional.rms_norm``).

    Math: y = x / sqrt(mean(x²) + eps) * weight, the mean over the D = prod(normalized_shape)
    trailing values; ``eps=None`` means the machine epsilon of the input's dtype (as PyTorch).
    A composition of differentiable ops (no mean subtraction, unlike :func:`layer_norm`).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.rms_norm(am.tensor([[3.0, 4.0]]), (2,), eps=0.0)   # rms = √12.5
        tensor([[0.8485, 1.1314]])
    """
    from .reduction import mean
    op = "rms_norm"
    _check_input(op, input, 1)
    ns = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) else tuple(int(s) for s in normalized_shape)
    k = len(ns)
    if k == 0 or input.ndim < k or tuple(input.shape[-k:]) != ns:
        raise RuntimeError(
            f"{op}: Given normalized_shape={list(ns)}, expected input with shape [*, "
            f"{', '.join(map(str, ns))}], but got input of size {tuple(input.shape)}")
    _check_vector(op, "weight", weight, ns, input)
    if eps is None:
        eps = float(np.finfo(input.array.dtype).eps)
    _check_eps(op, eps)
    axes = tuple(range(input.ndim - k, input.ndim))
    y = input * rsqrt(mean(input * input, axes, keepdim=True) + eps)
    return y if weight is None else y * weight
