"""The GPU code path: regressions that only a CUDA device shows, run on a GPU or on the strict
emulated device (AVILA_ML_TEST_DEVICE=cuda-emulated, see tests/emulated_cupy). Skipped on a
CPU-only run without the emulator.

Each test names the defect it guards against. Counting tests (syncs, host->device copies) need
the emulated device, which counts them; on a real GPU they are skipped.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np
import pytest

import avila_ml as am
from avila_ml import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cuda():
    if not am.cuda.is_available():
        pytest.skip("needs a GPU or the emulated device (AVILA_ML_TEST_DEVICE=cuda-emulated)")
    return "cuda"


@pytest.fixture
def transfers(cuda):
    """count_transfers of the emulated device (skips on a real GPU, which does not count)."""
    try:
        import emulated_cupy
    except ImportError:
        emulated_cupy = None
    if emulated_cupy is None or not emulated_cupy.installed():
        pytest.skip("transfer counts need the emulated device")
    return emulated_cupy.count_transfers


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- Module.load_state_dict / Tensor.copy_ with host values -------------------------------------
def test_load_state_dict_from_numpy_and_torch_into_a_cuda_model(cuda):
    """Was: cupy.copyto(gpu, numpy) -> ValueError, rewritten by copy_ into a broadcast error."""
    torch = pytest.importorskip("torch")
    ref = torch.nn.Linear(3, 2).double()
    model = nn.Linear(3, 2, dtype=am.float64).to(cuda)
    model.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    np.testing.assert_array_equal(model.weight.detach().cpu().numpy(), ref.weight.detach().numpy())
    model.load_state_dict({k: v.detach() for k, v in ref.state_dict().items()})  # PyTorch CPU tensors
    np.testing.assert_array_equal(model.bias.detach().cpu().numpy(), ref.bias.detach().numpy())
    x = torch.randn(4, 3, dtype=torch.float64)
    np.testing.assert_allclose(model(am.tensor(x.numpy(), device=cuda)).detach().cpu().numpy(),
                               ref(x).detach().numpy(), rtol=1e-12)


def test_copy_reports_a_real_shape_mismatch_by_shape(device):
    t = am.zeros(2, 3, device=device)
    with pytest.raises(RuntimeError, match=r"copy_: source of shape \(4,\) cannot be broadcast to the destination shape \(2, 3\)"):
        t.copy_(np.ones(4))
    t.copy_(np.arange(3.0))  # broadcasts, from the host
    np.testing.assert_array_equal(t.cpu().numpy(), np.tile(np.arange(3.0), (2, 1)))


# -- random ops with generator= -----------------------------------------------------------------
@pytest.mark.parametrize("factory", ["rand", "randn", "randint", "randperm"])
def test_generator_draws_land_on_the_requested_device(cuda, factory):
    """Was: rand/randn/randint/randperm(device='cuda', generator=g) returned CPU tensors."""
    call = {"rand": lambda **kw: am.rand(2, 3, **kw), "randn": lambda **kw: am.randn(2, 3, **kw),
            "randint": lambda **kw: am.randint(0, 9, (2, 3), **kw), "randperm": lambda **kw: am.randperm(7, **kw)}[factory]
    on_gpu = call(device=cuda, generator=am.data.Generator(5))
    on_cpu = call(device="cpu", generator=am.data.Generator(5))
    assert on_gpu.device == am.device("cuda")
    np.testing.assert_array_equal(on_gpu.cpu().numpy(), on_cpu.numpy())  # one host stream, any device


def test_bernoulli_and_normal_with_a_generator_on_cuda(cuda):
    """Was: TypeError (a host draw compared with a device array)."""
    p = am.full((1000,), 0.3, device=cuda)
    b = am.bernoulli(p, generator=am.data.Generator(1))
    assert b.device == am.device("cuda")
    np.testing.assert_array_equal(b.cpu().numpy(), am.bernoulli(p.cpu(), generator=am.data.Generator(1)).numpy())
    mean = am.zeros(500, device=cuda)
    n = am.normal(mean, 2.0, generator=am.data.Generator(2))
    assert n.device == am.device("cuda")
    np.testing.assert_allclose(n.cpu().numpy(), am.normal(mean.cpu(), 2.0, generator=am.data.Generator(2)).numpy())


def test_manual_seed_before_the_first_cuda_use_seeds_the_gpu(cuda):
    """Was: a CUDA backend created after manual_seed started from the default seed."""
    from avila_ml import backends
    saved = dict(backends._cuda)
    try:
        backends._cuda.clear()
        am.manual_seed(1234)
        a = am.rand(8, device=cuda).cpu().numpy()
        assert am.backends.get_backend(cuda).initial_seed() == 1234
        backends._cuda.clear()
        am.manual_seed(1234)
        b = am.rand(8, device=cuda).cpu().numpy()
        np.testing.assert_array_equal(a, b)
    finally:
        backends._cuda.clear()
        backends._cuda.update(saved)


# -- conv4d kernels: shared memory opt-in, algorithm choice, asymmetric padding ------------------
def _conv4d_cpu_and_cuda(cuda, x, w, **kw):
    xc = am.tensor(x, requires_grad=True)
    wc = am.tensor(w, requires_grad=True)
    xg = am.tensor(x, device=cuda, requires_grad=True)
    wg = am.tensor(w, device=cuda, requires_grad=True)
    yc = nn.functional.conv4d(xc, wc, **kw)
    yg = nn.functional.conv4d(xg, wg, **kw)
    g = np.random.default_rng(3).standard_normal(yc.shape).astype(x.dtype)
    yc.backward(am.tensor(g))
    yg.backward(am.tensor(g, device=cuda))
    return (yc, xc.grad, wc.grad), (yg, xg.grad, wg.grad)


def _assert_same(cpu, gpu, rtol):
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(b.detach().cpu().numpy(), a.detach().numpy(), rtol=rtol, atol=rtol)


@pytest.fixture
def kernel_launches(cuda, monkeypatch):
    """Names of the conv4d CUDA launchers called (the kernels ran, not the generic path)."""
    from avila_ml import cuda_kernels
    calls = []
    for name in ("conv4d_forward", "conv4d_grad_input", "conv4d_grad_weight"):
        original = getattr(cuda_kernels, name)
        monkeypatch.setattr(cuda_kernels, name, (lambda f, n: lambda *a, **k: calls.append(n) or f(*a, **k))(original, name))
    return calls


def test_conv4d_kernel_opts_in_to_more_than_48kib_of_shared_memory(cuda, kernel_launches):
    """Was: a 1x9x9x9 float32 kernel needs 49,572 bytes for a 1x1 tile and raised."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 1, 9, 9, 10)).astype(np.float32)
    w = rng.standard_normal((2, 2, 1, 9, 9, 9)).astype(np.float32)
    cpu, gpu = _conv4d_cpu_and_cuda(cuda, x, w, padding=(0, 1, 0, 1))
    _assert_same(cpu, gpu, 1e-4)
    assert kernel_launches == ["conv4d_forward", "conv4d_grad_input", "conv4d_grad_weight"]


