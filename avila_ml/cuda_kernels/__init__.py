"""Hand-written CUDA kernels (CuPy RawModule) for the work generic array calls do badly.

* ``conv4d.cu``: 4-D convolution forward, grad-input and grad-weight (float32/float64), shared-memory
  tiled, no im2col buffer.
* ``attention.cu``: FlashAttention-2-style fused softmax attention forward and backward
  (float32/float16 with float32 accumulation, head dim <= 128).

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
