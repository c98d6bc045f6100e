"""Every .cu kernel source compiles for sm_80 and sm_90 with nvcc, and for the host with g++, warning-free.

nvcc runs the full pipeline (front end, ptxas for both architectures, host compiler on the stubs)
with every warning turned into an error, so a GPU-less CI still rejects code that would not build
on an A100 or H100. The host compile uses the flags of the emulation build plus -Werror.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from avila_ml.cuda_kernels.host_emulation.build import HOST_COMPILE_FLAGS, HOST_ENTRY_POINTS, host_compiler
from avila_ml.cuda_kernels.launch_config import KERNEL_DEFINES, KERNEL_SOURCE_DIR

CUDA_SOURCES = sorted(KERNEL_SOURCE_DIR.glob("*.cu"))
ARCHITECTURES = ("80", "90")
DEFINES = tuple(f"-D{macro}={value}" for macro, value in KERNEL_DEFINES)


def test_kernel_sources_exist():
    assert {path.name for path in CUDA_SOURCES} >= {"conv4d.cu", "attention.cu"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda path: path.name)
def test_nvcc_compiles_for_sm80_and_sm90_without_warnings(source, tmp_path):
    gencode = [flag for arch in ARCHITECTURES for flag in ("-gencode", f"arch=compute_{arch},code=sm_{arch}")]
    command = [
        "nvcc", "-c", "-std=c++17", *gencode, "--threads", "0", "--Werror", "all-warnings",
        "-Xcompiler", "-Wall,-Wextra,-Werror", *DEFINES, "-o", str(tmp_path / f"{source.stem}.o"), str(source),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)}\n{output}"
    assert "warning" not in output.lower(), output


@pytest.mark.skipif(host_compiler() is None, reason="no C++20 host compiler (g++ >= 12 or $CXX)")
def test_host_emulation_build_has_no_warnings():
    flags = [flag for flag in HOST_COMPILE_FLAGS if flag not in ("-shared", "-fPIC")]
    command = [host_compiler(), *flags, "-Werror", "-fsyntax-only", *DEFINES, str(HOST_ENTRY_POINTS)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
