"""``avila_ml.linalg`` against ``torch.linalg``: values, gradients for a random upstream
gradient (float64), and gradcheck/gradgradcheck (finite differences). Inputs are well
conditioned: SPD matrices for cholesky/eigh, distinct singular values for svd, and losses
that do not depend on the signs of singular/eigen-vectors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml import linalg as LA
from avila_ml.autograd import gradcheck, gradgradcheck

RNG = np.random.default_rng(16)


def _well(shape, rng=RNG):
    """Random matrices with singular values in [1, 3] (well conditioned, distinct)."""
    a = rng.standard_normal(shape)
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    k = min(shape[-2:])
    s = np.linspace(1.0, 3.0, k) + rng.uniform(0, 0.1, size=shape[:-2] + (k,))
    return (u * s[..., None, :]) @ vh


def _spd(shape, rng=RNG):
    a = rng.standard_normal(shape)
    return a @ np.swapaxes(a, -1, -2) + shape[-1] * np.eye(shape[-1])


def _pair(data):
    return am.tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)


def _both(fn_am, fn_t, *datas, upstream_seed=0):
    """Values and gradients of fn on each library, with the same random upstream gradient."""
    ams, ts = zip(*[_pair(d) for d in datas])
    ya, yt = fn_am(*ams), fn_t(*ts)
    ya = ya if isinstance(ya, tuple) else (ya,)
    yt = yt if isinstance(yt, tuple) else (yt,)
    rng = np.random.default_rng(upstream_seed)
    ups = [rng.standard_normal(tuple(t.shape)) for t in yt]
    for a, t in zip(ya, yt):
        np.testing.assert_allclose(a.detach().numpy(), t.detach().numpy(), rtol=1e-9, atol=1e-10)
    am.autograd.backward(list(ya), [am.tensor(u) for u in ups])
    torch.autograd.backward(list(yt), [torch.tensor(u) for u in ups])
    for a, t in zip(ams, ts):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-8, atol=1e-10)


def _checks(fn, *datas):
    leaves = tuple(am.tensor(d, requires_grad=True) for d in datas)
    assert gradcheck(fn, leaves)
    assert gradgradcheck(fn, leaves)


# ----------------------------------------------------------------------- inv, det, solve
@pytest.mark.parametrize("shape", [(3, 3), (2, 3, 3), (1, 1)])
def test_inv(shape):
    a = _well(shape)
    _both(LA.inv, torch.linalg.inv, a)
    _checks(LA.inv, a)


@pytest.mark.parametrize("shape", [(3, 3), (2, 2, 2)])
def test_det_and_slogdet(shape):
    a = _well(shape)
    a[..., 0, :] *= -1  # negative determinants too
    _both(LA.det, torch.linalg.det, a)
    _both(lambda x: LA.slogdet(x).logabsdet, lambda x: torch.linalg.slogdet(x).logabsdet, a)
    s_am, s_t = LA.slogdet(am.tensor(a)).sign, torch.linalg.slogdet(torch.tensor(a)).sign
    np.testing.assert_array_equal(s_am.numpy(), s_t.numpy())
    _checks(LA.det, a)
    _checks(lambda x: LA.slogdet(x).logabsdet, a)


@pytest.mark.parametrize("a_shape,b_shape", [((3, 3), (3, 2)), ((3, 3), (3,)), ((2, 3, 3), (2, 3)),
                                             ((2, 3, 3), (3, 1)), ((3, 3), (2, 3, 2))])
def test_solve(a_shape, b_shape):
    a, b = _well(a_shape), RNG.standard_normal(b_shape)
    _both(LA.solve, torch.linalg.solve, a, b)
    _checks(LA.solve, a, b)


def test_solve_right():
    a, b = _well((3, 3)), RNG.standard_normal((2, 3))
    _both(lambda x, y: LA.solve(x, y, left=False), lambda x, y: torch.linalg.solve(x, y, left=False), a, b)


# ------------------------------------------------------------------------------ cholesky
@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4)])
def test_cholesky(shape):
    a = _spd(shape)
    _both(LA.cholesky, torch.linalg.cholesky, a)
    _both(lambda x: LA.cholesky(x, upper=True), lambda x: torch.linalg.cholesky(x, upper=True), a)
    # finite differences over symmetric inputs: f(X) = cholesky(X X^T + n I)
    x = RNG.standard_normal(shape)
    n = shape[-1]
    _checks(lambda t: LA.cholesky(t @ t.mT + n * am.eye(n, dtype=am.float64)), x)


def test_cholesky_not_positive_definite_raises():
    with pytest.raises(RuntimeError, match="cholesky"):
        LA.cholesky(am.tensor([[1.0, 2.0], [2.0, 1.0]]))


# ------------------------------------------------------------------------------------ qr
@pytest.mark.parametrize("shape", [(4, 3), (3, 3), (2, 5, 3), (3, 5)])
def test_qr(shape):
    a = _well(shape)
    _both(lambda x: tuple(LA.qr(x)), lambda x: tuple(torch.linalg.qr(x)), a)
    _checks(lambda x: tuple(LA.qr(x)), a)


def test_qr_modes():
    a = _well((4, 3))
    Q, R = LA.qr(am.tensor(a), mode="complete")
    Qt, Rt = torch.linalg.qr(torch.tensor(a), mode="complete")
    np.testing.assert_allclose(Q.numpy(), Qt.numpy(), atol=1e-12)
    np.testing.assert_allclose(R.numpy(), Rt.numpy(), atol=1e-12)
    np.testing.assert_allclose(LA.qr(am.tensor(a), mode="r").R.numpy(), Rt[:3].numpy(), atol=1e-12)


# ----------------------------------------------------------------------------------- svd
def _svd_invariant(lib):
    """A loss-shaped function of U, S, Vh that does not depend on the vectors' signs."""
    def f(x):
        U, S, Vh = (LA.svd(x, full_matrices=False) if lib == "am" else torch.linalg.svd(x, full_matrices=False))
        return S, (U * U) @ (Vh * Vh)[..., : U.shape[-1]], U @ Vh
    return f


