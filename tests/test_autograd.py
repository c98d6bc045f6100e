"""Engine semantics: accumulation, retain_graph, freed graphs, implicit gradients, long chains,
grad modes, autograd.grad, hooks, retain_grad, detach, the version counter, and the error
messages of mismatched shapes, dtypes and devices. Expected values come from PyTorch or
from closed forms, never from the code under test."""
from __future__ import annotations

import gc
import sys
import time

import numpy as np
import pytest
import torch

import avila_ml as am


def _np(t):
    return t.detach().cpu().numpy()


def _pair(data, device, requires_grad=True):
    """The same float64 data as an Avila ML tensor on ``device`` and a PyTorch CPU tensor."""
    a = np.asarray(data, dtype=np.float64)
    return (am.tensor(a, device=device, requires_grad=requires_grad),
            torch.tensor(a, requires_grad=requires_grad))


# ------------------------------------------------------------------------ accumulation
def test_gradients_accumulate_into_leaves(device):
    x, tx = _pair([1.0, -2.0, 3.0], device)
    for lib_x in (x, tx):
        (lib_x * lib_x).sum().backward()
        (lib_x.sin()).sum().backward()
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-12)


def test_a_leaf_used_on_several_paths_gets_the_sum(device):
    # diamond: c = (2x) * (3x) + x, dc/dx = 12 x + 1
    x, tx = _pair([0.5, -1.5], device)
    for v in (x, tx):
        a, b = v * 2, v * 3
        (a * b + v).sum().backward()
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(_np(x.grad), 12 * np.array([0.5, -1.5]) + 1)


def test_zero_grad_by_assigning_none(device):
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    (x * 3).sum().backward()
    x.grad = None
    (x * 5).sum().backward()
    np.testing.assert_array_equal(_np(x.grad), [5.0, 5.0])


def test_unused_output_of_a_multi_output_op_gets_zero_gradient(device):
    x, tx = _pair(np.arange(6.0), device)
    for v in (x, tx):
        parts = v.split(2)
        (parts[1] * 3).sum().backward()
    np.testing.assert_array_equal(_np(x.grad), tx.grad.numpy())


# ------------------------------------------------------------------ retain_graph / freed
def test_retain_graph_allows_a_second_backward(device):
    x, tx = _pair([1.0, 2.0], device)
    for v in (x, tx):
        y = (v.exp() * v).sum()
        y.backward(retain_graph=True)
        y.backward()
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-12)


def test_second_backward_through_a_freed_graph_raises(device):
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*retain_graph=True"):
        y.backward()


def test_freed_graph_error_names_the_node(device):
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    y = x.exp()
    y.sum().backward()
    with pytest.raises(RuntimeError, match="Backward0"):
        y.sum().backward()


def test_autograd_grad_frees_the_graph_unless_retained(device):
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    y = (x * x).sum()
    am.autograd.grad(y, x, retain_graph=True)
    am.autograd.grad(y, x)
    with pytest.raises(RuntimeError, match="second time"):
        am.autograd.grad(y, x)


# ---------------------------------------------------------------- implicit root gradient
def test_backward_on_non_scalar_without_gradient_raises(device):
    x = am.ones(2, 3, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"implicitly created only for scalar outputs.*\(2, 3\)"):
        (x * 2).backward()


def test_backward_on_non_scalar_with_gradient(device):
    x, tx = _pair([[1.0, 2.0], [3.0, 4.0]], device)
    g = np.array([[1.0, -1.0], [0.5, 2.0]])
    (x * x).backward(am.tensor(g, device=device))
    (tx * tx).backward(torch.tensor(g))
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy())


def test_one_element_non_scalar_backward_needs_no_gradient(device):
    x = am.tensor([[3.0]], device=device, requires_grad=True)
    (x * x).backward()
    np.testing.assert_array_equal(_np(x.grad), [[6.0]])


def test_gradient_of_wrong_shape_raises(device):
    x = am.ones(2, 3, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"mismatch in shape.*\(3,\).*\(2, 3\)"):
        (x * 2).backward(am.ones(3, device=device))


