"""``avila_ml.backends.cuda``: PyTorch's CUDA math flags (``torch.backends.cuda``).

``matmul.allow_tf32`` mirrors :func:`avila_ml.set_float32_matmul_precision` (True for
``"high"``/``"medium"``), as in PyTorch; Avila ML's products are full float32 either way
(see there). ``matmul.allow_fp16_reduced_precision_reduction`` and
``allow_bf16_reduced_precision_reduction`` are recorded only.

Example:
    >>> import avila_ml as am
    >>> am.backends.cuda.matmul.allow_tf32
    False
    >>> am.backends.cuda.is_built()
    True
"""
from __future__ import annotations

__all__ = ["matmul", "is_built"]


class _MatmulFlags:
    """The ``matmul`` flags object; ``allow_tf32`` is a view of the matmul precision."""

    def __init__(self):
        self._precision = "highest"
        self.allow_fp16_reduced_precision_reduction = True
        self.allow_bf16_reduced_precision_reduction = True

    @property
    def allow_tf32(self) -> bool:
        return self._precision != "highest"

    @allow_tf32.setter
    def allow_tf32(self, value: bool) -> None:
        self._precision = "high" if value else "highest"


matmul = _MatmulFlags()


def is_built() -> bool:
    """True: the CUDA path is part of Avila ML (through CuPy; whether a GPU is present is
    ``avila_ml.cuda.is_available()``) (``torch.backends.cuda.is_built``).

    Example:
        >>> import avila_ml as am
        >>> am.backends.cuda.is_built()
        True
    """
    return True
