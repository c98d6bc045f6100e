"""Run every ``bench_*.py`` in this folder (``make bench``); GPU ones skip themselves without a GPU.

Extra arguments go to each benchmark (default ``--rounds 3``, which keeps the whole run near
10 minutes on an idle 2-core machine by estimate; ``--rounds 5`` for tighter figures). Each CPU benchmark
times Avila ML and PyTorch in separate processes, alternating rounds, and writes a new file
``benchmarks/results/<benchmark>_<cpu-model>_<date>.txt``; nothing tracked is overwritten.
"""
import glob
import os
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
failed = []
start = time.perf_counter()
for path in sorted(glob.glob(os.path.join(here, "bench_*.py"))):
    print(f"\n### {os.path.basename(path)}", flush=True)
    extra = [] if "gpu" in os.path.basename(path) else (sys.argv[1:] or ["--rounds", "3"])
    if subprocess.call([sys.executable, path] + extra) != 0:
        failed.append(os.path.basename(path))
print(f"\nall benchmarks: {time.perf_counter() - start:.0f} s")
if failed:
    sys.exit(f"benchmarks failed: {failed}")
