"""avila_ml.data: collate, datasets, samplers and the DataLoader, compared with torch.utils.data.

Worker tests use small datasets; each checks that no worker process outlives it.
"""
import collections
import gc
import math
import multiprocessing as mp
import os
import pickle
import random
import time

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import avila_ml as am
from avila_ml import data as amd


# -- helpers ---------------------------------------------------------------------------------

def same_structure(ours, theirs, path="batch"):
    """Assert our batch equals PyTorch's: same containers, same values, same dtypes."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, am.Tensor), f"{path}: expected a Tensor, got {type(ours).__name__}"
        assert ours.dtype.name == str(theirs.dtype).replace("torch.", ""), f"{path}: {ours.dtype} vs {theirs.dtype}"
        assert tuple(ours.shape) == tuple(theirs.shape), f"{path}: {ours.shape} vs {tuple(theirs.shape)}"
        np.testing.assert_array_equal(np.asarray(ours.detach().cpu()), theirs.detach().numpy(), err_msg=path)
        return
    assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} vs {type(theirs).__name__}"
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs), path
        for k in theirs:
            same_structure(ours[k], theirs[k], f"{path}[{k!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs)):
            same_structure(a, b, f"{path}[{i}]")
    else:
        assert ours == theirs, path


def to_torch(x):
    """The same sample with our Tensors replaced by torch tensors."""
    if isinstance(x, am.Tensor):
        return torch.from_numpy(np.array(x.detach().cpu()))
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(to_torch(v) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(to_torch(v) for v in x)
    if isinstance(x, dict):
        return type(x)((k, to_torch(v)) for k, v in x.items())
    return x


def wait_gone(pids, timeout=5.0):
    """True once none of ``pids`` is a live child of this process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p.pid for p in mp.active_children()}
        if not alive & set(pids):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def no_leftover_workers():
    """Fails the test if it leaves child processes behind."""
    before = {p.pid for p in mp.active_children()}
    yield
    if {p.pid for p in mp.active_children()} - before:
        gc.collect()  # slow with torch loaded: only when something is left
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and {p.pid for p in mp.active_children()} - before:
        time.sleep(0.02)
    assert not ({p.pid for p in mp.active_children()} - before), "worker processes were left running"


Point = collections.namedtuple("Point", ["x", "y"])


# -- collate ---------------------------------------------------------------------------------

def _samples():
    rng = np.random.default_rng(0)
    return {
        "float32 arrays": [rng.random((2, 3)).astype(np.float32) for _ in range(4)],
        "int64 arrays": [np.arange(3) + i for i in range(3)],
        "bool arrays": [np.array([True, False]), np.array([False, False])],
        "uint8 arrays": [np.array([1, 2], np.uint8), np.array([3, 4], np.uint8)],
        "0-d arrays": [np.array(1.5), np.array(2.5)],
        "size-0 arrays": [np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)],
        "tensors": [am.tensor([1.0, 2.0]), am.tensor([3.0, 4.0])],
        "int tensors": [am.tensor([1, 2]), am.tensor([3, 4])],
        "python floats": [1.5, 2.0, -3.25],
        "python ints": [1, 2, 3],
        "python bools": [True, False],
        "ints then float": [1, 2.5],
        "numpy float32 scalars": [np.float32(1.5), np.float32(2.5)],
        "numpy int16 scalars": [np.int16(1), np.int16(7)],
        "numpy bool scalars": [np.bool_(True), np.bool_(False)],
        "strings": ["a", "bc"],
        "bytes": [b"a", b"bc"],
        "tuple samples": [(np.ones(2), 1), (np.zeros(2), 0)],
        "list samples": [[1.0, "x"], [2.0, "y"]],
        "dict samples": [{"img": np.ones((2, 2), np.float32), "label": 3, "name": "a"},
                         {"img": np.zeros((2, 2), np.float32), "label": 4, "name": "b"}],
        "ordered dicts": [collections.OrderedDict(b=1.0, a=2), collections.OrderedDict(b=3.0, a=4)],
        "namedtuples": [Point(1, np.ones(2)), Point(2, np.zeros(2))],
        "deep nesting": [{"a": [(1, {"b": np.ones(1)}), "s"]}, {"a": [(2, {"b": np.zeros(1)}), "t"]}],
    }


