"""Real programs: one training step of whole models, Avila ML vs PyTorch, each in its own process.

Kernel benchmarks say where time goes; these say what a user sees. Each case is one optimizer
step of a complete model (forward, loss, backward, update) at the batch size its program uses:

* the three example models of ``examples/``: the Conv4d spacetime classifier
  (``conv4d_spacetime.py``), the digits MLP (``digits_mlp.py``) and the character-level GPT
  with rotary positions (``transformer_lm.py``). Avila ML runs the example's own model class;
  the PyTorch twin is written here with the same shapes, layers and optimizer (PyTorch has no
  Conv4d: its twin uses the fastest workaround, the kernel-time offsets stacked into channels
  and one conv3d, with the same causal-in-time / circular-in-space padding; it has no rotary
  self-attention module: the twin applies the same rotate-half rotation before
  ``scaled_dot_product_attention``);
* six classic programs written once against the shared API and run by both libraries as the
  same source (``L`` is the library module, so shapes, layers, optimizer and initialisation
  scheme match by construction): a small GPT (nanoGPT-style, learned positions), the MNIST CNN
  of PyTorch's examples (Adam instead of Adadelta), the MNIST VAE of PyTorch's examples, a
  DCGAN on 32x32 RGB images (one discriminator and one generator update per step, DCGAN's
  N(0, 0.02) initialisation), the word-level LSTM language model of PyTorch's examples
  (truncated BPTT, gradient clipping, SGD) and a residual CNN written with in-place ops (the
  last two are the compatibility programs' word LM and residual CNN at real sizes).

Inputs are random tensors of the real shapes (data loading is benchmarked in bench_data.py).

    python benchmarks/bench_programs.py [--rounds N] [--threads N] [--quick]
"""
from __future__ import annotations

import importlib
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import Case, is_torch, main  # noqa: E402


def _example(name):
    """An example script as a module (its ``main`` does not run on import)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _randn(L, *shape, seed=0):
    return L.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _labels(L, n, classes, seed=1):
    return L.from_numpy(np.random.default_rng(seed).integers(0, classes, n))


def _step(opt, loss_fn):
    def step():
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    return step


# -- examples/conv4d_spacetime.py --------------------------------------------------------------

def _torch_spacetime_net():
    """SpacetimeNet in PyTorch: Conv4d(1->12, stride (1,2,2,2)) -> ReLU -> Conv4d(12->16, stride 2)
    -> ReLU -> global max -> Linear(16->6), causal in time and circular in space (padding 1)."""
    import torch
    import torch.nn.functional as TF

    def pad(x):  # causal in time: 2 frames before; circular in space: 1 on each side
        x = TF.pad(x, (0, 0, 0, 0, 0, 0, 2, 0))
        for dim in (3, 4, 5):
            n = x.shape[dim]
            x = torch.cat([x.narrow(dim, n - 1, 1), x, x.narrow(dim, 0, 1)], dim)
        return x

    def conv4d(x, w, b, stride):  # padded input; kt time offsets stacked into channels, one conv3d
        N, C, T = x.shape[:3]
        O, kt = w.shape[0], w.shape[2]
        st, ss = stride[0], stride[1:]
        To = (T - kt) // st + 1
        xs = torch.stack([x[:, :, k:k + st * (To - 1) + 1:st] for k in range(kt)], 2)  # (N, C, kt, To, X, Y, Z)
        xs = xs.permute(0, 3, 1, 2, 4, 5, 6).reshape(N * To, C * kt, *x.shape[3:])
        y = TF.conv3d(xs, w.reshape(O, C * kt, *w.shape[3:]), b, stride=ss)
        return y.reshape(N, To, O, *y.shape[2:]).transpose(1, 2)

    class SpacetimeNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.empty(12, 1, 3, 3, 3, 3))
            self.b1 = torch.nn.Parameter(torch.empty(12))
            self.w2 = torch.nn.Parameter(torch.empty(16, 12, 3, 3, 3, 3))
            self.b2 = torch.nn.Parameter(torch.empty(16))
            for w, b in ((self.w1, self.b1), (self.w2, self.b2)):  # nn.ConvNd's default initialisation
                torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                bound = 1 / math.sqrt(w[0].numel())
                torch.nn.init.uniform_(b, -bound, bound)
            self.head = torch.nn.Linear(16, 6)

        def forward(self, x):                                          # (N, 1, 8, 12, 12, 12)
            x = TF.relu(conv4d(pad(x), self.w1, self.b1, (1, 2, 2, 2)))  # (N, 12, 8, 6, 6, 6)
            x = TF.relu(conv4d(pad(x), self.w2, self.b2, (2, 2, 2, 2)))  # (N, 16, 4, 3, 3, 3)
            return self.head(x.amax(dim=(2, 3, 4, 5)))                   # (N, 6)

    return SpacetimeNet()


def spacetime_step(L):
    L.manual_seed(0)
    model = _torch_spacetime_net() if is_torch(L) else _example("conv4d_spacetime").SpacetimeNet()
    x, y = _randn(L, 32, 1, 8, 12, 12, 12), _labels(L, 32, 6)
    opt = L.optim.Adam(model.parameters(), lr=3e-3)
    loss = L.nn.CrossEntropyLoss()
    return _step(opt, lambda: loss(model(x), y))


# -- examples/digits_mlp.py --------------------------------------------------------------------

def digits_step(L):
    """The digits example's model and optimizer (same source in both libraries)."""
    L.manual_seed(0)
    nn = L.nn
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    x, y = _randn(L, 64, 64), _labels(L, 64, 10)
    opt = L.optim.Adam(model.parameters(), lr=2e-3)
    loss = nn.CrossEntropyLoss()
    return _step(opt, lambda: loss(model(x), y))