def test_conv4d_plan_beyond_the_device_limit_falls_back_to_the_generic_path(cuda, kernel_launches):
    """A 1x15x15x15 float64 kernel needs 432 KB even for a 1x1 tile: the generic path runs, once announced."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, 1, 15, 15, 15))
    w = rng.standard_normal((1, 1, 1, 15, 15, 15))
    with pytest.warns(UserWarning, match="shared memory"):
        cpu, gpu = _conv4d_cpu_and_cuda(cuda, x, w)
    _assert_same(cpu, gpu, 1e-10)


@pytest.mark.parametrize("algorithm", ["direct", "gemm"])
def test_set_conv_algorithm_is_honoured_on_cuda(cuda, kernel_launches, algorithm):
    """Was: the CUDA kernel was tried before the algorithm choice, so 'direct' could not be forced."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 2, 3, 4, 4, 4)), rng.standard_normal((3, 2, 2, 2, 2, 2))
    am.backends.set_conv_algorithm(algorithm)
    try:
        cpu, gpu = _conv4d_cpu_and_cuda(cuda, x, w, padding=1)
    finally:
        am.backends.set_conv_algorithm("auto")
    _assert_same(cpu, gpu, 1e-10)
    assert kernel_launches == []


def test_causal_and_circular_padding_run_the_conv4d_kernel(cuda, kernel_launches):
    """Was: asymmetric (causal) padding never reached the kernel (README's main example)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 1, 5, 4, 4, 4))
    model_cpu = nn.Conv4d(1, 3, 3, stride=(1, 2, 2, 2), padding=1, dtype=am.float64,
                          padding_mode=("causal", "circular", "circular", "circular"))
    model_gpu = nn.Conv4d(1, 3, 3, stride=(1, 2, 2, 2), padding=1, dtype=am.float64,
                          padding_mode=("causal", "circular", "circular", "circular")).to(cuda)
    model_gpu.load_state_dict(model_cpu.state_dict())
    yc = model_cpu(am.tensor(x))
    yg = model_gpu(am.tensor(x, device=cuda))
    np.testing.assert_allclose(yg.detach().cpu().numpy(), yc.detach().numpy(), rtol=1e-12, atol=1e-12)
    yg.sum().backward()
    yc.sum().backward()
    np.testing.assert_allclose(model_gpu.weight.grad.cpu().numpy(), model_cpu.weight.grad.numpy(), rtol=1e-10)
    assert kernel_launches == ["conv4d_forward", "conv4d_grad_weight"]


def _float16_tolerance(reference):
    """float16 kernels sum in float32 and round each output once: half an ulp (2**-11 of the
    magnitude) plus the float32 summation order, taken as 1e-4 of the largest magnitude (the
    float32 kernels' tolerance). The CPU reference is float32 on the float16-rounded values."""
    return 2.0**-11 * np.abs(reference) + 1e-4 * max(1.0, float(np.abs(reference).max()))


def test_float16_conv4d_forward_and_backward_run_the_kernel(cuda, kernel_launches):
    """Was: float16 tensors took the generic CuPy path (the kernels were float32/float64 only)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5, 4, 6)).astype(np.float16)
    w = (rng.standard_normal((17, 3, 2, 3, 2, 3)) / 6).astype(np.float16)
    gy = rng.standard_normal((2, 17, 3, 5, 3, 4)).astype(np.float16)
    xc, wc = am.tensor(x.astype(np.float32), requires_grad=True), am.tensor(w.astype(np.float32), requires_grad=True)
    yc = nn.functional.conv4d(xc, wc, padding=(0, 1, 0, 0))
    yc.backward(am.tensor(gy.astype(np.float32)))
    xg, wg = am.tensor(x, device=cuda, requires_grad=True), am.tensor(w, device=cuda, requires_grad=True)
    yg = nn.functional.conv4d(xg, wg, padding=(0, 1, 0, 0))
    yg.backward(am.tensor(gy, device=cuda))
    assert kernel_launches == ["conv4d_forward", "conv4d_grad_input", "conv4d_grad_weight"]
    for gpu, cpu in ((yg, yc), (xg.grad, xc.grad), (wg.grad, wc.grad)):
        assert gpu.dtype == am.float16 and gpu.device.type == "cuda"
        got, want = gpu.detach().cpu().numpy().astype(np.float64), cpu.detach().numpy().astype(np.float64)
        assert (np.abs(got - want) <= _float16_tolerance(want)).all()


def test_conv4d_under_cuda_autocast_runs_the_float16_kernel(cuda, kernel_launches):
    """autocast("cuda") casts a float32 Conv4d to float16 and the float16 kernel runs; grads
    arrive in float32 (the parameters' dtype) and match the CPU float32 result."""
    rng = np.random.default_rng(6)
    am.manual_seed(0)
    layer_cpu = nn.Conv4d(2, 4, 3, padding=1)
    layer_gpu = nn.Conv4d(2, 4, 3, padding=1).to(cuda)
    # the weights and input the kernel sees are float16: give the CPU model the same values
    state = {k: am.tensor(v.detach().numpy().astype(np.float16).astype(np.float32))
             for k, v in layer_cpu.state_dict().items()}
    layer_cpu.load_state_dict(state)
    layer_gpu.load_state_dict(state)
    x = rng.standard_normal((1, 2, 3, 4, 4, 5)).astype(np.float16).astype(np.float32)
    yc = layer_cpu(am.tensor(x))
    with am.autocast("cuda"):
        yg = layer_gpu(am.tensor(x, device=cuda))
    assert yg.dtype == am.float16
    gy = rng.standard_normal(yc.shape).astype(np.float16)
    yc.backward(am.tensor(gy.astype(np.float32)))
    yg.backward(am.tensor(gy, device=cuda))
    assert kernel_launches == ["conv4d_forward", "conv4d_grad_weight"]
    want = yc.detach().numpy().astype(np.float64)
    # the bias is added to the rounded float16 convolution, a second rounding of at most half an ulp
    conv = want - state["bias"].numpy().astype(np.float64).reshape(1, -1, 1, 1, 1, 1)
    tolerance = _float16_tolerance(want) + 2.0**-11 * np.abs(conv)
    assert (np.abs(yg.detach().cpu().numpy().astype(np.float64) - want) <= tolerance).all()
    for name in ("weight", "bias"):
        gpu, cpu = getattr(layer_gpu, name).grad, getattr(layer_cpu, name).grad
        assert gpu.dtype == am.float32
        want = cpu.numpy().astype(np.float64)
        # float16 -> float32 (the Cast back to the parameter dtype) is exact: no further rounding
        assert (np.abs(gpu.cpu().numpy().astype(np.float64) - want) <= _float16_tolerance(want)).all()


# -- optimizers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_float16_parameters_with_optimizers_on_cuda(cuda, name):
    """Was: TypeError for float16 parameters on CUDA (the CPU path supports them). The CUDA step
    computes in float32 (as PyTorch's fused optimizers do), the CPU one rounds each operation to
    float16: they agree to float16 rounding over a few steps."""
    kwargs = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=1e-2), "AdamW": dict(lr=1e-2),
              "RMSprop": dict(lr=1e-2), "Adagrad": dict(lr=1e-1)}[name]
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(64).astype(np.float16)
    grads = [rng.standard_normal(64).astype(np.float16) for _ in range(3)]
    results = []
    for dev in ("cpu", cuda):
        p = nn.Parameter(am.tensor(p0, device=dev))
        opt = getattr(am.optim, name)([p], **kwargs)
        for g in grads:
            p.grad = am.tensor(g, device=dev)
            opt.step()
        assert p.dtype == am.float16
        results.append(p.detach().cpu().numpy().astype(np.float64))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-2, atol=1e-2)
    assert not np.array_equal(results[1], p0.astype(np.float64))


