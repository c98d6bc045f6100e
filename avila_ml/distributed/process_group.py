"""``ProcessGroup``: a set of ranks that run collectives and point-to-point messages together.

The control plane and the data plane are separate communicators:

* **control** (always MPI, a duplicate of the group's communicator): before each collective
  every rank contributes a 16-number descriptor (sequence number, collective, dtype, shape,
  root, reduce op) to one small persistent all-reduce that computes the elementwise minimum of
  ``[d, -d]``, i.e. the minimum and the maximum of every field: they are equal on every rank
  exactly when all descriptors agree. It is started non-blocking and polled against a
  deadline. On disagreement every rank sees it in the same result, gathers the descriptors and
  raises the same error naming the ranks and what differs (*mismatch*). Past the deadline the
  ranks that did arrive ask each other (a ping each waiting rank answers while it polls) and
  every one of them names the ranks that never answered (*timeout*). ``barrier`` is this
  check alone. Cost: one 256-byte all-reduce per collective, no coordinator round trip.
* **data** (MPI or NCCL): the collective itself, started non-blocking; ``Work.wait`` waits
  for it against the same deadline (the synchronous ``all_reduce`` runs MPI's blocking call
  under the same deadline, see ``allreduce_now``).

A timeout leaves requests in flight that can never complete, so the group is then *broken*:
the error is printed at once, raised, and when the process exits ``MPI_Abort`` ends every
process of the job (nobody hangs in ``MPI_Finalize`` or in a later collective).

Subclasses (:mod:`.mpi_group`, :mod:`.nccl_group`) provide the ``_launch_*`` methods on raw
arrays; everything else (checks, sequence numbers, deadlines, rank translation) is here and is
shared, so CPU runs test it for the NCCL path too.
"""
from __future__ import annotations

import atexit
import datetime
import enum
import sys
import time

import numpy as np

from .. import dtypes as _dt
from .errors import DistBackendError

__all__ = ["ReduceOp", "ProcessGroup", "Work", "GroupMember"]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)


class ReduceOp(enum.Enum):
    """How ``all_reduce`` / ``reduce_scatter_tensor`` combine the ranks' values
    (``torch.distributed.ReduceOp``).

    Math: SUM = sum_r x_r, AVG = SUM / world_size (floating dtypes), PRODUCT = prod_r x_r,
    MIN / MAX elementwise over ranks. On bool tensors SUM and MAX are logical or, PRODUCT and
    MIN logical and.

    Example:
        >>> from avila_ml.distributed import ReduceOp
        >>> ReduceOp.SUM, ReduceOp.AVG.value
        (<ReduceOp.SUM: 'sum'>, 'avg')
    """

    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"


class _NonMember:
    def __repr__(self) -> str:
        return "GroupMember.NON_GROUP_MEMBER"


class GroupMember:
    """``new_group`` returns ``GroupMember.NON_GROUP_MEMBER`` on ranks outside the new group
    (``torch.distributed.GroupMember``).

    Example:
        >>> from avila_ml.distributed import GroupMember
        >>> GroupMember.NON_GROUP_MEMBER
        GroupMember.NON_GROUP_MEMBER
    """

    NON_GROUP_MEMBER = _NonMember()


# -- descriptors -------------------------------------------------------------------------
_OPS = ("barrier", "all_reduce", "broadcast", "all_gather", "all_gather_into_tensor",
        "reduce_scatter_tensor", "gather", "scatter", "reduce", "new_group", "verify")
_DTYPES = _dt._ALL
_REDOPS = tuple(ReduceOp)
_MAGIC = 0x41564D4C  # "AVML"
_WIDTH = 16            # numbers per descriptor
_MAXDIM = 8            # dims stored; deeper tensors compare ndim, numel and the first 8 dims
_TAG_PING, _TAG_PONG = 7003, 7004  # "are you waiting in a check?" when a check times out
_PONG_GRACE = 1.0  # seconds a timed-out rank waits for the answers of the ranks that arrived
_CACHE_MAX = 256   # descriptors kept per group (keyed by what the collective is called with)


