"""``nn.init`` and the layers' default initialisation: distribution statistics against the
formulas (5-sigma bounds from the sample size), deterministic fills against PyTorch, and the
fan/gain helpers against PyTorch's."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import avila_ml as am
from avila_ml.nn import init

N = 120_000


def to_np(t):
    return np.asarray(t.detach().cpu().array)


def check_mean_std(a, mean, std, kurtosis=3.0):
    a = np.asarray(a, dtype=np.float64).ravel()
    n = a.size
    assert abs(a.mean() - mean) < 5 * std / math.sqrt(n), (a.mean(), mean)
    std_se = std * math.sqrt((kurtosis - 1) / (4 * n))
    assert abs(a.std() - std) < 5 * std_se, (a.std(), std)


@pytest.mark.parametrize("name,param", [
    ("linear", None), ("conv1d", None), ("conv2d", None), ("conv3d", None), ("sigmoid", None),
    ("conv_transpose2d", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
    ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5)), ("selu", None),
])
def test_calculate_gain_matches_torch(name, param):
    assert init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param), rel=1e-15)


def test_calculate_gain_errors():
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="negative_slope"):
        init.calculate_gain("leaky_relu", "x")


@pytest.mark.parametrize("shape", [(3, 4), (8, 4, 3), (8, 4, 3, 3), (5, 2, 3, 3, 3), (2, 3, 2, 2, 2, 2)])
def test_fans_match_torch(shape):
    ours = init._calculate_fan_in_and_fan_out(am.empty(*shape))
    assert ours == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(*shape))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(am.empty(5))


def test_uniform_and_normal_statistics(device):
    t = am.empty(N, dtype=am.float64, device=device)
    assert init.uniform_(t, -2.0, 4.0) is t
    a = to_np(t)
    assert a.min() >= -2.0 and a.max() < 4.0
    check_mean_std(a, 1.0, 6 / math.sqrt(12), kurtosis=1.8)
    init.normal_(t, 0.5, 3.0)
    check_mean_std(to_np(t), 0.5, 3.0)
    with pytest.raises(ValueError, match="uniform_"):
        init.uniform_(t, 1.0, 0.0)
    with pytest.raises(ValueError, match="normal_"):
        init.normal_(t, 0.0, -1.0)
    with pytest.raises(TypeError, match="Tensor"):
        init.normal_(np.zeros(3))


def test_fills_match_torch(device):
    for fn, tfn, shape, args in [
        (init.constant_, torch.nn.init.constant_, (3, 4), (0.25,)),
        (init.zeros_, torch.nn.init.zeros_, (3, 4), ()),
        (init.ones_, torch.nn.init.ones_, (3, 4), ()),
        (init.eye_, torch.nn.init.eye_, (3, 5), ()),
        (init.eye_, torch.nn.init.eye_, (5, 3), ()),
        (init.dirac_, torch.nn.init.dirac_, (4, 3, 3), ()),
        (init.dirac_, torch.nn.init.dirac_, (4, 6, 3, 2), ()),
        (init.dirac_, torch.nn.init.dirac_, (6, 2, 3, 3, 3), (2,)),
    ]:
        ours = fn(am.empty(*shape, device=device), *args)
        theirs = tfn(torch.empty(*shape), *args)
        np.testing.assert_array_equal(to_np(ours), theirs.numpy())
    with pytest.raises(ValueError, match="eye_"):
        init.eye_(am.empty(2, 2, 2))
    with pytest.raises(ValueError, match="dirac_"):
        init.dirac_(am.empty(2, 2))


def test_dirac_4d_is_identity_centre():
    w = to_np(init.dirac_(am.empty(3, 3, 3, 3, 3, 3)))
    assert w.sum() == 3 and all(w[i, i, 1, 1, 1, 1] == 1 for i in range(3))


@pytest.mark.parametrize("shape", [(300, 400), (64, 32, 3, 3)])
def test_xavier_statistics(shape, device):
    fan_in, fan_out = init._calculate_fan_in_and_fan_out(am.empty(*shape))
    gain = 1.7
    std = gain * math.sqrt(2 / (fan_in + fan_out))
    t = init.xavier_uniform_(am.empty(*shape, dtype=am.float64, device=device), gain=gain)
    a = to_np(t)
    assert np.abs(a).max() <= math.sqrt(3) * std
    check_mean_std(a, 0.0, std, kurtosis=1.8)
    check_mean_std(to_np(init.xavier_normal_(t, gain=gain)), 0.0, std)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("nonlinearity,a", [("leaky_relu", 0.0), ("leaky_relu", math.sqrt(5)), ("relu", 0.0),
                                            ("tanh", 0.0), ("linear", 0.0)])
def test_kaiming_statistics(mode, nonlinearity, a, device):
    shape = (256, 128, 2, 2)
    fan_in, fan_out = init._calculate_fan_in_and_fan_out(am.empty(*shape))
    fan = fan_in if mode == "fan_in" else fan_out
    std = torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
    t = init.kaiming_uniform_(am.empty(*shape, dtype=am.float64, device=device), a=a, mode=mode,
                              nonlinearity=nonlinearity)
    arr = to_np(t)
    assert np.abs(arr).max() <= math.sqrt(3) * std
    check_mean_std(arr, 0.0, std, kurtosis=1.8)
    check_mean_std(to_np(init.kaiming_normal_(t, a=a, mode=mode, nonlinearity=nonlinearity)), 0.0, std)


def test_kaiming_errors_and_zero_element():
    with pytest.raises(ValueError, match="mode 'fan_avg'"):
        init.kaiming_uniform_(am.empty(3, 3), mode="fan_avg")
    with pytest.warns(UserWarning, match="zero-element"):
        init.kaiming_uniform_(am.empty(0, 3))


@pytest.mark.parametrize("mean,std,a,b", [
    (0.0, 1.0, -2.0, 2.0),       # wide: normal proposals
    (0.0, 0.02, -0.04, 0.04),    # ViT-style
    (1.0, 2.0, 0.0, 10.0),       # asymmetric
    (0.0, 1.0, 2.0, 3.0),        # far tail, narrow: uniform proposals
    (0.0, 1.0, -0.1, 0.1),       # narrow around the mode
])
def test_trunc_normal_statistics(mean, std, a, b, device):
    t = init.trunc_normal_(am.empty(N, dtype=am.float64, device=device), mean, std, a, b)
    arr = to_np(t)
    assert arr.min() >= a and arr.max() <= b
    dist = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    check_mean_std(arr, dist.mean(), dist.std(), kurtosis=dist.stats(moments="k") + 3)
    # the whole distribution, not just two moments
    assert stats.kstest(arr[:20000], dist.cdf).pvalue > 1e-4


def test_trunc_normal_errors():
    with pytest.raises(ValueError, match="a <= b"):
        init.trunc_normal_(am.empty(3), a=1.0, b=0.0)
    with pytest.raises(ValueError, match="std > 0"):
        init.trunc_normal_(am.empty(3), std=0.0)


@pytest.mark.parametrize("shape", [(20, 50), (50, 20), (16, 4, 3, 3), (7, 7)])
def test_orthogonal(shape, device):
    gain = 2.5
    t = init.orthogonal_(am.empty(*shape, dtype=am.float64, device=device), gain=gain)
    w = to_np(t).reshape(shape[0], -1) / gain
    small = min(w.shape)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)
    with pytest.raises(ValueError, match="orthogonal_"):
        init.orthogonal_(am.empty(4))


def test_init_on_parameters_is_in_place_and_seeded(device):
    p = am.nn.Parameter(am.empty(50, 40, device=device))
    am.manual_seed(3)
    out = init.kaiming_normal_(p)
    assert out is p and p.requires_grad and p.is_leaf
    first = to_np(p).copy()
    am.manual_seed(3)
    init.kaiming_normal_(p)
    np.testing.assert_array_equal(to_np(p), first)
    for fn in [init.xavier_uniform_, init.trunc_normal_, init.orthogonal_, init.eye_, init.zeros_]:
        assert fn(p) is p


# ----------------------------------------------------------------------------- layer defaults
def test_linear_default_init_bounds(device):
    fan_in, out = 250, 400
    m = am.nn.Linear(fan_in, out, device=device, dtype=am.float64)
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) and PyTorch's bias rule
    w, b = to_np(m.weight), to_np(m.bias)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    check_mean_std(w, 0.0, bound / math.sqrt(3), kurtosis=1.8)
    assert np.abs(w).max() > 0.99 * bound  # the whole range is used
    tm = torch.nn.Linear(fan_in, out)
    assert np.abs(tm.weight.detach().numpy()).max() <= bound  # the same formula as PyTorch's


def test_bilinear_and_embedding_default_init(device):
    m = am.nn.Bilinear(100, 30, 40, device=device, dtype=am.float64)
    bound = 1 / math.sqrt(100)
    w, b = to_np(m.weight), to_np(m.bias)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    check_mean_std(w, 0.0, bound / math.sqrt(3), kurtosis=1.8)
    e = am.nn.Embedding(2000, 64, padding_idx=5, device=device, dtype=am.float64)
    arr = to_np(e.weight)
    assert (arr[5] == 0).all()
    check_mean_std(np.delete(arr, 5, axis=0), 0.0, 1.0)
