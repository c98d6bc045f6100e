"""Issue 17 (CPU speed), the element-wise side: fused oneDNN chains (``cpu_accel/_chain.py``) and
ops rewritten to do less work per step -- tensor iteration as ``unbind`` (one backward node, as
PyTorch). Each path is checked against PyTorch (float64 where it matters) and, where a fast
path replaces a formula, against that formula, including the fallbacks (float64, small arrays,
``am.backends.mkldnn.enabled = False``).
"""
import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.cpu_accel import _chain, _dnnl as dnnl

needs_onednn = pytest.mark.skipif(not dnnl.available(), reason=f"oneDNN not available: {dnnl.absent_reason()}")


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------- oneDNN chains
@needs_onednn
def test_chain_runs_steps_in_order_against_numpy():
    a, b, c, d = (_rng(i).standard_normal((70, 90)).astype(np.float32) for i in range(4))
    # ((a * b) * 0.5 + 1) + c -> sigmoid -> - d
    y = _chain.run(_chain.MUL, (("elt", _chain.LINEAR, 0.5, 1.0), ("bin", _chain.ADD),
                                ("elt", _chain.LOGISTIC, 0.0, 0.0), ("bin", _chain.SUB)), a, b, c, d)
    ref = 1 / (1 + np.exp(-((a.astype(np.float64) * b * 0.5 + 1) + c))) - d
    assert y.shape == a.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    # a non-contiguous operand is copied, an ``out`` buffer is filled
    out = np.empty_like(a)
    assert _chain.run(_chain.ADD, (), a.T.copy().T, b, out=out) is out
    np.testing.assert_array_equal(out, a + b)


@needs_onednn
def test_chain_declines_what_it_does_not_handle(monkeypatch):
    a = _rng().standard_normal((70, 90)).astype(np.float32)
    assert _chain.run(_chain.ADD, (), a.astype(np.float64), a.astype(np.float64)) is None  # float64
    assert _chain.run(_chain.ADD, (), a[:10, :10], a[:10, :10]) is None                    # below MIN_SIZE
    assert _chain.run(_chain.ADD, (), a, a[:, :1]) is None                                 # shapes differ
    assert _chain.run(_chain.ADD, (("bin", _chain.MUL),), a, a) is None                    # a tensor missing
    monkeypatch.setattr(am.backends.mkldnn, "enabled", False)
    assert _chain.run(_chain.ADD, (), a, a) is None
    assert _chain.gelu_tanh_forward(a) is None and _chain.gelu_tanh_backward(a, a) is None


def test_gelu_tanh_float32_large_inputs_vs_torch_float64():
    """Beyond the activation tests: |x| up to 12 (where sigmoid saturates), the gradient
    relative to |g| max(|x|, 1); PyTorch's own float32 tanh GELU is held to the same bound."""
    x = np.concatenate([np.linspace(-12, 12, 40_001), _rng(1).standard_normal(30_000) * 4]).astype(np.float32)
    g = _rng(2).standard_normal(x.shape).astype(np.float32)
    t = am.tensor(x, requires_grad=True)
    y = am.nn.functional.gelu(t, approximate="tanh")
    y.backward(am.tensor(g))
    r = torch.tensor(x.astype(np.float64), requires_grad=True)
    ry = torch.nn.functional.gelu(r, approximate="tanh")
    ry.backward(torch.tensor(g.astype(np.float64)))
    scale = np.maximum(np.abs(x.astype(np.float64)), 1)
    eps = np.finfo(np.float32).eps
    assert np.all(np.abs(y.detach().numpy() - ry.detach().numpy()) <= 8 * eps * scale)
    assert np.all(np.abs(t.grad.numpy() - r.grad.numpy()) <= 8 * eps * scale * np.abs(g) + 1e-30)


# ------------------------------------------------------------------- iteration = unbind
def test_iteration_is_unbind_with_one_backward_node_and_torch_gradients():
    x0 = _rng(3).standard_normal((2, 3, 3, 4))
    x = am.tensor(x0, requires_grad=True)
    q, k, v = x.permute(2, 0, 1, 3)          # the q, k, v unpacking of attention code
    assert type(q.grad_fn).__name__ != "GetItem"
    ((q * k).sum() + (2 * q).sum()).backward()  # v unused: its slice gets zeros
    tx = torch.tensor(x0, requires_grad=True)
    tq, tk, tv = tx.permute(2, 0, 1, 3)
    ((tq * tk).sum() + (2 * tq).sum()).backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=0)
    assert [r.tolist() for r in am.tensor([[1, 2], [3, 4]])] == [[1, 2], [3, 4]]
    with pytest.raises(TypeError, match="0-d"):
        iter(am.tensor(1.0))
    # double backward through the unbound slices
    assert am.autograd.gradgradcheck(lambda t: sum(r * r for r in t), (am.tensor(x0[0, 0], requires_grad=True),))


