"""Layer norm as compiled kernels (``avila_ml/cpu_accel/kernels/layernorm.c`` through
``_native_norm.py``, issue 17).

Compared against PyTorch's float64 layer norm (``native_layer_norm`` and its backward, and the
public ``layer_norm`` with autograd): float32 and float64, with weight and bias, weight only,
bias only and neither; row lengths that are not multiples of the vector width (1, 3, 7, 33,
257); rows with a large mean (1e4 + N(0, 1): a one-pass or rounded-mean formula loses the
variance there); sizes below and above the threading cut (so the OpenMP split and the
per-thread column sums run); NaN and infinity rows. Also: the NumPy fallback (kernels switched
off) gives the same results, the column sums are deterministic, the kernels refuse (return None)
what they do not handle, the public op routes through them, and double backward
(``create_graph=True``) runs the differentiable formula and matches PyTorch's.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.cpu_accel import _native, _native_norm
from avila_ml.nn import functional as F
from avila_ml.ops import normalization as N

needs_kernels = pytest.mark.skipif(not _native.available(), reason=f"no compiled kernels: {_native.absent_reason()}")
AFFINE = ["wb", "w", "b", "none"]
# (rows, D): odd lengths below the threading cut (65536 elements), then above it
SHAPES = [(1, 1), (5, 3), (4, 7), (3, 33), (6, 257), (40, 100), (300, 257), (129, 1024), (2048, 40)]


def _params(rng, d, affine, dtype):
    w = rng.standard_normal(d).astype(dtype) if affine in ("wb", "w") else None
    b = rng.standard_normal(d).astype(dtype) if affine in ("wb", "b") else None
    return w, b


def _tol(dtype):
    """(rtol, atol) against float64 PyTorch: float32 results carry float32 rounding of O(1)
    values (xhat, dx of O(rstd)); float64 ones only summation-order differences."""
    return (2e-5, 2e-5) if dtype == np.float32 else (1e-11, 1e-11)


def _torch_ref(x, w, b, g, eps=1e-5):
    """PyTorch float64: y, mean, rstd, dx, dw, db."""
    d = x.shape[1]
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    tw = None if w is None else torch.tensor(w.astype(np.float64), requires_grad=True)
    tb = None if b is None else torch.tensor(b.astype(np.float64), requires_grad=True)
    y, mean, rstd = torch.ops.aten.native_layer_norm(tx, [d], tw, tb, eps)
    y.backward(torch.tensor(g.astype(np.float64)))
    grad = lambda t: None if t is None else t.grad.numpy()  # noqa: E731
    return (y.detach().numpy(), mean.detach().numpy().reshape(-1), rstd.detach().numpy().reshape(-1),
            tx.grad.numpy(), grad(tw), grad(tb))


def _close(ours, ref, dtype, scale=1.0):
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol * scale)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernels_match_torch(shape, affine, dtype):
    rng = np.random.default_rng(hash((shape, affine)) % 2**32)
    x = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = _params(rng, shape[1], affine, dtype)
    y, mean, rstd, mean_lo = _native_norm.layer_norm_forward(x, w, b, 1e-5)
    ry, rmean, rrstd, rdx, rdw, rdb = _torch_ref(x, w, b, g)
    assert y.dtype == mean.dtype == rstd.dtype == dtype
    _close(y, ry, dtype)
    _close(mean.astype(np.float64) + mean_lo, rmean, dtype)
    _close(rstd, rrstd, dtype)
    dx, dw, db = _native_norm.layer_norm_backward(g, x, mean, rstd, w, mean_lo=mean_lo)
    # dx and the column sums grow with rstd / the number of rows summed
    _close(dx, rdx, dtype, scale=float(np.abs(rdx).max()) + 1)
    assert (dw is None) == (w is None)
    if w is not None:
        _close(dw, rdw, dtype, scale=np.sqrt(shape[0]))
    # dbias is the column sum of g whether or not the layer has a bias (the caller asks)
    _close(db, g.astype(np.float64).sum(0) if b is None else rdb, dtype, scale=np.sqrt(shape[0]))


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 33), (700, 128)], ids=str)
def test_large_mean_rows_keep_their_variance(shape, dtype):
    """Rows 1e4 + N(0, 1): float32 holds x to ~1e-3 absolute, and its rounded mean is off by up
    to 5e-4, so xhat from x - round(mean) errs by ~5e-4; the kernel's mean + mean_lo keeps it
    within float32 rounding of PyTorch's float64 result on the same (float32) inputs."""
    rng = np.random.default_rng(5)
    x = (1e4 + rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = _params(rng, shape[1], "wb", dtype)
    y, mean, rstd, mean_lo = _native_norm.layer_norm_forward(x, w, b, 1e-5)
    ry, rmean, rrstd, rdx, rdw, rdb = _torch_ref(x, w, b, g)
    _close(y, ry, dtype, scale=float(np.abs(w).max()))
    _close(rstd, rrstd, dtype)
    dx, dw, db = _native_norm.layer_norm_backward(g, x, mean, rstd, w, mean_lo=mean_lo)
    _close(dx, rdx, dtype, scale=float(np.abs(rdx).max()))
    _close(dw, rdw, dtype, scale=np.sqrt(shape[0]))
    _close(db, rdb, dtype, scale=np.sqrt(shape[0]))


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_rows_as_torch(dtype):
    """A NaN or an infinity makes its row's outputs NaN (as PyTorch); other rows are unharmed."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 37)).astype(dtype)
    x[1, 3], x[2, 0] = np.nan, np.inf
    w, b = _params(rng, 37, "wb", dtype)
    g = rng.standard_normal((4, 37)).astype(dtype)
    y, mean, rstd, mean_lo = _native_norm.layer_norm_forward(x, w, b, 1e-5)
    ry = _torch_ref(x, w, b, g)[0]
    assert np.array_equal(np.isnan(y), np.isnan(ry)) and np.isnan(y[1:3]).all()
    _close(y[[0, 3]], ry[[0, 3]], dtype)
    dx = _native_norm.layer_norm_backward(g, x, mean, rstd, w, mean_lo=mean_lo)[0]
    assert np.isnan(dx[1:3]).all() and np.isfinite(dx[[0, 3]]).all()


@needs_kernels
def test_column_sums_deterministic_and_split_over_threads(monkeypatch):
    """The same thread count gives bitwise the same dweight/dbias; one thread and two agree to
    rounding (the per-thread partial sums are added in a fixed order)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1000, 96)).astype(np.float32)
    g = rng.standard_normal((1000, 96)).astype(np.float32)
    w = rng.standard_normal(96).astype(np.float32)
    y, mean, rstd, lo = _native_norm.layer_norm_forward(x, w, None, 1e-5)
    first = _native_norm.layer_norm_backward(g, x, mean, rstd, w, mean_lo=lo)
    again = _native_norm.layer_norm_backward(g, x, mean, rstd, w, mean_lo=lo)
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    for threads in (1, 2, 3):
        monkeypatch.setattr(_native, "threads_for", lambda n, t=threads: t)
        y2, mean2, rstd2, lo2 = _native_norm.layer_norm_forward(x, w, None, 1e-5)
        assert np.array_equal(y2, y) and np.array_equal(mean2, mean) and np.array_equal(rstd2, rstd)
        dx, dw, db = _native_norm.layer_norm_backward(g, x, mean, rstd, w, mean_lo=lo)
        assert np.array_equal(dx, first[0])  # rows are independent of the split
        # (sums of 1000 terms of O(1), up to ~60: a few float32 ulps of 60 apart; blocks of 16
        # rows in float32 start at other rows when the split moves)
        np.testing.assert_allclose(dw, first[1], rtol=1e-6, atol=2e-5)
        np.testing.assert_allclose(db, first[2], rtol=1e-6, atol=2e-5)


