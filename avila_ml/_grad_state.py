"""The thread-local grad-mode flag, kept outside ``autograd`` so ``tensor.py`` can read it
without importing the autograd package (which imports ``tensor.py``)."""
import threading


class _State(threading.local):
    enabled = True


state = _State()
