"""Convolutions on the CPU, float32: Avila ML vs PyTorch, each library in its own process.

* Conv2d (16, 64, 32, 32) -> 64, k3, pad 1 and Conv3d (4, 16, 16^3) -> 32, k3, pad 1, vs
  ``torch.nn.functional.conv2d/3d``: forward, and forward + backward (input and weight grads).
* Conv4d forward + backward, k = 3^4, pad 1, on (2, 4, 16^4) -> 8 and on the LIGO-scale volume
  (1, 2, 32^4) -> 4, against the two PyTorch workarounds (PyTorch has no conv4d):
  (a) conv3d summed over the kernel-time offsets (what the public Conv4d repos do), and
  (b) the kernel-time offsets stacked into channels, one conv3d call.
  Target (issue 4): faster than (b), with lower peak memory.
* The algorithms of ours on the first conv4d shape, vs (b): ``onednn`` (what ``"auto"`` runs
  when oneDNN is installed, ``avila_ml.cpu_accel``) and the NumPy ones (gemm, fft, direct);
  and the NumPy ``gemm`` on the 1-3 d shapes (what runs without oneDNN).

Targets (issue 17): conv1d/2d/3d forward + backward <= 1.0x PyTorch; Conv4d forward + backward
<= 0.6x workaround (b) on both shapes, with lower peak memory. Without oneDNN, the rows run the
NumPy algorithms: ``AVILA_ML_DNNL_LIBRARY=/nonexistent python benchmarks/bench_conv.py`` times that.

Peak memory (conv4d rows): ours via ``tracemalloc`` (NumPy reports its buffers), PyTorch via its
profiler's memory records; both count every allocation of the step (output and gradients).

    python benchmarks/bench_conv.py [--rounds N] [--threads N] [--quick]
"""
from __future__ import annotations

import importlib.metadata
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Case, is_torch, main  # noqa: E402


def conv_flops(x_shape, w_shape):
    """Multiply-adds x 2 of one forward convolution with 'same' padding."""
    return 2.0 * x_shape[0] * w_shape[0] * int(np.prod(w_shape[1:])) * int(np.prod(x_shape[2:]))


def torch_conv4d_sum(x, w, padding=1):
    """Workaround (a): conv3d per output frame, summed over the kernel-time offsets."""
    import torch
    import torch.nn.functional as TF
    kt = w.shape[2]
    xp = TF.pad(x, (0, 0, 0, 0, 0, 0, padding, padding))
    frames = []
    for t in range(xp.shape[2] - kt + 1):
        acc = None
        for k in range(kt):
            y = TF.conv3d(xp[:, :, t + k], w[:, :, k], padding=padding)
            acc = y if acc is None else acc + y
        frames.append(acc)
    return torch.stack(frames, 2)


def torch_conv4d_stacked(x, w, padding=1):
    """Workaround (b): the kt shifted copies of the input stacked into channels, one conv3d."""
    import torch
    import torch.nn.functional as TF
    N, C = x.shape[:2]
    O, kt = w.shape[0], w.shape[2]
    xp = TF.pad(x, (0, 0, 0, 0, 0, 0, padding, padding))
    T = xp.shape[2] - kt + 1
    st = torch.stack([xp[:, :, k:k + T] for k in range(kt)], 2)            # (N, C, kt, T, X, Y, Z)
    st = st.permute(0, 3, 1, 2, 4, 5, 6).reshape(N * T, C * kt, *x.shape[3:])
    y = TF.conv3d(st, w.reshape(O, C * kt, *w.shape[3:]), padding=padding)  # (N*T, O, X', Y', Z')
    return y.reshape(N, T, O, *y.shape[2:]).permute(0, 2, 1, 3, 4, 5)


def _inputs(L, xs, ws, grad):
    rng = np.random.default_rng(0)
    x = L.tensor(rng.standard_normal(xs).astype(np.float32), requires_grad=grad)
    w = L.tensor((rng.standard_normal(ws) * 0.1).astype(np.float32), requires_grad=grad)
    return x, w