# -- no device->host syncs in a steady-state training step ---------------------------------------
def _assert_no_transfers(transfers, step):
    step()
    step()  # warm: kernels compiled, tables cached, optimizer state allocated
    with transfers() as log:
        loss = step()
    assert not log.syncs, f"device->host syncs in one training step:\n{log.report()}"
    assert not log.h2d, f"host->device copies in one training step:\n{log.report()}"
    assert np.isfinite(loss.item())


def test_conv4d_example_training_step_has_no_syncs(transfers):
    example = _example("conv4d_spacetime")
    model = example.SpacetimeNet().to("cuda")
    opt = am.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = am.randn(2, 1, 4, 6, 6, 6, device="cuda")
    y = am.tensor([1, 4], device="cuda")

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    _assert_no_transfers(transfers, step)


def test_transformer_example_training_step_has_no_syncs(transfers):
    example = _example("transformer_lm")
    model = example.CharGPT(vocab=11, block_size=8, d_model=32, n_layer=2, n_head=2, dropout=0.1).to("cuda")
    model.train()
    opt = am.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    rng = np.random.default_rng(0)
    x = am.tensor(rng.integers(0, 11, (2, 8)), device="cuda")
    y = am.tensor(rng.integers(0, 11, (2, 8)), device="cuda")

    def step():
        opt.zero_grad()
        loss = example.loss_of(model, x, y)
        loss.backward()
        opt.step()
        return loss

    _assert_no_transfers(transfers, step)


