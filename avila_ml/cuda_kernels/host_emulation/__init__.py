"""Host emulation of the CUDA kernels: the same .cu sources compiled with g++ and run on CPU threads.

See ``cuda_host.h`` for the execution model and ``runner.py`` for the memory checks. Used by the
test suite so that CPU-only CI exercises the kernels' indexing, tiling and reductions.
"""

from .build import build_host_library, host_compiler, load_host_library
from .runner import (
    HostEmulationError,
    host_attention_mma_backward,
    host_attention_mma_forward,
    host_conv4d_forward,
    host_conv4d_grad_input,
    host_conv4d_grad_weight,
    host_conv4d_mma,
    host_flash_attention_backward,
    host_flash_attention_forward,
    run_plan_on_host,
)

__all__ = [
    "HostEmulationError",
    "host_attention_mma_backward",
    "host_attention_mma_forward",
    "build_host_library",
    "host_compiler",
    "host_conv4d_forward",
    "host_conv4d_grad_input",
    "host_conv4d_grad_weight",
    "host_conv4d_mma",
    "host_flash_attention_backward",
    "host_flash_attention_forward",
    "load_host_library",
    "run_plan_on_host",
]
