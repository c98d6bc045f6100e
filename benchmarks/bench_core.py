"""Core benchmarks: Avila ML vs PyTorch on the CPU, each library in its own process.

Workloads (issue 2):
  * elementwise chain ``(x * y + z).exp()`` on 10M float32 (no grad), and the same chain
    forward + backward with ``x`` requiring grad; a reference row times the same three kernels
    writing into preallocated buffers (NumPy in the Avila ML process, PyTorch in the other): no
    Avila ML code, it shows what the array libraries themselves give;
  * matmul 1024 x 1024 x 1024 float32;
  * softmax over the last dim of a (64, 4096) float32 tensor (forward, and forward + backward),
    and log_softmax forward + backward, float32 and float64 (issue 17);
  * activations forward + backward (issue 17): exact GELU on (2048, 512) (a GPT MLP's hidden
    layer), tanh GELU on (3072, 512) (the char GPT's), LeakyReLU(0.2) on (32, 128, 16, 16) (a
    DCGAN discriminator's feature map), ReLU (also in place: ``relu_()`` in a graph and
    without grad) and amax over (2, 3) on (32, 32, 32, 32) (the residual CNN's feature map and
    global max pooling), binary cross entropy on (128, 784) (the
    VAE's loss) and the rotary embedding of a (32, 4, 96, 32) query view (the char GPT's);
  * per-op autograd overhead: a 10-op graph on (4,) tensors, forward + backward, forward only,
    and forward without grad (divide by 10 for the time per op).

Targets (ratio to PyTorch): matmul and large elementwise <= 1.2x, autograd overhead <= 1.2x
(issue 17; issue 2 asked for 3x).

    python benchmarks/bench_core.py [--rounds N] [--threads N] [--quick]
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Case, is_torch, main  # noqa: E402

N_ELEM = 10_000_000


def _vectors(L, n, k, seed):
    rng = np.random.default_rng(seed)
    return [L.from_numpy(rng.random(n, dtype=np.float32)) for _ in range(k)]


def chain(L):
    x, y, z = _vectors(L, N_ELEM, 3, 0)

    def run():
        with L.no_grad():
            return (x * y + z).exp()
    return run


def chain_backward(L):
    x, y, z = _vectors(L, N_ELEM, 3, 0)
    x.requires_grad_()
    g = L.ones(N_ELEM)

    def run():
        x.grad = None
        (x * y + z).exp().backward(g)
    return run


def kernels_out(L):
    """The three kernels into preallocated buffers: NumPy's (Avila ML process) or PyTorch's."""
    a, b, c = (v.numpy() for v in _vectors(L, N_ELEM, 3, 0))
    if is_torch(L):
        import torch
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        t1, t2 = torch.empty_like(ta), torch.empty_like(ta)

        def run():
            torch.mul(ta, tb, out=t1)
            torch.add(t1, tc, out=t2)
            torch.exp(t2, out=t1)
        return run
    o1, o2 = np.empty_like(a), np.empty_like(a)

    def run():
        np.multiply(a, b, out=o1)
        np.add(o1, c, out=o2)
        np.exp(o2, out=o1)
    return run


def matmul(L):
    rng = np.random.default_rng(1)
    x, y = (L.from_numpy(rng.random((1024, 1024), dtype=np.float32)) for _ in range(2))

    def run():
        with L.no_grad():
            return x @ y
    return run


def softmax(L):
    x = L.from_numpy(np.random.default_rng(2).standard_normal((64, 4096), dtype=np.float32))

    def run():
        with L.no_grad():
            return L.softmax(x, dim=-1)
    return run


def softmax_backward(L):
    rng = np.random.default_rng(2)
    x = L.from_numpy(rng.standard_normal((64, 4096), dtype=np.float32)).requires_grad_()
    g = L.from_numpy(rng.standard_normal((64, 4096), dtype=np.float32))

    def run():
        x.grad = None
        L.softmax(x, dim=-1).backward(g)
    return run


def log_softmax_backward(L, dtype=np.float32):
    rng = np.random.default_rng(2)
    x = L.from_numpy(rng.standard_normal((64, 4096), dtype=dtype)).requires_grad_()
    g = L.from_numpy(rng.standard_normal((64, 4096), dtype=dtype))

    def run():
        x.grad = None
        L.log_softmax(x, dim=-1).backward(g)
    return run


def _activation_backward(L, shape, fn):
    rng = np.random.default_rng(4)
    x = L.from_numpy(rng.standard_normal(shape, dtype=np.float32)).requires_grad_()
    g = L.from_numpy(rng.standard_normal(shape, dtype=np.float32))

    def run():
        x.grad = None
        fn(x).backward(g)
    return run


def gelu_backward(L):
    """Exact GELU (erf), the MLP activation of the GPT programs."""
    return _activation_backward(L, (2048, 512), L.nn.functional.gelu)


def gelu_tanh_backward(L):
    """tanh GELU, the MLP activation of the char GPT (examples/transformer_lm.py): its hidden
    layer (batch 32 x 96 positions, 512 features)."""
    return _activation_backward(L, (3072, 512), lambda x: L.nn.functional.gelu(x, approximate="tanh"))


def linear_backward(L):
    """nn.Linear(128, 384) on (16, 128, 128) f32 (the small GPT's qkv projection), forward +
    backward of input, weight and bias (issue 17: one node, the bias added into the product)."""
    rng = np.random.default_rng(6)
    L.manual_seed(0)
    lin = L.nn.Linear(128, 384)
    x = L.from_numpy(rng.standard_normal((16, 128, 128)).astype(np.float32)).requires_grad_()
    g = L.from_numpy(rng.standard_normal((16, 128, 384)).astype(np.float32))

    def step():
        x.grad = lin.weight.grad = lin.bias.grad = None
        lin(x).backward(g)
    return step


def bce_backward(L):
    """Binary cross entropy (sum) of a VAE's sigmoid output (128, 784), forward + backward."""
    rng = np.random.default_rng(5)
    p = L.from_numpy((1 / (1 + np.exp(-rng.standard_normal((128, 784))))).astype(np.float32)).requires_grad_()
    y = L.from_numpy(rng.random((128, 784), dtype=np.float32))

    def run():
        p.grad = None
        L.nn.functional.binary_cross_entropy(p, y, reduction="sum").backward()
    return run


def log_softmax_backward_f64(L):
    """The float64 log_softmax row (issue 17: the compiled row kernels take float64 too)."""
    return log_softmax_backward(L, np.float64)


def cross_entropy_gpt(L):
    """Cross entropy (mean) of the small GPT's logits (16 x 128 positions, vocabulary 512),
    forward + backward (issue 17: the rows in blocks on the threads)."""
    rng = np.random.default_rng(7)
    x = L.from_numpy(rng.standard_normal((2048, 512), dtype=np.float32)).requires_grad_()
    t = L.from_numpy(rng.integers(0, 512, 2048))

    def run():
        x.grad = None
        L.nn.functional.cross_entropy(x, t).backward()
    return run


def rotary_backward(L):
    """Rotary embedding ("rotate half") of a char-GPT query, (32, 4, 96, 32) viewed out of the
    fused qkv projection, forward + backward: ``nn.RotaryEmbedding`` against PyTorch's usual
    ``x cos + cat(-x2, x1) sin``."""
    rng = np.random.default_rng(6)
    qkv = L.from_numpy(rng.standard_normal((32, 96, 3, 4, 32), dtype=np.float32)).requires_grad_()
    g = L.from_numpy(rng.standard_normal((32, 4, 96, 32), dtype=np.float32))
    if is_torch(L):
        ang = np.arange(96)[:, None] * 10000.0 ** (-np.arange(16) * 2.0 / 32)[None]
        cos = L.from_numpy(np.concatenate([np.cos(ang)] * 2, 1).astype(np.float32))
        sin = L.from_numpy(np.concatenate([np.sin(ang)] * 2, 1).astype(np.float32))

        def rope(x):
            return x * cos + L.cat([-x[..., 16:], x[..., :16]], -1) * sin
    else:
        rope = L.nn.RotaryEmbedding(32)

    def run():
        qkv.grad = None
        rope(qkv.permute(2, 0, 3, 1, 4)[0]).backward(g)
    return run


def leaky_relu_backward(L):
    """LeakyReLU(0.2) on a DCGAN discriminator's feature map."""
    return _activation_backward(L, (32, 128, 16, 16), lambda x: L.nn.functional.leaky_relu(x, 0.2))


def relu_backward(L):
    """ReLU on the residual CNN's feature map (bench_programs.py's residual_cnn_step)."""
    return _activation_backward(L, (32, 32, 32, 32), L.nn.functional.relu)


def relu_inplace_backward(L):
    """In-place ReLU of a non-leaf inside a graph, forward + backward, as the residual CNN's
    ``ReLU(inplace=True)`` / ``relu_()`` (the product ``x * 2`` before it is part of the row)."""
    rng = np.random.default_rng(4)
    x = L.from_numpy(rng.standard_normal((32, 32, 32, 32), dtype=np.float32)).requires_grad_()
    g = L.from_numpy(rng.standard_normal((32, 32, 32, 32), dtype=np.float32))

    def run():
        x.grad = None
        (x * 2).relu_().backward(g)
    return run


def relu_inplace_no_grad(L):
    """``relu_()`` of a (32, 32, 32, 32) tensor without autograd (the same tensor each call:
    every call still reads and writes all of it)."""
    t = L.from_numpy(np.random.default_rng(4).standard_normal((32, 32, 32, 32), dtype=np.float32))
    return lambda: t.relu_()


def amax_backward(L):
    """amax over the spatial dims, the residual CNN's global max pooling (``x.amax(dim=(2, 3))``)."""
    rng = np.random.default_rng(7)
    x = L.from_numpy(rng.standard_normal((32, 32, 32, 32), dtype=np.float32)).requires_grad_()
    g = L.from_numpy(rng.standard_normal((32, 32), dtype=np.float32))

    def run():
        x.grad = None
        x.amax(dim=(2, 3)).backward(g)
    return run


def _ten_ops(x, y):
    """A 10-op graph: mul, add, exp, mul-scalar, sub, tanh, mul, sin, add-scalar, sum."""
    z = x * y
    z = z + x
    z = z.exp()
    z = z * 0.5
    z = z - y
    z = z.tanh()
    z = z * x
    z = z.sin()
    z = z + 1.0
    return z.sum()


def _small(L, grad):
    rng = np.random.default_rng(3)
    return [L.tensor(rng.standard_normal(4, dtype=np.float32), requires_grad=grad) for _ in range(2)]


def overhead_fwd_bwd(L):
    x, y = _small(L, True)
    return lambda: _ten_ops(x, y).backward()


def overhead_fwd(L):
    x, y = _small(L, True)
    return lambda: _ten_ops(x, y)


def overhead_no_grad(L):
    x, y = _small(L, False)
    return lambda: _ten_ops(x, y)


CASES = [
    Case("elementwise (x*y+z).exp() 10M f32, no grad", chain, nbytes=8 * 4 * N_ELEM, target=1.2),
    Case("  same chain, forward + backward (x grad)", chain_backward),
    Case("  reference: NumPy vs torch kernels, out= buffers", kernels_out, nbytes=8 * 4 * N_ELEM, quick=False),
    Case("matmul 1024^3 f32", matmul, flops=2 * 1024 ** 3, target=1.2),
    Case("softmax (64, 4096) f32, dim=-1", softmax, nbytes=2 * 4 * 64 * 4096),
    Case("  softmax forward + backward", softmax_backward),
    Case("log_softmax (64, 4096) f32, forward + backward", log_softmax_backward),
    Case("  log_softmax in f64, forward + backward", log_softmax_backward_f64),
    Case("GELU (exact) (2048, 512) f32, forward + backward", gelu_backward),
    Case("GELU (tanh) (3072, 512) f32, forward + backward", gelu_tanh_backward),
    Case("LeakyReLU(0.2) (32, 128, 16, 16) f32, forward + backward", leaky_relu_backward),
    Case("ReLU (32, 32, 32, 32) f32, forward + backward", relu_backward),
    Case("ReLU in place (x * 2).relu_() (32, 32, 32, 32) f32, forward + backward", relu_inplace_backward),
    Case("ReLU in place relu_() (32, 32, 32, 32) f32, no grad", relu_inplace_no_grad),
    Case("amax over (2, 3) of (32, 32, 32, 32) f32, forward + backward", amax_backward),
    Case("binary_cross_entropy (128, 784) f32 sum, forward + backward", bce_backward),
    Case("cross_entropy (2048, 512) f32 mean (small GPT logits), forward + backward", cross_entropy_gpt),
    Case("Linear 128->384 on (16, 128, 128) f32 (small GPT qkv), forward + backward", linear_backward,
         flops=3 * 2 * 16 * 128 * 128 * 384),
    Case("rotary embedding (32, 4, 96, 32) f32 view, forward + backward", rotary_backward),
    Case("autograd: 10-op graph on (4,), fwd + bwd", overhead_fwd_bwd, min_time=0.2, target=1.2),
    Case("  forward only (graph recorded)", overhead_fwd, min_time=0.2, quick=False),
    Case("  forward only, no grad", overhead_no_grad, min_time=0.2, quick=False),
]

if __name__ == "__main__":
    main("core", CASES, __doc__)