def conv_case(xs, ws, backward, workaround=None, algorithm=None):
    """``make(L)``: conv{d}d with padding 1; for torch and a 4-D shape, the given workaround."""
    d = len(xs) - 2

    def make(L):
        x, w = _inputs(L, xs, ws, backward)
        if is_torch(L) and d == 4:
            conv = workaround
        else:
            fn = getattr(L.nn.functional, f"conv{d}d")
            conv = lambda x_, w_: fn(x_, w_, padding=1)  # noqa: E731
        if not backward:
            def run():
                with L.no_grad():
                    conv(x, w)
        else:
            g = L.ones(xs[0], ws[0], *xs[2:])

            def run():
                x.grad = w.grad = None
                conv(x, w).backward(g)
        if algorithm and not is_torch(L):  # this case's algorithm for its own steps only
            return _with_algorithm(L, algorithm, run)
        return run
    return make


def _with_algorithm(L, algorithm, run):
    def step():
        L.backends.set_conv_algorithm(algorithm)
        try:
            run()
        finally:
            L.backends.set_conv_algorithm("auto")
    return step


def have_onednn() -> bool:
    """Whether oneDNN is installed (checked without importing Avila ML in the parent process)."""
    path = os.environ.get("AVILA_ML_DNNL_LIBRARY")
    if path:
        return os.path.exists(path)
    try:
        importlib.metadata.version("onednn-cpu-gomp")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


CASES = []
for name, xs, ws in [("Conv1d (16,64,4096)->64 k3 p1", (16, 64, 4096), (64, 64, 3)),
                     ("Conv2d (16,64,32,32)->64 k3 p1", (16, 64, 32, 32), (64, 64, 3, 3)),
                     ("Conv3d (4,16,16^3)->32 k3 p1", (4, 16, 16, 16, 16), (32, 16, 3, 3, 3))]:
    CASES.append(Case(f"{name} fwd", conv_case(xs, ws, False), flops=conv_flops(xs, ws)))
    CASES.append(Case(f"{name} fwd+bwd", conv_case(xs, ws, True), flops=3 * conv_flops(xs, ws), target=1.0))
    CASES.append(Case(f"  algorithm=gemm fwd+bwd", conv_case(xs, ws, True, algorithm="gemm"),
                      flops=3 * conv_flops(xs, ws), quick=False))

for xs, ws, quick in [((2, 4, 16, 16, 16, 16), (8, 4, 3, 3, 3, 3), True),
                      ((1, 2, 32, 32, 32, 32), (4, 2, 3, 3, 3, 3), False)]:
    label = f"Conv4d {xs}->{ws[0]} k3^4 p1 fwd+bwd"
    for tag, fn in (("(a) conv3d summed over kt", torch_conv4d_sum), ("(b) kt stacked into channels", torch_conv4d_stacked)):
        if tag.startswith("(a)") and not quick:
            continue  # (a) on the 32^4 volume takes minutes and (b) is the stronger baseline
        CASES.append(Case(f"{label} vs {tag}", conv_case(xs, ws, True, fn), flops=3 * conv_flops(xs, ws),
                          memory=True, min_time=0.0, quick=quick, target=0.6 if tag.startswith("(b)") else None))

_xs, _ws = (2, 4, 16, 16, 16, 16), (8, 4, 3, 3, 3, 3)
for _algo in (("onednn",) if have_onednn() else ()) + ("gemm", "fft", "direct"):
    CASES.append(Case(f"  algorithm={_algo} vs (b)", conv_case(_xs, _ws, True, torch_conv4d_stacked, _algo),
                      flops=3 * conv_flops(_xs, _ws), memory=True, min_time=0.0, quick=False))

if __name__ == "__main__":
    main("conv", CASES, __doc__)
