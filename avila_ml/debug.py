"""Value checks that read tensor data on the host: always on the CPU, opt-in on CUDA.

A check of tensor *values* (class indices within ``[0, C)``, embedding indices within the
table, probabilities within ``[0, 1]``) must read the data on the host. On the CPU that is
free; on a GPU it is a device->host synchronisation that stalls the launch queue, and a
training step with a few of them runs at the speed of the round trips. So the policy is:

* CPU tensors: value checks always run, and raise at the call with the offending values;
* CUDA tensors: value checks run only when sync checks are on (``set_sync_checks(True)`` or
  the environment variable ``AVILA_ML_SYNC_CHECKS=1`` at import). Off (the default), the op
  runs without a sync: out-of-range indices give unspecified values instead of an error.
  Turn the checks on to debug a GPU run, as one runs PyTorch with ``CUDA_LAUNCH_BLOCKING=1``.

Checks of shapes, dtypes and devices never need the data and always run. New value checks
in ``ops/`` go through :func:`host_checks` so that the steady-state training step stays
free of syncs on CUDA (tests/test_cuda_path.py asserts 0 syncs per step on the emulated device).
"""
from __future__ import annotations

import os

from .backends import backend_of

__all__ = ["set_sync_checks", "sync_checks_enabled", "host_checks"]

_enabled = [os.environ.get("AVILA_ML_SYNC_CHECKS", "") not in ("", "0")]


def set_sync_checks(enabled: bool) -> None:
    """Turn the host-side value checks on or off for CUDA tensors (always on for CPU tensors).

    Mirrors no single PyTorch switch; the closest is ``CUDA_LAUNCH_BLOCKING=1``.

    Example:
        >>> import avila_ml as am
        >>> am.debug.set_sync_checks(True); am.debug.sync_checks_enabled()
        True
        >>> am.debug.set_sync_checks(False)
    """
    _enabled[0] = bool(enabled)


def sync_checks_enabled() -> bool:
    """Whether value checks run on CUDA tensors (see :func:`set_sync_checks`).

    Mirrors no single PyTorch query; the closest is reading ``CUDA_LAUNCH_BLOCKING``.

    Example:
        >>> import avila_ml as am
        >>> before = am.debug.sync_checks_enabled()  # False unless AVILA_ML_SYNC_CHECKS=1
        >>> am.debug.set_sync_checks(True); am.debug.sync_checks_enabled()
        True
        >>> am.debug.set_sync_checks(before)
    """
    return _enabled[0]


def host_checks(array) -> bool:
    """True when a value check of ``array`` may read it on the host: always for a NumPy array,
    for a CUDA array only with sync checks on.

    Example:
        >>> import numpy as np
        >>> from avila_ml.debug import host_checks
        >>> host_checks(np.zeros(3))
        True
    """
    return _enabled[0] or backend_of(array).name == "numpy"
