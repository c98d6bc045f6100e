"""Mixed precision and activation checkpointing figures (issue 11).

    python benchmarks/bench_amp.py overhead    # 10-op autograd graph: before this work vs now
    python benchmarks/bench_amp.py step        # Conv4d example training step: autocast vs float32
    python benchmarks/bench_amp.py checkpoint  # deep Conv4d stack: peak memory and time with checkpointing
    python benchmarks/bench_amp.py accuracy    # conv4d_spacetime.py test accuracy: autocast vs float32
    python benchmarks/bench_amp.py all --json benchmarks/results/amp.json

``overhead`` times the same 10-op graph as ``bench_core.py`` in fresh processes, alternating
between the library at ``--before`` (a git revision, default the commit this work started
from, exported with ``git archive``) and the working tree, so the autocast hook in
``Function.apply`` is measured against the code without it. Each figure is the median of
per-process medians of CPU time (``time.process_time``, which other processes on a busy machine
disturb far less than wall time), with the spread. The machine's state (CPU model, load average) is
printed: on a shared, loaded machine the ratios are what to read, not the absolute times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

import harness  # benchmarks/ is the script's directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_REVISION = "06b0465"  # main when issue 11 started

_TEN_OPS = r"""
import sys, time, numpy as np
import avila_ml as am

rng = np.random.default_rng(3)
x = am.tensor(rng.standard_normal(4, dtype=np.float32), requires_grad=True)
y = am.tensor(rng.standard_normal(4, dtype=np.float32), requires_grad=True)
def ten(x, y):
    z = x * y; z = z + x; z = z.exp(); z = z * 0.5; z = z - y
    z = z.tanh(); z = z * x; z = z.sin(); z = z + 1.0
    return z.sum()
for _ in range(300): ten(x, y).backward()
times = []
for _ in range(15):
    n = 400
    t = time.process_time()  # CPU time of this process: robust to other processes on a busy machine
    for _ in range(n): ten(x, y).backward()
    times.append((time.process_time() - t) / n)
