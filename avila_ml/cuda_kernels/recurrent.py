"""Fused per-step gate kernels of LSTM and GRU for CUDA (CuPy ``ElementwiseKernel``).

On the CPU a recurrent step's gate math is a handful of NumPy calls (see
:mod:`avila_ml.ops.recurrent`); on a GPU each of those would be its own kernel launch and its own
pass over memory, and a sequence makes thousands of steps. These kernels do the whole gate
arithmetic of one step in one launch: each thread owns one (batch, hidden unit) pair, reads its
gate pre-activations from the ``(B, G·H)`` gate matrix (a ``raw`` argument, indexed by hand)
and writes the new state. The arithmetic is the NumPy path's, operation by operation
(σ(x) = ½·tanh(½x) + ½, which never overflows). Built on first use and cached per dtype; CuPy is
imported only then. Only the forward is fused: the backward is written with differentiable
Tensor ops, so double backward keeps working.
"""
from __future__ import annotations

import numpy as np

__all__ = ["lstm_gates", "gru_gates", "LSTM_BODY", "GRU_BODY"]

# i indexes the (B, H) outputs; gates are (B, 4H) in PyTorch's order (i, f, g, o)
LSTM_BODY = """
long b = i / hs;
long base = b * 4 * hs + (i - b * hs);
const T half = 0.5;
T in_g = tanh(gates[base] * half) * half + half;
T forget_g = tanh(gates[base + hs] * half) * half + half;
T cell_g = tanh(gates[base + 2 * hs]);
T out_g = tanh(gates[base + 3 * hs] * half) * half + half;
c = forget_g * c_prev + in_g * cell_g;
h = out_g * tanh(c);
"""

# gi = x W_ihᵀ + b_ih and gh = h W_hhᵀ + b_hh, each (B, 3H) in PyTorch's order (r, z, n)
GRU_BODY = """
long b = i / hs;
long base = b * 3 * hs + (i - b * hs);
const T half = 0.5;
T r = tanh((gi[base] + gh[base]) * half) * half + half;
T z = tanh((gi[base + hs] + gh[base + hs]) * half) * half + half;
T n = tanh(gi[base + 2 * hs] + r * gh[base + 2 * hs]);
h = n + z * (h_prev - n);
"""

# (inputs, outputs) of each kernel, in CuPy's ElementwiseKernel notation
SIGNATURES = {
    "lstm": ("raw T gates, T c_prev, int64 hs", "T h, T c", LSTM_BODY),
    "gru": ("raw T gi, raw T gh, T h_prev, int64 hs", "T h", GRU_BODY),
}

_kernels: dict = {}


def _kernel(name: str):
    kernel = _kernels.get(name)
    if kernel is None:
        import cupy  # only here: never at import time

        ins, outs, body = SIGNATURES[name]
        # --fmad=false: NumPy rounds each product before the sum; an FMA would change last bits
        kernel = _kernels[name] = cupy.ElementwiseKernel(ins, outs, body, name=f"avila_ml_{name}_gates",
                                                         options=("--fmad=false",))
    return kernel


def _check(name, *arrays):
    dtype = arrays[0].dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: the fused CUDA gate kernel supports float32 and float64, got {dtype}")


def lstm_gates(gates, c_prev):
    """One LSTM step's gate math on CuPy arrays, one kernel launch: ``(gates (B, 4H), c_prev
    (B, H)) -> (h, c)``.

    Math (gates in PyTorch's order i, f, g, o): c = σ(f)·c_prev + σ(i)·tanh(g);
    h = σ(o)·tanh(c). The forward of the LSTM cell inside ``torch.nn.LSTM`` (PyTorch fuses it
    likewise, ``_thnn_fused_lstm_cell``).

    Example (needs a GPU):

    >>> import cupy  # doctest: +SKIP
    >>> h, c = lstm_gates(cupy.zeros((1, 8)), cupy.ones((1, 2)))  # doctest: +SKIP
    >>> c   # σ(0)·1 + σ(0)·tanh(0)  # doctest: +SKIP
    array([[0.5, 0.5]])
    """
    import cupy

    _check("lstm_gates", gates, c_prev)
    gates = cupy.ascontiguousarray(gates)
    hs = c_prev.shape[-1]
    h = cupy.empty(c_prev.shape, dtype=c_prev.dtype)
    c = cupy.empty(c_prev.shape, dtype=c_prev.dtype)
    with gates.device:
        _kernel("lstm")(gates, c_prev, hs, h, c)
    return h, c


def gru_gates(gi, gh, h_prev):
    """One GRU step's gate math on CuPy arrays, one kernel launch: ``(gi, gh (B, 3H), h_prev
    (B, H)) -> h``.

    Math (order r, z, n): r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r·gh_n),
    h = n + z·(h_prev - n). The forward of the GRU cell inside ``torch.nn.GRU`` (PyTorch's
    ``_thnn_fused_gru_cell``).

    Example (needs a GPU):

    >>> import cupy  # doctest: +SKIP
    >>> gru_gates(cupy.zeros((1, 6)), cupy.zeros((1, 6)), cupy.ones((1, 2)))  # z = ½, n = 0  # doctest: +SKIP
    array([[0.5, 0.5]])
    """
    import cupy

    _check("gru_gates", gi, gh, h_prev)
    gi, gh = cupy.ascontiguousarray(gi), cupy.ascontiguousarray(gh)
    h = cupy.empty(h_prev.shape, dtype=h_prev.dtype)
    with gi.device:
        _kernel("gru")(gi, gh, h_prev, h_prev.shape[-1], h)
    return h
