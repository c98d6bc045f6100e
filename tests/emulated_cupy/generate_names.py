"""Regenerate ``cupy_names.json``: the public names of the installed CuPy, which the emulated
device may expose and nothing else.

Run from the repository root with the test environment (CuPy imports without a GPU):

    python tests/emulated_cupy/generate_names.py

The file records the CuPy version it was made from; ``test_emulated_device.py`` checks that every
name the emulator defines is in it, so a stand-in cannot grow names that real CuPy lacks.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np

MODULES = (
    "cupy", "cupy.cuda", "cupy.cuda.runtime", "cupy.cuda.driver", "cupy.cuda.memory",
    "cupy.cuda.compiler", "cupy.cuda.nvrtc", "cupy.random", "cupy.linalg", "cupy.fft",
    "cupy.lib", "cupy.lib.stride_tricks", "cupyx", "cupyx.scipy", "cupyx.scipy.special",
)
CLASSES = {
    "cupy.ndarray": ("cupy", "ndarray"),
    "cupy.cuda.Device": ("cupy.cuda", "Device"),
    "cupy.cuda.Stream": ("cupy.cuda", "Stream"),
    "cupy.random.RandomState": ("cupy.random", "RandomState"),
    "cupy.RawModule": ("cupy", "RawModule"),
    "cupy.RawKernel": ("cupy", "RawKernel"),
    "cupy.ElementwiseKernel": ("cupy", "ElementwiseKernel"),
    "cupy.ReductionKernel": ("cupy", "ReductionKernel"),
}
OUT = Path(__file__).with_name("cupy_names.json")


def _resolve(dotted: str):
    """A module by dotted name; some (``cupy.cuda.driver``) are attributes, not importable paths."""
    head, *rest = dotted.split(".")
    obj = importlib.import_module(head)
    for i, part in enumerate(rest):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join([head, *rest[:i + 1]]))
    return obj


def main() -> None:
    import cupy
    modules = {}
    numpy_aliases = []
    for name in MODULES:
        mod = _resolve(name)
        modules[name] = sorted(n for n in dir(mod) if not n.startswith("_"))
    for n in modules["cupy"]:
        if getattr(cupy, n) is getattr(np, n, object()):
            numpy_aliases.append(n)  # the very NumPy object (dtypes, finfo, ...): re-exported as is
    classes = {}
    for key, (mod, cls) in CLASSES.items():
        obj = getattr(_resolve(mod), cls)
        classes[key] = sorted(n for n in dir(obj) if not n.startswith("_") or n.startswith("__"))
    data = {"cupy_version": cupy.__version__, "generated_by": "tests/emulated_cupy/generate_names.py",
            "modules": modules, "numpy_aliases": sorted(numpy_aliases), "classes": classes}
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} for CuPy {cupy.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
