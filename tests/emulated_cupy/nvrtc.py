"""Compile CUDA C++ with NVRTC, the compiler ``cupy.RawModule`` uses, without a GPU.

NVRTC is a plain library (the ``nvidia-cuda-nvrtc`` wheel ships ``libnvrtc.so``); compiling to
PTX needs no driver and no device, so CPU-only CI can prove that every ``.cu`` file compiles the
way it will on a GPU machine, with only the headers NVRTC has built in. CuPy's own compile path
asks the driver for the device's architecture first, so it is not usable here; this calls
``nvrtcCreateProgram``/``nvrtcCompileProgram`` through ctypes.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import importlib.util
import os

DEFAULT_ARCH = "compute_80"


@functools.lru_cache(maxsize=1)
def library():
    """The NVRTC shared library, or None when neither the wheel nor a CUDA toolkit provides one."""
    candidates = []
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidates += sorted(glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")))
            candidates += sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so*")))
    candidates += ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"]
    for path in candidates:
        if "builtins" in os.path.basename(path):
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib
    return None


class NvrtcError(RuntimeError):
    """NVRTC rejected the source; the message is NVRTC's log."""


def compile_to_ptx(source: str, name: str = "kernel.cu", options=(), name_expressions=(),
                   arch: str = DEFAULT_ARCH) -> str:
    """Compile ``source`` to PTX for ``arch``; raise :class:`NvrtcError` with NVRTC's log on failure."""
    lib = library()
    if lib is None:
        raise RuntimeError("NVRTC not found: install the nvidia-cuda-nvrtc wheel (test extra)")
    prog = ctypes.c_void_p()
    check = functools.partial(_check, lib)
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None))
    try:
        for expr in name_expressions:
            check(lib.nvrtcAddNameExpression(prog, expr.encode()))
        opts = [f"--gpu-architecture={arch}", *options]
        argv = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
        status = lib.nvrtcCompileProgram(prog, len(opts), argv)
        if status != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise NvrtcError(f"{name}: NVRTC ({' '.join(opts)}) failed:\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)))
        ptx = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetPTX(prog, ptx))
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _check(lib, status: int) -> None:
    if status != 0:
        raise NvrtcError(f"NVRTC call failed: {lib.nvrtcGetErrorString(status).decode()}")