@pytest.mark.parametrize("kind", list(_samples()))
def test_default_collate_matches_pytorch(kind):
    batch = _samples()[kind]
    same_structure(amd.default_collate(batch), tud.default_collate(to_torch(batch)))


@pytest.mark.parametrize("kind", ["dict samples", "tuple samples", "namedtuples", "deep nesting", "list samples"])
def test_default_convert_matches_pytorch(kind):
    sample = _samples()[kind][0]
    same_structure(amd.default_convert(sample), tud.default_convert(to_torch(sample)))


def test_default_collate_tensors_on_device(device):
    batch = [am.tensor([1.0, 2.0], device=device), am.tensor([3.0, 4.0], device=device)]
    out = amd.default_collate(batch)
    assert out.device == device and out.shape == (2, 2)
    assert out.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_default_collate_keeps_the_graph():
    a = am.tensor([1.0, 2.0], dtype=am.float64, requires_grad=True)
    b = am.tensor([3.0, 4.0], dtype=am.float64)
    out = amd.default_collate([a, b])
    assert out.requires_grad
    (out * am.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=am.float64)).sum().backward()
    assert a.grad.tolist() == [1.0, 2.0]


def test_default_collate_promotes_mixed_tensor_dtypes_like_pytorch():
    ours = amd.default_collate([am.tensor([1], dtype=am.int32), am.tensor([2.5])])
    theirs = tud.default_collate([torch.tensor([1], dtype=torch.int32), torch.tensor([2.5])])
    same_structure(ours, theirs)


@pytest.mark.parametrize("batch, exc, match", [
    ([np.ones(2), np.ones(3)], RuntimeError, r"equal shapes.*\(2,\).*\(3,\)"),
    ([am.ones(2), am.ones(3)], RuntimeError, r"equal shapes.*\(2,\).*\(3,\)"),
    ([(1, 2), (1, 2, 3)], RuntimeError, "equal size"),
    ([None, None], TypeError, "found <class 'NoneType'>"),
    ([np.array(["a"]), np.array(["b"])], TypeError, "found <U1"),
    ([np.ones(2, np.uint16), np.ones(2, np.uint16)], TypeError, "uint16"),
    ([], TypeError, "non-empty"),
    ([{"a": 1}, {"b": 2}], KeyError, "lacks key"),
    ([1.0, "x"], TypeError, "sample 1 is a str"),
    ([am.ones(2), np.ones(2)], TypeError, "sample 1 is a ndarray"),
])
def test_default_collate_errors(batch, exc, match):
    with pytest.raises(exc, match=match):
        amd.default_collate(batch)


# -- datasets --------------------------------------------------------------------------------

def test_tensor_dataset(device):
    x = am.arange(12.0, device=device).reshape(4, 3)
    y = am.tensor([0, 1, 0, 1], device=device)
    ds = amd.TensorDataset(x, y)
    assert len(ds) == 4
    xi, yi = ds[2]
    assert xi.tolist() == [6.0, 7.0, 8.0] and yi.item() == 0 and xi.device == device
    with pytest.raises(ValueError, match=r"size mismatch.*\(4, 3\).*\(3,\)"):
        amd.TensorDataset(x, am.zeros(3))
    with pytest.raises(ValueError, match="0-d"):
        amd.TensorDataset(am.tensor(1.0))
    with pytest.raises(ValueError, match="at least one"):
        amd.TensorDataset()
    with pytest.raises(TypeError, match="argument 1 is a list"):
        amd.TensorDataset(x, [1, 2, 3, 4])


