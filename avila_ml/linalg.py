"""``avila_ml.linalg``: norms, solves, inverses, determinants and decompositions
(``torch.linalg``), differentiable.

Each decomposition is one :class:`~avila_ml.autograd.Function`: ``forward`` calls the array
library's LAPACK routine (``xp.linalg``), ``backward`` is written with differentiable ops
(matmul, :func:`inv`, :func:`solve`, ``tril``/``triu``), so ``create_graph=True`` gives second
derivatives. The backward formulas are the standard ones (for SVD/eigh/QR/Cholesky, as in
PyTorch's ``FunctionsManual.cpp``, Murray 2016 and Walter & Lehmann 2018). Gradients need what
the math needs: invertible matrices for ``inv``/``det``/``solve``, distinct singular values for
``svd`` and distinct eigenvalues for ``eigh`` (the singular/eigen-vector gradients divide by
their differences); losses that depend on the *sign* of singular/eigen-vectors have no
gradient (PyTorch's rule too). All matrices are the last two dims; leading dims are a batch.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from .autograd.function import Function
from .backends import backend_of
from .tensor import Tensor
from .ops.elementwise import where, sum_to, _prepare
from .ops.reduction import norm as _vec_norm, amax, amin, sum as _sum
from .ops.shape import unsqueeze, squeeze, cat, narrow
from .ops.structured import tril, triu

__all__ = ["norm", "vector_norm", "matrix_norm", "solve", "inv", "det", "slogdet", "cholesky", "qr",
           "svd", "svdvals", "eigh", "eigvalsh", "lstsq"]

slogdet_result = namedtuple("slogdet", ["sign", "logabsdet"])
qr_result = namedtuple("qr", ["Q", "R"])
svd_result = namedtuple("svd", ["U", "S", "Vh"])
eigh_result = namedtuple("eigh", ["eigenvalues", "eigenvectors"])
lstsq_result = namedtuple("lstsq", ["solution", "residuals", "rank", "singular_values"])


# ------------------------------------------------------------------------------ helpers
def _check_matrix(A, op: str, square: bool = True) -> None:
    if not isinstance(A, Tensor):
        raise TypeError(f"linalg.{op}: expected a Tensor, got {type(A).__name__}")
    if A.ndim < 2:
        raise RuntimeError(f"linalg.{op}: the input must have at least 2 dimensions, got shape {tuple(A.shape)}")
    if square and A.shape[-1] != A.shape[-2]:
        raise RuntimeError(f"linalg.{op}: A must be batches of square matrices, but they are "
                           f"{A.shape[-2]} by {A.shape[-1]} matrices (shape {tuple(A.shape)})")
    if A.array.dtype.kind != "f":
        raise RuntimeError(f"linalg.{op}: expected a floating point tensor, got {A.dtype}")


def _lapack(op: str, fn, *arrays):
    try:
        return fn(*arrays)
    except np.linalg.LinAlgError as e:
        raise RuntimeError(f"linalg.{op}: {e} (the input is singular or not positive-definite)") from None


def _mT(x: Tensor) -> Tensor:
    return x.transpose(-2, -1)


def _diag_embed(v: Tensor) -> Tensor:
    """Batched diagonal matrices from the last dim of ``v`` (differentiable: v * I)."""
    n = v.shape[-1]
    eye = Tensor._wrap(backend_of(v.array).xp.eye(n, dtype=v.array.dtype))
    return unsqueeze(v, -1) * eye


def _diagonal(m: Tensor) -> Tensor:
    """The diagonal of the last two dims (differentiable: sum of m * I over the last dim)."""
    n = min(m.shape[-2:])
    eye = Tensor._wrap(backend_of(m.array).xp.eye(m.shape[-2], m.shape[-1], dtype=m.array.dtype))
    return _sum(m * eye, -1)[..., :n] if m.shape[-2] >= m.shape[-1] else _sum(m * eye, -2)[..., :n]


# ---------------------------------------------------------------------------------- inv
class Inv(Function):
    def forward(self, a):
        self.save_outputs(0)
        return _lapack("inv", backend_of(a).xp.linalg.inv, a)

    def backward(self, g):
        (ainv,) = self.saved_outputs
        # d(A^-1) = -A^-1 dA A^-1  =>  gA = -A^-T g A^-T
        return -(_mT(ainv) @ g @ _mT(ainv))


def inv(A):
    """The inverse of a square matrix (batch) (``torch.linalg.inv``).

    Math: ``A @ inv(A) = I``; gradient ``-A^{-T} g A^{-T}``. A singular matrix raises
    ``RuntimeError``.

    Example:
        >>> import avila_ml as am
        >>> am.linalg.inv(am.tensor([[2.0, 0.0], [0.0, 4.0]])).tolist()
        [[0.5, 0.0], [0.0, 0.25]]
    """
    _check_matrix(A, "inv")
    return Inv.apply(A)


# -------------------------------------------------------------------------------- solve
class Solve(Function):
    """X = A^-1 B for B of shape (..., n, k); batch dims broadcast."""

    def forward(self, a, b):
        self.save_inputs(0)
        self.save_outputs(0)
        self.shapes = (a.shape, b.shape)
        return _lapack("solve", backend_of(a).xp.linalg.solve, a, b)

    def backward(self, g):
        (a,) = self.saved_inputs
        (x,) = self.saved_outputs
        na, nb = self.needs_input_grad
        gb = Solve.apply(_mT(a), g)          # A^T gB = g
        ga = -(gb @ _mT(x)) if na else None  # gA = -gB X^T
        return (sum_to(ga, self.shapes[0]) if na else None), (sum_to(gb, self.shapes[1]) if nb else None)


def solve(A, B, *, left: bool = True):
    """The solution ``X`` of ``A X = B`` (``left=True``) or ``X A = B`` (``torch.linalg.solve``).

    ``B`` is a vector (batch) when it has shape ``A.shape[:-1]`` or is 1-d; else matrices
    ``(..., n, k)``; batch dims broadcast.

    Math: ``X = A^{-1} B``; gradients ``gB = A^{-T} g``, ``gA = -gB X^T``.

    Example:
        >>> import avila_ml as am
        >>> am.linalg.solve(am.tensor([[2.0, 0.0], [0.0, 4.0]]), am.tensor([2.0, 2.0])).tolist()
        [1.0, 0.5]
    """
    _check_matrix(A, "solve")
    if not isinstance(B, Tensor):
        raise TypeError(f"linalg.solve: B must be a Tensor, got {type(B).__name__}")
    A, B = _prepare(A, B, "linalg.solve")
    if not left:
        return _mT(solve(_mT(A), _mT(B)))
    n = A.shape[-1]
    vector = B.ndim == 1 or (B.ndim == A.ndim - 1 and tuple(B.shape) == tuple(A.shape[:-1]))
    Bm = unsqueeze(B, -1) if vector else B
    if Bm.shape[-2] != n:
        raise RuntimeError(f"linalg.solve: incompatible shapes of A {tuple(A.shape)} and B {tuple(B.shape)}: "
                           f"B needs {n} rows")
    try:
        np.broadcast_shapes(A.shape[:-2], Bm.shape[:-2])
    except ValueError:
        raise RuntimeError(f"linalg.solve: batch dims of A {tuple(A.shape)} and B {tuple(B.shape)} do not "
                           "broadcast") from None
    X = Solve.apply(A, Bm)
    return squeeze(X, -1) if vector else X


# ---------------------------------------------------------------------- det, slogdet
class SlogDet(Function):
    non_differentiable = (0,)

    def forward(self, a):
        self.save_inputs(0)
        sign, logabs = backend_of(a).xp.linalg.slogdet(a)
        xp = backend_of(a).xp
        return xp.asarray(sign), xp.asarray(logabs)

    def backward(self, g_sign, g_logabs):
        (a,) = self.saved_inputs
        # d log|det A| = tr(A^-1 dA)  =>  gA = g A^-T
        return unsqueeze(unsqueeze(g_logabs, -1), -1) * _mT(inv(a))


def slogdet(A):
    """``(sign, log|det A|)`` of a square matrix (batch) (``torch.linalg.slogdet``).

    Math: ``det A = sign * exp(logabsdet)``; gradient of ``logabsdet`` is ``A^{-T}``
    (``sign`` has none).

    Example:
        >>> import avila_ml as am
        >>> s, l = am.linalg.slogdet(am.tensor([[-2.0, 0.0], [0.0, 3.0]]))
        >>> s, round(l.item(), 4)
        (tensor(-1.), 1.7918)
    """
    _check_matrix(A, "slogdet")
    return slogdet_result(*SlogDet.apply(A))


class Det(Function):
    def forward(self, a):
        self.save_inputs(0)
        self.save_outputs(0)
        return backend_of(a).xp.asarray(backend_of(a).xp.linalg.det(a))

    def backward(self, g):
        (a,) = self.saved_inputs
        (d,) = self.saved_outputs
        # d det A = det A tr(A^-1 dA)  =>  gA = g det(A) A^-T (needs an invertible A)
        return unsqueeze(unsqueeze(g * d, -1), -1) * _mT(inv(a))


def det(A):
    """The determinant of a square matrix (batch) (``torch.linalg.det``).

    Math: gradient ``det(A) A^{-T}`` (defined here for invertible ``A``).

    Example:
        >>> import avila_ml as am
        >>> round(am.linalg.det(am.tensor([[1.0, 2.0], [3.0, 4.0]])).item(), 4)
        -2.0
    """
    _check_matrix(A, "det")
    return Det.apply(A)


# --------------------------------------------------------------------------- cholesky
class Cholesky(Function):
    def forward(self, a):
        self.save_outputs(0)
        xp = backend_of(a).xp
        L = _lapack("cholesky", xp.linalg.cholesky, a)
        if not bool(xp.isfinite(L).all()):  # CuPy returns NaN instead of raising
            raise RuntimeError("linalg.cholesky: the input is not positive-definite")
        return L

    def backward(self, gL):
        (L,) = self.saved_outputs
        # Murray (2016): gA = L^-T Phi(L^T gL) L^-1 with Phi = lower triangle, diagonal halved,
        # symmetrised the way PyTorch does (0.5 (P + strictly-lower(P)^T), P = tril(L^T gL))
        P = tril(_mT(L) @ gL)
        S = 0.5 * (P + _mT(tril(P, -1)))
        Linv = inv(L)
        return _mT(Linv) @ S @ Linv


def cholesky(A, *, upper: bool = False):
    """The Cholesky factor of a symmetric positive-definite matrix (batch) (``torch.linalg.cholesky``).

    Math: ``A = L L^T`` with ``L`` lower triangular (``upper=True`` gives ``L^T``). Only
    the lower triangle of ``A`` is read. A matrix that is not positive-definite raises
    ``RuntimeError``.

    Example:
        >>> import avila_ml as am
        >>> am.linalg.cholesky(am.tensor([[4.0, 2.0], [2.0, 5.0]])).tolist()
        [[2.0, 0.0], [1.0, 2.0]]
    """
    _check_matrix(A, "cholesky")
    L = Cholesky.apply(A)
    return _mT(L) if upper else L


# --------------------------------------------------------------------------------- qr
class QR(Function):
    def forward(self, a, mode):
        self.save_inputs(0)
        self.save_outputs(0, 1)
        self.mode = mode
        q, r = backend_of(a).xp.linalg.qr(a, mode=mode)
        return q, r

    def backward(self, gQ, gR):
        (A,) = self.saved_inputs
        Q, R = self.saved_outputs
        m, n = A.shape[-2:]
        if self.mode == "complete" and m > n:
            raise RuntimeError("linalg.qr: the derivative of mode='complete' is not defined for tall matrices "
                               "(m > n), as in PyTorch; use mode='reduced'")
        if m >= n:
            return _qr_square_or_tall_grad(Q, R, gQ, gR)
        # wide: A = [X | Y], X = Q U (square), Y = Q V; gY = Q gV, and X sees gQ + Y gV^T
        U, V = narrow(R, -1, 0, m), narrow(R, -1, m, n - m)
        gU, gV = narrow(gR, -1, 0, m), narrow(gR, -1, m, n - m)
        Y = narrow(A, -1, m, n - m)
        gX = _qr_square_or_tall_grad(Q, U, gQ + Y @ _mT(gV), gU)
        return cat([gX, Q @ gV], dim=-1)


def _qr_square_or_tall_grad(Q, R, gQ, gR):
    # gA = [gQ + Q copyltu(M)] R^-T with M = R gR^T - gQ^T Q (Walter & Lehmann 2018)
    M = R @ _mT(gR) - _mT(gQ) @ Q
    Mlow = tril(M, -1)
    sym = Mlow + _mT(Mlow) + _diag_embed(_diagonal(M))
    return _mT(solve(R, _mT(gQ + Q @ sym)))


def qr(A, mode: str = "reduced"):
    """QR decomposition ``A = Q R`` (``torch.linalg.qr``).

    ``mode="reduced"``: ``Q`` is ``m x k``, ``R`` is ``k x n`` (``k = min(m, n)``);
    ``"complete"``: ``Q`` is ``m x m``; ``"r"``: only ``R`` (``Q`` is an empty tensor).

    Math: ``Q^T Q = I``, ``R`` upper triangular; gradients for ``reduced`` (any shape) and
    for ``complete`` with ``m <= n``, as in PyTorch (``R`` needs a non-zero diagonal).

    Example:
        >>> import avila_ml as am
        >>> Q, R = am.linalg.qr(am.tensor([[3.0, 1.0], [4.0, 2.0]]))
        >>> bool(am.allclose(Q @ R, am.tensor([[3.0, 1.0], [4.0, 2.0]]), atol=1e-6))
        True
    """
    _check_matrix(A, "qr", square=False)
    if mode not in ("reduced", "complete", "r"):
        raise RuntimeError(f"linalg.qr: qr received unrecognized mode {mode!r} but expected one of 'reduced' "
                           "(default), 'r', or 'complete'")
    if mode == "r":
        with _no_grad():
            _, R = QR.apply(A.detach(), "reduced")
        xp = backend_of(A.array).xp
        return qr_result(Tensor._wrap(xp.zeros((0,), dtype=A.array.dtype)), R)
    return qr_result(*QR.apply(A, mode))


def _no_grad():
    from .autograd.grad_mode import no_grad
    return no_grad()


# --------------------------------------------------------------------------------- svd
class SVD(Function):
    def forward(self, a, full_matrices):
        self.save_outputs(0, 1, 2)
        self.full = full_matrices
        self.shape = a.shape
        u, s, vh = _lapack("svd", lambda x: backend_of(x).xp.linalg.svd(x, full_matrices=full_matrices), a)
        return u, s, vh

    def backward(self, gU, gS, gVh):
        U, S, Vh = self.saved_outputs
        m, n = self.shape[-2:]
        k = min(m, n)
        if self.full and m != n:
            raise RuntimeError("linalg.svd: the derivative of full_matrices=True is not defined for non-square "
                               "matrices (as in PyTorch); use full_matrices=False")
        V, gV = _mT(Vh), _mT(gVh)
        S2 = S * S
        xp = backend_of(S.array).xp
        eye = xp.eye(k, dtype=bool)
        # E[i, j] = S_j^2 - S_i^2 (1 on the diagonal): the eigen-gaps the vector terms divide by
        E = where(eye, Tensor._wrap(xp.ones((), S.array.dtype)), unsqueeze(S2, -2) - unsqueeze(S2, -1))
        UhgU = _mT(U) @ gU
        VhgV = _mT(V) @ gV
        skU = UhgU - _mT(UhgU)
        skV = VhgV - _mT(VhgV)
        inner = (skU * unsqueeze(S, -2) + unsqueeze(S, -1) * skV) / E + _diag_embed(gS)
        gA = U @ inner @ Vh
        if m > k:  # the part of gU outside U's span
            gUS = gU / unsqueeze(S, -2)
            gA = gA + (gUS - U @ (_mT(U) @ gUS)) @ Vh
        if n > k:
            gVS = gV / unsqueeze(S, -2)
            gA = gA + U @ _mT(gVS - V @ (_mT(V) @ gVS))
        return gA


def svd(A, full_matrices: bool = True):
    """Singular value decomposition ``A = U diag(S) Vh`` (``torch.linalg.svd``).

    ``S`` is descending. ``full_matrices=False`` gives the reduced ``U`` (``m x k``) and
    ``Vh`` (``k x n``). Math: gradients need distinct singular values (the vector terms
    divide by ``S_j^2 - S_i^2``) and a loss that does not depend on the signs of the
    singular vectors; ``full_matrices=True`` is differentiable only for square matrices (as
    in PyTorch).

    Example:
        >>> import avila_ml as am
        >>> U, S, Vh = am.linalg.svd(am.tensor([[3.0, 0.0], [0.0, -2.0]]))
        >>> [round(v, 4) for v in S.tolist()]
        [3.0, 2.0]
    """
    _check_matrix(A, "svd", square=False)
    return svd_result(*SVD.apply(A, bool(full_matrices)))


class SVDVals(Function):
    def forward(self, a):
        xp = backend_of(a).xp
        u, s, vh = _lapack("svdvals", lambda x: xp.linalg.svd(x, full_matrices=False), a)
        self.u, self.vh = u, vh
        return s

    def backward(self, gS):
        # dS_i = u_i^T dA v_i  =>  gA = U diag(gS) Vh. U, Vh are re-derived from the input in
        # a differentiable way only through svd(); here they are constants of A, which makes
        # the second derivative the one of svd(A).S (PyTorch computes it the same way)
        U = Tensor._wrap(self.u)
        Vh = Tensor._wrap(self.vh)
        return U @ _diag_embed(gS) @ Vh


def svdvals(A):
    """The singular values of ``A``, descending (``torch.linalg.svdvals``).

    Math: gradient ``U diag(g) Vh``; its derivative is that of ``svd(A).S``.

    Example:
        >>> import avila_ml as am
        >>> [round(v, 4) for v in am.linalg.svdvals(am.tensor([[0.0, 2.0], [1.0, 0.0]])).tolist()]
        [2.0, 1.0]
    """
    _check_matrix(A, "svdvals", square=False)
    if A._requires_grad:
        from .autograd.grad_mode import is_grad_enabled
        if is_grad_enabled():
            return svd(A, full_matrices=False).S  # differentiable twice through SVD's backward
    return SVDVals.apply(A)


# -------------------------------------------------------------------------------- eigh
class Eigh(Function):
    def forward(self, a, uplo):
        self.save_outputs(0, 1)
        w, v = _lapack("eigh", lambda x: backend_of(x).xp.linalg.eigh(x, UPLO=uplo), a)
        return w, v

    def backward(self, gw, gV):
        w, V = self.saved_outputs
        xp = backend_of(w.array).xp
        n = w.shape[-1]
        eye = xp.eye(n, dtype=bool)
        # E[i, j] = w_j - w_i (1 on the diagonal)
        E = where(eye, Tensor._wrap(xp.ones((), w.array.dtype)), unsqueeze(w, -2) - unsqueeze(w, -1))
        VhgV = _mT(V) @ gV
        inner = where(eye, Tensor._wrap(xp.zeros((), w.array.dtype)), VhgV / E) + _diag_embed(gw)
        gA = V @ inner @ _mT(V)
        # A is symmetric: return the symmetric part (PyTorch's convention), the gradient for a
        # symmetric perturbation whichever triangle was read
        return 0.5 * (gA + _mT(gA))


def eigh(A, UPLO: str = "L"):
    """Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric matrix
    (``torch.linalg.eigh``).

    Only the ``UPLO`` ("L" or "U") triangle of ``A`` is read. Math: ``A V = V diag(w)``;
    gradients need distinct eigenvalues (the vector term divides by ``w_j - w_i``) and a
    loss that does not depend on the eigenvectors' signs.

    Example:
        >>> import avila_ml as am
        >>> w, V = am.linalg.eigh(am.tensor([[2.0, 1.0], [1.0, 2.0]]))
        >>> [round(v, 4) for v in w.tolist()]
        [1.0, 3.0]
    """
    _check_matrix(A, "eigh")
    if UPLO not in ("L", "U"):
        raise RuntimeError(f"linalg.eigh: UPLO must be 'L' or 'U', got {UPLO!r}")
    return eigh_result(*Eigh.apply(A, UPLO))


def eigvalsh(A, UPLO: str = "L"):
    """The eigenvalues of a symmetric matrix, ascending (``torch.linalg.eigvalsh``).

    Math: gradient ``V diag(g) V^T``.

    Example:
        >>> import avila_ml as am
        >>> [round(v, 4) for v in am.linalg.eigvalsh(am.tensor([[2.0, 0.0], [0.0, 1.0]])).tolist()]
        [1.0, 2.0]
    """
    return eigh(A, UPLO).eigenvalues


# ------------------------------------------------------------------------------- lstsq
def lstsq(A, B, rcond=None, *, driver=None):
    """Least-squares solution of ``A X ≈ B`` for full-rank ``A`` (``torch.linalg.lstsq``).

    Math: for ``m >= n`` the ``X`` minimising ``||A X - B||`` (``X = R^{-1} Q^T B`` from
    ``A = Q R``); for ``m < n`` the minimum-norm solution (``X = Q R^{-T} B`` from
    ``A^T = Q R``). Built from :func:`qr` and :func:`solve`, so it is differentiable (twice).
    Returns ``(solution, residuals, rank, singular_values)`` as PyTorch's default CPU
    driver ``gelsy`` does: ``residuals`` and ``singular_values`` are empty, ``rank`` is
    ``min(m, n)`` (``A`` must have full rank; ``rcond`` and ``driver`` are accepted and
    not used). ``B`` may be a vector batch (``A.shape[:-1]``).

    Example:
        >>> import avila_ml as am
        >>> A = am.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> [round(v, 4) for v in am.linalg.lstsq(A, am.tensor([1.0, 2.0, 3.0])).solution.tolist()]
        [1.0, 2.0]
    """
    _check_matrix(A, "lstsq", square=False)
    if not isinstance(B, Tensor):
        raise TypeError(f"linalg.lstsq: B must be a Tensor, got {type(B).__name__}")
    A, B = _prepare(A, B, "linalg.lstsq")
    m, n = A.shape[-2:]
    vector = B.ndim == A.ndim - 1
    Bm = unsqueeze(B, -1) if vector else B
    if Bm.shape[-2] != m:
        raise RuntimeError(f"linalg.lstsq: A {tuple(A.shape)} and B {tuple(B.shape)} must have the same number "
                           f"of rows ({m})")
    if m >= n:
        Q, R = qr(A)
        X = solve(R, _mT(Q) @ Bm)
    else:
        Q, R = qr(_mT(A))
        X = Q @ solve(_mT(R), Bm)
    xp = backend_of(A.array).xp
    empty = Tensor._wrap(xp.zeros((0,), dtype=A.array.dtype))
    rank = Tensor._wrap(xp.full(A.shape[:-2], min(m, n), dtype=np.int64))
    return lstsq_result(squeeze(X, -1) if vector else X, empty, rank, empty)


# ------------------------------------------------------------------------------- norms
def vector_norm(x, ord=2, dim=None, keepdim: bool = False, *, dtype=None):
    """The vector ``ord``-norm over ``dim`` (all elements by default) (``torch.linalg.vector_norm``).

    Math: ``(sum |x|^ord)^(1/ord)``; ``inf``/``-inf`` give max/min ``|x|``, ``0`` the number
    of non-zeros. The 2-norm's gradient at the origin is 0, as in PyTorch.

    Example:
        >>> import avila_ml as am
        >>> am.linalg.vector_norm(am.tensor([3.0, -4.0])), am.linalg.vector_norm(am.tensor([3.0, -4.0]), ord=1)
        (tensor(5.), tensor(7.))
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"linalg.vector_norm: expected a Tensor, got {type(x).__name__}")
    if isinstance(ord, str):
        raise RuntimeError(f"linalg.vector_norm: ord must be a number, got {ord!r}")
    if x.array.dtype.kind != "f" and dtype is None:
        raise RuntimeError(f"linalg.vector_norm: expected a floating point input, got {x.dtype}")
    return _vec_norm(x, ord, dim, keepdim, dtype)


