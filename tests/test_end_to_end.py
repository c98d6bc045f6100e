"""End-to-end training checks (issue 3): XOR, digits accuracy, determinism, resume."""
import os
import sys

import numpy as np

import avila_ml as am
from avila_ml import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))


def _xor_model_and_data():
    x = am.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = am.tensor([0, 1, 1, 0])
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    return model, x, y


def _train_xor(seed, steps=300):
    am.manual_seed(seed)
    model, x, y = _xor_model_and_data()
    opt = am.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, x, y, loss.item()


def test_xor_is_solved():
    model, x, y, loss = _train_xor(0)
    assert loss < 0.05
    assert (model(x).argmax(1) == y).all()


def test_same_seed_gives_bit_identical_weights():
    a = _train_xor(3, steps=50)[0].state_dict()
    b = _train_xor(3, steps=50)[0].state_dict()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k


def test_digits_mlp_reaches_97_percent():
    import digits_mlp
    _, acc = digits_mlp.run(epochs=40, log=False)
    assert acc >= 0.97, acc


def test_resume_from_checkpoint_matches_uninterrupted_run():
    import custom_training_loop
    custom_training_loop.main(["--quick"])  # asserts bit-for-bit equality itself
