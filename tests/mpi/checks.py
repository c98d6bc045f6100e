"""Multi-rank checks, run as `mpiexec -n N python tests/mpi/checks.py` by tests/test_distributed.py.

Every rank runs every check; references are NumPy computations of what every rank's data
would give (each rank can rebuild the others' inputs from their seeds). A failing check
raises on the rank that sees it; the others then time out in the next collective (the
checks run with a short timeout) so the launch ends with an error, never a hang.
"""
import sys


def data(rank, case, shape, dtype):
    import numpy as np
    rng = np.random.default_rng(1000 * case + rank)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-3 if np.dtype(dtype).kind == "i" else 0, 4, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def close(got, want, dtype, what):
    import numpy as np
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    if np.dtype(dtype).kind == "f":
        tol = {2: 1e-3, 4: 1e-6, 8: 1e-14}[np.dtype(dtype).itemsize]
        assert np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol), what
    else:
        assert np.array_equal(got, want), what


def reduce_ref(arrays, op, dtype):
    import numpy as np
    from avila_ml.distributed import ReduceOp
    stack = np.stack(arrays)
    if dtype == np.bool_:
        return stack.any(0) if op in (ReduceOp.SUM, ReduceOp.MAX) else stack.all(0)
    wide = stack.astype(np.float32) if dtype == np.float16 else stack
    out = {ReduceOp.SUM: lambda s: s.sum(0, dtype=s.dtype), ReduceOp.AVG: lambda s: s.sum(0) / len(arrays),
           ReduceOp.PRODUCT: lambda s: s.prod(0, dtype=s.dtype), ReduceOp.MIN: lambda s: s.min(0),
           ReduceOp.MAX: lambda s: s.max(0)}[op](wide)
    return out.astype(dtype)


