"""The compiled softmax, log-softmax and cross-entropy row kernels (``avila_ml/cpu_accel/kernels/
softmax.c`` through ``_native_softmax.py``, issue 17).

Their vectorised exp against long-double exp over the whole float range; each kernel against
PyTorch's CPU kernel (float32 and float64; rows of length 1, odd lengths, sizes below and above
the threading cut, few long rows and many short ones); rows with NaN, +-inf, only -inf (a masked
attention row), huge and tiny logits, as PyTorch; that the OpenMP split gives bitwise the one-thread
result; that the ops (``am.softmax``, ``am.log_softmax``, ``F.cross_entropy``) run them where they
apply and give PyTorch's values and gradients, the same as with the kernels switched off (the NumPy
and oneDNN paths); and that double backward (``create_graph=True``) still goes through the Tensor-op
formulas, against PyTorch.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.ops import loss as loss_ops
from avila_ml.cpu_accel import _native, _native_softmax as NS
from avila_ml.nn import functional as F

needs_kernels = pytest.mark.skipif(not _native.available(), reason=f"no compiled kernels: {_native.absent_reason()}")
pytestmark = needs_kernels
DTYPES = [np.float32, np.float64]
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}
# (rows, cols): length-1 rows, odd lengths, one row, below and above the threading cut (2^16
# elements), few long rows (split unevenly over threads) and many short ones
SHAPES = [(1, 1), (5, 1), (1, 7), (9, 33), (17, 1000), (64, 4096), (3, 70001), (4099, 17)]


def _rng(seed):
    return np.random.default_rng(seed)


def _logits(shape, dtype, seed=0, scale=4.0):
    return (_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _torch(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def like_torch_at_specials(ours, ref, rtol=1e-5, atol=1e-6):
    """NaN exactly where PyTorch's ``ref`` has NaN, finite exactly where it is finite, and the
    finite values within ``rtol`` / ``atol`` (also used by tests/test_cpu_accel_eltwise.py)."""
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(ours), fin)
    np.testing.assert_allclose(ours[fin], ref[fin], rtol=rtol, atol=atol)


def _close_to_float64(ours, ours_dtype, ref64, torch_lowp, k=4.0, scale=1.0):
    """``ours`` (computed in ``ours_dtype``) is within ``2 x`` PyTorch's own error in that dtype
    plus ``k`` eps of the float64 reference (scaled by ``scale``), elementwise over the finite
    entries; NaN exactly where the reference has NaN."""
    ours, ref64, torch_lowp = (np.asarray(a, np.longdouble) for a in (ours, ref64, torch_lowp))
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref64))
    fin = np.isfinite(ref64)
    np.testing.assert_array_equal(ours[~fin], ref64[~fin])  # the same infinities
    torch_err = np.abs(torch_lowp[fin] - ref64[fin]).max(initial=0.0)
    err = np.abs(ours[fin] - ref64[fin]).max(initial=0.0)
    assert err <= 2 * torch_err + k * EPS[ours_dtype] * scale, (float(err), float(torch_err))


def _exact_forward(x, axis, log):
    """softmax / log-softmax of finite ``x`` in long double (a 64-bit mantissa): the reference
    both PyTorch's and our results are measured against (float64 PyTorch is not exact enough to
    judge float64 results: both sum a row with ~10 eps of error)."""
    z = x.astype(np.longdouble)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=axis, keepdims=True)
    return z - np.log(s) if log else e / s


def _exact_backward(g, y, axis, log):
    g, y = g.astype(np.longdouble), y.astype(np.longdouble)
    if log:
        return g - np.exp(y) * g.sum(axis=axis, keepdims=True)
    return y * (g - (g * y).sum(axis=axis, keepdims=True))


# ------------------------------------------------------------------------------------ exp
@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_within_one_ulp_over_the_whole_range(dtype):
    lo, hi = (-110.0, 90.0) if dtype == np.float32 else (-750.0, 712.0)
    x = np.concatenate([np.linspace(lo, hi, 1_000_003), _rng(0).uniform(-1, 1, 100_001),
                        _rng(1).uniform(-30, 0, 100_001)]).astype(dtype)
    y = NS.exp(x)
    ref = np.exp(x.astype(np.longdouble))  # 64-bit mantissa: the exact value to ~1e-19
    with np.errstate(over="ignore"):
        rounded = ref.astype(dtype)
    normal = np.isfinite(rounded) & (rounded != 0)
    ulp = np.spacing(rounded[normal]).astype(np.longdouble)
    err = np.abs(y[normal].astype(np.longdouble) - ref[normal]) / ulp
    assert float(err.max()) <= 1.5  # measured: 1.006 (float32, FMA clone), 1.055 (float64)
    # overflow to +inf and underflow to 0 exactly where the correctly rounded result does
    np.testing.assert_array_equal(y[~normal], rounded[~normal])


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_specials(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, -1e300 if dtype == np.float64 else -3e38,
                  88.72, 88.73, -87.33, -103.0, -104.0, 709.78, 709.79, -708.4, -745.0, -746.0], np.float64)
    x = x.astype(dtype) if dtype == np.float64 else x[:13].astype(dtype)
    y = NS.exp(x)
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.longdouble)).astype(dtype)
    assert np.isnan(y[0])
    np.testing.assert_array_equal(y[1:], ref[1:])


def test_exp_does_not_apply_to_other_dtypes_or_layouts():
    assert NS.exp(np.ones(4, np.float16)) is None
    assert NS.exp(np.ones(8, np.float32)[::2]) is None
    assert NS.exp([1.0, 2.0]) is None


# ------------------------------------------------------------------------------------ kernels vs torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_and_log_softmax_forward_match_torch(shape, dtype):
    x = _logits(shape, dtype, seed=2)
    for log, ours_fn, ref_fn in ((False, NS.softmax_forward, torch.softmax),
                                 (True, NS.log_softmax_forward, torch.log_softmax)):
        y = ours_fn(x)
        assert y.dtype == dtype and y.shape == shape
        ref = _exact_forward(x, -1, log)
        scale = max(np.abs(ref).max(), 1.0) if log else 1.0
        _close_to_float64(y, dtype, ref, ref_fn(_torch(x), -1).numpy(), scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_and_log_softmax_backward_match_torch(shape, dtype):
    x = _logits(shape, dtype, seed=3)
    g = _logits(shape, dtype, seed=4, scale=1.0)
    for log, fwd, ours_bwd, aten in ((False, torch.softmax, NS.softmax_backward, torch.ops.aten._softmax_backward_data),
                                     (True, torch.log_softmax, NS.log_softmax_backward,
                                      torch.ops.aten._log_softmax_backward_data)):
        y = fwd(_torch(x), -1).numpy()  # PyTorch's output, so only the backward is compared
        dx = ours_bwd(g, y)
        assert dx.dtype == dtype and dx.shape == shape
        ref = _exact_backward(g, y, -1, log)
        lowp = aten(_torch(g), _torch(y), -1, _torch(y).dtype).numpy()
        _close_to_float64(dx, dtype, ref, lowp, scale=max(np.abs(g).max(), 1.0) * 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_and_extreme_rows_match_torch(dtype):
    big = 3e38 if dtype == np.float32 else 1e300
    tiny = 1e-30
    rows = [
        [-np.inf] * 5,  # all -inf (a fully masked attention row): NaN in PyTorch
        [-np.inf, 1.0, 2.0, -np.inf, 0.5],  # partly masked: zeros there
        [np.nan, 1.0, 2.0, 3.0, 4.0],  # a NaN: NaN row
        [np.inf, 1.0, 2.0, 3.0, 4.0],  # a +inf: NaN row (inf - inf)
        [np.inf, np.inf, 0.0, 0.0, 0.0],
        [big, big, -big, 0.0, big],  # huge but finite
        [-big, -big, -big, -big, -big],
        [tiny, -tiny, 0.0, -0.0, tiny],
        [1e4, 1e4, -1e4, 0.0, 1e4],
        [0.0, -80.0, -90.0, -100.0, -800.0],  # exp underflows to subnormals and 0
    ]
    x = np.array(rows, dtype)
    t = _torch(x)
    for ours, ref in ((NS.softmax_forward, torch.softmax), (NS.log_softmax_forward, torch.log_softmax)):
        y, r = ours(x), ref(t, -1).numpy()
        np.testing.assert_array_equal(np.isnan(y), np.isnan(r))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(r))
        fin = np.isfinite(r)
        np.testing.assert_allclose(y[fin], r[fin], rtol=8 * EPS[dtype], atol=4 * EPS[dtype])
    # single-entry rows: softmax 1, log-softmax 0, NaN for -inf/+inf/NaN
    one = np.array([[0.0], [-3.5], [big], [-np.inf], [np.inf], [np.nan]], dtype)
    for ours, ref in ((NS.softmax_forward, torch.softmax), (NS.log_softmax_forward, torch.log_softmax)):
        y, r = ours(one), ref(_torch(one), -1).numpy()
        np.testing.assert_array_equal(np.isnan(y), np.isnan(r))
        np.testing.assert_array_equal(y[~np.isnan(r)], r[~np.isnan(r)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_with_non_finite_values_matches_torch(dtype):
    y_sm = np.array([[np.nan, np.nan, np.nan], [0.0, 0.25, 0.75], [0.5, 0.5, 0.0]], dtype)
    y_ls = np.array([[np.nan, np.nan, np.nan], [-np.inf, np.log(0.25), np.log(0.75)], [-0.5, -1.0, -np.inf]], dtype)
    g = np.array([[1.0, 2.0, 3.0], [np.inf, 1.0, -1.0], [np.nan, 1.0, 0.0]], dtype)
    for y, ours, aten in ((y_sm, NS.softmax_backward, torch.ops.aten._softmax_backward_data),
                          (y_ls, NS.log_softmax_backward, torch.ops.aten._log_softmax_backward_data)):
        dx = ours(g, y)
        ref = aten(_torch(g), _torch(y), -1, _torch(y).dtype).numpy()
        np.testing.assert_array_equal(np.isnan(dx), np.isnan(ref))
        fin = ~np.isnan(ref)
        np.testing.assert_allclose(dx[fin], ref[fin], rtol=4 * EPS[dtype], atol=4 * EPS[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_split_rows_bitwise_as_one_thread(dtype, monkeypatch):
    x = _logits((257, 4099), dtype, seed=5)  # above the cut; rows not a multiple of the team
    g = _logits((257, 4099), dtype, seed=6)
    t = _rng(7).integers(0, 4099, 257)
    gs = _logits((257,), dtype, seed=8)

    def run():
        y, ly = NS.softmax_forward(x), NS.log_softmax_forward(x)
        return (y, ly, NS.softmax_backward(g, y), NS.log_softmax_backward(g, ly),
                NS.cross_entropy_backward(ly, gs, t))
    monkeypatch.setattr(_native, "threads_for", lambda n: 2)
    split = run()
    monkeypatch.setattr(_native, "threads_for", lambda n: 1)
    for a, b in zip(split, run()):
        np.testing.assert_array_equal(a, b)


def test_kernels_do_not_apply_to_other_dtypes_layouts_or_shapes():
    x = np.ones((4, 6), np.float32)
    assert NS.softmax_forward(x.astype(np.float16)) is None
    assert NS.softmax_forward(x[:, ::2]) is None
    assert NS.log_softmax_forward(x.T) is None
    assert NS.softmax_backward(x, x.astype(np.float64)) is None
    assert NS.log_softmax_backward(x[:2], x) is None
    assert NS.softmax_forward(np.ones((0, 3), np.float32)) is None
    assert NS.cross_entropy_backward(x, np.ones(3, np.float32), np.zeros(4, np.int64)) is None
    assert NS.cross_entropy_backward(x, np.ones(4, np.float32), np.zeros(4, np.int32)) is None


def test_cross_entropy_backward_refuses_out_of_range_targets():
    logp = np.log(np.full((2, 3), 1 / 3, np.float32))
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        NS.cross_entropy_backward(logp, np.ones(2, np.float32), np.array([0, 3]))
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        NS.cross_entropy_backward(logp, np.ones(2, np.float32), np.array([-1, 0]))


def test_disabled_kernels_return_none(monkeypatch):
    monkeypatch.setattr(_native, "ENABLED", False)
    x = np.ones((2, 3), np.float32)
    assert NS.softmax_forward(x) is None and NS.log_softmax_forward(x) is None and NS.exp(x) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal, i0, j0", [(False, 0, 0), (True, 0, 0), (True, 5, 0), (True, 3, 6), (True, 0, 9)],
                         ids=["full", "causal", "causal rows from 5", "causal keys from 6", "causal all masked"])
def test_attention_probs_match_a_float64_softmax(dtype, causal, i0, j0):
    """Offset scores -> exp (later keys 0 when causal), row sums, rows divided by them: against
    NumPy in float64 on (nb, n, m) blocks whose rows start at query i0 and key j0, odd sizes."""
    s = _logits((3, 11, 37), dtype, seed=9, scale=3.0)
    p, l = s.copy(), np.full((3, 11), -1.0, dtype)
    assert NS.attention_probs(p, l, i0, j0, causal)
    masked = (np.arange(j0, j0 + 37)[None, :] > np.arange(i0, i0 + 11)[:, None]) if causal else np.zeros((11, 37), bool)
    e = np.where(masked, 0.0, np.exp(s.astype(np.float64)))
    ref_l = e.sum(-1)
    np.testing.assert_allclose(l, ref_l, rtol=8 * EPS[dtype], atol=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref_p = e / ref_l[..., None]
    live = ref_l > 0
    np.testing.assert_allclose(p[live], ref_p[live], rtol=8 * EPS[dtype], atol=0)
    assert np.all(p[np.broadcast_to(masked, p.shape)] == 0)  # stored zeros, also under inf offsets
    if causal and j0 > i0 + 10:  # every key after every query: sums 0 (the caller's check refuses them)
        assert np.all(l == 0)


def test_attention_probs_overflow_and_bad_arguments(monkeypatch):
    """An overflowing score makes its row's sum inf (the fused attention then redoes the rows);
    a masked inf stays 0; row sums of the wrong shape are refused; other dtypes, layouts and
    switched-off kernels return False."""
    p = np.array([[[1.0, 200.0, 0.0], [0.0, 0.0, np.inf]]], np.float32)
    l = np.empty((1, 2), np.float32)
    assert NS.attention_probs(p, l, 0, 0, True)
    # the 200 and the inf lie after the query: zeros
    assert p[0].tolist() == [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]] and l[0, 1] == 2.0
    assert abs(float(l[0, 0]) - np.e) < 1e-6
    q, lq = np.array([[[1.0, 200.0]]], np.float32), np.empty((1, 1), np.float32)
    assert NS.attention_probs(q, lq, 0, 0, False)
    assert lq[0, 0] == np.inf
    with pytest.raises(ValueError, match="row sums of shape"):
        NS.attention_probs(np.ones((2, 3, 4), np.float32), np.ones((2, 4), np.float32), 0, 0, False)
    assert not NS.attention_probs(np.ones((1, 2, 2), np.float16), np.ones((1, 2), np.float16), 0, 0, False)
    assert not NS.attention_probs(np.ones((1, 2, 4), np.float32)[..., ::2], np.ones((1, 2), np.float32), 0, 0, False)
    monkeypatch.setattr(_native, "ENABLED", False)
    assert not NS.attention_probs(np.ones((1, 2, 2), np.float32), np.ones((1, 2), np.float32), 0, 0, False)


# ------------------------------------------------------------------------------------ through the ops
@pytest.fixture
def spy(monkeypatch):
    """Names of the compiled row kernels the ops called (and that returned a result)."""
    seen = []
    for name in ("softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
                 "cross_entropy_backward"):
        def wrapped(*args, _real=getattr(NS, name), _name=name, **kw):
            out = _real(*args, **kw)
            if out is not None:
                seen.append(_name)
            return out
        monkeypatch.setattr(NS, name, wrapped)
    return seen


def _ops_fwd_bwd(fn, x, g):
    t = am.tensor(x, requires_grad=True)
    y = fn(t)
    y.backward(am.tensor(g))
    return y.detach().numpy(), t.grad.numpy()


def _torch_fwd_bwd(fn, x, g):
    t = torch.tensor(x, requires_grad=True)
    y = fn(t)
    y.backward(torch.tensor(g))
    return y.detach().numpy(), t.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((64, 4096), -1), ((3, 5, 7), 2), ((6, 9, 1), 1), ((2, 3, 4), 1), ((11,), 0)])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_ops_use_the_kernels_and_match_torch_and_the_fallback(shape, dim, log, dtype, spy, monkeypatch):
    x = _logits(shape, dtype, seed=9)
    g = _logits(shape, dtype, seed=10, scale=1.0)
    ours = (lambda t: am.log_softmax(t, dim)) if log else (lambda t: am.softmax(t, dim))
    ref = (lambda t: torch.log_softmax(t, dim)) if log else (lambda t: torch.softmax(t, dim))
    y, gx = _ops_fwd_bwd(ours, x, g)
    name = "log_softmax" if log else "softmax"
    rows_last = all(s == 1 for s in shape[dim % len(shape) + 1:])
    assert spy == ([f"{name}_forward", f"{name}_backward"] if rows_last else [])
    ty, tgx = _torch_fwd_bwd(ref, x, g)
    ry = _exact_forward(x, dim, log)
    rgx = _exact_backward(g, ry, dim, log)
    _close_to_float64(y, dtype, ry, ty, scale=max(np.abs(ry).max(), 1.0))
    _close_to_float64(gx, dtype, rgx, tgx, scale=max(np.abs(g).max(), 1.0) * 2)
    # the kernels switched off: the NumPy/oneDNN path, as close to PyTorch and to the kernels
    monkeypatch.setattr(_native, "ENABLED", False)
    y0, gx0 = _ops_fwd_bwd(ours, x, g)
    _close_to_float64(y0, dtype, ry, ty, scale=max(np.abs(ry).max(), 1.0))
    _close_to_float64(gx0, dtype, rgx, tgx, scale=max(np.abs(g).max(), 1.0) * 2)
    # so the two paths differ by at most the sum of their bounds
    torch_err = float(np.abs(ty.astype(np.longdouble) - ry).max())
    tol = 4 * torch_err + 8 * EPS[dtype] * max(float(np.abs(ry).max()), 1.0)
    np.testing.assert_allclose(y, y0, rtol=0, atol=tol)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_ops_non_finite_rows_as_torch_with_and_without_kernels(log, monkeypatch):
    x = _logits((6, 300), np.float32, seed=11)
    x[0, :] = -np.inf
    x[1, :200] = -np.inf
    x[2, 5] = np.nan
    x[3, 9] = np.inf
    x[4, :] = 1e30
    fn = am.log_softmax if log else am.softmax
    ref = (torch.log_softmax if log else torch.softmax)(torch.tensor(x), -1).numpy()
    for enabled in (True, False):
        monkeypatch.setattr(_native, "ENABLED", enabled)
        y = fn(am.tensor(x), -1).numpy()
        like_torch_at_specials(y, ref)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_double_backward_goes_through_tensor_ops_as_torch(log, spy):
    x = _logits((7, 33), np.float64, seed=12)
    g = _logits((7, 33), np.float64, seed=13, scale=1.0)
    w = _logits((7, 33), np.float64, seed=14, scale=1.0)
    ours = am.log_softmax if log else am.softmax
    ref = torch.log_softmax if log else torch.softmax
    t = am.tensor(x, requires_grad=True)
    (gx,) = am.autograd.grad(ours(t, -1), t, am.tensor(g), create_graph=True)
    name = "log_softmax" if log else "softmax"
    assert spy == [f"{name}_forward"]  # the graph-building backward is the Tensor-op formula
    (ggx,) = am.autograd.grad((gx * am.tensor(w)).sum(), t)
    tt = torch.tensor(x, requires_grad=True)
    (tgx,) = torch.autograd.grad(ref(tt, -1), tt, torch.tensor(g), create_graph=True)
    (tggx,) = torch.autograd.grad((tgx * torch.tensor(w)).sum(), tt)
    np.testing.assert_allclose(gx.detach().numpy(), tgx.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ggx.numpy(), tggx.numpy(), rtol=1e-11, atol=1e-12)
    assert am.autograd.gradgradcheck(lambda u: ours(u, -1), (am.tensor(x[:3, :5], requires_grad=True),))


# ------------------------------------------------------------------------------------ cross-entropy
CE_CASES = [dict(), dict(reduction="sum"), dict(reduction="none"), dict(ignore_index=3),
            dict(weight=True), dict(weight=True, ignore_index=0, reduction="sum"),
            dict(label_smoothing=0.1), dict(label_smoothing=0.2, weight=True, ignore_index=2)]


def _ce_both(x, t, kw, dtype):
    """(ours loss, grad), (torch float64 loss, grad), (torch in dtype loss, grad) for the same g."""
    kw = dict(kw)
    w = _rng(15).uniform(0.5, 2.0, x.shape[1]).astype(dtype) if kw.pop("weight", False) else None
    xa = am.tensor(x, requires_grad=True)
    loss = F.cross_entropy(xa, am.tensor(t), weight=None if w is None else am.tensor(w), **kw)
    g = _rng(16).standard_normal(loss.shape).astype(dtype)
    loss.backward(am.tensor(g))
    refs = []
    for d in (np.float64, dtype):
        xt = torch.tensor(x.astype(d), requires_grad=True)
        lt = TF.cross_entropy(xt, torch.tensor(t), weight=None if w is None else torch.tensor(w.astype(d)), **kw)
        lt.backward(torch.tensor(g.astype(d)))
        refs.append((lt.detach().numpy(), xt.grad.numpy()))
    return (loss.detach().numpy(), xa.grad.numpy()), refs[0], refs[1], g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2048, 512), (5, 7), (1, 1), (300, 1001)])
@pytest.mark.parametrize("kw", CE_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "mean")
def test_cross_entropy_uses_the_kernels_and_matches_torch_and_the_fallback(shape, kw, dtype, spy, monkeypatch):
    x = _logits(shape, dtype, seed=17)
    t = _rng(18).integers(0, shape[1], shape[0])
    if "ignore_index" in kw and shape[1] > kw["ignore_index"]:
        t[::3] = kw["ignore_index"]
    (l, gx), (rl, rgx), (tl, tgx), g = _ce_both(x, t, kw, dtype)
    if kw.get("label_smoothing"):  # built from log_softmax + nll_loss ops: the log-softmax kernels
        assert spy == ["log_softmax_forward", "log_softmax_backward"]
    elif x.size >= loss_ops._NATIVE_MIN:
        assert spy == ["log_softmax_forward", "cross_entropy_backward"]
    else:  # a few logits: the NumPy formula (the kernels' calls cost more there)
        assert spy == []
    # the reference is PyTorch float64, itself ~10 eps off after its row sums: float64 results
    # get that margin (k = 32), float32 ones 2x PyTorch float32's error plus 8 eps
    k = 32 if dtype == np.float64 else 8
    n = shape[0] if kw.get("reduction") == "sum" else 1
    _close_to_float64(l, dtype, rl, tl, k=k * n, scale=np.abs(rl).max() + 1)
    _close_to_float64(gx, dtype, rgx, tgx, k=k, scale=max(np.abs(g).max(), 1.0))
    monkeypatch.setattr(_native, "ENABLED", False)
    (l0, gx0), _, _, _ = _ce_both(x, t, kw, dtype)
    _close_to_float64(l0, dtype, rl, tl, k=k * n, scale=np.abs(rl).max() + 1)
    _close_to_float64(gx0, dtype, rgx, tgx, k=k, scale=max(np.abs(g).max(), 1.0))


def test_cross_entropy_nan_inf_logits_and_unbatched_input(spy):
    x = _logits((6, 50), np.float32, seed=19)
    x[1, 3], x[4, 0] = np.nan, np.inf
    t = np.array([0, 1, 2, 3, 4, 5])
    (l, gx), (rl, rgx), _, _ = _ce_both(x, t, dict(reduction="none"), np.float32)
    np.testing.assert_array_equal(np.isnan(l), np.isnan(rl))
    np.testing.assert_array_equal(np.isnan(gx), np.isnan(rgx))
    fin = ~np.isnan(rl)
    np.testing.assert_allclose(l[fin], rl[fin], rtol=1e-5, atol=1e-6)
    # one sample of shape (C,): the (1, C) rows path
    xa = am.tensor(x[0], requires_grad=True)
    F.cross_entropy(xa, am.tensor(np.int64(2))).backward()
    xt = torch.tensor(x[0].astype(np.float64), requires_grad=True)
    TF.cross_entropy(xt, torch.tensor(2)).backward()
    np.testing.assert_allclose(xa.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_cross_entropy_double_backward_as_torch(spy):
    x = _logits((64, 80), np.float64, seed=20)  # (>= loss._NATIVE_MIN logits: the kernel's forward)
    t = _rng(21).integers(0, 80, 64)
    xa = am.tensor(x, requires_grad=True)
    (gx,) = am.autograd.grad(F.cross_entropy(xa, am.tensor(t)), xa, create_graph=True)
    # the graph-building backward is the Tensor-op formula, softmax(x) an op (its forward a kernel)
    assert spy == ["log_softmax_forward", "softmax_forward"]
    (ggx,) = am.autograd.grad((gx * gx).sum(), xa)
    xt = torch.tensor(x, requires_grad=True)
    (tgx,) = torch.autograd.grad(TF.cross_entropy(xt, torch.tensor(t)), xt, create_graph=True)
    (tggx,) = torch.autograd.grad((tgx * tgx).sum(), xt)
    np.testing.assert_allclose(gx.detach().numpy(), tgx.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ggx.numpy(), tggx.numpy(), rtol=1e-10, atol=1e-13)


def test_every_registered_kernel_is_built():
    assert _native.missing() == []
