"""The CPU attention tiles with the softmax folded into oneDNN matmuls (ops/_attention_fused.py):
values and gradients against PyTorch in float64 from float32 inputs, at tile edges (odd L, L
smaller than a tile, several key blocks, causal with L != S), with batch broadcasting, GQA,
dropout (the same Philox mask as the blocked path), on threads, and the exact fallback when the
estimated row offset is far off; the oneDNN matmul with epilogues against NumPy."""
import math

import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.ops import _attention_fused as fused
from avila_ml.ops import attention as attn_mod

WHOLE_MAX = fused._WHOLE_MAX  # the library's threshold (the fixtures below change it)
pytestmark = pytest.mark.skipif(not am.cpu_accel.is_available(), reason="oneDNN is not installed")
F = am.nn.functional


@pytest.fixture
def calls(monkeypatch):
    """Count the fused matmul calls and the exact-path redos."""
    from avila_ml.cpu_accel import _matmul
    seen = {"matmul": 0, "redo": 0}
    real_mm, real_full, real_units = _matmul.matmul_nt, _matmul.matmul, attn_mod._BlockedAttention._forward_units

    def mm(*a, **kw):
        seen["matmul"] += 1
        return real_mm(*a, **kw)

    def full(*a, **kw):
        seen["matmul"] += 1
        return real_full(*a, **kw)

    def units(self, us, *a, **kw):
        seen["redo"] += len(us)
        return real_units(self, us, *a, **kw)
    monkeypatch.setattr(_matmul, "matmul_nt", mm)
    monkeypatch.setattr(_matmul, "matmul", full)
    monkeypatch.setattr(attn_mod._BlockedAttention, "_forward_units", units)
    return seen


@pytest.fixture(autouse=True)
def any_length(monkeypatch):
    """The fused tiles for every key count (the library keeps short ones on the blocked path),
    and no whole-problem path (short sequences; its own tests below switch it back on)."""
    monkeypatch.setattr(fused, "_MIN_KEYS", 1)
    monkeypatch.setattr(fused, "_WHOLE_MAX", 0)


@pytest.fixture
def whole(monkeypatch):
    """The short-sequence path for every size, one problem per batch chunk, causal query blocks
    down to 2 rows (several chunks and blocks)."""
    monkeypatch.setattr(fused, "_WHOLE_MAX", 1 << 40)
    monkeypatch.setattr(fused, "_WHOLE_TILE", 1)
    monkeypatch.setattr(fused, "_CAUSAL_MIN_ROWS", 2)
    monkeypatch.setattr(fused, "_SHORT_CAUSAL_ROWS", 2)
    monkeypatch.setattr(fused, "_MIN_KEYS", 1 << 40)  # never the tiles


@pytest.fixture
def small_tiles(monkeypatch):
    """Ragged tiles: 3 batch entries x 5 rows x 7 keys (two or more key blocks per row); causal
    query blocks down to 2 rows."""
    monkeypatch.setattr(fused, "_TILE", 7 * 5 * 3)
    monkeypatch.setattr(fused, "_DROPOUT_TILE", 7 * 5 * 3)
    monkeypatch.setattr(fused, "_KEY_BLOCK", 7)
    monkeypatch.setattr(fused, "_CAUSAL_MIN_ROWS", 2)


def _run(qa, ka, va, causal=False, scale=None, gqa=False, go=None, dtype=np.float32, **kw):
    q, k, v = (am.tensor(a.astype(dtype), requires_grad=True) for a in (qa, ka, va))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa, **kw)
    out.backward(am.tensor(go.astype(dtype)))
    return [t.detach().numpy().astype(np.float64) for t in (out, q.grad, k.grad, v.grad)]


def _torch(qa, ka, va, causal=False, scale=None, gqa=False, go=None):
    """Float64 reference of the float32-rounded inputs."""
    q, k, v = (torch.tensor(a.astype(np.float32).astype(np.float64), requires_grad=True) for a in (qa, ka, va))
    if not gqa:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        qe, ke, ve = (t.expand(*batch, *t.shape[-2:]) for t in (q, k, v))
    else:
        qe, ke, ve = q, k, v
    if causal and q.shape[-2] != k.shape[-2]:  # top-left aligned, as ours (PyTorch's is_causal is too)
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        out = torch.nn.functional.scaled_dot_product_attention(qe, ke, ve, attn_mask=mask, scale=scale,
                                                               enable_gqa=gqa)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(qe, ke, ve, is_causal=causal, scale=scale,
                                                               enable_gqa=gqa)
    out.backward(torch.tensor(go.astype(np.float32).astype(np.float64)))
    return [t.detach().numpy() for t in (out, q.grad, k.grad, v.grad)]


def _dropout_matches_blocked(rng):
    """Same seed -> the same Philox keep mask with oneDNN on (fused) and off (the blocked path,
    the reference): values and gradients agree, and dropout did act."""
    qa, ka, va, go = (rng.standard_normal((2, 3, 11, 4)) for _ in range(4))
    results = []
    for enabled in (True, False):
        am.backends.mkldnn.enabled = enabled
        try:
            am.manual_seed(7)
            results.append(_run(qa, ka, va, True, go=go, dropout_p=0.3))
        finally:
            am.backends.mkldnn.enabled = True
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(results[0][0], _run(qa, ka, va, True, go=go)[0])  # dropout did act


def _close(ours, ref, tol=3e-5):
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert a.shape == b.shape, name
        bound = tol * max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=0, atol=bound, err_msg=name)


