"""NAdam: Adam with Nesterov momentum (Dozat, 2016)."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from . import _fused
from ._adam_family import check_betas, lerp_scalars
from .optimizer import Optimizer

__all__ = ["NAdam"]


def _scalar_round(x: float) -> float:
    """Round like PyTorch's 0-d state tensor, which is float32 unless the default dtype is float64."""
    return x if _dt.get_default_dtype() == _dt.float64 else float(np.float32(x))


class NAdam(Optimizer):
    """NAdam: Adam with Nesterov momentum (``torch.optim.NAdam``).

    Math (step ``t`` from 1, ψ = momentum_decay, λ = weight_decay)::

        g ← -g if maximize;  θ ← θ·(1 - lr·λ) if decoupled_weight_decay, else g ← g + λθ
        μₜ = β1·(1 - ½·0.96^(t·ψ)),  μₜ₊₁ likewise,  Πₜ = Πₜ₋₁·μₜ
        m ← β1·m + (1 - β1)·g;  v ← β2·v + (1 - β2)·g²;  d = √(v / (1 - β2ᵗ)) + eps
        θ ← θ - lr·(1 - μₜ)/(1 - Πₜ) · g/d - lr·μₜ₊₁/(1 - Πₜ·μₜ₊₁) · m/d

    The arithmetic follows PyTorch's ``_single_tensor_nadam`` operation by operation (the
    running product ``mu_product`` is kept in float32, as PyTorch's 0-d state tensor is, unless
    the default dtype is float64); in place, allocation-free after the first step, one fused
    kernel per parameter on CUDA. State: ``step``, ``mu_product``, ``exp_avg``, ``exp_avg_sq``.

    Args:
        params: Tensors or param-group dicts. lr (>= 0). betas: (β1, β2) in [0, 1). eps (>= 0).
        weight_decay: λ (>= 0). momentum_decay: ψ (>= 0). decoupled_weight_decay: AdamW-style
        decay. maximize: ascend. ``foreach``, ``capturable``, ``differentiable`` are accepted and
        ignored.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = am.optim.NAdam([w], lr=0.1)
        >>> (w * w).sum().backward(); opt.step()   # lr·(1 + μ₂(1 - β1)/(1 - μ₁μ₂))·sign(g)
        >>> [round(v, 4) for v in w.tolist()]
        [0.8944, -1.8944]
    """

    _float_state = ("mu_product",)

    def __init__(self, params, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach=None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group: dict, where: str) -> None:
        self._require_nonneg(group, where, "lr", "eps", "weight_decay", "momentum_decay")
        check_betas(self, group, where)

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
            state["mu_product"] = 1.0
        buffers = {"exp_avg": self._buffer(state, "exp_avg", p),
                   "exp_avg_sq": self._buffer(state, "exp_avg_sq", p)}
        step = state["step"] = state["step"] + 1
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        psi = group["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * psi)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * psi)))
        mu_product = state["mu_product"] = _scalar_round(
            _scalar_round(state["mu_product"]) * _scalar_round(mu))
        mu_product_next = mu_product * mu_next
        _fused.update("nadam", p.array, grad, buffers, dict(
            **lerp_scalars(beta1), beta2=beta2, one_minus_beta2=1 - beta2, weight_decay=wd,
            decoupled=bool(group["decoupled_weight_decay"]), decay=1 - lr * wd, eps=group["eps"],
            bias_correction2=1 - beta2 ** step, grad_coef=-lr * (1.0 - mu) / (1.0 - mu_product),
            avg_coef=(-lr * mu_next) / (1.0 - mu_product_next), maximize=bool(group["maximize"])),
            self._workspace)
