"""How a DataLoader worker hands a batch to the main process without ever hanging it.

Two parts:

* **Framing over a pipe.** Each worker has its own one-way pipe. A message is an 8-byte
  little-endian length followed by that many bytes of pickle. The main process reads with
  non-blocking ``os.read`` into a per-worker buffer, so a worker killed half-way through a
  write leaves an incomplete buffer (noticed through the worker's sentinel), never a
  ``recv`` blocked forever on bytes that will not come.
* **Shared memory for large arrays.** While pickling a batch, every NumPy array of at least
  ``SHM_THRESHOLD`` bytes is copied into a file in ``/dev/shm`` (RAM-backed) and replaced
  in the pickle by that file's name. The main process maps the file and unlinks it at
  once: the batch's array *is* the mapping (no copy, no pickling of the data), and the
  memory returns to the system when the array is freed. Files are named
  ``<prefix>w<worker>_<n>`` with a prefix unique to one iterator, so whatever a dead
  worker left behind is found by prefix and removed when the iterator shuts down.
"""
from __future__ import annotations

import glob
import io
import mmap
import os
import pickle
import struct
import tempfile
import weakref
from multiprocessing.reduction import ForkingPickler

import numpy as np

# Arrays at least this large travel through shared memory; smaller ones are pickled inline
# (creating and mapping a file costs ~20 us, copying 64 KiB through a pipe about the same).
SHM_THRESHOLD = 1 << 16

_HEADER = struct.Struct("<Q")
# map every page at once instead of taking one page fault per 4 KiB (Linux only)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_READ_CHUNK = 1 << 20


def shm_dir() -> str:
    """Where batch files go: ``/dev/shm`` (RAM) on Linux, the temporary directory elsewhere."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def leftover_files(prefix: str) -> list[str]:
    """The batch files whose names start with ``prefix`` that still exist."""
    return glob.glob(os.path.join(shm_dir(), glob.escape(prefix) + "*"))


def remove_files(prefix: str) -> None:
    """Unlink every batch file named ``prefix*`` (batches that were never received)."""
    for path in leftover_files(prefix):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # received (and unlinked) by the main process meanwhile


class _ShmMap(mmap.mmap):
    """A mapping of one batch file, remembering the file's name (worker side)."""

    path: str
    sent_flag: list  # [True] once handed to the main process (which then unlinks the file)


# (prefix, counter) of this process's batch files while it is a DataLoader worker, else None
_worker_files: list = [None]


def set_worker_files(prefix: str, counter: list) -> None:
    """Called once in a worker: collation may allocate batches in shared memory from now on."""
    _worker_files[0] = (prefix, counter)


def _create(nbytes: int, prefix: str, counter: list) -> tuple[str, _ShmMap]:
    """A new batch file of ``nbytes`` (pages reserved) and its mapping."""
    counter[0] += 1
    path = os.path.join(shm_dir(), f"{prefix}{counter[0]}")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        try:
            # reserve the pages now: a full /dev/shm becomes an OSError here, not a SIGBUS later
            os.posix_fallocate(fd, 0, nbytes)
        except AttributeError:  # no posix_fallocate (macOS)
            os.ftruncate(fd, nbytes)
        buf = _ShmMap(fd, nbytes, flags=mmap.MAP_SHARED | _POPULATE)
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise OSError(e.errno, f"DataLoader worker: no room in {shm_dir()} for a batch array of "
                               f"{nbytes} bytes ({e.strerror}); free shared memory or use smaller "
                               "batches / num_workers=0") from None
    os.close(fd)
    buf.path, buf.sent_flag = path, [False]
    return path, buf