def matrix_norm(A, ord="fro", dim=(-2, -1), keepdim: bool = False, *, dtype=None):
    """A matrix norm over the two dims ``dim`` (``torch.linalg.matrix_norm``).

    Math: ``"fro"`` sqrt(sum A^2); ``"nuc"`` sum of singular values; ``2``/``-2`` largest /
    smallest singular value; ``1``/``-1`` max/min column sum of ``|A|``; ``inf``/``-inf``
    max/min row sum of ``|A|``.

    Example:
        >>> import avila_ml as am
        >>> A = am.tensor([[1.0, -2.0], [3.0, 4.0]])
        >>> am.linalg.matrix_norm(A, ord=1), am.linalg.matrix_norm(A, ord=float("inf"))
        (tensor(6.), tensor(7.))
    """
    if not isinstance(A, Tensor):
        raise TypeError(f"linalg.matrix_norm: expected a Tensor, got {type(A).__name__}")
    if A.ndim < 2:
        raise RuntimeError(f"linalg.matrix_norm: the input must have at least 2 dimensions, got shape "
                           f"{tuple(A.shape)}")
    if dtype is not None:
        A = A.to(dtype)
    if A.array.dtype.kind != "f":
        raise RuntimeError(f"linalg.matrix_norm: expected a floating point input, got {A.dtype}")
    if not isinstance(dim, (tuple, list)) or len(dim) != 2:
        raise RuntimeError(f"linalg.matrix_norm: dim must be a 2-tuple, got {dim!r}")
    d0, d1 = (d % A.ndim for d in dim)
    if d0 == d1:
        raise RuntimeError(f"linalg.matrix_norm: dims must be different, got {dim!r}")
    if ord == "fro":
        return _vec_norm(A, 2, (d0, d1), keepdim)
    # move the two dims last, so the matrix ops see (..., rows, cols)
    rest = [i for i in range(A.ndim) if i not in (d0, d1)]
    M = A.permute(*rest, d0, d1)
    if ord in ("nuc", 2, -2):
        s = svdvals(M)
        out = _sum(s, -1) if ord == "nuc" else (amax(s, -1) if ord == 2 else amin(s, -1))
    elif ord in (1, -1):
        cols = _sum(M.abs(), -2)
        out = amax(cols, -1) if ord == 1 else amin(cols, -1)
    elif ord in (math.inf, -math.inf):
        rows = _sum(M.abs(), -1)
        out = amax(rows, -1) if ord > 0 else amin(rows, -1)
    else:
        raise RuntimeError(f"linalg.matrix_norm: order {ord!r} not supported; use 'fro', 'nuc', 1, -1, 2, -2, "
                           "inf or -inf")
    if keepdim:
        for d in sorted((d0, d1)):
            out = unsqueeze(out, d)
    return out


