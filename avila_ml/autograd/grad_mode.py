"""Switches for recording the autograd graph: ``no_grad``, ``enable_grad``, ``set_grad_enabled``,
``inference_mode``, and anomaly detection."""
from __future__ import annotations

import functools

from .._grad_state import anomaly as _anomaly, state

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "inference_mode",
           "is_inference_mode_enabled", "set_detect_anomaly", "detect_anomaly",
           "is_anomaly_enabled", "is_anomaly_check_nan_enabled"]


_state = state


def is_grad_enabled() -> bool:
    """True when new operations are recorded for backward (``torch.is_grad_enabled``).

    Example:
        >>> import avila_ml as am
        >>> am.is_grad_enabled()
        True
        >>> with am.no_grad():
        ...     print(am.is_grad_enabled())
        ...
        False
    """
    return _state.enabled


class _GradMode:
    """Base of the grad-mode switches: a context manager and a function decorator."""

    _mode = True

    def __enter__(self):
        self._prev = _state.enabled
        _state.enabled = self._mode
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev
        return False

    def __call__(self, fn):
        mode = self._mode

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = _state.enabled
            _state.enabled = mode
            try:
                return fn(*args, **kwargs)
            finally:
                _state.enabled = prev

        return wrapper


class no_grad(_GradMode):
    """Do not record operations for backward (``torch.no_grad``).

    Example:
        >>> import avila_ml as am
        >>> x = am.ones(2, requires_grad=True)
        >>> with am.no_grad():
        ...     y = x * 2
        >>> y.requires_grad
        False
    """

    _mode = False


class enable_grad(_GradMode):
    """Record operations even inside ``no_grad`` (``torch.enable_grad``).

    Example:
        >>> import avila_ml as am
        >>> x = am.ones(2, requires_grad=True)
        >>> with am.no_grad(), am.enable_grad():
        ...     (x * 2).requires_grad
        True
    """

    _mode = True


class set_grad_enabled(_GradMode):
    """Turn recording on or off: a function call, a context manager or a decorator
    (``torch.set_grad_enabled``).

    Example:
        >>> import avila_ml as am
        >>> with am.set_grad_enabled(False):
        ...     am.is_grad_enabled()
        False
    """

    def __init__(self, mode: bool):
        self._mode = bool(mode)
        self._prev = _state.enabled
        _state.enabled = self._mode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev
        return False

    def __call__(self, fn):
        _state.enabled = self._prev  # used as a decorator: do not change the mode now
        return super().__call__(fn)


class inference_mode(_GradMode):
    """No recording, and tensors made inside are *inference tensors* (``torch.inference_mode``).

    A context manager or a decorator (``@inference_mode()`` or bare ``@inference_mode``).
    Inference tensors cannot be saved for a backward later, nor written in place outside
    inference mode: both raise PyTorch's errors. ``inference_mode(False)`` does nothing.

    Example:
        >>> import avila_ml as am
        >>> w = am.ones(2, requires_grad=True)
        >>> with am.inference_mode():
        ...     y = w * 2
        >>> y.requires_grad, y.is_inference(), am.is_inference_mode_enabled()
        (False, True, False)
    """

    def __new__(cls, mode=True):
        if callable(mode):  # bare @inference_mode on a function
            return cls(True)(mode)
        return super().__new__(cls)

    def __init__(self, mode: bool = True):
        self._on = bool(mode)

    def __enter__(self):
        self._prev = (_state.enabled, _state.inference)
        if self._on:
            _state.enabled, _state.inference = False, True
        return self

    def __exit__(self, *exc):
        _state.enabled, _state.inference = self._prev
        return False

    def __call__(self, fn):
        on = self._on

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = (_state.enabled, _state.inference)
            if on:
                _state.enabled, _state.inference = False, True
            try:
                return fn(*args, **kwargs)
            finally:
                _state.enabled, _state.inference = prev

        return wrapper


def is_inference_mode_enabled() -> bool:
    """True inside ``inference_mode`` (``torch.is_inference_mode_enabled``).

    Example:
        >>> import avila_ml as am
        >>> with am.inference_mode():
        ...     am.is_inference_mode_enabled()
        True
    """
    return _state.inference


# ---------------------------------------------------------------------------- anomaly mode
def set_detect_anomaly(mode: bool, check_nan: bool = True):
    """Turn anomaly detection on or off (``torch.autograd.set_detect_anomaly``).

    When on, every recorded node keeps the traceback of its forward call; a backward that
    returns NaN raises ``RuntimeError("Function 'XBackward0' returned nan values in its 0th
    output.")`` with that traceback, and an error inside a backward is preceded by a warning
    showing it. Slows every op: for debugging. Also usable as a context manager.

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([0.0], requires_grad=True)
        >>> with am.autograd.set_detect_anomaly(True):
        ...     y = am.sqrt(x) * 0.0   # d sqrt(x)/dx at 0 is inf; inf * 0 = nan
        ...     try:
        ...         y.sum().backward()
        ...     except RuntimeError as e:
        ...         print(str(e).splitlines()[0])
        Function 'SqrtBackward0' returned nan values in its 0th output.
    """
    return _AnomalyMode(mode, check_nan, now=True)


class _AnomalyMode:
    def __init__(self, mode, check_nan, now):
        self._prev = (_anomaly.enabled, _anomaly.check_nan)
        self._mode, self._check = bool(mode), bool(check_nan)
        if now:
            _anomaly.enabled, _anomaly.check_nan = self._mode, self._check

    def __enter__(self):
        _anomaly.enabled, _anomaly.check_nan = self._mode, self._check
        return self

    def __exit__(self, *exc):
        _anomaly.enabled, _anomaly.check_nan = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with _AnomalyMode(self._mode, self._check, now=False):
                return fn(*args, **kwargs)

        return wrapper


def detect_anomaly(check_nan: bool = True):
    """A context manager / decorator enabling anomaly detection (``torch.autograd.detect_anomaly``).

    Example:
        >>> import avila_ml as am
        >>> with am.autograd.detect_anomaly():
        ...     am.autograd.is_anomaly_enabled()
        True
    """
    return _AnomalyMode(True, check_nan, now=False)


def is_anomaly_enabled() -> bool:
    """Whether anomaly detection is on (``torch.is_anomaly_enabled``).

    Example:
        >>> import avila_ml as am
        >>> with am.autograd.detect_anomaly():
        ...     inside = am.is_anomaly_enabled()
        >>> inside, am.is_anomaly_enabled()
        (True, False)
    """
    return _anomaly.enabled


def is_anomaly_check_nan_enabled() -> bool:
    """Whether anomaly detection checks backward results for NaN (``torch.is_anomaly_check_nan_enabled``).

    Example:
        >>> import avila_ml as am
        >>> with am.autograd.detect_anomaly(check_nan=False):
        ...     checks = am.is_anomaly_check_nan_enabled()
        >>> checks
        False
        >>> with am.autograd.detect_anomaly():
        ...     checks = am.is_anomaly_check_nan_enabled()
        >>> checks
        True
    """
    return _anomaly.check_nan
