"""Variable-length sequences for recurrent layers (``torch.nn.utils.rnn``).

A :class:`PackedSequence` stores a batch of sequences of different lengths without padding:
sorted by decreasing length, time-major, so that step ``t`` is the block of the first
``batch_sizes[t]`` sequences. Packing and unpacking are index gathers (one differentiable
``x[index]`` each), so gradients flow back to the padded tensors; padding positions get zero
gradient.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ...backends import backend_of
from ...ops.shape import cat, reshape, transpose
from ...tensor import Tensor

__all__ = ["PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence",
           "pack_sequence", "unpad_sequence", "unpack_sequence"]


def _int_tensor(values, like: Tensor) -> Tensor:
    xp = backend_of(like.array).xp
    return Tensor._wrap(xp.asarray(np.asarray(values, dtype=np.int64)))


def _host(t) -> np.ndarray:
    return np.asarray(t.array.get() if hasattr(t.array, "get") else t.array) if isinstance(t, Tensor) else np.asarray(t)


class PackedSequence(namedtuple("PackedSequence", ["data", "batch_sizes", "sorted_indices", "unsorted_indices"])):
    """A batch of variable-length sequences, packed (``torch.nn.utils.rnn.PackedSequence``).

    Fields, as in PyTorch: ``data`` ``(sum of lengths, *)``, time-major rows; ``batch_sizes``
    (CPU int64, one entry per time step: how many sequences are still running);
    ``sorted_indices`` / ``unsorted_indices`` (int64, or None when the batch was already sorted
    by decreasing length): the permutation from the caller's batch order to the packed order
    and back. Build one with :func:`pack_padded_sequence` or :func:`pack_sequence`; recurrent
    layers accept it as input and return one.

    Math: with lengths ``L_0 ≥ L_1 ≥ …``, ``batch_sizes[t] = #{b : L_b > t}`` and row
    ``sum(batch_sizes[:t]) + b`` of ``data`` is step ``t`` of sequence ``b``.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.nn.utils.rnn import pack_sequence
        >>> p = pack_sequence([am.tensor([1.0, 2.0, 3.0]), am.tensor([4.0])])
        >>> p.data, p.batch_sizes
        (tensor([1., 4., 2., 3.]), tensor([2, 1, 1]))
    """

    __slots__ = ()

    def __new__(cls, data, batch_sizes=None, sorted_indices=None, unsorted_indices=None):
        if unsorted_indices is None and sorted_indices is not None:
            inv = np.empty(len(sorted_indices), dtype=np.int64)
            inv[_host(sorted_indices)] = np.arange(len(sorted_indices))
            unsorted_indices = _int_tensor(inv, sorted_indices)
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)

    def to(self, *args, **kwargs) -> "PackedSequence":
        """Move ``data`` (and the permutations) like ``Tensor.to``; ``batch_sizes`` stays on the CPU."""
        data = self.data.to(*args, **kwargs)
        if data is self.data:
            return self
        dev = data.device
        perm = [None if p is None else p.to(dev) for p in (self.sorted_indices, self.unsorted_indices)]
        return type(self)(data, self.batch_sizes, *perm)

    def cpu(self) -> "PackedSequence":
        """A copy on the CPU."""
        return self.to("cpu")

    def cuda(self, device=None) -> "PackedSequence":
        """A copy on a CUDA device."""
        return self.to("cuda" if device is None else device)

    @property
    def is_cuda(self) -> bool:
        """Whether ``data`` lives on a GPU."""
        return self.data.is_cuda

    def _lengths(self) -> np.ndarray:
        """Lengths in packed (sorted) order."""
        bs = _host(self.batch_sizes)
        return (bs[None, :] > np.arange(bs[0])[:, None]).sum(1)


def _check_lengths(lengths, batch: int, max_t: int) -> np.ndarray:
    lengths = _host(lengths).astype(np.int64).reshape(-1)
    if lengths.shape[0] != batch:
        raise ValueError(f"pack_padded_sequence: got {lengths.shape[0]} lengths for a batch of {batch} sequences")
    if batch and lengths.min() <= 0:
        raise RuntimeError("pack_padded_sequence: length of all samples has to be greater than 0, "
                           f"but found an element in 'lengths' that is <= 0: {lengths.tolist()}")
    if batch and lengths.max() > max_t:
        raise RuntimeError(f"pack_padded_sequence: a length {int(lengths.max())} exceeds the "
                           f"{max_t} time steps of the input")
    return lengths


def pack_padded_sequence(input, lengths, batch_first: bool = False, enforce_sorted: bool = True):
    """Pack a padded batch of variable-length sequences (``torch.nn.utils.rnn.pack_padded_sequence``).

    ``input`` is ``(T, B, *)`` (``(B, T, *)`` if ``batch_first``), ``lengths`` the ``B``
    sequence lengths (list or CPU tensor). With ``enforce_sorted=True`` the lengths must be
    non-increasing; otherwise the batch is sorted here and the permutation kept in the result.

    Math: ``data = concat_t [x[t, s_0], …, x[t, s_{batch_sizes[t]-1}]]`` with ``s`` the batch
    order by decreasing length; ``∂data/∂x`` is the same gather, so gradients reach ``x``.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.nn.utils.rnn import pack_padded_sequence
        >>> x = am.tensor([[1.0, 5.0], [2.0, 0.0], [3.0, 0.0]])   # (T=3, B=2), lengths 3 and 1
        >>> pack_padded_sequence(x, [3, 1]).data
        tensor([1., 5., 2., 3.])
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"pack_padded_sequence: expected a Tensor, got {type(input).__name__}")
    if input.ndim < 2:
        raise ValueError(f"pack_padded_sequence: input must have at least 2 dims (time, batch), got shape {tuple(input.shape)}")
    t_dim, b_dim = (1, 0) if batch_first else (0, 1)
    T, B = input.shape[t_dim], input.shape[b_dim]
    lengths = _check_lengths(lengths, B, T)
    if enforce_sorted:
        if np.any(np.diff(lengths) > 0):
            raise RuntimeError("`lengths` array must be sorted in decreasing order when `enforce_sorted` is True. "
                               "You can pass `enforce_sorted=False` to pack_padded_sequence and/or pack_sequence "
                               f"to sidestep this requirement (got lengths {lengths.tolist()}).")
        order, sorted_indices = np.arange(B), None
    else:
        order = np.argsort(-lengths, kind="stable")
        sorted_indices = _int_tensor(order, input)
    sorted_len = lengths[order]
    max_len = int(sorted_len[0]) if B else 0
    batch_sizes = (sorted_len[None, :] > np.arange(max_len)[:, None]).sum(1)
    rows = []
    for t in range(max_len):
        b = order[:batch_sizes[t]]
        rows.append(b * T + t if batch_first else t * B + b)
    index = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    flat = reshape(input, (T * B,) + tuple(input.shape[2:]))
    data = flat[_int_tensor(index, input)]
    return PackedSequence(data, Tensor._wrap(batch_sizes.astype(np.int64)), sorted_indices, None)


