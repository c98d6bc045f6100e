"""``DataLoader``: batches from a dataset, in the main process or in worker processes.

The main process owns the sampler: it draws the indices of every batch, sends each batch of
indices to a worker (round robin over the workers' index queues, at most
``prefetch_factor * num_workers`` batches in flight), and hands the results back in the order
it sent them (a reorder buffer keyed by task number). So the batch order depends only on the
sampler, never on ``num_workers`` or on which worker finishes first.

Randomness: at every ``iter(loader)`` one 63-bit ``base_seed`` is drawn from the loader's
generator (or from the global generator that :func:`avila_ml.manual_seed` seeds), whatever
``num_workers``. Worker ``k`` then seeds Python's ``random`` and Avila ML's CPU generator
with ``base_seed + k`` and NumPy's global generator with a hash of ``(k, base_seed)``, so
random augmentations differ between workers and repeat exactly under the same seed.
"""
from __future__ import annotations

import collections.abc
import itertools
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import secrets
import signal
import sys
import time
import warnings
import weakref

from ..backends import cuda_is_available
from ..tensor import Tensor
from . import _transport
from ._worker import (
    ExceptionWrapper, _IterableDatasetStopIteration, _make_fetcher, _POLL_INTERVAL, _ResumeIteration,
    _worker_loop,
)
from .collate import default_collate, default_convert
from .dataset import IterableDataset
from .sampler import (
    BatchSampler, Generator, RandomSampler, SequentialSampler, _as_generator, _draw_seed,
    _InfiniteConstantSampler,
)

__all__ = ["DataLoader"]

# How long shutdown waits for the workers to exit by themselves before terminating them (s).
_JOIN_TIMEOUT = 2.0


def _default_context():
    """'fork' on Linux (fast start, no pickling of the dataset), else 'spawn'."""
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _resolve_context(ctx):
    if ctx is None:
        return _default_context()
    if isinstance(ctx, str):
        methods = mp.get_all_start_methods()
        if ctx not in methods:
            raise ValueError(f"DataLoader: multiprocessing_context {ctx!r} is not a start method of this "
                             f"platform; choose from {methods}")
        return mp.get_context(ctx)
    if isinstance(ctx, mp.context.BaseContext):
        return ctx
    raise TypeError(f"DataLoader: multiprocessing_context must be a start method name or a "
                    f"multiprocessing context, got {type(ctx).__name__}")


