"""The oneDNN convolutions (``avila_ml.cpu_accel``) against PyTorch and the NumPy path.

The NumPy path stays the reference: the float64 tables of test_conv.py / test_conv4d.py run
it (float64 never reaches oneDNN, checked here), and this file runs the same tables in float32
through oneDNN, forward and every gradient (double backward included), against PyTorch in
float64 and against the NumPy "gemm" algorithm in float32. Also: that oneDNN actually ran, the
LRU bound of the primitive cache, the checks at the ctypes boundary, thread control, and the
behaviour without the library (a subprocess with AVILA_ML_DNNL_LIBRARY pointing nowhere).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.backends import set_conv_algorithm
from avila_ml.cpu_accel import _conv as accel
from avila_ml.cpu_accel import _dnnl as dnnl
from avila_ml.cpu_accel import _native
from avila_ml.nn import functional as F

from test_conv import CONV_TABLE, CONVT_TABLE, _torch_conv
from test_conv4d import TABLE as CONV4D_TABLE, TTABLE as CONVT4D_TABLE, torch_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_onednn = pytest.mark.skipif(not dnnl.available(), reason=f"oneDNN not available: {dnnl.absent_reason()}")
# the weight-gradient plan of a convolution with a bias: "weight" where the compiled channel sum
# takes the bias gradient (accel._bias_apart), else oneDNN's "weight_bias" pass
BIAS_KIND = "weight" if accel._bias_apart_on() and _native.available() else "weight_bias"
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")


@pytest.fixture(autouse=True)
def _onednn_algorithm():
    if dnnl.available():
        set_conv_algorithm("onednn")
    yield
    set_conv_algorithm("auto")


@pytest.fixture
def calls(monkeypatch):
    """Counts the oneDNN primitive executions (1-3 d calls; 4-d runs one 3-d call per kind)."""
    seen = []
    real = accel._run3

    def spy(kind, *args, **kwargs):
        seen.append(kind)
        return real(kind, *args, **kwargs)
    monkeypatch.setattr(accel, "_run3", spy)
    return seen


def _f32_close(ours, ref64, scale_from=None, rtol=2e-5):
    """float32 result vs a float64 reference: error within rtol of the reference's magnitude."""
    ours = np.asarray(ours, dtype=np.float64)
    ref64 = np.asarray(ref64, dtype=np.float64)
    assert ours.shape == ref64.shape, (ours.shape, ref64.shape)
    scale = np.abs(ref64 if scale_from is None else scale_from).max() + 1e-30
    np.testing.assert_allclose(ours, ref64, rtol=0, atol=rtol * scale)


# ------------------------------------------------------------------------------ 1-3 d vs PyTorch
def _conv_vs_torch(d, arrs, kw, rng, transposed=False):
    """conv{d}d (or conv_transpose{d}d) in float32 (through oneDNN under "auto") vs PyTorch in
    float64 on the same float32-rounded inputs ``arrs = [x, w, b]``: forward and the three
    gradients."""
    x, w, b = (am.tensor(a.astype(np.float32), requires_grad=True) for a in arrs)
    tx, tw, tb = (torch.tensor(a.astype(np.float32).astype(np.float64), requires_grad=True) for a in arrs)
    if transposed:
        y = getattr(F, f"conv_transpose{d}d")(x, w, b, **kw)
        ty = getattr(TF, f"conv_transpose{d}d")(tx, tw, tb, **kw)
    else:
        y = getattr(F, f"conv{d}d")(x, w, b, **kw)
        ty = _torch_conv(d, tx, tw, tb, kw)
    assert y.dtype == am.float32
    _f32_close(y.detach().numpy(), ty.detach().numpy())
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(am.tensor(g.astype(np.float32)))
    ty.backward(torch.tensor(g.astype(np.float32).astype(np.float64)))
    for ours, theirs in ((x, tx), (w, tw), (b, tb)):
        _f32_close(ours.grad.numpy(), theirs.grad.numpy())