# (name, q shape, k shape, v shape, is_causal, scale)
SHAPES = [
    ("odd L, several key blocks", (2, 3, 11, 8), (2, 3, 11, 8), (2, 3, 11, 8), False, None),
    ("L smaller than a tile", (1, 2, 3, 4), (1, 2, 4, 4), (1, 2, 4, 5), False, None),
    ("causal L=S", (2, 2, 13, 8), (2, 2, 13, 8), (2, 2, 13, 8), True, None),
    ("causal L<S", (2, 9, 4), (2, 15, 4), (2, 15, 3), True, 0.3),
    ("causal L>S", (3, 15, 4), (3, 9, 4), (3, 9, 6), True, None),
    ("batch broadcast", (2, 3, 10, 4), (1, 3, 9, 4), (3, 9, 2), False, None),
    ("2-d inputs", (12, 6), (17, 6), (17, 5), False, 1.3),
]


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_fused_tiles_match_torch(small_tiles, calls, case):
    _, qs, ks, vs, causal, scale = case
    rng = np.random.default_rng(len(case[0]))
    qa, ka, va = (rng.standard_normal(s) for s in (qs, ks, vs))
    go = rng.standard_normal(np.broadcast_shapes(qs[:-2], ks[:-2], vs[:-2]) + (qs[-2], vs[-1]))
    ours = _run(qa, ka, va, causal, scale, go=go)
    assert calls["matmul"] > 0 and calls["redo"] == 0
    _close(ours, _torch(qa, ka, va, causal, scale, go=go))


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_whole_problems_match_torch(whole, calls, case, monkeypatch):
    """Short sequences, whole problems per oneDNN call: one problem per chunk, and all at once."""
    _, qs, ks, vs, causal, scale = case
    rng = np.random.default_rng(len(case[0]) + 100)
    qa, ka, va = (rng.standard_normal(s) for s in (qs, ks, vs))
    go = rng.standard_normal(np.broadcast_shapes(qs[:-2], ks[:-2], vs[:-2]) + (qs[-2], vs[-1]))
    ref = _torch(qa, ka, va, causal, scale, go=go)
    _close(_run(qa, ka, va, causal, scale, go=go), ref)
    monkeypatch.setattr(fused, "_WHOLE_TILE", 1 << 30)
    _close(_run(qa, ka, va, causal, scale, go=go), ref)
    assert calls["matmul"] > 0 and calls["redo"] == 0


@pytest.mark.parametrize("kernel", [True, False], ids=["probability kernel", "exp post-op"])
@pytest.mark.parametrize("keep", [True, False], ids=["probabilities kept", "recomputed"])
@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_whole_problems_backward_with_kept_or_recomputed_probabilities(whole, case, keep, kernel, monkeypatch):
    """The short path's forward with the compiled probability kernel (P normalised in place) or
    oneDNN's exp post-op (P~ = P l); its backward from the kept probability blocks (P~: dO and D
    scaled by 1 / l; no exp product) and, above the memory bound, from P recomputed: each against
    PyTorch, and the backward's products are the expected kind."""
    monkeypatch.setattr(fused, "_KEEP_PROBS_BYTES", 1 << 40 if keep else 0)
    if not kernel:
        real_kernel = fused._native.kernel_for
        monkeypatch.setattr(fused._native, "kernel_for",
                            lambda name, *a: None if name == "attn_probs" else real_kernel(name, *a))
    elif fused._native.kernel_for("attn_probs", np.ones((1, 1, 1), np.float32), np.ones((1, 1), np.float32)) is None:
        pytest.skip("no compiled kernels")
    from avila_ml.cpu_accel import _matmul
    real, exps = _matmul.matmul, []
    monkeypatch.setattr(_matmul, "matmul", lambda *a, **kw: exps.append(bool(kw.get("exp"))) or real(*a, **kw))
    _, qs, ks, vs, causal, scale = case
    rng = np.random.default_rng(len(case[0]) + 400)
    qa, ka, va = (rng.standard_normal(s) for s in (qs, ks, vs))
    go = rng.standard_normal(np.broadcast_shapes(qs[:-2], ks[:-2], vs[:-2]) + (qs[-2], vs[-1]))
    q, k, v = (am.tensor(a.astype(np.float32), requires_grad=True) for a in (qa, ka, va))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    kept = list(out.grad_fn._whole_operands.values())
    assert kept and all((part[3] is not None) == keep for part in kept)
    assert all((part[4] is None) == (kernel or not keep) for part in kept)  # 1 / l only with P~
    assert any(exps) != kernel  # the forward's score products: exp post-ops only without the kernel
    n_forward = len(exps)
    out.backward(am.tensor(go.astype(np.float32)))
    backward_exps = exps[n_forward:]
    assert backward_exps and any(backward_exps) != keep  # an exp product per block only when recomputing
    ours = [t.detach().numpy().astype(np.float64) for t in (out, q.grad, k.grad, v.grad)]
    _close(ours, _torch(qa, ka, va, causal, scale, go=go))


def test_kept_probabilities_bound():
    """Whether a call keeps its probability blocks: all B problems' query blocks (causal ones
    end at their last row) against _KEEP_PROBS_BYTES."""
    assert fused._KEEP_PROBS_BYTES == 32 << 20
    assert fused._keep_probs(64, 128, 128, True)  # the GPT program's attention: 3 MiB
    assert fused._keep_probs(32, 512, 512, False)  # exactly 32 MiB
    assert not fused._keep_probs(33, 512, 512, False)
    # causal L = 128 in two query blocks of 64 rows: 64 x 64 + 64 x 128 = 12288 scores per
    # problem (3/4 of 128 x 128), so 682 problems fit in 32 MiB and 683 do not
    assert fused._short_blocks(64, 128, 128, True)[1] == 64
    assert fused._keep_probs(682, 128, 128, True) and not fused._keep_probs(683, 128, 128, True)


