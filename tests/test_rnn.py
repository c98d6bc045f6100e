"""Recurrent layers, cells and sequence packing against torch.nn (float64 values and gradients)."""
import itertools

import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.nn.utils import rnn as amrnn
from torch.nn.utils import rnn as trnn

TOL = dict(rtol=1e-10, atol=1e-12)


def _np(t):
    return t.detach().cpu().numpy() if isinstance(t, am.Tensor) else t.detach().numpy()


def _pair(name, kwargs, device="cpu"):
    """The same layer in torch and in Avila ML, float64, with torch's weights copied into ours."""
    theirs = getattr(torch.nn, name)(**kwargs).double()
    ours = getattr(am.nn, name)(**kwargs, dtype=am.float64, device=device)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def _close(a, b, what=""):
    np.testing.assert_allclose(_np(a), _np(b), **TOL, err_msg=what)


def _compare_grads(ours, theirs):
    tp = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        assert p.grad is not None, n
        _close(p.grad, tp[n].grad, n)


LAYERS = [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}), ("LSTM", {"proj_size": 2}), ("GRU", {})]
OPTIONS = list(itertools.product([1, 2], [True, False], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("name,extra", LAYERS, ids=[n + "-" + ",".join(e) for n, e in LAYERS])
@pytest.mark.parametrize("num_layers,bias,bidirectional,batch_first,with_hx", OPTIONS,
                         ids=["L{}-bias{}-bi{}-bf{}-hx{}".format(*o) for o in OPTIONS])
def test_layer_matches_torch(name, extra, num_layers, bias, bidirectional, batch_first, with_hx, device):
    kw = dict(input_size=3, hidden_size=4, num_layers=num_layers, bias=bias,
              bidirectional=bidirectional, batch_first=batch_first, **extra)
    ours, theirs = _pair(name, kw, device)
    rng = np.random.default_rng(0)
    T, B, D = 5, 3, 2 if bidirectional else 1
    x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3))
    tx = torch.tensor(x, requires_grad=True)
    ax = am.tensor(x, requires_grad=True, device=device)
    targs, aargs = [tx], [ax]
    hx = []
    if with_hx:
        h_out = extra.get("proj_size") or 4
        h0 = rng.standard_normal((num_layers * D, B, h_out))
        hx = [h0] + ([rng.standard_normal((num_layers * D, B, 4))] if name == "LSTM" else [])
        th = [torch.tensor(a, requires_grad=True) for a in hx]
        ah = [am.tensor(a, requires_grad=True, device=device) for a in hx]
        targs.append(tuple(th) if name == "LSTM" else th[0])
        aargs.append(tuple(ah) if name == "LSTM" else ah[0])
    tout, th_n = theirs(*targs)
    aout, ah_n = ours(*aargs)
    _close(aout, tout, "output")
    t_states = th_n if name == "LSTM" else (th_n,)
    a_states = ah_n if name == "LSTM" else (ah_n,)
    for a, t in zip(a_states, t_states):
        assert a.shape == tuple(t.shape)
        _close(a, t, "h_n/c_n")
    # a loss that touches every output with different weights
    wo = rng.standard_normal(tuple(tout.shape))
    ws = [rng.standard_normal(tuple(t.shape)) for t in t_states]
    tl = (tout * torch.tensor(wo)).sum() + sum((t * torch.tensor(w)).sum() for t, w in zip(t_states, ws))
    al = (aout * am.tensor(wo, device=device)).sum() + sum((a * am.tensor(w, device=device)).sum()
                                                           for a, w in zip(a_states, ws))
    tl.backward()
    al.backward()
    _close(ax.grad, tx.grad, "input grad")
    if with_hx:
        for a, t in zip(ah, th):
            _close(a.grad, t.grad, "hx grad")
    _compare_grads(ours, theirs)


@pytest.mark.parametrize("name,extra", LAYERS, ids=[n + "-" + ",".join(e) for n, e in LAYERS])
def test_parameter_names_shapes_and_order_match_torch(name, extra):
    kw = dict(input_size=3, hidden_size=5, num_layers=3, bidirectional=True, **extra)
    theirs = getattr(torch.nn, name)(**kw)
    ours = getattr(am.nn, name)(**kw)
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    # and back: our weights load into torch, which then computes what we compute
    theirs.load_state_dict({k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    out_t = theirs(torch.tensor(x))[0]
    out_a = ours(am.tensor(x))[0]
    np.testing.assert_allclose(_np(out_a), _np(out_t), rtol=1e-5, atol=1e-6)
    assert len(ours.all_weights) == 6 and ours.all_weights[1][0] is ours.weight_ih_l0_reverse


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_init_is_uniform_over_one_over_sqrt_hidden(name):
    m = getattr(am.nn, name)(10, 16, num_layers=2)
    k = 1 / 4
    values = np.concatenate([p.detach().numpy().ravel() for p in m.parameters()])
    assert values.min() >= -k and values.max() <= k
    # U(-k, k): mean 0, std k/sqrt(3); several thousand samples
    assert abs(values.mean()) < 0.01 and abs(values.std() - k / np.sqrt(3)) < 0.005


def _packed_case(rng, lengths, batch_first):
    T, B = max(lengths), len(lengths)
    x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3))
    return x


