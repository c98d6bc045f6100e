"""LBFGS against torch.optim.LBFGS: float64 trajectories with and without the strong-Wolfe line
search, the stopping rules (same closure-evaluation counts), state round trips and errors."""
import copy

import numpy as np
import pytest
import torch

import avila_ml as am

RTOL = 1e-10


def _problem(seed=0):
    """The 4-8-2 tanh MLP regression of test_optim, float64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 4))
    y = rng.standard_normal((16, 2))
    init = [rng.standard_normal((4, 8)) * 0.5, rng.standard_normal(8) * 0.1,
            rng.standard_normal((8, 2)) * 0.5, rng.standard_normal(2) * 0.1]
    return x, y, init


class _Run:
    def __init__(self, lib, kwargs, init, x, y):
        self.lib = lib
        t = (lambda a: torch.tensor(a, requires_grad=True)) if lib is torch else \
            (lambda a: am.tensor(a, dtype=am.float64, requires_grad=True))
        self.params = [t(a) for a in init]
        self.x, self.y = lib.tensor(x), lib.tensor(y)
        self.opt = lib.optim.LBFGS(self.params, **kwargs)
        self.evals = 0
        self.losses = []

    def closure(self):
        self.evals += 1
        self.opt.zero_grad()
        w1, b1, w2, b2 = self.params
        loss = (((self.x @ w1 + b1).tanh() @ w2 + b2 - self.y) ** 2).mean()
        loss.backward()
        return loss

    def run(self, steps):
        for _ in range(steps):
            self.losses.append(float(self.opt.step(self.closure).detach()))

    def arrays(self):
        return [p.detach().numpy() for p in self.params]


# (kwargs, outer steps). Quasi-Newton iterations on this non-convex problem amplify rounding:
# the step counts are chosen so that 1-ulp noise in torch's own initial weights moves its result
# by < RTOL/100 (test_configurations_are_well_conditioned); each step is up to max_iter iterations.
CONFIGS = [
    (dict(lr=0.5), 1),
    (dict(lr=1, line_search_fn="strong_wolfe"), 1),
    (dict(lr=1, line_search_fn="strong_wolfe", history_size=3, max_iter=7), 5),
    (dict(lr=0.2, history_size=2, max_iter=10, tolerance_grad=1e-5, tolerance_change=1e-7), 4),
    (dict(line_search_fn="strong_wolfe", max_eval=9), 3),
    (dict(lr=0.8, line_search_fn="strong_wolfe", tolerance_change=1e-4, history_size=5), 1),
]


def _assert_close(ours, theirs):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        err = np.max(np.abs(a - b)) / np.max(np.abs(b))
        assert err <= RTOL, f"parameter {i}: relative error {err:.3e}"


IDS = [",".join(f"{k}={v}" for k, v in c.items()) for c, _ in CONFIGS]


@pytest.mark.parametrize("kwargs,steps", CONFIGS, ids=IDS)
def test_configurations_are_well_conditioned(kwargs, steps):
    x, y, init = _problem()
    rng = np.random.default_rng(0)
    noisy = [a * (1 + 1.1e-16 * rng.standard_normal(a.shape)) for a in init]
    clean, perturbed = _Run(torch, kwargs, init, x, y), _Run(torch, kwargs, noisy, x, y)
    clean.run(steps)
    perturbed.run(steps)
    gap = max(np.max(np.abs(a - b)) / np.max(np.abs(b)) for a, b in zip(perturbed.arrays(), clean.arrays()))
    assert gap < RTOL / 100, f"rounding noise grows to {gap:.2e}"


@pytest.mark.parametrize("kwargs,steps", CONFIGS, ids=IDS)
def test_lbfgs_trajectory_matches_torch(kwargs, steps):
    x, y, init = _problem()
    ours, theirs = _Run(am, kwargs, init, x, y), _Run(torch, kwargs, init, x, y)
    ours.run(steps)
    theirs.run(steps)
    _assert_close(ours.arrays(), theirs.arrays())
    np.testing.assert_allclose(ours.losses, theirs.losses, rtol=RTOL)
    assert ours.evals == theirs.evals  # the same stopping decisions
    so, st = ours.opt.state[ours.params[0]], theirs.opt.state[theirs.params[0]]
    assert so["func_evals"] == st["func_evals"] and so["n_iter"] == st["n_iter"]
    assert len(so["old_dirs"]) == len(st["old_dirs"])
    assert theirs.losses[-1] < 0.5 * theirs.losses[0] or theirs.evals >= 10  # it optimised: not vacuous


def test_lbfgs_state_dict_round_trip():
    kwargs = dict(lr=1, line_search_fn="strong_wolfe", history_size=4, max_iter=6)
    x, y, init = _problem(1)
    first = _Run(am, kwargs, init, x, y)
    first.run(2)
    sd = copy.deepcopy(first.opt.state_dict())
    resumed = _Run(am, kwargs, first.arrays(), x, y)
    resumed.opt.load_state_dict(sd)
    resumed.run(3)
    theirs = _Run(torch, kwargs, init, x, y)
    theirs.run(5)
    _assert_close(resumed.arrays(), theirs.arrays())


def test_lbfgs_converges_on_a_quadratic_like_torch():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 6))
    h = a @ a.T + 6 * np.eye(6)
    b = rng.standard_normal(6)
    results = []
    for lib in (am, torch):
        w = lib.tensor(np.zeros(6), requires_grad=True) if lib is torch else \
            am.tensor(np.zeros(6), dtype=am.float64, requires_grad=True)
        H, B = lib.tensor(h), lib.tensor(b)
        opt = lib.optim.LBFGS([w], line_search_fn="strong_wolfe", max_iter=100, tolerance_grad=1e-12,
                              tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            loss = 0.5 * (w @ (H @ w)) - B @ w
            loss.backward()
            return loss

        opt.step(closure)
        results.append(w.detach().numpy().copy())
    # the stopping rules (loss change < 1e-14 on a loss of ~0.1) end it ~1e-8 from the optimum
    np.testing.assert_allclose(results[0], np.linalg.solve(h, b), atol=1e-7)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-10)


def test_lbfgs_errors():
    a = am.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="parameter groups"):
        am.optim.LBFGS([{"params": [a]}, {"params": [am.zeros(1, requires_grad=True)]}])
    with pytest.raises(ValueError, match="line_search_fn"):
        am.optim.LBFGS([a], line_search_fn="armijo")
    with pytest.raises(ValueError, match="history_size=0"):
        am.optim.LBFGS([a], history_size=0)
    with pytest.raises(RuntimeError, match="requires a closure"):
        am.optim.LBFGS([a]).step()
    opt = am.optim.LBFGS([a])
    with pytest.raises(ValueError, match="parameter groups"):
        opt.add_param_group({"params": [am.zeros(1, requires_grad=True)]})


def test_lbfgs_stops_at_a_stationary_point():
    """max |g| <= tolerance_grad on the first evaluation: one evaluation, parameters untouched."""
    w = am.tensor([1.0, 2.0], dtype=am.float64, requires_grad=True)
    opt = am.optim.LBFGS([w])
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = (w * 0).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert len(calls) == 1 and w.tolist() == [1.0, 2.0]
