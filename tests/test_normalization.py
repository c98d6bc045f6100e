"""Normalization (``avila_ml.ops.normalization`` and the norm layers) against PyTorch.

A table drives the functional checks: batch / layer / group / instance norm with 0 to 4
spatial dims, with and without affine parameters, training and evaluation; for each row and
device, forward and gradients vs PyTorch (float64 tight, float32 at float32 precision),
gradcheck and gradgradcheck in float64. Then the layers: running statistics over several
training steps, eval mode, state-dict interop in both directions, and the errors.
BatchNorm4d / InstanceNorm4d have no PyTorch class; their twins are PyTorch's own
``_BatchNorm`` / ``_InstanceNorm`` with the rank check opened to (N, C, t, x, y, z).
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

import avila_ml as am
from op_table import FunctionalRow, Sample, T, W, materialize, to_numpy

F = am.nn.functional
TOL = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-5)}
SHAPES = [(4, 3), (3, 4, 5), (2, 3, 4, 4), (2, 3, 2, 3, 2), (2, 2, 2, 2, 2, 3)]  # 0..4 spatial dims


NormInfo = FunctionalRow


def _affine(rng, c):
    return T(rng.uniform(0.5, 1.5, c)), T(rng.standard_normal(c))


def _batch_norm_train(rng):
    out = []
    for shape in SHAPES:
        c = shape[1]
        x = rng.standard_normal(shape) * 2 + 1
        w, b = _affine(rng, c)
        out.append(Sample((T(x), W(np.zeros(c)), W(np.ones(c)), w, b),
                          dict(training=True, momentum=0.3), desc=f"{shape} affine"))
        out.append(Sample((T(x), None, None), dict(training=True, eps=1e-3), desc=f"{shape} plain"))
    x = rng.standard_normal((4, 5))
    out.append(Sample((T(x, view="T"), None, None, *_affine(rng, 5)), dict(training=True), desc="transposed"))
    return out


def _batch_norm_eval(rng):
    out = []
    for shape in SHAPES[1:4]:
        c = shape[1]
        w, b = _affine(rng, c)
        out.append(Sample((T(rng.standard_normal(shape)), W(rng.standard_normal(c)), W(rng.uniform(0.5, 2, c)), w, b),
                          dict(training=False), desc=f"{shape} eval"))
    return out


def _layer_norm(rng):
    return [
        Sample((T(rng.standard_normal((4, 5))), (5,), *_affine(rng, 5)), {}, desc="(4, 5) affine"),
        Sample((T(rng.standard_normal((2, 3, 4))), (3, 4), T(rng.uniform(0.5, 1.5, (3, 4))),
                T(rng.standard_normal((3, 4)))), dict(eps=1e-3), desc="(2, 3, 4) over (3, 4)"),
        Sample((T(rng.standard_normal((3, 6))), [6]), {}, desc="no affine"),
        Sample((T(rng.standard_normal((3, 6))), (6,), None, T(rng.standard_normal(6))), {}, desc="bias only"),
        Sample((T(rng.standard_normal((4, 5)), view="T"), (5,), *_affine(rng, 5)), {}, desc="transposed"),
    ]


def _group_norm(rng):
    return [
        Sample((T(rng.standard_normal((2, 6, 5))), 3, *_affine(rng, 6)), {}, desc="(2, 6, 5) G=3"),
        Sample((T(rng.standard_normal((2, 4, 3, 3))), 2, *_affine(rng, 4)), dict(eps=1e-3), desc="2-d G=2"),
        Sample((T(rng.standard_normal((2, 4, 2, 2, 2, 2))), 4, *_affine(rng, 4)), {}, desc="4 spatial dims G=C"),
        Sample((T(rng.standard_normal((1, 4, 3))), 1), {}, desc="batch 1, G=1, no affine"),
        Sample((T(rng.standard_normal((3, 4))), 2, T(rng.uniform(0.5, 1.5, 4)), None), {}, desc="(N, C), weight only"),
    ]


def _instance_norm(rng):
    out = []
    for shape in SHAPES[1:]:
        c = shape[1]
        out.append(Sample((T(rng.standard_normal(shape)),), {}, desc=f"{shape} plain"))
        w, b = _affine(rng, c)
        out.append(Sample((T(rng.standard_normal(shape)), W(np.zeros(c)), W(np.ones(c)), w, b),
                          dict(use_input_stats=True, momentum=0.2), desc=f"{shape} running stats"))
    out.append(Sample((T(rng.standard_normal((2, 3, 4))), W(rng.standard_normal(3)), W(rng.uniform(0.5, 2, 3))),
                      dict(use_input_stats=False), desc="running stats used (eval)"))
    return out


NORM_TABLE = [
    NormInfo("batch_norm_train", F.batch_norm, TF.batch_norm, _batch_norm_train),
    NormInfo("batch_norm_eval", F.batch_norm, TF.batch_norm, _batch_norm_eval),
    NormInfo("layer_norm", F.layer_norm, TF.layer_norm, _layer_norm),
    NormInfo("group_norm", F.group_norm, TF.group_norm, _group_norm),
    NormInfo("instance_norm", F.instance_norm, TF.instance_norm, _instance_norm),
]
IDS = [r.name for r in NORM_TABLE]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("row", NORM_TABLE, ids=IDS)
def test_forward_and_backward_match_torch(row, dtype, device):
    rtol, atol = TOL[dtype]
    rng = np.random.default_rng(0)
    for sample in row.sample_list():
        where = f"{row.name} {sample}"
        ours_leaves, call = materialize(sample, "am", dtype, device)
        ref_leaves, ref_call = materialize(sample, "torch", dtype)
        ours, ref = call(row.op, *ours_leaves), ref_call(row.ref, *ref_leaves)
        assert ours.device == device and tuple(ours.shape) == tuple(ref.shape), where
        assert ours.dtype.name == str(ref.dtype).replace("torch.", ""), where
        np.testing.assert_allclose(to_numpy(ours), to_numpy(ref), rtol=rtol, atol=atol, err_msg=where)
        for i, (a, t) in enumerate(zip(ours_leaves, ref_leaves)):  # running statistics, updated in place
            if not t.requires_grad:
                np.testing.assert_allclose(to_numpy(a), to_numpy(t), rtol=rtol, atol=atol,
                                           err_msg=f"{where}: buffer {i} after the update")
        up = rng.standard_normal(tuple(ref.shape))
        ours.backward(am.tensor(up, dtype=ours.dtype, device=device))
        ref.backward(torch.tensor(up, dtype=ref.dtype))
        for i, (a, t) in enumerate(zip(ours_leaves, ref_leaves)):
            if t.requires_grad:
                np.testing.assert_allclose(to_numpy(a.grad), to_numpy(t.grad), rtol=rtol, atol=atol,
                                           err_msg=f"{where}: gradient of leaf {i}")
            else:
                assert a.grad is None, where


@pytest.mark.parametrize("row", NORM_TABLE, ids=IDS)
def test_gradcheck(row, device):
    for sample in row.sample_list():
        leaves, call = materialize(sample, "am", "float64", device)
        try:
            am.autograd.gradcheck(lambda *ls: call(row.op, *ls), tuple(leaves))
        except am.autograd.GradcheckError as e:
            raise AssertionError(f"{row.name} {sample}: {e}") from None


@pytest.mark.parametrize("row", NORM_TABLE, ids=IDS)
def test_gradgradcheck(row, device):
    for sample in row.sample_list():
        leaves, call = materialize(sample, "am", "float64", device)
        try:
            am.autograd.gradgradcheck(lambda *ls: call(row.op, *ls), tuple(leaves))
        except am.autograd.GradcheckError as e:
            raise AssertionError(f"{row.name} {sample}: {e}") from None


# -------------------------------------------------------------------------------- layers
class TorchBatchNorm4d(_BatchNorm):
    """PyTorch's batch norm, opened to (N, C, t, x, y, z): the reference for BatchNorm4d."""

    def _check_input_dim(self, input):
        if input.dim() != 6:
            raise ValueError(f"expected 6D input (got {input.dim()}D input)")


