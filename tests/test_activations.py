"""Activations (``avila_ml.ops.activation`` and the activation modules) against PyTorch.

One table row per activation (functional + module + PyTorch twins + constructor kwargs).
For each row and device: forward and gradient vs PyTorch in float64 (including kinks and
+-1e4) and float32, finiteness at extreme values, gradcheck and gradgradcheck in float64,
the module's output and ``repr`` vs PyTorch's.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am

F = am.nn.functional

# kinks (0, +-1, +-3, 6) and extremes included: our conventions at kinks must equal PyTorch's
X_WIDE = np.array([-1e4, -60.0, -20.5, -6.0, -3.0, -2.2, -1.0, -0.3, 0.0, 0.2, 1.0, 2.5, 3.0, 6.0,
                   7.5, 25.0, 60.0, 1e4])
# smooth points, >= 0.1 from every kink, for finite differences
X_SMOOTH = np.array([-4.1, -2.7, -1.3, -0.4, 0.35, 1.2, 2.6, 7.5])


@dataclass
class Act:
    name: str
    ours: object            # functional, called as ours(x, **kwargs)
    ref: object             # torch functional
    module: type            # our module class
    ref_module: type        # torch module class
    kwargs: dict = field(default_factory=dict)
    module_kwargs: dict | None = None  # constructor kwargs (default: same as kwargs)
    ref2: object = None     # closed-form second derivative (NumPy), when PyTorch's is unusable


ACTS = [
    Act("relu", F.relu, TF.relu, am.nn.ReLU, torch.nn.ReLU),
    Act("relu6", F.relu6, TF.relu6, am.nn.ReLU6, torch.nn.ReLU6),
    Act("leaky_relu", F.leaky_relu, TF.leaky_relu, am.nn.LeakyReLU, torch.nn.LeakyReLU),
    Act("leaky_relu_0.2", F.leaky_relu, TF.leaky_relu, am.nn.LeakyReLU, torch.nn.LeakyReLU,
        {"negative_slope": 0.2}),
    Act("elu", F.elu, TF.elu, am.nn.ELU, torch.nn.ELU),
    Act("elu_alpha", F.elu, TF.elu, am.nn.ELU, torch.nn.ELU, {"alpha": 0.7}),
    Act("selu", F.selu, TF.selu, am.nn.SELU, torch.nn.SELU),
    Act("celu", F.celu, TF.celu, am.nn.CELU, torch.nn.CELU, {"alpha": 1.5}),
    Act("gelu", F.gelu, TF.gelu, am.nn.GELU, torch.nn.GELU),
    Act("gelu_tanh", F.gelu, TF.gelu, am.nn.GELU, torch.nn.GELU, {"approximate": "tanh"}),
    Act("silu", F.silu, TF.silu, am.nn.SiLU, torch.nn.SiLU),
    Act("mish", F.mish, TF.mish, am.nn.Mish, torch.nn.Mish),
    Act("softplus", F.softplus, TF.softplus, am.nn.Softplus, torch.nn.Softplus),
    Act("softplus_beta", F.softplus, TF.softplus, am.nn.Softplus, torch.nn.Softplus,
        {"beta": 2.0, "threshold": 5.0}),
    Act("sigmoid", F.sigmoid, torch.sigmoid, am.nn.Sigmoid, torch.nn.Sigmoid),
    Act("tanh", F.tanh, torch.tanh, am.nn.Tanh, torch.nn.Tanh),
    Act("hardtanh", F.hardtanh, TF.hardtanh, am.nn.Hardtanh, torch.nn.Hardtanh),
    Act("hardtanh_range", F.hardtanh, TF.hardtanh, am.nn.Hardtanh, torch.nn.Hardtanh,
        {"min_val": -2.0, "max_val": 0.5}),
    Act("hardsigmoid", F.hardsigmoid, TF.hardsigmoid, am.nn.Hardsigmoid, torch.nn.Hardsigmoid),
    Act("hardswish", F.hardswish, TF.hardswish, am.nn.Hardswish, torch.nn.Hardswish),
    # PyTorch's softsign double backward spends ~6 s in a first-use slow path: the second
    # derivative is checked against the closed form -2 sign(x) / (1 + |x|)^3 instead
    Act("softsign", F.softsign, TF.softsign, am.nn.Softsign, torch.nn.Softsign,
        ref2=lambda x: -2 * np.sign(x) / (1 + np.abs(x)) ** 3),
    Act("logsigmoid", F.logsigmoid, TF.logsigmoid, am.nn.LogSigmoid, torch.nn.LogSigmoid),
]
IDS = [a.name for a in ACTS]
TOL = {"float64": dict(rtol=1e-12, atol=1e-13), "float32": dict(rtol=2e-6, atol=1e-6)}


def to_np(t):
    return np.asarray(t.detach().cpu().array if hasattr(t, "array") else t.detach().numpy())


def run_ours(act, x_np, device, dtype="float64"):
    x = am.tensor(x_np, dtype=getattr(am, dtype), device=device, requires_grad=True)
    y = act.ours(x, **act.kwargs)
    g = np.linspace(-1.5, 2.0, x_np.size).reshape(x_np.shape)  # a non-uniform upstream gradient
    y.backward(am.tensor(g, dtype=getattr(am, dtype), device=device))
    return to_np(y), to_np(x.grad)


def run_torch(act, x_np, dtype="float64"):
    x = torch.tensor(x_np, dtype=getattr(torch, dtype), requires_grad=True)
    y = act.ref(x, **act.kwargs)
    g = np.linspace(-1.5, 2.0, x_np.size).reshape(x_np.shape)
    y.backward(torch.tensor(g, dtype=getattr(torch, dtype)))
    return y.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("act", ACTS, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_and_grad_match_torch(act, dtype, device):
    y, gx = run_ours(act, X_WIDE, device, dtype)
    ty, tgx = run_torch(act, X_WIDE, dtype)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y, ty, **TOL[dtype])
    if act.name == "hardsigmoid":
        # PyTorch's hardsigmoid backward multiplies by a float32 literal 1/6 even in float64
        # (0.1666666716...), so its float64 gradient is only float32-accurate. Compare with
        # the exact derivative instead, and with PyTorch at float32 precision.
        exact = np.where((X_WIDE > -3) & (X_WIDE < 3), 1 / 6, 0.0) * np.linspace(-1.5, 2.0, X_WIDE.size)
        np.testing.assert_allclose(gx, exact.astype(dtype), **TOL[dtype])
        np.testing.assert_allclose(gx, tgx, **TOL["float32"])
    else:
        np.testing.assert_allclose(gx, tgx, **TOL[dtype])


@pytest.mark.parametrize("act", ACTS, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_extreme_inputs_stay_finite(act, dtype, device):
    big = np.array([-1e4, -1e3, -100.0, 100.0, 1e3, 1e4])
    y, gx = run_ours(act, big, device, dtype)
    assert np.isfinite(y).all() and np.isfinite(gx).all(), (y, gx)


@pytest.mark.parametrize("act", ACTS, ids=IDS)
def test_gradcheck_and_gradgradcheck(act, device):
    x = am.tensor(X_SMOOTH.reshape(2, 4), dtype=am.float64, device=device, requires_grad=True)
    fn = lambda t: act.ours(t, **act.kwargs)  # noqa: E731
    assert am.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)
    assert am.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("act", ACTS, ids=IDS)
def test_second_derivative_matches_torch(act, device):
    x = am.tensor(X_SMOOTH, dtype=am.float64, device=device, requires_grad=True)
    (g,) = am.autograd.grad(act.ours(x, **act.kwargs).sum(), x, create_graph=True)
    gg = am.autograd.grad(g.sum(), x)[0] if g.requires_grad else am.zeros_like(x)
    if act.ref2 is not None:
        expected = act.ref2(X_SMOOTH)
    else:
        tx = torch.tensor(X_SMOOTH, requires_grad=True)
        (tg,) = torch.autograd.grad(act.ref(tx, **act.kwargs).sum(), tx, create_graph=True)
        if tg.requires_grad and act.name != "hardsigmoid":
            expected = torch.autograd.grad(tg.sum(), tx)[0].numpy()
        else:  # piecewise linear: the second derivative is zero (PyTorch has no hardsigmoid
            expected = np.zeros_like(X_SMOOTH)  # double backward; gradgradcheck covers ours)
    np.testing.assert_allclose(to_np(gg), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ACTS, ids=IDS)
def test_module_matches_torch_and_repr(act, device):
    kw = act.kwargs if act.module_kwargs is None else act.module_kwargs
    ctor = {k: v for k, v in kw.items()}
    m, tm = act.module(**ctor), act.ref_module(**ctor)
    assert repr(m) == repr(tm)
    x = np.linspace(-5, 5, 24).reshape(2, 3, 4)
    y = m(am.tensor(x, dtype=am.float64, device=device))
    np.testing.assert_allclose(to_np(y), tm(torch.tensor(x)).numpy(), rtol=1e-12, atol=1e-13)
    assert list(m.state_dict()) == list(tm.state_dict()) == []


@pytest.mark.parametrize("name,ours,ref", [
    ("relu", am.nn.ReLU, torch.nn.ReLU), ("elu", am.nn.ELU, torch.nn.ELU),
    ("leaky", am.nn.LeakyReLU, torch.nn.LeakyReLU), ("hardtanh", am.nn.Hardtanh, torch.nn.Hardtanh),
    ("relu6", am.nn.ReLU6, torch.nn.ReLU6), ("selu", am.nn.SELU, torch.nn.SELU),
    ("silu", am.nn.SiLU, torch.nn.SiLU), ("hardswish", am.nn.Hardswish, torch.nn.Hardswish),
])
def test_inplace_repr_and_values(name, ours, ref, device):
    assert repr(ours(inplace=True)) == repr(ref(inplace=True))
    x = np.linspace(-4, 4, 9)
    a = am.tensor(x, dtype=am.float64, device=device)
    out = ours(inplace=True)(a)
    assert out is a  # written in place: the input does not require grad
    tx = torch.tensor(x)
    ref(inplace=True)(tx)
    np.testing.assert_allclose(to_np(a), tx.numpy(), rtol=1e-12, atol=1e-13)


def test_inplace_on_tracked_input_keeps_gradients_right(device):
    w = am.tensor([-1.0, 2.0, -3.0, 4.0], dtype=am.float64, device=device, requires_grad=True)
    h = w * 2
    y = F.relu(h, inplace=True)  # h is tracked: the write is recorded (h is y now)
    y.sum().backward()
    np.testing.assert_array_equal(to_np(y), [0.0, 4.0, 0.0, 8.0])
    np.testing.assert_array_equal(to_np(w.grad), [0.0, 2.0, 0.0, 2.0])


def test_inplace_under_no_grad_writes_input(device):
    w = am.tensor([-1.0, 2.0], device=device, requires_grad=True)
    with am.no_grad():
        out = F.leaky_relu(w, 0.5, inplace=True)
    assert out is w
    np.testing.assert_array_equal(to_np(w), [-0.5, 2.0])


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_modules_match_torch(dim, device):
    x = np.random.default_rng(1).normal(size=(3, 4)) * 50
    for ours, ref in [(am.nn.Softmax, torch.nn.Softmax), (am.nn.LogSoftmax, torch.nn.LogSoftmax)]:
        m, tm = ours(dim=dim), ref(dim=dim)
        assert repr(m) == repr(tm)
        a = am.tensor(x, dtype=am.float64, device=device, requires_grad=True)
        t = torch.tensor(x, requires_grad=True)
        y, ty = m(a), tm(t)
        g = np.arange(12.0).reshape(3, 4)
        y.backward(am.tensor(g, dtype=am.float64, device=device))
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(to_np(y), ty.detach().numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(to_np(a.grad), t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_softmax_implicit_dim_warns_like_torch(device):
    x = np.random.default_rng(2).normal(size=(2, 3, 4))
    with pytest.warns(UserWarning, match="Implicit dimension"):
        y = am.nn.Softmax()(am.tensor(x, device=device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ty = torch.nn.Softmax()(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(to_np(y), ty.numpy(), rtol=1e-6, atol=1e-7)


def test_noncontiguous_input(device):
    x = am.tensor(np.arange(-6.0, 6.0).reshape(3, 4), dtype=am.float64, device=device, requires_grad=True)
    y = F.gelu(x.T)
    y.sum().backward()
    tx = torch.tensor(np.arange(-6.0, 6.0).reshape(3, 4), requires_grad=True)
    TF.gelu(tx.T).sum().backward()
    np.testing.assert_allclose(to_np(x.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-13)


def test_errors_name_the_op(device):
    i = am.tensor([1, 2], device=device)
    for fn, name in [(F.gelu, "gelu"), (F.silu, "silu"), (F.softplus, "softplus"), (F.elu, "elu")]:
        with pytest.raises(TypeError, match=name):
            fn(i)
    with pytest.raises(TypeError, match="relu"):
        F.relu([1.0, 2.0])
    x = am.ones(2, device=device)
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="approximate"):
        am.nn.GELU("fast")
    with pytest.raises(ValueError, match="hardtanh"):
        F.hardtanh(x, 1.0, -1.0)
    with pytest.raises(ValueError, match="celu"):
        F.celu(x, alpha=0.0)


def test_relu_accepts_integers_like_torch(device):
    y = F.relu(am.tensor([-2, 0, 3], device=device))
    assert y.dtype == am.int64 and to_np(y).tolist() == [0, 0, 3]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad_grad", [False, True])
def test_relu_split_over_threads_matches_torch(monkeypatch, dtype, bad_grad):
    """ReLU of a large host array, its batch cut into 3 uneven parts on the CPU threads (forced):
    forward and gradient as PyTorch's, with NaN inputs (the gradient passes there) and, with
    ``bad_grad``, an inf gradient where the output is 0 (the exact select, not 0 * inf)."""
    import torch
    import avila_ml.ops._cpu_threads as cpu_threads
    if cpu_threads.controller() is None:
        pytest.skip("no threadpoolctl: the batch is never split")
    monkeypatch.setattr(cpu_threads, "blas_threads", lambda: 3)
    rng = np.random.default_rng(8)
    a = rng.standard_normal((7, 300, 130)).astype(dtype)  # 273,000 elements: over the split threshold
    a[0, 0, :3] = [np.nan, 0.0, -0.0]
    a[6, 1, 1] = np.nan
    g = rng.standard_normal(a.shape).astype(dtype)
    if bad_grad:
        g[3][a[3] <= 0] = np.inf
    assert len(cpu_threads.batch_slices(7, a.size, 1 << 18)) == 3
    x, tx = am.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    y, ty = am.nn.functional.relu(x), torch.relu(tx)
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy())
    y.backward(am.tensor(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
