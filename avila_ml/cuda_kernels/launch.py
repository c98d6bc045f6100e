"""CuPy launchers for the hand-written kernels: compile on first use, cache, launch, report errors.

Each ``.cu`` file is compiled with NVRTC through ``cupy.RawModule`` the first time one of its
kernels is needed, once per (source, compile-time defines, device), in the manner of CuPy's own
``cupyx.scipy.signal._upfirdn``. CuPy is imported inside the functions only, so importing this
module costs nothing on machines without a GPU.

Grids, blocks, shared memory and argument lists come from :mod:`avila_ml.cuda_kernels.launch_config`,
the same plans the host emulation runs in CPU-only CI.
"""

from __future__ import annotations

from typing import Any

from .errors import OUT_OF_MEMORY_HINT, KernelLaunchError, KernelOutOfMemoryError
from .tensor_core import DEFAULT_TILE, mma_precision, prepare_attention_mma_backward, prepare_attention_mma_forward
from .launch_config import (
    KERNEL_NAMES,
    KERNEL_SOURCE_DIR,
    LaunchPlan,
    conv4d_geometry,
    nvrtc_options,
    prepare_conv4d_forward,
    prepare_conv4d_grad_input,
    prepare_conv4d_grad_weight,
    prepare_flash_attention_backward,
    prepare_flash_attention_forward,
)

# Above this, a kernel must opt in to more dynamic shared memory (cudaFuncAttributeMaxDynamicSharedMemorySize).
_DEFAULT_DYNAMIC_SHARED_LIMIT = 48 * 1024
_CUDA_ERROR_OUT_OF_MEMORY = 2  # cudaErrorMemoryAllocation and CUDA_ERROR_OUT_OF_MEMORY share the value 2

_modules: dict[tuple[str, tuple[tuple[str, int], ...], int], Any] = {}


_optin_limits: dict[int, int] = {}


def shared_memory_optin_limit() -> int:
    """The current device's opt-in dynamic shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin),
    asked once per device."""
    import cupy

    device = cupy.cuda.runtime.getDevice()
    limit = _optin_limits.get(device)
    if limit is None:
        limit = _optin_limits[device] = int(cupy.cuda.Device(device).attributes["MaxSharedMemoryPerBlockOptin"])
    return limit


def _kernel_function(source: str, name: str, defines: tuple[tuple[str, int], ...]):
    import cupy

    key = (source, defines, cupy.cuda.runtime.getDevice())
    module = _modules.get(key)
    if module is None:
        options = nvrtc_options(defines)
        module = cupy.RawModule(
            code=(KERNEL_SOURCE_DIR / source).read_text(), options=options, name_expressions=KERNEL_NAMES[source]
        )
        _modules[key] = module
    return module.get_function(name)


def _allocate(cupy, spec):
    if spec.fill is None:
        return cupy.empty(spec.shape, dtype=spec.dtype)
    return cupy.full(spec.shape, spec.fill, dtype=spec.dtype)


def _is_out_of_memory(exc: Exception) -> bool:
    return getattr(exc, "status", None) == _CUDA_ERROR_OUT_OF_MEMORY or "out of memory" in str(exc).lower()


def run_plan_on_gpu(plan: LaunchPlan, inputs: dict[str, Any]) -> tuple[Any, ...]:
    """Allocate the plan's buffers on the current device, launch its kernels, return its outputs."""
    import cupy
    from cupy.cuda.compiler import CompileException

    buffers = dict(inputs)
    kernel_name = plan.op
    try:
        for name, spec in plan.buffers.items():
            buffers[name] = _allocate(cupy, spec)
        for launch in plan.launches:
            kernel_name = launch.name
            kernel = _kernel_function(launch.source, launch.name, plan.defines)
            if launch.shared_mem_bytes > _DEFAULT_DYNAMIC_SHARED_LIMIT:
                kernel.max_dynamic_shared_size_bytes = launch.shared_mem_bytes
            args = tuple(buffers[arg] if isinstance(arg, str) else arg for arg in launch.args)
            kernel(launch.grid, launch.block, args, shared_mem=launch.shared_mem_bytes)
    except cupy.cuda.memory.OutOfMemoryError as exc:
        raise KernelOutOfMemoryError(
            f"{plan.op}: out of GPU memory in {kernel_name} for {plan.description}; {OUT_OF_MEMORY_HINT}"
        ) from exc
    except (cupy.cuda.runtime.CUDARuntimeError, cupy.cuda.driver.CUDADriverError, CompileException) as exc:
        if _is_out_of_memory(exc):
            raise KernelOutOfMemoryError(
                f"{plan.op}: out of GPU memory in {kernel_name} for {plan.description}; {OUT_OF_MEMORY_HINT}"
            ) from exc
        raise KernelLaunchError(f"{plan.op}: CUDA kernel {kernel_name} failed for {plan.description}: {exc}") from exc
    return tuple(buffers[name] for name in plan.outputs)


