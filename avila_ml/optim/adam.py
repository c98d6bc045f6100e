"""Adam and AdamW: one implementation; AdamW is Adam with decoupled weight decay."""
from __future__ import annotations

from . import _fused
from .optimizer import Optimizer, _is_real

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam: adaptive moment estimation (``torch.optim.Adam``).

    Math (parameter ``θ``, gradient ``g``, step ``t`` counted from 1, λ = weight_decay)::

        g ← -g                               if maximize
        θ ← θ·(1 - lr·λ)                     if decoupled_weight_decay (AdamW)
        g ← g + λ·θ                          otherwise, if λ ≠ 0
        m ← lerp(m, g, 1 - β1)               = β1·m + (1 - β1)·g
        v ← β2·v + (1 - β2)·g²
        v̂ ← max(v̂, v) and use v̂ for v       if amsgrad
        θ ← θ - lr/(1 - β1^t) · m / (√v / √(1 - β2^t) + eps)

    The arithmetic follows PyTorch's ``_single_tensor_adam`` operation by operation; the
    update is in place and allocates nothing after the first step (one fused kernel per
    parameter on CUDA). ``foreach`` and ``fused`` are accepted for PyTorch compatibility and
    ignored. State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``).

    Args:
        params: Tensors or param-group dicts. lr: learning rate (>= 0). betas: (β1, β2), each
        in [0, 1). eps: added to the denominator (>= 0). weight_decay: λ (>= 0). amsgrad: use
        the running maximum of v. maximize: ascend. decoupled_weight_decay: AdamW's decay.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = am.optim.Adam([w], lr=0.1)
        >>> (w * w).sum().backward(); opt.step(); w   # the first step moves by ~lr·sign(g)
        tensor([ 0.9000, -1.9000], requires_grad=True)
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False, foreach=None, fused=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _check_group(self, group: dict, where: str) -> None:
        self._require_nonneg(group, where, "lr", "eps", "weight_decay")
        betas = group.get("betas")
        if betas is None:
            return
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(map(_is_real, betas))):
            raise TypeError(f"{type(self).__name__}: betas{where} must be a pair of real numbers, "
                            f"got {betas!r}")
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise self._bad(f"betas[{i}]", b, f"0 <= betas[{i}] < 1", where)

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
        buffers = {"exp_avg": self._buffer(state, "exp_avg", p),
                   "exp_avg_sq": self._buffer(state, "exp_avg_sq", p)}
        if group["amsgrad"]:
            buffers["max_exp_avg_sq"] = self._buffer(state, "max_exp_avg_sq", p)
        step = state["step"] = state["step"] + 1
        lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        weight = 1 - beta1
        _fused.update("adam", p.array, grad, buffers, dict(
            weight=weight, lerp_low=weight < 0.5, one_minus_weight=1 - weight, beta2=beta2,
            one_minus_beta2=1 - beta2, weight_decay=weight_decay,
            decoupled=bool(group["decoupled_weight_decay"]), decay=1 - lr * weight_decay,
            eps=group["eps"], bias_correction2_sqrt=bias_correction2 ** 0.5,
            neg_step_size=-step_size, maximize=bool(group["maximize"])), self._workspace)


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``).

    Math: as :class:`Adam` with ``decoupled_weight_decay=True``: each step first shrinks the
    parameter, ``θ ← θ·(1 - lr·λ)``, and the decay never enters the moments ``m`` and ``v``.
    The default ``weight_decay`` is 1e-2.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = am.optim.AdamW([w], lr=0.1, weight_decay=0.5)
        >>> (w * w).sum().backward(); opt.step(); w   # θ·(1 - 0.05) - 0.1·sign(g)
        tensor([ 0.8500, -1.8000], requires_grad=True)
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach=None, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state (see :meth:`Optimizer.load_state_dict`); the decay stays decoupled.

        Example:
            >>> import avila_ml as am
            >>> w = am.ones(2, requires_grad=True)
            >>> opt = am.optim.AdamW([w]); opt.load_state_dict(am.optim.Adam([w]).state_dict())
            >>> opt.param_groups[0]["decoupled_weight_decay"]
            True
        """
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