def check_collectives(dist, am, np):
    r, n = dist.get_rank(), dist.get_world_size()
    ReduceOp = dist.ReduceOp
    dtypes = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_]
    shapes = [(0,), (1,), (7,), (3, 5), (1000,)]
    case = 0
    count = 0
    for dtype in dtypes:
        for shape in shapes:
            case += 1
            mine = data(r, case, shape, dtype)
            every = [data(q, case, shape, dtype) for q in range(n)]
            ops = [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX]
            if np.dtype(dtype).kind == "f":
                ops.append(ReduceOp.AVG)
            for op in ops:
                t = am.tensor(mine.copy())
                dist.all_reduce(t, op)
                close(t.numpy(), reduce_ref(every, op, dtype), dtype, f"all_reduce {op} {dtype} {shape}")
                t = am.tensor(mine.copy())
                w = dist.all_reduce(t, op, async_op=True)
                assert w.wait() is True
                close(t.numpy(), reduce_ref(every, op, dtype), dtype, f"async all_reduce {op} {dtype}")
                t = am.tensor(mine.copy())
                dist.reduce(t, dst=n - 1, op=op)
                close(t.numpy(), reduce_ref(every, op, dtype) if r == n - 1 else mine, dtype, f"reduce {op} {dtype}")
                # reduce_scatter: input n blocks along dim 0
                big = [data(q, case + 500, (n * shape[0],) + shape[1:], dtype) for q in range(n)]
                out = am.tensor(np.zeros(shape, dtype))
                dist.reduce_scatter_tensor(out, am.tensor(big[r]), op)
                want = reduce_ref(big, op, dtype)[r * shape[0]:(r + 1) * shape[0]]
                close(out.numpy(), want, dtype, f"reduce_scatter_tensor {op} {dtype} {shape}")
                count += 4
            t = am.tensor(mine.copy())
            dist.broadcast(t, src=n - 1)
            close(t.numpy(), every[n - 1], dtype, f"broadcast {dtype} {shape}")
            outs = [am.tensor(np.zeros(shape, dtype)) for _ in range(n)]
            dist.all_gather(outs, am.tensor(mine))
            for q in range(n):
                close(outs[q].numpy(), every[q], dtype, f"all_gather {dtype} {shape}")
            flat = am.tensor(np.zeros((n * shape[0],) + shape[1:], dtype))
            dist.all_gather_into_tensor(flat, am.tensor(mine))
            close(flat.numpy(), np.concatenate(every), dtype, f"all_gather_into_tensor {dtype} {shape}")
            root = 1 % n
            glist = [am.tensor(np.zeros(shape, dtype)) for _ in range(n)] if r == root else None
            dist.gather(am.tensor(mine), glist, dst=root)
            if r == root:
                for q in range(n):
                    close(glist[q].numpy(), every[q], dtype, f"gather {dtype} {shape}")
            parts = [data(root, case + 900 + q, shape, dtype) for q in range(n)]
            t = am.tensor(np.zeros(shape, dtype))
            dist.scatter(t, [am.tensor(p) for p in parts] if r == root else None, src=root)
            close(t.numpy(), parts[r], dtype, f"scatter {dtype} {shape}")
            # point to point: a ring, non-blocking both ways
            got = am.tensor(np.zeros(shape, dtype))
            reqs = [dist.isend(am.tensor(mine), (r + 1) % n, tag=case), dist.irecv(got, (r - 1) % n, tag=case)]
            for q in reqs:
                q.wait()
            close(got.numpy(), every[(r - 1) % n], dtype, f"isend/irecv {dtype} {shape}")
            count += 7
    # non-contiguous tensor: the written-back transpose
    base = data(r, 77, (4, 3), np.float64)
    t = am.tensor(base.copy()).transpose(0, 1)
    dist.all_reduce(t)
    close(t.numpy(), sum(data(q, 77, (4, 3), np.float64) for q in range(n)).T, np.float64, "non-contiguous")
    # blocking send/recv between 0 and 1
    x = am.tensor(np.arange(6.0).reshape(2, 3) * (r + 1))
    if r == 0:
        dist.send(x, 1, tag=5)
    elif r == 1:
        y = am.zeros(2, 3, dtype=am.float64)
        assert dist.recv(y, 0, tag=5) == 0
        close(y.numpy(), np.arange(6.0).reshape(2, 3), np.float64, "send/recv")
    # sub-groups: ranks {0, n-1}; the middle rank (n=3) is outside
    g = dist.new_group([0, n - 1])
    if r in (0, n - 1):
        assert dist.get_world_size(g) == 2 and dist.get_rank(g) == (0 if r == 0 else 1)
        t = am.tensor([float(r)])
        dist.all_reduce(t, group=g)
        assert t.item() == float(n - 1), t
        t = am.tensor([float(r + 10)])
        dist.broadcast(t, src=n - 1, group=g)
        assert t.item() == float(n - 1 + 10)
    else:
        assert g is dist.GroupMember.NON_GROUP_MEMBER and dist.get_rank(g) == -1
        assert dist.all_reduce(am.ones(1), group=g) is None
    dist.barrier()
    print(f"rank {r}: collectives OK ({count} checks)", flush=True)


def check_errors(dist, am, np):
    r, n = dist.get_rank(), dist.get_world_size()
    cases = [
        ("shape", lambda: dist.all_reduce(am.zeros(2 + r)), [f"rank {q}: all_reduce" for q in range(n)], "(2,)"),
        ("dtype", lambda: dist.all_reduce(am.zeros(2, dtype=am.float64 if r else am.float32)), ["float32", "float64"], "all_reduce"),
        ("op", lambda: dist.all_reduce(am.zeros(2)) if r == 0 else dist.broadcast(am.zeros(2), 0), ["all_reduce", "broadcast"], "disagree"),
        ("root", lambda: dist.broadcast(am.zeros(2), src=r % 2), ["root 0", "root 1"], "broadcast"),
        ("redop", lambda: dist.all_reduce(am.zeros(2), dist.ReduceOp.MAX if r else dist.ReduceOp.SUM), ["op max", "op sum"], "all_reduce"),
    ]
    for name, fn, words, word in cases:
        try:
            fn()
        except dist.DistBackendError as e:
            msg = str(e)
            assert all(w in msg for w in words) and word in msg, (name, msg)
        else:
            raise AssertionError(f"mismatch '{name}' did not raise")
    # after a mismatch the group still works
    t = am.ones(1)
    dist.all_reduce(t)
    assert t.item() == n
    for bad, exc in ((lambda: dist.all_reduce(am.zeros(2, dtype=am.int64), dist.ReduceOp.AVG), TypeError),
                     (lambda: dist.broadcast(am.zeros(1), src=n), ValueError),
                     (lambda: dist.all_gather_into_tensor(am.zeros(1), am.zeros(1)), ValueError),
                     (lambda: dist.all_reduce(np.zeros(2)), TypeError)):
        try:
            bad()
        except exc:
            pass
        else:
            raise AssertionError("bad argument accepted")
    dist.barrier()
    print(f"rank {r}: errors OK", flush=True)


