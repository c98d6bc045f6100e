"""``Size``: the type of ``Tensor.shape`` (``torch.Size``), a tuple of ints."""
from __future__ import annotations

import math

__all__ = ["Size"]


class Size(tuple):
    """The sizes of a tensor's dimensions: a ``tuple`` of ints (``torch.Size``).

    It compares, hashes, indexes and unpacks like the tuple it is (``x.shape == (2, 3)``),
    and adds :meth:`numel`. It prints as a plain tuple, so printed shapes read the same as
    NumPy's (PyTorch prints ``torch.Size([2, 3])``). Slicing returns a ``Size``.

    Math: ``numel() = prod(sizes)`` (1 for ``Size([])``).

    Example:
        >>> import avila_ml as am
        >>> s = am.zeros(2, 3).shape
        >>> isinstance(s, am.Size), s == (2, 3), s.numel(), s[1:]
        (True, True, 6, (3,))
        >>> am.Size([4, 5])
        (4, 5)
    """

    __slots__ = ()

    def __new__(cls, sizes=()):
        try:
            vals = tuple(int(s.__index__()) for s in sizes)
        except (AttributeError, TypeError):
            raise TypeError(f"Size: expected a sequence of ints, got {sizes!r}") from None
        return tuple.__new__(cls, vals)

    def numel(self) -> int:
        """The number of elements of a tensor of this shape (``torch.Size.numel``)."""
        return math.prod(self)

    def __getitem__(self, key):
        out = tuple.__getitem__(self, key)
        return tuple.__new__(Size, out) if isinstance(key, slice) else out

    def __add__(self, other):
        return tuple.__new__(Size, tuple.__add__(self, tuple(other)))

    def __reduce__(self):
        return (Size, (tuple(self),))
