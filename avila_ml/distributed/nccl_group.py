"""The NCCL data plane: collectives on CuPy arrays through ``cupy.cuda.nccl``.

The checks before each collective, sequence numbers and rank translation are the base class's
(over MPI), so the CPU test suite covers them; what is NCCL-specific is only the launch:

* **stream ordering**: each collective runs on the group's own CUDA stream. Before it, that
  stream waits on an event recorded on the caller's current stream (the inputs are ready);
  after it, an event is recorded on the communication stream, and ``Work.wait()`` makes the
  caller's current stream wait on it — the host does not block, as in PyTorch. With
  ``AVILA_NCCL_BLOCKING_WAIT=1`` (PyTorch: ``TORCH_NCCL_BLOCKING_WAIT``) ``wait`` also polls
  the event against the timeout and, past it, aborts the NCCL communicator and the job.
* **dtypes**: NCCL has no int16 or bool; bool reduces as uint8 with MAX (or) / MIN (and),
  int16 reductions run in int32 on a copy, and data-only collectives move raw bytes.
* gather / scatter are grouped NCCL send/recv pairs.

The NCCL unique id is made by the group's rank 0 and broadcast over the MPI communicator.
"""
from __future__ import annotations

import os
import time

import numpy as np

from .mpi_group import MPIProcessGroup
from .process_group import ReduceOp, Work, _DoneWork, _fail, _poll, _seconds, GroupMember

__all__ = ["NCCLProcessGroup"]


def _nccl():
    from cupy.cuda import nccl
    if not hasattr(nccl, "NcclCommunicator"):
        raise RuntimeError("the nccl backend needs NCCL: install it with `pip install avila-ml[cuda12]` "
                           "(or [cuda13]), which brings the nvidia-nccl wheel")
    return nccl


def _nccl_dtype(np_dtype):
    nccl = _nccl()
    return {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
            np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int8): nccl.NCCL_INT8,
            np.dtype(np.uint8): nccl.NCCL_UINT8, np.dtype(np.int32): nccl.NCCL_INT32,
            np.dtype(np.int64): nccl.NCCL_INT64}.get(np.dtype(np_dtype))


def _nccl_op(op: ReduceOp, np_dtype):
    nccl = _nccl()
    if np.dtype(np_dtype) == np.bool_:
        return nccl.NCCL_MAX if op in (ReduceOp.SUM, ReduceOp.MAX) else nccl.NCCL_MIN
    return {ReduceOp.SUM: nccl.NCCL_SUM, ReduceOp.AVG: nccl.NCCL_SUM, ReduceOp.PRODUCT: nccl.NCCL_PROD,
            ReduceOp.MIN: nccl.NCCL_MIN, ReduceOp.MAX: nccl.NCCL_MAX}[op]


def _as_reducible(a):
    """(array NCCL can reduce, function writing the result back) for any supported dtype."""
    if a.dtype == np.bool_:
        return a.view(np.uint8), None
    if _nccl_dtype(a.dtype) is None:  # int16
        wide = a.astype(np.int32)

        def back():
            a[...] = wide.astype(a.dtype)
        return wide, back
    return a, None


def _bytes(a):
    return a.view(np.uint8).reshape(-1) if a.size else a.reshape(-1).view(np.uint8)


class _NCCLWork(Work):
    """Work of an NCCL collective: ``wait`` orders the caller's stream after it (see module doc)."""

    def __init__(self, group, name, event, finish=None, keep=()):
        super().__init__(group, name, lambda: event.done, finish)
        self._event, self._keep = event, keep

    def wait(self, timeout=None) -> bool:
        if self._done:
            return True
        import cupy
        if os.environ.get("AVILA_NCCL_BLOCKING_WAIT") == "1":
            deadline = self._deadline if timeout is None else time.monotonic() + _seconds(timeout)
            if not _poll(lambda: self._event.done, deadline):
                self._group._comm_nccl.abort()
                _fail(self._group, f"{self._name} on ranks {self._group.ranks} did not complete within "
                      f"{self._group._timeout:g} s (NCCL communicator aborted)", True)
        cupy.cuda.get_current_stream().wait_event(self._event)
        self._complete()
        self._keep = ()
        return True


