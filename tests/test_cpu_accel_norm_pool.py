"""The fast CPU paths of pooling and normalization (issue 17) against PyTorch in float64.

Max pooling: the separable running maximum and its assigned/added adjoint, over every branch
(disjoint windows that cover the input, disjoint ones that leave a remainder, overlapping
windows, padding, ceil mode, dilation), in float32 and float64, forward values, indices and
gradients, ties (PyTorch takes the first maximum), NaN (the last NaN wins), non-contiguous
inputs, double backward, adaptive pooling with equal windows (routed through max pooling,
the global 4-d pooling of the Conv4d example included) and indices that unpool as PyTorch's.

Normalization: layer norm through oneDNN (float32, from a size floor) and the NumPy path
(float64, small inputs, the off switch, the library absent) with its per-group closed-form
backward (batch and instance norm), forward, every gradient, running statistics and double
backward against PyTorch in float64, and which path ran.
"""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.nn import functional as F
from avila_ml.cpu_accel import _dnnl as dnnl
from avila_ml.cpu_accel import _norm as accel_norm
from avila_ml.ops import normalization as N
from test_conv_onednn import _python


def _f32_close(ours, ref64, rtol=2e-6):
    ours = np.asarray(ours, dtype=np.float64)
    ref64 = np.asarray(ref64, dtype=np.float64)
    assert ours.shape == ref64.shape, (ours.shape, ref64.shape)
    scale = np.abs(ref64).max() + 1e-30
    np.testing.assert_allclose(ours, ref64, rtol=0, atol=rtol * scale)


# ------------------------------------------------------------------------------ max pooling
# (d, shape, kwargs): which branch of MaxPoolAdjoint each row exercises is in its id
MAX_ROWS = [
    (2, (3, 4, 8, 8), dict(kernel_size=2), "disjoint-covering"),
    (2, (2, 3, 9, 7), dict(kernel_size=2), "disjoint-remainder"),
    (2, (2, 3, 9, 9), dict(kernel_size=3, stride=1, padding=1), "overlap-padding"),
    (2, (2, 3, 10, 11), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True), "ceil"),
    (2, (2, 2, 11, 12), dict(kernel_size=3, stride=2, dilation=2, padding=1), "dilation"),
    (1, (2, 3, 17), dict(kernel_size=4, stride=3, padding=2, ceil_mode=True), "1d"),
    (3, (2, 2, 6, 7, 5), dict(kernel_size=2, stride=(2, 1, 2), padding=(1, 0, 1)), "3d"),
    (3, (1, 2, 8, 8, 8), dict(kernel_size=(4, 2, 1)), "3d-k1-axis"),
]


def _max_fn(d):
    return getattr(F, f"max_pool{d}d"), getattr(TF, f"max_pool{d}d")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("row", MAX_ROWS, ids=lambda r: r[3])
def test_max_pool_values_indices_grads_match_torch(row, dtype):
    d, shape, kw, _ = row
    ours, ref = _max_fn(d)
    rng = np.random.default_rng(0)
    xa = rng.standard_normal(shape).astype(dtype)
    x = am.tensor(xa, requires_grad=True)
    tx = torch.tensor(xa.astype(np.float64), requires_grad=True)
    y, idx = ours(x, return_indices=True, **kw)
    ty, tidx = ref(tx, return_indices=True, **kw)
    assert y.dtype == (am.float32 if dtype == np.float32 else am.float64)
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy().astype(dtype))
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g.astype(dtype)))
    ty.backward(torch.tensor(g.astype(dtype).astype(np.float64)))
    _f32_close(x.grad.numpy(), tx.grad.numpy(), rtol=1e-14 if dtype == np.float64 else 1e-6)  # overlaps: sum order


@pytest.mark.parametrize("row", MAX_ROWS, ids=lambda r: r[3])
def test_max_pool_ties_take_the_first_maximum(row):
    d, shape, kw, _ = row
    ours, ref = _max_fn(d)
    xa = np.random.default_rng(1).integers(0, 3, shape).astype(np.float64)  # many equal values
    y, idx = ours(am.tensor(xa), return_indices=True, **kw)
    ty, tidx = ref(torch.tensor(xa), return_indices=True, **kw)
    np.testing.assert_array_equal(y.numpy(), ty.numpy())
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())


