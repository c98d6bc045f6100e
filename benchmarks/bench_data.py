"""DataLoader throughput: Avila ML vs torch.utils.data.DataLoader on the same dataset (CPU).

The dataset is in memory: 20,000 float32 samples of shape (3, 32, 32) (CIFAR-sized) with an
int label, and a small per-item transform (per-channel normalisation and a random horizontal
flip drawn from NumPy's global generator, the augmentation that worker seeding must keep
distinct). The same dataset object feeds both loaders, so the rows compare the loaders
alone: sampling, fetching, default collation, and with workers the process pool, the
queues and the transfer of each batch to the main process. One timed call is one full epoch
at batch 64, shuffled; samples/s is 20,000 / epoch time. With workers, non-persistent loaders
include starting the worker processes every epoch (as a training loop without
``persistent_workers`` pays); the persistent rows do not.

    .venv/bin/python benchmarks/bench_data.py
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import os  # noqa: E402
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # PyTorch's spinning OpenMP threads starve the other library on 2 cores
import torch  # noqa: E402
import torch.utils.data as tud  # noqa: E402

import avila_ml as am  # noqa: E402
from harness import compare, machine_limits, print_table, save_results  # noqa: E402

N, SHAPE, BATCH = 20_000, (3, 32, 32), 64


class CifarLike:
    """In-memory float32 images with labels and a light augmentation (both loaders use it)."""

    def __init__(self, n: int = N, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = rng.random((n, *SHAPE), dtype=np.float32)
        self.labels = rng.integers(0, 10, n)
        self.mean = self.images.mean(axis=(0, 2, 3)).reshape(3, 1, 1)
        self.std = self.images.std(axis=(0, 2, 3)).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = (self.images[i] - self.mean) / self.std
        if np.random.rand() < 0.5:
            x = x[:, :, ::-1]
        return np.ascontiguousarray(x, dtype=np.float32), int(self.labels[i])


def epoch(loader) -> int:
    n = 0
    for x, y in loader:
        n += len(y)
    assert n == N
    return n


def main() -> None:
    limits = machine_limits()
    ds = CifarLike()
    am.manual_seed(0)
    torch.manual_seed(0)
    rows = []
    for workers, persistent in ((0, False), (2, False), (2, True)):
        kw = dict(batch_size=BATCH, shuffle=True, num_workers=workers)
        if persistent:
            kw["persistent_workers"] = True
        ours = am.data.DataLoader(ds, **kw)
        theirs = tud.DataLoader(ds, multiprocessing_context="fork" if workers else None, **kw)
        label = f"DataLoader epoch, {N} x (3,32,32) f32, batch {BATCH}, workers={workers}" + (
            " persistent" if persistent else "")
        row = compare(label, lambda: epoch(ours), lambda: epoch(theirs), repeats=3, warmup=1)
        row["note"] = f"samples/s: {N / row['ours_s']:,.0f} / {N / row['torch_s']:,.0f}"
        rows.append(row)
        del ours, theirs
    text = print_table(rows, limits, title="Avila ML vs PyTorch: DataLoader throughput (CPU)")
    print("saved", save_results(text, "data_cpu"))


if __name__ == "__main__":
    main()
