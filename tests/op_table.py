"""The op table: one row per core op, with sample inputs and the PyTorch reference
(PyTorch's OpInfo, ``torch/testing/_internal/opinfo/core.py``).

A row (:class:`OpInfo`) names the Avila ML callable, the PyTorch callable that must agree
with it, a generator of :class:`Sample` inputs, and flags: ``differentiable`` (checked by
backward-vs-torch and gradcheck), ``gradgrad`` (checked by gradgradcheck) and ``dtypes``
(the dtypes of the forward check). ``tests/test_ops_table.py`` runs every check on every
row and every device; adding an op means adding a row here.

Sample arguments are plain Python values (scalars, dims, shapes: passed through as they are)
and :class:`T` markers, turned into a fresh tensor of the library under test. A ``T`` can ask
for a *non-contiguous* input: ``view="T"`` makes a leaf of the transposed shape and
transposes it back inside the op call, ``view="step"`` makes a leaf twice as long in the last
dim and takes ``[..., ::2]``. Both views are built with the library's own ops, so the array
the op receives really is non-contiguous, and the gradient must flow through the view to the
leaf.

Keep gradcheck inputs small (<= ~12 elements): the numerical Jacobian costs two forward
passes per input element.
"""
from __future__ import annotations

import operator
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as TF

import avila_ml as am

__all__ = ["T", "Sample", "OpInfo", "OP_TABLE", "materialize", "to_numpy"]


# ------------------------------------------------------------------------------ inputs
class T:
    """A tensor argument of a sample: data (float64, or int/bool for indices and masks),
    an optional non-contiguous ``view`` ("T" or "step"), and whether it is differentiated."""

    def __init__(self, data, view: str | None = None, grad: bool | None = None):
        self.data = np.asarray(data)
        if view == "T" and self.data.ndim < 2:
            raise ValueError("view='T' needs at least 2 dims")
        if view == "step" and self.data.ndim < 1:
            raise ValueError("view='step' needs at least 1 dim")
        self.view = view
        self.grad = (self.data.dtype.kind == "f") if grad is None else grad

    def base(self, np_dtype) -> np.ndarray:
        """The leaf's data: the view, applied to it, gives back ``self.data``."""
        d = self.data
        if d.dtype.kind == "f":
            d = _as_dtype(d, np_dtype)
        if self.view == "T":
            return np.ascontiguousarray(np.swapaxes(d, -1, -2))
        if self.view == "step":
            b = np.full(d.shape[:-1] + (2 * d.shape[-1],), 0.375, dtype=d.dtype)
            b[..., ::2] = d
            return b
        return np.array(d, order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)

    def apply_view(self, leaf):
        """Turn the leaf into the argument, with the library's own ops (works for both)."""
        if self.view == "T":
            return leaf.transpose(-1, -2)
        if self.view == "step":
            return leaf[..., ::2]
        return leaf

    def __repr__(self) -> str:
        v = f",{self.view}" if self.view else ""
        return f"T{tuple(self.data.shape)}{'' if self.data.dtype.kind == 'f' else self.data.dtype}{v}"


def _as_dtype(d: np.ndarray, np_dtype) -> np.ndarray:
    np_dtype = np.dtype(np_dtype)
    if np_dtype.kind in "iu":
        return np.round(np.nan_to_num(d, posinf=9.0, neginf=-9.0) * 2).astype(np_dtype)
    return d.astype(np_dtype)


@dataclass
class Sample:
    """One call of an op: positional ``args`` and keyword ``kwargs`` (``T`` markers inside)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    desc: str = ""
    ref_grad: bool = True  # False where PyTorch cannot differentiate this form (finite differences only)
    smooth: bool = True  # False at a kink (ties of max/min): checked against PyTorch, not finite differences

    def __repr__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"Sample({', '.join(map(repr, self.args))}{'; ' + kw if kw else ''}){' ' + self.desc if self.desc else ''}"


@dataclass
class OpInfo:
    """One row of the op table."""

    name: str
    op: Callable
    ref: Callable
    samples: Callable[[np.random.Generator], list]
    differentiable: bool = True
    gradgrad: bool = True
    dtypes: tuple = ("float64", "float32")
    gradcheck: bool = True  # False where finite differences cannot resolve the op (lossy casts)

    def sample_list(self) -> list:
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        return list(self.samples(rng))



@dataclass
class FunctionalRow:
    """A row of a functional-op table (losses, norms): our op, PyTorch's, and a sample
    generator seeded from the row's name, so each row's inputs are stable across runs."""

    name: str
    op: Callable
    ref: Callable
    samples: Callable
    gradgrad: bool = True

    def sample_list(self):
        return list(self.samples(np.random.default_rng(zlib.crc32(self.name.encode()))))


def W(data):
    """A tensor argument that is not differentiated (class weights, running statistics)."""
    return T(data, grad=False)

def _walk(obj, fn):
    if isinstance(obj, T):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_walk(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_walk(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _walk(v, fn) for k, v in obj.items()}
    return obj


def materialize(sample: Sample, lib: str, dtype: str = "float64", device: str = "cpu",
                requires_grad: bool = True):
    """Build the leaves of ``sample`` in ``lib`` ("am" or "torch").

    Returns ``(leaves, call)``: ``leaves`` lists every tensor made (grad leaves first are not
    guaranteed; check ``requires_grad``), and ``call(op, *leaves)`` applies the views and
    calls ``op`` with the sample's arguments, so it can be handed to gradcheck.
    """
    np_dtype = np.dtype(dtype)
    markers: list[T] = []
    _walk((sample.args, sample.kwargs), lambda t: markers.append(t) or t)
    leaves = []
    for t in markers:
        base = t.base(np_dtype)
        rg = requires_grad and t.grad and np_dtype.kind == "f" and base.dtype.kind == "f"
        if lib == "am":
            leaves.append(am.tensor(base, device=device, requires_grad=rg))
        else:
            leaves.append(torch.tensor(base, requires_grad=rg))

    def call(op, *ls):
        it = iter(range(len(markers)))
        pos = {id(t): ls[next(it)] for t in markers}
        args, kwargs = _walk((sample.args, sample.kwargs), lambda t: t.apply_view(pos[id(t)]))
        return op(*args, **kwargs)

    return leaves, call


def to_numpy(x) -> np.ndarray:
    """Data of an Avila ML or PyTorch tensor as a NumPy array (on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x.detach().cpu().numpy()


# ------------------------------------------------------------------------- data makers
def U(rng, shape, lo=-2.0, hi=2.0):
    """Uniform in [lo, hi)."""
    return rng.uniform(lo, hi, size=shape)


def P(rng, shape, lo=0.5, hi=2.0):
    """Positive values (domain of log, sqrt, ...)."""
    return rng.uniform(lo, hi, size=shape)


def A(rng, shape, lo=0.3, hi=2.0):
    """Values away from 0 (kinks of abs, poles of 1/x), random sign."""
    return rng.uniform(lo, hi, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def unary_samples(gen=U):
    """Samples of a unary op: 2-d, 0-d (a scalar tensor), size-0 and size-1 dims,
    a transposed and a strided view."""
    def samples(rng):
        return [
            Sample((T(gen(rng, (3, 4))),), desc="2-d"),
            Sample((T(gen(rng, ())),), desc="0-d"),
            Sample((T(gen(rng, (0, 3))),), desc="size-0"),
            Sample((T(gen(rng, (1, 3, 1))),), desc="size-1 dims"),
            Sample((T(gen(rng, (3, 2)), view="T"),), desc="transposed view"),
            Sample((T(gen(rng, (2, 3)), view="step"),), desc="strided view"),
        ]
    return samples


def binary_samples(gen_a=U, gen_b=U, scalars=(2.5, 2), rscalars=None):
    """Samples of a broadcasting binary op: equal shapes, broadcasting both ways, a Python
    number second, a 0-d tensor, size-0 and size-1 dims, non-contiguous views."""
    def samples(rng):
        out = [
            Sample((T(gen_a(rng, (2, 3))), T(gen_b(rng, (2, 3)))), desc="same shape"),
            Sample((T(gen_a(rng, (2, 3))), T(gen_b(rng, (3,)))), desc="broadcast rhs"),
            Sample((T(gen_a(rng, (2, 1))), T(gen_b(rng, (1, 3)))), desc="broadcast both"),
            Sample((T(gen_a(rng, (3,))), T(gen_b(rng, (2, 1, 3)))), desc="broadcast lhs"),
            Sample((T(gen_a(rng, (2, 3))), T(gen_b(rng, ()))), desc="0-d rhs"),
            Sample((T(gen_a(rng, ())), T(gen_b(rng, ()))), desc="both 0-d"),
            Sample((T(gen_a(rng, (0, 3))), T(gen_b(rng, (3,)))), desc="size-0"),
            Sample((T(gen_a(rng, (1, 3))), T(gen_b(rng, (2, 1)))), desc="size-1"),
            Sample((T(gen_a(rng, (3, 2)), view="T"), T(gen_b(rng, (3, 2)))), desc="transposed view"),
            Sample((T(gen_a(rng, (2, 3))), T(gen_b(rng, (2, 3)), view="step")), desc="strided view"),
        ]
        for s in scalars:
            out.append(Sample((T(gen_a(rng, (2, 3))), s), desc=f"scalar {s!r}"))
        return out
    return samples


def reflected_samples(gen=U, scalars=(2.5, 3), ref_grad=True):
    """Samples ``(tensor, python_number)`` for reflected operators ``number OP tensor``."""
    def samples(rng):
        out = []
        for s in scalars:
            out += [
                Sample((T(gen(rng, (2, 3))), s), desc=f"{s!r} op 2-d", ref_grad=ref_grad),
                Sample((T(gen(rng, ())), s), desc=f"{s!r} op 0-d", ref_grad=ref_grad),
                Sample((T(gen(rng, (0, 2))), s), desc="size-0", ref_grad=ref_grad),
                Sample((T(gen(rng, (3, 2)), view="T"), s), desc="transposed view", ref_grad=ref_grad),
            ]
        return out
    return samples


def reduction_samples(gen=U, dims=True, keepdim=True, empty=True, extra=()):
    """Samples of a reduction: all dims, one dim (negative too), several dims, keepdim,
    a 0-d input, size-0 and size-1 dims, non-contiguous views."""
    def samples(rng):
        out = [Sample((T(gen(rng, (3, 4))),), desc="all dims"),
               Sample((T(gen(rng, ())),), desc="0-d")]
        if dims:
            out += [
                Sample((T(gen(rng, (3, 4))),), {"dim": 1}, desc="dim=1"),
                Sample((T(gen(rng, (2, 3, 2))),), {"dim": -2}, desc="dim=-2"),
                Sample((T(gen(rng, (2, 3, 2))),), {"dim": (0, 2)}, desc="dims (0, 2)"),
                Sample((T(gen(rng, (1, 3, 1))),), {"dim": 1}, desc="size-1 dims"),
                Sample((T(gen(rng, (3, 2)), view="T"),), {"dim": 0}, desc="transposed view"),
                Sample((T(gen(rng, (2, 3)), view="step"),), {"dim": 1}, desc="strided view"),
            ]
            if keepdim:
                out += [
                    Sample((T(gen(rng, (3, 4))),), {"dim": 0, "keepdim": True}, desc="keepdim"),
                    Sample((T(gen(rng, (2, 3, 2))),), {"dim": (-1, 0), "keepdim": True}, desc="dims keepdim"),
                ]
            if empty:
                out.append(Sample((T(gen(rng, (0, 3))),), {"dim": 0}, desc="reduce a size-0 dim"))
                out.append(Sample((T(gen(rng, (0, 3))),), {"dim": 1}, desc="size-0, reduce the other dim"))
        out += [s(rng, gen) for s in extra]
        return out
    return samples


def _distinct(rng, shape, lo=-2.0, hi=2.0):
    """Values with no ties (max/min/sort-like ops have a kink at ties)."""
    n = int(np.prod(shape)) if shape else 1
    vals = np.linspace(lo, hi, n) + rng.uniform(-0.01, 0.01, size=n) * (hi - lo) / max(n, 1)
    return rng.permutation(vals).reshape(shape)


def _samples(*items):
    """A sample generator from a function of rng returning a list."""
    def samples(rng):
        out = []
        for it in items:
            out += it(rng)
        return out
    return samples


# ---------------------------------------------------------------------- torch helpers
def _torch_pad(x, pad, mode="constant", value=0.0):
    """PyTorch's pad, extended to 4+ trailing dims for the non-constant modes by padding one
    axis at a time with PyTorch's own 1-d pad (the modes are separable per axis)."""
    k = len(pad) // 2
    if mode == "constant" or (k <= 3 and x.ndim in (k + 1, k + 2)):
        return TF.pad(x, pad, mode=mode) if mode != "constant" else TF.pad(x, pad, value=value)
    out = x
    for i in range(k):  # i-th pair pads dim -(i+1)
        lo, hi = pad[2 * i], pad[2 * i + 1]
        if lo == 0 and hi == 0:
            continue
        axis = out.ndim - 1 - i
        moved = out.movedim(axis, -1)
        shp = moved.shape
        flat = moved.reshape(-1, 1, shp[-1])
        padded = TF.pad(flat, (lo, hi), mode=mode)
        out = padded.reshape(shp[:-1] + (padded.shape[-1],)).movedim(-1, axis)
    return out


def _am_pad(x, pad, mode="constant", value=0.0):
    return am.nn.functional.pad(x, pad, mode=mode, value=value)


def _pad_samples(mode):
    def samples(rng):
        out = [
            Sample((T(U(rng, (2, 3))),), {"pad": (1, 2)}, desc="1 trailing dim"),
            Sample((T(U(rng, (1, 3, 3))),), {"pad": (1, 0, 2, 1)}, desc="2 trailing dims"),
            Sample((T(U(rng, (1, 2, 2, 3))),), {"pad": (1, 1, 0, 1, 1, 0)}, desc="3 trailing dims"),
            Sample((T(U(rng, (2, 2, 2, 2))),), {"pad": (1, 0, 0, 1, 1, 0, 0, 1)}, desc="4 trailing dims"),
            Sample((T(U(rng, (1, 2, 2, 2, 2))),), {"pad": (0, 1, 1, 0, 1, 1, 1, 0)}, desc="4 trailing dims, batch"),
            Sample((T(U(rng, (2, 3)), view="T"),), {"pad": (1, 1)}, desc="transposed view"),
            Sample((T(U(rng, (1, 2, 3)), view="step"),), {"pad": (2, 1)}, desc="strided view"),
        ]
        if mode == "constant":
            out += [
                Sample((T(U(rng, (0, 3))),), {"pad": (1, 1)}, desc="size-0 batch"),
                Sample((T(U(rng, (2, 3))),), {"pad": (1, 1, 2, 0), "value": 1.5}, desc="value"),
                Sample((T(U(rng, (2, 4))),), {"pad": (-1, 1, 1, -1)}, desc="negative widths crop"),
            ]
        if mode != "constant":
            out.append(Sample((T(U(rng, (0, 2, 3))),), {"pad": (1, 1)}, desc="size-0 batch"))
        if mode != "constant":  # borders wider than 1 on every axis, both sides, corners included
            out.append(Sample((T(U(rng, (1, 2, 3, 4, 3))),), {"pad": (2, 1, 1, 2, 2, 2)}, desc="wide borders, 3 dims"))
        if mode == "circular":
            out.append(Sample((T(U(rng, (1, 2, 3))),), {"pad": (3, 3)}, desc="wrap the whole dim"))
            out.append(Sample((T(U(rng, (2, 2))),), {"pad": (2, 1)}, desc="borders overlap in source"))
        if mode == "replicate":
            out.append(Sample((T(U(rng, (1, 2, 1))),), {"pad": (3, 2)}, desc="size-1 dim"))
        return out
    return samples


def _idx(*a):
    return T(np.array(*a, dtype=np.int64))


def _mask(a):
    return T(np.array(a, dtype=bool))


# ------------------------------------------------------------------------------- rows
def _binary_row(name, am_fn, torch_fn, gen_a=U, gen_b=U, **kw):
    dtypes = kw.pop("dtypes", ("float64", "float32", "int64"))
    scalars = kw.pop("scalars", (2.5, 2))
    return OpInfo(name, am_fn, torch_fn, binary_samples(gen_a, gen_b, scalars), dtypes=dtypes, **kw)


def _unary_row(name, gen=U, am_fn=None, torch_fn=None, **kw):
    return OpInfo(name, am_fn or getattr(am, name), torch_fn or getattr(torch, name),
                  unary_samples(gen), **kw)


def _add_alpha(rng):
    return [Sample((T(U(rng, (2, 3))), T(U(rng, (3,)))), {"alpha": 3}, desc="alpha"),
            Sample((T(U(rng, (2, 3))), 1.5), {"alpha": -2}, desc="scalar, alpha")]


def _pow_scalar_samples(rng):
    out = []
    for c in (2, 3, 0.5, -1.5, 0, 1, 2.5):
        gen = P if isinstance(c, float) or c < 0 else U
        out += [Sample((T(gen(rng, (2, 3))), c), desc=f"x ** {c}"),
                Sample((T(gen(rng, ())), c), desc=f"0-d ** {c}")]
    out += [Sample((T(P(rng, (0, 2))), 2.5), desc="size-0"),
            Sample((T(P(rng, (3, 2)), view="T"), 3), desc="transposed view"),
            Sample((T(U(rng, (1, 3)), view="step"), 2), desc="strided view")]
    return out


def _where_samples(rng):
    def cond(shape):
        return T(rng.uniform(size=shape) > 0.5)
    return [
        Sample((cond((2, 3)), T(U(rng, (2, 3))), T(U(rng, (2, 3)))), desc="same shape"),
        Sample((cond((2, 1)), T(U(rng, (3,))), T(U(rng, (2, 3)))), desc="broadcast all"),
        Sample((cond((2, 3)), T(U(rng, (2, 3))), 0.5), desc="scalar other"),
        Sample((cond((2, 3)), T(U(rng, ())), T(U(rng, (1, 3)))), desc="0-d input"),
        Sample((cond((0, 3)), T(U(rng, (0, 3))), T(U(rng, (3,)))), desc="size-0"),
        Sample((cond((3, 2)), T(U(rng, (3, 2)), view="T"), T(U(rng, (3, 2)), view="step")), desc="views"),
    ]


def _clamp_samples(rng):
    def g(shape):
        # keep clear of the bounds (+-0.5) by more than gradcheck's eps
        x = U(rng, shape, -1.5, 1.5)
        return np.where(np.abs(np.abs(x) - 0.5) < 0.05, x + 0.2, x)
    return [
        Sample((T(g((2, 3))),), {"min": -0.5, "max": 0.5}, desc="both bounds"),
        Sample((T(g((2, 3))),), {"min": -0.5}, desc="min only"),
        Sample((T(g((2, 3))),), {"max": 0.5}, desc="max only"),
        Sample((T(g(())),), {"min": -0.5, "max": 0.5}, desc="0-d"),
        Sample((T(g((0, 2))),), {"min": 0.0}, desc="size-0"),
        Sample((T(g((3, 2)), view="T"),), {"min": -0.5, "max": 0.5}, desc="transposed view"),
        Sample((T(g((2, 3)), view="step"),), {"min": -0.5, "max": 0.5}, desc="strided view"),
    ]


def _clamp_tensor_samples(rng):
    x = U(rng, (2, 3))
    lo = x + rng.choice([-0.3, 0.3], size=(2, 3))
    return [
        Sample((T(x),), {"min": T(lo), "max": T(U(rng, (3,), 1.5, 2.0))}, desc="tensor bounds"),
        Sample((T(U(rng, (2, 3))),), {"min": T(np.array(-0.25))}, desc="0-d min"),
        Sample((T(U(rng, (2, 3))),), {"max": T(U(rng, (2, 1)))}, desc="broadcast max"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"min": T(U(rng, (2,)), view="step")}, desc="views"),
        Sample((T(U(rng, (0, 3))),), {"min": T(U(rng, (3,)))}, desc="size-0"),
    ]


def _lerp_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))), T(U(rng, (2, 3))), 0.3), desc="scalar weight"),
        Sample((T(U(rng, (2, 3))), T(U(rng, (3,))), T(U(rng, (2, 1), 0, 1))), desc="tensor weight, broadcast"),
        Sample((T(U(rng, (3, 2)), view="T"), T(U(rng, ())), 0.7), desc="view, 0-d end"),
        Sample((T(U(rng, (0, 3))), T(U(rng, (3,))), 0.5), desc="size-0"),
    ]


