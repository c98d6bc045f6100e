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
    """The tiles whose shared memory fits the device's opt-in limit (all of them on sm_80+).

    >>> fitting_tiles("tf32", 48 * 1024)
    ((32, 32), (64, 32), (64, 64))
    """
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
    bfloat16 bit patterns where the array library has no bfloat16, as CuPy). PyTorch's analogue
    is cuDNN's implicit-GEMM convolution algorithm (torch.backends.cudnn), for conv3d.

    >>> g = conv4d_geometry("conv4d", (2, 3, 4, 4, 4, 4), (5, 3, 3, 3, 3, 3), 1, 1, 1)
    >>> gemm, rounding = plan_conv4d_mma("grad_weight", g, "bf16").launches
    >>> gemm.name, gemm.grid, rounding.name
    ('conv4d_mma_grad_weight_bf16_64x64', (1, 4, 16), 'conv4d_mma_round_f32_to_bf16')
    """
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
    are ml_dtypes.bfloat16 arrays (NumPy) or uint16 arrays of bfloat16 bit patterns (CuPy).

    >>> x = np.zeros((1, 2, 3, 3, 3, 3), np.float16); w = np.zeros((4, 2, 3, 3, 3, 3), np.float16)
    >>> plan, inputs = prepare_conv4d_mma(np, "forward", x, w, None, 1, 1, 1, "f16")
    >>> plan.launches[0].name, sorted(inputs), plan.buffers["y"].shape
    ('conv4d_mma_forward_f16_64x64', ['w', 'x'], (1, 4, 3, 3, 3, 3))
    """
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


# ---------------------------------------------------------------------------------------------
# Attention on tensor cores (attention_mma.cu): float16/bfloat16, head dims up to 256, GQA.

ATTENTION_MMA_THREADS = 128
ATTENTION_MMA_ROWS = 64  # queries per forward/dq block, keys per dkdv block
# Opt-in shared memory assumed when planning without a device: A100's 163 KiB (H100: 227 KiB);
# head dim 256 needs more than the 99 KiB of sm_86/sm_89 GPUs.
ATTENTION_MMA_SHARED_LIMIT = 163 * 1024


def attention_mma_head_dim(op: str, head_dim: int) -> int:
    """The compiled head-dim bucket (32, 64, 128 or 256) a head dimension runs in (zero-padded).

    >>> attention_mma_head_dim("attention", 24), attention_mma_head_dim("attention", 200)
    (32, 256)
    """
    from .launch_config import ATTENTION_MMA_HEAD_DIMS

    for bucket in ATTENTION_MMA_HEAD_DIMS:
        if head_dim <= bucket:
            return bucket
    raise ValueError(f"{op}: head dimension {head_dim} exceeds the tensor-core kernel maximum "
                     f"{ATTENTION_MMA_HEAD_DIMS[-1]}")


def attention_mma_shared_bytes(kernel: str, bucket: int) -> int:
    """Dynamic shared memory of a block: resident 64-row tiles plus two stages of streamed K/V
    (forward, dq) or Q/dO (dkdv) tiles of 64 rows (32 for head dim 256), rows padded by 8.

    >>> attention_mma_shared_bytes("forward", 64), attention_mma_shared_bytes("backward_dkdv", 256)
    (46080, 135680)
    """
    stride = bucket + 8
    inner = 64 if bucket <= 128 else 32
    resident = ATTENTION_MMA_ROWS if kernel == "forward" else 2 * ATTENTION_MMA_ROWS
    stats = 2 * 2 * inner * 4 if kernel == "backward_dkdv" else 0
    return (resident + 2 * 2 * inner) * stride * 2 + stats


