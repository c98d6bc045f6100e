"""The CUDA kernels against plain NumPy references written here, on every available executor.

``host``: the .cu sources compiled with g++ against the host emulation (always runs; one OS thread
per CUDA thread, so problem sizes stay tiny). ``cuda``: the CuPy launchers on a GPU, enabled by
AVILA_ML_TEST_DEVICE=cuda (as benchmarks/gpu_check.sh does). Both run the same launch plans.

Sizes are chosen to hit tile edges: extents that are not powers of two, more than one z tile
(Z > 32), more than one channel tile (C > 16), more than one 64-row attention tile, tap chunks of
conv4d_grad_weight (kX*kY*kZ > 32), stride 2, dilation 2, padding, non-cubic kernels.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from types import SimpleNamespace

import numpy as np
import pytest

from avila_ml.cuda_kernels import host_emulation
from avila_ml.cuda_kernels.host_emulation import HostEmulationError
from avila_ml.cuda_kernels.launch_config import KERNEL_NAMES, prepare_conv4d_forward

ON_GPU = "cuda" in os.environ.get("AVILA_ML_TEST_DEVICE", "")  # a GPU or the emulated device


def _host_executor():
    if host_emulation.host_compiler() is None:
        pytest.skip("no C++20 compiler (g++ >= 12 or $CXX) for the CUDA host emulation")
    host_emulation.build_host_library()
    return SimpleNamespace(
        conv4d_forward=host_emulation.host_conv4d_forward,
        conv4d_grad_input=host_emulation.host_conv4d_grad_input,
        conv4d_grad_weight=host_emulation.host_conv4d_grad_weight,
        flash_attention_forward=host_emulation.host_flash_attention_forward,
        flash_attention_backward=host_emulation.host_flash_attention_backward,
        to_device=lambda a: a,
        to_numpy=lambda a: a,
    )


def _cuda_executor():
    if not ON_GPU:
        pytest.skip("GPU executor runs with AVILA_ML_TEST_DEVICE=cuda")
    import cupy  # a missing CuPy must fail loudly when the GPU run was requested

    from avila_ml import cuda_kernels

    # the exact CUDA-core kernels (conv4d.cu, attention.cu); the tensor-core ones have their own
    # tests (test_tensor_core_conv4d.py, test_tensor_core_attention.py)
    exact = functools.partial
    return SimpleNamespace(
        conv4d_forward=exact(cuda_kernels.conv4d_forward, tensor_cores=False),
        conv4d_grad_input=exact(cuda_kernels.conv4d_grad_input, tensor_cores=False),
        conv4d_grad_weight=exact(cuda_kernels.conv4d_grad_weight, tensor_cores=False),
        flash_attention_forward=exact(cuda_kernels.flash_attention_forward, tensor_cores=False),
        flash_attention_backward=exact(cuda_kernels.flash_attention_backward, tensor_cores=False),
        to_device=cupy.asarray,
        to_numpy=cupy.asnumpy,
    )


@pytest.fixture(scope="module", params=["host", "cuda"])
def kernels(request):
    return _host_executor() if request.param == "host" else _cuda_executor()


def assert_close(actual, expected, rtol, name):
    """Relative error against the largest reference magnitude, so cancellations near 0 are fair."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert not np.isnan(actual).any(), f"{name}: NaN in kernel output"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=f"{name}: non-finite entries")
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=rtol * scale, err_msg=name)


# ---------------------------------------------------------------------------------------------
# conv4d reference: one strided slice of the zero-padded input per kernel offset.


def _tap_slices(offset, stride, dilation, out_size):
    return tuple(
        slice(k * d, k * d + s * (o - 1) + 1, s) for k, s, d, o in zip(offset, stride, dilation, out_size)
    )


def _output_size(in_size, kernel, stride, padding, dilation):
    return tuple(
        (i + 2 * p - d * (k - 1) - 1) // s + 1 for i, k, s, p, d in zip(in_size, kernel, stride, padding, dilation)
    )


