"""Optimizer steps on 1M float32 parameters (4 tensors of 250k): Avila ML vs torch.optim (CPU).

Each row times one ``optimizer.step()`` with fixed gradients, ours against PyTorch's default
CPU implementation (``foreach=None``, which on CPU tensors is the per-tensor loop) in one
process (``harness.compare``: interleaved, median of repeats), and against ``foreach=True``.
Both use every core by default (PyTorch: intra-op threads; ours: one slice of each large
parameter per core). A third row per optimizer runs both on one thread, which measures the
per-core efficiency and is robust to other load on the machine (the load average is printed:
on a busy machine PyTorch's spinning OpenMP threads slow down far more than ours).
Target (issue 3): no slower than PyTorch. GB/s counts the minimal memory traffic of a step
(each parameter, gradient and state array read once, each updated array written once), to be
read against the machine's copy bandwidth printed above the table.

    .venv/bin/python benchmarks/bench_optim.py
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

import avila_ml as am  # noqa: E402
from avila_ml.optim import _fused  # noqa: E402
from harness import compare, machine_limits, print_table, save_results  # noqa: E402

N_TENSORS, SIZE = 4, 250_000

# name, optimizer class name, kwargs, arrays read + written per step (in units of one model)
CASES = [
    ("Adam", "Adam", dict(lr=1e-3), 7),  # read p g m v, write p m v
    ("AdamW", "AdamW", dict(lr=1e-3, weight_decay=1e-2), 7),
    ("SGD momentum=0.9", "SGD", dict(lr=1e-2, momentum=0.9), 5),  # read p g b, write p b
    ("RMSprop", "RMSprop", dict(lr=1e-3), 5),  # read p g v, write p v
]


def make_params(seed: int = 0):
    """Our parameters and PyTorch's with identical values and gradients."""
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(SIZE).astype(np.float32) for _ in range(N_TENSORS)]
    grads = [rng.standard_normal(SIZE).astype(np.float32) for _ in range(N_TENSORS)]
    ours = [am.tensor(v, requires_grad=True) for v in values]
    for p, g in zip(ours, grads):
        p.grad = am.tensor(g)
    theirs = [torch.tensor(v, requires_grad=True) for v in values]
    for p, g in zip(theirs, grads):
        p.grad = torch.tensor(g)
    return ours, theirs


def main() -> None:
    limits = machine_limits()
    model_bytes = N_TENSORS * SIZE * 4
    rows = []
    for label, cls, kwargs, arrays in CASES:
        ours, theirs = make_params()
        opt = getattr(am.optim, cls)(ours, **kwargs)
        torch_default = getattr(torch.optim, cls)(theirs, **kwargs)
        copies = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
        for p, q in zip(copies, theirs):
            p.grad = q.grad.clone()
        torch_foreach = getattr(torch.optim, cls)(copies, foreach=True, **kwargs)
        nbytes = arrays * model_bytes
        rows.append(compare(f"{label} step, 1M params (torch default)", opt.step,
                            torch_default.step, nbytes=nbytes, repeats=9))
        rows.append(compare(f"{label} step, 1M params (torch foreach=True)", opt.step,
                            torch_foreach.step, nbytes=nbytes, repeats=9))
        threads, min_size = torch.get_num_threads(), _fused.PARALLEL_MIN_SIZE
        torch.set_num_threads(1)
        _fused.PARALLEL_MIN_SIZE = 1 << 62
        try:
            rows.append(compare(f"{label} step, 1M params (both 1 thread)", opt.step,
                                torch_default.step, nbytes=nbytes, repeats=9))
        finally:
            torch.set_num_threads(threads)
            _fused.PARALLEL_MIN_SIZE = min_size
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = print_table(rows, limits, title=f"Avila ML vs PyTorch optimizers (CPU; torch threads "
                                           f"{torch.get_num_threads()}; load average {load})")
    path = save_results(text, "optim_cpu")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