def mlp(am, nn, seed=0, extra=False):
    am.manual_seed(seed)
    layers = [nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)]
    model = nn.Sequential(*layers).double()
    if extra:
        class WithUnused(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = model
                self.unused = nn.Linear(4, 4).double()

            def forward(self, x):
                return self.body(x)
        return WithUnused()
    return model


def shards(np, n, b, step):
    rng = np.random.default_rng(step)
    x = rng.standard_normal((n * b, 6))
    y = rng.standard_normal((n * b, 3))
    return x, y


def check_ddp(dist, am, np):
    nn = am.nn
    r, n = dist.get_rank(), dist.get_world_size()
    b = 4
    model = mlp(am, nn, seed=1 + r)  # different init per rank: DDP must broadcast rank 0's
    ddp = nn.DistributedDataParallel(model, bucket_cap_mb=1e-3)  # ~1 KB buckets: several of them
    ref = mlp(am, nn, seed=1)  # rank 0's initial model, trained on the whole batch
    for p, q in zip(ref.parameters(), model.parameters()):
        assert np.array_equal(p.array, q.array), "parameters not broadcast from rank 0"
    assert len(ddp.bucket_plan()) > 1, ddp.bucket_plan()
    opt = am.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    ropt = am.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.MSELoss()
    n_params = len(list(model.parameters()))
    for step in range(4):
        x, y = shards(np, n, b, step)
        xs, ys = am.tensor(x[r * b:(r + 1) * b]), am.tensor(y[r * b:(r + 1) * b])
        opt.zero_grad()
        loss_fn(ddp(xs), ys).backward()
        # overlap: the first bucket's all-reduce started while gradients were still arriving
        log = ddp.reducer.launch_log
        assert len(log) == len(ddp.bucket_plan()) and log[0][1] < n_params, log
        ropt.zero_grad()
        loss_fn(ref(am.tensor(x)), am.tensor(y)).backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            assert np.allclose(p.grad.array, q.grad.array, rtol=1e-12, atol=1e-14), (step, name)
        opt.step()
        ropt.step()
    assert ddp.reducer.rebuilt
    for p, q in zip(model.parameters(), ref.parameters()):
        assert np.allclose(p.array, q.array, rtol=1e-12, atol=1e-14)
    # no_sync: two local micro-batches, then a synchronised one == mean over ranks of the sum
    opt.zero_grad()
    ropt.zero_grad()
    for step in range(3):
        x, y = shards(np, n, b, 10 + step)
        xs, ys = am.tensor(x[r * b:(r + 1) * b]), am.tensor(y[r * b:(r + 1) * b])
        if step < 2:
            with ddp.no_sync():
                loss_fn(ddp(xs), ys).backward()
            if step == 0:
                local = [p.grad.array.copy() for p in model.parameters()]
        else:
            loss_fn(ddp(xs), ys).backward()
        loss_fn(ref(am.tensor(x)), am.tensor(y)).backward()
    # after a no_sync step, each rank has its own (different) local gradient
    for p, q in zip(model.parameters(), ref.parameters()):
        assert np.allclose(p.grad.array, q.grad.array, rtol=1e-12, atol=1e-14), "no_sync accumulation"
    t = am.tensor(local[0].copy())
    dist.all_reduce(t, dist.ReduceOp.MAX)
    if n > 1:
        assert not np.allclose(t.numpy(), local[0]), "no_sync still synchronised"
    # unused parameter: an error naming it; with find_unused_parameters it is handled
    m2 = mlp(am, nn, seed=3, extra=True)
    d2 = nn.DistributedDataParallel(m2)
    try:
        d2(am.ones(2, 6, dtype=am.float64)).sum().backward()
    except RuntimeError as e:
        assert "unused.weight" in str(e) and "find_unused_parameters=True" in str(e), str(e)
    else:
        raise AssertionError("unused parameter not reported")
    m3 = mlp(am, nn, seed=3, extra=True)
    d3 = nn.DistributedDataParallel(m3, find_unused_parameters=True)
    rm = mlp(am, nn, seed=3)
    for step in range(2):
        x, _ = shards(np, n, b, 20 + step)
        d3(am.tensor(x[r * b:(r + 1) * b])).pow(2).mean().backward()
        (rm(am.tensor(x)).pow(2).mean()).backward()
    for (name, p), q in zip(m3.named_parameters(), list(rm.parameters())):
        assert np.allclose(p.grad.array, q.grad.array, rtol=1e-12, atol=1e-14), name
    assert m3.unused.weight.grad is None
    # state dict names: module. prefix, as PyTorch
    assert list(d3.state_dict())[0].startswith("module.")
    sd = d3.state_dict()
    nn.parallel.consume_prefix_in_state_dict_if_present(sd, "module.")
    m3.load_state_dict(sd)
    # broadcast_buffers: rank 0's running stats reach every rank before forward
    bn = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)).double()
    dbn = nn.DistributedDataParallel(bn)
    dbn(am.tensor(np.random.default_rng(r).standard_normal((5, 6))))
    dbn(am.tensor(np.zeros((5, 6))))
    t = am.tensor(bn[1].running_mean.array.copy())
    dist.broadcast(t, 0)
    assert np.array_equal(t.numpy(), bn[1].running_mean.array)  # equal on every rank after the broadcast
    print(f"rank {r}: ddp OK", flush=True)


