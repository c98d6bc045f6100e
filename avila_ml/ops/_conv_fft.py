"""FFT convolution: wins when the kernel volume is large and the stride is 1.

With the zero-padded input of extent ``P = S + lo + hi`` per axis and a transform length
``F >= P`` (5-smooth), the stride-1 correlation is a circular convolution that never wraps
onto a valid output:

    y1 = irfftn( sum_c X_c . H_oc ),   H_oc(f) = conj(WD_oc(f)) . exp(-2 pi i f . lo / F)

where ``X`` is the spectrum of the unpadded input (placed at index 0) and ``WD`` that of the
dilated kernel; the phase factor moves the low-side padding into the kernel, so the input
is never copied into a padded buffer. ``y = y1[::stride]`` (a stride > 1 computes every
position, which is why the automatic choice only takes this path for stride 1). The input
gradient is ``irfftn(sum_o GY_o . conj(H_oc))``; the weight gradient reads the kernel taps
out of ``irfftn(sum_n conj(GY_o) . X_c)``.

Cost savers: the kernel spectrum is transformed one axis at a time, each axis only over the
rows that are not yet all zero (a pruned FFT: most of a zero-padded kernel is zeros); the
weight gradient's inverse transform keeps, after each axis, only the few tap positions it
needs. Memory: the input spectrum (about the padded input) plus one block of output
channels, sized from the problem's own output so the extra stays near the issue's bound.
"""
from __future__ import annotations

import math
import os
import warnings

from ..backends import backend_of

_warned = []


def next_fast_len(n: int) -> int:
    """The smallest 5-smooth integer ``>= n`` (a fast FFT length)."""
    best = 1
    while best < n:
        best *= 2
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


class _FFT:
    """FFTs of the array's backend: SciPy's pocketfft with threads for NumPy arrays when SciPy
    is installed (keeps float32, several times faster), else ``xp.fft``."""

    def __init__(self, xp):
        self.kw = {}
        self.mod = xp.fft
        if xp.__name__ == "numpy":
            try:
                import scipy.fft as sfft
                self.mod = sfft
                self.kw = {"workers": os.cpu_count() or 1}
            except ImportError:  # pragma: no cover - scipy is present wherever tests run
                if not _warned:
                    _warned.append(True)
                    warnings.warn("avila_ml: SciPy not installed; FFT convolution uses numpy.fft "
                                  "(single-threaded, slower). `pip install scipy` makes it faster.",
                                  stacklevel=4)

    def rfftn(self, a, s, axes):
        return self.mod.rfftn(a, s=s, axes=axes, **self.kw)

    def irfftn(self, a, s, axes):
        return self.mod.irfftn(a, s=s, axes=axes, **self.kw)

    def rfft(self, a, n, axis):
        return self.mod.rfft(a, n=n, axis=axis, **self.kw)

    def fft(self, a, n, axis):
        return self.mod.fft(a, n=n, axis=axis, **self.kw)

    def ifft(self, a, n, axis):
        return self.mod.ifft(a, n=n, axis=axis, **self.kw)

    def irfft(self, a, n, axis):
        return self.mod.irfft(a, n=n, axis=axis, **self.kw)


def _dilated(w, dilation):
    """The kernel with ``dilation - 1`` zeros between taps: ``(..., dl * (K - 1) + 1)``."""
    if all(d == 1 for d in dilation):
        return w
    xp = backend_of(w).xp
    K = w.shape[2:]
    wd = xp.zeros(w.shape[:2] + tuple(dl * (k - 1) + 1 for dl, k in zip(dilation, K)), dtype=w.dtype)
    wd[(slice(None), slice(None)) + tuple(slice(None, None, dl) for dl in dilation)] = w
    return wd


def _apply_phase(a, F, shift, xp):
    """``a *= exp(-2 pi i f . shift / F)`` on the rfftn frequency grid, one axis at a time
    (broadcast 1-d factors: no full-size temporary)."""
    d = len(F)
    for ax in range(d):
        if shift[ax] % F[ax] == 0:
            continue
        n = F[ax] // 2 + 1 if ax == d - 1 else F[ax]
        v = xp.exp((-2j * math.pi * shift[ax] / F[ax]) * xp.arange(n)).astype(a.dtype)
        a *= v.reshape((n,) + (1,) * (d - 1 - ax))
    return a