# -- examples/transformer_lm.py ----------------------------------------------------------------

LM = dict(vocab=65, block_size=96, d_model=128, n_layer=3, n_head=4, dropout=0.1, batch=32)


def _torch_char_gpt():
    """CharGPT in PyTorch: embedding -> 3 pre-norm blocks (rotary causal self-attention, GELU
    MLP) -> LayerNorm -> bias-free head."""
    import torch
    import torch.nn.functional as TF
    nn = torch.nn
    d, h = LM["d_model"], LM["n_head"]
    hd = d // h
    inv = 10000.0 ** (-torch.arange(hd // 2, dtype=torch.float64) * 2.0 / hd)
    ang = torch.arange(LM["block_size"], dtype=torch.float64)[:, None] * inv[None]
    cos = torch.cat([ang.cos()] * 2, 1).float()
    sin = torch.cat([ang.sin()] * 2, 1).float()

    def rotate(x):  # rotate-half pairing, as avila_ml.nn.RotaryEmbedding
        T = x.shape[-2]
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return x * cos[:T] + torch.cat([-x2, x1], -1) * sin[:T]

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj = nn.Linear(d, 3 * d)
            self.out_proj = nn.Linear(d, d)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.in_proj(x).view(B, T, 3, h, hd).permute(2, 0, 3, 1, 4)
            o = TF.scaled_dot_product_attention(rotate(q), rotate(k), v, is_causal=True)
            return self.out_proj(o.transpose(1, 2).reshape(B, T, d))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), Attention(), nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d),
                                     nn.Dropout(LM["dropout"]))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class CharGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(LM["vocab"], d)
            self.drop = nn.Dropout(LM["dropout"])
            self.blocks = nn.ModuleList([Block() for _ in range(LM["n_layer"])])
            self.ln_f = nn.LayerNorm(d)
            self.head = nn.Linear(d, LM["vocab"], bias=False)

        def forward(self, idx):
            x = self.drop(self.tok(idx))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

    return CharGPT()


def char_lm_step(L):
    L.manual_seed(0)
    if is_torch(L):
        model = _torch_char_gpt()
    else:
        cfg = {k: LM[k] for k in ("block_size", "d_model", "n_layer", "n_head", "dropout")}
        model = _example("transformer_lm").CharGPT(LM["vocab"], pos="rotary", **cfg)
    model.train()
    rng = np.random.default_rng(0)
    x = L.from_numpy(rng.integers(0, LM["vocab"], (LM["batch"], LM["block_size"])))
    y = L.from_numpy(rng.integers(0, LM["vocab"], (LM["batch"], LM["block_size"])))
    opt = L.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    F = L.nn.functional
    return _step(opt, lambda: F.cross_entropy(model(x).reshape(-1, LM["vocab"]), y.reshape(-1)))