def conv4d_reference(x, w, stride, padding, dilation):
    out_size = _output_size(x.shape[2:], w.shape[2:], stride, padding, dilation)
    x_pad = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    y = np.zeros((x.shape[0], w.shape[0], *out_size))
    for offset in itertools.product(*(range(k) for k in w.shape[2:])):
        window = x_pad[(slice(None), slice(None), *_tap_slices(offset, stride, dilation, out_size))]
        y += np.einsum("nctxyz,oc->notxyz", window, w[(slice(None), slice(None), *offset)])
    return y


def conv4d_grad_input_reference(dy, w, x_shape, stride, padding, dilation):
    out_size = dy.shape[2:]
    dx_pad = np.zeros((*x_shape[:2], *(i + 2 * p for i, p in zip(x_shape[2:], padding))))
    for offset in itertools.product(*(range(k) for k in w.shape[2:])):
        window = (slice(None), slice(None), *_tap_slices(offset, stride, dilation, out_size))
        dx_pad[window] += np.einsum("notxyz,oc->nctxyz", dy, w[(slice(None), slice(None), *offset)])
    return dx_pad[(slice(None), slice(None), *(slice(p, p + i) for p, i in zip(padding, x_shape[2:])))]


def conv4d_grad_weight_reference(x, dy, w_shape, stride, padding, dilation):
    out_size = dy.shape[2:]
    x_pad = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    dw = np.zeros(w_shape)
    for offset in itertools.product(*(range(k) for k in w_shape[2:])):
        window = x_pad[(slice(None), slice(None), *_tap_slices(offset, stride, dilation, out_size))]
        dw[(slice(None), slice(None), *offset)] = np.einsum("notxyz,nctxyz->oc", dy, window)
    return dw


CONV_CASES = {
    "basic_non_cubic": dict(x=(2, 3, 3, 4, 5, 6), w=(5, 3, 2, 3, 2, 3), stride=1, padding=0, dilation=1),
    "stride2_dilation2_padding": dict(
        x=(1, 2, 5, 4, 6, 7), w=(19, 2, 3, 2, 3, 2), stride=(2, 1, 2, 2), padding=(1, 0, 2, 1), dilation=(1, 2, 1, 2)
    ),
    "two_z_tiles": dict(x=(1, 2, 2, 3, 3, 37), w=(3, 2, 1, 2, 2, 3), stride=1, padding=(0, 1, 1, 1), dilation=1),
    "padding_beyond_kernel": dict(x=(2, 1, 3, 3, 4, 5), w=(2, 1, 1, 1, 1, 1), stride=3, padding=2, dilation=1),
    "tap_chunks_and_input_channel_tiles": dict(
        x=(1, 17, 1, 4, 6, 7), w=(2, 17, 1, 3, 4, 5), stride=(1, 1, 2, 1), padding=(0, 1, 1, 2), dilation=1
    ),
}
# float16: the reference is computed in float64 from the float16-rounded inputs, so the only
# errors are the kernel's float32 accumulation (bounded by the float32 tolerance, 1e-4 of the
# largest magnitude, as for the float32 kernels) and the single rounding of each output to
# float16, at most half an ulp = 2**-11 of its magnitude (unit roundoff of binary16).
CONV_TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4, np.float16: 2.0**-11 + 1e-4}


