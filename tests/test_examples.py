"""Smoke tests: every script in examples/ runs end to end in its --quick mode."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_runs_quick(path, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, path, "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{os.path.basename(path)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
