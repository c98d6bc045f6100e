"""Launch plans for the hand-written CUDA kernels: one place for shapes, grids, blocks and arguments.

A :class:`LaunchPlan` says everything a launch needs (which kernels, grid and block, dynamic
shared memory, argument list, which buffers to allocate) without touching an array library, so
the CuPy launcher (:mod:`avila_ml.cuda_kernels.launch`) and the host emulation
(:mod:`avila_ml.cuda_kernels.host_emulation`) execute the *same* plan. A tiling bug therefore
shows up in CPU-only CI, not first on a GPU.

Kernel arguments in a plan are either a string (the name of an input or of a plan buffer, passed
as a device pointer) or a NumPy scalar whose dtype is the C type of the parameter
(``np.int32`` -> ``int``, ``np.int64`` -> ``long long``, ``np.float32`` -> ``float``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..backends.philox import dropout_threshold

KERNEL_SOURCE_DIR = Path(__file__).resolve().parent
CONV4D_SOURCE = "conv4d.cu"
CONV4D_MMA_SOURCE = "conv4d_mma.cu"
ATTENTION_MMA_SOURCE = "attention_mma.cu"
ATTENTION_SOURCE = "attention.cu"

# Output (forward, grad-weight) or input (grad-input) channels per block, kept in registers.
CONV4D_CHANNEL_TILE = 16
# Compile-time configuration shared by NVRTC (CuPy) and the host build: one place to change it.
KERNEL_DEFINES: tuple[tuple[str, int], ...] = (("AVILA_CONV4D_CHANNEL_TILE", CONV4D_CHANNEL_TILE),)

# Headers the .cu sources include (NVRTC finds them through -I KERNEL_SOURCE_DIR).
KERNEL_HEADERS = ("avila_half.cuh", "avila_mma.cuh", "conv4d_geometry.cuh", "attention_common.cuh")


def nvrtc_options(defines: tuple[tuple[str, int], ...] = KERNEL_DEFINES) -> tuple[str, ...]:
    """Options for ``cupy.RawModule`` (NVRTC): C++17, the kernel directory on the include path,
    the compile-time defines, and a digest of the included headers. CuPy's on-disk kernel cache
    is keyed by the source text and the options only, so without the digest an edited header
    would keep serving the cubin built from the old one. (The digest is not an integer, so it is
    not mistaken for a configuration define.)

    >>> nvrtc_options()[0], nvrtc_options()[1].startswith("-I")
    ('-std=c++17', True)
    """
    import hashlib

    digest = hashlib.sha256(b"".join((KERNEL_SOURCE_DIR / h).read_bytes() for h in KERNEL_HEADERS)).hexdigest()
    return ("-std=c++17", f"-I{KERNEL_SOURCE_DIR}", *(f"-D{macro}={value}" for macro, value in defines),
            f"-DAVILA_KERNEL_HEADERS=h{digest[:16]}")


CONV4D_MAX_THREADS = 256
CONV4D_MAX_TILE_Z = 32
CONV4D_GRAD_WEIGHT_MAX_TAP_LANES = 32
# Split-K target for conv4d_grad_weight: enough blocks to fill an H100 (132 SMs) several times.
CONV4D_GRAD_WEIGHT_TARGET_BLOCKS = 1024
# Staying under the default 48 KiB keeps conv4d launchable without the opt-in attribute (and
# leaves room for more blocks per SM); a kernel whose 1x1 tile needs more opts in, up to the
# device's cudaDevAttrMaxSharedMemoryPerBlockOptin.
CONV4D_SHARED_MEMORY_BUDGET = 48 * 1024
# The opt-in limit assumed where no device is asked (host emulation, planning without a GPU):
# the smallest of the sm_80+ GPUs (99 KiB on sm_86/sm_89; A100 has 163 KiB, H100 227 KiB).
DEFAULT_SHARED_MEMORY_OPTIN = 99 * 1024


class SharedMemoryLimitError(ValueError):
    """A conv4d plan needs more shared memory than the device allows even for a 1x1 tile;
    the caller falls back to the generic convolution."""

ATTENTION_TILE = 64
ATTENTION_THREADS = 256
ATTENTION_HEAD_DIM_BUCKETS = (32, 64, 128)
ATTENTION_PREPROCESS_ROWS_PER_BLOCK = ATTENTION_THREADS // 32

_CONV_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}
# What each conv4d instantiation sums in (conv4d.cu's Accumulate<T>): float16 accumulates in float32.
_CONV_ACCUMULATE = {np.dtype(np.float32): np.dtype(np.float32), np.dtype(np.float64): np.dtype(np.float64),
                    np.dtype(np.float16): np.dtype(np.float32)}
CONV4D_ROUND_KERNEL = "conv4d_round_f32_to_f16"
CONV4D_ROUND_THREADS = 256
_ATTENTION_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
_MAX_GRID_X = 2**31 - 1
_MAX_GRID_YZ = 65535


def _conv4d_kernel_names() -> tuple[str, ...]:
    names = tuple(
        f"conv4d_{op}_{suffix}"
        for op in ("forward", "grad_input", "grad_weight")
        for suffix in _CONV_DTYPES.values()
    )
    return (*names, CONV4D_ROUND_KERNEL)


# Tensor-core conv4d (conv4d_mma.cu): block tiles (rows of M, columns of N) compiled as separate
# kernels, the choices of the autotuner (avila_ml.cuda_kernels.autotune); storage precisions.
CONV4D_MMA_TILES: tuple[tuple[int, int], ...] = ((32, 32), (64, 32), (64, 64), (128, 64))
CONV4D_MMA_PRECISIONS = ("f16", "bf16", "tf32")
CONV4D_MMA_ROUND_KERNELS = {"f16": "conv4d_mma_round_f32_to_f16", "bf16": "conv4d_mma_round_f32_to_bf16"}


def _conv4d_mma_kernel_names() -> tuple[str, ...]:
    names = tuple(
        f"conv4d_mma_{op}_{precision}_{bm}x{bn}"
        for op in ("forward", "grad_input", "grad_weight")
        for precision in CONV4D_MMA_PRECISIONS
        for bm, bn in CONV4D_MMA_TILES
    )
    return (*names, *CONV4D_MMA_ROUND_KERNELS.values())


# Tensor-core attention (attention_mma.cu): head-dim buckets and storage types.
ATTENTION_MMA_HEAD_DIMS = (32, 64, 128, 256)
ATTENTION_MMA_PRECISIONS = ("f16", "bf16")


def _attention_mma_kernel_names() -> tuple[str, ...]:
    names = [f"attention_mma_delta_{p}" for p in ATTENTION_MMA_PRECISIONS]
    names += [f"attention_mma_{op}_{p}_hd{d}" for p in ATTENTION_MMA_PRECISIONS for d in ATTENTION_MMA_HEAD_DIMS
              for op in ("forward", "backward_dkdv", "backward_dq")]
    return tuple(names)


def _attention_kernel_names() -> tuple[str, ...]:
    names = [f"flash_attention_backward_preprocess_{suffix}" for suffix in _ATTENTION_DTYPES.values()]
    names += [
        f"flash_attention_{op}_{suffix}_hd{head_dim}"
        for suffix in _ATTENTION_DTYPES.values()
        for head_dim in ATTENTION_HEAD_DIM_BUCKETS
        for op in ("forward", "backward_dkdv", "backward_dq")
    ]
    return tuple(names)


#: Every ``extern "C"`` kernel of each source file (NVRTC name expressions, host registry check).
KERNEL_NAMES: dict[str, tuple[str, ...]] = {
    CONV4D_SOURCE: _conv4d_kernel_names(),
    CONV4D_MMA_SOURCE: _conv4d_mma_kernel_names(),
    ATTENTION_MMA_SOURCE: _attention_mma_kernel_names(),
    ATTENTION_SOURCE: _attention_kernel_names(),
}


@dataclass(frozen=True)
class BufferSpec:
    """A buffer the executor allocates: ``fill`` is its initial value, ``None`` means uninitialised."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fill: float | None = None


