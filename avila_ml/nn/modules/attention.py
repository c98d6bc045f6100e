"""Attention layers: ``MultiheadAttention`` (PyTorch's parameters and semantics) and Avila's
``SelfAttention`` (the same projections, a one-input call, optional rotary positions).

Both project, split heads and call :func:`avila_ml.nn.functional.scaled_dot_product_attention`
(the memory-efficient blocked path) unless the attention weights are asked for, in which case
the probabilities are formed explicitly (they are the result the caller wants).
"""
from __future__ import annotations

import math

import numpy as np

from ...factories import empty, zeros
from ...ops.attention import _math_probs, scaled_dot_product_attention
from ...ops.dropout import dropout as _dropout
from ...ops.linalg import linear, matmul
from ...ops.elementwise import where
from ...ops.shape import cat, pad, reshape, transpose, unsqueeze, squeeze
from ...tensor import Tensor
from .. import init
from .linear import Linear
from .module import Module
from .parameter import Parameter

__all__ = ["MultiheadAttention", "SelfAttention"]


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(N, L, H * d) -> (N, H, L, d)."""
    n, length, e = x.shape
    return transpose(reshape(x, (n, length, heads, e // heads)), 1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(N, H, L, d) -> (N, L, H * d)."""
    n, h, length, d = x.shape
    return reshape(transpose(x, 1, 2), (n, length, h * d))