@pytest.mark.parametrize("shape", [(3, 3), (4, 3), (3, 4), (2, 3, 2)])
def test_svd(shape):
    a = _well(shape)
    _both(_svd_invariant("am"), _svd_invariant("torch"), a)
    _checks(_svd_invariant("am"), a)


def test_svd_values_match_torch_and_svdvals():
    a = _well((4, 3))
    U, S, Vh = LA.svd(am.tensor(a))
    Ut, St, Vht = torch.linalg.svd(torch.tensor(a))
    np.testing.assert_allclose(S.numpy(), St.numpy(), rtol=1e-12)
    np.testing.assert_allclose((U[:, :3] * S) @ Vh, a, atol=1e-12)
    assert U.shape == tuple(Ut.shape) and Vh.shape == tuple(Vht.shape)
    _both(LA.svdvals, torch.linalg.svdvals, a)
    _checks(LA.svdvals, a)
    with am.no_grad():
        np.testing.assert_allclose(LA.svdvals(am.tensor(a)).numpy(), St.numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------------- eigh
def _eigh_invariant(lib):
    def f(x):
        w, V = LA.eigh(x) if lib == "am" else torch.linalg.eigh(x)
        return w, V * V, V @ (V.mT if lib == "am" else V.mT) * 0.5
    return f


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4)])
def test_eigh(shape):
    a = _spd(shape)
    _both(_eigh_invariant("am"), _eigh_invariant("torch"), a)
    _both(LA.eigvalsh, torch.linalg.eigvalsh, a)
    x = RNG.standard_normal(shape)
    sym = (lambda t: _eigh_invariant("am")(t + t.mT))
    _checks(sym, x)
    _checks(lambda t: LA.eigvalsh(t + t.mT), x)


def test_eigh_upper():
    a = _spd((3, 3))
    _both(lambda x: LA.eigh(x, UPLO="U").eigenvalues, lambda x: torch.linalg.eigh(x, UPLO="U").eigenvalues, a)


# --------------------------------------------------------------------------------- lstsq
@pytest.mark.parametrize("a_shape,b_shape", [((5, 3), (5, 2)), ((3, 5), (3, 2)), ((2, 4, 2), (2, 4, 1)),
                                             ((3, 3), (3, 1))])
def test_lstsq(a_shape, b_shape):
    a, b = _well(a_shape), RNG.standard_normal(b_shape)
    _both(lambda x, y: LA.lstsq(x, y).solution, lambda x, y: torch.linalg.lstsq(x, y).solution, a, b)
    _checks(lambda x, y: LA.lstsq(x, y).solution, a, b)
    r_am, r_t = LA.lstsq(am.tensor(a), am.tensor(b)), torch.linalg.lstsq(torch.tensor(a), torch.tensor(b))
    assert r_am.rank.tolist() == r_t.rank.tolist()
    assert tuple(r_am.residuals.shape) == tuple(r_t.residuals.shape)


# --------------------------------------------------------------------------------- norms
@pytest.mark.parametrize("ord", [2, 1, 3, 0.5, float("inf"), -float("inf")])
@pytest.mark.parametrize("dim", [None, 1, (0, 1)])
def test_vector_norm(ord, dim):
    x = RNG.standard_normal((3, 4))
    _both(lambda t: LA.vector_norm(t, ord, dim), lambda t: torch.linalg.vector_norm(t, ord, dim), x)
    _checks(lambda t: LA.vector_norm(t, ord, dim), x)


@pytest.mark.parametrize("ord", ["fro", "nuc", 2, -2, 1, -1, float("inf"), -float("inf")])
def test_matrix_norm(ord):
    a = _well((2, 3, 4))
    _both(lambda t: LA.matrix_norm(t, ord), lambda t: torch.linalg.matrix_norm(t, ord), a)
    _both(lambda t: LA.matrix_norm(t, ord, dim=(0, 2), keepdim=True),
          lambda t: torch.linalg.matrix_norm(t, ord, dim=(0, 2), keepdim=True), a)
    _checks(lambda t: LA.matrix_norm(t, ord), a)


@pytest.mark.parametrize("kw", [{}, {"ord": 2}, {"ord": "nuc"}, {"dim": 0}, {"dim": (0, 1)}, {"ord": 1, "dim": 1}])
def test_norm(kw):
    a = _well((3, 4))
    _both(lambda t: LA.norm(t, **kw), lambda t: torch.linalg.norm(t, **kw), a)
    v = RNG.standard_normal(5)
    _both(lambda t: LA.norm(t, ord=3), lambda t: torch.linalg.norm(t, ord=3), v)


def test_errors_name_the_op():
    with pytest.raises(RuntimeError, match="linalg.inv.*square"):
        LA.inv(am.ones(2, 3))
    with pytest.raises(RuntimeError, match="linalg.solve: incompatible"):
        LA.solve(am.eye(3), am.ones(2, 2))
    with pytest.raises(RuntimeError, match="linalg.inv: .*singular"):
        LA.inv(am.zeros(2, 2))
    with pytest.raises(RuntimeError, match="linalg.det.*floating"):
        LA.det(am.ones(2, 2, dtype=am.int64))
