"""Recurrent layers with PyTorch's parameter names: ``RNN``, ``LSTM``, ``GRU`` and their cells.

The math of one step and the time loop live in :mod:`avila_ml.ops.recurrent`; these classes own
the parameters (``weight_ih_l0``, ``weight_hh_l0_reverse``, ``bias_ih_l1``, ``weight_hr_l0``,
... exactly as PyTorch names and orders them, so state dicts load both ways), validate the
arguments and arrange layers, directions, ``batch_first`` and packed input.
"""
from __future__ import annotations

import math
import numbers
import warnings

from ...backends import backend_of
from ...ops import recurrent as R
from ...ops.dropout import dropout as _dropout
from ...ops.shape import cat, reshape, stack, transpose, squeeze, unsqueeze
from ...ops.indexing import index_select
from ...tensor import Tensor
from .. import init
from ..utils.rnn import PackedSequence
from .linear import _empty
from .module import Module
from .parameter import Parameter

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "RNNCellBase", "RNNCell", "LSTMCell", "GRUCell"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _positive_int(op, name, v):
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{op}: {name} should be of type int, got: {type(v).__name__}")
    if v <= 0:
        raise ValueError(f"{op}: {name} must be greater than zero, got {v}")


class RNNBase(Module):
    """The shared body of :class:`RNN`, :class:`LSTM` and :class:`GRU` (``torch.nn.RNNBase``).

    Parameters per layer ``k`` and direction (suffix ``""`` or ``"_reverse"``), in PyTorch's
    order: ``weight_ih_l{k}`` ``(G·H, in_k)``, ``weight_hh_l{k}`` ``(G·H, H_out)``,
    ``bias_ih_l{k}`` and ``bias_hh_l{k}`` ``(G·H,)`` (if ``bias``), and for an LSTM with
    ``proj_size > 0`` ``weight_hr_l{k}`` ``(proj_size, H)``; ``G`` is the number of gates
    (1, 4, 3), ``H_out`` is ``proj_size`` or ``hidden_size``, ``in_0 = input_size`` and
    ``in_k = D·H_out`` above (``D`` = 2 if bidirectional). All start as U(-1/√H, 1/√H).

    Math: see each subclass; between layers (not after the last) dropout with probability
    ``dropout`` in training mode.

    Example:
        >>> import avila_ml as am
        >>> gru = am.nn.GRU(4, 3, num_layers=2, bidirectional=True)
        >>> [n for n, _ in gru.named_parameters()][:5]
        ['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0', 'weight_ih_l0_reverse']
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None):
        super().__init__()
        op = {"RNN_TANH": "RNN", "RNN_RELU": "RNN"}.get(mode, mode)
        if mode not in _GATES:
            raise ValueError(f"RNNBase: unrecognized RNN mode {mode!r}")
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"{op}: dropout should be a number in range [0, 1] representing the "
                             f"probability of an element being zeroed, got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{op}: dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got dropout={dropout} "
                          f"and num_layers={num_layers}", UserWarning, stacklevel=3)
        _positive_int(op, "input_size", input_size)
        _positive_int(op, "hidden_size", hidden_size)
        _positive_int(op, "num_layers", num_layers)
        if not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"{op}: proj_size should be a positive integer or zero to disable projections, "
                             f"got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"{op}: proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                             f"and hidden_size={hidden_size}")
        if proj_size and mode != "LSTM":
            raise ValueError(f"{op}: proj_size argument is only supported for LSTM, not RNN or GRU")
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional, self.proj_size = bool(bidirectional), proj_size
        directions = 2 if bidirectional else 1
        gate = _GATES[mode] * hidden_size
        real_hidden = proj_size or hidden_size
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else real_hidden * directions
            for d in range(directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                shapes = [("weight_ih", (gate, layer_in)), ("weight_hh", (gate, real_hidden))]
                if bias:
                    shapes += [("bias_ih", (gate,)), ("bias_hh", (gate,))]
                if proj_size:
                    shapes.append(("weight_hr", (proj_size, hidden_size)))
                names = []
                for base, shape in shapes:
                    name = base + sfx
                    self.register_parameter(name, Parameter(_empty(shape, device, dtype)))
                    names.append(name)
                self._flat_weights_names += names
                self._all_weights.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw every weight and bias from U(-1/√hidden_size, 1/√hidden_size), as PyTorch does."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -k, k)

    def flatten_parameters(self) -> None:
        """Accepted for PyTorch compatibility: cuDNN's flat weight buffer has no counterpart
        here (weights are used in place), so there is nothing to do."""

    @property
    def all_weights(self) -> list:
        """The parameters grouped per layer and direction (``RNNBase.all_weights``)."""
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def _weights(self, layer: int, direction: int):
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        get = lambda base: getattr(self, base + sfx, None)  # noqa: E731
        return (get("weight_ih"), get("weight_hh"), get("bias_ih") if self.bias else None,
                get("bias_hh") if self.bias else None, get("weight_hr") if self.proj_size else None)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    # -- forward --------------------------------------------------------------------------------
    def _op(self) -> str:
        return type(self).__name__

    def _check_hidden(self, h, expected, what):
        if not isinstance(h, Tensor):
            raise TypeError(f"{self._op()}: {what} must be a Tensor, got {type(h).__name__}")
        if tuple(h.shape) != expected:
            raise RuntimeError(f"{self._op()}: Expected {what} size {expected}, got {list(h.shape)}")

    def forward(self, input, hx=None):
        """Run the layers over ``input``; returns ``(output, h_n)`` (LSTM: ``(output, (h_n, c_n))``)."""
        op = self._op()
        is_lstm = self.mode == "LSTM"
        directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size or self.hidden_size
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            data = input.data
            batch_sizes = [int(b) for b in input.batch_sizes.tolist()]
            batch = batch_sizes[0]
            sorted_indices = input.sorted_indices
            if data.ndim != 2:
                raise ValueError(f"{op}: packed input data must be 2-D (rows, features), got shape {tuple(data.shape)}")
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{op}: expected a Tensor or PackedSequence as input, got {type(input).__name__}")
            if input.ndim not in (2, 3):
                raise ValueError(f"{op}: Expected input to be 2D or 3D, got {input.ndim}D tensor instead")
            unbatched = input.ndim == 2
            x = unsqueeze(input, 1) if unbatched else (transpose(input, 0, 1) if self.batch_first else input)
            steps, batch = x.shape[0], x.shape[1]
            data = reshape(x, (steps * batch, x.shape[2]))
            batch_sizes = [batch] * steps
            sorted_indices = None
            if steps == 0:
                raise RuntimeError(f"{op}: input has no time steps (shape {tuple(input.shape)})")
        if data.shape[-1] != self.input_size:
            raise RuntimeError(f"{op}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {data.shape[-1]}")
        w = self.weight_ih_l0
        if data.dtype != w.dtype:
            raise RuntimeError(f"{op}: input must have the type {w.dtype}, got type {data.dtype}")
        h_shape = (self.num_layers * directions, batch, real_hidden)
        c_shape = (self.num_layers * directions, batch, self.hidden_size)
        h0 = c0 = None
        if hx is not None:
            if is_lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"{op}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
                h0, c0 = hx
            else:
                h0 = hx
            if unbatched:
                for t, what in ((h0, "hidden"), (c0, "cell")):
                    if t is not None and isinstance(t, Tensor) and t.ndim != 2:
                        raise RuntimeError(f"{op}: for unbatched 2-D input, {what} state should also be 2-D "
                                           f"but got {t.ndim}-D tensor")
                h0 = unsqueeze(h0, 1)
                c0 = unsqueeze(c0, 1) if c0 is not None else None
            self._check_hidden(h0, h_shape, "hidden")
            if is_lstm:
                self._check_hidden(c0, c_shape, "cell")
            if sorted_indices is not None:  # the caller's batch order -> packed order
                h0 = index_select(h0, 1, sorted_indices)
                c0 = index_select(c0, 1, sorted_indices) if c0 is not None else None
        if h0 is None:
            h0 = _zeros(w, h_shape)
        if is_lstm and c0 is None:
            c0 = _zeros(w, c_shape)
        layer_input = data
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                layer_input = _dropout(layer_input, self.dropout, True)
            outs = []
            for d in range(directions):
                k = layer * directions + d
                out, h_last, c_last = R.run_direction(
                    self.mode, layer_input, batch_sizes, h0[k], c0[k] if is_lstm else None,
                    self._weights(layer, d), reverse=bool(d))
                outs.append(out)
                h_n.append(h_last)
                c_n.append(c_last)
            layer_input = cat(outs, -1) if directions == 2 else outs[0]
        h_n = stack(h_n, 0)
        c_n = stack(c_n, 0) if is_lstm else None
        if packed:
            if input.unsorted_indices is not None:
                h_n = index_select(h_n, 1, input.unsorted_indices)
                c_n = index_select(c_n, 1, input.unsorted_indices) if is_lstm else None
            output = PackedSequence(layer_input, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        else:
            output = reshape(layer_input, (len(batch_sizes), batch, layer_input.shape[-1]))
            if unbatched:
                output = squeeze(output, 1)
                h_n = squeeze(h_n, 1)
                c_n = squeeze(c_n, 1) if is_lstm else None
            elif self.batch_first:
                output = transpose(output, 0, 1)
        return output, ((h_n, c_n) if is_lstm else h_n)


def _zeros(like: Tensor, shape) -> Tensor:
    return Tensor._wrap(backend_of(like.array).xp.zeros(shape, dtype=like.array.dtype))


class RNN(RNNBase):
    """Multi-layer Elman RNN with tanh or ReLU (``torch.nn.RNN``).

    Math, per layer and direction: hₜ = act(xₜ W_ihᵀ + b_ih + hₜ₋₁ W_hhᵀ + b_hh), act =
    tanh or relu (``nonlinearity``). Input ``(T, B, in)`` (``(B, T, in)`` if
    ``batch_first``; ``(T, in)`` unbatched; or a :class:`PackedSequence`), optional ``h_0``
    ``(D·num_layers, B, H)``; returns ``(output, h_n)`` with ``output`` ``(T, B, D·H)``.
    Parameters and their init: see :class:`RNNBase`.

    Example:
        >>> import avila_ml as am
        >>> rnn = am.nn.RNN(4, 3, num_layers=2, batch_first=True)
        >>> out, h = rnn(am.randn(5, 7, 4))
        >>> out.shape, h.shape
        ((5, 7, 3), (2, 5, 3))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, device=device, dtype=dtype)


