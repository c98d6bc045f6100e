"""Exchange tensors with other array libraries without copying: :func:`from_dlpack`.

The other direction is on :class:`~avila_ml.Tensor` itself: ``__dlpack__`` /
``__dlpack_device__`` (read by ``numpy.from_dlpack``, ``torch.from_dlpack``,
``cupy.from_dlpack``, ``jax.dlpack.from_dlpack``), ``__array__`` (``np.asarray(t)`` shares a
CPU tensor's memory) and ``__cuda_array_interface__`` on CUDA tensors.
"""
from __future__ import annotations

from .backends import device as _device, get_backend
from .tensor import Tensor

__all__ = ["from_dlpack"]

_DLPACK_CPU, _DLPACK_CUDA, _DLPACK_CUDA_HOST, _DLPACK_CUDA_MANAGED = 1, 2, 3, 13


def from_dlpack(ext_tensor) -> Tensor:
    """A tensor sharing memory with any object that speaks DLPack (``torch.from_dlpack``).

    ``ext_tensor`` is an object with ``__dlpack__`` and ``__dlpack_device__``: a NumPy array,
    a PyTorch tensor (``.detach()`` ed), a CuPy or JAX array. CPU memory becomes a CPU
    tensor, CUDA memory a ``cuda:N`` tensor; no data is copied, so writes through either
    side are seen by the other. (Bare DLPack capsules, PyTorch's legacy form, are not
    accepted: pass the array object.)

    Example:
        >>> import avila_ml as am, numpy as np
        >>> a = np.arange(3.0)
        >>> t = am.from_dlpack(a); a[0] = 5.0; t
        tensor([5., 1., 2.], dtype=avila_ml.float64)
    """
    if isinstance(ext_tensor, Tensor):
        return ext_tensor
    if not hasattr(ext_tensor, "__dlpack__") or not hasattr(ext_tensor, "__dlpack_device__"):
        raise TypeError(f"from_dlpack: expected an object with __dlpack__ and __dlpack_device__ (a NumPy, "
                        f"PyTorch, CuPy or JAX array), got {type(ext_tensor).__name__}")
    kind, index = ext_tensor.__dlpack_device__()
    kind, index = int(kind), int(index)
    if kind == _DLPACK_CPU:
        dev = _device("cpu")
    elif kind in (_DLPACK_CUDA, _DLPACK_CUDA_MANAGED):
        dev = _device("cuda", index)
    else:
        raise RuntimeError(f"from_dlpack: DLPack device type {kind} (index {index}) is not supported; "
                           "expected CPU (1) or CUDA (2, 13)")
    xp = get_backend(dev).xp
    try:
        array = xp.from_dlpack(ext_tensor)
    except (BufferError, TypeError, ValueError) as e:
        raise RuntimeError(f"from_dlpack: could not import the {type(ext_tensor).__name__}: {e}") from None
    from .dtypes import from_numpy_dtype
    try:
        from_numpy_dtype(array.dtype)
    except TypeError as e:
        raise TypeError(f"from_dlpack: {e}") from None
    return Tensor._wrap(array)
