"""Side-by-side timing of an Avila ML workload and its PyTorch twin in one process.

Each ``compare`` call runs the two callables interleaved (ours, theirs, ours, ...) after a
warm-up, takes the median of the repeats, and reports time, achieved GFLOP/s or GB/s and
the ratio ours/PyTorch (< 1 means we are faster). ``machine_limits`` measures this
machine's own float32 GEMM GFLOP/s and copy bandwidth in the same run, so the figures can
be read against what the hardware gives.

Usage:
    from harness import compare, machine_limits, print_table
    rows = [compare("matmul 1024^3", lambda: a @ b, lambda: ta @ tb, flops=2 * 1024**3)]
    print_table(rows, machine_limits())
"""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(name: str, ours, theirs, *, flops: float | None = None, nbytes: float | None = None,
            repeats: int = 7, warmup: int = 2, min_time: float = 0.05) -> dict:
    """Time ``ours`` and ``theirs`` interleaved; return a result row.

    Each repeat calls a function enough times to last ``min_time`` seconds (calibrated during
    warm-up), so tiny workloads are not dominated by timer resolution.
    """
    for _ in range(warmup):
        ours()
        theirs()
    calls = []
    for fn in (ours, theirs):
        t = max(_time_once(fn), 1e-7)
        calls.append(max(1, int(min_time / t)))
    t_ours, t_theirs = [], []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for fn, n, acc in ((ours, calls[0], t_ours), (theirs, calls[1], t_theirs)):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                acc.append((time.perf_counter() - t0) / n)
    finally:
        if gc_was:
            gc.enable()
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    row = {"name": name, "ours_s": mo, "torch_s": mt, "ratio": mo / mt}
    if flops:
        row["ours_gflops"] = flops / mo / 1e9
        row["torch_gflops"] = flops / mt / 1e9
    if nbytes:
        row["ours_gbs"] = nbytes / mo / 1e9
        row["torch_gbs"] = nbytes / mt / 1e9
    return row


def peak_python_memory(fn) -> int:
    """Peak bytes allocated through Python/NumPy while ``fn`` runs (``tracemalloc``).

    NumPy reports its array buffers to tracemalloc, so this is the NumPy-side peak.
    PyTorch's allocator is not traced: compare PyTorch with ``torch_peak_memory``.
    """
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def torch_peak_memory(fn) -> int | None:
    """Peak bytes of PyTorch CPU tensors allocated while ``fn`` runs, via the profiler's
    memory records; None when the profiler is unavailable."""
    try:
        import torch
        from torch.profiler import profile, ProfilerActivity
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    events = sorted(
        (e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)),
        key=lambda e: e.time_range.start,
    )
    for e in events:
        cur += e.cpu_memory_usage
        peak = max(peak, cur)
    del torch
    return peak


def machine_limits() -> dict:
    """This machine's float32 GEMM GFLOP/s (NumPy's BLAS, 1024^3) and copy bandwidth (GB/s)."""
    n = 1024
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    t = min(_time_once(lambda: a @ b) for _ in range(5))
    gemm = 2 * n ** 3 / t / 1e9
    src = np.ones(64 * 2 ** 20 // 4, dtype=np.float32)  # 64 MiB
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t = min(_time_once(lambda: np.copyto(dst, src)) for _ in range(5))
    bw = 2 * src.nbytes / t / 1e9  # read + write
    return {"gemm_gflops": gemm, "copy_gbs": bw, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine()}


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:8.1f} us"
    if s < 1:
        return f"{s * 1e3:8.2f} ms"
    return f"{s:8.3f} s "


def print_table(rows, limits: dict | None = None, title: str = "Avila ML vs PyTorch (CPU)") -> str:
    """Print (and return) the results as a fixed-width table."""
    lines = [f"== {title} =="]
    if limits:
        lines.append(
            f"machine: {limits['machine']}, {limits['cpus']} cpus; float32 GEMM {limits['gemm_gflops']:.1f} GFLOP/s; "
            f"copy bandwidth {limits['copy_gbs']:.1f} GB/s"
        )
    lines.append(f"{'workload':46s} {'avila_ml':>11s} {'pytorch':>11s} {'ratio':>7s}  throughput (ours / torch)")
    for r in rows:
        thr = ""
        if "ours_gflops" in r:
            thr = f"{r['ours_gflops']:.1f} / {r['torch_gflops']:.1f} GFLOP/s"
        elif "ours_gbs" in r:
            thr = f"{r['ours_gbs']:.2f} / {r['torch_gbs']:.2f} GB/s"
        extra = r.get("note", "")
        lines.append(f"{r['name']:46s} {_fmt_time(r['ours_s'])} {_fmt_time(r['torch_s'])} {r['ratio']:6.2f}x  {thr} {extra}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def save_results(text: str, name: str) -> str:
    """Write a table under ``benchmarks/results/NAME.txt`` and return the path."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "results", f"{name}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")
    return path
