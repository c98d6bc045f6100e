"""Issue 17, per-op overhead: the lean paths that skip bookkeeping (layer norm straight through a
oneDNN plan with cached memory objects) against PyTorch float64 and against the general path."""
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.nn import functional as F
from avila_ml.backends import mkldnn
from avila_ml.cpu_accel import _dnnl as dnnl
from avila_ml.ops import normalization as N

needs_onednn = pytest.mark.skipif(not dnnl.available(), reason="oneDNN is not installed")


def _close(ours, ref64, rtol):
    np.testing.assert_allclose(ours.astype(np.float64), ref64, rtol=rtol, atol=rtol * np.abs(ref64).max())


def _ln_case(shape, seed=0):
    rng = np.random.default_rng(seed)
    xa = (1.5 + rng.standard_normal(shape)).astype(np.float32)
    wa = rng.standard_normal(shape[-1]).astype(np.float32)
    ba = rng.standard_normal(shape[-1]).astype(np.float32)
    ga = rng.standard_normal(shape).astype(np.float32)
    return xa, wa, ba, ga


def _ln_grads(xa, wa, ba, ga):
    x, w, b = (am.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    y = F.layer_norm(x, (xa.shape[-1],), w, b)
    node = y.grad_fn
    y.backward(am.tensor(ga))
    return node, y.detach().numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()


@needs_onednn
@pytest.mark.parametrize("shape", [(16, 128, 128), (2048, 128), (256, 512)], ids=str)
def test_layer_norm_rows_path_matches_torch_float64(shape):
    xa, wa, ba, ga = _ln_case(shape)
    node, y, gx, gw, gb = _ln_grads(xa, wa, ba, ga)
    assert type(node) is N._LayerNormRows and node.name() == "NormalizeBackward0"
    tx, tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (xa, wa, ba))
    ty = TF.layer_norm(tx, (shape[-1],), tw, tb)
    ty.backward(torch.tensor(ga.astype(np.float64)))
    for ours, ref in ((y, ty), (gx, tx.grad), (gw, tw.grad), (gb, tb.grad)):
        _close(ours, ref.detach().numpy(), 3e-5)


@needs_onednn
def test_layer_norm_rows_path_equals_general_path(monkeypatch):
    """The lean node and Normalize run the same oneDNN kernels: bitwise equal results."""
    xa, wa, ba, ga = _ln_case((16, 128, 128), seed=3)
    _, *fast = _ln_grads(xa, wa, ba, ga)
    monkeypatch.setattr(N, "_layer_rows_route", lambda *a: (False, None))
    node, *general = _ln_grads(xa, wa, ba, ga)
    assert type(node) is N.Normalize
    for a, b in zip(fast, general):
        np.testing.assert_array_equal(a, b)


@needs_onednn
def test_layer_norm_rows_path_retain_graph_and_freed_graph():
    xa, wa, ba, ga = _ln_case((64, 512), seed=4)
    x = am.tensor(xa, requires_grad=True)
    y = F.layer_norm(x, (512,), am.tensor(wa), am.tensor(ba))
    y.backward(am.tensor(ga), retain_graph=True)
    first = x.grad.numpy().copy()
    y.backward(am.tensor(ga))
    np.testing.assert_array_equal(x.grad.numpy(), 2 * first)  # (x + x is exact)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward(am.tensor(ga))


@needs_onednn
def test_layer_norm_rows_path_from_two_threads():
    """Each thread gets its own memory objects in the plan: concurrent calls give the serial results."""
    cases = [_ln_case((256, 512), seed=s) for s in range(4)]
    want = [_ln_grads(*c)[1:] for c in cases]
    got = [None] * len(cases)
    errors = []

    def work(i):
        try:
            for _ in range(15):
                got[i] = _ln_grads(*cases[i])[1:]
        except Exception as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for w, g in zip(want, got):
        for a, b in zip(w, g):
            np.testing.assert_array_equal(a, b)


