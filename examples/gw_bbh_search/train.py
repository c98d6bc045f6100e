"""Train the Gabbard/Schafer CNN on the windows written by ``generate.py``.

Every epoch pairs each stored noise window twice: once alone (label 0, noise) and once with a
stored unit-SNR signal added at an optimal SNR drawn uniformly from the epoch's range (label 1),
the signal and SNR drawn from ``(seed, epoch, index)``, so every epoch sees new combinations and
a run is the same whatever the number of loader workers. Windows are read from the HDF5 file
a batch at a time (``Dataset.__getitems__``), never loaded whole.

SNR curriculum (``--curriculum``, "epoch:lo-hi,..."): Schafer et al. (2021) find that training
on low SNRs early converges fastest and generalises upward; the default starts one epoch at
8-20 so the first steps see clear chirps, then trains at their final range, 5-15.

Loss: cross-entropy on the two logits; Adam. After each epoch: validation loss and accuracy
(noise windows, and signals at SNR 8 and 12), a checkpoint (model, optimizer, epoch, config;
``am.save``) and, when the validation loss improved, ``best.pt``. ``--resume`` continues from
the last checkpoint.

    python examples/gw_bbh_search/train.py --data gw_data.h5 --out run/
    python examples/gw_bbh_search/train.py --data quick.h5 --out quick_run/ --quick
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import avila_ml as am
from avila_ml import nn
from avila_ml.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from network import GabbardNet, window_stats  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    def tqdm(it, **_):
        return it


class WindowPairs(Dataset):
    """Training windows: item ``2k`` is noise window ``k`` (label 0), item ``2k + 1`` the same
    noise plus a random stored signal at a random SNR in ``snr_range`` (label 1).

    The HDF5 file is opened lazily in the reading process (h5py handles must not cross a fork).
    """

    def __init__(self, path: str, split: str, snr_range, seed: int):
        import h5py
        self.path, self.split, self.snr_range, self.seed, self.epoch = path, split, tuple(snr_range), seed, 0
        with h5py.File(path, "r") as f:
            self.n_noise = f[f"{split}/noise"].shape[0]
            self.n_signals = f[f"{split}/signals"].shape[0]
        self._file, self._pid = None, None

    def __len__(self):
        return 2 * self.n_noise

    def _h5(self):
        if self._file is None or self._pid != os.getpid():
            import h5py
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getitems__(self, indices):
        idx = np.asarray(indices)
        f = self._h5()
        k = idx // 2
        order = np.argsort(k)
        uk, inv = np.unique(k[order], return_inverse=True)   # h5py wants sorted unique indices
        noise = f[f"{self.split}/noise"][uk][inv][np.argsort(order)]
        is_sig = idx % 2 == 1
        x = noise.astype(np.float32)
        if is_sig.any():
            rngs = [np.random.default_rng((self.seed, self.epoch, int(i))) for i in idx[is_sig]]
            j = np.array([r.integers(self.n_signals) for r in rngs])
            snr = np.array([r.uniform(*self.snr_range) for r in rngs], np.float32)
            oj = np.argsort(j)
            uj, invj = np.unique(j[oj], return_inverse=True)
            sig = f[f"{self.split}/signals"][uj][invj][np.argsort(oj)]
            x[is_sig] += snr[:, None] * sig
        return [(x[i][None, :], int(is_sig[i])) for i in range(len(idx))]

    def __getitem__(self, i):
        return self.__getitems__([i])[0]


def parse_curriculum(text: str):
    """"0:8-20,1:5-15" -> [(0, (8.0, 20.0)), (1, (5.0, 15.0))], sorted by epoch."""
    out = []
    for part in text.split(","):
        e, rng = part.split(":")
        lo, hi = rng.split("-")
        out.append((int(e), (float(lo), float(hi))))
    return sorted(out)


def snr_range_at(curriculum, epoch: int):
    """The SNR range of the last curriculum entry that starts at or before ``epoch``."""
    return [r for e, r in curriculum if e <= epoch][-1]


def validate(net, path: str, device: str, seed: int = 7):
    """Validation loss (noise + SNR-8 signals) and accuracy of noise, SNR-8 and SNR-12 windows."""
    import h5py
    with h5py.File(path, "r") as f:
        noise = f["val/noise"][...]
        sig = f["val/signals"][...]
    rng = np.random.default_rng(seed)
    pair = rng.permutation(len(noise))[:len(sig)]
    s0 = window_stats(net, noise, device=device)
    s8 = window_stats(net, noise[pair] + 8 * sig, device=device)
    s12 = window_stats(net, noise[pair] + 12 * sig, device=device)
    # cross-entropy of 2 logits with difference s: log(1 + exp(-s)) for label 1, log(1 + exp(s)) for 0
    loss = 0.5 * (np.logaddexp(0, s0).mean() + np.logaddexp(0, -s8).mean())
    return dict(loss=float(loss), acc_noise=float((s0 < 0).mean()), acc_snr8=float((s8 > 0).mean()),
                acc_snr12=float((s12 > 0).mean()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="gw_data.h5")
    ap.add_argument("--out", default="gw_run")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--curriculum", help='SNR ranges per epoch, e.g. "0:8-20,1:5-15"')
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if am.cuda.is_available() else "cpu")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--quick", action="store_true", help="smoke-test size")
    args = ap.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 3)
    curriculum = parse_curriculum(args.curriculum or ("0:10-25,1:8-20" if args.quick else "0:8-20,1:5-15"))
    os.makedirs(args.out, exist_ok=True)

    am.manual_seed(args.seed)
    net = GabbardNet().to(args.device)
    opt = am.optim.Adam(net.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    ckpt_path, best_path = os.path.join(args.out, "checkpoint.pt"), os.path.join(args.out, "best.pt")
    start, best, history = 0, np.inf, []
    if args.resume and os.path.exists(ckpt_path):
        ck = am.load(ckpt_path)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, best, history = ck["epoch"] + 1, ck["best_val_loss"], json.loads(ck["history"])
        print(f"resumed from {ckpt_path} at epoch {start}")

    data = WindowPairs(args.data, "train", snr_range_at(curriculum, start), args.seed)
    config = dict(vars(args), epochs=epochs, curriculum=curriculum, n_train=len(data))
    t0 = time.time()
    for epoch in range(start, epochs):
        data.epoch, data.snr_range = epoch, snr_range_at(curriculum, epoch)
        loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                            seed=args.seed * 1000 + epoch)
        net.train()
        total, n = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch} snr {data.snr_range[0]:g}-{data.snr_range[1]:g}", leave=False)
        for x, y in bar:
            x, y = x.to(args.device), y.to(args.device)
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.item()) * len(y), n + len(y)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
        val = validate(net, args.data, args.device)
        history.append(dict(epoch=epoch, train_loss=total / max(n, 1), snr_range=list(data.snr_range),
                            seconds=time.time() - t0, **val))
        print(f"epoch {epoch}: train loss {total / max(n, 1):.4f}  val loss {val['loss']:.4f}  "
              f"acc noise {val['acc_noise']:.3f} snr8 {val['acc_snr8']:.3f} snr12 {val['acc_snr12']:.3f}  "
              f"({time.time() - t0:.0f} s)", flush=True)
        state = dict(model=net.state_dict(), optimizer=opt.state_dict(), epoch=epoch,
                     best_val_loss=min(best, val["loss"]), history=json.dumps(history),
                     config=json.dumps(config, default=str))
        if val["loss"] < best:
            best = val["loss"]
            am.save(state, best_path)
        am.save(state, ckpt_path)
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump(dict(config=config, history=history), f, indent=1, default=str)
    print(f"trained {epochs - start} epochs in {time.time() - t0:.0f} s; best val loss {best:.4f} -> {best_path}")


if __name__ == "__main__":
    main()
