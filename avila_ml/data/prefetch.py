"""``DevicePrefetcher``: keep the next batch's host-to-device copy in flight while the current
batch is being used (the ``data_prefetcher`` pattern of NVIDIA's examples; PyTorch has no
public class for it).

With ``DataLoader(pin_memory=True)`` the batches arrive in page-locked host memory, so
``Tensor.to("cuda", non_blocking=True)`` only queues the copy. The prefetcher queues the copy of
batch ``k + 1`` on a side stream before it hands out batch ``k``; the compute stream waits for
that copy on the GPU (an event), not on the host. On the CPU there is nothing to copy: the
prefetcher still reads one batch ahead (so the next batch is ready when asked for) and
``to("cpu")`` is a no-op.
"""
from __future__ import annotations

import collections.abc

from ..backends import get_backend
from ..tensor import Tensor

__all__ = ["DevicePrefetcher"]

_END = object()


def _to_device(data, device, non_blocking):
    if isinstance(data, Tensor):
        return data.to(device, non_blocking=non_blocking)
    if isinstance(data, collections.abc.Mapping):
        return type(data)({k: _to_device(v, device, non_blocking) for k, v in data.items()})
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(_to_device(d, device, non_blocking) for d in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_to_device(d, device, non_blocking) for d in data)
    return data


class DevicePrefetcher:
    """Iterate over ``loader`` with every batch already on ``device`` and the next one's copy
    in flight (no PyTorch counterpart; the prefetcher of NVIDIA's training examples).

    Math: while batch ``k`` is used, batch ``k + 1`` is read from ``loader`` and its copy queued;
    at most one batch is ahead.

    Example:
        >>> import avila_ml as am
        >>> loader = am.data.DataLoader(am.data.TensorDataset(am.arange(6.0)), batch_size=2)
        >>> [b[0].tolist() for b in am.data.DevicePrefetcher(loader, "cpu")]
        [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    """

    def __init__(self, loader, device="cuda", non_blocking: bool = True):
        self.loader = loader
        self.device = device
        self.non_blocking = bool(non_blocking)
        self._backend = get_backend(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return _PrefetchIter(self)


class _PrefetchIter:
    def __init__(self, owner):
        self.owner = owner
        self.source = iter(owner.loader)
        self.pending = None  # (batch on the device, event) of the batch in flight
        self._preload()

    def _preload(self):
        b = self.owner._backend
        try:
            host = next(self.source)
        except StopIteration:
            self.pending = (_END, None)
            return
        with b.copy_context():
            batch = _to_device(host, self.owner.device, self.owner.non_blocking)
            event = b.record_copy()
        self.pending = (batch, event)

    def __iter__(self):
        return self

    def __next__(self):
        batch, event = self.pending
        if batch is _END:
            raise StopIteration
        self.owner._backend.wait_copy(event)
        self._preload()  # the next copy starts before this batch is used
        return batch
