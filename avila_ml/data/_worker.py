"""What runs inside a DataLoader worker process, and what both sides of the queues share.

A worker is seeded once per epoch (``seed = base_seed + worker_id`` for Python's ``random``
and Avila ML's CPU generator; NumPy's global generator gets a ``SeedSequence`` hash of
``(worker_id, base_seed)``, as PyTorch does), then loops: take ``(task_id, indices)`` from its
own index queue, fetch and collate the batch, write ``(task_id, batch)`` to its own result
pipe (framed, large arrays in shared memory: see ``_transport.py``). ``None`` on the index
queue means "exit"; a :class:`_ResumeIteration` means "a new epoch starts" (persistent workers).
"""
from __future__ import annotations

import os
import pickle
import queue
import random
import sys
import traceback
from dataclasses import dataclass
import numpy as np

from ..backends import get_backend
from . import _transport

__all__ = ["WorkerInfo", "get_worker_info"]

# How often an idle worker checks that its parent is still alive (seconds).
_POLL_INTERVAL = 0.5


@dataclass(frozen=True)
class WorkerInfo:
    """What a DataLoader worker knows about itself (``torch.utils.data.get_worker_info()``'s object).

    ``id`` is in ``[0, num_workers)``; ``seed`` is this epoch's seed of the worker
    (``base_seed + id``); ``dataset`` is the worker's own copy of the dataset.

    Example:
        >>> import avila_ml as am
        >>> am.data.WorkerInfo(id=0, num_workers=2, seed=7, dataset=None).num_workers
        2
    """

    id: int
    num_workers: int
    seed: int
    dataset: object


_worker_info: list = [None]


def get_worker_info() -> WorkerInfo | None:
    """The :class:`WorkerInfo` of the current DataLoader worker, or ``None`` in the main
    process (``torch.utils.data.get_worker_info``).

    Use it in an :class:`~avila_ml.data.IterableDataset` to give each worker its own share
    of the stream, or in ``worker_init_fn`` to configure the worker's dataset copy.

    Math: worker ``id`` of ``num_workers`` typically takes samples ``id, id + num_workers, ...``.

    Example:
        >>> import avila_ml as am
        >>> am.data.get_worker_info() is None   # not inside a worker
        True
    """
    return _worker_info[0]