def assert_rounded_once(actual, expected, name):
    """float16 outputs: each element within half a float16 ulp of the exact value, plus the
    float32 accumulation error (1e-4 of the largest magnitude). A float16 accumulator, or a
    second rounding, breaks this for the sums of these tests."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    half_ulp = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float64) / 2
    bound = half_ulp + 1e-4 * max(1.0, float(np.abs(expected).max(initial=0.0)))
    excess = np.abs(actual - expected) - bound
    assert (excess <= 0).all(), f"{name}: {int((excess > 0).sum())} elements off by more than half a float16 ulp"


def _four(v):
    return (v,) * 4 if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=["f64", "f32", "f16"])
@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv4d_forward_and_gradients_match_numpy(kernels, case, dtype):
    spec = CONV_CASES[case]
    stride, padding, dilation = (_four(spec[k]) for k in ("stride", "padding", "dilation"))
    rng = np.random.default_rng(sum(map(ord, case)))
    x = rng.standard_normal(spec["x"]).astype(dtype)
    w = rng.standard_normal(spec["w"]).astype(dtype)
    y_expected = conv4d_reference(x.astype(np.float64), w.astype(np.float64), stride, padding, dilation)
    dy = rng.standard_normal(y_expected.shape).astype(dtype)
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    to_dev, to_np = kernels.to_device, kernels.to_numpy
    rtol = CONV_TOLERANCE[dtype]

    y = to_np(kernels.conv4d_forward(to_dev(x), to_dev(w), stride, padding, dilation))
    dx = to_np(kernels.conv4d_grad_input(to_dev(dy), to_dev(w), x.shape, stride, padding, dilation))
    dw = to_np(kernels.conv4d_grad_weight(to_dev(x), to_dev(dy), w.shape, stride, padding, dilation))
    expected = {
        "conv4d_forward": (y, y_expected),
        "conv4d_grad_input": (dx, conv4d_grad_input_reference(dy64, w64, x.shape, stride, padding, dilation)),
        "conv4d_grad_weight": (dw, conv4d_grad_weight_reference(x64, dy64, w.shape, stride, padding, dilation)),
    }
    for name, (actual, reference) in expected.items():
        assert actual.dtype == dtype, f"{name}: {actual.dtype}"
        assert_close(actual, reference, rtol, name)
        if dtype == np.float16:
            assert_rounded_once(actual, reference, name)


def test_conv4d_float16_accumulates_in_float32(kernels):
    """8192 (forward, grad_input) and 16384 (grad_weight) products of ones: exact in a float32
    accumulator, while a float16 one stops at 2048 (2049 is not a float16). The results
    themselves are float16 numbers, so the outputs must be exact."""
    to_dev, to_np = kernels.to_device, kernels.to_numpy
    ones = lambda *shape: to_dev(np.ones(shape, dtype=np.float16))  # noqa: E731
    y = to_np(kernels.conv4d_forward(ones(1, 64, 2, 4, 4, 4), ones(1, 64, 2, 4, 4, 4)))
    assert y.dtype == np.float16 and y.ravel().tolist() == [8192.0]
    # dx[0, 0, 0, 0, 0, 0] gathers every (output channel, output position, tap) pair: 64 * 2 * 4^3
    dx = to_np(kernels.conv4d_grad_input(ones(1, 64, 2, 4, 4, 4), ones(64, 1, 2, 4, 4, 4), (1, 1, 1, 1, 1, 1),
                                         padding=(1, 3, 3, 3)))
    assert dx.dtype == np.float16 and dx.ravel().tolist() == [8192.0]
    dw = to_np(kernels.conv4d_grad_weight(ones(4, 1, 4, 8, 8, 16), ones(4, 1, 4, 8, 8, 16), (1, 1, 1, 1, 1, 1)))
    assert dw.dtype == np.float16 and dw.ravel().tolist() == [16384.0]


def test_conv4d_reference_agrees_with_torch_conv3d():
    """Guards the reference itself: with kT = 1 and T = 1, conv4d is torch's conv3d over (X, Y, Z)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 1, 5, 6, 7))
    w = rng.standard_normal((4, 3, 1, 3, 2, 3))
    expected = torch.nn.functional.conv3d(
        torch.from_numpy(x[:, :, 0]), torch.from_numpy(w[:, :, 0]),
        stride=(2, 1, 2), padding=(1, 0, 2), dilation=(1, 2, 1),
    ).numpy()
    actual = conv4d_reference(x, w, (1, 2, 1, 2), (0, 1, 0, 2), (1, 1, 2, 1))[:, :, 0]
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# attention reference: the naive softmax in float64 and the analytic backward.


def attention_reference(q, k, v, scale, is_causal, mask):
    scores = q @ k.transpose(0, 2, 1) * scale
    if mask is not None:
        scores = scores + mask
    if is_causal:
        scores = np.where(np.tril(np.ones(scores.shape[1:], dtype=bool)), scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    exp = np.exp(scores - row_max)
    total = exp.sum(axis=-1, keepdims=True)
    probs = np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)
    with np.errstate(divide="ignore"):
        lse = np.where(total > 0, row_max + np.log(total), -np.inf)[..., 0]
    return probs @ v, lse, probs


