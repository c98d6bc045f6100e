"""Threads for the CPU paths that issue many cache-sized BLAS calls (chunked convolution,
blocked attention).

A multi-threaded BLAS synchronises its threads on every call, which costs more than these
small products gain -- and on a busy machine, where a BLAS thread waits for a time slice, many
times more. So while such an op runs, BLAS is pinned to one thread (``threadpoolctl``) and the
independent parts are shared among Python threads instead: NumPy releases the GIL in its copies,
ufuncs and BLAS calls, so everything runs in parallel. Without ``threadpoolctl`` the parts run
in the calling thread with BLAS as configured (announced once).
"""
from __future__ import annotations

import atexit
import warnings
from concurrent.futures import ThreadPoolExecutor

__all__ = ["controller", "rescan", "blas_threads", "run_parts", "run_chunks", "batch_slices", "over_batch"]

_state: dict = {}


def _probe():
    """``(threadpoolctl controller or None, number of BLAS threads)``, probed once."""
    if "ctl" not in _state:
        ctl, n = None, 1
        try:
            from threadpoolctl import ThreadpoolController
            ctl = ThreadpoolController()
            blas = [m for m in ctl.info() if m.get("user_api") == "blas"]
            n = max([int(m.get("num_threads") or 1) for m in blas] + [1])
            if not blas:
                ctl = None
        except Exception:  # noqa: BLE001 - any failure just means "no thread control"
            ctl = None
        if ctl is None:
            warnings.warn("avila_ml: threadpoolctl is not installed; the chunked CPU convolution and blocked "
                          "attention run in one Python thread with BLAS threaded per call, which is slower "
                          "(much slower on a busy machine). `pip install threadpoolctl` fixes it.", stacklevel=4)
        _state["ctl"], _state["n"] = ctl, n
    return _state["ctl"], _state["n"]


def controller():
    """The ``threadpoolctl`` controller, or None when thread control is unavailable."""
    return _probe()[0]


def rescan():
    """A fresh controller (kept for later calls): thread pools of libraries loaded since the
    first probe (SciPy's own OpenBLAS, oneDNN's OpenMP, ...) are invisible to the old one."""
    if _probe()[0] is None:
        return None
    from threadpoolctl import ThreadpoolController
    _state["ctl"] = ThreadpoolController()
    return _state["ctl"]


def blas_threads() -> int:
    """How many threads BLAS was configured with (the parallelism to replace it by)."""
    return _probe()[1]


def _pool(workers: int) -> ThreadPoolExecutor:
    pool = _state.get("pool")
    if pool is None or _state["pool_size"] < workers:
        if pool is not None:
            pool.shutdown(wait=False)
        pool = _state["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="avila-cpu")
        _state["pool_size"] = workers
        if not _state.get("atexit"):
            atexit.register(lambda: _state["pool"].shutdown(wait=False))
            _state["atexit"] = True
    return pool


def run_parts(fn, parts, limit_blas: bool = True) -> list:
    """``[fn(p) for p in parts]``, the parts run concurrently with BLAS on one thread.

    ``fn`` must only write to memory no other part writes (its own buffers, disjoint output
    regions). One part, or no thread control, runs in the calling thread. ``limit_blas=False``
    for parts that never call BLAS (pooling): restoring BLAS's thread count afterwards would
    restart OpenBLAS's worker threads (which then spin) if they were stopped.
    """
    ctl = controller()
    if ctl is None or len(parts) <= 1:
        return [fn(p) for p in parts]
    if not limit_blas:
        # NumPy's OpenBLAS workers spin for a while after each threaded product; one spinning
        # through these parts takes a core from them. Stopped from this (the calling) thread,
        # where no part has started yet: from inside a part the caller counts as a thread that
        # could be in a BLAS call, and they were left spinning (the small GPT's attention
        # forward ran its two parts at 1.05x the one-thread speed). Not for parts that call
        # BLAS (``limit_blas``): there stopped workers made the NumPy attention path 1.9x slower
        from ..cpu_accel import _dnnl
        _dnnl.quiet_blas()

    def run():
        futures = [_pool(len(parts) - 1).submit(fn, p) for p in parts[1:]]
        first = fn(parts[0])
        return [first] + [f.result() for f in futures]
    if not limit_blas:
        return run()
    with ctl.limit(limits=1, user_api="blas"):
        return run()


def run_chunks(body, items, parallel: bool = True) -> list:
    """``body`` over ``items`` split into one strided part per BLAS thread (``run_parts``).

    ``parallel=False`` (non-NumPy arrays, tiny problems) runs one part in this thread.
    """
    ctl, n = _probe()
    if ctl is None:
        return [body(items)]
    n = min(n, len(items)) if parallel else 1
    if n <= 1:
        with ctl.limit(limits=1, user_api="blas"):
            return [body(items)]
    return run_parts(body, [items[i::n] for i in range(n)])


def batch_slices(n: int, size: int, min_size: int) -> list:
    """Slices of a batch of ``n`` for :func:`over_batch`: one per BLAS thread for an array of
    ``size >= min_size`` elements, else (or without thread control, or inside a pool thread,
    whose pool is busy with the other parts) one."""
    import threading
    parts = min(n, blas_threads()) if size >= min_size and controller() is not None else 1
    if threading.current_thread().name.startswith("avila-cpu"):
        parts = 1
    if parts <= 1:
        return [slice(None)]
    step = -(-n // parts)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def over_batch(fn, n: int, size: int, min_size: int = 1 << 18) -> list:
    """``[fn(b) for b in batch_slices(...)]``, concurrently on the pool, for element-wise or
    per-sample work of large NumPy arrays that never calls BLAS: NumPy releases the GIL in its
    ufuncs and copies, so the slices run in parallel (PyTorch's CPU kernels split their loops
    over their threads too). ``fn`` writes only its own slice.

    Example:
        >>> import numpy as np
        >>> from avila_ml.ops._cpu_threads import over_batch
        >>> x, y = np.arange(8.0).reshape(4, 2), np.empty((4, 2))
        >>> _ = over_batch(lambda b: np.negative(x[b], out=y[b]), 4, x.size, min_size=0)
        >>> y[:, 0]
        array([-0., -2., -4., -6.])
    """
    return run_parts(fn, batch_slices(n, size, min_size), limit_blas=False)
