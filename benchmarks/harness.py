"""Avila ML vs PyTorch, each library timed in its own process at its defaults.

Why separate processes: in one process the two libraries share cores and thread pools, and
PyTorch's OpenMP threads spin-wait after every op, slowing whatever runs next. The old remedy,
``OMP_WAIT_POLICY=PASSIVE``, slows PyTorch itself (its MLP step went from 1.3-1.6 ms to
1.9-2.1 ms on a 2-core Xeon), so ratios measured that way flatter us. Here a user's view is
measured instead: every round starts a fresh Python process that imports ONE library (the
Avila ML process never imports torch), builds every case, warms it up and times it; rounds
alternate (ours, torch, ours, torch, ...) so a slow phase of a shared machine hits both.
``OMP_WAIT_POLICY`` is removed from the workers' environment, so both run at their defaults.

Per case the table gives, for each library, the median of the per-round times and their spread
(min-max over rounds), the ratio of the medians (ours / PyTorch; < 1 means we are faster), and
the header gives the CPU model, core count, Python/NumPy/PyTorch/Avila ML versions, the
machine's float32 GEMM GFLOP/s and copy bandwidth, and the load average before and after (a
load near the core count means another program competed: the figures are then indicative).

A benchmark file declares cases and calls ``main``::

    from harness import Case, main

    def matmul(L):                       # L is the library module: avila_ml or torch
        a = L.ones(1024, 1024); b = L.ones(1024, 1024)
        return lambda: a @ b             # the callable that is timed

    CASES = [Case("matmul 1024^3 f32", matmul, flops=2 * 1024**3)]
    if __name__ == "__main__":
        main("core", CASES, __doc__)

Results go to ``benchmarks/results/<name>_<cpu-model>_<date>.txt`` (a new file each run, never
overwriting a tracked one).

``--against PATH`` races this checkout against ANOTHER CHECKOUT of Avila ML (e.g. a
``git worktree`` of an older commit) instead of PyTorch: the reference worker imports
``avila_ml`` from PATH, with the same settings (``--no-accel`` applies to both), the rounds
alternate as above and the ratio is this checkout / that one; the file is
``<name>[_noaccel]_vs<commit>_...``. It answers "is this change slower than before?" with the
same method as the races against PyTorch.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIBS = ("avila_ml", "torch")
_TAG = "@@bench-result "


@dataclass
class Case:
    """One workload: ``make(L)`` builds it with library module ``L`` and returns the step.

    ``flops``/``nbytes``: work of one step, for GFLOP/s or GB/s columns. ``memory``: also
    report the peak memory of one step (NumPy allocations via tracemalloc for Avila ML, the
    profiler's memory records for PyTorch). ``min_time``: each timed block calls the step enough
    times to last this long. ``quick``: kept in ``--quick`` runs. ``target``: the ratio a
    project issue asks for (printed as met / not met).
    """

    name: str
    make: Callable
    flops: float | None = None
    nbytes: float | None = None
    memory: bool = False
    min_time: float = 0.05
    quick: bool = True
    target: float | None = None
    extra: dict = field(default_factory=dict)


def is_torch(L) -> bool:
    """True when the library module ``L`` is PyTorch (for cases whose code differs)."""
    return L.__name__ == "torch"


# -- worker side: one library, one process ---------------------------------------------------

def _time_block(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def peak_python_memory(fn) -> int:
    """Peak bytes allocated through Python/NumPy while ``fn`` runs (``tracemalloc``)."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def torch_peak_memory(fn) -> int | None:
    """Peak bytes of PyTorch CPU tensors allocated while ``fn`` runs (profiler memory records)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    events = sorted((e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)),
                    key=lambda e: e.time_range.start)
    for e in events:
        cur += e.cpu_memory_usage
        peak = max(peak, cur)
    return peak


def _worker(lib: str, cases: list, threads: int | None, inner: int) -> None:
    L = importlib.import_module(lib)
    if threads and lib == "torch":
        L.set_num_threads(threads)
    if threads and lib == "avila_ml":  # the blocked attention's tile threads (BLAS follows the env)
        importlib.import_module("avila_ml.ops.attention")._NUM_THREADS = threads
    out = {}
    for i, case in cases:
        fn = case.make(L)
        fn()  # warm-up: first-call costs (allocations, caches, kernel choice) are not timed
        t1 = max(_time_block(fn, 1), 1e-7)
        n = max(1, int(case.min_time / t1))
        gc_was = gc.isenabled()
        gc.disable()
        try:
            times = [_time_block(fn, n) for _ in range(inner)]
        finally:
            if gc_was:
                gc.enable()
        rec = {"s": statistics.median(times)}
        if case.memory:
            rec["peak"] = torch_peak_memory(fn) if lib == "torch" else peak_python_memory(fn)
        if lib == "torch":
            rec["threads"] = L.get_num_threads()
        out[i] = rec
        del fn
        gc.collect()
    print(_TAG + json.dumps(out), flush=True)


# -- parent side: rounds, machine facts, table -------------------------------------------------

def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``, else ``platform``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.check_output(["sysctl", "-n", "machdep.cpu.brand_string"], text=True).strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine()


def _cpuinfo_fields() -> dict:
    """The first processor's ``/proc/cpuinfo`` fields (empty where there is none)."""
    out = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def cpu_isa(flags: str | None = None) -> str:
    """The widest x86 vector instruction set the CPU reports: ``AVX-512``, ``AVX2``, ``AVX`` or ``""``.

    Ratios depend on it (oneDNN and PyTorch pick different kernels per ISA), and a virtual
    machine's model name ("AMD EPYC") does not tell an AVX2 host from an AVX-512 one.
    """
    fl = set((_cpuinfo_fields().get("flags", "") if flags is None else flags).split())
    if "avx512f" in fl:
        return "AVX-512"
    if "avx2" in fl:
        return "AVX2"
    return "AVX" if "avx" in fl else ""


def cpu_description() -> str:
    """The model name, with family/model where the name has no model number, and the ISA:
    ``AMD EPYC (family 25 model 17, AVX-512)``."""
    model, info, isa = cpu_model(), _cpuinfo_fields(), cpu_isa()
    extra = []
    if not re.search(r"\d", model) and "cpu family" in info:
        extra.append(f"family {info['cpu family']} model {info.get('model', '?')}")
    if isa:
        extra.append(isa)
    return f"{model} ({', '.join(extra)})" if extra else model


def cpu_slug(model: str | None = None, isa: str | None = None) -> str:
    """A file-name form of the CPU model and ISA: ``intel-xeon-platinum-8481c-2-70ghz-avx512``.

    The ISA suffix is left out for the AVX2 machines of the earlier result files (``amd-epyc``).
    """
    isa = cpu_isa() if isa is None else isa
    s = (model or cpu_model()).lower() + (" avx512" if isa == "AVX-512" else "")
    s = re.sub(r"\((r|tm)\)|\bcpu\b|@", " ", s)
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")[:48] or "unknown-cpu"


def _version(dist: str, module: str | None = None) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    if module:
        try:
            return getattr(importlib.import_module(module), "__version__", "?")
        except ImportError:
            return "not installed"
    return "not installed"


def machine_limits() -> dict:
    """This machine's float32 GEMM GFLOP/s (NumPy's BLAS, 1024^3) and copy bandwidth (GB/s)."""
    import numpy as np
    n = 1024
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    t = min(_time_block(lambda: a @ b, 1) for _ in range(5))
    src = np.ones(64 * 2 ** 20 // 4, dtype=np.float32)  # 64 MiB, beyond any cache
    dst = np.empty_like(src)
    np.copyto(dst, src)
    tc = min(_time_block(lambda: np.copyto(dst, src), 1) for _ in range(5))
    return {"gemm_gflops": 2 * n ** 3 / t / 1e9, "copy_gbs": 2 * src.nbytes / tc / 1e9}


class ForeignLoad:
    """How many cores *other* programs used while a benchmark ran.

    The load average cannot say it: a benchmark that keeps two cores busy itself raises the
    load average to 2, and the 1-minute average still holds the previous benchmark. Instead
    this reads the machine's busy CPU time (``/proc/stat``, steal included: a hypervisor's
    other guests) and subtracts this process's own CPU time and that of its finished
    children (``os.times``): what remains was used by someone else.
    """

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def cores(self) -> float | None:
        """Average cores used by other programs since construction (None where unknown)."""
        end = self._sample()
        if end is None or self._start is None:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self._start))
        return max(0.0, (busy - own) / wall) if wall > 0 else None


