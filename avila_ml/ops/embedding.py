"""Embedding lookup and the bilinear form: the functional halves of ``nn.Embedding`` and
``nn.Bilinear`` (``torch.nn.functional.embedding`` / ``bilinear``)."""
from __future__ import annotations

from ..autograd.function import Function
from ..backends import backend_of
from ..debug import host_checks
from ..autograd.grad_mode import no_grad
from ..tensor import Tensor
from .indexing import IndexAdd
from .linalg import einsum

__all__ = ["embedding", "bilinear", "one_hot"]


class EmbeddingLookup(Function):
    """Rows ``weight[idx]``; backward scatters ``g`` back into a zero table, skipping the
    padding row and (optionally) dividing by each index's count in the batch."""

    def forward(self, weight, idx, padding_idx, scale_grad_by_freq):
        self.shape, self.idx = weight.shape, idx
        self.padding_idx, self.scale_grad_by_freq = padding_idx, scale_grad_by_freq
        return weight[idx]

    def backward(self, g):
        xp = g._backend.xp
        flat_idx = self.idx.reshape(-1)
        g2 = g.reshape(-1, self.shape[1])  # (B, dim)
        scale = None
        if self.padding_idx is not None:
            scale = (flat_idx != self.padding_idx).astype(g.array.dtype)
        if self.scale_grad_by_freq:
            counts = xp.bincount(flat_idx, minlength=self.shape[0])[flat_idx].astype(g.array.dtype)
            scale = 1 / counts if scale is None else scale / counts
        if scale is not None:
            g2 = g2 * Tensor._wrap(scale[:, None])
        return IndexAdd.apply(g2, self.shape, 0, flat_idx)