def _plan(x_spatial, geom):
    P = geom.padded(x_spatial)
    return tuple(next_fast_len(p) for p in P), tuple(range(2, 2 + len(P)))


def spectrum_bytes(F, itemsize) -> int:
    """Bytes of one channel's rfftn spectrum of transform length ``F`` (real ``itemsize``)."""
    return math.prod(F[:-1]) * (F[-1] // 2 + 1) * 2 * itemsize


def _block(n_out, per_channel_bytes, budget):
    return max(1, min(n_out, budget // max(1, per_channel_bytes)))


def _budget(out_bytes):
    """Bytes one block of output channels may use: half the output, within [1 MiB, 64 MiB]."""
    return min(64 << 20, max(1 << 20, out_bytes // 2))


def _kernel_spectrum(fft, w_block, geom, F, xp, ctype):
    """``conj(WD) . exp(-2 pi i f lo / F)`` for a block of kernels, by a pruned rfftn: the last
    axis first, then each other axis, every stage only over the still non-zero rows."""
    a = fft.rfft(_dilated(w_block, geom.dilation), F[-1], -1)
    for ax in range(len(F) - 2, -1, -1):
        a = fft.fft(a, F[ax], 2 + ax)
    a = a.astype(ctype, copy=False)
    xp.conj(a, out=a)
    return _apply_phase(a, F, geom.pad_lo, xp)


def _mac(out, a, b, tmp, first):
    """``out = a * b`` (``first``) or ``out += a * b``, with ``tmp`` as scratch."""
    if first:
        out[...] = a
        out *= b
    else:
        tmp[...] = a
        tmp *= b
        out += tmp


def conv_forward(x, w, geom):
    xp = backend_of(x).xp
    fft = _FFT(xp)
    N, C = x.shape[:2]
    O, cg = w.shape[:2]
    G = geom.groups
    og = O // G
    o = geom.out_size(x.shape[2:], w.shape[2:])
    y = xp.empty((N, O) + o, dtype=x.dtype)
    if y.size == 0:
        return y
    F, axes = _plan(x.shape[2:], geom)
    spec = spectrum_bytes(F, x.dtype.itemsize)
    budget = _budget(y.nbytes)
    nb = _block(og, spec * (2 * N + 1), budget)
    hb = _block(cg, spec * nb, budget)          # input channels per kernel-spectrum block
    crop = (slice(None), slice(None)) + tuple(slice(0, (n - 1) * s + 1, s) for n, s in zip(o, geom.stride))
    for g in range(G):
        X = fft.rfftn(x[:, g * cg:(g + 1) * cg], F, axes)                 # (N, cg, *f)
        for o0 in range(0, og, nb):
            ob = slice(g * og + o0, g * og + min(og, o0 + nb))
            Y = xp.empty((N, ob.stop - ob.start) + X.shape[2:], dtype=X.dtype)
            tmp = xp.empty_like(Y) if cg > 1 else None
            for c0 in range(0, cg, hb):                                   # Y[n, o] = sum_c X[n, c] H[o, c]
                H = _kernel_spectrum(fft, w[ob, c0:c0 + hb], geom, F, xp, X.dtype)
                for c in range(H.shape[1]):
                    _mac(Y, X[:, c0 + c:c0 + c + 1], H[None, :, c], tmp, c0 + c == 0)
                del H
            del tmp
            y[:, ob] = fft.irfftn(Y, F, axes)[crop]
            del Y
        del X
    return y


def _upsampled(gy, geom):
    """``gy`` on the stride-1 grid (zeros between the strided outputs)."""
    if all(s == 1 for s in geom.stride):
        return gy
    xp = backend_of(gy).xp
    o = gy.shape[2:]
    up = xp.zeros(gy.shape[:2] + tuple((n - 1) * s + 1 for n, s in zip(o, geom.stride)), dtype=gy.dtype)
    up[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in geom.stride)] = gy
    return up


def conv_transpose(gy, w, geom, spatial):
    xp = backend_of(gy).xp
    fft = _FFT(xp)
    N, O = gy.shape[:2]
    cg = w.shape[1]
    G = geom.groups
    og = O // G
    gx = xp.empty((N, cg * G) + tuple(spatial), dtype=gy.dtype)
    if gx.size == 0:
        return gx
    if gy.size == 0:
        gx[...] = 0
        return gx
    F, axes = _plan(spatial, geom)
    gy1 = _upsampled(gy, geom)
    spec = spectrum_bytes(F, gy.dtype.itemsize)
    budget = _budget(gy.nbytes)
    nb = _block(og, spec * (2 * N + 1), budget)
    hb = _block(cg, spec * nb, budget)
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)
    for g in range(G):
        GX = None
        for o0 in range(0, og, nb):
            ob = slice(g * og + o0, g * og + min(og, o0 + nb))
            GY = fft.rfftn(gy1[:, ob], F, axes)                          # (N, nb, *f)
            if GX is None:
                GX = xp.zeros((N, cg) + GY.shape[2:], dtype=GY.dtype)
            prod = xp.empty_like(GY)
            for c0 in range(0, cg, hb):                                  # GX[n, c] += sum_o GY[n, o] conj(H[o, c])
                H = _kernel_spectrum(fft, w[ob, c0:c0 + hb], geom, F, xp, GY.dtype)
                xp.conj(H, out=H)
                for c in range(H.shape[1]):
                    xp.multiply(GY, H[None, :, c], out=prod)
                    GX[:, c0 + c] += prod.sum(axis=1)
                del H
            del GY, prod
        gx[:, g * cg:(g + 1) * cg] = fft.irfftn(GX, F, axes)[crop]
        del GX
    return gx


def _pruned_taps(fft, Cf, F, idx, xp):
    """``irfftn(Cf, F)[..., idx_0, idx_1, ...]``: after each axis's inverse transform keep only
    the requested positions, so later axes transform a few rows."""
    d = len(F)
    a = Cf
    for ax in range(d - 1):
        a = xp.take(fft.ifft(a, F[ax], 2 + ax), idx[ax], axis=2 + ax)
    return xp.take(fft.irfft(a, F[-1], -1), idx[-1], axis=-1)


def conv_weight_grad(x, gy, geom, kernel):
    xp = backend_of(x).xp
    fft = _FFT(xp)
    N, C = x.shape[:2]
    O = gy.shape[1]
    G = geom.groups
    cg = C // G
    og = O // G
    gw = xp.empty((O, cg) + tuple(kernel), dtype=x.dtype)
    if gw.size == 0:
        return gw
    if gy.size == 0 or x.size == 0:
        gw[...] = 0
        return gw
    F, axes = _plan(x.shape[2:], geom)
    gy1 = _upsampled(gy, geom)
    spec = spectrum_bytes(F, x.dtype.itemsize)
    nb = _block(og, spec * (N + 2), _budget(gy.nbytes))
    idx = [xp.asarray([(k * dl - lo) % f for k in range(K)])
           for K, dl, lo, f in zip(kernel, geom.dilation, geom.pad_lo, F)]
    for g in range(G):
        X = fft.rfftn(x[:, g * cg:(g + 1) * cg], F, axes)                 # (N, cg, *f)
        for o0 in range(0, og, nb):
            ob = slice(g * og + o0, g * og + min(og, o0 + nb))
            GYc = fft.rfftn(gy1[:, ob], F, axes)                           # (N, nb, *f)
            xp.conj(GYc, out=GYc)
            Cf = xp.empty(GYc.shape[1:], dtype=GYc.dtype)
            tmp = xp.empty_like(Cf) if N > 1 else None
            for c in range(cg):                                            # Cf[o] = sum_n conj(GY[n, o]) X[n, c]
                for n in range(N):
                    _mac(Cf, GYc[n], X[n, c], tmp, n == 0)
                gw[ob, c] = _pruned_taps(fft, Cf[:, None], F, idx, xp)[:, 0]
            del GYc, Cf, tmp
        del X
    return gw