class LSTM(RNNBase):
    """Multi-layer long short-term memory RNN (``torch.nn.LSTM``).

    Math, per layer and direction (gates in PyTorch's order i, f, g, o)::

        iₜ, fₜ, oₜ = σ(·), gₜ = tanh(·) of xₜ W_ihᵀ + b_ih + hₜ₋₁ W_hhᵀ + b_hh
        cₜ = fₜ·cₜ₋₁ + iₜ·gₜ;  hₜ = oₜ·tanh(cₜ)  (then hₜ W_hrᵀ if proj_size > 0)

    Input as :class:`RNN`; optional ``(h_0, c_0)`` of shapes ``(D·num_layers, B, H_out)`` and
    ``(D·num_layers, B, H)``; returns ``(output, (h_n, c_n))``. The input projections of the
    whole sequence are one matrix product per layer and direction; each step's gate math is one
    fused op.

    Example:
        >>> import avila_ml as am
        >>> lstm = am.nn.LSTM(4, 6, proj_size=2, bidirectional=True)
        >>> out, (h, c) = lstm(am.randn(7, 3, 4))
        >>> out.shape, h.shape, c.shape
        ((7, 3, 4), (2, 3, 2), (2, 3, 6))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device=device, dtype=dtype)


class GRU(RNNBase):
    """Multi-layer gated recurrent unit RNN (``torch.nn.GRU``).

    Math, per layer and direction (gates in PyTorch's order r, z, n)::

        rₜ = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr);  zₜ = σ(x W_izᵀ + b_iz + h W_hzᵀ + b_hz)
        nₜ = tanh(x W_inᵀ + b_in + rₜ·(h W_hnᵀ + b_hn));  hₜ = (1 - zₜ)·nₜ + zₜ·hₜ₋₁

    Input, ``h_0`` and outputs as :class:`RNN`.

    Example:
        >>> import avila_ml as am
        >>> gru = am.nn.GRU(4, 3)
        >>> out, h = gru(am.randn(6, 4))   # unbatched (T, in)
        >>> out.shape, h.shape
        ((6, 3), (1, 3))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype)


