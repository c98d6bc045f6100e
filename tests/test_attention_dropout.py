"""Dropout inside the blocked scaled_dot_product_attention: the Philox keep mask is a pure
function of (seed, offset, batch, row, column); the blocked forward/backward (and double
backward) against PyTorch's composite formula with that mask materialised; gradcheck; keep
rate; reproducibility; memory at L = 4096; the nn modules take the blocked path in training."""
import math

import numpy as np
import pytest
import torch

import avila_ml as am
from memory_peak import peak_bytes
from avila_ml.backends import backend_of
from avila_ml.backends.philox import dropout_counters, dropout_keep
from avila_ml.ops import attention as attn_mod

F = am.nn.functional


def _np(t):
    return t.detach().cpu().numpy()


def _am(a, device, requires_grad=False):
    t = am.tensor(np.ascontiguousarray(a), device=device)
    return t.requires_grad_(True) if requires_grad else t


def _seed_of_next_call(seed, q, k, v):
    """(seed, offset) the next SDPA call after ``manual_seed(seed)`` uses; re-seeds after."""
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    am.manual_seed(seed)
    state = attn_mod._dropout_seed(backend_of(q.array), dropout_counters(int(np.prod(batch)), q.shape[-2],
                                                                         k.shape[-2]))
    am.manual_seed(seed)
    return state


