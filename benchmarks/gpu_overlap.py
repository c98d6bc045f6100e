"""GPU check for issue 11: host-to-device copies overlapped with compute, and float16 autocast.

    python benchmarks/gpu_overlap.py [--json out.json]

1. Overlap: ``steps`` iterations of "copy a pinned (batch, 1, 8, 32, 32, 32) float32 batch to the
   GPU, then run a Conv4d forward+backward on it". Timed three ways: pageable batches with
   blocking copies (``DataLoader(pin_memory=False)``), pinned batches with blocking copies, and
   pinned batches through :class:`avila_ml.data.DevicePrefetcher` (non-blocking copies on a side
   stream, the next batch in flight). With overlap the prefetcher's time approaches
   max(copy, compute) per step instead of their sum; the script prints the copy and compute
   times alone for comparison.
2. Mixed precision: the Conv4d example's training step in float32 vs ``autocast("cuda")``
   (float16 + GradScaler).

Needs a CUDA GPU (CuPy); written without one at hand (CPU CI covers the prefetcher's logic), so
its first run on a GPU is also its test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import avila_ml as am  # noqa: E402


class Volumes(am.data.Dataset):
    def __init__(self, n, shape):
        self.n, self.shape = n, shape
        self.data = np.random.default_rng(0).standard_normal((4,) + shape).astype(np.float32)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return am.tensor(self.data[i % 4])


def timed(fn):
    am.cuda.synchronize()
    t = time.perf_counter()
    fn()
    am.cuda.synchronize()
    return time.perf_counter() - t


def overlap(batch, steps):
    shape = (1, 8, 32, 32, 32)
    net = am.nn.Sequential(am.nn.Conv4d(1, 8, 3, padding=1), am.nn.ReLU(), am.nn.Conv4d(8, 8, 3, padding=1)).to("cuda")
    ds = Volumes(batch * steps, shape)

    def train_on(batches):
        for x in batches:
            net(x.to("cuda")).square().mean().backward()

    loaders = {
        "pageable, blocking": am.data.DataLoader(ds, batch_size=batch, num_workers=2),
        "pinned, blocking": am.data.DataLoader(ds, batch_size=batch, num_workers=2, pin_memory=True),
    }
    res = {}
    x_host = next(iter(loaders["pinned, blocking"]))
    res["copy only"] = timed(lambda: [x_host.to("cuda", non_blocking=True) for _ in range(steps)]) / steps
    x_dev = x_host.to("cuda")
    res["compute only"] = timed(lambda: train_on([x_dev] * steps)) / steps
    for name, loader in loaders.items():
        train_on(loader)  # warm-up (workers, kernels)
        res[name] = timed(lambda: train_on(loader)) / steps
    pf = am.data.DevicePrefetcher(loaders["pinned, blocking"], "cuda")
    train_on(pf)
    res["pinned, prefetched (non-blocking, side stream)"] = timed(lambda: train_on(pf)) / steps
    for k, v in res.items():
        print(f"  {k:48s} {v * 1e3:8.2f} ms/step")
    return {k: v * 1e3 for k, v in res.items()}


def autocast_step(batch, rounds):
    from conv4d_spacetime import SpacetimeNet, wave_packets
    am.manual_seed(0)
    x, y, _ = wave_packets(batch, np.random.default_rng(0))
    x, y = am.tensor(x).to("cuda"), am.tensor(y).to("cuda")
    model = SpacetimeNet().to("cuda")
    opt = am.optim.Adam(model.parameters(), lr=1e-3)
    scaler = am.amp.GradScaler("cuda")
    loss_fn = am.nn.CrossEntropyLoss()

    def one(flag):
        with am.autocast("cuda", enabled=flag):
            loss = loss_fn(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward() if flag else loss.backward()
        if flag:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    times = {False: [], True: []}
    for flag in (False, True):
        one(flag)
    for _ in range(rounds):
        for flag in (False, True):
            times[flag].append(timed(lambda: one(flag)))
    f32, f16 = np.median(times[False]), np.median(times[True])
    print(f"  Conv4d example step (batch {batch}): float32 {f32 * 1e3:.1f} ms, autocast float16 {f16 * 1e3:.1f} ms, "
          f"ratio {f16 / f32:.2f}")
    return {"float32_ms": f32 * 1e3, "autocast_fp16_ms": f16 * 1e3, "ratio": f16 / f32}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not am.cuda.is_available():
        print("gpu_overlap: no CUDA device", file=sys.stderr)
        sys.exit(2)
    allow_tf32 = getattr(getattr(getattr(am.backends, "cuda", None), "matmul", None), "allow_tf32", None)
    print(f"am.backends.cuda.matmul.allow_tf32 = {allow_tf32} (None: the setting object is not in this build)")
    print("host-to-device overlap:")
    res = {"overlap_ms": overlap(args.batch, args.steps)}
    print("mixed precision:")
    res["autocast"] = autocast_step(32, 5)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
