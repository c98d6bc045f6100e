"""``cupy.random`` of the emulated device: CuPy's RandomState API over a NumPy generator.

The numbers differ from a GPU's (cuRAND); what is emulated is the API: device arrays out,
``dtype=`` where CuPy takes it, and no ``get_state``/``set_state`` (CuPy's RandomState has none).
"""
from __future__ import annotations

import numpy as np

from .core import to_numpy_operand, wrap


def _size(size):
    return () if size is None else size


class RandomState:
    """``cupy.random.RandomState(seed)``."""

    def __init__(self, seed=None, method=None):
        self.seed(seed)

    def seed(self, seed=None):
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def random_sample(self, size=None, dtype=float):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"cupy.random: dtype must be float32 or float64, got {dtype}")
        return wrap(np.asarray(self._rng.random(_size(size), dtype=dtype)))

    def rand(self, *size, dtype=float):
        return self.random_sample(size or None, dtype=dtype)

    def standard_normal(self, size=None, dtype=float):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"cupy.random: dtype must be float32 or float64, got {dtype}")
        return wrap(np.asarray(self._rng.standard_normal(_size(size), dtype=dtype)))

    def randn(self, *size, dtype=float):
        return self.standard_normal(size or None, dtype=dtype)

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
        loc, scale = to_numpy_operand(loc), to_numpy_operand(scale)
        if size is None:
            size = np.broadcast_shapes(np.shape(loc), np.shape(scale))
        return wrap((self._rng.normal(loc, scale, size)).astype(dtype))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        low, high = to_numpy_operand(low), to_numpy_operand(high)
        if size is None:
            size = np.broadcast_shapes(np.shape(low), np.shape(high))
        return wrap(self._rng.uniform(low, high, size).astype(dtype))

    def randint(self, low, high=None, size=None, dtype=int):
        return wrap(np.asarray(self._rng.integers(low, high, size=_size(size), dtype=dtype)))

    def permutation(self, num):
        if isinstance(num, (int, np.integer)):
            return wrap(self._rng.permutation(int(num)))
        return wrap(self._rng.permutation(to_numpy_operand(num)))

    def shuffle(self, a):
        self._rng.shuffle(to_numpy_operand(a))

    def binomial(self, n, p, size=None, dtype=int):
        return wrap(np.asarray(self._rng.binomial(to_numpy_operand(n), to_numpy_operand(p), size)).astype(dtype))

    def choice(self, a, size=None, replace=True, p=None):
        return wrap(np.asarray(self._rng.choice(to_numpy_operand(a), size, replace, to_numpy_operand(p))))


_global = RandomState()


def seed(seed=None):
    _global.seed(seed)


def rand(*size, dtype=float):
    return _global.rand(*size, dtype=dtype)


def randn(*size, dtype=float):
    return _global.randn(*size, dtype=dtype)


def random_sample(size=None, dtype=float):
    return _global.random_sample(size, dtype)


def standard_normal(size=None, dtype=float):
    return _global.standard_normal(size, dtype)


def normal(loc=0.0, scale=1.0, size=None, dtype=float):
    return _global.normal(loc, scale, size, dtype)


def uniform(low=0.0, high=1.0, size=None, dtype=float):
    return _global.uniform(low, high, size, dtype)


def randint(low, high=None, size=None, dtype=int):
    return _global.randint(low, high, size, dtype)


def permutation(num):
    return _global.permutation(num)


def get_random_state():
    return _global
