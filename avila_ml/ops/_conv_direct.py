"""Direct convolution: one batched matmul per kernel tap over strided views of the padded input.

The plainest correct algorithm, with no chunking and no index tricks: for each tap ``k``

    y[n, g, :, i] += W_k[g] @ x_pad[n, g, :, i * stride + k * dilation]

It issues few, large matmuls, which is what a GPU wants (the automatic choice takes it for
CuPy arrays when no hand-written kernel applies); on the CPU it needs one output-sized
temporary per tap and a padded copy of the input, so ``gemm`` is preferred there.
"""
from __future__ import annotations

import itertools
import math

from ..backends import backend_of


def _pad(x, geom):
    if geom.no_padding:
        return x
    xp = backend_of(x).xp
    return xp.pad(x, ((0, 0), (0, 0)) + tuple(zip(geom.pad_lo, geom.pad_hi)))


def _tap_slices(kidx, geom, o):
    return (slice(None), slice(None)) + tuple(
        slice(k * dl, k * dl + (n - 1) * s + 1, s)
        for k, dl, n, s in zip(kidx, geom.dilation, o, geom.stride))


def conv_forward(x, w, geom):
    xp = backend_of(x).xp
    N, C = x.shape[:2]
    O, cg = w.shape[:2]
    G = geom.groups
    o = geom.out_size(x.shape[2:], w.shape[2:])
    P = math.prod(o)
    y = xp.zeros((N, G, O // G, P), dtype=x.dtype)
    if y.size and cg:
        xpad = _pad(x, geom)
        wg = w.reshape((G, O // G, cg) + w.shape[2:])
        for kidx in itertools.product(*[range(k) for k in w.shape[2:]]):
            v = xpad[_tap_slices(kidx, geom, o)].reshape(N, G, cg, P)
            y += xp.matmul(wg[(Ellipsis,) + kidx], v)
    return y.reshape((N, O) + o)


def conv_transpose(gy, w, geom, spatial):
    xp = backend_of(gy).xp
    N, O = gy.shape[:2]
    cg = w.shape[1]
    G = geom.groups
    o = gy.shape[2:]
    P = math.prod(o)
    gpad = xp.zeros((N, G * cg) + geom.padded(spatial), dtype=gy.dtype)
    if gy.size and gpad.size:
        g4 = gy.reshape(N, G, O // G, P)
        wT = w.reshape((G, O // G, cg) + w.shape[2:]).swapaxes(1, 2)
        for kidx in itertools.product(*[range(k) for k in w.shape[2:]]):
            part = xp.matmul(wT[(Ellipsis,) + kidx], g4).reshape((N, G * cg) + o)
            gpad[_tap_slices(kidx, geom, o)] += part
    crop = (slice(None), slice(None)) + tuple(slice(lo, lo + s) for lo, s in zip(geom.pad_lo, spatial))
    return xp.ascontiguousarray(gpad[crop])


def conv_weight_grad(x, gy, geom, kernel):
    xp = backend_of(x).xp
    N, C = x.shape[:2]
    O = gy.shape[1]
    G = geom.groups
    cg = C // G
    o = gy.shape[2:]
    P = math.prod(o)
    gw = xp.zeros((G, O // G, cg) + tuple(kernel), dtype=x.dtype)
    if gy.size and x.size:
        xpad = _pad(x, geom)
        g4 = gy.reshape(N, G, O // G, P)
        for kidx in itertools.product(*[range(k) for k in kernel]):
            v = xpad[_tap_slices(kidx, geom, o)].reshape(N, G, cg, P)
            gw[(Ellipsis,) + kidx] = xp.matmul(g4, v.swapaxes(2, 3)).sum(axis=0)
    return gw.reshape((O, cg) + tuple(kernel))
