"""DataLoader throughput: Avila ML vs torch.utils.data.DataLoader on the same dataset (CPU),
each library in its own process.

The dataset is in memory: 20,000 float32 samples of shape (3, 32, 32) (CIFAR-sized) with an
int label, and a small per-item transform (per-channel normalisation and a random horizontal
flip drawn from NumPy's global generator, the augmentation that worker seeding must keep
distinct). The same dataset object feeds both loaders, so the rows compare the loaders
alone: sampling, fetching, default collation, and with workers the process pool, the
queues and the transfer of each batch to the main process. One timed call is one full epoch
at batch 64, shuffled; samples/s is 20,000 / epoch time. With workers, non-persistent loaders
include starting the worker processes every epoch (as a training loop without
``persistent_workers`` pays); the persistent rows do not.

    python benchmarks/bench_data.py [--rounds N] [--quick]
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Case, is_torch, main  # noqa: E402

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


def epoch_case(workers, persistent):
    def make(L):
        L.manual_seed(0)
        kw = dict(batch_size=BATCH, shuffle=True, num_workers=workers)
        if persistent:
            kw["persistent_workers"] = True
        if is_torch(L) and workers:
            kw["multiprocessing_context"] = "fork"
        loader = L.utils.data.DataLoader(CifarLike(), **kw)  # avila_ml.utils.data is avila_ml.data

        def epoch():
            n = 0
            for _, y in loader:
                n += len(y)
            assert n == N, n
        return epoch
    return make


CASES = [Case(f"DataLoader epoch, {N} x (3,32,32) f32, batch {BATCH}, workers={w}" + (" persistent" if p else ""),
              epoch_case(w, p), nbytes=N * 3 * 32 * 32 * 4, min_time=0.0, quick=w == 0)
         for w, p in ((0, False), (2, False), (2, True))]

if __name__ == "__main__":
    main("data", CASES, __doc__)
