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
    monkeypatch.setattr(N, "_layer_rows_plan", lambda *a: None)
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


@needs_onednn
def test_layer_norm_rows_path_only_where_onednn_applies(monkeypatch):
    xa, wa, ba, _ = _ln_case((256, 512))
    small = F.layer_norm(am.tensor(xa[:4], requires_grad=True), (512,), am.tensor(wa), am.tensor(ba))
    f64 = F.layer_norm(am.tensor(xa.astype(np.float64), requires_grad=True), (512,))
    assert type(small.grad_fn) is N.Normalize and type(f64.grad_fn) is N.Normalize
    monkeypatch.setattr(mkldnn, "enabled", False)
    off = F.layer_norm(am.tensor(xa, requires_grad=True), (512,))
    assert type(off.grad_fn) is N.Normalize