@pytest.fixture
def split(monkeypatch):
    """The short path's batch split among Python threads for any size, three parts where the
    batch's first dim allows (uneven ones); records the parts of each call."""
    monkeypatch.setattr(fused, "_WHOLE_PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fused._cpu_threads, "blas_threads", lambda: 3)
    seen = []
    real = fused._whole_parts
    monkeypatch.setattr(fused, "_whole_parts", lambda *a: seen.append(real(*a)) or seen[-1])
    return seen


def _split_matches_torch(case, seed, split, calls):
    """One SHAPES case against PyTorch with the batch split among threads (the ``split``
    fixture): every call made min(3, batch's first dim) parts. Returns how many calls split."""
    _, qs, ks, vs, causal, scale = case
    rng = np.random.default_rng(len(case[0]) + seed)
    qa, ka, va = (rng.standard_normal(s) for s in (qs, ks, vs))
    batch = np.broadcast_shapes(qs[:-2], ks[:-2], vs[:-2])
    go = rng.standard_normal(batch + (qs[-2], vs[-1]))
    _close(_run(qa, ka, va, causal, scale, go=go), _torch(qa, ka, va, causal, scale, go=go))
    assert split and all(len(parts) == min(3, (batch or (1,))[0]) for parts in split)
    assert calls["matmul"] > 0 and calls["redo"] == 0
    return len(split)


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_whole_problems_split_among_threads(whole, calls, split, case):
    """Each thread computes whole problems of its share of the batch's first dim (its own
    copies, offsets and products), forward and backward."""
    _split_matches_torch(case, 200, split, calls)


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_fused_tiles_operands_made_by_threads(small_tiles, calls, split, case):
    """Long sequences: the operand copies and row offsets of each share of the batch's first
    dim are made by its own thread before the tiles run (forward prep and backward operands)."""
    assert _split_matches_torch(case, 300, split, calls) == 2


def test_whole_problems_split_strided_inputs_and_dropout(whole, calls, split):
    """q, k, v as the GPT program makes them (heads permuted out of one projection: strided
    views), split among threads; dropout's Philox mask follows each thread's batch offset."""
    rng = np.random.default_rng(16)
    B, T, H, D = 5, 12, 2, 4
    xa, go = rng.standard_normal((B, T, 3, H, D)), rng.standard_normal((B, H, T, D))
    x = am.tensor(xa.astype(np.float32), requires_grad=True)
    q, k, v = x.permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(am.tensor(go.astype(np.float32)))
    xt = torch.tensor(xa.astype(np.float32).astype(np.float64), requires_grad=True)
    qt, kt, vt = xt.permute(2, 0, 3, 1, 4)
    ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    ref.backward(torch.tensor(go.astype(np.float32).astype(np.float64)))
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=0, atol=3e-5)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=0, atol=3e-5 * float(xt.grad.abs().max()))
    assert split and len(split[0]) == 3
    _dropout_matches_blocked(rng)  # batch (2, 3): two parts


@pytest.mark.parametrize("layout", ["contiguous", "strided", "broadcast"])
def test_fused_tiles_products_on_plain_operands(small_tiles, calls, layout, monkeypatch):
    """The query tiles run P V on V itself where it is C-contiguous (no copy), else on a copy,
    and the backward's dQ and dK products on plain copies of Q scale and K; every product is
    oneDNN's (no NumPy matmul in the tiles), the results match PyTorch's in float64."""
    rng = np.random.default_rng(23)
    B, H, T, D = 2, 3, 11, 4
    xa, go = rng.standard_normal((B, T, 3, H, D)), rng.standard_normal((B, H, T, D))
    x = am.tensor(xa.astype(np.float32), requires_grad=True)
    if layout == "contiguous":
        q, k, v = (x[:, :, i].permute(0, 2, 1, 3).contiguous() for i in range(3))
    elif layout == "strided":  # heads permuted out of one projection (the GPT programs)
        q, k, v = x.permute(2, 0, 3, 1, 4)
    else:  # one key/value batch entry shared by both queries' entries
        q = x[:, :, 0].permute(0, 2, 1, 3)
        k, v = (x[:1, :, i].permute(0, 2, 1, 3) for i in (1, 2))
    from avila_ml.cpu_accel import _matmul
    seen = []
    counted = _matmul.matmul  # (the calls fixture's counting wrapper)

    def matmul(a, b, out, **kw):
        done = counted(a, b, out, **kw)
        seen.append((kw.get("trans_a", False), kw.get("accumulate", False), done, b.flags.c_contiguous))
        return done
    monkeypatch.setattr(_matmul, "matmul", matmul)
    out = F.scaled_dot_product_attention(q, k, v)
    out.backward(am.tensor(go.astype(np.float32)))
    assert calls["matmul"] > 0 and calls["redo"] == 0
    # P V (accumulating over the key blocks), dV and dK (transposed P, dS), dQ: all taken by
    # oneDNN (none fell back to NumPy), every right-hand operand C-contiguous
    assert seen and all(done and plain for _, _, done, plain in seen)
    assert {(ta, acc) for ta, acc, _, _ in seen} == {(False, False), (False, True), (True, True)}
    xt = torch.tensor(xa.astype(np.float32).astype(np.float64), requires_grad=True)
    if layout == "broadcast":
        qt = xt[:, :, 0].permute(0, 2, 1, 3)
        kt, vt = (xt[:1, :, i].permute(0, 2, 1, 3).expand(B, H, T, D) for i in (1, 2))
    else:
        qt, kt, vt = (xt[:, :, i].permute(0, 2, 1, 3) for i in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
    ref.backward(torch.tensor(go.astype(np.float32).astype(np.float64)))
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=0, atol=3e-5)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=0, atol=3e-5 * float(xt.grad.abs().max()))


