"""scaled_dot_product_attention against PyTorch and finite differences; the blocked path at
block edges; fully masked rows; dropout; memory at L = 16384; errors."""
import math

import numpy as np
import pytest
import torch

import avila_ml as am
from memory_peak import peak_bytes
from avila_ml.ops import attention as attn_mod

F = am.nn.functional


def _np(t):
    return t.detach().cpu().numpy()


def _am(a, device, requires_grad=False):
    t = am.tensor(np.ascontiguousarray(a), device=device)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _torch_sdpa(q, k, v, mask, is_causal, scale, gqa=False):
    """PyTorch reference: batch dims expanded explicitly so every backend accepts them."""
    if gqa:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=True)
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2],
                                   *(() if mask is None or mask.ndim < 2 else (mask.shape[:-2],)))
    qe = q.expand(*batch, *q.shape[-2:])
    ke = k.expand(*batch, *k.shape[-2:])
    ve = v.expand(*batch, *v.shape[-2:])
    if is_causal and mask is not None:  # PyTorch rejects the pair: fold causal into the mask
        L, S = q.shape[-2], k.shape[-2]
        tri = torch.ones(L, S, dtype=torch.bool).tril()
        mask = (mask & tri) if mask.dtype == torch.bool else mask.masked_fill(~tri, -math.inf)
        is_causal = False
    return torch.nn.functional.scaled_dot_product_attention(qe, ke, ve, attn_mask=mask, is_causal=is_causal,
                                                            scale=scale)


def _mask(kind, shape, rng, dtype=np.float64):
    if kind is None:
        return None
    if kind == "bool":
        m = rng.random(shape) > 0.4
        m[..., 0] = True  # every row keeps a key (fully masked rows have their own test)
        return m
    m = rng.standard_normal(shape).astype(dtype)
    m[rng.random(shape) > 0.8] = -np.inf
    m[..., 0] = 0.5
    return m


# (name, q shape, k shape, v shape, mask kind, mask shape, is_causal, scale)
CASES = [
    ("plain", (2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 4), None, None, False, None),
    ("L!=S, Ev!=E", (2, 7, 4), (2, 5, 4), (2, 5, 3), None, None, False, None),
    ("2-d inputs", (6, 3), (4, 3), (4, 5), None, None, False, None),
    ("batch broadcast", (2, 3, 6, 4), (1, 3, 5, 4), (3, 5, 2), None, None, False, None),
    ("scale", (2, 4, 3), (2, 6, 3), (2, 6, 3), None, None, False, 0.37),
    ("bool mask L,S", (2, 2, 5, 4), (2, 2, 6, 4), (2, 2, 6, 3), "bool", (5, 6), False, None),
    ("bool mask B,1,L,S", (2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 4), "bool", (2, 1, 5, 6), False, None),
    ("bool key padding", (2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 4), "bool", (2, 1, 1, 6), False, None),
    ("float mask L,S", (2, 2, 5, 4), (2, 2, 6, 4), (2, 2, 6, 3), "float", (5, 6), False, None),
    ("float mask per row", (3, 5, 4), (3, 6, 4), (3, 6, 4), "float", (3, 5, 1), False, None),
    ("causal L=S", (2, 2, 7, 4), (2, 2, 7, 4), (2, 2, 7, 4), None, None, True, None),
    ("causal L<S", (2, 4, 4), (2, 7, 4), (2, 7, 2), None, None, True, None),
    ("causal L>S", (2, 7, 4), (2, 4, 4), (2, 4, 2), None, None, True, None),
    ("causal + bool mask", (2, 6, 4), (2, 6, 4), (2, 6, 4), "bool", (2, 6, 6), True, None),
    ("mask batch vs k batch", (2, 3, 5, 4), (3, 6, 4), (3, 6, 4), "float", (2, 1, 5, 6), False, 0.5),
]


