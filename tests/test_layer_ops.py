"""nn.Transformer, RMSNorm, Unfold/Fold, PixelShuffle, distances, one_hot, affine_grid and
grid_sample against PyTorch (float64 values and gradients), beyond the op-table rows."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am

F = am.nn.functional
TOL = dict(rtol=1e-10, atol=1e-12)


def _np(t):
    return t.detach().cpu().numpy()


def _close(a, b, what=""):
    np.testing.assert_allclose(_np(a), _np(b), **TOL, err_msg=what)


GRID_CASES = list(itertools.product([2, 3], ["bilinear", "nearest"], ["zeros", "border", "reflection"], [False, True]))


@pytest.mark.parametrize("ndim,mode,padding_mode,align_corners", GRID_CASES,
                         ids=["{}d-{}-{}-ac{}".format(*c) for c in GRID_CASES])
def test_grid_sample_matches_torch(ndim, mode, padding_mode, align_corners, device):
    rng = np.random.default_rng(0)
    in_shape = (2, 3, 4, 5) if ndim == 2 else (2, 2, 3, 4, 5)
    grid_shape = (2, 3, 4, 2) if ndim == 2 else (2, 2, 3, 4, 3)
    x = rng.standard_normal(in_shape)
    g = rng.uniform(-1.6, 1.6, grid_shape)  # well outside [-1, 1]: every padding branch is hit
    tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(g, requires_grad=True)
    ax, ag = (am.tensor(a, requires_grad=True, device=device) for a in (x, g))
    t = TF.grid_sample(tx, tg, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    a = F.grid_sample(ax, ag, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    _close(a, t, "values")
    w = rng.standard_normal(tuple(t.shape))
    (t * torch.tensor(w)).sum().backward()
    (a * am.tensor(w, device=device)).sum().backward()
    _close(ax.grad, tx.grad, "input grad")
    if mode == "bilinear":
        _close(ag.grad, tg.grad, "grid grad")
    else:  # nearest: the output does not depend smoothly on the grid
        assert ag.grad is None and not tg.grad.abs().sum()


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_gradcheck_and_gradgradcheck(padding_mode):
    rng = np.random.default_rng(1)
    x = am.tensor(rng.standard_normal((1, 2, 3, 3)), requires_grad=True)
    g = am.tensor(rng.uniform(-1.3, 1.3, (1, 2, 2, 2)), requires_grad=True)
    f = lambda x, g: F.grid_sample(x, g, padding_mode=padding_mode, align_corners=False)  # noqa: E731
    assert am.autograd.gradcheck(f, (x, g))
    assert am.autograd.gradgradcheck(f, (x, g))


def test_grid_sample_identity_and_errors():
    """The identity affine grid reproduces the image (align_corners both ways)."""
    x = am.randn(2, 3, 4, 5, dtype=am.float64)
    for ac in (True, False):
        theta = am.tensor([[[1.0, 0, 0], [0, 1.0, 0]]] * 2, dtype=am.float64)
        grid = F.affine_grid(theta, (2, 3, 4, 5), align_corners=ac)
        np.testing.assert_allclose(_np(F.grid_sample(x, grid, align_corners=ac)), _np(x), atol=1e-12)
    with pytest.raises(ValueError, match="mode must be"):
        F.grid_sample(x, am.zeros(2, 1, 1, 2, dtype=am.float64), mode="bicubic")
    with pytest.raises(ValueError, match="padding_mode"):
        F.grid_sample(x, am.zeros(2, 1, 1, 2, dtype=am.float64), padding_mode="wrap")
    with pytest.raises(RuntimeError, match="grid"):
        F.grid_sample(x, am.zeros(2, 1, 1, 3, dtype=am.float64))
    with pytest.raises(RuntimeError, match="same batch size"):
        F.grid_sample(x, am.zeros(1, 1, 1, 2, dtype=am.float64))


@pytest.mark.parametrize("size", [(2, 3, 4, 5), (2, 1, 3, 4, 5), (1, 1, 1, 3)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_matches_torch(size, align_corners):
    rng = np.random.default_rng(2)
    theta = rng.standard_normal((size[0], len(size) - 2, len(size) - 1))
    tt, at = torch.tensor(theta, requires_grad=True), am.tensor(theta, requires_grad=True)
    t = TF.affine_grid(tt, size, align_corners=align_corners)
    a = F.affine_grid(at, size, align_corners=align_corners)
    _close(a, t)
    w = rng.standard_normal(tuple(t.shape))
    (t * torch.tensor(w)).sum().backward()
    (a * am.tensor(w)).sum().backward()
    _close(at.grad, tt.grad)


def test_affine_grid_errors():
    with pytest.raises(ValueError, match="Nx2x3"):
        F.affine_grid(am.zeros(1, 3, 4), (1, 1, 2, 2))
    with pytest.raises(ValueError, match="Nx3x4"):
        F.affine_grid(am.zeros(1, 2, 3), (1, 1, 2, 2, 2))
    with pytest.raises(ValueError, match="positive output size"):
        F.affine_grid(am.zeros(0, 2, 3), (0, 1, 2, 2))
    with pytest.raises(ValueError, match="4D and 5D"):
        F.affine_grid(am.zeros(1, 2, 3), (1, 2, 3))


def test_one_hot_matches_torch():
    x = np.array([[0, 3], [2, 1]])
    for n in (-1, 4, 6):
        np.testing.assert_array_equal(F.one_hot(am.tensor(x), n).numpy(), TF.one_hot(torch.tensor(x), n).numpy())
    assert F.one_hot(am.tensor(x)).dtype == am.int64
    assert F.one_hot(am.tensor(np.zeros(0, np.int64)), 3).shape == (0, 3)
    with pytest.raises(RuntimeError, match="non-negative"):
        F.one_hot(am.tensor([-1, 0]), 3)
    with pytest.raises(RuntimeError, match="smaller than num_classes"):
        F.one_hot(am.tensor([3]), 3)
    with pytest.raises(RuntimeError, match="integer dtype"):
        F.one_hot(am.tensor([1.0]), 3)


def test_pixel_unshuffle_inverts_shuffle_and_errors():
    x = am.randn(2, 3, 8, 6)
    np.testing.assert_array_equal(F.pixel_shuffle(F.pixel_unshuffle(x, 2), 2).numpy(), x.numpy())
    assert F.pixel_unshuffle(am.zeros(0, 1, 2, 2), 2).shape == (0, 4, 1, 1)
    with pytest.raises(RuntimeError, match="divisible by the square"):
        F.pixel_shuffle(am.zeros(1, 5, 2, 2), 2)
    with pytest.raises(RuntimeError, match="divisible by downscale_factor"):
        F.pixel_unshuffle(am.zeros(1, 1, 3, 4), 2)


def test_unfold_fold_errors():
    with pytest.raises(RuntimeError, match="Only 3D or 4D"):
        F.unfold(am.zeros(2, 3), 2)
    with pytest.raises(RuntimeError, match="divisible by the product of kernel_size"):
        F.fold(am.zeros(1, 5, 4), (3, 3), 2)
    with pytest.raises(RuntimeError, match="number of sliding blocks"):
        F.fold(am.zeros(1, 4, 5), (3, 3), 2)


def test_unfold_fold_gradgradcheck_large_kernel():
    x = am.randn(1, 1, 4, 4, dtype=am.float64, requires_grad=True)
    assert am.autograd.gradgradcheck(lambda x: F.unfold(x, 3, padding=1, stride=2), (x,))
    c = am.randn(1, 4, 4, dtype=am.float64, requires_grad=True)
    assert am.autograd.gradgradcheck(lambda c: F.fold(c, (3, 3), 2), (c,))


@pytest.mark.parametrize("name,args,kwargs,inputs", [
    ("RMSNorm", ((3, 4),), dict(eps=1e-6), [(2, 3, 4)]),
    ("RMSNorm", (4,), dict(elementwise_affine=False), [(5, 4)]),
    ("Unfold", ((2, 3),), dict(padding=1, stride=(1, 2)), [(2, 3, 4, 5)]),
    ("Fold", ((4, 5), (2, 2)), dict(), [(2, 8, 12)]),
    ("PixelShuffle", (2,), {}, [(2, 8, 3, 3)]),
    ("PixelUnshuffle", (3,), {}, [(2, 1, 6, 3)]),
    ("CosineSimilarity", (), dict(dim=-1), [(3, 4), (3, 4)]),
    ("PairwiseDistance", (), dict(p=1.5, keepdim=True), [(3, 4), (3, 4)]),
])
def test_modules_match_torch(name, args, kwargs, inputs):
    rng = np.random.default_rng(3)
    theirs = getattr(torch.nn, name)(*args, **kwargs).double()
    ours = getattr(am.nn, name)(*args, **kwargs, **({"dtype": am.float64} if name == "RMSNorm" else {}))
    assert repr(ours) == repr(theirs)
    sd = {k: v.numpy() + rng.standard_normal(v.shape) * 0.1 for k, v in theirs.state_dict().items()}
    theirs.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    ours.load_state_dict(sd)
    data = [rng.standard_normal(s) for s in inputs]
    tin = [torch.tensor(d, requires_grad=True) for d in data]
    ain = [am.tensor(d, requires_grad=True) for d in data]
    t, a = theirs(*tin), ours(*ain)
    _close(a, t)
    w = rng.standard_normal(tuple(t.shape))
    (t * torch.tensor(w)).sum().backward()
    (a * am.tensor(w)).sum().backward()
    for x, y in zip(ain, tin):
        _close(x.grad, y.grad)
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        _close(p.grad, q.grad, n)


def test_rms_norm_default_eps_is_machine_epsilon():
    x = np.array([[1e-9, -2e-9, 3e-9]])
    for dt in ("float32", "float64"):
        a = F.rms_norm(am.tensor(x.astype(dt)), (3,))
        t = TF.rms_norm(torch.tensor(x.astype(dt)), (3,))
        np.testing.assert_allclose(a.numpy(), t.numpy(), rtol=1e-6)


@pytest.mark.parametrize("batch_first,norm_first", list(itertools.product([False, True], [False, True])))
def test_transformer_matches_torch(batch_first, norm_first):
    kw = dict(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=16, dropout=0.0,
              batch_first=batch_first, norm_first=norm_first)
    torch.manual_seed(0)
    theirs = torch.nn.Transformer(**kw).double()
    ours = am.nn.Transformer(**kw, dtype=am.float64)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(4)
    S, T, N = 5, 4, 3
    src = rng.standard_normal((N, S, 8) if batch_first else (S, N, 8))
    tgt = rng.standard_normal((N, T, 8) if batch_first else (T, N, 8))
    pad = np.zeros((N, S), bool)
    pad[1, 3:] = True
    t_mask = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)
    a_mask = am.nn.Transformer.generate_square_subsequent_mask(T, dtype=am.float64)
    np.testing.assert_array_equal(a_mask.numpy(), t_mask.numpy())
    ts, tt = torch.tensor(src, requires_grad=True), torch.tensor(tgt, requires_grad=True)
    as_, at = am.tensor(src, requires_grad=True), am.tensor(tgt, requires_grad=True)
    out_t = theirs(ts, tt, tgt_mask=t_mask, src_key_padding_mask=torch.tensor(pad),
                   memory_key_padding_mask=torch.tensor(pad))
    out_a = ours(as_, at, tgt_mask=a_mask, src_key_padding_mask=am.tensor(pad), memory_key_padding_mask=am.tensor(pad))
    np.testing.assert_allclose(_np(out_a), _np(out_t), rtol=1e-9, atol=1e-11)
    w = rng.standard_normal(tuple(out_t.shape))
    (out_t * torch.tensor(w)).sum().backward()
    (out_a * am.tensor(w)).sum().backward()
    np.testing.assert_allclose(_np(as_.grad), _np(ts.grad), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(_np(at.grad), _np(tt.grad), rtol=1e-9, atol=1e-11)
    tp = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        np.testing.assert_allclose(_np(p.grad), _np(tp[n].grad), rtol=1e-9, atol=1e-11, err_msg=n)


def test_transformer_init_and_errors():
    m = am.nn.Transformer(d_model=16, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32)
    w = _np(m.encoder.layers[0].linear1.weight)
    bound = np.sqrt(6 / (16 + 32))  # xavier_uniform_ on every matrix
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert m.encoder.norm is not None and m.decoder.norm is not None
    with pytest.raises(RuntimeError, match="batch number of src and tgt"):
        m(am.zeros(5, 2, 16), am.zeros(4, 3, 16))
    with pytest.raises(RuntimeError, match="d_model=16"):
        m(am.zeros(5, 2, 16), am.zeros(4, 2, 8))
