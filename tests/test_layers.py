"""Layers (Linear, Bilinear, Identity, Flatten, Unflatten, Embedding, the dropouts) against
their PyTorch twins, and the dropout statistics.

Interop round trip for every layer: build the PyTorch twin in float64, load its
``state_dict`` (as NumPy arrays) into ours, compare the forward, the input gradient and every
parameter gradient; then load ours back into a fresh twin with ``strict=True`` and compare
again.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.nn.modules.embedding import embedding  # not yet re-exported as F.embedding

F = am.nn.functional
TOL = dict(rtol=1e-12, atol=1e-13)
rng = np.random.default_rng(1234)


def to_np(t):
    return np.asarray(t.detach().cpu().array)


@dataclass
class LayerCase:
    name: str
    ours: object                 # (device) -> our module, float64
    theirs: object               # () -> torch module (converted to float64 by the test)
    inputs: list                 # NumPy arrays; float ones are differentiated
    eval_mode: bool = False
    kwargs: dict = field(default_factory=dict)


def f64(cls, *a, **k):
    return lambda device: cls(*a, **k, device=device, dtype=am.float64)


def plain(cls, *a, **k):
    return lambda device: cls(*a, **k)


IDX = np.array([[1, 0, 3, 3], [4, 1, 1, 2]])
CASES = [
    LayerCase("linear", f64(am.nn.Linear, 4, 3), lambda: torch.nn.Linear(4, 3), [rng.normal(size=(2, 5, 4))]),
    LayerCase("linear_nobias", f64(am.nn.Linear, 4, 3, bias=False), lambda: torch.nn.Linear(4, 3, bias=False),
              [rng.normal(size=(6, 4))]),
    LayerCase("linear_1d_input", f64(am.nn.Linear, 4, 2), lambda: torch.nn.Linear(4, 2), [rng.normal(size=4)]),
    LayerCase("bilinear", f64(am.nn.Bilinear, 3, 4, 2), lambda: torch.nn.Bilinear(3, 4, 2),
              [rng.normal(size=(5, 3)), rng.normal(size=(5, 4))]),
    LayerCase("bilinear_nobias_nd", f64(am.nn.Bilinear, 2, 3, 4, bias=False),
              lambda: torch.nn.Bilinear(2, 3, 4, bias=False),
              [rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 3, 3))]),
    LayerCase("identity", plain(am.nn.Identity, 3, x=1), lambda: torch.nn.Identity(3, x=1), [rng.normal(size=(2, 3))]),
    LayerCase("flatten", plain(am.nn.Flatten), lambda: torch.nn.Flatten(), [rng.normal(size=(2, 3, 4))]),
    LayerCase("flatten_dims", plain(am.nn.Flatten, 0, 1), lambda: torch.nn.Flatten(0, 1), [rng.normal(size=(2, 3, 4))]),
    LayerCase("unflatten", plain(am.nn.Unflatten, 1, (2, 3)), lambda: torch.nn.Unflatten(1, (2, 3)),
              [rng.normal(size=(4, 6))]),
    LayerCase("unflatten_neg", plain(am.nn.Unflatten, -1, (3, -1)), lambda: torch.nn.Unflatten(-1, (3, -1)),
              [rng.normal(size=(2, 6))]),
    LayerCase("embedding", f64(am.nn.Embedding, 5, 3), lambda: torch.nn.Embedding(5, 3), [IDX]),
    LayerCase("embedding_padding", f64(am.nn.Embedding, 5, 3, padding_idx=1),
              lambda: torch.nn.Embedding(5, 3, padding_idx=1), [IDX]),
    LayerCase("embedding_neg_padding", f64(am.nn.Embedding, 5, 3, padding_idx=-1),
              lambda: torch.nn.Embedding(5, 3, padding_idx=-1), [IDX]),
    LayerCase("embedding_freq", f64(am.nn.Embedding, 5, 3, scale_grad_by_freq=True),
              lambda: torch.nn.Embedding(5, 3, scale_grad_by_freq=True), [IDX]),
    LayerCase("embedding_max_norm", f64(am.nn.Embedding, 5, 3, max_norm=0.5),
              lambda: torch.nn.Embedding(5, 3, max_norm=0.5), [IDX]),
    LayerCase("embedding_max_norm_p1", f64(am.nn.Embedding, 5, 3, max_norm=1.0, norm_type=1.0),
              lambda: torch.nn.Embedding(5, 3, max_norm=1.0, norm_type=1.0), [IDX]),
    LayerCase("embedding_scalar_index", f64(am.nn.Embedding, 5, 3), lambda: torch.nn.Embedding(5, 3), [np.array(2)]),
    LayerCase("dropout_eval", plain(am.nn.Dropout, 0.3), lambda: torch.nn.Dropout(0.3),
              [rng.normal(size=(3, 4))], eval_mode=True),
    LayerCase("dropout1d_eval", plain(am.nn.Dropout1d, 0.3), lambda: torch.nn.Dropout1d(0.3),
              [rng.normal(size=(2, 3, 4))], eval_mode=True),
    LayerCase("dropout2d_eval", plain(am.nn.Dropout2d, 0.3), lambda: torch.nn.Dropout2d(0.3),
              [rng.normal(size=(2, 3, 2, 2))], eval_mode=True),
    LayerCase("dropout3d_eval", plain(am.nn.Dropout3d, 0.3), lambda: torch.nn.Dropout3d(0.3),
              [rng.normal(size=(2, 3, 2, 2, 2))], eval_mode=True),
    LayerCase("alpha_dropout_eval", plain(am.nn.AlphaDropout, 0.3), lambda: torch.nn.AlphaDropout(0.3),
              [rng.normal(size=(3, 4))], eval_mode=True),
    LayerCase("feature_alpha_dropout_eval", plain(am.nn.FeatureAlphaDropout, 0.3),
              lambda: torch.nn.FeatureAlphaDropout(0.3), [rng.normal(size=(2, 3, 4))], eval_mode=True),
    LayerCase("dropout_p0_train", plain(am.nn.Dropout, 0.0), lambda: torch.nn.Dropout(0.0), [rng.normal(size=(3, 4))]),
]


def _forward_backward_ours(m, inputs, device, g):
    xs = [am.tensor(x, dtype=am.float64 if x.dtype.kind == "f" else am.int64, device=device,
                    requires_grad=x.dtype.kind == "f") for x in inputs]
    y = m(*xs)
    y.backward(am.tensor(g, dtype=am.float64, device=device))
    return y, xs


def _forward_backward_torch(tm, inputs, g):
    xs = [torch.tensor(x, requires_grad=x.dtype.kind == "f") for x in inputs]
    y = tm(*xs)
    y.backward(torch.tensor(g))
    return y, xs


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_interop_round_trip(case, device):
    torch.manual_seed(0)
    tm = case.theirs().double()
    m = case.ours(device)
    if case.eval_mode:
        m.eval()
        tm.eval()
    assert repr(m) == repr(tm)
    assert list(m.state_dict()) == list(tm.state_dict())
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in tm.named_parameters()]
    # torch -> ours
    res = m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    assert res.missing_keys == [] and res.unexpected_keys == []
    ty = tm(*[torch.tensor(x) for x in case.inputs])
    g = np.random.default_rng(7).normal(size=tuple(ty.shape))
    y, xs = _forward_backward_ours(m, case.inputs, device, g)
    ty, txs = _forward_backward_torch(tm, case.inputs, g)
    assert y.dtype == am.float64 and tuple(y.shape) == tuple(ty.shape)
    np.testing.assert_allclose(to_np(y), ty.detach().numpy(), **TOL)
    for x, tx in zip(xs, txs):
        if tx.grad is not None:
            np.testing.assert_allclose(to_np(x.grad), tx.grad.numpy(), **TOL)
    tparams = dict(tm.named_parameters())
    for n, p in m.named_parameters():
        tp = tparams[n]
        np.testing.assert_allclose(to_np(p), tp.detach().numpy(), **TOL, err_msg=n)  # max_norm renorm
        assert (p.grad is None) == (tp.grad is None), n
        if tp.grad is not None:
            np.testing.assert_allclose(to_np(p.grad), tp.grad.numpy(), **TOL, err_msg=n)
    # ours -> a fresh torch twin, strict
    torch.manual_seed(1)
    tm2 = case.theirs().double()
    if case.eval_mode:
        tm2.eval()
    tm2.load_state_dict({k: torch.from_numpy(to_np(v).copy()) for k, v in m.state_dict().items()}, strict=True)
    y2 = m(*[am.tensor(x, dtype=am.float64 if x.dtype.kind == "f" else am.int64, device=device) for x in case.inputs])
    ty2 = tm2(*[torch.tensor(x) for x in case.inputs])
    np.testing.assert_allclose(to_np(y2), ty2.detach().numpy(), **TOL)


@pytest.mark.parametrize("make", [
    lambda d: am.nn.Linear(3, 2, device=d, dtype=am.float64),
    lambda d: am.nn.Bilinear(2, 2, 2, device=d, dtype=am.float64),
], ids=["linear", "bilinear"])
def test_gradcheck_layers(make, device):
    m = make(device)
    n_in = 2 if isinstance(m, am.nn.Bilinear) else 1
    xs = [am.tensor(rng.normal(size=(2, m.weight.shape[-1] if i else m.weight.shape[1])), dtype=am.float64,
                    device=device, requires_grad=True) for i in range(n_in)]
    params = list(m.parameters())
    assert am.autograd.gradcheck(lambda *a: m(*a[:n_in]), tuple(xs) + tuple(params))
    assert am.autograd.gradgradcheck(lambda *a: m(*a[:n_in]), tuple(xs) + tuple(params))


def test_embedding_gradcheck_and_padding_gradient(device):
    m = am.nn.Embedding(4, 2, padding_idx=0, device=device, dtype=am.float64)
    idx = am.tensor([[0, 1, 1], [3, 0, 2]], device=device)
    # finite differences see the padding row (its gradient is zero by design, as in PyTorch),
    # so the true gradient is checked without padding_idx
    assert am.autograd.gradcheck(lambda w: embedding(idx, w), (m.weight,))
    assert am.autograd.gradgradcheck(lambda w: embedding(idx, w), (m.weight,))
    assert to_np(m.weight)[0].tolist() == [0.0, 0.0]  # the padding row starts at zero
    m(idx).sum().backward()
    g = to_np(m.weight.grad)
    assert g[0].tolist() == [0.0, 0.0] and g[1].tolist() == [2.0, 2.0]


def test_embedding_from_pretrained(device):
    w = np.arange(12.0).reshape(4, 3)
    emb = am.nn.Embedding.from_pretrained(am.tensor(w, device=device))
    temb = torch.nn.Embedding.from_pretrained(torch.tensor(w))
    assert repr(emb) == repr(temb) and emb.weight.requires_grad == temb.weight.requires_grad is False
    idx = np.array([3, 0])
    np.testing.assert_array_equal(to_np(emb(am.tensor(idx, device=device))), temb(torch.tensor(idx)).numpy())
    emb2 = am.nn.Embedding.from_pretrained(am.tensor(w, device=device), freeze=False, padding_idx=2)
    assert emb2.weight.requires_grad and to_np(emb2.weight)[2].tolist() == [6.0, 7.0, 8.0]  # not zeroed, as in torch
    with pytest.raises(ValueError, match="2-D"):
        am.nn.Embedding.from_pretrained(am.ones(3))


def test_embedding_errors(device, sync_checks):
    emb = am.nn.Embedding(3, 2, device=device)
    with pytest.raises(IndexError, match=r"index out of range.*\[0, 3\)"):
        emb(am.tensor([0, 3], device=device))
    with pytest.raises(IndexError, match="out of range"):
        emb(am.tensor([-1], device=device))
    with pytest.raises(TypeError, match="integer index"):
        emb(am.tensor([0.0], device=device))
    with pytest.raises(ValueError, match="padding_idx"):
        am.nn.Embedding(3, 2, padding_idx=3)
    with pytest.raises(ValueError, match="sparse"):
        am.nn.Embedding(3, 2, sparse=True)


def test_layer_errors_name_shapes(device):
    lin = am.nn.Linear(3, 2, device=device)
    with pytest.raises(RuntimeError, match=r"Linear.*\(4, 5\).*in_features=3"):
        lin(am.ones(4, 5, device=device))
    bil = am.nn.Bilinear(2, 3, 1, device=device)
    with pytest.raises(RuntimeError, match=r"Bilinear.*\(4, 2\).*\(4, 2\)"):
        bil(am.ones(4, 2, device=device), am.ones(4, 2, device=device))
    with pytest.raises(ValueError, match="in_features"):
        am.nn.Linear(-1, 2)
    with pytest.raises(TypeError, match="floating-point"):
        am.nn.Linear(2, 2, dtype=am.int64)
    with pytest.raises(TypeError, match="unflattened_size"):
        am.nn.Unflatten(1, 6)


def test_layers_default_dtype_and_device(device):
    lin = am.nn.Linear(3, 2, device=device)
    assert lin.weight.dtype == am.float32 and str(lin.weight.device) == str(am.device(device))
    emb = am.nn.Embedding(3, 2, device=device, dtype=am.float64)
    assert emb.weight.dtype == am.float64


# ----------------------------------------------------------------------------- dropout statistics
def _sigma(p, n):
    return (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_fraction_and_scale(p, device):
    n = 200_000
    x = am.ones(n, dtype=am.float64, device=device, requires_grad=True)
    y = F.dropout(x, p)
    a = to_np(y)
    frac = float((a == 0).mean())
    assert abs(frac - p) < 5 * _sigma(p, n)
    np.testing.assert_allclose(a[a != 0], 1 / (1 - p), rtol=1e-15)
    y.sum().backward()
    np.testing.assert_array_equal(to_np(x.grad), a)  # d(x m/(1-p))/dx = m/(1-p), and x = 1


@pytest.mark.parametrize("fn,shape,ndim", [
    (F.dropout1d, (40, 250, 3), 1), (F.dropout1d, (250, 3), 1),
    (F.dropout2d, (40, 250, 2, 2), 2), (F.dropout2d, (250, 2, 2), 2),
    (F.dropout3d, (40, 250, 2, 1, 2), 3), (F.dropout3d, (250, 2, 2, 1), 3),
])
def test_channel_dropout_zeroes_whole_channels(fn, shape, ndim, device):
    p = 0.3
    x = am.tensor(rng.uniform(1, 2, size=shape), dtype=am.float64, device=device, requires_grad=True)
    if fn is F.dropout2d and len(shape) == 3:
        with pytest.warns(UserWarning, match="3-D input"):
            y = fn(x, p)
        channel_axes = 2
    else:
        y = fn(x, p)
        channel_axes = 2 if len(shape) == ndim + 2 else 1
    ratio = to_np(y) / to_np(x)
    per_channel = ratio.reshape(ratio.shape[:channel_axes] + (-1,))
    # every channel is all-zero or all-1/(1-p)
    assert np.all((per_channel == 0).all(-1) | np.isclose(per_channel, 1 / (1 - p), rtol=1e-14).all(-1))
    frac = float((per_channel[..., 0] == 0).mean())
    n = per_channel[..., 0].size
    assert abs(frac - p) < 5 * _sigma(p, n)
    y.sum().backward()
    np.testing.assert_allclose(to_np(x.grad), ratio, rtol=1e-14)


def test_dropout_eval_identity_and_seed_reproducible(device):
    x = am.tensor(rng.normal(size=(6, 7)), device=device)
    for m in [am.nn.Dropout(0.4), am.nn.Dropout1d(0.4), am.nn.AlphaDropout(0.4)]:
        m.eval()
        assert m(x) is x
    assert F.dropout(x, 0.4, training=False) is x
    am.manual_seed(11)
    a = to_np(am.nn.Dropout(0.4)(x))
    am.manual_seed(11)
    b = to_np(am.nn.Dropout(0.4)(x))
    c = to_np(am.nn.Dropout(0.4)(x))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropout_p_limits_and_errors(device):
    x = am.ones(5, device=device, requires_grad=True)
    y = F.dropout(x, 1.0)
    assert to_np(y).tolist() == [0.0] * 5
    y.sum().backward()
    assert to_np(x.grad).tolist() == [0.0] * 5
    for bad in [-0.1, 1.5, "0.5"]:
        with pytest.raises(ValueError, match="between 0 and 1"):
            F.dropout(x, bad)
        with pytest.raises(ValueError, match="between 0 and 1"):
            am.nn.Dropout2d(bad)
    with pytest.raises(RuntimeError, match=r"dropout3d.*\(2, 3\)"):
        F.dropout3d(am.ones(2, 3, device=device))
    with pytest.raises(TypeError, match="floating-point"):
        F.dropout(am.tensor([1, 2], device=device))


def test_dropout_inplace(device):
    x = am.ones(1000, device=device)
    y = F.dropout(x, 0.5, inplace=True)
    assert y is x and set(np.unique(to_np(x)).tolist()) <= {0.0, 2.0}
    w = am.ones(10, device=device, requires_grad=True)
    h = w * 1
    z = F.dropout(h, 0.5, inplace=True)  # tracked: the write is recorded, gradient right
    z.sum().backward()
    np.testing.assert_array_equal(to_np(w.grad), to_np(z))


def test_dropout_gradcheck(device):
    x = am.tensor(rng.normal(size=(3, 4)), dtype=am.float64, device=device, requires_grad=True)

    def fn(t):
        am.manual_seed(5)  # the same mask on every evaluation
        return F.dropout2d(F.dropout(t, 0.3).reshape(3, 2, 2, 1), 0.4)

    assert am.autograd.gradcheck(fn, (x,))
    assert am.autograd.gradgradcheck(fn, (x,))


def test_alpha_dropout_keeps_mean_and_variance(device):
    n = 400_000
    x = am.tensor(rng.normal(size=n), dtype=am.float64, device=device)
    for p in [0.2, 0.5]:
        y = to_np(F.alpha_dropout(x, p, training=True))
        assert abs(y.mean()) < 0.01 and abs(y.std() - 1) < 0.01
        # dropped elements take one value, a * (-alpha') + a alpha' p, like PyTorch
        alpha_p = 1.7580993408473766
        a = 1 / np.sqrt((alpha_p ** 2 * p + 1) * (1 - p))
        dropped = -a * alpha_p + a * alpha_p * p
        frac = np.isclose(y, dropped, rtol=0, atol=1e-12).mean()
        assert abs(frac - p) < 5 * _sigma(p, n)
    p = 0.3
    xc = rng.normal(size=(50, 80, 6))
    y = to_np(F.feature_alpha_dropout(am.tensor(xc, dtype=am.float64, device=device), p, training=True))
    a = 1 / np.sqrt((alpha_p ** 2 * p + 1) * (1 - p))
    kept = np.isclose(y, a * xc + alpha_p * a * p, rtol=0, atol=1e-12).reshape(-1, 6)
    dropped = np.isclose(y, -a * alpha_p + a * alpha_p * p, rtol=0, atol=1e-12).reshape(-1, 6)
    assert np.all(kept.all(1) | dropped.all(1))  # whole channels kept or dropped
    assert abs(dropped.all(1).mean() - p) < 5 * _sigma(p, kept.shape[0])
    ty = to_np(F.alpha_dropout(x, 0.3))  # PyTorch's default training=False: identity
    np.testing.assert_array_equal(ty, to_np(x))


def test_dropout_warns_nothing_in_normal_use(device):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.dropout2d(am.ones(2, 3, 4, 4, device=device), 0.2)
        F.dropout1d(am.ones(3, 4, device=device), 0.2)