def _check_case(device, case, dtype=np.float64, rtol=1e-10, atol=1e-10):
    _, qs, ks, vs, mkind, mshape, causal, scale = case
    rng = np.random.default_rng(abs(hash(case[0])) % 2**32)
    qa, ka, va = (rng.standard_normal(s).astype(dtype) for s in (qs, ks, vs))
    ma = _mask(mkind, mshape, rng, dtype)
    float_mask = ma is not None and ma.dtype != np.bool_
    q, k, v = (_am(a, device, True) for a in (qa, ka, va))
    m = None if ma is None else _am(ma, device, float_mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, scale=scale)
    go = rng.standard_normal(out.shape).astype(dtype)
    out.backward(_am(go, device))

    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (qa, ka, va))
    tm = None if ma is None else torch.tensor(ma, requires_grad=float_mask)
    tout = _torch_sdpa(tq, tk, tv, tm, causal, scale)
    tout.backward(torch.tensor(go))
    np.testing.assert_allclose(_np(out), tout.detach().numpy(), rtol=rtol, atol=atol)
    for ours, theirs in ((q, tq), (k, tk), (v, tv)) + (((m, tm),) if float_mask else ()):
        assert ours.grad is not None and ours.grad.shape == tuple(theirs.shape)
        np.testing.assert_allclose(_np(ours.grad), theirs.grad.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_sdpa_matches_torch_float64(device, case):
    _check_case(device, case)


@pytest.mark.parametrize("case", CASES[:1] + CASES[5:6] + CASES[10:11], ids=["plain", "bool mask", "causal"])
def test_sdpa_matches_torch_float32(device, case):
    _check_case(device, case, dtype=np.float32, rtol=2e-5, atol=2e-5)


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Force many small, ragged tiles so the online softmax and every block edge are exercised."""
    monkeypatch.setattr(attn_mod, "_TILE_ELEMENTS", 1)
    monkeypatch.setattr(attn_mod, "_MIN_QUERY_BLOCK", 3)
    monkeypatch.setattr(attn_mod, "_MAX_KEY_BLOCK", 4)
    monkeypatch.setattr(attn_mod, "_KEY_BLOCK", 4)


@pytest.mark.parametrize("case", [
    ("edges", (2, 11, 4), (2, 13, 4), (2, 13, 3), None, None, False, None),
    ("edges causal", (2, 11, 4), (2, 11, 4), (2, 11, 3), None, None, True, None),
    ("edges causal L>S", (1, 2, 13, 4), (1, 2, 9, 4), (1, 2, 9, 3), None, None, True, None),
    ("edges bool", (2, 11, 4), (2, 13, 4), (2, 13, 3), "bool", (11, 13), False, None),
    ("edges float grad", (2, 2, 10, 4), (2, 2, 9, 4), (2, 2, 9, 3), "float", (2, 1, 10, 9), False, 0.7),
    ("edges float row mask", (2, 10, 4), (2, 9, 4), (2, 9, 3), "float", (10, 1), True, None),
    ("edges broadcast batch", (2, 3, 10, 4), (3, 9, 4), (1, 3, 9, 3), "float", (2, 1, 10, 9), False, None),
    ("edges shared mask", (2, 3, 10, 4), (2, 3, 9, 4), (2, 3, 9, 3), "bool", (1, 1, 10, 9), True, None),
], ids=lambda c: c[0])
def test_blocked_path_at_block_edges(device, tiny_blocks, case):
    assert attn_mod._block_sizes(2, 11, 13) == (1, 3, 4)
    _check_case(device, case)


@pytest.mark.parametrize("case", [
    ("threads over batch chunks", (2, 3, 10, 4), (3, 9, 4), (1, 3, 9, 3), "float", (2, 1, 10, 9), False, None),
    ("threads over query blocks", (1, 13, 4), (1, 9, 4), (1, 9, 3), "float", (13, 9), True, 0.6),
    ("threads, mask shared", (1, 2, 13, 4), (1, 2, 9, 4), (1, 2, 9, 3), "float", (1, 9), False, None),
], ids=lambda c: c[0])
def test_blocked_path_on_threads(device, tiny_blocks, monkeypatch, case):
    """The tiles shared out among threads (private or disjoint dK/dV/d-mask sums) give PyTorch's values."""
    if attn_mod._cpu_threads.controller() is None:
        pytest.skip("threadpoolctl is not installed: the CPU path runs on one thread")
    monkeypatch.setattr(attn_mod, "_PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(attn_mod, "_NUM_THREADS", 3)
    _check_case(device, case)


def test_fully_masked_rows_give_zeros(device):
    rng = np.random.default_rng(1)
    qa, ka, va = (rng.standard_normal((2, 5, 3)) for _ in range(3))
    mask = rng.random((2, 5, 5)) > 0.3
    mask[:, :, 0] = True
    mask[0, 2] = False  # row 2 of batch 0 sees no key
    mask[1, 4] = False
    for m_arr in (mask, np.where(mask, 0.0, -np.inf)):  # bool and additive forms
        q, k, v = (_am(a, device, True) for a in (qa, ka, va))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_am(m_arr, device))
        out.backward(am.ones(*out.shape, dtype=am.float64, device=device))
        o = _np(out)
        assert np.all(o[0, 2] == 0) and np.all(o[1, 4] == 0)
        for t in (q, k, v):
            assert np.isfinite(_np(t.grad)).all()
        assert np.all(_np(q.grad)[0, 2] == 0) and np.all(_np(q.grad)[1, 4] == 0)
        # the other rows equal PyTorch's
        keep = mask.copy()
        keep[0, 2] = keep[1, 4] = True
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (qa, ka, va))
        ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.tensor(keep))
        ref_np = ref.detach().numpy()
        ref_np[0, 2] = ref_np[1, 4] = 0
        np.testing.assert_allclose(o, ref_np, rtol=1e-10, atol=1e-12)


