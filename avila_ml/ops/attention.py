"""Scaled dot-product attention: a memory-efficient blocked forward and backward in one Function.

``softmax(Q K^T * scale + mask) V`` is computed FlashAttention-style: a few (batch, head) pairs
at a time, queries a block of rows at a time and keys a block of columns at a time, with an
online (running) softmax, so only one tile of the L x S score matrix exists at any moment. The
forward keeps the output and the row log-sum-exp; the backward recomputes each score tile from
them (FlashAttention-2, Dao 2023, algorithm 2). On CUDA the fused kernels of
``avila_ml.cuda_kernels`` replace the blocked ``xp`` loop; that choice is made in one place,
:meth:`_BlockedAttention.forward`.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ..autograd.function import Function
from ..amp.autocast_mode import autocast_op
from .._grad_state import state as _grad_state
from ..backends.constants import device_constant
from ..backends import backend_of
from ..backends.philox import dropout_counters, dropout_keep
from ..tensor import Tensor
from . import _attention_fused as _fused, _cpu_threads
from .elementwise import sum_to, where
from .linalg import matmul
from .reduction import softmax
from .shape import expand, reshape, unsqueeze

__all__ = ["scaled_dot_product_attention"]

# Tile sizes of the blocked path, tuned with benchmarks/bench_attention.py on a 2-core x86
# machine. A tile is (batch chunk, query rows, key columns) with about _TILE_ELEMENTS scores
# (1 MiB in float32: it stays in L2 between the score matmul, the exp and the P V matmul).
# Query blocks have at least _MIN_QUERY_BLOCK rows so the BLAS calls are not skinny; keys up to
# _MAX_KEY_BLOCK long are one block (a plain softmax), longer ones are cut into _KEY_BLOCK
# columns with the online softmax; what is left of the budget goes to (batch, head) pairs.
_TILE_ELEMENTS = 1 << 18
_MIN_QUERY_BLOCK = 256
_MAX_KEY_BLOCK = 2048
_KEY_BLOCK = 512

_CUDA_MAX_HEAD_DIM = 128
_CUDA_MAX_HEAD_DIM_FLOAT16 = 256  # float16 runs on the tensor-core kernels (attention_mma.cu)
_cuda_unavailable_warned = []


def _block_sizes(batch: int, L: int, S: int) -> tuple[int, int, int]:
    """(batch chunk, query rows, key columns) of one tile for ``batch`` (L, S) problems."""
    bk = max(1, S if S <= _MAX_KEY_BLOCK else _KEY_BLOCK)
    bq = max(1, min(L, max(_MIN_QUERY_BLOCK, _TILE_ELEMENTS // (max(batch, 1) * bk))))
    bb = max(1, min(batch, _TILE_ELEMENTS // (bq * bk)))
    return bb, bq, bk


class _Batched:
    """An array (bx..., n, d) seen as (Bx, n, d), indexed by the flat position in the full
    broadcast batch shape: ``take(b0, b1)`` gives the rows for batch positions b0:b1."""

    def __init__(self, a, batch: tuple):
        bx = (1,) * (len(batch) - (a.ndim - 2)) + tuple(a.shape[:-2])
        nb = int(np.prod(bx, dtype=np.int64))
        self.array = a.reshape((nb,) + tuple(a.shape[-2:]))
        self.shared = nb == 1 and int(np.prod(batch, dtype=np.int64)) != 1  # one entry for all
        self.index = None  # None: batch position b is entry b
        if not self.shared and bx != tuple(batch):
            # batch position -> entry, an array of a's backend (copied to a GPU once per shape pair)
            self.index = device_constant(backend_of(a), ("attention_batch_index", tuple(bx), tuple(batch)),
                                         lambda: np.broadcast_to(np.arange(nb).reshape(bx), batch).ravel())

    def take(self, b0: int, b1: int, rows=slice(None), cols=slice(None)):
        a = self.array
        if self.shared:
            return a[:, rows, cols]
        if self.index is None:
            return a[b0:b1, rows, cols]
        # slice first, then gather: only the requested tile is copied
        return a[:, rows, cols][self.index[b0:b1]]

    def add_at(self, target, b0: int, b1: int, rows, cols, values) -> None:
        """target[entries of b0:b1, rows, cols] += values, summing batch positions that share one."""
        if self.shared:
            target[:, rows, cols] += values.sum(axis=0, keepdims=True)
        elif self.index is None:
            target[b0:b1, rows, cols] += values
        else:
            view = target[:, rows, cols]
            backend_of(target).index_add(view, 0, self.index[b0:b1], values)


def _mask_slices(mask, i0, i1, j0, j1):
    """Rows and columns of a (B, 1 or L, 1 or S) mask that a tile i0:i1 x j0:j1 reads."""
    return (slice(i0, i1) if mask.shape[-2] != 1 else slice(None),
            slice(j0, j1) if mask.shape[-1] != 1 else slice(None))


def _sum_to_array(a, shape, xp):
    """Sum the array ``a`` down to ``shape`` (the adjoint of broadcasting), on arrays."""
    if a.shape == tuple(shape):
        return a
    lead = a.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and a.shape[i + lead] != 1)
    return xp.ascontiguousarray(a.sum(axis=axes, keepdims=True).reshape(shape))


def _cuda_kernels():
    """The fused CUDA attention kernels, or None (announced once) when they cannot be imported."""
    try:
        from ..cuda_kernels import flash_attention_backward, flash_attention_forward
    except ImportError as e:
        if not _cuda_unavailable_warned:
            _cuda_unavailable_warned.append(True)
            warnings.warn(
                "scaled_dot_product_attention: the fused CUDA attention kernels are unavailable "
                f"({type(e).__name__}: {e}); using the blocked xp path on the GPU", stacklevel=4)
        return None
    return flash_attention_forward, flash_attention_backward


# Parallelism on the CPU: the tiles are independent, so they are shared out among threads
# (NumPy releases the GIL in BLAS and ufunc loops) while BLAS itself is held to one thread:
# this parallelises the exp and the reductions too, and avoids OpenBLAS's spinning worker
# threads, which collapse when the cores are oversubscribed. It needs ``threadpoolctl`` to pin
# BLAS; without it the tiles run one after another on BLAS's own threads.
_PARALLEL_MIN_WORK = 1 << 20  # scores per call below which one thread is faster
_NUM_THREADS = None  # None: the CPUs this process may use


def _num_workers(xp, work: int, units: int) -> int:
    """How many threads to share ``units`` tiles of ``work`` scores among."""
    if xp is not np or work < _PARALLEL_MIN_WORK or units < 2:
        return 1
    n = _NUM_THREADS or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    n = min(int(n or 1), units)
    return n if n > 1 and _cpu_threads.controller() is not None else 1


def _run_parallel(fn, parts) -> None:
    """fn(part) for every part: concurrently with BLAS single-threaded (``ops._cpu_threads``)."""
    _cpu_threads.run_parts(fn, parts)


class _BlockedAttention(Function):
    """softmax(Q K^T scale + mask) V with O(tile) extra memory; the forward and backward of SDPA.

    Tensor arguments: q, k, v and, when it requires grad, the additive float mask. A mask that
    needs no gradient arrives as a plain array (bool: True = take part; float: added).
    ``dropout`` is None or ``(p, seed, offset)``: the keep decision of element (b, i, j) of the
    flat batch b is ``philox.dropout_keep`` at those coordinates, generated tile by tile in the
    forward and again in the backward, never stored for the whole L x S.
    """

    def forward(self, q, k, v, mask, is_causal, scale, mask_is_tensor, dropout=None, kv_group=1):
        xp = backend_of(q).xp
        self.is_causal, self.scale, self.mask_is_tensor = is_causal, scale, mask_is_tensor
        self.dropout = dropout
        self.mask = mask
        self.shapes = (q.shape, k.shape, v.shape)
        # kv_group > 1: k, v hold Hq / kv_group heads that the tensor-core kernels share among
        # query heads themselves (the caller chose it, _tensor_core_gqa); the batch is q's
        self.group = kv_group
        self.batch = tuple(np.broadcast_shapes(q.shape[:-2], _heads_times(k.shape, kv_group)[:-2],
                                               _heads_times(v.shape, kv_group)[:-2],
                                               *(() if mask is None else (mask.shape[:-2],))))
        self.save_inputs(*range(4 if mask_is_tensor else 3))
        self.save_outputs(0)
        max_head_dim = _CUDA_MAX_HEAD_DIM_FLOAT16 if q.dtype == np.float16 else _CUDA_MAX_HEAD_DIM
        self.cuda = (backend_of(q).name == "cupy" and q.shape[-1] == v.shape[-1] <= max_head_dim
                     and q.dtype in (np.float32, np.float16) and not mask_is_tensor
                     and _cuda_kernels() is not None)
        if kv_group > 1 and not (self.cuda and q.dtype == np.float16):
            raise RuntimeError("scaled_dot_product_attention: internal error: un-repeated key/value heads "
                               "reached a path without native grouped-query attention")
        if self.cuda:
            return self._cuda_forward(q, k, v, xp)
        out, self.lse = self._blocked_forward(q, k, v, mask, xp)
        return out

    def backward(self, g):
        saved = self.saved_inputs
        q, k, v = saved[:3]
        if _grad_state.enabled:
            # create_graph=True: the gradients must themselves be differentiable, so they are
            # written with Tensor ops on the composite formula (exact, but O(L S) memory)
            mask = saved[3] if self.mask_is_tensor else (None if self.mask is None else Tensor._wrap(self.mask))
            keep = None
            if self.dropout is not None:
                # the rare double-backward path: the SAME mask, generated whole from the same
                # function (O(L S) memory, like the rest of this exact composite formula)
                keep = Tensor._wrap(self._keep_tile(0, int(np.prod(self.batch, dtype=np.int64)), 0, q.shape[-2],
                                                    0, k.shape[-2], backend_of(q.array).xp, q.array.dtype)
                                    .reshape(self.batch + (q.shape[-2], k.shape[-2])))
            if self.group == 1:
                return _math_backward(q, k, v, mask, g, self.is_causal, self.scale, self.needs_input_grad, keep)
            # the forward read shared key/value heads: differentiate through the repetition
            kr, vr = _repeat_heads(k, self.group), _repeat_heads(v, self.group)
            grads = list(_math_backward(q, kr, vr, mask, g, self.is_causal, self.scale, self.needs_input_grad, keep))
            for i, t in ((1, k), (2, v)):
                if grads[i] is not None:  # (..., Hkv * group, S, d) -> sum over each head's group
                    shp = tuple(t.shape)
                    grads[i] = reshape(grads[i], shp[:-3] + (shp[-3], self.group) + shp[-2:]).sum(-3)
            return tuple(grads)
        (o,) = self.saved_outputs
        xp = backend_of(q.array).xp
        if self.cuda:
            grads = self._cuda_backward(q.array, k.array, v.array, o.array, g.array, xp)
        else:
            grads = self._blocked_backward(q.array, k.array, v.array, o.array, g.array, xp)
        return tuple(None if gr is None else Tensor._wrap(gr) for gr in grads)

    def release(self) -> None:
        """Drop the saved tensors, and the operand copies the fused CPU path kept for the backward."""
        super().release()
        self._whole_operands = None

    # -- the blocked xp path -----------------------------------------------------------------
    @staticmethod
    def _compute_dtype(dtype):
        # float16 matmuls are very slow on the CPU and NumPy has no bfloat16 GEMM: accumulate in float32, like PyTorch
        return np.dtype(np.float32) if np.dtype(dtype).itemsize == 2 else np.dtype(dtype)

    def _prepare(self, q, k, v, mask, ct):
        """Views of the inputs as (B, n, d) in the compute dtype; q carries the scale."""
        b = self.batch
        qs = q.astype(ct, copy=False) * ct.type(self.scale)
        mb = None
        if mask is not None:
            mb = _Batched(mask if mask.dtype == np.bool_ else mask.astype(ct, copy=False), b)
        return (_Batched(qs, b), _Batched(k.astype(ct, copy=False), b), _Batched(v.astype(ct, copy=False), b), mb)

    def _scores(self, qi, kj, mb, b0, b1, i0, i1, j0, j1, xp):
        """One tile of scale * Q K^T + mask: batch b0:b1, rows i0:i1, columns j0:j1."""
        s = qi @ kj.swapaxes(-1, -2)
        if mb is not None:
            mt = mb.take(b0, b1, *_mask_slices(mb.array, i0, i1, j0, j1))
            if mt.dtype == np.bool_:
                s = xp.where(mt, s, s.dtype.type(-np.inf))
            elif np.broadcast_shapes(s.shape, mt.shape) == s.shape:
                s += mt
            else:
                s = s + mt
        if self.is_causal and j1 - 1 > i0:
            # the tile crosses the diagonal: key j > query i is left out; only columns past
            # i0 can be affected, so the bias covers that strip, not the whole tile
            c0 = max(j0, i0 + 1)
            rows = xp.arange(i0, i1)[:, None]
            cols = xp.arange(c0, j1)[None, :]
            s[..., c0 - j0:] += xp.where(cols > rows, s.dtype.type(-np.inf), s.dtype.type(0))
        return s

    def _keep_tile(self, b0, b1, i0, i1, j0, j1, xp, dtype):
        """The dropout factors of a tile: 1/(1-p) where kept, 0 where dropped (dtype ``dtype``)."""
        p, seed, offset = self.dropout
        L, S = self.shapes[0][-2], self.shapes[1][-2]
        keep = dropout_keep(xp, seed, offset, p, L, S, b0, b1, i0, i1, j0, j1)
        dt = np.dtype(dtype)
        return xp.where(keep, dt.type(1.0 / (1.0 - p)), dt.type(0))

    def _units(self, B, L, S):
        """The tiles' (batch chunk, query block) pairs, and the key block width."""
        bb, bq, bk = _block_sizes(B, L, S)
        units = [(b0, min(B, b0 + bb), i0, min(L, i0 + bq)) for b0 in range(0, B, bb) for i0 in range(0, L, bq)]
        return units, bk

    def _blocked_forward(self, q, k, v, mask, xp):
        L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
        ct = self._compute_dtype(q.dtype)
        B = int(np.prod(self.batch, dtype=np.int64))
        out = xp.zeros((B, L, Ev), dtype=ct)
        lse = xp.full((B, L), np.inf, dtype=ct)
        if L and S and B and _fused.usable(xp, ct, mask, S, L):
            out, lse, redo = _fused.forward(self, q, k, v, B, ct)
            if redo:  # tiles whose estimated row offset was too far off: the exact online softmax
                bk = _block_sizes(B, L, S)[2]
                self._forward_units(redo, bk, S, self._prepare(q, k, v, mask, ct), out, lse, xp, ct)
        elif L and S and B:
            ins = self._prepare(q, k, v, mask, ct)
            units, bk = self._units(B, L, S)
            work = B * L * (S + 1) // (2 if self.is_causal else 1)
            n = _num_workers(xp, work, len(units))
            _run_parallel(lambda part: self._forward_units(part, bk, S, ins, out, lse, xp, ct),
                          [units[t::n] for t in range(n)])
        return out.reshape(self.batch + (L, Ev)).astype(q.dtype, copy=False), lse

    def _forward_units(self, units, bk, S, ins, out, lse, xp, ct):
        """Online softmax over the key blocks of each (batch chunk, query block) in ``units``."""
        qb, kb, vb, mb = ins
        may_empty = mb is not None  # a mask can leave a row with no key; causal cannot
        neg_inf, zero, one = ct.type(-np.inf), ct.type(0), ct.type(1)
        for b0, b1, i0, i1 in units:
            qi = qb.take(b0, b1, slice(i0, i1))
            kc, vc = kb.take(b0, b1), vb.take(b0, b1)
            j_end = min(S, i1) if self.is_causal else S
            m = l = acc = None
            for j0 in range(0, j_end, bk):
                j1 = min(j_end, j0 + bk)
                s = self._scores(qi, kc[:, j0:j1], mb, b0, b1, i0, i1, j0, j1, xp)
                m_new = s.max(axis=-1, keepdims=True)
                if m is not None:
                    m_new = xp.maximum(m, m_new)
                m_safe = xp.where(m_new == neg_inf, zero, m_new) if may_empty else m_new
                s -= m_safe
                xp.exp(s, out=s)
                rowsum = s.sum(axis=-1, keepdims=True)  # the softmax normaliser: before dropout
                if self.dropout is not None:
                    s *= self._keep_tile(b0, b1, i0, i1, j0, j1, xp, ct)
                pv = s @ vc[:, j0:j1]
                if m is None:
                    l, acc = rowsum, pv
                else:  # rescale what was summed under the old running max
                    alpha = xp.exp(m - m_safe)
                    l = l * alpha + rowsum
                    acc *= alpha
                    acc += pv
                m = m_safe
            if may_empty:  # rows that saw no key: output 0, lse +inf (so P = 0 in backward)
                empty = l == 0
                l = xp.where(empty, one, l)
                lse[b0:b1, i0:i1] = xp.where(empty, ct.type(np.inf), m + xp.log(l))[..., 0]
            else:
                lse[b0:b1, i0:i1] = (m + xp.log(l))[..., 0]
            acc /= l
            out[b0:b1, i0:i1] = acc

    def _blocked_backward(self, q, k, v, o, g, xp):
        """FlashAttention-2 backward: P = exp(S - lse) per tile; dV += P^T dO, dP = dO V^T,
        dS = P o (dP - rowsum(dO o O)), dQ += dS K scale, dK += dS^T Q scale."""
        need = self.needs_input_grad
        L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
        ct = self._compute_dtype(q.dtype)
        B = int(np.prod(self.batch, dtype=np.int64))
        want_mask = self.mask_is_tensor and need[3]
        dmask = xp.zeros(self.mask.shape, dtype=ct) if want_mask else None
        fused = L and S and B and _fused.usable(xp, ct, self.mask, S, L)
        if fused:  # (its gradients come in the batch's own shape: the leaves take them without a copy)
            dq, dk, dv = _fused.backward(self, q, k, v, o, g, self.lse, B, ct)
            dq *= ct.type(self.scale)
        else:
            dq = xp.zeros((B, L, E), dtype=ct)
            dk = xp.zeros((B, S, E), dtype=ct)
            dv = xp.zeros((B, S, Ev), dtype=ct)
        if not fused and L and S and B:
            ins = self._prepare(q, k, v, self.mask, ct)
            g = g.astype(ct, copy=False).reshape(B, L, Ev)
            delta = (g * o.astype(ct, copy=False).reshape(B, L, Ev)).sum(axis=-1)[..., None]  # rowsum(dO o O)
            units, bk = self._units(B, L, S)
            work = B * L * (S + 1) // (2 if self.is_causal else 1)
            n = _num_workers(xp, work, len(units))
            chunks = sorted({u[:2] for u in units})
            if len(chunks) >= n:
                # whole batch chunks per worker: their dK, dV rows are disjoint
                mine = [set(chunks[t::n]) for t in range(n)]
                parts = [([u for u in units if u[:2] in mine[t]], dk, dv) for t in range(n)]
            else:
                # query blocks of one chunk are spread: each worker sums into its own dK, dV
                parts = [(units[t::n], dk if t == 0 else xp.zeros_like(dk), dv if t == 0 else xp.zeros_like(dv))
                         for t in range(n)]
            dmasks = [None if dmask is None else (dmask.reshape(ins[3].array.shape) if t == 0 else
                                                  xp.zeros(ins[3].array.shape, dtype=ct)) for t in range(n)]
            _run_parallel(lambda t: self._backward_units(parts[t][0], bk, S, ins, g, delta, dq, parts[t][1],
                                                         parts[t][2], dmasks[t], xp), list(range(n)))
            for t in range(1, n):
                if parts[t][1] is not dk:
                    dk += parts[t][1]
                    dv += parts[t][2]
                if dmask is not None:
                    dmasks[0] += dmasks[t]
            dq *= ct.type(self.scale)
        qs_, ks_, vs_ = self.shapes
        dt = q.dtype
        grads = [_sum_to_array(dq.reshape(self.batch + (L, E)), qs_, xp).astype(dt, copy=False) if need[0] else None,
                 _sum_to_array(dk.reshape(self.batch + (S, E)), ks_, xp).astype(dt, copy=False) if need[1] else None,
                 _sum_to_array(dv.reshape(self.batch + (S, Ev)), vs_, xp).astype(dt, copy=False) if need[2] else None]
        if self.mask_is_tensor:
            grads.append(dmask.astype(self.mask.dtype, copy=False) if want_mask else None)
        return grads

    def _backward_units(self, units, bk, S, ins, g, delta, dq, dk, dv, dmask, xp):
        """Recompute P tile by tile for ``units`` and accumulate dQ, dK, dV (and d mask)."""
        qb, kb, vb, mb = ins
        lse = self.lse[..., None]
        for b0, b1, i0, i1 in units:
            j_end = min(S, i1) if self.is_causal else S
            qi = qb.take(b0, b1, slice(i0, i1))
            kc, vc = kb.take(b0, b1), vb.take(b0, b1)
            gi, li, di = g[b0:b1, i0:i1], lse[b0:b1, i0:i1], delta[b0:b1, i0:i1]
            dqi = None
            for j0 in range(0, j_end, bk):
                j1 = min(j_end, j0 + bk)
                kj = kc[:, j0:j1]
                s = self._scores(qi, kj, mb, b0, b1, i0, i1, j0, j1, xp)
                if s.shape == np.broadcast_shapes(s.shape, li.shape):
                    s -= li
                    p = xp.exp(s, out=s)
                else:
                    p = xp.exp(s - li)
                ds = gi @ vc[:, j0:j1].swapaxes(-1, -2)
                if self.dropout is None:
                    dv[b0:b1, j0:j1] += p.swapaxes(-1, -2) @ gi
                else:  # O = (P o Z) V: dV = (P o Z)^T dO, dP = (dO V^T) o Z; D = rowsum(dO o O) still
                    z = self._keep_tile(b0, b1, i0, i1, j0, j1, xp, p.dtype)
                    dv[b0:b1, j0:j1] += (p * z).swapaxes(-1, -2) @ gi
                    ds *= z
                    del z
                ds -= di
                ds *= p
                del p, s
                part = ds @ kj
                if dqi is None:
                    dqi = part
                else:
                    dqi += part
                dk[b0:b1, j0:j1] += ds.swapaxes(-1, -2) @ qi  # qi already carries the scale
                if dmask is not None:
                    rows, cols = _mask_slices(dmask, i0, i1, j0, j1)
                    if dmask.shape[-2] == 1:
                        ds = ds.sum(axis=-2, keepdims=True)
                    if dmask.shape[-1] == 1:
                        ds = ds.sum(axis=-1, keepdims=True)
                    mb.add_at(dmask, b0, b1, rows, cols, ds)
            if dqi is not None:
                dq[b0:b1, i0:i1] = dqi

    # -- the fused CUDA path ------------------------------------------------------------------
    def _flat(self, a, xp, kv=False):
        """(batch..., n, d) -> (BH, n, d), materialising broadcast batch dims; ``kv``: k or v,
        which under grouped-query attention keep their own heads (BHkv, n, d)."""
        batch = self.batch[:-1] + (a.shape[-3],) if kv and self.group > 1 else self.batch
        return xp.ascontiguousarray(xp.broadcast_to(a, batch + a.shape[-2:]).reshape((-1,) + a.shape[-2:]))

    def _flat_mask(self, xp):
        m = self.mask
        if m is None:
            return None
        if all(d == 1 for d in m.shape[:-2]):
            return m.reshape((1,) + m.shape[-2:])
        return self._flat(m, xp)

    def _cuda_forward(self, q, k, v, xp):
        fwd, _ = _cuda_kernels()
        o, self.lse = fwd(self._flat(q, xp), self._flat(k, xp, kv=True), self._flat(v, xp, kv=True), self.scale,
                          self.is_causal, mask=self._flat_mask(xp), dropout=self.dropout)
        return o.reshape(self.batch + o.shape[-2:])

    def _cuda_backward(self, q, k, v, o, g, xp):
        _, bwd = _cuda_kernels()
        dq, dk, dv = bwd(self._flat(q, xp), self._flat(k, xp, kv=True), self._flat(v, xp, kv=True), self._flat(o, xp),
                         self.lse, self._flat(g, xp), self.scale, self.is_causal, mask=self._flat_mask(xp),
                         dropout=self.dropout)
        qs_, ks_, vs_ = self.shapes
        need = self.needs_input_grad
        kv_batch = self.batch[:-1] + (ks_[-3],) if self.group > 1 else self.batch  # dk, dv per kv head
        return [_sum_to_array(d.reshape(b + d.shape[-2:]), shp, xp) if n else None
                for d, b, shp, n in ((dq, self.batch, qs_, need[0]), (dk, kv_batch, ks_, need[1]),
                                     (dv, kv_batch, vs_, need[2]))]


