"""Turning a list of samples into a batch: :func:`default_collate` and :func:`default_convert`.

The rules are PyTorch's (``torch.utils.data.default_collate``), so a batch has the same
structure and dtypes as in PyTorch: tensors and NumPy arrays are stacked along a new first
dimension, Python floats become ``float64``, ints ``int64``, bools ``bool``, NumPy scalars
keep their dtype, strings stay a list, and dicts, lists, tuples and namedtuples are collated
field by field (a tuple sample gives a *list* of fields, as in PyTorch).
"""
from __future__ import annotations

import collections.abc
import copy

import numpy as np

from .. import dtypes as _dt
from ..backends import backend_of
from ..tensor import Tensor
from . import _transport

__all__ = ["default_collate", "default_convert"]

_ERR = "default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; found {}"


def _is_string_array(a: np.ndarray) -> bool:
    return a.dtype.kind in "SaUO"


def _stack_arrays(arrays, xp, what: str):
    first = arrays[0]
    for i, a in enumerate(arrays):
        if a.shape != first.shape:
            raise RuntimeError(f"default_collate: {what} in a batch must have equal shapes to be stacked, "
                               f"got {tuple(first.shape)} at sample 0 and {tuple(a.shape)} at sample {i}")
    if xp is np:
        # in a DataLoader worker a large batch is stacked straight into shared memory
        out = _transport.worker_empty((len(arrays), *first.shape), np.result_type(*arrays))
        if out is not None:
            return np.stack(arrays, out=out)
    return xp.stack(arrays)


def _collate_tensors(batch):
    first = batch[0]
    for i, t in enumerate(batch):
        if not isinstance(t, Tensor):
            raise TypeError(f"default_collate: sample 0 is a Tensor but sample {i} is a {type(t).__name__}")
        if t.device != first.device:
            raise RuntimeError(f"default_collate: tensors in a batch must be on one device, got "
                               f"{first.device} at sample 0 and {t.device} at sample {i}")
    arrays = [t.array for t in batch]
    if any(t._requires_grad for t in batch) or any(a.dtype != arrays[0].dtype for a in arrays):
        # the differentiable stack keeps the graph and applies PyTorch's type promotion
        from ..ops.shape import stack
        return stack(batch, 0)
    return Tensor._wrap(_stack_arrays(arrays, backend_of(arrays[0]).xp, "tensors"))


def _collate_ndarrays(batch):
    first = batch[0]
    if _is_string_array(first):
        raise TypeError(_ERR.format(first.dtype))
    arrays = [np.asarray(a) for a in batch]
    if any(a.dtype != first.dtype for a in arrays):
        dt = np.result_type(*arrays)
        arrays = [a.astype(dt, copy=False) for a in arrays]
    out = _stack_arrays(arrays, np, "NumPy arrays")
    _supported(out.dtype, "NumPy arrays")
    return Tensor._wrap(out)


def _supported(np_dtype, what: str) -> None:
    if np.dtype(np_dtype) not in _dt._FROM_NP:
        raise TypeError(f"default_collate: {what} of dtype {np.dtype(np_dtype)} have no avila_ml dtype; "
                        f"supported: {', '.join(d.name for d in _dt._ALL)} (convert them in the dataset "
                        "or pass a collate_fn)")


