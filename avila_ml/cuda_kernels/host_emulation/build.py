"""Compile the CUDA kernel sources for the host (g++ -std=c++20) into a cached shared library.

The library holds every ``extern "C"`` kernel of ``conv4d.cu`` and ``attention.cu`` built against
``cuda_host.h`` plus one C entry point, ``avila_host_launch`` (see ``host_entry_points.cpp``).
It is cached under the system temp directory, keyed by a hash of the sources, the compiler, its
flags and the compile-time defines, so editing a kernel triggers exactly one rebuild (about 10 s).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..launch_config import KERNEL_DEFINES, KERNEL_HEADERS, KERNEL_SOURCE_DIR

HOST_EMULATION_DIR = Path(__file__).resolve().parent
HOST_ENTRY_POINTS = HOST_EMULATION_DIR / "host_entry_points.cpp"
HOST_SOURCES = (
    HOST_EMULATION_DIR / "cuda_host.h",
    HOST_ENTRY_POINTS,
    KERNEL_SOURCE_DIR / "conv4d.cu",
    KERNEL_SOURCE_DIR / "conv4d_mma.cu",
    KERNEL_SOURCE_DIR / "attention_mma.cu",
    KERNEL_SOURCE_DIR / "attention.cu",
    *(KERNEL_SOURCE_DIR / header for header in KERNEL_HEADERS),
)
# `#pragma unroll` is an nvcc hint that g++ does not know; every other warning stays visible.
HOST_COMPILE_FLAGS = ("-O2", "-std=c++20", "-shared", "-fPIC", "-pthread", "-Wall", "-Wextra", "-Wno-unknown-pragmas")
_LIBRARY_NAME = "libavila_host_kernels.so"


def host_compiler() -> str | None:
    """The C++20 compiler used for the host build: $AVILA_ML_HOST_CXX, $CXX or g++ (None if absent)."""
    candidate = os.environ.get("AVILA_ML_HOST_CXX") or os.environ.get("CXX") or "g++"
    return shutil.which(candidate)


def host_library_path(defines: tuple[tuple[str, int], ...] = KERNEL_DEFINES) -> Path:
    """Where the library for these sources, compiler, flags and defines is (or will be) cached."""
    digest = hashlib.sha256()
    for part in (str(host_compiler()), *HOST_COMPILE_FLAGS, repr(defines)):
        digest.update(part.encode())
    for source in HOST_SOURCES:
        digest.update(source.read_bytes())
    return Path(tempfile.gettempdir()) / "avila_ml_host_kernels" / digest.hexdigest()[:20] / _LIBRARY_NAME


def build_host_library(defines: tuple[tuple[str, int], ...] = KERNEL_DEFINES) -> Path:
    """Compile the kernels for the host unless a cached build exists; return the library path.

    Example:

    >>> build_host_library().name
    'libavila_host_kernels.so'
    """
    path = host_library_path(defines)
    if path.exists():
        return path
    compile_host_library(HOST_ENTRY_POINTS, path, defines)
    return path


def compile_host_library(entry_points: Path, path: Path, defines: tuple[tuple[str, int], ...] = KERNEL_DEFINES,
                         extra_flags: tuple[str, ...] = ()) -> None:
    """Compile ``entry_points`` (host_entry_points.cpp, or a copy next to edited kernel sources, as
    the mutation tests make) into the shared library ``path``."""
    compiler = host_compiler()
    if compiler is None:
        raise RuntimeError("no C++20 compiler for the CUDA host emulation: install g++ >= 12 or set $CXX")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build under a private name and rename: concurrent test workers never load a half-written file.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    command = [
        compiler, *HOST_COMPILE_FLAGS, *extra_flags, *(f"-D{macro}={value}" for macro, value in defines),
        "-o", str(partial), str(entry_points),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"host build of the CUDA kernels failed:\n{' '.join(command)}\n{result.stderr}")
    os.replace(partial, path)


def open_host_library(path: Path) -> ctypes.CDLL:
    """Load a host-emulation library and declare the signature of ``avila_host_launch``."""
    library = ctypes.CDLL(str(path))
    library.avila_host_launch.argtypes = [
        ctypes.c_char_p,                    # kernel name
        ctypes.POINTER(ctypes.c_void_p),    # args: pointers to each argument value
        ctypes.c_int,                       # argument count
        ctypes.POINTER(ctypes.c_size_t),    # byte size of each packed argument
        ctypes.POINTER(ctypes.c_uint),      # grid (x, y, z)
        ctypes.POINTER(ctypes.c_uint),      # block (x, y, z)
        ctypes.c_size_t,                    # dynamic shared memory bytes
        ctypes.c_char_p,                    # error message buffer
        ctypes.c_size_t,                    # its size
    ]
    library.avila_host_launch.restype = ctypes.c_int
    return library


@functools.lru_cache(maxsize=None)
def load_host_library(defines: tuple[tuple[str, int], ...] = KERNEL_DEFINES) -> ctypes.CDLL:
    """Build if needed and load the host library, with the signature of ``avila_host_launch`` declared."""
    return open_host_library(build_host_library(defines))