@needs_kernels
def test_only_the_gradients_asked_for():
    rng = np.random.default_rng(8)
    x, g = rng.standard_normal((2, 2, 50)).reshape(4, 50), rng.standard_normal((4, 50))
    w = rng.standard_normal(50)
    y, mean, rstd, lo = _native_norm.layer_norm_forward(x, w, None, 1e-5)
    full = _native_norm.layer_norm_backward(g, x, mean, rstd, w, mean_lo=lo)
    dx, dw, db = _native_norm.layer_norm_backward(g, x, mean, rstd, w, True, False, False, mean_lo=lo)
    assert dw is None and db is None and np.array_equal(dx, full[0])
    dx, dw, db = _native_norm.layer_norm_backward(g, x, mean, rstd, w, False, True, True, mean_lo=lo)
    assert dx is None and np.array_equal(dw, full[1]) and np.array_equal(db, full[2])
    assert _native_norm.layer_norm_backward(g, x, mean, rstd, w, False, False, False) == (None, None, None)


def test_kernels_refuse_what_they_do_not_handle():
    """None (the caller runs NumPy) for float16, mixed dtypes, strided views, mismatched shapes,
    empty arrays, and with the kernels switched off."""
    x = np.ones((4, 8), np.float32)
    w = np.ones(8, np.float32)
    assert _native_norm.layer_norm_forward(x.astype(np.float16), None, None, 1e-5) is None
    assert _native_norm.layer_norm_forward(x, w.astype(np.float64), None, 1e-5) is None
    assert _native_norm.layer_norm_forward(np.ones((8, 4), np.float32).T, None, None, 1e-5) is None
    assert _native_norm.layer_norm_forward(x, np.ones(7, np.float32), None, 1e-5) is None
    assert _native_norm.layer_norm_forward(np.ones((0, 8), np.float32), None, None, 1e-5) is None
    assert _native_norm.layer_norm_forward(x[None], None, None, 1e-5) is None  # not (rows, D)
    stats = np.zeros(4, np.float32)
    assert _native_norm.layer_norm_backward(x[:, :4], x, stats, stats, None) is None  # g's shape
    assert _native_norm.layer_norm_backward(x, x, stats[:3], stats, None) is None
    _native.ENABLED, enabled = False, _native.ENABLED
    try:
        assert _native_norm.layer_norm_forward(x, None, None, 1e-5) is None
        assert _native_norm.layer_norm_backward(x, x, stats, stats, None) is None
    finally:
        _native.ENABLED = enabled