def _addcmul_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))), T(U(rng, (2, 3))), T(U(rng, (3,)))), desc="broadcast"),
        Sample((T(U(rng, (2, 3))), T(U(rng, (2, 1))), T(U(rng, (1, 3)))), {"value": 0.5}, desc="value"),
        Sample((T(U(rng, ())), T(U(rng, (3, 2)), view="T"), T(U(rng, (1, 2)))), {"value": -2}, desc="view"),
        Sample((T(U(rng, (0, 3))), T(U(rng, (3,))), T(U(rng, (1, 3)))), desc="size-0"),
    ]


def _matmul_samples(rng):
    return [
        Sample((T(U(rng, (3,))), T(U(rng, (3,)))), desc="1-d @ 1-d"),
        Sample((T(U(rng, (2, 3))), T(U(rng, (3,)))), desc="2-d @ 1-d"),
        Sample((T(U(rng, (3,))), T(U(rng, (3, 2)))), desc="1-d @ 2-d"),
        Sample((T(U(rng, (2, 3))), T(U(rng, (3, 2)))), desc="2-d @ 2-d"),
        Sample((T(U(rng, (2, 2, 3))), T(U(rng, (3, 2)))), desc="batched @ 2-d"),
        Sample((T(U(rng, (2, 1, 2, 2))), T(U(rng, (3, 2, 2)))), desc="batch broadcasting"),
        Sample((T(U(rng, (3,))), T(U(rng, (2, 3, 2)))), desc="1-d @ batched"),
        Sample((T(U(rng, (2, 2, 3))), T(U(rng, (3,)))), desc="batched @ 1-d"),
        Sample((T(U(rng, (0, 3))), T(U(rng, (3, 2)))), desc="size-0 rows"),
        Sample((T(U(rng, (2, 0))), T(U(rng, (0, 3)))), desc="size-0 contraction"),
        Sample((T(U(rng, (1, 3))), T(U(rng, (3, 1)))), desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"), T(U(rng, (2, 3)), view="step")), desc="views"),
    ]


def _einsum_samples(rng):
    def s(eq, *shapes, views=None):
        views = views or [None] * len(shapes)
        return Sample(tuple(T(U(rng, sh), view=v) for sh, v in zip(shapes, views)), {"eq": eq}, desc=eq)
    return [
        s("ij,jk->ik", (2, 3), (3, 2)),
        s("bij,bjk->bik", (2, 2, 3), (2, 3, 2)),
        s("i,j->ij", (3,), (2,)),
        s("ij->", (2, 3)),
        s("ij->ji", (2, 3), views=["T"]),
        s("ii->i", (3, 3)),
        s("ii", (3, 3)),
        s("ij,ij->i", (2, 3), (2, 3)),
        s("ij,j", (2, 3), (3,)),
        s("ij,jk,kl->il", (2, 2), (2, 3), (3, 2)),
        s("ijk->ki", (2, 3, 2), views=[None]),
        s("ij,kj->ik", (0, 3), (2, 3)),
        s("i,i->", (3,), (3,), views=["step", None]),
        s("ij,jk->ik", (1, 3), (3, 1)),
    ]


def _linear_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))), T(U(rng, (4, 3))), T(U(rng, (4,)))), desc="with bias"),
        Sample((T(U(rng, (2, 2, 3))), T(U(rng, (2, 3)))), desc="batched, no bias"),
        Sample((T(U(rng, (3,))), T(U(rng, (2, 3))), T(U(rng, (2,)))), desc="1-d input"),
        Sample((T(U(rng, (3, 2)), view="T"), T(U(rng, (3, 2)), view="T"), T(U(rng, (3,)))), desc="views"),
        Sample((T(U(rng, (0, 3))), T(U(rng, (2, 3))), T(U(rng, (2,)))), desc="size-0 batch"),
        Sample((T(U(rng, (1, 3))), T(U(rng, (1, 3))), T(U(rng, (1,)))), desc="size-1"),
    ]


def _undefined_for_0d(samples_fn):
    """var/std of one element divide by N - 1 = 0: NaN, as in PyTorch, so not gradchecked."""
    def samples(rng):
        out = samples_fn(rng)
        for s in out:
            if s.desc == "0-d":
                s.smooth = False
        return out
    return samples


def _var_extra0(rng, gen):
    return Sample((T(gen(rng, (0, 3))),), {"dim": 1}, desc="size-0, reduce the other dim")


def _var_extra(rng, gen):
    return Sample((T(gen(rng, (3, 4))),), {"dim": 1, "correction": 0}, desc="correction=0")


