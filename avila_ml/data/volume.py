"""Out-of-core 4-D volumes: patches streamed from HDF5 or Zarr arrays that do not fit in memory.

An array on disk is either a stack of samples ``(samples, C, t, x, y, z)`` or one huge field
``(C, t, x, y, z)`` (read as a single sample). :class:`VolumeDataset` cuts fixed-shape patches
``(C, pt, px, py, pz)`` out of it at random or grid positions, reading the array *chunk by
chunk*: it works out which chunks a patch touches, reads each of those whole (the unit HDF5 and
Zarr store and decompress anyway), keeps them in an optional LRU cache with a byte budget, and
copies the overlaps into the patch. It never reads a chunk the patch does not touch, and
``stats["chunk_reads"]`` counts what it read.

The file is opened lazily in the process that reads it, and reopened after a fork, so
``DataLoader(num_workers > 0)`` workers each get their own handle (h5py handles must not cross a
fork). Random positions depend only on ``(seed, epoch, index)``, never on which worker reads
them, so a run is the same for any ``num_workers``.

Chunk shape rule of :func:`create_volume` / :func:`write_volume`: one sample, all channels, and
half the patch edge (rounded up) on each of t, x, y, z, halved further along the longest axis
until a chunk holds at most ``max_chunk_bytes`` (4 MiB). Then a patch at a random offset touches
at most 3 chunks per axis, reading at most ``(3/2)^4 ~ 5x`` its own size (chunks equal to the
patch would read up to ``2^4 = 16x``), and a chunk-aligned patch reads exactly its own bytes.
"""
from __future__ import annotations

import collections
import itertools
import math
import os

import numpy as np

from .dataset import Dataset

__all__ = ["VolumeDataset", "create_volume", "write_volume", "volume_stats", "chunk_shape_for"]

_MAX_CHUNK_BYTES = 4 << 20


# ----------------------------------------------------------------------------- opening files
def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"avila_ml.data.volume: reading/writing this format needs the {module} package; "
                          "install the data extra: `pip install avila-ml[data]`") from None


def _kind_of(path: str) -> str:
    low = path.lower().rstrip("/")
    if low.endswith((".h5", ".hdf5", ".hdf", ".he5")):
        return "hdf5"
    if low.endswith(".zarr") or os.path.isdir(path):
        return "zarr"
    raise ValueError(f"VolumeDataset: cannot tell the format of {path!r}: use a .h5/.hdf5 file or a .zarr directory")


def _open(path: str, dataset: str, kind: str):
    """(array, handle to close) for reading."""
    if kind == "hdf5":
        h5py = _need("h5py")
        f = h5py.File(path, "r")
        if dataset not in f:
            names = list(f.keys())
            f.close()
            raise KeyError(f"VolumeDataset: {path!r} has no dataset {dataset!r}; it holds {names}")
        return f[dataset], f
    zarr = _need("zarr")
    node = zarr.open(path, mode="r")
    if hasattr(node, "shape"):  # the path is an array itself
        return node, None
    if dataset not in node:
        raise KeyError(f"VolumeDataset: {path!r} has no array {dataset!r}; it holds {list(node.keys())}")
    return node[dataset], None


