"""Avila ML's CUDA kernels against PyTorch on the same GPU, IN ONE PROCESS (labelled as such).

Unlike the CPU benchmarks (``harness.py``: each library in its own process), this one times
both libraries in one process: on a GPU the work runs on the device, each call is timed with
the device synchronised around it, and the two libraries' CPU thread pools sit idle, so the
in-process comparison is fair there. Its output says "in-process" in the header.

* conv4d forward + backward (dx, dw), float32, x (8, 16, 32, 32, 32, 32), w (16, 16, 3, 3, 3, 3),
  padding 1, against PyTorch's best 4-D convolution: the kT time offsets stacked into channels and
  one cuDNN conv3d (PyTorch has no conv4d), with TF32 off (same arithmetic) and on (cuDNN's default).
* flash attention forward + backward, float32, B=8, H=8, D=64, L=S in {1024, 4096, 16384},
  against torch.nn.functional.scaled_dot_product_attention.

Issue 14's tensor-core benchmarks (``--suite tensor-cores``, the default runs both suites):

* conv4d forward + backward on x (8, 16, 32^4), w (16, 16, 3^4) and on x (2, 4, 64^4), w (8, 4, 3^4),
  padding 1, in float16, bfloat16 and TF32 (float32 with allow_tf32) on tensor cores
  (``conv4d_mma.cu``), each against the same conv3d-stacking workaround run by cuDNN in the same
  precision (torch.backends.cudnn.allow_tf32 for TF32), TFLOP/s and the fraction of the
  tensor-core peak of that precision (nominal dense peak from the SM count and clock where the
  clock is known, and the measured cuBLAS GEMM rate in that precision).
* attention forward + backward, B=4, H=16, L=S=4096, D in {64, 128}, float16 and bfloat16, causal
  and not, against torch.nn.functional.scaled_dot_product_attention (flash backend, forced with
  torch.nn.attention.sdpa_kernel where available), Avila ML's side on the tensor-core kernels
  (``attention_mma.cu``).

Every line prints the median time over repeats (device synchronised around each call), TFLOP/s,
the fraction of the GPU's float32 peak, peak memory and, as in benchmarks/harness.py, the ratio
ours/PyTorch (< 1 means we are faster). The machine's limits, a measured float32 GEMM rate and the
copy bandwidth, are printed in the same run. Without CuPy and a GPU it skips itself (exit 0, as
run_all.py expects); without a CUDA build of PyTorch only our kernels are timed.

    .venv/bin/python benchmarks/bench_gpu_kernels.py [--suite all|float32|tensor-cores] [--repeats 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avila_ml import cuda_kernels  # noqa: E402

try:
    import cupy

    GPU_AVAILABLE = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # no CuPy, no driver or no device: all mean "no GPU here"
    cupy = None
    GPU_AVAILABLE = False

# FP32 lanes per SM by compute capability (CUDA programming guide, arithmetic instruction throughput).
FP32_LANES_PER_SM = {(7, 0): 64, (8, 0): 64, (8, 6): 128, (8, 9): 128, (9, 0): 128, (10, 0): 128, (12, 0): 128}


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def synchronize() -> None:
    cupy.cuda.Device().synchronize()


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cupy_peak_bytes(fn) -> int:
    """Growth of CuPy's memory pool over one call, starting from an emptied pool."""
    pool = cupy.get_default_memory_pool()
    synchronize()
    pool.free_all_blocks()
    before = pool.total_bytes()
    fn()
    synchronize()
    return pool.total_bytes() - before


