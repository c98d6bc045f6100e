"""Failure scenarios for tests/test_distributed.py: every rank must end with an error naming
the collective and the ranks, within seconds, never hang.

    mpiexec -n N python tests/mpi/failures.py never TIMEOUT   # the last rank never calls all_reduce
    mpiexec -n N python tests/mpi/failures.py kill TIMEOUT    # rank 1 is killed in the middle of a DDP step
    mpiexec -n N python tests/mpi/failures.py exit TIMEOUT    # rank 1 exits silently (status 0) mid-step
    mpiexec -n N python tests/mpi/failures.py stall TIMEOUT   # the last rank stalls inside an all_reduce
"""
import os
import signal
import sys
import time


def main():
    import numpy as np
    import avila_ml as am
    import avila_ml.distributed as dist
    mode, timeout = sys.argv[1], float(sys.argv[2])
    dist.init_process_group("mpi", timeout=timeout)
    r, n = dist.get_rank(), dist.get_world_size()
    print(f"rank {r} pid {os.getpid()} started", flush=True)
    if mode == "never":
        t = am.ones(3)
        dist.all_reduce(t)  # everyone arrives once
        if r == n - 1:
            time.sleep(120)  # stuck: never reaches the second all_reduce
        dist.all_reduce(t)
    elif mode == "stall":  # the last rank passes the check, then never joins the data transfer
        t = am.ones(1000)
        if r == n - 1:
            g = dist.distributed_c10d._get_default_group()
            g._agree("all_reduce", t.array, redop=dist.ReduceOp.SUM, label="all_reduce")
            time.sleep(120)
        dist.all_reduce(t)
    elif mode in ("kill", "exit"):
        nn = am.nn
        am.manual_seed(0)
        model = nn.DistributedDataParallel(nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2)),
                                           bucket_cap_mb=1e-3)
        opt = am.optim.SGD(model.parameters(), lr=0.1)
        for step in range(100):
            x = am.tensor(np.random.default_rng(step * n + r).standard_normal((4, 8)).astype(np.float32))
            loss = model(x).pow(2).mean()
            if step == 3 and r == 1:  # dies between forward and backward
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                os._exit(0)  # a silent death the launcher does not see as a failure
            loss.backward()
            opt.step()
            opt.zero_grad()
    print(f"rank {r}: reached the end (should not happen)", flush=True)


if __name__ == "__main__":
    main()
