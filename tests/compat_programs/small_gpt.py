"""A small character-level GPT: a few training steps, then greedy generation. Written as a plain
PyTorch script (in the spirit of nanoGPT's model.py, our own code).

Data (a bundled paragraph) and initial weights come from a NumPy RandomState so that both
libraries start from the same point; dropout is 0 and generation is greedy (argmax), so the run
is deterministic whichever library executes it. Prints ``{"losses": [...]}`` as its last line.
"""
import json
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TEXT = (
    "Gravitational waves are ripples in spacetime produced by accelerating masses. "
    "Two black holes in orbit lose energy to these waves, spiral inwards and merge. "
    "Detectors measure the tiny stretching of space as a wave passes, and networks "
    "learn to tell a chirp from the noise of the instrument. "
) * 4


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        assert n_embd % n_head == 0
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head = n_head
        self.n_embd = n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer=2, n_head=2, n_embd=32):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.block_size else idx[:, -self.block_size:]
            logits, _ = self(idx_cond)
            next_id = torch.argmax(logits[:, -1, :], dim=-1, keepdim=True)
            idx = torch.cat((idx, next_id), dim=1)
        return idx


def init_from_numpy(model, seed):
    """GPT-2's init (N(0, 0.02), scaled residual projections), drawn by NumPy."""
    rs = np.random.RandomState(seed)
    n_layer = len(model.h)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                value = np.ones(p.shape) if name.endswith("weight") else np.zeros(p.shape)
            elif name.endswith("bias"):
                value = np.zeros(p.shape)
            else:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                value = rs.normal(0.0, std, size=tuple(p.shape))
            p.copy_(torch.tensor(value.astype(np.float32)))


def main():
    torch.manual_seed(0)
    chars = sorted(set(TEXT))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in TEXT], dtype=torch.long)
    block_size, batch_size = 16, 8
    model = GPT(len(chars), block_size)
    init_from_numpy(model, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    rs = np.random.RandomState(1)
    losses = []
    model.train()
    for step in range(30):
        ix = rs.randint(0, len(data) - block_size - 1, size=batch_size)
        x = torch.stack([data[i:i + block_size] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f}")
    model.eval()
    prompt = torch.tensor([[stoi[c] for c in "Two black "]], dtype=torch.long)
    out = model.generate(prompt, max_new_tokens=20)
    print("generated:", repr("".join(chars[int(i)] for i in out[0].tolist())))
    print(json.dumps({"losses": losses}))


if __name__ == "__main__":
    main()