def pad_packed_sequence(sequence, batch_first: bool = False, padding_value: float = 0.0, total_length=None):
    """Undo :func:`pack_padded_sequence` (``torch.nn.utils.rnn.pad_packed_sequence``).

    Returns ``(padded, lengths)``: ``padded`` is ``(T, B, *)`` (``(B, T, *)`` if
    ``batch_first``) in the caller's original batch order with ``padding_value`` after each
    sequence's end, ``T`` the longest length (or ``total_length``); ``lengths`` an int64 CPU
    tensor.

    Math: the inverse gather of packing; padding positions carry no gradient.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.nn.utils.rnn import pack_sequence, pad_packed_sequence
        >>> p = pack_sequence([am.tensor([1.0]), am.tensor([2.0, 3.0])], enforce_sorted=False)
        >>> pad_packed_sequence(p, batch_first=True, padding_value=-1.0)
        (tensor([[ 1., -1.],
                [ 2.,  3.]]), tensor([1, 2]))
    """
    if not isinstance(sequence, PackedSequence):
        raise TypeError(f"pad_packed_sequence: expected a PackedSequence, got {type(sequence).__name__}")
    data = sequence.data
    bs = _host(sequence.batch_sizes)
    n_steps, B = len(bs), int(bs[0])
    T = n_steps
    if total_length is not None:
        if total_length < n_steps:
            raise ValueError("pad_packed_sequence: expected total_length to be at least the length of the "
                             f"longest sequence ({n_steps}), but got total_length={total_length}")
        T = int(total_length)
    sorted_len = sequence._lengths()
    order = _host(sequence.sorted_indices) if sequence.sorted_indices is not None else np.arange(B)
    offsets = np.concatenate([[0], np.cumsum(bs)[:-1]])
    n_rows = data.shape[0]
    # (time, original batch position) -> packed row, or the padding row n_rows
    index = np.full((T, B), n_rows, dtype=np.int64)
    for j in range(B):
        steps = np.arange(sorted_len[j])
        index[steps, order[j]] = offsets[steps] + j
    if batch_first:
        index = index.T
    padded = cat([data, _full_like_row(data, padding_value)], 0)[_int_tensor(index.reshape(-1), data)]
    padded = reshape(padded, index.shape + tuple(data.shape[1:]))
    lengths = np.empty(B, dtype=np.int64)
    lengths[order] = sorted_len
    return padded, Tensor._wrap(lengths)


