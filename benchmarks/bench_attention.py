"""Attention on the CPU, float32: Avila ML vs PyTorch, each library in its own process.

Cases (issue 5: within 1.5x of PyTorch's time; issue 17: SDPA forward and forward+backward <= 1.0x):
- SDPA forward (no grad) and forward + backward at B=4, H=8, E=64, L = S in {512, 2048},
  against ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's CPU flash kernel);
  FLOPs counted as 4 B H L S E forward and 3.5x that for forward + backward; the same at
  L = 2048 with ``is_causal=True``. The L = 2048 forward + backward row also reports peak memory
  (ours: NumPy allocations; the B*H*L*L float32 score matrix alone would be 512 MiB);
- SDPA forward + backward at the GPT programs' shapes (bench_programs.py: B=16 H=4 L=128 E=32
  and B=32 H=4 L=96 E=32, causal), where per-call overhead weighs;
- one training step of ``TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=1024,
  dropout=0.1, batch_first=True)`` on a (32, 128, 256) batch: forward, mean-square loss,
  backward, AdamW step (each library's default initialisation, same shapes).

    python benchmarks/bench_attention.py [--rounds N] [--threads N] [--quick]
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Case, main  # noqa: E402

B, H, E = 4, 8, 64


def _qkv(L, n, grad):
    rng = np.random.default_rng(0)
    return [L.tensor(rng.standard_normal((B, H, n, E), dtype=np.float32), requires_grad=grad) for _ in range(3)]


def sdpa_forward(n, causal=False):
    def make(L):
        q, k, v = _qkv(L, n, False)
        f = L.nn.functional.scaled_dot_product_attention

        def run():
            with L.no_grad():
                f(q, k, v, is_causal=causal)
        return run
    return make


def sdpa_train(n, causal=False):
    def make(L):
        q, k, v = _qkv(L, n, True)
        g = L.ones(B, H, n, E)
        f = L.nn.functional.scaled_dot_product_attention

        def run():
            q.grad = k.grad = v.grad = None
            f(q, k, v, is_causal=causal).backward(g)
        return run
    return make


D_MODEL, NHEAD, FF, BATCH, SEQ = 256, 4, 1024, 32, 128


def encoder_step(L):
    L.manual_seed(0)
    layer = L.nn.TransformerEncoderLayer(D_MODEL, NHEAD, FF, dropout=0.1, batch_first=True)
    layer.train()
    x = L.from_numpy(np.random.default_rng(1).standard_normal((BATCH, SEQ, D_MODEL)).astype(np.float32))
    opt = L.optim.AdamW(layer.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        (layer(x) ** 2).mean().backward()
        opt.step()
    return step


def _sdpa_cases(n, causal=False):
    flops = 4 * B * H * n * n * E / (2 if causal else 1)
    tag = f"B={B} H={H} L={n} E={E}{' causal' if causal else ''}"
    big = n >= 2048
    return [Case(f"sdpa forward {tag}", sdpa_forward(n, causal), flops=flops, quick=not big,
                 min_time=0.0 if big else 0.05, target=1.0),
            Case(f"sdpa fwd+bwd {tag}", sdpa_train(n, causal), flops=3.5 * flops, quick=not big,
                 min_time=0.0 if big else 0.05, memory=big and not causal, target=1.0)]


def _gpt_cases():
    """The attention calls of the GPT programs of bench_programs.py (small, causal, per-call
    overhead matters): gpt_step B=16 H=4 T=128 D=32, char_lm_step B=32 H=4 T=96 D=32."""
    cases = []
    for b, h, t, d in ((16, 4, 128, 32), (32, 4, 96, 32)):
        def make(L, b=b, h=h, t=t, d=d):
            rng = np.random.default_rng(0)
            q, k, v = (L.tensor(rng.standard_normal((b, h, t, d), dtype=np.float32), requires_grad=True)
                       for _ in range(3))
            g = L.ones(b, h, t, d)
            f = L.nn.functional.scaled_dot_product_attention

            def run():
                q.grad = k.grad = v.grad = None
                f(q, k, v, is_causal=True).backward(g)
            return run
        cases.append(Case(f"sdpa fwd+bwd B={b} H={h} L={t} E={d} causal (GPT program)", make,
                          flops=3.5 * 4 * b * h * t * t * d / 2, min_time=0.05, target=1.0))
    return cases


_params = 4 * D_MODEL * D_MODEL + 4 * D_MODEL + 2 * D_MODEL * FF + FF + D_MODEL + 4 * D_MODEL
CASES = _sdpa_cases(512) + _sdpa_cases(2048) + _sdpa_cases(2048, causal=True) + _gpt_cases() + [
    Case(f"TransformerEncoderLayer step d={D_MODEL} h={NHEAD} T={SEQ} N={BATCH}", encoder_step,
         flops=6 * BATCH * SEQ * _params + 3.5 * 4 * BATCH * SEQ * SEQ * D_MODEL, target=1.5),
]

if __name__ == "__main__":
    main("attention", CASES, __doc__)