# other programs using this many cores on average make a run "loaded": its targets are not judged
FOREIGN_LOAD_LIMIT = 0.2


def machine_header(limits: dict, load: tuple, threads: int | None, started=None,
                   foreign: float | None = None) -> list:
    """Lines that say on what, with what and in which state the table was measured."""
    cpus = os.cpu_count()
    commit = _commit(ROOT)
    lines = [
        f"started {(started or datetime.datetime.now().astimezone()):%Y-%m-%d %H:%M %Z}; commit {commit}",
        f"cpu: {cpu_description()}, {cpus} logical cores; float32 GEMM {limits['gemm_gflops']:.1f} GFLOP/s "
        f"(NumPy BLAS); copy bandwidth {limits['copy_gbs']:.1f} GB/s",
        f"versions: Python {platform.python_version()}, NumPy {_version('numpy')}, "
        f"PyTorch {_version('torch')}, Avila ML {_version('avila-ml', 'avila_ml')}",
        "method: each library in its own process at its defaults (OpenMP wait settings unset), rounds "
        "alternating avila_ml/torch; per round the median of timed blocks; table: median over "
        "rounds [min-max]; ratio = median ours / median torch",
        f"threads: {'pinned to ' + str(threads) if threads else 'library defaults'}; load average "
        f"{load[0]:.2f} before, {load[1]:.2f} after (on {cpus} cores)",
    ]
    if foreign is not None:
        lines.append(f"other programs used {foreign:.2f} cores on average during the run "
                     "(/proc/stat busy time minus this benchmark's own processes)")
    if is_loaded(load, foreign):
        why = (f"other programs used {foreign:.2f} cores" if foreign is not None
               else f"the load average reached {max(load):.1f}")
        lines.append(f"LOADED MACHINE: {why} on {cpus} cores; they competed for the CPU, read these "
                     "figures as indicative only")
    return lines