def attention_backward_reference(q, k, v, do, scale, is_causal, mask):
    o, _, probs = attention_reference(q, k, v, scale, is_causal, mask)
    dv = probs.transpose(0, 2, 1) @ do
    d_probs = do @ v.transpose(0, 2, 1)
    d_scores = probs * (d_probs - (do * o).sum(axis=-1, keepdims=True))
    return d_scores @ k * scale, d_scores.transpose(0, 2, 1) @ q * scale, dv


def _bool_mask_with_a_blind_row(rng, bh, seq_q, seq_k):
    mask = rng.random((bh, seq_q, seq_k)) > 0.3
    mask[:, :, 0] = True
    mask[-1, 2, :] = False  # every key hidden from query 2 of the last head
    return mask


ATTENTION_CASES = {
    "small_L_ne_S": dict(bh=2, seq_q=5, seq_k=7, head_dim=16, is_causal=False, mask=None, dtype=np.float32),
    "two_tiles_causal_D24": dict(bh=2, seq_q=70, seq_k=67, head_dim=24, is_causal=True, mask=None, dtype=np.float32),
    "causal_L_gt_S_mask_broadcast_over_heads": dict(
        bh=3, seq_q=9, seq_k=5, head_dim=64, is_causal=True, mask="1LS", dtype=np.float32
    ),
    "mask_broadcast_over_queries_two_key_tiles": dict(
        bh=2, seq_q=6, seq_k=70, head_dim=24, is_causal=False, mask="B1S", dtype=np.float32
    ),
    "bool_mask_fully_masked_row_odd_head_dim": dict(
        bh=2, seq_q=6, seq_k=5, head_dim=13, is_causal=False, mask="bool", dtype=np.float32
    ),
    "float16_causal_two_query_tiles": dict(
        bh=2, seq_q=65, seq_k=33, head_dim=64, is_causal=True, mask="LS", dtype=np.float16
    ),
    "head_dim_100_bucket_128": dict(bh=1, seq_q=3, seq_k=4, head_dim=100, is_causal=False, mask=None, dtype=np.float32),
    "float16_head_dim_8": dict(bh=1, seq_q=4, seq_k=6, head_dim=8, is_causal=True, mask="bool", dtype=np.float16),
}
ATTENTION_TOLERANCE = {np.float32: 1e-4, np.float16: 3e-3}


