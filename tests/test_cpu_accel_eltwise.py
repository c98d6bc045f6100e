"""The CPU fast paths of activations and softmax (issue 17): oneDNN's eltwise and softmax
primitives (``avila_ml/cpu_accel/_eltwise.py``, ``_softmax.py``; with and without the compiled softmax
row kernels, which take the last axis before them) and the vectorised float32 erf
(``avila_ml/backends/_erf_float32.py``) used without oneDNN.

Every accelerated path is checked against PyTorch in float64 (forward and input gradient, with
float32 inputs), double backward through the Tensor-op path against PyTorch, that oneDNN
actually ran (a spy on the plan execution) or did not (float64, ``mkldnn.enabled = False``,
small arrays), non-contiguous inputs, and the behaviour without the library (a subprocess with
AVILA_ML_DNNL_LIBRARY pointing nowhere).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sp
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.backends import _erf_float32 as erf32
from avila_ml.cpu_accel import _chain, _dnnl as dnnl, _eltwise, _native, _softmax
from avila_ml.nn import functional as F
from test_native_softmax import like_torch_at_specials

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = float(np.finfo(np.float32).eps)
needs_onednn = pytest.mark.skipif(not dnnl.available(), reason=f"oneDNN not available: {dnnl.absent_reason()}")


@pytest.fixture
def calls(monkeypatch):
    """The oneDNN plans executed (eltwise and softmax share ``_eltwise._Plan``), by name."""
    seen = []
    for plan in (_eltwise._Plan, _chain._Plan):
        def spy(self, *arrays, real=plan.run):
            seen.append(self.what)
            return real(self, *arrays)
        monkeypatch.setattr(plan, "run", spy)
    return seen


@pytest.fixture(params=[True, False], ids=["onednn", "numpy"])
def accel(request, monkeypatch):
    """Each test body once with oneDNN allowed (when installed) and once with it switched off."""
    monkeypatch.setattr(am.backends.mkldnn, "enabled", request.param)
    return request.param and dnnl.available()


@pytest.fixture(params=[False, True], ids=["no-native", "native"])
def native(request, monkeypatch):
    """The compiled row kernels (``cpu_accel/_native_softmax.py``) switched off, then allowed:
    where they apply (C-contiguous rows over the last axis) they run before oneDNN, which then
    must not be called; tests/test_native_softmax.py checks those kernels themselves."""
    monkeypatch.setattr(_native, "ENABLED", request.param)
    return request.param and _native.available()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _close(ours, ref64, scale, ulps):
    """float32 result vs float64 reference: |error| <= ulps * eps32 * scale, elementwise."""
    ours = np.asarray(ours, dtype=np.float64)
    ref64 = np.asarray(ref64, dtype=np.float64)
    assert ours.shape == ref64.shape
    err = np.abs(ours - ref64)
    bound = ulps * EPS * np.asarray(scale, dtype=np.float64)
    worst = np.argmax(err - bound)
    assert np.all(err <= bound), (f"error {err.flat[worst]:.3g} > bound {np.broadcast_to(bound, err.shape).flat[worst]:.3g} "
                                  f"at {worst}: ours {ours.flat[worst]!r}, reference {ref64.flat[worst]!r}")


def _torch_fwd_bwd(fn, x, g):
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    y = fn(t)
    y.backward(torch.tensor(g.astype(np.float64)))
    return y.detach().numpy(), t.grad.numpy()


def _ours_fwd_bwd(fn, x, g):
    t = am.tensor(x, requires_grad=True)
    y = fn(t)
    y.backward(am.tensor(g))
    assert y.dtype == am.float32 and t.grad.dtype == am.float32
    return y.detach().numpy(), t.grad.numpy()


# ------------------------------------------------------------------------------------ erf
def test_float32_erf_within_a_few_ulps_of_float64():
    x = np.concatenate([_rng().standard_normal(200_000) * 3, np.linspace(-6, 6, 100_001),
                        np.geomspace(1e-38, 8, 5000), -np.geomspace(1e-38, 8, 5000),
                        [1e-45, -1e-45, 0.0, -0.0, 3.92, 3.93, 50.0, -50.0]]).astype(np.float32)
    ref = sp.erf(x.astype(np.float64))
    ours = erf32.erf(x)
    assert ours.dtype == np.float32
    # relative, down to the smallest normal float32 (denormal results are rounded to 1.4e-45 steps)
    _close(ours, ref, np.maximum(np.abs(ref), np.finfo(np.float32).tiny), 4)
    # the public op takes it for float32
    np.testing.assert_array_equal(am.erf(am.tensor(x)).numpy(), ours)


def test_float32_erf_special_values_and_shapes():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    y = erf32.erf(x)
    assert y[0] == 1.0 and y[1] == -1.0 and np.isnan(y[2]) and y[3] == 0.0 and np.signbit(y[4])
    big = _rng(1).standard_normal((3, 70_000)).astype(np.float32)[:, ::2]  # several chunks, a strided view
    np.testing.assert_array_equal(erf32.erf(big), erf32.erf(np.ascontiguousarray(big)))
    assert erf32.erf(np.zeros((0, 3), np.float32)).shape == (0, 3)
    # oddness holds exactly (the formula is x times an even function)
    np.testing.assert_array_equal(erf32.erf(-big), -erf32.erf(big))


def test_normal_cdf_and_gelu_float32_vs_float64():
    x = np.concatenate([_rng(2).standard_normal(100_000) * 4, np.linspace(-12, 12, 20_001)]).astype(np.float32)
    x64 = x.astype(np.float64)
    _close(erf32.normal_cdf(x), sp.ndtr(x64), 1.0, 4)
    # GELU: error relative to max(|x|, 1), as PyTorch's own float32 (1 + erf) formula has
    _close(erf32.gelu(x), x64 * sp.ndtr(x64), np.maximum(np.abs(x64), 1), 4)


# ------------------------------------------------------------------------------------ GELU
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(64, 100), (7,), (2048, 512)])
def test_gelu_float32_forward_backward_vs_torch_float64(approximate, shape, accel, calls):
    x = (_rng(3).standard_normal(shape) * 3).astype(np.float32)
    x.flat[:4] = [0.0, -10.0, 10.0, 1e-20]
    g = _rng(4).standard_normal(shape).astype(np.float32)
    y, gx = _ours_fwd_bwd(lambda t: F.gelu(t, approximate=approximate), x, g)
    ry, rgx = _torch_fwd_bwd(lambda t: TF.gelu(t, approximate=approximate), x, g)
    scale = np.maximum(np.abs(x.astype(np.float64)), 1)
    _close(y, ry, scale, 6)
    _close(gx, rgx, scale * np.abs(g), 6)
    big = x.size >= _eltwise.MIN_SIZE["gelu_erf"]
    # tanh GELU runs as fused chains (one forward, three backward), not oneDNN's gather-bound tanh;
    # exact GELU runs on the compiled kernels where they are built (oneDNN's otherwise)
    from avila_ml.cpu_accel import _native
    expected = (([] if _native.available() else ["eltwise gelu_erf forward", "eltwise gelu_erf backward"])
                if approximate == "none" else ["element-wise chain"] * 4)
    assert calls == (expected if accel and big else [])


def test_gelu_float64_never_goes_to_onednn(calls):
    x = _rng(5).standard_normal((64, 100))
    g = _rng(6).standard_normal((64, 100))
    t = am.tensor(x, requires_grad=True)
    y = F.gelu(t)
    y.backward(am.tensor(g))
    ry, rgx = _torch_fwd_bwd(TF.gelu, x, g)
    np.testing.assert_allclose(y.detach().numpy(), ry, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t.grad.numpy(), rgx, rtol=1e-12, atol=1e-14)
    assert calls == []


def test_gelu_non_contiguous_input(accel, calls):
    base = (_rng(7).standard_normal((96, 80)) * 2).astype(np.float32)
    g = _rng(8).standard_normal((80, 96)).astype(np.float32)
    t = am.tensor(base, requires_grad=True)
    y = F.gelu(t.t())  # a transposed view
    y.backward(am.tensor(g))
    ry, rgx = _torch_fwd_bwd(lambda u: TF.gelu(u.t()), base, g)
    _close(y.detach().numpy(), ry, np.maximum(np.abs(base.T.astype(np.float64)), 1), 6)
    _close(t.grad.numpy(), rgx, np.maximum(np.abs(base.astype(np.float64)), 1) * np.abs(g.T), 6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_double_backward_float32_vs_torch(approximate, accel):
    x = (_rng(9).standard_normal((64, 80)) * 2).astype(np.float32)
    g = _rng(10).standard_normal((64, 80)).astype(np.float32)
    t = am.tensor(x, requires_grad=True)
    (gx,) = am.autograd.grad(F.gelu(t, approximate=approximate), t, am.tensor(g), create_graph=True)
    (ggx,) = am.autograd.grad(gx.sum(), t)
    tt = torch.tensor(x.astype(np.float64), requires_grad=True)
    (tgx,) = torch.autograd.grad(TF.gelu(tt, approximate=approximate), tt, torch.tensor(g.astype(np.float64)),
                                 create_graph=True)
    (tggx,) = torch.autograd.grad(tgx.sum(), tt)
    np.testing.assert_allclose(gx.detach().numpy(), tgx.detach().numpy(), rtol=0, atol=2e-5 * np.abs(g).max() * 3)
    np.testing.assert_allclose(ggx.numpy(), tggx.numpy(), rtol=0, atol=1e-4 * np.abs(g).max() * 3)


def test_gelu_gradgradcheck_float64():
    x = am.tensor(_rng(11).standard_normal((3, 5)), requires_grad=True)
    for approximate in ("none", "tanh"):
        assert am.autograd.gradgradcheck(lambda u: F.gelu(u, approximate=approximate), (x,))


# ------------------------------------------------------------------------------------ softmax
SOFTMAX_CASES = [((64, 4096), -1), ((8, 64, 32, 32), 1), ((4, 6, 96), -1), ((512, 128), -1), ((3, 5), -1),
                 ((4, 1000, 3), 1)]


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES)
def test_softmax_float32_forward_backward_vs_torch_float64(shape, dim, log, accel, calls, native):
    x = (_rng(12).standard_normal(shape) * 4).astype(np.float32)
    g = _rng(13).standard_normal(shape).astype(np.float32)
    ours = am.log_softmax if log else am.softmax
    ref = torch.log_softmax if log else torch.softmax
    y, gx = _ours_fwd_bwd(lambda t: ours(t, dim), x, g)
    ry, rgx = _torch_fwd_bwd(lambda t: ref(t, dim), x, g)
    # no worse than PyTorch's own float32 kernels (whose sums over a long row lose ~10 ulps)
    t = torch.tensor(x, requires_grad=True)
    ty = ref(t, dim)
    ty.backward(torch.tensor(g))
    for ours_v, ref_v, torch32, scale in ((y, ry, ty.detach().numpy(), np.abs(ry).max() if log else 1.0),
                                          (gx, rgx, t.grad.numpy(), np.abs(rgx).max())):
        torch_err = np.abs(torch32 - ref_v).max()
        assert np.abs(ours_v - ref_v).max() <= 2 * torch_err + 4 * EPS * scale
    last = dim % len(shape) == len(shape) - 1
    dnnl_path = accel and not (native and last)  # the compiled row kernels take the last axis first
    if log:  # oneDNN's exp inside the NumPy log-softmax, forward and backward
        assert calls == (["eltwise exp forward"] * 2 if dnnl_path and x.size >= _eltwise.MIN_SIZE["exp"] else [])
    else:
        assert ("softmax forward" in calls) == (dnnl_path and last and x.size >= _softmax.MIN_SIZE)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_non_finite_rows_as_torch(log, accel):
    x = _rng(14).standard_normal((128, 512)).astype(np.float32)  # oneDNN's size
    x[1, :] = -np.inf  # all -inf: NaN row
    x[2, 7] = np.inf  # a +inf: NaN row
    x[3, :100] = -np.inf  # partly -inf: zeros there
    x[4, 3] = np.nan
    x[5, :] = 1e30  # huge but finite
    ours = (am.log_softmax if log else am.softmax)(am.tensor(x), -1).numpy()
    ref = (torch.log_softmax if log else torch.softmax)(torch.tensor(x.astype(np.float64)), -1).numpy()
    like_torch_at_specials(ours, ref)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_non_contiguous_input(log, accel):
    base = _rng(15).standard_normal((2048, 40)).astype(np.float32)
    g = _rng(16).standard_normal((40, 2048)).astype(np.float32)
    ours = am.log_softmax if log else am.softmax
    ref = torch.log_softmax if log else torch.softmax
    y, gx = _ours_fwd_bwd(lambda t: ours(t.t(), -1), base, g)
    ry, rgx = _torch_fwd_bwd(lambda t: ref(t.t(), -1), base, g)
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, rgx, rtol=1e-4, atol=2e-5 * 2048)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_double_backward_float32_vs_torch(log, accel):
    x = _rng(17).standard_normal((512, 128)).astype(np.float32)
    g = _rng(18).standard_normal((512, 128)).astype(np.float32)
    w = _rng(19).standard_normal((512, 128))
    ours = am.log_softmax if log else am.softmax
    ref = torch.log_softmax if log else torch.softmax
    t = am.tensor(x, requires_grad=True)
    (gx,) = am.autograd.grad(ours(t, -1), t, am.tensor(g), create_graph=True)
    (ggx,) = am.autograd.grad((gx * am.tensor(w.astype(np.float32))).sum(), t)
    tt = torch.tensor(x.astype(np.float64), requires_grad=True)
    (tgx,) = torch.autograd.grad(ref(tt, -1), tt, torch.tensor(g.astype(np.float64)), create_graph=True)
    (tggx,) = torch.autograd.grad((tgx * torch.tensor(w)).sum(), tt)
    np.testing.assert_allclose(gx.detach().numpy(), tgx.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ggx.numpy(), tggx.numpy(), rtol=1e-3, atol=1e-3)


def test_softmax_gradgradcheck_float64():
    x = am.tensor(_rng(20).standard_normal((3, 4, 5)), requires_grad=True)
    for fn in (am.softmax, am.log_softmax):
        for dim in (-1, 1):
            assert am.autograd.gradgradcheck(lambda u: fn(u, dim), (x,))


def test_softmax_float64_never_goes_to_onednn(calls):
    x = am.tensor(_rng(21).standard_normal((64, 4096)), requires_grad=True)
    am.log_softmax(x, -1).sum().backward()
    am.softmax(x, -1).sum().backward()
    assert calls == []


# ------------------------------------------------------------------------------------ cross entropy
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_float32_vs_torch_float64(weighted, reduction, accel, calls, native):
    N, C = 300, 200
    x = (_rng(22).standard_normal((N, C)) * 5).astype(np.float32)
    x[0, 0] = 80.0  # a very confident row: its other log-probabilities are about -80
    t = _rng(23).integers(0, C, N)
    t[5] = -100  # ignored
    t[0] = 1
    w = _rng(24).random(C).astype(np.float32) + 0.5 if weighted else None
    xa = am.tensor(x, requires_grad=True)
    loss = F.cross_entropy(xa, am.tensor(t), weight=None if w is None else am.tensor(w), reduction=reduction)
    g = np.ones(N, np.float32) if reduction == "none" else np.float32(1.0)
    loss.backward(am.tensor(g))
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    rl = TF.cross_entropy(xt, torch.tensor(t), weight=None if w is None else torch.tensor(w.astype(np.float64)),
                          reduction=reduction)
    rl.backward(torch.tensor(g.astype(np.float64)))
    _close(loss.detach().numpy(), rl.detach().numpy(), np.abs(rl.detach().numpy()) + 1, 8 * (N if reduction == "sum" else 1))
    np.testing.assert_allclose(xa.grad.numpy(), xt.grad.numpy(), rtol=0, atol=1e-6 * (N if reduction != "mean" else 1))
    # log-softmax forward, exp in the backward; none with the compiled row kernels
    assert calls == (["eltwise exp forward"] * 2 if accel and not native else [])


def test_cross_entropy_double_backward_float32_vs_torch(accel):
    x = _rng(25).standard_normal((128, 64)).astype(np.float32)
    t = _rng(26).integers(0, 64, 128)
    xa = am.tensor(x, requires_grad=True)
    (gx,) = am.autograd.grad(F.cross_entropy(xa, am.tensor(t)), xa, create_graph=True)
    (ggx,) = am.autograd.grad((gx * gx).sum(), xa)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    (tgx,) = torch.autograd.grad(TF.cross_entropy(xt, torch.tensor(t)), xt, create_graph=True)
    (tggx,) = torch.autograd.grad((tgx * tgx).sum(), xt)
    np.testing.assert_allclose(gx.detach().numpy(), tgx.detach().numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(ggx.numpy(), tggx.numpy(), rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------------------------------ machinery
@needs_onednn
def test_plan_cache_is_bounded_lru(monkeypatch):
    monkeypatch.setattr(_eltwise, "_cache", _eltwise.PlanCache(3))
    for n in range(5):
        _eltwise.forward("relu", np.ones(1024 + n, np.float32), min_size=1)
        assert _eltwise.cache_info()["size"] <= 3
    assert _eltwise.cache_info() == {"size": 3, "capacity": 3}
    _eltwise.clear_cache()
    assert _eltwise.cache_info()["size"] == 0


@needs_onednn
def test_boundary_checks_refuse_wrong_buffers():
    plan = _eltwise._cache.get(("test", 16), lambda: _eltwise._Plan(
        dnnl.load(), (16,), _eltwise._forward_pd(dnnl.ELTWISE_RELU, 0.0, 0.0), (dnnl.ARG_SRC, dnnl.ARG_DST), "test"))
    with pytest.raises(TypeError, match="float32"):
        plan.run(np.ones(16, np.float64), np.empty(16, np.float32))
    with pytest.raises(ValueError, match="bytes"):
        plan.run(np.ones(15, np.float32), np.empty(16, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        plan.run(np.ones(32, np.float32)[::2], np.empty(16, np.float32))
    y = np.empty(16, np.float32)
    plan.run(np.linspace(-1, 1, 16).astype(np.float32), y)
    np.testing.assert_array_equal(y, np.maximum(np.linspace(-1, 1, 16).astype(np.float32), 0))


@needs_onednn
@pytest.mark.parametrize("name,alpha,ref", [
    ("relu", 0.1, lambda x: np.where(x > 0, x, 0.1 * x)),
    ("tanh", 0.0, np.tanh),
    ("elu", 1.5, lambda x: np.where(x > 0, x, 1.5 * np.expm1(x))),
    ("logistic", 0.0, sp.expit),
    ("exp", 0.0, np.exp),
    ("swish", 1.0, lambda x: x * sp.expit(x)),
    ("gelu_erf", 0.0, lambda x: x * sp.ndtr(x)),
    ("gelu_tanh", 0.0, lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
])
def test_every_eltwise_algorithm_matches_its_formula(name, alpha, ref):
    """The algorithm constants bound in _dnnl.py name the functions they claim to."""
    x = np.linspace(-6, 6, 4096).astype(np.float32)
    y = _eltwise.forward(name, x, alpha, min_size=1)
    r = ref(x.astype(np.float64))
    np.testing.assert_allclose(y, r, rtol=1e-5, atol=2e-6)


def test_without_the_library_the_numpy_paths_run(tmp_path):
    code = """