def test_layer_norm_rows_route(monkeypatch):
    from avila_ml.cpu_accel import _native
    xa, wa, ba, _ = _ln_case((256, 512))
    x = am.tensor(xa, requires_grad=True)
    half = F.layer_norm(am.tensor(xa[:4]).half().requires_grad_(), (512,), am.tensor(wa).half())
    assert type(half.grad_fn) is N.Normalize
    if _native.available():  # the compiled row kernels (tests/test_native_norm.py), weight or not
        for out in (F.layer_norm(am.tensor(xa[:4], requires_grad=True), (512,), am.tensor(wa), am.tensor(ba)),
                    F.layer_norm(am.tensor(xa[:4], requires_grad=True), (512,)), F.layer_norm(x, (512,))):
            assert type(out.grad_fn) is N._LayerNormRows and out.grad_fn.native is not None
    monkeypatch.setattr(_native, "ENABLED", False)
    small = F.layer_norm(am.tensor(xa[:4], requires_grad=True), (512,), am.tensor(wa), am.tensor(ba))
    assert type(small.grad_fn) is N._LayerNormRows and small.grad_fn.onednn is None  # NumPy, lean
    no_weight = F.layer_norm(am.tensor(xa[:4], requires_grad=True), (512,))
    assert type(no_weight.grad_fn) is N.Normalize  # (y would be xhat itself: the general path)
    if dnnl.available():
        big = F.layer_norm(x, (512,))
        assert type(big.grad_fn) is N._LayerNormRows and big.grad_fn.onednn is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_rows_numpy_bitwise_as_general_path(dtype, bias, monkeypatch):
    from avila_ml.cpu_accel import _native
    monkeypatch.setattr(mkldnn, "enabled", False)
    monkeypatch.setattr(_native, "ENABLED", False)  # (the compiled kernels: tests/test_native_norm.py)
    xa, wa, ba, ga = (a.astype(dtype) for a in _ln_case((6, 40, 96), seed=11))
    ba = ba if bias else None

    def run():
        x, w = am.tensor(xa, requires_grad=True), am.tensor(wa, requires_grad=True)
        b = None if ba is None else am.tensor(ba, requires_grad=True)
        y = F.layer_norm(x, (96,), w, b)
        node = y.grad_fn
        y.backward(am.tensor(ga))
        return node, [y.detach().numpy(), x.grad.numpy(), w.grad.numpy()] + ([] if b is None else [b.grad.numpy()])
    node, lean = run()
    assert type(node) is N._LayerNormRows and node.onednn is None
    monkeypatch.setattr(N, "_layer_rows_route", lambda *a: (False, None))
    node, general = run()
    assert type(node) is N.Normalize
    for a, b in zip(lean, general):
        np.testing.assert_array_equal(a, b)
    tx, tw = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (xa, wa))
    tb = None if ba is None else torch.tensor(ba.astype(np.float64), requires_grad=True)
    ty = TF.layer_norm(tx, (96,), tw, tb)
    ty.backward(torch.tensor(ga.astype(np.float64)))
    rtol = 3e-5 if dtype == np.float32 else 1e-11
    for ours, ref in zip(lean, [ty, tx.grad, tw.grad] + ([] if tb is None else [tb.grad])):
        _close(ours, ref.detach().numpy(), rtol)


def test_layer_norm_rows_numpy_gradcheck_and_double_backward():
    rng = np.random.default_rng(12)
    x = am.tensor(rng.standard_normal((3, 4, 2, 5)), requires_grad=True)
    w = am.tensor(rng.standard_normal((2, 5)), requires_grad=True)
    b = am.tensor(rng.standard_normal((2, 5)), requires_grad=True)
    assert type(F.layer_norm(x, (2, 5), w, b).grad_fn) is N._LayerNormRows
    f = lambda x, w, b: F.layer_norm(x, (2, 5), w, b)  # noqa: E731
    assert am.autograd.gradcheck(f, (x, w, b))
    assert am.autograd.gradgradcheck(f, (x, w, b))


# -- Linear as one node (ops/linalg.py Linear) -----------------------------------------------------
from avila_ml.ops import linalg as LA  # noqa: E402


@pytest.mark.parametrize("shape,bias,x_grad", [((16, 128, 128), True, True), ((128, 784), True, False),
                                                ((4, 3, 5, 32), False, True), ((32,), True, True)], ids=str)
