"""Fused SGD, RMSprop and Adam/AdamW updates as compiled kernels (``avila_ml/cpu_accel/kernels/optim.c``
through ``_native_optim.py``, used by ``optim/_fused.update``; issue 17).

Each configuration (momentum, dampening, nesterov, weight decay, maximize; alpha, eps, momentum,
centered; betas, weight decay L2 or decoupled, amsgrad) runs several steps with fresh random gradients, float32 and float64, on parameters
below and above the threading cut and of lengths that are not multiples of the vector width:
the kernel path gives bitwise the NumPy path's parameters and state (kernels switched off), and
torch.optim's trajectory (float64 to rounding, float32 to float32 rounding); the first step
initialises SGD's buffer to the gradient as PyTorch does. Also: the kernels ran (not a silent
fallback), and they refuse (return False, write nothing) what they do not handle.
"""
import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.cpu_accel import _native, _native_optim

needs_kernels = pytest.mark.skipif(not _native.available(), reason=f"no compiled kernels: {_native.absent_reason()}")
CONFIGS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, maximize=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.05, maximize=True)),
    ("SGD", dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.005, alpha=0.3, centered=True, momentum=0.5, weight_decay=0.1)),  # lerp_low off
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, betas=(0.3, 0.99), amsgrad=True, maximize=True)),  # lerp_low off
]
SIZES = [1, 7, 33, 1000, (1 << 16) + 5, (1 << 18) + 3]
STEPS = 4


def _ids(configs):
    return [f"{n}-" + ",".join(f"{k}={v}" for k, v in kw.items()) for n, kw in configs]


def _data(n, dtype, seed):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(n).astype(dtype), rng.standard_normal((3, 5)).astype(dtype)]
    grads = [[rng.standard_normal(a.shape).astype(dtype) for a in init] for _ in range(STEPS)]
    return init, grads


def _run(lib, name, kwargs, init, grads):
    """Parameters (and, for Avila ML, the optimizer's state arrays) after the steps, with
    ``lib`` avila_ml or torch."""
    params = [lib.tensor(a.copy(), requires_grad=True) for a in init]
    opt = getattr(lib.optim, name)(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = lib.tensor(g.copy())
        opt.step()
    state = [{k: v.numpy().copy() for k, v in opt.state[p].items() if isinstance(v, lib.Tensor)} for p in params]
    return [p.detach().numpy().copy() for p in params], state


def _ours(name, kwargs, init, grads):
    return _run(am, name, kwargs, init, grads)


def _torch(name, kwargs, init, grads):
    return _run(torch, name, kwargs, init, grads)[0]


@pytest.fixture
def kernel_steps(monkeypatch):
    """Counts the updates the compiled kernels did."""
    done = []
    real = _native_optim.step

    def spy(*a, **k):
        r = real(*a, **k)
        done.append(r)
        return r
    monkeypatch.setattr(_native_optim, "step", spy)
    return done


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=_ids(CONFIGS))
def test_kernel_step_matches_numpy_bitwise_and_torch(name, kwargs, n, dtype, kernel_steps, monkeypatch):
    init, grads = _data(n, dtype, seed=n)
    params, state = _ours(name, kwargs, init, grads)
    assert kernel_steps == [True] * (2 * STEPS)  # every update ran in C
    monkeypatch.setattr(_native, "ENABLED", False)
    ref_params, ref_state = _ours(name, kwargs, init, grads)
    for a, b in zip(params, ref_params):
        np.testing.assert_array_equal(a, b)
    for s, r in zip(state, ref_state):
        assert s.keys() == r.keys()
        for k in s:
            np.testing.assert_array_equal(s[k], r[k], err_msg=k)
    theirs = _torch(name, kwargs, init, grads)
    # float32: PyTorch's CPU kernels fuse ``grad + weight_decay * param`` into one FMA; where
    # the two nearly cancel (d ~ 1e-6 of values ~0.1: one element in 2^18 here) RMSprop's
    # d / (sqrt(v) + eps) turns that last-bit difference into up to ~1e-3 of the step lr * d / a
    # (the NumPy path, bitwise ours, differs from PyTorch the same way). float64: to rounding.
    rtol, atol = (1e-6, 1e-3 * kwargs["lr"]) if dtype == np.float32 else (1e-13, 1e-13)
    for a, b, a0 in zip(params, theirs, init):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
        assert np.abs(a - a0).max() > 1e-3  # the parameters moved: the comparison is not vacuous


@needs_kernels
def test_sgd_first_step_copies_the_gradient_into_the_buffer():
    """PyTorch's first momentum step: buffer = d (no dampening), then p -= lr * buffer."""
    p = am.tensor(np.array([1.0, -2.0, 3.0], np.float32), requires_grad=True)
    opt = am.optim.SGD([p], lr=0.5, momentum=0.9, dampening=0.5, weight_decay=0.25)
    p.grad = am.tensor(np.array([0.5, 1.0, -1.0], np.float32))
    opt.step()
    d = np.array([0.5 + 0.25, 1.0 - 0.5, -1.0 + 0.75], np.float32)
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"].numpy(), d)
    np.testing.assert_array_equal(p.detach().numpy(), np.array([1.0, -2.0, 3.0], np.float32) + d * np.float32(-0.5))


@needs_kernels
def test_nan_and_inf_gradients_as_numpy(monkeypatch):
    """Non-finite gradients propagate as in the NumPy path (bitwise, NaN for NaN)."""
    g = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, 2.0], np.float32)

    def run():
        out = []
        for name, kw in (("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1)), ("RMSprop", dict(lr=0.1, centered=True)),
                         ("Adam", dict(lr=0.1, amsgrad=True)), ("AdamW", dict(lr=0.1))):
            p = am.tensor(np.linspace(-1, 1, 7).astype(np.float32), requires_grad=True)
            opt = getattr(am.optim, name)([p], **kw)
            for _ in range(2):
                p.grad = am.tensor(g.copy())
                opt.step()
            out.append(p.detach().numpy().copy())
        return out
    ours = run()
    monkeypatch.setattr(_native, "ENABLED", False)
    for a, b in zip(ours, run()):
        np.testing.assert_array_equal(a, b)


def test_kernels_refuse_what_they_do_not_handle():
    scalars = dict(lr=0.1, momentum=0.0, one_minus_dampening=1.0, weight_decay=0.0, nesterov=False,
                   maximize=False, first=False)
    p = np.ones(8, np.float32)
    g = np.ones(8, np.float32)
    assert not _native_optim.step("adagrad", p, g, {}, scalars)  # no kernel for it
    assert not _native_optim.step("sgd", p.astype(np.float16), g.astype(np.float16), {}, scalars)
    assert not _native_optim.step("sgd", p, g.astype(np.float64), {}, scalars)  # mixed dtypes
    assert not _native_optim.step("sgd", np.ones((4, 4), np.float32)[:, ::2], np.ones((4, 2), np.float32), {}, scalars)
    assert not _native_optim.step("sgd", p, g[:4], {}, scalars)  # shapes differ
    assert not _native_optim.step("sgd", p, g, {"other": np.ones(8, np.float32)}, scalars)  # unknown state
    assert (p == 1).all()
    _native.ENABLED, enabled = False, _native.ENABLED
    try:
        assert not _native_optim.step("sgd", p, g, {}, scalars)
    finally:
        _native.ENABLED = enabled
    if _native.available():
        assert _native_optim.step("sgd", p, g, {}, scalars) and np.allclose(p, 0.9)
