"""The thread-local grad-mode flags, kept outside ``autograd`` so ``tensor.py`` can read them
without importing the autograd package (which imports ``tensor.py``)."""
import threading


class _State(threading.local):
    enabled = True     # record operations for backward
    inference = False  # inside ``inference_mode``: new tensors are inference tensors


state = _State()


class InferenceVersion(list):
    """The version counter of an inference tensor (made inside ``inference_mode``); its type is
    the mark that forbids saving the tensor for backward or writing it in place later."""

    __slots__ = ()


class anomaly:
    """``autograd.set_detect_anomaly``: process-wide, as in PyTorch."""

    enabled = False
    check_nan = True