def test_linear_one_node_matches_torch_float64(shape, bias, x_grad):
    rng = np.random.default_rng(5)
    n = 48
    xa = rng.standard_normal(shape).astype(np.float32)
    wa = (rng.standard_normal((n, shape[-1])) / 8).astype(np.float32)
    ba = rng.standard_normal(n).astype(np.float32)
    ga = rng.standard_normal(shape[:-1] + (n,)).astype(np.float32)
    x = am.tensor(xa, requires_grad=x_grad)
    w = am.tensor(wa, requires_grad=True)
    b = am.tensor(ba, requires_grad=True) if bias else None
    y = F.linear(x, w, b)
    assert type(y.grad_fn) is LA.Linear
    assert y.grad_fn.name() == ("AddmmBackward0" if bias else "MmBackward0")
    y.backward(am.tensor(ga))
    tx = torch.tensor(xa.astype(np.float64), requires_grad=x_grad)
    tw = torch.tensor(wa.astype(np.float64), requires_grad=True)
    tb = torch.tensor(ba.astype(np.float64), requires_grad=True) if bias else None
    ty = TF.linear(tx, tw, tb)
    ty.backward(torch.tensor(ga.astype(np.float64)))
    _close(y.detach().numpy(), ty.detach().numpy(), 2e-6)
    _close(w.grad.numpy(), tw.grad.numpy(), 2e-6)
    if bias:
        _close(b.grad.numpy(), tb.grad.numpy(), 2e-6)
    if x_grad:
        _close(x.grad.numpy(), tx.grad.numpy(), 2e-6)
    else:
        assert x.grad is None
    # the weight's gradient arrives C-ordered and fresh: its leaf took it without a copy
    assert w.grad.array.flags.c_contiguous and w.grad.array.flags.owndata


def test_linear_one_node_forward_bitwise_as_composed_path(monkeypatch):
    # NumPy's products in both: a product this size (3.9M multiply-adds) otherwise runs on
    # oneDNN's GEMM in the one node, equal to float32 rounding only (matched to PyTorch in
    # float64 by test_linear_products_on_onednn_gemm_match_torch_float64); it came out bitwise
    # here on the AVX-512 EPYC, which another CPU's kernels need not repeat
    monkeypatch.setattr(mkldnn, "enabled", False)
    rng = np.random.default_rng(6)
    x = am.tensor(rng.standard_normal((8, 64, 96)).astype(np.float32))
    w = am.tensor(rng.standard_normal((80, 96)).astype(np.float32))
    b = am.tensor(rng.standard_normal(80).astype(np.float32))
    one = F.linear(x, w, b).numpy()
    monkeypatch.setattr(LA, "_one_linear_node", lambda *a: False)
    composed = F.linear(x, w, b).numpy()
    np.testing.assert_array_equal(one, composed)


@needs_onednn
@pytest.mark.parametrize("shape,n", [((16, 128, 128), 384), ((700, 200), 1000), ((256, 784), 400),
                                     ((2048, 512), 128), ((64, 128), 128)], ids=str)