class DataLoader:
    """Iterate over a dataset in batches, optionally shuffled and loaded by worker processes
    (``torch.utils.data.DataLoader``).

    Arguments follow PyTorch and are validated the same way: ``sampler`` excludes ``shuffle``;
    ``batch_sampler`` excludes ``batch_size``, ``shuffle``, ``sampler`` and ``drop_last``;
    ``batch_size=None`` disables batching (each sample goes through :func:`default_convert`);
    an :class:`~avila_ml.data.IterableDataset` takes no sampler or shuffle.
    ``prefetch_factor`` (default 2) and ``persistent_workers`` need ``num_workers > 0``.

    Beyond PyTorch: ``seed=`` (an int) is a shortcut for ``generator=Generator().manual_seed(seed)``;
    ``generator`` accepts an int seed too. An empty map-style dataset is rejected at
    construction. With ``persistent_workers`` the workers are re-seeded at every epoch from that
    epoch's ``base_seed``, so a persistent loader yields exactly what a non-persistent one does.

    Workers are ``multiprocessing`` processes ('fork' on Linux, else 'spawn'; choose with
    ``multiprocessing_context``), daemonic, and shut down when the iteration ends, when the
    iterator is dropped (``break``, ``del``, garbage collection) or when the loader is
    dropped (persistent workers). Workers must not use CUDA (a forked process cannot), so a
    dataset that holds CUDA tensors needs ``num_workers=0``; move batches to the GPU in the
    training loop instead. An exception in a worker is raised again in the main process
    with the worker's traceback in the message; a worker that dies raises a ``RuntimeError``;
    ``timeout > 0`` raises a ``RuntimeError`` when a batch takes longer (with workers only, as
    in PyTorch). ``pin_memory`` copies CPU tensors of each batch into page-locked memory when a
    CUDA device is present, and warns and does nothing otherwise.

    Math: with ``n`` samples and batch size ``b``, ``len(loader) = floor(n / b)`` when
    ``drop_last`` else ``ceil(n / b)``.

    Example:
        >>> import avila_ml as am
        >>> ds = am.data.TensorDataset(am.arange(10.0), am.arange(10))
        >>> loader = am.data.DataLoader(ds, batch_size=4, shuffle=True, seed=0)
        >>> len(loader), [y.shape for x, y in loader]
        (3, [(4,), (4,), (2,)])
        >>> [x.tolist() for x, _ in am.data.DataLoader(ds, batch_size=5, num_workers=2)]
        [[0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0]]
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = False, sampler=None,
                 batch_sampler=None, num_workers: int = 0, collate_fn=None, pin_memory: bool = False,
                 drop_last: bool = False, timeout: float = 0, worker_init_fn=None,
                 prefetch_factor: int | None = None, persistent_workers: bool = False, generator=None,
                 seed: int | None = None, *, multiprocessing_context=None):
        if isinstance(num_workers, bool) or not isinstance(num_workers, int):
            raise TypeError(f"DataLoader: num_workers must be an int, got {type(num_workers).__name__}")
        if num_workers < 0:
            raise ValueError("DataLoader: num_workers option should be non-negative; use num_workers=0 "
                             f"to disable multiprocessing (got {num_workers})")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ValueError(f"DataLoader: timeout option should be a non-negative number, got {timeout!r}")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("DataLoader: prefetch_factor option could only be specified in multiprocessing; "
                             "let num_workers > 0 to enable multiprocessing, otherwise set prefetch_factor to None")
        if num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        if prefetch_factor is not None and (isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int)
                                            or prefetch_factor < 1):
            raise ValueError(f"DataLoader: prefetch_factor should be a positive int, got {prefetch_factor!r}")
        if persistent_workers and num_workers == 0:
            raise ValueError("DataLoader: persistent_workers option needs num_workers > 0")
        if generator is not None and seed is not None:
            raise ValueError("DataLoader: pass either generator or seed, not both")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"DataLoader: seed must be an int, got {type(seed).__name__}")
            generator = Generator().manual_seed(seed)
        generator = _as_generator(generator, "DataLoader")
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"DataLoader: collate_fn must be callable, got {type(collate_fn).__name__}")
        if worker_init_fn is not None and not callable(worker_init_fn):
            raise TypeError(f"DataLoader: worker_init_fn must be callable, got {type(worker_init_fn).__name__}")

        iterable = isinstance(dataset, IterableDataset)
        if iterable:
            if shuffle not in (False, None):
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified shuffle option, but got shuffle={shuffle}")
            if sampler is not None:
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified sampler option, but got sampler={sampler}")
            if batch_sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified batch_sampler option, "
                                 f"but got batch_sampler={batch_sampler}")
        else:
            shuffle = bool(shuffle)
            try:
                n = len(dataset)
            except TypeError:
                n = None  # a map-style dataset without __len__ works with a custom sampler
            if n == 0:
                raise ValueError("DataLoader: dataset is empty (len(dataset) == 0); there is nothing to load")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("DataLoader: batch_sampler option is mutually exclusive with batch_size, "
                                 "shuffle, sampler, and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None:
            if drop_last:
                raise ValueError("DataLoader: batch_size=None option disables auto-batching and is mutually "
                                 "exclusive with drop_last")
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size should be a positive integer value or None, but got batch_size={batch_size!r}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"DataLoader: drop_last should be a boolean value, but got drop_last={drop_last!r}")

        if sampler is None:
            if iterable:
                sampler = _InfiniteConstantSampler()
            elif shuffle:
                sampler = RandomSampler(dataset, generator=generator)
            else:
                sampler = SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)

        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.collate_fn = collate_fn if collate_fn is not None else (
            default_collate if batch_sampler is not None else default_convert)
        self.pin_memory = bool(pin_memory)
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = bool(persistent_workers)
        self.generator = generator
        self.multiprocessing_context = _resolve_context(multiprocessing_context) if num_workers > 0 else multiprocessing_context
        self._iterable = iterable
        self._iterator = None
        if self.pin_memory and not cuda_is_available():
            warnings.warn("DataLoader: pin_memory=True but no CUDA device is available; it has no effect",
                          stacklevel=2)

    @property
    def _auto_collation(self) -> bool:
        return self.batch_sampler is not None

    @property
    def _index_sampler(self):
        return self.batch_sampler if self._auto_collation else self.sampler

    def __len__(self) -> int:
        if self._iterable:
            n = len(self.dataset)  # TypeError for a stream without __len__, as in PyTorch
            if self.batch_size is not None:
                n = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
            return n
        return len(self._index_sampler)

    def __iter__(self):
        base_seed = _draw_seed(self.generator)  # drawn whatever num_workers: same RNG use either way
        if self.num_workers == 0:
            return _SingleProcessIter(self)
        if not self.persistent_workers:
            return _MultiProcessIter(self, base_seed)
        if self._iterator is None or not self._iterator._alive():
            self._iterator = _MultiProcessIter(self, base_seed)
        else:
            self._iterator._reset(self, base_seed)
        return self._iterator


def _loader_len(loader):
    try:
        return len(loader)
    except TypeError:
        return None


class _BaseIter:
    """What both iterators copy from the loader (they keep no reference to it, so a persistent
    iterator held by the loader forms no cycle and dies with it)."""

    def __init__(self, loader):
        self._dataset = loader.dataset
        self._iterable = loader._iterable
        self._auto_collation = loader._auto_collation
        self._collate_fn = loader.collate_fn
        self._drop_last = loader.drop_last
        self._pin = loader.pin_memory and cuda_is_available()
        self._len = _loader_len(loader)
        self._sampler_iter = iter(loader._index_sampler)

    def __iter__(self):
        return self

    def __len__(self) -> int:
        if self._len is None:
            raise TypeError("DataLoader iterator: the dataset has no __len__")
        return self._len

    def _finish(self, data):
        return _pin_memory(data) if self._pin else data


class _SingleProcessIter(_BaseIter):
    """Load each batch in the main process, when asked for it."""

    def __init__(self, loader):
        super().__init__(loader)
        self._fetcher = _make_fetcher(self._iterable, self._dataset, self._auto_collation,
                                      self._collate_fn, self._drop_last)

    def __next__(self):
        index = next(self._sampler_iter)
        return self._finish(self._fetcher.fetch(index))


def _shutdown_workers(workers, index_queues, receivers, done_flag, shm_prefix) -> None:
    """Tell every worker to exit, wait up to ``_JOIN_TIMEOUT`` s, terminate (then kill)
    stragglers, close the pipes and remove the shared-memory batches nobody received."""
    done_flag.value = 1
    for q in index_queues:
        try:
            q.put(None)
        except (OSError, ValueError):  # the queue may already be closed
            pass
    deadline = time.monotonic() + _JOIN_TIMEOUT
    for w in workers:
        if w.pid is None:
            continue  # never started
        w.join(timeout=max(0.0, deadline - time.monotonic()))
        if w.is_alive():
            w.terminate()
            w.join(timeout=_JOIN_TIMEOUT)
        if w.is_alive():  # SIGTERM ignored or blocked
            w.kill()
            w.join(timeout=_JOIN_TIMEOUT)
    for q in index_queues:
        q.cancel_join_thread()
        q.close()
    for r in receivers:
        r.close()
    # every worker is gone now, so no new file can appear after this
    _transport.remove_files(shm_prefix)


class _MultiProcessIter(_BaseIter):
    """Batches loaded by worker processes and returned in sampler order."""

    def __init__(self, loader, base_seed: int):
        super().__init__(loader)
        ctx = loader.multiprocessing_context
        n = self._num_workers = loader.num_workers
        self._timeout = loader.timeout
        self._persistent = loader.persistent_workers
        self._max_tasks = loader.prefetch_factor * n
        # a lock-free flag: a worker killed while holding an Event's lock would hang shutdown
        self._done_flag = ctx.RawValue("b", 0)
        # names this iterator's shared-memory batch files, so leftovers are found by prefix
        self._shm_prefix = f"avila_ml_dl_{os.getpid()}_{secrets.token_hex(6)}_"
        self._index_queues, self._workers, self._receivers = [], [], []
        self._inbox = collections.deque()  # whole messages read but not yet decoded
        self._finalizer = weakref.finalize(self, _shutdown_workers, self._workers, self._index_queues,
                                           self._receivers, self._done_flag, self._shm_prefix)
        try:
            for wid in range(n):
                iq = ctx.Queue()
                iq.cancel_join_thread()
                reader, writer = ctx.Pipe(duplex=False)
                w = ctx.Process(
                    target=_worker_loop,
                    args=(self._iterable, self._dataset, iq, writer, self._done_flag,
                          self._auto_collation, self._collate_fn, self._drop_last, base_seed,
                          loader.worker_init_fn, wid, n, f"{self._shm_prefix}w{wid}_"),
                    daemon=True,
                )
                self._index_queues.append(iq)
                self._receivers.append(_transport.Receiver(reader))
                self._workers.append(w)
                try:
                    w.start()
                finally:
                    writer.close()  # the worker holds its own copy; later forks must not inherit it
        except Exception as e:
            self._finalizer()
            raise RuntimeError(
                f"DataLoader: could not start worker process {len(self._workers) - 1} with the "
                f"{ctx.get_start_method()!r} start method ({type(e).__name__}: {e}); with 'spawn' the dataset, "
                "collate_fn and worker_init_fn must be picklable (defined at module level)") from e
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._send_idx = 0          # next task number to send
        self._rcvd_idx = 0          # next task number to return
        self._task_worker = {}      # task number -> worker that has it
        self._reorder = {}          # task number -> result that arrived early
        self._worker_active = [True] * self._num_workers
        self._worker_cycle = itertools.cycle(range(self._num_workers))
        self._sampler_done = False
        self._fill()

    def _reset(self, loader, base_seed: int) -> None:
        """Start a new epoch on the same (persistent) workers."""
        self._sampler_iter = iter(loader._index_sampler)
        self._len = _loader_len(loader)
        for q in self._index_queues:
            q.put(_ResumeIteration(base_seed))
        # results of the previous epoch that were never asked for come first on each pipe;
        # each worker's acknowledgement follows all of its earlier results
        waiting = self._num_workers
        while waiting:
            task, _ = self._get_data()
            if isinstance(task, _ResumeIteration):
                waiting -= 1
        self._start_epoch()

    def _alive(self) -> bool:
        return self._finalizer.alive

    def _fill(self) -> None:
        """Send tasks until ``prefetch_factor * num_workers`` are in flight or the sampler ends."""
        while not self._sampler_done and self._send_idx - self._rcvd_idx < self._max_tasks:
            for _ in range(self._num_workers):
                wid = next(self._worker_cycle)
                if self._worker_active[wid]:
                    break
            else:
                return  # every worker's stream is exhausted
            try:
                index = next(self._sampler_iter)
            except StopIteration:
                self._sampler_done = True
                return
            self._index_queues[wid].put((self._send_idx, index))
            self._task_worker[self._send_idx] = wid
            self._send_idx += 1

    def __next__(self):
        if not self._alive():
            raise StopIteration
        while True:
            # skip tasks that will never be answered: their worker's stream ended first
            while (self._rcvd_idx < self._send_idx and self._rcvd_idx not in self._reorder
                   and not self._worker_active[self._task_worker[self._rcvd_idx]]):
                del self._task_worker[self._rcvd_idx]
                self._rcvd_idx += 1
                self._fill()
            if self._rcvd_idx >= self._send_idx:
                if not self._persistent:
                    self._finalizer()
                raise StopIteration
            if self._rcvd_idx in self._reorder:
                data = self._reorder.pop(self._rcvd_idx)
                del self._task_worker[self._rcvd_idx]
                self._rcvd_idx += 1
                self._fill()
                if isinstance(data, ExceptionWrapper):
                    data.reraise()
                return self._finish(data)
            task, data = self._get_data()
            if isinstance(data, _IterableDatasetStopIteration):
                self._worker_active[data.worker_id] = False
                self._fill()
                continue
            if isinstance(task, int):
                self._reorder[task] = data

    def _get_data(self):
        """The next ``(task, data)`` from any worker.

        Waits on every worker's pipe *and* its process sentinel, reads only what is there
        (non-blocking), so a worker that dies at any moment, even half-way through writing a
        batch, ends the wait at once with an error instead of a hang.
        """
        deadline = time.monotonic() + self._timeout if self._timeout > 0 else None
        while True:
            if self._inbox:
                return pickle.loads(self._inbox.popleft())
            wait = _POLL_INTERVAL if deadline is None else max(0.0, min(_POLL_INTERVAL, deadline - time.monotonic()))
            watched = {r.conn: r for r in self._receivers}
            ready = mp.connection.wait([*watched, *(w.sentinel for w in self._workers)], timeout=wait)
            for obj in ready:
                if obj in watched:
                    self._inbox.extend(watched[obj].read_available())
            if self._inbox:
                continue
            self._check_workers()
            if deadline is not None and time.monotonic() >= deadline:
                self._finalizer()
                raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds waiting for "
                                   f"batch {self._rcvd_idx} from the workers") from None

    def _check_workers(self) -> None:
        dead = [w for w in self._workers if w.exitcode is not None or not w.is_alive()]
        if dead:
            self._finalizer()
            raise RuntimeError(_dead_worker_message(dead))


def _dead_worker_message(dead) -> str:
    """PyTorch's "DataLoader worker (pid(s) ...) exited unexpectedly", with the cause."""
    how = []
    for w in dead:
        code = w.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            how.append(f"pid {w.pid}: killed by signal {-code} ({name})")
        else:
            how.append(f"pid {w.pid}: exit code {code}")
    hint = "a crash in the dataset or collate_fn (e.g. a segfault or os._exit) or the OOM killer can cause this"
    if any(w.exitcode == -signal.SIGBUS for w in dead):
        hint = "a bus error usually means shared memory (/dev/shm) ran out; free some or use num_workers=0"
    pids = ", ".join(str(w.pid) for w in dead)
    return f"DataLoader worker (pid(s) {pids}) exited unexpectedly ({'; '.join(how)}); {hint}"


def _pin_memory(data):
    """Copy the CPU tensors of a batch into page-locked (pinned) host memory (CuPy)."""
    import cupyx  # only reached when a CUDA device is present
    import numpy as np

    if isinstance(data, Tensor):
        if data.is_cuda:
            return data
        out = cupyx.empty_pinned(data.array.shape, data.array.dtype)
        np.copyto(out, data.array)
        return Tensor._wrap(out)
    if isinstance(data, collections.abc.Mapping):
        fields = {k: _pin_memory(v) for k, v in data.items()}
        try:
            return type(data)(fields)
        except TypeError:
            return fields
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(_pin_memory(d) for d in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_pin_memory(d) for d in data)
    return data
