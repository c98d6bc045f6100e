"""NVTX ranges around each op's forward and backward, so an Nsight Systems timeline reads as
the model does ("elementwise.Mul.forward", "conv.ConvNd.backward", ...).

Active only when the ``nvtx`` package is installed, a CUDA backend is in use, and the
environment variable ``AVILA_ML_NVTX`` is not ``0``; otherwise every call is skipped by one
boolean test in ``Function.apply`` and the engine, so CPU runs pay nothing.
"""
from __future__ import annotations

import os

__all__ = ["active", "activate", "push", "pop", "range_name", "call"]

active = False
_nvtx = None


def activate() -> bool:
    """Turn ranges on if the ``nvtx`` package is importable (called when a GPU backend starts).

    Example:
        >>> from avila_ml.backends import nvtx
        >>> isinstance(nvtx.activate(), bool)
        True
    """
    global active, _nvtx
    if os.environ.get("AVILA_ML_NVTX", "1") == "0":
        return False
    try:
        import nvtx as _mod
    except ImportError:
        return False
    _nvtx = _mod
    active = True
    return True


def range_name(cls, phase: str) -> str:
    """``"<op family>.<Function name>.<phase>"``, e.g. ``"elementwise.Mul.forward"``."""
    family = cls.__module__.rsplit(".", 1)[-1]
    return f"{family}.{cls.__name__}.{phase}"


def push(name: str) -> None:
    """Open a range (no-op unless active)."""
    if active:
        _nvtx.push_range(name, domain="avila_ml")


def pop() -> None:
    """Close the innermost range (no-op unless active)."""
    if active:
        _nvtx.pop_range(domain="avila_ml")


def call(cls, phase: str, fn, *args):
    """``fn(*args)`` inside the range ``range_name(cls, phase)`` (callers check ``active`` first,
    so the inactive path costs one boolean test)."""
    push(range_name(cls, phase))
    try:
        return fn(*args)
    finally:
        pop()
