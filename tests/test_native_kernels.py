"""The element-wise kernels compiled with the package (``avila_ml/cpu_accel/kernels/*.c`` through
``_native.py``, issue 17): ReLU forward and backward, LeakyReLU backward.

Each kernel against PyTorch's CPU kernel on the values where formulas differ (NaN, +-inf, +-0),
float32 and float64, sizes below and above the threading cut (so the OpenMP split runs) and
lengths that are not multiples of the vector width; that they do not apply (return False, write
nothing) to other dtypes, strided or mismatched arrays; that the public ops give bitwise the
NumPy formulas' results with the kernels on and off, and PyTorch's gradients; that they are
built wherever a C compiler is present; and, in fresh processes, that loading them keeps
oneDNN's passive OpenMP waiting and that a forked child (a DataLoader worker) still runs them
and oneDNN's convolutions instead of hanging in the OpenMP runtime.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avila_ml as am
from avila_ml.cpu_accel import _native
from avila_ml.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_kernels = pytest.mark.skipif(not _native.available(), reason=f"no compiled kernels: {_native.absent_reason()}")
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0]


def _values(n, dtype, seed=0):
    """n values: the specials first, then normal samples."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(n).astype(dtype)
    k = min(n, len(SPECIALS))
    v[:k] = np.array(SPECIALS[:k], dtype=dtype)
    return v


def _same(a, b):
    """Bitwise-equal values where both are numbers (a NaN matches a NaN; -0 and +0 compared by
    value, as PyTorch's kernels do not promise a zero's sign)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def test_built_where_a_compiler_is():
    """``pip install -e .`` builds the extension wherever a C compiler is present (the Makefile
    and CI install that way): then the kernels must load, not silently fall back."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}): the extension is optional and not built")
    if os.environ.get("AVILA_ML_NATIVE_KERNELS") == "0":
        pytest.skip("switched off by AVILA_ML_NATIVE_KERNELS=0")
    assert _native.available(), _native.absent_reason()
    assert am.cpu_accel.kernels_available() and am.cpu_accel.kernels_absent_reason() is None
    assert _native.missing() == []  # every registered kernel is in the build (not a stale one)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 33, (1 << 16) + 5, (1 << 18) + 3])
def test_relu_forward_matches_torch(dtype, n):
    x = _values(n, dtype)
    y = np.full_like(x, 7.0)
    assert _native.relu_forward(x, y)
    assert _same(y, torch.relu(torch.from_numpy(x)).numpy())
    z = x.copy()  # in place (out is x)
    assert _native.relu_forward(z, z)
    assert _same(z, y)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 9, 40, (1 << 16) + 5, (1 << 18) + 3])
def test_relu_backward_matches_threshold_backward(dtype, n):
    # every (g, y) pair of specials, then random ones
    g = _values(n, dtype, seed=1)
    y = np.maximum(_values(n, dtype, seed=2), 0)  # a ReLU output: >= 0 or NaN
    k = len(SPECIALS)
    if n >= k * k:
        g[:k * k] = np.repeat(np.array(SPECIALS, dtype), k)
        y[:k * k] = np.tile(np.array(SPECIALS, dtype), k)  # negative y too: the formula's y <= 0
    out = np.empty_like(g)
    assert _native.relu_backward(g, y, out)
    ref = torch.ops.aten.threshold_backward(torch.from_numpy(g), torch.from_numpy(y), 0).numpy()
    assert _same(out, ref)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", [0.01, 0.2, 0.0, 1.0, 3.5, -0.5])
@pytest.mark.parametrize("n", [5, 81, (1 << 18) + 3])
def test_leaky_relu_backward_matches_torch(dtype, slope, n):
    g = _values(n, dtype, seed=3)
    x = _values(n, dtype, seed=4)
    k = len(SPECIALS)
    if n >= k * k:
        g[:k * k] = np.repeat(np.array(SPECIALS, dtype), k)
        x[:k * k] = np.tile(np.array(SPECIALS, dtype), k)
    out = np.empty_like(g)
    assert _native.leaky_relu_backward(g, x, slope, out)
    ref = torch.ops.aten.leaky_relu_backward(torch.from_numpy(g), torch.from_numpy(x), slope, False).numpy()
    assert _same(out, ref)


@needs_kernels
def test_declines_what_it_does_not_take():
    """Other dtypes, strided views, shape or dtype mismatches and read-only outputs: False,
    nothing written (the caller runs NumPy)."""
    x = np.arange(-8, 8, dtype=np.float32)
    for args in [(x.astype(np.float16), np.empty(16, np.float16)),
                 (x.astype(np.int32), np.empty(16, np.int32)),
                 (x[::2], np.empty(8, np.float32)),
                 (x, np.empty(15, np.float32)),
                 (x, np.empty(16, np.float64)),
                 ([1.0, 2.0], np.empty(2, np.float32))]:
        out = args[1]
        before = out.copy() if isinstance(out, np.ndarray) else None
        assert not _native.relu_forward(*args)
        assert before is None or np.array_equal(out, before, equal_nan=True)
    ro = np.empty(16, np.float32)
    ro.flags.writeable = False
    assert not _native.relu_forward(x, ro)
    assert not _native.relu_backward(x, x, np.empty((4, 4), np.float32))
    assert not _native.leaky_relu_backward(x, x[::-1], 0.1, np.empty(16, np.float32))


@needs_kernels
def test_switched_off(monkeypatch):
    monkeypatch.setattr(_native, "ENABLED", False)
    x = np.ones(4, np.float32)
    assert not _native.available() and "switched off" in _native.absent_reason()
    assert not _native.relu_forward(x, np.empty_like(x))


