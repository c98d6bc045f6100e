"""A word-level LSTM language model with truncated backpropagation through time, written as a
plain PyTorch script (in the shape of pytorch/examples' word_language_model with Adam, our own code),
plus a per-sentence evaluation on packed variable-length sequences.

The corpus is bundled; weights come from a NumPy RandomState (copied into the parameters under
no_grad) and dropout is 0, so both libraries run the same computation. Prints
``{"losses": [...], "sentence_loss": ...}`` as its last stdout line.
"""
import json

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

CORPUS = """the detector records a strain signal every second <eos>
a black hole binary emits a chirp before the merger <eos>
the network learns to find the chirp in the noise <eos>
the noise of the detector is not white <eos>
a neutron star binary emits a long chirp <eos>
the signal is weak and the noise is strong <eos>
the network finds the signal before the merger <eos>
""" * 6


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid, self.nlayers = nhid, nlayers

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        return self.decoder(output), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def repackage_hidden(h):
    """Cut the graph between BPTT segments."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    data = data[:nbatch * bsz]
    return data.view(bsz, -1).t().contiguous()


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def init_from_numpy(model, seed):
    rs = np.random.RandomState(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.tensor(rs.uniform(-0.1, 0.1, size=tuple(p.shape)).astype(np.float32)))


def main():
    torch.manual_seed(0)
    words = CORPUS.split()
    vocab = sorted(set(words))
    stoi = {w: i for i, w in enumerate(vocab)}
    data = torch.tensor([stoi[w] for w in words], dtype=torch.long)
    train_data = batchify(data, 4)
    model = RNNModel(len(vocab), 16, 32, 2)
    init_from_numpy(model, seed=0)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    bptt, losses = 8, []
    for epoch in range(6):
        model.train()
        hidden = model.init_hidden(4)
        for i in range(0, train_data.size(0) - 1, bptt):
            data_b, targets = get_batch(train_data, i, bptt)
            hidden = repackage_hidden(hidden)
            optimizer.zero_grad()
            output, hidden = model(data_b, hidden)
            loss = criterion(output.view(-1, len(vocab)), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            optimizer.step()
            losses.append(loss.item())
        print(f"epoch {epoch}: loss {np.mean(losses[-10:]):.4f}")
    # per-sentence loss over variable-length sentences, as one packed batch
    model.eval()
    sentences = [s.split() + ["<eos>"] for s in CORPUS.strip().split(" <eos>\n")[:7]]
    seqs = [torch.tensor([stoi[w] for w in s], dtype=torch.long) for s in sentences]
    with torch.no_grad():
        packed = pack_sequence([model.encoder(s[:-1]) for s in seqs], enforce_sorted=False)
        out, _ = model.rnn(packed)
        padded, lengths = pad_packed_sequence(out, batch_first=True)
        total, count = 0.0, 0
        for b, s in enumerate(seqs):
            n = int(lengths[b])
            logits = model.decoder(padded[b, :n])
            total += nn.functional.cross_entropy(logits, s[1:], reduction="sum").item()
            count += n
    print(f"per-word loss over {len(seqs)} packed sentences: {total / count:.4f}")
    print(json.dumps({"losses": losses, "sentence_loss": total / count}))


if __name__ == "__main__":
    main()
