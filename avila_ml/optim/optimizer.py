"""``Optimizer``: the bookkeeping every optimizer shares (``torch.optim.Optimizer``).

Parameter groups, per-parameter state, ``zero_grad``, ``state_dict``/``load_state_dict`` and the
``step`` loop live here; the arithmetic of each algorithm lives in its own file (``sgd.py``,
``adam.py``, ...) as an ``_update`` method that hands arrays and scalars to
:func:`avila_ml.optim._fused.update`.
"""
from __future__ import annotations

import copy
import functools
import numbers
from collections import defaultdict
from itertools import chain

from ..autograd.grad_mode import enable_grad, no_grad
from ..backends import backend_of
from ..tensor import Tensor
from . import _fused

__all__ = ["Optimizer"]


def _mark_called(step):
    """Wrap a ``step`` so that LR schedulers can tell it ran (they warn when stepped first)."""

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        self._opt_called = True
        return step(self, *args, **kwargs)

    wrapper._marks_opt_called = True
    return wrapper


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class Optimizer:
    """Base class of all optimizers (``torch.optim.Optimizer``).

    ``params`` is an iterable of Tensors, of ``(name, Tensor)`` pairs, or of dicts (parameter
    groups: ``{"params": [...], "lr": ...}``; keys missing from a group take the value in
    ``defaults``). ``param_groups`` is the list of groups, ``state`` maps each parameter Tensor to
    a dict of its optimizer state (moment buffers as Tensors, ``step`` as an int).

    Subclasses implement ``_update(param, grad_array, state, group)`` (one parameter, in place)
    and ``_check_group(group, where)`` (hyper-parameter validation), or override ``step``
    entirely as in PyTorch.

    Math: a step replaces each parameter ``θ`` that has a gradient by ``θ - Δ(θ, ∇θ, state)``,
    in place, under ``no_grad``.

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([1.0, 2.0], requires_grad=True)
        >>> opt = am.optim.SGD([{"params": [w], "lr": 0.5}], lr=0.1)
        >>> opt.param_groups[0]["lr"], opt.defaults["lr"]
        (0.5, 0.1)
        >>> (w * w).sum().backward(); opt.step(); w
        tensor([0., 0.], requires_grad=True)
        >>> opt.zero_grad(); w.grad is None
        True
    """

    def __init__(self, params, defaults: dict):
        name = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(f"{name}: params should be an iterable of Tensors or dicts, but got a "
                            f"Tensor of shape {tuple(params.shape)}; wrap it in a list")
        if isinstance(params, (dict, str)) or not hasattr(params, "__iter__"):
            raise TypeError(f"{name}: params should be an iterable of Tensors or dicts, "
                            f"got {type(params).__name__}")
        self.defaults = dict(defaults)
        self._check_group(self.defaults, "")
        self.state: defaultdict = defaultdict(dict)
        self.param_groups: list[dict] = []
        self._workspace = _fused.Workspace()
        groups = list(params)
        if not groups:
            raise ValueError(f"{name}: optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "_marks_opt_called", False):
            cls.step = _mark_called(step)

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k not in ("params", "param_names")]
        return "\n".join(lines) + "\n)"

    # -- hooks for subclasses --------------------------------------------------------------------
    def _check_group(self, group: dict, where: str) -> None:
        """Raise ``ValueError`` for a bad hyper-parameter in ``group`` (defaults or a group)."""

    def _update(self, param: Tensor, grad, state: dict, group: dict) -> None:
        raise TypeError(f"{type(self).__name__}.step: an Optimizer subclass must override "
                        "step() or _update(param, grad, state, group)")

    def _bad(self, name: str, value, expected: str, where: str):
        return ValueError(f"{type(self).__name__}: invalid {name}={value!r}{where} (expected {expected})")

    def _require_real(self, group: dict, where: str, *names: str) -> None:
        for n in names:
            if n in group and not _is_real(group[n]):
                raise TypeError(f"{type(self).__name__}: {n}{where} must be a real number, "
                                f"got {type(group[n]).__name__} {group[n]!r}")

    def _require_nonneg(self, group: dict, where: str, *names: str) -> None:
        self._require_real(group, where, *names)
        for n in names:
            if n in group and not 0.0 <= group[n]:  # `not <=` also rejects NaN
                raise self._bad(n, group[n], f"{n} >= 0", where)

    # -- parameter groups ----------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters, with its own hyper-parameters (``Optimizer.add_param_group``).

        Missing hyper-parameters take the optimizer's ``defaults``. A parameter may appear only
        once across all groups.

        Example:
            >>> import avila_ml as am
            >>> a, b = am.zeros(2, requires_grad=True), am.zeros(3, requires_grad=True)
            >>> opt = am.optim.SGD([a], lr=0.1)
            >>> opt.add_param_group({"params": b, "lr": 0.01})
            >>> [g["lr"] for g in opt.param_groups]
            [0.1, 0.01]
        """
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}.add_param_group: a param group must be a dict, got "
                            f"{type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{name}.add_param_group: a param group needs a 'params' entry; "
                             f"got keys {sorted(param_group)}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{name}.add_param_group: parameters must be in an ordered collection "
                            "(a list), not a set: the order of a set changes between runs")
        else:
            params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        if names:
            if len(names) != len(params):
                raise ValueError(f"{name}.add_param_group: give either all parameters with names "
                                 "((name, tensor) pairs) or none")
            params = [p[1] for p in params]
        where = f" in param group {len(self.param_groups)}"
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: can only optimize Tensors, but parameter {i}{where} is a "
                                f"{type(p).__name__}")
            if p.grad_fn is not None and not p.retains_grad:
                raise ValueError(f"{name}: can't optimize a non-leaf Tensor (parameter {i}{where} "
                                 f"of shape {tuple(p.shape)} was produced by {p.grad_fn._name()})")
            if not p.is_floating_point():
                raise TypeError(f"{name}: parameters must be floating point, but parameter {i}"
                                f"{where} has dtype {p.dtype}")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            dup = next(i for i, x in enumerate(ids) if ids.index(x) != i)
            raise ValueError(f"{name}.add_param_group: parameter {dup}{where} appears more than "
                             "once in the group")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if taken.intersection(ids):
            raise ValueError(f"{name}.add_param_group: some parameters appear in more than one "
                             "parameter group")
        group = {k: v for k, v in param_group.items() if k != "params"}
        group["params"] = params
        if names:
            group["param_names"] = names
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check_group(group, where)
        self.param_groups.append(group)

    # -- gradients and steps ---------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (``Optimizer.zero_grad``).

        ``set_to_none=True`` (default) drops them (``.grad`` becomes None; the next backward
        allocates fresh ones); ``False`` fills them with zeros.

        Example:
            >>> import avila_ml as am
            >>> w = am.ones(2, requires_grad=True); w.sum().backward()
            >>> opt = am.optim.SGD([w], lr=0.1); opt.zero_grad(set_to_none=False); w.grad
            tensor([0., 0.])
        """
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if set_to_none:
                    p.grad = None
                elif getattr(g.array.flags, "writeable", True) and g.grad_fn is None:
                    g.array.fill(0)
                    g._version[0] += 1
                else:  # a read-only (broadcast) or graph-attached gradient: replace it
                    p.grad = Tensor._wrap(backend_of(g.array).xp.zeros_like(p.array))

    def _grad_array(self, p: Tensor, gi: int, pi: int):
        g = p.grad.array
        if g.shape != p.array.shape or g.dtype != p.array.dtype:
            raise RuntimeError(
                f"{type(self).__name__}.step: parameter {pi} of param group {gi} has shape "
                f"{tuple(p.shape)} and dtype {p.dtype}, but its grad has shape "
                f"{tuple(p.grad.shape)} and dtype {p.grad.dtype}; they must match")
        if backend_of(g) is not backend_of(p.array):
            raise RuntimeError(
                f"{type(self).__name__}.step: parameter {pi} of param group {gi} is on {p.device} "
                f"but its grad is on {p.grad.device}")
        return g

    def step(self, closure=None):
        """Update every parameter that has a gradient, in place (``Optimizer.step``).

        ``closure``, if given, is called (with gradients enabled) before the update and its
        return value (usually the loss) is returned. Parameters whose ``.grad`` is None are
        skipped and get no state.

        Example:
            >>> import avila_ml as am
            >>> w = am.tensor([3.0], requires_grad=True)
            >>> opt = am.optim.SGD([w], lr=0.25)
            >>> def closure():
            ...     opt.zero_grad(); loss = (w * w).sum(); loss.backward(); return loss
            >>> opt.step(closure), w
            (tensor(9., grad_fn=<SumBackward0>), tensor([1.5000], requires_grad=True))
        """
        self._opt_called = True
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad(), _fused.batched():  # CUDA: one kernel launch per group of like parameters
            for gi, group in enumerate(self.param_groups):
                for pi, p in enumerate(group["params"]):
                    if p.grad is None:
                        continue
                    grad = self._grad_array(p, gi, pi)
                    self._update(p, grad, self.state[p], group)
                    p._version[0] += 1  # an in-place modification: saved-tensor checks see it
        return loss

    def _buffer(self, state: dict, key: str, p: Tensor, fill=0.0):
        """The state array ``key`` of parameter ``p``, created (filled with ``fill``) if absent."""
        buf = state.get(key)
        if buf is None:
            xp = backend_of(p.array).xp
            buf = state[key] = Tensor._wrap(xp.full(p.array.shape, fill, dtype=p.array.dtype))
        return buf.array

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state as a dict (``Optimizer.state_dict``).

        ``{"state": {index: {name: value}}, "param_groups": [{...hyper-parameters, "params":
        [index, ...]}]}``: parameters are referred to by their position across the groups, as
        in PyTorch. The state Tensors are the live buffers (like PyTorch): save them, or
        ``copy.deepcopy`` the dict to keep a snapshot while training goes on.

        Example:
            >>> import avila_ml as am
            >>> w = am.ones(2, requires_grad=True)
            >>> opt = am.optim.SGD([w], lr=0.1, momentum=0.9)
            >>> w.sum().backward(); opt.step()
            >>> sd = opt.state_dict(); sd["param_groups"][0]["params"], sd["state"][0]
            ([0], {'momentum_buffer': tensor([1., 1.])})
        """
        index: dict = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index and s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from :meth:`state_dict` (``Optimizer.load_state_dict``).

        The groups must have the same number of parameters as this optimizer's; their
        hyper-parameters replace the current ones. State arrays are copied to each parameter's
        device and dtype and must have its shape. Integer keys given as strings (as after a
        JSON round trip) are accepted.

        Example:
            >>> import avila_ml as am
            >>> w = am.ones(2, requires_grad=True); w.sum().backward()
            >>> a = am.optim.Adam([w], lr=0.1); a.step()
            >>> b = am.optim.Adam([am.ones(2, requires_grad=True)], lr=0.5)
            >>> b.load_state_dict(a.state_dict()); b.param_groups[0]["lr"], b.state_dict()["state"][0]["step"]
            (0.1, 1)
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            got = (f"a dict with keys {sorted(map(str, state_dict))}" if isinstance(state_dict, dict)
                   else type(state_dict).__name__)
            raise ValueError(f"{name}.load_state_dict: expected a dict with keys 'state' and "
                             f"'param_groups', got {got}")
        saved_groups = copy.deepcopy(list(state_dict["param_groups"]))
        groups = self.param_groups
        if len(saved_groups) != len(groups):
            raise ValueError(f"{name}.load_state_dict: the state dict has {len(saved_groups)} "
                             f"parameter groups but the optimizer has {len(groups)}")
        for i, (g, sg) in enumerate(zip(groups, saved_groups)):
            missing = sorted(k for k in self.defaults if k not in sg)
            if missing:
                foreign = sorted(k for k in sg if k not in self.defaults and k not in _GROUP_EXTRAS)
                raise ValueError(
                    f"{name}.load_state_dict: parameter group {i} of the state dict lacks the "
                    f"hyper-parameters {missing} that {name} needs"
                    + (f" and has {foreign}, which {name} does not use" if foreign else "")
                    + f"; it looks like the state of another optimizer (load it into that optimizer's class)")
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: parameter group {i} has {len(sg['params'])} "
                    f"parameters in the state dict but {len(g['params'])} in the optimizer")
        id_map = dict(zip((_int_key(k) for k in chain.from_iterable(sg["params"] for sg in saved_groups)),
                          chain.from_iterable(g["params"] for g in groups)))
        state: defaultdict = defaultdict(dict)
        for key, values in state_dict["state"].items():
            k = _int_key(key)
            if k not in id_map:
                raise ValueError(f"{name}.load_state_dict: the state dict has state for parameter "
                                 f"{key!r}, which none of its param groups lists")
            p = id_map[k]
            state[p] = {n: self._load_value(p, k, n, v) for n, v in values.items()}
        for i, (g, sg) in enumerate(zip(groups, saved_groups)):
            sg["params"] = g["params"]
            if "param_names" in g and "param_names" not in sg:
                sg["param_names"] = g["param_names"]
            self._check_group(sg, f" in loaded param group {i}")
        self.param_groups = saved_groups
        self.state = state

    _float_state = ()  # per-parameter state kept as a Python float (PyTorch: a 0-d tensor)

    def _load_value(self, p: Tensor, index, key: str, value):
        if key == "step":
            return int(value.item() if hasattr(value, "item") else value)
        if key in self._float_state:
            return float(value.item() if hasattr(value, "item") else value)
        if isinstance(value, Tensor):
            value = value.array
        if not (hasattr(value, "__array_interface__") or hasattr(value, "__cuda_array_interface__")):
            return value
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"{type(self).__name__}.load_state_dict: state '{key}' of parameter "
                             f"{index} has shape {tuple(value.shape)} but the parameter has shape "
                             f"{tuple(p.shape)}")
        target = backend_of(p.array)
        source = backend_of(value)
        if source is not target:
            value = target.from_numpy(source.to_numpy(value))
        return Tensor._wrap(value.astype(p.array.dtype, copy=True))


# group keys that are not hyper-parameters of an optimizer (added by lr schedulers, names)
_GROUP_EXTRAS = {"params", "param_names", "initial_lr", "max_lr", "min_lr", "base_lr",
                 "max_momentum", "base_momentum"}


def _int_key(k):
    """State keys are ints; JSON round trips turn them into strings."""
    if isinstance(k, str) and k.lstrip("-").isdigit():
        return int(k)
    return k

