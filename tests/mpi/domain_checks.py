"""Multi-rank checks of domain parallelism, run as `mpiexec -n N python tests/mpi/domain_checks.py WHAT`
by tests/test_domain_parallel.py.

Every rank builds the same global float64 volume, weights and output gradient from fixed seeds,
computes the unsharded op on the whole volume (the reference: the library's ordinary ops, which
the op table checks against PyTorch), and the sharded op on its shard; the output shard, the
input-gradient shard and the (all-reduced) weight gradients must equal the reference's.
"""
import sys
import time

import numpy as np

import avila_ml as am
import avila_ml.distributed as dist
import avila_ml.nn.functional as F
from avila_ml.distributed import domain_ops as D

RTOL, ATOL = 1e-10, 1e-12
COUNT = [0]


def close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.max(np.abs(got - want)) if got.size else 0.0
    assert np.allclose(got, want, rtol=RTOL, atol=ATOL), f"{what}: max abs error {err}"


def check(spec, what, sharded, full, x_shape, params=(), seed=0):
    """sharded(x_shard, *params) vs full(x, *params): output, input grad, param grads."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    ps = [rng.standard_normal(p) if isinstance(p, tuple) else p for p in params]
    xf = am.tensor(x, requires_grad=True)
    pf = [am.tensor(p, requires_grad=True) for p in ps]
    yf = full(xf, *pf)
    g = rng.standard_normal(tuple(yf.shape))
    (yf * am.tensor(g)).sum().backward()
    xl = spec.shard(am.tensor(x)).requires_grad_()
    pl = [am.tensor(p.copy(), requires_grad=True) for p in ps]
    yl = sharded(xl, *pl)
    (yl * spec.shard(am.tensor(g), like=yl)).sum().backward()
    close(yl.detach().numpy(), spec.shard(yf.detach(), like=yl).numpy(), f"{what}: output")
    close(xl.grad.numpy(), spec.shard(xf.grad).numpy(), f"{what}: input grad")
    for i, (a, b) in enumerate(zip(pl, pf)):
        close(a.grad.numpy(), b.grad.numpy(), f"{what}: grad of parameter {i}")
    COUNT[0] += 1


def conv_case(spec, shape, K, stride=1, dilation=1, padding=0, modes="zeros", groups=1, cin=2, cout=2, seed=0):
    d = spec.ndim
    K = (K,) * d if isinstance(K, int) else K
    fn = getattr(F, f"conv{d}d")
    w, b = (cout, cin // groups) + tuple(K), (cout,)

    def full(x, w, b):
        return fn(x, w, b, stride, padding, dilation, groups, padding_mode=modes)

    def sharded(x, w, b):
        return D.conv(x, w, b, spec, stride, padding, dilation, groups, modes)

    what = f"conv{d}d mesh {spec.mesh} {spec.dims} x {shape} K {K} s {stride} dl {dilation} p {padding} {modes} g {groups}"
    check(spec, what, sharded, full, (1, cin) + tuple(shape), (w, b), seed)


def check_convs(n):
    T4 = ("t", "x", "y", "z")
    combos = [("causal", "circular", "circular", "zeros"), ("zeros", "reflect", "replicate", "circular"),
              ("replicate", "zeros", "reflect", "causal")]
    # split along each of t, x, y, z in turn (n ranks on one axis)
    for ax in range(4):
        mesh = tuple(n if i == ax else 1 for i in range(4))
        spec = dist.DomainSpec(mesh=mesh, dims=T4, overlap=True)
        shape = tuple(8 if i == ax else 4 for i in range(4))
        conv_case(spec, shape, 3, padding=1, modes=combos[0], seed=ax)
        conv_case(spec, shape, 3, padding=1, modes=combos[1], seed=10 + ax)
        conv_case(spec, shape, (2, 3, 2, 3), padding=1, modes=combos[2], seed=20 + ax)  # even kernels
    # (the checks of the convolution itself run with the overlapped exchange, forward and backward)
    spec = dist.DomainSpec(mesh=(n, 1, 1, 1) if n == 2 else (2, 2, 1, 1), dims=T4, overlap=True)
    conv_case(spec, (9, 8, 4, 4), 3, stride=2, padding=1, modes=combos[0], seed=30)      # stride 2, uneven
    conv_case(spec, (12, 9, 4, 5), 3, dilation=2, padding=2, modes=combos[1], seed=31)  # dilation 2
    conv_case(spec, (8, 8, 3, 3), (4, 2, 1, 3), padding="same", modes=combos[0], seed=32)  # even, 'same'
    conv_case(spec, (8, 8, 3, 3), 3, padding=1, groups=2, cin=4, cout=4, modes=combos[2], seed=33)
    conv_case(spec, (11, 10, 3, 3), (3, 2, 3, 3), stride=(2, 3, 1, 1), dilation=(1, 2, 1, 1), padding=(0, 1, 1, 0),
              modes=("causal", "zeros", "circular", "reflect"), seed=34)
    # 1-d (17 on the ranks: uneven), 2-d, 3-d
    s1 = dist.DomainSpec(mesh=(n,), dims=("t",), overlap=True)
    for modes in ("zeros", "circular", "reflect", "replicate", "causal"):
        conv_case(s1, (17,), 5, padding=2, modes=modes, seed=40)
        conv_case(s1, (17 if n == 2 else 29,), 4, stride=2, dilation=2, padding=3, modes=modes, seed=41)
    s2 = dist.DomainSpec(mesh=(n, 1) if n == 2 else (2, 2), dims=("x", "y"), overlap=True)
    conv_case(s2, (13, 10), 3, padding=1, modes=("circular", "reflect"), seed=50)
    s3 = dist.DomainSpec(mesh=(1, n, 1) if n == 2 else (1, 2, 2), dims=("x", "y", "z"), overlap=True)
    conv_case(s3, (5, 11, 10), (3, 5, 2), padding=(1, 2, 1), modes=("replicate", "circular", "zeros"), seed=51)
    # autograd.grad of the weight only: the backward never reaches the start of the overlapped
    # exchange, whose adjoint messages are then drained at the end (the next exchange must match)
    rng = np.random.default_rng(60)
    xg = rng.standard_normal((1, 2, 8, 6, 4, 4))
    wg = rng.standard_normal((2, 2, 3, 3, 3, 3))
    wf = am.tensor(wg, requires_grad=True)
    (want,) = am.autograd.grad((F.conv4d(am.tensor(xg), wf, None, 1, 1, padding_mode="circular") ** 2).sum(), [wf])
    wl = am.tensor(wg, requires_grad=True)
    yl = D.conv(spec.shard(am.tensor(xg)).requires_grad_(), wl, None, spec, 1, 1, padding_mode="circular")
    (got,) = am.autograd.grad(D.global_sum(yl ** 2, spec), [wl])
    close(got.numpy(), want.numpy(), "autograd.grad of the weight only")
    conv_case(spec, (8, 8, 4, 4), 3, padding=1, modes="circular", seed=61)
    # the overlap happens: in backward, the interior's conv backward runs while the adjoint
    # exchange is in flight (between its start and its finish)
    from avila_ml.distributed import halo
    from avila_ml.ops import conv as C
    events, saved = [], (halo._AdjointStart.forward, halo._AdjointFinish.forward, C.ConvNd.backward)

    def spy(name, fn):
        def run(*a):
            events.append(name)
            return fn(*a)
        return run
    halo._AdjointStart.forward = spy("start", saved[0])
    halo._AdjointFinish.forward = spy("finish", saved[1])
    C.ConvNd.backward = spy("conv", saved[2])
    try:
        y = D.conv(spec.shard(am.tensor(xg)).requires_grad_(), wl, None, spec, 1, 1, padding_mode="circular")
        y.sum().backward()
    finally:
        halo._AdjointStart.forward, halo._AdjointFinish.forward, C.ConvNd.backward = saved
    assert events == ["conv", "conv", "start", "conv", "finish"], events
    # a shard smaller than the halo: a clear error on every rank, no hang
    try:
        D.conv(spec.shard(am.zeros(1, 1, 2 * spec.mesh[0], 4, 4, 4)), am.zeros(1, 1, 7, 1, 1, 1), None, spec,
               padding=3)
    except ValueError as e:
        assert "axis 't' (dim 2)" in str(e) and "shard of size 2" in str(e) and "halo of 3" in str(e), str(e)
    else:
        raise AssertionError("a shard smaller than the halo did not raise")
    print(f"rank {spec.rank}: conv OK ({COUNT[0]} cases)", flush=True)


def check_other_ops(n):
    T4 = ("t", "x", "y", "z")
    spec = dist.DomainSpec(mesh=(n, 1, 1, 1), dims=T4) if n == 2 else dist.DomainSpec(mesh=(2, 1, 2, 1), dims=T4)
    shape = (1, 2, 9, 4, 8, 3)
    start = COUNT[0]
    # transposed convolution (upsampling k2s2, overlapping k3s2 with padding/output_padding, dilation)
    for K, s, p, op, dl, seed in ((2, 2, 0, 0, 1, 60), (3, 2, 1, 1, 1, 61), (3, 1, 1, 0, 2, 62)):
        check(spec, f"conv_transpose4d K{K} s{s} p{p} op{op} dl{dl}",
              lambda x, w, b: D.conv_transpose(x, w, b, spec, s, p, op, 1, dl),
              lambda x, w, b: F.conv_transpose4d(x, w, b, s, p, op, 1, dl), shape, ((2, 3, K, K, K, K), (3,)), seed)
    # pooling
    for kw, seed in ((dict(kernel_size=2), 70), (dict(kernel_size=3, stride=2, padding=1), 71),
                     (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), 72),
                     (dict(kernel_size=(2, 3, 2, 1), stride=(1, 2, 2, 1), dilation=(2, 1, 1, 1)), 73)):
        check(spec, f"max_pool4d {kw}", lambda x: D.max_pool(x, spec, **kw), lambda x: F.max_pool4d(x, **kw), shape,
              seed=seed)
    for kw, seed in ((dict(kernel_size=2), 74), (dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), 75),
                     (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), 76),
                     (dict(kernel_size=2, divisor_override=3), 77)):
        check(spec, f"avg_pool4d {kw}", lambda x: D.avg_pool(x, spec, **kw), lambda x: F.avg_pool4d(x, **kw), shape,
              seed=seed)
    # interpolation
    for kw, seed in ((dict(scale_factor=2, mode="nearest"), 80), (dict(scale_factor=2, mode="quadrilinear"), 81),
                     (dict(size=(13, 5, 11, 3), mode="quadrilinear", align_corners=True), 82),
                     (dict(size=(20, 6, 12, 4), mode="nearest-exact"), 83),
                     (dict(scale_factor=1.5, mode="multilinear"), 84)):
        check(spec, f"interpolate {kw}", lambda x: D.interpolate(x, spec, **kw), lambda x: F.interpolate(x, **kw),
              shape, seed=seed)
    # normalization (statistics over the whole volume)
    check(spec, "batch_norm", lambda x, w, b: D.batch_norm(x, spec, None, None, w, b, True, 0.1, 1e-5),
          lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5), (2,) + shape[1:], ((2,), (2,)), 90)
    check(spec, "instance_norm", lambda x, w, b: D.instance_norm(x, spec, w, b),
          lambda x, w, b: F.instance_norm(x, None, None, w, b, True), (2,) + shape[1:], ((2,), (2,)), 91)
    check(spec, "group_norm", lambda x, w, b: D.group_norm(x, spec, 2, w, b),
          lambda x, w, b: F.group_norm(x, 2, w, b), (2, 4) + shape[2:], ((4,), (4,)), 92)
    # reductions and losses (the replicated scalar times a fixed weight, so the gradient is checked)
    rng = np.random.default_rng(94)
    x = rng.standard_normal(shape)
    y = rng.standard_normal(shape)
    cls = rng.integers(0, 2, (1,) + shape[2:])
    cls[0, 0, 0, 0, 0] = -100
    for loss, tgt in ((am.nn.MSELoss(), y), (am.nn.L1Loss(reduction="sum"), y), (am.nn.HuberLoss(delta=0.5), y),
                      (am.nn.CrossEntropyLoss(), cls), (am.nn.BCEWithLogitsLoss(), (y > 0).astype(float))):
        xf = am.tensor(x, requires_grad=True)
        lf = loss(xf, am.tensor(tgt))
        lf.backward()
        xl = spec.shard(am.tensor(x)).requires_grad_()
        ll = D.sharded_loss(loss, xl, spec.shard(am.tensor(tgt)), spec)
        ll.backward()
        close(ll.item(), lf.item(), f"{type(loss).__name__}: value")
        close(xl.grad.numpy(), spec.shard(xf.grad).numpy(), f"{type(loss).__name__}: grad")
        COUNT[0] += 1
    xl = spec.shard(am.tensor(x)).requires_grad_()
    (3 * D.global_mean(xl, spec)).backward()
    close(xl.grad.numpy(), np.full(xl.shape, 3 / x.size), "global_mean grad")
    # gather/scatter round trip, uneven shards
    full = am.tensor(rng.standard_normal((2, 3, 9, 5, 7, 2)))
    local = spec.scatter(full if spec.rank == 0 else None)
    close(local.numpy(), spec.shard(full).numpy(), "scatter")
    close(spec.gather(local, all=True).numpy(), full.numpy(), "gather")
    # a loader reading only its slab from an HDF5 file (uneven shards)
    try:
        import h5py
    except ImportError:
        h5py = None
    if h5py is not None:
        import os
        path = f"/tmp/avila_domain_checks_{os.getppid()}.h5"  # the ranks share the launcher's proxy
        if spec.rank == 0:
            with h5py.File(path, "w") as f:
                f["x"] = full.numpy()
        dist.barrier()
        with h5py.File(path, "r") as f:
            slab = f["x"][spec.local_slices(f["x"].shape)]  # reads only this rank's slab
        close(slab, spec.shard(full).numpy(), "h5py slab")
        dist.barrier()
        if spec.rank == 0:
            os.remove(path)
    print(f"rank {spec.rank}: ops OK ({COUNT[0] - start} cases)", flush=True)


def small_net(seed, bn=True):
    am.manual_seed(seed)
    nn = am.nn
    return nn.Sequential(
        nn.Conv4d(1, 4, 3, padding=1, padding_mode=("causal", "circular", "circular", "zeros")),
        nn.BatchNorm4d(4) if bn else nn.GroupNorm(2, 4),
        nn.GELU(),
        nn.MaxPool4d(2),
        nn.Conv4d(4, 4, (2, 3, 3, 3), padding=(0, 1, 1, 1), padding_mode=("causal", "circular", "reflect", "zeros")),
        nn.InstanceNorm4d(4, affine=True),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv4d(4, 1, 3, padding=1, padding_mode="replicate"),
    ).double()


def check_training(n):
    """5 SGD steps on the sharded net = 5 steps on the whole volume on one rank."""
    T4 = ("t", "x", "y", "z")
    meshes = [((n, 1, 1, 1), T4), ((1, 1, n, 1), T4)] if n == 2 else [((2, 2, 1, 1), T4), ((2, 1, 1, 1, 2), ("batch",) + T4)]
    for (mesh, dims), bn in zip(meshes, (True, False)):
        spec = dist.DomainSpec(mesh=mesh, dims=dims, overlap=bn)  # both exchange paths in a whole net
        rng = np.random.default_rng(5)
        nb = 2 if "batch" in dims else 1
        shape = (nb, 1, 8, 8, 8, 6) if "batch" not in dims else (nb, 1, 8, 6, 4, 8)
        xs = [rng.standard_normal(shape) for _ in range(5)]
        ys = [rng.standard_normal(shape) for _ in range(5)]
        ref = small_net(1, bn)
        net = small_net(1, bn)
        dp = dist.DomainParallel(net, spec)
        crit = dp.criterion(am.nn.MSELoss())
        opt_r = am.optim.SGD(ref.parameters(), lr=0.01, momentum=0.5)
        opt = am.optim.SGD(dp.parameters(), lr=0.01, momentum=0.5)
        for x, y in zip(xs, ys):
            opt_r.zero_grad()
            lr_ = am.nn.MSELoss()(ref(am.tensor(x)), am.tensor(y))
            lr_.backward()
            opt_r.step()
            opt.zero_grad()
            out = dp(spec.shard(am.tensor(x)))
            loss = crit(out, spec.shard(am.tensor(y), like=out))
            loss.backward()
            opt.step()
            close(loss.item(), lr_.item(), f"training {mesh} {dims}: loss")
        for (name, p), q in zip(net.named_parameters(), ref.parameters()):
            close(p.detach().numpy(), q.detach().numpy(), f"training {mesh} {dims}: parameter {name}")
        for (name, b), c in zip(net.named_buffers(), ref.buffers()):
            close(b.numpy(), c.numpy(), f"training {mesh} {dims}: buffer {name}")
        dp.eval()
        ref.eval()  # batch norm on its running statistics
        with am.no_grad():
            want = ref(am.tensor(xs[0]))
            got = dp(spec.shard(am.tensor(xs[0])))
        close(got.numpy(), spec.shard(want, like=got).numpy(), f"eval {mesh} {dims}: output")
        dp.restore()
    # a classifier: global average pooling makes the values replicated; the Linear head after it
    # runs on replicated input and the loss is the plain loss (gradients still exact)
    spec = dist.DomainSpec(mesh=(n, 1, 1, 1), dims=T4)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 1, 8, 4, 4, 4))
    labels = am.tensor(np.array([1, 2]))

    def classifier():
        am.manual_seed(3)
        nn = am.nn
        return nn.Sequential(nn.Conv4d(1, 3, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                             nn.AdaptiveAvgPool4d(1), nn.Flatten(), nn.Linear(3, 4)).double()
    ref, net = classifier(), classifier()
    lf = am.nn.CrossEntropyLoss()(ref(am.tensor(x)), labels)
    lf.backward()
    dp = dist.DomainParallel(net, spec)
    out = dp(spec.shard(am.tensor(x)))
    assert dp.is_replicated(out)
    ll = dp.criterion(am.nn.CrossEntropyLoss())(out, labels)
    ll.backward()
    close(ll.item(), lf.item(), "classifier: loss")
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        close(p.grad.numpy(), q.grad.numpy(), f"classifier: grad of {name}")
    dp.restore()
    # a trusted user module (a residual block: children + pointwise ops) runs its own forward
    class Residual(am.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = am.nn.Conv4d(3, 3, 3, padding=1, padding_mode=("causal", "circular", "reflect", "zeros"))

        def forward(self, x):
            return x + am.nn.functional.gelu(self.conv(x))

    def resnet():
        am.manual_seed(4)
        return am.nn.Sequential(am.nn.Conv4d(1, 3, 1), Residual(), Residual()).double()
    ref, net = resnet(), resnet()
    (ref(am.tensor(x)) ** 2).sum().backward()
    dp = dist.DomainParallel(net, spec, trusted=(Residual,))
    out = dp(spec.shard(am.tensor(x)))
    close(out.detach().numpy(), spec.shard(ref(am.tensor(x)).detach(), like=out).numpy(), "residual: output")
    D.global_sum(out ** 2, spec).backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        close(p.grad.numpy(), q.grad.numpy(), f"residual: grad of {name}")
    dp.restore()
    # a layer without a sharded version raises instead of computing a wrong result
    bad = dist.DomainParallel(am.nn.Sequential(am.nn.Conv4d(1, 1, 1), am.nn.LayerNorm(4)), spec)
    try:
        bad(spec.shard(am.zeros(1, 1, 8, 4, 4, 4)))
    except ValueError as e:
        assert "1 (LayerNorm)" in str(e) and "no sharded version" in str(e), str(e)
    else:
        raise AssertionError("LayerNorm on a shard did not raise")

    class Mine(am.nn.Module):
        def forward(self, x):
            return x
    try:
        dist.DomainParallel(am.nn.Sequential(Mine()), spec)
    except ValueError as e:
        assert "0 (Mine)" in str(e) and "trusted" in str(e), str(e)
    else:
        raise AssertionError("an untrusted user module did not raise")
    print(f"rank {spec.rank}: training OK", flush=True)


def check_memory(n):
    """Peak traced memory (NumPy allocations) of one forward+backward of the net, sharded vs whole."""
    import tracemalloc
    T4 = ("t", "x", "y", "z")
    spec = dist.DomainSpec(mesh=(n, 1, 1, 1), dims=T4)
    shape = (1, 1, 32, 12, 12, 12)
    x = np.random.default_rng(0).standard_normal(shape)
    peaks = {}
    for mode in ("whole", "sharded"):
        net = small_net(2, bn=False)
        inp = am.tensor(x) if mode == "whole" else spec.shard(am.tensor(x))
        model = net if mode == "whole" else dist.DomainParallel(net, spec)
        for traced in (False, True):  # the first step fills caches (plans, constants): not counted
            if traced:
                tracemalloc.start()
            out = model(inp)
            (out * out).sum().backward()
            del out
            net.zero_grad()
        peaks[mode] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    ratio = peaks["sharded"] / peaks["whole"]
    print(f"rank {spec.rank}: memory whole {peaks['whole'] / 2**20:.1f} MiB sharded {peaks['sharded'] / 2**20:.1f} MiB "
          f"ratio {ratio:.3f} (1/ranks = {1 / n:.3f})", flush=True)
    assert ratio < 1.0 / n + 0.2, ratio
    print(f"rank {spec.rank}: memory OK", flush=True)


def main():
    what = sys.argv[1]
    dist.init_process_group("mpi", timeout=60)
    n = dist.get_world_size()
    t0 = time.time()
    if what in ("all", "ops"):
        check_convs(n)
        check_other_ops(n)
    if what in ("all", "train"):
        check_training(n)
    if what in ("all", "memory"):
        check_memory(n)
    print(f"rank {dist.get_rank()}: done in {time.time() - t0:.1f} s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
