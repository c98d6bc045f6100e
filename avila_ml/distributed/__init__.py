"""``avila_ml.distributed``: process groups and collectives over MPI and NCCL (``torch.distributed``).

Launch N processes with ``mpiexec -n N python script.py``, ``python -m avila_ml.distributed.run
-n N script.py`` or ``srun --mpi=pmix`` on a cluster; each calls :func:`init_process_group`.
A script started without a launcher is a world of size 1 and runs unchanged.

Example:
    >>> import avila_ml as am
    >>> import avila_ml.distributed as dist
    >>> dist.init_process_group()                 # world of size 1 without a launcher
    >>> t = am.tensor([1.0, 2.0])
    >>> dist.all_reduce(t, op=dist.ReduceOp.SUM)  # in place; sum over ranks
    >>> t, dist.get_rank(), dist.get_world_size()
    (tensor([1., 2.]), 0, 1)
    >>> dist.destroy_process_group()
"""
from .errors import DistBackendError, DistError  # noqa: F401
from .process_group import GroupMember, ProcessGroup, ReduceOp, Work  # noqa: F401
from .distributed_c10d import *  # noqa: F401,F403
from .distributed_c10d import __all__ as _c10d_all
from . import distributed_c10d  # noqa: F401
from .checkpoint import save, load  # noqa: F401
from .domain import DomainSpec, Layout  # noqa: F401
from .halo import Exchange, HaloGather, HaloPlan, HaloScatterAdd, halo_plan  # noqa: F401
from .domain_parallel import DomainLoss, DomainParallel  # noqa: F401
from . import domain_ops  # noqa: F401

__all__ = ["DistError", "DistBackendError", "GroupMember", "ProcessGroup", "ReduceOp", "Work",
           "save", "load", "DomainSpec", "Layout", "DomainParallel", "DomainLoss", "Exchange", "HaloGather",
           "HaloPlan", "HaloScatterAdd", "halo_plan"] + list(_c10d_all)
