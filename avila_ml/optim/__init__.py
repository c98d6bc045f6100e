"""Optimizers and learning-rate schedulers (``torch.optim``).

Every optimizer updates parameters in place, allocates nothing after its first step, and on
CUDA runs one fused kernel per parameter (see ``_fused.py``); float64 trajectories match
PyTorch's to rounding.

Example:
    >>> import avila_ml as am
    >>> w = am.tensor([1.0, -1.0], requires_grad=True)
    >>> opt = am.optim.Adam([w], lr=0.1)
    >>> sched = am.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    >>> for _ in range(3):
    ...     opt.zero_grad(); (w * w).sum().backward(); opt.step(); sched.step()
    >>> sched.get_last_lr()
    [0.0125]
"""
from __future__ import annotations

from .optimizer import Optimizer
from .sgd import SGD
from .adam import Adam, AdamW
from .rmsprop import RMSprop
from .adagrad import Adagrad
from .nadam import NAdam
from .radam import RAdam
from .adamax import Adamax
from .adadelta import Adadelta
from .lbfgs import LBFGS
from . import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax",
           "Adadelta", "LBFGS", "lr_scheduler"]
