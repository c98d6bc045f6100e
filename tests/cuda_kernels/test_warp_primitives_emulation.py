"""The host emulation of mma.sync and cp.async (cuda_host.h, avila_mma.cuh) against their PTX ISA
definitions, with probe kernels written here independently of the conv4d kernels:

* mma.sync m16n8k16 (float16, bfloat16) and m16n8k8 (TF32): every lane packs its registers from
  whole matrices with the fragment tables of the PTX ISA ("Matrix fragments for mma.m16n8k16 /
  mma.m16n8k8"), and D must equal A B + C computed by NumPy; a lane that packs its neighbour's
  registers must give a different D; TF32 operands are truncated to 19 bits by the instruction
  and rounded (ties away) by cvt.rna;
* cp.async: nothing lands before wait_group, wait_group<1> leaves exactly the newest group in
  flight, data becomes visible at the barrier, src-size 0 zero-fills, misalignment is reported.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from avila_ml.cuda_kernels.host_emulation import host_compiler
from avila_ml.cuda_kernels.host_emulation.build import HOST_COMPILE_FLAGS
from avila_ml.cuda_kernels.launch_config import KERNEL_SOURCE_DIR

ml_dtypes = pytest.importorskip("ml_dtypes")

PROBES = r"""
#include "host_emulation/cuda_host.h"
#include "avila_mma.cuh"
#include <cstdio>
#include <cstdlib>