@needs_onednn
@pytest.mark.parametrize("row", CONV_TABLE, ids=lambda r: f"conv{r[0]}d-{r[6]}")
def test_conv_float32_onednn_matches_torch(row, calls):
    d, N, cin, cout, S, K, kw = row
    rng = np.random.default_rng(0)
    shape = ((N,) if N else ()) + (cin,) + S
    groups = kw.get("groups", 1)
    _conv_vs_torch(d, [rng.standard_normal(shape), rng.standard_normal((cout, cin // groups) + K),
                       rng.standard_normal(cout)], kw, rng)
    # the bias is added inside the forward convolution and its gradient comes from the weight
    # gradient's pass or the compiled channel sum (BIAS_KIND; where the weight gradient is one
    # oneDNN convolution, not offsets stacked into a 2-d one)
    weight_kind = {BIAS_KIND} if d < 3 else {"weight", "weight_bias"}
    assert "forward_bias" in calls and "transpose" in calls and "forward" not in calls, calls
    assert len(set(calls) & weight_kind) == 1 and len(set(calls)) == 3, calls


@needs_onednn
@pytest.mark.parametrize("row", CONVT_TABLE, ids=lambda r: f"convT{r[0]}d-{r[6]}")
def test_conv_transpose_float32_onednn_matches_torch(row, calls):
    d, N, cin, cout, S, K, kw = row
    rng = np.random.default_rng(1)
    shape = ((N,) if N else ()) + (cin,) + S
    groups = kw.get("groups", 1)
    _conv_vs_torch(d, [rng.standard_normal(shape), rng.standard_normal((cin, cout // groups) + K),
                       rng.standard_normal(cout)], kw, rng, transposed=True)
    assert calls, "oneDNN did not run"


@needs_onednn
def test_double_backward_through_onednn_matches_torch(calls):
    """d/dx of (grad_w . v): the backward's own convolutions run through oneDNN too."""
    rng = np.random.default_rng(5)
    xa = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    wa = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    va = rng.standard_normal(wa.shape).astype(np.float32)
    x, w = am.tensor(xa, requires_grad=True), am.tensor(wa, requires_grad=True)
    tx, tw = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (xa, wa))
    kw = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    (gw,) = am.autograd.grad(F.conv2d(x, w, **kw).pow(2).sum(), [w], create_graph=True)
    (tgw,) = torch.autograd.grad(TF.conv2d(tx, tw, **kw).pow(2).sum(), [tw], create_graph=True)
    _f32_close(gw.detach().numpy(), tgw.detach().numpy())
    (gx,) = am.autograd.grad((gw * am.tensor(va)).sum(), [x])
    (tgx,) = torch.autograd.grad((tgw * torch.tensor(va.astype(np.float64))).sum(), [tx])
    _f32_close(gx.numpy(), tgx.numpy(), rtol=5e-5)
    assert {"forward", "transpose", "weight"} <= set(calls)


# ------------------------------------------------------------------------------ 4 d vs reference
@needs_onednn
@pytest.mark.parametrize("row", CONV4D_TABLE, ids=lambda r: str(r[2]))
def test_conv4d_float32_onednn_matches_reference(row, calls):
    """conv4d through oneDNN (kernel-time offsets stacked into channels) vs the conv3d-sum
    reference of test_conv4d.py in float64, forward and every gradient."""
    xs, ws, kw = row
    rng = np.random.default_rng(0)
    unbatched = xs[0] is None
    xa = rng.standard_normal(xs[1:] if unbatched else xs).astype(np.float32)
    wa = rng.standard_normal(ws).astype(np.float32)
    ba = rng.standard_normal(ws[0]).astype(np.float32)
    x, w, b = (am.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    y = F.conv4d(x, w, b, **kw)
    tx, tw, tb, ty = torch_reference(xa, wa, ba, kw, unbatched)
    _f32_close(y.detach().numpy(), ty.detach().numpy())
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    y.backward(am.tensor(g))
    ty.backward(torch.tensor(g.astype(np.float64)))
    for ours, theirs in ((x, tx), (w, tw), (b, tb)):
        ref = theirs.grad.numpy()
        _f32_close(ours.grad.numpy(), ref[0] if (unbatched and ours is x) else ref)
    # the input-stacked forward adds the bias in its 3-d convolution, the output-stacked one
    # starts its sums from it; the stacked weight gradient leaves the bias gradient to NumPy
    assert len(set(calls) & {"forward", "forward_bias"}) == 1, calls
    assert sorted(set(calls) - {"forward", "forward_bias"}) == ["transpose", "weight"], calls


@needs_onednn
@pytest.mark.parametrize("row", CONVT4D_TABLE, ids=lambda r: str(r[2]))
def test_conv_transpose4d_float32_onednn_matches_numpy(row):
    """conv_transpose4d in float32 through oneDNN vs the NumPy path in float64 (the reference
    of test_conv4d.py checks that one against PyTorch)."""
    xs, ws, kw = row
    rng = np.random.default_rng(1)
    groups = kw.get("groups", 1)
    arrs = [rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32),
            rng.standard_normal(ws[1] * groups).astype(np.float32)]
    outs = {}
    for algo, dt in (("onednn", np.float32), ("gemm", np.float64)):
        set_conv_algorithm(algo)
        x, w, b = (am.tensor(a.astype(dt), requires_grad=True) for a in arrs)
        y = F.conv_transpose4d(x, w, b, **kw)
        y.backward(am.tensor(np.cos(np.arange(y.numel())).reshape(y.shape).astype(dt)))
        outs[algo] = [y.detach().numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()]
    for ours, ref in zip(outs["onednn"], outs["gemm"]):
        _f32_close(ours, ref)


@needs_onednn
def test_conv4d_onednn_causal_time_axis_is_exact():
    """Changing frame t0 leaves every earlier output frame bitwise unchanged through oneDNN."""
    rng = np.random.default_rng(3)
    xa = rng.standard_normal((1, 2, 6, 4, 4, 4)).astype(np.float32)
    w = am.tensor(rng.standard_normal((2, 2, 3, 3, 3, 3)).astype(np.float32))
    modes = ("causal", "circular", "circular", "zeros")
    y0 = F.conv4d(am.tensor(xa), w, padding=1, padding_mode=modes).numpy()
    for t0 in (5, 2, 0):
        xb = xa.copy()
        xb[:, :, t0] = rng.standard_normal(xb[:, :, t0].shape)
        y1 = F.conv4d(am.tensor(xb), w, padding=1, padding_mode=modes).numpy()
        changed = np.abs(y1 - y0).max(axis=(0, 1, 3, 4, 5))
        assert np.all(changed[:t0] == 0) and changed[t0] > 0, changed


@needs_onednn
def test_stacked_channels_padded_to_16_and_weight_layout():
    """The 4-d stacking: channel c * K_t + k of stacked frame n * T_out + i is the input frame
    i * s + k * d - pad (zero outside), the padding channels are zero; only the weight gradient's
    stacking (``align``) pads, the forward's and input gradient's hold the real channels."""
    from avila_ml.ops._conv_geometry import ConvGeometry
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 5, 2, 2, 2)).astype(np.float32)
    geom = ConvGeometry((2, 1, 1, 1), (1, 0, 0, 0), (1, 0, 0, 0), (2, 1, 1, 1), 1)
    KT = 2
    To = geom.out_size(x.shape[2:], (KT, 1, 1, 1))[0]
    unpadded = accel._Stacking(geom, x.shape, (KT, 1, 1, 1), 1, 1)
    assert (unpadded.real, unpadded.cgp) == (6, 6)
    st4 = accel._Stacking(geom, x.shape, (KT, 1, 1, 1), 1, 1, align=True)
    cg, real, cgp = st4.cg, st4.real, st4.cgp
    assert (cg, real, cgp) == (3, 6, 16)
    np.testing.assert_array_equal(unpadded.stack(x, (0, 2, 0, To)).reshape(2, To, real, 2, 2, 2),
                                  st4.stack(x, (0, 2, 0, To)).reshape(2, To, cgp, 2, 2, 2)[:, :, :real])
    st = st4.stack(x, (0, 2, 0, To)).reshape(2, To, cgp, 2, 2, 2)
    part = st4.stack(x, (1, 2, 1, To)).reshape(To - 1, cgp, 2, 2, 2)
    np.testing.assert_array_equal(part, st[1, 1:])
    for n in range(2):
        for i in range(To):
            for c in range(3):
                for k in range(KT):
                    t = i * 2 + k * 2 - 1
                    want = x[n, c, t] if 0 <= t < 5 else 0
                    np.testing.assert_array_equal(st[n, i, c * KT + k], want)
    assert not st[:, :, real:].any()


@needs_onednn
@pytest.mark.parametrize("deeper", [True, False], ids=["deeper before padding", "padding before deeper"])
def test_weight_stacking_order_and_gradient(monkeypatch, deeper):
    """The Conv4d weight gradient's stacking: with DEEPER_BEFORE_PADDING an unpadded deeper
    stacking (kernel offsets of two axes in channels, a 2-d inner convolution) is taken before
    a padded shallower one; without it each depth tries unpadded then padded first. Either way
    the chosen plan is a JIT kernel where one exists, and the weight gradient matches PyTorch's
    float64 reference (conv3d summed over the time offsets)."""
    monkeypatch.setattr(accel, "DEEPER_BEFORE_PADDING", deeper)
    from avila_ml.ops._conv_geometry import ConvGeometry
    xs, ws = (1, 2, 6, 5, 5, 5), (4, 2, 3, 3, 3, 3)
    geom = ConvGeometry((1,) * 4, (1,) * 4, (1,) * 4, (1,) * 4, 1)
    st = accel._weight_stacking(geom, xs, ws[2:], ws[0], 1)
    first = accel._Stacking(geom, xs, ws[2:], ws[0], 1)  # 6 real channels: JIT only padded?
    two = accel._Stacking(geom, xs, ws[2:], ws[0], 2)
    if first.weight_plan().jit:
        assert (st.m, st.cgp) == (1, first.real)
    elif deeper and two.weight_plan().jit:
        assert (st.m, st.cgp) == (2, two.real)  # 18 channels, no padding
    else:
        assert st.m == 1 and st.cgp == 16
    rng = np.random.default_rng(21)
    xa, wa, ga = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal((1, 4, 6, 5, 5, 5))
    set_conv_algorithm("onednn")
    try:
        x, w = (am.tensor(a.astype(np.float32), requires_grad=True) for a in (xa, wa))
        F.conv4d(x, w, padding=1).backward(am.tensor(ga.astype(np.float32)))
    finally:
        set_conv_algorithm("auto")
    tx, tw, tb, ty = torch_reference(xa.astype(np.float32), wa.astype(np.float32), np.zeros(4), {"padding": 1}, False)
    ty.backward(torch.tensor(ga.astype(np.float32).astype(np.float64)))
    _f32_close(w.grad.numpy(), tw.grad.numpy())
    _f32_close(x.grad.numpy(), tx.grad.numpy())


@needs_onednn
@pytest.mark.parametrize("route", ["workers", "team", "spinning policy"])
def test_stacked_blocks_on_workers_or_the_team(monkeypatch, route):
    """Blocks of a stacked Conv4d run on the worker threads, or (below _WORKER_MIN_MACS per
    block) one after the other on the calling thread's OpenMP team, except under a spinning
    OpenMP policy (``_parts_wanted``: a process that loaded another OpenMP runtime first, as
    this test process does with PyTorch), where they stay on the workers: forward and the three
    gradients match PyTorch's float64 reference either way, with the example's padding modes
    and strides and several blocks per pass."""
    monkeypatch.setattr(accel, "_WORKER_MIN_MACS", 0 if route == "workers" else 1 << 62)
    monkeypatch.setattr(accel, "_parts_wanted", lambda: route == "spinning policy")
    monkeypatch.setattr(accel, "_MIN_BLOCK_BYTES", 1 << 14)  # several blocks
    monkeypatch.setattr(accel, "_MIN_TRANSPOSE_BLOCK_BYTES", 1 << 14)
    seen = []
    real = accel._Stacking._on_workers
    monkeypatch.setattr(accel._Stacking, "_on_workers", lambda self, b: seen.append((len(b), real(self, b))) or seen[-1][1])
    kw = dict(stride=(1, 2, 2, 2), padding=1, padding_mode=("causal", "circular", "circular", "circular"))
    rng = np.random.default_rng(22)
    xa, wa, ba = rng.standard_normal((3, 2, 5, 6, 6, 6)), rng.standard_normal((5, 2, 3, 3, 3, 3)), rng.standard_normal(5)
    set_conv_algorithm("onednn")
    try:
        x, w, b = (am.tensor(a.astype(np.float32), requires_grad=True) for a in (xa, wa, ba))
        y = F.conv4d(x, w, b, **kw)
        ga = np.cos(np.arange(y.numel())).reshape(tuple(y.shape))
        y.backward(am.tensor(ga.astype(np.float32)))
    finally:
        set_conv_algorithm("auto")
    assert any(n > 1 for n, _ in seen) and all(on == (route != "team") for n, on in seen if n > 1)
    tx, tw, tb, ty = torch_reference(*(a.astype(np.float32) for a in (xa, wa, ba)), kw, False)
    ty.backward(torch.tensor(ga))
    for ours, ref in ((y.detach().numpy(), ty), (x.grad.numpy(), tx.grad), (w.grad.numpy(), tw.grad),
                      (b.grad.numpy(), tb.grad)):
        _f32_close(ours, ref.detach().numpy())


# ------------------------------------------------------------------------------ dispatch rules
@needs_onednn
def test_float64_stays_on_numpy_and_auto_uses_onednn_for_float32(calls):
    rng = np.random.default_rng(8)
    xa, wa = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    set_conv_algorithm("onednn")
    F.conv2d(am.tensor(xa), am.tensor(wa), padding=1)
    assert calls == []
    set_conv_algorithm("auto")
    y32 = F.conv2d(am.tensor(xa.astype(np.float32)), am.tensor(wa.astype(np.float32)), padding=1)
    assert calls == ["forward"]
    set_conv_algorithm("gemm")
    ref = F.conv2d(am.tensor(xa.astype(np.float32)), am.tensor(wa.astype(np.float32)), padding=1)
    assert calls == ["forward"]  # a forced NumPy algorithm does not take oneDNN
    _f32_close(y32.numpy(), ref.numpy())


@needs_onednn
def test_non_contiguous_inputs_are_copied_not_passed(calls):
    rng = np.random.default_rng(9)
    xa = rng.standard_normal((2, 3, 8, 9)).astype(np.float32)
    wa = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    xv = am.tensor(xa).transpose(2, 3)          # a strided view
    y = F.conv2d(xv, am.tensor(wa), padding=1)
    ref = TF.conv2d(torch.tensor(xa).transpose(2, 3).double(), torch.tensor(wa).double(), padding=1)
    _f32_close(y.numpy(), ref.numpy())
    assert calls == ["forward"]


@needs_onednn
def test_primitive_cache_is_bounded_lru(monkeypatch):
    monkeypatch.setattr(accel, "CACHE_SIZE", 3)
    accel.clear_cache()
    rng = np.random.default_rng(10)
    w = am.tensor(rng.standard_normal((2, 2, 3)).astype(np.float32))
    for n in range(5, 11):
        xa = rng.standard_normal((1, 2, n)).astype(np.float32)
        y = F.conv1d(am.tensor(xa), w, padding=1)
        ref = TF.conv1d(torch.tensor(xa).double(), torch.tensor(w.numpy()).double(), padding=1)
        _f32_close(y.numpy(), ref.numpy())
        assert accel.cache_info()["size"] <= 3
    assert accel.cache_info() == {"size": 3, "capacity": 3}
    keys = [k[1] for k in accel._cache]
    assert keys == [(1, 2, 8), (1, 2, 9), (1, 2, 10)]  # the least recently used went first
    accel.clear_cache()


@needs_onednn
def test_boundary_checks_refuse_bad_buffers():
    from avila_ml.ops._conv_geometry import ConvGeometry
    lib = dnnl.load()
    geom3 = ((1,), (1,), (0,), (0,))
    plan = accel._plan(lib, "forward", (1, 2, 6), (3, 2, 3), (1, 3, 4), geom3)
    x = np.zeros((1, 2, 6), np.float32)
    w = np.zeros((3, 2, 3), np.float32)
    y = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        plan.run({"x": np.zeros((1, 6, 2), np.float32).transpose(0, 2, 1), "w": w, "y": y})
    with pytest.raises(TypeError, match="float32"):
        plan.run({"x": x.astype(np.float64), "w": w, "y": y})
    with pytest.raises(ValueError, match="bytes"):
        plan.run({"x": x, "w": w, "y": np.zeros((1, 3, 5), np.float32)})
    with pytest.raises(TypeError, match="NumPy array"):
        plan.run({"x": list(x.ravel()), "w": w, "y": y})
    x[:] = 1
    w[:] = 1
    plan.run({"x": x, "w": w, "y": y})
    np.testing.assert_array_equal(y, np.full((1, 3, 4), 6.0, np.float32))
    assert accel.conv_forward(x.astype(np.float64), w, ConvGeometry((1,), (0,), (0,), (1,), 1)) is None


@needs_onednn
def test_openmp_threads_follow_blas():
    from threadpoolctl import threadpool_info
    from avila_ml.ops._cpu_threads import blas_threads
    dnnl.load()
    omp = [m for m in threadpool_info() if m["user_api"] == "openmp"
           and os.path.basename(m["filepath"]).startswith(("libgomp.so", "libiomp5.so"))]
    assert omp, "oneDNN's OpenMP runtime is not visible to threadpoolctl"
    assert all(m["num_threads"] == blas_threads() for m in omp)


def _python(code, drop=(), **env):
    """Run ``code`` in a fresh interpreter with this checkout first on the path, the variables
    ``drop`` removed from the environment and ``env`` added."""
    e = {k: v for k, v in os.environ.items() if k not in drop}
    e["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)


def test_without_the_library_numpy_runs_and_a_note_is_given_once():
    code = """
import warnings, numpy as np, avila_ml as am
from avila_ml.nn import functional as F
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    for _ in range(3):
        y = F.conv1d(am.ones(1, 1, 5), am.ones(1, 1, 3), padding=1)
print(y.numpy().ravel().tolist())
print(sum("oneDNN" in str(r.message) for r in rec), am.cpu_accel.is_available())
try:
    am.backends.set_conv_algorithm("onednn")
except RuntimeError as e:
    print("refused:", "set_conv_algorithm('onednn')" in str(e), "could not be used" in str(e))
"""
    r = _python(code, AVILA_ML_DNNL_LIBRARY=os.path.join(ROOT, "no-such-libdnnl.so.3"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["[2.0, 3.0, 3.0, 3.0, 2.0]", "1 False", "refused: True True"], r.stdout


@needs_onednn
def test_env_var_selects_the_library():
    r = _python("import avila_ml as am; print(am.cpu_accel.is_available(), am.cpu_accel.library_path())",
                AVILA_ML_DNNL_LIBRARY=dnnl.library_path())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"True {dnnl.library_path()}"


@needs_onednn
@pytest.mark.parametrize("frames", [1, 3, 8])
def test_conv4d_frame_blocks_match_numpy(monkeypatch, frames):
    """The 4-d path in blocks of 1 frame, of 3 (runs within a sample, a short tail), and of 8
    (two whole samples per block) gives the NumPy path's forward and gradients."""
    rng = np.random.default_rng(11)
    xa = rng.standard_normal((3, 2, 5, 4, 3, 4)).astype(np.float32)
    wa = rng.standard_normal((3, 2, 3, 2, 3, 2)).astype(np.float32)
    kw = dict(padding=(1, 1, 0, 1), stride=(1, 1, 1, 2))
    from avila_ml.ops._conv_geometry import ConvGeometry
    geom = ConvGeometry((1, 1, 1, 2), (1, 1, 0, 1), (1, 1, 0, 1), (1, 1, 1, 1), 1)
    frame = accel._Stacking(geom, xa.shape, wa.shape[2:], 3, 1).row_bytes
    monkeypatch.setattr(accel, "_budget", lambda *a, **k: frames * frame)
    assert len(accel._blocks(3, 5, frame, frames * frame)) == {1: 15, 3: 6, 8: 3}[frames]
    outs = {}
    for algo, dt in (("onednn", np.float32), ("gemm", np.float64)):
        set_conv_algorithm(algo)
        x, w = am.tensor(xa.astype(dt), requires_grad=True), am.tensor(wa.astype(dt), requires_grad=True)
        y = F.conv4d(x, w, **kw)
        y.backward(am.tensor(np.sin(np.arange(y.numel())).reshape(y.shape).astype(dt)))
        outs[algo] = [y.detach().numpy(), x.grad.numpy(), w.grad.numpy()]
    for ours, ref in zip(outs["onednn"], outs["gemm"]):
        _f32_close(ours, ref)


@needs_onednn
@pytest.mark.parametrize("xs,ws,m,kw", [
    ((2, 3, 5, 4, 4, 5), (4, 3, 3, 2, 3, 2), 1, dict(stride=(2, 1, 1, 2), pad=(1, 0, 1, 1), dilation=(1, 2, 1, 1))),
    ((2, 3, 5, 4, 4, 5), (4, 3, 3, 2, 3, 2), 2, dict(stride=(2, 1, 1, 2), pad=(1, 0, 1, 1), dilation=(1, 2, 1, 1))),
    ((1, 4, 5, 6, 4, 4), (4, 2, 2, 3, 2, 3), 2, dict(stride=(1, 2, 1, 1), pad=(0, 2, 1, 1), dilation=(2, 1, 1, 1), groups=2)),
    ((2, 4, 6, 5, 7), (6, 4, 3, 3, 2), 1, dict(stride=(1, 2, 1), pad=(1, 1, 0), dilation=(1, 1, 2))),
])
def test_stacked_offsets_match_numpy_for_each_depth(xs, ws, m, kw):
    """A d-dim convolution as a (d - m)-dim one over stacked kernel offsets (4-d as 3-d or 2-d,
    3-d as 2-d: the route taken where oneDNN has no JIT weight gradient): forward, input and
    weight gradients against the NumPy algorithm in float64."""
    from avila_ml.ops import _conv_gemm
    from avila_ml.ops._conv_geometry import ConvGeometry
    d = len(xs) - 2
    G = kw.get("groups", 1)
    geom = ConvGeometry(kw["stride"], kw["pad"], kw["pad"], kw["dilation"], G)
    rng = np.random.default_rng(12)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    o = geom.out_size(xs[2:], ws[2:])
    gy = rng.standard_normal((xs[0], ws[0]) + o).astype(np.float32)
    st = accel._Stacking(geom, xs, ws[2:], ws[0], m)
    assert len(st.shapes(st.blocks(0)[0])[0]) == d - m + 2
    x64, w64, gy64 = (a.astype(np.float64) for a in (x, w, gy))
    _f32_close(st.forward(x, w), _conv_gemm.conv_forward(x64, w64, geom))
    _f32_close(st.transpose(gy, w), _conv_gemm.conv_transpose(gy64, w64, geom, xs[2:]))
    _f32_close(st.weight_grad(x, gy), _conv_gemm.conv_weight_grad(x64, gy64, geom, ws[2:]))


@needs_onednn
@pytest.mark.parametrize("xs,ws,m,kw,align", [
    ((2, 3, 5, 4, 4, 5), (4, 3, 3, 2, 3, 2), 1, dict(stride=(2, 1, 1, 2), pad=(1, 0, 1, 1), dilation=(1, 2, 1, 1)), True),
    ((2, 3, 5, 4, 4, 5), (4, 3, 3, 2, 3, 2), 2, dict(stride=(2, 1, 1, 2), pad=(1, 0, 1, 1), dilation=(1, 2, 1, 1)), False),
    ((1, 4, 5, 6, 4, 4), (4, 2, 2, 3, 2, 3), 2, dict(stride=(1, 2, 1, 1), pad=(0, 2, 1, 1), dilation=(2, 1, 1, 1), groups=2),
     False),
    ((1, 2, 2, 3, 3, 3), (2, 2, 3, 3, 2, 1), 2, dict(stride=(1, 1, 1, 1), pad=(2, 0, 1, 0), dilation=(1, 1, 1, 1)), True),
])
@pytest.mark.parametrize("frames", [1, 100])
def test_stacked_block_zeroes_exactly_what_no_offset_copies(monkeypatch, xs, ws, m, kw, align, frames):
    """The stacked block starts uninitialised: the cached zero regions (padding frames of each
    offset, offsets that read no frame, channels padded to 16) and the copies cover every element,
    and the block equals one built on zeros. Blocks of one position or whole samples."""
    from avila_ml.ops._conv_geometry import ConvGeometry
    G = kw.get("groups", 1)
    geom = ConvGeometry(kw["stride"], kw["pad"], kw["pad"], kw["dilation"], G)
    x = np.random.default_rng(13).standard_normal(xs).astype(np.float32)
    st = accel._Stacking(geom, xs, ws[2:], ws[0], m, align=align)
    monkeypatch.setattr(accel, "_budget", lambda *a, **k: frames * st.row_bytes)
    monkeypatch.setattr(accel.np, "empty", lambda shape, dtype=float: np.full(shape, np.nan, dtype=dtype))
    blocks = st.blocks(0)
    assert len(blocks) == (xs[0] * st.To[0] if frames == 1 else 1)
    for blk in blocks:
        got = st.stack(x, blk)
        ref = np.zeros(st._frames(blk) + (G, st.cgp) + st.rest, dtype=np.float32)
        xt = st._channels_last_view(x)
        for flat, dst, src in st._pairs(blk):
            ref[dst + (slice(None), slice(flat, st.real, st.P))] = xt[src]
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(got, ref.reshape(got.shape))


@needs_onednn
def test_weight_grad_avoids_onednn_gemm_fallback(calls):
    """Where oneDNN's 3-d weight gradient is its GEMM fallback (AVX2 CPUs), a JIT one runs instead
    (stacking one more axis); the inner plans that ran for the weight gradient are JIT kernels."""
    rng = np.random.default_rng(13)
    x = am.tensor(rng.standard_normal((2, 4, 8, 8, 8)).astype(np.float32), requires_grad=True)
    w = am.tensor(rng.standard_normal((8, 4, 3, 3, 3)).astype(np.float32), requires_grad=True)
    accel.clear_cache()
    F.conv3d(x, w, padding=1).sum().backward()
    weight_plans = [p for k, p in accel._cache.items() if k[0] == "weight"]
    assert any(p.jit for p in weight_plans), [p.impl for p in weight_plans]
    tx, tw = (torch.tensor(t.detach().numpy().astype(np.float64), requires_grad=True) for t in (x, w))
    TF.conv3d(tx, tw, padding=1).sum().backward()
    _f32_close(w.grad.numpy(), tw.grad.numpy())


@needs_onednn
def test_a_refused_configuration_falls_back_to_numpy_once(monkeypatch):
    """A oneDNN failure (here simulated at plan creation) runs the NumPy algorithm, announced once."""
    def refuse(*args, **kwargs):
        raise dnnl.DnnlError("oneDNN: dnnl_convolution_forward_primitive_desc_create failed with status 3 "
                             "(unimplemented)")
    monkeypatch.setattr(accel, "_plan", refuse)
    rng = np.random.default_rng(14)
    xa = rng.standard_normal((1, 2, 7)).astype(np.float32)
    wa = rng.standard_normal((3, 2, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match="oneDNN refused") as rec:
        for _ in range(2):
            y = F.conv1d(am.tensor(xa), am.tensor(wa), padding=1)
    assert sum("oneDNN refused" in str(r.message) for r in rec) == 1
    ref = TF.conv1d(torch.tensor(xa).double(), torch.tensor(wa).double(), padding=1)
    _f32_close(y.numpy(), ref.numpy())


# ------------------------------------------------------------------------------ batch parts
@pytest.fixture
def parts(monkeypatch):
    """Every 1-3 d oneDNN call cut into batch parts run by the worker threads (``_run3_parts``),
    whatever its size; records the parts of each call."""
    seen = []
    real = accel._run3_parts
    monkeypatch.setattr(accel, "_PART_MIN_MACS", 0)
    monkeypatch.setattr(accel, "_PARTS", "always")
    monkeypatch.setattr(accel._workers, "_n", 2)

    def spy(lib, kind, xs, ws, ys, geom3, arrays, cut, *rest):
        seen.append((kind, cut))
        return real(lib, kind, xs, ws, ys, geom3, arrays, cut, *rest)
    monkeypatch.setattr(accel, "_run3_parts", spy)
    return seen


@needs_onednn
@pytest.mark.parametrize("row", [r for r in CONV_TABLE if r[1] and r[1] >= 2], ids=lambda r: f"conv{r[0]}d-{r[6]}")
def test_batch_parts_match_torch(row, parts):
    """The batch cut into parts, each a single-threaded oneDNN call in a worker thread (the
    weight gradient summed over the parts): forward and every gradient vs PyTorch in float64."""
    d, N, cin, cout, S, K, kw = row
    rng = np.random.default_rng(3)
    groups = kw.get("groups", 1)
    _conv_vs_torch(d, [rng.standard_normal((N, cin) + S), rng.standard_normal((cout, cin // groups) + K),
                       rng.standard_normal(cout)], kw, rng)
    kinds = {k for k, _ in parts}
    # a 3-d weight gradient without a JIT kernel runs stacked, in frame blocks on the same workers
    # (the bias inside the forward, its gradient summed over the parts with the weight gradient)
    assert (kinds == {"forward_bias", "transpose", BIAS_KIND}
            or (d == 3 and kinds == {"forward_bias", "transpose"})), kinds
    for _, cut in parts:  # contiguous equal slices from 0 (a 3-d weight gradient cuts its stacked frames)
        assert cut[0][0] == 0 and len({b - a for a, b in cut}) == 1, cut
        assert all(cut[i][1] == cut[i + 1][0] for i in range(len(cut) - 1)), cut


@needs_onednn
def test_batch_parts_transposed_conv_and_reproducible(parts):
    """ConvTranspose2d with DCGAN's geometry through the parts matches PyTorch float64; the cut
    depends on the shape only, so a rerun gives bitwise the same values and gradients."""
    rng = np.random.default_rng(4)
    arrs = [rng.standard_normal((12, 8, 4, 4)), rng.standard_normal((8, 5, 4, 4))]
    runs = []
    for _ in range(2):
        x, w = (am.tensor(a.astype(np.float32), requires_grad=True) for a in arrs)
        y = F.conv_transpose2d(x, w, None, 2, 1)
        y.backward(am.tensor(np.cos(np.arange(y.numel())).reshape(y.shape).astype(np.float32)))
        runs.append([y.detach().numpy(), x.grad.numpy(), w.grad.numpy()])
    tx, tw = (torch.tensor(a.astype(np.float32).astype(np.float64), requires_grad=True) for a in arrs)
    ty = TF.conv_transpose2d(tx, tw, None, 2, 1)
    ty.backward(torch.tensor(np.cos(np.arange(ty.numel())).reshape(ty.shape).astype(np.float32).astype(np.float64)))
    for ours, theirs in zip(runs[0], (ty.detach(), tx.grad, tw.grad)):
        _f32_close(ours, theirs.numpy())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert [len(cut) for _, cut in parts] == [6] * 6  # 12 samples, 2 threads: 6 parts of 2, each kind twice


def test_batch_parts_rule(monkeypatch):
    """Equal parts (the divisor of N nearest 4 per thread); none for one thread, one sample, or a
    convolution below the hand-off threshold."""
    monkeypatch.setattr(accel._workers, "_n", 2)
    big = accel._PART_MIN_MACS
    assert accel._batch_parts(64, big) == [(i, i + 8) for i in range(0, 64, 8)]
    assert accel._batch_parts(32, big) == [(i, i + 4) for i in range(0, 32, 4)]
    assert accel._batch_parts(7, big) == [(i, i + 1) for i in range(7)]
    assert accel._batch_parts(10, big) == [(i, i + 1) for i in range(10)]
    assert accel._batch_parts(12, big) == [(i, i + 2) for i in range(0, 12, 2)]
    assert accel._batch_parts(3, big) == [(0, 1), (1, 2), (2, 3)]
    assert accel._batch_parts(2, big) == [(0, 1), (1, 2)]
    assert accel._batch_parts(1, big) is None
    assert accel._batch_parts(64, big - 1) is None
    monkeypatch.setattr(accel._workers, "_n", 1)
    assert accel._batch_parts(64, big) is None


@needs_onednn
def test_worker_threads_run_openmp_with_one_thread():
    """The worker threads' OpenMP runtime (oneDNN's) has one thread, so a part never forks a
    team; the calling thread keeps its own setting."""
    assert accel._workers.start(dnnl.load())
    get = None
    from threadpoolctl import ThreadpoolController
    for m in ThreadpoolController().lib_controllers:
        if m.user_api == "openmp" and os.path.basename(m.filepath).startswith(("libgomp.so", "libiomp5.so")):
            import ctypes
            get = ctypes.CDLL(m.filepath).omp_get_max_threads
    assert get is not None
    assert accel._workers.map(lambda _: get(), range(4)) == [1, 1, 1, 1]


@needs_onednn
def test_conv4d_blocks_on_worker_threads_match_numpy_and_reproduce(monkeypatch):
    """The stacked 4-d path with its frame blocks spread over the worker threads (copies and a
    single-threaded oneDNN call per block; input-gradient scatter and weight-gradient sum in block
    order): forward and gradients vs the NumPy path in float64, bitwise equal on a rerun."""
    from avila_ml.ops._conv_geometry import ConvGeometry
    rng = np.random.default_rng(14)
    xa = rng.standard_normal((2, 3, 6, 5, 4, 4)).astype(np.float32)
    wa = rng.standard_normal((4, 3, 3, 2, 3, 2)).astype(np.float32)
    kw = dict(padding=1, stride=(2, 1, 1, 2))
    geom = ConvGeometry((2, 1, 1, 2), (1,) * 4, (1,) * 4, (1,) * 4, 1)
    frame = accel._Stacking(geom, xa.shape, wa.shape[2:], 4, 1).row_bytes
    monkeypatch.setattr(accel, "_budget", lambda *a, **k: frame)  # one frame per block: 8 blocks
    monkeypatch.setattr(accel._workers, "_n", 2)
    ran = []
    real = accel._WorkerPool.imap
    def spy(self, fn, items):
        ran.append(len(items))
        return real(self, fn, items)
    monkeypatch.setattr(accel._WorkerPool, "imap", spy)
    runs = []
    for algo, dt in (("onednn", np.float32), ("onednn", np.float32), ("gemm", np.float64)):
        set_conv_algorithm(algo)
        x, w = am.tensor(xa.astype(dt), requires_grad=True), am.tensor(wa.astype(dt), requires_grad=True)
        y = F.conv4d(x, w, **kw)
        y.backward(am.tensor(np.sin(np.arange(y.numel())).reshape(y.shape).astype(dt)))
        runs.append([y.detach().numpy(), x.grad.numpy(), w.grad.numpy()])
    assert ran and all(n > 1 for n in ran), ran
    for a, b, ref in zip(*runs):
        np.testing.assert_array_equal(a, b)
        _f32_close(a, ref)


@needs_onednn
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_batch_parts_after_fork(parts):
    """A process forked after the worker threads started (a DataLoader worker) makes its own
    workers: its convolution finishes (no wait on the parent's threads, which it does not have)
    and matches the parent's result bitwise."""
    rng = np.random.default_rng(15)
    x = am.tensor(rng.standard_normal((4, 3, 9, 9)).astype(np.float32))
    w = am.tensor(rng.standard_normal((5, 3, 3, 3)).astype(np.float32))
    want = F.conv2d(x, w).numpy()
    assert parts, "the worker threads did not run in the parent"
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: compute, send the bytes, leave without running pytest's teardown
        try:
            import signal
            signal.alarm(60)
            os.write(wfd, F.conv2d(x, w).numpy().tobytes())
        finally:
            os._exit(0)
    os.close(wfd)
    got = b""
    while chunk := os.read(r, 1 << 16):
        got += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    np.testing.assert_array_equal(np.frombuffer(got, dtype=np.float32).reshape(want.shape), want)


# ------------------------------------------------------------------------------ OpenMP wait policy
_WAIT_PROBE = ("import os, sys, avila_ml as am\n"
               "from avila_ml.cpu_accel import _dnnl, _conv\n"
               "lib = _dnnl.load()\n"
               "print(_dnnl.passive_wait(), os.environ.get('OMP_WAIT_POLICY'), _conv._parts_wanted())\n"
               "sys.stdout.flush()\n"
               "lib.cdll.omp_display_env(1)\n")  # verbose: GNU libgomp then lists GOMP_SPINCOUNT


@needs_onednn
def test_openmp_loaded_with_passive_waiting_and_environment_restored():
    """With no policy chosen by the user, oneDNN's OpenMP runtime starts with passive waiting
    after a short spin (as the runtime itself reports), the variables are gone again afterwards
    (children do not inherit them), and the convolutions then run as one call each (no batch
    parts)."""
    r = _python(_WAIT_PROBE, drop=dnnl._WAIT_VARS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "None", "False"]
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in r.stderr, r.stderr
    if "GOMP_SPINCOUNT" in r.stderr:  # GNU libgomp (the gomp wheel); Intel's libiomp5 has no such line
        assert f"GOMP_SPINCOUNT = '{dnnl._SPIN_COUNT}'" in r.stderr, r.stderr


@needs_onednn
def test_user_wait_policy_is_kept_and_parts_used_with_spinning_threads():
    r = _python(_WAIT_PROBE, drop=dnnl._WAIT_VARS, OMP_WAIT_POLICY="ACTIVE")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "ACTIVE", "True"]
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in r.stderr, r.stderr


def test_parts_rule_follows_the_wait_policy(monkeypatch):
    monkeypatch.setattr(dnnl, "passive_wait", lambda: True)
    assert not accel._parts_wanted()
    monkeypatch.setattr(accel, "_PARTS", "always")
    assert accel._parts_wanted()
    monkeypatch.setattr(accel, "_PARTS", "auto")
    monkeypatch.setattr(dnnl, "passive_wait", lambda: False)
    assert accel._parts_wanted()


# ----------------------------------------------------------------------------- OpenBLAS's spinning threads
def _openblas_running():
    return any(avail.value for avail, _ in dnnl._openblas_handles())


def _threaded_matmul():
    """A multi-threaded OpenBLAS product (starts its workers); its result."""
    from threadpoolctl import threadpool_limits
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    with threadpool_limits(2, user_api="blas"):
        return a, a @ a


def _needs_openblas():
    if not dnnl._openblas_handles():
        pytest.skip("NumPy's BLAS is not an OpenBLAS with blas_thread_shutdown_")
    import threading
    me = threading.current_thread()
    if any(t is not me and not t.name.startswith(dnnl._OWN_THREADS) for t in threading.enumerate()):
        pytest.skip("another Python thread is running (the shutdown is skipped then, tested below)")


@needs_onednn
def test_convolution_stops_openblas_workers_which_restart_on_the_next_matmul():
    from threadpoolctl import threadpool_limits
    _needs_openblas()
    a, ref = _threaded_matmul()
    assert _openblas_running()
    x, w = am.randn(2, 3, 8, 8), am.randn(4, 3, 3, 3)
    y = F.conv2d(x, w)
    assert not _openblas_running()  # stopped before the oneDNN call
    ref_y = TF.conv2d(torch.from_numpy(x.numpy().astype(np.float64)), torch.from_numpy(w.numpy().astype(np.float64)))
    _f32_close(y.numpy(), ref_y.numpy())
    with threadpool_limits(2, user_api="blas"):
        again = a @ a
    assert _openblas_running()  # started again, lazily
    np.testing.assert_allclose(again, ref, rtol=1e-6, atol=1e-5)


@needs_onednn
def test_openblas_workers_kept_with_a_foreign_thread_or_switched_off(monkeypatch):
    import threading
    _needs_openblas()
    x, w = am.randn(2, 3, 8, 8), am.randn(4, 3, 3, 3)
    release = threading.Event()
    user = threading.Thread(target=release.wait, name="user-thread")
    user.start()
    try:
        _threaded_matmul()
        F.conv2d(x, w)
        assert _openblas_running()  # a user thread might be inside BLAS: left alone
    finally:
        release.set()
        user.join()
    from avila_ml.cpu_accel import _dnnl
    monkeypatch.setattr(_dnnl, "QUIET_BLAS", False)
    _threaded_matmul()
    F.conv2d(x, w)
    assert _openblas_running()


# ----------------------------------------------------------------------------- 4-d forward, offsets stacked into outputs
OUTPUT_STACKING_CASES = [  # (x shape, w shape, conv4d keywords)
    ((2, 3, 6, 5, 4, 4), (4, 3, 3, 2, 3, 2), dict(padding=1, stride=(2, 1, 1, 2))),
    ((1, 2, 7, 4, 4, 3), (3, 2, 3, 3, 1, 3), dict(padding=(2, 1, 0, 1), dilation=(2, 1, 1, 1))),
    ((2, 1, 5, 4, 4, 4), (12, 1, 3, 3, 3, 3), dict(padding=1, stride=(1, 2, 2, 2),
                                                   padding_mode=("causal", "circular", "circular", "circular"))),
    ((1, 2, 2, 3, 3, 3), (2, 2, 3, 1, 2, 1), dict(padding=(2, 0, 1, 0))),    # kernel longer than the input in time
    ((2, 2, 4, 3, 3, 3), (16, 2, 1, 2, 2, 2), dict()),                       # K_t = 1
]


@needs_onednn
@pytest.mark.parametrize("one_frame_blocks", [False, True])
@pytest.mark.parametrize("case", OUTPUT_STACKING_CASES, ids=lambda c: str(c[2]))
def test_conv4d_output_stacked_forward_matches_numpy(monkeypatch, case, one_frame_blocks):
    """The 4-d forward with kernel-time offsets stacked into output channels and shifted back
    (strides, dilation, causal and asymmetric padding, output frames reading no input frame,
    blocks of one output frame on the worker threads) vs the NumPy path in float64, and the
    same as the input-stacked forward; the gradients still match. With a bias, which the
    output-stacked sums start from (parts cut inside a sample included)."""
    xs, ws, kw = case
    rng = np.random.default_rng(21)
    xa, wa = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    ba = rng.standard_normal(ws[0]).astype(np.float32)
    if one_frame_blocks:
        monkeypatch.setattr(accel, "_budget", lambda *a, **k: 1)  # input frames one at a time in each part
        monkeypatch.setattr(accel._workers, "_n", 2)
    used = []
    real = accel._OutputStacking.forward
    monkeypatch.setattr(accel._OutputStacking, "forward", lambda self, *a: used.append(1) or real(self, *a))
    outs = {}
    for algo, dt, mode in (("onednn", np.float32, "always"), ("onednn", np.float32, "never"), ("gemm", np.float64, "never")):
        set_conv_algorithm(algo)
        monkeypatch.setattr(accel, "OUTPUT_STACKING", mode)
        x, w = am.tensor(xa.astype(dt), requires_grad=True), am.tensor(wa.astype(dt), requires_grad=True)
        b = am.tensor(ba.astype(dt), requires_grad=True)
        y = F.conv4d(x, w, b, **kw)
        y.backward(am.tensor(np.sin(np.arange(y.numel())).reshape(y.shape).astype(dt)))
        outs[mode if dt == np.float32 else "ref"] = [y.detach().numpy(), x.grad.numpy(), w.grad.numpy(),
                                                     b.grad.numpy()]
    assert used  # the "always" run took the output-stacked forward
    for ours, other, ref in zip(outs["always"], outs["never"], outs["ref"]):
        _f32_close(ours, ref)
        _f32_close(ours, other.astype(np.float64))


@needs_onednn
def test_output_stacking_rule():
    from avila_ml.ops._conv_geometry import ConvGeometry
    g1 = ConvGeometry((1,) * 4, (1,) * 4, (1,) * 4, (1,) * 4, 1)
    g2 = ConvGeometry((1,) * 4, (1,) * 4, (1,) * 4, (1,) * 4, 2)
    assert accel._stack_outputs((2, 4, 16, 16, 16, 16), (8, 4, 3, 3, 3, 3), g1)
    assert accel._stack_outputs((1, 2, 32, 32, 32, 32), (4, 2, 3, 3, 3, 3), g1)
    assert not accel._stack_outputs((32, 12, 8, 8, 8, 8), (16, 12, 3, 3, 3, 3), g1)
    assert not accel._stack_outputs((2, 16, 12, 12, 12, 12), (32, 16, 3, 3, 3, 3), g1)
    assert not accel._stack_outputs((2, 4, 8, 8, 8, 8), (8, 2, 3, 3, 3, 3), g2)  # grouped: input stacking


def test_output_stacking_parts_cover_each_output_frame_once():
    """``_parts``: P contiguous parts of equal size (within one frame), sample-major, every
    output frame in exactly one segment, whole samples kept whole where a part holds them."""
    for N, To, P in [(2, 16, 2), (1, 32, 2), (3, 5, 2), (3, 5, 4), (2, 3, 8), (5, 1, 3)]:
        parts = accel._parts(N, To, P)
        assert len(parts) == min(P, N * To)
        seen = [(n, i) for part in parts for n0, n1, i0, i1 in part for n in range(n0, n1) for i in range(i0, i1)]
        assert seen == [(n, i) for n in range(N) for i in range(To)]
        sizes = [sum((n1 - n0) * (i1 - i0) for n0, n1, i0, i1 in part) for part in parts]
        assert max(sizes) - min(sizes) <= 1
    assert accel._parts(2, 16, 2) == [[(0, 1, 0, 16)], [(1, 2, 0, 16)]]
    assert accel._parts(3, 4, 2) == [[(0, 1, 0, 4), (1, 2, 0, 2)], [(1, 2, 2, 4), (2, 3, 0, 4)]]


@needs_onednn
@pytest.mark.parametrize("d", [1, 2])
def test_bias_in_onednn_passes_and_create_graph_keeps_the_graph(calls, d):
    """The bias added inside oneDNN's forward and its gradient from the weight-gradient pass
    (``weight_bias``, without create_graph) agree with PyTorch in float64 and with the graph
    path (``create_graph=True``), whose gradients differentiate again (vs PyTorch's second
    derivative)."""
    rng = np.random.default_rng(31)
    xs, ws = ((3, 4, 11), (5, 4, 3)) if d == 1 else ((3, 4, 9, 8), (6, 2, 3, 2))
    kw = dict(padding=1, stride=2) if d == 1 else dict(padding=(1, 0), groups=2)
    arrs = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])]
    g = rng.standard_normal((3, ws[0]) + ((6,) if d == 1 else (9, 7))).astype(np.float32)
    fn, tfn = getattr(F, f"conv{d}d"), getattr(TF, f"conv{d}d")
    tx, tw, tb = (torch.tensor(a.astype(np.float32).astype(np.float64), requires_grad=True) for a in arrs)
    ty = tfn(tx, tw, tb, **kw)
    tgrads = torch.autograd.grad(ty, [tx, tw, tb], torch.tensor(g.astype(np.float64)), create_graph=True)
    # a second derivative through the bias path: d/dw of sum(dL/dx ** 2) (dL/db is constant in w, x)
    (tsecond,) = torch.autograd.grad(tgrads[0].square().sum(), [tw])
    for create_graph in (False, True):
        calls.clear()
        x, w, b = (am.tensor(a.astype(np.float32), requires_grad=True) for a in arrs)
        y = fn(x, w, b, **kw)
        _f32_close(y.detach().numpy(), ty.detach().numpy())
        grads = am.autograd.grad(y, [x, w, b], am.tensor(g), create_graph=create_graph)
        for ours, theirs in zip(grads, tgrads):
            _f32_close(ours.detach().numpy(), theirs.detach().numpy())
        assert "forward_bias" in calls, calls
        if not create_graph:
            assert BIAS_KIND in calls and ({"weight", "weight_bias"} - {BIAS_KIND}).isdisjoint(calls), calls
        else:
            assert "weight_bias" not in calls, calls
        if create_graph:  # the graph path differentiates again
            (second,) = am.autograd.grad(grads[0].square().sum(), [w])
            _f32_close(second.numpy(), tsecond.numpy())


def test_stacked_blocks_are_balanced_and_a_multiple_of_the_threads():
    """``_blocks``: every (sample, position) in one block, in order; block sizes within one of
    each other; for 2-3 worker threads a multiple of the threads where more than one block."""
    for N, To, per, threads in [(32, 8, 48, 2), (32, 8, 48, 3), (2, 16, 3, 2), (1, 16, 3, 2), (1, 7, 3, 3),
                                (3, 5, 3, 1), (3, 5, 8, 2), (5, 4, 100, 2), (2, 3, 1, 2)]:
        blocks = accel._blocks(N, To, 1, per, threads)
        seen = [(n, i) for n0, n1, i0, i1 in blocks for n in range(n0, n1) for i in range(i0, i1)]
        assert seen == [(n, i) for n in range(N) for i in range(To)], (N, To, per, threads)
        sizes = [(n1 - n0) * (i1 - i0) for n0, n1, i0, i1 in blocks]
        assert max(sizes) <= max(per, To) and max(sizes) - min(sizes) <= max(1, To if per >= To else 1)
        if len(blocks) > 1 and threads > 1:
            assert len(blocks) % threads == 0 or len(blocks) == N or len(blocks) == N * To, (blocks, threads)
    assert accel._blocks(32, 8, 1, 48, 2) == [(a, b, 0, 8) for a, b in [(0, 5), (5, 10), (10, 16), (16, 21),
                                                                         (21, 26), (26, 32)]]
    assert [b[2:] for b in accel._blocks(1, 16, 1, 3, 2)] == [(0, 2), (2, 5), (5, 8), (8, 10), (10, 13), (13, 16)]


@needs_onednn
@pytest.mark.parametrize("d,xs,ws,kw,gemm", [
    (2, (4, 3, 12, 10), (6, 3, 4, 4), dict(stride=2, padding=1), True),      # few input channels, strided
    (3, (2, 8, 7, 6, 6), (4, 8, 3, 3, 3), dict(stride=(2, 1, 2)), True),
    (2, (2, 4, 9, 9), (6, 2, 3, 3), dict(stride=2, groups=2), True),           # 2 channels per group
    (2, (2, 12, 9, 9), (6, 12, 3, 3), dict(stride=2), False),                 # more channels: oneDNN's choice
    (3, (2, 36, 7, 6, 6), (4, 36, 3, 3, 3), dict(stride=2), True),            # 3-d: up to 36 channels
    (3, (2, 40, 7, 6, 6), (4, 40, 3, 3, 3), dict(stride=2), False),
    (2, (2, 3, 9, 9), (6, 3, 3, 3), dict(padding=1), False),                  # stride 1: oneDNN's choice
])
def test_strided_input_gradient_with_few_channels_takes_gemm(monkeypatch, d, xs, ws, kw, gemm):
    """The input gradient of a strided convolution with few input channels per group (2-d: 8,
    3-d: 36) runs oneDNN's im2col + GEMM implementation (its first choice, brgconv_strided, was
    up to 5x slower there) and still matches PyTorch in float64; the transposed convolution's
    forward too."""
    rng = np.random.default_rng(41)

    def check_plans():
        """Each transpose plan: GEMM where the rule applies and oneDNN's first choice is the
        brgconv_strided:avx2 it was measured against, else oneDNN's own first choice."""
        plans = [(k, p.impl) for k, p in accel._cache.items() if k[0] == "transpose"]
        assert plans
        with monkeypatch.context() as mp:
            mp.setattr(accel, "_prefer_gemm_data_grad", lambda *a: False)
            first = {k: accel._Plan(dnnl.load(), "transpose", *k[1:4], *k[4]).impl for k, _ in plans}
        for k, impl in plans:
            if gemm and first[k].startswith(accel._GEMM_OVER):
                assert impl.startswith("x64:gemm"), (k, impl)
            else:
                assert impl == first[k], (k, impl)

    accel.clear_cache()
    arrs = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])]
    _conv_vs_torch(d, arrs, kw, rng)
    check_plans()
    if gemm and kw.get("groups", 1) == 1:  # conv_transpose with few output channels: the same plan
        accel.clear_cache()
        tw = rng.standard_normal((ws[0], ws[1]) + ws[2:])
        conv = F.conv2d if d == 2 else F.conv3d
        y_shape = xs[:1] + (ws[0],) + tuple(conv(am.zeros(*xs), am.zeros(*ws), **kw).shape[2:])
        _conv_vs_torch(d, [rng.standard_normal(y_shape), tw, rng.standard_normal(ws[1])], kw, rng, transposed=True)
        check_plans()


