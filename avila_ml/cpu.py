"""``avila_ml.cpu``: the CPU device's namespace (``torch.cpu``); holds ``amp.autocast``.

Example:
    >>> import avila_ml as am
    >>> am.cpu.is_available()
    True
"""
from __future__ import annotations

from .amp.device_aliases import cpu_amp as amp  # noqa: F401

__all__ = ["is_available", "amp"]


def is_available() -> bool:
    """Always True: the CPU (NumPy) backend is always there (``torch.cpu.is_available``).

    Example:
        >>> import avila_ml as am
        >>> am.cpu.is_available()
        True
    """
    return True