def test_unbind_gradient_keeps_the_input_layout_so_the_reshape_back_is_a_view(monkeypatch):
    """The GPT pattern ``q, k, v = qkv.reshape(B, T, 3, h, d).permute(2, 0, 3, 1, 4)``: the
    slices' gradients are written into one array laid out as the permuted input, so the
    permute's and the reshape's backward pass it on as views (no Reshape copy node runs);
    values against PyTorch, an unused slice gets zeros."""
    from avila_ml.ops import shape as S
    x0 = _rng(4).standard_normal((2, 5, 24))
    copies = []
    real = S.Reshape.forward
    monkeypatch.setattr(S.Reshape, "forward", lambda self, x, shape: copies.append(type(self)) or real(self, x, shape))
    x = am.tensor(x0, requires_grad=True)
    q, k, v = x.reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    copies.clear()
    ((q * k).sum() + q.sin().sum()).backward()  # v unused
    assert S.Reshape not in copies  # only View nodes ran (View subclasses Reshape)
    tx = torch.tensor(x0, requires_grad=True)
    tq, tk, tv = tx.reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    ((tq * tk).sum() + tq.sin().sum()).backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=0)
    assert x.grad.array.flags.c_contiguous
    # split along a middle dim of a C-ordered array keeps C order; the layout helper on odd views
    a = am.tensor(x0, requires_grad=True)
    sum(p.sum() * (i + 1) for i, p in enumerate(am.split(a, [1, 3, 1], dim=1))).backward()
    np.testing.assert_allclose(a.grad.numpy(), np.repeat([1.0, 2, 2, 2, 3], 1)[None, :, None] * np.ones((2, 5, 24)))
    assert S._empty_in_layout((3, 4), (0, 1), np.float64, np).flags.c_contiguous        # broadcast
    assert S._empty_in_layout((3, 4), (-4, 1), np.float64, np).flags.c_contiguous       # flipped
    e = S._empty_in_layout((4, 3), (1, 4), np.float64, np)                              # transposed
    assert e.shape == (4, 3) and e.strides == (8, 32)
    # a float32 input's layout kept for its gradient (strides counted in elements, not bytes)
    h = am.tensor(x0.astype(np.float32), requires_grad=True)
    q32, k32, _ = h.reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    copies.clear()
    (q32 * k32).sum().backward()
    assert S.Reshape not in copies


# ----------------------------------------------------------------------- float32 log1p
def test_float32_log1p_within_a_few_ulps_of_float64():
    from avila_ml.backends._log1p_float32 import log1p as log1p32
    u = np.concatenate([-np.geomspace(1e-45, 1, 50_000), np.geomspace(1e-45, 3e38, 50_000),
                        np.float32(2.0 ** -24) * np.arange(-3, 4), np.float32(2.0 ** -25) * np.arange(-3, 4),
                        _rng(4).uniform(-1, 3, 70_000)]).astype(np.float32)
    u = u[u > -1]  # -1 (-inf) among the special values below
    ref = np.log1p(u.astype(np.float64))
    ours = log1p32(u)
    assert ours.dtype == np.float32 and ours.shape == u.shape
    err = np.abs(ours - ref) / np.maximum(np.abs(ref), np.finfo(np.float32).smallest_subnormal)
    assert np.all(err <= 4 * np.finfo(np.float32).eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        special = log1p32(np.float32([-1, np.inf, np.nan, -np.inf, -2, 0.0, -0.0]))
    assert special[0] == -np.inf and special[1] == np.inf and np.isnan(special[2:5]).all()
    assert special[5] == 0 and np.signbit(special[6])
    # the public op takes it for float32, and a strided view
    v = u[::3]
    np.testing.assert_array_equal(am.log1p(am.tensor(v)).numpy(), log1p32(v))
    with pytest.raises(TypeError, match="float32"):
        log1p32(u.astype(np.float64))


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_binary_cross_entropy_float32_vs_torch_float64(reduction):
    """x over (0, 1) including values within an ulp of 0 and 1, where the log clamps act;
    the raw-array backward (no create_graph) against PyTorch's, both inputs differentiated."""
    x = np.concatenate([_rng(5).random(5000), [0.0, 1.0, 1e-30, 1 - 2 ** -24, 0.5, 2 ** -24]]).astype(np.float32)
    y = np.concatenate([_rng(6).random(5000), [1.0, 0.0, 0.0, 1.0, 0.25, 1.0]]).astype(np.float32)
    tx, ty = am.tensor(x, requires_grad=True), am.tensor(y, requires_grad=True)
    out = am.nn.functional.binary_cross_entropy(tx, ty, reduction=reduction)
    g = _rng(7).standard_normal(out.shape).astype(np.float32)
    out.backward(am.tensor(g))
    rx, ry = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, y))
    ref = torch.nn.functional.binary_cross_entropy(rx, ry, reduction=reduction)
    ref.backward(torch.tensor(g.astype(np.float64)))
    eps = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=8 * eps, atol=8 * eps)
    np.testing.assert_allclose(tx.grad.numpy(), rx.grad.numpy(), rtol=8 * eps, atol=1e-30)
    # the target's gradient where x is inside (0, 1): at 0 and 1 PyTorch gives +-inf (unclamped
    # logs), ours the clamped -100 logs of its documented formula (unchanged by the fast path)
    inside = (x > 0) & (x < 1)
    np.testing.assert_allclose(ty.grad.numpy()[inside], ry.grad.numpy()[inside], rtol=8 * eps, atol=8 * eps)
    np.testing.assert_allclose(ty.grad.numpy()[~inside], np.where(x[~inside] == 0, 100, -100) * np.broadcast_to(g, x.shape)[~inside], rtol=eps)


