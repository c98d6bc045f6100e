"""Root pytest configuration: doctests see `am` and run with a fixed seed on the CPU."""
import numpy as np
import pytest

collect_ignore_glob = ["benchmarks/*", "examples/*"]
try:  # the CuPy backend module imports cupy at the top: collect its doctests only where it exists
    import cupy  # noqa: F401
except ImportError:
    collect_ignore_glob.append("avila_ml/backends/cupy_backend.py")


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import avila_ml as am
    am.manual_seed(0)
    np.random.seed(0)
    doctest_namespace["am"] = am
    doctest_namespace["np"] = np
