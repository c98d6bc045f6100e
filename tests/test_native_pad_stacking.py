"""The compiled padding and Conv4d stacking kernels (``kernels/pad.c``, ``kernels/stacking.c``,
issue 17).

Padding: the kernel against the NumPy slab copies (the kernels switched off) and against
PyTorch's ``pad`` and its backward, every non-constant mode, 1-6 dims, float32 and float64,
sizes below and above the threading cut. Stacking: the kernel against its formula written in
NumPy for random geometries (strides, dilations, padding, partial blocks, the plain form), and
Conv4d with the stacked operands built straight in oneDNN's layout against the same convolution
through NumPy copies and oneDNN's reorders -- bitwise, since the convolution sees the same
numbers -- and against PyTorch's conv3d over kernel-time offsets in float64.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.cpu_accel import _dnnl, _native, _native_pad, _native_stacking
from avila_ml.nn import functional as F

needs_kernels = pytest.mark.skipif(not _native.available(), reason=f"no compiled kernels: {_native.absent_reason()}")
needs_onednn = pytest.mark.skipif(not _dnnl.available(), reason="oneDNN not installed")


@pytest.fixture
def kernels_off(monkeypatch):
    """A function that runs ``fn()`` with the compiled kernels switched off."""
    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(_native, "ENABLED", False)
            return fn()
    return run


# ------------------------------------------------------------------------------ padding
PAD_CASES = [  # (shape, torch-style pad widths)
    ((7,), (2, 3)),
    ((3, 5), (1, 2, 2, 0)),
    ((2, 3, 6, 5), (2, 1, 1, 2)),
    ((2, 2, 4, 3, 5), (1, 1, 0, 2, 2, 1)),
    ((2, 3, 4, 6, 6, 6), (1, 1, 1, 1, 1, 1)),          # the Conv4d example's circular borders
    ((1, 2, 3, 4, 3, 4), (1, 2, 2, 1, 1, 1, 2, 0)),    # four padded axes, uneven widths
    ((4, 16, 40, 40), (3, 3, 3, 3)),                    # above the threading cut
]


@needs_kernels
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,pad", PAD_CASES, ids=lambda v: str(v))
def test_border_pad_kernel_matches_numpy_path(shape, pad, mode, dtype, kernels_off):
    """Forward bitwise (a copy); adjoint within rounding (the sums run in another order)."""
    rng = np.random.default_rng(len(shape))
    xa = rng.standard_normal(shape).astype(dtype)
    x = am.tensor(xa, requires_grad=True)
    y = F.pad(x, pad, mode=mode)
    ga = rng.standard_normal(tuple(y.shape)).astype(dtype)
    y.backward(am.tensor(ga))

    def numpy_path():
        xr = am.tensor(xa, requires_grad=True)
        yr = F.pad(xr, pad, mode=mode)
        yr.backward(am.tensor(ga))
        return yr.detach().numpy(), xr.grad.numpy()
    y_ref, g_ref = kernels_off(numpy_path)
    assert np.array_equal(y.detach().numpy(), y_ref)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(x.grad.numpy(), g_ref, rtol=tol, atol=tol)


@needs_kernels
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("shape,pad", [c for c in PAD_CASES if 2 <= len(c[1]) // 2 <= 3 and len(c[0]) == len(c[1]) // 2 + 2],
                         ids=lambda v: str(v))
def test_border_pad_kernel_matches_torch(shape, pad, mode):
    """Against ``torch.nn.functional.pad`` and its backward in float64 (PyTorch pads 1-3
    trailing dims of a batched input in these modes)."""
    rng = np.random.default_rng(7)
    xa = rng.standard_normal(shape)
    x, tx = am.tensor(xa, requires_grad=True), torch.tensor(xa, requires_grad=True)
    y, ty = F.pad(x, pad, mode=mode), TF.pad(tx, pad, mode=mode)
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy())
    ga = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(ga))
    ty.backward(torch.tensor(ga))
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@needs_kernels
def test_border_pad_kernel_declines_what_it_does_not_handle():
    maps = [np.arange(2), np.array([1, 0, 1])]
    assert _native_pad.border_pad(np.ones((2, 2), np.float16), "k", maps) is None         # dtype
    assert _native_pad.border_pad(np.ones((2, 4), np.float32)[:, ::2], "k", maps) is None  # strided
    assert _native_pad.border_pad_adjoint(np.ones((2, 3), np.int64), (2, 2), "k", maps) is None


# ------------------------------------------------------------------------------ stacking
def _rows_reference(x, g):
    """kernels/stacking.c's rows, written out: (frames, channels, R)."""
    C, T, R, P, s, d, lo, real, n0, nn, i0, ni, B, nb = g
    chans = nb if B == 0 else nb * B
    out = np.zeros((nn * ni, chans, R), x.dtype)
    xr = x.reshape(x.shape[0], C, T, R)
    for f in range(nn * ni):
        n, i = n0 + f // ni, i0 + f % ni
        for ch in range(min(real, chans)):
            t = i * s + (ch % P) * d - lo
            if 0 <= t < T:
                out[f, ch] = xr[n, ch // P, t]
    return out


def _blocked(rows, B):
    F_, chans, R = rows.shape
    return rows.reshape(F_, chans // B, B, R).transpose(0, 1, 3, 2).copy()


@needs_kernels
@pytest.mark.parametrize("seed", range(12))
def test_stack_blocked_matches_its_formula(seed):
    rng = np.random.default_rng(seed)
    N, C, T = int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(2, 9))
    rest = tuple(int(v) for v in rng.integers(1, 6, size=int(rng.integers(1, 4))))
    P, s, d = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
    lo = int(rng.integers(0, 3))
    To = max(1, (T + lo - (P - 1) * d - 1) // s + 1)
    n0 = int(rng.integers(0, N))
    nn = int(rng.integers(1, N - n0 + 1))
    i0 = int(rng.integers(0, To))
    ni = int(rng.integers(1, To - i0 + 1))
    real = C * P
    R = int(np.prod(rest))
    x = rng.standard_normal((N, C, T) + rest).astype(np.float32)
    for B in (0, 8, 16):
        nb = real + int(rng.integers(0, 3)) if B == 0 else -(-real // B) + int(rng.integers(0, 2))
        g = (C, T, R, P, s, d, lo, real, n0, nn, i0, ni, B, nb)
        ref = _rows_reference(x, g)
        out = np.full(ref.size, np.nan, np.float32)
        assert _native_stacking.stack_blocked(x, out, g, True)
        want = ref if B == 0 else _blocked(ref, B)
        assert np.array_equal(out.reshape(want.shape), want), (g, B)


@needs_kernels
@pytest.mark.parametrize("seed", range(6))
def test_stack_blocked_writes_frames_back(seed):
    """The other direction (P = 1, unit steps: the output frames) writes every row of the
    block's frames and nothing else."""
    rng = np.random.default_rng(100 + seed)
    N, O, To = int(rng.integers(1, 4)), int(rng.integers(1, 20)), int(rng.integers(1, 6))
    rest = tuple(int(v) for v in rng.integers(1, 7, size=3))
    R = int(np.prod(rest))
    n0, i0 = int(rng.integers(0, N)), int(rng.integers(0, To))
    nn, ni = int(rng.integers(1, N - n0 + 1)), int(rng.integers(1, To - i0 + 1))
    B = int(rng.choice([8, 16]))
    nb = -(-O // B)
    g = (O, To, R, 1, 1, 1, 0, O, n0, nn, i0, ni, B, nb)
    src = rng.standard_normal((nn * ni, nb, R, B)).astype(np.float32)
    y = np.full((N, O, To) + rest, 7.0, np.float32)
    assert _native_stacking.stack_blocked(y, src, g, False)
    want = np.full_like(y, 7.0)
    frames = src.transpose(0, 1, 3, 2).reshape(nn, ni, nb * B, R)[:, :, :O]
    want[n0:n0 + nn, :, i0:i0 + ni] = frames.transpose(0, 2, 1, 3).reshape((nn, O, ni) + rest)
    assert np.array_equal(y, want)


@needs_kernels
@pytest.mark.parametrize("seed", range(8))
def test_unstack_add_is_the_adjoint_of_stacking(seed):
    """Adds each stacked row back onto the row of x it was stacked from: element by element
    against the formula (float64 sums)."""
    rng = np.random.default_rng(200 + seed)
    N, C, T = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(2, 8))
    rest = tuple(int(v) for v in rng.integers(1, 5, size=3))
    P, s, d, lo = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(0, 3))
    To = max(1, (T + lo - (P - 1) * d - 1) // s + 1)
    n0, i0 = int(rng.integers(0, N)), int(rng.integers(0, To))
    nn, ni = int(rng.integers(1, N - n0 + 1)), int(rng.integers(1, To - i0 + 1))
    R, real, B = int(np.prod(rest)), C * P, int(rng.choice([8, 16]))
    nb = -(-real // B)
    g = (C, T, R, P, s, d, lo, real, n0, nn, i0, ni, B, nb)
    blocked = rng.standard_normal((nn * ni, nb, R, B)).astype(np.float32)
    base = rng.standard_normal((N, C, T) + rest).astype(np.float32)
    x = base.copy()
    assert _native_stacking.unstack_add(x, blocked, g, threads=2)
    want = base.astype(np.float64).reshape(N, C, T, R)
    rows = blocked.astype(np.float64).transpose(0, 1, 3, 2).reshape(nn * ni, nb * B, R)
    for k in range(P):
        for f in range(nn * ni):
            n, i = n0 + f // ni, i0 + f % ni
            t = i * s + k * d - lo
            if 0 <= t < T:
                for c in range(C):
                    want[n, c, t] += rows[f, c * P + k]
    np.testing.assert_allclose(x.reshape(N, C, T, R), want, rtol=1e-6, atol=1e-6)


@needs_kernels
def test_stack_blocked_declines_bad_geometry():
    x = np.ones((1, 1, 2, 2), np.float32)
    small = np.empty(4, np.float32)  # a buffer too small for the block
    assert not _native_stacking.stack_blocked(x, small, (1, 2, 2, 1, 1, 1, 0, 1, 0, 1, 0, 2, 8, 1), True)
    assert not _native_stacking.stack_blocked(x, np.empty(64, np.float32), (1, 2, 2, 1, 1, 1, 0, 1, 0, 1, 0, 2, 0, 1),
                                              False)  # the plain form has no way back
    assert not _native_stacking.stack_blocked(x.astype(np.float64), np.empty(64), (1, 2, 2, 1, 1, 1, 0, 1, 0, 1, 0, 2, 8, 1),
                                              True)


CONV4D_OWN = [  # (x, w, kwargs): channels that oneDNN blocks, the example's modes and strides
    ((2, 12, 6, 6, 6, 6), (16, 12, 3, 3, 3, 3), dict(stride=2, padding=1,
                                                     padding_mode=("causal", "circular", "circular", "circular"))),
    ((3, 1, 6, 8, 8, 8), (12, 1, 3, 3, 3, 3), dict(stride=(1, 2, 2, 2), padding=1,
                                                   padding_mode=("causal", "circular", "circular", "circular"))),
    ((2, 8, 7, 5, 5, 5), (20, 8, 3, 2, 3, 3), dict(padding=(1, 0, 1, 1), dilation=(2, 1, 1, 1))),
]


@needs_kernels
@needs_onednn
@pytest.mark.parametrize("xs,ws,kw", CONV4D_OWN, ids=lambda v: str(v))
def test_conv4d_with_stacked_operands_in_onednn_layout(xs, ws, kw, monkeypatch):
    """Forward and the three gradients: bitwise those of the NumPy-copy + reorder route, and
    PyTorch's (float64 conv3d over kernel-time offsets) within float32 rounding."""
    from test_conv4d import torch_reference
    from test_conv_onednn import _f32_close
    rng = np.random.default_rng(3)
    xa, wa = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    ba = rng.standard_normal(ws[0]).astype(np.float32)
    calls = []
    real = _native_stacking.stack_blocked

    def spy(x, blocked, g, to_blocked, threads=None):
        calls.append((g[12], to_blocked))
        return real(x, blocked, g, to_blocked, threads)

    def run():
        x, w, b = (am.tensor(a, requires_grad=True) for a in (xa, wa, ba))
        y = F.conv4d(x, w, b, **kw)
        y.backward(am.tensor(np.cos(np.arange(y.numel())).reshape(tuple(y.shape)).astype(np.float32)))
        return [t.detach().numpy() if t is y else t.grad.numpy() for t in (y, x, w, b)]
    monkeypatch.setattr(_native_stacking, "stack_blocked", spy)
    ours = run()
    assert any(B > 0 and to for B, to in calls), calls  # an operand was built in the blocked layout
    monkeypatch.setattr(_native_stacking, "stack_blocked", lambda *a, **k: False)
    monkeypatch.setattr(_native_stacking, "unstack_add", lambda *a, **k: False)
    twopass = run()
    for a, b in zip(ours, twopass):
        assert np.array_equal(a, b)
    tx, tw, tb, ty = torch_reference(xa, wa, ba, kw, False)
    ty.backward(torch.tensor(np.cos(np.arange(ty.numel())).reshape(tuple(ty.shape))))
    for a, ref in zip(ours, (ty.detach(), tx.grad, tw.grad, tb.grad)):
        _f32_close(a, ref.numpy())


@needs_kernels
@needs_onednn
@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding=(1, 2, 1, 0), stride=(1, 2, 1, 1), dilation=(1, 2, 1, 1))],
                         ids=["padding 1", "x strided and dilated"])
def test_conv4d_weight_gradient_with_two_stacked_axes(kw, monkeypatch):
    """The weight gradient with the kernel offsets of t and x stacked into channels (a 2-d inner
    convolution), its stacked input built by the one-axis kernel twice (t into a plain array,
    then x into oneDNN's blocked layout): bitwise the NumPy-copy + reorder route, and PyTorch's
    float64 reference within float32 rounding."""
    from avila_ml.cpu_accel import _conv as accel
    from test_conv4d import torch_reference
    from test_conv_onednn import _f32_close
    monkeypatch.setattr(accel, "DEEPER_BEFORE_PADDING", True)
    xs, ws = (2, 2, 6, 7, 5, 5), (4, 2, 3, 3, 3, 3)
    rng = np.random.default_rng(4)
    xa, wa = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    chosen = []
    real_choice = accel._weight_stacking
    monkeypatch.setattr(accel, "_weight_stacking", lambda *a: chosen.append(real_choice(*a)) or chosen[-1])
    calls = []
    real = _native_stacking.stack_blocked

    def spy(x, blocked, g, to_blocked, threads=None):
        calls.append((int(g[12]), to_blocked))
        return real(x, blocked, g, to_blocked, threads)

    def run():
        x, w = (am.tensor(a, requires_grad=True) for a in (xa, wa))
        y = F.conv4d(x, w, **kw)
        y.backward(am.tensor(np.sin(np.arange(y.numel())).reshape(tuple(y.shape)).astype(np.float32)))
        return [y.detach().numpy(), x.grad.numpy(), w.grad.numpy()]
    monkeypatch.setattr(_native_stacking, "stack_blocked", spy)
    ours = run()
    if not (chosen and chosen[0].m == 2):
        pytest.skip("oneDNN has a JIT weight kernel for the one-axis stacking here")
    assert (0, True) in calls and any(B > 0 and to for B, to in calls), calls  # the plain pass, then blocked
    monkeypatch.setattr(_native_stacking, "stack_blocked", lambda *a, **k: False)
    monkeypatch.setattr(_native_stacking, "unstack_add", lambda *a, **k: False)
    for a, b in zip(ours, run()):
        assert np.array_equal(a, b)
    tx, tw, _, ty = torch_reference(xa, wa, np.zeros(ws[0]), kw, False)
    ty.backward(torch.tensor(np.sin(np.arange(ty.numel())).reshape(tuple(ty.shape))))
    for a, ref in zip(ours, (ty.detach(), tx.grad, tw.grad)):
        _f32_close(a, ref.numpy())
