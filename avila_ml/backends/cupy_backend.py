"""The GPU backend: CuPy arrays on one CUDA device.

``avila_ml.backends`` creates a :class:`CupyBackend` only after it has checked that CuPy is
installed and sees a GPU. CuPy itself is imported inside the methods (an import of an already
loaded module is a dictionary lookup), so this module can be imported, e.g. by the doctest
collector, on machines without CuPy.
"""
from __future__ import annotations

import numpy as np

from .device import device
from .numpy_backend import DEFAULT_SEED


class CupyBackend:
    """Array namespace and RNG for ``device("cuda:N")``."""

    name = "cupy"

    def __init__(self, index: int):
        import cupy
        self.xp = cupy
        self.index = index
        self.device = device("cuda", index)
        self.seed(DEFAULT_SEED)

    # -- random numbers --------------------------------------------------------------------
    # A curand generator's position cannot be read back, so the state is ours: (seed, n), and
    # draw number n comes from a generator re-seeded with a mix of (seed, n). get_rng_state /
    # set_rng_state are then exact, which activation checkpointing needs to redraw the same
    # dropout masks. Philox re-seeds without an initialisation kernel, so this costs two
    # host calls per draw.
    def seed(self, seed: int) -> None:
        self._seed = int(seed)
        self._draws = 0

    def initial_seed(self) -> int:
        return self._seed

    def get_rng_state(self):
        return (self._seed, self._draws)

    def set_rng_state(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            self._seed, self._draws = int(state[0]), int(state[1])
        else:  # a bare seed, as this backend returned before it tracked draws
            self.seed(state)

    def _next_generator(self):
        import cupy
        from cupy_backends.cuda.libs import curand
        gen = getattr(self, "_gen", None)
        if gen is None:
            with cupy.cuda.Device(self.index):
                gen = self._gen = cupy.random.RandomState(0, method=curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
        gen.seed(_mix64(self._seed, self._draws))
        self._draws += 1
        return gen

    def rand(self, shape, np_dtype):
        import cupy
        with cupy.cuda.Device(self.index):
            dt = np_dtype if np_dtype in (np.float32, np.float64) else np.float32
            return self._next_generator().random_sample(shape, dtype=dt).astype(np_dtype, copy=False)

    def randn(self, shape, np_dtype):
        import cupy
        with cupy.cuda.Device(self.index):
            dt = np_dtype if np_dtype in (np.float32, np.float64) else np.float32
            return self._next_generator().standard_normal(shape, dtype=dt).astype(np_dtype, copy=False)

    def randint(self, low, high, shape, np_dtype):
        import cupy
        with cupy.cuda.Device(self.index):
            return self._next_generator().randint(low, high, size=shape, dtype=np_dtype)

    def permutation(self, n: int):
        import cupy
        with cupy.cuda.Device(self.index):
            return self._next_generator().permutation(n)

    @staticmethod
    def scatter_add(target, key, values) -> None:
        """``target[key] += values`` with repeated indices accumulating (``cupyx.scatter_add``)."""
        import cupyx
        cupyx.scatter_add(target, key, values)

    @staticmethod
    def index_add(target, axis, index, values) -> None:
        """``target[..., index, ...] += values`` along ``axis`` (``cupyx.scatter_add``)."""
        import cupy
        import cupyx
        t = cupy.moveaxis(target, axis, 0)
        v = cupy.moveaxis(values, axis, 0)
        cupyx.scatter_add(t, index, v)

    def to_numpy(self, array):
        import cupy
        return cupy.asnumpy(array)

    def from_numpy(self, array):
        import cupy
        with cupy.cuda.Device(self.index):
            return cupy.asarray(array)

    def from_numpy_async(self, array):
        """Host-to-device copy queued on the current stream (``non_blocking=True``).

        Asynchronous with respect to the host only when ``array`` lies in pinned memory
        (:meth:`pin`); the caller must keep ``array`` unchanged until the stream reaches the copy.
        """
        import cupy
        with cupy.cuda.Device(self.index):
            out = cupy.empty(array.shape, dtype=array.dtype)
            out.set(np.ascontiguousarray(array), stream=cupy.cuda.get_current_stream())
            return out

    @staticmethod
    def pin(array):
        """A copy of the NumPy ``array`` in page-locked (pinned) host memory."""
        import cupyx
        out = cupyx.empty_pinned(array.shape, dtype=array.dtype)
        out[...] = array
        return out

    # -- host-to-device copies kept in flight (DevicePrefetcher) --------------------------------
    def _copy_stream(self):
        import cupy
        stream = getattr(self, "_copy_stream_obj", None)
        if stream is None:
            with cupy.cuda.Device(self.index):
                stream = self._copy_stream_obj = cupy.cuda.Stream(non_blocking=True)
        return stream

    def copy_context(self):
        """Issue copies on a side stream, so they overlap kernels queued on the current one."""
        return self._copy_stream()

    def record_copy(self):
        """An event recorded on the side stream after the copies."""
        return self._copy_stream().record()

    def wait_copy(self, event) -> None:
        """Make the current stream wait (on the GPU, not the host) for ``event``'s copies."""
        import cupy
        cupy.cuda.get_current_stream().wait_event(event)

    def synchronize(self) -> None:
        import cupy
        with cupy.cuda.Device(self.index):
            cupy.cuda.Stream.null.synchronize()


def _mix64(seed: int, n: int) -> int:
    """SplitMix64 of ``seed + n * golden``: well-spread 64-bit seeds for consecutive draws."""
    m = (1 << 64) - 1
    z = (seed + (n + 1) * 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def erf(x):
    """Elementwise error function of a CuPy array."""
    from cupyx.scipy.special import erf as _erf
    return _erf(x)


CupyBackend.erf = staticmethod(erf)