def test_sync_checks_flag_turns_value_checks_on_for_cuda(cuda):
    """Value checks (class index range) read the device only with am.debug.set_sync_checks(True)."""
    logits = am.zeros(2, 3, device=cuda)
    bad = am.tensor([0, 7], device=cuda)
    am.debug.set_sync_checks(True)
    try:
        with pytest.raises(IndexError, match="Target 7 is out of bounds"):
            nn.functional.cross_entropy(logits, bad)
    finally:
        am.debug.set_sync_checks(False)
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        nn.functional.cross_entropy(logits.cpu(), bad.cpu())  # the CPU always checks


# -- the CUDA generator: Philox, state restorable mid-stream ---------------------------------------
def test_philox_matches_the_random123_known_answers():
    """Philox4x32-10 known-answer vectors of Random123 (kat_vectors), on NumPy; the CUDA backend runs
    the same integer code on CuPy."""
    from avila_ml.backends.philox import philox_uint32
    assert [hex(w) for w in philox_uint32(np, 0, 0, 4)] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]


def test_cuda_rng_state_restores_mid_stream(cuda):
    """Was: get_rng_state returned only the seed, so restoring replayed from the stream's start."""
    backend = am.backends.get_backend(cuda)
    am.manual_seed(3)
    am.rand(5, device=cuda)
    state = backend.get_rng_state()
    a = am.randn(7, device=cuda).cpu().numpy()
    am.rand(3, device=cuda)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(am.randn(7, device=cuda).cpu().numpy(), a)
    am.manual_seed(3)
    assert not np.array_equal(am.randn(7, device=cuda).cpu().numpy(), a)  # not the start of the stream


def test_cuda_draws_have_the_right_distribution(cuda):
    am.manual_seed(0)
    u = am.rand(200000, device=cuda).cpu().numpy()
    z = am.randn(200000, device=cuda, dtype=am.float64).cpu().numpy()
    k = am.randint(0, 5, (100000,), device=cuda).cpu().numpy()
    p = am.randperm(50, device=cuda).cpu().numpy()
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 5e-3 and abs(u.var() - 1 / 12) < 2e-3
    assert abs(z.mean()) < 1e-2 and abs(z.std() - 1) < 1e-2
    assert set(np.unique(k)) == set(range(5)) and abs(np.bincount(k).min() / 20000 - 1) < 0.05
    assert sorted(p.tolist()) == list(range(50))