def test_subset_concat_chain_match_pytorch():
    a, b, c = list(range(5)), list("xyz"), [10.0, 20.0]
    ours, theirs = amd.ConcatDataset([a, b, c]), tud.ConcatDataset([a, b, c])
    assert len(ours) == len(theirs) == 10 and ours.cumulative_sizes == theirs.cumulative_sizes
    assert [ours[i] for i in range(-10, 10)] == [theirs[i] for i in range(-10, 10)]
    with pytest.raises(IndexError, match="out of range"):
        ours[10]
    with pytest.raises(IndexError, match="out of range"):
        ours[-11]
    with pytest.raises(ValueError, match="empty"):
        amd.ConcatDataset([])
    sub, tsub = amd.Subset(ours, [9, 0, 5]), tud.Subset(theirs, [9, 0, 5])
    assert [sub[i] for i in range(3)] == [tsub[i] for i in range(3)] and len(sub) == 3
    assert sub.__getitems__([0, 2]) == tsub.__getitems__([0, 2])

    class Stream(amd.IterableDataset):
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            return iter(range(self.n))

    with pytest.raises(TypeError, match="IterableDataset"):
        amd.ConcatDataset([a, Stream(2)])
    assert list(Stream(2) + Stream(3)) == [0, 1, 0, 1, 2]


def test_dataset_base_class_errors():
    class NoItem(amd.Dataset):
        pass

    with pytest.raises(TypeError, match="NoItem.*__getitem__"):
        NoItem()[0]
    with pytest.raises(TypeError, match="__iter__"):
        iter(amd.IterableDataset())


@pytest.mark.parametrize("n, lengths", [
    (10, [0.5, 0.3, 0.2]), (11, [0.5, 0.5]), (7, [0.1, 0.2, 0.7]), (5, [0.33, 0.33, 0.34]),
    (3, [0.2, 0.2, 0.2, 0.2, 0.2]), (10, [3, 7]), (4, [1, 0]), (100, [0.9, 0.1]),
])
def test_random_split_sizes_match_pytorch_and_are_disjoint(n, lengths):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = amd.random_split(range(n), lengths, generator=3)
        theirs = tud.random_split(range(n), lengths, generator=torch.Generator().manual_seed(3))
    assert [len(s) for s in ours] == [len(s) for s in theirs]
    items = [x for s in ours for x in s]
    assert sorted(items) == list(range(n))  # disjoint and covering


def test_random_split_reproducible_and_errors():
    a = [list(s) for s in amd.random_split(range(20), [0.5, 0.5], generator=amd.Generator().manual_seed(1))]
    b = [list(s) for s in amd.random_split(range(20), [0.5, 0.5], generator=1)]
    assert a == b
    am.manual_seed(5)
    c = [list(s) for s in amd.random_split(range(20), [10, 10])]
    am.manual_seed(5)
    assert c == [list(s) for s in amd.random_split(range(20), [10, 10])]
    assert c != a or c != [list(s) for s in amd.random_split(range(20), [10, 10])]
    with pytest.raises(ValueError, match="does not equal the length"):
        amd.random_split(range(5), [2, 2])
    with pytest.raises(ValueError, match="not between 0 and 1"):
        amd.random_split(range(5), [1.5, -0.5])
    with pytest.raises(TypeError, match="generator"):
        amd.random_split(range(5), [2, 3], generator="seed")
    with pytest.warns(UserWarning, match="index 1 is 0"):
        amd.random_split(range(2), [0.9, 0.1])


# -- samplers --------------------------------------------------------------------------------

def test_generator():
    g = amd.Generator()
    assert g.initial_seed() == 67280421310721  # PyTorch's default seed
    assert g.manual_seed(7) is g and g.initial_seed() == 7
    state = g.get_state()
    a = am.randperm(10, generator=g).tolist()
    g.set_state(state)
    assert am.randperm(10, generator=g).tolist() == a
    assert amd.Generator(-1).initial_seed() == 2 ** 64 - 1  # wrapped like torch
    s = g.seed()
    assert g.initial_seed() == s
    with pytest.raises(TypeError, match="int seed"):
        g.manual_seed(1.5)


def test_sequential_and_batch_samplers_match_pytorch():
    for n in (1, 5, 8):
        assert list(amd.SequentialSampler(range(n))) == list(tud.SequentialSampler(range(n)))
        for bs in (1, 3, 8, 10):
            for drop_last in (False, True):
                ours = amd.BatchSampler(amd.SequentialSampler(range(n)), bs, drop_last)
                theirs = tud.BatchSampler(tud.SequentialSampler(range(n)), bs, drop_last)
                assert list(ours) == list(theirs) and len(ours) == len(theirs)


