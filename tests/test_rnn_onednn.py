"""float32 LSTM, GRU and RNN layers through oneDNN's RNN primitives (ops/recurrent.py
``RecurrentLayer``, cpu_accel/_rnn.py) against torch.nn in float64 from the same float32
inputs: values and gradients (input, h0, c0, every weight and bias), layers, directions,
batch_first, dropout, the fallbacks (packed variable lengths, projection, float64,
``mkldnn.enabled = False``) and double backward (create_graph)."""
import itertools

import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.cpu_accel import _rnn
from avila_ml.nn.utils import rnn as amrnn

pytestmark = pytest.mark.skipif(not am.cpu_accel.is_available(), reason="oneDNN is not installed")

# float32 through T steps against a float64 reference: a few ulps per step
TOL = dict(rtol=2e-4, atol=2e-5)


def _np(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t.detach().cpu().numpy()


@pytest.fixture
def calls(monkeypatch):
    """Counts of the oneDNN forward and backward calls made through ``_rnn``."""
    n = {"fwd": 0, "bwd": 0}
    fwd, bwd = _rnn.layer_forward, _rnn.layer_backward

    def count_fwd(*a, **k):
        n["fwd"] += 1
        return fwd(*a, **k)

    def count_bwd(*a, **k):
        n["bwd"] += 1
        return bwd(*a, **k)

    monkeypatch.setattr(_rnn, "layer_forward", count_fwd)
    monkeypatch.setattr(_rnn, "layer_backward", count_bwd)
    return n


def _pair(kwargs, name="LSTM"):
    """torch's layer in float64 and ours in float32 with the same (float32-rounded) weights."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(**kwargs)
    ours = getattr(am.nn, name)(**kwargs)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs.double()


def _run(ours, theirs, x, hx, rng):
    """Forward both, a loss touching every output with random weights, backward both; returns
    [(name, ours, theirs)] of outputs and gradients."""
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ax = am.tensor(x, requires_grad=True)
    targs, aargs = [tx], [ax]
    if hx is not None:
        th = tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in hx)
        ah = tuple(am.tensor(a, requires_grad=True) for a in hx)
        targs.append(th)
        aargs.append(ah)
    lstm = isinstance(ours, am.nn.LSTM)
    if hx is not None and not lstm:
        targs[1], aargs[1] = targs[1][0], aargs[1][0]
    tout, t_st = theirs(*targs)
    aout, a_st = ours(*aargs)
    t_st, a_st = (t_st, a_st) if lstm else ((t_st,), (a_st,))
    ws = [rng.standard_normal(tuple(t.shape)).astype(np.float32) for t in (tout,) + t_st]
    tl = sum((t * torch.tensor(w, dtype=torch.float64)).sum() for t, w in zip((tout,) + t_st, ws))
    al = sum((a * am.tensor(w)).sum() for a, w in zip((aout,) + a_st, ws))
    tl.backward()
    al.backward()
    got = [("output", aout, tout)] + [(n, a, t) for n, a, t in zip(("h_n", "c_n"), a_st, t_st)]
    got.append(("input grad", ax.grad, tx.grad))
    if hx is not None:
        th, ah = (targs[1], aargs[1]) if lstm else ((targs[1],), (aargs[1],))
        got += [(n, a.grad, t.grad) for n, a, t in zip(("h0 grad", "c0 grad"), ah, th)]
    tp = dict(theirs.named_parameters())
    got += [(n + " grad", p.grad, tp[n].grad) for n, p in ours.named_parameters()]
    return got


def _check(got):
    for what, a, t in got:
        assert a is not None, what
        assert tuple(a.shape) == tuple(t.shape), what
        assert a.dtype == am.float32, what
        np.testing.assert_allclose(_np(a), _np(t), **TOL, err_msg=what)


OPTIONS = list(itertools.product([1, 2], [True, False], [False, True], [False, True], [False, True]))
LAYERS = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"})]


@pytest.mark.parametrize("name,extra", LAYERS, ids=[n + "-" + ",".join(e.values()) for n, e in LAYERS])
@pytest.mark.parametrize("num_layers,bias,bidirectional,batch_first,with_hx", OPTIONS,
                         ids=["L{}-bias{}-bi{}-bf{}-hx{}".format(*o) for o in OPTIONS])
def test_onednn_layer_matches_torch(name, extra, num_layers, bias, bidirectional, batch_first, with_hx, calls):
    I, H, T, B, D = 5, 6, 7, 3, 2 if bidirectional else 1
    ours, theirs = _pair(dict(input_size=I, hidden_size=H, num_layers=num_layers, bias=bias,
                              bidirectional=bidirectional, batch_first=batch_first, **extra), name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    hx = None
    if with_hx:
        hx = tuple(rng.standard_normal((num_layers * D, B, H)).astype(np.float32) for _ in range(2))
    _check(_run(ours, theirs, x, hx, rng))
    assert calls == {"fwd": num_layers * D, "bwd": num_layers * D}  # every layer-direction on oneDNN


def test_word_lm_sizes_match_torch(calls):
    """The word LM's layer (benchmarks/bench_programs.py: 2 x LSTM 200, bptt 35, batch 20)."""
    ours, theirs = _pair(dict(input_size=200, hidden_size=200, num_layers=2))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((35, 20, 200)).astype(np.float32)
    hx = tuple(0.5 * rng.standard_normal((2, 20, 200)).astype(np.float32) for _ in range(2))
    _check(_run(ours, theirs, x, hx, rng))
    assert calls == {"fwd": 2, "bwd": 2}


def test_layer_state_goes_with_the_graph(calls):
    """The forward's oneDNN state (workspace, input and weight copies) is kept for one backward
    and dropped with the graph; retain_graph keeps it for a second backward, which gives the
    same gradients."""
    from avila_ml.ops.recurrent import RecurrentLayer
    layer = am.nn.LSTM(8, 6)
    x = am.tensor(np.random.default_rng(3).standard_normal((5, 2, 8)).astype(np.float32), requires_grad=True)
    out, _ = layer(x)
    nodes, stack, seen = [], [out.grad_fn], set()
    while stack:  # the RecurrentLayer node(s) below the output
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, RecurrentLayer):
            nodes.append(n)
        stack.extend(e[0] for e in getattr(n, "_next", ()) if e is not None)
    assert nodes and all(n.saved is not None for n in nodes)
    out.sum().backward(retain_graph=True)
    first = x.grad.numpy().copy()
    assert all(n.saved is not None for n in nodes)
    x.grad = None
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), first)
    assert all(n.saved is None for n in nodes) and calls["bwd"] == 2