def test_whole_problems_keep_forward_operands(whole, calls, split):
    """The backward reads the operand copies the forward kept (not the inputs again): a second
    backward (retain_graph) gives the same gradients, in-place writes to the inputs after the
    forward are refused as for any saved tensor, and the copies go with the graph."""
    rng = np.random.default_rng(17)
    qa, ka, va, go = (rng.standard_normal((3, 2, 9, 4)) for _ in range(4))
    q, k, v = (am.tensor(a.astype(np.float32), requires_grad=True) for a in (qa, ka, va))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    node = out.grad_fn
    assert node._whole_operands and len(node._whole_operands) == 3
    out.backward(am.tensor(go.astype(np.float32)), retain_graph=True)
    first = [t.grad.numpy().copy() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    out.backward(am.tensor(go.astype(np.float32)))
    for a, t in zip(first, (q, k, v)):
        np.testing.assert_array_equal(a, t.grad.numpy())
    _close([out.detach().numpy()] + first, _torch(qa, ka, va, True, go=go))
    assert node._whole_operands is None  # released with the graph
    q2 = q.detach().clone().requires_grad_()
    out = F.scaled_dot_product_attention(q2 * 1.0, k, v)
    with am.no_grad():
        k.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_whole_problems_default_sizes(calls):
    """The GPT programs' shape class at the library's own thresholds: whole problems, both the
    causal and the full softmax, GQA and float16 inputs."""
    rng = np.random.default_rng(14)
    qa, ka, va, go = (rng.standard_normal((3, 4, 40, 16)) for _ in range(4))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "_WHOLE_MAX", WHOLE_MAX)
        assert fused._whole(128, 128) and fused._whole(96, 96) and not fused._whole(2048, 2048)
        for causal in (False, True):
            _close(_run(qa, ka, va, causal, go=go), _torch(qa, ka, va, causal, go=go))
        kv = (rng.standard_normal((3, 2, 40, 16)) for _ in range(2))
        ka2, va2 = kv
        _close(_run(qa, ka2, va2, True, gqa=True, go=go), _torch(qa, ka2, va2, True, gqa=True, go=go))
        ours = _run(qa, ka, va, True, go=go, dtype=np.float16)
        _close(ours, _torch(qa.astype(np.float16), ka.astype(np.float16), va.astype(np.float16), True,
                            go=go.astype(np.float16)), tol=2.0 ** -9)
    assert calls["matmul"] > 0 and calls["redo"] == 0


def test_whole_problems_dropout_and_offsets(whole, calls, monkeypatch):
    """Dropout draws the blocked path's Philox mask; the row offsets: the Cauchy-Schwarz bound,
    the sampled offsets where the bound is too loose, the exact path where both fail."""
    rng = np.random.default_rng(15)
    _dropout_matches_blocked(rng)
    calls["redo"] = 0  # (the blocked path above counted its own units)
    sampled = []
    real = fused._sampled_offsets
    monkeypatch.setattr(fused, "_sampled_offsets", lambda *a: sampled.append(1) or real(*a))
    E, n = 8, 40
    u0, u1 = np.eye(E)[0], np.eye(E)[1]
    # a score far above the others: the Cauchy-Schwarz offset bounds it, nothing is redone
    qa, ka, va, go = (rng.standard_normal((1, 1, n, E)) for _ in range(4))
    qa[0, 0, 0] = 10.0 * u0 + 0.1 * qa[0, 0, 0]
    ka[0, 0, 30] = 40.0 * u0
    _close(_run(qa, ka, va, go=go), _torch(qa, ka, va, go=go), tol=1e-4)
    assert calls["redo"] == 0 and not sampled
    # a long key orthogonal to every query: the bound is ~10^4 above the scores (every sum
    # underflows), the sampled offsets take over
    qa, ka, va, go = (rng.standard_normal((1, 1, n, E)) for _ in range(4))
    ka[0, 0, 25] = 300.0 * u1
    qa[0, 0, :, 1] = 0.0
    for causal in (False, True):
        _close(_run(qa, ka, va, causal, go=go), _torch(qa, ka, va, causal, go=go), tol=1e-4)
    assert calls["redo"] == 0 and sampled
    # both: the sampled keys score ~10, key 30 ~150 (exp overflows), the bound is loose by ~10^3
    ka[0, 0, 30] = 15.0 * u0
    qa[0, 0, 0] = 10.0 * u0
    _close(_run(qa, ka, va, scale=1.0, go=go), _torch(qa, ka, va, scale=1.0, go=go), tol=1e-4)
    assert calls["redo"] > 0


