"""The MPI data plane: collectives and messages through mpi4py's non-blocking calls.

CPU (NumPy) arrays always; CuPy arrays when the MPI library is CUDA-aware (mpi4py passes
``__cuda_array_interface__`` buffers through; the current stream is synchronized first, since
MPI knows nothing of CUDA streams). float16 has no MPI type: reductions run in float32 on a
copy (the result rounded once, as NCCL's half reductions are not), data moves as uint16.
"""
from __future__ import annotations

import numpy as np

from .process_group import ProcessGroup, ReduceOp, Work, _DoneWork, GroupMember, _fail

# _SelfComm is private: init_process_group builds it for a one-process world; users never
# construct a communicator (PyTorch has no such name either)
__all__ = ["MPIProcessGroup"]


class _SelfComm:
    """The communicator of a process started without a launcher: rank 0 of 1.

    It stands in for ``MPI.COMM_WORLD`` so that a script run as ``python script.py`` needs
    no MPI at all (nor mpi4py): every collective of a one-rank group is decided without
    communication, and MPI is never initialized in the process (it matters in test runners
    and notebooks, which fork and load other native libraries afterwards).
    """

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def Dup(self) -> "_SelfComm":  # noqa: N802
        return self

    def Free(self) -> None:  # noqa: N802
        return None

    def bcast(self, obj, root: int = 0):
        return obj


_MPI_OPS: dict = {}


def _mpi_op(op: ReduceOp, np_dtype):
    if not _MPI_OPS:
        from mpi4py import MPI
        _MPI_OPS.update({ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.PRODUCT: MPI.PROD,
                         ReduceOp.MIN: MPI.MIN, ReduceOp.MAX: MPI.MAX, "or": MPI.LOR, "and": MPI.LAND,
                         "in_place": MPI.IN_PLACE})
    if np_dtype == np.bool_:
        return _MPI_OPS["or" if op in (ReduceOp.SUM, ReduceOp.MAX) else "and"]
    return _MPI_OPS[op]


def _in_place():
    """``MPI.IN_PLACE`` (mpi4py imported on first use, as everywhere in this package)."""
    if not _MPI_OPS:
        _mpi_op(ReduceOp.SUM, np.float32)
    return _MPI_OPS["in_place"]