def test_gradient_is_cast_to_the_output_dtype(device):
    # as PyTorch: a float64 gradient for a float32 output is rounded to float32 first
    x = am.tensor([0.1, 0.2], dtype=am.float64, device=device, requires_grad=True)
    tx = torch.tensor([0.1, 0.2], dtype=torch.float64, requires_grad=True)
    g = np.array([1 / 3, 2 / 3])
    x.to(am.float32).backward(am.tensor(g, dtype=am.float64, device=device))
    tx.to(torch.float32).backward(torch.tensor(g))
    assert x.grad.dtype == am.float64
    np.testing.assert_array_equal(_np(x.grad), tx.grad.numpy())


def test_backward_of_a_tensor_that_does_not_require_grad_raises(device):
    with pytest.raises(RuntimeError, match="does not require grad"):
        am.ones(2, device=device).sum().backward()


# ------------------------------------------------------------------------- long chains
def test_chain_of_100000_ops_backpropagates():
    x = am.tensor([1.0, -2.0], requires_grad=True)
    limit = sys.getrecursionlimit()
    start = time.perf_counter()
    y = x
    for _ in range(100_000):
        y = -y  # an even number of negations: dy/dx = 1
    y.sum().backward()
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])
    assert sys.getrecursionlimit() == limit
    del y
    gc.collect()  # freeing the chain must not recurse either
    # generous: ~2 s on an idle 2-core machine; the bound catches quadratic behaviour
    assert elapsed < 30, f"100,000-op chain took {elapsed:.1f} s"


def test_deep_chain_of_saved_tensors_with_autograd_grad():
    x = am.tensor(0.5, dtype=am.float64, requires_grad=True)
    y = x
    for _ in range(5_000):
        y = y * 1.0001
    (g,) = am.autograd.grad(y, x)
    assert g.item() == pytest.approx(1.0001 ** 5_000, rel=1e-9)


# --------------------------------------------------------------------------- grad modes
def test_no_grad_context_manager(device):
    x = am.ones(2, device=device, requires_grad=True)
    with am.no_grad():
        y = x * 2
        assert not am.is_grad_enabled()
    assert am.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None and y.is_leaf


def test_no_grad_decorator_restores_mode_even_on_error(device):
    x = am.ones(2, device=device, requires_grad=True)

    @am.no_grad()
    def f(t):
        return t * 2

    @am.no_grad()
    def boom():
        raise ValueError("inside")

    assert not f(x).requires_grad
    with pytest.raises(ValueError):
        boom()
    assert am.is_grad_enabled()
    assert f.__name__ == "f"


def test_enable_grad_inside_no_grad(device):
    x = am.ones(2, device=device, requires_grad=True)
    with am.no_grad():
        with am.enable_grad():
            assert (x * 2).requires_grad
        assert not (x * 2).requires_grad

    @am.enable_grad()
    def f(t):
        return t * 2

    with am.no_grad():
        assert f(x).requires_grad


def test_set_grad_enabled_call_context_and_decorator(device):
    x = am.ones(2, device=device, requires_grad=True)
    am.set_grad_enabled(False)
    try:
        assert not (x * 2).requires_grad
    finally:
        am.set_grad_enabled(True)
    assert (x * 2).requires_grad
    with am.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert am.is_grad_enabled()

    @am.set_grad_enabled(False)
    def f(t):
        return t * 2

    assert am.is_grad_enabled()  # decorating does not switch the mode
    assert not f(x).requires_grad
    assert am.is_grad_enabled()


def test_requires_grad_propagates(device):
    a = am.ones(2, device=device)
    b = am.ones(2, device=device, requires_grad=True)
    assert not (a * 2).requires_grad
    assert (a * b).requires_grad and not (a * b).is_leaf
    assert (a * b).grad_fn.name() == "MulBackward0"