def _var_extra2(rng, gen):
    return Sample((T(gen(rng, (2, 4))),), {"dim": (0, 1), "correction": 2, "keepdim": True}, desc="correction=2")


def _prod_samples(rng):
    z = U(rng, (2, 3))
    z[0, 1] = 0.0
    zz = U(rng, (3, 2))
    zz[1, 0] = zz[2, 0] = 0.0
    return [
        Sample((T(U(rng, (2, 3), 0.5, 1.5)),), desc="all"),
        Sample((T(A(rng, (2, 3))),), {"dim": 1}, desc="dim=1"),
        Sample((T(A(rng, (2, 3))),), {"dim": 0, "keepdim": True}, desc="keepdim"),
        Sample((T(A(rng, ())),), desc="0-d"),
        Sample((T(A(rng, (1, 3))),), {"dim": -1}, desc="size-1 dim"),
        Sample((T(A(rng, (0, 3))),), {"dim": 0}, desc="size-0 dim"),
        Sample((T(A(rng, (3, 2)), view="T"),), {"dim": 0}, desc="transposed view"),
        Sample((T(A(rng, (2, 3)), view="step"),), {"dim": 1}, desc="strided view"),
        Sample((T(z),), {"dim": 1}, desc="one zero in a row"),
        Sample((T(zz),), {"dim": 0}, desc="two zeros in a column"),
        Sample((T(z),), desc="a zero, all dims"),
    ]


def _max_dim_samples(rng):
    return [
        Sample((T(_distinct(rng, (3, 4))),), {"dim": 1}, desc="dim=1"),
        Sample((T(_distinct(rng, (3, 4))),), {"dim": 0, "keepdim": True}, desc="keepdim"),
        Sample((T(_distinct(rng, (2, 3, 2))),), {"dim": -1}, desc="dim=-1"),
        Sample((T(_distinct(rng, ())),), {"dim": 0}, desc="0-d"),
        Sample((T(_distinct(rng, (1, 3))),), {"dim": 0}, desc="size-1 dim"),
        Sample((T(_distinct(rng, (0, 3))),), {"dim": 1}, desc="size-0, other dim"),
        Sample((T(_distinct(rng, (3, 2)), view="T"),), {"dim": 1}, desc="transposed view"),
        Sample((T(_distinct(rng, (2, 3)), view="step"),), {"dim": 1}, desc="strided view"),
    ]


def _full_minmax_samples(rng):
    tie = np.array([[1.0, 2.0, 2.0], [0.5, -1.0, 2.0]])
    return [
        Sample((T(_distinct(rng, (3, 4))),), desc="all"),
        Sample((T(_distinct(rng, ())),), desc="0-d"),
        Sample((T(_distinct(rng, (1, 3, 1))),), desc="size-1 dims"),
        Sample((T(_distinct(rng, (3, 2)), view="T"),), desc="transposed view"),
        Sample((T(_distinct(rng, (2, 3)), view="step"),), desc="strided view"),
        Sample((T(tie),), desc="ties share the gradient", smooth=False),
        Sample((T(U(rng, (2, 3))), T(U(rng, (3,)))), desc="elementwise against a tensor"),
    ]


def _arg_samples(rng):
    return [
        Sample((T(_distinct(rng, (3, 4))),), desc="flattened"),
        Sample((T(_distinct(rng, (3, 4))),), {"keepdim": True}, desc="flattened, keepdim"),
        Sample((T(_distinct(rng, (3, 4))),), {"dim": 1}, desc="dim=1"),
        Sample((T(_distinct(rng, (3, 4))),), {"dim": 0, "keepdim": True}, desc="keepdim"),
        Sample((T(_distinct(rng, ())),), desc="0-d"),
        Sample((T(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])),), {"dim": 1}, desc="ties: first index"),
        Sample((T(_distinct(rng, (3, 2)), view="T"),), {"dim": 0}, desc="transposed view"),
        Sample((T(_distinct(rng, (0, 3))),), {"dim": 1}, desc="size-0, other dim"),
    ]


def _amax_samples(rng):
    tie = np.array([[1.0, 2.0, 2.0], [0.5, 0.5, -1.0]])
    return [
        Sample((T(_distinct(rng, (3, 4))),), desc="all dims"),
        Sample((T(_distinct(rng, (3, 4))),), {"dim": 1}, desc="dim=1"),
        Sample((T(_distinct(rng, (2, 3, 2))),), {"dim": (0, 2)}, desc="dims (0, 2)"),
        Sample((T(_distinct(rng, (2, 3, 2))),), {"dim": (-1, 1), "keepdim": True}, desc="keepdim"),
        Sample((T(_distinct(rng, ())),), desc="0-d"),
        Sample((T(_distinct(rng, (1, 3, 1))),), {"dim": 0}, desc="size-1 dim"),
        Sample((T(_distinct(rng, (0, 3))),), {"dim": 1}, desc="size-0, other dim"),
        Sample((T(_distinct(rng, (3, 2)), view="T"),), {"dim": 0}, desc="transposed view"),
        Sample((T(_distinct(rng, (2, 3)), view="step"),), {"dim": -1}, desc="strided view"),
        Sample((T(tie),), {"dim": 1}, desc="ties share the gradient", smooth=False),
    ]


def _norm_samples(rng):
    return [
        Sample((T(A(rng, (3, 4))),), desc="2-norm, all"),
        Sample((T(A(rng, (3, 4))),), {"p": 2, "dim": 1}, desc="p=2 dim=1"),
        Sample((T(A(rng, (2, 3, 2))),), {"p": 1, "dim": (0, 2)}, desc="p=1 dims"),
        Sample((T(A(rng, (3, 4))),), {"p": 3, "dim": 0, "keepdim": True}, desc="p=3 keepdim"),
        Sample((T(_distinct(rng, (3, 4), 0.2, 2.0)),), {"p": float("inf"), "dim": 1}, desc="p=inf"),
        Sample((T(_distinct(rng, (3, 4), 0.2, 2.0)),), {"p": float("-inf"), "dim": 1}, desc="p=-inf"),
        Sample((T(A(rng, (3, 4))),), {"p": 0.5, "dim": 1}, desc="p=0.5"),
        Sample((T(A(rng, ())),), desc="0-d"),
        Sample((T(A(rng, (0, 3))),), {"dim": 0}, desc="size-0 dim"),
        Sample((T(A(rng, (3, 2)), view="T"),), {"dim": 0}, desc="transposed view"),
        Sample((T(A(rng, (2, 3)), view="step"),), {"p": 1, "dim": 1}, desc="strided view"),
    ]


def _softmax_samples(rng):
    big = np.array([[1e4, 0.0, -1e4], [3.0, 3.0, 3.0]])
    return [
        Sample((T(U(rng, (3, 4))),), {"dim": 1}, desc="dim=1"),
        Sample((T(U(rng, (2, 3, 2))),), {"dim": 0}, desc="dim=0"),
        Sample((T(U(rng, (2, 3, 2))),), {"dim": -2}, desc="dim=-2"),
        Sample((T(U(rng, ())),), {"dim": 0}, desc="0-d"),
        Sample((T(U(rng, (1, 3))),), {"dim": 0}, desc="size-1 dim"),
        Sample((T(U(rng, (0, 3))),), {"dim": 1}, desc="size-0"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"dim": -1}, desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"),), {"dim": 1}, desc="strided view"),
        Sample((T(big * 1.0),), {"dim": 1}, desc="huge logits"),
    ]


def _cumsum_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))),), {"dim": 1}, desc="dim=1"),
        Sample((T(U(rng, (2, 3, 2))),), {"dim": 0}, desc="dim=0"),
        Sample((T(U(rng, (2, 3))),), {"dim": -1}, desc="dim=-1"),
        Sample((T(U(rng, ())),), {"dim": 0}, desc="0-d"),
        Sample((T(U(rng, (0, 3))),), {"dim": 0}, desc="size-0"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"dim": 1}, desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"),), {"dim": 1}, desc="strided view"),
    ]


def _bool_reduce_samples(rng):
    x = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [1.0, -1.0, 3.0]])
    return [
        Sample((T(x),), desc="all"),
        Sample((T(x),), {"dim": 1}, desc="dim=1"),
        Sample((T(x),), {"dim": 0}, desc="dim=0"),
        Sample((T(x > 0),), {"dim": 1}, desc="bool input"),
        Sample((T(np.zeros((0, 3))),), {"dim": 0}, desc="size-0"),
        Sample((T(x[:2], view="T"),), {"dim": 0}, desc="transposed view"),
        Sample((T(x[:1]),), {"dim": 0}, desc="size-1 dim"),
    ]


def _count_nonzero_samples(rng):
    x = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    return [Sample((T(x),), desc="all"), Sample((T(x),), {"dim": 1}, desc="dim=1"),
            Sample((T(x),), {"dim": (0, 1)}, desc="dims"),
            Sample((T(np.zeros((0, 2))),), {"dim": 0}, desc="size-0"),
            Sample((T(x[:1]),), {"dim": 0}, desc="size-1 dim"),
            Sample((T(x, view="step"),), {"dim": 0}, desc="strided view")]


def _reshape_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))), (3, 2)), desc="2-d"),
        Sample((T(U(rng, (2, 3))), (-1,)), desc="-1"),
        Sample((T(U(rng, (2, 3))), (1, 3, 2, 1)), desc="size-1 dims"),
        Sample((T(U(rng, ())), (1, 1)), desc="0-d up"),
        Sample((T(U(rng, (1, 1))), ()), desc="to 0-d"),
        Sample((T(U(rng, (0, 3))), (3, 0, 1)), desc="size-0"),
        Sample((T(U(rng, (2, 3))), (2, 3)), desc="same shape"),
        Sample((T(U(rng, (3, 2)), view="T"), (6,)), desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"), (3, -1)), desc="strided view"),
    ]


def _view_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))), (3, 2)), desc="2-d"),
        Sample((T(U(rng, (2, 3))), (-1,)), desc="-1"),
        Sample((T(U(rng, ())), (1,)), desc="0-d"),
        Sample((T(U(rng, (0, 2))), (2, 0)), desc="size-0"),
        Sample((T(U(rng, (2, 1, 3))), (2, 3, 1)), desc="size-1 dims"),
        Sample((T(U(rng, (2, 3)), view="step"), (2, 3, 1)), desc="strided view, torch-viewable"),
        Sample((T(U(rng, (3, 2)), view="T"), (1, 3, 2)), desc="transposed view, torch-viewable"),
    ]


def _flatten_samples(rng):
    return [
        Sample((T(U(rng, (2, 3, 2))),), desc="all"),
        Sample((T(U(rng, (2, 3, 2))),), {"start_dim": 1}, desc="start_dim=1"),
        Sample((T(U(rng, (2, 3, 2))),), {"start_dim": 0, "end_dim": -2}, desc="end_dim"),
        Sample((T(U(rng, ())),), desc="0-d"),
        Sample((T(U(rng, (0, 2, 3))),), {"start_dim": 1}, desc="size-0"),
        Sample((T(U(rng, (3, 2)), view="T"),), desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"),), desc="strided view"),
    ]


def _unflatten_samples(rng):
    return [
        Sample((T(U(rng, (2, 6))),), {"dim": 1, "sizes": (2, 3)}, desc="dim=1"),
        Sample((T(U(rng, (6,))),), {"dim": 0, "sizes": (3, -1)}, desc="-1"),
        Sample((T(U(rng, (4, 1))),), {"dim": -2, "sizes": (2, 1, 2)}, desc="size-1"),
        Sample((T(U(rng, (0, 4))),), {"dim": 1, "sizes": (2, 2)}, desc="size-0"),
        Sample((T(U(rng, (2, 4)), view="T"),), {"dim": 1, "sizes": (2, 2)}, desc="transposed view"),
    ]


def _squeeze_samples(rng):
    return [
        Sample((T(U(rng, (1, 3, 1))),), desc="all"),
        Sample((T(U(rng, (1, 3, 1))),), {"dim": 0}, desc="dim=0"),
        Sample((T(U(rng, (1, 3, 1))),), {"dim": 1}, desc="non-1 dim: no-op"),
        Sample((T(U(rng, (1, 3, 1))),), {"dim": (0, -1)}, desc="dims tuple"),
        Sample((T(U(rng, ())),), desc="0-d"),
        Sample((T(U(rng, (1, 0))),), desc="size-0"),
        Sample((T(U(rng, (1, 3, 1)), view="step"),), {"dim": 0}, desc="strided view"),
    ]


def _unsqueeze_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))),), {"dim": 0}, desc="dim=0"),
        Sample((T(U(rng, (2, 3))),), {"dim": -1}, desc="dim=-1"),
        Sample((T(U(rng, (2, 3))),), {"dim": 1}, desc="middle"),
        Sample((T(U(rng, ())),), {"dim": 0}, desc="0-d"),
        Sample((T(U(rng, (0, 2))),), {"dim": 1}, desc="size-0"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"dim": 2}, desc="transposed view"),
    ]


