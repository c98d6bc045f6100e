"""The public API of avila_ml, found by importing the package: which modules are public, which
names each one exports, and where each object is documented.

Used twice: by the MkDocs hook (``docs/hooks.py``) that writes the API reference pages at
build time, and by ``tests/test_docs.py``, which checks that every public name is in the
reference and has a docstring with an example. Because both read the package itself, a module
or name added later appears in the reference without editing a list.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

PACKAGE = "avila_ml"
# importable, but not API: sources and tooling of the CUDA kernels' host emulation
SKIP = ("avila_ml.cuda_kernels.host_emulation",)
# plumbing: documented in the reference for contributors, but not called by users, so exempt
# from the rule that every public name carries a runnable example (their tests cover them)
# autograd.inplace: the machinery behind every ``op_`` method (view records, graph rebase,
# CopySlices node), like autograd.engine behind ``backward``; users call ``t.add_(...)``, never
# these helpers, and PyTorch keeps its counterparts in C++ (tested in tests/test_compat_autograd.py)
INTERNAL = ("avila_ml.cuda_kernels", "avila_ml.backends.numpy_backend", "avila_ml.backends.cupy_backend",
            "avila_ml.backends.nvtx", "avila_ml.autograd.engine", "avila_ml.autograd.inplace")


def public_modules() -> list:
    """Names of the public modules: no path component starts with ``_``, sorted."""
    root = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(root.__path__, PACKAGE + ".", onerror=lambda name: None):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or info.name.startswith(SKIP):
            continue
        names.append(info.name)
    out = []
    for name in sorted(set(names)):
        try:
            importlib.import_module(name)
        except ImportError:  # an optional dependency is missing (e.g. mpi4py): not importable here
            continue
        out.append(name)
    return out


def public_names(module_name: str) -> list:
    """The names a module exports: ``__all__``; else, for a package, its public attributes that
    are not modules; for a plain module, those it defines (not those it imports)."""
    mod = importlib.import_module(module_name)
    if hasattr(mod, "__all__"):
        return [n for n in mod.__all__ if not isinstance(getattr(mod, n, None), types.ModuleType)]
    is_package = hasattr(mod, "__path__")  # a package's imports are its API (``am.exp``)
    names = []
    for n, obj in vars(mod).items():
        if n.startswith("_") or isinstance(obj, types.ModuleType) or type(obj).__module__ == "__future__":
            continue
        if not is_package and getattr(obj, "__module__", module_name) != module_name:
            continue  # imported helper (e.g. ``from typing import Any``)
        names.append(n)
    return sorted(names)


def home(module_name: str, name: str) -> str:
    """The module whose reference page documents ``module.name``: where the object was defined
    when that module is public, else the module that exports it."""
    obj = getattr(importlib.import_module(module_name), name)
    defined = getattr(obj, "__module__", None) if (inspect.isclass(obj) or callable(obj)) else None
    if defined and defined != module_name and defined in _public_set() and name in public_names(defined):
        return defined
    return module_name


_cache: dict = {}


def _public_set() -> set:
    if "mods" not in _cache:
        _cache["mods"] = set(public_modules())
    return _cache["mods"]


def needs_example(obj) -> bool:
    """Functions and classes need a docstring example; data (dtypes, constants) does not."""
    return inspect.isclass(obj) or inspect.isroutine(obj) or callable(obj)


def inventory() -> dict:
    """``{module: [(name, home module), ...]}`` for every public module."""
    return {m: [(n, home(m, n)) for n in public_names(m)] for m in public_modules()}


def is_internal(module_name: str) -> bool:
    """True for the plumbing modules listed in ``INTERNAL`` (and their submodules)."""
    return any(module_name == m or module_name.startswith(m + ".") for m in INTERNAL)