@needs_onednn
@pytest.mark.parametrize("d, xs, ws, kw", [
    (2, (5, 1, 12, 11), (16, 1, 3, 3), {}),                                   # MNIST conv1's form
    (2, (3, 2, 10, 9), (24, 2, 3, 2), dict(padding=(1, 2), dilation=(2, 1))),
    (1, (4, 1, 30), (8, 1, 5), dict(padding=2)),
    (1, (2, 3, 17), (16, 3, 3), dict(padding="same", dilation=3)),
    (3, (2, 1, 6, 5, 7), (32, 1, 3, 3, 2), dict(padding=1)),
    (2, (3, 2, 11, 10), (40, 2, 4, 3), dict(stride=(2, 3), padding=1)),
    (1, (2, 1, 23), (8, 1, 3), dict(stride=2, dilation=2)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_few_channel_weight_gradient_runs_as_patches_matmul(monkeypatch, d, xs, ws, kw, bias):
    """With 1-3 input channels (1-2 when strided) the weight (and bias) gradient is one batched
    matmul over the input's patches: it ran, and every gradient, the second derivative through
    the create_graph path included, agrees with PyTorch in float64. (The routing of AVX2 CPUs:
    on AVX-512 only 1-d convolutions take the product.)"""
    monkeypatch.setattr(dnnl, "avx512", lambda: False)
    ran = []
    real = accel._patches_weight_grad

    def spy(*args):
        out = real(*args)
        ran.append(out is not None)
        return out
    monkeypatch.setattr(accel, "_patches_weight_grad", spy)
    rng = np.random.default_rng(47)
    arrs = [rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32),
            rng.standard_normal(ws[0]).astype(np.float32)]
    fn, tfn = getattr(F, f"conv{d}d"), getattr(TF, f"conv{d}d")
    tx, tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrs)
    ty = tfn(tx, tw, tb if bias else None, **kw)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    tgrads = torch.autograd.grad(ty, [tx, tw] + ([tb] if bias else []), torch.tensor(g.astype(np.float64)),
                                 create_graph=True)
    (tsecond,) = torch.autograd.grad(tgrads[1].square().sum(), [tx])  # d/dx of |dL/dw|^2
    for create_graph in (False, True):
        ran.clear()
        x, w, b = (am.tensor(a, requires_grad=True) for a in arrs)
        y = fn(x, w, b if bias else None, **kw)
        grads = am.autograd.grad(y, [x, w] + ([b] if bias else []), am.tensor(g), create_graph=create_graph)
        for ours, theirs in zip(grads, tgrads):
            _f32_close(ours.detach().numpy(), theirs.detach().numpy())
        assert ran == [True], ran
        if create_graph:
            (second,) = am.autograd.grad(grads[1].square().sum(), [x])
            _f32_close(second.numpy(), tsecond.numpy(), rtol=5e-5)


def test_patches_built_on_threads_equal_the_windows(monkeypatch):
    """The patches matrix of the few-channel weight gradient is filled batch slice by batch
    slice on the CPU threads (residual CNN stem size, so the split happens): every row equals its
    padded, strided input window, and the ones row is there."""
    from avila_ml.ops import _cpu_threads
    from avila_ml.ops._conv_geometry import ConvGeometry
    slices = []
    real = _cpu_threads.over_batch
    monkeypatch.setattr(_cpu_threads, "over_batch", lambda fn, n, size, *a: slices.append(
        len(_cpu_threads.batch_slices(n, size, *(a or (1 << 18,))))) or real(fn, n, size, *a))
    x = np.random.default_rng(48).standard_normal((32, 3, 32, 32)).astype(np.float32)
    geom = ConvGeometry((1, 1), (1, 1), (1, 1), (1, 1), 1)
    P = accel._patches(x, geom, (3, 3), True)
    xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
    ref = np.stack([xp[:, c, i:i + 32, j:j + 32] for c in range(3) for i in range(3) for j in range(3)], axis=1)
    np.testing.assert_array_equal(P[:, :27], ref.reshape(32, 27, -1))
    assert np.all(P[:, 27] == 1.0)
    if _cpu_threads.controller() is not None and _cpu_threads.blas_threads() > 1:
        assert slices == [2]


@pytest.mark.parametrize("avx512", [False, True])
def test_patches_weight_gradient_rule(monkeypatch, avx512):
    """Only ungrouped convolutions with 1-3 input channels (1-2 when strided) whose patches matrix is no
    larger than the output gradient take the patches product; the rest keep oneDNN's kernel. On
    AVX-512 only 1-d ones do (oneDNN's kernel measured faster in 2-d and 3-d there)."""
    from avila_ml.ops._conv_geometry import ConvGeometry

    def geom(d, stride=1, groups=1):
        return ConvGeometry((stride,) * d, (0,) * d, (0,) * d, (1,) * d, groups)
    monkeypatch.setattr(dnnl, "avx512", lambda: avx512)
    rule = accel._patches_weight_grad_applies
    assert rule((2, 3, 9), (3,), 16, geom(1)) and rule((16, 1, 4096), (5,), 32, geom(1))
    if avx512:
        assert not rule((64, 1, 28, 28), (3, 3), 32, geom(2)) and not rule((2, 3, 9, 9, 9), (2, 2, 2), 25, geom(3))
        assert not rule((32, 2, 32, 32), (4, 4), 64, geom(2, stride=2))
        return
    assert rule((64, 1, 28, 28), (3, 3), 32, geom(2))
    assert rule((2, 3, 9), (3,), 16, geom(1)) and rule((2, 3, 9, 9, 9), (2, 2, 2), 25, geom(3))
    assert not rule((32, 3, 32, 32), (4, 4), 64, geom(2, stride=2))   # the DCGAN's first layer: strided, 3
    assert rule((32, 2, 32, 32), (4, 4), 64, geom(2, stride=2))       # strided with 1-2 channels
    assert not rule((8, 4, 16, 16), (3, 3), 64, geom(2))              # 4 channels
    assert not rule((8, 2, 16, 16), (3, 3), 64, geom(2, groups=2))    # grouped
    assert not rule((8, 1, 16, 16), (3, 3), 9, geom(2))               # 10 patch rows > 9 outputs
    assert not rule((2, 1, 8, 8, 8, 8), (3, 3, 3, 3), 128, geom(4))   # 4-d: the stacked paths


@pytest.fixture
def together(monkeypatch):
    """Records the kinds of every ``run_together`` submission, with oneDNN's OpenMP threads taken
    as waiting passively (one call per pass, no batch parts: what a program without PyTorch
    loaded gets; in this process PyTorch's OpenMP runtime came first)."""
    monkeypatch.setattr(dnnl, "passive_wait", lambda: True)
    seen = []
    real = accel.run_together

    def spy(jobs):
        seen.append([plan.kind for plan, _ in jobs])
        return real(jobs)
    monkeypatch.setattr(accel, "run_together", spy)
    return seen


def _pair_expected(d, cin, cout, S, K, kw, transposed):
    """Whether the backward must take the one-submission pair: 1-2 d (3-d weight gradients have no
    JIT kernel here and go to the stacked path), no output_padding (the adjoint's size then does
    not follow the geometry), and not the few-channel patches product (whose input is gz, with
    ``cout`` channels, for a transposed convolution)."""
    from avila_ml.ops._conv_geometry import ConvGeometry
    if d == 3 or any(kw.get("output_padding", 0) if isinstance(kw.get("output_padding", 0), tuple)
                     else (kw.get("output_padding", 0),)):
        return False
    stride = kw.get("stride", 1)
    stride = (stride,) * d if isinstance(stride, int) else stride
    geom = ConvGeometry(tuple(stride), (0,) * d, (0,) * d, (1,) * d, kw.get("groups", 1))
    return not accel._patches_weight_grad_applies((1, cout if transposed else cin) + S, K, 2 ** 20, geom)


@needs_onednn
@pytest.mark.parametrize("row", [(r, False) for r in CONV_TABLE] + [(r, True) for r in CONVT_TABLE],
                         ids=lambda r: f"{'convT' if r[1] else 'conv'}{r[0][0]}d-{r[0][6]}")
def test_backward_pair_in_one_submission_matches_torch(row, together):
    """Without create_graph the input and weight (and bias) gradients of a convolution, and the
    input and weight gradients of a transposed one, run as one submission (the shared operand
    reordered once): every gradient against PyTorch in float64, on the module tables."""
    (d, N, cin, cout, S, K, kw), transposed = row
    rng = np.random.default_rng(2)
    shape = ((N,) if N else ()) + (cin,) + S
    groups = kw.get("groups", 1)
    wshape = (cin, cout // groups) + K if transposed else (cout, cin // groups) + K
    _conv_vs_torch(d, [rng.standard_normal(shape), rng.standard_normal(wshape), rng.standard_normal(cout)], kw,
                   rng, transposed=transposed)
    want = [["forward", "weight"]] if transposed else [["transpose", BIAS_KIND]]
    assert together in ([], want), together
    if _pair_expected(d, cin, cout, S, K, kw, transposed):
        assert together == want, together


@needs_onednn
@pytest.mark.parametrize("case", ["conv1d", "conv2d", "conv2d-no-input-grad", "conv_transpose2d"])
def test_backward_pair_reorders_the_shared_operand_once(case, together, monkeypatch):
    """The output gradient (for a transposed convolution: its input gradient gz) is reordered into
    oneDNN's blocked layout once for both passes: one execution fewer than the two passes on their
    own, and the same values as PyTorch's float64 gradients, with and without a bias."""
    executed = []
    real = accel._Plan._run_all

    def count(self, calls):
        executed.append(len(calls))
        return real(self, calls)
    monkeypatch.setattr(accel._Plan, "_run_all", count)
    rng = np.random.default_rng(3)
    d = 1 if case == "conv1d" else 2
    xs = (2, 16) + ((37,) if d == 1 else (9, 10))
    transposed = case == "conv_transpose2d"
    ws = (16, 24) + (3,) * d if transposed else (24, 16) + (3,) * d
    kw = dict(stride=2, padding=1) if transposed else dict(padding=1)
    for bias in ((False,) if transposed else (False, True)):
        arrs = [rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32),
                rng.standard_normal(24).astype(np.float32)]
        need_x = case != "conv2d-no-input-grad"
        x = am.tensor(arrs[0], requires_grad=need_x)
        w, b = am.tensor(arrs[1], requires_grad=True), am.tensor(arrs[2], requires_grad=True)
        tx = torch.tensor(arrs[0].astype(np.float64), requires_grad=need_x)
        tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrs[1:])
        fn, tfn = (F.conv_transpose2d, TF.conv_transpose2d) if transposed else (getattr(F, f"conv{d}d"),
                                                                                getattr(TF, f"conv{d}d"))
        y = fn(x, w, b if bias else None, **kw)
        ty = tfn(tx, tw, tb if bias else None, **kw)
        g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
        together.clear()
        executed.clear()
        y.backward(am.tensor(g))
        ty.backward(torch.tensor(g.astype(np.float64)))
        for ours, theirs in ((x, tx), (w, tw)) + (((b, tb),) if bias else ()):
            if ours.requires_grad:
                _f32_close(ours.grad.numpy(), theirs.grad.numpy())
        kinds = ["forward" if transposed else "transpose"] * need_x + [BIAS_KIND if bias else "weight"]
        assert together == [kinds], together
        assert len(executed) == 1, executed
        # the same passes one by one: the sum of each plan's own executions, one more with two
        lib = dnnl.load()
        x_arr, g_arr = (g, arrs[0]) if transposed else (arrs[0], g)
        separate = sum(len(accel._plan(lib, kind, x_arr.shape, ws, g_arr.shape, _geom_of(d, kw))
                           .calls(_plan_arrays(accel._plan(lib, kind, x_arr.shape, ws, g_arr.shape, _geom_of(d, kw)),
                                               x_arr, g_arr))[0])
                       for kind in kinds)
        assert executed[0] == separate - (len(kinds) - 1), (executed, separate)


