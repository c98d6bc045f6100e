"""MLP 784-256-256-10 (ReLU) training step at batch 128, float32: Avila ML vs PyTorch.

One step = forward, cross-entropy, backward, SGD update (momentum 0.9). Target (issue 3):
within 1.5x of PyTorch's time. The parts are timed too, so a regression shows where it comes
from: forward only (no grad), cross-entropy forward + backward on (128, 10) logits, and
batch/layer norm forward + backward, max pooling, and one LSTM layer (word-LM and bigger
sizes) forward and forward + backward. Every case is one source for both libraries (``L`` is
``avila_ml`` or ``torch``), each timed in its own process (see ``harness.py``).

    python benchmarks/bench_mlp.py [--rounds N] [--threads N] [--quick]
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Case, main  # noqa: E402

BATCH, SIZES = 128, (784, 256, 256, 10)


def _mlp(L):
    nn = L.nn
    return nn.Sequential(nn.Linear(SIZES[0], SIZES[1]), nn.ReLU(), nn.Linear(SIZES[1], SIZES[2]), nn.ReLU(),
                         nn.Linear(SIZES[2], SIZES[3]))


def _batch(L):
    rng = np.random.default_rng(0)
    x = L.from_numpy(rng.standard_normal((BATCH, SIZES[0])).astype(np.float32))
    y = L.from_numpy(rng.integers(0, SIZES[-1], BATCH))
    return x, y


def train_step(L):
    L.manual_seed(0)
    model, (x, y) = _mlp(L), _batch(L)
    opt = L.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = L.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def forward_only(L):
    L.manual_seed(0)
    model, (x, _) = _mlp(L), _batch(L)

    def fwd():
        with L.no_grad():
            model(x)
    return fwd


def cross_entropy(L):
    rng = np.random.default_rng(1)
    logits = L.tensor(rng.standard_normal((BATCH, SIZES[-1])).astype(np.float32), requires_grad=True)
    _, y = _batch(L)
    return lambda: L.nn.functional.cross_entropy(logits, y).backward()


def _norm_case(kind, shape):
    def make(L):
        rng = np.random.default_rng(2)
        c = shape[1] if kind == "batch" else shape[-1]
        x = L.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
        g = L.from_numpy(rng.standard_normal(shape).astype(np.float32))
        w, b = L.ones(c, requires_grad=True), L.zeros(c, requires_grad=True)
        F = L.nn.functional

        def step():
            x.grad = w.grad = b.grad = None
            y = F.batch_norm(x, None, None, w, b, True) if kind == "batch" else F.layer_norm(x, (c,), w, b)
            y.backward(g)
        return step
    return make


def _max_pool_case(shape, kernel, stride, padding=0):
    def make(L):
        rng = np.random.default_rng(3)
        x = L.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
        F = L.nn.functional
        o = [(n + 2 * padding - kernel) // stride + 1 for n in shape[2:]]
        g = L.from_numpy(rng.standard_normal(shape[:2] + tuple(o)).astype(np.float32))

        def step():
            x.grad = None
            F.max_pool2d(x, kernel, stride, padding).backward(g)
        return step
    return make


def _lstm_case(T, N, n_in, hidden, backward, layer="LSTM"):
    """One nn.LSTM (or nn.GRU) layer (float32, time-major) on a (T, N, n_in) batch: forward
    without grad, or forward + backward of the output with a fixed upstream gradient."""
    def make(L):
        rng = np.random.default_rng(4)
        L.manual_seed(0)
        m = getattr(L.nn, layer)(n_in, hidden)
        x = L.tensor(rng.standard_normal((T, N, n_in)).astype(np.float32), requires_grad=backward)
        g = L.from_numpy(rng.standard_normal((T, N, hidden)).astype(np.float32))

        if not backward:
            def fwd():
                with L.no_grad():
                    m(x)
            return fwd

        def step():
            x.grad = None
            m.zero_grad()
            m(x)[0].backward(g)
        return step
    return make


def _lstm_flops(T, N, n_in, hidden, backward, gates=4):
    """Matmul FLOPs of the layer: x W_ihᵀ and h W_hhᵀ over T steps (x3 with the backward:
    input and weight gradients)."""
    fwd = 2 * T * N * gates * hidden * (n_in + hidden)
    return 3 * fwd if backward else fwd


def step_flops() -> float:
    """Matmul FLOPs of one step: forward, weight gradients, input gradients of layers 2-3."""
    fwd = sum(2 * BATCH * a * b for a, b in zip(SIZES[:-1], SIZES[1:]))
    dx = sum(2 * BATCH * a * b for a, b in zip(SIZES[1:-1], SIZES[2:]))
    return 2 * fwd + dx


CASES = [
    Case(f"MLP {'-'.join(map(str, SIZES))} train step, batch {BATCH}", train_step, flops=step_flops(), target=1.5),
    Case(f"  forward only (no_grad), batch {BATCH}", forward_only,
         flops=sum(2 * BATCH * a * b for a, b in zip(SIZES[:-1], SIZES[1:]))),
    Case(f"  cross_entropy fwd+bwd ({BATCH}, {SIZES[-1]})", cross_entropy),
    Case("  batch_norm fwd+bwd (32, 16, 32, 32)", _norm_case("batch", (32, 16, 32, 32)),
         nbytes=5 * 4 * 32 * 16 * 32 * 32, quick=False),
    Case("  batch_norm fwd+bwd (32, 32, 32, 32) (residual CNN)", _norm_case("batch", (32, 32, 32, 32)),
         nbytes=5 * 4 * 32 * 32 * 32 * 32, quick=False),
    Case("  batch_norm fwd+bwd (32, 128, 8, 8) (DCGAN)", _norm_case("batch", (32, 128, 8, 8)),
         nbytes=5 * 4 * 32 * 128 * 8 * 8, quick=False),
    Case("  batch_norm fwd+bwd (32, 256, 4, 4) (DCGAN G first, D last)", _norm_case("batch", (32, 256, 4, 4)),
         nbytes=5 * 4 * 32 * 256 * 4 * 4, quick=False),
    Case("  layer_norm fwd+bwd (256, 512)", _norm_case("layer", (256, 512)), nbytes=5 * 4 * 256 * 512, quick=False),
    Case("  layer_norm fwd+bwd (16, 128, 128) (small GPT)", _norm_case("layer", (16, 128, 128)),
         nbytes=5 * 4 * 16 * 128 * 128, quick=False),
    Case("  max_pool2d k2 fwd+bwd (64, 64, 24, 24)", _max_pool_case((64, 64, 24, 24), 2, 2),
         nbytes=(2 + 2 * 0.25) * 4 * 64 * 64 * 24 * 24),
    Case("  max_pool2d k2 fwd+bwd (64, 32, 26, 26)", _max_pool_case((64, 32, 26, 26), 2, 2),
         nbytes=(2 + 2 * 0.25) * 4 * 64 * 32 * 26 * 26, quick=False),
    Case("  max_pool2d k3 s2 p1 fwd+bwd (32, 64, 32, 32)", _max_pool_case((32, 64, 32, 32), 3, 2, 1),
         nbytes=(2 + 2 * 0.25) * 4 * 32 * 64 * 32 * 32, quick=False),
]
# issue 17: one LSTM layer at the word LM's sizes (bench_programs.py word_lm_step) and a bigger one;
# on the CPU both libraries run it as one oneDNN call per layer (avila_ml/cpu_accel/_rnn.py)
for _T, _N, _I, _H, _quick in ((35, 20, 200, 200, True), (100, 64, 512, 512, False)):
    CASES += [Case(f"  LSTM {_I}->{_H} T={_T} N={_N} forward (no_grad)", _lstm_case(_T, _N, _I, _H, False),
                   flops=_lstm_flops(_T, _N, _I, _H, False), quick=_quick),
              Case(f"  LSTM {_I}->{_H} T={_T} N={_N} fwd+bwd", _lstm_case(_T, _N, _I, _H, True),
                   flops=_lstm_flops(_T, _N, _I, _H, True), quick=_quick)]
CASES.append(Case("  GRU 200->200 T=35 N=20 fwd+bwd", _lstm_case(35, 20, 200, 200, True, "GRU"),
                  flops=_lstm_flops(35, 20, 200, 200, True, gates=3), quick=False))

if __name__ == "__main__":
    main("mlp", CASES, __doc__)
