"""Regression tests for issue 15 (no silent wrong result, a clear error for every bad input),
each compared with PyTorch 2.13: NaN locality in adaptive pooling, float16 accumulation,
scatter semantics, index range checks, argument checks, finite gradients, empty batches,
optimizer state dicts, checkpoints killed mid-save."""
import math
import warnings

import numpy as np
import pytest
import torch

import avila_ml as am
import avila_ml.nn.functional as F
import torch.nn.functional as TF


def _np(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t.detach().cpu())


def assert_same(ours, theirs, rtol=1e-6, atol=1e-6):
    assert ours.dtype.name == str(theirs.dtype).replace("torch.", ""), (ours.dtype, theirs.dtype)
    assert tuple(ours.shape) == tuple(theirs.shape), (ours.shape, theirs.shape)
    a, b = _np(ours).astype(np.float64), _np(theirs).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


# -- adaptive average pooling: one NaN/inf stays in its own windows ---------------------------

def test_adaptive_avg_pool1d_issue_example():
    x = np.arange(9.0)
    x[0] = np.nan
    ours = F.adaptive_avg_pool1d(am.tensor(x).reshape(1, 1, 9), 4)
    theirs = TF.adaptive_avg_pool1d(torch.tensor(x).reshape(1, 1, 9), 4)
    assert_same(ours, theirs)
    assert _np(ours).ravel()[1:].tolist() == [3.0, 5.0, 7.0]


