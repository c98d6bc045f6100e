"""Checkpoints in a distributed run: rank 0 writes, the others wait; every rank can read.

In data-parallel training the model and optimizer states are the same on every rank, so one
file from rank 0 holds everything, and a checkpoint written by N ranks resumes on M ranks (the
sampler re-splits the data for the new world size from the saved epoch).
"""
from __future__ import annotations

from .. import io as _io

__all__ = ["save", "load"]


def save(obj, f, src: int = 0, group=None) -> None:
    """Rank ``src`` writes ``obj`` to ``f`` (atomically, as :func:`avila_ml.save`); every rank
    returns only after the file is complete. Without an initialized process group it is
    :func:`avila_ml.save`.

    Math: a barrier after the write orders it before any rank's later read.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist, tempfile, os
        >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "ckpt")
        >>> dist.init_process_group("mpi")
        >>> dist.save({"epoch": 3, "w": am.ones(2)}, path); dist.load(path)["epoch"]
        3
        >>> dist.destroy_process_group(); tmp.cleanup()
    """
    from . import distributed_c10d as c10d
    if not c10d.is_initialized():
        _io.save(obj, f)
        return
    g = c10d._group(group, "save")
    if g is None:
        return
    error = None
    if c10d.get_rank() == src:
        try:
            _io.save(obj, f)
        except Exception as e:  # noqa: BLE001 - told to everyone after the barrier
            error = e
    # the writer's success or failure reaches every rank, so nobody reads a missing file
    import numpy as np
    flag = np.array([0 if error is None else 1], dtype=np.int64)
    g.allreduce(flag).wait()
    if error is not None:
        raise error
    if flag[0]:
        raise RuntimeError(f"distributed.save: rank {src} failed to write {f!r}; see its error")


def load(f, map_location=None):
    """Every rank reads the checkpoint ``f`` (:func:`avila_ml.load`); tensors go to
    ``map_location`` (e.g. this rank's GPU).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist, tempfile, os
        >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "ckpt")
        >>> dist.save({"w": am.zeros(1)}, path); dist.load(path)["w"]
        tensor([0.])
        >>> tmp.cleanup()
    """
    return _io.load(f, map_location=map_location)
