"""Root pytest configuration: doctests see `am` and run with a fixed seed on the CPU."""
import numpy as np
import pytest

import importlib.util

collect_ignore_glob = ["benchmarks/*", "examples/*"]
# Collect the CuPy backend's doctests only where CuPy is installed. find_spec does not import it:
# tests/conftest.py may still install the emulated device (AVILA_ML_TEST_DEVICE=cuda-emulated).
if importlib.util.find_spec("cupy") is None:
    collect_ignore_glob.append("avila_ml/backends/cupy_backend.py")


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import avila_ml as am
    am.manual_seed(0)
    np.random.seed(0)
    doctest_namespace["am"] = am
    doctest_namespace["np"] = np
