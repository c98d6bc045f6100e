"""MultiheadAttention, SelfAttention, the transformer layers and stacks, and the positional
encodings, against PyTorch with copied weights (forward and gradients, float64, eval mode)."""
import copy
import math

import numpy as np
import pytest
import torch

import avila_ml as am

nn = am.nn
# the tests mix bool and float masks on purpose; PyTorch warns that it will stop accepting that
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched")


def _np(t):
    return t.detach().cpu().numpy()


def _pair(ours, theirs, device):
    """Our module in float64 on ``device`` with PyTorch's (float64) weights; both in eval mode."""
    theirs = theirs.double().eval()
    ours = ours.to(am.float64)
    sd = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    assert set(sd) == set(ours.state_dict()), (sorted(sd), sorted(ours.state_dict()))
    ours.load_state_dict(sd)
    return ours.to(device).eval(), theirs


def _inputs(rng, device, *shapes):
    arrs = [rng.standard_normal(s) for s in shapes]
    ours = [am.tensor(a, device=device, requires_grad=True) for a in arrs]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrs]
    return ours, theirs


def _assert_grads(ours_mod, theirs_mod, ours_in, theirs_in, rtol=1e-9, atol=1e-10):
    tp = dict(theirs_mod.named_parameters())
    for name, p in ours_mod.named_parameters():
        assert p.grad is not None, name
        np.testing.assert_allclose(_np(p.grad), tp[name].grad.numpy(), rtol=rtol, atol=atol, err_msg=name)
    for a, b in zip(ours_in, theirs_in):
        np.testing.assert_allclose(_np(a.grad), b.grad.numpy(), rtol=rtol, atol=atol)


def _bool_mask(rng, shape, keep_first=True):
    """A PyTorch-convention bool mask (True = masked out), leaving key 0 open for every row."""
    m = rng.random(shape) < 0.35
    if keep_first:
        m[..., 0] = False
    return m


MHA_CASES = [
    # name, ctor kwargs, batch_first, (L, S), masks, need_weights, average
    ("plain seq-first", {}, False, (5, 6), (), True, True),
    ("batch_first", {}, True, (5, 6), (), True, False),
    ("no weights", {}, True, (5, 6), (), False, True),
    ("kdim/vdim", {"kdim": 3, "vdim": 5}, True, (4, 6), (), True, True),
    ("no bias", {"bias": False}, False, (5, 5), (), False, True),
    ("key padding bool", {}, True, (5, 6), ("kpm_bool",), False, True),
    ("key padding float", {}, True, (5, 6), ("kpm_float",), True, True),
    ("attn_mask bool 2d", {}, False, (5, 6), ("am_bool",), False, True),
    ("attn_mask float 3d", {}, True, (5, 6), ("am_float3",), True, False),
    ("both masks", {}, True, (5, 6), ("am_bool", "kpm_bool"), False, True),
    ("both masks, weights", {}, False, (5, 6), ("am_float", "kpm_bool"), True, True),
    ("bias_kv + zero_attn", {"add_bias_kv": True, "add_zero_attn": True}, True, (5, 6), ("am_bool", "kpm_bool"),
     False, True),
    ("bias_kv + zero_attn, weights", {"add_bias_kv": True, "add_zero_attn": True}, False, (4, 6), ("kpm_float",),
     True, True),
]


