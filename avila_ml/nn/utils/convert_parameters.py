"""Flatten parameters into one vector and back (``torch.nn.utils.convert_parameters``)."""
from __future__ import annotations

from ...ops.shape import cat, reshape
from ...tensor import Tensor

__all__ = ["parameters_to_vector", "vector_to_parameters"]


def _check_same_device(params, op: str) -> None:
    devs = {str(p.device) for p in params}
    if len(devs) > 1:
        raise TypeError(f"{op}: found parameters on different devices ({', '.join(sorted(devs))}); "
                        "they must all be on one device")


def parameters_to_vector(parameters) -> Tensor:
    """Concatenate the parameters, flattened, into one 1-d tensor, differentiably
    (``torch.nn.utils.parameters_to_vector``).

    Math: v = (vec(θ_1), ..., vec(θ_n)).

    Example:
        >>> import avila_ml as am
        >>> am.nn.utils.parameters_to_vector(am.nn.Linear(3, 2).parameters()).shape
        (8,)
    """
    params = list(parameters)
    if not params:
        raise ValueError("parameters_to_vector: got no parameters")
    _check_same_device(params, "parameters_to_vector")
    return cat([reshape(p, (-1,)) for p in params])


def vector_to_parameters(vec, parameters) -> None:
    """Copy slices of the 1-d tensor ``vec`` into the parameters' data, in order; each
    parameter then shares memory with ``vec`` (``torch.nn.utils.vector_to_parameters``).

    Math: θ_i ← reshape(v[o_i : o_i + |θ_i|], shape(θ_i)), o_i = Σ_{j<i} |θ_j|.

    Example:
        >>> import avila_ml as am
        >>> m = am.nn.Linear(2, 1)
        >>> am.nn.utils.vector_to_parameters(am.arange(3.0), m.parameters()); m.weight, m.bias
        (Parameter containing:
        tensor([[0., 1.]], requires_grad=True), Parameter containing:
        tensor([2.], requires_grad=True))
    """
    if not isinstance(vec, Tensor):
        raise TypeError(f"vector_to_parameters: expected vec to be a Tensor, but got {type(vec).__name__}")
    if vec.ndim != 1:
        raise ValueError(f"vector_to_parameters: expected a 1-d vec, got shape {tuple(vec.shape)}")
    params = list(parameters)
    _check_same_device(params, "vector_to_parameters")
    total = sum(p.numel() for p in params)
    if total != vec.numel():
        raise ValueError(f"vector_to_parameters: vec has {vec.numel()} elements but the parameters "
                         f"have {total} in all")
    offset = 0
    for p in params:
        if p.device != vec.device:
            raise TypeError(f"vector_to_parameters: vec is on {vec.device} but a parameter is on {p.device}")
        n = p.numel()
        p.array = vec.array[offset:offset + n].reshape(p.shape).astype(p.array.dtype, copy=False)
        p._bump()
        offset += n