import numpy as np, avila_ml as am
from avila_ml.nn import functional as F
x = np.random.default_rng(0).standard_normal((64, 300)).astype(np.float32)
t = am.tensor(x, requires_grad=True)
loss = F.gelu(t).sum() + am.softmax(t, -1)[:, 0].sum() + am.log_softmax(t, -1)[:, 1].sum() \\
       + F.cross_entropy(t, am.tensor(np.arange(64) % 300))
loss.backward()
np.save(__import__("sys").argv[1], np.concatenate([[loss.item()], t.grad.numpy().ravel()]))
print(am.cpu_accel.is_available())
"""
    out = str(tmp_path / "result.npy")
    path = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = {**os.environ, "PYTHONPATH": path, "AVILA_ML_DNNL_LIBRARY": "/nonexistent/libdnnl.so.3"}
    r = subprocess.run([sys.executable, "-c", code, out], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    got = np.load(out)
    x = np.random.default_rng(0).standard_normal((64, 300))
    t = torch.tensor(x, requires_grad=True)
    ref = TF.gelu(t).sum() + torch.softmax(t, -1)[:, 0].sum() + torch.log_softmax(t, -1)[:, 1].sum() \
        + TF.cross_entropy(t, torch.tensor(np.arange(64) % 300))
    ref.backward()
    np.testing.assert_allclose(got[0], ref.item(), rtol=1e-5)
    np.testing.assert_allclose(got[1:].reshape(64, 300), t.grad.numpy(), rtol=0, atol=2e-5)


# ------------------------------------------------------------------------------------ other activations
ACTIVATIONS = [  # (name, ours, PyTorch's, oneDNN plans expected for a large float32 input)
    ("leaky_relu", lambda t: F.leaky_relu(t, 0.2), lambda t: TF.leaky_relu(t, 0.2),
     ["eltwise relu forward"]),  # the gradient: NumPy passes over the threads (measured faster than a chain)
    ("leaky_relu_neg", lambda t: F.leaky_relu(t, -0.5), lambda t: TF.leaky_relu(t, -0.5), ["eltwise relu forward"]),
    ("leaky_relu_steep", lambda t: F.leaky_relu(t, 3.0), lambda t: TF.leaky_relu(t, 3.0), ["eltwise relu forward"]),
    ("leaky_relu_0", lambda t: F.leaky_relu(t, 0.0), lambda t: TF.leaky_relu(t, 0.0), []),
    ("relu", F.relu, TF.relu, []),  # NumPy both ways: its oneDNN gradient chain was measured slower
    ("elu", F.elu, TF.elu, ["eltwise elu forward"]),
    ("elu_alpha", lambda t: F.elu(t, 0.5), lambda t: TF.elu(t, 0.5), ["eltwise elu forward"]),
    ("selu", F.selu, TF.selu, []),
    ("silu", F.silu, TF.silu, ["eltwise swish forward", "eltwise swish backward"]),
    ("sigmoid", am.sigmoid, torch.sigmoid, ["eltwise logistic forward"]),
]


@pytest.mark.parametrize("name,ours,ref,plans", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
@pytest.mark.parametrize("shape", [(64, 64, 8, 8), (5, 7)])  # above / below every MIN_SIZE
def test_activation_float32_vs_torch_float64(name, ours, ref, plans, shape, accel, calls):
    x = (_rng(30).standard_normal(shape) * 3).astype(np.float32)
    x.flat[:3] = [0.0, -0.0, 1e-30]
    g = _rng(31).standard_normal(shape).astype(np.float32)
    y, gx = _ours_fwd_bwd(ours, x, g)
    ry, rgx = _torch_fwd_bwd(ref, x, g)
    scale = np.maximum(np.abs(x.astype(np.float64)), 1)
    _close(y, ry, scale, 4)
    _close(gx, rgx, scale * np.abs(g), 4)
    assert calls == (plans if accel and x.size >= max(_eltwise.MIN_SIZE.values()) else [])


@pytest.mark.parametrize("name,ours,ref,plans", ACTIVATIONS + [
    ("gelu", F.gelu, TF.gelu, None), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh"),
                                      lambda t: TF.gelu(t, approximate="tanh"), None)],
    ids=[a[0] for a in ACTIVATIONS] + ["gelu", "gelu_tanh"])
def test_activation_non_finite_as_torch(name, ours, ref, plans, accel):
    """NaN and infinities, in the input and in the incoming gradient, give PyTorch's values (where
    oneDNN's kernels differ, the op does not use them)."""
    x = np.linspace(-5, 5, 1 << 18).astype(np.float32)  # above every MIN_SIZE
    x[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    g = np.full(x.shape, 2.0, np.float32)
    g[5], g[6] = np.inf, np.nan
    t = am.tensor(x, requires_grad=True)
    y = ours(t)
    y.backward(am.tensor(g))
    tt = torch.tensor(x, requires_grad=True)
    ty = ref(tt)
    ty.backward(torch.tensor(g))
    ya, yb = y.detach().numpy().copy(), ty.detach().numpy().copy()
    if name == "gelu" and np.isnan(yb[1]) and ya[1] == np.inf:
        # exact GELU at x = +inf: PyTorch 2.13 gives NaN on a Zen 4 (AVX-512) CPU, at every
        # ATEN_CPU_CAPABILITY; on the AVX2 machines of earlier runs this comparison passed with
        # our form giving the limit +inf as here, so PyTorch gave +inf there. Either is taken.
        ya[1] = yb[1] = 0.0
    for a, b in ((ya, yb), (t.grad.numpy(), tt.grad.numpy())):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        # finite values: float32 vs float32, within a few ulps of |x| |g| <= 10 (accuracy is
        # checked against float64 above)
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name,ours,ref,plans", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_double_backward_float32_vs_torch(name, ours, ref, plans, accel):
    x = (_rng(32).standard_normal((64, 300)) * 2).astype(np.float32)
    g = _rng(33).standard_normal((64, 300)).astype(np.float32)
    t = am.tensor(x, requires_grad=True)
    gt = am.tensor(g, requires_grad=True)
    (gx,) = am.autograd.grad(ours(t), t, gt, create_graph=True)
    (ggx, ggg) = am.autograd.grad((gx * gx).sum(), (t, gt), allow_unused=True)
    tt = torch.tensor(x.astype(np.float64), requires_grad=True)
    tg = torch.tensor(g.astype(np.float64), requires_grad=True)
    (tgx,) = torch.autograd.grad(ref(tt), tt, tg, create_graph=True)
    (tggx, tggg) = torch.autograd.grad((tgx * tgx).sum(), (tt, tg), allow_unused=True)
    np.testing.assert_allclose(gx.detach().numpy(), tgx.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ggg.numpy(), tggg.numpy(), rtol=1e-4, atol=1e-5)
    if tggx is None or ggx is None:  # piecewise linear: no second derivative in x
        assert ggx is None or np.all(ggx.numpy() == 0)
    else:
        np.testing.assert_allclose(ggx.numpy(), tggx.numpy(), rtol=1e-4, atol=1e-5)


def test_activation_gradgradcheck_float64():
    x = am.tensor(_rng(34).standard_normal((3, 5)), requires_grad=True)
    for fn in (lambda u: F.leaky_relu(u, 0.2), F.relu, F.elu, F.silu, lambda u: F.leaky_relu(u, -0.5)):
        assert am.autograd.gradcheck(fn, (x,))
        assert am.autograd.gradgradcheck(fn, (x,))


def test_activations_float64_never_go_to_onednn(calls):
    x = am.tensor(_rng(35).standard_normal((64, 512)), requires_grad=True)
    (F.leaky_relu(x, 0.2) + F.elu(x) + F.silu(x) + F.gelu(x)).sum().backward()
    assert calls == []


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "cross_entropy"])
def test_non_finite_logits_gradients_as_torch(op, accel):
    """NaN/inf logits: forward and gradient NaN exactly where PyTorch's are (oneDNN's exp gives
    +inf at NaN; the ops put the NaN back)."""
    x = _rng(40).standard_normal((128, 512)).astype(np.float32)
    x[1, :] = -np.inf
    x[2, 7] = np.inf
    x[3, :100] = -np.inf
    x[4, 3] = np.nan
    g = _rng(41).standard_normal((128, 512)).astype(np.float32)
    tgt = _rng(42).integers(0, 512, 128)
    tgt[3] = 150  # a finite logit of the partly -inf row
    ours = {"softmax": lambda t: am.softmax(t, -1) * am.tensor(g), "log_softmax": lambda t: am.log_softmax(t, -1) * am.tensor(g),
            "cross_entropy": lambda t: F.cross_entropy(t, am.tensor(tgt), reduction="none")}[op]
    ref = {"softmax": lambda t: torch.softmax(t, -1) * torch.tensor(g), "log_softmax": lambda t: torch.log_softmax(t, -1) * torch.tensor(g),
           "cross_entropy": lambda t: TF.cross_entropy(t, torch.tensor(tgt), reduction="none")}[op]
    t = am.tensor(x, requires_grad=True)
    y = ours(t)
    y.sum().backward()
    tt = torch.tensor(x, requires_grad=True)
    ty = ref(tt)
    ty.sum().backward()
    for a, b in ((y.detach().numpy(), ty.detach().numpy()), (t.grad.numpy(), tt.grad.numpy())):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        fin = ~np.isnan(b)
        np.testing.assert_allclose(a[fin], b[fin], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["leaky_relu", "silu", "elu"])
def test_inplace_activation_on_tracked_input_vs_torch(name, accel):
    """inplace=True on a tracked tensor (DCGAN's LeakyReLU(0.2, inplace=True)): the op saves its
    input, which the in-place write replaces; the recorded graph still gives PyTorch's gradient."""
    kw = {"leaky_relu": {"negative_slope": 0.2}}.get(name, {})
    x = _rng(43).standard_normal(1 << 18).astype(np.float32)
    w = am.tensor(x, requires_grad=True)
    y = getattr(F, name)(w * 2, inplace=True, **kw)
    (y * y).sum().backward()
    tw = torch.tensor(x.astype(np.float64), requires_grad=True)
    ty = getattr(TF, name)(tw * 2, inplace=True, **kw)
    (ty * ty).sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-5)
