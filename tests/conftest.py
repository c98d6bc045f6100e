"""Shared fixtures: the `device` fixture runs a test on the CPU always and on CUDA when
CuPy sees a GPU. `AVILA_ML_TEST_DEVICE=cuda` restricts the run to CUDA (GPU machines)."""
import os

import numpy as np
import pytest

import avila_ml as am


def _devices():
    only = os.environ.get("AVILA_ML_TEST_DEVICE")
    devs = ["cpu"]
    if am.cuda.is_available():
        devs.append("cuda")
    if only:
        devs = [d for d in devs if d == only]
        if not devs:
            raise RuntimeError(f"AVILA_ML_TEST_DEVICE={only} but that device is not available")
    return devs


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request):
    """The device under test: 'cpu', and 'cuda' when a GPU is visible."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    am.manual_seed(0)
    np.random.seed(0)
    yield