@pytest.mark.parametrize("row", MAX_ROWS[:5], ids=lambda r: r[3])
def test_max_pool_nan_propagates_and_the_last_nan_wins(row):
    d, shape, kw, _ = row
    ours, ref = _max_fn(d)
    rng = np.random.default_rng(2)
    xa = rng.standard_normal(shape)
    xa[rng.random(shape) < 0.15] = np.nan
    x = am.tensor(xa, requires_grad=True)
    tx = torch.tensor(xa, requires_grad=True)
    y, idx = ours(x, return_indices=True, **kw)
    ty, tidx = ref(tx, return_indices=True, **kw)
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy())  # NaN == NaN here
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g))
    ty.backward(torch.tensor(g))
    _f32_close(x.grad.numpy(), tx.grad.numpy(), rtol=1e-14)  # overlapping windows: sum order


def test_max_pool_non_contiguous_input():
    xa = np.random.default_rng(3).standard_normal((4, 3, 10, 12)).astype(np.float32)
    x = am.tensor(xa, requires_grad=True)
    xt = x.transpose(2, 3)  # (4, 3, 12, 10), a strided view
    assert not xt.array.flags.c_contiguous
    tx = torch.tensor(xa.astype(np.float64), requires_grad=True)
    y = F.max_pool2d(xt, 3, 2, 1)
    ty = TF.max_pool2d(tx.transpose(2, 3), 3, 2, 1)
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy().astype(np.float32))
    y.sum().backward()
    ty.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy().astype(np.float32))
    xa2 = xa.copy()
    y2 = F.max_pool2d(am.tensor(xa2[:, :, ::2, ::3]), 2)  # a sliced view of an untracked array
    np.testing.assert_array_equal(y2.numpy(), TF.max_pool2d(torch.tensor(xa2[:, :, ::2, ::3]), 2).numpy())


def test_max_pool_output_does_not_alias_the_input():
    x = am.tensor(np.arange(12.0).reshape(1, 1, 3, 4))
    y = F.max_pool2d(x, 1)
    assert not np.shares_memory(y.numpy(), x.numpy())
    np.testing.assert_array_equal(y.numpy(), x.numpy())


@pytest.mark.parametrize("row", [MAX_ROWS[0], MAX_ROWS[2], MAX_ROWS[4]], ids=lambda r: r[3])
def test_max_pool_double_backward_matches_torch(row):
    d, shape, kw, _ = row
    ours, ref = _max_fn(d)
    rng = np.random.default_rng(4)
    xa = rng.standard_normal(shape)
    g = rng.standard_normal(tuple(ref(torch.tensor(xa), **kw).shape))
    x = am.tensor(xa, requires_grad=True)
    gy = am.tensor(g, requires_grad=True)
    tx, tgy = torch.tensor(xa, requires_grad=True), torch.tensor(g, requires_grad=True)
    (gx,) = am.autograd.grad(ours(x, **kw), x, gy, create_graph=True)
    (tgx,) = torch.autograd.grad(ref(tx, **kw), tx, tgy, create_graph=True)
    w = rng.standard_normal(xa.shape)
    (ggy,) = am.autograd.grad((gx * am.tensor(w)).sum(), gy)
    (tggy,) = torch.autograd.grad((tgx * torch.tensor(w)).sum(), tgy)
    np.testing.assert_array_equal(ggy.numpy(), tggy.numpy())
    assert am.autograd.gradgradcheck(lambda t: ours(t, **kw), (am.tensor(xa, requires_grad=True),))


def test_max_pool_integer_input():
    xa = np.random.default_rng(5).integers(-50, 50, (2, 3, 7, 6))
    y, idx = F.max_pool2d(am.tensor(xa), 3, 2, 1, return_indices=True)
    ty, tidx = TF.max_pool2d(torch.tensor(xa).double(), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y.numpy(), ty.numpy().astype(np.int64))
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())


