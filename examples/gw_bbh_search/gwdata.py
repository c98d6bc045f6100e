"""Simulated LIGO data for the BBH search: PSD, coloured noise, IMRPhenomD signals, whitening.

Conventions used by every script of this example (one detector, H1):

* sample rate ``FS = 2048`` Hz, analysis band ``f >= F_LOWER = 20`` Hz, PSD
  ``aLIGOZeroDetHighPower`` (Advanced LIGO design, zero detuning, high power);
* whitening of a stretch ``x`` (length N, spectrum ``X = rfft(x)``):
  ``w = irfft(X / sqrt(S(f) * FS / 2))`` with every bin below ``F_LOWER`` (and Nyquist) set
  to 0. Gaussian noise with one-sided PSD ``S`` becomes unit-variance white noise (times the
  fraction of the band kept, 98%);
* a frequency-domain waveform ``h(f)`` (strain/Hz, from PyCBC/LALSimulation) whitened the same
  way is ``W_k = h(f_k) * sqrt(2 FS / S(f_k))``, and by Parseval
  ``sum_t w[t]^2 = 4 df sum_k |h(f_k)|^2 / S(f_k) = rho_opt^2``: the L2 norm of a whitened
  signal *is* its optimal SNR. The training set stores signals scaled to unit norm; the
  network's input is noise + rho * signal.

PyCBC and LALSuite (``pip install avila-ml[gw]``) are imported inside the functions that use
them, so the rest of the example (and ``--help``) works without them.
"""
from __future__ import annotations

import functools

import numpy as np

FS = 2048             # sample rate (Hz)
F_LOWER = 20.0        # lower frequency of waveforms, whitening and matched filter (Hz)
WINDOW = FS           # one network input: 1 s
APPROXIMANT = "IMRPhenomD"
DETECTOR = "H1"
PSD_NAME = "aLIGOZeroDetHighPower"
MASS_RANGE = (10.0, 50.0)   # component masses (solar masses), as MLGWSC-1 dataset 1
MERGER_RANGE = (0.6, 0.9)   # where in a 1 s training window the merger sits (fraction)
REF_GPS = 1_200_000_000     # antenna patterns are evaluated at this GPS time (isotropic ra
                            # makes the time of day irrelevant)


def psd(n_freq: int, delta_f: float) -> np.ndarray:
    """The design PSD on ``n_freq`` bins ``k * delta_f`` (0 below F_LOWER - 2 Hz), float64."""
    import pycbc.psd
    return pycbc.psd.from_string(PSD_NAME, n_freq, delta_f, F_LOWER - 2.0).numpy().astype(np.float64)


