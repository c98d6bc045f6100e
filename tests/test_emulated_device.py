"""The emulated CUDA device itself (tests/emulated_cupy): is it as strict as CuPy?

Runs on every CI run without installing the emulator into ``sys.modules`` (the modules are
built side by side), so it checks the instrument the cuda-emulated leg relies on.
"""
from __future__ import annotations

import numpy as np
import pytest

emulated_cupy = pytest.importorskip("emulated_cupy")
from emulated_cupy import cuda as ecuda  # noqa: E402
from emulated_cupy.core import ndarray  # noqa: E402

MODULES = emulated_cupy.build()
cp = MODULES["cupy"]


def test_every_name_the_emulator_defines_exists_in_the_recorded_cupy():
    names = emulated_cupy.NAMES
    assert names["cupy_version"] and names["generated_by"].endswith("generate_names.py")
    for modname, module in MODULES.items():
        listed = set(names["modules"][modname])
        defined = {n for n in vars(module) if not n.startswith("_")}
        sub = {n for n in defined if f"{modname}.{n}" in names["modules"]}
        assert defined - sub <= listed, f"{modname}: names CuPy lacks: {sorted(defined - sub - listed)}"
    public = {n for n in dir(ndarray) if not n.startswith("_")}
    assert public <= set(names["classes"]["cupy.ndarray"]), sorted(public - set(names["classes"]["cupy.ndarray"]))


def test_numpy_only_names_are_missing_as_on_a_gpu():
    with pytest.raises(AttributeError, match="has no attribute 'errstate'"):
        cp.errstate  # noqa: B018 - numpy has it, CuPy does not
    x = cp.arange(3.0)
    with pytest.raises(AttributeError):
        x.__index__  # noqa: B018 - a device scalar cannot size a range or index a list


def test_device_arrays_refuse_implicit_host_conversion_and_host_operands():
    x = cp.arange(6.0).reshape(2, 3)
    assert not isinstance(x, np.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    for bad in (lambda: x + np.ones(3), lambda: np.ones(3) + x, lambda: cp.maximum(x, np.ones(3))):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            bad()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for copyto"):
        cp.copyto(x, np.ones((2, 3)))
    cp.copyto(x, np.array([5.0]))  # one element: a scalar, as in CuPy
    np.testing.assert_array_equal(x.get(), np.full((2, 3), 5.0))


def test_reductions_and_scalar_indexing_return_0d_device_arrays():
    x = cp.arange(4.0)
    for r in (x.sum(), x[1], cp.allclose(x, x), cp.count_nonzero(x), x.max()):
        assert isinstance(r, ndarray) and r.ndim == 0
    assert float(x.sum()) == 6.0


def test_integer_indexing_is_a_view_and_inplace_logic_ops_work_as_in_cupy():
    # CuPy's _ndarray_getitem returns the 0-d view for an all-integer key: writes reach the base
    x = cp.zeros((2, 3))
    v = x[1, 2]
    v += 7.0
    assert float(x[1, 2]) == 7.0 and float(x.sum()) == 7.0
    m = cp.asarray(np.array([True, True, False]))
    m &= cp.asarray(np.array([True, False, False]))
    m |= cp.asarray(np.array([False, False, True]))
    np.testing.assert_array_equal(m.get(), [True, False, True])


def test_transfers_are_counted_by_call_site():
    x = cp.arange(4.0)
    with emulated_cupy.count_transfers() as log:
        float(x.sum())  # sync
        bool((x > 1).any())  # sync
        x[x > 1]  # boolean mask: sync
        cp.asarray(np.arange(3))  # h2d
        x[np.array([0, 2])]  # h2d
        x * 2.0  # neither
    assert sum(log.syncs.values()) == 3 and sum(log.h2d.values()) == 2
    assert all("tests/test_emulated_device.py:" in site for site in list(log.syncs) + list(log.h2d))


def _module():
    from avila_ml.cuda_kernels.launch_config import KERNEL_NAMES, KERNEL_SOURCE_DIR, nvrtc_options
    return cp.RawModule(code=(KERNEL_SOURCE_DIR / "conv4d.cu").read_text(), options=nvrtc_options(),
                        name_expressions=KERNEL_NAMES["conv4d.cu"])


def test_raw_module_launch_rules():
    pytest.importorskip("avila_ml.cuda_kernels.host_emulation").build_host_library()
    kernel = _module().get_function("conv4d_forward_f32")
    with pytest.raises(ecuda.CUDADriverError, match="INVALID_VALUE"):
        kernel((1, 70000, 1), (32, 1, 1), ())  # grid.y above 65535
    with pytest.raises(ecuda.CUDADriverError, match="INVALID_VALUE"):
        kernel((1, 1, 1), (1024, 2, 1), ())  # 2048 threads per block
    with pytest.raises(ecuda.CUDADriverError, match="raise max_dynamic_shared_size_bytes"):
        kernel((1, 1, 1), (32, 1, 1), (), shared_mem=49 * 1024)
    with pytest.raises(ecuda.CUDADriverError, match="opt-in limit"):
        kernel.max_dynamic_shared_size_bytes = 200 * 1024
    with pytest.raises(TypeError, match="Unsupported type"):
        kernel((1, 1, 1), (32, 1, 1), (np.zeros(3, np.float32),))


def test_elementwise_kernel_runs_its_c_body_on_the_host():
    k = cp.ElementwiseKernel("T x, T a, int32 flag", "T y", "y = flag ? a * x + y : sqrt(x);", name="axpy")
    x = cp.asarray(np.array([1.0, 4.0, 9.0]))
    y = cp.asarray(np.array([1.0, 1.0, 1.0]))
    k(x, 2.0, 1, y)
    np.testing.assert_array_equal(y.get(), [3.0, 9.0, 19.0])
    k(x, 2.0, 0, y)
    np.testing.assert_array_equal(y.get(), [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="Unsupported type"):
        k(np.ones(3), 2.0, 1, y)