def _make_mask(kind, rng, bh, seq_q, seq_k):
    if kind is None:
        return None
    if kind == "bool":
        return _bool_mask_with_a_blind_row(rng, bh, seq_q, seq_k)
    shape = {"1LS": (1, seq_q, seq_k), "B1S": (bh, 1, seq_k), "LS": (seq_q, seq_k)}[kind]
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("case", list(ATTENTION_CASES), ids=list(ATTENTION_CASES))
def test_flash_attention_forward_and_backward_match_numpy(kernels, case):
    spec = ATTENTION_CASES[case]
    dtype = spec["dtype"]
    rng = np.random.default_rng(sum(map(ord, case)))
    bh, seq_q, seq_k, head_dim = spec["bh"], spec["seq_q"], spec["seq_k"], spec["head_dim"]
    q = rng.standard_normal((bh, seq_q, head_dim)).astype(dtype)
    k = rng.standard_normal((bh, seq_k, head_dim)).astype(dtype)
    v = rng.standard_normal((bh, seq_k, head_dim)).astype(dtype)
    do = rng.standard_normal((bh, seq_q, head_dim)).astype(dtype)
    mask = _make_mask(spec["mask"], rng, bh, seq_q, seq_k)
    if mask is None:
        additive = None
    else:
        additive = np.where(mask, 0.0, -np.inf) if mask.dtype == bool else mask.astype(np.float64)
    scale, is_causal = head_dim**-0.5, spec["is_causal"]
    q64, k64, v64, do64 = (a.astype(np.float64) for a in (q, k, v, do))
    o_expected, lse_expected, _ = attention_reference(q64, k64, v64, scale, is_causal, additive)
    rtol = ATTENTION_TOLERANCE[dtype]
    dev, to_np = kernels.to_device, kernels.to_numpy
    dev_mask = None if mask is None else dev(mask)

    o, lse = kernels.flash_attention_forward(dev(q), dev(k), dev(v), scale, is_causal, dev_mask)
    o, lse = to_np(o), to_np(lse)
    assert o.dtype == dtype and lse.dtype == np.float32
    assert_close(o, o_expected, rtol, "o")
    assert_close(lse, lse_expected, rtol, "lse")

    # The backward gets the reference o and lse so its check does not inherit forward errors.
    dq, dk, dv = kernels.flash_attention_backward(
        dev(q), dev(k), dev(v), dev(o_expected.astype(dtype)), dev(lse_expected.astype(np.float32)), dev(do),
        scale, is_causal, dev_mask,
    )
    o_rounded = o_expected.astype(dtype).astype(np.float64)
    dq_expected, dk_expected, dv_expected = attention_backward_reference(
        q64, k64, v64, do64, scale, is_causal, additive
    )
    # delta = rowsum(do * o) uses the rounded o the kernel received; account for it in float16.
    if dtype == np.float16:
        probs = attention_reference(q64, k64, v64, scale, is_causal, additive)[2]
        shift = ((do64 * o_rounded).sum(-1, keepdims=True) - (do64 * o_expected).sum(-1, keepdims=True))
        dq_expected -= (probs * shift) @ k64 * scale
        dk_expected -= (probs * shift).transpose(0, 2, 1) @ q64 * scale
    for name, actual, expected in (("dq", dq, dq_expected), ("dk", dk, dk_expected), ("dv", dv, dv_expected)):
        actual = to_np(actual)
        assert actual.dtype == dtype
        assert_close(actual, expected, rtol, name)

    if spec["mask"] == "bool":
        assert np.all(o[-1, 2] == 0) and lse[-1, 2] == -np.inf
        assert np.all(to_np(dq)[-1, 2] == 0)


# dropout: the kernels regenerate the Philox keep mask of avila_ml.backends.philox.dropout_keep;
# a seed >= 2**63 and an offset beyond 32 bits check the 64-bit arguments on the way in.
DROPOUT_CASES = {
    "two_tiles_L_ne_S_float_mask": dict(bh=2, seq_q=70, seq_k=67, head_dim=24, is_causal=False, mask="LS", p=0.3),
    "causal_bool_mask_blind_row": dict(bh=2, seq_q=6, seq_k=9, head_dim=13, is_causal=True, mask="bool", p=0.5),
}
DROPOUT_SEED, DROPOUT_OFFSET = (1 << 63) + 12345, (1 << 40) + 7


def _keep_factors(p, bh, seq_q, seq_k):
    from avila_ml.backends.philox import dropout_keep

    keep = dropout_keep(np, DROPOUT_SEED, DROPOUT_OFFSET, p, seq_q, seq_k, 0, bh, 0, seq_q, 0, seq_k)
    return keep, keep / (1.0 - p)


