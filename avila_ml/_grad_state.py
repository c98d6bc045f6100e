"""The thread-local grad-mode flags, kept outside ``autograd`` so ``tensor.py`` can read them
without importing the autograd package (which imports ``tensor.py``).

``autocast`` is the active autocast region that ops consult (None: off, or switched off inside
an autocast op and during backward); ``autocast_outer`` is the region the user opened."""
import threading


class _State(threading.local):
    enabled = True     # record operations for backward
    inference = False  # inside ``inference_mode``: new tensors are inference tensors
    autocast = None
    autocast_outer = None


state = _State()


class InferenceVersion(list):
    """The version counter of an inference tensor (made inside ``inference_mode``); its type is
    the mark that forbids saving the tensor for backward or writing it in place later."""

    __slots__ = ()


class anomaly:
    """``autograd.set_detect_anomaly``: process-wide, as in PyTorch."""

    enabled = False
    check_nan = True
