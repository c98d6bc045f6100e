"""Counters of the transfers a real GPU would make: device->host syncs and host->device copies.

Every place where CuPy would block the host on the device (``.get()``, ``cupy.asnumpy``,
``float(x)``, ``bool(x)``, ``.item()``, ``.tolist()``, boolean-mask indexing, ``nonzero``,
``unique``, ...) records a *sync*; every place where CuPy copies host data to the device
(``cupy.asarray(numpy_array)``, indexing with a NumPy array or a list, ``x[...] = numpy_array``)
records an *h2d* copy. Each is keyed by the call site: the first stack frame outside the
emulator, e.g. ``avila_ml/ops/loss.py:267``.

Example (a test asserting a sync-free training step)::

    with count_transfers() as log:
        train_step()
    assert log.syncs == {}, log.report()
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter

_HERE = os.path.dirname(os.path.abspath(__file__))
_active: list["TransferLog"] = []


class TransferLog:
    """The syncs and host->device copies recorded while a :func:`count_transfers` block ran."""

    def __init__(self):
        self.syncs: Counter = Counter()   # "file:line (what)" -> count
        self.h2d: Counter = Counter()

    def report(self) -> str:
        """A readable list of every call site and its count."""
        lines = [f"  sync {n}x at {site}" for site, n in self.syncs.most_common()]
        lines += [f"  h2d  {n}x at {site}" for site, n in self.h2d.most_common()]
        return "\n".join(lines) or "  (none)"


def _call_site() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_HERE) and "/numpy/" not in path:
            break
        frame = frame.f_back
    if frame is None:  # pragma: no cover - always called from somewhere outside
        return "<unknown>"
    path = frame.f_code.co_filename
    parts = path.replace(os.sep, "/").split("/")
    for anchor in ("avila_ml", "tests", "examples", "benchmarks"):
        if anchor in parts:
            path = "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor):])
            break
    return f"{path}:{frame.f_lineno}"


def record_sync(what: str) -> None:
    """Note a device->host synchronisation at the caller's call site."""
    if _active:
        site = f"{_call_site()} ({what})"
        for log in _active:
            log.syncs[site] += 1


def record_h2d(what: str) -> None:
    """Note a host->device copy at the caller's call site."""
    if _active:
        site = f"{_call_site()} ({what})"
        for log in _active:
            log.h2d[site] += 1


@contextlib.contextmanager
def count_transfers():
    """Record the syncs and host->device copies of the block into a :class:`TransferLog`."""
    log = TransferLog()
    _active.append(log)
    try:
        yield log
    finally:
        _active.remove(log)