_OP_CODE = {name: i for i, name in enumerate(_OPS)}
_DTYPE_CODE = {d.np: i for i, d in enumerate(_DTYPES)}
_REDOP_CODE = {op: i for i, op in enumerate(_REDOPS)}


def _descriptor(op, array=None, root=-1, redop=None, extra=-1) -> np.ndarray:
    """The 16 numbers every rank compares before a collective (field 1 is unused: the check's
    all-reduces pair up in call order, so the sequence number cannot differ)."""
    d = np.full(_WIDTH, -1, dtype=np.int64)
    d[0] = _MAGIC
    d[2] = _OP_CODE[op]
    if array is not None:
        code = _DTYPE_CODE.get(array.dtype)
        if code is None:
            raise TypeError(f"{op}: dtype {array.dtype} is not supported; expected one of "
                            f"{', '.join(d.name for d in _DTYPES)}")
        d[3] = code
        nd = array.ndim
        d[6] = nd
        d[7] = array.size
        if nd:
            d[8:8 + min(nd, _MAXDIM)] = array.shape[:_MAXDIM]
    else:
        d[15] = extra
    d[4] = root
    if redop is not None:
        d[5] = _REDOP_CODE[redop]
    return d


def _describe(d) -> str:
    """'all_reduce of float32 (4, 2) op sum root 0' from a descriptor row."""
    if d[0] != _MAGIC:
        return "nothing (did not arrive)"
    parts = [_OPS[d[2]]]
    if d[3] >= 0:
        shape = tuple(int(s) for s in d[8:8 + min(d[6], _MAXDIM)])
        parts.append(f"of {_DTYPES[d[3]].name} {shape}")
    if d[5] >= 0:
        parts.append(f"op {_REDOPS[d[5]].value}")
    if d[4] >= 0:
        parts.append(f"root {d[4]}")
    return " ".join(parts)


def _mismatch_message(table, ranks) -> str | None:
    """None when every rank's descriptor is the same; else who differs from rank 0 and how."""
    if (table == table[0]).all():
        return None
    lines = [f"rank {ranks[i]}: {_describe(row)}" for i, row in enumerate(table)
             if i == 0 or not (row == table[0]).all()]
    return "; ".join(lines)


def _seconds(timeout) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT.total_seconds()
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive datetime.timedelta or number of seconds, got {timeout!r}")
    return float(timeout)


def _poll(done, deadline: float) -> bool:
    """Call ``done()`` until it is true (return True) or ``deadline`` passes (return False).

    For waiting on *peers* (the checks before a collective): spins for the first 2 ms (ranks
    in step arrive within microseconds), then sleeps with a growing pause up to 200 us, so a
    rank waiting for a slow peer leaves the core to it.
    """
    if done():
        return True
    spin_until = time.monotonic() + 2e-3
    pause = 1e-5
    while not done():
        now = time.monotonic()
        if now > deadline:
            return False
        if now > spin_until:
            time.sleep(pause)
            pause = min(2 * pause, 2e-4)
    return True


def _progress(test, deadline: float) -> bool:
    """Call ``test()`` back to back until it is true or ``deadline`` passes.

    For waiting on a started MPI operation: MPI moves data only inside its calls, so a large
    all-reduce (many pipelined rounds) needs ``Test`` called continuously, as ``MPI_Wait``
    would; sleeping between calls would stretch every round. The clock is read every 64 calls.
    """
    while True:
        for _ in range(64):
            if test():
                return True
        if time.monotonic() > deadline:
            return test()


# -- the broken state: print now, MPI_Abort at exit ------------------------------------------
_fatal: list = []


def _abort_at_exit() -> None:
    if _fatal:
        from mpi4py import MPI
        sys.stderr.flush()
        time.sleep(0.5)  # let the peers print their own message before the job is torn down
        MPI.COMM_WORLD.Abort(1)