@dataclass(frozen=True)
class KernelLaunch:
    """One ``kernel<<<grid, block, shared_mem_bytes>>>(*args)`` launch."""

    source: str
    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem_bytes: int
    args: tuple[Any, ...]


@dataclass(frozen=True)
class LaunchPlan:
    """Buffers to allocate, kernels to launch in order, and the buffers returned as results."""

    op: str
    description: str
    buffers: Mapping[str, BufferSpec]
    launches: tuple[KernelLaunch, ...]
    outputs: tuple[str, ...]
    defines: tuple[tuple[str, int], ...] = field(default=KERNEL_DEFINES)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _as_4_tuple(op: str, name: str, value: int | Sequence[int], minimum: int) -> tuple[int, int, int, int]:
    values = (value,) * 4 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 4 or not all(isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(f"{op}: {name} must be an int or a 4-tuple of ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{op}: every {name} entry must be >= {minimum}, got {tuple(values)}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _check_grid(op: str, grid: tuple[int, int, int]) -> None:
    if grid[0] > _MAX_GRID_X or grid[1] > _MAX_GRID_YZ or grid[2] > _MAX_GRID_YZ:
        raise ValueError(f"{op}: problem too large for one launch (grid {grid} exceeds CUDA's limits)")


@dataclass(frozen=True)
class Conv4dGeometry:
    """Sizes of one 4-D convolution; ``kernel_args`` is the geometry tail of every conv4d kernel."""

    batch: int
    in_channels: int
    out_channels: int
    in_size: tuple[int, int, int, int]
    out_size: tuple[int, int, int, int]
    kernel_size: tuple[int, int, int, int]
    stride: tuple[int, int, int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int, int, int]

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.in_size)

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.out_size)

    def kernel_args(self) -> tuple[np.int32, ...]:
        values = (
            self.batch, self.in_channels, self.out_channels, *self.in_size, *self.out_size,
            *self.kernel_size, *self.stride, *self.padding, *self.dilation,
        )
        return tuple(np.int32(v) for v in values)

    def describe(self, dtype: np.dtype) -> str:
        return (
            f"x {self.x_shape}, w {self.w_shape}, y {self.y_shape}, {np.dtype(dtype).name}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )


def conv4d_geometry(
    op: str,
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
) -> Conv4dGeometry:
    """Validate a conv4d problem and compute its output size, like torch's convNd shape rules.

    ``out = (in + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1`` along each of T, X, Y, Z.
    """
    x_shape, w_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in w_shape)
    if len(x_shape) != 6 or len(w_shape) != 6:
        raise ValueError(
            f"{op}: expected x of shape (N, C_in, T, X, Y, Z) and w of shape (C_out, C_in, kT, kX, kY, kZ), "
            f"got x {x_shape} and w {w_shape}"
        )
    if x_shape[1] != w_shape[1]:
        raise ValueError(
            f"{op}: x has {x_shape[1]} input channels but w expects {w_shape[1]} (x {x_shape}, w {w_shape}); "
            "grouped convolutions use the generic path"
        )
    stride = _as_4_tuple(op, "stride", stride, 1)
    padding = _as_4_tuple(op, "padding", padding, 0)
    dilation = _as_4_tuple(op, "dilation", dilation, 1)
    kernel_size = w_shape[2:]
    if any(k < 1 for k in kernel_size):
        raise ValueError(f"{op}: kernel size must be >= 1 in every dimension, got w {w_shape}")
    out_size = tuple(
        (i + 2 * p - d * (k - 1) - 1) // s + 1
        for i, k, s, p, d in zip(x_shape[2:], kernel_size, stride, padding, dilation)
    )
    if any(o < 1 for o in out_size):
        raise ValueError(
            f"{op}: calculated output size {out_size} is too small for input {x_shape[2:]} with kernel "
            f"{kernel_size}, stride {stride}, padding {padding}, dilation {dilation}"
        )
    return Conv4dGeometry(
        batch=x_shape[0], in_channels=x_shape[1], out_channels=w_shape[0], in_size=x_shape[2:],  # type: ignore
        out_size=out_size, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,  # type: ignore
    )


