"""The per-op fast paths of issue 17: array-code backward when no graph is recorded, in-place
gradient accumulation in the engine, scalar operands, and the batched CPU optimizer step.

Every fast path is checked against PyTorch (float64) and against our own Tensor-op path
(``create_graph=True`` runs the differentiable backward), and the features that run beside it
(version counters, hooks, anomaly mode, double backward) are checked to still hold.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.ops import elementwise as E
from test_native_optim import _run as _optimizer_run  # (the same loop of steps for both tests)

RNG = np.random.default_rng(17)


def _pair(shape, positive=False):
    a = RNG.standard_normal(shape)
    if positive:
        a = np.abs(a) + 0.5
    return am.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


UNARY = {
    "exp": (lambda t: t.exp(), False), "log": (lambda t: t.log(), True),
    "sin": (lambda t: t.sin(), False), "cos": (lambda t: t.cos(), False),
    "tanh": (lambda t: t.tanh(), False), "sigmoid": (lambda t: t.sigmoid(), False),
    "sqrt": (lambda t: t.sqrt(), True), "rsqrt": (lambda t: t.rsqrt(), True),
    "neg": (lambda t: -t, False), "pow0": (lambda t: t ** 0, False), "pow1": (lambda t: t ** 1, False),
    "pow2": (lambda t: t ** 2, False), "pow3": (lambda t: t ** 3, False),
    "pow-0.5": (lambda t: t ** -0.5, True), "sum": (lambda t: t.sum(dim=1, keepdim=True), False),
    "mean": (lambda t: t.mean(dim=0), False),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("create_graph", [False, True], ids=["fast", "graph"])
def test_unary_grads_match_torch(name, create_graph):
    fn, positive = UNARY[name]
    x, tx = _pair((3, 4), positive)
    w = RNG.standard_normal(tuple(fn(tx).shape))
    (g,) = am.autograd.grad((fn(x) * am.tensor(w)).sum(), x, create_graph=create_graph)
    (tg,) = torch.autograd.grad((fn(tx) * torch.tensor(w)).sum(), tx, create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), tg.detach().numpy(), rtol=1e-12, atol=1e-12)
    if create_graph and tg.requires_grad:  # the differentiable path still gives second derivatives
        (tgg,) = torch.autograd.grad(tg.sum(), tx, allow_unused=True)
        tgg = np.zeros(x.shape) if tgg is None else tgg.numpy()
        if g.requires_grad:
            (gg,) = am.autograd.grad(g.sum(), x, allow_unused=True)
            gg = np.zeros(x.shape) if gg is None else gg.numpy()
        else:  # a gradient that does not depend on x (x ** 1): its derivative is 0
            gg = np.zeros(x.shape)
        np.testing.assert_allclose(gg, tgg, rtol=1e-10, atol=1e-12)


BROADCAST = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((1, 4), (3, 1))]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("sa,sb", BROADCAST)
def test_binary_broadcast_grads_match_torch(op, sa, sb):
    x, tx = _pair(sa, positive=True)
    y, ty = _pair(sb, positive=True)
    f = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
         "div": lambda a, b: a / b}[op]
    w = RNG.standard_normal(np.broadcast_shapes(sa, sb))
    (f(x, y) * am.tensor(w)).sum().backward()
    (f(tx, ty) * torch.tensor(w)).sum().backward()
    for a, t in ((x, tx), (y, ty)):
        assert a.grad.shape == tuple(t.grad.shape)
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_backward_without_graph_runs_no_ops(monkeypatch):
    """create_graph=False: the backward of mul/add/exp/sum is array code, not Tensor ops."""
    x, _ = _pair((5,))
    y, _ = _pair((5,))
    loss = ((x * y + x).exp() * 0.5).sum()
    applied = []
    for cls in (E.Mul, E.Add, E.Exp, E.SumTo):
        orig = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, *a, _o=orig, _c=cls: applied.append(_c) or _o(self, *a))
    loss.backward()
    assert applied == []
    xv, yv = x.detach().numpy(), y.detach().numpy()
    e = np.exp(xv * yv + xv)
    np.testing.assert_allclose(x.grad.numpy(), 0.5 * e * (yv + 1), rtol=1e-12)
    np.testing.assert_allclose(y.grad.numpy(), 0.5 * e * xv, rtol=1e-12)


def test_fast_path_keeps_version_checks():
    x, _ = _pair((3,))
    y = am.tensor(RNG.standard_normal(3))
    z = x * y
    y.add_(1.0)  # y was saved by Mul
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()
    e = x.exp()
    out = e.sum()
    with am.no_grad():
        e.mul_(2.0)  # exp's saved output
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_hooks_fire_and_replace_on_fast_path():
    x, tx = _pair((4,))
    seen = []
    mid = x * 3.0
    mid.register_hook(lambda g: seen.append(g.numpy().copy()) or g * 2)
    mid.retain_grad()
    x.register_hook(lambda g: g + 1)
    mid.exp().sum().backward()
    tmid = tx * 3.0
    tmid.register_hook(lambda g: g * 2)
    tmid.retain_grad()
    tx.register_hook(lambda g: g + 1)
    tmid.exp().sum().backward()
    np.testing.assert_allclose(seen[0], np.exp(3.0 * tx.detach().numpy()), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(mid.grad.numpy(), tmid.grad.numpy(), rtol=1e-12)


def test_anomaly_mode_sees_nan_from_fast_backward():
    x = am.tensor([0.0, 1.0], requires_grad=True)
    with am.autograd.detect_anomaly():
        loss = (x.sqrt() * 0.0).sum()  # sqrt's backward: 0 / (2 * 0) = nan
        with pytest.raises(RuntimeError, match="returned nan values"), pytest.warns(RuntimeWarning):
            loss.backward()


def test_in_place_accumulation_does_not_touch_shared_gradients():
    """Add hands one gradient array to both inputs; each input then gets more contributions:
    the engine may add in place only into sums it made itself."""
    x, tx = _pair((3, 2))
    y, ty = _pair((3, 2))
    g = am.tensor(RNG.standard_normal((3, 2)))
    g_before = g.numpy().copy()

    def f(a, b, lib):
        s = a + b                       # the same gradient array to a and to b
        t = s * 2.0 + a * 3.0 + b * 5.0 + a.exp() + (a * b)  # three more contributions each
        return t + s

    f(x, y, am).backward(g)
    f(tx, ty, torch).backward(torch.tensor(g_before))
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(y.grad.numpy(), ty.grad.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(g.numpy(), g_before)  # the caller's gradient is never written


def test_linear_weight_gradient_is_taken_without_a_copy(monkeypatch):
    """A Linear's weight gradient is computed in the weight's own layout ((dC^T A)^T for W^T):
    its leaf takes that array (an owner, C-ordered; no copy of a transposed view), with
    PyTorch's values; a whole view of one array reaching two leaves is still copied once."""
    from avila_ml.autograd import engine
    from avila_ml.ops import linalg
    monkeypatch.setattr(linalg, "_WEIGHT_LAYOUT_MIN", 0)  # (from 2^15 elements by default)
    # the composed MatMul(x, W.mT) path (x @ W.mT written out; F.linear itself is one Linear
    # node, whose weight gradient is C-ordered by construction: tests/test_op_overhead.py)
    monkeypatch.setattr(linalg, "_one_linear_node", lambda *a: False)
    taken = []
    real = engine._whole_view
    monkeypatch.setattr(engine, "_whole_view", lambda a, base: taken.append(real(a, base)) or taken[-1])
    lin = am.nn.Linear(5, 3).double()
    tlin = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        tlin.weight.copy_(torch.tensor(lin.weight.detach().numpy()))
        tlin.bias.copy_(torch.tensor(lin.bias.detach().numpy()))
    xa = RNG.standard_normal((4, 2, 5))
    lin(am.tensor(xa)).square().sum().backward()
    tlin(torch.tensor(xa)).square().sum().backward()
    gw = lin.weight.grad.numpy()
    assert taken.count(True) == 1 and gw.base is None and gw.flags.owndata and gw.flags.c_contiguous
    np.testing.assert_allclose(gw, tlin.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(lin.bias.grad.numpy(), tlin.bias.grad.numpy(), rtol=1e-12)
    # x.mT.mT's gradient is a whole view of the fresh array (from * 2) that Add hands to both
    # leaves: whichever leaf comes second copies
    x = am.tensor(RNG.standard_normal((3, 2)), requires_grad=True)
    z = am.tensor(RNG.standard_normal((3, 2)), requires_grad=True)
    for order in ((lambda: (x.mT.mT + z) * 2.0), (lambda: (z + x.mT.mT) * 2.0)):
        x.grad = z.grad = None
        order().backward(am.ones(3, 2))
        assert not np.shares_memory(x.grad.numpy(), z.grad.numpy())
        x.grad.numpy()[...] += 1.0  # an optimizer's in-place update touches x's gradient only
        np.testing.assert_array_equal(z.grad.numpy(), np.full((3, 2), 2.0))


def test_accumulation_into_existing_grad_and_across_backwards():
    x, tx = _pair((4,))
    for lib_x in (x, tx):
        (lib_x * lib_x).sum().backward()
        (lib_x.exp() + lib_x.sin() + lib_x).sum().backward()  # four contributions onto .grad
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)