# ----------------------------------------------------------------------- autograd.grad
def test_grad_multiple_inputs_and_outputs(device):
    x, tx = _pair([1.0, 2.0], device)
    w, tw = _pair([0.5, -1.0], device)
    outs = [(x * w).sum(), (x.exp() + w * w).sum()]
    touts = [(tx * tw).sum(), (tx.exp() + tw * tw).sum()]
    got = am.autograd.grad(outs, [x, w])
    want = torch.autograd.grad(touts, [tx, tw])
    for g, t in zip(got, want):
        np.testing.assert_allclose(_np(g), t.numpy(), rtol=1e-12)
    assert x.grad is None and w.grad is None  # grad() does not accumulate


def test_grad_with_grad_outputs(device):
    x, tx = _pair([[1.0, 2.0], [3.0, 4.0]], device)
    v = np.array([[1.0, 0.0], [2.0, -1.0]])
    (g,) = am.autograd.grad(x.sin(), x, am.tensor(v, device=device))
    (tg,) = torch.autograd.grad(tx.sin(), tx, torch.tensor(v))
    np.testing.assert_allclose(_np(g), tg.numpy(), rtol=1e-12)


def test_grad_allow_unused(device):
    a = am.ones(2, device=device, requires_grad=True)
    b = am.ones(2, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="input 1 was not used.*allow_unused=True"):
        am.autograd.grad((a * 2).sum(), [a, b])
    ga, gb = am.autograd.grad((a * 2).sum(), [a, b], allow_unused=True)
    assert gb is None
    np.testing.assert_array_equal(_np(ga), [2.0, 2.0])
    ga, gb = am.autograd.grad((a * 2).sum(), [a, b], materialize_grads=True)
    np.testing.assert_array_equal(_np(gb), [0.0, 0.0])


def test_grad_create_graph_gives_second_derivatives(device):
    x, tx = _pair([0.3, -1.2, 2.0], device)
    (g,) = am.autograd.grad((x ** 3 * x.sin()).sum(), x, create_graph=True)
    (tg,) = torch.autograd.grad((tx ** 3 * tx.sin()).sum(), tx, create_graph=True)
    assert g.requires_grad
    (h,) = am.autograd.grad(g.sum(), x)
    (th,) = torch.autograd.grad(tg.sum(), tx)
    np.testing.assert_allclose(_np(h), th.numpy(), rtol=1e-12)


def test_backward_create_graph_makes_grad_differentiable(device):
    x, tx = _pair([0.7, 1.3], device)
    for v in (x, tx):
        (v.exp() * v).sum().backward(create_graph=True)
    assert x.grad.requires_grad and x.grad.grad_fn is not None
    (h,) = am.autograd.grad(x.grad.sum(), x)
    (th,) = torch.autograd.grad(tx.grad.sum(), tx)
    np.testing.assert_allclose(_np(h), th.numpy(), rtol=1e-12)


def test_grad_of_an_intermediate_tensor(device):
    x, tx = _pair([1.0, 2.0], device)
    y, ty = x * 3, tx * 3
    (g,) = am.autograd.grad((y * y).sum(), y)
    (tg,) = torch.autograd.grad((ty * ty).sum(), ty)
    np.testing.assert_allclose(_np(g), tg.numpy())


def test_backward_inputs_argument(device):
    a = am.ones(2, device=device, requires_grad=True)
    b = am.ones(2, device=device, requires_grad=True)
    (a * b * 3).sum().backward(inputs=[a])
    np.testing.assert_array_equal(_np(a.grad), [3.0, 3.0])
    assert b.grad is None


# --------------------------------------------------------------------------------- hooks
def test_hook_on_a_leaf_replaces_its_gradient(device):
    x, tx = _pair([1.0, 2.0], device)
    seen = []
    for v, store in ((x, seen), (tx, [])):
        v.register_hook(lambda g, s=store: s.append(g) or g * 10)
        (v * v).sum().backward()
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy())
    np.testing.assert_allclose(_np(seen[0]), [2.0, 4.0])


def test_hook_on_a_non_leaf_changes_what_flows_upstream(device):
    x, tx = _pair([1.0, 2.0], device)
    for v in (x, tx):
        y = v * v
        y.register_hook(lambda g: g * 3)
        y.sum().backward()
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy())