def norm(A, ord=None, dim=None, keepdim: bool = False, *, dtype=None):
    """A vector or matrix norm (``torch.linalg.norm``).

    ``dim`` an int: vector norm; a 2-tuple: matrix norm. ``dim=None``: with ``ord=None``
    the 2-norm of all elements; else a vector norm for 1-d input and a matrix norm for
    2-d input. See :func:`vector_norm` and :func:`matrix_norm`.

    Example:
        >>> import avila_ml as am
        >>> A = am.tensor([[3.0, 0.0], [0.0, 4.0]])
        >>> am.linalg.norm(A), round(am.linalg.norm(A, ord=2).item(), 4), am.linalg.norm(A, dim=0)
        (tensor(5.), 4.0, tensor([3., 4.]))
    """
    if not isinstance(A, Tensor):
        raise TypeError(f"linalg.norm: expected a Tensor, got {type(A).__name__}")
    if dim is not None and not isinstance(dim, (tuple, list)):
        dim = (dim,)
    if dim is None:
        if ord is None:
            return vector_norm(A, 2, None, keepdim, dtype=dtype)
        if A.ndim == 1:
            return vector_norm(A, ord, None, keepdim, dtype=dtype)
        if A.ndim == 2:
            return matrix_norm(A, ord, (-2, -1), keepdim, dtype=dtype)
        raise RuntimeError(f"linalg.norm: with ord={ord!r} and dim=None the input must be 1-d or 2-d, got shape "
                           f"{tuple(A.shape)}")
    if len(dim) == 1:
        return vector_norm(A, 2 if ord is None else ord, dim[0], keepdim, dtype=dtype)
    if len(dim) == 2:
        return matrix_norm(A, "fro" if ord is None else ord, tuple(dim), keepdim, dtype=dtype)
    raise RuntimeError(f"linalg.norm: dim must be an int or a 2-tuple, got {dim!r}")
