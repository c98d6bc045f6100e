"""Small constant tables (gather indices, window divisors) built on the host, kept per device.

Padding, pooling and attention index tables depend only on shapes, so building them with
NumPy and copying them to the GPU at every call would cost one host->device copy per call.
:func:`device_constant` copies each table once per (device, key) and hands out the same
device array afterwards. Callers must not write into the returned array.
"""
from __future__ import annotations

from collections import OrderedDict

__all__ = ["device_constant"]

_MAX_ENTRIES = 1024  # least recently used tables are dropped beyond this
_cache: OrderedDict = OrderedDict()


def device_constant(backend, key, build):
    """``build()`` (a NumPy array that depends on ``key`` only) as an array of ``backend``.

    On the CPU it is built each time (nothing to copy, nothing held); on a GPU it is copied
    once per (device, key) and cached.

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends import get_backend
        >>> from avila_ml.backends.constants import device_constant
        >>> device_constant(get_backend("cpu"), ("arange", 3), lambda: np.arange(3))
        array([0, 1, 2])
    """
    if backend.name == "numpy":
        return build()
    full_key = (str(backend.device), key)
    array = _cache.get(full_key)
    if array is None:
        array = _cache[full_key] = backend.from_numpy(build())
        if len(_cache) > _MAX_ENTRIES:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(full_key)
    return array
