"""conv4d and conv_transpose4d against an independent reference written here: PyTorch's
conv3d (conv_transpose3d) summed over the kernel-time offsets, with the same padding, stride,
dilation and groups; forward and every gradient, over a table of configurations. Non-zero
padding modes are applied to the reference input with NumPy's ``np.pad``."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.backends import set_conv_algorithm
from avila_ml.nn import functional as F

_NP_MODE = {"circular": "wrap", "reflect": "reflect", "replicate": "edge"}


def _t4(v):
    return (v,) * 4 if isinstance(v, int) else tuple(v)


def ref_conv4d(x, w, b, stride, padding, dilation, groups):
    """Reference conv4d: for each output frame, sum_kt conv3d(frame t*s + kt*d, w[:, :, kt]);
    ``padding`` is (lo, hi) per axis, zeros."""
    (plt, pht), spat = padding[0], padding[1:]
    x = TF.pad(x, (0, 0, 0, 0, 0, 0, plt, pht))
    xs = [TF.pad(x, tuple(v for lo, hi in reversed(spat) for v in (lo, hi)))]
    xp = xs[0]
    T, kt = xp.shape[2], w.shape[2]
    st, dt = stride[0], dilation[0]
    To = (T - dt * (kt - 1) - 1) // st + 1
    frames = []
    for t in range(To):
        acc = None
        for k in range(kt):
            y = TF.conv3d(xp[:, :, t * st + k * dt], w[:, :, k], None, stride[1:], 0, dilation[1:], groups)
            acc = y if acc is None else acc + y
        frames.append(acc)
    out = torch.stack(frames, 2)
    return out if b is None else out + b.reshape(1, -1, 1, 1, 1, 1)


def ref_conv_transpose4d(x, w, b, stride, padding, output_padding, dilation, groups):
    """Reference conv_transpose4d: frame j of the input adds conv_transpose3d(x[:, :, j],
    w[:, :, kt]) to output frame j*s + kt*d - padding."""
    st, dt, pt = stride[0], dilation[0], padding[0]
    T, kt = x.shape[2], w.shape[2]
    full = (T - 1) * st + dt * (kt - 1) + 1 + output_padding[0]
    frames = [None] * full
    for j in range(T):
        for k in range(kt):
            y = TF.conv_transpose3d(x[:, :, j], w[:, :, k], None, stride[1:], padding[1:], output_padding[1:],
                                    groups, dilation[1:])
            i = j * st + k * dt
            frames[i] = y if frames[i] is None else frames[i] + y
    zero = torch.zeros_like(next(f for f in frames if f is not None))
    out = torch.stack([zero if f is None else f for f in frames], 2)[:, :, pt:full - pt]
    return out if b is None else out + b.reshape(1, -1, 1, 1, 1, 1)


# (x shape, w shape, kwargs)
TABLE = [
    ((2, 2, 4, 5, 4, 3), (3, 2, 3, 3, 3, 2), dict(padding=1)),
    ((1, 2, 5, 4, 5, 4), (2, 2, 2, 3, 2, 3), dict(stride=(2, 1, 2, 1), padding=(1, 1, 0, 1))),
    ((1, 4, 5, 5, 4, 4), (4, 2, 3, 2, 2, 3), dict(groups=2, dilation=(2, 1, 2, 1), padding=(2, 0, 1, 1))),
    ((1, 3, 4, 4, 4, 4), (3, 1, 3, 3, 3, 3), dict(groups=3, padding="same")),
    ((2, 2, 6, 3, 4, 3), (2, 2, 2, 2, 2, 2), dict(padding="same", dilation=(3, 1, 1, 2))),
    ((1, 2, 5, 4, 3, 4), (2, 2, 3, 3, 1, 3), dict(padding="valid", stride=(1, 1, 1, 2))),
    ((None, 2, 4, 4, 4, 4), (2, 2, 3, 3, 3, 3), dict(padding=1, stride=2)),
    ((1, 2, 6, 5, 4, 4), (2, 2, 3, 3, 3, 3), dict(padding=1, padding_mode=("causal", "circular", "circular", "zeros"))),
    ((1, 2, 4, 5, 4, 5), (2, 2, 3, 3, 3, 3), dict(padding=(1, 2, 1, 1), padding_mode="reflect")),
    ((1, 2, 4, 4, 3, 4), (2, 2, 2, 3, 3, 2), dict(padding=1, padding_mode="replicate", stride=(1, 2, 1, 1))),
    ((1, 2, 4, 4, 4, 4), (2, 2, 3, 3, 3, 3), dict(padding=1, padding_mode="circular", dilation=(1, 2, 1, 1))),
]


def _reference_inputs(xa, w, kw):
    """Apply non-zero / causal modes by hand; return (array, zero padding (lo, hi) per axis)."""
    K = w.shape[2:]
    dil = _t4(kw.get("dilation", 1))
    pad = kw.get("padding", 0)
    if pad == "same":
        lohi = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for d, k in zip(dil, K)]
    elif pad == "valid":
        lohi = [(0, 0)] * 4
    else:
        lohi = [(p, p) for p in _t4(pad)]
    mode = kw.get("padding_mode", "zeros")
    modes = (mode,) * 4 if isinstance(mode, str) else mode
    zero = []
    for a, m in enumerate(modes):
        lo, hi = lohi[a]
        if m == "causal":
            zero.append((dil[a] * (K[a] - 1), 0))
        elif m == "zeros":
            zero.append((lo, hi))
        else:
            width = [(0, 0)] * (xa.ndim - 4 + a) + [(lo, hi)] + [(0, 0)] * (3 - a)
            xa = np.pad(xa, width, mode=_NP_MODE[m])
            zero.append((0, 0))
    return xa, zero


def torch_reference(xa, wa, ba, kw, unbatched):
    """The float64 PyTorch reference of ``conv4d(xa, wa, ba, **kw)`` (conv3d summed over the
    kernel's time offsets): ``(tx, tw, tb, ty)``, the leaves requiring grad, ``tx`` batched."""
    tx = torch.tensor((xa[None] if unbatched else xa).astype(np.float64), requires_grad=True)
    tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (wa, ba))
    # the mode padding of the reference goes through torch ops on a padded copy so the
    # gradient flows back: build it as an index map from np.pad of position labels
    labels = np.arange(tx[0, 0].numel()).reshape(tx.shape[2:])
    lab_pad, zero = _reference_inputs(labels[None, None], wa, kw)
    xin = tx.reshape(tx.shape[0], tx.shape[1], -1)[:, :, torch.tensor(lab_pad[0, 0].ravel())]
    xin = xin.reshape(tx.shape[:2] + lab_pad.shape[2:])
    ty = ref_conv4d(xin, tw, tb, _t4(kw.get("stride", 1)), zero, _t4(kw.get("dilation", 1)), kw.get("groups", 1))
    return tx, tw, tb, (ty[0] if unbatched else ty)


