"""DistributedDataParallel's gradient reducer: bucket plan, packing and overlapped all-reduce.

The same code runs on every transport (MPI on CPU, NCCL or CUDA-aware MPI on GPU): it only
packs gradients into flat ``xp`` buffers and calls ``ProcessGroup.allreduce(..., AVG)``, so CPU
tests cover the logic the GPU path uses. The design follows PyTorch's reducer
(``torch/csrc/distributed/c10d/reducer.cpp``):

* **Bucket plan** (:func:`plan_buckets`): parameters in *reverse* registration order (backward
  produces the last layer's gradients first), grouped by dtype and device into buckets of at
  most 1 MiB for the first (so communication starts early) and ``bucket_cap_mb`` (25 MiB) after.
  A parameter larger than the cap gets a bucket of its own.
* **Overlap**: a post-accumulate-grad hook on each parameter copies its ``.grad`` into the
  bucket; when a bucket is full and every earlier bucket has been launched, its non-blocking
  all-reduce starts, while backward goes on with earlier layers. Buckets therefore launch in
  the same order on every rank. Each hook also tests the in-flight all-reduces, which drives
  MPI's progress engine during backward (MPI moves data only inside MPI calls).
* **End of backward**: a callback queued on the autograd engine launches what is left, waits
  for every bucket in order and writes the averaged gradients back into ``.grad``.
* **Rebuild once**: after the first synchronised step, the buckets are re-planned from the order
  the gradients arrived in on rank 0 (broadcast, so all ranks agree).
* **Unused parameters**: a parameter with no gradient at the end of backward is an error naming
  it, unless ``find_unused_parameters=True``: then its slot contributes zeros, and a parameter
  unused on every rank keeps its ``.grad`` untouched (a used-map is all-reduced with MAX).
"""
from __future__ import annotations

import time

import numpy as np

from .process_group import ReduceOp

__all__ = ["plan_buckets", "Reducer"]

MIB = 1 << 20


def plan_buckets(sizes, keys, first_cap: int = MIB, cap: int = 25 * MIB) -> list[list[int]]:
    """Group parameter indices into buckets, in the order given.

    ``sizes[i]`` is parameter i's size in bytes, ``keys[i]`` its (dtype, device): a bucket holds
    one key. A bucket closes as soon as its bytes reach its cap: ``first_cap`` for the first
    bucket of each key, ``cap`` after (PyTorch's ``compute_bucket_assignment_by_size``), so the
    last parameter added may take it over the cap; a parameter never splits.

    Math: bucket b of a key holds the shortest run of indices whose bytes reach its cap (the
    remainder forms the last bucket).

    Example:
        >>> from avila_ml.distributed.reducer import plan_buckets
        >>> plan_buckets([400, 400, 400, 900, 100], ["f"] * 5, first_cap=800, cap=1000)
        [[0, 1], [2, 3], [4]]
    """
    open_buckets: dict = {}   # key -> [indices, bytes, cap]
    seen_keys: set = set()
    done: list = []
    for i, (size, key) in enumerate(zip(sizes, keys)):
        cur = open_buckets.get(key)
        if cur is None:
            cur = open_buckets[key] = [[], 0, cap if key in seen_keys else first_cap]
            seen_keys.add(key)
        cur[0].append(i)
        cur[1] += size
        if cur[1] >= cur[2]:  # as PyTorch: the bucket closes once it reaches its cap
            done.append(cur[0])
            del open_buckets[key]
    done.extend(b[0] for b in open_buckets.values())
    return done


class _Bucket:
    """One flat gradient buffer: which parameters, where each sits, which have arrived."""

    def __init__(self, index, members, params):
        self.index = index
        self.members = members  # parameter indices
        first = params[members[0]]
        xp = first._backend.xp
        self.offsets, total = [], 0
        for i in members:
            self.offsets.append(total)
            total += params[i].numel()
        self.buffer = xp.zeros(total, dtype=first.array.dtype)
        self.pending = len(members)
        self.work = None

    def put(self, slot, grad_array) -> None:
        """Pack one gradient into the buffer (the copy that PyTorch avoids with bucket views)."""
        start = self.offsets[slot]
        self.buffer[start:start + grad_array.size] = grad_array.reshape(-1)

    def zero(self, slot, n) -> None:
        start = self.offsets[slot]
        self.buffer[start:start + n] = 0


