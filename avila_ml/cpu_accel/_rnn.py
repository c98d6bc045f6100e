"""A whole LSTM layer, one direction, through oneDNN's ``lstm_forward``/``lstm_backward``
primitives: float32 NumPy arrays, every sequence of the batch the same length, no projection.

PyTorch runs an LSTM layer on the CPU the same way (``aten::mkldnn_rnn_layer``): one call for
all time steps, the gate math fused with the recurrent GEMMs, and a workspace kept from the
training forward (the gates and states of every step) for the backward.

Layouts (oneDNN's names; ``L = D = 1``: one layer, one direction per call):

- ``src_layer``/``dst_layer`` ``(T, N, C)`` time-major rows, as ``ops/recurrent.py`` holds them;
- ``src_iter``/``src_iter_c``/``dst_iter``/``dst_iter_c`` ``(1, 1, N, H)``: h0, c0, h_n, c_n;
- ``weights_layer`` ``(1, 1, I, 4, H)`` and ``weights_iter`` ``(1, 1, H, 4, H)``: PyTorch's
  ``w_ih`` ``(4H, I)`` and ``w_hh`` ``(4H, H)`` ARE these tensors in oneDNN's ``ldgoi`` order
  (strides ``(4HI, 4HI, 1, HI, I)``), so they are described in place, not copied; the gate order
  is the same in both libraries (PyTorch's i, f, g, o = oneDNN's i, f, c~, o; the tests check it
  against ``torch.nn.LSTM``). The primitives pick their own weight layouts (``format_any``), and a
  reorder per call converts (the forward wants ``ldigo``; the backward reads the weights as
  ``ldgoi`` and writes their gradients as ``ldigo``, converted back);
- ``bias`` ``(1, 1, 4, H)``: ``b_ih + b_hh`` (oneDNN has one bias; its gradient is both's).

The weight reorders run on every call and are not cached per weight version: in training the
weights change at every step, and a (800, 200) reorder is a few microseconds next to the layer.

``right2left`` runs the reverse direction of a bidirectional layer on the same arrays. oneDNN
accumulates weight gradients into its output buffers, so they are zeroed first.
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import _dnnl as D
from ._prim import Executor, PlanCache, _attr, _Desc, _Prim, impl_name

__all__ = ["lstm_forward", "lstm_backward", "cache_info", "clear_cache", "CACHE_SIZE"]

CACHE_SIZE = 32  # plans kept (LRU): each holds the JIT code of a forward and a backward primitive
_cache = PlanCache(lambda: CACHE_SIZE)
_F32 = np.dtype(np.float32)


class _StridedDesc(_Desc):
    """An owned float32 memory descriptor with explicit strides (PyTorch's weights seen in
    oneDNN's 5-d ``ldgoi`` order without a copy)."""

    def __init__(self, lib, shape, strides):  # noqa: D107 - see the class
        self.lib = lib
        self.shape = tuple(int(n) for n in shape)
        self.h = ctypes.c_void_p()
        lib.call("dnnl_memory_desc_create_with_strides", ctypes.byref(self.h), len(self.shape),
                 D.Dims(*self.shape), D.F32, D.Dims(*strides))
        self.nbytes = int(lib.fn("dnnl_memory_desc_get_size")(self.h))


def _weights_desc(lib, n_in, hidden):
    """PyTorch's ``(4H, n_in)`` weight as oneDNN's ``(1, 1, n_in, 4, H)`` in ``ldgoi`` order."""
    g = 4 * hidden * n_in
    return _StridedDesc(lib, (1, 1, n_in, 4, hidden), (g, g, 1, hidden * n_in, n_in))


class _Inner:
    """One argument of a primitive whose layout oneDNN chose: its descriptor (cloned from the
    query) and the reorder from (input) or to (output) the user's plain array; ``reorder`` is None
    when the layouts agree."""

    def __init__(self, lib, pd, arg, user, out, attr):
        md = lib.fn("dnnl_primitive_desc_query_md")(pd, D.QUERY_EXEC_ARG_MD, arg)
        self.arg, self.user, self.out = arg, user, out
        if lib.fn("dnnl_memory_desc_equal")(md, user.h):
            self.reorder, self.desc = None, None
            return
        self.desc = _Desc(lib, user.shape, clone_of=md)
        src, dst = (self.desc.h, user.h) if out else (user.h, self.desc.h)
        rpd = ctypes.c_void_p()
        lib.call("dnnl_reorder_primitive_desc_create", ctypes.byref(rpd), src, lib.engine, dst, lib.engine, attr)
        self.reorder = _Prim(lib, rpd)

    def bind(self, a, before, after, zero=False):
        """The (arg, md, buffer) of the primitive call for the user array ``a``, queueing the
        reorders; ``zero``: the primitive accumulates into it, so it starts at zero."""
        if self.reorder is None:
            if zero:
                a[...] = 0
            return (self.arg, self.user.h, a)
        buf = D.aligned_empty(self.desc.nbytes, np.uint8)
        if zero:
            buf[...] = 0
        if self.out:
            after.append((self.reorder, [(D.ARG_FROM, self.desc.h, buf), (D.ARG_TO, self.user.h, a)]))
        else:
            before.append((self.reorder, [(D.ARG_FROM, self.user.h, a), (D.ARG_TO, self.desc.h, buf)]))
        return (self.arg, self.desc.h, buf)


class _LSTMPlan(Executor):
    """The forward (training or inference) and, for training, the backward primitive of one
    LSTM layer-direction for one set of sizes, with their weight reorders."""

    def __init__(self, lib, T, N, I, H, reverse, training):  # noqa: E741 - I is the input size
        self.lib, self.training = lib, training
        st = (1, 1, N, H)
        u = {"x": _Desc(lib, (T, N, I)), "h0": _Desc(lib, st), "c0": _Desc(lib, st),
             "w_ih": _weights_desc(lib, I, H), "w_hh": _weights_desc(lib, H, H), "b": _Desc(lib, (1, 1, 4, H)),
             "y": _Desc(lib, (T, N, H)), "hn": _Desc(lib, st), "cn": _Desc(lib, st)}
        self.user = u
        any_ih = _Desc(lib, (1, 1, I, 4, H), any_format=True)
        any_hh = _Desc(lib, (1, 1, H, 4, H), any_format=True)
        direction = D.RNN_RIGHT2LEFT if reverse else D.RNN_LEFT2RIGHT
        data = (u["x"].h, u["h0"].h, u["c0"].h, any_ih.h, any_hh.h, None, None, u["b"].h,
                u["y"].h, u["hn"].h, u["cn"].h)
        attr = _attr(lib)
        try:
            pd = ctypes.c_void_p()
            lib.call("dnnl_lstm_forward_primitive_desc_create", ctypes.byref(pd), lib.engine,
                     D.FORWARD_TRAINING if training else D.FORWARD_INFERENCE, direction, *data, 0, attr)
            self.fwd = _Prim(lib, pd)
            self.impl = impl_name(lib, pd)
            self.fwd_w = [_Inner(lib, pd, D.ARG_WEIGHTS_LAYER, u["w_ih"], False, attr),
                          _Inner(lib, pd, D.ARG_WEIGHTS_ITER, u["w_hh"], False, attr)]
            self.ws = None
            self.bwd = None
            if not training:
                return
            self.ws = _Desc(lib, (1,), clone_of=lib.fn("dnnl_primitive_desc_query_md")(pd, D.QUERY_WORKSPACE_MD, 0))
            any_dih = _Desc(lib, (1, 1, I, 4, H), any_format=True)
            any_dhh = _Desc(lib, (1, 1, H, 4, H), any_format=True)
            bpd = ctypes.c_void_p()
            diffs = (u["x"].h, u["h0"].h, u["c0"].h, any_dih.h, any_dhh.h, None, None, u["b"].h,
                     u["y"].h, u["hn"].h, u["cn"].h)
            lib.call("dnnl_lstm_backward_primitive_desc_create", ctypes.byref(bpd), lib.engine, D.BACKWARD,
                     direction, *data, *diffs, 0, pd, attr)
            self.bwd = _Prim(lib, bpd)
            self.bwd_impl = impl_name(lib, bpd)
            self.bwd_w = [_Inner(lib, bpd, D.ARG_WEIGHTS_LAYER, u["w_ih"], False, attr),
                          _Inner(lib, bpd, D.ARG_WEIGHTS_ITER, u["w_hh"], False, attr)]
            self.bwd_dw = [_Inner(lib, bpd, D.ARG_DIFF_WEIGHTS_LAYER, u["w_ih"], True, attr),
                           _Inner(lib, bpd, D.ARG_DIFF_WEIGHTS_ITER, u["w_hh"], True, attr)]
        finally:
            lib.fn("dnnl_primitive_attr_destroy")(attr)

    def _check(self, arrays, outputs=()):
        for role, a in arrays.items():
            kind = "output" if role in outputs else "input"
            D.check_buffer(a, _F32, self.user[role[1:] if role[0] == "d" else role].nbytes, f"{kind} {role} of the oneDNN LSTM")

    def forward(self, x, h0, c0, w_ih, w_hh, b):
        """``(y, h_n, c_n, workspace)`` (workspace None for an inference plan)."""
        T, N, _ = self.user["x"].shape
        H = self.user["y"].shape[2]
        y = np.empty((T, N, H), _F32)
        hn, cn = np.empty((N, H), _F32), np.empty((N, H), _F32)
        self._check({"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "b": b, "y": y, "hn": hn, "cn": cn},
                    ("y", "hn", "cn"))
        u = self.user
        before, after = [], []
        args = [(D.ARG_SRC_LAYER, u["x"].h, x), (D.ARG_SRC_ITER, u["h0"].h, h0), (D.ARG_SRC_ITER_C, u["c0"].h, c0),
                self.fwd_w[0].bind(w_ih, before, after), self.fwd_w[1].bind(w_hh, before, after),
                (D.ARG_BIAS, u["b"].h, b), (D.ARG_DST_LAYER, u["y"].h, y), (D.ARG_DST_ITER, u["hn"].h, hn),
                (D.ARG_DST_ITER_C, u["cn"].h, cn)]
        ws = None
        if self.training:
            ws = D.aligned_empty(self.ws.nbytes, np.uint8)
            args.append((D.ARG_WORKSPACE, self.ws.h, ws))
        self._run_all(before + [(self.fwd, args)] + after)
        return y, hn, cn, ws

    def backward(self, x, h0, c0, w_ih, w_hh, b, y, hn, cn, ws, dy, dhn, dcn):
        """``(dx, dh0, dc0, dw_ih, dw_hh, db)`` from the forward's arrays and workspace."""
        dx, dh0, dc0 = np.empty(x.shape, _F32), np.empty(h0.shape, _F32), np.empty(c0.shape, _F32)
        dw_ih, dw_hh, db = np.empty(w_ih.shape, _F32), np.empty(w_hh.shape, _F32), np.zeros(b.shape, _F32)
        self._check({"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "b": b, "y": y, "hn": hn, "cn": cn,
                     "dy": dy, "dhn": dhn, "dcn": dcn, "dx": dx, "dh0": dh0, "dc0": dc0, "dw_ih": dw_ih,
                     "dw_hh": dw_hh, "db": db}, ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db"))
        D.check_buffer(ws, np.uint8, self.ws.nbytes, "input workspace of the oneDNN LSTM backward")
        u = self.user
        before, after = [], []
        args = [(D.ARG_SRC_LAYER, u["x"].h, x), (D.ARG_SRC_ITER, u["h0"].h, h0), (D.ARG_SRC_ITER_C, u["c0"].h, c0),
                self.bwd_w[0].bind(w_ih, before, after), self.bwd_w[1].bind(w_hh, before, after),
                (D.ARG_BIAS, u["b"].h, b), (D.ARG_DST_LAYER, u["y"].h, y), (D.ARG_DST_ITER, u["hn"].h, hn),
                (D.ARG_DST_ITER_C, u["cn"].h, cn), (D.ARG_WORKSPACE, self.ws.h, ws),
                (D.ARG_DIFF_DST_LAYER, u["y"].h, dy), (D.ARG_DIFF_DST_ITER, u["hn"].h, dhn),
                (D.ARG_DIFF_DST_ITER_C, u["cn"].h, dcn),
                (D.ARG_DIFF_SRC_LAYER, u["x"].h, dx), (D.ARG_DIFF_SRC_ITER, u["h0"].h, dh0),
                (D.ARG_DIFF_SRC_ITER_C, u["c0"].h, dc0),
                # oneDNN adds the weight gradients to these buffers: they start at zero
                self.bwd_dw[0].bind(dw_ih, before, after, zero=True),
                self.bwd_dw[1].bind(dw_hh, before, after, zero=True),
                (D.ARG_DIFF_BIAS, u["b"].h, db)]
        self._run_all(before + [(self.bwd, args)] + after)
        return dx, dh0, dc0, dw_ih, dw_hh, db


def plan(T, N, n_in, hidden, reverse, training):
    """The cached plan for these sizes, or None without oneDNN."""
    lib = D.load()
    if lib is None:
        return None
    key = (int(T), int(N), int(n_in), int(hidden), bool(reverse), bool(training))
    return _cache.get(key, lambda: _LSTMPlan(lib, *key))


def lstm_forward(x, h0, c0, w_ih, w_hh, bias, reverse=False, training=True):
    """One LSTM layer-direction over a whole sequence: ``x`` ``(T, N, I)``, ``h0``/``c0``
    ``(N, H)``, ``w_ih`` ``(4H, I)``, ``w_hh`` ``(4H, H)``, ``bias`` ``(4H,)`` (``b_ih + b_hh``),
    all C-contiguous float32. Returns ``(y (T, N, H), h_n, c_n, workspace)`` (workspace None when
    not ``training``), or None without oneDNN."""
    T, N, n_in = x.shape
    p = plan(T, N, n_in, h0.shape[1], reverse, training)
    if p is None:
        return None
    return p.forward(x, h0, c0, w_ih, w_hh, bias)


def lstm_backward(x, h0, c0, w_ih, w_hh, bias, y, hn, cn, ws, dy, dhn, dcn, reverse=False):
    """The gradients ``(dx, dh0, dc0, dw_ih, dw_hh, dbias)`` of :func:`lstm_forward` (training)
    from its inputs, outputs and workspace and the output gradients ``dy``, ``dh_n``, ``dc_n``."""
    T, N, n_in = x.shape
    p = plan(T, N, n_in, h0.shape[1], reverse, True)
    return p.backward(x, h0, c0, w_ih, w_hh, bias, y, hn, cn, ws, dy, dhn, dcn)


def cache_info() -> dict:
    """``{"size": plans cached, "capacity": CACHE_SIZE}``."""
    return _cache.info()


def clear_cache() -> None:
    """Drop every cached LSTM plan (their JIT code is freed when no call uses them)."""
    _cache.clear()
