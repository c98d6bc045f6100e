"""Activation checkpointing (avila_ml.utils.checkpoint) against the plain run and against
torch.utils.checkpoint."""
import tracemalloc
import warnings
import weakref

import numpy as np
import pytest
import torch
import torch.utils.checkpoint as tcp

import avila_ml as am
from avila_ml.utils.checkpoint import checkpoint, checkpoint_sequential


def _np(t):
    return t.detach().cpu().numpy()


def _dropout_net(device):
    return am.nn.Sequential(
        am.nn.Linear(6, 16), am.nn.Dropout(0.5), am.nn.Tanh(), am.nn.Linear(16, 16),
        am.nn.Dropout(0.3), am.nn.ReLU(), am.nn.Linear(16, 2),
    ).to(device)


def _grads(net, x):
    return [_np(p.grad) for p in net.parameters()] + [_np(x.grad)]


@pytest.mark.parametrize("segments", [1, 2, 3, 7])
def test_checkpoint_sequential_dropout_is_bitwise_the_plain_run(segments, device):
    net = _dropout_net(device)
    x = am.randn(5, 6, device=device, requires_grad=True)
    am.manual_seed(7)
    y0 = net(x)
    (y0 * y0).sum().backward()
    g0 = _grads(net, x)
    after_plain = am.rand(3, device=device)  # where the plain run leaves the generator
    net.zero_grad()
    x.grad = None
    am.manual_seed(7)
    y1 = checkpoint_sequential(net, segments, x)
    (y1 * y1).sum().backward()
    assert np.array_equal(_np(y0), _np(y1))
    for a, b in zip(g0, _grads(net, x)):
        assert np.array_equal(a, b)
    # the recomputation in backward leaves the global generators where the plain run does
    assert np.array_equal(_np(after_plain), _np(am.rand(3, device=device)))


def test_without_preserved_rng_state_dropout_masks_differ():
    net = _dropout_net("cpu")
    x = am.randn(8, 6, requires_grad=True)
    am.manual_seed(3)
    net(x).sum().backward()
    g0 = _grads(net, x)
    net.zero_grad()
    x.grad = None
    am.manual_seed(3)
    checkpoint(net, x, preserve_rng_state=False).sum().backward()
    assert not np.array_equal(g0[0], _grads(net, x)[0])


def test_inner_activations_are_freed_and_recomputed():
    lin = am.nn.Linear(4, 4)
    calls = []
    refs = []

    def block(t):
        calls.append(1)
        inner = (lin(t) * 3).tanh()
        refs.append(weakref.ref(inner.array))
        return inner.exp()

    x = am.randn(2, 4, requires_grad=True)
    y = checkpoint(block, x)
    assert len(calls) == 1 and refs[0]() is None  # not kept by the graph
    plain = block(x)
    assert refs[1]() is not None  # exp's backward keeps it in the plain run
    y.sum().backward()
    assert len(calls) == 3  # recomputed once in backward
    gx = _np(x.grad)
    x.grad = None
    lin.zero_grad()
    plain.sum().backward()
    np.testing.assert_array_equal(gx, _np(x.grad))


def test_create_graph_double_backward_matches_plain():
    x = am.randn(4, dtype=am.float64, requires_grad=True)
    w = am.randn(4, dtype=am.float64, requires_grad=True)

    def f(a):
        return (a * a * w).sin() * a

    g_ck = am.autograd.grad(checkpoint(f, x).sum(), [x, w], create_graph=True)
    h_ck = am.autograd.grad((g_ck[0] ** 2).sum() + g_ck[1].sum(), [x, w])
    g_pl = am.autograd.grad(f(x).sum(), [x, w], create_graph=True)
    h_pl = am.autograd.grad((g_pl[0] ** 2).sum() + g_pl[1].sum(), [x, w])
    for a, b in zip(g_ck + h_ck, g_pl + h_pl):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-13, atol=1e-14)
    assert am.autograd.gradcheck(lambda a, b: checkpoint(lambda u, v: (u * v).sin(), a, b), (x, w))
    assert am.autograd.gradgradcheck(lambda a, b: checkpoint(lambda u, v: (u * v).sin(), a, b), (x, w))


def test_multiple_outputs_kwargs_and_non_tensor_arguments():
    w = am.randn(3, requires_grad=True)
    x = am.randn(3, requires_grad=True)

    def f(a, k, scale=1.0):
        return a * w * scale, k, (a + w).exp()

    y, k, z = checkpoint(f, x, "tag", scale=2.0)
    assert k == "tag"
    (y.sum() + 2 * z.sum()).backward()
    gw, gx = _np(w.grad), _np(x.grad)
    w.grad = x.grad = None
    y, k, z = f(x, "tag", scale=2.0)
    (y.sum() + 2 * z.sum()).backward()
    np.testing.assert_array_equal(gw, _np(w.grad))
    np.testing.assert_array_equal(gx, _np(x.grad))


def test_only_one_output_used_and_retain_graph():
    x = am.randn(3, requires_grad=True)
    a, b = checkpoint(lambda t: (t * 2, t.exp()), x)
    loss = b.sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(_np(x.grad), 2 * np.exp(_np(x)), rtol=1e-6)


def test_parameters_get_grads_when_input_does_not_require_grad():
    lin = am.nn.Linear(3, 2)
    x = am.randn(4, 3)
    checkpoint(lin, x).sum().backward()
    np.testing.assert_allclose(_np(lin.weight.grad), np.tile(_np(x).sum(0), (2, 1)), rtol=1e-6)