def _grads(fn, x, g, native, monkeypatch):
    monkeypatch.setattr(_native, "ENABLED", native)
    xt = am.tensor(x.copy(), requires_grad=True)
    y = fn(xt * 1.0)  # (a non-leaf, so the in-place forms may write into it)
    y.backward(am.tensor(g))
    return y.detach().numpy(), xt.grad.numpy()


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["relu", "relu_", "relu_inplace", "leaky", "leaky_inplace", "leaky_neg"])
def test_ops_same_with_and_without_kernels_and_match_torch(name, dtype, monkeypatch):
    ours, theirs = {
        "relu": (F.relu, TF.relu),
        "relu_": (lambda t: t.relu_(), lambda t: t.relu_()),
        "relu_inplace": (lambda t: F.relu(t, inplace=True), lambda t: TF.relu(t, inplace=True)),
        "leaky": (lambda t: F.leaky_relu(t, 0.1), lambda t: TF.leaky_relu(t, 0.1)),
        "leaky_inplace": (lambda t: F.leaky_relu(t, 0.2, inplace=True), lambda t: TF.leaky_relu(t, 0.2, inplace=True)),
        "leaky_neg": (lambda t: F.leaky_relu(t, -0.3), lambda t: TF.leaky_relu(t, -0.3)),
    }[name]
    shape = (4, 8, 96, 96)  # 2^18+ elements: the threaded split
    x = _values(int(np.prod(shape)), dtype, seed=5).reshape(shape)
    g = _values(x.size, dtype, seed=6).reshape(shape)
    y1, gx1 = _grads(ours, x, g, True, monkeypatch)
    y0, gx0 = _grads(ours, x, g, False, monkeypatch)
    assert _same(y1, y0) and _same(gx1, gx0)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt * 1.0)
    yt.backward(torch.tensor(g))
    assert _same(y1, yt.detach().numpy())
    assert _same(gx1, xt.grad.numpy())


@needs_kernels
def test_kernels_ran_for_relu(monkeypatch):
    """The ops reach the kernels (a spy), and double backward (a graph of the gradient) does
    not: it stays on Tensor ops, checked against PyTorch."""
    seen = []
    for name in ("relu_forward", "relu_backward", "leaky_relu_backward"):
        real = getattr(_native, name)
        monkeypatch.setattr(_native, name, lambda *a, _r=real, _n=name: seen.append(_n) or _r(*a))
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    xt = am.tensor(x, requires_grad=True)
    F.relu(xt).sum().backward()
    F.leaky_relu(am.tensor(x, requires_grad=True), 0.1).sum().backward()
    assert seen == ["relu_forward", "relu_backward", "leaky_relu_backward"]
    seen.clear()
    x64 = x.astype(np.float64)
    a = am.tensor(x64, requires_grad=True)
    (gx,) = am.autograd.grad((F.leaky_relu(a, 0.1) ** 2).sum(), a, create_graph=True)
    assert "leaky_relu_backward" not in seen  # building a graph: the Tensor-op backward
    (gg,) = am.autograd.grad(gx.sum(), a)
    t = torch.tensor(x64, requires_grad=True)
    (tgx,) = torch.autograd.grad((TF.leaky_relu(t, 0.1) ** 2).sum(), t, create_graph=True)
    (tgg,) = torch.autograd.grad(tgx.sum(), t)
    assert np.allclose(gg.numpy(), tgg.numpy(), rtol=1e-12, atol=0)


def _run(code, env=None):
    e = dict(os.environ, PYTHONPATH=ROOT)
    for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "AVILA_ML_NATIVE_KERNELS"):
        e.pop(v, None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)


@needs_kernels
def test_loading_keeps_onednn_passive():
    """Loading the kernels (OpenMP) in a fresh process, before any convolution, leaves oneDNN
    loaded with passive OpenMP waits (a first version reset that flag, which sent every
    convolution down the batch-parts path: DCGAN step 137 -> 200 ms)."""
    r = _run("import numpy as np\n"
             "from avila_ml.cpu_accel import _native, _dnnl\n"
             "x = np.ones(1 << 20, np.float32)\n"
             "assert _native.relu_forward(x, np.empty_like(x))\n"
             "print(_dnnl.available(), _dnnl.passive_wait())\n")
    assert r.returncode == 0, r.stderr
    available, passive = r.stdout.split()
    assert passive == available  # passive wherever oneDNN is there


@needs_kernels
def test_forked_child_runs_openmp_work():
    """A child forked after the parent ran OpenMP regions (the kernels and, with oneDNN, a
    convolution) runs them on one thread instead of hanging in GNU libgomp
    (``_dnnl.guard_fork``), as a DataLoader worker with the 'fork' start method does."""
    code = ("import multiprocessing as mp, numpy as np, avila_ml as am\n"
            "from avila_ml.nn import functional as F\n"
            "x = am.randn(4, 8, 64, 64); w = am.randn(8, 8, 3, 3)\n"
            "def work():\n"
            "    y = F.relu(x)\n"
            "    c = F.conv2d(x, w, padding=1)\n"
            "    return float(y.sum().item()), float(c.sum().item())\n"
            "expect = work()\n"
            "def child(q):\n"
            "    q.put(work())\n"
            "ctx = mp.get_context('fork'); q = ctx.Queue(); p = ctx.Process(target=child, args=(q,))\n"
            "p.start(); got = q.get(timeout=60); p.join(30)\n"
            "assert p.exitcode == 0, p.exitcode\n"
            "assert np.allclose(got, expect, rtol=1e-5), (got, expect)\n"
            "print('ok')\n")
    r = _run(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ------------------------------------------------------------------------------ batch norm
def _bn_case(shape, dtype, affine, seed, offset=2.0, scale=3.0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * scale + offset).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal(c) + 1).astype(dtype) if affine in ("both", "weight") else None
    b = rng.standard_normal(c).astype(dtype) if affine in ("both", "bias") else None
    return x, g, w, b


