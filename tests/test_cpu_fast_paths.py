"""Issue 17 (CPU speed): host fast paths of ReLU, amax/amin and batch norm, and the per-op
helpers behind them. Every fast path is compared with PyTorch (float64 where it matters) and,
where it replaces a formula, bitwise with that formula; the inputs include NaN, infinities,
signed zeros and ties, which send some of them back to the general path.
"""
import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.ops import _scalar_rows

ROW = _scalar_rows._ROW


def _rng(seed=0):
    return np.random.default_rng(seed)


def _specials(n, dtype, seed=0):
    x = _rng(seed).standard_normal(n).astype(dtype)
    x[::97] = np.nan
    x[1::101] = -0.0
    x[2::103] = 0.0
    x[3::107] = np.inf
    x[4::109] = -np.inf
    x[5::113] = -np.float32(np.nan)  # a NaN with the sign bit set (what x86 makes of 0 * inf)
    return x


# ---------------------------------------------------------------------------- scalar rows
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2 * ROW - 1, 2 * ROW, 3 * ROW + 7, 5 * ROW])
@pytest.mark.parametrize("ufunc,value", [(np.maximum, 0.0), (np.minimum, 0.0), (np.maximum, -1.5)])
def test_scalar_ufunc_is_bitwise_the_scalar_call(dtype, n, ufunc, value):
    x = _specials(n, dtype)
    v = dtype(value)
    got = _scalar_rows.scalar_ufunc(ufunc, x, v, np.empty_like(x))
    want = ufunc(x, v)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    # 2-d, and a non-contiguous input (the plain call)
    x2 = x[: (n // 7) * 7].reshape(-1, 7)
    out = np.empty_like(x2)
    assert _scalar_rows.scalar_ufunc(ufunc, x2, v, out) is out
    np.testing.assert_array_equal(out.view(np.uint8), ufunc(x2, v).view(np.uint8))
    xs = x[::2]
    np.testing.assert_array_equal(_scalar_rows.scalar_ufunc(ufunc, xs, v, np.empty_like(xs)).view(np.uint8),
                                  ufunc(xs, v).view(np.uint8))


# ----------------------------------------------------------------------------------- ReLU
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 2 * ROW + 5), (5, 7, 3 * ROW // 7)])
def test_relu_row_forward_and_backward_match_torch(dtype, shape):
    """Arrays long enough for the row loop, below the thread split: values (NaN, signed zeros,
    infinities) and the gradient equal PyTorch's (an inf gradient where the output is 0 gives 0)."""
    n = int(np.prod(shape))
    x = _specials(n, dtype).reshape(shape)
    g = _rng(1).standard_normal(shape).astype(dtype)
    g.reshape(-1)[6::127] = np.inf
    t = am.tensor(x, requires_grad=True)
    y = am.nn.functional.relu(t)
    y.backward(am.tensor(g))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(tx)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy())  # NaN == NaN, -0 == 0
    np.testing.assert_array_equal(t.grad.numpy(), tx.grad.numpy())


# ---------------------------------------------------------------------------- amax / amin
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ["distinct", "tie", "nan", "keepdim"])
@pytest.mark.parametrize("op", ["amax", "amin"])
def test_amax_backward_single_maximum_path_and_general_path_match_torch(dtype, case, op, monkeypatch):
    """Without the compiled kernel (tests/test_native_kernels.py has it), distinct values take
    the one-maximum path (no count division); a tie or a NaN slice takes the general one.
    Gradients against PyTorch in float64."""
    from avila_ml.cpu_accel import _native
    monkeypatch.setattr(_native, "ENABLED", False)
    shape = (4, 6, 9, 11)
    x = _rng(2).permutation(np.prod(shape)).reshape(shape).astype(dtype) / 7
    if case == "tie":
        x[1, 2, 3, 4] = x[1, 2, 5, 6] = (x[1, 2].max() if op == "amax" else x[1, 2].min())
    if case == "nan":
        x[2, 3, 0, 1] = np.nan
    keep = case == "keepdim"
    g = _rng(3).standard_normal((4, 6, 1, 1) if keep else (4, 6)).astype(dtype)
    t = am.tensor(x, requires_grad=True)
    y = getattr(am, op)(t, dim=(2, 3), keepdim=keep)
    from avila_ml.ops import reduction
    taken = []
    with pytest.MonkeyPatch.context() as mp:
        real = reduction._single_maxima
        mp.setattr(reduction, "_single_maxima", lambda *a, **k: taken.append(real(*a, **k)) or taken[-1])
        y.backward(am.tensor(g))
    assert taken == [case in ("distinct", "keepdim")]  # which path ran
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ty = getattr(torch, op)(tx, dim=(2, 3), keepdim=keep)
    ty.backward(torch.tensor(g.astype(np.float64)))
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy().astype(dtype))
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-6, atol=0, equal_nan=True)