def _geom_of(d, kw):
    s, p = kw.get("stride", 1), kw.get("padding", 0)
    return ((s,) * d, (1,) * d, (p,) * d, (p,) * d)


def _plan_arrays(plan, x, y):
    """Arrays of the right shapes for ``plan.calls`` (the values are not used)."""
    shapes = {r: d.shape for r, d in plan.user.items()}
    return {r: np.empty(s, np.float32) if r not in ("x", "y") else (x if r == "x" else y).reshape(s)
            for r, s in shapes.items()}


@needs_onednn
@pytest.mark.parametrize("xs, ws, kw", [
    ((2, 16, 9, 10), (24, 16, 3, 3), dict(padding=1)),                     # bench_conv's Conv2d form
    ((2, 16, 8, 7), (16, 16, 3, 2), dict()),                              # no padding (MNIST conv2 form)
    ((1, 32, 7, 9), (16, 32, 4, 2), dict(padding="same")),                # asymmetric (even kernel)
    ((2, 16, 11, 9), (32, 16, 3, 3), dict(padding=(4, 1), dilation=(2, 1))),  # padding = the dilated span
])
def test_forward_runs_on_the_data_gradient_kernel(xs, ws, kw, calls):
    """A unit-stride 2-d forward without bias runs as the adjoint convolution on oneDNN's
    backward-data kernel (flipped, transposed weight, mirrored padding): values, gradients and the
    second derivative through it (double backward reaches this forward again) against PyTorch in
    float64."""
    rng = np.random.default_rng(53)
    xa, wa = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    x, w = am.tensor(xa, requires_grad=True), am.tensor(wa, requires_grad=True)
    tx, tw = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (xa, wa))
    y, ty = F.conv2d(x, w, **kw), TF.conv2d(tx, tw, **kw)
    assert calls == ["transpose"], calls
    _f32_close(y.detach().numpy(), ty.detach().numpy())
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    gx, gw = am.autograd.grad(y, [x, w], am.tensor(g), create_graph=True)
    tgx, tgw = torch.autograd.grad(ty, [tx, tw], torch.tensor(g.astype(np.float64)), create_graph=True)
    _f32_close(gx.detach().numpy(), tgx.detach().numpy())
    _f32_close(gw.detach().numpy(), tgw.detach().numpy())
    (second,) = am.autograd.grad((gw * gw).sum(), [x])  # d/dx |dL/dw|^2 = 2 conv^T(g, dL/dw): a forward again
    (tsecond,) = torch.autograd.grad((tgw * tgw).sum(), [tx])
    _f32_close(second.numpy(), tsecond.numpy(), rtol=5e-5)