def _seed_everything(seed: int, base_seed: int, worker_id: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and Avila ML's CPU generator."""
    random.seed(seed)
    np.random.seed(np.random.SeedSequence([worker_id, base_seed & 0xFFFFFFFF, base_seed >> 32]).generate_state(4))
    get_backend("cpu").seed(seed % (1 << 64))


class _ResumeIteration:
    """Sent to a persistent worker at the start of a new epoch; echoed back as an acknowledgement."""

    def __init__(self, base_seed: int):
        self.base_seed = base_seed


class _IterableDatasetStopIteration:
    """A worker's replica of an IterableDataset is exhausted."""

    def __init__(self, worker_id: int):
        self.worker_id = worker_id


class ExceptionWrapper:
    """An exception caught in a worker, carried to the main process as type + traceback text."""

    def __init__(self, where: str, exc_info=None):
        exc_type, exc, tb = exc_info if exc_info is not None else sys.exc_info()
        self.exc_type = exc_type
        self.exc_name = exc_type.__name__
        self.exc_msg = "".join(traceback.format_exception(exc_type, exc, tb))
        self.where = where

    def reraise(self):
        """Raise the exception again in this process, the worker's traceback in the message."""
        msg = f"Caught {self.exc_name} {self.where}.\nOriginal {self.exc_msg}"
        if self.exc_type is KeyError:
            # KeyError repr()s its argument, which would print the traceback on one line
            raise _KeyErrorMessage(msg)
        try:
            exc = self.exc_type(msg)
        except Exception:  # noqa: BLE001 - the type may need other constructor arguments
            raise RuntimeError(msg) from None
        raise exc


class _KeyErrorMessage(KeyError):
    def __str__(self):
        return self.args[0]


class _MapFetcher:
    """Fetch and collate the samples at a list of indices (or one index without batching)."""

    def __init__(self, dataset, auto_collation: bool, collate_fn, drop_last: bool):
        self.dataset, self.auto_collation, self.collate_fn = dataset, auto_collation, collate_fn
        getitems = getattr(dataset, "__getitems__", None)
        self.getitems = getitems if callable(getitems) else None

    def fetch(self, index):
        if not self.auto_collation:
            return self.collate_fn(self.dataset[index])
        if self.getitems is not None:
            data = self.getitems(index)
        else:
            data = [self.dataset[i] for i in index]
        return self.collate_fn(data)


class _IterableFetcher:
    """Take the next ``len(index)`` samples of the dataset's stream (one without batching)."""

    def __init__(self, dataset, auto_collation: bool, collate_fn, drop_last: bool):
        self.iterator = iter(dataset)
        self.auto_collation, self.collate_fn, self.drop_last = auto_collation, collate_fn, drop_last
        self.ended = False

    def fetch(self, index):
        if self.ended:
            raise StopIteration
        if not self.auto_collation:
            return self.collate_fn(next(self.iterator))
        data = []
        for _ in index:
            try:
                data.append(next(self.iterator))
            except StopIteration:
                self.ended = True
                break
        if not data or (self.drop_last and len(data) < len(index)):
            raise StopIteration
        return self.collate_fn(data)


def _make_fetcher(iterable: bool, dataset, auto_collation, collate_fn, drop_last):
    cls = _IterableFetcher if iterable else _MapFetcher
    return cls(dataset, auto_collation, collate_fn, drop_last)


def _send(result_conn, task, data, worker_id: int, shm_prefix: str, counter: list) -> None:
    """Pickle here, in the worker's main thread, so an unpicklable batch becomes an error the
    main process sees; large arrays go to shared memory (``_transport.dumps``)."""
    try:
        payload = _transport.dumps((task, data), shm_prefix, counter)
    except Exception:  # noqa: BLE001 - anything pickling raises becomes the batch's error
        err = ExceptionWrapper(f"in DataLoader worker process {worker_id} while sending a batch to the "
                               "main process (the batch could not be pickled or written to shared memory)")
        payload = _transport.dumps((task, _picklable(err)), shm_prefix, counter)
    _transport.send_message(result_conn.fileno(), payload)


def _picklable(err: ExceptionWrapper) -> ExceptionWrapper:
    """The wrapper itself, or with ``RuntimeError`` as its type if the type can't be pickled."""
    try:
        pickle.dumps(err.exc_type)
    except Exception:  # noqa: BLE001 - e.g. a class defined inside a function
        err.exc_type = RuntimeError
    return err


def _worker_loop(iterable: bool, dataset, index_queue, result_conn, done_flag, auto_collation: bool,
                 collate_fn, drop_last: bool, base_seed: int, init_fn, worker_id: int, num_workers: int,
                 shm_prefix: str) -> None:
    """The body of a worker process (the target of ``multiprocessing.Process``).

    ``result_conn`` is this worker's own pipe to the main process; ``done_flag`` a lock-free
    shared byte (a lock would stay held forever if a worker were killed while holding it);
    ``shm_prefix`` names this worker's shared-memory batch files.
    """
    where = f"in DataLoader worker process {worker_id}"
    counter = [0]
    _transport.set_worker_files(shm_prefix, counter)
    parent_pid = os.getppid()  # if this changes, the main process died without shutting us down
    try:
        seed = base_seed + worker_id
        _seed_everything(seed, base_seed, worker_id)
        _worker_info[0] = WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed, dataset=dataset)
        init_error = fetcher = None
        try:
            if init_fn is not None:
                init_fn(worker_id)
            fetcher = _make_fetcher(iterable, dataset, auto_collation, collate_fn, drop_last)
        except Exception:  # noqa: BLE001 - reported with the batches of this worker
            init_error = _picklable(ExceptionWrapper(where))
        iteration_end = False
        while True:
            if os.getppid() != parent_pid:
                break
            try:
                r = index_queue.get(timeout=_POLL_INTERVAL)
            except queue.Empty:
                continue
            if r is None:
                break
            if isinstance(r, _ResumeIteration):
                seed = r.base_seed + worker_id
                _seed_everything(seed, r.base_seed, worker_id)
                _worker_info[0] = WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed, dataset=dataset)
                iteration_end = False
                if init_error is None:
                    try:
                        fetcher = _make_fetcher(iterable, dataset, auto_collation, collate_fn, drop_last)
                    except Exception:  # noqa: BLE001
                        init_error = _picklable(ExceptionWrapper(where))
                _send(result_conn, r, None, worker_id, shm_prefix, counter)
                continue
            if done_flag.value or iteration_end:
                continue  # shutting down, or nothing left to give this epoch
            task, index = r
            if init_error is not None:
                data = init_error  # every batch of this worker fails the same way
            else:
                try:
                    data = fetcher.fetch(index)
                except StopIteration:
                    if not iterable:
                        data = _picklable(ExceptionWrapper(where))
                    else:
                        data = _IterableDatasetStopIteration(worker_id)
                        iteration_end = True
                except Exception:  # noqa: BLE001 - re-raised in the main process
                    data = _picklable(ExceptionWrapper(where))
            _send(result_conn, task, data, worker_id, shm_prefix, counter)
            del data, r
    except KeyboardInterrupt:
        pass  # the main process sees Ctrl-C too and shuts us down
    except BrokenPipeError:
        pass  # the main process closed our pipe: it is shutting down (or gone)
    if os.getppid() != parent_pid:
        # the main process died without cleaning up: remove the batches it will never read
        _transport.remove_files(shm_prefix)
    result_conn.close()
