"""Learning-rate schedulers (``torch.optim.lr_scheduler``).

A scheduler rewrites ``group["lr"]`` of its optimizer's param groups each time ``step()`` is
called (once per epoch or per batch, after ``optimizer.step()``). Each one reproduces PyTorch's
sequence of learning rates exactly: the same (often recursive) formulas in the same order.
``state_dict()`` holds every attribute but the optimizer, so a run resumed from a checkpoint
continues the same sequence.
"""
from __future__ import annotations

import math
import types
import warnings
from bisect import bisect_right
from collections import Counter

from .optimizer import Optimizer

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "MultiStepLR", "LinearLR", "ExponentialLR",
           "SequentialLR", "CosineAnnealingLR", "ReduceLROnPlateau", "CosineAnnealingWarmRestarts",
           "OneCycleLR"]

_EPOCH_DEPRECATION = (
    "The epoch parameter in `scheduler.step()` is deprecated (as in PyTorch): use "
    "`scheduler.step()`. Where a closed form exists it is used for the given epoch.")


def _check_optimizer(optimizer, who: str) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{who}: expected an avila_ml.optim.Optimizer, got {type(optimizer).__name__}")


def _per_group(name: str, optimizer, value, who: str) -> list:
    """``value`` repeated per param group, or a list checked to have one entry per group."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(f"{who}: {name} must have one value per param group "
                             f"({len(optimizer.param_groups)}), got {len(value)}")
        return list(value)
    return [value] * len(optimizer.param_groups)


def _lrs(optimizer) -> list:
    return [group["lr"] for group in optimizer.param_groups]


class LRScheduler:
    """Base class of the learning-rate schedulers (``torch.optim.lr_scheduler.LRScheduler``).

    Subclasses implement ``get_lr()`` (the next learning rate of every param group, read while
    ``last_epoch`` has already advanced). The constructor stores ``initial_lr`` in each group
    (``base_lrs``) and performs the first step, setting ``last_epoch`` to 0.

    Math: ``lr_t = get_lr(t)`` with ``t = last_epoch``; ``get_last_lr()`` returns ``lr_t``.

    Example:
        >>> import avila_ml as am
        >>> class Halve(am.optim.lr_scheduler.LRScheduler):
        ...     def get_lr(self):
        ...         return [base * 0.5 ** self.last_epoch for base in self.base_lrs]
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
        >>> s = Halve(opt); opt.step(); s.step(); s.get_last_lr(), s.last_epoch
        ([0.5], 1)
    """

    _get_lr_called_within_step = False
    _is_initial = False

    def __init__(self, optimizer, last_epoch: int = -1):
        _check_optimizer(optimizer, type(self).__name__)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"{type(self).__name__}: param 'initial_lr' is not specified in "
                        f"param_groups[{i}] when resuming with last_epoch={last_epoch}; load the "
                        "optimizer's state dict first, or start from last_epoch=-1")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def state_dict(self) -> dict:
        """Every attribute but the optimizer (``LRScheduler.state_dict``).

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=0.1)
            >>> sd = am.optim.lr_scheduler.StepLR(opt, step_size=3).state_dict()
            >>> sd["last_epoch"], sd["step_size"], sd["base_lrs"]
            (0, 3, [0.1])
        """
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore attributes saved by :meth:`state_dict` (``LRScheduler.load_state_dict``).

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=0.1)
            >>> s = am.optim.lr_scheduler.StepLR(opt, step_size=3)
            >>> s.load_state_dict({"last_epoch": 7}); s.last_epoch
            7
        """
        self.__dict__.update(state_dict)

    def get_last_lr(self) -> list:
        """The learning rates set by the latest step, one per param group (``get_last_lr``).

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=0.1)
            >>> am.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5).get_last_lr()
            [0.1]
        """
        return list(self._last_lr)

    def get_lr(self) -> list:
        """The learning rates for the current ``last_epoch``; subclasses define it."""
        raise TypeError(f"{type(self).__name__}: an LRScheduler subclass must define get_lr()")

    def _warn_get_lr(self) -> None:
        if not self._get_lr_called_within_step:
            warnings.warn("To get the last learning rate computed by the scheduler, please use "
                          "`get_last_lr()`.", UserWarning, stacklevel=3)

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch and set the new learning rates (``LRScheduler.step``).

        Call it after ``optimizer.step()``; a warning says so when the order is reversed.
        ``epoch`` is deprecated (as in PyTorch): it sets ``last_epoch`` and uses the closed
        form where the scheduler has one.

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> s = am.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
            >>> opt.step(); s.step(); opt.param_groups[0]["lr"]
            0.5
        """
        if self._step_count == 1 and not getattr(self.optimizer, "_opt_called", False):
            warnings.warn(
                "Detected call of `lr_scheduler.step()` before `optimizer.step()`. Call them in "
                "the opposite order: `optimizer.step()` before `lr_scheduler.step()`; otherwise "
                "the first value of the learning rate schedule is skipped.",
                UserWarning, stacklevel=2)
        self._step_count += 1
        if epoch is not None:
            warnings.warn(_EPOCH_DEPRECATION, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch=None) -> None:
        self._get_lr_called_within_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed = getattr(self, "_get_closed_form_lr", None)
                values = closed() if closed is not None else self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise ValueError(f"{type(self).__name__}.step: computed {len(values)} learning rates "
                             f"but the optimizer has {len(groups)} param groups (was a group "
                             "added after the scheduler was created?)")
        for group, lr in zip(groups, values):
            group["lr"] = lr
        self._last_lr = _lrs(self.optimizer)


class LambdaLR(LRScheduler):
    """Learning rate = initial lr times a function of the epoch (``torch.optim.lr_scheduler.LambdaLR``).

    Math: ``lr_t = base_lr · lr_lambda(t)``; ``lr_lambda`` may be one function or one per group.
    ``state_dict`` stores the ``__dict__`` of callable objects (not of plain functions/lambdas).

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=2.0)
        >>> s = am.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1))
        >>> lrs = []
        >>> for _ in range(3):
        ...     opt.step(); lrs.append(s.get_last_lr()[0]); s.step()
        >>> lrs
        [2.0, 1.0, 0.6666666666666666]
    """

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        _check_optimizer(optimizer, "LambdaLR")
        self.optimizer = optimizer
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(f"LambdaLR: expected {len(optimizer.param_groups)} lr_lambdas "
                                 f"(one per param group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        for f in self.lr_lambdas:
            if not callable(f):
                raise TypeError(f"LambdaLR: lr_lambda must be callable, got {type(f).__name__}")
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict:
        """Attributes but the optimizer; each lambda as its ``__dict__`` (None for functions).

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> am.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0).state_dict()["lr_lambdas"]
            [None]
        """
        sd = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        sd["lr_lambdas"] = [None if isinstance(f, types.FunctionType) else dict(f.__dict__)
                            for f in self.lr_lambdas]
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the attributes and the ``__dict__`` of callable-object lambdas.

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> s = am.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
            >>> s.load_state_dict({"last_epoch": 4, "lr_lambdas": [None]}); s.last_epoch
            4
        """
        state_dict = dict(state_dict)
        lambdas = state_dict.pop("lr_lambdas", None) or []
        self.__dict__.update(state_dict)
        for f, saved in zip(self.lr_lambdas, lambdas):
            if saved is not None:
                f.__dict__.update(saved)

    def get_lr(self) -> list:
        """``base_lr · lr_lambda(last_epoch)`` per group."""
        self._warn_get_lr()
        return [base * f(self.last_epoch) for f, base in zip(self.lr_lambdas, self.base_lrs)]


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs
    (``torch.optim.lr_scheduler.StepLR``).

    Math: ``lr_t = lr_{t-1} · gamma`` when ``t > 0`` and ``t % step_size == 0``, else
    ``lr_{t-1}`` (closed form ``base_lr · gamma^⌊t / step_size⌋``).

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
        >>> s = am.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        >>> lrs = []
        >>> for _ in range(5):
        ...     opt.step(); lrs.append(s.get_last_lr()[0]); s.step()
        >>> lrs
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if not isinstance(step_size, int) or step_size <= 0:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size!r}")
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The current learning rates, times ``gamma`` at multiples of ``step_size``."""
        self._warn_get_lr()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return _lrs(self.optimizer)
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list:
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` at each milestone epoch
    (``torch.optim.lr_scheduler.MultiStepLR``).

    Math: ``lr_t = lr_{t-1} · gamma^c(t)`` where ``c(t)`` counts how often ``t`` appears in
    ``milestones`` (closed form ``base_lr · gamma^(number of milestones <= t)``).

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
        >>> s = am.optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 3], gamma=0.1)
        >>> lrs = []
        >>> for _ in range(4):
        ...     opt.step(); lrs.append(round(s.get_last_lr()[0], 6)); s.step()
        >>> lrs
        [1.0, 0.1, 0.1, 0.01]
    """

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        milestones = list(milestones)
        if not all(isinstance(m, int) for m in milestones):
            raise TypeError(f"MultiStepLR: milestones must be integers, got {milestones!r}")
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore attributes; milestone keys given as strings (after JSON) become ints again.

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> s = am.optim.lr_scheduler.MultiStepLR(opt, milestones=[2])
            >>> s.load_state_dict({"milestones": {"5": 1}}); s.milestones
            Counter({5: 1})
        """
        state_dict = dict(state_dict)
        if "milestones" in state_dict:
            state_dict["milestones"] = Counter({int(k): int(v) for k, v in state_dict["milestones"].items()})
        super().load_state_dict(state_dict)

    def get_lr(self) -> list:
        """The current learning rates, times ``gamma^count`` at a milestone."""
        self._warn_get_lr()
        if self.last_epoch not in self.milestones:
            return _lrs(self.optimizer)
        return [group["lr"] * self.gamma ** self.milestones[self.last_epoch]
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list:
        milestones = sorted(self.milestones.elements())
        return [base * self.gamma ** bisect_right(milestones, self.last_epoch) for base in self.base_lrs]


class LinearLR(LRScheduler):
    """Scale the learning rate by a factor moving linearly from ``start_factor`` to ``end_factor``
    over ``total_iters`` epochs (``torch.optim.lr_scheduler.LinearLR``).

    Math (PyTorch's recursive form): ``lr_0 = lr · start_factor``; for ``1 <= t <= total_iters``
    ``lr_t = lr_{t-1} · (1 + (e - s) / (total_iters·s + (t - 1)(e - s)))``; then constant. It
    equals ``base_lr · (s + (e - s)·min(t, total_iters)/total_iters)`` up to rounding.

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
        >>> s = am.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=3)
        >>> lrs = []
        >>> for _ in range(5):
        ...     opt.step(); lrs.append(round(s.get_last_lr()[0], 6)); s.step()
        >>> lrs
        [0.25, 0.5, 0.75, 1.0, 1.0]
    """

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1):
        if not 0 < start_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1], got {start_factor!r}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: end_factor must be in [0, 1], got {end_factor!r}")
        if not isinstance(total_iters, int) or total_iters <= 0:
            raise ValueError(f"LinearLR: total_iters must be a positive integer, got {total_iters!r}")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The next learning rates of the linear ramp (recursive form)."""
        self._warn_get_lr()
        groups = self.optimizer.param_groups
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return _lrs(self.optimizer)
        s, e = self.start_factor, self.end_factor
        return [group["lr"] * (1.0 + (e - s) / (self.total_iters * s + (self.last_epoch - 1) * (e - s)))
                for group in groups]

    def _get_closed_form_lr(self) -> list:
        s, e = self.start_factor, self.end_factor
        return [base * (s + (e - s) * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every epoch (``torch.optim.lr_scheduler.ExponentialLR``).

    Math: ``lr_t = lr_{t-1} · gamma`` (closed form ``base_lr · gamma^t``).

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
        >>> s = am.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
        >>> lrs = []
        >>> for _ in range(3):
        ...     opt.step(); lrs.append(s.get_last_lr()[0]); s.step()
        >>> lrs
        [1.0, 0.5, 0.25]
    """

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The current learning rates times ``gamma`` (unchanged at construction)."""
        self._warn_get_lr()
        if self._is_initial:
            return _lrs(self.optimizer)
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list:
        return [base * self.gamma ** self.last_epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the initial lr to ``eta_min`` over ``T_max`` epochs
    (``torch.optim.lr_scheduler.CosineAnnealingLR``).

    Math (PyTorch's recursive form, so sequences match it exactly)::

        lr_t = (1 + cos(π t / T_max)) / (1 + cos(π (t-1) / T_max)) · (lr_{t-1} - η_min) + η_min

    (and ``lr_t = lr_{t-1} + (base_lr - η_min)(1 - cos(π / T_max))/2`` when
    ``(t - 1 - T_max) % (2 T_max) == 0``), which tracks the closed form
    ``η_min + (base_lr - η_min)(1 + cos(π t / T_max))/2``; past ``T_max`` it rises again.

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
        >>> s = am.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
        >>> lrs = []
        >>> for _ in range(5):
        ...     opt.step(); lrs.append(round(s.get_last_lr()[0], 4)); s.step()
        >>> lrs
        [1.0, 0.8536, 0.5, 0.1464, 0.0]
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if not T_max > 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be positive, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """The next learning rates of the cosine schedule (recursive form)."""
        self._warn_get_lr()
        groups = self.optimizer.param_groups
        t, T, eta = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return _lrs(self.optimizer)
        if self._step_count == 1 and t > 0:
            return [eta + (base - eta) * (1 + math.cos(t * math.pi / T)) / 2 for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [group["lr"] + (base - eta) * (1 - math.cos(math.pi / T)) / 2
                    for base, group in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (group["lr"] - eta) + eta for group in groups]

    def _get_closed_form_lr(self) -> list:
        t, T, eta = self.last_epoch, self.T_max, self.eta_min
        return [eta + (base - eta) * (1 + math.cos(math.pi * t / T)) / 2 for base in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing with warm restarts every ``T_i`` epochs, ``T_i`` growing by ``T_mult``
    (SGDR; ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``).

    Math: ``lr = η_min + (base_lr - η_min)(1 + cos(π T_cur / T_i))/2``, where ``T_cur`` counts
    epochs since the last restart; at a restart ``T_cur`` wraps and ``T_i ← T_i · T_mult``.
    ``step(epoch)`` accepts fractional epochs (e.g. ``epoch + batch / n_batches``).

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
        >>> s = am.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=2)
        >>> lrs = []
        >>> for _ in range(5):
        ...     opt.step(); lrs.append(round(s.get_last_lr()[0], 4)); s.step()
        >>> lrs
        [1.0, 0.5, 1.0, 0.5, 1.0]
    """

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1):
        if not isinstance(T_0, int) or T_0 <= 0:
            raise ValueError(f"CosineAnnealingWarmRestarts: expected a positive integer T_0, got {T_0!r}")
        if not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"CosineAnnealingWarmRestarts: expected an integer T_mult >= 1, got {T_mult!r}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(f"CosineAnnealingWarmRestarts: expected a float or int eta_min, got "
                             f"{type(eta_min).__name__}")
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        """``η_min + (base_lr - η_min)(1 + cos(π T_cur / T_i))/2`` per group."""
        self._warn_get_lr()
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for base in self.base_lrs]

    def step(self, epoch=None) -> None:
        """Advance one epoch, or jump to a (possibly fractional) ``epoch``.

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> s = am.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=4)
            >>> s.step(2.0); s.get_last_lr()
            [0.5]
        """
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if epoch < 0:
                raise ValueError(f"CosineAnnealingWarmRestarts.step: expected a non-negative epoch, "
                                 f"got {epoch!r}")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult ** n
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        self._get_lr_called_within_step = True
        try:
            values = self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = _lrs(self.optimizer)


class OneCycleLR(LRScheduler):
    """The 1cycle policy: warm up to ``max_lr``, then anneal far below the start, with momentum
    cycled inversely (``torch.optim.lr_scheduler.OneCycleLR``).

    Math: ``initial_lr = max_lr / div_factor``, ``min_lr = initial_lr / final_div_factor``.
    Phase 1 (to step ``pct_start·total - 1``) anneals ``initial_lr → max_lr`` and momentum
    ``max_momentum → base_momentum``; phase 2 anneals ``max_lr → min_lr`` and momentum back up.
    With ``three_phase`` the second phase mirrors the first and a third anneals
    ``initial_lr → min_lr``. ``anneal(a, b, p) = b + (a - b)/2·(1 + cos(π p))`` (``cos``) or
    ``(b - a)·p + a`` (``linear``). With ``cycle_momentum`` the optimizer's ``momentum`` (SGD,
    RMSprop) or ``betas[0]`` (Adam) is rewritten every step.

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
        >>> s = am.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=5, pct_start=0.4,
        ...                                       anneal_strategy="linear")
        >>> lrs = []
        >>> for _ in range(5):
        ...     opt.step(); lrs.append(round(s.get_last_lr()[0], 4)); s.step()
        >>> lrs
        [0.04, 1.0, 0.6667, 0.3333, 0.0]
    """

    def __init__(self, optimizer, max_lr, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum=0.85, max_momentum=0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1):
        _check_optimizer(optimizer, "OneCycleLR")
        self.optimizer = optimizer
        if total_steps is not None:
            if not isinstance(total_steps, int) or total_steps <= 0:
                raise ValueError(f"OneCycleLR: expected a positive integer total_steps, got {total_steps!r}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"OneCycleLR: expected a positive integer epochs, got {epochs!r}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(f"OneCycleLR: expected a positive integer steps_per_epoch, "
                                 f"got {steps_per_epoch!r}")
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("OneCycleLR: define either total_steps or (epochs and steps_per_epoch)")
        if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR: expected a float pct_start in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', "
                             f"got {anneal_strategy!r}")
        self._anneal_func_type = anneal_strategy
        if three_phase:
            self._schedule_phases = [
                {"end_step": float(pct_start * self.total_steps) - 1, "start_lr": "initial_lr",
                 "end_lr": "max_lr", "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct_start * self.total_steps) - 2, "start_lr": "max_lr",
                 "end_lr": "initial_lr", "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                {"end_step": self.total_steps - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
            ]
        else:
            self._schedule_phases = [
                {"end_step": float(pct_start * self.total_steps) - 1, "start_lr": "initial_lr",
                 "end_lr": "max_lr", "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": self.total_steps - 1, "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
            ]
        max_lrs = _per_group("max_lr", optimizer, max_lr, "OneCycleLR")
        if last_epoch == -1:
            for m, group in zip(max_lrs, optimizer.param_groups):
                group["initial_lr"] = m / div_factor
                group["max_lr"] = m
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError("OneCycleLR: cycle_momentum needs an optimizer with 'momentum' or "
                                 f"'betas', and {type(optimizer).__name__} has neither")
            self.use_beta1 = "betas" in optimizer.defaults
            max_ms = _per_group("max_momentum", optimizer, max_momentum, "OneCycleLR")
            base_ms = _per_group("base_momentum", optimizer, base_momentum, "OneCycleLR")
            if last_epoch == -1:
                for m, b, group in zip(max_ms, base_ms, optimizer.param_groups):
                    if self.use_beta1:
                        group["betas"] = (m, *group["betas"][1:])
                    else:
                        group["momentum"] = m
                    group["max_momentum"] = m
                    group["base_momentum"] = b
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start, end, pct):
        if self._anneal_func_type == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list:
        """The learning rates of the current phase (and, as a side effect, the momentum)."""
        self._warn_get_lr()
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times; the specified number of "
                             f"total steps is {self.total_steps}")
        lrs = []
        last = len(self._schedule_phases) - 1
        for group in self.optimizer.param_groups:
            start = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end = phase["end_step"]
                if step <= end or i == last:
                    pct = (step - start) / (end - start)
                    lr = self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        momentum = self._anneal(group[phase["start_momentum"]],
                                                group[phase["end_momentum"]], pct)
                    break
                start = phase["end_step"]
            lrs.append(lr)
            if self.cycle_momentum:
                if self.use_beta1:
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum
        return lrs


class SequentialLR(LRScheduler):
    """Run schedulers one after the other, switching at the ``milestones``
    (``torch.optim.lr_scheduler.SequentialLR``).

    Math: at epoch ``t`` the scheduler ``i = #{m in milestones : m <= t}`` is stepped; at a
    milestone the new scheduler restarts from its epoch 0 (closed form where it has one).

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
        >>> sch = am.optim.lr_scheduler
        >>> warm = sch.LinearLR(opt, start_factor=0.5, total_iters=2)
        >>> decay = sch.ExponentialLR(opt, gamma=0.5)
        >>> s = sch.SequentialLR(opt, [warm, decay], milestones=[2])
        >>> lrs = []
        >>> for _ in range(5):
        ...     opt.step(); lrs.append(s.get_last_lr()[0]); s.step()
        >>> lrs
        [0.5, 0.75, 1.0, 0.5, 0.25]
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        _check_optimizer(optimizer, "SequentialLR")
        schedulers = list(schedulers)
        milestones = list(milestones)
        if not schedulers:
            raise ValueError("SequentialLR: expects at least one scheduler, got none")
        for i, s in enumerate(schedulers):
            if not hasattr(s, "optimizer"):
                raise TypeError(f"SequentialLR: the scheduler at index {i} ({type(s).__name__}) "
                                "has no optimizer")
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError(f"SequentialLR: does not support ReduceLROnPlateau (index {i}): "
                                 "its step() needs a metric")
            if s.optimizer is not optimizer:
                raise ValueError(f"SequentialLR: all schedulers must belong to the same optimizer, but "
                                 f"the scheduler {type(s).__name__} at index {i} has another one")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: expects one milestone fewer than schedulers, got "
                             f"{len(schedulers)} schedulers and {len(milestones)} milestones")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.recursive_undo()  # undo the first step each scheduler took in its constructor
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def recursive_undo(self, sched=None) -> None:
        """Step back ``last_epoch`` of every (nested) scheduler once (``SequentialLR.recursive_undo``).

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> e = am.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
            >>> s = am.optim.lr_scheduler.SequentialLR(opt, [e], milestones=[]); e.last_epoch
            0
        """
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self.recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    def step(self) -> None:
        """Step the scheduler active at the new epoch.

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> e = am.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
            >>> s = am.optim.lr_scheduler.SequentialLR(opt, [e], milestones=[])
            >>> opt.step(); s.step(); s.get_last_lr()
            [0.5]
        """
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict:
        """Own attributes plus the state dicts of the wrapped schedulers.

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> e = am.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
            >>> sd = am.optim.lr_scheduler.SequentialLR(opt, [e], milestones=[]).state_dict()
            >>> sd["_schedulers"][0]["gamma"]
            0.5
        """
        sd = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        sd["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore own attributes and those of the wrapped schedulers.

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> e = am.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
            >>> s = am.optim.lr_scheduler.SequentialLR(opt, [e], milestones=[])
            >>> s.load_state_dict(s.state_dict()); s.last_epoch
            0
        """
        state_dict = dict(state_dict)
        inner = state_dict.pop("_schedulers")
        if len(inner) != len(self._schedulers):
            raise ValueError(f"SequentialLR.load_state_dict: the state dict has {len(inner)} "
                             f"schedulers but this SequentialLR has {len(self._schedulers)}")
        self.__dict__.update(state_dict)
        for s, sd in zip(self._schedulers, inner):
            s.load_state_dict(sd)


class ReduceLROnPlateau(LRScheduler):
    """Reduce the learning rate when a metric has stopped improving
    (``torch.optim.lr_scheduler.ReduceLROnPlateau``).

    Math: a metric ``a`` improves on the best ``b`` when ``a < b(1 - threshold)`` (mode
    ``min``, ``rel``), ``a < b - threshold`` (``min``, ``abs``), ``a > b(1 + threshold)``
    (``max``, ``rel``) or ``a > b + threshold`` (``max``, ``abs``). After more than
    ``patience`` epochs without improvement, ``lr ← max(lr·factor, min_lr)`` (skipped if the
    change is below ``eps``), then ``cooldown`` epochs during which bad epochs are not counted.

    Example:
        >>> import avila_ml as am
        >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
        >>> s = am.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
        >>> for loss in [1.0, 0.9, 0.9, 0.9, 0.9]:
        ...     s.step(loss)
        >>> s.get_last_lr()
        [0.5]
    """

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr=0, eps: float = 1e-8):
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1.0, got {factor!r}")
        _check_optimizer(optimizer, "ReduceLROnPlateau")
        self.factor = factor
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(f"ReduceLROnPlateau: expected {len(optimizer.param_groups)} "
                                 f"min_lrs (one per param group), got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _lrs(optimizer)
        self._init_is_better(mode, threshold, threshold_mode)
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics, epoch=None) -> None:
        """Record the epoch's ``metrics`` (a number or a one-element Tensor) and maybe reduce.

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> s = am.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
            >>> s.step(am.tensor(1.0)); s.step(2.0); s.get_last_lr()
            [0.1]
        """
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(_EPOCH_DEPRECATION, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _lrs(self.optimizer)

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"ReduceLROnPlateau: the optimizer has {len(groups)} param groups "
                                   f"but min_lr was given for {len(self.min_lrs)}; update `min_lrs`")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for i, group in enumerate(groups):
            old = float(group["lr"])
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:
                group["lr"] = new

    @property
    def in_cooldown(self) -> bool:
        """True while the cooldown after a reduction lasts."""
        return self.cooldown_counter > 0

    def _is_better(self, a, best) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        if self.mode == "max" and self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode, threshold, threshold_mode) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', "
                             f"got {threshold_mode!r}")
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the attributes saved by :meth:`state_dict`.

        Example:
            >>> import avila_ml as am
            >>> opt = am.optim.SGD([am.zeros(1, requires_grad=True)], lr=1.0)
            >>> s = am.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max")
            >>> s.load_state_dict({"best": 3.0, "num_bad_epochs": 2}); s.best, s.num_bad_epochs
            (3.0, 2)
        """
        self.__dict__.update(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)