@pytest.mark.parametrize("make", [
    lambda m: m.BatchSampler(range(3), 0, False),
    lambda m: m.BatchSampler(range(3), True, False),
    lambda m: m.BatchSampler(range(3), 2, "no"),
    lambda m: m.RandomSampler(range(3), num_samples=0),
    lambda m: m.RandomSampler(range(3), num_samples=1.5),
    lambda m: m.WeightedRandomSampler([1.0, 2.0], num_samples=0),
    lambda m: m.WeightedRandomSampler([[1.0, 2.0]], num_samples=1),
    lambda m: m.WeightedRandomSampler([1.0, 2.0], num_samples=2, replacement=1),
])
def test_sampler_errors_match_pytorch(make):
    with pytest.raises(ValueError):
        make(amd)
    with pytest.raises(ValueError):
        make(tud)


def test_sampler_type_errors():
    with pytest.raises(TypeError, match="replacement"):
        amd.RandomSampler(range(3), replacement=1)
    with pytest.raises(ValueError, match="non-negative"):
        amd.WeightedRandomSampler([1.0, -1.0], 2)
    with pytest.raises(ValueError, match="positive sum"):
        amd.WeightedRandomSampler([0.0, 0.0], 2)
    with pytest.raises(ValueError, match="without replacement"):
        amd.WeightedRandomSampler([1.0, 0.0, 1.0], 3, replacement=False)
    with pytest.raises(TypeError, match="generator"):
        amd.RandomSampler(range(3), generator=1.0)


def _chi2_ok(counts, expected):
    """Pearson chi-square below the 99.9% quantile (draws are seeded: deterministic, not flaky)."""
    from scipy.special import chdtri  # inverse survival function of chi-square
    counts, expected = np.asarray(counts, float), np.asarray(expected, float)
    stat = ((counts - expected) ** 2 / expected).sum()
    return stat < chdtri(len(counts) - 1, 0.001)


def test_random_sampler_statistics_and_reproducibility():
    n = 10
    s = amd.RandomSampler(range(n), generator=0)
    epochs = [list(s) for _ in range(200)]
    assert all(sorted(e) == list(range(n)) for e in epochs)  # permutations
    assert len({tuple(e) for e in epochs}) > 190  # epochs differ
    first = np.array([e[0] for e in epochs])
    assert _chi2_ok(np.bincount(first, minlength=n), [len(first) / n] * n)
    assert [list(amd.RandomSampler(range(n), generator=0)) for _ in range(2)] == [epochs[0]] * 2

    draws = list(amd.RandomSampler(range(n), replacement=True, num_samples=5000, generator=1))
    assert len(draws) == 5000 and _chi2_ok(np.bincount(draws, minlength=n), [500] * n)

    long = list(amd.RandomSampler(range(4), num_samples=10, generator=2))
    assert len(long) == 10 and np.bincount(long).tolist() in ([3, 3, 2, 2], [3, 2, 3, 2], [3, 2, 2, 3],
                                                              [2, 3, 3, 2], [2, 3, 2, 3], [2, 2, 3, 3])
    # the global generator: am.manual_seed fixes every epoch's order
    g = amd.RandomSampler(range(n))
    am.manual_seed(11)
    a = [list(g), list(g)]
    am.manual_seed(11)
    assert [list(g), list(g)] == a and a[0] != a[1]


def test_subset_and_weighted_samplers():
    idx = [3, 8, 1, 9]
    s = amd.SubsetRandomSampler(idx, generator=0)
    assert sorted(s) == sorted(idx) and len(s) == 4
    assert list(amd.SubsetRandomSampler(idx, generator=0)) == list(amd.SubsetRandomSampler(idx, generator=0))

    w = [1.0, 2.0, 0.0, 5.0]
    draws = list(amd.WeightedRandomSampler(w, 8000, generator=0))
    counts = np.bincount(draws, minlength=4)
    assert counts[2] == 0
    assert _chi2_ok(counts[[0, 1, 3]], 8000 * np.array([1, 2, 5]) / 8)
    no_rep = list(amd.WeightedRandomSampler([1.0, 1.0, 1.0, 0.0], 3, replacement=False, generator=0))
    assert sorted(no_rep) == [0, 1, 2]
    assert len(amd.WeightedRandomSampler(am.tensor(w), 7)) == 7