# ---------------------------------------------------------------- the composite (math) path
def _math_probs(q, k, mask, is_causal, scale):
    """P = softmax(scale Q K^T + mask) from Tensor ops, with fully masked rows set to zero."""
    xp = backend_of(q.array).xp
    s = matmul(q, k.mT) * scale
    L, S = s.shape[-2:]
    if mask is not None:
        s = where(mask, s, -math.inf) if mask.array.dtype == np.bool_ else s + mask
    if is_causal:
        s = where(xp.tril(xp.ones((L, S), dtype=bool)), s, -math.inf)
    row_ok = (s.array != -np.inf).any(axis=-1, keepdims=True)
    # the CPU checks for fully masked rows (free there); CUDA always masks: asking is a sync
    if backend_of(s.array).name == "numpy" and bool(row_ok.all()):
        return softmax(s, -1)
    s = where(row_ok, s, 0.0)  # keep softmax finite; the row is zeroed below
    return softmax(s, -1) * Tensor._wrap(row_ok.astype(s.array.dtype))


def _math_backward(q, k, v, mask, g, is_causal, scale, needs, keep=None):
    """dQ, dK, dV (and d mask) of the composite formula, written with differentiable Tensor ops.
    ``keep``: the dropout factors Z (0 or 1/(1-p), a constant Tensor), O = (P o Z) V."""
    p = _math_probs(q, k, mask, is_causal, scale)
    dp = matmul(g, v.mT)
    pd = p
    if keep is not None:
        dp = dp * keep
        pd = p * keep
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    grads = [sum_to(matmul(ds, k) * scale, q.shape) if needs[0] else None,
             sum_to(matmul(ds.mT, q) * scale, k.shape) if needs[1] else None,
             sum_to(matmul(pd.mT, g), v.shape) if needs[2] else None]
    if len(needs) > 3:
        grads.append(sum_to(ds, mask.shape) if needs[3] else None)
    return tuple(grads)