def _bn_ours(x, g, w, b, momentum=0.3):
    c = x.shape[1]
    t = am.tensor(x, requires_grad=True)
    tw = None if w is None else am.tensor(w, requires_grad=True)
    tb = None if b is None else am.tensor(b, requires_grad=True)
    rm, rv = am.zeros(c, dtype=t.dtype), am.ones(c, dtype=t.dtype)
    y = F.batch_norm(t, rm, rv, tw, tb, training=True, momentum=momentum)
    ran = y.grad_fn.bn is not None and y.grad_fn.xc is None  # the kernel ran (before release)
    y.backward(am.tensor(g))
    grads = [t.grad.numpy()] + [v.grad.numpy() for v in (tw, tb) if v is not None]
    return ran, y.detach().numpy(), rm.numpy(), rv.numpy(), grads


def _bn_torch64(x, g, w, b, momentum=0.3):
    c = x.shape[1]
    d = lambda a: None if a is None else torch.tensor(a.astype(np.float64), requires_grad=True)  # noqa: E731
    rx, rw, rb = d(x), d(w), d(b)
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    y = TF.batch_norm(rx, rm, rv, rw, rb, training=True, momentum=momentum)
    y.backward(torch.tensor(g.astype(np.float64)))
    grads = [rx.grad.numpy()] + [v.grad.numpy() for v in (rw, rb) if v is not None]
    return y.detach().numpy(), rm.numpy(), rv.numpy(), grads


