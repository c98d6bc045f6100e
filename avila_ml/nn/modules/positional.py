"""Positional encodings for sequence models (Avila's own layers; PyTorch has none built in):
``SinusoidalPositionalEncoding``, ``LearnedPositionalEmbedding`` and ``RotaryEmbedding`` (RoPE)."""
from __future__ import annotations

import math

import numpy as np

from ...factories import empty
from ...ops.dropout import dropout as _dropout
from ...ops.rotary import rotate_pairs
from ...tensor import Tensor
from .. import init
from .module import Module
from .parameter import Parameter

__all__ = ["SinusoidalPositionalEncoding", "LearnedPositionalEmbedding", "RotaryEmbedding"]


def _positive(op: str, name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    return int(value)


def _check_length(op: str, x, seq_dim: int, offset: int, max_len: int) -> int:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise RuntimeError(f"{op}: expected an input with a sequence and a feature dim, got shape {tuple(x.shape)}")
    length = x.shape[seq_dim]
    if offset < 0 or offset + length > max_len:
        raise RuntimeError(f"{op}: positions {offset}..{offset + length - 1} of input {tuple(x.shape)} exceed "
                           f"max_len={max_len}")
    return length


class SinusoidalPositionalEncoding(Module):
    """Adds the fixed sine/cosine position code of "Attention Is All You Need" to its input
    (Avila's name; the PyTorch tutorials' ``PositionalEncoding``).

    Math: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)); y = x + PE[:L],
    then dropout (in training). The table is a non-persistent buffer ``pe`` (max_len, d_model):
    it is recomputed, not saved in the state_dict. Input (N, L, d) with ``batch_first`` (the
    default), else (L, N, d); ``offset`` shifts the positions (for generation with a cache).

    Example:
        >>> import avila_ml as am
        >>> pe = am.nn.SinusoidalPositionalEncoding(4, max_len=16)
        >>> pe(am.zeros(1, 2, 4))
        tensor([[[0.0000, 1.0000, 0.0000, 1.0000],
                 [0.8415, 0.5403, 0.0100, 0.9999]]])
    """

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, batch_first: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.d_model = _positive("SinusoidalPositionalEncoding", "d_model", d_model)
        self.max_len = _positive("SinusoidalPositionalEncoding", "max_len", max_len)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SinusoidalPositionalEncoding: dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        pos = np.arange(self.max_len, dtype=np.float64)[:, None]
        div = np.exp(np.arange(0, self.d_model, 2, dtype=np.float64) * (-math.log(10000.0) / self.d_model))
        pe = np.zeros((self.max_len, self.d_model))
        pe[:, 0::2] = np.sin(pos * div)
        pe[:, 1::2] = np.cos(pos * div[: self.d_model // 2])
        table = empty(self.max_len, self.d_model, device=device, dtype=dtype)
        table.array[...] = table._backend.from_numpy(pe.astype(table.array.dtype))
        self.register_buffer("pe", table, persistent=False)

    def forward(self, x, offset: int = 0):
        """``x + PE[offset : offset + L]`` (then dropout in training)."""
        seq = 1 if self.batch_first else 0
        if x.ndim == 2:
            seq = 0
        length = _check_length("SinusoidalPositionalEncoding", x, seq, offset, self.max_len)
        if x.shape[-1] != self.d_model:
            raise RuntimeError(f"SinusoidalPositionalEncoding: input {tuple(x.shape)} must have d_model={self.d_model} "
                               f"features in its last dim")
        code = self.pe[offset:offset + length]
        if seq == 0 and x.ndim == 3:
            code = code.unsqueeze(1)
        y = x + code.to(x.dtype)
        return _dropout(y, self.dropout, training=self.training) if self.dropout > 0 else y

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}, dropout={self.dropout}"


class LearnedPositionalEmbedding(Module):
    """Adds a trained vector per position to its input (Avila's name; GPT-2's ``wpe``).

    ``weight`` (max_len, embedding_dim) starts as N(0, 0.02^2), as in GPT-2. Input (N, L, d)
    with ``batch_first`` (default) or (L, N, d); ``offset`` shifts the positions.

    Math: y[n, p] = x[n, p] + W[offset + p].

    Example:
        >>> import avila_ml as am
        >>> pos = am.nn.LearnedPositionalEmbedding(16, 4)
        >>> pos(am.zeros(2, 3, 4)).shape, pos.weight.shape
        ((2, 3, 4), (16, 4))
    """

    def __init__(self, max_len: int, embedding_dim: int, batch_first: bool = True, device=None, dtype=None):
        super().__init__()
        self.max_len = _positive("LearnedPositionalEmbedding", "max_len", max_len)
        self.embedding_dim = _positive("LearnedPositionalEmbedding", "embedding_dim", embedding_dim)
        self.batch_first = bool(batch_first)
        self.weight = Parameter(empty(self.max_len, self.embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight ~ N(0, 0.02^2)."""
        init.normal_(self.weight, 0.0, 0.02)

    def forward(self, x, offset: int = 0):
        """``x + weight[offset : offset + L]``."""
        seq = 0 if (x.ndim == 2 or not self.batch_first) else 1
        length = _check_length("LearnedPositionalEmbedding", x, seq, offset, self.max_len)
        if x.shape[-1] != self.embedding_dim:
            raise RuntimeError(f"LearnedPositionalEmbedding: input {tuple(x.shape)} must have "
                               f"{self.embedding_dim} features in its last dim")
        code = self.weight[offset:offset + length]
        if seq == 0 and x.ndim == 3:
            code = code.unsqueeze(1)
        return x + code

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, embedding_dim={self.embedding_dim}"


class RotaryEmbedding(Module):
    """Rotary position embedding, RoPE (Su et al. 2021), applied to queries and keys (Avila's
    name; ``rotary_emb`` in GPT-NeoX / LLaMA code).

    Pairing convention: "rotate half", as in GPT-NeoX and LLaMA (Hugging Face): feature i is
    paired with feature i + dim/2 (not with its neighbour 2i+1 as in the RoPE paper / GPT-J).
    For position p and pair i, with theta_i = base^(-2i/dim):
    (x_i, x_{i+d/2}) -> (x_i cos(p theta_i) - x_{i+d/2} sin(p theta_i),
                         x_{i+d/2} cos(p theta_i) + x_i sin(p theta_i)).
    The dot product of a rotated query at p and a rotated key at r depends only on p - r.

    The input is (..., L, dim): the sequence is dim -2 (the heads layout (N, H, L, head_dim)).
    ``offset`` shifts the positions. There are no parameters; the cos/sin tables are cached.

    Example:
        >>> import avila_ml as am
        >>> rope = am.nn.RotaryEmbedding(4)
        >>> rope(am.ones(1, 2, 4))
        tensor([[[ 1.0000,  1.0000,  1.0000,  1.0000],
                 [-0.3012,  0.9900,  1.3818,  1.0099]]])
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.dim = _positive("RotaryEmbedding", "dim", dim)
        if self.dim % 2:
            raise ValueError(f"RotaryEmbedding: dim must be even, got {dim}")
        if not base > 0:
            raise ValueError(f"RotaryEmbedding: base must be positive, got {base}")
        self.base = float(base)
        self._cache = {}

    def _tables(self, length: int, offset: int, dtype, backend):
        key = (offset + length, np.dtype(dtype).str, backend.device)
        tab = self._cache.get(key)
        if tab is None:
            half = self.dim // 2
            inv_freq = self.base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.dim)
            angles = np.arange(offset + length, dtype=np.float64)[:, None] * inv_freq[None, :]
            # half tables: feature i and i + dim/2 share their angle
            tab = (backend.from_numpy(np.cos(angles).astype(dtype)), backend.from_numpy(np.sin(angles).astype(dtype)))
            self._cache = {key: tab}  # keep the last one only: lengths change rarely
        cos, sin = tab
        return Tensor._wrap(cos[offset:offset + length]), Tensor._wrap(sin[offset:offset + length])

    def forward(self, x, offset: int = 0):
        """Rotate each (i, i + dim/2) feature pair of ``x`` (..., L, dim) by its position's angle."""
        if not isinstance(x, Tensor):
            raise TypeError(f"RotaryEmbedding: expected a Tensor, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise RuntimeError(f"RotaryEmbedding: input of shape {tuple(x.shape)} must be (..., L, {self.dim})")
        if not x.is_floating_point():
            raise TypeError(f"RotaryEmbedding: input must be floating point, got {x.dtype}")
        if offset < 0:
            raise ValueError(f"RotaryEmbedding: offset must be >= 0, got {offset}")
        cos, sin = self._tables(x.shape[-2], int(offset), x.array.dtype, x._backend)
        # one op: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), i.e. x cos + cat(-x2, x1) sin
        return rotate_pairs(x, cos, sin)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"