def _renorm_rows_(weight: Tensor, idx, max_norm: float, norm_type: float) -> None:
    """In place, rescale the rows ``idx`` of ``weight`` whose p-norm exceeds ``max_norm``
    (``torch.embedding_renorm_``)."""
    xp = weight._backend.xp
    rows = xp.unique(idx.reshape(-1))
    w = weight.array[rows]
    if norm_type == float("inf"):
        norms = xp.abs(w).max(axis=1)
    else:
        norms = (xp.abs(w) ** norm_type).sum(axis=1) ** (1.0 / norm_type)
    scale = xp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0).astype(w.dtype)
    with no_grad():
        weight.array[rows] = w * scale[:, None]
        weight._bump()


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False):
    """Look up rows of ``weight`` by the integer tensor ``input`` (``torch.nn.functional.embedding``).

    Math: y[..., :] = W[input[...], :]; ∂L/∂W[k] = Σ_{input = k} ∂L/∂y (zero for
    ``padding_idx``; divided by the count of k in the batch if ``scale_grad_by_freq``).
    ``max_norm`` first rescales, in place, each looked-up row whose ``norm_type``-norm exceeds it.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.embedding(am.tensor([[2, 0]]), am.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]))
        tensor([[[4., 5.],
                 [0., 1.]]])
    """
    if not isinstance(input, Tensor) or input.array.dtype.kind not in "iu":
        raise TypeError(f"embedding: expected an integer index tensor, got "
                        f"{input.dtype if isinstance(input, Tensor) else type(input).__name__}")
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise RuntimeError(f"embedding: weight must be a 2-D tensor (num_embeddings, embedding_dim), "
                           f"got {tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    if sparse:
        raise ValueError("embedding: sparse gradients are not supported by Avila ML; use sparse=False")
    n = weight.shape[0]
    idx = input.array
    if idx.size and host_checks(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"embedding: index out of range: indices must be in [0, {n}), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}] (input shape {tuple(input.shape)})")
    if padding_idx is not None:
        if not -n <= padding_idx < n:
            raise ValueError(f"embedding: padding_idx {padding_idx} must be within num_embeddings ({n})")
        padding_idx = padding_idx % n
    if max_norm is not None and idx.size:
        _renorm_rows_(weight, idx, float(max_norm), float(norm_type))
    return EmbeddingLookup.apply(weight, idx, padding_idx, bool(scale_grad_by_freq))


class Bilinear(Function):
    """``y[b, o] = sum_ij x1[b, i] W[o, i, j] x2[b, j]`` for 2-d ``x1``, ``x2``, contracted in
    PyTorch's order: ``t[b, o, j] = sum_i x1 W`` then ``y = sum_j t x2`` (a matmul and a bmm), and
    the gradients those two products give. The order decides where an infinite input meets an
    infinity of the other sign (NaN) and where it stays +-inf."""

    def forward(self, x1, w, x2):
        self.save_inputs(0, 1, 2)
        xp = backend_of(x1).xp
        t = xp.einsum("bi,oij->boj", x1, w)
        return xp.einsum("boj,bj->bo", t, x2)

    def backward(self, g):
        x1, w, x2 = self.saved_inputs
        n1, nw, n2 = self.needs_input_grad
        gt = einsum("bo,bj->boj", g, x2) if (n1 or nw) else None       # the gradient of t
        g1 = einsum("boj,oij->bi", gt, w) if n1 else None               # one sum over (o, j)
        gw = einsum("bi,boj->oij", x1, gt) if nw else None
        g2 = einsum("boj,bo->bj", einsum("bi,oij->boj", x1, w), g) if n2 else None
        return g1, gw, g2


def bilinear(input1, input2, weight, bias=None):
    """``y_o = x1^T W_o x2 + b_o`` over the last dim of both inputs (``torch.nn.functional.bilinear``).

    Math: y[..., o] = sum_ij x1[..., i] W[o, i, j] x2[..., j] + b[o].

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.bilinear(am.ones(2, 3), am.ones(2, 4), am.ones(5, 3, 4)).shape
        (2, 5)
    """
    if weight.ndim != 3 or input1.shape[-1] != weight.shape[1] or input2.shape[-1] != weight.shape[2]:
        raise RuntimeError(
            f"bilinear: inputs of shapes {tuple(input1.shape)} and {tuple(input2.shape)} do not match "
            f"weight of shape {tuple(weight.shape)} (expected (out, {input1.shape[-1]}, {input2.shape[-1]}))"
        )
    if input1.shape[:-1] != input2.shape[:-1]:
        raise RuntimeError(f"bilinear: batch dims differ: {tuple(input1.shape)} vs {tuple(input2.shape)}")
    lead = input1.shape[:-1]
    x1 = input1.reshape(-1, input1.shape[-1])
    x2 = input2.reshape(-1, input2.shape[-1])
    out = Bilinear.apply(x1, weight, x2)
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, weight.shape[0])


def one_hot(tensor, num_classes: int = -1):
    """One-hot encoding of integer class indices (``torch.nn.functional.one_hot``).

    Math: y[..., k] = 1 if x[...] == k else 0, for k < num_classes (``-1``: max(x) + 1);
    the result is int64 with one more (last) dim. Not differentiable.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.one_hot(am.tensor([0, 2]), 3)
        tensor([[1, 0, 0],
                [0, 0, 1]])
    """
    from ..backends import backend_of
    if not isinstance(tensor, Tensor):
        raise TypeError(f"one_hot: expected a Tensor, got {type(tensor).__name__}")
    a = tensor.array
    if a.dtype.kind not in "iu":
        raise RuntimeError(f"one_hot is only applicable to index tensor of an integer dtype, got {tensor.dtype}")
    xp = backend_of(a).xp
    if num_classes == -1:
        if a.size == 0:
            raise RuntimeError("one_hot: can not infer total number of classes from empty tensor.")
        num_classes = int(a.max()) + 1
    if not isinstance(num_classes, int) or num_classes < -1:
        raise RuntimeError(f"one_hot: num_classes should be a non-negative int or -1, got {num_classes!r}")
    if a.size:
        if int(a.min()) < 0:
            raise RuntimeError("one_hot: Class values must be non-negative.")
        if int(a.max()) >= num_classes:
            raise RuntimeError(f"one_hot: Class values must be smaller than num_classes ({num_classes}), "
                               f"got {int(a.max())}.")
    out = (a[..., None] == xp.arange(num_classes)).astype(xp.int64)
    return Tensor._wrap(out)