# -- multi-tensor optimizer step -----------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [
    ("Adam", dict(lr=1e-2, weight_decay=0.1)), ("AdamW", dict(lr=1e-2, amsgrad=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)), ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.5)),
    ("Adagrad", dict(lr=0.1)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multi_tensor_step_is_one_launch_and_bitwise_the_per_parameter_step(cuda, monkeypatch, name, kwargs, dtype):
    """One update launch for all parameters of a group (torch._foreach / fused=True), with the
    same bits as one launch per parameter. (A one-thread launch also rewrites the pointer table
    when gradients were re-allocated; it is not counted here.)"""
    from avila_ml.optim import _fused
    rng = np.random.default_rng(7)
    shapes = [(5, 3), (7,), (2, 2, 3), (1,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    launches = []
    for kernel_factory in ("_cuda_kernel", "_multi_kernel"):
        build = getattr(_fused, kernel_factory)
        monkeypatch.setattr(_fused, kernel_factory, (lambda b, tag: lambda *a: (
            lambda k: (lambda *x, **kw: launches.append(tag) or k(*x, **kw)))(b(*a)))(build, kernel_factory))
    results = {}
    for multi in (True, False):
        monkeypatch.setattr(_fused, "MULTI_TENSOR", multi)
        params = [nn.Parameter(am.tensor(a, device=cuda)) for a in init]
        opt = getattr(am.optim, name)(params, **kwargs)
        launches.clear()
        for step in grads:
            for p, g in zip(params, step):
                p.grad = am.tensor(g, device=cuda)
            opt.step()
        results[multi] = [p.detach().cpu().numpy() for p in params]
        expected = ["_multi_kernel"] * 3 if multi else ["_cuda_kernel"] * (3 * len(shapes))
        assert launches == expected
    for a, b in zip(results[True], results[False]):
        np.testing.assert_array_equal(a, b)


def test_transformer_encoder_layer_training_step_with_dropout_has_no_syncs(transfers):
    """Dropout 0.1 (the default) in training runs inside the fused attention kernels: the
    Philox (seed, offset) come from the backend's host-side state, so no sync there either."""
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).to("cuda")
    layer.train()
    opt = am.optim.SGD(layer.parameters(), lr=1e-2, momentum=0.9)
    x = am.randn(2, 5, 16, device="cuda")
    mask = am.tensor(np.triu(np.ones((5, 5), dtype=bool), 1), device="cuda")

    def step():
        opt.zero_grad()
        loss = (layer(x, src_mask=mask) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    _assert_no_transfers(transfers, step)


@pytest.mark.parametrize("op", ["index_select", "index_add_", "index_fill_", "gather", "scatter_", "scatter_add_"])
def test_index_on_another_device_raises_naming_the_op(cuda, op):
    """A CPU index with a CUDA input raised deep inside CuPy (a host array reaching the device);
    PyTorch raises its same-device RuntimeError at the call, and so do we."""
    x = am.zeros(3, 4, device=cuda)
    idx1 = am.tensor([0, 2])
    idx2 = am.tensor([[0, 1, 2, 0]] * 3)
    calls = {
        "index_select": lambda: x.index_select(1, idx1),
        "index_add_": lambda: x.index_add_(1, idx1, am.ones(3, 2, device=cuda)),
        "index_fill_": lambda: x.index_fill_(1, idx1, 1.0),
        "gather": lambda: x.gather(1, idx2),
        "scatter_": lambda: x.scatter_(1, idx2, am.ones(3, 4, device=cuda)),
        "scatter_add_": lambda: x.scatter_add_(1, idx2, am.ones(3, 4, device=cuda)),
    }
    with pytest.raises(RuntimeError, match=r"expected all tensors on the same device.*cuda.*cpu"):
        calls[op]()
    # the same index on the input's device works and writes/reads the right entries
    ok = {"index_select": lambda: x.index_select(1, idx1.to(cuda)),
          "index_fill_": lambda: x.index_fill_(1, idx1.to(cuda), 1.0)}
    if op in ok:
        out = ok[op]()
        assert tuple(out.shape) == ((3, 2) if op == "index_select" else (3, 4))
        if op == "index_fill_":
            np.testing.assert_array_equal(out.cpu().numpy()[:, [0, 2]], np.ones((3, 2)))
