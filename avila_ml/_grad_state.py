"""The thread-local grad-mode flag, kept outside ``autograd`` so ``tensor.py`` can read it
without importing the autograd package (which imports ``tensor.py``).

``autocast`` is the active autocast region that ops consult (None: off, or switched off inside
an autocast op and during backward); ``autocast_outer`` is the region the user opened."""
import threading


class _State(threading.local):
    enabled = True
    autocast = None
    autocast_outer = None


state = _State()
