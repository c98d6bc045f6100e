"""The BBH search example (examples/gw_bbh_search): its statistics, and the --quick pipeline.

The statistics (clustering, false-alarm rates, sensitive distance) are checked against values
worked out by hand and run everywhere. The pipeline needs the ``gw`` extra (PyCBC, LALSuite);
without it those tests skip with the reason. With it, ``run_all.py --quick`` runs once
(about 3 min on 2 cores) and the tests check what it wrote: the data files, the triggers, the
matched filter against PyCBC's own and against the injected SNRs, the network against chance,
and the sliding evaluation against window-by-window evaluation.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "gw_bbh_search")
sys.path.insert(0, EXAMPLE)

pytest.importorskip("scipy")
import stats as S  # noqa: E402

HAVE_GW = all(importlib.util.find_spec(m) is not None for m in ("pycbc", "lal", "lalsimulation", "h5py"))
needs_gw = pytest.mark.skipif(not HAVE_GW, reason="the gw extra (pycbc, lalsuite) is not installed: "
                                                   "pip install avila-ml[gw]")


# ---------------------------------------------------------------- statistics, by hand
def test_cluster_keeps_one_maximum_per_neighbourhood():
    step = 0.1
    stat = np.array([0, 1, 5, 2, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 9.0])
    idx = S.cluster(stat, cluster=0.5, step=step)
    # 5 at 2 (its +-5 neighbourhood holds nothing larger), the first of the 3-plateau at 12, 9 at 23;
    # the zeros at 6-7 are local maxima of an all-zero neighbourhood (as every search keeps them)
    assert 2 in idx and 12 in idx and 23 in idx and 13 not in idx and 3 not in idx


def test_threshold_and_far_agree():
    bg = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    dur = 100.0
    # one false alarm allowed (FAR 1/100 s): the threshold lies just above the 2nd loudest (4.0)
    thr = S.threshold_at(bg, dur, 1 / dur)
    assert 4.0 < thr <= 5.0 and S.far_of(bg, dur, thr) == pytest.approx(1 / dur)
    assert S.far_of(bg, dur, 2.5) == pytest.approx(3 / dur)
    assert S.threshold_at(bg, dur, 10.0) == -np.inf


def test_sensitive_distance_all_found_is_the_outer_radius():
    rng = np.random.default_rng(0)
    rho1 = rng.uniform(500, 3000, 20000)           # optimal SNR at 1 Mpc of each source
    snr_range = (3.0, 30.0)
    d = rng.uniform(rho1 / snr_range[1], rho1 / snr_range[0])
    # everything found: the volume is that of the SNR-3 spheres, (mean d_hi^3)^(1/3)
    r, err = S.sensitive_distance(np.ones(len(d), bool), d, rho1, snr_range)
    expect = np.mean((rho1 / 3.0) ** 3) ** (1 / 3)
    assert r == pytest.approx(expect, rel=3 * err / r + 1e-3)
    # found only within SNR 10 (d < rho1 / 10): the SNR-10 spheres
    r10, err10 = S.sensitive_distance(d < rho1 / 10, d, rho1, snr_range)
    assert r10 == pytest.approx(np.mean((rho1 / 10.0) ** 3) ** (1 / 3), rel=3 * err10 / r10 + 1e-3)


def test_efficiency_thresholds_and_bins():
    noise = np.arange(1000.0)                      # quantile 0.9 -> 899.1
    inj = np.array([950.0, 10.0, 999.5, 0.0])
    snr = np.array([3.0, 3.5, 9.0, 9.5])
    curves, thr = S.efficiency(noise, inj, snr, faps=(0.1,), bins=np.array([2.0, 4.0, 8.0, 10.0]))
    assert thr[0.1] == pytest.approx(899.1)
    centres, tap, count = curves[0.1]
    assert centres.tolist() == [3.0, 6.0, 9.0] and count.tolist() == [2, 0, 2]
    assert tap[0] == 0.5 and np.isnan(tap[1]) and tap[2] == 0.5


# ---------------------------------------------------------------- the --quick pipeline
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gw_quick")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLE, "run_all.py"), "--quick", "--dir", str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


@needs_gw
def test_quick_data_file(quick_run):
    import h5py
    with h5py.File(quick_run / "gw_data.h5", "r") as f:
        assert f.attrs["sample_rate"] == 2048 and f.attrs["approximant"] == "IMRPhenomD"
        assert f.attrs["seed"] == 2018 and len(f.attrs["noise_seeds"]) == 4
        assert f["train/noise"].shape == (1200, 2048) and f["train/signals"].shape == (600, 2048)
        # whitened noise: zero mean, unit variance over the kept band (98% of it: bins < 20 Hz cut)
        noise = f["train/noise"][...]
        assert abs(noise.mean()) < 0.01 and 0.97 < noise.std() < 1.01
        # unit-SNR signals: the window holds at most the whole signal's norm, and most of it
        norms = np.linalg.norm(f["train/signals"][...], axis=1)
        assert norms.max() <= 1.0 + 1e-3 and np.median(norms) > 0.5
        inj = f["test/foreground/injections"]
        t = inj["time"][...]
        assert np.all((np.diff(t) >= 18) & (np.diff(t) <= 30))
        assert np.allclose(inj["optimal_snr"][...], inj["snr_at_1mpc"][...] / inj["distance"][...])
        assert f["test/foreground/whitened"].shape == f["test/background/whitened"].shape
    for name in ("network", "matched_filter"):
        with h5py.File(quick_run / "eval" / f"triggers_{name}.h5", "r") as f:
            for part in ("foreground", "background"):
                g = f[part]
                assert len(g["time"]) > 10 and g["time"].shape == g["stat"].shape == g["window"].shape
                assert np.all(np.diff(g["time"][...]) > 1.0 - 1e-9)     # clustered: >= 1 s apart
    for png in ("sensitive_distance.png", "efficiency.png", "snr_recovery.png"):
        assert (quick_run / "eval" / png).stat().st_size > 10_000


@needs_gw
def test_quick_optimal_snr_matches_pycbc_sigma():
    import gwdata as G
    import pycbc.filter
    import pycbc.types
    p = G.draw_parameters(3, np.random.default_rng(3))
    n = 16 * G.FS
    for i in range(3):
        h = G.detector_fd(p, i, 1.0 / 16, n // 2 + 1, distance=400.0)
        psd = pycbc.types.FrequencySeries(G.psd(n // 2 + 1, 1.0 / 16), delta_f=1.0 / 16)
        ref = pycbc.filter.sigma(pycbc.types.FrequencySeries(h, delta_f=1.0 / 16), psd=psd, low_frequency_cutoff=G.F_LOWER)
        assert G.optimal_snr(h, n) == pytest.approx(ref, rel=2e-3)


@needs_gw
def test_quick_matched_filter_recovers_loud_injection_and_agrees_with_pycbc(quick_run):
    import h5py
    import gwdata as G
    import mfsearch as MF
    import pycbc.filter
    import pycbc.types
    res = json.loads((quick_run / "eval" / "results.json").read_text())
    loud = res["loudest_injection"]
    assert loud["optimal_snr"] > 15
    # the bank's best template on the data: within noise (+-1.5) and bank loss (<= 10%) of the optimal SNR
    assert 0.85 * loud["optimal_snr"] - 1.5 < loud["matched_filter_snr"] < loud["optimal_snr"] + 1.5
    # our FFT filter vs pycbc.filter.matched_filter on the coloured strain, same template
    with h5py.File(quick_run / "gw_data.h5", "r") as f:
        inj = {k: v[...] for k, v in f["test/foreground/injections"].items()}
        i = int(np.argmax(inj["optimal_snr"]))
        t = inj["time"][i]
        a = int(t * G.FS) - 40 * G.FS
        n = 64 * G.FS
        strain = f["test/foreground/strain"][a:a + n]
        white = f["test/foreground/whitened"][a:a + n]
    m1, m2 = inj["mass1"][i], inj["mass2"][i]
    ours = np.abs(MF.complex_correlation(np.fft.rfft(white), MF.unit_template(m1, m2, n)[None], n))[0]
    tmpl = pycbc.types.FrequencySeries(G.template_fd(m1, m2, G.FS / n, n // 2 + 1), delta_f=G.FS / n)
    psd = pycbc.types.FrequencySeries(G.psd(n // 2 + 1, G.FS / n), delta_f=G.FS / n)
    ref = np.abs(pycbc.filter.matched_filter(tmpl, pycbc.types.TimeSeries(strain, delta_t=1.0 / G.FS), psd=psd,
                                             low_frequency_cutoff=G.F_LOWER).numpy())
    k = 40 * G.FS
    w = slice(k - G.FS // 10, k + G.FS // 10)
    assert abs(int(np.argmax(ours[w])) - int(np.argmax(ref[w]))) <= 1
    assert ours[w].max() == pytest.approx(ref[w].max(), rel=0.02)
    assert ours[w].max() == pytest.approx(inj["optimal_snr"][i], abs=2.5)


@needs_gw
def test_quick_network_beats_chance(quick_run):
    res = json.loads((quick_run / "eval" / "results.json").read_text())
    hist = json.loads((quick_run / "run" / "history.json").read_text())["history"]
    last = hist[-1]
    # balanced validation accuracy at SNR 12 well above the 0.5 of a coin
    assert 0.5 * (last["acc_noise"] + last["acc_snr12"]) > 0.7
    # on the continuous stretch: at FAP 0.1 per window, loud injections are found more often than 0.1
    assert res["efficiency_snr_ge_8"]["0.1"]["network"] > 0.3


@needs_gw
def test_quick_sliding_equals_window_by_window(quick_run):
    import h5py
    import avila_ml as am
    from network import GabbardNet, slide, window_stats
    net = GabbardNet()
    net.load_state_dict(am.load(quick_run / "run" / "best.pt")["model"])
    with h5py.File(quick_run / "gw_data.h5", "r") as f:
        x = f["test/background/whitened"][:2048 + 192 * 40]
    slid = slide(net, x, 192, windows_per_chunk=16)
    direct = window_stats(net, np.stack([x[s:s + 2048] for s in range(0, 192 * 41, 192)]))
    assert slid.shape == (41,)
    np.testing.assert_allclose(slid, direct, rtol=1e-4, atol=1e-4)


def test_docstring_examples_of_the_example_modules():
    """stats.py and network.py (no PyCBC needed) carry runnable examples; run them here, since
    pytest's doctest collection covers avila_ml and tests, not examples/."""
    import doctest
    import network
    for mod in (S, network):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, (mod.__name__, result)
