"""Higher derivatives: d2/dx2 and d3/dx3 of composite functions, Hessian-vector products of a
small MLP loss, and ``am.autograd.functional`` (jacobian, hessian, hvp, vjp), all against
``torch.autograd`` in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avila_ml as am

RTOL, ATOL = 1e-10, 1e-12


def _np(t):
    return t.detach().cpu().numpy()


def _close(ours, theirs):
    np.testing.assert_allclose(_np(ours), theirs.detach().numpy(), rtol=RTOL, atol=ATOL)


def _composite(lib):
    return lambda x: lib.sin(x) * lib.exp(x * x) / (1 + x * x)


def _tanh_chain(lib):
    return lambda x: lib.tanh(lib.tanh(x) * 2 - x)


def _log_sigmoid_mix(lib):
    return lambda x: lib.log1p(lib.exp(-x)) + lib.sigmoid(x) ** 3 - lib.erf(x) * x


def _rational(lib):
    return lambda x: (x ** 3 - 2 * x) / (x * x + 1.5) + lib.sqrt(x * x + 1)


SCALAR_FUNS = {"sin*exp(x^2)/(1+x^2)": _composite, "tanh(2tanh(x)-x)": _tanh_chain,
               "log1p(e^-x)+sigmoid^3-x erf": _log_sigmoid_mix, "rational+sqrt": _rational}


def _derivatives(lib, f, x, order):
    """[f(x), f'(x), ..., f^(order)(x)] elementwise, by repeated grad with create_graph."""
    grad = am.autograd.grad if lib is am else torch.autograd.grad
    out = [f(x)]
    y = out[0]
    for _ in range(order):
        (y,) = grad(y.sum(), x, create_graph=True)
        out.append(y)
    return out


@pytest.mark.parametrize("name", list(SCALAR_FUNS))
def test_second_and_third_derivatives(name, device):
    a = np.array([-1.3, -0.4, 0.2, 0.9, 1.6])
    x = am.tensor(a, device=device, requires_grad=True)
    tx = torch.tensor(a, requires_grad=True)
    ours = _derivatives(am, SCALAR_FUNS[name](am), x, 3)
    theirs = _derivatives(torch, SCALAR_FUNS[name](torch), tx, 3)
    for k, (o, t) in enumerate(zip(ours, theirs)):
        assert o.requires_grad, f"derivative {k} lost its graph"
        _close(o, t)


def test_closed_form_second_derivative_of_tanh(device):
    # d/dx tanh = 1 - t^2, d2/dx2 = -2 t (1 - t^2), d3/dx3 = -2 (1 - t^2)(1 - 3 t^2)
    a = np.linspace(-2, 2, 7)
    x = am.tensor(a, device=device, requires_grad=True)
    _, d1, d2, d3 = _derivatives(am, am.tanh, x, 3)
    t = np.tanh(a)
    np.testing.assert_allclose(_np(d1), 1 - t ** 2, rtol=1e-12)
    np.testing.assert_allclose(_np(d2), -2 * t * (1 - t ** 2), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_np(d3), -2 * (1 - t ** 2) * (1 - 3 * t ** 2), rtol=1e-11, atol=1e-14)


def _softmax_composite(lib):
    w = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.3, -0.7, 1.1]])

    def f(x):
        W = lib.tensor(w, dtype=x.dtype, device=x.device) if lib is am else torch.tensor(w)
        p = lib.softmax(x * W, dim=-1)
        return (p * lib.log_softmax(x, dim=-1)).sum(-1) + lib.logsumexp(x * x, dim=-1)
    return f


def test_softmax_composite_third_order_directional(device):
    """Third directional derivative d3/dt3 f(x + t v) at t=0, by nested grads (vector-Hessian
    products), for a softmax / log_softmax / logsumexp composite."""
    rng = np.random.default_rng(3)
    a, v = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    results = []
    for lib, grad in ((am, am.autograd.grad), (torch, torch.autograd.grad)):
        x = (am.tensor(a, device=device, requires_grad=True) if lib is am else torch.tensor(a, requires_grad=True))
        vv = am.tensor(v, device=device) if lib is am else torch.tensor(v)
        y = _softmax_composite(lib)(x).sum()
        (g1,) = grad(y, x, create_graph=True)
        (g2,) = grad((g1 * vv).sum(), x, create_graph=True)
        (g3,) = grad((g2 * vv).sum(), x, create_graph=True)
        results.append([g1, g2, g3])
    for o, t in zip(*results):
        _close(o, t)


def _mlp_loss(lib, x, y, params):
    W1, b1, W2, b2 = params
    h = lib.tanh(x @ W1 + b1)
    out = h @ W2 + b2
    return ((out - y) ** 2).mean()


def _mlp_data():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    params = [rng.normal(size=(3, 4)) * 0.7, rng.normal(size=(4,)) * 0.1, rng.normal(size=(4, 2)) * 0.7,
              rng.normal(size=(2,)) * 0.1]
    vs = [rng.normal(size=p.shape) for p in params]
    return x, y, params, vs


