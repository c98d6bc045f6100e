"""The smaller PyTorch API that scripts use: formatting, constants, Size, legacy and new_*
constructors, allclose/equal, assert_close, settings (threads, matmul precision, backends
flags, accelerator, device context, compile) and interop (DLPack, NumPy, CUDA array
interface). Each case runs the same code on ``torch`` and on ``avila_ml`` and compares."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import avila_ml as am


def _np(x):
    return x.detach().cpu().numpy()


# ------------------------------------------------------------------------ format, constants
@pytest.mark.parametrize("spec", [".4f", "", ".2e", "8.3f", "g"])
@pytest.mark.parametrize("value", [0.123456789, -3.0, 1e-7])
def test_format_0d_matches_torch(value, spec):
    assert format(am.tensor(value), spec) == format(torch.tensor(value), spec)
    assert format(am.tensor(value, dtype=am.float64), spec) == format(torch.tensor(value, dtype=torch.float64), spec)


def test_format_int_and_errors():
    assert f"{am.tensor(7):5d}" == f"{torch.tensor(7):5d}"
    with pytest.raises(TypeError, match="format"):
        f"{am.ones(2):.3f}"
    with pytest.raises(TypeError):
        f"{torch.ones(2):.3f}"
    assert f"{am.ones(2)}" == str(am.ones(2))


def test_constants():
    for name in ("inf", "pi", "e"):
        assert getattr(am, name) == getattr(torch, name)
    assert math.isnan(am.nan) and math.isnan(torch.nan)


# ------------------------------------------------------------------------------- Size
def test_size_is_a_tuple_like_torch():
    x, t = am.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    assert isinstance(x.shape, am.Size) and isinstance(x.shape, tuple)
    assert x.shape == t.shape == (2, 3, 4)
    assert x.size() == tuple(t.size()) and x.size(-1) == t.size(-1)
    assert x.shape.numel() == t.shape.numel() == 24
    assert isinstance(x.shape[1:], am.Size) and x.shape[1:] == tuple(t.shape[1:])
    assert am.Size([2, 3]) == tuple(torch.Size([2, 3]))
    assert am.zeros(am.Size([2, 3])).shape == (2, 3)
    assert hash(x.shape) == hash((2, 3, 4))
    with pytest.raises(TypeError):
        am.Size([1.5])


# ------------------------------------------------------------------- legacy constructors
@pytest.mark.parametrize("name", ["FloatTensor", "DoubleTensor", "HalfTensor", "LongTensor", "IntTensor",
                                  "ShortTensor", "CharTensor", "ByteTensor", "BoolTensor"])
def test_typed_legacy_constructors(name):
    A, T = getattr(am, name), getattr(torch, name)
    a, t = A([1, 0, 2]), T([1, 0, 2])
    assert a.dtype.name == str(t.dtype).replace("torch.", "")
    np.testing.assert_array_equal(_np(a), t.numpy())
    assert A(2, 3).shape == tuple(T(2, 3).shape)
    assert A().shape == tuple(T().shape) == (0,)
    assert isinstance(a, A) and not isinstance(a, am.DoubleTensor if name != "DoubleTensor" else am.FloatTensor)
    assert isinstance(t, T)


def test_tensor_constructor_legacy_forms():
    for args in [(2, 3), ([1, 2],), ([[1.5, 2.0]],), ()]:
        a, t = am.Tensor(*args), torch.Tensor(*args)
        assert a.shape == tuple(t.shape) and a.dtype.name == str(t.dtype).replace("torch.", "")
        if a.numel():
            if args != (2, 3):  # sizes: PyTorch leaves the memory uninitialised, we give zeros
                np.testing.assert_array_equal(_np(a), t.numpy())
    assert am.Tensor(am.Size([4])).shape == (4,)
    x = am.ones(3)
    assert am.Tensor(x).array is x.array  # wraps, like torch.Tensor(tensor) aliases
    with pytest.raises(TypeError):
        am.Tensor(2.5)
    with pytest.raises(RuntimeError, match="negative"):
        am.Tensor(-1)


def test_parameter_and_pickling_keep_working():
    import pickle
    p = am.nn.Parameter(am.arange(3, dtype=am.int64).float())
    assert p.requires_grad and p.dtype == am.float32
    q = pickle.loads(pickle.dumps(am.tensor([1, 2])))
    assert q.dtype == am.int64 and q.tolist() == [1, 2]


# ---------------------------------------------------------------------------- new_*
@pytest.mark.parametrize("dtype", ["float64", "int64", "float32"])
def test_new_constructors(dtype):
    a = am.ones(2, dtype=getattr(am, dtype))
    t = torch.ones(2, dtype=getattr(torch, dtype))
    for name, args in [("new_zeros", (2, 3)), ("new_ones", ((3,),)), ("new_empty", (1, 2)),
                       ("new_full", ((2, 2), 5))]:
        x, y = getattr(a, name)(*args), getattr(t, name)(*args)
        assert x.shape == tuple(y.shape) and x.dtype.name == dtype, name
        if name != "new_empty":
            np.testing.assert_array_equal(_np(x), y.numpy())
    x, y = a.new_tensor([1, 2]), t.new_tensor([1, 2])
    assert x.dtype.name == str(y.dtype).replace("torch.", "")
    assert a.new_zeros(2, dtype=am.int32).dtype == am.int32
    assert am.ones(2).new_ones(2, requires_grad=True).requires_grad


# ------------------------------------------------------------------ allclose, equal, t
def test_allclose_equal_match_torch():
    pairs = [([1.0, 2.0], [1.0, 2.0 + 1e-9]), ([1.0, float("nan")], [1.0, float("nan")]),
             ([1.0, 2.0], [1.0, 2.1]), ([float("inf")], [float("inf")])]
    for a, b in pairs:
        for kw in ({}, {"equal_nan": True}, {"rtol": 0.1, "atol": 0.0}):
            assert am.allclose(am.tensor(a), am.tensor(b), **kw) == torch.allclose(torch.tensor(a), torch.tensor(b), **kw)
        assert am.equal(am.tensor(a), am.tensor(b)) == torch.equal(torch.tensor(a), torch.tensor(b))
        assert am.tensor(a).allclose(am.tensor(b)) == torch.tensor(a).allclose(torch.tensor(b))
    assert am.equal(am.ones(2), am.ones(3)) is False
    with pytest.raises(RuntimeError, match="dtype"):
        am.isclose(am.ones(2), am.ones(2, dtype=am.float64))


def test_methods_exist_like_torch():
    x, t = am.tensor([[3.0, 1.0], [2.0, 5.0]]), torch.tensor([[3.0, 1.0], [2.0, 5.0]])
    np.testing.assert_array_equal(_np(x.t()), t.t().numpy())
    np.testing.assert_array_equal(_np(x.sort(descending=True).values), t.sort(descending=True).values.numpy())
    np.testing.assert_array_equal(_np(x.argsort(dim=0)), t.argsort(dim=0).numpy())
    np.testing.assert_array_equal(_np(x.topk(1).indices), t.topk(1).indices.numpy())
    np.testing.assert_array_equal(_np(x.triu()), t.triu().numpy())
    np.testing.assert_array_equal(_np(x.tril(-1)), t.tril(-1).numpy())
    np.testing.assert_array_equal(_np((x > 2).nonzero()), (t > 2).nonzero().numpy())
    np.testing.assert_array_equal(_np(x.repeat_interleave(2, dim=0)), t.repeat_interleave(2, dim=0).numpy())
    np.testing.assert_array_equal(_np(x.unique()), t.unique().numpy())
    np.testing.assert_array_equal(_np(am.bucketize(x, am.tensor([2.5]))), torch.bucketize(t, torch.tensor([2.5])).numpy())
    idx = am.tensor([[0, 0], [1, 1]])
    np.testing.assert_array_equal(_np(x.scatter_reduce(1, idx, x, "sum")),
                                  t.scatter_reduce(1, torch.tensor([[0, 0], [1, 1]]), t, "sum").numpy())


def test_sort_nan_and_stability_like_torch():
    data = [2.0, float("nan"), 1.0, 2.0, -1.0, float("nan")]
    for desc in (False, True):
        v, i = am.sort(am.tensor(data), descending=desc, stable=True)
        vt, it = torch.sort(torch.tensor(data), descending=desc, stable=True)
        np.testing.assert_array_equal(_np(v), vt.numpy())
        np.testing.assert_array_equal(_np(i), it.numpy())


def test_op_errors():
    with pytest.raises(RuntimeError, match="topk: k"):
        am.topk(am.ones(3), 4)
    with pytest.raises(RuntimeError, match="triu: .*2 dimensions"):
        am.triu(am.ones(3))
    with pytest.raises(RuntimeError, match="scatter_reduce: reduce"):
        am.scatter_reduce(am.ones(3), 0, am.tensor([0]), am.ones(1), "max")
    with pytest.raises(RuntimeError, match="repeat_interleave: repeats has 2"):
        am.repeat_interleave(am.ones(3), am.tensor([1, 2]), dim=0)
    with pytest.raises(RuntimeError, match="bucketize: boundaries must be 1-d"):
        am.bucketize(am.ones(3), am.ones(2, 2))


# ------------------------------------------------------------------------- assert_close
def _messages(fn_am, fn_t):
    with pytest.raises(AssertionError) as ea:
        fn_am()
    with pytest.raises(AssertionError) as et:
        fn_t()
    return str(ea.value), str(et.value)


def test_assert_close_passes_and_fails_like_torch():
    cases = [([1.0, 2.0, 3.0], [1.0, 2.0 + 1e-6, 3.0], "float32"),
             ([1.0, 2.0, 3.0], [1.0, 2.0 + 1e-6, 3.0], "float64"),
             ([1.0, 2.0, 3.0], [1.5, 2.0, 4.0], "float32"),
             ([1, 2], [1, 3], "int64"), ([1.0, float("nan")], [1.0, float("nan")], "float64")]
    for a, b, dt in cases:
        def ours(a=a, b=b, dt=dt, **kw):
            am.testing.assert_close(am.tensor(a, dtype=getattr(am, dt)), am.tensor(b, dtype=getattr(am, dt)), **kw)

        def theirs(a=a, b=b, dt=dt, **kw):
            torch.testing.assert_close(torch.tensor(a, dtype=getattr(torch, dt)), torch.tensor(b, dtype=getattr(torch, dt)), **kw)
        for kw in ({}, {"equal_nan": True}, {"rtol": 0.5, "atol": 0.0}):
            try:
                theirs(**kw)
                torch_ok = True
            except AssertionError:
                torch_ok = False
            if torch_ok:
                ours(**kw)
            else:
                with pytest.raises(AssertionError):
                    ours(**kw)


def test_assert_close_message_matches_torch_lines():
    ma, mt = _messages(lambda: am.testing.assert_close(am.tensor([1.0, 2.0, 3.0]), am.tensor([1.0, 2.5, 3.5])),
                       lambda: torch.testing.assert_close(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.5, 3.5])))
    assert ma == mt  # word for word, numbers included
    for a, b, dt in [([1.0, 2.0], [1.0, 3.0], "float64"), ([[1, 2], [3, 4]], [[1, 2], [3, 9]], "int64"),
                     (1.0, 1.5, "float32")]:
        ma, mt = _messages(lambda: am.testing.assert_close(am.tensor(a, dtype=getattr(am, dt)), am.tensor(b, dtype=getattr(am, dt))),
                           lambda: torch.testing.assert_close(torch.tensor(a, dtype=getattr(torch, dt)),
                                                              torch.tensor(b, dtype=getattr(torch, dt))))
        assert ma == mt
    ma, mt = _messages(lambda: am.testing.assert_close(am.ones(2), am.ones(3)),
                       lambda: torch.testing.assert_close(torch.ones(2), torch.ones(3)))
    assert "'shape' do not match" in ma and "'shape' do not match" in mt
    ma, mt = _messages(lambda: am.testing.assert_close(am.ones(2), am.ones(2, dtype=am.float64)),
                       lambda: torch.testing.assert_close(torch.ones(2), torch.ones(2, dtype=torch.float64)))
    assert "'dtype' do not match" in ma and "'dtype' do not match" in mt
    am.testing.assert_close(am.ones(2), am.ones(2, dtype=am.float64), check_dtype=False)
    am.testing.assert_close({"a": [am.ones(2), 3]}, {"a": [am.ones(2), 3]})
    with pytest.raises(AssertionError, match=r"item \['a'\]\[0\]"):
        am.testing.assert_close({"a": [am.ones(2)]}, {"a": [am.zeros(2)]})
    with pytest.raises(AssertionError, match="custom"):
        am.testing.assert_close(am.ones(1), am.zeros(1), msg="custom")
    with pytest.raises(ValueError, match="rtol"):
        am.testing.assert_close(am.ones(1), am.ones(1), atol=1.0)


# ------------------------------------------------------------------------------ settings
def test_num_threads_round_trip_through_threadpoolctl():
    from threadpoolctl import threadpool_info
    before = am.get_num_threads()
    try:
        am.set_num_threads(1)
        assert am.get_num_threads() == 1
        blas = [m for m in threadpool_info() if m.get("user_api") == "blas"]
        assert blas and all(m["num_threads"] == 1 for m in blas)
        with pytest.raises(RuntimeError):
            am.set_num_threads(0)
    finally:
        am.set_num_threads(before)
    assert am.get_num_threads() == before


def test_matmul_precision_and_backend_flags():
    assert am.get_float32_matmul_precision() == torch.get_float32_matmul_precision() == "highest"
    try:
        am.set_float32_matmul_precision("medium")
        assert am.backends.cuda.matmul.allow_tf32 is True
        am.backends.cuda.matmul.allow_tf32 = False
        assert am.get_float32_matmul_precision() == "highest"
    finally:
        am.set_float32_matmul_precision("highest")
    with pytest.raises(RuntimeError):
        am.set_float32_matmul_precision("fast")
    for flag in ("enabled", "benchmark", "deterministic", "allow_tf32"):
        assert getattr(am.backends.cudnn, flag) == getattr(torch.backends.cudnn, flag), flag
    assert am.backends.mps.is_available() is False
    assert am.backends.get_conv_algorithm() == "auto"  # the xp-backend package still works


def test_accelerator_and_device_context():
    assert am.accelerator.is_available() == am.cuda.is_available()
    assert am.accelerator.device_count() == (0 if not am.cuda.is_available() else am.accelerator.device_count())
    if not am.cuda.is_available():
        assert am.accelerator.current_accelerator() is None
    before = am.get_default_device()
    with am.device("cpu") as d:
        assert d == "cpu" and am.zeros(1).device == "cpu"
    assert am.get_default_device() == before
    if not am.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            with am.device("cuda"):
                pass
        assert am.get_default_device() == before


def test_compile_returns_the_model_and_warns_once():
    from avila_ml import settings
    settings._state["compile_noted"] = False
    net = am.nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert am.compile(net) is net
        assert am.compile(net, mode="max-autotune") is net
        f = am.compile()(lambda x: x + 1)
    assert sum("no JIT" in str(x.message) for x in w) == 1
    assert f(1) == 2


# ------------------------------------------------------------------------------- interop
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int32", "bool", "float16", "uint8"])
def test_dlpack_with_torch_and_numpy_is_zero_copy(dtype):
    a = am.tensor([1, 0, 1, 1], dtype=getattr(am, dtype))
    t = torch.from_dlpack(a)
    assert str(t.dtype) == f"torch.{dtype}" and t.data_ptr() == a.array.ctypes.data
    n = np.from_dlpack(a)
    assert np.shares_memory(n, a.array)
    back = am.from_dlpack(torch.tensor([1, 0, 1], dtype=getattr(torch, dtype)))
    assert back.dtype.name == dtype and back.tolist() == [1, 0, 1] or dtype == "bool"
    src = torch.arange(6, dtype=torch.float64).reshape(2, 3)[:, ::2]  # non-contiguous
    v = am.from_dlpack(src)
    src[0, 0] = 42.0
    assert v.tolist() == [[42.0, 2.0], [3.0, 5.0]]
    assert am.from_dlpack(np.arange(3.0)).array.base is not None
    assert a.__dlpack_device__() == (1, 0)


def test_dlpack_refuses_grad_and_non_dlpack():
    with pytest.raises(RuntimeError, match="requires grad"):
        torch.from_dlpack(am.ones(2, requires_grad=True))
    with pytest.raises(TypeError, match="from_dlpack"):
        am.from_dlpack([1, 2])


def test_numpy_asarray_is_zero_copy_and_cuda_interface_absent_on_cpu():
    x = am.arange(4.0)
    a = np.asarray(x)
    a[0] = 7.0
    assert x[0].item() == 7.0 and np.shares_memory(a, x.array)
    assert not np.shares_memory(np.array(x), x.array)  # np.array copies
    assert np.asarray(x, dtype=np.float64).dtype == np.float64
    assert not hasattr(x, "__cuda_array_interface__")
    assert not hasattr(torch.ones(1), "__cuda_array_interface__")


def test_strides_offsets_pointers_and_small_casts_match_torch():
    a, t = am.arange(24.0).reshape(2, 3, 4), torch.arange(24.0).reshape(2, 3, 4)
    for f in (lambda x: x, lambda x: x.transpose(0, 2), lambda x: x[:, 1:, ::2], lambda x: x[1]):
        assert f(a).stride() == f(t).stride()
        assert f(a).storage_offset() == f(t).storage_offset()
        assert f(a).data_ptr() - a.data_ptr() == f(t).data_ptr() - t.data_ptr()
    assert a.stride(1) == t.stride(1) and a.nelement() == t.nelement()
    for name in ("byte", "char", "short"):
        assert getattr(a, name)().dtype.name == str(getattr(t, name)().dtype).replace("torch.", "")