def _conv_dtype_suffix(op: str, dtype: Any) -> str:
    dtype = np.dtype(dtype)
    if dtype not in _CONV_DTYPES:
        raise TypeError(f"{op}: the CUDA kernels support float32, float64 and float16, got {dtype.name}")
    return _CONV_DTYPES[dtype]


def _shrink_tile_to_budget(
    op: str, geometry: Conv4dGeometry, tile_y: int, tile_z: int, shared_bytes: Callable[[int, int], int],
    shared_memory_limit: int,
) -> tuple[int, int, int]:
    """Halve tile_y, then tile_z, until the stage fits the shared-memory budget: 48 KiB when a
    1x1 tile fits in it, else the device's opt-in limit ``shared_memory_limit``."""
    budget = CONV4D_SHARED_MEMORY_BUDGET
    if shared_bytes(1, 1) > budget:
        budget = max(budget, shared_memory_limit)
    while True:
        needed = shared_bytes(tile_y, tile_z)
        if needed <= budget:
            return tile_y, tile_z, needed
        if tile_y > 1:
            tile_y //= 2
        elif tile_z > 1:
            tile_z //= 2
        else:
            raise SharedMemoryLimitError(
                f"{op}: kernel {geometry.kernel_size} with stride {geometry.stride} and dilation "
                f"{geometry.dilation} needs {needed} bytes of shared memory even for a 1x1 tile "
                f"(the device allows {budget}); use the generic conv4d path"
            )


