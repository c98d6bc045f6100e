"""Chunked implicit-GEMM convolution: the default CPU algorithm for 1-4 (any) spatial dims.

No im2col of the whole input. The padded input is laid out once as ``(phase, C, N, *Q)``
(the polyphase split handles stride: with ``k * dilation = q * stride + r`` the tap ``k``
reads phase ``r`` at shift ``q``, so every tap becomes a *stride-1* shift), and flattened
over ``(N, *Q)``. A stride-1 shift of a flattened grid is a plain offset, so the input rows a
tap needs for a run of output positions are one contiguous slice:

    acc[:, j] = sum_taps W_tap @ src[phase(tap), :, j + offset(tap)]

computed on the grid ``(N, *Q)`` (positions past the valid output extent are garbage and are
cropped away). The flat range is cut into chunks of a few thousand positions so the
accumulator and the gathered columns stay in cache; the taps of trailing kernel axes are
stacked into the GEMM's contraction (``K = taps x C_in / groups``, up to 256) so BLAS gets a
useful shape, and when their offsets form a lattice (always for stride 1) they are gathered
by one strided copy. Chunks are shared among threads (see ``_cpu_threads``). Extra memory:
the polyphase source (about the padded input) plus per-thread chunk buffers of ~1 MB.

The transposed convolution (the input gradient) is the same correlation run once per output
phase on the zero-embedded ``grad_output``; the weight gradient contracts the chunks of
``grad_output`` (zero on the garbage positions) with the same gathered columns.
"""
from __future__ import annotations

import itertools
import math

from ..backends import backend_of
from ._cpu_threads import run_chunks

_MAX_K = 400            # taps x channels stacked into one GEMM contraction, at most
_COL_BYTES = 2 << 20    # gathered-column buffer per chunk (per thread)
_ACC_BYTES = 1 << 19    # accumulator per chunk
_MIN_CHUNK = 256
_SRC_BYTES = 4 << 20    # padded/phase-split source per batch block, at least


