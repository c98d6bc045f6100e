"""Pooling and interpolation: 1-3 d against PyTorch (forward, indices, gradients); 4-d against
references written here (PyTorch's 3-d op applied per frame and combined over time, or plain
NumPy loops); gradcheck/gradgradcheck; the layers; bad inputs."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.nn import functional as F


def _pair(arr, device):
    return am.tensor(arr, device=device, requires_grad=True), torch.tensor(arr, requires_grad=True)


def _check(y, ty, x, tx, rng, device, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(y.detach().cpu().numpy(), ty.detach().numpy(), rtol=rtol, atol=atol)
    g = rng.standard_normal(tuple(ty.shape)).astype(y.detach().cpu().numpy().dtype)
    y.backward(am.tensor(g, device=device))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(x.grad.cpu().numpy(), tx.grad.numpy(), rtol=max(rtol, 1e-6) if g.dtype == np.float32 else rtol,
                               atol=max(atol, 1e-5) if g.dtype == np.float32 else atol)


# (d, shape, kwargs)
MAX_TABLE = [
    (1, (2, 3, 9), dict(kernel_size=3, stride=2, padding=1)),
    (1, (3, 8), dict(kernel_size=2, dilation=3, ceil_mode=True)),
    (2, (2, 2, 7, 6), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1))),
    (2, (1, 3, 8, 7), dict(kernel_size=3, stride=2, ceil_mode=True, dilation=(1, 2))),
    (2, (2, 5, 5), dict(kernel_size=2)),
    (3, (1, 2, 5, 6, 7), dict(kernel_size=(2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0))),
    (3, (2, 1, 6, 5, 4), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("row", MAX_TABLE, ids=lambda r: f"{r[0]}d-{r[2]}")
def test_max_pool_matches_torch(row, ties, device):
    d, shape, kw = row
    rng = np.random.default_rng(0)
    xa = rng.standard_normal(shape)
    if ties:  # many equal values: the gradient must go to the first maximum, as in PyTorch
        xa = np.round(xa)
    x, tx = _pair(xa, device)
    y, idx = getattr(F, f"max_pool{d}d")(x, return_indices=True, **kw)
    ty, tidx = getattr(TF, f"max_pool{d}d")(tx, return_indices=True, **kw)
    np.testing.assert_array_equal(idx.cpu().numpy(), tidx.numpy())
    assert idx.dtype == am.int64
    _check(y, ty, x, tx, rng, device)


AVG_TABLE = [
    (1, (2, 3, 9), dict(kernel_size=3, stride=2, padding=1)),
    (1, (2, 3, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    (2, (2, 2, 7, 6), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), count_include_pad=False)),
    (2, (1, 3, 8, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (2, (1, 2, 6, 6), dict(kernel_size=2, divisor_override=3)),
    (3, (1, 2, 5, 6, 7), dict(kernel_size=(2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0))),
    (3, (2, 1, 6, 5, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
]


@pytest.mark.parametrize("row", AVG_TABLE, ids=lambda r: f"{r[0]}d-{r[2]}")
def test_avg_pool_matches_torch(row, device):
    d, shape, kw = row
    rng = np.random.default_rng(1)
    x, tx = _pair(rng.standard_normal(shape), device)
    _check(getattr(F, f"avg_pool{d}d")(x, **kw), getattr(TF, f"avg_pool{d}d")(tx, **kw), x, tx, rng, device)


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("d,shape,out", [
    (1, (2, 3, 10), 4), (1, (3, 7), 1), (1, (1, 2, 5), 7),
    (2, (2, 2, 9, 7), (4, 3)), (2, (1, 2, 6, 6), 1), (2, (1, 1, 5, 8), (None, 3)),
    (3, (1, 2, 7, 5, 6), (3, 2, 4)), (3, (2, 1, 4, 4, 4), 1),
])
def test_adaptive_pool_matches_torch(kind, d, shape, out, device):
    rng = np.random.default_rng(2)
    xa = np.round(rng.standard_normal(shape) * 2)  # ties included
    x, tx = _pair(xa, device)
    if kind == "max":
        y, i = getattr(F, f"adaptive_max_pool{d}d")(x, out, return_indices=True)
        ty, ti = getattr(TF, f"adaptive_max_pool{d}d")(tx, out, return_indices=True)
        np.testing.assert_array_equal(i.cpu().numpy(), ti.numpy())
    else:
        y, ty = getattr(F, f"adaptive_avg_pool{d}d")(x, out), getattr(TF, f"adaptive_avg_pool{d}d")(tx, out)
    _check(y, ty, x, tx, rng, device)


INTERP_TABLE = [
    ((2, 3, 5), dict(scale_factor=2, mode="nearest")),
    ((2, 3, 7), dict(size=4, mode="nearest")),
    ((1, 2, 5, 4), dict(size=(7, 3), mode="nearest-exact")),
    ((1, 2, 5, 6), dict(scale_factor=(1.5, 0.5), mode="nearest")),
    ((2, 3, 6), dict(size=11, mode="linear", align_corners=False)),
    ((2, 3, 6), dict(scale_factor=2.5, mode="linear", align_corners=True)),
    ((1, 2, 4, 5), dict(size=(7, 3), mode="bilinear")),
    ((1, 2, 4, 5), dict(scale_factor=(2, 1.7), mode="bilinear", align_corners=True)),
    ((1, 2, 6, 4), dict(scale_factor=0.5, mode="bilinear", recompute_scale_factor=True)),
    ((1, 1, 3, 4, 5), dict(size=(5, 2, 8), mode="trilinear")),
    ((1, 2, 3, 4, 3), dict(scale_factor=2, mode="trilinear", align_corners=True)),
    ((1, 2, 6, 5, 4), dict(size=(3, 2, 2), mode="area")),
    ((1, 2, 3, 4, 3), dict(scale_factor=(2, 1, 3), mode="nearest")),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("row", INTERP_TABLE, ids=lambda r: str(r[1]))
def test_interpolate_matches_torch(row, dtype, device):
    shape, kw = row
    rng = np.random.default_rng(3)
    x, tx = _pair(rng.standard_normal(shape).astype(dtype), device)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    _check(F.interpolate(x, **kw), TF.interpolate(tx, **kw), x, tx, rng, device, **tol)


# -------------------------------------------------------------------------- 4-d references
def _ref_max_pool4d(tx, k, s, p):
    """max over the time window of PyTorch's max_pool3d of each (-inf padded) frame."""
    xpad = TF.pad(tx, (0, 0, 0, 0, 0, 0, p[0], p[0]), value=-float("inf"))
    T = (xpad.shape[2] - k[0]) // s[0] + 1
    frames = []
    for t in range(T):
        pooled = [TF.max_pool3d(xpad[:, :, t * s[0] + j], k[1:], s[1:], p[1:]) for j in range(k[0])]
        frames.append(torch.stack(pooled, 0).amax(0))
    return torch.stack(frames, 2)


