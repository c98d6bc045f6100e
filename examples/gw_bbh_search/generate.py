"""Generate the data of the BBH search example: training windows and continuous test stretches.

One HDF5 file (default ``gw_data.h5``) holds, all from one seed (recorded in the file):

* ``train/noise``, ``val/noise`` (n, 2048) float32: 1 s windows of whitened H1 noise
  (Gaussian, coloured by aLIGOZeroDetHighPower, then whitened with the same PSD);
* ``train/signals``, ``val/signals`` (n, 2048) float32: whitened IMRPhenomD signals as seen by
  H1, scaled to optimal SNR 1 (the L2 norm of the *whole* whitened signal), merger at a
  random 0.6-0.9 s into the window; ``train/params`` etc. their source parameters. The SNR
  is drawn when a window is made (``train.py``: noise + snr * signal), so one stored signal
  serves every SNR of a curriculum;
* ``test/foreground``: a continuous stretch of coloured noise with an injection every
  24 +- 6 s (distance drawn uniformly between the distances at which the source has
  optimal SNR ``snr_max`` and ``snr_min``), stored coloured (``strain``, float64) and
  whitened (``whitened``, float32), with the injection table ``injections``;
* ``test/background``: a stretch without injections (another noise seed, twice as long by default),
  from which false-alarm rates are measured;
* ``psd``: the PSD on 1/16 Hz bins; the file's attributes: every setting and seed.

    python examples/gw_bbh_search/generate.py --out gw_data.h5            # full size
    python examples/gw_bbh_search/generate.py --quick --out quick.h5     # smoke-test size

Needs the ``gw`` extra (PyCBC, LALSuite) and h5py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwdata as G  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    def tqdm(it, **_):
        return it

FULL = dict(n_train_signals=5000, n_train_noise=8000, n_val=1000, test_duration=5400.0, background_duration=10800.0)
QUICK = dict(n_train_signals=600, n_train_noise=1200, n_val=200, test_duration=240.0, background_duration=240.0)
BUFFER = 16 * G.FS          # 16 s: longer than the longest signal (10+10 Msun from 20 Hz, ~6 s)
MARGIN = 16.0               # seconds at each end of a test stretch kept free of injections
BLOCK = 512                 # seconds of noise generated and whitened at once for training windows


def signal_windows(params: dict, rng: np.random.Generator, desc: str):
    """Unit-SNR whitened 1 s windows of each source (merger at a random MERGER_RANGE fraction),
    plus the merger fractions and the optimal SNR of each source at 1 Mpc."""
    n = len(params["mass1"])
    out = np.empty((n, G.WINDOW), np.float32)
    frac = rng.uniform(*G.MERGER_RANGE, size=n)
    snr1 = np.empty(n)
    nf = BUFFER // 2 + 1
    start = BUFFER // 2   # the window starts 8 s into the 16 s buffer: the inspiral fits before it
    for i in tqdm(range(n), desc=desc, unit="signal", leave=False):
        h = G.detector_fd(params, i, G.FS / BUFFER, nf)
        snr1[i] = G.optimal_snr(h, BUFFER)
        w = np.fft.irfft(G.shift(G.whitened_fd(h, BUFFER), BUFFER, (start + frac[i] * G.WINDOW) / G.FS), n=BUFFER)
        out[i] = w[start:start + G.WINDOW] / snr1[i]
    return out, frac, snr1


def noise_windows(n: int, seed: int, desc: str) -> np.ndarray:
    """``n`` consecutive 1 s windows of whitened coloured noise, generated BLOCK seconds at a
    time (each block its own seed, 8 s dropped at each end against whitening wrap-around)."""
    out = np.empty((n, G.WINDOW), np.float32)
    pad = 8 * G.FS
    for b, i in enumerate(tqdm(range(0, n, BLOCK), desc=desc, unit="block", leave=False)):
        m = min(BLOCK, n - i)
        w = G.whiten(G.coloured_noise(m * G.WINDOW + 2 * pad, seed + b))
        out[i:i + m] = w[pad:pad + m * G.WINDOW].reshape(m, G.WINDOW)
    return out


def injection_times(duration: float, rng: np.random.Generator) -> np.ndarray:
    """Merger times every 24 +- 6 s (uniform jitter), MARGIN s clear of both ends."""
    times, t = [], MARGIN + rng.uniform(0, 24)
    while t < duration - MARGIN:
        times.append(t)
        t += 24 + rng.uniform(-6, 6)
    return np.asarray(times)


def test_stretch(duration: float, seed: int, snr_range, with_injections: bool, rng: np.random.Generator):
    """(coloured strain, whitened strain, injection table) of one continuous stretch."""
    n = int(round(duration * G.FS))
    strain = G.coloured_noise(n, seed)
    table = {}
    if with_injections:
        times = injection_times(duration, rng)
        p = G.draw_parameters(len(times), rng)
        snr1, dist = np.empty(len(times)), np.empty(len(times))
        nf = BUFFER // 2 + 1
        lead = BUFFER - 2 * G.FS  # the merger sits 14 s into its buffer: inspiral before, ringdown after
        for i, t in enumerate(tqdm(times, desc="injections", unit="inj", leave=False)):
            h1 = G.detector_fd(p, i, G.FS / BUFFER, nf)             # at 1 Mpc
            snr1[i] = G.optimal_snr(h1, BUFFER)
            # uniform in distance between the SNR-snr_max and SNR-snr_min distances of this source
            dist[i] = rng.uniform(snr1[i] / snr_range[1], snr1[i] / snr_range[0])
            k0 = int(np.floor(t * G.FS)) - lead                      # buffer start sample
            t_in = t - k0 / G.FS                                     # merger time inside the buffer
            x = np.fft.irfft(G.shift(h1 * G.FS, BUFFER, t_in), n=BUFFER) / dist[i]
            strain[k0:k0 + BUFFER] += x
        table = dict(p, time=times, distance=dist, snr_at_1mpc=snr1, optimal_snr=snr1 / dist)
    return strain, G.whiten(strain), table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gw_data.h5")
    ap.add_argument("--seed", type=int, default=2018)
    ap.add_argument("--quick", action="store_true", help="smoke-test size (about a minute)")
    ap.add_argument("--n-train-signals", type=int)
    ap.add_argument("--n-train-noise", type=int)
    ap.add_argument("--n-val", type=int, help="validation signals and noise windows (each)")
    ap.add_argument("--test-duration", type=float, help="seconds of foreground (with injections)")
    ap.add_argument("--background-duration", type=float, help="seconds of background (noise only)")
    ap.add_argument("--snr-min", type=float, default=3.0, help="injections: lowest optimal SNR")
    ap.add_argument("--snr-max", type=float, default=30.0, help="injections: highest optimal SNR")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for k in cfg:
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    import h5py

    t_start = time.time()
    # one SeedSequence -> independent streams for every part, so each part is reproducible alone
    ss = np.random.SeedSequence(args.seed)
    s_train, s_val, s_fg, s_noise = ss.spawn(4)
    noise_seeds = [int(x) for x in s_noise.generate_state(4) % (2 ** 30)]
    rng_train, rng_val, rng_fg = (np.random.default_rng(s) for s in (s_train, s_val, s_fg))

    with h5py.File(args.out + ".tmp", "w") as f:
        f.attrs.update(dict(
            sample_rate=G.FS, f_lower=G.F_LOWER, window_samples=G.WINDOW, detector=G.DETECTOR,
            approximant=G.APPROXIMANT, psd=G.PSD_NAME, mass_range=G.MASS_RANGE, merger_range=G.MERGER_RANGE,
            seed=args.seed, noise_seeds=noise_seeds, snr_range=(args.snr_min, args.snr_max),
            config=json.dumps(cfg), whitening="irfft(rfft(x) / sqrt(S(f) fs / 2)), bins < f_lower zeroed"))
        n_psd = 16 * G.FS // 2 + 1
        f["psd"] = G.psd(n_psd, 1.0 / 16)
        f["psd"].attrs["delta_f"] = 1.0 / 16
        for name, n_sig, n_noise, rng, nseed in (("train", cfg["n_train_signals"], cfg["n_train_noise"], rng_train, noise_seeds[0]),
                                                  ("val", cfg["n_val"], cfg["n_val"], rng_val, noise_seeds[1])):
            g = f.create_group(name)
            p = G.draw_parameters(n_sig, rng)
            sig, frac, snr1 = signal_windows(p, rng, f"{name} signals")
            g.create_dataset("signals", data=sig, chunks=(1, G.WINDOW))
            g.create_dataset("noise", data=noise_windows(n_noise, nseed * 1000, f"{name} noise"), chunks=(1, G.WINDOW))
            pg = g.create_group("params")
            for k, v in dict(p, merger_fraction=frac, snr_at_1mpc=snr1).items():
                pg[k] = v
        for name, inj, nseed, dur in (("foreground", True, noise_seeds[2], cfg["test_duration"]),
                                      ("background", False, noise_seeds[3], cfg["background_duration"])):
            strain, white, table = test_stretch(dur, nseed, (args.snr_min, args.snr_max), inj, rng_fg)
            g = f.create_group(f"test/{name}")
            g.attrs.update(duration=dur, noise_seed=nseed, margin=MARGIN)
            g.create_dataset("strain", data=strain, chunks=(1 << 16,))
            g.create_dataset("whitened", data=white, chunks=(1 << 16,))
            if inj:
                n_inj = len(table["time"])
                ig = g.create_group("injections")
                for k, v in table.items():
                    ig[k] = v
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}: {cfg['n_train_signals']} training signals, {cfg['n_train_noise']} noise windows, "
          f"{cfg['test_duration']:.0f} s foreground ({n_inj} injections) and "
          f"{cfg['background_duration']:.0f} s background in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