def test_mlp_hessian_vector_product_matches_torch(device):
    x, y, params, vs = _mlp_data()
    ours_p = [am.tensor(p, device=device, requires_grad=True) for p in params]
    torch_p = [torch.tensor(p, requires_grad=True) for p in params]

    loss = _mlp_loss(am, am.tensor(x, device=device), am.tensor(y, device=device), ours_p)
    gs = am.autograd.grad(loss, ours_p, create_graph=True)
    dot = sum((g * am.tensor(v, device=device)).sum() for g, v in zip(gs, vs))
    hv = am.autograd.grad(dot, ours_p)

    tloss = _mlp_loss(torch, torch.tensor(x), torch.tensor(y), torch_p)
    tgs = torch.autograd.grad(tloss, torch_p, create_graph=True)
    tdot = sum((g * torch.tensor(v)).sum() for g, v in zip(tgs, vs))
    thv = torch.autograd.grad(tdot, torch_p)

    _close(loss, tloss)
    for o, t in zip(gs, tgs):
        _close(o, t)
    for o, t in zip(hv, thv):
        _close(o, t)


def test_mlp_hvp_via_functional_matches_torch(device):
    x, y, params, vs = _mlp_data()
    ax, ay = am.tensor(x, device=device), am.tensor(y, device=device)
    tx, ty = torch.tensor(x), torch.tensor(y)
    out, hv = am.autograd.functional.hvp(lambda *p: _mlp_loss(am, ax, ay, p),
                                         tuple(am.tensor(p, device=device) for p in params),
                                         tuple(am.tensor(v, device=device) for v in vs))
    tout, thv = torch.autograd.functional.hvp(lambda *p: _mlp_loss(torch, tx, ty, p),
                                              tuple(torch.tensor(p) for p in params),
                                              tuple(torch.tensor(v) for v in vs))
    _close(out, tout)
    for o, t in zip(hv, thv):
        _close(o, t)


# ----------------------------------------------------------------- autograd.functional
def test_jacobian_single_input(device):
    a = np.array([0.3, -1.1, 2.0])

    def f(lib):
        return lambda x: lib.stack([x[0] * x[1], lib.sin(x[2]) * x[0], (x * x).sum(), lib.exp(x[1])])

    J = am.autograd.functional.jacobian(f(am), am.tensor(a, device=device))
    tJ = torch.autograd.functional.jacobian(f(torch), torch.tensor(a))
    assert J.shape == tuple(tJ.shape) == (4, 3)
    _close(J, tJ)


def test_jacobian_several_inputs_and_matrix_output(device):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 3)), rng.normal(size=(3,))

    def f(lib):
        return lambda x, w: lib.tanh(x * w) @ w

    Js = am.autograd.functional.jacobian(f(am), (am.tensor(a, device=device), am.tensor(b, device=device)))
    tJs = torch.autograd.functional.jacobian(f(torch), (torch.tensor(a), torch.tensor(b)))
    assert len(Js) == 2
    for o, t in zip(Js, tJs):
        assert o.shape == tuple(t.shape)
        _close(o, t)


def test_hessian(device):
    a = np.array([0.4, -0.8, 1.2])

    def f(lib):
        return lambda x: (lib.sin(x) * x.prod() + lib.exp(x * 0.5)).sum() + lib.logsumexp(x, 0)

    H = am.autograd.functional.hessian(f(am), am.tensor(a, device=device))
    tH = torch.autograd.functional.hessian(f(torch), torch.tensor(a))
    assert H.shape == (3, 3)
    _close(H, tH)
    np.testing.assert_allclose(_np(H), _np(H).T, rtol=1e-12, atol=1e-14)


def test_hvp_and_vjp(device):
    a, v = np.array([0.5, -1.5, 2.5]), np.array([1.0, 0.5, -2.0])

    def f(lib):
        return lambda x: (x ** 4).sum() * lib.cos(x).sum()

    out, hv = am.autograd.functional.hvp(f(am), am.tensor(a, device=device), am.tensor(v, device=device))
    tout, thv = torch.autograd.functional.hvp(f(torch), torch.tensor(a), torch.tensor(v))
    _close(out, tout)
    _close(hv, thv)

    def g(lib):
        return lambda x: lib.sin(x) * x

    out, vj = am.autograd.functional.vjp(g(am), am.tensor(a, device=device), am.tensor(v, device=device))
    tout, tvj = torch.autograd.functional.vjp(g(torch), torch.tensor(a), torch.tensor(v))
    _close(out, tout)
    _close(vj, tvj)


def test_higher_order_through_shape_and_index_ops(device):
    """Second derivatives flow through views, gathers, pads and matmuls."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 4))
    idx = np.array([[0, 3], [1, 1], [2, 0]])

    def f(lib, x):
        i = am.tensor(idx, device=device) if lib is am else torch.tensor(idx)
        p = am.nn.functional.pad(x, (1, 1), mode="reflect") if lib is am else \
            torch.nn.functional.pad(x[None], (1, 1), mode="reflect")[0]
        g = lib.gather(p.T[1:5].T, 1, i)
        return (lib.tanh(g @ g.T) * x[:, :3].sum(-1)).sum()

    results = []
    for lib, grad in ((am, am.autograd.grad), (torch, torch.autograd.grad)):
        x = am.tensor(a, device=device, requires_grad=True) if lib is am else torch.tensor(a, requires_grad=True)
        (g1,) = grad(f(lib, x), x, create_graph=True)
        (g2,) = grad((g1 * g1).sum(), x, create_graph=True)
        (g3,) = grad(g2.sum(), x)
        results.append((g1, g2, g3))
    for o, t in zip(*results):
        _close(o, t)