def test_hook_returning_none_keeps_the_gradient_and_removal(device):
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    calls = []
    h = x.register_hook(lambda g: calls.append(1))
    (x * 2).sum().backward()
    np.testing.assert_array_equal(_np(x.grad), [2.0, 2.0])
    assert calls == [1]
    h.remove()
    (x * 2).sum().backward()
    assert calls == [1]
    y = x * 1
    h2 = y.register_hook(lambda g: g * 0)
    h2.remove()
    x.grad = None
    (y * 2).sum().backward()
    np.testing.assert_array_equal(_np(x.grad), [2.0, 2.0])


def test_hook_on_a_tensor_without_grad_raises(device):
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        am.ones(2, device=device).register_hook(lambda g: g)


# -------------------------------------------------------------------- retain_grad, detach
def test_retain_grad_keeps_a_non_leaf_gradient(device):
    x, tx = _pair([1.0, 2.0], device)
    y, ty = x * 3, tx * 3
    z, tz = x * 2, tx * 2
    y.retain_grad()
    ty.retain_grad()
    (y * y + z).sum().backward()
    (ty * ty + tz).sum().backward()
    assert y.retains_grad and not z.retains_grad
    np.testing.assert_allclose(_np(y.grad), ty.grad.numpy())
    assert z.grad is None


def test_detach_shares_memory_and_cuts_the_graph(device):
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    y = x * 2
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and d.grad_fn is None
    with am.no_grad():
        d.add_(1)
    np.testing.assert_array_equal(_np(y), [3.0, 5.0])  # same memory


def test_detach_then_in_place_is_seen_by_backward(device):
    # PyTorch: a detached alias shares the version counter
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    y = x.exp()
    y.detach().zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_requires_grad_on_a_non_leaf_cannot_be_switched_off(device):
    y = am.ones(2, device=device, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad_(False)


# ----------------------------------------------------------------------- version counter
def test_in_place_on_a_saved_output_raises(device):
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    y = x.exp()  # saves its output
    s = y.sum()
    with am.no_grad():
        y.add_(1)
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation.*output 0 of ExpBackward0, is at version 1; expected version 0"):
        s.backward()


def test_in_place_on_a_saved_input_raises(device):
    w = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    a = am.tensor([3.0, 4.0], device=device)
    y = (w * a).sum()  # Mul saves both inputs
    a.mul_(2)
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation.*\[avila_ml\.(cuda\.)?(Float|Double)Tensor \[2\]\] is at version 1.*MulBackward0"):
        y.backward()


def test_in_place_through_a_view_of_a_saved_tensor_raises(device):
    x = am.tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
    y = x.exp()
    s = y.sum()
    with am.no_grad():
        y[0:2].add_(1)  # a basic-indexing view shares y's memory and version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        s.backward()


def test_in_place_on_an_unsaved_tensor_is_fine(device):
    x = am.tensor([1.0, 2.0], device=device, requires_grad=True)
    y = x + 1  # Add saves nothing
    s = (y * 1).sum()
    with am.no_grad():
        y.add_(1)
    # Mul saved y (the version moved), so this must raise ...
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        s.backward()
    # ... while a graph that never saved y backpropagates
    x.grad = None
    y = x + 1
    s = y.sum()
    with am.no_grad():
        y.add_(1)
    s.backward()
    np.testing.assert_array_equal(_np(x.grad), [1.0, 1.0])


def test_in_place_on_a_leaf_that_requires_grad_raises_outside_no_grad(device):
    x = am.ones(2, device=device, requires_grad=True)
    for op in (lambda: x.add_(1), lambda: x.mul_(2), lambda: x.zero_(), lambda: x.fill_(3.0),
               lambda: x.copy_(am.zeros(2, device=device)), lambda: x.clamp_(0, 1)):
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
            op()


def test_integer_tensors_cannot_require_grad(device):
    with pytest.raises(RuntimeError, match="floating point.*int64"):
        am.tensor([1, 2], device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="floating point"):
        am.arange(3, device=device).requires_grad_()
    with pytest.raises(RuntimeError, match="floating point.*bool"):
        am.ones(2, dtype=am.bool, device=device).requires_grad = True
    with pytest.raises(RuntimeError, match="floating point"):
        torch.tensor([1, 2], requires_grad=True)  # the behaviour we mirror


# ---------------------------------------------------------------------------- messages
def test_matmul_mismatch_names_op_and_shapes(device):
    with pytest.raises(RuntimeError, match=r"matmul.*\(2, 3\).*\(2, 4\)"):
        am.ones(2, 3, device=device) @ am.ones(2, 4, device=device)
    with pytest.raises(RuntimeError, match=r"matmul.*batch.*\(2, 2, 3\).*\(3, 3, 2\)"):
        am.ones(2, 2, 3, device=device) @ am.ones(3, 3, 2, device=device)
    with pytest.raises(RuntimeError, match=r"matmul.*at least 1 dimension"):
        am.matmul(am.ones((), device=device), am.ones(3, device=device))


def test_cat_mismatch_names_op_and_shapes(device):
    with pytest.raises(RuntimeError, match=r"cat.*dimension 0.*\(2, 3\).*\(2, 4\)"):
        am.cat([am.ones(2, 3, device=device), am.ones(2, 4, device=device)])
    with pytest.raises(RuntimeError, match=r"stack.*\(2,\).*\(3,\)"):
        am.stack([am.ones(2, device=device), am.ones(3, device=device)])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "pow", "atan2", "remainder",
                                "floor_divide", "eq", "lt", "logical_and"])
