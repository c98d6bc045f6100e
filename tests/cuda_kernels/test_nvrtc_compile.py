"""Every .cu source compiles with NVRTC, the compiler ``cupy.RawModule`` uses on a GPU machine.

nvcc (test_nvcc_compile.py) finds the CUDA toolkit's headers; NVRTC has only its built-in ones,
and the CuPy wheels ship no CUDA headers, so a kernel that includes e.g. <cuda_fp16.h> builds with
nvcc here and fails at the first GPU call of a pip-installed user. NVRTC compiles to PTX without a
GPU or a driver (the ``nvidia-cuda-nvrtc`` wheel), with the options and name expressions the
launcher passes.
"""
from __future__ import annotations

import pytest

from avila_ml.cuda_kernels.launch_config import KERNEL_DEFINES, KERNEL_NAMES, KERNEL_SOURCE_DIR

nvrtc = pytest.importorskip("emulated_cupy.nvrtc")

CUDA_SOURCES = sorted(KERNEL_SOURCE_DIR.glob("*.cu"))
# what avila_ml.cuda_kernels.launch._kernel_function passes to cupy.RawModule
OPTIONS = ("-std=c++17", *(f"-D{macro}={value}" for macro, value in KERNEL_DEFINES))


@pytest.mark.skipif(nvrtc.library() is None, reason="NVRTC not installed (nvidia-cuda-nvrtc wheel)")
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda path: path.name)
def test_nvrtc_compiles_every_kernel_without_cuda_headers(source, arch):
    ptx = nvrtc.compile_to_ptx(source.read_text(), source.name, OPTIONS, KERNEL_NAMES[source.name], arch)
    for name in KERNEL_NAMES[source.name]:
        assert f".entry {name}(" in ptx, f"{source.name}: kernel {name} missing from the PTX for {arch}"


def test_nvrtc_reports_a_missing_header():
    """Guards the test above: NVRTC really runs without the toolkit's include directories."""
    if nvrtc.library() is None:
        pytest.skip("NVRTC not installed")
    with pytest.raises(nvrtc.NvrtcError, match="cuda_fp16.h"):
        nvrtc.compile_to_ptx('#include <cuda_fp16.h>\nextern "C" __global__ void k() {}', "probe.cu")