def _moved(a):
    """The array as MPI moves it: float16 as its bits."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def _sync_device(*arrays) -> None:
    """MPI reads device memory directly: queued kernels that write it must finish first."""
    for a in arrays:
        if a is not None and not isinstance(a, np.ndarray):
            import cupy
            cupy.cuda.get_current_stream().synchronize()
            return


class MPIProcessGroup(ProcessGroup):
    """A process group whose collectives run over MPI (``backend="mpi"``).

    Example:
        >>> import numpy as np
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> pg = dist.distributed_c10d._get_default_group()
        >>> type(pg).__name__, pg.backend
        ('MPIProcessGroup', 'mpi')
        >>> dist.destroy_process_group()
    """

    backend = "mpi"

    def __init__(self, comm, ranks, world_rank, timeout):
        super().__init__(comm.Dup(), ranks, world_rank, timeout)
        self._comm = comm.Dup()   # data plane: never mixed with the user's or the control messages

    def destroy(self) -> None:
        """Free the communicators (``destroy_process_group``)."""
        self._free_requests()
        for c in (self._comm, self._ctrl):
            c.Free()

    def _work(self, name, req, finish=None) -> Work:
        return Work(self, name, req.Test, finish, block=req.Wait)

    def _launch_allreduce(self, a, op, name) -> Work:
        if self._size == 1:
            return _DoneWork(self, name)
        from mpi4py import MPI
        _sync_device(a)
        buf = a.astype(np.float32) if a.dtype == np.float16 else a
        req = self._comm.Iallreduce(MPI.IN_PLACE, buf, op=_mpi_op(op, a.dtype))
        n = self._size

        def finish():
            if op is ReduceOp.AVG:
                buf[...] /= n
            if buf is not a:
                a[...] = buf
        return self._work(name, req, finish if (op is ReduceOp.AVG or buf is not a) else None)

    def _run_allreduce(self, a, op, name) -> bool:
        if a.dtype == np.float16:  # reduced in float32 through a copy: the launch path does that
            return False
        if type(a) is not np.ndarray:
            _sync_device(a)
        self._blocking(name, self._comm.Allreduce, _in_place(), a, op=_mpi_op(op, a.dtype))
        if op is ReduceOp.AVG:
            a[...] /= self._size
        return True

    def _launch_broadcast(self, a, root, name) -> Work:
        if self._size == 1:
            return _DoneWork(self, name)
        _sync_device(a)
        return self._work(name, self._comm.Ibcast(_moved(a), root=root))

    def _launch_allgather(self, send, recv, name) -> Work:
        _sync_device(send, recv)
        if self._size == 1:
            recv.reshape(-1)[...] = send.reshape(-1)
            return _DoneWork(self, name)
        return self._work(name, self._comm.Iallgather(_moved(send), _moved(recv)))

    def _launch_reduce_scatter(self, send, recv, op, name) -> Work:
        _sync_device(send, recv)
        half = send.dtype == np.float16
        s = send.astype(np.float32) if half else send
        r = np.empty(recv.shape, np.float32) if half else recv
        if self._size == 1:
            r.reshape(-1)[...] = s.reshape(-1)
            req = None
        else:
            req = self._comm.Ireduce_scatter_block(s, r, op=_mpi_op(op, send.dtype))
        n = self._size

        def finish():
            if op is ReduceOp.AVG:
                r[...] /= n
            if r is not recv:
                recv[...] = r
        if req is None:
            return _DoneWork(self, name, finish)
        return self._work(name, req, finish)

    def _launch_gather(self, send, recv, root, name) -> Work:
        _sync_device(send, recv)
        if self._size == 1:
            recv.reshape(-1)[...] = send.reshape(-1)
            return _DoneWork(self, name)
        mine = self._rank == root
        req = self._comm.Igather(_moved(send), _moved(recv) if mine else None, root=root)
        return self._work(name, req)

    def _launch_scatter(self, send, recv, root, name) -> Work:
        _sync_device(send, recv)
        if self._size == 1:
            recv.reshape(-1)[...] = send.reshape(-1)
            return _DoneWork(self, name)
        mine = self._rank == root
        req = self._comm.Iscatter(_moved(send) if mine else None, _moved(recv), root=root)
        return self._work(name, req)

    def _launch_reduce(self, a, root, op, name) -> Work:
        if self._size == 1:
            return _DoneWork(self, name)
        from mpi4py import MPI
        _sync_device(a)
        buf = a.astype(np.float32) if a.dtype == np.float16 else a
        mine = self._rank == root
        if mine:
            req = self._comm.Ireduce(MPI.IN_PLACE, buf, op=_mpi_op(op, a.dtype), root=root)
        else:
            req = self._comm.Ireduce(buf, None, op=_mpi_op(op, a.dtype), root=root)
        n = self._size

        def finish():
            if mine:
                if op is ReduceOp.AVG:
                    buf[...] /= n
                if buf is not a:
                    a[...] = buf
        return self._work(name, req, finish)

    def _launch_send(self, a, dst, tag) -> Work:
        _sync_device(a)
        return self._work(f"send to rank {self.ranks[dst]} (tag {tag})",
                          self._comm.Isend(_moved(a), dest=dst, tag=tag))

    def _launch_recv(self, a, src, tag) -> Work:
        from mpi4py import MPI
        _sync_device(a)
        status = MPI.Status()
        buf = _moved(a)
        req = self._comm.Irecv(buf, source=src, tag=tag)
        name = f"recv from rank {self.ranks[src]} (tag {tag})"

        def finish():
            got = status.Get_count(MPI.BYTE)
            if got != buf.nbytes:
                _fail(self, f"{name}: received {got} bytes into a buffer of {buf.nbytes} bytes "
                      f"({a.dtype} {a.shape}); send and recv must use the same shape and dtype", False)
        return Work(self, name, lambda: req.Test(status), finish, block=lambda: req.Wait(status))

    def _split(self, members):
        if self._size == 1:  # members == [0]: a copy of this group
            return MPIProcessGroup(self._comm, list(self.ranks), self._world_rank, self._timeout)
        from mpi4py import MPI
        mine = self._rank in members
        sub = self._comm.Split(0 if mine else MPI.UNDEFINED, key=self._rank)
        if not mine:
            return GroupMember.NON_GROUP_MEMBER
        group = MPIProcessGroup(sub, [self.ranks[r] for r in members], self._world_rank, self._timeout)
        sub.Free()
        return group