def test_float16_scalar_operands_keep_dtype():
    for dt, tdt in ((am.float16, torch.float16), (am.float32, torch.float32)):
        a = am.tensor([1.0, 2.5, -3.0], dtype=dt)
        ta = torch.tensor([1.0, 2.5, -3.0], dtype=tdt)
        for f in (lambda t: 1.0 - t, lambda t: 2 * t, lambda t: t / 3, lambda t: 0.5 + t, lambda t: t - 1):
            r, tr = f(a), f(ta)
            assert r.dtype == dt
            np.testing.assert_allclose(r.numpy().astype(np.float64), tr.numpy().astype(np.float64), rtol=1e-3)


def test_zero_dim_results_are_arrays():
    x = am.tensor(2.0, dtype=am.float64, requires_grad=True)
    y = (x * 3.0).exp() - x
    assert isinstance(y.array, np.ndarray) and y.array.shape == ()
    y.backward()
    assert isinstance(x.grad.array, np.ndarray)
    np.testing.assert_allclose(x.grad.item(), 3 * np.exp(6.0) - 1, rtol=1e-12)


def test_expand_array_is_a_read_only_broadcast_view():
    for a, shape in [(np.ones((1, 3), np.float32), (2, 4, 3)), (np.array(2.0), (0,)),
                     (np.arange(3.0).reshape(3, 1), (3, 5)), (np.ones((0, 3)), (2, 0, 3))]:
        r = E.expand_array(a, shape)
        np.testing.assert_array_equal(r, np.broadcast_to(a, shape))
        assert not r.flags.writeable


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9)), ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)), ("AdamW", dict(lr=0.01, weight_decay=0.1)), ("RMSprop", dict(lr=0.01, momentum=0.5)),
    ("Adadelta", dict(lr=1.0)),
])
def test_batched_cpu_step_is_bitwise_the_single_thread_step(name, kwargs, monkeypatch):
    """Parameters of different sizes updated slice by slice by 3 threads at the end of the
    step (one pool hand-off) give bitwise the single-thread result; each thread has its own
    scratch, so slices of different parameters never share one."""
    from avila_ml.cpu_accel import _native
    from avila_ml.optim import _fused
    # (the Python pool's path: SGD and RMSprop otherwise take the compiled kernels, tested
    # bitwise against this NumPy arithmetic in tests/test_native_optim.py)
    monkeypatch.setattr(_native, "ENABLED", False)
    shapes = [(700,), (33, 10), (1000,), (5,)]
    init = [RNG.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[RNG.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]

    def run():
        return _optimizer_run(am, name, kwargs, init, grads)[0]  # the parameters after the steps

    monkeypatch.setattr(_fused, "_num_threads", lambda: 1)
    single = run()
    monkeypatch.setattr(_fused, "PARALLEL_MIN_SIZE", 100)
    monkeypatch.setattr(_fused, "_num_threads", lambda: 3)
    monkeypatch.setattr(_fused, "_pool", [None, None])
    queued = []
    real_flush = _fused._flush_cpu
    monkeypatch.setattr(_fused, "_flush_cpu", lambda entries: queued.append(len(entries)) or real_flush(entries))
    batched = run()
    assert queued and max(queued) == 3  # the three large parameters went through one hand-off
    for a, b in zip(single, batched):
        np.testing.assert_array_equal(a, b)
