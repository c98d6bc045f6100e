"""Issue 17 (CPU speed): host fast paths of ReLU, amax/amin and batch norm, and the per-op
helpers behind them. Every fast path is compared with PyTorch (float64 where it matters) and,
where it replaces a formula, bitwise with that formula; the inputs include NaN, infinities,
signed zeros and ties, which send some of them back to the general path.
"""
import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.ops import _scalar_rows

ROW = _scalar_rows._ROW


def _rng(seed=0):
    return np.random.default_rng(seed)


def _specials(n, dtype, seed=0):
    x = _rng(seed).standard_normal(n).astype(dtype)
    x[::97] = np.nan
    x[1::101] = -0.0
    x[2::103] = 0.0
    x[3::107] = np.inf
    x[4::109] = -np.inf
    x[5::113] = -np.float32(np.nan)  # a NaN with the sign bit set (what x86 makes of 0 * inf)
    return x


# ---------------------------------------------------------------------------- scalar rows
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2 * ROW - 1, 2 * ROW, 3 * ROW + 7, 5 * ROW])
@pytest.mark.parametrize("ufunc,value", [(np.maximum, 0.0), (np.minimum, 0.0), (np.maximum, -1.5)])
def test_scalar_ufunc_is_bitwise_the_scalar_call(dtype, n, ufunc, value):
    x = _specials(n, dtype)
    v = dtype(value)
    got = _scalar_rows.scalar_ufunc(ufunc, x, v, np.empty_like(x))
    want = ufunc(x, v)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    # 2-d, and a non-contiguous input (the plain call)
    x2 = x[: (n // 7) * 7].reshape(-1, 7)
    out = np.empty_like(x2)
    assert _scalar_rows.scalar_ufunc(ufunc, x2, v, out) is out
    np.testing.assert_array_equal(out.view(np.uint8), ufunc(x2, v).view(np.uint8))
    xs = x[::2]
    np.testing.assert_array_equal(_scalar_rows.scalar_ufunc(ufunc, xs, v, np.empty_like(xs)).view(np.uint8),
                                  ufunc(xs, v).view(np.uint8))


# ----------------------------------------------------------------------------------- ReLU
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 2 * ROW + 5), (5, 7, 3 * ROW // 7)])
def test_relu_row_forward_and_backward_match_torch(dtype, shape):
    """Arrays long enough for the row loop, below the thread split: values (NaN, signed zeros,
    infinities) and the gradient equal PyTorch's (an inf gradient where the output is 0 gives 0)."""
    n = int(np.prod(shape))
    x = _specials(n, dtype).reshape(shape)
    g = _rng(1).standard_normal(shape).astype(dtype)
    g.reshape(-1)[6::127] = np.inf
    t = am.tensor(x, requires_grad=True)
    y = am.nn.functional.relu(t)
    y.backward(am.tensor(g))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(tx)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy())  # NaN == NaN, -0 == 0
    np.testing.assert_array_equal(t.grad.numpy(), tx.grad.numpy())


# ---------------------------------------------------------------------------- amax / amin
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ["distinct", "tie", "nan", "keepdim"])
@pytest.mark.parametrize("op", ["amax", "amin"])
def test_amax_backward_single_maximum_path_and_general_path_match_torch(dtype, case, op):
    """Distinct values take the one-maximum path (no count division); a tie or a NaN slice
    takes the general one. Gradients against PyTorch in float64."""
    shape = (4, 6, 9, 11)
    x = _rng(2).permutation(np.prod(shape)).reshape(shape).astype(dtype) / 7
    if case == "tie":
        x[1, 2, 3, 4] = x[1, 2, 5, 6] = (x[1, 2].max() if op == "amax" else x[1, 2].min())
    if case == "nan":
        x[2, 3, 0, 1] = np.nan
    keep = case == "keepdim"
    g = _rng(3).standard_normal((4, 6, 1, 1) if keep else (4, 6)).astype(dtype)
    t = am.tensor(x, requires_grad=True)
    y = getattr(am, op)(t, dim=(2, 3), keepdim=keep)
    y.backward(am.tensor(g))
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ty = getattr(torch, op)(tx, dim=(2, 3), keepdim=keep)
    ty.backward(torch.tensor(g.astype(np.float64)))
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy().astype(dtype))
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-6, atol=0, equal_nan=True)


def test_amax_double_backward_keeps_the_graph():
    x = am.tensor(_rng(4).standard_normal((3, 5, 4)), requires_grad=True)
    assert am.autograd.gradcheck(lambda a: am.amax(a, dim=(1, 2)) ** 2, (x,))
    assert am.autograd.gradgradcheck(lambda a: am.amax(a, dim=(1, 2)) ** 2, (x,))
