"""Samplers: the order in which a :class:`~avila_ml.data.DataLoader` visits dataset indices.

A sampler is an iterable of indices (``torch.utils.data.Sampler``); a batch sampler is an
iterable of lists of indices. Samplers always run in the main process, so the order of the
batches depends only on the sampler and its random generator, never on ``num_workers``.

Randomness comes from a :class:`Generator` passed as ``generator=`` (an ``int`` is accepted
too and turned into ``Generator().manual_seed(int)`` once, at construction, so it advances
from epoch to epoch like a seeded ``torch.Generator``). Without a generator, a sampler draws
from the global CPU generator that :func:`avila_ml.manual_seed` seeds.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from ..backends import get_backend
from ..backends.numpy_backend import DEFAULT_SEED, PCG64Draws

__all__ = [
    "Generator", "Sampler", "SequentialSampler", "RandomSampler", "SubsetRandomSampler",
    "WeightedRandomSampler", "BatchSampler",
]

_U64 = 1 << 64


class Generator(PCG64Draws):
    """A private random-number generator for samplers and data splits (``torch.Generator``).

    It holds a NumPy ``PCG64`` bit generator, so two generators given the same seed give the
    same streams, and drawing from one never disturbs the global generator. Every sampler,
    :func:`~avila_ml.data.random_split` and :class:`~avila_ml.data.DataLoader` takes one as
    ``generator=``; the tensor factories accept it too (``am.randperm(5, generator=g)``).

    Math: the state is PCG64's 128-bit LCG state and increment, both derived from the seed
    by NumPy's ``SeedSequence``; the default seed is PyTorch's, 67280421310721.

    Example:
        >>> import avila_ml as am
        >>> g = am.data.Generator().manual_seed(42)
        >>> a = am.randperm(5, generator=g).tolist()
        >>> _ = g.manual_seed(42)
        >>> a == am.randperm(5, generator=g).tolist()
        True
    """

    def __init__(self, seed: int | None = None):
        self.manual_seed(DEFAULT_SEED if seed is None else seed)

    def manual_seed(self, seed: int) -> "Generator":
        """Reset the generator to the stream of ``seed`` and return it (``Generator.manual_seed``).

        Negative seeds are wrapped into ``[0, 2**64)`` like PyTorch does.
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"Generator.manual_seed: expected an int seed, got {type(seed).__name__}")
        seed = int(seed)
        if not -(1 << 63) <= seed < _U64:
            raise ValueError(f"Generator.manual_seed: seed {seed} is outside [-2**63, 2**64)")
        self._seed = seed % _U64
        self.rng = np.random.Generator(np.random.PCG64(self._seed))
        return self

    def seed(self) -> int:
        """Re-seed from the operating system's entropy and return the new seed (``Generator.seed``)."""
        s = int.from_bytes(os.urandom(8), "little") >> 1
        self.manual_seed(s)
        return s

    def initial_seed(self) -> int:
        """The seed the generator was last seeded with (``Generator.initial_seed``)."""
        return self._seed

    def get_state(self) -> dict:
        """A copy of the bit generator state, for :meth:`set_state` (``Generator.get_state``)."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> "Generator":
        """Restore a state returned by :meth:`get_state` (``Generator.set_state``)."""
        self.rng.bit_generator.state = state
        return self

    def __repr__(self) -> str:
        return f"Generator(seed={self._seed})"


def _as_generator(generator, op: str):
    """``None`` stays ``None`` (use the global generator); an int becomes a seeded Generator."""
    if generator is None or isinstance(generator, Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return Generator().manual_seed(int(generator))
    raise TypeError(f"{op}: generator must be an avila_ml.data.Generator, an int seed or None, "
                    f"got {type(generator).__name__}")


def _source(generator):
    """The object random draws come from: the generator, or the global CPU generator."""
    return generator if generator is not None else get_backend("cpu")


def _draw_seed(generator) -> int:
    """A fresh 63-bit seed from ``generator`` or the global CPU generator (one draw)."""
    return int(_source(generator).rng.integers(0, 1 << 63, dtype=np.int64))


def _check_positive_int(value, name: str, op: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{op}: {name} should be a positive integer value, but got {name}={value!r}")
    return int(value)


class Sampler:
    """Base class of samplers: an iterable of dataset indices (``torch.utils.data.Sampler``).

    Subclasses define ``__iter__`` (yielding indices, or lists of indices for a batch
    sampler) and, when they can, ``__len__``.

    Math: a sampler is a sequence ``i_1, i_2, ...`` of indices into the dataset.

    Example:
        >>> import avila_ml as am
        >>> class EvenSampler(am.data.Sampler):
        ...     def __init__(self, n): self.n = n
        ...     def __iter__(self): return iter(range(0, self.n, 2))
        ...     def __len__(self): return (self.n + 1) // 2
        >>> list(EvenSampler(7))
        [0, 2, 4, 6]
    """

    def __init__(self, data_source=None):
        self.data_source = data_source

    def __iter__(self):
        raise TypeError(f"{type(self).__name__} is a Sampler subclass that does not define __iter__")


class SequentialSampler(Sampler):
    """Indices ``0, 1, ..., len(data_source) - 1`` in order (``torch.utils.data.SequentialSampler``).

    Example:
        >>> import avila_ml as am
        >>> list(am.data.SequentialSampler(range(4)))
        [0, 1, 2, 3]
    """

    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler(Sampler):
    """Indices in random order (``torch.utils.data.RandomSampler``).

    Without replacement each pass is a uniform random permutation of ``0..n-1``; asking for
    ``num_samples > n`` chains several permutations. With replacement the indices are i.i.d.
    uniform on ``0..n-1``. Without a ``generator``, each ``iter()`` seeds a private generator
    with one draw from the global generator, so :func:`avila_ml.manual_seed` fixes the order of
    every epoch while the epochs still differ from one another.

    Math: ``P(i_k = j) = 1/n`` for every position ``k`` and index ``j``.

    Example:
        >>> import avila_ml as am
        >>> s = am.data.RandomSampler(range(5), generator=0)
        >>> sorted(s), len(s)
        ([0, 1, 2, 3, 4], 5)
        >>> len(list(am.data.RandomSampler(range(5), replacement=True, num_samples=12)))
        12
    """

    def __init__(self, data_source, replacement: bool = False, num_samples: int | None = None,
                 generator=None):
        if not isinstance(replacement, bool):
            raise TypeError(f"RandomSampler: replacement should be a boolean value, but got replacement={replacement!r}")
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = num_samples
        self.generator = _as_generator(generator, "RandomSampler")
        if num_samples is not None:
            _check_positive_int(num_samples, "num_samples", "RandomSampler")

    @property
    def num_samples(self) -> int:
        """How many indices one pass yields (``len(data_source)`` unless given)."""
        return len(self.data_source) if self._num_samples is None else int(self._num_samples)

    def __iter__(self):
        n = len(self.data_source)
        if n == 0:
            raise ValueError("RandomSampler: cannot sample from an empty data source (len 0)")
        gen = self.generator if self.generator is not None else Generator(_draw_seed(None))
        count = self.num_samples
        if self.replacement:
            # blocks of 32 keep memory flat for huge num_samples (PyTorch draws the same way)
            for start in range(0, count, 32):
                yield from gen.rng.integers(0, n, size=min(32, count - start)).tolist()
        else:
            for _ in range(count // n):
                yield from gen.rng.permutation(n).tolist()
            if count % n:
                yield from gen.rng.permutation(n)[: count % n].tolist()

    def __len__(self) -> int:
        return self.num_samples


class SubsetRandomSampler(Sampler):
    """The given indices, in a random order (``torch.utils.data.SubsetRandomSampler``).

    Without a ``generator`` the permutation is drawn from the global generator.

    Math: a uniform random permutation of ``indices``.

    Example:
        >>> import avila_ml as am
        >>> sorted(am.data.SubsetRandomSampler([10, 20, 30], generator=1))
        [10, 20, 30]
    """

    def __init__(self, indices: Sequence[int], generator=None):
        self.indices = indices
        self.generator = _as_generator(generator, "SubsetRandomSampler")

    def __iter__(self):
        for i in _source(self.generator).permutation(len(self.indices)).tolist():
            yield self.indices[i]

    def __len__(self) -> int:
        return len(self.indices)


class WeightedRandomSampler(Sampler):
    """Indices ``0..len(weights)-1`` drawn with probabilities proportional to ``weights``
    (``torch.utils.data.WeightedRandomSampler``).

    With ``replacement=False`` an index is drawn at most once per pass (successive draws
    renormalise the remaining weights), so ``num_samples`` may not exceed the number of
    positive weights. Without a ``generator`` the draws come from the global generator.

    Math: with replacement, ``P(i_k = j) = w_j / sum(w)`` independently for every ``k``.

    Example:
        >>> import avila_ml as am
        >>> s = am.data.WeightedRandomSampler([0.0, 1.0, 0.0], num_samples=4, generator=0)
        >>> list(s)
        [1, 1, 1, 1]
    """

    def __init__(self, weights, num_samples: int, replacement: bool = True, generator=None):
        _check_positive_int(num_samples, "num_samples", "WeightedRandomSampler")
        if not isinstance(replacement, bool):
            raise ValueError(f"WeightedRandomSampler: replacement should be a boolean value, but got replacement={replacement!r}")
        w = np.asarray(weights.tolist() if hasattr(weights, "tolist") else weights, dtype=np.float64)
        if w.ndim != 1:
            raise ValueError(f"WeightedRandomSampler: weights should be a 1d sequence but given weights have shape {tuple(w.shape)}")
        if w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("WeightedRandomSampler: weights must be non-negative and finite with a positive sum, "
                             f"got {w.size} weights with min {w.min() if w.size else None} and sum {w.sum()}")
        if not replacement and num_samples > int((w > 0).sum()):
            raise ValueError(f"WeightedRandomSampler: cannot draw num_samples={num_samples} without replacement "
                             f"from {int((w > 0).sum())} indices of positive weight")
        self.weights = w
        self.num_samples = int(num_samples)
        self.replacement = replacement
        self.generator = _as_generator(generator, "WeightedRandomSampler")

    def __iter__(self):
        rng = _source(self.generator).rng
        p = self.weights / self.weights.sum()
        yield from rng.choice(len(p), size=self.num_samples, replace=self.replacement, p=p).tolist()

    def __len__(self) -> int:
        return self.num_samples


class BatchSampler(Sampler):
    """Group the indices of ``sampler`` into lists of ``batch_size`` (``torch.utils.data.BatchSampler``).

    The last, shorter batch is kept unless ``drop_last``.

    Math: ``len = floor(n / b)`` with ``drop_last``, else ``ceil(n / b)``.

    Example:
        >>> import avila_ml as am
        >>> list(am.data.BatchSampler(am.data.SequentialSampler(range(5)), 2, drop_last=False))
        [[0, 1], [2, 3], [4]]
        >>> list(am.data.BatchSampler(range(5), 2, drop_last=True))
        [[0, 1], [2, 3]]
    """

    def __init__(self, sampler: Iterable, batch_size: int, drop_last: bool):
        _check_positive_int(batch_size, "batch_size", "BatchSampler")
        if not isinstance(drop_last, bool):
            raise ValueError(f"BatchSampler: drop_last should be a boolean value, but got drop_last={drop_last!r}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = drop_last

    def __iter__(self):
        batch = []
        for idx in self.sampler:
            batch.append(idx)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class _InfiniteConstantSampler(Sampler):
    """``None`` forever: the "index" stream of an IterableDataset (PyTorch's private twin)."""

    def __init__(self):
        self.data_source = None

    def __iter__(self):
        while True:
            yield None
