"""``DomainSpec``: how one sample's volume is split over the ranks of a process group.

A *mesh* of ranks (row-major over the group's ranks) splits named tensor axes: ``"batch"``
splits dim 0 (data parallelism), every other name splits one spatial dim, in order
(``dims=("t", "x", "y", "z")`` names dims 2, 3, 4, 5 of a ``(N, C, T, X, Y, Z)`` tensor).
A shard is the block of the global tensor a rank holds; shards along a mesh axis may have
different sizes (a 17-long axis on 2 ranks is 9 + 8), so a :class:`Layout` records the start
of every shard along every split axis. Layouts are found from the local shapes alone (one
small all-gather), so any function that makes shards (``scatter``, ``shard``, a loader using
:meth:`DomainSpec.local_slices`, a strided convolution) composes with every other.

Nothing here moves tensors inside the autograd graph; :mod:`.halo` and :mod:`.domain_ops` do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DomainSpec", "Layout"]

BATCH = "batch"


def split_sizes(n: int, parts: int) -> list:
    """Sizes of ``parts`` near-equal pieces of ``n`` (the first ``n % parts`` one larger)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


@dataclass(frozen=True)
class Layout:
    """Where every shard of a sharded tensor lies (found by :meth:`DomainSpec.layout`).

    ``shape`` is the global shape; ``starts[a]`` the shard starts along tensor dim ``a``
    (``P + 1`` numbers, the last the global size; ``(0, n)`` for an unsplit dim); ``pos[a]``
    this rank's shard index along dim ``a``. PyTorch has no counterpart (DTensor assumes
    even shards); PhysicsNeMo's ``ShardTensor`` keeps the same facts as "sharding shapes".

    Example:
        >>> from avila_ml.distributed import Layout
        >>> lay = Layout(shape=(1, 1, 17), starts=((0, 1), (0, 1), (0, 9, 17)), pos=(0, 0, 1))
        >>> lay.bounds(2), lay.sizes(2)
        ((9, 17), [9, 8])
    """

    shape: tuple
    starts: tuple
    pos: tuple

    def bounds(self, axis: int) -> tuple:
        """``(start, stop)`` of this rank's shard along tensor dim ``axis``."""
        s, p = self.starts[axis], self.pos[axis]
        return s[p], s[p + 1]

    def sizes(self, axis: int) -> list:
        """Shard sizes along tensor dim ``axis`` in mesh order."""
        s = self.starts[axis]
        return [int(s[i + 1] - s[i]) for i in range(len(s) - 1)]