def test_linear_products_on_onednn_gemm_match_torch_float64(shape, n, monkeypatch):
    """Large float32 linear layers run forward (bias inside the kernel), dx and dW on oneDNN's
    GEMM (``_onednn_gemm``) and db on the compiled column sums; values and gradients against
    float64 PyTorch, and the NumPy path (oneDNN switched off) agrees to float32 rounding."""
    rng = np.random.default_rng(11)
    xa = rng.standard_normal(shape).astype(np.float32)
    wa = (rng.standard_normal((n, shape[-1])) / 8).astype(np.float32)
    ba = rng.standard_normal(n).astype(np.float32)
    ga = rng.standard_normal(shape[:-1] + (n,)).astype(np.float32)
    taken = []
    real = LA._onednn_gemm
    monkeypatch.setattr(LA, "_onednn_gemm", lambda *a, **k: taken.append(r := real(*a, **k)) or r)
    x, w, b = (am.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    y = F.linear(x, w, b)
    y.backward(am.tensor(ga))
    assert len(taken) == 3 and all(t is not None for t in taken)  # forward, dx, dW: none fell back
    tx, tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (xa, wa, ba))
    ty = TF.linear(tx, tw, tb)
    ty.backward(torch.tensor(ga.astype(np.float64)))
    _close(y.detach().numpy(), ty.detach().numpy(), 2e-6)
    for ours, ref in ((x.grad, tx.grad), (w.grad, tw.grad), (b.grad, tb.grad)):
        _close(ours.numpy(), ref.numpy(), 2e-6)
    monkeypatch.setattr(mkldnn, "enabled", False)
    taken.clear()
    x2, w2, b2 = (am.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    y2 = F.linear(x2, w2, b2)
    y2.backward(am.tensor(ga))
    assert taken == [None, None, None]
    np.testing.assert_allclose(y.detach().numpy(), y2.detach().numpy(), rtol=1e-5, atol=1e-5)
    for ours, numpy_path in ((x.grad, x2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        np.testing.assert_allclose(ours.numpy(), numpy_path.numpy(), rtol=1e-4, atol=1e-4)


def test_linear_onednn_gemm_declines_what_it_does_not_handle():
    """oneDNN's GEMM takes 2-d float32 NumPy operands that are C- or F-contiguous, a contiguous
    (n,) float32 bias and products of at least _ONEDNN_GEMM_MIN multiply-adds; everything else
    takes NumPy."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2048, 128)).astype(np.float32)
    w, b = rng.standard_normal((384, 128)).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    assert LA._onednn_gemm(x.astype(np.float64), w.astype(np.float64), trans_b=True) is None
    assert LA._onednn_gemm(x[:8, :64], w[:64, :64], trans_b=True) is None           # 32k multiply-adds: small
    assert LA._onednn_gemm(x[:, ::2], w[:, :64], trans_b=True) is None               # strided input rows
    assert LA._onednn_gemm(x, w, trans_b=True, bias=b[::2].repeat(2)[::-1]) is None  # reversed bias
    assert LA._onednn_gemm(x, w, trans_b=True, bias=b.astype(np.float64)) is None
    assert LA._onednn_gemm(x[None], w, trans_b=True) is None                         # 3-d
    if dnnl.available():
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        np.testing.assert_allclose(LA._onednn_gemm(x, w, trans_b=True, bias=b), ref + b, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(LA._onednn_gemm(x, w.T), ref, rtol=1e-4, atol=1e-4)  # F-contiguous b
        g = rng.standard_normal((2048, 384)).astype(np.float32)
        np.testing.assert_allclose(LA._onednn_gemm(g, x, trans_a=True), g.T.astype(np.float64) @ x,
                                   rtol=1e-4, atol=1e-3)


def test_linear_one_node_gradcheck_and_double_backward():
    rng = np.random.default_rng(7)
    x = am.tensor(rng.standard_normal((3, 24, 5)), requires_grad=True)  # 72 rows: the 1^T g bias sum
    w = am.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    b = am.tensor(rng.standard_normal(4), requires_grad=True)
    assert type(F.linear(x, w, b).grad_fn) is LA.Linear
    f = lambda x, w, b: F.linear(x, w, b).tanh()  # noqa: E731  (a non-linear output: real 2nd derivatives)
    assert am.autograd.gradcheck(f, (x, w, b))
    assert am.autograd.gradgradcheck(f, (x, w, b))


def test_linear_one_node_second_derivative_matches_torch():
    rng = np.random.default_rng(8)
    xa, wa, ba = rng.standard_normal((70, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    x, w, b = (am.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    (gw,) = am.autograd.grad((F.linear(x, w, b) ** 2).sum(), (w,), create_graph=True)
    (tgw,) = torch.autograd.grad((TF.linear(tx, tw, tb) ** 2).sum(), (tw,), create_graph=True)
    gw.sum().backward()
    tgw.sum().backward()
    for ours, ref in ((gw, tgw), (x.grad, tx.grad), (b.grad, tb.grad)):
        np.testing.assert_allclose(ours.detach().numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_linear_one_node_sees_in_place_change_of_input():
    x = am.randn(4, 3, requires_grad=True)
    h = x * 1.0
    w = am.randn(2, 3, requires_grad=True)
    y = F.linear(h, w)
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_linear_composed_path_kept_for_mixed_dtypes_and_half():
    x32 = am.randn(4, 3)
    w64 = am.randn(2, 3, dtype=am.float64, requires_grad=True)
    y = F.linear(x32, w64)
    assert type(y.grad_fn) is not LA.Linear and y.dtype == am.float64
    xh, wh = am.randn(4, 3).half(), am.randn(2, 3).half().requires_grad_()
    assert type(F.linear(xh, wh).grad_fn) is not LA.Linear


# -- binary cross-entropy's clamps as rows (ops/loss.py _max_into) -------------------------------
def test_bce_clamps_on_rows_bitwise_and_vs_torch():
    from avila_ml.backends._log1p_float32 import log1p as log1p32
    rng = np.random.default_rng(9)
    xa = rng.random((128, 784), dtype=np.float32)
    xa.reshape(-1)[::997] = 0.0  # log x = -inf -> -100
    xa.reshape(-1)[5::991] = 1.0  # log(1 - x) = -inf -> -100
    ya = rng.random((128, 784), dtype=np.float32)
    ga = rng.standard_normal((128, 784)).astype(np.float32)
    x, y = am.tensor(xa, requires_grad=True), am.tensor(ya, requires_grad=True)
    loss = F.binary_cross_entropy(x, y, reduction="none")
    with np.errstate(divide="ignore"):  # the scalar-operand formula, op for op
        a = np.maximum(log1p32(-xa), np.float32(-100))
        b = np.maximum(np.log(xa), np.float32(-100))
    a *= ya - 1
    b *= ya
    a -= b
    np.testing.assert_array_equal(loss.detach().numpy(), a)
    loss.backward(am.tensor(ga))
    tx, ty = (torch.tensor(v.astype(np.float64), requires_grad=True) for v in (xa, ya))
    tl = TF.binary_cross_entropy(tx, ty, reduction="none")
    tl.backward(torch.tensor(ga.astype(np.float64)))
    _close(loss.detach().numpy(), tl.detach().numpy(), 2e-6)
    # dx = g (x - y) / max(x (1 - x), 1e-12): huge at the clamped ends, compared relatively
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=2e-5, atol=1e-5)
    # dl/dy at x = 0 or 1: PyTorch's is -logit(x) = +-inf, ours the clamped -100 difference
    # (unchanged by the row clamps): compared inside (0, 1) only
    inner = (xa > 0) & (xa < 1)
    _close(y.grad.numpy()[inner], ty.grad.numpy()[inner], 2e-6)


# -- optimizer updates follow am.set_num_threads (optim/_fused.py _num_threads) ----------------------
def _adamw_run(threads):
    from avila_ml.optim import _fused
    before = am.get_num_threads()
    am.set_num_threads(threads)
    try:
        rng = np.random.default_rng(10)
        p = am.nn.Parameter(am.tensor(rng.standard_normal((512, 640)).astype(np.float32)))  # >= 2^17 elements
        q = am.nn.Parameter(am.tensor(rng.standard_normal(300).astype(np.float32)))
        opt = am.optim.AdamW([p, q], lr=1e-2, weight_decay=0.1)
        for k in range(3):
            p.grad = am.tensor(rng.standard_normal((512, 640)).astype(np.float32))
            q.grad = am.tensor(rng.standard_normal(300).astype(np.float32))
            opt.step()
        return p.detach().numpy().copy(), q.detach().numpy().copy()
    finally:
        am.set_num_threads(before)


def test_optimizer_threads_follow_set_num_threads(monkeypatch):
    from avila_ml.cpu_accel import _native
    from avila_ml.optim import _fused
    if _fused._cores() < 2:
        pytest.skip("one core: every update runs in the calling thread")
    # the Python pool's path (the compiled Adam/AdamW update needs no pool: tests/test_native_optim.py)
    monkeypatch.setattr(_native, "ENABLED", False)
    submitted = []
    real = _fused._executor
    monkeypatch.setattr(_fused, "_executor", lambda: submitted.append(am.get_num_threads()) or real())
    one = _adamw_run(1)
    assert submitted == []  # one thread asked for: no hand-off to the pool
    two = _adamw_run(2)
    assert submitted and set(submitted) == {2}
    for a, b in zip(one, two):  # element-wise arithmetic: the split changes no bit
        np.testing.assert_array_equal(a, b)


def test_optimizer_hand_off_stops_spinning_blas_workers(monkeypatch):
    """A CPU update shared with the pool first stops NumPy's spinning OpenBLAS workers (they
    would hold the pool thread's core), only then: not at one thread; the results stay
    bitwise those of one thread."""
    from avila_ml.cpu_accel import _dnnl, _native
    from avila_ml.optim import _fused
    if _fused._cores() < 2:
        pytest.skip("one core: every update runs in the calling thread")
    monkeypatch.setattr(_native, "ENABLED", False)  # the Python pool's path (as above)
    order = []
    real_quiet, real_exec = _dnnl.quiet_blas, _fused._executor
    monkeypatch.setattr(_dnnl, "quiet_blas", lambda: order.append("quiet") or real_quiet())
    monkeypatch.setattr(_fused, "_executor", lambda: order.append("pool") or real_exec())
    one = _adamw_run(1)
    assert "quiet" not in order and "pool" not in order
    two = _adamw_run(2)
    assert "pool" in order and order.index("quiet") < order.index("pool")
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


# -- mid-sized parameters dealt whole to the optimizer's threads (optim/_fused.py _flush_cpu) -------
_GPT_LIKE = [(384, 128), (128, 128), (512, 128), (128, 512), (384,), (128,), (6000,), (4096,), (4095,)]


def _mid_sized_run(name, kwargs, threads, monkeypatch, dtype=np.float32):
    from avila_ml.optim import _fused
    monkeypatch.setattr(_fused, "_num_threads", lambda: threads)
    monkeypatch.setattr(_fused, "_pool", [None, None])
    rng = np.random.default_rng(3)
    ps = [am.nn.Parameter(am.tensor(rng.standard_normal(s).astype(dtype))) for s in _GPT_LIKE]
    opt = getattr(am.optim, name)(ps, **kwargs)
    for _ in range(3):
        for p in ps:
            p.grad = am.tensor(rng.standard_normal(p.shape).astype(dtype))
        opt.step()
    return [p.detach().numpy().copy() for p in ps]


@pytest.mark.parametrize("name,kwargs", [
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)), ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)), ("Adadelta", dict(lr=1.0)),
])
def test_mid_sized_parameters_are_dealt_whole_to_threads(name, kwargs, monkeypatch):
    """Parameters of SHARED_MIN_SIZE up to PARALLEL_MIN_SIZE elements (the small GPT's: none is
    over 65,536) are queued and updated whole, one thread each, in one hand-off; those below
    stay in the calling thread. Element-wise arithmetic: bitwise the one-thread result. (The
    bound is pinned at 4,096 here so the dealing of six mid-sized shapes is exercised; the
    default, 2^15, keeps a digits-MLP-sized model in the calling thread.)"""
    from avila_ml.cpu_accel import _native
    from avila_ml.optim import _fused
    # (the Python pool's path: SGD otherwise takes the compiled kernel, one OpenMP-split call
    # per parameter, tested bitwise against this arithmetic in tests/test_native_optim.py)
    monkeypatch.setattr(_native, "ENABLED", False)
    monkeypatch.setattr(_fused, "SHARED_MIN_SIZE", 1 << 12)
    one = _mid_sized_run(name, kwargs, 1, monkeypatch)
    flushed, dealt = [], []
    real_flush, real_share = _fused._flush_cpu, _fused._share_whole
    monkeypatch.setattr(_fused, "_flush_cpu", lambda entries: flushed.append(
        sorted(e[1].size for e in entries)) or real_flush(entries))
    monkeypatch.setattr(_fused, "_share_whole", lambda entries, k: dealt.append(
        [sum(e[1].size for e in part) for part in real_share(entries, k)]) or real_share(entries, k))
    three = _mid_sized_run(name, kwargs, 3, monkeypatch)
    mid = sorted(int(np.prod(s)) for s in _GPT_LIKE if _fused.SHARED_MIN_SIZE <= np.prod(s) < _fused.PARALLEL_MIN_SIZE)
    assert flushed == [mid] * 3  # every step: the mid-sized ones, queued together; 384, 128, 4095 not
    # largest first, each to the least-loaded thread (the first of equals): 65536 | 65536 | 49152,
    # then 16384 to the third, 6000 to the first, 4096 to the second
    assert dealt[0] == [65536 + 6000, 65536 + 4096, 49152 + 16384]
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)


def test_mid_sized_parameters_shared_follow_torch_adamw(monkeypatch):
    """The same split in float64 against torch.optim.AdamW (foreach=False) on the same data."""
    ours = _mid_sized_run("AdamW", dict(lr=1e-2, weight_decay=0.1), 2, monkeypatch, np.float64)
    rng = np.random.default_rng(3)
    ps = [torch.nn.Parameter(torch.tensor(rng.standard_normal(s))) for s in _GPT_LIKE]
    opt = torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(3):
        for p in ps:
            p.grad = torch.tensor(rng.standard_normal(tuple(p.shape)))
        opt.step()
    for a, p in zip(ours, ps):
        np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-13, atol=1e-15)


# -- cross-entropy in row blocks on the CPU threads (ops/loss.py _row_blocks) -------------------------
from avila_ml.ops.loss import _on_threads as _REAL_ON_THREADS  # noqa: E402 - (before any test patches it)

def _ce_run(xa, ta, split, monkeypatch, **kw):
    from avila_ml.cpu_accel import _native
    from avila_ml.ops import loss as L
    # the row-block path is the one without the compiled row kernels (tests/test_native_softmax.py
    # covers those), which would take these (N, C) logits first
    monkeypatch.setattr(_native, "ENABLED", False)
    monkeypatch.setattr(L, "_ROWS_SPLIT_MIN", 1 if split else 1 << 62)
    calls, real = [], _REAL_ON_THREADS
    monkeypatch.setattr(L, "_on_threads", lambda fn, blocks: calls.append(len(blocks)) or real(fn, blocks))
    x = am.tensor(xa, requires_grad=True)
    loss = F.cross_entropy(x, am.tensor(ta), **kw)
    g = np.random.default_rng(5).standard_normal(loss.shape).astype(np.float32)
    loss.backward(am.tensor(g))
    return loss.detach().numpy(), x.grad.numpy(), calls, g


@needs_onednn
@pytest.mark.parametrize("shape", [(2048, 512), (1001, 300)])
@pytest.mark.parametrize("kw", [dict(), dict(reduction="sum"), dict(reduction="none", ignore_index=3),
                                dict(label_smoothing=0.0, weight="w")], ids=["mean", "sum", "none-ignore", "weight"])
def test_cross_entropy_row_blocks_bitwise_and_vs_torch(shape, kw, monkeypatch):
    """float32 logits of >= 2^18 elements: log-softmax forward and softmax backward in row
    blocks on the threads (each block's oneDNN exp on one OpenMP thread) give bitwise the
    one-block results, and match PyTorch float64."""
    from avila_ml.ops import _cpu_threads
    if _cpu_threads.controller() is None:
        pytest.skip("no threadpoolctl: no row blocks")
    monkeypatch.setattr(_cpu_threads, "blas_threads", lambda: 2)  # (also on a one-core machine)
    rng = np.random.default_rng(4)
    xa = (3 * rng.standard_normal(shape)).astype(np.float32)
    ta = rng.integers(0, shape[1], shape[0])
    kw = dict(kw)
    if kw.get("weight") == "w":
        wa = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
        kw["weight"] = am.tensor(wa)
    l1, g1, c1, _ = _ce_run(xa, ta, False, monkeypatch, **kw)
    l2, g2, c2, ga = _ce_run(xa, ta, True, monkeypatch, **kw)
    assert c1 == [] and c2 == [2, 2]  # forward and backward each ran as two row blocks
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(g1, g2)
    tkw = {k: (torch.tensor(v.numpy(), dtype=torch.float64) if k == "weight" else v) for k, v in kw.items()}
    xt = torch.tensor(xa, dtype=torch.float64, requires_grad=True)
    lt = TF.cross_entropy(xt, torch.tensor(ta), **tkw)
    lt.backward(torch.tensor(ga, dtype=torch.float64))
    _close(l2, lt.detach().numpy(), 1e-5)
    _close(g2, xt.grad.numpy(), 1e-5)


@needs_onednn
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_cross_entropy_row_blocks_keep_nan_rows(monkeypatch):
    """A NaN or +inf logit makes its row's loss NaN in the row-block path too (PyTorch), silently
    as in one block (the pool threads run under the caller's np.errstate)."""
    from avila_ml.ops import _cpu_threads
    if _cpu_threads.controller() is None:
        pytest.skip("no threadpoolctl: no row blocks")
    monkeypatch.setattr(_cpu_threads, "blas_threads", lambda: 2)
    rng = np.random.default_rng(6)
    xa = rng.standard_normal((1024, 512)).astype(np.float32)
    xa[3, 7], xa[900, 0] = np.nan, np.inf
    ta = rng.integers(0, 512, 1024)
    loss, grad, calls, _ = _ce_run(xa, ta, True, monkeypatch, reduction="none")
    ref, ref_grad, _, _ = _ce_run(xa, ta, False, monkeypatch, reduction="none")
    assert calls == [2, 2]
    assert np.isnan(loss[[3, 900]]).all() and np.isfinite(np.delete(loss, [3, 900])).all()
    np.testing.assert_array_equal(loss, ref)
    np.testing.assert_array_equal(grad, ref_grad)