def _prod(xs) -> int:
    return math.prod(xs) if xs else 1


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------- chunking
def _chunks(grid, valid, target):
    """Cut the flat grid into runs along one axis with full trailing extents.

    Yields ``(j0, lbuf, lcomp, rr, m, lead)``: flat start, buffer length (``rr`` blocks of the
    trailing axes), number of positions actually needed (up to the last valid output), the
    run length ``rr`` along axis ``m`` and the index tuple of the axes before ``m`` plus the
    run's slice, which addresses the output.
    """
    D = len(grid)
    gst = [_prod(grid[a + 1:]) for a in range(D)]
    m = next(a for a in range(D) if gst[a] <= target)
    block = gst[m]
    rr_max = max(1, target // block)
    tail_span = sum((valid[a] - 1) * gst[a] for a in range(m + 1, D)) + 1
    for lead in itertools.product(*[range(valid[a]) for a in range(m)]):
        base = sum(i * gst[a] for a, i in enumerate(lead))
        for r0 in range(0, valid[m], rr_max):
            rr = min(rr_max, valid[m] - r0)
            yield (base + r0 * block, rr * block, (rr - 1) * block + tail_span, rr, m,
                   lead + (slice(r0, r0 + rr),))


def _crop(buf2d, rr, grid, valid, m):
    """View of the chunk buffer ``(rows, lbuf)`` as ``(rows, rr, *trailing valid)``."""
    rows = buf2d.shape[0]
    v = buf2d.reshape((rows, rr) + tuple(grid[m + 1:]))
    return v[(slice(None), slice(None)) + tuple(slice(0, n) for n in valid[m + 1:])]


def _chunk_target(src4, rows_out, k_rows):
    """Positions per chunk: the gathered columns within ``_COL_BYTES`` (and within half the
    source, so small problems keep small buffers), the accumulator within ``_ACC_BYTES``."""
    item = src4.dtype.itemsize
    col_bytes = min(_COL_BYTES, max(256 << 10, src4.nbytes // 2))
    t = min(col_bytes // max(1, k_rows * item), _ACC_BYTES // max(1, rows_out * item))
    return max(_MIN_CHUNK, t)


class _Group:
    """Taps whose columns are gathered together: ``lattice`` = (phase, base offset, shape,
    strides) when their offsets form a regular lattice (one strided copy), else per tap."""

    __slots__ = ("taps", "cols", "lattice")

    def __init__(self, taps, box):
        self.taps = taps
        self.cols = [t for _, _, t in taps]
        self.lattice = None
        ph0, off0, _ = taps[0]
        if len(taps) > 1 and all(ph == ph0 for ph, _, _ in taps):
            idx = list(itertools.product(*[range(b) for b in box]))
            strides = []
            for a in range(len(box)):
                unit = tuple(1 if i == a else 0 for i in range(len(box)))
                strides.append(taps[idx.index(unit)][1] - off0 if box[a] > 1 else 0)
            if all(off == off0 + sum(i * st for i, st in zip(ix, strides))
                   for ix, (_, off, _) in zip(idx, taps)):
                self.lattice = (ph0, off0, tuple(box), tuple(strides))


def _tap_groups(taps, box, cin_g):
    """Split taps (row-major over the kernel ``box``) into groups over trailing kernel axes,
    as large as fits ``_MAX_K`` contraction rows."""
    d = len(box)
    b = next((b for b in range(d + 1) if cin_g * _prod(box[b:]) <= _MAX_K), d)
    gt = _prod(box[b:])
    return [_Group(taps[i:i + gt], box[b:]) for i in range(0, len(taps), gt)], gt


def _gather(xp, src4, grp, j0, lcomp, col):
    """The GEMM operand ``(G, Cg * len(grp), lcomp)`` (channel-major) for a group of taps."""
    if len(grp.taps) == 1:
        ph, off, _ = grp.taps[0]
        return src4[ph, :, :, j0 + off:j0 + off + lcomp]
    G, cg, gt, lmax = col.shape
    dst = col[:, :, :, :lcomp]
    if grp.lattice is not None:
        ph, base, shape, strides = grp.lattice
        sp = src4[ph]
        it = sp.itemsize
        view = xp.lib.stride_tricks.as_strided(
            sp[:, :, j0 + base:], shape=(G, cg) + shape + (lcomp,),
            strides=sp.strides[:2] + tuple(st * it for st in strides) + (it,))
        dst.reshape((G, cg) + shape + (lcomp,))[...] = view
    else:
        for u, (ph, off, _) in enumerate(grp.taps):
            dst[:, :, u] = src4[ph, :, :, j0 + off:j0 + off + lcomp]
    return dst.reshape(G, cg * gt, lcomp)


def _parallel(src4, chunks, item):
    """Share chunks among threads only for NumPy arrays and enough work to pay for it."""
    return backend_of(src4).name == "numpy" and len(chunks) > 1 and sum(c[1] for c in chunks) * item > (1 << 18)


def correlate(src4, grid, valid, taps, box, wt, out_t):
    """``out_t[:, v] = sum_taps wt[..., tap] @ src4[phase, :, :, v + offset]`` on a flat grid.

    ``src4``: ``(nphase, G, Cin_g, L)`` with ``L`` the flat size of ``grid = (N, *Q)``;
    ``taps``: ``(phase, flat offset, weight column)``, row-major over the kernel ``box``;
    ``wt``: ``(G, Out_g, Cin_g, T)``;
    ``out_t``: a ``(G * Out_g, *valid)`` view the valid outputs are written to.
    """
    xp = backend_of(src4).xp
    G, og, cg = wt.shape[:3]
    groups, gt = _tap_groups(taps, box, cg)
    mats = [xp.ascontiguousarray(wt[..., grp.cols].reshape(G, og, cg * len(grp.cols))) for grp in groups]
    item = src4.dtype.itemsize
    target = _chunk_target(src4, G * og, gt * cg if gt > 1 else 0)
    chunks = list(_chunks(grid, valid, target))
    lmax = max(c[1] for c in chunks)

    def body(part):
        acc_buf = xp.empty((G, og, lmax), dtype=src4.dtype)
        tmp_buf = xp.empty((G, og, lmax), dtype=src4.dtype) if len(groups) > 1 else None
        col = xp.empty((G, cg, gt, lmax), dtype=src4.dtype) if gt > 1 else None
        for j0, lbuf, lcomp, rr, m, key in part:
            acc = acc_buf[:, :, :lcomp]
            for gi, grp in enumerate(groups):
                opnd = _gather(xp, src4, grp, j0, lcomp, col)
                if gi == 0:
                    xp.matmul(mats[gi], opnd, out=acc)
                else:
                    tmp = tmp_buf[:, :, :lcomp]
                    xp.matmul(mats[gi], opnd, out=tmp)
                    acc += tmp
            out_t[(slice(None),) + key] = _crop(
                acc_buf[:, :, :lbuf].reshape(G * og, lbuf), rr, grid, valid, m)

    run_chunks(body, chunks, _parallel(src4, chunks, item))


def weight_correlate(src4, grid, valid, taps, box, gy_t, G, og):
    """``gw[..., tap] = sum_v gy[:, v] src4[phase, :, :, v + offset]^T`` -> ``(G, og, Cg, T)``."""
    xp = backend_of(src4).xp
    cg = src4.shape[2]
    groups, gt = _tap_groups(taps, box, cg)
    item = src4.dtype.itemsize
    target = _chunk_target(src4, G * og, gt * cg if gt > 1 else 0)
    chunks = list(_chunks(grid, valid, target))
    lmax = max(c[1] for c in chunks)

    def body(part):
        gbuf = xp.zeros((G * og, lmax), dtype=src4.dtype)  # garbage positions stay zero
        col = xp.empty((G, cg, gt, lmax), dtype=src4.dtype) if gt > 1 else None
        res = [xp.zeros((G, og, len(grp.cols) * cg), dtype=src4.dtype) for grp in groups]
        for j0, lbuf, lcomp, rr, m, key in part:
            _crop(gbuf[:, :lbuf], rr, grid, valid, m)[...] = gy_t[(slice(None),) + key]
            gyc = gbuf[:, :lcomp].reshape(G, og, lcomp)
            for gi, grp in enumerate(groups):
                opnd = _gather(xp, src4, grp, j0, lcomp, col)
                res[gi] += xp.matmul(gyc, opnd.transpose(0, 2, 1))
        return res

    parts = run_chunks(body, chunks, _parallel(src4, chunks, item))
    res = parts[0]
    for other in parts[1:]:
        for r, o in zip(res, other):
            r += o
    T = len(taps)
    gw = xp.empty((G, og, cg, T), dtype=src4.dtype)
    for grp, r in zip(groups, res):
        gw[..., grp.cols] = r.reshape(G, og, cg, len(grp.cols))
    return gw


# ----------------------------------------------------------------------------- layouts
def _forward_plan(spatial, kernel, geom):
    """Per axis: used phases, each tap's (phase index, shift), and the grid extent Q."""
    o = geom.out_size(spatial, kernel)
    plan = []
    for a in range(len(spatial)):
        s, dl = geom.stride[a], geom.dilation[a]
        e = [k * dl for k in range(kernel[a])]
        phases = sorted({x % s for x in e})
        tap = [(phases.index(x % s), x // s) for x in e]
        plan.append((phases, tap, o[a] + max(q for _, q in tap)))
    return o, plan


def _phase_source(x, geom, plan):
    """The padded input split into stride phases: ``(nphase, C, N, *Q)``."""
    xp = backend_of(x).xp
    N, C = x.shape[:2]
    S = x.shape[2:]
    d = len(S)
    Q = tuple(p[2] for p in plan)
    xt = x.transpose((1, 0) + tuple(range(2, 2 + d)))
    trivial = (all(p[0] == [0] for p in plan) and geom.no_padding and Q == tuple(S)
               and all(s == 1 for s in geom.stride))
    if trivial and (N == 1 or C == 1) and x.flags.c_contiguous:
        return xt.reshape((1, C, N) + tuple(S))
    combos = list(itertools.product(*[p[0] for p in plan]))
    src = xp.zeros((len(combos), C, N) + Q, dtype=x.dtype)
    for ph, combo in enumerate(combos):
        dst, srck = [], []
        for a, r in enumerate(combo):
            s, lo = geom.stride[a], geom.pad_lo[a]
            i_lo = max(0, _ceil_div(lo - r, s))
            i_hi = min(Q[a], _ceil_div(S[a] + lo - r, s))
            if i_hi <= i_lo:
                break
            x0 = i_lo * s + r - lo
            dst.append(slice(i_lo, i_hi))
            srck.append(slice(x0, x0 + (i_hi - i_lo - 1) * s + 1, s))
        else:
            src[(ph, slice(None), slice(None)) + tuple(dst)] = xt[(slice(None), slice(None)) + tuple(srck)]
    return src


def _forward_taps(plan, grid):
    gst = [_prod(grid[a + 1:]) for a in range(len(grid))]
    nph = [len(p[0]) for p in plan]
    taps = []
    for t, kidx in enumerate(itertools.product(*[range(len(p[1])) for p in plan])):
        ph, off = 0, 0
        for a, k in enumerate(kidx):
            pi, q = plan[a][1][k]
            ph = ph * nph[a] + pi
            off += q * gst[a + 1]
        taps.append((ph, off, t))
    return taps


def _channels_first(a):
    return a.transpose((1, 0) + tuple(range(2, a.ndim)))


def _batch_blocks(N, per_sample, result_bytes):
    """Runs of samples whose source layout stays within ``max(4 MiB, result / 2)``: the
    padded copy is then a bounded fraction of the op's own result, whatever the batch."""
    budget = max(_SRC_BYTES, result_bytes // 2)
    nb = max(1, min(N, budget // max(1, per_sample)))
    return [slice(n0, min(N, n0 + nb)) for n0 in range(0, N, nb)]


def conv_forward(x, w, geom):
    """``y[n, o, i] = sum_{c, k} w[o, c, k] x_pad[n, g(o) c, i * stride + k * dilation]``."""
    xp = backend_of(x).xp
    N, C = x.shape[:2]
    O, cg = w.shape[:2]
    G = geom.groups
    o, plan = _forward_plan(x.shape[2:], w.shape[2:], geom)
    y = xp.empty((N, O) + o, dtype=x.dtype)
    if y.size == 0:
        return y
    if cg == 0:
        y[...] = 0
        return y
    Q = tuple(p[2] for p in plan)
    wt = w.reshape(G, O // G, cg, -1)
    for nb in _batch_blocks(N, C * _prod(Q) * x.itemsize, y.nbytes):
        src = _phase_source(x[nb], geom, plan)
        grid = (nb.stop - nb.start,) + Q
        correlate(src.reshape(src.shape[0], G, cg, -1), grid, grid[:1] + o, _forward_taps(plan, grid),
                  tuple(w.shape[2:]), wt, _channels_first(y[nb]))
        del src
    return y


def conv_weight_grad(x, gy, geom, kernel):
    """``gw[o, c, k] = sum_{n, i} gy[n, o, i] x_pad[n, g(o) c, i * stride + k * dilation]``."""
    xp = backend_of(x).xp
    N, C = x.shape[:2]
    O = gy.shape[1]
    G = geom.groups
    cg = C // G
    o, plan = _forward_plan(x.shape[2:], kernel, geom)
    if gy.size == 0 or cg == 0:
        return xp.zeros((O, cg) + tuple(kernel), dtype=x.dtype)
    Q = tuple(p[2] for p in plan)
    gw = None
    for nb in _batch_blocks(N, C * _prod(Q) * x.itemsize, 0):
        src = _phase_source(x[nb], geom, plan)
        grid = (nb.stop - nb.start,) + Q
        # grad_output may be shorter than the geometry's output (the adjoint of an
        # output_padding >= stride): only its positions contribute
        part = weight_correlate(src.reshape(src.shape[0], G, cg, -1), grid, grid[:1] + tuple(gy.shape[2:]),
                                _forward_taps(plan, grid), tuple(kernel), _channels_first(gy[nb]), G, O // G)
        del src
        if gw is None:
            gw = part
        else:
            gw += part
    return gw.reshape((O, cg) + tuple(kernel))


def conv_transpose(gy, w, geom, spatial):
    """The adjoint of :func:`conv_forward` in ``x``: ``gx[n, g c, p] = sum w[o, c, k] gy[n, o, i]``
    over ``i * stride + k * dilation = p + pad_lo`` (PyTorch's ``conv_transpose``)."""
    xp = backend_of(gy).xp
    N, O = gy.shape[:2]
    gx = xp.empty((N, w.shape[1] * geom.groups) + tuple(spatial), dtype=gy.dtype)
    if gx.size == 0:
        return gx
    per_sample = O * _prod(tuple(n + 2 * e for n, e in zip(gy.shape[2:], geom.extent(w.shape[2:])))) * gy.itemsize
    for nb in _batch_blocks(N, per_sample, gx.nbytes):
        gx[nb] = _conv_transpose_block(gy[nb], w, geom, spatial)
    return gx


def _conv_transpose_block(gy, w, geom, spatial):
    xp = backend_of(gy).xp
    N, O = gy.shape[:2]
    cg = w.shape[1]
    G = geom.groups
    og = O // G
    C = cg * G
    d = len(spatial)
    kernel = w.shape[2:]
    o = gy.shape[2:]
    # per axis and output phase r: first index Pmin, count, and the taps k with k*dl = q*s + r
    axes = []
    for a in range(d):
        s, dl, lo, S = geom.stride[a], geom.dilation[a], geom.pad_lo[a], spatial[a]
        phases = []
        for r in range(s):
            pmin = max(0, _ceil_div(lo - r, s))
            cnt = max(0, _ceil_div(S + lo - r, s) - pmin)
            ks = [(k, (k * dl) // s) for k in range(kernel[a]) if (k * dl) % s == r]
            phases.append((r, pmin, cnt, ks))
        front = max([q - pmin for r, pmin, cnt, ks in phases if cnt for _, q in ks] + [0])
        ext = max([front + o[a]] + [cnt - 1 + pmin - q + front + 1
                                    for r, pmin, cnt, ks in phases if cnt for _, q in ks])
        axes.append((phases, front, ext))
    any_missing = any(not ks and cnt for ph, _, _ in axes for _, _, cnt, ks in ph)
    gx = (xp.zeros if any_missing else xp.empty)((N, C) + tuple(spatial), dtype=gy.dtype)
    if gx.size == 0:
        return gx
    if gy.size == 0 or _prod(kernel) == 0:
        gx[...] = 0
        return gx
    grid = (N,) + tuple(e for _, _, e in axes)
    gst = [_prod(grid[a + 1:]) for a in range(len(grid))]
    src = xp.zeros((O, N) + grid[1:], dtype=gy.dtype)
    src[(slice(None), slice(None)) + tuple(slice(f, f + n) for (_, f, _), n in zip(axes, o))] = _channels_first(gy)
    src4 = src.reshape(1, G, og, -1)
    wT = w.reshape(G, og, cg, -1).transpose(0, 2, 1, 3)  # (G, Cg, Og, T)
    gx_t = _channels_first(gx)
    ks_t = [math.prod(kernel[a + 1:]) for a in range(d)]
    for combo in itertools.product(*[ph for ph, _, _ in axes]):
        if any(cnt == 0 for _, _, cnt, _ in combo) or any(not ks for _, _, _, ks in combo):
            continue
        taps = []
        for kq in itertools.product(*[ks for _, _, _, ks in combo]):
            t = sum(k * ks_t[a] for a, (k, _) in enumerate(kq))
            off = sum((combo[a][1] - q + axes[a][1]) * gst[a + 1] for a, (_, q) in enumerate(kq))
            taps.append((0, off, t))
        valid = (N,) + tuple(cnt for _, _, cnt, _ in combo)
        key = [slice(None), slice(None)]
        for a, (r, pmin, cnt, _) in enumerate(combo):
            s = geom.stride[a]
            x0 = pmin * s + r - geom.pad_lo[a]
            key.append(slice(x0, x0 + (cnt - 1) * s + 1, s))
        box = tuple(len(ks) for _, _, _, ks in combo)
        correlate(src4, grid, valid, taps, box, wT, gx_t[tuple(key)])
    return gx