def test_reentrant_variant_documented_behaviour():
    lin = am.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="use_reentrant=False"):
        checkpoint(lin, am.randn(1, 3), use_reentrant=True, extra=1)
    with pytest.warns(UserWarning, match="requires_grad=True"):
        y = checkpoint(lin, am.randn(1, 3), use_reentrant=True)
    assert not y.requires_grad
    x = am.randn(2, 3, requires_grad=True)
    checkpoint(lin, x, use_reentrant=True).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


def test_no_grad_mode_is_a_plain_call_and_errors():
    x = am.randn(2, requires_grad=True)
    with am.no_grad():
        assert checkpoint(lambda t: t * 2, x).grad_fn is None
    with pytest.raises(TypeError, match="callable"):
        checkpoint(3, x)
    with pytest.raises(TypeError, match="must return a Tensor"):
        checkpoint(lambda t: 3, x)
    with pytest.raises(ValueError, match="segments"):
        checkpoint_sequential([lambda t: t], 0, x)


def _conv4d_block():
    return am.nn.Sequential(am.nn.Conv4d(4, 4, 3, padding=1), am.nn.BatchNorm4d(4), am.nn.GELU(),
                            am.nn.Conv4d(4, 4, 3, padding=1), am.nn.BatchNorm4d(4), am.nn.GELU())


def test_deep_conv4d_stack_peak_memory_falls_3x_with_equal_grads():
    am.manual_seed(0)
    blocks = [_conv4d_block() for _ in range(16)]
    x = am.randn(1, 4, 10, 10, 10, 10)

    def run(use_checkpoint, trace=True):
        for b in blocks:
            b.zero_grad()
        if trace:
            tracemalloc.start()
        try:
            h = x
            for b in blocks:
                h = checkpoint(b, h) if use_checkpoint else b(h)
            h.square().sum().backward()
            peak = tracemalloc.get_traced_memory()[1] if trace else None
        finally:
            if trace:
                tracemalloc.stop()
        return peak, [_np(p.grad) for b in blocks for p in b.parameters()]

    run(False, trace=False)  # warm-up: the convolution's one-time caches must not count for either side
    peak_plain, g_plain = run(False)
    peak_ckpt, g_ckpt = run(True)
    assert peak_plain >= 3 * peak_ckpt, (peak_plain, peak_ckpt)
    for a, b in zip(g_plain, g_ckpt):
        np.testing.assert_array_equal(a, b)


def test_conv3d_stack_values_and_grads_match_torch_checkpoint():
    torch.manual_seed(0)
    tnet = torch.nn.Sequential(*[m for _ in range(3) for m in (
        torch.nn.Conv3d(3, 3, 3, padding=1).double(), torch.nn.GELU())])
    net = am.nn.Sequential(*[m for _ in range(3) for m in (
        am.nn.Conv3d(3, 3, 3, padding=1).double(), am.nn.GELU())])
    for p, tp in zip(net.parameters(), tnet.parameters()):
        p.data = am.tensor(tp.detach().numpy().copy())
    xn = np.random.default_rng(0).standard_normal((2, 3, 5, 5, 5))
    tx = torch.tensor(xn, requires_grad=True)
    x = am.tensor(xn, requires_grad=True)
    ty = tcp.checkpoint_sequential(tnet, 2, tx, use_reentrant=False)
    (ty ** 2).sum().backward()
    y = checkpoint_sequential(net, 2, x)
    (y ** 2).sum().backward()
    np.testing.assert_allclose(_np(y), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for p, tp in zip(net.parameters(), tnet.parameters()):
        np.testing.assert_allclose(_np(p.grad), tp.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_nested_checkpoints():
    lin = am.nn.Linear(3, 3)
    x = am.randn(2, 3, requires_grad=True)

    def outer(t):
        return checkpoint(lambda u: lin(u).tanh(), t).exp()

    checkpoint(outer, x).sum().backward()
    gx, gw = _np(x.grad), _np(lin.weight.grad)
    x.grad = None
    lin.zero_grad()
    lin(x).tanh().exp().sum().backward()
    np.testing.assert_array_equal(gx, _np(x.grad))
    np.testing.assert_array_equal(gw, _np(lin.weight.grad))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint(outer, x)


def test_captured_non_leaf_tensor_is_correct_or_a_clear_error():
    w = am.randn(3, requires_grad=True)
    x = am.randn(3, requires_grad=True)
    t = w * 2  # a non-leaf tensor used only inside the block: differentiated through
    checkpoint(lambda u: (u * t).sin(), x).sum().backward()
    gw = _np(w.grad)
    w.grad = None
    (x * (w * 2)).sin().sum().backward()
    np.testing.assert_allclose(gw, _np(w.grad), rtol=1e-6)
    # also used after the block: its graph is freed before the block's backward needs it
    t = w * 2
    loss = checkpoint(lambda u: (u * t).sin(), x).sum() + (t * t).sum()
    with pytest.raises(RuntimeError, match="as arguments"):
        loss.backward()
    # passed as an argument instead, it works
    w.grad = x.grad = None
    t = w * 2
    (checkpoint(lambda u, v: (u * v).sin(), x, t).sum() + (t * t).sum()).backward()
    gw, gx = _np(w.grad), _np(x.grad)
    w.grad = x.grad = None
    t = w * 2
    ((x * t).sin().sum() + (t * t).sum()).backward()
    np.testing.assert_allclose(gw, _np(w.grad), rtol=1e-6)
    np.testing.assert_allclose(gx, _np(x.grad), rtol=1e-6)
