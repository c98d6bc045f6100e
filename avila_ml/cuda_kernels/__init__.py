"""Hand-written CUDA kernels (CuPy RawModule) for the work generic array calls do badly.

* ``conv4d.cu``: 4-D convolution forward, grad-input and grad-weight (float32/float64), shared-memory
  tiled, no im2col buffer.
* ``attention.cu``: FlashAttention-2-style fused softmax attention forward and backward
  (float32/float16 with float32 accumulation, head dim <= 128).
* ``conv4d_mma.cu``: conv4d forward, grad-input and grad-weight as implicit GEMMs on tensor cores
  (mma.sync, cp.async double buffering): float16, bfloat16 and TF32, float32 accumulation; tiles
  chosen by :mod:`.autotune` (:mod:`.tensor_core` decides which arithmetic a call gets).
* ``attention_mma.cu``: FlashAttention-2 forward and backward on tensor cores, float16/bfloat16,
  head dim <= 256, grouped-query attention.

The launchers take and return CuPy arrays; CuPy is imported inside them, never at import time.
Grids and arguments come from :mod:`.launch_config`, which the host emulation
(:mod:`.host_emulation`) shares, so CPU-only CI runs the same kernels and plans on NumPy arrays.
"""

from .errors import KernelLaunchError, KernelOutOfMemoryError
from .launch import (
    conv4d_forward,
    conv4d_grad_input,
    conv4d_grad_weight,
    flash_attention_backward,
    flash_attention_forward,
)

__all__ = [
    "KernelLaunchError",
    "KernelOutOfMemoryError",
    "conv4d_forward",
    "conv4d_grad_input",
    "conv4d_grad_weight",
    "flash_attention_backward",
    "flash_attention_forward",
]
