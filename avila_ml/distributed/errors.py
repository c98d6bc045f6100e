"""Exceptions of ``avila_ml.distributed`` (``torch.distributed.DistError`` and friends)."""
from __future__ import annotations

__all__ = ["DistError", "DistBackendError"]


class DistError(RuntimeError):
    """Base error of the distributed package (``torch.distributed.DistError``).

    Example:
        >>> from avila_ml.distributed import DistError
        >>> issubclass(DistError, RuntimeError)
        True
    """


class DistBackendError(DistError):
    """A collective failed across ranks: shapes/dtypes differ, a rank died or never arrived
    within the timeout (``torch.distributed.DistBackendError``).

    Example:
        >>> from avila_ml.distributed import DistBackendError, DistError
        >>> issubclass(DistBackendError, DistError)
        True
    """