PACKED = list(itertools.product(["RNN", "LSTM", "GRU"], [True, False], [False, True], [False, True], [1, 2]))


@pytest.mark.parametrize("name,enforce_sorted,bidirectional,batch_first,num_layers", PACKED,
                         ids=["{}-sorted{}-bi{}-bf{}-L{}".format(*p) for p in PACKED])
def test_packed_sequence_matches_torch(name, enforce_sorted, bidirectional, batch_first, num_layers, device):
    kw = dict(input_size=3, hidden_size=4, bidirectional=bidirectional, batch_first=batch_first,
              num_layers=num_layers)
    ours, theirs = _pair(name, kw, device)
    rng = np.random.default_rng(2)
    lengths = [6, 4, 4, 2, 1] if enforce_sorted else [2, 6, 1, 4, 3]
    x = _packed_case(rng, lengths, batch_first)
    D = 2 if bidirectional else 1
    h0 = rng.standard_normal((num_layers * D, len(lengths), 4))
    c0 = rng.standard_normal((num_layers * D, len(lengths), 4))
    tx, th, tc = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    ax, ah, ac = (am.tensor(a, requires_grad=True, device=device) for a in (x, h0, c0))
    tp = trnn.pack_padded_sequence(tx, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=enforce_sorted)
    ap = amrnn.pack_padded_sequence(ax, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    _close(ap.data, tp.data, "packed data")
    assert ap.batch_sizes.tolist() == tp.batch_sizes.tolist()
    tout, ts = theirs(tp, (th, tc) if name == "LSTM" else th)
    aout, as_ = ours(ap, (ah, ac) if name == "LSTM" else ah)
    assert isinstance(aout, amrnn.PackedSequence)
    t_pad, t_len = trnn.pad_packed_sequence(tout, batch_first=batch_first, padding_value=-7.0)
    a_pad, a_len = amrnn.pad_packed_sequence(aout, batch_first=batch_first, padding_value=-7.0)
    assert a_len.tolist() == t_len.tolist() == lengths
    _close(a_pad, t_pad, "padded output")
    ts = ts if name == "LSTM" else (ts,)
    as_ = as_ if name == "LSTM" else (as_,)
    for a, t in zip(as_, ts):
        _close(a, t, "final state")
    w = rng.standard_normal(tuple(t_pad.shape))
    loss_t = (t_pad * torch.tensor(w)).sum() + sum((s ** 2).sum() for s in ts)
    loss_a = (a_pad * am.tensor(w, device=device)).sum() + sum((s ** 2).sum() for s in as_)
    loss_t.backward()
    loss_a.backward()
    _close(ax.grad, tx.grad, "input grad")
    _close(ah.grad, th.grad, "h0 grad")
    if name == "LSTM":
        _close(ac.grad, tc.grad, "c0 grad")
    _compare_grads(ours, theirs)


def test_pad_pack_helpers_match_torch():
    rng = np.random.default_rng(3)
    seqs = [rng.standard_normal((n, 2)) for n in (3, 5, 1, 5)]
    ts = [torch.tensor(s, requires_grad=True) for s in seqs]
    as_ = [am.tensor(s, requires_grad=True) for s in seqs]
    for bf, side in itertools.product([False, True], ["right", "left"]):
        tp = trnn.pad_sequence(ts, batch_first=bf, padding_value=2.5, padding_side=side)
        ap = amrnn.pad_sequence(as_, batch_first=bf, padding_value=2.5, padding_side=side)
        _close(ap, tp)
    tpk = trnn.pack_sequence(ts, enforce_sorted=False)
    apk = amrnn.pack_sequence(as_, enforce_sorted=False)
    _close(apk.data, tpk.data)
    assert apk.batch_sizes.tolist() == tpk.batch_sizes.tolist()
    assert apk.sorted_indices.tolist() == tpk.sorted_indices.tolist()
    assert apk.unsorted_indices.tolist() == tpk.unsorted_indices.tolist()
    tpad, _ = trnn.pad_packed_sequence(tpk, batch_first=True, total_length=7)
    apad, _ = amrnn.pad_packed_sequence(apk, batch_first=True, total_length=7)
    _close(apad, tpad)
    w = rng.standard_normal(tuple(tpad.shape))
    (tpad * torch.tensor(w)).sum().backward()
    (apad * am.tensor(w)).sum().backward()
    for a, t in zip(as_, ts):
        _close(a.grad, t.grad)
    for a, t in zip(amrnn.unpack_sequence(apk), trnn.unpack_sequence(tpk)):
        _close(a, t)
    lens = [3, 5, 1, 5]
    for a, t in zip(amrnn.unpad_sequence(apad, lens, batch_first=True),
                    trnn.unpad_sequence(tpad, torch.tensor(lens), batch_first=True)):
        _close(a, t)


def test_packing_errors():
    x = am.zeros(4, 3, 2)
    with pytest.raises(RuntimeError, match="sorted in decreasing order"):
        amrnn.pack_padded_sequence(x, [2, 4, 1])
    with pytest.raises(RuntimeError, match="greater than 0"):
        amrnn.pack_padded_sequence(x, [4, 0, 0])
    with pytest.raises(ValueError, match="3 lengths for a batch of 3|got 2 lengths"):
        amrnn.pack_padded_sequence(x, [4, 1])
    with pytest.raises(RuntimeError, match="exceeds the 4 time steps"):
        amrnn.pack_padded_sequence(x, [5, 1, 1])
    p = amrnn.pack_padded_sequence(x, [4, 2, 1])
    with pytest.raises(ValueError, match="total_length"):
        amrnn.pad_packed_sequence(p, total_length=3)
    with pytest.raises(RuntimeError, match="trailing dims"):
        amrnn.pad_sequence([am.zeros(2, 3), am.zeros(2, 4)])


CELLS = [("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"}), ("LSTMCell", {}), ("GRUCell", {}),
         ("GRUCell", {"bias": False}), ("LSTMCell", {"bias": False})]