class TorchInstanceNorm4d(_InstanceNorm):
    """PyTorch's instance norm, opened to (N, C, t, x, y, z): the reference for InstanceNorm4d."""

    def _get_no_batch_dim(self):
        return 5

    def _check_input_dim(self, input):
        if input.dim() not in (5, 6):
            raise ValueError(f"expected 5D or 6D input (got {input.dim()}D input)")


BN = {"BatchNorm1d": ((4, 3, 5), torch.nn.BatchNorm1d), "BatchNorm2d": ((3, 3, 4, 4), torch.nn.BatchNorm2d),
      "BatchNorm3d": ((2, 3, 2, 3, 3), torch.nn.BatchNorm3d), "BatchNorm4d": ((2, 3, 2, 2, 3, 2), TorchBatchNorm4d)}
IN = {"InstanceNorm1d": ((2, 3, 6), torch.nn.InstanceNorm1d), "InstanceNorm2d": ((2, 3, 4, 4), torch.nn.InstanceNorm2d),
      "InstanceNorm3d": ((2, 3, 2, 3, 3), torch.nn.InstanceNorm3d),
      "InstanceNorm4d": ((2, 3, 2, 2, 3, 2), TorchInstanceNorm4d)}


def _twins(name, ref_cls, *args, device="cpu", **kwargs):
    """Our layer and PyTorch's, in float64, with the same random affine parameters."""
    ours = getattr(am.nn, name)(*args, **kwargs).to(device).double()
    ref = ref_cls(*args, **kwargs).double()
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(torch.tensor(rng.uniform(0.5, 1.5, tuple(p.shape))))
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    return ours, ref