def _ref_max4d(xa, k, s, p):
    """Max pooling in 4-d by loops over the output (-inf padding)."""
    N, C = xa.shape[:2]
    xp = np.pad(xa, ((0, 0), (0, 0)) + ((p, p),) * 4, constant_values=-np.inf)
    o = [(n + 2 * p - k) // s + 1 for n in xa.shape[2:]]
    y = np.empty((N, C) + tuple(o))
    for i in itertools.product(*[range(n) for n in o]):
        win = xp[(slice(None), slice(None)) + tuple(slice(a * s, a * s + k) for a in i)]
        y[(slice(None), slice(None)) + i] = win.reshape(N, C, -1).max(-1)
    return y


def test_max_pool4d_matches_loops():
    xa = np.random.default_rng(6).standard_normal((2, 2, 5, 4, 6, 5))
    y = F.max_pool4d(am.tensor(xa), 3, 2, 1)
    np.testing.assert_array_equal(y.numpy(), _ref_max4d(xa, 3, 2, 1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d,shape,out", [(2, (2, 3, 12, 8), (3, 4)), (2, (2, 3, 12, 8), 1), (1, (3, 2, 9), 3),
                                         (3, (2, 2, 4, 6, 8), (2, 3, 1)), (2, (2, 3, 10, 7), (3, 4))])
def test_adaptive_max_pool_matches_torch(d, shape, out, dtype):
    rng = np.random.default_rng(7)
    xa = rng.standard_normal(shape).astype(dtype)
    xa[..., 0] = xa[..., 1]  # ties
    x = am.tensor(xa, requires_grad=True)
    tx = torch.tensor(xa.astype(np.float64), requires_grad=True)
    y, idx = getattr(F, f"adaptive_max_pool{d}d")(x, out, return_indices=True)
    ty, tidx = getattr(TF, f"adaptive_max_pool{d}d")(tx, out, return_indices=True)
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy().astype(dtype))
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g.astype(dtype)))
    ty.backward(torch.tensor(g.astype(dtype).astype(np.float64)))
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy().astype(dtype))


def test_global_max_pool4d_of_the_conv4d_example():
    """AdaptiveMaxPool4d(1) on (N, 16, 4, 3, 3, 3): equal windows, so MaxPool runs it."""
    rng = np.random.default_rng(8)
    xa = rng.standard_normal((4, 16, 4, 3, 3, 3)).astype(np.float32)
    x = am.tensor(xa, requires_grad=True)
    y = am.nn.AdaptiveMaxPool4d(1)(x)
    assert type(y.grad_fn).__name__.startswith("MaxPool")
    tx = torch.tensor(xa.astype(np.float64), requires_grad=True)
    ty = tx.amax(dim=(2, 3, 4, 5), keepdim=True)
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy().astype(np.float32))
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g.astype(np.float32)))
    ty.backward(torch.tensor(g.astype(np.float32).astype(np.float64)))  # one maximum per window: no ties
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy().astype(np.float32))


def test_indices_unpool_like_torch_max_unpool():
    """The library has no MaxUnpool; the indices must be what torch's max_unpool2d consumes."""
    xa = np.random.default_rng(9).standard_normal((2, 3, 8, 6))
    y, idx = F.max_pool2d(am.tensor(xa), 2, return_indices=True)
    u = np.zeros((2, 3, 8 * 6))
    np.put_along_axis(u, idx.numpy().reshape(2, 3, -1), y.numpy().reshape(2, 3, -1), axis=2)
    ty, tidx = TF.max_pool2d(torch.tensor(xa), 2, return_indices=True)
    np.testing.assert_array_equal(u.reshape(xa.shape), TF.max_unpool2d(ty, tidx, 2).numpy())


def test_max_pool_keeps_codes_not_the_input():
    """The forward saves a small code per window (int8 for K < 128), not the input."""
    x = am.tensor(np.random.default_rng(10).standard_normal((2, 3, 8, 8)), requires_grad=True)
    y = F.max_pool2d(x, 2)
    geom = y.grad_fn.geom
    assert geom.code.dtype == np.int8 and geom.code.shape == (2, 3, 4, 4)
    assert y.grad_fn.saved_inputs == () or y.grad_fn._saved_in is None


