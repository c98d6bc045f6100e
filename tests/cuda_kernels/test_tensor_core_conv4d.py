"""Tensor-core conv4d (conv4d_mma.cu) against NumPy, on the host emulation (always) and on a GPU
(AVILA_ML_TEST_DEVICE=cuda), plus the emulation's own guarantees: mutated kernels must fail.

References are float64 sums over the inputs as the tensor cores see them: float16/bfloat16
values as stored, float32 values rounded to TF32 (to nearest, ties away from zero, as
cvt.rna.tf32.f32). The bound on each output is the float32 accumulation error (2**-16 of the
sum of |terms|: one float32 rounding per k-step of 8 or 16 with K up to ~1000) plus half an ulp of the storage type for the
single rounding of the output; a lane mapped to the wrong element, a missing barrier or a wrong
TF32 rounding is orders of magnitude above it.
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

from avila_ml.cuda_kernels import host_emulation
from avila_ml.cuda_kernels.launch_config import CONV4D_MMA_TILES, KERNEL_SOURCE_DIR, conv4d_geometry
from avila_ml.cuda_kernels.tensor_core import gemm_shape, mma_precision, mma_shared_bytes, plan_conv4d_mma
import mutants
from test_host_emulation import (
    CONV_CASES,
    _four,
    conv4d_grad_input_reference,
    conv4d_grad_weight_reference,
    conv4d_reference,
)

ml_dtypes = pytest.importorskip("ml_dtypes")
ON_GPU = "cuda" in os.environ.get("AVILA_ML_TEST_DEVICE", "")
STORAGE = {"f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16), "tf32": np.dtype(np.float32)}


def tf32_round(values: np.ndarray) -> np.ndarray:
    """float32 -> the TF32 value as a float32: round to nearest, ties away from zero (cvt.rna)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = np.where(finite, (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000), bits)
    return rounded.astype(np.uint32).view(np.float32)


def as_seen_by_tensor_cores(values: np.ndarray, precision: str) -> np.ndarray:
    values = values.astype(np.float32) if precision == "tf32" else values
    return (tf32_round(values) if precision == "tf32" else values).astype(np.float64)


