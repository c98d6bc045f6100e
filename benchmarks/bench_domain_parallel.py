"""Domain-parallel Conv4d scaling on CPU ranks of this machine (MPI through mpiexec).

One step = a Conv4d forward + backward (input, weight and bias gradients) of a float32 volume,
kernel 3^4, padding 1 with modes ("causal", "circular", "circular", "zeros"), split along t
through ``DomainParallel``; a halo exchange runs before the convolution and its adjoint in the
backward, and the weight gradient is all-reduced.

* **Weak scaling**: the same block per rank (default (1, 8, 32, 32, 32, 32), channels 8 -> 8)
  on 1, 2 and 4 ranks (the global volume grows with the ranks); efficiency = t(1) / t(P).
  Target: >= 80% at 2 ranks.
* **Strong scaling**: the same global volume split over 1, 2 and 4 ranks; efficiency =
  t(1) / (P t(P)).
* **Halo share**: the part of the step spent in halo exchanges (forward gather + backward
  scatter-add, timed inside the exchange; all-reduces of the weight gradient reported apart).
* **Baseline**: the plain ``Conv4d`` (no ``DomainParallel``) on one block, for the cost of the
  wrapper itself on one rank.

Every configuration runs in its own ``mpiexec`` launch with 1 BLAS thread per rank; 4 ranks on
a machine with fewer cores are *oversubscribed* and marked so (their efficiency then measures
the machine, not the method). The header records the load average before and after: on a
shared machine the figures are indicative only, and the file says so.

    python benchmarks/bench_domain_parallel.py           # full; writes benchmarks/results/
    python benchmarks/bench_domain_parallel.py --quick   # small block, 2 steps (smoke run)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import harness  # noqa: E402  (benchmarks/ is the script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("causal", "circular", "circular", "zeros")


def _mpiexec() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def _launch(n: int, *args) -> dict:
    env = harness.child_env(1)
    cmd = [_mpiexec(), "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def worker(global_shape, channels, steps, plain=False, overlap=False) -> None:
    """Run under mpiexec: time ``steps`` sharded Conv4d steps; rank 0 prints RESULT json."""
    import numpy as np
    from mpi4py import MPI
    import avila_ml as am
    import avila_ml.distributed as dist
    from avila_ml.distributed import halo, domain_ops

    dist.init_process_group("mpi")
    comm = MPI.COMM_WORLD
    n = comm.size
    spent = {"halo": 0.0, "allreduce": 0.0}

    def timed(fn, key):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
        return run

    # count the time inside the exchanges and the weight-gradient all-reduces
    start = halo.Exchange.start

    def timed_start(self, *a, **k):  # gather = start + finish; the conv's last exchange splits them
        t0 = time.perf_counter()
        out, finish = start(self, *a, **k)
        spent["halo"] += time.perf_counter() - t0
        return out, timed(finish, "halo")
    halo.Exchange.start = timed_start
    halo.Exchange.scatter_add = timed(halo.Exchange.scatter_add, "halo")
    domain_ops._ReduceReplicated.forward = timed(domain_ops._ReduceReplicated.forward, "allreduce")

    spec = dist.DomainSpec(mesh=(n, 1, 1, 1), dims=("t", "x", "y", "z"), overlap=overlap or None)
    am.manual_seed(0)
    conv = am.nn.Conv4d(channels, channels, 3, padding=1, padding_mode=MODES)
    dp = conv if plain else dist.DomainParallel(conv, spec)  # plain: the unsharded layer itself
    x = am.tensor(np.random.default_rng(comm.rank).standard_normal(
        tuple(sl.stop - sl.start for sl in spec.local_slices(global_shape))).astype(np.float32), requires_grad=True)

    def step():
        conv.zero_grad()
        x.grad = None
        y = dp(x)
        y.backward(am.ones_like(y))

    step()  # warm-up (plans, caches)
    times, halo_t, ar_t = [], [], []
    for _ in range(steps):
        comm.Barrier()
        spent["halo"] = spent["allreduce"] = 0.0
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        halo_t.append(spent["halo"])
        ar_t.append(spent["allreduce"])
    med = comm.allreduce(statistics.median(times), op=MPI.MAX)  # the slowest rank decides
    h = comm.allreduce(statistics.median(halo_t), op=MPI.MAX)
    a = comm.allreduce(statistics.median(ar_t), op=MPI.MAX)
    if comm.rank == 0:
        print("RESULT " + json.dumps({"step_s": med, "halo_s": h, "allreduce_s": a,
                                      "spread": (max(times) - min(times)) / statistics.median(times)}), flush=True)
    if not plain:
        dp.restore()
    dist.destroy_process_group()


def _load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small block, 2 steps, not saved")
    p.add_argument("--block", default="8,32,32,32,32", help="per-rank C,T,X,Y,Z of the weak-scaling block")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--ranks", default="1,2,4")
    p.add_argument("--worker", nargs="*")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--overlap", action="store_true", help="DomainSpec(overlap=True): interior conv during the exchange")
    args = p.parse_args()
    if args.worker is not None:
        shape = tuple(int(v) for v in args.worker[0].split(","))
        worker(shape, int(args.worker[1]), int(args.worker[2]), "plain" in args.worker[3:],
               "overlap" in args.worker[3:])
        return
    C, T, X, Y, Z = (int(v) for v in ("2,8,8,8,8" if args.quick else args.block).split(","))
    steps = 2 if args.quick else args.steps
    ranks = [int(r) for r in args.ranks.split(",")]
    cpus = os.cpu_count() or 1
    load0 = _load()
    meter = harness.ForeignLoad()  # other programs' CPU time (the ranks' own load is not "load")
    limits = harness.machine_limits()
    lines = [f"== Domain-parallel Conv4d scaling (CPU ranks over MPI, 1 BLAS thread per rank) =="]
    rows = {}
    plain = _launch(1, ",".join(map(str, (1, C, T, X, Y, Z))), str(C), str(steps), "plain")
    for kind in ("weak", "strong"):
        for n in ranks:
            t = T * n if kind == "weak" else T
            shape = (1, C, t, X, Y, Z)
            rows[kind, n] = _launch(n, ",".join(map(str, shape)), str(C), str(steps),
                                    *(["overlap"] if args.overlap else []))
            rows[kind, n]["shape"] = shape
    load1, foreign = _load(), meter.cores()
    header = harness.machine_header(limits, (load0, load1), 1, foreign=foreign)
    lines += header[:2] + header[4:]
    lines.append(f"step: Conv4d {C}->{C}, kernel 3^4, padding 1 {MODES}, forward + backward; split along t; "
                 f"median of {steps} steps (slowest rank); exchange overlapped with the interior: "
                 f"{'yes' if args.overlap else 'no (the default on MPI)'}")
    lines.append(f"unsharded baseline: plain Conv4d on (1, {C}, {T}, {X}, {Y}, {Z}), 1 rank, no DomainParallel: "
                 f"{plain['step_s']:.3f}s (its circular padding is built by copies too)")
    eff2 = None
    for kind in ("weak", "strong"):
        lines.append("")
        lines.append(f"{kind} scaling ({'block' if kind == 'weak' else 'global volume'} (1, {C}, {T}, {X}, {Y}, {Z})"
                     f"{' per rank' if kind == 'weak' else ''})")
        lines.append(f"{'ranks':>5s} {'global shape':>28s} {'step':>10s} {'efficiency':>10s} {'halo share':>10s} "
                     f"{'grad all-reduce':>15s} {'spread':>7s}")
        base = rows[kind, ranks[0]]["step_s"]
        for n in ranks:
            r = rows[kind, n]
            eff = base / r["step_s"] if kind == "weak" else base / (n * r["step_s"])
            if kind == "weak" and n == 2:
                eff2 = eff
            mark = "  (oversubscribed: more ranks than cores)" if n > cpus else ""
            lines.append(f"{n:5d} {str(r['shape']):>28s} {r['step_s']:9.3f}s {100 * eff:9.1f}% "
                         f"{100 * r['halo_s'] / r['step_s']:9.1f}% {100 * r['allreduce_s'] / r['step_s']:14.1f}% "
                         f"{100 * r['spread']:6.0f}%{mark}")
    loaded = harness.is_loaded((load0, load1), foreign)
    if eff2 is not None:
        verdict = "met" if eff2 >= 0.8 else "NOT met"
        lines.append("")
        lines.append(f"weak-scaling efficiency at 2 ranks: {100 * eff2:.1f}% (target >= 80%: {verdict}"
                     f"{'; LOADED MACHINE, indicative only' if loaded else ''})")
    text = "\n".join(lines)
    print(text, flush=True)
    if not args.quick and not args.no_save:
        harness.save_text("domain_parallel", text)  # a new file: nothing tracked is overwritten


if __name__ == "__main__":
    main()