def _step_and_compare(ours, ref, x, where, device):
    xa = am.tensor(x, device=device, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    ya, yt = ours(xa), ref(xt)
    np.testing.assert_allclose(to_numpy(ya), to_numpy(yt), rtol=1e-10, atol=1e-12, err_msg=where)
    up = np.random.default_rng(x.size).standard_normal(x.shape)
    ya.backward(am.tensor(up, device=device))
    yt.backward(torch.tensor(up))
    np.testing.assert_allclose(to_numpy(xa.grad), to_numpy(xt.grad), rtol=1e-10, atol=1e-12, err_msg=where)
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(to_numpy(p.grad), to_numpy(q.grad), rtol=1e-10, atol=1e-12, err_msg=f"{where} {n}.grad")
        p.grad = None
        q.grad = None
    for (n, b), (m, c) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert n == m
        np.testing.assert_allclose(to_numpy(b), c.numpy(), rtol=1e-12, atol=1e-14, err_msg=f"{where}: {n}")


@pytest.mark.parametrize("momentum", [0.1, None, 0.5])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("name", list(BN))
def test_batchnorm_training_steps_and_eval_match_torch(name, affine, momentum, device):
    shape, ref_cls = BN[name]
    ours, ref = _twins(name, ref_cls, 3, momentum=momentum, affine=affine, device=device)
    rng = np.random.default_rng(1)
    for step in range(3):
        _step_and_compare(ours, ref, rng.standard_normal(shape) * (step + 1) + step, f"{name} train step {step}", device)
    assert int(ours.num_batches_tracked.item()) == 3
    ours.eval()
    ref.eval()
    _step_and_compare(ours, ref, rng.standard_normal(shape), f"{name} eval", device)


@pytest.mark.parametrize("name", list(BN))
def test_batchnorm_without_running_stats_uses_batch_stats_in_eval(name, device):
    shape, ref_cls = BN[name]
    ours, ref = _twins(name, ref_cls, 3, track_running_stats=False, device=device)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    ours.eval()
    ref.eval()
    _step_and_compare(ours, ref, np.random.default_rng(2).standard_normal(shape), f"{name} untracked eval", device)


@pytest.mark.parametrize("kwargs", [{}, {"affine": True, "track_running_stats": True},
                                    {"affine": True, "momentum": 0.3}, {"track_running_stats": True, "momentum": None}],
                         ids=["default", "affine+tracked", "affine", "tracked-momentum-None"])
@pytest.mark.parametrize("name", list(IN))
def test_instancenorm_steps_eval_and_unbatched_match_torch(name, kwargs, device):
    shape, ref_cls = IN[name]
    ours, ref = _twins(name, ref_cls, 3, device=device, **kwargs)
    rng = np.random.default_rng(3)
    for step in range(2):
        _step_and_compare(ours, ref, rng.standard_normal(shape) + step, f"{name} {kwargs} step {step}", device)
    _step_and_compare(ours, ref, rng.standard_normal(shape[1:]), f"{name} {kwargs} unbatched", device)
    ours.eval()
    ref.eval()
    _step_and_compare(ours, ref, rng.standard_normal(shape), f"{name} {kwargs} eval", device)


@pytest.mark.parametrize("args,kwargs,shape", [
    ((5,), {}, (3, 5)),
    (((3, 4),), {"eps": 1e-3}, (2, 5, 3, 4)),
    ((4,), {"bias": False}, (2, 3, 4)),
    ((4,), {"elementwise_affine": False}, (2, 4)),
], ids=["1-d", "2-d shape", "no bias", "no affine"])
def test_layernorm_module_matches_torch(args, kwargs, shape, device):
    ours, ref = _twins("LayerNorm", torch.nn.LayerNorm, *args, device=device, **kwargs)
    _step_and_compare(ours, ref, np.random.default_rng(4).standard_normal(shape), f"LayerNorm{args}{kwargs}", device)
    assert repr(ours) == repr(ref)


@pytest.mark.parametrize("args,kwargs,shape", [
    ((2, 4), {}, (2, 4, 5)),
    ((3, 6), {"eps": 1e-3}, (1, 6, 3, 3)),
    ((1, 4), {"affine": False}, (2, 4, 2, 2, 2, 2)),
    ((4, 4), {"bias": False}, (2, 4, 3)),
], ids=["1-d", "batch 1", "4-d no affine", "no bias"])
def test_groupnorm_module_matches_torch(args, kwargs, shape, device):
    ours, ref = _twins("GroupNorm", torch.nn.GroupNorm, *args, device=device, **kwargs)
    _step_and_compare(ours, ref, np.random.default_rng(5).standard_normal(shape), f"GroupNorm{args}{kwargs}", device)
    assert repr(ours) == repr(ref)


# ------------------------------------------------------------------ state dict interop
LAYERS = [
    ("BatchNorm1d", torch.nn.BatchNorm1d, (4,), {}),
    ("BatchNorm2d", torch.nn.BatchNorm2d, (4,), {"affine": False}),
    ("BatchNorm3d", torch.nn.BatchNorm3d, (4,), {"track_running_stats": False}),
    ("BatchNorm4d", TorchBatchNorm4d, (4,), {"bias": False}),
    ("InstanceNorm1d", torch.nn.InstanceNorm1d, (4,), {}),
    ("InstanceNorm2d", torch.nn.InstanceNorm2d, (4,), {"affine": True, "track_running_stats": True}),
    ("InstanceNorm3d", torch.nn.InstanceNorm3d, (4,), {"affine": True}),
    ("InstanceNorm4d", TorchInstanceNorm4d, (4,), {"track_running_stats": True}),
    ("LayerNorm", torch.nn.LayerNorm, ((3, 4),), {}),
    ("LayerNorm", torch.nn.LayerNorm, (4,), {"bias": False}),
    ("GroupNorm", torch.nn.GroupNorm, (2, 4), {}),
]


@pytest.mark.parametrize("name,ref_cls,args,kwargs", LAYERS, ids=[f"{n}-{k}" for n, _, _, k in LAYERS])
def test_state_dict_round_trip_with_torch(name, ref_cls, args, kwargs, device):
    ours = getattr(am.nn, name)(*args, **kwargs).to(device)
    ref = ref_cls(*args, **kwargs)
    ref_sd = ref.state_dict()
    ours_sd = ours.state_dict()
    assert list(ours_sd) == list(ref_sd)
    for k in ref_sd:
        assert tuple(ours_sd[k].shape) == tuple(ref_sd[k].shape), k
        assert ours_sd[k].dtype.name == str(ref_sd[k].dtype).replace("torch.", ""), k
        np.testing.assert_array_equal(to_numpy(ours_sd[k]), ref_sd[k].numpy(), err_msg=f"default {k}")
    rng = np.random.default_rng(6)
    with torch.no_grad():  # distinctive values, so a copy in the wrong slot would show
        for k, v in ref_sd.items():
            v.copy_(torch.tensor(rng.integers(1, 9, tuple(v.shape)) if v.dtype == torch.int64
                                 else rng.uniform(0.5, 1.5, tuple(v.shape))))
    ours.load_state_dict({k: v.numpy() for k, v in ref_sd.items()})
    back = ref_cls(*args, **kwargs)
    back.load_state_dict({k: torch.from_numpy(np.array(to_numpy(v))) for k, v in ours.state_dict().items()})
    for k, v in back.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), ref_sd[k].numpy(), err_msg=f"round trip {k}")
    assert repr(ours).replace("4d", "3d") == repr(ref).replace("TorchBatchNorm4d", "BatchNorm3d").replace(
        "TorchInstanceNorm4d", "InstanceNorm3d").replace("4d", "3d")


