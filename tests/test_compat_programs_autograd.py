"""The autograd compat programs (tests/compat_programs/residual_cnn.py, custom_function.py):
each is a plain PyTorch script; run once with real torch and once through
``python -m avila_ml.as_torch``, their first steps' losses must agree."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
PROGRAMS = ["residual_cnn.py", "custom_function.py"]


def _losses(args):
    env = dict(os.environ)
    root = str(HERE.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["losses"]


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_losses_match_torch(program):
    path = str(HERE / "compat_programs" / program)
    ref = _losses([path])
    ours = _losses(["-m", "avila_ml.as_torch", path])
    assert len(ours) == len(ref) >= 5
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=1e-5)
    assert ref[-1] < ref[0]  # the program trains
