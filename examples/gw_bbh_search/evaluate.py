"""Evaluate the trained network against matched filtering on the same continuous test data.

1. Network: slid over the whitened foreground and background stretches (1 s windows, a step
   of 192 samples = 0.09375 s, the multiple of the 24-sample pooling stride nearest 0.1 s),
   ranking statistic USR (logit difference); each window's statistic is placed at the middle
   of the merger positions it was trained on (0.75 s into the window).
2. Matched filter: a stochastic IMRPhenomD bank built here (PyCBC waveforms, minimal match
   ``--min-match``), the complex SNR maximised over templates and time; its statistic at a
   grid point is the highest SNR within +-half a step of it. The bank's fitting factors for
   random sources are reported.
3. Both grids are clustered the same way (maximum within +-1 s), an injection counts as
   found if a trigger lies within +-0.5 s of its merger, false-alarm rates come from the
   background stretch, and the volume-weighted sensitive distance vs false-alarm rate and
   the Gabbard efficiency curves (false-alarm probability 1e-1, 1e-2, 1e-3 per 1 s window)
   are computed for both (see ``stats.py``).

Writes to ``--out``: ``triggers_network.h5`` and ``triggers_matched_filter.h5`` (groups
foreground/background: time, stat, window), ``sensitive_distance.png``, ``efficiency.png``,
``snr_recovery.png``, ``results.json`` and ``results.md`` (the table).

    python examples/gw_bbh_search/evaluate.py --data gw_data.h5 --run gw_run --out gw_eval
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import avila_ml as am

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwdata as G  # noqa: E402
import mfsearch as MF  # noqa: E402
import stats as S  # noqa: E402
from network import GabbardNet, slide  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    def tqdm(it, **_):
        return it

STEP = 192                       # samples between network windows (8 pooling strides)
CENTRE = int(0.75 * G.WINDOW)    # where in a window its statistic is placed
CLUSTER = 1.0                    # s, clustering half-width
FOUND_WINDOW = 0.5               # s, injection-trigger association half-width
MARGIN = 16.0                    # s at each end of a stretch left out of the analysis


def grid(n_samples: int):
    """Window starts (samples) and their statistic times (s) for a stretch of n_samples."""
    starts = np.arange((n_samples - G.WINDOW) // STEP + 1) * STEP
    return starts, (starts + CENTRE) / G.FS


def mf_on_grid(series: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Highest matched-filter SNR within +-STEP/2 samples of each grid time."""
    lo = starts[0] + CENTRE - STEP // 2
    return series[lo:lo + len(starts) * STEP].reshape(len(starts), STEP).max(axis=1).astype(np.float64)


