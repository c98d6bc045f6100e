"""Grouped-query attention on the tensor-core CUDA kernels: ``enable_gqa=True`` hands the
un-repeated key/value heads to attention_mma.cu (query head h reads key/value head h // group,
dK/dV summed over the group inside the kernel). Values and gradients against PyTorch float64
on the repeated heads, the kernels' inputs spied on (Hkv heads reach them), and the paths that
cannot share heads (float32 CUDA-core kernels, the CPU) still repeating. Runs on the cuda leg
(a GPU, or the emulated device: ``AVILA_ML_TEST_DEVICE=cuda-emulated``)."""
import numpy as np
import pytest
import torch

import avila_ml as am

F = am.nn.functional
U16 = 2.0 ** -11  # float16 unit roundoff


def _reference(q, k, v, do, causal):
    tq, tk, tv = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, enable_gqa=True)
    out.backward(torch.tensor(do.astype(np.float64)))
    return [t.detach().numpy() for t in (out, tq.grad, tk.grad, tv.grad)]


def _close(actual, expected, bound_units, name):
    bound = bound_units * U16 * max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


@pytest.fixture
def spy(monkeypatch):
    """The key/value batch-heads each tensor-core launch plan received."""
    from avila_ml.cuda_kernels import launch
    seen = {"forward": [], "backward": []}
    fwd, bwd = launch.prepare_attention_mma_forward, launch.prepare_attention_mma_backward

    def spy_fwd(xp, q, k, v, *a, **kw):
        seen["forward"].append((q.shape[0], k.shape[0], v.shape[0]))
        return fwd(xp, q, k, v, *a, **kw)

    def spy_bwd(xp, q, k, v, *a, **kw):
        seen["backward"].append((q.shape[0], k.shape[0], v.shape[0]))
        return bwd(xp, q, k, v, *a, **kw)
    monkeypatch.setattr(launch, "prepare_attention_mma_forward", spy_fwd)
    monkeypatch.setattr(launch, "prepare_attention_mma_backward", spy_bwd)
    return seen


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shapes", [((2, 4, 9, 16), (2, 2, 11, 16)), ((1, 6, 17, 8), (3, 17, 8))],
                         ids=["B2 Hq4 Hkv2", "Hq6 Hkv3, k/v without batch dim"])
def test_gqa_reaches_the_kernel_unrepeated(device, spy, causal, shapes):
    if device == "cpu":
        pytest.skip("the tensor-core kernels need the cuda leg")
    qs, ks = shapes
    rng = np.random.default_rng(len(qs) + causal)
    q, do = (rng.standard_normal(qs).astype(np.float16) for _ in range(2))
    k, v = (rng.standard_normal(ks).astype(np.float16) for _ in range(2))
    tq, tk, tv = (am.tensor(a, device=device, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, enable_gqa=True)
    out.backward(am.tensor(do, device=device))

    bq = int(np.prod(qs[:-2]))
    bkv = int(np.prod(qs[:-3])) * ks[-3]  # k's batch dims broadcast to q's, heads stay Hkv
    assert spy["forward"] == [(bq, bkv, bkv)] and spy["backward"] == [(bq, bkv, bkv)]
    assert tk.grad.shape == ks and tv.grad.shape == ks
    o_ref, dq_ref, dk_ref, dv_ref = _reference(q, k, v, do, causal)
    _close(out.detach().cpu().numpy(), o_ref, 4, "o")
    for name, t, ref in (("dq", tq, dq_ref), ("dk", tk, dk_ref), ("dv", tv, dv_ref)):
        _close(t.grad.cpu().numpy(), ref, 16, name)


def test_gqa_kernel_matches_the_repeated_heads_path(device, spy):
    """The same call with K, V repeated by hand (enable_gqa off) gives the same values and gradients."""
    if device == "cpu":
        pytest.skip("the tensor-core kernels need the cuda leg")
    rng = np.random.default_rng(3)
    q, do = (rng.standard_normal((2, 4, 10, 32)).astype(np.float16) for _ in range(2))
    k, v = (rng.standard_normal((2, 1, 12, 32)).astype(np.float16) for _ in range(2))
    results = []
    for gqa in (True, False):
        tq, tk, tv = (am.tensor(a, device=device, requires_grad=True) for a in (q, k, v))
        kk, vv = (tk, tv) if gqa else (tk.expand(2, 4, 12, 32), tv.expand(2, 4, 12, 32))
        out = F.scaled_dot_product_attention(tq, kk, vv, is_causal=True, enable_gqa=gqa)
        out.backward(am.tensor(do, device=device))
        results.append([t.cpu().numpy().astype(np.float64) for t in (out.detach(), tq.grad, tk.grad, tv.grad)])
    assert [s[1] for s in spy["forward"]] == [2, 8]  # shared heads, then the repeated ones
    for name, a, b in zip(("o", "dq", "dk", "dv"), *results):
        _close(a, b, 16, name)


def test_double_backward_through_shared_heads(device):
    """create_graph=True: the composite formula runs on the repeated heads and sums dK, dV back."""
    if device == "cpu":
        pytest.skip("the tensor-core kernels need the cuda leg")
    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, 4, 6, 8)).astype(np.float16)
    k, v = (rng.standard_normal((1, 2, 6, 8)).astype(np.float16) for _ in range(2))
    tq, tk, tv = (am.tensor(a, device=device, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=True)
    gq, gk, gv = am.autograd.grad(out.sum(), (tq, tk, tv), create_graph=True)
    assert gk.shape == (1, 2, 6, 8) and gv.shape == (1, 2, 6, 8)
    _, dq_ref, dk_ref, dv_ref = _reference(q, k, v, np.ones((1, 4, 6, 8)), True)
    for name, t, ref in (("dq", gq, dq_ref), ("dk", gk, dk_ref), ("dv", gv, dv_ref)):
        _close(t.detach().cpu().numpy(), ref, 32, name)
    (gk.float().square().sum()).backward()  # a second derivative exists and is finite
    assert np.isfinite(tq.grad.cpu().numpy()).all()


def test_float32_and_cpu_gqa_still_repeat(device, spy):
    """float32 on CUDA runs the CUDA-core kernels (no native GQA) and the CPU its blocked path:
    both get repeated heads, and neither reaches the tensor-core plans."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 4, 5, 8)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 5, 8)).astype(np.float32) for _ in range(2))
    tq, tk, tv = (am.tensor(a, device=device, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(tq, tk, tv, enable_gqa=True)
    out.backward(am.ones(*out.shape, device=device))
    assert spy["forward"] == [] and spy["backward"] == []
    o_ref, dq_ref, dk_ref, dv_ref = _reference(q, k, v, np.ones((1, 4, 5, 8)), False)
    np.testing.assert_allclose(out.detach().cpu().numpy(), o_ref, atol=1e-5)
    np.testing.assert_allclose(tk.grad.cpu().numpy(), dk_ref, atol=1e-4)