# ---------------------------------------------------------------- the public function
def _check(query, key, value, attn_mask, dropout_p, scale, enable_gqa):
    op = "scaled_dot_product_attention"
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise RuntimeError(f"{op}: {name} must have at least 2 dims (..., seq, features), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating point tensor, got {t.dtype}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"{op}: expected query, key and value to have the same dtype, got "
                        f"{query.dtype}, {key.dtype} and {value.dtype}")
    if not (query.device == key.device == value.device):
        raise RuntimeError(f"{op}: expected query, key and value on one device, got "
                           f"{query.device}, {key.device} and {value.device}")
    qs, ks, vs = tuple(query.shape), tuple(key.shape), tuple(value.shape)
    if qs[-1] != ks[-1]:
        raise RuntimeError(f"{op}: query {qs} and key {ks} must have the same last (embedding) dim")
    if ks[-2] != vs[-2]:
        raise RuntimeError(f"{op}: key {ks} and value {vs} must have the same sequence length (dim -2)")
    if enable_gqa:
        if min(len(qs), len(ks), len(vs)) < 3:
            raise RuntimeError(f"{op}: enable_gqa needs a heads dim (-3); got query {qs}, key {ks}, value {vs}")
        if ks[-3] != vs[-3] or qs[-3] % ks[-3]:
            raise RuntimeError(f"{op}: enable_gqa needs query heads ({qs[-3]}) divisible by key/value heads "
                               f"({ks[-3]}, {vs[-3]}), key and value heads equal")
        ks = ks[:-3] + (qs[-3],) + ks[-2:]  # after the heads are repeated
        vs = vs[:-3] + (qs[-3],) + vs[-2:]
    try:
        batch = np.broadcast_shapes(qs[:-2], ks[:-2], vs[:-2])
    except ValueError:
        raise RuntimeError(f"{op}: batch dims of query {qs}, key {ks} and value {vs} do not broadcast") from None
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"{op}: attn_mask must be a Tensor (bool or {query.dtype}), got {type(attn_mask).__name__}")
        mdt = attn_mask.array.dtype
        if mdt != np.bool_ and mdt != query.array.dtype:
            raise TypeError(f"{op}: attn_mask must be bool or have the query's dtype {query.dtype}, got {attn_mask.dtype}")
        if attn_mask.device != query.device:
            raise RuntimeError(f"{op}: attn_mask is on {attn_mask.device} but query is on {query.device}")
        full = tuple(batch) + (qs[-2], ks[-2])
        try:
            ok = np.broadcast_shapes(tuple(attn_mask.shape), full) == full
        except ValueError:
            ok = False
        if not ok:
            raise RuntimeError(f"{op}: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                               f"(batch..., L, S) = {full}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {dropout_p}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise TypeError(f"{op}: scale must be a finite number or None, got {scale!r}")


def _heads_times(shape, groups: int) -> tuple:
    """``shape`` with its heads dim (-3) multiplied by ``groups`` (the shape after _repeat_heads)."""
    shape = tuple(shape)
    return shape if groups == 1 else shape[:-3] + (shape[-3] * groups,) + shape[-2:]


def _tensor_core_gqa(query, value, attn_mask) -> bool:
    """Whether this call runs on the tensor-core CUDA kernels (attention_mma.cu), which read each
    key/value head for its group of query heads themselves: float16 CuPy inputs, head dim <= 256,
    no mask that needs a gradient, kernels available -- the conditions of
    ``_BlockedAttention.forward``'s CUDA choice plus ``launch``'s float16 -> tensor cores."""
    if backend_of(query.array).name != "cupy" or query.array.dtype != np.float16:
        return False
    if not query.shape[-1] == value.shape[-1] <= _CUDA_MAX_HEAD_DIM_FLOAT16:
        return False
    if attn_mask is not None and attn_mask.requires_grad and _grad_state.enabled:
        return False
    return _cuda_kernels() is not None


def _repeat_heads(t, groups: int):
    """Repeat each head ``groups`` times along dim -3 (``repeat_interleave``), differentiably."""
    shape = tuple(t.shape)
    e = expand(unsqueeze(t, -3), shape[:-2] + (groups,) + shape[-2:])
    return reshape(e, shape[:-3] + (shape[-3] * groups,) + shape[-2:])


@autocast_op("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale=None, enable_gqa: bool = False):
    """Attention ``softmax(Q K^T * scale + mask) V``
    (``torch.nn.functional.scaled_dot_product_attention``).

    Shapes: ``query`` (..., L, E), ``key`` (..., S, E), ``value`` (..., S, Ev) -> (..., L, Ev);
    the batch dims (...) broadcast. ``attn_mask`` broadcasts to (..., L, S): a bool mask says
    which keys each query may attend to (True = take part, as in PyTorch); a float mask is added
    to the scores (it may require grad: relative-position biases get gradients). ``is_causal``
    lets query i see keys j <= i (top-left aligned, as in PyTorch); unlike PyTorch, which
    rejects the pair, ``is_causal`` together with ``attn_mask`` applies both. ``scale``
    defaults to 1/sqrt(E). ``enable_gqa`` repeats each of the Hk key/value heads (dim -3)
    Hq/Hk times for grouped-query attention (on the float16 tensor-core CUDA kernels the heads
    are not copied: query head h reads key/value head h // (Hq/Hk), and dK, dV sum over the group).

    Math: S = scale Q K^T + M; P = softmax(S) per row; O = P V. Backward, with
    D_i = sum_e dO_ie O_ie: dV = P^T dO, dP = dO V^T, dS = P o (dP - D), dQ = scale dS K,
    dK = scale dS^T Q, dM = dS.

    Algorithm: on the CPU (and on a GPU without the fused kernels) a few (batch, head) pairs
    and a block of query rows are processed at a time against blocks of keys with an online
    softmax (running max m, running sum l, output rescaled by exp(m_old - m_new)), so memory
    beyond the inputs, outputs and gradients is one score tile per thread (about 2^18 scores,
    at least 256 rows x the key block), never L x S. The forward saves O and the row
    log-sum-exp; the backward recomputes P tile by tile (FlashAttention-2). On the CPU the
    tiles of large problems are shared among threads with BLAS held to one thread (when
    ``threadpoolctl`` is installed). Without a mask, float32 CPU inputs with oneDNN installed
    (``am.backends.mkldnn.enabled``) take tiles whose softmax is folded into the matmuls: the
    row offset rides an extra column (``[Q scale, -m] [K, 1]^T = S - m``), ``exp`` and the
    ``dS = dP o P`` product run as oneDNN matmul epilogues, and one pass over the exponentials
    gives the row sums; the forward's offset is an estimate checked per row, with the exact online
    softmax as fallback (:mod:`avila_ml.ops._attention_fused`). On CUDA with a mask that needs
    no gradient, the fused kernels in ``avila_ml.cuda_kernels`` run instead: float16 on tensor
    cores (head dim <= 256, P rounded to float16 before P V as in FlashAttention), float32 on
    CUDA cores (head dim <= 128). float16 inputs are computed in float32 on the CPU. The fused
    CPU tiles start at 128 keys (shorter ones lost to the blocked path).

    Dropout (``dropout_p > 0``, applied whenever given, like PyTorch's functional form: pass
    0.0 in eval mode): O = (P o Z) V with Z = keep / (1 - p), inside the blocked path and the
    fused CUDA kernels (no L x S
    matrix is held). The keep decision of element (b, i, j) (b the flat batch index) is a pure
    function of (seed, offset, b, i, j) through Philox4x32-10
    (:func:`avila_ml.backends.philox.dropout_keep`), so the backward regenerates each tile's mask
    instead of storing it; (seed, offset) are drawn once per call from the global generator
    (``manual_seed`` reproduces a call, consecutive calls differ). The softmax normaliser and
    the saved log-sum-exp are those of P, before dropout.

    Conventions: a fully masked row (no key may be attended to, or S = 0) gives an output of
    zeros and zero gradients, never NaN. Second derivatives (``create_graph=True``) go through
    the composite formula above: the backward, when recorded, is written with differentiable
    Tensor ops (O(L S) memory), so double backward is exact; with dropout that rare path
    generates the whole mask from the same function, so it uses the same Z as the forward.

    Example:
        >>> import avila_ml as am
        >>> q = am.ones(1, 2, 4); k = am.ones(1, 3, 4); v = am.arange(6.0).reshape(1, 3, 2)
        >>> am.nn.functional.scaled_dot_product_attention(q, k, v).round(decimals=4)
        tensor([[[2., 3.],
                 [2., 3.]]])
        >>> am.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        tensor([[[0., 1.],
                 [1., 2.]]])
    """
    _check(query, key, value, attn_mask, dropout_p, scale, enable_gqa)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] else 1.0
    scale = float(scale)
    kv_group = 1
    if enable_gqa and query.shape[-3] != key.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        if _tensor_core_gqa(query, value, attn_mask):
            kv_group = groups  # the kernel shares the heads: no repeated copies of K and V
        else:
            key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    dropout = None
    if dropout_p > 0.0:
        batch = np.broadcast_shapes(query.shape[:-2], _heads_times(key.shape, kv_group)[:-2],
                                    _heads_times(value.shape, kv_group)[:-2])
        B = int(np.prod(batch, dtype=np.int64))
        seed, offset = _dropout_seed(backend_of(query.array), dropout_counters(B, query.shape[-2], key.shape[-2]))
        dropout = (float(dropout_p), seed, offset)
    if attn_mask is not None and attn_mask.ndim < 2:
        attn_mask = reshape(attn_mask, (1,) * (2 - attn_mask.ndim) + tuple(attn_mask.shape))
    mask_is_tensor = attn_mask is not None and attn_mask.requires_grad and _grad_state.enabled
    mask = attn_mask if mask_is_tensor else (None if attn_mask is None else attn_mask.array)
    return _BlockedAttention.apply(query, key, value, mask, bool(is_causal), scale, mask_is_tensor, dropout,
                                   kv_group)


def _dropout_seed(backend, counters: int) -> tuple[int, int]:
    """(seed, offset) of one attention call's dropout mask, drawn from ``backend``'s global
    generator so that consecutive calls differ and ``manual_seed`` reproduces them: a Philox
    backend (CUDA) hands out its own state and advances its offset past the ``counters`` the
    mask uses (as PyTorch's CUDA generator does for fused dropout, and with no device sync);
    the CPU's PCG64 generator draws a fresh 63-bit key (offset 0)."""
    reserve = getattr(getattr(backend, "rng", None), "reserve", None)
    if reserve is not None:
        return reserve(counters)
    return int(backend.randint(0, 1 << 63, (1,), np.uint64)[0]), 0
