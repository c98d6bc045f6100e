"""A deterministic sweep: NaN, +inf and -inf planted at the first, a middle and the last element
of each float input of each op-table sample (float64, upstream gradient ones), comparing the
forward result AND every input gradient -- including the gradient at the planted element --
with PyTorch 2.13 (NaN where PyTorch has NaN, the same infinities, the same finite values).

Used two ways:

* ``python tests/nonfinite_sweep.py [ROW ...]`` runs the whole sweep (every row, sample, input,
  position and value) and prints each differing case, grouped by row -- the tool to find a
  convention we do not follow; ``--layers [NAME ...]`` does the same for the layers of the
  property suite (batch 3, every float input);
* ``tests/test_hardening_properties.py`` runs a deterministic slice of it in CI (every row, a
  few cases each), so the sweep's reach stays in the suite at a bounded cost.
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
import torch

import avila_ml as am
from op_table import OP_TABLE, T, _walk, materialize, to_numpy

VALUES = (np.nan, np.inf, -np.inf)

# rows whose result with an inf input has NaNs where the contraction order decides (whether an
# inf meets an inf of the other sign): einsum with three or more operands, whose order in
# PyTorch depends on the environment (left to right; the opt_einsum package's path when that is
# installed, torch.backends.opt_einsum). Not compared with an inf planted in a sample of three or
# more operands; NaN, and every product of two (matmul, mm, bmm, linear, addmm, einsum of two
# operands, ...), are, and agree.
ORDER_DEPENDENT_NAN = {"einsum"}

# PyTorch 2.13's CPU grid_sampler_2d_backward reads out of bounds and segfaults the process
# (checked by hand, one subprocess per case) for a NaN grid coordinate with padding 'border' or
# 'reflection', and for +-inf with 'reflection'; its forward is defined (NaN clamps to 0) and
# compared: row -> position of the grid among the leaves, whose backward is not run then. (Its 3-d
# backward runs, but disagrees with its own forward there: the forward clamps a NaN coordinate
# to size - 1 and reads that pixel, the backward keeps the NaN and gives the pixel no gradient.)
BACKWARD_UNSAFE_WITH_NONFINITE_GRID = {"grid_sample_border": 1, "grid_sample_reflection": 1}

FLOAT_ROWS = [r for r in OP_TABLE if "float64" in r.dtypes]


def float_inputs(sample) -> list[T]:
    """The non-empty float ``T`` markers of a sample, in the order ``materialize`` makes leaves."""
    out = []
    _walk((sample.args, sample.kwargs), lambda t: out.append(t) or t)
    return [t for t in out if t.data.dtype.kind == "f" and t.data.size]


def positions(n: int) -> list[int]:
    """First, middle and last flat positions of an input with ``n`` elements (no repeats)."""
    return sorted({0, n // 2, n - 1})


def plant(sample, target: T, pos: int, value: float):
    """A copy of ``sample`` with ``value`` at flat position ``pos`` of input ``target``."""
    def swap(t):
        if t is not target:
            return t
        d = np.array(t.data, dtype=np.float64)
        d.reshape(-1)[pos] = value
        return T(d, view=t.view, grad=t.grad)

    args, kwargs = _walk((sample.args, sample.kwargs), swap)
    return type(sample)(args, kwargs, sample.desc, sample.ref_grad, sample.smooth)


def cases(row):
    """Every (sample, planted sample, label) of a row, in a fixed order."""
    for si, sample in enumerate(row.sample_list()):
        for ti, target in enumerate(float_inputs(sample)):
            for pos in positions(target.data.size):
                for value in VALUES:
                    yield sample, plant(sample, target, pos, value), f"sample {si} ({sample.desc}) input {ti} @{pos} = {value}"


def _outcome(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", fn()
        except Exception as e:  # noqa: BLE001 - the exception is the result under test
            return "raise", e


def same_array(a: np.ndarray, b: np.ndarray, where: str, rtol=1e-7, atol=1e-9) -> None:
    """``a`` equals PyTorch's ``b``: shape, NaN positions, infinities (sign included), values."""
    assert a.shape == b.shape, f"{where}: shape {a.shape} vs PyTorch {b.shape}"
    if b.dtype.kind in "fc":
        if b.dtype in (np.float32, np.float16):  # an ulp or two of the narrower type
            eps = float(np.finfo(b.dtype).eps)
            rtol, atol = max(rtol, 4 * eps), max(atol, eps)
        a, b = a.astype(np.float64), b.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{where}: NaN positions differ")
        np.testing.assert_array_equal(np.where(np.isinf(a), a, 0), np.where(np.isinf(b), b, 0),
                                      err_msg=f"{where}: infinities differ")
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=where)
    else:
        np.testing.assert_array_equal(a, b, err_msg=where)


