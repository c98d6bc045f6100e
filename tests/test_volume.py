"""Out-of-core 4-D volumes (avila_ml.data.volume), the device prefetcher and pinned batches."""
import itertools
import logging
import os
import sys
import tracemalloc
import types

import numpy as np
import pytest

import avila_ml as am
from avila_ml.data import DataLoader, DevicePrefetcher, VolumeDataset, volume_stats, write_volume
from avila_ml.data.volume import chunk_shape_for, create_volume

h5py = pytest.importorskip("h5py")
zarr = pytest.importorskip("zarr")


def _field(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _reference_patch(vol6, pos, patch):
    """The patch by plain NumPy fancy indexing, every axis taken mod its size."""
    s, starts = pos[0], pos[1:]
    idx = [np.arange(a, a + p) % n for a, p, n in zip(starts, patch, vol6.shape[2:])]
    return vol6[s][np.ix_(range(vol6.shape[1]), *idx)]


@pytest.fixture(params=["h5", "zarr"])
def fmt(request):
    return request.param


def test_chunk_rule_and_round_trip(tmp_path, fmt):
    vol = _field((3, 2, 8, 12, 12, 12))
    path = str(tmp_path / f"v.{fmt}")
    chunks = write_volume(path, vol, patch_shape=(4, 8, 8, 8))
    assert chunks == (1, 2, 2, 4, 4, 4) == chunk_shape_for(vol.shape, (4, 8, 8, 8), 4)
    if fmt == "h5":
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(f["data"][...], vol)
            assert f["data"].chunks == chunks
    else:
        np.testing.assert_array_equal(zarr.open_group(path, mode="r")["data"][...], vol)
    # the byte cap halves the longest edge
    assert chunk_shape_for((2, 64, 64, 64, 64), (64, 64, 64, 64), 4, max_chunk_bytes=1 << 20) == (2, 16, 16, 16, 32)


@pytest.mark.parametrize("periodic", [False, True, (True, False, True, False)])
def test_random_patches_equal_numpy_slices(tmp_path, fmt, periodic):
    vol = _field((3, 2, 6, 10, 9, 7))
    path = str(tmp_path / f"v.{fmt}")
    write_volume(path, vol, patch_shape=(4, 6, 6, 6))
    ds = VolumeDataset(path, (4, 6, 6, 6), periodic=periodic, num_patches=25, seed=3, return_position=True)
    wrap = (periodic,) * 4 if isinstance(periodic, bool) else periodic
    for i in range(len(ds)):
        patch, pos = ds[i]
        for a, w, n, p in zip(pos[1:], wrap, vol.shape[2:], (4, 6, 6, 6)):
            assert 0 <= a < n if w else 0 <= a <= n - p
        np.testing.assert_array_equal(patch.numpy(), _reference_patch(vol, pos, (4, 6, 6, 6)))


def test_one_field_grid_overlap_and_wrap_longer_than_the_axis(tmp_path):
    field = _field((2, 5, 8, 8, 8))  # (C, t, x, y, z)
    path = str(tmp_path / "f.h5")
    write_volume(path, field, patch_shape=(4, 4, 4, 4))
    ds = VolumeDataset(path, (4, 4, 4, 4), positions="grid", stride=(2, 3, 4, 4), return_position=True)
    # t: 0, 1 (flush with the end); x: 0, 3, 4 (flush); y, z: 0, 4
    assert len(ds) == 2 * 3 * 2 * 2
    assert [ds.position(i)[1:3] for i in range(0, 12, 4)] == [(0, 0), (0, 3), (0, 4)]
    for i in range(len(ds)):
        patch, pos = ds[i]
        np.testing.assert_array_equal(patch.numpy(), _reference_patch(field[None], pos, (4, 4, 4, 4)))
    # a periodic axis shorter than the patch wraps more than once
    ds = VolumeDataset(path, (7, 4, 4, 4), periodic=(True, False, False, False), positions="grid",
                       stride=(5, 4, 4, 4), return_position=True)
    patch, pos = ds[1]
    assert pos[1] == 0 and patch.shape == (2, 7, 4, 4, 4)
    np.testing.assert_array_equal(patch.numpy(), _reference_patch(field[None], pos, (7, 4, 4, 4)))
    patch, pos = ds[ds._len - 1]
    np.testing.assert_array_equal(patch.numpy(), _reference_patch(field[None], pos, (7, 4, 4, 4)))


class CountingArray:
    """A NumPy array that records every region read from it (as h5py/zarr would serve it)."""

    def __init__(self, array, chunks):
        self.array, self.chunks = array, chunks
        self.shape, self.dtype = array.shape, array.dtype
        self.reads = []

    def __getitem__(self, region):
        self.reads.append(region)
        return self.array[region]


def _chunks_touched(pos, patch, shape, chunks, wrap):
    per_axis = [{pos[0] // chunks[0]}, set(range(0, -(-shape[1] // chunks[1])))]
    for a, p, n, c, w in zip(pos[1:], patch, shape[2:], chunks[2:], wrap):
        per_axis.append({((a + k) % n if w else a + k) // c for k in range(p)})
    return set(itertools.product(*per_axis))


@pytest.mark.parametrize("wrap", [False, True])
def test_reads_exactly_the_chunks_a_patch_touches(wrap):
    vol = _field((2, 3, 8, 9, 10, 11))
    chunks = (1, 3, 3, 4, 4, 5)
    arr = CountingArray(vol, chunks)
    ds = VolumeDataset(arr, (4, 5, 6, 7), periodic=wrap, num_patches=20, seed=1, return_position=True)
    for i in range(len(ds)):
        arr.reads.clear()
        patch, pos = ds[i]
        got = set()
        for region in arr.reads:
            key = []
            for sl, c, n in zip(region, chunks, vol.shape):
                assert sl.start % c == 0 and sl.stop == min(sl.start + c, n)  # whole, aligned chunks
                key.append(sl.start // c)
            got.add(tuple(key))
        assert len(got) == len(arr.reads)  # no chunk read twice for one patch
        assert got == _chunks_touched(pos, (4, 5, 6, 7), vol.shape, chunks, (wrap,) * 4)
        np.testing.assert_array_equal(patch.numpy(), _reference_patch(vol, pos, (4, 5, 6, 7)))


def test_zarr_store_sees_one_get_per_chunk(tmp_path):
    from zarr.storage import LocalStore, LoggingStore
    vol = _field((2, 1, 8, 8, 8, 8))
    path = str(tmp_path / "v.zarr")
    arr = zarr.create_array(store=path, shape=vol.shape, chunks=(1, 1, 4, 4, 4, 4), dtype="f4")
    arr[...] = vol
    store = LoggingStore(LocalStore(path, read_only=True), log_handler=logging.NullHandler())
    ds = VolumeDataset(zarr.open_array(store=store, mode="r"), (4, 4, 4, 4), positions="grid",
                       stride=(2, 2, 2, 2), return_position=True)
    for i in (0, 5, 17):
        store.counter.clear()
        patch, pos = ds[i]
        expect = _chunks_touched(pos, (4, 4, 4, 4), vol.shape, (1, 1, 4, 4, 4, 4), (False,) * 4)
        assert store.counter["get"] == len(expect)
        np.testing.assert_array_equal(patch.numpy(), _reference_patch(vol, pos, (4, 4, 4, 4)))


def test_chunk_aligned_sampling_reads_only_the_patch_bytes(tmp_path):
    vol = _field((2, 2, 8, 16, 16, 16))
    path = str(tmp_path / "v.h5")
    chunks = write_volume(path, vol, patch_shape=(4, 8, 8, 8))
    ds = VolumeDataset(path, (4, 8, 8, 8), chunk_aligned=True, num_patches=12, seed=0, return_position=True)
    for i in range(len(ds)):
        before = dict(ds.stats)
        patch, pos = ds[i]
        assert all(a % c == 0 for a, c in zip(pos[1:], chunks[2:]))
        assert ds.stats["chunk_reads"] - before["chunk_reads"] == 16  # 2 chunks per axis
        assert ds.stats["bytes_read"] - before["bytes_read"] == patch.numpy().nbytes
        np.testing.assert_array_equal(patch.numpy(), _reference_patch(vol, pos, (4, 8, 8, 8)))


def test_lru_cache_respects_its_budget_and_evicts_least_recent():
    vol = _field((1, 1, 4, 8, 8, 8))
    chunks = (1, 1, 4, 4, 4, 4)  # 1 KiB per chunk
    arr = CountingArray(vol, chunks)
    ds = VolumeDataset(arr, (4, 4, 4, 4), positions="grid", cache_bytes=3 * 1024 + 10)
    ds[0]
    ds[0]
    assert ds.stats["chunk_reads"] == 1 and ds.stats["cache_hits"] == 1
    ds[1], ds[2], ds[3]  # three more distinct chunks: chunk of item 0 is the least recent, evicted
    reader = ds._reader_here()
    assert reader.cached_bytes <= 3 * 1024 + 10 and len(reader.cache) == 3
    n = ds.stats["chunk_reads"]
    ds[3]
    assert ds.stats["chunk_reads"] == n  # still cached
    ds[0]
    assert ds.stats["chunk_reads"] == n + 1  # was evicted
    no_cache = VolumeDataset(CountingArray(vol, chunks), (4, 4, 4, 4), positions="grid")
    no_cache[0], no_cache[0]
    assert no_cache.stats["chunk_reads"] == 2


def test_positions_follow_manual_seed_and_epoch(tmp_path):
    path = str(tmp_path / "v.h5")
    write_volume(path, _field((2, 1, 8, 8, 8, 8)), patch_shape=(4, 4, 4, 4))
    am.manual_seed(11)
    first = VolumeDataset(path, (4, 4, 4, 4), num_patches=8)
    a = [first.position(i) for i in range(8)]
    am.manual_seed(11)
    ds = VolumeDataset(path, (4, 4, 4, 4), num_patches=8)
    assert [ds.position(i) for i in range(8)] == a
    ds.set_epoch(1)
    assert [ds.position(i) for i in range(8)] != a
    split = VolumeDataset(path, (4, 4, 4, 4), num_patches=30, samples=[1])
    assert {split.position(i)[0] for i in range(30)} == {1}
    grid = VolumeDataset(path, (4, 4, 4, 4), positions="grid", samples=[1])
    assert len(grid) == 16 and grid.position(0) == (1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="samples"):
        VolumeDataset(path, (4, 4, 4, 4), samples=[2])


@pytest.mark.parametrize("fmt_", ["h5", "zarr"])
def test_dataloader_workers_open_their_own_handles_and_match_single_process(tmp_path, fmt_):
    vol = _field((3, 2, 6, 8, 8, 8))
    path = str(tmp_path / f"v.{fmt_}")
    write_volume(path, vol, patch_shape=(4, 4, 4, 4))
    ds = VolumeDataset(path, (4, 4, 4, 4), num_patches=12, periodic=True, seed=5, cache_bytes=1 << 20)
    ds[0]  # the main process opens the file first: workers forked now inherit the open handle
    main_pid_handle = ds._handle
    single = [b.numpy() for b in DataLoader(ds, batch_size=4, shuffle=False)]
    for workers in (1, 3):
        multi = [b.numpy() for b in DataLoader(ds, batch_size=4, shuffle=False, num_workers=workers)]
        assert len(multi) == len(single)
        for x, y in zip(single, multi):
            np.testing.assert_array_equal(x, y)
    assert ds._handle is main_pid_handle  # the main process's handle was left alone
    for i in range(4):
        np.testing.assert_array_equal(single[0][i], _reference_patch(vol, ds.position(i), (4, 4, 4, 4)))
    ds.close()


def test_worker_reopens_after_fork():
    """The lazily opened reader belongs to the pid that opened it."""
    vol = _field((1, 1, 4, 4, 4, 4))
    ds = VolumeDataset(vol, (4, 4, 4, 4), positions="grid")
    r = ds._reader_here()
    ds._pid = -1  # as seen from a forked child: another pid
    assert ds._reader_here() is not r


def test_streaming_stats_of_a_file_larger_than_the_memory_limit(tmp_path):
    shape = (6, 2, 8, 32, 32, 32)  # 12 MiB of float32
    path = str(tmp_path / "big.h5")
    arr, close = create_volume(path, shape, patch_shape=(8, 16, 16, 16))
    count = np.zeros(2)
    s1 = np.zeros(2)
    for i in range(shape[0]):  # written sample by sample; reference sums in float64 as we go
        block = (_field(shape[1:], seed=i) * np.array([1.0, 3.0], np.float32)[:, None, None, None, None]
                 + np.array([0.5, -2.0], np.float32)[:, None, None, None, None])
        arr[i] = block
        count += block[0].size
        s1 += block.astype(np.float64).sum(axis=(1, 2, 3, 4))
    close()
    mean_ref = s1 / count
    s2 = np.zeros(2)
    for i in range(shape[0]):  # second pass for a two-pass (exact) variance
        block = (_field(shape[1:], seed=i) * np.array([1.0, 3.0], np.float32)[:, None, None, None, None]
                 + np.array([0.5, -2.0], np.float32)[:, None, None, None, None])
        s2 += ((block.astype(np.float64) - mean_ref[:, None, None, None, None]) ** 2).sum(axis=(1, 2, 3, 4))
    std_ref = np.sqrt(s2 / count)
    file_bytes = int(np.prod(shape)) * 4
    limit = 2 << 20
    assert file_bytes > 5 * limit
    tracemalloc.start()
    try:
        mean, std = volume_stats(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, peak
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std, std_ref, rtol=1e-12)


def test_bad_arguments(tmp_path):
    vol = _field((1, 1, 4, 4, 4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        VolumeDataset(vol, (5, 4, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        VolumeDataset(vol[0, 0], (2, 2, 2, 2))
    with pytest.raises(ValueError, match="one entry per axis"):
        VolumeDataset(vol, (2, 2, 2))
    with pytest.raises(ValueError, match="positions"):
        VolumeDataset(vol, (2, 2, 2, 2), positions="sobol")
    with pytest.raises(ValueError, match="cannot tell the format"):
        VolumeDataset(str(tmp_path / "x.npy"), (2, 2, 2, 2))
    path = str(tmp_path / "v.h5")
    write_volume(path, vol, patch_shape=(2, 2, 2, 2))
    with pytest.raises(KeyError, match="no dataset 'nope'"):
        VolumeDataset(path, (2, 2, 2, 2), dataset="nope")
    with pytest.raises(IndexError, match="out of range"):
        VolumeDataset(vol, (2, 2, 2, 2), positions="grid")[99]


# ------------------------------------------------------------------ prefetch and pinned memory
def test_prefetcher_keeps_the_next_batch_in_flight():
    pulled = []

    def source():
        for i in range(4):
            pulled.append(i)
            yield {"x": am.full((2,), float(i)), "meta": [am.tensor([i]), "tag"]}

    class Loader:
        def __iter__(self):
            return source()

        def __len__(self):
            return 4

    pf = DevicePrefetcher(Loader(), "cpu")
    assert len(pf) == 4
    it = iter(pf)
    assert pulled == [0]  # the first batch is in flight before anyone asks
    first = next(it)
    assert pulled == [0, 1]  # handing out batch 0 started batch 1
    assert first["x"].tolist() == [0.0, 0.0] and first["meta"][1] == "tag"
    rest = list(it)
    assert [b["meta"][0].item() for b in rest] == [1, 2, 3] and pulled == [0, 1, 2, 3]


def test_prefetcher_copies_non_blocking(monkeypatch):
    seen = []
    orig = am.Tensor.to

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("non_blocking"))
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(am.Tensor, "to", spy)
    list(DevicePrefetcher([am.ones(2), am.ones(2)], "cpu"))
    assert seen == [True, True]
    assert am.ones(2).to("cpu", non_blocking=True).tolist() == [1.0, 1.0]


def test_pin_memory_logic_with_a_stand_in_for_cupyx(monkeypatch):
    """CPU CI covers pin_memory's structure walk; the pinned allocation itself needs a GPU."""
    from avila_ml.data.dataloader import _pin_memory
    allocated = []

    def empty_pinned(shape, dtype):
        a = np.empty(shape, dtype)
        allocated.append(a)
        return a

    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=empty_pinned))
    batch = {"x": am.arange(4.0), "y": (am.tensor([1, 2]), "label")}
    pinned = _pin_memory(batch)
    assert len(allocated) == 2
    assert pinned["x"].array is allocated[0] and pinned["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert pinned["y"][0].array is allocated[1] and pinned["y"][1] == "label"


def test_dataloader_pin_memory_without_a_gpu_is_a_documented_no_op():
    if am.cuda.is_available():
        pytest.skip("a GPU is present: pinning is real there (test_data.test_pin_memory_on_cuda)")
    with pytest.warns(UserWarning, match="no effect"):
        loader = DataLoader(am.data.TensorDataset(am.arange(4.0)), batch_size=2, pin_memory=True)
    b = next(iter(loader))[0]
    assert isinstance(b.array, np.ndarray) and b.tolist() == [0.0, 1.0]
