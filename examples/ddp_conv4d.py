"""Data-parallel training of the Conv4d spacetime model (examples/conv4d_spacetime.py) on N processes.

Each process holds a replica of the model; DistributedSampler gives each its share of every
epoch, DistributedDataParallel averages the gradients (bucketed all-reduces overlapped with
backward), and rank 0 writes checkpoints that any number of ranks can resume from.

    python examples/ddp_conv4d.py                                   # one process (world of size 1)
    python -m avila_ml.distributed.run -n 2 examples/ddp_conv4d.py  # or: mpiexec -n 2 python ...
    mpiexec -n 2 python examples/ddp_conv4d.py --quick --checkpoint /tmp/ck.safetensors
    mpiexec -n 3 python examples/ddp_conv4d.py --quick --checkpoint /tmp/ck.safetensors --resume --epochs 2

``--batch`` is the batch *per rank*: 2 ranks with ``--batch 8`` take the same steps as 1 rank
with ``--batch 16`` (same data, same order), so the final losses agree to float rounding; the
test suite checks exactly that in ``--quick`` mode.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv4d_spacetime import DIRECTIONS, SpacetimeNet, wave_packets  # noqa: E402

import avila_ml as am  # noqa: E402
import avila_ml.distributed as dist  # noqa: E402
from avila_ml import nn  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=None, help="batch per rank (default: 32 / world size)")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    parser.add_argument("--checkpoint", default=None, help="write model/optimizer/epoch here after each epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint (any world size)")
    args = parser.parse_args()

    dist.init_process_group(timeout=120)  # MPI on CPU; NCCL and cuda:<local rank> with GPUs
    rank, world = dist.get_rank(), dist.get_world_size()
    n_train, n_test = (64, 32) if args.quick else (1024, 256)
    epochs = 1 if args.quick and not args.resume else args.epochs
    batch = args.batch or max(1, (16 if args.quick else 32) // world)

    rng = np.random.default_rng(args.seed)  # the same data on every rank; the sampler splits it
    x_train, y_train, _ = wave_packets(n_train, rng)
    x_test, y_test, _ = wave_packets(n_test, rng)
    train = am.data.TensorDataset(am.tensor(x_train), am.tensor(y_train))
    sampler = am.data.DistributedSampler(train, shuffle=True, seed=args.seed, drop_last=True)
    loader = am.data.DataLoader(train, batch_size=batch, sampler=sampler, drop_last=True,
                                num_workers=args.workers)

    am.manual_seed(args.seed)
    model = nn.DistributedDataParallel(SpacetimeNet())
    opt = am.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    start_epoch = 0
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        ckpt = dist.load(args.checkpoint)
        model.module.load_state_dict(ckpt["model"])  # saved without the "module." prefix
        opt.load_state_dict(ckpt["optim"])
        start_epoch = ckpt["epoch"]
        if rank == 0:
            print(f"resumed from {args.checkpoint}: epoch {start_epoch}, written by {ckpt['world_size']} rank(s), "
                  f"now {world} rank(s)")
    if rank == 0:
        print(f"{world} rank(s) x batch {batch}: {n_train} training volumes of shape {x_train.shape[1:]}, "
              f"{sum(p.numel() for p in model.parameters())} parameters, buckets {len(model.bucket_plan())}")

    start = time.time()
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        total, steps = 0.0, 0
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        mean_loss = am.tensor([total / max(steps, 1)], dtype=am.float64)
        dist.all_reduce(mean_loss, dist.ReduceOp.AVG)  # the global batch's mean loss
        correct = am.tensor([0], dtype=am.int64)
        with am.no_grad():
            for i in range(rank, n_test, world):  # each rank scores its share of the test set
                correct += int(model(am.tensor(x_test[i:i + 1])).argmax(1).item() == y_test[i])
        dist.all_reduce(correct)
        if args.checkpoint:
            dist.save({"model": model.module.state_dict(), "optim": opt.state_dict(), "epoch": epoch + 1,
                       "world_size": world}, args.checkpoint)
        if rank == 0:
            print(f"epoch {epoch + 1}: train loss {mean_loss.item():.6f}, test accuracy "
                  f"{correct.item() / n_test:.3f} ({time.time() - start:.0f} s)")
    if rank == 0:
        print(f"final loss {mean_loss.item():.6f} ({world} rank(s), chance accuracy {1 / len(DIRECTIONS):.3f})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