def _initial_tile(extent_y: int, extent_z: int, max_threads: int) -> tuple[int, int]:
    tile_z = min(CONV4D_MAX_TILE_Z, _next_power_of_two(extent_z))
    tile_y = min(_next_power_of_two(extent_y), max(1, max_threads // tile_z))
    return tile_y, tile_z


def plan_conv4d_forward(geometry: Conv4dGeometry, dtype: Any, shared_memory_limit: int = DEFAULT_SHARED_MEMORY_OPTIN) -> LaunchPlan:
    """Plan for y = conv4d(x, w): inputs ``x``, ``w``; output ``y``."""
    op = "conv4d_forward"
    suffix = _conv_dtype_suffix(op, dtype)
    dtype = np.dtype(dtype)
    acc_size = _CONV_ACCUMULATE[dtype].itemsize
    g = geometry
    k_t, k_x, k_y, k_z = g.kernel_size
    taps = k_x * k_y * k_z

    def shared_bytes(tile_y: int, tile_z: int) -> int:
        rows = (tile_y - 1) * g.stride[2] + (k_y - 1) * g.dilation[2] + 1
        cols = (tile_z - 1) * g.stride[3] + (k_z - 1) * g.dilation[3] + 1
        # weights are staged in the accumulation type, the input patch in the storage type
        return taps * CONV4D_CHANNEL_TILE * acc_size + k_x * rows * cols * dtype.itemsize

    tile_y, tile_z = _initial_tile(g.out_size[2], g.out_size[3], CONV4D_MAX_THREADS)
    tile_y, tile_z, shared = _shrink_tile_to_budget(op, g, tile_y, tile_z, shared_bytes, shared_memory_limit)
    empty = math.prod(g.y_shape) == 0 or g.in_channels == 0
    buffers = {"y": BufferSpec(g.y_shape, dtype, 0.0 if empty else None)}
    launches: tuple[KernelLaunch, ...] = ()
    if not empty:
        spatial_tiles = _ceil_div(g.out_size[2], tile_y) * _ceil_div(g.out_size[3], tile_z)
        channel_tiles = _ceil_div(g.out_channels, CONV4D_CHANNEL_TILE)
        grid = (g.batch * g.out_size[0] * g.out_size[1] * spatial_tiles, channel_tiles, 1)
        _check_grid(op, grid)
        launches = (
            KernelLaunch(CONV4D_SOURCE, f"conv4d_forward_{suffix}", grid, (tile_z, tile_y, 1), shared,
                         ("x", "w", "y", *g.kernel_args())),
        )
    return LaunchPlan(op, g.describe(dtype), buffers, launches, ("y",))


def plan_conv4d_grad_input(geometry: Conv4dGeometry, dtype: Any, shared_memory_limit: int = DEFAULT_SHARED_MEMORY_OPTIN) -> LaunchPlan:
    """Plan for dx = d conv4d / dx: inputs ``dy``, ``w``; output ``dx``."""
    op = "conv4d_grad_input"
    suffix = _conv_dtype_suffix(op, dtype)
    dtype = np.dtype(dtype)
    acc_size = _CONV_ACCUMULATE[dtype].itemsize
    g = geometry
    k_t, k_x, k_y, k_z = g.kernel_size
    taps = k_x * k_y * k_z

    def shared_bytes(tile_y: int, tile_z: int) -> int:
        rows = (tile_y - 1 + (k_y - 1) * g.dilation[2]) // g.stride[2] + 2
        cols = (tile_z - 1 + (k_z - 1) * g.dilation[3]) // g.stride[3] + 2
        return taps * CONV4D_CHANNEL_TILE * acc_size + k_x * rows * cols * dtype.itemsize

    tile_y, tile_z = _initial_tile(g.in_size[2], g.in_size[3], CONV4D_MAX_THREADS)
    tile_y, tile_z, shared = _shrink_tile_to_budget(op, g, tile_y, tile_z, shared_bytes, shared_memory_limit)
    empty = math.prod(g.x_shape) == 0 or g.out_channels == 0
    buffers = {"dx": BufferSpec(g.x_shape, dtype, 0.0 if empty else None)}
    launches: tuple[KernelLaunch, ...] = ()
    if not empty:
        grid = (
            g.batch * g.in_size[0] * g.in_size[1] * _ceil_div(g.in_size[2], tile_y) * _ceil_div(g.in_size[3], tile_z),
            _ceil_div(g.in_channels, CONV4D_CHANNEL_TILE),
            1,
        )
        _check_grid(op, grid)
        launches = (
            KernelLaunch(CONV4D_SOURCE, f"conv4d_grad_input_{suffix}", grid, (tile_z, tile_y, 1), shared,
                         ("dy", "w", "dx", *g.kernel_args())),
        )
    return LaunchPlan(op, g.describe(dtype), buffers, launches, ("dx",))


def plan_conv4d_grad_weight(
    geometry: Conv4dGeometry, dtype: Any, target_blocks: int = CONV4D_GRAD_WEIGHT_TARGET_BLOCKS,
    shared_memory_limit: int = DEFAULT_SHARED_MEMORY_OPTIN,
) -> LaunchPlan:
    """Plan for dw = d conv4d / dw: inputs ``x``, ``dy``; output ``dw`` (zero-filled, summed atomically)."""
    op = "conv4d_grad_weight"
    suffix = _conv_dtype_suffix(op, dtype)
    dtype = np.dtype(dtype)
    acc_size = _CONV_ACCUMULATE[dtype].itemsize
    g = geometry
    k_t, k_x, k_y, k_z = g.kernel_size
    taps = k_x * k_y * k_z
    tap_lanes = min(CONV4D_GRAD_WEIGHT_MAX_TAP_LANES, taps)
    tap_chunks = _ceil_div(taps, tap_lanes)
    planes = min(k_x, (tap_lanes - 1) // (k_y * k_z) + 2)

    def shared_bytes(tile_y: int, tile_z: int) -> int:
        rows = (tile_y - 1) * g.stride[2] + (k_y - 1) * g.dilation[2] + 1
        cols = (tile_z - 1) * g.stride[3] + (k_z - 1) * g.dilation[3] + 1
        # dy staged in the accumulation type, the x patch in the storage type; the row
        # partials reuse the same memory afterwards
        # (dy rows padded to CONV4D_CHANNEL_TILE + 1 values against bank conflicts)
        stage = tile_y * tile_z * (CONV4D_CHANNEL_TILE + 1) * acc_size + planes * rows * cols * dtype.itemsize
        reduction = tile_y * tap_lanes * CONV4D_CHANNEL_TILE * acc_size
        return max(stage, reduction)

    max_rows = max(1, CONV4D_MAX_THREADS // tap_lanes)
    tile_z = min(CONV4D_MAX_TILE_Z, _next_power_of_two(g.out_size[3]))
    tile_y = min(_next_power_of_two(g.out_size[2]), 1 << (max_rows.bit_length() - 1))
    tile_y, tile_z, shared = _shrink_tile_to_budget(op, g, tile_y, tile_z, shared_bytes, shared_memory_limit)
    # float16: the kernel sums into a float32 buffer, rounded to float16 once by a second launch
    summed = "dw" if _CONV_ACCUMULATE[dtype] == dtype else "dw_sum"
    buffers = {summed: BufferSpec(g.w_shape, _CONV_ACCUMULATE[dtype], 0.0)}
    launches: tuple[KernelLaunch, ...] = ()
    spatial_tiles = _ceil_div(g.out_size[2], tile_y) * _ceil_div(g.out_size[3], tile_z)
    tiles_total = g.batch * g.out_size[0] * g.out_size[1] * spatial_tiles
    if math.prod(g.w_shape) > 0 and tiles_total > 0:
        slices = g.in_channels * k_t * tap_chunks
        channel_tiles = _ceil_div(g.out_channels, CONV4D_CHANNEL_TILE)
        split = max(1, min(tiles_total, _ceil_div(target_blocks, slices * channel_tiles)))
        grid = (split, slices, channel_tiles)
        _check_grid(op, grid)
        launches = (
            KernelLaunch(CONV4D_SOURCE, f"conv4d_grad_weight_{suffix}", grid, (tap_lanes, tile_y, 1), shared,
                         ("x", "dy", summed, *g.kernel_args(), np.int32(tile_z))),
        )
        if summed != "dw":
            count = math.prod(g.w_shape)
            round_grid = (min(_ceil_div(count, CONV4D_ROUND_THREADS), CONV4D_GRAD_WEIGHT_TARGET_BLOCKS), 1, 1)
            launches += (
                KernelLaunch(CONV4D_SOURCE, CONV4D_ROUND_KERNEL, round_grid, (CONV4D_ROUND_THREADS, 1, 1), 0,
                             (summed, "dw", np.int64(count))),
            )
    if summed != "dw":  # left uninitialised (NaN-poisoned in the emulation) when the rounding writes it
        buffers["dw"] = BufferSpec(g.w_shape, dtype, None if launches else 0.0)
    return LaunchPlan(op, g.describe(dtype), buffers, launches, ("dw",))


# ---------------------------------------------------------------------------------------------
# Attention


@dataclass(frozen=True)
class AttentionGeometry:
    """Sizes of one fused attention problem, q (BH, L, D), k and v (BH, S, D)."""

    batch_heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    dtype: np.dtype
    scale: float
    is_causal: bool
    mask_shape: tuple[int, int, int] | None
    dropout: tuple[float, int, int] | None = None  # (p, seed, offset) of the Philox keep mask

    @property
    def head_dim_bucket(self) -> int:
        return next(b for b in ATTENTION_HEAD_DIM_BUCKETS if self.head_dim <= b)

    @property
    def suffix(self) -> str:
        return _ATTENTION_DTYPES[self.dtype]

    def mask_args(self) -> tuple[Any, ...]:
        """Pointer name, element strides (0 where broadcast) and the has_mask flag."""
        if self.mask_shape is None:
            return ("mask_placeholder", np.int64(0), np.int64(0), np.int64(0), np.int32(0))
        bh, rows, cols = self.mask_shape
        strides = (rows * cols if bh > 1 else 0, cols if rows > 1 else 0, 1 if cols > 1 else 0)
        return ("mask", *(np.int64(s) for s in strides), np.int32(1))

    def shape_args(self) -> tuple[Any, ...]:
        """Sizes, scale, causal flag and the dropout arguments (threshold, 1/(1-p), seed and offset
        as the int64 of their 64-bit patterns, flag)."""
        args = (np.int32(self.seq_q), np.int32(self.seq_k), np.int32(self.head_dim), np.float32(self.scale),
                np.int32(int(self.is_causal)))
        if self.dropout is None:
            return args + (np.int64(0), np.float32(1.0), np.int64(0), np.int64(0), np.int32(0))
        p, seed, offset = self.dropout
        return args + (np.int64(dropout_threshold(p)), np.float32(1.0 / (1.0 - p)), _as_int64(seed),
                       _as_int64(offset), np.int32(1))

    def describe(self) -> str:
        mask = "no mask" if self.mask_shape is None else f"mask {self.mask_shape}"
        drop = "" if self.dropout is None else f", dropout_p={self.dropout[0]}"
        return (
            f"q ({self.batch_heads}, {self.seq_q}, {self.head_dim}), k and v ({self.batch_heads}, {self.seq_k}, "
            f"{self.head_dim}), {self.dtype.name}, {mask}, is_causal={self.is_causal}{drop}"
        )


def _as_int64(value: int) -> np.int64:
    """The int64 with the bit pattern of the 64-bit unsigned ``value`` (kernels read it unsigned)."""
    value = int(value) % (1 << 64)
    return np.int64(value - (1 << 64) if value >= 1 << 63 else value)


def attention_geometry(
    op: str,
    q_shape: Sequence[int],
    k_shape: Sequence[int],
    v_shape: Sequence[int],
    dtype: Any,
    scale: float,
    is_causal: bool,
    mask_shape: Sequence[int] | None,
    dropout: tuple[float, int, int] | None = None,
) -> AttentionGeometry:
    """Validate an attention problem; ``mask_shape`` must broadcast to (BH, L, S); ``dropout`` is
    None or ``(p, seed, offset)`` with 0 <= p < 1."""
    q_shape, k_shape, v_shape = (tuple(int(s) for s in shape) for shape in (q_shape, k_shape, v_shape))
    consistent = len(q_shape) == 3 and len(k_shape) == 3 and k_shape == v_shape
    if not consistent or q_shape[0] != k_shape[0] or q_shape[2] != k_shape[2]:
        raise ValueError(
            f"{op}: expected q (BH, L, D), k (BH, S, D) and v (BH, S, D), got q {q_shape}, k {k_shape}, v {v_shape}"
        )
    dtype = np.dtype(dtype)
    if dtype not in _ATTENTION_DTYPES:
        raise TypeError(f"{op}: the CUDA kernels support float32 and float16, got {dtype.name}")
    batch_heads, seq_q, head_dim = q_shape
    seq_k = k_shape[1]
    if head_dim > ATTENTION_HEAD_DIM_BUCKETS[-1]:
        raise ValueError(f"{op}: head dimension {head_dim} exceeds the kernel maximum {ATTENTION_HEAD_DIM_BUCKETS[-1]}")
    compact_mask: tuple[int, int, int] | None = None
    if mask_shape is not None:
        mask_shape = tuple(int(s) for s in mask_shape)
        if len(mask_shape) > 3:
            raise ValueError(f"{op}: mask of shape {mask_shape} must have at most 3 dimensions (BH, L, S)")
        padded = (1,) * (3 - len(mask_shape)) + mask_shape
        if any(m not in (1, full) for m, full in zip(padded, (batch_heads, seq_q, seq_k))):
            raise ValueError(f"{op}: mask of shape {mask_shape} does not broadcast to (BH, L, S) = "
                             f"{(batch_heads, seq_q, seq_k)}")
        compact_mask = padded  # type: ignore[assignment]
    if dropout is not None:
        p, seed, offset = dropout
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"{op}: dropout probability must be in [0, 1), got {p}")
        dropout = (float(p), int(seed), int(offset))
    return AttentionGeometry(batch_heads, seq_q, seq_k, head_dim, dtype, float(scale), bool(is_causal), compact_mask,
                             dropout)


def _attention_buffers(g: AttentionGeometry) -> dict[str, BufferSpec]:
    return {} if g.mask_shape is not None else {"mask_placeholder": BufferSpec((1,), np.dtype(np.float32), 0.0)}


def _attention_shared_bytes(head_dim: int, row_tiles: int, extra_floats: int = 0) -> int:
    """``row_tiles`` float tiles of 64 rows (stride: D padded to 4, plus 4), one 64 x 68 score tile, extras."""
    tile_stride = (head_dim + 3) // 4 * 4 + 4
    return 4 * (row_tiles * ATTENTION_TILE * tile_stride + ATTENTION_TILE * (ATTENTION_TILE + 4) + extra_floats)


def plan_flash_attention_forward(g: AttentionGeometry) -> LaunchPlan:
    """Plan for (o, lse) = attention(q, k, v): inputs ``q``, ``k``, ``v`` (and ``mask``)."""
    op = "flash_attention_forward"
    buffers = _attention_buffers(g)
    empty = g.batch_heads * g.seq_q == 0
    no_keys = g.seq_k == 0
    buffers["o"] = BufferSpec((g.batch_heads, g.seq_q, g.head_dim), g.dtype, 0.0 if no_keys else None)
    buffers["lse"] = BufferSpec((g.batch_heads, g.seq_q), np.dtype(np.float32), -np.inf if no_keys else None)
    launches: tuple[KernelLaunch, ...] = ()
    if not (empty or no_keys):
        grid = (g.batch_heads * _ceil_div(g.seq_q, ATTENTION_TILE), 1, 1)
        _check_grid(op, grid)
        launches = (
            KernelLaunch(ATTENTION_SOURCE, f"flash_attention_forward_{g.suffix}_hd{g.head_dim_bucket}", grid,
                         (ATTENTION_THREADS, 1, 1), _attention_shared_bytes(g.head_dim, 3),
                         ("q", "k", "v", *g.mask_args(), "o", "lse", *g.shape_args())),
        )
    return LaunchPlan(op, g.describe(), buffers, launches, ("o", "lse"))


def plan_flash_attention_backward(g: AttentionGeometry) -> LaunchPlan:
    """Plan for (dq, dk, dv): inputs ``q``, ``k``, ``v``, ``o``, ``lse``, ``do`` (and ``mask``)."""
    op = "flash_attention_backward"
    buffers = _attention_buffers(g)
    rows = g.batch_heads * g.seq_q
    keys = g.batch_heads * g.seq_k
    buffers["delta"] = BufferSpec((g.batch_heads, g.seq_q), np.dtype(np.float32))
    buffers["dq"] = BufferSpec((g.batch_heads, g.seq_q, g.head_dim), g.dtype, 0.0 if keys == 0 else None)
    buffers["dk"] = BufferSpec((g.batch_heads, g.seq_k, g.head_dim), g.dtype, 0.0 if rows == 0 else None)
    buffers["dv"] = BufferSpec((g.batch_heads, g.seq_k, g.head_dim), g.dtype, 0.0 if rows == 0 else None)
    launches: tuple[KernelLaunch, ...] = ()
    if rows > 0 and keys > 0:
        bucket = g.head_dim_bucket
        preprocess_grid = (_ceil_div(rows, ATTENTION_PREPROCESS_ROWS_PER_BLOCK), 1, 1)
        dkdv_grid = (g.batch_heads * _ceil_div(g.seq_k, ATTENTION_TILE), 1, 1)
        dq_grid = (g.batch_heads * _ceil_div(g.seq_q, ATTENTION_TILE), 1, 1)
        for grid in (preprocess_grid, dkdv_grid, dq_grid):
            _check_grid(op, grid)
        block = (ATTENTION_THREADS, 1, 1)
        common = ("q", "k", "v", *g.mask_args(), "do", "lse", "delta")
        launches = (
            KernelLaunch(ATTENTION_SOURCE, f"flash_attention_backward_preprocess_{g.suffix}", preprocess_grid, block, 0,
                         ("o", "do", "delta", np.int64(rows), np.int32(g.head_dim))),
            KernelLaunch(ATTENTION_SOURCE, f"flash_attention_backward_dkdv_{g.suffix}_hd{bucket}", dkdv_grid, block,
                         _attention_shared_bytes(g.head_dim, 4, 2 * ATTENTION_TILE),
                         (*common, "dk", "dv", *g.shape_args())),
            KernelLaunch(ATTENTION_SOURCE, f"flash_attention_backward_dq_{g.suffix}_hd{bucket}", dq_grid, block,
                         _attention_shared_bytes(g.head_dim, 4), (*common, "dq", *g.shape_args())),
        )
    return LaunchPlan(op, g.describe(), buffers, launches, ("dq", "dk", "dv"))


# ---------------------------------------------------------------------------------------------
# Array preparation shared by the CuPy and host executors (``xp`` is cupy or numpy).


def prepare_conv4d_forward(xp, x, w, stride, padding, dilation,
                           shared_memory_limit: int = DEFAULT_SHARED_MEMORY_OPTIN) -> tuple[LaunchPlan, dict[str, Any]]:
    geometry = conv4d_geometry("conv4d_forward", x.shape, w.shape, stride, padding, dilation)
    _check_same_dtype("conv4d_forward", x=x, w=w)
    return plan_conv4d_forward(geometry, x.dtype, shared_memory_limit), {"x": xp.ascontiguousarray(x), "w": xp.ascontiguousarray(w)}


def prepare_conv4d_grad_input(xp, dy, w, x_shape, stride, padding, dilation,
                              shared_memory_limit: int = DEFAULT_SHARED_MEMORY_OPTIN) -> tuple[LaunchPlan, dict[str, Any]]:
    geometry = conv4d_geometry("conv4d_grad_input", x_shape, w.shape, stride, padding, dilation)
    _check_same_dtype("conv4d_grad_input", dy=dy, w=w)
    _check_shape("conv4d_grad_input", "dy", dy.shape, geometry.y_shape)
    return plan_conv4d_grad_input(geometry, dy.dtype, shared_memory_limit), {"dy": xp.ascontiguousarray(dy), "w": xp.ascontiguousarray(w)}


def prepare_conv4d_grad_weight(xp, x, dy, w_shape, stride, padding, dilation,
                               shared_memory_limit: int = DEFAULT_SHARED_MEMORY_OPTIN) -> tuple[LaunchPlan, dict[str, Any]]:
    geometry = conv4d_geometry("conv4d_grad_weight", x.shape, w_shape, stride, padding, dilation)
    _check_same_dtype("conv4d_grad_weight", x=x, dy=dy)
    _check_shape("conv4d_grad_weight", "dy", dy.shape, geometry.y_shape)
    return plan_conv4d_grad_weight(geometry, x.dtype, shared_memory_limit=shared_memory_limit), {"x": xp.ascontiguousarray(x), "dy": xp.ascontiguousarray(dy)}


def prepare_attention_mask(xp, mask, geometry_mask_shape):
    """Additive float32 mask in its compact (non-broadcast) 3-D form; booleans become 0 / -inf."""
    if mask.dtype == np.bool_:
        mask = xp.where(mask, xp.float32(0.0), xp.float32(-np.inf))
    return xp.ascontiguousarray(mask.astype(xp.float32, copy=False).reshape(geometry_mask_shape))


def prepare_flash_attention_forward(xp, q, k, v, scale, is_causal, mask,
                                    dropout=None) -> tuple[LaunchPlan, dict[str, Any]]:
    op = "flash_attention_forward"
    _check_same_dtype(op, q=q, k=k, v=v)
    geometry = attention_geometry(op, q.shape, k.shape, v.shape, q.dtype, scale, is_causal,
                                  None if mask is None else mask.shape, dropout)
    inputs = {"q": xp.ascontiguousarray(q), "k": xp.ascontiguousarray(k), "v": xp.ascontiguousarray(v)}
    if mask is not None:
        inputs["mask"] = prepare_attention_mask(xp, mask, geometry.mask_shape)
    return plan_flash_attention_forward(geometry), inputs


def prepare_flash_attention_backward(
    xp, q, k, v, o, lse, do, scale, is_causal, mask, dropout=None
) -> tuple[LaunchPlan, dict[str, Any]]:
    op = "flash_attention_backward"
    _check_same_dtype(op, q=q, k=k, v=v, o=o, do=do)
    geometry = attention_geometry(op, q.shape, k.shape, v.shape, q.dtype, scale, is_causal,
                                  None if mask is None else mask.shape, dropout)
    _check_shape(op, "o", o.shape, q.shape)
    _check_shape(op, "do", do.shape, q.shape)
    _check_shape(op, "lse", lse.shape, q.shape[:2])
    inputs = {
        "q": xp.ascontiguousarray(q), "k": xp.ascontiguousarray(k), "v": xp.ascontiguousarray(v),
        "o": xp.ascontiguousarray(o), "do": xp.ascontiguousarray(do),
        "lse": xp.ascontiguousarray(lse.astype(xp.float32, copy=False)),
    }
    if mask is not None:
        inputs["mask"] = prepare_attention_mask(xp, mask, geometry.mask_shape)
    return plan_flash_attention_backward(geometry), inputs


def _check_same_dtype(op: str, **arrays) -> None:
    dtypes = {name: np.dtype(a.dtype) for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{name} {dtype.name}" for name, dtype in dtypes.items())
        raise TypeError(f"{op}: all inputs must share one dtype, got {listing}")


def _check_shape(op: str, name: str, shape: Sequence[int], expected: Sequence[int]) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{op}: expected {name} of shape {tuple(expected)}, got {tuple(shape)}")
