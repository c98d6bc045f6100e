"""Where this process sits in the job: rank, world size and local rank from the launcher's
environment variables.

Launchers are tried in a fixed order, the first that sets its variables wins:

1. torchrun / ``torch.distributed.launch``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
   (``MASTER_ADDR`` / ``MASTER_PORT`` are recorded but not used: the transport is MPI);
2. Open MPI's ``mpirun``: ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``,
   ``OMPI_COMM_WORLD_LOCAL_RANK``;
3. MPICH / Hydra ``mpiexec`` (and Intel MPI, MVAPICH): ``PMI_RANK``, ``PMI_SIZE``,
   ``MPI_LOCALRANKID``;
4. Slurm's ``srun``: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``.

None of them: a single process, a world of size 1 (scripts run unchanged without a launcher).
"""
from __future__ import annotations

import os
from typing import NamedTuple

__all__ = ["LaunchInfo", "detect_launch"]

# (launcher, rank variable, size variable, local-rank variable)
_LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


class LaunchInfo(NamedTuple):
    """What the launcher told this process: ``rank``, ``world_size``, ``local_rank`` and which
    ``launcher`` (``"torchrun"``, ``"openmpi"``, ``"mpich"``, ``"slurm"`` or ``"none"``).

    PyTorch has no such record (``torch.distributed`` reads ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` in its ``env://`` rendezvous); :func:`detect_launch` returns one.

    Example:
        >>> from avila_ml.distributed.env import LaunchInfo, detect_launch
        >>> info = detect_launch({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
        >>> info.rank, info.world_size, info.local_rank
        (3, 4, 1)
        >>> LaunchInfo(0, 1, 0, "none") == detect_launch({})
        True
    """

    rank: int
    world_size: int
    local_rank: int
    launcher: str


def _int(env, name: str, launcher: str) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"init_process_group: {launcher} variable {name}={raw!r} is not an integer") from None


def detect_launch(env=None) -> LaunchInfo:
    """Rank, world size and local rank from the first launcher whose variables are set.

    The local rank falls back to the rank when a launcher sets rank and size but not the
    local rank (one node). A single process with no launcher is rank 0 of a world of size 1.

    Example:
        >>> from avila_ml.distributed.env import detect_launch
        >>> detect_launch({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"})
        LaunchInfo(rank=1, world_size=2, local_rank=1, launcher='mpich')
        >>> detect_launch({})
        LaunchInfo(rank=0, world_size=1, local_rank=0, launcher='none')
    """
    env = os.environ if env is None else env
    for launcher, rank_var, size_var, local_var in _LAUNCHERS:
        if rank_var in env and size_var in env:
            rank = _int(env, rank_var, launcher)
            size = _int(env, size_var, launcher)
            local = _int(env, local_var, launcher) if local_var in env else rank
            if size < 1 or not 0 <= rank < size:
                raise ValueError(f"init_process_group: {launcher} says rank {rank} of world size {size} "
                                 f"({rank_var}, {size_var}); expected 0 <= rank < size")
            return LaunchInfo(rank, size, local, launcher)
    return LaunchInfo(0, 1, 0, "none")