# ------------------------------------------------------------------------------ index_add
@pytest.mark.parametrize("finite", [True, False])
@pytest.mark.parametrize("m", [3, 8, 64, 65])
@pytest.mark.parametrize("axis", [0, 2, 3])
def test_index_add_short_and_long_maps_match_torch(m, axis, finite):
    """Short index maps (circular padding's backward) add slice by slice; repeats accumulate,
    NaN stays in its own slice; longer ones keep the one-hot product (finite values) or
    ``np.add.at``."""
    rng = np.random.default_rng(11)
    shape = (3, 4, 30, 32)  # slices of >= 256 elements along every axis: m <= 64 takes the loop
    assert min(np.prod(shape) // n for n in shape) >= 256
    index = rng.integers(0, shape[axis], m)
    vshape = list(shape)
    vshape[axis] = m
    src = rng.standard_normal(vshape)
    if not finite:
        src.flat[7] = np.nan
    base = rng.standard_normal(shape)
    ours = am.index_add(am.tensor(base), axis, am.tensor(index), am.tensor(src))
    ref = torch.index_add(torch.tensor(base), axis, torch.tensor(index), torch.tensor(src))
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("n, m", [(512, 2048), (70, 5000)])
def test_index_add_segment_sums_match_torch(n, m):
    """Long maps over many rows (embedding gradients) sum each index's rows as one segment:
    repeats accumulate, negative indices join their positive twins, a NaN or inf stays in its
    own row; out-of-range indices raise IndexError."""
    from avila_ml.backends.numpy_backend import NumpyBackend
    rng = np.random.default_rng(14)
    index = rng.integers(-n, n, m)
    src = rng.standard_normal((m, 6)).astype(np.float32)
    src[3, 2], src[9, 0] = np.nan, np.inf
    base = rng.standard_normal((n, 6)).astype(np.float32)
    ours = am.index_add(am.tensor(base), 0, am.tensor(index % n), am.tensor(src))
    ref = torch.index_add(torch.tensor(base), 0, torch.tensor(index % n), torch.tensor(src))
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    direct = base.copy()
    NumpyBackend.index_add(direct, 0, index, src)  # negative indices straight to the backend
    np.testing.assert_allclose(direct, ref.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError, match="out of bounds"):
        NumpyBackend.index_add(base.copy(), 0, np.array([0, n]), src[:2])


def test_circular_padding_gradient_matches_torch():
    xa = np.random.default_rng(12).standard_normal((2, 3, 4, 5, 6))
    x = am.tensor(xa, requires_grad=True)
    tx = torch.tensor(xa, requires_grad=True)
    y = F.pad(x, (1, 1, 2, 1, 1, 0), mode="circular")
    ty = TF.pad(tx, (1, 1, 2, 1, 1, 0), mode="circular")
    g = np.random.default_rng(13).standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-14, atol=1e-14)


# ------------------------------------------------------------------------------ normalization
needs_onednn = pytest.mark.skipif(not dnnl.available(), reason=f"oneDNN not available: {dnnl.absent_reason()}")


@pytest.fixture
def norm_plans(monkeypatch):
    """Records the oneDNN normalization plans requested (kind, shape)."""
    seen = []
    real = accel_norm.plan

    def spy(kind, shape, *args):
        seen.append((kind, tuple(shape)))
        return real(kind, shape, *args)
    monkeypatch.setattr(accel_norm, "plan", spy)
    return seen


@pytest.fixture
def no_native(monkeypatch):
    """The compiled layer-norm kernels switched off: float32 layer norm from _ONEDNN_MIN_SIZE
    elements then takes oneDNN's primitive for every row length (with them, rows of
    ``N._NATIVE_MIN_ROW`` values or more take the kernels; tests/test_native_norm.py)."""
    from avila_ml.cpu_accel import _native
    monkeypatch.setattr(_native, "ENABLED", False)