def check_syncbn(dist, am, np):
    nn = am.nn
    r, n = dist.get_rank(), dist.get_world_size()
    for dims, cls in ((0, nn.BatchNorm1d), (1, nn.BatchNorm1d), (2, nn.BatchNorm2d), (4, nn.BatchNorm4d)):
        b, c = 3, 4
        shape = (n * b, c) + (3,) * dims
        rng = np.random.default_rng(dims)
        x = rng.standard_normal(shape) * 2 + 1
        cot = rng.standard_normal(shape)
        ref = cls(c).double()
        ref.weight.array[...] = rng.standard_normal(c)
        ref.bias.array[...] = rng.standard_normal(c)
        sync = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(cls(c).double()))[0]
        sync.weight.array[...] = ref.weight.array
        sync.bias.array[...] = ref.bias.array
        assert type(sync).__name__ == "SyncBatchNorm"
        for it in range(2):  # two steps: running stats compound
            xf = am.tensor(x + it, requires_grad=True)
            yf = ref(xf)
            (yf * am.tensor(cot)).sum().backward()
            xl = am.tensor((x + it)[r * b:(r + 1) * b], requires_grad=True)
            yl = sync(xl)
            (yl * am.tensor(cot[r * b:(r + 1) * b])).sum().backward()
            sl = slice(r * b, (r + 1) * b)
            assert np.allclose(yl.array, yf.array[sl], rtol=1e-12, atol=1e-12), ("forward", dims)
            assert np.allclose(xl.grad.array, xf.grad.array[sl], rtol=1e-10, atol=1e-12), ("grad x", dims)
            for name in ("weight", "bias"):
                g = am.tensor(getattr(sync, name).grad.array.copy())
                dist.all_reduce(g)
                assert np.allclose(g.numpy(), getattr(ref, name).grad.array, rtol=1e-10, atol=1e-12), (name, dims)
                getattr(sync, name).grad = None
                getattr(ref, name).grad = None
            assert np.allclose(sync.running_mean.array, ref.running_mean.array, rtol=1e-12, atol=1e-14)
            assert np.allclose(sync.running_var.array, ref.running_var.array, rtol=1e-12, atol=1e-14)
    print(f"rank {r}: syncbn OK", flush=True)


