"""``avila_ml.backends.mkldnn``: the oneDNN (formerly MKL-DNN) flags (``torch.backends.mkldnn``).

- ``enabled`` (True): under the ``"auto"`` convolution algorithm, float32 CPU convolutions run
  through oneDNN when it is installed (``avila_ml.cpu_accel``); False keeps them on the NumPy
  algorithms, as ``torch.backends.mkldnn.enabled = False`` keeps PyTorch off oneDNN.

Example:
    >>> import avila_ml as am
    >>> am.backends.mkldnn.enabled
    True
    >>> am.backends.mkldnn.is_available() == am.cpu_accel.is_available()
    True
"""
from __future__ import annotations

enabled = True


def is_available() -> bool:
    """True when oneDNN is installed and usable here (``torch.backends.mkldnn.is_available``);
    this loads the library on first call.

    Example:
        >>> import avila_ml as am
        >>> isinstance(am.backends.mkldnn.is_available(), bool)
        True
    """
    from ..cpu_accel import _dnnl as dnnl
    return dnnl.available()
