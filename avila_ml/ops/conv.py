"""Convolution in any number of spatial dims (1-4 exported): forward, transposed, and their
gradients, each a differentiable :class:`Function`.

Three Functions make a closed family, so every derivative of any order is one of them
(Chainer's ``convolution_nd`` / ``deconvolution_nd`` pattern):

* ``ConvNd``          y  = conv(x, w) + b
* ``ConvTransposeNd`` gx = conv^T(gy, w)          (the adjoint of conv in x)
* ``ConvWeightGrad``  gw = corr(x, gy)            (the adjoint of conv in w)

with backward rules  d conv = (conv^T(gy, w), corr(x, gy), sum gy),
d conv^T = (conv(gz, w), corr(gz, u), sum gz)  and  d corr = (conv^T(gy, ggw), conv(x, ggw)).

The array work is done by one of three algorithms (``avila_ml.ops._conv_gemm``, ``_conv_fft``,
``_conv_direct``), chosen here — by :func:`avila_ml.backends.set_conv_algorithm` or, on
``"auto"``, by a cost model of the shape — or, for 4-D convolutions of CuPy arrays without
groups, by the hand-written CUDA kernels of ``avila_ml.cuda_kernels``, or, for float32 NumPy
arrays when oneDNN is installed (``"auto"`` or ``"onednn"``), by oneDNN through
``avila_ml.cpu_accel``. This module is the one place that choice is made.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..autograd.function import Function
from ..autograd.grad_mode import _state
from ..dtypes import host_compute_dtype
from ..amp.autocast_mode import autocast_op
from ..backends import backend_of, get_conv_algorithm, mkldnn
from ..tensor import Tensor
from . import _conv_dense, _conv_direct, _conv_fft, _conv_gemm
from ._conv_geometry import ConvGeometry, int_tuple
from .shape import pad as _pad

__all__ = ["conv1d", "conv2d", "conv3d", "conv4d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "conv_transpose4d"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "causal")
_ALGORITHMS = {"gemm": _conv_gemm, "fft": _conv_fft, "direct": _conv_direct}


# ----------------------------------------------------------------------------- algorithm choice
def _cost_gemm(N, C, O, G, S, K, geom):
    """Seconds, roughly, for the chunked implicit GEMM (calibrated on a 2-core x86 CPU)."""
    o = geom.out_size(S, K)
    grid = N * math.prod(q + (geom.dilation[a] * (K[a] - 1)) // geom.stride[a] for a, q in enumerate(o))
    T = math.prod(K)
    cg = C // G
    flops = 2.0 * (O // G) * C * T * grid
    b = next((b for b in range(len(K) + 1) if cg * math.prod(K[b:]) <= _conv_gemm._MAX_K), len(K))
    gt = math.prod(K[b:])                       # taps stacked per GEMM, as _conv_gemm does
    rate = _GEMM_RATE * min(1.0, cg * gt / 64.0) * min(1.0, (O // G) / 16.0) + 1e9
    calls = T / gt * max(1, grid // 4096)
    gather = 8.0 * cg * T * grid / _GATHER_RATE if cg * T > 1 else 0.0
    return 5e-5 + flops / rate + 3e-6 * calls + 4.0 * grid * (C + O) / _COPY_RATE + gather


def _cost_fft(N, C, O, G, S, K, geom):
    """Seconds, roughly, for the FFT algorithm: transforms, the frequency-domain channel
    products and the Python overhead per transform call."""
    F = [_conv_fft.next_fast_len(p) for p in geom.padded(S)]
    size = math.prod(F)
    transforms = N * C + O * (C // G) + N * O
    fft = transforms * 2.5 * size * math.log2(max(size, 2)) / _FFT_RATE
    mac = 24.0 * N * O * (C // G) * size / 2 / _COPY_RATE
    return 2e-4 * G + fft + mac


_GEMM_RATE = 60e9   # float32 GEMM FLOP/s reachable with a good shape (2 threads)
_FFT_RATE = 6e9     # pocketfft "flops" (5 n log2 n convention, halved for real input)
_COPY_RATE = 5e9    # bytes/s of strided copies and complex products
_GATHER_RATE = 30e9  # bytes/s of the cache-resident column gathers
_SMALL_BYTES = 8 << 20


def _fft_fits_memory(N, C, O, G, S, K, geom, itemsize=4):
    """True when the FFT path's extra memory stays within the issue's bound of 2 x output +
    input (or 8 MiB, below which memory is no concern: the GEMM's own per-thread buffers are
    about that). Its peak (``_conv_fft``): the input (or input-gradient) spectrum of a group,
    ``N C/G`` channel spectra, plus about ``3 N + 2`` more for one output channel's products
    and the inverse transform's temporaries."""
    F = [_conv_fft.next_fast_len(p) for p in geom.padded(S)]
    spec = _conv_fft.spectrum_bytes(F, itemsize)
    out_bytes = N * O * math.prod(geom.out_size(S, K)) * itemsize
    in_bytes = N * C * math.prod(S) * itemsize
    return (N * (C // G) + 3 * N + 2) * spec <= max(2 * out_bytes + in_bytes, _SMALL_BYTES)


def _choose(xp_name, N, C, O, G, S, K, geom):
    name = get_conv_algorithm()
    if name in _ALGORITHMS:
        return _ALGORITHMS[name]
    if xp_name != "numpy":
        return _conv_direct  # a few large matmuls suit a GPU better than many cache-sized chunks
    if (all(s == 1 for s in geom.stride) and not geom.causal and _fft_fits_memory(N, C, O, G, S, K, geom)
            and _cost_fft(N, C, O, G, S, K, geom) < _cost_gemm(N, C, O, G, S, K, geom)):
        return _conv_fft
    return _conv_gemm


_warned_fallbacks: set = set()


def _cuda_conv4d(kind, a, b, geom, extra):
    """The hand-written CUDA kernels for 4-D, ungrouped float32/float64/float16 convolutions
    under the ``"auto"`` algorithm; None otherwise (a forced ``set_conv_algorithm`` choice runs
    that generic algorithm). float16 (plain float16 tensors, or Conv4d under
    ``autocast("cuda")``, which casts to float16 before this point) runs on tensor cores, summed
    in float32, each output rounded once (CuPy has no bfloat16, so bfloat16 tensors never reach
    CUDA); float32 runs on tensor cores in TF32 when
    ``am.backends.cudnn.allow_tf32`` (the default, as in PyTorch), else exactly (as float64). The kernels pad symmetrically: the asymmetric part of the zero padding
    (causal axes, ``"same"`` with an even kernel) is added to the input first, and cropped off
    the input gradient. A plan that does not fit the device's shared memory falls back to the
    generic path (announced once)."""
    if (backend_of(a).name != "cupy" or geom.ndim != 4 or geom.groups != 1
            or a.dtype not in (np.float32, np.float64, np.float16) or get_conv_algorithm() not in ("auto", "onednn")):
        return None
    from ..cuda_kernels import conv4d_forward, conv4d_grad_input, conv4d_grad_weight
    from ..cuda_kernels.launch_config import SharedMemoryLimitError
    xp = backend_of(a).xp
    s, dl = geom.stride, geom.dilation
    p = tuple(min(lo, hi) for lo, hi in zip(geom.pad_lo, geom.pad_hi))
    extra_lo = tuple(lo - q for lo, q in zip(geom.pad_lo, p))
    extra_hi = tuple(hi - q for hi, q in zip(geom.pad_hi, p))
    asymmetric = any(extra_lo) or any(extra_hi)
    widths = ((0, 0), (0, 0)) + tuple(zip(extra_lo, extra_hi))
    try:
        if kind == "forward":
            return conv4d_forward(xp.pad(a, widths) if asymmetric else a, b, s, p, dl)
        if kind == "transpose":
            if geom.out_size(extra, b.shape[2:]) != a.shape[2:]:
                return None
            padded = tuple(n + lo + hi for n, lo, hi in zip(extra, extra_lo, extra_hi))
            dx = conv4d_grad_input(a, b, (a.shape[0], b.shape[1]) + padded, s, p, dl)
            if asymmetric:
                crop = tuple(slice(lo, lo + n) for lo, n in zip(extra_lo, extra))
                dx = xp.ascontiguousarray(dx[(slice(None), slice(None)) + crop])
            return dx
        w_shape = (b.shape[1], a.shape[1]) + tuple(extra)
        if geom.out_size(a.shape[2:], extra) != b.shape[2:]:
            return None
        return conv4d_grad_weight(xp.pad(a, widths) if asymmetric else a, b, w_shape, s, p, dl)
    except SharedMemoryLimitError as exc:
        key = (kind, tuple(b.shape[2:]) if kind != "weight" else tuple(extra))
        if key not in _warned_fallbacks:
            _warned_fallbacks.add(key)
            warnings.warn(f"conv4d: {exc}; running the generic (xp) convolution instead", stacklevel=4)
        return None


def _onednn(kind, a, b, geom, extra, bias=None):
    """The oneDNN convolution (``avila_ml.cpu_accel``) for float32 NumPy arrays under ``"auto"``
    or ``"onednn"``, 1-4 spatial dims; None where it does not apply or is not installed
    (announced once). A forward's ``bias`` array is added inside oneDNN's convolution; a weight
    gradient with ``bias=True`` returns ``(gw, gb)``.

    4-d convolutions went back to oneDNN under ``"auto"`` once its stacked path stopped padding
    the stacked channels of the forward and input gradient to 16 (5.3x the work for the Conv4d
    example's 1-channel first layer, which made that model's step 1.6x slower than the NumPy
    path). Measured after the fix, one thread each, 2-core AMD EPYC under load (2026-12-06):
    the example's training step 164 vs 273 ms (NumPy), its layers fwd+bwd 29 vs 50 and 102 vs
    192 ms, (2,4,16^4)->8 153 vs 273 ms, (1,2,32^4)->4 739 vs 860 ms.
    """
    name = get_conv_algorithm()
    if (name not in ("auto", "onednn") or a.dtype != np.float32 or backend_of(a).name != "numpy"
            or (name == "auto" and not mkldnn.enabled)):
        return None
    from ..cpu_accel import _conv as accel, _dnnl as dnnl
    if not dnnl.available():
        dnnl.note_absent()
        return None
    try:
        if kind == "forward":
            return accel.conv_forward(a, b, geom, bias)
        if kind == "transpose":
            return accel.conv_transpose(a, b, geom, extra)
        return accel.conv_weight_grad(a, b, geom, extra, bias=bool(bias))
    except dnnl.DnnlError as exc:  # a configuration this oneDNN build refuses: NumPy, announced once
        key = ("onednn", kind, str(exc))
        if key not in _warned_fallbacks:
            _warned_fallbacks.add(key)
            warnings.warn(f"conv: oneDNN refused this convolution ({exc}); running the NumPy algorithm "
                          "instead", stacklevel=4)
        return None


def _onednn_pair(which, a, gy, w, geom, need_data, bias):
    """Both gradients of a convolution (``which="conv"``: ``a`` = x, ``gy``; ``"transpose"``: ``a``
    = gz, ``gy`` = u) from one oneDNN submission that reorders the shared operand once
    (``cpu_accel._conv.conv_backward`` / ``conv_transpose_backward``), without create_graph only
    (with it the gradients are Functions of the graph); None where that does not apply, and the
    caller runs the two passes on their own."""
    name = get_conv_algorithm()
    if (_state.enabled or name not in ("auto", "onednn") or a.dtype != np.float32
            or backend_of(a).name != "numpy" or (name == "auto" and not mkldnn.enabled)
            or _dense_applies("weight", a, gy, geom, tuple(w.shape[2:]))):
        return None
    from ..cpu_accel import _conv as accel, _dnnl as dnnl
    if not dnnl.available():
        return None
    try:
        if which == "conv":
            return accel.conv_backward(a, gy, w, geom, need_data, bias)
        return accel.conv_transpose_backward(gy, a, w, geom, need_data)  # (u, gz)
    except dnnl.DnnlError:  # a configuration this oneDNN build refuses: the passes one by one
        return None


def _dense_applies(kind, a, b, geom, extra) -> bool:
    """Whether ``_dense`` runs this convolution: under ``"auto"``, a kernel covering the input."""
    if get_conv_algorithm() != "auto" or 0 in a.shape or 0 in b.shape:
        return False
    if kind == "forward":
        spatial, kernel = a.shape[2:], b.shape[2:]
    elif kind == "transpose":
        spatial, kernel = extra, b.shape[2:]
    else:
        spatial, kernel = a.shape[2:], extra
    return _conv_dense.applies(spatial, kernel, geom)


def _dense(kind, a, b, geom, extra):
    """The convolution as one matrix product (``_conv_dense``) where its kernel covers the whole
    input, under ``"auto"``; else None. (32,100,1^2) -> (32,256,4^2), the DCGAN generator's first
    layer, fwd+bwd: 1.4 ms instead of 5.0 ms through oneDNN's convolution kernels (1 thread,
    in-process A/B on a loaded 2-core AMD EPYC)."""
    if not _dense_applies(kind, a, b, geom, extra):
        return None
    if kind == "forward":
        return _conv_dense.conv_forward(a, b, geom)
    if kind == "transpose":
        return _conv_dense.conv_transpose(a, b, geom, extra)
    return _conv_dense.conv_weight_grad(a, b, geom, extra)


def _run(kind, a, b, geom, extra=None):
    """Dispatch one raw convolution: ``forward(x, w)``, ``transpose(gy, w, spatial)`` or
    ``weight(x, gy, kernel)``."""
    out = _cuda_conv4d(kind, a, b, geom, extra)
    if out is not None:
        return out
    ct = host_compute_dtype(a)
    if ct is not None:  # 2-byte floats on the CPU: GEMMs in float32, the result rounded back
        return _run(kind, a.astype(ct), b.astype(ct), geom, extra).astype(a.dtype)
    dense = _dense(kind, a, b, geom, extra)
    if dense is not None:
        return dense
    out = _onednn(kind, a, b, geom, extra)
    if out is not None:
        return out
    if kind == "forward":
        N, C, S, O, K = a.shape[0], a.shape[1], a.shape[2:], b.shape[0], b.shape[2:]
        return _choose(backend_of(a).name, N, C, O, geom.groups, S, K, geom).conv_forward(a, b, geom)
    if kind == "transpose":
        N, C, S, O, K = a.shape[0], b.shape[1] * geom.groups, tuple(extra), a.shape[1], b.shape[2:]
        return _choose(backend_of(a).name, N, C, O, geom.groups, S, K, geom).conv_transpose(a, b, geom, extra)
    N, C, S, O, K = a.shape[0], a.shape[1], a.shape[2:], b.shape[1], tuple(extra)
    return _choose(backend_of(a).name, N, C, O, geom.groups, S, K, geom).conv_weight_grad(a, b, geom, extra)


def _run_forward(x, w, b, geom):
    """``(conv(x, w) [+ b], whether b is added)``: oneDNN adds the bias inside its convolution
    (a pass over the output less: MNIST's first layer's forward 1.48 -> 1.17 ms, 1 thread,
    in-process A/B); the other algorithms leave it to the caller."""
    if b is not None and not _dense_applies("forward", x, w, geom, None):
        y = _onednn("forward", x, w, geom, None, bias=b)
        if y is not None:
            return y, True
    return _run("forward", x, w, geom), False


def _fit(y, spatial):
    """Crop the trailing dims of ``y`` to ``spatial`` (an output_padding >= stride leaves
    the adjoint one position longer than the tensor it must match)."""
    if tuple(y.shape[2:]) == tuple(spatial):
        return y
    return y[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]


def _bias_view(b, d):
    return b.reshape((1, -1) + (1,) * d)


# ----------------------------------------------------------------------------- Functions
class ConvNd(Function):
    """``y = conv(x, w) + b`` on arrays of shape ``(N, C, *S)``; ``out_spatial`` crops."""

    def forward(self, x, w, b, geom, out_spatial=None):
        self.geom = geom
        self.save_inputs(0, 1)
        y, added = _run_forward(x, w, b if out_spatial is None else None, geom)
        if out_spatial is not None:
            y = _fit(y, out_spatial)
        if not y.flags.c_contiguous:
            y = backend_of(y).xp.ascontiguousarray(y)
        if b is not None and not added:
            y += _bias_view(b, geom.ndim)
        return y

    def backward(self, gy):
        x, w = self.saved_inputs
        need = self.needs_input_grad
        bias = len(need) == 3 and need[2]
        pair = _onednn_pair("conv", x.array, gy.array, w.array, self.geom, need[0], bias) if need[1] else None
        if pair is not None:
            gx, gw, gb = (None if a is None else Tensor._wrap(a) for a in pair)
            return (gx, gw, gb) if len(need) == 3 else (gx, gw)
        gx = ConvTransposeNd.apply(gy, w, None, self.geom, tuple(x.shape[2:])) if need[0] else None
        if (len(need) == 3 and need[1] and need[2] and not _state.enabled
                and not _dense_applies("weight", x.array, gy.array, self.geom, tuple(w.shape[2:]))):
            # no create_graph: weight and bias gradients from one oneDNN pass over gy where it runs
            # (the separate sum over gy took 0.33 ms on MNIST's first layer, 0.59 on its second)
            both = _onednn("weight", x.array, gy.array, self.geom, tuple(w.shape[2:]), bias=True)
            if both is not None:
                return gx, Tensor._wrap(both[0]), Tensor._wrap(both[1])
        gw = ConvWeightGrad.apply(x, gy, self.geom, tuple(w.shape[2:])) if need[1] else None
        if len(need) == 3:
            gb = gy.sum(dim=(0,) + tuple(range(2, gy.ndim))) if need[2] else None
            return gx, gw, gb
        return gx, gw


class ConvTransposeNd(Function):
    """``z = conv^T(u, w) + b``: the adjoint in ``x`` of ``conv(x, w)`` with ``x`` of spatial
    size ``spatial`` (PyTorch's ``conv_transpose`` with weight ``(C_in, C_out / g, *K)``)."""

    def forward(self, u, w, b, geom, spatial):
        self.geom = geom
        self.save_inputs(0, 1)
        z = _run("transpose", u, w, geom, tuple(spatial))
        if b is not None:
            z += _bias_view(b, geom.ndim)
        return z

    def backward(self, gz):
        u, w = self.saved_inputs
        need = self.needs_input_grad
        pair = _onednn_pair("transpose", gz.array, u.array, w.array, self.geom, need[0], False) if need[1] else None
        if pair is not None:
            gu, gw = (None if a is None else Tensor._wrap(a) for a in pair[:2])
        else:
            gu = ConvNd.apply(gz, w, None, self.geom, tuple(u.shape[2:])) if need[0] else None
            gw = ConvWeightGrad.apply(gz, u, self.geom, tuple(w.shape[2:])) if need[1] else None
        if len(need) == 3:
            gb = gz.sum(dim=(0,) + tuple(range(2, gz.ndim))) if need[2] else None
            return gu, gw, gb
        return gu, gw


class ConvWeightGrad(Function):
    """``gw[o, c, k] = sum_{n, i} gy[n, o, i] x_pad[n, g(o) c, i * stride + k * dilation]``."""

    def forward(self, x, gy, geom, kernel):
        self.geom = geom
        self.save_inputs(0, 1)
        return _run("weight", x, gy, geom, tuple(kernel))

    def backward(self, ggw):
        x, gy = self.saved_inputs
        need = self.needs_input_grad
        gx = ConvTransposeNd.apply(gy, ggw, None, self.geom, tuple(x.shape[2:])) if need[0] else None
        ggy = ConvNd.apply(x, ggw, None, self.geom, tuple(gy.shape[2:])) if need[1] else None
        return gx, ggy


# ----------------------------------------------------------------------------- argument checks


def _modes(padding_mode, d, op):
    modes = (padding_mode,) * d if isinstance(padding_mode, str) else tuple(padding_mode)
    if len(modes) != d or any(m not in PADDING_MODES for m in modes):
        raise ValueError(f"{op}: padding_mode must be one of {PADDING_MODES} or a tuple of {d} of them "
                         f"(one per spatial dim), got {padding_mode!r}")
    return modes


def _check_tensors(op, input, weight, bias, d, transposed):
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if input.ndim not in (d + 1, d + 2):
        raise RuntimeError(
            f"{op}: expected a {d + 1}-d (unbatched) or {d + 2}-d (batched) input of shape "
            f"(N, C, {', '.join('S%d' % i for i in range(1, d + 1))}), got input of shape {tuple(input.shape)}")
    if weight.ndim != d + 2 or any(k < 1 for k in weight.shape[2:]):
        what = "(C_in, C_out / groups, *kernel)" if transposed else "(C_out, C_in / groups, *kernel)"
        raise RuntimeError(f"{op}: expected a {d + 2}-d weight {what} with a kernel of size >= 1, "
                           f"got weight of shape {tuple(weight.shape)}")
    tensors = [("input", input), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"{op}: bias must be a Tensor or None, got {type(bias).__name__}")
    for name, t in tensors:
        if not t.is_floating_point():
            raise RuntimeError(f"{op}: expected floating-point tensors, got {name} of dtype {t.dtype}")
    for name, t in tensors[1:]:
        if t.dtype != input.dtype:
            raise RuntimeError(f"{op}: input type ({input.dtype}) and {name} type ({t.dtype}) should be the same")
        if t.device != input.device:
            raise RuntimeError(f"{op}: input is on {input.device} but {name} is on {t.device}")


def _check_extent(op, x_shape, kernel, geom):
    P = geom.padded(x_shape[2:])
    E = geom.extent(kernel)
    if any(p < e for p, e in zip(P, E)):
        raise RuntimeError(
            f"{op}: the dilated kernel {E} (kernel {tuple(kernel)}, dilation {geom.dilation}) is larger than "
            f"the padded input {P} (input {tuple(x_shape)}, padding low {geom.pad_lo} high {geom.pad_hi})")


def _padding_sides(op, padding, stride, dilation, K):
    """(low, high) padding per spatial axis for ``padding`` = 'valid', 'same', an int or a tuple
    (PyTorch's rule: 'same' puts the odd extra element on the high side; strided convs refuse it)."""
    d = len(K)
    if not isinstance(padding, str):
        p = int_tuple(padding, d, "padding", op, 0)
        return p, p
    if padding == "valid":
        return (0,) * d, (0,) * d
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"{op}: padding='same' is not supported for strided convolutions (stride {stride})")
        total = tuple(dl * (k - 1) for dl, k in zip(dilation, K))
        return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    raise ValueError(f"{op}: padding must be 'valid', 'same', an int or a tuple of {d} ints, got {padding!r}")


@autocast_op("convolution")  # conv1d..conv4d and the Conv layers all come through here
def _conv(op, d, input, weight, bias, stride, padding, dilation, groups, padding_mode):
    """Shared body of conv1d..conv4d."""
    _check_tensors(op, input, weight, bias, d, False)
    stride = int_tuple(stride, d, "stride", op, 1)
    dilation = int_tuple(dilation, d, "dilation", op, 1)
    modes = _modes(padding_mode, d, op)
    groups = int(groups)
    K = tuple(weight.shape[2:])
    unbatched = input.ndim == d + 1
    if unbatched:
        input = input.unsqueeze(0)
    C, O = input.shape[1], weight.shape[0]
    if groups < 1 or C % groups or O % groups or weight.shape[1] * groups != C:
        raise RuntimeError(
            f"{op}: input of shape {tuple(input.shape)} has {C} channels and weight of shape "
            f"{tuple(weight.shape)} expects C_in = weight.shape[1] * groups = {weight.shape[1]} * {groups}; "
            f"C_in and C_out ({O}) must be divisible by groups")
    if bias is not None and tuple(bias.shape) != (O,):
        raise RuntimeError(f"{op}: bias of shape {tuple(bias.shape)} does not match {O} output channels ({O},)")
    lo, hi = _padding_sides(op, padding, stride, dilation, K)
    lo, hi = list(lo), list(hi)
    # non-zero padding modes pad explicitly (differentiably), then the conv runs unpadded there
    by_mode = {}
    for a, m in enumerate(modes):
        if m == "causal":
            lo[a], hi[a] = dilation[a] * (K[a] - 1), 0
        elif m != "zeros" and (lo[a] or hi[a]):
            by_mode.setdefault(m, []).append(a)
    for m, axes in by_mode.items():
        widths = [0] * (2 * d)
        for a in axes:
            n = input.shape[2 + a]
            if (m == "reflect" and max(lo[a], hi[a]) >= n) or (m == "circular" and max(lo[a], hi[a]) > n) or n == 0:
                raise RuntimeError(
                    f"{op}: {m} padding ({lo[a]}, {hi[a]}) is too large for spatial dim {a} of size {n} "
                    f"(input {tuple(input.shape)}); reflect needs padding < size, circular padding <= size")
            widths[2 * (d - 1 - a)], widths[2 * (d - 1 - a) + 1] = lo[a], hi[a]
            lo[a] = hi[a] = 0
        input = _pad(input, tuple(widths), mode=m)
    geom = ConvGeometry(stride, tuple(lo), tuple(hi), dilation, groups, "causal" in modes)
    _check_extent(op, tuple(input.shape), K, geom)
    y = ConvNd.apply(input, weight, bias, geom)
    return y.squeeze(0) if unbatched else y


@autocast_op("conv_transpose")
def _conv_transpose(op, d, input, weight, bias, stride, padding, output_padding, groups, dilation):
    """Shared body of conv_transpose1d..conv_transpose4d."""
    _check_tensors(op, input, weight, bias, d, True)
    stride = int_tuple(stride, d, "stride", op, 1)
    dilation = int_tuple(dilation, d, "dilation", op, 1)
    if isinstance(padding, str):
        raise ValueError(f"{op}: padding must be an int or a tuple of {d} ints (no 'same'/'valid' for "
                         f"transposed convolutions, as in PyTorch), got {padding!r}")
    padding = int_tuple(padding, d, "padding", op, 0)
    output_padding = int_tuple(output_padding, d, "output_padding", op, 0)
    for a in range(d):
        if output_padding[a] >= max(stride[a], dilation[a]):
            raise ValueError(f"{op}: output_padding {output_padding} must be smaller than either stride "
                             f"{stride} or dilation {dilation} in every dimension")
    groups = int(groups)
    K = tuple(weight.shape[2:])
    unbatched = input.ndim == d + 1
    if unbatched:
        input = input.unsqueeze(0)
    C = input.shape[1]
    if groups < 1 or weight.shape[0] != C or C % groups:
        raise RuntimeError(
            f"{op}: input of shape {tuple(input.shape)} has {C} channels but weight of shape "
            f"{tuple(weight.shape)} expects C_in = weight.shape[0] = {weight.shape[0]}, divisible by groups = {groups}")
    O = weight.shape[1] * groups
    if bias is not None and tuple(bias.shape) != (O,):
        raise RuntimeError(f"{op}: bias of shape {tuple(bias.shape)} does not match {O} output channels ({O},)")
    out = tuple((i - 1) * s - 2 * p + dl * (k - 1) + op_ + 1
                for i, s, p, dl, k, op_ in zip(input.shape[2:], stride, padding, dilation, K, output_padding))
    if any(n < 1 for n in out):
        raise RuntimeError(
            f"{op}: the output size {out} is too small (input {tuple(input.shape)}, kernel {K}, stride {stride}, "
            f"padding {padding}, dilation {dilation}, output_padding {output_padding})")
    if any(n == 0 for n in input.shape[2:]):
        raise RuntimeError(f"{op}: input of shape {tuple(input.shape)} has an empty spatial dim")
    geom = ConvGeometry(stride, padding, padding, dilation, groups)
    y = ConvTransposeNd.apply(input, weight, bias, geom, out)
    return y.squeeze(0) if unbatched else y


# ----------------------------------------------------------------------------- public API
_CONV_DOC = """{d}-D convolution (cross-correlation) over an input of shape ``(N, C_in, {dims})``
or unbatched ``(C_in, {dims})`` (``torch.nn.functional.conv{d}d``{extra}).

Math: ``out[n, o, i] = bias[o] + sum_(c, k) weight[o, c, k] * x_pad[n, g(o) * C_in / groups + c,
i * stride + k * dilation]`` with ``weight`` of shape ``(C_out, C_in / groups, {kdims})``;
output size ``floor((S + pad_lo + pad_hi - dilation * (K - 1) - 1) / stride) + 1``.

Args: ``stride``, ``dilation``: int or {d}-tuple. ``padding``: int, {d}-tuple, ``"valid"`` or
``"same"`` (stride 1; an even kernel pads one more on the high side, like PyTorch).
``groups``: ``C_in`` and ``C_out`` split into that many independent convolutions
(``groups = C_in`` is depthwise). ``padding_mode`` (beyond PyTorch's functional API, which only
zero-pads): ``"zeros"``, ``"reflect"``, ``"replicate"``, ``"circular"`` or ``"causal"``, or a
{d}-tuple with one mode per spatial dim. ``"causal"`` pads only the low (past) side of its
dim by ``dilation * (K - 1)`` zeros, ignoring that dim's ``padding``, so output ``i`` sees
inputs ``<= i * stride`` only (bitwise: the automatic algorithm choice avoids the FFT then). The gradient w.r.t. input, weight and bias is itself
differentiable. The algorithm is chosen by :func:`avila_ml.backends.set_conv_algorithm`.{notes}

Example:
    >>> import avila_ml as am
    >>> x = am.ones({ex_x})
    >>> w = am.ones({ex_w})
    >>> am.nn.functional.conv{d}d(x, w, padding=1){ex_sel}
    {ex_out}
"""


def _conv_fn(d, extra, ex_x, ex_w, ex_sel, ex_out, notes=""):
    op = f"conv{d}d"

    def fn(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros"):
        return _conv(op, d, input, weight, bias, stride, padding, dilation, groups, padding_mode)

    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = _CONV_DOC.format(d=d, dims=", ".join("S%d" % i for i in range(1, d + 1)),
                                  kdims=", ".join("K%d" % i for i in range(1, d + 1)), extra=extra,
                                  ex_x=ex_x, ex_w=ex_w, ex_sel=ex_sel, ex_out=ex_out, notes=notes)
    return fn


_CONV4D_CUDA_NOTE = """

On CUDA (algorithm ``"auto"``, ``groups=1``) hand-written kernels run the forward and both
gradients without an im2col buffer, for float32, float64 and float16. float16 (float16 tensors,
or float32 ones under ``am.autocast("cuda")``, which casts them) is stored and moved as float16
and summed in float32, each output rounded to float16 once; the weight gradient is summed in a
float32 buffer and rounded once at the end. The float16 kernels are verified against NumPy on
the host emulation of CUDA and compile for sm_80/sm_90; they have not yet run on a real GPU."""

conv1d = _conv_fn(1, "", "1, 1, 4", "1, 1, 3", "", "tensor([[[2., 3., 3., 2.]]])")
conv2d = _conv_fn(2, "", "1, 1, 3, 3", "2, 1, 3, 3", "[0, 1]", "tensor([[4., 6., 4.],\n            [6., 9., 6.],\n            [4., 6., 4.]])")
conv3d = _conv_fn(3, "", "1, 2, 3, 3, 3", "1, 2, 3, 3, 3", "[0, 0, 1, 1]", "tensor([36., 54., 36.])")
conv4d = _conv_fn(4, "; PyTorch has no conv4d, this is the same op with a fourth spatial dim, "
                     "typically ``(t, x, y, z)``", "1, 1, 3, 3, 3, 3", "1, 1, 3, 3, 3, 3",
                  ".shape", "(1, 1, 3, 3, 3, 3)", _CONV4D_CUDA_NOTE)

_CONVT_DOC = """{d}-D transposed convolution of an input ``(N, C_in, {dims})`` or unbatched
``(C_in, {dims})`` (``torch.nn.functional.conv_transpose{d}d``{extra}).

It is the adjoint (gradient w.r.t. the input) of ``conv{d}d`` with the same stride, padding,
dilation and groups. Math: ``out[n, g * C_out / groups + c, p] = bias + sum weight[i, c, k] *
input[n, i, j]`` over input channels ``i`` of group ``g`` and ``j * stride + k * dilation =
p + padding``; ``weight`` has shape ``(C_in, C_out / groups, {kdims})``; output size
``(S - 1) * stride - 2 * padding + dilation * (K - 1) + output_padding + 1``.
``output_padding`` (< stride or dilation) resolves the size ambiguity of strided convs.
Zero padding only, as in PyTorch. Differentiable to any order.

Example:
    >>> import avila_ml as am
    >>> x = am.ones({ex_x})
    >>> w = am.ones({ex_w})
    >>> am.nn.functional.conv_transpose{d}d(x, w, stride=2){ex_sel}
    {ex_out}
"""


def _convt_fn(d, extra, ex_x, ex_w, ex_sel, ex_out):
    op = f"conv_transpose{d}d"

    def fn(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
        return _conv_transpose(op, d, input, weight, bias, stride, padding, output_padding, groups, dilation)

    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = _CONVT_DOC.format(d=d, dims=", ".join("S%d" % i for i in range(1, d + 1)),
                                   kdims=", ".join("K%d" % i for i in range(1, d + 1)), extra=extra,
                                   ex_x=ex_x, ex_w=ex_w, ex_sel=ex_sel, ex_out=ex_out)
    return fn


conv_transpose1d = _convt_fn(1, "", "1, 1, 3", "1, 1, 3", "", "tensor([[[1., 1., 2., 1., 2., 1., 1.]]])")
conv_transpose2d = _convt_fn(2, "", "1, 1, 2, 2", "1, 1, 2, 2", ".shape", "(1, 1, 4, 4)")
conv_transpose3d = _convt_fn(3, "", "1, 1, 2, 2, 2", "1, 1, 2, 2, 2", ".shape", "(1, 1, 4, 4, 4)")
conv_transpose4d = _convt_fn(4, "; PyTorch has no 4-D version", "1, 1, 2, 2, 2, 2", "1, 1, 2, 2, 2, 2",
                             ".shape", "(1, 1, 4, 4, 4, 4)")
