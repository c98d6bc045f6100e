"""Switches for recording the autograd graph: ``no_grad``, ``enable_grad``, ``set_grad_enabled``."""
from __future__ import annotations

import functools

from .._grad_state import state

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled"]


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