# ------------------------------------------------------------------ the public op (F.layer_norm)
def _public(xa, ns, w, b, g):
    """Our F.layer_norm forward and gradients (x, weight, bias)."""
    x = am.tensor(xa, requires_grad=True)
    tw = None if w is None else am.tensor(w, requires_grad=True)
    tb = None if b is None else am.tensor(b, requires_grad=True)
    y = F.layer_norm(x, ns, tw, tb)
    y.backward(am.tensor(g))
    return [y.detach().numpy(), x.grad.numpy()] + [t.grad.numpy() for t in (tw, tb) if t is not None]


def _public_torch(xa, ns, w, b, g):
    tx = torch.tensor(xa.astype(np.float64), requires_grad=True)
    tw = None if w is None else torch.tensor(w.astype(np.float64), requires_grad=True)
    tb = None if b is None else torch.tensor(b.astype(np.float64), requires_grad=True)
    y = TF.layer_norm(tx, ns, tw, tb)
    y.backward(torch.tensor(g.astype(np.float64)))
    return [y.detach().numpy(), tx.grad.numpy()] + [t.grad.numpy() for t in (tw, tb) if t is not None]


@pytest.fixture
def native_calls(monkeypatch):
    """Counts the compiled forward and backward calls that did the work."""
    seen = {"fwd": 0, "bwd": 0}
    real_f, real_b = _native_norm.layer_norm_forward, _native_norm.layer_norm_backward

    def fwd(*a, **k):
        out = real_f(*a, **k)
        seen["fwd"] += out is not None
        return out

    def bwd(*a, **k):
        out = real_b(*a, **k)
        seen["bwd"] += out is not None
        return out
    monkeypatch.setattr(_native_norm, "layer_norm_forward", fwd)
    monkeypatch.setattr(_native_norm, "layer_norm_backward", bwd)
    return seen


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape,ns", [((3, 5, 7), (7,)), ((2, 3, 4, 9), (4, 9)), ((64, 1030), (1030,)),
                                      ((4, 70, 512), (512,))], ids=str)
