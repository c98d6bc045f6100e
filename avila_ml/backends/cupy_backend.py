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

    # -- random numbers: a Philox stream on the device, state {"seed", "offset"} ----------------
    def seed(self, seed: int) -> None:
        import cupy
        from .philox import PhiloxDraws
        self._seed = int(seed)
        self.rng = PhiloxDraws(cupy, self._seed)

    def initial_seed(self) -> int:
        return self._seed

    def get_rng_state(self):
        """``{"seed": s, "offset": o}``: restoring it replays the stream from this point."""
        return self.rng.get_state()

    def set_rng_state(self, state) -> None:
        self.rng.set_state(state)

    def rand(self, shape, np_dtype):
        import cupy
        with cupy.cuda.Device(self.index):
            return self.rng.rand(shape, np_dtype)

    def randn(self, shape, np_dtype):
        import cupy
        with cupy.cuda.Device(self.index):
            return self.rng.randn(shape, np_dtype)

    def randint(self, low, high, shape, np_dtype):
        import cupy
        with cupy.cuda.Device(self.index):
            return self.rng.randint(low, high, shape, np_dtype)

    def permutation(self, n: int):
        import cupy
        with cupy.cuda.Device(self.index):
            return self.rng.permutation(n)

    @staticmethod
    def scatter_add(target, key, values) -> None:
        """``target[key] += values`` with repeated indices accumulating (``cupyx.scatter_add``)."""
        import cupyx
        cupyx.scatter_add(target, key, values)

    @staticmethod
    def scatter_reduce(target, key, values, how: str) -> None:
        """``target[key] = reduce(target[key], values)`` with repeated indices combining
        (``cupyx.scatter_add``/``scatter_max``/``scatter_min``). CuPy has no scatter-multiply:
        products are applied in rounds, round ``r`` taking the ``r``-th value aimed at each
        target, so no round writes one position twice. ``target`` must be C-contiguous."""
        import cupy
        import cupyx
        if how != "prod":
            {"sum": cupyx.scatter_add, "amax": cupyx.scatter_max, "amin": cupyx.scatter_min}[how](target, key, values)
            return
        idx = cupy.broadcast_arrays(*key)
        lin = cupy.ravel_multi_index(tuple(i.ravel() for i in idx), target.shape)
        vals = cupy.broadcast_to(values, idx[0].shape).ravel()
        order = cupy.argsort(lin)
        lin, vals = lin[order], vals[order]
        rank = cupy.arange(lin.size) - cupy.searchsorted(lin, lin, side="left")
        flat = target.reshape(-1)
        for r in range(int(rank.max()) + 1 if rank.size else 0):
            m = rank == r
            flat[lin[m]] *= vals[m]

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


def erf(x):
    """Elementwise error function of a CuPy array."""
    from cupyx.scipy.special import erf as _erf
    return _erf(x)


CupyBackend.erf = staticmethod(erf)