def _attention_mma_geometry(op: str, q, k, v, scale, is_causal, mask_shape, dropout, precision):
    from .launch_config import AttentionGeometry

    q_shape, k_shape, v_shape = (tuple(int(s) for s in a.shape) for a in (q, k, v))
    if len(q_shape) != 3 or len(k_shape) != 3 or k_shape != v_shape or q_shape[2] != k_shape[2]:
        raise ValueError(f"{op}: expected q (B*Hq, L, D), k and v (B*Hkv, S, D), got q {q_shape}, k {k_shape}, "
                         f"v {v_shape}")
    if k_shape[0] == 0 or q_shape[0] % k_shape[0] != 0:
        raise ValueError(f"{op}: {q_shape[0]} query heads cannot share {k_shape[0]} key/value heads evenly "
                         "(grouped-query attention needs B*Hq to be a multiple of B*Hkv)")
    _check_same_dtype(op, q=q, k=k, v=v)
    _check_precision_dtype(op, precision, q.dtype)
    batch_heads, seq_q, head_dim = q_shape
    seq_k = k_shape[1]
    attention_mma_head_dim(op, head_dim)
    compact = None
    if mask_shape is not None:
        mask_shape = tuple(int(s) for s in mask_shape)
        padded = (1,) * (3 - len(mask_shape)) + mask_shape
        if len(mask_shape) > 3 or any(m not in (1, n) for m, n in zip(padded, (batch_heads, seq_q, seq_k))):
            raise ValueError(f"{op}: mask of shape {mask_shape} does not broadcast to (B*Hq, L, S) = "
                             f"{(batch_heads, seq_q, seq_k)}")
        compact = padded
    if dropout is not None:
        p, seed, offset = dropout
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"{op}: dropout probability must be in [0, 1), got {p}")
        dropout = (float(p), int(seed), int(offset))
    geometry = AttentionGeometry(batch_heads, seq_q, seq_k, head_dim, np.dtype(q.dtype), float(scale), bool(is_causal),
                                 compact, dropout)
    return geometry, batch_heads // k_shape[0], k_shape[0]


def prepare_attention_mma_forward(xp, q, k, v, scale, is_causal, mask=None, dropout=None, precision="f16",
                                  shared_memory_limit: int = ATTENTION_MMA_SHARED_LIMIT):
    """Plan the tensor-core attention forward: ``(o, lse)`` of q (B*Hq, L, D), k, v (B*Hkv, S, D);
    torch.nn.functional.scaled_dot_product_attention (flash backend, ``enable_gqa``).

    >>> q = np.zeros((4, 70, 64), np.float16); kv = np.zeros((2, 70, 64), np.float16)
    >>> plan, _ = prepare_attention_mma_forward(np, q, kv, kv, 0.125, True)
    >>> launch = plan.launches[0]
    >>> launch.name, launch.grid, launch.shared_mem_bytes, int(launch.args[-1])
    ('attention_mma_forward_f16_hd64', (8, 1, 1), 46080, 2)
    """
    from .launch_config import prepare_attention_mask

    op = "attention_mma_forward"
    g, group, _ = _attention_mma_geometry(op, q, k, v, scale, is_causal, None if mask is None else mask.shape,
                                          dropout, precision)
    bucket = attention_mma_head_dim(op, g.head_dim)
    buffers = {} if mask is not None else {"mask_placeholder": BufferSpec((1,), np.dtype(np.float32), 0.0)}
    no_keys = g.seq_k == 0
    buffers["o"] = BufferSpec((g.batch_heads, g.seq_q, g.head_dim), g.dtype, 0.0 if no_keys else None)
    buffers["lse"] = BufferSpec((g.batch_heads, g.seq_q), np.dtype(np.float32), -np.inf if no_keys else None)
    launches: tuple[KernelLaunch, ...] = ()
    if g.batch_heads * g.seq_q > 0 and not no_keys:
        shared = _attention_shared(op, "forward", bucket, shared_memory_limit)
        grid = (g.batch_heads * _ceil_div(g.seq_q, ATTENTION_MMA_ROWS), 1, 1)
        _check_grid(op, grid)
        launches = (KernelLaunch("attention_mma.cu", f"attention_mma_forward_{precision}_hd{bucket}", grid,
                                 (ATTENTION_MMA_THREADS, 1, 1), shared,
                                 ("q", "k", "v", *g.mask_args(), "o", "lse", *g.shape_args(), np.int32(group))),)
    inputs = {"q": xp.ascontiguousarray(q), "k": xp.ascontiguousarray(k), "v": xp.ascontiguousarray(v)}
    if mask is not None:
        inputs["mask"] = prepare_attention_mask(xp, mask, g.mask_shape)
    description = g.describe() + f", {precision} tensor cores, {group} query heads per key/value head"
    return LaunchPlan(op, description, buffers, launches, ("o", "lse")), inputs