@pytest.mark.parametrize("name,extra", CELLS, ids=[n + "-" + ",".join(f"{k}={v}" for k, v in e.items()) for n, e in CELLS])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
def test_cell_matches_torch(name, extra, batched, with_hx, device):
    ours, theirs = _pair(name, dict(input_size=3, hidden_size=4, **extra), device)
    rng = np.random.default_rng(4)
    shape = (2,) if batched else ()
    x = rng.standard_normal(shape + (3,))
    tx, ax = torch.tensor(x, requires_grad=True), am.tensor(x, requires_grad=True, device=device)
    n_states = 2 if name == "LSTMCell" else 1
    hs = [rng.standard_normal(shape + (4,)) for _ in range(n_states)]
    th = [torch.tensor(h, requires_grad=True) for h in hs]
    ah = [am.tensor(h, requires_grad=True, device=device) for h in hs]
    targ = (tuple(th) if n_states == 2 else th[0]) if with_hx else None
    aarg = (tuple(ah) if n_states == 2 else ah[0]) if with_hx else None
    tout, aout = theirs(tx, targ), ours(ax, aarg)
    tout = tout if n_states == 2 else (tout,)
    aout = aout if n_states == 2 else (aout,)
    loss_t = sum((o * (i + 1.5)).sum() for i, o in enumerate(tout))
    loss_a = sum((o * (i + 1.5)).sum() for i, o in enumerate(aout))
    for a, t in zip(aout, tout):
        _close(a, t)
    loss_t.backward()
    loss_a.backward()
    _close(ax.grad, tx.grad)
    if with_hx:
        for a, t in zip(ah, th):
            _close(a.grad, t.grad)
    _compare_grads(ours, theirs)


