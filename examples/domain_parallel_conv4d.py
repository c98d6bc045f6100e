"""One 4-D volume split over ranks: a Conv4d denoiser of a wave field on a torus, trained sharded.

The field is a sum of plane waves u(t, x, y, z) = sum_j a_j sin(k_j . r - w_j t + phi_j) on the
periodic box [0, 2 pi)^3 (integer wave vectors, so x, y, z wrap exactly) sampled at T time steps.
The network sees a noisy field and predicts the clean one. Its convolutions are periodic in
x, y, z (``padding_mode="circular"``: the first and last rank along x are neighbours) and causal in
t (each output sees only past and present time steps, so only past halos travel).

The whole volume's training step does not fit the per-rank memory budget (``--budget-mib``);
``DomainParallel`` splits x over the ranks, and the same model code trains on the shards. The
script reports the per-rank peak memory it measured (Python's tracemalloc: NumPy allocations)
against the budget.

    mpiexec -n 2 python examples/domain_parallel_conv4d.py            # ~1 min on 2 cores
    mpiexec -n 2 python examples/domain_parallel_conv4d.py --quick    # smoke run (a few seconds)
    python examples/domain_parallel_conv4d.py --quick                  # one rank: the whole volume
"""
import argparse
import math
import time
import tracemalloc

import numpy as np

import avila_ml as am
import avila_ml.distributed as dist
import avila_ml.nn as nn

MODES = ("causal", "circular", "circular", "circular")  # t causal; x, y, z periodic


def wave_field(shape, rng, waves=4):
    """Plane waves on the 3-torus sampled at ``shape = (T, X, Y, Z)`` points (float32)."""
    T, X, Y, Z = shape
    t = np.arange(T)[:, None, None, None] * 0.2
    x = np.arange(X)[None, :, None, None] * (2 * np.pi / X)
    y = np.arange(Y)[None, None, :, None] * (2 * np.pi / Y)
    z = np.arange(Z)[None, None, None, :] * (2 * np.pi / Z)
    u = np.zeros(shape)
    for _ in range(waves):
        k = rng.integers(-2, 3, 3)
        w = math.sqrt(float((k * k).sum())) + 0.5          # a dispersion relation
        u += rng.uniform(0.5, 1.0) * np.sin(k[0] * x + k[1] * y + k[2] * z - w * t + rng.uniform(0, 2 * np.pi))
    return u.astype(np.float32)


def model(width):
    return nn.Sequential(
        nn.Conv4d(1, width, 3, padding=1, padding_mode=MODES),
        nn.GroupNorm(2, width),
        nn.GELU(),
        nn.Conv4d(width, width, 3, padding=1, padding_mode=MODES),
        nn.GELU(),
        nn.Conv4d(width, 1, 3, padding=1, padding_mode=MODES),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny volume, 3 steps (smoke run)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--budget-mib", type=float, default=None,
                   help="per-rank memory budget (default: 3/4 of the whole volume's measured step)")
    args = p.parse_args()
    dist.init_process_group()
    rank, n = dist.get_rank(), dist.get_world_size()
    shape = (4, 16, 12, 12) if args.quick else (8, 16, 16, 16)
    width = 4 if args.quick else 8
    steps = 3 if args.quick else args.steps
    spec = dist.DomainSpec(mesh=(1, n, 1, 1), dims=("t", "x", "y", "z"))
    am.manual_seed(0)
    net = model(width)
    rng = np.random.default_rng(1)

    # the whole volume's training step, measured once (before the model is wrapped); the default
    # per-rank budget is 3/4 of it, so the whole volume does not fit one rank
    whole = am.tensor(wave_field(shape, np.random.default_rng(0))[None, None])
    for traced in (False, True):  # the first step fills one-time caches: measure the second
        if traced:
            tracemalloc.start()
        nn.MSELoss()(net(whole), whole).backward()
        net.zero_grad()
    whole_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    budget = args.budget_mib if args.budget_mib is not None else 0.75 * whole_mib

    dp = dist.DomainParallel(net, spec)
    crit = dp.criterion(nn.MSELoss())
    opt = am.optim.Adam(dp.parameters(), lr=3e-3)
    peak = 0
    t0 = time.time()
    for step in range(steps):
        clean = wave_field(shape, rng)[None, None]                  # (1, 1, T, X, Y, Z), every rank
        noisy = clean + 0.3 * rng.standard_normal(clean.shape).astype(np.float32)
        # each rank keeps only its slab (a loader would read just these slices)
        x = am.tensor(noisy[spec.local_slices(noisy.shape)])
        y = am.tensor(clean[spec.local_slices(clean.shape)])
        opt.zero_grad()
        tracemalloc.start()  # forward + backward, as measured for the whole volume
        loss = crit(dp(x), y)
        loss.backward()
        if step > 0 or steps == 1:  # step 0 also fills the halo plans' cache
            peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        opt.step()
        if rank == 0 and (step % max(1, steps // 5) == 0 or step == steps - 1):
            print(f"step {step:3d}  loss {loss.item():.4f}", flush=True)
    worst = am.tensor([peak / 2**20], dtype=am.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # the largest rank's peak decides
    peak_mib = float(worst.item())
    if rank == 0:
        print(f"volume {shape} float32 on {n} rank(s), x split {spec.mesh[1]} ways, {time.time() - t0:.1f} s")
        print(f"per-rank peak memory {peak_mib:.2f} MiB; budget {budget:.2f} MiB; the whole volume's step "
              f"{whole_mib:.2f} MiB: {'fits' if peak_mib <= budget else 'does NOT fit'} the budget"
              + ("" if n > 1 else " (run with mpiexec -n 2 to split it)"))
    dp.restore()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