@pytest.mark.parametrize("row", TABLE, ids=lambda r: str(r[2]))
def test_conv4d_matches_reference(row, device):
    xs, ws, kw = row
    rng = np.random.default_rng(0)
    unbatched = xs[0] is None
    xa = rng.standard_normal(xs[1:] if unbatched else xs)
    wa, ba = rng.standard_normal(ws), rng.standard_normal(ws[0])
    x = am.tensor(xa, device=device, requires_grad=True)
    w = am.tensor(wa, device=device, requires_grad=True)
    b = am.tensor(ba, device=device, requires_grad=True)
    y = F.conv4d(x, w, b, **{k: v for k, v in kw.items()})

    tx, tw, tb, ty = torch_reference(xa, wa, ba, kw, unbatched)
    np.testing.assert_allclose(y.detach().cpu().numpy(), ty.detach().numpy(), rtol=1e-8, atol=1e-9)
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g, device=device))
    ty.backward(torch.tensor(g))
    for ours, theirs in ((x, tx), (w, tw), (b, tb)):
        ref = theirs.grad.numpy()
        np.testing.assert_allclose(ours.grad.cpu().numpy(), ref[0] if (unbatched and ours is x) else ref,
                                   rtol=1e-8, atol=1e-9)


TTABLE = [
    ((2, 2, 3, 3, 2, 3), (2, 3, 3, 2, 3, 2), dict()),
    ((1, 2, 3, 2, 3, 2), (2, 2, 2, 3, 2, 3), dict(stride=(2, 1, 2, 1), padding=(1, 1, 0, 1), output_padding=(1, 0, 1, 0))),
    ((1, 4, 3, 3, 2, 2), (4, 1, 3, 2, 2, 3), dict(groups=2, dilation=(2, 1, 1, 2), padding=(1, 0, 1, 1))),
    ((1, 2, 2, 3, 3, 2), (2, 2, 2, 2, 2, 2), dict(stride=3, output_padding=(2, 1, 0, 2))),
]


