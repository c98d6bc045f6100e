"""Adagrad: per-coordinate learning rates from the sum of squared gradients."""
from __future__ import annotations

from ..backends import backend_of
from ..tensor import Tensor
from . import _fused
from .optimizer import Optimizer

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    """Adagrad (``torch.optim.Adagrad``).

    Math (parameter ``θ``, gradient ``g``, step ``t`` counted from 1, λ = weight_decay)::

        g ← -g                          if maximize
        g ← g + λ·θ                     if λ ≠ 0
        clr ← lr / (1 + (t - 1)·lr_decay)
        s ← s + g²                      (s starts at initial_accumulator_value)
        θ ← θ - clr·g / (√s + eps)

    The arithmetic follows PyTorch's ``_single_tensor_adagrad`` operation by operation; the
    update is in place and allocates nothing after the first step (one fused kernel per
    parameter on CUDA). As in PyTorch, the constructor creates the state (``step`` and ``sum``)
    of its parameters, and every ``sum`` starts at the constructor's
    ``initial_accumulator_value``, also in param groups that set their own (PyTorch ignores
    the group's value; we match it). ``foreach`` and ``fused`` are accepted and ignored.

    Args:
        params: Tensors or param-group dicts. lr: learning rate (>= 0). lr_decay: (>= 0).
        weight_decay: λ (>= 0). initial_accumulator_value: start of ``s`` (>= 0). eps: added to
        the denominator (>= 0). maximize: ascend.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = am.optim.Adagrad([w], lr=0.5)
        >>> (w * w).sum().backward(); opt.step(); w   # first step: lr·g/|g| = 0.5·sign(g)
        tensor([ 0.5000, -1.5000], requires_grad=True)
    """

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach=None, *,
                 maximize: bool = False, fused=None):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p)

    def _init_state(self, p) -> None:
        state = self.state[p]
        if not state:
            # PyTorch starts every accumulator at the constructor's value, even in a group that
            # sets its own initial_accumulator_value; we do the same so trajectories match
            xp = backend_of(p.array).xp
            state["step"] = 0
            state["sum"] = Tensor._wrap(xp.full(p.array.shape, self.defaults["initial_accumulator_value"],
                                                dtype=p.array.dtype))

    def _check_group(self, group: dict, where: str) -> None:
        self._require_nonneg(group, where, "lr", "lr_decay", "weight_decay",
                             "initial_accumulator_value", "eps")

    def _update(self, p, grad, state, group):
        if not state:  # a parameter added by add_param_group gets its state at its first step
            self._init_state(p)
        step = state["step"] = state["step"] + 1
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        _fused.update("adagrad", p.array, grad, {"state_sum": state["sum"].array}, dict(
            neg_clr=-clr, weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=bool(group["maximize"])), self._workspace)
