"""A hand-written training loop: LR schedule, gradient clipping, checkpoint, and resume.

Trains a small MLP on a synthetic regression task for a few epochs, saves a checkpoint
(model, optimizer, scheduler, epoch) with `am.save`, then resumes from it in a fresh model
and checks that the resumed run ends with exactly the same weights as an uninterrupted run.

Run: python examples/custom_training_loop.py [--quick]
"""
import argparse
import os
import tempfile

import numpy as np

import avila_ml as am
from avila_ml import nn

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    def tqdm(it, **_):
        return it


def make_data(n=512):
    am.manual_seed(1)
    x = am.rand(n, 4) * 4 - 2
    y = (x[:, :1].sin() * x[:, 1:2] + 0.5 * x[:, 2:3] ** 2 - x[:, 3:4]).detach()
    return x, y


def make_model():
    return nn.Sequential(nn.Linear(4, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))


def train(model, opt, sched, loader, epochs, start_epoch=0, log=True):
    for epoch in range(start_epoch, epochs):
        total = 0.0
        for xb, yb in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not log):
            loss = nn.functional.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            opt.step()
            total += loss.item() * len(xb)
        sched.step()
        if log:
            print(f"epoch {epoch}: loss {total / len(loader.dataset):.5f}, lr {sched.get_last_lr()[0]:.5f}")


def setup(seed=0):
    am.manual_seed(seed)
    x, y = make_data()
    model = make_model()
    opt = am.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = am.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    loader = am.data.DataLoader(am.data.TensorDataset(x, y), batch_size=64, shuffle=True,
                                generator=am.data.Generator().manual_seed(seed))
    return model, opt, sched, loader


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    epochs, half = (4, 2) if args.quick else (10, 5)

    # uninterrupted reference run
    model, opt, sched, loader = setup()
    train(model, opt, sched, loader, epochs, log=not args.quick)
    reference = {k: v.numpy().copy() for k, v in model.state_dict().items()}

    # interrupted run: train half, checkpoint, rebuild everything, resume
    model, opt, sched, loader = setup()
    train(model, opt, sched, loader, half, log=False)
    path = os.path.join(tempfile.mkdtemp(), "checkpoint.safetensors")
    am.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "epoch": half}, path)
    ckpt = am.load(path)
    model, opt, sched, loader = setup()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    # the shuffling generator must continue where it stopped: replay the finished epochs'
    # shuffles (iterating the loader draws exactly what those epochs drew)
    for _ in range(ckpt["epoch"]):
        for _batch in loader:
            pass
    train(model, opt, sched, loader, epochs, start_epoch=ckpt["epoch"], log=False)
    resumed = {k: v.numpy() for k, v in model.state_dict().items()}
    same = all(np.array_equal(reference[k], resumed[k]) for k in reference)
    print(f"checkpoint: {path}")
    print(f"resumed run equals uninterrupted run bit for bit: {same}")
    assert same, "resume from checkpoint diverged from the uninterrupted run"


if __name__ == "__main__":
    main()