@pytest.mark.parametrize("case", MHA_CASES, ids=[c[0] for c in MHA_CASES])
def test_multihead_attention_matches_torch(device, case):
    _, kw, bf, (L, S), masks, need_weights, average = case
    E, H, N = 8, 2, 3
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(E, H, dropout=0.3, batch_first=bf, **kw)
    ours, theirs = _pair(nn.MultiheadAttention(E, H, dropout=0.3, batch_first=bf, **kw), theirs, device)
    rng = np.random.default_rng(0)
    kdim, vdim = kw.get("kdim", E), kw.get("vdim", E)
    shape = (lambda n, length, e: (n, length, e)) if bf else (lambda n, length, e: (length, n, e))
    (q, k, v), (tq, tk, tv) = _inputs(rng, device, shape(N, L, E), shape(N, S, kdim), shape(N, S, vdim))
    kwargs_o, kwargs_t = {}, {}
    for m in masks:
        if m == "kpm_bool":
            a = _bool_mask(rng, (N, S))
            name = "key_padding_mask"
        elif m == "kpm_float":
            a = rng.standard_normal((N, S))
            name = "key_padding_mask"
        elif m == "am_bool":
            a = _bool_mask(rng, (L, S))
            name = "attn_mask"
        elif m == "am_float":
            a = rng.standard_normal((L, S))
            name = "attn_mask"
        else:
            a = rng.standard_normal((N * H, L, S))
            name = "attn_mask"
        kwargs_o[name] = am.tensor(a, device=device)
        kwargs_t[name] = torch.tensor(a)
    out, w = ours(q, k, v, need_weights=need_weights, average_attn_weights=average, **kwargs_o)
    tout, tw = theirs(tq, tk, tv, need_weights=need_weights, average_attn_weights=average, **kwargs_t)
    np.testing.assert_allclose(_np(out), tout.detach().numpy(), rtol=1e-9, atol=1e-10)
    if need_weights:
        np.testing.assert_allclose(_np(w), tw.detach().numpy(), rtol=1e-9, atol=1e-10)
    else:
        assert w is None and tw is None
    g = rng.standard_normal(out.shape)
    loss = (out * am.tensor(g, device=device)).sum()
    tloss = (tout * torch.tensor(g)).sum()
    if need_weights:  # the weights' gradient path too
        gw = rng.standard_normal(w.shape)
        loss = loss + (w * am.tensor(gw, device=device)).sum()
        tloss = tloss + (tw * torch.tensor(gw)).sum()
    loss.backward()
    tloss.backward()
    _assert_grads(ours, theirs, (q, k, v), (tq, tk, tv))


def test_multihead_attention_unbatched_and_causal(device):
    E, H, L = 6, 3, 5
    torch.manual_seed(1)
    ours, theirs = _pair(nn.MultiheadAttention(E, H), torch.nn.MultiheadAttention(E, H), device)
    rng = np.random.default_rng(1)
    (x,), (tx,) = _inputs(rng, device, (L, E))
    causal = np.triu(np.ones((L, L), bool), 1)  # PyTorch convention: True above the diagonal is masked
    out, w = ours(x, x, x, attn_mask=am.tensor(causal, device=device), is_causal=True)
    tout, tw = theirs(tx, tx, tx, attn_mask=torch.tensor(causal), is_causal=True)
    np.testing.assert_allclose(_np(out), tout.detach().numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(_np(w), tw.detach().numpy(), rtol=1e-9, atol=1e-10)
    # is_causal alone (PyTorch needs the mask as well) gives the same output
    out2, _ = ours(x, x, x, is_causal=True, need_weights=False)
    np.testing.assert_allclose(_np(out2), tout.detach().numpy(), rtol=1e-9, atol=1e-10)
    (out.sum() + w.sum()).backward()
    (tout.sum() + tw.sum()).backward()
    _assert_grads(ours, theirs, (x,), (tx,))


def test_multihead_attention_fully_padded_row_gives_zeros(device):
    mha = nn.MultiheadAttention(4, 2, batch_first=True).to(device)
    x = am.randn(2, 3, 4, device=device, requires_grad=True)
    mask = np.zeros((3, 3), bool)
    mask[1] = True  # query 1 may attend to nothing
    out, w = mha(x, x, x, attn_mask=am.tensor(mask, device=device))
    assert np.all(_np(w)[:, 1] == 0) and np.isfinite(_np(out)).all()
    out.sum().backward()
    assert np.isfinite(_np(x.grad)).all()


def test_multihead_attention_dropout_only_in_training(device):
    mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True).to(device)
    x = am.randn(2, 6, 8, device=device)
    mha.train()
    a, _ = mha(x, x, x, need_weights=False)
    b, _ = mha(x, x, x, need_weights=False)
    assert not np.allclose(_np(a), _np(b))
    mha.eval()
    a, wa = mha(x, x, x)
    b, wb = mha(x, x, x, need_weights=False)
    np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (lambda: nn.MultiheadAttention(6, 4), "divisible"),
    (lambda: nn.MultiheadAttention(8, 2)(am.randn(3, 2, 7), am.randn(3, 2, 7), am.randn(3, 2, 7)), "features"),
    (lambda: nn.MultiheadAttention(8, 2)(am.randn(3, 2, 8), am.randn(4, 2, 8), am.randn(5, 2, 8)), "sequence length"),
    (lambda: nn.MultiheadAttention(8, 2)(am.randn(3, 2, 8), am.randn(4, 2, 8), am.randn(4, 2, 8),
                                         attn_mask=am.zeros(4, 3)), "attn_mask"),
    (lambda: nn.MultiheadAttention(8, 2)(am.randn(3, 2, 8), am.randn(4, 2, 8), am.randn(4, 2, 8),
                                         key_padding_mask=am.zeros(4, 2, dtype=am.bool)), "key_padding_mask"),
    (lambda: nn.TransformerEncoderLayer(8, 2, activation="tanh"), "activation"),
])
def test_errors(bad, match):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        bad()