@pytest.mark.parametrize("row", TTABLE, ids=lambda r: str(r[2]))
def test_conv_transpose4d_matches_reference(row, device):
    xs, ws, kw = row
    rng = np.random.default_rng(1)
    xa, wa = rng.standard_normal(xs), rng.standard_normal(ws)
    groups = kw.get("groups", 1)
    ba = rng.standard_normal(ws[1] * groups)
    x = am.tensor(xa, device=device, requires_grad=True)
    w = am.tensor(wa, device=device, requires_grad=True)
    b = am.tensor(ba, device=device, requires_grad=True)
    y = F.conv_transpose4d(x, w, b, **kw)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    ty = ref_conv_transpose4d(tx, tw, tb, _t4(kw.get("stride", 1)), _t4(kw.get("padding", 0)),
                              _t4(kw.get("output_padding", 0)), _t4(kw.get("dilation", 1)), groups)
    np.testing.assert_allclose(y.detach().cpu().numpy(), ty.detach().numpy(), rtol=1e-8, atol=1e-9)
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g, device=device))
    ty.backward(torch.tensor(g))
    for ours, theirs in ((x, tx), (w, tw), (b, tb)):
        np.testing.assert_allclose(ours.grad.cpu().numpy(), theirs.grad.numpy(), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("algo", ["gemm", "fft", "direct"])
def test_conv4d_every_algorithm_matches_reference(algo, device):
    set_conv_algorithm(algo)
    try:
        rng = np.random.default_rng(2)
        xa, wa = rng.standard_normal((1, 2, 5, 4, 4, 5)), rng.standard_normal((3, 2, 3, 2, 3, 3))
        x = am.tensor(xa, device=device, requires_grad=True)
        w = am.tensor(wa, device=device, requires_grad=True)
        y = F.conv4d(x, w, padding=(1, 1, 0, 1), dilation=(1, 2, 1, 1))
        tx, tw = torch.tensor(xa, requires_grad=True), torch.tensor(wa, requires_grad=True)
        ty = ref_conv4d(tx, tw, None, (1,) * 4, [(1, 1), (1, 1), (0, 0), (1, 1)], (1, 2, 1, 1), 1)
        np.testing.assert_allclose(y.detach().cpu().numpy(), ty.detach().numpy(), rtol=1e-8, atol=1e-9)
        y.sum().backward()
        ty.sum().backward()
        np.testing.assert_allclose(x.grad.cpu().numpy(), tx.grad.numpy(), rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(w.grad.cpu().numpy(), tw.grad.numpy(), rtol=1e-8, atol=1e-9)
    finally:
        set_conv_algorithm("auto")


def test_conv4d_causal_time_axis(device):
    """Changing frame t0 leaves every output frame before t0 unchanged (spatial dims periodic)."""
    rng = np.random.default_rng(3)
    xa = rng.standard_normal((1, 2, 6, 4, 4, 4))
    w = am.tensor(rng.standard_normal((2, 2, 3, 3, 3, 3)), device=device)
    modes = ("causal", "circular", "circular", "zeros")
    y0 = F.conv4d(am.tensor(xa, device=device), w, padding=1, padding_mode=modes).cpu().numpy()
    assert y0.shape == (1, 2, 6, 4, 4, 4)
    for t0 in (5, 2, 0):
        xb = xa.copy()
        xb[:, :, t0] = rng.standard_normal(xb[:, :, t0].shape)
        y1 = F.conv4d(am.tensor(xb, device=device), w, padding=1, padding_mode=modes).cpu().numpy()
        changed = np.abs(y1 - y0).max(axis=(0, 1, 3, 4, 5))
        assert np.all(changed[:t0] == 0) and changed[t0] > 0, changed


def test_conv4d_layer_and_module_gradients(device):
    am.manual_seed(0)
    m = am.nn.Conv4d(2, 3, 3, padding=1, padding_mode=("causal", "circular", "circular", "circular"),
                     dtype=am.float64, device=device)
    x = am.randn(1, 2, 4, 3, 3, 3, dtype=am.float64, device=device)
    y = m(x)
    assert y.shape == (1, 3, 4, 3, 3, 3)
    y.pow(2).sum().backward()
    assert m.weight.grad.shape == (3, 2, 3, 3, 3, 3) and m.bias.grad.shape == (3,)
    mt = am.nn.ConvTranspose4d(3, 2, 2, stride=2, dtype=am.float64, device=device)
    assert mt(y).shape == (1, 2, 8, 6, 6, 6)
