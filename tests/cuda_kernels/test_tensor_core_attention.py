"""Tensor-core attention (attention_mma.cu) against float64 NumPy references, on the host emulation
(always) and on a GPU (AVILA_ML_TEST_DEVICE=cuda): forward and backward, float16 and bfloat16,
head dims in every bucket (32, 64, 128, 256), causal, float and boolean masks (with a fully
masked row), Philox dropout (the xp path's mask, bit for bit) and grouped-query attention.

Tolerances: the kernels multiply the probabilities (and dS in the backward) rounded to the
storage type, as FlashAttention-2 does, so each product carries a relative error up to the
type's unit roundoff u (2**-11 float16, 2**-8 bfloat16) on top of float32 sums; the bounds are
a few u of the largest reference magnitude. Swapped lanes, wrong masks or a wrong dropout bit
are errors of order 1.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

import mutants
from avila_ml.cuda_kernels import host_emulation
from test_host_emulation import (
    DROPOUT_OFFSET,
    DROPOUT_SEED,
    _keep_factors,
    _make_mask,
    assert_close,
    attention_reference,
)

ml_dtypes = pytest.importorskip("ml_dtypes")
ON_GPU = "cuda" in os.environ.get("AVILA_ML_TEST_DEVICE", "")
STORAGE = {"f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}
UNIT_ROUNDOFF = {"f16": 2.0**-11, "bf16": 2.0**-8}


def _host():
    if host_emulation.host_compiler() is None:
        pytest.skip("no C++20 compiler for the CUDA host emulation")
    return SimpleNamespace(forward=host_emulation.host_attention_mma_forward,
                           backward=host_emulation.host_attention_mma_backward, dev=lambda a: a, np=np.asarray)


def _cuda():
    if not ON_GPU:
        pytest.skip("GPU executor runs with AVILA_ML_TEST_DEVICE=cuda")
    import cupy

    from avila_ml.cuda_kernels.launch import run_plan_on_gpu
    from avila_ml.cuda_kernels.tensor_core import prepare_attention_mma_backward, prepare_attention_mma_forward

    def bits(a):  # CuPy has no bfloat16: the kernels take bfloat16 bit patterns as uint16
        return cupy.asarray(a.view(np.uint16) if a.dtype.name == "bfloat16" else a)

    def back(a, like):
        a = cupy.asnumpy(a)
        return a.view(like) if a.dtype == np.uint16 else a

    def forward(q, k, v, scale, causal, mask=None, dropout=None, precision="f16"):
        o, lse = run_plan_on_gpu(*prepare_attention_mma_forward(cupy, bits(q), bits(k), bits(v), scale, causal,
                                                                None if mask is None else cupy.asarray(mask), dropout,
                                                                precision))
        return back(o, q.dtype), cupy.asnumpy(lse)

    def backward(q, k, v, o, lse, do, scale, causal, mask=None, dropout=None, precision="f16"):
        out = run_plan_on_gpu(*prepare_attention_mma_backward(cupy, bits(q), bits(k), bits(v), bits(o),
                                                              cupy.asarray(lse), bits(do), scale, causal,
                                                              None if mask is None else cupy.asarray(mask), dropout,
                                                              precision))
        return tuple(back(a, q.dtype) for a in out)

    return SimpleNamespace(forward=forward, backward=backward)


@pytest.fixture(scope="module", params=["host", "cuda"])
def kernels(request):
    return _host() if request.param == "host" else _cuda()


def grouped_reference(q, k, v, do, scale, causal, additive, group, z=None):
    """o, lse, dq, dk, dv of softmax attention in float64; key/value head h serves query heads
    h*group .. h*group + group - 1; z: the dropout factors (keep / (1 - p)) or None."""
    k_full, v_full = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
    _, lse, probs = attention_reference(q, k_full, v_full, scale, causal, additive)
    dropped = probs if z is None else probs * z
    o = dropped @ v_full
    dv = dropped.transpose(0, 2, 1) @ do
    d_probs = do @ v_full.transpose(0, 2, 1)
    d_scores = probs * ((d_probs if z is None else d_probs * z) - (do * o).sum(-1, keepdims=True))
    dq = d_scores @ k_full * scale
    dk = d_scores.transpose(0, 2, 1) @ q * scale
    heads = k.shape[0]
    return o, lse, dq, dk.reshape(heads, group, *k.shape[1:]).sum(1), dv.reshape(heads, group, *k.shape[1:]).sum(1)


CASES = {
    # scores rise along the keys ("ramp"), so each key tile raises the running max: the online
    # softmax's rescaling of the running sum and output is exercised, not just carried along
    "f16_d64_causal_two_query_and_key_tiles": dict(precision="f16", bhq=2, group=1, L=70, S=67, D=64, causal=True,
                                                   mask=None, p=None, ramp=True),
    "bf16_d24_float_mask_gqa2": dict(precision="bf16", bhq=4, group=2, L=9, S=70, D=24, causal=False, mask="1LS",
                                     p=None),
    "f16_d100_bool_mask_blind_row": dict(precision="f16", bhq=2, group=1, L=6, S=5, D=100, causal=False, mask="bool",
                                         p=None),
    "bf16_d256_causal_dropout_gqa2": dict(precision="bf16", bhq=2, group=2, L=33, S=40, D=256, causal=True,
                                          mask=None, p=0.3),
    "f16_d13_causal_bool_mask_dropout": dict(precision="f16", bhq=2, group=1, L=6, S=9, D=13, causal=True,
                                             mask="bool", p=0.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tensor_core_attention_forward_and_backward_match_numpy(kernels, case):
    spec = CASES[case]
    precision, group = spec["precision"], spec["group"]
    storage, u = STORAGE[precision], UNIT_ROUNDOFF[precision]
    rng = np.random.default_rng(sum(map(ord, case)))
    bhq, bhkv, L, S, D = spec["bhq"], spec["bhq"] // group, spec["L"], spec["S"], spec["D"]
    q = rng.standard_normal((bhq, L, D)).astype(np.float32).astype(storage)
    k = rng.standard_normal((bhkv, S, D)).astype(np.float32).astype(storage)
    v = rng.standard_normal((bhkv, S, D)).astype(np.float32).astype(storage)
    do = rng.standard_normal((bhq, L, D)).astype(np.float32).astype(storage)
    if spec.get("ramp"):
        q[..., 0] = 2.0
        k[..., 0] = np.linspace(0.0, 8.0, S).astype(storage)
    mask = _make_mask(spec["mask"], rng, bhq, L, S)
    additive = None if mask is None else (np.where(mask, 0.0, -np.inf) if mask.dtype == bool
                                          else mask.astype(np.float64))
    dropout, z = None, None
    if spec["p"] is not None:
        dropout = (spec["p"], DROPOUT_SEED, DROPOUT_OFFSET)
        z = _keep_factors(spec["p"], bhq, L, S)[1]
    scale, causal = D**-0.5, spec["causal"]
    q64, k64, v64, do64 = (a.astype(np.float64) for a in (q, k, v, do))
    o_ref, lse_ref, dq_ref, dk_ref, dv_ref = grouped_reference(q64, k64, v64, do64, scale, causal, additive, group, z)

    o, lse = kernels.forward(q, k, v, scale, causal, mask, dropout, precision)
    assert o.dtype == storage and lse.dtype == np.float32 and o.shape == q.shape
    assert_close(o.astype(np.float64), o_ref, 4 * u, "o")
    assert_close(lse, lse_ref, 1e-5, "lse")  # from float32 scores of exactly stored inputs

    # the backward gets o as stored (delta = rowsum(do * o) uses it, as on the GPU) and the reference lse
    o_stored = o_ref.astype(storage)
    dq, dk, dv = kernels.backward(q, k, v, o_stored, lse_ref.astype(np.float32), do, scale, causal, mask, dropout,
                                  precision)
    delta_shift = (do64 * (o_stored.astype(np.float64) - o_ref)).sum(-1, keepdims=True)
    if np.abs(delta_shift).max() > 0:  # account for the stored o in dq and dk (dS = P (dP - delta))
        _, _, probs = attention_reference(q64, np.repeat(k64, group, 0), np.repeat(v64, group, 0), scale, causal,
                                          additive)
        dq_ref = dq_ref - (probs * delta_shift) @ np.repeat(k64, group, 0) * scale
        dk_ref = dk_ref - ((probs * delta_shift).transpose(0, 2, 1) @ q64 * scale).reshape(
            bhkv, group, S, D).sum(1)
    for name, actual, expected in (("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)):
        assert actual.dtype == storage and actual.shape == expected.shape, name
        assert_close(actual.astype(np.float64), expected, 8 * u, name)
    if spec["mask"] == "bool":  # query 2 of the last head sees no key
        assert np.all(o[-1, 2].astype(np.float64) == 0) and lse[-1, 2] == -np.inf
        assert np.all(dq[-1, 2].astype(np.float64) == 0)


def test_tensor_core_attention_keeps_exactly_the_xp_dropout_mask(kernels):
    """With V = I the output is P o Z: its zeros are exactly the dropped (b, i, j) of the xp mask."""
    bh, L, S, p = 2, 5, 32, 0.4
    rng = np.random.default_rng(3)
    q = (rng.standard_normal((bh, L, S)) * 0.1).astype(np.float16)
    k = (rng.standard_normal((bh, S, S)) * 0.1).astype(np.float16)
    v = np.broadcast_to(np.eye(S, dtype=np.float16), (bh, S, S)).copy()
    o, _ = kernels.forward(q, k, v, 1.0, False, None, (p, DROPOUT_SEED, DROPOUT_OFFSET), "f16")
    keep, _ = _keep_factors(p, bh, L, S)
    assert np.array_equal(o.astype(np.float64) != 0, keep)


def test_errors_name_the_op_and_the_problem():
    q = np.zeros((3, 4, 8), np.float16)
    kv = np.zeros((2, 4, 8), np.float16)
    with pytest.raises(ValueError, match="3 query heads cannot share 2 key/value heads"):
        host_emulation.host_attention_mma_forward(q, kv, kv, 1.0, False)
    big = np.zeros((1, 4, 257), np.float16)
    with pytest.raises(ValueError, match="head dimension 257 exceeds the tensor-core kernel maximum 256"):
        host_emulation.host_attention_mma_forward(big, big, big, 1.0, False)
    with pytest.raises(TypeError, match="f16 tensor cores take float16 inputs, got float32"):
        host_emulation.host_attention_mma_forward(*(np.zeros((1, 4, 8), np.float32),) * 3, 1.0, False)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 4\) does not broadcast"):
        host_emulation.host_attention_mma_forward(q, q, q, 1.0, False, np.zeros((3, 4), np.float32))


@pytest.fixture(scope="module")
def mutant_library():
    if host_emulation.host_compiler() is None:
        pytest.skip("no C++20 compiler for the CUDA host emulation")
    return mutants.mutant_library()


def test_mutated_attention_kernels_fail_and_the_unmutated_build_passes(mutant_library):
    """A shifted lane in the register-to-fragment packing, a dropped barrier after the K/V wait,
    a missing rescale of the online softmax sum, and a row reduction over the wrong lanes must
    each break the forward/backward check (tests/cuda_kernels/mutants.py)."""
    from avila_ml.cuda_kernels.host_emulation import run_plan_on_host
    from avila_ml.cuda_kernels.tensor_core import prepare_attention_mma_backward, prepare_attention_mma_forward

    executor = SimpleNamespace(
        forward=lambda *a: run_plan_on_host(*prepare_attention_mma_forward(np, *a), library=mutant_library),
        backward=lambda *a: run_plan_on_host(*prepare_attention_mma_backward(np, *a), library=mutant_library))
    case = "f16_d64_causal_two_query_and_key_tiles"  # two key tiles: the online rescale matters
    mutant_library.avila_set_mutation(0)
    test_tensor_core_attention_forward_and_backward_match_numpy(executor, case)
    for mutation in (11, 12, 13, 14):
        mutant_library.avila_set_mutation(mutation)
        try:
            with pytest.raises((AssertionError, host_emulation.HostEmulationError)):
                test_tensor_core_attention_forward_and_backward_match_numpy(executor, case)
        finally:
            mutant_library.avila_set_mutation(0)


def test_float16_sdpa_on_cuda_uses_the_tensor_core_kernels_up_to_head_dim_256(device, monkeypatch):
    """F.scaled_dot_product_attention on CUDA in float16 with D = 200 (beyond the CUDA-core
    kernels' 128) runs attention_mma.cu and matches float64 NumPy, forward and backward."""
    if device == "cpu":
        pytest.skip("the CUDA dispatch needs the cuda leg")
    import avila_ml as am
    import avila_ml.nn.functional as F
    from avila_ml.cuda_kernels import launch

    calls = []
    original = launch.prepare_attention_mma_forward
    monkeypatch.setattr(launch, "prepare_attention_mma_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    rng = np.random.default_rng(8)
    q, k, v, do = (rng.standard_normal((1, 2, n, 200)).astype(np.float16) for n in (7, 9, 9, 7))
    tq, tk, tv = (am.tensor(a, device=device, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    out.backward(am.tensor(do, device=device))
    assert calls, "float16 SDPA on CUDA did not reach the tensor-core kernels"
    q64, k64, v64, do64 = (a.reshape(2, -1, 200).astype(np.float64) for a in (q, k, v, do))
    o_ref, _, dq_ref, dk_ref, dv_ref = grouped_reference(q64, k64, v64, do64, 200**-0.5, True, None, 1)
    u = UNIT_ROUNDOFF["f16"]
    assert_close(out.detach().cpu().numpy().reshape(2, 7, 200).astype(np.float64), o_ref, 4 * u, "o")
    for name, tensor, expected in (("dq", tq, dq_ref), ("dk", tk, dk_ref), ("dv", tv, dv_ref)):
        actual = tensor.grad.cpu().numpy().reshape(expected.shape).astype(np.float64)
        assert_close(actual, expected, 16 * u, name)  # o is stored in float16 before delta = rowsum(do * o)
