"""``DistributedDataParallel``: one model replica per process, gradients averaged by buckets
overlapped with backward (``torch.nn.parallel.DistributedDataParallel``).

The bucketing, packing and overlap live in :mod:`avila_ml.distributed.reducer`; this module
is the user-facing wrapper: broadcast at wrap time, ``broadcast_buffers`` before each forward,
``no_sync``, and the ``module`` attribute.

State dicts: the wrapper is a Module whose only child is ``module``, so
``ddp.state_dict()`` keys start with ``"module."``, exactly as in PyTorch. Save
``ddp.module.state_dict()`` to get a checkpoint that loads into the bare model (and into a
run with any number of ranks), or strip the prefix from an old checkpoint with
:func:`consume_prefix_in_state_dict_if_present`.
"""
from __future__ import annotations

import contextlib

from ...autograd.grad_mode import is_grad_enabled, no_grad
from ..modules.module import Module

__all__ = ["DistributedDataParallel", "consume_prefix_in_state_dict_if_present"]


def consume_prefix_in_state_dict_if_present(state_dict, prefix: str) -> None:
    """Strip ``prefix`` from the keys of ``state_dict`` that have it, in place
    (``torch.nn.modules.utils.consume_prefix_in_state_dict_if_present``).

    Example:
        >>> from avila_ml.nn.parallel import consume_prefix_in_state_dict_if_present
        >>> sd = {"module.weight": 1, "module.bias": 2}
        >>> consume_prefix_in_state_dict_if_present(sd, "module."); sorted(sd)
        ['bias', 'weight']
    """
    for key in list(state_dict):
        if key.startswith(prefix):
            state_dict[key[len(prefix):]] = state_dict.pop(key)
    meta = getattr(state_dict, "_metadata", None)
    if meta is not None:
        for key in list(meta):
            if key == prefix.rstrip(".") or key.startswith(prefix):
                new = "" if key == prefix.rstrip(".") else key[len(prefix):]
                meta[new] = meta.pop(key)


def _stable_hash(obj) -> int:
    """A hash equal in every process (Python's str hash is salted per process)."""
    import hashlib
    return int.from_bytes(hashlib.sha256(repr(obj).encode()).digest()[:7], "little")


