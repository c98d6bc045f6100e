"""``nn.utils``: gradient clipping and parameter/vector conversion against PyTorch."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import avila_ml as am

U = am.nn.utils
rng = np.random.default_rng(3)


def to_np(t):
    return np.asarray(t.detach().cpu().array)


def twin_params(device, shapes=((3, 4), (4,), (2, 2, 2)), scale=1.0, none_at=None, dtype="float64"):
    """The same parameters and gradients in both libraries."""
    ours, theirs = [], []
    for i, s in enumerate(shapes):
        data = rng.normal(size=s).astype(dtype)
        p = am.nn.Parameter(am.tensor(data, device=device))
        tp = torch.nn.Parameter(torch.tensor(data))
        if i != none_at:
            g = (rng.normal(size=s) * scale).astype(dtype)
            p.grad = am.tensor(g, device=device)
            tp.grad = torch.tensor(g)
        ours.append(p)
        theirs.append(tp)
    return ours, theirs


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0, 0.5, "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, device):
    ours, theirs = twin_params(device, none_at=1)
    nt = float(norm_type)
    total = U.clip_grad_norm_(iter(ours), max_norm, norm_type=nt)  # a generator is accepted
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=nt)
    assert isinstance(total, am.Tensor) and total.shape == () and total.dtype == am.float64
    np.testing.assert_allclose(float(total), float(ttotal), rtol=1e-13)
    for p, tp in zip(ours, theirs):
        if tp.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(to_np(p.grad), tp.grad.numpy(), rtol=1e-13, atol=1e-15)


def test_clip_grad_norm_single_tensor_empty_and_errors(device):
    p = am.nn.Parameter(am.zeros(2, dtype=am.float64, device=device))
    p.grad = am.tensor([3.0, 4.0], dtype=am.float64, device=device)
    assert float(U.clip_grad_norm_(p, 1.0)) == 5.0
    np.testing.assert_allclose(to_np(p.grad), [0.6, 0.8], rtol=1e-6)
    empty = U.clip_grad_norm_([am.nn.Parameter(am.zeros(2))], 1.0)
    assert float(empty) == 0.0
    p.grad = am.tensor([math.inf, 1.0], dtype=am.float64, device=device)
    with pytest.raises(RuntimeError, match="non-finite"):
        U.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    tp = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    tp.grad = torch.tensor([math.inf, 1.0], dtype=torch.float64)
    total = U.clip_grad_norm_([p], 1.0)
    ttotal = torch.nn.utils.clip_grad_norm_([tp], 1.0)
    assert math.isinf(float(total)) and math.isinf(float(ttotal))
    np.testing.assert_array_equal(to_np(p.grad), tp.grad.numpy())  # same NaN/0 pattern as PyTorch
    with pytest.raises(ValueError, match="max_norm"):
        U.clip_grad_norm_([p], -1.0)
    with pytest.raises(TypeError, match="iterable"):
        U.clip_grad_norm_(3, 1.0)


def test_clip_grad_norm_float32_and_total_norm(device):
    ours, theirs = twin_params(device, scale=10.0, dtype="float32")
    total = U.get_total_norm([p.grad for p in ours])
    ttotal = torch.nn.utils.get_total_norm([tp.grad for tp in theirs])
    assert total.dtype == am.float32
    np.testing.assert_allclose(float(total), float(ttotal), rtol=1e-6)
    U.clip_grads_with_norm_(ours, 2.0, total)
    torch.nn.utils.clip_grads_with_norm_(theirs, 2.0, ttotal)
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(to_np(p.grad), tp.grad.numpy(), rtol=1e-6)


def test_clip_grad_value_matches_torch(device):
    ours, theirs = twin_params(device, scale=3.0, none_at=0)
    assert U.clip_grad_value_(ours, 0.7) is None
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for p, tp in zip(ours, theirs):
        if tp.grad is not None:
            np.testing.assert_array_equal(to_np(p.grad), tp.grad.numpy())
    with pytest.raises(ValueError, match="clip_value"):
        U.clip_grad_value_(ours, -1.0)


def test_clipping_a_model_after_backward(device):
    m = am.nn.Sequential(am.nn.Linear(4, 8), am.nn.Tanh(), am.nn.Linear(8, 1)).to(device)
    m(am.tensor(rng.normal(size=(16, 4)) * 100, dtype=am.float32, device=device)).sum().backward()
    before = float(U.clip_grad_norm_(m.parameters(), 0.1))
    after = float(U.get_total_norm([p.grad for p in m.parameters()]))
    assert before > 0.1 and after == pytest.approx(0.1, rel=1e-4)


def test_parameters_to_vector_and_back_match_torch(device):
    ours, theirs = twin_params(device)
    v = U.parameters_to_vector(ours)
    tv = torch.nn.utils.parameters_to_vector(theirs)
    np.testing.assert_array_equal(to_np(v), tv.detach().numpy())
    # differentiable, like PyTorch's
    w = am.tensor(rng.normal(size=v.shape), dtype=am.float64, device=device)
    (v * w).sum().backward()
    np.testing.assert_array_equal(np.concatenate([to_np(p.grad).ravel() for p in ours]),
                                  to_np(w) + np.concatenate([tp.grad.numpy().ravel() for tp in theirs]))
    new = rng.normal(size=v.shape)
    nv = am.tensor(new, dtype=am.float64, device=device)
    ids = [id(p) for p in ours]
    assert U.vector_to_parameters(nv, ours) is None
    torch.nn.utils.vector_to_parameters(torch.tensor(new), theirs)
    assert [id(p) for p in ours] == ids
    for p, tp in zip(ours, theirs):
        assert p.shape == tuple(tp.shape)
        np.testing.assert_array_equal(to_np(p), tp.detach().numpy())
    with am.no_grad():
        nv.zero_()
    assert float(ours[0].abs().sum()) == 0.0  # shares memory with vec, as in PyTorch


def test_vector_conversion_errors(device):
    ours, _ = twin_params(device)
    with pytest.raises(TypeError, match="expected vec to be a Tensor"):
        U.vector_to_parameters(np.zeros(24), ours)
    with pytest.raises(ValueError, match="24"):
        U.vector_to_parameters(am.zeros(5, dtype=am.float64, device=device), ours)
    with pytest.raises(ValueError, match="1-d"):
        U.vector_to_parameters(am.zeros(4, 6, dtype=am.float64, device=device), ours)
    with pytest.raises(ValueError, match="no parameters"):
        U.parameters_to_vector([])
