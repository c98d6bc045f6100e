"""Containers: ``Sequential``, ``ModuleList``, ``ModuleDict``, ``ParameterList``,
``ParameterDict`` (``torch.nn`` containers), with PyTorch's naming of their entries."""
from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Mapping

from ...tensor import Tensor
from .module import Module, _addindent
from .parameter import Parameter

__all__ = ["Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"]


def _index(idx, n: int, who: str) -> int:
    try:
        idx = operator.index(idx)
    except TypeError:
        raise TypeError(f"{who}: indices must be integers or slices, not {type(idx).__name__}") from None
    if not -n <= idx < n:
        raise IndexError(f"{who}: index {idx} is out of range for a container of length {n}")
    return idx % n


def _renumber(module: Module) -> None:
    """Keys of list-like containers are '0', '1', ...: keep them dense after a deletion."""
    items = list(module._modules.values())
    module._modules.clear()
    for i, m in enumerate(items):
        module._modules[str(i)] = m


class Sequential(Module):
    """Modules applied one after another (``torch.nn.Sequential``).

    ``Sequential(m0, m1, ...)`` names the children ``"0"``, ``"1"``...;
    ``Sequential(OrderedDict(name=module, ...))`` keeps the given names. Supports indexing,
    slicing (a new ``Sequential`` sharing the modules), ``len``, iteration, ``append``,
    ``extend``, ``insert``, ``pop`` and ``del``.

    Math: ``y = f_{n-1}(... f_1(f_0(x)))``.

    Example:
        >>> import avila_ml as am
        >>> net = am.nn.Sequential(am.nn.Linear(4, 8), am.nn.ReLU(), am.nn.Linear(8, 1))
        >>> net(am.ones(2, 4)).shape, len(net), type(net[1:]).__name__
        ((2, 1), 3, 'Sequential')
        >>> net[1]
        ReLU()
    """

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for key, module in args[0].items():
                self.add_module(key, module)
        else:
            for i, module in enumerate(args):
                if not isinstance(module, Module):
                    raise TypeError(f"Sequential: argument {i} is a {type(module).__name__}, not a Module")
                self.add_module(str(i), module)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(OrderedDict(list(self._modules.items())[idx]))
        return list(self._modules.values())[_index(idx, len(self), "Sequential")]

    def __setitem__(self, idx, module) -> None:
        key = list(self._modules.keys())[_index(idx, len(self), "Sequential")]
        self.add_module(key, module)

    def __delitem__(self, idx) -> None:
        keys = list(self._modules.keys())
        if isinstance(idx, slice):
            for k in keys[idx]:
                del self._modules[k]
        else:
            del self._modules[keys[_index(idx, len(self), "Sequential")]]
        _renumber(self)  # PyTorch renumbers "0", "1"... after a deletion

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __add__(self, other: "Sequential") -> "Sequential":
        if not isinstance(other, Sequential):
            raise TypeError(f"Sequential.__add__: expected a Sequential, got {type(other).__name__}")
        out = Sequential()
        for m in self:
            out.append(m)
        for m in other:
            out.append(m)
        return out

    def append(self, module: Module) -> "Sequential":
        """Add ``module`` at the end (``Sequential.append``)."""
        self.add_module(str(len(self)), module)
        return self

    def extend(self, sequential) -> "Sequential":
        """Append every module of an iterable (``Sequential.extend``)."""
        for m in sequential:
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> "Sequential":
        """Insert ``module`` before position ``index`` (``Sequential.insert``)."""
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.insert: expected a Module, got {type(module).__name__}")
        n = len(self)
        if not -n <= index <= n:
            raise IndexError(f"Sequential.insert: index {index} is out of range for length {n}")
        if index < 0:
            index += n
        items = list(self._modules.values())
        items.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(items):
            self._modules[str(i)] = m
        return self

    def pop(self, key) -> Module:
        """Remove and return the module at position ``key`` (``Sequential.pop``)."""
        m = self[key]
        del self[key]
        return m

    def forward(self, input):
        for module in self._modules.values():
            input = module(input)
        return input


