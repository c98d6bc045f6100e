"""The ``xp`` abstraction: one backend object per device, chosen from arrays or device strings.

Ops never branch on the device: they ask ``backend_of(array).xp`` for the array module
(NumPy or CuPy) and write one body (Chainer's ``get_array_module``). CuPy is imported
only when a CUDA device is first used.
"""
from __future__ import annotations

import os

import numpy as np

from .device import device
from .numpy_backend import NumpyBackend
from . import nvtx

__all__ = [
    "device", "get_backend", "backend_of", "cuda_is_available", "get_default_device",
    "set_default_device", "manual_seed", "set_conv_algorithm", "get_conv_algorithm",
    "CONV_ALGORITHMS",
]

_cpu = NumpyBackend()
_cuda: dict[int, object] = {}
_cuda_probe: list = []  # [error message or None], filled on first probe
_manual_seed: list = [None]  # the last manual_seed, applied to CUDA backends created after it


def _probe_cuda() -> str | None:
    """Return None when CuPy sees a GPU, else a message saying what is missing."""
    if not _cuda_probe:
        try:
            import cupy
        except ImportError as e:  # pragma: no cover - depends on the machine
            msg = ("CUDA requested but CuPy is not installed; install it with "
                   "`pip install avila-ml[cuda12]` or `[cuda13]` "
                   f"({type(e).__name__}: {e})")
        else:
            try:
                n = cupy.cuda.runtime.getDeviceCount()
                msg = None if n > 0 else "CUDA requested but CuPy found no GPU (device count is 0)"
            except Exception as e:  # noqa: BLE001 - CuPy raises driver-specific errors
                msg = f"CUDA requested but CuPy found no usable GPU: {type(e).__name__}: {e}"
        _cuda_probe.append(msg)
    return _cuda_probe[0]


def cuda_is_available() -> bool:
    """True when CuPy is installed and sees at least one GPU (``torch.cuda.is_available``).

    Example:
        >>> import avila_ml as am
        >>> isinstance(am.backends.cuda_is_available(), bool)
        True
    """
    return _probe_cuda() is None


def get_backend(dev=None):
    """Return the backend object for a device (string, :class:`device`, or None for the default).

    Example:
        >>> import avila_ml as am
        >>> am.backends.get_backend('cpu').xp.__name__
        'numpy'
    """
    if dev is None:
        dev = _default_device[0]
    elif not isinstance(dev, device):
        dev = device(dev)
    if dev.type == "cpu":
        return _cpu
    b = _cuda.get(dev.index)
    if b is None:
        msg = _probe_cuda()
        if msg is not None:
            raise RuntimeError(msg)
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
        if dev.index >= n:
            raise RuntimeError(f"CUDA device {dev} requested but only {n} GPU(s) are visible")
        from .cupy_backend import CupyBackend
        b = _cuda[dev.index] = CupyBackend(dev.index)
        if _manual_seed[0] is not None:  # manual_seed ran before this GPU's first use
            b.seed(_manual_seed[0])
        nvtx.activate()  # ranges on the GPU timeline when the nvtx package is installed
    return b


def backend_of(array):
    """The backend that owns ``array`` (a NumPy or CuPy array).

    Example:
        >>> import avila_ml as am
        >>> import numpy as np
        >>> am.backends.backend_of(np.zeros(3)).xp.__name__
        'numpy'
    """
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return _cpu
    dev = getattr(array, "device", None)
    idx = getattr(dev, "id", None)
    if idx is None:
        raise TypeError(f"backend_of: not an array of a known backend: {type(array).__name__}")
    return get_backend(device("cuda", idx))


def _initial_default():
    env = os.environ.get("AVILA_ML_DEVICE")
    try:
        return device(env) if env else device("cpu")
    except (ValueError, TypeError) as e:
        raise ValueError(f"environment variable AVILA_ML_DEVICE={env!r} is not a device: {e}") from None


_default_device = [_initial_default()]


def get_default_device() -> device:
    """The device factories use when none is given (``torch.get_default_device``).

    Example:
        >>> import avila_ml as am
        >>> am.backends.get_default_device()
        device(type='cpu')
    """
    return _default_device[0]


def set_default_device(dev) -> None:
    """Set the device factories use when none is given (``torch.set_default_device``).

    The environment variable ``AVILA_ML_DEVICE`` sets the initial value. Asking for
    ``cuda`` without CuPy or without a GPU raises a ``RuntimeError`` saying which is missing.

    Example:
        >>> import avila_ml as am
        >>> am.set_default_device("cpu"); am.zeros(2).device
        device(type='cpu')
    """
    dev = device(dev)
    get_backend(dev)  # fail now, not at the first factory call
    _default_device[0] = dev


def manual_seed(seed: int) -> None:
    """Seed the random generators of every backend (``torch.manual_seed``).

    The same seed gives bit-identical tensors on the CPU, and on a GPU whether or not it was
    in use before the call (a CUDA backend created later starts from this seed).

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(0); a = am.rand(3); am.manual_seed(0); bool((a == am.rand(3)).all())
        True
    """
    seed = int(seed)
    _manual_seed[0] = seed  # for CUDA backends created later
    _cpu.seed(seed)
    for b in _cuda.values():
        b.seed(seed)


CONV_ALGORITHMS = ("auto", "gemm", "fft", "direct", "onednn")
_conv_algorithm = ["auto"]


def set_conv_algorithm(name: str) -> None:
    """Choose the convolution algorithm for N-d convolutions (PyTorch has ``torch.backends.cudnn``
    flags instead). ``"auto"`` picks by shape: on the CPU, float32 (and float16/bfloat16, computed
    in float32) through oneDNN when it is installed (``avila_ml.cpu_accel``), else a NumPy
    algorithm by a cost model; on CUDA the hand-written conv4d kernels for 4-D
    float32/float64/float16 convolutions without groups. ``"gemm"``, ``"fft"`` and ``"direct"``
    force that NumPy/CuPy algorithm on every device. ``"onednn"`` requires oneDNN (raises
    RuntimeError without it) and runs every float32 CPU convolution through it; what oneDNN does
    not cover (float64, CuPy arrays) is chosen as under ``"auto"``.

    Example:
        >>> import avila_ml as am
        >>> am.backends.set_conv_algorithm("gemm"); am.backends.get_conv_algorithm()
        'gemm'
        >>> am.backends.set_conv_algorithm("auto")
    """
    if name not in CONV_ALGORITHMS:
        raise ValueError(f"set_conv_algorithm: unknown algorithm {name!r}; choose from {CONV_ALGORITHMS}")
    if name == "onednn":
        from ..cpu_accel import _dnnl as dnnl
        if not dnnl.available():
            raise RuntimeError(f"set_conv_algorithm('onednn'): {dnnl.absent_reason()}")
    _conv_algorithm[0] = name


def get_conv_algorithm() -> str:
    """The convolution algorithm set by :func:`set_conv_algorithm`.

    Example:
        >>> import avila_ml as am
        >>> am.backends.get_conv_algorithm()
        'auto'
        >>> am.backends.set_conv_algorithm('fft'); am.backends.get_conv_algorithm()
        'fft'
        >>> am.backends.set_conv_algorithm('auto')
    """
    return _conv_algorithm[0]


from . import cuda, cudnn, mkldnn, mps  # noqa: E402,F401  (PyTorch's torch.backends.* flags)
from . import host_memory  # noqa: E402  (issue 17: freed host memory kept for reuse, see the module)

host_memory._apply_default()
