"""A strict emulated CUDA device for CPU-only CI: a NumPy-backed stand-in for CuPy.

Why it lives in ``tests/`` (not in the package): it is a test instrument. The library never
knows it exists: :func:`install` puts modules named ``cupy``, ``cupyx`` (and their submodules)
into ``sys.modules`` before anything imports CuPy, so ``avila_ml`` runs its real GPU code path,
unchanged, and sees one CUDA device (``device("cuda")``). The tests' ``device`` fixture installs
it under ``AVILA_ML_TEST_DEVICE=cuda-emulated`` (only the cuda leg) or ``cpu,cuda-emulated``.

What it proves: no host array reaches a device op, every transfer is explicit, no NumPy-only name
is used on the GPU path, the .cu files compile with NVRTC (header-free), kernel launches respect
the grid/block and shared-memory rules, and the kernels compute the right numbers (host emulation).
:mod:`emulated_cupy.transfers` counts device->host syncs and host->device copies per call site.
What it cannot prove: races between threads of a block or between blocks, asynchronous errors
(it fails at the call, a GPU at the next sync), speed, cuRAND's exact numbers.

The names come from ``cupy_names.json``, generated from the installed CuPy wheel by
``generate_names.py``; nothing outside that list is defined.
"""
from __future__ import annotations

import sys
import types

import numpy as np

from . import core, cuda, kernels, random as _random
from .transfers import count_transfers

__all__ = ["install", "installed", "build", "count_transfers", "NAMES"]
NAMES = core.NAMES
_MODULES: dict = {}


class _StrictModule(types.ModuleType):
    """A module that answers only the names CuPy has, and says when one is not emulated."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        listed = NAMES["modules"].get(self.__name__, ())
        if name in listed:
            raise AttributeError(f"emulated CuPy: '{self.__name__}.{name}' exists in CuPy "
                                 f"{NAMES['cupy_version']} but is not emulated")
        raise AttributeError(f"module '{self.__name__}' has no attribute '{name}'")


def _module(name, values: dict, numpy_source=None):
    mod = _StrictModule(name)
    listed = NAMES["modules"][name]
    for n in listed + [n for n in values if f"{name}.{n}" in NAMES["modules"]]:
        if n in values:
            setattr(mod, n, values[n])
        elif numpy_source is not None and callable(getattr(numpy_source, n, None)):
            setattr(mod, n, core.wrap_function(getattr(numpy_source, n), n))
    submodules = {n for n in values if f"{name}.{n}" in NAMES["modules"]}
    extra = set(values) - set(listed) - submodules - {"__version__"}
    if extra:
        raise AssertionError(f"emulator defines names CuPy lacks in {name}: {sorted(extra)}")
    if "__version__" in values:
        mod.__version__ = values["__version__"]
    _MODULES[name] = mod
    return mod


def _scatter(op):
    def scatter(a, slices, value):
        if not isinstance(a, core.ndarray):
            raise TypeError(f"cupyx.scatter: expected a cupy.ndarray, got {type(a)}")
        op.at(a._a, core.index_key(slices), core.to_numpy_operand(value))
    return scatter


def _pinned(fill):
    def make(shape, dtype=float, order="C"):
        a = np.full(shape, 0, dtype=dtype, order=order) if fill else np.empty(shape, dtype=dtype, order=order)
        cuda.PINNED.append((a.ctypes.data, a.ctypes.data + max(a.nbytes, 1)))
        return a
    return make


def build() -> dict:
    """The emulated modules by name (``"cupy"``, ``"cupy.cuda"``, ``"cupyx"``, ...), built once,
    without touching ``sys.modules`` (tests of the emulator itself use this)."""
    if not _MODULES:
        _build()
    return dict(_MODULES)


def _build():
    import scipy.special

    runtime = cuda._runtime()
    mod_runtime = _module("cupy.cuda.runtime", vars(runtime))
    mod_driver = _module("cupy.cuda.driver", {"CUDADriverError": cuda.CUDADriverError})
    mod_memory = _module("cupy.cuda.memory", {"OutOfMemoryError": cuda.OutOfMemoryError})
    mod_compiler = _module("cupy.cuda.compiler", {"CompileException": cuda.CompileException})
    mod_cuda = _module("cupy.cuda", {
        "Device": cuda.Device, "Stream": cuda.Stream, "runtime": mod_runtime, "driver": mod_driver,
        "memory": mod_memory, "compiler": mod_compiler, "get_current_stream": cuda.get_current_stream,
        "is_available": cuda.is_available,
    })
    mod_random = _module("cupy.random", {n: getattr(_random, n) for n in NAMES["modules"]["cupy.random"]
                                         if hasattr(_random, n)})
    mod_linalg = _module("cupy.linalg", {}, np.linalg)
    mod_fft = _module("cupy.fft", {}, np.fft)
    mod_tricks = _module("cupy.lib.stride_tricks", {}, np.lib.stride_tricks)
    mod_lib = _module("cupy.lib", {"stride_tricks": mod_tricks})
    values = {n: getattr(np, n) for n in NAMES["numpy_aliases"]}
    values.update({
        "__version__": NAMES["cupy_version"], "ndarray": core.ndarray, "asnumpy": core.asnumpy,
        "copyto": core.copyto, "get_array_module": core.get_array_module, "cuda": mod_cuda,
        "random": mod_random, "linalg": mod_linalg, "fft": mod_fft, "lib": mod_lib,
        "RawModule": kernels.RawModule, "ElementwiseKernel": kernels.ElementwiseKernel,
    })
    cupy = _module("cupy", values, np)
    core.MODULE_FUNCTIONS.update({n: getattr(cupy, n) for n in NAMES["modules"]["cupy"]
                                  if n in vars(cupy) and callable(vars(cupy)[n])
                                  and n not in NAMES["numpy_aliases"]})
    special = _module("cupyx.scipy.special", {}, scipy.special)
    scipy_mod = _module("cupyx.scipy", {"special": special})
    _module("cupyx", {
        "scipy": scipy_mod, "scatter_add": _scatter(np.add), "scatter_max": _scatter(np.maximum),
        "scatter_min": _scatter(np.minimum), "empty_pinned": _pinned(False), "zeros_pinned": _pinned(True),
        "empty_like_pinned": lambda a, dtype=None: _pinned(False)(a.shape, a.dtype if dtype is None else dtype),
        "zeros_like_pinned": lambda a, dtype=None: _pinned(True)(a.shape, a.dtype if dtype is None else dtype),
    })


def installed() -> bool:
    """True when ``import cupy`` gives the emulated device."""
    return isinstance(sys.modules.get("cupy"), _StrictModule)


def install() -> None:
    """Make ``import cupy``/``import cupyx`` give the emulated device, in this process.

    The ``device`` fixture's conftest does it at collection time, before avila_ml is imported.
    A real CuPy imported earlier (zarr's pytest plugin imports it) is dropped from
    ``sys.modules``: later ``import cupy`` statements, the library's included, get the emulator.
    """
    if installed():
        return
    for name in [n for n in sys.modules if n.split(".")[0] in ("cupy", "cupyx", "cupy_backends")]:
        del sys.modules[name]
    sys.modules.update(build())