class ModuleList(Module):
    """A list of modules, registered so their parameters are found (``torch.nn.ModuleList``).

    It has no ``forward``: index and iterate it in the owner's ``forward``.

    Math: none; a ``ModuleList`` holds ``[f_0, f_1, ...]`` for the owner to compose.

    Example:
        >>> import avila_ml as am
        >>> blocks = am.nn.ModuleList([am.nn.Linear(2, 2) for _ in range(3)])
        >>> len(blocks), len(list(blocks.parameters()))
        (3, 6)
        >>> blocks
        ModuleList(
          (0-2): 3 x Linear(in_features=2, out_features=2, bias=True)
        )
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(list(self._modules.values())[idx])
        return self._modules[str(_index(idx, len(self), "ModuleList"))]

    def __setitem__(self, idx, module) -> None:
        self.add_module(str(_index(idx, len(self), "ModuleList")), module)

    def __delitem__(self, idx) -> None:
        if isinstance(idx, slice):
            for k in range(len(self))[idx]:
                del self._modules[str(k)]
        else:
            del self._modules[str(_index(idx, len(self), "ModuleList"))]
        _renumber(self)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __iadd__(self, modules) -> "ModuleList":
        return self.extend(modules)

    def __add__(self, other) -> "ModuleList":
        out = ModuleList()
        for m in self:
            out.append(m)
        for m in other:
            out.append(m)
        return out

    def append(self, module: Module) -> "ModuleList":
        """Add ``module`` at the end (``ModuleList.append``)."""
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append: expected a Module, got {type(module).__name__}")
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules) -> "ModuleList":
        """Append every module of an iterable (``ModuleList.extend``)."""
        if isinstance(modules, (Module, Mapping)) and not isinstance(modules, (ModuleList, Sequential)):
            raise TypeError(f"ModuleList.extend: expected an iterable of Modules, got {type(modules).__name__}")
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before position ``index`` (``ModuleList.insert``)."""
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.insert: expected a Module, got {type(module).__name__}")
        items = list(self._modules.values())
        items.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(items):
            self._modules[str(i)] = m

    def pop(self, key: int = -1) -> Module:
        """Remove and return the module at position ``key`` (``ModuleList.pop``)."""
        m = self[key]
        del self[key]
        return m

    def __repr__(self) -> str:
        # consecutive identical children print once, "(0-2): 3 x Linear(...)", like PyTorch
        reprs = [repr(m) for m in self]
        if not reprs:
            return self._get_name() + "()"
        blocks = []  # [start, end, repr]
        for i, r in enumerate(reprs):
            if blocks and blocks[-1][2] == r:
                blocks[-1][1] = i
            else:
                blocks.append([i, i, r])
        lines = []
        for start, end, r in blocks:
            line = f"({start}): {r}" if start == end else f"({start}-{end}): {end - start + 1} x {r}"
            lines.append(_addindent(line, 2))
        return self._get_name() + "(\n  " + "\n  ".join(lines) + "\n)"


