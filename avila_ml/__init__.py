"""Avila ML: a PyTorch-style deep-learning library for scientific computing on NumPy and CuPy.

Example:
    >>> import avila_ml as am
    >>> x = am.tensor([1.0, 2.0], requires_grad=True)
    >>> (x ** 2).sum().backward()
    >>> x.grad
    tensor([2., 4.])
"""
from __future__ import annotations

__version__ = "0.1.0"

from .dtypes import (  # noqa: F401
    dtype, float16, bfloat16, float32, float64, int8, int16, int32, int64, uint8, bool, half, float,
    double, int, long, short, get_default_dtype, set_default_dtype, result_type, promote_types,
    is_floating_point,
)
from .backends import (  # noqa: F401
    device, manual_seed, get_default_device, set_default_device,
)
from .tensor import Tensor  # noqa: F401
from .autograd.grad_mode import no_grad, enable_grad, set_grad_enabled, is_grad_enabled  # noqa: F401
from .autograd.grad_mode import (inference_mode, is_inference_mode_enabled,  # noqa: F401
                                 is_anomaly_enabled, is_anomaly_check_nan_enabled)
from . import autograd, backends, cuda, ops  # noqa: F401
from .ops import *  # noqa: F401,F403
from .factories import *  # noqa: F401,F403
from .io import save, load  # noqa: F401
from .size import Size  # noqa: F401
from .legacy import *  # noqa: F401,F403
from .interop import from_dlpack  # noqa: F401
from .settings import (  # noqa: F401
    set_num_threads, get_num_threads, set_num_interop_threads, get_num_interop_threads,
    set_float32_matmul_precision, get_float32_matmul_precision, compile,
)
from . import accelerator, linalg, testing, torch_format  # noqa: F401,E402

# numeric constants, as torch.inf / torch.nan / torch.pi / torch.e
import math as _math  # noqa: E402  (``float`` here is the dtype)
inf = _math.inf
nan = _math.nan
pi = _math.pi
e = _math.e
from . import nn, optim, data  # noqa: F401,E402
from . import debug  # noqa: F401,E402  (sync-free value checks on CUDA: am.debug.set_sync_checks)

from . import utils  # noqa: F401,E402  (utils.data is avila_ml.data, as torch.utils.data)
from . import amp, cpu  # noqa: F401,E402
from . import cpu_accel  # noqa: F401,E402  (oneDNN for CPU convolutions; the library loads on first use)
from .amp import autocast, is_autocast_enabled, get_autocast_dtype  # noqa: F401,E402
from . import distributed  # noqa: F401,E402  (torch.distributed; mpi4py loads at init_process_group)


def is_tensor(obj) -> bool:
    """True when ``obj`` is a :class:`Tensor` (``torch.is_tensor``).

    Example:
        >>> import avila_ml as am
        >>> am.is_tensor(am.zeros(2)), am.is_tensor([0.0, 0.0])
        (True, False)
    """
    return isinstance(obj, Tensor)


def numel(input) -> int:
    """Number of elements (``torch.numel``).

    Example:
        >>> import avila_ml as am
        >>> am.numel(am.zeros(2, 3))
        6
    """
    return input.numel()


def initial_seed() -> int:
    """The seed of the CPU generator (``torch.initial_seed``).

    Example:
        >>> import avila_ml as am
        >>> am.manual_seed(7); am.initial_seed()
        7
    """
    return backends._cpu.initial_seed()
