"""Distributed benchmarks on CPU ranks of this machine (MPI through mpiexec).

1. Collective overhead: our ``all_reduce`` (checked, in place, on Tensors) against raw mpi4py
   ``Allreduce(IN_PLACE)`` on the same float32 buffers, 1 KB .. 100 MB, 2 ranks, interleaved
   rounds, median. Target: overhead <= 5% at >= 1 MB.
2. DDP weak scaling: the same MLP train step with the same per-rank batch on 1 and on 2 ranks;
   efficiency = t(1 rank) / t(2 ranks) (1.0 = perfect). Ours with overlap (1 MiB first bucket,
   25 MiB buckets launched from gradient hooks) and without (one bucket launched after the last
   gradient), and ``torch.nn.parallel.DistributedDataParallel`` over gloo on the same model as
   the anchor. Target: ours >= torch's. Every configuration runs in its own processes, 1 BLAS
   thread per rank (2 ranks on 2 cores would otherwise oversubscribe).

    python benchmarks/bench_distributed.py             # all of it; writes benchmarks/results/
    python benchmarks/bench_distributed.py --quick     # small sizes, few steps (smoke run)

The results file name carries the CPU model and the date; the header records the load average
before and after, since a shared machine's figures say little without it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import harness  # noqa: E402  (benchmarks/ is the script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = [1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000]
MODEL = (1024, 2048, 2048, 1024, 10)  # MLP widths: 8.4 M parameters, 34 MB of float32 gradients


cpu_model = harness.cpu_model


def _mpiexec() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def _launch(n: int, *args) -> dict:
    # one thread per rank for both libraries: n ranks share the machine's cores
    env = harness.child_env(1, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    cmd = [_mpiexec(), "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


# -- workers (run under mpiexec) ----------------------------------------------------------------
def worker_allreduce(quick: bool) -> None:
    import numpy as np
    from mpi4py import MPI
    import avila_ml as am
    import avila_ml.distributed as dist
    dist.init_process_group("mpi")
    comm = MPI.COMM_WORLD
    rows = []
    for nbytes in SIZES[:4] if quick else SIZES:
        n = nbytes // 4
        raw = np.ones(n, dtype=np.float32)
        t = am.ones(n)
        reps = max(5, min(200, int(3e8 / max(nbytes, 1) ** 0.5 / 100)))
        if quick:
            reps = 5
        ours, theirs = [], []
        for _ in range(2):  # warm-up
            dist.all_reduce(t)
            comm.Allreduce(MPI.IN_PLACE, raw)
        calls = [(lambda: dist.all_reduce(t), t.array, ours),
                 (lambda: comm.Allreduce(MPI.IN_PLACE, raw), raw, theirs)]
        for i in range(reps):  # interleaved rounds, the order flipped every round
            for call, buf, times in (calls if i % 2 == 0 else calls[::-1]):
                buf[...] = 1  # finite values, and each buffer as warm in cache as the other's
                comm.Barrier()
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
        # the slowest rank decides a collective's time
        o = comm.allreduce(statistics.median(ours), op=MPI.MAX)
        r = comm.allreduce(statistics.median(theirs), op=MPI.MAX)
        spread = comm.allreduce(statistics.pstdev(ours) / max(statistics.median(ours), 1e-12), op=MPI.MAX)
        rows.append({"bytes": nbytes, "ours_s": o, "raw_s": r, "reps": reps, "ours_rel_spread": spread})
    if comm.rank == 0:
        print("RESULT " + json.dumps(rows), flush=True)
    dist.destroy_process_group()


def worker_ddp(lib: str, overlap: bool, steps: int, batch: int) -> None:
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, n = comm.rank, comm.size
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((batch, MODEL[0])).astype(np.float32)
    y = rng.integers(0, MODEL[-1], batch)
    if lib == "torch":
        import torch
        import torch.distributed as tdist
        torch.set_num_threads(1)
        tdist.init_process_group("gloo", rank=rank, world_size=n)
        layers = []
        for a, b in zip(MODEL[:-1], MODEL[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(*layers[:-1]))
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
    else:
        import avila_ml as am
        import avila_ml.distributed as dist
        dist.init_process_group("mpi")
        layers = []
        for a, b in zip(MODEL[:-1], MODEL[1:]):
            layers += [am.nn.Linear(a, b), am.nn.ReLU()]
        # no overlap: one bucket bigger than all gradients, launched when the last one arrives
        model = am.nn.DistributedDataParallel(am.nn.Sequential(*layers[:-1]),
                                              bucket_cap_mb=25 if overlap else 1e6)
        if not overlap:
            model.reducer.first_cap = model.reducer.cap
            model.reducer._build(list(range(len(model.reducer.params)))[::-1])
            model.reducer.rebuilt = True
        opt = am.optim.SGD(model.parameters(), lr=1e-3)
        xt, yt = am.tensor(x), am.tensor(y)

        def step():
            opt.zero_grad()
            am.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        comm.Barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = comm.allreduce(statistics.median(times), op=MPI.MAX)
    if rank == 0:
        print("RESULT " + json.dumps({"step_s": med, "spread": statistics.pstdev(times) / statistics.median(times)}),
              flush=True)


# -- driver ---------------------------------------------------------------------------------------
def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def _fmt(s: float) -> str:
    return f"{s * 1e6:9.1f} us" if s < 1e-3 else f"{s * 1e3:9.2f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--worker", nargs="*")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--rounds", type=int, default=None,
                   help="accepted for `make bench`; the all_reduce part sizes its own interleaved rounds")
    p.add_argument("--only", choices=["allreduce", "ddp"], default=None, help="run one part (not saved)")
    args = p.parse_args()
    if args.worker is not None:
        kind = args.worker[0]
        if kind == "allreduce":
            worker_allreduce(args.worker[1] == "1")
        else:
            worker_ddp(args.worker[1], args.worker[2] == "1", int(args.worker[3]), int(args.worker[4]))
        return

    steps, batch = (3, 16) if args.quick else (15, 64)
    load_before = _load()
    lines = [f"== Distributed benchmarks (CPU ranks over MPI; {cpu_model()}, {os.cpu_count()} cpus; "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC) ==",
             f"load average before: {load_before} (1/5/15 min); 1 BLAS thread per rank"]
    rows = _launch(2, "allreduce", "1" if args.quick else "0") if args.only != "ddp" else []
    lines.append("")
    lines.append("1. all_reduce (float32, SUM, 2 ranks): ours vs raw mpi4py Allreduce(IN_PLACE), median of interleaved rounds")
    lines.append(f"{'size':>10s} {'ours':>12s} {'raw mpi4py':>12s} {'overhead':>9s} {'reps':>5s}")
    worst_big = 0.0
    for r in rows:
        over = r["ours_s"] / r["raw_s"] - 1
        if r["bytes"] >= 1_000_000:
            worst_big = max(worst_big, over)
        lines.append(f"{r['bytes']:>10,d} {_fmt(r['ours_s'])} {_fmt(r['raw_s'])} {100 * over:8.1f}% {r['reps']:5d}")
    lines.append(f"largest overhead at >= 1 MB: {100 * worst_big:.1f}% (target <= 5%: "
                 f"{'met' if worst_big <= 0.05 else 'NOT met'})")

    if args.only == "allreduce":
        print("\n".join(lines), flush=True)
        return
    lines.append("")
    lines.append(f"2. DDP weak scaling: MLP {'-'.join(map(str, MODEL))} (8.4 M parameters), batch {batch} per rank, "
                 f"SGD step; median of {steps} steps")
    lines.append(f"{'configuration':44s} {'1 rank':>12s} {'2 ranks':>12s} {'efficiency':>10s}")
    eff = {}
    for name, lib, overlap in (("avila_ml DDP, overlapped buckets", "avila", 1),
                               ("avila_ml DDP, no overlap (one bucket)", "avila", 0),
                               ("torch DDP (gloo), default buckets", "torch", 1)):
        one = _launch(1, "ddp", lib, str(overlap), str(steps), str(batch))["step_s"]
        two = _launch(2, "ddp", lib, str(overlap), str(steps), str(batch))["step_s"]
        eff[name] = one / two
        lines.append(f"{name:44s} {_fmt(one)} {_fmt(two)} {one / two:10.2f}")
    ours, torch_eff = eff["avila_ml DDP, overlapped buckets"], eff["torch DDP (gloo), default buckets"]
    lines.append(f"efficiency ours {ours:.2f} vs torch {torch_eff:.2f} (target ours >= torch: "
                 f"{'met' if ours >= torch_eff else 'NOT met'})")
    lines.append(f"load average after: {_load()}")
    text = "\n".join(lines)
    print(text, flush=True)
    if not args.no_save and not args.quick and args.only is None:
        harness.save_text("distributed", text)  # a new file: nothing tracked is overwritten


if __name__ == "__main__":
    main()