def test_public_layer_norm_through_kernels_matches_torch_and_fallback(shape, ns, affine, dtype, native_calls,
                                                                      monkeypatch):
    """F.layer_norm routes float64, and float32 rows of _NATIVE_MIN_ROW values or more (or
    below oneDNN's size floor), through the kernels; results match PyTorch, and the NumPy path
    (kernels off) within rounding."""
    rng = np.random.default_rng(9)
    xa = (3.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = _params(rng, ns, affine, dtype)
    ours = _public(xa, ns, w, b, g)
    assert native_calls == {"fwd": 1, "bwd": 1}
    ref = _public_torch(xa, ns, w, b, g)
    rows = int(np.prod(shape[:len(shape) - len(ns)]))
    scales = [1.0, float(np.abs(ref[1]).max()) + 1] + [np.sqrt(rows)] * (len(ref) - 2)
    for o, r, s in zip(ours, ref, scales):
        assert o.dtype == dtype
        _close(o, r, dtype, scale=s)
    monkeypatch.setattr(_native, "ENABLED", False)
    fallback = _public(xa, ns, w, b, g)
    assert native_calls == {"fwd": 1, "bwd": 1}  # (no further kernel call)
    for o, f, s in zip(ours, fallback, scales):
        _close(o, f, dtype, scale=s)


@needs_kernels
def test_public_layer_norm_route():
    """Which path runs: the kernels for float64 and for float32 rows of _NATIVE_MIN_ROW values
    or more; oneDNN (when installed, from _ONEDNN_MIN_SIZE elements) for shorter float32 rows."""
    from avila_ml.cpu_accel import _dnnl
    route = lambda shape, dt: N._layer_rows_route(am.tensor(np.ones(shape, dt)), None, None, 1, 1e-5)[1]  # noqa: E731
    assert route((64, 64), np.float64) is N._NATIVE
    assert route((4096, 64), np.float64) is N._NATIVE
    assert route((8, 64), np.float32) is N._NATIVE  # below oneDNN's floor
    assert route((256, N._NATIVE_MIN_ROW), np.float32) is N._NATIVE
    short = route((4096, 64), np.float32)
    assert (short is not N._NATIVE and short is not None) if (_dnnl.available() and am.backends.mkldnn.enabled) \
        else short is N._NATIVE


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_double_backward_after_kernel_forward_matches_torch(dtype, native_calls):
    """create_graph=True: the Tensor-op backward runs (from x), so second derivatives match
    PyTorch's; the first-order gradient equals the kernel's."""
    rng = np.random.default_rng(10)
    xa = (2.0 + rng.standard_normal((12, 300))).astype(dtype)
    wa, ba = rng.standard_normal(300).astype(dtype), rng.standard_normal(300).astype(dtype)
    ga, va = rng.standard_normal((12, 300)).astype(dtype), rng.standard_normal((12, 300)).astype(dtype)
    x, w, b = (am.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    tx, tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (xa, wa, ba))
    gx, gw = am.autograd.grad(F.layer_norm(x, (300,), w, b), (x, w), am.tensor(ga), create_graph=True)
    assert native_calls["fwd"] == 1 and native_calls["bwd"] == 0  # the graph formula ran
    tgx, tgw = torch.autograd.grad(TF.layer_norm(tx, (300,), tw, tb), (tx, tw), torch.tensor(ga.astype(np.float64)),
                                   create_graph=True)
    _close(gx.detach().numpy(), tgx.detach().numpy(), dtype, scale=10)
    _close(gw.detach().numpy(), tgw.detach().numpy(), dtype, scale=10)
    hx, hw = am.autograd.grad((gx * am.tensor(va)).sum() + (gw * gw).sum(), (x, w))
    thx, thw = torch.autograd.grad((tgx * torch.tensor(va.astype(np.float64))).sum() + (tgw * tgw).sum(), (tx, tw))
    _close(hx.numpy(), thx.numpy(), dtype, scale=50)
    _close(hw.numpy(), thw.numpy(), dtype, scale=50)


@needs_kernels
def test_gradcheck_through_kernels():
    """Finite differences (float64) of the kernel path's first derivatives."""
    rng = np.random.default_rng(11)
    x = am.tensor(rng.standard_normal((3, 11)), requires_grad=True)
    w = am.tensor(rng.standard_normal(11), requires_grad=True)
    b = am.tensor(rng.standard_normal(11), requires_grad=True)
    assert am.autograd.gradcheck(lambda x, w, b: F.layer_norm(x, (11,), w, b), (x, w, b))
    assert am.autograd.gradcheck(lambda x: F.layer_norm(x, (11,)), (x,))


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_switched_off_between_forward_and_backward(dtype, monkeypatch):
    """The backward of a kernel forward falls back to the NumPy formula on the kernel's saved
    statistics (mean + mean_lo, rstd) and still gives PyTorch's gradients."""
    rng = np.random.default_rng(12)
    xa = (1e3 + rng.standard_normal((30, 300))).astype(dtype)
    wa, ba, ga = (rng.standard_normal(s).astype(dtype) for s in (300, 300, (30, 300)))
    x, w, b = (am.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    y = F.layer_norm(x, (300,), w, b)
    assert y.grad_fn.native is not None
    monkeypatch.setattr(_native, "ENABLED", False)
    y.backward(am.tensor(ga))
    ref = _public_torch(xa, (300,), wa, ba, ga)
    for o, r, s in zip([y.detach().numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()], ref,
                       [1.0, float(np.abs(ref[1]).max()) + 1, np.sqrt(30), np.sqrt(30)]):
        _close(o, r, dtype, scale=s)