def check_checkpoint(dist, am, np, path, mode):
    """mode 'write': train 2 DDP steps, save; mode 'read': resume on this world size."""
    nn = am.nn
    r, n = dist.get_rank(), dist.get_world_size()
    model = mlp(am, nn, seed=5)
    ddp = nn.DistributedDataParallel(model)
    opt = am.optim.Adam(ddp.parameters(), lr=1e-2)
    if mode == "write":
        for step in range(2):
            x, y = shards(np, 6, 2, 30 + step)  # global batch of 12, split over n ranks
            per = 12 // n
            nn.MSELoss()(ddp(am.tensor(x[r * per:(r + 1) * per])), am.tensor(y[r * per:(r + 1) * per])).backward()
            opt.step()
            opt.zero_grad()
        dist.save({"model": ddp.module.state_dict(), "optim": opt.state_dict(), "epoch": 2, "world": n}, path)
    else:
        ckpt = dist.load(path)
        assert ckpt["epoch"] == 2 and ckpt["world"] != n
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optim"])
        # the same as a single process that trained 2 steps on the global batches
        ref = mlp(am, nn, seed=5)
        ropt = am.optim.Adam(ref.parameters(), lr=1e-2)
        for step in range(2):
            x, y = shards(np, 6, 2, 30 + step)
            nn.MSELoss()(ref(am.tensor(x)), am.tensor(y)).backward()
            ropt.step()
            ropt.zero_grad()
        for p, q in zip(model.parameters(), ref.parameters()):
            assert np.allclose(p.array, q.array, rtol=1e-12, atol=1e-14), "resumed parameters"
    print(f"rank {r}: checkpoint {mode} OK", flush=True)


def check_nccl(dist, am, np):
    """The NCCL path on CUDA tensors: collectives vs NumPy and one DDP step vs one process."""
    r, n = dist.get_rank(), dist.get_world_size()
    assert dist.get_backend() == "nccl" and am.get_default_device() == f"cuda:{r}"
    for dtype in (am.float16, am.float32, am.float64, am.int32, am.int64, am.uint8, am.bool):
        base = data(r, 5, (33,), dtype.np)
        for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX):
            t = am.tensor(base.copy(), device="cuda")
            dist.all_reduce(t, op)
            every = [data(q, 5, (33,), dtype.np) for q in range(n)]
            close(t.cpu().numpy(), reduce_ref(every, op, dtype.np), dtype.np, f"nccl all_reduce {dtype}")
        t = am.tensor(base.copy(), device="cuda")
        dist.broadcast(t, 0)
        close(t.cpu().numpy(), data(0, 5, (33,), dtype.np), dtype.np, f"nccl broadcast {dtype}")
    model = mlp(am, am.nn, seed=1).to("cuda")
    ref = mlp(am, am.nn, seed=1)
    ddp = am.nn.DistributedDataParallel(model, bucket_cap_mb=1e-3)
    x, y = shards(np, n, 4, 0)
    am.nn.MSELoss()(ddp(am.tensor(x[r * 4:(r + 1) * 4], device="cuda")), am.tensor(y[r * 4:(r + 1) * 4], device="cuda")).backward()
    am.nn.MSELoss()(ref(am.tensor(x)), am.tensor(y)).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert np.allclose(p.grad.cpu().numpy(), q.grad.numpy(), rtol=1e-12, atol=1e-14)
    print(f"rank {r}: nccl OK", flush=True)


def main():
    import numpy as np
    import avila_ml as am
    import avila_ml.distributed as dist
    try:
        dist.all_reduce(am.zeros(1))
    except ValueError as e:
        assert "init_process_group" in str(e)
    else:
        raise AssertionError("collective before init did not raise")
    what = sys.argv[1]
    dist.init_process_group("nccl" if what == "nccl" else "mpi", timeout=float(sys.argv[2]) if len(sys.argv) > 2 else 30)
    if what == "all":
        check_collectives(dist, am, np)
        check_errors(dist, am, np)
        check_ddp(dist, am, np)
        check_syncbn(dist, am, np)
    elif what == "nccl":
        check_nccl(dist, am, np)
    elif what in ("ckpt-write", "ckpt-read"):
        check_checkpoint(dist, am, np, sys.argv[3], what[5:])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
