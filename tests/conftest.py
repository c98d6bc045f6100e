"""Shared fixtures: the `device` fixture runs a test on the CPU always and on CUDA when
CuPy sees a GPU. `AVILA_ML_TEST_DEVICE` chooses the legs (comma-separated):

* ``cuda``: only the GPU leg (GPU machines; benchmarks/gpu_check.sh);
* ``cuda-emulated``: only the cuda leg, on the strict emulated CUDA device of
  ``tests/emulated_cupy`` (a NumPy-backed CuPy stand-in, installed before anything imports CuPy);
* ``cpu,cuda-emulated``: both legs, the second on the emulated device.
"""
import os
import sys

import numpy as np
import pytest

_REQUESTED = [d.strip() for d in os.environ.get("AVILA_ML_TEST_DEVICE", "").split(",") if d.strip()]
if "cuda-emulated" in _REQUESTED:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import emulated_cupy

    emulated_cupy.install()  # before avila_ml (or anything) imports CuPy

import avila_ml as am  # noqa: E402

if os.environ.get("AVILA_ML_CUPY_NO_POOL") and "cuda" in _REQUESTED:
    import cupy  # compute-sanitizer runs (benchmarks/gpu_check.sh): every buffer a real allocation

    cupy.cuda.set_allocator(None)


def _devices():
    devs = ["cpu"]
    if am.cuda.is_available():
        devs.append("cuda")
    if _REQUESTED:
        wanted = ["cuda" if d == "cuda-emulated" else d for d in _REQUESTED]
        missing = [d for d in wanted if d not in devs]
        if missing:
            raise RuntimeError(f"AVILA_ML_TEST_DEVICE={','.join(_REQUESTED)} but {missing} is not available")
        devs = [d for d in devs if d in wanted]
    return devs


DEVICES = _devices()
CUDA_EMULATED = "cuda-emulated" in _REQUESTED
if "cuda" in DEVICES:
    # float32 convolutions are checked against float64/PyTorch references at float32 tolerances,
    # so the cuda leg runs them with TF32 off, as PyTorch's tests do (common_cuda.tf32_off); the
    # TF32 tensor-core path has its own tests (tests/cuda_kernels/test_tensor_core_conv4d.py).
    am.backends.cudnn.allow_tf32 = False


@pytest.fixture(params=DEVICES)
def device(request):
    """The device under test: 'cpu', and 'cuda' when a GPU (or the emulated device) is there."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    am.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def sync_checks():
    """Value checks on for CUDA tensors too (am.debug.set_sync_checks): tests of value errors
    (indices out of range, probabilities outside [0, 1]) run them on every device."""
    before = am.debug.sync_checks_enabled()
    am.debug.set_sync_checks(True)
    yield
    am.debug.set_sync_checks(before)