def chunk_shape_for(shape, patch_shape, itemsize: int, max_chunk_bytes: int = _MAX_CHUNK_BYTES) -> tuple:
    """The chunk shape the writer uses for an array ``shape`` read in patches ``patch_shape``.

    Math: ``(1, C, ceil(pt/2), ceil(px/2), ceil(py/2), ceil(pz/2))`` (no sample axis for a 5-d
    field), clipped to the array, then the longest spatial edge halved until the chunk holds
    at most ``max_chunk_bytes``. (PyTorch has no counterpart.)

    Example:
        >>> from avila_ml.data.volume import chunk_shape_for
        >>> chunk_shape_for((10, 2, 16, 32, 32, 32), (8, 16, 16, 16), itemsize=4)
        (1, 2, 4, 8, 8, 8)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (5, 6):
        raise ValueError(f"chunk_shape_for: expected a (samples, C, t, x, y, z) or (C, t, x, y, z) shape, got {shape}")
    if len(patch_shape) != 4:
        raise ValueError(f"chunk_shape_for: patch_shape must have 4 entries (t, x, y, z), got {tuple(patch_shape)}")
    lead = shape[:-4]
    spatial = [max(1, min(n, math.ceil(p / 2))) for n, p in zip(shape[-4:], patch_shape)]
    head = ((1,) if len(lead) == 2 else ()) + (lead[-1],)
    while int(np.prod(head + tuple(spatial))) * itemsize > max_chunk_bytes and max(spatial) > 1:
        i = int(np.argmax(spatial))
        spatial[i] = math.ceil(spatial[i] / 2)
    return head + tuple(spatial)


def create_volume(path: str, shape, dtype=np.float32, patch_shape=None, chunks=None, dataset: str = "data",
                  compression=None, max_chunk_bytes: int = _MAX_CHUNK_BYTES):
    """Create an empty chunked volume on disk and return ``(array, close)``: write slabs into
    ``array`` (``array[i0:i1] = block``) and call ``close()`` when done. (No PyTorch counterpart.)

    The format follows the path: ``.h5``/``.hdf5`` (h5py) or ``.zarr`` (zarr). ``chunks``
    defaults to :func:`chunk_shape_for` ``(shape, patch_shape)``; ``compression`` is passed to
    h5py (``"gzip"``, ``"lzf"``) and ignored by Zarr (its default codec applies).

    Example:
        >>> import os, tempfile, numpy as np
        >>> from avila_ml.data.volume import create_volume
        >>> path = os.path.join(tempfile.mkdtemp(), "field.h5")
        >>> arr, close = create_volume(path, (1, 4, 8, 8, 8), patch_shape=(4, 4, 4, 4))
        >>> arr[:, :2] = np.ones((1, 2, 8, 8, 8), np.float32); arr.chunks; close()
        (1, 2, 2, 2, 2)
    """
    shape = tuple(int(s) for s in shape)
    itemsize = np.dtype(dtype).itemsize
    if chunks is None:
        if patch_shape is None:
            patch_shape = tuple(min(n, 32) for n in shape[-4:])
        chunks = chunk_shape_for(shape, patch_shape, itemsize, max_chunk_bytes)
    chunks = tuple(int(c) for c in chunks)
    kind = _kind_of(path)
    if kind == "hdf5":
        h5py = _need("h5py")
        f = h5py.File(path, "w")
        arr = f.create_dataset(dataset, shape=shape, dtype=dtype, chunks=chunks, compression=compression)
        return arr, f.close
    zarr = _need("zarr")
    group = zarr.open_group(path, mode="w")
    arr = group.create_array(dataset, shape=shape, chunks=chunks, dtype=dtype)
    return arr, lambda: None


def write_volume(path: str, data, patch_shape=None, chunks=None, dataset: str = "data", compression=None,
                 max_chunk_bytes: int = _MAX_CHUNK_BYTES) -> tuple:
    """Write a NumPy array ``(samples, C, t, x, y, z)`` or ``(C, t, x, y, z)`` — or a sequence of
    per-sample ``(C, t, x, y, z)`` arrays, written one at a time — to a chunked HDF5/Zarr file;
    return the chunk shape used (see :func:`chunk_shape_for`). (No PyTorch counterpart.)

    Example:
        >>> import os, tempfile, numpy as np
        >>> from avila_ml.data.volume import write_volume
        >>> path = os.path.join(tempfile.mkdtemp(), "stack.zarr")
        >>> write_volume(path, np.zeros((3, 1, 4, 8, 8, 8), np.float32), patch_shape=(4, 8, 8, 8))
        (1, 1, 2, 4, 4, 4)
    """
    if isinstance(data, np.ndarray):
        arrays, shape, dtype = None, data.shape, data.dtype
    else:
        # a sized iterable of samples: only one sample is in memory at a time
        if not hasattr(data, "__len__"):
            raise TypeError("write_volume: data must be a NumPy array or a sized sequence of (C, t, x, y, z) "
                            f"arrays, got {type(data).__name__}")
        arrays = iter(data)
        try:
            first = np.asarray(next(arrays))
        except StopIteration:
            raise ValueError("write_volume: no arrays to write") from None
        if first.ndim != 5:
            raise ValueError(f"write_volume: a sequence must hold (C, t, x, y, z) arrays, got one of shape {first.shape}")
        shape, dtype = (len(data),) + first.shape, first.dtype
    if len(shape) not in (5, 6):
        raise ValueError(f"write_volume: expected a (samples, C, t, x, y, z) or (C, t, x, y, z) array, got shape {shape}")
    arr, close = create_volume(path, shape, dtype, patch_shape, chunks, dataset, compression, max_chunk_bytes)
    try:
        if arrays is None:
            step = arr.chunks[0]
            for i in range(0, shape[0], step):  # slab by slab along the first axis
                arr[i:i + step] = data[i:i + step]
        else:
            arr[0] = first
            for i, a in enumerate(arrays, start=1):
                a = np.asarray(a, dtype=dtype)
                if a.shape != first.shape:
                    raise ValueError(f"write_volume: sample {i} has shape {a.shape}, expected {first.shape}")
                arr[i] = a
        return tuple(arr.chunks)
    finally:
        close()


# ----------------------------------------------------------------------------- the reader
class _ChunkReader:
    """Reads regions of an array as whole chunks, with an LRU cache of ``cache_bytes``."""

    def __init__(self, array, chunks, cache_bytes: int):
        self.array = array
        self.shape = tuple(array.shape)
        self.chunks = tuple(chunks)
        self.cache_bytes = int(cache_bytes)
        self.cache = collections.OrderedDict()
        self.cached_bytes = 0
        self.stats = {"chunk_reads": 0, "cache_hits": 0, "bytes_read": 0}

    def chunk(self, key):
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            self.stats["cache_hits"] += 1
            return hit
        region = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, self.chunks, self.shape))
        data = np.asarray(self.array[region])
        self.stats["chunk_reads"] += 1
        self.stats["bytes_read"] += data.nbytes
        if self.cache_bytes > 0 and data.nbytes <= self.cache_bytes:
            self.cache[key] = data
            self.cached_bytes += data.nbytes
            while self.cached_bytes > self.cache_bytes:
                _, old = self.cache.popitem(last=False)
                self.cached_bytes -= old.nbytes
        return data

    def read(self, starts, lengths, periodic, out):
        """Fill ``out`` with the region starting at ``starts`` (lengths ``lengths``), wrapping
        the axes flagged in ``periodic``; reads only the chunks the region touches."""
        per_axis = [_axis_runs(s, p, n, c, w) for s, p, n, c, w in zip(starts, lengths, self.shape, self.chunks, periodic)]
        for combo in itertools.product(*per_axis):
            key = tuple(r[0] for r in combo)
            data = self.chunk(key)
            src = tuple(slice(r[1], r[2]) for r in combo)
            dst = tuple(slice(r[3], r[3] + r[2] - r[1]) for r in combo)
            out[dst] = data[src]
        return out


def _axis_runs(start, length, n, chunk, periodic):
    """Along one axis: [(chunk index, src lo, src hi (within the chunk), dst lo)] covering
    positions start .. start+length-1 (taken mod n when periodic)."""
    runs = []
    dst = 0
    pos = start % n if periodic else start
    while dst < length:
        k = pos // chunk
        lo = pos - k * chunk
        chunk_end = min((k + 1) * chunk, n)
        take = min(chunk_end - pos, length - dst)
        runs.append((k, lo, lo + take, dst))
        dst += take
        pos += take
        if pos >= n:
            if not periodic and dst < length:
                raise IndexError(f"VolumeDataset: patch [{start}, {start + length}) runs past the axis of size {n}")
            pos = 0
    return runs


class VolumeDataset(Dataset):
    """Fixed-shape patches of a 4-D volume on disk (HDF5 or Zarr), read chunk by chunk.
    (PyTorch has no counterpart; it is a map-style ``torch.utils.data.Dataset``.)

    ``source``: a path (``.h5``/``.hdf5`` file or ``.zarr`` directory; ``dataset`` names the
    array inside), an open h5py dataset (reopened by file name in each process), a Zarr array,
    or a NumPy array. Its shape is ``(samples, C, t, x, y, z)`` or ``(C, t, x, y, z)``.

    ``patch_shape`` ``(pt, px, py, pz)``; an item is a float Tensor ``(C, pt, px, py, pz)``
    (``dtype`` casts it; ``transform`` is applied last), or ``(patch, (sample, t0, x0, y0, z0))``
    with ``return_position=True``.

    ``positions="random"``: item ``i`` is a sample and a start drawn from
    ``numpy.random.default_rng([seed, epoch, i])`` (``seed`` defaults to a draw from the global
    generator, so :func:`avila_ml.manual_seed` fixes it; :meth:`set_epoch` draws new patches);
    ``num_patches`` items (default: as many as non-overlapping patches fit). With
    ``chunk_aligned=True`` starts are multiples of the chunk shape, so a patch touches the fewest
    chunks. ``positions="grid"``: every start ``0, stride, 2 stride, ...`` per axis (``stride``
    defaults to the patch: no overlap; a smaller stride overlaps), plus one final start flush
    with the end if the grid does not reach it, over every sample, in C order.

    ``periodic``: a bool or one per axis (t, x, y, z): a periodic axis wraps around (random
    starts then range over the whole axis, grid starts go up to the end). ``cache_bytes``: LRU
    cache of whole chunks (0: none). ``samples``: the sample indices to draw from (a
    train/validation split of one file); default all.

    Math: patch = ``V[s, :, (t0 + i) mod T, (x0 + j) mod X, ...]`` (mod only on periodic axes).

    Example:
        >>> import os, tempfile, numpy as np, avila_ml as am
        >>> from avila_ml.data import VolumeDataset, write_volume
        >>> path = os.path.join(tempfile.mkdtemp(), "f.h5")
        >>> _ = write_volume(path, np.arange(2 * 4 * 6 * 6 * 6, dtype=np.float32).reshape(2, 4, 6, 6, 6),
        ...                  patch_shape=(2, 4, 4, 4))
        >>> ds = VolumeDataset(path, (2, 4, 4, 4), positions="grid", periodic=True, stride=(2, 3, 3, 3))
        >>> len(ds), ds[0].shape, ds.stats["chunk_reads"]
        (16, (2, 2, 4, 4, 4), 16)
    """

    def __init__(self, source, patch_shape, *, dataset: str = "data", positions: str = "random",
                 num_patches=None, stride=None, periodic=False, chunk_aligned: bool = False,
                 cache_bytes: int = 0, seed=None, dtype=None, transform=None, return_position: bool = False,
                 samples=None):
        self._path = None
        self._array = None
        self._kind = None
        self._dataset = dataset
        if isinstance(source, (str, os.PathLike)):
            self._path = os.fspath(source)
            self._kind = _kind_of(self._path)
            arr, handle = _open(self._path, dataset, self._kind)
            shape, chunks, np_dtype = tuple(arr.shape), arr.chunks, np.dtype(arr.dtype)
            if handle is not None:
                handle.close()  # nothing stays open across a fork
        elif type(source).__module__.startswith("h5py"):
            self._path, self._kind, self._dataset = source.file.filename, "hdf5", source.name
            shape, chunks, np_dtype = tuple(source.shape), source.chunks, np.dtype(source.dtype)
        else:
            if not (hasattr(source, "shape") and hasattr(source, "__getitem__")):
                raise TypeError(f"VolumeDataset: source must be a path, an h5py/Zarr array or a NumPy array, "
                                f"got {type(source).__name__}")
            self._array = source
            shape, chunks, np_dtype = tuple(source.shape), getattr(source, "chunks", None), np.dtype(source.dtype)
        if len(shape) not in (5, 6):
            raise ValueError(f"VolumeDataset: expected an array of shape (samples, C, t, x, y, z) or (C, t, x, y, z), "
                             f"got shape {shape}")
        self._field = len(shape) == 5  # one field: a virtual samples axis of size 1
        self.shape = shape if not self._field else (1,) + shape
        self.spatial = self.shape[2:]
        self.patch_shape = _four(patch_shape, "patch_shape")
        self.periodic = _four(periodic, "periodic", bool)
        for p, n, w, ax in zip(self.patch_shape, self.spatial, self.periodic, "txyz"):
            if p < 1 or (p > n and not w):
                raise ValueError(f"VolumeDataset: patch_shape {self.patch_shape} does not fit the volume "
                                 f"{self.spatial} along {ax} (which is not periodic)")
        if chunks is None:  # a contiguous array: read patch-sized pieces
            chunks = (1, self.shape[1]) + self.patch_shape
        chunks = tuple(int(c) for c in chunks)
        self.chunks = (1,) + chunks if self._field else chunks
        self.stride = self.patch_shape if stride is None else _four(stride, "stride")
        if any(s < 1 for s in self.stride):
            raise ValueError(f"VolumeDataset: stride must be positive, got {self.stride}")
        if positions not in ("random", "grid"):
            raise ValueError(f"VolumeDataset: positions must be 'random' or 'grid', got {positions!r}")
        self.positions = positions
        self.chunk_aligned = bool(chunk_aligned)
        self.cache_bytes = int(cache_bytes)
        self.np_dtype = np_dtype
        self.out_dtype = dtype
        self.transform = transform
        self.return_position = bool(return_position)
        self.epoch = 0
        if seed is None:
            from .sampler import _draw_seed
            seed = _draw_seed(None)
        self.seed = int(seed)
        self.samples = list(range(self.shape[0])) if samples is None else [int(i) for i in samples]
        if not self.samples or any(not 0 <= i < self.shape[0] for i in self.samples):
            raise ValueError(f"VolumeDataset: samples must be a non-empty list of indices below {self.shape[0]}, "
                             f"got {samples!r}")
        self._grid = [self._grid_starts(n, p, s, w) for n, p, s, w in
                      zip(self.spatial, self.patch_shape, self.stride, self.periodic)]
        if positions == "grid":
            self._len = len(self.samples) * int(np.prod([len(g) for g in self._grid]))
        else:
            per_sample = int(np.prod([max(1, n // p) for n, p in zip(self.spatial, self.patch_shape)]))
            self._len = int(num_patches) if num_patches is not None else len(self.samples) * per_sample
        self._reader = None
        self._pid = None
        self._handle = None

    @staticmethod
    def _grid_starts(n, p, s, periodic):
        if periodic:
            return list(range(0, n, s))
        starts = list(range(0, n - p + 1, s))
        if starts[-1] != n - p:
            starts.append(n - p)  # the last patch ends flush with the volume
        return starts

    # -- per-process file handles --------------------------------------------------------
    def _reader_here(self) -> _ChunkReader:
        pid = os.getpid()
        if self._reader is None or self._pid != pid:
            # first read in this process (or after a fork): open our own handle; a handle
            # inherited through fork is dropped without touching it
            self._handle = None
            if self._array is not None:
                arr = self._array if not self._field else _Unsqueezed(self._array)
            else:
                arr, self._handle = _open(self._path, self._dataset, self._kind)
                if self._field:
                    arr = _Unsqueezed(arr)
            self._reader = _ChunkReader(arr, self.chunks, self.cache_bytes)
            self._pid = pid
        return self._reader

    def close(self) -> None:
        """Close this process's file handle (it is reopened on the next read)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = self._reader = self._pid = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_reader"] = state["_handle"] = state["_pid"] = None  # spawn/pickle: reopen over there
        return state

    @property
    def stats(self) -> dict:
        """This process's read counters: ``chunk_reads``, ``cache_hits``, ``bytes_read``."""
        return self._reader_here().stats

    # -- positions -------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of random positions (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._len

    def position(self, index: int) -> tuple:
        """``(sample, t0, x0, y0, z0)`` of item ``index``."""
        if not -self._len <= index < self._len:
            raise IndexError(f"VolumeDataset: index {index} is out of range for {self._len} patches")
        index %= self._len
        if self.positions == "grid":
            counts = [len(g) for g in self._grid]
            sample, rest = divmod(index, int(np.prod(counts)))
            idx = np.unravel_index(rest, counts)
            return (self.samples[sample],) + tuple(int(g[i]) for g, i in zip(self._grid, idx))
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = self.samples[int(rng.integers(len(self.samples)))]
        starts = []
        for n, p, w, c in zip(self.spatial, self.patch_shape, self.periodic, self.chunks[2:]):
            hi = n if w else n - p + 1  # starts in [0, hi)
            if self.chunk_aligned:
                starts.append(int(rng.integers(0, (hi - 1) // c + 1)) * c)
            else:
                starts.append(int(rng.integers(0, hi)))
        return (sample,) + tuple(starts)

    def __getitem__(self, index):
        pos = self.position(int(index))
        reader = self._reader_here()
        out = np.empty((self.shape[1],) + self.patch_shape, dtype=self.np_dtype)
        reader.read((pos[0], 0) + pos[1:], (1, self.shape[1]) + self.patch_shape,
                    (False, False) + self.periodic, out[None])
        from ..tensor import Tensor
        patch = Tensor(out)
        if self.out_dtype is not None:
            patch = patch.to(self.out_dtype)
        if self.transform is not None:
            patch = self.transform(patch)
        return (patch, pos) if self.return_position else patch


class _Unsqueezed:
    """A 5-d array seen as 6-d with a leading axis of size 1 (one field = one sample)."""

    def __init__(self, array):
        self.array = array
        self.shape = (1,) + tuple(array.shape)

    def __getitem__(self, region):
        return np.asarray(self.array[region[1:]])[None]


def _four(value, name, kind=int) -> tuple:
    vals = (value,) * 4 if isinstance(value, (int, bool, np.integer)) else tuple(value)
    if len(vals) != 4:
        raise ValueError(f"VolumeDataset: {name} needs one entry per axis (t, x, y, z), got {value!r}")
    return tuple(kind(v) for v in vals)


# ----------------------------------------------------------------------------- statistics
def volume_stats(source, dataset: str = "data", progress: bool = False, cache=None):
    """Per-channel mean and standard deviation of a volume in one streaming pass over its
    chunks (memory: one chunk). Returns two float64 NumPy arrays of length C.
    (No PyTorch counterpart.)

    Math: each chunk gives per channel ``(n_b, mean_b, M2_b)``; they are merged with Chan et
    al.'s pairwise update ``delta = mean_b - mean``, ``mean += delta n_b / n``,
    ``M2 += M2_b + delta^2 n n_b / (n + n_b)``, so no sum of squares loses precision;
    ``std = sqrt(M2 / N)`` (population std, what normalisation uses).

    Example:
        >>> import os, tempfile, numpy as np
        >>> from avila_ml.data.volume import write_volume, volume_stats
        >>> path = os.path.join(tempfile.mkdtemp(), "s.h5")
        >>> v = np.stack([np.full((2, 4, 4, 4), 3.0), np.arange(128.0).reshape(2, 4, 4, 4)]).astype(np.float32)
        >>> _ = write_volume(path, v, patch_shape=(2, 2, 2, 2))
        >>> mean, std = volume_stats(path)
        >>> mean.tolist(), np.round(std, 4).tolist()
        ([3.0, 63.5], [0.0, 36.9493])
    """
    handle = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        arr, handle = _open(path, dataset, _kind_of(path))
    else:
        arr = source
    try:
        shape = tuple(arr.shape)
        if len(shape) not in (5, 6):
            raise ValueError(f"volume_stats: expected (samples, C, t, x, y, z) or (C, t, x, y, z), got shape {shape}")
        if len(shape) == 5:
            arr, shape = _Unsqueezed(arr), (1,) + shape
        chunks = getattr(arr, "chunks", None) or getattr(getattr(arr, "array", None), "chunks", None)
        if chunks is None:
            chunks = (1, shape[1]) + tuple(min(n, 32) for n in shape[2:])
        elif len(chunks) == 5:
            chunks = (1,) + tuple(chunks)
        grid = [range(0, n, c) for n, c in zip(shape, chunks)]
        C = shape[1]
        count = np.zeros(C)
        mean = np.zeros(C)
        m2 = np.zeros(C)
        steps = list(itertools.product(*grid))
        it = steps
        if progress:
            try:
                from tqdm import tqdm
                it = tqdm(steps, desc="volume_stats", unit="chunk")
            except ImportError:
                pass
        for starts in it:
            region = tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, chunks, shape))
            block = np.asarray(arr[region], dtype=np.float64)  # (s, c, t, x, y, z)
            ch = slice(starts[1], starts[1] + block.shape[1])
            nb = block[:, 0].size
            mb = block.mean(axis=(0, 2, 3, 4, 5))
            m2b = ((block - mb[None, :, None, None, None, None]) ** 2).sum(axis=(0, 2, 3, 4, 5))
            n0 = count[ch]
            tot = n0 + nb
            delta = mb - mean[ch]
            mean[ch] += delta * nb / tot
            m2[ch] += m2b + delta ** 2 * n0 * nb / tot
            count[ch] = tot
        return mean, np.sqrt(m2 / count)
    finally:
        if handle is not None:
            handle.close()
