"""Train on 4-D volumes streamed from disk: HDF5, DataLoader workers, checkpointing, autocast.

The data are the wave packets of ``conv4d_spacetime.py`` (a 3-D Gaussian packet moving along one
of six axis directions over 8 time steps in a periodic 12^3 box), written to one HDF5 file of
shape (samples, 1, 8, 12, 12, 12) whose size you choose, plus their direction labels. Training
never loads the file: a :class:`avila_ml.data.VolumeDataset` cuts each patch out of it chunk by
chunk, inside DataLoader worker processes that each open their own file handle. The spatial
axes are periodic, so every patch is its sample shifted by a random periodic translation (a
free augmentation: the label does not change; reading it wraps around the chunk grid).

The network is ``conv4d_spacetime.SpacetimeNet``; each Conv4d block runs under activation
checkpointing (its activations are recomputed in backward instead of kept) and the forward runs
under ``autocast`` (bfloat16 on the CPU, float16 with a GradScaler on CUDA).

    python examples/volume_from_disk.py                  # 0.25 GiB file, ~2-4 min on 2 CPU cores
    python examples/volume_from_disk.py --size-gib 4     # a multi-GiB file (needs the disk space)
    python examples/volume_from_disk.py --quick          # tiny smoke run (< 30 s)

Prints the training throughput (patches/s), the peak resident memory of the training process
and the validation accuracy on samples never trained on.
"""
import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

import avila_ml as am
from avila_ml import nn
from avila_ml.data import DataLoader, Dataset, VolumeDataset, create_volume
from avila_ml.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv4d_spacetime import DIRECTIONS, L, T, SpacetimeNet, wave_packets  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    def tqdm(it, **_):
        return it

SAMPLE_BYTES = T * L ** 3 * 4


def write_dataset(path, n, seed, block=256):
    """Write ``n`` noisy packets to ``path`` block by block (memory: one block), labels too."""
    import h5py
    rng = np.random.default_rng(seed)
    arr, close = create_volume(path, (n, 1, T, L, L, L), np.float32, patch_shape=(T, L, L, L))
    labels = np.empty(n, dtype=np.int8)
    try:
        for i in tqdm(range(0, n, block), desc="writing", unit="block", leave=False):
            x, y, _ = wave_packets(min(block, n - i), rng)
            arr[i:i + len(x)] = x
            labels[i:i + len(x)] = y
    finally:
        close()
    with h5py.File(path, "a") as f:
        f.create_dataset("labels", data=labels)
    return labels


class LabelledPatches(Dataset):
    """(patch, label) pairs: the label of the sample a patch was cut from."""

    def __init__(self, volumes, labels):
        self.volumes, self.labels = volumes, labels

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, i):
        patch, pos = self.volumes[i]
        return patch, int(self.labels[pos[0]])


class CheckpointedNet(SpacetimeNet):
    """SpacetimeNet with each Conv4d block recomputed in backward (activation checkpointing)."""

    def block1(self, x):
        return nn.functional.relu(self.conv1(x))

    def block2(self, x):
        return nn.functional.relu(self.conv2(x))

    def forward(self, x):
        x = checkpoint(self.block1, x)
        x = checkpoint(self.block2, x)
        return self.head(self.pool(x).flatten(1))


def evaluate(model, loader, device):
    correct = total = 0
    with am.no_grad():
        for x, y in loader:
            with am.autocast(device.type):
                logits = model(x.to(device))
            correct += int((logits.float().argmax(1).cpu().numpy() == y.numpy()).sum())
            total += len(y)
    return correct / total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=0.25, help="size of the HDF5 file to write")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 2 passes over 2048 patches)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to write the file (default: a temporary directory)")
    parser.add_argument("--device", default="cuda" if am.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests (no accuracy check)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = am.device(args.device)

    n = 256 if args.quick else max(1024, int(args.size_gib * 2 ** 30 / SAMPLE_BYTES))
    steps = args.steps or (4 if args.quick else 2 * 2048 // args.batch)
    workdir = args.dir or tempfile.mkdtemp(prefix="avila_volume_")
    path = os.path.join(workdir, "wave_packets.h5")
    start = time.time()
    labels = write_dataset(path, n, args.seed)
    print(f"wrote {n} volumes of shape (1, {T}, {L}, {L}, {L}) = {n * SAMPLE_BYTES / 2 ** 30:.2f} GiB "
          f"to {path} in {time.time() - start:.0f} s")

    am.manual_seed(args.seed)
    n_val = max(64, n // 10)
    train_ids, val_ids = range(n - n_val), range(n - n_val, n)
    periodic = (False, True, True, True)  # the box is periodic in space, not in time
    train = VolumeDataset(path, (T, L, L, L), periodic=periodic, num_patches=steps * args.batch,
                          samples=train_ids, return_position=True)
    val = VolumeDataset(path, (T, L, L, L), periodic=periodic, num_patches=n_val,
                        samples=val_ids, return_position=True)
    loader = DataLoader(LabelledPatches(train, labels), batch_size=args.batch, shuffle=False,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    val_loader = DataLoader(LabelledPatches(val, labels), batch_size=64, num_workers=args.workers)

    model = CheckpointedNet().to(device)
    opt = am.optim.Adam(model.parameters(), lr=3e-3)
    sched = am.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    # bfloat16 keeps float32's range: no loss scaling needed; float16 on CUDA needs it
    scaler = am.amp.GradScaler(device.type, enabled=device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss()
    batches = am.data.DevicePrefetcher(loader, device) if device.type == "cuda" else loader
    print(f"training {steps} steps of {args.batch} patches with {args.workers} workers, "
          f"checkpointed Conv4d blocks, autocast({device.type!r}, {am.get_autocast_dtype(device.type)})")
    t0 = time.time()
    seen = 0
    bar = tqdm(batches, total=steps, desc="train", unit="batch")
    for x, y in bar:
        with am.autocast(device.type):
            loss = loss_fn(model(x.to(device)), y.to(device))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        seen += len(y)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}")
    elapsed = time.time() - t0
    acc = evaluate(model, val_loader, device)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"throughput {seen / elapsed:.0f} patches/s ({elapsed:.1f} s for {seen} patches); "
          f"peak resident memory of the training process {peak_mib:.0f} MiB "
          f"(the file is {n * SAMPLE_BYTES / 2 ** 20:.0f} MiB)")
    print(f"validation accuracy {acc:.3f} on {len(val)} held-out volumes (chance {1 / len(DIRECTIONS):.3f})")
    if args.dir is None:
        os.remove(path)
        os.rmdir(workdir)
    if not args.quick:
        assert acc >= 0.8, f"validation accuracy {acc:.3f} is below the 0.80 this example reaches; something is broken"


if __name__ == "__main__":
    main()