def test_whole_problems_redo_in_one_chunk_of_several(whole, calls):
    """A chunk in the middle of the batch redone exactly (its sampled offsets fail too) while
    the forward keeps probability blocks: the later chunks still run, the backward recomputes P
    for the call, and values and gradients match PyTorch."""
    rng = np.random.default_rng(18)
    E, n = 8, 40
    u0, u1 = np.eye(E)[0], np.eye(E)[1]
    qa, ka, va, go = (rng.standard_normal((3, 1, n, E)) for _ in range(4))
    # problem 1 as in test_whole_problems_dropout_and_offsets' last case: a loose bound, and a
    # key far above the sampled ones
    ka[1, 0, 25] = 300.0 * u1
    qa[1, 0, :, 1] = 0.0
    ka[1, 0, 30] = 15.0 * u0
    qa[1, 0, 0] = 10.0 * u0
    q, k, v = (am.tensor(a.astype(np.float32), requires_grad=True) for a in (qa, ka, va))
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    assert calls["redo"] > 0
    assert all(part[3] is None for part in out.grad_fn._whole_operands.values())
    out.backward(am.tensor(go.astype(np.float32)))
    ours = [t.detach().numpy().astype(np.float64) for t in (out, q.grad, k.grad, v.grad)]
    _close(ours, _torch(qa, ka, va, scale=1.0, go=go), tol=1e-4)


def test_fused_default_tiles_match_torch(calls):
    """The benchmark's tiling (one key block of 2048, long rows): B=2, H=2, L=S=700, E=64."""
    rng = np.random.default_rng(3)
    qa, ka, va, go = (rng.standard_normal((2, 2, 700, 64)) for _ in range(4))
    for causal in (False, True):
        _close(_run(qa, ka, va, causal, go=go), _torch(qa, ka, va, causal, go=go))
    assert calls["matmul"] > 0 and calls["redo"] == 0


def test_float16_inputs_computed_in_float32(small_tiles, calls):
    """float16 q, k, v take the fused tiles in float32; results are rounded to float16 once."""
    rng = np.random.default_rng(13)
    qa, ka, va, go = (rng.standard_normal((2, 2, 9, 8)).astype(np.float16) for _ in range(4))
    ours = _run(qa, ka, va, True, go=go, dtype=np.float16)
    assert calls["matmul"] > 0
    _close(ours, _torch(qa, ka, va, True, go=go), tol=2.0 ** -9)


def test_gqa_through_fused_tiles(small_tiles, calls):
    rng = np.random.default_rng(4)
    qa, go = rng.standard_normal((2, 6, 9, 4)), rng.standard_normal((2, 6, 9, 4))
    ka, va = rng.standard_normal((2, 2, 12, 4)), rng.standard_normal((2, 2, 12, 4))
    for causal in (False, True):
        _close(_run(qa, ka, va, causal, gqa=True, go=go), _torch(qa, ka, va, causal, gqa=True, go=go))
    assert calls["matmul"] > 0


def test_fused_tiles_on_threads(small_tiles, calls, monkeypatch):
    """Tiles shared among threads: disjoint dK/dV per batch chunk, or one private sum per thread."""
    if attn_mod._cpu_threads.controller() is None:
        pytest.skip("threadpoolctl is not installed: one thread")
    monkeypatch.setattr(fused, "_PARALLEL_MIN_WORK", 0)
    rng = np.random.default_rng(5)
    for shape in ((4, 2, 11, 4), (1, 1, 23, 4)):  # many batch chunks / one chunk, many query blocks
        qa, ka, va, go = (rng.standard_normal(shape) for _ in range(4))
        for causal in (False, True):
            _close(_run(qa, ka, va, causal, go=go), _torch(qa, ka, va, causal, go=go))
    assert calls["matmul"] > 0


def test_dropout_uses_the_blocked_paths_mask(small_tiles, calls):
    """Same seed -> the same Philox keep mask in the fused and the blocked path (values and grads)."""
    _dropout_matches_blocked(np.random.default_rng(6))
    assert calls["matmul"] > 0


def test_offsets_far_off_fall_back_to_the_exact_path(calls):
    """Scores far above the sampled estimate (overflow) and a causal first row whose sample saw
    only later, much larger scores (underflow): those tiles are redone exactly, values stay right."""
    rng = np.random.default_rng(8)
    E, n = 8, 40
    qa, ka, va, go = (rng.standard_normal((1, 1, n, E)) for _ in range(4))
    u = np.eye(E)[0]
    qa[0, 0] = 10.0 * u + 0.1 * qa[0, 0]
    ka[0, 0, 30] = 40.0 * u  # score ~141, the sampled keys 0-15 score ~10: exp(141 - 26) overflows
    _close(_run(qa, ka, va, go=go), _torch(qa, ka, va, go=go), tol=1e-4)
    assert calls["redo"] > 0
    calls["redo"] = 0
    qa, ka, va, go = (rng.standard_normal((1, 1, n, E)) for _ in range(4))
    ka[0, 0, 1:6] = 20.0 * qa[0, 0, 0]  # row 0 may only see key 0; the sample (keys 0-15) scores ~hundreds
    _close(_run(qa, ka, va, True, go=go), _torch(qa, ka, va, True, go=go), tol=1e-4)
    assert calls["redo"] > 0


def test_float64_masks_flag_and_short_keys_keep_the_blocked_path(calls, monkeypatch):
    rng = np.random.default_rng(9)
    qa, ka, va, go = (rng.standard_normal((1, 2, 5, 4)) for _ in range(4))
    _run(qa, ka, va, go=go, dtype=np.float64)
    mask = am.tensor(rng.random((5, 5)) > 0.3)
    _run(qa, ka, va, go=go, attn_mask=mask)
    am.backends.mkldnn.enabled = False
    try:
        _run(qa, ka, va, go=go)
    finally:
        am.backends.mkldnn.enabled = True
    monkeypatch.setattr(fused, "_MIN_KEYS", 6)  # 5 keys: too few
    _run(qa, ka, va, go=go)
    assert calls["matmul"] == 0
    monkeypatch.setattr(fused, "_MIN_KEYS", 5)
    _run(qa, ka, va, go=go)
    assert calls["matmul"] > 0