def test_dropout_between_layers_like_torch():
    """dropout=1 zeroes the input of every layer above the first (deterministic: comparable with
    torch); in eval mode dropout is off; dropout is never applied to the last layer's output."""
    ours, theirs = _pair("LSTM", dict(input_size=3, hidden_size=4, num_layers=3, dropout=1.0))
    x = np.random.default_rng(5).standard_normal((5, 2, 3))
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        _close(ours(am.tensor(x))[0], theirs(torch.tensor(x))[0])
    ours.train()
    a = ours(am.tensor(x))[0]
    ours.eval()
    assert not np.allclose(_np(a), _np(ours(am.tensor(x))[0]))
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        am.nn.GRU(2, 3, dropout=0.5)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_gradcheck_tiny(name):
    """Finite differences through a bidirectional layer, first and second order."""
    m = getattr(am.nn, name)(2, 3, bidirectional=True, dtype=am.float64)
    x = am.randn(3, 2, 2, dtype=am.float64, requires_grad=True)

    def f(x):
        out, h = m(x)
        return out.sum() + (h[0] if name == "LSTM" else h).sum()

    assert am.autograd.gradcheck(f, (x,))
    assert am.autograd.gradgradcheck(lambda x: m(x)[0], (x,))


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_fused_gates_gradcheck_and_gradgradcheck(op):
    from avila_ml.ops.recurrent import GRUGates, LSTMGates
    rng = np.random.default_rng(6)
    if op == "lstm":
        ins = (am.tensor(rng.standard_normal((2, 12)), requires_grad=True),
               am.tensor(rng.standard_normal((2, 3)), requires_grad=True))
        f = lambda g, c: LSTMGates.apply(g, c)  # noqa: E731
    else:
        ins = tuple(am.tensor(rng.standard_normal(s), requires_grad=True) for s in ((2, 9), (2, 9), (2, 3)))
        f = lambda a, b, h: GRUGates.apply(a, b, h)  # noqa: E731
    assert am.autograd.gradcheck(f, ins)
    assert am.autograd.gradgradcheck(f, ins)


def test_layer_errors():
    with pytest.raises(ValueError, match="proj_size has to be smaller"):
        am.nn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="only supported for LSTM"):
        am.nn.RNNBase("GRU", 3, 4, proj_size=2)
    with pytest.raises(ValueError, match="dropout should be a number"):
        am.nn.RNN(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="nonlinearity"):
        am.nn.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        am.nn.GRU(3, 0)
    m = am.nn.LSTM(3, 4, num_layers=2)
    with pytest.raises(RuntimeError, match="input_size. Expected 3, got 5"):
        m(am.zeros(2, 2, 5))
    with pytest.raises(ValueError, match="2D or 3D"):
        m(am.zeros(2, 2, 2, 3))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 2, 4\), got \[1, 2, 4\]"):
        m(am.zeros(3, 2, 3), (am.zeros(1, 2, 4), am.zeros(2, 2, 4)))
    with pytest.raises(RuntimeError, match=r"Expected cell size"):
        m(am.zeros(3, 2, 3), (am.zeros(2, 2, 4), am.zeros(2, 2, 5)))
    with pytest.raises(RuntimeError, match="input must have the type"):
        m(am.zeros(3, 2, 3, dtype=am.float64))
    with pytest.raises(RuntimeError, match="inconsistent input_size"):
        am.nn.GRUCell(3, 4)(am.zeros(2, 5))


def test_repr_and_flatten_parameters():
    m = am.nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True, proj_size=2)
    assert repr(m) == repr(torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True, proj_size=2))
    m.flatten_parameters()
    assert repr(am.nn.GRUCell(3, 4, bias=False)) == repr(torch.nn.GRUCell(3, 4, bias=False))


@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_lstm_with_projection_matches_torch(batch_first):
    kw = dict(input_size=3, hidden_size=5, proj_size=2, num_layers=2, bidirectional=True, batch_first=batch_first)
    ours, theirs = _pair("LSTM", kw)
    rng = np.random.default_rng(7)
    lengths = [3, 5, 1, 4]
    x = _packed_case(rng, lengths, batch_first)
    h0, c0 = rng.standard_normal((4, 4, 2)), rng.standard_normal((4, 4, 5))
    tx, th, tc = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    ax, ah, ac = (am.tensor(a, requires_grad=True) for a in (x, h0, c0))
    tout, (thn, tcn) = theirs(trnn.pack_padded_sequence(tx, lengths, batch_first, enforce_sorted=False), (th, tc))
    aout, (ahn, acn) = ours(amrnn.pack_padded_sequence(ax, lengths, batch_first, enforce_sorted=False), (ah, ac))
    tpad = trnn.pad_packed_sequence(tout, batch_first)[0]
    apad = amrnn.pad_packed_sequence(aout, batch_first)[0]
    for a, t in ((apad, tpad), (ahn, thn), (acn, tcn)):
        _close(a, t)
    ((tpad ** 2).sum() + thn.sum() + (tcn * 2).sum()).backward()
    ((apad ** 2).sum() + ahn.sum() + (acn * 2).sum()).backward()
    for a, t in ((ax, tx), (ah, th), (ac, tc)):
        _close(a.grad, t.grad)
    _compare_grads(ours, theirs)
