"""``avila_ml.backends.host_memory``: keep freed host memory for reuse instead of handing it back
to the operating system after every training step (glibc's ``mallopt``; no PyTorch equivalent:
PyTorch users get the same effect from ``LD_PRELOAD``-ed jemalloc/tcmalloc or these variables).

Why: a training step allocates and frees the same multi-megabyte activations every time. With
glibc's defaults the freed top of the heap is returned to the kernel (``M_TRIM_THRESHOLD``,
adapted at run time up to 64 MiB), and the next step's arrays are fresh pages that the kernel
must fault in and zero: 9,700 page faults and ~24 ms of kernel time per step of the char GPT of
``benchmarks/bench_programs.py``, 8,300 per small-GPT step (measured 2026-12-06, AMD EPYC). With
the settings below both fall to under ten, and the peak resident memory stays the same (201 vs
203 MiB): the memory kept is memory the step already needed at its peak.

Settings applied when ``avila_ml`` is imported (``reuse()``): arrays up to 32 MiB come from the
heap (``M_MMAP_THRESHOLD``, glibc's own dynamic maximum), up to 1 GiB of free heap is kept
(``M_TRIM_THRESHOLD``) and the heap grows in 64 MiB steps (``M_TOP_PAD``; untouched pages cost
nothing). Nothing is changed when the process does not use glibc, when the user already tunes
malloc (``MALLOC_*_`` variables or ``glibc.malloc`` in ``GLIBC_TUNABLES``), or when
``AVILA_ML_HOST_MEMORY_REUSE=0``. ``release()`` gives the kept memory back and restores glibc's
fixed defaults.

Example:
    >>> import avila_ml as am
    >>> isinstance(am.backends.host_memory.is_reusing(), bool)
    True
"""
from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["reuse", "release", "is_reusing", "SETTINGS", "ENV_VAR"]

ENV_VAR = "AVILA_ML_HOST_MEMORY_REUSE"
# mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {"mmap_threshold": 32 << 20, "trim_threshold": 1 << 30, "top_pad": 64 << 20}
_GLIBC_DEFAULTS = {"mmap_threshold": 128 << 10, "trim_threshold": 128 << 10, "top_pad": 128 << 10}
_USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_state = {"reusing": False}


def _libc():
    """glibc's handle, or None on another C library (musl, macOS, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _set(libc, values) -> bool:
    ok = True
    for param, key in ((_M_MMAP_THRESHOLD, "mmap_threshold"), (_M_TRIM_THRESHOLD, "trim_threshold"),
                       (_M_TOP_PAD, "top_pad")):
        ok &= libc.mallopt(param, int(values[key])) == 1  # mallopt returns 1 on success
    return ok


def reuse() -> bool:
    """Keep freed host memory for the next allocations (the settings of :data:`SETTINGS`);
    returns whether they are in force (False where the C library is not glibc).

    Example:
        >>> import avila_ml as am
        >>> am.backends.host_memory.reuse() in (True, False)
        True
    """
    libc = _libc()
    _state["reusing"] = bool(libc is not None and _set(libc, SETTINGS))
    return _state["reusing"]


def release() -> None:
    """Give the kept free memory back to the operating system (``malloc_trim``) and return to
    glibc's default thresholds (128 KiB; fixed, no longer adapted at run time).

    Example:
        >>> import avila_ml as am
        >>> am.backends.host_memory.release(); am.backends.host_memory.is_reusing()
        False
        >>> _ = am.backends.host_memory.reuse()
    """
    libc = _libc()
    if libc is not None:
        _set(libc, _GLIBC_DEFAULTS)
        libc.malloc_trim(0)
    _state["reusing"] = False


def is_reusing() -> bool:
    """True when :func:`reuse`'s settings are in force.

    Example:
        >>> import avila_ml as am
        >>> am.backends.host_memory.is_reusing() in (True, False)
        True
    """
    return _state["reusing"]


def _apply_default() -> None:
    """At import: :func:`reuse`, unless switched off or the user tunes malloc already."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if any(v in os.environ for v in _USER_VARS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    reuse()