@pytest.mark.parametrize("case", list(DROPOUT_CASES), ids=list(DROPOUT_CASES))
def test_flash_attention_dropout_matches_numpy_with_the_same_mask(kernels, case):
    """o = (P o Z) V and its gradients, Z the materialised Philox mask of the same (seed, offset)."""
    spec = DROPOUT_CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    bh, seq_q, seq_k, head_dim, p = spec["bh"], spec["seq_q"], spec["seq_k"], spec["head_dim"], spec["p"]
    q, k, v = (rng.standard_normal((bh, n, head_dim)).astype(np.float32) for n in (seq_q, seq_k, seq_k))
    do = rng.standard_normal((bh, seq_q, head_dim)).astype(np.float32)
    mask = _make_mask(spec["mask"], rng, bh, seq_q, seq_k)
    additive = np.where(mask, 0.0, -np.inf) if mask.dtype == bool else mask.astype(np.float64)
    scale, is_causal = head_dim**-0.5, spec["is_causal"]
    q64, k64, v64, do64 = (a.astype(np.float64) for a in (q, k, v, do))
    _, lse_expected, probs = attention_reference(q64, k64, v64, scale, is_causal, additive)
    _, z = _keep_factors(p, bh, seq_q, seq_k)
    o_expected = (probs * z) @ v64
    dropout = (p, DROPOUT_SEED, DROPOUT_OFFSET)
    dev, to_np = kernels.to_device, kernels.to_numpy

    o, lse = kernels.flash_attention_forward(dev(q), dev(k), dev(v), scale, is_causal, dev(mask), dropout)
    assert_close(to_np(o), o_expected, 1e-4, "o")
    assert_close(to_np(lse), lse_expected, 1e-4, "lse")  # the log-sum-exp of P, before dropout

    dq, dk, dv = kernels.flash_attention_backward(
        dev(q), dev(k), dev(v), dev(o_expected.astype(np.float32)), dev(lse_expected.astype(np.float32)), dev(do),
        scale, is_causal, dev(mask), dropout,
    )
    delta = (do64 * o_expected.astype(np.float32).astype(np.float64)).sum(-1, keepdims=True)
    d_scores = probs * ((do64 @ v64.transpose(0, 2, 1)) * z - delta)
    expected = {"dq": d_scores @ k64 * scale, "dk": d_scores.transpose(0, 2, 1) @ q64 * scale,
                "dv": (probs * z).transpose(0, 2, 1) @ do64}
    for name, actual in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert_close(to_np(actual), expected[name], 1e-4, name)


def test_flash_attention_dropout_keeps_exactly_the_xp_mask(kernels):
    """With V = I the output is P o Z itself: its zeros are exactly the dropped (b, i, j) of the
    xp function (bit-identical keep decisions), over two key tiles and S not a multiple of 4."""
    bh, seq_q, seq_k, p = 2, 9, 70, 0.4
    rng = np.random.default_rng(3)
    q = rng.standard_normal((bh, seq_q, seq_k)).astype(np.float32) * 0.1
    k = rng.standard_normal((bh, seq_k, seq_k)).astype(np.float32) * 0.1
    v = np.broadcast_to(np.eye(seq_k, dtype=np.float32), (bh, seq_k, seq_k)).copy()
    dev, to_np = kernels.to_device, kernels.to_numpy
    o, _ = kernels.flash_attention_forward(dev(q), dev(k), dev(v), 1.0, False, None,
                                           (p, DROPOUT_SEED, DROPOUT_OFFSET))
    keep, _ = _keep_factors(p, bh, seq_q, seq_k)
    assert np.array_equal(to_np(o) != 0, keep)


