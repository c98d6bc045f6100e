"""``cupy.RawModule`` and ``cupy.ElementwiseKernel`` on the emulated device.

RawModule: the source is compiled with NVRTC (as on a GPU machine, so a missing header or a
syntax NVRTC rejects fails here too), then launches run the same source compiled with g++
against the host emulation (``avila_ml/cuda_kernels/host_emulation``), under CuPy's launch rules:
block and grid limits of the device, and dynamic shared memory above 48 KiB only after
``kernel.max_dynamic_shared_size_bytes`` was raised (at most the device's opt-in limit).

ElementwiseKernel: the C body is compiled for the host with g++ inside a loop over the broadcast
elements, inputs as ``const`` values and outputs as references, as CuPy's generated kernel does.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import nvrtc
from .core import ndarray, unsupported
from .cuda import ATTRIBUTES, CompileException, CUDADriverError

_DEFAULT_SHARED = ATTRIBUTES["MaxSharedMemoryPerBlock"]
_INVALID_VALUE = 1  # CUDA_ERROR_INVALID_VALUE
_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
           np.dtype(np.uint32): ctypes.c_uint32, np.dtype(np.uint64): ctypes.c_uint64,
           np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
           np.dtype(np.bool_): ctypes.c_bool, np.dtype(np.int8): ctypes.c_int8,
           np.dtype(np.uint8): ctypes.c_uint8, np.dtype(np.int16): ctypes.c_int16,
           np.dtype(np.uint16): ctypes.c_uint16}


@functools.lru_cache(maxsize=None)
def _nvrtc_compile(code: str, options: tuple, name_expressions: tuple) -> None:
    if nvrtc.library() is None:
        return  # no NVRTC on this machine: the host build still runs the kernel
    try:
        nvrtc.compile_to_ptx(code, "module.cu", options, name_expressions)
    except nvrtc.NvrtcError as exc:
        raise CompileException(str(exc), code, "module.cu", options) from None


class RawModule:
    """``cupy.RawModule(code=..., options=..., name_expressions=...)`` for the project's kernels."""

    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        from avila_ml.cuda_kernels.launch_config import KERNEL_SOURCE_DIR
        if code is None:
            raise TypeError("emulated RawModule: only code= is emulated")
        sources = {p.read_text(): p.name for p in KERNEL_SOURCE_DIR.glob("*.cu")}
        if code not in sources:
            raise ValueError("emulated RawModule: it runs the project's own .cu sources only (on the host emulation)")
        self.code, self.options = code, tuple(options)
        self.name_expressions = tuple(name_expressions or ())
        _nvrtc_compile(code, self.options, self.name_expressions)
        self._defines = tuple((m.group(1), int(m.group(2))) for o in self.options
                              if (m := re.fullmatch(r"-D(\w+)=(-?\d+)", o)))
        self._functions: dict = {}

    def get_function(self, name):
        if self.name_expressions and name not in self.name_expressions:
            raise CUDADriverError(500, f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name}")
        fn = self._functions.get(name)
        if fn is None:
            fn = self._functions[name] = _Function(name, self._defines)
        return fn


def _dims(value, name):
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"{name} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