def _ref_avg_pool4d(tx, k, s, p):
    """count_include_pad average: the mean over the time window of avg_pool3d of each zero-padded frame."""
    xpad = TF.pad(tx, (0, 0, 0, 0, 0, 0, p[0], p[0]))
    T = (xpad.shape[2] - k[0]) // s[0] + 1
    frames = [sum(TF.avg_pool3d(xpad[:, :, t * s[0] + j], k[1:], s[1:], p[1:]) for j in range(k[0])) / k[0]
              for t in range(T)]
    return torch.stack(frames, 2)


def test_max_pool4d_matches_reference(device):
    rng = np.random.default_rng(4)
    x, tx = _pair(rng.standard_normal((2, 2, 5, 6, 4, 5)), device)  # no ties: argmax unique
    k, s, p = (3, 2, 2, 3), (2, 2, 1, 2), (1, 0, 1, 1)
    _check(F.max_pool4d(x, k, s, p), _ref_max_pool4d(tx, k, s, p), x, tx, rng, device)


def test_max_pool4d_indices_are_flat_input_positions(device):
    rng = np.random.default_rng(5)
    xa = rng.standard_normal((1, 2, 4, 4, 4, 4))
    y, idx = F.max_pool4d(am.tensor(xa, device=device), 2, return_indices=True)
    flat = xa.reshape(1, 2, -1)
    np.testing.assert_array_equal(np.take_along_axis(flat, idx.cpu().numpy().reshape(1, 2, -1), 2).reshape(y.shape),
                                  y.cpu().numpy())
    blocks = xa.reshape(1, 2, 2, 2, 2, 2, 2, 2, 2, 2).transpose(0, 1, 2, 4, 6, 8, 3, 5, 7, 9).reshape(1, 2, 2, 2, 2, 2, 16)
    np.testing.assert_array_equal(blocks.max(-1), y.cpu().numpy())


