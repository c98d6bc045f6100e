"""RAdam: Adam with a rectified adaptive learning rate (Liu et al., 2019)."""
from __future__ import annotations

from . import _fused
from ._adam_family import check_betas, lerp_scalars
from .optimizer import Optimizer

__all__ = ["RAdam"]


class RAdam(Optimizer):
    """RAdam: Adam whose adaptive step is switched on only once its variance is tractable
    (``torch.optim.RAdam``).

    Math (step ``t`` from 1, λ = weight_decay)::

        g ← -g if maximize;  θ ← θ·(1 - lr·λ) if decoupled_weight_decay, else g ← g + λθ
        m ← β1·m + (1 - β1)·g;  v ← β2·v + (1 - β2)·g²;  m̂ = m / (1 - β1ᵗ)
        ρ∞ = 2/(1 - β2) - 1;  ρₜ = ρ∞ - 2t·β2ᵗ/(1 - β2ᵗ)
        if ρₜ > 5:  r = √((ρₜ-4)(ρₜ-2)ρ∞ / ((ρ∞-4)(ρ∞-2)ρₜ));  θ ← θ - lr·m̂·√(1 - β2ᵗ)/(√v + eps)·r
        else:       θ ← θ - lr·m̂

    Follows PyTorch's ``_single_tensor_radam`` operation by operation; in place,
    allocation-free after the first step, one fused kernel per parameter on CUDA. State:
    ``step``, ``exp_avg``, ``exp_avg_sq``.

    Args:
        params: Tensors or param-group dicts. lr (>= 0). betas: (β1, β2) in [0, 1). eps (>= 0).
        weight_decay: λ (>= 0). decoupled_weight_decay: AdamW-style decay. maximize: ascend.
        ``foreach``, ``capturable``, ``differentiable`` are accepted and ignored.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = am.optim.RAdam([w], lr=0.1)
        >>> (w * w).sum().backward(); opt.step(); w   # ρ₁ ≤ 5: a plain momentum step, lr·g
        tensor([ 0.8000, -1.6000], requires_grad=True)
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *, foreach=None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group: dict, where: str) -> None:
        self._require_nonneg(group, where, "lr", "eps", "weight_decay")
        check_betas(self, group, where)

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
        buffers = {"exp_avg": self._buffer(state, "exp_avg", p),
                   "exp_avg_sq": self._buffer(state, "exp_avg_sq", p)}
        step = state["step"] = state["step"] + 1
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        bias_correction2 = 1 - beta2 ** step
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
        rectified = rho_t > 5.0
        rect = (((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
                if rectified else 1.0)
        _fused.update("radam", p.array, grad, buffers, dict(
            **lerp_scalars(beta1), beta2=beta2, one_minus_beta2=1 - beta2, weight_decay=wd,
            decoupled=bool(group["decoupled_weight_decay"]), decay=1 - lr * wd, eps=group["eps"],
            bias_correction1=1 - beta1 ** step, bias_correction2_sqrt=bias_correction2 ** 0.5, lr=lr,
            rect=rect, rectified=rectified, maximize=bool(group["maximize"])), self._workspace)