class _Watchdog:
    """A daemon thread that ends the job when a blocking wait passes its deadline.

    ``Work.wait`` blocks inside ``MPI_Wait`` (as fast as MPI gets: no Python in the loop), so
    it cannot look at the clock itself; like PyTorch's NCCL watchdog, this thread does, four
    times a second: past a deadline it prints which operation on which ranks hung, then calls
    ``MPI_Abort``. Registering a wait is a dictionary store — the thread is never woken per
    operation (on a loaded machine each thread hand-off can cost a scheduler time slice).
    Needs ``MPI_THREAD_MULTIPLE`` (mpi4py's default); without it waits poll instead.
    """

    period = 0.25

    def __init__(self):
        self._items: dict = {}
        self._thread = None

    def watch(self, key, deadline: float, group, name: str) -> None:
        self._items[key] = (deadline, group, name)  # a single dict store: atomic under the GIL
        if self._thread is None:
            import threading
            self._thread = threading.Thread(target=self._run, name="avila-dist-watchdog", daemon=True)
            self._thread.start()

    def unwatch(self, key) -> None:
        self._items.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.period)
            now = time.monotonic()
            for deadline, g, name in list(self._items.values()):
                if deadline < now:
                    message = (f"[rank {g._world_rank}] {name} on ranks {g.ranks} did not complete "
                               f"within {g._timeout:g} s after every rank had entered it: a rank died or "
                               "stalled inside the collective")
                    print(f"avila_ml.distributed: {message}; ending the job (MPI_Abort)", file=sys.stderr,
                          flush=True)
                    from mpi4py import MPI
                    time.sleep(0.5)
                    MPI.COMM_WORLD.Abort(1)


_watchdog = _Watchdog()


def _thread_multiple() -> bool:
    from mpi4py import MPI
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def _fail(group, message: str, fatal: bool):
    """Raise ``DistBackendError(message)``; a fatal one is printed now and aborts the job at exit."""
    text = f"[rank {group._world_rank}] {message}"
    if fatal:
        if not _fatal:
            atexit.register(_abort_at_exit)
        _fatal.append(text)
        print(f"avila_ml.distributed: {text}", file=sys.stderr, flush=True)
    raise DistBackendError(text)


class Work:
    """Handle of an asynchronous operation (``torch.distributed.Work``): ``wait()`` blocks until
    it is done (raising ``DistBackendError`` past the group's timeout), ``is_completed()`` asks.

    Example:
        >>> import avila_ml as am
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> t = am.tensor([1.0, 2.0])
        >>> work = dist.all_reduce(t, async_op=True)
        >>> work.wait(), t
        (True, tensor([1., 2.]))
        >>> dist.destroy_process_group()
    """

    def __init__(self, group, name: str, test, finish=None, outputs=(), block=None):
        self._group, self._name = group, name
        self._test, self._finish = test, finish
        self._block = block  # blocking wait (MPI_Wait), guarded by the watchdog
        self._outputs = list(outputs)
        self._deadline = time.monotonic() + group._timeout
        self._done = False

    def _run_test(self) -> bool:
        try:
            return self._test()
        except Exception as e:  # noqa: BLE001 - MPI/NCCL errors become one exception type
            _fail(self._group, f"{self._name} on ranks {self._group.ranks} failed: {type(e).__name__}: {e}", True)

    def _complete(self) -> None:
        self._done = True
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()

    def is_completed(self) -> bool:
        """True once the operation has finished (and its results are in place)."""
        if not self._done and self._run_test():
            self._complete()
        return self._done

    def wait(self, timeout=None) -> bool:
        """Block until done; past the deadline the job is ended with an error naming the op."""
        if self._done:
            return True
        deadline = self._deadline if timeout is None else time.monotonic() + _seconds(timeout)
        if self._block is not None and self._group._blocking_ok:
            _watchdog.watch(id(self), deadline, self._group, self._name)  # the message is written only if it fires
            try:
                self._block()
            except Exception as e:  # noqa: BLE001 - MPI errors become one exception type
                _fail(self._group, f"{self._name} on ranks {self._group.ranks} failed: {type(e).__name__}: {e}", True)
            finally:
                _watchdog.unwatch(id(self))
            self._complete()
            return True
        if not _progress(self._run_test, deadline):
            _fail(self._group, f"{self._name} on ranks {self._group.ranks} did not complete within "
                  f"{self._group._timeout:g} s after every rank had entered it: a rank died or stalled "
                  "inside the collective", True)
        self._complete()
        return True

    def result(self) -> list:
        """The output tensors of the operation (``Work.result``)."""
        self.wait()
        return self._outputs