def test_no_keys_gives_zeros(device):
    q = am.randn(2, 3, 4, dtype=am.float64, device=device, requires_grad=True)
    k = am.randn(2, 0, 4, dtype=am.float64, device=device, requires_grad=True)
    v = am.randn(2, 0, 5, dtype=am.float64, device=device, requires_grad=True)
    out = F.scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 5) and np.all(_np(out) == 0)
    out.sum().backward()
    assert np.all(_np(q.grad) == 0) and k.grad.shape == (2, 0, 4)
    empty_q = am.randn(2, 0, 4, dtype=am.float64, device=device)
    assert F.scaled_dot_product_attention(empty_q, q, q).shape == (2, 0, 4)


def test_fully_masked_rows_in_blocked_path(device, tiny_blocks):
    rng = np.random.default_rng(2)
    qa, ka, va = (rng.standard_normal((1, 9, 3)) for _ in range(3))
    mask = np.ones((9, 9), dtype=bool)
    mask[4] = False
    mask[7, :5] = False  # only the last key block is open: the running max starts at -inf
    q, k, v = (_am(a, device, True) for a in (qa, ka, va))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_am(mask, device))
    out.sum().backward()
    assert np.all(_np(out)[0, 4] == 0) and np.isfinite(_np(out)).all()
    assert all(np.isfinite(_np(t.grad)).all() for t in (q, k, v))
    keep = mask.copy()
    keep[4] = True
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(a) for a in (qa, ka, va)), attn_mask=torch.tensor(keep)).numpy()
    ref[0, 4] = 0
    np.testing.assert_allclose(_np(out), ref, rtol=1e-10, atol=1e-12)