@needs_kernels
@pytest.mark.parametrize("shape", [(16, 64, 64), (16, 32, 300), (8, 16, 24, 24), (64, 64, 6, 6), (2, 4, 12, 40, 40)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_kernel_matches_torch(shape, affine, dtype, monkeypatch):
    """The compiled batch norm (training): output, running statistics (unbiased variance) and
    every gradient against PyTorch in float64, BatchNorm1d over positions to 3-d volumes."""
    monkeypatch.setattr(_native, "ENABLED", True)
    x, g, w, b = _bn_case(shape, dtype, affine, seed=11)
    ran, y, rm, rv, grads = _bn_ours(x, g, w, b)
    assert ran
    ry, rrm, rrv, rgrads = _bn_torch64(x, g, w, b)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ry, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(rm, rrm, rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, rrv, rtol=tol, atol=tol)
    for ours, ref in zip(grads, rgrads):
        np.testing.assert_allclose(ours, ref, rtol=10 * tol, atol=10 * tol * np.abs(ref).max())


@needs_kernels
def test_batch_norm_kernel_large_mean_and_thread_count(monkeypatch):
    """A large mean over a small spread (the variance from x - mean, two passes, in double: no
    cancellation), against PyTorch in float64; and bitwise the same on one and two threads
    (each channel is summed by one thread in one order)."""
    monkeypatch.setattr(_native, "ENABLED", True)
    x, g, w, b = _bn_case((16, 8, 32, 32), np.float32, "both", seed=12, offset=1e4, scale=0.01)
    ry, _, rrv, rgrads = _bn_torch64(x, g, w, b)
    before = am.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            am.set_num_threads(n)
            results.append(_bn_ours(x, g, w, b))
    finally:
        am.set_num_threads(before)
    (_, y1, _, v1, g1), (_, y2, _, v2, g2) = results
    assert np.array_equal(y1, y2) and np.array_equal(v1, v2)
    assert all(np.array_equal(a, c) for a, c in zip(g1, g2))
    np.testing.assert_allclose(v1, rrv, rtol=1e-5)
    # y = x a + (b - mean a) in float32, PyTorch's form: an absolute error of a few ulps of x a
    np.testing.assert_allclose(y1, ry, atol=8 * np.finfo(np.float32).eps * np.abs(x * (w / 0.01)[None, :, None, None]).max())
    # dx from x - mean (PyTorch's order): relative to the gradient's scale
    np.testing.assert_allclose(g1[0], rgrads[0], atol=1e-3 * np.abs(rgrads[0]).max())


@needs_kernels
def test_batch_norm_kernel_switched_off_before_backward(monkeypatch):
    """Kernels switched off between the forward and the backward: the backward falls back to the
    NumPy passes on a recomputed x - mean, same gradients."""
    x, g, w, b = _bn_case((8, 16, 24, 24), np.float64, "both", seed=13)
    monkeypatch.setattr(_native, "ENABLED", True)
    t = am.tensor(x, requires_grad=True)
    tw, tb = am.tensor(w, requires_grad=True), am.tensor(b, requires_grad=True)
    y = F.batch_norm(t, None, None, tw, tb, training=True)
    assert y.grad_fn.bn is not None
    monkeypatch.setattr(_native, "ENABLED", False)
    y.backward(am.tensor(g))
    _, _, _, rgrads = _bn_torch64(x, g, w, b)
    for ours, ref in zip((t.grad, tw.grad, tb.grad), rgrads):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


@needs_kernels
def test_batch_norm_kernel_double_backward_and_inplace_check(monkeypatch):
    """create_graph keeps the Tensor-op formula (second derivatives vs PyTorch), and an in-place
    change of the input after the forward is refused at the backward, as for every saved input."""
    monkeypatch.setattr(_native, "ENABLED", True)
    x, g, w, b = _bn_case((8, 8, 32, 32), np.float64, "both", seed=14)
    t, tw = am.tensor(x, requires_grad=True), am.tensor(w, requires_grad=True)
    y = F.batch_norm(t, None, None, tw, None, training=True)
    assert y.grad_fn.bn is not None
    (gx,) = am.autograd.grad((y ** 3).sum(), t, create_graph=True)
    (gw,) = am.autograd.grad((gx ** 2).sum(), tw)
    rx, rw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ry = TF.batch_norm(rx, None, None, rw, None, training=True)
    (rgx,) = torch.autograd.grad((ry ** 3).sum(), rx, create_graph=True)
    (rgw,) = torch.autograd.grad((rgx ** 2).sum(), rw)
    np.testing.assert_allclose(gw.numpy(), rgw.numpy(), rtol=1e-9)
    z = am.tensor(x.copy(), requires_grad=True)
    h = z * 1.0
    out = F.batch_norm(h, None, None, None, None, training=True)
    assert out.grad_fn.bn is not None
    with am.no_grad():
        h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation|in-place|inplace"):
        out.sum().backward()


# ------------------------------------------------------------------------------ binary arithmetic
@needs_kernels
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_bitwise_numpy(op, dtype):
    """add/sub/mul/div on the OpenMP team: bitwise NumPy's and PyTorch's result (specials
    included), fresh or in place into either operand; None (nothing written) below the
    threading cut, for mixed shapes or dtypes, and for an output overlapping an operand at an
    offset."""
    n = (1 << 16) + 7
    a, b = _values(n, dtype, seed=21), _values(n, dtype, seed=22)[::-1].copy()
    ufunc = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[op]
    with np.errstate(all="ignore"):
        ref = ufunc(a, b)
    out = _native.binary(op, a, b)
    assert out is not None and _same(out, ref) and np.array_equal(np.signbit(out), np.signbit(ref))
    tref = getattr(torch, op)(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert _same(out, tref)  # and PyTorch's (IEEE operations: the same bits)
    for target in ("a", "b"):
        x, y = a.copy(), b.copy()
        dst = x if target == "a" else y
        assert _native.binary(op, x, y, dst) is dst and _same(dst, ref)
    small = np.ones(100, dtype)
    assert _native.binary(op, small, small) is None
    assert _native.binary(op, a, b.astype(np.float16)) is None
    assert _native.binary(op, a, b[:-1]) is None
    big = np.ones(n + 1, dtype)
    assert _native.binary(op, big[1:], big[:-1], big[1:]) is None  # overlapping at an offset


@needs_kernels
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_with_a_number_bitwise_numpy(op, dtype):
    """One operand a single element (``x * 2``: the number as a 0-d array of x's dtype) on
    either side: bitwise NumPy's and PyTorch's result, specials included, fresh or in place;
    None for a number of another dtype or a broadcast that grows the result."""
    n = (1 << 16) + 5
    a = _values(n, dtype, seed=31)
    ufunc = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[op]
    for value in (2.5, -0.0, np.inf, np.nan, 3e-39):
        num = np.array(value, dtype)
        for left in (False, True):
            x, y = (num, a) if left else (a, num)
            with np.errstate(all="ignore"):
                ref = ufunc(x, y)
            out = _native.binary(op, x, y)
            assert out is not None and _same(out, ref) and np.array_equal(np.signbit(out), np.signbit(ref))
            tref = getattr(torch, op)(torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y))).numpy()
            assert _same(out, tref)
        inplace = a.copy()
        assert _native.binary(op, inplace, num, inplace) is inplace
        with np.errstate(all="ignore"):
            assert _same(inplace, ufunc(a, num))
    assert _native.binary(op, a, np.array(2.0, np.float16)) is None
    assert _native.binary(op, a, np.ones((1, 1), dtype)) is None  # (1, n): not a's shape


@needs_kernels
def test_binary_ops_same_with_and_without_kernels(monkeypatch):
    """The autograd ops (forward, backward, in-place add/sub, gradient accumulation of a leaf used
    twice) give bitwise the same values with the kernels on and off, and PyTorch's values."""
    rng = np.random.default_rng(23)
    xn = rng.standard_normal((256, 300)).astype(np.float32)
    yn = (rng.standard_normal((256, 300)) + 3).astype(np.float32)

    def run(lib, native=True):
        monkeypatch.setattr(_native, "ENABLED", native)
        x, y = lib.tensor(xn, requires_grad=True), lib.tensor(yn, requires_grad=True)
        h = x * y
        h = h / y - x
        h = h + x * x
        z = h * 1.0
        z += y
        z -= x
        z = (2.0 - z) / 3.0 + 0.5 * (1.0 / y)  # numbers on either side (the scalar kernels)
        z.sum().backward()
        return z.detach().numpy(), x.grad.numpy(), y.grad.numpy()

    on, off = run(am, True), run(am, False)
    assert all(np.array_equal(a, b) for a, b in zip(on, off))
    for ours, ref in zip(on, run(torch)):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)  # float32, a few ops: a few ulps


# ------------------------------------------------------------------------------ max pooling
POOL_CASES = [  # kernel, stride, padding, dilation, ceil_mode
    (2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 1, 1, 2, False), (3, 2, 1, 1, True),
    ((2, 3), (1, 2), (1, 0), (1, 2), True), (1, 1, 0, 1, False), ((4, 2), (3, 3), (2, 1), 1, True),
]