def test_broadcast_failure_names_op_and_shapes(op, device):
    a, b = am.ones(2, 3, device=device), am.ones(4, 1, 2, device=device)
    with pytest.raises(RuntimeError, match=rf"{op}.*\(2, 3\).*\(4, 1, 2\).*broadcast"):
        getattr(am, op)(a, b)


def test_operator_broadcast_failure_names_the_op(device):
    with pytest.raises(RuntimeError, match=r"add.*\(2, 3\).*\(2,\)"):
        am.ones(2, 3, device=device) + am.ones(2, device=device)


def test_where_and_masked_fill_mismatch_messages(device):
    with pytest.raises(RuntimeError, match=r"where.*\(2,\).*\(3,\)"):
        am.where(am.ones(2, device=device) > 0, am.ones(3, device=device), 0.0)
    with pytest.raises(RuntimeError, match=r"masked_fill.*bool.*float32"):
        am.ones(3, device=device).masked_fill(am.ones(3, device=device), 0.0)
    with pytest.raises(RuntimeError, match=r"masked_fill.*\(2,\).*\(3,\)"):
        am.ones(3, device=device).masked_fill(am.ones(2, device=device) > 0, 0.0)


def test_index_dtype_errors_name_the_op(device, sync_checks):
    x = am.ones(3, 2, device=device)
    with pytest.raises(RuntimeError, match=r"gather.*integer.*float32"):
        am.gather(x, 0, am.zeros(1, 2, device=device))
    with pytest.raises(RuntimeError, match="index_select.*integer"):
        am.index_select(x, 0, am.zeros(2, device=device))
    with pytest.raises(IndexError, match=r"index_select.*out of range.*size 3"):
        am.index_select(x, 0, am.tensor([3], device=device))


def test_in_place_dtype_error_names_op_and_dtypes(device):
    a = am.ones(3, dtype=am.int64, device=device)
    with pytest.raises(RuntimeError, match=r"add_.*\(3,\).*int64"):
        a.add_(1.5)
    with pytest.raises(RuntimeError, match="copy_.*broadcast"):
        am.ones(3, device=device).copy_(am.ones(2, device=device))


def test_reshape_and_view_errors(device):
    with pytest.raises(RuntimeError, match=r"reshape.*\[4, 2\].*size 6"):
        am.ones(2, 3, device=device).reshape(4, 2)
    with pytest.raises(IndexError, match=r"sum.*dimension out of range.*\[-2, 1\].*got 2"):
        am.ones(2, 3, device=device).sum(2)


