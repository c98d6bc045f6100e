"""Run a PyTorch script on Avila ML unchanged: ``python -m avila_ml.as_torch script.py [args]``.

A porting aid. It makes ``import torch`` (and ``import torch.nn.functional as F``, ``from
torch.utils.data import DataLoader``, ...) resolve to the matching ``avila_ml`` module, then runs
the script as ``__main__``. Nothing is patched inside Avila ML: ``torch.X.Y`` is simply
``avila_ml.X.Y``. A name PyTorch has and Avila ML lacks raises the usual ``AttributeError`` /
``ModuleNotFoundError`` naming it. Inside your own code ``import avila_ml as torch`` does the
same for the top-level name.

Example:
    >>> import sys
    >>> from avila_ml import as_torch
    >>> as_torch.install()
    >>> import torch.nn.functional as F
    >>> F.relu is sys.modules["avila_ml.nn.functional"].relu
    True
    >>> as_torch.uninstall()
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import runpy
import sys
import types

__all__ = ["install", "uninstall", "main"]


class _TorchAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``torch`` / ``torch.X`` and loads them as ``avila_ml`` / ``avila_ml.X``."""

    def __init__(self):
        self._own_specs: dict = {}  # id(module) -> its own __spec__, between create and exec

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch" and not fullname.startswith("torch."):
            return None
        if _resolve("avila_ml" + fullname[len("torch"):]) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = _resolve("avila_ml" + spec.name[len("torch"):])
        # importlib sets ``module.__spec__`` to the torch spec after this returns; remember the
        # module's own, which exec_module puts back (else ``avila_ml.__spec__.name == "torch"``
        # for the rest of the process, and tools that read it, such as griffe for the API
        # reference, take avila_ml's own functions for re-exports from ``torch``)
        self._own_specs[id(module)] = getattr(module, "__spec__", None)
        return module

    def exec_module(self, module):
        # the module is the already-imported avila_ml module: nothing to execute
        own = self._own_specs.pop(id(module), None)
        if own is not None:
            module.__spec__ = own
        return None


def _resolve(real: str):
    """The avila_ml module called ``real``, or a module-valued attribute of that name, or None."""
    try:
        return importlib.import_module(real)
    except ModuleNotFoundError:
        parent, _, attr = real.rpartition(".")
        if not parent:
            return None
        owner = _resolve(parent)
        mod = getattr(owner, attr, None) if owner is not None else None
        return mod if isinstance(mod, types.ModuleType) else None


_finder = _TorchAlias()


_real_torch: dict = {}  # the real PyTorch modules set aside by install(), put back by uninstall()


def _torch_names() -> list:
    return [n for n in sys.modules if n == "torch" or n.startswith("torch.")]


def install() -> None:
    """Make ``import torch`` and ``import torch.<sub>`` import Avila ML (idempotent).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml import as_torch
        >>> as_torch.install()
        >>> import torch
        >>> torch.tensor([1.0, 2.0]).sum()
        tensor(3.)
        >>> as_torch.uninstall()
    """
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
        # keep an already imported real PyTorch: its C extension cannot be imported twice in one
        # process, so uninstall() must restore these very module objects
        _real_torch.update({n: sys.modules[n] for n in _torch_names()})
    for name in _torch_names():
        del sys.modules[name]


def uninstall() -> None:
    """Undo :func:`install`: later ``import torch`` finds the real PyTorch again (if present).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml import as_torch
        >>> as_torch.install(); as_torch.uninstall()
        >>> import sys; 'torch' in sys.modules and sys.modules['torch'].__name__ == 'avila_ml'
        False
    """
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    for name in _torch_names():
        del sys.modules[name]
    sys.modules.update(_real_torch)
    _real_torch.clear()


def main(argv=None) -> None:
    """Entry point of ``python -m avila_ml.as_torch script.py [args...]``.

    Example:
        >>> import avila_ml as am
        >>> import os, tempfile
        >>> from avila_ml import as_torch
        >>> path = os.path.join(tempfile.mkdtemp(), 'script.py')
        >>> _ = open(path, 'w').write('import torch; print(torch.ones(2).sum())')
        >>> as_torch.main([path])
        tensor(2.)
        >>> as_torch.uninstall()
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit("usage: python -m avila_ml.as_torch script.py [args...]")
    install()
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
