"""Handwritten digits with an MLP: scikit-learn's bundled 8x8 digits (no download), or MNIST
IDX files when given a path.

    python examples/digits_mlp.py                  # sklearn digits, reaches >= 97% test accuracy
    python examples/digits_mlp.py --mnist DIR      # DIR holds train-images-idx3-ubyte[.gz], ...
    python examples/digits_mlp.py --quick          # smoke test
"""
import argparse
import gzip
import os
import struct

import numpy as np

import avila_ml as am
from avila_ml import nn

try:
    from tqdm import tqdm
except ImportError:
    def tqdm(it, **_):
        return it


def read_idx(path):
    """Read an IDX file (the MNIST format): big-endian magic, dims, then uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {arr.size}")
    return arr.reshape(dims)


def _find(directory, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{stem}[.gz] not found in {directory}")


def load_mnist(directory):
    xs = [read_idx(_find(directory, f"{p}-images-idx3-ubyte")) for p in ("train", "t10k")]
    ys = [read_idx(_find(directory, f"{p}-labels-idx1-ubyte")) for p in ("train", "t10k")]
    return (xs[0].reshape(len(xs[0]), -1) / 255.0, ys[0], xs[1].reshape(len(xs[1]), -1) / 255.0, ys[1])


def load_digits(seed=0):
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    x, y = d.data / 16.0, d.target
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_test = len(x) // 5
    te, tr = idx[:n_test], idx[n_test:]
    return x[tr], y[tr], x[te], y[te]


def accuracy(model, x, y):
    model.eval()
    with am.no_grad():
        pred = model(x).argmax(1)
    model.train()
    return float((pred == y).float().mean())


def run(epochs=40, hidden=128, seed=0, mnist=None, log=True):
    """Train and return (model, test accuracy)."""
    am.manual_seed(seed)
    xtr, ytr, xte, yte = load_mnist(mnist) if mnist else load_digits(seed)
    xtr, xte = am.tensor(xtr, dtype=am.float32), am.tensor(xte, dtype=am.float32)
    ytr, yte = am.tensor(ytr, dtype=am.int64), am.tensor(yte, dtype=am.int64)
    model = nn.Sequential(nn.Linear(xtr.shape[1], hidden), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt = am.optim.Adam(model.parameters(), lr=2e-3)
    sched = am.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loader = am.data.DataLoader(am.data.TensorDataset(xtr, ytr), batch_size=64, shuffle=True,
                                generator=am.data.Generator().manual_seed(seed))
    loss_fn = nn.CrossEntropyLoss()
    for epoch in tqdm(range(epochs), desc="training", disable=not log):
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model, accuracy(model, xte, yte)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist", help="directory with MNIST IDX files")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    _, acc = run(epochs=epochs, mnist=args.mnist)
    print(f"test accuracy: {acc:.4f}")
    if not args.quick and not args.mnist:
        assert acc >= 0.97, f"digits MLP reached only {acc:.4f} test accuracy (expected >= 0.97)"
    return acc


if __name__ == "__main__":
    main()