@pytest.mark.skipif(not am.cuda.is_available(), reason="needs a GPU for two devices")
def test_device_mismatch_names_both_devices():
    a, b = am.ones(2, 3), am.ones(2, 3, device="cuda")
    with pytest.raises(RuntimeError, match=r"add.*cpu.*cuda:0|add.*cuda:0.*cpu"):
        a + b
    with pytest.raises(RuntimeError, match=r"matmul.*(cpu.*cuda|cuda.*cpu)"):
        a @ b.T
    with pytest.raises(RuntimeError, match=r"cat.*(cpu.*cuda|cuda.*cpu)"):
        am.cat([a, b])
    # a 0-d CPU tensor joins a CUDA tensor, as in PyTorch
    assert (b * am.tensor(2.0)).device == "cuda:0"


# -------------------------------------------------------------------- gradient checkers
class _WrongSquare(am.autograd.Function):
    def forward(self, x):
        self.save_inputs(0)
        return x * x

    def backward(self, g):
        (x,) = self.saved_inputs
        return 3 * x * g  # should be 2 x g


class _FlatSquare(am.autograd.Function):
    """Right first derivative, but its backward is a constant: the second derivative is lost."""

    def forward(self, x):
        self.save_inputs(0)
        return x * x

    def backward(self, g):
        (x,) = self.saved_inputs
        return 2 * x.detach() * g


def test_gradcheck_reports_a_wrong_gradient():
    x = am.randn(3, dtype=am.float64, requires_grad=True)
    with pytest.raises(am.autograd.GradcheckError, match=r"input 0: worst abs error .* worst rel error"):
        am.autograd.gradcheck(_WrongSquare.apply, (x,))
    assert am.autograd.gradcheck(_WrongSquare.apply, (x,), raise_exception=False) is False
    assert am.autograd.gradcheck(_FlatSquare.apply, (x,))


def test_gradgradcheck_reports_a_wrong_second_derivative():
    x = am.randn(3, dtype=am.float64, requires_grad=True)
    with pytest.raises(am.autograd.GradcheckError):
        am.autograd.gradgradcheck(_FlatSquare.apply, (x,))


def test_gradcheck_fails_on_nan_gradients():
    class NanGrad(am.autograd.Function):
        def forward(self, x):
            return x * 2

        def backward(self, g):
            return g * float("nan")

    x = am.randn(2, dtype=am.float64, requires_grad=True)
    with pytest.raises(am.autograd.GradcheckError):
        am.autograd.gradcheck(NanGrad.apply, (x,))


def test_gradcheck_several_inputs_names_the_bad_one():
    class HalfWrong(am.autograd.Function):
        def forward(self, a, b):
            self.save_inputs(0, 1)
            return a * b

        def backward(self, g):
            a, b = self.saved_inputs
            return g * b, g * b  # the second should be g * a

    a = am.randn(2, dtype=am.float64, requires_grad=True)
    b = am.randn(2, dtype=am.float64, requires_grad=True)
    with pytest.raises(am.autograd.GradcheckError, match="input 1") as e:
        am.autograd.gradcheck(HalfWrong.apply, (a, b))
    assert "input 0" not in str(e.value)


def test_leaf_grads_own_writable_memory(device):
    """.grad is updated in place by optimizers and clip_grad_norm_: it must never be a read-only
    broadcast view, nor share memory with another leaf's grad or the caller's gradient."""
    x = am.ones(3, requires_grad=True, device=device)
    x.sum().backward()  # the gradient is a broadcast of a 0-d one
    x.grad.mul_(2)
    np.testing.assert_array_equal(x.grad.cpu().numpy(), [2.0, 2.0, 2.0])

    a = am.ones(2, requires_grad=True, device=device)
    b = am.ones(2, requires_grad=True, device=device)
    (a + b).sum().backward()  # Add hands the same gradient array to both leaves
    a.grad.mul_(5)
    np.testing.assert_array_equal(b.grad.cpu().numpy(), [1.0, 1.0])

    c = am.ones(2, requires_grad=True, device=device)
    v = am.tensor([3.0, 4.0], device=device)
    c.backward(v)  # the caller's gradient reaches the leaf unchanged
    c.grad.zero_()
    np.testing.assert_array_equal(v.cpu().numpy(), [3.0, 4.0])
