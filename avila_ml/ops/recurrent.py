"""Recurrent cells: the per-step gate math of RNN, LSTM and GRU, and the sequence loops.

A recurrent layer spends its time in two places: the input-to-hidden products and the
per-step gate arithmetic. The loops below do the first for the whole sequence at once (one
GEMM per layer and direction, ``x @ W_ihᵀ`` over all time steps) and the second in one
``Function`` per step (``LSTMGates``, ``GRUGates``) whose forward does every gate on arrays in
one go (on CUDA one fused kernel launch, :mod:`avila_ml.cuda_kernels.recurrent`). Their
backward runs on the activated gates the forward kept, as array code, when no graph of the
gradient is wanted (``create_graph=False``: the 70 gate backwards of a 2-layer, 35-step LSTM
step went from ~50 ms of Tensor ops to ~10 ms in an in-process profile, one thread, loaded
machine); with ``create_graph=True`` it is written with differentiable Tensor ops from the
saved inputs, so double backward works.
Only the hidden-to-hidden product ``h @ W_hhᵀ`` has to stay inside the time loop.

On the CPU, float32 layers whose sequences all have the same length skip this loop: each
layer-direction is one call of oneDNN's LSTM / LBR-GRU / vanilla-RNN primitive
(:class:`RecurrentLayer`, :mod:`avila_ml.cpu_accel._rnn`), as in PyTorch, forward and backward.

Variable-length batches arrive *packed* (PyTorch's ``PackedSequence`` layout): sequences sorted
by decreasing length, time-major, ``batch_sizes[t]`` rows active at step ``t``. The loop then
shrinks (forward direction) or grows (reverse direction) the hidden state as sequences end or
begin; a padded batch is the special case where every ``batch_sizes[t]`` is the batch size.
"""
from __future__ import annotations

import numpy as np

from .._grad_state import state as _grad_state
from ..autograd.function import Function
from ..backends import backend_of
from ..tensor import Tensor
from .elementwise import sigmoid, tanh
from .activation import relu
from .linalg import linear, matmul
from .shape import cat, split

__all__ = ["lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"]


def _sigmoid_array(x, xp):
    # 0.5·(1 + tanh(x/2)): never overflows, unlike 1 / (1 + exp(-x))
    half = x.dtype.type(0.5)
    return xp.tanh(x * half) * half + half


class LSTMGates(Function):
    """The LSTM gate math of one step, fused: ``(gates, c_prev) -> (h, c)``.

    ``gates`` is ``x W_ihᵀ + b_ih + h W_hhᵀ + b_hh`` of shape ``(B, 4H)`` in PyTorch's
    order (input, forget, cell, output)::

        i, f, o = σ(gates_i), σ(gates_f), σ(gates_o);  g = tanh(gates_g)
        c = f·c_prev + i·g;  h = o·tanh(c)
    """

    def forward(self, gates, c_prev):
        self.save_inputs(0, 1)
        self.act = None
        backend = backend_of(gates)
        if backend.name == "cupy":  # one fused kernel launch instead of ~12
            from ..cuda_kernels.recurrent import lstm_gates
            return lstm_gates(gates, c_prev)
        xp = backend.xp
        hs = c_prev.shape[-1]
        act = xp.empty(gates.shape, dtype=gates.dtype)  # [i, f, g, o], kept for the backward
        act[..., :2 * hs] = _sigmoid_array(gates[..., :2 * hs], xp)
        xp.tanh(gates[..., 2 * hs:3 * hs], out=act[..., 2 * hs:3 * hs])
        act[..., 3 * hs:] = _sigmoid_array(gates[..., 3 * hs:], xp)
        i, f, g, o = act[..., :hs], act[..., hs:2 * hs], act[..., 2 * hs:3 * hs], act[..., 3 * hs:]
        c = f * c_prev + i * g
        tc = xp.tanh(c)
        self.act, self.tc = act, tc
        return o * tc, c

    def backward(self, gh, gc):
        if not _grad_state.enabled and self.act is not None:
            return self._array_backward(gh.array, gc.array)
        gates, c_prev = self.saved_inputs
        hs = c_prev.shape[-1]
        pre_i, pre_f, pre_g, pre_o = split(gates, hs, -1)
        i, f, g, o = sigmoid(pre_i), sigmoid(pre_f), tanh(pre_g), sigmoid(pre_o)
        tc = tanh(f * c_prev + i * g)
        dc = gc + gh * o * (1 - tc * tc)
        d_i = dc * g * i * (1 - i)
        d_f = dc * c_prev * f * (1 - f)
        d_g = dc * i * (1 - g * g)
        d_o = gh * tc * o * (1 - o)
        return cat([d_i, d_f, d_g, d_o], -1), dc * f

    def _array_backward(self, gh, gc):
        """The same formulas on arrays, from the activated gates and tanh(c) of the forward."""
        act, tc = self.act, self.tc
        c_prev = self.saved_inputs[1].array
        hs = tc.shape[-1]
        i, f, g, o = act[..., :hs], act[..., hs:2 * hs], act[..., 2 * hs:3 * hs], act[..., 3 * hs:]
        one = act.dtype.type(1)
        dc = one - tc * tc
        dc *= o
        dc *= gh
        dc += gc
        d = backend_of(act).xp.empty(act.shape, dtype=act.dtype)
        d_i, d_f, d_g, d_o = d[..., :hs], d[..., hs:2 * hs], d[..., 2 * hs:3 * hs], d[..., 3 * hs:]
        for out, a, b, s in ((d_i, g, i, i), (d_f, c_prev, f, f), (d_o, tc, o, o)):
            # d(pre) = (upstream) * b * (1 - s) with s the gate's sigmoid
            out[...] = one - s
            out *= b
            out *= a
        d_i *= dc
        d_f *= dc
        d_o *= gh
        d_g[...] = one - g * g
        d_g *= i
        d_g *= dc
        return Tensor._wrap(d), Tensor._wrap(dc * f)