@needs_kernels
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_kernel_matches_torch_and_numpy(case, dtype, monkeypatch):
    """2-d max pooling by the compiled kernel and by the NumPy passes: outputs, indices
    (return_indices) and input gradients bitwise equal to each other and to PyTorch's, with a
    NaN (the last NaN wins), an all--inf window (its first inside position), ties (the first
    maximum), padding, dilation and ceil mode; double backward through the Tensor-op adjoint."""
    k, s, p, d, ceil = case
    rng = np.random.default_rng(31)
    x = rng.standard_normal((3, 4, 13, 11)).astype(dtype)
    x[0, 0, 3, 3] = x[0, 0, 3, 5] = np.nan
    x[1, 1, :5, :5] = -np.inf
    x[2, 2, 5, 5] = x[2, 2, 5, 6] = x[2, 2, 6, 5] = 9.0

    def run(native):
        monkeypatch.setattr(_native, "ENABLED", native)
        t = am.tensor(x, requires_grad=True)
        y, idx = F.max_pool2d(t, k, s, p, d, ceil_mode=ceil, return_indices=True)
        g = np.random.default_rng(32).standard_normal(y.shape).astype(dtype)
        y.backward(am.tensor(g))
        return y.detach().numpy(), idx.numpy(), t.grad.numpy(), g

    on, off = run(True), run(False)
    tx = torch.tensor(x, requires_grad=True)
    ty, ti = TF.max_pool2d(tx, k, s, p, d, ceil_mode=ceil, return_indices=True)
    ty.backward(torch.tensor(on[3]))
    for a, b, ref in zip(on[:2], off[:2], (ty.detach().numpy(), ti.numpy())):
        assert _same(a, b) and _same(a, ref)
    # the gradient: the kernel adds overlapping windows' values in PyTorch's order (bitwise); the
    # NumPy scatter sums them in another order (bincount), equal up to rounding
    assert _same(on[2], tx.grad.numpy())
    np.testing.assert_allclose(off[2], on[2], rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)
    monkeypatch.setattr(_native, "ENABLED", True)
    x64 = rng.standard_normal((2, 3, 8, 8))
    t = am.tensor(x64, requires_grad=True)
    (gx,) = am.autograd.grad((F.max_pool2d(t, 2) ** 2).sum(), t, create_graph=True)
    (gg,) = am.autograd.grad((gx ** 2).sum(), t)
    r = torch.tensor(x64, requires_grad=True)
    (rgx,) = torch.autograd.grad((TF.max_pool2d(r, 2) ** 2).sum(), r, create_graph=True)
    (rgg,) = torch.autograd.grad((rgx ** 2).sum(), r)
    np.testing.assert_allclose(gg.numpy(), rgg.numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------ amax / amin backward
@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["amax23", "amin123", "max_all", "min_all"])
def test_amax_backward_kernel_matches_torch_and_numpy(op, dtype, monkeypatch):
    """amax/amin's gradient over trailing axes by the compiled kernel and by the NumPy formula:
    bitwise PyTorch's, with ties (shared as (g / count) * mask), a NaN result (NaN over its
    row; max()/min() of everything: the NaN elements share g), an infinite g; double backward
    through the Tensor-op formula."""
    rng = np.random.default_rng(41)
    x = rng.standard_normal((8, 16, 20, 20)).astype(dtype)
    x[0, 0, 0, :3] = 50.0
    x[1, 1, 2, 2] = np.nan
    x[3, 3] = 7.0
    x[4, 5, 6, 7] = x[4, 5, 7, 6] = -60.0

    def run(lib, native=True):
        monkeypatch.setattr(_native, "ENABLED", native)
        t = lib.tensor(x, requires_grad=True)
        if op == "amax23":
            y = lib.amax(t, dim=(2, 3))
        elif op == "amin123":
            y = lib.amin(t, dim=(1, 2, 3))
        else:
            y = t.max() if op == "max_all" else t.min()
        g = np.random.default_rng(42).standard_normal(tuple(y.shape)).astype(dtype)
        if g.ndim:
            g.reshape(-1)[2] = np.inf
        y.backward(lib.tensor(g))
        return t.grad.numpy()

    ref = run(torch)
    assert _same(run(am, True), ref) and _same(run(am, False), ref)
    monkeypatch.setattr(_native, "ENABLED", True)
    x64 = rng.standard_normal((3, 4, 5, 6))
    t = am.tensor(x64, requires_grad=True)
    (gx,) = am.autograd.grad((am.amax(t, dim=(2, 3)) ** 2).sum(), t, create_graph=True)
    (gg,) = am.autograd.grad((gx * t).sum(), t)
    r = torch.tensor(x64, requires_grad=True)
    (rgx,) = torch.autograd.grad((torch.amax(r, dim=(2, 3)) ** 2).sum(), r, create_graph=True)
    (rgg,) = torch.autograd.grad((rgx * r).sum(), r)
    np.testing.assert_allclose(gg.numpy(), rgg.numpy(), rtol=1e-12)


@needs_kernels
@pytest.mark.parametrize("shape", [(512, 256), (32, 256, 4, 4), (32, 512, 4)])
def test_batch_norm_few_positions_stay_on_numpy(shape, monkeypatch):
    """Fewer than 32 positions per channel row (normalization._NATIVE_MIN_S; BatchNorm1d of
    (N, C) has one): the kernel's row-by-row sums lose to the NumPy passes, which run instead;
    values against PyTorch in float64."""
    monkeypatch.setattr(_native, "ENABLED", True)
    x, g, w, b = _bn_case(shape, np.float32, "both", seed=15)
    ran, y, rm, rv, grads = _bn_ours(x, g, w, b)
    assert not ran
    ry, rrm, rrv, rgrads = _bn_torch64(x, g, w, b)
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=1e-5)
    for ours, ref in zip(grads, rgrads):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,i0,j0", [((3, 5, 7), 0, 0), ((2, 4, 9), 3, 0), ((1, 6, 5), 0, 2), ((2, 3, 4), 0, 8),
                                          ((4, 64, 300), 40, 16)])