# -- cells ----------------------------------------------------------------------------------------
class RNNCellBase(Module):
    """The shared body of the cells (``torch.nn.RNNCellBase``): ``weight_ih`` ``(G·H, in)``,
    ``weight_hh`` ``(G·H, H)``, ``bias_ih`` and ``bias_hh`` ``(G·H,)``, all U(-1/√H, 1/√H).

    Math: see each cell.

    Example:
        >>> import avila_ml as am
        >>> cell = am.nn.GRUCell(3, 2)
        >>> cell.weight_ih.shape, cell.weight_hh.shape
        ((6, 3), (6, 2))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device=None, dtype=None):
        super().__init__()
        op = type(self).__name__
        _positive_int(op, "input_size", input_size)
        _positive_int(op, "hidden_size", hidden_size)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        self.weight_ih = Parameter(_empty((num_chunks * hidden_size, input_size), device, dtype))
        self.weight_hh = Parameter(_empty((num_chunks * hidden_size, hidden_size), device, dtype))
        if bias:
            self.bias_ih = Parameter(_empty((num_chunks * hidden_size,), device, dtype))
            self.bias_hh = Parameter(_empty((num_chunks * hidden_size,), device, dtype))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw every weight and bias from U(-1/√hidden_size, 1/√hidden_size)."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -k, k)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    def _prepare(self, input, hx, n_states):
        op = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{op}: expected a Tensor as input, got {type(input).__name__}")
        if input.ndim not in (1, 2):
            raise ValueError(f"{op}: Expected input to be 1D or 2D, got {input.ndim}D instead")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"{op}: input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size}")
        if input.dtype != self.weight_ih.dtype:
            raise RuntimeError(f"{op}: input must have the type {self.weight_ih.dtype}, got type {input.dtype}")
        unbatched = input.ndim == 1
        x = unsqueeze(input, 0) if unbatched else input
        states = []
        given = (hx,) if n_states == 1 else (hx if hx is not None else (None, None))
        for s in given:
            if s is None:
                states.append(_zeros(self.weight_ih, (x.shape[0], self.hidden_size)))
                continue
            if not isinstance(s, Tensor) or s.ndim != input.ndim:
                raise RuntimeError(f"{op}: hidden state must be a {input.ndim}-D Tensor for {input.ndim}-D input, "
                                   f"got {getattr(s, 'shape', type(s).__name__)}")
            s = unsqueeze(s, 0) if unbatched else s
            if tuple(s.shape) != (x.shape[0], self.hidden_size):
                raise RuntimeError(f"{op}: hidden state has shape {tuple(s.shape)}, expected "
                                   f"{(x.shape[0], self.hidden_size)}")
            states.append(s)
        return x, states, unbatched


class RNNCell(RNNCellBase):
    """An Elman RNN cell with tanh or ReLU (``torch.nn.RNNCell``).

    Math: h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh). Input ``(B, in)`` or ``(in,)``, ``hx``
    ``(B, H)`` or ``(H,)`` (zeros if None); returns h'.

    Example:
        >>> import avila_ml as am
        >>> cell = am.nn.RNNCell(3, 2)
        >>> cell(am.ones(4, 3)).shape
        (4, 2)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: Unknown nonlinearity: {nonlinearity}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)

    def forward(self, input, hx=None):
        x, (h,), unbatched = self._prepare(input, hx, 1)
        step = R.rnn_tanh_cell if self.nonlinearity == "tanh" else R.rnn_relu_cell
        h = step(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return squeeze(h, 0) if unbatched else h


class LSTMCell(RNNCellBase):
    """A long short-term memory cell (``torch.nn.LSTMCell``).

    Math: (i, f, g, o) from x W_ihᵀ + b_ih + h W_hhᵀ + b_hh; c' = σ(f)·c + σ(i)·tanh(g);
    h' = σ(o)·tanh(c'). ``hx`` is ``(h, c)`` (zeros if None); returns ``(h', c')``.

    Example:
        >>> import avila_ml as am
        >>> cell = am.nn.LSTMCell(3, 2)
        >>> h, c = cell(am.ones(4, 3))
        >>> h.shape, c.shape
        ((4, 2), (4, 2))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input, hx=None):
        x, (h, c), unbatched = self._prepare(input, hx, 2)
        h, c = R.lstm_cell(x, (h, c), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (squeeze(h, 0), squeeze(c, 0)) if unbatched else (h, c)


class GRUCell(RNNCellBase):
    """A gated recurrent unit cell (``torch.nn.GRUCell``).

    Math: r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr), z = σ(·) likewise,
    n = tanh(x W_inᵀ + b_in + r·(h W_hnᵀ + b_hn)), h' = (1 - z)·n + z·h.

    Example:
        >>> import avila_ml as am
        >>> cell = am.nn.GRUCell(3, 2)
        >>> cell(am.ones(3), am.zeros(2)).shape
        (2,)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input, hx=None):
        x, (h,), unbatched = self._prepare(input, hx, 1)
        h = R.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return squeeze(h, 0) if unbatched else h
