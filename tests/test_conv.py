"""conv1d/2d/3d and conv_transpose1d/2d/3d against PyTorch, over a table of configurations:
forward and every gradient; the algorithms against each other; gradcheck/gradgradcheck;
causal padding; bad configurations; the layers (init, names, state_dict); peak memory."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from memory_peak import peak_bytes
from avila_ml.backends import set_conv_algorithm
from avila_ml.nn import functional as F

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")


def _np(t):
    return t.detach().cpu().numpy()


def _close(ours, theirs, rtol=1e-7, atol=1e-9):
    a, b = _np(ours), _np(theirs)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _pair(arr, device, requires_grad=True):
    return (am.tensor(arr, device=device, requires_grad=requires_grad),
            torch.tensor(arr, requires_grad=requires_grad))


@pytest.fixture(autouse=True)
def _auto_algorithm():
    set_conv_algorithm("auto")
    yield
    set_conv_algorithm("auto")


# (d, N or None for unbatched, C_in, C_out, spatial, kernel, kwargs)
CONV_TABLE = [
    (1, 2, 3, 4, (9,), (3,), dict(stride=2, padding=1)),
    (1, None, 2, 3, (7,), (2,), dict(padding="same")),
    (1, 1, 4, 4, (8,), (3,), dict(groups=4, padding_mode="circular", padding=2)),
    (1, 2, 2, 2, (10,), (3,), dict(dilation=3, padding="valid")),
    (2, 2, 3, 4, (7, 6), (3, 2), dict(stride=(2, 1), padding=(1, 0))),
    (2, 1, 4, 6, (9, 8), (3, 3), dict(padding="same", dilation=(2, 1), groups=2)),
    (2, 2, 4, 4, (6, 7), (3, 3), dict(groups=4, padding=1, padding_mode="reflect")),
    (2, 2, 2, 3, (5, 6), (2, 3), dict(padding=(1, 2), padding_mode="replicate", stride=2)),
    (2, None, 3, 2, (5, 5), (3, 3), dict(padding=1, padding_mode="circular", dilation=2)),
    (2, 1, 2, 2, (6, 5), (4, 2), dict(padding="same", padding_mode="reflect")),
    (2, 3, 1, 1, (4, 4), (1, 1), dict()),
    (3, 2, 2, 3, (5, 6, 4), (3, 2, 3), dict(padding=(1, 0, 1), stride=(1, 2, 1))),
    (3, 1, 4, 2, (5, 5, 5), (3, 3, 3), dict(padding="same", groups=2, dilation=(1, 2, 1))),
    (3, None, 2, 2, (4, 5, 6), (2, 2, 2), dict(padding=1, padding_mode="circular", stride=2)),
    (3, 2, 3, 3, (5, 4, 5), (3, 1, 3), dict(padding=(1, 0, 2), padding_mode="reflect", groups=3)),
    (3, 1, 2, 4, (6, 6, 6), (3, 3, 3), dict(padding=1, padding_mode="replicate", stride=(2, 3, 1))),
]


def _torch_conv(d, tx, tw, tb, kw):
    """PyTorch's reference; non-zero modes exactly as torch.nn.ConvNd does it: F.pad in the
    mode with the (reversed, repeated) padding, then an unpadded convolution."""
    kw = dict(kw)
    mode = kw.pop("padding_mode", "zeros")
    conv = getattr(TF, f"conv{d}d")
    if mode == "zeros":
        return conv(tx, tw, tb, **kw)
    pad = kw.pop("padding", 0)
    K, dil = tw.shape[2:], kw.get("dilation", 1)
    dil = (dil,) * d if isinstance(dil, int) else dil
    if pad == "same":
        lo_hi = [(dl * (k - 1) // 2, dl * (k - 1) - dl * (k - 1) // 2) for dl, k in zip(dil, K)]
    else:
        pad = (pad,) * d if isinstance(pad, int) else pad
        lo_hi = [(p, p) for p in pad]
    widths = [v for lo, hi in reversed(lo_hi) for v in (lo, hi)]
    unbatched = tx.ndim == d + 1
    xin = tx.unsqueeze(0) if unbatched else tx
    y = conv(TF.pad(xin, widths, mode=mode), tw, tb, **kw)
    return y.squeeze(0) if unbatched else y


@pytest.mark.parametrize("row", CONV_TABLE, ids=lambda r: f"conv{r[0]}d-{r[6]}")
def test_conv_matches_torch(row, device):
    d, N, cin, cout, S, K, kw = row
    rng = np.random.default_rng(0)
    shape = ((N,) if N else ()) + (cin,) + S
    groups = kw.get("groups", 1)
    x, tx = _pair(rng.standard_normal(shape), device)
    w, tw = _pair(rng.standard_normal((cout, cin // groups) + K), device)
    b, tb = _pair(rng.standard_normal(cout), device)
    y = getattr(F, f"conv{d}d")(x, w, b, **kw)
    ty = _torch_conv(d, tx, tw, tb, kw)
    _close(y, ty)
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g, device=device))
    ty.backward(torch.tensor(g))
    for ours, theirs in ((x, tx), (w, tw), (b, tb)):
        _close(ours.grad, theirs.grad)


# (d, N, C_in, C_out, spatial, kernel, kwargs)
CONVT_TABLE = [
    (1, 2, 3, 2, (5,), (3,), dict(stride=2, padding=1, output_padding=1)),
    (1, None, 2, 4, (4,), (2,), dict(groups=2, dilation=2)),
    (1, 1, 2, 2, (6,), (3,), dict(stride=1, dilation=2, output_padding=1)),
    (2, 2, 2, 3, (4, 3), (3, 2), dict(stride=(2, 1), padding=(1, 0))),
    (2, 1, 4, 4, (3, 4), (3, 3), dict(stride=3, padding=1, output_padding=(2, 0), groups=4)),
    (2, None, 3, 2, (4, 4), (2, 3), dict(dilation=(2, 1), padding=(0, 1))),
    (3, 2, 2, 2, (3, 2, 3), (2, 3, 2), dict(stride=2, padding=(0, 1, 0), output_padding=(1, 0, 1))),
    (3, 1, 4, 2, (3, 3, 3), (3, 1, 2), dict(groups=2, dilation=(1, 1, 2), stride=(1, 2, 1))),
]


@pytest.mark.parametrize("row", CONVT_TABLE, ids=lambda r: f"convT{r[0]}d-{r[6]}")
def test_conv_transpose_matches_torch(row, device):
    d, N, cin, cout, S, K, kw = row
    rng = np.random.default_rng(1)
    shape = ((N,) if N else ()) + (cin,) + S
    groups = kw.get("groups", 1)
    x, tx = _pair(rng.standard_normal(shape), device)
    w, tw = _pair(rng.standard_normal((cin, cout // groups) + K), device)
    b, tb = _pair(rng.standard_normal(cout), device)
    y = getattr(F, f"conv_transpose{d}d")(x, w, b, **kw)
    ty = getattr(TF, f"conv_transpose{d}d")(tx, tw, tb, **kw)
    _close(y, ty)
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g, device=device))
    ty.backward(torch.tensor(g))
    for ours, theirs in ((x, tx), (w, tw), (b, tb)):
        _close(ours.grad, theirs.grad)


def test_conv_float32_matches_torch(device):
    rng = np.random.default_rng(2)
    xa = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    wa = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    x, tx = _pair(xa, device)
    w, tw = _pair(wa, device)
    y = F.conv2d(x, w, padding=1)
    assert y.dtype == am.float32
    ty = TF.conv2d(tx, tw, padding=1)
    _close(y, ty, rtol=1e-4, atol=1e-4)
    y.sum().backward()
    ty.sum().backward()
    _close(x.grad, tx.grad, rtol=1e-4, atol=1e-4)
    _close(w.grad, tw.grad, rtol=1e-4, atol=1e-3)


# -------------------------------------------------------------------------- algorithms agree
ALGO_CASES = [
    (2, (2, 3, 9, 8), (4, 3, 3, 3), dict(padding=1)),
    (2, (1, 4, 7, 9), (4, 2, 5, 3), dict(stride=2, padding=(2, 0), dilation=(1, 2), groups=2)),
    (3, (1, 2, 6, 5, 7), (3, 2, 3, 3, 3), dict(padding="same", dilation=(2, 1, 1))),
    (4, (1, 2, 5, 4, 5, 4), (2, 2, 3, 2, 3, 2), dict(padding=1, stride=(1, 2, 1, 1))),
]


@pytest.mark.parametrize("case", ALGO_CASES, ids=lambda c: f"{c[0]}d-{c[3]}")
def test_algorithms_agree(case, device):
    d, xs, ws, kw = case
    rng = np.random.default_rng(3)
    xa, wa = rng.standard_normal(xs), rng.standard_normal(ws)
    ga = None
    results = {}
    for algo in ("gemm", "fft", "direct"):
        set_conv_algorithm(algo)
        x = am.tensor(xa, device=device, requires_grad=True)
        w = am.tensor(wa, device=device, requires_grad=True)
        y = getattr(F, f"conv{d}d")(x, w, **kw)
        if ga is None:
            ga = rng.standard_normal(y.shape)
        y.backward(am.tensor(ga, device=device))
        # the transposed conv through the same algorithm
        z = getattr(F, f"conv_transpose{d}d")(am.tensor(ga, device=device), w.detach(),
                                               stride=kw.get("stride", 1), groups=kw.get("groups", 1),
                                               dilation=kw.get("dilation", 1),
                                               padding=0 if isinstance(kw.get("padding"), str) else kw.get("padding", 0))
        results[algo] = [_np(y), _np(x.grad), _np(w.grad), _np(z)]
    for algo in ("fft", "direct"):
        for a, b in zip(results[algo], results["gemm"]):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_algorithms_agree_float32():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 6, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3, 3, 3)).astype(np.float32)
    outs = {}
    for algo in ("gemm", "fft", "direct"):
        set_conv_algorithm(algo)
        outs[algo] = F.conv4d(am.tensor(x), am.tensor(w), padding=1).numpy()
    scale = np.abs(outs["gemm"]).max()
    for algo in ("fft", "direct"):
        np.testing.assert_allclose(outs[algo], outs["gemm"], atol=1e-5 * scale, rtol=0)


def test_auto_choice_uses_fft_for_large_kernels():
    from avila_ml.ops import conv as C
    from avila_ml.ops._conv_geometry import ConvGeometry
    big = ConvGeometry((1, 1, 1), (3, 3, 3), (3, 3, 3), (1, 1, 1), 1)
    small = ConvGeometry((1, 1), (1, 1), (1, 1), (1, 1), 1)
    assert C._choose("numpy", 2, 8, 8, 1, (16, 16, 16), (7, 7, 7), big) is C._conv_fft
    assert C._choose("numpy", 16, 64, 64, 1, (32, 32), (3, 3), small) is C._conv_gemm
    strided = ConvGeometry((2, 2, 2), (3, 3, 3), (3, 3, 3), (1, 1, 1), 1)
    assert C._choose("numpy", 2, 8, 8, 1, (16, 16, 16), (7, 7, 7), strided) is C._conv_gemm


# -------------------------------------------------------------------------- finite differences
GRAD_CASES = [
    (1, (1, 2, 5), (2, 2, 3), dict(stride=2, padding=1)),
    (2, (1, 2, 4, 3), (2, 1, 2, 2), dict(padding=(1, 0), groups=2, dilation=(1, 2))),
    (3, (1, 1, 3, 4, 3), (2, 1, 2, 2, 2), dict(padding=1, stride=(2, 1, 1))),
    (4, (1, 1, 3, 3, 2, 3), (1, 1, 2, 2, 2, 2), dict(padding=(1, 0, 1, 0))),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"conv{c[0]}d")
def test_conv_gradcheck_gradgradcheck(case, device):
    d, xs, ws, kw = case
    x = am.randn(*xs, dtype=am.float64, device=device, requires_grad=True)
    w = am.randn(*ws, dtype=am.float64, device=device, requires_grad=True)
    b = am.randn(ws[0], dtype=am.float64, device=device, requires_grad=True)
    fn = getattr(F, f"conv{d}d")
    assert am.autograd.gradcheck(lambda x, w, b: fn(x, w, b, **kw), (x, w, b))
    assert am.autograd.gradgradcheck(lambda x, w: fn(x, w, **kw), (x, w))


GRADT_CASES = [
    (1, (1, 2, 3), (2, 1, 3), dict(stride=2, padding=1, output_padding=1)),
    (2, (1, 2, 2, 3), (2, 1, 2, 2), dict(groups=2, stride=(2, 1))),
    (3, (1, 1, 2, 2, 2), (1, 2, 2, 1, 2), dict(dilation=(1, 1, 2), padding=(0, 0, 1))),
    (4, (1, 1, 2, 2, 1, 2), (1, 1, 2, 2, 2, 1), dict(stride=(2, 1, 1, 1), output_padding=(1, 0, 0, 0))),
]


@pytest.mark.parametrize("case", GRADT_CASES, ids=lambda c: f"conv_transpose{c[0]}d")
def test_conv_transpose_gradcheck_gradgradcheck(case, device):
    d, xs, ws, kw = case
    x = am.randn(*xs, dtype=am.float64, device=device, requires_grad=True)
    w = am.randn(*ws, dtype=am.float64, device=device, requires_grad=True)
    b = am.randn(ws[1] * kw.get("groups", 1), dtype=am.float64, device=device, requires_grad=True)
    fn = getattr(F, f"conv_transpose{d}d")
    assert am.autograd.gradcheck(lambda x, w, b: fn(x, w, b, **kw), (x, w, b))
    assert am.autograd.gradgradcheck(lambda x, w: fn(x, w, **kw), (x, w))


def test_gradgradcheck_padding_modes(device):
    x = am.randn(1, 1, 4, 3, dtype=am.float64, device=device, requires_grad=True)
    w = am.randn(1, 1, 2, 2, dtype=am.float64, device=device, requires_grad=True)
    fn = lambda x, w: F.conv2d(x, w, padding=1, padding_mode=("reflect", "circular"))  # noqa: E731
    assert am.autograd.gradgradcheck(fn, (x, w))


# -------------------------------------------------------------------------- causal padding
@pytest.mark.parametrize("stride,dilation", [(1, 1), (1, 2), (2, 1)])
def test_causal_matches_past_only_padding(stride, dilation, device):
    rng = np.random.default_rng(5)
    x, tx = _pair(rng.standard_normal((2, 3, 11)), device)
    w, tw = _pair(rng.standard_normal((2, 3, 3)), device)
    y = F.conv1d(x, w, stride=stride, dilation=dilation, padding=5, padding_mode="causal")
    ty = TF.conv1d(TF.pad(tx, (dilation * 2, 0)), tw, stride=stride, dilation=dilation)
    _close(y, ty)
    y.sum().backward()
    ty.sum().backward()
    _close(x.grad, tx.grad)


def test_causal_axis_never_sees_the_future(device):
    rng = np.random.default_rng(6)
    xa = rng.standard_normal((1, 2, 7, 5, 4))
    w = am.tensor(rng.standard_normal((3, 2, 3, 3, 3)), device=device)
    modes = ("causal", "circular", "zeros")
    y0 = F.conv3d(am.tensor(xa, device=device), w, padding=1, padding_mode=modes)
    assert y0.shape == (1, 3, 7, 5, 4)
    for t0 in (6, 3, 1):
        xb = xa.copy()
        xb[:, :, t0] += rng.standard_normal(xb[:, :, t0].shape)
        y1 = F.conv3d(am.tensor(xb, device=device), w, padding=1, padding_mode=modes)
        diff = np.abs(_np(y1) - _np(y0)).max(axis=(0, 1, 3, 4))
        assert np.all(diff[:t0] == 0), f"outputs before frame {t0} changed: {diff}"
        assert diff[t0] > 0


def test_per_axis_modes_match_explicit_padding(device):
    rng = np.random.default_rng(7)
    xa = rng.standard_normal((1, 2, 6, 5))
    x, tx = _pair(xa, device)
    w, tw = _pair(rng.standard_normal((2, 2, 3, 3)), device)
    y = F.conv2d(x, w, padding=1, padding_mode=("circular", "reflect"))
    tp = TF.pad(TF.pad(tx, (0, 0, 1, 1), mode="circular"), (1, 1, 0, 0), mode="reflect")
    ty = TF.conv2d(tp, tw)
    _close(y, ty)
    y.sum().backward()
    ty.sum().backward()
    _close(x.grad, tx.grad)


# -------------------------------------------------------------------------- bad configurations
@pytest.mark.parametrize("call,match", [
    (lambda: F.conv2d(am.ones(1, 2, 2, 2), am.ones(1, 2, 3, 3)), r"conv2d: .*larger than the padded input.*\(2, 2\)"),
    (lambda: F.conv3d(am.ones(1, 3, 4, 4, 4), am.ones(4, 1, 3, 3, 3), groups=2), r"conv3d: .*\(1, 3, 4, 4, 4\).*groups"),
    (lambda: F.conv2d(am.ones(4, 4), am.ones(1, 1, 3, 3)), r"conv2d: expected a 3-d .*or 4-d.*\(4, 4\)"),
    (lambda: F.conv4d(am.ones(1, 1, 3, 3, 3, 3), am.ones(1, 1, 3, 3, 3)), r"conv4d: expected a 6-d weight.*\(1, 1, 3, 3, 3\)"),
    (lambda: F.conv1d(am.ones(1, 2, 5), am.ones(1, 2, 3, dtype=am.float64)), r"conv1d: input type \(avila_ml.float32\) and weight type \(avila_ml.float64\)"),
    (lambda: F.conv2d(am.ones(1, 1, 5, 5), am.ones(1, 1, 3, 3), stride=2, padding="same"), r"conv2d: padding='same'.*strided"),
    (lambda: F.conv1d(am.ones(1, 1, 2), am.ones(1, 1, 3), padding=2, padding_mode="reflect"), r"conv1d: reflect padding \(2, 2\).*size 2"),
    (lambda: F.conv2d(am.ones(1, 1, 5, 5), am.ones(1, 1, 3, 3), padding_mode=("zeros", "bogus")), r"conv2d: padding_mode"),
    (lambda: F.conv2d(am.ones(1, 1, 5, 5), am.ones(2, 1, 3, 3), am.ones(3)), r"conv2d: bias of shape \(3,\)"),
    (lambda: F.conv_transpose2d(am.ones(1, 2, 3, 3), am.ones(3, 1, 3, 3)), r"conv_transpose2d: .*2 channels.*\(3, 1, 3, 3\)"),
    (lambda: F.conv_transpose1d(am.ones(1, 1, 3), am.ones(1, 1, 3), stride=2, output_padding=2), r"output_padding"),
])
def test_bad_configurations_raise(call, match):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        call()


# -------------------------------------------------------------------------- layers
@pytest.mark.parametrize("d", [1, 2, 3])
def test_layers_match_torch_state_dict(d, device):
    torch.manual_seed(0)
    tm = getattr(torch.nn, f"Conv{d}d")(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="circular").double()
    m = getattr(am.nn, f"Conv{d}d")(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="circular",
                                    dtype=am.float64, device=device)
    assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in tm.named_parameters()]
    assert repr(m) == repr(tm)
    m.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    xa = np.random.default_rng(8).standard_normal((2, 4) + (7,) * d)
    _close(m(am.tensor(xa, device=device)), tm(torch.tensor(xa)))
    tmt = getattr(torch.nn, f"ConvTranspose{d}d")(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2).double()
    mt = getattr(am.nn, f"ConvTranspose{d}d")(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2,
                                              dtype=am.float64, device=device)
    assert repr(mt) == repr(tmt)
    assert tuple(mt.weight.shape) == tuple(tmt.weight.shape)
    mt.load_state_dict({k: v.numpy() for k, v in tmt.state_dict().items()})
    _close(mt(am.tensor(xa, device=device)), tmt(torch.tensor(xa)))
    size = (2, 6) + (14,) * d
    _close(mt(am.tensor(xa, device=device), output_size=size), tmt(torch.tensor(xa), output_size=size))


def test_default_init_matches_torch_bounds():
    m = am.nn.Conv4d(3, 8, (3, 2, 3, 2))
    fan_in = 3 * 3 * 2 * 3 * 2
    bound = 1 / math.sqrt(fan_in)
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(b).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound  # U(-a, a) has std a / sqrt(3)
    mt = am.nn.ConvTranspose2d(3, 4, 3, groups=1)
    assert tuple(mt.weight.shape) == (3, 4, 3, 3)
    assert np.abs(mt.bias.detach().numpy()).max() <= 1 / math.sqrt(4 * 9)


# -------------------------------------------------------------------------- memory
def _extra_peak(fn, held_bytes):
    return peak_bytes(fn) - held_bytes


@pytest.mark.parametrize("algo", ["auto", "gemm", "fft"])
@pytest.mark.parametrize("shape,kernel", [((2, 4, 16, 16, 16, 16), (8, 4, 3, 3, 3, 3)),
                                          ((2, 4, 48, 48, 48), (8, 4, 3, 3, 3))])
def test_forward_backward_extra_memory_bound(algo, shape, kernel):
    """Extra memory of forward+backward <= 2 x output + input (the issue's bound): besides the
    results themselves (output, its gradient seed, the input and weight gradients). Volumes of
    a few MB, where the bound matters (below ~1 MB the fixed ~1 MB of cache-sized chunk
    buffers per thread dominate)."""
    set_conv_algorithm(algo)
    rng = np.random.default_rng(9)
    x = am.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
    w = am.tensor(rng.standard_normal(kernel).astype(np.float32) * 0.1, requires_grad=True)
    d = len(shape) - 2
    fn = getattr(F, f"conv{d}d")
    out_bytes = x.array.nbytes // shape[1] * kernel[0]
    held = 2 * out_bytes + x.array.nbytes + w.array.nbytes  # y, grad seed, x.grad, w.grad

    def step():
        y = fn(x, w, padding=1)
        y.backward(am.ones_like(y))

    step()  # once before measuring: the first FFT call imports scipy.fft (~7 MiB of module objects)
    x.grad = w.grad = None
    extra = _extra_peak(step, held)
    bound = 2 * out_bytes + x.array.nbytes
    assert extra <= bound, f"extra {extra / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"


# -------------------------------------------------------------------------- kernel covering the input
DENSE_CASES = [  # (transposed, x shape, w shape, keywords): one output (or input) position
    (False, (5, 6, 4, 4), (3, 6, 4, 4), dict(stride=2)),
    (False, (3, 2, 5), (4, 2, 5), dict()),
    (False, (2, 3, 3, 2, 2), (4, 3, 3, 2, 2), dict(stride=(1, 2, 1))),
    (False, (2, 2, 2, 3, 2, 2), (3, 2, 2, 3, 2, 2), dict()),
    (True, (6, 7, 1, 1), (7, 5, 4, 4), dict()),                 # the DCGAN generator's first layer
    (True, (3, 4, 1, 1, 1), (4, 2, 2, 3, 2), dict(stride=2)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: f"{'T' if c[0] else ''}{c[1]}")
def test_kernel_covering_the_input_runs_as_one_matmul(monkeypatch, case, dtype, device):
    """A convolution whose kernel covers the whole input (no padding, dilation 1, one group)
    runs as one matrix product (``_conv_dense``) under "auto", forward and both gradients, and
    matches PyTorch in float64; a forced algorithm does not take it."""
    from avila_ml.ops import _conv_dense
    transposed, xs, ws, kw = case
    ran = []
    for name in ("conv_forward", "conv_transpose", "conv_weight_grad"):
        real = getattr(_conv_dense, name)
        monkeypatch.setattr(_conv_dense, name, lambda *a, _r=real, _n=name: ran.append(_n) or _r(*a))
    d = len(xs) - 2
    rng = np.random.default_rng(17)
    arrs = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[1] if transposed else ws[0])]
    name = f"conv_transpose{d}d" if transposed else f"conv{d}d"
    fn = getattr(F, name)
    ours = [am.tensor(a.astype(dtype), device=device, requires_grad=True) for a in arrs]
    ref = [torch.tensor(a.astype(dtype).astype(np.float64), requires_grad=True) for a in arrs]
    y = fn(*ours, **kw)
    g = rng.standard_normal(tuple(y.shape))
    if d < 4:
        ty = getattr(TF, name)(*ref, **kw)
        ty.backward(torch.tensor(g))
    else:  # 4-d: against the NumPy algorithm in float64, forward and backward
        set_conv_algorithm("gemm")
        ref = [am.tensor(a.astype(dtype).astype(np.float64), requires_grad=True) for a in arrs]
        ty = fn(*ref, **kw)
        ty.backward(am.tensor(g))
        set_conv_algorithm("auto")
        assert ran == ["conv_forward"]  # (ours); the reference took none
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(y), _np(ty), **tol)
    y.backward(am.tensor(g.astype(dtype), device=device))
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(_np(a.grad), _np(b.grad), **tol)
    assert sorted(set(ran)) == ["conv_forward", "conv_transpose", "conv_weight_grad"], ran
    ran.clear()
    set_conv_algorithm("gemm")
    fn(*ours, **kw).sum().backward()
    assert ran == []


@pytest.mark.parametrize("case", DENSE_CASES[:2] + DENSE_CASES[4:5], ids=lambda c: f"{'T' if c[0] else ''}{c[1]}")
def test_kernel_covering_the_input_gradcheck_gradgradcheck(case, device):
    transposed, xs, ws, kw = case
    d = len(xs) - 2
    fn = getattr(F, f"conv_transpose{d}d" if transposed else f"conv{d}d")
    x = am.randn(*xs, dtype=am.float64, device=device, requires_grad=True)
    w = am.randn(*ws, dtype=am.float64, device=device, requires_grad=True)
    b = am.randn(ws[1] if transposed else ws[0], dtype=am.float64, device=device, requires_grad=True)
    assert am.autograd.gradcheck(lambda x, w, b: fn(x, w, b, **kw), (x, w, b))
    assert am.autograd.gradgradcheck(lambda x, w: fn(x, w, **kw), (x, w))