def test_forward_as_data_gradient_rule(monkeypatch):
    """Only 2-d, ungrouped, unit-stride convolutions with >= 16 channels in and out whose padding
    is at most the dilated kernel span run on the backward-data kernel (a bias keeps the forward:
    ``conv_forward`` asks only without one)."""
    from avila_ml.ops._conv_geometry import ConvGeometry
    rule = accel._forward_as_data_grad

    def geom(stride=1, lo=1, hi=1, dil=1, groups=1, d=2):
        return ConvGeometry((stride,) * d, (lo,) * d, (hi,) * d, (dil,) * d, groups)
    assert rule((16, 64, 32, 32), (64, 64, 3, 3), geom())
    assert rule((16, 64, 32, 32), (64, 64, 3, 3), geom(lo=4, hi=4, dil=2))
    assert not rule((16, 64, 32, 32), (64, 64, 3, 3), geom(lo=3, hi=3))       # padding beyond the span
    assert not rule((16, 64, 32, 32), (64, 64, 3, 3), geom(stride=2))
    assert not rule((16, 64, 32, 32), (64, 32, 3, 3), geom(groups=2))
    assert not rule((16, 8, 32, 32), (64, 8, 3, 3), geom())                  # few input channels
    assert not rule((4, 16, 16, 16, 16), (32, 16, 3, 3, 3), geom(d=3))
    monkeypatch.setattr(accel, "FORWARD_AS_DATA_GRAD", "never")
    assert not rule((16, 64, 32, 32), (64, 64, 3, 3), geom())