def _transpose_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))),), {"dim0": 0, "dim1": 1}, desc="2-d"),
        Sample((T(U(rng, (2, 3, 2))),), {"dim0": -1, "dim1": 0}, desc="3-d"),
        Sample((T(U(rng, (2, 3))),), {"dim0": 1, "dim1": 1}, desc="same dim"),
        Sample((T(U(rng, (3,))),), {"dim0": 0, "dim1": -1}, desc="1-d"),
        Sample((T(U(rng, (0, 3))),), {"dim0": 0, "dim1": 1}, desc="size-0"),
        Sample((T(U(rng, (1, 3))),), {"dim0": 0, "dim1": 1}, desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"dim0": 0, "dim1": 1}, desc="transposed view"),
    ]


def _permute_samples(rng):
    return [
        Sample((T(U(rng, (2, 3, 2))), (2, 0, 1)), desc="3-d"),
        Sample((T(U(rng, (2, 3))), (-1, 0)), desc="negative"),
        Sample((T(U(rng, (2, 3))), (0, 1)), desc="identity"),
        Sample((T(U(rng, ())), ()), desc="0-d"),
        Sample((T(U(rng, (1, 0, 2))), (2, 1, 0)), desc="size-0"),
        Sample((T(U(rng, (2, 2, 3)), view="step"), (1, 2, 0)), desc="strided view"),
    ]


def _movedim_samples(rng):
    return [
        Sample((T(U(rng, (2, 3, 2))),), {"source": 0, "destination": -1}, desc="one dim"),
        Sample((T(U(rng, (2, 3, 1, 2))),), {"source": (0, 3), "destination": (1, 0)}, desc="two dims"),
        Sample((T(U(rng, (0, 3))),), {"source": 1, "destination": 0}, desc="size-0"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"source": 0, "destination": 1}, desc="transposed view"),
    ]


def _expand_samples(rng):
    return [
        Sample((T(U(rng, (3, 1))),), {"sizes": (3, 4)}, desc="size-1 dim"),
        Sample((T(U(rng, (3,))),), {"sizes": (2, 3)}, desc="new lead dim"),
        Sample((T(U(rng, (2, 1))),), {"sizes": (2, 2, -1)}, desc="-1 keeps"),
        Sample((T(U(rng, ())),), {"sizes": (2, 3)}, desc="0-d"),
        Sample((T(U(rng, (1, 3))),), {"sizes": (0, 3)}, desc="to size-0"),
        Sample((T(U(rng, (0, 1))),), {"sizes": (2, 0, 3)}, desc="size-0 input"),
        Sample((T(U(rng, (2, 1, 3)), view="step"),), {"sizes": (2, 2, 3)}, desc="strided view"),
    ]


def _broadcast_to_samples(rng):
    return [
        Sample((T(U(rng, (3, 1))), (3, 4)), desc="size-1 dim"),
        Sample((T(U(rng, (3,))), (2, 3)), desc="new lead dim"),
        Sample((T(U(rng, ())), (2,)), desc="0-d"),
        Sample((T(U(rng, (2, 3))), (2, 3)), desc="same shape"),
        Sample((T(U(rng, (1, 2))), (0, 2)), desc="to size-0"),
        Sample((T(U(rng, (0, 1))), (2, 0, 3)), desc="size-0 input"),
        Sample((T(U(rng, (1, 2, 3)), view="T"), (2, 2, 3)), desc="transposed view"),
        Sample((T(U(rng, (2, 1, 3)), view="step"), (2, 2, 3)), desc="strided view"),
    ]


def _repeat_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))),), {"reps": (2, 1)}, desc="2-d"),
        Sample((T(U(rng, (3,))),), {"reps": (2, 2)}, desc="new lead dim"),
        Sample((T(U(rng, ())),), {"reps": (3,)}, desc="0-d"),
        Sample((T(U(rng, (1, 2))),), {"reps": (1, 0)}, desc="to size-0"),
        Sample((T(U(rng, (0, 2))),), {"reps": (2, 1)}, desc="size-0 input"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"reps": (1, 2)}, desc="transposed view"),
    ]


def _tile_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))),), {"dims": (2,)}, desc="short dims"),
        Sample((T(U(rng, (3,))),), {"dims": (2, 2)}, desc="new lead dim"),
        Sample((T(U(rng, ())),), {"dims": (2,)}, desc="0-d"),
        Sample((T(U(rng, (0, 2))),), {"dims": (2, 1)}, desc="size-0"),
        Sample((T(U(rng, (2, 3)), view="step"),), {"dims": (1, 2)}, desc="strided view"),
    ]


def _cat_samples(rng):
    return [
        Sample((T(U(rng, (1, 3))), T(U(rng, (2, 3)))), {"dim": 0}, desc="dim=0"),
        Sample((T(U(rng, (2, 1))), T(U(rng, (2, 2))), T(U(rng, (2, 1)))), {"dim": -1}, desc="three, dim=-1"),
        Sample((T(U(rng, (2, 0))), T(U(rng, (2, 2)))), {"dim": 1}, desc="size-0 part"),
        Sample((T(U(rng, (0,))), T(U(rng, (2, 2)))), {"dim": 0}, desc="legacy 1-d empty skipped"),
        Sample((T(U(rng, (2, 3))),), {"dim": 0}, desc="single tensor"),
        Sample((T(U(rng, (3, 2)), view="T"), T(U(rng, (3, 1)), view="step")), {"dim": 1}, desc="views"),
    ]


def _stack_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))), T(U(rng, (2, 3)))), {"dim": 0}, desc="dim=0"),
        Sample((T(U(rng, (3,))), T(U(rng, (3,))), T(U(rng, (3,)))), {"dim": -1}, desc="dim=-1"),
        Sample((T(U(rng, ())), T(U(rng, ()))), {"dim": 0}, desc="0-d"),
        Sample((T(U(rng, (0, 2))), T(U(rng, (0, 2)))), {"dim": 1}, desc="size-0"),
        Sample((T(U(rng, (3, 2)), view="T"), T(U(rng, (3, 2)), view="step")), {"dim": 1}, desc="views"),
    ]


def _split_samples(rng):
    return [
        Sample((T(U(rng, (5, 2))),), {"split_size_or_sections": 2}, desc="size 2"),
        Sample((T(U(rng, (2, 5))),), {"split_size_or_sections": [1, 3, 1], "dim": 1}, desc="sections"),
        Sample((T(U(rng, (2, 3))),), {"split_size_or_sections": [3, 0], "dim": -1}, desc="empty section"),
        Sample((T(U(rng, (2, 3))),), {"split_size_or_sections": 3, "dim": 1}, desc="one piece"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"split_size_or_sections": 1, "dim": 0}, desc="transposed view"),
        Sample((T(U(rng, (0, 2))),), {"split_size_or_sections": 1}, desc="size-0"),
        Sample((T(U(rng, (1, 3))),), {"split_size_or_sections": 1}, desc="size-1"),
    ]


def _chunk_samples(rng):
    return [
        Sample((T(U(rng, (6, 2))),), {"chunks": 3}, desc="even"),
        Sample((T(U(rng, (2, 5))),), {"chunks": 2, "dim": 1}, desc="uneven"),
        Sample((T(U(rng, (6,))),), {"chunks": 4}, desc="fewer chunks than asked"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"chunks": 2, "dim": 1}, desc="transposed view"),
        Sample((T(U(rng, (0, 2))),), {"chunks": 2}, desc="size-0 dim"),
        Sample((T(U(rng, (1, 4))),), {"chunks": 3}, desc="size-1 dim"),
    ]


def _unbind_samples(rng):
    return [
        Sample((T(U(rng, (3, 2))),), desc="dim=0"),
        Sample((T(U(rng, (2, 3))),), {"dim": -1}, desc="dim=-1"),
        Sample((T(U(rng, (1, 2))),), desc="size-1"),
        Sample((T(U(rng, (0, 2))),), {"dim": 1}, desc="size-0"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"dim": 1}, desc="transposed view"),
    ]


def _flip_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))),), {"dims": (0,)}, desc="dim 0"),
        Sample((T(U(rng, (2, 3, 2))),), {"dims": (0, -1)}, desc="two dims"),
        Sample((T(U(rng, ())),), {"dims": ()}, desc="0-d"),
        Sample((T(U(rng, (0, 2))),), {"dims": (1,)}, desc="size-0"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"dims": (1,)}, desc="transposed view"),
    ]


def _roll_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))),), {"shifts": 1, "dims": 1}, desc="one dim"),
        Sample((T(U(rng, (2, 3))),), {"shifts": (1, -2), "dims": (0, 1)}, desc="two dims"),
        Sample((T(U(rng, (2, 3))),), {"shifts": 4}, desc="flattened"),
        Sample((T(U(rng, (0, 3))),), {"shifts": 1, "dims": 1}, desc="size-0"),
        Sample((T(U(rng, (1, 3))),), {"shifts": 2, "dims": 0}, desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"shifts": -1, "dims": 0}, desc="transposed view"),
    ]


def _narrow_samples(rng):
    return [
        Sample((T(U(rng, (4, 2))),), {"dim": 0, "start": 1, "length": 2}, desc="dim=0"),
        Sample((T(U(rng, (2, 4))),), {"dim": -1, "start": 0, "length": 0}, desc="empty"),
        Sample((T(U(rng, (1, 3))),), {"dim": 0, "start": 0, "length": 1}, desc="size-1"),
        Sample((T(U(rng, (2, 0))),), {"dim": 1, "start": 0, "length": 0}, desc="size-0"),
        Sample((T(U(rng, (2, 3)), view="T"),), {"dim": 1, "start": 1, "length": 2}, desc="transposed view"),
    ]


def _getitem_samples(rng):
    x = lambda *shape, view=None: T(U(rng, shape), view=view)  # noqa: E731
    return [
        Sample((x(3, 4), 1), desc="int"),
        Sample((x(3, 4), -1), desc="negative int"),
        Sample((x(3, 4), (1, 2)), desc="two ints -> 0-d"),
        Sample((x(3, 4), slice(0, 2)), desc="slice"),
        Sample((x(3, 4), (slice(None), slice(1, None, 2))), desc="strided slice"),
        Sample((x(3, 4), (None, 1)), desc="None"),
        Sample((x(2, 3, 2), (Ellipsis, 0)), desc="Ellipsis"),
        Sample((x(2, 3, 2), (0, Ellipsis, None)), desc="int, Ellipsis, None"),
        Sample((x(3, 4), _mask(rng.uniform(size=(3, 4)) > 0.5)), desc="bool mask, full"),
        Sample((x(3, 4), _mask([True, False, True])), desc="bool mask, rows"),
        Sample((x(3, 4), (slice(None), _mask([False, True, True, False]))), desc="bool mask, cols"),
        Sample((x(3, 4), _idx([0, 2, 0, 0])), desc="int array with repeats"),
        Sample((x(3, 4), (slice(None), _idx([[1, 1], [3, 0]]))), desc="2-d int array"),
        Sample((x(3, 4), (_idx([0, 2, 2]), _idx([1, 1, 3]))), desc="two int arrays, repeats"),
        Sample((x(3, 4), (_idx([2, 0]), slice(1, 3))), desc="int array then slice"),
        Sample((x(3, 4), [0, 0, 1]), desc="python list with repeats"),
        Sample((x(3, 4), slice(2, 2)), desc="empty slice"),
        Sample((x(3, 4), _idx(np.zeros(0))), desc="empty int array"),
        Sample((x(2, 3, view="T"), (slice(None), _idx([0, 2, 2]))), desc="transposed view"),
        Sample((x(2, 3, view="step"), (1, slice(None, None, 2))), desc="strided view"),
        Sample((x(0, 3), (slice(None), 1)), desc="size-0"),
        Sample((x(1, 3), (0, _idx([2, 2]))), desc="size-1"),
    ]


