"""Differentiable collectives (``torch.distributed.nn.functional``).

``all_reduce`` here returns a new tensor and records itself in the graph: the gradient of
y = sum_r x_r (computed on every rank) with respect to rank r's x, for the objective
sum_q loss_q over all ranks, is sum_q dloss_q/dy_q — itself an all-reduce of the incoming
gradients. That one rule is all :class:`~avila_ml.nn.SyncBatchNorm` needs for an exact
backward (and double backward).
"""
from __future__ import annotations

from ..autograd.function import Function
from .process_group import ReduceOp

__all__ = ["all_reduce"]


class _AllReduceSum(Function):
    def forward(self, x, group):
        self.group = group
        out = x.copy()
        group.allreduce(out, ReduceOp.SUM, name="all_reduce (autograd)").wait()
        return out

    def backward(self, g):
        return _AllReduceSum.apply(g, self.group)


def all_reduce(tensor, op: ReduceOp = ReduceOp.SUM, group=None):
    """Sum of ``tensor`` over all ranks as a new tensor, differentiable
    (``torch.distributed.nn.functional.all_reduce``); only ``ReduceOp.SUM``.

    Math: y = sum_r x_r on every rank; dL/dx_r = sum_q dL/dy_q for L = sum_q L_q.

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> from avila_ml.distributed.functional import all_reduce
        >>> dist.init_process_group("mpi")
        >>> x = am.tensor([1.0, 2.0], requires_grad=True)
        >>> y = all_reduce(x); (3 * y).sum().backward(); y, x.grad
        (tensor([1., 2.], grad_fn=<_AllReduceSumBackward0>), tensor([3., 3.]))
        >>> dist.destroy_process_group()
    """
    from . import distributed_c10d as c10d
    if op is not ReduceOp.SUM:
        raise ValueError(f"distributed.functional.all_reduce: only ReduceOp.SUM is differentiable here, got {op}")
    g = c10d._group(group, "functional.all_reduce")
    if g is None:
        raise ValueError("distributed.functional.all_reduce: this rank is not in the group")
    if not tensor.array.flags.c_contiguous:
        tensor = tensor.contiguous()
    return _AllReduceSum.apply(tensor, g)