@pytest.mark.parametrize("d, shape, out", [
    (1, (2, 3, 11), (4,)), (2, (2, 3, 7, 9), (3, 4)), (3, (1, 2, 5, 6, 7), (2, 3, 4)), (2, (1, 1, 5, 5), (5, 2)),
])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_adaptive_avg_pool_nan_inf_locality(d, shape, out, bad):
    rng = np.random.default_rng(d)
    x = rng.standard_normal(shape)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 2, replace=False)] = bad
    a = am.tensor(x, requires_grad=True)
    t = torch.tensor(x, requires_grad=True)
    ya = getattr(F, f"adaptive_avg_pool{d}d")(a, out)
    yt = getattr(TF, f"adaptive_avg_pool{d}d")(t, out)
    assert_same(ya, yt, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(yt.shape)
    ya.backward(am.tensor(g))
    yt.backward(torch.tensor(g))
    assert_same(a.grad, t.grad, rtol=1e-12, atol=1e-12)


def test_adaptive_avg_pool_double_backward():
    x = am.tensor(np.random.default_rng(0).standard_normal((1, 2, 7, 5)), requires_grad=True)
    assert am.autograd.gradcheck(lambda v: F.adaptive_avg_pool2d(v, (3, 2)) ** 2, (x,))
    assert am.autograd.gradgradcheck(lambda v: F.adaptive_avg_pool2d(v, (3, 2)) ** 2, (x,))


def test_interpolate_area_nan_locality():
    x = np.arange(12.0).reshape(1, 1, 12)
    x[0, 0, 11] = np.nan
    assert_same(F.interpolate(am.tensor(x), size=5, mode="area"), TF.interpolate(torch.tensor(x), size=5, mode="area"))


# -- float16 accumulates in float32 ----------------------------------------------------------

def test_float16_mean_issue_example():
    assert_same(am.mean(am.full((3,), 60000.0, dtype=am.float16)), torch.mean(torch.full((3,), 60000.0, dtype=torch.float16)))


_HALF_X = (np.random.default_rng(1).standard_normal((4, 8, 5)) * 300).astype(np.float16)
_HALF_W = np.random.default_rng(2).standard_normal(8).astype(np.float16)

HALF_NORMS = {
    "layer_norm": (lambda a: F.layer_norm(a, (5,)), lambda t: TF.layer_norm(t, (5,))),
    "layer_norm_affine": (lambda a: F.layer_norm(a, (8, 5), am.ones(8, 5, dtype=am.float16) * 2, am.ones(8, 5, dtype=am.float16)),
                          lambda t: TF.layer_norm(t, (8, 5), torch.ones(8, 5, dtype=torch.float16) * 2, torch.ones(8, 5, dtype=torch.float16))),
    "group_norm": (lambda a: F.group_norm(a, 2, am.tensor(_HALF_W), am.tensor(_HALF_W)),
                   lambda t: TF.group_norm(t, 2, torch.tensor(_HALF_W), torch.tensor(_HALF_W))),
    "batch_norm": (lambda a: F.batch_norm(a, None, None, training=True), lambda t: TF.batch_norm(t, None, None, training=True)),
    "instance_norm": (lambda a: F.instance_norm(a), lambda t: TF.instance_norm(t)),
}


@pytest.mark.parametrize("name", list(HALF_NORMS))
def test_float16_norms_match_pytorch(name):
    fa, ft = HALF_NORMS[name]
    a = am.tensor(_HALF_X, requires_grad=True)
    t = torch.tensor(_HALF_X, requires_grad=True)
    ya, yt = fa(a), ft(t)
    assert np.isfinite(_np(ya)).all() and np.abs(_np(ya)).max() > 0.5  # not zeros/inf (the bug)
    assert_same(ya, yt, rtol=2e-3, atol=2e-3)  # float16: an ulp or two
    g = np.random.default_rng(3).standard_normal(_HALF_X.shape).astype(np.float16)
    ya.backward(am.tensor(g))
    yt.backward(torch.tensor(g))
    assert_same(a.grad, t.grad, rtol=1e-2, atol=1e-4)


def test_float16_layer_norm_issue_example_and_module():
    x = (np.random.default_rng(4).standard_normal((2, 8)) * 300).astype(np.float16)
    ln = am.nn.LayerNorm(8).to(am.float16)
    tln = torch.nn.LayerNorm(8).half()
    assert_same(ln(am.tensor(x)), tln(torch.tensor(x)), rtol=2e-3, atol=2e-3)


def test_float16_batchnorm_running_stats():
    bn, tbn = am.nn.BatchNorm1d(8).to(am.float16), torch.nn.BatchNorm1d(8).half()
    x = (np.random.default_rng(5).standard_normal((16, 8)) * 30).astype(np.float16)
    assert_same(bn(am.tensor(x)), tbn(torch.tensor(x)), rtol=2e-3, atol=2e-3)
    assert_same(bn.running_mean, tbn.running_mean, rtol=2e-3, atol=2e-3)
    assert_same(bn.running_var, tbn.running_var, rtol=2e-3, atol=2e-2)


HALF_REDUCTIONS = {
    "sum": (lambda a: a.sum(-1), lambda t: t.sum(-1)),
    "mean": (lambda a: a.mean(), lambda t: t.mean()),
    "mean_dim": (lambda a: a.mean(-1), lambda t: t.mean(-1)),
    "var": (lambda a: a.var(-1), lambda t: t.var(-1)),
    "std": (lambda a: a.std(-1), lambda t: t.std(-1)),
    "norm": (lambda a: am.norm(a, dim=-1), lambda t: torch.norm(t, dim=-1)),
    "norm1": (lambda a: am.norm(a, p=1, dim=-1), lambda t: torch.norm(t, p=1, dim=-1)),
    "logsumexp": (lambda a: am.logsumexp(a, -1), lambda t: torch.logsumexp(t, -1)),
    "softmax": (lambda a: am.softmax(a / 100, -1), lambda t: torch.softmax(t / 100, -1)),
    "log_softmax": (lambda a: am.log_softmax(a / 100, -1), lambda t: torch.log_softmax(t / 100, -1)),
    "cumsum": (lambda a: am.cumsum(a / 300, -1), lambda t: torch.cumsum(t / 300, -1)),
    "mse_loss": (lambda a: F.mse_loss(a / 10, a * 0), lambda t: TF.mse_loss(t / 10, t * 0)),
    "l1_loss": (lambda a: F.l1_loss(a, a * 0), lambda t: TF.l1_loss(t, t * 0)),
    "smooth_l1_loss": (lambda a: F.smooth_l1_loss(a, a * 0), lambda t: TF.smooth_l1_loss(t, t * 0)),
    "bce": (lambda a: F.binary_cross_entropy(am.sigmoid(a / 300), (a > 0).to(am.float16)),
            lambda t: TF.binary_cross_entropy(torch.sigmoid(t / 300), (t > 0).half())),
    "bce_with_logits": (lambda a: F.binary_cross_entropy_with_logits(a / 30, (a > 0).to(am.float16), reduction="sum"),
                        lambda t: TF.binary_cross_entropy_with_logits(t / 30, (t > 0).half(), reduction="sum")),
}


@pytest.mark.parametrize("name", list(HALF_REDUCTIONS))
def test_float16_reductions_and_losses_match_pytorch(name):
    # 4 x 3000 values of |x| ~ 300: a float16 running sum overflows (65504) or stalls (2048 + 1)
    x = (np.random.default_rng(6).standard_normal((4, 3000)) * 300).astype(np.float16)
    fa, ft = HALF_REDUCTIONS[name]
    a = am.tensor(x, requires_grad=True)
    t = torch.tensor(x, requires_grad=True)
    ya, yt = fa(a), ft(t)
    assert_same(ya, yt, rtol=4e-3, atol=1e-3)
    ya.sum().backward()
    yt.sum().backward()
    assert_same(a.grad, t.grad, rtol=2e-2, atol=1e-3)


# -- scatter writes, index ops check their range ---------------------------------------------

def test_scatter_tensor_src_writes_not_adds():
    idx = [[0, 1, 2, 0], [2, 0, 0, 1]]
    src = np.arange(1.0, 9.0).reshape(2, 4)
    ours = am.scatter(am.zeros(3, 4), 0, am.tensor(idx), am.tensor(src, dtype=am.float32))
    theirs = torch.scatter(torch.zeros(3, 4), 0, torch.tensor(idx), torch.tensor(src, dtype=torch.float32))
    assert_same(ours, theirs)


def test_scatter_duplicates_one_value_wins_and_gradients_match():
    # PyTorch leaves the winner among duplicates unspecified; ours is the last on the CPU.
    # Either way it is one of the values, never the sum; gradients follow PyTorch's formula.
    a = am.zeros(4, dtype=am.float64, requires_grad=True)
    s = am.tensor([1.0, 2.0, 3.0], dtype=am.float64, requires_grad=True)
    y = am.scatter(a, 0, am.tensor([1, 1, 3]), s)
    assert y.tolist() == [0.0, 2.0, 0.0, 3.0]
    (y * am.arange(4.0, dtype=am.float64)).sum().backward()
    ta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    (torch.scatter(ta, 0, torch.tensor([1, 1, 3]), ts) * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    assert_same(a.grad, ta.grad)
    assert_same(s.grad, ts.grad)


def test_scatter_unique_indices_gradcheck():
    idx = am.tensor([[2, 0], [1, 2]])
    x = am.tensor(np.random.default_rng(7).standard_normal((3, 2)), requires_grad=True)
    src = am.tensor(np.random.default_rng(8).standard_normal((2, 2)), requires_grad=True)
    assert am.autograd.gradcheck(lambda a, b: am.scatter(a, 0, idx, b), (x, src))
    assert am.autograd.gradgradcheck(lambda a, b: am.scatter(a, 0, idx, b) ** 2, (x, src))


INDEX_OPS = {
    "gather": (lambda m, x, i: m.gather(x, 1, i), "2d"),
    "scatter": (lambda m, x, i: m.scatter(x, 1, i, m.ones(2, 1)), "2d"),
    "scatter_value": (lambda m, x, i: m.scatter(x, 1, i, value=1.0), "2d"),
    "scatter_add": (lambda m, x, i: m.scatter_add(x, 1, i, m.ones(2, 1)), "2d"),
    "index_select": (lambda m, x, i: m.index_select(x, 1, i), "1d"),
    "index_add": (lambda m, x, i: m.index_add(x, 1, i, m.ones(2, 1)), "1d"),
    "take_along_dim": (lambda m, x, i: m.take_along_dim(x, i, 1), "2d"),
    "embedding": (lambda m, x, i: (F if m is am else TF).embedding(i, x), "1d"),
}


@pytest.mark.parametrize("bad", [-1, 3, 100, -4])
@pytest.mark.parametrize("op", list(INDEX_OPS))
def test_index_out_of_range_raises_like_pytorch(op, bad):
    fn, kind = INDEX_OPS[op]
    idx = [[bad], [0]] if kind == "2d" else [bad]
    if op == "take_along_dim":
        # PyTorch 2.13 (CPU) does not check: it returns whatever memory the index reaches
        # (-1 gives the row's last element, 100 another row's). We raise as gather does.
        want = RuntimeError
    else:
        with pytest.raises((IndexError, RuntimeError)) as theirs:
            fn(torch, torch.zeros(2, 3), torch.tensor(idx))
        want = type(theirs.value)
    with pytest.raises(want) as ours:
        fn(am, am.zeros(2, 3), am.tensor(idx))
    msg = str(ours.value)
    name = {"scatter_value": "scatter"}.get(op, op)
    assert name in msg and str(bad) in msg, msg


def test_gather_issue_message():
    with pytest.raises(RuntimeError, match=r"gather: .*index -1 is out of bounds for dimension 1 with size 3"):
        am.gather(am.zeros(2, 3), 1, am.tensor([[-1], [0]]))


def test_getitem_negative_indices_still_wrap_like_pytorch():
    x = np.arange(6.0).reshape(2, 3)
    assert am.tensor(x)[:, am.tensor([-1, 0])].tolist() == torch.tensor(x)[:, torch.tensor([-1, 0])].tolist()
    with pytest.raises(IndexError, match="shape"):
        am.tensor(x)[:, am.tensor([3])]


# -- invalid arguments raise, naming the op --------------------------------------------------

BAD_ARGS = {
    "narrow_past_end": lambda m: m.narrow(m.arange(5.0), 0, 3, 4),
    "narrow_negative_length": lambda m: m.narrow(m.arange(5.0), 0, 1, -1),
    "narrow_start_out_of_range": lambda m: m.narrow(m.arange(5.0), 0, 6, 0),
    "movedim_repeated_destination": lambda m: m.movedim(m.zeros(2, 3, 4), (0, 1), (2, 2)),
    "movedim_repeated_source": lambda m: m.movedim(m.zeros(2, 3, 4), (0, 0), (1, 2)),
    "zeros_float_size": lambda m: m.zeros(2.5),
    "ones_float_size": lambda m: m.ones(2, 1.5),
    "rand_float_size": lambda m: m.rand(2.5),
    "randn_negative": lambda m: m.randn(-1),
    "randperm_negative": lambda m: m.randperm(-1),
    "randperm_float": lambda m: m.randperm(2.5),
    "eye_negative": lambda m: m.eye(-1),
    "full_negative": lambda m: m.full((-2,), 1.0),
    "zeros_overflowing_size": lambda m: m.zeros(10 ** 12, 10 ** 12),
    "repeat_float": lambda m: m.zeros(2).repeat(2.5),
    "repeat_negative": lambda m: m.zeros(2).repeat(-1),
    "reshape_float": lambda m: m.zeros(6).reshape(2.0, 3),
    "flip_repeated_dim": lambda m: m.flip(m.zeros(3, 3), (0, 0)),
    "int_floordiv_zero": lambda m: m.tensor([1, 2]) // 0,
    "int_floordiv_zero_tensor": lambda m: m.tensor([1, 2]) // m.tensor([0, 1]),
    "int_remainder_zero": lambda m: m.remainder(m.tensor([1, 2]), 0),
    "int_mod_zero": lambda m: m.tensor([1, 2]) % 0,
    "int_div_trunc_zero": lambda m: m.div(m.tensor([1, 2]), 0, rounding_mode="trunc"),
    "int_div_floor_zero": lambda m: m.div(m.tensor([1, 2]), 0, rounding_mode="floor"),
    "cat_zero_dim": lambda m: m.cat([m.tensor(1.0), m.tensor(2.0)]),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_invalid_arguments_raise_like_pytorch(case):
    fn = BAD_ARGS[case]
    with pytest.raises(Exception) as theirs:
        fn(torch)
    with pytest.raises(Exception) as ours:
        fn(am)
    want = type(theirs.value)
    assert isinstance(ours.value, want), f"{case}: {type(ours.value).__name__} ({ours.value}) vs PyTorch {want.__name__}"
    if "ZeroDivisionError" in str(theirs.value):
        assert "ZeroDivisionError" in str(ours.value)
    if case.startswith("cat"):
        assert "zero-dimensional tensor" in str(ours.value)


def test_valid_edge_arguments_still_match_pytorch():
    assert am.narrow(am.arange(5.0), 0, -2, 2).tolist() == torch.narrow(torch.arange(5.0), 0, -2, 2).tolist()
    assert am.narrow(am.arange(5.0), 0, 5, 0).shape == tuple(torch.narrow(torch.arange(5.0), 0, 5, 0).shape)
    assert am.zeros(np.int64(2), 3).shape == (2, 3)
    assert am.randperm(0).shape == (0,)
    f = am.tensor([1.0, -1.0]) // 0
    assert f.tolist() == (torch.tensor([1.0, -1.0]) // 0).tolist()
    assert am.remainder(am.tensor([5.0]), 0).isnan().all()


# -- gradients PyTorch keeps finite ----------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("p", [3, 0.5, 1.5, 2, 1, -1])
@pytest.mark.parametrize("x", [np.zeros((2, 3)), np.array([[0.0, 1.0, -2.0], [0.0, 0.0, 0.0]])])
def test_norm_gradient_at_zero_matches_pytorch(p, x):
    a = am.tensor(x, requires_grad=True)
    t = torch.tensor(x, requires_grad=True)
    ya, yt = am.norm(a, p=p, dim=1), torch.norm(t, p=p, dim=1)
    assert_same(ya, yt, rtol=1e-12)
    ya.sum().backward()
    yt.sum().backward()
    assert_same(a.grad, t.grad, rtol=1e-12)


def test_norm_general_p_gradcheck():
    x = am.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=am.float64, requires_grad=True)
    for p in (3, 0.5, 1.5):
        assert am.autograd.gradcheck(lambda v: am.norm(v, p=p, dim=1), (x,))
        assert am.autograd.gradgradcheck(lambda v: am.norm(v, p=p, dim=1), (x,))


@pytest.mark.parametrize("fn", ["std", "std_dim", "std_mean"])
def test_std_of_constant_has_zero_gradient(fn):
    x = np.full((2, 4), 3.0)
    a = am.tensor(x, requires_grad=True)
    t = torch.tensor(x, requires_grad=True)
    if fn == "std":
        ya, yt = a.std(), t.std()
    elif fn == "std_dim":
        ya, yt = a.std(1), t.std(1)
    else:
        ya, yt = am.std_mean(a, 1)[0], torch.std_mean(t, 1)[0]
    ya.sum().backward()
    yt.sum().backward()
    assert_same(a.grad, t.grad)


def test_std_gradcheck_away_from_zero():
    x = am.tensor(np.random.default_rng(9).standard_normal((3, 4)), requires_grad=True)
    assert am.autograd.gradcheck(lambda v: v.std(1), (x,))
    assert am.autograd.gradgradcheck(lambda v: v.std(1), (x,))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("base, exp", [(0.0, 0.0), (0.0, 1.0), (2.0, 0.0), (0.0, 0.5), (0.0, 2.0), (-1.5, 0.0)])
def test_pow_gradients_at_zero_match_pytorch(base, exp):
    a = am.tensor([base], dtype=am.float64, requires_grad=True)
    e = am.tensor([exp], dtype=am.float64, requires_grad=True)
    t = torch.tensor([base], dtype=torch.float64, requires_grad=True)
    te = torch.tensor([exp], dtype=torch.float64, requires_grad=True)
    am.pow(a, e).sum().backward()
    torch.pow(t, te).sum().backward()
    assert_same(a.grad, t.grad)
    assert_same(e.grad, te.grad)
    a2 = am.tensor([base], dtype=am.float64, requires_grad=True)
    t2 = torch.tensor([base], dtype=torch.float64, requires_grad=True)
    (a2 ** exp).sum().backward()
    (t2 ** exp).sum().backward()
    assert_same(a2.grad, t2.grad)


def test_pow_tensor_exponent_gradgradcheck():
    a = am.tensor([0.5, 1.5, 2.0], dtype=am.float64, requires_grad=True)
    e = am.tensor([0.0, 1.5, -1.0], dtype=am.float64, requires_grad=True)
    assert am.autograd.gradgradcheck(lambda x, y: am.pow(x, y), (a, e))


def test_sanity_math():
    assert math.isclose(am.norm(am.tensor([3.0, 4.0])).item(), 5.0)


# -- empty batches, arrays passed to layers, foreign optimizer state -------------------------

@pytest.mark.parametrize("d", [1, 2, 3])
def test_max_pooling_with_batch_zero_matches_pytorch(d):
    shape = (0, 3) + (8, 6, 4)[:d]
    x, tx = am.zeros(*shape, requires_grad=True), torch.zeros(*shape, requires_grad=True)
    for ours, theirs in (
        (getattr(F, f"max_pool{d}d")(x, 2), getattr(TF, f"max_pool{d}d")(tx, 2)),
        (getattr(F, f"adaptive_max_pool{d}d")(x, 2), getattr(TF, f"adaptive_max_pool{d}d")(tx, 2)),
        (getattr(F, f"max_pool{d}d")(x, 2, return_indices=True)[1], getattr(TF, f"max_pool{d}d")(tx, 2, return_indices=True)[1]),
    ):
        assert_same(ours, theirs)
    getattr(F, f"max_pool{d}d")(x, 2).sum().backward()
    assert x.grad.shape == shape


def test_numpy_array_passed_to_a_layer_raises_type_error_naming_it():
    x = np.zeros((2, 3), np.float32)
    for layer, name in ((am.nn.Linear(3, 2), "Linear"), (am.nn.Conv1d(2, 2, 1), "Conv1d"), (am.nn.MSELoss(), "MSELoss"),
                        (am.nn.Sequential(am.nn.ReLU()), "ReLU")):
        with pytest.raises(TypeError, match=rf"{name}: expected a Tensor for argument 0, got numpy.ndarray of shape \(2, 3\)"):
            layer(x, x) if name == "MSELoss" else layer(x)
    with pytest.raises(TypeError):
        torch.nn.Linear(3, 2)(x)  # PyTorch raises TypeError too


def test_user_module_may_take_arrays():
    class Wrap(am.nn.Module):
        def forward(self, arr):
            return am.from_numpy(arr) * 2

    assert Wrap()(np.ones(2)).tolist() == [2.0, 2.0]


def test_sgd_state_into_adam_raises_at_load_state_dict():
    w = am.ones(2, requires_grad=True)
    w.sum().backward()
    sgd = am.optim.SGD([w], lr=0.1, momentum=0.9)
    sgd.step()
    adam = am.optim.Adam([w])
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: .*lacks the hyper-parameters .*'betas'.*another optimizer"):
        adam.load_state_dict(sgd.state_dict())
    # PyTorch fails at load_state_dict too (KeyError 'step'); ours says why
    tw = torch.ones(2, requires_grad=True)
    tw.sum().backward()
    tsgd = torch.optim.SGD([tw], lr=0.1, momentum=0.9)
    tsgd.step()
    with pytest.raises(KeyError):
        torch.optim.Adam([tw]).load_state_dict(tsgd.state_dict())
    adam.step()  # the failed load changed nothing: the optimizer still works
    with pytest.raises(ValueError, match="SGD.load_state_dict: .*'momentum'"):
        am.optim.SGD([w], lr=0.1).load_state_dict(adam.state_dict())


def test_compatible_optimizer_states_still_load():
    w = am.ones(2, requires_grad=True)
    w.sum().backward()
    a = am.optim.Adam([w], lr=0.1)
    a.step()
    b = am.optim.AdamW([w])
    b.load_state_dict(a.state_dict())
    b.step()
    sched_opt = am.optim.SGD([w], lr=0.1, momentum=0.9)
    am.optim.lr_scheduler.StepLR(sched_opt, 1)  # adds 'initial_lr' to the group
    am.optim.SGD([w], lr=0.1, momentum=0.9).load_state_dict(sched_opt.state_dict())


# -- a save killed mid-write leaves no temporary forever -------------------------------------

_SAVE_AND_HANG = r"""
import os, sys, time
import avila_ml as am
real = am.io._write_payload
def slow(f, header, arrays):
    f.write(b"x" * 100000)
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
am.io._write_payload = slow
am.save({"w": am.ones(1000), "epoch": 2}, sys.argv[1])
"""


def test_save_killed_mid_write_leaves_no_stale_temporary(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    path = tmp_path / "ckpt.safetensors"
    am.save({"w": am.arange(5.0), "epoch": 1}, path)
    good = path.read_bytes()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(am.__file__)), os.environ.get("PYTHONPATH", "")]))
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", _SAVE_AND_HANG, str(path)], stdout=subprocess.PIPE, env=env, text=True)
        try:
            assert p.stdout.readline().strip() == "writing"
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
            p.stdout.close()
        # each killed save leaves its own temporary; the previous ones were removed by it
        stale = sorted(n for n in os.listdir(tmp_path) if n != "ckpt.safetensors")
        assert len(stale) == 1 and stale[0].startswith(f".ckpt.safetensors.{am.io._host_tag()}.{p.pid}."), stale
        assert path.read_bytes() == good and am.load(path)["epoch"] == 1  # the last good checkpoint is intact
    # temporaries that are not ours to remove: a live writer (this process), another host's
    live = tmp_path / f".ckpt.safetensors.{am.io._host_tag()}.{os.getpid()}.abc123.tmp"
    other_host = tmp_path / ".ckpt.safetensors.some-other-host.999999.abc123.tmp"
    unrelated = tmp_path / ".other.safetensors.x.1.y.tmp"
    for f in (live, other_host, unrelated):
        f.write_bytes(b"partial")
    am.save({"w": am.arange(5.0), "epoch": 3}, path)
    left = sorted(os.listdir(tmp_path))
    assert left == sorted(["ckpt.safetensors", live.name, other_host.name, unrelated.name]), left
    assert am.load(path)["epoch"] == 3


