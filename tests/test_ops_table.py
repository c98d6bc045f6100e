"""The op table, checked: for every row of ``tests/op_table.py`` and every device,
forward vs PyTorch (float64 tight, float32 at float32 precision, integers exact where the row
lists them), gradients vs PyTorch for a random upstream gradient, gradcheck and gradgradcheck
(float64 central differences)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avila_ml as am
from op_table import OP_TABLE, materialize, to_numpy

TOL = {"float64": (1e-10, 1e-12), "float32": (1.3e-6, 1e-5), "int64": (0, 0)}
_GRAD_TOL = (1e-10, 1e-12)

DIFF_ROWS = [r for r in OP_TABLE if r.differentiable]
FWD_CASES = [pytest.param(r, dt, id=f"{r.name}-{dt}") for r in OP_TABLE for dt in r.dtypes]


def _ids(rows):
    return [r.name for r in rows]


def _flat(out) -> list:
    if isinstance(out, (tuple, list)):
        return [o for x in out for o in _flat(x)]
    return [out]


def _run(row, sample, lib, dtype="float64", device="cpu", requires_grad=True):
    leaves, call = materialize(sample, lib, dtype, device, requires_grad)
    out = call(row.op if lib == "am" else row.ref, *leaves)
    return leaves, out


def _torch_dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def test_table_has_every_op():
    assert len(OP_TABLE) >= 70
    names = {r.name for r in OP_TABLE}
    for must in ("add", "matmul", "einsum", "sum", "var", "prod", "max_dim", "logsumexp", "softmax",
                 "cumsum", "pad_reflect", "pad_circular", "getitem", "gather", "scatter_add",
                 "index_select", "masked_fill", "take_along_dim", "where", "clamp", "erf"):
        assert must in names, must


@pytest.mark.parametrize("row", OP_TABLE, ids=_ids(OP_TABLE))
def test_samples_cover_views(row):
    """Every row has several samples and at least one really non-contiguous input."""
    samples = row.sample_list()
    assert len(samples) >= 3, row.name
    found = False
    for s in samples:
        views = [t for t in _markers(s) if t.view]
        if views:
            leaves, call = materialize(s, "am")
            arr = call(lambda *a, **k: [x for x in list(a) + list(k.values()) if isinstance(x, am.Tensor)], *leaves)
            found = found or any(not x.array.flags.c_contiguous for x in arr if x.numel() > 1)
    assert found, f"{row.name}: no sample with a non-contiguous tensor argument"


# rows whose op has no size-0 case: reducing *all* elements of an empty tensor to a max/min
# is an error in PyTorch too (checked in test_autograd's error tests); affine_grid rejects an
# empty output size in PyTorch too; PyTorch's pixel_unshuffle returns an empty input without
# reshaping it (ours reshapes; both checked in test_layer_ops)
_NO_SIZE0 = {"max", "min", "affine_grid", "pixel_unshuffle"}


@pytest.mark.parametrize("row", OP_TABLE, ids=_ids(OP_TABLE))
def test_samples_cover_size0_and_size1(row):
    shapes = [t.data.shape for s in row.sample_list() for t in _markers(s)]
    assert any(0 in sh for sh in shapes) or row.name in _NO_SIZE0, f"{row.name}: no size-0 sample"
    assert any(1 in sh or len(sh) == 0 for sh in shapes), f"{row.name}: no size-1 or 0-d sample"


def _markers(sample):
    from op_table import T, _walk
    found = []
    _walk((sample.args, sample.kwargs), lambda t: found.append(t) or t)
    return [t for t in found if isinstance(t, T)]


@pytest.mark.parametrize("row,dtype", FWD_CASES)
def test_forward_matches_torch(row, dtype, device):
    rtol, atol = TOL[dtype]
    for sample in row.sample_list():
        _, ours = _run(row, sample, "am", dtype, device, requires_grad=False)
        _, ref = _run(row, sample, "torch", dtype, requires_grad=False)
        ours, ref = _flat(ours), _flat(ref)
        assert len(ours) == len(ref), f"{row.name} {sample}: {len(ours)} outputs, torch gives {len(ref)}"
        for k, (o, r) in enumerate(zip(ours, ref)):
            where = f"{row.name} {sample} output {k}"
            assert isinstance(o, am.Tensor), f"{where}: got {type(o).__name__}"
            assert o.device == device, f"{where}: on {o.device}, expected {device}"
            assert tuple(o.shape) == tuple(r.shape), f"{where}: shape {tuple(o.shape)} vs torch {tuple(r.shape)}"
            assert o.dtype.name == _torch_dtype_name(r), f"{where}: dtype {o.dtype} vs torch {r.dtype}"
            np.testing.assert_allclose(to_numpy(o), to_numpy(r), rtol=rtol, atol=atol, equal_nan=True,
                                       err_msg=where)


@pytest.mark.parametrize("row", DIFF_ROWS, ids=_ids(DIFF_ROWS))
def test_backward_matches_torch(row, device):
    rng = np.random.default_rng(1)
    for sample in row.sample_list():
        if not sample.ref_grad:
            continue  # PyTorch has no derivative for this form: gradcheck covers it
        am_leaves, ours = _run(row, sample, "am", device=device)
        t_leaves, ref = _run(row, sample, "torch")
        ours = [o for o in _flat(ours) if o.requires_grad]
        ref = [r for r in _flat(ref) if r.requires_grad]
        where = f"{row.name} {sample}"
        assert len(ours) == len(ref), f"{where}: {len(ours)} differentiable outputs, torch has {len(ref)}"
        if not ref:
            continue
        ups = [rng.standard_normal(tuple(r.shape)) for r in ref]
        am.autograd.backward(ours, [am.tensor(u, device=device) for u in ups])
        torch.autograd.backward(ref, [torch.tensor(u) for u in ups])
        for i, (a, t) in enumerate(zip(am_leaves, t_leaves)):
            if not t.requires_grad:
                assert a.grad is None
                continue
            want = np.zeros(tuple(t.shape)) if t.grad is None else to_numpy(t.grad)
            got = np.zeros(tuple(a.shape)) if a.grad is None else to_numpy(a.grad)
            assert got.shape == want.shape, f"{where} leaf {i}: grad shape {got.shape} vs {want.shape}"
            np.testing.assert_allclose(got, want, rtol=_GRAD_TOL[0], atol=_GRAD_TOL[1],
                                       err_msg=f"{where}: gradient of leaf {i}")


GC_ROWS = [r for r in DIFF_ROWS if r.gradcheck]
GG_ROWS = [r for r in GC_ROWS if r.gradgrad]


@pytest.mark.parametrize("row", GC_ROWS, ids=_ids(GC_ROWS))
def test_gradcheck(row, device):
    for sample in row.sample_list():
        if not sample.smooth:
            continue  # a kink: finite differences do not apply (the torch comparison covers it)
        leaves, call = materialize(sample, "am", "float64", device)
        if not any(t.requires_grad for t in leaves):
            continue
        try:
            am.autograd.gradcheck(lambda *ls: call(row.op, *ls), tuple(leaves))
        except am.autograd.GradcheckError as e:
            raise AssertionError(f"{row.name} {sample}: {e}") from None


@pytest.mark.parametrize("row", GG_ROWS, ids=_ids(GG_ROWS))
def test_gradgradcheck(row, device):
    for sample in row.sample_list():
        if not sample.smooth:
            continue  # a kink: finite differences do not apply (the torch comparison covers it)
        leaves, call = materialize(sample, "am", "float64", device)
        if not any(t.requires_grad for t in leaves):
            continue
        try:
            am.autograd.gradgradcheck(lambda *ls: call(row.op, *ls), tuple(leaves))
        except am.autograd.GradcheckError as e:
            raise AssertionError(f"{row.name} {sample}: {e}") from None
