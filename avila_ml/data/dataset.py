"""Datasets: map-style (``dataset[i]``) and iterable-style (``iter(dataset)``), and ways to combine them.

Mirrors ``torch.utils.data``: :class:`Dataset`, :class:`IterableDataset`, :class:`TensorDataset`,
:class:`Subset`, :class:`ConcatDataset`, :class:`ChainDataset` and :func:`random_split`.
"""
from __future__ import annotations

import bisect
import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np

from .sampler import _as_generator, _source

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "Subset", "ConcatDataset",
           "ChainDataset", "random_split"]


class Dataset:
    """A map-style dataset: ``dataset[i]`` returns sample ``i`` (``torch.utils.data.Dataset``).

    Subclasses define ``__getitem__`` and usually ``__len__`` (the default samplers need it).
    They may also define ``__getitems__(indices)`` returning a list of samples, which the
    :class:`~avila_ml.data.DataLoader` then calls once per batch instead of once per sample.
    ``a + b`` concatenates two datasets.

    Math: a dataset is a finite indexed family ``(x_0, ..., x_{n-1})``.

    Example:
        >>> import avila_ml as am
        >>> class Squares(am.data.Dataset):
        ...     def __len__(self): return 4
        ...     def __getitem__(self, i): return i * i
        >>> ds = Squares() + Squares()
        >>> len(ds), ds[5]
        (8, 1)
    """

    def __getitem__(self, index):
        raise TypeError(f"{type(self).__name__} is a Dataset subclass that does not define __getitem__")

    def __add__(self, other: "Dataset") -> "ConcatDataset":
        return ConcatDataset([self, other])


class IterableDataset(Dataset):
    """A dataset that is a stream: ``iter(dataset)`` yields samples (``torch.utils.data.IterableDataset``).

    With ``num_workers > 0`` every worker process iterates its own copy of the dataset, so,
    as in PyTorch, the dataset must split the stream itself or each sample comes out
    ``num_workers`` times: inside ``__iter__``, :func:`~avila_ml.data.get_worker_info` gives
    the worker's ``id`` and ``num_workers`` (it returns ``None`` in the main process).

    Math: a (possibly unbounded) sequence ``x_0, x_1, ...``.

    Example:
        >>> import avila_ml as am
        >>> class Range(am.data.IterableDataset):
        ...     def __init__(self, n): self.n = n
        ...     def __iter__(self):
        ...         info = am.data.get_worker_info()
        ...         wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        ...         return iter(range(wid, self.n, nw))   # worker k takes k, k + nw, ...
        >>> [b.tolist() for b in am.data.DataLoader(Range(5), batch_size=2)]
        [[0, 1], [2, 3], [4]]
    """

    def __iter__(self):
        raise TypeError(f"{type(self).__name__} is an IterableDataset subclass that does not define __iter__")

    def __getitem__(self, index):
        raise TypeError(f"{type(self).__name__} is an IterableDataset: it is iterated, not indexed")

    def __add__(self, other: "IterableDataset") -> "ChainDataset":
        return ChainDataset([self, other])


def _first_dim(t, i: int) -> int:
    shape = getattr(t, "shape", None)
    if shape is None:
        raise TypeError(f"TensorDataset: argument {i} is a {type(t).__name__}; expected a Tensor or NumPy array")
    if len(shape) == 0:
        raise ValueError(f"TensorDataset: argument {i} is 0-d; every tensor needs a first dimension to index")
    return shape[0]