# -- found by the property suite after issue 16's ops joined the op table -------------------------
@pytest.mark.parametrize("boundaries", [[1.0, 2.0, math.nan, 3.0], [1.0, math.nan, 3.0], [math.nan], [math.nan, 1.0]])
@pytest.mark.parametrize("right", [False, True])
def test_bucketize_with_nan_boundaries_follows_pytorch(boundaries, right):
    x = [0.5, 1.5, 2.5, 3.5, math.nan, math.inf, 1.0, 3.0]
    ours = am.bucketize(am.tensor(x, dtype=am.float64), am.tensor(boundaries, dtype=am.float64), right=right)
    theirs = torch.bucketize(torch.tensor(x, dtype=torch.float64), torch.tensor(boundaries, dtype=torch.float64), right=right)
    assert ours.tolist() == theirs.tolist()
    rows = [[1.0, math.nan], [0.0, 1.0]]
    ours = am.searchsorted(am.tensor(rows), am.tensor([[0.5, 2.0], [0.5, 2.0]]), right=right)
    assert ours.tolist() == torch.searchsorted(torch.tensor(rows), torch.tensor([[0.5, 2.0], [0.5, 2.0]]), right=right).tolist()


def test_addmm_beta0_gives_input_a_zero_gradient_and_ignores_its_nan():
    inp = am.tensor([[math.nan, 1.0], [2.0, 3.0]], dtype=am.float64, requires_grad=True)
    out = am.addmm(inp, am.ones(2, 0, dtype=am.float64), am.ones(0, 2, dtype=am.float64), beta=0)
    assert out.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    out.sum().backward()
    assert inp.grad.tolist() == [[0.0, 0.0], [0.0, 0.0]]  # PyTorch: beta * grad, summed to the input's shape