# -- a small GPT (nanoGPT-style), same source for both libraries ----------------------------------

GPT = dict(vocab=512, block=128, d=128, heads=4, layers=4, batch=16)


def gpt_step(L):
    nn, F = L.nn, L.nn.functional
    d, h = GPT["d"], GPT["heads"]

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).reshape(B, T, 3, h, d // h).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, h, T, d/h)
            return self.proj(o.transpose(1, 2).reshape(B, T, d))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), Attention(), nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class Gpt(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(GPT["vocab"], d)
            self.pos = nn.Embedding(GPT["block"], d)
            self.blocks = nn.Sequential(*[Block() for _ in range(GPT["layers"])])
            self.ln_f = nn.LayerNorm(d)
            self.head = nn.Linear(d, GPT["vocab"], bias=False)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(L.arange(idx.shape[1]))
            return self.head(self.ln_f(self.blocks(x)))

    L.manual_seed(0)
    model = Gpt()
    rng = np.random.default_rng(0)
    x = L.from_numpy(rng.integers(0, GPT["vocab"], (GPT["batch"], GPT["block"])))
    y = L.from_numpy(rng.integers(0, GPT["vocab"], (GPT["batch"], GPT["block"])))
    opt = L.optim.AdamW(model.parameters(), lr=3e-4)
    return _step(opt, lambda: F.cross_entropy(model(x).reshape(-1, GPT["vocab"]), y.reshape(-1)))


# -- the MNIST CNN of PyTorch's examples ----------------------------------------------------------

def mnist_cnn_step(L):
    nn = L.nn
    L.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(128, 10))
    x, y = _randn(L, 64, 1, 28, 28), _labels(L, 64, 10)
    opt = L.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.CrossEntropyLoss()
    return _step(opt, lambda: loss(model(x), y))


# -- the MNIST VAE of PyTorch's examples ----------------------------------------------------------

def vae_step(L):
    nn, F = L.nn, L.nn.functional

    class Vae(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.fc1(x))
            mu, logvar = self.fc21(h), self.fc22(h)
            z = mu + L.randn_like(mu) * L.exp(0.5 * logvar)  # reparameterisation
            return L.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

    def loss():
        recon, mu, logvar = model(x)
        kld = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum()
        return F.binary_cross_entropy(recon, x, reduction="sum") + kld

    L.manual_seed(0)
    model = Vae()
    x = L.from_numpy(np.random.default_rng(0).random((128, 784), dtype=np.float32))
    opt = L.optim.Adam(model.parameters(), lr=1e-3)
    return _step(opt, loss)


# -- the word-level LSTM language model of PyTorch's examples (word_language_model) ------------

WORD_LM = dict(vocab=10000, emsize=200, nhid=200, nlayers=2, bptt=35, batch=20, clip=0.25, lr=20.0)


def word_lm_step(L):
    """One truncated-BPTT step of the 2-layer LSTM LM at word_language_model's default sizes and
    a PTB-sized vocabulary: embedding -> LSTM -> linear decoder, cross-entropy, gradient norm
    clipped to 0.25, plain SGD (lr 20), the hidden state carried (detached) between steps."""
    nn, F = L.nn, L.nn.functional
    c = WORD_LM

    class RNNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(c["vocab"], c["emsize"])
            self.rnn = nn.LSTM(c["emsize"], c["nhid"], c["nlayers"])
            self.decoder = nn.Linear(c["nhid"], c["vocab"])

        def forward(self, x, hidden):
            out, hidden = self.rnn(self.encoder(x), hidden)
            return self.decoder(out), hidden

    L.manual_seed(0)
    model = RNNModel()
    rng = np.random.default_rng(0)
    x = L.from_numpy(rng.integers(0, c["vocab"], (c["bptt"], c["batch"])))
    y = L.from_numpy(rng.integers(0, c["vocab"], (c["bptt"], c["batch"])))
    state = {"h": (L.zeros(c["nlayers"], c["batch"], c["nhid"]), L.zeros(c["nlayers"], c["batch"], c["nhid"]))}
    params = list(model.parameters())
    opt = L.optim.SGD(params, lr=c["lr"])

    def step():
        hidden = tuple(h.detach() for h in state["h"])
        opt.zero_grad()
        out, state["h"] = model(x, hidden)
        F.cross_entropy(out.reshape(-1, c["vocab"]), y.reshape(-1)).backward()
        nn.utils.clip_grad_norm_(params, c["clip"])
        opt.step()
    return step