class DistributedDataParallel(Module):
    """Data parallelism over a process group (``torch.nn.parallel.DistributedDataParallel``).

    At construction, the parameters and buffers of rank 0 are broadcast to every rank, and the
    parameter shapes are checked to agree. During ``backward`` the gradients are averaged over
    the ranks in buckets (first 1 MiB, then ``bucket_cap_mb``), each bucket's all-reduce started
    as soon as its gradients are in, so that N ranks with batch B each step exactly like one
    process with batch N*B (for a loss that is a mean over the batch).

    Math: after backward, p.grad = (1/N) sum_r grad_r(p).

    ``no_sync()`` skips the averaging (gradients accumulate locally; the next synchronised
    backward averages the sum). ``find_unused_parameters=False``: a parameter that gets no
    gradient raises an error naming it at the end of backward; ``True`` handles it.
    ``broadcast_buffers=True``: rank 0's buffers (e.g. BatchNorm running statistics) are sent
    to every rank before each forward. ``ddp.module`` is the wrapped model; state-dict keys get
    the ``module.`` prefix as in PyTorch (see the module docstring). ``device_ids`` /
    ``output_device`` are accepted for PyTorch compatibility and unused (a replica lives on one
    device, its parameters' device); gradients are always copied into the buckets, so
    ``gradient_as_bucket_view`` and ``static_graph`` change nothing.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group("mpi")
        >>> model = am.nn.DistributedDataParallel(am.nn.Linear(3, 1))
        >>> model(am.ones(4, 3)).sum().backward()
        >>> model.module.weight.grad.shape, list(model.state_dict())[0]
        ((1, 3), 'module.weight')
        >>> dist.destroy_process_group()
    """

    def __init__(self, module, device_ids=None, output_device=None, dim: int = 0,
                 broadcast_buffers: bool = True, process_group=None, bucket_cap_mb: float | None = None,
                 find_unused_parameters: bool = False, gradient_as_bucket_view: bool = False,
                 static_graph: bool = False):
        super().__init__()
        from ... import distributed as dist
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: module must be an nn.Module, got {type(module).__name__}")
        group = dist.distributed_c10d._group(process_group, "DistributedDataParallel")
        if group is None:
            raise ValueError("DistributedDataParallel: this rank is not a member of process_group")
        if dim != 0:
            raise ValueError(f"DistributedDataParallel: dim={dim}; each rank gets its own batch, only dim=0 is meaningful")
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise RuntimeError("DistributedDataParallel: the module has no parameter that requires grad")
        devices = {str(p.device) for _, p in named}
        if len(devices) > 1:
            raise ValueError(f"DistributedDataParallel: parameters live on several devices {sorted(devices)}; "
                             "a replica must be on one device")
        self.module = module
        self.process_group = group
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.require_backward_grad_sync = True
        self.bucket_cap_mb = 25.0 if bucket_cap_mb is None else float(bucket_cap_mb)
        if not self.bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self._verify_and_broadcast(named)
        from ...distributed.reducer import Reducer
        self.reducer = Reducer([p for _, p in named], [n for n, _ in named], group,
                               self.bucket_cap_mb, find_unused_parameters)

    def _verify_and_broadcast(self, named) -> None:
        """Same parameters everywhere (checked), then rank 0's values everywhere."""
        from ...distributed.errors import DistBackendError
        g = self.process_group
        signature = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in named)
        try:
            g._agree("verify", extra=_stable_hash(signature))
        except DistBackendError as e:
            raise RuntimeError("DistributedDataParallel: the model's parameters (names, shapes or dtypes) "
                               f"differ across ranks; every rank must build the same model. ({e})") from None
        tensors = [p for _, p in named] + [b for _, b in self.module.named_buffers() if b is not None]
        self._broadcast(tensors)

    def _broadcast(self, tensors) -> None:
        g = self.process_group
        if g.size() == 1:
            return
        with no_grad():
            for t in tensors:
                a = t.array
                buf = a if a.flags.c_contiguous else a.copy(order="C")
                g.broadcast(buf, 0, name="DDP broadcast of parameters/buffers").wait()
                if buf is not a:
                    a[...] = buf
                t._version[0] += 1

    def forward(self, *inputs, **kwargs):
        if self.reducer._armed:
            self.reducer.disarm()  # the previous forward had no (complete) backward
        if self.broadcast_buffers:
            bufs = [b for _, b in self.module.named_buffers() if b is not None]
            if bufs:
                self._broadcast(bufs)
        if is_grad_enabled() and self.require_backward_grad_sync:
            self.reducer.prepare_for_backward()
        return self.module(*inputs, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Inside, backward accumulates gradients locally without averaging
        (``DistributedDataParallel.no_sync``); the first synchronised backward after it
        averages the accumulated sum.

        Example:
            >>> import avila_ml as am, avila_ml.distributed as dist
            >>> dist.init_process_group("mpi")
            >>> ddp = am.nn.DistributedDataParallel(am.nn.Linear(2, 1, bias=False))
            >>> with ddp.no_sync():
            ...     ddp(am.ones(1, 2)).sum().backward()
            >>> ddp(am.ones(1, 2)).sum().backward(); ddp.module.weight.grad
            tensor([[2., 2.]])
            >>> dist.destroy_process_group()
        """
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    def bucket_plan(self) -> list:
        """Parameter names per gradient bucket, in launch order (for inspection and tests)."""
        return self.reducer.bucket_plan()

    def extra_repr(self) -> str:
        g = self.process_group
        return f"world_size={g.size()}, backend={g.backend}, bucket_cap_mb={self.bucket_cap_mb:g}"