@functools.lru_cache(maxsize=8)
def whitening_filter(n: int) -> np.ndarray:
    """``1 / sqrt(S(f) FS / 2)`` on the ``n // 2 + 1`` rfft bins of an ``n``-sample stretch,
    0 outside [F_LOWER, Nyquist). Cached per ``n`` (read-only array)."""
    df = FS / n
    s = psd(n // 2 + 1, df)
    f = np.arange(n // 2 + 1) * df
    keep = (f >= F_LOWER) & (f < FS / 2) & (s > 0)
    out = np.zeros(n // 2 + 1)
    out[keep] = 1.0 / np.sqrt(s[keep] * FS / 2)
    out.flags.writeable = False
    return out


def whiten(x: np.ndarray) -> np.ndarray:
    """Whiten a coloured stretch with the known PSD (see the module docstring), float32."""
    n = len(x)
    return np.fft.irfft(np.fft.rfft(np.asarray(x, np.float64)) * whitening_filter(n), n=n).astype(np.float32)


def coloured_noise(n: int, seed: int) -> np.ndarray:
    """``n`` samples of stationary Gaussian noise with the design PSD (PyCBC/LALSimulation),
    float64, strain units."""
    import pycbc.noise
    import pycbc.psd
    delta_f = 1.0 / 16
    p = pycbc.psd.from_string(PSD_NAME, int(FS / 2 / delta_f) + 1, delta_f, F_LOWER - 2.0)
    ts = pycbc.noise.noise_from_psd(n, 1.0 / FS, p, seed=int(seed) % (2 ** 31))
    return ts.numpy().astype(np.float64)


def draw_parameters(n: int, rng: np.random.Generator) -> dict:
    """Source parameters: masses uniform in MASS_RANGE (mass1 >= mass2), isotropic sky
    (ra, dec), inclination (cos uniform), polarisation and coalescence phase uniform."""
    m = rng.uniform(*MASS_RANGE, size=(n, 2))
    return {
        "mass1": m.max(axis=1), "mass2": m.min(axis=1),
        "ra": rng.uniform(0, 2 * np.pi, n), "dec": np.arcsin(rng.uniform(-1, 1, n)),
        "inclination": np.arccos(rng.uniform(-1, 1, n)), "polarization": rng.uniform(0, 2 * np.pi, n),
        "coa_phase": rng.uniform(0, 2 * np.pi, n),
    }


@functools.lru_cache(maxsize=1)
def _response_and_gmst():
    import lal
    import pycbc.detector
    return pycbc.detector.Detector(DETECTOR).response, lal.GreenwichMeanSiderealTime(REF_GPS)


def antenna_pattern(ra: float, dec: float, polarization: float):
    """H1's ``(F+, Fx)`` for a source at (ra, dec) with polarisation angle ``polarization`` at
    REF_GPS (LAL's ``ComputeDetAMResponse``; PyCBC's ``Detector.antenna_pattern`` computes the
    same but recomputes the sidereal time on every call, ~0.1 s)."""
    import lal
    response, gmst = _response_and_gmst()
    return lal.ComputeDetAMResponse(response, ra, dec, polarization, gmst)


def detector_fd(p: dict, i: int, delta_f: float, n_freq: int, distance: float = 1.0) -> np.ndarray:
    """The strain ``F+ h+ + Fx hx`` seen by H1, in the frequency domain (strain/Hz), for source
    ``i`` of ``p`` at ``distance`` Mpc, on ``n_freq`` bins of ``delta_f``; merger (peak) at t = 0."""
    import pycbc.waveform
    hp, hc = pycbc.waveform.get_fd_waveform(
        approximant=APPROXIMANT, mass1=float(p["mass1"][i]), mass2=float(p["mass2"][i]),
        inclination=float(p["inclination"][i]), coa_phase=float(p["coa_phase"][i]),
        distance=distance, delta_f=delta_f, f_lower=F_LOWER)
    fp, fc = antenna_pattern(float(p["ra"][i]), float(p["dec"][i]), float(p["polarization"][i]))
    h = np.zeros(n_freq, np.complex128)
    m = min(n_freq, len(hp))
    h[:m] = fp * hp.numpy()[:m] + fc * hc.numpy()[:m]
    return h


def template_fd(mass1: float, mass2: float, delta_f: float, n_freq: int) -> np.ndarray:
    """A face-on ``h+`` template (strain/Hz) for the matched filter: IMRPhenomD has only the
    (2, 2) mode, so phase and orientation are maximised analytically by the complex filter."""
    import pycbc.waveform
    hp, _ = pycbc.waveform.get_fd_waveform(approximant=APPROXIMANT, mass1=float(mass1), mass2=float(mass2),
                                           delta_f=delta_f, f_lower=F_LOWER)
    h = np.zeros(n_freq, np.complex128)
    m = min(n_freq, len(hp))
    h[:m] = hp.numpy()[:m]
    return h


def whitened_fd(h: np.ndarray, n: int) -> np.ndarray:
    """Whitened spectrum ``h(f) sqrt(2 FS / S(f))`` of an FD waveform on an ``n``-sample grid."""
    return h * FS * whitening_filter(n)


def optimal_snr(h: np.ndarray, n: int) -> float:
    """``sqrt(4 df sum |h|^2 / S)`` over [F_LOWER, Nyquist), from the whitened spectrum."""
    w = whitened_fd(h, n)
    return float(np.sqrt(2.0 * np.sum(np.abs(w) ** 2) / n))


def shift(h: np.ndarray, n: int, t0: float) -> np.ndarray:
    """Multiply a spectrum on an ``n``-sample grid by ``exp(-2 pi i f t0)``: moves t = 0 to t0."""
    f = np.arange(len(h)) * (FS / n)
    return h * np.exp(-2j * np.pi * f * t0)
