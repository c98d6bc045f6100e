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

Every line prints the median time over repeats (device synchronised around each call), TFLOP/s,
the fraction of the GPU's float32 peak, peak memory and, as in benchmarks/harness.py, the ratio
ours/PyTorch (< 1 means we are faster). The machine's limits, a measured float32 GEMM rate and the
copy bandwidth, are printed in the same run. Without CuPy and a GPU it skips itself (exit 0, as
run_all.py expects); without a CUDA build of PyTorch only our kernels are timed.

    .venv/bin/python benchmarks/bench_gpu_kernels.py [--repeats 5] [--json results.json]
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

    def torch_conv4d(inp, weight):
        # Stack the kT time offsets of the T-padded input into channels: one conv3d over (X, Y, Z).
        padded = torch.nn.functional.pad(inp, (0, 0, 0, 0, 0, 0, pad, pad))
        frames = padded.unfold(2, k, 1)  # (N, C_in, T, X, Y, Z, kT)
        stacked = frames.permute(0, 2, 6, 1, 3, 4, 5).reshape(n * size, k * c_in, size, size, size)
        weight3d = weight.permute(0, 2, 1, 3, 4, 5).reshape(c_out, k * c_in, k, k, k)
        out = torch.nn.functional.conv3d(stacked, weight3d, padding=pad)
        return out.reshape(n, size, c_out, size, size, size).permute(0, 2, 1, 3, 4, 5)

    def torch_step():
        inp = tx.detach().requires_grad_()
        weight = tw.detach().requires_grad_()
        out = torch_conv4d(inp, weight)
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
    bench_conv4d(torch, args.repeats, limits["fp32_peak_tflops"] * 1e12, rows)
    bench_attention(torch, args.repeats, limits["fp32_peak_tflops"] * 1e12, rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": limits, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
