"""Linear regression with autograd and SGD: recover known weights from noisy data.

Run: python examples/linear_regression.py [--quick]
"""
import argparse

import avila_ml as am
from avila_ml import nn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="few steps (smoke test)")
    args = p.parse_args(argv)
    am.manual_seed(0)

    true_w = am.tensor([[2.0], [-3.4], [1.7]])
    true_b = 4.2
    x = am.randn(1000, 3)
    y = x @ true_w + true_b + 0.01 * am.randn(1000, 1)

    model = nn.Linear(3, 1)
    opt = am.optim.SGD(model.parameters(), lr=0.1)
    steps = 20 if args.quick else 200
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step:4d}  loss {loss.item():.6f}")
    w = model.weight.detach().numpy().ravel()
    b = model.bias.item()
    print(f"learned w = {w.round(3)}, b = {b:.3f} (true w = [2, -3.4, 1.7], b = 4.2)")
    if not args.quick:
        err = float(abs(model.weight.detach() - true_w.T).max())
        assert err < 0.01 and abs(b - true_b) < 0.01, f"did not recover the weights (max error {err})"
    return loss.item()


if __name__ == "__main__":
    main()