def test_enable_gqa_matches_torch(device):
    rng = np.random.default_rng(3)
    qa = rng.standard_normal((2, 4, 5, 3))
    ka, va = rng.standard_normal((2, 2, 6, 3)), rng.standard_normal((2, 2, 6, 2))
    q, k, v = (_am(a, device, True) for a in (qa, ka, va))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    out.sum().backward()
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (qa, ka, va))
    ref = _torch_sdpa(tq, tk, tv, None, True, None, gqa=True)
    ref.sum().backward()
    np.testing.assert_allclose(_np(out), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in ((q, tq), (k, tk), (v, tv)):
        np.testing.assert_allclose(_np(ours.grad), theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("blocks", ["default", "tiny"])
def test_gradcheck(device, blocks, monkeypatch):
    if blocks == "tiny":
        monkeypatch.setattr(attn_mod, "_TILE_ELEMENTS", 1)
        monkeypatch.setattr(attn_mod, "_MIN_QUERY_BLOCK", 2)
        monkeypatch.setattr(attn_mod, "_MAX_KEY_BLOCK", 2)
        monkeypatch.setattr(attn_mod, "_KEY_BLOCK", 2)
    q = am.randn(2, 3, 2, dtype=am.float64, device=device, requires_grad=True)
    k = am.randn(2, 5, 2, dtype=am.float64, device=device, requires_grad=True)
    v = am.randn(2, 5, 2, dtype=am.float64, device=device, requires_grad=True)
    bias = am.randn(3, 5, dtype=am.float64, device=device, requires_grad=True)
    keep = am.tensor(np.array([[1, 1, 0, 1, 0], [1, 0, 1, 1, 1], [0, 0, 0, 0, 1]], bool), device=device)
    assert am.autograd.gradcheck(lambda a, b, c, m: F.scaled_dot_product_attention(a, b, c, attn_mask=m),
                                 (q, k, v, bias))
    assert am.autograd.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=keep,
                                                                                  scale=0.8), (q, k, v))
    assert am.autograd.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                                 (q, k, v))


def test_gradgradcheck(device):
    q = am.randn(1, 3, 2, dtype=am.float64, device=device, requires_grad=True)
    k = am.randn(1, 4, 2, dtype=am.float64, device=device, requires_grad=True)
    v = am.randn(1, 4, 2, dtype=am.float64, device=device, requires_grad=True)
    keep = am.tensor(np.array([[1, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 0]], bool), device=device)
    assert am.autograd.gradgradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=keep),
                                     (q, k, v))
    assert am.autograd.gradgradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                                     (q, k, v))


def test_dropout_probabilities_are_zero_or_rescaled(device):
    """With V = I the output rows are the (dropped) attention probabilities themselves."""
    rng = np.random.default_rng(4)
    qa, ka = rng.standard_normal((2, 6, 3)), rng.standard_normal((2, 8, 3))
    p = 0.3
    out = F.scaled_dot_product_attention(_am(qa, device), _am(ka, device), am.eye(8, dtype=am.float64, device=device),
                                         dropout_p=p)
    probs = torch.softmax(torch.tensor(qa) @ torch.tensor(ka).mT / math.sqrt(3), -1).numpy()
    o = _np(out)
    dropped = o == 0
    assert 0.1 < dropped.mean() < 0.5
    np.testing.assert_allclose(o[~dropped], probs[~dropped] / (1 - p), rtol=1e-12)
    am.manual_seed(7)
    a = F.scaled_dot_product_attention(_am(qa, device), _am(ka, device), _am(ka, device), dropout_p=p)
    am.manual_seed(7)
    b = F.scaled_dot_product_attention(_am(qa, device), _am(ka, device), _am(ka, device), dropout_p=p)
    assert np.array_equal(_np(a), _np(b))


def test_dropout_gradcheck(device):
    q = am.randn(1, 3, 2, dtype=am.float64, device=device, requires_grad=True)
    k = am.randn(1, 4, 2, dtype=am.float64, device=device, requires_grad=True)
    v = am.randn(1, 4, 2, dtype=am.float64, device=device, requires_grad=True)

    def f(a, b, c):
        am.manual_seed(11)  # the same dropout mask at every evaluation
        return F.scaled_dot_product_attention(a, b, c, dropout_p=0.4)
    assert am.autograd.gradcheck(f, (q, k, v))


