"""Launch plans of the tensor-core conv4d kernels (``conv4d_mma.cu``), shared by CuPy and the host emulation.

Which arithmetic a conv4d runs on the GPU is decided here, by dtype and PyTorch's flags:

* float16, bfloat16: tensor cores (mma.sync m16n8k16), float32 accumulation, outputs rounded once;
* float32 with ``am.backends.cudnn.allow_tf32`` (True by default, as in PyTorch): tensor cores in
  TF32 (operands rounded to 10 mantissa bits, float32 accumulation), like cuDNN's default;
* float32 with the flag off, float64: the exact CUDA-core kernels of ``conv4d.cu``.

Each pass is an implicit GEMM tiled BM x BN (one of :data:`CONV4D_MMA_TILES`, chosen by
:mod:`avila_ml.cuda_kernels.autotune` or the default (64, 64)); see ``conv4d_mma.cu``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .launch_config import (
    CONV4D_GRAD_WEIGHT_TARGET_BLOCKS,
    CONV4D_MMA_ROUND_KERNELS,
    CONV4D_MMA_SOURCE,
    CONV4D_MMA_TILES,
    CONV4D_ROUND_THREADS,
    DEFAULT_SHARED_MEMORY_OPTIN,
    BufferSpec,
    Conv4dGeometry,
    KernelLaunch,
    LaunchPlan,
    _ceil_div,
    _check_grid,
    _check_same_dtype,
    _check_shape,
    conv4d_geometry,
)

MMA_THREADS = 128
MMA_TILE_K = 32
DEFAULT_TILE = (64, 64)
PASSES = ("forward", "grad_input", "grad_weight")
_ROW_PADDING = {"f16": 8, "bf16": 8, "tf32": 4}  # elements added to each 32-element shared row


def mma_precision(dtype: Any, allow_tf32: bool | None = None) -> str | None:
    """The tensor-core precision for conv4d inputs of ``dtype``: ``"f16"``, ``"bf16"``, ``"tf32"``
    or None for the exact CUDA-core kernels. ``allow_tf32`` defaults to
    ``avila_ml.backends.cudnn.allow_tf32`` (torch.backends.cudnn.allow_tf32).

    >>> mma_precision(np.float16), mma_precision(np.float32, allow_tf32=False), mma_precision(np.float64)
    ('f16', None, None)
    >>> mma_precision(np.float32, allow_tf32=True)
    'tf32'
    """
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return "f16"
    if dtype.name == "bfloat16":
        return "bf16"
    if dtype == np.float32:
        if allow_tf32 is None:
            from ..backends import cudnn

            allow_tf32 = bool(cudnn.allow_tf32)
        return "tf32" if allow_tf32 else None
    return None


def mma_shared_bytes(precision: str, tile: tuple[int, int]) -> int:
    """Dynamic shared memory of one block: two pipeline stages of (BM + BN) padded 32-element rows.

    >>> mma_shared_bytes("f16", (64, 64)), mma_shared_bytes("tf32", (64, 64))
    (20480, 36864)
    """
    itemsize = 4 if precision == "tf32" else 2
    return 2 * (tile[0] + tile[1]) * (MMA_TILE_K + _ROW_PADDING[precision]) * itemsize


def fitting_tiles(precision: str, shared_memory_limit: int = DEFAULT_SHARED_MEMORY_OPTIN) -> tuple[tuple[int, int], ...]:
    """The tiles whose shared memory fits the device's opt-in limit (all of them on sm_80+)."""
    return tuple(t for t in CONV4D_MMA_TILES if mma_shared_bytes(precision, t) <= shared_memory_limit)


def gemm_shape(op: str, g: Conv4dGeometry) -> tuple[int, int, int]:
    """(M, N, K) of a pass's implicit GEMM (see conv4d_mma.cu).

    >>> g = conv4d_geometry("conv4d", (2, 3, 4, 4, 4, 4), (5, 3, 3, 3, 3, 3), 1, 1, 1)
    >>> gemm_shape("forward", g), gemm_shape("grad_input", g), gemm_shape("grad_weight", g)
    ((512, 5, 243), (512, 3, 405), (5, 243, 512))
    """
    taps = math.prod(g.kernel_size)
    out_positions, in_positions = math.prod(g.out_size), math.prod(g.in_size)
    if op == "forward":
        return g.batch * out_positions, g.out_channels, g.in_channels * taps
    if op == "grad_input":
        return g.batch * in_positions, g.in_channels, g.out_channels * taps
    if op == "grad_weight":
        return g.out_channels, g.in_channels * taps, g.batch * out_positions
    raise ValueError(f"conv4d_mma: unknown pass {op!r}, expected one of {PASSES}")