def _gather_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))), 1, _idx([[0, 0], [3, 1], [2, 2]])), desc="dim=1 repeats"),
        Sample((T(U(rng, (3, 2))), 0, _idx([[2, 0], [2, 2], [1, 0], [0, 0]])), desc="dim=0, more rows"),
        Sample((T(U(rng, (2, 3))), -1, _idx([[1], [0]])), desc="smaller index"),
        Sample((T(U(rng, (2, 3))), 0, _idx(np.zeros((0, 3)))), desc="size-0 index"),
        Sample((T(U(rng, (2, 3)), view="T"), 1, _idx([[2, 0, 0], [1, 1, 1]])), desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"), 0, _idx([[1, 0, 1]])), desc="strided view"),
        Sample((T(U(rng, (1, 3))), 1, _idx([[2]])), desc="size-1"),
    ]


def _scatter_add_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))), 1, _idx([[0, 0], [3, 1], [2, 2]]), T(U(rng, (3, 2)))), desc="dim=1 repeats"),
        Sample((T(U(rng, (3, 2))), 0, _idx([[2, 0], [2, 2]]), T(U(rng, (2, 2)))), desc="dim=0"),
        # PyTorch's own backward fails here (it returns index-shaped grads for src)
        Sample((T(U(rng, (2, 3))), 1, _idx([[1], [0]]), T(U(rng, (2, 3)))), desc="src larger than index",
               ref_grad=False),
        Sample((T(U(rng, (2, 3))), 0, _idx(np.zeros((0, 3))), T(U(rng, (1, 3)))), desc="size-0 index"),
        Sample((T(U(rng, (2, 3)), view="T"), 0, _idx([[0, 1, 0]]), T(U(rng, (1, 3)), view="step")), desc="views"),
    ]


def _scatter_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))), 1, _idx([[0, 2], [3, 1], [1, 2]]), T(U(rng, (3, 2)))), desc="src, distinct"),
        Sample((T(U(rng, (3, 2))), 0, _idx([[2, 0]])), {"value": 1.5}, desc="value"),
        Sample((T(U(rng, (2, 3)), view="T"), 1, _idx([[0], [2]]), T(U(rng, (2, 2)))), desc="view, src larger",
               ref_grad=False),
        Sample((T(U(rng, (2, 3)), view="T"), 1, _idx([[0], [2]]), T(U(rng, (2, 1)))), desc="view"),
        Sample((T(U(rng, (0, 3))), 0, _idx(np.zeros((0, 3))), T(U(rng, (0, 3)))), desc="size-0"),
    ]


def _index_select_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))), 0, _idx([2, 0, 2])), desc="dim=0 repeats"),
        Sample((T(U(rng, (3, 4))), -1, _idx([1, 1, 3, 0, 1])), desc="dim=-1"),
        Sample((T(U(rng, (4,))), 0, _idx(1)), desc="0-d index"),
        Sample((T(U(rng, (3, 2))), 1, _idx(np.zeros(0))), desc="size-0 index"),
        Sample((T(U(rng, (2, 3)), view="T"), 1, _idx([0, 2, 2])), desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"), 0, _idx([1, 1])), desc="strided view"),
        Sample((T(U(rng, (1, 3))), 0, _idx([0, 0])), desc="size-1"),
    ]


def _index_add_samples(rng):
    return [
        Sample((T(U(rng, (3, 2))), 0, _idx([2, 0, 2]), T(U(rng, (3, 2)))), desc="repeats"),
        Sample((T(U(rng, (2, 3))), 1, _idx([1]), T(U(rng, (2, 1)))), {"alpha": 3}, desc="alpha"),
        Sample((T(U(rng, (3, 2)), view="T"), 1, _idx([0, 0]), T(U(rng, (3, 2)), view="T")), desc="views"),
        Sample((T(U(rng, (2, 0))), 1, _idx(np.zeros(0)), T(U(rng, (2, 0)))), desc="size-0"),
    ]


def _masked_fill_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))), _mask(rng.uniform(size=(3, 4)) > 0.5), 0.25), desc="full mask"),
        Sample((T(U(rng, (3, 4))), _mask([[True], [False], [True]]), -1.0), desc="broadcast mask"),
        Sample((T(U(rng, (2, 3))), _mask([True, False, True]), T(np.array(0.7))), desc="0-d tensor value"),
        Sample((T(U(rng, (0, 3))), _mask([True, False, False]), 1.0), desc="size-0"),
        Sample((T(U(rng, ())), _mask(True), 2.0), desc="0-d"),
        Sample((T(U(rng, (2, 3)), view="T"), _mask([[True, False, True]]), 5), desc="transposed view, int value"),
    ]


def _take_along_dim_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))), _idx([[0, 0], [3, 1], [2, 2]])), {"dim": 1}, desc="dim=1 repeats"),
        Sample((T(U(rng, (3, 4))), _idx([[0], [3], [2]])), {"dim": 1}, desc="argmax-like"),
        Sample((T(U(rng, (3, 1))), _idx([[1, 0, 0, 1]])), {"dim": 0}, desc="broadcast other dims"),
        Sample((T(U(rng, (2, 3))), _idx([5, 0, 0])), desc="flattened (dim=None)"),
        Sample((T(U(rng, (2, 3)), view="T"), _idx([[2], [1]])), {"dim": 1}, desc="transposed view"),
        Sample((T(U(rng, (0, 3))), _idx(np.zeros((0, 1)))), {"dim": 1}, desc="size-0"),
    ]


def _compare_row(name):
    fn_am, fn_t = getattr(am, name), getattr(torch, name)

    def samples(rng):
        a = np.round(U(rng, (2, 3)))
        return [
            Sample((T(a), T(np.round(U(rng, (2, 3))))), desc="same shape"),
            Sample((T(a), T(np.round(U(rng, (3,))))), desc="broadcast"),
            Sample((T(a), 1.0), desc="float scalar"),
            Sample((T(a), 0), desc="int scalar"),
            Sample((T(np.round(U(rng, ()))), T(a)), desc="0-d lhs"),
            Sample((T(U(rng, (0, 3))), T(U(rng, (3,)))), desc="size-0"),
            Sample((T(np.round(U(rng, (2, 3))), view="T"), T(a, view="step")), desc="views"),
            Sample((T(np.array([np.nan, 1.0, np.inf])), T(np.array([np.nan, np.inf, np.inf]))), desc="nan, inf"),
        ]
    return OpInfo(name, fn_am, fn_t, samples, differentiable=False, dtypes=("float64", "float32", "int64"))


def _logical_row(name):
    def samples(rng):
        b = rng.uniform(size=(2, 3)) > 0.5
        return [
            Sample((T(b), T(rng.uniform(size=(2, 3)) > 0.5)), desc="bool"),
            Sample((T(b), T(np.array([True, False, True]))), desc="broadcast"),
            Sample((T(np.array([[0.0, 1.5, -2.0]])), T(np.array([[0.0], [3.0]]))), desc="floats"),
            Sample((T(np.zeros((0, 3), bool)), T(np.ones(3, bool))), desc="size-0"),
            Sample((T(np.array([[0.0, 2.0, 1.0], [1.0, 0.0, 1.0]]), view="T"), T(b)), desc="view"),
        ]
    return OpInfo(name, getattr(am, name), getattr(torch, name), samples, differentiable=False,
                  dtypes=("float64", "float32", "int64"))


def _special_unary_row(name, am_fn=None, t_fn=None):
    def samples(rng):
        return [
            Sample((T(np.array([[np.nan, 1.0, np.inf], [-np.inf, 0.0, -2.5]])),), desc="specials"),
            Sample((T(U(rng, (0, 2))),), desc="size-0"),
            Sample((T(np.array(np.nan)),), desc="0-d"),
            Sample((T(np.array([[np.nan, 1.0, np.inf], [-np.inf, 0.0, -2.5]]), view="T"),), desc="view"),
        ]
    return OpInfo(name, am_fn or getattr(am, name), t_fn or getattr(torch, name), samples,
                  differentiable=False, dtypes=("float64", "float32"))


def _rounding_row(name):
    def samples(rng):
        return [
            Sample((T(np.array([[-2.5, -1.5, -0.5, 0.5], [1.5, 2.5, 0.49, -0.51]])),), desc="halves"),
            Sample((T(U(rng, (2, 3), -5, 5)),), desc="random"),
            Sample((T(U(rng, ())),), desc="0-d"),
            Sample((T(U(rng, (0, 2))),), desc="size-0"),
            Sample((T(U(rng, (3, 2), -5, 5), view="T"),), desc="view"),
        ]
    return OpInfo(name, getattr(am, name), getattr(torch, name), samples, differentiable=False)


def _floor_div_gen_b(rng, shape):
    return A(rng, shape, 0.6, 2.0)


