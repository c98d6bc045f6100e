"""Attention on the CPU: scaled-dot-product attention and a transformer encoder layer training
step, Avila ML vs PyTorch side by side in one process (float32).

Rows (issue 5; target: within 1.5x of PyTorch's time):
- SDPA forward (no grad) and forward + backward at B=4, H=8, E=64, L = S in {512, 2048},
  against ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's CPU flash kernel);
  FLOPs counted as 4 B H L S E forward and 3.5x that for forward + backward;
- the same at L = 2048 with ``is_causal=True``;
- one training step of ``TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=1024,
  dropout=0.1, batch_first=True)`` on a (32, 128, 256) batch: forward, mean-square loss,
  backward, AdamW step, identical initial weights on both sides.
The peak NumPy memory of our SDPA forward + backward at L = 2048 is printed against the size of
one L x L score matrix per (batch, head), to show the blocked path never forms it.

    .venv/bin/python benchmarks/bench_attention.py [--threads N] [--quick]

``--threads N`` pins both sides to N threads (PyTorch's intra-op pool, NumPy's BLAS and our
attention's tile threads); ``--quick`` runs the L = 512 rows only.
"""
from __future__ import annotations

import argparse
import os
import sys

_args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_args.add_argument("--threads", type=int, default=None, help="threads for PyTorch, NumPy's BLAS and our tiles")
_args.add_argument("--quick", action="store_true", help="only the L = 512 rows")
ARGS = _args.parse_args()
if ARGS.threads:  # must precede the NumPy import, which starts the BLAS thread pool
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import os  # noqa: E402
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # PyTorch's spinning OpenMP threads starve the other library on 2 cores
import torch  # noqa: E402

import avila_ml as am  # noqa: E402
from avila_ml.ops import attention as _attention  # noqa: E402
from harness import compare, machine_limits, peak_python_memory, print_table, save_results  # noqa: E402

B, H, E = 4, 8, 64


def sdpa_rows(L: int, causal: bool = False) -> list:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((B, H, L, E), dtype=np.float32) for _ in range(3)]
    q, k, v = (am.tensor(a, requires_grad=True) for a in arrays)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in arrays)
    g, tg = am.ones(B, H, L, E), torch.ones(B, H, L, E)
    fa, ft = am.nn.functional.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention

    def fwd_ours():
        with am.no_grad():
            fa(q, k, v, is_causal=causal)

    def fwd_theirs():
        with torch.no_grad():
            ft(tq, tk, tv, is_causal=causal)

    def train_ours():
        q.grad = k.grad = v.grad = None
        fa(q, k, v, is_causal=causal).backward(g)

    def train_theirs():
        tq.grad = tk.grad = tv.grad = None
        ft(tq, tk, tv, is_causal=causal).backward(tg)

    flops = 4 * B * H * L * L * E / (2 if causal else 1)
    big = L >= 2048
    kw = dict(repeats=3 if big else 7, warmup=1 if big else 2, min_time=0.0 if big else 0.05)
    tag = f"B={B} H={H} L={L} E={E}{' causal' if causal else ''}"
    return [compare(f"sdpa forward {tag}", fwd_ours, fwd_theirs, flops=flops, **kw),
            compare(f"sdpa fwd+bwd {tag}", train_ours, train_theirs, flops=3.5 * flops, **kw)]


def encoder_layer_row() -> dict:
    d_model, nhead, ff, batch, seq = 256, 4, 1024, 32, 128
    torch.manual_seed(0)
    theirs = torch.nn.TransformerEncoderLayer(d_model, nhead, ff, dropout=0.1, batch_first=True)
    ours = am.nn.TransformerEncoderLayer(d_model, nhead, ff, dropout=0.1, batch_first=True)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    ours.train()
    theirs.train()
    x = np.random.default_rng(1).standard_normal((batch, seq, d_model)).astype(np.float32)
    ax, tx = am.tensor(x), torch.tensor(x)
    opt_a = am.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_t = torch.optim.AdamW(theirs.parameters(), lr=1e-4)

    def step_ours():
        opt_a.zero_grad()
        (ours(ax) ** 2).mean().backward()
        opt_a.step()

    def step_theirs():
        opt_t.zero_grad()
        (theirs(tx) ** 2).mean().backward()
        opt_t.step()

    tokens = batch * seq
    params = sum(p.numel() for p in theirs.parameters())
    flops = 6 * tokens * params + 3.5 * 4 * batch * seq * seq * d_model  # dense layers + attention
    return compare(f"TransformerEncoderLayer step d={d_model} h={nhead} T={seq} N={batch}", step_ours, step_theirs,
                   flops=flops, repeats=5, warmup=2)


def memory_note(L: int = 2048) -> str:
    rng = np.random.default_rng(0)
    q, k, v = (am.tensor(rng.standard_normal((B, H, L, E), dtype=np.float32), requires_grad=True) for _ in range(3))

    def run():
        am.nn.functional.scaled_dot_product_attention(q, k, v).backward(am.ones(B, H, L, E))

    peak = peak_python_memory(run)
    scores = B * H * L * L * 4
    return (f"peak NumPy memory of our SDPA fwd+bwd at L={L}: {peak / 2**20:.0f} MiB (inputs and gradients "
            f"included); the B*H*L*L float32 score matrix alone would be {scores / 2**20:.0f} MiB")


def main() -> None:
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
        _attention._NUM_THREADS = ARGS.threads
    limits = machine_limits()
    rows = sdpa_rows(512)
    if not ARGS.quick:
        rows += sdpa_rows(2048)
        rows += sdpa_rows(2048, causal=True)
    rows.append(encoder_layer_row())
    threads = f"{ARGS.threads} thread(s) each" if ARGS.threads else "default threads"
    text = print_table(rows, limits, title=f"Avila ML vs PyTorch: attention on the CPU, float32 ({threads})")
    note = memory_note(512 if ARGS.quick else 2048)
    print(note)
    if not ARGS.quick:
        save_results(text + "\n" + note, "attention_cpu")


if __name__ == "__main__":
    main()
