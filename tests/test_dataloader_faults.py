"""Fault injection for DataLoader workers: a worker that dies (SIGKILL, segfault, half-way through
writing a batch) or hangs must end the iteration promptly with a clear RuntimeError, leave no
process behind and leak no shared-memory batch file, for batches from bytes to 100 MB.

PyTorch's reference behaviour: ``RuntimeError: DataLoader worker (pid(s) N) exited unexpectedly``
as soon as the worker is gone, and ``DataLoader timed out after T seconds`` for a hang.
"""
import ctypes
import faulthandler
import gc
import multiprocessing as mp
import os
import signal
import threading
import time

import numpy as np
import pytest

import avila_ml as am
from avila_ml import data as amd
from avila_ml.data import _transport

SIZES = [100, 300_000, 100_000_000]  # bytes per batch: inline pickle, shared memory, large
TIMEOUT = 20.0  # the loader's timeout for faults that kill the worker; the error must come long before
HANG_TIMEOUT = 2.0


def _segfault():
    faulthandler.disable()  # pytest's handler would print this worker's stack; the crash is the point
    ctypes.string_at(0)  # reads address 0: SIGSEGV


class Faulty(amd.Dataset):
    """``n`` samples of ``nbytes`` each (a float32 array, or a bytes object that is pickled
    through the pipe); sample ``at`` triggers ``fault`` inside the worker."""

    def __init__(self, n, nbytes, fault, at, kind="array"):
        self.n, self.nbytes, self.fault, self.at, self.kind = n, nbytes, fault, at, kind

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.at and amd.get_worker_info() is not None:
            if self.fault == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.fault == "segfault":
                _segfault()
            elif self.fault == "hang":
                time.sleep(3600)
            elif self.fault == "kill_while_sending":
                # SIGKILL from another thread a moment later: while this batch is pickled/written
                threading.Timer(0.002, os.kill, (os.getpid(), signal.SIGKILL)).start()
        if self.fault == "kill_while_sending":
            time.sleep(0.01)  # so that the worker still has batches to give when it is killed
        if self.kind == "bytes":
            return bytes(self.nbytes)
        return np.full(max(self.nbytes // 4, 1), i, np.float32)


def _children():
    return {p.pid for p in mp.active_children()}


def _shm_files():
    return set(_transport.leftover_files(f"avila_ml_dl_{os.getpid()}_"))


def _run_until_error(loader):
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        for _ in loader:
            pass
    return time.monotonic() - t0, str(info.value)


@pytest.fixture
def clean_after():
    """Every fault run must leave no worker process and no shared-memory file."""
    before, files_before = _children(), _shm_files()
    yield
    gc.collect()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _children() - before:
        time.sleep(0.02)
    assert not (_children() - before), "worker processes were left running"
    assert not (_shm_files() - files_before), "shared-memory batch files were leaked"


@pytest.mark.parametrize("nbytes", SIZES)
@pytest.mark.parametrize("fault", ["sigkill", "segfault", "kill_while_sending"])
def test_dead_worker_raises_promptly(fault, nbytes, clean_after):
    kind = "bytes" if fault == "kill_while_sending" else "array"
    loader = amd.DataLoader(Faulty(12, nbytes, fault, at=3, kind=kind), batch_size=1, num_workers=2,
                            timeout=TIMEOUT)
    elapsed, msg = _run_until_error(loader)
    assert "DataLoader worker (pid(s) " in msg and "exited unexpectedly" in msg, msg
    want = {"sigkill": "SIGKILL", "segfault": "SIGSEGV", "kill_while_sending": "SIGKILL"}[fault]
    assert want in msg, msg
    assert elapsed < TIMEOUT / 2, f"took {elapsed:.1f} s to notice the dead worker"


@pytest.mark.parametrize("nbytes", SIZES)
def test_hung_worker_times_out(nbytes, clean_after):
    loader = amd.DataLoader(Faulty(6, nbytes, "hang", at=2), batch_size=1, num_workers=2,
                            timeout=HANG_TIMEOUT)
    elapsed, msg = _run_until_error(loader)
    assert f"DataLoader timed out after {HANG_TIMEOUT} seconds" in msg, msg
    assert elapsed < HANG_TIMEOUT + 8, elapsed  # the timeout, plus shutting the workers down


@pytest.mark.parametrize("nbytes", [100, 300_000, 100_000_000])
def test_killed_half_way_through_a_frame(nbytes, clean_after, monkeypatch):
    """Deterministic version of the reported hang: the worker writes the header and part of a
    batch to its pipe, then dies. A blocking recv would wait forever for the rest."""
    real_send = _transport.send_message

    def send_half_then_die(fd, payload):
        if amd.get_worker_info().id == 0 and len(payload) > 50:
            framed = _transport._HEADER.pack(len(payload)) + payload
            os.write(fd, framed[: len(framed) // 2 if len(framed) < 65536 else 65536])
            os.kill(os.getpid(), signal.SIGKILL)
        real_send(fd, payload)

    monkeypatch.setattr(_transport, "send_message", send_half_then_die)  # inherited by forked workers
    loader = amd.DataLoader(Faulty(4, nbytes, None, at=-1, kind="bytes"), batch_size=1, num_workers=1,
                            timeout=0)  # no timeout at all: only the liveness check can end the wait
    elapsed, msg = _run_until_error(loader)
    assert "exited unexpectedly" in msg and "SIGKILL" in msg, msg
    assert elapsed < 10


def test_large_batches_round_trip_through_shared_memory(clean_after):
    """Values survive the shared-memory path, the arrays are writable, and nothing is left in
    /dev/shm while the batches are still in use (they are unlinked on arrival)."""
    ds = amd.TensorDataset(am.arange(4 * 300_000, dtype=am.float32).reshape(4, 300_000), am.arange(4))
    got = list(amd.DataLoader(ds, batch_size=2, num_workers=2))
    assert not _shm_files()
    np.testing.assert_array_equal(got[1][0].numpy(), np.arange(600_000, 1_200_000, dtype=np.float32).reshape(2, -1))
    assert got[0][1].tolist() == [0, 1]
    got[0][0].array[0, 0] = -1.0  # a normal, writable array
    assert got[0][0][0, 0].item() == -1.0


def test_receiver_reassembles_split_frames():
    """Frames written in pieces of any size come out whole, in order; an unfinished one stays pending."""
    r, w = mp.Pipe(duplex=False)
    rec = _transport.Receiver(r)
    msgs = [b"", b"a", bytes(range(256)) * 3000]
    stream = b"".join(_transport._HEADER.pack(len(m)) + m for m in msgs) + _transport._HEADER.pack(10) + b"xyz"
    out = []
    for i in range(0, len(stream), 4099):
        os.write(w.fileno(), stream[i:i + 4099])
        out += rec.read_available()
    assert [bytes(m) for m in out] == msgs
    assert rec.partial()
    w.close()
    rec.close()