def test_causal_zero_matches_the_numpy_mask(shape, i0, j0, dtype, monkeypatch):
    """The attention's causal mask: zeros exactly where key j0 + c lies after query i0 + r,
    everything else untouched (infinities and NaN included: a store, not a product)."""
    from avila_ml.ops import _attention_fused as A
    p = _values(int(np.prod(shape)), dtype, seed=3).reshape(shape)
    ours = p.copy()
    assert _native.causal_zero(ours, i0, j0)
    ref = p.copy()
    monkeypatch.setattr(_native, "causal_zero", lambda *a: False)
    A._zero_above_diagonal(ref, i0, j0)
    assert _same(ours, ref)
    later = np.arange(j0, j0 + shape[2])[None, :] > np.arange(i0, i0 + shape[1])[:, None]
    assert np.all(ours[:, later] == 0) and _same(ours[:, ~later], p[:, ~later])


@needs_kernels
def test_kernels_use_one_thread_where_the_thread_asks_for_one():
    """A thread under ``one_omp_thread`` (a part of the fused attention or of a matmul split
    among Python threads) gets no OpenMP team of its own: the other parts hold the cores."""
    from avila_ml.cpu_accel import _dnnl
    from avila_ml.cpu_accel._matmul import one_omp_thread
    if _dnnl.load() is None:
        pytest.skip("one_omp_thread sets oneDNN's OpenMP runtime: oneDNN not installed")
    with one_omp_thread():
        assert _native.threads_for(1 << 24) == 1


@needs_kernels
def test_medium_work_leaves_openblas_workers_up_in_a_product_loop(monkeypatch):
    """Work between _SPLIT_MIN and _SPLIT_MIN_BLAS_UP elements stops NumPy's OpenBLAS workers
    and splits when they are up; if they are up again within _RESTART_WINDOW of that stop
    (products and element-wise work alternating, a recurrent layer's step loop) it runs on one
    thread and leaves them up; after the window it stops them again. Larger work always stops
    them and splits."""
    from avila_ml.cpu_accel import _dnnl
    from avila_ml.ops import _cpu_threads
    monkeypatch.setattr(_cpu_threads, "blas_threads", lambda: 2)
    # the refs are taken at the first call: dropped here, restored by monkeypatch afterwards
    monkeypatch.delitem(_native._state, "threads", raising=False)
    monkeypatch.delitem(_native._state, "blas_stopped", raising=False)
    up, stopped, clock = [True], [], [100.0]
    monkeypatch.setattr(_dnnl, "blas_workers_up", lambda: up[0])
    monkeypatch.setattr(_dnnl, "quiet_blas", lambda: stopped.append(clock[0]) or up.__setitem__(0, False))
    monkeypatch.setattr(_native, "_clock", lambda: clock[0])
    medium, large, window = _native._SPLIT_MIN, _native._SPLIT_MIN_BLAS_UP, _native._RESTART_WINDOW
    assert _native.threads_for(medium) == 2 and stopped == [100.0]  # up since long ago: stopped once
    assert _native.threads_for(medium) == 2 and len(stopped) == 1  # down: split, nothing to stop
    up[0] = True  # a product restarted them
    clock[0] += window / 2
    assert _native.threads_for(medium) == 1 and len(stopped) == 1  # alternating: left up
    assert _native.threads_for(large) == 2 and len(stopped) == 2  # large work stops them
    up[0] = True
    clock[0] += 2 * window
    assert _native.threads_for(medium) == 2 and len(stopped) == 3  # the window has passed
    assert _native.threads_for(medium - 1) == 1


@needs_kernels
def test_addr_is_the_arrays_data_pointer():
    """The compiled module's address() (the buffer protocol) that the wrappers hand to the C
    calls: the same pointer as NumPy's ``a.ctypes.data`` for every kind of array they see."""
    import ml_dtypes
    from avila_ml.cpu_accel import _kernels
    assert _native.addr is _kernels.address  # (the kernels loaded: the fast form is in place)
    a = np.arange(60, dtype=np.float32).reshape(6, 10)
    ro = np.ones(3)
    ro.flags.writeable = False
    for v in (a, a[:, ::3], a.T, a[2:], np.array(1.5, np.float32), np.ones(0), np.ones(4, np.float16),
              np.ones(4, ml_dtypes.bfloat16), np.ones(3, bool), ro):
        assert _native.addr(v) == v.ctypes.data
    with pytest.raises(TypeError):
        _native.addr([1.0, 2.0])  # not a buffer: refused, never a wrong pointer


@needs_kernels
@pytest.mark.parametrize("n", [7, (1 << 16) + 3])
def test_erf_rational_bitwise_the_numpy_passes(n, monkeypatch):
    """erf, the normal CDF and exact GELU of backends/_erf_float32.py: the one-pass kernel gives
    bitwise the NumPy passes' float32 results (signs of zero, NaN and +-inf included), below and
    above the threading cut."""
    from avila_ml.backends import _erf_float32 as E
    x = (_values(n, np.float32, seed=41) * np.float32(2.5)).astype(np.float32)
    fns = (E.erf, E.normal_cdf, E.gelu)
    with np.errstate(all="ignore"):
        ours = [f(x) for f in fns]
        monkeypatch.setattr(_native, "ENABLED", False)
        ref = [f(x) for f in fns]
    for a, b in zip(ours, ref):
        assert _same(a, b) and np.array_equal(np.signbit(a), np.signbit(b))


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 5), (2, 3), (63, 17), (2048, 384), (700, 1000), (5, 70000), (0, 4), (9, 0)],
                         ids=str)