class GRUGates(Function):
    """The GRU gate math of one step, fused: ``(gi, gh, h_prev) -> h``.

    ``gi = x W_ihᵀ + b_ih`` and ``gh = h_prev W_hhᵀ + b_hh``, each ``(B, 3H)`` in PyTorch's
    order (reset, update, new)::

        r = σ(gi_r + gh_r);  z = σ(gi_z + gh_z);  n = tanh(gi_n + r·gh_n)
        h = (1 - z)·n + z·h_prev
    """

    def forward(self, gi, gh, h_prev):
        self.save_inputs(0, 1, 2)
        self.act = None
        backend = backend_of(gi)
        if backend.name == "cupy":  # one fused kernel launch instead of ~12
            from ..cuda_kernels.recurrent import gru_gates
            return gru_gates(gi, gh, h_prev)
        xp = backend.xp
        hs = h_prev.shape[-1]
        r = _sigmoid_array(gi[..., :hs] + gh[..., :hs], xp)
        z = _sigmoid_array(gi[..., hs:2 * hs] + gh[..., hs:2 * hs], xp)
        n = xp.tanh(gi[..., 2 * hs:] + r * gh[..., 2 * hs:])
        self.act = (r, z, n)  # for the array backward
        return n + z * (h_prev - n)

    def backward(self, g):
        if not _grad_state.enabled and self.act is not None:
            return self._array_backward(g.array)
        gi, gh, h_prev = self.saved_inputs
        hs = h_prev.shape[-1]
        gi_r, gi_z, gi_n = split(gi, hs, -1)
        gh_r, gh_z, gh_n = split(gh, hs, -1)
        r, z = sigmoid(gi_r + gh_r), sigmoid(gi_z + gh_z)
        n = tanh(gi_n + r * gh_n)
        d_pre_n = g * (1 - z) * (1 - n * n)
        d_pre_z = g * (h_prev - n) * z * (1 - z)
        d_pre_r = d_pre_n * gh_n * r * (1 - r)
        d_gi = cat([d_pre_r, d_pre_z, d_pre_n], -1)
        d_gh = cat([d_pre_r, d_pre_z, d_pre_n * r], -1)
        return d_gi, d_gh, g * z

    def _array_backward(self, g):
        """The same formulas on arrays, from the forward's r, z, n."""
        r, z, n = self.act
        gh, h_prev = self.saved_inputs[1].array, self.saved_inputs[2].array
        hs = h_prev.shape[-1]
        xp = backend_of(g).xp
        one = n.dtype.type(1)
        d_gi = xp.empty(gh.shape, dtype=np.result_type(g.dtype, n.dtype))
        d_r, d_z, d_n = d_gi[..., :hs], d_gi[..., hs:2 * hs], d_gi[..., 2 * hs:]
        d_n[...] = one - n * n
        d_n *= one - z
        d_n *= g
        d_z[...] = h_prev - n
        d_z *= one - z
        d_z *= z
        d_z *= g
        d_r[...] = one - r
        d_r *= r
        d_r *= gh[..., 2 * hs:]
        d_r *= d_n
        d_gh = d_gi.copy()
        d_gh[..., 2 * hs:] *= r
        return Tensor._wrap(d_gi), Tensor._wrap(d_gh), Tensor._wrap(g * z)


