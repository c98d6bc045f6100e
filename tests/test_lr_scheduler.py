"""LR schedulers: the learning-rate (and momentum) sequences against torch.optim.lr_scheduler,
resuming from state dicts, and argument validation."""
import copy
import json
import warnings

import numpy as np
import pytest
import torch

import avila_ml as am

STEPS = 100
LRS = [0.1, 0.05]  # two param groups with different learning rates


def _optimizer(lib, kind, device):
    """An optimizer of `lib` (am or torch) with two param groups."""
    if lib is am:
        params = [am.zeros(2, device=device, requires_grad=True) for _ in LRS]
    else:
        params = [torch.zeros(2, requires_grad=True) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]
    if kind == "sgd":
        return lib.optim.SGD(groups, lr=0.1, momentum=0.9)
    if kind == "adam":
        return lib.optim.Adam(groups, lr=0.1)
    return lib.optim.RMSprop(groups, lr=0.1)


# name -> (optimizer kind, factory(S, opt) with S = the lr_scheduler module)
SCHEDULERS = {
    "LambdaLR-per-group": ("sgd", lambda S, o: S.LambdaLR(o, [lambda e: 0.95 ** e, lambda e: 1 / (1 + e)])),
    "LambdaLR": ("sgd", lambda S, o: S.LambdaLR(o, lambda e: 0.5 ** (e // 10))),
    "StepLR": ("sgd", lambda S, o: S.StepLR(o, step_size=7, gamma=0.5)),
    "MultiStepLR": ("sgd", lambda S, o: S.MultiStepLR(o, milestones=[10, 25, 25, 60], gamma=0.3)),
    "ExponentialLR": ("sgd", lambda S, o: S.ExponentialLR(o, gamma=0.97)),
    "CosineAnnealingLR-past-T_max": ("sgd", lambda S, o: S.CosineAnnealingLR(o, T_max=30, eta_min=1e-3)),
    "CosineAnnealingLR": ("sgd", lambda S, o: S.CosineAnnealingLR(o, T_max=STEPS)),
    "CosineAnnealingWarmRestarts-T_mult": ("sgd", lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-4)),
    "CosineAnnealingWarmRestarts": ("sgd", lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=7)),
    "LinearLR": ("sgd", lambda S, o: S.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=20)),
    "LinearLR-default": ("sgd", lambda S, o: S.LinearLR(o)),
    "OneCycleLR-cos-sgd": ("sgd", lambda S, o: S.OneCycleLR(o, max_lr=[1.0, 0.5], total_steps=STEPS)),
    "OneCycleLR-linear-three-phase": ("sgd", lambda S, o: S.OneCycleLR(
        o, max_lr=0.3, epochs=10, steps_per_epoch=10, pct_start=0.25, anneal_strategy="linear",
        three_phase=True, base_momentum=[0.8, 0.7], max_momentum=0.9, div_factor=10.0,
        final_div_factor=100.0)),
    "OneCycleLR-adam-betas": ("adam", lambda S, o: S.OneCycleLR(o, max_lr=0.01, total_steps=STEPS)),
    "OneCycleLR-rmsprop": ("rmsprop", lambda S, o: S.OneCycleLR(o, max_lr=0.01, total_steps=STEPS, three_phase=True)),
    "OneCycleLR-no-momentum": ("sgd", lambda S, o: S.OneCycleLR(o, max_lr=0.2, total_steps=STEPS, cycle_momentum=False)),
    "SequentialLR-warmup-cosine": ("sgd", lambda S, o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=10), S.CosineAnnealingLR(o, T_max=90)], milestones=[10])),
    "SequentialLR-three": ("sgd", lambda S, o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.5, total_iters=5), S.ExponentialLR(o, gamma=0.9),
            S.StepLR(o, step_size=5, gamma=0.5)], milestones=[5, 30])),
    "SequentialLR-warm-restarts": ("sgd", lambda S, o: S.SequentialLR(
        o, [S.ExponentialLR(o, gamma=0.8), S.CosineAnnealingWarmRestarts(o, T_0=8, T_mult=2)], milestones=[12])),
}


def _snapshot(opt):
    g = opt.param_groups
    momentum = [x["betas"][0] if "betas" in x else x.get("momentum") for x in g]
    return [x["lr"] for x in g], momentum


def _run(sched, opt, steps, metrics=None):
    """Record (last_lr, group lrs, momentum) before each of `steps` scheduler steps."""
    seq = []
    for i in range(steps):
        opt.step()
        seq.append((list(sched.get_last_lr()), *_snapshot(opt)))
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[i])
    seq.append((list(sched.get_last_lr()), *_snapshot(opt)))
    return seq


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for t, (a, b) in enumerate(zip(ours, theirs)):
        flat_a = [v for part in a for v in part]
        flat_b = [v for part in b for v in part]
        assert flat_a == pytest.approx(flat_b, rel=1e-12, abs=1e-18), f"step {t}: {a} != {b}"