def _full_like_row(data, value):
    xp = backend_of(data.array).xp
    return Tensor._wrap(xp.full((1,) + tuple(data.shape[1:]), value, dtype=data.array.dtype))


def pad_sequence(sequences, batch_first: bool = False, padding_value: float = 0.0, padding_side: str = "right"):
    """Stack sequences of different lengths into one padded tensor (``torch.nn.utils.rnn.pad_sequence``).

    ``sequences`` are ``(L_i, *)`` tensors with the same trailing shape; the result is
    ``(max L, B, *)`` (``(B, max L, *)`` if ``batch_first``), filled with ``padding_value``
    after (``padding_side="right"``) or before (``"left"``) each sequence.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.nn.utils.rnn import pad_sequence
        >>> pad_sequence([am.tensor([1.0, 2.0]), am.tensor([3.0])], batch_first=True)
        tensor([[1., 2.],
                [3., 0.]])
    """
    seqs = list(sequences)
    if not seqs:
        raise RuntimeError("pad_sequence: received an empty list of sequences")
    if padding_side not in ("right", "left"):
        raise ValueError(f"pad_sequence: padding_side must be 'left' or 'right', got {padding_side!r}")
    for i, s in enumerate(seqs):
        if not isinstance(s, Tensor) or s.ndim == 0:
            raise TypeError(f"pad_sequence: sequence {i} must be a Tensor with at least 1 dim")
        if s.shape[1:] != seqs[0].shape[1:]:
            raise RuntimeError(f"pad_sequence: sequence {i} has shape {tuple(s.shape)} but sequence 0 has "
                               f"{tuple(seqs[0].shape)}; the trailing dims must agree")
    lens = [s.shape[0] for s in seqs]
    T, B = max(lens), len(seqs)
    data = cat(seqs + [_full_like_row(seqs[0], padding_value)], 0)
    n_rows = sum(lens)
    index = np.full((T, B), n_rows, dtype=np.int64)
    start = 0
    for b, n in enumerate(lens):
        t0 = 0 if padding_side == "right" else T - n
        index[t0:t0 + n, b] = np.arange(start, start + n)
        start += n
    if batch_first:
        index = index.T
    out = data[_int_tensor(index.reshape(-1), data)]
    return reshape(out, index.shape + tuple(seqs[0].shape[1:]))


def pack_sequence(sequences, enforce_sorted: bool = True):
    """Pack a list of variable-length sequences (``torch.nn.utils.rnn.pack_sequence``).

    Equivalent to ``pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=...)``.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.nn.utils.rnn import pack_sequence
        >>> pack_sequence([am.tensor([1.0]), am.tensor([2.0, 3.0])], enforce_sorted=False).data
        tensor([2., 1., 3.])
    """
    seqs = list(sequences)
    return pack_padded_sequence(pad_sequence(seqs), [s.shape[0] for s in seqs], enforce_sorted=enforce_sorted)


def unpad_sequence(padded_sequences, lengths, batch_first: bool = False):
    """Split a padded batch back into a list of sequences (``torch.nn.utils.rnn.unpad_sequence``).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.nn.utils.rnn import unpad_sequence
        >>> unpad_sequence(am.tensor([[1.0, 2.0], [3.0, 0.0]]), [2, 1], batch_first=True)
        [tensor([1., 2.]), tensor([3.])]
    """
    x = padded_sequences if batch_first else transpose(padded_sequences, 0, 1)
    return [x[b, :int(n)] for b, n in enumerate(_host(lengths).reshape(-1))]


def unpack_sequence(packed_sequences):
    """Split a :class:`PackedSequence` into its list of sequences (``torch.nn.utils.rnn.unpack_sequence``).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.nn.utils.rnn import pack_sequence, unpack_sequence
        >>> unpack_sequence(pack_sequence([am.tensor([1.0]), am.tensor([2.0, 3.0])], enforce_sorted=False))
        [tensor([1.]), tensor([2., 3.])]
    """
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)