def test_double_backward_after_fused_forward():
    """create_graph=True goes through the composite formula; the first derivative (dQ) and the
    second (d/dK of |dQ|^2) equal PyTorch's composite softmax attention in float64."""
    rng = np.random.default_rng(10)
    qa, ka, va = (rng.standard_normal((1, 2, 6, 4)) for _ in range(3))
    q, k, v = (am.tensor(a.astype(np.float32), requires_grad=True) for a in (qa, ka, va))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    (gq,) = am.autograd.grad(out.sum(), q, create_graph=True)
    (gq.square().sum()).backward()
    tq, tk, tv = (torch.tensor(a.astype(np.float32).astype(np.float64), requires_grad=True) for a in (qa, ka, va))
    s = tq @ tk.mT / 2.0 + torch.full((6, 6), -math.inf, dtype=torch.float64).triu(1)
    tout = torch.softmax(s, -1) @ tv
    (tgq,) = torch.autograd.grad(tout.sum(), tq, create_graph=True)
    (tgq.square().sum()).backward()
    np.testing.assert_allclose(gq.detach().numpy(), tgq.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(k.grad.numpy(), tk.grad.numpy(), atol=1e-4)


def test_zero_above_diagonal_clears_exactly_the_later_keys():
    rng = np.random.default_rng(12)
    for i0, j0, n, m in ((0, 0, 37, 37), (5, 0, 7, 20), (40, 32, 33, 17), (64, 0, 32, 96), (3, 10, 5, 4),
                         (0, 0, 1, 1), (7, 0, 4, 9), (20, 0, 8, 9), (0, 5, 6, 3), (128, 0, 128, 256)):
        p = rng.random((2, n, m)) + 1.0
        p[:, :, -1] = np.inf  # an overflowed masked entry must become 0, not NaN
        ref = p.copy()
        ref[:, np.arange(j0, j0 + m)[None, :] > np.arange(i0, i0 + n)[:, None]] = 0
        fused._zero_above_diagonal(p, i0, j0)
        np.testing.assert_array_equal(p, ref)


def test_short_path_causal_query_blocks():
    """Whole problems: up to 4 causal query blocks of at least 48 rows (the measured rule),
    a batch chunk filling the tile; no blocks without causality."""
    assert fused._short_blocks(64, 128, 128, True)[1] == 64
    assert fused._short_blocks(128, 96, 96, True)[1] == 48
    assert fused._short_blocks(64, 256, 256, True)[1] == 64
    assert fused._short_blocks(32, 512, 512, True)[1] == 128
    assert fused._short_blocks(8, 40, 40, True)[1] == 40
    assert fused._short_blocks(32, 512, 512, False) == (2, 512)


def test_causal_tiles_shorten_the_query_block():
    """L = 128 causal: query blocks of 32 rows, the whole batch in a tile; L = 2048 causal:
    blocks of 256 rows (a tile of 2^19 scores), one batch entry."""
    assert fused._TILE == 1 << 19
    assert fused._block_sizes(64, 128, 128, causal=True) == (64, 32, 128)
    assert fused._block_sizes(64, 128, 128) == (32, 128, 128)
    assert fused._block_sizes(4, 2048, 2048, causal=True) == (1, 256, 2048)


def test_matmul_nt_epilogues_match_numpy():
    from avila_ml.cpu_accel import _matmul
    rng = np.random.default_rng(11)
    a = rng.standard_normal((3, 7, 5)).astype(np.float32) / 2
    b = rng.standard_normal((3, 9, 5)).astype(np.float32) / 2
    mul = rng.standard_normal((3, 7, 9)).astype(np.float32)
    ref = np.einsum("nmk,nck->nmc", a.astype(np.float64), b.astype(np.float64))
    out = np.empty((3, 7, 9), np.float32)
    for exp, m, want in ((False, None, ref), (True, None, np.exp(ref)), (False, mul, ref * mul),
                         (True, mul, np.exp(ref) * mul)):
        assert _matmul.matmul_nt(a, b, out, exp=exp, mul=m)
        np.testing.assert_allclose(out, want, rtol=2e-6, atol=2e-6)
    bt = np.ascontiguousarray(b.swapaxes(1, 2))  # (n, K, N): a @ bt without the transpose
    assert _matmul.matmul_nt(a, bt, out, exp=True, transpose_b=False)
    np.testing.assert_allclose(out, np.exp(ref), rtol=2e-6, atol=2e-6)
    with pytest.raises(ValueError, match="matmul_nt"):
        _matmul.matmul_nt(a, b[:, :, :4].copy(), out)
    with pytest.raises(ValueError, match="C-contiguous"):
        _matmul.matmul_nt(a, b, np.empty((3, 9, 7), np.float32).swapaxes(1, 2))
    assert _matmul.cache_info()["size"] <= _matmul.CACHE_SIZE


def test_plan_cache_is_bounded(monkeypatch):
    from avila_ml.cpu_accel import _matmul
    monkeypatch.setattr(_matmul, "CACHE_SIZE", 2)
    _matmul.clear_cache()
    for n in (2, 3, 4):
        a = np.ones((1, n, 3), np.float32)
        out = np.empty((1, n, n), np.float32)
        _matmul.matmul_nt(a, a, out, exp=True)
        np.testing.assert_allclose(out, math.exp(3.0), rtol=1e-6)
    assert _matmul.cache_info() == {"size": 2, "capacity": 2}
    _matmul.clear_cache()


def test_plans_are_kept_per_openmp_team_size():
    """A plan made where oneDNN starts a full OpenMP team is not reused by a thread on one
    OpenMP thread (a JIT primitive fixes its team when created: reused there it started a
    nested team per call), and the reverse; both plans give the same values."""
    import threading

    from avila_ml.cpu_accel import _matmul, _prim
    if _prim.team_size() < 2:
        pytest.skip("oneDNN starts one-thread teams here (one core or OMP_NUM_THREADS=1)")
    _matmul.clear_cache()
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 64, 32)).astype(np.float32)
    full, one = np.empty((4, 64, 64), np.float32), np.empty((4, 64, 64), np.float32)
    _matmul.matmul_nt(a, a, full)

    def part():
        with _matmul.one_omp_thread():
            assert _prim.team_size() == 1
            _matmul.matmul_nt(a, a, one)
    t = threading.Thread(target=part)
    t.start()
    t.join()
    keys = list(_matmul._cache)
    assert len(keys) == 2 and keys[0] == keys[1]  # one caller key, two team sizes
    np.testing.assert_allclose(one, full, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(full, np.einsum("bik,bjk->bij", a.astype(np.float64), a), rtol=1e-5, atol=1e-4)
    _matmul.clear_cache()


def test_matmul_repeated_layout_still_checks_dtype_writability_and_bias():
    """A layout seen before skips the stride checks (``_matmul._validated``) but not the checks
    that differ between arrays of one layout: a float64 operand, a read-only output, a bias of
    the wrong length are refused by name on the second call too; the bias lands in every row."""
    from avila_ml.cpu_accel import _dnnl, _matmul
    if _dnnl.load() is None:
        pytest.skip("oneDNN is not installed")
    rng = np.random.default_rng(21)
    a = rng.standard_normal((2, 5, 3)).astype(np.float32)
    b = rng.standard_normal((2, 3, 4)).astype(np.float32)
    out = np.empty((2, 5, 4), np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    for _ in range(2):
        assert _matmul.matmul(a, b, out, bias=bias)
        np.testing.assert_allclose(out, a.astype(np.float64) @ b + bias, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="float32"):
        _matmul.matmul(a.astype(np.float64), b, out, bias=bias)
    ro = np.empty((2, 5, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _matmul.matmul(a, b, ro, bias=bias)
    with pytest.raises(ValueError, match="bias"):
        _matmul.matmul(a, b, out, bias=bias[:3])
    with pytest.raises(TypeError, match="float32"):
        _matmul.matmul(a, b, out, bias=bias.astype(np.float64))


def test_matmul_strided_views_transposes_and_epilogues_match_numpy():
    """cpu_accel._matmul.matmul on views: blocks of rows of larger arrays, transposed reads,
    exp, mul and accumulate, against float64 NumPy; oneDNN's JIT GEMM runs every call it
    accepts, and it declines (False) the layouts it has only reference loops for; bad views are
    refused by name."""
    from avila_ml.cpu_accel import _dnnl, _matmul
    from avila_ml.cpu_accel._prim import impl_name
    rng = np.random.default_rng(16)
    A = rng.standard_normal((4, 20, 9)).astype(np.float32) / 2   # a = A[:, 3:10, :6] is (4, 7, 6)
    Bm = rng.standard_normal((4, 6, 30)).astype(np.float32) / 2  # b = Bm[:, :, 5:16] is (4, 6, 11)
    a, b = A[:, 3:10, :6], Bm[:, :, 5:16]
    ref = np.einsum("nmk,nkc->nmc", a.astype(np.float64), b.astype(np.float64))
    mul = rng.standard_normal((4, 7, 11)).astype(np.float32)
    out = np.empty((4, 7, 11), np.float32)
    for kw, want in (({}, ref), ({"exp": True}, np.exp(ref)), ({"exp": True, "mul": mul}, np.exp(ref) * mul),
                     ({"mul": mul}, ref * mul)):
        assert _matmul.matmul(a, b, out, **kw)
        np.testing.assert_allclose(out, want, rtol=3e-6, atol=3e-6)
    big = np.zeros((4, 9, 14), np.float32)
    view = big[:, 1:8, 2:13]  # a strided destination
    assert _matmul.matmul(a, b, view)
    np.testing.assert_allclose(view, ref, rtol=3e-6, atol=3e-6)
    assert np.all(big[:, 0] == 0) and np.all(big[:, :, :2] == 0) and np.all(big[:, :, 13:] == 0)
    assert _matmul.matmul(a, b, view, accumulate=True)
    np.testing.assert_allclose(view, 2 * ref, rtol=3e-6, atol=3e-6)
    at = np.ascontiguousarray(a.swapaxes(1, 2))  # (4, 6, 7) read as its transpose
    bt = Bm.swapaxes(1, 2)[:, 5:16]              # (4, 11, 6) view, columns contiguous
    for ta, tb in ((True, False), (False, True), (True, True)):
        view[...] = 0
        assert _matmul.matmul(at if ta else a, bt if tb else b, view, trans_a=ta, trans_b=tb)
        np.testing.assert_allclose(view, ref, rtol=3e-6, atol=3e-6)
    lib = _dnnl.load()
    assert all(not impl_name(lib, plan.prim.pd).startswith("ref") for _, plan in _matmul._cache.items()
               if plan.fast)
    assert not _matmul.matmul(a, b, view, mul=mul)  # a binary post-op into a strided destination: declined
    with pytest.raises(TypeError, match="float32"):
        _matmul.matmul(a.astype(np.float64), b, out)
    with pytest.raises(ValueError, match="strides"):
        _matmul.matmul(A[:, 3:10, :6:2][:, :, :3], b[:, :3], out[:, :, :])  # no matrix dim contiguous
    with pytest.raises(ValueError, match="read-only"):
        ro = np.empty((4, 7, 11), np.float32)
        ro.flags.writeable = False
        _matmul.matmul(a, b, ro)
    with pytest.raises(ValueError, match="do not fit"):
        _matmul.matmul(a, b[:, :5], out)


@pytest.mark.parametrize("path", ["whole", "tiles"])
def test_fused_gradients_reach_the_leaves_without_a_copy(small_tiles, calls, monkeypatch, path):
    """Both fused backwards make dQ, dK, dV in the inputs' own (batch, n, d) shape, so each leaf
    takes its array as .grad (the engine copies a view of another shape), with PyTorch's
    values; a second backward accumulates into them."""
    if path == "whole":
        monkeypatch.setattr(fused, "_WHOLE_MAX", 1 << 40)
        monkeypatch.setattr(fused, "_MIN_KEYS", 1 << 40)
    made = []
    real = fused._gradients
    monkeypatch.setattr(fused, "_gradients", lambda *a, **kw: made.extend(real(*a, **kw)) or made[-3:])
    rng = np.random.default_rng(23)
    qa, ka, va, go = (rng.standard_normal((2, 3, 9, 4)) for _ in range(4))
    q, k, v = (am.tensor(a.astype(np.float32), requires_grad=True) for a in (qa, ka, va))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(am.tensor(go.astype(np.float32)), retain_graph=True)
    assert calls["matmul"] > 0 and len(made) == 3
    for t, a in zip((q, k, v), made):
        assert np.shares_memory(t.grad.numpy(), a) and t.grad.numpy().flags.owndata
    _close([out.detach().numpy()] + [t.grad.numpy() for t in (q, k, v)], _torch(qa, ka, va, True, go=go))
    first = [t.grad.numpy().copy() for t in (q, k, v)]
    out.backward(am.tensor(go.astype(np.float32)))
    for a, t in zip(first, (q, k, v)):
        np.testing.assert_allclose(t.grad.numpy(), 2 * a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", [True, False], ids=["augment_kernel", "numpy_augment"])
def test_short_path_augmented_operands_kernel_and_numpy_match_torch(kernel, monkeypatch):
    """The short path's augmented operands [Q scale, -m], [K, 1] and their row norms (the
    offsets' bound) come from the compiled ``augment_rows`` or, where it does not apply, NumPy's
    copy and einsum: both give PyTorch's outputs and gradients (float64 reference) for the GPT
    programs' strided q, k, v views of one qkv product, causal."""
    from avila_ml.cpu_accel import _native
    real = _native.augment_rows
    used = []
    monkeypatch.setattr(_native, "augment_rows",
                        (lambda *a, **k: used.append(r := real(*a, **k)) or r) if kernel else (lambda *a, **k: False))
    rng = np.random.default_rng(21)
    qkv_a = rng.standard_normal((4, 64, 3, 2, 16)).astype(np.float32)
    go = rng.standard_normal((4, 2, 64, 16)).astype(np.float32)
    qkv = am.tensor(qkv_a, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = am.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(am.tensor(go))
    tqkv = torch.tensor(qkv_a.astype(np.float64), requires_grad=True)
    tq, tk, tv = tqkv.permute(2, 0, 3, 1, 4)
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    tout.backward(torch.tensor(go.astype(np.float64)))
    np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(qkv.grad.numpy(), tqkv.grad.numpy(), rtol=1e-4, atol=1e-4)
    if kernel and _native.available():
        assert used and all(used)  # the kernel ran (and applied) for Q and K


@pytest.mark.parametrize("kernel", [True, False], ids=["augment_kernel", "numpy_augment"])
def test_augment_values_and_row_norms(kernel, monkeypatch):
    """``_augment`` itself, kernel and NumPy routes: [a scale, col] and the row sums of squares
    of a scale against float64 arithmetic, for a permuted view, a scalar and a per-row column."""
    from avila_ml.cpu_accel import _native
    if not kernel:
        monkeypatch.setattr(_native, "augment_rows", lambda *a, **k: False)
    rng = np.random.default_rng(22)
    qkv = rng.standard_normal((3, 40, 3, 2, 16)).astype(np.float32)
    a = qkv.transpose(2, 0, 3, 1, 4)[0]  # (3, 2, 40, 16), strided
    ct = np.dtype(np.float32)
    ref = (a.astype(np.float64) * 0.25).reshape(6, 40, 16)
    sq = np.full((6, 40), np.nan, np.float32)
    out = fused._augment(a, 0.0, ct, scale=0.25, sq=sq)
    np.testing.assert_allclose(out[..., :16], ref, rtol=1e-7)
    assert (out[..., 16] == 0).all()
    np.testing.assert_allclose(sq, (ref ** 2).sum(-1), rtol=1e-6)
    col = rng.standard_normal((6, 40)).astype(np.float32)
    out = fused._augment(a, col, ct)
    np.testing.assert_array_equal(out[..., 16], col)
    np.testing.assert_allclose(out[..., :16], a.astype(np.float64).reshape(6, 40, 16), rtol=0)