def _storage_dtype(precision: str) -> np.dtype:
    if precision == "f16":
        return np.dtype(np.float16)
    if precision == "tf32":
        return np.dtype(np.float32)
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def plan_conv4d_mma(op: str, g: Conv4dGeometry, precision: str, tile: tuple[int, int] = DEFAULT_TILE,
                    target_blocks: int = CONV4D_GRAD_WEIGHT_TARGET_BLOCKS, storage: Any = None) -> LaunchPlan:
    """Plan for one tensor-core pass. Inputs: forward ``x``, ``w`` -> ``y``; grad_input ``dy``, ``w``
    -> ``dx``; grad_weight ``x``, ``dy`` -> ``dw`` (summed in float32 over ``grid.z`` k-splits).
    ``storage``: the dtype of the inputs and outputs (default: the precision's; uint16 carries
    bfloat16 bit patterns where the array library has no bfloat16, as CuPy)."""
    name = f"conv4d_mma_{op}"
    if precision not in _ROW_PADDING:
        raise ValueError(f"{name}: precision must be one of {tuple(_ROW_PADDING)}, got {precision!r}")
    if tuple(tile) not in CONV4D_MMA_TILES:
        raise ValueError(f"{name}: tile {tuple(tile)} is not compiled; choose one of {CONV4D_MMA_TILES}")
    dtype = _storage_dtype(precision) if storage is None else np.dtype(storage)
    m, n, k = gemm_shape(op, g)
    bm, bn = tile
    kernel = f"{name}_{precision}_{bm}x{bn}"
    shared = mma_shared_bytes(precision, tile)
    block = (MMA_THREADS, 1, 1)
    description = g.describe(dtype) + f", {precision} tensor cores, tile {bm}x{bn}"
    empty = m == 0 or n == 0
    if op in ("forward", "grad_input"):
        out, shape = ("y", g.y_shape) if op == "forward" else ("dx", g.x_shape)
        # k == 0 (no input channels): the sums are empty, the output is zeros
        buffers = {out: BufferSpec(shape, dtype, 0.0 if empty or k == 0 else None)}
        launches: tuple[KernelLaunch, ...] = ()
        if not (empty or k == 0):
            grid = (_ceil_div(m, bm), _ceil_div(n, bn), 1)
            _check_grid(name, grid)
            inputs = ("x", "w") if op == "forward" else ("dy", "w")
            launches = (KernelLaunch(CONV4D_MMA_SOURCE, kernel, grid, block, shared,
                                     (*inputs, out, *g.kernel_args())),)
        return LaunchPlan(name, description, buffers, launches, (out,))

    summed = "dw" if precision == "tf32" else "dw_sum"
    buffers = {summed: BufferSpec(g.w_shape, np.dtype(np.float32), 0.0)}
    launches = ()
    if not empty and k > 0:
        grid_m, grid_n = _ceil_div(m, bm), _ceil_div(n, bn)
        k_tiles = _ceil_div(k, MMA_TILE_K)
        # split-K: enough blocks to fill the GPU several times, each with a run of k-tiles
        splits = max(1, min(k_tiles, _ceil_div(target_blocks, grid_m * grid_n)))
        per_split = _ceil_div(k_tiles, splits)
        grid = (grid_m, grid_n, _ceil_div(k_tiles, per_split))
        _check_grid(name, grid)
        launches = (KernelLaunch(CONV4D_MMA_SOURCE, kernel, grid, block, shared,
                                 ("dy", "x", summed, *g.kernel_args(), np.int32(per_split))),)
    if summed != "dw":
        if launches:
            count = math.prod(g.w_shape)
            round_grid = (min(_ceil_div(count, CONV4D_ROUND_THREADS), target_blocks), 1, 1)
            launches += (KernelLaunch(CONV4D_MMA_SOURCE, CONV4D_MMA_ROUND_KERNELS[precision], round_grid,
                                      (CONV4D_ROUND_THREADS, 1, 1), 0, (summed, "dw", np.int64(count))),)
        buffers["dw"] = BufferSpec(g.w_shape, dtype, None if launches else 0.0)
    return LaunchPlan(name, description, buffers, launches, ("dw",))


def _check_precision_dtype(name: str, precision: str, dtype: Any) -> None:
    expected = _storage_dtype(precision)
    if precision == "bf16" and np.dtype(dtype) == np.uint16:
        return  # bfloat16 bit patterns (CuPy has no bfloat16 dtype)
    if np.dtype(dtype) != expected:
        raise TypeError(f"{name}: {precision} tensor cores take {expected.name} inputs, got {np.dtype(dtype).name}")


def prepare_conv4d_mma(xp, op: str, a, b, shape, stride, padding, dilation, precision: str,
                       tile: tuple[int, int] = DEFAULT_TILE) -> tuple[LaunchPlan, dict[str, Any]]:
    """Validate and plan one pass; ``(a, b, shape)`` is ``(x, w, None)`` for forward,
    ``(dy, w, x_shape)`` for grad_input and ``(x, dy, w_shape)`` for grad_weight. bfloat16 inputs
    are ml_dtypes.bfloat16 arrays (NumPy) or uint16 arrays of bfloat16 bit patterns (CuPy)."""
    name = f"conv4d_mma_{op}"
    if op == "forward":
        g = conv4d_geometry(name, a.shape, b.shape, stride, padding, dilation)
        _check_same_dtype(name, x=a, w=b)
        inputs = {"x": a, "w": b}
    elif op == "grad_input":
        g = conv4d_geometry(name, shape, b.shape, stride, padding, dilation)
        _check_same_dtype(name, dy=a, w=b)
        _check_shape(name, "dy", a.shape, g.y_shape)
        inputs = {"dy": a, "w": b}
    elif op == "grad_weight":
        g = conv4d_geometry(name, a.shape, shape, stride, padding, dilation)
        _check_same_dtype(name, x=a, dy=b)
        _check_shape(name, "dy", b.shape, g.y_shape)
        inputs = {"x": a, "dy": b}
    else:
        raise ValueError(f"conv4d_mma: unknown pass {op!r}, expected one of {PASSES}")
    _check_precision_dtype(name, precision, a.dtype)
    plan = plan_conv4d_mma(op, g, precision, tile, storage=a.dtype)
    return plan, {key: xp.ascontiguousarray(value) for key, value in inputs.items()}
