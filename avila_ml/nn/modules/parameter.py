"""``Parameter``: a leaf Tensor that a :class:`~avila_ml.nn.Module` registers as learnable."""
from __future__ import annotations

import copy

from ...backends import get_backend
from ...tensor import Tensor

__all__ = ["Parameter"]


class Parameter(Tensor):
    """A Tensor that is a module parameter (``torch.nn.Parameter``).

    Assigning a ``Parameter`` to an attribute of a :class:`~avila_ml.nn.Module` registers it,
    so it appears in ``parameters()`` and ``state_dict()``. It is a leaf that requires grad
    (unless ``requires_grad=False``) and shares memory with ``data``. Operations on a
    Parameter return plain Tensors.

    Math: a parameter ``θ`` is a leaf of the graph; after ``loss.backward()``,
    ``θ.grad = ∂loss/∂θ``.

    Example:
        >>> import avila_ml as am
        >>> p = am.nn.Parameter(am.tensor([1.0, 2.0]))
        >>> p
        Parameter containing:
        tensor([1., 2.], requires_grad=True)
        >>> type(p * 2).__name__, p.is_leaf
        ('Tensor', True)
    """

    def __init__(self, data=None, requires_grad: bool = True):
        if data is None:
            from ...factories import empty
            data = empty(0)
        if isinstance(data, Tensor):
            array = data.array
        elif hasattr(data, "__array_interface__") or hasattr(data, "__cuda_array_interface__"):
            array = data
        else:
            raise TypeError(
                f"Parameter: expected data to be a Tensor or an array, got {type(data).__name__}"
            )
        super().__init__(array, requires_grad=False)
        if requires_grad:
            self.requires_grad_(True)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    def __reduce_ex__(self, protocol):
        b = self._backend
        return (_rebuild_parameter, (b.to_numpy(self.array), str(self.device), self._requires_grad))

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        out = Parameter(self.array.copy(), requires_grad=self._requires_grad)
        memo[id(self)] = out
        if self.grad is not None:
            out.grad = Tensor._wrap(self.grad.array.copy())
        if getattr(self, "__dict__", None):
            out.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return out


def _rebuild_parameter(arr, dev, requires_grad):
    array = get_backend(dev).from_numpy(arr) if dev != "cpu" else arr
    return Parameter(array, requires_grad=requires_grad)
