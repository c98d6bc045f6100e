"""Search statistics shared by the network and the matched filter: one grid, one clustering,
false-alarm rates, volume-weighted sensitive distance and Gabbard efficiency curves.

Both searches are reduced to a ranking statistic on the same time grid (one value per network
window, ~0.1 s apart), then treated identically:

* clustering: a grid point is a trigger if it is the maximum within +-``cluster`` seconds;
* an injection is found at threshold ``x`` if a foreground trigger within +-``window`` seconds
  of its merger has statistic >= ``x``; the false-alarm rate of ``x`` is the number of
  background triggers >= ``x`` per second of background;
* sensitive volume (as MLGWSC-1, Schafer et al. 2023): injections are drawn uniformly in
  distance ``d`` between ``d_lo = rho_1 / snr_max`` and ``d_hi = rho_1 / snr_min``, where
  ``rho_1`` is the source's optimal SNR at 1 Mpc. A population uniform in volume, weighted back
  from that draw, gives the Monte-Carlo estimate

      V = mean_i [ 4/3 pi d_lo,i^3 + found_i * 4 pi d_i^2 (d_hi,i - d_lo,i) ],

  the first term counting the sphere inside ``d_lo`` (optimal SNR >= snr_max: always found);
  sources beyond ``d_hi`` (SNR < snr_min) count as missed. The sensitive distance is
  ``(3 V / 4 pi)^(1/3)``;
* efficiency (Gabbard et al. 2018): for 1 s windows, the threshold at false-alarm probability
  ``p`` is the ``1 - p`` quantile of the maximum statistic in background windows (one per grid
  step), and the true-alarm probability at optimal SNR ``rho`` is the fraction of injections
  with SNR near ``rho`` whose 1 s window around the merger exceeds it.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter1d


def cluster(stat: np.ndarray, cluster: float, step: float):
    """Indices of the grid points that are the maximum of ``stat`` within +-``cluster`` s
    (ties: the earliest). ``step`` is the grid spacing in seconds.

    >>> import numpy as np
    >>> cluster(np.array([0., 3., 1., 0., 0., 0., 0., 5., 2.]), cluster=0.2, step=0.1).tolist()
    [1, 7]
    """
    half = int(round(cluster / step))
    peak = maximum_filter1d(stat, size=2 * half + 1, mode="constant", cval=-np.inf)
    idx = np.flatnonzero(stat >= peak)
    if len(idx) == 0:
        return idx
    # plateaus (equal values within a cluster) keep their first point only
    keep = np.ones(len(idx), bool)
    keep[1:] = ~((np.diff(idx) <= half) & (stat[idx[1:]] == stat[idx[:-1]]))
    return idx[keep]


def injection_stats(trig_t, trig_stat, inj_t, window: float) -> np.ndarray:
    """Highest trigger statistic within +-``window`` s of each injection (-inf if none).

    >>> injection_stats([10.0, 20.0, 31.0], [5.0, 7.0, 9.0], [10.2, 25.0], 0.5).tolist()
    [5.0, -inf]
    """
    order = np.argsort(trig_t)
    t, s = np.asarray(trig_t)[order], np.asarray(trig_stat)[order]
    lo = np.searchsorted(t, np.asarray(inj_t) - window, "left")
    hi = np.searchsorted(t, np.asarray(inj_t) + window, "right")
    return np.array([s[a:b].max() if b > a else -np.inf for a, b in zip(lo, hi)])


def far_of(bg_stat: np.ndarray, bg_duration: float, x) -> np.ndarray:
    """False-alarm rate (per second) of threshold(s) ``x``: background triggers >= x per second.

    >>> import numpy as np
    >>> float(far_of(np.array([1., 2., 3.]), 10.0, 2.0))
    0.2
    """
    s = np.sort(bg_stat)
    return (len(s) - np.searchsorted(s, np.asarray(x), "left")) / bg_duration


def threshold_at(bg_stat: np.ndarray, bg_duration: float, far: float) -> float:
    """The lowest threshold whose false-alarm rate is <= ``far`` (per second): background
    triggers strictly above it number at most ``far * bg_duration``.

    >>> import numpy as np
    >>> t = threshold_at(np.array([1., 2., 3.]), 10.0, 0.1)   # one false alarm in 10 s allowed
    >>> 2.0 < t < 3.0, float(far_of(np.array([1., 2., 3.]), 10.0, t))
    (True, 0.1)
    """
    s = np.sort(bg_stat)[::-1]
    k = int(np.floor(far * bg_duration + 1e-9))   # allowed false alarms
    if k >= len(s):
        return -np.inf
    return float(np.nextafter(s[k], np.inf))      # just above the (k+1)-th loudest


def sensitive_distance(found: np.ndarray, distance, snr_at_1mpc, snr_range):
    """(distance, 1-sigma error) in Mpc of the volume-weighted Monte-Carlo (module docstring).

    ``found`` (bool per injection), ``distance`` (Mpc), ``snr_at_1mpc`` (optimal SNR at 1 Mpc)
    and the ``(snr_min, snr_max)`` range the distances were drawn for.

    >>> import numpy as np
    >>> r, err = sensitive_distance(np.array([True, False]), [50.0, 50.0], [300.0, 600.0], (3.0, 30.0))
    >>> round(float(r), 2), round(float(err), 2)
    (69.93, 22.77)
    """
    d = np.asarray(distance, float)
    d_lo = np.asarray(snr_at_1mpc) / snr_range[1]
    d_hi = np.asarray(snr_at_1mpc) / snr_range[0]
    v = 4 / 3 * np.pi * d_lo ** 3 + np.asarray(found, float) * 4 * np.pi * d ** 2 * (d_hi - d_lo)
    vol, err = v.mean(), v.std(ddof=1) / np.sqrt(len(v))
    r = (3 * vol / (4 * np.pi)) ** (1 / 3)
    return r, r * err / (3 * vol)


def window_max(stat: np.ndarray, step: float, width: float = 1.0) -> np.ndarray:
    """Maximum statistic over every ``width`` s window of the grid (one per grid step).

    >>> import numpy as np
    >>> window_max(np.array([0., 1., 5., 0., 0., 2.]), step=0.5, width=1.0).tolist()
    [1.0, 5.0, 5.0, 0.0, 2.0]
    """
    k = int(round(width / step))
    return maximum_filter1d(stat, size=k, mode="nearest")[k // 2: len(stat) - (k - k // 2) + 1]


def efficiency(noise_windows: np.ndarray, inj_window_stat: np.ndarray, inj_snr: np.ndarray,
               faps=(1e-1, 1e-2, 1e-3), bins=None):
    """Gabbard curves: {fap: (bin centres, true-alarm probability, count per bin)} and thresholds.

    The threshold at ``fap`` is the ``1 - fap`` quantile of ``noise_windows``; an injection is
    detected if its window statistic exceeds it; ``bins`` are optimal-SNR bin edges.

    >>> import numpy as np
    >>> curves, thr = efficiency(np.arange(100.0), np.array([95.0, 50.0]), np.array([9.0, 9.5]),
    ...                          faps=(0.1,), bins=np.array([8.0, 10.0]))
    >>> round(thr[0.1], 1), curves[0.1][1].tolist()
    (89.1, [0.5])
    """
    bins = np.arange(2.0, 31.0, 2.0) if bins is None else bins
    which = np.digitize(inj_snr, bins) - 1
    centres = 0.5 * (bins[1:] + bins[:-1])
    out, thr = {}, {}
    for p in faps:
        thr[p] = float(np.quantile(noise_windows, 1 - p))
        hit = inj_window_stat > thr[p]
        tap = np.array([hit[which == b].mean() if np.any(which == b) else np.nan for b in range(len(centres))])
        count = np.array([np.sum(which == b) for b in range(len(centres))])
        out[p] = (centres, tap, count)
    return out, thr