# --------------------------------------------------------------------------------- errors
def test_batch_norm_training_with_one_value_per_channel_raises(device):
    bn = am.nn.BatchNorm1d(3).to(device)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size \(1, 3\)"):
        bn(am.zeros(1, 3, device=device))
    assert int(bn.num_batches_tracked.item()) == 0  # the failed call changed nothing
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        F.batch_norm(am.zeros(1, 3, 1, device=device), None, None, training=True)
    bn.eval()
    assert bn(am.zeros(1, 3, device=device)).shape == (1, 3)  # fine in eval mode


@pytest.mark.parametrize("name,bad", [("BatchNorm1d", (2, 3, 4, 4)), ("BatchNorm2d", (2, 3, 4)),
                                      ("BatchNorm3d", (2, 3, 4, 4)), ("BatchNorm4d", (2, 3, 2, 2, 2)),
                                      ("InstanceNorm1d", (2, 3, 4, 4)), ("InstanceNorm2d", (3, 4)),
                                      ("InstanceNorm4d", (2, 3, 2, 2))])
def test_wrong_input_rank_raises(name, bad, device):
    m = getattr(am.nn, name)(3).to(device)
    with pytest.raises(ValueError, match=rf"{name}: expected .*D input \(got {len(bad)}D input of shape"):
        m(am.zeros(*bad, device=device))


