"""Losses (``avila_ml.ops.loss`` and ``avila_ml.nn`` loss modules) against PyTorch.

A table drives the checks: each row names our functional loss, PyTorch's, and sample calls
(every reduction and option, N-d segmentation inputs, non-contiguous views). For each row
and device: forward and gradients vs PyTorch in float64 (tight) and float32 (float32
precision), gradcheck and gradgradcheck in float64. Then the modules, the numerics at
extreme logits / probabilities 0 and 1, and the errors.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from op_table import FunctionalRow, Sample, T, W, materialize, to_numpy

pytestmark = pytest.mark.filterwarnings("ignore:kl_div. reduction 'mean':UserWarning")

F = am.nn.functional
TOL = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-5)}
REDUCTIONS = ("none", "mean", "sum")
SEG = (2, 4, 3, 5, 2)  # (N, C, d1, d2, d3): voxel-wise segmentation logits


LossInfo = FunctionalRow


def _pair(rng, shape=(3, 4)):
    return rng.standard_normal(shape), rng.standard_normal(shape)


def _elementwise_samples(extra=None):
    extra = extra or {}

    def samples(rng):
        out = []
        for red in REDUCTIONS:
            x, y = _pair(rng)
            out.append(Sample((T(x), T(y)), dict(reduction=red, **extra), desc=red))
        x, y = _pair(rng, (4, 3))
        out.append(Sample((T(x, view="T"), T(y)), dict(reduction="mean", **extra), desc="transposed input"))
        x, y = _pair(rng, ())
        out.append(Sample((T(x), T(y)), dict(reduction="sum", **extra), desc="0-d"))
        x, y = _pair(rng, SEG)
        out.append(Sample((T(x), T(y)), dict(reduction="mean", **extra), desc=f"volume {SEG}"))
        return out
    return samples


def _weighted_elementwise_samples(rng):
    out = []
    for red in REDUCTIONS:
        x, y = _pair(rng)
        w = rng.uniform(0.1, 2.0, (3, 4))
        out.append(Sample((T(x), T(y)), dict(reduction=red, weight=W(w)), desc=f"weight {red}"))
    return out


def _index_target(rng, shape, c, ignore=None):
    t = rng.integers(0, c, size=shape)
    if ignore is not None:
        t.reshape(-1)[0] = ignore
    return t


def _ce_samples(smoothing=0.0):
    def samples(rng):
        out = []
        for red in REDUCTIONS:
            x = rng.standard_normal((5, 4))
            out.append(Sample((T(x), T(_index_target(rng, 5, 4))), dict(reduction=red, label_smoothing=smoothing),
                              desc=f"indices {red}"))
            out.append(Sample((T(x), T(_index_target(rng, 5, 4, ignore=-100))),
                              dict(weight=W(rng.uniform(0.2, 2.0, 4)), reduction=red, label_smoothing=smoothing),
                              desc=f"weight+ignored {red}"))
            xs = rng.standard_normal(SEG)
            ts = _index_target(rng, (2, 3, 5, 2), 4, ignore=1)
            out.append(Sample((T(xs), T(ts)), dict(weight=W(rng.uniform(0.2, 2.0, 4)), ignore_index=1,
                                                   reduction=red, label_smoothing=smoothing),
                              desc=f"segmentation {SEG} {red}"))
        out.append(Sample((T(rng.standard_normal((2, 3, 2, 2))), T(_index_target(rng, (2, 2, 2), 3, ignore=-100))),
                          dict(weight=W(rng.uniform(0.2, 2.0, 3)), label_smoothing=smoothing), desc="small N-d"))
        out.append(Sample((T(rng.standard_normal((5, 4)), view="T"), T(_index_target(rng, 5, 4))),
                          dict(label_smoothing=smoothing), desc="transposed logits"))
        out.append(Sample((T(rng.standard_normal(4)), T(np.array(2))), dict(label_smoothing=smoothing),
                          desc="unbatched (C,)"))
        out.append(Sample((T(rng.standard_normal(4)), T(np.array(2))),
                          dict(reduction="none", label_smoothing=smoothing), desc="unbatched none"))
        return out
    return samples


def _ce_prob_samples(rng):
    out = []
    for red in REDUCTIONS:
        for smoothing in (0.0, 0.25):
            x = rng.standard_normal((5, 4))
            q = rng.dirichlet(np.ones(4), size=5)
            out.append(Sample((T(x), T(q)), dict(reduction=red, label_smoothing=smoothing), desc=f"probs {red} ls={smoothing}"))
        q = rng.dirichlet(np.ones(4), size=(2, 3, 5, 2)).transpose(0, 4, 1, 2, 3)
        out.append(Sample((T(rng.standard_normal(SEG)), T(q)), dict(weight=W(rng.uniform(0.2, 2, 4)), reduction=red),
                          desc=f"segmentation probs {red}"))
    out.append(Sample((T(rng.standard_normal(4)), T(rng.dirichlet(np.ones(4)))), {}, desc="unbatched probs"))
    return out


def _nll_samples(rng):
    out = []
    for red in REDUCTIONS:
        logp = np.log(rng.dirichlet(np.ones(4), size=5))
        out.append(Sample((T(logp), T(_index_target(rng, 5, 4, ignore=-100))),
                          dict(weight=W(rng.uniform(0.2, 2.0, 4)), reduction=red), desc=f"weight+ignored {red}"))
        out.append(Sample((T(rng.standard_normal(SEG)), T(_index_target(rng, (2, 3, 5, 2), 4, ignore=3))),
                          dict(ignore_index=3, reduction=red), desc=f"segmentation {red}"))
    out.append(Sample((T(rng.standard_normal(4)), T(np.array(1))), {}, desc="unbatched"))
    return out


def _bce_samples(rng):
    out = []
    for red in REDUCTIONS:
        x = rng.uniform(0.05, 0.95, (3, 4))
        y = rng.uniform(0.0, 1.0, (3, 4))
        out.append(Sample((T(x), T(y)), dict(reduction=red), desc=red))
        out.append(Sample((T(x), T(y)), dict(weight=W(rng.uniform(0.2, 2, 4)), reduction=red), desc=f"class weight {red}"))
        out.append(Sample((T(x), T(y)), dict(weight=W(rng.uniform(0.2, 2, (3, 4))), reduction=red), desc=f"full weight {red}"))
    return out


def _bce_logits_samples(rng):
    out = []
    for red in REDUCTIONS:
        x = rng.standard_normal((3, 4)) * 3
        y = rng.uniform(0.0, 1.0, (3, 4))
        out.append(Sample((T(x), T(y)), dict(reduction=red), desc=red))
        out.append(Sample((T(x), T(y)), dict(weight=W(rng.uniform(0.2, 2, (3, 1))), pos_weight=W(rng.uniform(0.2, 3, 4)),
                                             reduction=red), desc=f"weight+pos_weight {red}"))
    out.append(Sample((T(rng.standard_normal((3, 4)), view="T"), T(rng.uniform(0, 1, (3, 4)))),
                      dict(pos_weight=W(rng.uniform(0.2, 3, 4))), desc="transposed"))
    out.append(Sample((T(rng.standard_normal(SEG)), T(rng.integers(0, 2, SEG).astype(float))),
                      dict(pos_weight=W(rng.uniform(0.2, 3, 2))), desc=f"segmentation masks {SEG}"))
    return out


def _kl_samples(rng):
    out = []
    for red in REDUCTIONS + ("batchmean",):
        x = np.log(rng.dirichlet(np.ones(4), size=3))
        q = rng.dirichlet(np.ones(4), size=3)
        out.append(Sample((T(x), T(q)), dict(reduction=red), desc=red))
        out.append(Sample((T(x), T(np.log(q))), dict(reduction=red, log_target=True), desc=f"log_target {red}"))
    return out


def _cosine_samples(rng):
    out = []
    for red in REDUCTIONS:
        a, b = _pair(rng, (4, 3))
        out.append(Sample((T(a), T(b), T(np.array([1, -1, 1, -1]))), dict(margin=-0.5, reduction=red), desc=red))
    a, b = _pair(rng, (3,))
    out.append(Sample((T(a), T(b), T(np.array(-1))), dict(margin=-0.9), desc="unbatched"))
    return out


LOSS_TABLE = [
    LossInfo("mse_loss", F.mse_loss, TF.mse_loss, _elementwise_samples()),
    LossInfo("mse_loss_weight", F.mse_loss, TF.mse_loss, _weighted_elementwise_samples),
    LossInfo("l1_loss", F.l1_loss, TF.l1_loss, _elementwise_samples()),
    LossInfo("l1_loss_weight", F.l1_loss, TF.l1_loss, _weighted_elementwise_samples),
    LossInfo("huber_loss", F.huber_loss, TF.huber_loss, _elementwise_samples({"delta": 0.7})),
    LossInfo("huber_loss_weight", F.huber_loss, TF.huber_loss, _weighted_elementwise_samples),
    LossInfo("smooth_l1_loss", F.smooth_l1_loss, TF.smooth_l1_loss, _elementwise_samples({"beta": 0.7})),
    LossInfo("smooth_l1_loss_beta0", F.smooth_l1_loss, TF.smooth_l1_loss, _elementwise_samples({"beta": 0.0})),
    LossInfo("cross_entropy", F.cross_entropy, TF.cross_entropy, _ce_samples()),
    LossInfo("cross_entropy_smoothing", F.cross_entropy, TF.cross_entropy, _ce_samples(0.2)),
    LossInfo("cross_entropy_probs", F.cross_entropy, TF.cross_entropy, _ce_prob_samples),
    LossInfo("nll_loss", F.nll_loss, TF.nll_loss, _nll_samples),
    LossInfo("binary_cross_entropy", F.binary_cross_entropy, TF.binary_cross_entropy, _bce_samples),
    LossInfo("binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits,
             TF.binary_cross_entropy_with_logits, _bce_logits_samples),
    LossInfo("kl_div", F.kl_div, TF.kl_div, _kl_samples),
    LossInfo("cosine_embedding_loss", F.cosine_embedding_loss, TF.cosine_embedding_loss, _cosine_samples),
]
IDS = [r.name for r in LOSS_TABLE]


def _call(row, sample, lib, dtype, device="cpu", requires_grad=True):
    leaves, call = materialize(sample, lib, dtype, device, requires_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kl_div's 'mean' warning, on both sides
        out = call(row.op if lib == "am" else row.ref, *leaves)
    return leaves, out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("row", LOSS_TABLE, ids=IDS)
def test_forward_and_backward_match_torch(row, dtype, device):
    rtol, atol = TOL[dtype]
    rng = np.random.default_rng(0)
    for sample in row.sample_list():
        where = f"{row.name} {sample}"
        ours_leaves, ours = _call(row, sample, "am", dtype, device)
        ref_leaves, ref = _call(row, sample, "torch", dtype)
        assert ours.device == device, where
        assert tuple(ours.shape) == tuple(ref.shape), f"{where}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
        assert ours.dtype.name == str(ref.dtype).replace("torch.", ""), where
        np.testing.assert_allclose(to_numpy(ours), to_numpy(ref), rtol=rtol, atol=atol, err_msg=where)
        up = rng.standard_normal(tuple(ref.shape))
        ours.backward(am.tensor(up, dtype=ours.dtype, device=device))
        ref.backward(torch.tensor(up, dtype=ref.dtype))
        for i, (a, t) in enumerate(zip(ours_leaves, ref_leaves)):
            if not t.requires_grad:
                assert a.grad is None, f"{where}: leaf {i} got a gradient"
                continue
            assert a.grad is not None, f"{where}: leaf {i} got no gradient"
            np.testing.assert_allclose(to_numpy(a.grad), to_numpy(t.grad), rtol=rtol, atol=atol,
                                       err_msg=f"{where}: gradient of leaf {i}")


@pytest.mark.parametrize("row", LOSS_TABLE, ids=IDS)
def test_gradcheck(row, device):
    for sample in row.sample_list():
        leaves, call = materialize(sample, "am", "float64", device)
        try:
            am.autograd.gradcheck(lambda *ls: call(row.op, *ls), tuple(leaves))
        except am.autograd.GradcheckError as e:
            raise AssertionError(f"{row.name} {sample}: {e}") from None


GG_ROWS = [r for r in LOSS_TABLE if r.gradgrad]


GG_MAX_ELEMENTS = 130  # gradgradcheck costs ~(differentiated elements)^2: the volume samples
                      # get forward/backward/gradcheck above, double backward runs on small ones


@pytest.mark.parametrize("row", GG_ROWS, ids=[r.name for r in GG_ROWS])
def test_gradgradcheck(row, device):
    for sample in row.sample_list():
        leaves, call = materialize(sample, "am", "float64", device)
        if sum(t.numel() for t in leaves if t.requires_grad) > GG_MAX_ELEMENTS:
            continue
        try:
            am.autograd.gradgradcheck(lambda *ls: call(row.op, *ls), tuple(leaves))
        except am.autograd.GradcheckError as e:
            raise AssertionError(f"{row.name} {sample}: {e}") from None


# ------------------------------------------------------------------------------- modules
MODULES = [
    ("L1Loss", {}, "pair"),
    ("MSELoss", {"reduction": "sum"}, "pair"),
    ("HuberLoss", {"delta": 0.5}, "pair"),
    ("SmoothL1Loss", {"beta": 0.5, "reduction": "none"}, "pair"),
    ("CrossEntropyLoss", {"weight": "class", "ignore_index": 2, "label_smoothing": 0.1}, "index"),
    ("CrossEntropyLoss", {}, "seg"),
    ("NLLLoss", {"weight": "class", "reduction": "sum"}, "index"),
    ("BCELoss", {"weight": "class"}, "prob"),
    ("BCEWithLogitsLoss", {"weight": "class", "pos_weight": "class"}, "logit"),
    ("KLDivLoss", {"reduction": "batchmean", "log_target": True}, "kl"),
    ("CosineEmbeddingLoss", {"margin": 0.2}, "cos"),
]


def _module_inputs(kind, rng):
    if kind == "pair":
        return list(_pair(rng))
    if kind == "index":
        return [rng.standard_normal((6, 4)), rng.integers(0, 4, 6)]
    if kind == "seg":
        return [rng.standard_normal(SEG), rng.integers(0, 4, (2, 3, 5, 2))]
    if kind == "prob":
        return [rng.uniform(0.05, 0.95, (3, 4)), rng.uniform(0, 1, (3, 4))]
    if kind == "logit":
        return [rng.standard_normal((3, 4)), rng.uniform(0, 1, (3, 4))]
    if kind == "kl":
        return [np.log(rng.dirichlet(np.ones(4), 3)), np.log(rng.dirichlet(np.ones(4), 3))]
    return [rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), np.array([1, -1, -1, 1])]


@pytest.mark.parametrize("name,kwargs,kind", MODULES, ids=[f"{m[0]}-{m[2]}" for m in MODULES])
def test_loss_modules_match_torch(name, kwargs, kind, device):
    rng = np.random.default_rng(3)
    arrays = _module_inputs(kind, rng)
    ours_kw, ref_kw = {}, {}
    for k, v in kwargs.items():
        if v == "class":
            w = rng.uniform(0.2, 2.0, 4)
            ours_kw[k], ref_kw[k] = am.tensor(w, device=device), torch.tensor(w)
        else:
            ours_kw[k] = ref_kw[k] = v
    ours_m, ref_m = getattr(am.nn, name)(**ours_kw), getattr(torch.nn, name)(**ref_kw)
    assert list(ours_m.state_dict()) == list(ref_m.state_dict()), name
    ours_in = [am.tensor(a, device=device, requires_grad=a.dtype.kind == "f") for a in arrays]
    ref_in = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    ours, ref = ours_m(*ours_in), ref_m(*ref_in)
    np.testing.assert_allclose(to_numpy(ours), to_numpy(ref), rtol=1e-10, atol=1e-12)
    ours.sum().backward()
    ref.sum().backward()
    for a, t in zip(ours_in, ref_in):
        if t.requires_grad:
            np.testing.assert_allclose(to_numpy(a.grad), to_numpy(t.grad), rtol=1e-10, atol=1e-12)
    assert repr(ours_m) == repr(ref_m)


def test_loss_module_buffers_follow_the_module(device):
    w = am.tensor([1.0, 2.0, 3.0])
    m = am.nn.CrossEntropyLoss(weight=w).to(device).double()
    assert m.weight.dtype == am.float64 and m.weight.device == device
    sd = m.state_dict()
    assert list(sd) == ["weight"]
    m2 = am.nn.BCEWithLogitsLoss(pos_weight=am.ones(3))
    assert list(m2.state_dict()) == list(torch.nn.BCEWithLogitsLoss(pos_weight=torch.ones(3)).state_dict())


def test_legacy_size_average_and_reduce(device):
    x, y = _pair(np.random.default_rng(4))
    a, b = am.tensor(x, device=device), am.tensor(y, device=device)
    with pytest.warns(UserWarning, match="reduction='sum'"):
        got = F.mse_loss(a, b, size_average=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = TF.mse_loss(torch.tensor(x), torch.tensor(y), size_average=False)
        assert am.nn.L1Loss(reduce=False).reduction == torch.nn.L1Loss(reduce=False).reduction == "none"
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-12)


# ------------------------------------------------------------------------------- numerics
def _both(fn_ours, fn_ref, arrays, device, grad=(0,)):
    ours_in = [am.tensor(a, device=device, requires_grad=i in grad) for i, a in enumerate(arrays)]
    ref_in = [torch.tensor(a, requires_grad=i in grad) for i, a in enumerate(arrays)]
    ours, ref = fn_ours(*ours_in), fn_ref(*ref_in)
    ours.sum().backward()
    ref.sum().backward()
    return ours, ref, ours_in, ref_in


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_extreme_logits_finite(dtype, device):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    t = np.array([1, 2, 0])
    for smoothing in (0.0, 0.1):
        ours, ref, oi, ri = _both(lambda a, b: F.cross_entropy(a, b, label_smoothing=smoothing),
                                  lambda a, b: TF.cross_entropy(a, b, label_smoothing=smoothing), [x, t], device)
        assert np.isfinite(to_numpy(ours)).all() and np.isfinite(to_numpy(oi[0].grad)).all()
        rtol = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(to_numpy(ours), to_numpy(ref), rtol=rtol)
        np.testing.assert_allclose(to_numpy(oi[0].grad), to_numpy(ri[0].grad), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_extreme_logits_finite(dtype, device):
    x = np.array([1e4, -1e4, 1e4, -1e4, 0.0], dtype=dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.5], dtype=dtype)
    pw = np.array([3.0], dtype=dtype)
    ours, ref, oi, ri = _both(lambda a, b, p: F.binary_cross_entropy_with_logits(a, b, pos_weight=p, reduction="none"),
                              lambda a, b, p: TF.binary_cross_entropy_with_logits(a, b, pos_weight=p, reduction="none"),
                              [x, y, pw], device, grad=(0, 1))
    for t in (ours, oi[0].grad, oi[1].grad):
        assert np.isfinite(to_numpy(t)).all()
    np.testing.assert_allclose(to_numpy(ours), to_numpy(ref), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(oi[0].grad), to_numpy(ri[0].grad), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(to_numpy(oi[1].grad), to_numpy(ri[1].grad), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_probabilities_zero_and_one_finite_like_torch(dtype, device):
    x = np.array([0.0, 1.0, 0.0, 1.0, 0.5], dtype=dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.3], dtype=dtype)
    ours, ref, oi, ri = _both(lambda a, b: F.binary_cross_entropy(a, b, reduction="none"),
                              lambda a, b: TF.binary_cross_entropy(a, b, reduction="none"), [x, y], device)
    assert np.isfinite(to_numpy(ours)).all() and np.isfinite(to_numpy(oi[0].grad)).all()
    np.testing.assert_allclose(to_numpy(ours), to_numpy(ref), rtol=1e-6)  # 100 where the log is clamped
    # PyTorch's gradient w (x - y) / max(x (1 - x), 1e-12): +-1e12 at the clamped ends
    np.testing.assert_allclose(to_numpy(oi[0].grad), to_numpy(ri[0].grad), rtol=1e-6)


def test_bce_target_gradient_is_that_of_the_clamped_loss(device):
    """Where the log is clamped (x = 0 or 1) PyTorch's target gradient is -logit(x) = +-inf;
    ours is the derivative of the loss actually computed, log(1-x) - log(x) clamped: +-100."""
    x = am.tensor([0.0, 1.0, 0.25], dtype=am.float64, device=device)
    y = am.tensor([0.5, 0.5, 0.5], dtype=am.float64, device=device, requires_grad=True)
    F.binary_cross_entropy(x, y, reduction="sum").backward()
    np.testing.assert_allclose(to_numpy(y.grad), [100.0, -100.0, np.log(0.75) - np.log(0.25)], rtol=1e-12)


def test_kl_div_mean_warns_like_torch(device):
    x = am.zeros(2, 3, device=device)
    with pytest.warns(UserWarning, match="batchmean"):
        F.kl_div(x, am.full((2, 3), 0.5, device=device))


def test_cross_entropy_all_ignored_is_nan_with_zero_grad(device):
    x = np.random.default_rng(5).standard_normal((3, 4))
    t = np.full(3, -100)
    ours, ref, oi, ri = _both(lambda a, b: F.cross_entropy(a, b), lambda a, b: TF.cross_entropy(a, b), [x, t], device)
    assert np.isnan(to_numpy(ours)) and np.isnan(to_numpy(ref))
    np.testing.assert_array_equal(to_numpy(oi[0].grad), to_numpy(ri[0].grad))


def test_cross_entropy_matches_log_softmax_plus_nll(device):
    """The fused op and the composition of its parts agree (a second, independent path)."""
    rng = np.random.default_rng(6)
    x = am.tensor(rng.standard_normal(SEG), device=device, requires_grad=True)
    t = am.tensor(rng.integers(0, 4, (2, 3, 5, 2)), device=device)
    w = am.tensor(rng.uniform(0.5, 2, 4), device=device)
    fused = F.cross_entropy(x, t, w)
    (g1,) = am.autograd.grad(fused, x)
    composed = F.nll_loss(F.log_softmax(x, 1), t, w)
    (g2,) = am.autograd.grad(composed, x)
    np.testing.assert_allclose(to_numpy(fused), to_numpy(composed), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(g1), to_numpy(g2), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------- errors
def test_elementwise_target_shape_and_dtype_mismatch_raise(device):
    a = am.zeros(3, 4, device=device)
    with pytest.raises(ValueError, match=r"mse_loss.*\(3, 1\).*\(3, 4\)"):
        F.mse_loss(a, am.zeros(3, 1, device=device))
    with pytest.raises(RuntimeError, match=r"l1_loss.*float64"):
        F.l1_loss(a, am.zeros(3, 4, dtype=am.float64, device=device))
    with pytest.raises(ValueError, match="reduction"):
        F.huber_loss(a, a, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        am.nn.MSELoss(reduction="batchmean")
    with pytest.raises(RuntimeError, match="delta"):
        F.huber_loss(a, a, delta=0.0)
    with pytest.raises(ValueError, match=r"weight of shape \(4,\)"):
        F.mse_loss(a, a, weight=am.ones(4, device=device))


def test_cross_entropy_errors_name_both_shapes(device, sync_checks):
    x = am.zeros(3, 4, device=device)
    with pytest.raises(IndexError, match=r"Target 5 is out of bounds"):
        F.cross_entropy(x, am.tensor([0, 5, 1], device=device))
    with pytest.raises(IndexError, match=r"Target -3"):
        F.nll_loss(x, am.tensor([0, -3, 1], device=device))
    with pytest.raises(ValueError, match=r"batch_size \(3\).*batch_size \(2\).*\(3, 4\).*\(2,\)"):
        F.cross_entropy(x, am.tensor([0, 1], device=device))
    with pytest.raises(RuntimeError, match=r"\(2, 3, 5\).*\(2, 4, 3\)"):
        F.cross_entropy(am.zeros(2, 4, 3, 5, device=device), am.zeros(2, 4, 3, dtype=am.int64, device=device))
    with pytest.raises(RuntimeError, match=r"probabilities.*\(3, 4\).*\(3,\)"):
        F.cross_entropy(x, am.zeros(3, device=device))
    with pytest.raises(RuntimeError, match="ignore_index is not supported"):
        F.cross_entropy(x, am.zeros(3, 4, device=device), ignore_index=1)
    with pytest.raises(ValueError, match="0-d"):
        F.cross_entropy(am.zeros((), device=device), am.tensor(0, device=device))
    with pytest.raises(RuntimeError, match=r"weight of shape \(4,\)"):
        F.cross_entropy(x, am.tensor([0, 1, 2], device=device), weight=am.ones(3, device=device))
    with pytest.raises(RuntimeError, match="not differentiable with respect to 'weight'"):
        F.nll_loss(x, am.tensor([0, 1, 2], device=device), weight=am.ones(4, device=device, requires_grad=True))
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, am.tensor([0, 1, 2], device=device), label_smoothing=1.5)


def test_binary_losses_errors(device, sync_checks):
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(am.tensor([1.5], device=device), am.tensor([1.0], device=device))
    with pytest.raises(ValueError, match=r"\(3, 1\).*\(3,\)"):
        F.binary_cross_entropy(am.full((3,), 0.5, device=device), am.zeros(3, 1, device=device))
    with pytest.raises(RuntimeError, match=r"pos_weight of shape \(5,\).*\(3, 4\)"):
        F.binary_cross_entropy_with_logits(am.zeros(3, 4, device=device), am.zeros(3, 4, device=device),
                                           pos_weight=am.ones(5, device=device))
    with pytest.raises(ValueError, match="batchmean"):
        F.mse_loss(am.zeros(2, device=device), am.zeros(2, device=device), reduction="batchmean")