def test_same_as_loop_and_switch(calls):
    """``mkldnn.enabled = False`` runs the step loop (the reference); both agree in float32."""
    m = am.nn.LSTM(4, 5, num_layers=2, bidirectional=True)
    x = am.randn(6, 3, 4, requires_grad=True)
    res = {}
    for flag in (True, False):
        am.backends.mkldnn.enabled = flag
        try:
            x.grad = None
            m.zero_grad()
            out, (h, c) = m(x)
            (out.square().sum() + h.sum() + c.sum()).backward()
            res[flag] = [out, h, c, x.grad] + [p.grad for p in m.parameters()]
        finally:
            am.backends.mkldnn.enabled = True
    assert calls == {"fwd": 4, "bwd": 4}
    for a, b in zip(res[True], res[False]):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6)


def test_no_grad_uses_inference_plan(calls):
    """Without autograd the forward keeps no workspace (oneDNN's inference propagation)."""
    ours, theirs = _pair(dict(input_size=3, hidden_size=4))
    x = np.random.default_rng(2).standard_normal((5, 2, 3)).astype(np.float32)
    with am.no_grad():
        out, (h, c) = ours(am.tensor(x))
    tout, (th, tc) = theirs(torch.tensor(x, dtype=torch.float64))
    for a, t in ((out, tout), (h, th), (c, tc)):
        np.testing.assert_allclose(_np(a), _np(t), **TOL)
    assert calls["fwd"] == 1
    assert ("lstm", 5, 2, 3, 4, False, False) in list(_rnn._cache)