def write_triggers(path: str, results: dict, name: str):
    import h5py
    with h5py.File(path, "w") as f:
        f.attrs.update(search=name, cluster_half_width=CLUSTER, found_window=FOUND_WINDOW,
                       statistic="USR logit difference" if name == "network" else "max-over-bank |SNR|")
        for part in ("foreground", "background"):
            g = f.create_group(part)
            g["time"], g["stat"] = results[part]["t"], results[part]["s"]
            g["window"] = np.full(len(results[part]["t"]), FOUND_WINDOW)
            g.attrs["duration"] = results[part]["duration"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="gw_data.h5")
    ap.add_argument("--run", default="gw_run", help="train.py output directory (best.pt)")
    ap.add_argument("--out", default="gw_eval")
    ap.add_argument("--min-match", type=float)
    ap.add_argument("--bank-proposals", type=int)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--device", default="cuda" if am.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    min_match = args.min_match or (0.9 if args.quick else 0.97)
    proposals = args.bank_proposals or (400 if args.quick else 2500)
    os.makedirs(args.out, exist_ok=True)
    import h5py
    t0 = time.time()

    with h5py.File(args.data, "r") as f:
        snr_range = tuple(f.attrs["snr_range"])
        data = {p: f[f"test/{p}/whitened"][...] for p in ("foreground", "background")}
        inj = {k: v[...] for k, v in f["test/foreground/injections"].items()}
    ck = am.load(os.path.join(args.run, "best.pt"))
    net = GabbardNet().to(args.device)
    net.load_state_dict(ck["model"])

    # ---- matched-filter bank
    rng = np.random.default_rng(args.seed)
    m1, m2, accepted = MF.make_bank(min_match, proposals, rng, progress=lambda it: tqdm(it, desc="bank", leave=False))
    tail = accepted[-max(1, proposals // 10):].mean()
    ff = MF.fitting_factors(m1, m2, G.draw_parameters(20 if args.quick else 100, rng))
    print(f"bank: {len(m1)} templates (min match {min_match}, {proposals} proposals, last 10% accepted "
          f"{100 * tail:.1f}%), fitting factor median {np.median(ff):.3f} min {ff.min():.3f} ({time.time() - t0:.0f} s)",
          flush=True)

    # ---- both searches on the same grid
    res = {"network": {}, "matched_filter": {}}
    mf_series = {}
    for part, x in data.items():
        starts, times = grid(len(x))
        keep = (times >= MARGIN) & (times <= len(x) / G.FS - MARGIN)
        duration = float(times[keep][-1] - times[keep][0] + STEP / G.FS)
        net_stat = slide(net, x, STEP, device=args.device, progress=lambda it: tqdm(it, desc=f"network {part}", leave=False))
        mf_series[part] = MF.matched_filter(x, m1, m2, progress=lambda it: tqdm(it, desc=f"matched filter {part}", leave=False))
        mf_stat = mf_on_grid(mf_series[part], starts)
        for name, st in (("network", net_stat), ("matched_filter", mf_stat)):
            st, tt = st[keep], times[keep]
            idx = S.cluster(st, CLUSTER, STEP / G.FS)
            res[name][part] = dict(t=tt[idx], s=st[idx], duration=duration, grid_t=tt, grid_s=st)
        print(f"{part}: {duration:.0f} s analysed ({time.time() - t0:.0f} s)", flush=True)

    # ---- figures of merit
    bg_dur = res["network"]["background"]["duration"]
    fars = np.geomspace(1.0 / bg_dur, 1e-1, 60)             # per second
    table_fars = [f for f in (1.0 / bg_dur, 10.0 / bg_dur, 100.0 / bg_dur, 1000.0 / bg_dur) if f <= 0.5]
    summary = {"bank": dict(templates=len(m1), min_match=min_match, fitting_factor_median=float(np.median(ff)),
                            fitting_factor_min=float(ff.min())),
               "background_seconds": bg_dur, "foreground_seconds": res["network"]["foreground"]["duration"],
               "injections": int(len(inj["time"])), "snr_range": snr_range}
    curves, eff, table = {}, {}, []
    for name, r in res.items():
        fg, bg = r["foreground"], r["background"]
        inj_stat = S.injection_stats(fg["t"], fg["s"], inj["time"], FOUND_WINDOW)
        dist = []
        for far in fars:
            thr = S.threshold_at(bg["s"], bg_dur, far)
            dist.append(S.sensitive_distance(inj_stat >= thr, inj["distance"], inj["snr_at_1mpc"], snr_range))
        curves[name] = np.array(dist)
        # Gabbard windows: 1 s of background per grid step; 1 s centred on each injection
        r["noise_win"] = S.window_max(bg["grid_s"], STEP / G.FS)
        r["inj_win"] = np.array([fg["grid_s"][np.abs(fg["grid_t"] - t) <= 0.5].max(initial=-np.inf)
                                 for t in inj["time"]])
        eff[name] = S.efficiency(r["noise_win"], r["inj_win"], inj["optimal_snr"])
        r["inj_stat"] = inj_stat
    for far in table_fars:
        row = {"far_per_day": far * 86400}
        for name, r in res.items():
            thr = S.threshold_at(r["background"]["s"], bg_dur, far)
            row[name] = S.sensitive_distance(r["inj_stat"] >= thr, inj["distance"], inj["snr_at_1mpc"], snr_range)
        row["ratio"] = row["network"][0] / row["matched_filter"][0]
        table.append(row)
    summary["table"] = [dict(far_per_day=r["far_per_day"], network_mpc=r["network"][0], network_err=r["network"][1],
                             matched_filter_mpc=r["matched_filter"][0], matched_filter_err=r["matched_filter"][1],
                             ratio=r["ratio"]) for r in table]
    summary["efficiency"] = {}
    for name in res:
        curves_e, thr = eff[name]
        summary["efficiency"][name] = {str(p): dict(snr=c.tolist(), tap=[None if np.isnan(v) else float(v) for v in tap],
                                                    count=n.tolist(), threshold=thr[p]) for p, (c, tap, n) in curves_e.items()}
    snr = inj["optimal_snr"]
    loud = snr >= 8
    summary["efficiency_snr_ge_8"] = {}
    for p in (1e-1, 1e-2, 1e-3):
        e = {}
        for name, r in res.items():
            thr = eff[name][1][p]
            e[name] = float((r["inj_win"][loud] > thr).mean()) if loud.any() else float("nan")
        summary["efficiency_snr_ge_8"][str(p)] = e
    # SNR recovery: the matched filter's peak within +-0.05 s of each injection vs its optimal SNR
    k = np.round(inj["time"] * G.FS).astype(int)
    w = int(0.05 * G.FS)
    rec = np.array([mf_series["foreground"][a - w:a + w + 1].max() for a in k])
    summary["snr_recovery"] = dict(optimal=snr.tolist(), matched_filter=rec.tolist())
    i_loud = int(np.argmax(snr))
    summary["loudest_injection"] = dict(optimal_snr=float(snr[i_loud]), matched_filter_snr=float(rec[i_loud]),
                                        network_stat=float(res["network"]["inj_stat"][i_loud]))
    summary["seconds"] = time.time() - t0

    write_triggers(os.path.join(args.out, "triggers_network.h5"), res["network"], "network")
    write_triggers(os.path.join(args.out, "triggers_matched_filter.h5"), res["matched_filter"], "matched_filter")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    lines = [f"Background {bg_dur / 3600:.2f} h, foreground {summary['foreground_seconds'] / 3600:.2f} h with "
             f"{summary['injections']} injections (optimal SNR {snr_range[0]:g}-{snr_range[1]:g}, uniform in distance); "
             f"bank {len(m1)} templates, fitting factor median {np.median(ff):.3f}.", "",
             "| FAR (per day) | network (Mpc) | matched filter (Mpc) | ratio |", "|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['far_per_day']:.4g} | {r['network'][0]:.0f} +- {r['network'][1]:.0f} | "
                     f"{r['matched_filter'][0]:.0f} +- {r['matched_filter'][1]:.0f} | {r['ratio']:.3f} |")
    lines += ["", "| efficiency at SNR >= 8, FAP per 1 s window | network | matched filter |", "|---|---|---|"]
    for p, e in summary["efficiency_snr_ge_8"].items():
        lines.append(f"| {float(p):g} | {e['network']:.3f} | {e['matched_filter']:.3f} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(args.out, fars, curves, eff, snr, rec)
    print(f"evaluation done in {time.time() - t0:.0f} s -> {args.out}")


def plot(out: str, fars, curves, eff, snr, rec):
    """The three figures (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    style = {"network": ("C0", "network (USR)"), "matched_filter": ("C1", "matched filter")}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, d in curves.items():
        c, label = style[name]
        ax.plot(fars * 86400 * 30, d[:, 0], color=c, label=label)
        ax.fill_between(fars * 86400 * 30, d[:, 0] - d[:, 1], d[:, 0] + d[:, 1], color=c, alpha=0.2)
    ax.set(xscale="log", xlabel="false-alarm rate (per month)", ylabel="sensitive distance (Mpc)",
           title="BBH 10-50 Msun, H1, aLIGOZeroDetHighPower")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "sensitive_distance.png"), dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (e, _) in eff.items():
        c, label = style[name]
        for p, ls in zip(e, ("-", "--", ":")):
            centres, tap, _n = e[p]
            ax.plot(centres, tap, ls, color=c, label=f"{label}, FAP {p:g}")
    ax.set(xlabel="optimal SNR", ylabel="true-alarm probability", ylim=(0, 1.02), title="Efficiency (Gabbard et al.)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "efficiency.png"), dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(snr, rec, ".", ms=3)
    ax.plot([0, snr.max()], [0, snr.max()], "k-", lw=0.5)
    ax.set(xlabel="injected optimal SNR", ylabel="matched-filter SNR (max over bank)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "snr_recovery.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