def test_avg_pool4d_matches_reference(device):
    rng = np.random.default_rng(6)
    x, tx = _pair(rng.standard_normal((2, 2, 6, 5, 4, 5)), device)
    k, s, p = (3, 2, 2, 3), (2, 2, 1, 2), (1, 1, 0, 1)
    _check(F.avg_pool4d(x, k, s, p), _ref_avg_pool4d(tx, k, s, p), x, tx, rng, device)


def _windows(S, o):
    return [(i * S // o, -(-(i + 1) * S // o)) for i in range(o)]


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("out", [(2, 3, 1, 2), 1, (3, None, 2, 5)])
def test_adaptive_pool4d_matches_numpy_loops(kind, out, device):
    rng = np.random.default_rng(7)
    xa = rng.standard_normal((2, 2, 5, 4, 3, 6))
    outs = (out,) * 4 if isinstance(out, int) else tuple(S if o is None else o for o, S in zip(out, xa.shape[2:]))
    ref = np.empty(xa.shape[:2] + outs)
    grad_ref = np.zeros_like(xa)
    g = rng.standard_normal(ref.shape)
    for i in itertools.product(*[range(o) for o in outs]):
        win = tuple(slice(*_windows(S, o)[j]) for S, o, j in zip(xa.shape[2:], outs, i))
        block = xa[(slice(None), slice(None)) + win]
        if kind == "avg":
            ref[(slice(None), slice(None)) + i] = block.mean(axis=(2, 3, 4, 5))
            grad_ref[(slice(None), slice(None)) + win] += (g[(slice(None), slice(None)) + i]
                                                           / block[0, 0].size)[..., None, None, None, None]
        else:
            ref[(slice(None), slice(None)) + i] = block.max(axis=(2, 3, 4, 5))
            flat = block.reshape(2, 2, -1).argmax(-1)
            for n in range(2):
                for c in range(2):
                    pos = np.unravel_index(flat[n, c], block.shape[2:])
                    grad_ref[(n, c) + tuple(w.start + q for w, q in zip(win, pos))] += g[(n, c) + i]
    x = am.tensor(xa, device=device, requires_grad=True)
    y = getattr(F, f"adaptive_{kind}_pool4d")(x, out)
    np.testing.assert_allclose(y.detach().cpu().numpy(), ref, rtol=1e-12, atol=1e-12)
    y.backward(am.tensor(g, device=device))
    np.testing.assert_allclose(x.grad.cpu().numpy(), grad_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,kw", [("quadrilinear", dict(size=(4, 5, 3, 6))),
                                     ("quadrilinear", dict(scale_factor=2, align_corners=True)),
                                     ("multilinear", dict(scale_factor=(1.5, 2, 0.5, 3))),
                                     ("nearest", dict(size=(5, 2, 7, 3)))])
def test_interpolate4d_matches_separable_reference(mode, kw, device):
    """4-d reference: PyTorch's 3-d interpolation of each time frame, then its 1-d
    interpolation along time (both separable, so the composition is exact)."""
    rng = np.random.default_rng(8)
    x, tx = _pair(rng.standard_normal((2, 2, 3, 4, 3, 2)), device)
    y = F.interpolate(x, mode=mode, **kw)
    m3, m1 = ("nearest", "nearest") if mode == "nearest" else ("trilinear", "linear")
    size, sf = kw.get("size"), kw.get("scale_factor")
    sf4 = (sf,) * 4 if isinstance(sf, (int, float)) else sf
    extra = {} if mode == "nearest" else dict(align_corners=kw.get("align_corners", False))
    N, C, T = tx.shape[:3]
    frames = tx.permute(0, 2, 1, 3, 4, 5).reshape(N * T, C, *tx.shape[3:])
    z = TF.interpolate(frames, size=size[1:] if size else None, scale_factor=sf4[1:] if sf else None, mode=m3, **extra)
    z = z.reshape(N, T, C, -1).permute(0, 2, 3, 1)  # (N, C, XYZ, T)
    zs = z.shape
    z = TF.interpolate(z.reshape(N, C * zs[2], T), size=size[0] if size else None,
                       scale_factor=sf4[0] if sf else None, mode=m1, **extra)
    ty = z.reshape(N, C, zs[2], -1).permute(0, 1, 3, 2).reshape(y.shape)
    _check(y, ty, x, tx, rng, device)


# -------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("fn", [
    lambda x: F.max_pool2d(x, 2, 1, 1),
    lambda x: F.avg_pool3d(x, 2, 1, 1, count_include_pad=False, ceil_mode=True),
    lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
    lambda x: F.adaptive_max_pool1d(x.reshape(1, 2, -1), 3),
    lambda x: F.interpolate(x.reshape(1, 2, -1, 2), scale_factor=(1.5, 2), mode="bilinear"),
], ids=["max", "avg", "adaptive_avg", "adaptive_max", "bilinear"])
def test_pooling_gradcheck_gradgradcheck(fn, device):
    x = am.randn(1, 2, 3, 4, dtype=am.float64, device=device, requires_grad=True)
    if "avg_pool3d" in repr(fn.__code__.co_names):
        x = am.randn(1, 2, 3, 3, 2, dtype=am.float64, device=device, requires_grad=True)
    assert am.autograd.gradcheck(fn, (x,))
    assert am.autograd.gradgradcheck(fn, (x,))


