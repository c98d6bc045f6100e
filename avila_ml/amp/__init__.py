"""``avila_ml.amp``: mixed precision (``torch.amp``): :class:`autocast` and :class:`GradScaler`.

Example:
    >>> import avila_ml as am
    >>> with am.amp.autocast("cpu", dtype=am.bfloat16):
    ...     (am.ones(2, 3) @ am.ones(3, 2)).dtype
    avila_ml.bfloat16
"""
from .autocast_mode import autocast, autocast_op, is_autocast_enabled, get_autocast_dtype  # noqa: F401
from .grad_scaler import GradScaler  # noqa: F401
from . import policy  # noqa: F401

__all__ = ["autocast", "GradScaler", "is_autocast_enabled", "get_autocast_dtype", "policy"]