def _allowed_or_additive(mask: Tensor, dtype, op: str, name: str) -> Tensor:
    """A PyTorch-module mask (bool: True = *masked out*; float: added) in SDPA's convention
    (bool: True = *takes part*; float: added)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(mask).__name__}")
    if mask.array.dtype == np.bool_:
        return Tensor._wrap(~mask.array)
    if not mask.is_floating_point():
        raise TypeError(f"{op}: {name} must be bool or floating point, got {mask.dtype}")
    return mask if mask.dtype == dtype else mask.to(dtype)


def _combine(a, b):
    """Both masks must hold: AND for two bool masks, otherwise the sum of additive forms."""
    if a is None or b is None:
        return a if b is None else b
    if a.array.dtype == np.bool_ and b.array.dtype == np.bool_:
        return Tensor._wrap(a.array & b.array)
    a, b = (where(m, 0.0, -math.inf).to(o.dtype) if m.array.dtype == np.bool_ else m
            for m, o in ((a, b), (b, a)))
    return a + b


def _pad_mask(mask, n: int = 1):
    """Append ``n`` key columns that every query may attend to."""
    if mask is None:
        return None
    if mask.array.dtype == np.bool_:
        xp = mask._backend.xp
        return Tensor._wrap(xp.concatenate([mask.array, xp.ones(mask.shape[:-1] + (n,), dtype=bool)], axis=-1))
    return pad(mask, (0, n))


class MultiheadAttention(Module):
    """Multi-head attention (``torch.nn.MultiheadAttention``), parameters named as in PyTorch.

    ``in_proj_weight`` (3E, E) and ``in_proj_bias`` (3E) hold the query, key and value
    projections stacked; when ``kdim`` or ``vdim`` differ from ``embed_dim`` they are
    ``q_proj_weight`` (E, E), ``k_proj_weight`` (E, kdim), ``v_proj_weight`` (E, vdim) instead.
    ``out_proj`` is a :class:`Linear` (E, E). ``add_bias_kv`` appends learned ``bias_k`` /
    ``bias_v`` (1, 1, E) to the keys and values; ``add_zero_attn`` appends a zero key/value.
    So a PyTorch ``state_dict`` loads directly.

    Math: head_i = softmax(Q_i K_i^T / sqrt(d) + M) V_i with Q_i = query W_q,i + b_q,i (and so
    for K, V), d = E / num_heads; output = concat(head_1..head_H) W_o^T + b_o. Dropout (in
    training) acts on the attention probabilities.

    Call: ``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` with (L, N, E) inputs, or
    (N, L, E) when ``batch_first``, or unbatched (L, E). Masks follow PyTorch's module
    convention: a bool ``key_padding_mask`` (N, S) or ``attn_mask`` (L, S) / (N * H, L, S)
    is True where attention is *not* allowed; float masks are added to the scores. Returns
    ``(output, weights)``: weights (N, L, S) averaged over heads, (N, H, L, S) with
    ``average_attn_weights=False``, or None when ``need_weights=False`` — then the memory-
    efficient scaled-dot-product kernel runs (ask for no weights in training).
    ``is_causal=True`` makes the attention causal (PyTorch treats it as a hint that
    ``attn_mask`` is causal and requires the mask; here the mask may be left out). A query
    with no key to attend to gets a zero output (PyTorch gives NaN).

    Example:
        >>> import avila_ml as am
        >>> mha = am.nn.MultiheadAttention(8, 2, batch_first=True)
        >>> x = am.randn(3, 5, 8)
        >>> out, w = mha(x, x, x)
        >>> out.shape, w.shape
        ((3, 5, 8), (3, 5, 5))
        >>> sorted(mha.state_dict())
        ['in_proj_bias', 'in_proj_weight', 'out_proj.bias', 'out_proj.weight']
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim=None, vdim=None,
                 batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MultiheadAttention: {name} must be a positive int, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1), got {dropout}")
        fkw = {"device": device, "dtype": dtype}
        self.embed_dim = int(embed_dim)
        self.kdim = int(kdim) if kdim is not None else self.embed_dim
        self.vdim = int(vdim) if vdim is not None else self.embed_dim
        self._qkv_same_embed_dim = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.head_dim = self.embed_dim // self.num_heads
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(empty(3 * E, E, **fkw))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = Parameter(empty(E, E, **fkw))
            self.k_proj_weight = Parameter(empty(E, self.kdim, **fkw))
            self.v_proj_weight = Parameter(empty(E, self.vdim, **fkw))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(empty(3 * E, **fkw))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(E, E, bias=bias, **fkw)
        if add_bias_kv:
            self.bias_k = Parameter(empty(1, 1, E, **fkw))
            self.bias_v = Parameter(empty(1, 1, E, **fkw))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = bool(add_zero_attn)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """PyTorch's initialisation: Xavier-uniform projections, zero biases, Xavier-normal bias_k/v."""
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.constant_(self.in_proj_bias, 0.0)
            init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
            init.xavier_normal_(self.bias_v)

    # -- pieces shared with SelfAttention -------------------------------------------------------
    def _project(self, query, key, value):
        """The three input projections, (N, L, E_in) -> (N, L, E)."""
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E:2 * E], b[2 * E:])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            if query is key and key is value:  # self-attention: one matmul for the three
                return tuple(linear(query, w, b).chunk(3, dim=-1))
            return linear(query, w[:E], bq), linear(key, w[E:2 * E], bk), linear(value, w[2 * E:], bv)
        return (linear(query, self.q_proj_weight, bq), linear(key, self.k_proj_weight, bk),
                linear(value, self.v_proj_weight, bv))

    def _check_inputs(self, query, key, value):
        op = type(self).__name__
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise RuntimeError(f"{op}: query, key and value must all be 3-d (batched) or 2-d (unbatched), got "
                               f"shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        for name, t, want in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[-1] != want:
                raise RuntimeError(f"{op}: {name} of shape {tuple(t.shape)} must have {want} features in its last dim")
        seq = 0 if (query.ndim == 2 or not self.batch_first) else 1
        if key.shape[seq] != value.shape[seq]:
            raise RuntimeError(f"{op}: key {tuple(key.shape)} and value {tuple(value.shape)} must have the same "
                               f"sequence length")
        if query.ndim == 3:
            b = 1 - seq
            if not (query.shape[b] == key.shape[b] == value.shape[b]):
                raise RuntimeError(f"{op}: query, key and value must have the same batch size, got shapes "
                                   f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")

    def _masks(self, attn_mask, key_padding_mask, N, L, S, dtype, batched):
        """attn_mask and key_padding_mask merged into one SDPA mask broadcasting to (N, H, L, S)."""
        op = type(self).__name__
        H = self.num_heads
        mask = None
        if attn_mask is not None:
            am_ = _allowed_or_additive(attn_mask, dtype, op, "attn_mask")
            if am_.ndim == 2:
                if tuple(am_.shape) != (L, S):
                    raise RuntimeError(f"{op}: 2-d attn_mask must have shape (L, S) = {(L, S)}, got {tuple(am_.shape)}")
            elif am_.ndim == 3:
                want = (N * H, L, S) if batched else (H, L, S)
                if tuple(am_.shape) != want:
                    raise RuntimeError(f"{op}: 3-d attn_mask must have shape {'(N * num_heads, L, S)' if batched else '(num_heads, L, S)'} "
                                       f"= {want}, got {tuple(am_.shape)}")
                am_ = reshape(am_, (N, H, L, S))
            else:
                raise RuntimeError(f"{op}: attn_mask must be 2-d or 3-d, got shape {tuple(am_.shape)}")
            mask = am_
        if key_padding_mask is not None:
            kp = _allowed_or_additive(key_padding_mask, dtype, op, "key_padding_mask")
            want = (N, S) if batched else (S,)
            if tuple(kp.shape) != want:
                raise RuntimeError(f"{op}: key_padding_mask must have shape {'(N, S)' if batched else '(S,)'} = {want}, "
                                   f"got {tuple(kp.shape)}")
            mask = _combine(mask, reshape(kp, (N, 1, 1, S)))
        return mask

    def _attend(self, q, k, v, mask, need_weights, average, is_causal, rotary=None):
        """Heads from projected (N, L, E) inputs, attention, heads merged; returns (out, weights)."""
        H = self.num_heads
        N = q.shape[0]
        if self.bias_k is not None:
            k = cat([k, self.bias_k.expand(N, 1, self.embed_dim)], dim=1)
            v = cat([v, self.bias_v.expand(N, 1, self.embed_dim)], dim=1)
            mask = _pad_mask(mask)
        q, k, v = _split_heads(q, H), _split_heads(k, H), _split_heads(v, H)
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        if self.add_zero_attn:
            z = zeros(N, H, 1, self.head_dim, dtype=q.dtype, device=q.device)
            k, v = cat([k, z], dim=2), cat([v, z], dim=2)
            mask = _pad_mask(mask)
        if mask is not None and mask.ndim == 2:
            mask = reshape(mask, (1, 1) + tuple(mask.shape))
        p = self.dropout if self.training else 0.0
        if not need_weights:
            out = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
            return _merge_heads(out), None
        weights = _math_probs(q, k, mask, is_causal, 1.0 / math.sqrt(self.head_dim))
        if p > 0.0:
            weights = _dropout(weights, p, training=True)
        out = matmul(weights, v)
        if average:
            weights = weights.mean(dim=1)
        return _merge_heads(out), weights

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        """Attend from ``query`` to ``key``/``value``; returns ``(output, weights or None)``."""
        self._check_inputs(query, key, value)
        batched = query.ndim == 3
        if not batched:
            query, key, value = unsqueeze(query, 0), unsqueeze(key, 0), unsqueeze(value, 0)
        elif not self.batch_first:
            query, key, value = transpose(query, 0, 1), transpose(key, 0, 1), transpose(value, 0, 1)
        N, L, S = query.shape[0], query.shape[1], key.shape[1]
        mask = self._masks(attn_mask, key_padding_mask, N, L, S, query.dtype, batched)
        q, k, v = self._project(query, key, value)
        out, weights = self._attend(q, k, v, mask, need_weights, average_attn_weights, bool(is_causal))
        out = self.out_proj(out)
        if not batched:
            out = squeeze(out, 0)
            weights = None if weights is None else squeeze(weights, 0)
        elif not self.batch_first:
            out = transpose(out, 0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"batch_first={self.batch_first}")


class SelfAttention(MultiheadAttention):
    """Multi-head self-attention of one sequence: ``SelfAttention(embed_dim)(x)`` (Avila's own;
    PyTorch writes ``MultiheadAttention(...)(x, x, x, need_weights=False)[0]``).

    A :class:`MultiheadAttention` (same parameter names, so the state_dicts are interchangeable)
    whose call takes one input and returns only the output, computed with the memory-efficient
    scaled-dot-product kernel. ``batch_first`` defaults to True here. ``is_causal=True`` at
    construction makes every call causal (a decoder / language model); ``rotary`` (a
    :class:`RotaryEmbedding` of ``head_dim`` features) rotates queries and keys by position.

    Math: y = MultiheadAttention(x, x, x) with RoPE applied to each head's q and k if given.

    Example:
        >>> import avila_ml as am
        >>> sa = am.nn.SelfAttention(8, num_heads=2, is_causal=True)
        >>> sa(am.randn(3, 5, 8)).shape
        (3, 5, 8)
    """

    def __init__(self, embed_dim: int, num_heads: int = 1, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = True, is_causal: bool = False, rotary=None, device=None, dtype=None):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, batch_first=batch_first,
                         device=device, dtype=dtype)
        self.is_causal = bool(is_causal)
        if rotary is not None and getattr(rotary, "dim", self.head_dim) != self.head_dim:
            raise ValueError(f"SelfAttention: rotary embedding has dim {rotary.dim} but head_dim is {self.head_dim}")
        self.rotary = rotary

    def forward(self, x, key_padding_mask=None, attn_mask=None, is_causal=None):
        """Self-attention of ``x`` (N, L, E) (or (L, N, E) without ``batch_first``, or (L, E))."""
        self._check_inputs(x, x, x)
        batched = x.ndim == 3
        if not batched:
            x = unsqueeze(x, 0)
        elif not self.batch_first:
            x = transpose(x, 0, 1)
        N, L = x.shape[0], x.shape[1]
        mask = self._masks(attn_mask, key_padding_mask, N, L, L, x.dtype, batched)
        q, k, v = self._project(x, x, x)
        causal = self.is_causal if is_causal is None else bool(is_causal)
        out, _ = self._attend(q, k, v, mask, False, False, causal, rotary=self.rotary)
        out = self.out_proj(out)
        if not batched:
            return squeeze(out, 0)
        return out if self.batch_first else transpose(out, 0, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", is_causal={self.is_causal}"