class Reducer:
    """Averages the gradients of ``params`` over ``group`` during backward (see module doc).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed.reducer import Reducer
        >>> dist.init_process_group("mpi")
        >>> w = am.nn.Parameter(am.ones(3))
        >>> r = Reducer([w], ["w"], dist.distributed_c10d._get_default_group())
        >>> r.prepare_for_backward(); (w * 2).sum().backward(); w.grad
        tensor([2., 2., 2.])
        >>> dist.destroy_process_group()
    """

    def __init__(self, params, names, group, bucket_cap_mb: float = 25.0,
                 find_unused_parameters: bool = False, first_bucket_bytes: int = MIB):
        self.params = list(params)
        self.names = list(names)
        self.group = group
        self.cap = int(bucket_cap_mb * MIB)
        self.first_cap = min(int(first_bucket_bytes), self.cap)
        self.find_unused = find_unused_parameters
        self.rebuilt = False
        self.launch_log: list = []   # (bucket index, hooks fired so far, time) per launch
        self._armed = False
        self._arrival: list = []
        order = list(range(len(self.params)))[::-1]  # reverse registration order
        self._build(order)
        self._handles = [p.register_post_accumulate_grad_hook(self._hook_for(i))
                         for i, p in enumerate(self.params)]

    # -- plan ---------------------------------------------------------------------------------
    def _build(self, order) -> None:
        sizes = [self.params[i].numel() * self.params[i].array.itemsize for i in order]
        keys = [(self.params[i].array.dtype.str, str(self.params[i].device)) for i in order]
        plan = [[order[j] for j in b] for b in plan_buckets(sizes, keys, self.first_cap, self.cap)]
        self.buckets = [_Bucket(b, members, self.params) for b, members in enumerate(plan)]
        self.where = {}
        for b in self.buckets:
            for slot, i in enumerate(b.members):
                self.where[i] = (b, slot)

    def bucket_plan(self) -> list[list[str]]:
        """The parameter names of each bucket, in launch order."""
        return [[self.names[i] for i in b.members] for b in self.buckets]

    # -- per step -----------------------------------------------------------------------------
    def prepare_for_backward(self) -> None:
        """Arm the hooks for the next backward (called by DDP's forward when syncing)."""
        self._armed = True
        self._queued = False
        self._ready = [False] * len(self.params)
        self._next = 0
        self._fired = 0
        self._arrival = []
        self.launch_log = []
        for b in self.buckets:
            b.pending = len(b.members)
            b.work = None

    def disarm(self) -> None:
        """Forget a step whose backward never finished (an exception, or no backward at all)."""
        self._armed = False

    def _hook_for(self, i):
        def hook(param):
            if self._armed:
                self._mark_ready(i, param)
        return hook

    def _mark_ready(self, i, param) -> None:
        if not self._queued:
            from ..autograd.engine import queue_callback
            queue_callback(self._finalize)
            self._queued = True
        if self._ready[i]:
            raise RuntimeError(
                f"DistributedDataParallel: parameter {self.names[i]!r} received a gradient twice in one "
                "backward (used by a reentrant backward, or shared between modules in a way DDP "
                "cannot bucket); compute the gradient once per step")
        self._ready[i] = True
        self._fired += 1
        self._arrival.append(i)
        bucket, slot = self.where[i]
        bucket.put(slot, param.grad.array)
        bucket.pending -= 1
        self._launch_ready()
        for b in self.buckets[:self._next]:   # drive MPI progress of the in-flight buckets
            if b.work is not None:
                b.work.is_completed()

    def _launch_ready(self) -> None:
        while self._next < len(self.buckets) and self.buckets[self._next].pending == 0:
            b = self.buckets[self._next]
            self.launch_log.append((b.index, self._fired, time.perf_counter()))
            b.work = self.group.allreduce(b.buffer, ReduceOp.AVG, name=f"all_reduce of DDP bucket {b.index}")
            self._next += 1

    def _finalize(self) -> None:
        """End of backward: fill in unused parameters, wait for every bucket, unpack."""
        if not self._armed:
            return
        self._armed = False
        missing = [i for i, ok in enumerate(self._ready) if not ok]
        if missing and not self.find_unused:
            names = [self.names[i] for i in missing]
            raise RuntimeError(
                f"DistributedDataParallel: parameter(s) {names} received no gradient in this backward "
                f"pass on rank {self.group.ranks[self.group.rank()]}. All-reducing the others would "
                "hang or mismatch the ranks. If parameters are legitimately unused in some steps, wrap "
                "the model with find_unused_parameters=True; otherwise make sure the loss depends on "
                "every parameter (or set requires_grad=False on those not trained)")
        used = None
        if self.find_unused:
            used = np.zeros(len(self.params), dtype=np.uint8)
            used[[i for i, ok in enumerate(self._ready) if ok]] = 1
            for i in missing:
                bucket, slot = self.where[i]
                bucket.zero(slot, self.params[i].numel())
                bucket.pending -= 1
            self._launch_ready()
            used_work = self.group.allreduce(used, ReduceOp.MAX, name="all_reduce of DDP used-parameter map")
        for b in self.buckets:
            b.work.wait()
        if used is not None:
            used_work.wait()
        from ..tensor import Tensor
        for b in self.buckets:
            for slot, i in enumerate(b.members):
                if used is not None and not used[i]:
                    continue  # unused on every rank: .grad stays as it was
                p = self.params[i]
                start = b.offsets[slot]
                avg = b.buffer[start:start + p.numel()].reshape(p.array.shape)
                if p.grad is None:
                    p.grad = Tensor._wrap(avg.copy())
                else:
                    p.grad.array[...] = avg
        if not self.rebuilt:
            self._rebuild()

    def _rebuild(self) -> None:
        """Re-plan the buckets once from the gradient arrival order of rank 0."""
        self.rebuilt = True
        arrived = list(dict.fromkeys(self._arrival))
        rest = [i for i in range(len(self.params))[::-1] if i not in set(arrived)]
        order = np.array(arrived + rest, dtype=np.int64)
        self.group.broadcast(order, 0, name="broadcast of the DDP bucket order").wait()
        self._build([int(i) for i in order])

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
