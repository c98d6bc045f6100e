"""``DistributedSampler``: each rank of a data-parallel job reads its own share of the dataset."""
from __future__ import annotations

import math

import numpy as np

from .sampler import Sampler

__all__ = ["DistributedSampler"]


class DistributedSampler(Sampler):
    """The indices of rank ``rank`` out of ``num_replicas`` (``torch.utils.data.distributed.DistributedSampler``).

    Each epoch the index list (shuffled with seed ``seed + epoch`` when ``shuffle``; call
    :meth:`set_epoch` before each epoch so the order changes) is padded by repeating its
    beginning until its length is a multiple of ``num_replicas`` — or, with ``drop_last=True``,
    cut to the largest multiple — and rank r takes every ``num_replicas``-th index starting
    at r. Every rank gets the same number of indices, so no rank waits in a collective for a
    batch the others do not have. The sampler runs in the main process, so it works with
    ``DataLoader`` workers unchanged. ``num_replicas`` / ``rank`` default to the world size and
    rank of the initialized process group.

    Math: num_samples = ceil(n / R) (drop_last: floor(n / R) when R does not divide n);
    rank r yields perm[(r + k R) mod n] for k < num_samples, perm the (shuffled) 0..n-1.

    Example:
        >>> import avila_ml as am
        >>> [list(am.data.DistributedSampler(range(5), num_replicas=2, rank=r, shuffle=False))
        ...  for r in range(2)]
        [[0, 2, 4], [1, 3, 0]]
        >>> s = am.data.DistributedSampler(range(5), num_replicas=2, rank=0, drop_last=True, shuffle=False)
        >>> list(s), len(s)
        ([0, 2], 2)
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if num_replicas is None or rank is None:
            from .. import distributed as dist
            if not dist.is_initialized():
                raise RuntimeError("DistributedSampler: num_replicas and rank default to the process "
                                   "group's; call avila_ml.distributed.init_process_group() first or "
                                   "pass them")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be a positive integer, got {num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: Invalid rank {rank}, rank should be in the interval "
                             f"[0, {num_replicas - 1}]")
        self.dataset = dataset
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % self.num_replicas:
            self.num_samples = math.ceil((n - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            indices = np.random.default_rng(self.seed + self.epoch).permutation(n).tolist()
        else:
            indices = list(range(n))
        if not self.drop_last:
            pad = self.total_size - len(indices)
            if pad > 0 and indices:
                indices += (indices * math.ceil(pad / len(indices)))[:pad]
        else:
            indices = indices[: self.total_size]
        return iter(indices[self.rank:self.total_size:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use ``seed + epoch`` for the next shuffle (``DistributedSampler.set_epoch``); every
        rank must call it with the same epoch."""
        self.epoch = int(epoch)
