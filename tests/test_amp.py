"""Mixed precision: bfloat16, autocast's op policy against torch.autocast("cpu"), GradScaler
against torch.amp.GradScaler."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
import avila_ml.nn.functional as F
from avila_ml.amp import policy
from avila_ml.utils.checkpoint import checkpoint

TORCH_DT = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
            "float64": torch.float64}


def _np(t):
    return t.detach().float().numpy() if isinstance(t, torch.Tensor) else t.detach().float().numpy()


# ------------------------------------------------------------------------------- bfloat16
def test_bfloat16_dtype_round_trip_and_promotion():
    x = am.tensor([1.0, 1.00390625, 3.14159, -2.5e-3])
    b = x.bfloat16()
    ref = torch.tensor([1.0, 1.00390625, 3.14159, -2.5e-3]).bfloat16()
    assert b.dtype is am.bfloat16 and b.element_size() == 2
    np.testing.assert_array_equal(b.float().numpy(), ref.float().numpy())  # same rounding
    assert am.promote_types(am.bfloat16, am.float16) is am.float32
    assert am.promote_types(am.bfloat16, am.float32) is am.float32
    assert (b + 1.5).dtype is am.bfloat16 and (b + am.ones(4, dtype=am.float64)).dtype is am.float64
    assert am.zeros(2, dtype="bfloat16").dtype is am.bfloat16
    assert "dtype=avila_ml.bfloat16" in repr(b)


def test_bfloat16_ops_match_torch_in_bfloat16():
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((4, 8)), rng.standard_normal((3, 8))
    xa, xw = am.tensor(a).bfloat16(), am.tensor(w).bfloat16()
    ta, tw = torch.tensor(a).bfloat16(), torch.tensor(w).bfloat16()
    for ours, theirs in [
        (F.linear(xa, xw), TF.linear(ta, tw)),
        (xa.exp(), ta.exp()),
        (F.softmax(xa, -1), TF.softmax(ta, -1)),
        (F.layer_norm(xa, (8,)), TF.layer_norm(ta, (8,))),
        (am.einsum("ij,kj->ik", xa, xw), torch.einsum("ij,kj->ik", ta, tw)),
    ]:
        assert ours.dtype is am.bfloat16 and theirs.dtype == torch.bfloat16
        # one bfloat16 ulp (2^-8 relative) of difference: accumulation orders differ
        np.testing.assert_allclose(_np(ours), _np(theirs), rtol=2 ** -7, atol=2 ** -7)


def test_bfloat16_gradient_arrives_in_bfloat16():
    x = am.randn(3, 4).bfloat16().requires_grad_()
    (x * x).sum().backward()
    assert x.grad.dtype is am.bfloat16
    np.testing.assert_allclose(_np(x.grad), 2 * _np(x), rtol=0, atol=0)


def test_bfloat16_on_cuda_is_a_clear_error_and_missing_ml_dtypes_says_how():
    with pytest.raises(RuntimeError, match="CuPy has no bfloat16"):
        am.autocast("cuda", dtype=am.bfloat16)
    from avila_ml.dtypes import _MissingDtype
    missing = _MissingDtype("bfloat16")
    with pytest.raises(TypeError, match="ml_dtypes"):
        am.zeros(2, dtype=missing)


# ------------------------------------------------------------------------ the policy table
def _conv_case(d, transposed=False):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((2, 4) + (5,) * d)
    w = rng.standard_normal((4, 3) + (3,) * d) if transposed else rng.standard_normal((3, 4) + (3,) * d)
    name = f"conv_transpose{d}d" if transposed else f"conv{d}d"
    return name, getattr(F, name), getattr(TF, name), (x, w, rng.standard_normal(3))


def _cases():
    rng = np.random.default_rng(1)
    m = rng.standard_normal((4, 6))
    w = rng.standard_normal((5, 6))
    b = rng.standard_normal(5)
    q = rng.standard_normal((2, 3, 4, 8))
    t = rng.standard_normal((4, 6))
    pos = rng.uniform(0.1, 0.9, (4, 6))
    lbl = np.array([0, 2, 1, 5])
    vol = rng.standard_normal((1, 2, 4, 4, 4))
    cases = [
        # (name, ours, torch's, float args, extra non-float args)
        ("matmul", lambda a, c: a @ c, lambda a, c: a @ c, (m, w.T)),
        ("mm", am.mm, torch.mm, (m, w.T)),
        ("bmm", am.bmm, torch.bmm, (q[0], q[1].transpose(0, 2, 1))),
        ("baddbmm", am.baddbmm, torch.baddbmm, (q[0, :, :, :4], q[0], q[1].transpose(0, 2, 1))),
        ("addmm", am.addmm, torch.addmm, (b, m, w.T)),
        ("linear", F.linear, TF.linear, (m, w, b)),
        ("einsum", lambda a, c: am.einsum("ij,kj->ik", a, c), lambda a, c: torch.einsum("ij,kj->ik", a, c), (m, w)),
        ("scaled_dot_product_attention", F.scaled_dot_product_attention, TF.scaled_dot_product_attention, (q, q, q)),
        ("prod", lambda a: a.prod(), lambda a: a.prod(), (pos,)),
        ("avg_pool3d", lambda a: F.avg_pool3d(a, 2), lambda a: TF.avg_pool3d(a, 2), (vol,)),
        ("max_pool3d", lambda a: F.max_pool3d(a, 2), lambda a: TF.max_pool3d(a, 2), (vol,)),
        ("adaptive_avg_pool3d", lambda a: F.adaptive_avg_pool3d(a, 2), lambda a: TF.adaptive_avg_pool3d(a, 2), (vol,)),
        ("mse_loss", F.mse_loss, TF.mse_loss, (m, t)),
        ("l1_loss", F.l1_loss, TF.l1_loss, (m, t)),
        ("smooth_l1_loss", F.smooth_l1_loss, TF.smooth_l1_loss, (m, t)),
        ("huber_loss", F.huber_loss, TF.huber_loss, (m, t)),
        ("cross_entropy", lambda a: F.cross_entropy(a, am.tensor(lbl)), lambda a: TF.cross_entropy(a, torch.tensor(lbl)), (m,)),
        ("nll_loss", lambda a: F.nll_loss(a, am.tensor(lbl)), lambda a: TF.nll_loss(a, torch.tensor(lbl)), (m,)),
        ("binary_cross_entropy", F.binary_cross_entropy, TF.binary_cross_entropy, (pos, pos[::-1].copy())),
        ("binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits, (m, pos)),
        ("kl_div", lambda a, c: F.kl_div(a, c, reduction="batchmean"), lambda a, c: TF.kl_div(a, c, reduction="batchmean"), (m, pos)),
        ("cosine_embedding_loss", lambda a, c: F.cosine_embedding_loss(a, c, am.ones(4)),
         lambda a, c: TF.cosine_embedding_loss(a, c, torch.ones(4)), (m, t)),
        ("cat", lambda a, c: am.cat([a, c]), lambda a, c: torch.cat([a, c]), (m, t)),
        ("stack", lambda a, c: am.stack([a, c]), lambda a, c: torch.stack([a, c]), (m, t)),
        # not listed on the CPU: they run in their inputs' dtype
        ("softmax", lambda a: F.softmax(a, -1), lambda a: TF.softmax(a, -1), (m,)),
        ("log_softmax", lambda a: F.log_softmax(a, -1), lambda a: TF.log_softmax(a, -1), (m,)),
        ("sum", lambda a: a.sum(), lambda a: a.sum(), (m,)),
        ("mean", lambda a: a.mean(), lambda a: a.mean(), (m,)),
        ("cumsum", lambda a: a.cumsum(0), lambda a: a.cumsum(0), (m,)),
        ("norm", lambda a: a.norm(), lambda a: a.norm(), (m,)),
        ("logsumexp", lambda a: a.logsumexp(0), lambda a: a.logsumexp(0), (m,)),
        ("exp", lambda a: a.exp(), lambda a: a.exp(), (m,)),
        ("log", lambda a: a.log(), lambda a: a.log(), (pos,)),
        ("pow", lambda a: a.pow(2), lambda a: a.pow(2), (m,)),
        ("tanh", lambda a: a.tanh(), lambda a: a.tanh(), (m,)),
        ("relu", F.relu, TF.relu, (m,)),
        ("gelu", F.gelu, TF.gelu, (m,)),
        ("softplus", F.softplus, TF.softplus, (m,)),
        ("layer_norm", lambda a: F.layer_norm(a, (6,)), lambda a: TF.layer_norm(a, (6,)), (m,)),
        ("group_norm", lambda a: F.group_norm(a, 2), lambda a: TF.group_norm(a, 2), (m,)),
        ("add", lambda a, c: a + c, lambda a, c: a + c, (m, t)),
        ("atan2", am.atan2, torch.atan2, (m, t)),
        ("addcmul", am.addcmul, torch.addcmul, (m, t, t)),
    ]
    for d in (1, 2, 3):
        cases.append(_conv_case(d))
        cases.append(_conv_case(d, transposed=True))
        cases += _pad_cases(d)
    return cases


def _pad_cases(d):
    """F.pad over d dims in each mode, named by PyTorch's aten op (reflection_pad3d, constant and
    circular pads are unlisted: they run in the input dtype)."""
    x = np.random.default_rng(10 + d).standard_normal((2, 3) + (4, 5, 6)[:d])
    widths = (1, 2, 2, 1, 1, 1)[:2 * d]
    names = {"reflect": f"reflection_pad{d}d", "replicate": f"replication_pad{d}d",
             "constant": f"constant_pad{d}d", "circular": f"circular_pad{d}d"}
    return [(name, (lambda m: lambda a: F.pad(a, widths, mode=m))(mode),
             (lambda m: lambda a: TF.pad(a, widths, mode=m))(mode), (x,)) for mode, name in names.items()]


CASES = _cases()


def test_every_listed_cpu_op_has_a_row():
    names = {c[0] for c in CASES}
    listed = set().union(*policy.CPU.values())
    ours_only = {"conv4d", "conv_transpose4d", "convolution", "conv_transpose"}  # no torch twin
    assert listed - ours_only <= names, sorted(listed - ours_only - names)


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
@pytest.mark.parametrize("mix", ["float32", "low", "mixed", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_output_dtype_matches_torch_cpu_autocast(case, mix, low):
    name, ours, theirs, arrays = case
    if mix == "float64" and name in ("scaled_dot_product_attention",):
        pytest.skip("PyTorch's CPU flash kernel has no float64 under autocast")
    dts = {"float32": ["float32"] * len(arrays), "low": [low] * len(arrays), "float64": ["float64"] * len(arrays),
           "mixed": [low if i % 2 == 0 else "float32" for i in range(len(arrays))]}[mix]
    targs = [torch.tensor(a).to(TORCH_DT[d]) for a, d in zip(arrays, dts)]
    try:
        with torch.autocast("cpu", dtype=TORCH_DT[low]):
            expect = theirs(*targs)
    except RuntimeError:
        # PyTorch refuses this dtype mix (e.g. an unlisted op on mixed dtypes); ours must not
        # silently differ in kind: it either refuses too or promotes like PyTorch's eager mode
        pytest.skip(f"PyTorch refuses {name} with {dts}")
    aargs = [am.tensor(a).to(getattr(am, d)) for a, d in zip(arrays, dts)]
    with am.autocast("cpu", dtype=getattr(am, low)):
        got = ours(*aargs)
    assert got.dtype.name == str(expect.dtype).replace("torch.", ""), (name, dts)
    # values: against PyTorch's float64 result; inputs rounded to 8 (bfloat16) or 11 (float16)
    # mantissa bits, so a few of those ulps of the output's scale
    with torch.no_grad():
        exact = theirs(*[torch.tensor(a).to(TORCH_DT[d]).double() for a, d in zip(arrays, dts)])
    ulp = 2.0 ** -8 if "bfloat16" in dts or got.dtype is am.bfloat16 else 2.0 ** -11
    scale = float(np.abs(exact.numpy()).max()) or 1.0
    np.testing.assert_allclose(_np(got), exact.numpy(), rtol=0, atol=8 * ulp * scale)


def test_conv4d_runs_in_the_low_dtype_like_conv3d():
    x = am.randn(1, 2, 4, 4, 4, 4)
    w = am.randn(3, 2, 3, 3, 3, 3, requires_grad=True)
    with am.autocast("cpu"):
        y = F.conv4d(x, w, padding=1)
        yt = F.conv_transpose4d(y, w)
    assert y.dtype is am.bfloat16 and yt.dtype is am.bfloat16
    with am.no_grad():
        ref = F.conv4d(x, w, padding=1)
    np.testing.assert_allclose(_np(y), _np(ref), rtol=2 ** -6, atol=0.1)
    y.float().sum().backward()
    assert w.grad.dtype is am.float32


# ------------------------------------------------------------------ regions and gradients
def test_grads_arrive_in_parameter_dtype_and_match_torch():
    torch.manual_seed(0)
    tl1, tl2 = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)
    l1, l2 = am.nn.Linear(6, 8), am.nn.Linear(8, 3)
    for ours, theirs in ((l1, tl1), (l2, tl2)):
        ours.weight.data = am.tensor(theirs.weight.detach().numpy().copy())
        ours.bias.data = am.tensor(theirs.bias.detach().numpy().copy())
    xn = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    lbl = np.array([0, 1, 2, 1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tloss = TF.cross_entropy(tl2(torch.relu(tl1(torch.tensor(xn)))), torch.tensor(lbl))
    tloss.backward()
    with am.autocast("cpu", dtype=am.bfloat16):
        loss = F.cross_entropy(l2(F.relu(l1(am.tensor(xn)))), am.tensor(lbl))
    loss.backward()
    assert loss.dtype is am.float32
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=2e-2)
    for ours, theirs in ((l1, tl1), (l2, tl2)):
        for p, tp in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
            assert p.grad.dtype is am.float32
            np.testing.assert_allclose(_np(p.grad), tp.grad.numpy(), rtol=5e-2, atol=2e-2)


def test_nesting_enabled_false_and_decorator():
    x, w = am.ones(2, 3), am.ones(4, 3)
    with am.autocast("cpu", dtype=am.bfloat16):
        assert F.linear(x, w).dtype is am.bfloat16
        with am.autocast("cpu", enabled=False):
            assert F.linear(x, w).dtype is am.float32
            assert not am.is_autocast_enabled("cpu")
            with am.autocast("cpu", dtype=am.float16):
                assert F.linear(x, w).dtype is am.float16
            assert F.linear(x, w).dtype is am.float32
        assert F.linear(x, w).dtype is am.bfloat16
        # autocast("cuda") does not touch CPU tensors
        with am.autocast("cuda", enabled=False):
            assert F.linear(x, w).dtype is am.bfloat16
    assert F.linear(x, w).dtype is am.float32 and not am.is_autocast_enabled("cpu")

    @am.autocast("cpu")
    def f(a, b):
        return a @ b.mT

    assert f(x, w).dtype is am.bfloat16
    with am.cpu.amp.autocast():
        assert (x @ w.mT).dtype is am.bfloat16
    with am.amp.autocast("cpu", dtype=am.float16):
        assert am.get_autocast_dtype("cpu") is am.float16


def test_region_is_restored_after_an_exception():
    with pytest.raises(ValueError):
        with am.autocast("cpu"):
            raise ValueError("boom")
    assert not am.is_autocast_enabled("cpu")
    assert (am.ones(1, 2) @ am.ones(2, 1)).dtype is am.float32


def test_float64_is_not_cast_and_weight_casts_are_cached():
    x = am.ones(2, 3, dtype=am.float64)
    w = am.ones(4, 3, dtype=am.float64)
    with am.autocast("cpu"):
        assert F.linear(x, w).dtype is am.float64
    lin = am.nn.Linear(3, 3)
    calls = []
    from avila_ml.ops import elementwise
    orig = elementwise.Cast.forward

    def counting(self, x, dt):
        calls.append(x.shape)
        return orig(self, x, dt)

    elementwise.Cast.forward = counting
    try:
        with am.autocast("cpu"):
            h = lin(lin(lin(am.ones(2, 3))).float())
        weight_casts = [s for s in calls if s == (3, 3)]
        assert len(weight_casts) == 1  # cast once, reused by the three calls
        calls.clear()
        with am.autocast("cpu", cache_enabled=False):
            lin(lin(am.ones(2, 3)).float())
        assert len([s for s in calls if s == (3, 3)]) == 2
    finally:
        elementwise.Cast.forward = orig
    h.float().sum().backward()
    assert lin.weight.grad.dtype is am.float32


def test_backward_inside_the_region_runs_without_autocast():
    w = am.randn(3, 3, requires_grad=True)
    with am.autocast("cpu"):
        y = (am.randn(2, 3) @ w).float()
        (y * y).sum().backward()  # MatMul's backward must not be re-lowered or re-cast
    assert w.grad.dtype is am.float32


def test_checkpoint_recomputes_under_the_forwards_autocast_state():
    lin = am.nn.Linear(4, 4)
    x = am.randn(3, 4, requires_grad=True)
    with am.autocast("cpu"):
        y = checkpoint(lambda t: F.relu(lin(t)), x)
    assert y.dtype is am.bfloat16
    y.float().sum().backward()
    g_ck = (_np(x.grad), _np(lin.weight.grad))
    x.grad = None
    lin.zero_grad()
    with am.autocast("cpu"):
        y = F.relu(lin(x))
    y.float().sum().backward()
    np.testing.assert_array_equal(g_ck[0], _np(x.grad))
    np.testing.assert_array_equal(g_ck[1], _np(lin.weight.grad))


def test_bad_arguments():
    with pytest.raises(RuntimeError, match="device_type"):
        am.autocast("tpu")
    with pytest.raises(RuntimeError, match="bfloat16 and float16"):
        am.autocast("cpu", dtype=am.float64)
    with pytest.raises(RuntimeError, match="float16"):
        am.autocast("cuda", dtype=am.float32)


def test_cuda_policy_lists_pytorchs_fp32_ops():
    t = policy.policy_table("cuda")
    for name in ("softmax", "log_softmax", "layer_norm", "exp", "log", "pow", "sum", "mse_loss"):
        assert t[name] == "fp32"
    assert t["binary_cross_entropy"] == "banned" and t["conv4d"] == "lower"


# ------------------------------------------------------------------------------ GradScaler
def _scaler_run(lib, overflow_steps, n=200, **kw):
    """Train a tiny model n steps with inf/NaN injected into the grads at ``overflow_steps``;
    return the scale after every update and whether each step changed the parameters."""
    if lib == "torch":
        w = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.SGD([w], lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", **kw)
        ones = torch.ones(3)
    else:
        w = am.nn.Parameter(am.ones(3))
        opt = am.optim.SGD([w], lr=1e-3)
        scaler = am.amp.GradScaler("cpu", **kw)
        ones = am.ones(3)
    scales, stepped = [], []
    for i in range(n):
        opt.zero_grad()
        loss = (w * ones).sum()
        scaler.scale(loss).backward()
        if i in overflow_steps:
            w.grad[1] = float("inf") if i % 2 else float("nan")
        before = w.detach().clone() if lib == "torch" else w.detach().clone()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        changed = (w.detach() != before).any()
        stepped.append(bool(changed))
    return scales, stepped, scaler.state_dict()


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the scaled loss overflowing is the point
def test_grad_scaler_scale_sequence_equals_torch():
    overflow = {0, 1, 5, 17, 18, 19, 60, 61, 150, 151, 152, 199}
    kw = dict(init_scale=2.0 ** 10, growth_factor=2.0, backoff_factor=0.25, growth_interval=7)
    ours = _scaler_run("am", overflow, **kw)
    theirs = _scaler_run("torch", overflow, **kw)
    assert ours[0] == theirs[0]
    assert ours[1] == theirs[1] == [i not in overflow for i in range(200)]
    assert ours[2] == theirs[2]
    # growth saturates at float32's max like PyTorch (grown scale kept only while finite)
    big = dict(init_scale=2.0 ** 120, growth_interval=1)
    assert _scaler_run("am", set(), n=12, **big)[0] == _scaler_run("torch", set(), n=12, **big)[0]


def test_grad_scaler_unscale_and_state_dict():
    w = am.nn.Parameter(am.ones(2))
    opt = am.optim.SGD([w], lr=0.5)
    scaler = am.amp.GradScaler("cpu", init_scale=64.0)
    scaler.scale((w * am.tensor([1.0, 3.0])).sum()).backward()
    np.testing.assert_array_equal(w.grad.numpy(), [64.0, 192.0])
    scaler.unscale_(opt)
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 3.0])
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    scaler.update()
    sd = scaler.state_dict()
    other = am.amp.GradScaler("cpu")
    other.load_state_dict(sd)
    assert other.state_dict() == sd
    tsc = torch.amp.GradScaler("cpu")
    tsc.load_state_dict(sd)  # the same keys as PyTorch's
    assert tsc.get_scale() == sd["scale"]
    off = am.amp.GradScaler("cpu", enabled=False)
    assert off.state_dict() == {} and off.get_scale() == 1.0
    with pytest.raises(RuntimeError, match="empty"):
        other.load_state_dict({})
    with pytest.raises(ValueError, match="growth_factor"):
        am.amp.GradScaler("cpu", growth_factor=0.5)
    h = am.nn.Parameter(am.ones(2, dtype=am.float16))
    hopt = am.optim.SGD([h], lr=0.1)
    scaler.scale(h.sum()).backward()
    with pytest.raises(ValueError, match="FP16"):
        scaler.unscale_(hopt)
    assert am.cuda.amp.GradScaler(init_scale=4.0).get_scale() == 4.0