def _pair(name, device):
    kind, make = SCHEDULERS[name]
    o_am, o_t = _optimizer(am, kind, device), _optimizer(torch, kind, device)
    return (make(am.optim.lr_scheduler, o_am), o_am), (make(torch.optim.lr_scheduler, o_t), o_t)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_sequence_matches_torch(name, device):
    (s_am, o_am), (s_t, o_t) = _pair(name, device)
    ours, theirs = _run(s_am, o_am, STEPS), _run(s_t, o_t, STEPS)
    _assert_same(ours, theirs)
    assert len({round(x[0][0], 15) for x in theirs}) > 2, "the schedule should change the lr"


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_resume_from_state_dict_matches_torch(name, device):
    """Run 37 steps, save optimizer + scheduler state (the scheduler's through JSON, as in a
    checkpoint), rebuild both from scratch, load, and finish: the whole sequence is torch's."""
    kind, make = SCHEDULERS[name]
    (s_am, o_am), (s_t, o_t) = _pair(name, device)
    theirs = _run(s_t, o_t, STEPS)
    k = 37
    first = _run(s_am, o_am, k)[:-1]
    opt_sd = copy.deepcopy(o_am.state_dict())
    sched_sd = json.loads(json.dumps(s_am.state_dict()))
    o2 = _optimizer(am, kind, device)
    s2 = make(am.optim.lr_scheduler, o2)  # as in PyTorch: scheduler first, then the states
    o2.load_state_dict(opt_sd)
    s2.load_state_dict(sched_sd)
    rest = _run(s2, o2, STEPS - k)
    _assert_same(first + rest, theirs)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_state_dict_keys_match_torch_and_torch_state_loads(name, device):
    """Same attribute names as PyTorch; a torch scheduler's state dict taken mid-way loads into
    ours (lr_lambdas aside) and continues the same sequence."""
    (s_am, o_am), (s_t, o_t) = _pair(name, device)
    _run(s_am, o_am, 23)
    _run(s_t, o_t, 23)
    sd_t = s_t.state_dict()
    assert set(s_am.state_dict()) == set(sd_t)
    if name.startswith("SequentialLR"):
        assert [set(x) for x in s_am.state_dict()["_schedulers"]] == [set(x) for x in sd_t["_schedulers"]]
    kind, make = SCHEDULERS[name]
    o2 = _optimizer(am, kind, device)
    s2 = make(am.optim.lr_scheduler, o2)
    for g2, gt in zip(o2.param_groups, o_t.param_groups):  # the optimizer's part of a checkpoint
        g2.update({k: v for k, v in gt.items() if k != "params"})
    s2.load_state_dict(copy.deepcopy(sd_t))
    _assert_same(_run(s2, o2, STEPS - 23), _run(s_t, o_t, STEPS - 23))


def _metrics(seed, mode):
    """A noisy, mostly improving metric with plateaus and exact ties."""
    rng = np.random.default_rng(seed)
    base = np.concatenate([np.linspace(1.0, 0.5, 20), np.full(15, 0.5), np.linspace(0.5, 0.3, 25),
                           0.3 + np.round(rng.uniform(0, 0.05, STEPS - 60), 2)])
    noisy = base + np.round(rng.normal(0, 0.01, STEPS), 3)
    return [float(v) for v in (noisy if mode == "min" else -noisy)]


PLATEAU = [
    dict(),
    dict(mode="max", threshold_mode="abs", threshold=0.05, patience=2, cooldown=3, factor=0.5),
    dict(threshold_mode="abs", patience=0, min_lr=[0.01, 0.001], eps=1e-3, factor=0.3),
    dict(mode="max", cooldown=5, patience=1, min_lr=0.02, factor=0.7),
    dict(patience=3, threshold=0.0),
]


@pytest.mark.parametrize("kwargs", PLATEAU, ids=[str(k) for k in PLATEAU])
def test_reduce_lr_on_plateau_matches_torch(kwargs, device):
    metrics = _metrics(0, kwargs.get("mode", "min"))
    o_am, o_t = _optimizer(am, "sgd", device), _optimizer(torch, "sgd", device)
    s_am = am.optim.lr_scheduler.ReduceLROnPlateau(o_am, **kwargs)
    s_t = torch.optim.lr_scheduler.ReduceLROnPlateau(o_t, **kwargs)
    theirs = _run(s_t, o_t, STEPS, metrics)
    _assert_same(_run(s_am, o_am, STEPS, metrics), theirs)
    assert len({x[0][0] for x in theirs}) > 1, "the metrics should trigger a reduction"
    # resume mid-way through JSON
    o2, s2 = _optimizer(am, "sgd", device), None
    o3 = _optimizer(am, "sgd", device)
    s3 = am.optim.lr_scheduler.ReduceLROnPlateau(o3, **kwargs)
    first = _run(s3, o3, 41, metrics)[:-1]
    s2 = am.optim.lr_scheduler.ReduceLROnPlateau(o2, **kwargs)
    o2.load_state_dict(copy.deepcopy(o3.state_dict()))
    s2.load_state_dict(json.loads(json.dumps(s3.state_dict())))
    _assert_same(first + _run(s2, o2, STEPS - 41, metrics[41:]), theirs)
    assert set(s2.state_dict()) == set(s_t.state_dict())