def same_values(ours, theirs, where: str, rtol=1e-7, atol=1e-9) -> None:
    """Outputs (tensors, tuples of them, or numbers) equal to PyTorch's."""
    if isinstance(theirs, (tuple, list)):
        assert isinstance(ours, (tuple, list)) and len(ours) == len(theirs), where
        for i, (o, t) in enumerate(zip(ours, theirs)):
            same_values(o, t, f"{where}[{i}]", rtol, atol)
        return
    if not isinstance(theirs, torch.Tensor):
        assert ours == theirs or (ours != ours and theirs != theirs), f"{where}: {ours} vs {theirs}"
        return
    same_array(to_numpy(ours), theirs.detach().numpy(), where, rtol, atol)


def check_case(row, sample, where: str, check_error=None) -> str:
    """Compare one planted sample with PyTorch; returns what was compared ("raise", "forward",
    "grad", or a reason the gradient was not run); raises AssertionError on a difference.
    ``check_error(ours, theirs, where)`` judges our exception where both raise."""
    ours_leaves, ours_call = materialize(sample, "am", "float64")
    ref_leaves, ref_call = materialize(sample, "torch", "float64")
    ko, yo = _outcome(lambda: ours_call(row.op, *ours_leaves))
    kt, yt = _outcome(lambda: ref_call(row.ref, *ref_leaves))
    if kt == "raise":
        assert ko == "raise", f"{where}: PyTorch raises {type(yt).__name__}: {yt}, ours returned"
        if check_error is not None:
            check_error(yo, yt, where)
        return "raise"
    assert ko == "ok", f"{where}: ours raised {type(yo).__name__}: {yo}; PyTorch returned"
    if row.name in ORDER_DEPENDENT_NAN and len(ref_leaves) >= 3 and any(
            bool(torch.isinf(t).any()) for t in ref_leaves if t.dtype.is_floating_point):
        return "inf with order-dependent NaN (not compared)"
    same_values(yo, yt, where)
    if not (row.differentiable and sample.ref_grad):
        return "forward"
    outs_o = yo if isinstance(yo, (tuple, list)) else (yo,)
    outs_t = yt if isinstance(yt, (tuple, list)) else (yt,)
    pairs = [(o, t) for o, t in zip(outs_o, outs_t)
             if isinstance(t, torch.Tensor) and t.requires_grad and t.dtype.is_floating_point]
    if not pairs:
        return "forward"
    grid_at = BACKWARD_UNSAFE_WITH_NONFINITE_GRID.get(row.name)
    if grid_at is not None and not bool(torch.isfinite(ref_leaves[grid_at]).all()):
        return "non-finite grid: PyTorch backward unsafe (not run)"
    go = [o for o in ours_leaves if o.requires_grad]
    gt = [t for t in ref_leaves if t.requires_grad]
    # a finite upstream gradient (ones), so a NaN in an input gradient comes from the op alone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.autograd.backward([t for _, t in pairs], [torch.ones_like(t) for _, t in pairs], inputs=gt)
        am.autograd.backward([o for o, _ in pairs], [am.ones_like(o) for o, _ in pairs], inputs=go)
    for i, (a, b) in enumerate(zip(go, gt)):
        if b.grad is None or (a.grad is None and b.grad.numel() == 0):
            continue
        assert a.grad is not None, f"{where}: no gradient for input {i}"
        same_array(to_numpy(a.grad), b.grad.numpy(), f"{where} grad {i}")
    return "grad"


def sweep(rows=None, limit_per_row=None):
    """Run the sweep; returns ({row: [failure message, ...]}, {what was compared: count})."""
    failures, counts = {}, {}
    for row in rows or FLOAT_ROWS:
        for n, (_, planted, label) in enumerate(cases(row)):
            if limit_per_row is not None and n >= limit_per_row:
                break
            try:
                what = check_case(row, planted, f"{row.name} {label}")
                counts[what] = counts.get(what, 0) + 1
            except AssertionError as e:
                failures.setdefault(row.name, []).append(" ".join(str(e).split()) or label)
    return failures, counts


def layer_sweep(names=None):
    """The layer part (the layers of tests/test_hardening_properties.py, batch 3): returns
    ({layer: [failure message, ...]}, {what was compared: count})."""
    import test_hardening_properties as props
    failures, counts = {}, {}
    for name in names or sorted(props.LAYERS):
        for arrays, label in props._layer_sweep_cases(name):
            try:
                what = props.check_layer_case(name, arrays, label)
                counts[what] = counts.get(what, 0) + 1
            except AssertionError as e:
                failures.setdefault(name, []).append(" ".join(str(e).split()) or label)
    return failures, counts


def main(argv):
    layers = "--layers" in argv
    names = [a for a in argv if a != "--layers"]
    if layers:
        failures, counts = layer_sweep(names)
    else:
        failures, counts = sweep([r for r in FLOAT_ROWS if not names or r.name in names])
    for name, msgs in failures.items():
        print(f"{name}: {len(msgs)} differing cases")
        for m in msgs[:6]:
            print("   ", m[:300])
    print("compared:", counts, "; differing:", len(failures), sorted(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
