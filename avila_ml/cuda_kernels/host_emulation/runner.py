"""Run the CUDA launch plans on the host-emulated kernels, with NumPy arrays in and out.

The functions here take and return NumPy arrays and execute exactly the plans the CuPy launcher
executes (same grid, block, shared memory and arguments), so tests of these functions test the
GPU code path's indexing and tiling. Memory is checked the way a sanitizer would check it:

* every buffer sits between guard zones filled with 0xFF bytes; a kernel that writes outside its
  buffer is reported by name (reads outside an input pick up NaN and spoil the result);
* buffers the plan leaves uninitialised start as NaN, so an output element a kernel forgets to
  write shows up as NaN rather than as a plausible zero;
* inputs must come back bit-for-bit unchanged.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from ..launch_config import (
    KernelLaunch,
    LaunchPlan,
    prepare_conv4d_forward,
    prepare_conv4d_grad_input,
    prepare_conv4d_grad_weight,
    prepare_flash_attention_backward,
    prepare_flash_attention_forward,
)
from ..tensor_core import (
    DEFAULT_TILE,
    prepare_attention_mma_backward,
    prepare_attention_mma_forward,
    prepare_conv4d_mma,
)
from .build import load_host_library

GUARD_ELEMENTS = 64
_SCALAR_CTYPES = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


class HostEmulationError(RuntimeError):
    """A host-emulated kernel failed, or broke a memory rule the GPU would not report reliably."""


class _GuardedBuffer:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype, fill: float | None = None,
                 source: np.ndarray | None = None):
        self.name = name
        count = math.prod(shape)
        self.storage = np.empty(count + 2 * GUARD_ELEMENTS, dtype=dtype)
        self.storage.view(np.uint8)[...] = 0xFF
        self.array = self.storage[GUARD_ELEMENTS:GUARD_ELEMENTS + count].reshape(shape)
        self.original: np.ndarray | None = None
        if source is not None:
            self.array[...] = source
            self.original = self.array.copy()
        elif fill is not None:
            self.array[...] = fill

    @property
    def address(self) -> int:
        return self.storage.ctypes.data + GUARD_ELEMENTS * self.storage.itemsize

    def check(self, kernel: str, plan: LaunchPlan) -> None:
        raw = self.storage.view(np.uint8)
        guard_bytes = GUARD_ELEMENTS * self.storage.itemsize
        if (raw[:guard_bytes] != 0xFF).any() or (raw[raw.size - guard_bytes:] != 0xFF).any():
            raise HostEmulationError(f"{kernel} wrote outside buffer '{self.name}' ({plan.description})")
        if self.original is not None and self.original.tobytes() != self.array.tobytes():
            raise HostEmulationError(f"{kernel} modified its input '{self.name}' ({plan.description})")


def _launch_on_host(library: ctypes.CDLL, launch: KernelLaunch, buffers: dict[str, _GuardedBuffer]) -> None:
    holders: list[Any] = []
    for arg in launch.args:
        if isinstance(arg, str):
            holders.append(ctypes.c_void_p(buffers[arg].address))
        else:
            holders.append(_SCALAR_CTYPES[np.dtype(arg.dtype)](arg.item()))
    count = len(holders)
    argv = (ctypes.c_void_p * count)(*(ctypes.addressof(h) for h in holders))
    sizes = (ctypes.c_size_t * count)(*(ctypes.sizeof(h) for h in holders))
    grid = (ctypes.c_uint * 3)(*launch.grid)
    block = (ctypes.c_uint * 3)(*launch.block)
    error = ctypes.create_string_buffer(1024)
    status = library.avila_host_launch(
        launch.name.encode(), argv, count, sizes, grid, block, launch.shared_mem_bytes, error, len(error)
    )
    if status != 0:
        raise HostEmulationError(error.value.decode())


def run_plan_on_host(plan: LaunchPlan, inputs: dict[str, np.ndarray],
                     library: ctypes.CDLL | None = None) -> tuple[np.ndarray, ...]:
    """Allocate the plan's buffers, run its kernels through the host emulation, return its outputs.
    ``library``: another build of the kernels (the mutation tests'); default: the sources' own."""
    library = library if library is not None else load_host_library(plan.defines)
    buffers = {
        name: _GuardedBuffer(name, array.shape, array.dtype, source=array) for name, array in inputs.items()
    }
    for name, spec in plan.buffers.items():
        buffers[name] = _GuardedBuffer(name, spec.shape, spec.dtype, fill=spec.fill)
    for launch in plan.launches:
        try:
            _launch_on_host(library, launch, buffers)
        except HostEmulationError as exc:
            raise HostEmulationError(f"{plan.op}: {exc} ({plan.description})") from exc
        for buffer in buffers.values():
            buffer.check(launch.name, plan)
    return tuple(buffers[name].array.copy() for name in plan.outputs)


def host_conv4d_forward(x, w, stride=1, padding=0, dilation=1) -> np.ndarray:
    """Host-emulated :func:`avila_ml.cuda_kernels.conv4d_forward` on NumPy arrays (same kernel, same plan).

    ``y[n, co, t, i, j, l] = sum w[co, ci, a, b, c, e] * x[n, ci, t*s0 - p0 + a*d0, ...]``; PyTorch has no conv4d.

    >>> x = np.ones((1, 1, 3, 3, 3, 3)); w = np.ones((2, 1, 3, 3, 3, 3))
    >>> float(host_conv4d_forward(x, w, padding=1)[0, 1, 1, 1, 1, 1])
    81.0
    """
    return run_plan_on_host(*prepare_conv4d_forward(np, x, w, stride, padding, dilation))[0]


def host_conv4d_grad_input(dy, w, x_shape, stride=1, padding=0, dilation=1) -> np.ndarray:
    """Host-emulated :func:`avila_ml.cuda_kernels.conv4d_grad_input` (torch.nn.grad.conv3d_input in 4-D).

    >>> dy = np.ones((1, 2, 3, 3, 3, 3)); w = np.ones((2, 1, 3, 3, 3, 3))
    >>> float(host_conv4d_grad_input(dy, w, (1, 1, 3, 3, 3, 3), padding=1)[0, 0, 1, 1, 1, 1])
    162.0
    """
    return run_plan_on_host(*prepare_conv4d_grad_input(np, dy, w, x_shape, stride, padding, dilation))[0]


def host_conv4d_grad_weight(x, dy, w_shape, stride=1, padding=0, dilation=1) -> np.ndarray:
    """Host-emulated :func:`avila_ml.cuda_kernels.conv4d_grad_weight` (torch.nn.grad.conv3d_weight in 4-D).

    >>> x = np.ones((1, 1, 3, 3, 3, 3)); dy = np.ones((1, 2, 3, 3, 3, 3))
    >>> float(host_conv4d_grad_weight(x, dy, (2, 1, 3, 3, 3, 3), padding=1)[0, 0, 1, 1, 1, 1])
    81.0
    """
    return run_plan_on_host(*prepare_conv4d_grad_weight(np, x, dy, w_shape, stride, padding, dilation))[0]


def host_conv4d_mma(op, a, b, shape, stride=1, padding=0, dilation=1, precision="f16", tile=DEFAULT_TILE,
                    library=None) -> np.ndarray:
    """Host-emulated tensor-core conv4d pass (``conv4d_mma.cu``), the plan the GPU runs.

    ``op`` is ``"forward"`` (a = x, b = w), ``"grad_input"`` (a = dy, b = w, shape = x's shape) or
    ``"grad_weight"`` (a = x, b = dy, shape = w's shape); ``precision`` is ``"f16"``, ``"bf16"`` or
    ``"tf32"`` (float32 arrays, operands rounded to TF32). PyTorch has no conv4d (conv3d in 4-D).

    >>> x = np.ones((1, 1, 3, 3, 3, 3), np.float16); w = np.ones((2, 1, 3, 3, 3, 3), np.float16)
    >>> float(host_conv4d_mma("forward", x, w, None, padding=1)[0, 1, 1, 1, 1, 1])
    81.0
    """
    return run_plan_on_host(*prepare_conv4d_mma(np, op, a, b, shape, stride, padding, dilation, precision, tile),
                            library=library)[0]


def host_attention_mma_forward(q, k, v, scale, is_causal, mask=None, dropout=None, precision="f16"):
    """Host-emulated tensor-core attention forward (``attention_mma.cu``); returns ``(o, lse)``.

    ``o = softmax(q k^T * scale + mask) v`` with q (B*Hq, L, D), k and v (B*Hkv, S, D) (grouped-query
    attention when Hkv < Hq), float16 or bfloat16; torch.nn.functional.scaled_dot_product_attention.

    >>> q = np.ones((2, 3, 8), dtype=np.float16); kv = np.ones((1, 3, 8), dtype=np.float16)
    >>> o, lse = host_attention_mma_forward(q, kv, kv, scale=0.5, is_causal=True)
    >>> o.shape, [round(float(x), 4) for x in lse[1]]
    ((2, 3, 8), [4.0, 4.6931, 5.0986])
    """
    return run_plan_on_host(*prepare_attention_mma_forward(np, q, k, v, scale, is_causal, mask, dropout, precision))


def host_attention_mma_backward(q, k, v, o, lse, do, scale, is_causal, mask=None, dropout=None, precision="f16"):
    """Host-emulated tensor-core attention backward; returns ``(dq, dk, dv)`` (dk, dv per key/value head).

    >>> q = np.ones((1, 3, 8), dtype=np.float16)
    >>> o, lse = host_attention_mma_forward(q, q, q, 0.5, True)
    >>> dq, dk, dv = host_attention_mma_backward(q, q, q, o, lse, np.ones_like(o), 0.5, True)
    >>> [round(float(x), 3) for x in dv[0, :, 0]]
    [1.833, 0.833, 0.333]
    """
    return run_plan_on_host(*prepare_attention_mma_backward(np, q, k, v, o, lse, do, scale, is_causal, mask, dropout,
                                                            precision))


def host_flash_attention_forward(q, k, v, scale, is_causal, mask=None, dropout=None) -> tuple[np.ndarray, np.ndarray]:
    """Host-emulated :func:`avila_ml.cuda_kernels.flash_attention_forward`; returns ``(o, lse)``.

    ``o = softmax(q k^T * scale + mask) v``, like torch.nn.functional.scaled_dot_product_attention.

    >>> q = np.ones((1, 3, 8), dtype=np.float32)
    >>> o, lse = host_flash_attention_forward(q, q, q, scale=0.5, is_causal=True)
    >>> o.shape, [round(float(x), 4) for x in lse[0]]
    ((1, 3, 8), [4.0, 4.6931, 5.0986])
    """
    return run_plan_on_host(*prepare_flash_attention_forward(np, q, k, v, scale, is_causal, mask, dropout))


def host_flash_attention_backward(q, k, v, o, lse, do, scale, is_causal, mask=None, dropout=None):
    """Host-emulated :func:`avila_ml.cuda_kernels.flash_attention_backward`; returns ``(dq, dk, dv)``.

    >>> q = np.ones((1, 3, 8), dtype=np.float32)
    >>> o, lse = host_flash_attention_forward(q, q, q, 0.5, True)
    >>> dq, dk, dv = host_flash_attention_backward(q, q, q, o, lse, np.ones_like(o), 0.5, True)
    >>> [round(float(x), 4) for x in dv[0, :, 0]]
    [1.8333, 0.8333, 0.3333]
    """
    return run_plan_on_host(*prepare_flash_attention_backward(np, q, k, v, o, lse, do, scale, is_causal, mask,
                                                              dropout))
