"""Convolutions on the CPU, float32: Avila ML vs PyTorch, each library in its own process.

* Conv2d (16, 64, 32, 32) -> 64, k3, pad 1 and Conv3d (4, 16, 16^3) -> 32, k3, pad 1, vs
  ``torch.nn.functional.conv2d/3d``: forward, and forward + backward (input and weight grads).
* Conv4d forward + backward, k = 3^4, pad 1, on (2, 4, 16^4) -> 8 and on the LIGO-scale volume
  (1, 2, 32^4) -> 4, against the two PyTorch workarounds (PyTorch has no conv4d):
  (a) conv3d summed over the kernel-time offsets (what the public Conv4d repos do), and
  (b) the kernel-time offsets stacked into channels, one conv3d call.
  Target (issue 4): faster than (b), with lower peak memory.
* The convolution layers of the example and benchmark models (``bench_programs.py``), each
  forward + backward as the model's training step runs it (bias and its gradient where the layer
  has one, the input gradient only where an earlier layer needs it): the MNIST CNN's two Conv2d,
  the DCGAN's Conv2d / ConvTranspose2d layers, the residual CNN's stem and block convolutions,
  and the Conv4d example's two layers
  (causal-in-time, circular-in-space padding; PyTorch pads and runs workaround (b) with the
  stride, as ``bench_programs.spacetime_step`` does). Target (issue 17): <= 1.0x PyTorch.
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


def _torch_spacetime_conv(x, w, b, stride):
    """The Conv4d example's layer in PyTorch: causal (2 frames before) / circular (1 each side)
    padding, then workaround (b) with the layer's stride (``bench_programs._torch_spacetime_net``)."""
    import torch
    import torch.nn.functional as TF
    x = TF.pad(x, (0, 0, 0, 0, 0, 0, 2, 0))
    for dim in (3, 4, 5):
        n = x.shape[dim]
        x = torch.cat([x.narrow(dim, n - 1, 1), x, x.narrow(dim, 0, 1)], dim)
    N, C, T = x.shape[:3]
    O, kt = w.shape[0], w.shape[2]
    To = (T - kt) // stride[0] + 1
    xs = torch.stack([x[:, :, k:k + stride[0] * (To - 1) + 1:stride[0]] for k in range(kt)], 2)
    xs = xs.permute(0, 3, 1, 2, 4, 5, 6).reshape(N * To, C * kt, *x.shape[3:])
    y = TF.conv3d(xs, w.reshape(O, C * kt, *w.shape[3:]), b, stride=stride[1:])
    return y.reshape(N, To, O, *y.shape[2:]).transpose(1, 2)


def layer_case(kind, xs, ws, stride, padding, bias, input_grad):
    """``make(L)``: one model layer's forward + backward (``kind``: conv2d, conv_transpose2d or
    spacetime4d); the weight (and bias) always need gradients, the input only if ``input_grad``."""
    def make(L):
        rng = np.random.default_rng(0)
        x = L.tensor(rng.standard_normal(xs).astype(np.float32), requires_grad=input_grad)
        w = L.tensor((rng.standard_normal(ws) * 0.1).astype(np.float32), requires_grad=True)
        out_c = ws[1] if kind == "conv_transpose2d" else ws[0]
        b = L.tensor((rng.standard_normal(out_c) * 0.1).astype(np.float32), requires_grad=True) if bias else None
        if kind == "spacetime4d":
            if is_torch(L):
                conv = lambda: _torch_spacetime_conv(x, w, b, stride)  # noqa: E731
            else:
                modes = ("causal", "circular", "circular", "circular")
                conv = lambda: L.nn.functional.conv4d(x, w, b, stride, padding, padding_mode=modes)  # noqa: E731
        else:
            fn = getattr(L.nn.functional, kind)
            conv = lambda: fn(x, w, b, stride, padding)  # noqa: E731
        with L.no_grad():
            g = L.ones(*conv().shape)

        def run():
            x.grad = w.grad = None
            if b is not None:
                b.grad = None
            conv().backward(g)
        return run
    return make


def _layer_flops(kind, xs, ws, stride, padding):
    """2 x multiply-adds of the layer's forward: output grid x kernel taps x input channels."""
    if kind == "conv_transpose2d":  # the adjoint of a conv from its output back to ``xs``
        return 2.0 * xs[0] * xs[1] * int(np.prod(ws[1:])) * int(np.prod(xs[2:]))
    pads = [(2, 0)] + [(padding, padding)] * 3 if kind == "spacetime4d" else [(padding, padding)] * (len(xs) - 2)
    out = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(xs[2:], ws[2:], stride, pads)]
    return 2.0 * xs[0] * ws[0] * int(np.prod(ws[1:])) * int(np.prod(out))


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