def test_column_sums_match_float64_sums(dtype, shape, monkeypatch):
    """The linear layers' bias gradient (``column_sums``): against float64 sums within the
    error of a two-level float32 sum, on one thread and on teams of 2 and 3 (row blocks split
    unevenly), the same bits on a repeat of one team size; NaN and infinities propagate as in
    a plain sum; no 2-d C-contiguous operands, no kernel."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal(shape).astype(dtype)
    if g.size > 3:
        g.flat[1], g.flat[2] = np.nan, np.inf
    ref = g.astype(np.float64).sum(0)
    tol = 1e-12 if dtype == np.float64 else 2e-6 * (64 + shape[0] / 64)
    outs = []
    for threads in (1, 2, 3, 2):
        monkeypatch.setattr(_native, "threads_for", lambda n, t=threads: t)
        out = np.full(shape[1], -7.0, dtype)
        assert _native.column_sums(g, out)
        assert np.array_equal(np.isnan(out), np.isnan(ref)) and np.array_equal(np.isinf(out), np.isinf(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(out[fin], ref[fin], rtol=0, atol=tol * max(1.0, np.abs(g[:, fin]).max(initial=0)))
        outs.append(out)
    assert _same(outs[1], outs[3])
    if shape[0] > 1 and shape[1] > 2:
        assert not _native.column_sums(g[:, ::2], np.empty(g[:, ::2].shape[1], dtype))  # strided rows
    assert not _native.column_sums(g.astype(np.float16), np.empty(shape[1], np.float16))
    assert not _native.column_sums(g, np.empty(shape[1] + 1, dtype))


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [7, 1000, (1 << 18) + 3])
def test_gelu_backward_kernel_matches_torch(dtype, n):
    """Exact GELU's input gradient by the compiled kernel (float32: the rational normal CDF and
    the kernels' exp; float64: libm's erf) against PyTorch's gelu_backward in float64: within
    6 float32 ulps (float32) or 20 float64 ulps (float64) of max(|x|, 1) |g|; NaN where PyTorch
    gives NaN (x NaN or +-inf); the op takes it, and gives the same values with the kernels off
    to the NumPy formula's accuracy."""
    from avila_ml.backends import _erf_float32 as erf32
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(n) * 3).astype(dtype)
    x[:7] = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 40.0, -40.0], dtype)[:len(x[:7])]
    g = rng.standard_normal(n).astype(dtype)
    ref = torch.ops.aten.gelu_backward(torch.from_numpy(g.astype(np.float64)), torch.from_numpy(x.astype(np.float64))).numpy()
    dx = erf32.gelu_backward(g, x)
    assert dx is not None and dx.dtype == dtype
    assert np.array_equal(np.isnan(dx), np.isnan(ref))
    fin = ~np.isnan(ref)
    ulps = 6 if dtype == np.float32 else 20  # (Phi + x phi cancels near x = -0.75: no relative bound there)
    tol = ulps * np.finfo(dtype).eps * np.maximum(np.abs(x[fin].astype(np.float64)), 1) * np.abs(g[fin])
    assert np.all(np.abs(dx[fin] - ref[fin]) <= tol)
    assert erf32.gelu_backward(g[::2], x[::2]) is None                      # strided
    assert erf32.gelu_backward(g[:-1], x[1:].copy()[:-1].reshape(-1)[:0]) is None  # shapes differ / empty
    assert erf32.gelu_backward(g.astype(np.float16), x.astype(np.float16)) is None
    t = am.tensor(x, requires_grad=True)
    F.gelu(t).backward(am.tensor(g))
    assert _same(t.grad.numpy(), dx)                                        # the op's backward is the kernel


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_copy_strided_matches_numpy_assignment(dtype, monkeypatch):
    """The threaded strided copy: permuted, sliced and reversed views as destination and source,
    on teams of 1, 2 and 3 threads, bitwise NumPy's assignment; it declines what it does not take
    (last axis strided, dtypes or shapes differing, small, overlapping)."""
    rng = np.random.default_rng(10)
    src = rng.standard_normal((3, 5, 7, 64, 33)).astype(dtype)
    base = np.zeros((5, 64, 3, 7, 40), dtype)
    cases = [
        (lambda b: b[..., :33].transpose(2, 0, 3, 1, 4), lambda s: s),              # permuted, padded rows
        (lambda b: b[::-1, :, :, :, 2:35].transpose(2, 0, 3, 1, 4), lambda s: s),   # a reversed axis
        (lambda b: b[..., :33].transpose(2, 0, 3, 1, 4), lambda s: s.transpose(0, 1, 2, 3, 4)[:, ::-1]),  # reversed source
    ]
    for threads in (1, 2, 3):
        monkeypatch.setattr(_native, "threads_for", lambda n, t=threads: t)
        for make_dst, make_src in cases:
            ours, ref = base.copy(), base.copy()
            assert _native.copy_strided(make_dst(ours), make_src(src))
            make_dst(ref)[...] = make_src(src)
            assert np.array_equal(ours, ref)
    dst = base[..., :33].transpose(2, 0, 3, 1, 4)
    assert not _native.copy_strided(base[..., :66:2].transpose(2, 0, 3, 1, 4), src)  # last axis strided
    assert not _native.copy_strided(dst, src.astype(np.float16 if dtype == np.float32 else np.float32))
    assert not _native.copy_strided(dst[:, :, :, :10], src[:, :, :, :10][:1])
    assert not _native.copy_strided(np.empty((4, 8), dtype), np.ones((4, 8), dtype))  # below _COPY_MIN
    big = np.arange(2 * 40000, dtype=dtype).reshape(2, 40000)
    assert not _native.copy_strided(big[:, 1:], big[:, :-1])                            # overlapping


