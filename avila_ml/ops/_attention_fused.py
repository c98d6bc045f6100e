"""The CPU attention tiles with the softmax folded into the matmuls (oneDNN epilogues).

The blocked path of :mod:`avila_ml.ops.attention` spends most of a score tile's time outside the
two matmuls: a pass for the row max, one to subtract it, NumPy's float32 ``exp`` (as slow as the
score matmul itself) and one for the row sum. Here the row offset is known BEFORE the score
matmul, so everything folds into the two BLAS calls of a tile:

- an extra column carries the offset through the product: ``[Q scale, -m] [K, 1]^T = S - m``,
  and ``exp`` runs as oneDNN's matmul post-op (:func:`avila_ml.cpu_accel._matmul.matmul_nt`),
  so the score tile comes out of one call as ``P~ = exp(S - m)``;
- the row sums l come from one pass over P~ (``einsum``), and ``P~ V`` from a product with V's
  own columns (a ones column on V, ``P~ [V, 1] = [P~ V, l]``, was 10-20% slower: the product
  runs an extra column block). On the query tiles every product of the forward and backward
  is oneDNN's, on C-contiguous operands: V itself (the caller's array where it is one), and in
  the backward copies of Q scale and K without their augmented columns (in-process A/B, 2
  threads, B H = 32, E = 64, L = 2048, against NumPy's BLAS for those products and strided
  columns: forward 208.8 -> 194.7 ms, causal 132.2 -> 121.3, forward + backward 714.7 -> 681.6;
  L = 1024 forward 59.0 -> 54.9).

The forward cannot know the row max in advance, and does not need it: any offset m keeps
``exp(S - m)`` finite and its sum well scaled as long as m is within a few dozen of the max.
It uses ``m_i = max over the first 16 keys of S_ij + 16`` (one small product for all rows; at
most 16 above the true max, so the sum cannot underflow without a mask), the same for every
key block of a row, so no block rescales the previous ones. Then it checks each row: a sum
or output that is not finite (overflow: a key scored ~100 above the sampled ones) or a sum
smaller than ``S * 2^-40`` (the largest term could have lost precision to underflow; only
causal rows before the 16th can get there) sends that tile to the exact online-softmax path --
correct for any input, fast for the scores real models produce. The log-sum-exp ``m + log l``
is saved for the backward, which knows its offset exactly: ``P = exp([Q scale, -lse] [K, 1]^T)`` in one call and
``dS = ([dO, -D] [V, 1]^T) o P`` (D = rowsum(dO o O)) in another, the product with P fused too.

Sequences with L S <= 2^18 (:func:`_whole`, e.g. L = S = 512) take a second layout: whole
(L, S) problems per oneDNN call, the batch shared among threads, and the Cauchy-Schwarz bound
as the row offset (see ``_forward_whole``). Longer ones take the query tiles above. There the
compiled kernel ``attn_probs`` (``kernels/softmax.c``) replaces the exp post-op where it is
built: a plain score product, then one pass per row (exp, causal zeros, row sum, times 1 / l)
while the row is in L1, and ``P V`` is the output (on these strided row blocks oneDNN takes its
GEMM-based matmul, ``gemm:jit``, whose exp post-op cost as much as the product: (64, 64, 33) x
(64, 33, 128), one thread, 0.72 ms with it, 0.39 ms without; with dense operands its
``brg:avx512_core`` kernel took 0.50 ms with the exp). Where a short call's probability blocks fit in
``_KEEP_PROBS_BYTES``, its forward keeps them and the backward uses them instead of recomputing
P: P itself from the kernel, or ``P~`` with ``1 / l`` (``P = P~ / l``, so dO's and D's rows are
scaled by ``1 / l``: ``dS = P~ o ([dO, -D] / l) [V, 1]^T``, ``dV = P~^T (dO / l)``).

Used for float32 (and float16, computed in float32) NumPy arrays without ``attn_mask`` when
oneDNN is installed and ``am.backends.mkldnn.enabled``, for whole problems or from 128 keys;
masks, float64, CuPy and other short key counts keep the blocked path, which also stays the
reference in the tests.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from . import _cpu_threads
from ..cpu_accel import _native, _native_softmax

# one tile: (batch chunk, query rows, key columns) with at most _TILE scores (2 MiB float32);
# keys up to _KEY_BLOCK form one block. Chosen with an in-process sweep of 2^16-2^19 scores and
# key blocks of 512/2048 (see the report of issue 17): larger tiles won, as fewer tiles mean
# fewer per-call overheads (about 15 us per oneDNN call, a few us per NumPy call) and less
# Python between calls for the two threads' shares under one GIL. Quiet in-process A/B, 2
# threads, B H = 32, L = 2048, E = 64, 2^18 -> 2^19: forward 290.5 -> 276.9 ms, fwd+bwd
# 965.6 -> 955.6, causal 200.2 -> 183.4 / 610.7 -> 580.5 (2^20: forward 268.0, causal 189.9)
_TILE = 1 << 19
_DROPOUT_TILE = 1 << 18  # with dropout (its keep masks are tile-sized too): the memory bound stays
_KEY_BLOCK = 2048
_CAUSAL_MIN_ROWS = 32  # shortest query block of a causal tile (see _block_sizes)
_SHORT_CAUSAL_ROWS = 48  # the short path's causal query blocks: up to 4, this many rows or more
_SHORT_CAUSAL_BACKWARD = True  # short causal query blocks in the backward too (measured: no difference)
_MIN_KEYS = 128  # below this many keys the fixed costs (augmented copies, offsets) lose to the blocked path
_SAMPLE_KEYS = 16      # the first keys, whose exact scores give the forward's row offset
_SAMPLE_MARGIN = 16.0  # offset = sampled max + this: the true max may lie above it (checked)
_UNDERFLOW = 2.0 ** -40  # a row sum below S * this is recomputed exactly
_PARALLEL_MIN_WORK = 1 << 18
# the short path's work (B L S, halved when causal) from which the batch is shared among Python
# threads (one OpenMP thread each); below, one thread runs it with oneDNN's and the kernels' own
# two threads: no GIL hand-offs between two threads' many small calls. Program steps
# (bench_programs.py, in-process alternations, medians of 10) at 2^18 / 2^21: small GPT (B H = 64,
# L = 128 causal: 2^19) 106.2 / 98.3 and 106.7 / 100.7 ms; char GPT (128, 96: 2^19.2) 132.8 / 134.7
# and 113.3 / 112.0 ms (level).
_WHOLE_PARALLEL_MIN_WORK = 1 << 20
# Short sequences (L S <= _WHOLE_MAX) are computed a batch chunk of whole (L, S) problems at a
# time, every product one oneDNN call, the batch shared among threads (see _forward_whole).
# Quiet in-process A/B against the query tiles, 2 threads, B H = 32, E = 64: L = 512 forward
# 23.7 -> 20.8 ms, fwd+bwd 76.1 -> 65.7 ms (causal 21.3 -> 16.7, 63.7 -> 51.8); L = 1024 forward
# 80 -> 71 ms but fwd+bwd 266 -> 281 ms, so the tiles keep L S > 2^18 (and their O(tile) memory)
_WHOLE_MAX = 1 << 18
_WHOLE_TILE = 1 << 19  # scores per batch chunk
# a row sum below S times this is recomputed: terms below float32's smallest normal number
# (2^-126) may come out of the exp as 0, which is harmless while the sum is at least S 2^-100
# (at most S such terms: their loss is below 2^-26 of the sum)
_SHORT_LEAST = 2.0 ** -100
# The short path's forward keeps its probability blocks (P from the compiled kernel, else
# P~ = exp(S - m)) for the backward (which then runs 4 products per block instead of 5, none
# with an exp) when all of a call's blocks take at most this many bytes; larger calls recompute
# them (FlashAttention's way, O(L) memory).
# Quiet in-process A/B, 2 threads, fwd+bwd, recompute -> keep (medians of 5 rounds; AVX-512
# EPYC): B H = 64 L = 128 E = 32 causal 4.48 -> 3.80 ms, B H = 128 L = 96 causal 5.60 -> 5.17,
# B H = 32 E = 64: L = 256 12.41 -> 10.96, L = 512 44.17 -> 40.83 (keeps 32 MiB), L = 512
# causal 34.05 -> 29.00 (20 MiB)
_KEEP_PROBS_BYTES = 32 << 20


def usable(xp, ct, mask, S, L=None) -> bool:
    """Whether the fused tiles apply: NumPy float32 compute, no mask, oneDNN on and loaded, and
    either whole problems (:func:`_whole`) or at least _MIN_KEYS keys (char GPT's 96 keys x 32
    dims ran 1.1x slower in tiles, the GPT's 128 x 32 0.97x, single thread, loaded machine)."""
    if xp is not np or ct != np.float32 or mask is not None or (S < _MIN_KEYS and not _whole(L, S)):
        return False
    from ..backends import mkldnn
    if not mkldnn.enabled:
        return False
    from ..cpu_accel import _dnnl
    return _dnnl.load() is not None


def _tile(op) -> int:
    """Scores per tile for this call (:data:`_TILE`, or :data:`_DROPOUT_TILE` with dropout)."""
    return _TILE if op.dropout is None else _DROPOUT_TILE


def _block_sizes(batch: int, L: int, S: int, causal: bool = False, tile: int = None) -> tuple[int, int, int]:
    tile = _TILE if tile is None else tile
    bk = min(S, _KEY_BLOCK)
    bq = max(1, min(L, tile // bk))
    if causal:
        # every product of a tile on the diagonal computes its masked half too: short query
        # blocks (whose key range ends at their last row) waste less; L = 128 in blocks of 32
        # does 5/8 of the work of one 128-row block. The batch chunk grows to fill the tile.
        bq = min(bq, max(_CAUSAL_MIN_ROWS, -(-L // 4)))
    bb = max(1, min(batch, tile // (bq * bk)))
    return bb, bq, bk


def _augment(a, col, dtype, scale=None, out=None, sq=None):
    """[a (scaled), col] along the last dim, as one C-contiguous array (nb, n, d + 1) where a is
    any (..., n, d) view whose leading dims flatten into nb (one copy, however a is strided);
    ``col`` a scalar or (nb, n); written into ``out`` (C-contiguous) when given. ``sq`` (nb, n):
    also filled with each row's sum of squares of a (scaled).

    One pass of the compiled kernel (``_native.augment_rows``) where it applies, else NumPy's
    strided copy (plus a pass for ``sq``). The small GPT's q, k, v (two (32, 128, 32) halves of
    (16, 4, 128, 32) views of the qkv product, one thread each): the forward's three copies and
    two row-norm passes took 0.77-0.92 ms of its 2.05-2.27 ms with NumPy."""
    n, d = a.shape[-2:]
    if out is None:
        out = np.empty((int(np.prod(a.shape[:-2], dtype=np.int64)), n, d + 1), dtype=dtype)
    scalar = np.ndim(col) == 0
    if _native.augment_rows(a, out, 1.0 if scale is None else scale, col if scalar else 0.0, sq):
        if not scalar:
            out[..., -1] = col
        return out
    body = out.reshape(a.shape[:-1] + (d + 1,))[..., :-1]
    if scale is None:
        body[...] = a
    else:
        np.multiply(a, dtype.type(scale), out=body)
    out[..., -1] = col
    if sq is not None:
        b = out[..., :d]
        np.einsum("bne,bne->bn", b, b, out=sq.reshape(b.shape[:-1]))
    return out


def _units(B, L, S, causal, short=True, tile=None):
    bb, bq, bk = _block_sizes(B, L, S, causal and short, tile)
    units = [(b0, min(B, b0 + bb), i0, min(L, i0 + bq)) for b0 in range(0, B, bb) for i0 in range(0, L, bq)]
    if causal:  # the long rows first: the threads' shares come out even
        units.sort(key=lambda u: -u[3])
    return units, bk


def _key_blocks(i0, i1, S, bk, causal):
    j_end = min(S, i1) if causal else S
    return [(j0, min(j_end, j0 + bk)) for j0 in range(0, j_end, bk)]


def _zero_above_diagonal(p, i0, j0):
    """p[..., r, c] = 0 where key j0 + c lies after query i0 + r (is_causal).

    The columns past the last row's diagonal are cleared by slicing (a memset); the band where
    the diagonal runs through the tile takes one masked copy with a cached triangle (a call per
    strip of rows cost ~15 us each: 15% of a causal L = 2048 forward in cProfile, one thread).
    Not ``p *= mask``: a masked entry may have overflowed to inf, and inf * 0 is NaN. The
    compiled kernel (``cpu_accel._native.causal_zero``) does it in one pass where built:
    the GPT programs' attention (B=16 H=4 L=128 E=32, causal) spent ~90 us per call here."""
    if _native.causal_zero(p, i0, j0):
        return
    n, m = p.shape[-2:]
    full = max(0, i0 + n - j0)  # from this column on, every row's key is later
    if full < m:
        p[..., full:] = 0
    lo, hi = max(0, i0 + 1 - j0), min(m, full)  # the band: columns masked for some rows only
    if lo < hi:
        np.copyto(p[..., lo:hi], 0, where=_later_keys(n, hi - lo, j0 + lo - i0))


@functools.lru_cache(maxsize=32)
def _later_keys(n, width, shift):
    """mask[r, c] = key c + shift lies after query r, as a read-only (n, width) bool array."""
    mask = np.arange(shift, shift + width)[None, :] > np.arange(n)[:, None]
    mask.flags.writeable = False
    return mask


def _run(fn, units, work):
    """fn(part) over ``units`` split among threads (BLAS and oneDNN one thread each)."""
    n = 1
    if work >= _PARALLEL_MIN_WORK and len(units) > 1 and _cpu_threads.controller() is not None:
        n = min(len(units), _cpu_threads.blas_threads())
    if n <= 1:
        fn(units)
        return
    from ..cpu_accel._matmul import one_omp_thread

    def part(us):
        with one_omp_thread():
            fn(us)
    # limit_blas=False: the caller already holds BLAS at one thread (_one_thread_libraries), and
    # run_parts then stops OpenBLAS's spinning workers before the parts start
    _cpu_threads.run_parts(part, [units[t::n] for t in range(n)], limit_blas=False)


@contextlib.contextmanager
def _one_thread_libraries():
    """BLAS and oneDNN's OpenMP on one thread in this thread: the parallelism is ours
    (``_run``). Mixing both libraries' own thread teams makes their spinning workers fight
    for the cores: measured on 2 cores, a 0.5 ms NumPy product right after oneDNN calls took
    10-500 ms."""
    from ..cpu_accel._matmul import one_omp_thread
    ctl = _cpu_threads.controller()
    with (ctl.limit(limits=1, user_api="blas") if ctl is not None else contextlib.nullcontext()):
        with one_omp_thread():
            yield


def _whole(L, S) -> bool:
    """Whether (L, S) problems are computed whole (:func:`_forward_whole`): short sequences."""
    return L is not None and 0 < L * S <= _WHOLE_MAX


def forward(op, q, k, v, B, ct):
    if _whole(q.shape[-2], k.shape[-2]):
        return _forward_whole(op, q, k, v, B, ct)
    with _one_thread_libraries():
        return _forward(op, q, k, v, B, ct)


def backward(op, q, k, v, o, g, lse, B, ct):
    """dQ (unscaled: the caller multiplies by scale), dK, dV as (B, n, d) arrays, fused tiles."""
    if _whole(q.shape[-2], k.shape[-2]):
        return _backward_whole(op, q, k, v, o, g, lse, B, ct)
    with _one_thread_libraries():
        return _backward(op, q, k, v, o, g, lse, B, ct)


def _lead(x, op, a0, a1):
    """x broadcast to the op's batch (at least one batch dim) and sliced a0:a1 along its first:
    a view of the flat batches a0 * B / lead ... a1 * B / lead."""
    return np.broadcast_to(x, (op.batch or (1,)) + x.shape[-2:])[a0:a1]


def _grad_operands(op, o, g, B, ct, a0, a1, out=None):
    """dO (nb, L, Ev) contiguous in the compute dtype, D = rowsum(dO o O) and [dO, -D] (None
    with dropout) for the flat batches of lead rows a0:a1 (into the arrays ``out`` when given)."""
    L, Ev = o.shape[-2], o.shape[-1]
    bs = op.batch or (1,)
    per = B // bs[0]
    b0, b1 = a0 * per, a1 * per
    gl = g.reshape(bs + (L, Ev))[a0:a1]
    if out is None:
        g = np.ascontiguousarray(gl, dtype=ct).reshape(b1 - b0, L, Ev)
        delta = ga = None
    else:
        g, delta, ga = out
        if not np.may_share_memory(g, gl):  # (else g is dO itself, already C-ordered)
            g.reshape(gl.shape)[...] = gl
    delta = np.einsum("ble,ble->bl", g, o.astype(ct, copy=False).reshape(B, L, Ev)[b0:b1], out=delta)
    return g, delta, (None if op.dropout is not None else _augment(g, -delta, ct, out=ga))


def _backward_operands(op, q, k, v, o, g, lse, B, ct, a0=0, a1=None, out=None):
    """What both backward paths read, for the flat batches of lead rows a0:a1 (all by default):
    V as (nb, S, Ev) (only with dropout, else None), dO, D and [dO, -D] (:func:`_grad_operands`),
    [Q scale, -lse], [K, 1] and [V, 1]; into the arrays ``out`` (these 7) when given."""
    a1 = (op.batch or (1,))[0] if a1 is None else a1
    b0 = a0 * (B // (op.batch or (1,))[0])
    out = (None,) * 7 if out is None else out
    vl = _lead(v, op, a0, a1)
    vb = None
    if op.dropout is not None:
        vb = vl.reshape(-1, vl.shape[-2], vl.shape[-1]) if out[0] is None else out[0]
        if out[0] is not None:
            vb.reshape(vl.shape)[...] = vl
    g, delta, ga = _grad_operands(op, o, g, B, ct, a0, a1, out=None if out[1] is None else out[1:3] + out[5:6])
    return (vb, g, delta, _augment(_lead(q, op, a0, a1), -lse[b0:b0 + g.shape[0]], ct, scale=op.scale, out=out[3]),
            _augment(_lead(k, op, a0, a1), 1, ct, out=out[4]), ga, _augment(vl, 1, ct, out=out[6]))


def _backward_operands_parallel(op, q, k, v, o, g, lse, B, ct, plain=False):
    """:func:`_backward_operands` for the whole batch, its parts filled by threads (the long
    path's copies would otherwise run in one thread before its tiles run in several); Q, K, V
    are the forward's copies where it kept them (``op._whole_operands["all"]``). ``plain``:
    two more, C-contiguous copies of Q scale (B, L, E) and K (B, S, E) without the augmented
    column, for the dK and dQ products of the long path."""
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    dropout = op.dropout is not None
    kept = (getattr(op, "_whole_operands", None) or {}).get("all")
    gf = g.reshape(B, L, Ev) if g.dtype == ct and g.flags.c_contiguous else np.empty((B, L, Ev), dtype=ct)
    if kept is not None:
        qa, ka, va = kept
    else:
        qa, ka, va = (np.empty((B, n, d + 1), dtype=ct) for n, d in ((L, E), (S, E), (S, Ev)))
    out = (np.empty((B, S, Ev), dtype=ct) if dropout else None, gf, np.empty((B, L), dtype=ct), qa, ka,
           None if dropout else np.empty((B, L, Ev + 1), dtype=ct), va)
    flat = (np.empty((B, L, E), dtype=ct), np.empty((B, S, E), dtype=ct)) if plain else ()
    per = B // (op.batch or (1,))[0]

    def fill(part):
        b0, b1 = part[0] * per, part[1] * per
        mine = tuple(None if x is None else x[b0:b1] for x in out)
        if kept is None:
            _backward_operands(op, q, k, v, o, g, lse, B, ct, part[0], part[1], out=mine)
        else:  # the forward's [Q scale, .]: its last column becomes -lse (redone rows' final values)
            _grad_operands(op, o, g, B, ct, part[0], part[1], out=mine[1:3] + mine[5:6])
            np.negative(lse[b0:b1], out=mine[3][..., E])
        for dst, src in zip(flat, (mine[3], mine[4])):
            np.copyto(dst[b0:b1], src[..., :E])
    _run_whole(fill, _whole_parts(op, B * (L + S) * (E + 1)))
    return out + flat


def _gradients(op, B, ct, shapes, zero):
    """dQ, dK, dV arrays (B, n, d) for ``shapes`` = ((L, E), (S, E), (S, Ev)): views of arrays in
    the batch's own shape, so that the caller's reshape back to it is a view of all of an owner
    (which the autograd engine hands to a leaf as its .grad without a copy)."""
    make = np.zeros if zero else np.empty
    return tuple(make(op.batch + s, dtype=ct).reshape((B,) + s) for s in shapes)


def _contiguous(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _forward(op, q, k, v, B, ct):
    """Output (B, L, Ev), log-sum-exp (B, L) and the units whose rows failed the check (they
    are left for the caller to redo exactly); see the module docstring."""
    from ..cpu_accel._matmul import matmul_nt
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    dropout = op.dropout is not None
    qa = np.empty((B, L, E + 1), dtype=ct)  # [Q scale, -m]
    ka = np.empty((B, S, E + 1), dtype=ct)  # [K, 1]
    va = np.empty((B, S, Ev + (0 if dropout else 1)), dtype=ct)  # [V, 1] (V with dropout)
    # V for the P V products, C-contiguous (B, S, Ev) (oneDNN's matmul took 0.59 ms on it, 0.66
    # on the strided columns of [V, 1], NumPy 0.69: (1, 256, 2048) x 64, one thread): the
    # caller's own array where it is one, else a copy; with dropout va is that copy
    own_v = (not dropout and v.dtype == ct and v.flags.c_contiguous
             and tuple(v.shape[:-2]) == tuple(op.batch or (1,)))
    vc = va if dropout else (v.reshape(B, S, Ev) if own_v else np.empty((B, S, Ev), dtype=ct))
    m = np.empty((B, L), dtype=ct)
    ns = min(S, _SAMPLE_KEYS)
    per = B // (op.batch or (1,))[0]

    def prep(part):
        """The operands of the flat batches of lead rows part, and their row offsets m: the exact
        scores of the first keys, plus a margin, in one call."""
        b0, b1 = part[0] * per, part[1] * per
        qp = _augment(_lead(q, op, *part), 0, ct, scale=op.scale, out=qa[b0:b1])
        kp = _augment(_lead(k, op, *part), 1, ct, out=ka[b0:b1])
        sampled = np.empty((b1 - b0, L, ns), dtype=ct)
        matmul_nt(qp, np.ascontiguousarray(kp[:, :ns]), sampled)
        mp = np.max(sampled, axis=-1, out=m[b0:b1])
        mp += ct.type(_SAMPLE_MARGIN)
        np.negative(mp, out=qp[..., E])
        vl = _lead(v, op, *part)
        if dropout:
            va[b0:b1].reshape(vl.shape)[...] = vl
        else:
            _augment(vl, 1, ct, out=va[b0:b1])
            if not own_v:
                vc[b0:b1].reshape(vl.shape)[...] = vl
    _run_whole(prep, _whole_parts(op, B * (L + S) * (E + 1)))
    out = np.empty((B, L, Ev), dtype=ct)
    lsum = np.empty((B, L), dtype=ct)
    units, bk = _units(B, L, S, op.is_causal, tile=_tile(op))
    least = ct.type(S * _UNDERFLOW)  # per row n_keys * 2^-40 with n_keys <= S: a safe side
    redo = []

    def body(us):
        buf = np.empty(_tile(op) if len(us) > 1 else 0, dtype=ct)  # P~ tiles reuse one buffer
        for b0, b1, i0, i1 in us:
            qi = _contiguous(qa[b0:b1, i0:i1])
            acc = l = None
            for j0, j1 in _key_blocks(i0, i1, S, bk, op.is_causal):
                kj = _contiguous(ka[b0:b1, j0:j1])
                n = (b1 - b0) * (i1 - i0) * (j1 - j0)
                p = (buf[:n] if n <= buf.size else np.empty(n, dtype=ct)).reshape(b1 - b0, i1 - i0, j1 - j0)
                matmul_nt(qi, kj, p, exp=True)
                if op.is_causal:
                    _zero_above_diagonal(p, i0, j0)
                # the row sums from a pass over P~, the product with V's own Ev columns (not
                # [V, 1]): 0.43 -> 0.41 ms per (1, 128, 2048) x 64 tile (in-process, one thread)
                part_l = np.einsum("bij->bi", p)  # (with dropout: the normaliser is the sum before it)
                l = part_l if l is None else l + part_l
                if dropout:
                    p *= op._keep_tile(b0, b1, i0, i1, j0, j1, np, ct)
                first = acc is None  # (oneDNN's matmul, summing over the key blocks in place)
                if first:
                    acc = np.empty((b1 - b0, i1 - i0, Ev), dtype=ct)
                _mm(p, vc[b0:b1, j0:j1], acc, accumulate=not first)
            if not (np.isfinite(acc).all() and np.isfinite(l).all() and l.min() >= least):
                redo.append((b0, b1, i0, i1))
                continue
            np.divide(acc, l[..., None], out=out[b0:b1, i0:i1])
            lsum[b0:b1, i0:i1] = l

    _run(body, units, B * L * S // (2 if op.is_causal else 1))
    with np.errstate(divide="ignore", invalid="ignore"):  # rows to redo may hold anything
        lse = np.log(lsum, out=lsum)
    lse += m
    if getattr(op, "_recording", False) and not dropout:
        op._whole_operands = {"all": (qa, ka, va)}  # read again by the backward (see _forward_whole_part)
    return out, lse, redo


def _backward(op, q, k, v, o, g, lse, B, ct):
    from ..cpu_accel._matmul import matmul_nt
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    # (with Q scale and K as C-contiguous copies: the dQ and dK products in oneDNN took 0.59 and
    # 0.68 ms on them, 0.66 and 0.77 ms on the strided columns of [Q scale, .] and [K, 1], NumPy
    # 0.69 and 0.77 ms; (1, 256, 2048) tiles x 64, one thread)
    vb, g, delta, qa, ka, ga, va, qs, kc = _backward_operands_parallel(op, q, k, v, o, g, lse, B, ct, plain=True)
    dropout = op.dropout is not None
    dq, dk, dv = _gradients(op, B, ct, ((L, E), (S, E), (S, Ev)), zero=True)
    units, bk = _units(B, L, S, op.is_causal, short=_SHORT_CAUSAL_BACKWARD, tile=_tile(op))

    def body(args):
        us, dk_, dv_ = args
        bufs = np.empty((2, _tile(op) if len(us) > 1 else 0), dtype=ct)  # P and dS tiles reuse these
        for b0, b1, i0, i1 in us:
            qi = _contiguous(qa[b0:b1, i0:i1])
            gi = g[b0:b1, i0:i1]
            gai = None if dropout else _contiguous(ga[b0:b1, i0:i1])
            for j0, j1 in _key_blocks(i0, i1, S, bk, op.is_causal):
                kj = _contiguous(ka[b0:b1, j0:j1])
                shape = (b1 - b0, i1 - i0, j1 - j0)
                n = shape[0] * shape[1] * shape[2]
                if n <= bufs.shape[1]:
                    p, ds = bufs[0, :n].reshape(shape), bufs[1, :n].reshape(shape)
                else:
                    p, ds = np.empty(shape, dtype=ct), np.empty(shape, dtype=ct)
                matmul_nt(qi, kj, p, exp=True)
                if op.is_causal:
                    _zero_above_diagonal(p, i0, j0)
                if dropout:  # dP = (dO V^T) o Z, dV = (P o Z)^T dO; dS = P o (dP - D)
                    np.matmul(gi, vb[b0:b1, j0:j1].swapaxes(-1, -2), out=ds)
                    z = op._keep_tile(b0, b1, i0, i1, j0, j1, np, ct)
                    ds *= z
                    ds -= delta[b0:b1, i0:i1, None]
                    ds *= p
                    p *= z
                    del z
                else:
                    matmul_nt(gai, _contiguous(va[b0:b1, j0:j1]), ds, mul=p)  # ([dO, -D] [V, 1]^T) o P
                # (oneDNN's matmul, summing into the gradients in place)
                _mm(p, gi, dv_[b0:b1, j0:j1], trans_a=True, accumulate=True)
                _mm(ds, kc[b0:b1, j0:j1], dq[b0:b1, i0:i1], accumulate=True)
                _mm(ds, qs[b0:b1, i0:i1], dk_[b0:b1, j0:j1], trans_a=True, accumulate=True)

    work = B * L * S // (2 if op.is_causal else 1)
    n = 1
    if work >= _PARALLEL_MIN_WORK and len(units) > 1 and _cpu_threads.controller() is not None:
        n = min(len(units), _cpu_threads.blas_threads())
    chunks = sorted({u[:2] for u in units})
    if len(chunks) >= n:  # whole batch chunks per thread: their dK, dV rows are disjoint
        mine = [set(chunks[t::n]) for t in range(n)]
        parts = [([u for u in units if u[:2] in mine[t]], dk, dv) for t in range(n)]
    else:  # query blocks of one chunk are spread: each thread sums into its own dK, dV
        parts = [(units[t::n], dk if t == 0 else np.zeros_like(dk), dv if t == 0 else np.zeros_like(dv))
                 for t in range(n)]
    if n <= 1:
        body(parts[0])
    else:
        from ..cpu_accel._matmul import one_omp_thread

        def part(args):
            with one_omp_thread():
                body(args)
        _cpu_threads.run_parts(part, parts, limit_blas=False)  # (BLAS held at one thread: see _run)
    for _, dk_, dv_ in parts[1:]:
        if dk_ is not dk:
            dk += dk_
            dv += dv_
    return dq, dk, dv


# -- short sequences: batch chunks in oneDNN calls -----------------------------------------------
# A GPT's attention (B H = 64 problems of 128 x 128) cut into tiles for Python threads is many
# small calls per head batch, with a NumPy batched matmul (one BLAS call per problem) in each.
# Here a chunk of the batch is one oneDNN call per product and query block; the operands are
# read and written in place as strided views (a block of rows, a transposed read, an
# accumulation into dK/dV by the sum post-op). No NumPy BLAS call runs in between: OpenBLAS's
# and OpenMP's worker threads hand the cores back and forth badly (see _one_thread_libraries).
# The batch's first dim is shared among Python threads (_whole_parts), each doing everything
# for its share -- copies, offsets, masks and its oneDNN calls on one OpenMP thread: with
# oneDNN's own team parallelising only the products, the NumPy passes between them (about
# half of a GPT-sized forward) ran on one core.

def _short_blocks(B, L, S, causal):
    """(batch chunk, query rows) of the short path: causal rows in up to 4 blocks of at least
    _SHORT_CAUSAL_ROWS (a block's keys end at its last row: L = 128 in 2 blocks computes 3/4 of
    the scores, in 4 blocks 5/8), a chunk of the batch filling _WHOLE_TILE scores.

    Fewer, larger blocks trade FLOPs for calls and Python between them, which the batch's two
    halves run on two threads under one GIL: quiet in-process A/B, 2 threads, fwd+bwd, B H = 64
    L = 128 E = 32: 4 blocks 7.74 ms, 3 (48 rows) 7.35, 2 7.06; B H = 128 L = 96: 4 blocks
    9.63, 2 (48 rows) 9.08; L = 256 and 512 (B H = 64 / 32, E = 64) keep 4 blocks (2 blocks
    5% and 12% slower)."""
    if causal:
        n = max(1, min(4, L // _SHORT_CAUSAL_ROWS))
        bq = min(L, max(_CAUSAL_MIN_ROWS, -(-L // n)))
    else:
        bq = L
    bb = max(1, min(B, _WHOLE_TILE // (bq * S)))
    return bb, bq


def _keep_probs(B, L, S, causal) -> bool:
    """Whether the forward keeps its probability blocks for the backward: the scores of all B
    problems' query blocks (:func:`_short_blocks`) fit in _KEEP_PROBS_BYTES as float32."""
    bq = _short_blocks(B, L, S, causal)[1]
    per = sum((min(L, i0 + bq) - i0) * (min(S, i0 + bq) if causal else S) for i0 in range(0, L, bq))
    return B * per * 4 <= _KEEP_PROBS_BYTES


def _mm(a, b, out, trans_a=False, trans_b=False, exp=False, mul=None, accumulate=False):
    """cpu_accel's matmul, or the same product with NumPy where oneDNN declines the layout."""
    from ..cpu_accel._matmul import matmul
    if matmul(a, b, out, trans_a=trans_a, trans_b=trans_b, exp=exp, mul=mul, accumulate=accumulate):
        return
    r = np.matmul(a.swapaxes(-1, -2) if trans_a else a, b.swapaxes(-1, -2) if trans_b else b)
    if exp:
        np.exp(r, out=r)
    if mul is not None:
        r *= mul
    if accumulate:
        out += r
    else:
        out[...] = r


def _causal_sample(sampled):
    """-inf where sampled key j lies after query i (is_causal), so every row's sample is of keys
    it attends to (key 0 always is); ``sampled`` is (B, keys, queries)."""
    ns, L = sampled.shape[-2:]
    r = min(L, ns)  # queries from ns on attend to every sampled key
    sampled[..., :r][..., np.arange(ns)[:, None] > np.arange(r)[None, :]] = -np.inf


def _sampled_offsets(qa, ka, causal, ct):
    """Row offsets from the exact scores of the first keys (those a causal row attends to) plus
    a margin; ``qa``'s last column must be 0. Keys x queries, so the max runs over whole rows."""
    ns = min(ka.shape[1], _SAMPLE_KEYS)
    sampled = np.empty((qa.shape[0], ns, qa.shape[1]), dtype=ct)
    _mm(ka[:, :ns], qa, sampled, trans_b=True)
    if causal:
        _causal_sample(sampled)
    m = sampled.max(axis=1)
    m += ct.type(_SAMPLE_MARGIN)
    return m


def _whole_parts(op, work):
    """Ranges (a0, a1) of the batch's first dim, one per BLAS thread, for work done per share of
    the batch by Python threads (:func:`_run_whole`): the short path's whole computation, the
    long path's operand copies and row offsets. One range for small work, a batch without a
    leading dim to split, no thread control, or a call from inside a pool thread (the split of
    ``_cpu_threads.batch_slices``)."""
    lead = (op.batch or (1,))[0]
    return [(s.start or 0, lead if s.stop is None else s.stop)
            for s in _cpu_threads.batch_slices(lead, work, _WHOLE_PARALLEL_MIN_WORK)]


def _run_whole(fn, parts):
    """fn(part) for every part, concurrently (one OpenMP thread each) when there are several.
    No part calls NumPy's BLAS (every product is oneDNN's), so its thread count is left alone."""
    if len(parts) == 1:
        fn(parts[0])
        return
    from ..cpu_accel._matmul import one_omp_thread

    def part(p):
        with one_omp_thread():
            fn(p)
    _cpu_threads.run_parts(part, parts, limit_blas=False)


def _forward_whole(op, q, k, v, B, ct):
    """Output, log-sum-exp and the batch chunks to redo exactly, as :func:`_forward`.

    The row offset is the Cauchy-Schwarz bound ``m_i = |q_i| scale max_j |k_j|`` (no score can
    exceed it, so ``exp(S - m)`` cannot overflow, and a causal row needs no care); where it is
    so loose that a row's sum drops below S _SHORT_LEAST (small terms could have been lost),
    the chunk is recomputed with sampled offsets (:func:`_sampled_offsets`), and if that fails
    too, redone exactly by the caller. The batch is split among threads (:func:`_whole_parts`)."""
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    out = np.empty((B, L, Ev), dtype=ct)
    lse = np.empty((B, L), dtype=ct)
    redo = []
    op._whole_operands = {}
    parts = _whole_parts(op, B * L * S // (2 if op.is_causal else 1))
    _run_whole(lambda part: _forward_whole_part(op, q, k, v, B, ct, part, out, lse, redo), parts)
    return out, lse, redo


def _forward_whole_part(op, q, k, v, B, ct, part, out_all, lse_all, redo):
    """The flat batches of lead rows part = (a0, a1): writes their rows of ``out_all`` and
    ``lse_all``, appends chunks to redo (flat batch ranges) to ``redo``."""
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    a0, a1 = part
    per = B // (op.batch or (1,))[0]
    base, nb = a0 * per, (a1 - a0) * per
    m = np.empty((nb, L), dtype=ct)  # |Q_i scale|^2, then the offsets
    ksq = np.empty((nb, S), dtype=ct)
    qa = _augment(_lead(q, op, a0, a1), 0, ct, scale=op.scale, sq=m)  # [Q scale, -m] (m below)
    ka = _augment(_lead(k, op, a0, a1), 1, ct, sq=ksq)
    kmax = np.sqrt(ksq.max(axis=-1))  # (nb,)
    np.sqrt(m, out=m)
    m *= kmax[:, None]
    np.negative(m, out=qa[..., E])
    dropout = op.dropout is not None
    recording = getattr(op, "_recording", False) and not dropout
    vl = _lead(v, op, a0, a1)
    va = None  # [V, 1] for the backward
    if recording and not (vl.dtype == ct and vl.flags.c_contiguous):
        va = _augment(vl, 1, ct)  # one copy, kept for the backward; P V reads its first Ev columns
        vm = va[..., :Ev]
    else:  # V itself where it is already C-ordered in the compute dtype (no copy; the backward augments)
        vm = np.ascontiguousarray(vl, dtype=ct).reshape(nb, S, Ev)
    out = out_all[base:base + nb]
    lsum = lse_all[base:base + nb]
    bb, bq = _short_blocks(nb, L, S, op.is_causal)
    # recording: the probability blocks are kept for the backward (see _KEEP_PROBS_BYTES), each
    # in its own array; else one buffer serves every block
    keep = {} if recording and _keep_probs(B, L, S, op.is_causal) else None
    buf = None if keep is not None else np.empty(bb * bq * S, dtype=ct)
    least = ct.type(S * _SHORT_LEAST)
    # the compiled kernel turns offset scores into normalised probabilities in one pass per row
    # (exp, causal zeros, row sum, 1 / l), after a plain score product; else oneDNN's exp
    # post-op, the causal zeros, NumPy's row sums and O / l. In-process A/B, 2 threads, fwd+bwd,
    # post-op -> kernel (medians of 5 rounds, AVX-512 EPYC): B H = 64 L = 128 E = 32 causal
    # 4.25 -> 3.99 ms (forward alone 1.89 -> 1.65), the GPT programs' strided q, k, v 5.26 ->
    # 4.63 (T = 128) and 7.21 -> 6.41 (T = 96); L = 512 unchanged (40.9 / 41.1, causal 29.7 / 29.4)
    probs = _native.kernel_for("attn_probs", np.empty((1, 1, 1), ct), np.empty((1, 1), ct)) is not None
    lbuf = np.empty(bb * bq, dtype=ct) if probs else None

    def chunk(b0, b1):
        """The chunk's rows with the offsets in qa[b0:b1, :, E]; False if a row sum failed the check.

        The row sums come from a pass over P~ rather than a ones column on V: a product with Ev
        columns (not Ev + 1) plus the pass measured 10-20% faster than the augmented product
        (in-process, one thread: (2, 512, 512) x 64 0.94 -> 0.76 ms, (64, 32, 128) x 32
        0.35 -> 0.29 ms)."""
        for i0 in range(0, L, bq):
            i1 = min(L, i0 + bq)
            j1 = min(S, i1) if op.is_causal else S
            if keep is None:
                p = buf[:(b1 - b0) * (i1 - i0) * j1].reshape(b1 - b0, i1 - i0, j1)
            else:
                p = keep[(b0, i0)] = np.empty((b1 - b0, i1 - i0, j1), dtype=ct)
            if probs:  # S - m, then P = exp(S - m) / l and l in one pass per row
                _mm(qa[b0:b1, i0:i1], ka[b0:b1, :j1], p, trans_b=True)
                l = lbuf[:(b1 - b0) * (i1 - i0)].reshape(b1 - b0, i1 - i0)
                _native_softmax.attention_probs(p, l, i0, 0, op.is_causal)
            else:
                _mm(qa[b0:b1, i0:i1], ka[b0:b1, :j1], p, trans_b=True, exp=True)  # exp(S - m)
                if op.is_causal:  # the block's own square holds the masked keys
                    _zero_above_diagonal(p, i0, 0)
                l = np.einsum("bij->bi", p)  # (with dropout: the normaliser is the sum before it)
            if not (l.min() >= least and np.isfinite(l.max())):  # (NaN fails too)
                return False
            if dropout:
                p *= op._keep_tile(base + b0, base + b1, i0, i1, 0, j1, np, ct)
            o = out[b0:b1, i0:i1]
            _mm(p, vm[b0:b1, :j1], o)
            if not probs:
                o /= l[..., None]
            lsum[b0:b1, i0:i1] = l
        return True

    kept = keep is not None
    for b0 in range(0, nb, bb):
        b1 = min(nb, b0 + bb)
        if chunk(b0, b1):
            continue
        qa[b0:b1, :, E] = 0
        ms = _sampled_offsets(qa[b0:b1], ka[b0:b1], op.is_causal, ct)
        np.negative(ms, out=qa[b0:b1, :, E])
        m[b0:b1] = ms
        if not chunk(b0, b1):
            redo.append((base + b0, base + b1, 0, L))
            kept = False  # the caller redoes these rows exactly: the backward recomputes P
    inv_l = None
    if kept and not probs:
        inv_l = np.divide(ct.type(1), lsum)  # P = P~ / l: the backward scales dO's rows instead
    with np.errstate(divide="ignore", invalid="ignore"):  # rows to redo may hold anything
        np.log(lsum, out=lsum)
    lsum += m
    if recording:
        # the backward reads the same [Q scale, .], [K, 1], [V, 1] (its own last column of Q):
        # kept rather than copied again from the (often strided) inputs; [V, 1] is None where
        # the forward read V in place (the backward makes it); and the probability blocks where
        # they were kept: P itself (inv_l None) or P~ = P l with 1 / l
        op._whole_operands[part] = (qa, ka, va, keep if kept else None, inv_l)


def _backward_whole(op, q, k, v, o, g, lse, B, ct):
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    dq, dk, dv = _gradients(op, B, ct, ((L, E), (S, E), (S, Ev)), zero=False)
    parts = _whole_parts(op, B * L * S // (2 if op.is_causal else 1))
    _run_whole(lambda part: _backward_whole_part(op, q, k, v, o, g, lse, B, ct, part, dq, dk, dv), parts)
    return dq, dk, dv


def _backward_whole_part(op, q, k, v, o, g, lse, B, ct, part, dq_all, dk_all, dv_all):
    """dQ (unscaled), dK, dV of the flat batches of lead rows part = (a0, a1), into their rows
    of the ``_all`` arrays."""
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    a0, a1 = part
    per = B // (op.batch or (1,))[0]
    base, nb = a0 * per, (a1 - a0) * per
    kept = (getattr(op, "_whole_operands", None) or {}).get(part)
    probs = None
    if kept is not None:  # the forward's, with -lse (as finally computed, redone rows too) in Q's column
        qa, ka, va, probs, inv_l = kept
        if va is None:  # the forward read V in place
            va = _augment(_lead(v, op, a0, a1), 1, ct)
        g, delta, ga = _grad_operands(op, o, g, B, ct, a0, a1)
        if probs is None:
            qa[..., E] = -lse[base:base + nb]
        elif inv_l is not None:  # P = P~ / l: dS = P~ o ([dO, -D] / l) [V, 1]^T and dV = P~^T (dO / l)
            ga *= inv_l[..., None]
    else:
        _, g, delta, qa, ka, ga, va = _backward_operands(op, q, k, v, o, g, lse, B, ct, a0, a1)
    dropout = op.dropout is not None
    dq = dq_all[base:base + nb]
    dk = dk_all[base:base + nb]
    dv = dv_all[base:base + nb]
    bb, bq = _short_blocks(nb, L, S, op.is_causal)
    # the query blocks from the last: its key range is the longest (all S keys unless a causal
    # L < S), so its dK/dV products write where the others accumulate -- no zero-fill pass
    # (0.14 ms of a GPT-shape part's 6.8 ms, one thread); shorter ranges are zeroed first
    starts = list(range(0, L, bq))[::-1]
    if (min(S, L) if op.is_causal else S) < S:
        dk[...] = 0
        dv[...] = 0
    bufs = np.empty((1 if probs is not None else 2, bb * bq * S), dtype=ct)
    for b0 in range(0, nb, bb):
        b1 = min(nb, b0 + bb)
        for i0 in starts:
            i1 = min(L, i0 + bq)
            j1 = min(S, i1) if op.is_causal else S
            acc = i0 != starts[0] or j1 < S
            n = (b1 - b0) * (i1 - i0) * j1
            ds = bufs[-1, :n].reshape(b1 - b0, i1 - i0, j1)
            if probs is not None:  # the forward's P or P~ (causal zeros included; ga carries 1 / l for P~)
                p = probs[(b0, i0)]
                _mm(ga[b0:b1, i0:i1], va[b0:b1, :j1], ds, trans_b=True, mul=p)        # dS
                _mm(p, ga[b0:b1, i0:i1, :Ev], dv[b0:b1, :j1], trans_a=True, accumulate=acc)  # dV += P^T dO
                _mm(ds, ka[b0:b1, :j1, :E], dq[b0:b1, i0:i1])
                _mm(ds, qa[b0:b1, i0:i1, :E], dk[b0:b1, :j1], trans_a=True, accumulate=acc)
                continue
            p = bufs[0, :n].reshape(b1 - b0, i1 - i0, j1)
            _mm(qa[b0:b1, i0:i1], ka[b0:b1, :j1], p, trans_b=True, exp=True)  # P = exp(Q K^T scale - lse)
            if op.is_causal:
                _zero_above_diagonal(p, i0, 0)
            gi = g[b0:b1, i0:i1]
            if dropout:  # dP = (dO V^T) o Z, dV = (P o Z)^T dO; dS = P o (dP - D)
                _mm(gi, va[b0:b1, :j1, :Ev], ds, trans_b=True)
                z = op._keep_tile(base + b0, base + b1, i0, i1, 0, j1, np, ct)
                ds *= z
                ds -= delta[b0:b1, i0:i1, None]
                ds *= p
                p *= z
                del z
            else:
                _mm(ga[b0:b1, i0:i1], va[b0:b1, :j1], ds, trans_b=True, mul=p)  # ([dO, -D] [V, 1]^T) o P
            _mm(p, gi, dv[b0:b1, :j1], trans_a=True, accumulate=acc)                  # dV += P^T dO
            _mm(ds, ka[b0:b1, :j1, :E], dq[b0:b1, i0:i1])                           # dQ = dS K
            _mm(ds, qa[b0:b1, i0:i1, :E], dk[b0:b1, :j1], trans_a=True, accumulate=acc)  # dK += dS^T Q scale