class ModuleDict(Module):
    """A dict of named modules, registered in insertion order (``torch.nn.ModuleDict``).

    Math: none; it holds ``{name: f_name}`` for the owner to use.

    Example:
        >>> import avila_ml as am
        >>> heads = am.nn.ModuleDict({"mean": am.nn.Linear(4, 1), "logvar": am.nn.Linear(4, 1)})
        >>> list(heads.keys()), [n for n, _ in heads.named_parameters()][:2]
        (['mean', 'logvar'], ['mean.weight', 'mean.bias'])
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        if key not in self._modules:
            raise KeyError(f"ModuleDict: no module named {key!r}; keys are {list(self._modules)}")
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        del self._modules[key]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key) -> bool:
        return key in self._modules

    def clear(self) -> None:
        """Remove every module (``ModuleDict.clear``)."""
        self._modules.clear()

    def pop(self, key: str) -> Module:
        """Remove and return the module ``key`` (``ModuleDict.pop``)."""
        m = self[key]
        del self[key]
        return m

    def keys(self):
        """The names, in insertion order."""
        return self._modules.keys()

    def items(self):
        """``(name, module)`` pairs, in insertion order."""
        return self._modules.items()

    def values(self):
        """The modules, in insertion order."""
        return self._modules.values()

    def update(self, modules) -> None:
        """Add modules from a mapping or an iterable of ``(name, module)`` pairs
        (``ModuleDict.update``)."""
        if isinstance(modules, (Mapping, ModuleDict)):
            for k, m in modules.items():
                self[k] = m
            return
        for j, pair in enumerate(modules):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"ModuleDict.update: element #{j} should be a (name, module) pair, got {pair!r}")
            self[pair[0]] = pair[1]


def _as_parameter(value, who: str) -> Parameter:
    if isinstance(value, Parameter):
        return value
    if isinstance(value, Tensor):
        return Parameter(value.detach(), requires_grad=value.requires_grad or value.is_floating_point())
    raise TypeError(f"{who}: expected a Parameter or Tensor, got {type(value).__name__}")


def _param_line(key, p) -> str:
    size = "x".join(str(s) for s in p.shape)
    dev = "" if p.device.type == "cpu" else f" ({p.device})"
    kind = "Parameter" if isinstance(p, Parameter) else "Tensor"
    return f"  ({key}): {kind} containing: [{p.dtype!r} of size {size}{dev}]"


class ParameterList(Module):
    """A list of parameters, registered as ``"0"``, ``"1"``... (``torch.nn.ParameterList``).

    Tensors that are not Parameters are wrapped in one (sharing memory).

    Math: none; it holds ``[θ_0, θ_1, ...]``.

    Example:
        >>> import avila_ml as am
        >>> ps = am.nn.ParameterList([am.nn.Parameter(am.zeros(2)), am.ones(3)])
        >>> [n for n, _ in ps.named_parameters()], type(ps[1]).__name__
        (['0', '1'], 'Parameter')
    """

    def __init__(self, values=None):
        super().__init__()
        if values is not None:
            self.extend(values)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(list(self._parameters.values())[idx])
        return self._parameters[str(_index(idx, len(self), "ParameterList"))]

    def __setitem__(self, idx, param) -> None:
        self.register_parameter(str(_index(idx, len(self), "ParameterList")), _as_parameter(param, "ParameterList"))

    def __len__(self) -> int:
        return len(self._parameters)

    def __iter__(self):
        return iter(self._parameters.values())

    def __iadd__(self, parameters) -> "ParameterList":
        return self.extend(parameters)

    def append(self, value) -> "ParameterList":
        """Add a parameter at the end (``ParameterList.append``)."""
        self.register_parameter(str(len(self)), _as_parameter(value, "ParameterList.append"))
        return self

    def extend(self, values) -> "ParameterList":
        """Append every parameter of an iterable (``ParameterList.extend``)."""
        if isinstance(values, Tensor):
            raise TypeError("ParameterList.extend: expected an iterable of Parameters, got a single Tensor")
        for v in values:
            self.append(v)
        return self

    def extra_repr(self) -> str:
        return "\n".join(_param_line(k, p) for k, p in enumerate(self))

    def __call__(self, *args, **kwargs):
        raise RuntimeError("ParameterList should not be called")


class ParameterDict(Module):
    """A dict of named parameters, registered in insertion order (``torch.nn.ParameterDict``).

    Tensors that are not Parameters are wrapped in one (sharing memory).

    Math: none; it holds ``{name: θ_name}``.

    Example:
        >>> import avila_ml as am
        >>> pd = am.nn.ParameterDict({"scale": am.ones(2), "shift": am.zeros(2)})
        >>> list(pd.keys()), list(pd.state_dict())
        (['scale', 'shift'], ['scale', 'shift'])
    """

    def __init__(self, parameters=None):
        super().__init__()
        if parameters is not None:
            self.update(parameters)

    def __getitem__(self, key: str) -> Parameter:
        if key not in self._parameters:
            raise KeyError(f"ParameterDict: no parameter named {key!r}; keys are {list(self._parameters)}")
        return self._parameters[key]

    def __setitem__(self, key: str, value) -> None:
        self.register_parameter(key, _as_parameter(value, "ParameterDict"))

    def __delitem__(self, key: str) -> None:
        del self._parameters[key]

    def __len__(self) -> int:
        return len(self._parameters)

    def __iter__(self):
        return iter(self._parameters)

    def __contains__(self, key) -> bool:
        return key in self._parameters

    def keys(self):
        """The names, in insertion order."""
        return self._parameters.keys()

    def items(self):
        """``(name, parameter)`` pairs, in insertion order."""
        return self._parameters.items()

    def values(self):
        """The parameters, in insertion order."""
        return self._parameters.values()

    def get(self, key: str, default=None):
        """The parameter ``key``, or ``default`` (``ParameterDict.get``)."""
        return self._parameters.get(key, default)

    def pop(self, key: str) -> Parameter:
        """Remove and return the parameter ``key`` (``ParameterDict.pop``)."""
        p = self[key]
        del self[key]
        return p

    def clear(self) -> None:
        """Remove every parameter (``ParameterDict.clear``)."""
        self._parameters.clear()

    def update(self, parameters) -> None:
        """Add parameters from a mapping or an iterable of ``(name, value)`` pairs
        (``ParameterDict.update``). An ``OrderedDict`` keeps its order; a plain mapping is
        added in sorted key order, like PyTorch."""
        if isinstance(parameters, (OrderedDict, ParameterDict)):
            for k, v in parameters.items():
                self[k] = v
            return
        if isinstance(parameters, Mapping):  # a plain mapping is added in sorted key order, as in PyTorch
            for k, v in sorted(parameters.items(), key=lambda kv: kv[0]):
                self[k] = v
            return
        for j, pair in enumerate(parameters):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"ParameterDict.update: element #{j} should be a (name, value) pair, got {pair!r}")
            self[pair[0]] = pair[1]

    def extra_repr(self) -> str:
        return "\n".join(_param_line(k, p) for k, p in self.items())

    def __call__(self, *args, **kwargs):
        raise RuntimeError("ParameterDict should not be called")
