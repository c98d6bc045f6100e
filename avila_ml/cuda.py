"""``avila_ml.cuda``: GPU availability and synchronisation (``torch.cuda``)."""
from __future__ import annotations

from .backends import cuda_is_available, get_backend

from .amp.device_aliases import cuda_amp as amp  # noqa: F401  (torch.cuda.amp.autocast / GradScaler)

__all__ = ["is_available", "device_count", "synchronize", "manual_seed", "amp"]


def is_available() -> bool:
    """True when CuPy is installed and sees a GPU (``torch.cuda.is_available``).

    Example:
        >>> import avila_ml as am
        >>> isinstance(am.cuda.is_available(), bool)
        True
    """
    return cuda_is_available()


def device_count() -> int:
    """Number of visible GPUs, 0 without CuPy or a GPU (``torch.cuda.device_count``).

    Example:
        >>> import avila_ml as am
        >>> am.cuda.device_count() >= 0
        True
    """
    if not cuda_is_available():
        return 0
    import cupy
    return int(cupy.cuda.runtime.getDeviceCount())


def synchronize(device=None) -> None:
    """Wait for all work queued on a GPU (``torch.cuda.synchronize``).

    Example:
        >>> import avila_ml as am
        >>> if am.cuda.is_available():
        ...     am.cuda.synchronize()
        ...
    """
    get_backend(device or "cuda").synchronize()


def manual_seed(seed: int) -> None:
    """Seed the generator of the current GPU (``torch.cuda.manual_seed``).

    Example:
        >>> import avila_ml as am
        >>> if am.cuda.is_available():
        ...     am.cuda.manual_seed(0)
        ...
    """
    get_backend("cuda").seed(seed)