@needs_onednn
@pytest.mark.parametrize("apart", [True, False])
@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_bias_gradient_apart_or_in_the_weight_pass_matches_torch(d, apart, calls, monkeypatch):
    """The bias gradient by the compiled channel sum (``_bias_apart``) or by oneDNN's weight pass
    (``weight_bias``) gives PyTorch's gradients in float64, 1-4 d (4-d: the stacked path's sum)."""
    if apart and not _native.available():
        pytest.skip(f"no compiled kernels: {_native.absent_reason()}")
    monkeypatch.setattr(accel, "_BIAS_APART", apart)
    rng = np.random.default_rng(40 + d)
    xs = (4, 8) + (9,) * d
    ws = (12, 8) + (3,) * d
    arrs = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(12)]
    x, w, b = (am.tensor(a.astype(np.float32), requires_grad=True) for a in arrs)
    y = getattr(F, f"conv{d}d")(x, w, b, padding=1)
    g = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(am.tensor(g))
    tb = torch.tensor(arrs[2].astype(np.float32).astype(np.float64), requires_grad=True)
    ref = g.astype(np.float64).sum(axis=(0,) + tuple(range(2, g.ndim)))
    _f32_close(b.grad.numpy(), ref)
    if d <= 2:
        assert ("weight_bias" in calls) == (not apart), calls
    tx = torch.tensor(arrs[0].astype(np.float32).astype(np.float64), requires_grad=True)
    tw = torch.tensor(arrs[1].astype(np.float32).astype(np.float64), requires_grad=True)
    if d <= 3:
        ty = getattr(TF, f"conv{d}d")(tx, tw, tb, padding=1)
        ty.backward(torch.tensor(g.astype(np.float64)))
        for ours, theirs in ((x, tx), (w, tw), (b, tb)):
            _f32_close(ours.grad.numpy(), theirs.grad.numpy())