def prepare_attention_mma_backward(xp, q, k, v, o, lse, do, scale, is_causal, mask=None, dropout=None,
                                   precision="f16", shared_memory_limit: int = ATTENTION_MMA_SHARED_LIMIT):
    """Plan the tensor-core attention backward: ``(dq, dk, dv)``; dk and dv sum over the query
    heads that share each key/value head (the backward of scaled_dot_product_attention).

    >>> q = np.zeros((4, 70, 64), np.float16); kv = np.zeros((2, 70, 64), np.float16)
    >>> plan, _ = prepare_attention_mma_backward(np, q, kv, kv, q, np.zeros((4, 70)), q, 0.125, True)
    >>> delta, dkdv, dq = plan.launches
    >>> delta.name, dkdv.name, dq.name, plan.buffers["dk"].shape
    ('attention_mma_delta_f16', 'attention_mma_backward_dkdv_f16_hd64', 'attention_mma_backward_dq_f16_hd64', (2, 70, 64))
    """
    from .launch_config import prepare_attention_mask

    op = "attention_mma_backward"
    g, group, kv_heads = _attention_mma_geometry(op, q, k, v, scale, is_causal, None if mask is None else mask.shape,
                                                 dropout, precision)
    _check_same_dtype(op, q=q, o=o, do=do)
    _check_shape(op, "o", o.shape, q.shape)
    _check_shape(op, "do", do.shape, q.shape)
    _check_shape(op, "lse", lse.shape, q.shape[:2])
    bucket = attention_mma_head_dim(op, g.head_dim)
    buffers = {} if mask is not None else {"mask_placeholder": BufferSpec((1,), np.dtype(np.float32), 0.0)}
    rows, keys = g.batch_heads * g.seq_q, kv_heads * g.seq_k
    buffers["delta"] = BufferSpec((g.batch_heads, g.seq_q), np.dtype(np.float32))
    buffers["dq"] = BufferSpec((g.batch_heads, g.seq_q, g.head_dim), g.dtype, 0.0 if keys == 0 else None)
    buffers["dk"] = BufferSpec((kv_heads, g.seq_k, g.head_dim), g.dtype, 0.0 if rows == 0 else None)
    buffers["dv"] = BufferSpec((kv_heads, g.seq_k, g.head_dim), g.dtype, 0.0 if rows == 0 else None)
    launches: tuple[KernelLaunch, ...] = ()
    if rows > 0 and keys > 0:
        block = (ATTENTION_MMA_THREADS, 1, 1)
        common = ("q", "k", "v", *g.mask_args(), "do", "lse", "delta")
        tail = (*g.shape_args(), np.int32(group))
        grids = {"delta": (_ceil_div(rows, ATTENTION_MMA_THREADS), 1, 1),
                 "dkdv": (kv_heads * _ceil_div(g.seq_k, ATTENTION_MMA_ROWS), 1, 1),
                 "dq": (g.batch_heads * _ceil_div(g.seq_q, ATTENTION_MMA_ROWS), 1, 1)}
        for grid in grids.values():
            _check_grid(op, grid)
        launches = (
            KernelLaunch("attention_mma.cu", f"attention_mma_delta_{precision}", grids["delta"], block, 0,
                         ("o", "do", "delta", np.int64(rows), np.int32(g.head_dim))),
            KernelLaunch("attention_mma.cu", f"attention_mma_backward_dkdv_{precision}_hd{bucket}", grids["dkdv"],
                         block, _attention_shared(op, "backward_dkdv", bucket, shared_memory_limit),
                         (*common, "dk", "dv", *tail)),
            KernelLaunch("attention_mma.cu", f"attention_mma_backward_dq_{precision}_hd{bucket}", grids["dq"], block,
                         _attention_shared(op, "backward_dq", bucket, shared_memory_limit), (*common, "dq", *tail)),
        )
    inputs = {name: xp.ascontiguousarray(a) for name, a in (("q", q), ("k", k), ("v", v), ("o", o), ("do", do))}
    inputs["lse"] = xp.ascontiguousarray(lse.astype(xp.float32, copy=False))
    if mask is not None:
        inputs["mask"] = prepare_attention_mask(xp, mask, g.mask_shape)
    description = g.describe() + f", {precision} tensor cores, {group} query heads per key/value head"
    return LaunchPlan(op, description, buffers, launches, ("dq", "dk", "dv")), inputs


def _attention_shared(op: str, kernel: str, bucket: int, limit: int) -> int:
    needed = attention_mma_shared_bytes(kernel, bucket)
    if needed > limit:
        raise ValueError(f"{op}: head dim bucket {bucket} needs {needed} bytes of shared memory per block, the "
                         f"device allows {limit}")
    return needed
