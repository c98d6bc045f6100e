"""Transformer blocks with PyTorch's submodule names: ``TransformerEncoderLayer``,
``TransformerDecoderLayer``, and the stacks ``TransformerEncoder`` / ``TransformerDecoder``."""
from __future__ import annotations

import copy

from ...ops.activation import gelu, relu
from .container import ModuleList
from .dropout import Dropout
from .linear import Linear
from .attention import MultiheadAttention
from .module import Module
from .normalization import LayerNorm

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder",
           "Transformer"]


def _activation(activation, op: str):
    if isinstance(activation, str):
        if activation == "relu":
            return relu
        if activation == "gelu":
            return gelu
        raise RuntimeError(f"{op}: activation should be 'relu', 'gelu' or a callable, not {activation!r}")
    if not callable(activation):
        raise TypeError(f"{op}: activation should be 'relu', 'gelu' or a callable, got {type(activation).__name__}")
    return activation


def _clones(module: Module, n: int, op: str) -> ModuleList:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{op}: num_layers must be a positive int, got {n!r}")
    return ModuleList([copy.deepcopy(module) for _ in range(n)])


class TransformerEncoderLayer(Module):
    """Self-attention then a feed-forward network, each with a residual and a LayerNorm
    (``torch.nn.TransformerEncoderLayer``).

    Submodules as in PyTorch: ``self_attn`` (:class:`MultiheadAttention`), ``linear1`` (d_model
    -> dim_feedforward), ``dropout``, ``linear2``, ``norm1``, ``norm2``, ``dropout1``,
    ``dropout2``; a PyTorch ``state_dict`` loads directly.

    Math (post-norm, default): x = LN1(x + SA(x)); x = LN2(x + FF(x)), with
    FF(x) = W2 dropout(act(W1 x + b1)) + b2. ``norm_first=True`` (pre-norm):
    x = x + SA(LN1(x)); x = x + FF(LN2(x)). ``activation`` is ``"relu"``, ``"gelu"`` or a callable.

    Example:
        >>> import avila_ml as am
        >>> layer = am.nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        >>> layer(am.randn(3, 5, 8)).shape
        (3, 5, 8)
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device=None, dtype=None):
        super().__init__()
        fkw = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **fkw)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **fkw)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **fkw)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fkw)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fkw)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation(activation, "TransformerEncoderLayer")

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False):
        """Encode ``src``; the masks follow :class:`MultiheadAttention`'s conventions."""
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=bool(is_causal))[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerDecoderLayer(Module):
    """Self-attention, attention over an encoder's output (memory), then a feed-forward network,
    each with a residual and a LayerNorm (``torch.nn.TransformerDecoderLayer``).

    Submodules as in PyTorch: ``self_attn``, ``multihead_attn``, ``linear1``, ``dropout``,
    ``linear2``, ``norm1``, ``norm2``, ``norm3``, ``dropout1``, ``dropout2``, ``dropout3``.

    Math (post-norm): x = LN1(x + SA(x)); x = LN2(x + MHA(x, memory)); x = LN3(x + FF(x));
    ``norm_first=True``: x = x + SA(LN1(x)); x = x + MHA(LN2(x), memory); x = x + FF(LN3(x)).

    Example:
        >>> import avila_ml as am
        >>> layer = am.nn.TransformerDecoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        >>> layer(am.randn(3, 4, 8), am.randn(3, 6, 8), tgt_is_causal=True).shape
        (3, 4, 8)
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device=None, dtype=None):
        super().__init__()
        fkw = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **fkw)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                 batch_first=batch_first, **fkw)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **fkw)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **fkw)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fkw)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fkw)
        self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fkw)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = _activation(activation, "TransformerDecoderLayer")

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, memory_is_causal: bool = False):
        """Decode ``tgt`` attending to ``memory``; masks follow :class:`MultiheadAttention`."""
        x = tgt
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
            x = self.norm3(x + self._ff_block(x))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=bool(is_causal))[0]
        return self.dropout1(x)

    def _mha_block(self, x, mem, attn_mask, key_padding_mask, is_causal):
        x = self.multihead_attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                need_weights=False, is_causal=bool(is_causal))[0]
        return self.dropout2(x)

    def _ff_block(self, x):
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerEncoder(Module):
    """A stack of ``num_layers`` deep copies of ``encoder_layer``, then an optional ``norm``
    (``torch.nn.TransformerEncoder``; parameters ``layers.0.…`` to ``layers.{N-1}.…``, ``norm.…``).

    Math: x_{i+1} = layer_i(x_i, mask, src_key_padding_mask); y = norm(x_N) (if a norm is given).

    Example:
        >>> import avila_ml as am
        >>> layer = am.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        >>> enc = am.nn.TransformerEncoder(layer, num_layers=2, norm=am.nn.LayerNorm(8))
        >>> enc(am.randn(3, 5, 8), is_causal=True).shape, len(enc.layers)
        ((3, 5, 8), 2)
    """

    def __init__(self, encoder_layer, num_layers: int, norm=None, enable_nested_tensor: bool = True,
                 mask_check: bool = True):
        super().__init__()
        # enable_nested_tensor / mask_check select PyTorch's fast paths; accepted for compatibility
        self.layers = _clones(encoder_layer, num_layers, "TransformerEncoder")
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        """Run ``src`` through every layer (``is_causal=None`` means False: PyTorch infers it
        from ``mask``, which here applies either way)."""
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return self.norm(x) if self.norm is not None else x


class TransformerDecoder(Module):
    """A stack of ``num_layers`` deep copies of ``decoder_layer``, then an optional ``norm``
    (``torch.nn.TransformerDecoder``).

    Math: x_{i+1} = layer_i(x_i, memory, masks...); y = norm(x_N) (if a norm is given).

    Example:
        >>> import avila_ml as am
        >>> layer = am.nn.TransformerDecoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        >>> dec = am.nn.TransformerDecoder(layer, num_layers=2)
        >>> dec(am.randn(3, 4, 8), am.randn(3, 6, 8)).shape
        (3, 4, 8)
    """

    def __init__(self, decoder_layer, num_layers: int, norm=None):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers, "TransformerDecoder")
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal: bool = False):
        """Run ``tgt`` through every layer, each attending to ``memory``."""
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
        return self.norm(x) if self.norm is not None else x


class Transformer(Module):
    """The encoder-decoder transformer of "Attention Is All You Need" (``torch.nn.Transformer``).

    Submodules as in PyTorch: ``encoder`` (:class:`TransformerEncoder` of
    ``num_encoder_layers`` layers and a final ``LayerNorm``) and ``decoder``
    (:class:`TransformerDecoder`, likewise), so a PyTorch ``state_dict`` loads directly; every
    parameter with more than one dim starts Xavier-uniform, as PyTorch's ``_reset_parameters``.
    ``custom_encoder`` / ``custom_decoder`` replace the stacks.

    Math: memory = Encoder(src, src_mask, src_key_padding_mask);
    out = Decoder(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
    memory_key_padding_mask). Shapes (S, N, E) / (T, N, E), or (N, S, E) / (N, T, E) with
    ``batch_first``; out has tgt's shape.

    Example:
        >>> import avila_ml as am
        >>> model = am.nn.Transformer(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
        ...                           dim_feedforward=16, batch_first=True)
        >>> mask = am.nn.Transformer.generate_square_subsequent_mask(4)
        >>> model(am.randn(2, 5, 8), am.randn(2, 4, 8), tgt_mask=mask).shape
        (2, 4, 8)
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", custom_encoder=None, custom_decoder=None,
                 layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        fkw = {"device": device, "dtype": dtype}
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                                            batch_first, norm_first, bias, **fkw)
            self.encoder = TransformerEncoder(layer, num_encoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fkw))
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                                            batch_first, norm_first, bias, **fkw)
            self.decoder = TransformerDecoder(layer, num_decoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fkw))
        self._reset_parameters()
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first

    def _reset_parameters(self) -> None:
        from .. import init
        for p in self.parameters():
            if p.ndim > 1:
                init.xavier_uniform_(p)

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None,
                tgt_is_causal=None, memory_is_causal: bool = False):
        """Encode ``src`` and decode ``tgt`` against it; masks follow :class:`MultiheadAttention`."""
        batch_dim = 0 if self.batch_first else 1
        if src.ndim == 3 and tgt.ndim == 3 and src.shape[batch_dim] != tgt.shape[batch_dim]:
            raise RuntimeError(f"Transformer: the batch number of src and tgt must be equal, got src "
                               f"{tuple(src.shape)} and tgt {tuple(tgt.shape)} (batch_first={self.batch_first})")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise RuntimeError(f"Transformer: the feature number of src and tgt must be equal to d_model="
                               f"{self.d_model}, got src {tuple(src.shape)} and tgt {tuple(tgt.shape)}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device=None, dtype=None):
        """The (sz, sz) causal mask: 0 on and below the diagonal, -inf above
        (``Transformer.generate_square_subsequent_mask``).

        Example:
            >>> import avila_ml as am
            >>> am.nn.Transformer.generate_square_subsequent_mask(3)
            tensor([[  0., -inf, -inf],
                    [  0.,   0., -inf],
                    [  0.,   0.,   0.]])
        """
        from ... import dtypes as _dt
        from ...backends import get_backend
        from ...tensor import Tensor
        dt = _dt.get_default_dtype() if dtype is None else _dt.to_dtype(dtype)
        xp = get_backend(device).xp
        mask = xp.triu(xp.full((sz, sz), -xp.inf, dtype=dt.np), 1)
        return Tensor._wrap(mask)
