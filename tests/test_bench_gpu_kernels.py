"""The CPU-side logic of benchmarks/bench_gpu_kernels.py and gpu_check.sh (no GPU here: the
timings themselves run only on a GPU machine, `bash benchmarks/gpu_check.sh --bench-only`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests" / "cuda_kernels"))

import bench_gpu_kernels  # noqa: E402
from test_host_emulation import (  # noqa: E402
    conv4d_grad_input_reference,
    conv4d_grad_weight_reference,
    conv4d_reference,
)


def test_conv3d_stacking_baseline_is_a_4d_convolution_with_its_gradients():
    """The PyTorch baseline the speed-ups are measured against computes the same conv4d
    (forward, dx, dw) as the NumPy reference, in float64 on the CPU."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 4, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3, 3, 3))
    pad = 1
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()
    y = bench_gpu_kernels.torch_conv4d_stacked(torch, tx, tw, pad)
    np.testing.assert_allclose(y.detach().numpy(), conv4d_reference(x, w, (1,) * 4, (pad,) * 4, (1,) * 4),
                               rtol=1e-12, atol=1e-11)
    dy = rng.standard_normal(y.shape)
    y.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(tx.grad.numpy(), conv4d_grad_input_reference(dy, w, x.shape, (1,) * 4, (pad,) * 4,
                                                                            (1,) * 4), rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(tw.grad.numpy(), conv4d_grad_weight_reference(x, dy, w.shape, (1,) * 4, (pad,) * 4,
                                                                             (1,) * 4), rtol=1e-12, atol=1e-11)


def test_flop_counts_and_the_issue_cases():
    # (8, 16, 32^4) -> 16, k = 3^4, padding 1: 2 * 8 * 16 * 32^4 * 16 * 81 per pass
    assert bench_gpu_kernels.conv4d_flops((8, 16, 32, 32, 32, 32), 16, 3, 1) == 2.0 * 8 * 16 * 32**4 * 16 * 81
    # without padding the output shrinks by k - 1 along each axis
    assert bench_gpu_kernels.conv4d_flops((1, 1, 5, 5, 5, 5), 1, 3, 0) == 2.0 * 3**4 * 81
    assert bench_gpu_kernels.attention_flops(1, 1, 10, 8, True) * 2 == bench_gpu_kernels.attention_flops(1, 1, 10, 8,
                                                                                                         False)
    cases = [case[1:] for case in bench_gpu_kernels.TENSOR_CORE_CONV_CASES]
    assert cases == [((8, 16, 32, 32, 32, 32), 16, 3, 1), ((2, 4, 64, 64, 64, 64), 8, 3, 1)]
    assert set(bench_gpu_kernels.ATTENTION_CASES) == {(d, t, c) for d in (64, 128) for t in ("float16", "bfloat16")
                                                      for c in (False, True)}


def test_without_a_gpu_the_benchmark_skips_itself():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu_kernels.py"), "--suite",
                             "tensor-cores", "--repeats", "3"], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "skipped, needs CuPy and a CUDA GPU" in result.stdout


def test_gpu_check_script_parses_and_has_the_bench_only_mode():
    script = REPO / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "--suite tensor-cores" in text and 'if [ "${1:-}" = "--bench-only" ]' in text
    # the bench-only steps' limits stay under 10 minutes together
    limits = [150, 420]
    assert all(f'" {limit} ' in text for limit in limits) and sum(limits) < 600