@needs_onednn
@pytest.mark.parametrize("cout, patches", [(32, False), (48, False), (64, True)])
def test_rgb_stem_weight_gradient_route(cout, patches, monkeypatch):
    """2-d, 3 input channels, unit stride: with the bias summed apart (compiled kernels) up to 48
    outputs run oneDNN's weight kernel, more run the patches product (accel._RGB_FEW_OUTPUTS);
    gradients vs PyTorch in float64 either way. (The routing of AVX2 CPUs: on AVX-512 oneDNN's
    kernel takes them all, test_patches_weight_gradient_rule.)"""
    if not _native.available():
        pytest.skip(f"no compiled kernels: {_native.absent_reason()}")
    monkeypatch.setattr(dnnl, "avx512", lambda: False)
    ran = []
    real = accel._patches_weight_grad
    monkeypatch.setattr(accel, "_patches_weight_grad", lambda *a: ran.append(1) or real(*a))
    rng = np.random.default_rng(48)
    arrs = [rng.standard_normal((4, 3, 10, 10)), rng.standard_normal((cout, 3, 3, 3)), rng.standard_normal(cout)]
    _conv_vs_torch(2, arrs, dict(padding=1), rng)
    assert bool(ran) == patches, ran


@needs_onednn
def test_small_reorders_run_serially_and_the_thread_count_comes_back(monkeypatch):
    """Reorders that move at most ``SERIAL_REORDER_BYTES`` are flagged to run on the calling
    thread alone (waking the OpenMP team cost more than the copy); larger ones keep the team.
    ``one_omp_thread`` sets one OpenMP thread for the calling thread and restores the count; the
    convolution through the flagged reorders still matches PyTorch in float64."""
    from avila_ml.cpu_accel import _prim
    from avila_ml.cpu_accel._prim import SERIAL_REORDER_BYTES, one_omp_thread, team_size
    from avila_ml.ops._conv_geometry import ConvGeometry
    g = ConvGeometry((1, 1), (1, 1), (1, 1), (1, 1), 1)
    small = accel._direct("forward", (2, 8, 5, 5), (16, 8, 3, 3), (2, 16, 5, 5), g)
    big = accel._direct("forward", (16, 64, 32, 32), (64, 64, 3, 3), (16, 64, 32, 32), g)
    for plan in (small, big):
        for _, role, _, reorder, inner, _ in plan.steps:
            if reorder is not None:
                size = max(inner.nbytes, plan.user[role].nbytes)
                assert reorder.serial == (size <= SERIAL_REORDER_BYTES), (role, size)
    assert any(step[3] is not None and step[3].serial for step in small.steps)
    assert any(step[3] is not None and not step[3].serial for step in big.steps)  # the 4 MiB ones
    before = team_size()
    with one_omp_thread():
        assert team_size() in (0, 1)
    assert team_size() == before
    seen = []
    real = _prim.one_omp_thread.__enter__
    monkeypatch.setattr(_prim.one_omp_thread, "__enter__", lambda self: seen.append(1) or real(self))
    rng = np.random.default_rng(49)
    arrs = [rng.standard_normal((2, 8, 5, 5)), rng.standard_normal((16, 8, 3, 3)), rng.standard_normal(16)]
    _conv_vs_torch(2, arrs, dict(padding=1), rng)
    assert seen  # the small reorders above went through one_omp_thread


