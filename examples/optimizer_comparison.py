"""Train one model with each optimizer and plot the loss curves to a PNG.

    python examples/optimizer_comparison.py [--quick] [--out examples/output/optimizers.png]
"""
import argparse
import os

import avila_ml as am
from avila_ml import nn

try:
    from tqdm import tqdm
except ImportError:
    def tqdm(it, **_):
        return it

OPTIMIZERS = {
    "SGD": lambda p: am.optim.SGD(p, lr=0.05),
    "SGD+momentum": lambda p: am.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "Adam": lambda p: am.optim.Adam(p, lr=3e-3),
    "AdamW": lambda p: am.optim.AdamW(p, lr=3e-3, weight_decay=1e-2),
    "RMSprop": lambda p: am.optim.RMSprop(p, lr=1e-3),
    "Adagrad": lambda p: am.optim.Adagrad(p, lr=5e-2),
    "NAdam": lambda p: am.optim.NAdam(p, lr=3e-3),
    "RAdam": lambda p: am.optim.RAdam(p, lr=3e-3),
    "Adamax": lambda p: am.optim.Adamax(p, lr=5e-3),
    "Adadelta": lambda p: am.optim.Adadelta(p, lr=1.0),
}


def curves(steps):
    am.manual_seed(0)
    x = am.rand(512, 2) * 6 - 3
    y = ((x[:, 0] ** 2 + x[:, 1] ** 2) < 4).long()  # inside / outside a circle
    out = {}
    for name, make in tqdm(OPTIMIZERS.items(), desc="optimizers"):
        am.manual_seed(1)  # the same initial weights for every optimizer
        model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
        opt = make(model.parameters())
        losses = []
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        out[name] = losses
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "output", "optimizers.png"))
    args = p.parse_args(argv)
    results = curves(20 if args.quick else 300)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, losses in results.items():
        ax.plot(losses, label=name)
        print(f"{name:14s} final loss {losses[-1]:.4f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Avila ML optimizers on a 2-D classification task")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"saved {args.out}")
    return results


if __name__ == "__main__":
    main()