class TensorDataset(Dataset):
    """Samples are slices of tensors along their first dimension (``torch.utils.data.TensorDataset``).

    ``dataset[i]`` is ``(t[i] for t in tensors)`` as a tuple. Tensors and NumPy arrays are
    accepted; they must all have the same size in dimension 0.

    Math: ``dataset[i] = (X_1[i], ..., X_k[i])``.

    Example:
        >>> import avila_ml as am
        >>> ds = am.data.TensorDataset(am.arange(6).reshape(3, 2), am.tensor([0, 1, 0]))
        >>> len(ds), ds[1]
        (3, (tensor([2, 3]), tensor(1)))
    """

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset: expected at least one tensor")
        sizes = [_first_dim(t, i) for i, t in enumerate(tensors)]
        if any(s != sizes[0] for s in sizes):
            raise ValueError("TensorDataset: size mismatch between tensors: every tensor must have the "
                             f"same size in dimension 0, got shapes {[tuple(t.shape) for t in tensors]}")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order (``torch.utils.data.Subset``).

    Math: ``subset[i] = dataset[indices[i]]``.

    Example:
        >>> import avila_ml as am
        >>> s = am.data.Subset(list("abcdef"), [4, 0, 2])
        >>> len(s), s[0], s[[1, 2]]
        (3, 'e', ['a', 'c'])
    """

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, idx):
        if isinstance(idx, list):
            return [self.dataset[self.indices[i]] for i in idx]
        return self.dataset[self.indices[idx]]

    def __getitems__(self, indices: list) -> list:
        inner = [self.indices[i] for i in indices]
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            return getitems(inner)
        return [self.dataset[i] for i in inner]

    def __len__(self) -> int:
        return len(self.indices)


class ConcatDataset(Dataset):
    """Several map-style datasets one after another (``torch.utils.data.ConcatDataset``).

    Math: with cumulative sizes ``c_k = n_0 + ... + n_k``, index ``i`` maps to dataset ``k``
    (the first with ``i < c_k``) at position ``i - c_{k-1}``.

    Example:
        >>> import avila_ml as am
        >>> ds = am.data.ConcatDataset([[1, 2], [3], [4, 5, 6]])
        >>> len(ds), ds[2], ds[-1], ds.cumulative_sizes
        (6, 3, 6, [2, 3, 6])
    """

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: datasets should not be an empty iterable")
        for i, d in enumerate(self.datasets):
            if isinstance(d, IterableDataset):
                raise TypeError(f"ConcatDataset: dataset {i} is an IterableDataset, which has no indices; "
                                "use ChainDataset to join streams")
        self.cumulative_sizes = list(itertools.accumulate(len(d) for d in self.datasets))

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, idx):
        n = len(self)
        if isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
            if not -n <= idx < n:
                raise IndexError(f"ConcatDataset: index {idx} is out of range for a dataset of length {n}")
            idx = int(idx) % n
        else:
            raise TypeError(f"ConcatDataset: index must be an int, got {type(idx).__name__}")
        k = bisect.bisect_right(self.cumulative_sizes, idx)
        start = self.cumulative_sizes[k - 1] if k > 0 else 0
        return self.datasets[k][idx - start]


class ChainDataset(IterableDataset):
    """Several iterable datasets chained into one stream (``torch.utils.data.ChainDataset``).

    Math: the concatenation of the streams.

    Example:
        >>> import avila_ml as am
        >>> list(am.data.ChainDataset([range(2), range(3)]))
        [0, 1, 0, 1, 2]
    """

    def __init__(self, datasets):
        self.datasets = list(datasets)

    def __iter__(self):
        for d in self.datasets:
            yield from d

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)


def random_split(dataset, lengths, generator=None) -> list:
    """Split a dataset into non-overlapping random subsets (``torch.utils.data.random_split``).

    ``lengths`` are either sizes summing to ``len(dataset)`` or fractions summing to 1. For
    fractions (any ``lengths`` whose sum is close to and at most 1, as in PyTorch, so ``[1, 0]``
    means "everything, nothing") PyTorch's rounding rule applies: each split first gets ``floor(n * f)`` samples,
    then the ``r`` left-over samples go one each to splits ``0, 1, ..., r - 1`` (round robin).
    The permutation comes from ``generator`` (a :class:`~avila_ml.data.Generator` or an int
    seed), else from the global generator seeded by :func:`avila_ml.manual_seed`.

    Math: draw a uniform permutation ``p`` of ``0..n-1``; split ``k`` gets
    ``p[c_{k-1} : c_k]`` with ``c_k`` the cumulative lengths.

    Example:
        >>> import avila_ml as am
        >>> a, b, c = am.data.random_split(range(10), [0.5, 0.3, 0.2], generator=0)
        >>> len(a), len(b), len(c), sorted(list(a) + list(b) + list(c)) == list(range(10))
        (5, 3, 2, True)
        >>> [len(s) for s in am.data.random_split(range(11), [0.5, 0.5])]
        [6, 5]
    """
    generator = _as_generator(generator, "random_split")
    lengths = list(lengths)
    n = len(dataset)
    if not lengths:
        raise ValueError("random_split: lengths must not be empty")
    for i, v in enumerate(lengths):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"random_split: length at index {i} is a {type(v).__name__}; expected an int or a float fraction")
    total = sum(lengths)
    if math.isclose(total, 1) and total <= 1:
        sizes = []
        for i, frac in enumerate(lengths):
            if frac < 0 or frac > 1:
                raise ValueError(f"random_split: fraction at index {i} is not between 0 and 1: {frac}")
            sizes.append(int(math.floor(n * frac)))
        for i in range(n - sum(sizes)):
            sizes[i % len(sizes)] += 1
        for i, s in enumerate(sizes):
            if s == 0:
                warnings.warn(f"random_split: length of split at index {i} is 0; that subset is empty",
                              stacklevel=2)
        lengths = sizes
    for i, v in enumerate(lengths):
        if v != int(v) or v < 0:
            raise ValueError(f"random_split: length at index {i} must be a non-negative int, got {v}")
    lengths = [int(v) for v in lengths]
    if sum(lengths) != n:
        raise ValueError(f"random_split: sum of input lengths ({sum(lengths)}) does not equal the length "
                         f"of the input dataset ({n})")
    perm = _source(generator).permutation(n).tolist()
    out, offset = [], 0
    for length in lengths:
        out.append(Subset(dataset, perm[offset: offset + length]))
        offset += length
    return out