def _full_keep(state, p, batch, L, S):
    B = int(np.prod(batch, dtype=np.int64))
    return dropout_keep(np, state[0], state[1], p, L, S, 0, B, 0, L, 0, S).reshape(tuple(batch) + (L, S))


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Tiles of 3 query rows x 4 keys: every case crosses several blocks (and quads of keys)."""
    monkeypatch.setattr(attn_mod, "_TILE_ELEMENTS", 1)
    monkeypatch.setattr(attn_mod, "_MIN_QUERY_BLOCK", 3)
    monkeypatch.setattr(attn_mod, "_MAX_KEY_BLOCK", 5)
    monkeypatch.setattr(attn_mod, "_KEY_BLOCK", 5)


# (name, q shape, k shape, v shape, mask kind, mask shape, is_causal)
CASES = [
    ("plain", (2, 3, 7, 4), (2, 3, 9, 4), (2, 3, 9, 3), None, None, False),
    ("batch broadcast", (2, 3, 6, 4), (1, 3, 11, 4), (3, 11, 2), None, None, False),
    ("bool mask", (2, 2, 7, 4), (2, 2, 10, 4), (2, 2, 10, 3), "bool", (2, 1, 7, 10), False),
    ("float mask with grad", (2, 7, 4), (2, 9, 4), (2, 9, 4), "float", (7, 9), False),
    ("causal", (2, 2, 9, 4), (2, 2, 9, 4), (2, 2, 9, 4), None, None, True),
]


@pytest.mark.parametrize("blocks", ["default", "tiny"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_blocked_dropout_matches_composite_with_the_same_mask(device, case, blocks, request):
    """Values and gradients (q, k, v, float mask) against PyTorch's composite
    (softmax(S) o Z) V, Z the materialised mask of the same (seed, offset), float64."""
    if blocks == "tiny":
        request.getfixturevalue("tiny_blocks")
    _, qs, ks, vs, mkind, mshape, causal = case
    p = 0.3
    rng = np.random.default_rng(abs(hash(case[0])) % 2**32)
    qa, ka, va = (rng.standard_normal(s) for s in (qs, ks, vs))
    ma = None
    if mkind == "bool":
        ma = rng.random(mshape) > 0.3
        ma[..., 0] = True
    elif mkind == "float":
        ma = rng.standard_normal(mshape)
    q, k, v = (_am(a, device, True) for a in (qa, ka, va))
    m = None if ma is None else _am(ma, device, mkind == "float")
    state = _seed_of_next_call(123, q, k, v)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=p, is_causal=causal)
    go = rng.standard_normal(out.shape)
    out.backward(_am(go, device))

    L, S = qs[-2], ks[-2]
    batch = np.broadcast_shapes(qs[:-2], ks[:-2], vs[:-2])
    z = torch.tensor(_full_keep(state, p, batch, L, S) / (1 - p))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (qa, ka, va))
    tm = None if ma is None else torch.tensor(ma, requires_grad=mkind == "float")
    s = tq @ tk.mT / math.sqrt(qs[-1])
    if tm is not None:
        s = s.masked_fill(~tm, -math.inf) if mkind == "bool" else s + tm
    if causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -math.inf)
    tout = (torch.softmax(s, -1) * z) @ tv
    tout.backward(torch.tensor(go))
    np.testing.assert_allclose(_np(out), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in ((q, tq), (k, tk), (v, tv)) + (((m, tm),) if mkind == "float" else ()):
        np.testing.assert_allclose(_np(ours.grad), theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_mask_is_a_pure_function_of_coordinates():
    """Any tile equals the same slice of the whole mask; seed and offset change it."""
    full = dropout_keep(np, 99, 1000, 0.25, 13, 23, 0, 3, 0, 13, 0, 23)
    for b0, b1, i0, i1, j0, j1 in [(0, 3, 0, 13, 0, 23), (1, 2, 5, 9, 3, 17), (2, 3, 12, 13, 22, 23), (0, 1, 0, 1, 1, 2)]:
        tile = dropout_keep(np, 99, 1000, 0.25, 13, 23, b0, b1, i0, i1, j0, j1)
        assert np.array_equal(tile, full[b0:b1, i0:i1, j0:j1])
    assert not np.array_equal(full, dropout_keep(np, 98, 1000, 0.25, 13, 23, 0, 3, 0, 13, 0, 23))
    # the offset moves the stream by counters: offset + 6 (one row of ceil(23/4) counters) = next row
    shifted = dropout_keep(np, 99, 1006, 0.25, 13, 23, 0, 1, 0, 12, 0, 23)
    assert np.array_equal(shifted, full[0:1, 1:13])


def test_keep_rate_is_one_minus_p(device):
    """The keep rate of the mask, and the fraction of dropped probabilities seen through V = I."""
    for p in (0.1, 0.5):
        keep = dropout_keep(np, 7, 0, p, 256, 256, 0, 4, 0, 256, 0, 256)
        assert abs(keep.mean() - (1 - p)) < 0.005  # 262144 draws: 5 standard deviations ~ 0.003
    am.manual_seed(3)
    q = am.randn(4, 64, 8, dtype=am.float64, device=device)
    k = am.randn(4, 64, 8, dtype=am.float64, device=device)
    out = F.scaled_dot_product_attention(q, k, am.eye(64, dtype=am.float64, device=device), dropout_p=0.2)
    assert abs((_np(out) == 0).mean() - 0.2) < 0.02  # 16384 draws


def test_manual_seed_reproduces_and_calls_differ(device):
    rng = np.random.default_rng(0)
    q, k, v = (_am(rng.standard_normal((2, 2, 6, 4)), device) for _ in range(3))
    am.manual_seed(5)
    a1 = _np(F.scaled_dot_product_attention(q, k, v, dropout_p=0.5))
    a2 = _np(F.scaled_dot_product_attention(q, k, v, dropout_p=0.5))
    am.manual_seed(5)
    b1 = _np(F.scaled_dot_product_attention(q, k, v, dropout_p=0.5))
    b2 = _np(F.scaled_dot_product_attention(q, k, v, dropout_p=0.5))
    assert np.array_equal(a1, b1) and np.array_equal(a2, b2)
    assert not np.array_equal(a1, a2)


def test_dropout_gradcheck_and_gradgradcheck(device, tiny_blocks):
    """Finite differences with a fixed seed; double backward (composite path) uses the same mask."""
    q = am.randn(1, 2, 5, 3, dtype=am.float64, device=device, requires_grad=True)
    k = am.randn(1, 2, 7, 3, dtype=am.float64, device=device, requires_grad=True)
    v = am.randn(1, 2, 7, 2, dtype=am.float64, device=device, requires_grad=True)
    bias = am.randn(5, 7, dtype=am.float64, device=device, requires_grad=True)

    def f(a, b, c, m):
        am.manual_seed(11)  # the same dropout mask at every evaluation
        return F.scaled_dot_product_attention(a, b, c, attn_mask=m, dropout_p=0.4)
    assert am.autograd.gradcheck(f, (q, k, v, bias))
    assert am.autograd.gradgradcheck(lambda a, b, c: f(a, b, c, None), (q, k, v))


_peak = peak_bytes


def test_dropout_memory_stays_far_below_L_squared():
    """L = S = 4096 with dropout, forward + backward: the float64 L x S scores or mask would be
    128 MiB (64 MiB in float32); the peak stays below 24 MiB."""
    L, E = 4096, 32
    rng = np.random.default_rng(1)
    q, k, v = (am.tensor(rng.standard_normal((1, 1, L, E), dtype=np.float32), requires_grad=True)
               for _ in range(3))

    def train():
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
        out.backward(am.ones(*out.shape))

    peak = _peak(train)
    assert peak < 24 * 2**20, f"forward+backward peak {peak / 2**20:.1f} MiB (L x S float64 = 128 MiB)"
    assert np.isfinite(q.grad.numpy()).all() and np.abs(v.grad.numpy()).sum() > 0


@pytest.fixture
def blocked_calls(monkeypatch):
    """Records the dropout argument of every blocked-attention forward; fails on the composite path."""
    calls = []
    forward = attn_mod._BlockedAttention.forward

    def spy(self, *args):
        calls.append(args[7] if len(args) > 7 else None)
        return forward(self, *args)
    monkeypatch.setattr(attn_mod._BlockedAttention, "forward", spy)

    def composite(*a, **kw):
        raise AssertionError("the composite attention path (L x S probabilities) was taken")
    monkeypatch.setattr(am.nn.modules.attention, "_math_probs", composite)
    return calls


def test_multihead_attention_training_dropout_takes_the_blocked_path(device, blocked_calls):
    am.manual_seed(0)
    mha = am.nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True).to(device)
    x = am.randn(2, 5, 8, device=device, requires_grad=True)
    out, _ = mha(x, x, x, need_weights=False)
    out.sum().backward()
    assert len(blocked_calls) == 1 and blocked_calls[0][0] == pytest.approx(0.1)
    mha.eval()
    mha(x, x, x, need_weights=False)
    assert len(blocked_calls) == 2 and blocked_calls[1] is None  # eval: no dropout


def test_transformer_encoder_layer_training_dropout_takes_the_blocked_path(device, blocked_calls):
    am.manual_seed(0)
    layer = am.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True).to(device)  # dropout 0.1
    layer.train()
    x = am.randn(2, 5, 8, device=device, requires_grad=True)
    layer(x).sum().backward()
    assert len(blocked_calls) == 1 and blocked_calls[0][0] == pytest.approx(0.1)
    assert x.grad is not None and np.isfinite(_np(x.grad)).all()


def test_cuda_fused_kernels_apply_the_same_dropout_mask(device, monkeypatch):
    """On CUDA (float32, head dim <= 128) dropout runs inside the fused kernels: values and
    gradients against the float64 composite with the materialised mask, and, with V = I, the
    kernels drop exactly the elements the xp blocked path drops for the same manual_seed."""
    if device == "cpu":
        pytest.skip("the fused kernels run on the CUDA leg (a GPU or AVILA_ML_TEST_DEVICE=cuda-emulated)")
    launched = []
    kernels = attn_mod._cuda_kernels

    def counting():
        launched.append(True)
        return kernels()
    monkeypatch.setattr(attn_mod, "_cuda_kernels", counting)
    p, rng = 0.25, np.random.default_rng(8)
    qa, ka, va = (rng.standard_normal((2, 2, n, 8)).astype(np.float32) for n in (67, 70, 70))
    q, k, v = (_am(a, device, True) for a in (qa, ka, va))
    state = _seed_of_next_call(21, q, k, v)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    go = rng.standard_normal(out.shape).astype(np.float32)
    out.backward(_am(go, device))
    assert len(launched) >= 3  # the check, the forward launch, the backward launch

    z = torch.tensor(_full_keep(state, p, (2, 2), 67, 70) / (1 - p))
    tq, tk, tv = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (qa, ka, va))
    s = (tq @ tk.mT / math.sqrt(8)).masked_fill(~torch.ones(67, 70, dtype=torch.bool).tril(), -math.inf)
    tout = (torch.softmax(s, -1) * z) @ tv
    tout.backward(torch.tensor(go.astype(np.float64)))
    np.testing.assert_allclose(_np(out), tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    for ours, theirs in ((q, tq), (k, tk), (v, tv)):
        np.testing.assert_allclose(_np(ours.grad), theirs.grad.numpy(), rtol=1e-4, atol=1e-4)

    eye = am.eye(70, device=device).reshape(1, 1, 70, 70)
    am.manual_seed(4)
    fused = _np(F.scaled_dot_product_attention(q.detach() * 0.1, k.detach() * 0.1, eye, dropout_p=0.5))
    monkeypatch.setattr(attn_mod, "_CUDA_MAX_HEAD_DIM", 0)  # force the xp blocked path
    am.manual_seed(4)
    blocked = _np(F.scaled_dot_product_attention(q.detach() * 0.1, k.detach() * 0.1, eye, dropout_p=0.5))
    assert np.array_equal(fused == 0, blocked == 0) and 0.4 < (fused == 0).mean() < 0.6