class NCCLProcessGroup(MPIProcessGroup):
    """A process group whose collectives run over NCCL on CuPy arrays (``backend="nccl"``).

    Example:
        >>> from avila_ml.distributed.nccl_group import NCCLProcessGroup
        >>> NCCLProcessGroup.backend
        'nccl'
    """

    backend = "nccl"

    def __init__(self, comm, ranks, world_rank, timeout):
        super().__init__(comm, ranks, world_rank, timeout)
        import cupy
        nccl = _nccl()
        uid = nccl.get_unique_id() if self._rank == 0 else None
        uid = self._ctrl.bcast(uid, root=0)
        self._comm_nccl = nccl.NcclCommunicator(self._size, uid, self._rank)
        self._stream = cupy.cuda.Stream(non_blocking=True)

    def destroy(self) -> None:
        self._comm_nccl.destroy()
        super().destroy()

    def _launch(self, name, body, finish=None, keep=()) -> Work:
        """Run ``body(stream_ptr)`` on the communication stream, ordered after the caller's work."""
        import cupy
        current = cupy.cuda.get_current_stream()
        ready = current.record()
        self._stream.wait_event(ready)
        with self._stream:  # copies inside body (gather/scatter's own block) run on it too
            body(self._stream.ptr)
        done = self._stream.record()
        return _NCCLWork(self, name, done, finish, keep)

    def _launch_allreduce(self, a, op, name) -> Work:
        if self._size == 1 and op is not ReduceOp.AVG:
            return _DoneWork(self, name)
        buf, back = _as_reducible(a)
        n = self._size

        def body(s):
            self._comm_nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, _nccl_dtype(buf.dtype),
                                      _nccl_op(op, a.dtype), s)

        def finish():
            if op is ReduceOp.AVG:
                a[...] /= n
            if back is not None:
                back()
        return self._launch(name, body, finish, (a, buf))

    def _launch_broadcast(self, a, root, name) -> Work:
        b = _bytes(a)
        return self._launch(name, lambda s: self._comm_nccl.bcast(b.data.ptr, b.size, _nccl().NCCL_UINT8,
                                                                   root, s), keep=(a,))

    def _launch_allgather(self, send, recv, name) -> Work:
        sb, rb = _bytes(send), _bytes(recv)
        return self._launch(name, lambda s: self._comm_nccl.allGather(
            sb.data.ptr, rb.data.ptr, sb.size, _nccl().NCCL_UINT8, s), keep=(send, recv))

    def _launch_reduce_scatter(self, send, recv, op, name) -> Work:
        sbuf, _ = _as_reducible(send)
        rbuf, back = _as_reducible(recv)
        n = self._size

        def body(s):
            self._comm_nccl.reduceScatter(sbuf.data.ptr, rbuf.data.ptr, rbuf.size, _nccl_dtype(rbuf.dtype),
                                          _nccl_op(op, send.dtype), s)

        def finish():
            if op is ReduceOp.AVG:
                recv[...] /= n
            if back is not None:
                back()
        return self._launch(name, body, finish, (send, recv, sbuf, rbuf))

    def _launch_reduce(self, a, root, op, name) -> Work:
        buf, back = _as_reducible(a)
        n, mine = self._size, self._rank == root

        def body(s):
            self._comm_nccl.reduce(buf.data.ptr, buf.data.ptr, buf.size, _nccl_dtype(buf.dtype),
                                   _nccl_op(op, a.dtype), root, s)

        def finish():
            if mine:
                if op is ReduceOp.AVG:
                    a[...] /= n
                if back is not None:
                    back()
        return self._launch(name, body, finish, (a, buf))

    def _launch_gather(self, send, recv, root, name) -> Work:
        nccl = _nccl()
        sb = _bytes(send)
        rb = _bytes(recv) if self._rank == root else None

        def body(s):
            nccl.groupStart()
            if self._rank == root:
                for r in range(self._size):
                    part = rb[r * sb.size:(r + 1) * sb.size]
                    if r == root:
                        part[...] = sb
                    else:
                        self._comm_nccl.recv(part.data.ptr, sb.size, nccl.NCCL_UINT8, r, s)
            else:
                self._comm_nccl.send(sb.data.ptr, sb.size, nccl.NCCL_UINT8, root, s)
            nccl.groupEnd()
        return self._launch(name, body, keep=(send, recv))

    def _launch_scatter(self, send, recv, root, name) -> Work:
        nccl = _nccl()
        rb = _bytes(recv)
        sb = _bytes(send) if self._rank == root else None

        def body(s):
            nccl.groupStart()
            if self._rank == root:
                for r in range(self._size):
                    part = sb[r * rb.size:(r + 1) * rb.size]
                    if r == root:
                        rb[...] = part
                    else:
                        self._comm_nccl.send(part.data.ptr, rb.size, nccl.NCCL_UINT8, r, s)
            else:
                self._comm_nccl.recv(rb.data.ptr, rb.size, nccl.NCCL_UINT8, root, s)
            nccl.groupEnd()
        return self._launch(name, body, keep=(send, recv))

    def _launch_send(self, a, dst, tag) -> Work:
        b = _bytes(a)
        return self._launch(f"send to rank {self.ranks[dst]}", lambda s: self._comm_nccl.send(
            b.data.ptr, b.size, _nccl().NCCL_UINT8, dst, s), keep=(a,))

    def _launch_recv(self, a, src, tag) -> Work:
        b = _bytes(a)
        return self._launch(f"recv from rank {self.ranks[src]}", lambda s: self._comm_nccl.recv(
            b.data.ptr, b.size, _nccl().NCCL_UINT8, src, s), keep=(a,))

    def _launch_exchange(self, sends, recvs, tag) -> list:
        # one NCCL group: separate send/recv calls between ranks that exchange with each other
        # would wait on each other's stream order
        nccl = _nccl()
        bufs = [(_bytes(a), p, False) for a, p in recvs] + [(_bytes(a), p, True) for a, p in sends]

        def body(s):
            nccl.groupStart()
            for b, p, is_send in bufs:
                (self._comm_nccl.send if is_send else self._comm_nccl.recv)(b.data.ptr, b.size, nccl.NCCL_UINT8, p, s)
            nccl.groupEnd()
        if not bufs:
            return []
        return [self._launch("halo exchange", body, keep=tuple(a for a, _ in sends + recvs))]

    def _split(self, members):
        if self._size == 1:
            return NCCLProcessGroup(self._comm, list(self.ranks), self._world_rank, self._timeout)
        from mpi4py import MPI
        mine = self._rank in members
        sub = self._comm.Split(0 if mine else MPI.UNDEFINED, key=self._rank)
        if not mine:
            return GroupMember.NON_GROUP_MEMBER
        group = NCCLProcessGroup(sub, [self.ranks[r] for r in members], self._world_rank, self._timeout)
        sub.Free()
        return group