@pytest.mark.parametrize("kwargs", [{"beta": 0.5, "alpha": 2.0}, {"alpha": -1.5}, {"beta": 2.0}])
def test_addmm_baddbmm_integer_tensors_keep_their_dtype(kwargs):
    rng = np.random.default_rng(0)
    i, a, b = (rng.integers(-3, 4, s) for s in ((2, 2), (2, 3), (3, 2)))
    ours = am.addmm(am.tensor(i), am.tensor(a), am.tensor(b), **kwargs)
    theirs = torch.addmm(torch.tensor(i), torch.tensor(a), torch.tensor(b), **kwargs)
    assert ours.dtype == am.int64 and ours.tolist() == theirs.tolist()
    ours = am.baddbmm(am.tensor(i[None]), am.tensor(a[None]), am.tensor(b[None]), **kwargs)
    theirs = torch.baddbmm(torch.tensor(i[None]), torch.tensor(a[None]), torch.tensor(b[None]), **kwargs)
    assert ours.dtype == am.int64 and ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_grid_sample_with_nonfinite_grid_or_pixel_follows_pytorch(padding_mode, align_corners, bad):
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    g = np.array([[[[0.1, 0.2], [bad, 0.3]], [[-1.1, 0.9], [0.5, -0.5]]]])
    kw = dict(padding_mode=padding_mode, align_corners=align_corners)
    ours = F.grid_sample(am.tensor(x), am.tensor(g), **kw)
    theirs = TF.grid_sample(torch.tensor(x), torch.tensor(g), **kw)  # forward only: see BACKWARD_UNSAFE_... in the property suite
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)
    # an inf/NaN pixel stays out of the samples whose corners lie outside the image
    x2 = x.copy()
    x2[0, 0, 0, 0] = bad
    g2 = np.array([[[[-1.1, -1.1], [0.9, 0.9]], [[0.0, 0.0], [1.2, -1.3]]]])
    ours = F.grid_sample(am.tensor(x2), am.tensor(g2), **kw)
    theirs = TF.grid_sample(torch.tensor(x2), torch.tensor(g2), **kw)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)


