"""RMSprop: divide the gradient by a running root mean square of recent gradients."""
from __future__ import annotations

from . import _fused
from .optimizer import Optimizer

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop (``torch.optim.RMSprop``).

    Math (parameter ``θ``, gradient ``g``, α = alpha, μ = momentum, λ = weight_decay)::

        g ← -g                                   if maximize
        g ← g + λ·θ                              if λ ≠ 0
        v ← α·v + (1 - α)·g²
        if centered:  ḡ ← lerp(ḡ, g, 1 - α);  a ← √(v - ḡ²) + eps
        else:         a ← √v + eps
        if μ > 0:     b ← μ·b + g/a;  θ ← θ - lr·b
        else:         θ ← θ - lr·g/a

    The arithmetic follows PyTorch's ``_single_tensor_rmsprop`` operation by operation; the
    update is in place and allocates nothing after the first step (one fused kernel per
    parameter on CUDA). State per parameter: ``step``, ``square_avg`` (and ``momentum_buffer``
    when μ > 0, ``grad_avg`` when centered). ``foreach`` is accepted and ignored.

    Args:
        params: Tensors or param-group dicts. lr: learning rate (>= 0). alpha: smoothing
        constant (>= 0). eps: added to the denominator (>= 0). weight_decay: λ (>= 0).
        momentum: μ (>= 0). centered: normalise by the variance estimate. maximize: ascend.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = am.optim.RMSprop([w], lr=0.01, alpha=0.99)
        >>> (w * w).sum().backward(); opt.step(); w   # first step: lr·g/√(0.01·g²) = 0.1·sign(g)
        tensor([ 0.9000, -1.9000], requires_grad=True)
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, *,
                 maximize: bool = False, foreach=None):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group: dict, where: str) -> None:
        self._require_nonneg(group, where, "lr", "alpha", "eps", "weight_decay", "momentum")

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
        buffers = {"square_avg": self._buffer(state, "square_avg", p)}
        momentum = group["momentum"]
        if momentum > 0:
            buffers["momentum_buffer"] = self._buffer(state, "momentum_buffer", p)
        if group["centered"]:
            buffers["grad_avg"] = self._buffer(state, "grad_avg", p)
        state["step"] += 1
        alpha = group["alpha"]
        weight = 1 - alpha  # grad_avg.lerp_(g, 1 - alpha)
        _fused.update("rmsprop", p.array, grad, buffers, dict(
            lr=group["lr"], alpha=alpha, one_minus_alpha=1 - alpha, weight=weight,
            lerp_low=weight < 0.5, one_minus_weight=1 - weight, eps=group["eps"],
            weight_decay=group["weight_decay"], momentum=momentum,
            maximize=bool(group["maximize"])), self._workspace)
