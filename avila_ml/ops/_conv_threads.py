"""Threads for the chunked CPU convolution.

The implicit GEMM issues thousands of cache-sized BLAS calls. A multi-threaded BLAS
synchronises its threads on every call, which costs more than these small products gain --
and on a busy machine, where a BLAS thread waits for a time slice, many times more. So while
a convolution runs, BLAS is pinned to one thread (``threadpoolctl``) and the chunks are shared
among that many Python threads instead: NumPy releases the GIL in its copies and BLAS calls,
so the gathers run in parallel too. Without ``threadpoolctl`` the chunks run in the calling
thread with BLAS as configured (announced once).
"""
from __future__ import annotations

import atexit
import warnings
from concurrent.futures import ThreadPoolExecutor

_state: dict = {}


def _controller():
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
            warnings.warn("avila_ml: threadpoolctl is not installed; the chunked CPU convolution runs in one "
                          "Python thread with BLAS threaded per call, which is slower (much slower on a busy "
                          "machine). `pip install threadpoolctl` fixes it.", stacklevel=4)
        _state["ctl"], _state["n"] = ctl, n
    return _state["ctl"], _state["n"]


def _pool(n):
    pool = _state.get("pool")
    if pool is None:
        pool = _state["pool"] = ThreadPoolExecutor(max_workers=max(1, n - 1), thread_name_prefix="avila-conv")
        atexit.register(pool.shutdown, wait=False)
    return pool


def run_chunks(body, items, parallel: bool = True):
    """``[body(part) for part in split(items)]``, the parts run concurrently.

    ``body`` must only write to memory no other part writes (its own buffers, disjoint output
    regions). ``parallel=False`` (non-NumPy arrays, tiny problems) runs one part in this thread.
    """
    ctl, n = _controller()
    if ctl is None:
        return [body(items)]
    n = min(n, len(items)) if parallel else 1
    with ctl.limit(limits=1, user_api="blas"):
        if n <= 1:
            return [body(items)]
        parts = [items[i::n] for i in range(n)]
        futures = [_pool(n).submit(body, p) for p in parts[1:]]
        first = body(parts[0])
        return [first] + [f.result() for f in futures]