def _layer_inputs(rng, device, bf, N, L, E):
    return _inputs(rng, device, (N, L, E) if bf else (L, N, E))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(device, norm_first, batch_first, activation):
    E, H, F, N, L = 8, 2, 12, 2, 5
    torch.manual_seed(2)
    kw = dict(dim_feedforward=F, dropout=0.2, activation=activation, batch_first=batch_first, norm_first=norm_first)
    ours, theirs = _pair(nn.TransformerEncoderLayer(E, H, **kw), torch.nn.TransformerEncoderLayer(E, H, **kw), device)
    rng = np.random.default_rng(2)
    (x,), (tx,) = _layer_inputs(rng, device, batch_first, N, L, E)
    kpm = _bool_mask(rng, (N, L))
    src_mask = rng.standard_normal((L, L))
    out = ours(x, src_mask=am.tensor(src_mask, device=device), src_key_padding_mask=am.tensor(kpm, device=device))
    tout = theirs(tx, src_mask=torch.tensor(src_mask), src_key_padding_mask=torch.tensor(kpm))
    np.testing.assert_allclose(_np(out), tout.detach().numpy(), rtol=1e-9, atol=1e-10)
    g = rng.standard_normal(out.shape)
    (out * am.tensor(g, device=device)).sum().backward()
    (tout * torch.tensor(g)).sum().backward()
    _assert_grads(ours, theirs, (x,), (tx,))


def test_encoder_layer_callable_activation_and_no_bias(device):
    E, H = 8, 4
    torch.manual_seed(3)
    kw = dict(dim_feedforward=16, dropout=0.0, batch_first=True, bias=False)
    ours, theirs = _pair(nn.TransformerEncoderLayer(E, H, activation=am.nn.functional.silu, **kw),
                         torch.nn.TransformerEncoderLayer(E, H, activation=torch.nn.functional.silu, **kw), device)
    rng = np.random.default_rng(3)
    (x,), (tx,) = _inputs(rng, device, (2, 4, E))
    out, tout = ours(x, is_causal=True, src_mask=am.tensor(np.triu(np.ones((4, 4), bool), 1), device=device)), \
        theirs(tx, is_causal=True, src_mask=torch.nn.Transformer.generate_square_subsequent_mask(4, dtype=torch.float64))
    np.testing.assert_allclose(_np(out), tout.detach().numpy(), rtol=1e-9, atol=1e-10)
    out.sum().backward()
    tout.sum().backward()
    _assert_grads(ours, theirs, (x,), (tx,))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_decoder_layer_matches_torch(device, norm_first, batch_first):
    E, H, F, N, L, S = 8, 2, 12, 2, 4, 6
    torch.manual_seed(4)
    kw = dict(dim_feedforward=F, dropout=0.1, activation="gelu", batch_first=batch_first, norm_first=norm_first)
    ours, theirs = _pair(nn.TransformerDecoderLayer(E, H, **kw), torch.nn.TransformerDecoderLayer(E, H, **kw), device)
    rng = np.random.default_rng(4)
    (x, mem), (tx, tmem) = _inputs(rng, device, *[(N, n, E) if batch_first else (n, N, E) for n in (L, S)])
    tgt_mask = np.triu(np.ones((L, L), bool), 1)
    mkpm = _bool_mask(rng, (N, S))
    tkpm = _bool_mask(rng, (N, L))
    out = ours(x, mem, tgt_mask=am.tensor(tgt_mask, device=device), memory_key_padding_mask=am.tensor(mkpm, device=device),
               tgt_key_padding_mask=am.tensor(tkpm, device=device), tgt_is_causal=True)
    tout = theirs(tx, tmem, tgt_mask=torch.tensor(tgt_mask), memory_key_padding_mask=torch.tensor(mkpm),
                  tgt_key_padding_mask=torch.tensor(tkpm), tgt_is_causal=True)
    np.testing.assert_allclose(_np(out), tout.detach().numpy(), rtol=1e-9, atol=1e-10)
    g = rng.standard_normal(out.shape)
    (out * am.tensor(g, device=device)).sum().backward()
    (tout * torch.tensor(g)).sum().backward()
    _assert_grads(ours, theirs, (x, mem), (tx, tmem))


