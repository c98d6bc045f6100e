"""Optimizer steps on 1M float32 parameters (4 tensors of 250k): Avila ML vs torch.optim (CPU).

Each case times one ``optimizer.step()`` with fixed gradients, each library in its own process
at its defaults: ours (in place, one slice of each large parameter per core) against PyTorch's
default CPU implementation (``foreach=None``), and against ``foreach=True``. Target (issue 3):
no slower than PyTorch. GB/s counts the minimal memory traffic of a step (each parameter,
gradient and state array read once, each updated array written once), to be read against the
machine's copy bandwidth in the header.

    python benchmarks/bench_optim.py [--rounds N] [--threads N] [--quick]
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Case, is_torch, main  # noqa: E402

N_TENSORS, SIZE = 4, 250_000
MODEL_BYTES = N_TENSORS * SIZE * 4


def optimizer_step(cls, kwargs, foreach=None):
    def make(L):
        rng = np.random.default_rng(0)
        params = [L.tensor(rng.standard_normal(SIZE).astype(np.float32), requires_grad=True) for _ in range(N_TENSORS)]
        for p in params:
            p.grad = L.from_numpy(rng.standard_normal(SIZE).astype(np.float32))
        extra = {"foreach": foreach} if is_torch(L) and foreach is not None else {}
        return getattr(L.optim, cls)(params, **kwargs, **extra).step
    return make


def _gpt_shapes():
    """The 53 parameter shapes of bench_programs' small GPT (4 blocks, d 128, vocabulary 512,
    block 128): none over 65,536 elements."""
    d, blocks, vocab, block = 128, 4, 512, 128
    per_block = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return per_block * blocks + [(vocab, d), (block, d), (d,), (d,), (vocab, d)]


def gpt_adamw_step(L):
    """AdamW (lr 3e-4) on parameters shaped as the small GPT's, fixed gradients (issue 17: the
    mid-sized parameters dealt whole to the threads)."""
    rng = np.random.default_rng(0)
    params = [L.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in _gpt_shapes()]
    for p in params:
        p.grad = L.from_numpy(rng.standard_normal(p.shape).astype(np.float32))
    return L.optim.AdamW(params, lr=3e-4).step


CASES = []
# label, optimizer class, kwargs, arrays read + written per step (in units of one model)
for label, cls, kwargs, arrays in [
    ("Adam", "Adam", dict(lr=1e-3), 7),  # read p g m v, write p m v
    ("AdamW", "AdamW", dict(lr=1e-3, weight_decay=1e-2), 7),
    ("SGD momentum=0.9", "SGD", dict(lr=1e-2, momentum=0.9), 5),  # read p g b, write p b
    ("RMSprop", "RMSprop", dict(lr=1e-3), 5),  # read p g v, write p v
]:
    CASES.append(Case(f"{label} step, 1M params (torch default)", optimizer_step(cls, kwargs),
                      nbytes=arrays * MODEL_BYTES, target=1.0))
    CASES.append(Case(f"{label} step, 1M params (torch foreach=True)", optimizer_step(cls, kwargs, foreach=True),
                      nbytes=arrays * MODEL_BYTES, quick=False))

CASES.append(Case("AdamW step, the small GPT's 53 parameters (940,800 elements; torch default)", gpt_adamw_step,
                  nbytes=7 * 940_800 * 4))

if __name__ == "__main__":
    main("optim", CASES, __doc__)