def _affine(rng, shape, affine, dtype):
    w = b = None
    if affine in ("wb", "w"):
        w = rng.standard_normal(shape).astype(dtype)
    if affine == "wb":
        b = rng.standard_normal(shape).astype(dtype)
    return w, b


def _grads_vs_torch(ours_fn, ref_fn, xa, params, rng, rtol):
    """Forward and the gradients of x and each parameter, ours in xa's dtype vs torch float64."""
    x = am.tensor(xa, requires_grad=True)
    ps = [None if p is None else am.tensor(p, requires_grad=True) for p in params]
    tx = torch.tensor(xa.astype(np.float64), requires_grad=True)
    tps = [None if p is None else torch.tensor(p.astype(np.float64), requires_grad=True) for p in params]
    y, ty = ours_fn(x, *ps), ref_fn(tx, *tps)
    _f32_close(y.detach().numpy(), ty.detach().numpy(), rtol)
    g = rng.standard_normal(tuple(ty.shape)).astype(xa.dtype)
    y.backward(am.tensor(g))
    ty.backward(torch.tensor(g.astype(np.float64)))
    _f32_close(x.grad.numpy(), tx.grad.numpy(), rtol)
    for p, tp in zip(ps, tps):
        if p is not None:
            _f32_close(p.grad.numpy(), tp.grad.numpy(), rtol)


LN_ROWS = [((256, 512), (512,)), ((8, 40, 128), (128,)), ((16, 48, 48), (48, 48)), ((3, 5, 4096), (4096,))]


@needs_onednn
@pytest.mark.parametrize("affine", ["wb", "w", "none"])
@pytest.mark.parametrize("shape,ns", LN_ROWS, ids=str)
def test_layer_norm_float32_through_onednn_matches_torch(shape, ns, affine, norm_plans, no_native):
    rng = np.random.default_rng(20)
    xa = (3.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)  # an offset mean
    w, b = _affine(rng, ns, affine, np.float32)
    _grads_vs_torch(lambda x, w, b: F.layer_norm(x, ns, w, b), lambda x, w, b: TF.layer_norm(x, ns, w, b),
                    xa, (w, b), rng, rtol=2e-5)
    rows = (int(np.prod(shape[:len(shape) - len(ns)])), int(np.prod(ns)))
    assert norm_plans == [("layer", rows)]


@pytest.mark.parametrize("shape,ns", [((256, 512), (512,)), ((4, 6, 10), (6, 10)), ((64, 64), (64,))], ids=str)
def test_layer_norm_float64_and_small_float32_stay_on_numpy(shape, ns, norm_plans):
    rng = np.random.default_rng(21)
    for dtype in (np.float64, np.float32):
        if dtype == np.float32 and np.prod(shape) >= N._ONEDNN_MIN_SIZE:
            continue
        xa = rng.standard_normal(shape).astype(dtype)
        w, b = _affine(rng, ns, "wb", dtype)
        _grads_vs_torch(lambda x, w, b: F.layer_norm(x, ns, w, b), lambda x, w, b: TF.layer_norm(x, ns, w, b),
                        xa, (w, b), rng, rtol=1e-12 if dtype == np.float64 else 2e-5)
    assert norm_plans == []


@needs_onednn
def test_layer_norm_off_switch_keeps_numpy(norm_plans, monkeypatch):
    monkeypatch.setattr(am.backends.mkldnn, "enabled", False)
    rng = np.random.default_rng(22)
    xa = rng.standard_normal((256, 512)).astype(np.float32)
    w, b = _affine(rng, (512,), "wb", np.float32)
    _grads_vs_torch(lambda x, w, b: F.layer_norm(x, (512,), w, b), lambda x, w, b: TF.layer_norm(x, (512,), w, b),
                    xa, (w, b), rng, rtol=2e-5)
    assert norm_plans == []