def test_encoder_and_decoder_stacks_match_torch(device):
    E, H, N, L, S = 8, 2, 2, 5, 4
    torch.manual_seed(5)
    t_enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(E, H, 16, 0.1, batch_first=True), 2,
                                        norm=torch.nn.LayerNorm(E), enable_nested_tensor=False)
    t_dec = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(E, H, 16, 0.1, batch_first=True), 2,
                                        norm=torch.nn.LayerNorm(E))
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 16, 0.1, batch_first=True), 2, norm=nn.LayerNorm(E))
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(E, H, 16, 0.1, batch_first=True), 2, norm=nn.LayerNorm(E))
    enc, t_enc = _pair(enc, t_enc, device)
    dec, t_dec = _pair(dec, t_dec, device)
    assert enc.layers[0].linear1.weight is not enc.layers[1].linear1.weight  # deep copies
    rng = np.random.default_rng(5)
    (src, tgt), (tsrc, ttgt) = _inputs(rng, device, (N, S, E), (N, L, E))
    kpm = _bool_mask(rng, (N, S))
    mem = enc(src, src_key_padding_mask=am.tensor(kpm, device=device))
    tmem = t_enc(tsrc, src_key_padding_mask=torch.tensor(kpm))
    causal = np.triu(np.ones((L, L), bool), 1)
    out = dec(tgt, mem, tgt_mask=am.tensor(causal, device=device), memory_key_padding_mask=am.tensor(kpm, device=device))
    tout = t_dec(ttgt, tmem, tgt_mask=torch.tensor(causal), memory_key_padding_mask=torch.tensor(kpm))
    np.testing.assert_allclose(_np(out), tout.detach().numpy(), rtol=1e-9, atol=1e-10)
    out.sum().backward()
    tout.sum().backward()
    _assert_grads(enc, t_enc, (src,), (tsrc,))
    _assert_grads(dec, t_dec, (tgt,), (ttgt,))


def test_layers_train_mode_uses_dropout(device):
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True).to(device)
    x = am.randn(2, 5, 8, device=device)
    assert not np.allclose(_np(layer(x)), _np(layer(x)))
    layer.eval()
    np.testing.assert_array_equal(_np(layer(x)), _np(layer(x)))


def _torch_rope(x, offset=0, base=10000.0):
    """RoPE in the complex form: z_i = x_i + j x_{i+d/2} times exp(j p theta_i) (rotate-half pairing)."""
    d = x.shape[-1]
    half = d // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / d)
    pos = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64)
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones(len(pos), half, dtype=torch.float64),
                                                                  pos[:, None] * theta[None])
    return torch.cat([z.real, z.imag], dim=-1)


