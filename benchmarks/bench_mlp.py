"""MLP 784-256-256-10 (ReLU) training step at batch 128, float32: Avila ML vs its PyTorch twin.

One step = forward, cross-entropy, backward, SGD update (``optim.SGD``, momentum 0.9), run
side by side with the same weights in one process (``harness.compare``: interleaved, median of
repeats). Target (issue 3): within 1.5x of PyTorch's time. The parts are timed too, so a
regression shows where it comes from: forward only (no grad), the cross-entropy forward +
backward on the (128, 10) logits, and batch/layer norm forward + backward.

    .venv/bin/python benchmarks/bench_mlp.py [--threads N]

``--threads N`` pins both sides to N threads (PyTorch's intra-op pool and NumPy's BLAS), for
a like-for-like run on a shared machine; by default each library uses its own default.
"""
from __future__ import annotations

import argparse
import os
import sys

_args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_args.add_argument("--threads", type=int, default=None, help="threads for PyTorch and NumPy's BLAS")
ARGS = _args.parse_args()
if ARGS.threads:  # must precede the NumPy import, which starts the BLAS thread pool
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import os  # noqa: E402
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # PyTorch's spinning OpenMP threads starve the other library on 2 cores
import torch  # noqa: E402

import avila_ml as am  # noqa: E402
from harness import compare, machine_limits, print_table, save_results  # noqa: E402

BATCH, SIZES = 128, (784, 256, 256, 10)


def build_models(seed: int = 0):
    """Our MLP and PyTorch's with identical float32 weights."""
    ours = am.nn.Sequential(am.nn.Linear(SIZES[0], SIZES[1]), am.nn.ReLU(),
                            am.nn.Linear(SIZES[1], SIZES[2]), am.nn.ReLU(),
                            am.nn.Linear(SIZES[2], SIZES[3]))
    theirs = torch.nn.Sequential(torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.ReLU(),
                                 torch.nn.Linear(SIZES[1], SIZES[2]), torch.nn.ReLU(),
                                 torch.nn.Linear(SIZES[2], SIZES[3]))
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def step_flops() -> float:
    """Matmul FLOPs of one step: forward, weight gradients, and input gradients of layers 2-3
    (the input batch needs no gradient)."""
    fwd = sum(2 * BATCH * a * b for a, b in zip(SIZES[:-1], SIZES[1:]))
    dx = sum(2 * BATCH * a * b for a, b in zip(SIZES[1:-1], SIZES[2:]))
    return 2 * fwd + dx


def main() -> None:
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], BATCH)
    ours, theirs = build_models()
    ax, ay = am.tensor(x), am.tensor(y)
    tx, ty = torch.tensor(x), torch.tensor(y)
    opt_a = am.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    loss_a, loss_t = am.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()

    def step_ours():
        opt_a.zero_grad()
        loss_a(ours(ax), ay).backward()
        opt_a.step()

    def step_theirs():
        opt_t.zero_grad()
        loss_t(theirs(tx), ty).backward()
        opt_t.step()

    # the twins agree before timing: same loss on the first step
    la, lt = loss_a(ours(ax), ay).item(), loss_t(theirs(tx), ty).item()
    assert abs(la - lt) <= 1e-5 * max(1.0, abs(lt)), f"MLP twins disagree: {la} vs {lt}"

    def fwd_ours():
        with am.no_grad():
            ours(ax)

    def fwd_theirs():
        with torch.no_grad():
            theirs(tx)

    logits = rng.standard_normal((BATCH, SIZES[-1])).astype(np.float32)
    al, tl = am.tensor(logits, requires_grad=True), torch.tensor(logits, requires_grad=True)

    def ce_ours():
        am.nn.functional.cross_entropy(al, ay).backward()

    def ce_theirs():
        torch.nn.functional.cross_entropy(tl, ty).backward()

    rows = [
        compare(f"MLP {'-'.join(map(str, SIZES))} train step, batch {BATCH}", step_ours, step_theirs,
                flops=step_flops(), repeats=9),
        compare(f"  forward only (no_grad), batch {BATCH}", fwd_ours, fwd_theirs,
                flops=sum(2 * BATCH * a * b for a, b in zip(SIZES[:-1], SIZES[1:]))),
        compare(f"  cross_entropy fwd+bwd ({BATCH}, {SIZES[-1]})", ce_ours, ce_theirs),
    ]
    for name, shape, fn_a, fn_t in [
        ("batch_norm fwd+bwd (32, 16, 32, 32)", (32, 16, 32, 32),
         lambda x_, w_, b_: am.nn.functional.batch_norm(x_, None, None, w_, b_, True),
         lambda x_, w_, b_: torch.nn.functional.batch_norm(x_, None, None, w_, b_, True)),
        ("layer_norm fwd+bwd (256, 512)", (256, 512),
         lambda x_, w_, b_: am.nn.functional.layer_norm(x_, (512,), w_, b_),
         lambda x_, w_, b_: torch.nn.functional.layer_norm(x_, (512,), w_, b_)),
    ]:
        c = shape[1] if "batch" in name else shape[-1]
        xn = rng.standard_normal(shape).astype(np.float32)
        gn = rng.standard_normal(shape).astype(np.float32)
        a_in = [am.tensor(xn, requires_grad=True), am.ones(c, requires_grad=True), am.zeros(c, requires_grad=True)]
        t_in = [torch.tensor(xn, requires_grad=True), torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)]
        ag, tg = am.tensor(gn), torch.tensor(gn)

        def norm_ours(a_in=a_in, fn=fn_a, g=ag):
            for t in a_in:
                t.grad = None
            fn(*a_in).backward(g)

        def norm_theirs(t_in=t_in, fn=fn_t, g=tg):
            for t in t_in:
                t.grad = None
            fn(*t_in).backward(g)

        rows.append(compare(f"  {name}", norm_ours, norm_theirs, nbytes=xn.nbytes * 5))
    # a busy machine (load above the core count) makes multi-threaded timings meaningless:
    # say so in the table, and compare with --threads 1 there
    title = (f"Avila ML vs PyTorch (CPU; torch threads={torch.get_num_threads()}, "
             f"BLAS threads={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}; "
             f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)")
    text = print_table(rows, machine_limits(), title=title)
    ratio = rows[0]["ratio"]
    verdict = f"MLP train step ratio {ratio:.2f}x (target <= 1.5x): {'met' if ratio <= 1.5 else 'NOT met'}"
    print(verdict)
    name = "mlp_cpu" if not ARGS.threads else f"mlp_cpu_{ARGS.threads}thread"
    print("saved", save_results(text + "\n" + verdict, name))


if __name__ == "__main__":
    main()