class _Function:
    """A kernel of a RawModule (``cupy.cuda.Function``): launch with ``f(grid, block, args, shared_mem=)``."""

    def __init__(self, name, defines):
        self.name = name
        self._defines = defines
        self._max_dynamic_shared = _DEFAULT_SHARED

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._max_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        if not 0 <= int(value) <= ATTRIBUTES["MaxSharedMemoryPerBlockOptin"]:
            raise CUDADriverError(_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE: invalid argument "
                                  f"(max_dynamic_shared_size_bytes={value} above the device's opt-in limit "
                                  f"{ATTRIBUTES['MaxSharedMemoryPerBlockOptin']})")
        self._max_dynamic_shared = int(value)

    def __call__(self, grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False):
        from avila_ml.cuda_kernels.host_emulation.build import load_host_library
        from avila_ml.cuda_kernels.host_emulation.runner import HostEmulationError
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        limits_ok = (
            all(d >= 1 for d in (*grid, *block))
            and block[0] <= ATTRIBUTES["MaxBlockDimX"] and block[1] <= ATTRIBUTES["MaxBlockDimY"]
            and block[2] <= ATTRIBUTES["MaxBlockDimZ"]
            and block[0] * block[1] * block[2] <= ATTRIBUTES["MaxThreadsPerBlock"]
            and grid[0] <= ATTRIBUTES["MaxGridDimX"] and grid[1] <= ATTRIBUTES["MaxGridDimY"]
            and grid[2] <= ATTRIBUTES["MaxGridDimZ"]
        )
        if not limits_ok:
            raise CUDADriverError(_INVALID_VALUE, f"CUDA_ERROR_INVALID_VALUE: invalid argument "
                                  f"({self.name}: grid {grid}, block {block})")
        if shared_mem > self._max_dynamic_shared:
            raise CUDADriverError(_INVALID_VALUE, f"CUDA_ERROR_INVALID_VALUE: invalid argument ({self.name}: "
                                  f"{shared_mem} bytes of dynamic shared memory, the kernel allows "
                                  f"{self._max_dynamic_shared}; raise max_dynamic_shared_size_bytes)")
        holders = [_pack(a) for a in args]
        count = len(holders)
        argv = (ctypes.c_void_p * count)(*(ctypes.addressof(h) for h in holders))
        sizes = (ctypes.c_size_t * count)(*(ctypes.sizeof(h) for h in holders))
        error = ctypes.create_string_buffer(1024)
        library = load_host_library(self._defines)
        status = library.avila_host_launch(self.name.encode(), argv, count, sizes, (ctypes.c_uint * 3)(*grid),
                                           (ctypes.c_uint * 3)(*block), int(shared_mem), error, len(error))
        if status != 0:
            raise HostEmulationError(f"{self.name}: {error.value.decode()}")


def _pack(arg):
    if isinstance(arg, ndarray):
        return ctypes.c_void_p(arg._a.ctypes.data)
    if isinstance(arg, np.ndarray):
        raise unsupported(arg)
    if isinstance(arg, np.generic):
        return _CTYPES[arg.dtype](arg.item())
    if isinstance(arg, bool):
        return ctypes.c_bool(arg)
    if isinstance(arg, int):
        return ctypes.c_int64(arg)
    if isinstance(arg, float):
        return ctypes.c_double(arg)
    raise unsupported(arg)


# -- ElementwiseKernel ---------------------------------------------------------------------------
_C_TYPES = {"bool": "bool", "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
            "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t",
            "float16": "_Float16", "float32": "float", "float64": "double"}
_HOST_FLAGS = ("-O1", "-shared", "-fPIC", "-std=c++17", "-ffp-contract=off", "-w")


def _parse_params(spec: str):
    params = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        words = part.split()
        raw = words[0] == "raw"
        words = words[1:] if raw else words
        if len(words) != 2:
            raise ValueError(f"ElementwiseKernel: cannot parse parameter {part!r}")
        params.append((raw, words[0], words[1]))
    return params


@functools.lru_cache(maxsize=None)
def _host_library(source: str):
    digest = hashlib.sha256((source + repr(_HOST_FLAGS)).encode()).hexdigest()[:20]
    path = Path(tempfile.gettempdir()) / "avila_ml_emulated_elementwise" / f"{digest}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        src = path.with_suffix(".cpp")
        src.write_text(source)
        partial = path.with_name(f"{digest}.{id(source)}.partial.so")
        result = subprocess.run(["g++", *_HOST_FLAGS, "-o", str(partial), str(src)], capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            raise CompileException(f"ElementwiseKernel host build failed:\n{result.stderr}", source)
        partial.replace(path)
    lib = ctypes.CDLL(str(path))
    lib.avila_elementwise.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_longlong]
    return lib