def _check_cell(op, input, hx, w_ih, w_hh, n_gates):
    hs = w_hh.shape[1]
    if input.ndim != 2 or input.shape[1] != w_ih.shape[1]:
        raise RuntimeError(f"{op}: input has shape {tuple(input.shape)}, expected (batch, {w_ih.shape[1]})")
    if hx.shape != (input.shape[0], hs):
        raise RuntimeError(f"{op}: hidden state has shape {tuple(hx.shape)}, expected "
                           f"({input.shape[0]}, {hs}) for input of shape {tuple(input.shape)}")
    if w_ih.shape[0] != n_gates * hs:
        raise RuntimeError(f"{op}: weight_ih has shape {tuple(w_ih.shape)}, expected ({n_gates * hs}, *)")


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """One LSTM step on a batch (the function behind ``torch.nn.LSTMCell``).

    Math: gates = x W_ihᵀ + b_ih + h W_hhᵀ + b_hh split into (i, f, g, o);
    c' = σ(f)·c + σ(i)·tanh(g); h' = σ(o)·tanh(c') (then h' W_hrᵀ when ``w_hr`` is given).

    ``input`` is ``(B, in)``, ``hx`` the pair ``(h, c)``; returns ``(h', c')``.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.recurrent import lstm_cell
        >>> h, c = lstm_cell(am.ones(2, 3), (am.zeros(2, 4), am.zeros(2, 4)),
        ...                  am.zeros(16, 3), am.zeros(16, 4))
        >>> h.shape, round(c[0, 0].item(), 4)   # g = tanh(0) = 0, so c' = 0
        ((2, 4), 0.0)
    """
    h, c = hx
    gates = linear(input, w_ih, b_ih) + matmul(h, w_hh.mT)
    if b_hh is not None:
        gates = gates + b_hh
    h, c = LSTMGates.apply(gates, c)
    if w_hr is not None:
        h = matmul(h, w_hr.mT)
    return h, c


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step on a batch (the function behind ``torch.nn.GRUCell``).

    Math: r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr), z = σ(x W_izᵀ + b_iz + h W_hzᵀ + b_hz),
    n = tanh(x W_inᵀ + b_in + r·(h W_hnᵀ + b_hn)), h' = (1 - z)·n + z·h.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.recurrent import gru_cell
        >>> h = gru_cell(am.ones(2, 3), am.ones(2, 4), am.zeros(12, 3), am.zeros(12, 4))
        >>> round(h[0, 0].item(), 4)   # z = 0.5, n = 0: h' = 0.5·h
        0.5
    """
    gi = linear(input, w_ih, b_ih)
    gh = linear(hx, w_hh, b_hh)
    return GRUGates.apply(gi, gh, hx)


def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One Elman RNN step with tanh (the function behind ``torch.nn.RNNCell``).

    Math: h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.recurrent import rnn_tanh_cell
        >>> rnn_tanh_cell(am.ones(1, 2), am.zeros(1, 3), am.zeros(3, 2), am.zeros(3, 3)).shape
        (1, 3)
    """
    return tanh(linear(input, w_ih, b_ih) + linear(hx, w_hh, b_hh))


