"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""
from __future__ import annotations

from . import _fused
from .optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (``torch.optim.SGD``).

    Math (per parameter ``θ`` with gradient ``g``, buffer ``b``, step ``t``)::

        g ← -g                          if maximize
        g ← g + weight_decay·θ          if weight_decay ≠ 0
        if momentum ≠ 0:
            b ← g                        at the first step
            b ← momentum·b + (1 - dampening)·g   afterwards
            g ← g + momentum·b           if nesterov, else g ← b
        θ ← θ - lr·g

    The arithmetic follows PyTorch's ``_single_tensor_sgd`` operation by operation; the update
    is in place and allocates nothing after the first step (one fused kernel per parameter on
    CUDA). ``foreach`` and ``fused`` are accepted for PyTorch compatibility and ignored: the
    update is always fused per parameter.

    Args:
        params: Tensors or param-group dicts.
        lr: learning rate (>= 0). momentum: momentum factor (>= 0). dampening: dampening of
        the momentum. weight_decay: L2 penalty (>= 0). nesterov: Nesterov momentum (needs
        momentum > 0 and dampening = 0). maximize: ascend instead of descend.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = am.optim.SGD([w], lr=0.1, momentum=0.9)
        >>> for _ in range(2):
        ...     opt.zero_grad(); (w * w).sum().backward(); opt.step()
        >>> w
        tensor([ 0.4600, -0.9200], requires_grad=True)
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach=None, fused=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group: dict, where: str) -> None:
        self._require_nonneg(group, where, "lr", "momentum", "weight_decay")
        self._require_real(group, where, "dampening")
        if group.get("nesterov") and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"SGD: Nesterov momentum requires momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}{where}")

    def _update(self, p, grad, state, group):
        momentum = group["momentum"]
        buffers = {}
        first = False
        if momentum != 0:
            first = state.get("momentum_buffer") is None  # PyTorch: the buffer starts as a copy of d
            buffers["momentum_buffer"] = self._buffer(state, "momentum_buffer", p)
        _fused.update("sgd", p.array, grad, buffers, dict(
            lr=group["lr"], momentum=momentum, one_minus_dampening=1 - group["dampening"],
            weight_decay=group["weight_decay"], nesterov=bool(group["nesterov"]),
            maximize=bool(group["maximize"]), first=first), self._workspace)