def assert_within_bound(actual, expected, abs_sum, precision, name):
    actual = np.asarray(actual).astype(np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert not np.isnan(actual).any(), f"{name}: NaN in the output (an element never written or read unstaged)"
    accumulation = 2.0**-16 * abs_sum
    if precision == "tf32":
        rounding = np.zeros_like(expected)
    else:  # half an ulp of the stored output, in the binade of the float32 sum the kernel rounds
        mantissa_bits, smallest_normal = {"f16": (10, 2.0**-14), "bf16": (7, 2.0**-126)}[precision]
        magnitude = np.maximum(np.abs(expected) + accumulation, smallest_normal)
        rounding = 2.0 ** (np.floor(np.log2(magnitude)) - mantissa_bits) / 2
    bound = rounding + accumulation + 1e-30
    excess = np.abs(actual - expected) - bound
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert (excess <= 0).all(), (f"{name} ({precision}): {int((excess > 0).sum())} of {excess.size} outputs off, "
                                 f"worst at {worst}: {actual[worst]} vs {expected[worst]}")


def _host_executor(library=None):
    if host_emulation.host_compiler() is None:
        pytest.skip("no C++20 compiler (g++ >= 12 or $CXX) for the CUDA host emulation")

    def run(op, a, b, shape, stride, padding, dilation, precision, tile):
        return host_emulation.host_conv4d_mma(op, a, b, shape, stride, padding, dilation, precision, tile, library)

    return SimpleNamespace(run=run, to_device=lambda a: a, to_numpy=np.asarray)


def _cuda_executor():
    if not ON_GPU:
        pytest.skip("GPU executor runs with AVILA_ML_TEST_DEVICE=cuda")
    import cupy

    from avila_ml.cuda_kernels.launch import run_plan_on_gpu
    from avila_ml.cuda_kernels.tensor_core import prepare_conv4d_mma

    def run(op, a, b, shape, stride, padding, dilation, precision, tile):
        return run_plan_on_gpu(*prepare_conv4d_mma(cupy, op, a, b, shape, stride, padding, dilation, precision,
                                                   tile))[0]

    def to_device(a):  # CuPy has no bfloat16: the kernels take bfloat16 bit patterns as uint16
        return cupy.asarray(a.view(np.uint16) if a.dtype.name == "bfloat16" else a)

    def to_numpy(a):
        a = cupy.asnumpy(a)
        return a.view(ml_dtypes.bfloat16) if a.dtype == np.uint16 else a

    return SimpleNamespace(run=run, to_device=to_device, to_numpy=to_numpy)


@pytest.fixture(scope="module", params=["host", "cuda"])
def executor(request):
    return _host_executor() if request.param == "host" else _cuda_executor()


def _problem(case, precision, seed):
    spec = CONV_CASES[case]
    stride, padding, dilation = (_four(spec[k]) for k in ("stride", "padding", "dilation"))
    rng = np.random.default_rng(seed)
    storage = STORAGE[precision]
    x = rng.standard_normal(spec["x"]).astype(np.float32).astype(storage)
    w = rng.standard_normal(spec["w"]).astype(np.float32).astype(storage)
    g = conv4d_geometry("test", spec["x"], spec["w"], stride, padding, dilation)
    dy = rng.standard_normal(g.y_shape).astype(np.float32).astype(storage)
    return x, w, dy, stride, padding, dilation


def _check_all_passes(executor, x, w, dy, stride, padding, dilation, precision, tile):
    dev, to_np = executor.to_device, executor.to_numpy
    seen = {name: as_seen_by_tensor_cores(a, precision) for name, a in (("x", x), ("w", w), ("dy", dy))}
    absolute = {name: np.abs(a) for name, a in seen.items()}
    checks = {
        "forward": (executor.run("forward", dev(x), dev(w), None, stride, padding, dilation, precision, tile),
                    conv4d_reference(seen["x"], seen["w"], stride, padding, dilation),
                    conv4d_reference(absolute["x"], absolute["w"], stride, padding, dilation)),
        "grad_input": (executor.run("grad_input", dev(dy), dev(w), x.shape, stride, padding, dilation, precision, tile),
                       conv4d_grad_input_reference(seen["dy"], seen["w"], x.shape, stride, padding, dilation),
                       conv4d_grad_input_reference(absolute["dy"], absolute["w"], x.shape, stride, padding, dilation)),
        "grad_weight": (executor.run("grad_weight", dev(x), dev(dy), w.shape, stride, padding, dilation, precision,
                                     tile),
                        conv4d_grad_weight_reference(seen["x"], seen["dy"], w.shape, stride, padding, dilation),
                        conv4d_grad_weight_reference(absolute["x"], absolute["dy"], w.shape, stride, padding,
                                                     dilation)),
    }
    for name, (actual, expected, abs_sum) in checks.items():
        actual = to_np(actual)
        assert actual.dtype == STORAGE[precision], f"{name}: {actual.dtype}"
        assert_within_bound(actual, expected, abs_sum, precision, name)


# Tile-edge cases of the exact kernels' tests: non-cubic kernels, stride 2 + dilation 2 + padding
# (and 19 output channels: a partial N tile), padding beyond the kernel, 17 input channels. Every
# case in float16; bfloat16 and TF32 (other packing, other mma shape) on two of them, to keep the
# emulated run short.
TENSOR_CORE_CASES = [(case, "f16") for case in ("basic_non_cubic", "stride2_dilation2_padding", "padding_beyond_kernel",
                                                "tap_chunks_and_input_channel_tiles")]
TENSOR_CORE_CASES += [(case, precision) for precision in ("bf16", "tf32")
                      for case in ("stride2_dilation2_padding", "tap_chunks_and_input_channel_tiles")]


@pytest.mark.parametrize("case,precision", TENSOR_CORE_CASES, ids=[f"{c}-{p}" for c, p in TENSOR_CORE_CASES])
def test_tensor_core_passes_match_numpy(executor, case, precision):
    x, w, dy, stride, padding, dilation = _problem(case, precision, sum(map(ord, case + precision)))
    _check_all_passes(executor, x, w, dy, stride, padding, dilation, precision, (64, 64))


@pytest.mark.parametrize("tile", CONV4D_MMA_TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_every_autotuning_tile_gives_the_same_correct_result(executor, tile):
    """The autotuner may pick any compiled tile: each must be correct (several M and N tiles, a
    partial last k-tile, split-K in grad_weight)."""
    x, w, dy, stride, padding, dilation = _problem("two_z_tiles", "f16", 7)
    _check_all_passes(executor, x, w, dy, stride, padding, dilation, "f16", tile)


def test_tf32_operands_are_rounded_to_nearest_ties_away(executor):
    """x = 1 + 3 * 2**-12 rounds up to 1 + 2**-10 in TF32 (truncation, which the tensor cores apply
    to unrounded operands, gives 1; float32 keeps 1 + 3 * 2**-12), and the tie -(1 + 2**-11) rounds
    away from zero. 81 taps of w = 1: every y is exact in float32, so equality is required."""
    x = np.full((1, 1, 3, 3, 3, 3), 1 + 3 * 2.0**-12, dtype=np.float32)
    x[..., 1] = -(1 + 2.0**-11)  # a third of the taps: exactly halfway between two TF32 values
    w = np.ones((1, 1, 3, 3, 3, 3), dtype=np.float32)
    y = executor.to_numpy(executor.run("forward", executor.to_device(x), executor.to_device(w), None, 1, 0, 1,
                                       "tf32", (64, 64)))
    expected = 54 * (1 + 2.0**-10) - 27 * (1 + 2.0**-10)
    assert y.ravel().tolist() == [expected]


def test_float16_accumulates_in_float32_on_tensor_cores(executor):
    """8192 products of ones: exact in a float32 accumulator, stuck at 2048 in a float16 one."""
    ones = np.ones((1, 64, 2, 4, 4, 4), dtype=np.float16)
    y = executor.to_numpy(executor.run("forward", executor.to_device(ones), executor.to_device(ones), None, 1, 0, 1,
                                       "f16", (64, 64)))
    assert y.dtype == np.float16 and y.ravel().tolist() == [8192.0]


# ---------------------------------------------------------------------------------------------
# Plans and dispatch


def test_gemm_shapes_plans_and_shared_memory():
    g = conv4d_geometry("t", (8, 16, 32, 32, 32, 32), (16, 16, 3, 3, 3, 3), 1, 1, 1)
    assert gemm_shape("forward", g) == (8 * 32**4, 16, 16 * 81)
    assert gemm_shape("grad_weight", g) == (16, 16 * 81, 8 * 32**4)
    plan = plan_conv4d_mma("grad_weight", g, "f16", (64, 64))
    (gemm, rounding) = plan.launches
    k_tiles = -(-8 * 32**4 // 32)
    per_split = int(gemm.args[-1])
    assert gemm.grid[:2] == (1, 21) and gemm.grid[2] * per_split >= k_tiles > (gemm.grid[2] - 1) * per_split
    assert rounding.name == "conv4d_mma_round_f32_to_f16" and plan.buffers["dw_sum"].dtype == np.float32
    forward = plan_conv4d_mma("forward", g, "bf16", (128, 64)).launches[0]
    assert forward.name == "conv4d_mma_forward_bf16_128x64" and forward.grid == (-(-8 * 32**4 // 128), 1, 1)
    # every tile fits the 99 KiB opt-in limit assumed without a device; only TF32 128x64 needs the opt-in
    assert max(mma_shared_bytes(p, t) for p in ("f16", "bf16", "tf32") for t in CONV4D_MMA_TILES) <= 99 * 1024
    assert [t for t in CONV4D_MMA_TILES if mma_shared_bytes("tf32", t) > 48 * 1024] == [(128, 64)]
    with pytest.raises(ValueError, match=r"tile \(48, 48\) is not compiled"):
        plan_conv4d_mma("forward", g, "f16", (48, 48))


def test_precision_follows_dtype_and_the_tf32_flag():
    import avila_ml as am

    before = am.backends.cudnn.allow_tf32
    try:
        am.backends.cudnn.allow_tf32 = True
        assert mma_precision(np.float32) == "tf32"
        am.backends.cudnn.allow_tf32 = False
        assert mma_precision(np.float32) is None
    finally:
        am.backends.cudnn.allow_tf32 = before
    assert mma_precision(np.float16) == "f16" and mma_precision(ml_dtypes.bfloat16) == "bf16"
    assert mma_precision(np.float64) is None


def test_wrong_input_dtype_names_the_pass_and_the_precision():
    x = np.zeros((1, 1, 3, 3, 3, 3), np.float32)
    with pytest.raises(TypeError, match="conv4d_mma_forward: f16 tensor cores take float16 inputs, got float32"):
        host_emulation.host_conv4d_mma("forward", x, x, None, precision="f16")


# ---------------------------------------------------------------------------------------------
# Mutation tests: edited copies of conv4d_mma.cu (tests/cuda_kernels/mutants.py), built once with a
# runtime switch per mutation, must produce wrong results (or NaN from unstaged shared memory).


@pytest.fixture(scope="module")
def mutant_library():
    if host_emulation.host_compiler() is None:
        pytest.skip("no C++20 compiler for the CUDA host emulation")
    return mutants.mutant_library()


@pytest.mark.parametrize("precision,mutations", [("f16", (1, 2, 3, 4)), ("tf32", (1, 4))])
def test_mutated_kernels_fail_and_the_unmutated_build_passes(mutant_library, precision, mutations):
    """Every mutation in float16; the fragment-layout ones again in TF32 (its own m16n8k8 layout);
    the pipeline mutations (barrier, wait) do not depend on the precision."""
    executor = _host_executor(mutant_library)
    x, w, dy, stride, padding, dilation = _problem("basic_non_cubic", precision, 3)
    mutant_library.avila_set_mutation(0)
    _check_all_passes(executor, x, w, dy, stride, padding, dilation, precision, (64, 64))
    for mutation in mutations:
        mutant_library.avila_set_mutation(mutation)
        try:
            with pytest.raises((AssertionError, host_emulation.HostEmulationError)):
                _check_all_passes(executor, x, w, dy, stride, padding, dilation, precision, (64, 64))
        finally:
            mutant_library.avila_set_mutation(0)


def test_mutation_anchors_are_the_kernel_source():
    """Every anchor is a line of the current kernel sources (else the mutant build fails loudly)."""
    assert set(mutants.mutated_sources()) == {"conv4d_mma.cu", "attention_mma.cu"}
    assert re.search(r"avila_cp_async_wait<1>\(\);\s+// everything but the prefetch", (KERNEL_SOURCE_DIR /
                                                                                         "conv4d_mma.cu").read_text())