def _remainder_gen_a(rng, shape):
    # keep a / b clear of integers (where remainder jumps)
    return rng.uniform(0.1, 0.9, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def _remainder_gen_b(rng, shape):
    return rng.uniform(1.0, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def _logsumexp_samples(rng):
    # logsumexp needs dim (as in PyTorch); the huge rows check the max-shift
    out = [s for s in reduction_samples()(rng) if "dim" in s.kwargs]
    out.append(Sample((T(np.array([[1e4, 1e4 - 1.0], [-1e4, 0.0]])),), {"dim": 1}, desc="huge logits"))
    out.append(Sample((T(np.array([[-np.inf, -np.inf], [0.0, -np.inf]])),), {"dim": 1}, desc="-inf rows",
                      smooth=False))
    return out


OP_TABLE: list[OpInfo] = [
    # ---------------------------------------------------------------- binary arithmetic
    OpInfo("add", am.add, torch.add, _samples(binary_samples(scalars=(2.5, 2, True)), _add_alpha),
           dtypes=("float64", "float32", "int64")),
    OpInfo("sub", am.sub, torch.sub, _samples(binary_samples(), _add_alpha), dtypes=("float64", "float32", "int64")),
    _binary_row("mul", am.mul, torch.mul),
    _binary_row("div", am.div, torch.div, U, A, dtypes=("float64", "float32")),
    _binary_row("floor_divide", am.floor_divide, torch.floor_divide, U, _floor_div_gen_b,
                differentiable=False, scalars=(1.5, 2, -0.75)),
    _binary_row("remainder", am.remainder, torch.remainder, _remainder_gen_a, _remainder_gen_b,
                dtypes=("float64", "float32", "int64"), scalars=(1.25, -1.5, 3)),
    _binary_row("pow", am.pow, torch.pow, P, U, dtypes=("float64", "float32")),
    OpInfo("pow_scalar_exponent", am.pow, torch.pow, _pow_scalar_samples),
    _binary_row("maximum", am.maximum, torch.maximum, dtypes=("float64", "float32", "int64"), scalars=()),
    _binary_row("minimum", am.minimum, torch.minimum, dtypes=("float64", "float32", "int64"), scalars=()),
    _binary_row("atan2", am.atan2, torch.atan2, A, A, dtypes=("float64", "float32"), scalars=()),
    OpInfo("where", am.where, torch.where, _where_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("lerp", am.lerp, torch.lerp, _lerp_samples),
    OpInfo("addcmul", am.addcmul, torch.addcmul, _addcmul_samples),
    # reflected operators: number OP tensor
    OpInfo("__radd__", lambda x, s: s + x, lambda x, s: s + x, reflected_samples(), dtypes=("float64", "float32", "int64")),
    OpInfo("__rsub__", lambda x, s: s - x, lambda x, s: s - x, reflected_samples(), dtypes=("float64", "float32", "int64")),
    OpInfo("__rmul__", lambda x, s: s * x, lambda x, s: s * x, reflected_samples(), dtypes=("float64", "float32", "int64")),
    OpInfo("__rtruediv__", lambda x, s: s / x, lambda x, s: s / x, reflected_samples(A)),
    OpInfo("__rpow__", lambda x, s: s ** x, lambda x, s: s ** x, reflected_samples(U, (2.5, 3, 0.5))),
    OpInfo("__rfloordiv__", lambda x, s: s // x, lambda x, s: s // x, reflected_samples(A, (2.5, 3)),
           differentiable=False),
    OpInfo("__rmod__", lambda x, s: s % x, lambda x, s: s % x, reflected_samples(_remainder_gen_b, (0.3, -0.45), ref_grad=False)),
    OpInfo("__mod__", operator.mod, operator.mod, binary_samples(_remainder_gen_a, _remainder_gen_b, (1.25,))),
    OpInfo("__floordiv__", operator.floordiv, operator.floordiv,
           binary_samples(U, _floor_div_gen_b, (1.5, 2)), differentiable=False),
    OpInfo("__pow__", operator.pow, operator.pow, binary_samples(P, U, (2, 0.5))),
    # ---------------------------------------------------------------------- unary math
    _unary_row("neg", dtypes=("float64", "float32", "int64")),
    _unary_row("abs", A, dtypes=("float64", "float32", "int64")),
    OpInfo("sign", am.sign, torch.sign, unary_samples(U), differentiable=False,
           dtypes=("float64", "float32", "int64")),
    _unary_row("exp"),
    _unary_row("log", P),
    _unary_row("log1p", lambda rng, s: U(rng, s, -0.5, 2.0)),
    _unary_row("expm1"),
    _unary_row("sqrt", P),
    _unary_row("rsqrt", P),
    _unary_row("sin"),
    _unary_row("cos"),
    _unary_row("tan", lambda rng, s: U(rng, s, -1.2, 1.2)),
    _unary_row("tanh"),
    _unary_row("sigmoid"),
    _unary_row("erf"),
    _unary_row("square", dtypes=("float64", "float32", "int64")),
    _unary_row("reciprocal", A),
    _unary_row("log2", P),
    _unary_row("log10", P),
    OpInfo("clamp", am.clamp, torch.clamp, _clamp_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("clamp_tensor_bounds", am.clamp, torch.clamp, _clamp_tensor_samples),
    _rounding_row("floor"),
    _rounding_row("ceil"),
    _rounding_row("round"),
    _rounding_row("trunc"),
    # ------------------------------------------------------- comparisons and logical ops
    _compare_row("eq"), _compare_row("ne"), _compare_row("lt"), _compare_row("le"),
    _compare_row("gt"), _compare_row("ge"),
    _logical_row("logical_and"), _logical_row("logical_or"), _logical_row("logical_xor"),
    _special_unary_row("logical_not"),
    _special_unary_row("isnan"), _special_unary_row("isfinite"), _special_unary_row("isinf"),
    # ------------------------------------------------------------------- linear algebra
    OpInfo("matmul", am.matmul, torch.matmul, _matmul_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("__matmul__", operator.matmul, operator.matmul,
           lambda rng: [Sample((T(U(rng, (2, 3))), T(U(rng, (3, 2))))),
                        Sample((T(U(rng, (2, 3, 2)), view="T"), T(U(rng, (2,))))),
                        Sample((T(U(rng, (3,))), T(U(rng, (2, 3, 2)), view="step"))),
                        Sample((T(U(rng, (0, 3))), T(U(rng, (3, 1)))), desc="size-0 and size-1")]),
    OpInfo("mm", am.mm, torch.mm, lambda rng: [Sample((T(U(rng, (2, 3))), T(U(rng, (3, 2))))),
                                                Sample((T(U(rng, (2, 3)), view="T"), T(U(rng, (3, 0))))),
                                                Sample((T(U(rng, (1, 3))), T(U(rng, (3, 2)), view="T")))]),
    OpInfo("bmm", am.bmm, torch.bmm, lambda rng: [Sample((T(U(rng, (2, 2, 3))), T(U(rng, (2, 3, 2))))),
                                                  Sample((T(U(rng, (1, 2, 3)), view="T"), T(U(rng, (1, 3, 1))))),
                                                  Sample((T(U(rng, (0, 2, 3))), T(U(rng, (0, 3, 2)))))]),
    OpInfo("addmm", am.addmm, torch.addmm,
           lambda rng: [Sample((T(U(rng, (2,))), T(U(rng, (3, 2))), T(U(rng, (2, 2)))), {"beta": 0.5, "alpha": 2.0}),
                        Sample((T(U(rng, (3, 1))), T(U(rng, (3, 2)), view="T"), T(U(rng, (2, 1))))),
                        Sample((T(U(rng, (2, 2))), T(U(rng, (2, 0))), T(U(rng, (0, 2)))), {"beta": 0},
                               desc="size-0 contraction, beta=0")]),
    OpInfo("baddbmm", am.baddbmm, torch.baddbmm,
           lambda rng: [Sample((T(U(rng, (2, 2, 2))), T(U(rng, (2, 2, 3))), T(U(rng, (2, 3, 2)))), {"alpha": -1.5}),
                        Sample((T(U(rng, (1, 2))), T(U(rng, (1, 2, 3)), view="T"), T(U(rng, (1, 3, 2)))),
                               {"beta": 2.0}, desc="broadcast input"),
                        Sample((T(U(rng, (0, 2, 1))), T(U(rng, (0, 2, 3))), T(U(rng, (0, 3, 1))))),
                        Sample((T(U(rng, (2, 2, 2)), view="step"), T(U(rng, (2, 2, 1))), T(U(rng, (2, 1, 2)))))]),
    OpInfo("dot", am.dot, torch.dot, lambda rng: [Sample((T(U(rng, (4,))), T(U(rng, (4,))))),
                                                  Sample((T(U(rng, (3,)), view="step"), T(U(rng, (3,))))),
                                                  Sample((T(U(rng, (0,))), T(U(rng, (0,))))),
                                                  Sample((T(U(rng, (1,))), T(U(rng, (1,)))))]),
    OpInfo("outer", am.outer, torch.outer, lambda rng: [Sample((T(U(rng, (3,))), T(U(rng, (2,))))),
                                                      Sample((T(U(rng, (1,))), T(U(rng, (3,)), view="step"))),
                                                      Sample((T(U(rng, (0,))), T(U(rng, (2,)))))]),
    OpInfo("einsum", lambda *xs, eq: am.einsum(eq, *xs), lambda *xs, eq: torch.einsum(eq, *xs), _einsum_samples),
    OpInfo("linear", am.nn.functional.linear, TF.linear, _linear_samples),
    # ----------------------------------------------------------------------- reductions
    OpInfo("sum", am.sum, torch.sum, reduction_samples(), dtypes=("float64", "float32", "int64")),
    OpInfo("mean", am.mean, torch.mean, reduction_samples()),
    OpInfo("var", am.var, torch.var, _undefined_for_0d(reduction_samples(empty=False, extra=(_var_extra, _var_extra2, _var_extra0)))),
    OpInfo("std", am.std, torch.std, _undefined_for_0d(reduction_samples(A, empty=False, extra=(_var_extra, _var_extra2, _var_extra0)))),
    OpInfo("prod", am.prod, torch.prod, _prod_samples),
    OpInfo("max", am.max, torch.max, _full_minmax_samples),
    OpInfo("max_dim", am.max, torch.max, _max_dim_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("min", am.min, torch.min, _full_minmax_samples),
    OpInfo("min_dim", am.min, torch.min, _max_dim_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("argmax", am.argmax, torch.argmax, _arg_samples, differentiable=False, dtypes=("float64", "float32", "int64")),
    OpInfo("argmin", am.argmin, torch.argmin, _arg_samples, differentiable=False, dtypes=("float64", "float32", "int64")),
    OpInfo("amax", am.amax, torch.amax, _amax_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("amin", am.amin, torch.amin, _amax_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("logsumexp", am.logsumexp, torch.logsumexp, _logsumexp_samples),
    OpInfo("norm", am.norm, torch.norm, _norm_samples),
    OpInfo("softmax", am.softmax, torch.softmax, _softmax_samples),
    OpInfo("log_softmax", am.log_softmax, torch.log_softmax, _softmax_samples),
    OpInfo("cumsum", am.cumsum, torch.cumsum, _cumsum_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("all", am.all, torch.all, _bool_reduce_samples, differentiable=False),
    OpInfo("any", am.any, torch.any, _bool_reduce_samples, differentiable=False),
    OpInfo("count_nonzero", am.count_nonzero, torch.count_nonzero, _count_nonzero_samples, differentiable=False),
    # ------------------------------------------------------------------------ shape ops
    OpInfo("reshape", am.reshape, torch.reshape, _reshape_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("view", lambda x, shape: x.view(shape), lambda x, shape: x.view(shape), _view_samples),
    OpInfo("flatten", am.flatten, torch.flatten, _flatten_samples),
    OpInfo("unflatten", am.unflatten, torch.unflatten, _unflatten_samples),
    OpInfo("squeeze", am.squeeze, torch.squeeze, _squeeze_samples),
    OpInfo("unsqueeze", am.unsqueeze, torch.unsqueeze, _unsqueeze_samples),
    OpInfo("transpose", am.transpose, torch.transpose, _transpose_samples),
    OpInfo("permute", am.permute, torch.permute, _permute_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("movedim", am.movedim, torch.movedim, _movedim_samples),
    OpInfo("expand", lambda x, sizes: x.expand(*sizes), lambda x, sizes: x.expand(*sizes), _expand_samples),
    OpInfo("broadcast_to", am.broadcast_to, torch.broadcast_to, _broadcast_to_samples),
    OpInfo("repeat", lambda x, reps: x.repeat(*reps), lambda x, reps: x.repeat(*reps), _repeat_samples),
    OpInfo("tile", am.tile, torch.tile, _tile_samples),
    OpInfo("cat", lambda *xs, dim: am.cat(list(xs), dim=dim), lambda *xs, dim: torch.cat(list(xs), dim=dim),
           _cat_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("stack", lambda *xs, dim: am.stack(list(xs), dim=dim), lambda *xs, dim: torch.stack(list(xs), dim=dim),
           _stack_samples),
    OpInfo("split", am.split, torch.split, _split_samples),
    OpInfo("chunk", am.chunk, torch.chunk, _chunk_samples),
    OpInfo("unbind", am.unbind, torch.unbind, _unbind_samples),
    OpInfo("flip", am.flip, torch.flip, _flip_samples),
    OpInfo("roll", am.roll, torch.roll, _roll_samples),
    OpInfo("narrow", am.narrow, torch.narrow, _narrow_samples),
    OpInfo("pad_constant", _am_pad, _torch_pad, _pad_samples("constant")),
    OpInfo("pad_reflect", lambda x, pad: _am_pad(x, pad, "reflect"), lambda x, pad: _torch_pad(x, pad, "reflect"),
           _pad_samples("reflect")),
    OpInfo("pad_replicate", lambda x, pad: _am_pad(x, pad, "replicate"), lambda x, pad: _torch_pad(x, pad, "replicate"),
           _pad_samples("replicate")),
    OpInfo("pad_circular", lambda x, pad: _am_pad(x, pad, "circular"), lambda x, pad: _torch_pad(x, pad, "circular"),
           _pad_samples("circular")),
    # --------------------------------------------------------------------------- indexing
    OpInfo("getitem", operator.getitem, operator.getitem, _getitem_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("gather", am.gather, torch.gather, _gather_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("scatter_add", am.scatter_add, torch.scatter_add, _scatter_add_samples),
    OpInfo("scatter", am.scatter, torch.scatter, _scatter_samples),
    OpInfo("index_select", am.index_select, torch.index_select, _index_select_samples,
           dtypes=("float64", "float32", "int64")),
    OpInfo("index_add", am.index_add, torch.index_add, _index_add_samples),
    OpInfo("masked_fill", am.masked_fill, torch.masked_fill, _masked_fill_samples,
           dtypes=("float64", "float32", "int64")),
    OpInfo("take_along_dim", am.take_along_dim, torch.take_along_dim, _take_along_dim_samples),
    # ----------------------------------------------------------------------- conversions
    OpInfo("clone", am.clone, torch.clone, unary_samples(U), dtypes=("float64", "float32", "int64")),
    OpInfo("to_float32", lambda x: x.to(am.float32), lambda x: x.to(torch.float32), unary_samples(U),
           dtypes=("float64",), gradcheck=False),
    OpInfo("contiguous", lambda x: x.contiguous(), lambda x: x.contiguous(), unary_samples(U)),
]

# ------------------------------------------------- sorting, selection, scatter_reduce (issue 16)
def _sort_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))),), desc="last dim"),
        Sample((T(U(rng, (3, 4))),), {"dim": 0, "descending": True}, desc="dim 0 descending"),
        Sample((T(U(rng, (5,))),), {"descending": True, "stable": True}, desc="1-d"),
        Sample((T(U(rng, ())),), desc="0-d"),
        Sample((T(U(rng, (0, 3))),), desc="size-0"),
        Sample((T(U(rng, (1, 3, 1))),), {"dim": 1}, desc="size-1 dims"),
        Sample((T(U(rng, (3, 2)), view="T"),), {"dim": -1}, desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"),), {"descending": True}, desc="strided view"),
    ]


def _sort_int_samples(rng):
    # integer data has ties: stable sorts agree on them
    return [Sample(s.args, {**s.kwargs, "stable": True}, s.desc) for s in _sort_samples(rng)]


def _topk_samples(rng):
    return [
        Sample((T(U(rng, (3, 5))), 2), desc="k=2"),
        Sample((T(U(rng, (4, 3))), 3), {"dim": 0, "largest": False}, desc="smallest, dim 0"),
        Sample((T(U(rng, (4,))), 0), desc="k=0"),
        Sample((T(U(rng, (0, 3))), 1), desc="size-0"),
        Sample((T(U(rng, (1, 3))), 1), {"dim": 0}, desc="size-1"),
        Sample((T(U(rng, ())), 1), desc="0-d"),
        Sample((T(U(rng, (3, 2)), view="T"), 2), desc="transposed view"),
        Sample((T(U(rng, (2, 4)), view="step"), 1), desc="strided view"),
    ]


def _small_ints(rng, shape):
    return rng.integers(-2, 3, size=shape).astype(np.float64)


def _unique_samples(rng):
    return [
        Sample((T(_small_ints(rng, (3, 4))),), desc="values"),
        Sample((T(_small_ints(rng, (3, 4))),), {"return_inverse": True, "return_counts": True}, desc="inverse, counts"),
        Sample((T(np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 3.0]])),), {"dim": 0, "return_inverse": True,
                                                                   "return_counts": True}, desc="dim 0"),
        Sample((T(np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 3.0]])),), {"dim": 1, "return_counts": True}, desc="dim 1"),
        Sample((T(_small_ints(rng, ())),), {"return_inverse": True}, desc="0-d"),
        Sample((T(np.zeros((0, 3))),), {"return_counts": True}, desc="size-0"),
        Sample((T(_small_ints(rng, (1, 3))),), desc="size-1"),
        Sample((T(_small_ints(rng, (3, 2)), view="T"),), {"return_inverse": True}, desc="transposed view"),
        Sample((T(_small_ints(rng, (2, 3)), view="step"),), {"dim": 1}, desc="strided view"),
    ]


def _sparse(rng, shape):
    return np.where(rng.uniform(size=shape) < 0.5, 0.0, U(rng, shape))


def _nonzero_samples(rng):
    return [
        Sample((T(_sparse(rng, (3, 4))),), desc="2-d"),
        Sample((T(_sparse(rng, (3, 4))),), {"as_tuple": True}, desc="as_tuple"),
        Sample((T(np.array(2.0)),), desc="0-d"),
        Sample((T(np.array(2.0)),), {"as_tuple": True}, desc="0-d as_tuple"),
        Sample((T(np.zeros((0, 3))),), desc="size-0"),
        Sample((T(_sparse(rng, (1, 3, 1))),), desc="size-1"),
        Sample((T(_sparse(rng, (3, 2)), view="T"),), desc="transposed view"),
        Sample((T(_sparse(rng, (2, 3)), view="step"),), {"as_tuple": True}, desc="strided view"),
    ]


def _sorted_rows(rng, shape):
    return np.sort(np.round(U(rng, shape), 1), axis=-1)


def _searchsorted_samples(rng):
    return [
        Sample((T(_sorted_rows(rng, (6,))), T(np.round(U(rng, (2, 3)), 1))), desc="1-d sequence"),
        Sample((T(_sorted_rows(rng, (6,))), T(np.round(U(rng, (4,)), 1))), {"right": True}, desc="right"),
        Sample((T(_sorted_rows(rng, (2, 4))), T(np.round(U(rng, (2, 3)), 1))), {"side": "right"}, desc="batched"),
        Sample((T(_sorted_rows(rng, (5,))), T(np.round(U(rng, ()), 1))), desc="0-d values"),
        Sample((T(_sorted_rows(rng, (5,))), T(np.zeros((0,)))), desc="size-0 values"),
        Sample((T(_sorted_rows(rng, (1,))), T(U(rng, (1, 3)))), desc="size-1 sequence"),
        Sample((T(_sorted_rows(rng, (3, 2)), view="T"), T(U(rng, (3, 2)))), desc="transposed sequence view"),
        Sample((T(_sorted_rows(rng, (6,)), view="step"), T(U(rng, (2, 3)), view="step")), desc="strided views"),
        Sample((T(_sorted_rows(rng, (4,))), 0.25), desc="number"),
    ]


def _bucketize_samples(rng):
    return [
        Sample((T(np.round(U(rng, (2, 3)), 1)), T(_sorted_rows(rng, (5,)))), desc="2-d"),
        Sample((T(np.round(U(rng, (4,)), 1)), T(_sorted_rows(rng, (5,)))), {"right": True}, desc="right"),
        Sample((T(np.round(U(rng, (4,)), 1)), T(_sorted_rows(rng, (5,)))), {"out_int32": True}, desc="int32"),
        Sample((T(U(rng, ())), T(_sorted_rows(rng, (3,)))), desc="0-d"),
        Sample((T(np.zeros((0, 2))), T(_sorted_rows(rng, (3,)))), desc="size-0"),
        Sample((T(U(rng, (1, 3))), T(_sorted_rows(rng, (1,)))), desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"), T(_sorted_rows(rng, (6,)), view="step")), desc="views"),
    ]


def _triangle_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))),), desc="main diagonal"),
        Sample((T(U(rng, (4, 3))), 1), desc="diagonal=1"),
        Sample((T(U(rng, (2, 3, 3))), -1), desc="batched, diagonal=-1"),
        Sample((T(U(rng, (3, 3))), 5), desc="diagonal past the corner"),
        Sample((T(U(rng, (0, 3))),), desc="size-0"),
        Sample((T(U(rng, (1, 3))), -1), desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"),), desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"), 1), desc="strided view"),
    ]