def test_reduce_lr_on_plateau_accepts_tensor_metric(device):
    opt = _optimizer(am, "sgd", device)
    s = am.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    s.step(am.tensor(1.0, device=device))
    s.step(am.tensor(2.0, device=device))
    assert s.get_last_lr() == [0.05, 0.025]


def test_deprecated_epoch_argument_uses_closed_form_like_torch(device):
    o_am, o_t = _optimizer(am, "sgd", device), _optimizer(torch, "sgd", device)
    for make in (lambda S, o: S.StepLR(o, 3, 0.5), lambda S, o: S.CosineAnnealingLR(o, 10),
                 lambda S, o: S.MultiStepLR(o, [2, 5]), lambda S, o: S.ExponentialLR(o, 0.9),
                 lambda S, o: S.LinearLR(o, 0.2, total_iters=4)):
        s_am, s_t = make(am.optim.lr_scheduler, o_am), make(torch.optim.lr_scheduler, o_t)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for epoch in (4, 7, 2):
                o_am.step()
                o_t.step()
                s_am.step(epoch)
                s_t.step(epoch)
                assert s_am.get_last_lr() == pytest.approx(s_t.get_last_lr(), rel=1e-12)


def test_warm_restarts_fractional_epochs_match_torch(device):
    o_am, o_t = _optimizer(am, "sgd", device), _optimizer(torch, "sgd", device)
    s_am = am.optim.lr_scheduler.CosineAnnealingWarmRestarts(o_am, T_0=5, T_mult=2, eta_min=0.001)
    s_t = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o_t, T_0=5, T_mult=2, eta_min=0.001)
    for epoch in np.arange(0, 40, 0.37):
        s_am.step(float(epoch))
        s_t.step(float(epoch))
        assert s_am.get_last_lr() == pytest.approx(s_t.get_last_lr(), rel=1e-12)


def test_warnings_like_torch(device):
    opt = _optimizer(am, "sgd", device)
    s = am.optim.lr_scheduler.StepLR(opt, step_size=2)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        s.step()
    with pytest.warns(UserWarning, match="get_last_lr"):
        s.get_lr()
    opt2 = _optimizer(am, "sgd", device)
    s2 = am.optim.lr_scheduler.StepLR(opt2, step_size=2)
    opt2.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s2.step()


def test_custom_optimizer_subclass_marks_step():
    """A user optimizer that overrides step() still tells schedulers it ran (no false warning)."""

    class Plain(am.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, dict(lr=0.1))

        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        with am.no_grad():
                            p.sub_(p.grad * g["lr"])

    w = am.ones(2, requires_grad=True)
    opt = Plain([w])
    s = am.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    w.sum().backward()
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.step()
    np.testing.assert_allclose(w.detach().numpy(), [0.9, 0.9])
    assert opt.param_groups[0]["lr"] == 0.05


BAD = [
    (lambda S, o: S.LinearLR(o, start_factor=0.0), ValueError, "start_factor"),
    (lambda S, o: S.LinearLR(o, end_factor=1.5), ValueError, "end_factor"),
    (lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0"),
    (lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=0), ValueError, "T_mult"),
    (lambda S, o: S.OneCycleLR(o, max_lr=0.1), ValueError, "total_steps"),
    (lambda S, o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5), ValueError, "pct_start"),
    (lambda S, o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, anneal_strategy="exp"), ValueError, "anneal_strategy"),
    (lambda S, o: S.OneCycleLR(o, max_lr=[0.1], total_steps=10), ValueError, "max_lr"),
    (lambda S, o: S.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor"),
    (lambda S, o: S.ReduceLROnPlateau(o, mode="avg"), ValueError, "mode"),
    (lambda S, o: S.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError, "threshold"),
    (lambda S, o: S.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError, "min_lr"),
    (lambda S, o: S.LambdaLR(o, [lambda e: 1.0]), ValueError, "lr_lambdas"),
    (lambda S, o: S.SequentialLR(o, [S.StepLR(o, 2)], milestones=[3]), ValueError, "milestones"),
    (lambda S, o: S.StepLR(object(), 2), TypeError, "Optimizer"),
]


@pytest.mark.parametrize("make,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_raise_like_torch(make, exc, match, device):
    with pytest.raises(exc, match=match):
        make(am.optim.lr_scheduler, _optimizer(am, "sgd", device))
    with pytest.raises(exc):
        make(torch.optim.lr_scheduler, _optimizer(torch, "sgd", device))


def test_bad_arguments_stricter_than_torch(device):
    S = am.optim.lr_scheduler
    with pytest.raises(ValueError, match="step_size"):
        S.StepLR(_optimizer(am, "sgd", device), step_size=0)
    with pytest.raises(ValueError, match="cycle_momentum"):
        S.OneCycleLR(am.optim.Adagrad([am.zeros(1, requires_grad=True)]), max_lr=0.1, total_steps=5)
    with pytest.raises(ValueError, match="total steps is 3"):
        opt = _optimizer(am, "sgd", device)
        s = S.OneCycleLR(opt, max_lr=0.1, total_steps=3)
        for _ in range(4):
            opt.step()
            s.step()