@needs_onednn
def test_layer_norm_non_contiguous_input_through_onednn(norm_plans, no_native):
    rng = np.random.default_rng(23)
    base = rng.standard_normal((512, 256)).astype(np.float32)
    x = am.tensor(base, requires_grad=True)
    xt = x.transpose(0, 1)  # (256, 512), strided
    w = am.tensor(rng.standard_normal(512).astype(np.float32), requires_grad=True)
    tx = torch.tensor(base.astype(np.float64), requires_grad=True)
    tw = torch.tensor(w.detach().numpy().astype(np.float64), requires_grad=True)
    y = F.layer_norm(xt, (512,), w)
    ty = TF.layer_norm(tx.t(), (512,), tw)
    _f32_close(y.detach().numpy(), ty.detach().numpy(), 2e-5)
    g = rng.standard_normal((256, 512)).astype(np.float32)
    y.backward(am.tensor(g))
    ty.backward(torch.tensor(g.astype(np.float64)))
    _f32_close(x.grad.numpy(), tx.grad.numpy(), 2e-5)
    _f32_close(w.grad.numpy(), tw.grad.numpy(), 2e-5)
    assert norm_plans == [("layer", (256, 512))]


@needs_onednn
def test_layer_norm_double_backward_after_onednn_forward(norm_plans, no_native):
    """create_graph=True: the Tensor-op backward runs (recomputing from x), so second
    derivatives match PyTorch's."""
    rng = np.random.default_rng(24)
    xa = rng.standard_normal((128, 384)).astype(np.float32)
    wa = rng.standard_normal(384).astype(np.float32)
    ga = rng.standard_normal((128, 384)).astype(np.float32)
    x, w = am.tensor(xa, requires_grad=True), am.tensor(wa, requires_grad=True)
    tx = torch.tensor(xa.astype(np.float64), requires_grad=True)
    tw = torch.tensor(wa.astype(np.float64), requires_grad=True)
    gx, gw = am.autograd.grad(F.layer_norm(x, (384,), w), (x, w), am.tensor(ga), create_graph=True)
    tgx, tgw = torch.autograd.grad(TF.layer_norm(tx, (384,), tw), (tx, tw), torch.tensor(ga.astype(np.float64)),
                                   create_graph=True)
    _f32_close(gx.detach().numpy(), tgx.detach().numpy(), 2e-5)
    assert norm_plans == [("layer", (128, 384))]
    v = rng.standard_normal((128, 384)).astype(np.float32)
    hx, hw = am.autograd.grad((gx * am.tensor(v)).sum() + gw.sum(), (x, w))
    thx, thw = torch.autograd.grad((tgx * torch.tensor(v.astype(np.float64))).sum() + tgw.sum(), (tx, tw))
    _f32_close(hx.numpy(), thx.numpy(), 5e-5)
    _f32_close(hw.numpy(), thw.numpy(), 5e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(32, 16, 8, 8), (64, 12), (4, 3, 5, 6, 7)], ids=str)
def test_batch_norm_train_grads_and_running_stats_match_torch(shape, dtype, norm_plans):
    rng = np.random.default_rng(25)
    xa = (1.5 + rng.standard_normal(shape)).astype(dtype)
    c = shape[1]
    w, b = _affine(rng, (c,), "wb", dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype) + 0.5
    arm, arv = am.tensor(rm.copy()), am.tensor(rv.copy())
    trm, trv = torch.tensor(rm.astype(np.float64)), torch.tensor(rv.astype(np.float64))
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    _grads_vs_torch(lambda x, w, b: F.batch_norm(x, arm, arv, w, b, True, 0.3, 1e-4),
                    lambda x, w, b: TF.batch_norm(x, trm, trv, w, b, True, 0.3, 1e-4), xa, (w, b), rng, rtol)
    _f32_close(arm.numpy(), trm.numpy(), rtol)
    _f32_close(arv.numpy(), trv.numpy(), rtol)  # unbiased variance, momentum 0.3
    # eval: the running statistics replace the batch ones
    _grads_vs_torch(lambda x, w, b: F.batch_norm(x, arm, arv, w, b, False),
                    lambda x, w, b: TF.batch_norm(x, trm, trv, w, b, False), xa, (w, b), rng, rtol)
    assert norm_plans == []  # batch norm stays on NumPy (oneDNN's was slower, see normalization.py)