class ElementwiseKernel:
    """``cupy.ElementwiseKernel(in_params, out_params, operation, name, ...)`` run on the host."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, loop_prep="", after_loop="", options=()):
        self.in_params, self.out_params = _parse_params(in_params), _parse_params(out_params)
        self.operation, self.name, self.preamble = operation, name, preamble
        self.no_return, self.options = no_return, tuple(options)

    def __call__(self, *args, size=None, block_size=None):
        params = self.in_params + self.out_params
        if len(args) != len(params):
            raise TypeError(f"{self.name}: wrong number of arguments ({len(args)} for {len(params)}; "
                            "the emulator needs every output passed)")
        types: dict[str, np.dtype] = {}
        for (_, t, n), a in zip(params, args):
            if isinstance(a, np.ndarray):
                raise unsupported(a)
            if isinstance(a, ndarray) and t not in _C_TYPES:
                if types.setdefault(t, a._a.dtype) != a._a.dtype:
                    raise TypeError(f"{self.name}: Type is mismatched. {n} {a._a.dtype} {types[t]}")
        shapes = [a._a.shape for (raw, _, _), a in zip(params, args) if isinstance(a, ndarray) and not raw]
        if shapes:
            shape = np.broadcast_shapes(*shapes)
            if size is not None and int(np.prod(shape)) != size:
                raise ValueError(f"{self.name}: size {size} does not match the arrays' shape {shape}")
        elif size is None:
            raise ValueError("Loop size is undecided")
        else:
            shape = (int(size),)
        buffers, writebacks = [], []
        for i, ((raw, t, n), a) in enumerate(zip(params, args)):
            dt = np.dtype(t) if t in _C_TYPES else types.get(t)
            if dt is None:
                dt = _preamble_type(self.preamble, t)
            if dt is None:
                raise TypeError(f"{self.name}: type {t} of {n} is not bound by an array argument")
            if not isinstance(a, ndarray):
                if raw:
                    raise TypeError(f"{self.name}: raw parameter {n} needs a cupy.ndarray")
                buffers.append(np.array(a, dtype=dt).reshape(1))
                continue
            if raw:  # the kernel indexes it itself: its own memory, as on the device
                if a._a.dtype != dt:
                    raise TypeError(f"{self.name}: Type is mismatched. {n} {a._a.dtype} {dt}")
                buffers.append(a._a if a._a.flags.c_contiguous else np.ascontiguousarray(a._a))
            elif i >= len(self.in_params):
                if a._a.shape != shape:
                    raise ValueError(f"{self.name}: output {n} has shape {a._a.shape}, expected {shape}")
                if a._a.flags.c_contiguous and a._a.dtype == dt:
                    buffers.append(a._a)
                else:
                    tmp = np.ascontiguousarray(a._a, dtype=dt)
                    buffers.append(tmp)
                    writebacks.append((a._a, tmp))
            else:
                buffers.append(np.ascontiguousarray(np.broadcast_to(a._a, shape), dtype=dt))
        slots = frozenset(k for k, ((raw, _, _), a) in enumerate(zip(self.in_params, args))
                          if isinstance(a, ndarray) and not raw)
        lib = _host_library(self._source(types, slots))
        n = int(np.prod(shape))
        argv = (ctypes.c_void_p * max(1, len(buffers)))(*(b.ctypes.data for b in buffers))
        lib.avila_elementwise(argv, n)
        for dst, tmp in writebacks:
            dst[...] = tmp
        if self.no_return:
            return None
        outs = tuple(a for a in args[len(self.in_params):])
        return outs[0] if len(outs) == 1 else outs

    def _source(self, types, array_slots):
        lines = ["#include <cmath>", "#include <cstdint>", "#include <algorithm>", "using namespace std;"]
        lines += [f"typedef {c} {n};" for n, c in _C_TYPES.items() if n not in ("bool",)]
        lines += [f"typedef {_C_TYPES[np.dtype(dt).name]} {t};" for t, dt in types.items()]
        lines += [self.preamble, 'extern "C" void avila_elementwise(void** args, long long n) {']
        for k, (raw, t, name) in enumerate(self.in_params):  # raw arrays: indexable pointers
            if raw:
                lines.append(f"  const {t}* {name} = static_cast<const {t}*>(args[{k}]);")
        base = len(self.in_params)
        for k, (raw, t, name) in enumerate(self.out_params):
            if raw:
                lines.append(f"  {t}* {name} = static_cast<{t}*>(args[{base + k}]);")
        lines.append("  for (long long i = 0; i < n; ++i) {")
        for k, (raw, t, name) in enumerate(self.in_params):
            if not raw:
                lines.append(f"    const {t} {name} = static_cast<const {t}*>(args[{k}])"
                             f"[{'i' if k in array_slots else '0'}];")
        for k, (raw, t, name) in enumerate(self.out_params):
            if not raw:
                lines.append(f"    {t}& {name} = static_cast<{t}*>(args[{base + k}])[i];")
        lines += ["    {", self.operation, "    }", "  }", "}"]
        return "\n".join(lines)


def _preamble_type(preamble: str, name: str):
    """A type the preamble typedefs (``typedef float T;``), as a NumPy dtype."""
    m = re.search(rf"typedef\s+(\w+)\s+{re.escape(name)}\s*;", preamble)
    if m is None:
        return None
    back = {c: n for n, c in _C_TYPES.items()}
    return np.dtype(back[m.group(1)]) if m.group(1) in back else None