def torch_peak_bytes(torch, fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def machine_limits(torch, repeats: int) -> dict:
    device = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    sms = device.attributes["MultiProcessorCount"]
    clock_khz = device.attributes.get("ClockRate", 0)
    capability = device.compute_capability  # e.g. "90"
    lanes = FP32_LANES_PER_SM.get((int(capability[:-1]), int(capability[-1])), 128)
    n = 8192
    a = cupy.random.rand(n, n, dtype=cupy.float32)
    b = cupy.random.rand(n, n, dtype=cupy.float32)
    gemm = median_seconds(lambda: a @ b, repeats)
    big = cupy.empty(256 * 2**20, dtype=cupy.float32)
    copy = median_seconds(lambda: big.copy(), repeats)
    sgemm = 2 * n**3 / gemm
    # Without a clock attribute (it left cudaDeviceProp in CUDA 13), the measured SGEMM is the peak.
    peak_fp32 = 2.0 * sms * lanes * clock_khz * 1e3 if clock_khz else sgemm
    limits = {
        "gpu": name,
        "compute_capability": capability,
        "sms": sms,
        "clock_mhz": clock_khz / 1e3,
        "fp32_peak_tflops": peak_fp32 / 1e12,
        "cupy_sgemm_tflops": sgemm / 1e12,
        "copy_bandwidth_gbs": 2 * big.nbytes / copy / 1e9,
        "torch": None if torch is None else torch.__version__,
        "cupy": cupy.__version__,
    }
    del a, b, big
    return limits


def report(rows: list, name: str, seconds: float, flops: float, peak_fp32: float, peak_bytes: int,
           baseline: float | None = None) -> None:
    tflops = flops / seconds / 1e12
    ratio = "" if baseline is None else f"  ours/torch {seconds / baseline:5.2f}"
    fraction = tflops * 1e12 / peak_fp32
    print(f"  {name:<44s} {seconds * 1e3:10.2f} ms  {tflops:7.2f} TFLOP/s  {fraction:6.1%} of fp32 peak"
          f"  peak mem {peak_bytes / 2**30:6.2f} GiB{ratio}", flush=True)
    rows.append({"name": name, "ms": seconds * 1e3, "tflops": tflops, "fraction_of_fp32_peak": fraction,
                 "peak_mem_gib": peak_bytes / 2**30,
                 "ours_over_torch": None if baseline is None else seconds / baseline})


def torch_conv4d_stacked(torch, x, w, padding: int):
    """PyTorch's fastest 4-D convolution (it has no conv4d): the kT time offsets of the T-padded
    input stacked into channels, then one cuDNN conv3d over (X, Y, Z). Stride 1, dilation 1, the
    same zero padding on all four axes; differentiable, so backward gives dx and dw.

    x (N, C_in, T, X, Y, Z), w (C_out, C_in, kT, kX, kY, kZ) -> (N, C_out, oT, oX, oY, oZ).
    """
    n, c_in, t = x.shape[:3]
    c_out, _, k_t = w.shape[:3]
    padded = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 0, padding, padding))
    frames = padded.unfold(2, k_t, 1)  # (N, C_in, oT, X, Y, Z, kT)
    out_t = frames.shape[2]
    stacked = frames.permute(0, 2, 6, 1, 3, 4, 5).reshape(n * out_t, k_t * c_in, *x.shape[3:])
    weight3d = w.permute(0, 2, 1, 3, 4, 5).reshape(c_out, k_t * c_in, *w.shape[3:])
    out = torch.nn.functional.conv3d(stacked, weight3d, padding=padding)
    return out.reshape(n, out_t, c_out, *out.shape[2:]).permute(0, 2, 1, 3, 4, 5)


# Dense tensor-core FLOP per clock per SM for float16/bfloat16 inputs (A100: 312 TFLOP/s at
# 1.41 GHz x 108 SMs; H100 SXM: 989 TFLOP/s at 1.83 GHz x 132 SMs); TF32 runs at half of it.
TENSOR_FLOP_PER_CLOCK_PER_SM = {(8, 0): 2048, (8, 6): 1024, (8, 9): 1024, (9, 0): 4096}
TENSOR_CORE_CONV_CASES = (
    # (name, x shape, C_out, kernel, padding)
    ("(8,16,32^4)->16 k3^4", (8, 16, 32, 32, 32, 32), 16, 3, 1),
    ("(2,4,64^4)->8 k3^4", (2, 4, 64, 64, 64, 64), 8, 3, 1),
)
ATTENTION_CASES = tuple((head_dim, dtype, causal) for head_dim in (64, 128) for dtype in ("float16", "bfloat16")
                        for causal in (False, True))


def conv4d_flops(x_shape, c_out: int, kernel: int, padding: int) -> float:
    """FLOP of one conv4d pass (stride 1): 2 * N * C_out * output positions * C_in * kernel^4;
    forward, grad-input and grad-weight each cost this much.

    >>> round(conv4d_flops((8, 16, 32, 32, 32, 32), 16, 3, 1) / 1e12, 4)
    0.3479
    """
    n, c_in, *size = x_shape
    positions = 1
    for extent in size:
        positions *= extent + 2 * padding - kernel + 1
    return 2.0 * n * c_out * positions * c_in * kernel**4