# -- a residual CNN with in-place ops (the compatibility programs' residual_cnn.py, CIFAR-sized) ---

def residual_cnn_step(L):
    """A ResNet-style CNN on 32x32 RGB written with PyTorch's in-place habits (``ReLU(inplace)``,
    ``out += identity``, ``relu_()``, pooled features assigned into a preallocated tensor),
    batch 32, SGD with momentum."""
    nn, F = L.nn, L.nn.functional

    class BasicBlock(nn.Module):
        def __init__(self, ch):
            super().__init__()
            self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(ch)
            self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(ch)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += x
            return out.relu_()

    class Net(nn.Module):
        def __init__(self, width=32, classes=10):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, padding=1)
            self.blocks = nn.Sequential(BasicBlock(width), BasicBlock(width))
            self.fc = nn.Linear(2 * width, classes)
            self.width = width

        def forward(self, x):
            x = self.blocks(F.relu(self.stem(x), inplace=True))
            feats = L.zeros(x.shape[0], 2 * self.width)
            feats[:, :self.width] = x.mean(dim=(2, 3))
            feats[:, self.width:] = x.amax(dim=(2, 3))
            return self.fc(feats)

    L.manual_seed(0)
    model = Net()
    x, y = _randn(L, 32, 3, 32, 32), _labels(L, 32, 10)
    opt = L.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return _step(opt, lambda: F.cross_entropy(model(x), y))


# -- DCGAN, 32x32 RGB --------------------------------------------------------------------------

def dcgan_step(L):
    nn, F = L.nn, L.nn.functional
    nz, ngf, ndf, batch = 100, 64, 64, 32
    gen = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(),       # 4x4
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(),  # 8x8
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(),          # 16x16
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())                                     # 32x32
    disc = nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),                                      # 16x16
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2),      # 8x8
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2),  # 4x4
        nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False), nn.Flatten())                                       # 1
    L.manual_seed(0)
    for m in list(gen.modules()) + list(disc.modules()):  # DCGAN's initialisation
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    real = L.tanh(_randn(L, batch, 3, 32, 32))
    ones, zeros = L.ones(batch, 1), L.zeros(batch, 1)
    opt_d = L.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = L.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = F.binary_cross_entropy_with_logits

    def step():
        fake = gen(L.randn(batch, nz, 1, 1))
        opt_d.zero_grad()
        (bce(disc(real), ones) + bce(disc(fake.detach()), zeros)).backward()
        opt_d.step()
        opt_g.zero_grad()
        bce(disc(fake), ones).backward()
        opt_g.step()
    return step


CASES = [
    Case("examples/conv4d_spacetime.py: SpacetimeNet step, batch 32 of (1,8,12^3)", spacetime_step, min_time=0.0),
    Case("examples/digits_mlp.py: MLP 64-128-128-10 step, batch 64", digits_step),
    Case("examples/transformer_lm.py: char GPT step (3x d128 h4, T96, batch 32)", char_lm_step, min_time=0.0),
    Case("small GPT step (4x d128 h4, T128, vocab 512, batch 16)", gpt_step, min_time=0.0),
    Case("MNIST CNN step (PyTorch example net), batch 64", mnist_cnn_step, min_time=0.0),
    Case("MNIST VAE step (784-400-20), batch 128", vae_step),
    Case("DCGAN step (32x32 RGB, ngf=ndf=64), batch 32", dcgan_step, min_time=0.0, quick=False),
    Case("word LSTM LM step (word_language_model: 2x LSTM 200, bptt 35, batch 20, vocab 10k)", word_lm_step,
         min_time=0.0),
    Case("residual CNN step with in-place ops (2 basic blocks, width 32, 32x32 RGB), batch 32",
         residual_cnn_step, min_time=0.0),
]

if __name__ == "__main__":
    main("programs", CASES, __doc__)