class DomainSpec:
    """How tensors are split over the ranks of a process group: a mesh of ranks and the axis
    each mesh dim splits (PhysicsNeMo's ``ShardTensor`` placements, LBANN DistConv's
    distributions; PyTorch's ``DeviceMesh`` + ``Shard(dim)`` for the naming of the idea).

    Math: group rank ``r`` has mesh coordinates ``unravel(r, mesh)`` (row-major); along a mesh
    dim of size ``P`` splitting a tensor dim of size ``n``, coordinate ``c`` holds
    ``[start_c, start_{c+1})`` with near-equal sizes (``n // P``, the first ``n % P`` one more)
    when :meth:`scatter`/:meth:`shard` make the shards, any sizes when a loader does.

    Args: ``mesh``: ranks per split axis (product = the group's size). ``dims``: one name per
    mesh dim: ``"batch"`` (tensor dim 0) at most once, the others name the spatial dims 2, 3, ...
    in order. ``group``: a :class:`ProcessGroup` (default: the world). ``overlap``: let a
    convolution compute its interior while the halos travel, forward and backward (default:
    on for NCCL, whose transfers proceed by themselves; off for MPI, which moves large messages
    only inside MPI calls, so the overlap would cost memory — more slabs kept for the backward —
    and gain nothing unless the MPI library runs a progress thread).

    Example:
        >>> import avila_ml as am, avila_ml.distributed as dist
        >>> dist.init_process_group()                # one rank: every shard is the whole
        >>> spec = dist.DomainSpec(mesh=(1, 1), dims=("t", "x"))
        >>> full = am.arange(12.0).reshape(1, 1, 3, 4)
        >>> local = spec.scatter(full)
        >>> spec.local_slices(full.shape), spec.gather(local).shape
        ((slice(0, 1, None), slice(0, 1, None), slice(0, 3, None), slice(0, 4, None)), (1, 1, 3, 4))
        >>> dist.destroy_process_group()
    """

    def __init__(self, mesh, dims, group=None, overlap=None):
        from . import distributed_c10d as c10d
        mesh = (mesh,) if isinstance(mesh, int) else tuple(mesh)
        dims = (dims,) if isinstance(dims, str) else tuple(dims)
        if not mesh or any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in mesh):
            raise ValueError(f"DomainSpec: mesh must be a tuple of positive ints, got {mesh!r}")
        if len(dims) != len(mesh) or any(not isinstance(d, str) for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"DomainSpec: dims must name each of the {len(mesh)} mesh dims once "
                             f"(strings, 'batch' for the batch dim), got {dims!r}")
        g = c10d._group(group, "DomainSpec")
        if g is None:
            raise ValueError("DomainSpec: this rank is not a member of the given group")
        if math.prod(mesh) != g.size():
            raise ValueError(f"DomainSpec: mesh {mesh} has {math.prod(mesh)} ranks but the process group "
                             f"has {g.size()}")
        self.mesh = tuple(int(m) for m in mesh)
        self.dims = dims
        self.group = g
        self.rank = g.rank()
        self.coords = tuple(int(c) for c in np.unravel_index(self.rank, self.mesh))
        self.spatial_names = tuple(d for d in dims if d != BATCH)
        self.batch_axis = dims.index(BATCH) if BATCH in dims else None
        spatial = iter(range(2, 2 + len(self.spatial_names)))
        # tensor dim split by each mesh dim
        self.tensor_dims = tuple(0 if d == BATCH else next(spatial) for d in dims)
        self.domain_group = self._domain_group()
        self.overlap = (g.backend == "nccl") if overlap is None else bool(overlap)

    @property
    def ndim(self) -> int:
        """Number of spatial dims the tensors have (batched tensors have ``ndim + 2`` dims)."""
        return len(self.spatial_names)

    def __repr__(self) -> str:
        return f"DomainSpec(mesh={self.mesh}, dims={self.dims}, rank={self.rank}, coords={self.coords})"

    # -- mesh navigation -------------------------------------------------------------------
    def mesh_rank(self, coords) -> int:
        """Group rank of the mesh coordinates ``coords``."""
        return int(np.ravel_multi_index(tuple(coords), self.mesh))

    def line(self, mesh_axis: int) -> list:
        """Group ranks along mesh dim ``mesh_axis`` that share this rank's other coordinates."""
        c = list(self.coords)
        out = []
        for i in range(self.mesh[mesh_axis]):
            c[mesh_axis] = i
            out.append(self.mesh_rank(c))
        return out

    def mesh_axis_of(self, tensor_dim: int):
        """The mesh dim splitting ``tensor_dim``, or None when it is not split."""
        return self.tensor_dims.index(tensor_dim) if tensor_dim in self.tensor_dims else None

    def _domain_group(self):
        """The ranks holding pieces of the same samples (same batch coordinate): instance and
        group norm statistics are summed over them. Built collectively over the whole group."""
        if self.batch_axis is None or self.mesh[self.batch_axis] == 1:
            return self.group
        mine = None
        for b in range(self.mesh[self.batch_axis]):
            members = [r for r in range(self.group.size())
                       if np.unravel_index(r, self.mesh)[self.batch_axis] == b]
            g = self.group.split(members)
            if b == self.coords[self.batch_axis]:
                mine = g
        return mine

    # -- layouts -----------------------------------------------------------------------------
    def _check_ndim(self, shape, op):
        if len(shape) != self.ndim + 2:
            raise ValueError(f"DomainSpec.{op}: expected a tensor (N, C, {', '.join(self.spatial_names)}) with "
                             f"{self.ndim + 2} dims for dims={self.dims}, got shape {tuple(shape)}")

    def even_layout(self, global_shape) -> Layout:
        """The layout :meth:`scatter` and :meth:`shard` make: near-equal shards."""
        global_shape = tuple(int(s) for s in global_shape)
        self._check_ndim(global_shape, "even_layout")
        starts, pos = [(0, n) for n in global_shape], [0] * len(global_shape)
        for m, a in enumerate(self.tensor_dims):
            sizes = split_sizes(global_shape[a], self.mesh[m])
            if min(sizes) == 0:
                raise ValueError(f"DomainSpec: dim {a} ('{self.dims[m]}') of size {global_shape[a]} cannot be "
                                 f"split over {self.mesh[m]} ranks without an empty shard")
            starts[a] = tuple(int(v) for v in np.concatenate([[0], np.cumsum(sizes)]))
            pos[a] = self.coords[m]
        return Layout(global_shape, tuple(starts), tuple(pos))

    def local_slices(self, global_shape, rank=None) -> tuple:
        """The slices of the global array that ``rank`` (default: this rank) holds, for a loader
        that reads only its slab (``h5py``/``zarr`` datasets accept them directly)."""
        lay = self.even_layout(global_shape)
        coords = self.coords if rank is None else tuple(int(c) for c in np.unravel_index(rank, self.mesh))
        out = [slice(0, n) for n in lay.shape]
        for m, a in enumerate(self.tensor_dims):
            s = lay.starts[a]
            out[a] = slice(s[coords[m]], s[coords[m] + 1])
        return tuple(out)

    def layout(self, local) -> Layout:
        """The layout of a sharded tensor from every rank's local shape (one all-gather of a few
        integers). Raises ``ValueError`` when the shards do not tile a global tensor."""
        shape = tuple(int(s) for s in local.shape)
        self._check_ndim(shape, "layout")
        xp = transport_xp(self.group)
        mine = xp.asarray(shape, dtype=np.int64)
        table = xp.empty((self.group.size(), len(shape)), dtype=np.int64)
        self.group.allgather(mine, table, name="DomainSpec.layout").wait()
        return self._layout_from_table(to_host(table))

    def _layout_from_table(self, table) -> Layout:
        coords = [np.unravel_index(r, self.mesh) for r in range(table.shape[0])]
        glob = list(int(v) for v in table[0])
        starts, pos = [(0, n) for n in glob], [0] * len(glob)
        split = {a: m for m, a in enumerate(self.tensor_dims)}
        for a in range(table.shape[1]):
            m = split.get(a)
            if m is None:
                if (table[:, a] != table[0, a]).any():
                    raise ValueError(f"DomainSpec.layout: dim {a} is not split but the ranks hold sizes "
                                     f"{table[:, a].tolist()}")
                continue
            sizes = [None] * self.mesh[m]
            for r, c in enumerate(coords):
                if sizes[c[m]] is None:
                    sizes[c[m]] = int(table[r, a])
                elif sizes[c[m]] != table[r, a]:
                    raise ValueError(f"DomainSpec.layout: the shards do not form a grid: ranks at position "
                                     f"{c[m]} of mesh dim '{self.dims[m]}' hold sizes {table[:, a].tolist()} "
                                     f"along dim {a}")
            starts[a] = tuple(int(v) for v in np.concatenate([[0], np.cumsum(sizes)]))
            glob[a] = starts[a][-1]
            pos[a] = self.coords[m]
        return Layout(tuple(glob), tuple(starts), tuple(pos))

    # -- moving whole tensors ---------------------------------------------------------------
    def shard(self, full, like=None):
        """This rank's shard of ``full`` (a tensor every rank holds): near-equal shards, or the
        layout of the sharded tensor ``like`` (e.g. a model's output, to cut the target).
        ``full`` may lack the channel dim (class-index targets ``(N, *spatial)``)."""
        from ..tensor import Tensor
        shape = tuple(full.shape)
        no_channel = len(shape) == self.ndim + 1  # class-index targets (N, *spatial)
        if no_channel:
            shape = shape[:1] + (1,) + shape[1:]
        lay = self.even_layout(shape) if like is None else self.layout(like)
        if like is not None and (lay.shape[:1] + lay.shape[2:] != shape[:1] + shape[2:]
                                 or (not no_channel and lay.shape[1] != shape[1])):
            raise ValueError(f"DomainSpec.shard: the sharded tensor `like` has global shape {lay.shape}, "
                             f"full has {tuple(full.shape)}")
        key = tuple(slice(*lay.bounds(a)) for a in range(len(lay.shape)))
        if no_channel:
            key = key[:1] + key[2:]
        arr = full.array if isinstance(full, Tensor) else full
        out = Tensor._wrap(backend_xp(arr).ascontiguousarray(arr[key]))
        return out

    def scatter(self, full=None, src: int = 0):
        """Group rank ``src`` holds ``full``; every rank returns its near-equal shard
        (``full`` is ignored on the other ranks). Shape and dtype travel with the data."""
        from ..tensor import Tensor
        from .. import dtypes as _dt
        g = self.group
        head = np.full(2 + 8 + 1, -1, dtype=np.int64)  # ndim, dtype code, shape (8 at most), device kind
        if g.rank() == src:
            if full is None or not isinstance(full, Tensor):
                raise TypeError(f"DomainSpec.scatter: rank {src} must pass the full tensor, got {type(full).__name__}")
            self._check_ndim(full.shape, "scatter")
            if full.ndim > 8:
                raise ValueError(f"DomainSpec.scatter: at most 8 dims, got shape {tuple(full.shape)}")
            head[0] = full.ndim
            head[1] = [d.np for d in _dt._ALL].index(full.array.dtype)
            head[2:2 + full.ndim] = full.shape
            head[10] = 1 if full.is_cuda else 0  # the receivers allocate on the same kind
        moved = transport_xp(g).asarray(head)
        g.broadcast(moved, root=src, name="DomainSpec.scatter").wait()
        head = to_host(moved)
        nd = int(head[0])
        shape, dtype = tuple(int(s) for s in head[2:2 + nd]), _dt._ALL[int(head[1])].np
        if g.size() == 1:
            return self.shard(full)
        if g.rank() == src:
            xp = backend_xp(full.array)
            works = []
            for r in range(g.size()):
                key = self.local_slices(shape, r)
                if r == src:
                    mine = xp.ascontiguousarray(full.array[key])
                else:
                    piece = xp.ascontiguousarray(full.array[key])
                    works.append((g.send(piece, r, tag=7090), piece))
            for w, _ in works:
                w.wait()
            return Tensor._wrap(mine)
        key = self.local_slices(shape)
        if head[10] == 1:  # CUDA: CuPy is imported only when a GPU tensor is scattered
            import cupy as xp
        else:
            xp = np
        buf = xp.empty(tuple(k.stop - k.start for k in key), dtype=dtype)
        g.recv(buf, src, tag=7090).wait()
        return Tensor._wrap(buf)

    def gather(self, local, dst: int = 0, all: bool = False):
        """The global tensor assembled from every rank's shard, on group rank ``dst`` (None
        elsewhere), or on every rank with ``all=True``. Shards of any sizes (a layout)."""
        from ..tensor import Tensor
        g = self.group
        lay = self.layout(local)
        arr = local.array if isinstance(local, Tensor) else local
        xp = backend_xp(arr)
        arr = xp.ascontiguousarray(arr)
        if g.size() == 1:
            return Tensor._wrap(arr.copy())
        targets = range(g.size()) if all else [dst]
        out = None
        for t in targets:
            if g.rank() == t:
                out = xp.empty(lay.shape, dtype=arr.dtype)
                works = []
                for r in range(g.size()):
                    key = self._slices_of(lay, r)
                    if r == t:
                        out[key] = arr
                        continue
                    buf = xp.empty(tuple(k.stop - k.start for k in key), dtype=arr.dtype)
                    works.append((g.recv(buf, r, tag=7091), buf, key))
                for w, buf, key in works:
                    w.wait()
                    out[key] = buf
            else:
                g.send(arr, t, tag=7091).wait()
        return None if out is None else Tensor._wrap(out)

    def _slices_of(self, lay: Layout, rank: int) -> tuple:
        coords = np.unravel_index(rank, self.mesh)
        key = [slice(0, n) for n in lay.shape]
        for m, a in enumerate(self.tensor_dims):
            s = lay.starts[a]
            key[a] = slice(s[coords[m]], s[coords[m] + 1])
        return tuple(key)


def backend_xp(array):
    """The array module (NumPy or CuPy) of ``array``."""
    from ..backends import backend_of
    return backend_of(array).xp


def transport_xp(group):
    """The array module a group's messages live in: CuPy for NCCL (device memory only), else
    NumPy. Small bookkeeping messages (shapes, counts) are made there."""
    if getattr(group, "backend", "mpi") == "nccl":
        import cupy
        return cupy
    return np


def to_host(array):
    """A NumPy copy of a (small) NumPy or CuPy array."""
    from ..backends import backend_of
    return np.asarray(backend_of(array).to_numpy(array))