@needs_onednn
def test_sigmoid_float32_relative_accuracy_down_to_tiny_values():
    """The large-input path (oneDNN's logistic) keeps relative accuracy where sigmoid is tiny,
    as PyTorch's float32 kernel does, and maps NaN/inf as it does."""
    x = np.concatenate([np.linspace(-100, 100, 40_001), [np.nan, np.inf, -np.inf]]).astype(np.float32)
    y = am.sigmoid(am.tensor(x)).numpy()
    ref = 1 / (1 + np.exp(-x.astype(np.float64)))
    # relative accuracy down to 1e-37 (x > -85); below, oneDNN's exp flushes to 0: an absolute
    # error under the smallest normal float32 (the former tanh formula gave 0 below x = -17)
    tiny = np.finfo(np.float32).tiny
    rel = ref > 1e-37
    assert np.all(np.abs(y[rel] - ref[rel]) <= 4 * np.finfo(np.float32).eps * ref[rel])
    assert np.all(np.abs(y[:-3][~rel[:-3]] - ref[:-3][~rel[:-3]]) <= 10 * tiny)
    assert np.isnan(y[-3]) and y[-2] == 1 and y[-1] == 0


# ----------------------------------------------------------------------- thread hand-offs
def test_run_parts_quiets_openblas_only_before_parts_that_never_call_blas(monkeypatch):
    """``run_parts(limit_blas=False)`` stops OpenBLAS's spinning workers once, from the calling
    thread, before any part starts; parts that call BLAS (``limit_blas=True``, the default)
    leave them alone (stopping them there made the NumPy attention path 1.9x slower)."""
    import threading
    from avila_ml.cpu_accel import _dnnl
    from avila_ml.ops import _cpu_threads
    if _cpu_threads.controller() is None:
        pytest.skip("no thread control (threadpoolctl)")
    events = []
    monkeypatch.setattr(_dnnl, "quiet_blas", lambda: events.append(("quiet", threading.current_thread())))
    part = lambda p: events.append(("part", p))  # noqa: E731
    _cpu_threads.run_parts(part, [0, 1], limit_blas=False)
    assert events[0] == ("quiet", threading.current_thread())
    assert sorted(e[1] for e in events[1:]) == [0, 1] and all(e[0] == "part" for e in events[1:])
    events.clear()
    _cpu_threads.run_parts(part, [0, 1])
    assert [e[0] for e in events] == ["part", "part"]


def test_calls_keeping_the_gil_reach_the_same_c_functions():
    """``_Lib.fn_keeping_gil`` returns a PyDLL-style prototype (no GIL release) of the same C
    function: OpenMP's thread count set through it is what the ordinary ctypes call reads back."""
    import ctypes
    from avila_ml.cpu_accel import _dnnl
    lib = _dnnl.load()
    if lib is None or not hasattr(lib.cdll, "omp_get_max_threads"):
        pytest.skip("oneDNN on OpenMP is not installed")
    get, set_ = lib.fn_keeping_gil("omp_get_max_threads"), lib.fn_keeping_gil("omp_set_num_threads")
    assert get._flags_ & ctypes._FUNCFLAG_PYTHONAPI  # called with the GIL held
    before = lib.cdll.omp_get_max_threads()
    try:
        set_(1)
        assert lib.cdll.omp_get_max_threads() == 1 == get()
    finally:
        set_(before)
    assert get() == before == lib.cdll.omp_get_max_threads()