def is_loaded(load: tuple, foreign: float | None) -> bool:
    """Loaded: other programs used >= FOREIGN_LOAD_LIMIT cores (or, where that cannot be
    measured, the load average reached half the cores)."""
    if foreign is not None:
        return foreign >= FOREIGN_LOAD_LIMIT
    return max(load) >= 0.5 * (os.cpu_count() or 1)


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def _cell(times: list) -> str:
    med = statistics.median(times)
    return f"{_fmt_time(med)} [{_fmt_time(min(times))}-{_fmt_time(max(times))}]"


def format_table(title: str, header: list, cases: list, results: dict, loaded: bool = False,
                 reference: str = "pytorch") -> str:
    """The result table as text (also used by the tests of this harness); ``reference`` names
    the second column's library ("pytorch", or another Avila ML checkout with ``--against``)."""
    lines = [f"== {title} =="] + header
    w = max([len(c.name) for _, c in cases] + [8])
    lines.append(f"{'workload':{w}s}  {'avila_ml median [min-max]':>30s}  {reference + ' median [min-max]':>30s}  "
                 f"{'ratio':>6s}  notes")
    verdicts = []
    for i, c in cases:
        ours, theirs = results[i]["avila_ml"], results[i]["torch"]
        to = [r["s"] for r in ours]
        tt = [r["s"] for r in theirs]
        ratio = statistics.median(to) / statistics.median(tt)
        notes = []
        if c.flops:
            notes.append(f"{c.flops / statistics.median(to) / 1e9:.1f} / "
                         f"{c.flops / statistics.median(tt) / 1e9:.1f} GFLOP/s")
        if c.nbytes:
            notes.append(f"{c.nbytes / statistics.median(to) / 1e9:.2f} / "
                         f"{c.nbytes / statistics.median(tt) / 1e9:.2f} GB/s")
        if c.memory:
            mo, mt = ours[-1].get("peak"), theirs[-1].get("peak")
            fmt = lambda b: "n/a" if b is None else f"{b / 2**20:.1f} MiB"  # noqa: E731
            notes.append(f"peak memory {fmt(mo)} / {fmt(mt)}")
        lines.append(f"{c.name:{w}s}  {_cell(to):>30s}  {_cell(tt):>30s}  {ratio:5.2f}x  {'; '.join(notes)}")
        if c.target and reference == "pytorch":  # (targets are ratios to PyTorch)
            verdict = "not judged (loaded machine)" if loaded else ("met" if ratio <= c.target else "NOT met")
            verdicts.append(f"{c.name}: ratio {ratio:.2f}x, target <= {c.target}x {verdict}")
    torch_threads = {r.get("threads") for i, _ in cases for r in results[i]["torch"]} - {None}
    if torch_threads:
        lines.append(f"(PyTorch intra-op threads: {', '.join(str(t) for t in sorted(torch_threads))})")
    return "\n".join(lines + verdicts)


