"""Run every ``bench_*.py`` in this folder (CPU ones; GPU ones skip themselves without a GPU)."""
import glob
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
failed = []
for path in sorted(glob.glob(os.path.join(here, "bench_*.py"))):
    print(f"\n### {os.path.basename(path)}", flush=True)
    if subprocess.call([sys.executable, path]) != 0:
        failed.append(os.path.basename(path))
if failed:
    sys.exit(f"benchmarks failed: {failed}")
