"""``Module``: the base class of every layer — registration of parameters, buffers and
submodules, train/eval mode, device/dtype moves, hooks and ``state_dict`` (``torch.nn.Module``).
"""
from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from ... import dtypes as _dt
from ...autograd.grad_mode import no_grad
from ...backends import backend_of, device as _device
from ...ops.shape import _move
from ...tensor import Tensor
from .parameter import Parameter

__all__ = ["Module", "RemovableHandle"]


class _IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What ``load_state_dict`` did not match: ``(missing_keys, unexpected_keys)``."""

    __slots__ = ()

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


# containers pass inputs on to their children (which check them); a child may be a user module
_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"}


def _is_array(a) -> bool:
    return isinstance(a, (np.ndarray, np.generic)) or type(a).__module__.split(".")[0] == "cupy"


def _check_no_arrays(module, args, kwargs) -> None:
    """TypeError naming the layer if a NumPy/CuPy array was passed where a Tensor is expected."""
    items = [(f"argument {i}", a) for i, a in enumerate(args)] + [(f"argument {k!r}", a) for k, a in kwargs.items()]
    for where, a in items:
        if _is_array(a):
            shape = getattr(a, "shape", ())
            raise TypeError(f"{type(module).__name__}: expected a Tensor for {where}, got {type(a).__module__}."
                            f"{type(a).__name__} of shape {tuple(shape)}; convert it with "
                            "avila_ml.from_numpy(x) or avila_ml.tensor(x)")


class RemovableHandle:
    """Returned by the ``register_*_hook`` methods; ``remove()`` unregisters the hook
    (``torch.utils.hooks.RemovableHandle``). Also a context manager that removes on exit.

    Example:
        >>> import avila_ml as am
        >>> m = am.nn.Identity()
        >>> h = m.register_forward_hook(lambda mod, args, out: out * 2)
        >>> m(am.tensor([1.0]))
        tensor([2.])
        >>> h.remove(); m(am.tensor([1.0]))
        tensor([1.])
    """

    _next_id = itertools.count()

    def __init__(self, *hooks_dicts):
        self.id = next(RemovableHandle._next_id)
        self._refs = tuple(weakref.ref(d) for d in hooks_dicts)

    def remove(self) -> None:
        """Unregister the hook (idempotent)."""
        for ref in self._refs:
            d = ref()
            if d is not None:
                d.pop(self.id, None)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class _HookDict(OrderedDict):
    """An OrderedDict that can be weak-referenced (handles hold weak references)."""


def _addindent(s: str, n: int) -> str:
    lines = s.split("\n")
    if len(lines) == 1:
        return s
    return lines[0] + "\n" + "\n".join(" " * n + line for line in lines[1:])


def _check_name(kind: str, name) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind}: name should be a string, got {type(name).__name__}")
    if name == "":
        raise KeyError(f'{kind}: name can\'t be empty string ""')
    if "." in name:
        raise KeyError(f'{kind}: name can\'t contain ".", got {name!r}')


_TENSOR_DEVICE_DTYPE_DOC = "device (str or am.device), dtype (floating am.dtype), or a Tensor"


class Module:
    """Base class of all layers (``torch.nn.Module``).

    A subclass calls ``super().__init__()``, assigns its :class:`Parameter`\\ s, buffers
    (``register_buffer``) and submodules as attributes, and defines ``forward``. Calling the
    module runs the forward pre-hooks, ``forward`` and the forward hooks. Attribute
    assignment registers by type, in order, so ``named_parameters()`` and ``state_dict()``
    list names exactly as PyTorch does for the same definition (``"0.weight"``,
    ``"encoder.bias"``...).

    Math: a module is a function ``y = f(x; θ)`` of its input and its parameters ``θ``
    (those of its submodules included); ``state_dict`` is the map name → value of ``θ``
    and the persistent buffers.

    Example:
        >>> import avila_ml as am
        >>> class Affine(am.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.scale = am.nn.Parameter(am.ones(2))
        ...         self.register_buffer("shift", am.zeros(2))
        ...     def forward(self, x):
        ...         return x * self.scale + self.shift
        >>> m = Affine()
        >>> [n for n, _ in m.named_parameters()], list(m.state_dict())
        (['scale'], ['scale', 'shift'])
        >>> m(am.tensor([1.0, 2.0]))
        tensor([1., 2.], grad_fn=<AddBackward0>)
    """

    training: bool
    _version = 1

    def __init__(self):
        sa = object.__setattr__
        sa(self, "training", True)
        sa(self, "_parameters", OrderedDict())
        sa(self, "_buffers", OrderedDict())
        sa(self, "_non_persistent_buffers_set", set())
        sa(self, "_modules", OrderedDict())
        sa(self, "_forward_pre_hooks", _HookDict())
        sa(self, "_forward_pre_hooks_with_kwargs", _HookDict())
        sa(self, "_forward_hooks", _HookDict())
        sa(self, "_forward_hooks_with_kwargs", _HookDict())

    def forward(self, *args, **kwargs):
        """The computation of the layer; every subclass defines it (``Module.forward``)."""
        raise RuntimeError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    # -- calling ---------------------------------------------------------------------------
    # Avila ML's own layers take Tensors: an array passed by mistake is reported at the call,
    # naming the layer (set per class in __init_subclass__; user subclasses are left alone)
    _rejects_arrays = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._rejects_arrays = (cls.__module__.startswith("avila_ml.nn.modules.")
                               and cls.__name__ not in _CONTAINERS)

    def __call__(self, *args, **kwargs):
        if self._rejects_arrays:
            _check_no_arrays(self, args, kwargs)
        if not self._forward_pre_hooks and not self._forward_hooks:
            return self.forward(*args, **kwargs)
        for hook_id, hook in list(self._forward_pre_hooks.items()):
            if hook_id in self._forward_pre_hooks_with_kwargs:
                res = hook(self, args, kwargs)
                if res is not None:
                    if not (isinstance(res, tuple) and len(res) == 2):
                        raise RuntimeError(
                            "forward pre-hook registered with with_kwargs=True must return None or "
                            f"a tuple (new_args, new_kwargs), got {type(res).__name__}")
                    args, kwargs = res
            else:
                res = hook(self, args)
                if res is not None:
                    args = res if isinstance(res, tuple) else (res,)
        out = self.forward(*args, **kwargs)
        for hook_id, hook in list(self._forward_hooks.items()):
            if hook_id in self._forward_hooks_with_kwargs:
                res = hook(self, args, kwargs, out)
            else:
                res = hook(self, args, out)
            if res is not None:
                out = res
        return out

    def register_forward_pre_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False) -> RemovableHandle:
        """Call ``hook(module, args)`` before each ``forward`` (``Module.register_forward_pre_hook``).

        A non-None return replaces the positional arguments (a single value is wrapped in a
        tuple). With ``with_kwargs=True`` the hook is ``hook(module, args, kwargs)`` and may
        return ``(args, kwargs)``. ``prepend=True`` runs it before the hooks already there.

        Example:
            >>> import avila_ml as am
            >>> m = am.nn.Identity()
            >>> h = m.register_forward_pre_hook(lambda mod, args: args[0] + 1)
            >>> m(am.tensor([1.0]))
            tensor([2.])
        """
        handle = RemovableHandle(self._forward_pre_hooks, self._forward_pre_hooks_with_kwargs)
        self._forward_pre_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_pre_hooks_with_kwargs[handle.id] = True
        if prepend:
            self._forward_pre_hooks.move_to_end(handle.id, last=False)
        return handle

    def register_forward_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False) -> RemovableHandle:
        """Call ``hook(module, args, output)`` after each ``forward`` (``Module.register_forward_hook``).

        A non-None return replaces the output. With ``with_kwargs=True`` the hook is
        ``hook(module, args, kwargs, output)``.

        Example:
            >>> import avila_ml as am
            >>> m, seen = am.nn.ReLU(), []
            >>> h = m.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
            >>> _ = m(am.ones(2, 3)); seen
            [(2, 3)]
        """
        handle = RemovableHandle(self._forward_hooks, self._forward_hooks_with_kwargs)
        self._forward_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_hooks_with_kwargs[handle.id] = True
        if prepend:
            self._forward_hooks.move_to_end(handle.id, last=False)
        return handle

    # -- registration ----------------------------------------------------------------------
    def register_parameter(self, name: str, param) -> None:
        """Register ``param`` (a :class:`Parameter` or None) as ``name`` (``Module.register_parameter``).

        Example:
            >>> import avila_ml as am
            >>> m = am.nn.Module(); m.register_parameter("w", am.nn.Parameter(am.zeros(2)))
            >>> [n for n, _ in m.named_parameters()]
            ['w']
        """
        if "_parameters" not in self.__dict__:
            raise AttributeError("register_parameter: cannot assign parameter before Module.__init__() call")
        _check_name("register_parameter", name)
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"register_parameter: attribute {name!r} already exists")
        if param is None:
            self._parameters[name] = None
            return
        if not isinstance(param, Parameter):
            raise TypeError(
                f"register_parameter: cannot assign {type(param).__name__!r} object to parameter "
                f"{name!r} (avila_ml.nn.Parameter or None required)")
        if param.grad_fn is not None:
            raise ValueError(
                f"register_parameter: cannot assign non-leaf Tensor to parameter {name!r}; model "
                "parameters must be created explicitly (detach() the value and wrap it in a Parameter)")
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """Register a non-learnable tensor as ``name`` (``Module.register_buffer``).

        Buffers move with ``to()``; persistent ones are part of ``state_dict()``.

        Example:
            >>> import avila_ml as am
            >>> m = am.nn.Module()
            >>> m.register_buffer("mean", am.zeros(3))
            >>> m.register_buffer("cache", am.zeros(3), persistent=False)
            >>> list(m.state_dict()), [n for n, _ in m.named_buffers()]
            (['mean'], ['mean', 'cache'])
        """
        if "_buffers" not in self.__dict__:
            raise AttributeError("register_buffer: cannot assign buffer before Module.__init__() call")
        _check_name("register_buffer", name)
        if hasattr(self, name) and name not in self._buffers:
            raise KeyError(f"register_buffer: attribute {name!r} already exists")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(
                f"register_buffer: cannot assign {type(tensor).__name__!r} object to buffer {name!r} "
                "(avila_ml Tensor or None required)")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name: str, module) -> None:
        """Register ``module`` (a :class:`Module` or None) as child ``name`` (``Module.add_module``).

        Example:
            >>> import avila_ml as am
            >>> m = am.nn.Module(); m.add_module("act", am.nn.ReLU()); m
            Module(
              (act): ReLU()
            )
        """
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {type(module).__name__} is not a Module subclass")
        _check_name("add_module", name)
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"add_module: attribute {name!r} already exists")
        self._modules[name] = module

    def register_module(self, name: str, module) -> None:
        """Alias of :meth:`add_module` (``Module.register_module``)."""
        self.add_module(name, module)

    def __getattr__(self, name: str):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            s = d.get(store)
            if s is not None and name in s:
                return s[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value) -> None:
        d = self.__dict__
        params = d.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            self._remove_everywhere(name, keep="_parameters")
            self.register_parameter(name, value)
            return
        if params is not None and name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                    "(avila_ml.nn.Parameter or None expected)")
            self.register_parameter(name, value)
            return
        modules = d.get("_modules")
        if isinstance(value, Module):
            if modules is None:
                raise AttributeError("cannot assign module before Module.__init__() call")
            self._remove_everywhere(name, keep="_modules")
            modules[name] = value
            return
        if modules is not None and name in modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as child module '{name}' "
                    "(avila_ml.nn.Module or None expected)")
            modules[name] = value
            return
        buffers = d.get("_buffers")
        if buffers is not None and name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                    "(avila_ml Tensor or None expected)")
            buffers[name] = value
            return
        object.__setattr__(self, name, value)

    def _remove_everywhere(self, name: str, keep: str) -> None:
        self.__dict__.pop(name, None)
        for store in ("_parameters", "_buffers", "_modules"):
            if store != keep:
                self.__dict__[store].pop(name, None)
        self._non_persistent_buffers_set.discard(name)

    def __delattr__(self, name: str) -> None:
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._buffers:
            del self._buffers[name]
            self._non_persistent_buffers_set.discard(name)
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def __dir__(self):
        keys = set(dir(type(self))) | set(self.__dict__)
        keys |= set(self._parameters) | set(self._modules) | set(self._buffers)
        return sorted(k for k in keys if not k[0].isdigit())

    # -- iteration -------------------------------------------------------------------------
    def _named_members(self, get_members, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            for k, v in get_members(mod):
                if v is None:
                    continue
                if remove_duplicate:
                    if id(v) in seen:
                        continue
                    seen.add(id(v))
                yield (mod_prefix + ("." if mod_prefix else "") + k), v

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """Yield ``(name, parameter)`` pairs, submodules' included when ``recurse``
        (``Module.named_parameters``). A parameter shared by two modules is listed once.

        Example:
            >>> import avila_ml as am
            >>> [n for n, _ in am.nn.Sequential(am.nn.Linear(2, 3), am.nn.Linear(3, 1)).named_parameters()]
            ['0.weight', '0.bias', '1.weight', '1.bias']
        """
        return self._named_members(lambda m: m._parameters.items(), prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True):
        """Yield the parameters, submodules' included when ``recurse`` (``Module.parameters``).

        Example:
            >>> import avila_ml as am
            >>> sum(p.numel() for p in am.nn.Linear(3, 2).parameters())
            8
        """
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """Yield ``(name, buffer)`` pairs (``Module.named_buffers``)."""
        return self._named_members(lambda m: m._buffers.items(), prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True):
        """Yield the buffers (``Module.buffers``)."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def named_children(self):
        """Yield ``(name, module)`` for the direct children (``Module.named_children``)."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        """Yield the direct children (``Module.children``)."""
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """Yield ``(name, module)`` for this module and every descendant, depth first, this
        module first with name ``prefix`` (``Module.named_modules``).

        Example:
            >>> import avila_ml as am
            >>> [n for n, _ in am.nn.Sequential(am.nn.Linear(2, 2), am.nn.ReLU()).named_modules()]
            ['', '0', '1']
        """
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            sub = prefix + ("." if prefix else "") + name
            yield from m.named_modules(memo, sub, remove_duplicate)

    def modules(self):
        """Yield this module and every descendant (``Module.modules``)."""
        for _, m in self.named_modules():
            yield m

    def get_submodule(self, target: str) -> "Module":
        """The descendant at dotted path ``target`` (``Module.get_submodule``).

        Example:
            >>> import avila_ml as am
            >>> am.nn.Sequential(am.nn.Linear(2, 2), am.nn.ReLU()).get_submodule("1")
            ReLU()
        """
        if target == "":
            return self
        mod = self
        for item in target.split("."):
            if not isinstance(mod, Module) or item not in mod._modules:
                raise AttributeError(f"get_submodule: {type(mod).__name__} has no submodule {item!r} (path {target!r})")
            mod = mod._modules[item]
        return mod

    def get_parameter(self, target: str) -> Parameter:
        """The parameter at dotted path ``target`` (``Module.get_parameter``)."""
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._parameters:
            raise AttributeError(f"get_parameter: {type(mod).__name__} has no parameter {name!r} (path {target!r})")
        return mod._parameters[name]

    def get_buffer(self, target: str) -> Tensor:
        """The buffer at dotted path ``target`` (``Module.get_buffer``)."""
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._buffers:
            raise AttributeError(f"get_buffer: {type(mod).__name__} has no buffer {name!r} (path {target!r})")
        return mod._buffers[name]

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set training mode on this module and all descendants (``Module.train``).

        Example:
            >>> import avila_ml as am
            >>> m = am.nn.Sequential(am.nn.Dropout()).eval(); m[0].training
            False
        """
        if not isinstance(mode, bool):
            raise ValueError(f"train: training mode is expected to be a bool, got {type(mode).__name__}")
        self.training = mode
        for m in self.children():
            m.train(mode)
        return self

    def eval(self) -> "Module":
        """Set evaluation mode, ``train(False)`` (``Module.eval``)."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Set ``requires_grad`` on every parameter (``Module.requires_grad_``)."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters: to None, or to zeros in place
        (``Module.zero_grad``).

        Example:
            >>> import avila_ml as am
            >>> m = am.nn.Linear(2, 1); m(am.ones(1, 2)).sum().backward()
            >>> m.zero_grad(); m.weight.grad is None
            True
        """
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad = p.grad.detach()
                else:
                    p.grad.requires_grad_(False)
                with no_grad():
                    p.grad.zero_()

    def apply(self, fn) -> "Module":
        """Call ``fn(m)`` on every descendant (children first), then on this module
        (``Module.apply``). Typical use: custom initialisation.

        Example:
            >>> import avila_ml as am
            >>> def init(m):
            ...     if isinstance(m, am.nn.Linear):
            ...         am.nn.init.zeros_(m.weight)
            >>> net = am.nn.Sequential(am.nn.Linear(2, 2)).apply(init)
            >>> float(net[0].weight.abs().sum())
            0.0
        """
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -- device and dtype ------------------------------------------------------------------
    def _apply(self, fn, recurse: bool = True) -> "Module":
        """Replace the array of every parameter, gradient and buffer by ``fn(array)`` in place,
        so the Parameter objects (and optimizers holding them) stay the same."""
        if recurse:
            for m in self.children():
                m._apply(fn)
        for p in self._parameters.values():
            if p is None:
                continue
            new = fn(p.array)
            if new is not p.array:
                p.array = new
                p._version[0] += 1
            if p.grad is not None:
                g = fn(p.grad.array)
                if g is not p.grad.array:
                    p.grad.array = g
                    p.grad._version[0] += 1
        for k, b in self._buffers.items():
            if b is None:
                continue
            new = fn(b.array)
            if new is not b.array:
                b.array = new
                b._version[0] += 1
        return self

    def to(self, *args, device=None, dtype=None, non_blocking: bool = False) -> "Module":
        """Move and/or cast the parameters and buffers in place (``Module.to``).

        ``m.to("cuda")``, ``m.to(am.float64)``, ``m.to("cpu", am.float64)``, ``m.to(tensor)``.
        Only floating-point parameters and buffers change dtype. The Parameter objects keep
        their identity (their array is replaced), so an optimizer created before ``to`` still
        updates them.

        Example:
            >>> import avila_ml as am
            >>> m = am.nn.Linear(2, 1); w = m.weight
            >>> m.to(am.float64).weight is w, w.dtype
            (True, avila_ml.float64)
        """
        for a in args:
            if isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            elif isinstance(a, _dt.dtype) or (isinstance(a, str) and a in _dt._NAMES):
                dtype = a
            elif isinstance(a, (str, _device)):
                device = a
            elif isinstance(a, type) or isinstance(a, np.dtype):
                dtype = a
            elif a is not None:
                raise TypeError(f"Module.to: unexpected argument {a!r}; expected {_TENSOR_DEVICE_DTYPE_DOC}")
        if dtype is not None:
            dtype = _dt.to_dtype(dtype)
            if not dtype.is_floating_point:
                raise TypeError(f"Module.to: only accepts floating point dtypes, but got desired dtype={dtype}")
        if device is not None:
            device = _device(device)

        def convert(arr):
            out = arr
            if device is not None and backend_of(out).device != device:
                out = _move(out, device)
            if dtype is not None and _dt.np_is_floating(out.dtype) and out.dtype != dtype.np:
                out = out.astype(dtype.np)
            return out

        return self._apply(convert)

    def cpu(self) -> "Module":
        """Move parameters and buffers to the CPU (``Module.cpu``)."""
        return self.to("cpu")

    def cuda(self, device=None) -> "Module":
        """Move parameters and buffers to a GPU (``Module.cuda``)."""
        if isinstance(device, int):
            device = _device("cuda", device)
        return self.to(device or "cuda")

    def double(self) -> "Module":
        """Cast floating parameters and buffers to float64 (``Module.double``)."""
        return self.to(_dt.float64)

    def float(self) -> "Module":
        """Cast floating parameters and buffers to float32 (``Module.float``)."""
        return self.to(_dt.float32)

    def half(self) -> "Module":
        """Cast floating parameters and buffers to float16 (``Module.half``)."""
        return self.to(_dt.float16)

    # -- state dict ------------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix: str, keep_vars: bool) -> None:
        """Write this module's own parameters and persistent buffers (no recursion); override
        to store something else."""
        for name, p in self._parameters.items():
            if p is not None:
                destination[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = b if keep_vars else b.detach()

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """An ``OrderedDict`` of name → tensor for every parameter and persistent buffer
        (``Module.state_dict``). The tensors share memory with the module but are detached,
        unless ``keep_vars=True``.

        Example:
            >>> import avila_ml as am
            >>> list(am.nn.Sequential(am.nn.Linear(2, 2)).state_dict())
            ['0.weight', '0.bias']
        """
        if args:  # PyTorch's deprecated positional form: (destination, prefix, keep_vars)
            names = ("destination", "prefix", "keep_vars")
            if len(args) > 3:
                raise TypeError(f"state_dict: takes at most 3 positional arguments, got {len(args)}")
            vals = dict(zip(names, args))
            destination = vals.get("destination", destination)
            prefix = vals.get("prefix", prefix)
            keep_vars = vals.get("keep_vars", keep_vars)
        if destination is None:
            destination = OrderedDict()
        self._save_to_state_dict(destination, prefix, keep_vars)
        for name, m in self._modules.items():
            if m is not None:
                m.state_dict(destination=destination, prefix=prefix + name + ".", keep_vars=keep_vars)
        return destination

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Copy this module's own entries from ``state_dict`` (no recursion), recording the
        missing keys, unexpected keys of this module's prefix, and errors. Same signature as
        PyTorch's, so a layer can override it (e.g. to accept an older key layout)."""
        persistent = {k: v for k, v in self._buffers.items() if k not in self._non_persistent_buffers_set}
        local = [(k, v) for k, v in itertools.chain(self._parameters.items(), persistent.items()) if v is not None]
        for name, target in local:
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            value = state_dict[key]
            if not isinstance(value, Tensor):
                try:
                    value = np.asarray(value)
                except Exception as e:  # noqa: BLE001 - report any conversion failure by name
                    error_msgs.append(f'While copying the parameter named "{key}", could not convert '
                                      f"a {type(value).__name__} to an array: {e}")
                    continue
                if value.dtype == object:
                    error_msgs.append(f'While copying the parameter named "{key}", expected a Tensor or '
                                      f"a numeric array, got {type(state_dict[key]).__name__}")
                    continue
            if tuple(value.shape) != tuple(target.shape):
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from "
                    f"checkpoint, the shape in current model is {tuple(target.shape)}.")
                continue
            with no_grad():
                target.copy_(value)
        if strict:
            children = {n for n, m in self._modules.items() if m is not None}
            own = {k for k, v in itertools.chain(self._parameters.items(), self._buffers.items()) if v is not None}
            for key in state_dict:
                if not key.startswith(prefix):
                    continue
                rest = key[len(prefix):]
                head = rest.split(".", 1)[0]
                if "." in rest:
                    if head not in children:
                        unexpected_keys.append(key)
                elif rest not in own or rest in self._non_persistent_buffers_set:
                    unexpected_keys.append(key)

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy parameters and buffers from ``state_dict`` into this module, in place
        (``Module.load_state_dict``).

        Values may be Tensors or NumPy arrays (a PyTorch ``state_dict`` converted with
        ``{k: v.numpy() for k, v in sd.items()}`` loads as is). With ``strict=True`` missing
        and unexpected keys raise a ``RuntimeError`` naming them; a shape mismatch always
        raises, naming the key and both shapes. Returns ``(missing_keys, unexpected_keys)``.

        Example:
            >>> import avila_ml as am
            >>> import numpy as np
            >>> m = am.nn.Linear(2, 1)
            >>> m.load_state_dict({"weight": np.ones((1, 2)), "bias": np.zeros(1)})
            <All keys matched successfully>
            >>> m.load_state_dict({"weight": np.ones((1, 2))}, strict=False)
            _IncompatibleKeys(missing_keys=['bias'], unexpected_keys=[])
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: expected state_dict to be dict-like, got {type(state_dict).__name__}")
        missing, unexpected, errors = [], [], []
        metadata = getattr(state_dict, "_metadata", None) or {}

        def load(module, prefix):
            module._load_from_state_dict(state_dict, prefix, metadata.get(prefix[:-1], {}), True,
                                         missing, unexpected, errors)
            for name, child in module._modules.items():
                if child is not None:
                    load(child, prefix + name + ".")

        load(self, "")
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in unexpected)))
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in missing)))
        if errors:
            raise RuntimeError("Error(s) in loading state_dict for {}:\n\t{}".format(
                type(self).__name__, "\n\t".join(errors)))
        return _IncompatibleKeys(missing, unexpected)

    # -- display ---------------------------------------------------------------------------
    def _get_name(self) -> str:
        return type(self).__name__

    def extra_repr(self) -> str:
        """The layer's own settings for ``repr`` (override it; ``Module.extra_repr``)."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({k}): " + _addindent(repr(m), 2) for k, m in self._modules.items()]
        lines = extra_lines + child_lines
        s = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                s += extra_lines[0]
            else:
                s += "\n  " + "\n  ".join(lines) + "\n"
        return s + ")"
