"""A whole recurrent layer, one direction, through oneDNN's RNN primitives -- ``lstm``,
``lbr_gru`` (PyTorch's GRU) and ``vanilla_rnn`` (tanh or ReLU) forward and backward: float32
NumPy arrays, every sequence of the batch the same length, no LSTM projection.

PyTorch runs a recurrent layer on the CPU the same way (``aten::mkldnn_rnn_layer``): one call
for all time steps, the gate math fused with the recurrent GEMMs, and a workspace kept from the
training forward (the gates and states of every step) for the backward.

Layouts (oneDNN's names; ``L = D = 1``: one layer, one direction per call; ``G`` gates):

- ``src_layer``/``dst_layer`` ``(T, N, C)`` time-major rows, as ``ops/recurrent.py`` holds them;
- ``src_iter``/``dst_iter`` (and the LSTM's ``src_iter_c``/``dst_iter_c``) ``(1, 1, N, H)``:
  h0, h_n (c0, c_n);
- ``weights_layer`` ``(1, 1, I, G, H)`` and ``weights_iter`` ``(1, 1, H, G, H)``: PyTorch's
  ``w_ih`` ``(G·H, I)`` and ``w_hh`` ``(G·H, H)`` ARE these tensors in oneDNN's ``ldgoi`` order
  (strides ``(G·H·I, G·H·I, 1, H·I, I)``), so they are described in place. The LSTM's gate order
  is the same in both libraries (PyTorch's i, f, g, o = oneDNN's i, f, c~, o); the GRU's is not
  (PyTorch r, z, n; oneDNN u, r, o with u = z), so its gate blocks are permuted (a copy). The
  tests check both against ``torch.nn``. The primitives pick their own weight layouts
  (``format_any``), and a reorder per call converts (the forward wants ``ldigo``; the backward
  reads ``ldgoi`` and writes the weight gradients as ``ldigo``, converted back);
- ``bias`` ``(1, 1, G', H)``: ``b_ih + b_hh`` (G' = G), except the GRU's 4 rows
  ``(b_iz + b_hz, b_ir + b_hr, b_in, b_hn)`` (``b_hn`` sits inside ``r·(h W_hnᵀ + b_hn)``).

The weight reorders run on every call and are not cached per weight version: in training the
weights change at every step, and an (800, 200) reorder is a few microseconds next to the layer.

``right2left`` runs the reverse direction of a bidirectional layer on the same arrays. oneDNN
accumulates weight gradients into its output buffers, so they are zeroed first.
"""
from __future__ import annotations

import ctypes
import warnings

import numpy as np

from . import _dnnl as D
from ._prim import Executor, PlanCache, _attr, _Desc, _Prim, impl_name

__all__ = ["layer_forward", "layer_backward", "plan", "cache_info", "clear_cache", "CACHE_SIZE"]

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


def _weights_desc(lib, n_in, hidden, gates):
    """PyTorch's ``(G·H, n_in)`` weight as oneDNN's ``(1, 1, n_in, G, H)`` in ``ldgoi`` order."""
    g = gates * hidden * n_in
    return _StridedDesc(lib, (1, 1, n_in, gates, hidden), (g, g, 1, hidden * n_in, n_in))


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


# per cell kind: the number of gates, of bias rows, whether it has a cell state, and the C calls
_CELLS = {
    "lstm": (4, 4, True, "lstm"),
    "gru": (3, 4, False, "lbr_gru"),  # the 4th bias row is b_hn, applied inside r·(h W_hnᵀ + b_hn)
    "rnn_tanh": (1, 1, False, "vanilla_rnn"),
    "rnn_relu": (1, 1, False, "vanilla_rnn"),
}
_ACTIVATION = {"rnn_tanh": D.ELTWISE_TANH, "rnn_relu": D.ELTWISE_RELU}