def _repeat_interleave_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))), 2), desc="flattened"),
        Sample((T(U(rng, (2, 3))), 2), {"dim": 0}, desc="dim 0"),
        Sample((T(U(rng, (2, 3))), _idx([1, 0, 3])), {"dim": 1}, desc="tensor repeats"),
        Sample((T(U(rng, (3,))), _idx([2])), {"dim": 0}, desc="one-element repeats"),
        Sample((T(U(rng, ())), 3), desc="0-d"),
        Sample((T(U(rng, (0, 3))), 2), {"dim": 1}, desc="size-0"),
        Sample((T(U(rng, (1, 3))), _idx([2, 2, 0])), {"dim": -1}, desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"), 2), {"dim": 1}, desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"), _idx([1, 2])), {"dim": 0}, desc="strided view"),
    ]


def _isclose_samples(rng):
    a = U(rng, (2, 4))
    b = a + np.array([0.0, 1e-9, 1e-3, 1e-6])
    nan = np.array([np.nan, 1.0, np.inf, -np.inf])
    return [
        Sample((T(a), T(b)), desc="near and far"),
        Sample((T(a), T(b)), {"rtol": 1e-2, "atol": 0.0}, desc="rtol"),
        Sample((T(nan), T(np.array([np.nan, 1.0, np.inf, np.inf]))), desc="nan, inf"),
        Sample((T(nan), T(nan)), {"equal_nan": True}, desc="equal_nan"),
        Sample((T(a), T(b[0])), desc="broadcast"),
        Sample((T(U(rng, ())), T(U(rng, ()))), desc="0-d"),
        Sample((T(U(rng, (0, 3))), T(U(rng, (1, 3)))), desc="size-0"),
        Sample((T(a, view="T"), T(b, view="step")), desc="views"),
    ]


def _scatter_reduce_samples(reduce):
    def samples(rng):
        zeros = reduce == "prod"  # products with zeros take the exclusive-product path
        src = U(rng, (3, 2))
        if zeros:
            src[0, 0] = 0.0
        out = []
        for include_self in (True, False):
            kw = {"include_self": include_self}
            out += [
                Sample((T(U(rng, (3, 4))), 1, _idx([[0, 0], [3, 1], [2, 2]]), T(src), reduce), kw,
                       desc=f"dim=1 repeats self={include_self}"),
                Sample((T(U(rng, (3, 2))), 0, _idx([[2, 0], [2, 2], [1, 0], [2, 0]]), T(U(rng, (4, 2))), reduce),
                       kw, desc=f"dim=0 three into one self={include_self}"),
            ]
        two_zeros = U(rng, (2, 3))
        if zeros:
            two_zeros[0, :2] = 0.0
        out += [
            Sample((T(U(rng, (2, 3))), 1, _idx([[0, 0, 0], [1, 2, 1]]), T(two_zeros), reduce),
                   desc="one group gets every value"),
            # PyTorch's backward fails when src is larger than index: finite differences only
            Sample((T(U(rng, (2, 3)), view="T"), 1, _idx([[0], [2]]), T(U(rng, (2, 2))), reduce),
                   desc="view, src larger", ref_grad=False),
            Sample((T(U(rng, (2, 3))), 0, _idx([[1, 0, 1]]), T(U(rng, (2, 6)), view="step"), reduce),
                   {"include_self": False}, desc="strided src, larger", ref_grad=False),
            # ... and when src is a strided view (it expects the base's shape)
            Sample((T(U(rng, (2, 3))), 0, _idx([[1, 0, 1], [1, 1, 0]]), T(U(rng, (2, 6)), view="step"), reduce),
                   {"include_self": False}, desc="strided src", ref_grad=False),
            Sample((T(U(rng, (2, 3)), view="T"), 1, _idx([[0], [2]]), T(U(rng, (2, 1))), reduce),
                   desc="transposed input"),
            Sample((T(U(rng, (0, 3))), 0, _idx(np.zeros((0, 3))), T(U(rng, (0, 3))), reduce), desc="size-0"),
            Sample((T(U(rng, (1, 3))), 1, _idx([[2]]), T(U(rng, (1, 1))), reduce), desc="size-1"),
        ]
        return out
    return samples


def _diagonal_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))),), desc="main"),
        Sample((T(U(rng, (3, 4))), 1), desc="offset 1"),
        Sample((T(U(rng, (4, 3))), -2), desc="offset -2"),
        Sample((T(U(rng, (2, 3, 3))), 0, 1, 2), desc="batched"),
        Sample((T(U(rng, (2, 3, 4))), -1, 2, 0), desc="dims 2, 0"),
        Sample((T(U(rng, (3, 3))), 5), desc="past the corner"),
        Sample((T(U(rng, (0, 3))),), desc="size-0"),
        Sample((T(U(rng, (1, 3))),), desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"),), desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"), 1), desc="strided view"),
    ]


