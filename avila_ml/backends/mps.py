"""``avila_ml.backends.mps``: Apple's Metal backend (``torch.backends.mps``), which Avila ML
does not have.

Example:
    >>> import avila_ml as am
    >>> am.backends.mps.is_available(), am.backends.mps.is_built()
    (False, False)
"""
from __future__ import annotations


def is_available() -> bool:
    """False: there is no Metal (MPS) backend (``torch.backends.mps.is_available``).

    Example:
        >>> import avila_ml as am
        >>> am.backends.mps.is_available()
        False
    """
    return False


def is_built() -> bool:
    """False: there is no Metal (MPS) backend (``torch.backends.mps.is_built``).

    Example:
        >>> import avila_ml as am
        >>> am.backends.mps.is_built()
        False
    """
    return False
