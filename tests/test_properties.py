"""Hypothesis property tests: broadcasting (add/mul/where) and reductions (sum/mean/amax/var)
over random shapes, dims and keepdim, against NumPy (forward) and PyTorch (gradients)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import avila_ml as am

# degenerate draws (empty slices, var of one element) warn in NumPy and PyTorch alike: expected
pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:.*degrees of freedom is <= 0:UserWarning")]

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "mul": (lambda a, b: a * b, np.multiply),
}


def _np(t):
    return t.detach().cpu().numpy()


def _data(seed, shape):
    return np.random.default_rng(seed).uniform(-2, 2, size=shape)


@pytest.mark.parametrize("name", list(BINARY))
@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=0, max_side=3),
       seed=st.integers(0, 2 ** 16))
def test_broadcasting_binary_ops(name, shapes, seed, device):
    op, np_op = BINARY[name]
    sa, sb = shapes.input_shapes
    a, b = _data(seed, sa), _data(seed + 1, sb)
    x = am.tensor(a, device=device, requires_grad=True)
    y = am.tensor(b, device=device, requires_grad=True)
    out = op(x, y)
    want = np_op(a, b)
    assert out.shape == want.shape == shapes.result_shape
    np.testing.assert_allclose(_np(out), want, rtol=1e-13, atol=0)

    g = _data(seed + 2, want.shape)
    out.backward(am.tensor(g, device=device))
    tx, ty = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    op(tx, ty).backward(torch.tensor(g))
    assert x.grad.shape == sa and y.grad.shape == sb
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(y.grad), ty.grad.numpy(), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=4, min_side=0, max_side=3),
       seed=st.integers(0, 2 ** 16))
def test_broadcasting_where(shapes, seed, device):
    sc, sa, sb = shapes.input_shapes
    rng = np.random.default_rng(seed)
    cond = rng.uniform(size=sc) > 0.5
    a, b = _data(seed + 1, sa), _data(seed + 2, sb)
    x = am.tensor(a, device=device, requires_grad=True)
    y = am.tensor(b, device=device, requires_grad=True)
    out = am.where(am.tensor(cond, device=device), x, y)
    want = np.where(cond, a, b)
    assert out.shape == want.shape
    np.testing.assert_array_equal(_np(out), want)

    g = _data(seed + 3, want.shape)
    out.backward(am.tensor(g, device=device))
    tx, ty = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    torch.where(torch.tensor(cond), tx, ty).backward(torch.tensor(g))
    assert x.grad.shape == sa and y.grad.shape == sb
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(y.grad), ty.grad.numpy(), rtol=1e-12, atol=1e-12)


@st.composite
def shape_and_dims(draw, min_side=0):
    shape = draw(array_shapes(min_dims=0, max_dims=4, min_side=min_side, max_side=4))
    nd = len(shape)
    if nd and draw(st.booleans()):
        dims = draw(st.lists(st.integers(-nd, nd - 1), min_size=1, max_size=nd,
                             unique_by=lambda d: d % nd))
        dim = dims[0] if len(dims) == 1 and draw(st.booleans()) else tuple(dims)
    else:
        dim = None
    return shape, dim, draw(st.booleans())


def _axes(dim, nd):
    if dim is None:
        return tuple(range(nd))
    return tuple(d % nd for d in ((dim,) if isinstance(dim, int) else dim))


REDUCTIONS = {
    # name: (avila call, torch call, numpy call)
    "sum": (lambda x, d, k: am.sum(x, d, k), lambda x, d, k: torch.sum(x, d, keepdim=k) if d is not None else (torch.sum(x) if not k else torch.sum(x, tuple(range(x.ndim)), keepdim=True)),
            lambda a, ax, k: np.sum(a, axis=ax, keepdims=k)),
    "mean": (lambda x, d, k: am.mean(x, d, k), lambda x, d, k: torch.mean(x, d if d is not None else tuple(range(x.ndim)), keepdim=k),
             lambda a, ax, k: np.mean(a, axis=ax, keepdims=k)),
    "amax": (lambda x, d, k: am.amax(x, d if d is not None else (), k), lambda x, d, k: torch.amax(x, d if d is not None else (), keepdim=k),
             lambda a, ax, k: np.max(a, axis=ax, keepdims=k)),
    "var": (lambda x, d, k: am.var(x, d, keepdim=k), lambda x, d, k: torch.var(x, d, keepdim=k),
            lambda a, ax, k: np.var(a, axis=ax, keepdims=k, ddof=1)),
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
@SETTINGS
@given(case=shape_and_dims(), seed=st.integers(0, 2 ** 16))
def test_reductions(name, case, seed, device):
    shape, dim, keepdim = case
    ours_fn, torch_fn, np_fn = REDUCTIONS[name]
    a = _data(seed, shape)
    ax = _axes(dim, len(shape))
    n = int(np.prod([shape[i] for i in ax])) if shape else 1
    x = am.tensor(a, device=device, requires_grad=True)
    tx = torch.tensor(a, requires_grad=True)
    if name == "amax" and n == 0 and a.size == 0:
        with pytest.raises(RuntimeError, match="amax"):
            ours_fn(x, dim, keepdim)
        return
    out = ours_fn(x, dim, keepdim)
    ref = torch_fn(tx, dim, keepdim)
    assert out.shape == tuple(ref.shape)
    with np.errstate(all="ignore"):
        want = np_fn(a, ax, keepdim) if (name != "var" or n > 1) else np.asarray(ref.detach().numpy())
    np.testing.assert_allclose(_np(out), want, rtol=1e-12, atol=1e-13, equal_nan=True)
    np.testing.assert_allclose(_np(out), ref.detach().numpy(), rtol=1e-12, atol=1e-13, equal_nan=True)

    g = _data(seed + 1, tuple(ref.shape))
    out.backward(am.tensor(g, device=device))
    ref.backward(torch.tensor(g))
    assert x.grad.shape == shape
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-11, atol=1e-12, equal_nan=True)


@SETTINGS
@given(case=shape_and_dims(min_side=1), seed=st.integers(0, 2 ** 16))
def test_softmax_rows_sum_to_one_and_match_torch(case, seed, device):
    shape, dim, _ = case
    if not shape:
        return
    d = dim if isinstance(dim, int) else (dim[0] if dim else -1)
    a = _data(seed, shape) * 10
    x = am.tensor(a, device=device, requires_grad=True)
    tx = torch.tensor(a, requires_grad=True)
    s = am.softmax(x, d)
    np.testing.assert_allclose(_np(s.sum(d)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(_np(s), torch.softmax(tx, d).detach().numpy(), rtol=1e-12, atol=1e-15)
    g = _data(seed + 1, shape)
    am.log_softmax(x, d).backward(am.tensor(g, device=device))
    torch.log_softmax(tx, d).backward(torch.tensor(g))
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