# (label, kind, input, weight, stride, padding, bias, input needs grad) -- bench_programs.py's models
MODEL_LAYERS = [
    ("MNIST CNN conv1 Conv2d(1,32,3) (64,1,28^2)", "conv2d", (64, 1, 28, 28), (32, 1, 3, 3), 1, 0, True, False),
    ("MNIST CNN conv2 Conv2d(32,64,3) (64,32,26^2)", "conv2d", (64, 32, 26, 26), (64, 32, 3, 3), 1, 0, True, True),
    ("DCGAN D first Conv2d(3,64,4,2,1) (32,3,32^2)", "conv2d", (32, 3, 32, 32), (64, 3, 4, 4), 2, 1, False, True),
    ("DCGAN D middle Conv2d(64,128,4,2,1) (32,64,16^2)", "conv2d", (32, 64, 16, 16), (128, 64, 4, 4), 2, 1, False,
     True),
    ("DCGAN D last Conv2d(256,1,4,1,0) (32,256,4^2)", "conv2d", (32, 256, 4, 4), (1, 256, 4, 4), 1, 0, False, True),
    ("DCGAN G first ConvT2d(100,256,4,1,0) (32,100,1^2)", "conv_transpose2d", (32, 100, 1, 1), (100, 256, 4, 4), 1,
     0, False, False),
    ("DCGAN G middle ConvT2d(256,128,4,2,1) (32,256,4^2)", "conv_transpose2d", (32, 256, 4, 4), (256, 128, 4, 4), 2,
     1, False, True),
    ("DCGAN G last ConvT2d(64,3,4,2,1) (32,64,16^2)", "conv_transpose2d", (32, 64, 16, 16), (64, 3, 4, 4), 2, 1,
     False, True),
    ("DCGAN D third Conv2d(128,256,4,2,1) (32,128,8^2)", "conv2d", (32, 128, 8, 8), (256, 128, 4, 4), 2, 1, False,
     True),
    ("DCGAN G third ConvT2d(128,64,4,2,1) (32,128,8^2)", "conv_transpose2d", (32, 128, 8, 8), (128, 64, 4, 4), 2,
     1, False, True),
    ("residual CNN stem Conv2d(3,32,3,p1) (32,3,32^2)", "conv2d", (32, 3, 32, 32), (32, 3, 3, 3), 1, 1, True, False),
    ("residual CNN block Conv2d(32,32,3,p1) (32,32,32^2)", "conv2d", (32, 32, 32, 32), (32, 32, 3, 3), 1, 1, False,
     True),
    ("Conv4d example conv1 (32,1,8,12^3)->12 s(1,2,2,2)", "spacetime4d", (32, 1, 8, 12, 12, 12), (12, 1, 3, 3, 3, 3),
     (1, 2, 2, 2), 1, True, False),
    ("Conv4d example conv2 (32,12,8,6^3)->16 s2", "spacetime4d", (32, 12, 8, 6, 6, 6), (16, 12, 3, 3, 3, 3),
     (2, 2, 2, 2), 1, True, True),
]
for _label, _kind, _xs, _ws, _s, _p, _bias, _ig in MODEL_LAYERS:
    _st = (_s,) * (len(_xs) - 2) if isinstance(_s, int) else _s
    CASES.append(Case(f"{_label} fwd+bwd", layer_case(_kind, _xs, _ws, _st, _p, _bias, _ig),
                      flops=3 * _layer_flops(_kind, _xs, _ws, _st, _p), target=1.0))

_xs, _ws = (2, 4, 16, 16, 16, 16), (8, 4, 3, 3, 3, 3)
for _algo in (("onednn",) if have_onednn() else ()) + ("gemm", "fft", "direct"):
    CASES.append(Case(f"  algorithm={_algo} vs (b)", conv_case(_xs, _ws, True, torch_conv4d_stacked, _algo),
                      flops=3 * conv_flops(_xs, _ws), memory=True, min_time=0.0, quick=False))

if __name__ == "__main__":
    if "--no-accel" in sys.argv:
        # the case list depends on whether oneDNN loads (the algorithm=onednn row), so the parent
        # and a worker without it would disagree on the case indices
        sys.exit("bench_conv.py: --no-accel is not supported; the 'algorithm=gemm/fft/direct' rows time "
                 "the NumPy convolutions (what runs without oneDNN) in every run")
    main("conv", CASES, __doc__)