# -------------------------------------------------------------------------- layers and errors
@pytest.mark.parametrize("d", [1, 2, 3])
def test_layers_match_torch(d, device):
    rng = np.random.default_rng(9)
    xa = rng.standard_normal((2, 3) + (8,) * d)
    pairs = [
        (getattr(am.nn, f"MaxPool{d}d")(3, 2, 1, ceil_mode=True), getattr(torch.nn, f"MaxPool{d}d")(3, 2, 1, ceil_mode=True)),
        (getattr(am.nn, f"AvgPool{d}d")(2, count_include_pad=False), getattr(torch.nn, f"AvgPool{d}d")(2, count_include_pad=False)),
        (getattr(am.nn, f"AdaptiveAvgPool{d}d")(3), getattr(torch.nn, f"AdaptiveAvgPool{d}d")(3)),
        (getattr(am.nn, f"AdaptiveMaxPool{d}d")(3), getattr(torch.nn, f"AdaptiveMaxPool{d}d")(3)),
        (am.nn.Upsample(scale_factor=2, mode=["linear", "bilinear", "trilinear"][d - 1], align_corners=True),
         torch.nn.Upsample(scale_factor=2, mode=["linear", "bilinear", "trilinear"][d - 1], align_corners=True)),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
        np.testing.assert_allclose(ours(am.tensor(xa, device=device)).cpu().numpy(),
                                   theirs(torch.tensor(xa)).numpy(), rtol=1e-12, atol=1e-12)


def test_4d_layers():
    x = am.randn(2, 3, 8, 6, 6, 4)
    assert am.nn.MaxPool4d(2)(x).shape == (2, 3, 4, 3, 3, 2)
    assert am.nn.AvgPool4d(3, stride=1, padding=1)(x).shape == (2, 3, 8, 6, 6, 4)
    assert am.nn.AdaptiveAvgPool4d(1)(x).shape == (2, 3, 1, 1, 1, 1)
    assert am.nn.AdaptiveMaxPool4d((2, None, 3, 1))(x).shape == (2, 3, 2, 6, 3, 1)
    y, i = am.nn.MaxPool4d(2, return_indices=True)(x)
    assert i.shape == y.shape
    np.testing.assert_allclose(am.nn.AdaptiveAvgPool4d(1)(x).numpy()[..., 0, 0, 0, 0],
                               x.numpy().mean(axis=(2, 3, 4, 5)), rtol=1e-5)
    assert am.nn.Upsample(size=(4, 4, 4, 4), mode="quadrilinear")(x[:, :, :2, :2, :2, :2]).shape == (2, 3, 4, 4, 4, 4)


@pytest.mark.parametrize("call,match", [
    (lambda: F.max_pool2d(am.ones(2, 2), 2), r"max_pool2d: expected a 3-d .*4-d.*\(2, 2\)"),
    (lambda: F.max_pool2d(am.ones(1, 1, 4, 4), 2, padding=2), r"max_pool2d: pad should be at most half"),
    (lambda: F.avg_pool1d(am.ones(1, 1, 2), 3), r"avg_pool1d: output size .*too small.*\(1, 1, 2\)"),
    (lambda: F.max_pool4d(am.ones(4, 4, 4), 2), r"max_pool4d: expected a 5-d .*6-d.*\(4, 4, 4\)"),
    (lambda: F.adaptive_avg_pool2d(am.ones(1, 1, 4, 4), (0, 2)), r"adaptive_avg_pool2d: output_size"),
    (lambda: F.interpolate(am.ones(1, 1, 4), size=3, scale_factor=2), r"interpolate: exactly one of size or scale_factor"),
    (lambda: F.interpolate(am.ones(1, 1, 4, 4), size=3, mode="linear"), r"interpolate: mode 'linear' needs a 3-d input"),
    (lambda: F.interpolate(am.ones(1, 1, 4), size=3, mode="bicubic"), r"interpolate: unknown mode"),
    (lambda: F.interpolate(am.ones(1, 1, 4), size=3, align_corners=True), r"align_corners"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        call()


# ---------------------------------------------------------------------------- batch split over threads
@pytest.mark.parametrize("d, shape, kw", MAX_TABLE + [(2, (5, 3, 8, 8), dict(kernel_size=2))],
                         ids=lambda v: str(v))
def test_max_pool_split_over_threads_matches_torch(monkeypatch, d, shape, kw):
    """Max pooling with its batch cut into parts on the CPU threads (forced for these small
    inputs; the cut is uneven where N is not a multiple of the parts): values, indices, ties,
    a NaN window (the exact rescan) and the gradient as PyTorch's, float32 and float64."""
    import avila_ml.ops._cpu_threads as cpu_threads
    import avila_ml.ops.pooling as pooling
    monkeypatch.setattr(pooling, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(cpu_threads, "blas_threads", lambda: 3)
    if cpu_threads.controller() is None:
        pytest.skip("no threadpoolctl: the batch is never split")
    assert len(cpu_threads.batch_slices(shape[0], 1, 0)) == min(shape[0], 3)
    rng = np.random.default_rng(5)
    for dtype in (np.float64, np.float32):
        a = np.round(rng.standard_normal(shape) * 2).astype(dtype)  # rounded: many ties
        if a.ndim == d + 2:
            a[-1, 0].flat[1] = np.nan  # one NaN in the last sample
        x, tx = _pair(a, "cpu")
        y, idx = getattr(F, f"max_pool{d}d")(x, return_indices=True, **kw)
        ty, tidx = getattr(TF, f"max_pool{d}d")(tx, return_indices=True, **kw)
        np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
        _check(y, ty, x, tx, rng, "cpu")
