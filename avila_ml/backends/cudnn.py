"""``avila_ml.backends.cudnn``: PyTorch's cuDNN flags (``torch.backends.cudnn``).

Avila ML does not call cuDNN: its convolutions are its own GEMM/FFT/direct paths and CUDA
kernels. Two flags steer its own CUDA Conv4d kernels as they steer cuDNN in PyTorch; the others
are accepted so scripts run, and do nothing:

- ``enabled`` (True): there is no cuDNN path to switch off.
- ``benchmark`` (False): when True, the tensor-core Conv4d kernels time their tile
  configurations once per shape on the device and cache the fastest on disk
  (:mod:`avila_ml.cuda_kernels.autotune`); the generic algorithm choice stays
  :func:`avila_ml.backends.set_conv_algorithm` (``"auto"`` picks by a cost model).
- ``deterministic`` (False): CPU results are deterministic whatever it says; on the GPU the
  scatter-adds of index backward (``cupyx.scatter_add``, atomics) may sum in varying order.
- ``allow_tf32`` (True, as in PyTorch): float32 Conv4d on CUDA runs on tensor cores in TF32
  (operands rounded to 10 mantissa bits, float32 sums); False gives the exact float32 kernels.
  CPU convolutions are always exact.

Example:
    >>> import avila_ml as am
    >>> am.backends.cudnn.benchmark = True
    >>> am.backends.cudnn.benchmark, am.backends.cudnn.is_available()
    (True, False)
    >>> am.backends.cudnn.benchmark = False
"""
from __future__ import annotations

enabled = True
benchmark = False
deterministic = False
allow_tf32 = True


def is_available() -> bool:
    """False: Avila ML never uses cuDNN (``torch.backends.cudnn.is_available``).

    Example:
        >>> import avila_ml as am
        >>> am.backends.cudnn.is_available()
        False
    """
    return False


def version():
    """None: no cuDNN is linked (``torch.backends.cudnn.version``).

    Example:
        >>> import avila_ml as am
        >>> print(am.backends.cudnn.version())
        None
    """
    return None
