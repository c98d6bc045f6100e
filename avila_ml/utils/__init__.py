"""``avila_ml.utils``: helpers PyTorch keeps under ``torch.utils``.

``avila_ml.utils.data`` is the same module object as :mod:`avila_ml.data` (``torch.utils.data``);
``avila_ml.utils.checkpoint`` holds activation checkpointing (``torch.utils.checkpoint``).

Example:
    >>> import avila_ml as am
    >>> from avila_ml.utils.data import DataLoader
    >>> DataLoader is am.data.DataLoader
    True
"""
import sys as _sys

from .. import data  # noqa: F401
from . import checkpoint  # noqa: F401

_sys.modules[__name__ + ".data"] = data