// Row-major A (16 x K), B (K x 8), C (16 x 8) in float; kind 0 = f16, 1 = bf16, 2 = tf32 (x = cvt.rna first).
__global__ void mma_probe(const float* A, const float* B, const float* C, float* D, int kind, int lane_shift,
                          int round_tf32) {
    const int lane = (static_cast<int>(threadIdx.x) + lane_shift) % 32;
    const int g = lane / 4, t = lane % 4;
    auto bits16 = [&](float v) -> unsigned int {
        if (kind == 0) return std::bit_cast<unsigned short>(static_cast<_Float16>(v));
        return avila_float_to_bf16(v).bits;
    };
    auto pair = [&](float lo, float hi) { return bits16(lo) | (bits16(hi) << 16); };
    auto tf32 = [&](float v) { return round_tf32 ? avila_float_to_tf32(v) : std::bit_cast<unsigned int>(v); };
    unsigned int a[4], b[2];
    if (kind == 2) {  // m16n8k8: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); b0 (t, g), b1 (t+4, g)
        a[0] = tf32(A[g * 8 + t]);
        a[1] = tf32(A[(g + 8) * 8 + t]);
        a[2] = tf32(A[g * 8 + t + 4]);
        a[3] = tf32(A[(g + 8) * 8 + t + 4]);
        b[0] = tf32(B[t * 8 + g]);
        b[1] = tf32(B[(t + 4) * 8 + g]);
    } else {  // m16n8k16: a0,a1 (g, 2t..2t+1), a2,a3 (g+8, ..), a4,a5 (g, 2t+8..), a6,a7 (g+8, 2t+8..)
        a[0] = pair(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
        a[1] = pair(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
        a[2] = pair(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
        a[3] = pair(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
        b[0] = pair(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);      // b0,b1: rows 2t, 2t+1 of column g
        b[1] = pair(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);  // b2,b3: rows 2t+8, 2t+9
    }
    // c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1): the true lane's, so only A/B are shifted
    const int me = static_cast<int>(threadIdx.x), mg = me / 4, mt = me % 4;
    const float c[4] = {C[mg * 8 + 2 * mt], C[mg * 8 + 2 * mt + 1], C[(mg + 8) * 8 + 2 * mt], C[(mg + 8) * 8 + 2 * mt + 1]};
    float d[4];
    if (kind == 0) avila_mma_f16(d, a, b, c);
    if (kind == 1) avila_mma_bf16(d, a, b, c);
    if (kind == 2) avila_mma_tf32(d, a, b, c);
    D[mg * 8 + 2 * mt] = d[0];
    D[mg * 8 + 2 * mt + 1] = d[1];
    D[(mg + 8) * 8 + 2 * mt] = d[2];
    D[(mg + 8) * 8 + 2 * mt + 1] = d[3];
}

// Thread 0 issues two groups of copies into shared memory; every thread records what it sees at
// each step: out[step * 32 + thread] = shared[thread % 4] (slots 0,1: group 1; 2: group 2; 3: zero fill).
__global__ void cp_async_probe(const float* src, float* out) {
    AVILA_DYNAMIC_SHARED_BYTES(raw);
    float* shared = reinterpret_cast<float*>(raw);
    const int me = static_cast<int>(threadIdx.x);
    if (me == 0) {
        avila_cp_async<8>(shared, src, true);  // slots 0, 1
        avila_cp_async_commit();
        avila_cp_async<4>(shared + 2, src + 2, true);  // slot 2
        avila_cp_async<4>(shared + 3, src + 3, false);  // slot 3: zero fill
        avila_cp_async_commit();
    }
    __syncthreads();
    out[0 * 32 + me] = shared[me % 4];  // nothing waited: nothing landed
    __syncthreads();
    if (me == 0) avila_cp_async_wait<1>();  // the first group is complete, the second in flight
    out[1 * 32 + me] = shared[me % 4];  // complete but no barrier yet: not visible
    __syncthreads();
    out[2 * 32 + me] = shared[me % 4];  // group 1 visible
    __syncthreads();
    if (me == 0) avila_cp_async_wait<0>();
    __syncthreads();
    out[3 * 32 + me] = shared[me % 4];  // everything visible
}

__global__ void cp_async_misaligned(const float* src) {
    AVILA_DYNAMIC_SHARED_BYTES(raw);
    avila_cp_async<16>(raw + 4, src, true);
    avila_cp_async_commit();
    avila_cp_async_wait<0>();
    __syncthreads();
}

int main(int argc, char** argv) {
    const std::string mode = argv[1];
    if (mode == "mma") {
        const int kind = std::atoi(argv[2]), shift = std::atoi(argv[3]), round = std::atoi(argv[4]);
        const int k = kind == 2 ? 8 : 16;
        std::vector<float> A(16 * k), B(k * 8), C(16 * 8), D(16 * 8);
        for (auto* m : {&A, &B, &C})
            for (float& v : *m)
                if (std::scanf("%f", &v) != 1) return 2;
        avila_host::launch(mma_probe, dim3(1), dim3(32), 0, A.data(), B.data(), C.data(), D.data(), kind, shift, round);
        for (float v : D) std::printf("%.17g\n", static_cast<double>(v));
        return 0;
    }
    if (mode == "cp_async") {
        std::vector<float> src = {1.5f, 2.5f, 3.5f, 4.5f}, out(4 * 32);
        avila_host::launch(cp_async_probe, dim3(1), dim3(32), 16, src.data(), out.data());
        for (float v : out) std::printf("%.17g\n", static_cast<double>(v));
        return 0;
    }
    std::vector<float> src(4, 1.0f);
    try {
        avila_host::launch(cp_async_misaligned, dim3(1), dim3(32), 64, src.data());
    } catch (const std::exception& error) {
        std::printf("%s\n", error.what());
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    compiler = host_compiler()
    if compiler is None:
        pytest.skip("no C++20 compiler for the CUDA host emulation")
    root = tmp_path_factory.mktemp("probes")
    source = root / "probes.cpp"
    source.write_text(PROBES)
    binary = root / "probes"
    flags = [f for f in HOST_COMPILE_FLAGS if f not in ("-shared", "-fPIC")]
    subprocess.run([compiler, *flags, "-O1", f"-I{KERNEL_SOURCE_DIR}", "-o", str(binary), str(source)], check=True,
                   capture_output=True, text=True)

    def run(*args: str, stdin: str = "") -> str:
        return subprocess.run([str(binary), *args], input=stdin, capture_output=True, text=True, check=True,
                              timeout=60).stdout

    return run


def _mma(probe, kind: int, a, b, c, shift: int = 0, round_tf32: int = 1) -> np.ndarray:
    stdin = "\n".join(f"{v:.9g}" for m in (a, b, c) for v in np.asarray(m, dtype=np.float64).ravel())
    return np.array(probe("mma", str(kind), str(shift), str(round_tf32), stdin=stdin).split(), dtype=np.float64
                    ).reshape(16, 8)


@pytest.mark.parametrize("kind", [0, 1], ids=["f16", "bf16"])
def test_mma_m16n8k16_is_a_b_plus_c_with_the_ptx_fragment_layout(probe, kind):
    rng = np.random.default_rng(kind)
    storage = np.float16 if kind == 0 else ml_dtypes.bfloat16
    a = rng.standard_normal((16, 16)).astype(storage).astype(np.float64)
    b = rng.standard_normal((16, 8)).astype(storage).astype(np.float64)
    c = rng.standard_normal((16, 8)).astype(np.float32).astype(np.float64)
    d = _mma(probe, kind, a, b, c)
    expected = (a @ b + c).astype(np.float32)  # exact products, one float32 rounding
    np.testing.assert_allclose(d, expected, rtol=2e-7, atol=1e-6)
    shifted = _mma(probe, kind, a, b, c, shift=1)
    assert np.abs(shifted - expected).max() > 0.1, "a lane-shifted packing must change D"


def test_mma_m16n8k8_tf32_rounds_with_cvt_rna_and_truncates_unrounded_operands(probe):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8, 8)).astype(np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)

    def tf32(x, rounding):
        bits = x.view(np.uint32)
        if rounding:
            bits = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
        else:
            bits = bits & np.uint32(0xFFFFE000)
        return bits.view(np.float32).astype(np.float64)

    for rounding in (1, 0):
        d = _mma(probe, 2, a, b, c, round_tf32=rounding)
        expected = tf32(a, rounding) @ tf32(b, rounding) + c
        np.testing.assert_allclose(d, expected, rtol=2e-7, atol=1e-6)
    assert np.abs(_mma(probe, 2, a, b, c, shift=4) - (tf32(a, 1) @ tf32(b, 1) + c)).max() > 0.1
    # ties away from zero: 1 + 2**-11 and -(1 + 2**-11) lie halfway between TF32 values
    one = np.zeros((16, 8), np.float32)
    one[0, 0], one[1, 0] = 1 + 2.0**-11, -(1 + 2.0**-11)
    eye = np.zeros((8, 8), np.float32)
    eye[0, 0] = 1.0
    d = _mma(probe, 2, one, eye, np.zeros((16, 8), np.float32))
    assert (d[0, 0], d[1, 0]) == (1 + 2.0**-10, -(1 + 2.0**-10))


def test_cp_async_lands_only_after_its_wait_and_a_barrier(probe):
    out = np.array(probe("cp_async").split(), dtype=np.float64).reshape(4, 32)
    slot = np.arange(32) % 4
    assert np.isnan(out[0]).all(), "before wait_group nothing may land (shared memory starts NaN-poisoned)"
    assert np.isnan(out[1]).all(), "waited copies are not visible to the block before __syncthreads"
    np.testing.assert_array_equal(out[2], np.where(slot < 2, np.array([1.5, 2.5, 0, 0])[slot], np.nan))
    np.testing.assert_array_equal(out[3], np.array([1.5, 2.5, 3.5, 0.0])[slot])  # src-size 0 -> zeros


def test_cp_async_misalignment_is_reported(probe):
    assert "misaligned 16-byte cp.async" in probe("misaligned")