def _unlink_unsent(buf_state: list) -> None:
    path, sent = buf_state
    if not sent[0]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def worker_empty(shape: tuple, dtype) -> np.ndarray | None:
    """In a DataLoader worker, an uninitialised array in a shared-memory batch file (so that
    collating a large batch is its only copy: the file is handed over, not copied again);
    ``None`` outside workers or for small arrays."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if _worker_files[0] is None or nbytes < SHM_THRESHOLD or dtype.hasobject or dtype.fields is not None:
        return None
    path, buf = _create(nbytes, *_worker_files[0])
    # an array that is never sent (the batch failed later) must not leave its file behind
    weakref.finalize(buf, _unlink_unsent, [path, buf.sent_flag])
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _shm_root(obj: np.ndarray):
    """The :class:`_ShmMap` that ``obj`` covers exactly, or ``None``."""
    base = obj
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, _ShmMap) or base.sent_flag[0] or not obj.flags.c_contiguous or obj.nbytes != len(base):
        return None
    start = np.frombuffer(base, np.uint8, count=1).ctypes.data
    return base if obj.ctypes.data == start else None


def _attach(path: str, dtype: str, shape: tuple) -> np.ndarray:
    """Map a batch file as an array and unlink it (the mapping keeps the memory alive)."""
    fd = os.open(path, os.O_RDWR)
    try:
        nbytes = os.fstat(fd).st_size
        buf = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | _POPULATE)
    finally:
        os.close(fd)
        os.unlink(path)
    return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)


class _ShmPickler(ForkingPickler):
    """A pickler that moves large NumPy arrays into files under :func:`shm_dir`."""

    def __init__(self, file, prefix: str, counter: list):
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.prefix, self.counter, self.created = prefix, counter, []

    def reducer_override(self, obj):
        if (type(obj) is not np.ndarray or obj.nbytes < SHM_THRESHOLD or obj.dtype.hasobject
                or obj.dtype.fields is not None):
            return NotImplemented
        root = _shm_root(obj)
        if root is not None:  # collated straight into a batch file: hand the file over
            root.sent_flag[0] = True
            self.created.append(root.path)  # removed again if the rest of the pickling fails
            return _attach, (root.path, obj.dtype.str, obj.shape)
        path, buf = _create(obj.nbytes, self.prefix, self.counter)
        self.created.append(path)
        with buf:
            dst = np.frombuffer(buf, dtype=obj.dtype).reshape(obj.shape)
            np.copyto(dst, obj)
            del dst  # release the buffer export before the mapping closes
        return _attach, (path, obj.dtype.str, obj.shape)


def dumps(obj, prefix: str, counter: list) -> bytes:
    """Pickle ``obj``, its large arrays in shared-memory files named ``prefix<n>``.

    On failure the files already written are removed and the error propagates.
    """
    buf = io.BytesIO()
    pickler = _ShmPickler(buf, prefix, counter)
    try:
        pickler.dump(obj)
    except BaseException:
        for path in pickler.created:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        raise
    return buf.getvalue()


def send_message(fd: int, payload: bytes) -> None:
    """Write one framed message to a pipe (blocking; the reader never blocks on it)."""
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Receiver:
    """The main process's end of one worker's pipe: non-blocking reads, whole messages out."""

    def __init__(self, conn):
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self._head = bytearray()
        self._body = None
        self._pos = 0

    def partial(self) -> bool:
        """True while a message has started arriving but is not complete."""
        return bool(self._head) or self._body is not None

    def read_available(self) -> list[bytes]:
        """Every message that is complete after reading what the pipe holds now."""
        out = []
        while True:
            try:
                if self._body is None:
                    chunk = os.read(self.fd, _HEADER.size - len(self._head))
                    if not chunk:
                        return out  # end of file: the writer is gone
                    self._head += chunk
                    if len(self._head) == _HEADER.size:
                        (size,) = _HEADER.unpack(self._head)
                        self._head = bytearray()
                        self._body, self._pos = bytearray(size), 0
                        if size == 0:
                            out.append(bytes(self._body))
                            self._body = None
                    continue
                view = memoryview(self._body)[self._pos:self._pos + _READ_CHUNK]
                n = os.readv(self.fd, [view])
                view.release()
                if n == 0:
                    return out
                self._pos += n
                if self._pos == len(self._body):
                    out.append(self._body)
                    self._body = None
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.conn.close()
