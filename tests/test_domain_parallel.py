"""Domain parallelism (one volume split over ranks): real MPI ranks through `mpiexec -n 2` and
`-n 4` (oversubscribed on small machines), plus the single-process parts (halo plans, spec
errors). Each launch runs many cases (tests/mpi/domain_checks.py) to keep start-up cost low.
"""
import os

import numpy as np
import pytest

import avila_ml as am
import avila_ml.distributed as dist
from test_distributed import MPI_DIR, mpirun, needs_mpi

CHECKS = os.path.join(MPI_DIR, "domain_checks.py")


@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_sharded_ops_training_and_memory_on_n_ranks(n):
    """Sharded conv1d-4d (split t, x, y, z, 2x2 meshes, every padding mode combination, stride,
    dilation, even kernels, groups, uneven shards), transposed conv, pooling, interpolation,
    norms, losses: outputs and input/weight gradients equal the whole-volume ops in float64;
    a Conv4d net trained 5 steps sharded equals 1-rank training; per-rank peak memory."""
    rc, out, _ = mpirun(n, CHECKS, "all", timeout=400)
    assert rc == 0, out[-6000:]
    for r in range(n):
        for part in ("conv OK", "ops OK", "training OK", "memory OK"):
            assert f"rank {r}: {part}" in out, out[-6000:]
    print(out)


def test_halo_plan_every_mode_on_one_axis():
    # 10 positions on 3 ranks (4, 3, 3); every rank needs a reach of 2 each side
    starts = (0, 4, 7, 10)
    need = ((-2, 6), (2, 9), (5, 12))
    want = {  # global source of each needed position (-1: fill)
        "zeros": [-1, -1, 0, 1, 2, 3, 4, 5],
        "circular": [8, 9, 0, 1, 2, 3, 4, 5],
        "reflect": [2, 1, 0, 1, 2, 3, 4, 5],
        "replicate": [0, 0, 0, 1, 2, 3, 4, 5],
    }
    for mode, src in want.items():
        plan = dist.halo_plan(starts, need, mode, 0)
        got = np.full(plan.out_len, -1)
        got[plan.own[0]] = plan.own[1] + starts[0]
        for p, dest in plan.recv.items():
            # what position p sends to 0, in the order 0 places it
            got[dest] = dist.halo_plan(starts, need, mode, p).send[0] + starts[p]
        assert got.tolist() == src, (mode, got)
    # the last rank's right halo wraps to rank 0 only in circular mode
    assert 0 in dist.halo_plan(starts, need, "circular", 2).recv
    assert 0 not in dist.halo_plan(starts, need, "zeros", 2).recv


def test_halo_larger_than_a_shard_names_axis_size_and_reach():
    with pytest.raises(ValueError, match=r"conv: axis 'x'.*shard of size 2.*halo of 3"):
        dist.halo_plan((0, 2, 6), ((-3, 5), (-1, 9)), "zeros", 0, "conv: axis 'x'")


def test_spec_errors_and_slices():
    dist.init_process_group()
    try:
        with pytest.raises(ValueError, match="mesh .* has 2 ranks but the process group has 1"):
            dist.DomainSpec(mesh=(2, 1), dims=("t", "x"))
        with pytest.raises(ValueError, match="dims must name each"):
            dist.DomainSpec(mesh=(1, 1), dims=("t", "t"))
        spec = dist.DomainSpec(mesh=(1,), dims=("t",))
        with pytest.raises(ValueError, match=r"expected a tensor \(N, C, t\) with 3 dims"):
            spec.scatter(am.zeros(2, 3))
        assert spec.local_slices((1, 1, 17)) == (slice(0, 1), slice(0, 1), slice(0, 17))
    finally:
        dist.destroy_process_group()


def test_split_sizes_uneven():
    from avila_ml.distributed.domain import split_sizes
    assert split_sizes(17, 2) == [9, 8] and split_sizes(10, 4) == [3, 3, 2, 2]


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "replicate"])
def test_halo_exchange_and_its_adjoint_pass_gradcheck_and_gradgradcheck(mode):
    """On one rank the exchange is a pure index map (borders from own data): its backward and
    double backward against finite differences; the scatter-add is its adjoint (<Gx, y> = <x, G^T y>)."""
    dist.init_process_group()
    try:
        g = dist.distributed_c10d._get_default_group()
        ex = dist.Exchange(dist.halo_plan((0, 5), ((-2, 8),), mode, 0), 1, [0], g, fill=0.5)
        rng = np.random.default_rng(0)
        x = am.tensor(rng.standard_normal((2, 5, 3)), requires_grad=True)
        assert am.autograd.gradcheck(lambda t: dist.HaloGather.apply(t, ex), (x,))
        assert am.autograd.gradgradcheck(lambda t: dist.HaloGather.apply(t, ex) ** 2, (x,))
        y = am.tensor(rng.standard_normal((2, 10, 3)), requires_grad=True)
        assert am.autograd.gradgradcheck(lambda t: dist.HaloScatterAdd.apply(t, ex) ** 2, (y,))
        gx = ex.gather(x.detach().numpy(), fill=0.0)
        assert np.isclose((gx * y.detach().numpy()).sum(), (x.detach().numpy() * ex.scatter_add(y.detach().numpy())).sum())
        want = am.nn.functional.pad(x.detach().unsqueeze(0), (0, 0, 2, 3), mode="constant" if mode == "zeros" else mode,
                                    value=0.5).squeeze(0)
        assert np.allclose(ex.gather(x.detach().numpy()), want.numpy())
    finally:
        dist.destroy_process_group()
