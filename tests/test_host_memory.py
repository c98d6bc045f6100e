"""Freed host memory kept for reuse (``avila_ml/backends/host_memory.py``, issue 17): measured by
the page faults of a repeated allocation pattern in a fresh process, with the default settings,
switched off by the environment variable, and left alone where the user tunes malloc."""
import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt tuning applies to glibc only")

# 20 arrays of 8 MiB written, freed, three times (a training step's activations): page faults of
# the third round (fresh pages are faulted in and zeroed; reused ones are not)
_PROBE = r"""
import resource, numpy as np, avila_ml as am
def round_():
    arrs = [np.ones(2 << 20, np.float32) for _ in range(20)]
    del arrs
for _ in range(2):
    round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, am.backends.host_memory.is_reusing())
"""


def _probe(**env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "AVILA_ML_HOST_MEMORY_REUSE"}
    e.update(env, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _PROBE], env=e, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    faults, reusing = out.stdout.split()
    return int(faults), reusing == "True"


@glibc_only
def test_freed_memory_is_reused_by_default_and_not_when_switched_off():
    faults_on, on = _probe()
    faults_off, off = _probe(AVILA_ML_HOST_MEMORY_REUSE="0")
    assert on and not off
    # 160 MiB of fresh pages is >= 80 faults even with 2 MiB transparent huge pages
    assert faults_off >= 80
    assert faults_on * 4 < faults_off


@glibc_only
def test_user_malloc_settings_are_left_alone():
    _, reusing = _probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert not reusing
    _, reusing = _probe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert not reusing


@glibc_only
def test_release_and_reuse_switch_the_state():
    import avila_ml as am
    hm = am.backends.host_memory
    was = hm.is_reusing()
    try:
        hm.release()
        assert not hm.is_reusing()
        assert hm.reuse() and hm.is_reusing()
    finally:
        if not was:
            hm.release()