def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One Elman RNN step with ReLU (``torch.nn.RNNCell(nonlinearity='relu')``).

    Math: h' = max(0, x W_ihᵀ + b_ih + h W_hhᵀ + b_hh).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.recurrent import rnn_relu_cell
        >>> rnn_relu_cell(am.ones(1, 2), am.zeros(1, 3), am.ones(3, 2), am.zeros(3, 3))
        tensor([[2., 2., 2.]])
    """
    return relu(linear(input, w_ih, b_ih) + linear(hx, w_hh, b_hh))


# -- the sequence loop ------------------------------------------------------------------------
def _step(mode, x_proj, h, c, w_hh, b_hh):
    """One time step given the precomputed input projection ``x_proj`` (bias b_ih included)."""
    if mode == "LSTM":
        gates = x_proj + matmul(h, w_hh.mT)
        if b_hh is not None:
            gates = gates + b_hh
        return LSTMGates.apply(gates, c)
    if mode == "GRU":
        return GRUGates.apply(x_proj, linear(h, w_hh, b_hh), h), None
    pre = x_proj + matmul(h, w_hh.mT)
    if b_hh is not None:
        pre = pre + b_hh
    return (tanh(pre) if mode == "RNN_TANH" else relu(pre)), None


def run_direction(mode, x, batch_sizes, h0, c0, weights, reverse):
    """Run one layer in one direction over a packed sequence.

    ``x`` is the packed data ``(N, in)`` (time-major rows, ``batch_sizes[t]`` rows at step t),
    ``h0``/``c0`` ``(B, H)`` (``c0`` None unless LSTM), ``weights`` the tuple
    ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` (biases and ``w_hr`` may be None). Returns the packed
    output ``(N, H_out)`` and the final ``h`` (and ``c``), each ``(B, ·)``.

    A float32 NumPy layer (LSTM without projection, GRU, RNN) whose sequences all have the same
    length runs as one oneDNN call per direction (:class:`RecurrentLayer`) when oneDNN is
    installed and ``avila_ml.backends.mkldnn.enabled``; everything else runs the step loop below.
    """
    if _onednn_ok(mode, x, batch_sizes, h0, c0, weights, reverse):
        w_ih, w_hh, b_ih, b_hh, _ = weights
        out = RecurrentLayer.apply(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, len(batch_sizes), bool(reverse))
        return out if len(out) == 3 else (out[0], out[1], None)
    return _loop_direction(mode, x, batch_sizes, h0, c0, weights, reverse)


def _loop_direction(mode, x, batch_sizes, h0, c0, weights, reverse):
    """:func:`run_direction` as a loop over time steps (any mode, packed lengths, projection)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    # one GEMM for the input projections of every time step, then cut per step
    steps = split(linear(x, w_ih, b_ih), list(batch_sizes), 0)
    n = len(batch_sizes)
    outs = [None] * n
    if not reverse:
        h, c = h0, c0
        done_h, done_c = [], []
        for t in range(n):
            bs = batch_sizes[t]
            if bs < h.shape[0]:  # the shortest sequences ended: their state is final
                done_h.append(h[bs:])
                h = h[:bs]
                if c is not None:
                    done_c.append(c[bs:])
                    c = c[:bs]
            h, c = _step(mode, steps[t], h, c, w_hh, b_hh)
            if w_hr is not None:
                h = matmul(h, w_hr.mT)
            outs[t] = h
        h_n = cat([h] + done_h[::-1], 0) if done_h else h
        c_n = (cat([c] + done_c[::-1], 0) if done_c else c) if c is not None else None
    else:
        h, c = h0[:batch_sizes[-1]], (c0[:batch_sizes[-1]] if c0 is not None else None)
        for t in range(n - 1, -1, -1):
            bs = batch_sizes[t]
            if bs > h.shape[0]:  # longer sequences start here, from their initial state
                h = cat([h, h0[h.shape[0]:bs]], 0)
                if c is not None:
                    c = cat([c, c0[c.shape[0]:bs]], 0)
            h, c = _step(mode, steps[t], h, c, w_hh, b_hh)
            if w_hr is not None:
                h = matmul(h, w_hr.mT)
            outs[t] = h
        h_n, c_n = h, c
    return cat(outs, 0) if n > 1 else outs[0], h_n, c_n


# -- a whole layer-direction in one oneDNN call ------------------------------------------------
_ONEDNN_CELL = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


def _onednn_ok(mode, x, batch_sizes, h0, c0, weights, reverse) -> bool:
    """True when :class:`RecurrentLayer` applies: no projection, every sequence as long as the
    batch (no packed variable lengths), every array a float32 NumPy array, oneDNN enabled and
    loaded, and its plan for these sizes built (the one the forward will use: training when
    autograd records the call)."""
    from ..backends import mkldnn
    if not mkldnn.enabled or mode not in _ONEDNN_CELL or weights[4] is not None \
            or batch_sizes[-1] != batch_sizes[0] or x.array.size == 0:  # (oneDNN refuses an empty batch)
        return False
    for t in (x, h0, c0) + tuple(weights[:4]):
        if t is not None and (type(t.array) is not np.ndarray or t.array.dtype != np.float32):
            return False
    from ..cpu_accel import _rnn
    training = _grad_state.enabled and any(t is not None and t.requires_grad for t in (x, h0, c0) + tuple(weights))
    return _rnn.plan(_ONEDNN_CELL[mode], len(batch_sizes), batch_sizes[0], x.shape[1], h0.shape[1], reverse,
                     training) is not None


class RecurrentLayer(Function):
    """One recurrent layer (LSTM, GRU or Elman RNN) in one direction over a whole padded
    sequence, through oneDNN's RNN primitives (:mod:`avila_ml.cpu_accel._rnn`): PyTorch's
    ``aten::mkldnn_rnn_layer``.

    ``(x (T·N, I), h0 (N, H), [c0 (N, H)], w_ih, w_hh, [b_ih], [b_hh]) -> (y (T·N, H), h_n, [c_n])``
    (``mode``, ``T`` and ``reverse`` as plain arguments) with the math of :class:`LSTMGates`,
    :class:`GRUGates` or ``act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)`` at every step (time-major
    rows; ``reverse`` runs from the last step to the first). The training forward keeps oneDNN's
    workspace (the gates of every step) for the backward, which is one oneDNN call too. With
    ``create_graph=True`` the backward recomputes the layer with the Tensor-op step loop and
    differentiates that instead, so double backward works. ``nn.LSTM``/``GRU``/``RNN`` use it
    through :func:`run_direction`; ``avila_ml.backends.mkldnn.enabled = False`` keeps them on
    the step loop.

    Example:
        >>> import numpy as np
        >>> import avila_ml as am
        >>> lstm = am.nn.LSTM(3, 4)   # float32: one oneDNN call when oneDNN is installed
        >>> x = am.randn(5, 2, 3)
        >>> out, (h, c) = lstm(x)
        >>> am.backends.mkldnn.enabled = False   # the step loop, for comparison
        >>> ref, _ = lstm(x)
        >>> am.backends.mkldnn.enabled = True
        >>> out.shape, bool(np.allclose(out.detach().numpy(), ref.detach().numpy(), atol=1e-6))
        ((5, 2, 4), True)
    """

    def forward(self, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, steps, reverse):
        from ..cpu_accel import _rnn
        n = x.shape[0] // steps
        self.mode, self.steps, self.reverse = mode, steps, reverse
        self.present = tuple(a is not None for a in (c0, b_ih, b_hh))
        done = _rnn.layer_forward(
            _ONEDNN_CELL[mode], x.reshape(steps, n, x.shape[1]), h0, c0, w_ih, w_hh, b_ih, b_hh, reverse,
            training=self._recording)
        if done is None:  # (run_direction checked the plan just before: oneDNN unloaded in between)
            raise RuntimeError(f"{mode} layer: oneDNN's recurrent primitive became unavailable after its plan "
                               "was checked; set am.backends.mkldnn.enabled = False to use the step loop")
        y, hn, cn, self.saved = done
        if self._recording:
            self.save_inputs(*range(4 + sum(self.present)))  # for the version check and double backward
        y = y.reshape(steps * n, y.shape[2])
        return (y, hn) if cn is None else (y, hn, cn)

    def release(self) -> None:
        """Drop the saved tensors and the forward's oneDNN state (workspace, input and weight
        copies: megabytes per layer)."""
        super().release()
        self.saved = None

    def backward(self, gy, ghn, gcn=None):
        saved = self.saved_inputs  # version-checked: x, h0, [c0], w_ih, w_hh, [b_ih], [b_hh]
        if _grad_state.enabled:  # create_graph: differentiate the Tensor-op formula
            return self._graph_backward(saved, gy, ghn, gcn)
        from ..cpu_accel import _rnn
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = _rnn.layer_backward(
            _ONEDNN_CELL[self.mode], self.saved, gy.array.reshape(self.steps, -1, gy.shape[1]), ghn.array,
            None if gcn is None else gcn.array)
        grads = [dx.reshape(-1, dx.shape[2]), dh0, dc0, dw_ih, dw_hh, db_ih, db_hh]
        keep = (True, True) + self.present[:1] + (True, True) + self.present[1:]
        return tuple(Tensor._wrap(g) for g, k in zip(grads, keep) if k)

    def _graph_backward(self, saved, gy, ghn, gcn):
        """The gradients as a graph: the step loop rerun on the saved inputs (so that graph
        reaches them) and differentiated with ``create_graph=True``."""
        from ..autograd import grad
        from ..autograd.grad_mode import enable_grad
        it = iter(saved)
        x, h0 = next(it), next(it)
        c0 = next(it) if self.present[0] else None
        w_ih, w_hh = next(it), next(it)
        b_ih = next(it) if self.present[1] else None
        b_hh = next(it) if self.present[2] else None
        with enable_grad():
            outs = _loop_direction(self.mode, x, [h0.shape[0]] * self.steps, h0, c0,
                                   (w_ih, w_hh, b_ih, b_hh, None), self.reverse)
        roots = [o for o in outs if o is not None]
        wanted = [t for t, need in zip(saved, self.needs_input_grad) if need]
        got = iter(grad(roots, wanted, [gy, ghn, gcn][:len(roots)], retain_graph=True, create_graph=True,
                        allow_unused=True))
        return tuple(next(got) if need else None for need in self.needs_input_grad)