def test_dropout_between_layers_matches_loop(calls):
    """Dropout between layers draws the same masks on both paths (same seed): same results."""
    m = am.nn.LSTM(4, 5, num_layers=3, dropout=0.5)
    x = am.randn(6, 2, 4, requires_grad=True)
    res = {}
    for flag in (True, False):
        am.backends.mkldnn.enabled = flag
        try:
            am.manual_seed(3)
            x.grad = None
            m.zero_grad()
            out, _ = m(x)
            out.sum().backward()
            res[flag] = [out, x.grad] + [p.grad for p in m.parameters()]
        finally:
            am.backends.mkldnn.enabled = True
    assert calls == {"fwd": 3, "bwd": 3}
    for a, b in zip(res[True], res[False]):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6)
    # dropout=1 zeroes every layer's input above the first: comparable with torch
    ours, theirs = _pair(dict(input_size=3, hidden_size=4, num_layers=3, dropout=1.0))
    xv = np.random.default_rng(5).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(_np(ours(am.tensor(xv))[0]), _np(theirs(torch.tensor(xv, dtype=torch.float64))[0]),
                               **TOL)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_variable_lengths_fall_back(bidirectional, calls):
    """Variable lengths need the shrinking batch of the step loop: no oneDNN call, torch's values."""
    ours, theirs = _pair(dict(input_size=3, hidden_size=4, bidirectional=bidirectional))
    rng = np.random.default_rng(6)
    lengths = [5, 3, 2]
    x = rng.standard_normal((5, 3, 3)).astype(np.float32)
    ap = amrnn.pack_padded_sequence(am.tensor(x, requires_grad=True), lengths)
    tp = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x, dtype=torch.float64), lengths)
    aout, (ah, ac) = ours(ap)
    tout, (th, tc) = theirs(tp)
    for a, t in ((aout.data, tout.data), (ah, th), (ac, tc)):
        np.testing.assert_allclose(_np(a), _np(t), **TOL)
    assert calls == {"fwd": 0, "bwd": 0}
    # equal lengths, packed: the padded batch, so oneDNN runs it
    ep = amrnn.pack_padded_sequence(am.tensor(x), [5, 5, 5])
    etp = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x, dtype=torch.float64), [5, 5, 5])
    np.testing.assert_allclose(_np(ours(ep)[0].data), _np(theirs(etp)[0].data), **TOL)
    assert calls["fwd"] == (2 if bidirectional else 1)


def test_projection_float64_and_empty_fall_back(calls):
    ours, theirs = _pair(dict(input_size=3, hidden_size=5, proj_size=2))
    x = np.random.default_rng(7).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(_np(ours(am.tensor(x))[0]), _np(theirs(torch.tensor(x, dtype=torch.float64))[0]),
                               **TOL)
    m64 = am.nn.LSTM(3, 4, dtype=am.float64)
    m64(am.tensor(x.astype(np.float64)))
    # an empty batch (oneDNN refuses it): the loop, torch's shapes
    empty = am.zeros(5, 0, 3, requires_grad=True)
    out, h = am.nn.GRU(3, 4)(empty)
    out.sum().backward()
    assert out.shape == (5, 0, 4) and h.shape == (1, 0, 4) and empty.grad.shape == (5, 0, 3)
    assert calls == {"fwd": 0, "bwd": 0}