# -- DataLoader: arguments, len, batches -----------------------------------------------------

class Stream(amd.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


class TorchStream(tud.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


@pytest.mark.parametrize("kw", [
    dict(num_workers=-1), dict(timeout=-1), dict(prefetch_factor=2), dict(persistent_workers=True),
    dict(sampler=[0, 1], shuffle=True), dict(batch_sampler=[[0]], batch_size=2),
    dict(batch_sampler=[[0]], shuffle=True), dict(batch_sampler=[[0]], sampler=[0]),
    dict(batch_sampler=[[0]], drop_last=True), dict(batch_size=None, drop_last=True),
    dict(batch_size=0), dict(batch_size=-3),
])
def test_dataloader_invalid_arguments_match_pytorch(kw):
    with pytest.raises(ValueError):
        amd.DataLoader(list(range(4)), **kw)
    with pytest.raises(ValueError):
        tud.DataLoader(list(range(4)), **kw)


@pytest.mark.parametrize("kw", [dict(shuffle=True), dict(sampler=[0]), dict(batch_sampler=[[0]])])
def test_dataloader_iterable_dataset_exclusions_match_pytorch(kw):
    with pytest.raises(ValueError, match="IterableDataset"):
        amd.DataLoader(Stream(3), **kw)
    with pytest.raises(ValueError, match="IterableDataset"):
        tud.DataLoader(TorchStream(3), **kw)


def test_dataloader_own_argument_checks():
    with pytest.raises(ValueError, match="dataset is empty"):
        amd.DataLoader([])
    with pytest.raises(ValueError, match="dataset is empty"):
        amd.DataLoader(amd.TensorDataset(am.zeros(0, 3)), batch_size=2)
    with pytest.raises(ValueError, match="either generator or seed"):
        amd.DataLoader([1], generator=amd.Generator(), seed=1)
    with pytest.raises(ValueError, match="prefetch_factor"):
        amd.DataLoader([1], num_workers=1, prefetch_factor=0)
    with pytest.raises(TypeError, match="collate_fn must be callable"):
        amd.DataLoader([1], collate_fn=3)
    with pytest.raises(TypeError, match="num_workers must be an int"):
        amd.DataLoader([1], num_workers=1.0)
    with pytest.raises(ValueError, match="start method"):
        amd.DataLoader([1], num_workers=1, multiprocessing_context="nope")
    if not am.cuda.is_available():
        with pytest.warns(UserWarning, match="pin_memory=True but no CUDA"):
            amd.DataLoader([1], pin_memory=True)


@pytest.mark.parametrize("n, bs, drop_last", [(10, 3, False), (10, 3, True), (9, 3, False), (1, 4, False), (7, 1, True)])
def test_dataloader_len_and_batches_match_pytorch(n, bs, drop_last):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    ds = amd.TensorDataset(am.tensor(x), am.arange(n))
    tds = tud.TensorDataset(torch.from_numpy(x), torch.arange(n))
    ours = amd.DataLoader(ds, batch_size=bs, drop_last=drop_last)
    theirs = tud.DataLoader(tds, batch_size=bs, drop_last=drop_last)
    assert len(ours) == len(theirs)
    got, want = list(ours), list(theirs)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        same_structure(a, b)
    s_ours = amd.DataLoader(Stream(n), batch_size=bs, drop_last=drop_last)
    s_theirs = tud.DataLoader(TorchStream(n), batch_size=bs, drop_last=drop_last)
    assert [b.tolist() for b in s_ours] == [b.tolist() for b in s_theirs]


def test_dataloader_without_batching_and_with_batch_sampler():
    samples = [{"a": np.ones(2) * i, "s": "x"} for i in range(3)]
    ours = list(amd.DataLoader(samples, batch_size=None))
    theirs = list(tud.DataLoader(samples, batch_size=None))
    for a, b in zip(ours, theirs):
        same_structure(a, b)
    bs = [[2, 0], [1]]
    assert [b.tolist() for b in amd.DataLoader(list(range(10, 13)), batch_sampler=bs)] == [[12, 10], [11]]
    assert len(amd.DataLoader(list(range(3)), batch_sampler=bs)) == 2
    with pytest.raises(TypeError):
        len(amd.DataLoader(amd.IterableDataset()))


# -- DataLoader: workers --------------------------------------------------------------------

class Indexed(amd.Dataset):
    """Returns its index; optional per-item sleep or failure."""

    def __init__(self, n, fail_at=None, exc=ValueError, sleep_at=None, sleep=0.0, exit_at=None):
        self.n, self.fail_at, self.exc, self.sleep_at, self.sleep, self.exit_at = n, fail_at, exc, sleep_at, sleep, exit_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise self.exc(f"boom at {i}")
        if i == self.sleep_at:
            time.sleep(self.sleep)
        if i == self.exit_at:
            os._exit(3)
        return i


class RandomItems(amd.Dataset):
    """Random draws from every generator a worker seeds, plus who drew them."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        info = amd.get_worker_info()
        return {"np": float(np.random.rand()), "py": random.random(), "am": float(am.rand(1).item()),
                "wid": -1 if info is None else info.id, "seed": -1 if info is None else info.seed}


def _epochs(loader, n=2):
    return [[b.tolist() for b in loader] for _ in range(n)]


def test_batch_order_is_the_same_for_any_num_workers(no_leftover_workers):
    runs = []
    for nw in (0, 1, 2):
        am.manual_seed(123)
        runs.append(_epochs(amd.DataLoader(Indexed(23), batch_size=4, shuffle=True, num_workers=nw)))
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][0] != runs[0][1]  # epochs differ
    assert sorted(sum(runs[0][0], [])) == list(range(23))
    seeded = [_epochs(amd.DataLoader(Indexed(23), batch_size=5, shuffle=True, num_workers=nw, seed=9))
              for nw in (0, 2)]
    assert seeded[0] == seeded[1]


def _random_run(nw, **kw):
    am.manual_seed(2024)
    loader = amd.DataLoader(RandomItems(), batch_size=2, num_workers=nw, **kw)
    return [dict((k, v.tolist()) for k, v in b.items()) for b in loader]


def test_worker_seeds_distinct_and_reproducible(no_leftover_workers):
    a, b = _random_run(2), _random_run(2)
    assert a == b  # same seed, same values
    wids = [w for batch in a for w in batch["wid"]]
    assert set(wids) == {0, 1}
    for key in ("np", "py", "am"):
        vals = [v for batch in a for v in batch[key]]
        assert len(set(vals)) == len(vals), f"{key}: duplicated random values across workers"
    seeds = {w: s for batch in a for w, s in zip(batch["wid"], batch["seed"])}
    assert seeds[1] == seeds[0] + 1  # base_seed + worker_id
    c = _random_run(2, seed=1)
    assert c != a and _random_run(2, seed=1) == c


def _plain_epoch(loader):
    return [dict((k, v.tolist()) for k, v in b.items()) for b in loader]


def test_persistent_workers(no_leftover_workers):
    am.manual_seed(3)
    plain_loader = amd.DataLoader(RandomItems(), batch_size=4, num_workers=2, shuffle=True)
    plain = [_plain_epoch(plain_loader) for _ in range(2)]
    am.manual_seed(3)
    loader = amd.DataLoader(RandomItems(), batch_size=4, num_workers=2, shuffle=True, persistent_workers=True)
    it = iter(loader)
    pids = [w.pid for w in it._workers]
    first = _plain_epoch(it)
    it2 = iter(loader)
    assert it2 is it and [w.pid for w in it2._workers] == pids and all(w.is_alive() for w in it2._workers)
    second = _plain_epoch(it2)
    assert [first, second] == plain  # re-seeded per epoch: the same as fresh workers
    assert first != second
    # an epoch stopped early leaves batches in flight; the next epoch must not see them
    it = iter(loader)
    next(it)
    third = _plain_epoch(iter(loader))
    assert len(third) == 4 and sorted(sum((b["wid"] for b in third), [])) == [0] * 8 + [1] * 8
    del it, it2, loader
    gc.collect()
    assert wait_gone(pids)


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


def test_worker_exception_is_reraised_with_traceback(no_leftover_workers):
    loader = amd.DataLoader(Indexed(8, fail_at=5), batch_size=2, num_workers=2)
    it = iter(loader)
    assert next(it).tolist() == [0, 1] and next(it).tolist() == [2, 3]
    with pytest.raises(ValueError) as info:
        next(it)
    msg = str(info.value)
    assert "Caught ValueError in DataLoader worker process 0" in msg
    assert "Traceback (most recent call last)" in msg and "boom at 5" in msg and "__getitem__" in msg
    assert next(it).tolist() == [6, 7]  # the iterator goes on, like PyTorch's
    with pytest.raises(StopIteration):
        next(it)

    def raise_two(batch):
        raise NeedsTwoArgs(1, 2)

    with pytest.raises(RuntimeError, match="Caught NeedsTwoArgs in DataLoader worker process 0"):
        list(amd.DataLoader(Indexed(4), batch_size=2, num_workers=1, collate_fn=raise_two))

    class LocalError(Exception):
        pass  # defined in a function: its type cannot be pickled back

    def raise_local(batch):
        raise LocalError("local")

    with pytest.raises(RuntimeError, match="(?s)Caught LocalError.*LocalError: local"):
        list(amd.DataLoader(Indexed(4), batch_size=2, num_workers=1, collate_fn=raise_local))
    with pytest.raises(KeyError, match="boom at 1"):
        list(amd.DataLoader(Indexed(4, fail_at=1, exc=KeyError), batch_size=2, num_workers=1))

    def bad_init(worker_id):
        raise OSError(f"init failed in {worker_id}")

    with pytest.raises(OSError, match="init failed in 0"):
        list(amd.DataLoader(Indexed(4), batch_size=2, num_workers=1, worker_init_fn=bad_init))
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError), match="could not be pickled"):
        list(amd.DataLoader(Indexed(4), batch_size=2, num_workers=1, collate_fn=lambda b: (lambda: b)))


def test_worker_init_fn_and_worker_info(no_leftover_workers):
    def init(worker_id):
        info = amd.get_worker_info()
        info.dataset.tag = f"w{worker_id}/{info.num_workers}"

    class Tagged(amd.Dataset):
        tag = "main"

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return self.tag

    out = list(amd.DataLoader(Tagged(), batch_size=1, num_workers=2, worker_init_fn=init))
    assert out == [["w0/2"], ["w1/2"], ["w0/2"], ["w1/2"]]
    assert amd.get_worker_info() is None


@pytest.mark.parametrize("stop", ["del", "gc", "exception"])
def test_early_stop_leaves_no_process(stop, no_leftover_workers):
    loader = amd.DataLoader(Indexed(100), batch_size=2, num_workers=2)
    it = iter(loader)
    pids = [w.pid for w in it._workers]
    assert next(it).tolist() == [0, 1]
    if stop == "del":
        del it
    elif stop == "gc":
        cycle = [it]
        cycle.append(cycle)  # only the cycle collector can free it
        del it, cycle
        gc.collect()
    else:
        del it
        with pytest.raises(ZeroDivisionError):
            for batch in loader:
                1 / 0
        pids += [p.pid for p in mp.active_children()]
    assert wait_gone(pids), "workers still alive after the iterator was dropped"


def test_for_loop_break_shuts_down(no_leftover_workers):
    before = {p.pid for p in mp.active_children()}
    for batch in amd.DataLoader(Indexed(100), batch_size=2, num_workers=2):
        assert len({p.pid for p in mp.active_children()} - before) == 2
        break
    assert wait_gone({p.pid for p in mp.active_children()} - before)


def test_timeout_and_dead_worker(no_leftover_workers):
    loader = amd.DataLoader(Indexed(4, sleep_at=0, sleep=1.0), batch_size=2, num_workers=1, timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out after 0.2 seconds"):
        next(iter(loader))
    assert time.monotonic() - t0 < 5
    loader = amd.DataLoader(Indexed(6, exit_at=3), batch_size=2, num_workers=2)
    with pytest.raises(RuntimeError, match="exited unexpectedly.*exit code 3"):
        list(loader)
    # a slow batch without timeout is fine
    assert [b.tolist() for b in amd.DataLoader(Indexed(2, sleep_at=1, sleep=0.6), batch_size=1, num_workers=1)] == [[0], [1]]


def test_prefetch_bound(no_leftover_workers):
    it = iter(amd.DataLoader(Indexed(40), batch_size=1, num_workers=2, prefetch_factor=3))
    seen = []
    for b in it:
        assert it._send_idx - it._rcvd_idx <= 6
        seen.append(b.item())
    assert seen == list(range(40))


class ShardedStream(amd.IterableDataset):
    def __init__(self, n, shard=True):
        self.n, self.shard = n, shard

    def __iter__(self):
        info = amd.get_worker_info()
        if info is None or not self.shard:
            return iter(range(self.n))
        return iter(range(info.id, self.n, info.num_workers))


class TorchShardedStream(tud.IterableDataset):
    def __init__(self, n, shard=True):
        self.n, self.shard = n, shard

    def __iter__(self):
        info = tud.get_worker_info()
        if info is None or not self.shard:
            return iter(range(self.n))
        return iter(range(info.id, self.n, info.num_workers))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("n, bs, nw, shard, drop_last", [
    (20, 3, 2, True, False), (11, 2, 2, True, True), (5, 4, 3, True, False), (7, 3, 2, False, False),
])
def test_iterable_dataset_with_workers_matches_pytorch(n, bs, nw, shard, drop_last, no_leftover_workers):
    ours = [b.tolist() for b in amd.DataLoader(ShardedStream(n, shard), batch_size=bs, num_workers=nw,
                                               drop_last=drop_last)]
    theirs = [b.tolist() for b in tud.DataLoader(TorchShardedStream(n, shard), batch_size=bs, num_workers=nw,
                                                 drop_last=drop_last, multiprocessing_context="fork")]
    assert ours == theirs
    if shard and not drop_last:
        assert sorted(sum(ours, [])) == list(range(n))


def test_iterable_dataset_persistent_workers(no_leftover_workers):
    loader = amd.DataLoader(ShardedStream(9), batch_size=2, num_workers=2, persistent_workers=True)
    a = [b.tolist() for b in loader]
    assert [b.tolist() for b in loader] == a and sorted(sum(a, [])) == list(range(9))


def test_spawn_context(no_leftover_workers):
    # a dataset class from avila_ml: the spawned child imports avila_ml, not this module (and torch)
    ds = amd.TensorDataset(am.arange(6))
    am.manual_seed(0)
    out = [b.tolist() for (b,) in amd.DataLoader(ds, batch_size=2, num_workers=1, shuffle=True,
                                                 multiprocessing_context="spawn")]
    am.manual_seed(0)
    assert out == [b.tolist() for (b,) in amd.DataLoader(ds, batch_size=2, shuffle=True)]

    class Local(amd.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return i

    with pytest.raises(RuntimeError, match="could not start worker process.*picklable"):
        iter(amd.DataLoader(Local(), num_workers=1, multiprocessing_context="spawn"))


def test_dataloader_with_tensor_dataset_and_workers(device, no_leftover_workers):
    x = am.arange(24.0, device="cpu").reshape(12, 2)
    ds = amd.TensorDataset(x, am.arange(12))
    got = [(a.tolist(), b.tolist()) for a, b in amd.DataLoader(ds, batch_size=5, num_workers=2)]
    want = [(a.tolist(), b.tolist()) for a, b in tud.DataLoader(
        tud.TensorDataset(torch.arange(24.0).reshape(12, 2), torch.arange(12)), batch_size=5)]
    assert got == want
    batch = next(iter(amd.DataLoader(ds, batch_size=4)))
    moved = [t.to(device) for t in batch]
    assert moved[0].device == device and math.isclose(moved[0].sum().item(), 28.0)


@pytest.mark.skipif(not am.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_pin_memory_on_cuda(no_leftover_workers):
    import cupy
    batch = next(iter(amd.DataLoader(Indexed(4), batch_size=2, pin_memory=True)))
    ptr = batch.array.ctypes.data
    attrs = cupy.cuda.runtime.pointerGetAttributes(ptr)
    assert attrs.type == cupy.cuda.runtime.memoryTypeHost
    assert batch.tolist() == [0, 1]