def _diag_embed_samples(rng):
    return [
        Sample((T(U(rng, (3,))),), desc="1-d"),
        Sample((T(U(rng, (2, 3))), 1), desc="batched, offset 1"),
        Sample((T(U(rng, (2, 3))), -1, 0, 2), desc="dims 0, 2"),
        Sample((T(U(rng, (0,))),), desc="size-0"),
        Sample((T(U(rng, (1,))),), desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"),), desc="transposed view"),
        Sample((T(U(rng, (2, 3)), view="step"),), desc="strided view"),
    ]


def _diag_samples(rng):
    return [
        Sample((T(U(rng, (3,))),), desc="vector"),
        Sample((T(U(rng, (3,))), -1), desc="vector, offset -1"),
        Sample((T(U(rng, (3, 4))), 1), desc="matrix, offset 1"),
        Sample((T(U(rng, (0,))),), desc="size-0"),
        Sample((T(U(rng, (1, 1))),), desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"),), desc="transposed view"),
        Sample((T(U(rng, (4,)), view="step"),), desc="strided view"),
    ]


def _trace_samples(rng):
    return [
        Sample((T(U(rng, (3, 3))),), desc="square"),
        Sample((T(U(rng, (2, 4))),), desc="wide"),
        Sample((T(U(rng, (0, 2))),), desc="size-0"),
        Sample((T(U(rng, (1, 1))),), desc="size-1"),
        Sample((T(U(rng, (3, 2)), view="T"),), desc="transposed view"),
    ]


def _stack_like_samples(rng):
    return [
        Sample((T(U(rng, (2, 3))), T(U(rng, (2, 3)))), desc="2-d"),
        Sample((T(U(rng, (3,))), T(U(rng, (3,)))), desc="1-d"),
        Sample((T(U(rng, ())), T(U(rng, ()))), desc="0-d"),
        Sample((T(U(rng, (2, 0))), T(U(rng, (2, 0)))), desc="size-0"),
        Sample((T(U(rng, (1, 3))), T(U(rng, (1, 3)))), desc="size-1"),
        Sample((T(U(rng, (2, 3)), view="T"), T(U(rng, (2, 3)), view="step")), desc="views"),
    ]


def _masked_select_samples(rng):
    return [
        Sample((T(U(rng, (3, 4))), _mask(rng.uniform(size=(3, 4)) < 0.5)), desc="same shape"),
        Sample((T(U(rng, (3, 4))), _mask(rng.uniform(size=(4,)) < 0.5)), desc="broadcast mask"),
        Sample((T(U(rng, (1, 4))), _mask(rng.uniform(size=(3, 1)) < 0.5)), desc="broadcast both"),
        Sample((T(U(rng, ())), _mask(True)), desc="0-d"),
        Sample((T(U(rng, (0, 2))), _mask(np.zeros((0, 2), bool))), desc="size-0"),
        Sample((T(U(rng, (3, 2)), view="T"), _mask(rng.uniform(size=(3, 2)) < 0.5)), desc="transposed view"),
    ]


def _meshgrid_samples(rng):
    out = []
    for ix in ("ij", "xy"):
        out += [
            Sample((T(U(rng, (2,))), T(U(rng, (3,)))), {"indexing": ix}, desc=f"two {ix}"),
            Sample((T(U(rng, (2,))), T(U(rng, (1,))), T(U(rng, (3,)))), {"indexing": ix}, desc=f"three {ix}"),
            Sample((T(U(rng, ())), T(U(rng, (0,)))), {"indexing": ix}, desc=f"0-d, size-0 {ix}"),
            Sample((T(U(rng, (4,)), view="step"), T(U(rng, (2,)))), {"indexing": ix}, desc=f"strided {ix}"),
        ]
    return out


OP_TABLE += [
    OpInfo("sort", am.sort, torch.sort, _sort_samples),
    OpInfo("sort_int", am.sort, torch.sort, _sort_int_samples, differentiable=False, dtypes=("int64",)),
    OpInfo("argsort", am.argsort, torch.argsort, _sort_int_samples, differentiable=False,
           dtypes=("float64", "int64")),
    OpInfo("topk", am.topk, torch.topk, _topk_samples),
    OpInfo("unique", am.unique, torch.unique, _unique_samples, differentiable=False,
           dtypes=("float64", "float32", "int64")),
    OpInfo("nonzero", am.nonzero, torch.nonzero, _nonzero_samples, differentiable=False,
           dtypes=("float64", "int64")),
    OpInfo("searchsorted", am.searchsorted, torch.searchsorted, _searchsorted_samples, differentiable=False),
    OpInfo("bucketize", am.bucketize, torch.bucketize, _bucketize_samples, differentiable=False),
    OpInfo("triu", am.triu, torch.triu, _triangle_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("tril", am.tril, torch.tril, _triangle_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("t", am.t, torch.t, lambda rng: [s for s in unary_samples(U)(rng) if s.args[0].data.ndim <= 2]
           + [Sample((T(U(rng, (3,))),), desc="1-d")]),
    OpInfo("repeat_interleave", am.repeat_interleave, torch.repeat_interleave, _repeat_interleave_samples,
           dtypes=("float64", "float32", "int64")),
    OpInfo("isclose", am.isclose, torch.isclose, _isclose_samples, differentiable=False),
    OpInfo("diagonal", am.diagonal, torch.diagonal, _diagonal_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("diag_embed", am.diag_embed, torch.diag_embed, _diag_embed_samples, dtypes=("float64", "float32", "int64")),
    OpInfo("diag", am.diag, torch.diag, _diag_samples),
    OpInfo("trace", am.trace, torch.trace, _trace_samples),
    OpInfo("hstack", lambda *xs: am.hstack(list(xs)), lambda *xs: torch.hstack(list(xs)), _stack_like_samples),
    OpInfo("vstack", lambda *xs: am.vstack(list(xs)), lambda *xs: torch.vstack(list(xs)), _stack_like_samples),
    OpInfo("masked_select", am.masked_select, torch.masked_select, _masked_select_samples),
    OpInfo("meshgrid", lambda *xs, indexing: am.meshgrid(*xs, indexing=indexing),
           lambda *xs, indexing: torch.meshgrid(*xs, indexing=indexing), _meshgrid_samples),
    OpInfo("clamp_min", lambda x: am.clamp_min(x, 0.25), lambda x: torch.clamp_min(x, 0.25), unary_samples(U)),
    OpInfo("clamp_max", lambda x: am.clamp_max(x, 0.25), lambda x: torch.clamp_max(x, 0.25), unary_samples(U)),
] + [
    OpInfo(f"scatter_reduce_{r}", am.scatter_reduce, torch.scatter_reduce, _scatter_reduce_samples(r))
    for r in ("sum", "prod", "mean", "amax", "amin")
]

# ------------------------------------------------- layers' functional ops: distances, geometry
F_ = am.nn.functional


def _normalize_samples(rng):
    return [Sample((T(A(rng, (3, 4))),), dict(p=2.0, dim=1)),
            Sample((T(A(rng, (3, 4)), view="T"),), dict(p=1.0, dim=0), desc="view, p=1"),
            Sample((T(A(rng, (2, 3))),), dict(p=3.0, dim=-1), desc="p=3"),
            Sample((T(A(rng, (4,))),), dict(dim=0), desc="1-d"),
            Sample((T(A(rng, (0, 3))),), dict(dim=1), desc="size-0"),
            Sample((T(A(rng, (1, 3))),), dict(dim=0), desc="size-1 dim")]


def _cosine_samples(rng):
    return [Sample((T(A(rng, (3, 4))), T(A(rng, (3, 4))))),
            Sample((T(A(rng, (1, 4))), T(A(rng, (3, 4)))), desc="broadcast"),
            Sample((T(A(rng, (3, 2)), view="T"), T(A(rng, (3, 2)))), dict(dim=0), desc="view, dim=0"),
            Sample((T(A(rng, (0, 3))), T(A(rng, (0, 3)))), desc="size-0")]


def _pairwise_samples(rng):
    return [Sample((T(U(rng, (3, 4))), T(U(rng, (3, 4))))),
            Sample((T(U(rng, (3, 4))), T(U(rng, (3, 4)))), dict(p=1.0, keepdim=True), desc="p=1, keepdim"),
            Sample((T(U(rng, (4,))), T(U(rng, (4,)))), dict(p=3.0, eps=1e-3), desc="1-d, p=3"),
            Sample((T(U(rng, (3, 4)), view="T"), T(U(rng, (3, 4)))), desc="view"),
            Sample((T(U(rng, (0, 4))), T(U(rng, (1, 4)))), desc="size-0, broadcast")]


def _rms_norm_samples(rng):
    return [Sample((T(U(rng, (3, 4))), (4,), T(U(rng, (4,)))), dict(eps=1e-5)),
            Sample((T(U(rng, (2, 2, 3))), (2, 3)), desc="2-d shape, eps=None"),
            Sample((T(U(rng, (3, 4)), view="T"), [4], T(U(rng, (4,)))), dict(eps=0.1), desc="view"),
            Sample((T(U(rng, (0, 1))), (1,)), desc="size-0, size-1")]


def _unfold_samples(rng):
    return [Sample((T(U(rng, (1, 1, 3, 4))), 2)),
            Sample((T(U(rng, (1, 2, 3, 3))), (2, 1)), dict(padding=1, stride=2), desc="padding, stride"),
            Sample((T(U(rng, (2, 3, 4))), 2), dict(dilation=(1, 2)), desc="unbatched, dilation"),
            Sample((T(U(rng, (1, 1, 3, 3)), view="step"), 2), desc="view"),
            Sample((T(U(rng, (0, 1, 3, 3))), 2), desc="size-0")]


def _fold_samples(rng):
    return [Sample((T(U(rng, (1, 4, 4))), (3, 3), 2)),
            Sample((T(U(rng, (2, 4))), (3, 2), (2, 1)), dict(padding=(0, 1), stride=(1, 2)), desc="unbatched"),
            Sample((T(U(rng, (1, 2, 4))), (4, 2)), dict(kernel_size=(2, 1), dilation=(2, 1)), desc="dilation"),
            Sample((T(U(rng, (1, 4, 4)), view="T"), (3, 3), 2), desc="view"),
            Sample((T(U(rng, (0, 4, 4))), (3, 3), 2), desc="size-0")]


def _affine_grid_samples(rng):
    return [Sample((T(U(rng, (1, 2, 3))), (1, 1, 2, 3)), dict(align_corners=False)),
            Sample((T(U(rng, (2, 2, 3))), (2, 3, 3, 2)), dict(align_corners=True), desc="align_corners"),
            Sample((T(U(rng, (1, 3, 4))), (1, 1, 2, 2, 2)), dict(align_corners=False), desc="3-d"),
            Sample((T(U(rng, (1, 2, 3)), view="T"), (1, 1, 2, 2)), desc="view, default align_corners")]


def _grid_sample_samples(padding_mode):
    def gen(rng):
        return [Sample((T(U(rng, (1, 1, 3, 3))), T(U(rng, (1, 2, 2, 2), -1.2, 1.2))),
                       dict(padding_mode=padding_mode, align_corners=False)),
                Sample((T(U(rng, (1, 2, 2, 3))), T(U(rng, (1, 1, 3, 2), -1.2, 1.2))),
                       dict(padding_mode=padding_mode, align_corners=True), desc="align_corners"),
                Sample((T(U(rng, (1, 1, 2, 2, 2))), T(U(rng, (1, 1, 1, 2, 3), -1.2, 1.2))),
                       dict(padding_mode=padding_mode, align_corners=False), desc="3-d"),
                Sample((T(U(rng, (1, 1, 2, 3)), view="step"), T(U(rng, (1, 2, 1, 2), -1.2, 1.2))),
                       dict(padding_mode=padding_mode), desc="view"),
                Sample((T(U(rng, (1, 1, 2, 2))), T(U(rng, (1, 0, 1, 2)))), dict(padding_mode=padding_mode),
                       desc="size-0 output")]
    return gen


OP_TABLE += [
    OpInfo("normalize", F_.normalize, TF.normalize, _normalize_samples),
    OpInfo("cosine_similarity", F_.cosine_similarity, TF.cosine_similarity, _cosine_samples),
    OpInfo("pairwise_distance", F_.pairwise_distance, TF.pairwise_distance, _pairwise_samples),
    OpInfo("rms_norm", F_.rms_norm, TF.rms_norm, _rms_norm_samples),
    OpInfo("unfold", F_.unfold, TF.unfold, _unfold_samples),
    OpInfo("fold", F_.fold, TF.fold, _fold_samples),
    OpInfo("pixel_shuffle", F_.pixel_shuffle, TF.pixel_shuffle,
           lambda rng: [Sample((T(U(rng, (1, 4, 2, 2))), 2)), Sample((T(U(rng, (2, 9, 1, 1))), 3)),
                        Sample((T(U(rng, (0, 4, 1, 1))), 2), desc="size-0", ref_grad=False),  # torch's backward errs
                        Sample((T(U(rng, (2, 4, 1, 2)), view="step"), 2), desc="view")]),
    OpInfo("pixel_unshuffle", F_.pixel_unshuffle, TF.pixel_unshuffle,
           lambda rng: [Sample((T(U(rng, (1, 1, 2, 4))), 2)), Sample((T(U(rng, (2, 2, 3, 3))), 3)),
                        Sample((T(U(rng, (1, 1, 4, 2)), view="T"), 2), desc="view")]),
    OpInfo("affine_grid", F_.affine_grid, TF.affine_grid, _affine_grid_samples),
    OpInfo("grid_sample_zeros", F_.grid_sample, TF.grid_sample, _grid_sample_samples("zeros")),
    OpInfo("grid_sample_border", F_.grid_sample, TF.grid_sample, _grid_sample_samples("border")),
    OpInfo("grid_sample_reflection", F_.grid_sample, TF.grid_sample, _grid_sample_samples("reflection")),
]



# -- issue 17: the fused rotary-embedding rotation (avila_ml/ops/rotary.py) ------------------------
def _torch_rotate_pairs(x, c, s):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def _rotate_pairs_samples(rng):
    def cs(shape):
        a = rng.uniform(-3, 3, size=shape)
        return T(np.cos(a), grad=False), T(np.sin(a), grad=False)
    return [Sample((T(U(rng, (2, 3, 4))), *cs((3, 2))), desc="per-position tables"),
            Sample((T(U(rng, (3, 2)), view="T"), *cs((1,))), desc="view, broadcast table"),
            Sample((T(U(rng, (2, 6)), view="step"), *cs((2, 3))), desc="strided view"),
            Sample((T(U(rng, (0, 3, 2))), *cs((3, 1))), desc="size-0")]


from avila_ml.ops.rotary import rotate_pairs as _rotate_pairs  # noqa: E402

OP_TABLE += [OpInfo("rotate_pairs", _rotate_pairs, _torch_rotate_pairs, _rotate_pairs_samples)]

_names = [r.name for r in OP_TABLE]
assert len(_names) == len(set(_names)), "op table: duplicate row names"
