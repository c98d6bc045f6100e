"""DataLoader with large samples (64 MB each): workers vs ``num_workers=0`` vs PyTorch (CPU).

Issue 15 measured 64 MB samples through workers at ~10x the time of ``num_workers=0``
(pickled through pipes); batches now travel through shared memory. Each configuration runs
in its own process (so neither library's threads or page cache slows the other), rounds
alternate between configurations, and the median epoch time of the rounds is reported with
its spread. One epoch = ``N`` samples of 64 MB (float32, batch 1), each made by the dataset
with ``np.full`` and summed in the main process (touching every byte that arrives).

    .venv/bin/python benchmarks/bench_data_large.py [--rounds N]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import harness  # benchmarks/ is the script's directory

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
N, SAMPLE_BYTES = 12, 64 * 2**20

CHILD = r"""
import json, sys, time
import numpy as np

lib, workers, n, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

class Big:
    def __len__(self):
        return n
    def __getitem__(self, i):
        return np.full(nbytes // 4, i, np.float32)

if lib == "avila_ml":
    import avila_ml as am
    loader = am.data.DataLoader(Big(), batch_size=1, num_workers=workers)
    total = lambda b: float(b.array.sum(dtype=np.float64))
else:
    import torch.utils.data as tud
    kw = dict(multiprocessing_context="fork") if workers else {}
    loader = tud.DataLoader(Big(), batch_size=1, num_workers=workers, **kw)
    total = lambda b: float(b.numpy().sum(dtype=np.float64))
t0 = time.perf_counter()
s = sum(total(b) for b in loader)
dt = time.perf_counter() - t0
assert s == sum(i * (nbytes // 4) for i in range(n)), s
print(json.dumps({"s": dt}))
"""


def run(lib: str, workers: int) -> float:
    env = harness.child_env()
    out = subprocess.run([sys.executable, "-c", CHILD, lib, str(workers), str(N), str(SAMPLE_BYTES)],
                         env=env, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])["s"]


def main(rounds: int = 3) -> None:
    configs = [("avila_ml", 0), ("avila_ml", 2), ("torch", 0), ("torch", 2)]
    times = {c: [] for c in configs}
    for _ in range(rounds):
        for c in configs:
            times[c].append(run(*c))
    load = os.getloadavg()
    lines = [f"DataLoader, {N} samples x {SAMPLE_BYTES // 2**20} MB float32, batch 1 "
             f"({os.cpu_count()} CPUs, load average {load[0]:.2f} at the end, {rounds} rounds)",
             f"{'library':10s} {'workers':>7s} {'median s':>9s} {'min s':>7s} {'max s':>7s}"]
    for (lib, w), ts in times.items():
        lines.append(f"{lib:10s} {w:7d} {statistics.median(ts):9.2f} {min(ts):7.2f} {max(ts):7.2f}")
    text = "\n".join(lines)
    print(text)
    harness.save_text("data_large", text)


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration")
    main(p.parse_args().rounds)
