"""``avila_ml.accelerator``: the device-agnostic accelerator API (``torch.accelerator``).

The only accelerator Avila ML knows is CUDA (through CuPy).

Example:
    >>> import avila_ml as am
    >>> dev = am.accelerator.current_accelerator()
    >>> dev is None or dev.type == "cuda"
    True
"""
from __future__ import annotations

from .backends import cuda_is_available, device as _device

__all__ = ["current_accelerator", "is_available", "device_count", "current_device_index",
           "set_device_index", "synchronize"]

_current = [0]


def is_available() -> bool:
    """True when a CUDA GPU is usable (``torch.accelerator.is_available``).

    Example:
        >>> import avila_ml as am
        >>> am.accelerator.is_available() == am.cuda.is_available()
        True
    """
    return cuda_is_available()


def current_accelerator(check_available: bool = False):
    """``device("cuda")`` when a GPU is usable, else None (``torch.accelerator.current_accelerator``).

    Example:
        >>> import avila_ml as am
        >>> am.accelerator.current_accelerator() in (None, am.device("cuda"))
        True
    """
    return _device("cuda") if cuda_is_available() else None


def device_count() -> int:
    """How many GPUs are visible (0 without CUDA) (``torch.accelerator.device_count``).

    Example:
        >>> import avila_ml as am
        >>> am.accelerator.device_count() >= 0
        True
    """
    if not cuda_is_available():
        return 0
    import cupy
    return int(cupy.cuda.runtime.getDeviceCount())


def current_device_index() -> int:
    """The index of the current accelerator (``torch.accelerator.current_device_index``).

    Example:
        >>> import avila_ml as am
        >>> am.accelerator.current_device_index()
        0
    """
    return _current[0]


def set_device_index(index: int) -> None:
    """Make GPU ``index`` current: the default device becomes ``cuda:index``
    (``torch.accelerator.set_device_index``); raises when there is no such GPU.

    Example:
        >>> import avila_ml as am
        >>> try:
        ...     am.accelerator.set_device_index(99)
        ... except RuntimeError:
        ...     print("no such GPU")
        no such GPU
    """
    from .backends import get_backend, set_default_device
    dev = _device("cuda", int(index))
    get_backend(dev)  # raises when CUDA or that GPU is missing
    set_default_device(dev)
    _current[0] = int(index)


def synchronize(device=None) -> None:
    """Wait for the accelerator's queued work (``torch.accelerator.synchronize``); nothing to
    wait for without a GPU.

    Example:
        >>> import avila_ml as am
        >>> am.accelerator.synchronize()
    """
    if cuda_is_available():
        from .backends import get_backend
        get_backend(_device("cuda", _current[0] if device is None else _device(device).index)).synchronize()
