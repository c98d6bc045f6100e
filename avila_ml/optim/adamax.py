"""Adamax: Adam with the infinity norm (Kingma & Ba, 2014, section 7)."""
from __future__ import annotations

from . import _fused
from ._adam_family import check_betas, lerp_scalars
from .optimizer import Optimizer

__all__ = ["Adamax"]


class Adamax(Optimizer):
    """Adamax: Adam with the second moment replaced by an exponentially weighted infinity norm
    (``torch.optim.Adamax``).

    Math (step ``t`` from 1, λ = weight_decay)::

        g ← -g if maximize;  g ← g + λθ if λ ≠ 0
        m ← β1·m + (1 - β1)·g;  u ← max(β2·u, |g| + eps)
        θ ← θ - lr/(1 - β1ᵗ) · m/u

    Follows PyTorch's ``_single_tensor_adamax`` operation by operation; in place,
    allocation-free after the first step, one fused kernel per parameter on CUDA. State:
    ``step``, ``exp_avg``, ``exp_inf``.

    Args:
        params: Tensors or param-group dicts. lr (>= 0). betas: (β1, β2) in [0, 1). eps (>= 0).
        weight_decay: λ (>= 0). maximize: ascend. ``foreach``, ``capturable``,
        ``differentiable`` are accepted and ignored.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = am.optim.Adamax([w], lr=0.1)
        >>> (w * w).sum().backward(); opt.step(); w   # first step: lr·sign(g)
        tensor([ 0.9000, -1.9000], requires_grad=True)
    """

    def __init__(self, params, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, foreach=None, *, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group: dict, where: str) -> None:
        self._require_nonneg(group, where, "lr", "eps", "weight_decay")
        check_betas(self, group, where)

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
        buffers = {"exp_avg": self._buffer(state, "exp_avg", p),
                   "exp_inf": self._buffer(state, "exp_inf", p)}
        step = state["step"] = state["step"] + 1
        (beta1, beta2) = group["betas"]
        _fused.update("adamax", p.array, grad, buffers, dict(
            **lerp_scalars(beta1), beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
            neg_clr=-(group["lr"] / (1 - beta1 ** step)), maximize=bool(group["maximize"])),
            self._workspace)
