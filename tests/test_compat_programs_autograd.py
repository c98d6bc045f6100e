"""The autograd compat programs (tests/compat_programs/residual_cnn.py, custom_function.py):
each is a plain PyTorch script; run once with real torch and once through
``python -m avila_ml.as_torch``, their first steps' losses must agree."""
from pathlib import Path

import numpy as np
import pytest

from test_compat_programs import _run  # one runner for every compat program

HERE = Path(__file__).parent
PROGRAMS = ["residual_cnn.py", "custom_function.py"]


def _losses(args):
    return _run(args)["losses"]


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_losses_match_torch(program):
    path = str(HERE / "compat_programs" / program)
    ref = _losses([path])
    ours = _losses(["-m", "avila_ml.as_torch", path])
    assert len(ours) == len(ref) >= 5
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=1e-5)
    assert ref[-1] < ref[0]  # the program trains
