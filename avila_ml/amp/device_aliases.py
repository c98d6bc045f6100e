"""The device-bound spellings PyTorch keeps: ``torch.cpu.amp`` and ``torch.cuda.amp``.

``avila_ml.cpu.amp.autocast(dtype=..., enabled=..., cache_enabled=...)`` is
``autocast("cpu", ...)`` (default bfloat16); ``avila_ml.cuda.amp.autocast`` is
``autocast("cuda", ...)`` (default float16) and ``avila_ml.cuda.amp.GradScaler`` is
``GradScaler("cuda", ...)``.
"""
from __future__ import annotations

import types

from .autocast_mode import autocast as _autocast
from .grad_scaler import GradScaler as _GradScaler


class _CpuAutocast(_autocast):
    """``autocast("cpu", ...)`` (``torch.cpu.amp.autocast``).

    Example:
        >>> import avila_ml as am
        >>> with am.cpu.amp.autocast():
        ...     (am.ones(1, 2) @ am.ones(2, 1)).dtype
        avila_ml.bfloat16
    """

    def __init__(self, enabled: bool = True, dtype=None, cache_enabled: bool = True):
        super().__init__("cpu", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


class _CudaAutocast(_autocast):
    """``autocast("cuda", ...)`` (``torch.cuda.amp.autocast``).

    Example:
        >>> import avila_ml as am
        >>> am.cuda.amp.autocast(enabled=False).device
        'cuda'
    """

    def __init__(self, enabled: bool = True, dtype=None, cache_enabled: bool = True):
        super().__init__("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


class _CudaGradScaler(_GradScaler):
    """``GradScaler("cuda", ...)`` (``torch.cuda.amp.GradScaler``).

    Example:
        >>> import avila_ml as am
        >>> am.cuda.amp.GradScaler(init_scale=8.0).get_scale()
        8.0
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        super().__init__("cuda", init_scale, growth_factor, backoff_factor, growth_interval, enabled)


_CpuAutocast.__name__ = _CudaAutocast.__name__ = "autocast"
_CudaGradScaler.__name__ = "GradScaler"

cpu_amp = types.SimpleNamespace(autocast=_CpuAutocast)
cuda_amp = types.SimpleNamespace(autocast=_CudaAutocast, GradScaler=_CudaGradScaler)