def attention_flops(batch: int, heads: int, seq: int, head_dim: int, causal: bool) -> float:
    """FLOP of attention forward + backward as FlashAttention-2 counts them: 4 B H L^2 D forward,
    2.5 times that backward; causal halves both.

    >>> round(attention_flops(4, 16, 4096, 64, False) / 1e12, 4), round(attention_flops(4, 16, 4096, 64, True) / 1e12, 4)
    (0.9621, 0.481)
    """
    forward = 4.0 * batch * heads * seq * seq * head_dim
    return 3.5 * forward / (2 if causal else 1)


def tensor_core_peaks(torch, limits: dict, repeats: int) -> dict:
    """Nominal dense tensor-core peaks (FLOP/s) per precision where the clock is known, and the
    cuBLAS GEMM rate measured here in each precision (the attainable peak)."""
    capability = limits["compute_capability"]
    per_clock = TENSOR_FLOP_PER_CLOCK_PER_SM.get((int(capability[:-1]), int(capability[-1])))
    nominal = None
    if per_clock and limits["clock_mhz"]:
        nominal = per_clock * limits["sms"] * limits["clock_mhz"] * 1e6
    peaks = {"nominal_f16": nominal, "nominal_tf32": None if nominal is None else nominal / 2}
    if torch is not None:
        n = 8192
        for name, dtype, tf32 in (("gemm_f16", torch.float16, False), ("gemm_bf16", torch.bfloat16, False),
                                  ("gemm_tf32", torch.float32, True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            peaks[name] = 2 * n**3 / median_seconds(lambda: a @ b, repeats)
            del a, b
        torch.backends.cuda.matmul.allow_tf32 = False
    return peaks


def _report_tc(rows: list, name: str, seconds: float, flops: float, peak: float | None, gemm: float | None,
               baseline: float | None = None) -> None:
    tflops = flops / seconds / 1e12
    nominal = "" if not peak else f"  {tflops * 1e12 / peak:6.1%} of tensor peak"
    attained = "" if not gemm else f"  {tflops * 1e12 / gemm:6.1%} of cuBLAS GEMM"
    ratio = "" if baseline is None else f"  speed-up vs torch {baseline / seconds:5.2f}x"
    print(f"  {name:<52s} {seconds * 1e3:10.2f} ms  {tflops:7.2f} TFLOP/s{nominal}{attained}{ratio}", flush=True)
    rows.append({"name": name, "ms": seconds * 1e3, "tflops": tflops,
                 "fraction_of_tensor_peak": None if not peak else tflops * 1e12 / peak,
                 "fraction_of_gemm": None if not gemm else tflops * 1e12 / gemm,
                 "speedup_vs_torch": None if baseline is None else baseline / seconds})


def bench_tensor_core_conv4d(torch, repeats: int, peaks: dict, rows: list) -> None:
    import avila_ml as am

    for case, x_shape, c_out, k, pad in TENSOR_CORE_CONV_CASES:
        flops = 3 * conv4d_flops(x_shape, c_out, k, pad)
        for precision, dtype_name in (("f16", "float16"), ("bf16", "bfloat16"), ("tf32", "float32")):
            print(f"\nconv4d fwd+bwd {case}, {precision} tensor cores (padding {pad})", flush=True)
            x = _random(x_shape, dtype_name)
            w = _random((c_out, x_shape[1]) + (k,) * 4, dtype_name, 0.05)
            y_shape = (x_shape[0], c_out) + tuple(e + 2 * pad - k + 1 for e in x_shape[2:])
            dy = _random(y_shape, dtype_name)
            am.backends.cudnn.allow_tf32 = True  # TF32 for the float32 rows, as PyTorch's default

            def ours(precision=precision, x=x, w=w, dy=dy, pad=pad):
                # the launcher's own dispatch for float16/TF32; bfloat16 (uint16 bits: CuPy has no
                # bfloat16) straight through the tensor-core plans with the same tile choice
                return tuple(_tensor_core_pass(op, a, b, shape, pad, precision)
                             for op, a, b, shape in (("forward", x, w, None), ("grad_input", dy, w, x.shape),
                                                     ("grad_weight", x, dy, w.shape)))

            peak = peaks.get("nominal_tf32" if precision == "tf32" else "nominal_f16")
            gemm = peaks.get(f"gemm_{precision}")
            baseline = None
            if torch is not None:
                tx, tw, tdy = (torch.from_dlpack(a.view(cupy.uint16)).view(torch.bfloat16) if dtype_name == "bfloat16"
                               else torch.from_dlpack(a) for a in (x, w, dy))
                torch.backends.cudnn.allow_tf32 = precision == "tf32"
                torch.backends.cudnn.benchmark = True

                def torch_step():
                    inp = tx.detach().requires_grad_()
                    weight = tw.detach().requires_grad_()
                    out = torch_conv4d_stacked(torch, inp, weight, pad)
                    out.backward(tdy)
                    return out, inp.grad, weight.grad

                baseline = median_seconds(torch_step, repeats)
                _report_tc(rows, f"torch conv3d-stacking cuDNN {precision} fwd+bwd", baseline, flops, peak, gemm)
                ty = torch_step()[0]
                reference = ty.detach().float().contiguous()
                y_ours = ours()[0]
                y32 = ((y_ours.astype(cupy.uint32) << 16).view(cupy.float32) if precision == "bf16"
                       else y_ours.astype(cupy.float32))
                difference = float(cupy.abs(y32 - cupy.from_dlpack(reference)).max()
                                   / cupy.abs(cupy.from_dlpack(reference)).max())
                print(f"    forward max relative difference vs torch: {difference:.1e}")
            _report_tc(rows, f"avila conv4d {precision} fwd+bwd", median_seconds(ours, repeats), flops, peak, gemm,
                       baseline)
            del x, w, dy
    am.backends.cudnn.allow_tf32 = True


def _random(shape, dtype_name: str, scale: float = 1.0):
    """Normal values in float16/float32, or bfloat16 bit patterns in uint16 (rounded to nearest even)."""
    values = cupy.random.standard_normal(shape, dtype=cupy.float32) * scale
    if dtype_name != "bfloat16":
        return values.astype(dtype_name)
    bits = values.view(cupy.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(cupy.uint16)


def _tensor_core_pass(op, a, b, shape, pad, precision):
    if precision != "bf16":
        launcher = {"forward": cuda_kernels.conv4d_forward, "grad_input": cuda_kernels.conv4d_grad_input,
                    "grad_weight": cuda_kernels.conv4d_grad_weight}[op]
        return launcher(a, b, *(() if shape is None else (shape,)), 1, pad, 1)
    from avila_ml.cuda_kernels.launch import run_plan_on_gpu
    from avila_ml.cuda_kernels.tensor_core import prepare_conv4d_mma

    return run_plan_on_gpu(*prepare_conv4d_mma(cupy, op, a, b, shape, 1, pad, 1, "bf16"))[0]


def bench_attention_sdpa(torch, repeats: int, peaks: dict, rows: list) -> None:
    batch, heads, seq = 4, 16, 4096
    for head_dim, dtype_name, causal in ATTENTION_CASES:
        label = f"B={batch} H={heads} L={seq} D={head_dim} {dtype_name}{' causal' if causal else ''}"
        print(f"\nattention fwd+bwd {label}", flush=True)
        flops = attention_flops(batch, heads, seq, head_dim, causal)
        gemm = peaks.get("gemm_f16" if dtype_name == "float16" else "gemm_bf16")
        peak = peaks.get("nominal_f16")
        baseline = None
        if torch is not None:
            dtype = getattr(torch, dtype_name)
            q, k, v, do = (torch.randn(batch, heads, seq, head_dim, device="cuda", dtype=dtype) for _ in range(4))

            def torch_step():
                qq, kk, vv = (a.detach().requires_grad_() for a in (q, k, v))
                out = _sdpa_flash(torch, qq, kk, vv, causal)
                out.backward(do)
                return out

            baseline = median_seconds(torch_step, repeats)
            _report_tc(rows, f"torch SDPA flash {label}", baseline, flops, peak, gemm)
        shape = (batch * heads, seq, head_dim)
        q, k, v, do = (_random(shape, dtype_name) for _ in range(4))
        scale = head_dim**-0.5
        precision = "f16" if dtype_name == "float16" else "bf16"

        def ours(q=q, k=k, v=v, do=do, scale=scale, causal=causal, precision=precision):
            # attention_mma.cu through its plans (bfloat16 as uint16 bits: CuPy has no bfloat16)
            from avila_ml.cuda_kernels.launch import run_plan_on_gpu
            from avila_ml.cuda_kernels.tensor_core import prepare_attention_mma_backward, prepare_attention_mma_forward

            out, lse = run_plan_on_gpu(*prepare_attention_mma_forward(cupy, q, k, v, scale, causal, None, None,
                                                                      precision))
            return run_plan_on_gpu(*prepare_attention_mma_backward(cupy, q, k, v, out, lse, do, scale, causal, None,
                                                                   None, precision))

        _report_tc(rows, f"avila attention (tensor cores) {label}", median_seconds(ours, repeats), flops, peak, gemm,
                   baseline)
        del q, k, v, do


def _sdpa_flash(torch, q, k, v, causal):
    """SDPA with the flash backend forced where torch has sdpa_kernel (else its default choice)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


def bench_conv4d(torch, repeats: int, peak_fp32: float, rows: list) -> None:
    n, c_in, c_out, size, k, pad = 8, 16, 16, 32, 3, 1
    print(f"\nconv4d fwd+bwd float32: x {(n, c_in) + (size,) * 4}, w {(c_out, c_in) + (k,) * 4}, padding {pad}")
    x = cupy.random.standard_normal((n, c_in, size, size, size, size), dtype=cupy.float32)
    w = cupy.random.standard_normal((c_out, c_in, k, k, k, k), dtype=cupy.float32) * 0.05
    dy = cupy.random.standard_normal((n, c_out, size, size, size, size), dtype=cupy.float32)
    flops_forward = 2.0 * n * c_out * size**4 * c_in * k**4
    flops_total = 3 * flops_forward  # forward, grad-input, grad-weight

    def ours():
        y = cuda_kernels.conv4d_forward(x, w, 1, pad, 1)
        dx = cuda_kernels.conv4d_grad_input(dy, w, x.shape, 1, pad, 1)
        dw = cuda_kernels.conv4d_grad_weight(x, dy, w.shape, 1, pad, 1)
        return y, dx, dw

    ours_seconds = median_seconds(ours, repeats)
    for part, fn in (("forward", lambda: cuda_kernels.conv4d_forward(x, w, 1, pad, 1)),
                     ("grad_input", lambda: cuda_kernels.conv4d_grad_input(dy, w, x.shape, 1, pad, 1)),
                     ("grad_weight", lambda: cuda_kernels.conv4d_grad_weight(x, dy, w.shape, 1, pad, 1))):
        report(rows, f"avila conv4d {part}", median_seconds(fn, repeats), flops_forward, peak_fp32, cupy_peak_bytes(fn))
    if torch is None:
        report(rows, "avila conv4d fwd+bwd", ours_seconds, flops_total, peak_fp32, cupy_peak_bytes(ours))
        print("  (PyTorch with CUDA not available: no baseline)")
        return

    tx, tw, tdy = (torch.from_dlpack(a) for a in (x, w, dy))

    def torch_step():
        inp = tx.detach().requires_grad_()
        weight = tw.detach().requires_grad_()
        out = torch_conv4d_stacked(torch, inp, weight, pad)
        out.backward(tdy)
        return out, inp.grad, weight.grad

    y, dx, dw = ours()
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        ty, tdx, tdw = torch_step()
        errors = {}
        for key, ours_value, torch_value in (("y", y, ty), ("dx", dx, tdx), ("dw", dw, tdw)):
            reference = cupy.from_dlpack(torch_value.detach().contiguous())
            errors[key] = float(cupy.abs(ours_value - reference).max() / cupy.abs(reference).max())
        torch_seconds = median_seconds(torch_step, repeats)
        label = "TF32 on" if tf32 else "TF32 off"
        report(rows, f"torch conv3d-stacking fwd+bwd ({label})", torch_seconds, flops_total, peak_fp32,
               torch_peak_bytes(torch, torch_step))
        if not tf32:
            report(rows, "avila conv4d fwd+bwd", ours_seconds, flops_total, peak_fp32, cupy_peak_bytes(ours),
                   baseline=torch_seconds)
        print(f"    max relative difference vs torch ({label}): "
              + ", ".join(f"{key} {value:.1e}" for key, value in errors.items()))


def bench_attention(torch, repeats: int, peak_fp32: float, rows: list) -> None:
    batch, heads, head_dim = 8, 8, 64
    for seq in (1024, 4096, 16384):
        print(f"\nflash attention fwd+bwd float32: B={batch}, H={heads}, L=S={seq}, D={head_dim}")
        shape = (batch * heads, seq, head_dim)
        q, k, v, do = (cupy.random.standard_normal(shape, dtype=cupy.float32) for _ in range(4))
        scale = head_dim**-0.5
        flops_forward = 4.0 * batch * heads * seq * seq * head_dim
        flops_backward = 2.5 * flops_forward  # the 5 products of the standard backward (FlashAttention-2 convention)

        def forward():
            return cuda_kernels.flash_attention_forward(q, k, v, scale, False)

        o, lse = forward()

        def backward():
            return cuda_kernels.flash_attention_backward(q, k, v, o, lse, do, scale, False)

        def ours():
            out, log_sum_exp = forward()
            return cuda_kernels.flash_attention_backward(q, k, v, out, log_sum_exp, do, scale, False)

        report(rows, f"avila attention forward L={seq}", median_seconds(forward, repeats), flops_forward, peak_fp32,
               cupy_peak_bytes(forward))
        report(rows, f"avila attention backward L={seq}", median_seconds(backward, repeats), flops_backward, peak_fp32,
               cupy_peak_bytes(backward))
        ours_seconds = median_seconds(ours, repeats)
        if torch is None:
            report(rows, f"avila attention fwd+bwd L={seq}", ours_seconds, 3.5 * flops_forward, peak_fp32,
                   cupy_peak_bytes(ours))
            continue
        tq, tk, tv, tdo = (torch.from_dlpack(a).view(batch, heads, seq, head_dim) for a in (q, k, v, do))

        def torch_step():
            qq, kk, vv = (a.detach().requires_grad_() for a in (tq, tk, tv))
            out = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, scale=scale)
            out.backward(tdo)
            return out, qq.grad, kk.grad, vv.grad

        tout, tdq, tdk, tdv = torch_step()
        dq, dk, dv = ours()
        errors = {}
        for key, ours_value, torch_value in (("o", o, tout), ("dq", dq, tdq), ("dk", dk, tdk), ("dv", dv, tdv)):
            reference = cupy.from_dlpack(torch_value.detach().reshape(shape).contiguous())
            errors[key] = float(cupy.abs(ours_value - reference).max())
        torch_seconds = median_seconds(torch_step, repeats)
        report(rows, f"torch SDPA fwd+bwd L={seq}", torch_seconds, 3.5 * flops_forward, peak_fp32,
               torch_peak_bytes(torch, torch_step))
        report(rows, f"avila attention fwd+bwd L={seq}", ours_seconds, 3.5 * flops_forward, peak_fp32,
               cupy_peak_bytes(ours), baseline=torch_seconds)
        print("    max abs difference vs torch: " + ", ".join(f"{key} {value:.1e}" for key, value in errors.items()))
        del q, k, v, do, o, lse, tq, tk, tv, tdo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--suite", choices=("all", "float32", "tensor-cores"), default="all",
                        help="float32: the CUDA-core kernels; tensor-cores: issue 14's benchmarks")
    args = parser.parse_args()
    if not GPU_AVAILABLE:
        print("bench_gpu_kernels: skipped, needs CuPy and a CUDA GPU")
        return
    torch = _torch_cuda()
    limits = machine_limits(torch, args.repeats)
    print("method: in-process (both libraries in this process), device-synchronised median of repeats")
    print("machine: " + ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                                  for key, value in limits.items()))
    if torch is None:
        print("PyTorch with CUDA is not available: timing Avila ML's kernels only (no ratios)")
    rows: list = []
    peaks: dict = {}
    if args.suite in ("all", "float32"):
        import avila_ml as am

        am.backends.cudnn.allow_tf32 = False  # the exact float32 kernels, as labelled
        bench_conv4d(torch, args.repeats, limits["fp32_peak_tflops"] * 1e12, rows)
        bench_attention(torch, args.repeats, limits["fp32_peak_tflops"] * 1e12, rows)
        am.backends.cudnn.allow_tf32 = True
    if args.suite in ("all", "tensor-cores"):
        peaks = tensor_core_peaks(torch, limits, args.repeats)
        print("tensor-core peaks (TFLOP/s): " + ", ".join(
            f"{key}={value / 1e12:.1f}" for key, value in peaks.items() if value))
        bench_tensor_core_conv4d(torch, args.repeats, peaks, rows)
        bench_attention_sdpa(torch, args.repeats, peaks, rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": limits, "tensor_core_peaks": peaks, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