print(np.median(times))
"""


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_1min": os.getloadavg()[0], "python": sys.version.split()[0]}


def _export(revision: str) -> str:
    out = tempfile.mkdtemp(prefix="avila_before_")
    tar = subprocess.run(["git", "-C", ROOT, "archive", revision, "avila_ml"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", out], input=tar.stdout, check=True)
    return out


def overhead(before: str, rounds: int) -> dict:
    old = _export(before)
    res = {"before": [], "after": []}
    for _ in range(rounds):  # alternate, each measurement in a fresh process
        for name, path in (("before", old), ("after", ROOT)):
            env = harness.child_env(PYTHONPATH=path)
            out = subprocess.run([sys.executable, "-c", _TEN_OPS], env=env, capture_output=True, text=True, check=True)
            res[name].append(float(out.stdout.strip()))
    b, a = np.median(res["before"]), np.median(res["after"])
    row = {"before_us_per_graph": b * 1e6, "after_us_per_graph": a * 1e6, "ratio_after_before": a / b,
           "spread_before_us": [min(res["before"]) * 1e6, max(res["before"]) * 1e6],
           "spread_after_us": [min(res["after"]) * 1e6, max(res["after"]) * 1e6], "before_revision": before}
    print(f"10-op graph fwd+bwd: before {b * 1e6:.1f} us, after {a * 1e6:.1f} us, ratio {a / b:.3f} "
          f"(before {row['spread_before_us'][0]:.1f}-{row['spread_before_us'][1]:.1f}, "
          f"after {row['spread_after_us'][0]:.1f}-{row['spread_after_us'][1]:.1f})")
    return row


def step(rounds: int, batch: int) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import avila_ml as am
    from conv4d_spacetime import SpacetimeNet, wave_packets
    am.manual_seed(0)
    x, y, _ = wave_packets(batch, np.random.default_rng(0))
    x, y = am.tensor(x), am.tensor(y)
    model = SpacetimeNet()
    opt = am.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = am.nn.CrossEntropyLoss()

    def one(autocast):
        with am.autocast("cpu", enabled=autocast):
            loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = {False: [], True: []}
    for flag in (False, True):
        one(flag)
    for _ in range(rounds):  # alternate the two configurations
        for flag in (False, True):
            t = time.process_time()  # CPU time (all threads of this process): steadier on a busy machine
            one(flag)
            times[flag].append(time.process_time() - t)
    f32, amp = np.median(times[False]), np.median(times[True])
    print(f"Conv4d example step (batch {batch}, CPU time): float32 {f32 * 1e3:.0f} ms, autocast bfloat16 {amp * 1e3:.0f} ms, "
          f"ratio autocast/float32 {amp / f32:.2f}")
    return {"batch": batch, "float32_ms": f32 * 1e3, "autocast_bf16_ms": amp * 1e3, "ratio": amp / f32,
            "float32_spread_ms": [min(times[False]) * 1e3, max(times[False]) * 1e3],
            "autocast_spread_ms": [min(times[True]) * 1e3, max(times[True]) * 1e3]}


def checkpoint_figures(blocks: int) -> dict:
    import tracemalloc
    import avila_ml as am
    from avila_ml.utils.checkpoint import checkpoint
    am.manual_seed(0)
    net = [am.nn.Sequential(am.nn.Conv4d(4, 4, 3, padding=1), am.nn.BatchNorm4d(4), am.nn.GELU(),
                            am.nn.Conv4d(4, 4, 3, padding=1), am.nn.BatchNorm4d(4), am.nn.GELU())
           for _ in range(blocks)]
    x = am.randn(1, 4, 10, 10, 10, 10)

    def run(use):
        for b in net:
            b.zero_grad()
        h = x
        for b in net:
            h = checkpoint(b, h) if use else b(h)
        h.square().sum().backward()

    out = {"plain": {}, "checkpoint": {}}
    run(False), run(True)  # warm-up: thread pools, algorithm choice
    for use in (False, True):
        tracemalloc.start()
        run(use)
        out["checkpoint" if use else "plain"]["peak_MiB"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    times = {False: [], True: []}
    for _ in range(3):  # alternate; CPU time, tracemalloc off
        for use in (False, True):
            t = time.process_time()
            run(use)
            times[use].append(time.process_time() - t)
    for use in (False, True):
        out["checkpoint" if use else "plain"]["seconds"] = float(np.median(times[use]))
    r = out["plain"]["peak_MiB"] / out["checkpoint"]["peak_MiB"]
    print(f"{blocks} Conv4d blocks, input {tuple(x.shape)}: peak {out['plain']['peak_MiB']:.1f} MiB plain, "
          f"{out['checkpoint']['peak_MiB']:.1f} MiB checkpointed ({r:.1f}x less); time "
          f"{out['plain']['seconds']:.2f} s vs {out['checkpoint']['seconds']:.2f} s CPU per step")
    out["memory_ratio"] = r
    return out


def accuracy(epochs: int) -> dict:
    res = {}
    for flag in ("", "--autocast"):
        cmd = [sys.executable, os.path.join(ROOT, "examples", "conv4d_spacetime.py"), "--epochs", str(epochs)]
        if flag:
            cmd.append(flag)
        env = harness.child_env(MPLBACKEND="Agg")
        t = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        m = re.search(r"final test accuracy ([0-9.]+)", proc.stdout)
        key = "autocast_bf16" if flag else "float32"
        res[key] = {"accuracy": float(m.group(1)) if m else None, "seconds": time.time() - t, "rc": proc.returncode}
        print(f"conv4d_spacetime.py {flag or '(float32)'}: test accuracy {res[key]['accuracy']}, "
              f"{res[key]['seconds']:.0f} s")
    if res["float32"]["accuracy"] is not None and res["autocast_bf16"]["accuracy"] is not None:
        res["difference_points"] = 100 * (res["autocast_bf16"]["accuracy"] - res["float32"]["accuracy"])
        print(f"difference: {res['difference_points']:+.1f} points")
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # without an argument (as `make bench` runs it): the two figures that take about a minute
    p.add_argument("what", nargs="?", default="step+checkpoint",
                   choices=["overhead", "step", "checkpoint", "accuracy", "step+checkpoint", "all"])
    p.add_argument("--before", default=BASE_REVISION)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    info = machine()
    print(f"machine: {info}")
    results = {"machine": info}
    if args.what in ("overhead", "all"):
        results["overhead"] = overhead(args.before, args.rounds)
    if args.what in ("step", "step+checkpoint", "all"):
        results["step"] = step(args.rounds, args.batch)
    if args.what in ("checkpoint", "step+checkpoint", "all"):
        results["checkpoint"] = checkpoint_figures(args.blocks)
    if args.what in ("accuracy", "all"):
        results["accuracy"] = accuracy(args.epochs)
    results["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
