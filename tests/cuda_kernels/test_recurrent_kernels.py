"""The fused LSTM/GRU gate kernels (avila_ml/cuda_kernels/recurrent.py) without a GPU: nvcc
compiles the very body strings as device code, and g++ runs them on the host, where they must
reproduce the NumPy path of avila_ml.ops.recurrent (same operations in the same order; tanh
comes from a different math library, so agreement is to a few ulps, not bitwise)."""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from avila_ml.cuda_kernels import recurrent as K
from avila_ml.ops.recurrent import GRUGates, LSTMGates


def _source(name, ctype, cuda):
    """CuPy's ElementwiseKernel wrapping, written out: raw arguments are pointers, other inputs
    values at [i], outputs references at [i], ``i`` the index of the output element."""
    ins, outs, body = K.SIGNATURES[name]
    params, refs = [], []
    for arg in ins.split(", "):
        parts = arg.split()
        if parts[0] == "raw":
            params.append(f"const T* {parts[2]}")
        elif parts[0] == "int64":
            params.append(f"long {parts[1]}")
        else:
            params.append(f"const T* {parts[1]}_")
            refs.append(f"const T {parts[1]} = {parts[1]}_[i];")
    for arg in outs.split(", "):
        params.append(f"T* {arg.split()[1]}_")
        refs.append(f"T& {arg.split()[1]} = {arg.split()[1]}_[i];")
    params.append("long n")
    loop = ("for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x)"
            if cuda else "for (long i = 0; i < n; ++i)")
    sig = ", ".join(params).replace("T* ", f"{ctype}* ").replace("T ", f"{ctype} ")
    return (f'extern "C" {"__global__ " if cuda else ""}void k_{name}_{ctype}({sig}) {{\n'
            f"  typedef {ctype} T;\n  {loop} {{\n" + "\n".join(refs) + body + "\n  }\n}\n")


def _all(cuda):
    head = "" if cuda else "#include <cmath>\nusing std::tanh;\n"
    return head + "".join(_source(n, c, cuda) for n in K.SIGNATURES for c in ("float", "double"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_gate_kernels_compile_with_nvcc(tmp_path):
    src = tmp_path / "gates.cu"
    src.write_text(_all(cuda=True))
    ptx = tmp_path / "gates.ptx"
    result = subprocess.run(["nvcc", "--ptx", "-arch=compute_80", "--fmad=false", "--Werror", "all-warnings",
                             "-o", str(ptx), str(src)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # (no check for "fma" in the PTX, unlike the optimizer kernels: CUDA's own tanh uses FMAs
    # internally; --fmad=false still keeps our products and sums separately rounded)
    assert ptx.read_text().count(".entry") == 4


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH")
    d = tmp_path_factory.mktemp("gates_host")
    (d / "k.cpp").write_text(_all(cuda=False))
    result = subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
                             "-o", str(d / "k.so"), str(d / "k.cpp")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(d / "k.so"))


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-14), ("float32", 1e-6)])
def test_lstm_kernel_matches_numpy_path(host, dtype, rtol):
    rng = np.random.default_rng(0)
    B, H = 3, 5
    gates = (rng.standard_normal((B, 4 * H)) * 3).astype(dtype)
    gates[0, :3] = [40.0, -40.0, 0.0]  # saturated gates stay finite
    c_prev = rng.standard_normal((B, H)).astype(dtype)
    h_ref, c_ref = LSTMGates().forward(gates, c_prev)
    h, c = np.empty_like(c_prev), np.empty_like(c_prev)
    ctype = "double" if dtype == "float64" else "float"
    getattr(host, f"k_lstm_{ctype}")(_ptr(gates), _ptr(c_prev), ctypes.c_long(H), _ptr(h), _ptr(c),
                                     ctypes.c_long(B * H))
    np.testing.assert_allclose(c, c_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(h, h_ref, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-14), ("float32", 1e-6)])
def test_gru_kernel_matches_numpy_path(host, dtype, rtol):
    rng = np.random.default_rng(1)
    B, H = 4, 3
    gi = (rng.standard_normal((B, 3 * H)) * 3).astype(dtype)
    gh = (rng.standard_normal((B, 3 * H)) * 3).astype(dtype)
    h_prev = rng.standard_normal((B, H)).astype(dtype)
    ref = GRUGates().forward(gi, gh, h_prev)
    h = np.empty_like(h_prev)
    ctype = "double" if dtype == "float64" else "float"
    getattr(host, f"k_gru_{ctype}")(_ptr(gi), _ptr(gh), _ptr(h_prev), ctypes.c_long(H), _ptr(h),
                                    ctypes.c_long(B * H))
    np.testing.assert_allclose(h, ref, rtol=rtol, atol=rtol)