def test_attention_reference_agrees_with_torch_sdpa():
    """Guards the reference itself, including top-left causal alignment with L != S."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(shape) for shape in ((2, 7, 8), (2, 5, 8), (2, 5, 8)))
    mask = rng.standard_normal((7, 5))
    for is_causal, m in ((True, None), (False, mask)):
        expected = torch.nn.functional.scaled_dot_product_attention(
            *(torch.from_numpy(a) for a in (q, k, v)), attn_mask=None if m is None else torch.from_numpy(m),
            is_causal=is_causal, scale=0.3,
        ).numpy()
        np.testing.assert_allclose(attention_reference(q, k, v, 0.3, is_causal, m)[0], expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The emulation itself: it must see the bugs it exists to catch.


def test_every_kernel_name_is_registered_in_the_host_library():
    library = host_emulation.load_host_library()
    for source, names in KERNEL_NAMES.items():
        for name in names:
            assert hasattr(library, name), f"{name} listed for {source} but not built"


def _conv_forward_plan(**launch_changes):
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 2, 2, 2, 3, 5)), rng.standard_normal((3, 2, 1, 1, 2, 2))
    plan, inputs = prepare_conv4d_forward(np, x, w, 1, 0, 1)
    launch = dataclasses.replace(plan.launches[0], **launch_changes)
    return dataclasses.replace(plan, launches=(launch,)), inputs


def test_emulation_reports_out_of_bounds_writes():
    host_emulation.build_host_library()
    plan, _ = _conv_forward_plan()
    # Tell the kernel the output is one element longer along z than the buffer it writes to.
    args = list(plan.launches[0].args)
    args[13] = np.int32(args[13] + 1)
    bad, inputs = _conv_forward_plan(args=tuple(args))
    with pytest.raises(HostEmulationError, match="wrote outside buffer 'y'"):
        host_emulation.run_plan_on_host(bad, inputs)


def test_emulation_reports_unwritten_outputs_and_bad_signatures():
    host_emulation.build_host_library()
    half_grid, inputs = _conv_forward_plan(grid=(1, 1, 1))
    (y,) = host_emulation.run_plan_on_host(half_grid, inputs)
    assert np.isnan(y).any(), "outputs no block wrote must stay NaN-poisoned"

    short_args, inputs = _conv_forward_plan(args=half_grid.launches[0].args[:-1])
    with pytest.raises(HostEmulationError, match="takes 30 arguments"):
        host_emulation.run_plan_on_host(short_args, inputs)

    wide_int = list(half_grid.launches[0].args)
    wide_int[3] = np.int64(1)
    wide, inputs = _conv_forward_plan(args=tuple(wide_int))
    with pytest.raises(HostEmulationError, match="argument 3 is 4 bytes"):
        host_emulation.run_plan_on_host(wide, inputs)

    too_many_threads, inputs = _conv_forward_plan(block=(64, 32, 1))
    with pytest.raises(HostEmulationError, match="1024 threads per block"):
        host_emulation.run_plan_on_host(too_many_threads, inputs)


def test_bad_inputs_raise_errors_that_name_the_op_and_shapes():
    x, w = np.zeros((1, 3, 4, 4, 4, 4)), np.zeros((2, 2, 3, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv4d_forward: x has 3 input channels but w expects 2"):
        host_emulation.host_conv4d_forward(x, w)
    with pytest.raises(ValueError, match=r"conv4d_forward: calculated output size \(0, "):
        host_emulation.host_conv4d_forward(np.zeros((1, 2, 2, 4, 4, 4)), w)
    with pytest.raises(TypeError, match="conv4d_forward: the CUDA kernels support float32, float64 and float16, got int32"):
        host_emulation.host_conv4d_forward(np.zeros((1, 2, 4, 4, 4, 4), np.int32), np.zeros((2, 2, 3, 3, 3, 3), np.int32))
    q = np.zeros((2, 5, 129), dtype=np.float32)
    with pytest.raises(ValueError, match="head dimension 129 exceeds the kernel maximum 128"):
        host_emulation.host_flash_attention_forward(q, q, q, 1.0, False)
    q = np.zeros((2, 5, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 5\) does not broadcast to \(BH, L, S\)"):
        host_emulation.host_flash_attention_forward(q, q, q, 1.0, False, np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(TypeError, match="float32 and float16, got float64"):
        host_emulation.host_flash_attention_forward(*(q.astype(np.float64),) * 3, 1.0, False)
    with pytest.raises(ValueError, match=r"flash_attention_forward: dropout probability must be in \[0, 1\), got 1.0"):
        host_emulation.host_flash_attention_forward(q, q, q, 1.0, False, None, (1.0, 0, 0))


def test_empty_problems_return_without_launching():
    y = host_emulation.host_conv4d_forward(np.zeros((0, 2, 3, 3, 3, 3)), np.zeros((4, 2, 1, 1, 1, 1)))
    assert y.shape == (0, 4, 3, 3, 3, 3)
    q, no_keys = np.ones((2, 3, 8), dtype=np.float32), np.ones((2, 0, 8), dtype=np.float32)
    o, lse = host_emulation.host_flash_attention_forward(q, no_keys, no_keys, 1.0, False)
    assert np.all(o == 0) and np.all(lse == -np.inf)
    dq, dk, dv = host_emulation.host_flash_attention_backward(q, no_keys, no_keys, o, lse, q, 1.0, False)
    assert np.all(dq == 0) and dk.shape == dv.shape == (2, 0, 8)