# -- NaN / inf inputs: values and every input gradient as PyTorch's kernels give them ---------
# (found by tests/nonfinite_sweep.py; each convention is PyTorch 2.13's, see the op's comment)
NAN, INF = math.nan, math.inf


def _same_with_grads(fn_am, fn_t, *arrays, grad_of=None, rtol=1e-12):
    """fn(*arrays) and the gradient of its sum w.r.t. every float input, ours vs PyTorch's,
    NaN/inf positions included (float64)."""
    grad_of = range(len(arrays)) if grad_of is None else grad_of
    xo = [am.tensor(a, requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    xt = [torch.tensor(a, requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    yo, yt = fn_am(*xo), fn_t(*xt)
    assert_same(yo, yt, rtol=rtol, atol=1e-12)
    if not grad_of:
        return
    am.autograd.backward([yo], [am.ones_like(yo)])
    torch.autograd.backward([yt], [torch.ones_like(yt)])
    for i in grad_of:
        assert_same(xo[i].grad, xt[i].grad, rtol=rtol, atol=1e-12)


def _planted(values, shape=(2, 3), fill=None, seed=0):
    """A float64 array of ``shape`` with ``values`` at the first positions (random elsewhere)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-2, 2, shape) if fill is None else np.full(shape, fill)
    a.reshape(-1)[:len(values)] = values
    return a


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_abs_l1_and_1_norm_gradient_at_nonfinite_is_sgn(bad):
    # PyTorch: abs' = sgn(x) * g, sgn(NaN) = 0 (NumPy's sign(NaN) is NaN)
    x = _planted([bad, 0.0])
    _same_with_grads(am.abs, torch.abs, x)
    _same_with_grads(lambda a: am.norm(a, p=1, dim=1), lambda a: torch.norm(a, p=1, dim=1), x)
    _same_with_grads(lambda a, b: F.l1_loss(a, b), lambda a, b: TF.l1_loss(a, b), x, _planted([bad], seed=1))
    _same_with_grads(lambda a, b: F.pairwise_distance(a, b, p=1.0), lambda a, b: TF.pairwise_distance(a, b, p=1.0),
                     x, _planted([], seed=2))


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_nan_gives_both_inputs_the_gradient(op):
    # PyTorch: where(a == b, g / 2, g).masked_fill_(a < b, 0): a NaN comparison is false both ways
    a = np.array([NAN, 1.0, 2.0, NAN, INF, -INF])
    b = np.array([0.5, NAN, 2.0, NAN, INF, 0.0])
    _same_with_grads(getattr(am, op), getattr(torch, op), a, b)


@pytest.mark.parametrize("case", ["nan x", "nan bound", "tie", "lo > hi", "min only", "max only", "scalar min"])
def test_clamp_with_tensor_bounds_follows_clamp_backward(case):
    x = np.array([NAN, 0.5, -2.0, 3.0, 0.0, -INF])
    lo = np.array([0.0, 0.5, -1.0, -1.0, 1.0, -3.0])
    hi = np.array([1.0, 2.0, 2.0, 2.0, 0.5, INF])
    if case == "nan bound":
        lo[1], hi[2] = NAN, NAN
    if case == "tie":
        x[3] = hi[3]
    if case == "min only":
        _same_with_grads(lambda a, l: am.clamp(a, min=l), lambda a, l: torch.clamp(a, min=l), x, lo)
    elif case == "max only":
        _same_with_grads(lambda a, h: am.clamp(a, max=h), lambda a, h: torch.clamp(a, max=h), x, hi)
    elif case == "scalar min":
        # PyTorch takes no number/tensor mix: its twin is a 0-d tensor bound
        _same_with_grads(lambda a, h: am.clamp(a, -0.5, h),
                         lambda a, h: torch.clamp(a, torch.tensor(-0.5, dtype=a.dtype), h), x, hi)
    else:
        _same_with_grads(lambda a, l, h: am.clamp(a, l, h), lambda a, l, h: torch.clamp(a, l, h), x, lo, hi)


def test_remainder_divisor_gradient_uses_floor_division():
    # PyTorch: d/db remainder(a, b) = -div(a, b, rounding_mode="floor"): NaN for an infinite a
    a = np.array([INF, -INF, 0.5, -0.5, NAN, 3.0])
    b = np.array([1.5, -1.5, INF, INF, 1.0, -INF])
    _same_with_grads(am.remainder, torch.remainder, a, b)


def test_pow_half_at_minus_inf_and_pow_minus_half():
    # PyTorch computes x ** -0.5 as rsqrt: NaN at -inf (C's pow gives 0), so (x ** 0.5)' is NaN there
    x = np.array([-INF, INF, 4.0, NAN, 0.25])
    _same_with_grads(lambda a: a ** 0.5, lambda a: a ** 0.5, x)
    _same_with_grads(lambda a: a ** -0.5, lambda a: a ** -0.5, x)


@pytest.mark.parametrize("weight", [0.3, 0.7, 1.0, "tensor"])
def test_lerp_uses_pytorchs_two_sided_formula(weight):
    a = np.array([INF, -INF, 1.0, NAN, 2.0, 0.0])
    b = np.array([1.0, 2.0, INF, 0.0, -1.0, 3.0])
    if weight == "tensor":
        w = np.array([0.7, 0.2, 0.9, 0.5, -0.6, 1.5])
        _same_with_grads(am.lerp, torch.lerp, a, b, w)
    else:
        _same_with_grads(lambda x, y: am.lerp(x, y, weight), lambda x, y: torch.lerp(x, y, weight), a, b)


def test_addcmul_empty_broadcast_and_inf_factor():
    # one op: tensor2's gradient is sum(g * tensor1 * value) over an empty batch = 0, not 0 * inf
    args = (np.zeros((0, 3)), np.array([INF, NAN, 1.0]), np.array([[2.0, -1.0, 0.5]]))
    fam = lambda x, a, b: am.addcmul(x, a, b, value=-2)  # noqa: E731
    ft = lambda x, a, b: torch.addcmul(x, a, b, value=-2)  # noqa: E731
    _same_with_grads(fam, ft, *args)
    _same_with_grads(fam, ft, np.array([1.0, 2.0, 3.0]), np.array([INF, NAN, 1.0]), np.array([[2.0, -1.0, 0.0]]))


@pytest.mark.parametrize("fn", ["var", "std"])
@pytest.mark.parametrize("dim", [None, 1])
@pytest.mark.parametrize("bad", [NAN, INF])
def test_var_std_gradient_with_nonfinite_follows_var_backward(fn, dim, bad):
    # PyTorch: 2 / (N - correction) * g * (x - mean): an inf gives NaN at itself, +-inf elsewhere
    x = _planted([bad], (2, 4))
    _same_with_grads(lambda a: getattr(am, fn)(a, dim), lambda a: getattr(torch, fn)(a, dim), x)


@pytest.mark.parametrize("v", [NAN, INF, 1.5])
def test_var_of_one_element_gradient(v):
    # PyTorch over all elements with N <= correction: g * (NaN where x == mean, else inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same_with_grads(am.var, torch.var, np.array(v))
        _same_with_grads(am.var, torch.var, np.array([v]))


@pytest.mark.parametrize("v", [NAN, INF, -INF, 0.0])
def test_prod_of_a_0d_tensor_passes_the_gradient(v):
    _same_with_grads(am.prod, torch.prod, np.array(v))
    _same_with_grads(lambda a: am.prod(a, 0), lambda a: torch.prod(a, 0), np.array(v))


@pytest.mark.parametrize("fn", ["max", "min"])
def test_max_min_of_all_elements_share_the_gradient_among_nans(fn):
    # PyTorch's evenly_distribute_backward: the NaN elements are the maxima
    _same_with_grads(getattr(am, fn), getattr(torch, fn), _planted([NAN]))
    _same_with_grads(getattr(am, fn), getattr(torch, fn), _planted([NAN, 1.0, NAN]))


@pytest.mark.parametrize("p", [INF, -INF])
def test_inf_norm_with_nan(p):
    # PyTorch: sgn(x) * g / count over |x| == norm or NaN -- so 0 at a NaN
    x = _planted([NAN, -3.0], (2, 4))
    _same_with_grads(lambda a: am.norm(a, p=p, dim=1), lambda a: torch.norm(a, p=p, dim=1), x)


def test_logsumexp_gradient_with_an_infinite_logit():
    # PyTorch: g * exp(x - result): NaN at +inf itself, 0 elsewhere in its row
    x = np.array([[INF, 1e4, 0.0], [-INF, 1.0, 2.0], [NAN, 0.0, 1.0]])
    _same_with_grads(lambda a: am.logsumexp(a, 1), lambda a: torch.logsumexp(a, 1), x)


@pytest.mark.parametrize("reduce", ["amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
def test_scatter_reduce_amax_amin_nan_result_gives_nan_gradient(reduce, include_self):
    # PyTorch: g / N * (value == result); a NaN result has N = 0 ties: 0 * (g / 0) = NaN
    x = np.array([[NAN, 1.0, 2.0, 3.0], [0.5, 0.5, 1.0, 2.0]])
    src = np.array([[4.0, 1.0], [NAN, 0.5]])
    idx = torch.tensor([[0, 2], [1, 1]])
    _same_with_grads(lambda a, s: am.scatter_reduce(a, 1, am.tensor(idx.numpy()), s, reduce, include_self=include_self),
                     lambda a, s: torch.scatter_reduce(a, 1, idx, s, reduce, include_self=include_self), x, src)


@pytest.mark.parametrize("name", ["relu", "softsign", "leaky_relu", "hardsigmoid", "softplus", "logsigmoid", "mish"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_activation_gradient_at_nonfinite(name, bad):
    # relu: threshold_backward on the result (0 where y <= 0): a NaN passes g; softsign: the
    # quotient rule, NaN at +-inf. 18 elements, planted in the vectorised body and in the tail
    for pos in (3, 17):
        x = np.full(18, 0.3)
        x[pos] = bad
        # rtol: PyTorch's hardsigmoid slope is the float32 1/6 even in float64
        _same_with_grads(getattr(F, name), getattr(TF, name), x, rtol=1e-7)


@pytest.mark.parametrize("name", ["hardtanh", "relu6", "hardswish", "elu", "selu", "celu"])
def test_activation_gradient_at_nan_follows_the_vectorised_kernel(name):
    # PyTorch's result at a NaN differs between its vectorised body and its scalar tail (the last
    # < 8 float64s); ours is the body's, checked where PyTorch's body computes it
    x = np.full(18, 0.3)
    x[3] = NAN
    _same_with_grads(getattr(F, name), getattr(TF, name), x)


@pytest.mark.parametrize("loss", ["huber_loss", "smooth_l1_loss"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_huber_smooth_l1_gradient_at_nonfinite(loss, reduction):
    # PyTorch's kernels: -/+ delta (or 1) beyond the threshold, d (/ beta) inside: finite at
    # +-inf, NaN at NaN; the target's gradient is minus the input's
    x = np.array([NAN, INF, -INF, 0.2, 3.0, 0.5, 0.1])
    y = np.array([0.1, 0.0, 0.0, 0.2, 0.0, INF, 0.6])
    kw = {"delta": 0.5} if loss == "huber_loss" else {"beta": 0.7}
    _same_with_grads(lambda a, b: getattr(F, loss)(a, b, reduction=reduction, **kw),
                     lambda a, b: getattr(TF, loss)(a, b, reduction=reduction, **kw), x, y)


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("bad", [INF, -INF, NAN])
def test_bilinear_contraction_order_with_nonfinite_input(which, bad):
    # PyTorch contracts x1 with W first (a matmul), then with x2 (a bmm): where +inf meets -inf
    rng = np.random.default_rng(3)
    x1, x2, w, b = rng.standard_normal((3, 3)), rng.standard_normal((3, 2)), rng.standard_normal((4, 3, 2)), \
        rng.standard_normal(4)
    (x1, x2)[which][1, 0] = bad
    _same_with_grads(F.bilinear, TF.bilinear, x1, x2, w, b)


def test_bilinear_double_backward():
    rng = np.random.default_rng(4)
    args = tuple(am.tensor(rng.standard_normal(s), requires_grad=True) for s in ((2, 3), (2, 2), (2, 3, 2)))
    assert am.autograd.gradcheck(F.bilinear, args)
    assert am.autograd.gradgradcheck(F.bilinear, args)


@pytest.mark.parametrize("right", [False, True])
def test_searchsorted_bucketize_with_unsorted_boundaries_bisect_as_pytorch(right):
    seq = np.array([-1.0, 0.0, INF, 1.0, 2.0, 3.0])
    vals = np.array([[-2.0, 0.5, 1.5], [2.5, 5.0, -INF]])
    ours = am.searchsorted(am.tensor(seq), am.tensor(vals), right=right)
    theirs = torch.searchsorted(torch.tensor(seq), torch.tensor(vals), right=right)
    assert ours.tolist() == theirs.tolist()
    ours = am.bucketize(am.tensor(vals), am.tensor(seq[::-1].copy()), right=right)
    theirs = torch.bucketize(torch.tensor(vals), torch.tensor(seq[::-1].copy()), right=right)
    assert ours.tolist() == theirs.tolist()


def test_unique_keeps_every_nan():
    x = np.array([NAN, 1.0, NAN, 0.0, NAN])
    ours = am.unique(am.tensor(x), return_inverse=True, return_counts=True)
    theirs = torch.unique(torch.tensor(x), return_inverse=True, return_counts=True)
    for o, t in zip(ours, theirs):
        np.testing.assert_array_equal(_np(o), _np(t))


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_grid_sample_3d_nonfinite_grid_follows_pytorchs_3d_kernel(padding_mode, bad):
    # PyTorch's 3-d CPU kernel: zeros mode skips the outside corners (a non-finite point gives 0
    # and a zero grid gradient), border/reflection clamp a NaN to size - 1 (its 2-d kernel: to 0)
    x = np.arange(1.0, 9.0).reshape(1, 1, 2, 2, 2)
    g = np.array([[[[[bad, 0.3, 0.1], [0.2, bad, 0.1], [0.1, 0.1, bad], [0.4, -0.2, 0.6]]]]])
    kw = dict(padding_mode=padding_mode, align_corners=False)
    # gradients where PyTorch's backward agrees with its own forward: its 3-d backward keeps a NaN
    # coordinate NaN in border/reflection (and reflects +-inf to NaN), so the pixel its forward
    # read gets no gradient; its 2-d backward segfaults there (the property suite's note)
    grads = (0, 1) if padding_mode == "zeros" else (0,) if (padding_mode == "border" and not math.isnan(bad)) else ()
    _same_with_grads(lambda a, b: F.grid_sample(a, b, **kw), lambda a, b: TF.grid_sample(a, b, **kw), x, g,
                     grad_of=grads)


@pytest.mark.parametrize("bad", [NAN, INF, -0.5, 1.5])
def test_binary_cross_entropy_target_out_of_range_raises_like_pytorch(bad):
    p = am.tensor([0.3, 0.6])
    t = am.tensor([0.0, bad])
    with pytest.raises(RuntimeError, match="binary_cross_entropy: all elements of target should be between 0 and 1"):
        F.binary_cross_entropy(p, t)
    with pytest.raises(RuntimeError, match="all elements of target should be between 0 and 1"):
        TF.binary_cross_entropy(torch.tensor([0.3, 0.6]), torch.tensor([0.0, bad]))