def test_channel_and_shape_errors(device):
    x = am.zeros(2, 4, 5, device=device)
    with pytest.raises(ValueError, match=r"expected input with 3 channels.*\(2, 4, 5\)"):
        am.nn.BatchNorm1d(3).to(device)(x)
    with pytest.raises(ValueError, match=r"num_features \(3\).*\(2, 4, 5\)"):
        am.nn.InstanceNorm1d(3, affine=True).to(device)(x)
    with pytest.warns(UserWarning, match="does not match num_features"):
        am.nn.InstanceNorm1d(3).to(device)(x)
    with pytest.raises(ValueError, match=r"num_channels \(4\) must be divisible by num_groups \(3\)"):
        am.nn.GroupNorm(3, 4)
    with pytest.raises(RuntimeError, match=r"divisible by num_groups.*\(2, 4, 5\).*num_groups=3"):
        F.group_norm(x, 3)
    with pytest.raises(RuntimeError, match=r"normalized_shape=\[4\].*\(2, 4, 5\)"):
        F.layer_norm(x, (4,))
    with pytest.raises(RuntimeError, match=r"weight of shape \(4,\).*\(3,\)"):
        F.batch_norm(x, None, None, am.ones(3, device=device), training=True)
    with pytest.raises(RuntimeError, match="running_mean and running_var must be defined"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(RuntimeError, match="dtype"):
        F.layer_norm(x, (5,), am.ones(5, dtype=am.float64, device=device))
    with pytest.raises(ValueError, match=r"more than 1 spatial element.*\(2, 4, 1\)"):
        F.instance_norm(am.zeros(2, 4, 1, device=device))
    with pytest.raises(TypeError, match="momentum"):
        F.batch_norm(x, am.zeros(4, device=device), am.ones(4, device=device), training=True, momentum=None)
    with pytest.raises(RuntimeError, match="floating-point"):
        F.layer_norm(am.zeros(2, 5, dtype=am.int64, device=device), (5,))
    with pytest.raises(ValueError, match="momentum"):
        am.nn.BatchNorm2d(3, momentum=1.5)


def test_double_backward_through_batch_norm_module(device):
    """create_graph through a layer: the gradient-penalty pattern ||d loss / d x||^2."""
    rng = np.random.default_rng(8)
    ours, ref = _twins("BatchNorm2d", torch.nn.BatchNorm2d, 3, device=device)
    x = rng.standard_normal((2, 3, 2, 2))
    xa, xt = am.tensor(x, device=device, requires_grad=True), torch.tensor(x, requires_grad=True)
    (ga,) = am.autograd.grad((ours(xa) ** 3).sum(), xa, create_graph=True)
    (gt,) = torch.autograd.grad((ref(xt) ** 3).sum(), xt, create_graph=True)
    (ga * ga).sum().backward()
    (gt * gt).sum().backward()
    np.testing.assert_allclose(to_numpy(xa.grad), xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(to_numpy(ours.weight.grad), ref.weight.grad.numpy(), rtol=1e-9, atol=1e-11)