def test_padded_parts_rule():
    """A forward or data-gradient plan whose reordered x/y buffers exceed 1.5x the plain array
    they stand for (and 8 MiB) runs in the fewest equal batch slices that bring them to the
    plain size; weight-gradient plans and unpadded ones run whole."""
    class Plan:
        def __init__(self, kind, steps, user):
            self.kind, self.steps = kind, steps
            self.user = {r: type("U", (), {"nbytes": n})() for r, n in user.items()}
    MiB = 1 << 20
    r = object()
    # AVX-512, (2,4,48^3) -> 8: y blocked 13.5 MiB for a 6.75 MiB array
    fwd = Plan("forward", [(0, "w", False, r, None, 1), (0, "y", True, r, None, 13.5 * MiB)], {"w": 1, "y": 6.75 * MiB})
    assert accel._padded_parts(fwd, 2) == 2 and accel._padded_parts(fwd, 8) == 2 and accel._padded_parts(fwd, 1) == 1
    gx = Plan("transpose", [(0, "y", False, r, None, 13.5 * MiB), (0, "x", True, r, None, 13.5 * MiB)],
              {"y": 6.75 * MiB, "x": 3.4 * MiB})
    assert accel._padded_parts(gx, 4) == 4 and accel._padded_parts(gx, 6) == 6 and accel._padded_parts(gx, 3) == 3
    same = Plan("forward", [(0, "y", True, r, None, 20 * MiB)], {"y": 20 * MiB})
    assert accel._padded_parts(same, 4) == 1
    small = Plan("forward", [(0, "y", True, r, None, 4 * MiB)], {"y": 1 * MiB})
    assert accel._padded_parts(small, 4) == 1
    assert accel._padded_parts(Plan("weight", fwd.steps, {"w": 1, "y": 6.75 * MiB}), 2) == 1


@needs_onednn
@pytest.mark.parametrize("transposed", [False, True])
def test_batch_slices_for_padded_layouts_match_torch(monkeypatch, transposed):
    """With the slicing forced (any padding, any size), the forward and the input gradient run
    slice by slice and still match PyTorch in float64."""
    monkeypatch.setattr(accel, "_PAD_RATIO", 0.0)
    monkeypatch.setattr(accel, "_PAD_MIN_BYTES", 0)
    sliced = []
    real = accel._padded_parts
    monkeypatch.setattr(accel, "_padded_parts", lambda plan, N: sliced.append(real(plan, N)) or sliced[-1])
    rng = np.random.default_rng(50)
    ws = (4, 3, 3, 3, 3) if transposed else (3, 4, 3, 3, 3)
    arrs = [rng.standard_normal((4, 4, 6, 5, 7)), rng.standard_normal(ws), rng.standard_normal(3)]
    _conv_vs_torch(3, arrs, dict(padding=1), rng, transposed=transposed)
    assert any(k > 1 for k in sliced), sliced


def test_prefer_avx2_rule(monkeypatch):
    """4-d convolutions with at most 8 outputs, ungrouped, take oneDNN's AVX2 kernels on AVX-512
    CPUs (``_prefer_avx2``); nothing changes elsewhere."""
    monkeypatch.setattr(dnnl, "avx512", lambda: True)
    assert accel._prefer_avx2(8, 1) and accel._prefer_avx2(1, 1)
    assert not accel._prefer_avx2(9, 1) and not accel._prefer_avx2(8, 2)
    monkeypatch.setattr(accel, "PREFER_AVX2", "never")
    assert not accel._prefer_avx2(4, 1)
    monkeypatch.setattr(accel, "PREFER_AVX2", "auto")
    monkeypatch.setattr(dnnl, "avx512", lambda: False)
    assert not accel._prefer_avx2(4, 1)


@needs_onednn
def test_conv4d_few_outputs_on_avx2_kernels_matches_torch():
    """A 4-d convolution with 8 outputs runs its inner convolutions on oneDNN's AVX2 kernels
    where the CPU has AVX-512 (where oneDNN has them: forward and input gradient) and its
    output and gradients match PyTorch's conv3d-sum reference in float64."""
    rng = np.random.default_rng(51)
    xa = rng.standard_normal((2, 4, 5, 6, 5, 6)).astype(np.float32)
    wa = (rng.standard_normal((8, 4, 3, 3, 3, 3)) * 0.2).astype(np.float32)
    ba = rng.standard_normal(8).astype(np.float32)
    kw = dict(padding=1)
    accel.clear_cache()
    x, w, b = (am.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    y = F.conv4d(x, w, b, **kw)
    g = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(am.tensor(g))
    tx, tw, tb, ty = torch_reference(xa, wa, ba, kw, False)
    ty.backward(torch.tensor(g.astype(np.float64)))
    _f32_close(y.detach().numpy(), ty.detach().numpy())
    for ours, theirs in ((x, tx), (w, tw), (b, tb)):
        _f32_close(ours.grad.numpy(), theirs.grad.numpy())
    keys = {k[0]: (k[-1], p.impl) for k, p in accel._cache.items()}
    if dnnl.avx512():
        assert keys["forward"] == (True, "jit:avx2") and keys["transpose"] == (True, "jit:avx2"), keys
    else:
        assert all(not avx2 for avx2, _ in keys.values()), keys


@needs_onednn
def test_plans_keep_their_memory_objects_per_thread():
    """A convolution plan makes its oneDNN memory objects once per thread and argument and
    re-points them at each call's buffers: a second call makes none, a call from another thread
    makes its own, and every result matches PyTorch in float64."""
    import threading
    from avila_ml.ops._conv_geometry import ConvGeometry
    g = ConvGeometry((1, 1), (1, 1), (1, 1), (1, 1), 1)
    rng = np.random.default_rng(52)
    x = rng.standard_normal((2, 8, 7, 6)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    ref = TF.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64), padding=1).numpy()
    accel.clear_cache()
    _f32_close(accel.conv_forward(x, w, g), ref)
    plan = accel._direct("forward", x.shape, w.shape, ref.shape, g)
    made = dict(plan._mems)
    assert made
    _f32_close(accel.conv_forward(x + 0, w, g), ref)  # new buffers, the same memory objects
    assert plan._mems == made
    out = []
    t = threading.Thread(target=lambda: out.append(accel.conv_forward(x, w, g)))
    t.start()
    t.join()
    _f32_close(out[0], ref)
    assert len(plan._mems) == 2 * len(made)
    accel.clear_cache()  # the plan and its memory objects go
