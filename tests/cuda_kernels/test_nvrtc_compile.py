"""Every .cu source compiles with NVRTC, the compiler ``cupy.RawModule`` uses on a GPU machine.

nvcc (test_nvcc_compile.py) finds the CUDA toolkit's headers; NVRTC has only its built-in ones,
and the CuPy wheels ship no CUDA headers, so a kernel that includes e.g. <cuda_fp16.h> builds with
nvcc here and fails at the first GPU call of a pip-installed user. NVRTC compiles to PTX without a
GPU or a driver (the ``nvidia-cuda-nvrtc`` wheel), with the options and name expressions the
launcher passes.
"""
from __future__ import annotations

import functools

import pytest

from avila_ml.cuda_kernels.launch_config import KERNEL_NAMES, KERNEL_SOURCE_DIR, nvrtc_options

nvrtc = pytest.importorskip("emulated_cupy.nvrtc")

CUDA_SOURCES = sorted(KERNEL_SOURCE_DIR.glob("*.cu"))
# what avila_ml.cuda_kernels.launch._kernel_function passes to cupy.RawModule (the -I makes the
# shared avila_half.cuh visible; the code string itself has no directory)
OPTIONS = nvrtc_options()


@functools.lru_cache(maxsize=None)
def _ptx(name: str, arch: str) -> str:
    """The launcher's NVRTC compile of one source (cached: the PTX checks below reuse it)."""
    return nvrtc.compile_to_ptx((KERNEL_SOURCE_DIR / name).read_text(), name, OPTIONS, KERNEL_NAMES[name], arch)


@pytest.mark.skipif(nvrtc.library() is None, reason="NVRTC not installed (nvidia-cuda-nvrtc wheel)")
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda path: path.name)
def test_nvrtc_compiles_every_kernel_without_cuda_headers(source, arch):
    ptx = _ptx(source.name, arch)
    for name in KERNEL_NAMES[source.name]:
        assert f".entry {name}(" in ptx, f"{source.name}: kernel {name} missing from the PTX for {arch}"


@pytest.mark.skipif(nvrtc.library() is None, reason="NVRTC not installed (nvidia-cuda-nvrtc wheel)")
def test_conv4d_float16_entry_points_are_named_and_convert_with_ptx():
    """The float16 conv4d kernels are in the launcher's name expressions and use the cvt
    instructions of avila_half.cuh (float16 storage, float32 arithmetic)."""
    names = KERNEL_NAMES["conv4d.cu"]
    expected = {"conv4d_forward_f16", "conv4d_grad_input_f16", "conv4d_grad_weight_f16", "conv4d_round_f32_to_f16"}
    assert expected <= set(names)
    ptx = nvrtc.compile_to_ptx((KERNEL_SOURCE_DIR / "conv4d.cu").read_text(), "conv4d.cu", OPTIONS, names,
                               "compute_80")
    for kernel in ("conv4d_forward_f16", "conv4d_grad_input_f16", "conv4d_grad_weight_f16"):
        body = ptx.split(f".entry {kernel}(")[1].split(".entry ")[0]
        assert "cvt.f32.f16" in body and "fma.rn.f32" in body, kernel
        assert "fma.rn.f16" not in body and "add.f16" not in body and "atom.global.add.noftz.f16" not in body, kernel
    round_body = ptx.split(".entry conv4d_round_f32_to_f16(")[1].split(".entry ")[0]
    assert "cvt.rn.f16.f32" in round_body


def test_nvrtc_without_the_include_path_misses_the_shared_header():
    """Guards the -I in the options: the header really comes from the kernel directory."""
    if nvrtc.library() is None:
        pytest.skip("NVRTC not installed")
    options = tuple(option for option in OPTIONS if not option.startswith("-I"))
    with pytest.raises(nvrtc.NvrtcError, match="avila_half.cuh"):
        nvrtc.compile_to_ptx((KERNEL_SOURCE_DIR / "conv4d.cu").read_text(), "conv4d.cu", options,
                             KERNEL_NAMES["conv4d.cu"])


def test_nvrtc_reports_a_missing_header():
    """Guards the test above: NVRTC really runs without the toolkit's include directories."""
    if nvrtc.library() is None:
        pytest.skip("NVRTC not installed")
    with pytest.raises(nvrtc.NvrtcError, match="cuda_fp16.h"):
        nvrtc.compile_to_ptx('#include <cuda_fp16.h>\nextern "C" __global__ void k() {}', "probe.cu")


@pytest.mark.skipif(nvrtc.library() is None, reason="NVRTC not installed (nvidia-cuda-nvrtc wheel)")
def test_tensor_core_conv4d_uses_mma_sync_and_cp_async():
    """conv4d_mma.cu really runs on tensor cores with asynchronous copies: each precision's kernels
    contain its mma.sync shape, the cp.async pipeline (copies, commit, wait for all but one
    group) and, for TF32, the cvt.rna rounding of the operands."""
    ptx = _ptx("conv4d_mma.cu", "compute_80")
    instruction = {"f16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                   "bf16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                   "tf32": "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"}
    for precision, mma in instruction.items():
        for op in ("forward", "grad_input", "grad_weight"):
            kernel = f"conv4d_mma_{op}_{precision}_64x64"
            body = ptx.split(f".entry {kernel}(")[1].split(".entry ")[0]
            assert mma in body and "cp.async.ca.shared.global" in body, kernel
            assert "cp.async.commit_group" in body and "cp.async.wait_group 1" in body, kernel
            assert ("cvt.rna.tf32.f32" in body) == (precision == "tf32"), kernel


@pytest.mark.skipif(nvrtc.library() is None, reason="NVRTC not installed (nvidia-cuda-nvrtc wheel)")
def test_tensor_core_attention_uses_mma_sync_and_cp_async():
    """attention_mma.cu: every kernel of every head-dim bucket multiplies with mma.sync m16n8k16 in
    its storage type and streams its tiles with cp.async (waiting for all but the newest group)."""
    ptx = _ptx("attention_mma.cu", "compute_80")
    for precision in ("f16", "bf16"):
        mma = f"mma.sync.aligned.m16n8k16.row.col.f32.{precision}.{precision}.f32"
        for head_dim in (32, 64, 128, 256):
            for op in ("forward", "backward_dkdv", "backward_dq"):
                kernel = f"attention_mma_{op}_{precision}_hd{head_dim}"
                body = ptx.split(f".entry {kernel}(")[1].split(".entry ")[0]
                assert mma in body and "cp.async.ca.shared.global" in body, kernel
                assert "cp.async.wait_group 1" in body, kernel
                # the online softmax's row reductions are warp shuffles; the backward needs none
                assert ("shfl.sync" in body) == (op == "forward"), kernel
