"""PyTorch's legacy constructors: ``Tensor(2, 3)``, ``Tensor([1, 2])``, ``FloatTensor``,
``DoubleTensor``, ``HalfTensor``, ``LongTensor``, ``IntTensor``, ``BoolTensor``, ``ByteTensor``.

Old scripts still write ``torch.FloatTensor(3, 4)`` or ``torch.LongTensor([1, 2])``. Integers
give a shape (the tensor is filled with zeros here; PyTorch leaves it uninitialised), a list
or number gives the data. ``isinstance(t, am.FloatTensor)`` is true for a float32 CPU tensor,
as in PyTorch.
"""
from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from .backends import get_backend, get_default_device
from .size import Size
from .tensor import Tensor

__all__ = ["FloatTensor", "DoubleTensor", "HalfTensor", "LongTensor", "IntTensor", "ShortTensor",
           "CharTensor", "ByteTensor", "BoolTensor"]


def legacy_array(args: tuple, dtype, device, op: str):
    """The array for ``op(*args)``: sizes -> zeros of that shape, else data converted."""
    dt = _dt.get_default_dtype() if dtype is None else _dt.to_dtype(dtype)
    b = get_backend(get_default_device() if device is None else device)
    if not args:
        return b.xp.zeros((0,), dtype=dt.np)
    if len(args) == 1 and type(args[0]) is Size:
        args = tuple(args[0])
    if all(isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_)) for a in args):
        if any(a < 0 for a in args):
            raise RuntimeError(f"{op}: negative dimension in size {tuple(int(a) for a in args)}")
        return b.xp.zeros(tuple(int(a) for a in args), dtype=dt.np)
    if len(args) != 1:
        raise TypeError(f"{op}: expected sizes (ints) or one sequence of data, got {args!r}")
    data = args[0]
    if isinstance(data, Tensor):
        data = data.array
    if isinstance(data, (float, complex, bool)):
        raise TypeError(f"{op}: a single number is read as a size and must be an int, got {data!r} "
                        "(wrap data in a list: Tensor([x]))")
    from .factories import _convert
    return _convert(data, dt, device, copy=True)


class _LegacyType(type):
    """Calling the class builds a plain :class:`Tensor` of the class's dtype;
    ``isinstance`` checks dtype and device (a CPU tensor of that dtype)."""

    def __call__(cls, *args, device=None):
        return Tensor._wrap(legacy_array(args, cls.dtype, device, cls.__name__))

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, Tensor) and obj.dtype is cls.dtype and not obj.is_cuda


def _legacy(name: str, dt, torch_name: str, example: str):
    doc = (f"A {dt.name} tensor from sizes or data (``torch.{torch_name}``).\n\n"
           f"    ``{name}(2, 3)`` is ``zeros(2, 3, dtype={dt.name})`` (PyTorch leaves it\n"
           f"    uninitialised); ``{name}([...])`` copies the data to {dt.name}.\n\n"
           "    Example:\n"
           "        >>> import avila_ml as am\n"
           f"{example}")
    return _LegacyType(name, (), {"dtype": dt, "__doc__": doc, "__module__": __name__})


FloatTensor = _legacy("FloatTensor", _dt.float32, "FloatTensor",
                      "        >>> am.FloatTensor([1, 2]), am.FloatTensor(2, 3).shape\n"
                      "        (tensor([1., 2.]), (2, 3))\n")
DoubleTensor = _legacy("DoubleTensor", _dt.float64, "DoubleTensor",
                       "        >>> am.DoubleTensor([0.5]).dtype\n        avila_ml.float64\n")
HalfTensor = _legacy("HalfTensor", _dt.float16, "HalfTensor",
                     "        >>> am.HalfTensor(2).dtype\n        avila_ml.float16\n")
LongTensor = _legacy("LongTensor", _dt.int64, "LongTensor",
                     "        >>> am.LongTensor([1, 2]), isinstance(am.tensor([3]), am.LongTensor)\n"
                     "        (tensor([1, 2]), True)\n")
IntTensor = _legacy("IntTensor", _dt.int32, "IntTensor",
                    "        >>> am.IntTensor([1]).dtype\n        avila_ml.int32\n")
ShortTensor = _legacy("ShortTensor", _dt.int16, "ShortTensor",
                      "        >>> am.ShortTensor([1]).dtype\n        avila_ml.int16\n")
CharTensor = _legacy("CharTensor", _dt.int8, "CharTensor",
                     "        >>> am.CharTensor([1]).dtype\n        avila_ml.int8\n")
ByteTensor = _legacy("ByteTensor", _dt.uint8, "ByteTensor",
                     "        >>> am.ByteTensor([1, 255]).dtype\n        avila_ml.uint8\n")
BoolTensor = _legacy("BoolTensor", _dt.bool, "BoolTensor",
                     "        >>> am.BoolTensor([1, 0])\n        tensor([ True, False])\n")
