"""The CPU backend: NumPy arrays, a PCG64 generator, and scatter-add via ``bincount``."""
from __future__ import annotations

import numpy as np

from .device import device

DEFAULT_SEED = 67280421310721  # PyTorch's default initial seed


class PCG64Draws:
    """The random draws the tensor factories ask of a generator, from ``self.rng`` (a NumPy
    ``Generator``). Shared by the CPU backend and :class:`avila_ml.data.Generator`."""

    def rand(self, shape, np_dtype):
        """A NumPy array of U[0, 1) samples (what ``am.rand`` calls)."""
        if np_dtype in (np.float32, np.float64):
            return self.rng.random(shape, dtype=np_dtype)
        return self.rng.random(shape).astype(np_dtype)

    def randn(self, shape, np_dtype):
        """A NumPy array of N(0, 1) samples (what ``am.randn`` calls)."""
        if np_dtype in (np.float32, np.float64):
            return self.rng.standard_normal(shape, dtype=np_dtype)
        return self.rng.standard_normal(shape).astype(np_dtype)

    def randint(self, low, high, shape, np_dtype):
        """A NumPy array of integers uniform in ``[low, high)`` (what ``am.randint`` calls)."""
        return self.rng.integers(low, high, size=shape, dtype=np_dtype)

    def permutation(self, n: int):
        """A uniform random permutation of ``0..n-1`` (what ``am.randperm`` calls)."""
        return self.rng.permutation(n)


_INDEX_ADD_LOOP = 64  # index_add: up to this many entries, one slice add per entry
_INDEX_ADD_KERNEL_MIN = 1 << 14  # index_add: values from this size try the compiled kernel


def _index_in_range(index, n, axis):
    """``index`` as a non-negative integer array (negative entries counted from the end of a
    dim of size ``n``), or IndexError naming the offending range."""
    index = np.asarray(index)
    lo, hi = index.min(), index.max()
    if lo < -n or hi >= n:
        raise IndexError(f"index_add: an index is out of bounds for dimension {axis} of size {n} "
                         f"(indices from {lo} to {hi})")
    return np.where(index < 0, index + n, index) if lo < 0 else index