def test_rotary_embedding_matches_complex_form_and_is_relative(device):
    rng = np.random.default_rng(6)
    (x,), (tx,) = _inputs(rng, device, (2, 3, 7, 8))
    rope = nn.RotaryEmbedding(8)
    out = rope(x, offset=3)
    ref = _torch_rope(tx, offset=3)
    np.testing.assert_allclose(_np(out), ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(out.shape)
    (out * am.tensor(g, device=device)).sum().backward()
    (ref * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    # <rope(q, p), rope(k, r)> depends on p - r only
    q = am.tensor(np.tile(rng.standard_normal(8), (6, 1)), device=device)
    k = am.tensor(np.tile(rng.standard_normal(8), (6, 1)), device=device)
    rq, rk = _np(rope(q)), _np(rope(k))
    np.testing.assert_allclose(rq[3] @ rk[1], rq[5] @ rk[3], rtol=1e-12)
    assert am.autograd.gradcheck(lambda t: rope(t, offset=1), (am.randn(1, 3, 8, dtype=am.float64, device=device,
                                                                        requires_grad=True),))


def test_sinusoidal_encoding_matches_formula(device):
    d, L = 6, 7
    pe = nn.SinusoidalPositionalEncoding(d, max_len=32).to(device)
    x = am.randn(2, L, d, device=device)
    pos = torch.arange(L, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    ref = torch.zeros(L, d, dtype=torch.float64)
    ref[:, 0::2] = torch.sin(pos * div)
    ref[:, 1::2] = torch.cos(pos * div)
    np.testing.assert_allclose(_np(pe(x)), _np(x) + ref.numpy()[None].astype(np.float32), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(pe(x[:, :3], offset=4)), _np(x[:, :3]) + ref.numpy()[None, 4:7].astype(np.float32),
                               rtol=1e-6, atol=1e-6)
    seq_first = nn.SinusoidalPositionalEncoding(d, max_len=32, batch_first=False).to(device)
    np.testing.assert_allclose(_np(seq_first(x.transpose(0, 1))), _np(pe(x).transpose(0, 1)), rtol=1e-6)
    assert "pe" not in pe.state_dict()
    with pytest.raises(RuntimeError, match="max_len"):
        pe(am.randn(1, 33, d, device=device))


def test_learned_positional_embedding(device):
    pos = nn.LearnedPositionalEmbedding(10, 4).to(device)
    x = am.randn(3, 5, 4, device=device, requires_grad=True)
    y = pos(x, offset=2)
    np.testing.assert_allclose(_np(y), _np(x) + _np(pos.weight)[None, 2:7], rtol=1e-6)
    y.sum().backward()
    grad = _np(pos.weight.grad)
    assert np.all(grad[2:7] == 3) and np.all(grad[:2] == 0) and np.all(grad[7:] == 0)
    assert list(pos.state_dict()) == ["weight"]


def test_self_attention_equals_mha_and_applies_rope(device):
    E, H, N, L = 8, 2, 2, 6
    rng = np.random.default_rng(7)
    sa = nn.SelfAttention(E, num_heads=H, is_causal=True).to(am.float64).to(device)
    mha = nn.MultiheadAttention(E, H, batch_first=True).to(am.float64).to(device)
    mha.load_state_dict(sa.state_dict())
    x = am.tensor(rng.standard_normal((N, L, E)), device=device)
    causal = am.tensor(np.triu(np.ones((L, L), bool), 1), device=device)
    np.testing.assert_allclose(_np(sa(x)), _np(mha(x, x, x, attn_mask=causal)[0]), rtol=1e-10, atol=1e-12)
    # with RoPE: compare with PyTorch doing the projection, complex-form rotation and SDPA
    rope_sa = nn.SelfAttention(E, num_heads=H, is_causal=True, rotary=nn.RotaryEmbedding(E // H))
    rope_sa = rope_sa.to(am.float64).to(device)
    w = {k: torch.tensor(_np(v)) for k, v in rope_sa.state_dict().items()}
    tx = torch.tensor(rng.standard_normal((N, L, E)), requires_grad=True)
    qkv = torch.nn.functional.linear(tx, w["in_proj_weight"], w["in_proj_bias"])
    q, k, v = (t.reshape(N, L, H, E // H).transpose(1, 2) for t in qkv.chunk(3, -1))
    o = torch.nn.functional.scaled_dot_product_attention(_torch_rope(q), _torch_rope(k), v, is_causal=True)
    ref = torch.nn.functional.linear(o.transpose(1, 2).reshape(N, L, E), w["out_proj.weight"], w["out_proj.bias"])
    x2 = am.tensor(tx.detach().numpy(), device=device, requires_grad=True)
    out = rope_sa(x2)
    np.testing.assert_allclose(_np(out), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    out.sum().backward()
    ref.sum().backward()
    np.testing.assert_allclose(_np(x2.grad), tx.grad.numpy(), rtol=1e-9, atol=1e-11)


def test_state_dict_round_trip_and_deepcopy(device):
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    twin = copy.deepcopy(layer)
    assert all(a is not b for a, b in zip(layer.parameters(), twin.parameters()))
    ref = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    assert list(layer.state_dict()) == list(ref.state_dict())
    assert [tuple(v.shape) for v in layer.state_dict().values()] == [tuple(v.shape) for v in ref.state_dict().values()]