def results_path(name: str, threads: int | None = None, when: datetime.date | None = None) -> str:
    """``benchmarks/results/<name>[_<N>thread]_<cpu>_<date>[_<k>].txt``, a name not yet taken."""
    stem = f"{name}{f'_{threads}thread' if threads else ''}_{cpu_slug()}_{(when or datetime.date.today()):%Y-%m-%d}"
    path = os.path.join(HERE, "results", stem + ".txt")
    k = 2
    while os.path.exists(path):
        path = os.path.join(HERE, "results", f"{stem}_{k}.txt")
        k += 1
    return path


def save_text(name: str, text: str, threads: int | None = None) -> str:
    """Write a result table to a new ``results_path(name, threads)`` and say where."""
    path = results_path(name, threads)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")
    print("saved", os.path.relpath(path, ROOT))
    return path


# OpenMP waiting settings a shell may carry: each changes how PyTorch's (and oneDNN's) threads
# wait, so no worker inherits them; ``--ours-env`` can give one to Avila ML's worker alone
_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# values of AVILA_ML_DNNL_LIBRARY that keep oneDNN unloaded (avila_ml.cpu_accel._dnnl._OFF, which a
# test keeps equal; not imported here: the parent process never imports avila_ml)
_DNNL_OFF = ("none", "off", "0")


def child_env(threads: int | None = None, **extra) -> dict:
    """The environment of a benchmark's child process: each library at its defaults
    (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME`` removed, this checkout first on
    PYTHONPATH), ``threads`` pinned only
    where a benchmark must (e.g. several ranks on few cores), plus ``extra`` variables."""
    env = dict(os.environ)
    for var in _WAIT_VARS:  # each library at its defaults, as users run it
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    env.update(extra)
    return env