def test_split_backward_gradient_layout_and_values(monkeypatch):
    """q, k, v = qkv.reshape(B, T, 3, h, d).permute(2, 0, 3, 1, 4): the gradient of qkv against
    PyTorch's, the split's backward writing into the input's layout (threaded copy where built:
    each of the three slices went through it)."""
    real, used = _native.copy_strided, []
    monkeypatch.setattr(_native, "copy_strided", lambda d, s: used.append(r := real(d, s)) or r)
    rng = np.random.default_rng(11)
    xa = rng.standard_normal((4, 32, 3 * 4 * 64)).astype(np.float32)
    ga = [rng.standard_normal((4, 4, 32, 64)).astype(np.float32) for _ in range(3)]
    x = am.tensor(xa, requires_grad=True)
    q, k, v = x.reshape(4, 32, 3, 4, 64).permute(2, 0, 3, 1, 4)
    ((q * am.tensor(ga[0])).sum() + (k * am.tensor(ga[1])).sum() + (v * am.tensor(ga[2])).sum()).backward()
    tx = torch.tensor(xa, requires_grad=True)
    tq, tk, tv = tx.reshape(4, 32, 3, 4, 64).permute(2, 0, 3, 1, 4)
    ((tq * torch.tensor(ga[0])).sum() + (tk * torch.tensor(ga[1])).sum() + (tv * torch.tensor(ga[2])).sum()).backward()
    assert np.array_equal(x.grad.numpy(), tx.grad.numpy())
    if _native.available():
        assert used == [True, True, True]


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_index_add_rows_bitwise_add_at(dtype, monkeypatch):
    """index_add along the first axis by the compiled kernel: bitwise np.add.at (repeated
    indices accumulate in index order; NaN and inf propagate), on teams of 1, 2 and 3 threads;
    negative indices counted from the end; an index out of range raises IndexError naming it;
    the embedding gradient against PyTorch's."""
    from avila_ml.backends.numpy_backend import NumpyBackend
    rng = np.random.default_rng(12)
    n, m, d = 300, 2000, 24
    idx = rng.integers(-n, n, m)
    v = rng.standard_normal((m, d)).astype(dtype)
    v[5, 3], v[9, 0] = np.nan, np.inf
    ref = np.zeros((n, d), dtype)
    np.add.at(ref, idx, v)
    for threads in (1, 2, 3):
        monkeypatch.setattr(_native, "threads_for", lambda k, t=threads: t)
        out = np.zeros((n, d), dtype)
        NumpyBackend.index_add(out, 0, idx, v)
        assert _same(out, ref)
        direct = np.zeros((n, d), dtype)
        assert _native.index_add_rows(direct, np.where(idx < 0, idx + n, idx), v)
        assert _same(direct, ref)
    with pytest.raises(IndexError, match="out of bounds for dimension 0 of size 300"):
        NumpyBackend.index_add(np.zeros((n, d), dtype), 0, np.concatenate([idx[:-1], [n]]), v)
    assert not _native.index_add_rows(np.zeros((n, d), dtype), idx % n, np.asfortranarray(v))  # F-order values
    w = rng.standard_normal((n, d)).astype(dtype)
    tok = rng.integers(0, n, (16, 128))
    g = rng.standard_normal((16, 128, d)).astype(dtype)
    wt = am.tensor(w, requires_grad=True)
    F.embedding(am.tensor(tok), wt).backward(am.tensor(g))
    tw = torch.tensor(w, requires_grad=True)
    TF.embedding(torch.tensor(tok), tw).backward(torch.tensor(g))
    np.testing.assert_allclose(wt.grad.numpy(), tw.grad.numpy(), rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_augment_rows_matches_numpy(dtype, monkeypatch):
    """The fused attention's augmented operands [a scale, c] from permuted and broadcast views,
    on teams of 1 and 2 threads: bitwise NumPy's scaled copy; the row sums of squares within
    rounding of float64's; it declines a strided last axis, another dtype, a wrong out size."""
    rng = np.random.default_rng(13)
    qkv = rng.standard_normal((6, 40, 3, 4, 32)).astype(dtype)
    views = [qkv.transpose(2, 0, 3, 1, 4)[1], np.broadcast_to(qkv[0, :, 0, 0], (5, 40, 32))]
    for threads in (1, 2):
        monkeypatch.setattr(_native, "threads_for", lambda k, t=threads: t)
        for a in views:
            rows, n = a.size // a.shape[-1], a.shape[-1]
            out = np.full((rows, n + 1), np.nan, dtype)
            sq = np.full(rows, np.nan, dtype)
            assert _native.augment_rows(a, out, 0.25, -2.0, sq)
            ref = np.concatenate([(a * dtype(0.25)).reshape(rows, n), np.full((rows, 1), -2.0, dtype)], axis=1)
            assert np.array_equal(out, ref)
            np.testing.assert_allclose(sq, (ref[:, :n].astype(np.float64) ** 2).sum(1),
                                       rtol=1e-6 if dtype == np.float32 else 1e-13)
    out = np.empty((6 * 4 * 40, 33), dtype)
    assert not _native.augment_rows(qkv.transpose(2, 0, 3, 1, 4)[1][..., ::2], out, 1.0, 0.0)
    assert not _native.augment_rows(views[0].astype(np.float16), out.astype(np.float16), 1.0, 0.0)
    assert not _native.augment_rows(views[0], out[:-1], 1.0, 0.0)