class _DoneWork(Work):
    """A Work that finished at launch (size-1 groups, empty messages)."""

    def __init__(self, group, name, finish=None, outputs=()):
        super().__init__(group, name, lambda: True, finish, outputs)
        self._complete()


class ProcessGroup:
    """A group of ranks with its own communicators (``torch.distributed.ProcessGroup``).

    ``rank()`` / ``size()`` are this process's place in the group; ``ranks`` lists the
    members' global ranks in group order. The array methods (``allreduce``, ``broadcast``,
    ``allgather``, ``reduce_scatter``, ``gather``, ``scatter``, ``reduce``, ``send``, ``recv``,
    ``barrier``) take C-contiguous NumPy/CuPy arrays, work in place and return a
    :class:`Work`; roots and peers are *group* ranks. Every collective is checked first (see
    the module docstring). The functions of :mod:`avila_ml.distributed` wrap these for
    Tensors with PyTorch's signatures.

    Example:
        >>> import numpy as np
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> pg = dist.distributed_c10d._get_default_group()
        >>> a = np.arange(3.0)
        >>> pg.allreduce(a).wait(); a
        True
        array([0., 1., 2.])
        >>> pg.rank(), pg.size(), pg.ranks
        (0, 1, [0])
        >>> dist.destroy_process_group()
    """

    backend = "base"

    def __init__(self, ctrl_comm, ranks, world_rank: int, timeout):
        self._ctrl = ctrl_comm               # MPI communicator for the checks
        self._rank = ctrl_comm.Get_rank()
        self._size = ctrl_comm.Get_size()
        self.ranks = list(ranks)             # global rank of each group rank
        self._world_rank = world_rank
        self._timeout = _seconds(timeout)
        self._seq = 0
        self._blocking_ok = self._size > 1 and _thread_multiple()
        # the check's buffers and persistent requests, made once: a collective then costs one
        # Start and a few Tests on each rank, no new request objects
        self._check = np.empty(2 * _WIDTH, dtype=np.int64)    # [d, -d]
        self._checked = np.empty(2 * _WIDTH, dtype=np.int64)  # elementwise min over the ranks
        self._cache: dict = {}
        self._last_key, self._check_bytes = None, b""
        self._ping_in = np.empty(2, dtype=np.int64)
        self._pongs: list = []
        if self._size > 1:
            from mpi4py import MPI
            self._p_check = ctrl_comm.Allreduce_init(self._check, self._checked, op=MPI.MIN)
            self._p_ping = ctrl_comm.Recv_init(self._ping_in, source=MPI.ANY_SOURCE, tag=_TAG_PING)
            self._p_ping.Start()  # stays posted: a timed-out peer may ask at any time
            self._ping_status = MPI.Status()

    def _free_requests(self) -> None:
        ping = getattr(self, "_p_ping", None)
        if ping is not None:
            if not ping.Test():  # the always-posted receive: cancel it before freeing
                ping.Cancel()
                ping.Wait()
            ping.Free()
            self._p_check.Free()
            self._p_ping = None
        self._pongs = [r for r in self._pongs if not r.Test()]  # answers still in flight are dropped

    # -- identity --------------------------------------------------------------------------
    def rank(self) -> int:
        """This process's rank in the group."""
        return self._rank

    def size(self) -> int:
        """Number of ranks in the group."""
        return self._size

    def group_rank(self, global_rank: int, what: str = "rank") -> int:
        """The group rank of a global rank (``torch.distributed.get_group_rank``)."""
        try:
            return self.ranks.index(int(global_rank))
        except ValueError:
            raise ValueError(f"{what} {global_rank} is not in the process group of ranks {self.ranks}") from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend} ranks={self.ranks} rank={self._rank}>"

    # -- the check before each collective ----------------------------------------------------
    def _agree(self, op: str, array=None, root: int = -1, redop=None, extra: int = -1, label=None) -> None:
        """Every rank must call the same collective on the same dtype/shape (see module doc).

        The fast path does no NumPy work: the [d, -d] buffer of the last call is reused when
        the call is the same (DDP's buckets, a training loop's all_reduce), and the result is
        compared as bytes.
        """
        self._seq += 1
        if self._size == 1:
            return
        # (the enum's _value_, not the enum: hashing an Enum member runs Python code)
        key = (op, None if array is None else array.dtype, None if array is None else array.shape,
               root, None if redop is None else redop._value_, extra)
        if key != self._last_key:
            entry = self._cache.get(key)
            if entry is None:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                d = _descriptor(op, array, root, redop, extra)
                both = np.concatenate([d, -d])
                entry = self._cache[key] = (both, both.tobytes())
            self._check[...] = entry[0]
            self._check_bytes = entry[1]
            self._last_key = key
        req = self._p_check
        req.Start()
        if not req.Test():
            start = time.monotonic()
            if not _poll(self._check_or_answer, start + self._timeout):
                self._name_missing(op, label)
        # the result is [min(d), -max(d)]: equal to this rank's [d, -d] exactly when every
        # rank's d is the same (and then on every rank, so all take the same branch)
        if self._checked.tobytes() != self._check_bytes:
            self._report_mismatch(op, label)

    def _what(self, op, label) -> str:
        return f"{label or op} (collective #{self._seq} on ranks {self.ranks})"

    def _check_or_answer(self) -> bool:
        if self._p_check.Test():
            return True
        self._answer_pings()
        return False

    def _answer_pings(self) -> None:
        """Answer a timed-out peer's "are you here?" with this rank's sequence number."""
        ping = self._p_ping
        while ping.Test(self._ping_status):
            src = self._ping_status.Get_source()
            self._pongs = [r for r in self._pongs if not r.Test()]
            self._pongs.append(self._ctrl.Isend(np.array([self._seq, 0], dtype=np.int64), dest=src, tag=_TAG_PONG))
            ping.Start()

    def _name_missing(self, op, label) -> None:
        """The check did not complete in time: ask every peer, name those that do not answer.

        The ranks that arrived are all polling their own check and answer within microseconds;
        a dead rank, or one busy elsewhere, does not. The group is broken either way (the
        check's all-reduce can never complete), so this is fatal.
        """
        from mpi4py import MPI
        peers = [r for r in range(self._size) if r != self._rank]
        answers = {r: np.full(2, -1, dtype=np.int64) for r in peers}
        me = np.array([self._seq, 0], dtype=np.int64)
        reqs = {}
        for r in peers:
            try:
                self._ctrl.Isend(me, dest=r, tag=_TAG_PING)
                reqs[r] = self._ctrl.Irecv(answers[r], source=r, tag=_TAG_PONG)
            except MPI.Exception:  # a peer whose process is gone
                pass

        def all_answered():
            self._answer_pings()
            return all(q.Test() for q in reqs.values())

        _poll(all_answered, time.monotonic() + _PONG_GRACE)
        missing = [self.ranks[r] for r in peers if r not in reqs or answers[r][0] < 0]
        _fail(self, f"{self._what(op, label)}: rank(s) {missing} did not arrive within {self._timeout:g} s "
              "(dead, stuck, or calling a different number of collectives)", True)

    def _report_mismatch(self, op, label) -> None:
        """All ranks saw the same disagreement: gather the descriptors and raise the same error."""
        table = np.empty((self._size, _WIDTH), dtype=np.int64)
        req = self._ctrl.Iallgather(self._check[:_WIDTH].copy(), table)
        if not _poll(req.Test, time.monotonic() + self._timeout):
            _fail(self, f"{self._what(op, label)}: the ranks disagree and a rank stopped answering", True)
        problem = _mismatch_message(table, self.ranks)
        _fail(self, f"{self._what(op, label)}: the ranks disagree — {problem}. Every rank must call the same "
              "collective with the same shape, dtype, op and root", False)

    # -- array API ----------------------------------------------------------------------------
    def _need_contiguous(self, op, *arrays) -> None:
        for a in arrays:
            if a is not None and not a.flags.c_contiguous:
                raise ValueError(f"ProcessGroup.{op}: arrays must be C-contiguous, got strides {a.strides}")

    def _root(self, op, root) -> int:
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < self._size:
            raise ValueError(f"{op}: root must be a group rank in [0, {self._size}), got {root!r}")
        return int(root)

    def barrier(self) -> Work:
        """All ranks reach this point before any leaves it (``ProcessGroup.barrier``)."""
        self._agree("barrier")
        return _DoneWork(self, "barrier")

    def allreduce(self, array, op: ReduceOp = ReduceOp.SUM, *, name: str = "all_reduce") -> Work:
        """``array`` <- reduction of every rank's ``array`` (in place)."""
        op = _check_op(name, op, array.dtype)
        self._need_contiguous(name, array)
        self._agree("all_reduce", array, redop=op, label=name)
        return self._launch_allreduce(array, op, name)

    def allreduce_now(self, array, op: ReduceOp = ReduceOp.SUM, *, name: str = "all_reduce") -> None:
        """``allreduce(...).wait()`` with the least overhead (the synchronous ``all_reduce``):
        the backend's blocking algorithm where it has one (MPI's ``Allreduce`` instead of
        ``Iallreduce`` + wait), guarded by the watchdog's deadline."""
        op = _check_op(name, op, array.dtype)
        self._need_contiguous(name, array)
        self._agree("all_reduce", array, redop=op, label=name)
        if not (self._blocking_ok and self._run_allreduce(array, op, name)):
            self._launch_allreduce(array, op, name).wait()

    def _run_allreduce(self, array, op, name) -> bool:
        """Run the whole all-reduce blocking and return True, or return False (then the
        non-blocking launch is used). Backends with a faster blocking path override this."""
        return False

    def _blocking(self, name: str, call, *args, **kwargs) -> None:
        """``call(*args, **kwargs)`` (a blocking transport call) under the watchdog's deadline."""
        _watchdog.watch(self, time.monotonic() + self._timeout, self, name)
        try:
            call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - transport errors become one exception type
            _fail(self, f"{name} on ranks {self.ranks} failed: {type(e).__name__}: {e}", True)
        finally:
            _watchdog.unwatch(self)

    def broadcast(self, array, root: int = 0, *, name: str = "broadcast") -> Work:
        """``array`` <- root's ``array`` on every rank."""
        root = self._root(name, root)
        self._need_contiguous(name, array)
        self._agree("broadcast", array, root=root, label=name)
        return self._launch_broadcast(array, root, name)

    def allgather(self, send, recv, *, name: str = "all_gather_into_tensor") -> Work:
        """``recv`` (``size`` times ``send``'s elements) <- every rank's ``send`` in rank order."""
        self._need_contiguous(name, send, recv)
        _same_dtype(name, send, recv)
        if recv.size != send.size * self._size:
            raise ValueError(f"{name}: output has {recv.size} elements, expected world size {self._size} "
                             f"x input's {send.size} = {send.size * self._size}")
        self._agree("all_gather", send, label=name)
        return self._launch_allgather(send, recv, name)

    def reduce_scatter(self, send, recv, op: ReduceOp = ReduceOp.SUM, *, name: str = "reduce_scatter_tensor") -> Work:
        """``recv`` <- this rank's block of the reduction of every rank's ``send``."""
        op = _check_op(name, op, send.dtype)
        self._need_contiguous(name, send, recv)
        _same_dtype(name, send, recv)
        if send.size != recv.size * self._size:
            raise ValueError(f"{name}: input has {send.size} elements, expected world size {self._size} "
                             f"x output's {recv.size} = {recv.size * self._size}")
        self._agree("reduce_scatter_tensor", send, redop=op, label=name)
        return self._launch_reduce_scatter(send, recv, op, name)

    def gather(self, send, recv, root: int = 0, *, name: str = "gather") -> Work:
        """Root's ``recv`` <- every rank's ``send`` in rank order (``recv`` ignored elsewhere)."""
        root = self._root(name, root)
        self._need_contiguous(name, send)
        if self._rank == root:
            self._need_contiguous(name, recv)
            _same_dtype(name, send, recv)
            if recv.size != send.size * self._size:
                raise ValueError(f"{name}: the gather buffer has {recv.size} elements, expected "
                                 f"{self._size} x {send.size}")
        self._agree("gather", send, root=root, label=name)
        return self._launch_gather(send, recv, root, name)

    def scatter(self, send, recv, root: int = 0, *, name: str = "scatter") -> Work:
        """Every rank's ``recv`` <- its block of root's ``send`` (``send`` ignored elsewhere)."""
        root = self._root(name, root)
        self._need_contiguous(name, recv)
        if self._rank == root:
            self._need_contiguous(name, send)
            _same_dtype(name, send, recv)
            if send.size != recv.size * self._size:
                raise ValueError(f"{name}: the scatter buffer has {send.size} elements, expected "
                                 f"{self._size} x {recv.size}")
        self._agree("scatter", recv, root=root, label=name)
        return self._launch_scatter(send, recv, root, name)

    def reduce(self, array, root: int = 0, op: ReduceOp = ReduceOp.SUM, *, name: str = "reduce") -> Work:
        """Root's ``array`` <- reduction of every rank's ``array``; others keep theirs."""
        root = self._root(name, root)
        op = _check_op(name, op, array.dtype)
        self._need_contiguous(name, array)
        self._agree("reduce", array, root=root, redop=op, label=name)
        return self._launch_reduce(array, root, op, name)

    def send(self, array, dst: int, tag: int = 0) -> Work:
        """Start sending ``array`` to group rank ``dst`` (matched by a ``recv`` with the same tag).

        Point-to-point messages skip the descriptor check (halo exchanges send many small
        messages); ``wait`` still ends the job past the timeout.
        """
        self._need_contiguous("send", array)
        dst = self._peer("send", dst)
        return self._launch_send(array, dst, int(tag))

    def recv(self, array, src: int, tag: int = 0) -> Work:
        """Start receiving into ``array`` from group rank ``src``; a message of another size
        raises naming both sizes."""
        self._need_contiguous("recv", array)
        src = self._peer("recv", src)
        return self._launch_recv(array, src, int(tag))

    def _peer(self, op, peer) -> int:
        peer = self._root(op, peer)
        if peer == self._rank:
            raise ValueError(f"{op}: peer rank {self.ranks[peer]} is this rank; send/recv need another rank")
        return peer

    def exchange(self, sends, recvs, tag: int = 0) -> list:
        """Start several point-to-point messages together (``torch.distributed.batch_isend_irecv``):
        ``sends`` and ``recvs`` are lists of ``(array, peer group rank)``; returns the Works to
        wait on. MPI posts the receives first, then the sends; NCCL runs them as one group, which
        it needs to avoid an ordering deadlock between ranks that send to each other.
        """
        sends = [(a, self._peer("exchange", p)) for a, p in sends]
        recvs = [(a, self._peer("exchange", p)) for a, p in recvs]
        self._need_contiguous("exchange", *[a for a, _ in sends + recvs])
        return self._launch_exchange(sends, recvs, int(tag))

    def _launch_exchange(self, sends, recvs, tag) -> list:
        works = [self._launch_recv(a, p, tag) for a, p in recvs]
        return works + [self._launch_send(a, p, tag) for a, p in sends]

    def split(self, members) -> "ProcessGroup | _NonMember":
        """A new group of the given *group* ranks (collective over this group; ``new_group``)."""
        members = sorted(int(r) for r in members)
        self._agree("new_group", extra=sum((r + 1) * 1000003 ** k for k, r in enumerate(members)) % (1 << 62))
        return self._split(members)


def _check_op(name, op, np_dtype) -> ReduceOp:
    if not isinstance(op, ReduceOp):
        raise ValueError(f"{name}: op must be a ReduceOp (SUM, AVG, PRODUCT, MIN, MAX), got {op!r}")
    if op is ReduceOp.AVG and np.dtype(np_dtype).kind not in "fc":
        raise TypeError(f"{name}: ReduceOp.AVG needs a floating dtype, got {np.dtype(np_dtype).name}; "
                        "use SUM and divide")
    return op


def _same_dtype(name, a, b) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{name}: input dtype {a.dtype} and output dtype {b.dtype} differ")