def _run_round(script: str, lib: str, idx: list, args) -> dict:
    against = getattr(args, "against", None)
    worker = "avila_ml" if against else lib  # (--against: the reference column is Avila ML too)
    cmd = [sys.executable, script, "--worker", worker, "--cases", ",".join(map(str, idx)),
           "--inner", str(args.inner)] + (["--threads", str(args.threads)] if args.threads else [])
    extra = {}
    if lib == "avila_ml":
        extra.update(v.split("=", 1) for v in getattr(args, "ours_env", []))
    if worker == "avila_ml" and getattr(args, "no_accel", False):
        extra["AVILA_ML_DNNL_LIBRARY"] = "none"
    env = child_env(args.threads, **extra)
    if against and lib == "torch":  # the other checkout's avila_ml first on the path
        env["PYTHONPATH"] = os.pathsep.join([against] + env["PYTHONPATH"].split(os.pathsep))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_TAG):
            return {int(k): v for k, v in json.loads(line[len(_TAG):]).items()}
    raise RuntimeError(f"{os.path.basename(script)} worker for {lib} failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main(name: str, cases: list, doc: str | None = None, argv: list | None = None) -> str | None:
    """Command line of a benchmark file: the parent runs the rounds, ``--worker`` times one library."""
    p = argparse.ArgumentParser(description=(doc or name).strip().splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="processes per library (default 5)")
    p.add_argument("--inner", type=int, default=3, help="timed blocks per process (median taken)")
    p.add_argument("--quick", action="store_true", help="2 rounds, the quick cases only")
    p.add_argument("--only", default=None, help="run the cases whose name contains this text")
    p.add_argument("--threads", type=int, default=None, help="pin both libraries to N threads")
    p.add_argument("--no-save", action="store_true", help="print the table, write no file")
    p.add_argument("--ours-env", action="append", default=[], metavar="VAR=VALUE",
                   help="an environment variable for Avila ML's worker only (e.g. an OpenMP setting to "
                        "try; PyTorch's process keeps its defaults); repeatable, recorded in the header")
    p.add_argument("--no-accel", action="store_true",
                   help="Avila ML without its CPU accelerator (oneDNN unloaded: the NumPy paths of a machine "
                        "without the cpu extra); results file <name>_noaccel_...")
    p.add_argument("--against", default=None, metavar="PATH",
                   help="race another checkout of Avila ML (its root folder, e.g. a git worktree of an "
                        "older commit) instead of PyTorch; results file <name>_vs<commit>_...")
    p.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    p.add_argument("--cases", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    script = os.path.abspath(sys.modules["__main__"].__file__)

    if args.worker:
        idx = [int(i) for i in args.cases.split(",") if i]
        _worker(args.worker, [(i, cases[i]) for i in idx], args.threads, args.inner)
        return None

    if os.environ.get("AVILA_ML_DNNL_LIBRARY", "").strip().lower() in _DNNL_OFF:
        args.no_accel = True  # (set for the whole run, as bench_conv.py needs: its file and header say so)
    bad = [v for v in args.ours_env if "=" not in v or not v.split("=", 1)[0]]
    if bad:
        sys.exit(f"--ours-env expects VAR=VALUE, got {bad}")
    other = None
    if args.against:
        args.against = os.path.abspath(args.against)
        if not os.path.isfile(os.path.join(args.against, "avila_ml", "__init__.py")):
            sys.exit(f"--against {args.against}: no avila_ml package there (give the root of a checkout)")
        other = _commit(args.against)
    chosen = [(i, c) for i, c in enumerate(cases)
              if (not args.quick or c.quick) and (args.only is None or args.only in c.name)]
    if not chosen:
        sys.exit(f"no case matches (--only {args.only!r}, --quick {args.quick})")
    rounds = 2 if args.quick else args.rounds
    idx = [i for i, _ in chosen]
    load0, started = os.getloadavg()[0], datetime.datetime.now().astimezone()
    meter = ForeignLoad()
    limits = machine_limits()
    results = {i: {lib: [] for lib in LIBS} for i in idx}
    for r in range(rounds):
        for lib in LIBS:
            t0 = time.perf_counter()
            for i, rec in _run_round(script, lib, idx, args).items():
                results[i][lib].append(rec)
            print(f"  round {r + 1}/{rounds} {lib}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    load, foreign = (load0, os.getloadavg()[0]), meter.cores()
    header = machine_header(limits, load, args.threads, started, foreign)
    if args.ours_env:
        header.append(f"Avila ML's worker only: {' '.join(args.ours_env)}")
    if args.no_accel:
        header.append(f"Avila ML WITHOUT its CPU accelerator: AVILA_ML_DNNL_LIBRARY=none in its process"
                      f"{'es (both columns)' if other else ''} "
                      "(oneDNN unloaded, the NumPy paths of a machine without the cpu extra)")
    if other:
        header.append(f"AGAINST ANOTHER CHECKOUT: the reference column is Avila ML at commit {other} "
                      f"({args.against}), not PyTorch; ratio = this checkout / that one")
    title = f"Avila ML vs {'Avila ML ' + other if other else 'PyTorch'}: {name} (CPU)"
    text = format_table(title, header, chosen, results, loaded=is_loaded(load, foreign),
                        reference=f"avila_ml {other}" if other else "pytorch")
    print(text, flush=True)
    if not args.no_save:
        # a run with a non-default setting for our worker never takes a defaults run's file name
        save_text(name + ("_noaccel" if args.no_accel else "") + ("_oursenv" if args.ours_env else "")
                  + (f"_vs{other}" if other else ""), text, args.threads)
    return text


def _commit(root: str) -> str:
    """The short commit of the checkout at ``root`` ("?" where git cannot say)."""
    try:
        return subprocess.check_output(["git", "-C", root, "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
