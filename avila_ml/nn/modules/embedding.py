"""``Embedding``: a lookup table of vectors indexed by integers (``torch.nn.Embedding``), and
its functional form ``embedding`` (``torch.nn.functional.embedding``)."""
from __future__ import annotations

from ...autograd.grad_mode import no_grad
from ...ops.embedding import embedding
from ...tensor import Tensor
from .. import init
from .linear import _empty
from .module import Module
from .parameter import Parameter

__all__ = ["Embedding"]


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``, indexed by integers
    (``torch.nn.Embedding``).

    ``weight`` starts as N(0, 1) with the ``padding_idx`` row zeroed; that row gets no gradient.
    ``max_norm`` rescales looked-up rows in place to norm at most ``max_norm``.

    Math: y[..., :] = W[input[...], :], input ``(*)`` integer, output ``(*, embedding_dim)``.

    Example:
        >>> import avila_ml as am
        >>> emb = am.nn.Embedding(10, 3, padding_idx=0)
        >>> emb(am.tensor([[1, 0, 4]])).shape, emb.weight[0].tolist()
        ((1, 3, 3), [0.0, 0.0, 0.0])
        >>> emb
        Embedding(10, 3, padding_idx=0)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None, max_norm=None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False,
                 _weight=None, _freeze: bool = False, device=None, dtype=None):
        super().__init__()
        if padding_idx is not None:
            if padding_idx >= num_embeddings or padding_idx < -num_embeddings:
                raise ValueError(f"Embedding: padding_idx ({padding_idx}) must be within num_embeddings "
                                 f"({num_embeddings})")
            if padding_idx < 0:
                padding_idx += num_embeddings
        if sparse:
            raise ValueError("Embedding: sparse gradients are not supported by Avila ML; use sparse=False")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.sparse = sparse
        if _weight is None:
            self.weight = Parameter(_empty((num_embeddings, embedding_dim), device, dtype),
                                    requires_grad=not _freeze)
            self.reset_parameters()
        else:
            if tuple(_weight.shape) != (num_embeddings, embedding_dim):
                raise ValueError(f"Embedding: shape of weight {tuple(_weight.shape)} does not match "
                                 f"num_embeddings and embedding_dim ({num_embeddings}, {embedding_dim})")
            self.weight = Parameter(_weight, requires_grad=not _freeze)

    def reset_parameters(self) -> None:
        """Re-draw ``weight`` from N(0, 1) and zero the ``padding_idx`` row (PyTorch's default)."""
        init.normal_(self.weight)
        if self.padding_idx is not None:
            with no_grad():
                self.weight.array[self.padding_idx] = 0
                self.weight._bump()

    def forward(self, input):
        return embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                         self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq is not False:
            s += f", scale_grad_by_freq={self.scale_grad_by_freq}"
        if self.sparse is not False:
            s += ", sparse=True"
        return s

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, padding_idx=None, max_norm=None,
                        norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False):
        """An ``Embedding`` whose weight is ``embeddings`` (shared memory), frozen unless
        ``freeze=False`` (``Embedding.from_pretrained``).

        Example:
            >>> import avila_ml as am
            >>> emb = am.nn.Embedding.from_pretrained(am.tensor([[1.0, 2.0], [3.0, 4.0]]))
            >>> emb(am.tensor([1])), emb.weight.requires_grad
            (tensor([[3., 4.]]), False)
        """
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be a 2-D Tensor, got "
                             f"{tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__}")
        rows, cols = embeddings.shape
        return cls(rows, cols, _weight=embeddings, _freeze=freeze, padding_idx=padding_idx,
                   max_norm=max_norm, norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq,
                   sparse=sparse)