class NumpyBackend(PCG64Draws):
    """Array namespace and RNG for ``device("cpu")``."""

    name = "numpy"
    xp = np

    def __init__(self):
        self.device = device("cpu")
        self.seed(DEFAULT_SEED)

    # -- random numbers --------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        self._seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self._seed))

    def initial_seed(self) -> int:
        return self._seed

    def get_rng_state(self):
        return self.rng.bit_generator.state

    def set_rng_state(self, state) -> None:
        self.rng.bit_generator.state = state

    # -- kernels the generic array API does badly ------------------------------------------
    @staticmethod
    def scatter_add(target, key, values) -> None:
        """``target[key] += values`` where repeated indices accumulate (``np.add.at``).

        Integer-array keys are flattened to linear indices and summed with ``bincount``,
        which is tens of times faster than ``np.add.at``.
        """
        if target.dtype.kind == "f" and isinstance(key, tuple) and len(key) == target.ndim and all(
            isinstance(k, np.ndarray) and k.dtype.kind in "iu" for k in key
        ):
            # the result shape is the keys' broadcast shape: no gather of target[key] to learn it
            idx = np.broadcast_arrays(*key)
            if len(idx) == 1:  # a flat target (max pooling's adjoint): the key is the linear index
                lin = idx[0].ravel()
                if lin.size and (lin.min() < 0 or lin.max() >= target.size):
                    lin = lin % target.size  # what ravel_multi_index's mode="wrap" gives
            else:
                lin = np.ravel_multi_index(tuple(i.ravel() for i in idx), target.shape, mode="wrap")
            sums = np.bincount(lin, weights=np.broadcast_to(values, idx[0].shape).ravel(), minlength=target.size)
            flat = target.reshape(-1) if target.flags.c_contiguous else None
            if flat is not None:
                flat += sums.astype(target.dtype, copy=False)
            else:
                target += sums.reshape(target.shape).astype(target.dtype, copy=False)
            return
        values = np.broadcast_to(values, target[key].shape) if np.ndim(values) else values
        np.add.at(target, key, values)

    @staticmethod
    def scatter_reduce(target, key, values, how: str) -> None:
        """``target[key] = reduce(target[key], values)`` with repeated indices combining;
        ``how`` is "sum", "prod", "amax" or "amin" (``np.<ufunc>.at``)."""
        _REDUCE_UFUNC[how].at(target, key, values)

    @staticmethod
    def index_add(target, axis, index, values) -> None:
        """``target[..., index, ...] += values`` along ``axis``, repeated indices accumulating.

        Along the first axis, C-contiguous float32/float64 arrays of at least
        ``_INDEX_ADD_KERNEL_MIN`` values take the compiled kernel (``_native.index_add_rows``:
        bitwise ``np.add.at``, threads owning blocks of rows; (512 x 2048 -> 128) float32 0.047
        ms against 1.2-2.3 ms on the paths below, one process, 2 threads). Otherwise: a short index (at most ``_INDEX_ADD_LOOP`` entries, slices of at least 256 elements:
        the wrap-around copies of circular padding) adds one slice per entry, in order, on
        views (no copy of ``values``; exact, NaN included): in the Conv4d example's circular
        padding this ran 2-3x faster than the one-hot product it replaced there (in-process,
        loaded machine).
        Longer small maps use a one-hot matrix product, which runs on BLAS; large ones
        (embeddings), and values holding a NaN or inf (in the product 0 * NaN would spread it to
        every row of its column), sum each index's rows as a segment of the index-sorted values
        (``np.add.reduceat``) and add the sums once per distinct index: the small GPT's token
        embedding gradient (512 x 2048 -> 128) 3.6 -> 1.3 ms, the word LM's (10000 x 700 -> 200)
        1.9 -> 1.0 ms against ``np.add.at`` / the one-hot product (one thread, loaded machine).
        """
        t = np.moveaxis(target, axis, 0)
        v = np.moveaxis(values, axis, 0)
        n, m = t.shape[0], index.shape[0]
        if axis == 0 and m and v.size >= _INDEX_ADD_KERNEL_MIN:
            from ..cpu_accel import _native
            # the compiled kernel (C-contiguous float arrays): threads own blocks of rows, each
            # row gets its entries in index order (np.add.at's bits); the small GPT's token and
            # position embedding gradients took 2.4 ms a step on the paths below
            index = _index_in_range(index, n, axis)
            if _native.index_add_rows(target, index, values):
                return
        if m <= _INDEX_ADD_LOOP and v.size >= 256 * m:  # slices big enough to outweigh a Python loop
            for i, j in enumerate(np.asarray(index).tolist()):
                t[j] += v[i]  # distinct calls: a repeated index accumulates
            return
        if target.dtype.kind == "f" and n * m <= (1 << 18) and v.size and np.isfinite(v).all():
            onehot = np.zeros((n, m), dtype=target.dtype)
            onehot[index, np.arange(m)] = 1
            t += (onehot @ v.reshape(m, -1)).reshape(t.shape)
        elif m and v.size:
            index = _index_in_range(index, n, axis)  # (-1 and n - 1 are one segment)
            order = np.argsort(index, kind="stable")
            ordered = index[order]
            starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
            t[ordered[starts]] += np.add.reduceat(v[order], starts, axis=0)

    @staticmethod
    def to_numpy(array):
        return array

    @staticmethod
    def from_numpy(array):
        return np.asarray(array)

    @staticmethod
    def synchronize() -> None:
        return None

    # -- host-to-device copies kept in flight (DevicePrefetcher): nothing to overlap on the CPU
    @staticmethod
    def copy_context():
        """Context in which a prefetcher issues its copies (the CPU: none needed)."""
        import contextlib
        return contextlib.nullcontext()

    @staticmethod
    def record_copy():
        """A marker the consumer waits on before using the copies (the CPU: none)."""
        return None

    @staticmethod
    def wait_copy(event) -> None:
        """Make later work wait for the copies behind ``event`` (the CPU: already done)."""
        return None


def _erf_numpy():
    """``erf`` for NumPy arrays: SciPy's when installed, else ``math.erf`` per element (announced)."""
    try:
        from scipy.special import erf
        return erf
    except ImportError:  # pragma: no cover - scipy is present wherever the test extra is
        import math
        import warnings
        warnings.warn("avila_ml: SciPy not installed; erf/GELU(exact) on the CPU use a slow "
                      "per-element math.erf. `pip install scipy` makes them fast.", stacklevel=3)
        vec = np.vectorize(math.erf, otypes=[np.float64])
        return lambda x: vec(x).astype(x.dtype, copy=False)


_erf = []


def erf(x):
    """Elementwise error function of a NumPy array, in its dtype: float32 by the vectorised
    rational formula of ``_erf_float32`` (a few ulps, about 5x faster than SciPy's float32 erf,
    which computes in float64 element by element), other dtypes by SciPy."""
    if getattr(x, "dtype", None) == np.float32 and x.size:
        from ._erf_float32 import erf as erf32
        return erf32(x)
    if not _erf:
        _erf.append(_erf_numpy())
    out = _erf[0](x)
    return out.astype(x.dtype, copy=False)


NumpyBackend.erf = staticmethod(erf)


_REDUCE_UFUNC = {"sum": np.add, "prod": np.multiply, "amax": np.maximum, "amin": np.minimum}
