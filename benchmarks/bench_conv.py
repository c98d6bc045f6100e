"""Convolutions on the CPU, float32: Avila ML vs PyTorch side by side in one process.

* Conv2d (16, 64, 32, 32) -> 64, k3, pad 1 and Conv3d (4, 16, 16^3) -> 32, k3, pad 1, vs
  ``torch.nn.functional.conv2d/3d``: forward, and forward + backward (input and weight grads).
* Conv4d forward + backward, k = 3^4, pad 1, on (2, 4, 16^4) -> 8 and on the LIGO-scale volume
  (1, 2, 32^4) -> 4, against the two PyTorch workarounds (PyTorch has no conv4d):
  (a) conv3d summed over the kernel-time offsets (what the public Conv4d repos do), and
  (b) the kernel-time offsets stacked into channels, one conv3d call.
  Target (issue 4): faster than (b), with lower peak memory.
* The three algorithms of ours (gemm, fft, direct) on the first conv4d shape.

Peak memory: ours via ``tracemalloc`` (NumPy reports its buffers), PyTorch via its profiler's
memory records; both count every allocation of the step (output and gradients included).

    .venv/bin/python benchmarks/bench_conv.py [--threads N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys

_args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_args.add_argument("--threads", type=int, default=None, help="threads for PyTorch and NumPy's BLAS")
_args.add_argument("--quick", action="store_true", help="fewer repeats, skip the 32^4 volume")
ARGS = _args.parse_args()
if ARGS.threads:  # must precede the NumPy import, which starts the BLAS thread pool
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
# PyTorch's OpenMP threads otherwise spin-wait after every op and keep the cores busy for
# whatever runs next; with the two libraries interleaved that slows both (measured on 2 cores:
# PyTorch's own conv4d workaround (b) 63 -> 52 ms, ours 77 -> 64 ms). Passive waiting is the
# fair setting for a side-by-side run; set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import avila_ml as am  # noqa: E402
from harness import compare, machine_limits, peak_python_memory, print_table, save_results, torch_peak_memory  # noqa: E402

F = am.nn.functional
REPEATS = 3 if ARGS.quick else 5


def conv_flops(x_shape, w_shape, out_spatial):
    """Multiply-adds x 2 of one forward convolution."""
    return 2.0 * x_shape[0] * w_shape[0] * int(np.prod(w_shape[1:])) * int(np.prod(out_spatial))


def torch_conv4d_sum(x, w, padding=1):
    """Workaround (a): conv3d per output frame, summed over the kernel-time offsets."""
    kt = w.shape[2]
    xp = TF.pad(x, (0, 0, 0, 0, 0, 0, padding, padding))
    T = xp.shape[2] - kt + 1
    frames = []
    for t in range(T):
        acc = None
        for k in range(kt):
            y = TF.conv3d(xp[:, :, t + k], w[:, :, k], padding=padding)
            acc = y if acc is None else acc + y
        frames.append(acc)
    return torch.stack(frames, 2)


def torch_conv4d_stacked(x, w, padding=1):
    """Workaround (b): the kt shifted copies of the input stacked into channels, one conv3d."""
    N, C = x.shape[:2]
    O, kt = w.shape[0], w.shape[2]
    xp = TF.pad(x, (0, 0, 0, 0, 0, 0, padding, padding))
    T = xp.shape[2] - kt + 1
    st = torch.stack([xp[:, :, k:k + T] for k in range(kt)], 2)            # (N, C, kt, T, X, Y, Z)
    st = st.permute(0, 3, 1, 2, 4, 5, 6).reshape(N * T, C * kt, *x.shape[3:])
    y = TF.conv3d(st, w.reshape(O, C * kt, *w.shape[3:]), padding=padding)  # (N*T, O, X', Y', Z')
    return y.reshape(N, T, O, *y.shape[2:]).permute(0, 2, 1, 3, 4, 5)


def fwd_bwd_pair(ours_fn, theirs_fn, xa, wa):
    ax = am.tensor(xa, requires_grad=True)
    aw = am.tensor(wa, requires_grad=True)
    tx = torch.tensor(xa, requires_grad=True)
    tw = torch.tensor(wa, requires_grad=True)

    def ours():
        ax.grad = aw.grad = None
        y = ours_fn(ax, aw)
        y.backward(am.ones_like(y))

    def theirs():
        tx.grad = tw.grad = None
        y = theirs_fn(tx, tw)
        y.backward(torch.ones_like(y))

    return ours, theirs


def fwd_pair(ours_fn, theirs_fn, xa, wa):
    ax, aw, tx, tw = am.tensor(xa), am.tensor(wa), torch.tensor(xa), torch.tensor(wa)

    def theirs():
        with torch.no_grad():
            theirs_fn(tx, tw)

    return (lambda: ours_fn(ax, aw)), theirs


def check_equal(ours_fn, theirs_fn, xa, wa):
    """Same values before timing anything (float32 tolerance)."""
    y = ours_fn(am.tensor(xa), am.tensor(wa)).numpy()
    with torch.no_grad():
        t = theirs_fn(torch.tensor(xa), torch.tensor(wa)).numpy()
    scale = float(np.abs(t).max()) or 1.0
    err = float(np.abs(y - t).max()) / scale
    assert err < 1e-4, f"results differ: max relative error {err:.2e}"


def mib(b):
    return "n/a" if b is None else f"{b / 2**20:.1f} MiB"


def main() -> None:
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    rng = np.random.default_rng(0)
    rows = []

    # -- Conv2d and Conv3d vs PyTorch --------------------------------------------------------
    for name, xs, ws in [("Conv2d (16,64,32,32)->64 k3 p1", (16, 64, 32, 32), (64, 64, 3, 3)),
                         ("Conv3d (4,16,16^3)->32 k3 p1", (4, 16, 16, 16, 16), (32, 16, 3, 3, 3))]:
        d = len(xs) - 2
        xa = rng.standard_normal(xs).astype(np.float32)
        wa = (rng.standard_normal(ws) * 0.1).astype(np.float32)
        ofn = lambda x, w, d=d: getattr(F, f"conv{d}d")(x, w, padding=1)  # noqa: E731
        tfn = lambda x, w, d=d: getattr(TF, f"conv{d}d")(x, w, padding=1)  # noqa: E731
        check_equal(ofn, tfn, xa, wa)
        flops = conv_flops(xs, ws, xs[2:])
        o, t = fwd_pair(ofn, tfn, xa, wa)
        rows.append(compare(f"{name} fwd", o, t, flops=flops, repeats=REPEATS))
        o, t = fwd_bwd_pair(ofn, tfn, xa, wa)
        rows.append(compare(f"{name} fwd+bwd", o, t, flops=3 * flops, repeats=REPEATS))
        print_table(rows[-2:])

    # -- Conv4d vs the two PyTorch workarounds ---------------------------------------------------
    shapes = [((2, 4, 16, 16, 16, 16), (8, 4, 3, 3, 3, 3))]
    if not ARGS.quick:
        shapes.append(((1, 2, 32, 32, 32, 32), (4, 2, 3, 3, 3, 3)))
    mem_lines = []
    verdicts = []
    for xs, ws in shapes:
        xa = rng.standard_normal(xs).astype(np.float32)
        wa = (rng.standard_normal(ws) * 0.1).astype(np.float32)
        ofn = lambda x, w: F.conv4d(x, w, padding=1)  # noqa: E731
        flops = 3 * conv_flops(xs, ws, xs[2:])
        label = f"Conv4d {xs}->{ws[0]} k3^4 p1 fwd+bwd"
        res = {}
        for tag, tfn in (("(a) conv3d summed over kt", torch_conv4d_sum),
                         ("(b) kt stacked into channels", torch_conv4d_stacked)):
            check_equal(ofn, tfn, xa, wa)
            o, t = fwd_bwd_pair(ofn, tfn, xa, wa)
            row = compare(f"{label} vs {tag}", o, t, flops=flops, repeats=REPEATS, min_time=0.0)
            rows.append(row)
            res[tag[:3]] = row
            print_table([row])
        o, t_a = fwd_bwd_pair(ofn, torch_conv4d_sum, xa, wa)
        _, t_b = fwd_bwd_pair(ofn, torch_conv4d_stacked, xa, wa)
        m_ours, m_a, m_b = peak_python_memory(o), torch_peak_memory(t_a), torch_peak_memory(t_b)
        mem_lines.append(f"peak memory {label}: avila_ml {mib(m_ours)}, torch (a) {mib(m_a)}, torch (b) {mib(m_b)} "
                         f"(input {mib(xa.nbytes)}, output {mib(xa.nbytes // xs[1] * ws[0])})")
        faster = res["(b)"]["ratio"] < 1
        leaner = m_b is not None and m_ours < m_b
        verdicts.append(f"{label}: {'faster' if faster else 'slower'} than (b) "
                        f"({res['(b)']['ratio']:.2f}x), {'lower' if leaner else 'higher'} peak memory "
                        f"-> target {'met' if faster and leaner else 'NOT met'}")

    # -- our algorithms side by side on the first conv4d shape -----------------------------------
    xs, ws = shapes[0]
    xa = rng.standard_normal(xs).astype(np.float32)
    wa = (rng.standard_normal(ws) * 0.1).astype(np.float32)
    flops = 3 * conv_flops(xs, ws, xs[2:])
    for algo in ("gemm", "fft", "direct"):
        def ofn(x, w, algo=algo):
            am.backends.set_conv_algorithm(algo)
            try:
                return F.conv4d(x, w, padding=1)
            finally:
                am.backends.set_conv_algorithm("auto")
        o, t = fwd_bwd_pair(ofn, torch_conv4d_stacked, xa, wa)
        row = compare(f"  algorithm={algo} vs (b)", o, t, flops=flops, repeats=REPEATS, min_time=0.0)
        row["note"] = f"peak {mib(peak_python_memory(o))}"
        rows.append(row)
        print_table([row])

    threads = (f"torch threads={torch.get_num_threads()}, BLAS threads={ARGS.threads or 'default'}, "
               f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    text = print_table(rows, machine_limits(), title=f"Avila ML vs PyTorch, convolutions (CPU; {threads})")
    text += "\n" + "\n".join(mem_lines + verdicts)
    print("\n".join(mem_lines + verdicts))
    name = "conv_cpu" if not ARGS.threads else f"conv_cpu_{ARGS.threads}thread"
    print("saved", save_results(text, name))


if __name__ == "__main__":
    main()
