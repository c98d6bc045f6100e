"""The matched-filter baseline: a stochastic template bank and an FFT matched filter.

Templates are IMRPhenomD ``h+`` waveforms from PyCBC/LALSimulation, whitened with the known PSD
and normalised to unit norm. In whitened data ``d`` the complex matched-filter SNR of a
unit-norm whitened template ``u`` with merger at ``tau`` is

    z(tau) = sum_t d[t] (u + i u_90)[t - tau] = ifft(2 D(f) conj(U(f)), f > 0)(tau),

(``u_90``: ``u`` shifted by 90 degrees in phase), the same quantity as
``pycbc.filter.matched_filter`` on the coloured data with the PSD (the example's test checks
the two agree); ``|z|`` is maximised over the (2, 2)-mode phase analytically, over time by the
FFT and over the bank by taking the maximum over templates.

Bank: stochastic placement (as ``pycbc_brute_bank`` does): propose masses uniformly in the
search range, accept a proposal if its match with every template already in the bank (maximised
over time and phase) is below ``min_match``. Only templates whose chirp mass is within 25% of
the proposal are compared (further ones have far lower matches).
"""
from __future__ import annotations

import numpy as np
import scipy.fft

import gwdata as G

BANK_LEN = 16 * G.FS          # 16 s grid for building the bank (df = 1/16 Hz)


def chirp_mass(m1, m2):
    """``(m1 m2)^(3/5) / (m1 + m2)^(1/5)`` (solar masses)."""
    m1, m2 = np.asarray(m1, float), np.asarray(m2, float)
    return (m1 * m2) ** 0.6 / (m1 + m2) ** 0.2


def unit_template(m1: float, m2: float, n: int) -> np.ndarray:
    """Whitened, unit-norm spectrum (n // 2 + 1 bins, complex128) of the (m1, m2) template."""
    w = G.whitened_fd(G.template_fd(m1, m2, G.FS / n, n // 2 + 1), n)
    return w / np.sqrt(2.0 * np.sum(np.abs(w) ** 2) / n)


def complex_correlation(d_fd: np.ndarray, u_fd: np.ndarray, n: int) -> np.ndarray:
    """``z(tau)`` of every template row of ``u_fd`` (..., n//2+1) against the spectrum ``d_fd``:
    a complex ifft of the one-sided product (positive frequencies doubled, negative zero)."""
    prod = np.zeros(u_fd.shape[:-1] + (n,), np.complex64)
    prod[..., :n // 2 + 1] = 2 * d_fd * np.conj(u_fd)
    prod[..., 0] *= 0.5
    return scipy.fft.ifft(prod, axis=-1)


def make_bank(min_match: float, n_proposals: int, rng: np.random.Generator, progress=None):
    """Stochastic bank over MASS_RANGE. Returns (mass1, mass2) arrays and the acceptance history."""
    masses, units, mc = [], [], []
    accepted = np.zeros(n_proposals, bool)
    it = range(n_proposals)
    for k in (progress(it) if progress else it):
        m = np.sort(rng.uniform(*G.MASS_RANGE, size=2))[::-1]
        u = unit_template(m[0], m[1], BANK_LEN).astype(np.complex64)
        c = chirp_mass(*m)
        near = [i for i, x in enumerate(mc) if abs(x - c) < 0.25 * c]
        if near:
            z = complex_correlation(u, np.stack([units[i] for i in near]), BANK_LEN)
            if np.abs(z).max() >= min_match:
                continue
        masses.append(m)
        units.append(u)
        mc.append(c)
        accepted[k] = True
    masses = np.array(masses)
    return masses[:, 0], masses[:, 1], accepted


def fitting_factors(mass1, mass2, p: dict) -> np.ndarray:
    """Best match over the bank (time, phase maximised) of each source of ``p`` as H1 sees it."""
    units = np.stack([unit_template(a, b, BANK_LEN) for a, b in zip(mass1, mass2)]).astype(np.complex64)
    ff = np.empty(len(p["mass1"]))
    for i in range(len(ff)):
        h = G.whitened_fd(G.detector_fd(p, i, G.FS / BANK_LEN, BANK_LEN // 2 + 1), BANK_LEN)
        h = (h / np.sqrt(2.0 * np.sum(np.abs(h) ** 2) / BANK_LEN)).astype(np.complex64)
        ff[i] = np.abs(complex_correlation(h, units, BANK_LEN)).max()
    return ff


def matched_filter(whitened: np.ndarray, mass1, mass2, seg_seconds: int = 64, progress=None) -> np.ndarray:
    """``max over templates |z(t)|`` at every sample of a whitened stretch (float32; 0 where a
    template cannot fit: the first 8 s and last 2 s).

    The stretch is filtered in overlapping ``seg_seconds`` segments; of each segment only merger
    times with >= 8 s of data before (the longest template is ~6 s from 20 Hz) and >= 2 s after
    are kept, so the circular correlation never wraps.
    """
    n = seg_seconds * G.FS
    pre, post = 8 * G.FS, 2 * G.FS
    hop = n - pre - post
    units = np.stack([unit_template(a, b, n) for a, b in zip(mass1, mass2)]).astype(np.complex64)
    out = np.zeros(len(whitened), np.float32)
    starts = list(range(0, max(len(whitened) - n, 0) + hop, hop))
    for s in (progress(starts) if progress else starts):
        seg = np.zeros(n, np.float32)
        piece = whitened[s:s + n]
        seg[:len(piece)] = piece
        d = scipy.fft.rfft(seg)
        best = np.zeros(n, np.float32)
        for j in range(0, len(units), 16):     # 16 templates per ifft call: bounded memory
            np.maximum(best, np.abs(complex_correlation(d, units[j:j + 16], n)).max(axis=0), out=best)
        lo, hi = pre, min(n - post, len(whitened) - post - s)
        if hi > lo:
            out[s + lo:s + hi] = best[lo:hi]
    return out
