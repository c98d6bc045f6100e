"""Which oneDNN primitives a convolution layer's step runs, and how long each takes, in Avila ML
and in PyTorch: each library in its own process with oneDNN's verbose mode on, side by side.

Why: several layers of ``bench_conv.py`` race PyTorch at about 1.0x with both libraries calling
the same oneDNN kernels (PyTorch 2.13 links oneDNN 3.12, the ``onednn-cpu-gomp`` wheel is 3.2).
Their ratios then move with the machine, and this trace says what a ratio alone cannot: whether
the two run the same implementation on the same layouts, which reorders each adds, and how
much of the step is outside oneDNN (framework overhead, allocation, element-wise work).

    python benchmarks/onednn_trace.py --only "DCGAN D third"      # one layer of bench_conv.py

Per library: the layer's ``make`` from ``bench_conv.py`` (its forward + backward as the
benchmark times it), ``--warmup`` steps, then ``--steps`` steps under ``ONEDNN_VERBOSE=1``;
for every distinct execution (primitive kind, implementation, propagation, layouts, problem)
its count per step and the median of its verbose times over the last half of its calls. The
step's own wall time is taken in a second run of the same process kind without verbose output
(the printing slows the step). PyTorch's executions run on its own oneDNN build; rows are
matched by kind, propagation, layouts and problem (the implementation names may differ).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import LIBS, child_env, cpu_description, save_text  # noqa: E402

_TAG = "@@onednn_trace "


def _worker(lib: str, only: str, warmup: int, steps: int) -> None:
    import importlib
    import bench_conv
    L = importlib.import_module(lib)
    case = next(c for c in bench_conv.CASES if only in c.name)
    fn = case.make(L)
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    per = (time.perf_counter() - t) / steps
    sys.stdout.flush()
    print(_TAG + json.dumps({"case": case.name, "step_s": per, "steps": warmup + steps}), flush=True)


def _run(lib: str, only: str, warmup: int, steps: int, verbose: bool) -> tuple[dict, list]:
    extra = {"ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"} if verbose else {}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--only", only,
           "--warmup", str(warmup), "--steps", str(steps)]
    proc = subprocess.run(cmd, env=child_env(None, **extra), capture_output=True, text=True)
    info = None
    execs = []
    version = "?"
    for line in proc.stdout.splitlines():
        if line.startswith(_TAG):
            info = json.loads(line[len(_TAG):])
        elif line.startswith("onednn_verbose") and ",exec," in line:
            execs.append(line)
        elif line.startswith("onednn_verbose") and ",oneDNN v" in line:  # the library's banner
            version = line.split(",oneDNN ", 1)[1].split(" (")[0]
    if info is not None:
        info["onednn"] = version
    if info is None:
        raise RuntimeError(f"{lib} worker failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    return info, execs


def parse(lines: list) -> collections.OrderedDict:
    """``{(kind, propagation, layouts, problem): (implementation, [times in ms])}`` of oneDNN's
    verbose ``exec`` lines (3.2's ``onednn_verbose,exec,...`` and 3.12's ``onednn_verbose,v1,
    primitive,exec,...`` forms), in order of first appearance."""
    out = collections.OrderedDict()
    for line in lines:
        parts = line.rstrip().split(",")
        i = parts.index("exec")
        kind, impl, prop, mds = parts[i + 2], parts[i + 3], parts[i + 4], parts[i + 5]
        mds = " ".join(_layout(_DTYPE_AFTER_ROLE.sub(r"\1:\2", md)) for md in mds.split())
        key = (kind, prop, mds, parts[-2])
        out.setdefault(key, (impl, []))[1].append(float(parts[-1]))
    return out


# 3.2 writes a descriptor's role and data type as "src_f32:..." or "bia_undef:...", 3.12 as "src:f32:..."
_DTYPE_AFTER_ROLE = re.compile(r"^([a-z]+(?:_[a-z]+)*?)_(f32|f16|bf16|f64|s8|u8|s32|undef)(?=:)")


def _layout(md: str) -> str:
    """``src:f32::blocked:aBcd16b::f0`` (3.12: ``src:f32:a:blocked:aBcd16b::f0``) -> ``src:aBcd16b``;
    an absent argument (``bia:undef::undef:::``) -> ``bia:-``."""
    fields = md.split(":")
    role = fields[0]
    if "undef" in fields:
        return f"{role}:-"
    tag = fields[fields.index("blocked") + 1] if "blocked" in fields[:-1] else "?"
    return f"{role}:{tag or '?'}"


def table(name: str, runs: dict) -> str:
    """The side-by-side text: per execution its count per step and median ms in each library,
    the sums per step, and the step's wall time without verbose output."""
    parsed = {lib: parse(r["execs"]) for lib, r in runs.items()}
    keys = list(parsed["avila_ml"]) + [k for k in parsed["torch"] if k not in parsed["avila_ml"]]
    lines = [f"== oneDNN executions per step: {name} ==", f"cpu: {cpu_description()}",
             "oneDNN: " + ", ".join(f"{lib} {runs[lib]['info'].get('onednn', '?')}" for lib in LIBS),
             "per execution: calls per step x median verbose time (last half of its calls); "
             "implementation names as each library's oneDNN reports them",
             f"{'kind':13s} {'propagation':17s} {'layouts / problem':66s} {'avila_ml':>30s} {'pytorch':>30s}"]
    sums = {lib: 0.0 for lib in LIBS}
    for key in keys:
        cells = []
        for lib in LIBS:
            hit = parsed[lib].get(key)
            if hit is None:
                cells.append("-")
                continue
            impl, times = hit
            per_step = len(times) / runs[lib]["info"]["steps"]
            med = statistics.median(times[len(times) // 2:])
            sums[lib] += per_step * med
            cells.append(f"{per_step:.0f} x {med:.3f} ms {impl[:14]}")
        kind, prop, mds, prob = key
        lines.append(f"{kind:13s} {prop:17s} {(mds + ' ' + prob)[:66]:66s} {cells[0]:>30s} {cells[1]:>30s}")
    lines.append(f"{'sum of the executions per step':98s} {sums['avila_ml']:27.3f} ms {sums['torch']:27.3f} ms")
    lines.append(f"{'step wall time without verbose output':98s} "
                 f"{runs['avila_ml']['wall'] * 1e3:27.3f} ms {runs['torch']['wall'] * 1e3:27.3f} ms")
    return "\n".join(lines)


def main(argv=None) -> str | None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--only", required=True, help="the bench_conv.py case whose name contains this text")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.only, args.warmup, args.steps)
        return None
    runs = {}
    for lib in LIBS:
        info, execs = _run(lib, args.only, args.warmup, args.steps, verbose=True)
        if not execs:
            sys.exit(f"{lib}: no oneDNN executions traced (is oneDNN in use? Avila ML needs its cpu extra)")
        wall = min(_run(lib, args.only, args.warmup, args.steps, verbose=False)[0]["step_s"] for _ in range(3))
        runs[lib] = {"info": info, "execs": execs, "wall": wall}
    text = table(runs["avila_ml"]["info"]["case"], runs)
    print(text)
    if not args.no_save:
        save_text("onednn_trace", text)
    return text


if __name__ == "__main__":
    main()