def test_no_grad_and_inputs_without_grad(device):
    q = am.randn(2, 4, 3, device=device)
    with am.no_grad():
        out = F.scaled_dot_product_attention(q, q, q)
    assert not out.requires_grad
    v = am.randn(2, 4, 3, device=device, requires_grad=True)
    out = F.scaled_dot_product_attention(q, q, v)
    out.sum().backward()
    assert v.grad is not None and q.grad is None


@pytest.mark.parametrize("bad, match", [
    (lambda d: (am.randn(2, 3, 4, device=d), am.randn(2, 5, 3, device=d), am.randn(2, 5, 3, device=d), {}),
     "same last"),
    (lambda d: (am.randn(2, 3, 4, device=d), am.randn(2, 5, 4, device=d), am.randn(2, 6, 4, device=d), {}),
     "sequence length"),
    (lambda d: (am.randn(2, 3, 4, device=d), am.randn(3, 5, 4, device=d), am.randn(3, 5, 4, device=d), {}),
     "do not broadcast"),
    (lambda d: (am.randn(3, 4, device=d), am.randn(5, 4, device=d), am.randn(5, 4, device=d),
                {"attn_mask": am.ones(4, 5, dtype=am.bool, device=d)}), r"does not broadcast to"),
    (lambda d: (am.randn(3, 4, device=d), am.randn(5, 4, device=d), am.randn(5, 4, device=d),
                {"attn_mask": am.ones(3, 5, dtype=am.float64, device=d)}), "dtype"),
    (lambda d: (am.randn(3, 4, device=d), am.randn(5, 4, device=d, dtype=am.float64),
                am.randn(5, 4, device=d), {}), "same dtype"),
    (lambda d: (am.randn(3, 4, device=d), am.randn(5, 4, device=d), am.randn(5, 4, device=d),
                {"dropout_p": 1.5}), "dropout_p"),
    (lambda d: (am.randn(4, device=d), am.randn(5, 4, device=d), am.randn(5, 4, device=d), {}), "at least 2"),
    (lambda d: (am.randn(1, 3, 2, 4, device=d), am.randn(1, 2, 5, 4, device=d), am.randn(1, 2, 5, 4, device=d),
                {"enable_gqa": True}), "divisible"),
])
def test_errors_name_the_op(device, bad, match):
    q, k, v, kw = bad(device)
    with pytest.raises((RuntimeError, TypeError, ValueError), match=match) as e:
        F.scaled_dot_product_attention(q, k, v, **kw)
    assert "scaled_dot_product_attention" in str(e.value)


_peak = peak_bytes


def test_long_sequence_memory_stays_far_below_L_squared():
    """L = 16384: the L x L float32 score matrix would be 1 GiB; the blocked path stays < 64 MiB
    (forward: full attention; forward + backward: causal, to halve the run time)."""
    L, E = 16384, 64
    budget = 64 * 2**20
    rng = np.random.default_rng(5)
    q, k, v = (am.tensor(rng.standard_normal((1, 1, L, E), dtype=np.float32), requires_grad=True)
               for _ in range(3))
    with am.no_grad():
        fwd_peak = _peak(lambda: F.scaled_dot_product_attention(q, k, v))
    assert fwd_peak < budget, f"forward peak {fwd_peak / 2**20:.1f} MiB"

    def train():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(am.ones(*out.shape))

    train_peak = _peak(train)
    assert train_peak < budget, f"forward+backward peak {train_peak / 2**20:.1f} MiB"
    assert np.isfinite(q.grad.numpy()).all() and q.grad.shape == (1, 1, L, E)
    # spot-check a few rows against the exact formula (float64 on those rows only)
    rows = np.array([0, 1, 4095, L - 1])
    qa, ka, va = (t.detach().numpy()[0, 0].astype(np.float64) for t in (q, k, v))
    with am.no_grad():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).numpy()[0, 0]
    for r in rows:
        s = ka[: r + 1] @ qa[r] / math.sqrt(E)
        p = np.exp(s - s.max())
        np.testing.assert_allclose(out[r], p @ va[: r + 1] / p.sum(), rtol=2e-4, atol=2e-5)
