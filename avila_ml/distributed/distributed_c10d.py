"""The process-group state and the collectives on Tensors (``torch.distributed.distributed_c10d``).

Collectives work in place on their tensors, as PyTorch's do; ``async_op=True`` returns a
:class:`~avila_ml.distributed.Work` whose ``wait()`` finishes the operation. Ranks in
arguments (``src``, ``dst``) are *global* ranks, as in PyTorch; ``group=None`` is the world.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor
from .env import detect_launch
from .process_group import GroupMember, ProcessGroup, ReduceOp, Work, _seconds

__all__ = [
    "init_process_group", "destroy_process_group", "is_initialized", "is_available",
    "is_mpi_available", "is_nccl_available", "get_rank", "get_world_size", "get_local_rank",
    "get_backend", "get_global_rank", "get_group_rank", "new_group", "barrier", "all_reduce",
    "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "gather",
    "scatter", "reduce", "send", "recv", "isend", "irecv",
]


class _State:
    world: ProcessGroup | None = None
    local_rank: int = 0
    launcher: str = "none"


_state = _State()


def is_available() -> bool:
    """True: the distributed package is always built (``torch.distributed.is_available``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.is_available()
        True
    """
    return True


def is_mpi_available() -> bool:
    """True when ``mpi4py`` can be imported (``torch.distributed.is_mpi_available``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.is_mpi_available()
        True
    """
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def is_nccl_available() -> bool:
    """True when CuPy with NCCL support and a GPU are present (``torch.distributed.is_nccl_available``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> isinstance(dist.is_nccl_available(), bool)
        True
    """
    from ..backends import cuda_is_available
    if not cuda_is_available():
        return False
    try:
        from cupy.cuda import nccl
    except ImportError:
        return False
    return bool(getattr(nccl, "available", True))


def is_initialized() -> bool:
    """Whether ``init_process_group`` has run (``torch.distributed.is_initialized``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.is_initialized()
        False
    """
    return _state.world is not None


def _world(op: str) -> ProcessGroup:
    if _state.world is None:
        raise ValueError(f"avila_ml.distributed.{op}: the default process group has not been "
                         "initialized; call avila_ml.distributed.init_process_group() first")
    return _state.world


def _get_default_group() -> ProcessGroup:
    return _world("_get_default_group")


def _group(group, op: str):
    """The ProcessGroup to use, or None when this rank is not a member."""
    world = _world(op)
    if group is None:
        return world
    if group is GroupMember.NON_GROUP_MEMBER:
        return None
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"avila_ml.distributed.{op}: group must be a ProcessGroup from new_group(), got {group!r}")
    return group


def init_process_group(backend: str | None = None, init_method: str | None = None, timeout=None,
                       world_size: int = -1, rank: int = -1) -> None:
    """Join the job's default process group (``torch.distributed.init_process_group``).

    ``backend``: ``"mpi"`` (mpi4py; CPU tensors, and GPU tensors with a CUDA-aware MPI),
    ``"nccl"`` (GPU tensors; the NCCL id is broadcast over MPI) or None (NCCL when the default
    device is CUDA and NCCL is available, else MPI). Rank, world size and local rank come from
    the launcher's environment (see :mod:`avila_ml.distributed.env`: torchrun, Open MPI,
    MPICH/Hydra, Slurm, in that order) and must agree with the MPI world; without any launcher
    the process is a world of size 1, which needs neither MPI nor mpi4py. With GPUs, each process binds ``cuda:<local rank>`` as
    its default device. ``timeout`` (``datetime.timedelta`` or seconds, default 5 minutes)
    bounds every collective: mismatched shapes, a dead rank or one that never arrives end
    every process with an error naming the collective and the ranks.

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi", timeout=60)
        >>> dist.get_rank(), dist.get_world_size(), dist.get_backend()
        (0, 1, 'mpi')
        >>> dist.destroy_process_group()
    """
    if _state.world is not None:
        raise RuntimeError("init_process_group: trying to initialize the default process group twice")
    if init_method not in (None, "env://"):
        raise ValueError(f"init_process_group: init_method {init_method!r} is not supported; ranks come "
                         "from the launcher's environment (init_method=None or 'env://')")
    seconds = _seconds(timeout)
    if backend is not None:
        backend = str(backend).lower()
        if backend not in ("mpi", "nccl"):
            raise ValueError(f"init_process_group: unknown backend {backend!r}; expected 'mpi', 'nccl' or None")
    info = detect_launch()
    if info.launcher == "none":
        from .mpi_group import _SelfComm
        comm = _SelfComm()  # a world of size 1 needs no MPI (nor mpi4py)
    else:
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError("init_process_group: mpi4py is needed to run on several processes (it also "
                              "carries the NCCL id and the collective checks); install it with "
                              "`pip install avila-ml[distributed]`") from None
        comm = MPI.COMM_WORLD
        if (comm.Get_size(), comm.Get_rank()) != (info.world_size, info.rank):
            raise RuntimeError(
                f"init_process_group: the {info.launcher} environment says rank {info.rank} of "
                f"{info.world_size}, but MPI sees rank {comm.Get_rank()} of {comm.Get_size()}. Start the "
                "processes with an MPI launcher (mpiexec, srun --mpi=pmix, or "
                "python -m avila_ml.distributed.run); torchrun alone starts no MPI job")
    for name, given, actual in (("world_size", world_size, comm.Get_size()), ("rank", rank, comm.Get_rank())):
        if given not in (-1, None) and given != actual:
            raise ValueError(f"init_process_group: {name}={given} but the launcher started {name} {actual}")
    from ..backends import cuda_is_available, get_default_device, set_default_device
    if backend is None:
        backend = "nccl" if get_default_device().type == "cuda" and is_nccl_available() else "mpi"
    if backend == "nccl" or (get_default_device().type == "cuda" and cuda_is_available()):
        set_default_device(f"cuda:{info.local_rank}")
        import cupy
        cupy.cuda.Device(info.local_rank).use()
    ranks = list(range(comm.Get_size()))
    if backend == "nccl":
        from .nccl_group import NCCLProcessGroup
        world = NCCLProcessGroup(comm, ranks, comm.Get_rank(), seconds)
    else:
        from .mpi_group import MPIProcessGroup
        world = MPIProcessGroup(comm, ranks, comm.Get_rank(), seconds)
    _state.world, _state.local_rank, _state.launcher = world, info.local_rank, info.launcher
    _state.groups = [world]


def destroy_process_group(group=None) -> None:
    """Leave the default process group (or free one group) (``torch.distributed.destroy_process_group``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi"); dist.destroy_process_group(); dist.is_initialized()
        False
    """
    world = _world("destroy_process_group")
    if group is None:
        for g in getattr(_state, "groups", [world]):
            g.destroy()
        _state.world, _state.groups = None, []
    elif group is not GroupMember.NON_GROUP_MEMBER:
        group.destroy()
        if group in _state.groups:
            _state.groups.remove(group)
    del world


def get_rank(group=None) -> int:
    """This process's rank in ``group`` (world by default), -1 outside it (``torch.distributed.get_rank``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi"); dist.get_rank()
        0
        >>> dist.destroy_process_group()
    """
    g = _group(group, "get_rank")
    return -1 if g is None else g.rank()


def get_world_size(group=None) -> int:
    """Number of ranks in ``group`` (world by default) (``torch.distributed.get_world_size``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi"); dist.get_world_size()
        1
        >>> dist.destroy_process_group()
    """
    g = _group(group, "get_world_size")
    return -1 if g is None else g.size()


def get_local_rank() -> int:
    """This process's rank on its node, from the launcher (``torch.distributed.get_node_local_rank``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi"); dist.get_local_rank()
        0
        >>> dist.destroy_process_group()
    """
    _world("get_local_rank")
    return _state.local_rank


def get_backend(group=None) -> str:
    """``"mpi"`` or ``"nccl"`` (``torch.distributed.get_backend``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi"); dist.get_backend()
        'mpi'
        >>> dist.destroy_process_group()
    """
    g = _group(group, "get_backend")
    if g is None:
        raise ValueError("get_backend: this rank is not in the group")
    return g.backend


def get_global_rank(group, group_rank: int) -> int:
    """The global rank of ``group_rank`` in ``group`` (``torch.distributed.get_global_rank``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi"); dist.get_global_rank(None, 0)
        0
        >>> dist.destroy_process_group()
    """
    g = _group(group, "get_global_rank")
    if g is None or not 0 <= group_rank < g.size():
        raise ValueError(f"get_global_rank: group rank {group_rank} is not in the group")
    return g.ranks[group_rank]


def get_group_rank(group, global_rank: int) -> int:
    """The rank of global rank ``global_rank`` within ``group`` (``torch.distributed.get_group_rank``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi"); dist.get_group_rank(None, 0)
        0
        >>> dist.destroy_process_group()
    """
    g = _group(group, "get_group_rank")
    if g is None:
        raise ValueError("get_group_rank: this rank is not in the group")
    return g.group_rank(global_rank, "get_group_rank: rank")


def new_group(ranks=None, timeout=None, backend=None):
    """A process group of the given global ``ranks`` (all ranks by default); every rank of
    the world must call it, non-members get ``GroupMember.NON_GROUP_MEMBER``
    (``torch.distributed.new_group``). Group ranks follow the sorted global ranks.

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> g = dist.new_group([0]); dist.get_world_size(g), g.ranks
        (1, [0])
        >>> dist.destroy_process_group()
    """
    world = _world("new_group")
    ranks = list(range(world.size())) if ranks is None else sorted({int(r) for r in ranks})
    bad = [r for r in ranks if not 0 <= r < world.size()]
    if bad or not ranks:
        raise ValueError(f"new_group: ranks must be a non-empty subset of 0..{world.size() - 1}, got {ranks}")
    if backend is not None and str(backend).lower() != world.backend:
        raise ValueError(f"new_group: backend {backend!r} differs from the world's {world.backend!r}")
    group = world.split(ranks)
    if isinstance(group, ProcessGroup):
        if timeout is not None:
            group._timeout = _seconds(timeout)
        _state.groups.append(group)
    return group


# -- tensors <-> arrays ------------------------------------------------------------------------
def _tensor(t, op: str, what: str = "tensor") -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"avila_ml.distributed.{op}: {what} must be a Tensor, got {type(t).__name__}")
    return t


def _source(t: Tensor):
    """``t``'s array as the transport reads it: C-contiguous (a copy only where it is not)."""
    a = t.array
    return a if a.flags.c_contiguous else a.copy(order="C")


def _unpacker(buf, tensors):
    """Write ``buf[r]`` into ``tensors[r]`` in place (after a gather into one buffer)."""
    def unpack():
        for r, t in enumerate(tensors):
            t._version[0] += 1
            t.array[...] = buf[r]
    return unpack


def _checked(g, op: str, *tensors):
    """Each of ``(tensor, what)`` is a Tensor on the group's kind of device."""
    for t, what in tensors:
        _tensor(t, op, what)
    _device_check(g, tensors[-1][0], op)


def _device_check(g, t, op):
    if g.backend == "nccl" and isinstance(t.array, np.ndarray):
        raise ValueError(f"avila_ml.distributed.{op}: the nccl backend needs CUDA tensors, got a cpu tensor")


def _inplace(t: Tensor):
    """(contiguous array to hand to the transport, function writing it back into ``t``)."""
    t._version[0] += 1  # written in place: saved-for-backward checks must see it
    a = t.array
    if a.flags.c_contiguous:
        return a, None
    xp_copy = a.copy(order="C") if hasattr(a, "copy") else a
    b = xp_copy

    def back():
        a[...] = b
    return b, back


def _chain(*fns):
    fns = [f for f in fns if f is not None]
    if not fns:
        return None

    def run():
        for f in fns:
            f()
    return run


def _finish(work: Work, extra, async_op: bool):
    if extra is not None:
        inner = work._finish
        work._finish = _chain(inner, extra)
        if work._done:  # already complete (size-1 groups): run the write-back now
            work._finish = None
            _chain(inner, extra)()
    if async_op:
        return work
    work.wait()
    return None


def _op(group, op: str):
    return _group(group, op)


def barrier(group=None, async_op: bool = False, device_ids=None):
    """Wait until every rank of ``group`` reaches this call (``torch.distributed.barrier``).

    Example:
        >>> import avila_ml.distributed as dist
        >>> dist.init_process_group("mpi"); dist.barrier(); dist.destroy_process_group()
    """
    g = _op(group, "barrier")
    if g is None:
        return None
    return _finish(g.barrier(), None, async_op)


def all_reduce(tensor, op: ReduceOp = ReduceOp.SUM, group=None, async_op: bool = False):
    """``tensor`` <- its reduction over all ranks, in place (``torch.distributed.all_reduce``).

    Math: SUM gives sum_r t_r on every rank; AVG sum_r t_r / world_size; PRODUCT, MIN, MAX
    likewise elementwise.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> t = am.tensor([1.0, 2.0]); dist.all_reduce(t, dist.ReduceOp.MAX); t
        tensor([1., 2.])
        >>> dist.destroy_process_group()
    """
    g = _op(group, "all_reduce")
    if g is None:
        return None
    _checked(g, "all_reduce", (tensor, "tensor"))
    a, back = _inplace(tensor)
    if async_op:
        return _finish(g.allreduce(a, op), back, async_op)
    g.allreduce_now(a, op)
    if back is not None:
        back()
    return None


def broadcast(tensor, src: int = 0, group=None, async_op: bool = False):
    """``tensor`` <- rank ``src``'s tensor on every rank (``torch.distributed.broadcast``).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> t = am.tensor([3, 4]); dist.broadcast(t, src=0); t
        tensor([3, 4])
        >>> dist.destroy_process_group()
    """
    g = _op(group, "broadcast")
    if g is None:
        return None
    _checked(g, "broadcast", (tensor, "tensor"))
    root = g.group_rank(src, "broadcast: src")
    a, back = _inplace(tensor)
    return _finish(g.broadcast(a, root), back, async_op)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op: bool = False):
    """``output_tensor`` <- every rank's ``input_tensor`` concatenated (or stacked) in rank
    order; it holds world_size times the input's elements (``torch.distributed.all_gather_into_tensor``).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> out = am.zeros(2); dist.all_gather_into_tensor(out, am.tensor([5.0, 6.0])); out
        tensor([5., 6.])
        >>> dist.destroy_process_group()
    """
    g = _op(group, "all_gather_into_tensor")
    if g is None:
        return None
    _checked(g, "all_gather_into_tensor", (output_tensor, "output_tensor"), (input_tensor, "input_tensor"))
    out, back = _inplace(output_tensor)
    src = _source(input_tensor)
    return _finish(g.allgather(src, out), back, async_op)


def all_gather(tensor_list, tensor, group=None, async_op: bool = False):
    """``tensor_list[r]`` <- rank r's ``tensor`` (same shape and dtype on every rank)
    (``torch.distributed.all_gather``).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> out = [am.zeros(2)]; dist.all_gather(out, am.tensor([1.0, 2.0])); out
        [tensor([1., 2.])]
        >>> dist.destroy_process_group()
    """
    g = _op(group, "all_gather")
    if g is None:
        return None
    _checked(g, "all_gather", (tensor, "tensor"))
    _check_list(tensor_list, g.size(), tensor, "all_gather", "tensor_list")
    src = _source(tensor)
    xp = _xp(src)
    buf = xp.empty((g.size(),) + tuple(src.shape), dtype=src.dtype)
    return _finish(g.allgather(src, buf, name="all_gather"), _unpacker(buf, tensor_list), async_op)


def reduce_scatter_tensor(output, input, op: ReduceOp = ReduceOp.SUM, group=None, async_op: bool = False):
    """``output`` <- this rank's block (dim 0 split in world_size parts) of the reduction of
    every rank's ``input`` (``torch.distributed.reduce_scatter_tensor``).

    Math: rank r gets op_q input_q[r*n:(r+1)*n] with n = output.numel().

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> out = am.zeros(2); dist.reduce_scatter_tensor(out, am.tensor([1.0, 2.0])); out
        tensor([1., 2.])
        >>> dist.destroy_process_group()
    """
    g = _op(group, "reduce_scatter_tensor")
    if g is None:
        return None
    _checked(g, "reduce_scatter_tensor", (output, "output"), (input, "input"))
    out, back = _inplace(output)
    src = _source(input)
    return _finish(g.reduce_scatter(src, out, op), back, async_op)


def gather(tensor, gather_list=None, dst: int = 0, group=None, async_op: bool = False):
    """Rank ``dst``'s ``gather_list[r]`` <- rank r's ``tensor`` (``torch.distributed.gather``);
    other ranks pass ``gather_list=None``.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> out = [am.zeros(1)]; dist.gather(am.tensor([7.0]), out, dst=0); out
        [tensor([7.])]
        >>> dist.destroy_process_group()
    """
    g = _op(group, "gather")
    if g is None:
        return None
    _checked(g, "gather", (tensor, "tensor"))
    root = g.group_rank(dst, "gather: dst")
    src = _source(tensor)
    buf, unpack = None, None
    if g.rank() == root:
        _check_list(gather_list, g.size(), tensor, "gather", "gather_list")
        buf = _xp(src).empty((g.size(),) + tuple(src.shape), dtype=src.dtype)
        unpack = _unpacker(buf, gather_list)
    elif gather_list:
        raise ValueError(f"gather: gather_list must be None or empty on non-destination rank {g.ranks[g.rank()]}")
    return _finish(g.gather(src, buf, root), unpack, async_op)


def scatter(tensor, scatter_list=None, src: int = 0, group=None, async_op: bool = False):
    """``tensor`` <- ``scatter_list[r]`` of rank ``src`` on each rank r (``torch.distributed.scatter``).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> t = am.zeros(2); dist.scatter(t, [am.tensor([1.0, 2.0])], src=0); t
        tensor([1., 2.])
        >>> dist.destroy_process_group()
    """
    g = _op(group, "scatter")
    if g is None:
        return None
    _checked(g, "scatter", (tensor, "tensor"))
    root = g.group_rank(src, "scatter: src")
    out, back = _inplace(tensor)
    send = None
    if g.rank() == root:
        _check_list(scatter_list, g.size(), tensor, "scatter", "scatter_list")
        send = _xp(out).stack([t.array for t in scatter_list])
    elif scatter_list:
        raise ValueError(f"scatter: scatter_list must be None or empty on non-source rank {g.ranks[g.rank()]}")
    return _finish(g.scatter(send, out, root), back, async_op)


def reduce(tensor, dst: int = 0, op: ReduceOp = ReduceOp.SUM, group=None, async_op: bool = False):
    """Rank ``dst``'s ``tensor`` <- the reduction of every rank's ``tensor`` (``torch.distributed.reduce``).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> t = am.tensor([2.0]); dist.reduce(t, dst=0, op=dist.ReduceOp.PRODUCT); t
        tensor([2.])
        >>> dist.destroy_process_group()
    """
    g = _op(group, "reduce")
    if g is None:
        return None
    _checked(g, "reduce", (tensor, "tensor"))
    root = g.group_rank(dst, "reduce: dst")
    a, back = _inplace(tensor)
    return _finish(g.reduce(a, root, op), back, async_op)


def isend(tensor, dst: int, group=None, tag: int = 0):
    """Start sending ``tensor`` to global rank ``dst``; returns a Work (``torch.distributed.isend``).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> dist.isend(am.zeros(1), dst=0)
        Traceback (most recent call last):
        ...
        ValueError: send: peer rank 0 is this rank; send/recv need another rank
        >>> dist.destroy_process_group()
    """
    g = _op(group, "isend")
    if g is None:
        return None
    _checked(g, "isend", (tensor, "tensor"))
    a = _source(tensor)
    return g.send(a, g.group_rank(dst, "isend: dst"), tag)


def irecv(tensor, src: int | None = None, group=None, tag: int = 0):
    """Start receiving into ``tensor`` from global rank ``src``; returns a Work (``torch.distributed.irecv``).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> dist.irecv(am.zeros(1), src=0)
        Traceback (most recent call last):
        ...
        ValueError: recv: peer rank 0 is this rank; send/recv need another rank
        >>> dist.destroy_process_group()
    """
    g = _op(group, "irecv")
    if g is None:
        return None
    _checked(g, "irecv", (tensor, "tensor"))
    if src is None:
        raise ValueError("irecv: src=None (any source) is not supported; give the sending rank")
    a, back = _inplace(tensor)
    work = g.recv(a, g.group_rank(src, "irecv: src"), tag)
    if back is not None:
        work._finish = _chain(work._finish, back)
    return work


def send(tensor, dst: int, group=None, tag: int = 0) -> None:
    """Send ``tensor`` to global rank ``dst`` and wait until it is out (``torch.distributed.send``).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> dist.send(am.zeros(1), dst=0)
        Traceback (most recent call last):
        ...
        ValueError: send: peer rank 0 is this rank; send/recv need another rank
        >>> dist.destroy_process_group()
    """
    work = isend(tensor, dst, group, tag)
    if work is not None:
        work.wait()


def recv(tensor, src: int | None = None, group=None, tag: int = 0) -> int:
    """Receive into ``tensor`` from global rank ``src``; returns ``src`` (``torch.distributed.recv``).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> dist.recv(am.zeros(1), src=0)
        Traceback (most recent call last):
        ...
        ValueError: recv: peer rank 0 is this rank; send/recv need another rank
        >>> dist.destroy_process_group()
    """
    work = irecv(tensor, src, group, tag)
    if work is None:
        return -1
    work.wait()
    return int(src)


def _xp(a):
    from ..backends import backend_of
    return backend_of(a).xp


def _check_list(lst, n, like, op, what) -> None:
    if not isinstance(lst, (list, tuple)) or len(lst) != n:
        raise ValueError(f"{op}: {what} must be a list of world size {n} tensors, got "
                         f"{type(lst).__name__} of length {len(lst) if hasattr(lst, '__len__') else '?'}")
    for i, t in enumerate(lst):
        _tensor(t, op, f"{what}[{i}]")
        if tuple(t.shape) != tuple(like.shape) or t.array.dtype != like.array.dtype:
            raise ValueError(f"{op}: {what}[{i}] is {t.dtype} {tuple(t.shape)}, expected {like.dtype} "
                             f"{tuple(like.shape)} like the tensor")

