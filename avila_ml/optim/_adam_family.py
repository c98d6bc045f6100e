"""Shared validation and moment arithmetic of the Adam-like optimizers (NAdam, RAdam, Adamax)."""
from __future__ import annotations

from .optimizer import _is_real


def check_betas(opt, group: dict, where: str) -> None:
    """Raise like PyTorch for betas that are not a pair of numbers in [0, 1)."""
    betas = group.get("betas")
    if betas is None:
        return
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(map(_is_real, betas))):
        raise TypeError(f"{type(opt).__name__}: betas{where} must be a pair of real numbers, got {betas!r}")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise opt._bad(f"betas[{i}]", b, f"0 <= betas[{i}] < 1", where)


def lerp_scalars(beta1: float) -> dict:
    """The host scalars of ``m.lerp_(g, 1 - beta1)`` (see ``_fused``'s lerp convention)."""
    weight = 1 - beta1
    return dict(weight=weight, lerp_low=weight < 0.5, one_minus_weight=1 - weight)