def test_refused_plan_falls_back_with_a_warning(monkeypatch, calls):
    """A shape oneDNN will not build runs the step loop, announced once, with torch's values."""
    from avila_ml.cpu_accel import _dnnl

    def refuse(*args):
        raise _dnnl.DnnlError("oneDNN: dnnl_lstm_forward_primitive_desc_create failed with status 3 (unimplemented)")

    monkeypatch.setattr(_rnn, "_Plan", refuse)
    _rnn.clear_cache()
    ours, theirs = _pair(dict(input_size=3, hidden_size=4))
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"could not build the LSTM layer .*\(5, 2, 3, 4\).*unimplemented"):
        got = _run(ours, theirs, x, None, rng)
    _check(got)
    ours(am.tensor(x))  # cached refusal: no second warning, no oneDNN call
    assert calls["fwd"] == 0
    _rnn.clear_cache()


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_double_backward_matches_torch(name, calls):
    """create_graph=True: the gradient is a graph (the step loop recomputed and differentiated),
    so a loss on the input gradient has second derivatives; compared with torch's float64."""
    ours, theirs = _pair(dict(input_size=3, hidden_size=4, bidirectional=True), name)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    h0 = rng.standard_normal((2, 2, 4)).astype(np.float32)
    c0 = rng.standard_normal((2, 2, 4)).astype(np.float32)
    tx, ax = torch.tensor(x, dtype=torch.float64, requires_grad=True), am.tensor(x, requires_grad=True)
    th0, ah0 = torch.tensor(h0, dtype=torch.float64, requires_grad=True), am.tensor(h0, requires_grad=True)
    lstm = name == "LSTM"
    tout, tst = theirs(tx, (th0, torch.tensor(c0, dtype=torch.float64)) if lstm else th0)
    aout, ast = ours(ax, (ah0, am.tensor(c0)) if lstm else ah0)
    tlast, alast = (tst[1], ast[1]) if lstm else (tst, ast)
    (tgx, tgh) = torch.autograd.grad((tout ** 2).sum() + tlast.sum(), (tx, th0), create_graph=True)
    (agx, agh) = am.autograd.grad((aout ** 2).sum() + alast.sum(), (ax, ah0), create_graph=True)
    np.testing.assert_allclose(_np(agx), _np(tgx), **TOL)
    np.testing.assert_allclose(_np(agh), _np(tgh), **TOL)
    assert calls == {"fwd": 2, "bwd": 0}  # the create_graph backward went through the step loop
    ((tgx ** 2).sum() + tgh.sum()).backward()
    ((agx ** 2).sum() + agh.sum()).backward()
    tparams = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        np.testing.assert_allclose(_np(p.grad), _np(tparams[n].grad), **TOL, err_msg=n)
    np.testing.assert_allclose(_np(ax.grad), _np(tx.grad), **TOL)
    np.testing.assert_allclose(_np(ah0.grad), _np(th0.grad), **TOL)
    # the second backward reaches the layer's outputs again (the loss's 2·out factor): plain backward
    assert calls == {"fwd": 2, "bwd": 2}


def test_impl_is_the_rnn_driver():
    """oneDNN names its CPU RNN driver "ref" (or "ref+matmul") unless it takes the AVX-512 brgemm
    kernels ("brgemm:..."): unlike "ref:any" of other primitives, that driver runs oneDNN's JIT
    GEMMs and JIT gate kernels, not scalar loops (its speed: benchmarks/bench_mlp.py LSTM rows)."""
    for cell in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        p = _rnn.plan(cell, 3, 2, 4, 5, False, True)
        for impl in (p.impl, p.bwd_impl):
            assert impl in ("ref", "ref+matmul") or impl.startswith("brgemm:"), (cell, impl)


def test_boundary_and_layer_errors():
    p = _rnn.plan("lstm", 3, 2, 4, 5, False, False)
    f = np.zeros
    good = (f((3, 2, 4), np.float32), f((2, 5), np.float32), f((2, 5), np.float32), f((20, 4), np.float32),
            f((20, 5), np.float32), f((4, 5), np.float32))
    y, hn, cn, ws = p.forward(*good)
    assert ws is None and y.shape == (3, 2, 5) and not y.any()
    with pytest.raises(ValueError, match="input w_ih .* 400 bytes, the primitive expects 320"):
        p.forward(*good[:3], f((20, 5), np.float32), *good[4:])
    with pytest.raises(TypeError, match="input x of the oneDNN LSTM must have dtype float32, got float64"):
        p.forward(f((3, 2, 4)), *good[1:])
    # the layer's own errors come first, as on the loop path
    m = am.nn.LSTM(3, 4, num_layers=2)
    with pytest.raises(RuntimeError, match="input_size. Expected 3, got 5"):
        m(am.zeros(2, 2, 5))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 2, 4\), got \[1, 2, 4\]"):
        m(am.zeros(3, 2, 3), (am.zeros(1, 2, 4), am.zeros(2, 2, 4)))
    with pytest.raises(RuntimeError, match="input must have the type"):
        m(am.zeros(3, 2, 3, dtype=am.float64))


def test_modified_input_is_caught():
    """The saved inputs are version-checked as on the loop path."""
    m = am.nn.LSTM(3, 4)
    w = m.weight_hh_l0
    out, _ = m(am.randn(3, 2, 3))
    with am.no_grad():
        w.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(_rnn, "CACHE_SIZE", 2)
    _rnn.clear_cache()
    for t in (2, 3, 4):
        _rnn.plan("gru", t, 1, 2, 3, False, False)
    assert _rnn.cache_info() == {"size": 2, "capacity": 2}
    _rnn.clear_cache()
