"""Tensor factories, attributes, conversions, repr and in-place updates, checked against
PyTorch (``torch`` is the reference for dtype inference, values and printing)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import avila_ml as am


def _tname(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _np(t):
    return t.detach().cpu().numpy()


# ---------------------------------------------------------------- dtype inference
INFER_CASES = [
    [1, 2], [1.0, 2], [True, False], 3, 3.5, True, [[1, 2], [3, 4]], [], [[]], [1, 2.5, True],
    np.array([1, 2], dtype=np.int32), np.array([1.0], dtype=np.float32), np.array([1, 2], dtype=np.uint8),
    np.array([1.0], dtype=np.float16), np.array([True]), np.float64(2.0), np.int32(3), [np.float32(1.0)],
    np.array([[1.5, 2.0]]), np.array(7, dtype=np.int16), np.array([1], dtype=np.int8),
]


@pytest.mark.parametrize("data", INFER_CASES, ids=[repr(c)[:40] for c in INFER_CASES])
def test_tensor_infers_dtype_like_torch(data, device):
    t = am.tensor(data, device=device)
    ref = torch.tensor(data)
    assert t.dtype.name == _tname(ref)
    assert tuple(t.shape) == tuple(ref.shape)
    assert t.device == device
    np.testing.assert_array_equal(_np(t), ref.numpy())


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64", "bool", "uint8"])
def test_tensor_with_explicit_dtype(dtype, device):
    data = [[0, 1.5], [2, -3]] if dtype != "uint8" else [[0, 1.5], [2, 3]]
    t = am.tensor(data, dtype=getattr(am, dtype), device=device)
    ref = torch.tensor(data, dtype=getattr(torch, dtype))
    assert t.dtype.name == dtype
    np.testing.assert_array_equal(_np(t), ref.numpy())


def test_tensor_rejects_ragged_and_unsupported_data(device):
    with pytest.raises((TypeError, ValueError), match="tensor"):
        am.tensor([[1, 2], [3]], device=device)
    with pytest.raises(TypeError, match="complex"):
        am.tensor(np.array([1 + 2j]), device=device)


def test_tensor_copies_but_as_tensor_and_from_numpy_share():
    a = np.arange(4.0)
    t, s, f = am.tensor(a), am.as_tensor(a), am.from_numpy(a)
    a[0] = 100.0
    assert t[0].item() == 0.0  # torch.tensor copies
    assert s[0].item() == 100.0 and f[0].item() == 100.0  # as_tensor / from_numpy share
    with am.no_grad():
        f.mul_(2)
    assert a[1] == 2.0  # and writes go back to the NumPy array
    assert np.shares_memory(f.numpy(), a)
    with pytest.raises(TypeError, match="from_numpy.*np.ndarray.*list"):
        am.from_numpy([1.0, 2.0])


def test_as_tensor_of_a_tensor(device):
    x = am.ones(2, device=device)
    assert am.as_tensor(x) is x
    assert am.as_tensor(x, dtype=am.float64).dtype == am.float64


# ---------------------------------------------------------------------------- factories
@pytest.mark.parametrize("name", ["zeros", "ones", "empty"])
def test_filled_factories(name, device):
    for args in ((2, 3), ((2, 3),), ([4],), ()):
        t = getattr(am, name)(*args, device=device)
        ref = getattr(torch, name)(*args) if args else getattr(torch, name)(())
        assert tuple(t.shape) == tuple(ref.shape) and t.dtype == am.float32 and t.device == device
        if name != "empty":
            np.testing.assert_array_equal(_np(t), ref.numpy())
    t = getattr(am, name)(2, dtype=am.int64, device=device, requires_grad=False)
    assert t.dtype == am.int64
    assert getattr(am, name)(2, device=device, requires_grad=True).requires_grad
    with pytest.raises(RuntimeError, match="negative dimension"):
        getattr(am, name)(2, -1, device=device)


@pytest.mark.parametrize("fill", [7, 2.5, True, -1])
def test_full_infers_dtype_like_torch(fill, device):
    t = am.full((2, 3), fill, device=device)
    ref = torch.full((2, 3), fill)
    assert t.dtype.name == _tname(ref)
    np.testing.assert_array_equal(_np(t), ref.numpy())
    assert am.full(4, fill, device=device).shape == (4,)


ARANGE_CASES = [(5,), (0, 1, 0.25), (1, 2.5), (10, 0, -3), (0, 1, 0.1), (-2, 2), (2, 2), (0.5, 3)]


@pytest.mark.parametrize("args", ARANGE_CASES, ids=[str(a) for a in ARANGE_CASES])
def test_arange_like_torch(args, device):
    t = am.arange(*args, device=device)
    ref = torch.arange(*args)
    assert t.dtype.name == _tname(ref) and tuple(t.shape) == tuple(ref.shape)
    np.testing.assert_allclose(_np(t), ref.numpy(), rtol=1e-6, atol=1e-7)


def test_arange_errors_and_dtype(device):
    assert am.arange(4, dtype=am.float64, device=device).dtype == am.float64
    with pytest.raises(RuntimeError, match="step must be nonzero"):
        am.arange(0, 3, 0, device=device)
    with pytest.raises(RuntimeError, match="inconsistent with step sign"):
        am.arange(0, 3, -1, device=device)


@pytest.mark.parametrize("args", [(0, 1, 5), (-2, 3, 1), (1, 0, 4), (0, 1, 0), (2.5, -1, 7)])
def test_linspace_like_torch(args, device):
    t = am.linspace(*args, device=device)
    ref = torch.linspace(*args)
    assert t.dtype == am.float32 and tuple(t.shape) == tuple(ref.shape)
    np.testing.assert_allclose(_np(t), ref.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("args", [(3,), (2, 3), (3, 1), (0,)])
def test_eye_like_torch(args, device):
    t = am.eye(*args, device=device)
    ref = torch.eye(*args)
    assert t.dtype == am.float32
    np.testing.assert_array_equal(_np(t), ref.numpy())


def test_random_factories(device):
    r = am.rand(1000, device=device)
    assert r.dtype == am.float32 and r.shape == (1000,)
    a = _np(r)
    assert a.min() >= 0 and a.max() < 1 and 0.4 < a.mean() < 0.6
    n = _np(am.randn(2000, dtype=am.float64, device=device))
    assert n.dtype == np.float64 and abs(n.mean()) < 0.1 and 0.9 < n.std() < 1.1
    i = am.randint(-3, 5, (500,), device=device)
    assert i.dtype == am.int64 and _np(i).min() == -3 and _np(i).max() == 4
    assert am.randint(4, (3, 2), device=device).shape == (3, 2)
    p = am.randperm(6, device=device)
    assert p.dtype == am.int64 and sorted(_np(p).tolist()) == list(range(6))
    with pytest.raises(RuntimeError, match="low < high"):
        am.randint(3, 3, (2,), device=device)


@pytest.mark.parametrize("name", ["zeros_like", "ones_like", "empty_like", "rand_like", "randn_like"])
def test_like_factories_keep_shape_dtype_device(name, device):
    x = am.ones(2, 3, dtype=am.float64, device=device)
    t = getattr(am, name)(x)
    assert t.shape == (2, 3) and t.dtype == am.float64 and t.device == device
    t32 = getattr(am, name)(x, dtype=am.float32)
    assert t32.dtype == am.float32
    if name in ("zeros_like", "ones_like"):
        ref = getattr(torch, name)(torch.ones(2, 3, dtype=torch.float64))
        np.testing.assert_array_equal(_np(t), ref.numpy())
        xi = am.arange(3, device=device)
        assert getattr(am, name)(xi).dtype == am.int64


def test_full_like_and_randint_like(device):
    x = am.arange(4, device=device)
    t = am.full_like(x, 7)
    assert t.dtype == am.int64 and _np(t).tolist() == [7, 7, 7, 7]
    assert am.full_like(am.ones(2, device=device), 2.5).dtype == am.float32
    r = am.randint_like(x, 10)
    assert r.dtype == am.int64 and r.shape == (4,) and _np(r).max() < 10


# --------------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("factory", [lambda: am.rand(7), lambda: am.randn(3, 3, dtype=am.float64),
                                     lambda: am.randint(0, 100, (9,)), lambda: am.randperm(10),
                                     lambda: am.rand_like(am.ones(4)), lambda: am.ones(5).uniform_(-1, 1)])
def test_manual_seed_gives_bit_identical_tensors(factory):
    am.manual_seed(1234)
    a = factory().numpy()
    b = factory().numpy()
    am.manual_seed(1234)
    c = factory().numpy()
    assert a.tobytes() == c.tobytes()
    assert a.tobytes() != b.tobytes()
    am.manual_seed(1235)
    assert factory().numpy().tobytes() != a.tobytes()


def test_manual_seed_is_reproducible_across_processes():
    code = "import avila_ml as am; am.manual_seed(7); print(am.randn(4, dtype=am.float64).numpy().tobytes().hex())"
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert outs[0] == outs[1] and len(outs[0]) > 10
    am.manual_seed(7)
    assert am.randn(4, dtype=am.float64).numpy().tobytes().hex() == outs[0].strip()


# ------------------------------------------------------------------------------- attributes
def test_attributes(device):
    x = am.ones(2, 3, 4, device=device)
    assert x.shape == (2, 3, 4) and x.size() == (2, 3, 4) and x.size(-1) == 4 and x.size(1) == 3
    assert x.ndim == 3 and x.dim() == 3 and x.numel() == 24 and len(x) == 2
    assert x.dtype == am.float32 and x.device == device and x.element_size() == 4
    assert not x.requires_grad and x.grad is None and x.grad_fn is None and x.is_leaf
    assert x.is_floating_point() and not am.arange(2, device=device).is_floating_point()
    assert x.T.shape == (4, 3, 2) and x.mT.shape == (2, 4, 3)
    assert [t.shape for t in x] == [(3, 4), (3, 4)]
    with pytest.raises(IndexError, match="size.*dimension out of range"):
        x.size(3)
    with pytest.raises(TypeError, match="len.*0-d"):
        len(am.tensor(1.0, device=device))


def test_bool_of_a_tensor(device):
    assert bool(am.tensor([2.0], device=device)) and not bool(am.tensor(0.0, device=device))
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(am.ones(2, device=device))


# ----------------------------------------------------------------------- repr like torch
def _repr_cases():
    return [
        lambda lib: lib.tensor([1.0, 2.0]),
        lambda lib: lib.tensor([0.5, 1.0]),
        lambda lib: lib.tensor([1, 2]),
        lambda lib: lib.tensor([True, False]),
        lambda lib: lib.tensor([1.0, 2.0], dtype=lib.float64),
        lambda lib: lib.tensor(3.0),
        lambda lib: lib.tensor(3),
        lambda lib: lib.tensor([]),
        lambda lib: lib.zeros(0, 3),
        lambda lib: lib.zeros(2, 0, dtype=lib.int64),
        lambda lib: lib.tensor([1.5], requires_grad=True),
        lambda lib: lib.tensor([1, 2], dtype=lib.int32),
        lambda lib: lib.arange(12.0).reshape(3, 4) / 7,
        lambda lib: lib.tensor([1e10, 1.0]),
        lambda lib: lib.tensor([1e-5, 1.0]),
        lambda lib: lib.tensor([float("nan"), float("inf"), -1.5]),
        lambda lib: lib.tensor([123456.5]),
        lambda lib: lib.tensor(2, dtype=lib.float16),
        lambda lib: lib.tensor([[1.5, 2.0], [3.0, 4.0]], dtype=lib.float64),
        lambda lib: lib.tensor([[-1.0, 0.25], [10.0, 4.0]]),
        lambda lib: lib.tensor([True, True]),
        lambda lib: lib.tensor([[False, True], [True, True]]),
    ]


@pytest.mark.parametrize("k", range(len(_repr_cases())))
def test_repr_matches_torch(k):
    make = _repr_cases()[k]
    ours = repr(make(am)).replace("avila_ml.", "torch.")
    assert ours == repr(make(torch))


def test_repr_of_graph_tensors():
    x = am.tensor([1.5], requires_grad=True)
    tx = torch.tensor([1.5], requires_grad=True)
    assert repr(x * 2) == repr(tx * 2)
    assert repr((x * 2).sum()) == repr((tx * 2).sum())
    assert repr(x.exp()).startswith("tensor([4.4817], grad_fn=<ExpBackward0>")


def test_repr_summarises_large_tensors():
    r = repr(am.arange(5000.0))
    assert "..." in r and len(r) < 200


# -------------------------------------------------------------------------- conversions
def test_item_tolist_numpy(device):
    x = am.tensor([[1.5, 2.0], [3.0, 4.0]], device=device)
    tx = torch.tensor([[1.5, 2.0], [3.0, 4.0]])
    assert x.tolist() == tx.tolist()
    assert am.tensor([1, 2], device=device).tolist() == [1, 2]
    assert am.tensor(2.5, device=device).tolist() == 2.5
    assert x[0, 1].item() == 2.0 and isinstance(x[0, 1].item(), float)
    assert isinstance(am.tensor([3], device=device).item(), int)
    assert isinstance(am.tensor(True, device=device).item(), bool)
    with pytest.raises(RuntimeError, match="item.*4 elements"):
        x.item()
    assert float(am.tensor([2.5], device=device)) == 2.5 and int(am.tensor(3.7, device=device)) == 3


def test_numpy_shares_memory_and_refuses_graph_tensors():
    x = am.ones(3)
    a = x.numpy()
    a[0] = 5.0
    assert x[0].item() == 5.0
    w = am.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"numpy.*requires grad.*detach\(\)"):
        w.numpy()
    assert w.detach().numpy().shape == (3,)
    np.testing.assert_array_equal(np.asarray(x), a)


def test_to_dtype_device_and_tensor(device):
    x = am.tensor([1.7, -2.2], device=device)
    assert x.to(device) is x and x.to(am.float32) is x
    d = x.to(am.float64)
    assert d.dtype == am.float64 and d.device == device
    ref = torch.tensor([1.7, -2.2])
    for ours, theirs in ((x.to(am.int64), ref.to(torch.int64)), (x.int(), ref.int()), (x.long(), ref.long()),
                         (x.bool(), ref.bool()), (x.half(), ref.half()), (x.double(), ref.double())):
        assert ours.dtype.name == _tname(theirs)
        np.testing.assert_array_equal(_np(ours), theirs.numpy())
    y = x.to("cpu", am.float64)
    assert y.device == "cpu" and y.dtype == am.float64
    z = am.ones(2, dtype=am.float64).to(x)
    assert z.dtype == am.float32 and z.device == device
    assert x.to(am.float32, copy=True) is not x
    assert x.cpu().device == "cpu" and x.type() == "avila_ml.float32"
    with pytest.raises(TypeError, match="to: unexpected argument"):
        x.to(3.5)


def test_to_is_differentiable(device):
    x = am.tensor([1.0, 2.0], dtype=am.float64, device=device, requires_grad=True)
    (x.to(am.float32) * 3).sum().backward()
    assert x.grad.dtype == am.float64
    np.testing.assert_array_equal(_np(x.grad), [3.0, 3.0])


def test_clone_has_its_own_memory_and_passes_gradients(device):
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    c = x.clone()
    assert c.grad_fn is not None
    with am.no_grad():
        c.add_(1)
    assert _np(x).tolist() == [1.0, 2.0]
    (x.clone() * 2).sum().backward()
    assert _np(x.grad).tolist() == [2.0, 2.0]


def test_contiguous(device):
    x = am.arange(6.0, device=device).reshape(2, 3)
    assert x.is_contiguous() and x.contiguous() is x
    t = x.T
    assert not t.is_contiguous()
    c = t.contiguous()
    assert c.is_contiguous()
    np.testing.assert_array_equal(_np(c), torch.arange(6.0).reshape(2, 3).T.contiguous().numpy())


# ------------------------------------------------------------------------ in-place updates
def _inplace_pair(device, requires_grad=False):
    data = np.array([[1.5, -2.0, 0.25], [3.0, 0.0, -0.75]])
    return (am.tensor(data, device=device, requires_grad=requires_grad),
            torch.tensor(data, requires_grad=requires_grad))


# a non-scalar operand lives on the updated tensor's device (PyTorch raises for a CUDA tensor
# updated with a CPU one; only 0-d CPU tensors may join, as in fill_tensor)
INPLACE_OPS = {
    "add_": (lambda t, lib: t.add_(lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64, device=t.device)), None),
    "add_alpha": (lambda t, lib: t.add_(lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64, device=t.device), alpha=-0.5), None),
    "add_scalar": (lambda t, lib: t.add_(2), None),
    "sub_": (lambda t, lib: t.sub_(1.25), None),
    "mul_": (lambda t, lib: t.mul_(lib.tensor([[2.0], [-1.0]], dtype=lib.float64, device=t.device)), None),
    "mul_scalar": (lambda t, lib: t.mul_(0.5), None),
    "div_": (lambda t, lib: t.div_(4), None),
    "zero_": (lambda t, lib: t.zero_(), None),
    "fill_": (lambda t, lib: t.fill_(3.5), None),
    "fill_tensor": (lambda t, lib: t.fill_(lib.tensor(2.0)), None),
    "copy_": (lambda t, lib: t.copy_(lib.tensor([7.0, 8.0, 9.0])), None),
    "copy_int": (lambda t, lib: t.copy_(lib.tensor([[1, 2, 3], [4, 5, 6]])), None),
    "clamp_": (lambda t, lib: t.clamp_(-1.0, 1.0), None),
    "clamp_min": (lambda t, lib: t.clamp_(min=0.0), None),
    "clamp_max": (lambda t, lib: t.clamp_(max=0.5), None),
    "iadd": (lambda t, lib: t.__iadd__(1.0), None),
    "imul": (lambda t, lib: t.__imul__(3.0), None),
    "setitem": (lambda t, lib: t.__setitem__((0, slice(1, None)), 9.0), None),
}


@pytest.mark.parametrize("name", list(INPLACE_OPS))
def test_in_place_ops_match_torch_and_bump_the_version(name, device):
    fn, _ = INPLACE_OPS[name]
    x, tx = _inplace_pair(device)
    v0 = x._version[0]
    data_before = x.array
    out = fn(x, am)
    tout = fn(tx, torch)
    assert x.array is data_before  # really in place
    if out is not None:
        assert out is x and tout is tx
    np.testing.assert_array_equal(_np(x), tx.numpy())
    assert x._version[0] > v0


@pytest.mark.parametrize("name", list(INPLACE_OPS))
def test_in_place_ops_on_a_leaf_requiring_grad(name, device):
    fn, _ = INPLACE_OPS[name]
    x, tx = _inplace_pair(device, requires_grad=True)
    # PyTorch refuses every in-place write to a leaf that requires grad (x += 1 and x[i] = v too)
    with pytest.raises(RuntimeError) as theirs:
        fn(tx, torch)
    with pytest.raises(RuntimeError, match="a (view of a )?leaf Variable that requires grad is being used in an in-place operation") as ours:
        fn(x, am)
    assert str(theirs.value).split(".")[0].split(": ")[-1] in str(ours.value)
    with am.no_grad(), torch.no_grad():
        fn(x, am)
        fn(tx, torch)
    np.testing.assert_array_equal(_np(x), tx.detach().numpy())
    assert x.requires_grad and x.is_leaf


def test_in_place_on_a_non_leaf_graph_tensor_is_recorded(device):
    w = am.tensor([1.0, 2.0], dtype=am.float64, device=device, requires_grad=True)
    tw = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    for lib, x in ((am, w), (torch, tw)):
        y = x * 2
        y.add_(1)
        y *= x  # (y *= y raises in both: y is saved by the product, then overwritten)
        y.sum().backward()
        assert y.grad_fn is not None
    np.testing.assert_allclose(_np(w.grad), tw.grad.numpy(), rtol=1e-14)


def test_clamp_needs_a_bound(device):
    with pytest.raises(RuntimeError, match="clamp_.*min or max"):
        am.ones(2, device=device).clamp_()
    with pytest.raises(RuntimeError, match="clamp.*min.*max"):
        am.clamp(am.ones(2, device=device))