def default_collate(batch):
    """Collate a list of samples into a batch with a leading batch dimension
    (``torch.utils.data.default_collate``).

    ============================  ===========================================================
    element of the batch          result
    ============================  ===========================================================
    Tensor                        ``stack`` (autograd-aware when a sample requires grad)
    NumPy array                   stacked Tensor of the same dtype
    NumPy scalar                  1-d Tensor of its dtype
    ``float`` / ``int`` / bool    1-d ``float64`` / ``int64`` / ``bool`` Tensor
    ``str`` / ``bytes``           the batch unchanged (a tuple inside a sequence sample)
    dict (any mapping)            same mapping type, each key collated
    namedtuple                    same namedtuple type, each field collated
    list / tuple (sequence)       list (tuple) or same type (list), each position collated
    ============================  ===========================================================

    Math: for samples ``x_0..x_{B-1}`` of shape ``S``, the batch has shape ``(B, *S)`` with
    ``batch[b] = x_b``.

    Example:
        >>> import numpy as np, avila_ml as am
        >>> batch = am.data.default_collate([{"x": np.zeros(2, np.float32), "y": 1, "name": "a"},
        ...                                  {"x": np.ones(2, np.float32), "y": 0, "name": "b"}])
        >>> batch["x"], batch["y"], batch["name"]
        (tensor([[0., 0.],
                [1., 1.]]), tensor([1, 0]), ['a', 'b'])
        >>> am.data.default_collate([(1.5, 2), (2.5, 3)])
        [tensor([1.5000, 2.5000], dtype=avila_ml.float64), tensor([2, 3])]
    """
    if not isinstance(batch, collections.abc.Sequence) or isinstance(batch, (str, bytes)) or len(batch) == 0:
        raise TypeError(f"default_collate: expected a non-empty list of samples, got {type(batch).__name__}"
                        + (" of length 0" if isinstance(batch, collections.abc.Sequence) else ""))
    elem = batch[0]
    if isinstance(elem, Tensor):
        return _collate_tensors(batch)
    if isinstance(elem, np.ndarray):
        return _collate_ndarrays(batch)
    if isinstance(elem, (np.bool_, np.number)):
        out = np.asarray(batch)
        if out.dtype == object:
            raise TypeError(f"default_collate: NumPy scalars of mixed kinds cannot be stacked: {batch!r}")
        _supported(out.dtype, "NumPy scalars")
        return Tensor._wrap(out)
    if isinstance(elem, float):
        return Tensor._wrap(_numbers(batch, np.float64))
    if isinstance(elem, int):  # bool is an int: torch.tensor([True, False]) is a bool tensor
        from ..factories import tensor
        _numbers(batch, None)
        return tensor(list(batch))
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        for i, d in enumerate(batch):
            if not isinstance(d, collections.abc.Mapping):
                raise TypeError(f"default_collate: sample 0 is a mapping but sample {i} is a {type(d).__name__}")
            missing = [k for k in elem if k not in d]
            if missing:
                raise KeyError(f"default_collate: sample {i} lacks key(s) {missing} that sample 0 has")
        fields = {key: default_collate([d[key] for d in batch]) for key in elem}
        try:
            if isinstance(elem, collections.abc.MutableMapping):
                clone = copy.copy(elem)
                clone.update(fields)
                return clone
            return type(elem)(fields)
        except TypeError:
            return fields
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        _check_equal_lengths(batch)
        return type(elem)(*(default_collate(s) for s in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        _check_equal_lengths(batch)
        transposed = list(zip(*batch))  # tuples: strings inside sequences come back as tuples, like PyTorch
        if isinstance(elem, tuple):
            return [default_collate(s) for s in transposed]  # PyTorch returns a list here too
        fields = [default_collate(s) for s in transposed]
        try:
            if isinstance(elem, collections.abc.MutableSequence):
                clone = copy.copy(elem)
                for i, f in enumerate(fields):
                    clone[i] = f
                return clone
            return type(elem)(fields)
        except TypeError:
            return fields
    raise TypeError(_ERR.format(type(elem)))


def _numbers(batch, np_dtype):
    for i, x in enumerate(batch):
        if not isinstance(x, (int, float)):
            raise TypeError(f"default_collate: sample 0 is a Python number but sample {i} is a {type(x).__name__}")
    return np.asarray(batch, dtype=np_dtype) if np_dtype is not None else None


def _check_equal_lengths(batch) -> None:
    n = len(batch[0])
    for i, s in enumerate(batch):
        if not isinstance(s, collections.abc.Sequence) or len(s) != n:
            raise RuntimeError("default_collate: each element in list of batch should be of equal size; "
                               f"sample 0 has {n} fields, sample {i} has "
                               f"{len(s) if hasattr(s, '__len__') else type(s).__name__}")


def default_convert(data):
    """Convert NumPy arrays (and scalars) in ``data`` to Tensors, keeping the structure
    (``torch.utils.data.default_convert``).

    The collate function of a :class:`~avila_ml.data.DataLoader` with ``batch_size=None``
    (no automatic batching). Arrays are shared, not copied; strings and other objects pass
    through; a tuple becomes a list, as in PyTorch.

    Math: the identity on values; only the container type of arrays changes.

    Example:
        >>> import numpy as np, avila_ml as am
        >>> am.data.default_convert({"x": np.arange(3), "tag": "t"})
        {'x': tensor([0, 1, 2]), 'tag': 't'}
    """
    if isinstance(data, Tensor):
        return data
    if isinstance(data, np.ndarray):
        if _is_string_array(data) or data.dtype not in _dt._FROM_NP:
            return data
        return Tensor._wrap(data)
    if isinstance(data, (np.bool_, np.number)):
        return Tensor._wrap(np.asarray(data)) if np.asarray(data).dtype in _dt._FROM_NP else data
    if isinstance(data, collections.abc.Mapping):
        fields = {k: default_convert(v) for k, v in data.items()}
        try:
            if isinstance(data, collections.abc.MutableMapping):
                clone = copy.copy(data)
                clone.update(fields)
                return clone
            return type(data)(fields)
        except TypeError:
            return fields
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        fields = [default_convert(d) for d in data]
        try:
            if isinstance(data, collections.abc.MutableSequence):
                clone = copy.copy(data)
                for i, f in enumerate(fields):
                    clone[i] = f
                return clone
            return type(data)(fields)
        except TypeError:
            return fields
    return data
