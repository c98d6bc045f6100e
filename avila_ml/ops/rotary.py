"""Rotary position embedding (RoPE, "rotate half" pairing) as one differentiable op.

Written with primitive ops, ``x cos + cat(-x2, x1) sin`` costs two slices, a negation, a
concatenation, two products and a sum: six fresh full-size arrays forward, and a backward that
scatters each slice's gradient into a zero array (``IndexPutAdd``). As one op it is two
full-width products, one swap of the halves and one sum.

For the half tables ``c``, ``s`` (L, D/2) and ``x = (x1, x2)`` split at D/2:
``y1 = x1 c - x2 s``, ``y2 = x2 c + x1 s`` -- a rotation of each (x1_i, x2_i) pair by the angle
whose cosine and sine are ``c_i``, ``s_i``, computed as ``x (c, c) + swap(x) (-s, s)``. The op
is linear in ``x`` and its transpose is the rotation by the opposite angle, so the backward is
the same op with the sine negated: double backward and beyond come for free.
"""
from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..backends import backend_of

__all__ = ["rotate_pairs"]


class RotatePairs(Function):
    """``y = x cf + swap(x) sf`` over the last dim, with ``swap`` exchanging its two halves and
    the full-width tables ``cf = (c, c)``, ``sf = (-s, s)`` (arrays broadcasting against ``x``;
    no gradient flows to them). Full-width tables keep NumPy's inner loops long (a whole
    contiguous row of ``x`` instead of half a head dim); the one short-loop pass left is the
    swap, a single copy. Rounding is that of ``x1 c - x2 s``, ``x2 c + x1 s`` term by term.

    Example:
        >>> import numpy as np, avila_ml as am
        >>> from avila_ml.ops.rotary import RotatePairs
        >>> cf, sf = np.array([0.0, 0.0]), np.array([-1.0, 1.0])  # 90 degrees
        >>> RotatePairs.apply(am.tensor([[1.0, 2.0]], dtype=am.float64), cf, sf)
        tensor([[-2.,  1.]], dtype=avila_ml.float64)
    """

    def forward(self, x, cf, sf):
        self.cf, self.sf = cf, sf
        xp = backend_of(x).xp
        x = xp.ascontiguousarray(x)  # a permuted q/k view: one copy, then every pass is contiguous
        h = x.shape[-1] // 2
        y = xp.multiply(x, cf)
        swapped = xp.empty_like(x)
        xp.copyto(swapped.reshape(x.shape[:-1] + (2, h)), x.reshape(x.shape[:-1] + (2, h))[..., ::-1, :])
        swapped *= sf
        y += swapped
        return y

    def backward(self, g):
        # the transpose: g cf + swap(g sf) = g cf + swap(g) swap(sf), and swap(sf) = -sf, so it
        # is the same op with -sf (the rotation by the opposite angle)
        return RotatePairs.apply(g, self.cf, -self.sf)


def rotate_pairs(x, cos, sin):
    """Rotate each feature pair ``(x[..., i], x[..., i + D/2])`` by the angle with cosine
    ``cos[..., i]`` and sine ``sin[..., i]`` (the "rotate half" convention of GPT-NeoX/LLaMA
    rotary embeddings; no PyTorch function, ``apply_rotary_pos_emb`` in Hugging Face code).

    Math: y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin; the gradient is the rotation by -angle.
    ``cos``/``sin`` are Tensors (no gradient flows to them) of shape broadcasting to
    ``x[..., :D/2]``, with ``x``'s dtype and device.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.ops.rotary import rotate_pairs
        >>> rotate_pairs(am.tensor([[1.0, 2.0]]), am.tensor([0.0]), am.tensor([1.0]))  # 90 degrees
        tensor([[-2.,  1.]])
    """
    from ..tensor import Tensor
    if not isinstance(x, Tensor) or not isinstance(cos, Tensor) or not isinstance(sin, Tensor):
        raise TypeError(f"rotate_pairs: x, cos and sin must be Tensors, got {type(x).__name__}, "
                        f"{type(cos).__name__}, {type(sin).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"rotate_pairs: expected a floating-point x, got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] % 2:
        raise RuntimeError(f"rotate_pairs: the last dim of x {tuple(x.shape)} must be even")
    half = tuple(x.shape[:-1]) + (x.shape[-1] // 2,)
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"rotate_pairs: {name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}")
        try:
            ok = np.broadcast_shapes(tuple(t.shape), half) == half
        except ValueError:
            ok = False
        if not ok:
            raise RuntimeError(f"rotate_pairs: {name} of shape {tuple(t.shape)} does not broadcast to the "
                               f"half of x, {half}")
    xp = backend_of(x.array).xp
    c = xp.broadcast_to(cos.array, tuple(cos.shape[:-1]) + (half[-1],))
    s = xp.broadcast_to(sin.array, tuple(sin.shape[:-1]) + (half[-1],))
    return RotatePairs.apply(x, xp.concatenate([c, c], axis=-1), xp.concatenate([-s, s], axis=-1))
