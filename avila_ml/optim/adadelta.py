"""Adadelta: learning rates from running averages of squared gradients and updates (Zeiler, 2012)."""
from __future__ import annotations

from . import _fused
from .optimizer import Optimizer

__all__ = ["Adadelta"]


class Adadelta(Optimizer):
    """Adadelta (``torch.optim.Adadelta``).

    Math (ρ = rho, λ = weight_decay)::

        g ← -g if maximize;  g ← g + λθ if λ ≠ 0
        v ← ρ·v + (1 - ρ)·g²
        Δ = √(u + eps) / √(v + eps) · g
        u ← ρ·u + (1 - ρ)·Δ²
        θ ← θ - lr·Δ

    Follows PyTorch's ``_single_tensor_adadelta`` operation by operation; in place,
    allocation-free after the first step, one fused kernel per parameter on CUDA. State:
    ``step``, ``square_avg`` (v), ``acc_delta`` (u).

    Args:
        params: Tensors or param-group dicts. lr: scales Δ (>= 0, default 1). rho: ρ in [0, 1].
        eps (>= 0). weight_decay: λ (>= 0). maximize: ascend. ``foreach``, ``capturable``,
        ``differentiable`` are accepted and ignored.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = am.optim.Adadelta([w], lr=1.0, rho=0.9, eps=1e-6)
        >>> (w * w).sum().backward(); opt.step()   # Δ = √eps/√(0.1 g²)·g ≈ 0.00316·sign(g)
        >>> [round(v, 5) for v in w.tolist()]
        [0.99684, -1.99684]
    """

    def __init__(self, params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, foreach=None, *, capturable: bool = False,
                 maximize: bool = False, differentiable: bool = False):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group: dict, where: str) -> None:
        self._require_nonneg(group, where, "lr", "eps", "weight_decay", "rho")
        if "rho" in group and not group["rho"] <= 1.0:
            raise self._bad("rho", group["rho"], "0 <= rho <= 1", where)

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
        buffers = {"square_avg": self._buffer(state, "square_avg", p),
                   "acc_delta": self._buffer(state, "acc_delta", p)}
        state["step"] += 1
        rho = group["rho"]
        _fused.update("adadelta", p.array, grad, buffers, dict(
            rho=rho, one_minus_rho=1 - rho, eps=group["eps"], weight_decay=group["weight_decay"],
            neg_lr=-group["lr"], maximize=bool(group["maximize"])), self._workspace)