@pytest.mark.parametrize("affine", ["wb", "w", "none"])
def test_batch_norm_weight_only_and_no_affine(affine):
    rng = np.random.default_rng(26)
    xa = rng.standard_normal((8, 5, 6, 6))
    w, b = _affine(rng, (5,), affine, np.float64)
    _grads_vs_torch(lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
                    lambda x, w, b: TF.batch_norm(x, None, None, w, b, True), xa, (w, b), rng, 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_instance_and_group_norm_match_torch(dtype):
    rng = np.random.default_rng(27)
    xa = rng.standard_normal((4, 6, 9, 10)).astype(dtype)
    w, b = _affine(rng, (6,), "wb", dtype)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    _grads_vs_torch(lambda x, w, b: F.instance_norm(x, None, None, w, b),
                    lambda x, w, b: TF.instance_norm(x, None, None, w, b), xa, (w, b), rng, rtol)
    _grads_vs_torch(lambda x, w, b: F.group_norm(x, 3, w, b), lambda x, w, b: TF.group_norm(x, 3, w, b),
                    xa, (w, b), rng, rtol)


@pytest.mark.parametrize("fn", [
    lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
    lambda x, w, b: F.instance_norm(x, None, None, w, b),
    lambda x, w, b: F.group_norm(x, 2, w, b),
], ids=["batch", "instance", "group"])
def test_norm_double_backward_gradgradcheck(fn):
    rng = np.random.default_rng(28)
    inputs = tuple(am.tensor(a, requires_grad=True) for a in (rng.standard_normal((3, 4, 5)),
                                                              rng.standard_normal(4), rng.standard_normal(4)))
    assert am.autograd.gradcheck(fn, inputs)
    assert am.autograd.gradgradcheck(fn, inputs)


def test_layer_norm_without_the_library_runs_numpy_and_notes_once():
    code = """
import warnings, numpy as np, torch, avila_ml as am
from avila_ml.nn import functional as F
x = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    for _ in range(3):
        t = am.tensor(x, requires_grad=True)
        F.layer_norm(t, (512,)).sum().backward()
ref = torch.nn.functional.layer_norm(torch.tensor(x, dtype=torch.float64), (512,)).numpy()
err = np.abs(F.layer_norm(am.tensor(x), (512,)).numpy() - ref).max()
print(err < 1e-5, sum("oneDNN" in str(r.message) for r in rec), am.cpu_accel.is_available())
"""
    # (the compiled kernels off too: with them, rows of 512 values never consult oneDNN)
    r = _python(code, AVILA_ML_DNNL_LIBRARY="/nonexistent/libdnnl.so.3", AVILA_ML_NATIVE_KERNELS="0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "True 1 False", r.stdout


@needs_onednn
def test_norm_plan_cache_is_bounded_lru(monkeypatch):
    accel_norm.clear_cache()
    monkeypatch.setattr(accel_norm, "CACHE_SIZE", 2)
    p1 = accel_norm.plan("layer", (4, 8), 1e-5, True, True)
    accel_norm.plan("layer", (4, 16), 1e-5, True, True)
    assert accel_norm.plan("layer", (4, 8), 1e-5, True, True) is p1  # a hit moves it to the end
    accel_norm.plan("layer", (4, 32), 1e-5, True, True)  # evicts (4, 16)
    assert accel_norm.cache_info()["size"] == 2
    assert accel_norm.plan("layer", (4, 8), 1e-5, True, True) is p1
    accel_norm.clear_cache()


@needs_onednn
def test_norm_boundary_refuses_bad_buffers():
    p = accel_norm.plan("layer", (4, 8), 1e-5, True, False)
    x = np.ones((4, 8), np.float32)
    w = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="dtype float32"):
        p.forward(x.astype(np.float64), w)
    with pytest.raises(ValueError, match="C-contiguous"):
        p.forward(np.ones((8, 4), np.float32).T, w)
    with pytest.raises(ValueError, match="bytes"):
        p.forward(np.ones((4, 9), np.float32), w)
    with pytest.raises(TypeError, match="scale"):
        p.forward(x, None)
    y, mean, var = p.forward(np.arange(32, dtype=np.float32).reshape(4, 8), w)
    np.testing.assert_allclose(mean, np.arange(32).reshape(4, 8).mean(1), rtol=1e-6)
    np.testing.assert_allclose(var, np.full(4, np.var(np.arange(8))), rtol=1e-5)


@pytest.mark.parametrize("row", [MAX_ROWS[2], MAX_ROWS[3], MAX_ROWS[4], MAX_ROWS[6]], ids=lambda r: r[3])
def test_max_pool_windows_of_only_minus_inf_point_inside_the_input(row):
    """-inf inputs tie with the -inf padding: PyTorch points such a window at its first input
    position, never into the padding (and so does its gradient)."""
    d, shape, kw, _ = row
    ours, ref = _max_fn(d)
    rng = np.random.default_rng(14)
    xa = rng.standard_normal(shape)
    xa[rng.random(shape) < 0.6] = -np.inf
    x = am.tensor(xa, requires_grad=True)
    tx = torch.tensor(xa, requires_grad=True)
    y, idx = ours(x, return_indices=True, **kw)
    ty, tidx = ref(tx, return_indices=True, **kw)
    assert (ty.detach().numpy() == -np.inf).any()
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g))
    ty.backward(torch.tensor(g))
    _f32_close(x.grad.numpy(), tx.grad.numpy(), rtol=1e-14)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_split_over_channels_matches_torch(monkeypatch, affine, dtype):
    """Batch norm's channels shared among the CPU threads (forced here for a small input, uneven
    slices): outputs, running statistics and all gradients equal PyTorch's."""
    from avila_ml.cpu_accel import _native
    from avila_ml.ops import _cpu_threads, normalization
    if _cpu_threads.controller() is None or _cpu_threads.blas_threads() < 2:
        pytest.skip("one BLAS thread: the channels are not split")
    monkeypatch.setattr(_native, "ENABLED", False)  # the NumPy passes (tests/test_native_kernels.py: the kernel)
    monkeypatch.setattr(normalization, "_CHANNEL_SPLIT_MIN", 0)
    monkeypatch.setattr(normalization, "_CENTRED_MIN", 0)
    rng = np.random.default_rng(15)
    xa = rng.standard_normal((4, 5, 6, 7)) * 3 + 1
    ga = rng.standard_normal(xa.shape)
    assert len(_cpu_threads.batch_slices(5, xa.size, 0)) > 1
    ran = []
    real = _cpu_threads.over_batch
    monkeypatch.setattr(_cpu_threads, "over_batch",
                        lambda fn, n, size, m=1 << 18: ran.append(len(_cpu_threads.batch_slices(n, size, m)))
                        or real(fn, n, size, m))
    m = am.nn.BatchNorm2d(5, affine=affine).to(dtype=getattr(am, np.dtype(dtype).name))
    t = torch.nn.BatchNorm2d(5, affine=affine).to(getattr(torch, np.dtype(dtype).name))
    if affine:
        w, b = rng.standard_normal(5), rng.standard_normal(5)
        with am.no_grad():
            m.weight.copy_(am.tensor(w.astype(dtype)))
            m.bias.copy_(am.tensor(b.astype(dtype)))
        with torch.no_grad():
            t.weight.copy_(torch.tensor(w))
            t.bias.copy_(torch.tensor(b))
    x = am.tensor(xa.astype(dtype), requires_grad=True)
    tx = torch.tensor(xa.astype(dtype), requires_grad=True)
    y, ty = m(x), t(tx)
    y.backward(am.tensor(ga.astype(dtype)))
    ty.backward(torch.tensor(ga.astype(dtype)))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(m.running_mean.numpy(), t.running_mean.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(m.running_var.numpy(), t.running_var.numpy(), rtol=tol, atol=tol)
    if affine:
        np.testing.assert_allclose(m.weight.grad.numpy(), t.weight.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(m.bias.grad.numpy(), t.bias.grad.numpy(), rtol=tol, atol=tol)
    assert len(ran) == 2 and min(ran) > 1  # the centred forward and backward, both split
