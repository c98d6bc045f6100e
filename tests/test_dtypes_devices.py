"""dtypes and PyTorch's promotion rules (checked against ``torch.result_type`` and real ops),
device strings, the default device, ``AVILA_ML_DEVICE`` and the errors without a GPU."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import avila_ml as am

DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
SCALARS = [True, 3, -2, 2.5, 0.0]


def _tname(d) -> str:
    return str(d).replace("torch.", "")


def _pair(dtype, ndim, device):
    shape = (2,) * ndim
    return (am.ones(shape, dtype=getattr(am, dtype), device=device),
            torch.ones(shape, dtype=getattr(torch, dtype)))


# ------------------------------------------------------------------------ promotion
# (dim tensor, dim tensor), (dim, 0-d), (0-d, dim), (0-d, 0-d) for every dtype pair
PAIRS = [(a, b, na, nb) for a, b in itertools.product(DTYPES, DTYPES)
         for na, nb in ((1, 1), (1, 0), (0, 1), (0, 0))]


@pytest.mark.parametrize("a,b,na,nb", PAIRS, ids=[f"{a}{'[]' if na else '()'}-{b}{'[]' if nb else '()'}" for a, b, na, nb in PAIRS])
def test_result_type_tensor_tensor_matches_torch(a, b, na, nb):
    x, tx = _pair(a, na, "cpu")
    y, ty = _pair(b, nb, "cpu")
    assert am.result_type(x, y).name == _tname(torch.result_type(tx, ty))


@pytest.mark.parametrize("a", DTYPES)
@pytest.mark.parametrize("ndim", [0, 1])
@pytest.mark.parametrize("s", SCALARS, ids=[repr(s) for s in SCALARS])
def test_result_type_tensor_scalar_matches_torch(a, ndim, s):
    x, tx = _pair(a, ndim, "cpu")
    assert am.result_type(x, s).name == _tname(torch.result_type(tx, s))


ARITH_DTYPES = ["bool", "uint8", "int32", "int64", "float16", "float32", "float64"]


@pytest.mark.parametrize("a,b", list(itertools.product(ARITH_DTYPES, ARITH_DTYPES)))
@pytest.mark.parametrize("dims", [(1, 1), (1, 0), (0, 1)])
def test_ops_produce_the_promoted_dtype(a, b, dims, device):
    x, tx = _pair(a, dims[0], device)
    y, ty = _pair(b, dims[1], device)
    for name in ("add", "mul", "maximum", "eq", "div"):
        ours = getattr(am, name)(x, y)
        theirs = getattr(torch, name)(tx, ty)
        assert ours.dtype.name == _tname(theirs.dtype), f"{name}({a}, {b})"
        np.testing.assert_array_equal(ours.detach().cpu().numpy(), theirs.numpy())
    if "bool" not in (a, b):
        assert (x - y).dtype.name == _tname((tx - ty).dtype)
    else:  # PyTorch refuses `-` on bool tensors
        with pytest.raises(RuntimeError, match="sub.*bool"):
            x - y


@pytest.mark.parametrize("a", ARITH_DTYPES)
@pytest.mark.parametrize("s", SCALARS, ids=[repr(s) for s in SCALARS])
def test_ops_with_python_scalars_produce_torch_dtypes(a, s, device):
    x, tx = _pair(a, 1, device)
    for op in (lambda u, v: u * v, lambda u, v: v + u, lambda u, v: u / v if v != 0 else u * v):
        assert op(x, s).dtype.name == _tname(op(tx, s).dtype)


def test_python_scalar_does_not_upcast_float32(device):
    x = am.ones(3, device=device)
    assert (x * 2.5).dtype == am.float32
    assert (2.5 + x).dtype == am.float32
    assert (x ** 2.0).dtype == am.float32
    assert am.ones(3, dtype=am.float16, device=device).add(1e-3).dtype == am.float16
    assert (am.arange(3, device=device) * 2.5).dtype == am.float32  # int tensor, float scalar
    assert (am.arange(3, dtype=am.int32, device=device) + 7).dtype == am.int32
    assert (am.ones(2, dtype=am.bool, device=device) + 1).dtype == am.int64
    # a 0-d tensor of a wider float does not upcast a dim tensor of the same category
    assert (x + am.tensor(1.0, dtype=am.float64, device=device)).dtype == am.float32
    # ... but a higher category does
    assert (am.arange(3, device=device) + am.tensor(1.5, dtype=am.float64, device=device)).dtype == am.float64


def test_promote_types_matches_torch():
    for a, b in itertools.product(DTYPES, DTYPES):
        assert am.promote_types(getattr(am, a), getattr(am, b)).name == \
            _tname(torch.promote_types(getattr(torch, a), getattr(torch, b)))


def test_default_dtype_controls_factories_and_scalars(device):
    am.set_default_dtype(am.float64)
    try:
        assert am.get_default_dtype() == am.float64
        assert am.tensor([1.5], device=device).dtype == am.float64
        assert am.zeros(2, device=device).dtype == am.float64
        assert (am.arange(2, device=device) * 0.5).dtype == am.float64
        assert am.arange(0, 1, 0.5, device=device).dtype == am.float64
    finally:
        am.set_default_dtype(am.float32)
    assert am.tensor([1.5], device=device).dtype == am.float32
    with pytest.raises(TypeError, match="only floating dtypes"):
        am.set_default_dtype(am.int64)


def test_dtype_objects():
    assert am.float32.itemsize == 4 and am.float64.itemsize == 8 and am.float16.itemsize == 2
    assert am.float32.is_floating_point and not am.int64.is_floating_point
    assert am.is_floating_point(am.float16) and not am.is_floating_point(am.bool)
    assert am.float is am.float32 and am.double is am.float64 and am.half is am.float16
    assert am.long is am.int64 and am.int is am.int32
    assert repr(am.float32) == "avila_ml.float32"
    import pickle
    assert pickle.loads(pickle.dumps(am.int64)) is am.int64


def test_unsupported_numpy_dtype_is_named():
    with pytest.raises(TypeError, match="complex128"):
        am.from_numpy(np.zeros(2, dtype=np.complex128))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64", "bool"])
def test_every_dtype_round_trips(dtype, device):
    t = am.tensor([0, 1, 1], dtype=getattr(am, dtype), device=device)
    assert t.dtype.name == dtype and t.array.dtype == np.dtype(dtype if dtype != "bool" else "bool")
    for other in ("float32", "int64", "bool"):
        u = t.to(getattr(am, other))
        ref = torch.tensor([0, 1, 1], dtype=getattr(torch, dtype)).to(getattr(torch, other))
        assert u.dtype.name == other
        np.testing.assert_array_equal(u.cpu().numpy(), ref.numpy())


# ---------------------------------------------------------------------------- devices
@pytest.mark.parametrize("spec", ["cpu", "cuda", "cuda:1", "CUDA:0", " cpu "])
def test_device_strings_like_torch(spec):
    d = am.device(spec)
    ref = torch.device(spec.strip().lower())
    assert d.type == ref.type
    if ref.index is None and ref.type == "cuda":
        # a deliberate difference: a bare "cuda" is resolved to the current GPU, index 0
        assert str(d) == "cuda:0" and d.index == 0
    else:
        assert str(d) == str(ref) and repr(d) == repr(ref) and d.index == ref.index
    assert d == str(d) and hash(d) == hash(am.device(str(d)))


def test_device_with_index_and_copies():
    assert am.device("cuda", 1) == "cuda:1"
    assert repr(am.device("cuda", 1)) == repr(torch.device("cuda", 1))
    assert am.device(am.device("cpu")) == "cpu"
    assert am.device("cpu") != "cuda" and am.device("cpu") != "nonsense"
    import pickle
    assert pickle.loads(pickle.dumps(am.device("cuda:2"))) == "cuda:2"


@pytest.mark.parametrize("spec,err", [("tpu", ValueError), ("cuda:x", ValueError), ("cpu:1", ValueError),
                                      ("cuda:-1", ValueError), (3.5, TypeError)])
def test_bad_device_strings_raise(spec, err):
    with pytest.raises(err, match="device"):
        am.device(spec)


def test_cuda_is_available_reports_cupy_and_gpu():
    try:
        import cupy  # noqa: F401
        has_cupy = True
    except ImportError:
        has_cupy = False
    assert isinstance(am.cuda.is_available(), bool)
    if not has_cupy:
        assert am.cuda.is_available() is False
    assert am.cuda.device_count() == (0 if not am.cuda.is_available() else am.cuda.device_count())


@pytest.mark.skipif(am.cuda.is_available(), reason="checks the errors of a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_raises_clearly():
    what = "CuPy is not installed" if _no_cupy() else "no (usable )?GPU"
    for call in (lambda: am.set_default_device("cuda"), lambda: am.zeros(2, device="cuda"),
                 lambda: am.ones(2).to("cuda"), lambda: am.ones(2).cuda(),
                 lambda: am.tensor([1.0], device="cuda:1"), lambda: am.randn(2, device="cuda")):
        with pytest.raises(RuntimeError, match=f"CUDA requested but.*{what}"):
            call()
    assert am.get_default_device() == "cpu"  # the failed set_default_device changed nothing


def _no_cupy() -> bool:
    try:
        import cupy  # noqa: F401
        return False
    except ImportError:
        return True


def test_set_default_device(device):
    prev = am.get_default_device()
    try:
        am.set_default_device(device)
        assert am.get_default_device() == device
        assert am.zeros(2).device == device and am.tensor([1.0]).device == device
        assert am.arange(3).device == device and am.rand(2).device == device
    finally:
        am.set_default_device(prev)
    assert am.zeros(1).device == prev


def _run_with_env(value, code):
    env = dict(os.environ)
    env["AVILA_ML_DEVICE"] = value
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_avila_ml_device_env_sets_the_default():
    r = _run_with_env("cpu", "import avila_ml as am; print(am.get_default_device(), am.zeros(1).device)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cpu", "cpu"]


@pytest.mark.skipif(am.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_avila_ml_device_env_cuda_without_gpu_raises_at_first_use():
    r = _run_with_env("cuda:0", "import avila_ml as am\nprint(am.get_default_device())\nam.zeros(1)")
    assert r.returncode != 0
    assert r.stdout.strip() == "cuda:0"
    assert "CUDA requested but" in r.stderr


def test_avila_ml_device_env_bad_value_names_the_variable():
    r = _run_with_env("tpu", "import avila_ml")
    assert r.returncode != 0 and "AVILA_ML_DEVICE='tpu'" in r.stderr


def test_tensors_report_their_device(device):
    t = am.ones(2, device=device)
    assert t.device == device and t.device.type == device.split(":")[0]
    assert t.is_cuda == (device != "cpu")
    assert t.cpu().device == "cpu"
    assert (t * 2).device == device and t.sum().device == device


def test_bool_tensors_refuse_minus_like_torch(device):
    b = am.tensor([True, False], device=device)
    with pytest.raises(RuntimeError, match="neg.*bool"):
        -b
    with pytest.raises(RuntimeError, match="sub.*bool"):
        b - 1
    assert (~b).tolist() == [False, True]


def test_unsigned_wraps_python_ints_like_torch(device):
    u = am.ones(2, dtype=am.uint8, device=device)
    assert (u * -2).tolist() == (torch.ones(2, dtype=torch.uint8) * -2).tolist() == [254, 254]
    assert (u * -2).dtype == am.uint8


def test_cupy_backend_module_imports_without_cupy():
    # the doctest collector imports every module; the GPU backend must not need CuPy for that
    import importlib
    mod = importlib.import_module("avila_ml.backends.cupy_backend")
    assert hasattr(mod, "CupyBackend")