def test_amax_double_backward_keeps_the_graph():
    x = am.tensor(_rng(4).standard_normal((3, 5, 4)), requires_grad=True)
    assert am.autograd.gradcheck(lambda a: am.amax(a, dim=(1, 2)) ** 2, (x,))
    assert am.autograd.gradgradcheck(lambda a: am.amax(a, dim=(1, 2)) ** 2, (x,))


# ------------------------------------------------------------------------------ batch norm
@pytest.mark.parametrize("shape", [(8, 16, 24, 24), (4, 8, 6, 20, 20), (2, 4, 9000), (64, 128, 3, 3)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("path", ["numpy", "numpy-split", "native"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_centred_path_matches_torch(monkeypatch, shape, affine, onednn, path, dtype):
    """float32 / float64 batch norm of >= 2^16 elements runs the compiled kernel
    (``cpu_accel/_native_batchnorm.py``, ``path="native"``) or, without it, keeps x - mean and
    runs its passes in NumPy over channel slices (oneDNN on or off: no oneDNN chain runs, the
    per-channel chains measured slower): output, running statistics and all gradients against
    PyTorch in float64 (S > 8192 and S < 128: einsum, not dot products; S = 9: coefficients
    spread over few positions)."""
    from avila_ml.cpu_accel import _native
    from avila_ml.ops import normalization as N
    if path == "native" and not _native.available():
        pytest.skip(f"no compiled kernels: {_native.absent_reason()}")
    monkeypatch.setattr(_native, "ENABLED", path == "native")
    monkeypatch.setattr(am.backends.mkldnn, "enabled", onednn)
    if path == "numpy-split":
        monkeypatch.setattr(N, "_CHANNEL_SPLIT_MIN", 0)
    rng = _rng(5)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal(c) + 1).astype(dtype) if affine in ("both", "weight") else None
    b = rng.standard_normal(c).astype(dtype) if affine in ("both", "bias") else None
    t = am.tensor(x, requires_grad=True)
    tw = None if w is None else am.tensor(w, requires_grad=True)
    tb = None if b is None else am.tensor(b, requires_grad=True)
    rm, rv = am.zeros(c, dtype=t.dtype), am.ones(c, dtype=t.dtype)
    from avila_ml.cpu_accel import _chain
    chains = []
    real_run = _chain._Plan.run
    monkeypatch.setattr(_chain._Plan, "run", lambda self, *a: (chains.append(1), real_run(self, *a))[1])
    y = am.nn.functional.batch_norm(t, rm, rv, tw, tb, training=True, momentum=0.3)
    node = y.grad_fn
    if path == "native" and int(np.prod(shape[2:])) >= N._NATIVE_MIN_S:
        assert node.xc is None and node.bn is not None  # the kernel ran (no x - mean kept)
    else:
        assert node.xc is not None and node.xc.dtype == dtype  # the centred path ran
    y.backward(am.tensor(g))
    assert chains == []  # NumPy passes or the kernel only
    assert node.xc is None and node.bn is None  # released with the graph
    assert y.dtype == t.grad.dtype == t.dtype
    d = lambda a: None if a is None else torch.tensor(a.astype(np.float64), requires_grad=True)  # noqa: E731
    rx, rw, rb = d(x), d(w), d(b)
    trm, trv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    ry = torch.nn.functional.batch_norm(rx, trm, trv, rw, rb, training=True, momentum=0.3)
    ry.backward(torch.tensor(g.astype(np.float64)))
    tol = 1e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(y.detach().numpy(), ry.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(rm.numpy(), trm.numpy(), rtol=tol, atol=tol / 10)
    np.testing.assert_allclose(rv.numpy(), trv.numpy(), rtol=tol, atol=tol / 10)
    scale = np.abs(rx.grad.numpy()).max()
    np.testing.assert_allclose(t.grad.numpy(), rx.grad.numpy(), rtol=10 * tol, atol=tol * scale)
    for ours, ref in ((tw, rw), (tb, rb)):
        if ours is not None:
            np.testing.assert_allclose(ours.grad.numpy(), ref.grad.numpy(), rtol=10 * tol,
                                       atol=tol * np.abs(ref.grad.numpy()).max())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("split", [True, False])
def test_batch_norm_centred_path_half_computes_in_float32(monkeypatch, dtype, split):
    """float16 / bfloat16 batch norm takes the centred path in float32 (as PyTorch's CPU kernels
    accumulate in float32) and rounds the output and gradients to the input's dtype: compared
    with PyTorch's float64 result on the same half inputs, within the half rounding of the
    result, and with PyTorch's own half batch norm."""
    from avila_ml.ops import normalization as N
    if split:
        monkeypatch.setattr(N, "_CHANNEL_SPLIT_MIN", 0)
    rng = _rng(8)
    shape, c = (16, 64, 8, 8), 64
    td = getattr(torch, dtype)
    # the inputs rounded to the half dtype once, so both libraries see the same values
    x = torch.tensor(rng.standard_normal(shape) * 2 + 1).to(td)
    g = torch.tensor(rng.standard_normal(shape)).to(td)
    w = torch.tensor(rng.standard_normal(c) + 1).to(td)
    b = torch.tensor(rng.standard_normal(c)).to(td)
    ad = getattr(am, dtype)
    conv = lambda t: am.tensor(t.to(torch.float32).numpy()).to(ad)  # noqa: E731
    ax, aw, ab = (conv(t).requires_grad_() for t in (x, w, b))
    rm, rv = am.zeros(c), am.ones(c)
    y = am.nn.functional.batch_norm(ax, rm, rv, aw, ab, training=True)
    assert y.grad_fn.xc is not None and y.grad_fn.xc.dtype == np.float32
    y.backward(conv(g))
    assert y.dtype == ax.grad.dtype == aw.grad.dtype == ab.grad.dtype == ad
    rx, rw, rb = (t.double().requires_grad_() for t in (x, w, b))
    trm, trv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    ry = torch.nn.functional.batch_norm(rx, trm, trv, rw, rb, training=True)
    ry.backward(g.double())
    eps = 1e-3 if dtype == "float16" else 8e-3  # half an ulp at 1 and a few ulps of the sums
    f32 = lambda t: t.to(am.float32).detach().numpy().astype(np.float64)  # noqa: E731
    np.testing.assert_allclose(f32(y), ry.detach().numpy(), rtol=eps, atol=eps)
    np.testing.assert_allclose(rm.numpy(), trm.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rv.numpy(), trv.numpy(), rtol=1e-5, atol=1e-5)
    for ours, ref in ((ax, rx), (aw, rw), (ab, rb)):
        r = ref.grad.numpy()
        np.testing.assert_allclose(f32(ours.grad), r, rtol=eps, atol=eps * np.abs(r).max())
    # and PyTorch's own half kernel gives the same rounded output up to one rounding step
    th = torch.nn.functional.batch_norm(x, None, None, w, b, training=True)
    np.testing.assert_allclose(f32(y), th.double().numpy(), rtol=2 * eps, atol=2 * eps)


def test_normalize_with_other_weight_layouts_skips_the_channel_paths():
    """The per-channel paths take only the batch-norm layout (weight (1, C, 1, ...)): with the
    batch-norm reduction axes but a weight along the last dim ((1, 1, 256), C = 256 too) the
    general path runs, and matches PyTorch's broadcasting formula in float64."""
    from avila_ml.ops.normalization import Normalize
    rng = _rng(9)
    x = rng.standard_normal((2, 256, 256)).astype(np.float32)
    w = (rng.standard_normal(256) + 1).astype(np.float32)
    tx, tw = am.tensor(x, requires_grad=True), am.tensor(w.reshape(1, 1, 256), requires_grad=True)
    y, mean, var = Normalize.apply(tx, tw, None, (0, 2), 1e-5)
    assert y.grad_fn.xc is None and y.grad_fn.bn is None  # neither the centred path nor the kernel
    y.sum().backward()
    rx = torch.tensor(x.astype(np.float64), requires_grad=True)
    rw = torch.tensor(w.astype(np.float64), requires_grad=True)
    ry = (rx - rx.mean((0, 2), keepdim=True)) / torch.sqrt(rx.var((0, 2), unbiased=False, keepdim=True) + 1e-5) * rw
    ry.sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), ry.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tw.grad.numpy().reshape(256), rw.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(tx.grad.numpy(), rx.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_batch_norm_centred_path_views_and_double_backward():
    """A non-contiguous input (channels-last data permuted to NCHW) takes the centred path;
    second derivatives (create_graph) keep the Tensor-op formula: torch.autograd.grad of the
    gradient's norm matches PyTorch."""
    rng = _rng(6)
    base = rng.standard_normal((8, 24, 24, 16)).astype(np.float32)
    x = am.tensor(base, requires_grad=True)
    w = am.tensor((rng.standard_normal(16) + 1).astype(np.float32), requires_grad=True)
    y = am.nn.functional.batch_norm(x.permute(0, 3, 1, 2), None, None, w, None, training=True)
    assert y.grad_fn.xc is not None
    (gx,) = am.autograd.grad((y * y * y).sum(), x, create_graph=True)
    (ggw,) = am.autograd.grad((gx * gx).sum(), w)
    rx = torch.tensor(base.astype(np.float64), requires_grad=True)
    rw = torch.tensor(w.detach().numpy().astype(np.float64), requires_grad=True)
    ry = torch.nn.functional.batch_norm(rx.permute(0, 3, 1, 2), None, None, rw, None, training=True)
    (rgx,) = torch.autograd.grad((ry ** 3).sum(), rx, create_graph=True)
    (rggw,) = torch.autograd.grad((rgx * rgx).sum(), rw)
    np.testing.assert_allclose(gx.detach().numpy(), rgx.detach().numpy(), rtol=1e-3,
                               atol=1e-4 * np.abs(rgx.detach().numpy()).max())
    np.testing.assert_allclose(ggw.numpy(), rggw.numpy(), rtol=2e-3, atol=1e-4 * np.abs(rggw.numpy()).max())


# ------------------------------------------------------------- ReLU / LeakyReLU gradient chains
@pytest.mark.parametrize("slope", [None, 0.01, 0.2, 1.0])  # None: relu
@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("onednn", [True, False])
def test_relu_and_leaky_relu_gradients_match_torch_bitwise(monkeypatch, slope, specials, onednn):
    """float32 gradients of >= 2^15 elements (ReLU and LeakyReLU: NumPy passes over the
    threads, measured faster than a oneDNN chain; an inf gradient where ReLU's output is 0
    takes the NumPy select):
    equal to PyTorch's, bit for bit (signed zeros compared as values: PyTorch's own select
    gives +0 where ours may give -0 = 0 * negative g)."""
    from avila_ml.cpu_accel import _chain
    monkeypatch.setattr(am.backends.mkldnn, "enabled", onednn)
    ran = []
    real = _chain._Plan.run
    monkeypatch.setattr(_chain._Plan, "run", lambda self, *a: (ran.append(1), real(self, *a))[1])
    shape = (7, 33, 300)
    x = _specials(int(np.prod(shape)), np.float32, seed=7).reshape(shape) if specials else \
        _rng(7).standard_normal(shape).astype(np.float32)
    g = _rng(8).standard_normal(shape).astype(np.float32)
    if specials:
        g.reshape(-1)[::211] = np.inf
        g.reshape(-1)[1::223] = np.nan
    t = am.tensor(x, requires_grad=True)
    y = am.nn.functional.relu(t) if slope is None else am.nn.functional.leaky_relu(t, slope)
    y.backward(am.tensor(g))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(tx) if slope is None else torch.nn.functional.leaky_relu(tx, slope)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(t.grad.numpy(), tx.grad.numpy())
    assert not ran  # neither gradient runs a oneDNN chain


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 1.0])
def test_leaky_relu_gradient_split_over_threads_matches_torch_bitwise(monkeypatch, slope, native):
    """LeakyReLU's gradient of an array large enough to be split over the CPU threads (parts
    of the leading dim, uneven, for the NumPy passes; OpenMP parts inside the compiled kernel
    with ``native``) equals PyTorch's bit for bit, NaN/inf inputs and gradients included, and
    the NumPy parts cover every element."""
    from avila_ml.cpu_accel import _native
    from avila_ml.ops import activation
    if native and not _native.available():
        pytest.skip(f"no compiled kernels: {_native.absent_reason()}")
    monkeypatch.setattr(_native, "ENABLED", native)
    parts = []
    real = activation.over_batch
    monkeypatch.setattr(activation, "over_batch", lambda fn, n, size, least: parts.append(n) or real(fn, n, size, least))
    shape = (9, 129, 257)  # > activation._SPLIT_MIN elements
    x = _specials(int(np.prod(shape)), np.float32, seed=9).reshape(shape)
    g = _rng(10).standard_normal(shape).astype(np.float32)
    g.reshape(-1)[::307] = np.inf
    g.reshape(-1)[5::311] = np.nan
    before = am.get_num_threads()
    am.set_num_threads(2)
    try:
        t = am.tensor(x, requires_grad=True)
        am.nn.functional.leaky_relu(t, slope).backward(am.tensor(g))
    finally:
        am.set_num_threads(before)
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.leaky_relu(tx, slope).backward(torch.tensor(g))
    np.testing.assert_array_equal(t.grad.numpy(), tx.grad.numpy())
    assert parts == ([] if native else [9]) and x.size >= activation._SPLIT_MIN