def _median_milliseconds(cupy, fn, repeats: int = 3) -> float:
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return sorted(times)[len(times) // 2]


def _conv4d_tensor_cores(op, a, b, shape, stride, padding, dilation, precision):
    """One tensor-core pass (conv4d_mma.cu) with the tile of the autotuner (the default tile
    unless ``am.backends.cudnn.benchmark``); see :mod:`.tensor_core` and :mod:`.autotune`."""
    import cupy

    from . import autotune
    from .tensor_core import fitting_tiles, prepare_conv4d_mma

    from ..backends import cudnn

    plan, inputs = prepare_conv4d_mma(cupy, op, a, b, shape, stride, padding, dilation, precision)
    if not cudnn.benchmark:  # tuning off: the fixed default tile, nothing timed
        return run_plan_on_gpu(plan, inputs)[0]
    geometry = conv4d_geometry(plan.op, *((a.shape, b.shape) if op == "forward" else
                                          (shape, b.shape) if op == "grad_input" else (a.shape, shape)),
                               stride, padding, dilation)
    device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
    device = device.decode() if isinstance(device, bytes) else str(device)

    def time_tile(tile):
        tile_plan, tile_inputs = prepare_conv4d_mma(cupy, op, a, b, shape, stride, padding, dilation, precision, tile)
        return _median_milliseconds(cupy, lambda: run_plan_on_gpu(tile_plan, tile_inputs))

    tile = autotune.choose_tile(autotune.tuning_key(op, precision, device, geometry),
                                fitting_tiles(precision, shared_memory_optin_limit()), time_tile, enabled=True)
    if tile != DEFAULT_TILE:
        plan, inputs = prepare_conv4d_mma(cupy, op, a, b, shape, stride, padding, dilation, precision, tile)
    return run_plan_on_gpu(plan, inputs)[0]


def _precision(dtype, tensor_cores):
    """None (exact CUDA-core kernels) or the tensor-core precision for ``dtype``."""
    if tensor_cores is False:
        return None
    return mma_precision(dtype)


def conv4d_forward(x, w, stride=1, padding=0, dilation=1, tensor_cores=None):
    """4-D convolution (cross-correlation) of ``x`` with ``w`` on the GPU, without im2col.

    ``y[n, co, t, i, j, l] = sum_{ci, a, b, c, e} w[co, ci, a, b, c, e] *
    x[n, ci, t*s0 - p0 + a*d0, i*s1 - p1 + b*d1, j*s2 - p2 + c*d2, l*s3 - p3 + e*d3]``,
    with out-of-range taps reading zero. Shapes: x (N, C_in, T, X, Y, Z), w (C_out, C_in, kT, kX, kY, kZ),
    y (N, C_out, oT, oX, oY, oZ) with ``o = (in + 2p - d(k - 1) - 1) // s + 1``. float32, float64 or float16
    (float16 storage, float32 sums, each output rounded once); no bias, groups=1. ``stride``, ``padding`` and ``dilation`` are ints or 4-tuples.

    ``tensor_cores``: None (default) runs float16/bfloat16, and float32 when
    ``am.backends.cudnn.allow_tf32`` is on (PyTorch's default), on tensor cores (conv4d_mma.cu,
    float32 accumulation; TF32 rounds float32 operands to 10 mantissa bits); False forces the
    exact CUDA-core kernels (float32/float64/float16).

    PyTorch has no conv4d; this is torch.nn.functional.conv3d's definition with one more dimension.

    Example (needs a GPU):

    >>> import cupy  # doctest: +SKIP
    >>> x = cupy.ones((1, 1, 3, 3, 3, 3), dtype=cupy.float32)  # doctest: +SKIP
    >>> w = cupy.ones((2, 1, 3, 3, 3, 3), dtype=cupy.float32)  # doctest: +SKIP
    >>> conv4d_forward(x, w, padding=1)[0, 0, 1, 1, 1, 1]  # doctest: +SKIP
    array(81., dtype=float32)
    """
    import cupy

    precision = _precision(x.dtype, tensor_cores)
    if precision is not None:
        return _conv4d_tensor_cores("forward", x, w, None, stride, padding, dilation, precision)
    return run_plan_on_gpu(*prepare_conv4d_forward(cupy, x, w, stride, padding, dilation, shared_memory_optin_limit()))[0]


def conv4d_grad_input(dy, w, x_shape, stride=1, padding=0, dilation=1, tensor_cores=None):
    """Gradient of :func:`conv4d_forward` with respect to its input (a transposed 4-D convolution).

    ``dx[n, ci, t, i, j, l] = sum dy[n, co, ot, oi, oj, ol] * w[co, ci, a, b, c, e]`` over all
    (co, a, b, c, e) with ``t = ot*s0 - p0 + a*d0`` (and likewise in X, Y, Z). ``x_shape`` is the shape
    of the forward input; ``dy`` has the forward output's shape. ``tensor_cores`` as in :func:`conv4d_forward`.

    PyTorch has no conv4d; this mirrors torch.nn.grad.conv3d_input in 4-D.

    Example (needs a GPU):

    >>> dy = cupy.ones((1, 2, 3, 3, 3, 3), dtype=cupy.float32)  # doctest: +SKIP
    >>> w = cupy.ones((2, 1, 3, 3, 3, 3), dtype=cupy.float32)  # doctest: +SKIP
    >>> conv4d_grad_input(dy, w, (1, 1, 3, 3, 3, 3), padding=1)[0, 0, 1, 1, 1, 1]  # doctest: +SKIP
    array(162., dtype=float32)
    """
    import cupy

    precision = _precision(dy.dtype, tensor_cores)
    if precision is not None:
        return _conv4d_tensor_cores("grad_input", dy, w, x_shape, stride, padding, dilation, precision)
    return run_plan_on_gpu(*prepare_conv4d_grad_input(cupy, dy, w, x_shape, stride, padding, dilation,
                                                     shared_memory_optin_limit()))[0]


def conv4d_grad_weight(x, dy, w_shape, stride=1, padding=0, dilation=1, tensor_cores=None):
    """Gradient of :func:`conv4d_forward` with respect to its weight.

    ``dw[co, ci, a, b, c, e] = sum_{n, t, i, j, l} dy[n, co, t, i, j, l] *
    x[n, ci, t*s0 - p0 + a*d0, i*s1 - p1 + b*d1, j*s2 - p2 + c*d2, l*s3 - p3 + e*d3]``.
    Partial sums of blocks are combined with atomicAdd, so the last bits may differ between runs.
    float16 inputs are summed (atomics included) into a float32 buffer, rounded to float16 once at the end.
    ``tensor_cores`` as in :func:`conv4d_forward`.

    PyTorch has no conv4d; this mirrors torch.nn.grad.conv3d_weight in 4-D.

    Example (needs a GPU):

    >>> x = cupy.ones((1, 1, 3, 3, 3, 3), dtype=cupy.float32)  # doctest: +SKIP
    >>> dy = cupy.ones((1, 2, 3, 3, 3, 3), dtype=cupy.float32)  # doctest: +SKIP
    >>> conv4d_grad_weight(x, dy, (2, 1, 3, 3, 3, 3), padding=1)[0, 0, 1, 1, 1, 1]  # doctest: +SKIP
    array(81., dtype=float32)
    """
    import cupy

    precision = _precision(x.dtype, tensor_cores)
    if precision is not None:
        return _conv4d_tensor_cores("grad_weight", x, dy, w_shape, stride, padding, dilation, precision)
    return run_plan_on_gpu(*prepare_conv4d_grad_weight(cupy, x, dy, w_shape, stride, padding, dilation,
                                                      shared_memory_optin_limit()))[0]


def _attention_on_tensor_cores(dtype, tensor_cores) -> bool:
    """float16 attention runs on tensor cores (attention_mma.cu) unless ``tensor_cores=False``;
    float32 always on the CUDA-core kernels (attention.cu)."""
    import numpy as np

    return tensor_cores is not False and np.dtype(dtype) == np.float16


def flash_attention_forward(q, k, v, scale, is_causal, mask=None, dropout=None, tensor_cores=None):
    """Fused softmax attention (FlashAttention-2 forward); returns ``(o, lse)``.

    ``s = q k^T * scale + mask`` (keys ``j > i`` set to -inf when ``is_causal``, top-left aligned),
    ``lse_i = log sum_j exp(s_ij)`` and ``o = softmax(s) v``, computed tile by tile with an online
    softmax so the (L, S) score matrix is never stored. q (BH, L, D), k and v (BH, S, D), D <= 128,
    float32 or float16 (float32 accumulation); ``mask`` broadcasts to (BH, L, S), additive float or
    boolean (True = attend). o has q's dtype, lse is float32 (BH, L). A row with every key masked
    gives o = 0 and lse = -inf. ``dropout = (p, seed, offset)`` gives ``o = (softmax(s) o z) v``
    with ``z`` = keep / (1 - p) from :func:`avila_ml.backends.philox.dropout_keep` (the same bits
    as the xp path); lse stays that of softmax(s).

    float16 runs on tensor cores (attention_mma.cu, FlashAttention-2 with mma.sync: probabilities
    rounded to float16 for the P V product, as FlashAttention does; head dims up to 256; k and v
    may have fewer heads than q, a divisor of them: grouped-query attention) unless
    ``tensor_cores=False``, which keeps the float32-arithmetic CUDA-core kernels (attention.cu).

    Mirrors torch.nn.functional.scaled_dot_product_attention (with ``scale``, ``is_causal`` and
    ``attn_mask``) for 3-D inputs; lse is what its flash backend saves for the backward.

    Example (needs a GPU):

    >>> q = cupy.random.rand(2, 128, 64, dtype=cupy.float32)  # doctest: +SKIP
    >>> o, lse = flash_attention_forward(q, q, q, scale=64 ** -0.5, is_causal=True)  # doctest: +SKIP
    >>> o.shape, lse.shape  # doctest: +SKIP
    ((2, 128, 64), (2, 128))
    """
    import cupy

    if _attention_on_tensor_cores(q.dtype, tensor_cores):
        return run_plan_on_gpu(*prepare_attention_mma_forward(cupy, q, k, v, scale, is_causal, mask, dropout, "f16",
                                                              shared_memory_optin_limit()))
    return run_plan_on_gpu(*prepare_flash_attention_forward(cupy, q, k, v, scale, is_causal, mask, dropout))


def flash_attention_backward(q, k, v, o, lse, do, scale, is_causal, mask=None, dropout=None, tensor_cores=None):
    """Gradients ``(dq, dk, dv)`` of :func:`flash_attention_forward`, recomputing scores tile by tile.

    With ``p = exp(s - lse)`` and ``delta_i = sum_d do_id o_id``: ``dv = p^T do``,
    ``ds = p * (do v^T - delta)``, ``dq = scale * ds k``, ``dk = scale * ds^T q``. dk and dv come from
    one pass over key tiles, dq from a second pass over query tiles (no atomics, deterministic).
    The mask is not differentiated. With ``dropout`` (the forward's): ``dv = (p o z)^T do``,
    ``ds = p * (z * (do v^T) - delta)``, the mask regenerated from (seed, offset). ``tensor_cores`` as
    in :func:`flash_attention_forward` (with grouped-query k, v: dk and dv per key/value head).

    Mirrors the backward of torch.nn.functional.scaled_dot_product_attention.

    Example (needs a GPU):

    >>> o, lse = flash_attention_forward(q, q, q, 0.125, False)  # doctest: +SKIP
    >>> dq, dk, dv = flash_attention_backward(q, q, q, o, lse, cupy.ones_like(o), 0.125, False)  # doctest: +SKIP
    """
    import cupy

    if _attention_on_tensor_cores(q.dtype, tensor_cores):
        return run_plan_on_gpu(*prepare_attention_mma_backward(cupy, q, k, v, o, lse, do, scale, is_causal, mask,
                                                               dropout, "f16", shared_memory_optin_limit()))
    return run_plan_on_gpu(*prepare_flash_attention_backward(cupy, q, k, v, o, lse, do, scale, is_causal, mask,
                                                             dropout))