class _Plan(Executor):
    """The forward (training or inference) and, for training, the backward primitive of one
    recurrent layer-direction (``cell``: "lstm", "gru", "rnn_tanh", "rnn_relu") for one set of
    sizes, with their weight reorders. Arrays are in oneDNN's gate order (see ``_to_onednn``)."""

    def __init__(self, lib, cell, T, N, I, H, reverse, training):  # noqa: E741 - I is the input size
        self.lib, self.cell, self.training = lib, cell, training
        G, GB, self.has_c, fn = _CELLS[cell]
        st = (1, 1, N, H)
        u = {"x": _Desc(lib, (T, N, I)), "h0": _Desc(lib, st), "w_ih": _weights_desc(lib, I, H, G),
             "w_hh": _weights_desc(lib, H, H, G), "b": _Desc(lib, (1, 1, GB, H)), "y": _Desc(lib, (T, N, H)),
             "hn": _Desc(lib, st)}
        if self.has_c:
            u["c0"], u["cn"] = _Desc(lib, st), _Desc(lib, st)
        self.user = u
        anys = [_Desc(lib, (1, 1, n, G, H), any_format=True) for n in (I, H, I, H)]
        direction = D.RNN_RIGHT2LEFT if reverse else D.RNN_LEFT2RIGHT
        # the argument lists of the C calls: (prop_kind, [activation], direction), mds, (flags, [alpha, beta])
        pre = (lambda prop: (prop, _ACTIVATION[cell], direction)) if fn == "vanilla_rnn" else \
            (lambda prop: (prop, direction))
        post = (0, 0.0, 0.0) if fn == "vanilla_rnn" else (0,)
        data = self._mds(u, anys[0], anys[1])
        attr = _attr(lib)
        try:
            pd = ctypes.c_void_p()
            lib.call(f"dnnl_{fn}_forward_primitive_desc_create", ctypes.byref(pd), lib.engine,
                     *pre(D.FORWARD_TRAINING if training else D.FORWARD_INFERENCE), *data, *post, attr)
            self.fwd = _Prim(lib, pd)
            self.impl = impl_name(lib, pd)
            self.fwd_w = [_Inner(lib, pd, D.ARG_WEIGHTS_LAYER, u["w_ih"], False, attr),
                          _Inner(lib, pd, D.ARG_WEIGHTS_ITER, u["w_hh"], False, attr)]
            self.ws = self.bwd = None
            if not training:
                return
            self.ws = _Desc(lib, (1,), clone_of=lib.fn("dnnl_primitive_desc_query_md")(pd, D.QUERY_WORKSPACE_MD, 0))
            bpd = ctypes.c_void_p()
            lib.call(f"dnnl_{fn}_backward_primitive_desc_create", ctypes.byref(bpd), lib.engine, *pre(D.BACKWARD),
                     *data, *self._mds(u, anys[2], anys[3]), *post, pd, attr)
            self.bwd = _Prim(lib, bpd)
            self.bwd_impl = impl_name(lib, bpd)
            self.bwd_w = [_Inner(lib, bpd, D.ARG_WEIGHTS_LAYER, u["w_ih"], False, attr),
                          _Inner(lib, bpd, D.ARG_WEIGHTS_ITER, u["w_hh"], False, attr)]
            self.bwd_dw = [_Inner(lib, bpd, D.ARG_DIFF_WEIGHTS_LAYER, u["w_ih"], True, attr),
                           _Inner(lib, bpd, D.ARG_DIFF_WEIGHTS_ITER, u["w_hh"], True, attr)]
        finally:
            lib.fn("dnnl_primitive_attr_destroy")(attr)

    def _mds(self, u, w_ih, w_hh):
        """The memory descriptors of a primitive-descriptor call in the C API's order (the LSTM's
        peephole and projection absent)."""
        if self.has_c:
            return (u["x"].h, u["h0"].h, u["c0"].h, w_ih.h, w_hh.h, None, None, u["b"].h, u["y"].h, u["hn"].h,
                    u["cn"].h)
        return (u["x"].h, u["h0"].h, w_ih.h, w_hh.h, u["b"].h, u["y"].h, u["hn"].h)

    def _check(self, arrays, outputs=()):
        for role, a in arrays.items():
            if a is None and not self.has_c and role in ("c0", "cn", "dc0", "dcn"):
                continue
            kind = "output" if role in outputs else "input"
            D.check_buffer(a, _F32, self.user[role[1:] if role[0] == "d" else role].nbytes,
                           f"{kind} {role} of the oneDNN {self.cell.upper()}")

    def _states(self, pairs):
        """[(arg, role, array)] of the hidden (and cell) states, with their descriptors."""
        return [(arg, self.user[role].h, a) for arg, role, a in pairs if a is not None]

    def forward(self, x, h0, c0, w_ih, w_hh, b):
        """``(y, h_n, c_n, workspace)``: ``c_n`` None without a cell state, workspace None for
        an inference plan."""
        T, N, _ = self.user["x"].shape
        H = self.user["y"].shape[2]
        y, hn = np.empty((T, N, H), _F32), np.empty((N, H), _F32)
        cn = np.empty((N, H), _F32) if self.has_c else None
        self._check({"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "b": b, "y": y, "hn": hn, "cn": cn},
                    ("y", "hn", "cn"))
        u = self.user
        before, after = [], []
        args = self._states([(D.ARG_SRC_LAYER, "x", x), (D.ARG_SRC_ITER, "h0", h0), (D.ARG_SRC_ITER_C, "c0", c0)])
        args += [self.fwd_w[0].bind(w_ih, before, after), self.fwd_w[1].bind(w_hh, before, after),
                 (D.ARG_BIAS, u["b"].h, b)]
        args += self._states([(D.ARG_DST_LAYER, "y", y), (D.ARG_DST_ITER, "hn", hn), (D.ARG_DST_ITER_C, "cn", cn)])
        ws = None
        if self.training:
            ws = D.aligned_empty(self.ws.nbytes, np.uint8)
            args.append((D.ARG_WORKSPACE, self.ws.h, ws))
        self._run_all(before + [(self.fwd, args)] + after)
        return y, hn, cn, ws

    def backward(self, x, h0, c0, w_ih, w_hh, b, y, hn, cn, ws, dy, dhn, dcn):
        """``(dx, dh0, dc0, dw_ih, dw_hh, db)`` (``dc0`` None without a cell state) from the
        forward's arrays and workspace."""
        dx, dh0 = np.empty(x.shape, _F32), np.empty(h0.shape, _F32)
        dc0 = np.empty(c0.shape, _F32) if self.has_c else None
        dw_ih, dw_hh, db = np.empty(w_ih.shape, _F32), np.empty(w_hh.shape, _F32), np.zeros(b.shape, _F32)
        self._check({"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "b": b, "y": y, "hn": hn, "cn": cn,
                     "dy": dy, "dhn": dhn, "dcn": dcn, "dx": dx, "dh0": dh0, "dc0": dc0, "dw_ih": dw_ih,
                     "dw_hh": dw_hh, "db": db}, ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db"))
        D.check_buffer(ws, np.uint8, self.ws.nbytes, f"input workspace of the oneDNN {self.cell.upper()} backward")
        u = self.user
        before, after = [], []
        args = self._states([(D.ARG_SRC_LAYER, "x", x), (D.ARG_SRC_ITER, "h0", h0), (D.ARG_SRC_ITER_C, "c0", c0)])
        args += [self.bwd_w[0].bind(w_ih, before, after), self.bwd_w[1].bind(w_hh, before, after),
                 (D.ARG_BIAS, u["b"].h, b), (D.ARG_WORKSPACE, self.ws.h, ws)]
        args += self._states([
            (D.ARG_DST_LAYER, "y", y), (D.ARG_DST_ITER, "hn", hn), (D.ARG_DST_ITER_C, "cn", cn),
            (D.ARG_DIFF_DST_LAYER, "y", dy), (D.ARG_DIFF_DST_ITER, "hn", dhn), (D.ARG_DIFF_DST_ITER_C, "cn", dcn),
            (D.ARG_DIFF_SRC_LAYER, "x", dx), (D.ARG_DIFF_SRC_ITER, "h0", dh0), (D.ARG_DIFF_SRC_ITER_C, "c0", dc0)])
        # oneDNN adds the weight and bias gradients to these buffers: they start at zero
        args += [self.bwd_dw[0].bind(dw_ih, before, after, zero=True),
                 self.bwd_dw[1].bind(dw_hh, before, after, zero=True), (D.ARG_DIFF_BIAS, u["b"].h, db)]
        self._run_all(before + [(self.bwd, args)] + after)
        return dx, dh0, dc0, dw_ih, dw_hh, db


_REFUSED = object()  # cached in place of a plan oneDNN would not build


def plan(cell, T, N, n_in, hidden, reverse, training):
    """The cached plan for this cell kind and these sizes, or None without oneDNN or where it
    refuses to build one (announced once per shape with ``warnings``; the caller then runs
    its step loop)."""
    lib = D.load()
    if lib is None:
        return None
    key = (cell, int(T), int(N), int(n_in), int(hidden), bool(reverse), bool(training))
    p = _cache.get(key, lambda: _build(lib, key))
    return None if p is _REFUSED else p


def _build(lib, key):
    try:
        return _Plan(lib, *key)
    except D.DnnlError as exc:
        warnings.warn(f"avila_ml: oneDNN could not build the {key[0].upper()} layer (T, N, input, hidden) = "
                      f"{key[1:5]} ({exc}); it runs as a loop over time steps", RuntimeWarning, stacklevel=4)
        return _REFUSED


# -- PyTorch's parameters <-> oneDNN's ------------------------------------------------------------
# PyTorch's GRU gates are (r, z, n); oneDNN's lbr_gru gates are (u, r, o) with u = z and o = n, and
# its 4th bias row is PyTorch's b_hn. LSTM (i, f, g, o) and the vanilla RNN need no permutation.
_GRU_ORDER = [1, 0, 2]


def _gates(w, cell):
    """A ``(G·H, ·)`` weight (or ``(G·H,)`` bias) of PyTorch in oneDNN's gate order, contiguous."""
    if cell != "gru":
        return np.ascontiguousarray(w, dtype=_F32)
    return np.ascontiguousarray(w.reshape((3, -1) + w.shape[1:])[_GRU_ORDER].reshape(w.shape), dtype=_F32)


def _bias(cell, b_ih, b_hh, hidden):
    """oneDNN's ``(rows, H)`` bias from PyTorch's ``b_ih``, ``b_hh`` (either may be None)."""
    G, GB = _CELLS[cell][:2]
    zero = np.zeros(G * hidden, _F32)
    bi = _gates(b_ih, cell) if b_ih is not None else zero
    bh = _gates(b_hh, cell) if b_hh is not None else zero
    if cell != "gru":
        return (bi + bh).reshape(GB, hidden)
    b = np.empty((GB, hidden), _F32)
    b[:2] = (bi + bh).reshape(G, hidden)[:2]  # u and r: the sums
    b[2], b[3] = bi[2 * hidden:], bh[2 * hidden:]  # b_in outside r·(), b_hn inside
    return b


def layer_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=False, training=True):
    """One recurrent layer-direction over a whole sequence with PyTorch's parameters: ``x``
    ``(T, N, I)``, ``h0``/``c0`` ``(N, H)`` (``c0`` None unless LSTM), ``w_ih`` ``(G·H, I)``,
    ``w_hh`` ``(G·H, H)``, ``b_ih``/``b_hh`` ``(G·H,)`` or None, float32. Returns ``(y (T, N, H),
    h_n, c_n, saved)``: ``c_n`` None unless LSTM, ``saved`` what :func:`layer_backward` needs
    (None when not ``training``), or None without oneDNN."""
    T, N, n_in = x.shape
    hidden = h0.shape[1]
    p = plan(cell, T, N, n_in, hidden, reverse, training)
    if p is None:
        return None
    c = (lambda a: None if a is None else np.ascontiguousarray(a, dtype=_F32))
    arrays = (c(x), c(h0), c(c0), _gates(w_ih, cell), _gates(w_hh, cell), _bias(cell, b_ih, b_hh, hidden))
    y, hn, cn, ws = p.forward(*arrays)
    return y, hn, cn, ((p,) + arrays + (y, hn, cn, ws) if training else None)


def layer_backward(cell, saved, dy, dhn, dcn):
    """The gradients ``(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)`` of :func:`layer_forward`
    (PyTorch's layouts; ``dc0`` None unless LSTM) from its ``saved`` and the gradients of ``y``,
    ``h_n`` and ``c_n`` (``dcn`` None unless LSTM)."""
    p, *arrays = saved
    c = (lambda a: None if a is None else np.ascontiguousarray(a, dtype=_F32))
    dx, dh0, dc0, dw_ih, dw_hh, db = p.backward(*arrays, c(dy), c(dhn), c(dcn))
    hidden = dh0.shape[1]
    if cell != "gru":
        db = db.reshape(-1)
        return dx, dh0, dc0, dw_ih, dw_hh, db, db.copy()
    back = np.argsort(_GRU_ORDER)
    dw_ih, dw_hh = (_gates_back(g, back) for g in (dw_ih, dw_hh))
    db_ih = np.concatenate([db[1], db[0], db[2]])
    db_hh = np.concatenate([db[1], db[0], db[3]])
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


def _gates_back(w, order):
    return np.ascontiguousarray(w.reshape((3, -1) + w.shape[1:])[order].reshape(w.shape))


def cache_info() -> dict:
    """``{"size": plans cached, "capacity": CACHE_SIZE}``."""
    return _cache.info()


def clear_cache() -> None:
    """Drop every cached plan (their JIT code is freed when no call uses them)."""
    _cache.clear()
